/* precond.c - the statistical diagonal gradient preconditioner (docs/preconditioner.md).
 *
 * For tensors j = 0..n-1 in net->tensors order (w1, b1, w2, b2, ...):
 *     prec_j = prod_{k > j} 1/g_k
 * sigma_j is the prior (static) or the current population std (dynamic); g_k is the factor
 * by which tensor k's layer scales the standard deviation of a gradient passed back
 * through it (1 for a bias: a bias does not touch the backward path).
 *
 * formula seed (seed 000, quirks included): sigma prior of --init seed with the cfg's
 * constants; weight g = sqrt(prod(shape[:-1])) * sigma, times sqrt(relu_factor) iff 2-D;
 * m_j = prec_j * sigma_j.
 *
 * formula corrected (derived in docs/preconditioner.md): sigma prior of cfg->init. A forward
 * pass of second moments (forward_sweep) gives, for every trainable layer k, the second
 * moment q_k of its input and the variance v_k of its pre-activation
 *     v_k = n_eff_k sigma_W^2 q_k + sigma_b^2       (n_eff: inputs that reach one output)
 * and carries the element distribution through the activations and pooling above it, by
 * closed forms or quadrature. Then
 *     weight g = sqrt(fan_out_eff * d) * sigma
 *   fan_out_eff = out (dense) or, for a conv, C_out times the mean number of (output
 *   position, tap) pairs that read an input element;
 *   d = E[(d x_in / d z_prev)^2], the mean squared derivative of the element-wise and
 *   pooling operations between the previous trainable layer and this one, at the
 *   distribution the forward pass gives there (relu 1/2, tanh and sigmoid E[f'(z)^2] for
 *   z ~ N(0, v), max pooling outputs/inputs with the activation's derivative taken at the
 *   window maximum, average pooling outputs/(inputs*k*k));
 *     weight m_j = prec_j sigma_j / sqrt(q_j),   bias m_j = prec_j sigma_W
 * (a bias is the weight of a constant input 1 in its layer's units).
 *
 * BatchNorm, residual blocks, gap and dropout (docs/preconditioner.md section 7): the sweep
 * covers every layer (sweep_forward), carrying element distributions as weighted particles
 * once a residual sum or dropout makes them other than a Gaussian through activations, and
 * the backward pass of second moments (predicted_scales) adds the gradients where paths
 * join, conditions them on each unit's value along identity shortcuts, and carries the
 * gradient's batch-sum energy, which sets what biases and BatchNorm's scale and shift see;
 * prec_k = sqrt(e_L / e_k).
 */
#include "nnprec/precond.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "nnprec/alloc.h"
#include "nnprec/data.h"

nnp_status nnp_precond_parse_mode(const char *s, nnp_precond_mode *out)
{
    if (!s || !out)
        return nnp_error(NNP_ERR_ARG, "nnp_precond_parse_mode: NULL argument");
    if (strcmp(s, "none") == 0)
        *out = NNP_PRECOND_NONE;
    else if (strcmp(s, "static") == 0)
        *out = NNP_PRECOND_STATIC;
    else if (strcmp(s, "dynamic") == 0)
        *out = NNP_PRECOND_DYNAMIC;
    else
        return nnp_error(NNP_ERR_ARG, "unknown preconditioner '%s' (expected none, static or dynamic)",
                         s);
    return NNP_OK;
}

nnp_status nnp_precond_parse_formula(const char *s, nnp_precond_formula *out)
{
    if (!s || !out)
        return nnp_error(NNP_ERR_ARG, "nnp_precond_parse_formula: NULL argument");
    if (strcmp(s, "corrected") == 0)
        *out = NNP_PFORM_CORRECTED;
    else if (strcmp(s, "seed") == 0)
        *out = NNP_PFORM_SEED;
    else
        return nnp_error(NNP_ERR_ARG,
                         "unknown preconditioner formula '%s' (expected corrected or seed)", s);
    return NNP_OK;
}

const char *nnp_precond_mode_name(nnp_precond_mode m)
{
    switch (m) {
    case NNP_PRECOND_NONE: return "none";
    case NNP_PRECOND_STATIC: return "static";
    case NNP_PRECOND_DYNAMIC: return "dynamic";
    }
    return "?";
}

const char *nnp_precond_formula_name(nnp_precond_formula f)
{
    switch (f) {
    case NNP_PFORM_CORRECTED: return "corrected";
    case NNP_PFORM_SEED: return "seed";
    }
    return "?";
}

void nnp_precond_defaults(nnp_precond_cfg *cfg)
{
    cfg->mode = NNP_PRECOND_NONE;
    cfg->formula = NNP_PFORM_CORRECTED;
    nnp_init_parse("pytorch", &cfg->init);
    cfg->every = 1;
    cfg->relu_factor = 0.34;
    cfg->prior_num = 0.96;
    cfg->bias_std = 0.2;
    cfg->bias_gain = 1.0;
    cfg->bias_prior = 0;
    cfg->floor = 1e-12;
    cfg->measure = 1;
    cfg->bn_batch = 0;
}

static void quad_setup(double *q);
static double norm_jensen(const nnp_init_cfg *ic, const nnp_tensor *t);

/* Element distributions as weighted particles (the corrected formula's sweep, section 7 of
 * docs/preconditioner.md): NP_Q nodes of a materialized distribution (the midpoints of the
 * quadrature grid), NP_S particles a residual block's shortcut is compressed to at its add. */
#define NP_Q 240
#define NP_S 256
/* doubles kept per BatchNorm layer's output particles (count, then pairs) */
#define BNO_DOUBLES (1 + 2 * (size_t)(NP_Q + 2))
/* doubles kept per residual block (blk_view) */
#define BLK_DOUBLES (4 + 5 * (size_t)NP_S + 4 * (size_t)(NP_Q + 2))

/* 1 if layer i is a dense or conv layer whose output goes straight into a BatchNorm layer:
 * its weights are scale-invariant and its output gradient sums to zero over each channel. */
static int feeds_bn(const nnp_net *net, int i)
{
    const nnp_layer_kind k = net->layers[i].kind;
    return (k == NNP_L_DENSE || k == NNP_L_CONV2D) && i + 1 < net->n_layers &&
           net->layers[i + 1].kind == NNP_L_BN;
}

/* The groups of a layer's input that share one weight (a conv's input channels, of S
 * positions each; a dense layer's input features, S = 1): a layer feeding a BatchNorm layer
 * sees its input about each group's batch mean. */
static void input_groups(const nnp_layer *L, int *C, size_t *S)
{
    if (L->kind == NNP_L_CONV2D) {
        *C = L->in.c;
        *S = (size_t)L->in.h * L->in.w;
    } else {
        *C = (int)nnp_shape_size(L->in);
        *S = 1;
    }
}

static int pos_finite(double x) { return isfinite(x) && x > 0; }

static nnp_status check_cfg(const nnp_precond_cfg *c)
{
    if (c->mode != NNP_PRECOND_NONE && c->mode != NNP_PRECOND_STATIC &&
        c->mode != NNP_PRECOND_DYNAMIC)
        return nnp_error(NNP_ERR_ARG, "preconditioner: invalid mode %d", (int)c->mode);
    if (c->formula != NNP_PFORM_CORRECTED && c->formula != NNP_PFORM_SEED)
        return nnp_error(NNP_ERR_ARG, "preconditioner: invalid formula %d", (int)c->formula);
    if (c->every < 1)
        return nnp_error(NNP_ERR_ARG, "--precond-every must be >= 1 (got %d)", c->every);
    if (!pos_finite(c->relu_factor))
        return nnp_error(NNP_ERR_ARG, "--precond-relu-factor must be positive and finite (got %g)",
                         c->relu_factor);
    if (!pos_finite(c->prior_num))
        return nnp_error(NNP_ERR_ARG, "--precond-prior must be positive and finite (got %g)",
                         c->prior_num);
    if (!pos_finite(c->bias_std))
        return nnp_error(NNP_ERR_ARG, "--precond-bias-std must be positive and finite (got %g)",
                         c->bias_std);
    if (!pos_finite(c->bias_gain))
        return nnp_error(NNP_ERR_ARG, "--precond-bias-gain must be positive and finite (got %g)",
                         c->bias_gain);
    if (!pos_finite(c->floor))
        return nnp_error(NNP_ERR_ARG, "--precond-floor must be positive and finite (got %g)",
                         c->floor);
    return NNP_OK;
}

/* Prior std of a tensor. seed: the --init seed formula with the preconditioner's constants;
 * corrected: the std the chosen initializer draws with. */
static double prior_sigma(const nnp_precond_cfg *c, const nnp_net *net, const nnp_tensor *t)
{
    if (t->norm) /* BatchNorm: scale 1 (its root mean square) and shift 0 under every --init */
        return t->is_bias ? 0.0 : 1.0;
    if (c->formula == NNP_PFORM_CORRECTED)
        return nnp_init_std(&c->init, net, t);
    if (t->is_bias)
        return c->bias_std;
    double fan = 1.0; /* prod(shape[1:]) */
    for (int d = 1; d < t->ndim; d++)
        fan *= t->shape[d];
    double s = sqrt(c->prior_num / fan);
    return t->ndim == 2 ? s / sqrt(c->relu_factor) : s;
}

