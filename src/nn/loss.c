/* loss.c - softmax cross-entropy and one-hot mean-squared error over a batch.
 *
 * Both return the SUM over the batch of per-sample losses, in double. The gradient buffer
 * (nullable) receives scale * d(sum loss)/d(input); a caller wanting the batch mean passes
 * scale = 1/B. correct (nullable) counts samples whose argmax equals the label, the first
 * maximum winning on ties. Labels must be < C.
 */
#include <math.h>

#include "nnprec/layers.h"

/* Index of the first maximum of v[0..C). */
static int argmax_first(int C, const float *v)
{
    int best = 0;
    for (int c = 1; c < C; c++)
        if (v[c] > v[best])
            best = c;
    return best;
}

double nnp_softmax_ce(int B, int C, const float *logits, const unsigned char *labels,
                      float scale, float *dlogits, int *correct)
{
    double total = 0.0;
    int hits = 0;
    for (int n = 0; n < B; n++) {
        const float *l = logits + (size_t)n * C;
        const int lab = labels[n];
        const int am = argmax_first(C, l);
        hits += am == lab;
        /* log sum_c exp(l_c) = m + log sum_c exp(l_c - m) with m the max: no overflow. */
        const double m = l[am];
        double sum = 0.0;
        for (int c = 0; c < C; c++)
            sum += exp((double)l[c] - m);
        const double lse = m + log(sum);
        total += lse - (double)l[lab];
        if (dlogits) {
            float *d = dlogits + (size_t)n * C;
            const double inv = 1.0 / sum;
            for (int c = 0; c < C; c++) {
                const double pc = exp((double)l[c] - m) * inv;
                d[c] = (float)((double)scale * (pc - (c == lab ? 1.0 : 0.0)));
            }
        }
    }
    if (correct)
        *correct = hits;
    return total;
}

double nnp_mse_onehot(int B, int C, const float *y, const unsigned char *labels, float scale,
                      float *dy, int *correct)
{
    double total = 0.0;
    int hits = 0;
    /* d/dy_c of mean_c (y_c - t_c)^2 is 2 (y_c - t_c) / C */
    const double g = C > 0 ? 2.0 * (double)scale / C : 0.0;
    for (int n = 0; n < B; n++) {
        const float *v = y + (size_t)n * C;
        const int lab = labels[n];
        hits += argmax_first(C, v) == lab;
        double acc = 0.0;
        for (int c = 0; c < C; c++) {
            const double e = (double)v[c] - (c == lab ? 1.0 : 0.0);
            acc += e * e;
            if (dy)
                dy[(size_t)n * C + c] = (float)(g * e);
        }
        total += acc / C;
    }
    if (correct)
        *correct = hits;
    return total;
}
