/* h5stream.c - the streaming reader of --stream (see stream.h, docs/data.md).
 *
 * The ring: slot k holds step s with s % K == k once the reader has published it
 * (slot.step == s). The reader fills steps next, next+1, ... while next < expect + K, so it
 * never writes a slot the consumer may still be copying; the consumer takes step `expect`,
 * frees its slot and moves on. A step out of sequence (a rollback) bumps `gen`: the reader
 * drops whatever it was reading and starts over there. Everything is allocated in
 * nnp_stream_start; the reader's sort is an in-place heapsort (glibc's qsort may allocate).
 *
 * HDF5 does the reading: the batch's rows, sorted, become one hyperslab selection, read
 * with one H5Dread into a staging buffer in file order, then copied to their positions.
 * HDF5 reads each chunk the selection touches once per batch (without a chunk cache: see
 * open_stream). A file that shrinks or disappears
 * under a run would read as zeros past its end (HDF5's POSIX driver fills short reads), so
 * the reader checks the file with stat(2) around every read and stops with an error naming
 * the sample instead.
 */
#include "nnprec/stream.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <hdf5.h>

#include "nnprec/alloc.h"
#include "nnprec/rundir.h"
#include "../io/h5util.h"
#include "h5data_impl.h"

typedef struct {
    int64_t step;        /* the step this slot holds, -1: none */
    int B;
    nnp_status st;
    char msg[4608];
    uint32_t *idx;       /* [max_batch] the samples, as the plan gives them */
    unsigned char *raw;  /* [max_batch * row_bytes] as stored */
    unsigned char *y;    /* [max_batch] labels */
} slot_t;

struct nnp_stream {
    char path[4096];
    nnp__h5_ids h;
    nnp__h5_split sp;
    nnp_dataset hdr;
    size_t chunk_rows, row_bytes, esize;
    struct stat st0;     /* the file as opened: a change in size or inode is an error */
    int fd;              /* direct reads: the file, and where each chunk's rows start */
    uint64_t *chunk_at;  /* [n_chunks] file offsets (contiguous: one, for "chunk" 0) */
    size_t n_chunks, direct_rows; /* rows per direct "chunk" (contiguous: every row) */
    hid_t dxpl, ms;
    nnp_stream_plan plan;
    /* the reader's own order */
    uint32_t *perm;
    size_t n_rows;       /* file rows in use (the first `limit`): training + held out */
    uint32_t *rows;      /* --val-split: the file row of each training sample (NULL: i) */
    unsigned char *row_y;/* the label of each file row */
    int perm_epoch;
    uint64_t *keys;      /* [max_batch] (row << 32 | position), sorted */
    unsigned char *stage;/* [max_batch * row_bytes] rows in file order */
    slot_t *slots;
    int K, threaded, started, threadsafe;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int64_t expect, next;
    size_t *shares, *my_shares; /* --balance: the current shares, the reader's copy */
    int64_t shares_until;       /* the first step the current shares do not cover */
    uint64_t gen;
    int quit;
    double busy;
};

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- opening ------------------------------------------------------------------------- */

/* Direct reads: uncompressed uint8 (or little-endian float32) rows, contiguous or in chunks
 * of whole samples, are read with pread(2) at their file offsets (from H5Dget_offset or
 * H5Dget_chunk_info, taken once here), one call per run of consecutive rows in a chunk,
 * bypassing HDF5's per-read selection work (measured: several ms for a batch of 64 random
 * rows). Anything else (filters, another byte order, chunks not yet written) reads through
 * HDF5. */
static nnp_status direct_setup(nnp_stream *s)
{
    hid_t dcpl = H5Dget_create_plist(s->h.di);
    if (dcpl < 0)
        return NNP_OK;
    const int filters = H5Pget_nfilters(dcpl);
    const H5D_layout_t layout = H5Pget_layout(dcpl);
    H5Pclose(dcpl);
    const int native = s->sp.is_u8 || H5Tget_order(s->h.ti) == H5T_ORDER_LE;
    if (filters != 0 || !native || H5Tget_size(s->h.ti) != s->esize)
        return NNP_OK;
    if (layout == H5D_CONTIGUOUS) {
        haddr_t a = H5Dget_offset(s->h.di);
        if (a == HADDR_UNDEF)
            return NNP_OK;
        s->chunk_at = nnp_malloc(sizeof *s->chunk_at);
        if (!s->chunk_at)
            return NNP_ERR_NOMEM;
        s->chunk_at[0] = (uint64_t)a;
        s->n_chunks = 1;
        s->direct_rows = s->sp.N ? s->sp.N : 1;
        return NNP_OK;
    }
    if (layout != H5D_CHUNKED || s->chunk_rows == 0)
        return NNP_OK;
    const size_t nc = (s->sp.N + s->chunk_rows - 1) / s->chunk_rows;
    hsize_t have = 0;
    hid_t fs = H5Dget_space(s->h.di);
    if (fs < 0)
        return NNP_OK;
    if (H5Dget_num_chunks(s->h.di, fs, &have) < 0 || have != nc || nc == 0) {
        H5Sclose(fs);
        return NNP_OK; /* chunks not all written: HDF5 fills them */
    }
    uint64_t *at = nnp_malloc(nc * sizeof *at);
    if (!at) {
        H5Sclose(fs);
        return NNP_ERR_NOMEM;
    }
    for (size_t c = 0; c < nc; c++)
        at[c] = UINT64_MAX;
    int ok = 1;
    for (hsize_t i = 0; i < have && ok; i++) {
        hsize_t off[4] = {0, 0, 0, 0};
        unsigned mask = 0;
        haddr_t addr = HADDR_UNDEF;
        hsize_t size = 0;
        ok = H5Dget_chunk_info(s->h.di, fs, i, off, &mask, &addr, &size) >= 0 &&
             addr != HADDR_UNDEF && off[0] % s->chunk_rows == 0 &&
             off[0] / s->chunk_rows < nc && size >= s->chunk_rows * s->row_bytes;
        if (ok)
            at[off[0] / s->chunk_rows] = (uint64_t)addr;
    }
    H5Sclose(fs);
    for (size_t c = 0; c < nc && ok; c++)
        ok = at[c] != UINT64_MAX;
    if (!ok) {
        free(at);
        return NNP_OK;
    }
    s->chunk_at = at;
    s->n_chunks = nc;
    s->direct_rows = s->chunk_rows;
    return NNP_OK;
}

