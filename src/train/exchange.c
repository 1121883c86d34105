/* exchange.c - the --allreduce modes of the training step (see exchange.h).
 *
 *   fused     barrier (the wait for the slowest rank, timed apart), then one chunked
 *             in-place MPI_Allreduce of the flat gradient buffer; every rank updates all
 *   bucketed  backward hands finished buckets to a communication thread, which allreduces
 *             them while backward goes on; the step waits for the last one
 *   sharded   reduce-scatter: each rank gets the sum of its 1/p share, updates that share,
 *             then the shares are allgathered
 *   shm       the sharded step through a node-local shared window (comm.h): the reduction
 *             reads the other ranks' gradients in place and each update is stored into the
 *             one copy of the parameters the node computes with
 */
#include "exchange.h"
#include <stdlib.h>
#include <string.h>
#include "nnprec/alloc.h"
#include "nnprec/data.h"
#include "nnprec/precond.h"

static nnp_status buckets_plan(exchange *x, double bucket_mb)
{
    const nnp_net *net = x->net;
    size_t target = (size_t)(bucket_mb * 1048576.0 / sizeof(float));
    if (target == 0)
        target = 1;
    x->bucket_start = nnp_malloc((size_t)net->n_tensors * sizeof(size_t));
    if (!x->bucket_start)
        return NNP_ERR_NOMEM;
    size_t end = net->n_params;
    x->n_buckets = 0;
    for (int j = net->n_tensors - 1; j >= 0; j--) {
        size_t off = net->tensors[j].off;
        if (end - off >= target || j == 0) {
            x->bucket_start[x->n_buckets++] = off;
            end = off;
        }
    }
    return NNP_OK;
}

/* Backward callback: gradients from tensor j's offset to the end are final; submit every
 * bucket lying entirely in that range. */
static void buckets_ready(void *ctx, int j)
{
    exchange *x = ctx;
    const nnp_net *net = x->net;
    size_t final_from = net->tensors[j].off;
    while (x->next_bucket < x->n_buckets && x->bucket_start[x->next_bucket] >= final_from) {
        size_t start = x->bucket_start[x->next_bucket];
        size_t end = x->next_bucket == 0 ? net->n_params : x->bucket_start[x->next_bucket - 1];
        nnp_comm_async_submit(x->async, net->grads + start, end - start);
        x->next_bucket++;
    }
}

/* ---- --deterministic ----------------------------------------------------------------------- */

/* Buffers for every batch size an epoch has (the full global batch and the last, partial
 * one): the deepest stack, the most blocks of this rank and of any rank, and of all ranks
 * together. */
static nnp_status det_setup(exchange *x, const nnp_train_cfg *cfg, size_t N)
{
    nnp_net *net = x->net;
    const int P = nnp_comm_size(x->comm), me = nnp_comm_rank(x->comm);
    const size_t G = (size_t)cfg->global_batch, S = (size_t)cfg->micro_shard;
    x->det = 1;
    x->S = (int)S;
    NNP_CALL(det_pieces_init(&x->pieces, net));
    x->off = nnp_malloc(((size_t)P + 1) * sizeof(size_t));
    x->q_all = nnp_malloc((size_t)P * sizeof(int));
    x->nodes = nnp_malloc((size_t)P * DET_MAX_DEPTH * sizeof(det_node));
    if (!x->off || !x->q_all || !x->nodes)
        return NNP_ERR_NOMEM;
    det_pieces_shares(&x->pieces, P, x->off);
    size_t gcs[2];
    int ngc = 0;
    gcs[ngc++] = N < G ? N : G;
    if (N > G && N % G)
        gcs[ngc++] = N % G;
    int depth = 1, q_any = 1;
    size_t q_sum = 1;
    x->q_max = 1;
    for (int k = 0; k < ngc; k++) {
        const int M = (int)((gcs[k] + S - 1) / S);
        size_t sum = 0;
        for (int r = 0; r < P; r++) {
            size_t a, b;
            nnp_split((size_t)M, P, r, &a, &b);
            const int q = det_blocks(M, (int)a, (int)b, x->nodes);
            sum += (size_t)q;
            q_any = q > q_any ? q : q_any;
            if (r == me) {
                const int d = det_max_depth(M, (int)a, (int)b);
                depth = d > depth ? d : depth;
                x->q_max = q > x->q_max ? q : x->q_max;
            }
        }
        q_sum = sum > q_sum ? sum : q_sum;
    }
    for (int j = 0; j < net->n_tensors; j++) {
        const int k = net->tensors[j].is_bias ? 1 : 0;
        x->pool_n[k] = net->tensors[j].n > x->pool_n[k] ? net->tensors[j].n : x->pool_n[k];
    }
    for (int k = 0; k < 2 && depth > 1; k++)
        if (!(x->pool[k] = nnp_malloc((size_t)(depth - 1) * x->pool_n[k] * sizeof(float) + 1)))
            return NNP_ERR_NOMEM;
    if (x->q_max > 1 &&
        !(x->blocks = nnp_malloc((size_t)(x->q_max - 1) * net->n_params * sizeof(float))))
        return NNP_ERR_NOMEM;
    size_t most = 0;
    for (int r = 0; r < P; r++)
        most = x->off[r + 1] - x->off[r] > most ? x->off[r + 1] - x->off[r] : most;
    x->vec = nnp_malloc((size_t)x->q_max * sizeof(float *));
    x->req = nnp_malloc(nnp_comm_share_requests(x->comm, q_any));
    if (!x->vec || !x->req)
        return NNP_ERR_NOMEM;
    if (P > 1 && !(x->recv = nnp_malloc(q_sum * most * sizeof(float) + 1)))
        return NNP_ERR_NOMEM;
    x->q_sum = q_sum;
    x->most = most;
    x->plo = x->off[me];
    x->phi = x->off[me + 1];
    x->vec[0] = net->grads;
    for (int t = 1; t < x->q_max; t++)
        x->vec[t] = x->blocks + (size_t)(t - 1) * net->n_params;
    if (x->sharded) {
        x->lo = x->off[me];
        x->hi = x->off[me + 1];
    }
    return NNP_OK;
}

