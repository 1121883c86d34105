/* ckpt_write.c - HDF5 checkpoints: the atomic write (see ckpt.h and docs/checkpoint.md).
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
 * This file also holds the HDF5 helpers the module shares (ckpt_impl.h): HDF5's automatic
 * error printing is switched off inside every public function; failures become one
 * nnp_error() message naming the file and the field (and errno or HDF5's own innermost
 * message as the reason).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "ckpt_impl.h"
#include "nnprec/alloc.h"
#include "nnprec/hash.h"

#ifndef NNP_VERSION
#define NNP_VERSION "unknown"
#endif

/* ---- HDF5 error handling --------------------------------------------------------------- */

static herr_t walk_innermost(unsigned n, const H5E_error2_t *e, void *data)
{
    if (n == 0 && e->desc)
        snprintf(data, 512, "%s", e->desc);
    return 0;
}

const char *nnp__ckpt_h5_reason(int err, char *buf)
{
    if (err)
        return strerror(err);
    buf[0] = '\0';
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_innermost, buf);
    return buf[0] ? buf : "HDF5 error";
}

void nnp__ckpt_close_id(hid_t id)
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
hid_t nnp__ckpt_make_fapl(void)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0)
        return fapl;
    H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
    H5Pset_file_locking(fapl, 0, 1);
    return fapl;
}

/* ---- small utilities ------------------------------------------------------------------- */

void nnp__ckpt_split_name(const char *name, char *group, char *leaf, size_t cap)
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
    const char *sep = "/"; /* "" for the first item of a block's branch */
    for (int i = 0; i < net->n_layers; i++) {
        const nnp_layer *L = &net->layers[i];
        if (L->res == NNP_RES_SHORTCUT) /* implied by the branch */
            continue;
        switch (L->kind) {
        case NNP_L_DENSE: APPEND("%sdense:%d", sep, L->out.c); break;
        case NNP_L_CONV2D: APPEND("%sconv:%d:%d:%d:%d", sep, L->out.c, L->k, L->s, L->p); break;
        case NNP_L_MAXPOOL: APPEND("%smaxpool:%d:%d", sep, L->k, L->s); break;
        case NNP_L_AVGPOOL: APPEND("%savgpool:%d:%d", sep, L->k, L->s); break;
        case NNP_L_FLATTEN: APPEND("%sflatten", sep); break;
        case NNP_L_BN: APPEND("%sbn", sep); break;
        case NNP_L_GAP: APPEND("%sgap", sep); break;
        case NNP_L_DROPOUT: APPEND("%sdropout:%.9g", sep, (double)L->drop); break;
        case NNP_L_ACT:
            if (L->act == NNP_ACT_LEAKY_RELU)
                APPEND("%sleaky-relu:%.9g", sep, (double)L->alpha);
            else
                APPEND("%s%s", sep, nnp_act_name(L->act));
            break;
        case NNP_L_RES_FORK: APPEND("/res["); break;
        case NNP_L_RES_ADD: APPEND("]"); break;
        }
        sep = L->kind == NNP_L_RES_FORK ? "" : "/";
    }
#undef APPEND
}

/* ---- attribute writing ------------------------------------------------------------------ */

