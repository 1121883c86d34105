/* layerstats.h - per-layer moments of activations and gradients after one forward and
 * backward pass (the measurements behind `nnprec stats`, docs/initialization.md).
 *
 * For every trainable layer (dense, conv2d) the statistics are taken over all its values
 * in the batch (samples x features), population moments accumulated in double:
 *   input activation   act[i]         the layer's input (mean and std)
 *   pre-activation     act[i+1]       the layer's output before any activation (std)
 *   post-activation    act[i+2]       after the element-wise activation that directly
 *                                     follows the layer, if any (else = pre-activation)
 *   weight gradient    grads          of the layer's weight tensor (and bias tensor)
 *   input gradient     dact[i]        d loss / d input; for the first layer (whose input
 *                                     gradient the network never computes) it is computed
 *                                     into scratch with the same kernel.
 * A non-finite value anywhere makes the moment NaN or infinite, never silently finite.
 * Pure: no I/O; allocates only the first-layer scratch buffers for the call.
 */
#ifndef NNPREC_LAYERSTATS_H
#define NNPREC_LAYERSTATS_H
#include <stddef.h>
#include "nnprec/net.h"
#include "nnprec/rng.h"
#include "nnprec/status.h"

typedef struct {
    int layer;          /* index into net->layers */
    int tensor;         /* index of its weight tensor (bias is tensor + 1) */
    char name[24];      /* tensor name without ".weight": "fc1", "layers.3" */
    double in_mean, in_std;     /* input activation */
    double pre_mean, pre_std;   /* output before the activation */
    double post_mean, post_std; /* output after the following activation */
    double unit_var;    /* mean over output features of their variance over the batch
                         * (pre-activation; per channel-position for conv) */
    double wgrad_std;   /* weight gradient */
    double bgrad_std;   /* bias gradient */
    double dx_std;      /* input gradient */
} nnp_layer_stats;

/* Loss gradient written into net->dact[n_layers] before the backward pass. */
typedef enum {
    NNP_LSGRAD_NORMAL, /* standard normal entries (rng) */
    NNP_LSGRAD_LOSS,   /* softmax cross-entropy of the mean loss with `labels` */
} nnp_lsgrad;

/* Population mean and std of x[0..n) in double (std 0 for n == 0). */
void nnp_moments(const float *x, size_t n, double *mean, double *std);

/* Forward x[B, input] and fill the activation fields of out[net->n_trainable]; the
 * gradient fields are set to NaN. */
void nnp_layerstats_forward(nnp_net *net, int B, const float *x, nnp_layer_stats *out);

/* Forward x, write the loss gradient (NNP_LSGRAD_NORMAL draws from rng; NNP_LSGRAD_LOSS
 * needs labels[B] < n_classes), backward, and fill every field of out[net->n_trainable].
 * Errors: NNP_ERR_ARG for a bad batch size, missing rng/labels or a label out of range;
 * NNP_ERR_NOMEM. */
nnp_status nnp_layerstats_run(nnp_net *net, int B, const float *x, nnp_lsgrad grad,
                              const unsigned char *labels, nnp_rng *rng, nnp_layer_stats *out);

/* Depth until collapse (seed 004's "multiplications until the matrix vanishes"): the
 * 1-based index of the first trainable layer whose post-activation std is below
 * ratio * input_std or is not finite; 0 if no layer collapses. */
int nnp_layerstats_collapse(const nnp_layer_stats *s, int n, double input_std, double ratio);

#endif
