/* rng.h - counter-based random numbers.
 *
 * A value depends only on (key, counter): nnp_rng_seed(&r, seed, stream) derives the key
 * from a user seed and a stream id (e.g. "shuffle of epoch e", "init of layer k"), so a
 * shuffle depends only on (seed, epoch) and never on the rank count or on how many numbers
 * other streams drew. The generator is SplitMix64's output function applied to a keyed
 * Weyl sequence (Steele, Lea, Flood 2014), which passes BigCrush for distinct counters.
 */
#ifndef NNPREC_RNG_H
#define NNPREC_RNG_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t key;     /* derived from (seed, stream) */
    uint64_t counter; /* number of 64-bit outputs drawn */
} nnp_rng;

/* Stream ids used by the library: the kind in the top byte, an index below it, so no two
 * kinds can ever share a stream (e.g. the init of layer 1 and the shuffle of epoch 0). */
#define NNP_STREAM_INIT ((uint64_t)1 << 56)    /* + trainable-layer index */
#define NNP_STREAM_SHUFFLE ((uint64_t)2 << 56) /* + (epoch << 8): per-epoch permutation */
#define NNP_STREAM_DATA ((uint64_t)3 << 56)    /* + index: synthetic inputs (tests, stats) */
#define NNP_STREAM_HOLDOUT ((uint64_t)4 << 56) /* --val-split: the held-out samples */
#define NNP_STREAM_DROPOUT ((uint64_t)5 << 56) /* + (layer << 40) + step: dropout masks */

void nnp_rng_seed(nnp_rng *r, uint64_t seed, uint64_t stream);
uint64_t nnp_rng_u64(nnp_rng *r);
/* Uniform in [0, 1) with 24 (float) or 53 (double) random bits. */
float nnp_rng_uniformf(nnp_rng *r);
double nnp_rng_uniform(nnp_rng *r);
/* Uniform integer in [0, n), unbiased (rejection). n > 0. */
uint64_t nnp_rng_below(nnp_rng *r, uint64_t n);
/* Standard normal (Box-Muller, double precision internally). */
double nnp_rng_normal(nnp_rng *r);
/* Fill x[0..n) with N(mean, std^2) / U(lo, hi). */
void nnp_rng_fill_normal(nnp_rng *r, float *x, size_t n, double mean, double std);
void nnp_rng_fill_uniform(nnp_rng *r, float *x, size_t n, double lo, double hi);
/* Fisher-Yates permutation of 0..n-1 into perm. */
void nnp_rng_permutation(nnp_rng *r, uint32_t *perm, size_t n);

#endif
