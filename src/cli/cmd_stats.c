/* cmd_stats.c - `nnprec stats`: how an initializer shapes the variance of activations and
 * gradients through depth (docs/initialization.md).
 *
 * Stats mode: one forward and backward pass per draw; per trainable layer the moments of
 * its input, output and gradients (nnp_layerstats_run), averaged over --repeat draws with
 * their spread (std over draws). Collapse mode (--collapse): for each initializer of
 * --inits, the first layer whose activation std falls below --collapse-ratio times the
 * input std or is not finite.
 *
 * The work is cheap and runs on rank 0 only; under mpirun every rank parses the same
 * command line (so option errors are reported once, by rank 0) and the others return.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli.h"
#include "nnprec/alloc.h"
#include "nnprec/data.h"
#include "nnprec/init.h"
#include "nnprec/layerstats.h"
#include "nnprec/net.h"
#include "nnprec/options.h"
#include "nnprec/precond.h"
#include "nnprec/rng.h"

#define DEFAULT_INITS                                                                     \
    "kaiming-normal,xavier-normal,normal:0.01,uniform:0.01,orthogonal,pytorch,constant:0.01," \
    "seed"
#define MAX_INITS 32

typedef struct {
    char model[NNP_OPT_STRLEN], init[NNP_OPT_STRLEN], act[NNP_OPT_STRLEN];
    char data[NNP_OPT_STRLEN], grad[NNP_OPT_STRLEN], precond[NNP_OPT_STRLEN];
    char pformula[NNP_OPT_STRLEN], csv[NNP_OPT_STRLEN], inits[NNP_OPT_STRLEN];
    int batch, synthetic, repeat, depth, width, collapse;
    int64_t seed;
    double ratio;
} stats_opts;

static stats_opts O;

static nnp_option opts[] = {
    OPT_S("model", model, "", "lenet | mlp:784-256x12-10 | seq:... (docs/models.md); or use --depth"),
    OPT_I("depth", depth, "0", "build D square dense layers of width --width (mlp:W-WxD)"),
    OPT_I("width", width, "256", "width of the --depth stack"),
    OPT_S("init", init, "pytorch",
      "pytorch|xavier-uniform|xavier-normal|kaiming-uniform|kaiming-normal|lecun-normal|"
      "orthogonal|normal:STD|uniform:A|constant:C|seed"),
    OPT_S("act", act, "relu", "activation between mlp layers: relu|leaky-relu|tanh|sigmoid|identity"),
    OPT_I("batch", batch, "256", "samples per draw"),
    OPT_F("synthetic", synthetic, "0", "standard normal input (the default without --data)"),
    OPT_S("data", data, "", "folder with Fashion-MNIST IDX files: use its first training images, "
                        "normalized with the training set's moments"),
    OPT_S("grad", grad, "normal", "loss gradient: normal (standard normal) | loss (softmax "
                              "cross-entropy with the labels; random labels if synthetic)"),
    OPT_S("precond", precond, "none",
          "also report the preconditioned gradient: none|static (the --init's prior)|dynamic "
          "(measured weight stds and layer moments of the draw)"),
    OPT_S("precond-formula", pformula, "corrected", "corrected | seed"),
    OPT_I("repeat", repeat, "1", "independent draws (init seed and input); report mean and spread"),
    OPT_L("seed", seed, "1", "random seed; draw r uses seed + r"),
    OPT_F("collapse", collapse, "0", "depth-until-collapse mode for every initializer in --inits"),
    OPT_S("inits", inits, DEFAULT_INITS, "initializers compared by --collapse"),
    OPT_D("collapse-ratio", ratio, "1e-6", "collapse: activation std below RATIO x input std"),
    OPT_S("csv", csv, "", "also write the rows to this CSV file"),
};
#define N_OPTS ((int)(sizeof opts / sizeof opts[0]))

static const char *USAGE =
    "usage: nnprec stats (--model SPEC | --depth D [--width W]) [--init NAME] [options]\n"
    "       nnprec stats --collapse --depth D [--width W] [--inits LIST] [options]\n\n"
    "One forward and backward pass; per trainable layer: input activation mean/std,\n"
    "pre-activation std, activation std after the following activation, weight-gradient\n"
    "std, input-gradient std (and with --precond the preconditioned gradient std).";

/* ---- validated configuration ------------------------------------------------------------ */

