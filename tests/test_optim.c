/* test_optim.c - optimizers and learning-rate schedules against PyTorch's update rules.
 *
 * Two kinds of reference:
 *  - short scalar sequences worked out by hand and written as literal numbers;
 *  - a double-precision, element-by-element transcription of torch.optim.SGD / Adam / AdamW
 *    (PyTorch 1.13 _single_tensor_* functions), run for several steps with gradients that
 *    change every step and a per-tensor preconditioner scale != 1, on a hand-built network
 *    (odd tensor sizes, to cover vector-loop tails) and on mlp:3-4-2 from nnp_net_create.
 * The optimizer works in float, so results are compared with tolerance 1e-6 relative to
 * max(|want|, 1): parameters and per-step updates are O(1) here, and a parameter that has
 * cancelled to near 0 carries the absolute float error (~1e-7 after 5 steps) of those O(1)
 * terms, not an error relative to its own small size.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "nnprec/alloc.h"
#include "nnprec/net.h"
#include "nnprec/optim.h"
#include "test_util.h"

#define NSTEPS 5

/* ---- a hand-built network: only the fields nnp_optim_step reads ------------------------ */
typedef struct {
    nnp_net net;
    nnp_tensor tensors[4];
    float params[16], grads[16];
} fake_net;

static void fake_net_make(fake_net *f)
{
    static const size_t sizes[4] = {5, 3, 7, 1};
    memset(f, 0, sizeof *f);
    size_t off = 0;
    for (int j = 0; j < 4; j++) {
        f->tensors[j].off = off;
        f->tensors[j].n = sizes[j];
        f->tensors[j].is_bias = j % 2;
        off += sizes[j];
    }
    f->net.n_tensors = 4;
    f->net.tensors = f->tensors;
    f->net.n_params = off;
    f->net.params = f->params;
    f->net.grads = f->grads;
}

/* ---- double reference, transcribed from torch.optim (1.13) ----------------------------- */
typedef struct {
    size_t n;
    double p[64], buf1[64], buf2[64];
    int64_t t;
} ref_state;

/* one step for element i of tensor with scale s; g is the raw gradient */
static void ref_step(const nnp_optim_cfg *c, ref_state *r, size_t i, double g, double s,
                     double lr)
{
    double p = r->p[i];
    double d = s * g;
    if (c->kind == NNP_OPT_SGD) {
        if (c->weight_decay != 0)
            d = d + c->weight_decay * p; /* d_p = d_p.add(param, alpha=weight_decay) */
        if (c->momentum != 0) {
            double buf;
            if (r->t == 1)
                buf = d; /* buf = torch.clone(d_p).detach() */
            else
                buf = c->momentum * r->buf1[i] + (1 - c->dampening) * d;
            r->buf1[i] = buf;
            d = c->nesterov ? d + c->momentum * buf : buf;
        }
        r->p[i] = p - lr * d;
        return;
    }
    if (c->kind == NNP_OPT_ADAMW)
        p = p * (1 - lr * c->weight_decay); /* param.mul_(1 - lr * weight_decay) */
    else if (c->weight_decay != 0)
        d = d + c->weight_decay * p;
    double m = c->beta1 * r->buf1[i] + (1 - c->beta1) * d;
    double v = c->beta2 * r->buf2[i] + (1 - c->beta2) * d * d;
    r->buf1[i] = m;
    r->buf2[i] = v;
    double bc1 = 1 - pow(c->beta1, (double)r->t), bc2 = 1 - pow(c->beta2, (double)r->t);
    double denom = sqrt(v) / sqrt(bc2) + c->eps;
    r->p[i] = p - (lr / bc1) * m / denom;
}

/* gradient of element i at step t: changes sign and size from step to step */
static float grad_at(size_t i, int t) { return (float)(sin(1.3 * (double)i + 0.7 * t) * (1 + t)); }

/* Run NSTEPS steps of cfg on net with scale (NULL allowed) and a varying lr, comparing
 * every parameter with the double reference after every step. */
static void check_against_reference(const char *what, nnp_net *net, const nnp_optim_cfg *cfg,
                                    const double *scale)
{
    ref_state r;
    memset(&r, 0, sizeof r);
    ASSERT_TRUE(net->n_params <= 64);
    r.n = net->n_params;
    for (size_t i = 0; i < r.n; i++) {
        net->params[i] = (float)(0.5 * cos(0.9 * (double)i) + 0.1);
        r.p[i] = net->params[i];
    }
    nnp_optim o;
    ASSERT_OK(nnp_optim_init(&o, cfg, net->n_params));
    int bad = 0;
    for (int t = 1; t <= NSTEPS; t++) {
        double lr = 0.05 * (1.0 + 0.25 * t); /* the schedule may change lr every step */
        for (size_t i = 0; i < r.n; i++)
            net->grads[i] = grad_at(i, t);
        unsigned long allocs = nnp_alloc_count();
        nnp_optim_step(&o, net, lr, scale);
        ASSERT_EQ_INT(nnp_alloc_count(), allocs); /* the step never allocates */
        r.t = t;
        for (int j = 0; j < net->n_tensors; j++) {
            const nnp_tensor *T = &net->tensors[j];
            double s = scale ? scale[j] : 1.0;
            for (size_t k = 0; k < T->n; k++)
                ref_step(cfg, &r, T->off + k, net->grads[T->off + k], s, lr);
        }
        for (size_t i = 0; i < r.n; i++) {
            double got = net->params[i], want = r.p[i];
            if (!(fabs(got - want) <= 1e-6 * (fabs(want) + 1.0))) {
                if (bad++ < 5)
                    TEST_FAIL_("%s: step %d param %zu: %.9g vs reference %.9g", what, t, i, got,
                               want);
            }
        }
    }
    nnp_test_checks++;
    ASSERT_EQ_INT(o.t, NSTEPS);
    nnp_optim_free(&o);
    ASSERT_TRUE(o.buf1 == NULL && o.buf2 == NULL);
}

static nnp_optim_cfg sgd_cfg(double mom, double damp, double wd, int nesterov)
{
    nnp_optim_cfg c = {.kind = NNP_OPT_SGD, .momentum = mom, .dampening = damp,
                       .weight_decay = wd, .nesterov = nesterov,
                       .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8};
    return c;
}

static nnp_optim_cfg adam_cfg(nnp_opt_kind k, double b1, double b2, double eps, double wd)
{
    nnp_optim_cfg c = {.kind = k, .beta1 = b1, .beta2 = b2, .eps = eps, .weight_decay = wd};
    return c;
}

static nnp_optim_cfg lars_cfg(double mom, double wd, double eta, int exclude)
{
    nnp_optim_cfg c = {.kind = NNP_OPT_LARS, .momentum = mom, .weight_decay = wd,
                       .lars_eta = eta, .exclude_bias = exclude};
    return c;
}

static nnp_optim_cfg lamb_cfg(double b1, double b2, double eps, double wd, double clip,
                              int exclude)
{
    nnp_optim_cfg c = {.kind = NNP_OPT_LAMB, .beta1 = b1, .beta2 = b2, .eps = eps,
                       .weight_decay = wd, .lamb_clip = clip, .exclude_bias = exclude};
    return c;
}

static void run_reference_suite(const char *netname, nnp_net *net, const double *scale)
{
    char what[128];
    struct {
        const char *name;
        nnp_optim_cfg cfg;
    } cases[] = {
        {"sgd", sgd_cfg(0, 0, 0, 0)},
        {"sgd+wd", sgd_cfg(0, 0, 0.01, 0)},
        {"sgd+momentum", sgd_cfg(0.9, 0, 0, 0)},
        {"sgd+momentum+dampening", sgd_cfg(0.9, 0.3, 0, 0)},
        {"sgd+momentum+wd", sgd_cfg(0.8, 0, 0.05, 0)},
        {"sgd+nesterov", sgd_cfg(0.9, 0, 0, 1)},
        {"sgd+nesterov+wd", sgd_cfg(0.7, 0, 0.02, 1)},
        {"adam", adam_cfg(NNP_OPT_ADAM, 0.9, 0.999, 1e-8, 0)},
        {"adam+wd", adam_cfg(NNP_OPT_ADAM, 0.8, 0.99, 1e-3, 0.1)},
        {"adamw", adam_cfg(NNP_OPT_ADAMW, 0.9, 0.999, 1e-8, 0.01)},
        {"adamw strong decay", adam_cfg(NNP_OPT_ADAMW, 0.5, 0.9, 1e-6, 0.5)},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        snprintf(what, sizeof what, "%s on %s%s", cases[c].name, netname,
                 scale ? " (scaled)" : "");
        check_against_reference(what, net, &cases[c].cfg, scale);
    }
}

/* ---- literal hand-worked sequences on one scalar parameter ------------------------------ */
typedef struct {
    nnp_net net;
    nnp_tensor t;
    float p, g;
} scalar_net;

