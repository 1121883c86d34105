/* test_gradcheck.c - every backward kernel against central finite differences.
 *
 * For a layer with output y the scalar objective is L = sum_i r_i y_i with a fixed random
 * r, so the analytic gradients are the backward pass fed dy = r. For the losses L is the
 * returned loss itself (scale = 1). Each parameter / input value v is moved to v +- eps
 * (eps = 1e-2 on O(1) values), L is accumulated in double, and the derivative is
 * (L+ - L-) / (v+ - v-) using the perturbations actually stored in float.
 *
 * Residual blocks are checked through whole networks (nnp_net_forward / nnp_net_backward with
 * L = sum r . logits in training mode): every parameter, and the input when the network
 * starts with a block (its fork gives the input gradient); tanh instead of relu keeps them
 * smooth, and a step of 2.5e-3 keeps the difference's own error below the tolerance.
 *
 * Tolerance: |fd - g| <= 2e-3 * max(1, |g|) for every entry. Kinks are avoided: relu and
 * leaky-relu inputs satisfy |x| >= 0.05, and max-pool inputs are distinct by >= 0.05
 * within each plane, so no perturbation crosses a kink or changes an argmax.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nnprec/layers.h"
#include "nnprec/net.h"
#include "test_util.h"

#define EPS 1e-2f
#define TOL 2e-3

static uint64_t lcg_state = 0x243F6A8885A308D3ull;
static double urand(void) /* uniform in [0, 1) */
{
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(lcg_state >> 11) * (1.0 / 9007199254740992.0);
}
static float nrand(void) /* standard normal, Box-Muller */
{
    double u = urand(), v = urand();
    return (float)(sqrt(-2.0 * log(1.0 - u)) * cos(6.283185307179586 * v));
}
static void fill_normal(float *a, size_t n)
{
    for (size_t i = 0; i < n; i++)
        a[i] = nrand();
}
static float *falloc(size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}
static void fill_garbage(float *a, size_t n) /* backward must overwrite its outputs */
{
    for (size_t i = 0; i < n; i++)
        a[i] = 1234.5f;
}

/* The difference step: EPS, smaller for whole networks (their BatchNorm layers over a few
 * samples curve enough that the O(eps^2) error of a central difference passes 2e-3). */
static float eps_cur = EPS;

/* The objective as a closure: f(ctx) with ctx owning the arrays being perturbed. */
typedef double (*objective_fn)(void *ctx);

/* Central differences of f w.r.t. each of p[0..n), compared with the analytic g[0..n). */
static void gradcheck(const char *what, objective_fn f, void *ctx, float *p, const float *g,
                      size_t n)
{
    double worst = 0.0;
    size_t wi = 0;
    double wfd = 0.0;
    for (size_t i = 0; i < n; i++) {
        const float v = p[i];
        const float vp = v + eps_cur, vm = v - eps_cur;
        p[i] = vp;
        const double lp = f(ctx);
        p[i] = vm;
        const double lm = f(ctx);
        p[i] = v;
        const double fd = (lp - lm) / ((double)vp - (double)vm);
        const double err = fabs(fd - g[i]) / fmax(1.0, fabs(g[i]));
        if (err > worst || i == 0) {
            worst = err;
            wi = i;
            wfd = fd;
        }
    }
    if (n == 0)
        return;
    if (worst > TOL)
        fprintf(stderr, "  %s: worst entry %zu of %zu\n", what, wi, n);
    ASSERT_NEAR(wfd, g[wi], TOL * fmax(1.0, fabs(g[wi])));
}

static double dot_r(const float *r, const float *y, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)r[i] * y[i];
    return s;
}

/* ---- dense ---------------------------------------------------------------------------- */
typedef struct {
    int B, in, out;
    float *x, *W, *b, *y, *r;
} dense_ctx;

static double dense_obj(void *p)
{
    dense_ctx *c = p;
    nnp_dense_forward(c->B, c->in, c->out, c->x, c->W, c->b, c->y);
    return dot_r(c->r, c->y, (size_t)c->B * c->out);
}

