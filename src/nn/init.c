/* init.c - parameter initializers (formulas in init.h).
 *
 * Formulas follow torch.nn.init (PyTorch 1.13): calculate_gain, xavier_uniform_/normal_,
 * kaiming_uniform_/normal_ (mode fan_in), orthogonal_, and the Linear/Conv2d default
 * reset_parameters (U(+-1/sqrt(fan_in)) for weight and bias). "seed" is the seed project's
 * prior (init.h; the static preconditioner assumes the same prior by default).
 *
 * Trainable layer k draws from RNG stream (seed, NNP_STREAM_INIT + k), weight first, then
 * bias, so a layer's values depend only on (seed, k, its shape) and never on other layers.
 */
#include "nnprec/init.h"
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <cblas.h>
#include "nnprec/alloc.h"
#include "nnprec/rng.h"

#define INIT_NAMES                                                                          \
    "pytorch, xavier-uniform, xavier-normal, kaiming-uniform, kaiming-normal, lecun-normal, " \
    "orthogonal, normal:STD, uniform:A, constant:C, seed"

static const struct {
    const char *name;
    nnp_init_kind kind;
} plain_names[] = {
    {"pytorch", NNP_INIT_PYTORCH},
    {"xavier-uniform", NNP_INIT_XAVIER_UNIFORM},
    {"xavier-normal", NNP_INIT_XAVIER_NORMAL},
    {"kaiming-uniform", NNP_INIT_KAIMING_UNIFORM},
    {"kaiming-normal", NNP_INIT_KAIMING_NORMAL},
    {"lecun-normal", NNP_INIT_LECUN_NORMAL},
    {"orthogonal", NNP_INIT_ORTHOGONAL},
    {"seed", NNP_INIT_SEED},
};

static const struct {
    const char *prefix; /* without the colon */
    nnp_init_kind kind;
    const char *arg;
} valued_names[] = {
    {"normal", NNP_INIT_NORMAL, "STD"},
    {"uniform", NNP_INIT_UNIFORM, "A"},
    {"constant", NNP_INIT_CONSTANT, "C"},
};

nnp_status nnp_init_parse(const char *name, nnp_init_cfg *out)
{
    if (!name || !out)
        return nnp_error(NNP_ERR_ARG, "nnp_init_parse: NULL argument");
    nnp_init_cfg c = {.kind = NNP_INIT_PYTORCH,
                      .value = 0.0,
                      .prior_num = 0.96,
                      .relu_factor = 0.34,
                      .bias_std = 0.2};
    for (size_t i = 0; i < sizeof plain_names / sizeof plain_names[0]; i++)
        if (strcmp(name, plain_names[i].name) == 0) {
            c.kind = plain_names[i].kind;
            *out = c;
            return NNP_OK;
        }
    for (size_t i = 0; i < sizeof valued_names / sizeof valued_names[0]; i++) {
        size_t len = strlen(valued_names[i].prefix);
        if (strncmp(name, valued_names[i].prefix, len) != 0 ||
            (name[len] != ':' && name[len] != '\0'))
            continue;
        if (name[len] == '\0' || name[len + 1] == '\0')
            return nnp_error(NNP_ERR_ARG, "init '%s' needs a value: %s:%s", name,
                             valued_names[i].prefix, valued_names[i].arg);
        const char *num = name + len + 1;
        char *end;
        errno = 0;
        double v = strtod(num, &end);
        if (errno || end == num || *end || !isfinite(v))
            return nnp_error(NNP_ERR_ARG, "bad number '%s' in init '%s' (expected %s:%s)", num,
                             name, valued_names[i].prefix, valued_names[i].arg);
        if (valued_names[i].kind != NNP_INIT_CONSTANT && v < 0)
            return nnp_error(NNP_ERR_ARG, "init '%s': %s must be >= 0", name,
                             valued_names[i].arg);
        c.kind = valued_names[i].kind;
        c.value = v;
        *out = c;
        return NNP_OK;
    }
    return nnp_error(NNP_ERR_ARG, "unknown init '%s' (expected one of: " INIT_NAMES ")", name);
}

/* torch.nn.init.calculate_gain */
double nnp_init_gain(nnp_act a, float alpha)
{
    switch (a) {
    case NNP_ACT_RELU: return sqrt(2.0);
    case NNP_ACT_LEAKY_RELU: return sqrt(2.0 / (1.0 + (double)alpha * (double)alpha));
    case NNP_ACT_TANH: return 5.0 / 3.0;
    case NNP_ACT_SIGMOID:
    case NNP_ACT_IDENTITY: return 1.0;
    }
    return 1.0;
}

/* Gain of the activation after the layer that owns tensor t (net.c stores the following
 * activation and its leaky-relu slope in the trainable layer). */
static double tensor_gain(const nnp_net *net, const nnp_tensor *t)
{
    const nnp_layer *L = &net->layers[t->layer];
    return nnp_init_gain(L->next_act, L->alpha);
}

