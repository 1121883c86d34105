/* test_ckpt.c - HDF5 checkpoints and HDF5 input datasets.
 *
 * Checkpoints: bit-exact round trips (parameters, optimizer buffers, preconditioner arrays,
 * every meta field) for lenet and an mlp with SGD-momentum and Adam; the atomic protocol
 * (no .tmp after success; failed writes leave the previous file intact and no .tmp behind,
 * including one refused by the file size limit, forced with RLIMIT_FSIZE); each kind of
 * bad file with its own message (truncated, not HDF5, wrong version, wrong model spec,
 * wrong architecture, missing dataset, wrong dtype, wrong shape, optimizer and
 * preconditioner mismatch), with the caller's state untouched by a rejected file;
 * --keep rotation and the latest pointer.
 * HDF5 datasets: uint8 (N,H,W) and float32 (N,C,H,W) files written here with the HDF5 API,
 * shards [lo, hi) compared element by element, and the reader's error cases.
 *
 * Everything lives in a fresh directory under /tmp, removed at the end.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* The HDF5 include directory is private to the library target; Debian's serial headers
 * are also reachable by their full path. */
#if defined(__has_include)
#if __has_include(<hdf5.h>)
#include <hdf5.h>
#elif __has_include(<hdf5/serial/hdf5.h>)
#include <hdf5/serial/hdf5.h>
#else
#include <hdf5.h>
#endif
#else
#include <hdf5.h>
#endif

#include "nnprec/ckpt.h"
#include "nnprec/h5data.h"
#include "nnprec/hash.h"
#include "nnprec/net.h"
#include "nnprec/optim.h"
#include "nnprec/precond.h"
#include "test_util.h"

static char g_dir[64];

static const char *P(const char *name)
{
    static char bufs[16][512];
    static int next = 0;
    char *b = bufs[next];
    next = (next + 1) % 16;
    snprintf(b, 512, "%s/%s", g_dir, name);
    return b;
}

/* Assert that expr returns `want` and that the message contains `sub`. */
#define EXPECT_ERR(expr, want, sub)                                                     \
    do {                                                                                \
        nnp_error_clear();                                                              \
        nnp_status s_ = (expr);                                                         \
        nnp_test_checks++;                                                              \
        if (s_ != (want) || !strstr(nnp_error_msg(), (sub)))                            \
            TEST_FAIL_("%s returned %s (want %s) with message '%s' (want '%s')", #expr, \
                       nnp_status_str(s_), nnp_status_str(want), nnp_error_msg(), (sub)); \
        nnp_error_clear();                                                              \
    } while (0)

static int exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

static uint64_t g_lcg = 0x9E3779B97F4A7C15ull;
static uint32_t rnd32(void)
{
    g_lcg = g_lcg * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(g_lcg >> 32);
}
static float rndf(void) { return ((float)rnd32() / 4294967296.0f - 0.5f) * 3.0f; }
static double rndd(void) { return (double)rnd32() / 4294967296.0 + 1e-3; }

/* A model with optimizer and preconditioner state; fill = 1: random contents, 0: zeros. */
typedef struct {
    nnp_net *net;
    nnp_optim opt;
    nnp_precond pc;
} model;

static int make(model *m, const char *spec, nnp_act act, nnp_opt_kind kind, double momentum,
                nnp_precond_mode mode, int fill)
{
    memset(m, 0, sizeof *m);
    nnp_status s = nnp_net_create(spec, (nnp_shape){1, 28, 28}, act, 2, &m->net);
    if (s != NNP_OK) {
        TEST_FAIL_("nnp_net_create(%s): %s", spec, nnp_error_msg());
        return -1;
    }
    nnp_optim_cfg oc = {.kind = kind, .momentum = momentum, .dampening = 0,
                        .weight_decay = 1e-4, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                        .lars_eta = 0.001, .lamb_clip = 10, .exclude_bias = 1};
    nnp_precond_cfg pcfg;
    nnp_precond_defaults(&pcfg);
    pcfg.mode = mode;
    if (nnp_optim_init(&m->opt, &oc, m->net->n_params) != NNP_OK ||
        nnp_precond_init(&m->pc, &pcfg, m->net) != NNP_OK) {
        TEST_FAIL_("init: %s", nnp_error_msg());
        return -1;
    }
    size_t n = m->net->n_params;
    for (size_t i = 0; i < n; i++) {
        m->net->params[i] = fill ? rndf() : 0.0f;
        if (m->opt.buf1)
            m->opt.buf1[i] = fill ? rndf() : 0.0f;
        if (m->opt.buf2)
            m->opt.buf2[i] = fill ? rndf() * rndf() : 0.0f;
    }
    m->opt.t = fill ? 1234 : 0;
    for (int j = 0; j < m->pc.n; j++) {
        m->pc.sigma[j] = fill ? rndd() : 0;
        m->pc.gain[j] = fill ? rndd() : 0;
        m->pc.prec[j] = fill ? rndd() : 0;
        m->pc.scale[j] = fill ? rndd() : 0;
    }
    m->pc.updated_at = fill ? 1200 : -1;
    return 0;
}

static void unmake(model *m)
{
    nnp_precond_free(&m->pc);
    nnp_optim_free(&m->opt);
    nnp_net_free(m->net);
    m->net = NULL;
}

static void fill_meta(nnp_ckpt_meta *m)
{
    memset(m, 0, sizeof *m);
    m->step = 1234;
    m->epoch = 3;
    m->pos_in_epoch = 77;
    m->seed = 0xFEDCBA9876543210ull; /* above INT64_MAX: stored unsigned */
    m->rng_counter = 987654321012345ll;
    m->norm_mean = 0.28604059698879553;
    m->norm_std = 0.35302424451492237;
    m->global_batch = 64;
    m->world_size = 3;
    m->wall_s = 12.3456789;
    m->train_samples = 60000;
    m->val_split = 5000;
    m->noise_scale = 1;
    m->noise_ema_g2 = 0.012345678901234567;
    m->noise_ema_tr = -3.5e-7; /* an average of estimates may be negative */
    m->noise_steps = 4321;
    size_t k = 0;
    for (int i = 0; i < 200 && k < sizeof m->options - 64; i++)
        k += (size_t)snprintf(m->options + k, sizeof m->options - k, "opt%d=value %d\n", i,
                              i * i);
}