static void test_dense(void)
{
    const int shapes[][3] = {{1, 3, 2}, {3, 5, 4}, {4, 9, 7}};
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        dense_ctx c = {shapes[t][0], shapes[t][1], shapes[t][2], 0, 0, 0, 0, 0};
        const size_t nx = (size_t)c.B * c.in, nw = (size_t)c.out * c.in, ny = (size_t)c.B * c.out;
        c.x = falloc(nx); c.W = falloc(nw); c.b = falloc(c.out); c.y = falloc(ny);
        c.r = falloc(ny);
        float *dx = falloc(nx), *dW = falloc(nw), *db = falloc(c.out);
        fill_normal(c.x, nx); fill_normal(c.W, nw); fill_normal(c.b, c.out);
        fill_normal(c.r, ny);
        fill_garbage(dx, nx); fill_garbage(dW, nw); fill_garbage(db, c.out);
        nnp_dense_backward(c.B, c.in, c.out, c.x, c.W, c.r, dx, dW, db);
        gradcheck("dense dW", dense_obj, &c, c.W, dW, nw);
        gradcheck("dense db", dense_obj, &c, c.b, db, c.out);
        gradcheck("dense dx", dense_obj, &c, c.x, dx, nx);
        free(c.x); free(c.W); free(c.b); free(c.y); free(c.r); free(dx); free(dW); free(db);
    }
}

/* ---- conv2d --------------------------------------------------------------------------- */
typedef struct {
    nnp_conv_geom g;
    int B;
    float *x, *W, *b, *y, *r, *ws;
} conv_ctx;

static double conv_obj(void *p)
{
    conv_ctx *c = p;
    nnp_conv2d_forward(&c->g, c->B, c->x, c->W, c->b, c->y, c->ws);
    return dot_r(c->r, c->y, (size_t)c->B * c->g.K * c->g.OH * c->g.OW);
}

/* Central differences through each convolution path (nnp_conv2d_set_path): the portable
 * GEMM one, the direct AVX2/FMA one and Winograd (3x3 stride 1) where the CPU has AVX2 and
 * FMA (else GEMM again). Run after every other test, so that the data those draw stay what
 * they were. */
static void test_conv(void)
{
    const nnp_conv_path paths[] = {NNP_CONV_GEMM, NNP_CONV_DIRECT, NNP_CONV_WINOGRAD};
    for (int path = 0; path < 3; path++) {
        nnp_conv2d_set_path(paths[path]);
        /* B, C, H, W, K, k, s, p */
        const int geoms[][8] = {
            {2, 2, 6, 5, 3, 3, 1, 1},
            {1, 1, 7, 6, 6, 3, 1, 2},  /* LeNet conv1's shape class: one channel, padding 2 */
            {2, 5, 5, 7, 5, 3, 1, 0},  /* odd channel counts: channel blocks with tails */
            {3, 3, 7, 7, 2, 3, 2, 2}, /* stride 2, padding 2 */
            {1, 1, 5, 5, 2, 2, 2, 0},
            {2, 2, 8, 6, 2, 5, 2, 2},
            {1, 2, 4, 4, 3, 3, 1, 2}, /* output larger than input */
            {2, 3, 9, 8, 4, 3, 2, 1}, /* stride 2 p1 (resnet8's downsampling class) */
            {2, 2, 7, 8, 3, 1, 2, 1}, /* 1x1 stride 2 with padding */
            {1, 2, 8, 7, 2, 2, 3, 0}, /* stride 3, even kernel */
        };
        for (size_t t = 0; t < sizeof geoms / sizeof geoms[0]; t++) {
            const int *q = geoms[t];
            conv_ctx c;
            memset(&c, 0, sizeof c);
            c.B = q[0];
            ASSERT_EQ_INT(nnp_conv_geom_init(&c.g, q[1], q[2], q[3], q[4], q[5], q[6], q[7]), 0);
            const size_t nx = (size_t)c.B * c.g.C * c.g.H * c.g.W;
            const size_t nw = (size_t)c.g.K * c.g.C * c.g.k * c.g.k;
            const size_t ny = (size_t)c.B * c.g.K * c.g.OH * c.g.OW;
            c.x = falloc(nx); c.W = falloc(nw); c.b = falloc(c.g.K); c.y = falloc(ny);
            c.r = falloc(ny); c.ws = falloc(nnp_conv2d_workspace(&c.g, c.B));
            float *dx = falloc(nx), *dW = falloc(nw), *db = falloc(c.g.K);
            fill_normal(c.x, nx); fill_normal(c.W, nw); fill_normal(c.b, c.g.K);
            fill_normal(c.r, ny);
            fill_garbage(dx, nx); fill_garbage(dW, nw); fill_garbage(db, c.g.K);
            nnp_conv2d_backward(&c.g, c.B, c.x, c.W, c.r, dx, dW, db, c.ws);
            gradcheck("conv dW", conv_obj, &c, c.W, dW, nw);
            gradcheck("conv db", conv_obj, &c, c.b, db, c.g.K);
            gradcheck("conv dx", conv_obj, &c, c.x, dx, nx);
            free(c.x); free(c.W); free(c.b); free(c.y); free(c.r); free(c.ws);
            free(dx); free(dW); free(db);
        }
    }
    nnp_conv2d_set_path(NNP_CONV_AUTO);
}

