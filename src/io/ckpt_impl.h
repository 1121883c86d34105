/* ckpt_impl.h - private to the checkpoint module (src/io/ckpt_*.c); see ckpt.h.
 *
 * The helpers the atomic write (ckpt_write.c), the validating read (ckpt_read.c) and the
 * file rotation (ckpt_files.c) share: HDF5 error handling, closing HDF5 ids of any kind,
 * file access properties, the tensor-name split and the file-system syncing.
 */
#ifndef NNPREC_CKPT_IMPL_H
#define NNPREC_CKPT_IMPL_H
#include <stddef.h>

#include <hdf5.h>
#include "h5util.h"

#include "nnprec/ckpt.h"

#define NNP__CKPT_PATH_CAP 4096

/* Every dataset's checksum: the attribute (uint64) holding the XXH64, seed 0, of its data
 * as little-endian bytes (hash.h); the root attribute "checksum" names it. Files without
 * that root attribute predate checksums. */
#define NNP__CKPT_HASH_ATTR "xxh64"

/* ---- HDF5 error handling (ckpt_write.c; quiet on/off in h5util.h) ---------------------- */

/* The reason for the last failure: errno if set, else HDF5's innermost message (buf holds
 * 512 bytes). */
const char *nnp__ckpt_h5_reason(int err, char *buf);

/* Close an HDF5 id of any kind; negative ids are ignored. */
void nnp__ckpt_close_id(hid_t id);

/* File access properties for every checkpoint file (close degree strong, no locking). */
hid_t nnp__ckpt_make_fapl(void);

/* Split "conv1.weight" into group "conv1" and dataset "weight". */
void nnp__ckpt_split_name(const char *name, char *group, char *leaf, size_t cap);

/* PyTorch's state names: SGD and LARS "momentum_buffer", Adam/AdamW/LAMB "exp_avg" and
 * "exp_avg_sq". */
static inline const char *nnp__ckpt_buf1_name(nnp_opt_kind k)
{
    return k == NNP_OPT_SGD || k == NNP_OPT_LARS ? "momentum_buffer" : "exp_avg";
}

/* ---- file system (ckpt_files.c) -------------------------------------------------------- */

/* fsync a file (opened for writing) or a directory; a directory that cannot be synced
 * (EINVAL, ENOTSUP, EROFS) counts as synced. Returns 0 or -1 with errno. */
int nnp__ckpt_fsync_path(const char *path, int directory);

/* The directory part of path into buf ("." without a slash, "/" for the root). */
void nnp__ckpt_dir_of(const char *path, char *buf, size_t cap);

#endif
