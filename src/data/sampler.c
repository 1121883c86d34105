/* sampler.c - global sample order and contiguous sharding over ranks.
 *
 * The permutation of an epoch is a function of (seed, epoch) only; every rank computes
 * it whole and takes its nnp_split slice of each global batch, so the sequence of global
 * batches is the same for any rank count.
 */
#include "nnprec/data.h"

#include <math.h>
#include <string.h>

#include "nnprec/rng.h"

/* floor(count * k / p) without forming count * k: count = q*p + rem, so
 * count*k/p = q*k + rem*k/p, and rem*k < p*p fits easily. Requires 0 <= k <= p. */
static size_t split_point(size_t count, size_t p, size_t k)
{
    size_t q = count / p, rem = count % p;
    return q * k + (rem * k) / p;
}

void nnp_split(size_t count, int p, int r, size_t *lo, size_t *hi)
{
    if (p <= 0 || r < 0 || r >= p) {
        *lo = *hi = 0;
        return;
    }
    *lo = split_point(count, (size_t)p, (size_t)r);
    *hi = split_point(count, (size_t)p, (size_t)r + 1);
}

void nnp_split_units(size_t count, size_t unit, int p, int r, size_t *lo, size_t *hi)
{
    if (unit == 0) {
        nnp_split(count, p, r, lo, hi);
        return;
    }
    size_t a, b;
    nnp_split((count + unit - 1) / unit, p, r, &a, &b);
    *lo = a * unit < count ? a * unit : count;
    *hi = b * unit < count ? b * unit : count;
}

void nnp_split_weighted(size_t G, int p, const double *speed, size_t cap, size_t *share)
{
    double S = 0;
    for (int r = 0; r < p; r++)
        S += speed[r];
    /* A lower bound on every rank's share in an optimal split: the optimum makespan T*
     * (items finish at share/speed) satisfies sum_r (T* speed_r + 1) >= G, so
     * T* >= T0 = (G - p) / S, and floor(T0 speed_r) (at least 1, at most cap) never
     * exceeds the rank's share in that optimum. The shares sum to at most G. ... */
    const double T0 = S > 0 ? (double)(G - (size_t)p) / S : 0;
    size_t sum = 0;
    for (int r = 0; r < p; r++) {
        double x = floor(T0 * speed[r]);
        size_t k = x < 1 ? 1 : (size_t)x;
        share[r] = k < cap ? k : cap;
        sum += share[r];
    }
    /* ... then each remaining item to the rank that would finish it first */
    for (; sum < G; sum++) {
        int best = -1;
        double tbest = 0;
        for (int r = 0; r < p; r++) {
            if (share[r] >= cap)
                continue;
            double t = (double)(share[r] + 1) / (speed[r] > 0 ? speed[r] : 1e-300);
            if (best < 0 || t < tbest)
                best = r, tbest = t;
        }
        if (best < 0)
            break; /* G > p * cap: excluded by the caller */
        share[best]++;
    }
}

void nnp_split_shares(size_t count, size_t G, const size_t *share, int r, size_t *lo, size_t *hi)
{
    size_t W = 0;
    for (int q = 0; q < r; q++)
        W += share[q];
    /* count, W <= G: the products fit in 64 bits for any realistic batch */
    *lo = count * W / G;
    *hi = count * (W + share[r]) / G;
}

size_t nnp_batches_per_epoch(size_t N, size_t G)
{
    if (N == 0 || G == 0)
        return 0;
    return N / G + (N % G != 0);
}

void nnp_epoch_permutation(uint64_t seed, int epoch, uint32_t *perm, size_t N)
{
    nnp_rng r;
    nnp_rng_seed(&r, seed, (uint64_t)NNP_STREAM_SHUFFLE + ((uint64_t)epoch << 8));
    nnp_rng_permutation(&r, perm, N);
}

/* Shuffle a[0..n) in place (Fisher-Yates, as nnp_rng_permutation draws). */
static void shuffle(nnp_rng *r, uint32_t *a, size_t n)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)nnp_rng_below(r, (uint64_t)i);
        uint32_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

