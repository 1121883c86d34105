/* test_data.c - IDX reading (raw and gzip'd), slicing, normalization, moments, error
 * reporting, file discovery, and the global order with simulated ranks.
 *
 * Tiny IDX files are written into a fresh directory under /tmp and removed at the end.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "nnprec/data.h"
#include "nnprec/rng.h"
#include "test_util.h"

#define NIMG 7
#define IH 3
#define IW 4
#define ID (IH * IW)

static char g_dir[64];
/* Temp file paths handed out by tmp_path, removed at exit. */
static char g_files[64][512];
static int g_nfiles = 0;

/* Path of `name` in the temp directory; each distinct name gets its own stable buffer,
 * which is also the list of files removed at exit. */
static const char *tmp_path(const char *name)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", g_dir, name);
    for (int i = 0; i < g_nfiles; i++)
        if (strcmp(g_files[i], p) == 0)
            return g_files[i];
    if (g_nfiles == (int)(sizeof g_files / sizeof g_files[0])) {
        fprintf(stderr, "too many temp files\n");
        exit(1);
    }
    snprintf(g_files[g_nfiles], sizeof g_files[0], "%s", p);
    return g_files[g_nfiles++];
}

static void put_be32(unsigned char *b, uint32_t v)
{
    b[0] = (unsigned char)(v >> 24);
    b[1] = (unsigned char)(v >> 16);
    b[2] = (unsigned char)(v >> 8);
    b[3] = (unsigned char)v;
}

/* Write header words then `len` bytes of body, raw or gzip'd. */
static void write_file(const char *path, int gz, const uint32_t *hdr, int nhdr,
                       const unsigned char *body, size_t len)
{
    unsigned char h[16];
    for (int i = 0; i < nhdr; i++)
        put_be32(h + 4 * i, hdr[i]);
    if (gz) {
        gzFile f = gzopen(path, "wb");
        ASSERT_TRUE(f != NULL);
        if (!f)
            return;
        ASSERT_EQ_INT(gzwrite(f, h, (unsigned)(4 * nhdr)), 4 * nhdr);
        if (len)
            ASSERT_EQ_INT(gzwrite(f, body, (unsigned)len), (long long)len);
        ASSERT_EQ_INT(gzclose(f), Z_OK);
    } else {
        FILE *f = fopen(path, "wb");
        ASSERT_TRUE(f != NULL);
        if (!f)
            return;
        ASSERT_EQ_INT(fwrite(h, 1, (size_t)(4 * nhdr), f), 4 * nhdr);
        if (len)
            ASSERT_EQ_INT(fwrite(body, 1, len, f), (long long)len);
        ASSERT_EQ_INT(fclose(f), 0);
    }
}

static unsigned char g_pix[NIMG * ID];
/* The largest label (8) sits on the last sample, outside most slices below. */
static const unsigned char g_lab[NIMG] = {3, 0, 5, 1, 2, 4, 8};

static void write_images(const char *path, int gz, uint32_t magic, uint32_t n, uint32_t h,
                         uint32_t w, size_t body_len)
{
    uint32_t hdr[4] = {magic, n, h, w};
    write_file(path, gz, hdr, 4, g_pix, body_len);
}

static void write_labels(const char *path, int gz, uint32_t magic, uint32_t n, size_t body_len)
{
    uint32_t hdr[2] = {magic, n};
    write_file(path, gz, hdr, 2, g_lab, body_len);
}

static void check_samples(const nnp_dataset *d, size_t first, size_t n)
{
    ASSERT_EQ_INT(d->n, n);
    ASSERT_EQ_INT(d->first, first);
    ASSERT_EQ_INT(d->n_total, NIMG);
    ASSERT_EQ_INT(d->c, 1);
    ASSERT_EQ_INT(d->h, IH);
    ASSERT_EQ_INT(d->w, IW);
    ASSERT_EQ_INT(d->n_classes, 9);
    ASSERT_TRUE(d->xf == NULL);
    ASSERT_TRUE(d->mean == 0.0 && d->std == 1.0);
    if (n == 0)
        return;
    ASSERT_TRUE(d->pix != NULL && d->y != NULL);
    if (!d->pix || !d->y || d->n != n)
        return;
    ASSERT_TRUE(memcmp(d->pix, g_pix + first * ID, n * ID) == 0);
    ASSERT_TRUE(memcmp(d->y, g_lab + first, n) == 0);
}