typedef struct {
    char spec[NNP_OPT_STRLEN];
    nnp_act act;
    nnp_lsgrad grad;
    nnp_precond_cfg pcfg;
    int n_inits;
    char init_names[MAX_INITS][NNP_OPT_STRLEN];
    nnp_init_cfg inits[MAX_INITS];
} stats_cfg;

static nnp_status split_inits(const char *list, stats_cfg *c)
{
    const char *p = list;
    c->n_inits = 0;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == 0 || len >= sizeof c->init_names[0])
            return nnp_error(NNP_ERR_ARG, "--inits: empty or too long entry in '%s'", list);
        if (c->n_inits == MAX_INITS)
            return nnp_error(NNP_ERR_ARG, "--inits: more than %d initializers", MAX_INITS);
        char *name = c->init_names[c->n_inits];
        memcpy(name, p, len);
        name[len] = '\0';
        NNP_CALL(nnp_init_parse(name, &c->inits[c->n_inits]));
        c->n_inits++;
        p = e ? e + 1 : p + len;
    }
    if (c->n_inits == 0)
        return nnp_error(NNP_ERR_ARG, "--inits is empty");
    return NNP_OK;
}

static nnp_status build_config(stats_cfg *c)
{
    memset(c, 0, sizeof *c);
    NNP_CALL(nnp_act_parse(O.act, &c->act));
    if (O.batch < 1 || O.batch > 65536)
        return nnp_error(NNP_ERR_ARG, "--batch must be in [1, 65536], got %d", O.batch);
    if (O.repeat < 1 || O.repeat > 100000)
        return nnp_error(NNP_ERR_ARG, "--repeat must be in [1, 100000], got %d", O.repeat);
    if (O.depth < 0 || O.depth > 100000)
        return nnp_error(NNP_ERR_ARG, "--depth must be in [0, 100000], got %d", O.depth);
    if (O.width < 1 || O.width > 65536)
        return nnp_error(NNP_ERR_ARG, "--width must be in [1, 65536], got %d", O.width);
    if (O.synthetic && O.data[0])
        return nnp_error(NNP_ERR_ARG, "give --synthetic or --data, not both");
    if (O.depth > 0 && O.model[0])
        return nnp_error(NNP_ERR_ARG, "give --model or --depth, not both");
    if (O.model[0] && O.width != 256)
        return nnp_error(NNP_ERR_ARG, "--width goes with --depth (a --model names its widths)");
    if (O.model[0] && c->act != NNP_ACT_RELU && strncmp(O.model, "mlp:", 4) != 0)
        return nnp_error(NNP_ERR_ARG, "--act applies to mlp: models and --depth only; %s names "
                                      "its own activations", O.model);
    if (O.data[0] && nnp_cli_data_is_h5(O.data))
        return nnp_error(NNP_ERR_ARG, "stats --data reads an IDX folder, not an HDF5 file");
    if (O.depth == 0 && !O.model[0])
        return nnp_error(NNP_ERR_ARG, "give --model SPEC or --depth D");
    if (strcmp(O.grad, "normal") == 0)
        c->grad = NNP_LSGRAD_NORMAL;
    else if (strcmp(O.grad, "loss") == 0)
        c->grad = NNP_LSGRAD_LOSS;
    else
        return nnp_error(NNP_ERR_ARG, "--grad must be normal or loss, got '%s'", O.grad);
    nnp_precond_defaults(&c->pcfg);
    NNP_CALL(nnp_precond_parse_mode(O.precond, &c->pcfg.mode));
    NNP_CALL(nnp_precond_parse_formula(O.pformula, &c->pcfg.formula));
    if (O.collapse) {
        if (c->pcfg.mode != NNP_PRECOND_NONE)
            return nnp_error(NNP_ERR_ARG, "--precond has no meaning with --collapse");
        if (!(O.ratio > 0) || !(O.ratio < 1))
            return nnp_error(NNP_ERR_ARG, "--collapse-ratio must be in (0, 1), got %g", O.ratio);
        NNP_CALL(split_inits(O.inits, c));
    } else {
        c->n_inits = 1;
        snprintf(c->init_names[0], sizeof c->init_names[0], "%s", O.init);
        NNP_CALL(nnp_init_parse(O.init, &c->inits[0]));
        c->pcfg.init = c->inits[0]; /* the corrected formula's static prior */
        c->pcfg.bn_batch = O.batch;  /* one process: BatchNorm over the whole batch */
    }
    return NNP_OK;
}

