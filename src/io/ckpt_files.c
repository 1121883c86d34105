/* ckpt_files.c - HDF5 checkpoints: file names, the latest pointer and rotation, and the
 * file-system helpers of the module (see ckpt.h and docs/checkpoint.md).
 *
 * Nothing here touches HDF5. DIR/latest is a one-line text file naming the newest
 * checkpoint (a file name in DIR: anything else is refused on reading); it is replaced
 * atomically (write latest.tmp, fsync, rename, fsync the directory), and old ckpt-<step>.h5
 * files beyond the `keep` newest are deleted after it.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "ckpt_impl.h"
#include "nnprec/alloc.h"
#include "nnprec/rundir.h"

/* ---- file-system helpers --------------------------------------------------------------- */

int nnp__ckpt_fsync_path(const char *path, int directory)
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

void nnp__ckpt_dir_of(const char *path, char *buf, size_t cap)
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
    char latest[NNP__CKPT_PATH_CAP], tmp[NNP__CKPT_PATH_CAP];
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
    if (nnp__ckpt_fsync_path(dir, 1) != 0)
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
        char victim[NNP__CKPT_PATH_CAP];
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
    char latest[NNP__CKPT_PATH_CAP];
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
        /* a name in the folder, as nnp_ckpt_publish writes it: a path elsewhere (another
         * run's file, ../x, /abs) is not this run's checkpoint */
        if (!nnp_rundir_plain_name(name))
            return nnp_error(NNP_ERR_FORMAT, "%s names '%s', which is not a file in %s: latest "
                                             "must hold the name of a checkpoint in its own "
                                             "folder", latest, name, dir);
        int k = snprintf(buf, cap, "%s/%s", dir, name);
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

nnp_status nnp_ckpt_before(const char *dir, int64_t step, char *buf, size_t cap, int *found)
{
    *found = 0;
    if (cap)
        buf[0] = '\0';
    ckpt_entry *list;
    size_t n;
    NNP_CALL(list_ckpts(dir, &list, &n));
    nnp_status s = NNP_OK;
    for (size_t i = 0; i < n; i++) /* newest first */
        if (list[i].step < step) {
            int k = snprintf(buf, cap, "%s/%s", dir, list[i].name);
            if (k < 0 || (size_t)k >= cap)
                s = nnp_error(NNP_ERR_ARG, "checkpoint path too long in %s", dir);
            else
                *found = 1;
            break;
        }
    free(list);
    return s;
}