static void test_read(void)
{
    for (int gz = 0; gz < 2; gz++) {
        const char *im = tmp_path(gz ? "ok-images.gz" : "ok-images");
        const char *lb = tmp_path(gz ? "ok-labels.gz" : "ok-labels");
        write_images(im, gz, 0x803, NIMG, IH, IW, sizeof g_pix);
        write_labels(lb, gz, 0x801, NIMG, NIMG);
        nnp_dataset d;

        ASSERT_OK(nnp_idx_load(im, lb, 0, 0, SIZE_MAX, &d));
        check_samples(&d, 0, NIMG);
        nnp_dataset_free(&d);

        /* limit 5, lo 2: samples [2, 5). */
        ASSERT_OK(nnp_idx_load(im, lb, 5, 2, 100, &d));
        check_samples(&d, 2, 3);
        nnp_dataset_free(&d);

        /* hi below the limit: [1, 3). */
        ASSERT_OK(nnp_idx_load(im, lb, 6, 1, 3, &d));
        check_samples(&d, 1, 2);
        nnp_dataset_free(&d);

        /* Last sample only, no limit. */
        ASSERT_OK(nnp_idx_load(im, lb, 0, 6, 7, &d));
        check_samples(&d, 6, 1);
        nnp_dataset_free(&d);

        /* Limit above N is clamped to N. */
        ASSERT_OK(nnp_idx_load(im, lb, 1000, 4, SIZE_MAX, &d));
        check_samples(&d, 4, 3);
        nnp_dataset_free(&d);

        /* lo at or past the clamp: empty, not an error. */
        ASSERT_OK(nnp_idx_load(im, lb, 3, 3, 10, &d));
        check_samples(&d, 3, 0);
        nnp_dataset_free(&d);
        ASSERT_OK(nnp_idx_load(im, lb, 0, 9, 12, &d));
        ASSERT_EQ_INT(d.n, 0);
        nnp_dataset_free(&d);
    }
}

/* Expect status `want` and a message naming `path`; the output dataset is left empty. */
static void expect_error(const char *im, const char *lb, nnp_status want, const char *path)
{
    nnp_dataset d;
    nnp_error_clear();
    nnp_status s = nnp_idx_load(im, lb, 0, 0, SIZE_MAX, &d);
    if (s != want)
        TEST_FAIL_("load(%s, %s) returned %s, want %s (msg: %s)", im, lb, nnp_status_str(s),
                   nnp_status_str(want), nnp_error_msg());
    nnp_test_checks++;
    const char *msg = nnp_error_msg();
    ASSERT_TRUE(strstr(msg, path) != NULL);
    ASSERT_TRUE(strchr(msg, '\n') == NULL);
    ASSERT_TRUE(d.n == 0 && d.pix == NULL && d.y == NULL);
    fprintf(stderr, "  expected error: %s\n", msg);
    nnp_error_clear();
    nnp_dataset_free(&d);
}

