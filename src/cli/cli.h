/* cli.h - internal interface between main.c and the subcommands. */
#ifndef NNPREC_CLI_H
#define NNPREC_CLI_H
#include <stddef.h>
#include <stdint.h>
#include "nnprec/comm.h"
#include "nnprec/data.h"
#include "nnprec/status.h"

/* Exit codes of the nnprec executable (documented in README.md). */
enum {
    NNP_EXIT_OK = 0,
    NNP_EXIT_ERROR = 1,      /* runtime failure (file, numerics, MPI) */
    NNP_EXIT_USAGE = 2,      /* bad command line */
    NNP_EXIT_REQUEUE = 75,   /* stopped by a signal after writing a checkpoint: resume me */
};

/* Rows of a command's option table (options.h), for a command that keeps its parsed
 * values in a file-scope struct named O: OPT_S string, OPT_D double, OPT_I int, OPT_L
 * int64, OPT_F flag. */
#define OPT_S(name, field, def, help) {name, NNP_OPTT_STR, O.field, def, help, 0}
#define OPT_D(name, field, def, help) {name, NNP_OPTT_DOUBLE, &O.field, def, help, 0}
#define OPT_I(name, field, def, help) {name, NNP_OPTT_INT, &O.field, def, help, 0}
#define OPT_L(name, field, def, help) {name, NNP_OPTT_I64, &O.field, def, help, 0}
#define OPT_F(name, field, def, help) {name, NNP_OPTT_FLAG, &O.field, def, help, 0}

/* Each subcommand parses argv (its options only) and returns a status; main maps it to
 * an exit code after all ranks agreed. */
nnp_status nnp_cmd_train(nnp_comm *comm, int argc, char **argv);
nnp_status nnp_cmd_bench(nnp_comm *comm, int argc, char **argv);
nnp_status nnp_cmd_stats(nnp_comm *comm, int argc, char **argv);
nnp_status nnp_cmd_eval(nnp_comm *comm, int argc, char **argv);
nnp_status nnp_cmd_info(nnp_comm *comm, int argc, char **argv);

/* This rank's shard (nnp_split_units of the count: whole units of `unit` samples, 0 for an
 * even split) of the first `limit` (0 = all) test samples of `data`, an IDX folder or an HDF5
 * file (FILE.h5); *count (may be NULL) receives the count over all ranks. mean/std are left
 * for the caller to set. Defined in cmd_train.c. */
nnp_status nnp_cli_load_test(nnp_comm *comm, const char *data, int64_t limit, size_t unit,
                             nnp_dataset *test, size_t *count);

/* --data names an HDF5 dataset file rather than an IDX folder: it ends in .h5 or is a
 * regular file. Defined in cmd_train.c. */
int nnp_cli_data_is_h5(const char *data);

/* Print the error of this rank if it is the reporting one (see nnp_comm_agree). */
void nnp_cli_report(nnp_comm *comm, nnp_status s);

#endif
