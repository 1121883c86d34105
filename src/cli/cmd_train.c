/* cmd_train.c - `nnprec train`: options -> data -> network -> nnp_train.
 *
 * Every rank parses the same command line, so option errors are found identically on all
 * ranks before any collective; data and allocation errors are agreed on (nnp_comm_agree)
 * so no rank is left waiting in a collective.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "cli.h"
#include "nnprec/ckpt.h"
#include "nnprec/data.h"
#include "nnprec/h5data.h"
#include "nnprec/init.h"
#include "nnprec/net.h"
#include "nnprec/optim.h"
#include "nnprec/options.h"
#include "nnprec/precond.h"
#include "nnprec/rundir.h"
#include "nnprec/stream.h"
#include "nnprec/trace.h"
#include "nnprec/trainer.h"
#include "nnprec/watchdog.h"

/* OpenBLAS's runtime thread control (declared by its cblas.h, which only linalg code uses). */
void openblas_set_num_threads(int n);
int openblas_get_num_threads(void);

#define DEFAULT_DATA "/usr/share/datasets/fashion-mnist"
#ifndef NNP_VERSION
#define NNP_VERSION "unknown"
#endif

typedef struct {
    char model[NNP_OPT_STRLEN], act[NNP_OPT_STRLEN], loss[NNP_OPT_STRLEN], init[NNP_OPT_STRLEN];
    char optim[NNP_OPT_STRLEN], schedule[NNP_OPT_STRLEN], data[NNP_OPT_STRLEN];
    char normalize[NNP_OPT_STRLEN], out[NNP_OPT_STRLEN], precond[NNP_OPT_STRLEN];
    char pmeasure[NNP_OPT_STRLEN];
    char pformula[NNP_OPT_STRLEN], pbias[NNP_OPT_STRLEN], allreduce[NNP_OPT_STRLEN];
    char resume[NNP_OPT_STRLEN], stop_file[NNP_OPT_STRLEN], bn[NNP_OPT_STRLEN];
    char config[NNP_OPT_STRLEN], trace[NNP_OPT_STRLEN], trace_steps[NNP_OPT_STRLEN];
    char on_nonfinite[NNP_OPT_STRLEN];
    int rollbacks;
    double lr, momentum, dampening, wd, beta1, beta2, eps, gamma, min_lr, bucket_mb;
    double prelu, pprior, pbias_std, pbias_gain, pfloor;
    double lars_eta, lamb_clip;
    int lars_exclude_bias;
    int nesterov, epochs, batch, global_batch, step_epochs, precond_every, threads, quiet, verbose, keep;
    int64_t steps, warmup, eval_every, test_every, log_every, stats_every, check_replicas, balance;
    int64_t seed, train_limit, test_limit, checkpoint_every;
    int64_t val_split;
    double collective_timeout;
    char lr_scaling[NNP_OPT_STRLEN];
    int base_batch;
    double warmup_epochs;
    int noise_scale;
    double noise_ema;
    int deterministic, micro_shard;
    int stream, prefetch;
    double data_memory_mb;
    char shuffle[NNP_OPT_STRLEN];
} train_opts;

static train_opts O;