/* ---- input ------------------------------------------------------------------------------ */

typedef struct {
    nnp_dataset train; /* --data only */
    nnp_shape shape;   /* per-sample input shape */
    float *x;          /* [B, shape] */
    unsigned char *y;  /* [B] */
} stats_input;

static nnp_status load_input(stats_input *in)
{
    if (!O.data[0]) {
        in->shape = (nnp_shape){1, 28, 28};
        return NNP_OK;
    }
    char img[4096], lab[4096];
    NNP_CALL(nnp_idx_paths(O.data, "train", img, lab, sizeof img));
    NNP_CALL(nnp_idx_load(img, lab, 0, 0, (size_t)-1, &in->train));
    double mean, std;
    nnp_dataset_moments(&in->train, &mean, &std);
    if (!(std > 0))
        return nnp_error(NNP_ERR_NUMERIC, "training images in %s have zero variance", O.data);
    in->train.mean = mean;
    in->train.std = std;
    size_t need = (size_t)O.batch * (size_t)O.repeat;
    if (in->train.n < need)
        return nnp_error(NNP_ERR_ARG, "--batch %d x --repeat %d needs %zu images, %s has %zu",
                         O.batch, O.repeat, need, O.data, in->train.n);
    in->shape = (nnp_shape){in->train.c, in->train.h, in->train.w};
    return NNP_OK;
}

/* Input and labels of draw r: training images [r*B, (r+1)*B), or standard normal values and
 * uniform labels from stream (seed + r, NNP_STREAM_DATA). */
static void draw_input(stats_input *in, const nnp_net *net, int r, nnp_rng *rng)
{
    int B = O.batch;
    nnp_rng_seed(rng, (uint64_t)O.seed + (uint64_t)r, NNP_STREAM_DATA);
    if (in->train.n) {
        nnp_dataset_slice(&in->train, (size_t)r * (size_t)B, B, in->x, in->y);
        return;
    }
    nnp_rng_fill_normal(rng, in->x, (size_t)B * nnp_shape_size(net->input), 0.0, 1.0);
    for (int n = 0; n < B; n++)
        in->y[n] = (unsigned char)nnp_rng_below(rng, (uint64_t)net->n_classes);
}

/* ---- columns and their aggregation over draws ------------------------------------------- */

enum { C_IN_MEAN, C_IN_STD, C_PRE_STD, C_POST_STD, C_WGRAD, C_DX, C_PGRAD, N_COLS };
static const char *col_names[N_COLS] = {"in_mean",   "in_std", "pre_std", "post_std",
                                        "wgrad_std", "dx_std", "pgrad_std"};

typedef struct {
    double sum[N_COLS], sq[N_COLS];
} col_acc;

