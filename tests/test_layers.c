/* test_layers.c - forward (and exact backward) of every layer kernel against naive loops.
 *
 * References are written here as direct loops accumulated in double; the kernels are
 * float32 with sgemm, so sums are compared with |got - want| <= 1e-5 |want| + 1e-6 mag,
 * where mag is the sum of the absolute terms that formed the value (for element-wise
 * results mag = 1 and the constants are stated at each call).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nnprec/layers.h"
#include "test_util.h"

/* ---- tiny deterministic generator (64-bit LCG, top bits) ---------------------------- */
static uint64_t lcg_state = 0x9E3779B97F4A7C15ull;
static double urand(void) /* uniform in [0, 1) */
{
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(lcg_state >> 11) * (1.0 / 9007199254740992.0);
}
static float frand(float lo, float hi) { return lo + (hi - lo) * (float)urand(); }
static void fill(float *v, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++)
        v[i] = frand(lo, hi);
}
static float *falloc(size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* Worst violation of |got - want| <= rtol*|want| + atol*mag[i] over n values; reports the
 * first index that fails with ASSERT_NEAR so the message shows both numbers. */
static void expect_close(const char *what, const float *got, const double *want,
                         const double *mag, size_t n, double rtol, double atol)
{
    size_t bad = n;
    for (size_t i = 0; i < n; i++) {
        double tol = rtol * fabs(want[i]) + atol * (mag ? mag[i] : 1.0);
        if (!(fabs((double)got[i] - want[i]) <= tol)) {
            bad = i;
            break;
        }
    }
    if (bad < n) {
        fprintf(stderr, "  %s: mismatch at index %zu\n", what, bad);
        ASSERT_NEAR(got[bad], want[bad], rtol * fabs(want[bad]) + atol * (mag ? mag[bad] : 1.0));
    } else {
        ASSERT_TRUE(1);
    }
}

/* ---- dense ---------------------------------------------------------------------------- */
static void test_dense(void)
{
    const int shapes[][3] = {{1, 1, 1}, {1, 7, 3}, {3, 5, 4}, {5, 17, 10}, {4, 64, 33}};
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        const int B = shapes[t][0], in = shapes[t][1], out = shapes[t][2];
        float *x = falloc((size_t)B * in), *W = falloc((size_t)out * in), *b = falloc(out);
        float *y = falloc((size_t)B * out), *dy = falloc((size_t)B * out);
        float *dx = falloc((size_t)B * in), *dW = falloc((size_t)out * in), *db = falloc(out);
        float *dW2 = falloc((size_t)out * in), *db2 = falloc(out);
        double *ref = malloc(sizeof(double) * (size_t)(B * in + out * in + B * out + out));
        double *mag = malloc(sizeof(double) * (size_t)(B * in + out * in + B * out + out));
        fill(x, (size_t)B * in, -1, 1);
        fill(W, (size_t)out * in, -1, 1);
        fill(b, out, -1, 1);
        fill(dy, (size_t)B * out, -1, 1);
        fill(y, (size_t)B * out, 1e3f, 2e3f); /* garbage: forward must overwrite */

        nnp_dense_forward(B, in, out, x, W, b, y);
        for (int n = 0; n < B; n++)
            for (int o = 0; o < out; o++) {
                double s = b[o], m = fabs(b[o]);
                for (int i = 0; i < in; i++) {
                    s += (double)x[n * in + i] * W[o * in + i];
                    m += fabs((double)x[n * in + i] * W[o * in + i]);
                }
                ref[n * out + o] = s;
                mag[n * out + o] = m;
            }
        expect_close("dense y", y, ref, mag, (size_t)B * out, 1e-5, 1e-6);

        /* Backward against naive loops; the outputs start as garbage (overwrite). */
        fill(dx, (size_t)B * in, 1e3f, 2e3f);
        fill(dW, (size_t)out * in, 1e3f, 2e3f);
        fill(db, out, 1e3f, 2e3f);
        nnp_dense_backward(B, in, out, x, W, dy, dx, dW, db);
        for (int o = 0; o < out; o++)
            for (int i = 0; i < in; i++) {
                double s = 0, m = 0;
                for (int n = 0; n < B; n++) {
                    s += (double)dy[n * out + o] * x[n * in + i];
                    m += fabs((double)dy[n * out + o] * x[n * in + i]);
                }
                ref[o * in + i] = s;
                mag[o * in + i] = m;
            }
        expect_close("dense dW", dW, ref, mag, (size_t)out * in, 1e-5, 1e-6);
        for (int o = 0; o < out; o++) {
            double s = 0, m = 0;
            for (int n = 0; n < B; n++) {
                s += dy[n * out + o];
                m += fabs(dy[n * out + o]);
            }
            ref[o] = s;
            mag[o] = m;
        }
        expect_close("dense db", db, ref, mag, out, 1e-5, 1e-6);
        for (int n = 0; n < B; n++)
            for (int i = 0; i < in; i++) {
                double s = 0, m = 0;
                for (int o = 0; o < out; o++) {
                    s += (double)dy[n * out + o] * W[o * in + i];
                    m += fabs((double)dy[n * out + o] * W[o * in + i]);
                }
                ref[n * in + i] = s;
                mag[n * in + i] = m;
            }
        expect_close("dense dx", dx, ref, mag, (size_t)B * in, 1e-5, 1e-6);

        /* dx may be NULL: same dW and db. */
        nnp_dense_backward(B, in, out, x, W, dy, NULL, dW2, db2);
        ASSERT_TRUE(memcmp(dW, dW2, sizeof(float) * (size_t)out * in) == 0);
        ASSERT_TRUE(memcmp(db, db2, sizeof(float) * (size_t)out) == 0);

        free(x); free(W); free(b); free(y); free(dy); free(dx); free(dW); free(db);
        free(dW2); free(db2); free(ref); free(mag);
    }
}

