/* test_precond.c - the statistical preconditioner (docs/preconditioner.md).
 *
 *  1. --precond-formula seed reproduces seed 000's multipliers for LeNet and the deep MLP
 *     (the tables of docs/reference-pytorch.md, printed to 6 decimals, so every
 *     value must agree to half a unit in the last printed place, 5e-7).
 *  2. Simulated ranks: the per-rank shares of the flat buffer are contiguous and disjoint,
 *     and the local sums of all ranks add up to the single-rank sums.
 *  3. Dynamic at step 0 after --init seed equals static within the sampling error of the
 *     measured std: for a tensor of n weights drawn from N(0, s^2), the population std
 *     S satisfies n S^2/s^2 ~ chi2(n-1), so |S/s - 1| is about N(0, 1/(2n)); we require
 *     |S/s - 1| <= 4/sqrt(2n) and the chi2 bounds at z = 4. Multipliers are products of
 *     such ratios, so |log(m_dyn/m_static)| <= sum of the per-tensor bounds.
 *  4. Statistics (draw, measure, compare with chi2 bounds):
 *     a. forward: the mean square of every trainable layer's output (its pre-activation)
 *        for N(0,1) input equals the derivation's prediction
 *            E[z_k^2] = fan_in s_k^2 E[x_k^2] + s_b^2,   E[relu(z)^2] = E[z^2]/2;
 *        for the unit-variance prior (s^2 = 0.96/(fan_in E[x^2])) that is 1 for every
 *        layer; for --init seed it is NOT 1 (the seed's 0.34 factor), and the test checks
 *        the values the derivation predicts for it instead.
 *     b. backward: a N(0,1) gradient at the network output, the corrected multipliers make
 *            E[(prec_j G_j)^2] = A_j,  i.e.  std(m_j G_j) = sigma_j sqrt(A_j),
 *        with A_j = sum over the batch (and output positions) of the squared input of
 *        layer j (dense: B E[x^2]; conv: the mean over (c, tap) of sum_b sum_p x(p+tap)^2;
 *        bias: B times the output positions). The test measures A_j and G_j; the ratio
 *        T_j = mean(prec_j^2 G_j^2)/A_j must be 1 for every tensor.
 *     Both use R independent trials (fresh weights, inputs and output gradients); the
 *     per-trial ratios are iid with mean 1 under the derivation, and their spread gives
 *     the effective chi2 dof of the mean, nu = 2 R / s^2 (s^2 the sample variance of the
 *     ratios, inflated to its upper 2-sigma confidence value), so the bounds come from
 *     chi2_ratio_bounds(nu, 4) without assuming independence between elements.
 *  5. Errors: bad constants -> NNP_ERR_ARG, non-finite sums -> NNP_ERR_NUMERIC naming the
 *     tensor, a zero-variance tensor -> sigma = floor.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nnprec/alloc.h"
#include "nnprec/data.h"
#include "nnprec/init.h"
#include "nnprec/net.h"
#include "nnprec/optim.h"
#include "nnprec/precond.h"
#include "nnprec/rng.h"
#include "test_nets.h"
#include "test_util.h"

#define HALF_ULP6 5.0e-7 /* half a unit in the 6th decimal of the reference tables */
#define Z 4.0

static const char *NOPAD_SPEC =
    "seq:1x28x28/conv:6:3/relu/conv:16:3/relu/flatten/dense:120/relu/dense:84/relu/dense:10";
/* full padding (pad = k-1): every input position feeds all k*k taps, so the gradient that
 * reaches each conv output position has the same variance */
static const char *FULLPAD_SPEC = "seq:1x16x16/conv:6:3:1:2/relu/conv:16:3:1:2/relu/flatten/"
                                  "dense:120/relu/dense:84/relu/dense:10";
static const char *MLP_SPEC = "mlp:784-256x12-10";

static nnp_init_cfg seed_init(void) { return init_of("seed"); }

/* A configuration for weights drawn by --init seed (the prior of both formulas then). */
static nnp_precond_cfg cfg_of(nnp_precond_mode mode, nnp_precond_formula f)
{
    nnp_precond_cfg c;
    nnp_precond_defaults(&c);
    c.mode = mode;
    c.formula = f;
    c.init = seed_init();
    return c;
}

/* ---- 1. the seed's reference multipliers ----------------------------------------------- */

static void check_ref(const nnp_precond *p, int j, double sigma, double g, double prec, double m)
{
    ASSERT_NEAR(p->sigma[j], sigma, HALF_ULP6);
    ASSERT_NEAR(p->gain[j], g, HALF_ULP6);
    ASSERT_NEAR(p->prec[j], prec, HALF_ULP6);
    ASSERT_NEAR(p->scale[j], m, HALF_ULP6);
}