static nnp_option opts[] = {
    OPT_S("config", config, "",
          "read options from FILE, one '--name value' a line (a run's OUT/options.txt); "
          "options on the command line win over the file's, wherever --config stands"),
    OPT_S("model", model, "lenet",
          "lenet | mlp:784-256x12-10 | resnet8 | resnet20 | resmlp:784-256x12-10 | seq:... "
          "(docs/models.md)"),
    OPT_S("act", act, "relu", "activation between mlp layers: relu|leaky-relu|tanh|sigmoid|identity"),
    OPT_S("bn", bn, "sync",
          "BatchNorm (bn) batch statistics: sync (over the global batch, summed over the ranks: "
          "the same trajectory at any rank count) | local (over each rank's part, as PyTorch "
          "DDP: depends on the rank count)"),
    OPT_S("loss", loss, "ce", "loss: ce (softmax cross-entropy) | mse (one-hot targets)"),
    OPT_S("init", init, "pytorch",
      "pytorch|xavier-uniform|xavier-normal|kaiming-uniform|kaiming-normal|lecun-normal|"
      "orthogonal|normal:STD|uniform:A|constant:C|seed"),
    OPT_S("optim", optim, "sgd", "optimizer: sgd | adam | adamw | lars | lamb (docs/optimizers.md)"),
    OPT_D("lr", lr, "0.01", "learning rate"),
    OPT_D("momentum", momentum, "0.9", "SGD and LARS momentum (0 = plain SGD)"),
    OPT_D("dampening", dampening, "0", "SGD and LARS momentum dampening"),
    OPT_F("nesterov", nesterov, "0", "Nesterov momentum (sgd, lars)"),
    OPT_D("weight-decay", wd, "0",
      "L2 weight decay (decoupled for adamw and lamb; lars: added to the gradient, inside the "
      "trust ratio)"),
    OPT_D("beta1", beta1, "0.9", "Adam and LAMB beta1"),
    OPT_D("beta2", beta2, "0.999", "Adam and LAMB beta2"),
    OPT_D("eps", eps, "1e-8", "Adam and LAMB epsilon"),
    OPT_D("lars-eta", lars_eta, "0.001",
      "lars: trust coefficient eta; each weight tensor's gradient (+ decay) is scaled by "
      "eta*||w||/(||g|| + wd*||w||) before the momentum buffer (1 when a norm is 0)"),
    OPT_D("lamb-clip", lamb_clip, "10",
      "lamb: trust ratio min(||w||, C)/||update|| per weight tensor (the clip phi of You et al. "
      "2019; a huge C: no clip)"),
    OPT_F("lars-exclude-bias", lars_exclude_bias, "1",
      "lars, lamb: biases (1-D tensors) keep ratio 1 and get no weight decay "
      "(--no-lars-exclude-bias: adapt and decay them too)"),
    OPT_S("schedule", schedule, "constant", "LR schedule: constant | step | cosine"),
    OPT_I("step-epochs", step_epochs, "1", "step schedule: multiply the LR by --gamma every N epochs"),
    OPT_D("gamma", gamma, "0.1", "step schedule factor"),
    OPT_D("min-lr", min_lr, "0", "cosine schedule floor"),
    OPT_L("warmup", warmup, "0", "linear warmup steps"),
    OPT_D("warmup-epochs", warmup_epochs, "0",
      "linear warmup in epochs: ceil(X x steps per epoch) steps (instead of --warmup)"),
    OPT_S("lr-scaling", lr_scaling, "none",
      "--lr is for global batch --base-batch, scaled to the actual one: none | linear (x G/B) | "
      "sqrt (x sqrt(G/B))"),
    OPT_I("base-batch", base_batch, "256", "the global batch --lr is given for (--lr-scaling)"),
    OPT_I("epochs", epochs, "1", "epochs to train (ignored when --steps is given)"),
    OPT_L("steps", steps, "0", "global steps to train (0: use --epochs)"),
    OPT_I("batch", batch, "64", "samples per rank per step"),
    OPT_I("global-batch", global_batch, "0",
      "samples per step over all ranks, split as evenly as possible (0: batch x ranks)"),
    OPT_L("seed", seed, "1", "random seed (initialization and data order)"),
    OPT_S("data", data, DEFAULT_DATA,
      "folder with the IDX files (train-*/t10k-*, .gz or raw), or an HDF5 file FILE.h5"),
    OPT_S("normalize", normalize, "", "MEAN,STD applied to pixels in [0,1] (default: training set's)"),
    OPT_F("stream", stream, "0",
          "read the training set from the HDF5 file as training goes, each rank only its "
          "samples of the coming steps, instead of holding it in memory (docs/data.md); also "
          "chosen when the training set exceeds --data-memory-mb"),
    OPT_D("data-memory-mb", data_memory_mb, "0",
          "an HDF5 training set larger than this many MB (each rank holds all of it) is "
          "streamed (0: a quarter of the node's memory over the ranks sharing the node)"),
    OPT_I("prefetch", prefetch, "4",
          "--stream: batches a reader thread reads ahead (0: read in the step)"),
    OPT_S("shuffle", shuffle, "full",
          "epoch order: full (a uniform permutation) | block[:ROWS[:WINDOW]] (blocks of ROWS "
          "consecutive samples in random order, shuffled within every WINDOW blocks: a "
          "streaming reader reads whole chunks; ROWS default: the file's chunk rows, else "
          "1024; WINDOW default 16)"),
    OPT_L("train-limit", train_limit, "0", "use only the first N training samples (0: all)"),
    OPT_L("test-limit", test_limit, "0", "use only the first N test samples (0: all)"),
    OPT_L("val-split", val_split, "0",
      "hold out N training samples (chosen by --seed) as a validation set, evaluated with the "
      "test set (0: none)"),
    OPT_L("eval-every", eval_every, "0", "steps between evaluations on the test set (0: every epoch)"),
    OPT_L("test-every", test_every, "0",
          "with --val-split: steps between test-set evaluations; the others evaluate the "
          "validation set only (test columns nan); the last step always has both (0: every "
          "evaluation)"),
    OPT_L("log-every", log_every, "100", "steps between log rows and progress lines"),
    OPT_L("stats-every", stats_every, "0", "steps between per-tensor rows in OUT/layers.csv (0: off)"),
    OPT_S("out", out, "",
          "output folder, created with its parents and locked for the run (OUT/.lock): "
          "train.csv, eval.csv, timing.csv, ranks.csv, layers.csv, ckpt-STEP.h5, latest"),
    OPT_S("precond", precond, "none", "gradient preconditioner: none | static | dynamic"),
    OPT_S("precond-formula", pformula, "corrected", "corrected | seed (seed 000's exact formulas)"),
    OPT_I("precond-every", precond_every, "1", "dynamic: recompute the multipliers every K steps"),
    OPT_D("precond-relu-factor", prelu, "0.34", "relu variance factor of the prior"),
    OPT_D("precond-prior", pprior, "0.96", "prior weight variance numerator (var = X/fan_in)"),
    OPT_D("precond-bias-std", pbias_std, "0.2", "prior bias std"),
    OPT_D("precond-bias-gain", pbias_gain, "1", "gradient gain of a bias tensor"),
    OPT_S("precond-bias", pbias, "current", "dynamic: bias std from current values or the prior"),
    OPT_D("precond-floor", pfloor, "1e-12", "floor on a measured std"),
    OPT_S("precond-measure", pmeasure, "moments",
          "dynamic corrected: moments (weight stds and each layer's input and output-gradient "
          "second moments on the step's batch) | weights (weight stds only; moments predicted)"),
    OPT_L("check-replicas", check_replicas, "1000", "steps between replica checksums (0: off)"),
    OPT_S("allreduce", allreduce, "fused",
      "gradient allreduce: fused (after backward) | bucketed (overlapped with backward) | "
      "sharded (reduce-scatter, each rank updates 1/P of the parameters, allgather) | "
      "shm (sharded through node-local shared memory: no message copies)"),
    OPT_D("bucket-mb", bucket_mb, "4", "allreduce chunk / bucket size in MiB"),
    OPT_L("balance", balance, "0",
          "every N steps re-split the global batch in proportion to each rank's measured speed, "
          "up to 2x an even share (0: even shares; same gradient, not bitwise reproducible)"),
    OPT_I("threads", threads, "0",
      "BLAS threads per rank (0: OPENBLAS_NUM_THREADS, else 1 when ranks share a node)"),
    OPT_L("checkpoint-every", checkpoint_every, "0",
      "steps between checkpoints in --out (0: only at the end and on SIGTERM/SIGUSR1)"),
    OPT_I("keep", keep, "3", "checkpoints to keep in --out (0: all)"),
    OPT_S("resume", resume, "", "checkpoint FILE to resume from, or auto (latest in --out, if any)"),
    OPT_S("stop-file", stop_file, "", "checkpoint and exit 75 when this file appears (rank 0 polls)"),
    OPT_S("on-nonfinite", on_nonfinite, "stop",
          "a step whose loss or parameters are not finite: stop (exit 1) | rollback (every rank "
          "goes back to the latest checkpoint in --out with the learning rate halved, logged "
          "in OUT/rollbacks.csv, at most --rollbacks times)"),
    OPT_I("rollbacks", rollbacks, "3", "--on-nonfinite rollback: at most this many over the run"),
    OPT_D("collective-timeout", collective_timeout, "600",
          "a rank that waits this many seconds in one MPI call (another rank stopped, hangs or "
          "died) names the call, the step and the phase and exits 75, so the job can be "
          "requeued; it must exceed any wait of a healthy run (the slowest rank's data load, "
          "rank 0's checkpoint writes) (0: wait forever)"),
    OPT_F("noise-scale", noise_scale, "0",
      "log the gradient noise scale tr(Sigma)/|G|^2 (McCandlish et al. 2018) in train.csv and "
      "the progress lines"),
    OPT_D("noise-ema", noise_ema, "0.01",
      "--noise-scale: weight of a new step in its moving averages (window ~1/X steps)"),
    OPT_F("deterministic", deterministic, "0",
          "the parameters after every step are the same bits at any rank count: the global "
          "batch is cut into micro-shards (--micro-shard) that every rank computes alike and "
          "that are summed over one fixed tree (docs/determinism.md)"),
    OPT_I("micro-shard", micro_shard, "0",
          "--deterministic: samples per micro-shard; the global batch must be a multiple (0: "
          "the largest power of two up to 256 that cuts it into at least 4 micro-shards)"),
    OPT_S("trace", trace, "",
          "write a timeline of every rank's phases (data, forward, backward, allreduce, "
          "preconditioner, optimizer, evaluation, checkpoint, ...) for --trace-steps to FILE.json "
          "(Chrome trace events: opens in ui.perfetto.dev and chrome://tracing)"),
    OPT_S("trace-steps", trace_steps, "",
          "--trace: the steps A:B to record, counted from 1 as in the log (default: the run's "
          "first 20)"),
    OPT_F("quiet", quiet, "0",
          "no progress lines (the final [done] line, warnings and errors still print)"),
    OPT_F("verbose", verbose, "0",
          "internal checks too: the allocations counted inside the training steps"),
};
#define N_OPTS ((int)(sizeof opts / sizeof opts[0]))

static nnp_status parse_normalize(const char *s, double *mean, double *std)
{
    char *end;
    *mean = strtod(s, &end);
    if (end == s || *end != ',')
        return nnp_error(NNP_ERR_ARG, "--normalize expects MEAN,STD, got '%s'", s);
    const char *p = end + 1;
    *std = strtod(p, &end);
    if (end == p || *end || !isfinite(*mean) || !(*std > 0) || !isfinite(*std))
        return nnp_error(NNP_ERR_ARG, "--normalize expects MEAN,STD with STD > 0, got '%s'", s);
    return NNP_OK;
}

/* Whether option `name` was given on the command line. */
static int opt_set(const char *name)
{
    const nnp_option *o = nnp_options_find(opts, N_OPTS, name);
    return o && o->set;
}

/* Options that the chosen optimizer would silently ignore are errors (lars, lamb and their
 * own options; sgd and adam keep their historical leniency about each other's). */
