/* cmd_eval.c - `nnprec eval --checkpoint FILE`: a checkpoint's loss and accuracy on the test
 * set.
 *
 * Every rank reads the checkpoint's metadata (model spec, activation and loss from its
 * options, input normalization), builds the network, reads the parameters and loads its
 * shard of the test set, split as in training; nnp_evaluate reduces loss and accuracy over
 * the ranks, so the result does not depend on the rank count. Every error is agreed on
 * (nnp_comm_agree): one message, every rank stops.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "cli.h"
#include "nnprec/ckpt.h"
#include "nnprec/data.h"
#include "nnprec/net.h"
#include "nnprec/options.h"
#include "nnprec/trainer.h"

/* OpenBLAS's runtime thread control (declared by its cblas.h, which only linalg code uses). */
void openblas_set_num_threads(int n);

#define DEFAULT_DATA "/usr/share/datasets/fashion-mnist"

static struct {
    char checkpoint[NNP_OPT_STRLEN], data[NNP_OPT_STRLEN];
    int64_t test_limit;
    int batch;
} O;

static nnp_option opts[] = {
    {"checkpoint", NNP_OPTT_STR, O.checkpoint, "", "checkpoint file to evaluate, or a run folder (its latest checkpoint)", 0},
    {"data", NNP_OPTT_STR, O.data, "",
     "IDX folder or HDF5 file FILE.h5 with the test set (default: the checkpoint's --data)", 0},
    {"test-limit", NNP_OPTT_I64, &O.test_limit, "0", "use only the first N test samples (0: all)",
     0},
    {"batch", NNP_OPTT_INT, &O.batch, "256", "samples per forward pass on each rank", 0},
};
#define N_OPTS ((int)(sizeof opts / sizeof opts[0]))

static const char *USAGE =
    "usage: mpirun -np P nnprec eval --checkpoint FILE|RUNDIR [--data DIR|FILE.h5]\n"
    "                                [--test-limit N] [--batch B]\n\n"
    "Loss and accuracy of a checkpoint on the test set, normalized with the checkpoint's\n"
    "mean and std; the test set is split over the ranks.";

/* Activation and loss the checkpointed run used (its --act and --loss). */
static nnp_status model_options(const nnp_ckpt_meta *meta, nnp_act *act, nnp_loss_kind *loss)
{
    char buf[NNP_OPT_STRLEN];
    if (!nnp_ckpt_option(meta, "act", buf, sizeof buf))
        snprintf(buf, sizeof buf, "relu");
    if (nnp_act_parse(buf, act) != NNP_OK) {
        nnp_error_clear();
        return nnp_error(NNP_ERR_FORMAT, "checkpoint %s: option act='%s' is not an activation",
                         O.checkpoint, buf);
    }
    if (!nnp_ckpt_option(meta, "loss", buf, sizeof buf) || strcmp(buf, "ce") == 0)
        *loss = NNP_LOSS_CE;
    else if (strcmp(buf, "mse") == 0)
        *loss = NNP_LOSS_MSE;
    else
        return nnp_error(NNP_ERR_FORMAT, "checkpoint %s: option loss='%s' is not ce or mse",
                         O.checkpoint, buf);
    return NNP_OK;
}

