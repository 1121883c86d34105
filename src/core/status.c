/* status.c - status names and the per-thread error message (see status.h). */
#include "nnprec/status.h"
#include <stdarg.h>
#include <stdio.h>

static _Thread_local char err_msg[1024];
static _Thread_local int err_set;

const char *nnp_status_str(nnp_status s)
{
    static const char *names[NNP_STATUS_COUNT] = {
        [NNP_OK] = "ok",
        [NNP_ERR_ARG] = "invalid argument",
        [NNP_ERR_IO] = "i/o error",
        [NNP_ERR_FORMAT] = "bad file format",
        [NNP_ERR_NOMEM] = "out of memory",
        [NNP_ERR_NUMERIC] = "numerical error",
        [NNP_ERR_COMM] = "communication error",
        [NNP_ERR_REMOTE] = "failure on another rank",
        [NNP_ERR_INTERRUPTED] = "interrupted",
    };
    if ((int)s < 0 || s >= NNP_STATUS_COUNT)
        return "unknown status";
    return names[s];
}

nnp_status nnp_error(nnp_status s, const char *fmt, ...)
{
    if (!err_set) { /* keep the root cause: the first message of a chain wins */
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err_msg, sizeof err_msg, fmt, ap);
        va_end(ap);
        err_set = 1;
    }
    return s;
}

static _Thread_local nnp_status remote_kind = NNP_ERR_REMOTE;

nnp_status nnp_remote(nnp_status kind)
{
    remote_kind = kind;
    return NNP_ERR_REMOTE;
}

nnp_status nnp_remote_kind(void) { return remote_kind; }

const char *nnp_error_msg(void) { return err_set ? err_msg : ""; }

void nnp_error_clear(void)
{
    err_set = 0;
    err_msg[0] = '\0';
}
