/* net.c - build a sequential network from a model spec, run forward and backward.
 *
 * Building is two passes: parse the spec into layers with their shapes (nothing allocated
 * but the layer list), then size the flat parameter buffer, the tensor views and the
 * activation buffers for max_batch and allocate each once. Forward and backward only walk
 * the layer list and call the kernels of layers.h.
 */
#include "nnprec/net.h"
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "nnprec/alloc.h"
#include "nnprec/rng.h"

#define NNP_MAX_LAYERS 1024

/* The seed's network: the PyTorch CIFAR tutorial net on 1-channel input, conv1 padded by 2
 * so 28x28 behaves like the 32x32 it expects (flatten 16*6*6 = 576). */
static const char *LENET_SPEC =
    "conv:6:3:1:2/relu/maxpool:2/conv:16:3/relu/maxpool:2/flatten/"
    "dense:120/relu/dense:84/relu/dense:10";

nnp_status nnp_act_parse(const char *name, nnp_act *out)
{
    static const struct { const char *name; nnp_act a; } map[] = {
        {"relu", NNP_ACT_RELU},       {"leaky-relu", NNP_ACT_LEAKY_RELU},
        {"tanh", NNP_ACT_TANH},       {"sigmoid", NNP_ACT_SIGMOID},
        {"identity", NNP_ACT_IDENTITY}, {"linear", NNP_ACT_IDENTITY},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(name, map[i].name) == 0) {
            *out = map[i].a;
            return NNP_OK;
        }
    return nnp_error(NNP_ERR_ARG,
                     "unknown activation '%s' (expected relu, leaky-relu, tanh, sigmoid, identity)",
                     name);
}

const char *nnp_act_name(nnp_act a)
{
    switch (a) {
    case NNP_ACT_RELU: return "relu";
    case NNP_ACT_LEAKY_RELU: return "leaky-relu";
    case NNP_ACT_TANH: return "tanh";
    case NNP_ACT_SIGMOID: return "sigmoid";
    case NNP_ACT_IDENTITY: return "identity";
    }
    return "?";
}

/* ---- spec parsing ---------------------------------------------------------------------- */

/* Parse a positive int; the whole token must be consumed. */
static int parse_pos_int(const char *s, int *v)
{
    char *end;
    errno = 0;
    for (const char *c = s; *c; c++) /* digits only: no blanks, signs or hex */
        if (!isdigit((unsigned char)*c))
            return -1;
    long x = strtol(s, &end, 10);
    if (errno || end == s || *end || x <= 0 || x > 1 << 24)
        return -1;
    *v = (int)x;
    return 0;
}

typedef struct {
    nnp_layer *layers;
    int n;
    nnp_shape cur;
    const char *spec;
    int item, sub;    /* the current spec item (top level) and item inside a block */
    nnp_res_part res; /* the part of a block being built */
} builder;

static nnp_status push(builder *b, nnp_layer L)
{
    if (b->n >= NNP_MAX_LAYERS)
        return nnp_error(NNP_ERR_ARG, "model spec '%s' has more than %d layers", b->spec,
                         NNP_MAX_LAYERS);
    L.in = b->cur;
    L.tensor = -1;
    L.next_act = NNP_ACT_IDENTITY;
    L.src = b->n;
    L.res = b->res;
    L.fork = L.add = L.branch_end = -1;
    L.item = b->item;
    L.sub = b->sub;
    b->layers[b->n++] = L;
    return NNP_OK;
}

static nnp_status add_dense(builder *b, int out)
{
    nnp_layer L = {.kind = NNP_L_DENSE};
    NNP_CALL(push(b, L));
    /* dense consumes the flattened input (same memory layout) */
    b->cur = (nnp_shape){out, 1, 1};
    b->layers[b->n - 1].out = b->cur;
    return NNP_OK;
}

static nnp_status add_act(builder *b, nnp_act a, float alpha)
{
    nnp_layer L = {.kind = NNP_L_ACT, .act = a, .alpha = alpha};
    NNP_CALL(push(b, L));
    b->layers[b->n - 1].out = b->cur;
    return NNP_OK;
}

/* One item of a seq spec: "conv:6:3:1:2", "relu", ... (item is modified). */
static nnp_status parse_item(builder *b, char *item)
{
    char *args[6] = {0};
    int na = 0;
    char *save = NULL;
    /* strtok_r would skip empty fields: "conv:8:3::1" is a typo, not conv:8:3:1 */
    const size_t len = strlen(item);
    if (item[0] == ':' || (len > 0 && item[len - 1] == ':') || strstr(item, "::"))
        return nnp_error(NNP_ERR_ARG, "empty field in item '%s' of model spec '%s'", item,
                         b->spec);
    for (char *t = strtok_r(item, ":", &save); t && na < 6; t = strtok_r(NULL, ":", &save))
        args[na++] = t;
    if (na == 0)
        return nnp_error(NNP_ERR_ARG, "empty item in model spec '%s'", b->spec);
    const char *kind = args[0];
    int v[5] = {0};
    for (int i = 1; i < na; i++)
        if (strcmp(kind, "leaky-relu") != 0 && strcmp(kind, "dropout") != 0 &&
            parse_pos_int(args[i], &v[i - 1]) != 0 &&
            !(i >= 3 && strcmp(args[i], "0") == 0))
            return nnp_error(NNP_ERR_ARG, "bad number '%s' in item '%s' of model spec '%s'",
                             args[i], kind, b->spec);

    if (strcmp(kind, "dense") == 0 || strcmp(kind, "linear") == 0) {
        if (na != 2)
            return nnp_error(NNP_ERR_ARG, "dense takes one argument (dense:OUT) in '%s'", b->spec);
        return add_dense(b, v[0]);
    }
    if (strcmp(kind, "conv") == 0) {
        if (na < 3 || na > 5)
            return nnp_error(NNP_ERR_ARG, "conv is conv:COUT:K[:STRIDE[:PAD]] in '%s'", b->spec);
        int s = na >= 4 ? v[2] : 1, p = na >= 5 ? v[3] : 0;
        nnp_layer L = {.kind = NNP_L_CONV2D, .k = v[1], .s = s, .p = p};
        if (s <= 0)
            return nnp_error(NNP_ERR_ARG, "conv stride must be >= 1 in '%s'", b->spec);
        if (nnp_conv_geom_init(&L.conv, b->cur.c, b->cur.h, b->cur.w, v[0], v[1], s, p) != 0)
            return nnp_error(NNP_ERR_ARG,
                             "conv:%d:%d:%d:%d does not fit input %dx%dx%d in model spec '%s'",
                             v[0], v[1], s, p, b->cur.c, b->cur.h, b->cur.w, b->spec);
        NNP_CALL(push(b, L));
        b->cur = (nnp_shape){v[0], L.conv.OH, L.conv.OW};
        b->layers[b->n - 1].out = b->cur;
        return NNP_OK;
    }
    if (strcmp(kind, "maxpool") == 0 || strcmp(kind, "avgpool") == 0) {
        if (na < 2 || na > 3)
            return nnp_error(NNP_ERR_ARG, "%s is %s:K[:STRIDE] in '%s'", kind, kind, b->spec);
        int s = na == 3 ? v[1] : v[0];
        nnp_layer L = {.kind = kind[0] == 'm' ? NNP_L_MAXPOOL : NNP_L_AVGPOOL, .k = v[0], .s = s};
        if (nnp_pool_geom_init(&L.pool, b->cur.c, b->cur.h, b->cur.w, v[0], s) != 0)
            return nnp_error(NNP_ERR_ARG, "%s:%d:%d does not fit input %dx%dx%d in '%s'", kind,
                             v[0], s, b->cur.c, b->cur.h, b->cur.w, b->spec);
        NNP_CALL(push(b, L));
        b->cur = (nnp_shape){b->cur.c, L.pool.OH, L.pool.OW};
        b->layers[b->n - 1].out = b->cur;
        return NNP_OK;
    }
    if (strcmp(kind, "bn") == 0 || strcmp(kind, "gap") == 0) {
        if (na != 1)
            return nnp_error(NNP_ERR_ARG, "item '%s' takes no arguments in model spec '%s'", kind,
                             b->spec);
        const int gap = kind[0] == 'g';
        nnp_layer L = {.kind = gap ? NNP_L_GAP : NNP_L_BN};
        NNP_CALL(push(b, L));
        if (gap)
            b->cur = (nnp_shape){b->cur.c, 1, 1};
        b->layers[b->n - 1].out = b->cur;
        return NNP_OK;
    }
    if (strcmp(kind, "dropout") == 0) {
        char *end = NULL;
        float p = na == 2 ? strtof(args[1], &end) : -1.0f;
        if (na != 2 || *end || end == args[1] || !(p >= 0.0f && p < 1.0f))
            return nnp_error(NNP_ERR_ARG,
                             "dropout is dropout:P with 0 <= P < 1 (got '%s') in model spec '%s'",
                             na == 2 ? args[1] : "", b->spec);
        nnp_layer L = {.kind = NNP_L_DROPOUT, .drop = p};
        NNP_CALL(push(b, L));
        b->layers[b->n - 1].out = b->cur;
        return NNP_OK;
    }
    if (strcmp(kind, "flatten") == 0) {
        nnp_layer L = {.kind = NNP_L_FLATTEN};
        NNP_CALL(push(b, L));
        b->cur = (nnp_shape){(int)nnp_shape_size(b->cur), 1, 1};
        b->layers[b->n - 1].out = b->cur;
        return NNP_OK;
    }
    float alpha = 0.01f;
    if (strcmp(kind, "leaky-relu") == 0 && na == 2) {
        char *end;
        alpha = strtof(args[1], &end);
        if (*end || end == args[1] || !(alpha >= 0))
            return nnp_error(NNP_ERR_ARG, "bad leaky-relu slope '%s' in '%s'", args[1], b->spec);
    } else if (na != 1) {
        return nnp_error(NNP_ERR_ARG, "item '%s' takes no arguments in model spec '%s'", kind,
                         b->spec);
    }
    nnp_act a = NNP_ACT_IDENTITY;
    if (nnp_act_parse(kind, &a) != NNP_OK) {
        nnp_error_clear();
        return nnp_error(NNP_ERR_ARG,
                         "unknown item '%s' in model spec '%s' (expected dense, conv, maxpool, "
                         "avgpool, flatten, bn, gap, dropout, relu, leaky-relu, tanh, sigmoid, "
                         "identity)",
                         kind, b->spec);
    }
    return add_act(b, a, alpha);
}

