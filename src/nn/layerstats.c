/* layerstats.c - per-layer moments after one forward and backward pass (layerstats.h). */
#include "nnprec/layerstats.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "nnprec/alloc.h"
#include "nnprec/layers.h"

void nnp_moments(const float *x, size_t n, double *mean, double *std)
{
    *mean = 0.0;
    *std = 0.0;
    if (n == 0)
        return;
    /* two passes: the centred sum of squares avoids cancellation */
    double s = 0.0;
    for (size_t k = 0; k < n; k++)
        s += x[k];
    double m = s / (double)n, ss = 0.0;
    for (size_t k = 0; k < n; k++) {
        double d = x[k] - m;
        ss += d * d;
    }
    *mean = m;
    *std = isfinite(m) ? sqrt(ss / (double)n) : m;
}

/* Mean over the F features of their population variance over the B samples. */
static double unit_variance(const float *x, int B, size_t F)
{
    if (B < 1 || F == 0)
        return 0.0;
    double acc = 0.0;
    for (size_t f = 0; f < F; f++) {
        double s = 0.0;
        for (int n = 0; n < B; n++)
            s += x[(size_t)n * F + f];
        double m = s / B, ss = 0.0;
        for (int n = 0; n < B; n++) {
            double d = x[(size_t)n * F + f] - m;
            ss += d * d;
        }
        acc += isfinite(m) ? ss / B : m;
    }
    return acc / (double)F;
}

void nnp_layerstats_forward(nnp_net *net, int B, const float *x, nnp_layer_stats *out)
{
    const int fuse = net->fuse; /* post_std reads every relu's own output */
    net->fuse = 0;
    nnp_net_forward(net, B, x);
    net->fuse = fuse;
    int k = 0;
    for (int i = 0; i < net->n_layers; i++) {
        const nnp_layer *L = &net->layers[i];
        if (L->tensor < 0)
            continue;
        nnp_layer_stats *s = &out[k++];
        memset(s, 0, sizeof *s);
        s->layer = i;
        s->tensor = L->tensor;
        const char *tn = net->tensors[L->tensor].name;
        size_t len = strlen(tn);
        if (len > 7 && strcmp(tn + len - 7, ".weight") == 0)
            len -= 7;
        if (len >= sizeof s->name)
            len = sizeof s->name - 1;
        memcpy(s->name, tn, len);
        s->name[len] = '\0';
        size_t nin = (size_t)B * nnp_shape_size(L->in);
        size_t nout = (size_t)B * nnp_shape_size(L->out);
        nnp_moments(nnp_layer_input(net, i), nin, &s->in_mean, &s->in_std);
        nnp_moments(net->act[i + 1], nout, &s->pre_mean, &s->pre_std);
        s->unit_var = unit_variance(net->act[i + 1], B, nnp_shape_size(L->out));
        if (i + 1 < net->n_layers && net->layers[i + 1].kind == NNP_L_ACT)
            nnp_moments(net->act[i + 2], nout, &s->post_mean, &s->post_std);
        else {
            s->post_mean = s->pre_mean;
            s->post_std = s->pre_std;
        }
        s->wgrad_std = s->bgrad_std = s->dx_std = NAN;
    }
}

/* Input gradient of the first layer, which nnp_net_backward skips: the same kernel into
 * scratch buffers (its dW/db outputs are discarded). */
static nnp_status first_layer_dx(nnp_net *net, int B, int i, double *std)
{
    const nnp_layer *L = &net->layers[i];
    if (L->kind != NNP_L_DENSE && L->kind != NNP_L_CONV2D) { /* BatchNorm first: not kept */
        *std = NAN;
        return NNP_OK;
    }
    const nnp_tensor *w = &net->tensors[L->tensor];
    size_t nin = (size_t)B * nnp_shape_size(L->in);
    float *dx = nnp_malloc(nin * sizeof(float));
    float *dw = nnp_malloc((w->n + w[1].n) * sizeof(float));
    if (!dx || !dw) {
        free(dx);
        free(dw);
        return NNP_ERR_NOMEM;
    }
    const float *W = net->params + w->off, *dy = net->dact[i + 1];
    if (L->kind == NNP_L_DENSE)
        nnp_dense_backward(B, w->fan_in, w->fan_out, net->act[i], W, dy, dx, dw, dw + w->n);
    else
        nnp_conv2d_backward(&L->conv, B, net->act[i], W, dy, dx, dw, dw + w->n, net->ws[i]);
    double m;
    nnp_moments(dx, nin, &m, std);
    free(dx);
    free(dw);
    return NNP_OK;
}

nnp_status nnp_layerstats_run(nnp_net *net, int B, const float *x, nnp_lsgrad grad,
                              const unsigned char *labels, nnp_rng *rng, nnp_layer_stats *out)
{
    if (B < 1 || B > net->max_batch)
        return nnp_error(NNP_ERR_ARG, "layer statistics: batch %d outside [1, %d]", B,
                         net->max_batch);
    if (grad == NNP_LSGRAD_NORMAL && !rng)
        return nnp_error(NNP_ERR_ARG, "layer statistics: a normal loss gradient needs an RNG");
    if (grad == NNP_LSGRAD_LOSS) {
        if (!labels)
            return nnp_error(NNP_ERR_ARG, "layer statistics: the loss gradient needs labels");
        for (int n = 0; n < B; n++)
            if (labels[n] >= net->n_classes)
                return nnp_error(NNP_ERR_ARG,
                                 "layer statistics: label %d of sample %d is not below the "
                                 "model's %d outputs",
                                 labels[n], n, net->n_classes);
    }
    nnp_layerstats_forward(net, B, x, out);
    float *dlogits = net->dact[net->n_layers];
    size_t nlog = (size_t)B * (size_t)net->n_classes;
    if (grad == NNP_LSGRAD_NORMAL)
        nnp_rng_fill_normal(rng, dlogits, nlog, 0.0, 1.0);
    else
        nnp_softmax_ce(B, net->n_classes, net->act[net->n_layers], labels, 1.0f / (float)B,
                       dlogits, NULL);
    nnp_net_backward(net, B, NULL, NULL);
    for (int k = 0; k < net->n_trainable; k++) {
        nnp_layer_stats *s = &out[k];
        const nnp_tensor *w = &net->tensors[s->tensor];
        double m;
        nnp_moments(net->grads + w->off, w->n, &m, &s->wgrad_std);
        nnp_moments(net->grads + w[1].off, w[1].n, &m, &s->bgrad_std);
        if (s->layer > 0)
            nnp_moments(nnp_layer_dinput(net, s->layer),
                        (size_t)B * nnp_shape_size(net->layers[s->layer].in), &m, &s->dx_std);
        else
            NNP_CALL(first_layer_dx(net, B, s->layer, &s->dx_std));
    }
    return NNP_OK;
}

int nnp_layerstats_collapse(const nnp_layer_stats *s, int n, double input_std, double ratio)
{
    for (int k = 0; k < n; k++)
        if (!isfinite(s[k].post_std) || s[k].post_std < ratio * input_std)
            return k + 1;
    return 0;
}
