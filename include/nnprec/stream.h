/* stream.h - a training set read from HDF5 as training goes (--stream, docs/data.md).
 *
 * A rank that streams holds only the labels (one byte per sample) and a ring of `prefetch`
 * batch buffers, allocated before the first step. A reader thread computes the samples this
 * rank takes at each coming step (nnp_step_samples: the same order as in memory), reads them
 * from /train/images (uncompressed rows with pread(2) at their file offsets, one call per
 * run of consecutive rows; compressed ones through HDF5, one hyperslab selection per batch,
 * which inflates every chunk the batch touches once) and fills the ring up to `prefetch`
 * steps ahead. The
 * training step copies a filled buffer out, normalized exactly as nnp_dataset_gather does, so
 * a streamed run's trajectory is the in-memory run's, bit for bit.
 *
 * Without a thread-safe HDF5 library (or with prefetch 0) the batch is read in the step
 * itself, synchronously.
 */
#ifndef NNPREC_STREAM_H
#define NNPREC_STREAM_H
#include <stddef.h>
#include <stdint.h>
#include "nnprec/data.h"
#include "nnprec/status.h"

typedef struct nnp_stream nnp_stream;

/* Open the training split of an HDF5 file for streaming: check its layout (as nnp_h5_load
 * does, and /train/images stored contiguously or in chunks of whole samples) and read its
 * labels. hdr describes the first `limit` samples (0 = all): n, shape, n_classes, labels in
 * hdr->y; hdr->pix and hdr->xf stay NULL (hdr is freed by nnp_stream_close, not by
 * nnp_dataset_free). chunk_rows gets the images' rows per chunk (0: not chunked). */
nnp_status nnp_stream_open(const char *path, size_t limit, nnp_stream **out, nnp_dataset **hdr,
                           size_t *chunk_rows);

/* The mean and std of the scaled values of the first hdr->n samples, read in one pass
 * (uint8; float32: two) of blocks of rows: the same bits as nnp_dataset_moments on the same
 * samples held in memory. */
nnp_status nnp_stream_moments(nnp_stream *s, double *mean, double *std);
/* uint8 images: the histogram of the pixel values of file rows [lo, hi) (the ranks' shares
 * summed give nnp_moments_from_histogram the same counts as one pass). */
int nnp_stream_is_u8(const nnp_stream *s);
nnp_status nnp_stream_histogram(nnp_stream *s, size_t lo, size_t hi, uint64_t hist[256]);

/* --val-split: hold n_val samples out of the training set, chosen by seed exactly as
 * nnp_holdout_mask and nnp_dataset_holdout choose them, before nnp_stream_start. The header
 * then describes the training samples (n, labels) and the reader maps them to their file
 * rows; this rank's held-out samples, [lo, hi) of them in index order, are read into val
 * (in memory, as nnp_dataset_holdout makes it), and val_hist (may be NULL) gets the
 * histogram of their pixel values (uint8). nnp_stream_histogram still counts file rows:
 * all of them minus every rank's val_hist is the training samples'. */
nnp_status nnp_stream_holdout(nnp_stream *s, uint64_t seed, size_t n_val, size_t lo, size_t hi,
                              nnp_dataset *val, uint64_t val_hist[256]);

/* Start reading ahead. The order: steps of global batches of G samples over hdr->n samples,
 * epochs ordered by (seed, sh), rank r of p taking nnp_split_units(count, unit, p, r);
 * steps first_step .. total-1; at most max_batch samples per step. Allocates the ring. */
typedef struct {
    uint64_t seed;
    nnp_shuffle shuffle;
    size_t G, unit;
    int p, r, max_batch, prefetch;
    int64_t first_step, total;
    /* --balance: the ranks' shares of a full global batch change every balance_every steps
     * (0: never; the split above); share[p] holds the first ones */
    int64_t balance_every;
    const size_t *share;
} nnp_stream_plan;
nnp_status nnp_stream_start(nnp_stream *s, const nnp_stream_plan *plan);

/* --balance: the shares (share[p]) of the steps from `from` to the next multiple of
 * balance_every. Until they are given, the reader stops at that multiple: it never reads a
 * step ahead of the shares it will be taken with. Call it after every re-split, and after a
 * step out of sequence (a rollback) with that step. */
void nnp_stream_set_shares(nnp_stream *s, const size_t *share, int64_t from);

/* The batch of step `step`: the B samples idx (which must be those the plan gives) into
 * x[B, D] normalized with hdr->mean/std, labels into y. Blocks until the reader has them;
 * *wait_s gets the time spent waiting. A step out of sequence (a rollback) restarts the
 * reader there. A read error returns NNP_ERR_IO with a message naming the file and the
 * sample. Allocates nothing. */
nnp_status nnp_stream_batch(nnp_stream *s, int64_t step, const uint32_t *idx, int B, float *x,
                            unsigned char *y, double *wait_s);

/* Seconds the reader thread has spent reading and copying so far. */
double nnp_stream_busy_s(nnp_stream *s);
/* Whether batches are read ahead by a thread (0: in the step); before nnp_stream_start,
 * whether they can be (a thread-safe HDF5 library). */
int nnp_stream_threaded(const nnp_stream *s);

/* Whether rows are read with pread(2) at their file offsets (uncompressed, native byte
 * order) rather than through HDF5. */
int nnp_stream_direct(const nnp_stream *s);

void nnp_stream_close(nnp_stream *s);

#endif
