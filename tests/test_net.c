/* test_net.c - model specs, parameter layout, whole-network gradients, and a training step
 * that allocates nothing.
 *
 * The whole-network check complements the per-kernel checks of test_gradcheck.c: it
 * verifies that net.c wires the kernels together correctly (offsets, aliasing of flatten,
 * activation buffers, weight/bias order) by comparing nnp_net_backward with central finite
 * differences of the loss through nnp_net_forward.
 */
#include <string.h>
#include "nnprec/alloc.h"
#include "nnprec/init.h"
#include "nnprec/net.h"
#include "nnprec/optim.h"
#include "nnprec/rng.h"
#include "test_util.h"

static void test_lenet_layout(void)
{
    nnp_net *net = NULL;
    ASSERT_OK(nnp_net_create("lenet", (nnp_shape){1, 28, 28}, NNP_ACT_RELU, 4, &net));
    if (!net)
        return;
    /* conv1 1->6 3x3 pad 2: 30x30, pool 15x15, conv2 6->16 3x3: 13x13, pool floor 6x6 */
    ASSERT_EQ_INT(net->n_tensors, 10);
    ASSERT_EQ_INT(net->n_classes, 10);
    size_t want = (6 * 9 + 6) + (16 * 54 + 16) + (576 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10);
    ASSERT_EQ_INT(net->n_params, want);
    const nnp_tensor *fc1 = &net->tensors[4];
    ASSERT_TRUE(strcmp(fc1->name, "fc1.weight") == 0);
    ASSERT_EQ_INT(fc1->shape[0], 120);
    ASSERT_EQ_INT(fc1->shape[1], 576);
    ASSERT_TRUE(strcmp(net->tensors[0].name, "conv1.weight") == 0);
    ASSERT_EQ_INT(net->tensors[0].fan_in, 9);
    ASSERT_EQ_INT(net->tensors[2].fan_out, 16 * 9);
    ASSERT_EQ_INT(net->layers[0].out.h, 30);
    ASSERT_EQ_INT(net->layers[2].out.h, 15);
    ASSERT_EQ_INT(net->layers[3].out.h, 13);
    ASSERT_EQ_INT(net->layers[5].out.h, 6);
    /* tensors are contiguous, weight then bias, in forward order */
    size_t off = 0;
    for (int j = 0; j < net->n_tensors; j++) {
        ASSERT_EQ_INT(net->tensors[j].off, off);
        ASSERT_EQ_INT(net->tensors[j].is_bias, j % 2);
        off += net->tensors[j].n;
    }
    ASSERT_EQ_INT(net->layers[0].next_act, NNP_ACT_RELU);
    nnp_net_free(net);
}

static void test_specs(void)
{
    nnp_net *net = NULL;
    ASSERT_OK(nnp_net_create("mlp:784-256x12-10", (nnp_shape){1, 28, 28}, NNP_ACT_TANH, 2, &net));
    if (net) {
        ASSERT_EQ_INT(net->n_trainable, 13);
        ASSERT_EQ_INT(net->n_params, 784 * 256 + 256 + 11 * (256 * 256 + 256) + 256 * 10 + 10);
        ASSERT_EQ_INT(net->layers[1].act, NNP_ACT_TANH);
        ASSERT_EQ_INT(net->layers[net->n_layers - 1].kind, NNP_L_DENSE); /* no act on logits */
        nnp_net_free(net);
    }
    ASSERT_OK(nnp_net_create("seq:3x8x8/conv:4:3:2:1/leaky-relu:0.1/avgpool:2/flatten/dense:5",
                             (nnp_shape){1, 1, 1}, NNP_ACT_RELU, 2, &net));
    if (net) {
        ASSERT_EQ_INT(net->input.c, 3);
        ASSERT_EQ_INT(net->layers[0].out.h, 4); /* (8 + 2 - 3)/2 + 1 */
        ASSERT_EQ_INT(net->layers[2].out.h, 2);
        ASSERT_NEAR(net->layers[1].alpha, 0.1, 1e-7);
        ASSERT_EQ_INT(net->n_classes, 5);
        nnp_net_free(net);
    }
    const char *bad[] = {"resnet", "mlp:", "mlp:784", "mlp:784-0-10", "mlp:784-abc-10",
                         "seq:1x28x28/conv:6", "seq:1x4x4/conv:6:9", "seq:1x28x28/softmax",
                         "seq:1x28x28/relu", "seq:1x28x28/dense:10:3", "seq:1x4x4/maxpool:8",
                         /* empty items and widths that strtok/strtol would let through */
                         "mlp:784--10", "mlp:784-32-10-", "mlp:-784-10", "mlp:784- 32-10",
                         "mlp:784-+32-10", "mlp:784-0x20-10", "seq:1x28x28//dense:10",
                         "seq:1x28x28/dense:10/", "seq:/1x28x28/dense:10", "seq:1x28x28/dense: 10",
                         /* empty fields (found by tests/fuzz/fuzz_spec.c: "conv:4:43:::2:310"
                          * was read as conv:4:43:2:310) and shape parts */
                         "seq:1x28x28/conv:4:3::1/flatten/dense:10",
                         "seq:1x28x28/conv:4:3:1:/flatten/dense:10", "seq:1x28x28/dense:10:",
                         "seq:1x28x28/:relu/flatten/dense:10", "seq:1xx28x28/flatten/dense:10",
                         "seq:1x28x28x/flatten/dense:10"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        net = NULL;
        ASSERT_STATUS(nnp_net_create(bad[i], (nnp_shape){1, 28, 28}, NNP_ACT_RELU, 2, &net),
                      NNP_ERR_ARG);
        ASSERT_TRUE(net == NULL);
    }
    ASSERT_STATUS(nnp_net_create("lenet", (nnp_shape){1, 28, 28}, NNP_ACT_RELU, 0, &net),
                  NNP_ERR_ARG);
}

