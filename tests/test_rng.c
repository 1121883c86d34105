/* test_rng.c - counter-based generator: known answers, determinism per (seed, stream),
 * counter continuation, and distribution checks with stated statistical bounds.
 *
 * All draws use fixed seeds, so the statistical checks are deterministic; the bounds are
 * chosen so that a correct generator would fail each with probability about 1e-4 or less
 * over random seeds (z = 4 for means, chi2_ratio_bounds(z = 4) for variances, chi-square
 * critical values at p = 1e-4).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nnprec/rng.h"
#include "test_util.h"

#define NDRAW 1000000

/* The output function is SplitMix64's: with key 0 and counter 1 the first output is the
 * first value of the reference splitmix64 seeded with 0. */
static void test_known_answer(void)
{
    nnp_rng r = {0, 1};
    ASSERT_TRUE(nnp_rng_u64(&r) == UINT64_C(0xE220A8397B1DCDAF));
    ASSERT_TRUE(nnp_rng_u64(&r) == UINT64_C(0x6E789E6AA1B965F4));
    ASSERT_TRUE(nnp_rng_u64(&r) == UINT64_C(0x06C45D188009454F));
    ASSERT_EQ_INT(r.counter, 4);
}

static void test_determinism(void)
{
    nnp_rng a, b;
    nnp_rng_seed(&a, 42, 7);
    nnp_rng_seed(&b, 42, 7);
    ASSERT_EQ_INT(a.counter, 0);
    int same = 1;
    for (int i = 0; i < 1000; i++)
        same &= nnp_rng_u64(&a) == nnp_rng_u64(&b);
    ASSERT_TRUE(same);

    /* Different seeds or streams, including swapped and shifted pairs, give unrelated
     * sequences: no equal outputs at the same position in 256 draws. */
    const uint64_t pairs[][2] = {{42, 7}, {42, 8}, {43, 7}, {7, 42}, {43, 6}, {0, 0},
                                 {0, 1},  {1, 0}, {0, 256}, {0, 2 + (1u << 8)}};
    size_t np = sizeof pairs / sizeof pairs[0];
    uint64_t seq[10][256];
    for (size_t k = 0; k < np; k++) {
        nnp_rng r;
        nnp_rng_seed(&r, pairs[k][0], pairs[k][1]);
        for (int i = 0; i < 256; i++)
            seq[k][i] = nnp_rng_u64(&r);
    }
    for (size_t k = 0; k < np; k++)
        for (size_t l = k + 1; l < np; l++) {
            int eq = 0;
            for (int i = 0; i < 256; i++)
                eq += seq[k][i] == seq[l][i];
            if (eq)
                fprintf(stderr, "streams %zu and %zu share %d outputs\n", k, l, eq);
            ASSERT_EQ_INT(eq, 0);
        }
}

/* Drawing n then m values equals drawing n + m, for every kind of draw. */
static void test_continuation(void)
{
    enum { N1 = 37, N2 = 91 };
    float f1[N1 + N2], f2[N1 + N2];
    nnp_rng a, b;

    nnp_rng_seed(&a, 5, 3);
    nnp_rng_seed(&b, 5, 3);
    nnp_rng_fill_normal(&a, f1, N1 + N2, 0.5, 2.0);
    nnp_rng_fill_normal(&b, f2, N1, 0.5, 2.0);
    nnp_rng_fill_normal(&b, f2 + N1, N2, 0.5, 2.0);
    ASSERT_TRUE(memcmp(f1, f2, sizeof f1) == 0);
    ASSERT_TRUE(a.counter == b.counter);

    nnp_rng_seed(&a, 5, 4);
    nnp_rng_seed(&b, 5, 4);
    nnp_rng_fill_uniform(&a, f1, N1 + N2, -1.0, 3.0);
    nnp_rng_fill_uniform(&b, f2, N1, -1.0, 3.0);
    nnp_rng_fill_uniform(&b, f2 + N1, N2, -1.0, 3.0);
    ASSERT_TRUE(memcmp(f1, f2, sizeof f1) == 0);

    /* A value depends only on (key, counter): restarting at a saved state reproduces it. */
    nnp_rng_seed(&a, 9, 1);
    for (int i = 0; i < 100; i++)
        (void)nnp_rng_normal(&a);
    nnp_rng saved = a;
    double n1 = nnp_rng_normal(&a), u1 = nnp_rng_uniform(&a);
    uint64_t k1 = nnp_rng_below(&a, 1000003);
    double n2 = nnp_rng_normal(&saved), u2 = nnp_rng_uniform(&saved);
    uint64_t k2 = nnp_rng_below(&saved, 1000003);
    ASSERT_TRUE(n1 == n2 && u1 == u2 && k1 == k2);
    ASSERT_TRUE(a.counter == saved.counter);

    /* Each normal consumes exactly two outputs, each uniform one. */
    nnp_rng_seed(&a, 1, 1);
    (void)nnp_rng_normal(&a);
    ASSERT_EQ_INT(a.counter, 2);
    (void)nnp_rng_uniformf(&a);
    (void)nnp_rng_uniform(&a);
    ASSERT_EQ_INT(a.counter, 4);
}

