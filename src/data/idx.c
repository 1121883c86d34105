/* idx.c - IDX (MNIST / Fashion-MNIST) reader, gzip'd or raw.
 *
 * gzopen/gzread read both compressed and plain files, so one code path serves both. The
 * images file is magic 0x00000803 followed by N, H, W (big-endian uint32) and N*H*W bytes;
 * the labels file is magic 0x00000801, N and N bytes. Only the samples [lo, hi) of the
 * first `limit` are kept; the images before lo are read and discarded. The labels file is
 * small and is read whole, so truncation anywhere in it is caught and n_classes is the
 * same on every rank whatever its shard. A file read to its end must end there: for a gzip'd
 * file that is where zlib checks the stream's CRC and length, so corrupt pixels are caught
 * whenever the last image is read (always, unless a limit or shard stops short of it).
 */
#include "nnprec/data.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "nnprec/alloc.h"
#include "nnprec/rundir.h"

#define IDX_MAGIC_IMAGES 0x00000803u
#define IDX_MAGIC_LABELS 0x00000801u
/* Largest accepted image side and area: far above any IDX image set, small enough that a
 * corrupt header is reported as such rather than as a failed huge allocation. */
#define IDX_MAX_SIDE 65536u
#define IDX_MAX_AREA (1u << 24)

static const char *open_errstr(void)
{
    return errno ? strerror(errno) : "cannot open";
}

/* zlib's message for f's error, without the "path: " prefix gzerror puts in front. */
static const char *gz_msg(gzFile f, const char *path, int *zerr)
{
    const char *msg = gzerror(f, zerr);
    size_t n = strlen(path);
    if (!msg || !msg[0])
        return "gzip error";
    if (strncmp(msg, path, n) == 0 && msg[n] == ':' && msg[n + 1] == ' ')
        return msg + n + 2;
    return msg;
}

/* Read up to `len` bytes, stopping early only at the end of the file; *done gets the
 * count. Returns NNP_OK, or an error naming the path and `what` (a read or gzip error). */
static nnp_status read_upto(gzFile f, const char *path, void *buf, size_t len,
                            const char *what, size_t *done)
{
    unsigned char *p = buf;
    *done = 0;
    while (*done < len) {
        size_t want = len - *done;
        if (want > (1u << 30))
            want = 1u << 30;
        int got = gzread(f, p + *done, (unsigned)want);
        if (got < 0) {
            int zerr = 0;
            const char *msg = gz_msg(f, path, &zerr);
            if (zerr == Z_ERRNO)
                return nnp_error(NNP_ERR_IO, "%s: read error in %s: %s", path, what,
                                 strerror(errno));
            return nnp_error(NNP_ERR_FORMAT, "%s: corrupt data in %s: %s", path, what, msg);
        }
        if (got == 0)
            break;
        *done += (size_t)got;
    }
    return NNP_OK;
}

/* Read exactly `len` bytes. Returns NNP_OK, or an error naming the path and `what`. */
static nnp_status read_exact(gzFile f, const char *path, void *buf, size_t len,
                             const char *what)
{
    size_t done;
    NNP_CALL(read_upto(f, path, buf, len, what, &done));
    if (done < len)
        return nnp_error(NNP_ERR_FORMAT, "%s: truncated %s: expected %zu bytes, found only %zu",
                         path, what, len, done);
    return NNP_OK;
}

/* Read exactly `len` bytes into a new buffer (*out, to free) that grows with what the file
 * actually holds (from 16 MiB, doubling): a header that promises more than the file has (a
 * flipped bit in a count) is a truncation error, not an allocation of gigabytes. */
static nnp_status read_grow(gzFile f, const char *path, size_t len, const char *what,
                            unsigned char **out)
{
    size_t cap = len < ((size_t)1 << 24) ? len : (size_t)1 << 24, done = 0;
    unsigned char *buf = nnp_malloc(cap ? cap : 1);
    *out = NULL;
    if (!buf)
        return NNP_ERR_NOMEM;
    while (done < len) {
        if (done == cap) {
            size_t nc = cap <= len / 2 ? 2 * cap : len;
            unsigned char *nb = nnp_malloc(nc);
            if (!nb) {
                free(buf);
                return NNP_ERR_NOMEM;
            }
            memcpy(nb, buf, done);
            free(buf);
            buf = nb;
            cap = nc;
        }
        size_t got;
        nnp_status s = read_upto(f, path, buf + done, cap - done, what, &got);
        done += got;
        if (s == NNP_OK && done < cap)
            s = nnp_error(NNP_ERR_FORMAT, "%s: truncated %s: expected %zu bytes, found only %zu",
                          path, what, len, done);
        if (s != NNP_OK) {
            free(buf);
            return s;
        }
    }
    *out = buf;
    return NNP_OK;
}