static int same_model(const model *a, const model *b)
{
    size_t n = a->net->n_params;
    int ok = a->net->n_params == b->net->n_params &&
             memcmp(a->net->params, b->net->params, n * sizeof(float)) == 0;
    ok = ok && (!a->opt.buf1 || memcmp(a->opt.buf1, b->opt.buf1, n * sizeof(float)) == 0);
    ok = ok && (!a->opt.buf2 || memcmp(a->opt.buf2, b->opt.buf2, n * sizeof(float)) == 0);
    ok = ok && a->opt.t == b->opt.t && a->pc.updated_at == b->pc.updated_at;
    size_t t = (size_t)a->pc.n * sizeof(double);
    ok = ok && memcmp(a->pc.sigma, b->pc.sigma, t) == 0 &&
         memcmp(a->pc.gain, b->pc.gain, t) == 0 && memcmp(a->pc.prec, b->pc.prec, t) == 0 &&
         memcmp(a->pc.scale, b->pc.scale, t) == 0;
    return ok;
}

static int all_zero(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (x[i] != 0.0f)
            return 0;
    return 1;
}

static void check_meta(const nnp_ckpt_meta *a, const nnp_ckpt_meta *b, const char *spec)
{
    ASSERT_EQ_INT(a->step, b->step);
    ASSERT_EQ_INT(a->epoch, b->epoch);
    ASSERT_EQ_INT(a->pos_in_epoch, b->pos_in_epoch);
    ASSERT_TRUE(a->seed == b->seed);
    ASSERT_EQ_INT(a->rng_counter, b->rng_counter);
    ASSERT_TRUE(memcmp(&a->norm_mean, &b->norm_mean, sizeof(double)) == 0);
    ASSERT_TRUE(memcmp(&a->norm_std, &b->norm_std, sizeof(double)) == 0);
    ASSERT_EQ_INT(a->global_batch, b->global_batch);
    ASSERT_EQ_INT(a->world_size, b->world_size);
    ASSERT_TRUE(memcmp(&a->wall_s, &b->wall_s, sizeof(double)) == 0);
    ASSERT_EQ_INT(a->train_samples, b->train_samples);
    ASSERT_EQ_INT(a->val_split, b->val_split);
    ASSERT_EQ_INT(a->noise_scale, b->noise_scale);
    ASSERT_TRUE(memcmp(&a->noise_ema_g2, &b->noise_ema_g2, sizeof(double)) == 0);
    ASSERT_TRUE(memcmp(&a->noise_ema_tr, &b->noise_ema_tr, sizeof(double)) == 0);
    ASSERT_EQ_INT(a->noise_steps, b->noise_steps);
    ASSERT_TRUE(strcmp(a->options, b->options) == 0);
    ASSERT_TRUE(strcmp(b->model, spec) == 0);
    ASSERT_TRUE(strlen(b->created) == 20 && b->created[19] == 'Z');
    ASSERT_TRUE(b->version[0] != '\0');
}

/* ---- round trips ----------------------------------------------------------------------- */

static void test_round_trip(const char *spec, nnp_act act, nnp_opt_kind kind, double mom,
                            nnp_precond_mode mode, const char *file)
{
    model a, b;
    if (make(&a, spec, act, kind, mom, mode, 1) || make(&b, spec, act, kind, mom, mode, 0))
        return;
    nnp_ckpt_meta meta, got;
    fill_meta(&meta);
    const char *path = P(file);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    ASSERT_OK(nnp_ckpt_write(path, a.net, &a.opt, &a.pc, &meta));
    ASSERT_TRUE(exists(path));
    ASSERT_TRUE(!exists(tmp));
    memset(&got, 0, sizeof got);
    if (kind == NNP_OPT_LARS) { /* norms kept from a step of the parameters read over */
        ASSERT_OK(nnp_optim_keep_norms(&b.opt, b.net->n_tensors));
        b.opt.w2_t = b.opt.t;
    }
    ASSERT_OK(nnp_ckpt_read(path, b.net, &b.opt, &b.pc, &got));
    ASSERT_TRUE(same_model(&a, &b));
    check_meta(&meta, &got, spec);
    ASSERT_TRUE(b.opt.w2_t == -1); /* the read parameters: LARS's kept norms are stale */

    /* read_meta and the option lookup */
    nnp_ckpt_meta m2;
    ASSERT_OK(nnp_ckpt_read_meta(path, &m2));
    ASSERT_TRUE(strcmp(m2.model, spec) == 0);
    char v[64];
    ASSERT_EQ_INT(nnp_ckpt_option(&m2, "opt12", v, sizeof v), 1);
    ASSERT_TRUE(strcmp(v, "value 144") == 0);
    ASSERT_EQ_INT(nnp_ckpt_option(&m2, "opt1", v, sizeof v), 1);
    ASSERT_TRUE(strcmp(v, "value 1") == 0);
    ASSERT_EQ_INT(nnp_ckpt_option(&m2, "nope", v, sizeof v), 0);

    /* parameters only (eval): optimizer and preconditioner skipped */
    model c;
    if (make(&c, spec, act, kind, mom, mode, 0) == 0) {
        ASSERT_OK(nnp_ckpt_read(path, c.net, NULL, NULL, NULL));
        ASSERT_TRUE(memcmp(c.net->params, a.net->params, a.net->n_params * sizeof(float)) == 0);
        unmake(&c);
    }
    /* overwrite in place: the new contents replace the old */
    a.net->params[0] += 1.0f;
    meta.step++;
    ASSERT_OK(nnp_ckpt_write(path, a.net, &a.opt, &a.pc, &meta));
    ASSERT_OK(nnp_ckpt_read(path, b.net, &b.opt, &b.pc, &got));
    ASSERT_TRUE(same_model(&a, &b));
    ASSERT_EQ_INT(got.step, meta.step);
    ASSERT_TRUE(!exists(tmp));
    unmake(&a);
    unmake(&b);
}

/* BatchNorm: weight, bias, running_mean, running_var and num_batches_tracked under /bnK,
 * read back exactly; a missing buffer is named. */