/* bn, gap, dropout: tensors (bn weight/bias with PyTorch's names), running statistics,
 * shapes, and --init leaving BatchNorm's scale 1 and shift 0. */
static void test_bn_specs(void)
{
    nnp_net *net = NULL;
    ASSERT_OK(nnp_net_create("seq:3x8x8/conv:4:3/bn/relu/gap/dropout:0.25/dense:6/bn/relu/dense:5",
                             (nnp_shape){1, 1, 1}, NNP_ACT_RELU, 2, &net));
    if (!net)
        return;
    ASSERT_EQ_INT(net->n_tensors, 10);
    ASSERT_EQ_INT(net->n_bn, 2);
    ASSERT_TRUE(strcmp(net->tensors[2].name, "bn1.weight") == 0);
    ASSERT_TRUE(strcmp(net->tensors[3].name, "bn1.bias") == 0);
    ASSERT_TRUE(strcmp(net->tensors[4].name, "fc1.weight") == 0);
    ASSERT_TRUE(strcmp(net->tensors[6].name, "bn2.weight") == 0);
    ASSERT_EQ_INT(net->tensors[2].n, 4);
    ASSERT_EQ_INT(net->tensors[6].n, 6);
    ASSERT_EQ_INT(net->n_params, (4 * 27 + 4) + 2 * 4 + (4 * 6 + 6) + 2 * 6 + (6 * 5 + 5));
    ASSERT_EQ_INT(net->layers[3].kind, NNP_L_GAP);
    ASSERT_EQ_INT(net->layers[3].out.c, 4);
    ASSERT_EQ_INT(net->layers[3].out.h, 1);
    ASSERT_NEAR(net->layers[4].drop, 0.25, 1e-7);
    ASSERT_EQ_INT(net->n_running, 2 * 4 + 2 * 6);
    ASSERT_EQ_INT(net->layers[0].next_act, NNP_ACT_RELU); /* through bn: the gain of relu */
    for (int c = 0; c < 4; c++) {
        ASSERT_NEAR(nnp_bn_running_mean(net, 1)[c], 0, 0);
        ASSERT_NEAR(nnp_bn_running_mean(net, 1)[4 + c], 1, 0);
    }
    const char *inits[] = {"pytorch", "xavier-normal", "uniform:0.3", "seed"};
    for (size_t k = 0; k < sizeof inits / sizeof inits[0]; k++) {
        nnp_init_cfg ic;
        ASSERT_OK(nnp_init_parse(inits[k], &ic));
        ASSERT_OK(nnp_init_net(net, &ic, 5));
        for (int j = 2; j < net->n_tensors; j += 4)
            for (size_t e = 0; e < net->tensors[j].n; e++) {
                ASSERT_NEAR(net->params[net->tensors[j].off + e], 1, 0);
                ASSERT_NEAR(net->params[net->tensors[j + 1].off + e], 0, 0);
            }
    }
    /* training forward moves the running statistics and counts the batch; an extra pass
     * with freeze_running and evaluation leave them as they are */
    {
        float x[2 * 3 * 64];
        nnp_rng r;
        nnp_rng_seed(&r, 4, NNP_STREAM_DATA);
        nnp_rng_fill_normal(&r, x, sizeof x / sizeof x[0], 1.0, 2.0);
        nnp_net_forward(net, 2, x);
        ASSERT_TRUE(net->tracked[0] == 1 && net->tracked[1] == 1);
        float keep[20];
        memcpy(keep, net->running, sizeof keep);
        ASSERT_TRUE(keep[0] != 0.0f);
        net->freeze_running = 1;
        nnp_net_forward(net, 2, x);
        net->freeze_running = 0;
        net->training = 0;
        nnp_net_forward(net, 2, x);
        net->training = 1;
        ASSERT_TRUE(net->tracked[0] == 1 && memcmp(keep, net->running, sizeof keep) == 0);
    }
    nnp_net_free(net);
    /* bn changes no other layer's initialization */
    nnp_net *a = NULL, *b = NULL;
    ASSERT_OK(nnp_net_create("seq:12/dense:8/relu/dense:3", (nnp_shape){1, 1, 1}, NNP_ACT_RELU,
                             2, &a));
    ASSERT_OK(nnp_net_create("seq:12/dense:8/bn/relu/dense:3", (nnp_shape){1, 1, 1},
                             NNP_ACT_RELU, 2, &b));
    if (a && b) {
        nnp_init_cfg ic;
        ASSERT_OK(nnp_init_parse("kaiming-normal", &ic));
        ASSERT_OK(nnp_init_net(a, &ic, 9));
        ASSERT_OK(nnp_init_net(b, &ic, 9));
        ASSERT_TRUE(memcmp(a->params + a->tensors[2].off, b->params + b->tensors[4].off,
                           a->tensors[2].n * sizeof(float)) == 0);
    }
    nnp_net_free(a);
    nnp_net_free(b);
    const char *bad[] = {"seq:1x28x28/bn:3", "seq:1x28x28/gap:2", "seq:1x28x28/dropout",
                         "seq:1x28x28/dropout:1", "seq:1x28x28/dropout:-0.1",
                         "seq:1x28x28/dropout:0.5x/dense:10", "seq:1x28x28/dropout:abc"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        net = NULL;
        ASSERT_STATUS(nnp_net_create(bad[i], (nnp_shape){1, 28, 28}, NNP_ACT_RELU, 2, &net),
                      NNP_ERR_ARG);
        ASSERT_TRUE(net == NULL);
    }
}