/* Rows (dim 0) and columns (product of the other dims) of a weight viewed as a matrix. */
static void weight_rc(const nnp_tensor *t, size_t *rows, size_t *cols)
{
    *rows = (size_t)t->shape[0];
    *cols = *rows ? t->n / *rows : 0;
}

/* Half-width of the uniform distribution for uniform initializers, 0 if not uniform. */
static double uniform_bound(const nnp_init_cfg *cfg, const nnp_net *net, const nnp_tensor *t)
{
    double fi = t->fan_in, fo = t->fan_out;
    switch (cfg->kind) {
    case NNP_INIT_PYTORCH: return 1.0 / sqrt(fi); /* weight and bias alike */
    case NNP_INIT_XAVIER_UNIFORM:
        return t->is_bias ? 0.0 : tensor_gain(net, t) * sqrt(6.0 / (fi + fo));
    case NNP_INIT_KAIMING_UNIFORM:
        return t->is_bias ? 0.0 : tensor_gain(net, t) * sqrt(3.0 / fi);
    case NNP_INIT_UNIFORM: return t->is_bias ? 0.0 : cfg->value;
    default: return 0.0;
    }
}

static int is_uniform_kind(nnp_init_kind k)
{
    return k == NNP_INIT_PYTORCH || k == NNP_INIT_XAVIER_UNIFORM ||
           k == NNP_INIT_KAIMING_UNIFORM || k == NNP_INIT_UNIFORM;
}

/* Standard deviation of the normal initializers (and of orthogonal/constant as documented). */
double nnp_init_std(const nnp_init_cfg *cfg, const nnp_net *net, const nnp_tensor *t)
{
    if (is_uniform_kind(cfg->kind))
        return uniform_bound(cfg, net, t) / sqrt(3.0); /* Var U(-a,a) = a^2/3 */
    double fi = t->fan_in, fo = t->fan_out;
    if (cfg->kind == NNP_INIT_SEED) {
        if (t->is_bias)
            return cfg->bias_std;
        /* prior sigma = sqrt(num / prod(shape[1:])), / sqrt(relu factor) for 2-D weights */
        double s = sqrt(cfg->prior_num / fi);
        return t->ndim == 2 ? s / sqrt(cfg->relu_factor) : s;
    }
    if (t->is_bias)
        return 0.0;
    switch (cfg->kind) {
    case NNP_INIT_XAVIER_NORMAL: return tensor_gain(net, t) * sqrt(2.0 / (fi + fo));
    case NNP_INIT_KAIMING_NORMAL: return tensor_gain(net, t) / sqrt(fi);
    case NNP_INIT_LECUN_NORMAL: return 1.0 / sqrt(fi);
    case NNP_INIT_NORMAL: return cfg->value;
    case NNP_INIT_CONSTANT: return 0.0;
    case NNP_INIT_ORTHOGONAL: {
        /* gain^2 * min(r,c) unit-norm rows/columns spread over r*c entries */
        size_t r, c;
        weight_rc(t, &r, &c);
        double mn = (double)(r < c ? r : c);
        return tensor_gain(net, t) * sqrt(mn / ((double)r * (double)c));
    }
    default: return 0.0;
    }
}

/* Orthonormalize vector a of v (rows of length len) against vectors [from, a) by modified
 * Gram-Schmidt, twice ("twice is enough", Giraud et al. 2005), then normalize it. */
static int mgs2_one(double *v, size_t len, size_t from, size_t a)
{
    double *va = v + a * len;
    for (int pass = 0; pass < 2; pass++)
        for (size_t b = from; b < a; b++) {
            const double *vb = v + b * len;
            double d = 0.0;
            for (size_t i = 0; i < len; i++)
                d += va[i] * vb[i];
            for (size_t i = 0; i < len; i++)
                va[i] -= d * vb[i];
        }
    double nrm = 0.0;
    for (size_t i = 0; i < len; i++)
        nrm += va[i] * va[i];
    nrm = sqrt(nrm);
    if (!(nrm > 1e-150))
        return -1;
    for (size_t i = 0; i < len; i++)
        va[i] /= nrm;
    return 0;
}

#define ORTHO_BLOCK 32

/* W = gain * Q with orthonormal rows (rows <= cols) or columns (rows > cols), from the
 * Gram-Schmidt QR of a standard normal matrix in double. The nv = min(r,c) vectors are
 * orthonormalized in order, so R has a positive diagonal: the sign convention of
 * torch.nn.init.orthogonal_ (Q * sign(diag R)), which makes Q Haar-distributed.
 * Blocks of ORTHO_BLOCK vectors are first projected out of all earlier vectors with two
 * dgemm passes (block Gram-Schmidt with reorthogonalization), then orthonormalized among
 * themselves by modified Gram-Schmidt, also twice; W W^T = gain^2 I to double rounding
 * before the float store, at BLAS-3 speed for large layers. */