static void test_seed_reference(void)
{
    static const struct {
        const char *name;
        double sigma, g, prec, m;
    } lenet[] = {
        {"conv1.weight", 0.326599, 1.385641, 3.565902, 1.164619},
        {"conv1.bias", 0.200000, 1, 3.565902, 0.713180},
        {"conv2.weight", 0.133333, 2.262742, 8.068715, 1.075829},
        {"conv2.bias", 0.200000, 1, 8.068715, 1.613743},
        {"fc1.weight", 0.070014, 0.447214, 3.608439, 0.252641},
        {"fc1.bias", 0.200000, 1, 3.608439, 0.721688},
        {"fc2.weight", 0.153393, 0.819756, 2.958040, 0.453743},
        {"fc2.bias", 0.200000, 1, 2.958040, 0.591608},
        {"fc3.weight", 0.183340, 0.338062, 1, 0.183340},
        {"fc3.bias", 0.200000, 1, 1, 0.200000},
    };
    nnp_precond_cfg c = cfg_of(NNP_PRECOND_STATIC, NNP_PFORM_SEED);
    nnp_net *net = make_net("lenet", 4);
    nnp_precond p;
    ASSERT_OK(nnp_precond_init(&p, &c, net));
    ASSERT_EQ_INT(p.n, 10);
    for (int j = 0; j < 10 && j < p.n; j++) {
        ASSERT_TRUE(strcmp(net->tensors[j].name, lenet[j].name) == 0);
        check_ref(&p, j, lenet[j].sigma, lenet[j].g, lenet[j].prec, lenet[j].m);
    }
    /* closed forms, to rounding: conv1 sigma = sqrt(0.96/9), g = sqrt(6*1*3) sigma */
    ASSERT_CLOSE(p.sigma[0], sqrt(0.96 / 9), 1e-15, 0);
    ASSERT_CLOSE(p.gain[0], sqrt(18.0) * sqrt(0.96 / 9), 1e-15, 0);
    ASSERT_CLOSE(p.sigma[4], sqrt(0.96 / 576 / 0.34), 1e-15, 0);
    ASSERT_EQ_INT(p.updated_at, -1);
    nnp_precond_free(&p);
    nnp_net_free(net);

    net = make_net(MLP_SPEC, 4);
    ASSERT_OK(nnp_precond_init(&p, &c, net));
    ASSERT_EQ_INT(p.n, 26);
    const double sh = 0.105021, gh = 0.979796;
    check_ref(&p, 0, 0.060012, 0.559883, 6.463870, 0.387910);
    for (int l = 1; l <= 11; l++) {
        ASSERT_NEAR(p.sigma[2 * l], sh, HALF_ULP6);
        ASSERT_NEAR(p.gain[2 * l], gh, HALF_ULP6);
        ASSERT_NEAR(p.scale[2 * l], p.prec[2 * l] * p.sigma[2 * l], 1e-15);
        if (l < 11) /* prec falls geometrically: prec_l = prec_{l+1} / g_{l+1} */
            ASSERT_CLOSE(p.prec[2 * l], p.prec[2 * l + 2] / p.gain[2 * l + 2], 1e-14, 0);
    }
    ASSERT_NEAR(p.prec[2], 6.333273, HALF_ULP6);
    ASSERT_NEAR(p.prec[22], 5.163978, HALF_ULP6);
    ASSERT_NEAR(p.scale[2], 0.665127, HALF_ULP6);
    ASSERT_NEAR(p.scale[22], 0.542326, HALF_ULP6);
    check_ref(&p, 24, 0.105021, 0.193649, 1, 0.105021);
    for (int l = 0; l <= 12; l++) { /* bias of layer l: m = 0.2 prec_l, g = 1 */
        ASSERT_CLOSE(p.scale[2 * l + 1], 0.2 * p.prec[2 * l], 1e-14, 0);
        ASSERT_NEAR(p.gain[2 * l + 1], 1.0, 0);
    }
    nnp_precond_free(&p);
    nnp_net_free(net);
}

/* ---- 2. simulated ranks ------------------------------------------------------------------ */

static void test_simulated_ranks(void)
{
    nnp_net *net = make_net("lenet", 4);
    nnp_init_cfg ic = seed_init();
    ASSERT_OK(nnp_init_net(net, &ic, 7));
    nnp_precond_cfg c = cfg_of(NNP_PRECOND_DYNAMIC, NNP_PFORM_CORRECTED);
    nnp_precond p;
    ASSERT_OK(nnp_precond_init(&p, &c, net));
    int n = p.n;
    double *ref = calloc(2 * (size_t)n, sizeof(double));
    double *acc = calloc(2 * (size_t)n, sizeof(double));
    double *mag = calloc((size_t)n, sizeof(double));
    nnp_precond_local_sums(&p, net, 0, 1);
    memcpy(ref, p.sums, 2 * (size_t)n * sizeof(double));
    for (int j = 0; j < n; j++)
        for (size_t i = 0; i < net->tensors[j].n; i++)
            mag[j] += fabs(net->params[net->tensors[j].off + i]);
    for (int size = 1; size <= 5; size++) {
        memset(acc, 0, 2 * (size_t)n * sizeof(double));
        size_t prev_hi = 0;
        for (int r = 0; r < size; r++) {
            size_t lo, hi;
            nnp_split(net->n_params, size, r, &lo, &hi);
            ASSERT_EQ_INT(lo, prev_hi); /* contiguous, no gap and no overlap */
            prev_hi = hi;
            nnp_precond_local_sums(&p, net, r, size);
            for (int k = 0; k < 2 * n; k++)
                acc[k] += p.sums[k];
        }
        ASSERT_EQ_INT(prev_hi, net->n_params);
        for (int j = 0; j < n; j++) {
            /* the sum of w may cancel to ~0: compare against the sum of |w| */
            ASSERT_NEAR(acc[2 * j], ref[2 * j], 1e-12 * mag[j]);
            ASSERT_CLOSE(acc[2 * j + 1], ref[2 * j + 1], 1e-12, 0);
        }
    }
    /* with every parameter 1 the sums count elements: each rank counts exactly its overlap
     * with each tensor, and the counts add up to the tensor's size */
    for (size_t i = 0; i < net->n_params; i++)
        net->params[i] = 1.0f;
    for (int size = 1; size <= 5; size++) {
        memset(acc, 0, 2 * (size_t)n * sizeof(double));
        for (int r = 0; r < size; r++) {
            size_t lo, hi;
            nnp_split(net->n_params, size, r, &lo, &hi);
            nnp_precond_local_sums(&p, net, r, size);
            for (int j = 0; j < n; j++) {
                const nnp_tensor *t = &net->tensors[j];
                size_t a = t->off > lo ? t->off : lo, b = t->off + t->n < hi ? t->off + t->n : hi;
                double want = b > a ? (double)(b - a) : 0.0;
                ASSERT_NEAR(p.sums[2 * j], want, 0);
                ASSERT_NEAR(p.sums[2 * j + 1], want, 0);
                acc[2 * j] += p.sums[2 * j];
            }
        }
        for (int j = 0; j < n; j++)
            ASSERT_NEAR(acc[2 * j], (double)net->tensors[j].n, 0);
    }
    free(ref);
    free(acc);
    free(mag);
    nnp_precond_free(&p);
    nnp_net_free(net);
}

/* The batch moments of the measured dynamic mode (sum x^2 of every trainable layer's input,
 * sum dz^2 of its output gradient, the sample count): the sums over pieces of a batch,
 * computed one after another as ranks would, equal the whole batch's, so the multipliers
 * do not depend on the rank count. */