static nnp_status check_optim_options(nnp_opt_kind k)
{
    static const struct {
        const char *name, *applies;
        int ok[5]; /* indexed by nnp_opt_kind: sgd, adam, adamw, lars, lamb */
    } rules[] = {
        {"lars-eta", "--optim lars", {0, 0, 0, 1, 0}},
        {"lamb-clip", "--optim lamb", {0, 0, 0, 0, 1}},
        {"lars-exclude-bias", "--optim lars and lamb", {0, 0, 0, 1, 1}},
        {"momentum", "--optim sgd and lars (lamb keeps Adam's moments: --beta1)", {1, 1, 1, 1, 0}},
        {"dampening", "--optim sgd and lars", {1, 1, 1, 1, 0}},
        {"nesterov", "--optim sgd and lars", {1, 1, 1, 1, 0}},
        {"beta1", "--optim adam, adamw and lamb", {1, 1, 1, 0, 1}},
        {"beta2", "--optim adam, adamw and lamb", {1, 1, 1, 0, 1}},
        {"eps", "--optim adam, adamw and lamb", {1, 1, 1, 0, 1}},
    };
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++) {
        const nnp_option *o = nnp_options_find(opts, N_OPTS, rules[i].name);
        if (o && o->set && !rules[i].ok[k])
            return nnp_error(NNP_ERR_ARG, "--%s applies to %s, not --optim %s", rules[i].name,
                             rules[i].applies, nnp_opt_name(k));
    }
    if (k == NNP_OPT_LARS && !(O.lars_eta > 0))
        return nnp_error(NNP_ERR_ARG, "--lars-eta must be > 0, got %g", O.lars_eta);
    if (k == NNP_OPT_LAMB && !(O.lamb_clip > 0))
        return nnp_error(NNP_ERR_ARG, "--lamb-clip must be > 0, got %g", O.lamb_clip);
    return NNP_OK;
}

/* Validate and translate the options into the trainer's configuration. */
/* --precond static on a prior whose gradients vanish or explode through depth (its backward
 * products span more than 100x; gain-preserving initializers span under 20x): its
 * multipliers are right only while the weights keep the prior's statistics, and on such a
 * network training leaves them within tens of steps (docs/preconditioner.md §6). */
static void warn_static_spread(const nnp_net *net, const nnp_precond_cfg *c)
{
    if (c->mode != NNP_PRECOND_STATIC || c->formula != NNP_PFORM_CORRECTED)
        return;
    nnp_precond p;
    if (nnp_precond_init(&p, c, net) != NNP_OK)
        return; /* the trainer reports it */
    double lo = INFINITY, hi = 0;
    for (int j = 0; j < p.n; j++) {
        const nnp_tensor *t = &net->tensors[j];
        /* BatchNorm sets the gains of its own tensors and of the layer feeding it (scale
         * invariance, docs/preconditioner.md section 7), not the prior's depth profile */
        const int l = t->layer;
        if (t->is_bias || t->norm ||
            (l + 1 < net->n_layers && net->layers[l + 1].kind == NNP_L_BN))
            continue;
        lo = p.prec[j] < lo ? p.prec[j] : lo;
        hi = p.prec[j] > hi ? p.prec[j] : hi;
    }
    nnp_precond_free(&p);
    if (hi > 0 && hi / lo > 100)
        fprintf(stderr, "[warn]  --precond static: under the prior of --init %s the backward "
                        "gains make the multipliers span %.0fx across layers; they hold only "
                        "while the weights keep that prior's statistics: use --precond dynamic, "
                        "or an --init that keeps the gradient scale (kaiming-normal)\n",
                O.init, hi / lo);
}

/* --shuffle full | block[:ROWS[:WINDOW]] into sh (block rows 0: the file's chunk rows or
 * 1024, decided once the data is open: see stream_or_load). */
static nnp_status parse_shuffle(const char *v, nnp_shuffle *sh)
{
    sh->block = sh->window = 0;
    if (strcmp(v, "full") == 0)
        return NNP_OK;
    if (strcmp(v, "block") == 0) {
        sh->block = (size_t)-1; /* ROWS to be decided */
        sh->window = 16;
        return NNP_OK;
    }
    long long r = 0, w = 16;
    char tail;
    const int ok = (sscanf(v, "block:%lld%c", &r, &tail) == 1 ||
                    sscanf(v, "block:%lld:%lld%c", &r, &w, &tail) == 2) &&
                   r >= 1 && w >= 1 && r <= (1LL << 30) && w <= (1LL << 30);
    if (!ok)
        return nnp_error(NNP_ERR_ARG, "--shuffle must be full, block, block:ROWS or "
                                      "block:ROWS:WINDOW (ROWS, WINDOW >= 1), got '%s'", v);
    sh->block = (size_t)r;
    sh->window = (size_t)w;
    return NNP_OK;
}