static nnp_status init_orthogonal(nnp_rng *r, float *w, size_t rows, size_t cols, double gain,
                                  const char *name)
{
    int by_rows = rows <= cols;
    size_t nv = by_rows ? rows : cols, len = by_rows ? cols : rows;
    double *v = nnp_malloc(nv * len * sizeof(double));
    double *c = nnp_malloc((size_t)ORTHO_BLOCK * nv * sizeof(double));
    if (!v || !c) {
        free(v);
        free(c);
        return NNP_ERR_NOMEM;
    }
    /* draw in W's row-major order; vector a is row a (by_rows) or column a */
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < cols; j++) {
            double z = nnp_rng_normal(r);
            if (by_rows)
                v[i * len + j] = z;
            else
                v[j * len + i] = z;
        }
    int bad = 0;
    for (size_t a0 = 0; a0 < nv && !bad; a0 += ORTHO_BLOCK) {
        size_t nb = nv - a0 < ORTHO_BLOCK ? nv - a0 : ORTHO_BLOCK;
        double *vb = v + a0 * len;
        for (int pass = 0; a0 > 0 && pass < 2; pass++) {
            /* C[nb, a0] = Vb V^T;  Vb -= C V */
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nb, (int)a0, (int)len, 1.0,
                        vb, (int)len, v, (int)len, 0.0, c, (int)a0);
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nb, (int)len, (int)a0,
                        -1.0, c, (int)a0, v, (int)len, 1.0, vb, (int)len);
        }
        for (size_t a = a0; a < a0 + nb && !bad; a++)
            bad = mgs2_one(v, len, a0, a);
    }
    free(c);
    if (bad) {
        free(v);
        return nnp_error(NNP_ERR_NUMERIC, "orthogonal init of %s: degenerate random matrix",
                         name);
    }
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < cols; j++)
            w[i * cols + j] = (float)(gain * (by_rows ? v[i * len + j] : v[j * len + i]));
    free(v);
    return NNP_OK;
}

static nnp_status init_tensor(const nnp_init_cfg *cfg, nnp_net *net, const nnp_tensor *t,
                              nnp_rng *r)
{
    float *p = net->params + t->off;
    if (cfg->kind == NNP_INIT_CONSTANT) {
        float c = t->is_bias ? 0.0f : (float)cfg->value;
        for (size_t i = 0; i < t->n; i++)
            p[i] = c;
        return NNP_OK;
    }
    if (cfg->kind == NNP_INIT_ORTHOGONAL && !t->is_bias) {
        size_t rows, cols;
        weight_rc(t, &rows, &cols);
        return init_orthogonal(r, p, rows, cols, tensor_gain(net, t), t->name);
    }
    if (is_uniform_kind(cfg->kind)) {
        double a = uniform_bound(cfg, net, t);
        if (a > 0)
            nnp_rng_fill_uniform(r, p, t->n, -a, a);
        else
            memset(p, 0, t->n * sizeof(float));
        return NNP_OK;
    }
    double s = nnp_init_std(cfg, net, t);
    if (s > 0)
        nnp_rng_fill_normal(r, p, t->n, 0.0, s);
    else
        memset(p, 0, t->n * sizeof(float));
    return NNP_OK;
}

nnp_status nnp_init_net(nnp_net *net, const nnp_init_cfg *cfg, uint64_t seed)
{
    if (!net || !cfg)
        return nnp_error(NNP_ERR_ARG, "nnp_init_net: NULL argument");
    if (cfg->kind == NNP_INIT_SEED &&
        !(cfg->prior_num > 0 && cfg->relu_factor > 0 && cfg->bias_std >= 0))
        return nnp_error(NNP_ERR_ARG,
                         "seed init needs prior_num > 0, relu_factor > 0 and bias_std >= 0");
    int k = 0; /* trainable-layer index */
    for (int i = 0; i < net->n_layers; i++) {
        const nnp_layer *L = &net->layers[i];
        if (L->tensor < 0)
            continue;
        if (net->tensors[L->tensor].norm) { /* BatchNorm: scale 1, shift 0 under every --init */
            for (size_t e = 0; e < net->tensors[L->tensor].n; e++) {
                net->params[net->tensors[L->tensor].off + e] = 1.0f;
                net->params[net->tensors[L->tensor + 1].off + e] = 0.0f;
            }
            continue; /* and no stream: the layers around it draw as without it */
        }
        nnp_rng r;
        nnp_rng_seed(&r, seed, (uint64_t)NNP_STREAM_INIT + (uint64_t)k);
        for (int j = L->tensor; j <= L->tensor + 1; j++) { /* weight, then bias */
            const nnp_tensor *t = &net->tensors[j];
            if (t->fan_in <= 0)
                return nnp_error(NNP_ERR_ARG, "init of %s: fan_in is %d", t->name, t->fan_in);
            NNP_CALL(init_tensor(cfg, net, t, &r));
        }
        k++;
    }
    return NNP_OK;
}