static void test_errors(void)
{
    const char *im = tmp_path("good-images"), *lb = tmp_path("good-labels");
    write_images(im, 0, 0x803, NIMG, IH, IW, sizeof g_pix);
    write_labels(lb, 0, 0x801, NIMG, NIMG);

    const char *missing = tmp_path("no-such-file");
    expect_error(missing, lb, NNP_ERR_IO, missing);
    expect_error(im, missing, NNP_ERR_IO, missing);

    for (int gz = 0; gz < 2; gz++) {
        const char *p = tmp_path(gz ? "bad-magic.gz" : "bad-magic");
        write_images(p, gz, 0x801, NIMG, IH, IW, sizeof g_pix);
        expect_error(p, lb, NNP_ERR_FORMAT, p);
        /* A labels file given as images, and images given as labels. */
        expect_error(lb, lb, NNP_ERR_FORMAT, lb);
        expect_error(im, im, NNP_ERR_FORMAT, im);

        p = tmp_path(gz ? "short-images.gz" : "short-images");
        write_images(p, gz, 0x803, NIMG, IH, IW, sizeof g_pix - 5);
        expect_error(p, lb, NNP_ERR_FORMAT, p);

        p = tmp_path(gz ? "short-header.gz" : "short-header");
        write_labels(p, gz, 0x803, NIMG, 0); /* 8 of the 16 header bytes */
        expect_error(p, lb, NNP_ERR_FORMAT, p);

        p = tmp_path(gz ? "short-labels.gz" : "short-labels");
        write_labels(p, gz, 0x801, NIMG, NIMG - 2);
        expect_error(im, p, NNP_ERR_FORMAT, p);

        p = tmp_path(gz ? "count-labels.gz" : "count-labels");
        write_labels(p, gz, 0x801, NIMG - 1, NIMG - 1);
        expect_error(im, p, NNP_ERR_FORMAT, p);

        p = tmp_path(gz ? "zero-h.gz" : "zero-h");
        write_images(p, gz, 0x803, NIMG, 0, IW, 0);
        expect_error(p, lb, NNP_ERR_FORMAT, p);

        p = tmp_path(gz ? "huge-w.gz" : "huge-w");
        write_images(p, gz, 0x803, NIMG, IH, 0x40000000u, sizeof g_pix);
        expect_error(p, lb, NNP_ERR_FORMAT, p);
    }

    /* A gzip stream cut in the middle: reported as a format error naming the file. */
    const char *full = tmp_path("cut.gz");
    write_images(full, 1, 0x803, NIMG, IH, IW, sizeof g_pix);
    FILE *f = fopen(full, "rb");
    unsigned char buf[1024];
    size_t len = f ? fread(buf, 1, sizeof buf, f) : 0;
    if (f)
        fclose(f);
    ASSERT_TRUE(len > 30);
    f = fopen(full, "wb");
    ASSERT_TRUE(f != NULL);
    if (f) {
        fwrite(buf, 1, len - 12, f); /* drop the trailer and part of the stream */
        fclose(f);
    }
    expect_error(full, lb, NNP_ERR_FORMAT, full);

    /* A corrupt gzip stream that still inflates to exactly the promised number of bytes:
     * only the CRC32 check at the end of the stream can catch it, so the loader must read
     * to the end. Images like real ones (smooth blobs) compress well; a one-bit flip in the
     * middle of such a stream often keeps inflating quietly. The test first finds such a
     * flip (reading exactly header + pixels with zlib reports nothing), then requires
     * nnp_idx_load to reject the file. */
    {
        enum { BN = 2000, BS = 28, BD = BS * BS, HDR = 16 };
        static unsigned char raw[HDR + BN * BD], lab[BN], comp[HDR + BN * BD];
        static unsigned char back[HDR + BN * BD];
        uint32_t ih[4] = {0x803, BN, BS, BS};
        for (int i = 0; i < 4; i++)
            put_be32(raw + 4 * i, ih[i]);
        uint64_t x = 0x9e3779b97f4a7c15ull;
        for (int i = 0; i < BN; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            int cx = 5 + (int)(x % 18), cy = 5 + (int)((x >> 8) % 18), r = 3 + (int)((x >> 16) % 8);
            for (int yy = 0; yy < BS; yy++)
                for (int xx = 0; xx < BS; xx++) {
                    int d2 = (xx - cx) * (xx - cx) + (yy - cy) * (yy - cy);
                    int v = 255 - 255 * d2 / (4 * r * r);
                    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                    raw[HDR + (size_t)i * BD + yy * BS + xx] =
                        (unsigned char)((v > 0 ? v : 0) | (int)(x & 3));
                }
            lab[i] = (unsigned char)(i % 10);
        }
        const char *bl = tmp_path("blob-labels"), *good = tmp_path("blob-ok.gz");
        const char *bad = tmp_path("blob-bad.gz");
        uint32_t lh[2] = {0x801, BN};
        write_file(bl, 0, lh, 2, lab, BN);
        write_file(good, 1, ih, 4, raw + HDR, (size_t)BN * BD);
        f = fopen(good, "rb");
        size_t clen = f ? fread(comp, 1, sizeof comp, f) : 0;
        if (f)
            fclose(f);
        ASSERT_TRUE(clen > 1000 && clen < sizeof comp);

        nnp_dataset d;
        ASSERT_TRUE(nnp_idx_load(good, bl, 0, 0, SIZE_MAX, &d) == NNP_OK);
        ASSERT_TRUE(d.n == BN && memcmp(d.pix, raw + HDR, (size_t)BN * BD) == 0);
        nnp_dataset_free(&d);

        int found = 0;
        for (size_t off = clen / 4; off < clen / 4 + 400 && !found; off++) {
            comp[off] ^= 0x10;
            f = fopen(bad, "wb");
            ASSERT_TRUE(f != NULL);
            if (!f)
                break;
            fwrite(comp, 1, clen, f);
            fclose(f);
            comp[off] ^= 0x10;
            gzFile g = gzopen(bad, "rb");
            ASSERT_TRUE(g != NULL);
            if (!g)
                break;
            gzbuffer(g, 1u << 17); /* as the loader reads */
            int zerr = Z_OK, got = gzread(g, back, (unsigned)sizeof back);
            gzerror(g, &zerr);
            gzclose(g);
            found = got == (int)sizeof back && zerr == Z_OK &&
                    memcmp(back, raw, sizeof back) != 0;
        }
        ASSERT_TRUE(found); /* a quiet corruption exists among the 400 flips tried */
        if (found)
            expect_error(bad, bl, NNP_ERR_FORMAT, bad);
    }

    /* More data than the header promises, raw and gzip'd: images and labels. */
    for (int gz = 0; gz < 2; gz++) {
        const char *pi = tmp_path(gz ? "long-images.gz" : "long-images");
        const char *pl = tmp_path(gz ? "long-labels.gz" : "long-labels");
        const char *pl1 = tmp_path(gz ? "labels-n1.gz" : "labels-n1");
        const char *pi1 = tmp_path(gz ? "images-n1.gz" : "images-n1");
        write_images(pi, gz, 0x803, NIMG - 1, IH, IW, sizeof g_pix); /* one image too many */
        write_labels(pl1, gz, 0x801, NIMG - 1, NIMG - 1);
        expect_error(pi, pl1, NNP_ERR_FORMAT, pi);
        write_images(pi1, gz, 0x803, NIMG - 1, IH, IW, sizeof g_pix - ID);
        write_labels(pl, gz, 0x801, NIMG - 1, NIMG); /* one label too many */
        expect_error(pi1, pl, NNP_ERR_FORMAT, pl);
        /* the exact files load */
        nnp_dataset d;
        ASSERT_TRUE(nnp_idx_load(pi1, pl1, 0, 0, SIZE_MAX, &d) == NNP_OK);
        ASSERT_EQ_INT(d.n, NIMG - 1);
        nnp_dataset_free(&d);
    }
}