/* ---- conv2d --------------------------------------------------------------------------- */
/* Value of x[n, c, ih, iw] with zero padding outside the image. */
static double xat(const nnp_conv_geom *g, const float *x, int n, int c, int ih, int iw)
{
    if (ih < 0 || ih >= g->H || iw < 0 || iw >= g->W)
        return 0.0;
    return x[(((size_t)n * g->C + c) * g->H + ih) * g->W + iw];
}

static void test_conv_geom(void)
{
    nnp_conv_geom g;
    ASSERT_EQ_INT(nnp_conv_geom_init(&g, 1, 28, 28, 6, 3, 1, 2), 0);
    ASSERT_EQ_INT(g.OH, 30);
    ASSERT_EQ_INT(g.OW, 30);
    ASSERT_EQ_INT(nnp_conv_geom_init(&g, 3, 7, 8, 4, 3, 2, 1), 0);
    ASSERT_EQ_INT(g.OH, 4); /* (7 + 2 - 3)/2 + 1 */
    ASSERT_EQ_INT(g.OW, 4); /* (8 + 2 - 3)/2 + 1, floor */
    ASSERT_EQ_INT(nnp_conv_geom_init(&g, 1, 2, 2, 1, 3, 1, 0), -1); /* kernel too large */
    ASSERT_EQ_INT(nnp_conv_geom_init(&g, 1, 5, 5, 1, 3, 0, 0), -1); /* zero stride */
    ASSERT_EQ_INT(nnp_conv_geom_init(&g, 0, 5, 5, 1, 3, 1, 0), -1);
    ASSERT_EQ_INT(nnp_conv_geom_init(&g, 1, 5, 5, 1, 3, 1, -1), -1);
}

/* The geometries every path is tested on: C, H, W, K, k, s, p */
static const int conv_geoms[][7] = {
    {1, 28, 28, 6, 3, 1, 2}, /* LeNet conv1 (direct: thin, 9 taps) */
    {6, 15, 15, 16, 3, 1, 0}, /* LeNet conv2 */
    {3, 7, 9, 4, 3, 2, 1},    /* stride 2, rectangular */
    {2, 8, 8, 3, 5, 2, 2},    /* stride 2, padding 2 */
    {4, 9, 7, 5, 3, 2, 2},    /* stride 2, padding 2, odd sizes */
    {2, 5, 6, 3, 1, 1, 0},    /* 1x1 */
    {3, 6, 6, 2, 4, 3, 1},    /* stride 3 */
    {2, 3, 3, 2, 3, 1, 2},    /* padding larger than the image border */
    {16, 7, 7, 16, 3, 1, 1},  /* resnet8-like 3x3 p1 (channel blocks of 4) */
    {3, 8, 8, 5, 3, 1, 1},    /* Winograd: 4x4 tiles, two tile rows a vector */
    {4, 7, 9, 6, 3, 1, 0},    /* the same with an odd count of tile rows (5x7 out) */
    {2, 3, 3, 3, 3, 1, 0},    /* one output pixel (one tile, three quarters padding) */
    {3, 1, 5, 2, 3, 1, 1},    /* a one-row image */
    {5, 9, 11, 7, 3, 1, 1},   /* odd sizes and channel counts: blocks of 4 + tail 3 */
    {3, 6, 5, 12, 3, 1, 0},   /* 12 channels: blocks of 6 */
    {2, 8, 7, 5, 5, 1, 2},    /* 5x5, p2: 50 taps, tap blocks of 3 + tail 2 */
    {1, 6, 6, 1, 2, 1, 1},    /* even kernel, one channel each side */
    {3, 4, 5, 2, 1, 1, 0},    /* 1x1 stride 1 (direct) */
    {2, 6, 6, 3, 3, 1, 3},    /* p > k-1: the GEMM path on every setting */
    {16, 12, 12, 32, 3, 2, 1}, /* resnet8's 16->32 k3 s2 p1 shape (direct under auto) */
    {3, 11, 10, 5, 1, 2, 0},  /* 1x1 stride 2, odd sizes (phases without taps) */
    {2, 7, 8, 3, 1, 2, 1},    /* 1x1 stride 2 with padding */
    {3, 13, 12, 6, 3, 2, 3},  /* stride 2, p > k-1 (direct: phase split) */
    {2, 9, 10, 4, 2, 2, 0},   /* even kernel, stride 2 */
    {2, 12, 11, 3, 5, 3, 1},  /* 5x5 stride 3 */
    {2, 20, 21, 12, 3, 1, 1}, /* blocks of 6 over long strips (AVX-512: 64-wide tiles, tail) */
    {16, 9, 9, 20, 3, 1, 1},  /* Winograd with a channel tail of 4 over several tiles */
    {2, 12, 40, 3, 3, 1, 1},  /* Winograd: 20 tiles a row (AVX-512: 16, then 8 masked) */
};

/* Every geometry on one path (nnp_conv2d_set_path), batches 1..5 and one of 9 samples,
 * against naive double loops. */