static void test_batch_sums_pieces(const char *spec)
{
    enum { B = 18 };
    nnp_net *net = make_net(spec, B);
    nnp_init_cfg ic = init_of("pytorch");
    ASSERT_OK(nnp_init_net(net, &ic, 3));
    nnp_precond_cfg c = cfg_of(NNP_PRECOND_DYNAMIC, NNP_PFORM_CORRECTED);
    nnp_precond p;
    ASSERT_OK(nnp_precond_init(&p, &c, net));
    size_t d = nnp_shape_size(net->input), m0 = p.n_share, nm = p.n_sums - m0;
    ASSERT_EQ_INT((int)nm, 2 * net->n_trainable + 1);
    float *x = malloc((size_t)B * d * sizeof(float));
    double *whole = calloc(nm, sizeof(double)), *sum = calloc(nm, sizeof(double));
    unsigned char y[B];
    nnp_rng r;
    nnp_rng_seed(&r, 5, NNP_STREAM_DATA);
    nnp_rng_fill_normal(&r, x, (size_t)B * d, 0, 1);
    for (int i = 0; i < B; i++)
        y[i] = (unsigned char)nnp_rng_below(&r, (uint64_t)net->n_classes);
    const int pieces[] = {B, 5, 7, 1, 0, 5};
    int at = 0;
    for (size_t k = 0; k < sizeof pieces / sizeof pieces[0]; k++) {
        int b = pieces[k];
        if (b > 0) {
            nnp_net_forward(net, b, x + (size_t)at * d);
            nnp_softmax_ce(b, net->n_classes, net->act[net->n_layers], y + at, 1.0f / B,
                           net->dact[net->n_layers], NULL);
            nnp_net_backward(net, b, NULL, NULL);
        }
        nnp_precond_batch_sums(&p, net, b);
        for (size_t i = 0; i < nm; i++)
            (k == 0 ? whole : sum)[i] += p.sums[m0 + i];
        at = k == 0 ? 0 : at + b;
    }
    double worst = 0;
    for (size_t i = 0; i < nm; i++) {
        double rel = fabs(sum[i] - whole[i]) / whole[i];
        if (rel > worst)
            worst = rel;
    }
    printf("  batch moments of %s: pieces vs whole batch, worst relative difference %.2e\n",
           spec, worst);
    ASSERT_TRUE(whole[nm - 1] == B && sum[nm - 1] == B);
    ASSERT_TRUE(worst < 1e-5);
    free(x);
    free(whole);
    free(sum);
    nnp_precond_free(&p);
    nnp_net_free(net);
}

/* ---- 3. dynamic at step 0 equals static ------------------------------------------------ */

static void dynamic_vs_static(const char *spec, nnp_precond_formula f, uint64_t seed)
{
    nnp_net *net = make_net(spec, 4);
    nnp_init_cfg ic = seed_init();
    ASSERT_OK(nnp_init_net(net, &ic, seed));
    nnp_precond_cfg cs = cfg_of(NNP_PRECOND_STATIC, f), cd = cfg_of(NNP_PRECOND_DYNAMIC, f);
    nnp_precond ps, pd;
    ASSERT_OK(nnp_precond_init(&ps, &cs, net));
    ASSERT_OK(nnp_precond_init(&pd, &cd, net));
    nnp_precond_local_sums(&pd, net, 0, 1);
    ASSERT_OK(nnp_precond_from_sums(&pd, net, 0));
    ASSERT_EQ_INT(pd.updated_at, 0);
    int n = ps.n;
    double bound_above = 0.0; /* sum of the log-ratio bounds of the weights above j */
    double worst = 0.0;
    for (int j = n - 1; j >= 0; j--) {
        const nnp_tensor *t = &net->tensors[j];
        double nn = (double)t->n, lo, hi;
        /* the prior is what --init seed drew from */
        ASSERT_CLOSE(ps.sigma[j], nnp_init_std(&ic, net, t), 1e-15, 0);
        double r = pd.sigma[j] / ps.sigma[j];
        chi2_ratio_bounds(nn - 1, Z, &lo, &hi);
        ASSERT_TRUE(r * r * nn / (nn - 1) >= lo && r * r * nn / (nn - 1) <= hi);
        if (!t->is_bias) {
            double b = Z / sqrt(2 * nn);
            ASSERT_TRUE(fabs(r - 1) <= b);
            if (fabs(r - 1) / b > worst)
                worst = fabs(r - 1) / b;
            /* m_j: own ratio times the ratios of the weights above */
            double lm = fabs(log(pd.scale[j] / ps.scale[j]));
            ASSERT_TRUE(lm <= bound_above - log(1 - b));
        }
        ASSERT_TRUE(fabs(log(pd.prec[j] / ps.prec[j])) <= bound_above + 1e-15);
        if (!t->is_bias)
            bound_above += -log(1 - Z / sqrt(2 * nn));
    }
    printf("  %-18s %-9s dynamic vs static at step 0: worst |S/s-1| = %.2f of its z=4 bound\n",
           spec, nnp_precond_formula_name(f), worst);
    nnp_precond_free(&ps);
    nnp_precond_free(&pd);
    nnp_net_free(net);
}

static void test_dynamic_step0(void)
{
    dynamic_vs_static("lenet", NNP_PFORM_SEED, 11);
    dynamic_vs_static("lenet", NNP_PFORM_CORRECTED, 12);
    dynamic_vs_static(MLP_SPEC, NNP_PFORM_SEED, 13);
    dynamic_vs_static(MLP_SPEC, NNP_PFORM_CORRECTED, 14);
}

/* ---- 4. statistics ----------------------------------------------------------------------- */

/* Mean of R iid ratios whose expectation is 1 under the derivation; returns 1 if it lies in
 * the chi2 bounds at z = 4 for the dof the ratios' spread implies (see the file comment). */
static int ratio_ok(const double *x, int R, double *mean_out, double *lo_out, double *hi_out)
{
    double m = 0, s2 = 0;
    for (int r = 0; r < R; r++)
        m += x[r];
    m /= R;
    for (int r = 0; r < R; r++)
        s2 += (x[r] - m) * (x[r] - m);
    s2 /= (R - 1);
    double clo, chi;
    chi2_ratio_bounds(R - 1, 2.0, &clo, &chi);
    s2 /= clo; /* upper 2-sigma confidence value of the spread */
    double nu = 2.0 * R / (s2 > 1e-300 ? s2 : 1e-300);
    double lo, hi;
    chi2_ratio_bounds(nu, Z, &lo, &hi);
    *mean_out = m;
    *lo_out = lo;
    *hi_out = hi;
    return m >= lo && m <= hi;
}

static double mean_sq(const float *x, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    return s / (double)n;
}

/* E[x^2] factor of the operations right before layer i: 1/2 after relu, else 1. */
static double q_factor_before(const nnp_net *net, int i)
{
    for (int k = i - 1; k >= 0; k--) {
        const nnp_layer *L = &net->layers[k];
        if (L->kind == NNP_L_ACT)
            return L->act == NNP_ACT_RELU ? 0.5 : 1.0;
        if (L->kind != NNP_L_FLATTEN)
            break;
    }
    return 1.0;
}