void exchange_det_begin(exchange *x, size_t gc, size_t *lo, size_t *hi)
{
    const int P = nnp_comm_size(x->comm), me = nnp_comm_rank(x->comm);
    size_t a, b;
    x->M = (int)((gc + (size_t)x->S - 1) / (size_t)x->S);
    nnp_split((size_t)x->M, P, me, &a, &b);
    x->a = (int)a;
    x->b = (int)b;
    x->q = 0;
    det_stack_reset(&x->st, x->M);
    if (x->leaf_sq)
        memset(x->leaf_sq, 0, (size_t)(b - a) * sizeof(double));
    nnp_split_units(gc, (size_t)x->S, P, me, lo, hi);
}

/* Stack position p of tensor t: the tensor's own gradients at the bottom, else the pool of
 * its kind (weights or biases). */
static float *det_buf(exchange *x, int t, int p)
{
    const nnp_tensor *T = &x->net->tensors[t];
    if (p == 0)
        return x->net->grads + T->off;
    const int k = T->is_bias ? 1 : 0;
    return x->pool[k] + (size_t)(p - 1) * x->pool_n[k];
}

static float *det_slot(void *ctx, int t, int shard)
{
    exchange *x = ctx;
    (void)shard;
    return det_buf(x, t, x->st.depth);
}

/* A micro-shard's gradients of a layer's two tensors are in their slots: push the leaf onto
 * the tree (the weight's and the bias's stacks merge alike; st holds the weight's, the
 * bias's buffers follow the same positions). After the layer's last micro-shard, blocks
 * other than the first move to their own vectors. */
static void det_done(void *ctx, int j, int shard)
{
    exchange *x = ctx;
    const nnp_net *net = x->net;
    const det_node leaf = {0, x->a + shard};
    if (x->leaf_sq) { /* --noise-scale: the micro-shard's |g|^2, layer after layer */
        double u = 0, w2 = 0, b2 = 0;
        nnp_precond_range_sums(det_buf(x, j, x->st.depth), 0, net->tensors[j].n, &u, &w2);
        nnp_precond_range_sums(det_buf(x, j + 1, x->st.depth), 0, net->tensors[j + 1].n, &u, &b2);
        x->leaf_sq[shard] += w2 + b2;
    }
    det_stack sb = x->st; /* the bias: same nodes, its own buffers */
    for (int p = 0; p < sb.depth; p++)
        sb.buf[p] = det_buf(x, j + 1, p);
    det_push(&x->st, leaf, det_buf(x, j, x->st.depth), net->tensors[j].n);
    det_push(&sb, leaf, det_buf(x, j + 1, sb.depth), net->tensors[j + 1].n);
    if (x->a + shard + 1 < x->b)
        return;
    x->q = x->st.depth;
    for (int p = 1; p < x->q; p++)
        for (int t = j; t <= j + 1; t++)
            memcpy(x->vec[p] + net->tensors[t].off, det_buf(x, t, p),
                   net->tensors[t].n * sizeof(float));
    det_stack_reset(&x->st, x->M);
}