/* Residual blocks: layer layout, tensor count, names and order, buffers shared between the
 * fork/add and their neighbours, the named models' sizes, spec errors, and a step that
 * allocates nothing. */
static void test_res_specs(void)
{
    nnp_net *net = NULL;
    ASSERT_OK(nnp_net_create("seq:3x8x8/conv:4:3:1:1/bn/relu/res[conv:4:3:1:1/bn/relu/"
                             "conv:4:3:1:1/bn]/relu/res[conv:6:3:2:1/bn/relu/conv:6:3:1:1/bn]/"
                             "relu/gap/dense:5",
                             (nnp_shape){1, 1, 1}, NNP_ACT_RELU, 3, &net));
    if (net) {
        /* 0 conv 1 bn 2 relu | 3 fork 4-8 branch 9 add | 10 relu | 11 fork 12-16 branch
         * 17-18 shortcut (1x1 conv stride 2, bn) 19 add | 20 relu 21 gap 22 dense */
        ASSERT_EQ_INT(net->n_layers, 23);
        ASSERT_EQ_INT(net->layers[3].kind, NNP_L_RES_FORK);
        ASSERT_EQ_INT(net->layers[3].proj, 0);
        ASSERT_EQ_INT(net->layers[9].kind, NNP_L_RES_ADD);
        ASSERT_EQ_INT(net->layers[11].proj, 1);
        ASSERT_EQ_INT(net->layers[17].kind, NNP_L_CONV2D);
        ASSERT_EQ_INT(net->layers[17].res, NNP_RES_SHORTCUT);
        ASSERT_EQ_INT(net->layers[17].src, 11);
        ASSERT_EQ_INT(net->layers[17].k, 1);
        ASSERT_EQ_INT(net->layers[17].s, 2);
        ASSERT_EQ_INT(net->layers[17].in.c, 4);
        ASSERT_EQ_INT(net->layers[17].out.h, 4);
        ASSERT_EQ_INT(net->layers[18].kind, NNP_L_BN);
        ASSERT_EQ_INT(net->layers[19].out.c, 6);
        /* forward order: stem, block 1's branch, block 2's branch, its shortcut, dense */
        const char *names[] = {
            "layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias",
            "layers.3.branch.0.weight", "layers.3.branch.0.bias", "layers.3.branch.1.weight",
            "layers.3.branch.1.bias", "layers.3.branch.3.weight", "layers.3.branch.3.bias",
            "layers.3.branch.4.weight", "layers.3.branch.4.bias",
            "layers.5.branch.0.weight", "layers.5.branch.0.bias", "layers.5.branch.1.weight",
            "layers.5.branch.1.bias", "layers.5.branch.3.weight", "layers.5.branch.3.bias",
            "layers.5.branch.4.weight", "layers.5.branch.4.bias",
            "layers.5.shortcut.0.weight", "layers.5.shortcut.0.bias",
            "layers.5.shortcut.1.weight", "layers.5.shortcut.1.bias",
            "layers.8.weight", "layers.8.bias"};
        ASSERT_EQ_INT(net->n_tensors, (int)(sizeof names / sizeof names[0]));
        size_t off = 0;
        for (int j = 0; j < net->n_tensors && j < (int)(sizeof names / sizeof names[0]); j++) {
            if (strcmp(net->tensors[j].name, names[j]) != 0)
                TEST_FAIL_("tensor %d is %s, expected %s", j, net->tensors[j].name, names[j]);
            ASSERT_EQ_INT(net->tensors[j].off, off);
            off += net->tensors[j].n;
        }
        ASSERT_EQ_INT(off, net->n_params);
        ASSERT_EQ_INT(net->tensors[20].shape[1], 4); /* shortcut conv 4 -> 6, 1x1 */
        ASSERT_EQ_INT(net->tensors[20].shape[2], 1);
        ASSERT_EQ_INT(net->n_bn, 6);
        /* init gains: a branch's last conv and the shortcut's conv see the relu after the add */
        ASSERT_EQ_INT(net->layers[7].next_act, NNP_ACT_RELU);
        ASSERT_EQ_INT(net->layers[15].next_act, NNP_ACT_RELU);
        ASSERT_EQ_INT(net->layers[17].next_act, NNP_ACT_RELU);
        /* the fork moves no data; the add's input gradient is its output's */
        ASSERT_TRUE(net->act[4] == net->act[3]);
        ASSERT_TRUE(net->dact[9] == net->dact[10]);
        ASSERT_TRUE(net->dact[17] == net->dact[20] && net->dact[19] == net->dact[20]);
        ASSERT_TRUE(net->dact[12] == net->dact[11]);
        ASSERT_TRUE(net->dskip[17] != NULL && net->dskip[12] == NULL);

        /* training steps allocate nothing */
        nnp_init_cfg ic;
        ASSERT_OK(nnp_init_parse("pytorch", &ic));
        ASSERT_OK(nnp_init_net(net, &ic, 1));
        float x[3 * 3 * 64];
        unsigned char y[3] = {0, 3, 4};
        nnp_rng r;
        nnp_rng_seed(&r, 3, NNP_STREAM_DATA);
        nnp_rng_fill_normal(&r, x, sizeof x / sizeof x[0], 0, 1);
        unsigned long before = nnp_alloc_count();
        for (int step = 0; step < 3; step++) {
            nnp_net_forward(net, 3, x);
            nnp_softmax_ce(3, 5, net->act[net->n_layers], y, 1.0f / 3, net->dact[net->n_layers],
                           NULL);
            nnp_net_backward(net, 3, NULL, NULL);
        }
        ASSERT_EQ_INT(nnp_alloc_count(), before);
        nnp_net_free(net);
    }
    /* named models: He et al.'s parameter counts (convs with bias, as nnprec's) */
    const struct { const char *spec; int tensors; size_t params; } named[] = {
        {"resnet8", 38, 78090},
        {"resnet20", 86, 272970},
        {"resmlp:784-256x12-10", 26, 784 * 256 + 256 + 11 * (256 * 256 + 256) + 256 * 10 + 10},
        {"resmlp-bn:784-256x12-10", 50,
         784 * 256 + 256 + 11 * (256 * 256 + 256) + 256 * 10 + 10 + 12 * 2 * 256},
        {"resmlp:20-16-8-4", 8, 20 * 16 + 16 + (16 * 8 + 8) + (16 * 8 + 8) + 8 * 4 + 4},
    };
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++) {
        net = NULL;
        ASSERT_OK(nnp_net_create(named[i].spec, (nnp_shape){1, 28, 28}, NNP_ACT_RELU, 2, &net));
        if (!net)
            continue;
        ASSERT_EQ_INT(net->n_tensors, named[i].tensors);
        ASSERT_EQ_INT(net->n_params, named[i].params);
        ASSERT_EQ_INT(net->n_classes, i < 4 ? 10 : 4);
        nnp_net_free(net);
    }
    ASSERT_OK(nnp_net_create("resnet8", (nnp_shape){1, 28, 28}, NNP_ACT_RELU, 2, &net));
    if (net) {
        ASSERT_TRUE(strcmp(net->tensors[4].name, "layers.3.branch.0.weight") == 0);
        ASSERT_TRUE(strcmp(net->tensors[20].name, "layers.5.shortcut.0.weight") == 0);
        ASSERT_TRUE(strcmp(net->tensors[36].name, "layers.10.weight") == 0);
        ASSERT_EQ_INT(net->layers[net->n_layers - 3].in.h, 7); /* 28 -> 14 -> 7 */
        nnp_net_free(net);
    }
    const char *bad[] = {
        "seq:1x8x8/res[conv:4:3:1:1", "seq:1x8x8/res[conv:4:3:1:1/bn/dense:3",
        "seq:1x8x8/res[]", "seq:1x8x8/res[res[conv:1:3:1:1]]",
        "seq:1x8x8/res[conv:1:3:1:1/res[conv:1:3:1:1]]", "seq:1x8x8/res[conv:4:3]",
        "seq:1x8x8/res[relu/maxpool:2]", "seq:1x8x8/conv:4:3]/dense:3",
        "seq:1x8x8/block[conv:4:3:1:1]", "seq:1x8x8/res[conv:4:3:1:1/]",
        "seq:1x8x8/res[/conv:4:3:1:1]", "seq:1x8x8/res[conv:4:3:1:1]x/dense:3",
        "seq:1x8x8/res[conv:4:3:1:1]]", "seq:1x8x8/res[conv:4:3:1:1//bn]",
        "seq:1x8x8/res[gap]", "seq:1x8x8/res[conv:4:9]", "resmlp:", "resmlp:784",
        "resmlp-bn:784--10", "resnet32", "resnet8:10"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        net = NULL;
        nnp_status st = nnp_net_create(bad[i], (nnp_shape){1, 28, 28}, NNP_ACT_RELU, 2, &net);
        if (st != NNP_ERR_ARG)
            TEST_FAIL_("spec %s: status %d, expected NNP_ERR_ARG", bad[i], (int)st);
        ASSERT_TRUE(net == NULL);
        nnp_net_free(net);
    }
}