static void scalar_make(scalar_net *s, float p0)
{
    memset(s, 0, sizeof *s);
    s->t.n = 1;
    s->net.n_tensors = 1;
    s->net.tensors = &s->t;
    s->net.n_params = 1;
    s->net.params = &s->p;
    s->net.grads = &s->g;
    s->p = p0;
}

static void run_scalar(const nnp_optim_cfg *cfg, double lr, const double *scale,
                       const float *grads, const double *want, int n, const char *what)
{
    scalar_net s;
    scalar_make(&s, 1.0f);
    nnp_optim o;
    ASSERT_OK(nnp_optim_init(&o, cfg, 1));
    for (int t = 0; t < n; t++) {
        s.g = grads[t];
        nnp_optim_step(&o, &s.net, lr, scale);
        nnp_test_checks++;
        if (!(fabs(s.p - want[t]) <= 1e-6 * fabs(want[t]) + 1e-7))
            TEST_FAIL_("%s step %d: %.9g, want %.9g", what, t + 1, s.p, want[t]);
    }
    nnp_optim_free(&o);
}

static void test_hand_worked(void)
{
    const float g[3] = {1.0f, 2.0f, -1.0f};
    /* plain SGD, lr 0.1: 1 - 0.1 = 0.9; 0.9 - 0.2 = 0.7; 0.7 + 0.1 = 0.8 */
    nnp_optim_cfg c = sgd_cfg(0, 0, 0, 0);
    run_scalar(&c, 0.1, NULL, g, (const double[]){0.9, 0.7, 0.8}, 3, "sgd");
    /* scale 0.5 halves each step: 0.95, 0.85, 0.9 */
    run_scalar(&c, 0.1, (const double[]){0.5}, g, (const double[]){0.95, 0.85, 0.9}, 3,
               "sgd scale 0.5");
    /* weight decay 0.5: d = g + 0.5 p
     *   d1 = 1 + 0.5     = 1.5    p1 = 1    - 0.15   = 0.85
     *   d2 = 2 + 0.425   = 2.425  p2 = 0.85 - 0.2425 = 0.6075
     *   d3 = -1 + 0.30375 = -0.69625  p3 = 0.6075 + 0.069625 = 0.677125 */
    c = sgd_cfg(0, 0, 0.5, 0);
    run_scalar(&c, 0.1, NULL, g, (const double[]){0.85, 0.6075, 0.677125}, 3, "sgd wd");
    /* momentum 0.9, lr 0.1: buf starts AT the gradient (no dampening on step 1)
     *   buf1 = 1                    p1 = 0.9
     *   buf2 = 0.9*1 + 2 = 2.9      p2 = 0.9 - 0.29 = 0.61
     *   buf3 = 0.9*2.9 - 1 = 1.61   p3 = 0.61 - 0.161 = 0.449 */
    c = sgd_cfg(0.9, 0, 0, 0);
    run_scalar(&c, 0.1, NULL, g, (const double[]){0.9, 0.61, 0.449}, 3, "momentum");
    /* dampening 0.5: buf1 = 1 (undampened), buf2 = 0.9 + 0.5*2 = 1.9, buf3 = 1.71 - 0.5 = 1.21
     *   p = 0.9, 0.71, 0.589 */
    c = sgd_cfg(0.9, 0.5, 0, 0);
    run_scalar(&c, 0.1, NULL, g, (const double[]){0.9, 0.71, 0.589}, 3, "dampening");
    /* nesterov 0.9: step along g + 0.9*buf with the buffers above
     *   1 + 0.9      = 1.9    p1 = 1 - 0.19     = 0.81
     *   2 + 0.9*2.9  = 4.61   p2 = 0.81 - 0.461 = 0.349
     *   -1 + 0.9*1.61 = 0.449 p3 = 0.349 - 0.0449 = 0.3041 */
    c = sgd_cfg(0.9, 0, 0, 1);
    run_scalar(&c, 0.1, NULL, g, (const double[]){0.81, 0.349, 0.3041}, 3, "nesterov");

    /* Adam with a constant gradient: the bias-corrected m-hat = g and v-hat = g^2 exactly,
     * so each step moves lr * g/(|g| + eps): p_t = 1 - 0.1 t / (1 + 1e-8). A scale of 4
     * on the gradient changes only the eps term: 1/(1 + 1e-8/4). */
    const float g1[3] = {1.0f, 1.0f, 1.0f};
    c = adam_cfg(NNP_OPT_ADAM, 0.9, 0.999, 1e-8, 0);
    double e = 1.0 / (1.0 + 1e-8);
    run_scalar(&c, 0.1, NULL, g1, (const double[]){1 - 0.1 * e, 1 - 0.2 * e, 1 - 0.3 * e}, 3,
               "adam constant gradient");
    run_scalar(&c, 0.1, (const double[]){4.0}, g1,
               (const double[]){1 - 0.1 * e, 1 - 0.2 * e, 1 - 0.3 * e}, 3, "adam scale 4");
    /* Adam with betas (0.5, 0.5), eps 0, lr 0.1, gradients 1 then 3:
     *   t=1: m = 0.5, v = 0.5; m-hat = 1, v-hat = 1            p1 = 1 - 0.1 = 0.9
     *   t=2: m = 0.25 + 1.5 = 1.75, v = 0.25 + 4.5 = 4.75;
     *        m-hat = 1.75/0.75 = 7/3, v-hat = 4.75/0.75 = 19/3
     *        p2 = 0.9 - 0.1 * (7/3)/sqrt(19/3) = 0.9 - 0.1*7/sqrt(57) */
    const float g2[2] = {1.0f, 3.0f};
    nnp_optim_cfg a = adam_cfg(NNP_OPT_ADAM, 0.5, 0.5, 1e-30, 0);
    run_scalar(&a, 0.1, NULL, g2, (const double[]){0.9, 0.9 - 0.7 / sqrt(57.0)}, 2,
               "adam betas 0.5");
    /* AdamW, wd 0.5, lr 0.1, constant gradient: p <- p*(1 - 0.05) then - 0.1*e
     *   p1 = 0.95 - 0.1e,  p2 = 0.95 p1 - 0.1e */
    nnp_optim_cfg w = adam_cfg(NNP_OPT_ADAMW, 0.9, 0.999, 1e-8, 0.5);
    double p1 = 0.95 - 0.1 * e, p2 = 0.95 * p1 - 0.1 * e, p3 = 0.95 * p2 - 0.1 * e;
    run_scalar(&w, 0.1, NULL, g1, (const double[]){p1, p2, p3}, 3, "adamw");
}

static void test_reference_sequences(void)
{
    fake_net f;
    fake_net_make(&f);
    run_reference_suite("hand-built net", &f.net, NULL);
    const double scale4[4] = {0.5, 2.0, 1.25, 3.0};
    run_reference_suite("hand-built net", &f.net, scale4);

    nnp_net *net = NULL;
    ASSERT_OK(nnp_net_create("mlp:3-4-2", (nnp_shape){3, 1, 1}, NNP_ACT_RELU, 1, &net));
    if (!net)
        return;
    ASSERT_EQ_INT(net->n_params, 4 * 3 + 4 + 2 * 4 + 2);
    ASSERT_EQ_INT(net->n_tensors, 4);
    run_reference_suite("mlp:3-4-2", net, NULL);
    const double scale_mlp[4] = {1.164619, 0.713180, 0.252641, 0.2};
    run_reference_suite("mlp:3-4-2", net, scale_mlp);
    nnp_net_free(net);
}

static void test_state_buffers(void)
{
    nnp_optim o;
    nnp_optim_cfg c = sgd_cfg(0, 0, 0, 0);
    ASSERT_OK(nnp_optim_init(&o, &c, 10));
    ASSERT_TRUE(o.buf1 == NULL && o.buf2 == NULL && o.t == 0 && o.n == 10);
    nnp_optim_free(&o);
    c = sgd_cfg(0.9, 0, 0, 0);
    ASSERT_OK(nnp_optim_init(&o, &c, 10));
    ASSERT_TRUE(o.buf1 != NULL && o.buf2 == NULL);
    nnp_optim_free(&o);
    nnp_optim_cfg a = adam_cfg(NNP_OPT_ADAMW, 0.9, 0.999, 1e-8, 0);
    ASSERT_OK(nnp_optim_init(&o, &a, 10));
    ASSERT_TRUE(o.buf1 != NULL && o.buf2 != NULL);
    nnp_optim_free(&o);
    nnp_optim_free(&o); /* idempotent */
    ASSERT_TRUE(o.buf1 == NULL && o.buf2 == NULL);
}

