/* comm_mpi.c - the only file that includes <mpi.h> (see comm.h for the contract).
 *
 * nnp_comm holds a private duplicate of MPI_COMM_WORLD with MPI_ERRORS_RETURN, so a failed
 * MPI call becomes NNP_ERR_COMM with MPI's error string instead of a silent abort.
 */
#include "nnprec/comm.h"
#include <limits.h>
#include <mpi.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>
#include "nnprec/alloc.h"
#include "nnprec/data.h"

struct nnp_comm {
    MPI_Comm comm;
    int rank, size, local_size;
    int thread_level; /* provided by MPI_Init_thread */
    int *counts, *displs; /* [size]: the shares of the sharded collectives */
    float *scratch;        /* nnp_comm_shard_setup: one share, received in the ring */
    size_t scratch_n;
};

static nnp_status mpi_check(int rc, const char *what)
{
    if (rc == MPI_SUCCESS)
        return NNP_OK;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    return nnp_error(NNP_ERR_COMM, "%s failed: %s", what, msg);
}

nnp_status nnp_comm_init(int *argc, char ***argv, int want_threads, nnp_comm **out)
{
    int provided = 0, required = MPI_THREAD_SERIALIZED;
    *out = NULL;
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited)
        NNP_CALL(mpi_check(MPI_Init_thread(argc, argv, required, &provided), "MPI_Init_thread"));
    nnp_comm *c = nnp_calloc(1, sizeof *c);
    if (!c)
        return NNP_ERR_NOMEM;
    MPI_Query_thread(&c->thread_level);
    MPI_Comm_dup(MPI_COMM_WORLD, &c->comm);
    MPI_Comm_set_errhandler(c->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(c->comm, &c->rank);
    MPI_Comm_size(c->comm, &c->size);
    c->counts = nnp_malloc((size_t)c->size * sizeof(int));
    c->displs = nnp_malloc((size_t)c->size * sizeof(int));
    if (!c->counts || !c->displs) {
        free(c->counts);
        free(c->displs);
        free(c);
        return NNP_ERR_NOMEM;
    }
    /* ranks that share a node (shared-memory domain) */
    MPI_Comm node;
    MPI_Comm_split_type(c->comm, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &c->local_size);
    MPI_Comm_free(&node);
    *out = c;
    return NNP_OK;
}

void nnp_comm_finalize(nnp_comm *c)
{
    if (c) {
        MPI_Comm_free(&c->comm);
        free(c->counts);
        free(c->displs);
        free(c->scratch);
        free(c);
    }
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin)
        MPI_Finalize();
}

void nnp_comm_abort(nnp_comm *c, int code) { MPI_Abort(c ? c->comm : MPI_COMM_WORLD, code); }

int nnp_comm_rank(const nnp_comm *c) { return c->rank; }
int nnp_comm_size(const nnp_comm *c) { return c->size; }
int nnp_comm_local_size(const nnp_comm *c) { return c->local_size; }

double nnp_comm_wtime(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

nnp_status nnp_comm_allreduce_sum_f32(nnp_comm *c, float *buf, size_t n, size_t chunk_bytes)
{
    if (c->size == 1)
        return NNP_OK;
    size_t chunk = (chunk_bytes ? chunk_bytes : (size_t)4 << 20) / sizeof(float);
    if (chunk == 0)
        chunk = 1;
    for (size_t off = 0; off < n; off += chunk) {
        size_t m = n - off < chunk ? n - off : chunk;
        NNP_CALL(mpi_check(
            MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)m, MPI_FLOAT, MPI_SUM, c->comm),
            "MPI_Allreduce(gradients)"));
    }
    return NNP_OK;
}

static nnp_status allreduce(nnp_comm *c, void *buf, size_t n, MPI_Datatype t, MPI_Op op)
{
    if (c->size == 1)
        return NNP_OK;
    return mpi_check(MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, t, op, c->comm), "MPI_Allreduce");
}

nnp_status nnp_comm_allreduce_sum_f64(nnp_comm *c, double *buf, size_t n)
{
    return allreduce(c, buf, n, MPI_DOUBLE, MPI_SUM);
}
nnp_status nnp_comm_allreduce_max_f64(nnp_comm *c, double *buf, size_t n)
{
    return allreduce(c, buf, n, MPI_DOUBLE, MPI_MAX);
}
nnp_status nnp_comm_allreduce_min_f64(nnp_comm *c, double *buf, size_t n)
{
    return allreduce(c, buf, n, MPI_DOUBLE, MPI_MIN);
}
nnp_status nnp_comm_allreduce_sum_i64(nnp_comm *c, int64_t *buf, size_t n)
{
    return allreduce(c, buf, n, MPI_INT64_T, MPI_SUM);
}