static void test_paths(void)
{
    char im[4096], lb[4096];
    nnp_error_clear();
    ASSERT_STATUS(nnp_idx_paths(g_dir, "train", im, lb, sizeof im), NNP_ERR_IO);
    nnp_status s = nnp_idx_paths(g_dir, "train", im, lb, sizeof im);
    ASSERT_TRUE(s == NNP_ERR_IO && strstr(nnp_error_msg(), g_dir) != NULL);
    nnp_error_clear();

    /* Fashion-MNIST naming, gzip'd. */
    const char *a = tmp_path("train-images-idx3-ubyte.gz");
    const char *b = tmp_path("train-labels-idx1-ubyte.gz");
    write_images(a, 1, 0x803, NIMG, IH, IW, sizeof g_pix);
    write_labels(b, 1, 0x801, NIMG, NIMG);
    ASSERT_OK(nnp_idx_paths(g_dir, "train", im, lb, sizeof im));
    ASSERT_TRUE(strcmp(im, a) == 0 && strcmp(lb, b) == 0);
    nnp_dataset d;
    ASSERT_OK(nnp_idx_load(im, lb, 0, 0, SIZE_MAX, &d));
    check_samples(&d, 0, NIMG);
    nnp_dataset_free(&d);

    /* A trailing slash on the directory gives the same paths. */
    char dir_slash[128];
    snprintf(dir_slash, sizeof dir_slash, "%s/", g_dir);
    ASSERT_OK(nnp_idx_paths(dir_slash, "train", im, lb, sizeof im));
    ASSERT_TRUE(strcmp(im, a) == 0 && strcmp(lb, b) == 0);

    /* Images present, labels missing: error naming the directory. */
    a = tmp_path("t10k-images-idx3-ubyte");
    write_images(a, 0, 0x803, NIMG, IH, IW, sizeof g_pix);
    s = nnp_idx_paths(g_dir, "t10k", im, lb, sizeof im);
    ASSERT_TRUE(s == NNP_ERR_IO && strstr(nnp_error_msg(), g_dir) != NULL);
    nnp_error_clear();

    /* MNIST-style spelling for the labels, raw. */
    b = tmp_path("t10k-labels.idx1-ubyte");
    write_labels(b, 0, 0x801, NIMG, NIMG);
    ASSERT_OK(nnp_idx_paths(g_dir, "t10k", im, lb, sizeof im));
    ASSERT_TRUE(strcmp(im, a) == 0 && strcmp(lb, b) == 0);

    /* A buffer too small for the path is an argument error, not an overflow. */
    char small[8];
    ASSERT_STATUS(nnp_idx_paths(g_dir, "t10k", small, small, sizeof small), NNP_ERR_ARG);
}