static nnp_status open_stream(nnp_stream *s, size_t limit)
{
    nnp_status st;
    int fd = nnp_open_regular(s->path, "data file", &st);
    if (fd < 0)
        return st;
    if (fstat(fd, &s->st0) != 0) {
        close(fd);
        return nnp_error(NNP_ERR_IO, "cannot stat %s: %s", s->path, strerror(errno));
    }
    s->fd = fd; /* kept for the direct reads */
    hbool_t ts = 0;
    H5is_library_threadsafe(&ts);
    s->threadsafe = ts > 0;
    NNP_CALL(nnp__h5_open_split(s->path, "train", &s->h, &s->sp));
    const nnp__h5_split *sp = &s->sp;

    /* the layout: contiguous (or compact), or chunks of whole samples */
    hid_t dcpl = H5Dget_create_plist(s->h.di);
    if (dcpl < 0)
        return nnp_error(NNP_ERR_FORMAT, "%s: cannot read the layout of /train/images", s->path);
    H5D_layout_t layout = H5Pget_layout(dcpl);
    s->chunk_rows = 0;
    if (layout == H5D_CHUNKED) {
        hsize_t cd[4] = {0, 0, 0, 0};
        int cn = H5Pget_chunk(dcpl, 4, cd);
        int whole = cn == sp->nd;
        for (int i = 1; i < cn && whole; i++)
            whole = cd[i] == (sp->nd == 3 ? sp->dims[i + 1] : sp->dims[i]);
        if (!whole) {
            char got[96] = "", want[96];
            for (int i = 0, n = 0; i < cn && n < (int)sizeof got; i++)
                n += snprintf(got + n, sizeof got - (size_t)n, "%s%llu", i ? ", " : "",
                              (unsigned long long)cd[i]);
            if (sp->nd == 3)
                snprintf(want, sizeof want, "1024x%llux%llu", (unsigned long long)sp->dims[2],
                         (unsigned long long)sp->dims[3]);
            else
                snprintf(want, sizeof want, "1024x%llux%llux%llu",
                         (unsigned long long)sp->dims[1], (unsigned long long)sp->dims[2],
                         (unsigned long long)sp->dims[3]);
            H5Pclose(dcpl);
            return nnp_error(NNP_ERR_FORMAT,
                             "%s: /train/images is stored in chunks of (%s): streaming reads "
                             "whole samples and needs chunks of whole samples, e.g. %s "
                             "(h5repack -l /train/images:CHUNK=%s), or train without --stream",
                             s->path, got, want, want);
        }
        s->chunk_rows = (size_t)cd[0];
    }
    H5Pclose(dcpl);

    size_t first, n;
    nnp_keep_range(sp->N, limit, 0, (size_t)-1, &first, &n);
    if (n > UINT32_MAX)
        return nnp_error(NNP_ERR_ARG, "%s: %zu training samples; --stream takes at most %u "
                                      "(32-bit sample indices)", s->path, n, UINT32_MAX);
    s->esize = sp->is_u8 ? 1 : sizeof(float);
    s->row_bytes = sp->D * s->esize;
    nnp_dataset *d = &s->hdr;
    d->n = n;
    d->c = (int)sp->dims[1];
    d->h = (int)sp->dims[2];
    d->w = (int)sp->dims[3];
    d->n_total = sp->N;
    d->first = 0;
    d->n_classes = sp->n_classes;
    d->mean = 0.0;
    d->std = 1.0;
    s->n_rows = n;
    s->row_y = s->sp.labels; /* N bytes, by file row */
    s->sp.labels = NULL;
    d->y = s->row_y; /* the training samples' labels while no samples are held out */

    NNP_CALL(direct_setup(s));

    /* No chunk cache: HDF5 then reads only the selected rows' bytes of an uncompressed
     * chunk, and inflates a compressed chunk once per read that needs it. With a cache that
     * could hold a chunk, HDF5 1.10.8 kept every chunk the reads touched, far beyond the
     * cache's size (measured: the whole set in memory after a few batches; docs/data.md). */
    if (s->chunk_rows) {
        hid_t dapl = H5Dget_access_plist(s->h.di);
        if (dapl >= 0) {
            H5Pset_chunk_cache(dapl, 0, 0, 1.0);
            H5Dclose(s->h.di);
            s->h.di = H5Dopen2(s->h.f, "/train/images", dapl);
            H5Pclose(dapl);
            if (s->h.di < 0)
                return nnp_error(NNP_ERR_FORMAT, "%s: cannot reopen /train/images", s->path);
        }
    }
    return NNP_OK;
}

