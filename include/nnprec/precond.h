/* precond.h - the statistical diagonal gradient preconditioner (docs/preconditioner.md).
 *
 * Each parameter tensor j gets one multiplier m_j; the optimizer multiplies tensor j's
 * (allreduced) gradient by m_j before its update. With s_k the standard deviation of the
 * weights of trainable layer k and g_k the factor by which layer k scales a unit-variance
 * gradient passed back through it:
 *     prec_j = prod over tensors k after j of 1/g_k   (the last tensor gets 1)
 * static : s_k are the initialization prior's standard deviations, fixed for the run.
 * dynamic: s_k are the CURRENT population standard deviations of the tensors, recomputed
 *          every K steps from per-tensor sums reduced over all ranks.
 *
 * Formulas (--precond-formula):
 *   corrected the default (derived in docs/preconditioner.md): the prior is that of the
 *             chosen --init; a forward pass of second moments through the network gives
 *             every layer's input second moment q_k and pre-activation variance v_k;
 *             g_k = sqrt(mean fan-out * d) * s_k with d = E[f'(z)^2] of the operations
 *             below layer k, evaluated at v of the layer below (relu 1/2, tanh and sigmoid
 *             by quadrature, pooling); weight m_j = prec_j s_j / sqrt(q_j), bias
 *             m_j = prec_j s_W (the weight of a constant input 1), so every tensor's
 *             preconditioned step is the same size in units of its layer's weight scale.
 *             With BatchNorm, residual blocks, gap and dropout (docs/preconditioner.md
 *             section 7) prec_k = sqrt(e_L/e_k) from a backward pass of second moments that
 *             adds the paths where they join; BatchNorm's scale and shift are in units of
 *             the scale's root mean square, and biases and BatchNorm's tensors divide by the
 *             gradient's batch-sum ratio (rho).
 *   seed      exactly seed 000's code, quirks included: prior of --init seed with the
 *             constants below, fan-out of a tensor of shape s is prod(s[:-1]), the relu
 *             factor enters dense (2-D) weights only, m_j = prec_j s_j, bias std bias_std.
 */
#ifndef NNPREC_PRECOND_H
#define NNPREC_PRECOND_H
#include <stddef.h>
#include <stdint.h>
#include "nnprec/init.h"
#include "nnprec/net.h"
#include "nnprec/status.h"

typedef enum { NNP_PRECOND_NONE, NNP_PRECOND_STATIC, NNP_PRECOND_DYNAMIC } nnp_precond_mode;
typedef enum { NNP_PFORM_CORRECTED, NNP_PFORM_SEED } nnp_precond_formula;

typedef struct {
    nnp_precond_mode mode;
    nnp_precond_formula formula;
    nnp_init_cfg init;    /* corrected: the initializer whose prior static mode uses */
    int every;            /* dynamic: recompute every K steps (K >= 1) */
    /* seed formula's prior (the constants of --init seed) */
    double relu_factor;   /* Var(relu(z)) for z ~ N(0,1) as the seed rounds it: 0.34 */
    double prior_num;     /* prior weight variance numerator: 0.96 (sigma^2 = 0.96/fan_in) */
    double bias_std;      /* prior bias std: 0.2 */
    double bias_gain;     /* g of a bias tensor: 1 */
    int bias_prior;       /* dynamic: keep bias_std for biases instead of their current std */
    double floor;         /* lower bound on a measured std (guards division by zero): 1e-12 */
    /* dynamic corrected: 1 (default) also measures every trainable layer's input second
     * moment and output-gradient second moment on the step's global batch; 0 predicts
     * them from the weight stds (the forward pass of second moments) */
    int measure;
    /* samples each BatchNorm layer's batch statistics are taken over (the global batch with
     * --bn sync, a rank's share with --bn local); 0: many (the finite-batch factor is 1) */
    int bn_batch;
} nnp_precond_cfg;

/* Points of the fixed quadrature grid for Gaussian expectations (corrected formula). */
#define NNP_PRECOND_QUAD 241

