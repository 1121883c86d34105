/* cmd_info.c - `nnprec info FILE`: a checkpoint's summary (format, model, step, options,
 * parameter and optimizer datasets), printed by rank 0 with nnp_ckpt_info. A missing or
 * invalid file is one error line and exit code 1 on every rank.
 */
#include <stdio.h>
#include <string.h>
#include "cli.h"
#include "nnprec/ckpt.h"

static const char *USAGE =
    "usage: nnprec info FILE\n\n"
    "Print the summary of the checkpoint FILE: format and version, the nnprec version and time\n"
    "that wrote it, model and architecture, step and epoch, seed, normalization, global batch\n"
    "and ranks, every parameter dataset, the optimizer and preconditioner state.\n";

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
    if (argc != 1 || argv[0][0] == '-')
        s = nnp_error(NNP_ERR_ARG, "usage: nnprec info FILE (one checkpoint file)");
    if (s != NNP_OK)
        return rank == 0 ? s : nnp_remote(s);
    if (rank == 0) {
        s = nnp_ckpt_info(argv[0], stdout);
        fflush(stdout);
    }
    return nnp_comm_agree(comm, s);
}