static void test_conv_path(nnp_conv_path path)
{
    nnp_conv2d_set_path(path);
    for (size_t t = 0; t < sizeof conv_geoms / sizeof conv_geoms[0]; t++) {
        static const int batches[] = {1, 2, 3, 4, 5, 9};
        for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; bi++) {
            const int B = batches[bi];
            const int *q = conv_geoms[t];
            nnp_conv_geom g;
            ASSERT_EQ_INT(nnp_conv_geom_init(&g, q[0], q[1], q[2], q[3], q[4], q[5], q[6]), 0);
            const int C = g.C, K = g.K, k = g.k, s = g.s, p = g.p, OH = g.OH, OW = g.OW;
            const size_t nx = (size_t)B * C * g.H * g.W, nw = (size_t)K * C * k * k;
            const size_t ny = (size_t)B * K * OH * OW, nws = nnp_conv2d_workspace(&g, B);
            float *x = falloc(nx), *W = falloc(nw), *b = falloc(K), *y = falloc(ny);
            float *dy = falloc(ny), *dx = falloc(nx), *dW = falloc(nw), *db = falloc(K);
            float *dW2 = falloc(nw), *db2 = falloc(K), *ws = falloc(nws);
            size_t nmax = nx > nw ? nx : nw;
            nmax = nmax > ny ? nmax : ny;
            double *ref = malloc(sizeof(double) * nmax), *mag = malloc(sizeof(double) * nmax);
            fill(x, nx, -1, 1);
            fill(W, nw, -1, 1);
            fill(b, K, -1, 1);
            fill(dy, ny, -1, 1);
            for (size_t i = 0; i < nws; i++)
                ws[i] = NAN; /* the kernels must not read workspace they did not write */
            fill(y, ny, 1e3f, 2e3f);

            nnp_conv2d_forward(&g, B, x, W, b, y, ws);
            for (int n = 0; n < B; n++)
                for (int o = 0; o < K; o++)
                    for (int oh = 0; oh < OH; oh++)
                        for (int ow = 0; ow < OW; ow++) {
                            double acc = b[o], m = fabs(b[o]);
                            for (int c = 0; c < C; c++)
                                for (int i = 0; i < k; i++)
                                    for (int j = 0; j < k; j++) {
                                        double v = W[((o * C + c) * k + i) * k + j] *
                                                   xat(&g, x, n, c, oh * s - p + i, ow * s - p + j);
                                        acc += v;
                                        m += fabs(v);
                                    }
                            size_t yi = (((size_t)n * K + o) * OH + oh) * OW + ow;
                            ref[yi] = acc;
                            mag[yi] = m;
                        }
            expect_close("conv y", y, ref, mag, ny, 1e-5, 1e-6);

            /* Backward, exact against naive loops (the finite-difference check is in
             * test_gradcheck). Outputs start as garbage: backward overwrites. */
            for (size_t i = 0; i < nws; i++)
                ws[i] = NAN;
            fill(dx, nx, 1e3f, 2e3f);
            fill(dW, nw, 1e3f, 2e3f);
            fill(db, K, 1e3f, 2e3f);
            nnp_conv2d_backward(&g, B, x, W, dy, dx, dW, db, ws);
            memset(ref, 0, sizeof(double) * nmax);
            memset(mag, 0, sizeof(double) * nmax);
            for (int n = 0; n < B; n++)
                for (int o = 0; o < K; o++)
                    for (int oh = 0; oh < OH; oh++)
                        for (int ow = 0; ow < OW; ow++) {
                            double d = dy[(((size_t)n * K + o) * OH + oh) * OW + ow];
                            for (int c = 0; c < C; c++)
                                for (int i = 0; i < k; i++)
                                    for (int j = 0; j < k; j++) {
                                        double v = d * xat(&g, x, n, c, oh * s - p + i, ow * s - p + j);
                                        ref[((o * C + c) * k + i) * k + j] += v;
                                        mag[((o * C + c) * k + i) * k + j] += fabs(v);
                                    }
                        }
            expect_close("conv dW", dW, ref, mag, nw, 1e-5, 1e-6);
            memset(ref, 0, sizeof(double) * nmax);
            memset(mag, 0, sizeof(double) * nmax);
            for (int n = 0; n < B; n++)
                for (int o = 0; o < K; o++)
                    for (size_t j = 0; j < (size_t)OH * OW; j++) {
                        ref[o] += dy[((size_t)n * K + o) * OH * OW + j];
                        mag[o] += fabs(dy[((size_t)n * K + o) * OH * OW + j]);
                    }
            expect_close("conv db", db, ref, mag, K, 1e-5, 1e-6);
            memset(ref, 0, sizeof(double) * nmax);
            memset(mag, 0, sizeof(double) * nmax);
            for (int n = 0; n < B; n++)
                for (int o = 0; o < K; o++)
                    for (int oh = 0; oh < OH; oh++)
                        for (int ow = 0; ow < OW; ow++) {
                            double d = dy[(((size_t)n * K + o) * OH + oh) * OW + ow];
                            for (int c = 0; c < C; c++)
                                for (int i = 0; i < k; i++)
                                    for (int j = 0; j < k; j++) {
                                        int ih = oh * s - p + i, iw = ow * s - p + j;
                                        if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W)
                                            continue;
                                        size_t xi = (((size_t)n * C + c) * g.H + ih) * g.W + iw;
                                        double v = d * W[((o * C + c) * k + i) * k + j];
                                        ref[xi] += v;
                                        mag[xi] += fabs(v);
                                    }
                        }
            expect_close("conv dx", dx, ref, mag, nx, 1e-5, 1e-6);

            /* dx may be NULL: identical dW and db. */
            nnp_conv2d_backward(&g, B, x, W, dy, NULL, dW2, db2, ws);
            ASSERT_TRUE(memcmp(dW, dW2, sizeof(float) * nw) == 0);
            ASSERT_TRUE(memcmp(db, db2, sizeof(float) * (size_t)K) == 0);

            /* The same call again, after a pass over other inputs in the same workspace:
             * bit for bit the same (nothing is kept between calls; no state but the inputs). */
            float *dx2 = falloc(nx), *y2 = falloc(ny), *x2 = falloc(nx);
            fill(x2, nx, -2, 2);
            nnp_conv2d_forward(&g, B, x2, W, b, y2, ws);
            nnp_conv2d_backward(&g, B, x2, W, dy, dx2, dW2, db2, ws);
            nnp_conv2d_forward(&g, B, x, W, b, y2, ws);
            nnp_conv2d_backward(&g, B, x, W, dy, dx2, dW2, db2, ws);
            ASSERT_TRUE(memcmp(y, y2, sizeof(float) * ny) == 0);
            ASSERT_TRUE(memcmp(dW, dW2, sizeof(float) * nw) == 0);
            ASSERT_TRUE(memcmp(db, db2, sizeof(float) * (size_t)K) == 0);
            ASSERT_TRUE(memcmp(dx, dx2, sizeof(float) * nx) == 0);
            free(dx2); free(y2); free(x2);

            free(x); free(W); free(b); free(y); free(dy); free(dx); free(dW); free(db);
            free(dW2); free(db2); free(ws); free(ref); free(mag);
        }
    }
    nnp_conv2d_set_path(NNP_CONV_AUTO);
}

