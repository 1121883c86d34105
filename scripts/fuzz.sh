#!/usr/bin/env bash
# Build and run the libFuzzer harnesses of tests/fuzz/ (docs/reliability.md, "Fuzzing"):
#   idx      the IDX reader (src/data/idx.c): an images and a labels file, gzip'd or not
#   h5data   the HDF5 dataset reader (src/data/h5data.c) and the streaming reader (h5stream.c)
#   spec     the model-spec parser and network builder (src/nn/net.c), forward and backward
#   options  the option parser (src/core/options.c): command lines and --config files
#   ckpt     the checkpoint reader (src/io/ckpt_read.c): metadata, the validating read, info,
#            --verify
# Each harness is built with clang's -fsanitize=fuzzer,address,undefined from the sources
# that need no MPI, and runs for --time seconds (or --runs inputs) on a work corpus seeded
# from tests/fuzz/corpus/NAME. Inputs in tests/fuzz/regress/NAME (crashes found before,
# now fixed) are run first. A crash, a sanitizer report or a leak stops the run; the input
# is saved in the build folder and the script exits 1. With --merge the new inputs that add
# coverage are merged into tests/fuzz/corpus/NAME (minimized), to be committed.
#
# usage: scripts/fuzz.sh [--build-dir DIR] [--time SECONDS] [--runs N] [--seed N] [--fresh]
#                        [--jobs N] [--timeout SECONDS] [--build-only] [--merge] [NAME...]
#                        (default: all harnesses, 60 s each, one process, 20 s per input)
# --jobs N runs N fuzzing processes on the same work corpus (each picks up what the others
# add); --runs is then the total, split evenly, and --seed N gives process i seed N+i.
# --timeout is the time one input may take before it counts as a hang; raise it when the
# processes may be stopped for a while (a stopped process's clock keeps running).
# --fresh empties the work corpus first: a run from the seeds alone. --runs N --seed N
# --fresh is reproducible: the same inputs every time (what CTest runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bdir=build-fuzz time=60 runs=0 seed= build_only=0 merge=0 fresh=0 jobs=1 timeout=20 names=()
while [ $# -gt 0 ]; do
  case $1 in
    --build-dir) bdir=$2; shift 2 ;;
    --time) time=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --build-only) build_only=1; shift ;;
    --merge) merge=1; shift ;;
    --fresh) fresh=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) names+=("$1"); shift ;;
  esac
done
for v in "$time" "$runs" "$jobs" "$timeout" ${seed:+"$seed"}; do
  [[ "$v" =~ ^[0-9]+$ ]] || { echo "fuzz.sh: '$v' is not a whole number" >&2; exit 2; }