/* Draw every tensor from N(0, s^2): weights with the unit-variance prior
 * s^2 = 0.96/(fan_in q) (q = E[x^2] of the layer input for unit pre-activations), biases 0.2. */
static void init_unit_prior(nnp_net *net, uint64_t seed)
{
    for (int j = 0; j < net->n_tensors; j++) {
        const nnp_tensor *t = &net->tensors[j];
        nnp_rng r;
        nnp_rng_seed(&r, seed, 1000 + (uint64_t)j);
        double s = t->is_bias ? 0.2 : sqrt(0.96 / (t->fan_in * q_factor_before(net, t->layer)));
        nnp_rng_fill_normal(&r, net->params + t->off, t->n, 0.0, s);
    }
}

#define MAXT 32

/* 4a: mean square of every trainable layer's output vs the prediction. */
static void forward_stats(const char *spec, int unit_prior, int B, int R)
{
    nnp_net *net = make_net(spec, B);
    nnp_init_cfg ic = seed_init();
    size_t nin = nnp_shape_size(net->input);
    float *x = malloc((size_t)B * nin * sizeof(float));
    int nl = net->n_trainable;
    double *ratio = calloc((size_t)R * MAXT, sizeof(double)), pred[MAXT];
    /* prediction: E[z^2] = fan_in s^2 q_in + s_b^2, q = E[z^2]/2 after relu */
    double q = 1.0;
    for (int i = 0, k = 0; i < net->n_layers; i++) {
        const nnp_layer *L = &net->layers[i];
        if (L->tensor < 0)
            continue;
        const nnp_tensor *w = &net->tensors[L->tensor], *b = w + 1;
        double sw = unit_prior ? sqrt(0.96 / (w->fan_in * q_factor_before(net, i)))
                               : nnp_init_std(&ic, net, w);
        double sb = unit_prior ? 0.2 : nnp_init_std(&ic, net, b);
        pred[k] = w->fan_in * sw * sw * q + sb * sb;
        q = L->next_act == NNP_ACT_RELU ? pred[k] / 2 : pred[k];
        k++;
    }
    for (int r = 0; r < R; r++) {
        if (unit_prior)
            init_unit_prior(net, 100 + (uint64_t)r);
        else
            ASSERT_OK(nnp_init_net(net, &ic, 100 + (uint64_t)r));
        nnp_rng g;
        nnp_rng_seed(&g, 500 + (uint64_t)r, NNP_STREAM_DATA);
        nnp_rng_fill_normal(&g, x, (size_t)B * nin, 0.0, 1.0);
        nnp_net_forward(net, B, x);
        for (int i = 0, k = 0; i < net->n_layers; i++) {
            const nnp_layer *L = &net->layers[i];
            if (L->tensor < 0)
                continue;
            ratio[k * R + r] =
                mean_sq(net->act[i + 1], (size_t)B * nnp_shape_size(L->out)) / pred[k];
            k++;
        }
    }
    printf("  forward %s, %s, B=%d, %d trials: E[z^2] per trainable layer\n", spec,
           unit_prior ? "unit-variance prior" : "--init seed", B, R);
    for (int k = 0; k < nl; k++) {
        double m, lo, hi;
        int ok = ratio_ok(ratio + k * R, R, &m, &lo, &hi);
        printf("    layer %2d: predicted %8.4f  measured %8.4f  ratio %.4f in [%.4f, %.4f]%s\n",
               k + 1, pred[k], m * pred[k], m, lo, hi, ok ? "" : "  <-- FAIL");
        ASSERT_TRUE(ok);
        if (unit_prior)
            ASSERT_CLOSE(pred[k], 1.0, 1e-12, 0);
    }
    free(x);
    free(ratio);
    nnp_net_free(net);
}

/* One statistical trial: fresh weights from ic (seed init_seed), N(0,1) input x[B, input]
 * and N(0,1) loss gradient (seed data_seed), forward and backward. */
static void draw_trial(nnp_net *net, const nnp_init_cfg *ic, uint64_t init_seed,
                       uint64_t data_seed, float *x, int B)
{
    ASSERT_OK(nnp_init_net(net, ic, init_seed));
    nnp_rng g;
    nnp_rng_seed(&g, data_seed, NNP_STREAM_DATA);
    nnp_rng_fill_normal(&g, x, (size_t)B * nnp_shape_size(net->input), 0.0, 1.0);
    nnp_net_forward(net, B, x);
    nnp_rng_fill_normal(&g, net->dact[net->n_layers], (size_t)B * (size_t)net->n_classes, 0.0,
                        1.0);
    nnp_net_backward(net, B, NULL, NULL);
}

/* A_j of a conv weight: mean over (c, tap) of sum_b sum_p x_c(p*s - pad + tap)^2. */
static double conv_input_energy(const nnp_layer *L, const float *x, int B)
{
    const nnp_conv_geom *g = &L->conv;
    double tot = 0;
    for (int b = 0; b < B; b++)
        for (int c = 0; c < g->C; c++) {
            const float *xc = x + ((size_t)b * g->C + c) * g->H * g->W;
            for (int u = 0; u < g->k; u++)
                for (int v = 0; v < g->k; v++)
                    for (int oh = 0; oh < g->OH; oh++) {
                        int h = oh * g->s - g->p + u;
                        if (h < 0 || h >= g->H)
                            continue;
                        for (int ow = 0; ow < g->OW; ow++) {
                            int w = ow * g->s - g->p + v;
                            if (w >= 0 && w < g->W)
                                tot += (double)xc[h * g->W + w] * xc[h * g->W + w];
                        }
                    }
        }
    return tot / ((double)g->C * g->k * g->k);
}

/* 4b: T_j = mean((prec_j G_j)^2) / A_j over R trials, for the corrected formula; the seed
 * formula's T_j is T_j (prec_seed/prec_corrected)^2 on the same gradients (both use the
 * same prior sigma). With seed_must_fail the seed formula must fail the same bounds on the
 * first tensor: the check has the power to see the seed's quirks. model_tol widens the
 * bounds by that fraction where the prediction is an approximation (max pooling). */