nnp_status nnp_comm_bcast(nnp_comm *c, void *buf, size_t bytes, int root)
{
    if (c->size == 1)
        return NNP_OK;
    return mpi_check(MPI_Bcast(buf, (int)bytes, MPI_BYTE, root, c->comm), "MPI_Bcast");
}

nnp_status nnp_comm_barrier(nnp_comm *c) { return mpi_check(MPI_Barrier(c->comm), "MPI_Barrier"); }

nnp_status nnp_comm_agree(nnp_comm *c, nnp_status local)
{
    /* the lowest failing rank keeps its status (and prints); every other rank, failing or
     * not, gets NNP_ERR_REMOTE, so one message reaches the user, not one per rank, and
     * learns that rank's status (nnp_remote), so all exit with the same code */
    struct {
        int rank, status;
    } mine = {local != NNP_OK ? c->rank : c->size, (int)local}, lowest = mine;
    if (c->size > 1) {
        nnp_status s = mpi_check(MPI_Allreduce(&mine, &lowest, 1, MPI_2INT, MPI_MINLOC, c->comm),
                                 "MPI_Allreduce(agree)");
        if (s != NNP_OK)
            return s;
    }
    if (lowest.rank == c->size)
        return NNP_OK;
    return lowest.rank == c->rank ? local : nnp_remote((nnp_status)lowest.status);
}

nnp_status nnp_comm_allgather_f64(nnp_comm *c, double v, double *out)
{
    if (c->size == 1) {
        out[0] = v;
        return NNP_OK;
    }
    return mpi_check(MPI_Allgather(&v, 1, MPI_DOUBLE, out, 1, MPI_DOUBLE, c->comm),
                     "MPI_Allgather");
}

/* counts/displs of the shares nnp_split(n, size, r); their sizes must fit an int */
static nnp_status share_counts(nnp_comm *c, size_t n)
{
    for (int r = 0; r < c->size; r++) {
        size_t lo, hi;
        nnp_split(n, c->size, r, &lo, &hi);
        if (hi > (size_t)INT_MAX)
            return nnp_error(NNP_ERR_ARG, "%zu values are too many for the sharded collectives "
                                          "(at most %d)", n, INT_MAX);
        c->counts[r] = (int)(hi - lo);
        c->displs[r] = (int)lo;
    }
    return NNP_OK;
}

nnp_status nnp_comm_shard_setup(nnp_comm *c, size_t n)
{
    NNP_CALL(share_counts(c, n));
    size_t most = 0;
    for (int r = 0; r < c->size; r++)
        most = (size_t)c->counts[r] > most ? (size_t)c->counts[r] : most;
    if (most > c->scratch_n) {
        float *s = nnp_malloc(most * sizeof(float));
        if (!s)
            return NNP_ERR_NOMEM;
        free(c->scratch);
        c->scratch = s;
        c->scratch_n = most;
    }
    return NNP_OK;
}

/* Ring reduce-scatter: in step s = 0 .. p-2 rank r sends its running sum of share
 * (r - s - 1) mod p to rank r + 1 and adds what rank r - 1 sends, share (r - s - 2) mod p,
 * into its own copy; the last share it completes is its own. Each rank moves (p-1)/p of
 * the vector, the least any reduce-scatter can. (Open MPI 4.1's MPI_Reduce_scatter took
 * longer on 2 ranks than a whole MPI_Allreduce of the same buffer.) */
nnp_status nnp_comm_reduce_scatter_f32(nnp_comm *c, float *buf, size_t n)
{
    const int p = c->size, r = c->rank;
    if (p == 1)
        return NNP_OK;
    NNP_CALL(share_counts(c, n));
    for (int q = 0; q < p; q++)
        if ((size_t)c->counts[q] > c->scratch_n)
            return nnp_error(NNP_ERR_ARG, "nnp_comm_reduce_scatter_f32: call nnp_comm_shard_setup "
                                          "for %zu values first", n);
    const int next = (r + 1) % p, prev = (r + p - 1) % p;
    for (int step = 0; step < p - 1; step++) {
        int sb = ((r - step - 1) % p + p) % p, rb = ((r - step - 2) % p + p) % p;
        NNP_CALL(mpi_check(MPI_Sendrecv(buf + c->displs[sb], c->counts[sb], MPI_FLOAT, next, 71,
                                        c->scratch, c->counts[rb], MPI_FLOAT, prev, 71, c->comm,
                                        MPI_STATUS_IGNORE),
                           "MPI_Sendrecv"));
        float *dst = buf + c->displs[rb];
        const float *src = c->scratch;
        for (int i = 0; i < c->counts[rb]; i++)
            dst[i] += src[i];
    }
    return NNP_OK;
}

