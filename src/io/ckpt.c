/* ckpt.c - HDF5 checkpoints (see ckpt.h and docs/checkpoint.md).
 *
 * Writing happens in two parts. HDF5 creates PATH.tmp with the whole structure: groups,
 * attributes, and contiguous datasets whose storage is allocated at creation and never
 * filled, and closes it (a few kB of metadata). The bulk data is then written by us with
 * one pwrite() per dataset at the offset HDF5 chose (H5Dget_offset), in file order and
 * straight from the flat buffers, followed by fsync, close, rename over PATH and an fsync of
 * the directory so the rename itself is durable. The file type of every dataset is the
 * native float type, so the bytes in memory are the bytes in the file.
 * This keeps the write at the disk's sequential speed with no copy, and it keeps HDF5 away
 * from the I/O that fails when a disk fills up: HDF5 1.10 cannot recover from a failed
 * H5Fclose (the file stays half-closed and the library crashes at exit), whereas a failed
 * pwrite() is an ordinary error with its errno, after which the .tmp is simply removed.
 * Before HDF5 starts, the .tmp is sized (sparse) to an upper bound of the file and the free
 * space is checked, so file size limits and a full disk are reported before HDF5 runs.
 *
 * Reading: two passes. The first checks every attribute, dataset, shape and dtype against
 * the caller's net/optimizer/preconditioner; only when all of them match does the second
 * pass read the data, so a rejected checkpoint leaves the caller's state untouched.
 *
 * HDF5's automatic error printing is switched off inside every public function; failures
 * become one nnp_error() message naming the file and the field (and errno or HDF5's own
 * innermost message as the reason).
 */
#include "nnprec/ckpt.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <hdf5.h>

#include "nnprec/alloc.h"

#ifndef NNP_VERSION
#define NNP_VERSION "unknown"
#endif

#define PATH_CAP 4096

/* ---- HDF5 error handling --------------------------------------------------------------- */

typedef struct {
    H5E_auto2_t func;
    void *data;
} h5_quiet;

static void quiet_on(h5_quiet *q)
{
    /* HDF5's exit handler crashes on a file whose H5Fclose failed (HDF5 1.10: the file
     * stays half-closed). Our files are always closed before we return, so the handler has
     * nothing to do; it is turned off before the library initializes (ckpt.c and h5data.c
     * are the only HDF5 users and both do this first). */
    H5dont_atexit();
    H5Eget_auto2(H5E_DEFAULT, &q->func, &q->data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

static void quiet_off(const h5_quiet *q) { H5Eset_auto2(H5E_DEFAULT, q->func, q->data); }

static herr_t walk_innermost(unsigned n, const H5E_error2_t *e, void *data)
{
    if (n == 0 && e->desc)
        snprintf(data, 512, "%s", e->desc);
    return 0;
}

/* The reason for the last failure: errno if set, else HDF5's innermost message. */
static const char *h5_reason(int err, char *buf)
{
    if (err)
        return strerror(err);
    buf[0] = '\0';
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_innermost, buf);
    return buf[0] ? buf : "HDF5 error";
}

static void close_id(hid_t id)
{
    if (id < 0)
        return;
    switch (H5Iget_type(id)) {
    case H5I_FILE: H5Fclose(id); break;
    case H5I_GROUP: H5Gclose(id); break;
    case H5I_DATASET: H5Dclose(id); break;
    case H5I_DATASPACE: H5Sclose(id); break;
    case H5I_DATATYPE: H5Tclose(id); break;
    case H5I_ATTR: H5Aclose(id); break;
    case H5I_GENPROP_LST: H5Pclose(id); break;
    default: break;
    }
}

/* File access properties: close everything with the file; no file locking (readers only
 * ever open complete, renamed files and the writer writes a private .tmp, and locking fails
 * on some parallel file systems). */
static hid_t make_fapl(void)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0)
        return fapl;
    H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
    H5Pset_file_locking(fapl, 0, 1);
    return fapl;
}

/* ---- small utilities ------------------------------------------------------------------- */

static void shape_str(int ndim, const hsize_t *d, char *buf, size_t cap)
{
    size_t k = 0;
    buf[0] = '\0';
    if (ndim == 0)
        snprintf(buf, cap, "scalar");
    for (int i = 0; i < ndim && k < cap; i++) {
        int w = snprintf(buf + k, cap - k, "%s%llu", i ? "x" : "", (unsigned long long)d[i]);
        if (w < 0)
            break;
        k += (size_t)w;
    }
}

static void dtype_str(hid_t t, char *buf, size_t cap)
{
    size_t sz = H5Tget_size(t);
    switch (H5Tget_class(t)) {
    case H5T_FLOAT: snprintf(buf, cap, "float%zu", 8 * sz); break;
    case H5T_INTEGER:
        snprintf(buf, cap, "%s%zu", H5Tget_sign(t) == H5T_SGN_NONE ? "uint" : "int", 8 * sz);
        break;
    case H5T_STRING: snprintf(buf, cap, "string"); break;
    case H5T_COMPOUND: snprintf(buf, cap, "compound"); break;
    default: snprintf(buf, cap, "non-numeric type"); break;
    }
}

/* Split "conv1.weight" into group "conv1" and dataset "weight". */
static void split_name(const char *name, char *group, char *leaf, size_t cap)
{
    const char *dot = strrchr(name, '.');
    if (!dot) {
        snprintf(group, cap, "%s", name);
        snprintf(leaf, cap, "value");
        return;
    }
    snprintf(group, cap, "%.*s", (int)(dot - name), name);
    snprintf(leaf, cap, "%s", dot + 1);
}

static int fsync_path(const char *path, int directory)
{
    int fd = open(path, directory ? O_RDONLY | O_DIRECTORY : O_WRONLY);
    if (fd < 0)
        return -1;
    int r = fsync(fd);
    int e = errno;
    close(fd);
    /* Some file systems cannot sync a directory; the rename is then as durable as they
     * make it. */
    if (r != 0 && directory && (e == EINVAL || e == ENOTSUP || e == EROFS))
        r = 0;
    errno = e;
    return r;
}

static void dir_of(const char *path, char *buf, size_t cap)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(buf, cap, ".");
    else if (slash == path)
        snprintf(buf, cap, "/");
    else
        snprintf(buf, cap, "%.*s", (int)(slash - path), path);
}

static const char *base_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

void nnp_ckpt_architecture(const nnp_net *net, char *buf, size_t cap)
{
    size_t k = 0;
#define APPEND(...)                                                      \
    do {                                                                 \
        if (k < cap) {                                                   \
            int w_ = snprintf(buf + k, cap - k, __VA_ARGS__);            \
            if (w_ > 0)                                                  \
                k += (size_t)w_;                                         \
        }                                                                \
    } while (0)
    if (cap == 0)
        return;
    buf[0] = '\0';
    nnp_shape in = net->input;
    if (in.h == 1 && in.w == 1)
        APPEND("%d", in.c);
    else
        APPEND("%dx%dx%d", in.c, in.h, in.w);
    for (int i = 0; i < net->n_layers; i++) {
        const nnp_layer *L = &net->layers[i];
        switch (L->kind) {
        case NNP_L_DENSE: APPEND("/dense:%d", L->out.c); break;
        case NNP_L_CONV2D: APPEND("/conv:%d:%d:%d:%d", L->out.c, L->k, L->s, L->p); break;
        case NNP_L_MAXPOOL: APPEND("/maxpool:%d:%d", L->k, L->s); break;
        case NNP_L_AVGPOOL: APPEND("/avgpool:%d:%d", L->k, L->s); break;
        case NNP_L_FLATTEN: APPEND("/flatten"); break;
        case NNP_L_ACT:
            if (L->act == NNP_ACT_LEAKY_RELU)
                APPEND("/leaky-relu:%.9g", (double)L->alpha);
            else
                APPEND("/%s", nnp_act_name(L->act));
            break;
        }
    }
#undef APPEND
}