static void backward_stats(const char *spec, int B, int R, int seed_must_fail, double model_tol)
{
    nnp_net *net = make_net(spec, B);
    nnp_init_cfg ic = seed_init();
    size_t nin = nnp_shape_size(net->input);
    float *x = malloc((size_t)B * nin * sizeof(float));
    nnp_precond_cfg cc = cfg_of(NNP_PRECOND_STATIC, NNP_PFORM_CORRECTED);
    nnp_precond_cfg cs = cfg_of(NNP_PRECOND_STATIC, NNP_PFORM_SEED);
    nnp_precond pc, ps;
    ASSERT_OK(nnp_precond_init(&pc, &cc, net));
    ASSERT_OK(nnp_precond_init(&ps, &cs, net));
    int n = pc.n;
    double *T = calloc((size_t)R * MAXT, sizeof(double)), A[MAXT], sd_meas[MAXT] = {0},
           sd_pred[MAXT] = {0};
    for (int r = 0; r < R; r++) {
        draw_trial(net, &ic, 200 + (uint64_t)r, 600 + (uint64_t)r, x, B);
        for (int j = 0; j < n; j++) {
            const nnp_tensor *t = &net->tensors[j];
            const nnp_layer *L = &net->layers[t->layer];
            if (t->is_bias)
                A[j] = (double)B * (L->kind == NNP_L_CONV2D ? L->conv.OH * L->conv.OW : 1);
            else if (L->kind == NNP_L_CONV2D)
                A[j] = conv_input_energy(L, net->act[t->layer], B);
            else
                A[j] = B * mean_sq(net->act[t->layer], (size_t)B * nnp_shape_size(L->in));
            double g2 = mean_sq(net->grads + t->off, t->n);
            T[j * R + r] = pc.prec[j] * pc.prec[j] * g2 / A[j];
            sd_meas[j] += pc.scale[j] * sqrt(g2) / R;
            /* std(m_j G_j) = m_j sqrt(A_j)/prec_j: sigma_W sqrt(A_j/q_j) for a weight, sigma_W
             * sqrt(A_j) for a bias (q = 1) */
            sd_pred[j] += pc.scale[j] / pc.prec[j] * sqrt(A[j]) / R;
        }
    }
    int seed_off = 0;
    printf("  backward %s, B=%d, %d trials: T_j = E[(prec_j G_j)^2]/A_j (derivation: 1)\n", spec,
           B, R);
    printf("    %-14s %10s %10s %8s %17s %8s %9s\n", "tensor", "pred sd", "meas sd", "T corr",
           "chi2 bounds", "T seed", "prec s/c");
    for (int j = 0; j < n; j++) {
        double m, lo, hi;
        int ok = ratio_ok(T + j * R, R, &m, &lo, &hi);
        double rs = ps.prec[j] / pc.prec[j], ts = m * rs * rs;
        int seed_ok = ts >= lo && ts <= hi;
        seed_off += !seed_ok;
        printf("    %-14s %10.4g %10.4g %8.4f [%7.4f,%7.4f] %8.3g %9.4f%s%s\n",
               net->tensors[j].name, sd_pred[j], sd_meas[j], m, lo, hi, ts, rs,
               seed_ok ? "" : " (seed out)", ok ? "" : model_tol > 0 ? " (model tol)" : "  <-- FAIL");
        ASSERT_TRUE(ok || (model_tol > 0 && m >= lo * (1 - model_tol) && m <= hi * (1 + model_tol)));
        if (j == 0 && seed_must_fail)
            ASSERT_TRUE(!seed_ok);
    }
    printf("    the seed formula is outside the bounds on %d of %d tensors\n", seed_off, n);
    free(x);
    free(T);
    nnp_precond_free(&pc);
    nnp_precond_free(&ps);
    nnp_net_free(net);
}

#define TIMED(call)                                                                \
    do {                                                                           \
        clock_t t0_ = clock();                                                     \
        call;                                                                      \
        printf("    (%.2f s cpu)\n", (double)(clock() - t0_) / CLOCKS_PER_SEC);    \
    } while (0)

/* Trials per statistical check: the defaults keep the test near a second or two; a larger
 * count (test_precond --trials N) measures the model's accuracy more finely. */
static int n_trials_fwd = 10, n_trials_bwd = 16;

static void test_statistics(void)
{
    TIMED(forward_stats(NOPAD_SPEC, 1, 128, n_trials_fwd));
    TIMED(forward_stats(MLP_SPEC, 1, 128, n_trials_fwd));
    TIMED(forward_stats(NOPAD_SPEC, 0, 128, n_trials_fwd));
    TIMED(forward_stats(MLP_SPEC, 0, 128, n_trials_fwd));
    TIMED(backward_stats(FULLPAD_SPEC, 32, n_trials_bwd, 0, 0));
    TIMED(backward_stats(MLP_SPEC, 64, n_trials_bwd, 1, 0));
    /* LeNet's relu + max-pool blocks are modelled with independent window entries; with
     * 150 trials conv2's T is 0.77 (docs/preconditioner.md), so its bounds get 35% room */
    TIMED(backward_stats("lenet", 32, n_trials_bwd, 0, 0.35));
}

/* 4c: the issue the corrected formula exists for: whatever the initializer, the
 * preconditioned weight gradients of all layers have about the same size. For each
 * initializer x {relu, tanh} on the deep MLP at step 0 (N(0,1) input and loss gradient),
 * std(m_j G_j) over R draws must be within 3x across the 13 weight tensors in static mode,
 * in dynamic mode predicting the moments from the measured weight stds, and in dynamic
 * mode measuring them on the batch. Without a preconditioner the spread is thousands
 * (pytorch relu: ~6,500x here), and the seed formula, whose prior is --init seed's, leaves
 * it far above 3x on the pytorch initialization; the test checks that it sees both. */
static double spread_of(const double *sd, const nnp_net *net)
{
    double lo = INFINITY, hi = 0;
    for (int j = 0; j < net->n_tensors; j++)
        if (!net->tensors[j].is_bias) {
            lo = sd[j] < lo ? sd[j] : lo;
            hi = sd[j] > hi ? sd[j] : hi;
        }
    return hi / lo;
}