/* ---- pooling -------------------------------------------------------------------------- */
typedef struct {
    nnp_pool_geom g;
    int B, max;
    float *x, *y, *r;
    int *am;
} pool_ctx;

static double pool_obj(void *p)
{
    pool_ctx *c = p;
    if (c->max)
        nnp_maxpool_forward(&c->g, c->B, c->x, c->y, c->am);
    else
        nnp_avgpool_forward(&c->g, c->B, c->x, c->y);
    return dot_r(c->r, c->y, (size_t)c->B * c->g.C * c->g.OH * c->g.OW);
}

static void test_pool(void)
{
    /* B, C, H, W, k, s */
    const int geoms[][6] = {
        {2, 2, 6, 6, 2, 2},
        {1, 3, 7, 9, 2, 2}, /* floor */
        {2, 1, 7, 7, 3, 2}, /* overlapping windows */
        {1, 2, 5, 6, 3, 1},
    };
    for (size_t t = 0; t < sizeof geoms / sizeof geoms[0]; t++) {
        for (int max = 0; max <= 1; max++) {
            const int *q = geoms[t];
            pool_ctx c;
            memset(&c, 0, sizeof c);
            c.B = q[0];
            c.max = max;
            ASSERT_EQ_INT(nnp_pool_geom_init(&c.g, q[1], q[2], q[3], q[4], q[5]), 0);
            const size_t HW = (size_t)c.g.H * c.g.W, planes = (size_t)c.B * c.g.C;
            const size_t nx = planes * HW, ny = planes * c.g.OH * c.g.OW;
            c.x = falloc(nx); c.y = falloc(ny); c.r = falloc(ny);
            c.am = malloc(sizeof(int) * ny);
            float *dx = falloc(nx);
            /* Distinct values per plane: a random permutation of 0.05 * (0..HW-1). */
            for (size_t pl = 0; pl < planes; pl++) {
                float *xp = c.x + pl * HW;
                for (size_t i = 0; i < HW; i++)
                    xp[i] = 0.05f * (float)i - 1.0f;
                for (size_t i = HW - 1; i > 0; i--) {
                    size_t j = (size_t)(urand() * (double)(i + 1));
                    float tmp = xp[i];
                    xp[i] = xp[j];
                    xp[j] = tmp;
                }
            }
            fill_normal(c.r, ny);
            fill_garbage(dx, nx);
            pool_obj(&c); /* argmax of the unperturbed input */
            if (max)
                nnp_maxpool_backward(&c.g, c.B, c.r, c.am, dx);
            else
                nnp_avgpool_backward(&c.g, c.B, c.r, dx);
            gradcheck(max ? "maxpool dx" : "avgpool dx", pool_obj, &c, c.x, dx, nx);
            free(c.x); free(c.y); free(c.r); free(c.am); free(dx);
        }
    }
}

/* ---- activations ---------------------------------------------------------------------- */
typedef struct {
    nnp_act a;
    float alpha;
    size_t n;
    float *x, *y, *r;
} act_ctx;

