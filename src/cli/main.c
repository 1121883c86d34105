/* main.c - `nnprec <command> [options]`: MPI setup, dispatch, exit codes.
 *
 * This is the only place that turns a status into an exit code. Library code returns
 * errors; subcommands make every rank agree on them before returning here.
 */
#include <stdio.h>
#include <string.h>
#include "cli.h"
#include "nnprec/comm.h"
#include "nnprec/trainer.h"

#ifndef NNP_VERSION
#define NNP_VERSION "unknown"
#endif

static void usage(FILE *f)
{
    fprintf(f,
            "nnprec %s - data-parallel neural-network training with a statistical gradient "
            "preconditioner\n\n"
            "usage: mpirun -np P nnprec <command> [options]\n\n"
            "commands:\n"
            "  train     train a model (nnprec train --help lists every option)\n"
            "  bench     time a model's GEMMs (the speed ceiling), its layers (--layers), or one\n"
            "            collective (--allreduce-mb, under mpirun)\n"
            "  stats     per-layer activation and gradient statistics at initialization\n"
            "  eval      evaluate a checkpoint on the test set (nnprec eval --checkpoint FILE)\n"
            "  info      print a checkpoint's summary (nnprec info FILE|RUNDIR)\n\n"
            "  nnprec --version   print the version\n"
            "  nnprec --help      this text\n",
            NNP_VERSION);
}

void nnp_cli_report(nnp_comm *comm, nnp_status s)
{
    if (s == NNP_OK || s == NNP_ERR_REMOTE || s == NNP_ERR_INTERRUPTED)
        return;
    const char *msg = nnp_error_msg();
    if (nnp_comm_size(comm) > 1)
        fprintf(stderr, "nnprec: error (rank %d): %s\n", nnp_comm_rank(comm),
                msg[0] ? msg : nnp_status_str(s));
    else
        fprintf(stderr, "nnprec: error: %s\n", msg[0] ? msg : nnp_status_str(s));
    fflush(stderr);
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return argc < 2 ? NNP_EXIT_USAGE : NNP_EXIT_OK;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("nnprec %s\n", NNP_VERSION);
        return NNP_EXIT_OK;
    }
    nnp_status (*cmd)(nnp_comm *, int, char **) = NULL;
    if (strcmp(argv[1], "train") == 0)
        cmd = nnp_cmd_train;
    else if (strcmp(argv[1], "bench") == 0)
        cmd = nnp_cmd_bench;
    else if (strcmp(argv[1], "stats") == 0)
        cmd = nnp_cmd_stats;
    else if (strcmp(argv[1], "eval") == 0)
        cmd = nnp_cmd_eval;
    else if (strcmp(argv[1], "info") == 0)
        cmd = nnp_cmd_info;
    if (!cmd) {
        fprintf(stderr, "nnprec: error: unknown command '%s' (see nnprec --help)\n", argv[1]);
        return NNP_EXIT_USAGE;
    }
    /* before MPI starts, so a SIGUSR1/SIGTERM that arrives during start-up is not fatal */
    if (cmd == nnp_cmd_train)
        nnp_train_install_signals();
    nnp_comm *comm = NULL;
    nnp_status s = nnp_comm_init(&argc, &argv, 0, &comm);
    if (s != NNP_OK) {
        fprintf(stderr, "nnprec: error: %s\n", nnp_error_msg());
        return NNP_EXIT_ERROR;
    }
    s = cmd(comm, argc - 2, argv + 2);
    nnp_cli_report(comm, s);
    int code = s == NNP_OK                  ? NNP_EXIT_OK
               : s == NNP_ERR_INTERRUPTED   ? NNP_EXIT_REQUEUE
               : s == NNP_ERR_ARG           ? NNP_EXIT_USAGE
                                            : NNP_EXIT_ERROR;
    /* a rank that only saw another rank's failure exits like it */
    if (s == NNP_ERR_REMOTE)
        code = nnp_remote_kind() == NNP_ERR_ARG ? NNP_EXIT_USAGE : NNP_EXIT_ERROR;
    nnp_comm_finalize(comm);
    return code;
}
