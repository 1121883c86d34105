/* conv2d.c - 2-D convolution (cross-correlation, as PyTorch): geometry, path choice, and the
 * GEMM path (im2col + sgemm over groups of samples).
 *
 * Two paths compute the same convolution:
 *  - direct (conv2d_direct.c): stride 1 with p <= k - 1 or any stride > 1, AVX2/FMA
 *    micro-kernels on a padded (stride 1) or phase-split (stride > 1) copy of one sample at a
 *    time, no column matrix; taken when the CPU has AVX2 and FMA;
 *  - GEMM (here): every geometry, portable C around cblas_sgemm.
 * nnp_conv2d_path() says which one a geometry takes; NNPREC_CONV_PATH=gemm|direct|auto in the
 * environment (read once) or nnp_conv2d_set_path() forces one (tests run both). Neither keeps
 * anything between forward and backward: backward recomputes what it needs from x, so the
 * workspace is scratch, and results depend only on (shapes, B, inputs).
 *
 * GEMM path. The batch is cut into groups of G samples (G from the geometry: enough output
 * positions per group for an efficient product, see group_size). With Ng = G*OH*OW output
 * positions and R = C*k*k kernel taps, a group's column matrix is
 *   col[R, Ng],  row r = (c*k + ki)*k + kj,  column j = n*OH*OW + oh*OW + ow,
 *   col[r, j] = x[n, c, oh*s - p + ki, ow*s - p + kj]   (0 outside the image),
 * and the group's output is one product Y'[K, Ng] = W[K, R] col[R, Ng]. Y' is channel-major
 * ([K, G, OH*OW]) and is scattered into y[G, K, OH, OW] with the bias added; with G == 1 the
 * two orders coincide and the product writes y directly. A group's col stays in cache
 * between im2col and the product (a whole batch's did not: 58 MB for resnet8's 16->16).
 *
 * Backward, per group: dY' is dy gathered into the same [K, Ng] order (G == 1: dy itself),
 * dW (+)= dY' col^T (the first group overwrites, later ones accumulate), dcol = W^T dY' over
 * col, and col2im accumulates dcol into the group's (zeroed) dx; db is the shared per-channel
 * sum. Workspace layout (floats), G = the group size for this batch:
 *   [0, R*G*OHW)            col (forward and backward); reused for dcol once dW is formed
 *   [R*G*OHW, (R+K)*G*OHW)  Y' (forward) or dY' (backward)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "conv2d_impl.h"
#include "nnprec/layers.h"

int nnp_conv_geom_init(nnp_conv_geom *g, int C, int H, int W, int K, int k, int s, int p)
{
    memset(g, 0, sizeof *g);
    if (C <= 0 || H <= 0 || W <= 0 || K <= 0 || k <= 0 || s <= 0 || p < 0)
        return -1;
    if (H + 2 * p < k || W + 2 * p < k)
        return -1;
    g->C = C;
    g->H = H;
    g->W = W;
    g->K = K;
    g->k = k;
    g->s = s;
    g->p = p;
    g->OH = (H + 2 * p - k) / s + 1;
    g->OW = (W + 2 * p - k) / s + 1;
    return 0;
}

/* Output positions o in [0, O) whose input coordinate o*s - p + t lies in [0, L): the range
 * is [*lo, *hi). Computed once per tap t so the inner loops carry no bounds tests. */
static void valid_range(int O, int L, int s, int p, int t, int *lo, int *hi)
{
    int a = p - t; /* o*s >= p - t */
    int l = a <= 0 ? 0 : (a + s - 1) / s;
    int b = L - 1 + p - t; /* o*s <= L - 1 + p - t */
    int h = b < 0 ? 0 : b / s + 1;
    if (h > O)
        h = O;
    if (l > h)
        l = h;
    *lo = l;
    *hi = h;
}