nnp_status nnp_stream_open(const char *path, size_t limit, nnp_stream **out, nnp_dataset **hdr,
                           size_t *chunk_rows)
{
    *out = NULL;
    nnp_stream *s = nnp_calloc(1, sizeof *s);
    if (!s)
        return NNP_ERR_NOMEM;
    snprintf(s->path, sizeof s->path, "%s", path);
    s->h = (nnp__h5_ids){-1, -1, -1, -1, -1, -1, -1, -1};
    s->dxpl = s->ms = -1;
    s->fd = -1;
    s->perm_epoch = -1;
    nnp__h5_quiet q;
    nnp__h5_quiet_on(&q);
    nnp_status st = open_stream(s, limit);
    nnp__h5_quiet_off(&q);
    if (st != NNP_OK) {
        nnp_stream_close(s);
        return st;
    }
    *out = s;
    *hdr = &s->hdr;
    if (chunk_rows)
        *chunk_rows = s->chunk_rows;
    return NNP_OK;
}

/* ---- reading rows -------------------------------------------------------------------- */

/* pread n bytes at `at` into buf, whatever the kernel splits them into; the bytes read (n
 * unless the file ends before, or errno says why). */
static size_t pread_all(int fd, unsigned char *buf, size_t n, off_t at)
{
    size_t got = 0;
    errno = 0;
    while (got < n) {
        ssize_t m = pread(fd, buf + got, n - got, at + (off_t)got);
        if (m < 0 && errno == EINTR)
            continue;
        if (m <= 0)
            break;
        got += (size_t)m;
    }
    return got;
}

/* Is the file still the one opened, whole? An error message naming `what` if not. */
static nnp_status check_file(nnp_stream *s, const char *what, char *msg, size_t cap)
{
    struct stat now;
    if (stat(s->path, &now) != 0) {
        snprintf(msg, cap, "%s: %s while training read it (%s): stopping", s->path,
                 errno == ENOENT ? "the file was removed" : strerror(errno), what);
        return NNP_ERR_IO;
    }
    if (now.st_ino != s->st0.st_ino || now.st_dev != s->st0.st_dev) {
        snprintf(msg, cap, "%s: the file was replaced while training read it (%s): stopping",
                 s->path, what);
        return NNP_ERR_IO;
    }
    if (now.st_size < s->st0.st_size) {
        snprintf(msg, cap, "%s: the file was truncated from %lld to %lld bytes while training "
                           "read it (%s): stopping",
                 s->path, (long long)s->st0.st_size, (long long)now.st_size, what);
        return NNP_ERR_IO;
    }
    return NNP_OK;
}

/* Read rows [r0, r0 + n) into dst, or report which sample could not be read. */
static nnp_status read_rows(nnp_stream *s, size_t r0, size_t n, void *dst, char *msg, size_t cap)
{
    const nnp__h5_split *sp = &s->sp;
    if (s->chunk_at) { /* direct: one pread per chunk's part of the range */
        const size_t R = s->row_bytes, C = s->direct_rows;
        for (size_t r = r0; r < r0 + n;) {
            const size_t c = r / C, k = (c + 1) * C - r < r0 + n - r ? (c + 1) * C - r : r0 + n - r;
            const off_t at = (off_t)(s->chunk_at[c] + (uint64_t)(r - c * C) * R);
            unsigned char *to = (unsigned char *)dst + (r - r0) * R;
            const size_t got = pread_all(s->fd, to, k * R, at);
            if (got < k * R) {
                snprintf(msg, cap, "%s: cannot read sample %zu of /train/images (%s)", s->path,
                         r + got / R, errno ? strerror(errno) : "the file ends before it");
                return NNP_ERR_IO;
            }
            r += k;
        }
        return NNP_OK;
    }
    hid_t fs = H5Dget_space(s->h.di);
    hsize_t start[4] = {(hsize_t)r0, 0, 0, 0}, count[4] = {(hsize_t)n, sp->dims[1], sp->dims[2],
                                                          sp->dims[3]};
    if (sp->nd == 3) {
        count[1] = sp->dims[2];
        count[2] = sp->dims[3];
    }
    /* the memory space has the selection's shape: HDF5 then copies whole rows (a 1-D memory
     * space made it iterate element by element, minutes for a 4 GB pass) */
    hid_t ms = H5Screate_simple(sp->nd, count, NULL);
    int ok = fs >= 0 && ms >= 0 &&
             H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) >= 0 &&
             H5Dread(s->h.di, sp->is_u8 ? H5T_NATIVE_UCHAR : H5T_NATIVE_FLOAT, ms, fs,
                     H5P_DEFAULT, dst) >= 0;
    if (ms >= 0)
        H5Sclose(ms);
    if (fs >= 0)
        H5Sclose(fs);
    if (!ok) {
        snprintf(msg, cap, "%s: cannot read sample %zu of /train/images (truncated or corrupt "
                           "file)", s->path, r0);
        return NNP_ERR_IO;
    }
    return NNP_OK;
}

