/* exchange.h - how the ranks combine their gradients and keep their parameters equal
 * (--allreduce), for the training loop in trainer.c. Internal to src/train.
 *
 * Per step, around the shared parts of the loop:
 *   exchange_backward_hook  the callback backward calls as tensors finish (bucketed)
 *   exchange_grads          after backward: every rank's gradients summed (fused,
 *                           bucketed) or this rank's share of them (sharded, shm)
 *   exchange_update         the optimizer, on every parameter or on this rank's share
 *   exchange_params         after the update: every rank computes with the same parameters
 * One rank uses the fused path, which then does no communication at all. */
#ifndef NNPREC_TRAIN_EXCHANGE_H
#define NNPREC_TRAIN_EXCHANGE_H

#include "nnprec/comm.h"
#include "nnprec/net.h"
#include "nnprec/optim.h"
#include "nnprec/trace.h"
#include "nnprec/trainer.h"
#include "detsum.h"

typedef struct {
    nnp_comm *comm;
    nnp_net *net;
    nnp_allreduce_mode mode; /* NNP_AR_FUSED on one rank, whatever was asked */
    int sharded;             /* sharded or shm: each rank updates only its share */
    size_t chunk_bytes;      /* fused: the allreduce goes in chunks of this size */
    /* bucketed: contiguous ranges of the flat gradient buffer, closed at tensor
     * boundaries, in the order backward finishes them (from the end towards the start) */
    nnp_comm_async *async;
    int n_buckets;
    size_t *bucket_start; /* [n_buckets]: bucket k is [start[k], start[k-1]) */
    int next_bucket;      /* the next to submit */
    /* shm: the node's shared window; during training net->params is the node's shared
     * copy and net->grads this rank's shared gradients, and own_params the private
     * parameters the optimizer updates this rank's share of */
    nnp_comm_shm *sh;
    float *own_params, *own_grads;
    /* this rank's share of the parameters [lo, hi) and its place among the ranks that
     * split them (sharded: all ranks; shm: the node's); the preconditioner's sums use it */
    size_t lo, hi;
    int share_rank, share_size;
    /* --deterministic (detsum.h): micro-shards of S samples; the shares off[r..r+1) start at
     * piece boundaries. Backward leaves this rank's blocks of the tree in net->grads (the
     * first) and blocks (the others, one n_params vector each); the exchange sums every
     * rank's blocks over the tree for this rank's share, in recv. */
    int det, S;
    det_pieces pieces;
    size_t *off;             /* [size + 1] */
    int M, a, b;             /* this step's micro-shards and this rank's [a, b) */
    int q, q_max;            /* this rank's blocks after backward; the most it can have */
    int *q_all;              /* [size] this step's blocks per rank */
    det_node *nodes;         /* [size][DET_MAX_DEPTH] every rank's blocks */
    det_stack st;            /* backward's tree, one layer at a time */
    float *pool[2];          /* stack positions 1..: weight tensors, bias tensors */
    size_t pool_n[2];        /* floats per position */
    float *blocks;           /* (q_max - 1) x n_params */
    float *recv;             /* every rank's blocks' pieces of this rank's share */
    float **vec;             /* [q_max]: this rank's blocks */
    void *req;
    double *leaf_sq;         /* --noise-scale (the caller's, or NULL): each local micro-shard's
                                squared gradient norm, summed as backward hands it over */
    size_t plo, phi;         /* the parameters whose pieces this rank sums for the messages
                                of pieces: its share (shm over several nodes: on the first
                                node; empty on the others, which hold the same shares) */
    size_t q_sum, most;      /* the most blocks of all ranks together; the longest share */
    float *pack, *scratch;   /* shm: this node's blocks' pieces of the share, for the other
                                nodes; the tree's sums */
    size_t *node_n;          /* shm over several nodes: [nodes] floats each node sends, */
    size_t *at;              /* [size] where each rank's blocks start in recv, */
    int *world_of;           /* [size] the rank of node k's node-local rank l at k * L + l */
    nnp_trace *trace;        /* --trace (or NULL): the exchange's own phases of step */
    int64_t step;            /*   the step being done, counted from 1 */
} exchange;

/* Local setup, before the caller's agreement: every allocation the mode needs (with
 * cfg->deterministic: for a training set of n_train samples). */
nnp_status exchange_setup(exchange *x, nnp_comm *comm, nnp_net *net, const nnp_train_cfg *cfg,
                          size_t n_train);
/* Collective, after the agreement and after the parameters are final (resume): shm moves
 * the parameters and gradients into the node's shared window. */
nnp_status exchange_start(exchange *x);
/* --deterministic: start a step whose global batch has gc samples; [*lo, *hi) are this
 * rank's samples (whole micro-shards). */
void exchange_det_begin(exchange *x, size_t gc, size_t *lo, size_t *hi);
/* --deterministic: the sink for nnp_net_backward_shards of this step. */
nnp_shard_sink exchange_det_sink(exchange *x);
/* The callback and its context for nnp_net_backward (NULL unless bucketed). */
void exchange_backward_hook(exchange *x, nnp_grad_ready_fn *cb, void **ctx);
/* After backward; adds the time waiting for the slowest rank, in the allreduce, and in
 * the communication thread (bucketed) to the three counters. */
nnp_status exchange_grads(exchange *x, double *wait_s, double *ar_s, double *thread_s);
/* In-place sum of the preconditioner's per-share sums over the ranks holding the shares. */
nnp_status exchange_sum_f64(exchange *x, double *buf, size_t n);
/* The same for buf[0, n_share), and a sum over ALL ranks for buf[n_share, n) (per-sample
 * sums of each rank's part of the batch), in one message where the two coincide (every
 * mode on one node); shm over several nodes adds a cross-node sum of the second part. */
nnp_status exchange_sum_f64_mixed(exchange *x, double *buf, size_t n_share, size_t n);
/* Sharded/shm: every rank's share of buf (a private n_params vector) to every rank; a
 * no-op otherwise (every rank holds all of it). */
nnp_status exchange_gather(exchange *x, float *buf);
/* shm: wait until rank 0 has read the parameters before anyone updates its share (stats
 * steps); a no-op otherwise. */
nnp_status exchange_hold(exchange *x);
/* The optimizer step, on every parameter or on this rank's share. */
void exchange_update(exchange *x, nnp_optim *opt, double lr, const double *scale);
/* LARS and LAMB on shares (sharded, shm), the step in two passes (optim.h):
 * exchange_norms runs pass 1 over this rank's share and leaves the partial per-tensor squared
 * norms in part[0..2T); the caller sums them over the ranks (exchange_sum_f64, one message
 * that may carry the preconditioner's sums too); exchange_apply runs pass 2 with the sums. */
void exchange_norms(exchange *x, nnp_optim *opt, const double *scale, double *part);
void exchange_apply(exchange *x, nnp_optim *opt, double lr, const double *scale,
                    const double *norms);
/* After the update; adds the time it takes to *ar_s. */
nnp_status exchange_params(exchange *x, double *ar_s);
/* Test hook (NNPREC_FAULT_DRIFT): nudge this rank's copy of one parameter. */
void exchange_drift(exchange *x);
/* Give net back its own buffers (with the trained values) and free everything. */
void exchange_stop(exchange *x);

#endif