/* ---- attribute writing ------------------------------------------------------------------ */

static herr_t attr_write(hid_t loc, const char *name, hid_t ftype, hid_t mtype, const void *v)
{
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = sp >= 0 ? H5Acreate2(loc, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT) : -1;
    herr_t r = a >= 0 ? H5Awrite(a, mtype, v) : -1;
    close_id(a);
    close_id(sp);
    return r;
}

static herr_t attr_i64(hid_t loc, const char *name, int64_t v)
{
    return attr_write(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v);
}

static herr_t attr_u64(hid_t loc, const char *name, uint64_t v)
{
    return attr_write(loc, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &v);
}

static herr_t attr_f64(hid_t loc, const char *name, double v)
{
    return attr_write(loc, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v);
}

/* Variable-length UTF-8 string (h5py reads it as str). */
static herr_t attr_str(hid_t loc, const char *name, const char *v)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0)
        return -1;
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    herr_t r = attr_write(loc, name, t, t, &v);
    H5Tclose(t);
    return r;
}

/* ---- write ----------------------------------------------------------------------------- */

/* One dataset's bytes, to be written at `off` in the file once HDF5 has laid it out. */
typedef struct {
    haddr_t off;
    const void *data;
    size_t bytes;
} planned_write;

typedef struct {
    const char *path;    /* target, for messages */
    const char *what;    /* what was being written when it failed */
    planned_write *plan; /* [cap] */
    int n_plan, cap;
} wctx;

/* A contiguous dataset whose storage is allocated at creation (no fill): HDF5 records its
 * layout, and the caller writes `data` at the dataset's file offset later. The file type is
 * the native one, so the bytes in memory are the bytes in the file on any host. Returns the
 * open dataset (the caller may add attributes) or -1. */
static hid_t dset_plan(hid_t loc, const char *name, hid_t type, int ndim, const hsize_t *dims,
                       const void *data, size_t esize, wctx *w)
{
    if (w->n_plan == w->cap)
        return -1;
    hid_t sp = H5Screate_simple(ndim, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (dcpl >= 0) {
        H5Pset_layout(dcpl, H5D_CONTIGUOUS);
        H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY);
        H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    }
    hid_t d = (sp >= 0 && dcpl >= 0)
                  ? H5Dcreate2(loc, name, type, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT)
                  : -1;
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)dims[i];
    close_id(dcpl);
    close_id(sp);
    if (d < 0)
        return -1;
    haddr_t off = H5Dget_offset(d);
    if (n > 0 && off == HADDR_UNDEF) {
        H5Dclose(d);
        return -1;
    }
    w->plan[w->n_plan++] = (planned_write){off, data, n * esize};
    return d;
}

#define WTRY(expr, whatstr)          \
    do {                             \
        w->what = (whatstr);         \
        errno = 0;                   \
        if ((expr) < 0)              \
            return -1;               \
    } while (0)