/* The AVX-512 products against the AVX2 ones (nnp_conv2d_set_isa): every geometry on the
 * direct and Winograd paths, forward and backward, batches 1 and 3 — the same bits, since
 * every output is the same chain of FMAs in the same order on both. Only where the CPU has
 * AVX-512 (it says whether it ran). */
static void test_conv_isa(void)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) {
        fprintf(stderr, "  conv: no AVX2/FMA, no kernels to compare\n");
        return;
    }
    nnp_conv2d_set_isa(NNP_CONV_ISA_AUTO);
    if (!__builtin_cpu_supports("avx512f")) {
        ASSERT_EQ_INT(nnp_conv2d_isa(), NNP_CONV_ISA_AVX2);
        nnp_conv2d_set_isa(NNP_CONV_ISA_AVX512); /* never wider than the CPU */
        ASSERT_EQ_INT(nnp_conv2d_isa(), NNP_CONV_ISA_AVX2);
        nnp_conv2d_set_isa(NNP_CONV_ISA_AUTO);
        fprintf(stderr, "  conv: no AVX-512 on this CPU, its kernels are not compared\n");
        return;
    }
    ASSERT_EQ_INT(nnp_conv2d_isa(), NNP_CONV_ISA_AVX512);
    fprintf(stderr, "  conv: AVX-512 products compared with AVX2's bit for bit\n");
    static const nnp_conv_path paths[] = {NNP_CONV_DIRECT, NNP_CONV_WINOGRAD};
    for (size_t pi = 0; pi < 2; pi++)
        for (size_t t = 0; t < sizeof conv_geoms / sizeof conv_geoms[0]; t++)
            for (int B = 1; B <= 3; B += 2) {
                const int *q = conv_geoms[t];
                nnp_conv_geom g;
                ASSERT_EQ_INT(nnp_conv_geom_init(&g, q[0], q[1], q[2], q[3], q[4], q[5], q[6]), 0);
                const size_t nx = (size_t)B * g.C * g.H * g.W, nw = (size_t)g.K * g.C * g.k * g.k;
                const size_t ny = (size_t)B * g.K * g.OH * g.OW;
                nnp_conv2d_set_path(paths[pi]);
                const size_t nws = nnp_conv2d_workspace(&g, B);
                float *x = falloc(nx), *W = falloc(nw), *b = falloc((size_t)g.K);
                float *dy = falloc(ny), *ws = falloc(nws), *out[2][4];
                fill(x, nx, -1, 1);
                fill(W, nw, -1, 1);
                fill(b, (size_t)g.K, -1, 1);
                fill(dy, ny, -1, 1);
                for (int i = 0; i < 2; i++) {
                    nnp_conv2d_set_isa(i ? NNP_CONV_ISA_AVX512 : NNP_CONV_ISA_AVX2);
                    ASSERT_EQ_INT(nnp_conv2d_isa(), i ? NNP_CONV_ISA_AVX512 : NNP_CONV_ISA_AVX2);
                    out[i][0] = falloc(ny);
                    out[i][1] = falloc(nx);
                    out[i][2] = falloc(nw);
                    out[i][3] = falloc((size_t)g.K);
                    nnp_conv2d_forward(&g, B, x, W, b, out[i][0], ws);
                    nnp_conv2d_backward(&g, B, x, W, dy, out[i][1], out[i][2], out[i][3], ws);
                }
                ASSERT_TRUE(memcmp(out[0][0], out[1][0], sizeof(float) * ny) == 0);
                ASSERT_TRUE(memcmp(out[0][1], out[1][1], sizeof(float) * nx) == 0);
                ASSERT_TRUE(memcmp(out[0][2], out[1][2], sizeof(float) * nw) == 0);
                ASSERT_TRUE(memcmp(out[0][3], out[1][3], sizeof(float) * (size_t)g.K) == 0);
                for (int i = 0; i < 2; i++)
                    for (int j = 0; j < 4; j++)
                        free(out[i][j]);
                free(x); free(W); free(b); free(dy); free(ws);
            }
    nnp_conv2d_set_isa(NNP_CONV_ISA_AUTO);
    nnp_conv2d_set_path(NNP_CONV_AUTO);
#endif
}

static void test_conv(void)
{
    nnp_conv_geom g;
    ASSERT_EQ_INT(nnp_conv_geom_init(&g, 1, 28, 28, 6, 3, 1, 2), 0);
    nnp_conv2d_set_path(NNP_CONV_GEMM);
    ASSERT_EQ_INT(nnp_conv2d_path(&g), NNP_CONV_GEMM);
    test_conv_path(NNP_CONV_GEMM);
#if defined(__x86_64__)
    /* This machine's direct kernels run whenever the CPU has AVX2 and FMA. */
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        nnp_conv2d_set_path(NNP_CONV_DIRECT);
        ASSERT_EQ_INT(nnp_conv2d_path(&g), NNP_CONV_DIRECT);
        fprintf(stderr, "  conv: testing the direct (AVX2/FMA) path too\n");
    } else {
        fprintf(stderr, "  conv: no AVX2/FMA on this CPU, the direct path is not tested\n");
    }