/* Loss of the whole network on a fixed batch, in double. */
static double net_loss(nnp_net *net, int B, const float *x, const unsigned char *y)
{
    nnp_net_forward(net, B, x);
    return nnp_softmax_ce(B, net->n_classes, net->act[net->n_layers], y, 1.0f, NULL, NULL);
}

/* Central differences of the loss w.r.t. a sample of parameters of every tensor. */
static void gradcheck_net(const char *spec, nnp_shape in, nnp_act act)
{
    const int B = 3;
    nnp_net *net = NULL;
    ASSERT_OK(nnp_net_create(spec, in, act, B, &net));
    if (!net)
        return;
    nnp_init_cfg ic;
    ASSERT_OK(nnp_init_parse("kaiming-normal", &ic));
    ASSERT_OK(nnp_init_net(net, &ic, 7));
    /* nonzero biases so their gradients are exercised off the kink of relu */
    nnp_rng r;
    nnp_rng_seed(&r, 11, NNP_STREAM_DATA);
    for (int j = 1; j < net->n_tensors; j += 2)
        nnp_rng_fill_normal(&r, net->params + net->tensors[j].off, net->tensors[j].n, 0, 0.1);
    size_t nx = (size_t)B * nnp_shape_size(net->input);
    float *x = malloc(nx * sizeof(float));
    nnp_rng_fill_normal(&r, x, nx, 0, 1);
    unsigned char y[3] = {1, 0, 2};

    nnp_net_forward(net, B, x);
    nnp_softmax_ce(B, net->n_classes, net->act[net->n_layers], y, 1.0f, net->dact[net->n_layers],
                   NULL);
    nnp_net_backward(net, B, NULL, NULL);
    float *g = malloc(net->n_params * sizeof(float));
    memcpy(g, net->grads, net->n_params * sizeof(float));

    /* float32 forward: eps 1e-2 on O(0.1-1) weights; tolerance absorbs O(eps^2) curvature and
     * rounding (1e-7 relative of a loss of O(1) divided by 2 eps -> ~1e-5). Points whose
     * perturbation crosses a relu/maxpool kink would differ by O(1): none are expected for
     * these random draws, and any that do fail loudly. */
    const float eps = 1e-2f;
    int checked = 0;
    double worst = 0;
    for (int j = 0; j < net->n_tensors; j++) {
        const nnp_tensor *t = &net->tensors[j];
        for (int k = 0; k < 6; k++) {
            size_t i = t->off + (size_t)(nnp_rng_below(&r, t->n));
            float keep = net->params[i];
            net->params[i] = keep + eps;
            double lp = net_loss(net, B, x, y);
            net->params[i] = keep - eps;
            double lm = net_loss(net, B, x, y);
            net->params[i] = keep;
            double fd = (lp - lm) / (2.0 * eps), err = fabs(fd - g[i]);
            double tol = 2e-3 + 2e-2 * fabs(fd);
            if (err > worst)
                worst = err;
            checked++;
            if (!(err <= tol))
                TEST_FAIL_("%s %s[%zu]: backward %.6g vs finite difference %.6g", spec, t->name,
                           i - t->off, g[i], fd);
        }
    }
    ASSERT_TRUE(checked == 6 * net->n_tensors);
    fprintf(stderr, "  gradcheck %s: %d parameters, max |err| %.2e\n", spec, checked, worst);
    free(g);
    free(x);
    nnp_net_free(net);
}

