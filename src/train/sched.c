/* sched.c - learning-rate schedules (see optim.h).
 *
 * A linear warmup comes first: for step < warmup the rate is lr*(step+1)/warmup. After it:
 *   constant  lr
 *   step      lr * gamma^floor(epoch / step_epochs)        (torch.optim.lr_scheduler.StepLR
 *                                                           stepped once per epoch)
 *   cosine    eta_min + (lr - eta_min) * (1 + cos(pi*t/T)) / 2   (CosineAnnealingLR closed
 *             form) with t = step - warmup clamped to [0, T], T = max(total_steps-warmup, 1)
 */
#include <math.h>
#include <string.h>
#include "nnprec/optim.h"

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

nnp_status nnp_sched_parse(const char *name, nnp_sched_kind *out)
{
    if (name && strcmp(name, "constant") == 0)
        *out = NNP_SCHED_CONSTANT;
    else if (name && strcmp(name, "step") == 0)
        *out = NNP_SCHED_STEP;
    else if (name && strcmp(name, "cosine") == 0)
        *out = NNP_SCHED_COSINE;
    else
        return nnp_error(NNP_ERR_ARG, "unknown schedule '%s' (expected constant, step, cosine)",
                         name ? name : "(null)");
    return NNP_OK;
}

double nnp_sched_lr(const nnp_sched *s, int64_t step, int epoch)
{
    if (step < 0)
        step = 0;
    if (epoch < 0)
        epoch = 0;
    if (s->warmup > 0 && step < s->warmup)
        return s->lr * (double)(step + 1) / (double)s->warmup;
    switch (s->kind) {
    case NNP_SCHED_CONSTANT: return s->lr;
    case NNP_SCHED_STEP: {
        int every = s->step_epochs > 0 ? s->step_epochs : 1;
        return s->lr * pow(s->gamma, (double)(epoch / every));
    }
    case NNP_SCHED_COSINE: {
        int64_t w = s->warmup > 0 ? s->warmup : 0;
        int64_t T = s->total_steps - w;
        if (T < 1)
            T = 1;
        int64_t t = step - w;
        if (t > T)
            t = T;
        return s->min_lr + (s->lr - s->min_lr) * (1.0 + cos(M_PI * (double)t / (double)T)) / 2.0;
    }
    }
    return s->lr;
}

nnp_status nnp_lr_scaling_parse(const char *name, nnp_lr_scaling *out)
{
    if (name && strcmp(name, "none") == 0)
        *out = NNP_LRS_NONE;
    else if (name && strcmp(name, "linear") == 0)
        *out = NNP_LRS_LINEAR;
    else if (name && strcmp(name, "sqrt") == 0)
        *out = NNP_LRS_SQRT;
    else
        return nnp_error(NNP_ERR_ARG, "--lr-scaling must be none, linear or sqrt, got '%s'",
                         name ? name : "(null)");
    return NNP_OK;
}

double nnp_lr_scale(double lr, nnp_lr_scaling k, double base, double G)
{
    switch (k) {
    case NNP_LRS_NONE: return lr;
    case NNP_LRS_LINEAR: return lr * (G / base);
    case NNP_LRS_SQRT: return lr * sqrt(G / base);
    }
    return lr;
}

int64_t nnp_warmup_steps(double epochs, size_t spe)
{
    const double v = epochs * (double)spe, r = nearbyint(v);
    if (fabs(v - r) <= 1e-9 * (r > 1 ? r : 1))
        return (int64_t)r;
    return (int64_t)ceil(v);
}
