/* dataset.c - batch gathering with normalization, moments, and freeing of nnp_dataset.
 *
 * Samples stay as stored (uint8 or float) and are mapped to x = (v*scale - mean)/std when
 * a batch is copied out, written as x = v*a + b with a = scale/std and b = -mean/std.
 */
#include "nnprec/data.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nnprec/alloc.h"

static size_t sample_size(const nnp_dataset *d)
{
    return (size_t)d->c * (size_t)d->h * (size_t)d->w;
}

/* Normalize sample i of d into x[0..D). */
static void copy_sample(const nnp_dataset *d, size_t i, size_t D, float a, float b, float *x)
{
    if (d->pix) {
        const unsigned char *src = d->pix + i * D;
        for (size_t k = 0; k < D; k++)
            x[k] = (float)src[k] * a + b;
    } else {
        const float *src = d->xf + i * D;
        for (size_t k = 0; k < D; k++)
            x[k] = src[k] * a + b;
    }
}

static void coefficients(const nnp_dataset *d, float *a, float *b)
{
    double scale = d->pix ? 1.0 / 255.0 : 1.0;
    *a = (float)(scale / d->std);
    *b = (float)(-d->mean / d->std);
}

void nnp_dataset_gather(const nnp_dataset *d, const uint32_t *idx, int B, float *x,
                        unsigned char *y)
{
    size_t D = sample_size(d);
    float a, b;
    coefficients(d, &a, &b);
    for (int j = 0; j < B; j++) {
        size_t i = idx[j];
        copy_sample(d, i, D, a, b, x + (size_t)j * D);
        if (y)
            y[j] = d->y[i];
    }
}

void nnp_dataset_slice(const nnp_dataset *d, size_t start, int B, float *x, unsigned char *y)
{
    size_t D = sample_size(d);
    float a, b;
    coefficients(d, &a, &b);
    for (int j = 0; j < B; j++) {
        copy_sample(d, start + (size_t)j, D, a, b, x + (size_t)j * D);
        if (y)
            y[j] = d->y[start + (size_t)j];
    }
}

void nnp_dataset_moments(const nnp_dataset *d, double *mean, double *std)
{
    size_t total = d->n * sample_size(d);
    *mean = 0.0;
    *std = 0.0;
    if (total == 0)
        return;
    if (d->pix) {
        /* A histogram of the 256 byte values gives exact counts; the moments follow from
         * it in double without per-value rounding. */
        uint64_t hist[256] = {0};
        for (size_t k = 0; k < total; k++)
            hist[d->pix[k]]++;
        nnp_moments_from_histogram(hist, (double)total, mean, std);
    } else {
        /* Two passes: the centred sum of squares avoids cancellation for data far from 0. */
        double s = 0.0;
        for (size_t k = 0; k < total; k++)
            s += d->xf[k];
        double m = s / (double)total, ss = 0.0;
        for (size_t k = 0; k < total; k++) {
            double dv = (double)d->xf[k] - m;
            ss += dv * dv;
        }
        *mean = m;
        *std = sqrt(ss / (double)total);
    }
}

void nnp_moments_from_histogram(const uint64_t hist[256], double total, double *mean,
                                double *std)
{
    double s = 0.0;
    for (int v = 0; v < 256; v++)
        s += (double)hist[v] * (v / 255.0);
    double m = s / total, ss = 0.0;
    for (int v = 0; v < 256; v++) {
        double dv = v / 255.0 - m;
        ss += (double)hist[v] * dv * dv;
    }
    *mean = m;
    *std = sqrt(ss / total);
}

void nnp_dataset_free(nnp_dataset *d)
{
    if (!d)
        return;
    NNP_FREE(d->pix);
    NNP_FREE(d->xf);
    NNP_FREE(d->y);
    memset(d, 0, sizeof *d);
}

nnp_status nnp_dataset_holdout(nnp_dataset *d, const unsigned char *is_val, size_t lo,
                               size_t hi, nnp_dataset *val)
{
    const size_t D = sample_size(d);
    const size_t esize = d->pix ? 1 : sizeof(float);
    memset(val, 0, sizeof *val);
    val->c = d->c;
    val->h = d->h;
    val->w = d->w;
    val->n_classes = d->n_classes;
    val->n_total = d->n_total;
    val->mean = d->mean;
    val->std = d->std;
    const size_t n = hi > lo ? hi - lo : 0;
    /* at least one byte: an empty shard still gets buffers (a rank may hold none) */
    unsigned char *vx = nnp_malloc(n * D * esize + 1);
    unsigned char *vy = nnp_malloc(n + 1);
    if (!vx || !vy) {
        NNP_FREE(vx);
        NNP_FREE(vy);
        return NNP_ERR_NOMEM;
    }
    unsigned char *x = d->pix ? d->pix : (unsigned char *)d->xf;
    size_t kept = 0, held = 0, got = 0;
    for (size_t i = 0; i < d->n; i++) {
        if (is_val[i]) {
            if (held >= lo && held < hi) {
                memcpy(vx + got * D * esize, x + i * D * esize, D * esize);
                vy[got++] = d->y[i];
            }
            held++;
            continue;
        }
        if (kept != i) {
            memmove(x + kept * D * esize, x + i * D * esize, D * esize);
            d->y[kept] = d->y[i];
        }
        kept++;
    }
    d->n = kept;
    val->n = got;
    val->y = vy;
    if (d->pix)
        val->pix = vx;
    else
        val->xf = (float *)vx;
    return NNP_OK;
}