static int write_params(hid_t f, const nnp_net *net, wctx *w)
{
    for (int j = 0; j < net->n_tensors; j++) {
        const nnp_tensor *t = &net->tensors[j];
        char group[32], leaf[32];
        split_name(t->name, group, leaf, sizeof group);
        hid_t g;
        if (H5Lexists(f, group, H5P_DEFAULT) > 0)
            g = H5Gopen2(f, group, H5P_DEFAULT);
        else
            g = H5Gcreate2(f, group, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        WTRY(g, t->name);
        hsize_t dims[4];
        for (int i = 0; i < t->ndim; i++)
            dims[i] = (hsize_t)t->shape[i];
        errno = 0;
        hid_t d = dset_plan(g, leaf, H5T_NATIVE_FLOAT, t->ndim, dims, net->params + t->off,
                            sizeof(float), w);
        if (d < 0) {
            H5Gclose(g);
            return -1;
        }
        herr_t r = attr_i64(d, "offset", (int64_t)t->off);
        H5Dclose(d);
        H5Gclose(g);
        WTRY(r, t->name);
    }
    return 0;
}

/* PyTorch's state names: SGD "momentum_buffer", Adam/AdamW "exp_avg" and "exp_avg_sq". */
static const char *buf1_name(nnp_opt_kind k)
{
    return k == NNP_OPT_SGD ? "momentum_buffer" : "exp_avg";
}

static int write_optim(hid_t f, const nnp_optim *o, wctx *w)
{
    hid_t g;
    WTRY(g = H5Gcreate2(f, "optimizer", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), "/optimizer");
    const nnp_optim_cfg *c = &o->cfg;
    w->what = "/optimizer";
    errno = 0;
    int bad = attr_str(g, "kind", nnp_opt_name(c->kind)) < 0 || attr_i64(g, "t", o->t) < 0 ||
              attr_i64(g, "n", (int64_t)o->n) < 0 ||
              attr_f64(g, "momentum", c->momentum) < 0 ||
              attr_f64(g, "dampening", c->dampening) < 0 ||
              attr_f64(g, "weight_decay", c->weight_decay) < 0 ||
              attr_i64(g, "nesterov", c->nesterov) < 0 || attr_f64(g, "beta1", c->beta1) < 0 ||
              attr_f64(g, "beta2", c->beta2) < 0 || attr_f64(g, "eps", c->eps) < 0;
    hsize_t n = (hsize_t)o->n;
    hid_t d;
    if (!bad && o->buf1) {
        w->what = "/optimizer state";
        errno = 0;
        d = dset_plan(g, buf1_name(c->kind), H5T_NATIVE_FLOAT, 1, &n, o->buf1, sizeof(float), w);
        bad = d < 0;
        close_id(d);
    }
    if (!bad && o->buf2) {
        w->what = "/optimizer state";
        errno = 0;
        d = dset_plan(g, "exp_avg_sq", H5T_NATIVE_FLOAT, 1, &n, o->buf2, sizeof(float), w);
        bad = d < 0;
        close_id(d);
    }
    H5Gclose(g);
    return bad ? -1 : 0;
}

static int write_precond(hid_t f, const nnp_precond *p, wctx *w)
{
    hid_t g;
    WTRY(g = H5Gcreate2(f, "precond", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), "/precond");
    const nnp_precond_cfg *c = &p->cfg;
    w->what = "/precond";
    errno = 0;
    int bad = attr_str(g, "mode", nnp_precond_mode_name(c->mode)) < 0 ||
              attr_str(g, "formula", nnp_precond_formula_name(c->formula)) < 0 ||
              attr_i64(g, "updated_at", p->updated_at) < 0 ||
              attr_i64(g, "every", c->every) < 0 ||
              attr_f64(g, "relu_factor", c->relu_factor) < 0 ||
              attr_f64(g, "prior_num", c->prior_num) < 0 ||
              attr_f64(g, "bias_std", c->bias_std) < 0 ||
              attr_f64(g, "bias_gain", c->bias_gain) < 0 ||
              attr_i64(g, "bias_prior", c->bias_prior) < 0 || attr_f64(g, "floor", c->floor) < 0;
    const char *names[4] = {"sigma", "gain", "prec", "scale"};
    const double *arrs[4] = {p->sigma, p->gain, p->prec, p->scale};
    hsize_t n = (hsize_t)p->n;
    for (int i = 0; i < 4 && !bad; i++) {
        if (!arrs[i] || p->n <= 0)
            continue;
        errno = 0;
        hid_t d = dset_plan(g, names[i], H5T_NATIVE_DOUBLE, 1, &n, arrs[i], sizeof(double), w);
        bad = d < 0;
        close_id(d);
    }
    H5Gclose(g);
    return bad ? -1 : 0;
}

static int write_root(hid_t f, const nnp_net *net, const nnp_ckpt_meta *m, wctx *w)
{
    char arch[4096], created[40];
    nnp_ckpt_architecture(net, arch, sizeof arch);
    time_t now = time(NULL);
    struct tm tmv;
    if (gmtime_r(&now, &tmv))
        strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", &tmv);
    else
        snprintf(created, sizeof created, "unknown");
    w->what = "root attributes";
    errno = 0;
    int bad = attr_str(f, "format", NNP_CKPT_FORMAT) < 0 ||
              attr_i64(f, "format_version", NNP_CKPT_VERSION) < 0 ||
              attr_str(f, "nnprec_version", NNP_VERSION) < 0 ||
              attr_str(f, "model", net->spec) < 0 || attr_str(f, "architecture", arch) < 0 ||
              attr_i64(f, "n_params", (int64_t)net->n_params) < 0 ||
              attr_str(f, "options", m->options) < 0 || attr_i64(f, "step", m->step) < 0 ||
              attr_i64(f, "epoch", m->epoch) < 0 ||
              attr_i64(f, "pos_in_epoch", m->pos_in_epoch) < 0 ||
              attr_u64(f, "seed", m->seed) < 0 || attr_i64(f, "rng_counter", m->rng_counter) < 0 ||
              attr_f64(f, "norm_mean", m->norm_mean) < 0 ||
              attr_f64(f, "norm_std", m->norm_std) < 0 ||
              attr_i64(f, "global_batch", m->global_batch) < 0 ||
              attr_i64(f, "world_size", m->world_size) < 0 ||
              attr_f64(f, "wall_s", m->wall_s) < 0 || attr_str(f, "created", created) < 0;
    return bad ? -1 : 0;
}

/* pwrite all of [p, p+len) at off, retrying short writes. Returns 0 or -1 with errno. */
static int pwrite_all(int fd, const unsigned char *p, size_t len, off_t off)
{
    while (len > 0) {
        size_t want = len < ((size_t)1 << 30) ? len : ((size_t)1 << 30);
        ssize_t k = pwrite(fd, p, want, off);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (k == 0) {
            errno = EIO;
            return -1;
        }
        p += k;
        off += k;
        len -= (size_t)k;
    }
    return 0;
}

static int cmp_plan(const void *a, const void *b)
{
    haddr_t x = ((const planned_write *)a)->off, y = ((const planned_write *)b)->off;
    return x < y ? -1 : x > y;
}

/* The HDF5 part: the file's structure, attributes and dataset layout, without the bulk
 * data (a few kB of metadata). Fills w->plan with where each dataset's bytes go. */
static nnp_status write_structure(const char *tmp, const nnp_net *net, const nnp_optim *opt,
                                  const nnp_precond *pc, const nnp_ckpt_meta *meta, wctx *w)
{
    char reason[512];
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE), fapl = make_fapl();
    if (fcpl >= 0)
        H5Pset_link_creation_order(fcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
    errno = 0;
    hid_t f = (fcpl >= 0 && fapl >= 0) ? H5Fcreate(tmp, H5F_ACC_TRUNC, fcpl, fapl) : -1;
    int err = errno;
    close_id(fcpl);
    close_id(fapl);
    if (f < 0)
        return nnp_error(NNP_ERR_IO, "cannot write checkpoint %s: cannot create %s: %s", w->path,
                         tmp, h5_reason(err, reason));
    int r = write_root(f, net, meta, w);
    if (r == 0)
        r = write_params(f, net, w);
    if (r == 0 && opt)
        r = write_optim(f, opt, w);
    if (r == 0 && pc)
        r = write_precond(f, pc, w);
    err = errno;
    if (r != 0) {
        nnp_status s = nnp_error(NNP_ERR_IO, "cannot write checkpoint %s (%s): %s", w->path,
                                 w->what ? w->what : "data", h5_reason(err, reason));
        H5Fclose(f);
        return s;
    }
    errno = 0;
    if (H5Fclose(f) < 0)
        return nnp_error(NNP_ERR_IO, "cannot write checkpoint %s (closing %s): %s", w->path,
                         tmp, h5_reason(errno, reason));
    return NNP_OK;
}

nnp_status nnp_ckpt_write(const char *path, const nnp_net *net, const nnp_optim *opt,
                          const nnp_precond *pc, const nnp_ckpt_meta *meta)
{
    if (!path || !net || !meta)
        return nnp_error(NNP_ERR_ARG, "nnp_ckpt_write: NULL argument");
    if (opt && opt->n != net->n_params)
        return nnp_error(NNP_ERR_ARG,
                         "checkpoint %s: optimizer state has %zu elements, the model %zu "
                         "parameters",
                         path, opt->n, net->n_params);
    if (pc && pc->n != net->n_tensors)
        return nnp_error(NNP_ERR_ARG,
                         "checkpoint %s: preconditioner has %d tensors, the model %d", path,
                         pc->n, net->n_tensors);
    char tmp[PATH_CAP], dir[PATH_CAP];
    int k = snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (k < 0 || (size_t)k >= sizeof tmp)
        return nnp_error(NNP_ERR_ARG, "checkpoint path too long: %s", path);
    dir_of(path, dir, sizeof dir);

    /* a directory (or anything but a regular file) in the way of PATH.tmp is not ours */
    struct stat st;
    if (lstat(tmp, &st) == 0 && !S_ISREG(st.st_mode))
        return nnp_error(NNP_ERR_IO, "cannot write checkpoint %s: %s exists and is not a file",
                         path, tmp);

    /* Before HDF5 touches the file: the whole size must be allowed (file size limits fail
     * with EFBIG here, on a sparse file, rather than inside HDF5) and the disk must have
     * room for it. HDF5 itself then writes only a few kB; the bulk is our pwrite()s. */
    size_t bound = net->n_params * sizeof(float) + ((size_t)1 << 20);
    if (opt)
        bound += ((opt->buf1 ? 1u : 0u) + (opt->buf2 ? 1u : 0u)) * opt->n * sizeof(float);
    int pfd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (pfd < 0)
        return nnp_error(NNP_ERR_IO, "cannot write checkpoint %s: cannot create %s: %s", path,
                         tmp, strerror(errno));
    struct statvfs vfs;
    int perr = 0;
    if (ftruncate(pfd, (off_t)bound) != 0)
        perr = errno;
    else if (fstatvfs(pfd, &vfs) == 0 && vfs.f_frsize > 0 &&
             (unsigned long long)vfs.f_bavail * vfs.f_frsize < (unsigned long long)bound)
        perr = ENOSPC;
    close(pfd);
    if (perr) {
        unlink(tmp);
        return nnp_error(NNP_ERR_IO, "cannot write checkpoint %s: %s cannot hold %zu bytes: %s",
                         path, tmp, bound, strerror(perr));
    }

    wctx w = {path, NULL, NULL, 0, net->n_tensors + 8};
    w.plan = nnp_calloc((size_t)w.cap, sizeof *w.plan);
    if (!w.plan)
        return NNP_ERR_NOMEM;
    h5_quiet q;
    quiet_on(&q);
    nnp_status s = write_structure(tmp, net, opt, pc, meta, &w);
    quiet_off(&q);
    if (s != NNP_OK)
        goto fail;

    /* the bulk data, in file order, straight from the caller's buffers */
    qsort(w.plan, (size_t)w.n_plan, sizeof *w.plan, cmp_plan);
    int fd = open(tmp, O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        s = nnp_error(NNP_ERR_IO, "cannot write checkpoint %s: cannot reopen %s: %s", path, tmp,
                      strerror(errno));
        goto fail;
    }
    for (int i = 0; i < w.n_plan; i++)
        if (pwrite_all(fd, w.plan[i].data, w.plan[i].bytes, (off_t)w.plan[i].off) != 0) {
            s = nnp_error(NNP_ERR_IO, "cannot write checkpoint %s: writing %s failed: %s", path,
                          tmp, strerror(errno));
            close(fd);
            goto fail;
        }
    if (fsync(fd) != 0) {
        s = nnp_error(NNP_ERR_IO, "cannot write checkpoint %s: fsync of %s failed: %s", path,
                      tmp, strerror(errno));
        close(fd);
        goto fail;
    }
    if (close(fd) != 0) {
        s = nnp_error(NNP_ERR_IO, "cannot write checkpoint %s: closing %s failed: %s", path,
                      tmp, strerror(errno));
        goto fail;
    }
    if (rename(tmp, path) != 0) {
        s = nnp_error(NNP_ERR_IO, "cannot write checkpoint %s: rename from %s failed: %s",
                      path, tmp, strerror(errno));
        goto fail;
    }
    free(w.plan);
    if (fsync_path(dir, 1) != 0)
        return nnp_error(NNP_ERR_IO,
                         "checkpoint %s written, but syncing directory %s failed: %s", path, dir,
                         strerror(errno));
    return NNP_OK;
fail:
    if (lstat(tmp, &st) == 0 && S_ISREG(st.st_mode))
        unlink(tmp);
    free(w.plan);
    return s;
}

/* ---- read ------------------------------------------------------------------------------ */

/* Read a scalar attribute of any numeric type, converted to mtype. Returns 0, or -1 with an
 * error recorded (missing: "attribute X missing"; non-numeric: "has type T"). */
static int attr_num(const char *path, hid_t loc, const char *where, const char *name,
                    hid_t mtype, void *v)
{
    if (H5Aexists(loc, name) <= 0) {
        nnp_error(NNP_ERR_FORMAT, "checkpoint %s: attribute %s%s missing", path, where, name);
        return -1;
    }
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    hid_t t = a >= 0 ? H5Aget_type(a) : -1;
    hid_t sp = a >= 0 ? H5Aget_space(a) : -1;
    int ok = t >= 0 && sp >= 0 && H5Sget_simple_extent_npoints(sp) == 1;
    H5T_class_t cls = t >= 0 ? H5Tget_class(t) : H5T_NO_CLASS;
    if (ok && cls != H5T_INTEGER && cls != H5T_FLOAT) {
        char ts[32];
        dtype_str(t, ts, sizeof ts);
        close_id(t);
        close_id(sp);
        close_id(a);
        nnp_error(NNP_ERR_FORMAT, "checkpoint %s: attribute %s%s has type %s, expected a number",
                  path, where, name, ts);
        return -1;
    }
    if (ok)
        ok = H5Aread(a, mtype, v) >= 0;
    close_id(t);
    close_id(sp);
    close_id(a);
    if (!ok) {
        nnp_error(NNP_ERR_FORMAT, "checkpoint %s: cannot read attribute %s%s as a number", path,
                  where, name);
        return -1;
    }
    return 0;
}

/* Read a string attribute (variable or fixed length) into buf. */
static int attr_string(const char *path, hid_t loc, const char *where, const char *name,
                       char *buf, size_t cap)
{
    buf[0] = '\0';
    if (H5Aexists(loc, name) <= 0) {
        nnp_error(NNP_ERR_FORMAT, "checkpoint %s: attribute %s%s missing", path, where, name);
        return -1;
    }
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    hid_t t = a >= 0 ? H5Aget_type(a) : -1;
    int ok = t >= 0 && H5Tget_class(t) == H5T_STRING;
    if (ok && H5Tis_variable_str(t) > 0) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, H5T_VARIABLE);
        H5Tset_cset(mt, H5Tget_cset(t));
        char *s = NULL;
        ok = H5Aread(a, mt, &s) >= 0;
        if (ok && s)
            snprintf(buf, cap, "%s", s);
        if (s)
            H5free_memory(s);
        H5Tclose(mt);
    } else if (ok) {
        size_t sz = H5Tget_size(t);
        char *s = nnp_malloc(sz + 1);
        if (!s) {
            close_id(t);
            close_id(a);
            return -1;
        }
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, sz + 1);
        ok = H5Aread(a, mt, s) >= 0;
        s[sz] = '\0';
        if (ok)
            snprintf(buf, cap, "%s", s);
        free(s);
        H5Tclose(mt);
    }
    close_id(t);
    close_id(a);
    if (!ok) {
        nnp_error(NNP_ERR_FORMAT, "checkpoint %s: attribute %s%s is not a string", path, where,
                  name);
        return -1;
    }
    return 0;
}