#endif
    test_conv_path(NNP_CONV_DIRECT);
    /* the AVX2 kernels too where the CPU would take AVX-512's (test_conv_isa compares the
     * two) */
    nnp_conv2d_set_isa(NNP_CONV_ISA_AVX2);
    test_conv_path(NNP_CONV_DIRECT);
    test_conv_path(NNP_CONV_WINOGRAD);
    nnp_conv2d_set_isa(NNP_CONV_ISA_AUTO);
    /* Winograd F(2x2, 3x3) where it fits (3x3, stride 1, p <= 2: LeNet conv2, the resnet8
     * shape, odd sizes, padding 2), direct or GEMM elsewhere; the same bounds */
    nnp_conv2d_set_path(NNP_CONV_WINOGRAD);
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        ASSERT_EQ_INT(nnp_conv2d_path(&g), NNP_CONV_WINOGRAD);
#endif
    test_conv_path(NNP_CONV_WINOGRAD);
    test_conv_path(NNP_CONV_AUTO);
}

/* Winograd's rounding against the direct convolution's, on resnet8's 3x3 stride-1 shapes
 * and LeNet's conv2 (B = 2, inputs and output gradients uniform in [-1, 1], weights scaled by
 * 1/sqrt(fan_in)): the largest |error| of y, dW and dx against double loops, over the sum of
 * the terms' magnitudes. Measured here (printed): Winograd 0.9-1.3e-7 for y and dx (direct
 * 1.4-2.2e-7: it adds 9x as many products in float per channel) and 3.5e-8 to 1.5e-7 for dW
 * (direct 2.8-6.5e-8; the largest, 64->64 on 7x7, sums fewer tiles per product). The bound:
 * 6e-7 (10 float epsilons) and at most 3x the direct path's error on the same data. */
static double conv_err(const nnp_conv_geom *g, int B, const float *x, const float *W,
                       const float *dy, nnp_conv_path path, double out[3])
{
    const int C = g->C, K = g->K, k = g->k, p = g->p, OH = g->OH, OW = g->OW;
    const size_t nx = (size_t)B * C * g->H * g->W, nw = (size_t)K * C * k * k;
    const size_t ny = (size_t)B * K * OH * OW;
    float *y = falloc(ny), *dx = falloc(nx), *dW = falloc(nw), *ws = falloc(nnp_conv2d_workspace(g, B));
    double *rw = calloc(nw, sizeof *rw), *mw = calloc(nw, sizeof *mw);
    double *rx = calloc(nx, sizeof *rx), *mx = calloc(nx, sizeof *mx);
    nnp_conv2d_set_path(path);
    nnp_conv2d_forward(g, B, x, W, NULL, y, ws);
    nnp_conv2d_backward(g, B, x, W, dy, dx, dW, NULL, ws);
    out[0] = out[1] = out[2] = 0;
    for (int n = 0; n < B; n++)
        for (int o = 0; o < K; o++)
            for (int oh = 0; oh < OH; oh++)
                for (int ow = 0; ow < OW; ow++) {
                    const size_t yi = (((size_t)n * K + o) * OH + oh) * OW + ow;
                    const double d = dy[yi];
                    double a = 0, m = 0;
                    for (int c = 0; c < C; c++)
                        for (int i = 0; i < k; i++)
                            for (int j = 0; j < k; j++) {
                                const int ih = oh - p + i, iw = ow - p + j;
                                const size_t wi = (((size_t)o * C + c) * k + i) * k + j;
                                const double xv = xat(g, x, n, c, ih, iw);
                                a += W[wi] * xv;
                                m += fabs(W[wi] * xv);
                                rw[wi] += d * xv;
                                mw[wi] += fabs(d * xv);
                                if (ih < 0 || ih >= g->H || iw < 0 || iw >= g->W)
                                    continue;
                                const size_t xi = (((size_t)n * C + c) * g->H + ih) * g->W + iw;
                                rx[xi] += d * W[wi];
                                mx[xi] += fabs(d * W[wi]);
                            }
                    const double e = fabs(y[yi] - a) / m;
                    out[0] = e > out[0] ? e : out[0];
                }
    for (size_t i = 0; i < nw; i++) {
        const double e = fabs(dW[i] - rw[i]) / mw[i];
        out[1] = e > out[1] ? e : out[1];
    }
    for (size_t i = 0; i < nx; i++) {
        const double e = mx[i] > 0 ? fabs(dx[i] - rx[i]) / mx[i] : 0.0;
        out[2] = e > out[2] ? e : out[2];
    }
    free(y); free(dx); free(dW); free(ws); free(rw); free(mw); free(rx); free(mx);
    nnp_conv2d_set_path(NNP_CONV_AUTO);
    return out[0];
}