nnp_shard_sink exchange_det_sink(exchange *x)
{
    return (nnp_shard_sink){det_slot, det_done, x};
}

/* shm: every rank's blocks of this rank's share summed over the tree into its gradients'
 * share: the node's ranks' read in place from the window, other nodes' gathered from the
 * ranks with this node-local rank there (each packs its node's blocks), the sums in private
 * scratch. */
static nnp_status det_grads_shm(exchange *x)
{
    nnp_net *net = x->net;
    const int P = nnp_comm_size(x->comm);
    const size_t lo = x->lo, len = x->hi - x->lo;
    const int nodes = nnp_comm_shm_nodes(x->sh);
    const int *node_of, *lrank_of;
    int me;
    nnp_comm_shm_layout(x->sh, &node_of, &lrank_of, &me);
    /* where rank w's blocks of the share start in recv (other nodes: node after node, each
     * node's ranks in node-local rank order) */
    size_t *at = x->at;
    if (nodes > 1) {
        for (int k = 0; k < nodes; k++)
            x->node_n[k] = 0;
        for (int w = 0; w < P; w++)
            x->node_n[node_of[w]] += (size_t)x->q_all[w] * len;
        size_t pos = 0;
        for (int i = 0; i < P; i++) { /* node after node, node-local ranks in order */
            const int w = x->world_of[i];
            at[w] = pos;
            pos += (size_t)x->q_all[w] * len;
        }
        /* this node's blocks, packed in the same order */
        size_t first = 0;
        for (int k = 0; k < me; k++)
            first += x->node_n[k];
        for (int w = 0; w < P; w++)
            if (node_of[w] == me)
                for (int t = 0; t < x->q_all[w]; t++)
                    memcpy(x->pack + at[w] - first + (size_t)t * len,
                           nnp_comm_shm_vec(x->sh, lrank_of[w], t) + lo, len * sizeof(float));
        NNP_CALL(nnp_comm_shm_cross_gather_f32(x->sh, x->pack, x->recv, x->node_n));
    }
    if (len == 0)
        return NNP_OK;
    det_stack s;
    det_stack_reset(&s, x->M);
    for (int w = 0; w < P; w++)
        for (int t = 0; t < x->q_all[w]; t++) {
            float *v = node_of[w] == me ? nnp_comm_shm_vec(x->sh, lrank_of[w], t) + lo
                                        : x->recv + at[w] + (size_t)t * len;
            det_push_out(&s, x->nodes[(size_t)w * DET_MAX_DEPTH + (size_t)t], v, len, x->scratch);
        }
    if (s.buf[0] != net->grads + lo)
        memcpy(net->grads + lo, s.buf[0], len * sizeof(float));
    return NNP_OK;
}

/* After backward: every rank's blocks summed over the tree, for this rank's share (sharded)
 * or for all of it (fused: the shares are then gathered). */
static nnp_status det_grads(exchange *x)
{
    nnp_net *net = x->net;
    const int P = nnp_comm_size(x->comm), me = nnp_comm_rank(x->comm);
    if (P == 1)
        return NNP_OK; /* one block, the root, already in net->grads */
    for (int r = 0; r < P; r++) {
        size_t a, b;
        nnp_split((size_t)x->M, P, r, &a, &b);
        x->q_all[r] = det_blocks(x->M, (int)a, (int)b, x->nodes + (size_t)r * DET_MAX_DEPTH);
    }
    if (x->sh)
        return det_grads_shm(x);
    NNP_CALL(nnp_comm_share_blocks_f32(x->comm, x->vec, x->q, x->q_all, x->off, x->recv,
                                       x->req));
    const size_t lo = x->off[me], len = x->off[me + 1] - lo;
    if (len > 0) {
        det_stack s;
        det_stack_reset(&s, x->M);
        size_t first = 0;
        for (int r = 0; r < P; r++) {
            for (int t = 0; t < x->q_all[r]; t++)
                det_push(&s, x->nodes[(size_t)r * DET_MAX_DEPTH + (size_t)t],
                         r == me ? x->vec[t] + lo : x->recv + (first + (size_t)t) * len, len);
            first += (size_t)x->q_all[r];
        }
        if (s.buf[0] != net->grads + lo)
            memcpy(net->grads + lo, s.buf[0], len * sizeof(float));
    }
    return x->sharded ? NNP_OK : nnp_comm_allgather_off_f32(x->comm, net->grads, x->off);
}