static void im2col(const nnp_conv_geom *g, int B, const float *x, float *col)
{
    const int C = g->C, H = g->H, W = g->W, k = g->k, s = g->s, p = g->p;
    const int OH = g->OH, OW = g->OW;
    const size_t OHW = (size_t)OH * OW, N = (size_t)B * OHW;
    for (int n = 0; n < B; n++) {
        for (int c = 0; c < C; c++) {
            const float *xp = x + ((size_t)n * C + c) * H * W; /* plane x[n, c] */
            for (int ki = 0; ki < k; ki++) {
                int oh_lo, oh_hi;
                valid_range(OH, H, s, p, ki, &oh_lo, &oh_hi);
                for (int kj = 0; kj < k; kj++) {
                    int ow_lo, ow_hi;
                    valid_range(OW, W, s, p, kj, &ow_lo, &ow_hi);
                    const size_t r = ((size_t)c * k + ki) * k + kj;
                    float *dst = col + r * N + (size_t)n * OHW; /* col[r, n*OHW] */
                    if (oh_lo > 0)
                        memset(dst, 0, (size_t)oh_lo * OW * sizeof *dst);
                    for (int oh = oh_lo; oh < oh_hi; oh++) {
                        float *d = dst + (size_t)oh * OW;
                        /* input row oh*s - p + ki; column of output ow is ow*s - p + kj */
                        const float *src = xp + (size_t)(oh * s - p + ki) * W + (kj - p);
                        for (int ow = 0; ow < ow_lo; ow++)
                            d[ow] = 0.0f;
                        if (s == 1) {
                            for (int ow = ow_lo; ow < ow_hi; ow++)
                                d[ow] = src[ow];
                        } else {
                            for (int ow = ow_lo; ow < ow_hi; ow++)
                                d[ow] = src[(size_t)ow * s];
                        }
                        for (int ow = ow_hi; ow < OW; ow++)
                            d[ow] = 0.0f;
                    }
                    if (oh_hi < OH)
                        memset(dst + (size_t)oh_hi * OW, 0,
                               (size_t)(OH - oh_hi) * OW * sizeof *dst);
                }
            }
        }
    }
}

/* dx += col2im(dcol): the adjoint of im2col. dx must be zeroed by the caller. */
static void col2im(const nnp_conv_geom *g, int B, const float *dcol, float *dx)
{
    const int C = g->C, H = g->H, W = g->W, k = g->k, s = g->s, p = g->p;
    const int OH = g->OH, OW = g->OW;
    const size_t OHW = (size_t)OH * OW, N = (size_t)B * OHW;
    for (int n = 0; n < B; n++) {
        for (int c = 0; c < C; c++) {
            float *xp = dx + ((size_t)n * C + c) * H * W; /* plane dx[n, c] */
            for (int ki = 0; ki < k; ki++) {
                int oh_lo, oh_hi;
                valid_range(OH, H, s, p, ki, &oh_lo, &oh_hi);
                for (int kj = 0; kj < k; kj++) {
                    int ow_lo, ow_hi;
                    valid_range(OW, W, s, p, kj, &ow_lo, &ow_hi);
                    const size_t r = ((size_t)c * k + ki) * k + kj;
                    const float *src = dcol + r * N + (size_t)n * OHW;
                    for (int oh = oh_lo; oh < oh_hi; oh++) {
                        const float *sr = src + (size_t)oh * OW;
                        float *d = xp + (size_t)(oh * s - p + ki) * W + (kj - p);
                        if (s == 1) {
                            for (int ow = ow_lo; ow < ow_hi; ow++)
                                d[ow] += sr[ow];
                        } else {
                            for (int ow = ow_lo; ow < ow_hi; ow++)
                                d[(size_t)ow * s] += sr[ow];
                        }
                    }
                }
            }
        }
    }
}


/* Sum of v[0..n) with eight independent partial sums (vectorisable, short chains). */
static float block_sum(const float *v, size_t n)
{
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++)
            acc[l] += v[j + l];
    float s = 0.0f;
    for (; j < n; j++)
        s += v[j];
    for (int l = 0; l < 8; l++)
        s += acc[l];
    return s;
}

void nnp_conv_bias_grad(int B, int K, size_t OHW, const float *dy, float *db)
{
    for (int o = 0; o < K; o++) {
        double acc = 0.0;
        for (int n = 0; n < B; n++)
            acc += block_sum(dy + ((size_t)n * K + o) * OHW, OHW);
        db[o] = (float)acc;
    }
}

/* ---- path choice ------------------------------------------------------------------------ */

static int forced_path = -1; /* -1: not yet read from the environment */

void nnp_conv2d_set_path(nnp_conv_path path)
{
    forced_path = (int)path;
}

int nnp_conv_env_choice(const char *var, const char *const *names, int n)
{
    const char *e = getenv(var);
    if (!e || !e[0])
        return 0;
    for (int i = 0; i < n; i++)
        if (strcmp(e, names[i]) == 0)
            return i;
    char list[256] = "";
    for (int i = 0; i < n; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s",
                 i == 0 ? "" : i == n - 1 ? " or " : ", ", names[i]);
    fprintf(stderr, "[warn]  %s=%s is not %s: ignored (%s)\n", var, e, list, names[0]);
    return 0;
}

static nnp_conv_path requested_path(void)
{
    if (forced_path < 0) {
        /* in the order of nnp_conv_path */
        static const char *const names[] = {"auto", "gemm", "direct", "winograd"};
        forced_path = nnp_conv_env_choice("NNPREC_CONV_PATH", names, 4);
    }
    return (nnp_conv_path)forced_path;
}

