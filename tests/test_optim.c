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

int main(void)
{
    test_hand_worked();
    test_reference_sequences();
    test_range_steps();
    test_state_buffers();
    test_bad_configs();
    test_schedules();
    TEST_MAIN_END();
}
