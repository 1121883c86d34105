/* status.h - error codes and the one-line error message every nnprec call can leave.
 *
 * Every fallible nnprec function returns nnp_status. On failure it records a one-line
 * message with nnp_error(), which the command line prints before exiting non-zero.
 * Nothing in the library calls exit() or abort(): under MPI a rank that dies alone leaves
 * the others hanging in a collective, so errors travel up to the caller, which agrees on
 * them across ranks (nnp_comm_agree) before stopping.
 */
#ifndef NNPREC_STATUS_H
#define NNPREC_STATUS_H

typedef enum {
    NNP_OK = 0,
    NNP_ERR_ARG,     /* bad option value, bad model spec, inconsistent arguments */
    NNP_ERR_IO,      /* a file could not be opened, read or written */
    NNP_ERR_FORMAT,  /* a file has the wrong magic, shape, size or dtype */
    NNP_ERR_NOMEM,   /* an allocation failed */
    NNP_ERR_NUMERIC, /* a non-finite or degenerate value where a finite one is needed */
    NNP_ERR_COMM,    /* an MPI call failed, or replicas diverged */
    NNP_ERR_REMOTE,  /* another rank failed; its message was printed there */
    NNP_ERR_INTERRUPTED, /* stopped by a signal after checkpointing */
    NNP_STATUS_COUNT
} nnp_status;

/* Short name of a status ("io error", ...). Never NULL. */
const char *nnp_status_str(nnp_status s);

/* Record a printf-style message for status s and return s, so failures read
 *   if (!f) return nnp_error(NNP_ERR_IO, "cannot open %s: %s", path, strerror(errno));
 * The message is kept per thread; the first error of a chain wins until
 * nnp_error_clear() so outer frames do not overwrite the root cause. */
nnp_status nnp_error(nnp_status s, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Return NNP_ERR_REMOTE for a rank that stays quiet because another rank failed with `kind`
 * and reports it; the kind is kept for nnp_remote_kind(), so that every rank can exit with
 * the same code. */
nnp_status nnp_remote(nnp_status kind);
/* The kind of the last nnp_remote() (NNP_ERR_REMOTE if none is known). */
nnp_status nnp_remote_kind(void);

/* The recorded message ("" if none). */
const char *nnp_error_msg(void);
void nnp_error_clear(void);

/* Propagate a failing status: NNP_CALL(f(x)); */
#define NNP_CALL(expr)                         \
    do {                                       \
        nnp_status nnp_call_s_ = (expr);       \
        if (nnp_call_s_ != NNP_OK)             \
            return nnp_call_s_;                \
    } while (0)

#endif
