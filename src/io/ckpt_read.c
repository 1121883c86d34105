/* ckpt_read.c - HDF5 checkpoints: the validating read, the metadata, the option lookup
 * and the summary for `nnprec info` (see ckpt.h and docs/checkpoint.md).
 *
 * Reading: two passes. The first checks every attribute, dataset, shape and dtype against
 * the caller's net/optimizer/preconditioner; only when all of them match does the second
 * pass read the data, so a rejected checkpoint leaves the caller's state untouched.
 *
 * HDF5's automatic error printing is switched off inside every public function; failures
 * become one nnp_error() message naming the file and the field (and errno or HDF5's own
 * innermost message as the reason).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt_impl.h"
#include "nnprec/alloc.h"
#include "nnprec/hash.h"
#include "nnprec/rundir.h"

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

/* An HDF5 failure to decode what should be there (HDF5 checks the checksums of the file's
 * metadata: a flipped bit in an object header or index fails here). */
static nnp_status damaged(const char *path, const char *what)
{
    char reason[512];
    return nnp_error(NNP_ERR_FORMAT, "checkpoint %s: cannot read %s: %s (the file is damaged)",
                     path, what, nnp__ckpt_h5_reason(0, reason));
}

/* ---- read ------------------------------------------------------------------------------ */

/* 0 when attribute `name` exists at loc; -1 with the error recorded ("attribute X missing",
 * or the file is damaged there) when it does not. */
static int attr_present(const char *path, hid_t loc, const char *where, const char *name)
{
    htri_t has = H5Aexists(loc, name);
    if (has < 0) {
        char what[128];
        snprintf(what, sizeof what, "attribute %s%s", where, name);
        damaged(path, what);
        return -1;
    }
    if (!has) {
        nnp_error(NNP_ERR_FORMAT, "checkpoint %s: attribute %s%s missing", path, where, name);
        return -1;
    }
    return 0;
}

/* Read a scalar attribute of any numeric type, converted to mtype. Returns 0, or -1 with an
 * error recorded (missing: "attribute X missing"; non-numeric: "has type T"). */