/* "1x28x28" or "784" → shape; returns -1 if the token is not a shape. */
static int parse_shape(const char *tok, nnp_shape *s)
{
    int d[3], n = 0;
    char buf[64];
    const size_t len = strlen(tok);
    /* strtok_r would skip empty parts: "1xx28" is not a shape */
    if (len >= sizeof buf || !isdigit((unsigned char)tok[0]) || tok[len - 1] == 'x' ||
        strstr(tok, "xx"))
        return -1;
    strcpy(buf, tok);
    char *save = NULL;
    for (char *t = strtok_r(buf, "x", &save); t; t = strtok_r(NULL, "x", &save)) {
        if (n == 3 || parse_pos_int(t, &d[n]) != 0)
            return -1;
        n++;
    }
    if (n == 1)
        *s = (nnp_shape){d[0], 1, 1};
    else if (n == 3)
        *s = (nnp_shape){d[0], d[1], d[2]};
    else
        return -1;
    return 0;
}

/* Split body at the '/' and ',' outside brackets into items (body is modified). Empty items,
 * unbalanced brackets and (inside a group) nested groups are errors naming the item. */
static nnp_status split_items(builder *b, char *body, const char *group, char **items,
                              int cap, int *n_items)
{
    int n = 0, depth = 0;
    char *start = body;
    for (char *c = body;; c++) {
        if (*c == '[') {
            if (group)
                return nnp_error(NNP_ERR_ARG,
                                 "nested group in item '%s' of model spec '%s' (residual "
                                 "blocks do not nest)",
                                 group, b->spec);
            if (depth > 0) { /* name the whole item: up to its closing bracket */
                const char *e = c;
                for (int d = depth; *e && !(d == 0 && (*e == '/' || *e == ',')); e++)
                    d += *e == '[' ? 1 : *e == ']' ? -1 : 0;
                return nnp_error(NNP_ERR_ARG,
                                 "nested group in item '%.*s' of model spec '%s' (residual "
                                 "blocks do not nest)",
                                 (int)(e - start), start, b->spec);
            }
            depth++;
        } else if (*c == ']') {
            if (depth == 0)
                return nnp_error(NNP_ERR_ARG, "unmatched ']' in item '%.*s' of model spec '%s'",
                                 (int)strcspn(start, "/,"), start, b->spec);
            depth--;
        } else if (*c == '\0' || ((*c == '/' || *c == ',') && depth == 0)) {
            if (depth > 0)
                return nnp_error(NNP_ERR_ARG, "unclosed '[' in item '%s' of model spec '%s'",
                                 start, b->spec);
            if (c == start) {
                if (group)
                    return nnp_error(NNP_ERR_ARG, "empty item in group '%s' of model spec '%s'",
                                     group, b->spec);
                return nnp_error(NNP_ERR_ARG, "empty item in model spec '%s'", b->spec);
            }
            if (n >= cap)
                return nnp_error(NNP_ERR_ARG, "model spec '%s' has more than %d items", b->spec,
                                 cap);
            items[n++] = start;
            const int end = *c == '\0';
            *c = '\0';
            if (end)
                break;
            start = c + 1;
        }
    }
    *n_items = n;
    return NNP_OK;
}

/* The layers of a residual block "res[ITEMS]" (item is modified): a fork, the branch, the
 * shortcut (identity when the branch keeps the shape; else a 1x1 conv with the branch's
 * stride, or a dense layer, followed by bn when the branch has one) and the add. */