nnp_status nnp_cmd_eval(nnp_comm *comm, int argc, char **argv)
{
    int help = 0, rank = nnp_comm_rank(comm), size = nnp_comm_size(comm);
    nnp_status s = nnp_options_parse(opts, N_OPTS, argc, argv, &help);
    if (help) {
        if (rank == 0)
            nnp_options_help(stdout, USAGE, opts, N_OPTS);
        return NNP_OK;
    }
    if (s == NNP_OK && !O.checkpoint[0])
        s = nnp_error(NNP_ERR_ARG, "eval needs --checkpoint FILE");
    if (s == NNP_OK && O.batch < 1)
        s = nnp_error(NNP_ERR_ARG, "--batch must be >= 1, got %d", O.batch);
    if (s == NNP_OK && O.test_limit < 0)
        s = nnp_error(NNP_ERR_ARG, "--test-limit must be >= 0");
    /* identical on every rank: only rank 0 reports */
    if (s != NNP_OK)
        return rank == 0 ? s : nnp_remote(s);
    if (!getenv("OPENBLAS_NUM_THREADS") && nnp_comm_local_size(comm) > 1)
        openblas_set_num_threads(1);

    /* a run folder stands for its latest checkpoint */
    struct stat st;
    if (stat(O.checkpoint, &st) == 0 && S_ISDIR(st.st_mode)) {
        char dir[NNP_OPT_STRLEN];
        int found = 0;
        snprintf(dir, sizeof dir, "%s", O.checkpoint);
        s = nnp_ckpt_latest(dir, O.checkpoint, sizeof O.checkpoint, &found);
        if (s == NNP_OK && !found)
            s = nnp_error(NNP_ERR_IO, "no checkpoint in %s", dir);
        s = nnp_comm_agree(comm, s);
        if (s != NNP_OK)
            return s;
    }
    static nnp_ckpt_meta meta; /* 8 KB of options: not on the stack */
    s = nnp_comm_agree(comm, nnp_ckpt_read_meta(O.checkpoint, &meta));
    if (s != NNP_OK)
        return s;
    nnp_act act = NNP_ACT_RELU;
    nnp_loss_kind loss = NNP_LOSS_CE;
    static char data[NNP_OPT_STRLEN];
    if (O.data[0])
        snprintf(data, sizeof data, "%s", O.data);
    else if (!nnp_ckpt_option(&meta, "data", data, sizeof data) || !data[0])
        snprintf(data, sizeof data, "%s", DEFAULT_DATA);

    nnp_dataset test = {0};
    nnp_net *net = NULL;
    size_t count = 0;
    s = model_options(&meta, &act, &loss);
    if (s == NNP_OK)
        s = nnp_cli_load_test(comm, data, O.test_limit, 0, &test, &count);
    test.mean = meta.norm_mean;
    test.std = meta.norm_std;
    if (s == NNP_OK && !(meta.norm_std > 0))
        s = nnp_error(NNP_ERR_FORMAT, "checkpoint %s: norm_std %g is not positive", O.checkpoint,
                      meta.norm_std);
    if (s == NNP_OK)
        s = nnp_net_create(meta.model, (nnp_shape){test.c, test.h, test.w}, act, O.batch, &net);
    if (s == NNP_OK && nnp_shape_size(net->input) != (size_t)test.c * test.h * test.w)
        s = nnp_error(NNP_ERR_ARG, "model %s expects %zu input values per sample, data %s has "
                                   "%dx%dx%d",
                      meta.model, nnp_shape_size(net->input), data, test.c, test.h, test.w);
    if (s == NNP_OK && net->n_classes < test.n_classes)
        s = nnp_error(NNP_ERR_ARG, "model %s has %d outputs but the data %s has %d classes",
                      meta.model, net->n_classes, data, test.n_classes);
    if (s == NNP_OK)
        s = nnp_ckpt_read(O.checkpoint, net, NULL, NULL, NULL);
    s = nnp_comm_agree(comm, s);
    double tl = 0, ta = 0;
    if (s == NNP_OK)
        s = nnp_evaluate(comm, net, loss, &test, &tl, &ta);
    if (s == NNP_OK && rank == 0) {
        printf("checkpoint %s: model %s, step %lld (epoch %d), written by %d rank%s\n",
               O.checkpoint, meta.model, (long long)meta.step, meta.epoch, meta.world_size,
               meta.world_size == 1 ? "" : "s");
        printf("test set %s: %zu samples on %d rank%s, normalized with mean %.6f std %.6f\n",
               data, count, size, size == 1 ? "" : "s", meta.norm_mean, meta.norm_std);
        printf("test loss %.6f accuracy %.2f%% (%.0f of %zu)\n", tl, 100.0 * ta,
               ta * (double)count, count);
        if (!meta.checksums)
            printf("[note]  %s has no checksums (written before nnprec stored them): its data "
                   "was not verified\n", O.checkpoint);
        fflush(stdout);
    }
    nnp_net_free(net);
    nnp_dataset_free(&test);
    return s;
}