nnp_status nnp_precond_init(nnp_precond *p, const nnp_precond_cfg *cfg, const nnp_net *net)
{
    if (!p || !cfg || !net)
        return nnp_error(NNP_ERR_ARG, "nnp_precond_init: NULL argument");
    memset(p, 0, sizeof *p);
    NNP_CALL(check_cfg(cfg));
    if (net->n_tensors <= 0)
        return nnp_error(NNP_ERR_ARG, "preconditioner: the network has no parameter tensors");
    if (cfg->mode != NNP_PRECOND_NONE && cfg->formula == NNP_PFORM_SEED) {
        /* the seed's formula is a fixed recipe for plain stacks; the corrected one is
         * derived for these layers (docs/preconditioner.md, section 7) */
        static const struct { nnp_layer_kind k; const char *what; } underived[] = {
            {NNP_L_BN, "BatchNorm layers"},
            {NNP_L_GAP, "global average pooling (gap)"},
            {NNP_L_DROPOUT, "dropout"},
            {NNP_L_RES_ADD, "residual blocks (res[...])"},
        };
        for (size_t u = 0; u < sizeof underived / sizeof underived[0]; u++)
            if (nnp_net_has(net, underived[u].k))
                return nnp_error(NNP_ERR_ARG, "--precond-formula seed is not defined for %s "
                                              "(model %s): use --precond-formula corrected",
                                 underived[u].what, net->spec);
    }
    if (cfg->bn_batch < 0)
        return nnp_error(NNP_ERR_ARG, "preconditioner: BatchNorm batch must be >= 0 (got %d)",
                         cfg->bn_batch);
    size_t n = (size_t)net->n_tensors;
    p->cfg = *cfg;
    p->n = net->n_tensors;
    p->updated_at = -1;
    p->sigma = nnp_calloc(n, sizeof(double));
    p->gain = nnp_calloc(n, sizeof(double));
    p->prec = nnp_calloc(n, sizeof(double));
    p->scale = nnp_calloc(n, sizeof(double));
    p->n_tr = net->n_trainable;
    p->n_sums = p->n_share = 2 * n;
    for (int i = 0; i < net->n_layers; i++)
        if (feeds_bn(net, i)) {
            int C;
            size_t S;
            input_groups(&net->layers[i], &C, &S);
            p->n_csum += (size_t)C;
        }
    if (cfg->mode == NNP_PRECOND_DYNAMIC && cfg->formula == NNP_PFORM_CORRECTED && cfg->measure) {
        for (int j = 0; j < net->n_tensors; j++)
            p->n_share += (size_t)(net->tensors[j].norm != 0);
        p->n_sums = p->n_share + 2 * (size_t)p->n_tr + 1 + p->n_csum;
    }
    p->sums = nnp_calloc(p->n_sums, sizeof(double));
    p->q = nnp_calloc(n, sizeof(double));
    p->v = nnp_calloc(n, sizeof(double));
    p->quad = nnp_calloc(3 * (size_t)NNP_PRECOND_QUAD, sizeof(double));
    const size_t nl = (size_t)net->n_layers;
    p->eg = nnp_calloc(nl + 1, sizeof(double));
    p->bf = nnp_calloc(nl, sizeof(double));
    p->ef = nnp_calloc(nl, sizeof(double));
    p->sg = nnp_calloc(nl + 1, sizeof(double));
    p->mf = nnp_calloc(nl, sizeof(double));
    p->xm = nnp_calloc(nl, sizeof(double));
    p->bnc = nnp_calloc(2 * nl, sizeof(double));
    p->rho = nnp_calloc(n, sizeof(double));
    int bad = !p->sigma || !p->gain || !p->prec || !p->scale || !p->sums || !p->q || !p->v ||
              !p->quad || !p->eg || !p->bf || !p->ef || !p->sg || !p->mf || !p->xm || !p->bnc ||
              !p->rho;
    if (!bad && nnp_net_has(net, NNP_L_BN))
        bad |= !(p->bno = nnp_calloc(nl * BNO_DOUBLES, sizeof(double)));
    /* particles: a residual block's sum holds its shortcut's NP_S particles times the
     * branch's; dropout and BatchNorm after an activation need one materialized grid */
    const int adds = nnp_net_has(net, NNP_L_RES_ADD);
    if (!bad && (adds || nnp_net_has(net, NNP_L_DROPOUT) || nnp_net_has(net, NNP_L_BN))) {
        p->part_cap = adds ? (size_t)NP_S * (NP_Q + 2) + 2 : NP_Q + 4;
        for (int k = 0; k < 3; k++)
            bad |= !(p->part[k] = nnp_malloc(2 * p->part_cap * sizeof(double)));
        bad |= !(p->part[3] = nnp_malloc(4 * (size_t)(NP_S + NP_Q) * sizeof(double)));
    }
    for (int i = 0; i < net->n_layers; i++)
        p->n_blk += net->layers[i].kind == NNP_L_RES_FORK;
    if (!bad && p->n_blk > 0)
        bad |= !(p->blk = nnp_calloc((size_t)p->n_blk * BLK_DOUBLES, sizeof(double)));
    if (bad) {
        nnp_precond_free(p);
        return NNP_ERR_NOMEM;
    }
    quad_setup(p->quad);
    /* a layer feeding a BatchNorm layer: its output gradient carries E[1/std^2] of the
     * BatchNorm, which the spread of the prior's weight norms raises (norm_jensen) */
    for (size_t i = 0; i < nl; i++)
        p->ef[i] = feeds_bn(net, (int)i) ? norm_jensen(&cfg->init, &net->tensors[net->layers[i].tensor])
                                         : 1.0;
    for (size_t j = 0; j < n; j++) {
        const nnp_tensor *t = &net->tensors[j];
        p->sigma[j] = prior_sigma(cfg, net, t);
        if (cfg->mode == NNP_PRECOND_STATIC && !t->is_bias && !t->norm && !(p->sigma[j] > 0)) {
            nnp_status e = nnp_error(NNP_ERR_ARG,
                                     "--precond static: the initializer gives %s no spread "
                                     "(std 0), so its prior defines no multiplier; use "
                                     "--precond dynamic or another --init",
                                     t->name);
            nnp_precond_free(p);
            return e;
        }
    }
    nnp_precond_recompute(p, net);
    return NNP_OK;
}

void nnp_precond_free(nnp_precond *p)
{
    if (!p)
        return;
    NNP_FREE(p->sigma);
    NNP_FREE(p->gain);
    NNP_FREE(p->prec);
    NNP_FREE(p->scale);
    NNP_FREE(p->sums);
    NNP_FREE(p->q);
    NNP_FREE(p->v);
    NNP_FREE(p->quad);
    NNP_FREE(p->eg);
    NNP_FREE(p->bf);
    NNP_FREE(p->ef);
    NNP_FREE(p->sg);
    NNP_FREE(p->mf);
    NNP_FREE(p->xm);
    NNP_FREE(p->bnc);
    NNP_FREE(p->bno);
    NNP_FREE(p->rho);
    for (int k = 0; k < 4; k++)
        NNP_FREE(p->part[k]);
    NNP_FREE(p->blk);
    p->n_blk = 0;
    p->n = 0;
}

void nnp_precond_range_sums(const float *w, size_t a, size_t b, double *s1, double *s2)
{
    /* eight independent double accumulators: a single running sum is one long chain of
     * dependent additions (about 4 cycles per element); eight lanes vectorize and keep the
     * pass near memory speed */
    double l1[8] = {0}, l2[8] = {0};
    size_t i = a;
    for (; i + 8 <= b; i += 8)
        for (int k = 0; k < 8; k++) {
            const double v = w[i + (size_t)k];
            l1[k] += v;
            l2[k] += v * v;
        }
    double t1 = 0.0, t2 = 0.0;
    for (; i < b; i++) {
        const double v = w[i];
        t1 += v;
        t2 += v * v;
    }
    for (int k = 0; k < 8; k++) {
        t1 += l1[k];
        t2 += l2[k];
    }
    *s1 += t1;
    *s2 += t2;
}

void nnp_precond_local_sums(nnp_precond *p, const nnp_net *net, int rank, int size)
{
    size_t lo, hi;
    nnp_split(net->n_params, size, rank, &lo, &hi);
    memset(p->sums, 0, 2 * (size_t)p->n * sizeof(double));
    for (int j = 0; j < p->n; j++) {
        const nnp_tensor *t = &net->tensors[j];
        size_t a = t->off > lo ? t->off : lo;
        size_t b = t->off + t->n < hi ? t->off + t->n : hi;
        double s1 = 0.0, s2 = 0.0;
        nnp_precond_range_sums(net->params, a, b, &s1, &s2);
        p->sums[2 * j] = s1;
        p->sums[2 * j + 1] = s2;
    }
}