static int attr_num(const char *path, hid_t loc, const char *where, const char *name,
                    hid_t mtype, void *v)
{
    if (attr_present(path, loc, where, name) < 0)
        return -1;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    hid_t t = a >= 0 ? H5Aget_type(a) : -1;
    hid_t sp = a >= 0 ? H5Aget_space(a) : -1;
    int ok = t >= 0 && sp >= 0 && H5Sget_simple_extent_npoints(sp) == 1;
    H5T_class_t cls = t >= 0 ? H5Tget_class(t) : H5T_NO_CLASS;
    if (ok && cls != H5T_INTEGER && cls != H5T_FLOAT) {
        char ts[32];
        nnp__h5_dtype_str(t, ts, sizeof ts);
        nnp__ckpt_close_id(t);
        nnp__ckpt_close_id(sp);
        nnp__ckpt_close_id(a);
        nnp_error(NNP_ERR_FORMAT, "checkpoint %s: attribute %s%s has type %s, expected a number",
                  path, where, name, ts);
        return -1;
    }
    if (ok)
        ok = H5Aread(a, mtype, v) >= 0;
    nnp__ckpt_close_id(t);
    nnp__ckpt_close_id(sp);
    nnp__ckpt_close_id(a);
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
    if (attr_present(path, loc, where, name) < 0)
        return -1;
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
            nnp__ckpt_close_id(t);
            nnp__ckpt_close_id(a);
            return -1;
        }
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, sz + 1);
        H5Tset_cset(mt, H5Tget_cset(t)); /* HDF5 converts no character set into another */
        ok = H5Aread(a, mt, s) >= 0;
        s[sz] = '\0';
        if (ok)
            snprintf(buf, cap, "%s", s);
        free(s);
        H5Tclose(mt);
    }
    nnp__ckpt_close_id(t);
    nnp__ckpt_close_id(a);
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
    nnp_status s;
    int fd = nnp_open_regular(path, "checkpoint", &s); /* a FIFO: an error, not a wait */
    if (fd < 0)
        return s;
    close(fd);
    if (H5Fis_hdf5(path) <= 0)
        return nnp_error(NNP_ERR_FORMAT, "checkpoint %s: not a valid HDF5 file", path);
    hid_t fapl = nnp__ckpt_make_fapl();
    hid_t f = fapl >= 0 ? H5Fopen(path, H5F_ACC_RDONLY, fapl) : -1;
    char reason[512];
    if (f < 0)
        nnp__ckpt_h5_reason(0, reason);
    nnp__ckpt_close_id(fapl);
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
    htri_t has = H5Aexists(f, "format");
    if (has < 0)
        return damaged(path, "its root attributes");
    if (!has)
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
    /* a resumed run indexes its sample order and buffers with these: reject what no run
     * writes, rather than fail later in some other way */
    const char *what = m->step < 0                              ? "step"
                       : epoch < 0 || epoch > INT_MAX             ? "epoch"
                       : m->pos_in_epoch < 0                      ? "pos_in_epoch"
                       : m->rng_counter < 0                       ? "rng_counter"
                       : gb < 1 || gb > INT_MAX                   ? "global_batch"
                       : ws < 1 || ws > INT_MAX                   ? "world_size"
                       : !isfinite(m->norm_mean)                  ? "norm_mean"
                       : !(isfinite(m->norm_std) && m->norm_std > 0) ? "norm_std"
                       : !(isfinite(m->wall_s) && m->wall_s >= 0) ? "wall_s"
                                                                  : NULL;
    if (what)
        return nnp_error(NNP_ERR_FORMAT, "checkpoint %s: attribute %s has an impossible value",
                         path, what);
    if (H5Aexists(f, "train_samples") > 0) {
        if (attr_num(path, f, "", "train_samples", H5T_NATIVE_INT64, &m->train_samples))
            return NNP_ERR_FORMAT;
        if (m->train_samples < 1)
            return nnp_error(NNP_ERR_FORMAT,
                             "checkpoint %s: attribute train_samples has an impossible value",
                             path);
    }
    if (H5Aexists(f, "val_split") > 0) {
        if (attr_num(path, f, "", "val_split", H5T_NATIVE_INT64, &m->val_split))
            return NNP_ERR_FORMAT;
        if (m->val_split < 1)
            return nnp_error(NNP_ERR_FORMAT,
                             "checkpoint %s: attribute val_split has an impossible value", path);
    }
    m->lr_factor = 1.0;
    if (H5Aexists(f, "lr_factor") > 0) {
        if (attr_num(path, f, "", "lr_factor", H5T_NATIVE_DOUBLE, &m->lr_factor))
            return NNP_ERR_FORMAT;
        if (!(m->lr_factor > 0 && m->lr_factor <= 1))
            return nnp_error(NNP_ERR_FORMAT,
                             "checkpoint %s: attribute lr_factor has an impossible value", path);
    }
    if (H5Aexists(f, "rollbacks") > 0) {
        if (attr_num(path, f, "", "rollbacks", H5T_NATIVE_INT64, &m->rollbacks))
            return NNP_ERR_FORMAT;
        if (m->rollbacks < 1)
            return nnp_error(NNP_ERR_FORMAT,
                             "checkpoint %s: attribute rollbacks has an impossible value", path);
    }
    if (H5Aexists(f, "micro_shard") > 0) {
        int64_t s = 0;
        if (attr_num(path, f, "", "micro_shard", H5T_NATIVE_INT64, &s))
            return NNP_ERR_FORMAT;
        if (s < 1 || s > INT32_MAX)
            return nnp_error(NNP_ERR_FORMAT,
                             "checkpoint %s: attribute micro_shard has an impossible value", path);
        m->micro_shard = (int)s;
    }
    if (H5Aexists(f, "shuffle_block") > 0) {
        if (attr_num(path, f, "", "shuffle_block", H5T_NATIVE_INT64, &m->shuffle_block) ||
            attr_num(path, f, "", "shuffle_window", H5T_NATIVE_INT64, &m->shuffle_window))
            return NNP_ERR_FORMAT;
        if (m->shuffle_block < 1 || m->shuffle_block > (1LL << 30) || m->shuffle_window < 1 ||
            m->shuffle_window > (1LL << 30))
            return nnp_error(NNP_ERR_FORMAT, "checkpoint %s: attribute shuffle_block or "
                                             "shuffle_window has an impossible value", path);
    }
    if (H5Aexists(f, "noise_steps") > 0) {
        m->noise_scale = 1;
        if (attr_num(path, f, "", "noise_steps", H5T_NATIVE_INT64, &m->noise_steps) ||
            attr_num(path, f, "", "noise_ema_g2", H5T_NATIVE_DOUBLE, &m->noise_ema_g2) ||
            attr_num(path, f, "", "noise_ema_trsigma", H5T_NATIVE_DOUBLE, &m->noise_ema_tr))
            return NNP_ERR_FORMAT;
        if (m->noise_steps < 0 || !isfinite(m->noise_ema_g2) || !isfinite(m->noise_ema_tr))
            return nnp_error(NNP_ERR_FORMAT,
                             "checkpoint %s: the noise-scale attributes have impossible values",
                             path);
    }
    if (H5Aexists(f, "checksum") > 0) {
        char kind[32];
        if (attr_string(path, f, "", "checksum", kind, sizeof kind))
            return NNP_ERR_FORMAT;
        if (strcmp(kind, NNP__CKPT_HASH_ATTR) != 0)
            return nnp_error(NNP_ERR_FORMAT, "checkpoint %s: unknown checksum '%s' (this nnprec "
                                             "knows %s)", path, kind, NNP__CKPT_HASH_ATTR);
        m->checksums = 1;
    }
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
        htri_t has = H5Lexists(f, part, H5P_DEFAULT);
        if (has < 0) {
            damaged(path, part);
            return -1;
        }
        if (!has) {
            nnp_error(NNP_ERR_FORMAT, "checkpoint %s: dataset %s missing (no group %s)", path,
                      name, part);
            return -1;
        }
    }
    htri_t has = H5Lexists(f, name, H5P_DEFAULT);
    if (has < 0) {
        damaged(path, name);
        return -1;
    }
    if (!has) {
        nnp_error(NNP_ERR_FORMAT, "checkpoint %s: dataset %s missing", path, name);
        return -1;
    }
    hid_t o = H5Oopen(f, name, H5P_DEFAULT);
    if (o < 0) {
        char what[300];
        snprintf(what, sizeof what, "dataset %s", name);
        damaged(path, what);
        return -1;
    }
    if (H5Iget_type(o) != H5I_DATASET) {
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
            nnp__h5_dtype_str(t, got_t, sizeof got_t);
        else
            snprintf(got_t, sizeof got_t, "unknown");
        nnp__ckpt_close_id(t);
        H5Oclose(o);
        nnp_error(NNP_ERR_FORMAT, "checkpoint %s: dataset %s has dtype %s, expected %s", path,
                  name, got_t, want_t);
        return -1;
    }
    nnp__ckpt_close_id(t);
    hid_t sp = H5Dget_space(o);
    hsize_t got[H5S_MAX_RANK];
    int nd = sp >= 0 ? H5Sget_simple_extent_dims(sp, got, NULL) : -1;
    nnp__ckpt_close_id(sp);
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

