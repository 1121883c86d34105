/* conv2d.c - 2-D convolution (cross-correlation, as PyTorch) by batched im2col + one sgemm.
 *
 * With N = B*OH*OW output positions and R = C*k*k kernel taps, the column matrix is
 *   col[R, N],  row r = (c*k + ki)*k + kj,  column j = n*OH*OW + oh*OW + ow,
 *   col[r, j] = x[n, c, oh*s - p + ki, ow*s - p + kj]   (0 outside the image),
 * so the whole batch is one product Y'[K, N] = W[K, R] col[R, N]. Y' is channel-major
 * ([K, B, OH*OW]) and is scattered into y[B, K, OH, OW] with the bias added.
 *
 * Backward: dY' is dy gathered into the same [K, N] order, dW = dY' col^T, db = row sums
 * of dY', dcol = W^T dY' and col2im accumulates dcol into dx. Workspace layout (floats):
 *   [0, R*N)          col (forward and backward); reused for dcol once dW is formed
 *   [R*N, R*N + K*N)  Y' (forward) or dY' (backward)
 * With B == 1 the [K, N] and [K, OH, OW] orders coincide and the second buffer is unused.
 */
#include <string.h>

#include <cblas.h>

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

size_t nnp_conv2d_workspace(const nnp_conv_geom *g, int B)
{
    size_t n = (size_t)(B > 0 ? B : 0) * (size_t)g->OH * (size_t)g->OW;
    size_t r = (size_t)g->C * (size_t)g->k * (size_t)g->k;
    return r * n + (size_t)g->K * n;
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

void nnp_conv2d_forward(const nnp_conv_geom *g, int B, const float *x, const float *W,
                        const float *b, float *y, float *ws)
{
    if (B <= 0)
        return;
    const int K = g->K, R = g->C * g->k * g->k;
    const size_t OHW = (size_t)g->OH * g->OW, N = (size_t)B * OHW;
    float *col = ws;
    im2col(g, B, x, col);
    if (B == 1) {
        /* [K, N] is already the layout of y[0]: write straight into y. */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, K, (int)N, R, 1.0f, W, R, col,
                    (int)N, 0.0f, y, (int)N);
        if (b) {
            for (int o = 0; o < K; o++) {
                float *yr = y + (size_t)o * OHW;
                const float bo = b[o];
                for (size_t j = 0; j < OHW; j++)
                    yr[j] += bo;
            }
        }
        return;
    }
    float *yk = ws + (size_t)R * N; /* Y'[K, N] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, K, (int)N, R, 1.0f, W, R, col,
                (int)N, 0.0f, yk, (int)N);
    /* y[n, o, :] = Y'[o, n*OHW : (n+1)*OHW] + b[o] */
    for (int n = 0; n < B; n++) {
        for (int o = 0; o < K; o++) {
            const float *src = yk + (size_t)o * N + (size_t)n * OHW;
            float *dst = y + ((size_t)n * K + o) * OHW;
            const float bo = b ? b[o] : 0.0f;
            for (size_t j = 0; j < OHW; j++)
                dst[j] = src[j] + bo;
        }
    }
}

/* Backward with col = im2col(x) either in ws already (x == NULL) or computed here. */
static void conv2d_backward(const nnp_conv_geom *g, int B, const float *x, const float *W,
                            const float *dy, float *dx, float *dW, float *db, float *ws)
{
    const int K = g->K, R = g->C * g->k * g->k;
    if (B <= 0) {
        if (dW)
            memset(dW, 0, (size_t)K * R * sizeof *dW);
        if (db)
            memset(db, 0, (size_t)K * sizeof *db);
        return;
    }
    const size_t OHW = (size_t)g->OH * g->OW, N = (size_t)B * OHW;
    float *col = ws;
    const float *dyk; /* dY'[K, N] */
    if (B == 1) {
        dyk = dy;
    } else {
        /* dY'[o, n*OHW : (n+1)*OHW] = dy[n, o, :] */
        float *t = ws + (size_t)R * N;
        for (int n = 0; n < B; n++)
            for (int o = 0; o < K; o++)
                memcpy(t + (size_t)o * N + (size_t)n * OHW, dy + ((size_t)n * K + o) * OHW,
                       OHW * sizeof *t);
        dyk = t;
    }
    if (db) {
        /* db[o] = sum of dy[:, o, :, :]: float within a sample's block, double across. */
        for (int o = 0; o < K; o++) {
            double acc = 0.0;
            for (int n = 0; n < B; n++)
                acc += block_sum(dy + ((size_t)n * K + o) * OHW, OHW);
            db[o] = (float)acc;
        }
    }
    if (dW) {
        if (x)
            im2col(g, B, x, col);
        /* dW[K, R] = dY'[K, N] col^T[N, R] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, K, R, (int)N, 1.0f, dyk, (int)N,
                    col, (int)N, 0.0f, dW, R);
    }
    if (dx) {
        /* dcol[R, N] = W^T[R, K] dY'[K, N], written over col (no longer needed). */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, R, (int)N, K, 1.0f, W, R, dyk,
                    (int)N, 0.0f, col, (int)N);
        memset(dx, 0, (size_t)B * g->C * g->H * g->W * sizeof *dx);
        col2im(g, B, col, dx);
    }
}

void nnp_conv2d_backward(const nnp_conv_geom *g, int B, const float *x, const float *W,
                         const float *dy, float *dx, float *dW, float *db, float *ws)
{
    conv2d_backward(g, B, x, W, dy, dx, dW, db, ws);
}

void nnp_conv2d_backward_cached(const nnp_conv_geom *g, int B, const float *W, const float *dy,
                                float *dx, float *dW, float *db, float *ws)
{
    conv2d_backward(g, B, NULL, W, dy, dx, dW, db, ws);
}
