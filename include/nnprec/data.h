/* data.h - datasets in memory, normalization, and the global sample order.
 *
 * A dataset is N samples of shape (C,H,W) as float, normalized, with uint8 labels.
 * Readers keep only the samples [lo, hi) a rank needs (its shard) where possible.
 *
 * Order: the permutation of epoch e is nnp_rng_permutation with stream
 * (seed, NNP_STREAM_SHUFFLE + (e << 8)), a function of (seed, epoch) only. The global batch
 * b of an epoch is perm[b*G, min((b+1)*G, N)); rank r of p takes the contiguous slice
 * nnp_split(count, p, r) of it. Every rank count therefore sees the same global batches.
 */
#ifndef NNPREC_DATA_H
#define NNPREC_DATA_H
#include <stddef.h>
#include <stdint.h>
#include "nnprec/status.h"

/* Samples are kept as stored (uint8 pixels, or float32 from HDF5) and scaled and
 * normalized when a batch is gathered: x = (v*scale - mean)/std, scale = 1/255 for uint8.
 * Every rank touches every training sample over an epoch (the permutation is global), so
 * the training set is held whole on each rank as uint8 (47 MB for Fashion-MNIST); the test
 * set is sharded, each rank holding only its part. */
typedef struct {
    size_t n;            /* samples held */
    int c, h, w;         /* per-sample shape */
    unsigned char *pix;  /* [n, c*h*w] raw uint8, or NULL */
    float *xf;           /* [n, c*h*w] raw float, or NULL (exactly one of pix/xf is set) */
    unsigned char *y;    /* [n] labels */
    int n_classes;       /* max label + 1 */
    size_t n_total;      /* samples in the file (before limits and sharding) */
    size_t first;        /* index in the file of sample 0 held here */
    double mean, std;    /* normalization applied at gather time */
} nnp_dataset;

/* Copy samples idx[0..B) (indices into this dataset) into x[B, c*h*w] normalized, and their
 * labels into y[B] (y may be NULL: labels not copied). Never allocates. */
void nnp_dataset_gather(const nnp_dataset *d, const uint32_t *idx, int B, float *x,
                        unsigned char *y);
/* Contiguous samples [start, start+B); y may be NULL. */
void nnp_dataset_slice(const nnp_dataset *d, size_t start, int B, float *x, unsigned char *y);
/* Mean and std of the scaled values (v/255 or v) over every value held (double sums). */
void nnp_dataset_moments(const nnp_dataset *d, double *mean, double *std);
/* The mean and std of uint8 values v/255 from their histogram (total = the sum of its
 * counts), exactly as nnp_dataset_moments computes them for uint8 data. */
void nnp_moments_from_histogram(const uint64_t hist[256], double total, double *mean,
                                double *std);
void nnp_dataset_free(nnp_dataset *d);

/* Read an IDX pair (gzip'd .gz or raw): images (magic 0x803, N x H x W uint8) and labels
 * (magic 0x801, N uint8). Keeps file samples [lo, hi) of the first `limit` (0 = all; hi is
 * clamped to it). Errors name the file: missing, truncated, wrong magic, image/label count
 * mismatch, label >= 256 impossible. mean/std are left 0/1 for the caller to set. */
nnp_status nnp_idx_load(const char *images_path, const char *labels_path, size_t limit,
                        size_t lo, size_t hi, nnp_dataset *out);

/* Locate the Fashion-MNIST/MNIST file names in a folder: DIR/train-images-idx3-ubyte[.gz]
 * etc. split is "train" or "t10k". Fills paths (PATH_MAX-sized buffers). */
nnp_status nnp_idx_paths(const char *dir, const char *split, char *images, char *labels,
                         size_t cap);

/* ---- global order and sharding (pure functions, tested with simulated ranks) --------- */
/* Contiguous share of rank r when `count` items are split over p ranks:
 * [count*r/p, count*(r+1)/p). Shares differ by at most one item. */
void nnp_split(size_t count, int p, int r, size_t *lo, size_t *hi);
/* Rank r's share of `count` items cut into units of `unit` items (the last may be shorter),
 * whole units split over p ranks as nnp_split splits them: [lo, hi) in items. The unit
 * boundaries do not depend on p (--deterministic's micro-shards; unit 0: nnp_split). */