void nnp_precond_grad_sums(nnp_precond *p, const nnp_net *net, int rank, int size)
{
    if (p->n_sums <= p->n_share)
        return;
    size_t lo, hi;
    nnp_split(net->n_params, size, rank, &lo, &hi);
    double *gn = p->sums + 2 * (size_t)p->n;
    for (int j = 0; j < p->n; j++) {
        const nnp_tensor *t = &net->tensors[j];
        if (!t->norm)
            continue;
        const size_t a = t->off > lo ? t->off : lo;
        const size_t b = t->off + t->n < hi ? t->off + t->n : hi;
        double s1 = 0.0, s2 = 0.0;
        nnp_precond_range_sums(net->grads, a, b, &s1, &s2);
        *gn++ = s2;
    }
}

/* Sum of squares of n floats: 16 float lanes over blocks of 512 elements (32 terms per lane,
 * relative rounding ~1e-6 per block), each block's total added in double. This pass runs
 * every step over every activation, so it is kept at float SIMD width. */
static double sum_sq(const float *x, size_t n)
{
    double t = 0.0;
    size_t i = 0;
    for (; i + 512 <= n; i += 512) {
        float l[16] = {0};
        for (size_t b = 0; b < 512; b += 16)
            for (int k = 0; k < 16; k++)
                l[k] += x[i + b + (size_t)k] * x[i + b + (size_t)k];
        float s = 0.0f;
        for (int k = 0; k < 16; k++)
            s += l[k];
        t += s;
    }
    for (; i < n; i++)
        t += (double)x[i] * x[i];
    return t;
}

void nnp_precond_batch_sums(nnp_precond *p, const nnp_net *net, int B)
{
    if (p->n_sums <= p->n_share)
        return;
    double *m = p->sums + p->n_share;
    double *cs = m + 2 * (size_t)p->n_tr + 1; /* per-channel sums of x, layer after layer */
    for (int i = 0, k = 0; i < net->n_layers; i++) {
        const nnp_layer *L = &net->layers[i];
        if (L->tensor < 0)
            continue;
        /* a layer's own input: a projection shortcut's first layer reads its block's input;
         * a BatchNorm layer's weight multiplies x_hat, whose second moment is 1 */
        const float *x = nnp_layer_input(net, i);
        const size_t nx = (size_t)B * nnp_shape_size(L->in);
        m[2 * k] = B > 0 && L->kind != NNP_L_BN ? sum_sq(x, nx) : 0.0;
        m[2 * k + 1] = B > 0 ? sum_sq(net->dact[i + 1], (size_t)B * nnp_shape_size(L->out)) : 0.0;
        if (feeds_bn(net, i)) {
            int C;
            size_t S;
            input_groups(L, &C, &S);
            for (int c = 0; c < C; c++)
                cs[c] = 0.0;
            for (int n = 0; n < B; n++)
                for (int c = 0; c < C; c++) {
                    const float *xc = x + ((size_t)n * C + c) * S;
                    double t = 0.0;
                    for (size_t e = 0; e < S; e++)
                        t += xc[e];
                    cs[c] += t;
                }
            cs += C;
        }
        k++;
    }
    m[2 * (size_t)p->n_tr] = B;
}

nnp_status nnp_precond_from_sums(nnp_precond *p, const nnp_net *net, int64_t step)
{
    for (int j = 0; j < p->n; j++) {
        const nnp_tensor *t = &net->tensors[j];
        double s1 = p->sums[2 * j], s2 = p->sums[2 * j + 1];
        if (!isfinite(s1) || !isfinite(s2))
            return nnp_error(NNP_ERR_NUMERIC,
                             "training diverged at step %lld: the preconditioner's sums of %s "
                             "are no longer finite (sum %g, sum of squares %g); lower --lr",
                             (long long)step + 1, t->name, s1, s2);
    }
    for (size_t k = 2 * (size_t)p->n; k < p->n_sums; k++)
        if (!isfinite(p->sums[k]))
            return nnp_error(NNP_ERR_NUMERIC,
                             "training diverged at step %lld: the layers' activation or "
                             "gradient moments the preconditioner measures are no longer "
                             "finite; lower --lr",
                             (long long)step + 1);
    p->measured = p->n_sums > p->n_share && p->sums[p->n_share + 2 * (size_t)p->n_tr] > 0;
    for (int j = 0; j < p->n; j++) {
        const nnp_tensor *t = &net->tensors[j];
        if (t->is_bias && p->cfg.bias_prior) {
            p->sigma[j] = prior_sigma(&p->cfg, net, t);
            continue;
        }
        double nn = (double)t->n;
        double mean = p->sums[2 * j] / nn;
        /* E[w^2] - E[w]^2 loses digits when |mean| >> std; rounding can make it negative.
         * A BatchNorm scale or shift is measured by its root mean square: the scale starts
         * at 1 with no spread, and it is its size that scales the layer's output. */
        double var = p->sums[2 * j + 1] / nn - (t->norm ? 0.0 : mean * mean);
        if (!(var > 0))
            var = 0;
        double s = sqrt(var);
        p->sigma[j] = s > p->cfg.floor ? s : p->cfg.floor;
    }
    nnp_precond_recompute(p, net);
    p->updated_at = step;
    return NNP_OK;
}

/* ---- corrected formula: Gaussian expectations ---------------------------------------- */

#define QN NNP_PRECOND_QUAD
#define QT 9.0 /* the grid covers [-QT, QT] standard deviations */
static const double SQRT_2PI = 2.50662827463100050242;

/* The grid t_i, the standard normal density phi(t_i) and CDF Phi(t_i), once at init. The
 * trapezoid rule on it is spectrally accurate for smooth integrands times the density (the
 * tanh and sigmoid terms); t = 0 is a node, so a relu kink there costs O(h^4). */
static void quad_setup(double *q)
{
    const double h = 2.0 * QT / (QN - 1);
    for (int i = 0; i < QN; i++) {
        double t = -QT + h * i;
        q[i] = t;
        q[QN + i] = exp(-0.5 * t * t) / SQRT_2PI;
        q[2 * QN + i] = 0.5 * erfc(-t / sqrt(2.0));
    }
}

/* The distribution of one element at a point of the forward pass:
 *     x = f_n(... f_1(mu + s u))
 * where u is the maximum of K independent standard normals (K = 1: u ~ N(0,1)) and f_i are
 * the activations met so far (all monotone, so a max pool commutes with them: the maximum
 * of f(z_i) is f(max z_i)). A trainable layer's output starts one: mu = 0, s = sqrt(v).
 * Average pooling (a sum, not a monotone map) replaces it by a normal with the same mean
 * and the pooled variance. */
#define FD_MAXACT 4
typedef struct {
    double mu, s;
    int K;
    int nact;
    nnp_act act[FD_MAXACT];
    float alpha[FD_MAXACT];
} fdist;

static double act_f(nnp_act a, float alpha, double z)
{
    switch (a) {
    case NNP_ACT_RELU: return z > 0 ? z : 0.0;
    case NNP_ACT_LEAKY_RELU: return z > 0 ? z : (double)alpha * z;
    case NNP_ACT_TANH: return tanh(z);
    case NNP_ACT_SIGMOID: return 1.0 / (1.0 + exp(-z));
    case NNP_ACT_IDENTITY: break;
    }
    return z;
}

static double act_df(nnp_act a, float alpha, double z)
{
    switch (a) {
    case NNP_ACT_RELU: return z > 0 ? 1.0 : 0.0;
    case NNP_ACT_LEAKY_RELU: return z > 0 ? 1.0 : (double)alpha;
    case NNP_ACT_TANH: {
        double t = tanh(z);
        return 1.0 - t * t;
    }
    case NNP_ACT_SIGMOID: {
        double e = 1.0 / (1.0 + exp(-z));
        return e * (1.0 - e);
    }
    case NNP_ACT_IDENTITY: break;
    }
    return 1.0;
}

static int relu_like(nnp_act a) { return a == NNP_ACT_RELU || a == NNP_ACT_LEAKY_RELU; }

/* E[x], E[x^2] of the element (order K), and, when da != NULL, E[(da'(x))^2] of one more
 * activation applied to it, taken at the maximum of K*Kmore elements (a max pool of window
 * Kmore right after that activation: the gradient reaches only the window's maximum). */
