/* trace.c - the --trace timeline (see trace.h). */
#include "nnprec/trace.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "nnprec/alloc.h"

const char *const nnp_trace_names[NNP_TR_N] = {
    "data",       "forward", "backward",  "allreduce wait", "allreduce",
    "allreduce bucket", "preconditioner", "stats", "optimizer", "allgather",
    "stop check", "evaluation", "checkpoint"};

nnp_status nnp_trace_parse_steps(const char *s, int64_t *a, int64_t *b)
{
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (end == s || *end != ':' || errno)
        goto bad;
    const char *p = end + 1;
    long long y = strtoll(p, &end, 10);
    if (end == p || *end || errno || x < 1 || y < x)
        goto bad;
    *a = x;
    *b = y;
    return NNP_OK;
bad:
    return nnp_error(NNP_ERR_ARG, "--trace-steps expects A:B with 1 <= A <= B, got '%s'", s);
}

nnp_status nnp_trace_start(nnp_trace *t, nnp_comm *comm, const char *path, int64_t a,
                           int64_t b, int per_step)
{
    memset(t, 0, sizeof *t);
    t->a = a;
    t->b = b;
    t->path = path;
    nnp_status st = NNP_OK;
    if (b >= a) {
        t->cap = (size_t)(b - a + 1) * (size_t)per_step;
        t->ev = nnp_malloc(t->cap * sizeof *t->ev);
        if (!t->ev)
            st = nnp_error(NNP_ERR_NOMEM, "--trace: no memory for %zu events (steps %" PRId64
                           ":%" PRId64 "); trace fewer steps", t->cap, a, b);
    }
    if (st == NNP_OK && nnp_comm_rank(comm) == 0) {
        t->f = fopen(path, "w");
        if (!t->f)
            st = nnp_error(NNP_ERR_IO, "cannot write the trace %s: %s", path, strerror(errno));
    }
    st = nnp_comm_agree(comm, st);
    if (st == NNP_OK)
        st = nnp_comm_barrier(comm);
    if (st != NNP_OK) {
        nnp_trace_free(t);
        return st;
    }
    t->origin = nnp_comm_wtime();
    t->on = 1;
    return NNP_OK;
}

/* a block: events, dropped, then 5 doubles per event (start and end in microseconds since
 * the rank's origin, step, phase, thread) */
enum { HDR = 2, PER = 5 };

static void write_json(FILE *f, const double *all, int size, size_t width)
{
    fprintf(f, "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n");
    for (int r = 0; r < size; r++) {
        const double *blk = all + (size_t)r * width;
        const size_t n = (size_t)blk[0];
        int comm = 0;
        for (size_t i = 0; i < n; i++)
            comm |= (int)blk[HDR + PER * i + 4] == NNP_TR_COMM;
        fprintf(f,
                "{\"name\": \"process_name\", \"ph\": \"M\", \"pid\": %d, \"args\": {\"name\": "
                "\"rank %d\"}},\n"
                "{\"name\": \"process_sort_index\", \"ph\": \"M\", \"pid\": %d, \"args\": "
                "{\"sort_index\": %d}},\n"
                "{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": %d, \"tid\": 0, \"args\": "
                "{\"name\": \"training loop\"}},\n",
                r, r, r, r, r);
        if (comm)
            fprintf(f, "{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": %d, \"tid\": 1, "
                       "\"args\": {\"name\": \"communication thread\"}},\n",
                    r);
        for (size_t i = 0; i < n; i++) {
            const double *e = blk + HDR + PER * i;
            const int ph = (int)e[3];
            /* whole nanoseconds, so that an event ends exactly where the next one starts */
            const double s0 = round(e[0] * 1e3) / 1e3, s1 = round(e[1] * 1e3) / 1e3;
            fprintf(f,
                    "{\"name\": \"%s\", \"cat\": \"step\", \"ph\": \"X\", \"pid\": %d, "
                    "\"tid\": %d, \"ts\": %.3f, \"dur\": %.3f, \"args\": {\"step\": %.0f}},\n",
                    ph >= 0 && ph < NNP_TR_N ? nnp_trace_names[ph] : "?", r, (int)e[4], s0,
                    s1 - s0, e[2]);
        }
    }
    /* the closing metadata event spares a trailing comma */
    fprintf(f, "{\"name\": \"trace\", \"ph\": \"M\", \"pid\": 0, \"args\": {\"ranks\": %d}}\n"
               "]}\n",
            size);
}

nnp_status nnp_trace_finish(nnp_trace *t, nnp_comm *comm)
{
    const int rank = nnp_comm_rank(comm), size = nnp_comm_size(comm);
    double most = (double)t->n;
    NNP_CALL(nnp_comm_allreduce_max_f64(comm, &most, 1));
    const size_t width = HDR + PER * (size_t)most;
    double *blk = nnp_malloc(width * sizeof(double));
    double *all = rank == 0 ? nnp_malloc((size_t)size * width * sizeof(double)) : NULL;
    nnp_status st = blk && (rank != 0 || all) ? NNP_OK : NNP_ERR_NOMEM;
    st = nnp_comm_agree(comm, st);
    if (st == NNP_OK) {
        memset(blk, 0, width * sizeof(double));
        blk[0] = (double)t->n;
        blk[1] = (double)t->dropped;
        for (size_t i = 0; i < t->n; i++) {
            const nnp_trace_event *e = &t->ev[i];
            double *o = blk + HDR + PER * i;
            o[0] = (e->t0 - t->origin) * 1e6;
            o[1] = (e->t1 - t->origin) * 1e6;
            o[2] = (double)e->step;
            o[3] = e->phase;
            o[4] = e->tid;
        }
        st = nnp_comm_gather_f64(comm, blk, width, all);
    }
    if (st == NNP_OK && rank == 0) {
        double dropped = 0;
        for (int r = 0; r < size; r++)
            dropped += all[(size_t)r * width + 1];
        write_json(t->f, all, size, width);
        const int bad = fflush(t->f) != 0 || ferror(t->f);
        const int closed = fclose(t->f);
        t->f = NULL;
        if (bad || closed != 0)
            st = nnp_error(NNP_ERR_IO, "cannot write the trace %s: %s", t->path, strerror(errno));
        else if (dropped > 0)
            fprintf(stderr, "[warn]  --trace: %.0f events did not fit the buffer and are "
                            "missing from %s\n",
                    dropped, t->path);
    }
    free(blk);
    free(all);
    return nnp_comm_agree(comm, st);
}

void nnp_trace_free(nnp_trace *t)
{
    free(t->ev);
    t->ev = NULL;
    if (t->f)
        fclose(t->f);
    t->f = NULL;
    t->on = 0;
    t->n = t->cap = 0;
}