/* Open the file for reading: NNP_ERR_IO if it cannot be opened at all, NNP_ERR_FORMAT if it
 * is not (or no longer) a valid HDF5 file. */
static nnp_status open_ckpt(const char *path, hid_t *out)
{
    *out = -1;
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return nnp_error(NNP_ERR_IO, "cannot open checkpoint %s: %s", path, strerror(errno));
    struct stat st;
    int isdir = fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
    close(fd);
    if (isdir)
        return nnp_error(NNP_ERR_IO, "cannot open checkpoint %s: %s", path, strerror(EISDIR));
    if (H5Fis_hdf5(path) <= 0)
        return nnp_error(NNP_ERR_FORMAT, "checkpoint %s: not a valid HDF5 file", path);
    hid_t fapl = make_fapl();
    hid_t f = fapl >= 0 ? H5Fopen(path, H5F_ACC_RDONLY, fapl) : -1;
    char reason[512];
    if (f < 0)
        h5_reason(0, reason);
    close_id(fapl);
    if (f < 0)
        return nnp_error(NNP_ERR_FORMAT,
                         "checkpoint %s: not a valid HDF5 file (truncated or corrupt: %s)", path,
                         reason);
    *out = f;
    return NNP_OK;
}

/* Format name and version. */
static nnp_status check_format(const char *path, hid_t f)
{
    char fmt[128];
    if (H5Aexists(f, "format") <= 0)
        return nnp_error(NNP_ERR_FORMAT,
                         "checkpoint %s: not an nnprec checkpoint (no format attribute)", path);
    if (attr_string(path, f, "", "format", fmt, sizeof fmt) != 0)
        return NNP_ERR_FORMAT;
    if (strcmp(fmt, NNP_CKPT_FORMAT) != 0)
        return nnp_error(NNP_ERR_FORMAT,
                         "checkpoint %s: not an nnprec checkpoint (format '%s', expected '%s')",
                         path, fmt, NNP_CKPT_FORMAT);
    int64_t ver = 0;
    if (attr_num(path, f, "", "format_version", H5T_NATIVE_INT64, &ver) != 0)
        return NNP_ERR_FORMAT;
    if (ver != NNP_CKPT_VERSION)
        return nnp_error(NNP_ERR_FORMAT,
                         "checkpoint %s: format version %lld, this nnprec reads version %d", path,
                         (long long)ver, NNP_CKPT_VERSION);
    return NNP_OK;
}