/* Check the bytes read from dataset d against its xxh64 attribute. Returns NNP_OK, or
 * NNP_ERR_FORMAT naming the dataset (no attribute, or data that does not match it). */
static nnp_status check_hash(const char *path, hid_t d, const void *data, size_t bytes)
{
    char name[256] = "?";
    uint64_t want = 0;
    int have = H5Aexists(d, NNP__CKPT_HASH_ATTR) > 0;
    hid_t a = have ? H5Aopen(d, NNP__CKPT_HASH_ATTR, H5P_DEFAULT) : -1;
    hid_t t = a >= 0 ? H5Aget_type(a) : -1;
    hid_t sp = a >= 0 ? H5Aget_space(a) : -1;
    int ok = t >= 0 && sp >= 0 && H5Tget_class(t) == H5T_INTEGER && H5Tget_size(t) == 8 &&
             H5Sget_simple_extent_npoints(sp) == 1 && H5Aread(a, H5T_NATIVE_UINT64, &want) >= 0;
    nnp__ckpt_close_id(sp);
    nnp__ckpt_close_id(t);
    nnp__ckpt_close_id(a);
    if (!ok) {
        H5Iget_name(d, name, sizeof name);
        return nnp_error(NNP_ERR_FORMAT, "checkpoint %s: dataset %s has %s checksum (attribute "
                                         "%s): the file is damaged", path, name,
                         have ? "an unreadable" : "no", NNP__CKPT_HASH_ATTR);
    }
    uint64_t got = nnp_xxh64(data, bytes, 0);
    if (got != want) {
        H5Iget_name(d, name, sizeof name);
        return nnp_error(NNP_ERR_FORMAT, "checkpoint %s: dataset %s is corrupt: its data does "
                                         "not match its checksum (xxh64 %016llx stored, %016llx "
                                         "computed)", path, name, (unsigned long long)want,
                         (unsigned long long)got);
    }
    return NNP_OK;
}