nnp_status exchange_setup(exchange *x, nnp_comm *comm, nnp_net *net, const nnp_train_cfg *cfg,
                          size_t n_train)
{
    const int size = nnp_comm_size(comm), rank = nnp_comm_rank(comm);
    memset(x, 0, sizeof *x);
    x->comm = comm;
    x->net = net;
    x->mode = size > 1 ? cfg->allreduce : NNP_AR_FUSED;
    x->sharded = x->mode == NNP_AR_SHARDED || x->mode == NNP_AR_SHM;
    x->chunk_bytes = (size_t)(cfg->bucket_mb * 1048576.0);
    x->own_params = net->params;
    x->own_grads = net->grads;
    nnp_split(net->n_params, size, rank, &x->lo, &x->hi);
    x->share_rank = rank;
    x->share_size = size;
    nnp_status st = NNP_OK;
    if (x->mode == NNP_AR_BUCKETED) {
        st = buckets_plan(x, cfg->bucket_mb);
        if (st == NNP_OK)
            st = nnp_comm_async_start(comm, x->n_buckets, x->chunk_bytes, &x->async);
    } else if (x->mode == NNP_AR_SHARDED)
        st = nnp_comm_shard_setup(comm, net->n_params);
    if (st == NNP_OK && cfg->deterministic)
        st = det_setup(x, cfg, n_train);
    return st;
}

nnp_status exchange_start(exchange *x)
{
    if (x->mode != NNP_AR_SHM)
        return NNP_OK;
    nnp_net *net = x->net;
    if (x->det) {
        /* room for this rank's blocks, node shares at piece boundaries */
        nnp_status st = nnp_comm_shm_start_det(x->comm, net->n_params, x->q_max, x->pieces.lo,
                                               x->pieces.n, &x->sh);
        const int nodes = st == NNP_OK ? nnp_comm_shm_nodes(x->sh) : 1;
        if (st == NNP_OK) {
            /* node shares (longer than the ranks' when there are several nodes) */
            const int P = nnp_comm_size(x->comm), L = P / nodes;
            size_t *off = nnp_malloc(((size_t)L + 1) * sizeof(size_t));
            if (off) {
                det_pieces_shares(&x->pieces, L, off);
                for (int l = 0; l < L; l++)
                    x->most = off[l + 1] - off[l] > x->most ? off[l + 1] - off[l] : x->most;
                free(off);
                free(x->recv);
                x->recv = nnp_malloc(x->q_sum * x->most * sizeof(float) + 1);
            }
            if (!off || !x->recv)
                st = NNP_ERR_NOMEM;
            x->scratch = nnp_malloc(x->q_sum * x->most * sizeof(float) + 1);
            if (nodes > 1) {
                x->pack = nnp_malloc(x->q_sum * x->most * sizeof(float) + 1);
                x->node_n = nnp_malloc((size_t)nodes * sizeof(size_t));
                x->at = nnp_malloc((size_t)P * sizeof(size_t));
                x->world_of = nnp_malloc((size_t)P * sizeof(int));
                if (x->world_of) {
                    const int *node_of, *lrank_of;
                    int node;
                    nnp_comm_shm_layout(x->sh, &node_of, &lrank_of, &node);
                    for (int w = 0; w < P; w++)
                        x->world_of[node_of[w] * L + lrank_of[w]] = w;
                }
            }
            if (!x->scratch ||
                (nodes > 1 && (!x->pack || !x->node_n || !x->at || !x->world_of)))
                st = NNP_ERR_NOMEM;
        }
        NNP_CALL(nnp_comm_agree(x->comm, st));
    } else
        NNP_CALL(nnp_comm_agree(x->comm, nnp_comm_shm_start(x->comm, net->n_params, &x->sh)));
    float *params, *grads;
    nnp_comm_shm_buffers(x->sh, &params, &grads);
    nnp_comm_shm_share(x->sh, &x->lo, &x->hi, &x->share_rank, &x->share_size);
    /* every rank holds the same parameters: each copies its share into the node's */
    nnp_comm_shm_store(x->sh, net->params);
    net->params = params;
    net->grads = grads;
    for (int t = 0; x->det && t < x->q_max; t++) /* the blocks in the window */
        x->vec[t] = nnp_comm_shm_vec(x->sh, x->share_rank, t);
    if (x->det) { /* every node holds every share: the first node's ranks sum the pieces */
        const int *node_of, *lrank_of;
        int node;
        nnp_comm_shm_layout(x->sh, &node_of, &lrank_of, &node);
        x->plo = node == 0 ? x->lo : 0;
        x->phi = node == 0 ? x->hi : 0;
    }
    return nnp_comm_shm_fence(x->sh);
}

