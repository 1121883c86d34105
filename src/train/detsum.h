/* detsum.h - the sums of --deterministic (docs/determinism.md), for exchange.c and
 * trainer.c. Internal to src/train.
 *
 * Micro-shards. A step's global batch of gc samples is cut into M = ceil(gc / S) micro-shards
 * of S samples (the last may be shorter) at boundaries that do not depend on the rank count;
 * rank r takes the micro-shards [a, b) = nnp_split(M, P, r) (nnp_split_shards), whole.
 *
 * The gradient of the batch is the sum of the M micro-shards' gradients over ONE binary tree
 * that depends on M only: node (k, i) covers the micro-shards [i 2^k, (i+1) 2^k) ∩ [0, M),
 * and is the sum (left child) + (right child), or its left child where the right one is
 * empty. Float addition is commutative, so each node has one value whoever adds it. A rank
 * sums the nodes that lie within its micro-shards (its maximal ones are its "blocks", left to
 * right); the ranks' blocks, in rank order, are the nodes the rest of the tree is built from
 * (det_push does both: it merges a node with its left sibling on the stack).
 *
 * Pieces. Sums over the parameters (the preconditioner's sum w and sum w^2, LARS and LAMB's
 * norms) are taken per piece: each tensor is cut into pieces of DET_PIECE values from its
 * start, and a piece's sum is the same whichever rank takes it; the pieces' sums go to every
 * rank in one message where each value comes from one rank and the others add zeros, which
 * is exact, and every rank adds a tensor's pieces in order. Shares of the parameters
 * (sharded, shm) start at piece boundaries, so a piece is never cut by a share. */
#ifndef NNPREC_TRAIN_DETSUM_H
#define NNPREC_TRAIN_DETSUM_H

#include <stddef.h>
#include "nnprec/net.h"

enum { DET_PIECE = 4096, DET_MAX_DEPTH = 64 };

typedef struct {
    int level, index; /* micro-shards [index << level, (index + 1) << level) ∩ [0, M) */
} det_node;

/* A stack of tree nodes over M micro-shards, each with its vector (n floats) in buf. */
typedef struct {
    int M, depth;
    det_node node[DET_MAX_DEPTH];
    float *buf[DET_MAX_DEPTH];
} det_stack;

void det_stack_reset(det_stack *s, int M);
/* Push node nd with data buf (n floats; NULL: count nodes only). Then, while the top node is
 * a right child whose left sibling lies below it, the two become their parent (the left's
 * buffer += the right's); a left child with an empty right sibling becomes its parent as it
 * is. Pushing the micro-shards a..b-1 leaves that range's blocks on the stack; pushing every
 * rank's blocks in rank order leaves the root. */
void det_push(det_stack *s, det_node nd, float *buf, size_t n);
/* The same, but a merge at stack position p writes scratch + p * n (left and right are only
 * read: they may be other ranks' memory). */
void det_push_out(det_stack *s, det_node nd, float *buf, size_t n, float *scratch);

/* The blocks of the micro-shards [a, b) of M, left to right, into out (DET_MAX_DEPTH room);
 * returns their count (0 when a == b). */
int det_blocks(int M, int a, int b, det_node *out);
/* The deepest the stack gets while the micro-shards [a, b) are pushed one by one. */
int det_max_depth(int M, int a, int b);

/* ---- pieces ------------------------------------------------------------------------------ */
typedef struct {
    int n;            /* pieces */
    size_t *lo;       /* [n + 1]: piece p is [lo[p], lo[p + 1]) of the flat buffer */
    int *tensor;      /* [n]: the tensor it belongs to */
    int *first;       /* [n_tensors + 1]: tensor j's pieces are [first[j], first[j + 1]) */
} det_pieces;

nnp_status det_pieces_init(det_pieces *p, const nnp_net *net);
void det_pieces_free(det_pieces *p);
/* Share boundaries at piece starts, as even as those allow: off[0..size] (off[size] = n). */
void det_pieces_shares(const det_pieces *p, int size, size_t *off);
/* The pieces inside [lo, hi) (share boundaries): [*p0, *p1). */
void det_pieces_range(const det_pieces *p, size_t lo, size_t hi, int *p0, int *p1);
/* Per tensor j, the sums of its pieces in order: part holds `width` doubles per piece, out
 * gets width doubles per tensor. */
void det_pieces_fold(const det_pieces *p, int n_tensors, const double *part, int width,
                     double *out);

#endif
