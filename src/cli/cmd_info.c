/* cmd_info.c - `nnprec info [--verify] FILE|RUNDIR`: a checkpoint's summary (format, model,
 * step, options, parameter and optimizer datasets), printed by rank 0 with nnp_ckpt_info,
 * and with --verify every dataset checked against its checksum; a run folder stands for its
 * latest checkpoint, as in `nnprec eval`. A missing or invalid file is
 * one error line and exit code 1 on every rank.
 */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include "cli.h"
#include "nnprec/ckpt.h"
#include "nnprec/options.h"

static const char *USAGE =
    "usage: nnprec info [--verify] FILE|RUNDIR\n\n"
    "Print the summary of the checkpoint FILE (or of a run folder's latest checkpoint): format\n"
    "and version, the nnprec version and time that wrote it, model and architecture, step and\n"
    "epoch, seed, normalization, global batch and ranks, every parameter dataset, the optimizer\n"
    "and preconditioner state, the run's options.\n\n"
    "  --verify   also read every dataset and check it against its checksum (xxh64); a\n"
    "             mismatch, or a file without checksums, is an error (exit code 1)\n";

nnp_status nnp_cmd_info(nnp_comm *comm, int argc, char **argv)
{
    int rank = nnp_comm_rank(comm);
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            if (rank == 0)
                fputs(USAGE, stdout);
            return NNP_OK;
        }
    nnp_status s = NNP_OK;
    int verify = argc > 0 && strcmp(argv[0], "--verify") == 0;
    argc -= verify;
    argv += verify;
    if (argc != 1 || argv[0][0] == '-')
        s = nnp_error(NNP_ERR_ARG, "usage: nnprec info [--verify] FILE|RUNDIR (one checkpoint "
                                   "file or run folder)");
    if (s != NNP_OK)
        return rank == 0 ? s : nnp_remote(s);
    if (rank == 0) {
        /* a run folder stands for its latest checkpoint */
        static char path[NNP_OPT_STRLEN];
        struct stat st;
        int found = 1;
        snprintf(path, sizeof path, "%s", argv[0]);
        if (stat(argv[0], &st) == 0 && S_ISDIR(st.st_mode))
            s = nnp_ckpt_latest(argv[0], path, sizeof path, &found);
        if (s == NNP_OK && !found)
            s = nnp_error(NNP_ERR_IO, "no checkpoint in %s", argv[0]);
        if (s == NNP_OK)
            s = nnp_ckpt_info(path, stdout);
        if (s == NNP_OK && verify) {
            int n = 0;
            size_t bytes = 0;
            fflush(stdout);
            s = nnp_ckpt_verify(path, &n, &bytes);
            if (s == NNP_OK)
                printf("verified         %d datasets, %zu bytes: every checksum matches\n", n,
                       bytes);
        }
        fflush(stdout);
    }
    return nnp_comm_agree(comm, s);
}
