/* norm.c - batch normalization, global average pooling and dropout kernels (layers.h).
 *
 * Batch normalization keeps its per-channel sums in double: sum x and sum x^2 give the
 * mean and the biased variance (E[x^2] - mean^2), so the statistics of a batch split over
 * several processes are one small sum of 2C+1 doubles, and likewise the backward's sum dy
 * and sum dy*x_hat (2C doubles). x_hat is not stored: backward recomputes it from x and the
 * forward's mean and 1/std.
 *
 * The sums over a plane go into LANES independent double accumulators (element s into lane
 * s % LANES), added in a fixed order at the end: one chain of dependent double additions
 * held the sums to a fraction of the memory bandwidth, and the fixed order keeps them a
 * function of the plane's values alone (--deterministic). The element-wise passes are float
 * with per-channel coefficients formed in double.
 */
#include <math.h>
#include <string.h>

#include "nnprec/layers.h"
#include "nnprec/rng.h"

#define LANES 8

/* The plane loops are compiled twice, for AVX2 and for the baseline, and the loader picks
 * one by the CPU (GCC's target_clones, an ifunc). AVX2 only widens the vectors: no FMA, so
 * both clones do the same operations in the same order and give the same bits. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define NNP_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define NNP_CLONES
#endif

/* sum of a[0..LANES) in a fixed order */
static double lanes_total(const double *a)
{
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

#if defined(__GNUC__)
/* Lanes 0-3 and 4-7 as two vectors of 4 doubles (GCC's vector extension: SSE2 pairs in the
 * baseline clone, one AVX register in the AVX2 one); lane l still sums the elements with
 * s % 8 == l in order, exactly as the scalar loops. */
typedef float v4f __attribute__((vector_size(16)));
typedef double v4d __attribute__((vector_size(32)));
#define LOAD4(v, ptr)                                                                         \
    v4f v##_f;                                                                                \
    memcpy(&v##_f, (ptr), sizeof v##_f);                                                      \
    const v4d v = __builtin_convertvector(v##_f, v4d)
#define STORE_LANES(a, a0, a1)                                                                \
    for (int l = 0; l < 4; l++)                                                               \
        (a)[l] = (a0)[l], (a)[l + 4] = (a1)[l]
#endif

/* sum u[s] and sum u[s]*w[s] over a plane of Sz values (each product exact in double): the
 * statistics' sum x and sum x^2 (u = w = x), and backward's sum dy and sum dy*x */
NNP_CLONES static void plane_sums(const float *u, const float *w, size_t Sz, double *s1,
                                  double *s2)
{
    double a[LANES] = {0}, b[LANES] = {0};
    size_t s = 0;
#if defined(__GNUC__)
    v4d a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};
    for (; s + LANES <= Sz; s += LANES) {
        LOAD4(u0, u + s);
        LOAD4(u1, u + s + 4);
        LOAD4(w0, w + s);
        LOAD4(w1, w + s + 4);
        a0 += u0;
        a1 += u1;
        b0 += u0 * w0;
        b1 += u1 * w1;
    }
    STORE_LANES(a, a0, a1);
    STORE_LANES(b, b0, b1);
#endif
    for (; s + LANES <= Sz; s += LANES)
        for (int l = 0; l < LANES; l++) {
            const double v = u[s + l];
            a[l] += v;
            b[l] += v * (double)w[s + l];
        }
    for (int l = 0; s < Sz; s++, l++) {
        const double v = u[s];
        a[l] += v;
        b[l] += v * (double)w[s];
    }
    *s1 = lanes_total(a);
    *s2 = lanes_total(b);
}

void nnp_bn_stat_sums(int B, int C, int S, const float *x, double *sums)
{
    const size_t Sz = (size_t)S;
    memset(sums, 0, (2 * (size_t)C + 1) * sizeof(double));
    for (int n = 0; n < B; n++)
        for (int c = 0; c < C; c++) {
            const float *p = x + ((size_t)n * C + c) * Sz;
            double s1, s2;
            plane_sums(p, p, Sz, &s1, &s2);
            sums[c] += s1;
            sums[C + c] += s2;
        }
    sums[2 * C] = (double)B * (double)S;
}

void nnp_bn_forward_apply(int B, int C, int S, const float *x, const float *gamma,
                          const float *beta, float *y, float *rm, float *rv, double *stat,
                          const double *sums)
{
    const double N = sums[2 * C];
    stat[2 * C] = N;
    for (int c = 0; c < C; c++) {
        if (!(N > 0)) {
            stat[c] = 0.0;
            stat[C + c] = 1.0;
            continue;
        }
        const double mean = sums[c] / N;
        double var = sums[C + c] / N - mean * mean;
        if (var < 0.0)
            var = 0.0;
        stat[c] = mean;
        stat[C + c] = 1.0 / sqrt(var + NNP_BN_EPS);
        if (rm && rv) {
            const double m = NNP_BN_MOMENTUM, unbiased = N > 1 ? var * N / (N - 1) : var;
            rm[c] = (float)((1.0 - m) * rm[c] + m * mean);
            rv[c] = (float)((1.0 - m) * rv[c] + m * unbiased);
        }
    }
    nnp_bn_normalize(B, C, S, x, gamma, beta, stat, y);
}

NNP_CLONES void nnp_bn_normalize(int B, int C, int S, const float *x, const float *gamma,
                                 const float *beta, const double *stat, float *y)
{
    const size_t Sz = (size_t)S;
    for (int n = 0; n < B; n++)
        for (int c = 0; c < C; c++) {
            const float a = (float)(gamma[c] * stat[C + c]);
            const float b = (float)(beta[c] - stat[c] * gamma[c] * stat[C + c]);
            const float *p = x + ((size_t)n * C + c) * Sz;
            float *q = y + ((size_t)n * C + c) * Sz;
            for (size_t s = 0; s < Sz; s++)
                q[s] = p[s] * a + b;
        }
}

void nnp_bn_forward_train(int B, int C, int S, const float *x, const float *gamma,
                          const float *beta, float *y, float *rm, float *rv, double *stat,
                          double *sums, nnp_sum_fn sum, void *ctx)
{
    nnp_bn_stat_sums(B, C, S, x, sums);
    if (sum)
        sum(ctx, sums, 2 * (size_t)C + 1);
    nnp_bn_forward_apply(B, C, S, x, gamma, beta, y, rm, rv, stat, sums);
}

void nnp_bn_forward_eval(int B, int C, int S, const float *x, const float *gamma,
                         const float *beta, const float *rm, const float *rv, float *y)
{
    const size_t Sz = (size_t)S;
    for (int n = 0; n < B; n++)
        for (int c = 0; c < C; c++) {
            const double inv = 1.0 / sqrt((double)rv[c] + NNP_BN_EPS);
            const float a = (float)(gamma[c] * inv);
            const float b = (float)(beta[c] - rm[c] * gamma[c] * inv);
            const float *p = x + ((size_t)n * C + c) * Sz;
            float *q = y + ((size_t)n * C + c) * Sz;
            for (size_t s = 0; s < Sz; s++)
                q[s] = p[s] * a + b;
        }
}

void nnp_bn_grad_sums(int B, int C, int S, const float *x, const double *stat, const float *dy,
                      double *sums)
{
    const size_t Sz = (size_t)S;
    memset(sums, 0, 2 * (size_t)C * sizeof(double));
    for (int n = 0; n < B; n++)
        for (int c = 0; c < C; c++) {
            const size_t o = ((size_t)n * C + c) * Sz;
            double s1, s2;
            plane_sums(dy + o, x + o, Sz, &s1, &s2);
            sums[c] += s1;
            sums[C + c] += s2;
        }
    /* sum dy*x_hat = inv*(sum dy*x - mean*sum dy), in double after the sums over the batch */
    for (int c = 0; c < C; c++)
        sums[C + c] = stat[C + c] * (sums[C + c] - stat[c] * sums[c]);
}

NNP_CLONES void nnp_bn_backward_apply(int B, int C, int S, const float *x, const float *gamma,
                                      const double *stat, const float *dy, float *dx,
                                      const double *sums)
{
    const size_t Sz = (size_t)S;
    const double N = stat[2 * C];
    if (!dx || !(N > 0))
        return;
    for (int c = 0; c < C; c++) {
        /* dx = k*(dy - m1 - (x - mean)*inv*m2) = a*dy + b*(x - mf) + e with mf the mean in
         * float and the coefficients formed in double (e takes mf's rounding); x - mf, not
         * b*x + e, so a large mean does not cancel away the digits of x - mean */
        const double mean = stat[c], inv = stat[C + c];
        const double k = gamma[c] * inv, m1 = sums[c] / N, m2 = sums[C + c] / N;
        const float mf = (float)mean, a = (float)k, b = (float)(-k * inv * m2);
        const float e = (float)(-k * m1 - k * inv * m2 * ((double)mf - mean));
        for (int n = 0; n < B; n++) {
            const float *p = x + ((size_t)n * C + c) * Sz;
            const float *d = dy + ((size_t)n * C + c) * Sz;
            float *q = dx + ((size_t)n * C + c) * Sz;
            for (size_t s = 0; s < Sz; s++)
                q[s] = a * d[s] + b * (p[s] - mf) + e;
        }
    }
}

void nnp_bn_backward(int B, int C, int S, const float *x, const float *gamma,
                     const double *stat, const float *dy, float *dx, float *dgamma,
                     float *dbeta, double *sums, nnp_sum_fn sum, void *ctx)
{
    nnp_bn_grad_sums(B, C, S, x, stat, dy, sums);
    for (int c = 0; c < C; c++) {
        dbeta[c] = (float)sums[c];
        dgamma[c] = (float)sums[C + c];
    }
    if (sum)
        sum(ctx, sums, 2 * (size_t)C);
    nnp_bn_backward_apply(B, C, S, x, gamma, stat, dy, dx, sums);
}

void nnp_gap_forward(int B, int C, int S, const float *x, float *y)
{
    const size_t Sz = (size_t)S;
    for (size_t i = 0; i < (size_t)B * C; i++) {
        const float *p = x + i * Sz;
        double s = 0.0;
        for (size_t k = 0; k < Sz; k++)
            s += p[k];
        y[i] = (float)(s / S);
    }
}

void nnp_gap_backward(int B, int C, int S, const float *dy, float *dx)
{
    const size_t Sz = (size_t)S;
    for (size_t i = 0; i < (size_t)B * C; i++) {
        const float g = dy[i] / (float)S;
        float *q = dx + i * Sz;
        for (size_t k = 0; k < Sz; k++)
            q[k] = g;
    }
}

int nnp_dropout_keep(uint64_t key, uint64_t counter, float p)
{
    nnp_rng r = {key, counter};
    return nnp_rng_uniformf(&r) >= p;
}

void nnp_dropout_forward(int B, size_t U, float p, uint64_t key, const uint32_t *ids,
                         const float *x, float *y)
{
    const float k = 1.0f / (1.0f - p);
    for (int n = 0; n < B; n++) {
        const uint64_t base = (uint64_t)(ids ? ids[n] : (uint32_t)n) * U;
        for (size_t u = 0; u < U; u++) {
            const size_t i = (size_t)n * U + u;
            y[i] = nnp_dropout_keep(key, base + u, p) ? x[i] * k : 0.0f;
        }
    }
}

void nnp_dropout_backward(int B, size_t U, float p, uint64_t key, const uint32_t *ids,
                          const float *dy, float *dx)
{
    nnp_dropout_forward(B, U, p, key, ids, dy, dx);
}
