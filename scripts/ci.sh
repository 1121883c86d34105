#!/usr/bin/env bash
# The test command: install dependencies, build, run the whole test suite, then build the
# unit tests with AddressSanitizer + UndefinedBehaviorSanitizer and run them clean.
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
