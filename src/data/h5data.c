/* h5data.c - sharded reader for HDF5 datasets (see h5data.h).
 *
 * Each rank selects only its rows [lo, hi) of /SPLIT/images with a hyperslab, so a rank
 * reads 1/p of a sharded test set from disk. The images keep their stored type (uint8 or
 * float32, converted from any byte order by HDF5); labels of any integer type are read
 * whole as int64 and range-checked, which fixes n_classes file-wide and catches a bad label
 * anywhere in the file. Float images are checked for non-finite values as they are read
 * (an error naming the sample), so training never sees one.
 */
#include "nnprec/h5data.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>

#include "nnprec/alloc.h"
#include "nnprec/rundir.h"
#include "../io/h5util.h"
#include "h5data_impl.h"

/* Open /split/name as a dataset; error names file and dataset. */
static nnp_status open_dset(const char *path, hid_t f, const char *split, const char *name,
                            hid_t *out)
{
    char full[128];
    snprintf(full, sizeof full, "/%s/%s", split, name);
    if (H5Lexists(f, split, H5P_DEFAULT) <= 0)
        return nnp_error(NNP_ERR_FORMAT, "%s: dataset %s missing (no group /%s)", path, full,
                         split);
    if (H5Lexists(f, full, H5P_DEFAULT) <= 0)
        return nnp_error(NNP_ERR_FORMAT, "%s: dataset %s missing", path, full);
    hid_t o = H5Oopen(f, full, H5P_DEFAULT);
    if (o < 0 || H5Iget_type(o) != H5I_DATASET) {
        if (o >= 0)
            H5Oclose(o);
        return nnp_error(NNP_ERR_FORMAT, "%s: %s is not a dataset", path, full);
    }
    *out = o;
    return NNP_OK;
}

void nnp__h5_close(nnp__h5_ids *h)
{
    if (h->ms >= 0) H5Sclose(h->ms);
    if (h->ti >= 0) H5Tclose(h->ti);
    if (h->tl >= 0) H5Tclose(h->tl);
    if (h->si >= 0) H5Sclose(h->si);
    if (h->sl >= 0) H5Sclose(h->sl);
    if (h->di >= 0) H5Dclose(h->di);
    if (h->dl >= 0) H5Dclose(h->dl);
    if (h->f >= 0) H5Fclose(h->f);
    h->f = h->di = h->dl = h->si = h->sl = h->ti = h->tl = h->ms = -1;
}

