/* ckpt.h - HDF5 checkpoints: atomic write, validating read, rotation (docs/checkpoint.md).
 *
 * Everything here is rank-local, pure file I/O: the caller decides which rank writes and
 * agrees on errors across ranks. A checkpoint holds
 *   /<layer>/weight, /<layer>/bias   float32 parameters in PyTorch orientation, one group
 *                                    per trainable layer named like the tensor prefix
 *                                    ("conv1", "fc2")
 *   /optimizer                       kind, step count t, hyper-parameters; buf1 (momentum
 *                                    or Adam m) and buf2 (Adam v) as flat float32 [n_params]
 *                                    with the offsets of the parameter buffer
 *   /precond                         mode, formula, updated_at; sigma, gain, prec, scale
 *                                    float64 [n_tensors]
 * and root attributes for the format, the model and every field of nnp_ckpt_meta.
 *
 * Writing is atomic: PATH.tmp is written, fsync'ed, closed and renamed over PATH, and the
 * directory is fsync'ed, so PATH is always either the previous complete file or the new
 * complete file. The bulk data goes to disk with one pwrite() per dataset straight from the
 * caller's buffers (no copy). Reading validates everything (format, version, model spec, architecture,
 * dataset presence, shapes, dtypes, optimizer and preconditioner state) before it modifies
 * anything, and each mismatch has its own message naming the path and the field.
 * Every dataset carries the XXH64 of its data (attribute xxh64, hash.h), and every read
 * checks it: a flipped bit anywhere in the data is an error naming the dataset. Files
 * written before checksums (no root attribute "checksum") still load, unverified.
 */
#ifndef NNPREC_CKPT_H
#define NNPREC_CKPT_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "nnprec/net.h"
#include "nnprec/optim.h"
#include "nnprec/precond.h"
#include "nnprec/status.h"

#define NNP_CKPT_FORMAT "nnprec-checkpoint"
#define NNP_CKPT_VERSION 1

typedef struct {
    int64_t step;          /* global steps completed */
    int epoch;             /* epoch of the next step (0-based) */
    int64_t pos_in_epoch;  /* global batches of `epoch` already done */
    uint64_t seed;         /* run seed */
    int64_t rng_counter;   /* counter-based RNG state of the run */
    double norm_mean, norm_std; /* input normalization used in training */
    int global_batch;      /* samples per global step */
    int world_size;        /* ranks at save time */
    double wall_s;         /* training wall-clock time so far */
    int64_t train_samples; /* training samples of the run (it fixes the sample order); read:
                            * 0 when the file predates this attribute */
    int64_t val_split;     /* --val-split: samples held out of the training set (0: none;
                            * the attribute is absent then) */
    double lr_factor;      /* --on-nonfinite rollback: the factor on the scheduled learning
                            * rate, halved by every rollback (write: 0 or 1 for none, and the
                            * attribute is absent; read: 1 then) */
    int64_t rollbacks;     /* rollbacks done so far (absent when 0) */
    int micro_shard;       /* --deterministic: samples per micro-shard, which the trajectory
                            * depends on (0: a run without it; the attribute is absent then) */
    int64_t shuffle_block, shuffle_window; /* --shuffle block:ROWS:WINDOW, which the sample
                            * order depends on (0: the full permutation; attributes absent) */
    int noise_scale;       /* --noise-scale: the run logs it, and these are its moving */
    double noise_ema_g2, noise_ema_tr; /* averages (noise.h) after noise_steps steps; the */
    int64_t noise_steps;   /* attributes are absent without it */
    char model[256];       /* read: the model spec; write: ignored (net->spec is written) */
    char options[8192];    /* "name=value\n" per training option */
    /* filled by read, ignored by write: */
    int checksums;         /* 1: every dataset carries the xxh64 of its data, which every read
                            * verifies; 0: a file written before checksums (not verified) */
    char created[40];      /* ISO 8601 UTC time of writing */
    char version[32];      /* nnprec version that wrote the file */
} nnp_ckpt_meta;

