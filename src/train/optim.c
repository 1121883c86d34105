/* optim.c - SGD (momentum, dampening, Nesterov, weight decay), Adam and AdamW over the flat
 * parameter buffer (see optim.h).
 *
 * The update rules are those of torch.optim.SGD / Adam / AdamW in PyTorch 1.13 (single-tensor
 * path, amsgrad off, maximize off). The per-tensor preconditioner scale s_j multiplies the
 * raw gradient before anything else, fused into the same pass:
 *   d = s_j*grad + wd*p                        (SGD, Adam)
 * Every inner loop is a straight pass over one tensor with loop-invariant float
 * coefficients, so the compiler can vectorize it; the step allocates nothing.
 */
#include "nnprec/optim.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "nnprec/alloc.h"
#include "nnprec/precond.h"

nnp_status nnp_opt_parse(const char *name, nnp_opt_kind *out)
{
    if (name && strcmp(name, "sgd") == 0)
        *out = NNP_OPT_SGD;
    else if (name && strcmp(name, "adam") == 0)
        *out = NNP_OPT_ADAM;
    else if (name && strcmp(name, "adamw") == 0)
        *out = NNP_OPT_ADAMW;
    else
        return nnp_error(NNP_ERR_ARG, "unknown optimizer '%s' (expected sgd, adam, adamw)",
                         name ? name : "(null)");
    return NNP_OK;
}

const char *nnp_opt_name(nnp_opt_kind k)
{
    switch (k) {
    case NNP_OPT_SGD: return "sgd";
    case NNP_OPT_ADAM: return "adam";
    case NNP_OPT_ADAMW: return "adamw";
    }
    return "?";
}

/* x in [lo, hi) and finite */
static int in_range(double x, double lo, double hi) { return x >= lo && x < hi; }

static nnp_status validate(const nnp_optim_cfg *c)
{
    if (!(isfinite(c->weight_decay) && c->weight_decay >= 0))
        return nnp_error(NNP_ERR_ARG, "weight decay must be >= 0 (got %g)", c->weight_decay);
    if (c->kind == NNP_OPT_SGD) {
        if (!in_range(c->momentum, 0.0, 1.0))
            return nnp_error(NNP_ERR_ARG, "momentum must be in [0, 1) (got %g)", c->momentum);
        if (!(c->dampening >= 0.0 && c->dampening <= 1.0))
            return nnp_error(NNP_ERR_ARG, "dampening must be in [0, 1] (got %g)",
                             c->dampening);
        /* torch.optim.SGD: "Nesterov momentum requires a momentum and zero dampening" */
        if (c->nesterov && (c->momentum <= 0.0 || c->dampening != 0.0))
            return nnp_error(NNP_ERR_ARG,
                             "nesterov requires momentum > 0 and dampening 0 (got momentum %g, "
                             "dampening %g)",
                             c->momentum, c->dampening);
        return NNP_OK;
    }
    if (c->nesterov)
        return nnp_error(NNP_ERR_ARG, "nesterov applies to sgd only, not %s",
                         nnp_opt_name(c->kind));
    if (!in_range(c->beta1, 0.0, 1.0) || !in_range(c->beta2, 0.0, 1.0))
        return nnp_error(NNP_ERR_ARG, "adam betas must be in [0, 1) (got %g, %g)", c->beta1,
                         c->beta2);
    if (!(isfinite(c->eps) && c->eps > 0))
        return nnp_error(NNP_ERR_ARG, "adam eps must be > 0 (got %g)", c->eps);
    return NNP_OK;
}

nnp_status nnp_optim_init(nnp_optim *o, const nnp_optim_cfg *cfg, size_t n)
{
    if (!o || !cfg)
        return nnp_error(NNP_ERR_ARG, "nnp_optim_init: NULL argument");
    memset(o, 0, sizeof *o);
    if (cfg->kind != NNP_OPT_SGD && cfg->kind != NNP_OPT_ADAM && cfg->kind != NNP_OPT_ADAMW)
        return nnp_error(NNP_ERR_ARG, "unknown optimizer kind %d", (int)cfg->kind);
    NNP_CALL(validate(cfg));
    o->cfg = *cfg;
    o->n = n;
    int adam = cfg->kind != NNP_OPT_SGD;
    if (adam || cfg->momentum > 0) {
        o->buf1 = nnp_calloc(n, sizeof(float));
        if (!o->buf1)
            return NNP_ERR_NOMEM;
    }
    if (adam) {
        o->buf2 = nnp_calloc(n, sizeof(float));
        if (!o->buf2) {
            NNP_FREE(o->buf1);
            return NNP_ERR_NOMEM;
        }
    }
    return NNP_OK;
}

void nnp_optim_free(nnp_optim *o)
{
    if (!o)
        return;
    NNP_FREE(o->buf1);
    NNP_FREE(o->buf2);
    o->n = 0;
    o->t = 0;
}

/* p <- p - lr*(s*g + wd*p) */
static void sgd_plain(size_t n, float *restrict p, const float *restrict g, float s, float wd,
                      float lr)
{
    for (size_t i = 0; i < n; i++)
        p[i] -= lr * (s * g[i] + wd * p[i]);
}