static double act_obj(void *p)
{
    act_ctx *c = p;
    nnp_act_forward(c->a, c->alpha, c->n, c->x, c->y);
    return dot_r(c->r, c->y, c->n);
}

static void test_activations(void)
{
    const nnp_act acts[] = {NNP_ACT_RELU, NNP_ACT_LEAKY_RELU, NNP_ACT_TANH, NNP_ACT_SIGMOID,
                            NNP_ACT_IDENTITY};
    const char *names[] = {"relu dx", "leaky relu dx", "tanh dx", "sigmoid dx", "identity dx"};
    for (size_t ai = 0; ai < sizeof acts / sizeof acts[0]; ai++) {
        act_ctx c = {acts[ai], 0.2f, 64, 0, 0, 0};
        c.x = falloc(c.n); c.y = falloc(c.n); c.r = falloc(c.n);
        float *dx = falloc(c.n);
        for (size_t i = 0; i < c.n; i++) {
            do
                c.x[i] = 2.0f * nrand();
            while (fabsf(c.x[i]) < 5 * EPS); /* keep away from the kink at 0 */
        }
        fill_normal(c.r, c.n);
        fill_garbage(dx, c.n);
        act_obj(&c);
        nnp_act_backward(c.a, c.alpha, c.n, c.x, c.y, c.r, dx);
        gradcheck(names[ai], act_obj, &c, c.x, dx, c.n);
        free(c.x); free(c.y); free(c.r); free(dx);
    }
}

/* ---- losses --------------------------------------------------------------------------- */
typedef struct {
    int B, C, ce;
    float *z;
    unsigned char *lab;
} loss_ctx;

static double loss_obj(void *p)
{
    loss_ctx *c = p;
    if (c->ce)
        return nnp_softmax_ce(c->B, c->C, c->z, c->lab, 1.0f, NULL, NULL);
    return nnp_mse_onehot(c->B, c->C, c->z, c->lab, 1.0f, NULL, NULL);
}

static void test_losses(void)
{
    for (int ce = 0; ce <= 1; ce++) {
        loss_ctx c = {5, 10, ce, 0, 0};
        const size_t n = (size_t)c.B * c.C;
        c.z = falloc(n);
        c.lab = malloc((size_t)c.B);
        float *d = falloc(n), *d2 = falloc(n);
        fill_normal(c.z, n);
        for (int i = 0; i < c.B; i++)
            c.lab[i] = (unsigned char)(urand() * c.C);
        fill_garbage(d, n);
        if (ce)
            nnp_softmax_ce(c.B, c.C, c.z, c.lab, 1.0f, d, NULL);
        else
            nnp_mse_onehot(c.B, c.C, c.z, c.lab, 1.0f, d, NULL);
        gradcheck(ce ? "softmax-ce dlogits" : "mse dy", loss_obj, &c, c.z, d, n);
        /* scale multiplies the gradient and leaves the loss alone */
        double l1 = loss_obj(&c), l2;
        if (ce)
            l2 = nnp_softmax_ce(c.B, c.C, c.z, c.lab, 0.125f, d2, NULL);
        else
            l2 = nnp_mse_onehot(c.B, c.C, c.z, c.lab, 0.125f, d2, NULL);
        ASSERT_NEAR(l1, l2, 0);
        double worst = 0;
        for (size_t i = 0; i < n; i++)
            worst = fmax(worst, fabs(d2[i] - 0.125 * d[i]));
        ASSERT_NEAR(worst, 0.0, 1e-7);
        free(c.z); free(c.lab); free(d); free(d2);
    }
}

/* ---- batch normalization (training mode), global average pooling, dropout ------------ */
typedef struct {
    int B, C, S;
    float *x, *g, *b, *y, *r;
    double *stat, *sums;
} bn_ctx;

static double bn_obj(void *p)
{
    bn_ctx *c = p;
    nnp_bn_forward_train(c->B, c->C, c->S, c->x, c->g, c->b, c->y, NULL, NULL, c->stat, c->sums,
                         NULL, NULL);
    return dot_r(c->r, c->y, (size_t)c->B * c->C * c->S);
}