static nnp_status parse_group(builder *b, char *item)
{
    char text[160];
    snprintf(text, sizeof text, "%s", item);
    size_t len = strlen(item);
    if (strncmp(item, "res[", 4) != 0 || len < 5 || item[len - 1] != ']')
        return nnp_error(NNP_ERR_ARG,
                         "bad group '%s' in model spec '%s' (expected res[ITEM/ITEM/...])", text,
                         b->spec);
    if (len == 5)
        return nnp_error(NNP_ERR_ARG, "empty group 'res[]' in model spec '%s'", b->spec);
    if (b->res != NNP_RES_NONE)
        return nnp_error(NNP_ERR_ARG, "nested group in item '%s' of model spec '%s' (residual "
                                      "blocks do not nest)", text, b->spec);
    item[len - 1] = '\0';
    char *inner = item + 4;
    if (strchr("/,", inner[0]) || strchr("/,", inner[len - 6]))
        return nnp_error(NNP_ERR_ARG, "empty item in group '%s' of model spec '%s'", text,
                         b->spec);
    char *items[NNP_MAX_LAYERS];
    int n_items = 0;
    NNP_CALL(split_items(b, inner, text, items, NNP_MAX_LAYERS, &n_items));
    const nnp_shape in = b->cur;
    const int f = b->n;
    NNP_CALL(push(b, (nnp_layer){.kind = NNP_L_RES_FORK}));
    b->layers[f].out = in;
    b->res = NNP_RES_BRANCH;
    for (int k = 0; k < n_items; k++) {
        b->sub = k;
        nnp_status s = parse_item(b, items[k]);
        if (s != NNP_OK) {
            b->res = NNP_RES_NONE;
            return s;
        }
    }
    const int be = b->n; /* act[be]: the branch output */
    const nnp_shape out = b->cur;
    int has_conv = 0, has_dense = 0, has_bn = 0, stride = 1;
    for (int i = f + 1; i < be; i++) {
        const nnp_layer *L = &b->layers[i];
        has_conv |= L->kind == NNP_L_CONV2D;
        has_dense |= L->kind == NNP_L_DENSE;
        has_bn |= L->kind == NNP_L_BN;
        if (L->kind == NNP_L_CONV2D || L->kind == NNP_L_MAXPOOL || L->kind == NNP_L_AVGPOOL)
            stride *= L->s;
    }
    const int proj = !(in.c == out.c && in.h == out.h && in.w == out.w);
    b->res = NNP_RES_SHORTCUT;
    b->cur = in;
    b->sub = 0;
    if (proj && has_dense && out.h == 1 && out.w == 1) {
        NNP_CALL(add_dense(b, out.c));
    } else if (proj && has_conv && !has_dense && in.h * in.w > 1) {
        nnp_layer L = {.kind = NNP_L_CONV2D, .k = 1, .s = stride, .p = 0};
        if (nnp_conv_geom_init(&L.conv, in.c, in.h, in.w, out.c, 1, stride, 0) != 0 ||
            L.conv.OH != out.h || L.conv.OW != out.w) {
            b->res = NNP_RES_NONE;
            return nnp_error(NNP_ERR_ARG,
                             "the shortcut of '%s' cannot be built: its branch maps %dx%dx%d "
                             "to %dx%dx%d, a 1x1 conv with the branch's stride %d does not "
                             "(model spec '%s')",
                             text, in.c, in.h, in.w, out.c, out.h, out.w, stride, b->spec);
        }
        NNP_CALL(push(b, L));
        b->cur = (nnp_shape){out.c, out.h, out.w};
        b->layers[b->n - 1].out = b->cur;
    } else if (proj) {
        b->res = NNP_RES_NONE;
        return nnp_error(NNP_ERR_ARG,
                         "the shortcut of '%s' cannot be built: its branch maps %dx%dx%d to "
                         "%dx%dx%d (a projection needs a conv branch with a C x H x W output "
                         "or a dense branch; model spec '%s')",
                         text, in.c, in.h, in.w, out.c, out.h, out.w, b->spec);
    }
    if (proj && has_bn) {
        b->sub = 1;
        NNP_CALL(push(b, (nnp_layer){.kind = NNP_L_BN}));
        b->layers[b->n - 1].out = b->cur;
    }
    b->res = NNP_RES_NONE;
    b->sub = 0;
    b->cur = out;
    const int a = b->n;
    NNP_CALL(push(b, (nnp_layer){.kind = NNP_L_RES_ADD}));
    b->layers[a].out = out;
    if (proj)
        b->layers[be].src = f;
    for (int i = f; i <= a; i++) {
        b->layers[i].fork = f;
        b->layers[i].add = a;
    }
    b->layers[f].branch_end = b->layers[a].branch_end = be;
    b->layers[f].proj = b->layers[a].proj = proj;
    return NNP_OK;
}

static nnp_status parse_seq(builder *b, const char *body)
{
    char buf[4096];
    if (strlen(body) >= sizeof buf)
        return nnp_error(NNP_ERR_ARG, "model spec too long (%zu characters)", strlen(body));
    strcpy(buf, body);
    char *items[NNP_MAX_LAYERS];
    int n_items = 0;
    NNP_CALL(split_items(b, buf, NULL, items, NNP_MAX_LAYERS, &n_items));
    for (int k = 0; k < n_items; k++) {
        nnp_shape s;
        char *item = items[k];
        if (k == 0 && parse_shape(item, &s) == 0) {
            b->cur = s;
            continue;
        }
        if (strchr(item, '[') || strchr(item, ']'))
            NNP_CALL(parse_group(b, item));
        else
            NNP_CALL(parse_item(b, item));
        b->item++;
    }
    return NNP_OK;
}

/* "784-256x12-10": widths separated by '-', "WxN" repeats W N times. */
static nnp_status parse_widths(builder *b, const char *body, int *widths, int *n_widths)
{
    int nw = 0;
    char buf[512];
    size_t n = strlen(body);
    /* strtok_r would skip empty widths: "mlp:784--10" is a typo, not 784-10 */
    if (n >= sizeof buf || !n || body[0] == '-' || body[n - 1] == '-' || strstr(body, "--"))
        return nnp_error(NNP_ERR_ARG, "bad mlp spec '%s' (expected e.g. mlp:784-256x12-10)",
                         b->spec);
    strcpy(buf, body);
    char *save = NULL;
    for (char *t = strtok_r(buf, "-", &save); t; t = strtok_r(NULL, "-", &save)) {
        char *x = strchr(t, 'x');
        int w, rep = 1;
        if (x)
            *x = '\0';
        if (parse_pos_int(t, &w) != 0 || (x && parse_pos_int(x + 1, &rep) != 0))
            return nnp_error(NNP_ERR_ARG,
                             "bad width in mlp spec '%s' (expected e.g. mlp:784-256x12-10)",
                             b->spec);
        for (int i = 0; i < rep; i++) {
            if (nw >= NNP_MAX_LAYERS / 2)
                return nnp_error(NNP_ERR_ARG, "mlp spec '%s' is too deep", b->spec);
            widths[nw++] = w;
        }
    }
    if (nw < 2)
        return nnp_error(NNP_ERR_ARG, "mlp spec '%s' needs an input and an output width",
                         b->spec);
    *n_widths = nw;
    return NNP_OK;
}

static nnp_status parse_mlp(builder *b, const char *body, nnp_act act)
{
    int widths[NNP_MAX_LAYERS], nw = 0;
    NNP_CALL(parse_widths(b, body, widths, &nw));
    b->cur = (nnp_shape){widths[0], 1, 1};
    for (int i = 1; i < nw; i++) {
        NNP_CALL(add_dense(b, widths[i]));
        if (i + 1 < nw)
            NNP_CALL(add_act(b, act, act == NNP_ACT_LEAKY_RELU ? 0.01f : 0.0f));
    }
    return NNP_OK;
}

/* Append to a generated spec; -1 when it does not fit. */
static int spec_append(char *buf, size_t cap, size_t *len, const char *fmt, int a, int c)
{
    int w = snprintf(buf + *len, cap - *len, fmt, a, c);
    if (w < 0 || (size_t)w >= cap - *len)
        return -1;
    *len += (size_t)w;
    return 0;
}

/* resmlp:W0-W1-...-Wn as a seq spec: dense W0->W1 (+bn) + relu, then per further hidden width
 * a block res[dense:Wi(/bn)] + relu (identity shortcut when Wi = Wi-1), then dense Wn. */
