# cli_lib.sh - shared helpers of the whole-program test scripts (sourced, not run).
# Sets up a temporary folder ($tmp, removed on exit), Open MPI's run-as-root variables and
# one BLAS thread, and the pass/fail counters with:
#   ok | fail MSG            count a check
#   expect CODE PATTERN CMD  run CMD: exit code CODE and exactly one "nnprec..." line on
#                            stderr matching PATTERN (mpiexec's own notices are ignored;
#                            EXPECT_PREFIX names another program's prefix than nnprec)
#   finish [NAME]            print "N passed, M failed" and exit non-zero on any failure
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0 passes=0
ok()   { passes=$((passes + 1)); }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

expect() {
  local code=$1 pat=$2; shift 2
  timeout 60 "$@" > "$tmp/out" 2> "$tmp/err"
  local rc=$?
  local n; n=$(grep -c "^${EXPECT_PREFIX:-nnprec}" "$tmp/err")
  if [ "$rc" != "$code" ]; then fail "$* -> exit $rc, want $code; stderr: $(head -3 "$tmp/err")"; return; fi
  if ! grep -q -- "$pat" "$tmp/err"; then fail "$* -> stderr lacks '$pat': $(head -3 "$tmp/err")"; return; fi
  if [ "$n" != 1 ]; then fail "$* -> $n stderr lines from ${EXPECT_PREFIX:-nnprec}, want 1: $(cat "$tmp/err")"; return; fi
  ok
}

finish() {
  echo "${1:+$1: }$passes passed, $fails failed"
  [ "$fails" = 0 ]
  exit $?
}
