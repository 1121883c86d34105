/* comm.h - the only interface between nnprec and MPI (implemented in src/dist/comm_mpi.c).
 *
 * Every function here is COLLECTIVE over the communicator unless marked "local": all ranks
 * must call it in the same order. nnp_comm wraps a private duplicate of MPI_COMM_WORLD with
 * MPI_ERRORS_RETURN, so MPI failures come back as NNP_ERR_COMM instead of aborting.
 */
#ifndef NNPREC_COMM_H
#define NNPREC_COMM_H
#include <stddef.h>
#include <stdint.h>
#include "nnprec/status.h"

typedef struct nnp_comm nnp_comm;

/* MPI_Init_thread (SERIALIZED: see nnp_comm_async) and dup. Call once per process.
 * want_threads is unused and kept for callers that ask for thread support explicitly. */
nnp_status nnp_comm_init(int *argc, char ***argv, int want_threads, nnp_comm **out);
/* Free the communicator and MPI_Finalize. */
void nnp_comm_finalize(nnp_comm *c);
/* Abort every rank (used only by the CLI when agreement itself failed). */
void nnp_comm_abort(nnp_comm *c, int code);

int nnp_comm_rank(const nnp_comm *c);          /* local */
int nnp_comm_size(const nnp_comm *c);          /* local */
int nnp_comm_local_size(const nnp_comm *c);    /* local: ranks sharing this node */
double nnp_comm_wtime(void);                   /* local: seconds, monotonic */

/* In-place element-wise sum over ranks. Large buffers are reduced in chunks of
 * chunk_bytes (0 = default 4 MiB): Open MPI's large-message allreduce is slower per byte. */
nnp_status nnp_comm_allreduce_sum_f32(nnp_comm *c, float *buf, size_t n, size_t chunk_bytes);
nnp_status nnp_comm_allreduce_sum_f64(nnp_comm *c, double *buf, size_t n);
nnp_status nnp_comm_allreduce_max_f64(nnp_comm *c, double *buf, size_t n);
nnp_status nnp_comm_allreduce_min_f64(nnp_comm *c, double *buf, size_t n);
nnp_status nnp_comm_allreduce_sum_i64(nnp_comm *c, int64_t *buf, size_t n);
nnp_status nnp_comm_bcast(nnp_comm *c, void *buf, size_t bytes, int root);
nnp_status nnp_comm_barrier(nnp_comm *c);

/* Agree on failure: returns NNP_OK on every rank iff local == NNP_OK on every rank.
 * Otherwise the lowest-numbered failing rank gets its own status back (and should print
 * its message) and every other rank gets NNP_ERR_REMOTE (and stays quiet), so the user
 * sees one message. Collective, one tiny allreduce. */
nnp_status nnp_comm_agree(nnp_comm *c, nnp_status local);

/* ---- background allreduce (overlap with backward) ------------------------------------
 * A communication thread that sums float ranges over ranks while the caller keeps
 * computing. Open MPI 4.1 has no asynchronous progress, so a bare MPI_Iallreduce does not
 * advance during a GEMM; a thread that sits in a blocking MPI_Allreduce does. MPI is
 * initialized with MPI_THREAD_SERIALIZED: between nnp_comm_async_submit and
 * nnp_comm_async_wait the caller must make NO other nnp_comm call. Ranges are reduced in
 * submission order, which must be the same on every rank. */
typedef struct nnp_comm_async nnp_comm_async;

/* Start the thread; at most max_jobs submissions between two waits. Collective only in
 * the sense that every rank must use it the same way. */
nnp_status nnp_comm_async_start(nnp_comm *c, int max_jobs, size_t chunk_bytes,
                                nnp_comm_async **out);
/* Queue an in-place sum of buf[0..n) (local, returns at once). */
void nnp_comm_async_submit(nnp_comm_async *a, float *buf, size_t n);
/* Block until every queued range is reduced. *busy_s receives the time the thread spent in
 * MPI for them (to measure how much of it was hidden behind computation). */
nnp_status nnp_comm_async_wait(nnp_comm_async *a, double *busy_s);
/* After a wait: the number of ranges it waited for, and (0 <= i < that number) when the
 * thread started and finished range i (nnp_comm_wtime). */
int nnp_comm_async_job_time(const nnp_comm_async *a, int i, double *t0, double *t1);
void nnp_comm_async_stop(nnp_comm_async *a);

/* Gather one double per rank to every rank: out[size]. */
nnp_status nnp_comm_allgather_f64(nnp_comm *c, double v, double *out);
/* --allreduce sharded: rank r's share of an n-vector is [lo_r, hi_r) = nnp_split(n, size, r).
 * reduce_scatter sums buf over ranks into this rank's share only (the rest of buf is left
 * undefined); allgather_shares copies every rank's share of buf to every rank. */
nnp_status nnp_comm_reduce_scatter_f32(nnp_comm *c, float *buf, size_t n);
/* Allocate reduce_scatter's receive buffer for vectors of n values (local, not collective;
 * call before the first collective of the training loop, which must not allocate). */
nnp_status nnp_comm_shard_setup(nnp_comm *c, size_t n);
nnp_status nnp_comm_allgather_shares_f32(nnp_comm *c, float *buf, size_t n);
/* --deterministic (docs/determinism.md): shares with explicit bounds, rank r's share of an
 * n-vector being [off[r], off[r + 1]) (off[0] = 0, off[size] = n).
 * share_blocks: this rank holds q vectors vecs[0..q) of n floats, rank r holds q_all[r]; every
 * rank receives every other rank's pieces of ITS share, rank by rank and vector by vector, in
 * recv: rank r's vector t at recv + (first_r + t) * len, first_r = q_all[0] + ... + q_all[r-1],
 * len = its share's length (its own pieces' room is left untouched). req: room for
 * 2 * (size - 1) * max(q_all) requests (nnp_comm_share_requests). */