static nnp_status parse_resmlp(builder *b, const char *body, int bn)
{
    int widths[NNP_MAX_LAYERS], nw = 0;
    NNP_CALL(parse_widths(b, body, widths, &nw));
    char buf[4096];
    size_t len = 0;
    int bad = spec_append(buf, sizeof buf, &len, "%d", widths[0], 0);
    for (int i = 1; i < nw && !bad; i++) {
        if (i + 1 == nw)
            bad = spec_append(buf, sizeof buf, &len, "/dense:%d", widths[i], 0);
        else if (i == 1)
            bad = spec_append(buf, sizeof buf, &len, bn ? "/dense:%d/bn/relu" : "/dense:%d/relu",
                              widths[i], 0);
        else
            bad = spec_append(buf, sizeof buf, &len,
                              bn ? "/res[dense:%d/bn]/relu" : "/res[dense:%d]/relu", widths[i], 0);
    }
    if (bad)
        return nnp_error(NNP_ERR_ARG, "resmlp spec '%s' is too deep", b->spec);
    return parse_seq(b, buf);
}

/* He et al. (2016)'s CIFAR ResNet with n basic blocks per stage (6n + 2 layers): conv 16 +
 * bn + relu, stages of 16/32/64 channels (stride 2 at the first block of stages 2 and 3),
 * gap, dense 10. */
static nnp_status parse_resnet(builder *b, int n)
{
    char buf[4096];
    size_t len = 0;
    len += (size_t)snprintf(buf, sizeof buf, "conv:16:3:1:1/bn/relu");
    for (int stage = 0; stage < 3; stage++) {
        const int c = 16 << stage;
        for (int k = 0; k < n; k++)
            len += (size_t)snprintf(buf + len, sizeof buf - len,
                                    "/res[conv:%d:3:%d:1/bn/relu/conv:%d:3:1:1/bn]/relu", c,
                                    stage > 0 && k == 0 ? 2 : 1, c);
    }
    snprintf(buf + len, sizeof buf - len, "/gap/dense:10");
    return parse_seq(b, buf);
}

/* ---- construction ---------------------------------------------------------------------- */

static void name_tensor(nnp_tensor *t, const char *prefix, int idx, int is_bias)
{
    snprintf(t->name, sizeof t->name, "%s%d.%s", prefix, idx, is_bias ? "bias" : "weight");
}

/* With residual blocks every tensor is named by its module's path in the PyTorch layout of
 * docs/models.md: layers.I (the I-th spec item), layers.I.branch.J, layers.I.shortcut.J. */
static void name_tensor_path(nnp_tensor *t, const nnp_layer *L, int is_bias)
{
    const char *leaf = is_bias ? "bias" : "weight";
    if (L->res == NNP_RES_NONE)
        snprintf(t->name, sizeof t->name, "layers.%d.%s", L->item, leaf);
    else
        snprintf(t->name, sizeof t->name, "layers.%d.%s.%d.%s", L->item,
                 L->res == NNP_RES_BRANCH ? "branch" : "shortcut", L->sub, leaf);
}

/* Assign tensor views: weight then bias per trainable layer, in forward order. */
static nnp_status plan_tensors(nnp_net *net)
{
    int nt = 0;
    for (int i = 0; i < net->n_layers; i++)
        if (net->layers[i].kind == NNP_L_DENSE || net->layers[i].kind == NNP_L_CONV2D ||
            net->layers[i].kind == NNP_L_BN)
            nt += 2;
    net->n_tensors = nt;
    net->n_trainable = nt / 2;
    if (nt == 0)
        return nnp_error(NNP_ERR_ARG, "model spec '%s' has no trainable layer", net->spec);
    net->tensors = nnp_calloc((size_t)nt, sizeof(nnp_tensor));
    if (!net->tensors)
        return NNP_ERR_NOMEM;
    size_t off = 0;
    int j = 0, n_conv = 0, n_fc = 0;
    const int paths = nnp_net_has(net, NNP_L_RES_ADD);
    net->n_bn = 0;
    net->n_running = 0;
    for (int i = 0; i < net->n_layers; i++) {
        nnp_layer *L = &net->layers[i];
        if (L->kind != NNP_L_DENSE && L->kind != NNP_L_CONV2D && L->kind != NNP_L_BN)
            continue;
        nnp_tensor *w = &net->tensors[j], *b = &net->tensors[j + 1];
        L->tensor = j;
        w->layer = b->layer = i;
        b->is_bias = 1;
        b->ndim = 1;
        if (L->kind == NNP_L_BN) {
            /* scale (weight) and shift (bias) per channel; PyTorch's BatchNorm1d/2d */
            const int C = L->in.c;
            w->ndim = 1;
            w->shape[0] = b->shape[0] = C;
            w->n = b->n = (size_t)C;
            w->fan_in = w->fan_out = 1;
            w->norm = b->norm = 1;
            L->bn = net->n_bn++;
            L->roff = net->n_running;
            net->n_running += 2 * (size_t)C;
            name_tensor(w, "bn", L->bn + 1, 0);
            name_tensor(b, "bn", L->bn + 1, 1);
        } else if (L->kind == NNP_L_DENSE) {
            int in = (int)nnp_shape_size(L->in), out = L->out.c;
            w->ndim = 2;
            w->shape[0] = out;
            w->shape[1] = in;
            w->n = (size_t)out * in;
            w->fan_in = in;
            w->fan_out = out;
            b->shape[0] = out;
            b->n = (size_t)out;
            name_tensor(w, "fc", ++n_fc, 0);
            name_tensor(b, "fc", n_fc, 1);
        } else {
            const nnp_conv_geom *g = &L->conv;
            w->ndim = 4;
            w->shape[0] = g->K;
            w->shape[1] = g->C;
            w->shape[2] = w->shape[3] = g->k;
            w->n = (size_t)g->K * g->C * g->k * g->k;
            w->fan_in = g->C * g->k * g->k;   /* PyTorch: C_in * kh * kw */
            w->fan_out = g->K * g->k * g->k;  /* PyTorch: C_out * kh * kw */
            b->shape[0] = g->K;
            b->n = (size_t)g->K;
            name_tensor(w, "conv", ++n_conv, 0);
            name_tensor(b, "conv", n_conv, 1);
        }
        if (paths) {
            name_tensor_path(w, L, 0);
            name_tensor_path(b, L, 1);
        }
        b->fan_in = w->fan_in;
        b->fan_out = w->fan_out;
        w->off = off;
        off += w->n;
        b->off = off;
        off += b->n;
        /* activation that follows this layer (skipping shape-only layers, BatchNorm,
         * dropout, a block's add and, from outside a shortcut, the shortcut's layers), for
         * init gains */
        for (int k = i + 1; k < net->n_layers && L->kind != NNP_L_BN; k++) {
            nnp_layer_kind kk = net->layers[k].kind;
            if (net->layers[k].res == NNP_RES_SHORTCUT && L->res != NNP_RES_SHORTCUT)
                continue;
            if (kk == NNP_L_ACT) {
                L->next_act = net->layers[k].act;
                L->alpha = net->layers[k].alpha;
                break;
            }
            if (kk == NNP_L_DENSE || kk == NNP_L_CONV2D)
                break;
        }
        j += 2;
    }
    net->n_params = off;
    return NNP_OK;
}

/* acc += a * b * c bytes; 0, or -1 on overflow */
static int add_bytes(size_t *acc, size_t a, size_t b, size_t c)
{
    size_t ab, abc;
    if (__builtin_mul_overflow(a, b, &ab) || __builtin_mul_overflow(ab, c, &abc) ||
        __builtin_add_overflow(*acc, abc, acc))
        return -1;
    return 0;
}

/* The buffers alloc_buffers is about to take must fit in this machine's memory: calloc of
 * more than that succeeds (Linux overcommits) and the kernel kills the process once the
 * pages are touched, with no message. */
