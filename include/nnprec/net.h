/* net.h - a sequential network built from a model spec, with flat parameter buffers.
 *
 * A network is a list of layers. Trainable layers (dense, conv2d) own two parameter
 * tensors, weight then bias, stored contiguously in ONE flat float buffer in forward order
 * (w1, b1, w2, b2, ... as PyTorch's named_parameters()). Gradients live in a second flat
 * buffer with the same offsets, so a gradient allreduce is one call and the backward pass
 * finishes the buffer from its END to its start (last layer first).
 *
 * nnp_net_create() sizes and allocates everything once for a maximum batch; forward and
 * backward never allocate.
 *
 * Model specs (docs/models.md):
 *   lenet                         the seed's network (PyTorch tutorial net, 28x28 input)
 *   mlp:784-256x12-10             dense stack; "WxN" repeats width W N times; --act between
 *   seq:1x28x28/conv:6:3:1:2/relu/maxpool:2/flatten/dense:10
 *                                 any sequential network; the optional first item is the
 *                                 input shape CxHxW (or F); items are
 *                                 dense:OUT, conv:COUT:K[:STRIDE[:PAD]], maxpool:K[:S],
 *                                 avgpool:K[:S], flatten, relu, leaky-relu[:ALPHA], tanh,
 *                                 sigmoid, bn, gap, dropout:P, and res[ITEM/...], a
 *                                 residual block: branch(x) + shortcut(x)
 *   resnet8, resnet20             He et al.'s CIFAR ResNets (3 stages of 16/32/64 channels)
 *   resmlp:784-256x12-10          residual MLP (resmlp-bn: with BatchNorm)
 *
 * A residual block is laid out flat: a fork layer (the identity, aliased), the branch's
 * layers, the projection shortcut's layers (none for an identity shortcut; the first one
 * reads the fork's input, layer.src), and an add layer.
 */
#ifndef NNPREC_NET_H
#define NNPREC_NET_H
#include <stddef.h>
#include <stdint.h>
#include "nnprec/layers.h"
#include "nnprec/status.h"

typedef enum {
    NNP_L_DENSE,
    NNP_L_CONV2D,
    NNP_L_MAXPOOL,
    NNP_L_AVGPOOL,
    NNP_L_FLATTEN,
    NNP_L_ACT, /* element-wise activation, see act/alpha */
    NNP_L_BN,  /* batch normalization: 2-D after conv (per channel), 1-D after dense */
    NNP_L_GAP, /* global average pooling: C x H x W -> C */
    NNP_L_DROPOUT, /* inverted dropout with probability p (training only) */
    NNP_L_RES_FORK, /* start of a residual block: the identity (its output aliases its input) */
    NNP_L_RES_ADD,  /* end of a residual block: branch output + shortcut */
} nnp_layer_kind;

/* The part of a residual block a layer belongs to (nnp_layer.res). */
typedef enum {
    NNP_RES_NONE,     /* not inside a block (also the fork and the add themselves) */
    NNP_RES_BRANCH,   /* a layer of the block's branch */
    NNP_RES_SHORTCUT, /* a layer of its projection shortcut */
} nnp_res_part;

/* How BatchNorm layers compute their batch statistics in training (--bn). */
typedef enum {
    NNP_BN_SYNC,  /* over the global batch: the net's sum hook adds every rank's sums */
    NNP_BN_LOCAL, /* over this rank's part of the batch (PyTorch DDP's default) */
} nnp_bn_mode;

typedef struct {
    int c, h, w; /* per-sample shape; dense features are c with h = w = 1 */
} nnp_shape;

/* A view of one parameter tensor inside the flat buffers. */
typedef struct {
    size_t off, n;   /* offset and element count in params/grads */
    int layer;       /* index into net->layers */
    int is_bias;
    int ndim;        /* 2 (dense weight), 4 (conv weight), 1 (bias) */
    int shape[4];    /* PyTorch orientation */
    int fan_in;      /* dense: in; conv: C_in*k*k; bias: that of its weight */
    int fan_out;     /* dense: out; conv: C_out*k*k; bias: that of its weight */
    char name[48];   /* "fc1.weight", "conv2.bias", "bn1.weight"; with residual blocks
                      * "layers.3.branch.0.weight" (docs/models.md) */
    int norm;        /* a BatchNorm scale (weight) or shift (bias): initialized to 1 / 0 */
} nnp_tensor;