static nnp_status build_config(nnp_train_cfg *cfg, nnp_init_cfg *init, nnp_act *act, int size)
{
    memset(cfg, 0, sizeof *cfg);
    NNP_CALL(nnp_act_parse(O.act, act));
    if (*act != NNP_ACT_RELU && strncmp(O.model, "mlp:", 4) != 0)
        return nnp_error(NNP_ERR_ARG, "--act applies to mlp: models only; %s names its own "
                                      "activations (docs/models.md)", O.model);
    NNP_CALL(nnp_init_parse(O.init, init));
    if (strcmp(O.loss, "ce") == 0)
        cfg->loss = NNP_LOSS_CE;
    else if (strcmp(O.loss, "mse") == 0)
        cfg->loss = NNP_LOSS_MSE;
    else
        return nnp_error(NNP_ERR_ARG, "--loss must be ce or mse, got '%s'", O.loss);
    NNP_CALL(nnp_opt_parse(O.optim, &cfg->optim.kind));
    cfg->optim.momentum = O.momentum;
    cfg->optim.dampening = O.dampening;
    cfg->optim.nesterov = O.nesterov;
    cfg->optim.weight_decay = O.wd;
    cfg->optim.beta1 = O.beta1;
    cfg->optim.beta2 = O.beta2;
    cfg->optim.eps = O.eps;
    cfg->optim.lars_eta = O.lars_eta;
    cfg->optim.lamb_clip = O.lamb_clip;
    cfg->optim.exclude_bias = O.lars_exclude_bias;
    NNP_CALL(check_optim_options(cfg->optim.kind));
    if (!(O.lr > 0))
        return nnp_error(NNP_ERR_ARG, "--lr must be positive, got %g", O.lr);
    NNP_CALL(nnp_sched_parse(O.schedule, &cfg->sched.kind));
    cfg->sched.lr = O.lr;
    cfg->sched.gamma = O.gamma;
    cfg->sched.step_epochs = O.step_epochs;
    cfg->sched.min_lr = O.min_lr;
    cfg->sched.warmup = O.warmup;
    if (O.step_epochs < 1)
        return nnp_error(NNP_ERR_ARG, "--step-epochs must be >= 1");
    if (!(O.gamma > 0 && O.gamma <= 1))
        return nnp_error(NNP_ERR_ARG, "--gamma must be in (0, 1], got %g", O.gamma);
    if (!(O.min_lr >= 0 && O.min_lr <= O.lr))
        return nnp_error(NNP_ERR_ARG, "--min-lr must be in [0, --lr], got %g", O.min_lr);
    if (O.warmup < 0)
        return nnp_error(NNP_ERR_ARG, "--warmup must be >= 0");
    nnp_precond_defaults(&cfg->precond);
    NNP_CALL(nnp_precond_parse_mode(O.precond, &cfg->precond.mode));
    NNP_CALL(nnp_precond_parse_formula(O.pformula, &cfg->precond.formula));
    cfg->precond.every = O.precond_every;
    cfg->precond.relu_factor = O.prelu;
    cfg->precond.prior_num = O.pprior;
    cfg->precond.bias_std = O.pbias_std;
    cfg->precond.bias_gain = O.pbias_gain;
    cfg->precond.floor = O.pfloor;
    cfg->precond.init = *init;
    if (cfg->precond.formula == NNP_PFORM_CORRECTED) {
        /* the seed prior's constants mean nothing to the corrected formula, whose prior is
         * the --init's: an error rather than silently ignored */
        static const char *seed_only[] = {"precond-relu-factor", "precond-prior",
                                          "precond-bias-std"};
        for (size_t i = 0; i < sizeof seed_only / sizeof seed_only[0]; i++) {
            const nnp_option *o = nnp_options_find(opts, N_OPTS, seed_only[i]);
            if (o && o->set)
                return nnp_error(NNP_ERR_ARG,
                                 "--%s is a constant of --precond-formula seed; the corrected "
                                 "formula takes its prior from --init %s",
                                 seed_only[i], O.init);
        }
    }
    if (strcmp(O.pmeasure, "moments") == 0)
        cfg->precond.measure = 1;
    else if (strcmp(O.pmeasure, "weights") == 0)
        cfg->precond.measure = 0;
    else
        return nnp_error(NNP_ERR_ARG, "--precond-measure must be moments or weights, got '%s'",
                         O.pmeasure);
    {
        const nnp_option *o = nnp_options_find(opts, N_OPTS, "precond-measure");
        if (o && o->set && (cfg->precond.mode != NNP_PRECOND_DYNAMIC ||
                            cfg->precond.formula != NNP_PFORM_CORRECTED))
            return nnp_error(NNP_ERR_ARG, "--precond-measure applies to --precond dynamic with "
                                          "--precond-formula corrected only");
    }
    if (strcmp(O.pbias, "current") == 0)
        cfg->precond.bias_prior = 0;
    else if (strcmp(O.pbias, "prior") == 0)
        cfg->precond.bias_prior = 1;
    else
        return nnp_error(NNP_ERR_ARG, "--precond-bias must be current or prior, got '%s'", O.pbias);
    if (O.epochs < 1 && O.steps <= 0)
        return nnp_error(NNP_ERR_ARG, "--epochs must be >= 1 (or give --steps)");
    if (O.steps < 0)
        return nnp_error(NNP_ERR_ARG, "--steps must be >= 0");
    cfg->epochs = O.epochs;
    cfg->steps = O.steps;
    if (O.batch < 1)
        return nnp_error(NNP_ERR_ARG, "--batch must be >= 1, got %d", O.batch);
    if (O.global_batch < 0)
        return nnp_error(NNP_ERR_ARG, "--global-batch must be >= 0");
    /* room for the buffers' arithmetic (a --balance share may double) */
    const int64_t max_global = (int64_t)1 << 28;
    if (O.global_batch > max_global || (O.global_batch == 0 && (int64_t)O.batch * size > max_global))
        return nnp_error(NNP_ERR_ARG, "the global batch (%s) must be at most %lld samples",
                         O.global_batch ? "--global-batch" : "--batch x ranks",
                         (long long)max_global);
    cfg->global_batch = O.global_batch > 0 ? O.global_batch : O.batch * size;
    nnp_lr_scaling lrs;
    NNP_CALL(nnp_lr_scaling_parse(O.lr_scaling, &lrs));
    if (lrs == NNP_LRS_NONE && opt_set("base-batch"))
        return nnp_error(NNP_ERR_ARG, "--base-batch goes with --lr-scaling linear or sqrt");
    if (lrs != NNP_LRS_NONE && O.base_batch < 1)
        return nnp_error(NNP_ERR_ARG, "--base-batch must be >= 1, got %d", O.base_batch);
    cfg->sched.lr = nnp_lr_scale(O.lr, lrs, O.base_batch, cfg->global_batch);
    if (O.min_lr > cfg->sched.lr)
        return nnp_error(NNP_ERR_ARG, "--min-lr %g is above the scaled learning rate %g "
                                      "(--lr-scaling %s)", O.min_lr, cfg->sched.lr, O.lr_scaling);
    if (!(O.warmup_epochs >= 0 && O.warmup_epochs <= 1e6))
        return nnp_error(NNP_ERR_ARG, "--warmup-epochs must be in [0, 1e6], got %g",
                         O.warmup_epochs);
    if (opt_set("warmup-epochs") && opt_set("warmup"))
        return nnp_error(NNP_ERR_ARG, "give --warmup (steps) or --warmup-epochs, not both");
    if (O.global_batch > 0 && O.global_batch < size)
        return nnp_error(NNP_ERR_ARG, "--global-batch %d is smaller than the %d ranks",
                         O.global_batch, size);
    cfg->seed = (uint64_t)O.seed;
    if (O.eval_every < 0 || O.test_every < 0 || O.log_every < 1 || O.stats_every < 0 ||
        O.check_replicas < 0)
        return nnp_error(NNP_ERR_ARG,
                         "--eval-every, --test-every, --stats-every, --check-replicas must be "
                         ">= 0 and --log-every >= 1");
    if (O.test_every > 0 && O.val_split == 0)
        return nnp_error(NNP_ERR_ARG, "--test-every needs --val-split (without a validation set "
                                      "every evaluation is of the test set)");
    cfg->eval_every = O.eval_every;
    cfg->test_every = O.test_every;
    cfg->log_every = O.log_every;
    cfg->stats_every = O.stats_every;
    cfg->check_replicas = O.check_replicas;
    if (O.balance < 0)
        return nnp_error(NNP_ERR_ARG, "--balance must be >= 0 steps, got %lld", (long long)O.balance);
    cfg->balance_every = O.balance;
    if (strcmp(O.bn, "sync") == 0)
        cfg->bn = NNP_BN_SYNC;
    else if (strcmp(O.bn, "local") == 0)
        cfg->bn = NNP_BN_LOCAL;
    else
        return nnp_error(NNP_ERR_ARG, "--bn must be sync or local, got '%s'", O.bn);
    /* the samples BatchNorm's statistics are taken over: the preconditioner's finite-batch
     * factors (docs/preconditioner.md, section 7) */
    cfg->precond.bn_batch = cfg->bn == NNP_BN_SYNC ? cfg->global_batch
                                                   : (cfg->global_batch + size - 1) / size;
    if (strcmp(O.allreduce, "fused") == 0)
        cfg->allreduce = NNP_AR_FUSED;
    else if (strcmp(O.allreduce, "bucketed") == 0)
        cfg->allreduce = NNP_AR_BUCKETED;
    else if (strcmp(O.allreduce, "sharded") == 0)
        cfg->allreduce = NNP_AR_SHARDED;
    else if (strcmp(O.allreduce, "shm") == 0)
        cfg->allreduce = NNP_AR_SHM;
    else
        return nnp_error(NNP_ERR_ARG, "--allreduce must be fused, bucketed, sharded or shm, got '%s'",
                         O.allreduce);
    if (!(O.bucket_mb > 0) || O.bucket_mb > 1024)
        return nnp_error(NNP_ERR_ARG, "--bucket-mb must be in (0, 1024]");
    cfg->bucket_mb = O.bucket_mb;
    if (O.train_limit < 0 || O.test_limit < 0)
        return nnp_error(NNP_ERR_ARG, "--train-limit and --test-limit must be >= 0");
    if (O.val_split < 0)
        return nnp_error(NNP_ERR_ARG, "--val-split must be >= 0, got %lld", (long long)O.val_split);
    cfg->val_split = O.val_split;
    if (opt_set("noise-ema") && !O.noise_scale)
        return nnp_error(NNP_ERR_ARG, "--noise-ema goes with --noise-scale");
    if (!(O.noise_ema > 0 && O.noise_ema <= 1))
        return nnp_error(NNP_ERR_ARG, "--noise-ema must be in (0, 1], got %g", O.noise_ema);
    cfg->noise_scale = O.noise_scale;
    cfg->noise_ema = O.noise_ema;
    if (opt_set("micro-shard") && !O.deterministic)
        return nnp_error(NNP_ERR_ARG, "--micro-shard goes with --deterministic");
    if (O.micro_shard < 0)
        return nnp_error(NNP_ERR_ARG, "--micro-shard must be >= 0, got %d", O.micro_shard);
    cfg->deterministic = O.deterministic;
    if (O.deterministic) {
        /* default: the largest power of two up to 256 that divides the global batch into at
         * least 4 micro-shards (docs/determinism.md: larger ones run faster, and G / S
         * bounds the ranks that compute) */
        int S = O.micro_shard;
        const int least = cfg->global_batch < 4 ? cfg->global_batch : 4;
        for (int k = 256; S == 0; k /= 2)
            if (cfg->global_batch % k == 0 && cfg->global_batch / k >= least)
                S = k;
        if (cfg->global_batch % S != 0)
            return nnp_error(NNP_ERR_ARG, "--deterministic: the global batch %d is not a whole "
                                          "number of micro-shards of %d samples (--micro-shard)",
                             cfg->global_batch, S);
        cfg->micro_shard = S;
        if (O.balance > 0)
            return nnp_error(NNP_ERR_ARG, "--deterministic fixes which micro-shards each rank "
                                          "computes: it does not go with --balance");
        if (cfg->bn == NNP_BN_LOCAL && opt_set("bn"))
            return nnp_error(NNP_ERR_ARG, "--deterministic takes BatchNorm's statistics over the "
                                          "global batch: it does not go with --bn local");
        if (size > 1 && cfg->allreduce == NNP_AR_BUCKETED)
            return nnp_error(NNP_ERR_ARG, "--deterministic works with --allreduce fused, sharded "
                                          "and shm; not with bucketed");
    }
    if (O.threads < 0)
        return nnp_error(NNP_ERR_ARG, "--threads must be >= 0");
    if (!(O.collective_timeout >= 0 && O.collective_timeout <= 1e9))
        return nnp_error(NNP_ERR_ARG, "--collective-timeout must be in [0, 1e9] seconds, got %g",
                         O.collective_timeout);
    if (O.checkpoint_every < 0 || O.keep < 0)
        return nnp_error(NNP_ERR_ARG, "--checkpoint-every and --keep must be >= 0");
    if (strcmp(O.resume, "auto") == 0 && !O.out[0])
        return nnp_error(NNP_ERR_ARG, "--resume auto needs --out (where the checkpoints are)");
    if (O.checkpoint_every > 0 && !O.out[0])
        return nnp_error(NNP_ERR_ARG, "--checkpoint-every needs --out");
    if (O.stop_file[0] && !O.out[0])
        return nnp_error(NNP_ERR_ARG, "--stop-file needs --out (where the checkpoint goes)");
    cfg->checkpoint_every = O.checkpoint_every;
    cfg->keep = O.keep;
    cfg->stop_file = O.stop_file;
    if (strcmp(O.on_nonfinite, "stop") != 0 && strcmp(O.on_nonfinite, "rollback") != 0)
        return nnp_error(NNP_ERR_ARG, "--on-nonfinite must be stop or rollback, got '%s'",
                         O.on_nonfinite);
    const int rb = strcmp(O.on_nonfinite, "rollback") == 0;
    if (rb && !O.out[0])
        return nnp_error(NNP_ERR_ARG, "--on-nonfinite rollback needs --out (the checkpoints it "
                                      "goes back to)");
    if (opt_set("rollbacks") && !rb)
        return nnp_error(NNP_ERR_ARG, "--rollbacks goes with --on-nonfinite rollback");
    if (O.rollbacks < 1 || O.rollbacks > 60)
        return nnp_error(NNP_ERR_ARG, "--rollbacks must be in 1..60, got %d", O.rollbacks);
    cfg->rollbacks = rb ? O.rollbacks : 0;
    if (O.trace_steps[0] && !O.trace[0])
        return nnp_error(NNP_ERR_ARG, "--trace-steps goes with --trace FILE.json");
    cfg->trace_path = O.trace;
    cfg->trace_a = cfg->trace_b = 0;
    if (O.trace_steps[0]) {
        NNP_CALL(nnp_trace_parse_steps(O.trace_steps, &cfg->trace_a, &cfg->trace_b));
        if (cfg->trace_b - cfg->trace_a >= 100000)
            return nnp_error(NNP_ERR_ARG, "--trace-steps %s spans more than 100000 steps, too "
                                          "many events for a trace viewer; trace a window",
                             O.trace_steps);
    }
    if (O.prefetch < 0 || O.prefetch > 64)
        return nnp_error(NNP_ERR_ARG, "--prefetch must be in 0..64, got %d", O.prefetch);
    cfg->prefetch = O.prefetch;
    if (!(O.data_memory_mb >= 0) || !isfinite(O.data_memory_mb))
        return nnp_error(NNP_ERR_ARG, "--data-memory-mb must be >= 0, got %g", O.data_memory_mb);
    NNP_CALL(parse_shuffle(O.shuffle, &cfg->shuffle));
    cfg->out_dir = O.out;
    cfg->quiet = O.quiet;
    cfg->verbose = O.verbose;
    return NNP_OK;
}