static herr_t attr_write(hid_t loc, const char *name, hid_t ftype, hid_t mtype, const void *v)
{
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = sp >= 0 ? H5Acreate2(loc, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT) : -1;
    herr_t r = a >= 0 ? H5Awrite(a, mtype, v) : -1;
    nnp__ckpt_close_id(a);
    nnp__ckpt_close_id(sp);
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

/* A fixed-length, NUL-terminated UTF-8 string of the value's own length (h5py reads it as
 * bytes). Fixed-length, not variable-length: a variable-length string lives in the file's
 * global heap, which has no checksum, and a single damaged byte there makes HDF5 1.10 loop
 * forever on reading it (found by tests/fuzz/fuzz_ckpt.c; h5dump hangs on it too); a
 * fixed-length one lives in its object header, which the 1.8 format checksums. */
static herr_t attr_str(hid_t loc, const char *name, const char *v)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0)
        return -1;
    H5Tset_size(t, strlen(v) + 1);
    H5Tset_strpad(t, H5T_STR_NULLTERM);
    H5Tset_cset(t, H5T_CSET_UTF8);
    herr_t r = attr_write(loc, name, t, t, v);
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
 * the native one, so the bytes in memory are the bytes in the file on any host. The
 * dataset's xxh64 attribute is the XXH64 of those bytes. Returns the open dataset (the
 * caller may add attributes) or -1. */
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
    nnp__ckpt_close_id(dcpl);
    nnp__ckpt_close_id(sp);
    if (d < 0)
        return -1;
    haddr_t off = H5Dget_offset(d);
    if (n > 0 && off == HADDR_UNDEF) {
        H5Dclose(d);
        return -1;
    }
    /* the checksum of the bytes about to be written, verified by every read */
    if (attr_u64(d, NNP__CKPT_HASH_ATTR, nnp_xxh64(data, n * esize, 0)) < 0) {
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

/* A BatchNorm layer's buffers next to its weight and bias, with PyTorch's names:
 * running_mean, running_var (float32 [C]) and num_batches_tracked (int64, a scalar). */
static herr_t write_bn_buffers(hid_t g, const nnp_net *net, const nnp_layer *L, wctx *w)
{
    const hsize_t C = (hsize_t)L->in.c;
    const char *names[2] = {"running_mean", "running_var"};
    for (int i = 0; i < 2; i++) {
        hid_t d = dset_plan(g, names[i], H5T_NATIVE_FLOAT, 1, &C,
                            net->running + L->roff + (size_t)i * C, sizeof(float), w);
        if (d < 0)
            return -1;
        H5Dclose(d);
    }
    hid_t d = dset_plan(g, "num_batches_tracked", H5T_NATIVE_INT64, 0, NULL,
                        &net->tracked[L->bn], sizeof(long long), w);
    if (d < 0)
        return -1;
    H5Dclose(d);
    return 0;
}

static int write_params(hid_t f, const nnp_net *net, wctx *w)
{
    for (int j = 0; j < net->n_tensors; j++) {
        const nnp_tensor *t = &net->tensors[j];
        char group[64], leaf[64];
        nnp__ckpt_split_name(t->name, group, leaf, sizeof group);
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
        if (r >= 0 && t->norm && t->is_bias)
            r = write_bn_buffers(g, net, &net->layers[t->layer], w);
        H5Gclose(g);
        WTRY(r, t->name);
    }
    return 0;
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
    /* lars and lamb only: older files, and the other optimizers', stay as they were */
    if (!bad && c->kind == NNP_OPT_LARS)
        bad = attr_f64(g, "lars_eta", c->lars_eta) < 0;
    if (!bad && c->kind == NNP_OPT_LAMB)
        bad = attr_f64(g, "lamb_clip", c->lamb_clip) < 0;
    if (!bad && nnp_optim_layerwise(c->kind))
        bad = attr_i64(g, "exclude_bias", c->exclude_bias) < 0;
    hsize_t n = (hsize_t)o->n;
    hid_t d;
    if (!bad && o->buf1) {
        w->what = "/optimizer state";
        errno = 0;
        d = dset_plan(g, nnp__ckpt_buf1_name(c->kind), H5T_NATIVE_FLOAT, 1, &n, o->buf1,
                      sizeof(float), w);
        bad = d < 0;
        nnp__ckpt_close_id(d);
    }
    if (!bad && o->buf2) {
        w->what = "/optimizer state";
        errno = 0;
        d = dset_plan(g, "exp_avg_sq", H5T_NATIVE_FLOAT, 1, &n, o->buf2, sizeof(float), w);
        bad = d < 0;
        nnp__ckpt_close_id(d);
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
        nnp__ckpt_close_id(d);
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
              attr_str(f, "checksum", NNP__CKPT_HASH_ATTR) < 0 ||
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
              attr_f64(f, "wall_s", m->wall_s) < 0 ||
              (m->train_samples > 0 && attr_i64(f, "train_samples", m->train_samples) < 0) ||
              (m->val_split > 0 && attr_i64(f, "val_split", m->val_split) < 0) ||
              (m->micro_shard > 0 && attr_i64(f, "micro_shard", m->micro_shard) < 0) ||
              (m->shuffle_block > 0 && (attr_i64(f, "shuffle_block", m->shuffle_block) < 0 ||
                                        attr_i64(f, "shuffle_window", m->shuffle_window) < 0)) ||
              (m->lr_factor > 0 && m->lr_factor < 1 &&
               attr_f64(f, "lr_factor", m->lr_factor) < 0) ||
              (m->rollbacks > 0 && attr_i64(f, "rollbacks", m->rollbacks) < 0) ||
              (m->noise_scale && (attr_f64(f, "noise_ema_g2", m->noise_ema_g2) < 0 ||
                                  attr_f64(f, "noise_ema_trsigma", m->noise_ema_tr) < 0 ||
                                  attr_i64(f, "noise_steps", m->noise_steps) < 0)) ||
              attr_str(f, "created", created) < 0;
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
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE), fapl = nnp__ckpt_make_fapl();
    if (fcpl >= 0)
        H5Pset_link_creation_order(fcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
    /* HDF5 1.8's file format: its superblock, object headers (attributes included) and
     * indexes carry checksums that HDF5 verifies on every read; the data's own are the
     * xxh64 attributes (readable by any HDF5 >= 1.8) */
    if (fapl >= 0)
        H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V18);
    errno = 0;
    hid_t f = (fcpl >= 0 && fapl >= 0) ? H5Fcreate(tmp, H5F_ACC_TRUNC, fcpl, fapl) : -1;
    int err = errno;
    nnp__ckpt_close_id(fcpl);
    nnp__ckpt_close_id(fapl);
    if (f < 0)
        return nnp_error(NNP_ERR_IO, "cannot write checkpoint %s: cannot create %s: %s", w->path,
                         tmp, nnp__ckpt_h5_reason(err, reason));
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
                                 w->what ? w->what : "data", nnp__ckpt_h5_reason(err, reason));
        H5Fclose(f);
        return s;
    }
    errno = 0;
    if (H5Fclose(f) < 0)
        return nnp_error(NNP_ERR_IO, "cannot write checkpoint %s (closing %s): %s", w->path,
                         tmp, nnp__ckpt_h5_reason(errno, reason));
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
    char tmp[NNP__CKPT_PATH_CAP], dir[NNP__CKPT_PATH_CAP];
    int k = snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (k < 0 || (size_t)k >= sizeof tmp)
        return nnp_error(NNP_ERR_ARG, "checkpoint path too long: %s", path);
    nnp__ckpt_dir_of(path, dir, sizeof dir);

    /* a directory (or anything but a regular file) in the way of PATH.tmp is not ours */
    struct stat st;
    if (lstat(tmp, &st) == 0 && !S_ISREG(st.st_mode))
        return nnp_error(NNP_ERR_IO, "cannot write checkpoint %s: %s exists and is not a file",
                         path, tmp);

    /* Before HDF5 touches the file: the whole size must be allowed (file size limits fail
     * with EFBIG here, on a sparse file, rather than inside HDF5) and the disk must have
     * room for it. HDF5 itself then writes only a few kB; the bulk is our pwrite()s. */
    size_t bound = net->n_params * sizeof(float) + ((size_t)1 << 20) +
                   net->n_running * sizeof(float) + (size_t)net->n_bn * sizeof(long long);
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

    wctx w = {path, NULL, NULL, 0, net->n_tensors + 3 * net->n_bn + 8};
    w.plan = nnp_calloc((size_t)w.cap, sizeof *w.plan);
    if (!w.plan)
        return NNP_ERR_NOMEM;
    nnp__h5_quiet q;
    nnp__h5_quiet_on(&q);
    nnp_status s = write_structure(tmp, net, opt, pc, meta, &w);
    nnp__h5_quiet_off(&q);
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
    if (nnp__ckpt_fsync_path(dir, 1) != 0)
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
