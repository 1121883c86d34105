/* noise.h - the gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish, Kaplan,
 * Amodei et al. 2018, "An Empirical Model of Large-Batch Training", appendix A).
 *
 * G is the true (expected) gradient and Sigma the covariance of the per-sample gradients.
 * A gradient averaged over B independent samples has E|G_B|^2 = |G|^2 + tr(Sigma)/B, so
 * the squared norms at two batch sizes give unbiased estimates of both. Data-parallel
 * training has two sizes for free: each rank's local gradient (the mean over its own B_k
 * samples) and the averaged one (the mean over all B_big samples of the global batch); one
 * rank splits its batch in two halves instead. With K pieces of B_k samples,
 *   S = (1/K) sum_k |G_k|^2,  h = (1/K) sum_k 1/B_k,  L = |G_big|^2,
 *   E S = |G|^2 + h tr(Sigma),  E L = |G|^2 + tr(Sigma)/B_big, so
 *   tr(Sigma) ~ (S - L) / (h - 1/B_big),  |G|^2 ~ L - tr(Sigma)/B_big,
 * which for equal pieces B_k = b are the paper's estimators:
 *   |G|^2 ~ (B_big L - b S)/(B_big - b),  tr(Sigma) ~ (S - L)/(1/b - 1/B_big).
 * Per-step estimates are noisy (|G|^2's can be negative); numerator and denominator are
 * smoothed separately by exponential moving averages and B_simple is their ratio.
 */
#ifndef NNPREC_NOISE_H
#define NNPREC_NOISE_H
#include <stdint.h>

/* The per-step sums (each a sum over ranks): sum_k |G_k|^2 over the pieces with samples,
 * sum_k 1/B_k, the number of such pieces, and |G_big|^2. */
enum { NNP_NS_SMALL, NNP_NS_INV, NNP_NS_PIECES, NNP_NS_BIG, NNP_NS_N };

/* One step's unbiased estimates of |G|^2 and tr(Sigma) from the sums above and the global
 * batch B_big. Returns 0 (and leaves *g2, *tr alone) when they cannot be formed: fewer than
 * two pieces with samples, or non-finite sums. */
int nnp_noise_estimate(const double *sums, double B_big, double *g2, double *tr);

/* Exponential moving averages of the two estimates with weight alpha for a new step:
 * ema <- (1 - alpha) ema + alpha x, started at 0 and read bias-corrected (divided by
 * 1 - (1 - alpha)^n, as Adam's moments), so the first estimate is read as itself. */
typedef struct {
    double alpha;
    double ema_g2, ema_tr;
    int64_t n; /* steps averaged */
} nnp_noise;

void nnp_noise_update(nnp_noise *ns, double g2, double tr);
/* The smoothed |G|^2, tr(Sigma) and B_simple = tr(Sigma)/|G|^2 (NaN before any step). */
void nnp_noise_read(const nnp_noise *ns, double *g2, double *tr, double *b_simple);

#endif