/* A second process's part of the batch, for the synchronized statistics: the hook adds
 * the sums this part gives on its own (computed beforehand into other[]). */
typedef struct {
    const double *other;
    int calls;
} part_sum;

static void add_other(void *ctx, double *buf, size_t n)
{
    part_sum *ps = ctx;
    for (size_t i = 0; i < n; i++)
        buf[i] += ps->other[i];
    ps->calls++;
}

static void test_batchnorm(void)
{
    /* 1-D (B x C features) and 2-D (B x C x S): every gradient against central differences */
    const int shapes[][3] = {{6, 3, 1}, {3, 2, 5}, {2, 4, 9}};
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        bn_ctx c = {shapes[t][0], shapes[t][1], shapes[t][2], 0, 0, 0, 0, 0, 0, 0};
        const size_t n = (size_t)c.B * c.C * c.S;
        c.x = falloc(n); c.y = falloc(n); c.r = falloc(n);
        c.g = falloc((size_t)c.C); c.b = falloc((size_t)c.C);
        c.stat = calloc(2 * (size_t)c.C + 1, sizeof(double));
        c.sums = calloc(2 * (size_t)c.C + 1, sizeof(double));
        float *dx = falloc(n), *dg = falloc((size_t)c.C), *db = falloc((size_t)c.C);
        fill_normal(c.x, n); fill_normal(c.r, n);
        for (int k = 0; k < c.C; k++) {
            c.g[k] = 0.5f + (float)urand();
            c.b[k] = nrand();
        }
        for (size_t i = 0; i < n; i++) /* channels with means and spreads of their own */
            c.x[i] = c.x[i] * (1.0f + 0.5f * (float)((i / (size_t)c.S) % (size_t)c.C)) + 0.3f;
        fill_garbage(dx, n); fill_garbage(dg, (size_t)c.C); fill_garbage(db, (size_t)c.C);
        bn_obj(&c);
        nnp_bn_backward(c.B, c.C, c.S, c.x, c.g, c.stat, c.r, dx, dg, db, c.sums, NULL, NULL);
        gradcheck("bn dgamma", bn_obj, &c, c.g, dg, (size_t)c.C);
        gradcheck("bn dbeta", bn_obj, &c, c.b, db, (size_t)c.C);
        gradcheck("bn dx", bn_obj, &c, c.x, dx, n);

        /* the same batch as two processes' parts (the first B1 samples and the rest) whose
         * sums are added by the hook: each part's y and dx equal the whole batch's, and the
         * parts' dgamma, dbeta add up to the whole's */
        bn_obj(&c);
        nnp_bn_backward(c.B, c.C, c.S, c.x, c.g, c.stat, c.r, dx, dg, db, c.sums, NULL, NULL);
        const int B1 = c.B / 2, B2 = c.B - B1;
        const size_t n1 = (size_t)B1 * c.C * c.S;
        const size_t ns = 2 * (size_t)c.C + 1;
        double *st2 = calloc(ns, sizeof(double)), *st1 = calloc(ns, sizeof(double));
        double *o1 = calloc(ns, sizeof(double)), *o2 = calloc(ns, sizeof(double));
        float *y1 = falloc(n), *dx1 = falloc(n), *dg1 = falloc((size_t)c.C),
              *db1 = falloc((size_t)c.C), *dg2 = falloc((size_t)c.C), *db2 = falloc((size_t)c.C);
        /* local sums of each part (no hook: the buffer keeps them) */
        nnp_bn_forward_train(B1, c.C, c.S, c.x, c.g, c.b, y1, NULL, NULL, st1, o1, NULL, NULL);
        nnp_bn_forward_train(B2, c.C, c.S, c.x + n1, c.g, c.b, y1 + n1, NULL, NULL, st2, o2,
                             NULL, NULL);
        part_sum h1 = {o2, 0}, h2 = {o1, 0};
        double *sc = calloc(ns, sizeof(double));
        nnp_bn_forward_train(B1, c.C, c.S, c.x, c.g, c.b, y1, NULL, NULL, st1, sc, add_other, &h1);
        nnp_bn_forward_train(B2, c.C, c.S, c.x + n1, c.g, c.b, y1 + n1, NULL, NULL, st2, sc,
                             add_other, &h2);
        ASSERT_EQ_INT(h1.calls, 1);
        ASSERT_NEAR(st1[2 * c.C], (double)c.B * c.S, 0);
        /* backward: local sums of each part first */
        nnp_bn_backward(B1, c.C, c.S, c.x, c.g, st1, c.r, NULL, dg1, db1, o1, NULL, NULL);
        nnp_bn_backward(B2, c.C, c.S, c.x + n1, c.g, st2, c.r + n1, NULL, dg2, db2, o2, NULL,
                        NULL);
        nnp_bn_backward(B1, c.C, c.S, c.x, c.g, st1, c.r, dx1, dg1, db1, sc, add_other, &h1);
        nnp_bn_backward(B2, c.C, c.S, c.x + n1, c.g, st2, c.r + n1, dx1 + n1, dg2, db2, sc,
                        add_other, &h2);
        ASSERT_EQ_INT(h1.calls, 2);
        double wy = 0, wdx = 0, wp = 0;
        for (size_t i = 0; i < n; i++) {
            wy = fmax(wy, fabs(y1[i] - c.y[i]));
            wdx = fmax(wdx, fabs(dx1[i] - dx[i]));
        }
        for (int k = 0; k < c.C; k++) {
            wp = fmax(wp, fabs(dg1[k] + dg2[k] - dg[k]));
            wp = fmax(wp, fabs(db1[k] + db2[k] - db[k]));
        }
        ASSERT_NEAR(wy, 0.0, 1e-5);
        ASSERT_NEAR(wdx, 0.0, 1e-5);
        ASSERT_NEAR(wp, 0.0, 1e-5);
        free(st1); free(st2); free(o1); free(o2); free(sc); free(y1); free(dx1);
        free(dg1); free(db1); free(dg2); free(db2);

        /* running statistics: momentum 0.1 towards the mean and the unbiased variance */
        float rm[16], rv[16];
        for (int k = 0; k < c.C; k++) {
            rm[k] = 0.0f;
            rv[k] = 1.0f;
        }
        nnp_bn_forward_train(c.B, c.C, c.S, c.x, c.g, c.b, c.y, rm, rv, c.stat, c.sums, NULL,
                             NULL);
        for (int k = 0; k < c.C; k++) {
            double m = 0, v = 0, N = (double)c.B * c.S;
            for (int b = 0; b < c.B; b++)
                for (int q = 0; q < c.S; q++)
                    m += c.x[((size_t)b * c.C + k) * c.S + q];
            m /= N;
            for (int b = 0; b < c.B; b++)
                for (int q = 0; q < c.S; q++) {
                    double d = c.x[((size_t)b * c.C + k) * c.S + q] - m;
                    v += d * d;
                }
            ASSERT_NEAR(rm[k], 0.1 * m, 1e-6);
            ASSERT_NEAR(rv[k], 0.9 + 0.1 * v / (N - 1), 1e-6);
            /* evaluation mode with these statistics: (x - rm)/sqrt(rv + eps) g + b */
            nnp_bn_forward_eval(1, c.C, c.S, c.x, c.g, c.b, rm, rv, c.y);
            double want = (c.x[(size_t)k * c.S] - rm[k]) / sqrt(rv[k] + 1e-5) * c.g[k] + c.b[k];
            ASSERT_NEAR(c.y[(size_t)k * c.S], want, 1e-5);
        }
        free(c.x); free(c.y); free(c.r); free(c.g); free(c.b); free(c.stat); free(c.sums);
        free(dx); free(dg); free(db);
    }
}