typedef struct {
    hid_t id;
    void *dst;
    hid_t mtype;
} pending_read;

#define PAD8(n) (((n) + 7) & ~(size_t)7) /* each dataset's place in the scratch block */

/* A BatchNorm layer's running_mean, running_var (float32 [C]) and num_batches_tracked
 * (one integer) in /GROUP, to be read with the rest. */
static nnp_status bn_buffers(const char *path, hid_t f, const nnp_net *net, const nnp_layer *L,
                             const char *group, pending_read *rd, int *n_rd)
{
    const hsize_t C = (hsize_t)L->in.c;
    const char *names[2] = {"running_mean", "running_var"};
    char name[96];
    for (int i = 0; i < 2; i++) {
        snprintf(name, sizeof name, "/%s/%s", group, names[i]);
        hid_t d = check_dset(path, f, name, 4, 1, &C);
        if (d < 0)
            return NNP_ERR_FORMAT;
        rd[(*n_rd)++] = (pending_read){d, net->running + L->roff + (size_t)i * C,
                                       H5T_NATIVE_FLOAT};
    }
    snprintf(name, sizeof name, "/%s/num_batches_tracked", group);
    if (H5Lexists(f, name, H5P_DEFAULT) <= 0)
        return nnp_error(NNP_ERR_FORMAT, "checkpoint %s: dataset %s missing", path, name);
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    hid_t t = d >= 0 ? H5Dget_type(d) : -1, sp = d >= 0 ? H5Dget_space(d) : -1;
    int ok = t >= 0 && sp >= 0 && H5Tget_class(t) == H5T_INTEGER &&
             H5Sget_simple_extent_npoints(sp) == 1;
    nnp__ckpt_close_id(t);
    nnp__ckpt_close_id(sp);
    if (!ok) {
        nnp__ckpt_close_id(d);
        return nnp_error(NNP_ERR_FORMAT, "checkpoint %s: dataset %s is not one integer", path,
                         name);
    }
    rd[(*n_rd)++] = (pending_read){d, &net->tracked[L->bn], H5T_NATIVE_LLONG};
    return NNP_OK;
}

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
        char group[64], leaf[64], name[140];
        nnp__ckpt_split_name(t->name, group, leaf, sizeof group);
        snprintf(name, sizeof name, "/%s/%s", group, leaf);
        hsize_t dims[4];
        for (int i = 0; i < t->ndim; i++)
            dims[i] = (hsize_t)t->shape[i];
        hid_t d = check_dset(path, f, name, 4, t->ndim, dims);
        if (d < 0)
            return NNP_ERR_FORMAT;
        rd[(*n_rd)++] = (pending_read){d, net->params + t->off, H5T_NATIVE_FLOAT};
        if (t->norm && t->is_bias) /* BatchNorm: its buffers, in the same group */
            NNP_CALL(bn_buffers(path, f, net, &net->layers[t->layer], group, rd, n_rd));
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
        const char *names[2] = {nnp__ckpt_buf1_name(opt->cfg.kind), "exp_avg_sq"};
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
    nnp__h5_quiet q;
    nnp__h5_quiet_on(&q);
    hid_t f;
    nnp_status s = open_ckpt(path, &f);
    if (s != NNP_OK) {
        nnp__h5_quiet_off(&q);
        return s;
    }
    nnp_ckpt_meta *m = nnp_malloc(sizeof *m);
    int cap = net->n_tensors + 3 * net->n_bn + 6, n_rd = 0;
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
    /* Read every dataset into one scratch block first, check it against its checksum (a
     * file written before checksums: not) and that it is finite (training from a nan would
     * only report a divergence later, evaluating one a meaningless accuracy), and only then
     * copy into the caller's buffers: a failure changes nothing. */
    size_t total = 0;
    size_t *bytes = nnp_calloc((size_t)n_rd, sizeof *bytes); /* n_rd = 0: still a pointer */
    if (!bytes && s == NNP_OK)
        s = NNP_ERR_NOMEM;
    for (int i = 0; s == NNP_OK && i < n_rd; i++) {
        hid_t sp = H5Dget_space(rd[i].id);
        hssize_t n = sp < 0 ? -1 : H5Sget_simple_extent_npoints(sp);
        if (sp >= 0)
            H5Sclose(sp);
        if (n < 0)
            s = nnp_error(NNP_ERR_FORMAT, "checkpoint %s: unreadable dataspace", path);
        bytes[i] = (size_t)(n > 0 ? n : 0) * (rd[i].mtype == H5T_NATIVE_FLOAT ? 4 : 8);
        total += PAD8(bytes[i]);
    }
    unsigned char *scratch = s == NNP_OK && total ? nnp_malloc(total) : NULL;
    if (s == NNP_OK && total && !scratch)
        s = NNP_ERR_NOMEM;
    for (size_t i = 0, at = 0; s == NNP_OK && i < (size_t)n_rd; at += PAD8(bytes[i]), i++) {
        char name[256];
        errno = 0;
        if (H5Dread(rd[i].id, rd[i].mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, scratch + at) < 0) {
            char reason[512];
            int err = errno;
            H5Iget_name(rd[i].id, name, sizeof name);
            s = nnp_error(NNP_ERR_IO, "checkpoint %s: cannot read dataset %s: %s", path, name,
                          nnp__ckpt_h5_reason(err, reason));
            break;
        }
        if (m->checksums && (s = check_hash(path, rd[i].id, scratch + at, bytes[i])) != NNP_OK)
            break;
        int finite = 1;
        if (rd[i].mtype == H5T_NATIVE_FLOAT)
            for (size_t k = 0; k < bytes[i] / 4; k++)
                finite &= isfinite(((const float *)(void *)(scratch + at))[k]) != 0;
        else if (rd[i].mtype == H5T_NATIVE_DOUBLE)
            for (size_t k = 0; k < bytes[i] / 8; k++)
                finite &= isfinite(((const double *)(void *)(scratch + at))[k]) != 0;
        if (!finite) {
            H5Iget_name(rd[i].id, name, sizeof name);
            s = nnp_error(NNP_ERR_FORMAT, "checkpoint %s: dataset %s holds non-finite values "
                                          "(nan or inf)", path, name);
        }
    }
    if (s == NNP_OK && opt) /* new parameters: LARS's and LAMB's kept norms are stale */
        nnp_optim_params_changed(opt);
    for (size_t i = 0, at = 0; s == NNP_OK && i < (size_t)n_rd; at += PAD8(bytes[i]), i++)
        if (bytes[i])
            memcpy(rd[i].dst, scratch + at, bytes[i]);
    free(scratch);
    free(bytes);
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
        nnp__ckpt_close_id(rd[i].id);
    free(rd);
    free(m);
    H5Fclose(f);
    nnp__h5_quiet_off(&q);
    return s;
}