static void equalization(const char *init, nnp_act act, int B, int R)
{
    nnp_net *net = NULL;
    ASSERT_OK(nnp_net_create(MLP_SPEC, (nnp_shape){1, 28, 28}, act, B, &net));
    if (!net)
        return;
    nnp_init_cfg ic = init_of(init);
    size_t nin = nnp_shape_size(net->input);
    float *x = malloc((size_t)B * nin * sizeof(float));
    enum { NONE, STATIC, DYN_W, DYN_M, SEEDF, NV };
    static const char *names[NV] = {"none", "static", "dyn-weights", "dyn-moments", "seed-form"};
    double sd[NV][MAXT] = {{0}};
    for (int r = 0; r < R; r++) {
        draw_trial(net, &ic, 300 + (uint64_t)r, 700 + (uint64_t)r, x, B);
        nnp_precond p[NV];
        for (int k = 0; k < NV; k++) {
            nnp_precond_cfg c;
            nnp_precond_defaults(&c);
            c.init = ic;
            c.mode = k == NONE ? NNP_PRECOND_NONE : k == STATIC || k == SEEDF ? NNP_PRECOND_STATIC
                                                                              : NNP_PRECOND_DYNAMIC;
            c.formula = k == SEEDF ? NNP_PFORM_SEED : NNP_PFORM_CORRECTED;
            c.measure = k == DYN_M;
            ASSERT_OK(nnp_precond_init(&p[k], &c, net));
            if (c.mode == NNP_PRECOND_DYNAMIC) {
                nnp_precond_local_sums(&p[k], net, 0, 1);
                nnp_precond_batch_sums(&p[k], net, B);
                ASSERT_OK(nnp_precond_from_sums(&p[k], net, 0));
                ASSERT_EQ_INT(p[k].measured, k == DYN_M);
            }
            for (int j = 0; j < net->n_tensors; j++)
                sd[k][j] += p[k].scale[j] * sqrt(mean_sq(net->grads + net->tensors[j].off,
                                                         net->tensors[j].n)) / R;
            nnp_precond_free(&p[k]);
        }
    }
    printf("    %-15s %-4s", init, act == NNP_ACT_RELU ? "relu" : "tanh");
    for (int k = 0; k < NV; k++)
        printf("  %s %8.3g", names[k], spread_of(sd[k], net));
    printf("\n");
    for (int k = STATIC; k <= DYN_M; k++)
        if (!(spread_of(sd[k], net) <= 3.0))
            TEST_FAIL_("%s %s: %s spread %.3g > 3", init, nnp_act_name(act), names[k],
                       spread_of(sd[k], net));
    nnp_test_checks++;
    if (strcmp(init, "pytorch") == 0 && act == NNP_ACT_RELU) {
        /* the check has the power to see the problem: vanishing gradients without a
         * multiplier, and the seed formula, whose prior is not this init's, far off 3x */
        ASSERT_TRUE(spread_of(sd[NONE], net) > 1000);
        ASSERT_TRUE(spread_of(sd[SEEDF], net) > 100);
    }
    free(x);
    nnp_net_free(net);
}

static int n_trials_eq = 3;

static void test_equalization(void)
{
    static const char *inits[] = {"pytorch",     "xavier-uniform", "kaiming-normal",
                                  "lecun-normal", "orthogonal",     "seed"};
    printf("  max/min over layers of std(m_j G_j) of the weights, mlp:784-256x12-10, B=64, "
           "%d draws:\n", n_trials_eq);
    for (size_t i = 0; i < sizeof inits / sizeof inits[0]; i++) {
        equalization(inits[i], NNP_ACT_RELU, 64, n_trials_eq);
        equalization(inits[i], NNP_ACT_TANH, 64, n_trials_eq);
    }
}

/* ---- 5. errors and edge cases ------------------------------------------------------------ */

static void test_errors(void)
{
    nnp_net *net = make_net("lenet", 4);
    nnp_precond p;
    nnp_precond_cfg c = cfg_of(NNP_PRECOND_DYNAMIC, NNP_PFORM_CORRECTED);
#define BAD(field, value)                                                 \
    do {                                                                  \
        nnp_precond_cfg b_ = c;                                           \
        b_.field = value;                                                 \
        ASSERT_STATUS(nnp_precond_init(&p, &b_, net), NNP_ERR_ARG);       \
    } while (0)
    BAD(every, 0);
    BAD(every, -3);
    BAD(relu_factor, 0);
    BAD(relu_factor, -0.34);
    BAD(relu_factor, NAN);
    BAD(prior_num, 0);
    BAD(prior_num, INFINITY);
    BAD(bias_std, 0);
    BAD(bias_std, -0.2);
    BAD(bias_gain, 0);
    BAD(floor, 0);
    BAD(floor, -1e-12);
    BAD(mode, (nnp_precond_mode)7);
    BAD(formula, (nnp_precond_formula)7);
#undef BAD
    nnp_precond_mode mode;
    nnp_precond_formula f;
    ASSERT_OK(nnp_precond_parse_mode("dynamic", &mode));
    ASSERT_EQ_INT(mode, NNP_PRECOND_DYNAMIC);
    ASSERT_OK(nnp_precond_parse_mode("none", &mode));
    ASSERT_EQ_INT(mode, NNP_PRECOND_NONE);
    ASSERT_STATUS(nnp_precond_parse_mode("Static", &mode), NNP_ERR_ARG);
    ASSERT_OK(nnp_precond_parse_formula("seed", &f));
    ASSERT_EQ_INT(f, NNP_PFORM_SEED);
    ASSERT_STATUS(nnp_precond_parse_formula("exact", &f), NNP_ERR_ARG);
    ASSERT_TRUE(strcmp(nnp_precond_mode_name(NNP_PRECOND_STATIC), "static") == 0);
    ASSERT_TRUE(strcmp(nnp_precond_formula_name(NNP_PFORM_CORRECTED), "corrected") == 0);
    nnp_precond_cfg d;
    nnp_precond_defaults(&d);
    ASSERT_TRUE(d.mode == NNP_PRECOND_NONE && d.formula == NNP_PFORM_CORRECTED && d.every == 1 &&
                d.relu_factor == 0.34 && d.prior_num == 0.96 && d.bias_std == 0.2 &&
                d.bias_gain == 1.0 && d.bias_prior == 0 && d.floor == 1e-12);

    /* mode none: every multiplier is 1 */
    nnp_precond_cfg cn = cfg_of(NNP_PRECOND_NONE, NNP_PFORM_CORRECTED);
    ASSERT_OK(nnp_precond_init(&p, &cn, net));
    for (int j = 0; j < p.n; j++)
        ASSERT_NEAR(p.scale[j], 1.0, 0);
    nnp_precond_free(&p);

    nnp_init_cfg ic = seed_init();
    ASSERT_OK(nnp_init_net(net, &ic, 3));
    ASSERT_OK(nnp_precond_init(&p, &c, net));
    /* non-finite sums name the tensor */
    nnp_precond_local_sums(&p, net, 0, 1);
    p.sums[2 * 4 + 1] = INFINITY;
    ASSERT_STATUS(nnp_precond_from_sums(&p, net, 5), NNP_ERR_NUMERIC);
    nnp_precond_local_sums(&p, net, 0, 1);
    p.sums[2 * 2] = NAN;
    nnp_status s = nnp_precond_from_sums(&p, net, 5);
    ASSERT_EQ_INT(s, NNP_ERR_NUMERIC);
    ASSERT_TRUE(strstr(nnp_error_msg(), "conv2.weight") != NULL);
    nnp_error_clear();
    ASSERT_EQ_INT(p.updated_at, -1); /* a failed update leaves the multipliers as they were */

    /* zero variance -> sigma = floor (documented); everything stays finite */
    const nnp_tensor *t = &net->tensors[2];
    for (size_t i = 0; i < t->n; i++)
        net->params[t->off + i] = 0.25f;
    nnp_precond_local_sums(&p, net, 0, 1);
    ASSERT_OK(nnp_precond_from_sums(&p, net, 9));
    ASSERT_NEAR(p.sigma[2], 1e-12, 0);
    ASSERT_EQ_INT(p.updated_at, 9);
    for (int j = 0; j < p.n; j++)
        ASSERT_TRUE(isfinite(p.scale[j]) && p.scale[j] > 0);
    /* the cancellation E[w^2] - E[w]^2 < 0 by rounding is clamped before the floor */
    p.sums[4] = 1e6;
    p.sums[5] = 1e12 / (double)t->n * (1 - 1e-15);
    ASSERT_OK(nnp_precond_from_sums(&p, net, 10));
    ASSERT_NEAR(p.sigma[2], 1e-12, 0);

    /* bias_prior keeps the prior bias std; otherwise biases use their current std */
    ASSERT_OK(nnp_init_net(net, &ic, 3));
    nnp_precond_local_sums(&p, net, 0, 1);
    ASSERT_OK(nnp_precond_from_sums(&p, net, 11));
    ASSERT_TRUE(p.sigma[1] != 0.2);
    nnp_precond_free(&p);
    c.bias_prior = 1;
    ASSERT_OK(nnp_precond_init(&p, &c, net));
    nnp_precond_local_sums(&p, net, 0, 1);
    ASSERT_OK(nnp_precond_from_sums(&p, net, 11));
    for (int j = 1; j < p.n; j += 2)
        ASSERT_NEAR(p.sigma[j], 0.2, 0);
    /* recompute from given sigmas is the same function in both modes */
    nnp_precond q;
    nnp_precond_cfg cst = cfg_of(NNP_PRECOND_STATIC, NNP_PFORM_CORRECTED);
    ASSERT_OK(nnp_precond_init(&q, &cst, net));
    memcpy(q.sigma, p.sigma, (size_t)p.n * sizeof(double));
    nnp_precond_recompute(&q, net);
    for (int j = 0; j < p.n; j++)
        ASSERT_NEAR(q.scale[j], p.scale[j], 0);
    nnp_precond_free(&q);
    nnp_precond_free(&p);
    nnp_net_free(net);
}