/* Float samples: a non-finite value is an error naming the sample (as nnp_h5_load's). */
static nnp_status check_finite(const nnp_stream *s, const float *x, size_t n, const size_t *rows,
                               size_t r0, char *msg, size_t cap)
{
    const size_t D = s->sp.D;
    for (size_t i = 0; i < n * D; i++)
        if (!isfinite(x[i])) {
            snprintf(msg, cap, "%s: /train/images sample %zu holds a non-finite value (%s)",
                     s->path, rows ? rows[i / D] : r0 + i / D, isnan(x[i]) ? "nan" : "inf");
            return NNP_ERR_FORMAT;
        }
    return NNP_OK;
}

static void sift(uint64_t *a, size_t i, size_t n)
{
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            return;
        if (c + 1 < n && a[c + 1] > a[c])
            c++;
        if (a[i] >= a[c])
            return;
        uint64_t t = a[i];
        a[i] = a[c];
        a[c] = t;
        i = c;
    }
}

static void heapsort_u64(uint64_t *a, size_t n)
{
    for (size_t i = n / 2; i-- > 0;)
        sift(a, i, n);
    for (size_t e = n; e-- > 1;) {
        uint64_t t = a[0];
        a[0] = a[e];
        a[e] = t;
        sift(a, 0, e);
    }
}

/* Read the rows of sorted keys [0, B) into stage rows 0 .. B-1 with pread: one call per
 * run of consecutive rows within a chunk. 0 on a failed or short read (*bad: its row). */
static int read_direct(nnp_stream *s, int B, size_t *bad)
{
    const size_t R = s->row_bytes, C = s->direct_rows;
    for (int i = 0; i < B;) {
        const size_t r0 = (size_t)(s->keys[i] >> 32), c = r0 / C;
        int j = i + 1;
        while (j < B && (s->keys[j] >> 32) == (s->keys[j - 1] >> 32) + 1 &&
               (size_t)(s->keys[j] >> 32) / C == c)
            j++;
        const size_t want = (size_t)(j - i) * R;
        const off_t at = (off_t)(s->chunk_at[c] + (uint64_t)(r0 - c * C) * R);
        const size_t got = pread_all(s->fd, s->stage + (size_t)i * R, want, at);
        if (got < want) {
            *bad = r0 + got / R;
            return 0;
        }
        i = j;
    }
    return 1;
}

/* Read the rows of sorted keys [k0, k1) into stage rows k0 .. k1-1, one H5Dread. */
static int read_sorted(nnp_stream *s, int k0, int k1)
{
    const nnp__h5_split *sp = &s->sp;
    hid_t fs = H5Dget_space(s->h.di);
    int ok = fs >= 0 && H5Sselect_none(fs) >= 0;
    hsize_t count[4] = {0, sp->dims[1], sp->dims[2], sp->dims[3]};
    if (sp->nd == 3) {
        count[1] = sp->dims[2];
        count[2] = sp->dims[3];
    }
    for (int i = k0; i < k1 && ok;) {
        int j = i + 1;
        while (j < k1 && (s->keys[j] >> 32) == (s->keys[j - 1] >> 32) + 1)
            j++;
        hsize_t start[4] = {(hsize_t)(s->keys[i] >> 32), 0, 0, 0};
        count[0] = (hsize_t)(j - i);
        ok = H5Sselect_hyperslab(fs, H5S_SELECT_OR, start, NULL, count, NULL) >= 0;
        i = j;
    }
    hsize_t m0[1] = {(hsize_t)k0 * sp->D}, mc[1] = {(hsize_t)(k1 - k0) * sp->D};
    ok = ok && H5Sselect_hyperslab(s->ms, H5S_SELECT_SET, m0, NULL, mc, NULL) >= 0 &&
         H5Dread(s->h.di, sp->is_u8 ? H5T_NATIVE_UCHAR : H5T_NATIVE_FLOAT, s->ms, fs, s->dxpl,
                 s->stage) >= 0;
    if (fs >= 0)
        H5Sclose(fs);
    return ok;
}

