/* watchdog.h - --collective-timeout: no rank waits forever for another (docs/reliability.md).
 *
 * Every blocking MPI call of the process (collectives, the ring's MPI_Sendrecv, the
 * communicator and window set-up, MPI_Finalize) goes through a thin wrapper that records
 * which call this rank is in and since when (src/dist/watchdog.c, MPI's profiling interface:
 * the wrapper calls PMPI_*, so no caller changes). A watchdog thread looks at that record a
 * few times per timeout; once one call has been waited in for longer than the timeout it
 * prints one line naming the rank, the call, its size, and the step and phase of the run,
 * and ends the process with the given exit code; the launcher (mpirun, srun) then ends the
 * other ranks. Time the whole process spends stopped (SIGSTOP, a suspended job) does not
 * count as waiting.
 */
#ifndef NNPREC_WATCHDOG_H
#define NNPREC_WATCHDOG_H
#include <stdint.h>
#include "nnprec/status.h"

/* Start the watchdog thread of this process (once; timeout_s <= 0: no thread, nothing is
 * ever reported). rank names this rank in the message; exit_code is what the process exits
 * with. Local, not collective. Errors: NNP_ERR_ARG (a second start), NNP_ERR_NOMEM
 * (no thread). */
nnp_status nnp_watchdog_start(double timeout_s, int rank, int exit_code);

/* What the run is doing, for the message: phase is a string that outlives the run
 * ("setup", "training", ...); step, when not NULL, points at the 0-based index of the
 * training step in progress (the net's step field, written by the training loop), which is
 * reported 1-based as the logs count steps. Local; cheap. */
void nnp_watchdog_phase(const char *phase, const long long *step);

#endif