static void test_wino_error(void)
{
    const int geoms[][7] = {
        {16, 28, 28, 16, 3, 1, 1}, {32, 14, 14, 32, 3, 1, 1}, {64, 7, 7, 64, 3, 1, 1},
        {6, 15, 15, 16, 3, 1, 0},
    };
    for (size_t t = 0; t < sizeof geoms / sizeof geoms[0]; t++) {
        const int *q = geoms[t], B = 2;
        nnp_conv_geom g;
        ASSERT_EQ_INT(nnp_conv_geom_init(&g, q[0], q[1], q[2], q[3], q[4], q[5], q[6]), 0);
        const size_t nx = (size_t)B * g.C * g.H * g.W, nw = (size_t)g.K * g.C * 9;
        const size_t ny = (size_t)B * g.K * g.OH * g.OW;
        float *x = falloc(nx), *W = falloc(nw), *dy = falloc(ny);
        const float a = 1.0f / sqrtf((float)g.C * 9.0f);
        fill(x, nx, -1, 1);
        fill(W, nw, -a, a);
        fill(dy, ny, -1, 1);
        double ew[3], ed[3];
        conv_err(&g, B, x, W, dy, NNP_CONV_WINOGRAD, ew);
        conv_err(&g, B, x, W, dy, NNP_CONV_DIRECT, ed);
        fprintf(stderr, "  winograd %d->%d %dx%d: |error|/sum|terms| y %.2g dW %.2g dx %.2g "
                "(direct %.2g %.2g %.2g)\n", g.C, g.K, g.H, g.W, ew[0], ew[1], ew[2], ed[0],
                ed[1], ed[2]);
        for (int i = 0; i < 3; i++) {
            ASSERT_TRUE(ew[i] <= 6e-7);
            ASSERT_TRUE(ew[i] <= 3.0 * ed[i] + 1e-9);
        }
        free(x); free(W); free(dy);
    }
}

/* ---- pooling -------------------------------------------------------------------------- */
static void test_pool(void)
{
    /* C, H, W, k, s */
    const int geoms[][5] = {
        {3, 8, 8, 2, 2},  /* exact */
        {2, 7, 9, 2, 2},  /* odd sizes: floor drops the last row / column */
        {2, 7, 7, 3, 2},  /* overlapping windows */
        {1, 6, 5, 3, 1},  /* stride 1 */
        {2, 11, 10, 3, 3},
        {6, 30, 30, 2, 2}, /* LeNet's pools: the vectorized 2x2 path plus its scalar tail */
        {16, 13, 13, 2, 2},
    };
    for (size_t t = 0; t < sizeof geoms / sizeof geoms[0]; t++) {
        for (int B = 1; B <= 3; B++) {
            const int *q = geoms[t];
            nnp_pool_geom g;
            ASSERT_EQ_INT(nnp_pool_geom_init(&g, q[0], q[1], q[2], q[3], q[4]), 0);
            ASSERT_EQ_INT(g.OH, (q[1] - q[3]) / q[4] + 1);
            ASSERT_EQ_INT(g.OW, (q[2] - q[3]) / q[4] + 1);
            const int H = g.H, Wd = g.W, k = g.k, s = g.s, OH = g.OH, OW = g.OW;
            const size_t planes = (size_t)B * g.C, nx = planes * H * Wd, ny = planes * OH * OW;
            float *x = falloc(nx), *y = falloc(ny), *dy = falloc(ny), *dx = falloc(nx);
            int *am = malloc(sizeof(int) * ny);
            double *ref = malloc(sizeof(double) * nx);
            fill(x, nx, -1, 1);
            fill(dy, ny, -1, 1);
            /* quantise to force ties inside windows */
            for (size_t i = 0; i < nx; i++)
                x[i] = floorf(x[i] * 2.0f) * 0.5f;

            nnp_maxpool_forward(&g, B, x, y, am);
            int ok_val = 1, ok_idx = 1;
            for (size_t pl = 0; pl < planes; pl++)
                for (int oh = 0; oh < OH; oh++)
                    for (int ow = 0; ow < OW; ow++) {
                        float m = -INFINITY;
                        int bi = -1;
                        for (int i = 0; i < k; i++)
                            for (int j = 0; j < k; j++) {
                                int idx = (oh * s + i) * Wd + ow * s + j;
                                if (x[pl * H * Wd + idx] > m) {
                                    m = x[pl * H * Wd + idx];
                                    bi = idx;
                                }
                            }
                        size_t yi = pl * OH * OW + (size_t)oh * OW + ow;
                        ok_val &= y[yi] == m;
                        ok_idx &= am[yi] == bi; /* within-plane index, first max */
                    }
            ASSERT_TRUE(ok_val);
            ASSERT_TRUE(ok_idx);

            fill(dx, nx, 1e3f, 2e3f);
            nnp_maxpool_backward(&g, B, dy, am, dx);
            memset(ref, 0, sizeof(double) * nx);
            for (size_t pl = 0; pl < planes; pl++)
                for (size_t j = 0; j < (size_t)OH * OW; j++)
                    ref[pl * H * Wd + am[pl * OH * OW + j]] += dy[pl * OH * OW + j];
            expect_close("maxpool dx", dx, ref, NULL, nx, 1e-6, 1e-6);

            nnp_avgpool_forward(&g, B, x, y);
            double *refy = malloc(sizeof(double) * ny);
            for (size_t pl = 0; pl < planes; pl++)
                for (int oh = 0; oh < OH; oh++)
                    for (int ow = 0; ow < OW; ow++) {
                        double acc = 0;
                        for (int i = 0; i < k; i++)
                            for (int j = 0; j < k; j++)
                                acc += x[pl * H * Wd + (size_t)(oh * s + i) * Wd + ow * s + j];
                        refy[pl * OH * OW + (size_t)oh * OW + ow] = acc / (k * k);
                    }
            expect_close("avgpool y", y, refy, NULL, ny, 1e-5, 1e-6);
            fill(dx, nx, 1e3f, 2e3f);
            nnp_avgpool_backward(&g, B, dy, dx);
            memset(ref, 0, sizeof(double) * nx);
            for (size_t pl = 0; pl < planes; pl++)
                for (int oh = 0; oh < OH; oh++)
                    for (int ow = 0; ow < OW; ow++)
                        for (int i = 0; i < k; i++)
                            for (int j = 0; j < k; j++)
                                ref[pl * H * Wd + (size_t)(oh * s + i) * Wd + ow * s + j] +=
                                    dy[pl * OH * OW + (size_t)oh * OW + ow] / (double)(k * k);
            expect_close("avgpool dx", dx, ref, NULL, nx, 1e-5, 1e-6);
            free(x); free(y); free(dy); free(dx); free(am); free(ref); free(refy);
        }
    }

    /* Ties: all-equal window picks its top-left element; a later equal maximum loses. */
    nnp_pool_geom g;
    ASSERT_EQ_INT(nnp_pool_geom_init(&g, 1, 2, 4, 2, 2), 0);
    const float xt[8] = {5, 5, 1, 7,
                         5, 5, 7, 7};
    float yt[2], dyt[2] = {1.5f, -2.0f}, dxt[8];
    int at[2];
    nnp_maxpool_forward(&g, 1, xt, yt, at);
    ASSERT_EQ_INT(at[0], 0);
    ASSERT_EQ_INT(at[1], 3);
    ASSERT_NEAR(yt[0], 5.0, 0);
    ASSERT_NEAR(yt[1], 7.0, 0);
    nnp_maxpool_backward(&g, 1, dyt, at, dxt);
    ASSERT_NEAR(dxt[0], 1.5, 0);
    ASSERT_NEAR(dxt[3], -2.0, 0);
    ASSERT_NEAR(dxt[1] + dxt[2] + dxt[4] + dxt[5] + dxt[6] + dxt[7], 0.0, 0);

    /* NaN wins its window (PyTorch semantics), in the vectorized 2x2 path (W = 16) and in
     * the scalar tail: a NaN in window 1 (second element) and in window 7 (last element). */
    ASSERT_EQ_INT(nnp_pool_geom_init(&g, 1, 2, 16, 2, 2), 0);
    float xn[32], yn[8];
    int an[8];
    for (int i = 0; i < 32; i++)
        xn[i] = (float)(i % 7);
    xn[3] = NAN;       /* row 0, column 3: window 1 */
    xn[16 + 15] = NAN; /* row 1, column 15: window 7 */
    nnp_maxpool_forward(&g, 1, xn, yn, an);
    ASSERT_TRUE(isnan(yn[1]) && an[1] == 3);
    ASSERT_TRUE(isnan(yn[7]) && an[7] == 31);
    ASSERT_TRUE(!isnan(yn[0]) && !isnan(yn[2]) && !isnan(yn[6]));

    /* Overlap (k=2, s=1 on 3x4, OH=2, OW=3): the 9 at index 5 is the maximum of the four
     * windows with top-left (0,0), (0,1), (1,0), (1,1), so its gradients accumulate; the
     * all-zero windows (0,2) and (1,2) pick their top-left cells 2 and 6. */
    ASSERT_EQ_INT(nnp_pool_geom_init(&g, 1, 3, 4, 2, 1), 0);
    ASSERT_EQ_INT(g.OH, 2);
    ASSERT_EQ_INT(g.OW, 3);
    const float xo[12] = {0, 0, 0, 0,
                          0, 9, 0, 0,
                          0, 0, 0, 0};
    float yo[6], dyo[6] = {1, 1, 1, 1, 1, 1}, dxo[12];
    int ao[6];
    nnp_maxpool_forward(&g, 1, xo, yo, ao);
    nnp_maxpool_backward(&g, 1, dyo, ao, dxo);
    ASSERT_NEAR(dxo[5], 4.0, 0);
    ASSERT_NEAR(dxo[2], 1.0, 0);
    ASSERT_NEAR(dxo[6], 1.0, 0);
    ASSERT_NEAR(dxo[0] + dxo[1] + dxo[3] + dxo[4] + dxo[7] + dxo[8] + dxo[9] + dxo[10] + dxo[11],
                0.0, 0);

    /* invalid geometries */
    ASSERT_EQ_INT(nnp_pool_geom_init(&g, 1, 1, 4, 2, 2), -1);
    ASSERT_EQ_INT(nnp_pool_geom_init(&g, 1, 4, 4, 2, 0), -1);
}

