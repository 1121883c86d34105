/* rundir.c - the run folder: mkdir -p, the exclusive lock, stale temporary files, and the
 * non-blocking open of input files (see rundir.h, docs/reliability.md).
 *
 * The lock is flock() on DIR/.lock, taken with LOCK_NB so that a second run into the same
 * folder is refused at once instead of waiting. The descriptor is never closed: the kernel
 * drops the lock when the process ends, however it ends (kill -9 included), so a lock is
 * never left stale. The lock file itself stays in the folder (deleting it would let a
 * third run lock a new file while the second still holds the old one).
 */
#include "nnprec/rundir.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static const char *type_name(mode_t m)
{
    return S_ISREG(m)    ? "a file"
           : S_ISDIR(m)  ? "a folder"
           : S_ISFIFO(m) ? "a FIFO"
           : S_ISSOCK(m) ? "a socket"
           : S_ISCHR(m)  ? "a character device"
           : S_ISBLK(m)  ? "a block device"
                         : "a special file";
}

nnp_status nnp_mkdir_p(const char *dir)
{
    char p[4096];
    size_t n = strlen(dir);
    if (n == 0)
        return NNP_OK;
    if (n >= sizeof p)
        return nnp_error(NNP_ERR_IO, "cannot create folder %.64s...: path too long", dir);
    memcpy(p, dir, n + 1);
    /* every prefix ending before a '/', then the whole path */
    for (size_t i = 1; i <= n; i++) {
        if (i < n && p[i] != '/')
            continue;
        if (i < n && p[i - 1] == '/') /* "a//b" */
            continue;
        char c = p[i];
        p[i] = '\0';
        struct stat st;
        if (mkdir(p, 0777) != 0) {
            int e = errno;
            if (stat(p, &st) != 0) {
                p[i] = c;
                return nnp_error(NNP_ERR_IO, "cannot create folder %s: %s", dir, strerror(e));
            }
            if (!S_ISDIR(st.st_mode)) {
                nnp_status s = nnp_error(NNP_ERR_IO, "cannot create folder %s: %s is %s", dir,
                                         p, type_name(st.st_mode));
                p[i] = c;
                return s;
            }
        }
        p[i] = c;
    }
    return NNP_OK;
}

/* nnprec's temporary files: a checkpoint, latest, options and CSV files being written. */
static int is_our_tmp(const char *name)
{
    size_t n = strlen(name);
    if (n < 5 || strcmp(name + n - 4, ".tmp") != 0)
        return 0;
    if (strcmp(name, "latest.tmp") == 0)
        return 1;
    if (strncmp(name, "ckpt-", 5) == 0 && n > 12 && strcmp(name + n - 7, ".h5.tmp") == 0)
        return 1;
    return n > 8 &&
           (strcmp(name + n - 8, ".csv.tmp") == 0 || strcmp(name + n - 8, ".txt.tmp") == 0);
}

nnp_status nnp_rundir_clean(const char *dir, int quiet)
{
    DIR *d = opendir(dir);
    if (!d)
        return nnp_error(NNP_ERR_IO, "cannot list %s: %s", dir, strerror(errno));
    nnp_status s = NNP_OK;
    struct dirent *e;
    while (s == NNP_OK && (e = readdir(d)) != NULL) {
        if (!is_our_tmp(e->d_name))
            continue;
        char path[4352];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue; /* not a file we write: leave it (writing over it fails clearly) */
        if (unlink(path) != 0 && errno != ENOENT)
            s = nnp_error(NNP_ERR_IO, "cannot remove the stale temporary file %s: %s", path,
                          strerror(errno));
        else if (!quiet)
            printf("[setup] removed %s (%lld bytes), left by an interrupted write\n", path,
                   (long long)st.st_size);
    }
    closedir(d);
    if (!quiet)
        fflush(stdout);
    return s;
}

nnp_status nnp_rundir_acquire(const char *dir)
{
    NNP_CALL(nnp_mkdir_p(dir));
    char path[4352];
    snprintf(path, sizeof path, "%s/.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return nnp_error(NNP_ERR_IO, "cannot open the lock file %s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        if (e == EWOULDBLOCK) {
            char holder[256] = "";
            ssize_t k = pread(fd, holder, sizeof holder - 1, 0);
            holder[k > 0 ? k : 0] = '\0';
            holder[strcspn(holder, "\n")] = '\0';
            close(fd);
            return nnp_error(NNP_ERR_ARG,
                             "--out %s is in use by another nnprec run (%s holds %s): wait for "
                             "it to end, or choose another --out (nothing was changed)",
                             dir, holder[0] ? holder : "a process", path);
        }
        close(fd);
        if (e == ENOLCK || e == EOPNOTSUPP || e == ENOSYS || e == EINVAL) {
            fprintf(stderr, "[warn]  cannot lock %s (%s): this file system has no locks, so a "
                            "second run into --out %s would not be refused\n",
                    path, strerror(e), dir);
            fflush(stderr);
            return NNP_OK;
        }
        return nnp_error(NNP_ERR_IO, "cannot lock %s: %s", path, strerror(e));
    }
    /* who holds it, for the message another run gets (informational) */
    char host[128] = "?", line[256];
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    int len = snprintf(line, sizeof line, "pid %ld on %s\n", (long)getpid(), host);
    if (ftruncate(fd, 0) != 0 || pwrite(fd, line, (size_t)len, 0) != len) {
        /* the lock holds without the note */
    }
    /* fd stays open: the lock lasts as long as this process */
    return NNP_OK;
}

int nnp_rundir_plain_name(const char *name)
{
    return name[0] && !strchr(name, '/') && strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

int nnp_open_regular(const char *path, const char *what, nnp_status *status)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        *status = nnp_error(NNP_ERR_IO, "cannot open %s %s: %s", what, path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        *status = nnp_error(NNP_ERR_IO, "cannot open %s %s: %s", what, path, strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        *status = nnp_error(NNP_ERR_IO, "cannot open %s %s: it is %s, not a regular file", what,
                            path, type_name(st.st_mode));
        close(fd);
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    *status = NNP_OK;
    return fd;
}