static void check_mean_var(const char *what, const double *v, size_t n, double mu,
                           double var)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += v[i];
    double m = s / (double)n, ss = 0.0;
    for (size_t i = 0; i < n; i++)
        ss += (v[i] - m) * (v[i] - m);
    double sv = ss / (double)(n - 1);
    /* Mean: |m - mu| <= 4 standard errors. */
    double se = sqrt(var / (double)n);
    fprintf(stderr, "%s: mean %.6f (want %.6f, bound %.2e), var %.6f (want %.6f)\n", what,
            m, mu, 4 * se, sv, var);
    ASSERT_NEAR(m, mu, 4.0 * se);
    /* Variance: S^2/s^2 within the chi-square bounds (exact for normal data; for uniform
     * data Var(S^2) is 2.5x smaller than for normal, so the same bounds are looser). */
    double lo, hi;
    chi2_ratio_bounds((double)(n - 1), 4.0, &lo, &hi);
    ASSERT_TRUE(sv / var >= lo && sv / var <= hi);
}

static void test_moments(void)
{
    double *v = malloc(NDRAW * sizeof *v);
    float *f = malloc(NDRAW * sizeof *f);
    ASSERT_TRUE(v && f);
    if (!v || !f) {
        free(v);
        free(f);
        return;
    }
    nnp_rng r;

    nnp_rng_seed(&r, 2024, NNP_STREAM_DATA);
    int inrange = 1;
    for (size_t i = 0; i < NDRAW; i++) {
        v[i] = nnp_rng_uniform(&r);
        inrange &= v[i] >= 0.0 && v[i] < 1.0;
    }
    ASSERT_TRUE(inrange);
    check_mean_var("uniform", v, NDRAW, 0.5, 1.0 / 12.0);

    inrange = 1;
    for (size_t i = 0; i < NDRAW; i++) {
        float x = nnp_rng_uniformf(&r);
        inrange &= x >= 0.0f && x < 1.0f;
        v[i] = x;
    }
    ASSERT_TRUE(inrange);
    check_mean_var("uniformf", v, NDRAW, 0.5, 1.0 / 12.0);

    int finite = 1;
    for (size_t i = 0; i < NDRAW; i++) {
        v[i] = nnp_rng_normal(&r);
        finite &= isfinite(v[i]);
    }
    ASSERT_TRUE(finite);
    check_mean_var("normal", v, NDRAW, 0.0, 1.0);

    /* Fourth moment of N(0,1) is 3; its sample estimate has variance (105 - 9)/n. */
    double m4 = 0.0;
    for (size_t i = 0; i < NDRAW; i++)
        m4 += v[i] * v[i] * v[i] * v[i];
    m4 /= NDRAW;
    ASSERT_NEAR(m4, 3.0, 4.0 * sqrt(96.0 / NDRAW));

    nnp_rng_fill_normal(&r, f, NDRAW, 3.0, 2.0);
    for (size_t i = 0; i < NDRAW; i++)
        v[i] = f[i];
    check_mean_var("fill_normal(3, 2)", v, NDRAW, 3.0, 4.0);

    nnp_rng_fill_uniform(&r, f, NDRAW, -2.0, 6.0);
    inrange = 1;
    for (size_t i = 0; i < NDRAW; i++) {
        v[i] = f[i];
        inrange &= f[i] >= -2.0f && f[i] < 6.0f;
    }
    ASSERT_TRUE(inrange);
    check_mean_var("fill_uniform(-2, 6)", v, NDRAW, 2.0, 64.0 / 12.0);

    free(v);
    free(f);
}