/* The gradient of a batch equals the sum of the gradients of its pieces, whatever their
 * sizes and order: pieces of 5, 7, 1, 0 and 5 samples computed one after another on the same
 * network (buffers still holding the previous, larger pieces) against one pass over all 18.
 * This is what --balance relies on when it changes every rank's share between steps. */
static void test_split_batches(const char *spec, nnp_shape in)
{
    enum { B = 18 };
    nnp_net *net = NULL;
    ASSERT_OK(nnp_net_create(spec, in, NNP_ACT_RELU, B, &net));
    if (!net)
        return;
    nnp_init_cfg ic;
    ASSERT_OK(nnp_init_parse("pytorch", &ic));
    ASSERT_OK(nnp_init_net(net, &ic, 3));
    nnp_rng r;
    nnp_rng_seed(&r, 5, NNP_STREAM_DATA);
    size_t d = nnp_shape_size(net->input);
    float *x = malloc((size_t)B * d * sizeof(float));
    float *whole = malloc(net->n_params * sizeof(float));
    double *sum = calloc(net->n_params, sizeof(double));
    nnp_rng_fill_normal(&r, x, (size_t)B * d, 0, 1);
    unsigned char y[B];
    for (int i = 0; i < B; i++)
        y[i] = (unsigned char)nnp_rng_below(&r, (uint64_t)net->n_classes);

    nnp_net_forward(net, B, x);
    nnp_softmax_ce(B, net->n_classes, net->act[net->n_layers], y, 1.0f / B,
                   net->dact[net->n_layers], NULL);
    nnp_net_backward(net, B, NULL, NULL);
    memcpy(whole, net->grads, net->n_params * sizeof(float));

    const int pieces[] = {5, 7, 1, 0, 5};
    int at = 0;
    for (size_t k = 0; k < sizeof pieces / sizeof pieces[0]; k++) {
        int b = pieces[k];
        if (b == 0)
            continue; /* a rank with no samples contributes a zero gradient */
        nnp_net_forward(net, b, x + (size_t)at * d);
        nnp_softmax_ce(b, net->n_classes, net->act[net->n_layers], y + at, 1.0f / B,
                       net->dact[net->n_layers], NULL);
        nnp_net_backward(net, b, NULL, NULL);
        for (size_t i = 0; i < net->n_params; i++)
            sum[i] += net->grads[i];
        at += b;
    }
    ASSERT_TRUE(at == B);
    double num = 0, den = 0;
    for (size_t i = 0; i < net->n_params; i++) {
        num += (sum[i] - whole[i]) * (sum[i] - whole[i]);
        den += (double)whole[i] * whole[i];
    }
    double rel = sqrt(num / den);
    fprintf(stderr, "  split batches %s: |sum of pieces - whole| / |whole| = %.2e\n", spec, rel);
    if (!(rel < 1e-5))
        TEST_FAIL_("%s: gradient of the pieces differs from the whole batch's by %.2e", spec, rel);
    free(x);
    free(whole);
    free(sum);
    nnp_net_free(net);
}

