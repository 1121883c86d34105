/* optim.h - optimizers over the flat parameter buffer, and learning-rate schedules.
 *
 * Update rules are PyTorch's (torch.optim.SGD, Adam, AdamW, docs of 1.13):
 *   SGD:  g <- g + wd*p; if momentum: buf <- g on the first step, else
 *         buf <- momentum*buf + (1-dampening)*g; g <- nesterov ? g + momentum*buf : buf;
 *         p <- p - lr*g
 *   Adam: g <- g + wd*p; m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
 *         p <- p - lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)
 *   AdamW: p <- p*(1 - lr*wd) first, then Adam without the wd term.
 * The gradient of tensor j is first multiplied by scale[j] (the preconditioner; NULL = 1),
 * fused into the same pass. State lives in flat buffers parallel to the parameters.
 */
#ifndef NNPREC_OPTIM_H
#define NNPREC_OPTIM_H
#include <stddef.h>
#include <stdint.h>
#include "nnprec/net.h"
#include "nnprec/status.h"

typedef enum { NNP_OPT_SGD, NNP_OPT_ADAM, NNP_OPT_ADAMW } nnp_opt_kind;

typedef struct {
    nnp_opt_kind kind;
    double momentum, dampening, weight_decay;
    int nesterov;
    double beta1, beta2, eps;
} nnp_optim_cfg;

typedef struct {
    nnp_optim_cfg cfg;
    size_t n;
    float *buf1;   /* momentum buffer or Adam m (NULL for plain SGD) */
    float *buf2;   /* Adam v */
    int64_t t;     /* steps taken */
    /* when sums != NULL, the next nnp_optim_step also adds, per tensor j, the sum and the
     * sum of squares of its UPDATED parameters that lie in [sums_lo, sums_hi) into
     * sums[2j], sums[2j+1] (zeroed first), then clears the request: the dynamic
     * preconditioner's statistics for the next step, without another pass */
    double *sums;
    size_t sums_lo, sums_hi;
} nnp_optim;

nnp_status nnp_opt_parse(const char *name, nnp_opt_kind *out); /* sgd | adam | adamw */
const char *nnp_opt_name(nnp_opt_kind k);
/* Allocate state for n parameters. Errors: NNP_ERR_ARG (nesterov without momentum, ...). */
nnp_status nnp_optim_init(nnp_optim *o, const nnp_optim_cfg *cfg, size_t n);
void nnp_optim_free(nnp_optim *o);
/* Ask the next step to produce per-tensor parameter sums over [lo, hi) (see nnp_optim). */
void nnp_optim_want_sums(nnp_optim *o, double *sums, size_t lo, size_t hi);
/* One step with learning rate lr over every tensor of net: params -= update(scale[j]*grad). */
void nnp_optim_step(nnp_optim *o, nnp_net *net, double lr, const double *scale);
/* The same step for the parameters in [lo, hi) only (the optimizer state outside the range
 * is left alone): with --allreduce sharded each rank updates its 1/p of the parameters. The
 * step counter advances as for a full step; the requested sums (nnp_optim_want_sums) are
 * taken as usual, and must lie inside [lo, hi) to see updated values. */
void nnp_optim_step_range(nnp_optim *o, nnp_net *net, double lr, const double *scale,
                          size_t lo, size_t hi);

/* ---- learning-rate schedules ---------------------------------------------------------- */
typedef enum { NNP_SCHED_CONSTANT, NNP_SCHED_STEP, NNP_SCHED_COSINE } nnp_sched_kind;

typedef struct {
    nnp_sched_kind kind;
    double lr;            /* base learning rate */
    double gamma;         /* step: multiply by gamma ... */
    int step_epochs;      /* ... every step_epochs epochs (StepLR with epoch granularity) */
    int64_t total_steps;  /* cosine: steps to decay over (after warmup) */
    double min_lr;        /* cosine floor (eta_min) */
    int64_t warmup;       /* linear warmup steps: lr*(step+1)/warmup for step < warmup */
} nnp_sched;

nnp_status nnp_sched_parse(const char *name, nnp_sched_kind *out); /* constant|step|cosine */
/* Learning rate for global step `step` (0-based) that lies in epoch `epoch` (0-based). */
double nnp_sched_lr(const nnp_sched *s, int64_t step, int epoch);

#endif
