/* comm_mpi.c - the only file that includes <mpi.h> (see comm.h for the contract).
 *
 * nnp_comm holds a private duplicate of MPI_COMM_WORLD with MPI_ERRORS_RETURN, so a failed
 * MPI call becomes NNP_ERR_COMM with MPI's error string instead of a silent abort.
 */
#include "nnprec/comm.h"
#include <mpi.h>
#include <stdlib.h>
#include <time.h>
#include "nnprec/alloc.h"

struct nnp_comm {
    MPI_Comm comm;
    int rank, size, local_size;
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
    int provided = 0, required = want_threads ? MPI_THREAD_MULTIPLE : MPI_THREAD_FUNNELED;
    *out = NULL;
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited)
        NNP_CALL(mpi_check(MPI_Init_thread(argc, argv, required, &provided), "MPI_Init_thread"));
    nnp_comm *c = nnp_calloc(1, sizeof *c);
    if (!c)
        return NNP_ERR_NOMEM;
    MPI_Comm_dup(MPI_COMM_WORLD, &c->comm);
    MPI_Comm_set_errhandler(c->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(c->comm, &c->rank);
    MPI_Comm_size(c->comm, &c->size);
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
     * not, gets NNP_ERR_REMOTE, so one message reaches the user, not one per rank */
    int mine = local != NNP_OK ? c->rank : c->size, lowest = mine;
    if (c->size > 1) {
        nnp_status s = mpi_check(MPI_Allreduce(&mine, &lowest, 1, MPI_INT, MPI_MIN, c->comm),
                                 "MPI_Allreduce(agree)");
        if (s != NNP_OK)
            return s;
    }
    if (lowest == c->size)
        return NNP_OK;
    return lowest == c->rank ? local : NNP_ERR_REMOTE;
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
