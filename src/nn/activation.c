/* activation.c - element-wise activations (relu, leaky relu, tanh, sigmoid, identity).
 *
 * Forward may run in place (y == x) and backward may run in place (dx == dy), so no
 * pointer here is restrict. relu and leaky relu differentiate through x (derivative 0
 * resp. alpha at x <= 0, as PyTorch); tanh and sigmoid through y (1 - y^2, y (1 - y)).
 * An in-place relu / leaky relu (alpha > 0) keeps the sign of x in y, so passing y as x
 * after an in-place forward gives the same derivative.
 */
#include <math.h>
#include <string.h>

#include "nnprec/layers.h"

/* 1 / (1 + e^-v) without overflow of exp for large |v|. */
static float sigmoidf(float v)
{
    if (v >= 0.0f)
        return 1.0f / (1.0f + expf(-v));
    const float e = expf(v);
    return e / (1.0f + e);
}

void nnp_act_forward(nnp_act a, float alpha, size_t n, const float *x, float *y)
{
    switch (a) {
    case NNP_ACT_RELU:
        for (size_t i = 0; i < n; i++)
            y[i] = x[i] > 0.0f ? x[i] : 0.0f;
        break;
    case NNP_ACT_LEAKY_RELU:
        for (size_t i = 0; i < n; i++)
            y[i] = x[i] > 0.0f ? x[i] : alpha * x[i];
        break;
    case NNP_ACT_TANH:
        for (size_t i = 0; i < n; i++)
            y[i] = tanhf(x[i]);
        break;
    case NNP_ACT_SIGMOID:
        for (size_t i = 0; i < n; i++)
            y[i] = sigmoidf(x[i]);
        break;
    case NNP_ACT_IDENTITY:
    default:
        if (y != x)
            memmove(y, x, n * sizeof *y);
        break;
    }
}

void nnp_act_backward(nnp_act a, float alpha, size_t n, const float *x, const float *y,
                      const float *dy, float *dx)
{
    switch (a) {
    case NNP_ACT_RELU:
        for (size_t i = 0; i < n; i++) {
            const float d = dy[i]; /* loaded unconditionally so the select vectorizes */
            dx[i] = x[i] > 0.0f ? d : 0.0f;
        }
        break;
    case NNP_ACT_LEAKY_RELU:
        for (size_t i = 0; i < n; i++) {
            const float d = dy[i];
            dx[i] = d * (x[i] > 0.0f ? 1.0f : alpha);
        }
        break;
    case NNP_ACT_TANH:
        for (size_t i = 0; i < n; i++)
            dx[i] = dy[i] * (1.0f - y[i] * y[i]);
        break;
    case NNP_ACT_SIGMOID:
        for (size_t i = 0; i < n; i++)
            dx[i] = dy[i] * y[i] * (1.0f - y[i]);
        break;
    case NNP_ACT_IDENTITY:
    default:
        if (dx != dy)
            memmove(dx, dy, n * sizeof *dx);
        break;
    }
}