nnp_status nnp__h5_open_split(const char *path, const char *split, nnp__h5_ids *h,
                              nnp__h5_split *sp)
{
    memset(sp, 0, sizeof *sp);
    nnp_status st;
    int fd = nnp_open_regular(path, "data file", &st); /* a FIFO: an error, not a wait */
    if (fd < 0)
        return st;
    close(fd);
    if (H5Fis_hdf5(path) <= 0)
        return nnp_error(NNP_ERR_FORMAT, "%s: not a valid HDF5 file", path);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl >= 0)
        H5Pset_file_locking(fapl, 0, 1); /* read-only input; locking fails on some PFS */
    h->f = H5Fopen(path, H5F_ACC_RDONLY, fapl >= 0 ? fapl : H5P_DEFAULT);
    if (fapl >= 0)
        H5Pclose(fapl);
    if (h->f < 0)
        return nnp_error(NNP_ERR_FORMAT, "%s: not a valid HDF5 file (truncated or corrupt)",
                         path);
    NNP_CALL(open_dset(path, h->f, split, "images", &h->di));
    NNP_CALL(open_dset(path, h->f, split, "labels", &h->dl));

    /* images: uint8 or float32, rank 3 or 4 */
    h->ti = H5Dget_type(h->di);
    h->si = H5Dget_space(h->di);
    if (h->ti < 0 || h->si < 0)
        return nnp_error(NNP_ERR_FORMAT, "%s: cannot read the type of /%s/images", path, split);
    H5T_class_t cls = H5Tget_class(h->ti);
    size_t esz = H5Tget_size(h->ti);
    int is_u8 = cls == H5T_INTEGER && esz == 1 && H5Tget_sign(h->ti) == H5T_SGN_NONE;
    int is_f32 = cls == H5T_FLOAT && esz == 4;
    if (!is_u8 && !is_f32) {
        char ts[32];
        nnp__h5_dtype_str(h->ti, ts, sizeof ts);
        return nnp_error(NNP_ERR_FORMAT, "%s: /%s/images has dtype %s, expected uint8 or float32",
                         path, split, ts);
    }
    int nd = H5Sget_simple_extent_ndims(h->si);
    if (nd != 3 && nd != 4)
        return nnp_error(NNP_ERR_FORMAT,
                         "%s: /%s/images has rank %d, expected 3 (N,H,W) or 4 (N,C,H,W)", path,
                         split, nd);
    hsize_t dims[4] = {0, 1, 1, 1};
    if (nd == 3) {
        hsize_t d3[3];
        H5Sget_simple_extent_dims(h->si, d3, NULL);
        dims[0] = d3[0];
        dims[2] = d3[1];
        dims[3] = d3[2];
    } else {
        H5Sget_simple_extent_dims(h->si, dims, NULL);
    }
    for (int i = 1; i < 4; i++)
        if (dims[i] == 0 || dims[i] > (1u << 24))
            return nnp_error(NNP_ERR_FORMAT, "%s: /%s/images has a bad sample shape", path,
                             split);
    if (dims[1] * dims[2] * dims[3] > (1u << 26))
        return nnp_error(NNP_ERR_FORMAT, "%s: /%s/images samples are too large", path, split);
    size_t N = (size_t)dims[0];

    /* labels: integer, rank 1, N entries */
    h->tl = H5Dget_type(h->dl);
    h->sl = H5Dget_space(h->dl);
    if (h->tl < 0 || h->sl < 0)
        return nnp_error(NNP_ERR_FORMAT, "%s: cannot read the type of /%s/labels", path, split);
    if (H5Tget_class(h->tl) != H5T_INTEGER || H5Tget_size(h->tl) > 8) {
        char ts[32];
        nnp__h5_dtype_str(h->tl, ts, sizeof ts);
        return nnp_error(NNP_ERR_FORMAT, "%s: /%s/labels has dtype %s, expected an integer type "
                                         "(of at most 64 bits)",
                         path, split, ts);
    }
    int ndl = H5Sget_simple_extent_ndims(h->sl);
    if (ndl != 1)
        return nnp_error(NNP_ERR_FORMAT, "%s: /%s/labels has rank %d, expected 1 (N)", path,
                         split, ndl);
    hsize_t NL;
    H5Sget_simple_extent_dims(h->sl, &NL, NULL);
    if ((size_t)NL != N)
        return nnp_error(NNP_ERR_FORMAT, "%s: /%s/labels has %llu labels, expected %zu to match "
                         "/%s/images",
                         path, split, (unsigned long long)NL, N, split);

    /* read in blocks of 1 Mi labels as int64, kept as bytes: N bytes in all, whatever the
     * stored type (a streamed set of 10^9 samples would need 8 GB as int64) */
    unsigned char *labels = nnp_malloc(N ? N : 1);
    enum { LB = 1 << 20 };
    int64_t *blk = N ? nnp_malloc((N < LB ? N : LB) * sizeof *blk) : NULL;
    if (!labels || (N && !blk)) {
        free(labels);
        free(blk);
        return NNP_ERR_NOMEM;
    }
    sp->labels = labels;
    int64_t maxl = -1;
    for (size_t b0 = 0; b0 < N; b0 += LB) {
        const hsize_t start = (hsize_t)b0, cnt = (hsize_t)(N - b0 < LB ? N - b0 : LB);
        hid_t fs = H5Dget_space(h->dl), ms = H5Screate_simple(1, &cnt, NULL);
        const int ok = fs >= 0 && ms >= 0 &&
                       H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, NULL, &cnt, NULL) >= 0 &&
                       H5Dread(h->dl, H5T_NATIVE_INT64, ms, fs, H5P_DEFAULT, blk) >= 0;
        if (ms >= 0)
            H5Sclose(ms);
        if (fs >= 0)
            H5Sclose(fs);
        if (!ok) {
            free(blk);
            return nnp_error(NNP_ERR_FORMAT, "%s: cannot read /%s/labels", path, split);
        }
        for (size_t k = 0; k < (size_t)cnt; k++) {
            const int64_t v = blk[k];
            if (v < 0 || v > 255) {
                free(blk);
                return nnp_error(NNP_ERR_FORMAT,
                                 "%s: /%s/labels[%zu] = %lld, expected a class in 0..255",
                                 path, split, b0 + k, (long long)v); /* the caller frees sp->labels */
            }
            labels[b0 + k] = (unsigned char)v;
            if (v > maxl)
                maxl = v;
        }
    }
    free(blk);
    sp->nd = nd;
    memcpy(sp->dims, dims, sizeof dims);
    sp->is_u8 = is_u8;
    sp->N = N;
    sp->D = (size_t)(dims[1] * dims[2] * dims[3]);
    sp->n_classes = (int)maxl + 1;
    return NNP_OK;
}