/* ---- activations ---------------------------------------------------------------------- */
static double act_ref(nnp_act a, double alpha, double x)
{
    switch (a) {
    case NNP_ACT_RELU: return x > 0 ? x : 0;
    case NNP_ACT_LEAKY_RELU: return x > 0 ? x : alpha * x;
    case NNP_ACT_TANH: return tanh(x);
    case NNP_ACT_SIGMOID: return 1.0 / (1.0 + exp(-x));
    default: return x;
    }
}
static double dact_ref(nnp_act a, double alpha, double x)
{
    switch (a) {
    case NNP_ACT_RELU: return x > 0 ? 1 : 0;
    case NNP_ACT_LEAKY_RELU: return x > 0 ? 1 : alpha;
    case NNP_ACT_TANH: return 1 - tanh(x) * tanh(x);
    case NNP_ACT_SIGMOID: { double s = 1.0 / (1.0 + exp(-x)); return s * (1 - s); }
    default: return 1;
    }
}

static void test_activations(void)
{
    const nnp_act acts[] = {NNP_ACT_RELU, NNP_ACT_LEAKY_RELU, NNP_ACT_TANH, NNP_ACT_SIGMOID,
                            NNP_ACT_IDENTITY};
    const size_t n = 257;
    float *x = falloc(n), *y = falloc(n), *dy = falloc(n), *dx = falloc(n), *buf = falloc(n);
    double *ref = malloc(sizeof(double) * n);
    fill(x, n, -4, 4);
    x[0] = 0.0f;
    x[1] = -0.0f;
    x[2] = 90.0f;  /* sigmoid/tanh saturate without overflow */
    x[3] = -90.0f;
    fill(dy, n, -1, 1);
    for (size_t ai = 0; ai < sizeof acts / sizeof acts[0]; ai++) {
        const nnp_act a = acts[ai];
        const float alpha = 0.1f;
        nnp_act_forward(a, alpha, n, x, y);
        for (size_t i = 0; i < n; i++)
            ref[i] = act_ref(a, alpha, x[i]);
        expect_close("act y", y, ref, NULL, n, 2e-6, 1e-7);
        /* in place */
        memcpy(buf, x, sizeof(float) * n);
        nnp_act_forward(a, alpha, n, buf, buf);
        ASSERT_TRUE(memcmp(buf, y, sizeof(float) * n) == 0);

        nnp_act_backward(a, alpha, n, x, y, dy, dx);
        for (size_t i = 0; i < n; i++)
            ref[i] = dy[i] * dact_ref(a, alpha, x[i]);
        expect_close("act dx", dx, ref, NULL, n, 1e-5, 1e-6);
        /* dx aliasing dy */
        memcpy(buf, dy, sizeof(float) * n);
        nnp_act_backward(a, alpha, n, x, y, buf, buf);
        ASSERT_TRUE(memcmp(buf, dx, sizeof(float) * n) == 0);
        if (a == NNP_ACT_RELU || a == NNP_ACT_LEAKY_RELU) {
            ASSERT_NEAR(dx[0], (a == NNP_ACT_RELU ? 0.0 : alpha * dy[0]), 0); /* x == 0 */
            /* after an in-place forward, y passed as x gives the same derivative */
            nnp_act_backward(a, alpha, n, y, y, dy, buf);
            ASSERT_TRUE(memcmp(buf, dx, sizeof(float) * n) == 0);
        }
    }
    free(x); free(y); free(dy); free(dx); free(buf); free(ref);
}

