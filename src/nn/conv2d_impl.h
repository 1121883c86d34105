/* conv2d_impl.h - what conv2d.c and the direct stride-1 kernels (conv2d_direct.c) share.
 * Internal to src/nn; the public API is in include/nnprec/layers.h. */
#ifndef NNPREC_CONV2D_IMPL_H
#define NNPREC_CONV2D_IMPL_H
#include <stddef.h>

#include "nnprec/layers.h"

/* The index in names[0 .. n) of the environment variable var's value: 0 (names[0], the
 * default) when it is unset or empty, and, with a one-line warning, when it names none. */
int nnp_conv_env_choice(const char *var, const char *const *names, int n);

/* 1 if this build has the AVX2/FMA direct kernels and the CPU runs them (cpuid, once). */
int nnp_conv_direct_available(void);
/* 1 if the direct kernels handle this geometry: stride 1 and p <= k - 1 (the input gradient
 * is a stride-1 convolution of dy padded by k - 1 - p). */
int nnp_conv_direct_fits(const nnp_conv_geom *g);
/* Floats of workspace the direct path needs (independent of the batch: it works on one
 * sample at a time, and its weight gradient on groups of a size set by the shapes). */
size_t nnp_conv_direct_workspace(const nnp_conv_geom *g);
/* The direct path's forward and backward; same contracts as nnp_conv2d_forward/backward.
 * Only call when nnp_conv_direct_available() and nnp_conv_direct_fits(g). */
void nnp_conv_direct_forward(const nnp_conv_geom *g, int B, const float *x, const float *W,
                             const float *b, float *y, float *ws);
/* The forward followed by relu and 2x2 max pooling of stride 2 (OH/2 x OW/2 outputs), the
 * conv's output never written: yq[B, K, OH/2, OW/2] and argmax as nnp_maxpool_relu_forward
 * gives them from the conv's output, the same bits. */
void nnp_conv_direct_forward_pool(const nnp_conv_geom *g, int B, const float *x, const float *W,
                                  const float *b, float *yq, int *argmax, float *ws);
void nnp_conv_direct_backward(const nnp_conv_geom *g, int B, const float *x, const float *W,
                              const float *dy, float *dx, float *dW, float *db, float *ws);

/* The direct path's products, for the Winograd path: pack_weights (w[K][R] regrouped per
 * block of output channels), Yp[o][0 .. L) = sum_r w[o][r] xp[off[r] + j] (rows Ls apart, L
 * rounded up to 8 written; Ls a multiple of the kernel's strip), and acc[o][r] += sum over gn
 * samples of sum_{j < L} dyp[o*Ls + j] xp[off[r] + j] (dyp zero from L to L rounded up to
 * 8). AVX2/FMA: only when nnp_conv_direct_available(). */
void nnp_conv_pack_weights(int K, size_t R, const float *w, float *wpk);
void nnp_conv_flat_gemm(int K, size_t R, const int *off, const float *xp, const float *wpk,
                        float *yp, size_t Ls, size_t L);
void nnp_conv_flat_dw(int K, size_t R, const int *off, const float *xp, size_t sx,
                      const float *dyp, size_t sy, int gn, size_t Ls, size_t L, double *acc);

/* Winograd F(2x2, 3x3) (conv2d_winograd.c): 3x3 kernels of stride 1, padding <= 2; the same
 * contracts as the direct path's, on the same CPUs. */
int nnp_conv_wino_fits(const nnp_conv_geom *g);
size_t nnp_conv_wino_workspace(const nnp_conv_geom *g);
void nnp_conv_wino_forward(const nnp_conv_geom *g, int B, const float *x, const float *W,
                           const float *b, float *y, float *ws);
void nnp_conv_wino_backward(const nnp_conv_geom *g, int B, const float *x, const float *W,
                            const float *dy, float *dx, float *dW, float *db, float *ws);

/* db[o] = sum of dy[:, o, :, :]: float within a sample's block, double across samples (every
 * path uses this one, so db does not depend on the path). */
void nnp_conv_bias_grad(int B, int K, size_t OHW, const float *dy, float *db);

#endif