void nnp_split_units(size_t count, size_t unit, int p, int r, size_t *lo, size_t *hi);
/* Shares of a global batch of G items in proportion to each rank's speed (items per
 * second, > 0): every share is in [1, cap], they sum to G, and the largest finishing time
 * share[r] / speed[r] is as small as whole items allow. Requires p <= G <= p * cap.
 * Deterministic: equal inputs give equal shares on every rank. */
void nnp_split_weighted(size_t G, int p, const double *speed, size_t cap, size_t *share);
/* Rank r's contiguous slice of a batch of `count` <= G items under shares summing to G:
 * [floor(count * W_r / G), floor(count * W_{r+1} / G)), W_r = share[0] + ... + share[r-1]. */
void nnp_split_shares(size_t count, size_t G, const size_t *share, int r, size_t *lo,
                      size_t *hi);
/* The rows a reader keeps of a file of N samples: [first, first + n) with
 * first = min(lo, end), end = min(N, limit (0 = none), hi). */
void nnp_keep_range(size_t N, size_t limit, size_t lo, size_t hi, size_t *first, size_t *n);
/* Number of global batches in an epoch of N samples with global batch G (the last one
 * may be partial; it is kept and its gradient weighted by its true size). */
size_t nnp_batches_per_epoch(size_t N, size_t G);
/* The permutation of epoch `epoch`: perm[N]. */
void nnp_epoch_permutation(uint64_t seed, int epoch, uint32_t *perm, size_t N);
/* --shuffle: the order of an epoch's samples. block == 0: the uniform permutation above.
 * block > 0 (--shuffle block:BLOCK:WINDOW): the blocks of `block` consecutive samples (the
 * last may be shorter) in a random order, then the samples of every `window` consecutive
 * blocks of that order shuffled among themselves. A global batch then draws on about
 * `window` blocks, so a streaming reader of storage chunked by `block` rows reads a few
 * whole chunks instead of one chunk per sample (docs/data.md). Both use the epoch's stream,
 * so the order is a function of (seed, epoch, N, block, window) only. */
typedef struct {
    size_t block, window;
} nnp_shuffle;
void nnp_epoch_order(uint64_t seed, int epoch, const nnp_shuffle *sh, uint32_t *perm, size_t N);
/* The samples rank r of p takes at global step `step` (counted from 0) of epochs of N
 * samples in global batches of G: the slice nnp_split_units(count, unit, p, r) of global
 * batch step % (batches per epoch) of the epoch's order, into idx; returns their number.
 * perm[N] holds the order of epoch *perm_epoch (-1: none yet), recomputed when the step's
 * epoch differs. The trainer's even and --deterministic splits; not --balance's. */
int nnp_step_samples(uint64_t seed, const nnp_shuffle *sh, size_t N, size_t G, size_t unit,
                     int p, int r, int64_t step, uint32_t *perm, int *perm_epoch,
                     uint32_t *idx);
/* The same under --balance's shares of a full global batch (share[p], summing to G):
 * rank r's slice nnp_split_shares(count, G, share, r). */
int nnp_step_samples_shares(uint64_t seed, const nnp_shuffle *sh, size_t N, size_t G,
                            const size_t *share, int r, int64_t step, uint32_t *perm,
                            int *perm_epoch, uint32_t *idx);

/* ---- validation split (--val-split) ----------------------------------------------------- */
/* The n_val samples held out of a training set of N as a validation set: is_val[i] = 1 for
 * the first n_val entries of the permutation of N with stream (seed, NNP_STREAM_HOLDOUT),
 * 0 for the others. A function of (seed, N, n_val) only, never of the rank count; perm[N]
 * is scratch. Requires n_val <= N. */
void nnp_holdout_mask(uint64_t seed, size_t N, size_t n_val, uint32_t *perm,
                      unsigned char *is_val);
/* Take the held-out samples (is_val[i] != 0, i < d->n) out of d, which keeps the others in
 * their order (d->n shrinks; its buffers are not reallocated), and copy those of rank
 * positions [lo, hi) among the held-out ones, in index order, into val (allocated here;
 * this rank's shard of the validation set, with d's shape, classes and normalization).
 * Errors: NNP_ERR_NOMEM. */
nnp_status nnp_dataset_holdout(nnp_dataset *d, const unsigned char *is_val, size_t lo,
                               size_t hi, nnp_dataset *val);

#endif