static void test_below(void)
{
    nnp_rng r;
    nnp_rng_seed(&r, 77, NNP_STREAM_DATA);

    ASSERT_EQ_INT(nnp_rng_below(&r, 1), 0);

    /* Chi-square goodness of fit for below(10), 9 degrees of freedom; the critical value
     * at p = 1e-4 is 33.72. */
    long cnt[10] = {0};
    int inrange = 1;
    for (int i = 0; i < NDRAW; i++) {
        uint64_t k = nnp_rng_below(&r, 10);
        inrange &= k < 10;
        if (k < 10)
            cnt[k]++;
    }
    ASSERT_TRUE(inrange);
    double e = NDRAW / 10.0, chi2 = 0.0;
    for (int k = 0; k < 10; k++)
        chi2 += (cnt[k] - e) * (cnt[k] - e) / e;
    fprintf(stderr, "below(10): chi2 = %.2f (9 dof, critical 33.72 at p=1e-4)\n", chi2);
    ASSERT_TRUE(chi2 < 33.72);

    /* Unbiasedness where it matters: n = 3 * 2^62. Plain x % n would put half of the mass
     * below 2^62 instead of a third. */
    uint64_t n = UINT64_C(3) << 62;
    long low = 0;
    const int M = 200000;
    for (int i = 0; i < M; i++) {
        uint64_t k = nnp_rng_below(&r, n);
        inrange &= k < n;
        low += k < (UINT64_C(1) << 62);
    }
    ASSERT_TRUE(inrange);
    double p = 1.0 / 3.0;
    ASSERT_NEAR((double)low / M, p, 4.0 * sqrt(p * (1 - p) / M));
}

static void test_permutation(void)
{
    nnp_rng r;
    nnp_rng_seed(&r, 3, NNP_STREAM_SHUFFLE);

    uint32_t p0[1] = {99};
    nnp_rng_permutation(&r, p0, 0);
    ASSERT_EQ_INT(p0[0], 99);
    nnp_rng_permutation(&r, p0, 1);
    ASSERT_EQ_INT(p0[0], 0);

    /* 20000 shuffles of n = 8. Every result is a permutation, and for each position the
     * value found there is uniform: chi-square with 7 dof, critical value 29.88 at
     * p = 1e-4 (8 positions are checked). */
    enum { NP = 8, NS = 20000 };
    long cnt[NP][NP] = {{0}};
    int all_perm = 1;
    for (int s = 0; s < NS; s++) {
        uint32_t p[NP];
        nnp_rng_permutation(&r, p, NP);
        int seen[NP] = {0};
        for (int i = 0; i < NP; i++) {
            if (p[i] >= NP || seen[p[i]]) {
                all_perm = 0;
                continue;
            }
            seen[p[i]] = 1;
            cnt[i][p[i]]++;
        }
    }
    ASSERT_TRUE(all_perm);
    double e = (double)NS / NP, worst = 0.0;
    for (int i = 0; i < NP; i++) {
        double chi2 = 0.0;
        for (int v = 0; v < NP; v++)
            chi2 += (cnt[i][v] - e) * (cnt[i][v] - e) / e;
        if (chi2 > worst)
            worst = chi2;
        ASSERT_TRUE(chi2 < 29.88);
    }
    fprintf(stderr, "permutation(8): worst position chi2 = %.2f (7 dof, critical 29.88)\n",
            worst);

    /* A large permutation is a permutation. */
    size_t big = 100003;
    uint32_t *pb = malloc(big * sizeof *pb);
    unsigned char *seen = calloc(big, 1);
    ASSERT_TRUE(pb && seen);
    if (pb && seen) {
        nnp_rng_permutation(&r, pb, big);
        int ok = 1;
        for (size_t i = 0; i < big; i++) {
            if (pb[i] >= big || seen[pb[i]])
                ok = 0;
            else
                seen[pb[i]] = 1;
        }
        ASSERT_TRUE(ok);
    }
    free(pb);
    free(seen);
}

int main(void)
{
    test_known_answer();
    test_determinism();
    test_continuation();
    test_moments();
    test_below();
    test_permutation();
    TEST_MAIN_END();
}
