/* noise.c - the gradient noise scale estimator and its smoothing (see noise.h). */
#include "nnprec/noise.h"

#include <math.h>

int nnp_noise_estimate(const double *sums, double B_big, double *g2, double *tr)
{
    const double K = sums[NNP_NS_PIECES];
    if (!(K >= 2) || !(B_big > 0))
        return 0;
    const double S = sums[NNP_NS_SMALL] / K, h = sums[NNP_NS_INV] / K, L = sums[NNP_NS_BIG];
    const double d = h - 1.0 / B_big;
    if (!(d > 0) || !isfinite(S) || !isfinite(L))
        return 0;
    const double t = (S - L) / d;
    *tr = t;
    *g2 = L - t / B_big;
    return 1;
}

void nnp_noise_update(nnp_noise *ns, double g2, double tr)
{
    ns->ema_g2 += ns->alpha * (g2 - ns->ema_g2);
    ns->ema_tr += ns->alpha * (tr - ns->ema_tr);
    ns->n++;
}

void nnp_noise_read(const nnp_noise *ns, double *g2, double *tr, double *b_simple)
{
    if (ns->n <= 0) {
        *g2 = *tr = *b_simple = NAN;
        return;
    }
    const double c = 1.0 - pow(1.0 - ns->alpha, (double)ns->n);
    *g2 = ns->ema_g2 / c;
    *tr = ns->ema_tr / c;
    *b_simple = ns->ema_tr / ns->ema_g2;
}