/* BLAS threads: --threads N, else OPENBLAS_NUM_THREADS, else 1 when ranks share a node. */
static void setup_threads(nnp_comm *comm)
{
    int rank0 = nnp_comm_rank(comm) == 0, local = nnp_comm_local_size(comm);
    if (O.threads > 0) {
        openblas_set_num_threads(O.threads);
        int got = openblas_get_num_threads(); /* OpenBLAS caps it at its build's maximum */
        if (rank0 && !O.quiet)
            printf("[setup] %d BLAS thread%s per rank (--threads %d%s)\n", got, got > 1 ? "s" : "",
                   O.threads, got != O.threads ? ": this OpenBLAS's maximum" : "");
    } else if (getenv("OPENBLAS_NUM_THREADS")) {
        if (rank0 && !O.quiet)
            printf("[setup] BLAS threads from OPENBLAS_NUM_THREADS=%s\n",
                   getenv("OPENBLAS_NUM_THREADS"));
    } else if (local > 1) {
        openblas_set_num_threads(1);
        if (rank0 && !O.quiet)
            printf("[setup] OPENBLAS_NUM_THREADS unset and %d ranks share this node: 1 BLAS "
                   "thread per rank\n",
                   local);
    }
}

/* --data names an HDF5 dataset file (docs/checkpoint.md) rather than an IDX folder: it ends
 * in .h5 or is a regular file. */
int nnp_cli_data_is_h5(const char *data)
{
    size_t n = strlen(data);
    struct stat st;
    return (n >= 3 && strcmp(data + n - 3, ".h5") == 0) ||
           (stat(data, &st) == 0 && S_ISREG(st.st_mode));
}

/* This rank's shard of the first `limit` (0 = all) test samples of `data` (an IDX folder or
 * an HDF5 file): nnp_split_units of the test count (whole units of `unit` samples; 0: an even
 * split). *count (may be NULL) gets that count. */
nnp_status nnp_cli_load_test(nnp_comm *comm, const char *data, int64_t limit, size_t unit,
                             nnp_dataset *test, size_t *count)
{
    char img[4096], lab[4096];
    int h5 = nnp_cli_data_is_h5(data);
    if (!h5)
        NNP_CALL(nnp_idx_paths(data, "t10k", img, lab, sizeof img));
    /* a header-only read gives the test count, then each rank reads only its share */
    nnp_dataset probe = {0};
    NNP_CALL(h5 ? nnp_h5_load(data, "test", (size_t)limit, 0, 0, &probe)
                : nnp_idx_load(img, lab, (size_t)limit, 0, 0, &probe));
    size_t nt = probe.n_total;
    nnp_dataset_free(&probe);
    if (nt == 0)
        return nnp_error(NNP_ERR_FORMAT, "the test set in %s is empty", data);
    if (limit > 0 && (size_t)limit < nt)
        nt = (size_t)limit;
    size_t lo, hi;
    nnp_split_units(nt, unit, nnp_comm_size(comm), nnp_comm_rank(comm), &lo, &hi);
    NNP_CALL(h5 ? nnp_h5_load(data, "test", nt, lo, hi, test)
                : nnp_idx_load(img, lab, nt, lo, hi, test));
    if (count)
        *count = nt;
    return NNP_OK;
}