/* Fill slot sl with step `step`: the plan's samples, read in file order, then placed. */
static void fill(nnp_stream *s, slot_t *sl, int64_t step)
{
    const nnp_stream_plan *p = &s->plan;
    sl->st = NNP_OK;
    sl->msg[0] = 0;
    sl->B = p->balance_every > 0
                ? nnp_step_samples_shares(p->seed, &p->shuffle, s->hdr.n, p->G, s->my_shares,
                                          p->r, step, s->perm, &s->perm_epoch, sl->idx)
                : nnp_step_samples(p->seed, &p->shuffle, s->hdr.n, p->G, p->unit, p->p, p->r,
                                   step, s->perm, &s->perm_epoch, sl->idx);
    const int B = sl->B;
    if (B == 0)
        return;
    char what[96];
    snprintf(what, sizeof what, "step %lld, sample %u", (long long)step + 1, sl->idx[0]);
    if ((sl->st = check_file(s, what, sl->msg, sizeof sl->msg)) != NNP_OK)
        return;
    for (int i = 0; i < B; i++)
        s->keys[i] = (uint64_t)(s->rows ? s->rows[sl->idx[i]] : sl->idx[i]) << 32 | (uint64_t)i;
    heapsort_u64(s->keys, (size_t)B);

    /* the union of the runs of consecutive rows, one read */
    size_t bad = 0;
    if (s->chunk_at && !read_direct(s, B, &bad)) {
        snprintf(sl->msg, sizeof sl->msg, "%s: cannot read sample %zu of /train/images at step "
                 "%lld (%s)", s->path, bad, (long long)step + 1,
                 errno ? strerror(errno) : "the file ends before it");
        sl->st = NNP_ERR_IO;
        return;
    }
    int ok = s->chunk_at ? 1 : read_sorted(s, 0, B);
    if (!ok) {
        /* which sample: the first of the batch's rows that cannot be read alone */
        for (int i = 0; i < B; i++) {
            const size_t row = (size_t)(s->keys[i] >> 32);
            if (read_rows(s, row, 1, s->stage, sl->msg, sizeof sl->msg) != NNP_OK) {
                size_t len = strlen(sl->msg);
                snprintf(sl->msg + len, sizeof sl->msg - len, " at step %lld", (long long)step + 1);
                sl->st = NNP_ERR_IO;
                return;
            }
        }
        snprintf(sl->msg, sizeof sl->msg, "%s: cannot read the samples of step %lld (%u, ...) "
                                          "of /train/images", s->path, (long long)step + 1,
                 sl->idx[0]);
        sl->st = NNP_ERR_IO;
        return;
    }
    if ((sl->st = check_file(s, what, sl->msg, sizeof sl->msg)) != NNP_OK)
        return;
    const size_t R = s->row_bytes;
    for (int k = 0; k < B; k++) {
        const size_t pos = (size_t)(s->keys[k] & 0xffffffffu);
        memcpy(sl->raw + pos * R, s->stage + (size_t)k * R, R);
        sl->y[pos] = s->row_y[s->keys[k] >> 32];
    }
    if (!s->sp.is_u8) {
        for (int i = 0; i < B; i++) {
            const size_t row = s->rows ? s->rows[sl->idx[i]] : sl->idx[i];
            sl->st = check_finite(s, (const float *)(sl->raw + (size_t)i * R), 1, NULL, row,
                                  sl->msg, sizeof sl->msg);
            if (sl->st != NNP_OK)
                return;
        }
    }
}

/* ---- moments ------------------------------------------------------------------------- */

/* Blocks of about 8 MB of whole rows (whole chunks where chunked), for the passes below. */
static size_t pass_rows(const nnp_stream *s)
{
    size_t rows = ((size_t)8 << 20) / s->row_bytes;
    if (rows < 1)
        rows = 1;
    if (s->chunk_rows && rows > s->chunk_rows)
        rows -= rows % s->chunk_rows;
    return rows;
}

int nnp_stream_is_u8(const nnp_stream *s)
{
    return s->sp.is_u8;
}

nnp_status nnp_stream_histogram(nnp_stream *s, size_t lo, size_t hi, uint64_t hist[256])
{
    memset(hist, 0, 256 * sizeof *hist);
    if (!s->sp.is_u8)
        return nnp_error(NNP_ERR_ARG, "nnp_stream_histogram: %s holds float32 images", s->path);
    if (hi > s->n_rows)
        hi = s->n_rows;
    const size_t rows = pass_rows(s), D = s->sp.D;
    unsigned char *buf = nnp_malloc(rows * s->row_bytes);
    if (!buf)
        return NNP_ERR_NOMEM;
    char msg[4608];
    nnp_status st = NNP_OK;
    nnp__h5_quiet q;
    nnp__h5_quiet_on(&q);
    for (size_t r0 = lo; r0 < hi && st == NNP_OK; r0 += rows) {
        const size_t n = hi - r0 < rows ? hi - r0 : rows;
        st = read_rows(s, r0, n, buf, msg, sizeof msg);
        for (size_t k = 0; st == NNP_OK && k < n * D; k++)
            hist[buf[k]]++;
    }
    nnp__h5_quiet_off(&q);
    free(buf);
    return st == NNP_OK ? NNP_OK : nnp_error(st, "%s", msg);
}