static void test_normalize(void)
{
    const char *im = tmp_path("ok-images"), *lb = tmp_path("ok-labels");
    nnp_dataset d;
    ASSERT_OK(nnp_idx_load(im, lb, 0, 0, SIZE_MAX, &d));
    if (d.n != NIMG) {
        nnp_dataset_free(&d);
        return;
    }

    /* Moments of v/255 over all values held, population std. */
    double s = 0, ss = 0;
    for (int k = 0; k < NIMG * ID; k++)
        s += g_pix[k] / 255.0;
    double m = s / (NIMG * ID);
    for (int k = 0; k < NIMG * ID; k++)
        ss += (g_pix[k] / 255.0 - m) * (g_pix[k] / 255.0 - m);
    double sd = sqrt(ss / (NIMG * ID)), gm, gs;
    nnp_dataset_moments(&d, &gm, &gs);
    ASSERT_NEAR(gm, m, 1e-12);
    ASSERT_NEAR(gs, sd, 1e-12);

    d.mean = 0.25;
    d.std = 0.5;
    const uint32_t idx[3] = {6, 0, 3};
    float x[3 * ID];
    unsigned char y[3];
    memset(y, 0xff, sizeof y);
    nnp_dataset_gather(&d, idx, 3, x, y);
    for (int j = 0; j < 3; j++) {
        ASSERT_EQ_INT(y[j], g_lab[idx[j]]);
        for (int k = 0; k < ID; k++) {
            double want = (g_pix[idx[j] * ID + k] / 255.0 - 0.25) / 0.5;
            ASSERT_NEAR(x[j * ID + k], want, 1e-6);
        }
    }
    /* Spot values: pixel 0 -> -0.5, pixel 255 -> 1.5. */
    unsigned char save0 = d.pix[0], save1 = d.pix[1];
    d.pix[0] = 0;
    d.pix[1] = 255;
    const uint32_t i0 = 0;
    nnp_dataset_gather(&d, &i0, 1, x, NULL);
    ASSERT_NEAR(x[0], -0.5, 1e-7);
    ASSERT_NEAR(x[1], 1.5, 2e-7);
    d.pix[0] = save0;
    d.pix[1] = save1;

    nnp_dataset_slice(&d, 2, 3, x, y);
    for (int j = 0; j < 3; j++) {
        ASSERT_EQ_INT(y[j], g_lab[2 + j]);
        for (int k = 0; k < ID; k++) {
            double want = (g_pix[(2 + j) * ID + k] / 255.0 - 0.25) / 0.5;
            ASSERT_NEAR(x[j * ID + k], want, 1e-6);
        }
    }
    nnp_dataset_free(&d);
    ASSERT_TRUE(d.pix == NULL && d.y == NULL && d.n == 0);
    nnp_dataset_free(&d); /* twice is fine */

    /* Float samples: scale 1. */
    nnp_dataset f;
    memset(&f, 0, sizeof f);
    nnp_dataset_free(&f); /* zeroed struct is fine */
    float xf[2 * 2] = {1.0f, -3.0f, 10.0f, 0.5f};
    unsigned char yf[2] = {1, 0};
    f.n = 2;
    f.c = 1;
    f.h = 1;
    f.w = 2;
    f.xf = xf;
    f.y = yf;
    nnp_dataset_moments(&f, &gm, &gs);
    double fm = (1.0 - 3.0 + 10.0 + 0.5) / 4;
    double fv = ((1 - fm) * (1 - fm) + (-3 - fm) * (-3 - fm) + (10 - fm) * (10 - fm) +
                 (0.5 - fm) * (0.5 - fm)) / 4;
    ASSERT_NEAR(gm, fm, 1e-12);
    ASSERT_NEAR(gs, sqrt(fv), 1e-12);
    f.mean = 2.0;
    f.std = 4.0;
    const uint32_t fi[2] = {1, 0};
    float xo[4];
    nnp_dataset_gather(&f, fi, 2, xo, y);
    ASSERT_NEAR(xo[0], (10.0 - 2.0) / 4.0, 1e-7);
    ASSERT_NEAR(xo[1], (0.5 - 2.0) / 4.0, 1e-7);
    ASSERT_NEAR(xo[2], (1.0 - 2.0) / 4.0, 1e-7);
    ASSERT_NEAR(xo[3], (-3.0 - 2.0) / 4.0, 1e-7);
    ASSERT_EQ_INT(y[0], 0);
    ASSERT_EQ_INT(y[1], 1);

    /* Empty dataset: moments 0, 0. */
    f.n = 0;
    nnp_dataset_moments(&f, &gm, &gs);
    ASSERT_TRUE(gm == 0.0 && gs == 0.0);
}

static void test_split(void)
{
    for (int p = 1; p <= 5; p++)
        for (size_t count = 0; count <= 50; count++) {
            size_t prev = 0, mn = SIZE_MAX, mx = 0;
            int ok = 1;
            for (int r = 0; r < p; r++) {
                size_t lo, hi;
                nnp_split(count, p, r, &lo, &hi);
                ok &= lo == prev && hi >= lo;
                prev = hi;
                if (hi - lo < mn)
                    mn = hi - lo;
                if (hi - lo > mx)
                    mx = hi - lo;
            }
            ok &= prev == count && mx - mn <= 1;
            if (!ok)
                TEST_FAIL_("nnp_split(%zu, %d, .) does not partition evenly", count, p);
            nnp_test_checks++;
        }
    /* No overflow for counts near SIZE_MAX. */
    size_t lo, hi;
    nnp_split(SIZE_MAX, 3, 2, &lo, &hi);
    ASSERT_TRUE(hi == SIZE_MAX && lo == SIZE_MAX - SIZE_MAX / 3);
    nnp_split(SIZE_MAX, 7, 3, &lo, &hi);
    ASSERT_TRUE(hi - lo == SIZE_MAX / 7 || hi - lo == SIZE_MAX / 7 + 1);

    ASSERT_EQ_INT(nnp_batches_per_epoch(0, 10), 0);
    ASSERT_EQ_INT(nnp_batches_per_epoch(1, 10), 1);
    ASSERT_EQ_INT(nnp_batches_per_epoch(10, 10), 1);
    ASSERT_EQ_INT(nnp_batches_per_epoch(11, 10), 2);
    ASSERT_EQ_INT(nnp_batches_per_epoch(103, 10), 11);
    ASSERT_EQ_INT(nnp_batches_per_epoch(60000, 128), 469);
    ASSERT_TRUE(nnp_batches_per_epoch(SIZE_MAX, 2) == SIZE_MAX / 2 + 1);
}

/* The sample sequence an epoch visits when p ranks each take their nnp_split slice of
 * every global batch, concatenated rank by rank within each batch. */
static void epoch_sequence(const uint32_t *perm, size_t N, size_t G, int p, uint32_t *seq)
{
    size_t nb = nnp_batches_per_epoch(N, G), k = 0;
    for (size_t b = 0; b < nb; b++) {
        size_t start = b * G, count = (start + G <= N ? G : N - start);
        for (int r = 0; r < p; r++) {
            size_t lo, hi;
            nnp_split(count, p, r, &lo, &hi);
            for (size_t i = lo; i < hi; i++)
                seq[k++] = perm[start + i];
        }
    }
    ASSERT_EQ_INT(k, N);
}