/* AUTO takes Winograd for 3x3 stride-1 layers of at least this many channels on both sides:
 * its products have the input channels (forward) or the output channels (dx) as their inner
 * dimension, too short below that for the micro-kernel (LeNet's 6->16 and resnet8's 1->16
 * ran 1.4-2x slower than direct; resnet8's 16->16 ... 64->64 faster: docs/results.md §4). */
#define WINO_MIN_CHANNELS 16

/* AUTO leaves strided 1x1 convolutions to the GEMM path. Once the phase split copied four
 * times what the output reads (resnet8's 16->32 k1 s2 at batch 128, forward + backward, 4.5
 * ms direct against 2.9 GEMM); since it splits only the phase a 1x1 kernel reads, the two
 * paths are within about 10% of each other, either way round (NNPREC_CONV_PATH=gemm|direct
 * nnprec bench --layers --model resnet8 --batch 128, two alternated pairs, forward +
 * backward: 16->32 3.00 and 2.61 ms direct against 3.07 and 2.85 GEMM; 32->64 2.11 and 1.98
 * against 2.11 and 1.86). */
nnp_conv_path nnp_conv2d_path(const nnp_conv_geom *g)
{
    nnp_conv_path want = requested_path();
    if (want == NNP_CONV_GEMM || !nnp_conv_direct_available())
        return NNP_CONV_GEMM;
    if (want == NNP_CONV_WINOGRAD && nnp_conv_wino_fits(g))
        return NNP_CONV_WINOGRAD;
    if (want == NNP_CONV_AUTO && nnp_conv_wino_fits(g) && g->C >= WINO_MIN_CHANNELS &&
        g->K >= WINO_MIN_CHANNELS)
        return NNP_CONV_WINOGRAD;
    if (!nnp_conv_direct_fits(g))
        return NNP_CONV_GEMM;
    if (want == NNP_CONV_AUTO && g->s > 1 && g->k == 1)
        return NNP_CONV_GEMM;
    return NNP_CONV_DIRECT;
}

/* ---- GEMM path -------------------------------------------------------------------------- */

/* Samples per group: enough that a group's product has about 1024 output positions (a
 * sample of 49 positions alone makes a thin product), never more than the batch. */
static int group_size(const nnp_conv_geom *g, int B)
{
    const size_t OHW = (size_t)g->OH * g->OW, target = 1024;
    size_t G = (target + OHW - 1) / OHW;
    if (G < 1)
        G = 1;
    return B < (int)G ? (B > 0 ? B : 1) : (int)G;
}

size_t nnp_conv2d_workspace(const nnp_conv_geom *g, int B)
{
    const size_t OHW = (size_t)g->OH * g->OW, R = (size_t)g->C * g->k * g->k;
    const size_t G = (size_t)group_size(g, B);
    size_t gemm = G * OHW * (R + (size_t)g->K), direct = nnp_conv_direct_workspace(g);
    size_t wino = nnp_conv_wino_workspace(g), m = gemm > direct ? gemm : direct;
    return m > wino ? m : wino;
}

static void gemm_forward(const nnp_conv_geom *g, int B, const float *x, const float *W,
                         const float *b, float *y, float *ws)
{
    const int K = g->K, R = g->C * g->k * g->k, G = group_size(g, B);
    const size_t OHW = (size_t)g->OH * g->OW, nx = (size_t)g->C * g->H * g->W;
    float *col = ws, *yk = ws + (size_t)R * G * OHW; /* Y'[K, Ng] */
    for (int n0 = 0; n0 < B; n0 += G) {
        const int gn = B - n0 < G ? B - n0 : G;
        const size_t Ng = (size_t)gn * OHW;
        im2col(g, gn, x + (size_t)n0 * nx, col);
        if (gn == 1) {
            /* [K, OHW] is already the layout of y[n0]: write straight into y. */
            float *yn = y + (size_t)n0 * K * OHW;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, K, (int)OHW, R, 1.0f, W, R,
                        col, (int)OHW, 0.0f, yn, (int)OHW);
            if (b)
                for (int o = 0; o < K; o++) {
                    float *yr = yn + (size_t)o * OHW;
                    const float bo = b[o];
                    for (size_t j = 0; j < OHW; j++)
                        yr[j] += bo;
                }
            continue;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, K, (int)Ng, R, 1.0f, W, R, col,
                    (int)Ng, 0.0f, yk, (int)Ng);
        /* y[n0 + n, o, :] = Y'[o, n*OHW : (n+1)*OHW] + b[o] */
        for (int n = 0; n < gn; n++) {
            for (int o = 0; o < K; o++) {
                const float *src = yk + (size_t)o * Ng + (size_t)n * OHW;
                float *dst = y + ((size_t)(n0 + n) * K + o) * OHW;
                const float bo = b ? b[o] : 0.0f;
                for (size_t j = 0; j < OHW; j++)
                    dst[j] = src[j] + bo;
            }
        }
    }
}