/* After the last byte the header promised: the file must end here, and a gzip stream must
 * pass its CRC and length check, which zlib makes only when the stream's end is read. */
static nnp_status expect_end(gzFile f, const char *path, const char *what)
{
    unsigned char extra;
    int got = gzread(f, &extra, 1);
    int zerr = Z_OK;
    const char *msg = gz_msg(f, path, &zerr);
    if (got < 0 || (zerr != Z_OK && zerr != Z_STREAM_END)) {
        if (zerr == Z_ERRNO)
            return nnp_error(NNP_ERR_IO, "%s: read error in %s: %s", path, what, strerror(errno));
        return nnp_error(NNP_ERR_FORMAT, "%s: corrupt data in %s: %s", path, what, msg);
    }
    if (got > 0)
        return nnp_error(NNP_ERR_FORMAT, "%s: longer than its header says (data after the %s)",
                         path, what);
    return NNP_OK;
}

static uint32_t be32(const unsigned char *b)
{
    return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) |
           (uint32_t)b[3];
}

static nnp_status open_idx(const char *path, const char *kind, gzFile *out)
{
    /* a regular file only, opened without blocking (a FIFO would wait for a writer) */
    char what[32];
    nnp_status s;
    snprintf(what, sizeof what, "%s file", kind);
    int fd = nnp_open_regular(path, what, &s);
    if (fd < 0)
        return s;
    errno = 0;
    gzFile f = gzdopen(fd, "rb");
    if (!f) {
        close(fd);
        return nnp_error(NNP_ERR_IO, "cannot open %s file %s: %s", kind, path,
                         open_errstr());
    }
    gzbuffer(f, 1u << 17);
    *out = f;
    return NNP_OK;
}

/* Discard `len` bytes (the images before lo), in chunks. */
static nnp_status skip_bytes(gzFile f, const char *path, size_t len)
{
    unsigned char buf[16384];
    while (len > 0) {
        size_t k = len < sizeof buf ? len : sizeof buf;
        NNP_CALL(read_exact(f, path, buf, k, "image data"));
        len -= k;
    }
    return NNP_OK;
}

static nnp_status load(gzFile fi, gzFile fl, const char *images_path, const char *labels_path,
                       size_t limit, size_t lo, size_t hi, nnp_dataset *out)
{
    unsigned char hdr[16];

    /* Images header. */
    NNP_CALL(read_exact(fi, images_path, hdr, 4, "images magic"));
    uint32_t magic = be32(hdr);
    if (magic != IDX_MAGIC_IMAGES)
        return nnp_error(NNP_ERR_FORMAT,
                         "%s: wrong magic 0x%08x, expected 0x%08x (IDX uint8 images N x H x W)",
                         images_path, (unsigned)magic, IDX_MAGIC_IMAGES);
    NNP_CALL(read_exact(fi, images_path, hdr + 4, 12, "images header"));
    uint32_t N = be32(hdr + 4), H = be32(hdr + 8), W = be32(hdr + 12);
    if (H == 0 || W == 0 || H > IDX_MAX_SIDE || W > IDX_MAX_SIDE ||
        (uint64_t)H * W > IDX_MAX_AREA)
        return nnp_error(NNP_ERR_FORMAT,
                         "%s: bad image size %u x %u, expected 1..%u per side and at most %u "
                         "pixels",
                         images_path, (unsigned)H, (unsigned)W, IDX_MAX_SIDE, IDX_MAX_AREA);

    /* Labels header. */
    NNP_CALL(read_exact(fl, labels_path, hdr, 4, "labels magic"));
    magic = be32(hdr);
    if (magic != IDX_MAGIC_LABELS)
        return nnp_error(NNP_ERR_FORMAT,
                         "%s: wrong magic 0x%08x, expected 0x%08x (IDX uint8 labels N)",
                         labels_path, (unsigned)magic, IDX_MAGIC_LABELS);
    NNP_CALL(read_exact(fl, labels_path, hdr + 4, 4, "labels header"));
    uint32_t NL = be32(hdr + 4);
    if (NL != N)
        return nnp_error(NNP_ERR_FORMAT, "%s: %u labels, expected %u to match images in %s",
                         labels_path, (unsigned)NL, (unsigned)N, images_path);

    /* All labels (N bytes): catches truncation anywhere and fixes n_classes file-wide; once
     * they are read, N is a count the files really hold. */
    unsigned char *labels;
    nnp_status s = read_grow(fl, labels_path, N, "label data", &labels);
    if (s != NNP_OK)
        return s;
    s = expect_end(fl, labels_path, "label data");
    if (s != NNP_OK) {
        free(labels);
        return s;
    }
    int maxl = -1;
    for (uint32_t i = 0; i < N; i++)
        if (labels[i] > maxl)
            maxl = labels[i];

    size_t first, n;
    nnp_keep_range(N, limit, lo, hi, &first, &n);
    size_t D = (size_t)H * W;

    out->c = 1;
    out->h = (int)H;
    out->w = (int)W;
    out->n_total = N;
    out->first = first;
    out->n_classes = maxl + 1;
    out->mean = 0.0;
    out->std = 1.0;
    out->xf = NULL;
    out->n = 0;

    if (n == 0) {
        free(labels);
        if (N == 0) /* an empty file: its end is here */
            return expect_end(fi, images_path, "image data");
        return NNP_OK;
    }
    if (n > SIZE_MAX / D) {
        free(labels);
        return nnp_error(NNP_ERR_FORMAT, "%s: %zu images of %zu pixels do not fit in memory",
                         images_path, n, D);
    }
    out->y = nnp_malloc(n);
    if (!out->y) {
        free(labels);
        return NNP_ERR_NOMEM;
    }
    memcpy(out->y, labels + first, n);
    free(labels);

    NNP_CALL(skip_bytes(fi, images_path, first * D));
    /* the image size comes from the header too: the buffer grows with the data read */
    NNP_CALL(read_grow(fi, images_path, n * D, "image data", &out->pix));
    if (first + n == N)
        NNP_CALL(expect_end(fi, images_path, "image data"));
    out->n = n;
    return NNP_OK;
}