nnp_status nnp_comm_allgather_shares_f32(nnp_comm *c, float *buf, size_t n)
{
    if (c->size == 1)
        return NNP_OK;
    NNP_CALL(share_counts(c, n));
    return mpi_check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, c->counts, c->displs,
                                    MPI_FLOAT, c->comm),
                     "MPI_Allgatherv");
}

size_t nnp_comm_share_requests(const nnp_comm *c, int q_max)
{
    return 2 * (size_t)(c->size > 1 ? c->size - 1 : 1) * (size_t)(q_max > 0 ? q_max : 1) *
           sizeof(MPI_Request);
}

nnp_status nnp_comm_share_blocks_f32(nnp_comm *c, float *const *vecs, int q, const int *q_all,
                                     const size_t *off, float *recv, void *req)
{
    const int p = c->size, me = c->rank;
    if (p == 1)
        return NNP_OK;
    MPI_Request *rq = req;
    int nr = 0;
    const size_t len = off[me + 1] - off[me];
    size_t first = 0;
    for (int r = 0; r < p; r++) {
        if (r != me)
            for (int t = 0; t < q_all[r] && len > 0; t++)
                MPI_Irecv(recv + (first + (size_t)t) * len, (int)len, MPI_FLOAT, r, 80 + t,
                          c->comm, &rq[nr++]);
        first += (size_t)q_all[r];
    }
    for (int r = 0; r < p; r++) {
        const size_t n = off[r + 1] - off[r];
        if (r == me || n == 0)
            continue;
        for (int t = 0; t < q; t++)
            MPI_Isend(vecs[t] + off[r], (int)n, MPI_FLOAT, r, 80 + t, c->comm, &rq[nr++]);
    }
    return mpi_check(MPI_Waitall(nr, rq, MPI_STATUSES_IGNORE), "MPI_Waitall(gradient shares)");
}

nnp_status nnp_comm_allgather_off_f32(nnp_comm *c, float *buf, const size_t *off)
{
    if (c->size == 1)
        return NNP_OK;
    for (int r = 0; r < c->size; r++) {
        if (off[r + 1] > (size_t)INT_MAX)
            return nnp_error(NNP_ERR_ARG, "%zu values are too many for the sharded collectives "
                                          "(at most %d)", off[r + 1], INT_MAX);
        c->counts[r] = (int)(off[r + 1] - off[r]);
        c->displs[r] = (int)off[r];
    }
    return mpi_check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, c->counts, c->displs,
                                    MPI_FLOAT, c->comm),
                     "MPI_Allgatherv");
}

nnp_status nnp_comm_gather_f64(nnp_comm *c, const double *in, size_t n, double *out)
{
    if (c->size == 1) {
        memcpy(out, in, n * sizeof(double));
        return NNP_OK;
    }
    return mpi_check(MPI_Gather(in, (int)n, MPI_DOUBLE, out, (int)n, MPI_DOUBLE, 0, c->comm),
                     "MPI_Gather");
}

/* ---- background allreduce --------------------------------------------------------------- */

typedef struct {
    float *buf;
    size_t n;
    double t0, t1; /* when the thread started and finished it */
} async_job;

struct nnp_comm_async {
    nnp_comm *c;
    size_t chunk;           /* floats per MPI_Allreduce */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    async_job *jobs;        /* [max_jobs] queue, reset at every wait */
    int max_jobs, n_jobs, n_done, stop;
    int last_n;             /* jobs of the last wait, whose times stay in jobs[] */
    int rc;                 /* first MPI error code seen by the thread */
    double busy_s;          /* time in MPI since the last wait */
};