static void gemm_backward(const nnp_conv_geom *g, int B, const float *x, const float *W,
                          const float *dy, float *dx, float *dW, float *db, float *ws)
{
    const int K = g->K, R = g->C * g->k * g->k, G = group_size(g, B);
    const size_t OHW = (size_t)g->OH * g->OW, nx = (size_t)g->C * g->H * g->W;
    if (db)
        nnp_conv_bias_grad(B, K, OHW, dy, db);
    if (dW && B <= 0)
        memset(dW, 0, (size_t)K * R * sizeof *dW);
    float *col = ws, *t = ws + (size_t)R * G * OHW;
    for (int n0 = 0; n0 < B; n0 += G) {
        const int gn = B - n0 < G ? B - n0 : G;
        const size_t Ng = (size_t)gn * OHW;
        const float *dyg = dy + (size_t)n0 * K * OHW, *dyk = dyg; /* dY'[K, Ng] */
        if (gn > 1) {
            /* dY'[o, n*OHW : (n+1)*OHW] = dy[n0 + n, o, :] */
            for (int n = 0; n < gn; n++)
                for (int o = 0; o < K; o++)
                    memcpy(t + (size_t)o * Ng + (size_t)n * OHW, dyg + ((size_t)n * K + o) * OHW,
                           OHW * sizeof *t);
            dyk = t;
        }
        if (dW) {
            im2col(g, gn, x + (size_t)n0 * nx, col);
            /* dW[K, R] (+)= dY'[K, Ng] col^T[Ng, R] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, K, R, (int)Ng, 1.0f, dyk,
                        (int)Ng, col, (int)Ng, n0 == 0 ? 0.0f : 1.0f, dW, R);
        }
        if (dx) {
            /* dcol[R, Ng] = W^T[R, K] dY'[K, Ng], written over col (no longer needed). */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, R, (int)Ng, K, 1.0f, W, R, dyk,
                        (int)Ng, 0.0f, col, (int)Ng);
            float *dxg = dx + (size_t)n0 * nx;
            memset(dxg, 0, (size_t)gn * nx * sizeof *dxg);
            col2im(g, gn, col, dxg);
        }
    }
}

/* ---- entry points ----------------------------------------------------------------------- */

void nnp_conv2d_forward(const nnp_conv_geom *g, int B, const float *x, const float *W,
                        const float *b, float *y, float *ws)
{
    if (B <= 0)
        return;
    const nnp_conv_path path = nnp_conv2d_path(g);
    if (path == NNP_CONV_WINOGRAD)
        nnp_conv_wino_forward(g, B, x, W, b, y, ws);
    else if (path == NNP_CONV_DIRECT)
        nnp_conv_direct_forward(g, B, x, W, b, y, ws);
    else
        gemm_forward(g, B, x, W, b, y, ws);
}

void nnp_conv2d_forward_relu_pool(const nnp_conv_geom *g, const nnp_pool_geom *pg, int B,
                                  const float *x, const float *W, const float *b, float *y,
                                  float *yq, int *argmax, float *ws)
{
    if (B <= 0)
        return;
    if (nnp_conv2d_path(g) == NNP_CONV_DIRECT && pg->k == 2 && pg->s == 2 && pg->C == g->K &&
        pg->H == g->OH && pg->W == g->OW) {
        nnp_conv_direct_forward_pool(g, B, x, W, b, yq, argmax, ws);
        return;
    }
    nnp_conv2d_forward(g, B, x, W, b, y, ws);
    nnp_maxpool_relu_forward(pg, B, y, yq, argmax);
}

void nnp_conv2d_backward(const nnp_conv_geom *g, int B, const float *x, const float *W,
                         const float *dy, float *dx, float *dW, float *db, float *ws)
{
    const nnp_conv_path path = nnp_conv2d_path(g);
    if (path == NNP_CONV_WINOGRAD)
        nnp_conv_wino_backward(g, B, x, W, dy, dx, dW, db, ws);
    else if (path == NNP_CONV_DIRECT)
        nnp_conv_direct_backward(g, B, x, W, dy, dx, dW, db, ws);
    else
        gemm_backward(g, B, x, W, dy, dx, dW, db, ws);
}