static void test_bad_configs(void)
{
    nnp_optim o;
    nnp_optim_cfg c;
    c = sgd_cfg(0, 0, 0, 1); /* nesterov without momentum */
    ASSERT_STATUS(nnp_optim_init(&o, &c, 4), NNP_ERR_ARG);
    c = sgd_cfg(0.9, 0.1, 0, 1); /* nesterov with dampening */
    ASSERT_STATUS(nnp_optim_init(&o, &c, 4), NNP_ERR_ARG);
    c = sgd_cfg(1.0, 0, 0, 0);
    ASSERT_STATUS(nnp_optim_init(&o, &c, 4), NNP_ERR_ARG);
    c = sgd_cfg(-0.1, 0, 0, 0);
    ASSERT_STATUS(nnp_optim_init(&o, &c, 4), NNP_ERR_ARG);
    c = sgd_cfg(NAN, 0, 0, 0);
    ASSERT_STATUS(nnp_optim_init(&o, &c, 4), NNP_ERR_ARG);
    c = sgd_cfg(0.9, 1.5, 0, 0);
    ASSERT_STATUS(nnp_optim_init(&o, &c, 4), NNP_ERR_ARG);
    c = sgd_cfg(0.9, 0, -1e-4, 0);
    ASSERT_STATUS(nnp_optim_init(&o, &c, 4), NNP_ERR_ARG);
    c = adam_cfg(NNP_OPT_ADAM, 0.9, 0.999, 0.0, 0);
    ASSERT_STATUS(nnp_optim_init(&o, &c, 4), NNP_ERR_ARG);
    c = adam_cfg(NNP_OPT_ADAM, 0.9, 0.999, -1e-8, 0);
    ASSERT_STATUS(nnp_optim_init(&o, &c, 4), NNP_ERR_ARG);
    c = adam_cfg(NNP_OPT_ADAM, 1.0, 0.999, 1e-8, 0);
    ASSERT_STATUS(nnp_optim_init(&o, &c, 4), NNP_ERR_ARG);
    c = adam_cfg(NNP_OPT_ADAMW, 0.9, -0.5, 1e-8, 0);
    ASSERT_STATUS(nnp_optim_init(&o, &c, 4), NNP_ERR_ARG);
    c = adam_cfg(NNP_OPT_ADAMW, 0.9, 0.999, 1e-8, -0.01);
    ASSERT_STATUS(nnp_optim_init(&o, &c, 4), NNP_ERR_ARG);
    c = adam_cfg(NNP_OPT_ADAM, 0.9, 0.999, 1e-8, 0);
    c.nesterov = 1;
    ASSERT_STATUS(nnp_optim_init(&o, &c, 4), NNP_ERR_ARG);
    c = lars_cfg(0.9, 0, 0, 1); /* eta 0 */
    ASSERT_STATUS(nnp_optim_init(&o, &c, 4), NNP_ERR_ARG);
    c = lars_cfg(0.9, 0, -0.001, 1);
    ASSERT_STATUS(nnp_optim_init(&o, &c, 4), NNP_ERR_ARG);
    c = lars_cfg(0.9, 0, NAN, 1);
    ASSERT_STATUS(nnp_optim_init(&o, &c, 4), NNP_ERR_ARG);
    c = lars_cfg(1.0, 0, 0.001, 1); /* lars checks momentum as sgd does */
    ASSERT_STATUS(nnp_optim_init(&o, &c, 4), NNP_ERR_ARG);
    c = lamb_cfg(0.9, 0.999, 1e-6, 0, 0, 1); /* clip 0 */
    ASSERT_STATUS(nnp_optim_init(&o, &c, 4), NNP_ERR_ARG);
    c = lamb_cfg(0.9, 0.999, 1e-6, 0, NAN, 1);
    ASSERT_STATUS(nnp_optim_init(&o, &c, 4), NNP_ERR_ARG);
    c = lamb_cfg(1.0, 0.999, 1e-6, 0, 10, 1); /* lamb checks betas as adam does */
    ASSERT_STATUS(nnp_optim_init(&o, &c, 4), NNP_ERR_ARG);
    c = lamb_cfg(0.9, 0.999, 1e-6, 0, 10, 1);
    c.nesterov = 1;
    ASSERT_STATUS(nnp_optim_init(&o, &c, 4), NNP_ERR_ARG);
    ASSERT_TRUE(o.buf1 == NULL && o.buf2 == NULL); /* nothing left allocated on failure */
    c = lars_cfg(0.9, 0, 0.001, 1);
    c.nesterov = 1; /* lars runs sgd's momentum rules, nesterov included */
    ASSERT_OK(nnp_optim_init(&o, &c, 4));
    ASSERT_TRUE(o.buf1 != NULL && o.buf2 == NULL);
    nnp_optim_free(&o);
    c = lars_cfg(0, 0, 0.001, 1);
    ASSERT_OK(nnp_optim_init(&o, &c, 4));
    ASSERT_TRUE(o.buf1 == NULL && o.buf2 == NULL);
    nnp_optim_free(&o);
    c = lamb_cfg(0.9, 0.999, 1e-6, 0, INFINITY, 1);
    ASSERT_OK(nnp_optim_init(&o, &c, 4));
    ASSERT_TRUE(o.buf1 != NULL && o.buf2 != NULL && o.buf3 != NULL); /* m, v, the step's u */
    nnp_optim_free(&o);
    ASSERT_TRUE(o.buf3 == NULL);
    ASSERT_TRUE(o.buf1 == NULL && o.buf2 == NULL); /* nothing left allocated on failure */
    /* the message names the problem */
    c = sgd_cfg(0, 0, 0, 1);
    nnp_error_clear();
    ASSERT_TRUE(nnp_optim_init(&o, &c, 4) == NNP_ERR_ARG && strstr(nnp_error_msg(), "nesterov"));
    nnp_error_clear();

    nnp_opt_kind k;
    ASSERT_OK(nnp_opt_parse("sgd", &k));
    ASSERT_TRUE(k == NNP_OPT_SGD);
    ASSERT_OK(nnp_opt_parse("adam", &k));
    ASSERT_TRUE(k == NNP_OPT_ADAM);
    ASSERT_OK(nnp_opt_parse("adamw", &k));
    ASSERT_TRUE(k == NNP_OPT_ADAMW);
    ASSERT_OK(nnp_opt_parse("lars", &k));
    ASSERT_TRUE(k == NNP_OPT_LARS && strcmp(nnp_opt_name(k), "lars") == 0);
    ASSERT_OK(nnp_opt_parse("lamb", &k));
    ASSERT_TRUE(k == NNP_OPT_LAMB && strcmp(nnp_opt_name(k), "lamb") == 0);
    ASSERT_TRUE(nnp_optim_layerwise(NNP_OPT_LARS) && nnp_optim_layerwise(NNP_OPT_LAMB) &&
                !nnp_optim_layerwise(NNP_OPT_SGD) && !nnp_optim_layerwise(NNP_OPT_ADAMW));
    ASSERT_STATUS(nnp_opt_parse("rmsprop", &k), NNP_ERR_ARG);
    ASSERT_STATUS(nnp_opt_parse("SGD", &k), NNP_ERR_ARG);
    ASSERT_STATUS(nnp_opt_parse("", &k), NNP_ERR_ARG);
    ASSERT_TRUE(strcmp(nnp_opt_name(NNP_OPT_ADAMW), "adamw") == 0);
    ASSERT_TRUE(strcmp(nnp_opt_name(NNP_OPT_SGD), "sgd") == 0);

    nnp_sched_kind sk;
    ASSERT_OK(nnp_sched_parse("constant", &sk));
    ASSERT_TRUE(sk == NNP_SCHED_CONSTANT);
    ASSERT_OK(nnp_sched_parse("step", &sk));
    ASSERT_TRUE(sk == NNP_SCHED_STEP);
    ASSERT_OK(nnp_sched_parse("cosine", &sk));
    ASSERT_TRUE(sk == NNP_SCHED_COSINE);
    ASSERT_STATUS(nnp_sched_parse("linear", &sk), NNP_ERR_ARG);
    ASSERT_STATUS(nnp_sched_parse("cos", &sk), NNP_ERR_ARG);
}

