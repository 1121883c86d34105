/* layers.h - forward/backward kernels of every layer kind, on plain float arrays.
 *
 * Layout: activations are batch-major NCHW, x[((n*C + c)*H + h)*W + w]; dense activations
 * are [B, F]. Weights use PyTorch's orientation: dense W is [out, in], conv W is
 * [C_out, C_in, k, k]. Kernels never allocate: the caller passes workspaces sized by the
 * *_workspace() functions. Backward kernels OVERWRITE dW, db and dx (one backward per step);
 * dx may be NULL when the input gradient is not needed (first layer).
 *
 * These are rank-local and know nothing about networks; net.c strings them together.
 */
#ifndef NNPREC_LAYERS_H
#define NNPREC_LAYERS_H
#include <stddef.h>

/* ---- dense: y[B,out] = x[B,in] W^T + b ---------------------------------------------- */
void nnp_dense_forward(int B, int in, int out, const float *x, const float *W, const float *b,
                       float *y);
/* dW[out,in] = dy^T x, db[out] = sum_n dy, dx[B,in] = dy W. */
void nnp_dense_backward(int B, int in, int out, const float *x, const float *W, const float *dy,
                        float *dx, float *dW, float *db);

/* ---- conv2d: square kernel k, stride s, zero padding p -------------------------------- */
typedef struct {
    int C, H, W;    /* input channels and size */
    int K;          /* output channels */
    int k, s, p;    /* kernel size, stride, zero padding */
    int OH, OW;     /* output size: (H + 2p - k)/s + 1 (floor) */
} nnp_conv_geom;

/* Fill OH/OW; returns 0 if the geometry is valid (OH, OW >= 1), -1 otherwise. */
int nnp_conv_geom_init(nnp_conv_geom *g, int C, int H, int W, int K, int k, int s, int p);
/* Floats of workspace needed for a batch of B (im2col matrix plus a transpose buffer). */
size_t nnp_conv2d_workspace(const nnp_conv_geom *g, int B);
/* y[B,K,OH,OW] = conv(x[B,C,H,W], W[K,C,k,k]) + b[K]. ws: nnp_conv2d_workspace floats. */
void nnp_conv2d_forward(const nnp_conv_geom *g, int B, const float *x, const float *W,
                        const float *b, float *y, float *ws);
/* dW, db, dx (nullable) from dy[B,K,OH,OW]. Recomputes im2col of x into ws. */
void nnp_conv2d_backward(const nnp_conv_geom *g, int B, const float *x, const float *W,
                         const float *dy, float *dx, float *dW, float *db, float *ws);
/* The same when ws still holds what nnp_conv2d_forward of the same x and B left in it (the
 * im2col matrix, its first C*k*k*B*OH*OW floats): skips recomputing it. ws is overwritten. */
void nnp_conv2d_backward_cached(const nnp_conv_geom *g, int B, const float *W, const float *dy,
                                float *dx, float *dW, float *db, float *ws);

/* ---- pooling (square window k, stride s, no padding, floor output) ------------------- */
typedef struct {
    int C, H, W;
    int k, s;
    int OH, OW; /* (H - k)/s + 1 */
} nnp_pool_geom;

int nnp_pool_geom_init(nnp_pool_geom *g, int C, int H, int W, int k, int s);
/* Max pooling keeps the flat input index of each maximum in argmax[B*C*OH*OW] (first
 * maximum wins on ties, as PyTorch). Backward scatters dy to those indices (dx zeroed). */
void nnp_maxpool_forward(const nnp_pool_geom *g, int B, const float *x, float *y, int *argmax);
void nnp_maxpool_backward(const nnp_pool_geom *g, int B, const float *dy, const int *argmax,
                          float *dx);
void nnp_avgpool_forward(const nnp_pool_geom *g, int B, const float *x, float *y);
void nnp_avgpool_backward(const nnp_pool_geom *g, int B, const float *dy, float *dx);

/* ---- element-wise activations over n values ------------------------------------------ */
typedef enum {
    NNP_ACT_RELU,
    NNP_ACT_LEAKY_RELU, /* slope alpha for x < 0 */
    NNP_ACT_TANH,
    NNP_ACT_SIGMOID,
    NNP_ACT_IDENTITY,
} nnp_act;

/* y may alias x. */
void nnp_act_forward(nnp_act a, float alpha, size_t n, const float *x, float *y);
/* dx = dy * act'(x), given the forward input x and output y (either may be used).
 * dx may alias dy. At x == 0 relu' is 0, as PyTorch. */
void nnp_act_backward(nnp_act a, float alpha, size_t n, const float *x, const float *y,
                      const float *dy, float *dx);

/* ---- losses over a batch; both return the SUM over the batch of per-sample losses ----- */
/* Softmax cross-entropy of logits[B,C] with integer labels. dlogits (nullable) receives
 * scale * d(sum loss)/d logits, i.e. scale*(softmax - onehot). correct (nullable) receives
 * the number of argmax hits. Computed in a numerically stable way (max subtracted). */
double nnp_softmax_ce(int B, int C, const float *logits, const unsigned char *labels,
                      float scale, float *dlogits, int *correct);
/* Mean-squared error against one-hot targets: per-sample loss = mean_c (y_c - t_c)^2
 * (PyTorch MSELoss(reduction='mean') over classes). dlogits = scale * d(sum loss)/dy. */
double nnp_mse_onehot(int B, int C, const float *y, const unsigned char *labels, float scale,
                      float *dy, int *correct);

#endif