typedef struct {
    int B, C, S;
    float *x, *y, *r;
    float p;
    uint64_t key;
    const uint32_t *ids;
} gd_ctx;

static double gap_obj(void *p)
{
    gd_ctx *c = p;
    nnp_gap_forward(c->B, c->C, c->S, c->x, c->y);
    return dot_r(c->r, c->y, (size_t)c->B * c->C);
}

static double dropout_obj(void *p)
{
    gd_ctx *c = p;
    nnp_dropout_forward(c->B, (size_t)c->C, c->p, c->key, c->ids, c->x, c->y);
    return dot_r(c->r, c->y, (size_t)c->B * c->C);
}

static void test_gap_dropout(void)
{
    gd_ctx c = {3, 4, 6, 0, 0, 0, 0.0f, 0, NULL};
    const size_t n = (size_t)c.B * c.C * c.S, m = (size_t)c.B * c.C;
    c.x = falloc(n); c.y = falloc(n); c.r = falloc(n);
    float *dx = falloc(n);
    fill_normal(c.x, n); fill_normal(c.r, m);
    fill_garbage(dx, n);
    nnp_gap_backward(c.B, c.C, c.S, c.r, dx);
    gradcheck("gap dx", gap_obj, &c, c.x, dx, n);

    /* dropout with a fixed mask (fixed key and sample ids): dx against differences, and
     * dropped units give exactly 0 in both directions */
    const uint32_t ids[3] = {17, 4, 123456};
    c.C = 8; c.S = 1; c.p = 0.4f; c.key = 0x1234567887654321ull; c.ids = ids;
    const size_t nd = (size_t)c.B * c.C;
    fill_normal(c.r, nd);
    fill_garbage(dx, nd);
    nnp_dropout_backward(c.B, (size_t)c.C, c.p, c.key, c.ids, c.r, dx);
    gradcheck("dropout dx", dropout_obj, &c, c.x, dx, nd);
    dropout_obj(&c);
    for (size_t i = 0; i < nd; i++) {
        int keep = nnp_dropout_keep(c.key, (uint64_t)ids[i / (size_t)c.C] * (size_t)c.C + i % (size_t)c.C, c.p);
        ASSERT_NEAR(c.y[i], keep ? c.x[i] / (1.0f - c.p) : 0.0f, 1e-6);
        ASSERT_NEAR(dx[i], keep ? c.r[i] / (1.0f - c.p) : 0.0f, 1e-6);
    }
    /* a sample's mask depends on its id, not on its place in the batch */
    const uint32_t ids2[1] = {4};
    float y2[8];
    nnp_dropout_forward(1, (size_t)c.C, c.p, c.key, ids2, c.x + c.C, y2);
    for (int u = 0; u < c.C; u++)
        ASSERT_NEAR(y2[u], c.y[c.C + u], 0);

    /* mask statistics: over 200,000 units the fraction dropped is p within 5 binomial
     * standard deviations (sqrt(p(1-p)/n) = 0.0011 at p = 0.4: a false failure has
     * probability below 1e-6), for several p */
    const float ps[3] = {0.1f, 0.4f, 0.75f};
    for (int k = 0; k < 3; k++) {
        const uint64_t units = 200000;
        uint64_t dropped = 0;
        for (uint64_t i = 0; i < units; i++)
            dropped += !nnp_dropout_keep(0xABCDEFull + (uint64_t)k, i, ps[k]);
        const double frac = (double)dropped / (double)units;
        const double sd = sqrt(ps[k] * (1.0 - ps[k]) / (double)units);
        ASSERT_NEAR(frac, ps[k], 5 * sd);
    }
    free(c.x); free(c.y); free(c.r); free(dx);
}