static nnp_status check_memory(const nnp_net *net)
{
    size_t B = (size_t)net->max_batch, total = 0;
    int n = net->n_layers, bad = add_bytes(&total, 2, net->n_params, sizeof(float));
    for (int i = 0; i <= n && !bad; i++) {
        nnp_shape s = i > 0 ? net->layers[i - 1].out : net->layers[0].in; /* what act[i] holds */
        bad = add_bytes(&total, 2 * B, nnp_shape_size(s), sizeof(float));
    }
    for (int i = 0; i < n && !bad; i++) {
        const nnp_layer *L = &net->layers[i];
        if (L->kind == NNP_L_MAXPOOL)
            bad = add_bytes(&total, B, nnp_shape_size(L->out), sizeof(int));
        if (L->kind == NNP_L_CONV2D)
            bad = add_bytes(&total, 1, nnp_conv2d_workspace(&L->conv, net->max_batch),
                            sizeof(float));
    }
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    double have = pages > 0 && page > 0 ? (double)pages * (double)page : 0;
    if (bad)
        return nnp_error(NNP_ERR_NOMEM, "model %s at batch %d needs more memory than can be "
                                        "addressed", net->spec, net->max_batch);
    if (have > 0 && (double)total > have)
        return nnp_error(NNP_ERR_NOMEM,
                         "model %s at batch %d needs %.1f GB for parameters, activations and "
                         "workspace; this machine has %.1f GB",
                         net->spec, net->max_batch, (double)total / 1e9, have / 1e9);
    return NNP_OK;
}

static nnp_status alloc_buffers(nnp_net *net)
{
    size_t B = (size_t)net->max_batch;
    int n = net->n_layers;
    NNP_CALL(check_memory(net));
    net->params = nnp_calloc(net->n_params, sizeof(float));
    net->grads = nnp_calloc(net->n_params, sizeof(float));
    net->act = nnp_calloc((size_t)n + 1, sizeof(float *));
    net->dact = nnp_calloc((size_t)n + 1, sizeof(float *));
    net->argmax = nnp_calloc((size_t)n, sizeof(int *));
    if (!net->params || !net->grads || !net->act || !net->dact || !net->argmax)
        return NNP_ERR_NOMEM;
    net->ws = nnp_calloc((size_t)n, sizeof(float *));
    if (!net->ws)
        return NNP_ERR_NOMEM;
    if (net->n_bn > 0) {
        int maxc = 0;
        for (int i = 0; i < n; i++)
            if (net->layers[i].kind == NNP_L_BN && net->layers[i].in.c > maxc)
                maxc = net->layers[i].in.c;
        net->running = nnp_calloc(net->n_running, sizeof(float));
        net->tracked = nnp_calloc((size_t)net->n_bn, sizeof(long long));
        /* 2C+1 statistics per layer: n_running + 1 per layer */
        net->bn_stat = nnp_calloc(net->n_running + (size_t)net->n_bn, sizeof(double));
        net->bn_sums = nnp_calloc(2 * (size_t)maxc + 1, sizeof(double));
        if (!net->running || !net->tracked || !net->bn_stat || !net->bn_sums)
            return NNP_ERR_NOMEM;
        for (int i = 0; i < n; i++) { /* PyTorch's reset: mean 0, variance 1 */
            const nnp_layer *L = &net->layers[i];
            if (L->kind == NNP_L_BN)
                for (int c = 0; c < L->in.c; c++)
                    net->running[L->roff + (size_t)L->in.c + (size_t)c] = 1.0f;
        }
    }
    net->dskip = nnp_calloc((size_t)n, sizeof(float *));
    net->owned = nnp_calloc((size_t)n + 1, 1);
    int *ra = nnp_calloc(2 * ((size_t)n + 1), sizeof(int)), *rd = ra ? ra + n + 1 : NULL;
    if (!net->dskip || !net->owned || !ra) {
        free(ra);
        return NNP_ERR_NOMEM;
    }
    /* Aliases: flatten moves no data and a block's fork is the identity (output = input);
     * the gradient of a block's add output is also that of its input and, with a projection,
     * of the branch output (the add's backward moves nothing). ra/rd: the lowest index each
     * act/dact shares its buffer with. */
    for (int i = 0; i <= n; i++)
        ra[i] = rd[i] = i;
    for (int i = 1; i <= n; i++) {
        const nnp_layer_kind k = net->layers[i - 1].kind;
        if (k == NNP_L_FLATTEN || k == NNP_L_RES_FORK)
            ra[i] = rd[i] = ra[i - 1];
    }
    for (int i = n - 1; i >= 0; i--) { /* adds, last first: their classes join downwards */
        const nnp_layer *L = &net->layers[i];
        if (L->kind != NNP_L_RES_ADD)
            continue;
        const int members[3] = {rd[i], rd[i + 1], L->proj ? rd[L->branch_end] : rd[i]};
        int root = members[0];
        for (int m = 1; m < 3; m++)
            root = members[m] < root ? members[m] : root;
        for (int j = 0; j <= n; j++)
            for (int m = 0; m < 3; m++)
                if (rd[j] == members[m])
                    rd[j] = root;
    }
    for (int i = 0; i <= n; i++) {
        nnp_shape s = i > 0 ? net->layers[i - 1].out : net->layers[0].in; /* what act[i] holds */
        if (ra[i] == i) {
            net->act[i] = nnp_calloc(B * nnp_shape_size(s), sizeof(float));
            net->owned[i] |= 1;
        } else {
            net->act[i] = net->act[ra[i]];
        }
        if (rd[i] == i) {
            net->dact[i] = nnp_calloc(B * nnp_shape_size(s), sizeof(float));
            net->owned[i] |= 2;
        } else {
            net->dact[i] = net->dact[rd[i]];
        }
        if (!net->act[i] || !net->dact[i]) {
            free(ra);
            return NNP_ERR_NOMEM;
        }
    }
    free(ra);
    for (int i = 0; i < n; i++)
        if (net->layers[i].src != i) {
            net->dskip[i] = nnp_calloc(B * nnp_shape_size(net->layers[i].in), sizeof(float));
            if (!net->dskip[i])
                return NNP_ERR_NOMEM;
        }
    for (int i = 0; i < n; i++) {
        nnp_layer *L = &net->layers[i];
        if (L->kind == NNP_L_MAXPOOL) {
            net->argmax[i] = nnp_calloc(B * nnp_shape_size(L->out), sizeof(int));
            if (!net->argmax[i])
                return NNP_ERR_NOMEM;
        }
        if (L->kind == NNP_L_CONV2D) {
            net->ws[i] = nnp_calloc(nnp_conv2d_workspace(&L->conv, net->max_batch),
                                    sizeof(float));
            if (!net->ws[i])
                return NNP_ERR_NOMEM;
        }
    }
    return NNP_OK;
}

/* Mark each relu whose output only the max pooling right after it reads (LeNet's two):
 * that pooling then applies the relu itself (nnp_maxpool_relu_*), which saves relu's pass
 * over the full-size activation forward and backward. Then each convolution whose output
 * only such a relu reads (LeNet's two again): it pools its own output as it computes it. */
static void plan_fusion(nnp_net *net)
{
    net->fuse = 1;
    for (int i = 0; i + 1 < net->n_layers; i++) {
        nnp_layer *R = &net->layers[i], *P = &net->layers[i + 1];
        if (R->kind != NNP_L_ACT || R->act != NNP_ACT_RELU || P->kind != NNP_L_MAXPOOL ||
            P->src != i + 1 || R->res != NNP_RES_NONE || P->res != NNP_RES_NONE)
            continue;
        int other = 0; /* another layer reading act[i + 1] (outside residual blocks, src is
                        * the only way to read an activation) */
        for (int j = 0; j < net->n_layers; j++)
            other |= j != i + 1 && net->layers[j].src == i + 1;
        if (!other)
            R->fused = P->fused = 1;
    }
    /* a convolution whose output only such a relu reads pools its own output */
    for (int i = 0; i + 2 < net->n_layers; i++) {
        nnp_layer *C = &net->layers[i], *R = &net->layers[i + 1];
        if (C->kind != NNP_L_CONV2D || C->res != NNP_RES_NONE || R->kind != NNP_L_ACT ||
            !R->fused || R->src != i + 1)
            continue;
        int other = 0;
        for (int j = 0; j < net->n_layers; j++)
            other |= j != i + 1 && net->layers[j].src == i + 1;
        C->fused_conv = !other;
    }
}