/* The corrected formula's constants on LeNet: fan-out C_out*k*k, and the backward factor of
 * the relu + 2x2 max pool blocks (15/16 times outputs/inputs of the pool). */
static void test_corrected_lenet(void)
{
    nnp_net *net = make_net("lenet", 4);
    nnp_precond_cfg c = cfg_of(NNP_PRECOND_STATIC, NNP_PFORM_CORRECTED);
    nnp_precond p;
    ASSERT_OK(nnp_precond_init(&p, &c, net));
    const double s_c1 = sqrt(0.96 / 9), s_c2 = sqrt(0.96 / 54);
    const double s_f1 = sqrt(0.96 / 576 / 0.34), s_f2 = sqrt(0.96 / 120 / 0.34),
                 s_f3 = sqrt(0.96 / 84 / 0.34);
    /* conv1 (pad 2): 30x30 -> pool 15x15; conv2 15x15 -> 13x13 -> pool 6x6 */
    ASSERT_CLOSE(p.gain[0], sqrt(6 * 9 * 1.0) * s_c1, 1e-14, 0);
    /* conv2 has no padding: its 15x15 input positions are read by 13*13*9/225 = 6.76 taps
     * on average, not 9 */
    ASSERT_CLOSE(p.gain[2], sqrt(16 * (169 * 9.0 / 225) * (15.0 / 16) * (225.0 / 900)) * s_c2,
                 1e-14, 0);
    ASSERT_CLOSE(p.gain[4], sqrt(120 * (15.0 / 16) * (576.0 / 2704)) * s_f1, 1e-14, 0);
    ASSERT_CLOSE(p.gain[6], sqrt(84 * 0.5) * s_f2, 1e-14, 0);
    ASSERT_CLOSE(p.gain[8], sqrt(10 * 0.5) * s_f3, 1e-14, 0);
    printf("  corrected LeNet multipliers (static, --init seed prior):\n");
    for (int j = 0; j < p.n; j++)
        printf("    %-14s sigma %.6f  g %.6f  prec %.6f  m %.6f\n", net->tensors[j].name,
               p.sigma[j], p.gain[j], p.prec[j], p.scale[j]);
    nnp_precond_free(&p);
    nnp_net_free(net);
}

/* Backward factor d = g^2/(fan_out sigma^2) of the second layer of small nets: one per
 * activation / pooling kind. The tanh and sigmoid values are E[f'(z)^2], z ~ N(0,1), from an
 * independent 200001-point quadrature on [-12, 12]. */
static double second_layer_d(const char *spec, nnp_shape in)
{
    nnp_net *net = NULL;
    if (nnp_net_create(spec, in, NNP_ACT_RELU, 2, &net) != NNP_OK) {
        fprintf(stderr, "cannot build %s: %s\n", spec, nnp_error_msg());
        exit(2);
    }
    nnp_precond_cfg c = cfg_of(NNP_PRECOND_STATIC, NNP_PFORM_CORRECTED);
    nnp_precond p;
    ASSERT_OK(nnp_precond_init(&p, &c, net));
    const nnp_tensor *t = &net->tensors[2];
    double d = p.gain[2] * p.gain[2] / (t->fan_out * p.sigma[2] * p.sigma[2]);
    nnp_precond_free(&p);
    nnp_net_free(net);
    return d;
}

/* E[f'(z)^2] for z ~ N(0, v) by a 200001-point trapezoid on [-12 sd, 12 sd]: independent
 * of precond.c's 241-point grid. */
