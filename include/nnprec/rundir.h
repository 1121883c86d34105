/* rundir.h - the run folder (--out): created with its parents, locked for the run, cleaned of
 * the temporary files an interrupted run leaves (docs/reliability.md).
 *
 * Rank-local file-system code (no MPI, no HDF5): rank 0 calls nnp_rundir_acquire before
 * anything reads or writes the folder, and keeps the lock until the process exits.
 */
#ifndef NNPREC_RUNDIR_H
#define NNPREC_RUNDIR_H
#include "nnprec/status.h"

/* mkdir -p: create dir and any missing parents (mode 0777 before the umask). A path
 * component that exists and is not a folder is an error. Errors: NNP_ERR_IO. */
nnp_status nnp_mkdir_p(const char *dir);

/* Make `dir` the folder of this run: create it with its parents and take an exclusive lock
 * on DIR/.lock (flock, held by this process until it exits; the file holds the holder's pid
 * and host for the message another run gets). A folder locked by another process is
 * NNP_ERR_ARG ("... is in use by another nnprec run ..."), found at once, with nothing in
 * the folder changed; a file system without locks gives a warning and no lock. Errors:
 * NNP_ERR_IO, NNP_ERR_ARG. */
nnp_status nnp_rundir_acquire(const char *dir);

/* Delete the temporary files an interrupted run leaves in dir (ckpt-*.h5.tmp, latest.tmp,
 * *.csv.tmp, *.txt.tmp: regular files only), printing one "[setup]" line per file unless
 * quiet. Call it holding the lock. Errors: NNP_ERR_IO. */
nnp_status nnp_rundir_clean(const char *dir, int quiet);

/* Whether `name` (the content of a `latest` file) names a file inside its folder: a plain
 * file name, no '/', not "." or "..". */
int nnp_rundir_plain_name(const char *name);

/* Open `path` for reading without blocking (O_NONBLOCK: a FIFO or a device would otherwise
 * wait for a writer) and require a regular file. Returns the descriptor (O_NONBLOCK
 * cleared), or -1 with a message "cannot open WHAT PATH: reason" (a FIFO, a folder, ... is
 * "not a regular file (a FIFO)"). *status gets NNP_ERR_IO. */
int nnp_open_regular(const char *path, const char *what, nnp_status *status);

#endif