static nnp_status read_meta_attrs(const char *path, hid_t f, nnp_ckpt_meta *m)
{
    memset(m, 0, sizeof *m);
    int64_t epoch = 0, gb = 0, ws = 0;
    int bad = attr_string(path, f, "", "model", m->model, sizeof m->model) ||
              attr_string(path, f, "", "options", m->options, sizeof m->options) ||
              attr_num(path, f, "", "step", H5T_NATIVE_INT64, &m->step) ||
              attr_num(path, f, "", "epoch", H5T_NATIVE_INT64, &epoch) ||
              attr_num(path, f, "", "pos_in_epoch", H5T_NATIVE_INT64, &m->pos_in_epoch) ||
              attr_num(path, f, "", "seed", H5T_NATIVE_UINT64, &m->seed) ||
              attr_num(path, f, "", "rng_counter", H5T_NATIVE_INT64, &m->rng_counter) ||
              attr_num(path, f, "", "norm_mean", H5T_NATIVE_DOUBLE, &m->norm_mean) ||
              attr_num(path, f, "", "norm_std", H5T_NATIVE_DOUBLE, &m->norm_std) ||
              attr_num(path, f, "", "global_batch", H5T_NATIVE_INT64, &gb) ||
              attr_num(path, f, "", "world_size", H5T_NATIVE_INT64, &ws) ||
              attr_num(path, f, "", "wall_s", H5T_NATIVE_DOUBLE, &m->wall_s);
    if (bad)
        return NNP_ERR_FORMAT;
    m->epoch = (int)epoch;
    m->global_batch = (int)gb;
    m->world_size = (int)ws;
    /* informational: absent is not an error */
    if (H5Aexists(f, "created") > 0)
        attr_string(path, f, "", "created", m->created, sizeof m->created);
    if (H5Aexists(f, "nnprec_version") > 0)
        attr_string(path, f, "", "nnprec_version", m->version, sizeof m->version);
    return NNP_OK;
}

/* Open dataset `name` (a path from the root) and check it is float of `esize` bytes with
 * exactly the given shape. Returns the open dataset or -1 with an error recorded. */
static hid_t check_dset(const char *path, hid_t f, const char *name, size_t esize, int ndim,
                        const hsize_t *dims)
{
    /* every component must exist (H5Lexists fails on a missing intermediate group) */
    char part[256];
    const char *p = name;
    while ((p = strchr(p + 1, '/')) != NULL) {
        snprintf(part, sizeof part, "%.*s", (int)(p - name), name);
        if (H5Lexists(f, part, H5P_DEFAULT) <= 0) {
            nnp_error(NNP_ERR_FORMAT, "checkpoint %s: dataset %s missing (no group %s)", path,
                      name, part);
            return -1;
        }
    }
    if (H5Lexists(f, name, H5P_DEFAULT) <= 0) {
        nnp_error(NNP_ERR_FORMAT, "checkpoint %s: dataset %s missing", path, name);
        return -1;
    }
    hid_t o = H5Oopen(f, name, H5P_DEFAULT);
    if (o < 0 || H5Iget_type(o) != H5I_DATASET) {
        if (o >= 0)
            H5Oclose(o);
        nnp_error(NNP_ERR_FORMAT, "checkpoint %s: %s is not a dataset", path, name);
        return -1;
    }
    hid_t t = H5Dget_type(o);
    char want_t[16], got_t[32];
    snprintf(want_t, sizeof want_t, "float%zu", 8 * esize);
    if (t < 0 || H5Tget_class(t) != H5T_FLOAT || H5Tget_size(t) != esize) {
        if (t >= 0)
            dtype_str(t, got_t, sizeof got_t);
        else
            snprintf(got_t, sizeof got_t, "unknown");
        close_id(t);
        H5Oclose(o);
        nnp_error(NNP_ERR_FORMAT, "checkpoint %s: dataset %s has dtype %s, expected %s", path,
                  name, got_t, want_t);
        return -1;
    }
    close_id(t);
    hid_t sp = H5Dget_space(o);
    hsize_t got[H5S_MAX_RANK];
    int nd = sp >= 0 ? H5Sget_simple_extent_dims(sp, got, NULL) : -1;
    close_id(sp);
    int same = nd == ndim;
    for (int i = 0; same && i < nd; i++)
        same = got[i] == dims[i];
    if (!same) {
        char gs[128], ws[128];
        if (nd >= 0)
            shape_str(nd, got, gs, sizeof gs);
        else
            snprintf(gs, sizeof gs, "unknown");
        shape_str(ndim, dims, ws, sizeof ws);
        H5Oclose(o);
        nnp_error(NNP_ERR_FORMAT, "checkpoint %s: dataset %s has shape %s, model expects %s",
                  path, name, gs, ws);
        return -1;
    }
    return o;
}

typedef struct {
    hid_t id;
    void *dst;
    hid_t mtype;
} pending_read;