static void test_schedules(void)
{
    const double pi = 3.14159265358979323846;
    nnp_sched s = {.kind = NNP_SCHED_CONSTANT, .lr = 0.1};
    ASSERT_NEAR(nnp_sched_lr(&s, 0, 0), 0.1, 1e-15);
    ASSERT_NEAR(nnp_sched_lr(&s, 123456, 77), 0.1, 1e-15);

    /* StepLR(step_size=2, gamma=0.5) stepped per epoch: 0.1, 0.1, 0.05, 0.05, 0.025, ... */
    s = (nnp_sched){.kind = NNP_SCHED_STEP, .lr = 0.1, .gamma = 0.5, .step_epochs = 2};
    const double want_step[8] = {0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125};
    for (int e = 0; e < 8; e++)
        ASSERT_NEAR(nnp_sched_lr(&s, 1000 * e + 7, e), want_step[e], 1e-15);

    /* cosine, lr 0.1 -> eta_min 0.001 over 100 steps */
    s = (nnp_sched){.kind = NNP_SCHED_COSINE, .lr = 0.1, .min_lr = 0.001, .total_steps = 100};
    ASSERT_NEAR(nnp_sched_lr(&s, 0, 0), 0.1, 1e-15);
    ASSERT_NEAR(nnp_sched_lr(&s, 50, 0), 0.0505, 1e-15); /* midpoint: (lr + eta_min)/2 */
    ASSERT_NEAR(nnp_sched_lr(&s, 25, 0), 0.001 + 0.099 * (1 + cos(pi / 4)) / 2, 1e-15);
    ASSERT_NEAR(nnp_sched_lr(&s, 100, 3), 0.001, 1e-15);
    ASSERT_NEAR(nnp_sched_lr(&s, 250, 9), 0.001, 1e-15); /* clamped past the end */
    for (int t = 1; t <= 100; t++) /* monotone decay */
        if (!(nnp_sched_lr(&s, t, 0) <= nnp_sched_lr(&s, t - 1, 0)))
            TEST_FAIL_("cosine not monotone at step %d", t);

    /* warmup of 10 steps ramps lr*(step+1)/10, then cosine over the remaining 100 */
    s = (nnp_sched){.kind = NNP_SCHED_COSINE, .lr = 0.1, .min_lr = 0.001, .total_steps = 110,
                    .warmup = 10};
    ASSERT_NEAR(nnp_sched_lr(&s, 0, 0), 0.01, 1e-15);
    ASSERT_NEAR(nnp_sched_lr(&s, 4, 0), 0.05, 1e-15);
    ASSERT_NEAR(nnp_sched_lr(&s, 9, 0), 0.1, 1e-15);
    ASSERT_NEAR(nnp_sched_lr(&s, 10, 0), 0.1, 1e-15);
    ASSERT_NEAR(nnp_sched_lr(&s, 60, 0), 0.0505, 1e-15);
    ASSERT_NEAR(nnp_sched_lr(&s, 110, 0), 0.001, 1e-15);

    /* warmup with constant and step schedules */
    s = (nnp_sched){.kind = NNP_SCHED_CONSTANT, .lr = 0.2, .warmup = 4};
    ASSERT_NEAR(nnp_sched_lr(&s, 0, 0), 0.05, 1e-15);
    ASSERT_NEAR(nnp_sched_lr(&s, 2, 0), 0.15, 1e-15);
    ASSERT_NEAR(nnp_sched_lr(&s, 3, 0), 0.2, 1e-15);
    ASSERT_NEAR(nnp_sched_lr(&s, 4, 0), 0.2, 1e-15);
    s = (nnp_sched){.kind = NNP_SCHED_STEP, .lr = 0.1, .gamma = 0.1, .step_epochs = 1,
                    .warmup = 5};
    ASSERT_NEAR(nnp_sched_lr(&s, 1, 0), 0.04, 1e-15);
    ASSERT_NEAR(nnp_sched_lr(&s, 5, 0), 0.1, 1e-15);
    ASSERT_NEAR(nnp_sched_lr(&s, 50, 2), 0.001, 1e-15);

    /* degenerate cosine: total_steps <= warmup gives T = 1, so eta_min after warmup */
    s = (nnp_sched){.kind = NNP_SCHED_COSINE, .lr = 0.1, .min_lr = 0.0, .total_steps = 0};
    ASSERT_NEAR(nnp_sched_lr(&s, 0, 0), 0.1, 1e-15);
    ASSERT_NEAR(nnp_sched_lr(&s, 1, 0), 0.0, 1e-15);
}

/* --allreduce sharded: p "ranks", each with its own optimizer, update only their ranges
 * [16k/p, 16(k+1)/p) of the hand-built net (ranges cut through tensors); stitched together,
 * parameters, state and the requested per-tensor sums equal one full step's, bit for bit,
 * over NSTEPS steps, for every update rule. */
static void test_range_steps(void)
{
    struct {
        const char *name;
        nnp_optim_cfg cfg;
    } cases[] = {
        {"sgd+wd", sgd_cfg(0, 0, 0.01, 0)},
        {"sgd+momentum+dampening", sgd_cfg(0.9, 0.3, 0, 0)},
        {"sgd+nesterov+wd", sgd_cfg(0.7, 0, 0.02, 1)},
        {"adam+wd", adam_cfg(NNP_OPT_ADAM, 0.8, 0.99, 1e-3, 0.1)},
        {"adamw", adam_cfg(NNP_OPT_ADAMW, 0.9, 0.999, 1e-8, 0.01)},
    };
    const double scale[4] = {0.5, 2.0, 1.25, 3.0};
    enum { P = 3 };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        fake_net full, part[P];
        fake_net_make(&full);
        nnp_optim of, op[P];
        ASSERT_OK(nnp_optim_init(&of, &cases[c].cfg, full.net.n_params));
        size_t n = full.net.n_params, lo[P], hi[P];
        for (int k = 0; k < P; k++) {
            fake_net_make(&part[k]);
            ASSERT_OK(nnp_optim_init(&op[k], &cases[c].cfg, n));
            lo[k] = n * (size_t)k / P;
            hi[k] = n * (size_t)(k + 1) / P;
        }
        for (size_t i = 0; i < n; i++) {
            full.params[i] = (float)(0.1 * (double)i - 0.7);
            for (int k = 0; k < P; k++)
                part[k].params[i] = full.params[i];
        }
        int same = 1;
        for (int t = 1; t <= NSTEPS; t++) {
            double sf[8], sp[P][8];
            for (size_t i = 0; i < n; i++) {
                full.grads[i] = grad_at(i, t);
                for (int k = 0; k < P; k++)
                    part[k].grads[i] = full.grads[i];
            }
            nnp_optim_want_sums(&of, sf, lo[1], hi[1]);
            nnp_optim_step(&of, &full.net, 0.01 * t, scale);
            for (int k = 0; k < P; k++) {
                nnp_optim_want_sums(&op[k], sp[k], lo[k], hi[k]);
                nnp_optim_step_range(&op[k], &part[k].net, 0.01 * t, scale, lo[k], hi[k]);
            }
            /* the allgather: every part takes the others' ranges */
            for (int k = 0; k < P; k++)
                for (int q = 0; q < P; q++)
                    memcpy(part[k].params + lo[q], part[q].params + lo[q],
                           (hi[q] - lo[q]) * sizeof(float));
            for (int k = 0; k < P; k++) {
                same &= memcmp(part[k].params, full.params, n * sizeof(float)) == 0;
                same &= op[k].t == of.t;
                if (of.buf1)
                    same &= memcmp(op[k].buf1 + lo[k], of.buf1 + lo[k],
                                   (hi[k] - lo[k]) * sizeof(float)) == 0;
                if (of.buf2)
                    same &= memcmp(op[k].buf2 + lo[k], of.buf2 + lo[k],
                                   (hi[k] - lo[k]) * sizeof(float)) == 0;
            }
            same &= memcmp(sp[1], sf, sizeof sf) == 0;
        }
        if (!same)
            TEST_FAIL_("%s: range steps over %d parts differ from the full step", cases[c].name, P);
        nnp_test_checks++;
        nnp_optim_free(&of);
        for (int k = 0; k < P; k++)
            nnp_optim_free(&op[k]);
    }
}

/* ---- LARS and LAMB ------------------------------------------------------------------------
 * A tiny network of a weight tensor w (2 elements, 2-D) and a bias b (1 element), so that
 * every number below can be worked out by hand. */
typedef struct {
    nnp_net net;
    nnp_tensor t[2];
    float p[3], g[3];
} wb_net;

static void wb_make(wb_net *f, float w0, float w1, float b, float g0, float g1, float gb)
{
    memset(f, 0, sizeof *f);
    f->t[0] = (nnp_tensor){.off = 0, .n = 2, .ndim = 2, .is_bias = 0, .name = "w"};
    f->t[1] = (nnp_tensor){.off = 2, .n = 1, .ndim = 1, .is_bias = 1, .name = "b"};
    f->net.n_tensors = 2;
    f->net.tensors = f->t;
    f->net.n_params = 3;
    f->net.params = f->p;
    f->net.grads = f->g;
    f->p[0] = w0, f->p[1] = w1, f->p[2] = b;
    f->g[0] = g0, f->g[1] = g1, f->g[2] = gb;
}

/* nsteps steps of cfg at lr with constant gradients and scale; the parameters must equal
 * want[0..3) to 1e-6 relative to max(|want|, 1). */
static void run_wb(const char *what, const nnp_optim_cfg *cfg, wb_net *f, double lr,
                   const double *scale, int nsteps, const double *want)
{
    nnp_optim o;
    ASSERT_OK(nnp_optim_init(&o, cfg, 3));
    for (int t = 0; t < nsteps; t++) {
        unsigned long allocs = nnp_alloc_count();
        nnp_optim_step(&o, &f->net, lr, scale);
        ASSERT_EQ_INT(nnp_alloc_count(), allocs);
    }
    for (int i = 0; i < 3; i++) {
        nnp_test_checks++;
        if (!(fabs(f->p[i] - want[i]) <= 1e-6 * (fabs(want[i]) + 1.0)))
            TEST_FAIL_("%s: param %d = %.9g, want %.9g", what, i, f->p[i], want[i]);
    }
    nnp_optim_free(&o);
}