static void test_bn_buffers(void)
{
    const char *spec = "seq:1x28x28/conv:4:3/bn/relu/maxpool:2/flatten/dense:16/bn/dropout:0.5/dense:10";
    model a, b;
    if (make(&a, spec, NNP_ACT_RELU, NNP_OPT_SGD, 0.9, NNP_PRECOND_NONE, 1) ||
        make(&b, spec, NNP_ACT_RELU, NNP_OPT_SGD, 0.9, NNP_PRECOND_NONE, 0))
        return;
    ASSERT_EQ_INT(a.net->n_bn, 2);
    for (size_t i = 0; i < a.net->n_running; i++)
        a.net->running[i] = 0.25f + (float)i / 7.0f;
    a.net->tracked[0] = 12345;
    a.net->tracked[1] = 1LL << 40;
    nnp_ckpt_meta meta;
    fill_meta(&meta);
    const char *path = P("bn.h5");
    ASSERT_OK(nnp_ckpt_write(path, a.net, &a.opt, &a.pc, &meta));
    ASSERT_OK(nnp_ckpt_read(path, b.net, &b.opt, &b.pc, NULL));
    ASSERT_TRUE(same_model(&a, &b));
    ASSERT_TRUE(memcmp(a.net->running, b.net->running, a.net->n_running * sizeof(float)) == 0);
    ASSERT_TRUE(b.net->tracked[0] == 12345 && b.net->tracked[1] == 1LL << 40);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_TRUE(f >= 0);
    if (f >= 0) {
        H5Ldelete(f, "/bn2/running_var", H5P_DEFAULT);
        H5Fclose(f);
    }
    b.net->tracked[0] = 7;
    EXPECT_ERR(nnp_ckpt_read(path, b.net, &b.opt, &b.pc, NULL), NNP_ERR_FORMAT,
               "dataset /bn2/running_var missing");
    ASSERT_TRUE(b.net->tracked[0] == 7); /* a failed read changes nothing */
    unmake(&a);
    unmake(&b);
}

/* ---- failed writes --------------------------------------------------------------------- */

static void test_failed_writes(void)
{
    model a, b;
    if (make(&a, "lenet", NNP_ACT_RELU, NNP_OPT_SGD, 0.9, NNP_PRECOND_STATIC, 1) ||
        make(&b, "lenet", NNP_ACT_RELU, NNP_OPT_SGD, 0.9, NNP_PRECOND_STATIC, 0))
        return;
    nnp_ckpt_meta meta;
    fill_meta(&meta);

    /* nonexistent directory */
    EXPECT_ERR(nnp_ckpt_write(P("no/such/dir/c.h5"), a.net, &a.opt, &a.pc, &meta), NNP_ERR_IO,
               "no/such/dir/c.h5");
    EXPECT_ERR(nnp_ckpt_write(P("no/such/dir/c.h5"), a.net, &a.opt, &a.pc, &meta), NNP_ERR_IO,
               "No such file or directory");

    /* the target is a directory: the rename fails, the .tmp is removed */
    mkdir(P("isdir.h5"), 0755);
    EXPECT_ERR(nnp_ckpt_write(P("isdir.h5"), a.net, &a.opt, &a.pc, &meta), NNP_ERR_IO, "rename");
    ASSERT_TRUE(!exists(P("isdir.h5.tmp")));

    /* a good file, then a write that cannot even create its .tmp: the old file stays */
    const char *good = P("good.h5");
    ASSERT_OK(nnp_ckpt_write(good, a.net, &a.opt, &a.pc, &meta));
    float p0 = a.net->params[0];
    a.net->params[0] = p0 + 1.0f;
    mkdir(P("good.h5.tmp"), 0755);
    EXPECT_ERR(nnp_ckpt_write(good, a.net, &a.opt, &a.pc, &meta), NNP_ERR_IO, "good.h5");
    rmdir(P("good.h5.tmp"));
    ASSERT_OK(nnp_ckpt_read(good, b.net, &b.opt, &b.pc, NULL));
    ASSERT_TRUE(b.net->params[0] == p0);

    /* a write the file system refuses (file size limit: EFBIG, as a full disk gives ENOSPC) */
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 64 * 1024; /* lenet's parameters alone are 180 kB */
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    if (setrlimit(RLIMIT_FSIZE, &lim) == 0) {
        nnp_error_clear();
        nnp_status s = nnp_ckpt_write(good, a.net, &a.opt, &a.pc, &meta);
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", nnp_error_msg());
        nnp_error_clear();
        setrlimit(RLIMIT_FSIZE, &old);
        ASSERT_EQ_INT(s, NNP_ERR_IO);
        if (!strstr(msg, "good.h5") || !strstr(msg, "File too large"))
            TEST_FAIL_("file size limit message: '%s'", msg);
        ASSERT_TRUE(!exists(P("good.h5.tmp")));
        memset(b.net->params, 0, b.net->n_params * sizeof(float));
        ASSERT_OK(nnp_ckpt_read(good, b.net, &b.opt, &b.pc, NULL));
        ASSERT_TRUE(b.net->params[0] == p0);
        ASSERT_TRUE(memcmp(b.net->params + 1, a.net->params + 1,
                           (a.net->n_params - 1) * sizeof(float)) == 0);
    } else {
        fprintf(stderr, "note: setrlimit(RLIMIT_FSIZE) refused; half-way failure not tested\n");
    }
    signal(SIGXFSZ, prev);
    a.net->params[0] = p0;
    unmake(&a);
    unmake(&b);
}

/* ---- bad files ------------------------------------------------------------------------- */

static int copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    if (!in || !out) {
        if (in)
            fclose(in);
        if (out)
            fclose(out);
        return -1;
    }
    char buf[65536];
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, in)) > 0)
        fwrite(buf, 1, k, out);
    fclose(in);
    fclose(out);
    return 0;
}

static hid_t open_rw(const char *path) { return H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT); }