nnp_status nnp_net_create(const char *spec, nnp_shape input, nnp_act act, int max_batch,
                          nnp_net **out)
{
    *out = NULL;
    if (max_batch <= 0)
        return nnp_error(NNP_ERR_ARG, "batch size must be positive (got %d)", max_batch);
    if (strlen(spec) >= sizeof(((nnp_net *)0)->spec))
        return nnp_error(NNP_ERR_ARG, "model spec too long");
    nnp_net *net = nnp_calloc(1, sizeof *net);
    if (!net)
        return NNP_ERR_NOMEM;
    strcpy(net->spec, spec);
    net->max_batch = max_batch;
    net->training = 1;
    nnp_layer *layers = nnp_calloc(NNP_MAX_LAYERS, sizeof(nnp_layer));
    if (!layers) {
        free(net);
        return NNP_ERR_NOMEM;
    }
    builder b = {.layers = layers, .n = 0, .cur = input, .spec = spec};
    nnp_status s;
    if (strcmp(spec, "lenet") == 0)
        s = parse_seq(&b, LENET_SPEC);
    else if (strncmp(spec, "mlp:", 4) == 0)
        s = parse_mlp(&b, spec + 4, act);
    else if (strncmp(spec, "seq:", 4) == 0)
        s = parse_seq(&b, spec + 4);
    else if (strcmp(spec, "resnet8") == 0 || strcmp(spec, "resnet20") == 0)
        s = parse_resnet(&b, spec[6] == '8' ? 1 : 3);
    else if (strncmp(spec, "resmlp:", 7) == 0)
        s = parse_resmlp(&b, spec + 7, 0);
    else if (strncmp(spec, "resmlp-bn:", 10) == 0)
        s = parse_resmlp(&b, spec + 10, 1);
    else
        s = nnp_error(NNP_ERR_ARG,
                      "unknown model '%s' (expected lenet, mlp:784-256x12-10, resnet8, resnet20, "
                      "resmlp:784-256x12-10, resmlp-bn:... or seq:...; see docs/models.md)",
                      spec);
    net->layers = layers;
    net->n_layers = b.n;
    if (s == NNP_OK && b.n == 0)
        s = nnp_error(NNP_ERR_ARG, "model spec '%s' has no layers", spec);
    if (s == NNP_OK) {
        net->input = layers[0].in;
        net->n_classes = (int)nnp_shape_size(layers[b.n - 1].out);
        s = plan_tensors(net);
    }
    if (s == NNP_OK)
        s = alloc_buffers(net);
    if (s == NNP_OK)
        plan_fusion(net);
    if (s == NNP_OK) { /* scale 1, shift 0 (every --init leaves them so) */
        for (int j = 0; j < net->n_tensors; j++)
            if (net->tensors[j].norm && !net->tensors[j].is_bias)
                for (size_t k = 0; k < net->tensors[j].n; k++)
                    net->params[net->tensors[j].off + k] = 1.0f;
        net->has_dropout = nnp_net_has(net, NNP_L_DROPOUT);
    }
    if (s != NNP_OK) {
        nnp_net_free(net);
        return s;
    }
    *out = net;
    return NNP_OK;
}

void nnp_net_free(nnp_net *net)
{
    if (!net)
        return;
    for (int i = 0; net->act && net->owned && i <= net->n_layers; i++) {
        if (net->owned[i] & 1) /* else aliased, or not allocated */
            free(net->act[i]);
        if (net->dact && (net->owned[i] & 2))
            free(net->dact[i]);
    }
    for (int i = 0; net->dskip && i < net->n_layers; i++)
        free(net->dskip[i]);
    free(net->dskip);
    free(net->owned);
    for (int i = 0; net->argmax && i < net->n_layers; i++)
        free(net->argmax[i]);
    for (int i = 0; net->ws && i < net->n_layers; i++)
        free(net->ws[i]);
    free(net->running);
    free(net->tracked);
    free(net->bn_stat);
    free(net->bn_sums);
    free(net->act);
    free(net->dact);
    free(net->argmax);
    free(net->ws);
    free(net->params);
    free(net->grads);
    free(net->tensors);
    free(net->layers);
    free(net);
}

/* ---- forward / backward ---------------------------------------------------------------- */

/* The key of dropout layer i's mask in this step (rng.h: NNP_STREAM_DROPOUT). */
static uint64_t dropout_key(const nnp_net *net, int i)
{
    nnp_rng r;
    const uint64_t step = (uint64_t)net->step & ((UINT64_C(1) << 40) - 1);
    nnp_rng_seed(&r, net->seed, NNP_STREAM_DROPOUT + ((uint64_t)i << 40) + step);
    return r.key;
}

int nnp_net_has(const nnp_net *net, nnp_layer_kind kind)
{
    for (int i = 0; i < net->n_layers; i++)
        if (net->layers[i].kind == kind)
            return 1;
    return 0;
}

/* Layer i over the samples [row0, row0 + B) of the batch buffers: every activation, gradient,
 * argmax and skip buffer is read and written from that sample on; conv's scratch workspace
 * is ws. A whole-batch pass is row0 = 0 with the layer's own workspace. */
