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
#include <stdint.h>

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
/* Floats of workspace (scratch) for a batch of up to B samples. Nothing is kept in it from
 * forward to backward, so passes over different samples may share one. */
size_t nnp_conv2d_workspace(const nnp_conv_geom *g, int B);
/* y[B,K,OH,OW] = conv(x[B,C,H,W], W[K,C,k,k]) + b[K]. ws: nnp_conv2d_workspace floats. */
void nnp_conv2d_forward(const nnp_conv_geom *g, int B, const float *x, const float *W,
                        const float *b, float *y, float *ws);
/* dW, db, dx (nullable) from dy[B,K,OH,OW] and the forward's input x. */
void nnp_conv2d_backward(const nnp_conv_geom *g, int B, const float *x, const float *W,
                         const float *dy, float *dx, float *dW, float *db, float *ws);
/* Which implementation a geometry runs (src/nn/conv2d.c): Winograd F(2x2, 3x3) (3x3 kernels
 * of stride 1, padding <= 2), the direct AVX2/FMA kernels (stride 1 with p <= k-1, or
 * stride > 1 on the input split by stride phase) - both on a CPU with AVX2 and FMA, their
 * products in AVX-512 where it has that (nnp_conv2d_isa) - or
 * im2col + GEMM (every geometry, portable). AUTO picks Winograd where it can run, else
 * direct, except stride > 1 with k == 1 (GEMM); NNPREC_CONV_PATH=auto|gemm|direct|winograd in
 * the environment (read at the first call) or nnp_conv2d_set_path (process-wide, for tests
 * and benchmarks; not thread-safe) forces one; WINOGRAD falls back to direct and DIRECT to
 * GEMM where they cannot run. */
typedef enum { NNP_CONV_AUTO, NNP_CONV_GEMM, NNP_CONV_DIRECT, NNP_CONV_WINOGRAD } nnp_conv_path;
void nnp_conv2d_set_path(nnp_conv_path path);
nnp_conv_path nnp_conv2d_path(const nnp_conv_geom *g);
/* The instruction set of the direct and Winograd paths' products: AVX-512 where cpuid reports
 * avx512f, else AVX2/FMA (NONE: neither path runs). The output and input-gradient products
 * give the same bits on both (the same FMAs per output, in the same order).
 * NNPREC_CONV_ISA=auto|avx2|avx512 (read at the first call) or nnp_conv2d_set_isa (tests,
 * benchmarks; process-wide, not thread-safe) asks for one; never wider than the CPU runs. */
typedef enum {
    NNP_CONV_ISA_AUTO = -2,
    NNP_CONV_ISA_NONE = 0,
    NNP_CONV_ISA_AVX2 = 1,
    NNP_CONV_ISA_AVX512 = 2
} nnp_conv_isa;
void nnp_conv2d_set_isa(nnp_conv_isa isa);
nnp_conv_isa nnp_conv2d_isa(void);

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
/* relu followed by max pooling in one pass (y and argmax are what the two layers give
 * apart, bit for bit): forward reads relu's input x; backward writes relu's input
 * gradient dx from the forward's y and argmax (dy sent to argmax where y > 0, that is
 * where x > 0; dx zeroed elsewhere). */
void nnp_maxpool_relu_forward(const nnp_pool_geom *g, int B, const float *x, float *y,
                              int *argmax);
void nnp_maxpool_relu_backward(const nnp_pool_geom *g, int B, const float *dy,
                               const int *argmax, const float *y, float *dx);
/* A convolution's forward (nnp_conv2d_forward), then relu, then max pooling pg over its
 * output (pg: C = K, H x W = OH x OW): yq and argmax as nnp_maxpool_relu_forward gives them
 * from y, bit for bit. On the direct
 * path with 2x2 windows of stride 2 the pooling runs on each sample's output while it is in
 * cache and y is not written; otherwise y is written and pooled. */
void nnp_conv2d_forward_relu_pool(const nnp_conv_geom *g, const nnp_pool_geom *pg, int B,
                                  const float *x, const float *W, const float *b, float *y,
                                  float *yq, int *argmax, float *ws);
void nnp_avgpool_forward(const nnp_pool_geom *g, int B, const float *x, float *y);
void nnp_avgpool_backward(const nnp_pool_geom *g, int B, const float *dy, float *dx);

