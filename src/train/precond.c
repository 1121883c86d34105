/* precond.c - the statistical diagonal gradient preconditioner (docs/preconditioner.md).
 *
 * For tensors j = 0..n-1 in net->tensors order (w1, b1, w2, b2, ...):
 *     prec_j = prod_{k > j} 1/g_k        m_j = prec_j * sigma_j
 * sigma_j is the prior (static) or the current population std (dynamic); g_k is the factor
 * by which tensor k's layer scales the standard deviation of a gradient passed back
 * through it (1 for a bias: a bias does not touch the backward path).
 *
 * formula seed (seed 000, quirks included):
 *     weight g = sqrt(prod(shape[:-1])) * sigma, times sqrt(relu_factor) iff 2-D
 * formula corrected (derived in docs/preconditioner.md):
 *     weight g = sqrt(fan_out_eff * d) * sigma
 *   fan_out_eff = out (dense) or, for a conv, C_out times the mean number of (output
 *   position, tap) pairs that read an input element: C_out*k*k (PyTorch's fan_out) when
 *   every input position is read by all taps, less at unpadded borders, about 1/stride^2
 *   as much for strided convs;
 *   d = E[(d x_in / d z_prev)^2], the mean squared derivative of the element-wise and
 *   pooling operations between the previous trainable layer and this one (the path a
 *   gradient takes below this layer's input): relu 1/2, leaky-relu (1+a^2)/2, tanh and
 *   sigmoid E[f'(z)^2] for z ~ N(0,1), identity/flatten 1; max pooling passes each output's
 *   gradient to one input (factor outputs/inputs), and a relu next to it sees the window
 *   maximum, positive with probability 1 - 2^-(k*k); average pooling outputs/(inputs*k*k).
 *
 * Prior sigma (static, both formulas) is that of --init seed: sqrt(prior_num/fan_in), divided
 * by sqrt(relu_factor) for 2-D weights; bias_std for biases.
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
    cfg->every = 1;
    cfg->relu_factor = 0.34;
    cfg->prior_num = 0.96;
    cfg->bias_std = 0.2;
    cfg->bias_gain = 1.0;
    cfg->bias_prior = 0;
    cfg->floor = 1e-12;
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

/* Prior std of a tensor: the --init seed formula with the preconditioner's constants. */
static double prior_sigma(const nnp_precond_cfg *c, const nnp_tensor *t)
{
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
    size_t n = (size_t)net->n_tensors;
    p->cfg = *cfg;
    p->n = net->n_tensors;
    p->updated_at = -1;
    p->sigma = nnp_calloc(n, sizeof(double));
    p->gain = nnp_calloc(n, sizeof(double));
    p->prec = nnp_calloc(n, sizeof(double));
    p->scale = nnp_calloc(n, sizeof(double));
    p->sums = nnp_calloc(2 * n, sizeof(double));
    if (!p->sigma || !p->gain || !p->prec || !p->scale || !p->sums) {
        nnp_precond_free(p);
        return NNP_ERR_NOMEM;
    }
    for (size_t j = 0; j < n; j++)
        p->sigma[j] = prior_sigma(cfg, &net->tensors[j]);
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
    for (int j = 0; j < p->n; j++) {
        const nnp_tensor *t = &net->tensors[j];
        if (t->is_bias && p->cfg.bias_prior) {
            p->sigma[j] = p->cfg.bias_std;
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

/* ---- corrected formula: the backward factor d of the operations below a layer ---------- */

/* E[f'(z)^2] for z ~ N(0,1): trapezoid rule on [-10, 10] (spectrally accurate for a smooth
 * integrand times the Gaussian density). */
static double mean_sq_derivative(nnp_act a, float alpha)
{
    switch (a) {
    case NNP_ACT_RELU: return 0.5;
    case NNP_ACT_LEAKY_RELU: return 0.5 * (1.0 + (double)alpha * alpha);
    case NNP_ACT_IDENTITY: return 1.0;
    case NNP_ACT_TANH:
    case NNP_ACT_SIGMOID: break;
    }
    const int n = 400;
    const double h = 20.0 / n;
    double acc = 0.0;
    for (int i = 0; i <= n; i++) {
        double z = -10.0 + h * i, d;
        if (a == NNP_ACT_TANH) {
            double t = tanh(z);
            d = 1.0 - t * t;
        } else {
            double s = 1.0 / (1.0 + exp(-z));
            d = s * (1.0 - s);
        }
        double w = (i == 0 || i == n) ? 0.5 : 1.0;
        acc += w * d * d * exp(-0.5 * z * z);
    }
    return acc * h / sqrt(2.0 * 3.14159265358979323846);
}

static int is_relu_like(const nnp_layer *L)
{
    return L->kind == NNP_L_ACT && (L->act == NNP_ACT_RELU || L->act == NNP_ACT_LEAKY_RELU);
}

/* Backward factor of the non-trainable layers (first, last) (inclusive indices), i.e. the
 * mean squared d x_last_out / d x_first_in averaged over input elements. */
static double block_factor(const nnp_net *net, int first, int last)
{
    double d = 1.0;
    for (int i = first; i <= last; i++) {
        const nnp_layer *L = &net->layers[i];
        double ratio = (double)nnp_shape_size(L->out) / (double)nnp_shape_size(L->in);
        switch (L->kind) {
        case NNP_L_ACT: {
            const nnp_layer *prev = i > first ? &net->layers[i - 1] : NULL;
            const nnp_layer *next = i < last ? &net->layers[i + 1] : NULL;
            const nnp_layer *mp = (prev && prev->kind == NNP_L_MAXPOOL)   ? prev
                                  : (next && next->kind == NNP_L_MAXPOOL) ? next
                                                                          : NULL;
            if (mp && is_relu_like(L)) {
                /* relu and max commute: the derivative is taken at the window maximum,
                 * positive unless all k*k (independent, symmetric) inputs are negative */
                double p0 = ldexp(1.0, -mp->k * mp->k);
                double a2 = L->act == NNP_ACT_LEAKY_RELU ? (double)L->alpha * L->alpha : 0.0;
                d *= (1.0 - p0) + p0 * a2;
            } else {
                d *= mean_sq_derivative(L->act, L->alpha);
            }
            break;
        }
        case NNP_L_MAXPOOL: d *= ratio; break;                          /* one input per output */
        case NNP_L_AVGPOOL: d *= ratio / ((double)L->k * L->k); break; /* k*k inputs, 1/k^2 each */
        case NNP_L_FLATTEN: break;
        case NNP_L_DENSE:
        case NNP_L_CONV2D: break; /* not reached: blocks hold no trainable layer */
        }
    }
    return d;
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

/* Mean number of outputs an input element feeds: dense `out`; conv C_out times the mean
 * over input positions of the (output position, tap) pairs that read it. This is PyTorch's
 * fan_out C_out*k*k for stride 1 when every input position is read by all k*k taps
 * (padding k-1, as LeNet's conv1), C_out*k*k/s^2 in the interior for stride s, and smaller
 * where border positions are read by fewer taps (no padding). */
static double mean_fan_out(const nnp_layer *L, const nnp_tensor *t)
{
    if (L->kind != NNP_L_CONV2D)
        return t->fan_out;
    const nnp_conv_geom *g = &L->conv;
    double th = taps_inside(g->H, g->OH, g->k, g->s, g->p);
    double tw = taps_inside(g->W, g->OW, g->k, g->s, g->p);
    return g->K * th * tw / ((double)g->H * g->W);
}

/* g^2 / sigma^2 of a weight tensor under the corrected formula. */
static double corrected_gain2(const nnp_net *net, const nnp_tensor *t)
{
    const nnp_layer *L = &net->layers[t->layer];
    double fo = mean_fan_out(L, t);
    int first = t->layer - 1;
    while (first >= 0 && net->layers[first].tensor < 0)
        first--;
    return fo * block_factor(net, first + 1, t->layer - 1);
}

void nnp_precond_recompute(nnp_precond *p, const nnp_net *net)
{
    int n = p->n;
    if (p->cfg.mode == NNP_PRECOND_NONE) {
        for (int j = 0; j < n; j++)
            p->gain[j] = p->prec[j] = p->scale[j] = 1.0;
        return;
    }
    for (int j = 0; j < n; j++) {
        const nnp_tensor *t = &net->tensors[j];
        if (t->is_bias) {
            p->gain[j] = p->cfg.bias_gain;
        } else if (p->cfg.formula == NNP_PFORM_SEED) {
            double fo = 1.0; /* prod(shape[:-1]) */
            for (int d = 0; d + 1 < t->ndim; d++)
                fo *= t->shape[d];
            double g = sqrt(fo) * p->sigma[j];
            p->gain[j] = t->ndim == 2 ? g * sqrt(p->cfg.relu_factor) : g;
        } else {
            p->gain[j] = sqrt(corrected_gain2(net, t)) * p->sigma[j];
        }
    }
    double prec = 1.0;
    for (int j = n - 1; j >= 0; j--) {
        p->prec[j] = prec;
        p->scale[j] = prec * p->sigma[j];
        prec /= p->gain[j];
    }
}