/* Validate everything; collect the datasets to read into `rd` (n_rd entries). */
static nnp_status validate(const char *path, hid_t f, const nnp_net *net, const nnp_optim *opt,
                           const nnp_precond *pc, pending_read *rd, int *n_rd,
                           int64_t *opt_t, int64_t *pc_updated)
{
    char model[256], arch[4096], want_arch[4096];
    if (attr_string(path, f, "", "model", model, sizeof model) != 0)
        return NNP_ERR_FORMAT;
    if (strcmp(model, net->spec) != 0)
        return nnp_error(NNP_ERR_FORMAT,
                         "checkpoint %s: the model spec '%s' differs from the checkpoint's '%s'",
                         path, net->spec, model);
    if (attr_string(path, f, "", "architecture", arch, sizeof arch) != 0)
        return NNP_ERR_FORMAT;
    nnp_ckpt_architecture(net, want_arch, sizeof want_arch);
    if (strcmp(arch, want_arch) != 0)
        return nnp_error(NNP_ERR_FORMAT,
                         "checkpoint %s: the model's architecture '%s' differs from the "
                         "checkpoint's '%s' (same spec '%s'; different --act or input shape?)",
                         path, want_arch, arch, model);

    for (int j = 0; j < net->n_tensors; j++) {
        const nnp_tensor *t = &net->tensors[j];
        char group[32], leaf[32], name[80];
        split_name(t->name, group, leaf, sizeof group);
        snprintf(name, sizeof name, "/%s/%s", group, leaf);
        hsize_t dims[4];
        for (int i = 0; i < t->ndim; i++)
            dims[i] = (hsize_t)t->shape[i];
        hid_t d = check_dset(path, f, name, 4, t->ndim, dims);
        if (d < 0)
            return NNP_ERR_FORMAT;
        rd[(*n_rd)++] = (pending_read){d, net->params + t->off, H5T_NATIVE_FLOAT};
    }

    if (opt) {
        if (H5Lexists(f, "optimizer", H5P_DEFAULT) <= 0)
            return nnp_error(NNP_ERR_FORMAT, "checkpoint %s: group /optimizer missing", path);
        hid_t g = H5Gopen2(f, "optimizer", H5P_DEFAULT);
        if (g < 0)
            return nnp_error(NNP_ERR_FORMAT, "checkpoint %s: /optimizer is not a group", path);
        char kind[32];
        int bad = attr_string(path, g, "/optimizer:", "kind", kind, sizeof kind) ||
                  attr_num(path, g, "/optimizer:", "t", H5T_NATIVE_INT64, opt_t);
        H5Gclose(g);
        if (bad)
            return NNP_ERR_FORMAT;
        const char *want = nnp_opt_name(opt->cfg.kind);
        if (strcmp(kind, want) != 0)
            return nnp_error(NNP_ERR_FORMAT,
                             "checkpoint %s: optimizer '%s' in the checkpoint, the run uses '%s'",
                             path, kind, want);
        if (*opt_t < 0)
            return nnp_error(NNP_ERR_FORMAT, "checkpoint %s: optimizer step count t = %lld",
                             path, (long long)*opt_t);
        const char *names[2] = {buf1_name(opt->cfg.kind), "exp_avg_sq"};
        float *bufs[2] = {opt->buf1, opt->buf2};
        hsize_t n = (hsize_t)net->n_params;
        for (int i = 0; i < 2; i++) {
            char name[64];
            snprintf(name, sizeof name, "/optimizer/%s", names[i]);
            int present = H5Lexists(f, name, H5P_DEFAULT) > 0;
            if (present && !bufs[i])
                return nnp_error(NNP_ERR_FORMAT,
                                 "checkpoint %s: dataset %s present, but the run's %s keeps no "
                                 "such state (momentum 0?)",
                                 path, name, want);
            if (!bufs[i])
                continue;
            if (opt->n != net->n_params)
                return nnp_error(NNP_ERR_ARG,
                                 "checkpoint %s: optimizer holds %zu elements, the model %zu",
                                 path, opt->n, net->n_params);
            hid_t d = check_dset(path, f, name, 4, 1, &n);
            if (d < 0)
                return NNP_ERR_FORMAT;
            rd[(*n_rd)++] = (pending_read){d, bufs[i], H5T_NATIVE_FLOAT};
        }
    }

    if (pc) {
        if (H5Lexists(f, "precond", H5P_DEFAULT) <= 0)
            return nnp_error(NNP_ERR_FORMAT, "checkpoint %s: group /precond missing", path);
        hid_t g = H5Gopen2(f, "precond", H5P_DEFAULT);
        if (g < 0)
            return nnp_error(NNP_ERR_FORMAT, "checkpoint %s: /precond is not a group", path);
        char mode[32], formula[32];
        int bad = attr_string(path, g, "/precond:", "mode", mode, sizeof mode) ||
                  attr_string(path, g, "/precond:", "formula", formula, sizeof formula) ||
                  attr_num(path, g, "/precond:", "updated_at", H5T_NATIVE_INT64, pc_updated);
        H5Gclose(g);
        if (bad)
            return NNP_ERR_FORMAT;
        const char *wm = nnp_precond_mode_name(pc->cfg.mode);
        const char *wf = nnp_precond_formula_name(pc->cfg.formula);
        if (strcmp(mode, wm) != 0)
            return nnp_error(NNP_ERR_FORMAT,
                             "checkpoint %s: preconditioner mode '%s' in the checkpoint, the "
                             "run uses '%s'",
                             path, mode, wm);
        if (strcmp(formula, wf) != 0)
            return nnp_error(NNP_ERR_FORMAT,
                             "checkpoint %s: preconditioner formula '%s' in the checkpoint, the "
                             "run uses '%s'",
                             path, formula, wf);
        if (pc->n != net->n_tensors)
            return nnp_error(NNP_ERR_ARG,
                             "checkpoint %s: preconditioner has %d tensors, the model %d", path,
                             pc->n, net->n_tensors);
        const char *names[4] = {"sigma", "gain", "prec", "scale"};
        double *arrs[4] = {pc->sigma, pc->gain, pc->prec, pc->scale};
        hsize_t n = (hsize_t)pc->n;
        for (int i = 0; i < 4; i++) {
            if (!arrs[i])
                continue;
            char name[64];
            snprintf(name, sizeof name, "/precond/%s", names[i]);
            hid_t d = check_dset(path, f, name, 8, 1, &n);
            if (d < 0)
                return NNP_ERR_FORMAT;
            rd[(*n_rd)++] = (pending_read){d, arrs[i], H5T_NATIVE_DOUBLE};
        }
    }
    return NNP_OK;
}

nnp_status nnp_ckpt_read(const char *path, nnp_net *net, nnp_optim *opt, nnp_precond *pc,
                         nnp_ckpt_meta *meta)
{
    if (!path || !net)
        return nnp_error(NNP_ERR_ARG, "nnp_ckpt_read: NULL argument");
    h5_quiet q;
    quiet_on(&q);
    hid_t f;
    nnp_status s = open_ckpt(path, &f);
    if (s != NNP_OK) {
        quiet_off(&q);
        return s;
    }
    nnp_ckpt_meta *m = nnp_malloc(sizeof *m);
    int cap = net->n_tensors + 6, n_rd = 0;
    pending_read *rd = nnp_calloc((size_t)cap, sizeof *rd);
    if (!m || !rd) {
        s = NNP_ERR_NOMEM;
        goto done;
    }
    int64_t opt_t = 0, pc_updated = -1;
    s = check_format(path, f);
    if (s == NNP_OK)
        s = read_meta_attrs(path, f, m);
    if (s == NNP_OK)
        s = validate(path, f, net, opt, pc, rd, &n_rd, &opt_t, &pc_updated);
    for (int i = 0; s == NNP_OK && i < n_rd; i++) {
        errno = 0;
        if (H5Dread(rd[i].id, rd[i].mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, rd[i].dst) < 0) {
            char reason[512], name[256];
            int err = errno;
            H5Iget_name(rd[i].id, name, sizeof name);
            s = nnp_error(NNP_ERR_IO, "checkpoint %s: cannot read dataset %s: %s", path, name,
                          h5_reason(err, reason));
        }
    }
    if (s == NNP_OK) {
        if (opt)
            opt->t = opt_t;
        if (pc)
            pc->updated_at = pc_updated;
        if (meta)
            *meta = *m;
    }
done:
    for (int i = 0; rd && i < n_rd; i++)
        close_id(rd[i].id);
    free(rd);
    free(m);
    H5Fclose(f);
    quiet_off(&q);
    return s;
}

nnp_status nnp_ckpt_read_meta(const char *path, nnp_ckpt_meta *meta)
{
    h5_quiet q;
    quiet_on(&q);
    hid_t f;
    nnp_status s = open_ckpt(path, &f);
    if (s == NNP_OK) {
        s = check_format(path, f);
        if (s == NNP_OK)
            s = read_meta_attrs(path, f, meta);
        H5Fclose(f);
    }
    quiet_off(&q);
    return s;
}

int nnp_ckpt_option(const nnp_ckpt_meta *meta, const char *name, char *buf, size_t cap)
{
    size_t nl = strlen(name);
    const char *p = meta->options;
    if (cap)
        buf[0] = '\0';
    while (*p) {
        const char *e = strchr(p, '\n');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
            if (cap)
                snprintf(buf, cap, "%.*s", (int)(len - nl - 1), p + nl + 1);
            return 1;
        }
        if (!e)
            break;
        p = e + 1;
    }
    return 0;
}

/* ---- info ------------------------------------------------------------------------------ */

