/* optim.h - optimizers over the flat parameter buffer, and learning-rate schedules.
 *
 * Update rules are PyTorch's (torch.optim.SGD, Adam, AdamW, docs of 1.13):
 *   SGD:  g <- g + wd*p; if momentum: buf <- g on the first step, else
 *         buf <- momentum*buf + (1-dampening)*g; g <- nesterov ? g + momentum*buf : buf;
 *         p <- p - lr*g
 *   Adam: g <- g + wd*p; m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
 *         p <- p - lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)
 *   AdamW: p <- p*(1 - lr*wd) first, then Adam without the wd term.
 *   LARS (You, Gitman & Ginsburg 2017, Algorithm 1): per weight tensor the local rate
 *         lambda = eta*||w|| / (||g|| + wd*||w||) (1 when ||w|| or ||g|| is 0) multiplies
 *         d = g + wd*p BEFORE the momentum buffer, then SGD's momentum rule runs on
 *         lambda*d: buf <- momentum*buf + (1-dampening)*lambda*d; p <- p - lr*buf.
 *   LAMB (You et al. 2019, Algorithm 2): Adam's bias-corrected moments of g,
 *         u = m_hat/(sqrt(v_hat) + eps) + wd*p, and per weight tensor
 *         p <- p - lr * min(||w||, lamb_clip)/||u|| * u (ratio 1 when ||w|| or ||u|| is 0).
 *   With exclude_bias, a LARS/LAMB tensor that is a bias (or 1-D) gets neither the ratio
 *   (it is 1) nor weight decay. docs/optimizers.md has every rule in full.
 * The gradient of tensor j is first multiplied by scale[j] (the preconditioner; NULL = 1),
 * fused into the same pass. State lives in flat buffers parallel to the parameters.
 */
#ifndef NNPREC_OPTIM_H
#define NNPREC_OPTIM_H
#include <stddef.h>
#include <stdint.h>
#include "nnprec/net.h"
#include "nnprec/status.h"

typedef enum { NNP_OPT_SGD, NNP_OPT_ADAM, NNP_OPT_ADAMW, NNP_OPT_LARS, NNP_OPT_LAMB } nnp_opt_kind;

typedef struct {
    nnp_opt_kind kind;
    double momentum, dampening, weight_decay; /* sgd, lars (weight_decay: all) */
    int nesterov;
    double beta1, beta2, eps;                 /* adam, adamw, lamb */
    double lars_eta;                          /* lars: trust coefficient eta (> 0) */
    double lamb_clip;                         /* lamb: phi(||w||) = min(||w||, lamb_clip) */
    int exclude_bias;                         /* lars, lamb: biases and 1-D tensors keep
                                                 ratio 1 and no weight decay */
} nnp_optim_cfg;

typedef struct {
    nnp_optim_cfg cfg;
    size_t n;
    float *buf1;   /* momentum buffer or Adam m (NULL for plain SGD) */
    float *buf2;   /* Adam v */
    float *buf3;   /* LAMB: this step's update u, from pass 1 to pass 2 (not state); the
                    * one-range step puts every tensor's at its start */
    int64_t t;     /* steps taken */
    /* when sums != NULL, the next nnp_optim_step also adds, per tensor j, the sum and the
     * sum of squares of its UPDATED parameters that lie in [sums_lo, sums_hi) into
     * sums[2j], sums[2j+1] (zeroed first), then clears the request: the dynamic
     * preconditioner's statistics for the next step, without another pass */
    double *sums;
    size_t sums_lo, sums_hi;
    /* after every step (nnp_optim_step, _step_range, _apply_range): the index of the first
     * tensor with an updated parameter (in the step's range) that is an inf or a nan, or -1.
     * The update loops find it as they write the parameters, with no pass of their own. */
    int nonfinite;
    /* nnp_optim_keep_norms (LARS): per tensor j, ||w||^2 of its part in [w2_lo, w2_hi)
     * of w2_params, summed by the update pass of step w2_t as it wrote them, exactly as the
     * next step's first pass would sum them (the same blocks and lanes, so the same bits);
     * that pass takes them instead of reading the parameters again while o->t == w2_t and
     * the step's buffer and range are the same. w2_t = -1: none. */
    double *w2;
    const float *w2_params;
    size_t w2_lo, w2_hi;
    int64_t w2_t;
} nnp_optim;

nnp_status nnp_opt_parse(const char *name, nnp_opt_kind *out); /* sgd|adam|adamw|lars|lamb */
const char *nnp_opt_name(nnp_opt_kind k);
/* Allocate state for n parameters. Errors: NNP_ERR_ARG (nesterov without momentum, ...). */
nnp_status nnp_optim_init(nnp_optim *o, const nnp_optim_cfg *cfg, size_t n);
void nnp_optim_free(nnp_optim *o);
/* Ask the next step to produce per-tensor parameter sums over [lo, hi) (see nnp_optim). */
void nnp_optim_want_sums(nnp_optim *o, double *sums, size_t lo, size_t hi);

