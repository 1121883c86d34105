/* sampler.c - global sample order and contiguous sharding over ranks.
 *
 * The permutation of an epoch is a function of (seed, epoch) only; every rank computes
 * it whole and takes its nnp_split slice of each global batch, so the sequence of global
 * batches is the same for any rank count.
 */
#include "nnprec/data.h"

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
