/* test_detsum.c - --deterministic's tree over micro-shards and pieces (src/train/detsum.h),
 * with simulated ranks: for every micro-shard count M and rank count P, every rank's blocks
 * combined in rank order give the one-rank root bit for bit, in place and out of place; the
 * blocks are what det_blocks says and the stack never goes deeper than det_max_depth; the
 * left fold of the same vectors differs (the data does tell orders apart); the pieces cover
 * every tensor and the shares start at piece boundaries.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/train/detsum.h"
#include "nnprec/data.h"
#include "nnprec/net.h"
#include "test_util.h"

enum { N = 37, MAXM = 40 };

static uint64_t g_rng = 88172645463325252ull;
static double uniform(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (double)(g_rng >> 11) / 9007199254740992.0;
}

/* values over ten orders of magnitude, both signs: float sums in another order round
 * differently */
static float leaf_value(void)
{
    const double v = (uniform() - 0.5) * pow(10.0, 10.0 * uniform() - 5.0);
    return (float)v;
}

static float g_leaf[MAXM][N];

/* Push leaves [a, b) (copies into bufs, one per stack position) and return the depth. */
static int push_range(det_stack *s, int a, int b, float (*bufs)[N], int *most)
{
    for (int i = a; i < b; i++) {
        memcpy(bufs[s->depth], g_leaf[i], sizeof g_leaf[i]);
        det_push(s, (det_node){0, i}, bufs[s->depth], N);
        *most = s->depth > *most ? s->depth : *most;
    }
    return s->depth;
}

static void test_tree(void)
{
    static float one[DET_MAX_DEPTH][N], root[N];
    static float rb[16][DET_MAX_DEPTH][N], scratch[DET_MAX_DEPTH * N];
    int differs = 0;
    for (int M = 1; M <= MAXM; M++) {
        for (int i = 0; i < M; i++)
            for (int k = 0; k < N; k++)
                g_leaf[i][k] = leaf_value();
        det_stack s;
        det_stack_reset(&s, M);
        int most = 0;
        ASSERT_EQ_INT(push_range(&s, 0, M, one, &most), 1);
        memcpy(root, s.buf[0], sizeof root);
        /* the left fold */
        float fold[N];
        memcpy(fold, g_leaf[0], sizeof fold);
        for (int i = 1; i < M; i++)
            for (int k = 0; k < N; k++)
                fold[k] += g_leaf[i][k];
        differs += memcmp(fold, root, sizeof fold) != 0;
        for (int P = 1; P <= 9; P++) {
            det_stack st[16];
            det_node nodes[16][DET_MAX_DEPTH];
            int q[16];
            for (int r = 0; r < P; r++) {
                size_t a, b;
                nnp_split((size_t)M, P, r, &a, &b);
                det_stack_reset(&st[r], M);
                int deepest = 0;
                q[r] = push_range(&st[r], (int)a, (int)b, rb[r], &deepest);
                ASSERT_TRUE(deepest <= det_max_depth(M, (int)a, (int)b));
                ASSERT_EQ_INT(det_blocks(M, (int)a, (int)b, nodes[r]), q[r]);
                for (int t = 0; t < q[r]; t++)
                    ASSERT_TRUE(nodes[r][t].level == st[r].node[t].level &&
                                nodes[r][t].index == st[r].node[t].index);
            }
            /* out of place first: the blocks stay as they are for the in-place pass */
            det_stack g;
            det_stack_reset(&g, M);
            for (int r = 0; r < P; r++)
                for (int t = 0; t < q[r]; t++)
                    det_push_out(&g, st[r].node[t], st[r].buf[t], N, scratch);
            ASSERT_EQ_INT(g.depth, 1);
            ASSERT_TRUE(memcmp(g.buf[0], root, sizeof root) == 0);
            det_stack_reset(&g, M);
            for (int r = 0; r < P; r++)
                for (int t = 0; t < q[r]; t++)
                    det_push(&g, st[r].node[t], st[r].buf[t], N);
            ASSERT_EQ_INT(g.depth, 1);
            ASSERT_TRUE(memcmp(g.buf[0], root, sizeof root) == 0);
        }
    }
    /* the data is such that the order shows */
    ASSERT_TRUE(differs > MAXM / 2);
}

static void test_pieces(void)
{
    nnp_net *net = NULL;
    ASSERT_OK(nnp_net_create("mlp:784-300x2-10", (nnp_shape){1, 28, 28}, NNP_ACT_RELU, 4, &net));
    if (!net)
        return;
    det_pieces p;
    ASSERT_OK(det_pieces_init(&p, net));
    ASSERT_EQ_INT(p.lo[0], 0);
    ASSERT_EQ_INT(p.lo[p.n], net->n_params);
    for (int k = 0; k < p.n; k++) {
        const nnp_tensor *t = &net->tensors[p.tensor[k]];
        ASSERT_TRUE(p.lo[k] < p.lo[k + 1] && p.lo[k + 1] - p.lo[k] <= DET_PIECE);
        ASSERT_TRUE(p.lo[k] >= t->off && p.lo[k + 1] <= t->off + t->n);
        ASSERT_TRUE(k >= p.first[p.tensor[k]] && k < p.first[p.tensor[k] + 1]);
    }
    for (int P = 1; P <= 9; P++) {
        size_t off[10];
        det_pieces_shares(&p, P, off);
        ASSERT_EQ_INT(off[0], 0);
        ASSERT_EQ_INT(off[P], net->n_params);
        int covered = 0;
        for (int r = 0; r < P; r++) {
            int p0, p1;
            ASSERT_TRUE(off[r] <= off[r + 1]);
            det_pieces_range(&p, off[r], off[r + 1], &p0, &p1);
            ASSERT_TRUE(p1 == p0 || (p.lo[p0] == off[r] && p.lo[p1] == off[r + 1]));
            covered += p1 - p0;
        }
        ASSERT_EQ_INT(covered, p.n);
    }
    /* per-tensor sums of pieces */
    double *part = calloc((size_t)p.n * 2, sizeof(double));
    double *out = calloc(2 * (size_t)net->n_tensors, sizeof(double));
    for (int k = 0; k < p.n; k++) {
        part[2 * k] = 1.0;
        part[2 * k + 1] = (double)(p.lo[k + 1] - p.lo[k]);
    }
    det_pieces_fold(&p, net->n_tensors, part, 2, out);
    for (int j = 0; j < net->n_tensors; j++) {
        ASSERT_EQ_INT(out[2 * j], (net->tensors[j].n + DET_PIECE - 1) / DET_PIECE);
        ASSERT_EQ_INT(out[2 * j + 1], net->tensors[j].n);
    }
    free(part);
    free(out);
    det_pieces_free(&p);
    nnp_net_free(net);
}

int main(void)
{
    test_tree();
    test_pieces();
    TEST_MAIN_END();
}