/* ---- losses --------------------------------------------------------------------------- */
static void test_softmax_ce(void)
{
    const int B = 5, C = 7;
    float lg[35], d[35];
    unsigned char lab[5] = {0, 6, 3, 3, 2};
    fill(lg, (size_t)B * C, -3, 3);
    lg[0 * C + 1] = 10.0f; /* samples 0 and 1 miss */
    lg[1 * C + 0] = 10.0f;
    lg[2 * C + 3] = 10.0f; /* sample 2 predicts its label */
    lg[4 * C + 1] = 500.0f; /* huge logits: stable */
    lg[4 * C + 2] = 499.0f;
    for (int c = 0; c < C; c++)
        lg[3 * C + c] = 1.0f; /* all tied: argmax is class 0 != label 3 */
    const float scale = 0.25f;
    int correct = -1;
    double L = nnp_softmax_ce(B, C, lg, lab, scale, d, &correct);
    double want = 0;
    int want_correct = 0;
    for (int n = 0; n < B; n++) {
        double m = -INFINITY;
        int am = 0;
        for (int c = 0; c < C; c++)
            if (lg[n * C + c] > m) {
                m = lg[n * C + c];
                am = c;
            }
        want_correct += am == lab[n];
        double s = 0;
        for (int c = 0; c < C; c++)
            s += exp((double)lg[n * C + c] - m);
        double lse = m + log(s);
        want += lse - lg[n * C + lab[n]];
        double ref[7];
        for (int c = 0; c < C; c++)
            ref[c] = scale * (exp(lg[n * C + c] - lse) - (c == lab[n]));
        expect_close("softmax dlogits", d + n * C, ref, NULL, C, 1e-6, 1e-7);
    }
    ASSERT_TRUE(isfinite(L));
    ASSERT_CLOSE(L, want, 1e-12, 1e-12);
    ASSERT_EQ_INT(correct, want_correct);
    ASSERT_EQ_INT(correct, 1); /* sample 2 only; sample 4 predicts class 1 */
    /* the huge-logit sample: loss = lse - 499 = 1 + log(1 + e^-1 + ...) */
    double L4 = nnp_softmax_ce(1, C, lg + 4 * C, lab + 4, 1.0f, NULL, NULL);
    ASSERT_TRUE(L4 > 1.0 && L4 < 1.32);
    /* uniform logits: loss log C per sample */
    float u[14] = {0};
    unsigned char lu[2] = {1, 5};
    ASSERT_CLOSE(nnp_softmax_ce(2, C, u, lu, 1.0f, NULL, NULL), 2 * log(7.0), 1e-12, 0);
}

static void test_mse(void)
{
    const int B = 4, C = 6;
    float y[24], d[24];
    unsigned char lab[4] = {5, 0, 2, 2};
    fill(y, (size_t)B * C, -1, 1);
    y[0 * C + 5] = 3.0f; /* hit */
    y[1 * C + 3] = 3.0f; /* miss (label 0) */
    y[2 * C + 1] = 3.0f; /* miss */
    y[3 * C + 2] = 2.0f; /* tie at the top: first (class 2) wins -> hit */
    y[3 * C + 4] = 2.0f;
    const float scale = 0.5f;
    int correct = -1;
    double L = nnp_mse_onehot(B, C, y, lab, scale, d, &correct);
    double want = 0;
    for (int n = 0; n < B; n++) {
        double s = 0, ref[6];
        for (int c = 0; c < C; c++) {
            double e = (double)y[n * C + c] - (c == lab[n]);
            s += e * e;
            ref[c] = scale * 2.0 * e / C;
        }
        want += s / C;
        expect_close("mse dy", d + n * C, ref, NULL, C, 1e-6, 1e-7);
    }
    ASSERT_CLOSE(L, want, 1e-12, 1e-12);
    ASSERT_EQ_INT(correct, 2);
    int c2 = -1;
    ASSERT_CLOSE(nnp_mse_onehot(B, C, y, lab, 1.0f, NULL, &c2), want, 1e-12, 1e-12);
    ASSERT_EQ_INT(c2, 2);
}

int main(void)
{
    test_dense();
    test_conv_geom();
    test_wino_error();
    test_conv();
    test_conv_isa();
    test_pool();
    test_activations();
    test_softmax_ce();
    test_mse();
    TEST_MAIN_END();
}