/* ---- residual blocks, through whole networks ------------------------------------------ */
typedef struct {
    nnp_net *net;
    int B;
    float *x, *r;
} net_ctx;

static double net_obj(void *p)
{
    net_ctx *c = p;
    const float *y = nnp_net_forward(c->net, c->B, c->x);
    return dot_r(c->r, y, (size_t)c->B * (size_t)c->net->n_classes);
}

static void check_net(const char *spec, int B)
{
    nnp_net *net = NULL;
    nnp_status st = nnp_net_create(spec, (nnp_shape){1, 1, 1}, NNP_ACT_RELU, B, &net);
    ASSERT_EQ_INT(st, NNP_OK);
    if (st != NNP_OK)
        return;
    net->training = 1;
    net->freeze_running = 1;
    net->seed = 7;
    net->step = 3;
    /* weights ~ 1/sqrt(fan_in) (a weight feeding bn: ~1, so that the difference step is
     * small against its output channel's norm, to which bn is invariant); bn scale ~ 1 */
    for (int j = 0; j < net->n_tensors; j++) {
        const nnp_tensor *t = &net->tensors[j];
        float *w = net->params + t->off;
        const int layer = t->layer, to_bn = layer + 1 < net->n_layers &&
                                            net->layers[layer + 1].kind == NNP_L_BN;
        for (size_t k = 0; k < t->n; k++)
            w[k] = t->norm ? (t->is_bias ? 0.3f * nrand() : 0.6f + 0.8f * (float)urand())
                           : nrand() / (to_bn ? 1.0f : sqrtf((float)t->fan_in));
    }
    const size_t nx = (size_t)B * nnp_shape_size(net->input);
    const size_t ny = (size_t)B * (size_t)net->n_classes;
    net_ctx c = {net, B, falloc(nx), falloc(ny)};
    eps_cur = 2.5e-3f;
    fill_normal(c.x, nx);
    fill_normal(c.r, ny);
    float *g = falloc(net->n_params), *dx = falloc(nx);
    fill_garbage(net->grads, net->n_params);
    nnp_net_forward(net, B, c.x);
    memcpy(net->dact[net->n_layers], c.r, ny * sizeof(float));
    nnp_net_backward(net, B, NULL, NULL);
    memcpy(g, net->grads, net->n_params * sizeof(float));
    memcpy(dx, net->dact[0], nx * sizeof(float));
    for (int j = 0; j < net->n_tensors; j++) {
        const nnp_tensor *t = &net->tensors[j];
        char what[160];
        snprintf(what, sizeof what, "%s %s", spec, t->name);
        gradcheck(what, net_obj, &c, net->params + t->off, g + t->off, t->n);
    }
    if (net->layers[0].kind == NNP_L_RES_FORK) {
        char what[160];
        snprintf(what, sizeof what, "%s dx", spec);
        gradcheck(what, net_obj, &c, c.x, dx, nx);
    }
    eps_cur = EPS;
    free(c.x); free(c.r); free(g); free(dx);
    nnp_net_free(net);
}