nnp_status nnp_stream_moments(nnp_stream *s, double *mean, double *std)
{
    const size_t N = s->hdr.n, D = s->sp.D;
    *mean = *std = 0.0;
    if (N == 0)
        return NNP_OK;
    if (s->sp.is_u8 && !s->rows) {
        uint64_t hist[256];
        NNP_CALL(nnp_stream_histogram(s, 0, s->n_rows, hist));
        nnp_moments_from_histogram(hist, (double)N * (double)D, mean, std);
        return NNP_OK;
    }
    const size_t rows = pass_rows(s);
    void *buf = nnp_malloc(rows * s->row_bytes);
    if (!buf)
        return NNP_ERR_NOMEM;
    char msg[4608];
    nnp_status st = NNP_OK;
    nnp__h5_quiet q;
    nnp__h5_quiet_on(&q);
    const double total = (double)N * (double)D;
    /* float32: two passes in sample order, as nnp_dataset_moments sums them (the held-out
     * rows skipped: the training samples are rows[0..N) in increasing order); uint8 with
     * samples held out: one pass counting the training samples' values */
    double sum = 0.0, m = 0.0, ss = 0.0;
    uint64_t hist[256] = {0};
    const size_t NR = s->n_rows;
    for (int pass = 0; pass < 2 && st == NNP_OK; pass++) {
        size_t j = 0; /* the next training sample */
        for (size_t r0 = 0; r0 < NR && st == NNP_OK; r0 += rows) {
            const size_t n = NR - r0 < rows ? NR - r0 : rows;
            st = read_rows(s, r0, n, buf, msg, sizeof msg);
            if (st == NNP_OK && pass == 0 && !s->sp.is_u8)
                st = check_finite(s, buf, n, NULL, r0, msg, sizeof msg);
            for (size_t i = 0; st == NNP_OK && i < n; i++) {
                if (s->rows && (j >= N || s->rows[j] != r0 + i))
                    continue; /* held out */
                j++;
                if (s->sp.is_u8) { /* held-out samples: the training samples' histogram */
                    const unsigned char *px = (const unsigned char *)buf + i * D;
                    for (size_t k = 0; pass == 0 && k < D; k++)
                        hist[px[k]]++;
                    continue;
                }
                const float *x = (const float *)buf + i * D;
                for (size_t k = 0; k < D; k++) {
                    if (pass == 0) {
                        sum += x[k];
                    } else {
                        double dv = (double)x[k] - m;
                        ss += dv * dv;
                    }
                }
            }
        }
        m = sum / total;
        if (s->sp.is_u8)
            break; /* one pass counts them */
    }
    *mean = m;
    *std = sqrt(ss / total);
    if (s->sp.is_u8)
        nnp_moments_from_histogram(hist, total, mean, std);
    nnp__h5_quiet_off(&q);
    free(buf);
    return st == NNP_OK ? NNP_OK : nnp_error(st, "%s", msg);
}

/* ---- --val-split ---------------------------------------------------------------------- */

nnp_status nnp_stream_holdout(nnp_stream *s, uint64_t seed, size_t n_val, size_t lo, size_t hi,
                              nnp_dataset *val, uint64_t val_hist[256])
{
    const size_t N = s->hdr.n;
    memset(val, 0, sizeof *val);
    if (n_val >= N)
        return nnp_error(NNP_ERR_ARG, "--val-split %zu leaves no training samples (the training "
                                      "set has %zu)", n_val, N);
    uint32_t *perm = nnp_malloc(N * sizeof *perm);
    unsigned char *is_val = nnp_malloc(N);
    uint32_t *rows = nnp_malloc((N - n_val) * sizeof *rows + 1);
    unsigned char *ty = nnp_malloc(N - n_val + 1);
    const size_t n = hi > lo ? hi - lo : 0, R = s->row_bytes;
    unsigned char *vx = nnp_malloc(n * R + 1), *vy = nnp_malloc(n + 1);
    nnp_status st = perm && is_val && rows && ty && vx && vy ? NNP_OK : NNP_ERR_NOMEM;
    if (st == NNP_OK) {
        nnp_holdout_mask(seed, N, n_val, perm, is_val);
        /* the training samples keep their order; this rank's held-out ones, [lo, hi) of
         * them in index order, are read as nnp_dataset_holdout copies them */
        size_t kept = 0, held = 0, got = 0;
        char msg[4608];
        nnp__h5_quiet q;
        nnp__h5_quiet_on(&q);
        for (size_t i = 0; i < N && st == NNP_OK; i++) {
            if (!is_val[i]) {
                rows[kept] = (uint32_t)i;
                ty[kept++] = s->row_y[i];
                continue;
            }
            if (held >= lo && held < hi) {
                st = read_rows(s, i, 1, vx + got * R, msg, sizeof msg);
                if (st == NNP_OK && !s->sp.is_u8)
                    st = check_finite(s, (const float *)(vx + got * R), 1, NULL, i, msg,
                                      sizeof msg);
                vy[got++] = s->row_y[i];
            }
            held++;
        }
        nnp__h5_quiet_off(&q);
        if (st != NNP_OK)
            st = nnp_error(st, "%s", msg);
    }
    free(perm);
    free(is_val);
    if (st != NNP_OK) {
        free(rows);
        free(ty);
        free(vx);
        free(vy);
        return st;
    }
    val->n = n;
    val->c = s->hdr.c;
    val->h = s->hdr.h;
    val->w = s->hdr.w;
    val->n_classes = s->hdr.n_classes;
    val->n_total = s->hdr.n_total;
    val->mean = s->hdr.mean;
    val->std = s->hdr.std;
    if (s->sp.is_u8)
        val->pix = vx;
    else
        val->xf = (float *)vx;
    val->y = vy;
    if (val_hist) { /* this rank's share of the held-out pixel values */
        memset(val_hist, 0, 256 * sizeof *val_hist);
        if (s->sp.is_u8)
            for (size_t k = 0; k < n * s->sp.D; k++)
                val_hist[vx[k]]++;
    }
    s->rows = rows;
    s->hdr.n = N - n_val;
    s->hdr.y = ty;
    return NNP_OK;
}

