/* h5data_impl.h - the checked opening of an HDF5 dataset split, shared by the in-memory
 * reader (h5data.c) and the streaming reader (h5stream.c). Not part of the public interface;
 * callers hold nnp__h5_quiet around these calls. */
#ifndef NNPREC_H5DATA_IMPL_H
#define NNPREC_H5DATA_IMPL_H
#include <stddef.h>
#include <stdint.h>
#include <hdf5.h>
#include "nnprec/status.h"

typedef struct {
    hid_t f, di, dl, si, sl, ti, tl, ms;
} nnp__h5_ids;

typedef struct {
    int nd;            /* rank of /SPLIT/images: 3 (N,H,W) or 4 (N,C,H,W) */
    hsize_t dims[4];   /* N, C, H, W (C = 1 for rank 3) */
    int is_u8;         /* uint8 pixels, else float32 */
    size_t N, D;       /* samples, values per sample */
    int n_classes;     /* max label + 1 over the whole file */
    unsigned char *labels; /* [N], every label (checked to be in 0..255); the caller frees
                              it, also after an error */
} nnp__h5_split;

/* Open path and check /SPLIT/images and /SPLIT/labels (types, ranks, shapes, counts, label
 * range) without reading images. h's ids start at -1; nnp__h5_close closes what is open. */
nnp_status nnp__h5_open_split(const char *path, const char *split, nnp__h5_ids *h,
                              nnp__h5_split *sp);
void nnp__h5_close(nnp__h5_ids *h);

#endif