typedef struct {
    FILE *out;
    size_t total;
} info_ctx;

static void print_dset(hid_t loc, const char *name, const char *label, info_ctx *c)
{
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0)
        return;
    hid_t sp = H5Dget_space(d), t = H5Dget_type(d);
    hsize_t dims[H5S_MAX_RANK];
    int nd = sp >= 0 ? H5Sget_simple_extent_dims(sp, dims, NULL) : -1;
    char ss[128] = "?", ts[32] = "?";
    if (nd >= 0)
        shape_str(nd, dims, ss, sizeof ss);
    if (t >= 0)
        dtype_str(t, ts, sizeof ts);
    hssize_t np = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : 0;
    fprintf(c->out, "  %-28s %-8s %-16s %lld\n", label, ts, ss, (long long)np);
    c->total += np > 0 ? (size_t)np : 0;
    close_id(t);
    close_id(sp);
    H5Dclose(d);
}

static herr_t info_layer(hid_t g, const char *name, const H5L_info_t *li, void *data)
{
    info_ctx *c = data;
    if (strcmp(name, "optimizer") == 0 || strcmp(name, "precond") == 0)
        return 0;
    hid_t grp = H5Gopen2(g, name, H5P_DEFAULT);
    if (grp < 0)
        return 0;
    const char *leaves[2] = {"weight", "bias"};
    for (int i = 0; i < 2; i++) {
        if (H5Lexists(grp, leaves[i], H5P_DEFAULT) > 0) {
            char label[128];
            snprintf(label, sizeof label, "/%s/%s", name, leaves[i]);
            print_dset(grp, leaves[i], label, c);
        }
    }
    H5Gclose(grp);
    return 0;
}

static void print_attr_line(const char *path, hid_t loc, const char *where, const char *name,
                            const char *label, FILE *out)
{
    char buf[256];
    if (H5Aexists(loc, name) <= 0)
        return;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    hid_t t = a >= 0 ? H5Aget_type(a) : -1;
    H5T_class_t cls = t >= 0 ? H5Tget_class(t) : H5T_NO_CLASS;
    close_id(t);
    close_id(a);
    if (cls == H5T_STRING) {
        if (attr_string(path, loc, where, name, buf, sizeof buf) == 0)
            fprintf(out, "%-16s %s\n", label, buf);
    } else if (cls == H5T_FLOAT) {
        double v;
        if (attr_num(path, loc, where, name, H5T_NATIVE_DOUBLE, &v) == 0)
            fprintf(out, "%-16s %.9g\n", label, v);
    } else if (cls == H5T_INTEGER) {
        long long v;
        if (attr_num(path, loc, where, name, H5T_NATIVE_LLONG, &v) == 0)
            fprintf(out, "%-16s %lld\n", label, v);
    }
    nnp_error_clear();
}

nnp_status nnp_ckpt_info(const char *path, FILE *out)
{
    h5_quiet q;
    quiet_on(&q);
    hid_t f;
    nnp_status s = open_ckpt(path, &f);
    if (s != NNP_OK) {
        quiet_off(&q);
        return s;
    }
    nnp_ckpt_meta *m = nnp_malloc(sizeof *m);
    if (!m) {
        H5Fclose(f);
        quiet_off(&q);
        return NNP_ERR_NOMEM;
    }
    s = check_format(path, f);
    if (s == NNP_OK)
        s = read_meta_attrs(path, f, m);
    if (s == NNP_OK) {
        char arch[4096] = "";
        attr_string(path, f, "", "architecture", arch, sizeof arch);
        fprintf(out, "checkpoint       %s\n", path);
        fprintf(out, "format           %s version %d, written by nnprec %s at %s\n",
                NNP_CKPT_FORMAT, NNP_CKPT_VERSION, m->version[0] ? m->version : "?",
                m->created[0] ? m->created : "?");
        fprintf(out, "model            %s\n", m->model);
        fprintf(out, "architecture     %s\n", arch);
        fprintf(out, "step             %lld (epoch %d, batch %lld of the epoch)\n",
                (long long)m->step, m->epoch, (long long)m->pos_in_epoch);
        fprintf(out, "seed             %" PRIu64 " (rng counter %lld)\n", m->seed,
                (long long)m->rng_counter);
        fprintf(out, "normalization    mean %.9g std %.9g\n", m->norm_mean, m->norm_std);
        fprintf(out, "global batch     %d on %d rank%s\n", m->global_batch, m->world_size,
                m->world_size == 1 ? "" : "s");
        fprintf(out, "wall time        %.1f s\n", m->wall_s);
        fprintf(out, "parameters:\n");
        info_ctx c = {out, 0};
        hsize_t idx = 0;
        if (H5Literate(f, H5_INDEX_CRT_ORDER, H5_ITER_INC, &idx, info_layer, &c) < 0) {
            idx = 0;
            c.total = 0;
            H5Literate(f, H5_INDEX_NAME, H5_ITER_INC, &idx, info_layer, &c);
        }
        fprintf(out, "  total %zu parameters (%.2f MB float32)\n", c.total,
                (double)c.total * 4.0 / 1e6);
        if (H5Lexists(f, "optimizer", H5P_DEFAULT) > 0) {
            hid_t g = H5Gopen2(f, "optimizer", H5P_DEFAULT);
            fprintf(out, "optimizer:\n");
            char kind[32] = "";
            if (attr_string(path, g, "/optimizer:", "kind", kind, sizeof kind) != 0)
                nnp_error_clear();
            int sgd = strcmp(kind, "sgd") == 0;
            const char *an_sgd[] = {"kind", "t", "momentum", "dampening", "nesterov",
                                    "weight_decay"};
            const char *an_adam[] = {"kind", "t", "beta1", "beta2", "eps", "weight_decay"};
            const char **an = sgd ? an_sgd : an_adam;
            for (size_t i = 0; i < 6; i++) {
                char label[40];
                snprintf(label, sizeof label, "  %s", an[i]);
                print_attr_line(path, g, "/optimizer:", an[i], label, out);
            }
            info_ctx oc = {out, 0};
            const char *dn[] = {"momentum_buffer", "exp_avg", "exp_avg_sq"};
            for (size_t i = 0; i < 3; i++)
                if (H5Lexists(g, dn[i], H5P_DEFAULT) > 0) {
                    char label[64];
                    snprintf(label, sizeof label, "/optimizer/%s", dn[i]);
                    print_dset(g, dn[i], label, &oc);
                }
            H5Gclose(g);
        } else {
            fprintf(out, "optimizer:       (none stored)\n");
        }
        if (H5Lexists(f, "precond", H5P_DEFAULT) > 0) {
            hid_t g = H5Gopen2(f, "precond", H5P_DEFAULT);
            fprintf(out, "preconditioner:\n");
            const char *an[] = {"mode", "formula", "updated_at", "every"};
            for (size_t i = 0; i < sizeof an / sizeof an[0]; i++) {
                char label[40];
                snprintf(label, sizeof label, "  %s", an[i]);
                print_attr_line(path, g, "/precond:", an[i], label, out);
            }
            hid_t d = H5Dopen2(g, "scale", H5P_DEFAULT);
            if (d >= 0) {
                hid_t sp = H5Dget_space(d);
                hssize_t n = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : 0;
                close_id(sp);
                double *v = n > 0 && n < 100000 ? nnp_malloc((size_t)n * sizeof *v) : NULL;
                if (v && H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0) {
                    fprintf(out, "  %-14s", "scale");
                    for (hssize_t i = 0; i < n; i++)
                        fprintf(out, " %.4g", v[i]);
                    fprintf(out, "\n");
                }
                free(v);
                H5Dclose(d);
            }
            H5Gclose(g);
        } else {
            fprintf(out, "preconditioner:  (none stored)\n");
        }
        if (m->options[0]) {
            fprintf(out, "options:\n");
            const char *p = m->options;
            while (*p) {
                const char *e = strchr(p, '\n');
                int len = e ? (int)(e - p) : (int)strlen(p);
                if (len > 0)
                    fprintf(out, "  %.*s\n", len, p);
                if (!e)
                    break;
                p = e + 1;
            }
        }
    }
    free(m);
    H5Fclose(f);
    quiet_off(&q);
    return s;
}