static void fd_moments(const double *quad, const fdist *f, double *m1, double *m2,
                       const nnp_act *da, float dalpha, int Kmore, double *dd, double *dm)
{
    double dm_ = 0.0;
    if (!dm)
        dm = &dm_; /* E[da'(x)] at the same place, for the batch sums of section 7 */
    int need_m = 1, need_d = da != NULL;
    /* closed forms: a relu-like activation (or none) straight on N(0, s^2) ... */
    if (f->mu == 0.0 && f->K == 1 && (f->nact == 0 || (f->nact == 1 && relu_like(f->act[0])))) {
        double s2 = f->s * f->s;
        if (f->nact == 0) {
            *m1 = 0.0;
            *m2 = s2;
        } else {
            double a = f->act[0] == NNP_ACT_LEAKY_RELU ? (double)f->alpha[0] : 0.0;
            *m1 = (1.0 - a) * f->s / SQRT_2PI;
            *m2 = 0.5 * (1.0 + a * a) * s2;
        }
        need_m = 0;
    }
    /* ... and the derivative of a relu-like activation (or identity) on the maximum of
     * K*Kmore symmetric elements: positive with probability 1 - 2^-(K Kmore) */
    if (need_d && *da == NNP_ACT_IDENTITY) {
        *dd = *dm = 1.0;
        need_d = 0;
    } else if (need_d && f->mu == 0.0 && f->nact == 0 && relu_like(*da)) {
        double a1 = *da == NNP_ACT_LEAKY_RELU ? (double)dalpha : 0.0;
        double p0 = ldexp(1.0, -(f->K * Kmore));
        *dd = (1.0 - p0) + p0 * a1 * a1;
        *dm = (1.0 - p0) + p0 * a1;
        need_d = 0;
    }
    if (!need_m && !need_d)
        return;
    const double *t = quad, *phi = quad + QN, *Phi = quad + 2 * QN;
    const double h = 2.0 * QT / (QN - 1);
    const int Kd = f->K * Kmore;
    double a1 = 0, a2 = 0, ad = 0, ad1 = 0;
    for (int i = 0; i < QN; i++) {
        double x = f->mu + f->s * t[i];
        for (int k = 0; k < f->nact; k++)
            x = act_f(f->act[k], f->alpha[k], x);
        double wt = (i == 0 || i == QN - 1) ? 0.5 : 1.0;
        /* density of the maximum of K standard normals: K phi Phi^(K-1) */
        if (need_m) {
            double w = phi[i];
            for (int k = 1; k < f->K; k++)
                w *= Phi[i];
            w *= f->K * wt;
            a1 += w * x;
            a2 += w * x * x;
        }
        if (need_d) {
            double w = phi[i];
            for (int k = 1; k < Kd; k++)
                w *= Phi[i];
            double g = act_df(*da, dalpha, x);
            ad += w * Kd * wt * g * g;
            ad1 += w * Kd * wt * g;
        }
    }
    if (need_m) {
        *m1 = a1 * h;
        *m2 = a2 * h;
    }
    if (need_d) {
        *dd = ad * h;
        *dm = ad1 * h;
    }
}

/* Replace f by a normal with its mean and second moment (after average pooling over `pool`
 * independent elements, the variance divides by pool). */
static void fd_reset(const double *quad, fdist *f, int pool)
{
    double m1, m2;
    fd_moments(quad, f, &m1, &m2, NULL, 0, 1, NULL, NULL);
    double var = m2 - m1 * m1;
    f->mu = m1;
    f->s = sqrt(var > 0 ? var / pool : 0.0);
    f->K = 1;
    f->nact = 0;
}

/* Taps u of a k-tap window with stride s and padding p that land inside an input of size
 * n, summed over the m output positions: sum_u #{o < m : 0 <= o*s - p + u < n}. */
static double taps_inside(int n, int m, int k, int s, int p)
{
    double c = 0;
    for (int u = 0; u < k; u++)
        for (int o = 0; o < m; o++) {
            int i = o * s - p + u;
            c += i >= 0 && i < n;
        }
    return c;
}

/* Sum over the output positions of a conv of the taps that land inside its input: the
 * number of (output position, tap) pairs that read a real input element. */
static double conv_taps(const nnp_conv_geom *g)
{
    return taps_inside(g->H, g->OH, g->k, g->s, g->p) * taps_inside(g->W, g->OW, g->k, g->s, g->p);
}

/* Mean number of outputs an input element feeds: dense `out`; conv C_out times the mean
 * over input positions of the (output position, tap) pairs that read it. This is PyTorch's
 * fan_out C_out*k*k for stride 1 when every input position is read by all k*k taps
 * (padding k-1, as LeNet's conv1), C_out*k*k/s^2 in the interior for stride s, and smaller
 * where border positions are read by fewer taps (no padding). */
static double mean_fan_out(const nnp_layer *L, const nnp_tensor *t)
{
    if (L->kind != NNP_L_CONV2D)
        return t->fan_out;
    return L->conv.K * conv_taps(&L->conv) / ((double)L->conv.H * L->conv.W);
}

/* Mean number of inputs that reach one output: dense `in`; conv C_in times the mean over
 * output positions of the taps that land inside the input (zero padding adds nothing). */
static double mean_fan_in(const nnp_layer *L, const nnp_tensor *t)
{
    if (L->kind != NNP_L_CONV2D)
        return t->fan_in;
    return L->conv.C * conv_taps(&L->conv) / ((double)L->conv.OH * L->conv.OW);
}

/* ---- corrected formula: the sweep over the layers ---------------------------------------- */

/* An element distribution during the sweep: the lazily evaluated fdist (a Gaussian, or a
 * window maximum of Gaussians, through monotone activations) or, after an operation it cannot
 * express (a residual sum, dropout, BatchNorm of an activation's output), n weighted
 * particles: (value, weight) pairs in buf, ascending once sorted. */
typedef struct {
    fdist f;
    int part;
    size_t n;
    double *buf;
} dist;

static void d_gauss(dist *d, double mu, double s)
{
    d->f = (fdist){.mu = mu, .s = s, .K = 1, .nact = 0};
    d->part = 0;
    d->n = 0;
}

static void d_copy(dist *dst, const dist *src)
{
    dst->f = src->f;
    dst->part = src->part;
    dst->n = src->n;
    if (src->part)
        memcpy(dst->buf, src->buf, 2 * src->n * sizeof(double));
}

/* The particles of an fdist: the NP_Q midpoints t of the quadrature grid's intervals (no
 * node at 0, a relu's kink), weights h K phi(t) Phi(t)^(K-1), values the activations of
 * mu + s t: as accurate for smooth moments as the grid itself. */
static void d_materialize(dist *d)
{
    if (d->part)
        return;
    const fdist *f = &d->f;
    const double h = 2.0 * QT / NP_Q;
    for (int i = 0; i < NP_Q; i++) {
        const double t = -QT + h * (i + 0.5);
        double w = h * exp(-0.5 * t * t) / SQRT_2PI;
        if (f->K > 1)
            w *= f->K * pow(0.5 * erfc(-t / sqrt(2.0)), f->K - 1);
        double x = f->mu + f->s * t;
        for (int k = 0; k < f->nact; k++)
            x = act_f(f->act[k], f->alpha[k], x);
        d->buf[2 * i] = x;
        d->buf[2 * i + 1] = w;
    }
    d->n = NP_Q;
    d->part = 1;
}

static void pair_swap(double *a, size_t i, size_t j)
{
    const double x = a[2 * i], w = a[2 * i + 1];
    a[2 * i] = a[2 * j];
    a[2 * i + 1] = a[2 * j + 1];
    a[2 * j] = x;
    a[2 * j + 1] = w;
}

static void sift_down(double *a, size_t i, size_t n)
{
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            return;
        if (c + 1 < n && a[2 * (c + 1)] > a[2 * c])
            c++;
        if (!(a[2 * c] > a[2 * i]))
            return;
        pair_swap(a, i, c);
        i = c;
    }
}

/* Sort the particles by value in place (heapsort: no allocation, as in a training step). */
static void d_sort(dist *d)
{
    double *a = d->buf;
    const size_t n = d->n;
    for (size_t i = n / 2; i-- > 0;)
        sift_down(a, i, n);
    for (size_t e = n; e-- > 1;) {
        pair_swap(a, 0, e);
        sift_down(a, 0, e);
    }
}

static double d_weight(const dist *d)
{
    double W = 0.0;
    for (size_t i = 0; i < d->n; i++)
        W += d->buf[2 * i + 1];
    return W;
}

/* Compress to m particles of equal weight: each the mean of the particles (or the parts of
 * them) in one m-quantile of the distribution. The mean is kept, the second moment loses
 * only the spread inside each quantile (the tails'), and a point mass (a relu's zeros)
 * stays exact. scr holds 2m doubles. With bnd (2m doubles) the particles come out sorted
 * also when there are at most m, and bnd receives each one's range of values (lo, hi). */
static void d_compress(dist *d, size_t m, double *scr, double *bnd)
{
    if (!d->part || (d->n <= m && !bnd))
        return;
    d_sort(d);
    if (d->n <= m) {
        for (size_t i = 0; i < d->n; i++)
            bnd[2 * i] = bnd[2 * i + 1] = d->buf[2 * i];
        return;
    }
    const double bw = d_weight(d) / (double)m;
    size_t b = 0;
    double acc_w = 0.0, acc_x = 0.0, lo = 0.0, hi = 0.0;
    int open = 0;
    for (size_t i = 0; i < d->n; i++) {
        const double x = d->buf[2 * i];
        double w = d->buf[2 * i + 1];
        while (w > 0) {
            const double room = bw - acc_w;
            if (!open)
                lo = x;
            open = 1;
            hi = x;
            if (b + 1 < m && w >= room) { /* fill the quantile and close it */
                acc_x += room * x;
                scr[2 * b] = acc_x / bw;
                scr[2 * b + 1] = bw;
                if (bnd) {
                    bnd[2 * b] = lo;
                    bnd[2 * b + 1] = hi;
                }
                b++;
                w -= room;
                acc_w = acc_x = 0.0;
                open = 0;
            } else {
                acc_w += w;
                acc_x += w * x;
                w = 0.0;
            }
        }
    }
    if (acc_w > 0) {
        scr[2 * b] = acc_x / acc_w;
        scr[2 * b + 1] = acc_w;
        if (bnd) {
            bnd[2 * b] = lo;
            bnd[2 * b + 1] = hi;
        }
        b++;
    }
    memcpy(d->buf, scr, 2 * b * sizeof(double));
    d->n = b;
}