typedef struct {
    nnp_precond_cfg cfg;
    int n;                /* tensors */
    double *sigma;        /* [n] std used for each tensor (prior or current) */
    double *gain;         /* [n] g of each tensor */
    double *prec;         /* [n] product of 1/g over the tensors after it */
    double *scale;        /* [n] m_j: what the optimizer applies */
    double *q;            /* [n] corrected: E[x^2] of the input tensor j multiplies (bias: 1) */
    double *v;            /* [n] corrected: predicted E[z^2] of the layer's output (pre-activation) */
    double *quad;         /* [3 * NNP_PRECOND_QUAD]: grid t, Gaussian density, its CDF */
    double *sums;         /* [n_sums] workspace for the allreduce: (sum w, sum w^2) per
                           * tensor over this rank's share of the parameters, then, when
                           * measuring, (sum x^2, sum dz^2) per trainable layer over this
                           * rank's samples, the sample count, and for every dense or conv
                           * layer that feeds a BatchNorm layer the sum of x per input
                           * channel (dense: per input feature) */
    int n_tr;             /* trainable layers (dense, conv and BatchNorm) */
    size_t n_sums;        /* 2n, or n_share + 2 n_tr + 1 + n_csum when measuring */
    size_t n_share;       /* the sums over shares of the flat buffers: 2n, and when measuring
                           * |G|^2 of every BatchNorm scale and shift after them */
    size_t n_csum;        /* input channels of the layers that feed a BatchNorm layer */
    /* corrected formula, predicted moments: the sweep over the network's layers */
    double *eg;           /* [n_layers + 1] predicted E[g^2] of the gradient at act[i] */
    double *bf;           /* [n_layers] backward factor of layer i: E[dx^2] / E[dy^2] */
    double *ef;           /* [n_layers] factor on a layer's own output-gradient moment (1, or
                           * the Jensen factor of a layer that feeds a BatchNorm layer) */
    double *sg;           /* [n_layers + 1] predicted batch-sum energy of the gradient at act[i]:
                           * E[(sum over a channel's N values of g)^2] / N */
    double *mf;           /* [n_layers] E[f'(x)] of an activation layer (1 for dropout) */
    double *xm;           /* [n_layers] E[x] of a trainable layer's input */
    double *bnc;          /* [2 n_layers] BatchNorm layer: E[G_scale^2]/N per unit of e where a
                           * residual sum or a chain into a block found it, and a flag */
    double *bno;          /* BatchNorm layer i: its output's particles, count first, at
                           * i * (1 + 2 (NNP_PRECOND_QUAD + 1)); NULL without BatchNorm */
    double *rho;          /* [n] corrected, predicted: E[(prec_j G_j)^2] over what the
                           * element-wise derivation gives (A_j for a weight, N e for a bias),
                           * from the gradient's batch sums: 1 in plain stacks; a bias's or
                           * BatchNorm shift's batch-sum ratio; a BatchNorm scale's sum of
                           * g x_hat; multipliers divide by its square root */
    double *part[4];      /* element distributions as weighted particles (residual blocks,
                           * dropout): the current one, a block's input, its branch output,
                           * and scratch; NULL for networks that need none */
    size_t part_cap;      /* (value, weight) pairs each of part[0..2] holds */
    int n_blk;            /* residual blocks */
    double *blk;          /* per residual block, what the sweep keeps for the backward pass:
                           * its shortcut's and branch's particles at the add, and those at
                           * the start of the activations that lead into it */
    int measured;         /* the last update used measured moments */
    int64_t updated_at;   /* step of the last dynamic update, -1 before the first */
} nnp_precond;

nnp_status nnp_precond_parse_mode(const char *s, nnp_precond_mode *out);      /* none|static|dynamic */
nnp_status nnp_precond_parse_formula(const char *s, nnp_precond_formula *out); /* corrected|seed */
const char *nnp_precond_mode_name(nnp_precond_mode m);
const char *nnp_precond_formula_name(nnp_precond_formula f);
/* Fill the defaults (mode none, formula corrected, init pytorch, every 1, the seed's 0.34,
 * 0.96, 0.2, bias gain 1, bias current, floor 1e-12). */
void nnp_precond_defaults(nnp_precond_cfg *cfg);

/* Allocate for net's tensors and, for static and dynamic, compute the prior multipliers
 * (for mode none every scale is 1). Errors: NNP_ERR_ARG for bad constants or K < 1, and
 * for static corrected with an initializer whose weights have no spread (constant:C). */
nnp_status nnp_precond_init(nnp_precond *p, const nnp_precond_cfg *cfg, const nnp_net *net);
void nnp_precond_free(nnp_precond *p);

/* Rank-local part of the dynamic update: for rank r of `size`, the share [lo, hi) of the flat
 * parameter buffer from nnp_split(n_params, size, r); adds sum w and sum w^2 of every tensor's
 * elements that fall in that share into p->sums (zeroed first). Pure; tested with simulated
 * ranks (the shares' sums add up to the global sums). */
void nnp_precond_local_sums(nnp_precond *p, const nnp_net *net, int rank, int size);
/* Sum and sum of squares (double) of w[a..b), added into *s1 and *s2. The kernel of
 * nnp_precond_local_sums, also called by the optimizer to produce the next step's sums in
 * the same pass that writes the parameters (nnp_optim_want_sums). */
void nnp_precond_range_sums(const float *w, size_t a, size_t b, double *s1, double *s2);
/* When measuring (p->n_sums > n_share): this rank's part of the batch moments, from the
 * forward and backward pass of its B samples still in net->act / net->dact, into
 * p->sums[n_share .. n_sums). Ranks with B = 0 add zeros. Call after backward. */
void nnp_precond_batch_sums(nnp_precond *p, const nnp_net *net, int B);
/* When measuring: |G_j|^2 of every BatchNorm scale and shift over this rank's share of the
 * (allreduced) gradient buffer, nnp_split(n_params, size, rank), into p->sums[2n ..
 * n_share). Call after the gradient allreduce. */
void nnp_precond_grad_sums(nnp_precond *p, const nnp_net *net, int rank, int size);
/* From GLOBAL sums in p->sums (after the caller's allreduce of 2n doubles): population
 * std of each tensor, floored; recompute gain/prec/scale. Errors: NNP_ERR_NUMERIC naming the
 * tensor if a sum is not finite. */
nnp_status nnp_precond_from_sums(nnp_precond *p, const nnp_net *net, int64_t step);
/* Recompute q/v/gain/prec/scale from p->sigma (used by both modes). */
void nnp_precond_recompute(nnp_precond *p, const nnp_net *net);

#endif
