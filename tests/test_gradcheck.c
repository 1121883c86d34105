/* test_gradcheck.c - every backward kernel against central finite differences.
 *
 * For a layer with output y the scalar objective is L = sum_i r_i y_i with a fixed random
 * r, so the analytic gradients are the backward pass fed dy = r. For the losses L is the
 * returned loss itself (scale = 1). Each parameter / input value v is moved to v +- eps
 * (eps = 1e-2 on O(1) values), L is accumulated in double, and the derivative is
 * (L+ - L-) / (v+ - v-) using the perturbations actually stored in float.
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
        const float vp = v + EPS, vm = v - EPS;
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

static void test_conv(void)
{
    /* B, C, H, W, K, k, s, p */
    const int geoms[][8] = {
        {2, 2, 6, 5, 3, 3, 1, 1},
        {3, 3, 7, 7, 2, 3, 2, 2}, /* stride 2, padding 2 */
        {1, 1, 5, 5, 2, 2, 2, 0},
        {2, 2, 8, 6, 2, 5, 2, 2},
        {1, 2, 4, 4, 3, 3, 1, 2}, /* output larger than input */
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

int main(void)
{
    test_dense();
    test_conv();
    test_pool();
    test_activations();
    test_losses();
    TEST_MAIN_END();
}