static void set_version(const char *path, int64_t v)
{
    hid_t f = open_rw(path);
    hid_t a = H5Aopen(f, "format_version", H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    H5Fclose(f);
}

static void replace_dataset(const char *path, const char *name, hid_t type, int ndim,
                            const hsize_t *dims)
{
    hid_t f = open_rw(path);
    H5Ldelete(f, name, H5P_DEFAULT);
    hid_t sp = H5Screate_simple(ndim, dims, NULL);
    hid_t d = H5Dcreate2(f, name, type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(d);
    H5Sclose(sp);
    H5Fclose(f);
}

static void test_bad_files(void)
{
    model a, b;
    if (make(&a, "lenet", NNP_ACT_RELU, NNP_OPT_ADAM, 0, NNP_PRECOND_DYNAMIC, 1) ||
        make(&b, "lenet", NNP_ACT_RELU, NNP_OPT_ADAM, 0, NNP_PRECOND_DYNAMIC, 0))
        return;
    nnp_ckpt_meta meta;
    fill_meta(&meta);
    const char *good = P("base.h5"), *bad = P("bad.h5");
    ASSERT_OK(nnp_ckpt_write(good, a.net, &a.opt, &a.pc, &meta));

    EXPECT_ERR(nnp_ckpt_read(P("missing.h5"), b.net, &b.opt, &b.pc, NULL), NNP_ERR_IO,
               "missing.h5");

    /* truncated to half */
    copy_file(good, bad);
    struct stat st;
    stat(bad, &st);
    ASSERT_TRUE(truncate(bad, st.st_size / 2) == 0);
    EXPECT_ERR(nnp_ckpt_read(bad, b.net, &b.opt, &b.pc, NULL), NNP_ERR_FORMAT,
               "not a valid HDF5 file");
    EXPECT_ERR(nnp_ckpt_info(bad, stdout), NNP_ERR_FORMAT, "not a valid HDF5 file");

    /* not HDF5 at all */
    FILE *f = fopen(bad, "w");
    fputs("this is not a checkpoint\n", f);
    fclose(f);
    EXPECT_ERR(nnp_ckpt_read(bad, b.net, &b.opt, &b.pc, NULL), NNP_ERR_FORMAT,
               "not a valid HDF5 file");

    /* wrong version */
    copy_file(good, bad);
    set_version(bad, 2);
    EXPECT_ERR(nnp_ckpt_read(bad, b.net, &b.opt, &b.pc, NULL), NNP_ERR_FORMAT,
               "format version 2, this nnprec reads version 1");
    EXPECT_ERR(nnp_ckpt_read_meta(bad, &meta), NNP_ERR_FORMAT, "format version 2");

    /* HDF5 but not a checkpoint */
    hid_t h = H5Fcreate(bad, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Fclose(h);
    EXPECT_ERR(nnp_ckpt_read(bad, b.net, &b.opt, &b.pc, NULL), NNP_ERR_FORMAT,
               "not an nnprec checkpoint");

    /* wrong model spec */
    nnp_net *mlp = NULL;
    ASSERT_OK(nnp_net_create("mlp:784-32-10", (nnp_shape){1, 28, 28}, NNP_ACT_RELU, 2, &mlp));
    if (mlp) {
        EXPECT_ERR(nnp_ckpt_read(good, mlp, NULL, NULL, NULL), NNP_ERR_FORMAT,
                   "model spec 'mlp:784-32-10' differs from the checkpoint's 'lenet'");
        /* same spec, other activation: the architecture attribute differs */
        const char *mp = P("mlp_relu.h5");
        ASSERT_OK(nnp_ckpt_write(mp, mlp, NULL, NULL, &meta));
        nnp_net *tanh_net = NULL;
        ASSERT_OK(nnp_net_create("mlp:784-32-10", (nnp_shape){1, 28, 28}, NNP_ACT_TANH, 2,
                                 &tanh_net));
        if (tanh_net)
            EXPECT_ERR(nnp_ckpt_read(mp, tanh_net, NULL, NULL, NULL), NNP_ERR_FORMAT,
                       "architecture '784/dense:32/tanh/dense:10' differs from the "
                       "checkpoint's '784/dense:32/relu/dense:10'");
        nnp_net_free(tanh_net);
        /* no optimizer/precond stored but asked for */
        model m;
        if (make(&m, "mlp:784-32-10", NNP_ACT_RELU, NNP_OPT_SGD, 0.9, NNP_PRECOND_STATIC, 0) ==
            0) {
            EXPECT_ERR(nnp_ckpt_read(mp, m.net, &m.opt, NULL, NULL), NNP_ERR_FORMAT,
                       "group /optimizer missing");
            EXPECT_ERR(nnp_ckpt_read(mp, m.net, NULL, &m.pc, NULL), NNP_ERR_FORMAT,
                       "group /precond missing");
            unmake(&m);
        }
        nnp_net_free(mlp);
    }

    /* missing dataset; nothing of the model is modified by the rejected file */
    copy_file(good, bad);
    h = open_rw(bad);
    H5Ldelete(h, "/fc1/bias", H5P_DEFAULT);
    H5Fclose(h);
    EXPECT_ERR(nnp_ckpt_read(bad, b.net, &b.opt, &b.pc, NULL), NNP_ERR_FORMAT,
               "dataset /fc1/bias missing");
    ASSERT_TRUE(all_zero(b.net->params, b.net->n_params));
    ASSERT_TRUE(all_zero(b.opt.buf1, b.opt.n));
    ASSERT_EQ_INT(b.opt.t, 0);
    /* a whole layer group missing */
    copy_file(good, bad);
    h = open_rw(bad);
    H5Ldelete(h, "/fc2", H5P_DEFAULT);
    H5Fclose(h);
    EXPECT_ERR(nnp_ckpt_read(bad, b.net, &b.opt, &b.pc, NULL), NNP_ERR_FORMAT,
               "dataset /fc2/weight missing");

    /* wrong dtype */
    copy_file(good, bad);
    hsize_t fc1w[2] = {120, 576};
    replace_dataset(bad, "/fc1/weight", H5T_IEEE_F64LE, 2, fc1w);
    EXPECT_ERR(nnp_ckpt_read(bad, b.net, &b.opt, &b.pc, NULL), NNP_ERR_FORMAT,
               "dataset /fc1/weight has dtype float64, expected float32");
    ASSERT_TRUE(all_zero(b.net->params, b.net->n_params));

    /* wrong shape */
    copy_file(good, bad);
    hsize_t c1[4] = {6, 1, 5, 5};
    replace_dataset(bad, "/conv1/weight", H5T_IEEE_F32LE, 4, c1);
    EXPECT_ERR(nnp_ckpt_read(bad, b.net, &b.opt, &b.pc, NULL), NNP_ERR_FORMAT,
               "dataset /conv1/weight has shape 6x1x5x5, model expects 6x1x3x3");

    /* optimizer state: wrong length, missing moment */
    copy_file(good, bad);
    hsize_t shortn = 10;
    replace_dataset(bad, "/optimizer/exp_avg_sq", H5T_IEEE_F32LE, 1, &shortn);
    char want[128];
    snprintf(want, sizeof want, "dataset /optimizer/exp_avg_sq has shape 10, model expects %zu",
             a.net->n_params);
    EXPECT_ERR(nnp_ckpt_read(bad, b.net, &b.opt, &b.pc, NULL), NNP_ERR_FORMAT, want);
    copy_file(good, bad);
    h = open_rw(bad);
    H5Ldelete(h, "/optimizer/exp_avg", H5P_DEFAULT);
    H5Fclose(h);
    EXPECT_ERR(nnp_ckpt_read(bad, b.net, &b.opt, &b.pc, NULL), NNP_ERR_FORMAT,
               "dataset /optimizer/exp_avg missing");
    /* preconditioner array with the wrong dtype */
    copy_file(good, bad);
    hsize_t nt = (hsize_t)a.net->n_tensors;
    replace_dataset(bad, "/precond/scale", H5T_IEEE_F32LE, 1, &nt);
    EXPECT_ERR(nnp_ckpt_read(bad, b.net, &b.opt, &b.pc, NULL), NNP_ERR_FORMAT,
               "dataset /precond/scale has dtype float32, expected float64");
    /* a required attribute missing */
    copy_file(good, bad);
    h = open_rw(bad);
    H5Adelete(h, "rng_counter");
    H5Fclose(h);
    EXPECT_ERR(nnp_ckpt_read(bad, b.net, &b.opt, &b.pc, NULL), NNP_ERR_FORMAT,
               "attribute rng_counter missing");

    /* optimizer kind and preconditioner mode mismatches */
    model c;
    if (make(&c, "lenet", NNP_ACT_RELU, NNP_OPT_SGD, 0.9, NNP_PRECOND_DYNAMIC, 0) == 0) {
        EXPECT_ERR(nnp_ckpt_read(good, c.net, &c.opt, &c.pc, NULL), NNP_ERR_FORMAT,
                   "optimizer 'adam' in the checkpoint, the run uses 'sgd'");
        unmake(&c);
    }
    if (make(&c, "lenet", NNP_ACT_RELU, NNP_OPT_ADAM, 0, NNP_PRECOND_STATIC, 0) == 0) {
        EXPECT_ERR(nnp_ckpt_read(good, c.net, &c.opt, &c.pc, NULL), NNP_ERR_FORMAT,
                   "preconditioner mode 'dynamic' in the checkpoint, the run uses 'static'");
        unmake(&c);
    }
    /* LARS keeps SGD's momentum buffer, LAMB Adam's moments: the kind still tells them apart */
    if (make(&c, "lenet", NNP_ACT_RELU, NNP_OPT_LARS, 0.9, NNP_PRECOND_DYNAMIC, 1) == 0) {
        const char *lp = P("lars.h5");
        ASSERT_OK(nnp_ckpt_write(lp, c.net, &c.opt, &c.pc, &meta));
        model d;
        if (make(&d, "lenet", NNP_ACT_RELU, NNP_OPT_SGD, 0.9, NNP_PRECOND_DYNAMIC, 0) == 0) {
            EXPECT_ERR(nnp_ckpt_read(lp, d.net, &d.opt, &d.pc, NULL), NNP_ERR_FORMAT,
                       "optimizer 'lars' in the checkpoint, the run uses 'sgd'");
            unmake(&d);
        }
        unmake(&c);
    }
    if (make(&c, "lenet", NNP_ACT_RELU, NNP_OPT_LAMB, 0, NNP_PRECOND_DYNAMIC, 0) == 0) {
        EXPECT_ERR(nnp_ckpt_read(good, c.net, &c.opt, &c.pc, NULL), NNP_ERR_FORMAT,
                   "optimizer 'adam' in the checkpoint, the run uses 'lamb'");
        unmake(&c);
    }
    /* SGD with momentum saved, read by plain SGD */
    if (make(&c, "lenet", NNP_ACT_RELU, NNP_OPT_SGD, 0.9, NNP_PRECOND_DYNAMIC, 1) == 0) {
        const char *sp = P("sgd.h5");
        ASSERT_OK(nnp_ckpt_write(sp, c.net, &c.opt, &c.pc, &meta));
        model d;
        if (make(&d, "lenet", NNP_ACT_RELU, NNP_OPT_SGD, 0.0, NNP_PRECOND_DYNAMIC, 0) == 0) {
            EXPECT_ERR(nnp_ckpt_read(sp, d.net, &d.opt, &d.pc, NULL), NNP_ERR_FORMAT,
                       "/optimizer/momentum_buffer present");
            unmake(&d);
        }
        unmake(&c);
    }

    /* still good after all that, and info prints a summary */
    ASSERT_OK(nnp_ckpt_read(good, b.net, &b.opt, &b.pc, NULL));
    ASSERT_TRUE(same_model(&a, &b));
    FILE *out = tmpfile();
    if (out) {
        ASSERT_OK(nnp_ckpt_info(good, out));
        rewind(out);
        char text[32768];
        size_t k = fread(text, 1, sizeof text - 1, out);
        text[k] = '\0';
        fclose(out);
        ASSERT_TRUE(strstr(text, "/conv1/weight") != NULL);
        ASSERT_TRUE(strstr(text, "6x1x3x3") != NULL);
        ASSERT_TRUE(strstr(text, "step             1234") != NULL);
        ASSERT_TRUE(strstr(text, "exp_avg_sq") != NULL);
        ASSERT_TRUE(strstr(text, "dynamic") != NULL);
        ASSERT_TRUE(strstr(text, "opt199=value 39601") != NULL);
        char tot[64];
        snprintf(tot, sizeof tot, "total %zu parameters", a.net->n_params);
        ASSERT_TRUE(strstr(text, tot) != NULL);
    }
    unmake(&a);
    unmake(&b);
}

/* What no run writes is refused on reading: impossible metadata, non-finite parameters or
 * optimizer state (a resumed run would index its sample order with them, or train from nan). */
static void test_impossible_values(void)
{
    model a, b;
    if (make(&a, "lenet", NNP_ACT_RELU, NNP_OPT_SGD, 0.9, NNP_PRECOND_DYNAMIC, 1) ||
        make(&b, "lenet", NNP_ACT_RELU, NNP_OPT_SGD, 0.9, NNP_PRECOND_DYNAMIC, 0))
        return;
    const char *path = P("impossible.h5");
    nnp_ckpt_meta meta, got;
    size_t np = b.net->n_params;
    float *p0 = malloc(np * sizeof *p0), *m0 = malloc(np * sizeof *m0);
    ASSERT_TRUE(p0 && m0);
    if (!p0 || !m0)
        return;
    memcpy(p0, b.net->params, np * sizeof *p0);
    memcpy(m0, b.opt.buf1, np * sizeof *m0);
    for (int k = 0; k < 7; k++) {
        fill_meta(&meta);
        const char *what = NULL;
        switch (k) {
        case 0: meta.step = -5, what = "attribute step"; break;
        case 1: meta.pos_in_epoch = -1, what = "attribute pos_in_epoch"; break;
        case 2: meta.norm_std = 0, what = "attribute norm_std"; break;
        case 3: meta.norm_mean = INFINITY, what = "attribute norm_mean"; break;
        case 4: meta.wall_s = NAN, what = "attribute wall_s"; break;
        case 5: a.net->params[a.net->tensors[4].off + 7] = NAN, what = "/fc1/weight"; break;
        case 6: a.opt.buf1[3] = INFINITY, what = "/optimizer/momentum_buffer"; break;
        }
        ASSERT_OK(nnp_ckpt_write(path, a.net, &a.opt, &a.pc, &meta));
        EXPECT_ERR(nnp_ckpt_read(path, b.net, &b.opt, &b.pc, &got), NNP_ERR_FORMAT, what);
        /* and the reader's network and optimizer are untouched */
        ASSERT_TRUE(memcmp(b.net->params, p0, np * sizeof *p0) == 0);
        ASSERT_TRUE(memcmp(b.opt.buf1, m0, np * sizeof *m0) == 0);
        if (k < 5)
            EXPECT_ERR(nnp_ckpt_read_meta(path, &got), NNP_ERR_FORMAT, what);
        if (k == 5)
            a.net->params[a.net->tensors[4].off + 7] = 0.5f;
        if (k == 6)
            a.opt.buf1[3] = 0;
    }
    /* and the same file with finite values reads */
    fill_meta(&meta);
    ASSERT_OK(nnp_ckpt_write(path, a.net, &a.opt, &a.pc, &meta));
    ASSERT_OK(nnp_ckpt_read(path, b.net, &b.opt, &b.pc, &got));
    ASSERT_TRUE(memcmp(b.net->params, a.net->params, np * sizeof *p0) == 0);
    free(p0);
    free(m0);
    unmake(&a);
    unmake(&b);
}

/* ---- rotation -------------------------------------------------------------------------- */

static int count_ckpts(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL)
        if (strncmp(e->d_name, "ckpt-", 5) == 0)
            n++;
    if (d)
        closedir(d);
    return n;
}

static void test_rotation(void)
{
    nnp_net *net = NULL;
    ASSERT_OK(nnp_net_create("mlp:784-16-10", (nnp_shape){1, 28, 28}, NNP_ACT_RELU, 2, &net));
    if (!net)
        return;
    const char *dir = P("run");
    mkdir(dir, 0755);
    char buf[600];
    int found = -1;
    ASSERT_OK(nnp_ckpt_latest(dir, buf, sizeof buf, &found));
    ASSERT_EQ_INT(found, 0);
    ASSERT_OK(nnp_ckpt_latest(P("no-such-run"), buf, sizeof buf, &found));
    ASSERT_EQ_INT(found, 0);

    nnp_ckpt_meta meta;
    fill_meta(&meta);
    char path[600];
    for (int i = 1; i <= 5; i++) {
        meta.step = 1000 * i;
        net->params[0] = (float)i;
        ASSERT_OK(nnp_ckpt_path(dir, meta.step, path, sizeof path));
        ASSERT_OK(nnp_ckpt_write(path, net, NULL, NULL, &meta));
        ASSERT_OK(nnp_ckpt_publish(dir, path, 2));
    }
    ASSERT_EQ_INT(count_ckpts(dir), 2);
    char p4[600], p5[600];
    snprintf(p4, sizeof p4, "%s/ckpt-00004000.h5", dir);
    snprintf(p5, sizeof p5, "%s/ckpt-00005000.h5", dir);
    ASSERT_TRUE(exists(p4) && exists(p5));
    ASSERT_TRUE(strcmp(path, p5) == 0);
    ASSERT_TRUE(!exists(P("run/latest.tmp")));
    FILE *f = fopen(P("run/latest"), "r");
    char line[128] = "";
    if (f) {
        if (!fgets(line, sizeof line, f))
            line[0] = '\0';
        fclose(f);
    }
    ASSERT_TRUE(strcmp(line, "ckpt-00005000.h5\n") == 0);
    ASSERT_OK(nnp_ckpt_latest(dir, buf, sizeof buf, &found));
    ASSERT_EQ_INT(found, 1);
    ASSERT_TRUE(strcmp(buf, p5) == 0);
    nnp_ckpt_meta got;
    net->params[0] = 0;
    ASSERT_OK(nnp_ckpt_read(buf, net, NULL, NULL, &got));
    ASSERT_EQ_INT(got.step, 5000);
    ASSERT_TRUE(net->params[0] == 5.0f);

    /* keep <= 0 keeps everything */
    meta.step = 6000;
    ASSERT_OK(nnp_ckpt_path(dir, meta.step, path, sizeof path));
    ASSERT_OK(nnp_ckpt_write(path, net, NULL, NULL, &meta));
    ASSERT_OK(nnp_ckpt_publish(dir, path, 0));
    ASSERT_EQ_INT(count_ckpts(dir), 3);
    /* a checkpoint older than the ones kept is never deleted when it is the one published */
    meta.step = 10;
    ASSERT_OK(nnp_ckpt_path(dir, meta.step, path, sizeof path));
    ASSERT_OK(nnp_ckpt_write(path, net, NULL, NULL, &meta));
    ASSERT_OK(nnp_ckpt_publish(dir, path, 1));
    ASSERT_TRUE(exists(path));
    ASSERT_OK(nnp_ckpt_latest(dir, buf, sizeof buf, &found));
    ASSERT_TRUE(found == 1 && strcmp(buf, path) == 0);

    /* no pointer: the highest step wins; a pointer to a missing file is an error */
    unlink(P("run/latest"));
    ASSERT_OK(nnp_ckpt_latest(dir, buf, sizeof buf, &found));
    ASSERT_TRUE(found == 1 && strcmp(buf, P("run/ckpt-00006000.h5")) == 0);
    f = fopen(P("run/latest"), "w");
    fputs("ckpt-00000999.h5\n", f);
    fclose(f);
    EXPECT_ERR(nnp_ckpt_latest(dir, buf, sizeof buf, &found), NNP_ERR_IO,
               "ckpt-00000999.h5");
    /* large steps widen the name */
    ASSERT_OK(nnp_ckpt_path("d", 123456789012ll, buf, sizeof buf));
    ASSERT_TRUE(strcmp(buf, "d/ckpt-123456789012.h5") == 0);
    nnp_net_free(net);
}

/* ---- HDF5 input datasets --------------------------------------------------------------- */

#define N1 10
#define H1 3
#define W1 4
#define N2 7
#define C2 2
#define H2 2
#define W2 3

static void write_dset(hid_t g, const char *name, hid_t ftype, hid_t mtype, int nd,
                       const hsize_t *dims, const void *data)
{
    hid_t sp = H5Screate_simple(nd, dims, NULL);
    hid_t d = H5Dcreate2(g, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    H5Dclose(d);
    H5Sclose(sp);
}

/* /train: uint8 (N1,H1,W1), labels uint8; /test: float32 (N2,C2,H2,W2), labels int32. */
static void write_h5data(const char *path)
{
    static unsigned char img[N1 * H1 * W1], lab[N1];
    static float xf[N2 * C2 * H2 * W2];
    static int32_t lab2[N2];
    for (int i = 0; i < N1 * H1 * W1; i++)
        img[i] = (unsigned char)(i * 7 + 3);
    for (int i = 0; i < N1; i++)
        lab[i] = (unsigned char)(i % 4);
    for (int i = 0; i < N2 * C2 * H2 * W2; i++)
        xf[i] = (float)i * 0.25f - 3.0f;
    for (int i = 0; i < N2; i++)
        lab2[i] = (i * 3) % 6;
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hid_t g = H5Gcreate2(f, "train", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t d3[3] = {N1, H1, W1}, d1 = N1;
    write_dset(g, "images", H5T_STD_U8LE, H5T_NATIVE_UCHAR, 3, d3, img);
    write_dset(g, "labels", H5T_STD_U8LE, H5T_NATIVE_UCHAR, 1, &d1, lab);
    H5Gclose(g);
    g = H5Gcreate2(f, "test", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t d4[4] = {N2, C2, H2, W2}, d2 = N2;
    write_dset(g, "images", H5T_IEEE_F32BE, H5T_NATIVE_FLOAT, 4, d4, xf); /* big-endian */
    write_dset(g, "labels", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, &d2, lab2);
    H5Gclose(g);
    H5Fclose(f);
}

static void test_h5data(void)
{
    const char *path = P("data.h5");
    write_h5data(path);
    nnp_dataset d;
    /* every shard of the uint8 set */
    size_t shards[][2] = {{0, 10}, {0, 3}, {3, 7}, {7, 10}, {9, 100}, {10, 10}, {12, 20}};
    for (size_t k = 0; k < sizeof shards / sizeof shards[0]; k++) {
        size_t lo = shards[k][0], hi = shards[k][1];
        ASSERT_OK(nnp_h5_load(path, "train", 0, lo, hi, &d));
        size_t end = hi < N1 ? hi : N1, first = lo < end ? lo : end;
        ASSERT_EQ_INT(d.n, end - first);
        ASSERT_EQ_INT(d.first, first);
        ASSERT_EQ_INT(d.n_total, N1);
        ASSERT_EQ_INT(d.n_classes, 4);
        ASSERT_TRUE(d.c == 1 && d.h == H1 && d.w == W1);
        ASSERT_TRUE(d.xf == NULL);
        int ok = 1;
        for (size_t i = 0; i < d.n; i++) {
            ok &= d.y[i] == (unsigned char)((first + i) % 4);
            for (int j = 0; j < H1 * W1; j++)
                ok &= d.pix[i * H1 * W1 + j] ==
                      (unsigned char)(((first + i) * H1 * W1 + (size_t)j) * 7 + 3);
        }
        ASSERT_TRUE(ok);
        ASSERT_NEAR(d.mean, 0.0, 0);
        ASSERT_NEAR(d.std, 1.0, 0);
        nnp_dataset_free(&d);
    }
    /* limit: the first 6 samples, shard [4, 9) -> [4, 6) */
    ASSERT_OK(nnp_h5_load(path, "train", 6, 4, 9, &d));
    ASSERT_EQ_INT(d.n, 2);
    ASSERT_EQ_INT(d.first, 4);
    ASSERT_TRUE(d.y && d.y[0] == 0 && d.y[1] == 1);
    nnp_dataset_free(&d);

    /* float32 (N,C,H,W), stored big-endian, int32 labels */
    ASSERT_OK(nnp_h5_load(path, "test", 0, 2, 5, &d));
    ASSERT_EQ_INT(d.n, 3);
    ASSERT_TRUE(d.c == C2 && d.h == H2 && d.w == W2);
    ASSERT_TRUE(d.pix == NULL && d.xf != NULL);
    ASSERT_EQ_INT(d.n_classes, 4); /* labels 0,3,0,3,0,3,0 */
    if (d.xf) {
        int ok = 1, D = C2 * H2 * W2;
        for (int i = 0; i < 3; i++) {
            ok &= d.y[i] == ((2 + i) * 3) % 6;
            for (int j = 0; j < D; j++)
                ok &= d.xf[i * D + j] == (float)((2 + i) * D + j) * 0.25f - 3.0f;
        }
        ASSERT_TRUE(ok);
    }
    nnp_dataset_free(&d);

    /* errors */
    EXPECT_ERR(nnp_h5_load(P("nothere.h5"), "train", 0, 0, 10, &d), NNP_ERR_IO, "nothere.h5");
    FILE *f = fopen(P("text.h5"), "w");
    fputs("hello\n", f);
    fclose(f);
    EXPECT_ERR(nnp_h5_load(P("text.h5"), "train", 0, 0, 10, &d), NNP_ERR_FORMAT,
               "not a valid HDF5 file");
    EXPECT_ERR(nnp_h5_load(path, "valid", 0, 0, 10, &d), NNP_ERR_FORMAT,
               "dataset /valid/images missing");

    const char *bad = P("baddata.h5");
    hid_t h, g;
    hsize_t d1 = N1, d2[2] = {N1, 12}, d3[3] = {N1, H1, W1};
    static unsigned char zeros[N1 * 64];
    static int16_t s16[N1 * H1 * W1];
    static int32_t l32[N1];

#define BADFILE(setup)                                                         \
    do {                                                                       \
        h = H5Fcreate(bad, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);           \
        g = H5Gcreate2(h, "train", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);     \
        setup;                                                                 \
        H5Gclose(g);                                                           \
        H5Fclose(h);                                                           \
    } while (0)

    BADFILE(write_dset(g, "images", H5T_STD_U8LE, H5T_NATIVE_UCHAR, 3, d3, zeros));
    EXPECT_ERR(nnp_h5_load(bad, "train", 0, 0, 10, &d), NNP_ERR_FORMAT,
               "dataset /train/labels missing");
    BADFILE(write_dset(g, "images", H5T_STD_I16LE, H5T_NATIVE_INT16, 3, d3, s16);
            write_dset(g, "labels", H5T_STD_U8LE, H5T_NATIVE_UCHAR, 1, &d1, zeros));
    EXPECT_ERR(nnp_h5_load(bad, "train", 0, 0, 10, &d), NNP_ERR_FORMAT,
               "/train/images has dtype int16, expected uint8 or float32");
    BADFILE(write_dset(g, "images", H5T_STD_U8LE, H5T_NATIVE_UCHAR, 2, d2, zeros);
            write_dset(g, "labels", H5T_STD_U8LE, H5T_NATIVE_UCHAR, 1, &d1, zeros));
    EXPECT_ERR(nnp_h5_load(bad, "train", 0, 0, 10, &d), NNP_ERR_FORMAT,
               "/train/images has rank 2, expected 3 (N,H,W) or 4 (N,C,H,W)");
    hsize_t d9 = N1 - 1;
    BADFILE(write_dset(g, "images", H5T_STD_U8LE, H5T_NATIVE_UCHAR, 3, d3, zeros);
            write_dset(g, "labels", H5T_STD_U8LE, H5T_NATIVE_UCHAR, 1, &d9, zeros));
    EXPECT_ERR(nnp_h5_load(bad, "train", 0, 0, 10, &d), NNP_ERR_FORMAT,
               "/train/labels has 9 labels, expected 10");
    BADFILE(write_dset(g, "images", H5T_STD_U8LE, H5T_NATIVE_UCHAR, 3, d3, zeros);
            write_dset(g, "labels", H5T_IEEE_F32LE, H5T_NATIVE_UCHAR, 1, &d1, zeros));
    EXPECT_ERR(nnp_h5_load(bad, "train", 0, 0, 10, &d), NNP_ERR_FORMAT,
               "/train/labels has dtype float32, expected an integer type");
    for (int i = 0; i < N1; i++)
        l32[i] = i == 6 ? 300 : 1;
    BADFILE(write_dset(g, "images", H5T_STD_U8LE, H5T_NATIVE_UCHAR, 3, d3, zeros);
            write_dset(g, "labels", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, &d1, l32));
    EXPECT_ERR(nnp_h5_load(bad, "train", 0, 0, 3, &d), NNP_ERR_FORMAT,
               "/train/labels[6] = 300, expected a class in 0..255");
    ASSERT_TRUE(d.pix == NULL && d.y == NULL && d.n == 0);
#undef BADFILE
}

/* ---- main ------------------------------------------------------------------------------ */

static void remove_tree(const char *path)
{
    DIR *d = opendir(path);
    if (!d) {
        unlink(path);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char sub[1024];
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        struct stat st;
        if (lstat(sub, &st) == 0 && S_ISDIR(st.st_mode))
            remove_tree(sub);
        else
            unlink(sub);
    }
    closedir(d);
    rmdir(path);
}

/* The checksum is XXH64: the values of libxxhash's XXH64() (and the specification's "" and
 * "abc"), over every tail length and both the 32-byte stripes and the short path. */
static void test_xxh64(void)
{
    unsigned char b[100];
    for (int i = 0; i < 100; i++)
        b[i] = (unsigned char)((i * 7) & 0xff);
    ASSERT_TRUE(nnp_xxh64(NULL, 0, 0) == 0xef46db3751d8e999ULL);
    ASSERT_TRUE(nnp_xxh64("abc", 3, 0) == 0x44bc2cf5ad770999ULL);
    ASSERT_TRUE(nnp_xxh64(b, 100, 0) == 0x8e2272c08247d5dbULL);
    ASSERT_TRUE(nnp_xxh64(b, 37, 1) == 0x82358c40922af044ULL);
    ASSERT_TRUE(nnp_xxh64(b, 8, 2) == 0x3f68cdceb6f6d173ULL);
    ASSERT_TRUE(nnp_xxh64(b, 31, 0) == 0x0f187c62b1e722b7ULL);
    /* one flipped bit anywhere changes it */
    const uint64_t h = nnp_xxh64(b, 100, 0);
    int same = 0;
    for (int i = 0; i < 800; i++) {
        b[i / 8] ^= (unsigned char)(1u << (i % 8));
        same += nnp_xxh64(b, 100, 0) == h;
        b[i / 8] ^= (unsigned char)(1u << (i % 8));
    }
    ASSERT_TRUE(same == 0);
}

int main(void)
{
    test_xxh64();
    snprintf(g_dir, sizeof g_dir, "/tmp/nnp_ckpt_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    H5dont_atexit(); /* as the library does before its first HDF5 call (see src/io/ckpt_write.c) */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* the tests provoke HDF5 errors on purpose */

    test_round_trip("lenet", NNP_ACT_RELU, NNP_OPT_SGD, 0.9, NNP_PRECOND_DYNAMIC, "lenet_sgd.h5");
    test_bn_buffers();
    test_round_trip("lenet", NNP_ACT_RELU, NNP_OPT_ADAM, 0.0, NNP_PRECOND_STATIC, "lenet_adam.h5");
    test_round_trip("lenet", NNP_ACT_RELU, NNP_OPT_LARS, 0.9, NNP_PRECOND_DYNAMIC, "lenet_lars.h5");
    test_round_trip("lenet", NNP_ACT_RELU, NNP_OPT_LAMB, 0.0, NNP_PRECOND_NONE, "lenet_lamb.h5");
    test_round_trip("mlp:784-64x2-10", NNP_ACT_TANH, NNP_OPT_SGD, 0.5, NNP_PRECOND_NONE,
                    "mlp_sgd.h5");
    test_round_trip("mlp:784-64x2-10", NNP_ACT_LEAKY_RELU, NNP_OPT_ADAMW, 0.0,
                    NNP_PRECOND_DYNAMIC, "mlp_adamw.h5");
    test_round_trip("seq:1x28x28/conv:4:3:2:1/leaky-relu:0.1/avgpool:2/flatten/dense:10",
                    NNP_ACT_RELU, NNP_OPT_SGD, 0.0, NNP_PRECOND_STATIC, "seq_sgd.h5");
    test_failed_writes();
    test_bad_files();
    test_impossible_values();
    test_rotation();
    test_h5data();

    remove_tree(g_dir);
    TEST_MAIN_END();
}
