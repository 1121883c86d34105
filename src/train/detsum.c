/* detsum.c - the deterministic mode's tree over micro-shards and pieces of the parameters
 * (see detsum.h). */
#include "detsum.h"
#include <stdlib.h>
#include <string.h>
#include "nnprec/alloc.h"
#include "nnprec/data.h"

void det_stack_reset(det_stack *s, int M)
{
    s->M = M;
    s->depth = 0;
}

static void add_into(float *restrict a, const float *restrict b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        a[i] += b[i];
}

void det_push(det_stack *s, det_node nd, float *buf, size_t n)
{
    det_push_out(s, nd, buf, n, NULL);
}

/* out may be a (a merge into a stack position's scratch that already holds the left) */
static void add_to(float *out, const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

void det_push_out(det_stack *s, det_node nd, float *buf, size_t n, float *scratch)
{
    s->node[s->depth] = nd;
    s->buf[s->depth] = buf;
    s->depth++;
    for (;;) {
        det_node *t = &s->node[s->depth - 1];
        if (t->index & 1) { /* a right child: its left sibling must be right below it */
            if (s->depth < 2)
                break;
            det_node *l = &s->node[s->depth - 2];
            if (l->level != t->level || l->index != t->index - 1)
                break;
            float *left = s->buf[s->depth - 2];
            if (buf && scratch) {
                float *o = scratch + (size_t)(s->depth - 2) * n;
                add_to(o, left, s->buf[s->depth - 1], n);
                s->buf[s->depth - 2] = o;
            } else if (buf)
                add_into(left, s->buf[s->depth - 1], n);
            l->level++;
            l->index >>= 1;
            s->depth--;
        } else {
            /* a left child whose right sibling is empty is its parent already (unless it
             * is the root: index 0 with nothing to its right) */
            if (((long)(t->index + 1) << t->level) < (long)s->M || t->index == 0)
                break;
            t->level++;
            t->index >>= 1;
        }
    }
}

int det_blocks(int M, int a, int b, det_node *out)
{
    det_stack s;
    det_stack_reset(&s, M);
    for (int i = a; i < b; i++)
        det_push(&s, (det_node){0, i}, NULL, 0);
    memcpy(out, s.node, (size_t)s.depth * sizeof(det_node));
    return s.depth;
}

int det_max_depth(int M, int a, int b)
{
    det_stack s;
    int most = 0;
    det_stack_reset(&s, M);
    for (int i = a; i < b; i++) {
        /* the leaf is pushed on top of the stack before any merge */
        most = s.depth + 1 > most ? s.depth + 1 : most;
        det_push(&s, (det_node){0, i}, NULL, 0);
    }
    return most;
}

nnp_status det_pieces_init(det_pieces *p, const nnp_net *net)
{
    memset(p, 0, sizeof *p);
    int n = 0;
    for (int j = 0; j < net->n_tensors; j++)
        n += (int)((net->tensors[j].n + DET_PIECE - 1) / DET_PIECE);
    p->lo = nnp_malloc(((size_t)n + 1) * sizeof(size_t));
    p->tensor = nnp_malloc(((size_t)n + 1) * sizeof(int));
    p->first = nnp_malloc(((size_t)net->n_tensors + 1) * sizeof(int));
    if (!p->lo || !p->tensor || !p->first) {
        det_pieces_free(p);
        return NNP_ERR_NOMEM;
    }
    int k = 0;
    for (int j = 0; j < net->n_tensors; j++) {
        const nnp_tensor *t = &net->tensors[j];
        p->first[j] = k;
        for (size_t o = 0; o < t->n; o += DET_PIECE) {
            p->lo[k] = t->off + o;
            p->tensor[k] = j;
            k++;
        }
    }
    p->first[net->n_tensors] = k;
    p->lo[k] = net->n_params;
    p->n = n;
    return NNP_OK;
}

void det_pieces_free(det_pieces *p)
{
    free(p->lo);
    free(p->tensor);
    free(p->first);
    memset(p, 0, sizeof *p);
}

void det_pieces_shares(const det_pieces *p, int size, size_t *off)
{
    const size_t n = p->lo[p->n];
    int k = 0;
    for (int r = 0; r <= size; r++) {
        size_t target, unused;
        if (r < size)
            nnp_split(n, size, r, &target, &unused);
        else
            target = n;
        while (k < p->n && p->lo[k] < target)
            k++;
        off[r] = p->lo[k];
    }
    off[0] = 0;
}

void det_pieces_range(const det_pieces *p, size_t lo, size_t hi, int *p0, int *p1)
{
    int a = 0;
    while (a < p->n && p->lo[a] < lo)
        a++;
    int b = a;
    while (b < p->n && p->lo[b] < hi)
        b++;
    *p0 = a;
    *p1 = b;
}

void det_pieces_fold(const det_pieces *p, int n_tensors, const double *part, int width,
                     double *out)
{
    for (int j = 0; j < n_tensors; j++)
        for (int w = 0; w < width; w++) {
            double s = 0.0;
            for (int k = p->first[j]; k < p->first[j + 1]; k++)
                s += part[(size_t)k * (size_t)width + (size_t)w];
            out[(size_t)j * (size_t)width + (size_t)w] = s;
        }
}