static void test_order(void)
{
    enum { N = 103, G = 10 };
    uint32_t perm[N], perm2[N], ref[N], seq[N];
    const uint64_t seed = 12345;

    for (int epoch = 0; epoch < 3; epoch++) {
        nnp_epoch_permutation(seed, epoch, perm, N);
        epoch_sequence(perm, N, G, 1, ref);
        int seen[N] = {0}, once = 1;
        for (int i = 0; i < N; i++) {
            if (ref[i] >= N || seen[ref[i]]++)
                once = 0;
        }
        ASSERT_TRUE(once);
        for (int p = 2; p <= 4; p++) {
            epoch_sequence(perm, N, G, p, seq);
            ASSERT_TRUE(memcmp(seq, ref, sizeof seq) == 0);
        }
    }

    /* Depends on (seed, epoch) only. */
    nnp_epoch_permutation(seed, 5, perm, N);
    nnp_epoch_permutation(seed, 5, perm2, N);
    ASSERT_TRUE(memcmp(perm, perm2, sizeof perm) == 0);
    nnp_epoch_permutation(seed, 6, perm2, N);
    ASSERT_TRUE(memcmp(perm, perm2, sizeof perm) != 0);
    nnp_epoch_permutation(seed + 1, 5, perm2, N);
    ASSERT_TRUE(memcmp(perm, perm2, sizeof perm) != 0);

    /* It is the documented stream: (seed, NNP_STREAM_SHUFFLE + (epoch << 8)). */
    nnp_rng r;
    nnp_rng_seed(&r, seed, NNP_STREAM_SHUFFLE + ((uint64_t)5 << 8));
    nnp_rng_permutation(&r, perm2, N);
    ASSERT_TRUE(memcmp(perm, perm2, sizeof perm) == 0);
}

/* --shuffle block:K:W: a permutation, a function of (seed, epoch); every window of the
 * order holds exactly the samples of W whole blocks (the last window fewer). */
static void test_block_order(void)
{
    enum { N = 103, K = 10, W = 3, NB = (N + K - 1) / K };
    uint32_t perm[N], perm2[N];
    const nnp_shuffle sh = {K, W}, full = {0, 0};
    for (int epoch = 0; epoch < 4; epoch++) {
        nnp_epoch_order(99, epoch, &sh, perm, N);
        int seen[N] = {0}, once = 1;
        for (int i = 0; i < N; i++)
            if (perm[i] >= N || seen[perm[i]]++)
                once = 0;
        ASSERT_TRUE(once);
        /* walk the windows: W distinct blocks each, every block whole inside one window */
        int pos = 0, windows = 0, whole = 1;
        int block_window[NB];
        for (int b = 0; b < NB; b++)
            block_window[b] = -1;
        while (pos < N) {
            int blocks[W], nb = 0, n = 0;
            for (int i = pos; i < N && nb <= W; i++) {
                int b = (int)perm[i] / K, known = 0;
                for (int j = 0; j < nb; j++)
                    known |= blocks[j] == b;
                if (!known) {
                    if (nb == W)
                        break;
                    blocks[nb++] = b;
                }
                n++;
            }
            int want = 0;
            for (int j = 0; j < nb; j++) {
                want += blocks[j] == NB - 1 ? N - (NB - 1) * K : K;
                whole &= block_window[blocks[j]] == -1;
                block_window[blocks[j]] = windows;
            }
            whole &= n == want;
            pos += n;
            windows++;
        }
        ASSERT_TRUE(whole);
        ASSERT_EQ_INT(windows, (NB + W - 1) / W);
        /* the samples of a window are shuffled, not left in block order */
        int in_order = 1;
        for (int i = 1; i < K * W; i++)
            in_order &= perm[i] == perm[i - 1] + 1;
        ASSERT_TRUE(!in_order);
    }
    nnp_epoch_order(99, 2, &sh, perm, N);
    nnp_epoch_order(99, 2, &sh, perm2, N);
    ASSERT_TRUE(memcmp(perm, perm2, sizeof perm) == 0);
    nnp_epoch_order(99, 3, &sh, perm2, N);
    ASSERT_TRUE(memcmp(perm, perm2, sizeof perm) != 0);
    /* full: the uniform permutation, unchanged */
    nnp_epoch_order(99, 2, &full, perm, N);
    nnp_epoch_permutation(99, 2, perm2, N);
    ASSERT_TRUE(memcmp(perm, perm2, sizeof perm) == 0);
}

/* nnp_step_samples (the streaming reader's plan): over the ranks, in rank order, the global
 * batch of the step from the epoch's order; whole units with --deterministic's micro-shards;
 * the last, short batch of an epoch included. */