static double msd_ref(int tanh_not_sigmoid, double v)
{
    const int n = 200000;
    const double sd = sqrt(v), h = 24.0 / n;
    double acc = 0;
    for (int i = 0; i <= n; i++) {
        double u = -12.0 + h * i, z = sd * u, d;
        if (tanh_not_sigmoid) {
            double t = tanh(z);
            d = 1 - t * t;
        } else {
            double e = 1 / (1 + exp(-z));
            d = e * (1 - e);
        }
        acc += (i == 0 || i == n ? 0.5 : 1.0) * d * d * exp(-0.5 * u * u);
    }
    return acc * h / sqrt(2 * 3.14159265358979323846);
}

static void test_corrected_factors(void)
{
    /* the first layer's pre-activation variance under the seed prior and N(0,1) input:
     * 8 * 0.96/(8*0.34) + 0.2^2; tanh and sigmoid are differentiated there */
    const double v1 = 0.96 / 0.34 + 0.04;
    ASSERT_CLOSE(second_layer_d("seq:8/dense:8/tanh/dense:3", (nnp_shape){8, 1, 1}),
                 msd_ref(1, v1), 1e-9, 0);
    ASSERT_CLOSE(second_layer_d("seq:8/dense:8/sigmoid/dense:3", (nnp_shape){8, 1, 1}),
                 msd_ref(0, v1), 1e-9, 0);
    /* at unit variance, the classic values */
    ASSERT_CLOSE(msd_ref(1, 1.0), 0.4644029024482378, 1e-12, 0);
    ASSERT_CLOSE(msd_ref(0, 1.0), 0.044836241350191895, 1e-12, 0);
    nnp_shape f8 = {8, 1, 1}, im = {1, 8, 8};
    ASSERT_CLOSE(second_layer_d("seq:8/dense:8/relu/dense:3", f8), 0.5, 1e-15, 0);
    ASSERT_CLOSE(second_layer_d("seq:8/dense:8/leaky-relu:0.1/dense:3", f8), 0.505, 1e-7, 0);
    ASSERT_CLOSE(second_layer_d("seq:8/dense:8/dense:3", f8), 1.0, 1e-15, 0);
    /* conv 8x8 pad 2 -> 10x10; 2x2 average pool -> 5x5: (25/100)/4 times relu's 1/2 */
    ASSERT_CLOSE(second_layer_d("seq:1x8x8/conv:2:3:1:2/relu/avgpool:2/flatten/dense:3", im),
                 0.5 * 0.25 / 4, 1e-15, 0);
    /* 2x2 max pool after relu: the window maximum is positive w.p. 15/16 */
    ASSERT_CLOSE(second_layer_d("seq:1x8x8/conv:2:3:1:2/relu/maxpool:2/flatten/dense:3", im),
                 15.0 / 16 * 0.25, 1e-15, 0);
    ASSERT_CLOSE(second_layer_d("seq:1x8x8/conv:2:3:1:2/maxpool:2/leaky-relu:0.1/flatten/dense:3",
                                im),
                 (15.0 / 16 + 0.01 / 16) * 0.25, 1e-7, 0);
}

/* The optimizer can produce the next step's per-tensor sums in its update pass
 * (nnp_optim_want_sums); they must equal nnp_precond_local_sums of the updated parameters
 * exactly, for every rank's share, with SGD-momentum and with Adam. */
static void test_fused_sums(void)
{
    const nnp_opt_kind kinds[2] = {NNP_OPT_SGD, NNP_OPT_ADAM};
    for (int kk = 0; kk < 2; kk++)
        for (int size = 1; size <= 3; size++)
            for (int rank = 0; rank < size; rank++) {
                nnp_net *net = NULL;
                ASSERT_OK(nnp_net_create("mlp:37-29x3-7", (nnp_shape){37, 1, 1}, NNP_ACT_RELU,
                                         2, &net));
                if (!net)
                    return;
                nnp_init_cfg ic;
                ASSERT_OK(nnp_init_parse("seed", &ic));
                ASSERT_OK(nnp_init_net(net, &ic, 9));
                nnp_rng r;
                nnp_rng_seed(&r, 77, NNP_STREAM_DATA);
                nnp_rng_fill_normal(&r, net->grads, net->n_params, 0, 1);
                nnp_precond_cfg pcfg;
                nnp_precond_defaults(&pcfg);
                pcfg.mode = NNP_PRECOND_DYNAMIC;
                nnp_precond pc;
                ASSERT_OK(nnp_precond_init(&pc, &pcfg, net));
                nnp_optim_cfg oc = {.kind = kinds[kk], .momentum = 0.9, .beta1 = 0.9,
                                    .beta2 = 0.999, .eps = 1e-8};
                nnp_optim o;
                ASSERT_OK(nnp_optim_init(&o, &oc, net->n_params));
                double *fused = calloc(2 * (size_t)pc.n, sizeof(double));
                size_t lo, hi;
                nnp_split(net->n_params, size, rank, &lo, &hi);
                nnp_optim_step(&o, net, 0.01, pc.scale); /* a step without the request */
                nnp_optim_want_sums(&o, fused, lo, hi);
                nnp_optim_step(&o, net, 0.01, pc.scale);
                ASSERT_TRUE(o.sums == NULL); /* the request is one-shot */
                nnp_precond_local_sums(&pc, net, rank, size);
                for (int j = 0; j < 2 * pc.n; j++)
                    if (fused[j] != pc.sums[j])
                        TEST_FAIL_("fused sums differ: kind %d rank %d/%d entry %d: %.17g vs %.17g",
                                   kk, rank, size, j, fused[j], pc.sums[j]);
                nnp_test_checks++;
                free(fused);
                nnp_optim_free(&o);
                nnp_precond_free(&pc);
                nnp_net_free(net);
            }
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--trials") == 0) {
        n_trials_fwd = n_trials_bwd = atoi(argv[2]);
        if (n_trials_fwd < 3) {
            fprintf(stderr, "usage: %s [--trials N>=3]\n", argv[0]);
            return 2;
        }
    }
    test_seed_reference();
    test_simulated_ranks();
    test_fused_sums();
    test_batch_sums_pieces("lenet");
    test_batch_sums_pieces(MLP_SPEC);
    test_dynamic_step0();
    test_errors();
    test_corrected_lenet();
    test_corrected_factors();
    test_statistics();
    TIMED(test_equalization());
    fflush(stdout);
    TEST_MAIN_END();
}
