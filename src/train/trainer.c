/* trainer.c - the data-parallel training loop and sharded evaluation (see trainer.h).
 *
 * Step anatomy (every rank, in lock step):
 *   data      gather this rank's slice of the global batch into net->act[0]
 *   forward   logits; the loss of each sample is scaled by 1/(global batch count) so that
 *             the SUM over ranks of the local gradients is the global mean gradient
 *   backward  net->grads (one flat buffer)
 *   allreduce in-place sum of net->grads over ranks (timed: wait for the slowest rank via a
 *             barrier, then the transfer itself), or of this rank's share of them: the
 *             --allreduce modes live in exchange.c
 *   precond   dynamic: local per-tensor sums over this rank's 1/p of the parameters, one
 *             allreduce of 2T doubles, new multipliers (every K steps)
 *   optim     fused multiply-by-m_j and update; lars and lamb with sharded/shm: pass 1 over
 *             this rank's share, one allreduce of 2T partial norms (LARS's go with the
 *             preconditioner's sums when both are due), pass 2 (docs/optimizers.md)
 * Metrics are accumulated locally and reduced over ranks only at log and eval points.
 */
#include "nnprec/trainer.h"
#include <errno.h>
#include <math.h>
#include <time.h>
#include <signal.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "nnprec/alloc.h"
#include "nnprec/ckpt.h"
#include "nnprec/noise.h"
#include "exchange.h"

/* ---- signals ------------------------------------------------------------------------------
 * SLURM sends SIGUSR1 (--signal) or SIGTERM before a job's time limit. The handler only
 * records the signal; the loop turns it into a stop agreed by every rank (one tiny
 * allreduce per step), so all ranks finish the same step and rank 0 checkpoints it. */
static volatile sig_atomic_t stop_signal = 0;
/* per-step stop values beyond any signal number: a non-finite loss on some rank, a failed
 * write of rank 0's CSV files, and parameters that the optimizer step left non-finite (the
 * largest wins) */
enum { STOP_DIVERGED = 1000, STOP_OUTPUT = 1001, STOP_PARAMS = 1002 };

static void on_signal(int sig)
{
    if (stop_signal)
        _exit(128 + sig); /* second signal: leave at once */
    stop_signal = sig;
}

void nnp_train_install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    /* past a file size limit (ulimit -f) a write fails with EFBIG, which nnprec reports,
     * instead of the process being killed by SIGXFSZ */
    sa.sa_handler = SIG_IGN;
    sigaction(SIGXFSZ, &sa, NULL);
}

/* Phases timed per log interval. ar_wait is the time spent waiting for the slowest rank
 * before the fused allreduce (a barrier); allreduce is the allreduce time the step
 * actually waits for; ar_thread is the time the communication thread spent in MPI in
 * bucketed mode (1 - allreduce/ar_thread is the share hidden behind backward); balance is
 * the exchange of rank speeds for --balance. */
enum { T_DATA, T_FWD, T_BWD, T_WAIT, T_AR, T_ARTHREAD, T_PREC, T_OPT, T_BAL, T_DWAIT,
       T_PREFETCH, T_N };
static const char *timer_names[T_N] = {"data",      "forward",   "backward",  "ar_wait", "allreduce",
                                       "ar_thread", "precond",   "optimizer", "balance",
                                       "data_wait", "prefetch"};
/* --stream: data_wait is the part of data spent waiting for the reader, prefetch the reader
 * thread's own time (beside the step, not in it): neither adds to the step's phases */
#define T_STEP_PHASES T_DWAIT

typedef struct {
    FILE *train_csv, *eval_csv, *timing_csv, *layers_csv;
    const char *dir;
    char err[600]; /* the first failed write ("cannot write DIR/NAME: reason"), else "" */
} outputs;

/* Rank 0, after writing rows: flush every CSV and keep the first failure (a full disk, a
 * file size limit) in o->err, which the next per-step stop check turns into a stop. */
static void outputs_flush(outputs *o)
{
    FILE *fs[] = {o->train_csv, o->eval_csv, o->timing_csv, o->layers_csv};
    const char *names[] = {"train.csv", "eval.csv", "timing.csv", "layers.csv"};
    for (size_t i = 0; i < sizeof fs / sizeof fs[0] && !o->err[0]; i++) {
        if (!fs[i])
            continue;
        errno = 0;
        if (fflush(fs[i]) != 0 || ferror(fs[i]))
            snprintf(o->err, sizeof o->err, "cannot write %s/%s: %s", o->dir, names[i],
                     errno ? strerror(errno) : "write error");
    }
}

/* Open OUT/name for writing. A fresh run starts the file with its header; a run resumed at
 * step `keep_upto` keeps the rows of steps <= keep_upto (rows written after the checkpoint
 * by the interrupted run would be repeated) and appends after them. */