static void test_lars_hand_worked(void)
{
    wb_net f;
    /* w = (3, 4): ||w|| = 5; g = (0.6, 0.8): ||g|| = 1; eta 0.01, wd 0.1, lr 1, momentum 0.9.
     * lambda = 0.01*5/(1 + 0.1*5) = 1/30; d = g + 0.1 w = (0.9, 1.2);
     * step 1: buf = lambda*d = (0.03, 0.04); w = (2.97, 3.96).
     * The bias (b = 0.5, g = 0.2) is excluded: momentum SGD without decay, buf = 0.2, b = 0.3 */
    nnp_optim_cfg c = lars_cfg(0.9, 0.1, 0.01, 1);
    wb_make(&f, 3, 4, 0.5f, 0.6f, 0.8f, 0.2f);
    run_wb("lars step 1", &c, &f, 1.0, NULL, 1, (const double[]){2.97, 3.96, 0.3});
    /* step 2 (same gradients): w = 0.99*(3, 4), ||w|| = 4.95;
     * lambda2 = 0.01*4.95/(1 + 0.495); d2 = (0.6 + 0.297, 0.8 + 0.396);
     * buf2 = 0.9*(0.03, 0.04) + lambda2*d2; bias: buf2 = 0.9*0.2 + 0.2 = 0.38, b = -0.08 */
    double l2 = 0.0495 / 1.495;
    double want2[3] = {2.97 - (0.027 + l2 * 0.897), 3.96 - (0.036 + l2 * 1.196), 0.3 - 0.38};
    wb_make(&f, 3, 4, 0.5f, 0.6f, 0.8f, 0.2f);
    run_wb("lars step 2", &c, &f, 1.0, NULL, 2, want2);
    /* the bias adapted too (exclude off): lambda_b = 0.01*0.5/(0.2 + 0.1*0.5) = 0.02,
     * d = 0.2 + 0.05 = 0.25, b = 0.5 - 0.02*0.25 = 0.495 */
    c = lars_cfg(0.9, 0.1, 0.01, 0);
    wb_make(&f, 3, 4, 0.5f, 0.6f, 0.8f, 0.2f);
    run_wb("lars bias adapted", &c, &f, 1.0, NULL, 1, (const double[]){2.97, 3.96, 0.495});
    /* zero weights: ratio 1, d = g: w = -lr*g = (-0.6, -0.8) (lr 1) */
    c = lars_cfg(0.9, 0.1, 0.01, 1);
    wb_make(&f, 0, 0, 0.5f, 0.6f, 0.8f, 0.2f);
    run_wb("lars zero weights", &c, &f, 1.0, NULL, 1, (const double[]){-0.6, -0.8, 0.3});
    /* zero gradient: ratio 1, d = wd*w = (0.3, 0.4): w = (2.7, 3.6); the bias stays */
    wb_make(&f, 3, 4, 0.5f, 0, 0, 0);
    run_wb("lars zero gradient", &c, &f, 1.0, NULL, 1, (const double[]){2.7, 3.6, 0.5});
    /* plain (momentum 0), lr 0.5: w = (3, 4) - 0.5/30*(0.9, 1.2) = (2.985, 3.98) */
    c = lars_cfg(0, 0.1, 0.01, 1);
    wb_make(&f, 3, 4, 0.5f, 0.6f, 0.8f, 0.2f);
    run_wb("lars no momentum", &c, &f, 0.5, NULL, 1, (const double[]){2.985, 3.98, 0.4});

    /* --precond + lars: with wd 0 the ratio divides out any per-tensor gradient scale:
     * lambda*s*g = eta*||w||*g/||g|| for every s > 0, over several steps with momentum;
     * the bias (excluded) is not adapted, so its step does scale with s */
    c = lars_cfg(0.9, 0.0, 0.02, 1);
    wb_net a, b;
    nnp_optim oa, ob;
    ASSERT_OK(nnp_optim_init(&oa, &c, 3));
    ASSERT_OK(nnp_optim_init(&ob, &c, 3));
    wb_make(&a, 0.3f, -0.7f, 0.1f, 0, 0, 0);
    wb_make(&b, 0.3f, -0.7f, 0.1f, 0, 0, 0);
    const double s1[2] = {1.0, 1.0}, s7[2] = {7.25, 1.0};
    for (int t = 1; t <= NSTEPS; t++) {
        for (int i = 0; i < 3; i++)
            a.g[i] = b.g[i] = grad_at((size_t)i, t);
        nnp_optim_step(&oa, &a.net, 0.1, s1);
        nnp_optim_step(&ob, &b.net, 0.1, s7);
    }
    for (int i = 0; i < 3; i++) {
        nnp_test_checks++;
        if (!(fabs(a.p[i] - b.p[i]) <= 1e-6 * (fabs(a.p[i]) + 1.0)))
            TEST_FAIL_("lars scale 7.25 vs 1, wd 0: param %d %.9g vs %.9g", i, b.p[i], a.p[i]);
    }
    nnp_optim_free(&oa);
    nnp_optim_free(&ob);
}

static void test_lamb_hand_worked(void)
{
    wb_net f;
    /* step 1, betas (0.9, 0.999), eps 1e-12: m_hat = g, v_hat = g^2, so
     * r = g/|g| = (1, 1) (to ~1e-7), u = r + wd*w = (1 + 0.3, 1 + 0.4), ||u|| = sqrt(3.65);
     * ratio = min(||w|| = 5, 10)/sqrt(3.65); w <- w - lr*ratio*u (lr 0.1).
     * The bias is excluded: an Adam step, b = 0.5 - 0.1*1 = 0.4 */
    nnp_optim_cfg c = lamb_cfg(0.9, 0.999, 1e-12, 0.1, 10, 1);
    double q = 0.1 * 5 / sqrt(3.65);
    wb_make(&f, 3, 4, 0.5f, 0.6f, 0.8f, 0.2f);
    run_wb("lamb step 1", &c, &f, 0.1, NULL, 1, (const double[]){3 - q * 1.3, 4 - q * 1.4, 0.4});
    /* the clip: w = (30, 40), ||w|| = 50 > 10: ratio = 10/||u||, u = (1 + 3, 1 + 4) */
    wb_make(&f, 30, 40, 0.5f, 0.6f, 0.8f, 0.2f);
    q = 0.1 * 10 / sqrt(41.0);
    run_wb("lamb clip", &c, &f, 0.1, NULL, 1, (const double[]){30 - q * 4, 40 - q * 5, 0.4});
    /* no clip (inf): ratio = 50/sqrt(41) */
    nnp_optim_cfg ci = lamb_cfg(0.9, 0.999, 1e-12, 0.1, INFINITY, 1);
    wb_make(&f, 30, 40, 0.5f, 0.6f, 0.8f, 0.2f);
    q = 0.1 * 50 / sqrt(41.0);
    run_wb("lamb no clip", &ci, &f, 0.1, NULL, 1, (const double[]){30 - q * 4, 40 - q * 5, 0.4});
    /* the bias adapted too (exclude off): u_b = 1 + 0.1*0.5 = 1.05, ratio = 0.5/1.05,
     * b = 0.5 - 0.1*0.5 = 0.45 */
    c = lamb_cfg(0.9, 0.999, 1e-12, 0.1, 10, 0);
    wb_make(&f, 3, 4, 0.5f, 0.6f, 0.8f, 0.2f);
    q = 0.1 * 5 / sqrt(3.65);
    run_wb("lamb bias adapted", &c, &f, 0.1, NULL, 1,
           (const double[]){3 - q * 1.3, 4 - q * 1.4, 0.45});
    /* zero weights: ratio 1, u = r = (1, 1): w = (-0.1, -0.1) */
    c = lamb_cfg(0.9, 0.999, 1e-12, 0.1, 10, 1);
    wb_make(&f, 0, 0, 0.5f, 0.6f, 0.8f, 0.2f);
    run_wb("lamb zero weights", &c, &f, 0.1, NULL, 1, (const double[]){-0.1, -0.1, 0.4});
    /* zero gradient: m = v = 0, r = 0, u = wd*w = (0.3, 0.4), ||u|| = 0.5, ratio 10:
     * w = (3, 4) - 0.1*10*(0.3, 0.4) = (2.7, 3.6); the bias (no decay) stays */
    wb_make(&f, 3, 4, 0.5f, 0, 0, 0);
    run_wb("lamb zero gradient", &c, &f, 0.1, NULL, 1, (const double[]){2.7, 3.6, 0.5});
    /* zero gradient and no decay: u = 0, ratio 1, nothing moves */
    c = lamb_cfg(0.9, 0.999, 1e-12, 0, 10, 1);
    wb_make(&f, 3, 4, 0.5f, 0, 0, 0);
    run_wb("lamb zero update", &c, &f, 0.1, NULL, 1, (const double[]){3, 4, 0.5});
    /* two steps, betas (0.5, 0.5), eps 1e-12, wd 0, gradients g then 3g (g = (0.6, 0.8)):
     * per element m_hat = 7/3 g_i, v_hat = 19/3 g_i^2 (see "adam betas 0.5" above), so
     * r = 7/sqrt(57) (1, 1) on step 2, ||r|| = 7 sqrt(2/57), ratio = ||w1||/||r||; step 1
     * moves w by 0.1*5/sqrt(2)*(1, 1) */
    c = lamb_cfg(0.5, 0.5, 1e-12, 0, 10, 1);
    wb_make(&f, 3, 4, 0.5f, 0.6f, 0.8f, 0.2f);
    nnp_optim o;
    ASSERT_OK(nnp_optim_init(&o, &c, 3));
    nnp_optim_step(&o, &f.net, 0.1, NULL);
    double w1[2] = {3 - 0.5 / sqrt(2.0), 4 - 0.5 / sqrt(2.0)};
    double n1 = sqrt(w1[0] * w1[0] + w1[1] * w1[1]);
    f.g[0] = 1.8f, f.g[1] = 2.4f, f.g[2] = 0.6f;
    nnp_optim_step(&o, &f.net, 0.1, NULL);
    double mv = 0.1 * n1 / sqrt(2.0); /* lr * ratio * r_i = 0.1 * n1/(7 sqrt(2/57)) * 7/sqrt(57) */
    double want[3] = {w1[0] - mv, w1[1] - mv, 0.4 - 0.7 / sqrt(57.0)};
    for (int i = 0; i < 3; i++) {
        nnp_test_checks++;
        if (!(fabs(f.p[i] - want[i]) <= 1e-6 * (fabs(want[i]) + 1.0)))
            TEST_FAIL_("lamb two steps: param %d = %.9g, want %.9g", i, f.p[i], want[i]);
    }
    ASSERT_EQ_INT(o.t, 2);
    nnp_optim_free(&o);
}