/* Whether to stream the training set: --stream, or an HDF5 training set larger than
 * --data-memory-mb (why: the reason, for the setup line). */
static nnp_status want_stream(nnp_comm *comm, int *stream, char *why, size_t cap)
{
    *stream = 0;
    why[0] = 0;
    if (!nnp_cli_data_is_h5(O.data)) {
        if (O.stream)
            return nnp_error(NNP_ERR_ARG, "--stream reads HDF5 files; %s is an IDX folder: "
                                          "convert it with scripts/idx_to_h5.py", O.data);
        return NNP_OK;
    }
    nnp_dataset probe = {0}; /* one row: the sample size and type */
    NNP_CALL(nnp_h5_load(O.data, "train", (size_t)O.train_limit, 0, 1, &probe));
    size_t n = probe.n_total;
    if (O.train_limit > 0 && (size_t)O.train_limit < n)
        n = (size_t)O.train_limit;
    const double mb = (double)n * probe.c * probe.h * probe.w * (probe.xf ? 4.0 : 1.0) / 1048576.0;
    nnp_dataset_free(&probe);
    double budget = O.data_memory_mb;
    if (budget <= 0) {
        const double node = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
        const int local = nnp_comm_local_size(comm) > 0 ? nnp_comm_local_size(comm) : 1;
        budget = node / 4.0 / local / 1048576.0;
    }
    if (O.stream) {
        snprintf(why, cap, "--stream; %.0f MB", mb);
        *stream = 1;
    } else if (mb > budget) {
        snprintf(why, cap, "%.0f MB > --data-memory-mb %.0f", mb, budget);
        *stream = 1;
    }
    return NNP_OK;
}

/* Load the whole (limited) training set and this rank's shard of the test set. */
static nnp_status load_data(nnp_comm *comm, size_t unit, nnp_dataset *train, nnp_dataset *test)
{
    char img[4096], lab[4096];
    /* test hook: make one rank fail its data load, to check that every rank stops cleanly */
    const char *fault = getenv("NNPREC_FAULT_LOAD_RANK");
    if (fault && atoi(fault) == nnp_comm_rank(comm))
        return nnp_error(NNP_ERR_IO, "injected data-load failure on rank %d "
                                     "(NNPREC_FAULT_LOAD_RANK)", nnp_comm_rank(comm));
    if (nnp_cli_data_is_h5(O.data)) {
        NNP_CALL(nnp_h5_load(O.data, "train", (size_t)O.train_limit, 0, (size_t)-1, train));
    } else {
        NNP_CALL(nnp_idx_paths(O.data, "train", img, lab, sizeof img));
        NNP_CALL(nnp_idx_load(img, lab, (size_t)O.train_limit, 0, (size_t)-1, train));
    }
    NNP_CALL(nnp_cli_load_test(comm, O.data, O.test_limit, unit, test, NULL));
    if (train->n == 0)
        return nnp_error(NNP_ERR_ARG, "the training set in %s is empty", O.data);
    return NNP_OK;
}

/* --val-split N: take N samples chosen by the seed out of the training set; this rank keeps
 * its nnp_split share of them as its shard of the validation set. */
static nnp_status hold_out(nnp_comm *comm, size_t unit, nnp_dataset *train, nnp_dataset *val)
{
    const size_t N = train->n, nv = (size_t)O.val_split;
    if (nv >= N)
        return nnp_error(NNP_ERR_ARG, "--val-split %lld leaves no training samples (the training "
                                      "set has %zu)", (long long)O.val_split, N);
    uint32_t *perm = malloc(N * sizeof *perm);
    unsigned char *is_val = malloc(N);
    nnp_status s = perm && is_val ? NNP_OK : NNP_ERR_NOMEM;
    if (s == NNP_OK) {
        size_t lo, hi;
        nnp_holdout_mask((uint64_t)O.seed, N, nv, perm, is_val);
        nnp_split_units(nv, unit, nnp_comm_size(comm), nnp_comm_rank(comm), &lo, &hi);
        s = nnp_dataset_holdout(train, is_val, lo, hi, val);
    }
    free(perm);
    free(is_val);
    return s;
}

/* "; validation loss L accuracy A%" after a run with --val-split, else "". */
static const char *done_val(const nnp_train_result *res)
{
    static char buf[96];
    char lbuf[32];
    buf[0] = '\0';
    if (O.val_split > 0 && isfinite(res->final_val_acc))
        snprintf(buf, sizeof buf, "; validation loss %s accuracy %.2f%%",
                 nnp_fmt_loss(lbuf, sizeof lbuf, res->final_val_loss), 100.0 * res->final_val_acc);
    return buf;
}

static nnp_status make_out_dir(const char *dir)
{
    if (!dir[0])
        return NNP_OK;
    NNP_CALL(nnp_mkdir_p(dir));
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return nnp_error(NNP_ERR_IO, "output path %s is not a folder", dir);
    return NNP_OK;
}

/* OUT/options.txt: every effective option, readable back with --config (the first run in
 * the folder; a resumed run keeps it and writes OUT/options-resume.txt instead). Written to
 * a .tmp file and renamed. */