static void forward_rows(nnp_net *net, int i, int B, size_t row0, float *ws)
{
    const nnp_layer *L = &net->layers[i];
    const size_t nin = nnp_shape_size(L->in), nout = nnp_shape_size(L->out);
    const float *in = net->act[L->src] + row0 * nin;
    float *out = net->act[i + 1] + row0 * nout;
    switch (L->kind) {
    case NNP_L_DENSE: {
        const nnp_tensor *w = &net->tensors[L->tensor];
        nnp_dense_forward(B, w->fan_in, w->fan_out, in, net->params + w->off,
                          net->params + w[1].off, out);
        break;
    }
    case NNP_L_CONV2D: {
        const nnp_tensor *w = &net->tensors[L->tensor];
        if (L->fused_conv && net->fuse) { /* through the relu into the pooling's output */
            const nnp_layer *P = &net->layers[i + 2];
            const size_t nq = nnp_shape_size(P->out);
            nnp_conv2d_forward_relu_pool(&L->conv, &P->pool, B, in, net->params + w->off,
                                         net->params + w[1].off, out,
                                         net->act[i + 3] + row0 * nq,
                                         net->argmax[i + 2] + row0 * nq, ws);
        } else
            nnp_conv2d_forward(&L->conv, B, in, net->params + w->off, net->params + w[1].off,
                               out, ws);
        break;
    }
    case NNP_L_MAXPOOL:
        if (L->fused && net->fuse && i >= 2 && net->layers[i - 2].fused_conv)
            break; /* the convolution before the relu wrote this layer's output */
        if (L->fused && net->fuse) /* the relu before it: read its input */
            nnp_maxpool_relu_forward(&L->pool, B, net->act[net->layers[i - 1].src] + row0 * nin,
                                     out, net->argmax[i] + row0 * nout);
        else
            nnp_maxpool_forward(&L->pool, B, in, out, net->argmax[i] + row0 * nout);
        break;
    case NNP_L_AVGPOOL: nnp_avgpool_forward(&L->pool, B, in, out); break;
    case NNP_L_FLATTEN: break; /* aliased buffers */
    case NNP_L_ACT:
        if (!(L->fused && net->fuse)) /* else the max pooling after it applies it */
            nnp_act_forward(L->act, L->alpha, (size_t)B * nin, in, out);
        break;
    case NNP_L_BN: {
        const nnp_tensor *w = &net->tensors[L->tensor];
        const int C = L->in.c, S = L->in.h * L->in.w;
        float *rm = net->running + L->roff;
        const int track = net->training && !net->freeze_running;
        if (net->training)
            nnp_bn_forward_train(B, C, S, in, net->params + w->off, net->params + w[1].off, out,
                                 track ? rm : NULL, track ? rm + C : NULL, net->bn_stat + L->roff + (size_t)L->bn,
                                 net->bn_sums, net->bn_sum, net->bn_sum_ctx);
        else
            nnp_bn_forward_eval(B, C, S, in, net->params + w->off, net->params + w[1].off, rm,
                                rm + C, out);
        if (track)
            net->tracked[L->bn]++;
        break;
    }
    case NNP_L_GAP: nnp_gap_forward(B, L->in.c, L->in.h * L->in.w, in, out); break;
    case NNP_L_DROPOUT:
        if (net->training && L->drop > 0.0f)
            nnp_dropout_forward(B, nin, L->drop, dropout_key(net, i),
                                net->sample_ids ? net->sample_ids + row0 : NULL, in, out);
        else
            memcpy(out, in, (size_t)B * nin * sizeof(float));
        break;
    case NNP_L_RES_FORK: break; /* aliased buffers */
    case NNP_L_RES_ADD: {
        /* act[i]: the shortcut's output (projection) or the branch output (identity) */
        const float *other = net->act[L->proj ? L->branch_end : L->fork] + row0 * nout;
        const size_t m = (size_t)B * nout;
        for (size_t k = 0; k < m; k++)
            out[k] = in[k] + other[k];
        break;
    }
    }
}

void nnp_net_forward_layer(nnp_net *net, int i, int B)
{
    forward_rows(net, i, B, 0, net->ws[i]);
}

const float *nnp_net_forward(nnp_net *net, int B, const float *x)
{
    if (x != net->act[0])
        memcpy(net->act[0], x, (size_t)B * nnp_shape_size(net->input) * sizeof(float));
    for (int i = 0; i < net->n_layers; i++)
        nnp_net_forward_layer(net, i, B);
    return net->act[net->n_layers];
}

/* Backward of layer i over the samples [row0, row0 + B) (see forward_rows); a trainable
 * layer's weight and bias gradients go to gw and gb. */
static void backward_rows(nnp_net *net, int i, int B, size_t row0, float *ws, float *gw,
                          float *gb)
{
    const nnp_layer *L = &net->layers[i];
    const size_t nin = nnp_shape_size(L->in), nout = nnp_shape_size(L->out);
    const float *dy = net->dact[i + 1] + row0 * nout;
    /* the first layer's input gradient is never needed; a projection shortcut's first
     * layer writes its own buffer, which its block's fork adds */
    float *dx = net->dskip[i] ? net->dskip[i] + row0 * nin : i > 0 ? net->dact[i] + row0 * nin : NULL;
    switch (L->kind) {
    case NNP_L_DENSE: {
        const nnp_tensor *w = &net->tensors[L->tensor];
        nnp_dense_backward(B, w->fan_in, w->fan_out, net->act[L->src] + row0 * nin,
                           net->params + w->off, dy, dx, gw, gb);
        break;
    }
    case NNP_L_CONV2D: {
        const nnp_tensor *w = &net->tensors[L->tensor];
        nnp_conv2d_backward(&L->conv, B, net->act[L->src] + row0 * nin, net->params + w->off,
                            dy, dx, gw, gb, ws);
        break;
    }
    case NNP_L_MAXPOOL:
        if (L->fused && net->fuse) { /* into the relu's input gradient */
            float *dr = i > 1 ? nnp_layer_dinput(net, i - 1) + row0 * nin : NULL;
            if (dr)
                nnp_maxpool_relu_backward(&L->pool, B, dy, net->argmax[i] + row0 * nout,
                                          net->act[i + 1] + row0 * nout, dr);
        } else if (dx)
            nnp_maxpool_backward(&L->pool, B, dy, net->argmax[i] + row0 * nout, dx);
        break;
    case NNP_L_AVGPOOL:
        if (dx)
            nnp_avgpool_backward(&L->pool, B, dy, dx);
        break;
    case NNP_L_FLATTEN: break;
    case NNP_L_ACT:
        if (dx && !(L->fused && net->fuse))
            nnp_act_backward(L->act, L->alpha, (size_t)B * nin, net->act[i] + row0 * nin,
                             net->act[i + 1] + row0 * nout, dy, dx);
        break;
    case NNP_L_BN: {
        /* training mode only: the forward's batch statistics (every rank joins the sums,
         * also as the first layer, where dx is not needed) */
        const nnp_tensor *w = &net->tensors[L->tensor];
        nnp_bn_backward(B, L->in.c, L->in.h * L->in.w, net->act[i] + row0 * nin,
                        net->params + w->off, net->bn_stat + L->roff + (size_t)L->bn, dy, dx, gw,
                        gb, net->bn_sums, net->bn_sum, net->bn_sum_ctx);
        break;
    }
    case NNP_L_GAP:
        if (dx)
            nnp_gap_backward(B, L->in.c, L->in.h * L->in.w, dy, dx);
        break;
    case NNP_L_DROPOUT:
        if (dx) {
            if (net->training && L->drop > 0.0f)
                nnp_dropout_backward(B, nin, L->drop, dropout_key(net, i),
                                     net->sample_ids ? net->sample_ids + row0 : NULL, dy, dx);
            else
                memcpy(dx, dy, (size_t)B * nin * sizeof(float));
        }
        break;
    case NNP_L_RES_ADD: break; /* its input and the branch output share its output's gradient */
    case NNP_L_RES_FORK: {
        /* dact[i] (shared with the branch's input) += the shortcut's input gradient */
        const float *g =
            (L->proj ? net->dskip[L->branch_end] : net->dact[L->add + 1]) + row0 * nin;
        float *d = net->dact[i] + row0 * nin;
        const size_t m = (size_t)B * nin;
        for (size_t k = 0; k < m; k++)
            d[k] += g[k];
        break;
    }
    }
}

void nnp_net_backward_layer(nnp_net *net, int i, int B)
{
    const nnp_layer *L = &net->layers[i];
    const nnp_tensor *w = L->tensor >= 0 ? &net->tensors[L->tensor] : NULL;
    backward_rows(net, i, B, 0, net->ws[i], w ? net->grads + w->off : NULL,
                  w ? net->grads + w[1].off : NULL);
}

void nnp_net_backward(nnp_net *net, int B, nnp_grad_ready_fn on_ready, void *ctx)
{
    for (int i = net->n_layers - 1; i >= 0; i--) {
        nnp_net_backward_layer(net, i, B);
        if (on_ready && net->layers[i].tensor >= 0)
            on_ready(ctx, net->layers[i].tensor);
    }
}

/* ---- micro-sharded passes ----------------------------------------------------------------- */

/* Samples in micro-shard c of a local batch of B samples cut into micro-shards of S. */
static int shard_rows(int c, int S, int B)
{
    const int r = B - c * S;
    return r < S ? r : S;
}

/* Layer i's workspace for micro-shard c: the layer's own one (conv keeps nothing in it from
 * forward to backward, so the micro-shards, run one after another, share it). */
