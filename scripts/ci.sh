#!/usr/bin/env bash
# The test command: install dependencies, build, run the whole test suite, then build
# everything with AddressSanitizer + UndefinedBehaviorSanitizer and run the unit tests and
# the multi-rank tests clean under them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh --sanitize
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
echo "== test suite (Release)"
ctest --test-dir build --output-on-failure -j 2
echo "== unit tests under AddressSanitizer + UBSan"
# Leak checking stays on: unit tests free everything they allocate.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j 2 -L unit
echo "== multi-rank and command-line tests under AddressSanitizer + UBSan"
# Leak checking is off here: Open MPI does not free all it allocates at exit. The
# out-of-memory tests ask for huge buffers, which ASan must refuse instead of aborting.
# Left out: the --balance tests (their injected slow rank is too small a difference next
# to the sanitizers' own slowdown) and slurm_requeue (timing-driven, 1.5-2.5 minutes here).
# The fuzz harnesses (label fuzz) build their own sanitizer tree and ran in the first pass;
# the report scripts' tests (study, scaling_report, scripts_compare: Python over tiny runs)
# newcomer (the README's path on a fresh Release build of its own), scripts_errors (the
# Python scripts on bad input) and precond_init (400-step training runs whose code the
# dynamic-preconditioner equivalence tests cover here) add nothing under the sanitizers
# that the tests above do not. Nor do the optimizer and
# layer equivalence tests repeated over the shm and bucketed allreduce modes: each
# optimizer and layer runs here once, and each allreduce mode runs here on its own test
# (LAMB's sharded norms, LARS with the preconditioner over shm and the plain residual MLP
# also run their code in ddp_equivalence_lars_sharded and ddp_equivalence_res_mlp_dynamic).
# Also left out: ckpt_resume (the checkpoint code runs here in cli_ckpt, ckpt_integrity,
# rollback and stream's resume), watchdog (sleeps and timeouts around a few hundred lines),
# torch_step and make_h5 (PyTorch and Python around one nnprec step, and none).
# The convolutions take the GEMM path here (NNPREC_CONV_PATH=gemm): the direct and Winograd
# kernels are nnprec's own code and run instrumented, several times slower than OpenBLAS,
# which is not; they run under the sanitizers above, in test_layers and test_gradcheck
# (every geometry, every path).
NNPREC_CONV_PATH=gemm ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j 2 -LE 'unit|fuzz' \
    -E 'balance|slurm_requeue|^study$|scaling_report|scripts_compare|newcomer|scripts_errors|precond_init|ckpt_resume|^watchdog$|torch_step|^make_h5$|ddp_equivalence_(lars|lamb|noise|bn_conv|bn_mlp|res_mlp|resmlp)_(shm|bucketed)$|ddp_equivalence_(lamb_sharded|lars_precond_shm|res_mlp)$'