/* relu followed by max pooling runs as one pass (net->fuse, nnp_layer.fused), and a
 * convolution before such a pair pools its own output (nnp_layer.fused_conv): the logits,
 * every pooling's argmax, every gradient and every input gradient a later layer sees are the
 * same bits as with each layer on its own. Inputs rounded to halves put ties in the pooling
 * windows, the relu's zeros tie whole windows, and a NaN pixel and -0 pixels take the odd
 * paths. want_fused: the number of layers marked (two per pair); want_conv: the
 * convolutions marked. */
static void test_fused_relu_pool(const char *spec, nnp_shape in, int want_fused, int want_conv)
{
    enum { B = 5 };
    nnp_net *net = NULL;
    ASSERT_OK(nnp_net_create(spec, in, NNP_ACT_RELU, B, &net));
    if (!net)
        return;
    int marked = 0, convs = 0;
    for (int i = 0; i < net->n_layers; i++) {
        marked += net->layers[i].fused;
        convs += net->layers[i].fused_conv;
    }
    ASSERT_EQ_INT(marked, want_fused);
    ASSERT_EQ_INT(convs, want_conv);
    ASSERT_EQ_INT(net->fuse, 1);
    nnp_init_cfg ic;
    ASSERT_OK(nnp_init_parse("pytorch", &ic));
    ASSERT_OK(nnp_init_net(net, &ic, 7));
    nnp_rng r;
    nnp_rng_seed(&r, 11, NNP_STREAM_DATA);
    const size_t d = nnp_shape_size(net->input), L = (size_t)net->n_layers;
    float *x = malloc((size_t)B * d * sizeof(float));
    nnp_rng_fill_normal(&r, x, (size_t)B * d, 0, 1);
    for (size_t k = 0; k < (size_t)B * d; k++)
        x[k] = roundf(2.0f * x[k]) / 2.0f;
    x[3] = -0.0f;
    x[d + 5] = NAN; /* sample 1 only */
    unsigned char y[B] = {1, 2, 3, 0, 1};
    float *keep[2][3] = {{NULL}};
    size_t na = 0; /* every max pooling's argmax, both runs */
    for (size_t i = 0; i < L; i++)
        if (net->argmax[i])
            na += (size_t)B * nnp_shape_size(net->layers[i].out);
    int *am[2] = {calloc(na + 1, sizeof(int)), calloc(na + 1, sizeof(int))};
    for (int fuse = 1; fuse >= 0; fuse--) {
        net->fuse = fuse;
        nnp_net_forward(net, B, x);
        nnp_softmax_ce(B, net->n_classes, net->act[L], y, 1.0f / B, net->dact[L], NULL);
        nnp_net_backward(net, B, NULL, NULL);
        /* the logits, the gradients, and the input gradient of every layer a fused pair
         * does not own (a fused relu's dact is its pooling's input gradient: unwritten) */
        size_t nd = 0;
        for (size_t i = 1; i < L; i++)
            nd += (size_t)B * nnp_shape_size(net->layers[i].in);
        float *lg = malloc((size_t)B * net->n_classes * sizeof(float));
        float *g = malloc(net->n_params * sizeof(float)), *dd = calloc(nd, sizeof(float));
        memcpy(lg, net->act[L], (size_t)B * net->n_classes * sizeof(float));
        memcpy(g, net->grads, net->n_params * sizeof(float));
        size_t at = 0;
        for (size_t i = 1; i < L; i++) {
            const size_t n = (size_t)B * nnp_shape_size(net->layers[i].in);
            const int owned_by_pair = net->layers[i - 1].kind == NNP_L_ACT && net->layers[i - 1].fused;
            if (!owned_by_pair)
                memcpy(dd + at, net->dact[i], n * sizeof(float));
            at += n;
        }
        for (size_t i = 0, a = 0; i < L; i++)
            if (net->argmax[i]) {
                const size_t n = (size_t)B * nnp_shape_size(net->layers[i].out);
                memcpy(am[fuse] + a, net->argmax[i], n * sizeof(int));
                a += n;
            }
        keep[fuse][0] = lg;
        keep[fuse][1] = g;
        keep[fuse][2] = dd;
        if (fuse == 0) {
            ASSERT_TRUE(memcmp(keep[0][0], keep[1][0], (size_t)B * net->n_classes * sizeof(float)) == 0);
            ASSERT_TRUE(memcmp(keep[0][1], keep[1][1], net->n_params * sizeof(float)) == 0);
            ASSERT_TRUE(memcmp(keep[0][2], keep[1][2], nd * sizeof(float)) == 0);
            ASSERT_TRUE(memcmp(am[0], am[1], na * sizeof(int)) == 0);
        }
    }
    fprintf(stderr, "  fused relu+maxpool %s: %d layers fused (%d convolutions), same bits fused "
            "and apart\n", spec, marked, convs);
    free(am[0]);
    free(am[1]);
    for (int f = 0; f < 2; f++)
        for (int k = 0; k < 3; k++)
            free(keep[f][k]);
    free(x);
    nnp_net_free(net);
}