void nnp_epoch_order(uint64_t seed, int epoch, const nnp_shuffle *sh, uint32_t *perm, size_t N)
{
    if (!sh || sh->block == 0 || N == 0) {
        nnp_epoch_permutation(seed, epoch, perm, N);
        return;
    }
    const size_t K = sh->block, nb = (N + K - 1) / K, W = sh->window ? sh->window : 1;
    nnp_rng r;
    nnp_rng_seed(&r, seed, (uint64_t)NNP_STREAM_SHUFFLE + ((uint64_t)epoch << 8));
    nnp_rng_permutation(&r, perm, nb); /* the blocks' order in perm[0, nb) */
    /* expand in place from the back: block k of the order starts at position >= k, so the
     * order's entries 0..k-1, still to be read, are never overwritten */
    size_t end = N;
    for (size_t k = nb; k-- > 0;) {
        const size_t b = perm[k], lo = b * K, n = b == nb - 1 ? N - lo : K;
        end -= n;
        for (size_t i = n; i-- > 0;)
            perm[end + i] = (uint32_t)(lo + i);
    }
    /* then each window of W blocks (in the order's positions) shuffled within itself */
    size_t pos = 0;
    for (size_t k = 0; k < nb; k += W) {
        size_t n = 0;
        for (size_t j = k; j < k + W && j < nb; j++) {
            const size_t b = perm[pos + n] / K; /* the block at this position of the order */
            n += b == nb - 1 ? N - b * K : K;
        }
        shuffle(&r, perm + pos, n);
        pos += n;
    }
}

/* Global batch `step` of its epoch's order: its first position g0 and size gc (perm holds
 * the epoch's order afterwards). */
static int step_batch(uint64_t seed, const nnp_shuffle *sh, size_t N, size_t G, int64_t step,
                      uint32_t *perm, int *perm_epoch, size_t *g0, size_t *gc)
{
    const size_t spe = nnp_batches_per_epoch(N, G);
    if (spe == 0)
        return 0;
    const int epoch = (int)(step / (int64_t)spe);
    const size_t bi = (size_t)(step % (int64_t)spe);
    if (epoch != *perm_epoch) {
        nnp_epoch_order(seed, epoch, sh, perm, N);
        *perm_epoch = epoch;
    }
    *g0 = bi * G;
    *gc = *g0 + G <= N ? G : N - *g0;
    return 1;
}

/* This rank's part [lo, hi) of a step's batch (the batch's order from b) into idx. */
static int take_part(const uint32_t *b, size_t lo, size_t hi, uint32_t *idx)
{
    for (size_t i = lo; i < hi; i++)
        idx[i - lo] = b[i];
    return (int)(hi - lo);
}

int nnp_step_samples(uint64_t seed, const nnp_shuffle *sh, size_t N, size_t G, size_t unit,
                     int p, int r, int64_t step, uint32_t *perm, int *perm_epoch, uint32_t *idx)
{
    size_t g0, gc, lo, hi;
    if (!step_batch(seed, sh, N, G, step, perm, perm_epoch, &g0, &gc))
        return 0;
    nnp_split_units(gc, unit, p, r, &lo, &hi);
    return take_part(perm + g0, lo, hi, idx);
}

int nnp_step_samples_shares(uint64_t seed, const nnp_shuffle *sh, size_t N, size_t G,
                            const size_t *share, int r, int64_t step, uint32_t *perm,
                            int *perm_epoch, uint32_t *idx)
{
    size_t g0, gc, lo, hi;
    if (!step_batch(seed, sh, N, G, step, perm, perm_epoch, &g0, &gc))
        return 0;
    nnp_split_shares(gc, G, share, r, &lo, &hi);
    return take_part(perm + g0, lo, hi, idx);
}

void nnp_keep_range(size_t N, size_t limit, size_t lo, size_t hi, size_t *first, size_t *n)
{
    size_t end = N;
    if (limit && limit < end)
        end = limit;
    if (hi < end)
        end = hi;
    *first = lo < end ? lo : end;
    *n = end - *first;
}

void nnp_holdout_mask(uint64_t seed, size_t N, size_t n_val, uint32_t *perm,
                      unsigned char *is_val)
{
    nnp_rng r;
    nnp_rng_seed(&r, seed, NNP_STREAM_HOLDOUT);
    nnp_rng_permutation(&r, perm, N);
    memset(is_val, 0, N);
    for (size_t k = 0; k < n_val && k < N; k++)
        is_val[perm[k]] = 1;
}