static void test_residual(void)
{
    /* identity block (conv/bn branch), first in the network: the input gradient too */
    check_net("seq:3x5x5/res[conv:3:3:1:1/bn/tanh/conv:3:3:1:1/bn]/tanh/gap/dense:4", 4);
    /* projection block with stride 2: 1x1 conv (stride 2) + bn shortcut */
    check_net("seq:2x6x6/conv:3:3:1:1/tanh/res[conv:4:3:2:1/bn/tanh/conv:4:3:1:1/bn]/tanh/"
              "gap/dense:3", 3);
    /* projection without bn, and a block ending the network */
    check_net("seq:2x5x5/res[conv:3:3:1:1/tanh/conv:3:3:1:1]/tanh/flatten/dense:3/"
              "res[dense:3]", 3);
    /* dense blocks: identity with dropout (a fixed mask), a dense projection with bn */
    check_net("seq:6/dense:5/tanh/res[dense:5/tanh/dropout:0.25/dense:5]/tanh/res[dense:4/bn]/"
              "tanh/dense:3", 5);
    /* small resnet-like: stem, two blocks back to back (identity, then projection) */
    check_net("seq:1x8x8/conv:4:3:1:1/bn/tanh/res[conv:4:3:1:1/bn/tanh/conv:4:3:1:1/bn]/"
              "res[conv:6:3:2:1/bn/tanh/conv:6:3:1:1/bn]/tanh/gap/dense:3", 3);
    /* residual MLPs as the named models build them (narrow) */
    check_net("resmlp:7-5x3-3", 4);
    check_net("seq:7/dense:5/bn/tanh/res[dense:5/bn]/tanh/res[dense:5/bn]/tanh/dense:3", 6);
}

int main(void)
{
    test_dense();
    test_pool();
    test_activations();
    test_losses();
    test_batchnorm();
    test_gap_dropout();
    test_residual();
    test_conv();
    TEST_MAIN_END();
}