static void test_step_samples(void)
{
    enum { N = 103, G = 10 };
    const nnp_shuffle sh = {8, 2};
    uint32_t perm[N], ref[N], idx[G];
    int perm_epoch = -1;
    for (size_t unit = 0; unit <= 4; unit += 4)
        for (int p = 1; p <= 4; p++)
            for (int64_t step = 0; step < 3 * 11; step++) {
                const int epoch = (int)(step / 11), bi = (int)(step % 11);
                nnp_epoch_order(7, epoch, &sh, ref, N);
                const int g0 = bi * G, gc = g0 + G <= N ? G : N - g0;
                int got = 0, same = 1, units = 1;
                for (int r = 0; r < p; r++) {
                    int B = nnp_step_samples(7, &sh, N, G, unit, p, r, step, perm, &perm_epoch,
                                             idx);
                    for (int i = 0; i < B; i++)
                        same &= idx[i] == ref[g0 + got + i];
                    if (unit && got + B < gc)
                        units &= (got + B) % (int)unit == 0;
                    got += B;
                }
                ASSERT_TRUE(same && units);
                ASSERT_EQ_INT(got, gc);
            }
}

static void test_fashion_mnist(void)
{
    const char *dir = "/usr/share/datasets/fashion-mnist";
    if (access(dir, F_OK) != 0) {
        fprintf(stderr, "skipped: %s does not exist\n", dir);
        return;
    }
    char im[4096], lb[4096];
    ASSERT_OK(nnp_idx_paths(dir, "train", im, lb, sizeof im));
    nnp_dataset d;
    ASSERT_OK(nnp_idx_load(im, lb, 100, 0, SIZE_MAX, &d));
    ASSERT_EQ_INT(d.n, 100);
    ASSERT_EQ_INT(d.h, 28);
    ASSERT_EQ_INT(d.w, 28);
    ASSERT_EQ_INT(d.c, 1);
    ASSERT_EQ_INT(d.n_total, 60000);
    ASSERT_EQ_INT(d.n_classes, 10);
    int ok = d.y != NULL;
    for (size_t i = 0; ok && i < d.n; i++)
        ok &= d.y[i] < 10;
    ASSERT_TRUE(ok);
    nnp_dataset_free(&d);

    ASSERT_OK(nnp_idx_paths(dir, "t10k", im, lb, sizeof im));
    ASSERT_OK(nnp_idx_load(im, lb, 0, 9990, SIZE_MAX, &d));
    ASSERT_EQ_INT(d.n, 10);
    ASSERT_EQ_INT(d.first, 9990);
    ASSERT_EQ_INT(d.n_total, 10000);
    nnp_dataset_free(&d);
}

/* Speed-weighted shares: a partition of G into [1, cap] pieces whose largest finishing
 * time share/speed cannot be lowered by moving one item, and contiguous slices of any
 * (partial) batch under them. */
static void test_split_weighted(void)
{
    size_t share[8];
    /* equal speeds: the even split */
    double eq[5] = {3, 3, 3, 3, 3};
    nnp_split_weighted(64, 5, eq, 64, share);
    for (int r = 0; r < 5; r++)
        ASSERT_TRUE(share[r] == 12 || share[r] == 13);
    /* 2:1 speeds take 2:1 shares */
    double two[2] = {2000.0, 1000.0};
    nnp_split_weighted(300, 2, two, 300, share);
    ASSERT_TRUE(share[0] == 200 && share[1] == 100);
    /* the cap binds: the fast rank gets cap, the rest is shared by the others */
    double capd[3] = {100, 1, 1};
    nnp_split_weighted(30, 3, capd, 12, share);
    ASSERT_TRUE(share[0] == 12 && share[1] == 9 && share[2] == 9);
    /* a rank that is nearly stopped still gets one item */
    double stall[3] = {1e-9, 5, 5};
    nnp_split_weighted(10, 3, stall, 10, share);
    ASSERT_TRUE(share[0] == 1 && share[1] + share[2] == 9);

    nnp_rng rng;
    nnp_rng_seed(&rng, 7, NNP_STREAM_SHUFFLE);
    for (int trial = 0; trial < 300; trial++) {
        int p = 1 + trial % 8;
        size_t G = (size_t)p + (size_t)(nnp_rng_below(&rng, 200));
        size_t cap = (G + (size_t)p - 1) / (size_t)p * 2;
        double sp[8];
        for (int r = 0; r < p; r++)
            sp[r] = 0.2 + (nnp_rng_below(&rng, 1000)) * 1e-2;
        nnp_split_weighted(G, p, sp, cap, share);
        size_t sum = 0;
        double tmax = 0;
        int ok = 1;
        for (int r = 0; r < p; r++) {
            ok &= share[r] >= 1 && share[r] <= cap;
            sum += share[r];
            if (share[r] / sp[r] > tmax)
                tmax = share[r] / sp[r];
        }
        ok &= sum == G;
        /* no single move lowers the makespan: unless the slowest rank is down to its one
         * item, every rank that could take one more would then finish no earlier */
        int slowest = 0;
        for (int r = 0; r < p; r++)
            if (share[r] / sp[r] >= tmax)
                slowest = r;
        for (int r = 0; r < p; r++)
            if (share[r] < cap && share[slowest] > 1)
                ok &= (share[r] + 1) / sp[r] >= tmax * (1 - 1e-12);
        /* slices of every batch size up to G partition it, and the full batch is the shares */
        for (size_t count = 0; count <= G && ok; count += 1 + G / 7) {
            size_t prev = 0;
            for (int r = 0; r < p; r++) {
                size_t lo, hi;
                nnp_split_shares(count, G, share, r, &lo, &hi);
                ok &= lo == prev && hi >= lo && hi - lo <= share[r];
                prev = hi;
            }
            ok &= prev == count;
        }
        for (int r = 0; r < p; r++) {
            size_t lo, hi;
            nnp_split_shares(G, G, share, r, &lo, &hi);
            ok &= hi - lo == share[r];
        }
        if (!ok)
            TEST_FAIL_("nnp_split_weighted(G=%zu, p=%d) trial %d", G, p, trial);
        nnp_test_checks++;
    }
}

