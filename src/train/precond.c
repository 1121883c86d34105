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
}

static void quad_setup(double *q);

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
    if (cfg->mode != NNP_PRECOND_NONE) {
        static const struct { nnp_layer_kind k; const char *what; } underived[] = {
            {NNP_L_BN, "BatchNorm layers"},
            {NNP_L_GAP, "global average pooling (gap)"},
            {NNP_L_DROPOUT, "dropout"},
            {NNP_L_RES_ADD, "residual blocks (res[...])"},
        };
        for (size_t u = 0; u < sizeof underived / sizeof underived[0]; u++)
            if (nnp_net_has(net, underived[u].k))
                return nnp_error(NNP_ERR_ARG, "the preconditioner is not derived for %s yet "
                                              "(model %s): use --precond none",
                                 underived[u].what, net->spec);
    }
    size_t n = (size_t)net->n_tensors;
    p->cfg = *cfg;
    p->n = net->n_tensors;
    p->updated_at = -1;
    p->sigma = nnp_calloc(n, sizeof(double));
    p->gain = nnp_calloc(n, sizeof(double));
    p->prec = nnp_calloc(n, sizeof(double));
    p->scale = nnp_calloc(n, sizeof(double));
    p->n_tr = net->n_trainable;
    p->n_sums = 2 * n;
    if (cfg->mode == NNP_PRECOND_DYNAMIC && cfg->formula == NNP_PFORM_CORRECTED && cfg->measure)
        p->n_sums += 2 * (size_t)p->n_tr + 1;
    p->sums = nnp_calloc(p->n_sums, sizeof(double));
    p->q = nnp_calloc(n, sizeof(double));
    p->v = nnp_calloc(n, sizeof(double));
    p->quad = nnp_calloc(3 * (size_t)NNP_PRECOND_QUAD, sizeof(double));
    if (!p->sigma || !p->gain || !p->prec || !p->scale || !p->sums || !p->q || !p->v ||
        !p->quad) {
        nnp_precond_free(p);
        return NNP_ERR_NOMEM;
    }
    quad_setup(p->quad);
    for (size_t j = 0; j < n; j++) {
        const nnp_tensor *t = &net->tensors[j];
        p->sigma[j] = prior_sigma(cfg, net, t);
        if (cfg->mode == NNP_PRECOND_STATIC && !t->is_bias && !(p->sigma[j] > 0)) {
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
    if (p->n_sums <= 2 * (size_t)p->n)
        return;
    double *m = p->sums + 2 * (size_t)p->n;
    for (int i = 0, k = 0; i < net->n_layers; i++) {
        const nnp_layer *L = &net->layers[i];
        if (L->tensor < 0)
            continue;
        m[2 * k] = B > 0 ? sum_sq(net->act[i], (size_t)B * nnp_shape_size(L->in)) : 0.0;
        m[2 * k + 1] = B > 0 ? sum_sq(net->dact[i + 1], (size_t)B * nnp_shape_size(L->out)) : 0.0;
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
                             "preconditioner: non-finite weight sums of %s at step %lld "
                             "(sum %g, sum of squares %g)",
                             t->name, (long long)step, s1, s2);
    }
    for (size_t k = 2 * (size_t)p->n; k < p->n_sums; k++)
        if (!isfinite(p->sums[k]))
            return nnp_error(NNP_ERR_NUMERIC,
                             "preconditioner: non-finite activation or gradient moments at "
                             "step %lld",
                             (long long)step);
    p->measured = p->n_sums > 2 * (size_t)p->n && p->sums[p->n_sums - 1] > 0;
    for (int j = 0; j < p->n; j++) {
        const nnp_tensor *t = &net->tensors[j];
        if (t->is_bias && p->cfg.bias_prior) {
            p->sigma[j] = prior_sigma(&p->cfg, net, t);
            continue;
        }
        double nn = (double)t->n;
        double mean = p->sums[2 * j] / nn;
        /* E[w^2] - E[w]^2 loses digits when |mean| >> std; rounding can make it negative */
        double var = p->sums[2 * j + 1] / nn - mean * mean;
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
                       const nnp_act *da, float dalpha, int Kmore, double *dd)
{
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
        *dd = 1.0;
        need_d = 0;
    } else if (need_d && f->mu == 0.0 && f->nact == 0 && relu_like(*da)) {
        double a2 = *da == NNP_ACT_LEAKY_RELU ? (double)dalpha * dalpha : 0.0;
        double p0 = ldexp(1.0, -(f->K * Kmore));
        *dd = (1.0 - p0) + p0 * a2;
        need_d = 0;
    }
    if (!need_m && !need_d)
        return;
    const double *t = quad, *phi = quad + QN, *Phi = quad + 2 * QN;
    const double h = 2.0 * QT / (QN - 1);
    const int Kd = f->K * Kmore;
    double a1 = 0, a2 = 0, ad = 0;
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
        }
    }
    if (need_m) {
        *m1 = a1 * h;
        *m2 = a2 * h;
    }
    if (need_d)
        *dd = ad * h;
}