nnp_status nnp_comm_share_blocks_f32(nnp_comm *c, float *const *vecs, int q, const int *q_all,
                                     const size_t *off, float *recv, void *req);
/* Bytes of request room share_blocks needs for at most q_max vectors per rank (local). */
size_t nnp_comm_share_requests(const nnp_comm *c, int q_max);
/* Every rank's share [off[r], off[r + 1]) of buf to every rank (in place). */
nnp_status nnp_comm_allgather_off_f32(nnp_comm *c, float *buf, const size_t *off);
/* Gather n doubles per rank to rank 0: out[rank * n + i] (out is used on rank 0 only). */
nnp_status nnp_comm_gather_f64(nnp_comm *c, const double *in, size_t n, double *out);

/* ---- --allreduce shm: node-local shared memory ------------------------------------------
 * The ranks of one node keep one shared copy of the parameters, and each its gradients, in
 * one MPI-3 shared window (MPI_Win_allocate_shared), so a rank reads the other ranks'
 * gradients in place and writes its update straight into the parameters every node rank
 * computes with: no message copies, no replicas to refresh. Rank l of the L ranks on a node
 * owns the share [lo, hi) = nnp_split(n, L, l) of every n-vector. A step is
 *   fence (all gradients written, nobody reads the parameters any more) -> reduce (own share
 *   of the gradients = their sum over all ranks: node ranks in rank order, then across
 *   nodes) -> the optimizer on the own share of the parameters (a private copy) -> store
 *   (that share copied into the node's parameters) -> fence.
 * Across nodes, the ranks with the same node-local rank allreduce their share (every node
 * must hold the same number of ranks); each node has its own copy of the parameters.
 * NNPREC_SHM_NODE_RANKS=k splits each node into groups of k ranks, as if they were nodes of
 * their own (to test the multi-node path). */
typedef struct nnp_comm_shm nnp_comm_shm;

/* Collective: allocate the node's shared parameters and every rank's gradients (n floats). */
nnp_status nnp_comm_shm_start(nnp_comm *c, size_t n, nnp_comm_shm **out);
/* --deterministic: the same with room for nvec gradient vectors per rank (the first is the
 * one nnp_comm_shm_buffers gives) and the node shares' bounds moved up to the next of the
 * sorted cut points cuts[0..ncuts). */
nnp_status nnp_comm_shm_start_det(nnp_comm *c, size_t n, int nvec, const size_t *cuts, int ncuts,
                                  nnp_comm_shm **out);
/* Local: node rank lrank's gradient vector t (readable by every node rank after a fence). */
float *nnp_comm_shm_vec(const nnp_comm_shm *s, int lrank, int t);
/* Local: the number of nodes (1: every rank shares this window). */
int nnp_comm_shm_nodes(const nnp_comm_shm *s);
/* Local: nodes are numbered in the order of their lowest ranks; node_of[w] and lrank_of[w]
 * are rank w's node and node-local rank (arrays of the communicator's size), *node this
 * rank's node. */
void nnp_comm_shm_layout(const nnp_comm_shm *s, const int **node_of, const int **lrank_of,
                         int *node);
/* Collective over the ranks with this node-local rank on every node: each node's
 * counts[node] floats from send (counts[this node] of them here) gathered into recv, node
 * after node in node order. */
nnp_status nnp_comm_shm_cross_gather_f32(nnp_comm_shm *s, const float *send, float *recv,
                                         const size_t *counts);
/* Local: the node's shared parameters and this rank's shared gradients (n floats each). */
void nnp_comm_shm_buffers(const nnp_comm_shm *s, float **params, float **grads);
/* Local: copy this rank's share of params (a private n-vector) into the node's shared
 * parameters (the other node ranks see it after the next fence). */
void nnp_comm_shm_store(nnp_comm_shm *s, const float *params);
/* Local: this rank's share, and its node-local rank and node size. */
void nnp_comm_shm_share(const nnp_comm_shm *s, size_t *lo, size_t *hi, int *local_rank,
                        int *local_size);
/* Collective over the node: barrier with the memory synchronization around it. */
nnp_status nnp_comm_shm_fence(nnp_comm_shm *s);
/* Collective: after a fence, this rank's share of its gradients = the sum over all ranks
 * (the rest of its gradients is left as it was). */
nnp_status nnp_comm_shm_reduce(nnp_comm_shm *s);
/* Collective over the node: in-place sum over the node's ranks (one node holds all shares). */
nnp_status nnp_comm_shm_allreduce_sum_f64(nnp_comm_shm *s, double *buf, size_t n);
/* Collective over the ranks with this node-local rank on every node: in-place sum (a
 * no-op on one node). After a node sum, it completes a sum over all ranks. */
nnp_status nnp_comm_shm_cross_sum_f64(nnp_comm_shm *s, double *buf, size_t n);
/* Collective over the node: every node rank's share of buf (a private n-vector) to all. */
nnp_status nnp_comm_shm_allgather(nnp_comm_shm *s, float *buf);
/* Collective: free the window (NULL is a no-op). */
void nnp_comm_shm_stop(nnp_comm_shm *s);

#endif