/* ---- batch normalization: per channel c of x[B, C, S] (S = H*W; 1 after dense) ---------
 * An in-place sum of a double buffer over every process holding a part of the batch; NULL
 * (or one process) leaves it as it is. It is the only way the kernels below see other ranks. */
typedef void (*nnp_sum_fn)(void *ctx, double *buf, size_t n);
#define NNP_BN_EPS 1e-5
#define NNP_BN_MOMENTUM 0.1
/* Training mode. sums[2C+1] is scratch: the per-channel sum x, sum x^2 and the count N of
 * this process's B*S values per channel, then summed by sum(ctx, sums, 2C+1); every process
 * calls it once (B may be 0). stat[2C+1] receives the batch mean, 1/sqrt(biased var + eps)
 * and N. y = (x - mean) * invstd * gamma + beta. If rm/rv are non-NULL the running
 * statistics move by NNP_BN_MOMENTUM towards the mean and the UNBIASED variance (var N/(N-1)),
 * as PyTorch. Nothing changes when N is 0. */
void nnp_bn_forward_train(int B, int C, int S, const float *x, const float *gamma,
                          const float *beta, float *y, float *rm, float *rv, double *stat,
                          double *sums, nnp_sum_fn sum, void *ctx);
/* The parts of nnp_bn_forward_train, for a batch whose sums are formed otherwise
 * (--deterministic: one micro-shard at a time): stat_sums fills sums[2C+1] with this x's
 * sum x, sum x^2 per channel and its count; forward_apply takes GLOBAL sums to stat, the
 * running statistics and y; normalize is its last part, y from stat. */
void nnp_bn_stat_sums(int B, int C, int S, const float *x, double *sums);
void nnp_bn_forward_apply(int B, int C, int S, const float *x, const float *gamma,
                          const float *beta, float *y, float *rm, float *rv, double *stat,
                          const double *sums);
void nnp_bn_normalize(int B, int C, int S, const float *x, const float *gamma, const float *beta,
                      const double *stat, float *y);
/* Evaluation mode: y = (x - rm) / sqrt(rv + eps) * gamma + beta. */
void nnp_bn_forward_eval(int B, int C, int S, const float *x, const float *gamma,
                         const float *beta, const float *rm, const float *rv, float *y);
/* Backward of the training-mode forward with statistics stat (the forward's). dgamma and
 * dbeta receive THIS process's sums of dy*x_hat and dy (the gradient allreduce adds the
 * others'); sums[2C] is scratch for the same sums over every process (sum()), which dx
 * needs: dx = gamma invstd / N (N dy - sum dy - x_hat sum dy*x_hat). dx may be NULL (the
 * reduction still happens). */
void nnp_bn_backward(int B, int C, int S, const float *x, const float *gamma,
                     const double *stat, const float *dy, float *dx, float *dgamma,
                     float *dbeta, double *sums, nnp_sum_fn sum, void *ctx);
/* Its parts: grad_sums fills sums[2C] with this batch's sum dy and sum dy*x_hat per channel;
 * backward_apply writes dx (NULL: nothing) from GLOBAL sums. */
void nnp_bn_grad_sums(int B, int C, int S, const float *x, const double *stat, const float *dy,
                      double *sums);
void nnp_bn_backward_apply(int B, int C, int S, const float *x, const float *gamma,
                           const double *stat, const float *dy, float *dx, const double *sums);

/* ---- global average pooling: x[B, C, S] -> y[B, C] (mean over the S = H*W positions) --- */
void nnp_gap_forward(int B, int C, int S, const float *x, float *y);
void nnp_gap_backward(int B, int C, int S, const float *dy, float *dx);

/* ---- inverted dropout over x[B, U] ----------------------------------------------------
 * Unit u of sample n is dropped (y = 0) when the uniform draw of the counter-based RNG
 * with key `key` at counter ids[n]*U + u (ids NULL: n) is below p; kept units are scaled
 * by 1/(1 - p). The mask is a function of (key, sample id, unit) only, so backward
 * recomputes it. y may alias x, dx may alias dy. */
int nnp_dropout_keep(uint64_t key, uint64_t counter, float p);
void nnp_dropout_forward(int B, size_t U, float p, uint64_t key, const uint32_t *ids,
                         const float *x, float *y);
void nnp_dropout_backward(int B, size_t U, float p, uint64_t key, const uint32_t *ids,
                          const float *dy, float *dx);

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
