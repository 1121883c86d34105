/* trainer.h - the data-parallel training loop (collective over the communicator).
 *
 * One step: gather this rank's slice of the global batch -> forward -> loss (scaled by
 * 1/global count) -> backward -> allreduce of the flat gradient buffer (sum = global mean)
 * -> preconditioner multipliers (dynamic: one allreduce of 2T doubles every K steps) ->
 * optimizer. Metrics are reduced over ranks at log and eval points. Every buffer is
 * allocated before the first step; a step allocates nothing and opens no file.
 * The allreduce modes: fused (one chunked MPI_Allreduce after backward), bucketed (buckets
 * reduced on a communication thread while backward runs), sharded (reduce-scatter, the
 * optimizer on this rank's 1/P, allgather of the parameters), shm (the sharded step with
 * the node's parameters and gradients in one shared window, see comm.h: during training
 * net->params and net->grads point into it, and are copied back at the end).
 */
#ifndef NNPREC_TRAINER_H
#define NNPREC_TRAINER_H
#include <stdint.h>
#include "nnprec/comm.h"
#include "nnprec/data.h"
#include "nnprec/init.h"
#include "nnprec/net.h"
#include "nnprec/optim.h"
#include "nnprec/precond.h"
#include "nnprec/stream.h"

typedef enum { NNP_LOSS_CE, NNP_LOSS_MSE } nnp_loss_kind;
typedef enum { NNP_AR_FUSED, NNP_AR_BUCKETED, NNP_AR_SHARDED, NNP_AR_SHM } nnp_allreduce_mode;

typedef struct {
    nnp_loss_kind loss;
    nnp_optim_cfg optim;
    nnp_sched sched;
    nnp_precond_cfg precond;
    int epochs;            /* used when steps == 0 */
    int64_t steps;         /* total global steps (0: epochs * steps per epoch) */
    int global_batch;      /* samples per global step, split over ranks */
    uint64_t seed;
    int64_t eval_every;    /* steps between evaluations; 0 = once per epoch */
    int64_t test_every;    /* with a validation set: steps between test-set evaluations (0: at
                              every evaluation); the last step always evaluates it */
    int64_t log_every;     /* steps between log rows / progress lines */
    int64_t stats_every;   /* steps between per-layer rows in layers.csv; 0 = off */
    int64_t check_replicas;/* steps between replica checksums; 0 = off */
    nnp_allreduce_mode allreduce;
    nnp_bn_mode bn;        /* BatchNorm statistics: sync (global batch, default) or local */
    double bucket_mb;
    int64_t balance_every; /* steps between re-splits of the global batch by rank speed; 0 = even */
    const char *out_dir;   /* where train.csv, eval.csv, timing.csv, layers.csv go ("" = none) */
    int quiet;             /* no progress lines (warnings still print) */
    int verbose;           /* internal checks too (the step's allocation counter) */
    /* checkpoints (rank 0 writes OUT_DIR/ckpt-STEP.h5, see docs/checkpoint.md) */
    int64_t checkpoint_every; /* steps between checkpoints; 0 = only at the end */
    int keep;              /* checkpoints kept (older ones deleted); 0 = all */
    const char *resume;    /* checkpoint to resume from (already resolved), "" = fresh start */
    const char *options;   /* "name=value" lines of every option, stored in checkpoints */
    double norm_mean, norm_std; /* input normalization, stored in checkpoints */
    const char *stop_file; /* rank 0 stops (checkpoint, exit 75) when this file exists; "" = none */
    /* --val-split: samples held out of the training set (recorded in checkpoints) and
     * this rank's shard of them, evaluated with the test set (NULL when val_split == 0) */
    int64_t val_split;
    const nnp_dataset *val;
    /* --noise-scale: log the gradient noise scale (noise.h) in train.csv, its two averages
     * weighting a new step by noise_ema */
    int noise_scale;
    double noise_ema;
    /* --deterministic (docs/determinism.md): the parameters after every step are the same
     * bits at any rank count; the global batch is cut into micro-shards of micro_shard
     * samples (global_batch a multiple of it), summed over one fixed tree */
    int deterministic;
    int micro_shard;
    /* --trace (trace.h): rank 0 writes every rank's phases of steps trace_a..trace_b
     * (counted from 1; trace_a = 0: the run's first 20 steps) to trace_path ("" = none) */
    const char *trace_path;
    int64_t trace_a, trace_b;
    /* --on-nonfinite rollback: a step whose loss or parameters are not finite sends every
     * rank back to the latest checkpoint in out_dir with the learning rate halved, at most
     * `rollbacks` times over the run (0: stop, the default) */
    int rollbacks;
    /* --shuffle (data.h): the order of each epoch's samples; {0, 0}: a uniform permutation */
    nnp_shuffle shuffle;
    /* --stream (stream.h): the training set is read from this stream as training goes, and
     * `train` is its header (n, shape, labels); NULL: held in memory. prefetch: the batches
     * read ahead (0: read in the step) */
    struct nnp_stream *stream;
    int prefetch;
} nnp_train_cfg;

/* Install SIGTERM/SIGUSR1 handlers: the first signal asks the training loop to finish its
 * step, checkpoint and return NNP_ERR_INTERRUPTED on every rank; a second one exits the
 * process at once (status 128 + signal). */
void nnp_train_install_signals(void);

typedef struct {
    int64_t steps;          /* steps completed at the end (a resumed run counts from 0) */
    int64_t first_step;     /* step the run started from: 0, or its checkpoint's */
    double final_test_loss, final_test_acc;
    double final_val_loss, final_val_acc; /* --val-split (NaN without it) */
    double last_train_loss;
    double wall_s;
    double samples_per_s;
} nnp_train_result;

/* Train net (already initialized identically on every rank) on `train` (the whole training
 * set on every rank) and evaluate on `test` (this rank's shard of the test set). */
nnp_status nnp_train(nnp_comm *comm, const nnp_train_cfg *cfg, nnp_net *net,
                     const nnp_dataset *train, const nnp_dataset *test, nnp_train_result *res);

/* A loss for the console: "%.4f", or "%.4e" once |v| >= 1e4 (a diverging run's losses stay
 * readable); returns buf. */
const char *nnp_fmt_loss(char *buf, size_t cap, double v);

/* Evaluate net on this rank's shard `test` in batches of up to net->max_batch; loss and
 * accuracy are reduced over ranks (collective). */
nnp_status nnp_evaluate(nnp_comm *comm, nnp_net *net, nnp_loss_kind loss,
                        const nnp_dataset *test, double *mean_loss, double *acc);

#endif