/* Several steps of the published rules in double, per whole tensor, with gradients that
 * change every step and a preconditioner scale, on the hand-built net (tensors 1 and 3 are
 * biases) and on mlp:3-4-2. LARS: Algorithm 1 of You, Gitman & Ginsburg 2017 at a constant
 * lr (v <- m v + lr*lambda*(g + wd w); w <- w - v); LAMB: Algorithm 2 of You et al. 2019. */
static void check_layerwise_reference(const char *what, nnp_net *net, const nnp_optim_cfg *c,
                                      const double *scale, double lr)
{
    size_t n = net->n_params;
    double *p = calloc(4 * n, sizeof(double)), *m = p + n, *v = p + 2 * n, *u = p + 3 * n;
    ASSERT_TRUE(p != NULL);
    if (!p)
        return;
    for (size_t i = 0; i < n; i++) {
        net->params[i] = (float)(0.5 * cos(0.9 * (double)i) + 0.1);
        p[i] = net->params[i];
    }
    nnp_optim o;
    ASSERT_OK(nnp_optim_init(&o, c, n));
    int bad = 0;
    for (int t = 1; t <= NSTEPS; t++) {
        for (size_t i = 0; i < n; i++)
            net->grads[i] = grad_at(i, t);
        nnp_optim_step(&o, net, lr, scale);
        for (int j = 0; j < net->n_tensors; j++) {
            const nnp_tensor *T = &net->tensors[j];
            double s = scale ? scale[j] : 1.0, *w = p + T->off, *mj = m + T->off,
                   *vj = v + T->off;
            int ex = c->exclude_bias && (T->is_bias || T->ndim <= 1);
            double wd = ex ? 0 : c->weight_decay, wn = 0, xn = 0;
            if (c->kind == NNP_OPT_LARS) {
                for (size_t k = 0; k < T->n; k++) {
                    double g = s * net->grads[T->off + k];
                    wn += w[k] * w[k];
                    xn += g * g;
                }
                wn = sqrt(wn), xn = sqrt(xn);
                double lam = ex || wn == 0 || xn == 0 ? 1 : c->lars_eta * wn / (xn + wd * wn);
                for (size_t k = 0; k < T->n; k++) {
                    double g = s * net->grads[T->off + k];
                    mj[k] = c->momentum * mj[k] + lr * lam * (g + wd * w[k]);
                    w[k] -= mj[k];
                }
            } else {
                double bc1 = 1 - pow(c->beta1, t), bc2 = 1 - pow(c->beta2, t);
                for (size_t k = 0; k < T->n; k++) {
                    double g = s * net->grads[T->off + k];
                    mj[k] = c->beta1 * mj[k] + (1 - c->beta1) * g;
                    vj[k] = c->beta2 * vj[k] + (1 - c->beta2) * g * g;
                    u[k] = (mj[k] / bc1) / (sqrt(vj[k] / bc2) + c->eps) + wd * w[k];
                    wn += w[k] * w[k];
                    xn += u[k] * u[k];
                }
                wn = sqrt(wn), xn = sqrt(xn);
                double phi = wn < c->lamb_clip ? wn : c->lamb_clip;
                double ratio = ex || wn == 0 || xn == 0 ? 1 : phi / xn;
                for (size_t k = 0; k < T->n; k++)
                    w[k] -= lr * ratio * u[k];
            }
        }
        for (size_t i = 0; i < n; i++)
            if (!(fabs(net->params[i] - p[i]) <= 1e-6 * (fabs(p[i]) + 1.0)) && bad++ < 5)
                TEST_FAIL_("%s: step %d param %zu: %.9g vs reference %.9g", what, t, i,
                           net->params[i], p[i]);
        nnp_test_checks++;
    }
    nnp_optim_free(&o);
    free(p);
}

static void test_layerwise_reference(void)
{
    fake_net f;
    fake_net_make(&f);
    for (int j = 0; j < 4; j++)
        f.tensors[j].ndim = f.tensors[j].is_bias ? 1 : 2;
    nnp_net *mlp = NULL;
    ASSERT_OK(nnp_net_create("mlp:3-4-2", (nnp_shape){3, 1, 1}, NNP_ACT_RELU, 1, &mlp));
    if (!mlp)
        return;
    const double scale4[4] = {0.5, 2.0, 1.25, 3.0};
    struct {
        const char *name;
        nnp_optim_cfg cfg;
        double lr;
    } cases[] = {
        {"lars", lars_cfg(0.9, 0, 0.001, 1), 1.0},
        {"lars+wd", lars_cfg(0.9, 5e-4, 0.02, 1), 0.5},
        {"lars+wd biases adapted", lars_cfg(0.8, 0.01, 0.05, 0), 0.3},
        {"lamb", lamb_cfg(0.9, 0.999, 1e-6, 0, 10, 1), 0.01},
        {"lamb+wd", lamb_cfg(0.9, 0.999, 1e-6, 0.01, 10, 1), 0.02},
        {"lamb+wd clip 0.3, biases adapted", lamb_cfg(0.8, 0.99, 1e-3, 0.1, 0.3, 0), 0.05},
    };
    char what[160];
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
        for (int sc = 0; sc < 2; sc++) {
            snprintf(what, sizeof what, "%s on the hand-built net%s", cases[k].name,
                     sc ? " (scaled)" : "");
            check_layerwise_reference(what, &f.net, &cases[k].cfg, sc ? scale4 : NULL,
                                      cases[k].lr);
            snprintf(what, sizeof what, "%s on mlp:3-4-2%s", cases[k].name, sc ? " (scaled)" : "");
            check_layerwise_reference(what, mlp, &cases[k].cfg, sc ? scale4 : NULL, cases[k].lr);
        }
    nnp_net_free(mlp);

    /* tensors of many 32-element blocks with tails (the sums' vector blocks), through the
     * AVX2 sums where the CPU has them and through the portable ones */
    nnp_net *big = NULL;
    ASSERT_OK(nnp_net_create("mlp:37-45-9", (nnp_shape){37, 1, 1}, NNP_ACT_RELU, 1, &big));
    if (!big)
        return;
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
        for (int base = 0; base < 2; base++) {
            nnp_optim_set_sums_isa(base ? NNP_OPT_SUMS_PORTABLE : NNP_OPT_SUMS_AUTO);
            snprintf(what, sizeof what, "%s on mlp:37-45-9 (%s sums)", cases[k].name,
                     base ? "portable" : "CPU's");
            check_layerwise_reference(what, big, &cases[k].cfg, scale4, cases[k].lr);
        }
    nnp_optim_set_sums_isa(NNP_OPT_SUMS_AUTO);
    nnp_net_free(big);
}

/* Runs 6 steps of cfg on net from fixed parameters over P ranges ("ranks", each with its
 * own optimizer, as --allreduce sharded) and returns the parameters and the state in out
 * (3n floats) and every pass-1 norm in nrm (2T*6*P doubles). keep: the optimizers keep
 * ||w||^2 from their update passes; touch: before step 4 the parameters are scaled by 1.5
 * outside the optimizer, which then hears of it. */