/* ---- the reader thread ---------------------------------------------------------------- */

static void *reader_main(void *arg)
{
    nnp_stream *s = arg;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* errors become the slot's message */
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->quit && (s->next >= s->plan.total || s->next >= s->expect + s->K ||
                            (s->plan.balance_every > 0 && s->next >= s->shares_until)))
            pthread_cond_wait(&s->cv, &s->mu);
        if (s->quit)
            break;
        const int64_t step = s->next;
        const uint64_t gen = s->gen;
        if (s->plan.balance_every > 0) /* the shares this step is taken with */
            memcpy(s->my_shares, s->shares, (size_t)s->plan.p * sizeof *s->shares);
        slot_t *sl = &s->slots[step % s->K];
        pthread_mutex_unlock(&s->mu);
        const double t0 = now_s();
        fill(s, sl, step);
        const double dt = now_s() - t0;
        pthread_mutex_lock(&s->mu);
        s->busy += dt;
        if (gen == s->gen) { /* else a rollback moved the stream: dropped */
            sl->step = step;
            s->next = step + 1;
            pthread_cond_broadcast(&s->cv);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

nnp_status nnp_stream_start(nnp_stream *s, const nnp_stream_plan *plan)
{
    if (s->started)
        return nnp_error(NNP_ERR_ARG, "nnp_stream_start: already started");
    s->plan = *plan;
    s->threaded = plan->prefetch > 0 && s->threadsafe;
    s->K = plan->prefetch > 0 ? plan->prefetch : 1;
    const size_t mb = plan->max_batch > 0 ? (size_t)plan->max_batch : 1;
    s->perm = nnp_malloc((s->hdr.n ? s->hdr.n : 1) * sizeof *s->perm);
    s->keys = nnp_malloc(mb * sizeof *s->keys);
    s->stage = nnp_malloc(mb * s->row_bytes);
    s->slots = nnp_calloc((size_t)s->K, sizeof *s->slots);
    if (!s->perm || !s->keys || !s->stage || !s->slots)
        return NNP_ERR_NOMEM;
    for (int k = 0; k < s->K; k++) {
        slot_t *sl = &s->slots[k];
        sl->step = -1;
        sl->idx = nnp_malloc(mb * sizeof *sl->idx);
        sl->raw = nnp_malloc(mb * s->row_bytes);
        sl->y = nnp_malloc(mb);
        if (!sl->idx || !sl->raw || !sl->y)
            return NNP_ERR_NOMEM;
    }
    hsize_t m = (hsize_t)(mb * s->sp.D);
    nnp__h5_quiet q;
    nnp__h5_quiet_on(&q);
    s->ms = H5Screate_simple(1, &m, NULL);
    s->dxpl = H5Pcreate(H5P_DATASET_XFER);
    nnp__h5_quiet_off(&q);
    if (s->ms < 0 || s->dxpl < 0)
        return nnp_error(NNP_ERR_IO, "%s: cannot set up the streaming reads", s->path);
    s->expect = s->next = plan->first_step;
    if (plan->balance_every > 0) {
        s->shares = nnp_malloc((size_t)plan->p * sizeof *s->shares);
        s->my_shares = nnp_malloc((size_t)plan->p * sizeof *s->my_shares);
        if (!s->shares || !s->my_shares)
            return NNP_ERR_NOMEM;
        memcpy(s->shares, plan->share, (size_t)plan->p * sizeof *s->shares);
        memcpy(s->my_shares, plan->share, (size_t)plan->p * sizeof *s->shares);
        s->shares_until = (plan->first_step / plan->balance_every + 1) * plan->balance_every;
    }
    if (s->threaded) {
        if (pthread_mutex_init(&s->mu, NULL) != 0 || pthread_cond_init(&s->cv, NULL) != 0)
            return nnp_error(NNP_ERR_IO, "cannot create the reader thread's lock");
        if (pthread_create(&s->th, NULL, reader_main, s) != 0) {
            pthread_mutex_destroy(&s->mu);
            pthread_cond_destroy(&s->cv);
            return nnp_error(NNP_ERR_IO, "cannot start the reader thread: %s", strerror(errno));
        }
    }
    s->started = 1;
    return NNP_OK;
}

/* ---- the consumer ---------------------------------------------------------------------- */

nnp_status nnp_stream_batch(nnp_stream *s, int64_t step, const uint32_t *idx, int B, float *x,
                            unsigned char *y, double *wait_s)
{
    *wait_s = 0;
    slot_t *sl;
    if (!s->threaded) {
        sl = &s->slots[0];
        const double t0 = now_s();
        nnp__h5_quiet q;
        nnp__h5_quiet_on(&q);
        fill(s, sl, step);
        nnp__h5_quiet_off(&q);
        const double dt = now_s() - t0;
        s->busy += dt;
        *wait_s = dt;
    } else {
        const double t0 = now_s();
        pthread_mutex_lock(&s->mu);
        if (step != s->expect) { /* a rollback: start over at `step` */
            s->gen++;
            s->expect = s->next = step;
            for (int k = 0; k < s->K; k++)
                s->slots[k].step = -1;
            pthread_cond_broadcast(&s->cv);
        }
        sl = &s->slots[step % s->K];
        while (sl->step != step)
            pthread_cond_wait(&s->cv, &s->mu);
        pthread_mutex_unlock(&s->mu);
        *wait_s = now_s() - t0;
    }
    nnp_status st = NNP_OK;
    if (sl->st != NNP_OK)
        st = nnp_error(sl->st, "%s", sl->msg);
    else if (sl->B != B || (B > 0 && memcmp(sl->idx, idx, (size_t)B * sizeof *idx) != 0))
        st = nnp_error(NNP_ERR_ARG, "internal error: the streaming reader read other samples "
                                    "than step %lld takes (%d against %d)",
                       (long long)step + 1, sl->B, B);
    if (st == NNP_OK && B > 0) {
        nnp_dataset v = s->hdr; /* the slot's rows as a dataset: the same normalization */
        v.n = (size_t)B;
        v.pix = s->sp.is_u8 ? sl->raw : NULL;
        v.xf = s->sp.is_u8 ? NULL : (float *)sl->raw;
        v.y = sl->y;
        nnp_dataset_slice(&v, 0, B, x, y);
    }
    if (s->threaded) {
        pthread_mutex_lock(&s->mu);
        if (sl->step == step)
            sl->step = -1;
        if (s->expect == step)
            s->expect = step + 1;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
    }
    return st;
}

void nnp_stream_set_shares(nnp_stream *s, const size_t *share, int64_t from)
{
    if (!s->started || s->plan.balance_every <= 0)
        return;
    const int64_t until = (from / s->plan.balance_every + 1) * s->plan.balance_every;
    if (!s->threaded) {
        memcpy(s->my_shares, share, (size_t)s->plan.p * sizeof *s->my_shares);
        s->shares_until = until;
        return;
    }
    pthread_mutex_lock(&s->mu);
    memcpy(s->shares, share, (size_t)s->plan.p * sizeof *s->shares);
    s->shares_until = until;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

double nnp_stream_busy_s(nnp_stream *s)
{
    if (!s->threaded)
        return s->busy;
    pthread_mutex_lock(&s->mu);
    double b = s->busy;
    pthread_mutex_unlock(&s->mu);
    return b;
}

int nnp_stream_direct(const nnp_stream *s)
{
    return s->chunk_at != NULL;
}

int nnp_stream_threaded(const nnp_stream *s)
{
    return s->started ? s->threaded : s->threadsafe;
}

void nnp_stream_close(nnp_stream *s)
{
    if (!s)
        return;
    if (s->started && s->threaded) {
        pthread_mutex_lock(&s->mu);
        s->quit = 1;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->th, NULL);
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv);
    }
    nnp__h5_quiet q;
    nnp__h5_quiet_on(&q);
    if (s->ms >= 0)
        H5Sclose(s->ms);
    if (s->dxpl >= 0)
        H5Pclose(s->dxpl);
    nnp__h5_close(&s->h);
    nnp__h5_quiet_off(&q);
    if (s->slots)
        for (int k = 0; k < s->K; k++) {
            free(s->slots[k].idx);
            free(s->slots[k].raw);
            free(s->slots[k].y);
        }
    free(s->slots);
    free(s->perm);
    free(s->keys);
    free(s->stage);
    free(s->sp.labels);
    if (s->hdr.y != s->row_y)
        free(s->hdr.y);
    free(s->row_y);
    free(s->rows);
    free(s->shares);
    free(s->my_shares);
    free(s->chunk_at);
    if (s->fd >= 0)
        close(s->fd);
    free(s);
}