static float *shard_ws(const nnp_net *net, int i, int c, int S)
{
    (void)c;
    (void)S;
    return net->ws[i];
}

/* BatchNorm layer i in training over n micro-shards: each one's sums, the global sums from
 * the net's shard hook (every rank calls it, also with no micro-shard), then the batch's
 * statistics and y (an element-wise pass, the same wherever a sample sits). */
static void bn_forward_shards(nnp_net *net, int i, int B, int S, int n)
{
    const nnp_layer *L = &net->layers[i];
    const nnp_tensor *w = &net->tensors[L->tensor];
    const int C = L->in.c, Sp = L->in.h * L->in.w;
    const size_t nin = nnp_shape_size(L->in), width = 2 * (size_t)C + 1;
    const float *in = net->act[L->src];
    for (int c = 0; c < n; c++)
        nnp_bn_stat_sums(shard_rows(c, S, B), C, Sp, in + (size_t)c * (size_t)S * nin,
                         net->shard_sums + (size_t)c * width);
    net->bn_shard_sum(net->bn_shard_ctx, net->shard_sums, n, width, net->bn_sums);
    float *rm = net->running + L->roff;
    const int track = !net->freeze_running;
    nnp_bn_forward_apply(B, C, Sp, in, net->params + w->off, net->params + w[1].off,
                         net->act[i + 1], track ? rm : NULL, track ? rm + C : NULL,
                         net->bn_stat + L->roff + (size_t)L->bn, net->bn_sums);
    if (track)
        net->tracked[L->bn]++;
}

/* Its backward: each micro-shard's sum dy and sum dy*x_hat are its gradients of beta and
 * gamma (handed to the sink) and, summed over every rank's micro-shards, what dx needs. */
static void bn_backward_shards(nnp_net *net, int i, int B, int S, int n,
                               const nnp_shard_sink *sink)
{
    const nnp_layer *L = &net->layers[i];
    const int j = L->tensor, C = L->in.c, Sp = L->in.h * L->in.w;
    const nnp_tensor *w = &net->tensors[j];
    const size_t nin = nnp_shape_size(L->in), width = 2 * (size_t)C;
    const double *stat = net->bn_stat + L->roff + (size_t)L->bn;
    const float *x = net->act[i], *dy = net->dact[i + 1];
    for (int c = 0; c < n; c++) {
        double *cs = net->shard_sums + (size_t)c * width;
        const size_t off = (size_t)c * (size_t)S * nin;
        nnp_bn_grad_sums(shard_rows(c, S, B), C, Sp, x + off, stat, dy + off, cs);
        float *gw = sink->slot(sink->ctx, j, c), *gb = sink->slot(sink->ctx, j + 1, c);
        for (int k = 0; k < C; k++) {
            gb[k] = (float)cs[k];
            gw[k] = (float)cs[C + k];
        }
        sink->done(sink->ctx, j, c);
    }
    net->bn_shard_sum(net->bn_shard_ctx, net->shard_sums, n, width, net->bn_sums);
    float *dx = net->dskip[i] ? net->dskip[i] : i > 0 ? net->dact[i] : NULL;
    nnp_bn_backward_apply(B, C, Sp, x, net->params + w->off, stat, dy, dx, net->bn_sums);
}

void nnp_net_forward_shards(nnp_net *net, int B, int S)
{
    const int n = B > 0 ? (B + S - 1) / S : 0;
    for (int i = 0; i < net->n_layers; i++) {
        if (net->layers[i].kind == NNP_L_BN && net->training) {
            bn_forward_shards(net, i, B, S, n);
            continue;
        }
        for (int c = 0; c < n; c++)
            forward_rows(net, i, shard_rows(c, S, B), (size_t)c * (size_t)S, shard_ws(net, i, c, S));
    }
}

void nnp_net_backward_shards(nnp_net *net, int B, int S, const nnp_shard_sink *sink)
{
    const int n = B > 0 ? (B + S - 1) / S : 0;
    for (int i = net->n_layers - 1; i >= 0; i--) {
        const int j = net->layers[i].tensor;
        if (net->layers[i].kind == NNP_L_BN) {
            bn_backward_shards(net, i, B, S, n, sink);
            continue;
        }
        for (int c = 0; c < n; c++) {
            float *gw = j >= 0 ? sink->slot(sink->ctx, j, c) : NULL;
            float *gb = j >= 0 ? sink->slot(sink->ctx, j + 1, c) : NULL;
            backward_rows(net, i, shard_rows(c, S, B), (size_t)c * (size_t)S,
                          shard_ws(net, i, c, S), gw, gb);
            if (j >= 0)
                sink->done(sink->ctx, j, c);
        }
    }
}

void nnp_net_sync_idle(nnp_net *net)
{
    if (!net->training || !net->bn_sum)
        return;
    for (int i = 0; i < net->n_layers; i++)
        if (net->layers[i].kind == NNP_L_BN)
            nnp_net_forward_layer(net, i, 0);
    for (int i = net->n_layers - 1; i >= 0; i--)
        if (net->layers[i].kind == NNP_L_BN)
            nnp_net_backward_layer(net, i, 0);
}

void nnp_layer_describe(const nnp_net *net, int i, char *buf, size_t cap)
{
    const nnp_layer *L = &net->layers[i];
    char what[96];
    switch (L->kind) {
    case NNP_L_DENSE:
        snprintf(what, sizeof what, "dense %d->%d", (int)nnp_shape_size(L->in), L->out.c);
        break;
    case NNP_L_CONV2D:
        snprintf(what, sizeof what, "conv %d->%d k%d s%d p%d", L->conv.C, L->conv.K, L->k, L->s,
                 L->p);
        break;
    case NNP_L_MAXPOOL: snprintf(what, sizeof what, "maxpool k%d s%d", L->k, L->s); break;
    case NNP_L_AVGPOOL: snprintf(what, sizeof what, "avgpool k%d s%d", L->k, L->s); break;
    case NNP_L_FLATTEN: snprintf(what, sizeof what, "flatten"); break;
    case NNP_L_ACT: snprintf(what, sizeof what, "%s", nnp_act_name(L->act)); break;
    case NNP_L_BN:
        snprintf(what, sizeof what, "batchnorm%s %d", L->in.h * L->in.w > 1 ? "2d" : "1d",
                 L->in.c);
        break;
    case NNP_L_GAP: snprintf(what, sizeof what, "global avgpool"); break;
    case NNP_L_DROPOUT: snprintf(what, sizeof what, "dropout p=%g", (double)L->drop); break;
    case NNP_L_RES_FORK:
        snprintf(what, sizeof what, "res block (%s)", L->proj ? "projection" : "identity");
        break;
    case NNP_L_RES_ADD: snprintf(what, sizeof what, "res add"); break;
    default: snprintf(what, sizeof what, "?"); break;
    }
    const char *part = L->res == NNP_RES_BRANCH ? "| " : L->res == NNP_RES_SHORTCUT ? "+ " : "";
    char tag[128];
    snprintf(tag, sizeof tag, "%s%s", part, what);
    snprintf(buf, cap, "%2d %-24s %dx%dx%d -> %dx%dx%d", i, tag, L->in.c, L->in.h, L->in.w,
             L->out.c, L->out.h, L->out.w);
}

void nnp_net_describe(const nnp_net *net, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < net->n_layers && len + 1 < cap; i++) {
        char line[160];
        nnp_layer_describe(net, i, line, sizeof line);
        int w = snprintf(buf + len, cap - len, "  %s\n", line);
        if (w < 0)
            break;
        len += (size_t)w;
    }
}