/* E[x], E[x^2]. */
static void d_moments(const double *quad, const dist *d, double *m1, double *m2)
{
    if (!d->part) {
        fd_moments(quad, &d->f, m1, m2, NULL, 0, 1, NULL, NULL);
        return;
    }
    double W = 0.0, a1 = 0.0, a2 = 0.0;
    for (size_t i = 0; i < d->n; i++) {
        const double x = d->buf[2 * i], w = d->buf[2 * i + 1];
        W += w;
        a1 += w * x;
        a2 += w * x * x;
    }
    *m1 = a1 / W;
    *m2 = a2 / W;
}

/* E[a'(x)^2] for one more activation a on the element, taken at the maximum of Kmore
 * elements (a max pool of that window right after a: the gradient reaches its maximum);
 * E[a'(x)] there into *mu. */
static double d_dfac(const double *quad, dist *d, nnp_act a, float alpha, int Kmore, double *mu)
{
    if (!d->part) {
        double m1, m2, dd;
        fd_moments(quad, &d->f, &m1, &m2, &a, alpha, Kmore, &dd, mu);
        return dd;
    }
    if (Kmore > 1)
        d_sort(d); /* the maximum's weights need the order; a is monotone */
    const double W = d_weight(d);
    double F = 0.0, acc = 0.0, acc1 = 0.0;
    for (size_t i = 0; i < d->n; i++) {
        const double x = d->buf[2 * i], w = d->buf[2 * i + 1];
        const double wk = Kmore > 1 ? pow((F + w) / W, Kmore) - pow(F / W, Kmore) : w / W;
        const double g = act_df(a, alpha, x);
        acc += wk * g * g;
        acc1 += wk * g;
        F += w;
    }
    *mu = acc1;
    return acc;
}

static void d_act(const double *quad, dist *d, nnp_act a, float alpha)
{
    if (d->part) {
        for (size_t i = 0; i < d->n; i++)
            d->buf[2 * i] = act_f(a, alpha, d->buf[2 * i]);
        return;
    }
    fdist *f = &d->f;
    if (f->nact == FD_MAXACT)
        fd_reset(quad, f, 1);
    f->act[f->nact] = a;
    f->alpha[f->nact] = alpha;
    f->nact++;
}

/* The maximum of K independent elements (a max pool's window). */
static void d_max(dist *d, int K)
{
    if (!d->part) {
        d->f.K *= K;
        return;
    }
    d_sort(d);
    const double W = d_weight(d);
    double F = 0.0;
    for (size_t i = 0; i < d->n; i++) {
        const double w = d->buf[2 * i + 1];
        d->buf[2 * i + 1] = W * (pow((F + w) / W, K) - pow(F / W, K));
        F += w;
    }
}

/* x -> a x + b with a > 0. */
static void d_affine(dist *d, double a, double b)
{
    if (!d->part && d->f.nact == 0 && d->f.K == 1) {
        d->f.mu = a * d->f.mu + b;
        d->f.s *= a;
        return;
    }
    d_materialize(d);
    for (size_t i = 0; i < d->n; i++)
        d->buf[2 * i] = a * d->buf[2 * i] + b;
}

/* Average pooling of `pool` elements taken as independent: a normal with the same mean and
 * the variance divided by pool (as fd_reset). */
static void d_pool(const double *quad, dist *d, int pool)
{
    double m1, m2;
    d_moments(quad, d, &m1, &m2);
    const double var = m2 - m1 * m1;
    d_gauss(d, m1, sqrt(var > 0 ? var / pool : 0.0));
}

/* Inverted dropout: 0 with probability P, x/(1-P) otherwise. */
static void d_dropout(dist *d, double P, size_t cap, double *scr)
{
    d_materialize(d);
    if (d->n + 1 > cap)
        d_compress(d, NP_Q, scr, NULL);
    const double W = d_weight(d);
    for (size_t i = 0; i < d->n; i++) {
        d->buf[2 * i] /= 1.0 - P;
        d->buf[2 * i + 1] *= 1.0 - P;
    }
    d->buf[2 * d->n] = 0.0;
    d->buf[2 * d->n + 1] = P * W;
    d->n++;
}

/* The sum of independent elements of S (a block's shortcut) and Y (its branch): S compressed
 * to NP_S particles (sorted, their value ranges into bnd), Y to NP_Q, out the pairwise
 * sums. */
static void d_add(dist *out, dist *S, dist *Y, double *scr, double *bnd)
{
    d_materialize(S);
    d_materialize(Y);
    d_compress(S, NP_S, scr, bnd);
    d_compress(Y, NP_Q, scr, NULL);
    size_t k = 0;
    for (size_t i = 0; i < S->n; i++)
        for (size_t j = 0; j < Y->n; j++, k++) {
            out->buf[2 * k] = S->buf[2 * i] + Y->buf[2 * j];
            out->buf[2 * k + 1] = S->buf[2 * i + 1] * Y->buf[2 * j + 1];
        }
    out->n = k;
    out->part = 1;
}

static void d_swap(dist *a, dist *b)
{
    const dist t = *a;
    *a = *b;
    *b = t;
}

/* E[1/|w|^2] |w|^2-mean for the n iid prior weights of one output channel: the factor by
 * which a BatchNorm layer's mean 1/std^2 exceeds 1/mean std^2 through the spread of its
 * input layer's weight norms (Jensen). With M(t) = E[exp(-t w^2)] for unit-variance w,
 * E[1/sum w^2] = int_0^inf M(t)^n dt: n/(n-2) for normal weights, a quadrature for
 * uniform ones, 1 for orthogonal rows (equal norms). 1 for n <= 2 (undefined). */
static double norm_jensen(const nnp_init_cfg *ic, const nnp_tensor *t)
{
    const double n = t->fan_in;
    if (n <= 2.0)
        return 1.0;
    switch (ic->kind) {
    case NNP_INIT_ORTHOGONAL:
        if (t->shape[0] <= t->fan_in) /* orthonormal rows: every output's norm is the same */
            return 1.0;
        return n / (n - 2.0);
    case NNP_INIT_PYTORCH:
    case NNP_INIT_XAVIER_UNIFORM:
    case NNP_INIT_KAIMING_UNIFORM:
    case NNP_INIT_UNIFORM: {
        /* w = sqrt(3) v, v ~ U(-1, 1): M(u) = sqrt(pi/(12 u)) erf(sqrt(3 u)); u = e^s */
        const double lo = -40.0, hi = 120.0, h = 0.02;
        double acc = 0.0;
        for (double s = lo; s <= hi; s += h) {
            const double u = exp(s);
            const double M = sqrt(3.14159265358979323846 / (12.0 * u)) * erf(sqrt(3.0 * u));
            acc += pow(M, n) * u;
        }
        return n * acc * h;
    }
    default: return n / (n - 2.0);
    }
}

/* What the sweep keeps of residual block k for the backward pass: its shortcut's particles
 * at the add, sorted (value, weight, the range of values each stands for and the gradient's
 * mean square given that value), its branch's particles, and the particles at the start of
 * the activations that lead into the block when they start elsewhere than at the previous
 * block's add. hdr: the counts nS, nY, npre, and the branch's input gradient c. */
typedef struct {
    double *hdr;
    double *Sx, *Sw, *Slo, *Shi, *Se;
    double *Y, *pre; /* (value, weight) pairs */
} blkv;

static blkv blk_view(const nnp_precond *p, int k)
{
    double *b = p->blk + (size_t)k * BLK_DOUBLES;
    blkv v = {.hdr = b};
    v.Sx = b + 4;
    v.Sw = v.Sx + NP_S;
    v.Slo = v.Sw + NP_S;
    v.Shi = v.Slo + NP_S;
    v.Se = v.Shi + NP_S;
    v.Y = v.Se + NP_S;
    v.pre = v.Y + 2 * (NP_Q + 2);
    return v;
}

/* If layers i+1 .. j-1 are activations and layer j starts a residual block with an identity
 * shortcut, j; else -1. Along such a chain each element keeps its unit: the shortcut carries
 * it, and its activations' derivatives, into the block's sum. */
static int chain_to_fork(const nnp_net *net, int i)
{
    int j = i + 1;
    while (j < net->n_layers && net->layers[j].kind == NNP_L_ACT)
        j++;
    return j < net->n_layers && net->layers[j].kind == NNP_L_RES_FORK && !net->layers[j].proj
               ? j
               : -1;
}

/* The activations of layers [first, last] (all NNP_L_ACT) applied to s: the value, and the
 * product of their squared derivatives along the way into *g2. */