static nnp_status open_csv(const char *dir, const char *name, const char *header,
                           int64_t keep_upto, FILE **f)
{
    char path[4096], tmp[4200], line[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *old = keep_upto > 0 ? fopen(path, "r") : NULL;
    if (old) {
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        FILE *t = fopen(tmp, "w");
        if (!t) {
            fclose(old);
            return nnp_error(NNP_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
        }
        fprintf(t, "%s\n", header);
        while (fgets(line, sizeof line, old))
            if (line[0] >= '0' && line[0] <= '9' && strtoll(line, NULL, 10) <= keep_upto)
                fputs(line, t);
        fclose(old);
        if (fclose(t) != 0 || rename(tmp, path) != 0)
            return nnp_error(NNP_ERR_IO, "cannot rewrite %s: %s", path, strerror(errno));
        *f = fopen(path, "a");
    } else {
        *f = fopen(path, "w");
        if (*f)
            fprintf(*f, "%s\n", header);
    }
    if (!*f)
        return nnp_error(NNP_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    return NNP_OK;
}

static nnp_status open_outputs(const nnp_train_cfg *cfg, int64_t resume_step, outputs *o)
{
    if (!cfg->out_dir || !cfg->out_dir[0])
        return NNP_OK;
    o->dir = cfg->out_dir;
    NNP_CALL(open_csv(cfg->out_dir, "train.csv",
                      cfg->noise_scale
                          ? "step,epoch,train_loss,train_acc,lr,samples_per_s,wall_s,g2,trsigma,"
                            "noise_scale"
                          : "step,epoch,train_loss,train_acc,lr,samples_per_s,wall_s",
                      resume_step, &o->train_csv));
    NNP_CALL(open_csv(cfg->out_dir, "eval.csv",
                      cfg->val ? "step,epoch,test_loss,test_acc,wall_s,val_loss,val_acc"
                               : "step,epoch,test_loss,test_acc,wall_s",
                      resume_step, &o->eval_csv));
    NNP_CALL(open_csv(cfg->out_dir, "timing.csv",
                      "step,phase,min_s,mean_s,max_s", resume_step, &o->timing_csv));
    if (cfg->stats_every > 0)
        NNP_CALL(open_csv(cfg->out_dir, "layers.csv",
                          "step,tensor,name,w_mean,w_std,act_mean,act_std,grad_std,"
                          "grad_std_precond,factor",
                          resume_step, &o->layers_csv));
    return NNP_OK;
}

static void close_outputs(outputs *o)
{
    FILE **fs[] = {&o->train_csv, &o->eval_csv, &o->timing_csv, &o->layers_csv};
    for (size_t i = 0; i < sizeof fs / sizeof fs[0]; i++)
        if (*fs[i]) {
            fclose(*fs[i]);
            *fs[i] = NULL;
        }
}

/* Loss of the samples [row0, row0 + B) of a local batch (y: their labels); fills their rows
 * of net->dact[n_layers] with scale * dloss/dlogits. */
static double rows_loss(nnp_net *net, nnp_loss_kind loss, int B, size_t row0,
                        const unsigned char *y, float scale, int want_grad, int *correct)
{
    const size_t nc = (size_t)net->n_classes;
    const float *logits = net->act[net->n_layers] + row0 * nc;
    float *dl = want_grad ? net->dact[net->n_layers] + row0 * nc : NULL;
    if (loss == NNP_LOSS_MSE)
        return nnp_mse_onehot(B, net->n_classes, logits, y, scale, dl, correct);
    return nnp_softmax_ce(B, net->n_classes, logits, y, scale, dl, correct);
}

/* Loss of a local batch; fills net->dact[n_layers] with scale * dloss/dlogits. */
static double batch_loss(nnp_net *net, nnp_loss_kind loss, int B, const unsigned char *y,
                         float scale, int want_grad, int *correct)
{
    const float *logits = net->act[net->n_layers];
    float *dl = want_grad ? net->dact[net->n_layers] : NULL;
    if (loss == NNP_LOSS_MSE)
        return nnp_mse_onehot(B, net->n_classes, logits, y, scale, dl, correct);
    return nnp_softmax_ce(B, net->n_classes, logits, y, scale, dl, correct);
}

nnp_status nnp_evaluate(nnp_comm *comm, nnp_net *net, nnp_loss_kind loss,
                        const nnp_dataset *test, double *mean_loss, double *acc)
{
    double tot[3] = {0, 0, 0}; /* loss sum, correct, count */
    const int training = net->training;
    net->training = 0; /* BatchNorm's running statistics, no dropout */
    for (size_t i = 0; i < test->n; i += (size_t)net->max_batch) {
        int B = (int)(test->n - i < (size_t)net->max_batch ? test->n - i : (size_t)net->max_batch);
        /* labels are read in place from test->y; only the inputs are copied */
        nnp_dataset_slice(test, i, B, net->act[0], NULL);
        nnp_net_forward(net, B, net->act[0]);
        int correct = 0;
        tot[0] += batch_loss(net, loss, B, test->y + i, 1.0f, 0, &correct);
        tot[1] += correct;
        tot[2] += B;
    }
    net->training = training;
    NNP_CALL(nnp_comm_allreduce_sum_f64(comm, tot, 3));
    *mean_loss = tot[2] > 0 ? tot[0] / tot[2] : NAN;
    *acc = tot[2] > 0 ? tot[1] / tot[2] : NAN;
    return NNP_OK;
}

/* --deterministic: evaluate `set` (this rank's shard: whole micro-shards of S samples,
 * nnp_split_units) in micro-shards, each forward as in training; the micro-shards' loss sums go
 * to every rank in one message where every other rank adds zeros, and each rank adds them in
 * order. buf: room for ceil(total / S) + 1 doubles; rank_n: [size]. */
static nnp_status evaluate_det(nnp_comm *comm, nnp_net *net, nnp_loss_kind loss,
                               const nnp_dataset *set, int S, double *buf, double *rank_n,
                               double *mean_loss, double *acc)
{
    const int rank = nnp_comm_rank(comm), size = nnp_comm_size(comm);
    NNP_CALL(nnp_comm_allgather_f64(comm, (double)set->n, rank_n));
    size_t first = 0, total = 0;
    for (int r = 0; r < size; r++) {
        first += r < rank ? (size_t)rank_n[r] : 0;
        total += (size_t)rank_n[r];
    }
    const size_t nch = (total + (size_t)S - 1) / (size_t)S, c0 = first / (size_t)S;
    memset(buf, 0, (nch + 1) * sizeof(double));
    const int training = net->training;
    net->training = 0;
    const size_t step = (size_t)(net->max_batch / S) * (size_t)S;
    double hits = 0;
    for (size_t i = 0; i < set->n; i += step) {
        const int B = (int)(set->n - i < step ? set->n - i : step);
        nnp_dataset_slice(set, i, B, net->act[0], NULL);
        nnp_net_forward_shards(net, B, S);
        for (int c = 0; c * S < B; c++) {
            const int rows = B - c * S < S ? B - c * S : S;
            int correct = 0;
            buf[c0 + i / (size_t)S + (size_t)c] =
                rows_loss(net, loss, rows, (size_t)c * (size_t)S, set->y + i + (size_t)c * (size_t)S,
                          1.0f, 0, &correct);
            hits += correct;
        }
    }
    net->training = training;
    buf[nch] = hits;
    NNP_CALL(nnp_comm_allreduce_sum_f64(comm, buf, nch + 1));
    double l = 0;
    for (size_t c = 0; c < nch; c++)
        l += buf[c];
    *mean_loss = total > 0 ? l / (double)total : NAN;
    *acc = total > 0 ? buf[nch] / (double)total : NAN;
    return NNP_OK;
}

/* Mean and population std of x[0..n) in double. */
static void moments(const float *x, size_t n, double *mean, double *std)
{
    double s = 0, s2 = 0;
    for (size_t i = 0; i < n; i++) {
        s += x[i];
        s2 += (double)x[i] * x[i];
    }
    double m = n ? s / (double)n : 0, v = n ? s2 / (double)n - m * m : 0;
    *mean = m;
    *std = v > 0 ? sqrt(v) : 0;
}

/* One layers.csv row per tensor (rank 0; local batch of B samples for activations). */
static void write_layer_stats(FILE *f, int64_t step, const nnp_net *net, const nnp_precond *pc,
                              int B)
{
    for (int j = 0; j < net->n_tensors; j++) {
        const nnp_tensor *t = &net->tensors[j];
        const nnp_layer *L = &net->layers[t->layer];
        double wm, ws, am, as, gm, gs;
        moments(net->params + t->off, t->n, &wm, &ws);
        moments(nnp_layer_input(net, t->layer), (size_t)B * nnp_shape_size(L->in), &am, &as);
        moments(net->grads + t->off, t->n, &gm, &gs);
        double m = pc->scale ? pc->scale[j] : 1.0;
        fprintf(f, "%lld,%d,%s,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g\n", (long long)step, j,
                t->name, wm, ws, am, as, gs, gs * fabs(m), m);
    }
}

static void fmt_duration(double s, char *buf, size_t cap)
{
    if (!(s >= 0) || s > 1e7)
        snprintf(buf, cap, "?");
    else if (s >= 3600)
        snprintf(buf, cap, "%dh%02dm", (int)(s / 3600), (int)(fmod(s, 3600) / 60));
    else if (s >= 60)
        snprintf(buf, cap, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else
        snprintf(buf, cap, "%.0fs", s);
}

const char *nnp_fmt_loss(char *buf, size_t cap, double v)
{
    snprintf(buf, cap, fabs(v) >= 1e4 ? "%.4e" : "%.4f", v);
    return buf;
}

/* The loss watch of rank 0: a moving average of its batches' mean loss (weight 0.1: about
 * 10 steps) and the lowest value it took. Once the average is LOSS_GROWTH times that lowest
 * value, and above its first step's (a loss that falls to 1e-5 and rises to 1e-3 again is
 * not diverging), one warning names the step: a diverging loss is seen while it is still
 * finite, and a loss that grows large and stays finite does not pass unnoticed. */
#define LOSS_GROWTH 100.0
typedef struct {
    double ema, first, min;
    int64_t min_step;
    int n, warned;
} loss_watch;

static void watch_loss(loss_watch *w, double loss, int64_t step)
{
    if (w->warned || !isfinite(loss))
        return;
    w->ema = w->n++ ? w->ema + 0.1 * (loss - w->ema) : loss;
    if (!isfinite(w->ema))
        return;
    if (w->n == 1)
        w->first = w->ema;
    if (w->n == 1 || w->ema < w->min) {
        w->min = w->ema;
        w->min_step = step;
    } else if (w->ema >= LOSS_GROWTH * w->min && w->ema > w->first) {
        char now[32], low[32];
        fprintf(stderr, "[warn]  step %lld: the training loss has grown to %s, over %.0fx its "
                        "lowest (%s at step %lld; a moving average of rank 0's batches over ~10 "
                        "steps): the run may be diverging (a lower --lr?)\n",
                (long long)step, nnp_fmt_loss(now, sizeof now, w->ema), LOSS_GROWTH,
                nnp_fmt_loss(low, sizeof low, w->min), (long long)w->min_step);
        fflush(stderr);
        w->warned = 1;
    }
}

/* Reduce the interval timers to min/mean/max over ranks and write timing.csv rows. */
static nnp_status reduce_timers(nnp_comm *comm, const double *t, double *mn, double *mean,
                                double *mx)
{
    for (int i = 0; i < T_N; i++)
        mn[i] = mean[i] = mx[i] = t[i];
    NNP_CALL(nnp_comm_allreduce_min_f64(comm, mn, T_N));
    NNP_CALL(nnp_comm_allreduce_max_f64(comm, mx, T_N));
    NNP_CALL(nnp_comm_allreduce_sum_f64(comm, mean, T_N));
    for (int i = 0; i < T_N; i++)
        mean[i] /= nnp_comm_size(comm);
    return NNP_OK;
}

/* Every rank's phase totals, gathered on rank 0: OUT/ranks.csv, and a line naming the
 * slowest rank, since in synchronous training every step waits for it (ar_wait). */
static nnp_status report_ranks(nnp_comm *comm, const nnp_train_cfg *cfg, const double *t,
                               double samples, double *all)
{
    const int size = nnp_comm_size(comm);
    enum { W = T_N + 2 }; /* the phases, the samples this rank computed, its peak memory */
    double mine[W];
    memcpy(mine, t, T_N * sizeof(double));
    mine[T_N] = samples;
    mine[T_N + 1] = nnp_peak_rss_mb();
    NNP_CALL(nnp_comm_gather_f64(comm, mine, W, all));
    if (nnp_comm_rank(comm) != 0)
        return NNP_OK;
    int slow = 0, fast = 0;
    double work[2] = {-HUGE_VAL, HUGE_VAL}; /* slowest, fastest */
    for (int r = 0; r < size; r++) {
        const double *x = all + (size_t)r * W;
        double w = x[T_DATA] + x[T_FWD] + x[T_BWD] + x[T_PREC] + x[T_OPT];
        if (w > work[0])
            slow = r, work[0] = w;
        if (w < work[1])
            fast = r, work[1] = w;
    }
    if (size > 1 && !cfg->quiet)
        printf("[time]  local work (data+forward+backward+precond+optimizer): slowest rank %d "
               "%.3f s, fastest rank %d %.3f s (%+.1f%%)\n",
               slow, work[0], fast, work[1], work[1] > 0 ? 100.0 * (work[0] / work[1] - 1) : 0);
    if (!cfg->out_dir || !cfg->out_dir[0])
        return NNP_OK;
    char path[4096];
    snprintf(path, sizeof path, "%s/ranks.csv", cfg->out_dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return nnp_error(NNP_ERR_IO, "cannot write %s", path);
    fprintf(f, "rank");
    for (int i = 0; i < T_N; i++)
        fprintf(f, ",%s_s", timer_names[i]);
    fprintf(f, ",samples,peak_rss_mb\n");
    for (int r = 0; r < size; r++) {
        fprintf(f, "%d", r);
        for (int i = 0; i < T_N; i++)
            fprintf(f, ",%.6f", all[(size_t)r * W + i]);
        fprintf(f, ",%.0f,%.1f\n", all[(size_t)r * W + T_N], all[(size_t)r * W + T_N + 1]);
    }
    return fclose(f) == 0 ? NNP_OK : nnp_error(NNP_ERR_IO, "cannot write %s", path);
}

/* Weighted checksum of the parameters; identical replicas give identical bits. */
static double param_checksum(const nnp_net *net)
{
    double s = 0;
    for (size_t i = 0; i < net->n_params; i++)
        s += (double)net->params[i] * (double)(1 + (i & 15));
    return s;
}

static int all_finite(const float *v, size_t n)
{
    int ok = 1;
    for (size_t i = 0; i < n; i++)
        ok &= isfinite(v[i]) != 0;
    return ok;
}

/* Rank 0 writes the checkpoint of `step` into cfg->out_dir and publishes it; every rank
 * then agrees on the outcome (the other ranks wait for the write, and no longer). Parameters
 * that are no longer finite are not written: the latest checkpoint stays a usable one. */
static nnp_status checkpoint(nnp_comm *comm, const nnp_train_cfg *cfg, const nnp_net *net,
                             const nnp_optim *opt, const nnp_precond *pc, int64_t step,
                             size_t spe, size_t n_train, double wall_s, const nnp_noise *ns,
                             double lr_factor, int64_t rollbacks)
{
    nnp_status st = NNP_OK;
    if (nnp_comm_rank(comm) == 0) {
        static nnp_ckpt_meta meta; /* 8 KB of options: not on the stack */
        memset(&meta, 0, sizeof meta);
        meta.step = step;
        meta.epoch = (int)(step / (int64_t)spe);
        meta.pos_in_epoch = step % (int64_t)spe;
        meta.seed = cfg->seed;
        meta.norm_mean = cfg->norm_mean;
        meta.norm_std = cfg->norm_std;
        meta.global_batch = cfg->global_batch;
        meta.world_size = nnp_comm_size(comm);
        meta.wall_s = wall_s;
        meta.train_samples = (int64_t)n_train;
        meta.val_split = cfg->val_split;
        meta.micro_shard = cfg->deterministic ? cfg->micro_shard : 0;
        meta.shuffle_block = (int64_t)cfg->shuffle.block;
        meta.shuffle_window = (int64_t)cfg->shuffle.window;
        meta.lr_factor = lr_factor;
        meta.rollbacks = rollbacks;
        meta.noise_scale = cfg->noise_scale;
        meta.noise_ema_g2 = ns->ema_g2;
        meta.noise_ema_tr = ns->ema_tr;
        meta.noise_steps = ns->n;
        snprintf(meta.options, sizeof meta.options, "%s", cfg->options ? cfg->options : "");
        char path[4096];
        st = nnp_ckpt_path(cfg->out_dir, step, path, sizeof path);
        if (st == NNP_OK && !all_finite(net->params, net->n_params))
            st = nnp_error(NNP_ERR_NUMERIC,
                           "training diverged by step %lld: the parameters are no longer finite "
                           "(nan or inf); lower --lr; no checkpoint was written for this step",
                           (long long)step);
        double t0 = nnp_comm_wtime();
        if (st == NNP_OK)
            st = nnp_ckpt_write(path, net, opt, pc, &meta);
        if (st == NNP_OK)
            st = nnp_ckpt_publish(cfg->out_dir, path, cfg->keep);
        if (st == NNP_OK && !cfg->quiet) {
            printf("[ckpt]  step %lld -> %s (%.2f s)\n", (long long)step, path,
                   nnp_comm_wtime() - t0);
            fflush(stdout);
        }
    }
    return nnp_comm_agree(comm, st);
}

/* --on-nonfinite rollback: every rank reads a checkpoint in --out, the latest, or with
 * before > 0 the newest one before that step (its parameters, optimizer and preconditioner
 * state; shm: into this rank's private copy, then its share into the node's window), and
 * rank 0 cuts its CSV files back to that step and records the rollback in
 * OUT/rollbacks.csv. *meta gets the checkpoint's metadata; *found = 0 when there is no such
 * checkpoint (nothing changed). Collective; on this failure path only, so it may open
 * files. */
static nnp_status rollback(nnp_comm *comm, const nnp_train_cfg *cfg, nnp_net *net,
                           nnp_optim *opt, nnp_precond *pc, exchange *x, outputs *out,
                           int64_t at, int64_t before, double lr_factor, int64_t n,
                           nnp_ckpt_meta *meta, int *found)
{
    static char path[4096];
    const int rank = nnp_comm_rank(comm);
    nnp_status st = NNP_OK;
    path[0] = '\0';
    if (rank == 0) {
        st = before > 0 ? nnp_ckpt_before(cfg->out_dir, before, path, sizeof path, found)
                        : nnp_ckpt_latest(cfg->out_dir, path, sizeof path, found);
        if (st == NNP_OK && !*found)
            path[0] = '\0';
    }
    st = nnp_comm_agree(comm, st);
    if (st == NNP_OK)
        st = nnp_comm_bcast(comm, path, sizeof path, 0);
    if (st != NNP_OK)
        return st;
    *found = path[0] != '\0';
    if (!*found)
        return NNP_OK;
    float *shared = net->params;
    if (x->sh)
        net->params = x->own_params;
    st = nnp_ckpt_read(path, net, opt, pc, meta);
    net->params = shared;
    NNP_CALL(nnp_comm_agree(comm, st));
    if (x->sh) { /* as exchange_start: each rank's share into the node's copy */
        nnp_comm_shm_store(x->sh, x->own_params);
        NNP_CALL(nnp_comm_shm_fence(x->sh));
    }
    if (rank == 0) {
        close_outputs(out);
        st = open_outputs(cfg, meta->step, out);
        char csv[4200];
        snprintf(csv, sizeof csv, "%s/rollbacks.csv", cfg->out_dir);
        const int fresh = access(csv, F_OK) != 0;
        FILE *f = st == NNP_OK ? fopen(csv, "a") : NULL;
        if (st == NNP_OK && !f)
            st = nnp_error(NNP_ERR_IO, "cannot write %s: %s", csv, strerror(errno));
        if (f) {
            if (fresh)
                fprintf(f, "step,restored_step,lr_factor,rollback\n");
            fprintf(f, "%lld,%lld,%.17g,%lld\n", (long long)at, (long long)meta->step, lr_factor,
                    (long long)n);
            if (fclose(f) != 0)
                st = nnp_error(NNP_ERR_IO, "cannot write %s: %s", csv, strerror(errno));
        }
        if (st == NNP_OK) {
            printf("[rollback] step %lld was not finite: back to step %lld (%s), learning rate "
                   "x%g from here on (rollback %lld of %d)\n",
                   (long long)at, (long long)meta->step, path, lr_factor, (long long)n,
                   cfg->rollbacks);
            fflush(stdout);
        }
    }
    return nnp_comm_agree(comm, st);
}

/* Whether an agreed error of the preconditioner (a rank's NNP_ERR_NUMERIC: its sums are no
 * longer finite; the others' NNP_ERR_REMOTE of that kind) is a divergence that
 * --on-nonfinite rollback has a rollback left for. */
static int rollback_numeric(nnp_status st, int64_t done, const nnp_train_cfg *cfg, int rank)
{
    const nnp_status kind = st == NNP_ERR_REMOTE ? nnp_remote_kind() : st;
    if (kind != NNP_ERR_NUMERIC || cfg->rollbacks == 0)
        return 0;
    if (done < cfg->rollbacks)
        return 1;
    if (rank == 0)
        fprintf(stderr, "[warn]  --on-nonfinite rollback: all %d rollbacks are spent\n",
                cfg->rollbacks);
    return 0;
}

/* The optimizer step left parameters that are not finite on some rank (each rank knows the
 * first such tensor of the part it updated): one more allreduce, on this failure path only,
 * finds the first tensor over all ranks, and rank 0 reports it. Nothing of these
 * parameters is checkpointed: the last checkpoint stays the latest. */
static nnp_status nonfinite_params(nnp_comm *comm, const nnp_train_cfg *cfg, const nnp_net *net,
                                   const nnp_optim *opt, int64_t step)
{
    double first = opt->nonfinite >= 0 ? (double)(net->n_tensors - opt->nonfinite) : 0;
    NNP_CALL(nnp_comm_allreduce_max_f64(comm, &first, 1));
    const int j = first > 0 ? net->n_tensors - (int)first : 0;
    if (nnp_comm_rank(comm) != 0)
        return NNP_ERR_REMOTE;
    return nnp_error(NNP_ERR_NUMERIC,
                     "training diverged at step %lld: the optimizer step left non-finite "
                     "parameters (nan or inf), first in %s; lower --lr, or check the data%s",
                     (long long)step, net->tensors[j].name,
                     cfg->out_dir && cfg->out_dir[0] ? "; no checkpoint was written for this step"
                                                     : "");
}

/* Test hook: NNPREC_FAULT_DRIFT=RANK:STEP makes rank RANK nudge one parameter after step
 * STEP, so tests can check that --check-replicas catches diverged replicas (with
 * --allreduce shm, the copies of different nodes: a node's ranks share one). */
static void fault_from_env(int *rank, int64_t *step)
{
    const char *f = getenv("NNPREC_FAULT_DRIFT");
    long long st;
    if (f && sscanf(f, "%d:%lld", rank, &st) == 2)
        *step = (int64_t)st;
}

/* ---- --noise-scale (noise.h) ---------------------------------------------------------------
 * This rank's local gradient norm is taken as backward finishes each layer, before the
 * bucketed mode's hook hands the layer to the communication thread (which sums it in place),
 * so one code path serves every --allreduce mode. */
typedef struct {
    const nnp_net *net;
    nnp_grad_ready_fn inner; /* the exchange's own hook (bucketed), or NULL */
    void *inner_ctx;
    int next;                /* tensors [next, n_tensors) are in sq */
    double sq;
    double t;                /* seconds spent here */
} noise_hook;

/* The noise scale's sums of squares, compiled for AVX-512, AVX2 and the x86-64 baseline, the
 * loader picking one by the CPU (target_clones; no FMA in any: the same bits). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define NOISE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NOISE_CLONES
#endif

/* Blocks of 1024 values summed in 32 float lanes (two AVX-512 vectors, four AVX2 ones:
 * independent chains; each lane adds 32 squares), the blocks' sums added in double, then the
 * tail. Relative error ~1e-7, well below the estimates' own noise. */
enum { SQ_LANES = 32, SQ_BLOCK = 1024 };

NOISE_CLONES static double sum_sq(const float *v, size_t n)
{
    double s = 0;
    size_t i = 0;
    for (; i + SQ_BLOCK <= n; i += SQ_BLOCK) {
        float a[SQ_LANES] = {0};
        const float *p = v + i;
        for (int j = 0; j < SQ_BLOCK; j += SQ_LANES)
            for (int k = 0; k < SQ_LANES; k++)
                a[k] += p[j + k] * p[j + k];
        double b = 0;
        for (int k = 0; k < SQ_LANES; k++)
            b += a[k];
        s += b;
    }
    for (; i < n; i++)
        s += (double)v[i] * v[i];
    return s;
}

/* One rank's halves: *s1 = |h|^2 and *s2 = |g - h|^2 (the second half's gradient: the whole
 * batch's less the first half's), blocked as sum_sq; g - h is formed in float (one rounding,
 * relative 6e-8). */
NOISE_CLONES static void sum_sq_halves(const float *h, const float *g, size_t n, double *s1,
                                       double *s2)
{
    double x = 0, y = 0;
    size_t i = 0;
    for (; i + SQ_BLOCK <= n; i += SQ_BLOCK) {
        float a[SQ_LANES] = {0}, b[SQ_LANES] = {0};
        for (int j = 0; j < SQ_BLOCK; j += SQ_LANES)
            for (int k = 0; k < SQ_LANES; k++) {
                const float u = h[i + j + k], r = g[i + j + k] - u;
                a[k] += u * u;
                b[k] += r * r;
            }
        double ba = 0, bb = 0;
        for (int k = 0; k < SQ_LANES; k++) {
            ba += a[k];
            bb += b[k];
        }
        x += ba;
        y += bb;
    }
    for (; i < n; i++) {
        const double u = h[i], r = (double)g[i] - u;
        x += u * u;
        y += r * r;
    }
    *s1 = x;
    *s2 = y;
}

/* Synchronized BatchNorm (--bn sync): the net's sum hook (net.h), one allreduce of a
 * layer's per-channel sums over every rank. A failure is kept for the step's check. */
typedef struct {
    nnp_comm *comm;
    nnp_status st;
} bn_sync;

static void bn_sync_sum(void *ctx, double *buf, size_t n)
{
    bn_sync *s = ctx;
    if (s->st == NNP_OK)
        s->st = nnp_comm_allreduce_sum_f64(s->comm, buf, n);
}

static void noise_ready(void *ctx, int first_final)
{
    noise_hook *h = ctx;
    const nnp_net *net = h->net;
    const size_t lo = net->tensors[first_final].off;
    const size_t hi = h->next < net->n_tensors ? net->tensors[h->next].off : net->n_params;
    const double t0 = nnp_comm_wtime();
    if (hi > lo)
        h->sq += sum_sq(net->grads + lo, hi - lo);
    h->t += nnp_comm_wtime() - t0;
    h->next = first_final;
    if (h->inner)
        h->inner(h->inner_ctx, first_final);
}

/* The kinds of per-step stop request; with --noise-scale the stop check is a sum that counts
 * each kind, and the largest kind present wins, as the plain check's max. */
static const double stop_kinds[] = {1, SIGUSR1, SIGTERM, STOP_DIVERGED, STOP_OUTPUT,
                                    STOP_PARAMS};
enum { N_STOP_KINDS = sizeof stop_kinds / sizeof stop_kinds[0] };

/* Test hook: NNPREC_FAULT_SLOW=RANK:USEC makes rank RANK sleep USEC microseconds per sample
 * of every step, a slow core for the --balance tests. */
static void slow_from_env(int *rank, long *usec)
{
    const char *f = getenv("NNPREC_FAULT_SLOW");
    if (!f || sscanf(f, "%d:%ld", rank, usec) != 2)
        *rank = -1;
}

typedef struct {
    uint32_t *perm;
    uint32_t *idx;     /* this step's local sample indices */
    unsigned char *y;  /* this step's local labels */
    double *rank_t;    /* every rank's phase totals, samples and memory at the end, [size][T_N + 2]
                          (filled on rank 0; --balance's scratch before that) */
    size_t *share;     /* --balance: every rank's samples of a full global batch */
    double *speed;     /* --balance: every rank's smoothed samples/s of local work */
    double *norms;     /* lars, lamb over shares: the per-tensor partial squared norms [2T],
                          then room for the preconditioner's sums riding along */
} train_bufs;

/* ---- --deterministic: sums over pieces and micro-shards (detsum.h) ------------------------- */

typedef struct {
    double *msg;        /* the preconditioner's message: 2 doubles per piece, then, measuring,
                           2 per trainable layer per micro-shard */
    double *part;       /* lars, lamb: 2 doubles per piece */
    double *fold;       /* 3 doubles per tensor */
    double *lossv;      /* the stop check's kinds, then each micro-shard's loss sum */
    float **act, **dact; /* [n_layers + 1]: a micro-shard's rows of the batch buffers */
    double *eval, *rank_n; /* evaluate_det's buffers */
    /* BatchNorm: every micro-shard's sums (net->shard_sums) and the message that adds them
     * over the ranks */
    double *shard_sums, *bn_buf;
    nnp_comm *comm;
    const exchange *x;
    nnp_status bn_st;     /* the first failed BatchNorm message, for the step's check */
} det_bufs;

/* The stop check's message: the stop kinds, each micro-shard's loss sum, and with
 * --noise-scale each micro-shard's |g|^2 and the pieces' |G|^2. */
static size_t det_msg_len(const exchange *x, int noise)
{
    return N_STOP_KINDS + (size_t)x->M + (noise ? (size_t)x->M + (size_t)x->pieces.n : 0);
}

/* net->bn_shard_sum: each micro-shard's sums in the step's message (one rank's values, zeros
 * from the others), every rank adding them in micro-shard order. */
static void det_bn_sum(void *ctx, const double *shard, int n, size_t width, double *out)
{
    det_bufs *d = ctx;
    const size_t len = (size_t)d->x->M * width;
    memset(d->bn_buf, 0, len * sizeof(double));
    if (n > 0)
        memcpy(d->bn_buf + (size_t)d->x->a * width, shard, (size_t)n * width * sizeof(double));
    nnp_status st = nnp_comm_allreduce_sum_f64(d->comm, d->bn_buf, len);
    if (d->bn_st == NNP_OK)
        d->bn_st = st;
    for (size_t e = 0; e < width; e++) {
        double t = 0.0;
        for (int m = 0; m < d->x->M; m++)
            t += d->bn_buf[(size_t)m * width + e];
        out[e] = t;
    }
}

/* The dynamic preconditioner's global sums in pc->sums, laid out as nnp_precond_local_sums,
 * nnp_precond_grad_sums and nnp_precond_batch_sums leave them: sum w and sum w^2 of every
 * tensor and, measuring, |G|^2 of every BatchNorm scale and shift over pieces (this rank takes
 * those in its share), and the batch sums of every micro-shard of the step (this rank's B
 * samples in the batch buffers), added in order. */
static nnp_status det_precond_sums(nnp_comm *comm, exchange *x, nnp_precond *pc,
                                   const nnp_net *net, int B, det_bufs *d)
{
    const det_pieces *P = &x->pieces;
    const size_t n2 = 2 * (size_t)pc->n, nb = pc->n_sums - pc->n_share;
    const size_t base = 3 * (size_t)P->n, len = base + (size_t)x->M * nb;
    memset(d->msg, 0, len * sizeof(double));
    int p0, p1;
    det_pieces_range(P, x->plo, x->phi, &p0, &p1);
    for (int k = p0; k < p1; k++) {
        double *v = d->msg + 3 * (size_t)k, unused = 0;
        nnp_precond_range_sums(net->params, P->lo[k], P->lo[k + 1], &v[0], &v[1]);
        if (pc->n_share > n2 && net->tensors[P->tensor[k]].norm)
            nnp_precond_range_sums(net->grads, P->lo[k], P->lo[k + 1], &unused, &v[2]);
    }
    for (int c = 0; nb > 0 && c * x->S < B; c++) {
        const size_t row0 = (size_t)c * (size_t)x->S;
        nnp_net v = *net;
        for (int k = 0; k <= net->n_layers; k++) {
            const size_t n = nnp_shape_size(k > 0 ? net->layers[k - 1].out : net->layers[0].in);
            d->act[k] = net->act[k] + row0 * n;
            d->dact[k] = net->dact[k] + row0 * n;
        }
        v.act = d->act;
        v.dact = d->dact;
        nnp_precond_batch_sums(pc, &v, B - c * x->S < x->S ? B - c * x->S : x->S);
        memcpy(d->msg + base + (size_t)(x->a + c) * nb, pc->sums + pc->n_share,
               nb * sizeof(double));
    }
    NNP_CALL(nnp_comm_allreduce_sum_f64(comm, d->msg, len));
    det_pieces_fold(P, pc->n, d->msg, 3, d->fold);
    for (int j = 0, k = 0; j < pc->n; j++) {
        pc->sums[2 * j] = d->fold[3 * j];
        pc->sums[2 * j + 1] = d->fold[3 * j + 1];
        if (pc->n_share > n2 && net->tensors[j].norm)
            pc->sums[n2 + (size_t)k++] = d->fold[3 * j + 2];
    }
    for (size_t e = 0; e < nb; e++) {
        double t = 0.0;
        for (int m = 0; m < x->M; m++)
            t += d->msg[base + (size_t)m * nb + e];
        pc->sums[pc->n_share + e] = t;
    }
    return NNP_OK;
}

/* LARS's ||w||^2 and ||g||^2, LAMB's ||w||^2 and ||u||^2 (after its first pass), of every
 * tensor over pieces: all of them here (every rank updates everything), or those of this
 * rank's share summed over the ranks. params: the copy this rank updates. */
static nnp_status det_norms(nnp_comm *comm, exchange *x, const nnp_optim *opt,
                            const nnp_net *net, const float *params, int all, det_bufs *d,
                            double *norms)
{
    const det_pieces *P = &x->pieces;
    int p0 = 0, p1 = P->n;
    if (!all) {
        det_pieces_range(P, x->plo, x->phi, &p0, &p1);
        memset(d->part, 0, 2 * (size_t)P->n * sizeof(double));
    }
    const float *second = opt->cfg.kind == NNP_OPT_LARS ? net->grads : opt->buf3;
    for (int k = p0; k < p1; k++) {
        double u1 = 0, u2 = 0, v1 = 0, v2 = 0;
        nnp_precond_range_sums(params, P->lo[k], P->lo[k + 1], &u1, &u2);
        nnp_precond_range_sums(second, P->lo[k], P->lo[k + 1], &v1, &v2);
        d->part[2 * k] = u2;
        d->part[2 * k + 1] = v2;
    }
    if (!all)
        NNP_CALL(nnp_comm_allreduce_sum_f64(comm, d->part, 2 * (size_t)P->n));
    det_pieces_fold(P, net->n_tensors, d->part, 2, norms);
    return NNP_OK;
}

/* --balance: every rank shares its samples/s of local work since the last call; each keeps
 * the same smoothed speeds and computes the same new shares of the global batch. The
 * gradient is still the mean over the same global batch: only which rank computes which
 * sample, and so the order of the floating-point sums, changes. */
static nnp_status rebalance(nnp_comm *comm, train_bufs *b, double n, double t, size_t G,
                            size_t cap)
{
    const int size = nnp_comm_size(comm);
    double *rate = b->rank_t; /* scratch until the end-of-run report */
    NNP_CALL(nnp_comm_allgather_f64(comm, t > 0 ? n / t : 0, rate));
    int known = 1;
    for (int r = 0; r < size; r++) {
        if (rate[r] > 0 && isfinite(rate[r]))
            b->speed[r] = b->speed[r] > 0 ? 0.5 * b->speed[r] + 0.5 * rate[r] : rate[r];
        known &= b->speed[r] > 0;
    }
    if (known)
        nnp_split_weighted(G, size, b->speed, cap, b->share);
    return NNP_OK;
}

/* --stream: rank(s) could not read step `step`'s samples (ds, on this rank). Every rank
 * stops here, before the step changed anything: the state after `step` steps is
 * checkpointed (unless the latest checkpoint holds it already), and the rank that failed
 * reports the file and sample, and that checkpoint. */
static nnp_status data_error_stop(nnp_comm *comm, const nnp_train_cfg *cfg, nnp_net *net,
                                  nnp_optim *opt, nnp_precond *pc, exchange *x, int64_t step,
                                  int64_t last_ckpt, size_t spe, size_t N, double wall_s,
                                  const nnp_noise *ns, double lr_factor, int64_t rollbacks,
                                  nnp_status ds)
{
    static char why[5120]; /* the reader's message, kept across the checkpoint's calls */
    snprintf(why, sizeof why, "%s", ds != NNP_OK ? nnp_error_msg() : "");
    const int have_dir = cfg->out_dir && cfg->out_dir[0];
    nnp_status st = NNP_OK;
    if (have_dir && step > last_ckpt) {
        if (opt->buf1)
            st = exchange_gather(x, opt->buf1);
        if (opt->buf2 && st == NNP_OK)
            st = exchange_gather(x, opt->buf2);
        if (st == NNP_OK)
            st = checkpoint(comm, cfg, net, opt, pc, step, spe, N, wall_s, ns, lr_factor,
                            rollbacks);
        if (st != NNP_OK)
            return st;
    }
    if (ds == NNP_OK)
        return nnp_remote(NNP_ERR_IO);
    nnp_error_clear(); /* the reader's message, now extended (the first message would win) */
    if (!have_dir)
        return nnp_error(ds, "%s; nothing was saved (no --out)", why);
    if (step == 0)
        return nnp_error(ds, "%s; no step was trained", why);
    return nnp_error(ds, "%s; the state after step %lld is in the checkpoint of that step: "
                         "resume with --resume auto once the file is whole",
                     why, (long long)step);
}

nnp_status nnp_train(nnp_comm *comm, const nnp_train_cfg *cfg, nnp_net *net,
                     const nnp_dataset *train, const nnp_dataset *test, nnp_train_result *res)
{
    const int rank = nnp_comm_rank(comm), size = nnp_comm_size(comm);
    const size_t N = train->n, G = (size_t)cfg->global_batch;
    memset(res, 0, sizeof *res);
    res->final_val_loss = res->final_val_acc = NAN;

    /* ---- setup: every allocation happens here, then all ranks agree ------------------ */
    nnp_status st = NNP_OK;
    train_bufs b = {0};
    nnp_optim opt = {0};
    nnp_precond pc = {0};
    outputs out = {0};
    exchange x = {0};
    nnp_trace tr = {0}; /* --trace */
    const int noise = cfg->noise_scale;
    float *noise_half = NULL;
    nnp_noise noise_ema = {cfg->noise_ema, 0, 0, 0};
    /* --deterministic (docs/determinism.md): micro-shards of S samples */
    const int det = cfg->deterministic;
    const int S = det ? cfg->micro_shard : 0;
    det_bufs dt = {0};
    const size_t spe = nnp_batches_per_epoch(N, G); /* steps per epoch */
    int64_t total = cfg->steps > 0 ? cfg->steps : (int64_t)cfg->epochs * (int64_t)spe;
    if (N == 0 || G == 0)
        st = nnp_error(NNP_ERR_ARG, "empty training set or zero global batch");
    else if ((size_t)net->max_batch * (size_t)size < G)
        st = nnp_error(NNP_ERR_ARG, "global batch %zu does not fit %d ranks x batch %d", G, size,
                       net->max_batch);
    else if (det && (S <= 0 || G % (size_t)S != 0))
        st = nnp_error(NNP_ERR_ARG, "--deterministic: the global batch %zu is not a whole number "
                                    "of micro-shards of %d samples (--micro-shard)", G, S);
    else if (det && (size_t)net->max_batch <
                        ((G / (size_t)S + (size_t)size - 1) / (size_t)size) * (size_t)S)
        st = nnp_error(NNP_ERR_ARG, "--deterministic: batch %d per rank holds fewer than %zu "
                                    "micro-shards of %d", net->max_batch,
                       (G / (size_t)S + (size_t)size - 1) / (size_t)size, S);
    else if (det && cfg->balance_every > 0)
        st = nnp_error(NNP_ERR_ARG, "--deterministic fixes every rank's micro-shards: it does not "
                                    "go with --balance");
    else if (det && net->n_bn > 0 && cfg->bn != NNP_BN_SYNC)
        st = nnp_error(NNP_ERR_ARG, "--deterministic takes BatchNorm's statistics over the global "
                                    "batch: it does not go with --bn local");
    else if (det && size > 1 && cfg->allreduce == NNP_AR_BUCKETED)
        st = nnp_error(NNP_ERR_ARG, "--deterministic works with --allreduce fused, sharded and "
                                    "shm; not with bucketed");
    if (st == NNP_OK) {
        b.perm = nnp_malloc(N * sizeof(uint32_t));
        b.idx = nnp_malloc((size_t)net->max_batch * sizeof(uint32_t));
        b.y = nnp_malloc((size_t)net->max_batch);
        b.rank_t = nnp_malloc((size_t)size * (T_N + 2) * sizeof(double));
        b.share = nnp_malloc((size_t)size * sizeof(size_t));
        b.speed = nnp_malloc((size_t)size * sizeof(double));
        if (noise && size == 1 && !det) /* the first half's gradient (noise.h) */
            noise_half = nnp_malloc(net->n_params * sizeof(float));
        if (!b.perm || !b.idx || !b.y || !b.rank_t || !b.share || !b.speed ||
            (noise_half == NULL && noise && size == 1 && !det))
            st = NNP_ERR_NOMEM;
    }
    if (st == NNP_OK)
        st = nnp_optim_init(&opt, &cfg->optim, net->n_params);
    if (st == NNP_OK && nnp_optim_layerwise(cfg->optim.kind)) /* ||w||^2 from the update */
        st = nnp_optim_keep_norms(&opt, net->n_tensors);
    if (st == NNP_OK)
        st = nnp_precond_init(&pc, &cfg->precond, net);
    if (st == NNP_OK) /* the --allreduce mode's buffers (exchange.h) */
        st = exchange_setup(&x, comm, net, cfg, N);
    /* lars, lamb over shares: 2T partial norms, and the preconditioner's sums after them
     * (--deterministic: always, their norms over pieces) */
    const int split_norms = (x.sharded || det) && nnp_optim_layerwise(cfg->optim.kind);
    if (st == NNP_OK && split_norms &&
        !(b.norms = nnp_malloc((2 * (size_t)net->n_tensors + pc.n_sums) * sizeof(double))))
        st = NNP_ERR_NOMEM;
    if (st == NNP_OK && det) {
        const size_t M = ((G < N ? G : N) + (size_t)S - 1) / (size_t)S; /* the most per step */
        const size_t n_msg = N_STOP_KINDS + M + (noise ? M + (size_t)x.pieces.n : 0);
        const size_t n_mom = pc.n_sums - pc.n_share; /* the batch sums, per micro-shard */
        double nt[2] = {(double)test->n, cfg->val ? (double)cfg->val->n : 0};
        st = nnp_comm_allreduce_sum_f64(comm, nt, 2); /* collective: every rank gets here */
        const size_t ne = ((size_t)(nt[0] > nt[1] ? nt[0] : nt[1]) + (size_t)S - 1) / (size_t)S;
        dt.msg = nnp_malloc((3 * (size_t)x.pieces.n + M * n_mom + 1) * sizeof(double));
        dt.fold = nnp_malloc((3 * (size_t)net->n_tensors + 1) * sizeof(double));
        dt.part = nnp_malloc((2 * (size_t)x.pieces.n + 1) * sizeof(double));
        dt.lossv = nnp_malloc(n_msg * sizeof(double));
        if (noise && !(x.leaf_sq = nnp_calloc((size_t)(net->max_batch / S), sizeof(double))))
            st = NNP_ERR_NOMEM;
        dt.act = nnp_malloc(((size_t)net->n_layers + 1) * sizeof(float *));
        dt.dact = nnp_malloc(((size_t)net->n_layers + 1) * sizeof(float *));
        dt.eval = nnp_malloc((ne + 1) * sizeof(double));
        dt.rank_n = nnp_malloc((size_t)size * sizeof(double));
        int maxc = 0;
        for (int i = 0; i < net->n_layers; i++)
            if (net->layers[i].kind == NNP_L_BN && net->layers[i].in.c > maxc)
                maxc = net->layers[i].in.c;
        if (maxc > 0) {
            const size_t w = 2 * (size_t)maxc + 1;
            dt.shard_sums = nnp_malloc((size_t)(net->max_batch / S) * w * sizeof(double));
            dt.bn_buf = nnp_malloc(M * w * sizeof(double));
            if (!dt.shard_sums || !dt.bn_buf)
                st = NNP_ERR_NOMEM;
        }
        dt.comm = comm;
        dt.x = &x;
        if (st == NNP_OK && (!dt.msg || !dt.fold || !dt.part || !dt.lossv || !dt.act ||
                             !dt.dact || !dt.eval || !dt.rank_n))
            st = NNP_ERR_NOMEM;
    }
    st = nnp_comm_agree(comm, st);
    if (st != NNP_OK)
        goto done;

    /* resume: every rank reads and validates the same checkpoint */
    int64_t first_step = 0;
    double wall_before = 0;
    double lr_factor = 1.0; /* --on-nonfinite rollback: halved by each rollback */
    int64_t n_rollbacks = 0;
    int64_t restored = 0;   /* the step the last rollback went back to (0: none) */
    int64_t diverged_at = 0; /* the furthest step at which the run has diverged */
    if (cfg->resume && cfg->resume[0]) {
        static nnp_ckpt_meta meta;
        st = nnp_ckpt_read(cfg->resume, net, &opt, &pc, &meta);
        if (st == NNP_OK && meta.global_batch != cfg->global_batch)
            st = nnp_error(NNP_ERR_ARG,
                           "checkpoint %s was written with global batch %d, this run has %d "
                           "(the sample order depends on it)",
                           cfg->resume, meta.global_batch, cfg->global_batch);
        if (st == NNP_OK && meta.seed != cfg->seed)
            st = nnp_error(NNP_ERR_ARG, "checkpoint %s was written with --seed %llu, this run has %llu",
                           cfg->resume, (unsigned long long)meta.seed,
                           (unsigned long long)cfg->seed);
        if (st == NNP_OK && meta.noise_scale != cfg->noise_scale)
            st = nnp_error(NNP_ERR_ARG,
                           "checkpoint %s was written %s --noise-scale and this run %s "
                           "(train.csv's columns depend on it)",
                           cfg->resume, meta.noise_scale ? "with" : "without",
                           cfg->noise_scale ? "has it" : "is without it");
        if (st == NNP_OK && meta.val_split != cfg->val_split)
            st = nnp_error(NNP_ERR_ARG,
                           "checkpoint %s was written with --val-split %lld, this run has %lld "
                           "(the held-out samples and the sample order depend on it)",
                           cfg->resume, (long long)meta.val_split, (long long)cfg->val_split);
        /* --deterministic: the trajectory depends on the micro-shards (a checkpoint written
         * without it may start a deterministic run: from there on every rank count agrees) */
        if (st == NNP_OK && det && meta.micro_shard > 0 && meta.micro_shard != S)
            st = nnp_error(NNP_ERR_ARG,
                           "checkpoint %s was written with --deterministic --micro-shard %d, "
                           "this run has %d (the trajectory depends on it: resume with "
                           "--micro-shard %d)",
                           cfg->resume, meta.micro_shard, S, meta.micro_shard);
        if (st == NNP_OK && !det && meta.micro_shard > 0 && rank == 0)
            fprintf(stderr, "[warn]  checkpoint %s was written with --deterministic; without "
                            "it this run is no longer the same bits at every rank count (add "
                            "--deterministic --micro-shard %d)\n",
                    cfg->resume, meta.micro_shard);
        if (st == NNP_OK && ((size_t)meta.shuffle_block != cfg->shuffle.block ||
                             (meta.shuffle_block > 0 &&
                              (size_t)meta.shuffle_window != cfg->shuffle.window))) {
            char was[64] = "full", now[64] = "full";
            if (meta.shuffle_block > 0)
                snprintf(was, sizeof was, "block:%lld:%lld", (long long)meta.shuffle_block,
                         (long long)meta.shuffle_window);
            if (cfg->shuffle.block > 0)
                snprintf(now, sizeof now, "block:%zu:%zu", cfg->shuffle.block,
                         cfg->shuffle.window);
            st = nnp_error(NNP_ERR_ARG, "checkpoint %s was written with --shuffle %s, this run "
                                        "has %s (the sample order depends on it)",
                           cfg->resume, was, now);
        }
        /* the sample order depends on the training set's size: another --train-limit or
         * --data would continue with other batches (older files lack train_samples, but
         * their epoch and position must still agree with this run's batches per epoch) */
        if (st == NNP_OK && meta.train_samples > 0 && (size_t)meta.train_samples != N)
            st = nnp_error(NNP_ERR_ARG,
                           "checkpoint %s was written with %lld training samples, this run has "
                           "%zu (the sample order depends on it: same --data and --train-limit)",
                           cfg->resume, (long long)meta.train_samples, N);
        if (st == NNP_OK && (meta.epoch != (int64_t)(meta.step / (int64_t)spe) ||
                             meta.pos_in_epoch != meta.step % (int64_t)spe))
            st = nnp_error(NNP_ERR_ARG,
                           "checkpoint %s is at step %lld = epoch %d, batch %lld, which does not "
                           "match this run's %zu batches per epoch (other --data or --train-limit?)",
                           cfg->resume, (long long)meta.step, meta.epoch,
                           (long long)meta.pos_in_epoch, spe);
        if (st == NNP_OK && meta.step > total)
            st = nnp_error(NNP_ERR_ARG,
                           "checkpoint %s is at step %lld, past this run's %lld steps (--steps, "
                           "--epochs)",
                           cfg->resume, (long long)meta.step, (long long)total);
        st = nnp_comm_agree(comm, st);
        if (st != NNP_OK)
            goto done;
        first_step = meta.step;
        wall_before = meta.wall_s;
        lr_factor = meta.lr_factor;
        n_rollbacks = meta.rollbacks;
        noise_ema.ema_g2 = meta.noise_ema_g2; /* the noise scale's averages go on */
        noise_ema.ema_tr = meta.noise_ema_tr;
        noise_ema.n = meta.noise_steps;
        if (rank == 0 && !cfg->quiet)
            printf("[ckpt]  resumed from %s at step %lld (epoch %d, written by %d rank%s)\n",
                   cfg->resume, (long long)first_step, meta.epoch, meta.world_size,
                   meta.world_size > 1 ? "s" : "");
        res->first_step = res->steps = first_step;
        if (first_step == total) {
            /* a finished run: nothing to train, and its files stay as they are; the
             * checkpoint's test figures are reported as the run's */
            st = det ? evaluate_det(comm, net, cfg->loss, test, S, dt.eval, dt.rank_n,
                                    &res->final_test_loss, &res->final_test_acc)
                     : nnp_evaluate(comm, net, cfg->loss, test, &res->final_test_loss,
                                    &res->final_test_acc);
            goto done;
        }
    }

    /* collective: after the agreement, and once the parameters are final */
    if ((st = exchange_start(&x)) != NNP_OK)
        goto done;

    if (rank == 0)
        st = open_outputs(cfg, first_step, &out);
    st = nnp_comm_agree(comm, st);
    if (st != NNP_OK)
        goto done;

    nnp_sched sched = cfg->sched;
    if (sched.kind == NNP_SCHED_COSINE && sched.total_steps <= 0)
        sched.total_steps = total;
    const int64_t eval_every = cfg->eval_every > 0 ? cfg->eval_every : (int64_t)spe;
    const int64_t log_every = cfg->log_every > 0 ? cfg->log_every : 100;
    const int dynamic = cfg->precond.mode == NNP_PRECOND_DYNAMIC;
    const double *scale = cfg->precond.mode == NNP_PRECOND_NONE ? NULL : pc.scale;

    double timers[T_N] = {0}, tot_timers[T_N] = {0};
    double loss_acc[3] = {0, 0, 0}; /* loss sum (already /G-scaled), correct, samples */
    const double t_start = nnp_comm_wtime();
    double t_log = t_start;
    int64_t samples_since_log = 0;
    int cur_epoch = -1;
    unsigned long step_allocs = 0;
    int fault_rank = -1;
    int64_t fault_step = -1;
    fault_from_env(&fault_rank, &fault_step);
    int slow_rank = -1;
    long slow_usec = 0;
    slow_from_env(&slow_rank, &slow_usec);
    int sums_ready = 0;   /* pc.sums already hold this rank's sums of the current params */
    loss_watch lw = {0};
    /* --noise-scale over shm: the nodes, each holding every share of the summed gradient */
    const int noise_nodes = x.share_size > 0 ? size / x.share_size : 1;
    double noise_t = 0; /* this rank's seconds in the noise scale's own work */
    const size_t n_norms = 2 * (size_t)net->n_tensors;
    int norms_ready = 0;  /* b.norms already hold this step's global lars norms */
    /* --balance: shares start even and follow each rank's measured speed */
    const int balance = cfg->balance_every > 0 && size > 1;
    double bal_t = 0, bal_n = 0, my_samples = 0;
    for (int r = 0; r < size; r++) {
        size_t lo, hi;
        nnp_split(G, size, r, &lo, &hi);
        b.share[r] = hi - lo;
        b.speed[r] = 0;
    }

    /* the pass context of the net (net.h): synchronized BatchNorm sums over the ranks, and
     * the dropout mask's key (seed, step, dataset index of each local sample) */
    bn_sync bns = {comm, NNP_OK};
    const int bn_synced = net->n_bn > 0 && size > 1 && cfg->bn == NNP_BN_SYNC && !det;
    net->bn_sum = bn_synced ? bn_sync_sum : NULL;
    net->bn_sum_ctx = bn_synced ? &bns : NULL;
    net->shard_sums = dt.shard_sums;
    net->bn_shard_sum = det ? det_bn_sum : NULL;
    net->bn_shard_ctx = det ? &dt : NULL;
    net->seed = cfg->seed;
    net->sample_ids = b.idx;
    net->training = 1;

    if (rank == 0 && !cfg->quiet)
        printf("[train] %lld steps (%zu per epoch), global batch %zu over %d rank%s, %zu "
               "parameters\n",
               (long long)total, spe, G, size, size > 1 ? "s" : "", net->n_params);

    /* --trace: the window clipped to this run, room for every phase of a step */
    if (cfg->trace_path && cfg->trace_path[0]) {
        int64_t ta = cfg->trace_a > 0 ? cfg->trace_a : first_step + 1;
        int64_t tb = cfg->trace_a > 0 ? cfg->trace_b : first_step + 20;
        if (ta <= first_step)
            ta = first_step + 1;
        if (tb > total)
            tb = total;
        if (rank == 0 && ta > tb)
            fprintf(stderr, "[warn]  --trace-steps %lld:%lld lies outside this run's steps "
                            "%lld..%lld: %s will hold no events\n",
                    (long long)cfg->trace_a, (long long)cfg->trace_b, (long long)first_step + 1,
                    (long long)total, cfg->trace_path);
        if ((st = nnp_trace_start(&tr, comm, cfg->trace_path, ta, tb, 16 + x.n_buckets)) !=
            NNP_OK)
            goto done;
        x.trace = &tr;
    }

    /* --stream: the reader starts on this run's first step (stream.h) */
    double busy_prev = 0;
    int64_t last_ckpt = first_step; /* the step of the latest checkpoint (a data error's stop) */
    if (cfg->stream) {
        const nnp_stream_plan sp = {cfg->seed, cfg->shuffle, G, det ? (size_t)S : 0, size, rank,
                                    net->max_batch, cfg->prefetch, first_step, total,
                                    balance ? cfg->balance_every : 0, b.share};
        st = nnp_comm_agree(comm, nnp_stream_start(cfg->stream, &sp));
        if (st != NNP_OK)
            goto done;
    }

    res->steps = first_step;
    for (int64_t step = first_step; step < total; step++) {
        nnp_status prec_st = NNP_OK; /* the preconditioner met a divergence (rollback) */
        const int epoch = (int)(step / (int64_t)spe);
        const size_t bi = (size_t)(step % (int64_t)spe);
        const unsigned long allocs_before = nnp_alloc_count();
        double t0 = nnp_comm_wtime();
        if (epoch != cur_epoch) {
            nnp_epoch_order(cfg->seed, epoch, &cfg->shuffle, b.perm, N);
            cur_epoch = epoch;
        }
        /* global batch bi is perm[bi*G, min((bi+1)*G, N)); this rank takes its slice */
        size_t g0 = bi * G, gc = (g0 + G <= N ? G : N - g0), lo, hi;
        if (det)
            exchange_det_begin(&x, gc, &lo, &hi);
        else if (balance)
            nnp_split_shares(gc, G, b.share, rank, &lo, &hi);
        else
            nnp_split(gc, size, rank, &lo, &hi);
        int B = (int)(hi - lo);
        for (int i = 0; i < B; i++)
            b.idx[i] = b.perm[g0 + lo + (size_t)i];
        net->step = step;
        if (cfg->stream) {
            double w = 0;
            const nnp_status ds =
                nnp_stream_batch(cfg->stream, step, b.idx, B, net->act[0], b.y, &w);
            timers[T_DWAIT] += w;
            const double bz = nnp_stream_busy_s(cfg->stream);
            timers[T_PREFETCH] += bz - busy_prev;
            busy_prev = bz;
            /* a read error on any rank stops every rank before the step changes anything */
            double bad = ds != NNP_OK;
            if ((st = nnp_comm_allreduce_max_f64(comm, &bad, 1)) != NNP_OK)
                goto done;
            if (bad > 0) {
                st = data_error_stop(comm, cfg, net, &opt, &pc, &x, step, last_ckpt, spe, N,
                                     wall_before + nnp_comm_wtime() - t_start, &noise_ema,
                                     lr_factor, n_rollbacks, ds);
                goto done;
            }
        } else {
            nnp_dataset_gather(train, b.idx, B, net->act[0], b.y);
        }
        if (slow_rank == rank && B > 0) {
            long us = slow_usec * B;
            struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
            nanosleep(&ts, NULL);
        }
        double t1 = nnp_comm_wtime();
        timers[T_DATA] += t1 - t0;
        nnp_trace_add(&tr, NNP_TR_DATA, NNP_TR_MAIN, step + 1, t0, t1);
        x.step = step + 1;
        /* one rank, --noise-scale: an extra pass over the first half of the batch gives the
         * small batch's gradient, kept; the whole batch then runs exactly as without it */
        const int B1 = noise_half ? B / 2 : 0;
        if (B1 > 0) {
            int unused;
            net->freeze_running = 1; /* an extra pass: BatchNorm's running statistics stay */
            nnp_net_forward(net, B1, net->act[0]);
            net->freeze_running = 0;
            batch_loss(net, cfg->loss, B1, b.y, 1.0f / (float)gc, 1, &unused);
            const double ta = nnp_comm_wtime();
            nnp_net_backward(net, B1, NULL, NULL);
            memcpy(noise_half, net->grads, net->n_params * sizeof(float));
            const double tb = nnp_comm_wtime();
            timers[T_FWD] += ta - t1;
            timers[T_BWD] += tb - ta;
            nnp_trace_add(&tr, NNP_TR_FORWARD, NNP_TR_MAIN, step + 1, t1, ta);
            nnp_trace_add(&tr, NNP_TR_BACKWARD, NNP_TR_MAIN, step + 1, ta, tb);
            noise_t += tb - t1;
            t1 = tb;
        }

        int correct = 0;
        double step_loss = 0;
        if (det) {
            /* every micro-shard on its own: its loss sum goes to the stop check's message */
            memset(dt.lossv, 0, det_msg_len(&x, noise) * sizeof(double));
            nnp_net_forward_shards(net, B, S); /* B = 0: joins BatchNorm's sums */
            for (int c = 0; c * S < B; c++) {
                int hits = 0;
                const double l = rows_loss(net, cfg->loss, B - c * S < S ? B - c * S : S,
                                           (size_t)c * (size_t)S, b.y + (size_t)c * (size_t)S,
                                           1.0f / (float)gc, 1, &hits);
                dt.lossv[N_STOP_KINDS + x.a + c] = l;
                step_loss += l / (double)gc; /* local: for the finiteness check only */
                correct += hits;
            }
        } else if (B > 0) {
            nnp_net_forward(net, B, net->act[0]);
            step_loss = batch_loss(net, cfg->loss, B, b.y, 1.0f / (float)gc, 1, &correct) / (double)gc;
            loss_acc[0] += step_loss;
        }
        double t2 = nnp_comm_wtime();
        timers[T_FWD] += t2 - t1;
        nnp_trace_add(&tr, NNP_TR_FORWARD, NNP_TR_MAIN, step + 1, t1, t2);
        nnp_grad_ready_fn on_ready;
        void *ready_ctx;
        exchange_backward_hook(&x, &on_ready, &ready_ctx);
        /* the communication thread must not run while backward sums BatchNorm's statistics
         * (MPI_THREAD_SERIALIZED): the buckets go after backward */
        if (bn_synced)
            on_ready = NULL;
        noise_hook nh = {net, on_ready, ready_ctx, net->n_tensors, 0.0, 0.0};
        if (noise && size > 1) { /* this rank's gradient norm before the exchange */
            on_ready = noise_ready;
            ready_ctx = &nh;
        }
        if (det) {
            const nnp_shard_sink sink = exchange_det_sink(&x);
            nnp_net_backward_shards(net, B, S, &sink);
        } else if (B > 0)
            nnp_net_backward(net, B, on_ready, ready_ctx);
        else {
            memset(net->grads, 0, net->n_params * sizeof(float));
            nnp_net_sync_idle(net); /* joins BatchNorm's sums as a rank with 0 samples */
        }
        if (bns.st != NNP_OK || dt.bn_st != NNP_OK) {
            st = bns.st != NNP_OK ? bns.st : dt.bn_st;
            goto done;
        }
        double ns[NNP_NS_N] = {0}; /* this rank's share of the noise-scale sums (noise.h) */
        if (noise && size > 1 && B > 0 && !det) {
            if (nh.next > 0) /* the first tensors, if backward's last call did not reach them */
                noise_ready(&nh, 0);
            const double m = (double)gc / B; /* the gradient was scaled by 1/gc, not 1/B */
            ns[NNP_NS_SMALL] = m * m * nh.sq;
            ns[NNP_NS_INV] = 1.0 / B;
            ns[NNP_NS_PIECES] = 1;
            noise_t += nh.t;
        } else if (B1 > 0) { /* the halves: the first kept, the second the rest of the whole */
            const double th = nnp_comm_wtime();
            double s1, s2;
            sum_sq_halves(noise_half, net->grads, net->n_params, &s1, &s2);
            const double m1 = (double)gc / B1, m2 = (double)gc / (B - B1);
            ns[NNP_NS_SMALL] = m1 * m1 * s1 + m2 * m2 * s2;
            ns[NNP_NS_INV] = 1.0 / B1 + 1.0 / (B - B1);
            ns[NNP_NS_PIECES] = 2;
            noise_t += nnp_comm_wtime() - th;
        }
        double t3 = nnp_comm_wtime();
        timers[T_BWD] += t3 - t2;
        nnp_trace_add(&tr, NNP_TR_BACKWARD, NNP_TR_MAIN, step + 1, t2, t3);
        bal_t += t3 - t0; /* local work that grows with the batch: data, forward, backward */
        bal_n += B;
        my_samples += B;
        loss_acc[1] += correct;
        loss_acc[2] += B;

        /* the loss was scaled by 1/gc per sample, so the sum over ranks is the mean */
        if ((st = exchange_grads(&x, &timers[T_WAIT], &timers[T_AR], &timers[T_ARTHREAD])) !=
            NNP_OK)
            goto done;
        if (noise && det) {
            /* |G_big|^2 over the pieces of this rank's share, into the stop check's message */
            const double tg = nnp_comm_wtime();
            int p0, p1;
            double *big = dt.lossv + N_STOP_KINDS + 2 * (size_t)x.M;
            det_pieces_range(&x.pieces, x.plo, x.phi, &p0, &p1);
            for (int k = p0; k < p1; k++) {
                double unused = 0;
                nnp_precond_range_sums(net->grads, x.pieces.lo[k], x.pieces.lo[k + 1], &unused,
                                       &big[k]);
            }
            noise_t += nnp_comm_wtime() - tg;
        } else if (noise) {
            /* |G_big|^2 over this rank's share of the summed gradient (shm: every node holds
             * all the shares, so the world's sum counts each node once per node) */
            const double tg = nnp_comm_wtime();
            ns[NNP_NS_BIG] = sum_sq(net->grads + x.lo, x.hi - x.lo) / (double)noise_nodes;
            noise_t += nnp_comm_wtime() - tg;
        }
        t3 = nnp_comm_wtime();

        if (dynamic && step % cfg->precond.every == 0 && det) {
            st = det_precond_sums(comm, &x, &pc, net, B, &dt);
            if (st == NNP_OK)
                st = nnp_precond_from_sums(&pc, net, step);
            st = nnp_comm_agree(comm, st);
            if (st != NNP_OK && rollback_numeric(st, n_rollbacks, cfg, rank)) {
                prec_st = st; /* the multipliers met the divergence first: no update, and */
                st = NNP_OK;  /* the stop check below takes the divergence path */
            }
            if (st != NNP_OK)
                goto done;
        } else if (dynamic && step % cfg->precond.every == 0) {
            /* the previous step's optimizer pass left this rank's sums in pc.sums, except
             * on the first step of a run (or of a resumed run) */
            if (!sums_ready)
                nnp_precond_local_sums(&pc, net, x.share_rank, x.share_size);
            sums_ready = 0;
            nnp_precond_batch_sums(&pc, net, B); /* when measuring: this step's moments */
            nnp_precond_grad_sums(&pc, net, x.share_rank, x.share_size);
            if (split_norms && cfg->optim.kind == NNP_OPT_LARS) {
                /* LARS's partial norms (||w||^2 and the raw ||g||^2) do not depend on the
                 * multipliers: they travel in the preconditioner's message, in front */
                exchange_norms(&x, &opt, scale, b.norms);
                memcpy(b.norms + n_norms, pc.sums, pc.n_sums * sizeof(double));
                st = exchange_sum_f64_mixed(&x, b.norms, n_norms + pc.n_share,
                                            n_norms + pc.n_sums);
                memcpy(pc.sums, b.norms + n_norms, pc.n_sums * sizeof(double));
                norms_ready = 1;
            } else
                st = exchange_sum_f64_mixed(&x, pc.sums, pc.n_share, pc.n_sums);
            if (st == NNP_OK)
                st = nnp_precond_from_sums(&pc, net, step);
            st = nnp_comm_agree(comm, st);
            if (st != NNP_OK && rollback_numeric(st, n_rollbacks, cfg, rank)) {
                prec_st = st; /* the multipliers met the divergence first: no update, and */
                st = NNP_OK;  /* the stop check below takes the divergence path */
            }
            if (st != NNP_OK)
                goto done;
        }
        double t5 = nnp_comm_wtime();
        timers[T_PREC] += t5 - t3;
        if (dynamic && step % cfg->precond.every == 0)
            nnp_trace_add(&tr, NNP_TR_PRECOND, NNP_TR_MAIN, step + 1, t3, t5);

        if (cfg->stats_every > 0 && step % cfg->stats_every == 0 && prec_st == NNP_OK) {
            /* rank 0 writes every tensor's gradient statistics: it needs all of them */
            if (cfg->out_dir && cfg->out_dir[0] && (st = exchange_gather(&x, net->grads)) != NNP_OK)
                goto done;
            if (out.layers_csv) {
                write_layer_stats(out.layers_csv, step, net, &pc, B);
                outputs_flush(&out);
            }
            if ((st = exchange_hold(&x)) != NNP_OK)
                goto done;
        }
        const double t_opt = nnp_comm_wtime();
        if (t_opt > t5 && cfg->stats_every > 0 && step % cfg->stats_every == 0)
            nnp_trace_add(&tr, NNP_TR_STATS, NNP_TR_MAIN, step + 1, t5, t_opt);

        double lr = nnp_sched_lr(&sched, step, epoch) * lr_factor;
        if (dynamic && !det && (step + 1) % cfg->precond.every == 0 && prec_st == NNP_OK) {
            /* the next step updates the multipliers: sum this rank's share of the new
             * parameters in the optimizer's own pass */
            nnp_optim_want_sums(&opt, pc.sums, x.lo, x.hi);
            sums_ready = 1;
        }
        if (prec_st != NNP_OK) {
            norms_ready = 0; /* no update: the step goes to the rollback */
        } else if (split_norms && det) {
            /* --deterministic: the norms over pieces; pass 1 and 2 over what this rank
             * updates (everything unless sharded) */
            if (x.sharded) {
                exchange_norms(&x, &opt, scale, b.norms);
                st = det_norms(comm, &x, &opt, net, x.own_params, 0, &dt, b.norms);
                if (st != NNP_OK)
                    goto done;
                exchange_apply(&x, &opt, lr, scale, b.norms);
            } else {
                nnp_optim_norms_range(&opt, net, scale, 0, net->n_params, b.norms);
                st = det_norms(comm, &x, &opt, net, net->params, 1, &dt, b.norms);
                if (st != NNP_OK)
                    goto done;
                nnp_optim_apply_range(&opt, net, lr, scale, 0, net->n_params, b.norms);
            }
        } else if (split_norms) {
            /* lars, lamb over shares: pass 1 over this rank's share (LAMB: with this step's
             * multipliers, so after the preconditioner's message), one sum of 2T doubles
             * over the ranks (unless it went with the preconditioner's), pass 2 */
            if (!norms_ready) {
                exchange_norms(&x, &opt, scale, b.norms);
                if ((st = exchange_sum_f64(&x, b.norms, n_norms)) != NNP_OK)
                    goto done;
            }
            norms_ready = 0;
            exchange_apply(&x, &opt, lr, scale, b.norms);
        } else
            exchange_update(&x, &opt, lr, scale);
        step_allocs += nnp_alloc_count() - allocs_before; /* the step must allocate nothing */
        const double t6 = nnp_comm_wtime();
        timers[T_OPT] += t6 - t5;
        nnp_trace_add(&tr, NNP_TR_OPTIMIZER, NNP_TR_MAIN, step + 1, t_opt, t6);
        if ((st = exchange_params(&x, &timers[T_AR])) != NNP_OK)
            goto done;
        const double t_stop = nnp_comm_wtime();
        samples_since_log += (int64_t)gc;

        const int64_t done_steps = step + 1;

        /* stop request: a signal on any rank, the stop file seen by rank 0, a loss that is
         * no longer finite on any rank, or a failed CSV write on rank 0 (one tiny allreduce
         * per step for all four; the errors' values outrank the signals) */
        double stop = stop_signal;
        if (rank == 0 && cfg->stop_file && cfg->stop_file[0] && access(cfg->stop_file, F_OK) == 0)
            stop = stop > 0 ? stop : 1;
        if (!isfinite(step_loss) || prec_st != NNP_OK)
            stop = STOP_DIVERGED;
        if (rank == 0 && B > 0 && !det)
            watch_loss(&lw, step_loss * (double)gc / B, done_steps);
        if (rank == 0 && out.err[0])
            stop = STOP_OUTPUT;
        if (opt.nonfinite >= 0) /* found by the optimizer's own pass (optim.h) */
            stop = STOP_PARAMS;
        if (det) {
            /* the stop check as a sum that counts each kind of request, carrying every
             * micro-shard's loss sum (one rank's value, zeros from the others: exact);
             * the step's loss is their sum in order, the same bits on every rank */
            for (int k = 0; k < N_STOP_KINDS; k++)
                dt.lossv[k] = stop == stop_kinds[k];
            for (int c = 0; noise && c * S < B; c++) /* each micro-shard's |g|^2 */
                dt.lossv[N_STOP_KINDS + (size_t)x.M + (size_t)(x.a + c)] = x.leaf_sq[c];
            if ((st = nnp_comm_allreduce_sum_f64(comm, dt.lossv, det_msg_len(&x, noise))) !=
                NNP_OK)
                goto done;
            if (noise) { /* the pieces of the noise scale are the micro-shards */
                const double *v = dt.lossv + N_STOP_KINDS;
                memset(ns, 0, sizeof ns);
                for (int m = 0; m < x.M; m++) {
                    const double rows = (double)(gc - (size_t)m * (size_t)S < (size_t)S
                                                     ? gc - (size_t)m * (size_t)S : (size_t)S);
                    ns[NNP_NS_SMALL] += ((double)gc / rows) * ((double)gc / rows) * v[x.M + m];
                    ns[NNP_NS_INV] += 1.0 / rows;
                }
                ns[NNP_NS_PIECES] = x.M;
                for (int k = 0; k < x.pieces.n; k++)
                    ns[NNP_NS_BIG] += v[2 * (size_t)x.M + (size_t)k];
            }
            stop = 0;
            for (int k = 0; k < N_STOP_KINDS; k++)
                if (dt.lossv[k] > 0 && stop_kinds[k] > stop)
                    stop = stop_kinds[k];
            double l = 0.0;
            for (int m = 0; m < x.M; m++)
                l += dt.lossv[N_STOP_KINDS + m];
            step_loss = l / (double)gc;
            loss_acc[0] += step_loss; /* the global step's, on every rank */
            if (rank == 0)
                watch_loss(&lw, step_loss, done_steps);
        } else if (size > 1 && noise) {
            /* --noise-scale: the same single allreduce, as a sum that counts each kind of
             * stop request and carries the noise-scale sums after them */
            double v[N_STOP_KINDS + NNP_NS_N];
            for (int k = 0; k < N_STOP_KINDS; k++)
                v[k] = stop == stop_kinds[k];
            memcpy(v + N_STOP_KINDS, ns, sizeof ns);
            if ((st = nnp_comm_allreduce_sum_f64(comm, v, N_STOP_KINDS + NNP_NS_N)) != NNP_OK)
                goto done;
            stop = 0;
            for (int k = 0; k < N_STOP_KINDS; k++)
                if (v[k] > 0 && stop_kinds[k] > stop)
                    stop = stop_kinds[k];
            memcpy(ns, v + N_STOP_KINDS, sizeof ns);
        } else if (size > 1 && (st = nnp_comm_allreduce_max_f64(comm, &stop, 1)) != NNP_OK)
            goto done;
        nnp_trace_add(&tr, NNP_TR_STOP_CHECK, NNP_TR_MAIN, done_steps, t_stop, nnp_comm_wtime());
        if (noise) {
            double g2, trs;
            if (nnp_noise_estimate(ns, (double)gc, &g2, &trs))
                nnp_noise_update(&noise_ema, g2, trs);
        }
        const int diverged = stop == STOP_DIVERGED || stop == STOP_PARAMS;
        const int out_failed = stop == STOP_OUTPUT;
        if (balance && stop < STOP_DIVERGED && done_steps % cfg->balance_every == 0) {
            const double t7 = nnp_comm_wtime();
            st = rebalance(comm, &b, bal_n, bal_t, G, (size_t)net->max_batch);
            if (st != NNP_OK)
                goto done;
            if (cfg->stream) /* the reader may go on: these are the next steps' shares */
                nnp_stream_set_shares(cfg->stream, b.share, done_steps);
            bal_t = bal_n = 0;
            timers[T_BAL] += nnp_comm_wtime() - t7;
        }
        if (fault_step == done_steps && fault_rank == rank) {
            exchange_drift(&x); /* test hook: a replica drifts (see fault_from_env) */
            nnp_optim_params_changed(&opt);
        }
        if (cfg->check_replicas > 0 && done_steps % cfg->check_replicas == 0 && size > 1 &&
            stop < STOP_DIVERGED) { /* nan checksums would all differ */
            double cs[2];
            cs[0] = param_checksum(net);
            cs[1] = -cs[0];
            st = nnp_comm_allreduce_max_f64(comm, cs, 2);
            if (st != NNP_OK)
                goto done;
            if (cs[0] != -cs[1]) {
                /* every rank sees it and stops; rank 0 alone reports */
                st = rank != 0 ? NNP_ERR_REMOTE : nnp_error(NNP_ERR_COMM,
                               "replicas diverged at step %lld: parameter checksums range "
                               "from %.17g to %.17g",
                               (long long)done_steps, -cs[1], cs[0]);
                goto done;
            }
        }

        int is_last = done_steps == total;
        if ((done_steps % log_every == 0 || is_last || diverged) && !out_failed) {
            /* --deterministic: every rank holds the global losses already (rank 0 gives
             * them, the others zeros) */
            double m[3] = {det && rank > 0 ? 0.0 : loss_acc[0], loss_acc[1], loss_acc[2]};
            double mn[T_N], mean[T_N], mx[T_N];
            st = nnp_comm_allreduce_sum_f64(comm, m, 3);
            if (st == NNP_OK)
                st = reduce_timers(comm, timers, mn, mean, mx);
            if (st != NNP_OK)
                goto done;
            double now = nnp_comm_wtime();
            /* loss_acc[0] holds sum over steps of the per-step mean loss */
            int64_t steps_in = (done_steps - 1) % log_every + 1;
            double tl = m[0] / (double)steps_in, ta = m[2] > 0 ? m[1] / m[2] : 0;
            double sps = (double)samples_since_log / (now - t_log);
            double fe = (double)done_steps / (double)spe;
            res->last_train_loss = tl;
            if (rank == 0) {
                if (out.train_csv) {
                    fprintf(out.train_csv, "%lld,%.6f,%.9g,%.6f,%.9g,%.1f,%.3f",
                            (long long)done_steps, fe, tl, ta, lr, sps,
                            wall_before + now - t_start);
                    if (noise) {
                        double g2, trs, bs;
                        nnp_noise_read(&noise_ema, &g2, &trs, &bs);
                        fprintf(out.train_csv, ",%.6g,%.6g,%.6g", g2, trs, bs);
                    }
                    fputc('\n', out.train_csv);
                }
                if (out.timing_csv) {
                    for (int i = 0; i < T_N; i++)
                        fprintf(out.timing_csv, "%lld,%s,%.6f,%.6f,%.6f\n", (long long)done_steps,
                                timer_names[i], mn[i], mean[i], mx[i]);
                }
                outputs_flush(&out);
                if (!cfg->quiet) {
                    char eta[32];
                    double elapsed = now - t_start;
                    fmt_duration(elapsed / (double)done_steps * (double)(total - done_steps), eta,
                                 sizeof eta);
                    char nbuf[48] = "";
                    if (noise) {
                        double g2, trs, bs;
                        nnp_noise_read(&noise_ema, &g2, &trs, &bs);
                        snprintf(nbuf, sizeof nbuf, " noise scale %.4g", bs);
                    }
                    char lbuf[32];
                    printf("[train] epoch %.2f step %lld/%lld loss %s acc %.2f%% lr %.3g "
                           "%.0f samples/s%s ETA %s\n",
                           fe, (long long)done_steps, (long long)total,
                           nnp_fmt_loss(lbuf, sizeof lbuf, tl), 100.0 * ta, lr, sps, nbuf, eta);
                    fflush(stdout);
                }
            }
            for (int i = 0; i < T_N; i++) {
                tot_timers[i] += timers[i];
                timers[i] = 0;
            }
            loss_acc[0] = loss_acc[1] = loss_acc[2] = 0;
            samples_since_log = 0;
            t_log = nnp_comm_wtime();
        }

        if (stop < STOP_DIVERGED && (done_steps % eval_every == 0 || is_last)) {
            const double t_ev = nnp_comm_wtime();
            double tl = NAN, ta = NAN, vl = NAN, va = NAN;
            const int with_test = !cfg->val || cfg->test_every <= 0 || is_last ||
                                  done_steps % cfg->test_every == 0;
            if (with_test)
                st = det ? evaluate_det(comm, net, cfg->loss, test, S, dt.eval, dt.rank_n, &tl, &ta)
                         : nnp_evaluate(comm, net, cfg->loss, test, &tl, &ta);
            if (st == NNP_OK && cfg->val)
                st = det ? evaluate_det(comm, net, cfg->loss, cfg->val, S, dt.eval, dt.rank_n, &vl,
                                        &va)
                         : nnp_evaluate(comm, net, cfg->loss, cfg->val, &vl, &va);
            if (st != NNP_OK)
                goto done;
            res->final_test_loss = tl;
            res->final_test_acc = ta;
            res->final_val_loss = vl;
            res->final_val_acc = va;
            double now = nnp_comm_wtime();
            if (rank == 0) {
                if (out.eval_csv) {
                    fprintf(out.eval_csv, "%lld,%.6f,%.9g,%.6f,%.3f", (long long)done_steps,
                            (double)done_steps / (double)spe, tl, ta,
                            wall_before + now - t_start);
                    if (cfg->val)
                        fprintf(out.eval_csv, ",%.9g,%.6f", vl, va);
                    fputc('\n', out.eval_csv);
                }
                outputs_flush(&out);
                if (!cfg->quiet) {
                    char vbuf[80] = "", lbuf[32];
                    if (cfg->val)
                        snprintf(vbuf, sizeof vbuf, " val loss %s val acc %.2f%%",
                                 nnp_fmt_loss(lbuf, sizeof lbuf, vl), 100.0 * va);
                    char tbuf[80] = "";
                    if (with_test)
                        snprintf(tbuf, sizeof tbuf, " test loss %s test acc %.2f%%",
                                 nnp_fmt_loss(lbuf, sizeof lbuf, tl), 100.0 * ta);
                    printf("[eval]  epoch %.2f step %lld%s%s\n",
                           (double)done_steps / (double)spe, (long long)done_steps, tbuf, vbuf);
                    fflush(stdout);
                }
            }
            t_log += nnp_comm_wtime() - now; /* evaluation does not count as training time */
            nnp_trace_add(&tr, NNP_TR_EVAL, NNP_TR_MAIN, done_steps, t_ev, nnp_comm_wtime());
        }
        res->steps = done_steps;

        if (diverged && n_rollbacks < cfg->rollbacks) {
            /* --on-nonfinite rollback: back to the latest checkpoint, the rate halved (also
             * when the preconditioner met the divergence first: prec_st) */
            static nnp_ckpt_meta rm;
            int found = 0;
            const int64_t at = step + 1;
            /* diverging again before getting past the step where it last diverged: the state
             * it restored was on its way already, so one checkpoint further back */
            const int64_t before = restored > 0 && at <= diverged_at ? restored : 0;
            st = rollback(comm, cfg, net, &opt, &pc, &x, &out, at, before,
                          lr_factor * 0.5, n_rollbacks + 1, &rm, &found);
            if (st != NNP_OK)
                goto done;
            if (found) {
                nnp_error_clear(); /* the preconditioner's message, if it came from there */
                lr_factor *= 0.5;
                n_rollbacks++;
                noise_ema.ema_g2 = rm.noise_ema_g2;
                noise_ema.ema_tr = rm.noise_ema_tr;
                noise_ema.n = rm.noise_steps;
                cur_epoch = -1; /* the permutation of the restored step's epoch */
                sums_ready = norms_ready = 0;
                memset(&lw, 0, sizeof lw);
                loss_acc[0] = loss_acc[1] = loss_acc[2] = 0;
                samples_since_log = 0;
                t_log = nnp_comm_wtime();
                res->steps = rm.step;
                restored = rm.step;
                if (at > diverged_at)
                    diverged_at = at;
                if (cfg->stream && balance) /* the current shares, from the restored step */
                    nnp_stream_set_shares(cfg->stream, b.share, rm.step);
                step = rm.step - 1; /* the loop's step++ makes it the restored step */
                continue;
            }
            if (rank == 0)
                fprintf(stderr, "[warn]  --on-nonfinite rollback: no %scheckpoint in %s to go "
                                "back to (--checkpoint-every sets how often one is written, "
                                "--keep how many stay)\n",
                        restored > 0 ? "older " : "", cfg->out_dir);
            if (prec_st != NNP_OK) { /* from the preconditioner: its error stands */
                st = prec_st;
                goto done;
            }
        } else if (diverged && cfg->rollbacks > 0 && rank == 0)
            fprintf(stderr, "[warn]  --on-nonfinite rollback: all %d rollbacks are spent\n",
                    cfg->rollbacks);
        if (stop == STOP_PARAMS) {
            st = nonfinite_params(comm, cfg, net, &opt, done_steps);
            goto done;
        }
        if (diverged) {
            /* no checkpoint of these parameters: the last one written stays the latest */
            st = rank != 0 ? NNP_ERR_REMOTE
                           : nnp_error(NNP_ERR_NUMERIC,
                                       "training diverged at step %lld: the loss is no longer "
                                       "finite (nan or inf); lower --lr, or check the data%s",
                                       (long long)done_steps,
                                       cfg->out_dir && cfg->out_dir[0]
                                           ? "; no checkpoint was written for this step"
                                           : "");
            goto done;
        }
        int want_ckpt = cfg->out_dir && cfg->out_dir[0] &&
                        (is_last || stop > 0 ||
                         (cfg->checkpoint_every > 0 && done_steps % cfg->checkpoint_every == 0));
        if (want_ckpt) {
            double t_ck = nnp_comm_wtime();
            /* sharded/shm: each rank holds the optimizer state of its share only */
            if (opt.buf1)
                st = exchange_gather(&x, opt.buf1);
            if (opt.buf2 && st == NNP_OK)
                st = exchange_gather(&x, opt.buf2);
            if (st != NNP_OK)
                goto done;
            st = checkpoint(comm, cfg, net, &opt, &pc, done_steps, spe, N,
                            wall_before + t_ck - t_start, &noise_ema, lr_factor, n_rollbacks);
            if (st != NNP_OK)
                goto done;
            last_ckpt = done_steps;
            t_log += nnp_comm_wtime() - t_ck; /* nor does checkpointing */
            nnp_trace_add(&tr, NNP_TR_CHECKPOINT, NNP_TR_MAIN, done_steps, t_ck, nnp_comm_wtime());
        }
        if (out_failed) {
            st = rank != 0 ? NNP_ERR_REMOTE
                           : nnp_error(NNP_ERR_IO, "%s; step %lld was checkpointed: resume with "
                                                   "--resume auto once it can be written",
                                       out.err, (long long)done_steps);
            goto done;
        }
        if (stop > 0 && !is_last && !(cfg->out_dir && cfg->out_dir[0])) {
            /* nothing to checkpoint into: not the "resume me" exit code */
            st = rank != 0 ? NNP_ERR_REMOTE
                           : nnp_error(NNP_ERR_IO, "stopped by %s after step %lld; without --out "
                                                   "nothing was saved",
                                       stop == SIGUSR1 ? "SIGUSR1" : "SIGTERM",
                                       (long long)done_steps);
            goto done;
        }
        if (stop > 0 && !is_last) {
            if (rank == 0) /* printed even with --quiet: the exit code needs explaining */
                printf("[stop]  stop request (%s) after step %lld: checkpointed, exit code 75 "
                       "means resume with --resume auto\n",
                       stop == SIGUSR1 ? "SIGUSR1" : stop == SIGTERM ? "SIGTERM" : "stop file",
                       (long long)done_steps);
            st = NNP_ERR_INTERRUPTED;
            goto done;
        }
    }

    res->wall_s = nnp_comm_wtime() - t_start;
    res->samples_per_s = res->wall_s > 0 ? (double)res->steps * (double)G / res->wall_s : 0;
    {
        double mn[T_N], mean[T_N], mx[T_N];
        st = reduce_timers(comm, tot_timers, mn, mean, mx);
        if (st == NNP_OK && rank == 0 && !cfg->quiet) {
            printf("[time]  %-10s %10s %10s %10s %7s\n", "phase", "min_s", "mean_s", "max_s",
                   "share");
            double sum = 0;
            for (int i = 0; i < T_STEP_PHASES; i++)
                sum += mean[i];
            for (int i = 0; i < T_N; i++)
                if (mx[i] >= 0.0005) { /* a phase this run never entered has no row */
                    if (i < T_STEP_PHASES)
                        printf("[time]  %-10s %10.3f %10.3f %10.3f %6.1f%%\n", timer_names[i],
                               mn[i], mean[i], mx[i], sum > 0 ? 100.0 * mean[i] / sum : 0);
                    else
                        printf("[time]  %-10s %10.3f %10.3f %10.3f  (%s)\n", timer_names[i],
                               mn[i], mean[i], mx[i],
                               i == T_DWAIT ? "part of data" : "reader thread, beside the step");
                }
            if (noise) {
                const double *w = tot_timers; /* rank 0's own local work */
                const double work = w[T_DATA] + w[T_FWD] + w[T_BWD] + w[T_PREC] + w[T_OPT];
                printf("[time]  --noise-scale: %.3f s of rank 0's %.3f s of local work (%.2f%%)%s\n",
                       noise_t, work, work > 0 ? 100.0 * noise_t / work : 0,
                       size == 1 ? ", the extra pass over half of each batch included" : "");
            }
            if (cfg->verbose)
                printf("[check] %lu allocations inside %lld training steps on rank 0\n",
                       step_allocs, (long long)(res->steps - first_step));
        }
        if (st == NNP_OK)
            st = report_ranks(comm, cfg, tot_timers, my_samples, b.rank_t);
        if (st == NNP_OK && rank == 0) { /* the rows written after the last stop check */
            outputs_flush(&out);
            if (out.err[0])
                st = nnp_error(NNP_ERR_IO, "%s", out.err);
        }
        st = nnp_comm_agree(comm, st);
    }

done:
    /* the trace, wherever every rank got to the same place: the end, or a stop request */
    if (tr.on && (st == NNP_OK || st == NNP_ERR_INTERRUPTED)) {
        const nnp_status ts = nnp_trace_finish(&tr, comm);
        if (st == NNP_OK)
            st = ts;
    }
    nnp_trace_free(&tr);
    net->bn_sum = NULL;
    net->bn_sum_ctx = NULL;
    net->shard_sums = NULL;
    net->bn_shard_sum = NULL;
    net->bn_shard_ctx = NULL;
    net->sample_ids = NULL;
    exchange_stop(&x);
    close_outputs(&out);
    nnp_optim_free(&opt);
    nnp_precond_free(&pc);
    free(noise_half);
    free(b.perm);
    free(b.idx);
    free(b.y);
    free(b.rank_t);
    free(b.share);
    free(b.speed);
    free(b.norms);
    free(dt.msg);
    free(dt.fold);
    free(dt.part);
    free(dt.lossv);
    free(dt.act);
    free(dt.dact);
    free(dt.eval);
    free(dt.rank_n);
    free(dt.shard_sums);
    free(dt.bn_buf);
    return st;
}