/* Write net's parameters, the optimizer and preconditioner state (each may be NULL: the
 * group is then absent) and meta to `path`, atomically (see above). On failure PATH.tmp is
 * removed, any previous PATH is left as it was, and the message names the path and the
 * reason (the errno string where there is one). Errors: NNP_ERR_IO, NNP_ERR_ARG. */
nnp_status nnp_ckpt_write(const char *path, const nnp_net *net, const nnp_optim *opt,
                          const nnp_precond *pc, const nnp_ckpt_meta *meta);

/* Restore `path` into net (built from the same spec), opt (initialized with the same
 * optimizer kind; NULL = skip) and pc (initialized with the same mode and formula; NULL =
 * skip), and fill meta (may be NULL). Everything is validated before anything is modified.
 * Errors: NNP_ERR_IO (missing/unreadable), NNP_ERR_FORMAT (not HDF5, wrong format name or
 * version, model spec or architecture mismatch, missing dataset, wrong shape or dtype,
 * optimizer or preconditioner mismatch), each with its own message. */
nnp_status nnp_ckpt_read(const char *path, nnp_net *net, nnp_optim *opt, nnp_precond *pc,
                         nnp_ckpt_meta *meta);

/* Validate the format name and version and fill meta only (to build the net before
 * nnp_ckpt_read: meta->model and the options). */
nnp_status nnp_ckpt_read_meta(const char *path, nnp_ckpt_meta *meta);

/* Value of option `name` in meta->options ("name=value" lines) into buf; returns 1 if found,
 * 0 if not (buf is then ""). */
int nnp_ckpt_option(const nnp_ckpt_meta *meta, const char *name, char *buf, size_t cap);

/* Human-readable summary of a checkpoint (for `nnprec info`). */
nnp_status nnp_ckpt_info(const char *path, FILE *out);

/* Read every dataset of the file and check it against its checksum (`nnprec info
 * --verify`); *n_sets and *bytes (may be NULL) get what was checked. Errors: as
 * nnp_ckpt_read's for an unreadable file; NNP_ERR_FORMAT naming the first dataset whose
 * data does not match its checksum or lacks one, or a file written before checksums. */
nnp_status nnp_ckpt_verify(const char *path, int *n_sets, size_t *bytes);

/* The canonical architecture string of a net, in seq-spec syntax without the "seq:" prefix
 * ("1x28x28/conv:6:3:1:2/relu/maxpool:2:2/..."); stored as the `architecture` attribute. */
void nnp_ckpt_architecture(const nnp_net *net, char *buf, size_t cap);

/* ---- rotation and the latest pointer -------------------------------------------------- */
/* DIR/ckpt-%08lld.h5 into buf. Errors: NNP_ERR_ARG if it does not fit. */
nnp_status nnp_ckpt_path(const char *dir, int64_t step, char *buf, size_t cap);
/* After `path` (a file in dir) has been written: point DIR/latest at it (a one-line text file
 * holding the file name, written to DIR/latest.tmp, fsync'ed and renamed; the directory is
 * fsync'ed), then delete the ckpt-*.h5 files of dir beyond the `keep` newest by step (keep
 * <= 0 keeps all; `path` itself is never deleted). Errors: NNP_ERR_IO. */
nnp_status nnp_ckpt_publish(const char *dir, const char *path, int keep);
/* The checkpoint to resume from in dir: the file DIR/latest names, or if there is no
 * DIR/latest the ckpt-*.h5 with the highest step. *found = 0 (and NNP_OK) when there is none.
 * Errors: NNP_ERR_IO if DIR/latest names a missing file or cannot be read, NNP_ERR_FORMAT if
 * it names anything but a file name in dir ("../x", "/abs", "sub/x"), NNP_ERR_ARG if the
 * path does not fit. */
nnp_status nnp_ckpt_latest(const char *dir, char *buf, size_t cap, int *found);

/* The ckpt-*.h5 in DIR with the highest step below `step` (--on-nonfinite rollback going
 * further back). *found = 0 (and NNP_OK) when there is none. */
nnp_status nnp_ckpt_before(const char *dir, int64_t step, char *buf, size_t cap, int *found);

#endif