static void *async_main(void *arg)
{
    nnp_comm_async *a = arg;
    pthread_mutex_lock(&a->mu);
    for (;;) {
        while (!a->stop && a->n_done == a->n_jobs)
            pthread_cond_wait(&a->cv, &a->mu);
        if (a->stop)
            break;
        const int idx = a->n_done;
        async_job j = a->jobs[idx];
        pthread_mutex_unlock(&a->mu);
        double t0 = nnp_comm_wtime();
        int rc = MPI_SUCCESS;
        for (size_t off = 0; off < j.n && rc == MPI_SUCCESS; off += a->chunk) {
            size_t m = j.n - off < a->chunk ? j.n - off : a->chunk;
            rc = MPI_Allreduce(MPI_IN_PLACE, j.buf + off, (int)m, MPI_FLOAT, MPI_SUM, a->c->comm);
        }
        const double t1 = nnp_comm_wtime();
        pthread_mutex_lock(&a->mu);
        a->busy_s += t1 - t0;
        a->jobs[idx].t0 = t0;
        a->jobs[idx].t1 = t1;
        if (rc != MPI_SUCCESS && a->rc == MPI_SUCCESS)
            a->rc = rc;
        a->n_done++;
        pthread_cond_broadcast(&a->cv);
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

nnp_status nnp_comm_async_start(nnp_comm *c, int max_jobs, size_t chunk_bytes,
                                nnp_comm_async **out)
{
    *out = NULL;
    if (c->thread_level < MPI_THREAD_SERIALIZED)
        return nnp_error(NNP_ERR_COMM,
                         "this MPI library does not provide MPI_THREAD_SERIALIZED, which the "
                         "bucketed allreduce needs (use --allreduce fused)");
    nnp_comm_async *a = nnp_calloc(1, sizeof *a);
    if (!a)
        return NNP_ERR_NOMEM;
    a->jobs = nnp_calloc((size_t)max_jobs, sizeof(async_job));
    if (!a->jobs) {
        free(a);
        return NNP_ERR_NOMEM;
    }
    a->c = c;
    a->max_jobs = max_jobs;
    a->chunk = (chunk_bytes ? chunk_bytes : (size_t)4 << 20) / sizeof(float);
    if (a->chunk == 0)
        a->chunk = 1;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    if (pthread_create(&a->thread, NULL, async_main, a) != 0) {
        free(a->jobs);
        free(a);
        return nnp_error(NNP_ERR_COMM, "cannot start the communication thread");
    }
    *out = a;
    return NNP_OK;
}

void nnp_comm_async_submit(nnp_comm_async *a, float *buf, size_t n)
{
    pthread_mutex_lock(&a->mu);
    if (a->n_jobs < a->max_jobs) /* the trainer sizes max_jobs to its bucket count */
        a->jobs[a->n_jobs++] = (async_job){buf, n, 0.0, 0.0};
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

nnp_status nnp_comm_async_wait(nnp_comm_async *a, double *busy_s)
{
    pthread_mutex_lock(&a->mu);
    while (a->n_done < a->n_jobs)
        pthread_cond_wait(&a->cv, &a->mu);
    int rc = a->rc;
    if (busy_s)
        *busy_s = a->busy_s;
    a->busy_s = 0;
    a->last_n = a->n_jobs;
    a->n_jobs = a->n_done = 0;
    a->rc = MPI_SUCCESS;
    pthread_mutex_unlock(&a->mu);
    return mpi_check(rc, "MPI_Allreduce(gradient bucket)");
}

int nnp_comm_async_job_time(const nnp_comm_async *a, int i, double *t0, double *t1)
{
    if (i >= 0 && i < a->last_n) {
        *t0 = a->jobs[i].t0;
        *t1 = a->jobs[i].t1;
    }
    return a->last_n;
}

void nnp_comm_async_stop(nnp_comm_async *a)
{
    if (!a)
        return;
    pthread_mutex_lock(&a->mu);
    a->stop = 1;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
    pthread_join(a->thread, NULL);
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->cv);
    free(a->jobs);
    free(a);
}

/* ---- --allreduce shm: node-local shared memory ------------------------------------------ */

struct nnp_comm_shm {
    MPI_Comm node;   /* the ranks of this node (or of a NNPREC_SHM_NODE_RANKS group) */
    MPI_Comm cross;  /* the ranks with this node-local rank on every node; NULL on one node */
    MPI_Win win;
    int lrank, lsize;
    size_t lo, hi;        /* this rank's share */
    float *params;        /* the node's one copy of the parameters (in node rank 0's segment) */
    float **grads;        /* [lsize]: every node rank's gradients, mapped here */
    int *counts, *displs; /* [lsize]: the node shares */
    size_t stride;        /* floats between a rank's gradient vectors (--deterministic: nvec) */
    int nvec;
    /* the layout: nodes numbered in the order of their lowest ranks; every rank's node and
     * node-local rank; the node of each rank of `cross`, and gather counts (nnodes) */
    int nnodes, node_idx;
    int *node_of, *lrank_of, *cross_node, *gcounts, *gdispls;
};

/* Collective (node, then everyone, then cross): the layout fields of s. */
static nnp_status shm_layout(nnp_comm *c, nnp_comm_shm *s)
{
    const int P = c->size;
    int leader = c->rank;
    NNP_CALL(mpi_check(MPI_Bcast(&leader, 1, MPI_INT, 0, s->node), "MPI_Bcast(node)"));
    int mine[2] = {leader, s->lrank}, *all = nnp_malloc(2 * (size_t)P * sizeof(int));
    s->node_of = nnp_malloc((size_t)P * sizeof(int));
    s->lrank_of = nnp_malloc((size_t)P * sizeof(int));
    nnp_status st = all && s->node_of && s->lrank_of ? NNP_OK : NNP_ERR_NOMEM;
    int dummy[2];
    nnp_status s2 = mpi_check(MPI_Allgather(mine, 2, MPI_INT, all ? all : dummy, 2, MPI_INT,
                                            c->comm),
                              "MPI_Allgather(layout)");
    st = st == NNP_OK ? s2 : st;
    if (st == NNP_OK) {
        s->nnodes = 0;
        for (int w = 0; w < P; w++) { /* node index: leaders in rank order */
            int k = 0;
            for (int v = 0; v < P; v++)
                k += all[2 * v + 1] == 0 && all[2 * v] < all[2 * w];
            s->node_of[w] = k;
            s->lrank_of[w] = all[2 * w + 1];
            s->nnodes = k + 1 > s->nnodes ? k + 1 : s->nnodes;
        }
        s->node_idx = s->node_of[c->rank];
    }
    free(all);
    s->cross_node = nnp_calloc((size_t)(P > 0 ? P : 1), sizeof(int));
    s->gcounts = nnp_calloc((size_t)(P > 0 ? P : 1), sizeof(int));
    s->gdispls = nnp_calloc((size_t)(P > 0 ? P : 1), sizeof(int));
    if (st == NNP_OK && (!s->cross_node || !s->gcounts || !s->gdispls))
        st = NNP_ERR_NOMEM;
    if (s->cross != MPI_COMM_NULL) {
        int k = st == NNP_OK ? s->node_idx : 0;
        s2 = mpi_check(MPI_Allgather(&k, 1, MPI_INT, s->cross_node ? s->cross_node : dummy, 1,
                                     MPI_INT, s->cross),
                       "MPI_Allgather(cross layout)");
        st = st == NNP_OK ? s2 : st;
    }
    return st;
}

/* Share q of L of an n-vector: nnp_split's, each bound moved up to the next of the sorted
 * cut points cuts[0..ncuts) (none: as it is). */
static void share_bounds(size_t n, int L, int q, const size_t *cuts, int ncuts, size_t *lo,
                         size_t *hi)
{
    nnp_split(n, L, q, lo, hi);
    for (int e = 0; e < 2 && cuts; e++) {
        size_t *b = e ? hi : lo;
        if (*b == 0 || *b == n)
            continue;
        int k = 0;
        while (k < ncuts && cuts[k] < *b)
            k++;
        *b = k < ncuts ? cuts[k] : n;
    }
}

/* Every rank makes every collective call below whatever failed locally before it, so that
 * no rank is left waiting; the caller agrees on the status afterwards. */
static nnp_status shm_start(nnp_comm *c, size_t n, int nvec, const size_t *cuts, int ncuts,
                            nnp_comm_shm **out);

nnp_status nnp_comm_shm_start(nnp_comm *c, size_t n, nnp_comm_shm **out)
{
    return shm_start(c, n, 1, NULL, 0, out);
}

nnp_status nnp_comm_shm_start_det(nnp_comm *c, size_t n, int nvec, const size_t *cuts, int ncuts,
                                  nnp_comm_shm **out)
{
    return shm_start(c, n, nvec, cuts, ncuts, out);
}

float *nnp_comm_shm_vec(const nnp_comm_shm *s, int lrank, int t)
{
    return s->grads[lrank] + (size_t)t * s->stride;
}

int nnp_comm_shm_nodes(const nnp_comm_shm *s)
{
    return s->nnodes > 0 ? s->nnodes : 1;
}

void nnp_comm_shm_layout(const nnp_comm_shm *s, const int **node_of, const int **lrank_of,
                         int *node)
{
    *node_of = s->node_of;
    *lrank_of = s->lrank_of;
    *node = s->node_idx;
}

nnp_status nnp_comm_shm_cross_gather_f32(nnp_comm_shm *s, const float *send, float *recv,
                                         const size_t *counts)
{
    if (s->cross == MPI_COMM_NULL)
        return NNP_OK;
    int K;
    MPI_Comm_size(s->cross, &K);
    for (int k = 0; k < K; k++) { /* node k's data at the sum of the nodes' before it */
        size_t d = 0;
        for (int j = 0; j < s->cross_node[k]; j++)
            d += counts[j];
        if (counts[s->cross_node[k]] > (size_t)INT_MAX || d > (size_t)INT_MAX)
            return nnp_error(NNP_ERR_ARG, "too many values for the cross-node gather");
        s->gcounts[k] = (int)counts[s->cross_node[k]];
        s->gdispls[k] = (int)d;
    }
    return mpi_check(MPI_Allgatherv(send, (int)counts[s->node_idx], MPI_FLOAT, recv, s->gcounts,
                                    s->gdispls, MPI_FLOAT, s->cross),
                     "MPI_Allgatherv(across nodes)");
}

static nnp_status shm_start(nnp_comm *c, size_t n, int nvec, const size_t *cuts, int ncuts,
                            nnp_comm_shm **out)
{
    *out = NULL;
    nnp_comm_shm *s = nnp_calloc(1, sizeof *s);
    if (!s)
        return NNP_ERR_NOMEM; /* before any collective: the caller's agree catches it */
    s->node = s->cross = MPI_COMM_NULL;
    s->win = MPI_WIN_NULL;
    nnp_status st = mpi_check(MPI_Comm_split_type(c->comm, MPI_COMM_TYPE_SHARED, c->rank,
                                                  MPI_INFO_NULL, &s->node),
                              "MPI_Comm_split_type");
    if (st != NNP_OK)
        goto fail;
    long group = 0; /* NNPREC_SHM_NODE_RANKS: pretend nodes of this many ranks */
    const char *e = getenv("NNPREC_SHM_NODE_RANKS");
    if (e && e[0]) {
        char *end;
        group = strtol(e, &end, 10);
        if (*end || group < 1 || group > INT_MAX) {
            st = nnp_error(NNP_ERR_ARG, "NNPREC_SHM_NODE_RANKS must be a positive integer, got '%s'",
                           e);
            group = 0;
        }
    }
    { /* always collective, even where the variable was bad, so no rank waits alone */
        MPI_Comm sub;
        int lr;
        MPI_Comm_rank(s->node, &lr);
        nnp_status s2 = mpi_check(MPI_Comm_split(s->node, group > 0 ? lr / (int)group : 0, lr,
                                                 &sub),
                                  "MPI_Comm_split");
        if (s2 != NNP_OK) {
            st = s2;
            goto fail;
        }
        MPI_Comm_free(&s->node);
        s->node = sub;
    }
    MPI_Comm_set_errhandler(s->node, MPI_ERRORS_RETURN);
    MPI_Comm_rank(s->node, &s->lrank);
    MPI_Comm_size(s->node, &s->lsize);
    /* Open MPI backs the window with a file in osc_sm_backing_directory (/dev/shm); where
     * that file system is too small (a container's 64 MB /dev/shm), the allocation hangs
     * instead of failing, so check the room first */
    const size_t stride = (n + 15) & ~(size_t)15; /* gradients start on a 64-byte boundary */
    { /* every rank the same room (rank 0's decides where the parameters sit) */
        int most = nvec;
        nnp_status s3 = mpi_check(MPI_Allreduce(&nvec, &most, 1, MPI_INT, MPI_MAX, c->comm),
                                  "MPI_Allreduce(vectors)");
        if (s3 != NNP_OK) {
            st = s3;
            goto fail;
        }
        nvec = most;
    }
    const char *dir = getenv("OMPI_MCA_osc_sm_backing_directory");
    if (!dir || !dir[0])
        dir = "/dev/shm";
    s->stride = stride;
    s->nvec = nvec;
    double need = ((double)s->lsize * nvec + 1.0) * (double)stride * sizeof(float) + 1048576.0,
           room = -1;
    struct statvfs fs;
    if (statvfs(dir, &fs) == 0)
        room = (double)fs.f_bavail * (double)fs.f_frsize;
    const char *fault = getenv("NNPREC_FAULT_SHM_FREE_MB"); /* test hook: pretend this room */
    if (fault && fault[0])
        room = atof(fault) * 1e6;
    /* the cross-node sum pairs shares by node-local rank: every node needs the same count */
    int mm[3] = {-s->lsize, s->lsize, room >= 0 && room < need};
    nnp_status s2 = mpi_check(MPI_Allreduce(MPI_IN_PLACE, mm, 3, MPI_INT, MPI_MAX, c->comm),
                              "MPI_Allreduce(node sizes)");
    if (s2 != NNP_OK) {
        st = s2;
        goto fail;
    }
    if (st == NNP_OK && -mm[0] != mm[1])
        st = nnp_error(NNP_ERR_ARG, "--allreduce shm needs the same number of ranks on every node "
                                    "(found %d to %d); use --allreduce fused", -mm[0], mm[1]);
    if (mm[2]) { /* on any rank: nobody allocates */
        char has[64] = "another node's has less free";
        if (room >= 0 && room < need)
            snprintf(has, sizeof has, "which has %.1f MB free", room / 1e6);
        if (st == NNP_OK)
            st = nnp_error(NNP_ERR_NOMEM, "--allreduce shm needs %.1f MB of shared memory per node "
                                          "in %s, %s (use --allreduce fused, or a larger %s)",
                           need / 1e6, dir, has, dir);
        goto fail;
    }
    if (s->lsize < c->size) {
        s2 = mpi_check(MPI_Comm_split(c->comm, s->lrank, c->rank, &s->cross), "MPI_Comm_split");
        if (s2 != NNP_OK) {
            st = s2;
            goto fail;
        }
        MPI_Comm_set_errhandler(s->cross, MPI_ERRORS_RETURN);
    }
    s->grads = nnp_calloc((size_t)s->lsize, sizeof(float *));
    s->counts = nnp_calloc((size_t)s->lsize, sizeof(int));
    s->displs = nnp_calloc((size_t)s->lsize, sizeof(int));
    if (st == NNP_OK && (!s->grads || !s->counts || !s->displs))
        st = NNP_ERR_NOMEM;
    for (int q = 0; q < s->lsize && st == NNP_OK; q++) {
        size_t lo, hi;
        share_bounds(n, s->lsize, q, cuts, ncuts, &lo, &hi);
        if (hi > (size_t)INT_MAX)
            st = nnp_error(NNP_ERR_ARG, "%zu values are too many for --allreduce shm (at most %d)",
                           n, INT_MAX);
        else {
            s->counts[q] = (int)(hi - lo);
            s->displs[q] = (int)lo;
        }
    }
    share_bounds(n, s->lsize, s->lrank, cuts, ncuts, &s->lo, &s->hi);
    /* every rank's gradients on their own pages (noncontig), first touched by their owner;
     * node rank 0's segment also holds the parameters, each share first touched by the
     * rank that updates it (so that its pages sit near that rank's core) */
    MPI_Info info;
    MPI_Info_create(&info);
    MPI_Info_set(info, "alloc_shared_noncontig", "true");
    float *mine = NULL;
    const size_t own = (size_t)nvec * stride + (s->lrank == 0 ? stride : 0);
    s2 = mpi_check(MPI_Win_allocate_shared((MPI_Aint)(own * sizeof(float)), (int)sizeof(float),
                                           info, s->node, &mine, &s->win),
                   "MPI_Win_allocate_shared");
    MPI_Info_free(&info);
    if (s2 != NNP_OK) {
        s->win = MPI_WIN_NULL;
        st = s2;
        goto fail;
    }
    memset(mine, 0, (size_t)nvec * stride * sizeof(float));
    for (int q = 0; q < s->lsize && s->grads; q++) {
        MPI_Aint bytes;
        int unit;
        float *base = NULL;
        MPI_Win_shared_query(s->win, q, &bytes, &unit, &base);
        s->grads[q] = base;
        if (q == 0)
            s->params = base + (size_t)nvec * stride;
    }
    if (s->params)
        memset(s->params + s->lo, 0, (s->hi - s->lo) * sizeof(float));
    s2 = shm_layout(c, s);
    st = st == NNP_OK ? s2 : st;
    MPI_Win_lock_all(MPI_MODE_NOCHECK, s->win);
    *out = s;
    return st;
fail:
    *out = s; /* freed collectively by nnp_comm_shm_stop */
    return st;
}

void nnp_comm_shm_buffers(const nnp_comm_shm *s, float **params, float **grads)
{
    *params = s->params;
    *grads = s->grads[s->lrank];
}

void nnp_comm_shm_store(nnp_comm_shm *s, const float *params)
{
    memcpy(s->params + s->lo, params + s->lo, (s->hi - s->lo) * sizeof(float));
}

void nnp_comm_shm_share(const nnp_comm_shm *s, size_t *lo, size_t *hi, int *local_rank,
                        int *local_size)
{
    *lo = s->lo;
    *hi = s->hi;
    *local_rank = s->lrank;
    *local_size = s->lsize;
}

nnp_status nnp_comm_shm_fence(nnp_comm_shm *s)
{
    MPI_Win_sync(s->win);
    NNP_CALL(mpi_check(MPI_Barrier(s->node), "MPI_Barrier(node)"));
    MPI_Win_sync(s->win);
    return NNP_OK;
}

nnp_status nnp_comm_shm_reduce(nnp_comm_shm *s)
{
    enum { BLK = 2048 }; /* 8 KiB: the running sum stays in L1 */
    float tmp[BLK];
    float *own = s->grads[s->lrank];
    for (size_t b = s->lo; b < s->hi; b += BLK) {
        const size_t m = s->hi - b < BLK ? s->hi - b : BLK;
        /* rank order, as a left fold: on two ranks the same sum as MPI_Allreduce's */
        float *acc = s->lrank == 0 ? own + b : tmp;
        if (acc == tmp)
            memcpy(tmp, s->grads[0] + b, m * sizeof(float));
        for (int q = 1; q < s->lsize; q++) {
            const float *src = s->grads[q] + b;
            for (size_t i = 0; i < m; i++)
                acc[i] += src[i];
        }
        if (acc == tmp)
            memcpy(own + b, tmp, m * sizeof(float));
    }
    if (s->cross != MPI_COMM_NULL) {
        const size_t chunk = ((size_t)4 << 20) / sizeof(float);
        for (size_t off = s->lo; off < s->hi; off += chunk) {
            size_t m = s->hi - off < chunk ? s->hi - off : chunk;
            NNP_CALL(mpi_check(MPI_Allreduce(MPI_IN_PLACE, own + off, (int)m, MPI_FLOAT, MPI_SUM,
                                             s->cross),
                               "MPI_Allreduce(gradients across nodes)"));
        }
    }
    return NNP_OK;
}

nnp_status nnp_comm_shm_allreduce_sum_f64(nnp_comm_shm *s, double *buf, size_t n)
{
    if (s->lsize == 1)
        return NNP_OK;
    return mpi_check(MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_DOUBLE, MPI_SUM, s->node),
                     "MPI_Allreduce(node)");
}

nnp_status nnp_comm_shm_cross_sum_f64(nnp_comm_shm *s, double *buf, size_t n)
{
    if (s->cross == MPI_COMM_NULL || n == 0)
        return NNP_OK;
    return mpi_check(MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_DOUBLE, MPI_SUM, s->cross),
                     "MPI_Allreduce(across nodes)");
}

nnp_status nnp_comm_shm_allgather(nnp_comm_shm *s, float *buf)
{
    if (s->lsize == 1)
        return NNP_OK;
    return mpi_check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, s->counts, s->displs,
                                    MPI_FLOAT, s->node),
                     "MPI_Allgatherv(node)");
}

void nnp_comm_shm_stop(nnp_comm_shm *s)
{
    if (!s)
        return;
    if (s->win != MPI_WIN_NULL) {
        MPI_Win_unlock_all(s->win);
        MPI_Win_free(&s->win);
    }
    if (s->cross != MPI_COMM_NULL)
        MPI_Comm_free(&s->cross);
    if (s->node != MPI_COMM_NULL)
        MPI_Comm_free(&s->node);
    free(s->grads);
    free(s->counts);
    free(s->displs);
    free(s->node_of);
    free(s->lrank_of);
    free(s->cross_node);
    free(s->gcounts);
    free(s->gdispls);
    free(s);
}

