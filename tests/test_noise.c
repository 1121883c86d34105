/* test_noise.c - the gradient noise scale estimator (noise.h) on a problem whose answer is
 * known: least squares with Gaussian inputs. A sample's gradient at w is
 * g = x (x.r - e), r = w - w*, x ~ N(0, I_d), e ~ N(0, s2), so
 *   G = E g = r,  Sigma = E g g^T - r r^T = (|r|^2 + s2) I + r r^T  (Gaussian 4th moments),
 *   |G|^2 = |r|^2,  tr(Sigma) = d (|r|^2 + s2) + |r|^2.
 * With d = 10, |r|^2 = 1, s2 = 0.5: |G|^2 = 1, tr(Sigma) = 16, B_simple = 16.
 * Each simulated step draws a global batch of 15 samples, splits it over the ranks as the
 * trainer does (2 ranks: 8 + 7, 4 ranks: 4 + 4 + 4 + 3; one rank's two halves are the
 * 2-rank case), forms each rank's mean gradient and the global one, and feeds the sums to
 * nnp_noise_estimate. Over T = 100000 steps the mean estimates must lie within 4 standard
 * errors of the truth, and those errors must be small enough that an estimator biased by
 * 10% (either way) fails the same check. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "nnprec/data.h"
#include "nnprec/noise.h"
#include "nnprec/rng.h"
#include "test_util.h"

enum { D = 10, GB = 15, T = 100000 };
static const double S2 = 0.5, TRUE_G2 = 1.0, TRUE_TR = D * (1.0 + 0.5) + 1.0;

typedef struct {
    double sum, sum2;
    long n;
} acc;

static void acc_add(acc *a, double x)
{
    a->sum += x;
    a->sum2 += x * x;
    a->n++;
}
static double acc_mean(const acc *a) { return a->sum / (double)a->n; }
static double acc_se(const acc *a)
{
    double m = acc_mean(a), v = (a->sum2 / (double)a->n - m * m) * a->n / (a->n - 1.0);
    return sqrt(v / (double)a->n);
}

/* |mean - truth| <= 4 SE */
static int within(double mean, double se, double truth) { return fabs(mean - truth) <= 4 * se; }

static void check(int p)
{
    nnp_rng r;
    nnp_rng_seed(&r, 2018, NNP_STREAM_DATA + (uint64_t)p);
    acc g2 = {0}, tr = {0};
    for (long t = 0; t < T; t++) {
        double big[D] = {0}, sums[NNP_NS_N] = {0};
        for (int k = 0; k < p; k++) {
            size_t lo, hi;
            nnp_split(GB, p, k, &lo, &hi);
            const int b = (int)(hi - lo);
            double mine[D] = {0};
            for (int i = 0; i < b; i++) {
                double x[D], xr;
                for (int j = 0; j < D; j++)
                    x[j] = nnp_rng_normal(&r);
                xr = x[0]; /* r = e_1 */
                double c = xr - sqrt(S2) * nnp_rng_normal(&r);
                for (int j = 0; j < D; j++)
                    mine[j] += x[j] * c;
            }
            /* as the trainer: this rank's gradient is its samples' sum / GB; the local mean
             * is that times GB / b */
            double n2 = 0;
            for (int j = 0; j < D; j++) {
                big[j] += mine[j] / GB;
                double m = mine[j] / b;
                n2 += m * m;
            }
            sums[NNP_NS_SMALL] += n2;
            sums[NNP_NS_INV] += 1.0 / b;
            sums[NNP_NS_PIECES] += 1;
        }
        for (int j = 0; j < D; j++)
            sums[NNP_NS_BIG] += big[j] * big[j];
        double e_g2, e_tr;
        ASSERT_TRUE(nnp_noise_estimate(sums, GB, &e_g2, &e_tr));
        acc_add(&g2, e_g2);
        acc_add(&tr, e_tr);
    }
    double mg = acc_mean(&g2), sg = acc_se(&g2), mt = acc_mean(&tr), st = acc_se(&tr);
    fprintf(stderr, "  %d ranks: |G|^2 %.4f +- %.4f (true %.1f), tr(Sigma) %.3f +- %.3f (true %.1f), "
                    "B_simple %.2f (true %.1f)\n",
            p, mg, sg, TRUE_G2, mt, st, TRUE_TR, mt / mg, TRUE_TR / TRUE_G2);
    nnp_test_checks++;
    if (!within(mg, sg, TRUE_G2) || !within(mt, st, TRUE_TR))
        TEST_FAIL_("%d ranks: estimates outside 4 standard errors of the truth", p);
    /* the check has the power to see a 10% bias */
    for (double f = 0.9; f < 1.2; f += 0.2) {
        nnp_test_checks++;
        if (within(f * mg, f * sg, TRUE_G2) || within(f * mt, f * st, TRUE_TR))
            TEST_FAIL_("%d ranks: an estimator biased by a factor %.1f would pass", p, f);
    }
    /* and so the ratio of the means is near B_simple: within the two relative bounds */
    double rel = 4 * (sg / mg + st / mt);
    ASSERT_TRUE(fabs(mt / mg / (TRUE_TR / TRUE_G2) - 1) <= rel && rel < 0.1);
}

