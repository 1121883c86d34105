/* trace.h - a timeline of every rank's phases over a window of steps (--trace FILE.json).
 *
 * Each rank records (phase, thread, step, start, end) events into a buffer sized before the
 * first step, so recording allocates nothing and opens nothing; events outside the window,
 * or past the buffer, are dropped. At the end the events travel to rank 0 in two
 * collectives (the largest count, then a gather of fixed-size blocks) and rank 0 writes the
 * Chrome trace-event JSON that ui.perfetto.dev and chrome://tracing open: one process per
 * rank ("rank R"), one thread for the training loop and one for the bucketed allreduce's
 * communication thread, one complete ("X") event per phase with its step in args.
 *
 * Times are microseconds since each rank's origin, taken right after a barrier before the
 * first step: ranks on one node share the clock, so their timelines line up to the
 * barrier's exit skew (microseconds); across nodes, to that skew plus nothing else.
 */
#ifndef NNPREC_TRACE_H
#define NNPREC_TRACE_H
#include <stdint.h>
#include <stdio.h>
#include "nnprec/comm.h"
#include "nnprec/status.h"

typedef enum {
    NNP_TR_DATA,
    NNP_TR_FORWARD,
    NNP_TR_BACKWARD,
    NNP_TR_AR_WAIT,    /* waiting: for the peers, at the barrier before a fused, sharded or
                          shm exchange; for the communication thread's buckets (bucketed) */
    NNP_TR_ALLREDUCE,  /* the gradient exchange (fused, sharded: reduce-scatter, shm) */
    NNP_TR_BUCKET,     /* one bucket's allreduce, on the communication thread */
    NNP_TR_PRECOND,    /* the dynamic preconditioner's sums, message and multipliers */
    NNP_TR_STATS,      /* --stats-every: the per-tensor rows */
    NNP_TR_OPTIMIZER,  /* the update (lars/lamb over shares: with their norms' message) */
    NNP_TR_ALLGATHER,  /* sharded, shm: the updated parameters to every rank */
    NNP_TR_STOP_CHECK, /* the per-step agreement on stop requests and finite losses */
    NNP_TR_EVAL,
    NNP_TR_CHECKPOINT,
    NNP_TR_N
} nnp_trace_phase;

/* the event names in the JSON */
extern const char *const nnp_trace_names[NNP_TR_N];

enum { NNP_TR_MAIN = 0, NNP_TR_COMM = 1 }; /* thread ids */

typedef struct {
    double t0, t1; /* seconds on this rank's clock (nnp_comm_wtime) */
    int64_t step;  /* the step being done, counted from 1 as in the log */
    int phase, tid;
} nnp_trace_event;

typedef struct {
    int on;
    int64_t a, b;  /* the window: steps a..b (counted from 1) */
    double origin; /* nnp_comm_wtime() at the start barrier */
    nnp_trace_event *ev;
    size_t n, cap;
    size_t dropped; /* events in the window that found the buffer full */
    FILE *f;        /* rank 0: the output, opened before the first step */
    const char *path;
} nnp_trace;

/* Parse "A:B" (1 <= A <= B) into a window. */
nnp_status nnp_trace_parse_steps(const char *s, int64_t *a, int64_t *b);

/* Set up a trace of steps a..b (already clipped to the run) with room for per_step events
 * per step; rank 0 opens path for writing. Collective (agrees on errors, then takes the
 * origin after a barrier). */
nnp_status nnp_trace_start(nnp_trace *t, nnp_comm *comm, const char *path, int64_t a,
                           int64_t b, int per_step);

/* Record one event of `step` (counted from 1); outside the window: nothing. */
static inline void nnp_trace_add(nnp_trace *t, int phase, int tid, int64_t step, double t0,
                                 double t1)
{
    if (!t->on || step < t->a || step > t->b)
        return;
    if (t->n == t->cap) {
        t->dropped++;
        return;
    }
    nnp_trace_event *e = &t->ev[t->n++];
    e->t0 = t0;
    e->t1 = t1;
    e->step = step;
    e->phase = phase;
    e->tid = tid;
}

/* Gather every rank's events to rank 0 and write the JSON there. Collective. */
nnp_status nnp_trace_finish(nnp_trace *t, nnp_comm *comm);

/* Free the buffer and close the file (after finish, or on an error path: not collective). */
void nnp_trace_free(nnp_trace *t);

#endif