/* --val-split: the held-out set is a function of (seed, N, n_val); the training set keeps
 * exactly the other samples, in order, and the validation shards of p simulated ranks
 * put together are the same held-out samples at every p, disjoint from the training set. */
static void test_holdout(void)
{
    enum { N = 50, D = 2, NV = 13 };
    unsigned char pix[N * D], lab[N], is_val[N], is_val2[N];
    uint32_t perm[N];
    for (int i = 0; i < N; i++) {
        pix[i * D] = (unsigned char)i; /* the sample's original index */
        pix[i * D + 1] = (unsigned char)(200 - i);
        lab[i] = (unsigned char)(i % 10);
    }
    nnp_holdout_mask(77, N, NV, perm, is_val);
    int nv = 0;
    for (int i = 0; i < N; i++)
        nv += is_val[i];
    ASSERT_EQ_INT(nv, NV);
    nnp_holdout_mask(77, N, NV, perm, is_val2);
    ASSERT_TRUE(memcmp(is_val, is_val2, N) == 0);
    nnp_holdout_mask(78, N, NV, perm, is_val2);
    ASSERT_TRUE(memcmp(is_val, is_val2, N) != 0);

    for (int p = 1; p <= 4; p++) {
        int seen_val[N] = {0};
        int got = 0;
        for (int r = 0; r < p; r++) {
            nnp_dataset d = {0}, v = {0};
            d.n = N;
            d.c = 1, d.h = 1, d.w = D;
            d.n_classes = 10;
            d.mean = 0.25, d.std = 2;
            d.pix = malloc(sizeof pix);
            d.y = malloc(sizeof lab);
            memcpy(d.pix, pix, sizeof pix);
            memcpy(d.y, lab, sizeof lab);
            size_t lo, hi;
            nnp_split(NV, p, r, &lo, &hi);
            ASSERT_OK(nnp_dataset_holdout(&d, is_val, lo, hi, &v));
            /* the training set: every sample not held out, in index order, intact */
            ASSERT_EQ_INT((int)d.n, N - NV);
            int k = 0;
            for (int i = 0; i < N; i++) {
                if (is_val[i])
                    continue;
                ASSERT_EQ_INT(d.pix[k * D], i);
                ASSERT_EQ_INT(d.pix[k * D + 1], 200 - i);
                ASSERT_EQ_INT(d.y[k], i % 10);
                k++;
            }
            /* this rank's validation shard: held-out samples only, in index order */
            ASSERT_EQ_INT((int)v.n, (int)(hi - lo));
            ASSERT_TRUE(v.mean == 0.25 && v.std == 2 && v.n_classes == 10 && v.w == D);
            int prev = -1;
            for (size_t j = 0; j < v.n; j++) {
                int i = v.pix[j * D];
                ASSERT_TRUE(i > prev && is_val[i] && v.pix[j * D + 1] == 200 - i &&
                            v.y[j] == i % 10);
                for (size_t t = 0; t < d.n; t++)
                    ASSERT_TRUE(d.pix[t * D] != i); /* disjoint from the training set */
                seen_val[i]++;
                prev = i;
                got++;
            }
            nnp_dataset_free(&d);
            nnp_dataset_free(&v);
        }
        ASSERT_EQ_INT(got, NV);
        for (int i = 0; i < N; i++)
            ASSERT_EQ_INT(seen_val[i], is_val[i]);
    }
}

int main(void)
{
    for (int k = 0; k < NIMG * ID; k++)
        g_pix[k] = (unsigned char)((k * 37 + 11) & 255);
    g_pix[5] = 0;
    g_pix[6] = 255;

    snprintf(g_dir, sizeof g_dir, "/tmp/nnp_test_data_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_read();
    test_errors();
    test_paths();
    test_normalize();
    test_split();
    test_split_weighted();
    test_order();
    test_block_order();
    test_step_samples();
    test_holdout();
    test_fashion_mnist();

    for (int i = 0; i < g_nfiles; i++)
        (void)remove(g_files[i]); /* some names were never created */
    if (rmdir(g_dir) != 0) {
        perror(g_dir);
        nnp_test_failures++;
    }
    TEST_MAIN_END();
}