static nnp_status load(const char *path, const char *split, size_t limit, size_t lo, size_t hi,
                       nnp_dataset *out, nnp__h5_ids *h)
{
    nnp__h5_split sp;
    nnp_status s = nnp__h5_open_split(path, split, h, &sp);
    if (s != NNP_OK) {
        free(sp.labels);
        return s;
    }
    unsigned char *labels = sp.labels;
    const size_t N = sp.N;
    const int nd = sp.nd, is_u8 = sp.is_u8;
    const hsize_t *dims = sp.dims;
    const int64_t maxl = sp.n_classes - 1;

    size_t first, n;
    nnp_keep_range(N, limit, lo, hi, &first, &n);
    size_t D = (size_t)(dims[1] * dims[2] * dims[3]);

    out->c = (int)dims[1];
    out->h = (int)dims[2];
    out->w = (int)dims[3];
    out->n_total = N;
    out->first = first;
    out->n_classes = (int)maxl + 1;
    out->mean = 0.0;
    out->std = 1.0;
    out->n = 0;
    if (n == 0) {
        free(labels);
        return NNP_OK;
    }
    size_t esize = is_u8 ? 1 : sizeof(float);
    if (n > SIZE_MAX / D / esize) {
        free(labels);
        return nnp_error(NNP_ERR_FORMAT, "%s: %zu samples of %zu values do not fit in memory",
                         path, n, D);
    }
    out->y = nnp_malloc(n);
    void *dst = nnp_malloc(n * D * esize);
    if (is_u8)
        out->pix = dst;
    else
        out->xf = dst;
    if (!out->y || !dst) {
        free(labels);
        return NNP_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++)
        out->y[i] = labels[first + i];
    free(labels);

    /* rows [first, end) only */
    hsize_t start[4] = {(hsize_t)first, 0, 0, 0};
    hsize_t count[4] = {(hsize_t)n, dims[1], dims[2], dims[3]};
    if (nd == 3) {
        count[1] = dims[2];
        count[2] = dims[3];
    }
    /* the memory space has the selection's shape, so HDF5 copies whole rows (with a 1-D one
     * it iterated element by element through a chunked file: minutes for 4 GB) */
    if (H5Sselect_hyperslab(h->si, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
        (h->ms = H5Screate_simple(nd, count, NULL)) < 0)
        return nnp_error(NNP_ERR_FORMAT, "%s: cannot select rows %zu..%zu of /%s/images", path,
                         first, first + n, split);
    errno = 0;
    if (H5Dread(h->di, is_u8 ? H5T_NATIVE_UCHAR : H5T_NATIVE_FLOAT, h->ms, h->si, H5P_DEFAULT,
                dst) < 0)
        return nnp_error(NNP_ERR_IO, "%s: cannot read rows %zu..%zu of /%s/images%s%s", path,
                         first, first + n, split, errno ? ": " : " (truncated or corrupt file)",
                         errno ? strerror(errno) : "");
    if (!is_u8) { /* float pixels: checked once here, so no nan or inf ever reaches a step */
        const float *x = dst;
        for (size_t i = 0; i < n * D; i++)
            if (!isfinite(x[i])) {
                const size_t k = i % D;
                return nnp_error(NNP_ERR_FORMAT,
                                 "%s: /%s/images sample %zu holds a non-finite value (%s) at "
                                 "channel %zu, row %zu, column %zu",
                                 path, split, first + i / D, isnan(x[i]) ? "nan" : "inf",
                                 k / (size_t)(dims[2] * dims[3]), k / (size_t)dims[3] % (size_t)dims[2],
                                 k % (size_t)dims[3]);
            }
    }
    out->n = n;
    return NNP_OK;
}

nnp_status nnp_h5_load(const char *path, const char *split, size_t limit, size_t lo,
                       size_t hi, nnp_dataset *out)
{
    memset(out, 0, sizeof *out);
    if (!path || !split)
        return nnp_error(NNP_ERR_ARG, "nnp_h5_load: NULL argument");
    nnp__h5_quiet q;
    nnp__h5_quiet_on(&q);
    nnp__h5_ids h = {-1, -1, -1, -1, -1, -1, -1, -1};
    nnp_status s = load(path, split, limit, lo, hi, out, &h);
    nnp__h5_close(&h);
    nnp__h5_quiet_off(&q);
    if (s != NNP_OK)
        nnp_dataset_free(out);
    return s;
}