static void acc_add(col_acc *a, const double *v)
{
    for (int c = 0; c < N_COLS; c++) {
        a->sum[c] += v[c];
        a->sq[c] += v[c] * v[c];
    }
}

static void acc_get(const col_acc *a, int c, int R, double *mean, double *sd)
{
    *mean = a->sum[c] / R;
    double var = R > 1 ? (a->sq[c] - R * *mean * *mean) / (R - 1) : 0.0;
    *sd = isfinite(*mean) ? (var > 0 ? sqrt(var) : 0.0) : *mean;
}

static nnp_status csv_open(FILE **f)
{
    *f = NULL;
    if (!O.csv[0])
        return NNP_OK;
    *f = fopen(O.csv, "w");
    if (!*f)
        return nnp_error(NNP_ERR_IO, "cannot open %s for writing: %s", O.csv, strerror(errno));
    return NNP_OK;
}

static nnp_status csv_close(FILE *f)
{
    if (!f)
        return NNP_OK;
    int bad = ferror(f);
    if (fclose(f) != 0 || bad)
        return nnp_error(NNP_ERR_IO, "cannot write %s: %s", O.csv, strerror(errno));
    return NNP_OK;
}

/* ---- the two modes ---------------------------------------------------------------------- */

static nnp_status run_stats(const stats_cfg *c, nnp_net *net, stats_input *in)
{
    int T = net->n_trainable, R = O.repeat, B = O.batch;
    int with_p = c->pcfg.mode != NNP_PRECOND_NONE;
    nnp_layer_stats *ls = nnp_calloc((size_t)T, sizeof *ls);
    col_acc *acc = nnp_calloc((size_t)T, sizeof *acc);
    nnp_precond pc = {0};
    nnp_status s = ls && acc ? NNP_OK : NNP_ERR_NOMEM;
    double in_std_sum = 0;
    for (int r = 0; r < R && s == NNP_OK; r++) {
        nnp_rng rng;
        draw_input(in, net, r, &rng);
        s = nnp_init_net(net, &c->inits[0], (uint64_t)O.seed + (uint64_t)r);
        if (s == NNP_OK && with_p) {
            nnp_precond_free(&pc);
            s = nnp_precond_init(&pc, &c->pcfg, net);
        }
        if (s == NNP_OK)
            s = nnp_layerstats_run(net, B, in->x, c->grad, in->y, &rng, ls);
        if (s == NNP_OK && with_p && c->pcfg.mode == NNP_PRECOND_DYNAMIC) {
            /* as in training: the weight stds, and the layers' moments measured on the
             * batch the forward and backward pass just ran */
            nnp_precond_local_sums(&pc, net, 0, 1);
            nnp_precond_batch_sums(&pc, net, B);
            nnp_precond_grad_sums(&pc, net, 0, 1);
            s = nnp_precond_from_sums(&pc, net, 0);
        }
        if (s != NNP_OK)
            break;
        double m, sd;
        nnp_moments(in->x, (size_t)B * nnp_shape_size(net->input), &m, &sd);
        in_std_sum += sd;
        for (int k = 0; k < T; k++) {
            double v[N_COLS] = {ls[k].in_mean,   ls[k].in_std, ls[k].pre_std,
                                ls[k].post_std,  ls[k].wgrad_std, ls[k].dx_std,
                                with_p ? pc.scale[ls[k].tensor] * ls[k].wgrad_std : 0.0};
            acc_add(&acc[k], v);
        }
    }
    FILE *csv = NULL;
    if (s == NNP_OK)
        s = csv_open(&csv);
    if (s == NNP_OK) {
        int ncol = with_p ? N_COLS : N_COLS - 1;
        printf("# nnprec stats: model %s (%d trainable layers), init %s, act %s, batch %d, "
               "input %s (std %.6g), loss gradient %s, precond %s, %d draw%s, seed %lld\n",
               net->spec, T, c->init_names[0], nnp_act_name(c->act), B,
               O.data[0] ? "Fashion-MNIST" : "standard normal", in_std_sum / R, O.grad,
               nnp_precond_mode_name(c->pcfg.mode), R, R > 1 ? "s (mean+-sd)" : "",
               (long long)O.seed);
        printf("%5s  %-10s", "layer", "name");
        for (int col = 0; col < ncol; col++)
            printf(" %*s", R > 1 ? 21 : 12, col_names[col]);
        printf("\n");
        if (csv) {
            fprintf(csv, "layer,name");
            for (int col = 0; col < ncol; col++)
                fprintf(csv, R > 1 ? ",%s,%s_sd" : ",%s", col_names[col], col_names[col]);
            fprintf(csv, "\n");
        }
        for (int k = 0; k < T; k++) {
            printf("%5d  %-10s", k + 1, ls[k].name);
            if (csv)
                fprintf(csv, "%d,%s", k + 1, ls[k].name);
            for (int col = 0; col < ncol; col++) {
                double m, sd;
                acc_get(&acc[k], col, R, &m, &sd);
                if (R > 1) {
                    char cell[64];
                    snprintf(cell, sizeof cell, "%.5g+-%.2g", m, sd);
                    printf(" %21s", cell);
                } else
                    printf(" %12.5g", m);
                if (csv)
                    fprintf(csv, R > 1 ? ",%.9g,%.9g" : ",%.9g", m, sd);
            }
            printf("\n");
            if (csv)
                fprintf(csv, "\n");
        }
        fflush(stdout);
        s = csv_close(csv);
    } else if (csv)
        fclose(csv);
    nnp_precond_free(&pc);
    free(ls);
    free(acc);
    return s;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static void layer_text(int k, char *buf, size_t cap)
{
    if (k > 0)
        snprintf(buf, cap, "%d", k);
    else
        snprintf(buf, cap, "none");
}

static nnp_status run_collapse(const stats_cfg *c, nnp_net *net, stats_input *in)
{
    int T = net->n_trainable, R = O.repeat, B = O.batch;
    nnp_layer_stats *ls = nnp_calloc((size_t)T, sizeof *ls);
    int *at = nnp_calloc((size_t)R, sizeof *at);
    nnp_status s = ls && at ? NNP_OK : NNP_ERR_NOMEM;
    FILE *csv = NULL;
    if (s == NNP_OK)
        s = csv_open(&csv);
    if (s == NNP_OK) {
        printf("# nnprec stats --collapse: model %s (%d trainable layers), act %s, batch %d, "
               "input %s; collapse = first layer whose activation std < %g x input std or is "
               "not finite; %d draw%s, seed %lld\n",
               net->spec, T, nnp_act_name(c->act), B,
               O.data[0] ? "Fashion-MNIST" : "standard normal", O.ratio, R,
               R > 1 ? "s (median, min, max)" : "", (long long)O.seed);
        printf("%-20s %9s %9s %9s %14s\n", "init", "collapse", "min", "max", "last_std");
        if (csv)
            fprintf(csv, "init,collapse,min,max,last_std\n");
    }
    for (int i = 0; i < c->n_inits && s == NNP_OK; i++) {
        double last = 0;
        for (int r = 0; r < R && s == NNP_OK; r++) {
            nnp_rng rng;
            draw_input(in, net, r, &rng);
            s = nnp_init_net(net, &c->inits[i], (uint64_t)O.seed + (uint64_t)r);
            if (s != NNP_OK)
                break;
            nnp_layerstats_forward(net, B, in->x, ls);
            double m, sd;
            nnp_moments(in->x, (size_t)B * nnp_shape_size(net->input), &m, &sd);
            int k = nnp_layerstats_collapse(ls, T, sd, O.ratio);
            at[r] = k > 0 ? k : T + 1; /* "none" sorts last */
            last += ls[T - 1].post_std / R;
        }
        if (s != NNP_OK)
            break;
        qsort(at, (size_t)R, sizeof *at, cmp_int);
        char med[16], lo[16], hi[16];
        layer_text(at[(R - 1) / 2] <= T ? at[(R - 1) / 2] : 0, med, sizeof med);
        layer_text(at[0] <= T ? at[0] : 0, lo, sizeof lo);
        layer_text(at[R - 1] <= T ? at[R - 1] : 0, hi, sizeof hi);
        printf("%-20s %9s %9s %9s %14.5g\n", c->init_names[i], med, lo, hi, last);
        if (csv)
            fprintf(csv, "%s,%s,%s,%s,%.9g\n", c->init_names[i], med, lo, hi, last);
    }
    fflush(stdout);
    if (s == NNP_OK)
        s = csv_close(csv);
    else if (csv)
        fclose(csv);
    free(ls);
    free(at);
    return s;
}

nnp_status nnp_cmd_stats(nnp_comm *comm, int argc, char **argv)
{
    int help = 0, rank = nnp_comm_rank(comm);
    nnp_status s = nnp_options_parse(opts, N_OPTS, argc, argv, &help);
    if (help) {
        if (rank == 0)
            nnp_options_help(stdout, USAGE, opts, N_OPTS);
        return NNP_OK;
    }
    static stats_cfg cfg;
    if (s == NNP_OK)
        s = build_config(&cfg);
    /* identical on every rank: only rank 0 reports */
    if (s != NNP_OK)
        return rank == 0 ? s : nnp_remote(s);
    if (rank != 0)
        return NNP_OK;

    stats_input in = {0};
    nnp_net *net = NULL;
    s = load_input(&in);
    if (s == NNP_OK) {
        if (O.depth > 0) {
            /* D square layers; with image data the first one maps the pixels to the width */
            size_t n_in = O.data[0] ? nnp_shape_size(in.shape) : (size_t)O.width;
            snprintf(cfg.spec, sizeof cfg.spec, "mlp:%zu-%dx%d", n_in, O.width, O.depth);
        } else
            snprintf(cfg.spec, sizeof cfg.spec, "%s", O.model);
        s = nnp_net_create(cfg.spec, in.shape, cfg.act, O.batch, &net);
    }
    if (s == NNP_OK && O.data[0] && nnp_shape_size(net->input) != nnp_shape_size(in.shape))
        s = nnp_error(NNP_ERR_ARG, "model %s expects %zu input values per sample, data has %dx%dx%d",
                      cfg.spec, nnp_shape_size(net->input), in.shape.c, in.shape.h, in.shape.w);
    if (s == NNP_OK && net->n_trainable < 1)
        s = nnp_error(NNP_ERR_ARG, "model %s has no trainable layer", cfg.spec);
    if (s == NNP_OK && cfg.grad == NNP_LSGRAD_LOSS && O.data[0] &&
        net->n_classes < in.train.n_classes)
        s = nnp_error(NNP_ERR_ARG, "model %s has %d outputs but the data has %d classes",
                      cfg.spec, net->n_classes, in.train.n_classes);
    if (s == NNP_OK && cfg.grad == NNP_LSGRAD_LOSS && net->n_classes > 256)
        s = nnp_error(NNP_ERR_ARG, "--grad loss needs at most 256 outputs, model %s has %d",
                      cfg.spec, net->n_classes);
    if (s == NNP_OK) {
        in.x = nnp_malloc((size_t)O.batch * nnp_shape_size(net->input) * sizeof(float));
        in.y = nnp_malloc((size_t)O.batch);
        if (!in.x || !in.y)
            s = NNP_ERR_NOMEM;
    }
    if (s == NNP_OK)
        s = O.collapse ? run_collapse(&cfg, net, &in) : run_stats(&cfg, net, &in);
    free(in.x);
    free(in.y);
    nnp_net_free(net);
    nnp_dataset_free(&in.train);
    return s;
}