/* First momentum step: buf <- d (torch clones d_p into the buffer, no dampening). */
static void sgd_mom_first(size_t n, float *restrict p, const float *restrict g,
                          float *restrict buf, float s, float wd, float lr, float mom,
                          int nesterov)
{
    if (nesterov) {
        for (size_t i = 0; i < n; i++) {
            float d = s * g[i] + wd * p[i];
            buf[i] = d;
            p[i] -= lr * (d + mom * d);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            float d = s * g[i] + wd * p[i];
            buf[i] = d;
            p[i] -= lr * d;
        }
    }
}

/* buf <- mom*buf + (1-dampening)*d; step along buf, or d + mom*buf for Nesterov. */
static void sgd_mom(size_t n, float *restrict p, const float *restrict g, float *restrict buf,
                    float s, float wd, float lr, float mom, float one_m_damp, int nesterov)
{
    if (nesterov) {
        for (size_t i = 0; i < n; i++) {
            float d = s * g[i] + wd * p[i];
            float b = mom * buf[i] + one_m_damp * d;
            buf[i] = b;
            p[i] -= lr * (d + mom * b);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            float d = s * g[i] + wd * p[i];
            float b = mom * buf[i] + one_m_damp * d;
            buf[i] = b;
            p[i] -= lr * b;
        }
    }
}

/* Adam with (coupled) decay wd and AdamW's decoupled factor `keep` = 1 - lr*wd_decoupled:
 *   p <- keep*p; d = s*g + wd*p; m <- b1 m + (1-b1) d; v <- b2 v + (1-b2) d^2;
 *   p <- p - step * m / (sqrt(v) * inv_sqrt_bc2 + eps)
 * with c1 = 1-b1, c2 = 1-b2 (formed in double), step = lr/(1-b1^t) and
 * inv_sqrt_bc2 = 1/sqrt(1-b2^t), as torch's _single_tensor_adam. */
static void adam_update(size_t n, float *restrict p, const float *restrict g, float *restrict m,
                        float *restrict v, float s, float wd, float keep, float b1, float c1,
                        float b2, float c2, float step, float inv_sqrt_bc2, float eps)
{
    for (size_t i = 0; i < n; i++) {
        float pi = keep * p[i];
        float d = s * g[i] + wd * pi;
        float mi = b1 * m[i] + c1 * d;
        float vi = b2 * v[i] + c2 * d * d;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - step * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
    }
}

void nnp_optim_want_sums(nnp_optim *o, double *sums, size_t lo, size_t hi)
{
    o->sums = sums;
    o->sums_lo = lo;
    o->sums_hi = hi;
}

/* The requested sums of tensor T right after its update, while it is still in cache. */
static void tensor_sums(nnp_optim *o, const nnp_net *net, int j)
{
    const nnp_tensor *T = &net->tensors[j];
    size_t a = T->off > o->sums_lo ? T->off : o->sums_lo;
    size_t b = T->off + T->n < o->sums_hi ? T->off + T->n : o->sums_hi;
    o->sums[2 * j] = o->sums[2 * j + 1] = 0.0;
    if (a < b)
        nnp_precond_range_sums(net->params, a, b, &o->sums[2 * j], &o->sums[2 * j + 1]);
}

void nnp_optim_step(nnp_optim *o, nnp_net *net, double lr, const double *scale)
{
    nnp_optim_step_range(o, net, lr, scale, 0, net->n_params);
}

void nnp_optim_step_range(nnp_optim *o, nnp_net *net, double lr, const double *scale,
                          size_t lo, size_t hi)
{
    const nnp_optim_cfg *c = &o->cfg;
    int64_t t = ++o->t;
    float flr = (float)lr;
    float wd = (float)c->weight_decay, mom = (float)c->momentum;
    float one_m_damp = (float)(1.0 - c->dampening);
    double b1 = c->beta1, b2 = c->beta2;
    double bc1 = 1.0 - pow(b1, (double)t), bc2 = 1.0 - pow(b2, (double)t);
    int adamw = c->kind == NNP_OPT_ADAMW;
    float awd = adamw ? 0.0f : wd;
    float keep = adamw ? (float)(1.0 - lr * c->weight_decay) : 1.0f;
    float step = (float)(lr / bc1), inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    for (int j = 0; j < net->n_tensors; j++) {
        const nnp_tensor *T = &net->tensors[j];
        /* the part [a, b) of tensor j inside [lo, hi) */
        size_t a = T->off > lo ? T->off : lo, b = T->off + T->n < hi ? T->off + T->n : hi;
        if (a < b) {
            size_t n = b - a;
            float s = scale ? (float)scale[j] : 1.0f;
            float *p = net->params + a;
            const float *g = net->grads + a;
            if (c->kind != NNP_OPT_SGD)
                adam_update(n, p, g, o->buf1 + a, o->buf2 + a, s, awd, keep, (float)b1,
                            (float)(1.0 - b1), (float)b2, (float)(1.0 - b2), step, inv_sqrt_bc2,
                            (float)c->eps);
            else if (!o->buf1)
                sgd_plain(n, p, g, s, wd, flr);
            else if (t == 1)
                sgd_mom_first(n, p, g, o->buf1 + a, s, wd, flr, mom, c->nesterov);
            else
                sgd_mom(n, p, g, o->buf1 + a, s, wd, flr, mom, one_m_damp, c->nesterov);
        }
        if (o->sums)
            tensor_sums(o, net, j);
    }
    o->sums = NULL;
}