void exchange_backward_hook(exchange *x, nnp_grad_ready_fn *cb, void **ctx)
{
    x->next_bucket = 0;
    *cb = x->mode == NNP_AR_BUCKETED ? buckets_ready : NULL;
    *ctx = x;
}

nnp_status exchange_grads(exchange *x, double *wait_s, double *ar_s, double *thread_s)
{
    nnp_net *net = x->net;
    double t0 = nnp_comm_wtime();
    if (x->det && nnp_comm_size(x->comm) == 1)
        return NNP_OK;
    if (x->mode == NNP_AR_BUCKETED) {
        /* buckets not yet submitted (none unless this rank had no samples), then wait */
        buckets_ready(x, 0);
        double busy = 0;
        NNP_CALL(nnp_comm_async_wait(x->async, &busy));
        const double t1 = nnp_comm_wtime();
        *ar_s += t1 - t0;
        *thread_s += busy;
        if (x->trace) {
            nnp_trace_add(x->trace, NNP_TR_AR_WAIT, NNP_TR_MAIN, x->step, t0, t1);
            double b0 = 0, b1 = 0;
            const int nb = nnp_comm_async_job_time(x->async, 0, &b0, &b1);
            for (int k = 0; k < nb; k++) {
                nnp_comm_async_job_time(x->async, k, &b0, &b1);
                nnp_trace_add(x->trace, NNP_TR_BUCKET, NNP_TR_COMM, x->step, b0, b1);
            }
        }
        return NNP_OK;
    }
    if (nnp_comm_size(x->comm) == 1)
        return NNP_OK;
    NNP_CALL(x->sh ? nnp_comm_shm_fence(x->sh) : nnp_comm_barrier(x->comm));
    double t1 = nnp_comm_wtime();
    *wait_s += t1 - t0;
    nnp_status st;
    if (x->det)
        st = det_grads(x);
    else if (x->sh)
        st = nnp_comm_shm_reduce(x->sh);
    else if (x->sharded)
        st = nnp_comm_reduce_scatter_f32(x->comm, net->grads, net->n_params);
    else
        st = nnp_comm_allreduce_sum_f32(x->comm, net->grads, net->n_params, x->chunk_bytes);
    const double t2 = nnp_comm_wtime();
    *ar_s += t2 - t1;
    if (x->trace) {
        nnp_trace_add(x->trace, NNP_TR_AR_WAIT, NNP_TR_MAIN, x->step, t0, t1);
        nnp_trace_add(x->trace, NNP_TR_ALLREDUCE, NNP_TR_MAIN, x->step, t1, t2);
    }
    return st;
}

nnp_status exchange_sum_f64(exchange *x, double *buf, size_t n)
{
    /* shm: every node holds every share, so the sums are over the node's ranks */
    return x->sh ? nnp_comm_shm_allreduce_sum_f64(x->sh, buf, n)
                 : nnp_comm_allreduce_sum_f64(x->comm, buf, n);
}

nnp_status exchange_sum_f64_mixed(exchange *x, double *buf, size_t n_share, size_t n)
{
    NNP_CALL(exchange_sum_f64(x, buf, n));
    /* shm: the node sum above is complete for the shares (every node holds all of them)
     * but covers only the node's samples */
    return x->sh ? nnp_comm_shm_cross_sum_f64(x->sh, buf + n_share, n - n_share) : NNP_OK;
}

nnp_status exchange_gather(exchange *x, float *buf)
{
    if (!x->sharded)
        return NNP_OK;
    if (x->det && !x->sh)
        return nnp_comm_allgather_off_f32(x->comm, buf, x->off);
    return x->sh ? nnp_comm_shm_allgather(x->sh, buf)
                 : nnp_comm_allgather_shares_f32(x->comm, buf, x->net->n_params);
}

nnp_status exchange_hold(exchange *x)
{
    /* shm: the other ranks store their updated shares into the node's parameters as soon
     * as they have stepped; they must wait until rank 0 has read the old ones */
    return x->sh ? nnp_comm_shm_fence(x->sh) : NNP_OK;
}