/* ---- rotation and latest --------------------------------------------------------------- */

nnp_status nnp_ckpt_path(const char *dir, int64_t step, char *buf, size_t cap)
{
    if (!dir || !dir[0])
        dir = ".";
    const char *sep = (dir[0] && dir[strlen(dir) - 1] == '/') ? "" : "/";
    int k = snprintf(buf, cap, "%s%sckpt-%08lld.h5", dir, sep, (long long)step);
    if (k < 0 || (size_t)k >= cap)
        return nnp_error(NNP_ERR_ARG, "checkpoint path too long in %s", dir);
    return NNP_OK;
}

/* "ckpt-<digits>.h5" -> step; -1 if the name does not have that form. */
static int64_t ckpt_step(const char *name)
{
    if (strncmp(name, "ckpt-", 5) != 0)
        return -1;
    const char *p = name + 5;
    int64_t v = 0;
    int nd = 0;
    while (isdigit((unsigned char)*p)) {
        if (v > (INT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (*p++ - '0');
        nd++;
    }
    if (nd == 0 || strcmp(p, ".h5") != 0)
        return -1;
    return v;
}

typedef struct {
    int64_t step;
    char name[256];
} ckpt_entry;

static int cmp_desc(const void *a, const void *b)
{
    int64_t x = ((const ckpt_entry *)a)->step, y = ((const ckpt_entry *)b)->step;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* All ckpt-*.h5 in dir, newest (highest step) first. *out is NULL when there are none. */
static nnp_status list_ckpts(const char *dir, ckpt_entry **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return nnp_error(NNP_ERR_IO, "cannot list checkpoint directory %s: %s", dir,
                         strerror(errno));
    size_t cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int64_t st = ckpt_step(e->d_name);
        if (st < 0 || strlen(e->d_name) >= sizeof((ckpt_entry *)0)->name)
            continue;
        if (*n == cap) {
            size_t nc = cap ? 2 * cap : 16;
            ckpt_entry *ne = nnp_malloc(nc * sizeof *ne);
            if (!ne) {
                closedir(d);
                free(*out);
                *out = NULL;
                return NNP_ERR_NOMEM;
            }
            if (*n)
                memcpy(ne, *out, *n * sizeof *ne);
            free(*out);
            *out = ne;
            cap = nc;
        }
        (*out)[*n].step = st;
        snprintf((*out)[*n].name, sizeof(*out)[*n].name, "%s", e->d_name);
        (*n)++;
    }
    closedir(d);
    if (*n > 1)
        qsort(*out, *n, sizeof **out, cmp_desc);
    return NNP_OK;
}

nnp_status nnp_ckpt_publish(const char *dir, const char *path, int keep)
{
    char latest[PATH_CAP], tmp[PATH_CAP];
    const char *base = base_of(path);
    int k1 = snprintf(latest, sizeof latest, "%s/latest", dir);
    int k2 = snprintf(tmp, sizeof tmp, "%s/latest.tmp", dir);
    if (k1 < 0 || k2 < 0 || (size_t)k2 >= sizeof tmp)
        return nnp_error(NNP_ERR_ARG, "checkpoint directory path too long: %s", dir);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return nnp_error(NNP_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    int ok = fprintf(f, "%s\n", base) > 0 && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int err = errno;
    if (fclose(f) != 0 && ok) {
        ok = 0;
        err = errno;
    }
    if (!ok) {
        unlink(tmp);
        return nnp_error(NNP_ERR_IO, "cannot write %s: %s", tmp, strerror(err));
    }
    if (rename(tmp, latest) != 0) {
        err = errno;
        unlink(tmp);
        return nnp_error(NNP_ERR_IO, "cannot rename %s to %s: %s", tmp, latest, strerror(err));
    }
    if (fsync_path(dir, 1) != 0)
        return nnp_error(NNP_ERR_IO, "cannot sync directory %s: %s", dir, strerror(errno));
    if (keep <= 0)
        return NNP_OK;

    ckpt_entry *list;
    size_t n;
    NNP_CALL(list_ckpts(dir, &list, &n));
    nnp_status s = NNP_OK;
    for (size_t i = (size_t)keep; i < n; i++) {
        if (strcmp(list[i].name, base) == 0)
            continue;
        char victim[PATH_CAP];
        snprintf(victim, sizeof victim, "%s/%s", dir, list[i].name);
        if (unlink(victim) != 0 && errno != ENOENT && s == NNP_OK)
            s = nnp_error(NNP_ERR_IO, "cannot delete old checkpoint %s: %s", victim,
                          strerror(errno));
    }
    free(list);
    return s;
}

nnp_status nnp_ckpt_latest(const char *dir, char *buf, size_t cap, int *found)
{
    *found = 0;
    if (cap)
        buf[0] = '\0';
    char latest[PATH_CAP];
    snprintf(latest, sizeof latest, "%s/latest", dir);
    FILE *f = fopen(latest, "r");
    if (f) {
        char name[512] = "";
        char *got = fgets(name, sizeof name, f);
        fclose(f);
        size_t len = got ? strlen(name) : 0;
        while (len > 0 && isspace((unsigned char)name[len - 1]))
            name[--len] = '\0';
        if (len == 0)
            return nnp_error(NNP_ERR_IO, "%s is empty: it should name the latest checkpoint",
                             latest);
        int k = name[0] == '/' ? snprintf(buf, cap, "%s", name)
                               : snprintf(buf, cap, "%s/%s", dir, name);
        if (k < 0 || (size_t)k >= cap)
            return nnp_error(NNP_ERR_ARG, "checkpoint path too long in %s", dir);
        struct stat st;
        if (stat(buf, &st) != 0)
            return nnp_error(NNP_ERR_IO, "%s names %s, which cannot be opened: %s", latest, buf,
                             strerror(errno));
        *found = 1;
        return NNP_OK;
    }
    if (errno != ENOENT)
        return nnp_error(NNP_ERR_IO, "cannot read %s: %s", latest, strerror(errno));
    /* no pointer (a run stopped between its first rename and the pointer update, or the
     * directory was filled by hand): the highest step present */
    struct stat st;
    if (stat(dir, &st) != 0)
        return errno == ENOENT ? NNP_OK
                               : nnp_error(NNP_ERR_IO, "cannot access %s: %s", dir,
                                           strerror(errno));
    ckpt_entry *list;
    size_t n;
    NNP_CALL(list_ckpts(dir, &list, &n));
    if (n > 0) {
        int k = snprintf(buf, cap, "%s/%s", dir, list[0].name);
        free(list);
        if (k < 0 || (size_t)k >= cap)
            return nnp_error(NNP_ERR_ARG, "checkpoint path too long in %s", dir);
        *found = 1;
    }
    return NNP_OK;
}