done
[ "$jobs" -ge 1 ] || { echo "fuzz.sh: --jobs must be at least 1" >&2; exit 2; }
all=(idx h5data spec options ckpt)
[ ${#names[@]} -gt 0 ] || names=("${all[@]}")
for n in "${names[@]}"; do
  [[ " ${all[*]} " == *" $n "* ]] || { echo "fuzz.sh: no harness '$n' (have: ${all[*]})" >&2; exit 2; }
done
cc=${CLANG:-$(command -v clang || true)}
[ -n "$cc" ] || { echo "fuzz.sh: clang not found (scripts/install-deps.sh installs it)" >&2; exit 1; }

# ---- build: the library sources once (coverage-instrumented), then each harness ----------
hdf5_inc=$(pkg-config --cflags-only-I hdf5-serial 2> /dev/null || echo -I/usr/include/hdf5/serial)
hdf5_lib=$(pkg-config --libs hdf5-serial 2> /dev/null || echo -lhdf5)
blas_inc=""
for d in /usr/include/x86_64-linux-gnu/openblas-pthread /usr/include/openblas /usr/include/aarch64-linux-gnu/openblas-pthread; do
  [ -f "$d/cblas.h" ] && { blas_inc=-I$d; break; }
done
san=(-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
cflags=(-std=c11 -D_POSIX_C_SOURCE=200809L -g -O1 "${san[@]}" -Iinclude $hdf5_inc $blas_inc)
srcs=(src/core/*.c src/nn/*.c src/train/optim.c src/train/sched.c src/train/noise.c
      src/train/precond.c src/data/idx.c src/data/dataset.c src/data/sampler.c
      src/data/h5data.c src/data/h5stream.c src/io/*.c)
mkdir -p "$bdir/obj"
objs=()
for s in "${srcs[@]}"; do
  o=$bdir/obj/$(echo "$s" | tr / _).o
  if [ ! -f "$o" ] || [ "$s" -nt "$o" ] || [ "$0" -nt "$o" ] || \
     [ -n "$(find include src -name '*.h' -newer "$o" -print -quit)" ]; then
    "$cc" "${cflags[@]}" -fsanitize=fuzzer-no-link -c "$s" -o "$o"
  fi
  objs+=("$o")
done
for n in "${names[@]}"; do
  h=tests/fuzz/fuzz_$n.c
  if [ ! -x "$bdir/fuzz_$n" ] || [ "$h" -nt "$bdir/fuzz_$n" ] || [ tests/fuzz/fuzz_util.h -nt "$bdir/fuzz_$n" ] || \
     [ -n "$(find "${objs[@]}" -newer "$bdir/fuzz_$n" -print -quit)" ]; then
    "$cc" "${cflags[@]}" -fsanitize=fuzzer -Itests/fuzz "$h" "${objs[@]}" $hdf5_lib \
      -lopenblas -lz -lm -lpthread -o "$bdir/fuzz_$n"
  fi
done
[ "$build_only" = 1 ] && { echo "[fuzz] built: ${names[*]} in $bdir"; exit 0; }

# ---- run -----------------------------------------------------------------------------------
# an allocation too large to map fails (NULL) as it would outside the sanitizer: HDF5 asks
# for hundreds of GB for some damaged files, and reports the failure as an error
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
# HDF5 1.10 loses a little memory of its own on some malformed files (tests/fuzz/lsan.supp)
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/fuzz/lsan.supp:print_suppressions=0}
status=0
for n in "${names[@]}"; do
  bin=$bdir/fuzz_$n work=$bdir/corpus/$n seeds=tests/fuzz/corpus/$n reg=tests/fuzz/regress/$n
  [ "$fresh" = 1 ] && rm -rf "$work"
  mkdir -p "$work" "$bdir/crashes"
  if [ -d "$reg" ] && [ -n "$(ls -A "$reg")" ]; then
    if ! "$bin" "$reg"/* > "$bdir/$n.regress.log" 2>&1; then
      echo "[fuzz] $n: a regression input fails again:"; tail -20 "$bdir/$n.regress.log"; status=1; continue
    fi
  fi
  # one process per job, the HDF5 library's own errors silenced by nnprec; inputs up to 64 kB
  pids=() logs=()
  for ((j = 0; j < jobs; j++)); do
    limit=(-max_total_time="$time")
    [ "$runs" -gt 0 ] && limit=(-runs=$(( runs / jobs + (j < runs % jobs ? 1 : 0) )))
    [ -n "$seed" ] && limit+=(-seed=$(( seed + j )))
    log=$bdir/$n.log
    [ "$jobs" -gt 1 ] && log=$bdir/$n.$j.log
    "$bin" "${limit[@]}" -rss_limit_mb=2048 -max_len=65536 -timeout="$timeout" -print_final_stats=1 \
      -artifact_prefix="$bdir/crashes/$n-" "$work" "$seeds" > "$log" 2>&1 &
    pids+=($!) logs+=("$log")
  done
  failed=() execs=0 secs=0
  for ((j = 0; j < jobs; j++)); do
    if wait "${pids[j]}"; then
      e=$(sed -n 's/^stat::number_of_executed_units: *//p' "${logs[j]}")
      t=$(sed -n 's/.*Done \([0-9]*\) runs in \([0-9]*\) second.*/\2/p' "${logs[j]}")
      execs=$(( execs + ${e:-0} )); [ "${t:-0}" -gt "$secs" ] && secs=${t:-0}
    else
      failed+=("${logs[j]}")
    fi
  done
  if [ ${#failed[@]} -eq 0 ]; then
    echo "[fuzz] $n: $execs executions in $secs s ($jobs process(es)), no crash ($(ls "$work" | wc -l) inputs in the work corpus)"
  else
    for log in "${failed[@]}"; do
      echo "[fuzz] $n: FAILED; the input is in $bdir/crashes/ (the log: $log):"
      grep -m 1 -A 12 "ERROR: \|runtime error\|deadly signal" "$log" || tail -20 "$log"
    done
    status=1
  fi
  if [ "$merge" = 1 ] && [ "$status" = 0 ]; then
    "$bin" -merge=1 -max_len=65536 "$seeds" "$work" > "$bdir/$n.merge.log" 2>&1 &&
      echo "[fuzz] $n: merged into $seeds ($(ls "$seeds" | wc -l) inputs)"
  fi
done
exit $status