nnp_status nnp_idx_load(const char *images_path, const char *labels_path, size_t limit,
                        size_t lo, size_t hi, nnp_dataset *out)
{
    memset(out, 0, sizeof *out);
    gzFile fi = NULL, fl = NULL;
    nnp_status s = open_idx(images_path, "images", &fi);
    if (s == NNP_OK)
        s = open_idx(labels_path, "labels", &fl);
    if (s == NNP_OK)
        s = load(fi, fl, images_path, labels_path, limit, lo, hi, out);
    if (fi)
        gzclose(fi);
    if (fl)
        gzclose(fl);
    if (s != NNP_OK)
        nnp_dataset_free(out);
    return s;
}

/* Whether path can be opened for reading (without blocking: O_NONBLOCK; a FIFO or another
 * special file found here is then refused by open_idx with its own message). */
static int readable(const char *path)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return 0;
    close(fd);
    return 1;
}

/* First existing DIR/SPLIT-KIND<suffix> among the IDX naming variants, into buf. */
static nnp_status find_one(const char *dir, const char *split, const char *kind, int idxdim,
                           char *buf, size_t cap)
{
    const char *sep = "/";
    size_t dl = strlen(dir);
    if (dl > 0 && dir[dl - 1] == '/')
        sep = "";
    /* Fashion-MNIST ships SPLIT-KIND-idxD-ubyte.gz; MNIST mirrors also use the raw
     * form and the SPLIT-KIND.idxD-ubyte spelling. */
    static const char *const pats[] = {"%s%s%s-%s-idx%d-ubyte.gz", "%s%s%s-%s-idx%d-ubyte",
                                       "%s%s%s-%s.idx%d-ubyte.gz", "%s%s%s-%s.idx%d-ubyte"};
    for (size_t i = 0; i < sizeof pats / sizeof pats[0]; i++) {
        int k = snprintf(buf, cap, pats[i], dir, sep, split, kind, idxdim);
        if (k < 0 || (size_t)k >= cap)
            return nnp_error(NNP_ERR_ARG, "data directory path too long: %s", dir);
        if (readable(buf))
            return NNP_OK;
    }
    if (cap)
        buf[0] = '\0';
    return nnp_error(NNP_ERR_IO,
                     "no %s %s file in %s: expected %s-%s-idx%d-ubyte[.gz] or "
                     "%s-%s.idx%d-ubyte[.gz]",
                     split, kind, dir, split, kind, idxdim, split, kind, idxdim);
}

nnp_status nnp_idx_paths(const char *dir, const char *split, char *images, char *labels,
                         size_t cap)
{
    NNP_CALL(find_one(dir, split, "images", 3, images, cap));
    NNP_CALL(find_one(dir, split, "labels", 1, labels, cap));
    return NNP_OK;
}
