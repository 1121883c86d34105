/* rng.c - counter-based random numbers (see rng.h).
 *
 * Output i of a generator is splitmix64_mix(key + i * GOLDEN): SplitMix64's finalizer
 * applied to a keyed Weyl sequence. The key mixes seed and stream through the same
 * finalizer, so neighbouring (seed, stream) pairs give unrelated keys. Every derived
 * draw (uniform, below, normal) consumes whole 64-bit outputs and keeps no other state,
 * so a value depends only on (key, counter) and drawing n then m values equals drawing
 * n + m values.
 */
#include "nnprec/rng.h"

#include <math.h>

#define GOLDEN UINT64_C(0x9E3779B97F4A7C15)

static inline uint64_t splitmix64_mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

void nnp_rng_seed(nnp_rng *r, uint64_t seed, uint64_t stream)
{
    /* Mix the seed first, then fold in the (separately mixed) stream and mix again, so
     * (seed, stream) and (stream, seed) or (seed + 1, stream - 1) do not collide. */
    uint64_t k = splitmix64_mix(seed + GOLDEN);
    k = splitmix64_mix(k ^ splitmix64_mix(stream + UINT64_C(0xD1B54A32D192ED03)));
    r->key = k;
    r->counter = 0;
}

uint64_t nnp_rng_u64(nnp_rng *r)
{
    uint64_t c = r->counter++;
    return splitmix64_mix(r->key + c * GOLDEN);
}

float nnp_rng_uniformf(nnp_rng *r)
{
    return (float)(nnp_rng_u64(r) >> 40) * (1.0f / 16777216.0f); /* 2^-24 */
}

double nnp_rng_uniform(nnp_rng *r)
{
    return (double)(nnp_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0); /* 2^-53 */
}

uint64_t nnp_rng_below(nnp_rng *r, uint64_t n)
{
    if (n <= 1)
        return 0;
    /* Reject the lowest 2^64 mod n outputs so that the rest is a whole number of
     * copies of [0, n); at most half of the range is rejected, usually far less. */
    uint64_t threshold = (0 - n) % n;
    for (;;) {
        uint64_t x = nnp_rng_u64(r);
        if (x >= threshold)
            return x % n;
    }
}

double nnp_rng_normal(nnp_rng *r)
{
    /* Box-Muller with u1 in (0, 1] so the logarithm is finite; the sine half is not
     * cached, which keeps the generator's only state its counter. */
    double u1 = (double)((nnp_rng_u64(r) >> 11) + 1) * (1.0 / 9007199254740992.0);
    double u2 = nnp_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586476925 * u2);
}

void nnp_rng_fill_normal(nnp_rng *r, float *x, size_t n, double mean, double std)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(mean + std * nnp_rng_normal(r));
}

void nnp_rng_fill_uniform(nnp_rng *r, float *x, size_t n, double lo, double hi)
{
    double w = hi - lo;
    float top = (float)hi;
    for (size_t i = 0; i < n; i++) {
        float v = (float)(lo + w * nnp_rng_uniform(r));
        /* Rounding to float can land on hi; keep the interval half-open. */
        if (v >= top && hi > lo)
            v = nextafterf(top, (float)lo);
        x[i] = v;
    }
}

void nnp_rng_permutation(nnp_rng *r, uint32_t *perm, size_t n)
{
    for (size_t i = 0; i < n; i++)
        perm[i] = (uint32_t)i;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)nnp_rng_below(r, (uint64_t)i);
        uint32_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
}