typedef struct {
    nnp_layer_kind kind;
    nnp_shape in, out;
    nnp_act act;     /* NNP_L_ACT */
    float alpha;     /* leaky-relu slope */
    int k, s, p;     /* conv/pool kernel, stride, padding */
    nnp_conv_geom conv;
    nnp_pool_geom pool;
    int tensor;      /* trainable: index of its weight tensor (bias is tensor+1); else -1 */
    nnp_act next_act; /* trainable: activation that follows (for init gains), IDENTITY if none */
    float drop;      /* dropout probability */
    int bn;          /* BatchNorm: its index among the net's BatchNorm layers (bn1 is 0) */
    size_t roff;     /* BatchNorm: offset of running_mean[C] (running_var follows) in
                      * net->running, and of its statistics (2C+1 doubles) in net->bn_stat */
    /* residual blocks: layers fork, branch..., shortcut..., add (forward order) */
    nnp_res_part res; /* the part of a block this layer belongs to */
    int src;          /* the activation it reads: act[src]; i except for the first layer of a
                       * projection shortcut, which reads its block's input act[fork] */
    int fork, add;    /* fork, add and inside a block: the block's fork and add layers */
    int branch_end;   /* fork/add: the index of the branch output act[branch_end] */
    int proj;         /* fork/add: 1 if the shortcut is a projection, 0 identity */
    int item, sub;    /* the spec item it comes from (counted from 0 after the input shape)
                       * and, inside a block, its index in the branch or shortcut (names) */
    int fused;        /* a relu whose only reader is the max pooling right after it: 1 on
                       * both; with net->fuse the pooling does the relu's work too (it reads
                       * the relu's input and writes its input gradient) and the relu layer
                       * does nothing, so act[i + 1] and dact[i + 1] of the relu go unwritten */
    int fused_conv;   /* a convolution whose output only such a fused relu + max pooling
                       * reads: with net->fuse the convolution's forward writes the pooling's
                       * output and argmax itself (nnp_conv2d_forward_relu_pool), the pooling
                       * layer's forward does nothing, and the conv's act[i + 1] goes
                       * unwritten where the direct path pools in place */
} nnp_layer;

typedef struct {
    int n_layers;
    nnp_layer *layers;
    int n_tensors;        /* 2 per trainable layer */
    nnp_tensor *tensors;
    int n_trainable;      /* trainable layers */
    nnp_shape input;      /* per-sample input shape */
    int n_classes;        /* output features */
    size_t n_params;
    float *params;        /* [n_params] */
    float *grads;         /* [n_params] */
    int max_batch;
    /* activations: act[i] is the input of layer i, act[n_layers] the logits; each holds
     * max_batch * size(shape) floats. dact[i] likewise for gradients. */
    float **act, **dact;
    int **argmax;         /* per maxpool layer, else NULL */
    float **ws;           /* per conv layer (else NULL): its workspace, which keeps the
                           * im2col matrix of its input from forward to backward */
    float **dskip;        /* per layer: the input gradient of a projection shortcut's first
                           * layer (its own buffer, else NULL); the fork adds it */
    unsigned char *owned; /* per activation index: bit 0 act[i], bit 1 dact[i] allocated
                           * (not an alias) */
    char spec[256];       /* the model spec it was built from */
    int fuse;             /* 1 (the default): fused layer pairs (nnp_layer.fused) run as one;
                           * 0: every layer writes its own output and input gradient (what
                           * per-layer statistics read) */
    /* BatchNorm buffers (not parameters: no gradient, not in the allreduce) */
    int n_bn;             /* BatchNorm layers */
    size_t n_running;     /* floats in running: 2C per BatchNorm layer */
    float *running;       /* running_mean[C], running_var[C] of each, forward order */
    long long *tracked;   /* [n_bn]: num_batches_tracked */
    double *bn_stat;      /* per BatchNorm layer 2C+1: the last training forward's batch mean,
                           * 1/std and count, for backward */
    double *bn_sums;      /* scratch of 2*max(C)+1 doubles for the per-layer sums */
    /* Mode and context of a pass, set by the caller (the trainer) before forward:
     * training  1: BatchNorm uses batch statistics and updates its running ones, dropout
     *           drops; 0 (evaluation): running statistics, dropout is the identity
     * bn_sum    NULL: batch statistics of the local batch; else called with each
     *           BatchNorm layer's sums (one call per layer and pass) to sum them in place
     *           over the ranks (synchronized BatchNorm); every rank must call forward and
     *           backward the same number of times (nnp_net_sync_idle on a rank with no
     *           samples)
     * seed, step, sample_ids  the dropout mask's key: unit u of local sample n is kept
     *           by (seed, layer, step, sample_ids[n], u) (sample_ids NULL: n) */
    int training;
    int freeze_running;   /* 1: training-mode BatchNorm leaves its running statistics and
                           * num_batches_tracked as they are (an extra pass of a step) */
    nnp_sum_fn bn_sum;
    void *bn_sum_ctx;
    uint64_t seed;
    long long step;
    const uint32_t *sample_ids;
    int has_dropout;
    /* micro-sharded passes in training with BatchNorm (nnp_net_forward_shards): the caller's
     * scratch shard_sums, room for a local batch's micro-shards x (2 max C + 1) doubles,
     * takes each micro-shard's sums; bn_shard_sum(ctx, shard_sums, n, width, out) writes
     * the sums over every rank's micro-shards (width each) to out; every rank calls it once
     * per BatchNorm layer and pass, also with n = 0 */
    double *shard_sums;
    void (*bn_shard_sum)(void *ctx, const double *shard_sums, int n, size_t width, double *out);
    void *bn_shard_ctx;
} nnp_net;