static double chain_apply(const nnp_net *net, int first, int last, double s, double *g2)
{
    double g = 1.0;
    for (int i = first; i <= last; i++) {
        const nnp_layer *L = &net->layers[i];
        const double d = act_df(L->act, L->alpha, s);
        g *= d * d;
        s = act_f(L->act, L->alpha, s);
    }
    *g2 = g;
    return s;
}

/* The gradient's mean square at the input of identity block k given the element's value v:
 * its shortcut's (the mean over the shortcut particles whose range holds v) plus its
 * branch's, which the branch's first layer spreads over all units alike. */
static double blk_efun(const blkv *b, double v)
{
    const size_t n = (size_t)b->hdr[0];
    size_t lo = 0, hi = n; /* first particle with Shi >= v */
    while (lo < hi) {
        const size_t mid = (lo + hi) / 2;
        if (b->Shi[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == n)
        lo = n - 1;
    double acc = 0.0;
    size_t cnt = 0;
    for (size_t a = lo; a < n && b->Slo[a] <= v; a++, cnt++)
        acc += b->Se[a];
    return b->hdr[3] + (cnt ? acc / (double)cnt : b->Se[lo]);
}

/* The forward pass of second moments (corrected formula, predicted moments): q and v of
 * every tensor and the backward factor bf[i] of every layer, E[dx^2]/E[dy^2] per element.
 * The network input is taken as normalized: N(0, 1) elements. Section 7 of
 * docs/preconditioner.md derives each rule. */
static void sweep_forward(nnp_precond *p, const nnp_net *net)
{
    const double *quad = p->quad;
    double *scr = p->part[3];
    dist cur = {.buf = p->part[0]}, blk = {.buf = p->part[1]}, br = {.buf = p->part[2]};
    d_gauss(&cur, 0.0, 1.0);
    double vw = -1.0; /* within-channel variance of a dense/conv output feeding a BatchNorm */
    int kb = -1;      /* the current residual block */
    for (int i = 0; i < net->n_layers; i++) {
        const nnp_layer *L = &net->layers[i];
        const double ratio = (double)nnp_shape_size(L->out) / (double)nnp_shape_size(L->in);
        double bf = 1.0, vw_next = -1.0;
        switch (L->kind) {
        case NNP_L_DENSE:
        case NNP_L_CONV2D: {
            const int jw = L->tensor, jb = jw + 1;
            const nnp_tensor *t = &net->tensors[jw];
            double m1, q;
            d_moments(quad, &cur, &m1, &q);
            p->xm[i] = m1;
            const double sw = p->sigma[jw], sb = p->sigma[jb], nin = mean_fan_in(L, t);
            const double v = nin * sw * sw * q + sb * sb;
            p->q[jw] = q;
            if (feeds_bn(net, i)) {
                /* BatchNorm removes each channel's mean over the batch: what it normalizes
                 * and what the weight gradient sees is the input's spread about its mean */
                const double qc = q - m1 * m1;
                p->q[jw] = qc > 0 ? qc : q;
                vw_next = nin * sw * sw * p->q[jw];
                /* about the mean of a group's Nc terms in the batch: (Nc - 1)/Nc of it */
                int C;
                size_t S;
                input_groups(L, &C, &S);
                const double Nc = (double)p->cfg.bn_batch * (double)S;
                if (Nc > 1)
                    p->q[jw] *= (Nc - 1.0) / Nc;
            }
            p->q[jb] = 1.0;
            p->v[jw] = p->v[jb] = v;
            bf = mean_fan_out(L, t) * sw * sw;
            d_gauss(&cur, 0.0, sqrt(v));
            break;
        }
        case NNP_L_BN: {
            const int jw = L->tensor, jb = jw + 1;
            const double sg = p->sigma[jw], sbeta = p->sigma[jb];
            double var;
            if (vw >= 0) { /* x_hat of a dense/conv output: normal with variance var/(var+eps) */
                var = vw;
                d_gauss(&cur, 0.0, sqrt(sg * sg * var / (var + NNP_BN_EPS) + sbeta * sbeta));
            } else { /* of anything else: the element standardized, times the scale */
                double m1, m2;
                d_moments(quad, &cur, &m1, &m2);
                var = m2 - m1 * m1 > 0 ? m2 - m1 * m1 : 0.0;
                const double a = sg / sqrt(var + NNP_BN_EPS);
                d_affine(&cur, a, -m1 * a);
                if (!cur.part && cur.f.nact == 0 && cur.f.K == 1)
                    cur.f.s = sqrt(cur.f.s * cur.f.s + sbeta * sbeta);
            }
            /* backward: gamma/std on the gradient projected off the channel's mean and
             * x_hat (N-2 of N dimensions), with E[1/std^2] of a batch variance over N
             * normal values N/(N-3) times 1/var */
            const double N = (double)p->cfg.bn_batch * L->in.h * L->in.w;
            bf = sg * sg / (var + NNP_BN_EPS) * (N > 3 ? (N - 2) / (N - 3) : 1.0);
            double m1, m2;
            d_moments(quad, &cur, &m1, &m2);
            p->q[jw] = p->q[jb] = 1.0; /* x_hat has unit second moment; beta's input is 1 */
            p->v[jw] = p->v[jb] = m2;
            /* its output's particles, for the gradient of its scale (predicted_scales) */
            double *o = p->bno + (size_t)i * BNO_DOUBLES;
            if (cur.part && cur.n > NP_Q + 2)
                d_compress(&cur, NP_Q, scr, NULL);
            dist tmp = {.buf = o + 1};
            d_copy(&tmp, &cur);
            d_materialize(&tmp);
            o[0] = (double)tmp.n;
            break;
        }
        case NNP_L_ACT: {
            const nnp_layer *next = i + 1 < net->n_layers ? &net->layers[i + 1] : NULL;
            const int Kmore = next && next->kind == NNP_L_MAXPOOL ? next->k * next->k : 1;
            bf = d_dfac(quad, &cur, L->act, L->alpha, Kmore, &p->mf[i]);
            d_act(quad, &cur, L->act, L->alpha);
            break;
        }
        case NNP_L_MAXPOOL: /* one input per output; the element becomes a window maximum */
            bf = ratio;
            d_max(&cur, L->k * L->k);
            break;
        case NNP_L_AVGPOOL: /* k*k inputs, 1/k^2 each */
            bf = ratio / ((double)L->k * L->k);
            d_pool(quad, &cur, L->k * L->k);
            break;
        case NNP_L_GAP: /* the average pool of the whole map, positions taken as independent */
            bf = ratio / ((double)L->in.h * L->in.w);
            d_pool(quad, &cur, L->in.h * L->in.w);
            break;
        case NNP_L_DROPOUT: /* kept units scaled by 1/(1-P): E[x^2] and E[g^2] times 1/(1-P) */
            p->mf[i] = 1.0;
            if (L->drop > 0.0f) {
                bf = 1.0 / (1.0 - (double)L->drop);
                d_dropout(&cur, (double)L->drop, p->part_cap, scr);
            }
            break;
        case NNP_L_FLATTEN: break;
        case NNP_L_RES_FORK: /* the block's input, kept for the shortcut */
            kb++;
            d_copy(&blk, &cur);
            break;
        case NNP_L_RES_ADD: { /* branch + shortcut, independent: into the free slot */
            dist *S = L->proj ? &cur : &blk, *Y = L->proj ? &br : &cur;
            dist *out = L->proj ? &blk : &br;
            double *bnd = scr + 2 * (NP_S + NP_Q);
            d_add(out, S, Y, scr, bnd);
            const blkv bv = blk_view(p, kb);
            bv.hdr[0] = (double)S->n;
            bv.hdr[1] = (double)Y->n;
            for (size_t a = 0; a < S->n; a++) {
                bv.Sx[a] = S->buf[2 * a];
                bv.Sw[a] = S->buf[2 * a + 1];
                bv.Slo[a] = bnd[2 * a];
                bv.Shi[a] = bnd[2 * a + 1];
            }
            memcpy(bv.Y, Y->buf, 2 * Y->n * sizeof(double));
            d_swap(&cur, out);
            break;
        }
        }
        /* the distribution where a chain of activations into an identity block starts,
         * unless it starts at the previous block's sum (which the backward pass rebuilds);
         * between blocks the slot br is free */
        if (L->kind != NNP_L_ACT && L->kind != NNP_L_RES_ADD && chain_to_fork(net, i) > i + 1) {
            const blkv bv = blk_view(p, kb + 1);
            d_copy(&br, &cur);
            d_materialize(&br);
            d_compress(&br, NP_Q + 2, scr, NULL);
            bv.hdr[2] = (double)br.n;
            memcpy(bv.pre, br.buf, 2 * br.n * sizeof(double));
        }
        p->bf[i] = bf;
        vw = vw_next;
        /* the branch ends before a projection shortcut's first layer, which reads the
         * block's input */
        if (i + 1 < net->n_layers && net->layers[i + 1].src != i + 1) {
            d_swap(&cur, &br);
            d_copy(&cur, &blk);
        }
    }
}

/* Chain statistics of a residual sum or of the activations into a block: over the
 * particles, the derivative D of the chain of activations [first, last], the value v it
 * reaches and the gradient's mean square there, e(v) (blk_efun of the block it leads into,
 * or the constant e_j). cs[0] E[D^2 e(v)], cs[1] E[D], cs[2] E[D^2 x^2 e(v)], cs[3] E[D x],
 * with x the particle's own value times xs (a BatchNorm output over its scale: x_hat). */
typedef struct {
    const nnp_net *net;
    int first, last;
    const blkv *fun; /* NULL: the constant e_j */
    double e_j;
} chainctx;

static void chain_stats(const chainctx *c, double s, double x, double w, double *acc)
{
    double g2;
    const double v = chain_apply(c->net, c->first, c->last, s, &g2);
    const double e = c->fun ? blk_efun(c->fun, v) : c->e_j;
    const double D = sqrt(g2);
    acc[0] += w * g2 * e;
    acc[1] += w * D;
    acc[2] += w * g2 * x * x * e;
    acc[3] += w * D * x;
    acc[4] += w;
}

/* The batch-sum energy below a chain with statistics acc (chain_stats, normalized): the
 * gradient's values D g over a channel's N terms, with E[g g'] = (s_j - e_j)/(N - 1) between
 * terms: E[(sum D g)^2]/N = E[D^2 e] + E[D]^2 (s_j - e_j). */
static double chain_sum_energy(const double *acc, double s_j, double e_j)
{
    return acc[0] + acc[1] * acc[1] * (s_j - e_j);
}

/* Predicted moments: the forward sweep, then the gradient's mean square e at every
 * activation from a unit one at the last trainable layer's output, summed where paths join
 * (a block's input gets its branch's and its shortcut's); prec_k = sqrt(e_L / e_k). Along
 * with e, the batch-sum energy s (the square of a channel's summed gradient per term, e for
 * independent terms): a BatchNorm layer's input gradient sums to zero over each channel,
 * global average pooling spreads one value over the map; it sets the gradients of biases
 * and BatchNorm shifts and scales (rho) and what BatchNorm's backward removes. */
static void predicted_scales(nnp_precond *p, const nnp_net *net)
{
    sweep_forward(p, net);
    double *eg = p->eg, *sg = p->sg;
    const int nl = net->n_layers;
    int last = -1;
    for (int i = 0; i < nl; i++)
        if (net->layers[i].tensor >= 0)
            last = i;
    memset(eg, 0, ((size_t)nl + 1) * sizeof(double));
    memset(sg, 0, ((size_t)nl + 1) * sizeof(double));
    memset(p->bnc, 0, 2 * (size_t)nl * sizeof(double));
    eg[last + 1] = sg[last + 1] = 1.0;
    int kb = p->n_blk;              /* blocks above i */
    int skip_lo = -1, skip_hi = -2; /* a chain of activations handled at its fork or add */
    for (int i = last; i >= 0; i--) {
        const nnp_layer *L = &net->layers[i];
        if (i >= skip_lo && i <= skip_hi)
            continue;
        const double g = eg[i + 1], s = sg[i + 1];
        switch (L->kind) {
        case NNP_L_RES_ADD: {
            /* Both summands get the output's gradient; along the activations above (up to
             * the next layer j) each element keeps its unit, and into an identity block j
             * its gradient depends on its value (blk_efun). Over the sum's particles: the
             * branch gets the mean, the shortcut's particle a the mean given a. */
            const blkv bv = blk_view(p, --kb);
            int j = i + 1;
            while (j < nl && net->layers[j].kind == NNP_L_ACT)
                j++;
            const int fun = j < nl && j <= last && chain_to_fork(net, i) == j;
            const blkv nv = fun ? blk_view(p, kb + 1) : bv;
            const chainctx cc = {net, i + 1, j - 1, fun ? &nv : NULL, eg[j]};
            /* a summand that is a BatchNorm output: the gradient of its scale */
            const int ls = i - 1, lb = L->proj ? L->branch_end - 1 : -1;
            const int bn_s = net->layers[ls].kind == NNP_L_BN;
            const int bn_b = lb >= 0 && net->layers[lb].kind == NNP_L_BN;
            const double xs_s = bn_s ? 1.0 / p->sigma[net->layers[ls].tensor] : 0.0;
            const double xs_b = bn_b ? 1.0 / p->sigma[net->layers[lb].tensor] : 0.0;
            const size_t nS = (size_t)bv.hdr[0], nY = (size_t)bv.hdr[1];
            /* act[i] is the shortcut's output (projection, S) or the branch's (identity, Y) */
            double acc_i[5] = {0}, acc_o[5] = {0}, tot = 0.0, wtot = 0.0;
            for (size_t a = 0; a < nS; a++) {
                double ea = 0.0, wa = 0.0;
                for (size_t b = 0; b < nY; b++) {
                    const double ya = bv.Sx[a], yb = bv.Y[2 * b];
                    const double w = bv.Sw[a] * bv.Y[2 * b + 1];
                    double g2;
                    const double v = chain_apply(net, i + 1, j - 1, ya + yb, &g2);
                    const double e = fun ? blk_efun(&nv, v) : cc.e_j, D = sqrt(g2);
                    const double xi = (L->proj ? ya : yb) * xs_s, xo = yb * xs_b;
                    ea += w * g2 * e;
                    wa += w;
                    acc_i[1] += w * D;
                    acc_i[2] += w * g2 * e * xi * xi;
                    acc_i[3] += w * D * xi;
                    acc_o[2] += w * g2 * e * xo * xo;
                    acc_o[3] += w * D * xo;
                }
                bv.Se[a] = ea / wa;
                tot += ea;
                wtot += wa;
            }
            acc_i[0] = acc_o[0] = tot;
            acc_o[1] = acc_i[1];
            acc_i[4] = acc_o[4] = wtot;
            for (int k = 0; k < 4; k++) {
                acc_i[k] /= acc_i[4];
                acc_o[k] /= acc_o[4];
            }
            const double e_mean = tot / wtot;
            const double s_add = chain_sum_energy(acc_i, sg[j], eg[j]);
            const int other = L->proj ? L->branch_end : L->fork;
            eg[i] += e_mean;
            eg[other] += e_mean;
            sg[i] += s_add;
            sg[other] += s_add;
            if (bn_s) { /* E[G_scale^2]/N = E[D^2 x^2 e] + E[D x]^2 (s_j - e_j) */
                p->bnc[2 * ls] = chain_sum_energy(acc_i + 2, sg[j], eg[j]);
                p->bnc[2 * ls + 1] = 1.0;
            }
            if (bn_b) {
                p->bnc[2 * lb] = chain_sum_energy(acc_o + 2, sg[j], eg[j]);
                p->bnc[2 * lb + 1] = 1.0;
            }
            continue;
        }
        case NNP_L_RES_FORK: {
            eg[i] += g; /* the branch's input gradient; the shortcut's came from the add */
            sg[i] += s;
            if (L->proj)
                continue;
            const blkv bv = blk_view(p, kb);
            bv.hdr[3] = g;
            int c0 = i;
            while (c0 > 0 && net->layers[c0 - 1].kind == NNP_L_ACT)
                c0--;
            if (c0 == i)
                continue;
            skip_lo = c0; /* the activations below: at the previous block's add, or here */
            skip_hi = i - 1;
            if (net->layers[c0 - 1].kind == NNP_L_RES_ADD)
                continue;
            const int lp = c0 - 1, bn = net->layers[lp].kind == NNP_L_BN;
            const double xs = bn ? 1.0 / p->sigma[net->layers[lp].tensor] : 0.0;
            const chainctx cc = {net, c0, i - 1, &bv, 0.0};
            const size_t np = (size_t)bv.hdr[2];
            double acc[5] = {0};
            for (size_t a = 0; a < np; a++)
                chain_stats(&cc, bv.pre[2 * a], bv.pre[2 * a] * xs, bv.pre[2 * a + 1], acc);
            for (int k = 0; k < 4; k++)
                acc[k] /= acc[4];
            eg[c0] += acc[0];
            sg[c0] += chain_sum_energy(acc, sg[i], eg[i]);
            if (bn) {
                p->bnc[2 * lp] = chain_sum_energy(acc + 2, sg[i], eg[i]);
                p->bnc[2 * lp + 1] = 1.0;
            }
            continue;
        }
        case NNP_L_BN: {
            const int jw = L->tensor, jb = jw + 1;
            double gs = p->bnc[2 * i]; /* E[G_scale^2]/N */
            if (!(p->bnc[2 * i + 1] > 0)) {
                /* its output through activations [i+1, j-1] to a layer j that mixes units */
                int j = i + 1;
                while (j < nl && net->layers[j].kind == NNP_L_ACT)
                    j++;
                const double *o = p->bno + (size_t)i * BNO_DOUBLES;
                const chainctx cc = {net, i + 1, j - 1, NULL, eg[j]};
                const double xs = 1.0 / p->sigma[jw];
                double acc[5] = {0};
                for (size_t a = 0; a < (size_t)o[0]; a++)
                    chain_stats(&cc, o[1 + 2 * a], o[1 + 2 * a] * xs, o[2 + 2 * a], acc);
                for (int k = 0; k < 4; k++)
                    acc[k] /= acc[4];
                gs = chain_sum_energy(acc + 2, sg[j], eg[j]);
            }
            p->rho[jw] = g > 0 ? gs / g : 1.0;
            p->rho[jb] = g > 0 ? s / g : 1.0;
            /* backward: gamma/std on the gradient projected off the channel's sum and its
             * sum with x_hat, E[1/std^2] of a batch variance of N normal values N/(N-3)
             * times 1/var (bf = gamma^2/var) */
            const double N = (double)p->cfg.bn_batch * L->in.h * L->in.w;
            double e_in = N > 3 ? N / (N - 3) * (g - (s + gs) / N) : g;
            eg[L->src] += p->bf[i] * (e_in > 0 ? e_in : 0.0);
            continue; /* the input's gradient sums to 0 over each channel: s = 0 */
        }
        case NNP_L_ACT:
            sg[L->src] += p->mf[i] * p->mf[i] * s + (p->bf[i] - p->mf[i] * p->mf[i]) * g;
            break;
        case NNP_L_DROPOUT:
            sg[L->src] += s + (p->bf[i] - 1.0) * g;
            break;
        case NNP_L_AVGPOOL: /* one output's gradient spread over its k*k inputs */
            sg[L->src] += (double)L->k * L->k * p->bf[i] * s;
            break;
        case NNP_L_GAP:
            sg[L->src] += (double)L->in.h * L->in.w * p->bf[i] * s;
            break;
        case NNP_L_DENSE:
        case NNP_L_CONV2D: {
            /* the batch sums of the gradient: the bias's E[G^2] is N s; a weight's gains
             * E[x]^2 (s - e) over its input's N terms of mean E[x] (0 about a BatchNorm's
             * channel mean) */
            const int jw = L->tensor, jb = jw + 1;
            const double r = g > 0 ? s / g : 1.0;
            p->rho[jb] = r > 1e-9 ? r : 1.0; /* 0: feeds a BatchNorm, its gradient is 0 */
            const double xm = feeds_bn(net, i) ? 0.0 : p->xm[i];
            p->rho[jw] = p->q[jw] > 0 ? 1.0 + xm * xm * (r - 1.0) / p->q[jw] : 1.0;
            sg[L->src] += p->bf[i] * s;
            break;
        }
        case NNP_L_MAXPOOL:
        case NNP_L_FLATTEN: sg[L->src] += p->bf[i] * s; break;
        }
        eg[L->src] += p->bf[i] * g;
    }
    const double eL = eg[last + 1] * p->ef[last];
    double e_prev = -1.0;
    for (int i = 0; i <= last; i++) {
        const nnp_layer *L = &net->layers[i];
        if (L->tensor < 0)
            continue;
        const int jw = L->tensor, jb = jw + 1;
        const double e = eg[i + 1] * p->ef[i];
        const double prec = e > 0 ? sqrt(eL / e) : 1.0;
        const double below = e_prev >= 0 ? e_prev : eg[L->src];
        p->gain[jw] = e > 0 ? sqrt(below / e) : 1.0; /* prec_{k-1} / prec_k */
        p->gain[jb] = p->cfg.bias_gain;
        p->prec[jw] = p->prec[jb] = prec;
        e_prev = e;
    }
    if (p->cfg.bias_gain != 1.0) { /* prec_j is the product of 1/g over the tensors after j */
        double f = 1.0;
        for (int j = p->n - 1; j >= 0; j--) {
            p->prec[j] *= f;
            if (net->tensors[j].is_bias)
                f /= p->cfg.bias_gain;
        }
    }
    for (int j = 0; j < p->n; j++) {
        double r = p->rho[j];
        if (!(r > 0) || fabs(r - 1.0) < 1e-12)
            r = p->rho[j] = 1.0;
        if (net->tensors[j].is_bias) /* the weight's scale, on input 1 */
            p->scale[j] = p->prec[j] * p->sigma[j - 1] / sqrt(r);
        else
            p->scale[j] = p->prec[j] * p->sigma[j] / sqrt((p->q[j] > 0 ? p->q[j] : 1.0) * r);
    }
}

/* Dynamic corrected with measured moments: the forward pass of second moments and the
 * backward gains are replaced by what the step's global batch shows. With q_k the mean
 * square of layer k's own input (a projection shortcut's: its block's input; a BatchNorm
 * layer's: x_hat, 1; a layer feeding a BatchNorm layer: centred per input channel, since
 * its output gradient sums to zero over each channel) and e_k that of the gradient at its
 * output, prec_k = sqrt(e_L / e_k) (the last layer's 1), and
 *     weight m = prec_k sigma_W / sqrt(q_k),    bias m = prec_k sigma_W.
 * A layer whose input or output gradient is all zero has a zero gradient: it keeps
 * factor 1 for the missing moment. */
static void measured_scales(nnp_precond *p, const nnp_net *net)
{
    const double *m = p->sums + p->n_share;
    const double N = m[2 * (size_t)p->n_tr];
    const double *cs = m + 2 * (size_t)p->n_tr + 1;
    const double *gn = p->sums + 2 * (size_t)p->n; /* |G|^2 of the BatchNorm tensors */
    double eL = 0.0;
    for (int i = 0, k = 0; i < net->n_layers; i++) {
        const nnp_layer *L = &net->layers[i];
        if (L->tensor < 0)
            continue;
        eL = m[2 * k + 1] / (N * (double)nnp_shape_size(L->out));
        k++;
    }
    double prev_prec = 0.0;
    for (int i = 0, k = 0; i < net->n_layers; i++) {
        const nnp_layer *L = &net->layers[i];
        if (L->tensor < 0)
            continue;
        const int jw = L->tensor, jb = jw + 1;
        const double nin = N * (double)nnp_shape_size(L->in);
        double q = L->kind == NNP_L_BN ? 1.0 : m[2 * k] / nin;
        if (feeds_bn(net, i)) { /* minus the mean square of the group means */
            int C;
            size_t S;
            input_groups(L, &C, &S);
            const double per_c = N * (double)S;
            double mm = 0.0;
            for (int c = 0; c < C; c++)
                mm += cs[c] * cs[c];
            q -= mm / (per_c * nin);
            cs += C;
        }
        double e = m[2 * k + 1] / (N * (double)nnp_shape_size(L->out));
        double prec = e > 0 && eL > 0 ? sqrt(eL / e) : 1.0;
        p->q[jw] = q > 0 ? q : 1.0;
        p->q[jb] = 1.0;
        p->v[jw] = p->v[jb] = e; /* measured: the output gradient's mean square */
        p->prec[jw] = p->prec[jb] = prec;
        p->gain[jb] = p->cfg.bias_gain;
        p->gain[jw] = prev_prec > 0 ? prec / prev_prec : 1.0; /* sqrt(e_{k-1} / e_k) */
        p->rho[jw] = p->rho[jb] = 1.0;
        if (L->kind == NNP_L_BN && e > 0) {
            /* BatchNorm's scale and shift sum a channel's gradient (times x_hat) over its
             * N S terms: their gradients' own squares give the batch-sum ratios */
            const double terms = N * (double)L->in.h * L->in.w * L->in.c;
            const double rw = gn[0] / (terms * e), rb = gn[1] / (terms * e);
            p->rho[jw] = rw > 0 ? rw : 1.0;
            p->rho[jb] = rb > 0 ? rb : 1.0;
            gn += 2;
        }
        p->scale[jw] = prec * p->sigma[jw] / sqrt(p->q[jw] * p->rho[jw]);
        p->scale[jb] = prec * p->sigma[jw] / sqrt(p->rho[jb]);
        prev_prec = prec;
        k++;
    }
}

void nnp_precond_recompute(nnp_precond *p, const nnp_net *net)
{
    int n = p->n;
    if (p->cfg.mode == NNP_PRECOND_NONE) {
        for (int j = 0; j < n; j++) {
            p->gain[j] = p->prec[j] = p->scale[j] = 1.0;
            p->q[j] = 1.0;
        }
        return;
    }
    if (p->cfg.formula == NNP_PFORM_CORRECTED) {
        if (p->measured)
            measured_scales(p, net);
        else
            predicted_scales(p, net);
        return;
    }
    for (int j = 0; j < n; j++) { /* the seed's formula */
        const nnp_tensor *t = &net->tensors[j];
        if (t->is_bias) {
            p->gain[j] = p->cfg.bias_gain;
        } else {
            double fo = 1.0; /* prod(shape[:-1]) */
            for (int d = 0; d + 1 < t->ndim; d++)
                fo *= t->shape[d];
            double g = sqrt(fo) * p->sigma[j];
            p->gain[j] = t->ndim == 2 ? g * sqrt(p->cfg.relu_factor) : g;
        }
        p->q[j] = 1.0;
    }
    double prec = 1.0;
    for (int j = n - 1; j >= 0; j--) {
        p->prec[j] = prec;
        p->scale[j] = prec * p->sigma[j];
        prec /= p->gain[j];
    }
}