/* A full step (forward, loss, backward, optimizer) performs no allocation. */
static void test_step_allocates_nothing(void)
{
    nnp_net *net = NULL;
    ASSERT_OK(nnp_net_create("lenet", (nnp_shape){1, 28, 28}, NNP_ACT_RELU, 8, &net));
    if (!net)
        return;
    nnp_init_cfg ic;
    ASSERT_OK(nnp_init_parse("pytorch", &ic));
    ASSERT_OK(nnp_init_net(net, &ic, 1));
    nnp_optim o;
    nnp_optim_cfg oc = {.kind = NNP_OPT_ADAM, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8};
    ASSERT_OK(nnp_optim_init(&o, &oc, net->n_params));
    float *x = malloc(8 * 784 * sizeof(float));
    unsigned char y[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    nnp_rng r;
    nnp_rng_seed(&r, 3, NNP_STREAM_DATA);
    nnp_rng_fill_normal(&r, x, 8 * 784, 0, 1);
    double l0 = 0, l1 = 0;
    unsigned long before = nnp_alloc_count();
    for (int step = 0; step < 40; step++) {
        nnp_net_forward(net, 8, x);
        double l = nnp_softmax_ce(8, 10, net->act[net->n_layers], y, 1.0f / 8,
                                  net->dact[net->n_layers], NULL);
        if (step == 0)
            l0 = l;
        l1 = l;
        nnp_net_backward(net, 8, NULL, NULL);
        nnp_optim_step(&o, net, 1e-3, NULL);
    }
    ASSERT_EQ_INT(nnp_alloc_count(), before);
    /* and the steps do train: 40 Adam steps on one batch halve its loss */
    if (!(l1 < 0.5 * l0))
        TEST_FAIL_("40 Adam steps on one batch: loss %.4f -> %.4f, expected below half", l0, l1);
    nnp_optim_free(&o);
    free(x);
    nnp_net_free(net);
}

int main(void)
{
    test_lenet_layout();
    test_specs();
    test_bn_specs();
    test_res_specs();
    gradcheck_net("lenet", (nnp_shape){1, 12, 12}, NNP_ACT_RELU);
    gradcheck_net("mlp:20-16x3-5", (nnp_shape){20, 1, 1}, NNP_ACT_TANH);
    gradcheck_net("seq:2x9x9/conv:3:3:2:1/sigmoid/avgpool:2/flatten/dense:7/leaky-relu/dense:4",
                  (nnp_shape){1, 1, 1}, NNP_ACT_RELU);
    /* BatchNorm in training mode (batch statistics), gap, and dropout with a fixed mask */
    gradcheck_net("seq:2x6x6/conv:3:3/bn/relu/gap/dropout:0.3/dense:8/bn/tanh/dense:4",
                  (nnp_shape){1, 1, 1}, NNP_ACT_RELU);
    gradcheck_net("seq:10/dense:12/bn/sigmoid/dropout:0.5/dense:6/bn/dense:4",
                  (nnp_shape){1, 1, 1}, NNP_ACT_RELU);
    test_step_allocates_nothing();
    test_fused_relu_pool("lenet", (nnp_shape){1, 28, 28}, 4, 2);
    /* overlapping windows (k3 s2 and k3 s1: the conv writes its output, then pools it); a
     * relu as the first layer (no input gradient); tanh before max pooling and relu before
     * average pooling stay apart */
    test_fused_relu_pool("seq:2x9x9/conv:3:3:1:1/relu/maxpool:3:2/flatten/dense:4",
                         (nnp_shape){1, 1, 1}, 2, 1);
    test_fused_relu_pool("seq:3x10x10/relu/maxpool:2/conv:4:3/relu/maxpool:3:1/flatten/dense:3",
                         (nnp_shape){1, 1, 1}, 4, 1);
    /* a 1x1 max pooling first passes the input's exact zeros (and -0) to the relu, whose
     * derivative there is 0 */
    test_fused_relu_pool("seq:3x10x10/maxpool:1/relu/maxpool:2/flatten/dense:3",
                         (nnp_shape){1, 1, 1}, 2, 0);
    test_fused_relu_pool("seq:3x8x8/conv:4:3/tanh/maxpool:2/relu/avgpool:3/flatten/dense:3",
                         (nnp_shape){1, 1, 1}, 0, 0);
    /* the conv pooling in place: odd output sizes (13x11: four windows at a time, the last
     * four overlapping, and a dropped row and column; 5x5: fewer than four windows a row), a
     * stride-2 conv (9x9), and a conv on the GEMM path (padding 3 > k - 1) that writes its
     * output and pools it */
    test_fused_relu_pool("seq:2x7x7/conv:3:3/relu/maxpool:2/flatten/dense:3",
                         (nnp_shape){1, 1, 1}, 2, 1);
    test_fused_relu_pool("seq:2x13x11/conv:5:3:1:1/relu/maxpool:2/flatten/dense:3",
                         (nnp_shape){1, 1, 1}, 2, 1);
    test_fused_relu_pool("seq:2x17x17/conv:4:3:2:1/relu/maxpool:2/flatten/dense:3",
                         (nnp_shape){1, 1, 1}, 2, 1);
    test_fused_relu_pool("seq:2x8x8/conv:3:3:1:3/relu/maxpool:2/flatten/dense:3",
                         (nnp_shape){1, 1, 1}, 2, 1);
    test_split_batches("lenet", (nnp_shape){1, 28, 28});
    test_split_batches("mlp:784-32x2-10", (nnp_shape){784, 1, 1});
    TEST_MAIN_END();
}