static void test_edges(void)
{
    double g2 = -7, tr = -7;
    /* one piece (a rank alone with one sample, or all samples on one rank): nothing */
    double one[NNP_NS_N] = {3, 1.0 / 4, 1, 2};
    ASSERT_TRUE(!nnp_noise_estimate(one, 4, &g2, &tr) && g2 == -7 && tr == -7);
    double nan_sums[NNP_NS_N] = {NAN, 1, 2, 1};
    ASSERT_TRUE(!nnp_noise_estimate(nan_sums, 4, &g2, &tr));
    /* equal pieces: the paper's (B_big L - b S)/(B_big - b) and (S - L)/(1/b - 1/B_big) */
    double eq[NNP_NS_N] = {2 * 3.0, 2 * (1.0 / 8), 2, 2.0};
    ASSERT_TRUE(nnp_noise_estimate(eq, 16, &g2, &tr));
    ASSERT_CLOSE(g2, (16 * 2.0 - 8 * 3.0) / (16 - 8), 1e-14, 0);
    ASSERT_CLOSE(tr, (3.0 - 2.0) / (1.0 / 8 - 1.0 / 16), 1e-14, 0);

    /* the moving averages: bias-corrected, so a constant input reads as itself */
    nnp_noise ns = {0};
    ns.alpha = 0.1;
    nnp_noise_read(&ns, &g2, &tr, &eq[0]);
    ASSERT_TRUE(isnan(g2) && isnan(tr) && isnan(eq[0]));
    for (int i = 0; i < 5; i++)
        nnp_noise_update(&ns, 2.0, 30.0);
    double b;
    nnp_noise_read(&ns, &g2, &tr, &b);
    ASSERT_CLOSE(g2, 2.0, 1e-14, 0);
    ASSERT_CLOSE(tr, 30.0, 1e-14, 0);
    ASSERT_CLOSE(b, 15.0, 1e-14, 0);
    /* numerator and denominator are averaged separately: EMA(tr)/EMA(g2) */
    nnp_noise_update(&ns, 4.0, 30.0);
    nnp_noise_read(&ns, &g2, &tr, &b);
    ASSERT_CLOSE(b, ns.ema_tr / ns.ema_g2, 1e-15, 0);
    ASSERT_CLOSE(ns.ema_g2, 0.9 * 2.0 * (1 - pow(0.9, 5)) + 0.1 * 4.0, 1e-14, 0);
    ASSERT_CLOSE(g2, ns.ema_g2 / (1 - pow(0.9, 6)), 1e-14, 0);
}

int main(void)
{
    test_edges();
    check(2);
    check(4);
    TEST_MAIN_END();
}