static nnp_status write_options(int size, const char *resume)
{
    char path[4096], tmp[4200], first[4096];
    snprintf(first, sizeof first, "%s/options.txt", O.out);
    int keep_first = resume[0] && access(first, F_OK) == 0;
    snprintf(path, sizeof path, "%s/%s", O.out, keep_first ? "options-resume.txt" : "options.txt");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return nnp_error(NNP_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    fprintf(f, "# nnprec %s train: every option of this run, defaults included, one \"--name "
               "value\" a line.\n# Repeat the run (options on the command line win over "
               "this file's):\n#   mpirun -np %d nnprec train --config %s --out NEW_FOLDER\n",
            NNP_VERSION, size, path);
    if (resume[0])
        fprintf(f, "# this run resumed from %s%s\n", resume,
                keep_first ? "; options.txt holds the options of the run that started the folder"
                           : "");
    fprintf(f, "# ranks: %d\n", size);
    nnp_status s = nnp_options_write(f, opts, N_OPTS);
    if (fclose(f) != 0 && s == NNP_OK)
        s = nnp_error(NNP_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    if (s == NNP_OK && rename(tmp, path) != 0)
        s = nnp_error(NNP_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    if (s != NNP_OK)
        remove(tmp);
    return s;
}

nnp_status nnp_cmd_train(nnp_comm *comm, int argc, char **argv)
{
    int help = 0, rank = nnp_comm_rank(comm), size = nnp_comm_size(comm);
    nnp_status s = nnp_options_parse(opts, N_OPTS, argc, argv, &help);
    if (help) {
        if (rank == 0)
            nnp_options_help(stdout, "usage: mpirun -np P nnprec train [options]", opts, N_OPTS);
        return NNP_OK;
    }
    nnp_train_cfg cfg;
    nnp_init_cfg init;
    nnp_act act = NNP_ACT_RELU;
    double mean = 0, std = 1;
    if (s == NNP_OK)
        s = build_config(&cfg, &init, &act, size);
    if (s == NNP_OK && O.normalize[0])
        s = parse_normalize(O.normalize, &mean, &std);
    /* identical on every rank: only rank 0 reports */
    if (s != NNP_OK)
        return rank == 0 ? s : nnp_remote(s);
    if (rank == 0 && cfg.precond.mode != NNP_PRECOND_NONE &&
        cfg.precond.formula == NNP_PFORM_SEED && init.kind != NNP_INIT_SEED)
        fprintf(stderr, "[warn]  --precond-formula seed assumes the prior of --init seed, not of "
                        "--init %s: its multipliers will not equalize the layers' gradients; "
                        "use --precond-formula corrected (docs/preconditioner.md)\n",
                O.init);
    if (rank == 0 && cfg.precond.mode != NNP_PRECOND_NONE && cfg.optim.kind == NNP_OPT_LARS)
        fprintf(stderr, "[warn]  --precond %s with --optim lars: LARS's trust ratio divides out "
                        "any per-tensor gradient scale, so this is LARS up to weight decay "
                        "(docs/optimizers.md)\n",
                O.precond);

    /* before the first collective: from here on no rank waits for another forever */
    s = nnp_comm_agree(comm, nnp_watchdog_start(O.collective_timeout, rank, NNP_EXIT_REQUEUE));
    if (s != NNP_OK)
        return s;
    nnp_watchdog_phase("setup", NULL);
    setup_threads(comm);
    /* resolve --resume on rank 0 (auto: the latest checkpoint in --out, if any) and share */
    static char resume[4096];
    static nnp_ckpt_meta meta;
    resume[0] = '\0';
    /* the run folder first, before anything reads or writes it: created with its parents
     * and locked for this run (a second run into it is refused at once) */
    if (rank == 0 && O.out[0])
        s = nnp_rundir_acquire(O.out);
    if (s != NNP_OK) {
        /* nothing to agree on yet */
    } else if (rank == 0 && O.resume[0]) {
        if (strcmp(O.resume, "auto") == 0) {
            int found = 0;
            struct stat sb;
            if (stat(O.out, &sb) == 0)
                s = nnp_ckpt_latest(O.out, resume, sizeof resume, &found);
            if (s == NNP_OK && !found)
                resume[0] = '\0';
            if (s == NNP_OK && !O.quiet)
                printf("[ckpt]  --resume auto: %s\n", found ? resume : "no checkpoint, starting fresh");
        } else {
            snprintf(resume, sizeof resume, "%s", O.resume);
        }
    } else if (rank == 0 && O.out[0]) {
        /* a fresh run must not mix its files with another run's (its checkpoint rotation
         * would delete its own files first, and --resume auto would pick the wrong one) */
        char found_path[4096];
        int found = 0;
        s = nnp_ckpt_latest(O.out, found_path, sizeof found_path, &found);
        if (s == NNP_OK && found)
            s = nnp_error(NNP_ERR_ARG, "--out %s already holds another run's checkpoints "
                                       "(latest %s): continue it with --resume auto, or choose "
                                       "another --out (nothing was changed)",
                          O.out, found_path);
    }
    if (s == NNP_OK && rank == 0 && O.stop_file[0] && access(O.stop_file, F_OK) == 0)
        s = nnp_error(NNP_ERR_ARG, "--stop-file %s exists already: remove it (it would stop the "
                                   "run after its first step)", O.stop_file);
    /* the temporary files an interrupted run left (a checkpoint being written, ...) */
    if (s == NNP_OK && rank == 0 && O.out[0])
        s = nnp_rundir_clean(O.out, O.quiet);
    s = nnp_comm_agree(comm, s);
    if (s == NNP_OK)
        s = nnp_comm_bcast(comm, resume, sizeof resume, 0);
    if (s != NNP_OK)
        return s;
    /* every rank reads the checkpoint's metadata: the run continues with its normalization */
    if (resume[0]) {
        s = nnp_comm_agree(comm, nnp_ckpt_read_meta(resume, &meta));
        if (s != NNP_OK)
            return s;
        if (strcmp(meta.model, O.model) != 0)
            s = nnp_error(NNP_ERR_ARG, "checkpoint %s holds model '%s', --model is '%s'", resume,
                          meta.model, O.model);
        if (s == NNP_OK && rank == 0 && !meta.checksums && !O.quiet)
            printf("[note]  %s has no checksums (written before nnprec stored them): its data "
                   "is not verified\n", resume);
        s = nnp_comm_agree(comm, s);
        if (s != NNP_OK)
            return s;
    }
    nnp_dataset train = {0}, test = {0}, val = {0};
    nnp_net *net = NULL;
    /* --deterministic: the test and validation shards are whole micro-shards */
    const size_t unit = cfg.deterministic ? (size_t)cfg.micro_shard : 0;
    nnp_stream *stream = NULL;
    nnp_dataset *shdr = NULL;
    size_t chunk_rows = 0;
    int streaming = 0;
    char stream_why[160];
    uint64_t val_hist[256] = {0}; /* --stream --val-split: this rank's held-out pixel values */
    s = nnp_comm_agree(comm, want_stream(comm, &streaming, stream_why, sizeof stream_why));
    if (s == NNP_OK && streaming) {
        s = nnp_stream_open(O.data, (size_t)O.train_limit, &stream, &shdr, &chunk_rows);
        if (s == NNP_OK && O.val_split > 0) {
            /* held out as hold_out() does it, this rank's share read into memory */
            size_t lo, hi;
            nnp_split_units((size_t)O.val_split, unit, size, rank, &lo, &hi);
            s = nnp_stream_holdout(stream, (uint64_t)O.seed, (size_t)O.val_split, lo, hi, &val,
                                   val_hist);
        }
        if (s == NNP_OK) {
            train = *shdr; /* its labels stay the stream's */
            s = nnp_cli_load_test(comm, O.data, O.test_limit, unit, &test, NULL);
        }
        if (s == NNP_OK && train.n == 0)
            s = nnp_error(NNP_ERR_ARG, "the training set in %s is empty", O.data);
        s = nnp_comm_agree(comm, s);
    } else if (s == NNP_OK)
        s = load_data(comm, unit, &train, &test);
    if (cfg.shuffle.block == (size_t)-1) /* --shuffle block: the file's chunks */
        cfg.shuffle.block = chunk_rows ? chunk_rows : 1024;
    cfg.stream = stream;
    if (s == NNP_OK && O.val_split > 0 && !stream)
        s = hold_out(comm, unit, &train, &val);
    if (s == NNP_OK && resume[0]) {
        if (O.normalize[0] && (mean != meta.norm_mean || std != meta.norm_std))
            s = nnp_error(NNP_ERR_ARG, "--normalize %s differs from the checkpoint's mean %.9g std "
                                       "%.9g, which a resumed run keeps",
                          O.normalize, meta.norm_mean, meta.norm_std);
        mean = meta.norm_mean;
        std = meta.norm_std;
    } else if (s == NNP_OK && !O.normalize[0] && stream) {
        /* uint8: every rank counts the pixel values of its share of the samples, and the
         * counts are summed (exact in double below 2^53 values): the in-memory figures, the
         * file read once in all; float32: rank 0 sums in sample order, as in memory */
        double mv[2] = {0, 0};
        if (nnp_stream_is_u8(stream)) {
            /* every file row in use, less the held-out samples (--val-split) */
            uint64_t hist[256];
            double hd[512];
            size_t lo, hi;
            const size_t n_rows = train.n + (size_t)O.val_split;
            nnp_split(n_rows, size, rank, &lo, &hi);
            s = nnp_comm_agree(comm, nnp_stream_histogram(stream, lo, hi, hist));
            for (int v = 0; v < 256; v++) {
                hd[v] = (double)hist[v];
                hd[256 + v] = (double)val_hist[v];
            }
            if (s == NNP_OK)
                s = nnp_comm_allreduce_sum_f64(comm, hd, 512);
            for (int v = 0; v < 256; v++)
                hist[v] = (uint64_t)hd[v] - (uint64_t)hd[256 + v];
            nnp_moments_from_histogram(hist, (double)train.n * train.c * train.h * train.w,
                                       &mv[0], &mv[1]);
        } else {
            if (rank == 0)
                s = nnp_stream_moments(stream, &mv[0], &mv[1]);
            s = nnp_comm_agree(comm, s);
            if (s == NNP_OK)
                s = nnp_comm_bcast(comm, mv, sizeof mv, 0);
        }
        mean = mv[0];
        std = mv[1];
        if (s == NNP_OK && !(std > 0))
            s = nnp_error(NNP_ERR_NUMERIC, "training images have zero variance; give --normalize");
    } else if (s == NNP_OK && !O.normalize[0]) {
        nnp_dataset_moments(&train, &mean, &std);
        if (!(std > 0))
            s = nnp_error(NNP_ERR_NUMERIC, "training images have zero variance; give --normalize");
    }
    train.mean = test.mean = val.mean = mean;
    train.std = test.std = val.std = std;
    if (shdr) {
        shdr->mean = mean;
        shdr->std = std;
    }
    int max_batch = (cfg.global_batch + size - 1) / size;
    if (cfg.balance_every > 0 && size > 1) /* room for a fast rank to take up to twice as much */
        max_batch = 2 * max_batch < cfg.global_batch ? 2 * max_batch : cfg.global_batch;
    if (cfg.deterministic) /* whole micro-shards */
        max_batch = (cfg.global_batch / cfg.micro_shard + size - 1) / size * cfg.micro_shard;
    if (s == NNP_OK)
        s = nnp_net_create(O.model, (nnp_shape){train.c, train.h, train.w}, act, max_batch, &net);
    if (s == NNP_OK && nnp_shape_size(net->input) != (size_t)train.c * train.h * train.w)
        s = nnp_error(NNP_ERR_ARG, "model %s expects %zu input values per sample, data has %dx%dx%d",
                      O.model, nnp_shape_size(net->input), train.c, train.h, train.w);
    if (s == NNP_OK && net->n_classes < train.n_classes)
        s = nnp_error(NNP_ERR_ARG, "model %s has %d outputs but the data has %d classes", O.model,
                      net->n_classes, train.n_classes);
    if (s == NNP_OK && (test.c != train.c || test.h != train.h || test.w != train.w))
        s = nnp_error(NNP_ERR_FORMAT, "test images in %s are %dx%dx%d, training images %dx%dx%d",
                      O.data, test.c, test.h, test.w, train.c, train.h, train.w);
    if (s == NNP_OK && net->n_classes < test.n_classes)
        s = nnp_error(NNP_ERR_FORMAT, "model %s has %d outputs but the test labels in %s go up to %d",
                      O.model, net->n_classes, O.data, test.n_classes - 1);
    if (s == NNP_OK)
        s = nnp_init_net(net, &init, cfg.seed);
    if (s == NNP_OK && rank == 0 && !resume[0])
        warn_static_spread(net, &cfg.precond);
    if (s == NNP_OK && rank == 0)
        s = make_out_dir(O.out);
    if (s == NNP_OK && rank == 0 && O.out[0])
        s = write_options(size, resume);
    s = nnp_comm_agree(comm, s);
    if (s == NNP_OK && rank == 0 && !O.quiet) {
        char desc[8192];
        nnp_net_describe(net, desc, sizeof desc);
        printf("[setup] nnprec on %d rank%s; model %s (%zu parameters):\n%s", size,
               size > 1 ? "s" : "", O.model, net->n_params, desc);
        printf("[setup] data %s: %zu training samples, %zu test samples (%zu on rank 0), "
               "%dx%dx%d, %d classes\n",
               O.data, train.n,
               O.test_limit > 0 && (size_t)O.test_limit < test.n_total ? (size_t)O.test_limit
                                                                      : test.n_total,
               test.n, train.c, train.h, train.w, train.n_classes);
        const int ahead = stream && O.prefetch > 0 && nnp_stream_threaded(stream);
        if (stream)
            printf("[setup] streaming the training set (%s): each rank reads its samples of "
                   "the coming steps, %s%s%s\n",
                   stream_why, nnp_stream_direct(stream) ? "with pread(2), " : "through HDF5, ",
                   ahead ? "a reader thread reads ahead" : "read in the step",
                   ahead ? "" : O.prefetch == 0 ? " (--prefetch 0)"
                                                : " (the HDF5 library is not thread-safe)");
        if (cfg.shuffle.block)
            printf("[setup] --shuffle block: blocks of %zu samples in random order, shuffled "
                   "within every %zu blocks\n", cfg.shuffle.block, cfg.shuffle.window);
        if (cfg.deterministic)
            printf("[setup] --deterministic: micro-shards of %d samples, %d per global batch "
                   "(docs/determinism.md)\n",
                   cfg.micro_shard, cfg.global_batch / cfg.micro_shard);
        if (cfg.noise_scale && size == 1 && !cfg.deterministic && cfg.global_batch % 2 == 0)
            printf("[note]  --noise-scale on one rank runs an extra forward and backward over "
                   "half of each batch (about half a step more; the training stays as without "
                   "it); --deterministic --micro-shard %d takes the same two halves from its "
                   "micro-shards for much less (docs/noise-scale-and-validation.md)\n",
                   cfg.global_batch / 2);
        if (O.val_split > 0)
            printf("[setup] validation set: %lld samples held out of the training set (chosen "
                   "by --seed; %zu on rank 0)\n",
                   (long long)O.val_split, val.n);
        printf("[setup] normalize: mean %.6f std %.6f (%s)\n", mean, std,
               resume[0]        ? "from the checkpoint"
               : O.normalize[0] ? "--normalize"
                                : "computed from the training set");
        printf("[setup] init %s, optim %s lr %g momentum %g, precond %s, global batch %d%s, "
               "allreduce %s\n",
               O.init, O.optim, O.lr, O.momentum, O.precond, cfg.global_batch,
               (size_t)cfg.global_batch > train.n ? " (more than the training set: every step "
                                                    "uses all of it)"
                                                  : "",
               O.allreduce);
        fflush(stdout);
    }
    if (s == NNP_OK) {
        static char dump[8192];
        nnp_options_dump(opts, N_OPTS, dump, sizeof dump);
        cfg.options = dump;
        cfg.norm_mean = mean;
        cfg.norm_std = std;
        cfg.resume = resume;
        cfg.val = O.val_split > 0 ? &val : NULL;
        const size_t spe = nnp_batches_per_epoch(train.n, (size_t)cfg.global_batch);
        if (opt_set("warmup-epochs"))
            cfg.sched.warmup = nnp_warmup_steps(O.warmup_epochs, spe);
        if (rank == 0 && !O.quiet && (strcmp(O.lr_scaling, "none") != 0 || cfg.sched.warmup > 0))
            printf("[setup] learning rate %g at global batch %d (--lr %g for batch %d, "
                   "--lr-scaling %s); warmup %lld steps (%.3g epochs of %zu steps)\n",
                   cfg.sched.lr, cfg.global_batch, O.lr,
                   strcmp(O.lr_scaling, "none") != 0 ? O.base_batch : cfg.global_batch,
                   O.lr_scaling, (long long)cfg.sched.warmup,
                   (double)cfg.sched.warmup / (double)spe, spe);
        nnp_train_result res;
        char lbuf[32];
        nnp_watchdog_phase("training", &net->step);
        s = nnp_train(comm, &cfg, net, &train, &test, &res);
        nnp_watchdog_phase("the end of the run", NULL);
        /* printed with --quiet too: the one line that says how the run ended */
        if (s == NNP_OK && rank == 0 && res.steps == res.first_step && res.steps > 0)
            printf("[done]  nothing to train: %s is at step %lld, this run's last; its test loss "
                   "%s accuracy %.2f%%\n",
                   resume, (long long)res.steps,
                   nnp_fmt_loss(lbuf, sizeof lbuf, res.final_test_loss),
                   100.0 * res.final_test_acc);
        else if (s == NNP_OK && rank == 0)
            printf("[done]  %lld steps in %.1f s (%.0f samples/s); final test loss %s "
                   "accuracy %.2f%%%s\n",
                   (long long)res.steps, res.wall_s, res.samples_per_s,
                   nnp_fmt_loss(lbuf, sizeof lbuf, res.final_test_loss),
                   100.0 * res.final_test_acc, done_val(&res));
    }
    nnp_net_free(net);
    if (stream) /* train is the stream's header: its labels go with it */
        memset(&train, 0, sizeof train);
    nnp_stream_close(stream);
    nnp_dataset_free(&train);
    nnp_dataset_free(&test);
    nnp_dataset_free(&val);
    return s;
}