/* LARS: keep each tensor's ||w||^2 from the update pass for the next step's trust ratios,
 * so that its first pass reads only the gradient (n_tensors of the net it steps; allocates
 * once, here; nothing for the other optimizers). Whoever writes the parameters other than
 * through this optimizer between two steps must then call nnp_optim_params_changed
 * (nnp_ckpt_read does). NNP_ERR_ARG, NNP_ERR_NOMEM. */
nnp_status nnp_optim_keep_norms(nnp_optim *o, int n_tensors);
/* the parameters changed outside the optimizer: the kept norms are stale */
void nnp_optim_params_changed(nnp_optim *o);

/* The instruction set of LARS's sums of squares and LAMB's first pass: by default (AUTO)
 * the widest the CPU runs; for tests, at most the one asked (never wider than the CPU runs).
 * Every variant gives the same bits. Returns the one now in effect. */
typedef enum {
    NNP_OPT_SUMS_AUTO,
    NNP_OPT_SUMS_PORTABLE,
    NNP_OPT_SUMS_AVX2,
    NNP_OPT_SUMS_AVX512
} nnp_opt_sums_isa;
nnp_opt_sums_isa nnp_optim_set_sums_isa(nnp_opt_sums_isa want);
/* One step with learning rate lr over every tensor of net: params -= update(scale[j]*grad). */
void nnp_optim_step(nnp_optim *o, nnp_net *net, double lr, const double *scale);
/* The same step for the parameters in [lo, hi) only (the optimizer state outside the range
 * is left alone): with --allreduce sharded each rank updates its 1/p of the parameters. The
 * step counter advances as for a full step; the requested sums (nnp_optim_want_sums) are
 * taken as usual, and must lie inside [lo, hi) to see updated values. */
void nnp_optim_step_range(nnp_optim *o, nnp_net *net, double lr, const double *scale,
                          size_t lo, size_t hi);

/* ---- LARS and LAMB over shares: per-tensor norms summed over the ranks ------------------
 * nnp_optim_step_range takes a LARS/LAMB tensor's norms over its part inside [lo, hi) only,
 * which is the whole tensor only when no share boundary cuts it. When ranks split the flat
 * buffer (--allreduce sharded, shm) a step is two passes with one sum over the ranks between:
 *   nnp_optim_norms_range  advances the step counter (LAMB: and updates its moments over
 *                          [lo, hi) with scale), and writes for every tensor j the partial
 *                          squared norms over [lo, hi) into part[2j], part[2j+1]:
 *                          LARS ||w||^2 and ||g||^2 (the raw gradient: scale[j] multiplies
 *                          its norm in the second pass, so the sums may travel before the
 *                          preconditioner's new multipliers are known); LAMB ||w||^2, ||u||^2
 *   (the caller sums part over the ranks: 2*n_tensors doubles)
 *   nnp_optim_apply_range  the update over [lo, hi) with those global sums; the requested
 *                          parameter sums (nnp_optim_want_sums) are taken in this pass.
 * One range [0, n_params) through both gives exactly nnp_optim_step. Allocates nothing. */
int nnp_optim_layerwise(nnp_opt_kind k); /* lars or lamb: the step needs per-tensor norms */
void nnp_optim_norms_range(nnp_optim *o, const nnp_net *net, const double *scale, size_t lo,
                           size_t hi, double *part);
void nnp_optim_apply_range(nnp_optim *o, nnp_net *net, double lr, const double *scale,
                           size_t lo, size_t hi, const double *norms);

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

/* ---- learning-rate scaling with the global batch (--lr-scaling, --warmup-epochs) ------- */
typedef enum { NNP_LRS_NONE, NNP_LRS_LINEAR, NNP_LRS_SQRT } nnp_lr_scaling;
nnp_status nnp_lr_scaling_parse(const char *name, nnp_lr_scaling *out); /* none|linear|sqrt */
/* The rate for global batch G of a rate `lr` given for global batch `base` (> 0):
 * none: lr; linear: lr * G/base (Goyal et al. 2017); sqrt: lr * sqrt(G/base). */
double nnp_lr_scale(double lr, nnp_lr_scaling k, double base, double G);
/* Warmup steps for `epochs` (>= 0) epochs of `spe` steps each: ceil(epochs * spe), where a
 * product within 1e-9 (relative) of an integer counts as that integer (0.1 * 30 is 3). */
int64_t nnp_warmup_steps(double epochs, size_t spe);

#endif