/* Replace f by a normal with its mean and second moment (after average pooling over `pool`
 * independent elements, the variance divides by pool). */
static void fd_reset(const double *quad, fdist *f, int pool)
{
    double m1, m2;
    fd_moments(quad, f, &m1, &m2, NULL, 0, 1, NULL);
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

/* Walk the non-trainable layers [first, last] from element distribution f: f becomes the
 * distribution at their output, and the return value is the backward factor d (the mean
 * squared derivative of the block, averaged over its input elements). */
static double walk_block(const nnp_precond *p, const nnp_net *net, int first, int last, fdist *f)
{
    double d = 1.0;
    for (int i = first; i <= last; i++) {
        const nnp_layer *L = &net->layers[i];
        double ratio = (double)nnp_shape_size(L->out) / (double)nnp_shape_size(L->in);
        switch (L->kind) {
        case NNP_L_ACT: {
            const nnp_layer *next = i < last ? &net->layers[i + 1] : NULL;
            int Kmore = next && next->kind == NNP_L_MAXPOOL ? next->k * next->k : 1;
            double m1, m2, dd;
            fd_moments(p->quad, f, &m1, &m2, &L->act, L->alpha, Kmore, &dd);
            d *= dd;
            if (f->nact == FD_MAXACT)
                fd_reset(p->quad, f, 1);
            f->act[f->nact] = L->act;
            f->alpha[f->nact] = L->alpha;
            f->nact++;
            break;
        }
        case NNP_L_MAXPOOL: /* one input per output; the element becomes a window maximum */
            d *= ratio;
            f->K *= L->k * L->k;
            break;
        case NNP_L_AVGPOOL: /* k*k inputs, 1/k^2 each */
            d *= ratio / ((double)L->k * L->k);
            fd_reset(p->quad, f, L->k * L->k);
            break;
        case NNP_L_FLATTEN: break;
        case NNP_L_DENSE:
        case NNP_L_CONV2D: break; /* not reached: blocks hold no trainable layer */
        case NNP_L_BN:
        case NNP_L_GAP:
        case NNP_L_DROPOUT:
        case NNP_L_RES_FORK:
        case NNP_L_RES_ADD: break; /* not reached: nnp_precond_init refuses them */
        }
    }
    return d;
}

/* The forward pass of second moments (corrected formula): q, v of every tensor and the
 * backward factor d of the block below every weight (returned in gain[] as d, turned
 * into g by the caller). The network input is taken as normalized: N(0, 1) elements. */
static void forward_sweep(nnp_precond *p, const nnp_net *net)
{
    fdist f = {.mu = 0.0, .s = 1.0, .K = 1, .nact = 0};
    int first = 0; /* first layer of the current block */
    for (int i = 0; i < net->n_layers; i++) {
        const nnp_layer *L = &net->layers[i];
        if (L->tensor < 0)
            continue;
        double d = walk_block(p, net, first, i - 1, &f);
        double m1, q;
        fd_moments(p->quad, &f, &m1, &q, NULL, 0, 1, NULL);
        int jw = L->tensor, jb = jw + 1;
        double sw = p->sigma[jw], sb = p->sigma[jb];
        double v = mean_fan_in(L, &net->tensors[jw]) * sw * sw * q + sb * sb;
        p->q[jw] = q;
        p->q[jb] = 1.0;
        p->v[jw] = p->v[jb] = v;
        p->gain[jw] = d;
        f = (fdist){.mu = 0.0, .s = sqrt(v), .K = 1, .nact = 0};
        first = i + 1;
    }
}

/* Dynamic corrected with measured moments: the forward pass of second moments and the
 * backward gains are replaced by what the step's global batch shows. With q_k the mean
 * square of layer k's input and e_k that of the gradient at its output (the loss gradient
 * reaching its pre-activation), prec_k = sqrt(e_L / e_k) (the last layer's 1), and
 *     weight m = prec_k sigma_W / sqrt(q_k),    bias m = prec_k sigma_W.
 * A layer whose input or output gradient is all zero has a zero gradient: it keeps
 * factor 1 for the missing moment. */
static void measured_scales(nnp_precond *p, const nnp_net *net)
{
    const double *m = p->sums + 2 * (size_t)p->n;
    const double N = m[2 * (size_t)p->n_tr];
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
        double q = m[2 * k] / (N * (double)nnp_shape_size(L->in));
        double e = m[2 * k + 1] / (N * (double)nnp_shape_size(L->out));
        double prec = e > 0 && eL > 0 ? sqrt(eL / e) : 1.0;
        p->q[jw] = q > 0 ? q : 1.0;
        p->q[jb] = 1.0;
        p->v[jw] = p->v[jb] = e; /* measured: the output gradient's mean square */
        p->prec[jw] = p->prec[jb] = prec;
        p->gain[jb] = p->cfg.bias_gain;
        p->gain[jw] = prev_prec > 0 ? prec / prev_prec : 1.0; /* sqrt(e_{k-1} / e_k) */
        p->scale[jw] = prec * p->sigma[jw] / sqrt(p->q[jw]);
        p->scale[jb] = prec * p->sigma[jw];
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
    const int corrected = p->cfg.formula == NNP_PFORM_CORRECTED;
    if (corrected && p->measured) {
        measured_scales(p, net);
        return;
    }
    if (corrected)
        forward_sweep(p, net); /* q, v, and d in gain[] of every weight */
    for (int j = 0; j < n; j++) {
        const nnp_tensor *t = &net->tensors[j];
        if (t->is_bias) {
            p->gain[j] = p->cfg.bias_gain;
        } else if (!corrected) {
            double fo = 1.0; /* prod(shape[:-1]) */
            for (int d = 0; d + 1 < t->ndim; d++)
                fo *= t->shape[d];
            double g = sqrt(fo) * p->sigma[j];
            p->gain[j] = t->ndim == 2 ? g * sqrt(p->cfg.relu_factor) : g;
            p->q[j] = 1.0;
        } else {
            double d = p->gain[j];
            p->gain[j] = sqrt(mean_fan_out(&net->layers[t->layer], t) * d) * p->sigma[j];
        }
    }
    double prec = 1.0;
    for (int j = n - 1; j >= 0; j--) {
        const nnp_tensor *t = &net->tensors[j];
        p->prec[j] = prec;
        if (!corrected)
            p->scale[j] = prec * p->sigma[j];
        else if (t->is_bias)
            p->scale[j] = prec * p->sigma[j - 1]; /* the weight's scale, on input 1 */
        else
            p->scale[j] = prec * p->sigma[j] / sqrt(p->q[j] > 0 ? p->q[j] : 1.0);
        prec /= p->gain[j];
    }
}