nnp_status nnp_ckpt_read_meta(const char *path, nnp_ckpt_meta *meta)
{
    nnp__h5_quiet q;
    nnp__h5_quiet_on(&q);
    hid_t f;
    nnp_status s = open_ckpt(path, &f);
    if (s == NNP_OK) {
        s = check_format(path, f);
        if (s == NNP_OK)
            s = read_meta_attrs(path, f, meta);
        H5Fclose(f);
    }
    nnp__h5_quiet_off(&q);
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

/* ---- verify ---------------------------------------------------------------------------- */

typedef struct {
    const char *path;
    nnp_status s;
    int n;
    size_t bytes;
} verify_ctx;

/* One object of the file: a dataset is read whole in its own width and checked. */
static herr_t verify_link(hid_t loc, const char *name, const H5L_info_t *li, void *data)
{
    verify_ctx *c = data;
    if (li->type != H5L_TYPE_HARD)
        return 0;
    hid_t o = H5Oopen(loc, name, H5P_DEFAULT);
    if (o < 0) {
        c->s = nnp_error(NNP_ERR_FORMAT, "checkpoint %s: cannot open /%s", c->path, name);
        return 1;
    }
    if (H5Iget_type(o) != H5I_DATASET) {
        H5Oclose(o);
        return 0;
    }
    hid_t t = H5Dget_type(o), sp = H5Dget_space(o);
    H5T_class_t cls = t >= 0 ? H5Tget_class(t) : H5T_NO_CLASS;
    size_t es = t >= 0 ? H5Tget_size(t) : 0;
    hssize_t np = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
    hid_t mt = cls == H5T_FLOAT && es == 4     ? H5T_NATIVE_FLOAT
               : cls == H5T_FLOAT && es == 8   ? H5T_NATIVE_DOUBLE
               : cls == H5T_INTEGER && es == 8 ? (H5Tget_sign(t) == H5T_SGN_NONE ? H5T_NATIVE_UINT64
                                                                                 : H5T_NATIVE_INT64)
                                               : -1;
    char ts[32] = "unknown";
    if (t >= 0)
        nnp__h5_dtype_str(t, ts, sizeof ts);
    nnp__ckpt_close_id(t);
    nnp__ckpt_close_id(sp);
    size_t bytes = np > 0 ? (size_t)np * es : 0;
    void *buf = NULL;
    if (mt < 0 || np < 0)
        c->s = nnp_error(NNP_ERR_FORMAT, "checkpoint %s: dataset /%s has dtype %s, which no "
                                         "nnprec checkpoint holds", c->path, name, ts);
    else if (bytes && !(buf = nnp_malloc(bytes)))
        c->s = NNP_ERR_NOMEM;
    else if (bytes && H5Dread(o, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
        char reason[512];
        c->s = nnp_error(NNP_ERR_IO, "checkpoint %s: cannot read dataset /%s: %s", c->path, name,
                         nnp__ckpt_h5_reason(0, reason));
    } else
        c->s = check_hash(c->path, o, buf, bytes);
    free(buf);
    H5Oclose(o);
    if (c->s != NNP_OK)
        return 1;
    c->n++;
    c->bytes += bytes;
    return 0;
}

nnp_status nnp_ckpt_verify(const char *path, int *n_sets, size_t *bytes)
{
    nnp__h5_quiet q;
    nnp__h5_quiet_on(&q);
    hid_t f;
    nnp_status s = open_ckpt(path, &f);
    if (s != NNP_OK) {
        nnp__h5_quiet_off(&q);
        return s;
    }
    nnp_ckpt_meta *m = nnp_malloc(sizeof *m);
    verify_ctx c = {path, NNP_OK, 0, 0};
    s = m ? check_format(path, f) : NNP_ERR_NOMEM;
    if (s == NNP_OK)
        s = read_meta_attrs(path, f, m);
    if (s == NNP_OK && !m->checksums)
        s = nnp_error(NNP_ERR_FORMAT, "checkpoint %s has no checksums (written by an nnprec "
                                      "that did not store them): its data cannot be verified",
                      path);
    if (s == NNP_OK && H5Lvisit(f, H5_INDEX_NAME, H5_ITER_INC, verify_link, &c) < 0 &&
        c.s == NNP_OK) {
        char reason[512];
        c.s = nnp_error(NNP_ERR_FORMAT, "checkpoint %s: cannot walk its datasets: %s", path,
                        nnp__ckpt_h5_reason(0, reason));
    }
    if (s == NNP_OK)
        s = c.s;
    if (n_sets)
        *n_sets = c.n;
    if (bytes)
        *bytes = c.bytes;
    free(m);
    H5Fclose(f);
    nnp__h5_quiet_off(&q);
    return s;
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
        nnp__h5_dtype_str(t, ts, sizeof ts);
    hssize_t np = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : 0;
    fprintf(c->out, "  %-28s %-8s %-16s %lld\n", label, ts, ss, (long long)np);
    c->total += np > 0 ? (size_t)np : 0;
    nnp__ckpt_close_id(t);
    nnp__ckpt_close_id(sp);
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
    nnp__ckpt_close_id(t);
    nnp__ckpt_close_id(a);
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
    nnp__h5_quiet q;
    nnp__h5_quiet_on(&q);
    hid_t f;
    nnp_status s = open_ckpt(path, &f);
    if (s != NNP_OK) {
        nnp__h5_quiet_off(&q);
        return s;
    }
    nnp_ckpt_meta *m = nnp_malloc(sizeof *m);
    if (!m) {
        H5Fclose(f);
        nnp__h5_quiet_off(&q);
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
        if (m->rollbacks > 0)
            fprintf(out, "rollbacks        %lld (--on-nonfinite rollback): learning rate x%g "
                         "from here on\n",
                    (long long)m->rollbacks, m->lr_factor);
        if (m->micro_shard > 0)
            fprintf(out, "deterministic    micro-shards of %d samples (bitwise the same at any "
                         "rank count; resume with --deterministic --micro-shard %d)\n",
                    m->micro_shard, m->micro_shard);
        if (m->shuffle_block > 0)
            fprintf(out, "shuffle          block:%lld:%lld (resume with --shuffle block:%lld:%lld)\n",
                    (long long)m->shuffle_block, (long long)m->shuffle_window,
                    (long long)m->shuffle_block, (long long)m->shuffle_window);
        fprintf(out, "wall time        %.1f s\n", m->wall_s);
        fprintf(out, "checksums        %s\n",
                m->checksums ? "xxh64 of every dataset, checked on every read (all of them: "
                               "nnprec info --verify)"
                             : "none (written before nnprec stored them: the data is not "
                               "verified)");
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
            int sgd = strcmp(kind, "sgd") == 0 || strcmp(kind, "lars") == 0;
            int lars = strcmp(kind, "lars") == 0, lamb = strcmp(kind, "lamb") == 0;
            const char *an_sgd[] = {"kind", "t", "momentum", "dampening", "nesterov",
                                    "weight_decay", "lars_eta", "exclude_bias"};
            const char *an_adam[] = {"kind", "t", "beta1", "beta2", "eps", "weight_decay",
                                     "lamb_clip", "exclude_bias"};
            const char **an = sgd ? an_sgd : an_adam;
            for (size_t i = 0; i < (lars || lamb ? 8u : 6u); i++) {
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
                nnp__ckpt_close_id(sp);
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
    nnp__h5_quiet_off(&q);
    return s;
}