void exchange_update(exchange *x, nnp_optim *opt, double lr, const double *scale)
{
    nnp_net *net = x->net;
    if (x->sh) {
        /* the update of this rank's share goes to its private parameters, whose lines no
         * other core holds, and is then copied into the node's shared ones in one pass
         * (updating the shared copy in place measured slower: every core has read those
         * lines, so each write waits for the other copies to be invalidated) */
        float *shared = net->params;
        net->params = x->own_params;
        nnp_optim_step_range(opt, net, lr, scale, x->lo, x->hi);
        net->params = shared;
        nnp_comm_shm_store(x->sh, x->own_params);
    } else if (x->sharded)
        nnp_optim_step_range(opt, net, lr, scale, x->lo, x->hi);
    else
        nnp_optim_step(opt, net, lr, scale);
}

void exchange_norms(exchange *x, nnp_optim *opt, const double *scale, double *part)
{
    nnp_net *net = x->net;
    float *shared = net->params;
    if (x->sh) /* this rank's share of the private copy, as exchange_update reads it */
        net->params = x->own_params;
    nnp_optim_norms_range(opt, net, scale, x->lo, x->hi, part);
    net->params = shared;
}

void exchange_apply(exchange *x, nnp_optim *opt, double lr, const double *scale,
                    const double *norms)
{
    nnp_net *net = x->net;
    if (x->sh) { /* as exchange_update: the private copy, then one store into the node's */
        float *shared = net->params;
        net->params = x->own_params;
        nnp_optim_apply_range(opt, net, lr, scale, x->lo, x->hi, norms);
        net->params = shared;
        nnp_comm_shm_store(x->sh, x->own_params);
    } else
        nnp_optim_apply_range(opt, net, lr, scale, x->lo, x->hi, norms);
}

nnp_status exchange_params(exchange *x, double *ar_s)
{
    double t0 = nnp_comm_wtime();
    nnp_status st = NNP_OK;
    if (x->sh) /* every share stored before anyone computes with the parameters */
        st = nnp_comm_shm_fence(x->sh);
    else if (x->sharded && x->det)
        st = nnp_comm_allgather_off_f32(x->comm, x->net->params, x->off);
    else if (x->sharded)
        st = nnp_comm_allgather_shares_f32(x->comm, x->net->params, x->net->n_params);
    else
        return NNP_OK;
    const double t1 = nnp_comm_wtime();
    *ar_s += t1 - t0;
    if (x->trace)
        nnp_trace_add(x->trace, NNP_TR_ALLGATHER, NNP_TR_MAIN, x->step, t0, t1);
    return st;
}

void exchange_drift(exchange *x)
{
    /* shm: this rank's private share, which reaches its node's copy at the next store */
    if (x->sh) {
        if (x->hi > x->lo) /* a share may be empty (fewer parameters than ranks) */
            x->own_params[x->lo] += 1e-3f;
    } else
        x->net->params[0] += 1e-3f;
}

void exchange_stop(exchange *x)
{
    nnp_net *net = x->net;
    if (x->sh) {
        if (net->params != x->own_params)
            memcpy(x->own_params, net->params, net->n_params * sizeof(float));
        if (net->grads != x->own_grads)
            memcpy(x->own_grads, net->grads, net->n_params * sizeof(float));
        net->params = x->own_params;
        net->grads = x->own_grads;
        nnp_comm_shm_stop(x->sh);
        x->sh = NULL;
    }
    nnp_comm_async_stop(x->async);
    x->async = NULL;
    free(x->bucket_start);
    x->bucket_start = NULL;
    det_pieces_free(&x->pieces);
    free(x->off);
    free(x->q_all);
    free(x->nodes);
    free(x->pool[0]);
    free(x->pool[1]);
    free(x->blocks);
    free(x->recv);
    free(x->vec);
    free(x->req);
    free(x->leaf_sq);
    free(x->pack);
    free(x->scratch);
    free(x->node_n);
    free(x->at);
    free(x->world_of);
    x->at = NULL;
    x->world_of = NULL;
    x->leaf_sq = NULL;
    x->pack = x->scratch = NULL;
    x->node_n = NULL;
    x->off = NULL;
    x->q_all = NULL;
    x->nodes = NULL;
    x->pool[0] = x->pool[1] = NULL;
    x->blocks = x->recv = NULL;
    x->vec = NULL;
    x->req = NULL;
}