#define KEPT_NORMS (2 * 4 * 6 * 3)
static void kept_run(const nnp_optim_cfg *cfg, nnp_net *net, int P, int keep, int touch,
                     float *out, double *nrm)
{
    const size_t n = net->n_params, T = (size_t)net->n_tensors;
    const double scale[4] = {0.5, 2.0, 1.25, 3.0};
    nnp_optim o[3];
    ASSERT_TRUE(P <= 3 && T == 4);
    for (int r = 0; r < P; r++) {
        ASSERT_OK(nnp_optim_init(&o[r], cfg, n));
        if (keep)
            ASSERT_OK(nnp_optim_keep_norms(&o[r], net->n_tensors));
    }
    for (size_t i = 0; i < n; i++)
        net->params[i] = (float)(0.3 * sin(1.7 * (double)i) - 0.05);
    for (int t = 1; t <= 6; t++) {
        for (size_t i = 0; i < n; i++)
            net->grads[i] = grad_at(i, t);
        if (touch && t == 4) {
            for (size_t i = 0; i < n; i++)
                net->params[i] *= 1.5f;
            for (int r = 0; r < P; r++)
                nnp_optim_params_changed(&o[r]);
        }
        for (int r = 0; r < P; r++) {
            /* shares cut through tensors: [r*n/P, (r+1)*n/P) */
            const size_t lo = (size_t)r * n / (size_t)P, hi = (size_t)(r + 1) * n / (size_t)P;
            double *part = nrm + ((size_t)(t - 1) * (size_t)P + (size_t)r) * 2 * T;
            if (P == 1 && t % 2) { /* the one-call step; its norms are not returned */
                nnp_optim_step(&o[r], net, 0.05, scale);
                memset(part, 0, 2 * T * sizeof(double));
            } else {
                nnp_optim_norms_range(&o[r], net, scale, lo, hi, part);
                nnp_optim_apply_range(&o[r], net, 0.05, scale, lo, hi, part);
            }
        }
    }
    memcpy(out, net->params, n * sizeof(float));
    memset(out + n, 0, 2 * n * sizeof(float));
    for (int r = 0; r < P; r++) {
        const size_t lo = (size_t)r * n / (size_t)P, hi = (size_t)(r + 1) * n / (size_t)P;
        if (o[r].buf1)
            memcpy(out + n + lo, o[r].buf1 + lo, (hi - lo) * sizeof(float));
        if (o[r].buf2)
            memcpy(out + 2 * n + lo, o[r].buf2 + lo, (hi - lo) * sizeof(float));
        nnp_optim_free(&o[r]);
    }
}

/* nnp_optim_keep_norms: the norms kept from the update pass give the same bits as norms
 * summed again - the parameters, the state and the pass-1 norms of every step - over one
 * range and over shares that cut tensors, and after the parameters change outside the
 * optimizer (nnp_optim_params_changed) */
static void test_kept_norms(void)
{
    nnp_net *net = NULL;
    /* tensors of 61*33 = 2013 (one chunk of pass 2 and a bit: W2_CHUNK is 2048), 33, 231, 7 */
    ASSERT_OK(nnp_net_create("mlp:61-33-7", (nnp_shape){61, 1, 1}, NNP_ACT_RELU, 1, &net));
    if (!net)
        return;
    const size_t n = net->n_params;
    float *a = calloc(6 * n, sizeof(float)), *b = a ? a + 3 * n : NULL;
    double na[KEPT_NORMS], nb[KEPT_NORMS];
    ASSERT_TRUE(a != NULL);
    const nnp_optim_cfg cases[] = {lars_cfg(0.9, 1e-3, 0.02, 1), lars_cfg(0, 0.01, 0.01, 0),
                                   lars_cfg(0.8, 0, 0.05, 1),
                                   lamb_cfg(0.9, 0.999, 1e-6, 0.01, 10, 1),
                                   lamb_cfg(0.8, 0.99, 1e-4, 0.1, 0.5, 0)};
    for (size_t k = 0; a && k < sizeof cases / sizeof cases[0]; k++)
        for (int P = 1; P <= 3; P += 2)
            for (int touch = 0; touch < 2; touch++) {
                memset(na, 0, sizeof na);
                memset(nb, 0, sizeof nb);
                kept_run(&cases[k], net, P, 0, touch, a, na);
                kept_run(&cases[k], net, P, 1, touch, b, nb);
                if (memcmp(a, b, 3 * n * sizeof(float)) != 0 || memcmp(na, nb, sizeof na) != 0)
                    TEST_FAIL_("%s case %zu, %d range(s)%s: kept norms give other bits than "
                               "norms summed again",
                               nnp_opt_name(cases[k].kind), k, P,
                               touch ? ", parameters changed before step 4" : "");
                nnp_test_checks++;
            }
    free(a);
    /* a bigger tensor than one chunk: mlp:700-5-3 has a 3,500-element weight */
    nnp_net *wide = NULL;
    ASSERT_OK(nnp_net_create("mlp:700-5-3", (nnp_shape){700, 1, 1}, NNP_ACT_RELU, 1, &wide));
    if (wide) {
        const size_t nw = wide->n_params;
        float *c = calloc(6 * nw, sizeof(float));
        ASSERT_TRUE(c != NULL);
        for (size_t k = 0; c && k < sizeof cases / sizeof cases[0]; k++) {
            memset(na, 0, sizeof na);
            memset(nb, 0, sizeof nb);
            kept_run(&cases[k], wide, 1, 0, 1, c, na);
            kept_run(&cases[k], wide, 1, 1, 1, c + 3 * nw, nb);
            if (memcmp(c, c + 3 * nw, 3 * nw * sizeof(float)) != 0 ||
                memcmp(na, nb, sizeof na) != 0)
                TEST_FAIL_("%s case %zu on mlp:700-5-3: kept norms give other bits",
                           nnp_opt_name(cases[k].kind), k);
            nnp_test_checks++;
        }
        free(c);
        nnp_net_free(wide);
    }
    nnp_net_free(net);
}

/* The sums of squares' AVX-512, AVX2 and portable variants give the same bits: the same
 * parameters, state and pass-1 norms after steps of LARS and LAMB, whole and over ranges
 * (pass 1 and 2), with LARS's ||w||^2 summed again or kept from the update pass (whose
 * 2048-element chunks cut the first weight, 61*40 elements, once). */
static void test_sum_paths_same_bits(void)
{
    static const nnp_opt_sums_isa isas[] = {NNP_OPT_SUMS_PORTABLE, NNP_OPT_SUMS_AVX2,
                                            NNP_OPT_SUMS_AVX512};
    static const char *const names[] = {"auto", "portable", "AVX2", "AVX-512"};
    const nnp_opt_sums_isa widest = nnp_optim_set_sums_isa(NNP_OPT_SUMS_AUTO);
    if (widest < NNP_OPT_SUMS_AVX512)
        fprintf(stderr, "  optim: this CPU runs the sums up to %s; the wider ones are not run\n",
                names[widest]);
    nnp_net *net = NULL;
    ASSERT_OK(nnp_net_create("mlp:61-40-7", (nnp_shape){61, 1, 1}, NNP_ACT_RELU, 1, &net));
    if (!net)
        return;
    const size_t n = net->n_params;
    const double scale[4] = {0.5, 2.0, 1.25, 3.0};
    const nnp_optim_cfg cases[] = {lars_cfg(0.9, 1e-3, 0.02, 1), lars_cfg(0, 0.01, 0.01, 0),
                                   lamb_cfg(0.9, 0.999, 1e-6, 0.01, 10, 1),
                                   lamb_cfg(0.8, 0.99, 1e-4, 0.1, 0.5, 0)};
    float *keep = calloc(3 * n, sizeof(float));
    double norms[8], keep_norms[8]; /* the pass-1 norms of the last step */
    ASSERT_TRUE(keep != NULL && net->n_tensors == 4);
    for (size_t k = 0; keep && k < sizeof cases / sizeof cases[0]; k++)
        for (int kept = 0; kept < 2; kept++)
            for (int v = 0; v < 3 && isas[v] <= widest; v++) {
                nnp_optim_set_sums_isa(isas[v]);
                nnp_optim o;
                ASSERT_OK(nnp_optim_init(&o, &cases[k], n));
                if (kept)
                    ASSERT_OK(nnp_optim_keep_norms(&o, net->n_tensors));
                /* one large element in 1000 and the rest about 1e-8 of it (their squares
                 * near the large sums' last bit): the double additions round, and an order
                 * other than the portable one shows in the sum (on values of one scale they
                 * are exact whatever the order) */
                for (size_t i = 0; i < n; i++)
                    net->params[i] = (float)(i % 1000 == 3 ? 1e4 : 1e-4 * (1 + 0.5 * sin(1.7 * (double)i)));
                for (int t = 1; t <= 4; t++) {
                    for (size_t i = 0; i < n; i++)
                        net->grads[i] = (float)(i % 1000 == 7 ? 1e2 : 1e-6 * grad_at(i, t));
                    if (t % 2) {
                        nnp_optim_step(&o, net, 0.05, scale);
                    } else {
                        nnp_optim_norms_range(&o, net, scale, 0, n, norms);
                        nnp_optim_apply_range(&o, net, 0.05, scale, 0, n, norms);
                    }
                }
                if (v == 0) {
                    memcpy(keep, net->params, n * sizeof(float));
                    if (o.buf1)
                        memcpy(keep + n, o.buf1, n * sizeof(float));
                    if (o.buf2)
                        memcpy(keep + 2 * n, o.buf2, n * sizeof(float));
                    memcpy(keep_norms, norms, sizeof norms);
                } else {
                    int same =
                        memcmp(keep, net->params, n * sizeof(float)) == 0 &&
                        (!o.buf1 || memcmp(keep + n, o.buf1, n * sizeof(float)) == 0) &&
                        (!o.buf2 || memcmp(keep + 2 * n, o.buf2, n * sizeof(float)) == 0) &&
                        memcmp(keep_norms, norms, sizeof norms) == 0;
                    if (!same)
                        TEST_FAIL_("%s case %zu%s: the %s and portable sums give different "
                                   "bits",
                                   nnp_opt_name(cases[k].kind), k, kept ? " (kept norms)" : "",
                                   names[isas[v]]);
                    nnp_test_checks++;
                }
                nnp_optim_free(&o);
            }
    nnp_optim_set_sums_isa(NNP_OPT_SUMS_AUTO);
    free(keep);
    nnp_net_free(net);
}