/* Parse spec for input shape `input` (used when the spec gives none) and n_classes outputs
 * (checked against the last layer), with activation `act` for mlp specs. Allocates all
 * buffers for batches up to max_batch. Errors: NNP_ERR_ARG with a message naming the
 * offending item. */
nnp_status nnp_net_create(const char *spec, nnp_shape input, nnp_act act, int max_batch,
                          nnp_net **out);
void nnp_net_free(nnp_net *net);

/* Forward a batch x[B, input] (B <= max_batch). Returns the logits act[n_layers]. */
const float *nnp_net_forward(nnp_net *net, int B, const float *x);
/* Backward from dlogits (already in net->dact[n_layers]), filling net->grads.
 * Requires the forward of the same batch. If on_tensor_done is non-NULL it is called with
 * the index of the lowest tensor whose gradient is final, after each trainable layer (used
 * to start gradient buckets during backward). */
typedef void (*nnp_grad_ready_fn)(void *ctx, int first_final_tensor);
void nnp_net_backward(nnp_net *net, int B, nnp_grad_ready_fn on_ready, void *ctx);

/* One layer of the two passes above (layer i reads act[i], writes act[i+1]; backward
 * reads dact[i+1], writes dact[i] and the layer's gradients), for per-layer timing. */
void nnp_net_forward_layer(nnp_net *net, int i, int B);
void nnp_net_backward_layer(nnp_net *net, int i, int B);

/* ---- micro-sharded passes (--deterministic, docs/determinism.md) ------------------------
 * The local batch of B samples is cut into micro-shards of S samples (the last may be
 * shorter), and every layer runs each micro-shard as a call of its own on that micro-shard's
 * rows of the batch buffers: every kernel sees the same shapes, whatever the local batch a
 * micro-shard sits in, so each sample's activations and each micro-shard's gradients come out
 * bit for bit the same at any rank count. Requires ceil(B/S) * S <= max_batch (room for the
 * micro-shards' conv workspaces). BatchNorm in training mode takes its statistics from each
 * micro-shard's sums through net->bn_shard_sum (set it, and shard_sums). */
void nnp_net_forward_shards(nnp_net *net, int B, int S);
/* Backward of the same samples: a trainable layer's weight and bias gradients of micro-shard
 * c go to sink->slot(ctx, tensor, c) (tensor: the weight's index, then the bias's; n floats of
 * that tensor each), then sink->done(ctx, weight tensor, c) is called. net->grads is not
 * written. Layers run last to first, each over all its micro-shards in order. */
typedef struct {
    float *(*slot)(void *ctx, int tensor, int shard);
    void (*done)(void *ctx, int weight_tensor, int shard);
    void *ctx;
} nnp_shard_sink;
void nnp_net_backward_shards(nnp_net *net, int B, int S, const nnp_shard_sink *sink);

/* A rank with no sample in this step's batch, in training with a sum hook: joins the
 * BatchNorm layers' sums of one forward and one backward as a rank with 0 samples (the
 * running statistics move as on every other rank); their gradients become 0. */
void nnp_net_sync_idle(nnp_net *net);
/* 1 if the network has a layer of this kind. */
int nnp_net_has(const nnp_net *net, nnp_layer_kind kind);
/* Running mean and variance of BatchNorm layer i (kind NNP_L_BN). */
static inline float *nnp_bn_running_mean(const nnp_net *net, int i)
{
    return net->running + net->layers[i].roff;
}

/* The input activation of layer i and its gradient (a projection shortcut's first layer
 * reads its block's input and writes its input gradient to its own buffer). */
static inline float *nnp_layer_input(const nnp_net *net, int i)
{
    return net->act[net->layers[i].src];
}
static inline float *nnp_layer_dinput(const nnp_net *net, int i)
{
    return net->dskip[i] ? net->dskip[i] : net->dact[i];
}

/* Elements per sample of a shape. */
static inline size_t nnp_shape_size(nnp_shape s) { return (size_t)s.c * s.h * s.w; }

/* Parse an activation name: relu, leaky-relu, tanh, sigmoid, identity/linear. */
nnp_status nnp_act_parse(const char *name, nnp_act *out);
const char *nnp_act_name(nnp_act a);

/* One-line-per-layer summary into buf. */
void nnp_net_describe(const nnp_net *net, char *buf, size_t cap);
/* Layer i's line of that summary, without the indent or the newline. */
void nnp_layer_describe(const nnp_net *net, int i, char *buf, size_t cap);

#endif
