/* h5data.h - datasets from an HDF5 file (docs/checkpoint.md, "HDF5 input datasets").
 *
 * Layout: /SPLIT/images, uint8 or float32, shape (N, C, H, W) or (N, H, W) (C = 1), and
 * /SPLIT/labels, any integer type, shape (N), values 0..255; SPLIT is "train" or "test".
 * uint8 pixels are scaled by 1/255 at gather time, float32 values are used as stored
 * (then normalized with the dataset's mean and std either way).
 */
#ifndef NNPREC_H5DATA_H
#define NNPREC_H5DATA_H
#include <stddef.h>
#include "nnprec/data.h"
#include "nnprec/status.h"

/* Read the samples [lo, hi) of the first `limit` (0 = all; hi is clamped to it) of
 * /SPLIT/images and /SPLIT/labels, with a hyperslab selection so that only those rows are
 * read from the file. The labels are read whole (they are small) to set n_classes = max
 * label + 1 over the whole file, identically on every rank. n_total = N; first = lo (clamped);
 * mean/std are left 0/1 for the caller to set. Errors name the file and the dataset:
 * NNP_ERR_IO (file missing or unreadable), NNP_ERR_FORMAT (not HDF5, dataset missing, wrong
 * rank or dtype, image/label count mismatch, label out of 0..255). */
nnp_status nnp_h5_load(const char *path, const char *split, size_t limit, size_t lo,
                       size_t hi, nnp_dataset *out);

#endif