/* --allreduce sharded/shm for LARS and LAMB: P "ranks" each run pass 1 over their share
 * (shares cut through tensors), the partial norms are summed, each runs pass 2 over its
 * share; stitched together, parameters and state equal the full step's to 1e-6 (the sums
 * are grouped differently), and one range over everything equals it bit for bit. */
static void test_layerwise_ranges(void)
{
    const nnp_optim_cfg cases[] = {lars_cfg(0.9, 1e-3, 0.02, 1), lars_cfg(0, 0.01, 0.01, 0),
                                   lamb_cfg(0.9, 0.999, 1e-6, 0.01, 10, 1),
                                   lamb_cfg(0.8, 0.99, 1e-4, 0.1, 0.5, 0)};
    const double scale[4] = {0.5, 2.0, 1.25, 3.0};
    enum { P = 3 };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        fake_net full, one, part[P];
        fake_net_make(&full);
        fake_net_make(&one);
        size_t n = full.net.n_params, lo[P], hi[P];
        nnp_optim of, oo, op[P];
        ASSERT_OK(nnp_optim_init(&of, &cases[c], n));
        ASSERT_OK(nnp_optim_init(&oo, &cases[c], n));
        for (int k = 0; k < P; k++) {
            fake_net_make(&part[k]);
            ASSERT_OK(nnp_optim_init(&op[k], &cases[c], n));
            lo[k] = n * (size_t)k / P;
            hi[k] = n * (size_t)(k + 1) / P;
        }
        for (size_t i = 0; i < n; i++) {
            full.params[i] = one.params[i] = (float)(0.1 * (double)i - 0.7);
            for (int k = 0; k < P; k++)
                part[k].params[i] = full.params[i];
        }
        int same_one = 1, bad = 0;
        for (int t = 1; t <= NSTEPS; t++) {
            double nsum[8] = {0}, pk[P][8], n1[8];
            for (size_t i = 0; i < n; i++) {
                full.grads[i] = one.grads[i] = grad_at(i, t);
                for (int k = 0; k < P; k++)
                    part[k].grads[i] = full.grads[i];
            }
            double lr = 0.05 * t;
            unsigned long allocs = nnp_alloc_count();
            nnp_optim_step(&of, &full.net, lr, scale);
            nnp_optim_norms_range(&oo, &one.net, scale, 0, n, n1);
            nnp_optim_apply_range(&oo, &one.net, lr, scale, 0, n, n1);
            for (int k = 0; k < P; k++)
                nnp_optim_norms_range(&op[k], &part[k].net, scale, lo[k], hi[k], pk[k]);
            for (int k = 0; k < P; k++) /* the allreduce */
                for (int i = 0; i < 8; i++)
                    nsum[i] += pk[k][i];
            for (int k = 0; k < P; k++)
                nnp_optim_apply_range(&op[k], &part[k].net, lr, scale, lo[k], hi[k], nsum);
            ASSERT_EQ_INT(nnp_alloc_count(), allocs);
            for (int k = 0; k < P; k++) /* the allgather */
                for (int q = 0; q < P; q++)
                    memcpy(part[k].params + lo[q], part[q].params + lo[q],
                           (hi[q] - lo[q]) * sizeof(float));
            same_one &= memcmp(one.params, full.params, n * sizeof(float)) == 0;
            for (int k = 0; k < P; k++) {
                ASSERT_EQ_INT(op[k].t, of.t);
                for (size_t i = 0; i < n; i++) {
                    int mine = i >= lo[k] && i < hi[k];
                    double d = fabs(part[k].params[i] - full.params[i]);
                    if (mine && of.buf1)
                        d += fabs(op[k].buf1[i] - of.buf1[i]);
                    if (mine && of.buf2)
                        d += fabs(op[k].buf2[i] - of.buf2[i]);
                    if (!(d <= 1e-6 * (fabs(full.params[i]) + 1.0)) && bad++ < 5)
                        TEST_FAIL_("%s case %zu: part %d step %d element %zu differs by %.3g",
                                   nnp_opt_name(cases[c].kind), c, k, t, i, d);
                }
            }
        }
        if (!same_one)
            TEST_FAIL_("%s case %zu: one range through both passes differs from the step",
                       nnp_opt_name(cases[c].kind), c);
        nnp_test_checks += 2;
        nnp_optim_free(&of);
        nnp_optim_free(&oo);
        for (int k = 0; k < P; k++)
            nnp_optim_free(&op[k]);
    }
}

/* Every optimizer's step names the first tensor whose new parameters are not finite
 * (o.nonfinite), found by its update loop; -1 when all are finite; a range step sees only
 * its range. Tensor 2 of mlp:3-4-2 (fc2.weight) gets a nan gradient, which makes one of its
 * new parameters nan under every rule. */
static void test_nonfinite(void)
{
    nnp_net *net = NULL;
    ASSERT_OK(nnp_net_create("mlp:3-4-2", (nnp_shape){3, 1, 1}, NNP_ACT_RELU, 1, &net));
    if (!net)
        return;
    const nnp_opt_kind kinds[5] = {NNP_OPT_SGD, NNP_OPT_ADAM, NNP_OPT_ADAMW, NNP_OPT_LARS,
                                   NNP_OPT_LAMB};
    for (int k = 0; k < 5; k++) {
        for (int mom = 0; mom < 2; mom++) {
            nnp_optim_cfg c = {0};
            c.kind = kinds[k];
            c.momentum = mom ? 0.9 : 0.0;
            c.beta1 = 0.9;
            c.beta2 = 0.999;
            c.eps = 1e-8;
            c.lars_eta = 0.001;
            c.lamb_clip = 10;
            if (mom && (c.kind != NNP_OPT_SGD && c.kind != NNP_OPT_LARS))
                continue;
            nnp_optim o;
            ASSERT_OK(nnp_optim_init(&o, &c, net->n_params));
            ASSERT_EQ_INT(o.nonfinite, -1);
            for (size_t i = 0; i < net->n_params; i++) {
                net->params[i] = 0.1f * (float)(i % 7) - 0.3f;
                net->grads[i] = 0.01f * (float)(i % 5) - 0.02f;
            }
            nnp_optim_step(&o, net, 0.1, NULL);
            ASSERT_EQ_INT(o.nonfinite, -1);
            const nnp_tensor *T = &net->tensors[2];
            net->grads[T->off + T->n / 2] = NAN;
            nnp_optim_step(&o, net, 0.1, NULL);
            if (o.nonfinite != 2)
                TEST_FAIL_("%s momentum %d: nonfinite %d after a nan gradient in tensor 2",
                           nnp_opt_name(c.kind), mom, o.nonfinite);
            /* a range that stops before tensor 2 does not see it */
            net->params[T->off + T->n / 2] = NAN;
            nnp_optim_step_range(&o, net, 0.1, NULL, 0, T->off);
            ASSERT_EQ_INT(o.nonfinite, -1);
            nnp_optim_step_range(&o, net, 0.1, NULL, T->off, net->n_params);
            ASSERT_EQ_INT(o.nonfinite, 2);
            nnp_optim_free(&o);
        }
    }
    nnp_net_free(net);
}

int main(void)
{
    test_nonfinite();
    test_hand_worked();
    test_reference_sequences();
    test_range_steps();
    test_lars_hand_worked();
    test_lamb_hand_worked();
    test_layerwise_reference();
    test_layerwise_ranges();
    test_sum_paths_same_bits();
    test_kept_norms();
    test_state_buffers();
    test_bad_configs();
    test_schedules();
    TEST_MAIN_END();
}
