/* test_util.h - assertions that stay on in release builds and print both operands.
 *
 * A failed ASSERT_* prints file:line and the values, counts the failure and continues the
 * current test function; TEST_MAIN_END returns non-zero if anything failed, so every test
 * binary's exit code is its verdict.
 */
#ifndef NNP_TEST_UTIL_H
#define NNP_TEST_UTIL_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "nnprec/status.h"

static int nnp_test_failures = 0;
static int nnp_test_checks = 0;

#define TEST_FAIL_(...)                                            \
    do {                                                           \
        fprintf(stderr, "%s:%d: FAIL: ", __FILE__, __LINE__);      \
        fprintf(stderr, __VA_ARGS__);                              \
        fprintf(stderr, "\n");                                     \
        nnp_test_failures++;                                       \
    } while (0)

#define ASSERT_TRUE(c)                                   \
    do {                                                 \
        nnp_test_checks++;                               \
        if (!(c))                                        \
            TEST_FAIL_("expected true: %s", #c);         \
    } while (0)

#define ASSERT_OK(expr)                                                              \
    do {                                                                             \
        nnp_status s_ = (expr);                                                      \
        nnp_test_checks++;                                                           \
        if (s_ != NNP_OK)                                                            \
            TEST_FAIL_("%s returned %s: %s", #expr, nnp_status_str(s_), nnp_error_msg()); \
    } while (0)

#define ASSERT_STATUS(expr, want)                                                    \
    do {                                                                             \
        nnp_status s_ = (expr);                                                      \
        nnp_test_checks++;                                                           \
        if (s_ != (want))                                                            \
            TEST_FAIL_("%s returned %s, want %s (msg: %s)", #expr, nnp_status_str(s_), \
                       nnp_status_str(want), nnp_error_msg());                       \
        nnp_error_clear();                                                           \
    } while (0)

#define ASSERT_EQ_INT(a, b)                                                          \
    do {                                                                             \
        long long a_ = (long long)(a), b_ = (long long)(b);                          \
        nnp_test_checks++;                                                           \
        if (a_ != b_)                                                                \
            TEST_FAIL_("%s == %s: %lld vs %lld", #a, #b, a_, b_);                    \
    } while (0)

/* |a - b| <= tol */
#define ASSERT_NEAR(a, b, tol)                                                       \
    do {                                                                             \
        double a_ = (double)(a), b_ = (double)(b), t_ = (double)(tol);               \
        nnp_test_checks++;                                                           \
        if (!(fabs(a_ - b_) <= t_))                                                  \
            TEST_FAIL_("%s ~ %s: %.9g vs %.9g (|diff| %.3g > %.3g)", #a, #b, a_, b_,  \
                       fabs(a_ - b_), t_);                                           \
    } while (0)

/* |a - b| <= rtol * max(|a|,|b|) + atol */
#define ASSERT_CLOSE(a, b, rtol, atol)                                               \
    do {                                                                             \
        double a_ = (double)(a), b_ = (double)(b);                                   \
        double m_ = fabs(a_) > fabs(b_) ? fabs(a_) : fabs(b_);                       \
        double t_ = (double)(rtol) * m_ + (double)(atol);                            \
        nnp_test_checks++;                                                           \
        if (!(fabs(a_ - b_) <= t_))                                                  \
            TEST_FAIL_("%s ~ %s: %.9g vs %.9g (|diff| %.3g > %.3g)", #a, #b, a_, b_,  \
                       fabs(a_ - b_), t_);                                           \
    } while (0)

#define TEST_MAIN_END()                                                              \
    do {                                                                             \
        fprintf(stderr, "%s: %d checks, %d failed\n", __FILE__, nnp_test_checks,     \
                nnp_test_failures);                                                  \
        return nnp_test_failures ? 1 : 0;                                            \
    } while (0)

/* Two-sided chi-square bounds for a sample variance: with n draws from N(0, s^2), the
 * statistic (n-1) S^2 / s^2 ~ chi2(n-1). For large n use the Wilson-Hilferty normal
 * approximation; z = 4.0 gives a false-alarm rate of about 6e-5 per check. Returns the
 * ratio bounds [lo, hi] for S^2/s^2. */
static inline void chi2_ratio_bounds(double dof, double z, double *lo, double *hi)
{
    double a = 2.0 / (9.0 * dof);
    double l = 1.0 - a - z * sqrt(a), h = 1.0 - a + z * sqrt(a);
    *lo = l * l * l;
    *hi = h * h * h;
}

#endif
