#!/usr/bin/env bash
# --collective-timeout and files that could block (docs/reliability.md):
#  1. at 2 ranks, rank 1 stopped (SIGSTOP) in the middle of training: rank 0 reports the MPI
#     call, the phase and the step it waits in, names rank 1 as stopped (the node's board of
#     ranks, src/dist/watchdog.c; at 3 ranks a slow rank is named too, behind the others in
#     MPI calls), and exits 75 within the timeout plus a few
#     seconds, and mpiexec ends rank 1 too; with the fused allreduce, the bucketed one (its
#     communication thread is the one waiting) and shm; the run then resumes from its latest
#     checkpoint (--resume auto) and finishes;
#  2. the whole job stopped for longer than the timeout and continued: not a hang (a stopped
#     process does not wait), the run goes on and ends through its stop file;
#  3. --collective-timeout 0 waits as long as it takes; bad values are refused;
#  4. a FIFO as --data (HDF5 or inside an IDX folder), --resume, --config, eval --checkpoint
#     and info: a clear error at once, not a wait for a writer.
# usage: watchdog.sh NNPREC MPIEXEC
set -uo pipefail
nnprec=$1 mpiexec=$2
source "$(dirname "$0")/cli_lib.sh"
trap 'for p in $(pgrep -f -- "--out $tmp/"); do kill -9 "$p" 2>/dev/null; done; rm -rf "$tmp"' EXIT
long=(train --train-limit 2000 --test-limit 100 --steps 100000 --batch 16 --log-every 10
      --eval-every 100000 --checkpoint-every 20)

# rank R's pid of the run writing into $1
rank_pid() {
  local p r
  for p in $(pgrep -f -- "--out $1\$"); do
    r=$(tr '\0' '\n' < "/proc/$p/environ" 2> /dev/null | sed -n 's/^OMPI_COMM_WORLD_RANK=//p')
    [ "$r" = "$2" ] && { echo "$p"; return 0; }
  done
  return 1
}
# start a 2-rank run into $1 (extra options after), wait until it has trained a while
start() {
  local out=$1; shift
  "$mpiexec" -n 2 --oversubscribe "$nnprec" "${long[@]}" "$@" --out "$out" > "$out.out" 2> "$out.err" &
  pid=$!
  for _ in $(seq 1 300); do
    [ -f "$out/latest" ] && break
    sleep 0.1
  done
  [ -f "$out/latest" ] || { fail "the run into $out did not start: $(tail -3 "$out.err")"; return 1; }
}
# wait for the background run (at most $1 s); sets rc and secs
wait_run() {
  local t0 i
  t0=$(date +%s.%N)
  for i in $(seq 1 $(($1 * 10))); do
    kill -0 "$pid" 2> /dev/null || break
    sleep 0.1
  done
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  if kill -0 "$pid" 2> /dev/null; then
    kill -9 "$pid"; wait "$pid"; rc=hang
  else
    wait "$pid"; rc=$?
  fi
}

# 1. a stopped rank, in three --allreduce modes
for mode in fused bucketed shm; do
  out=$tmp/stop_$mode
  start "$out" --allreduce "$mode" --collective-timeout 4 || continue
  p1=$(rank_pid "$out" 1) || { fail "$mode: no rank 1"; continue; }
  kill -STOP "$p1"
  wait_run 30
  echo "$mode: rank 1 stopped; the run ended after $secs s with exit code $rc"
  [ "$rc" = 75 ] && ok || fail "$mode: exit code $rc, want 75: $(tail -3 "$out.err")"
  awk -v s="$secs" 'BEGIN { exit !(s <= 4 + 5) }' && ok || fail "$mode: ended $secs s after the stop (timeout 4)"
  n=$(grep -c '^nnprec: error' "$out.err")
  grep -q "^nnprec: error (rank 0): no progress for [4-6] s in MPI_[A-Za-z]* .*(training, step [0-9]*): another rank has stopped, hangs or died, or is that much slower (--collective-timeout 4); on this node: rank 1 stopped (step [0-9]*, training, \(inside\|outside\) MPI\(, [0-9]* MPI calls\? behind this one\)\?); exiting with code 75 so that the job can be requeued and resumed from its latest checkpoint$" "$out.err" \
    && [ "$n" = 1 ] && ok || fail "$mode: want one line from rank 0, got: $(grep nnprec "$out.err")"
  # mpiexec ends the stopped rank as it leaves (allow it a few seconds to go)
  for _ in $(seq 1 50); do
    [ -e "/proc/$p1" ] && [ "$(awk '{ print $3 }' "/proc/$p1/stat" 2> /dev/null)" != Z ] || break
    sleep 0.1
  done
  [ -e "/proc/$p1" ] && [ "$(awk '{ print $3 }' "/proc/$p1/stat" 2> /dev/null)" != Z ] \
    && { fail "$mode: rank 1 is still there: $(cat "/proc/$p1/stat")"; kill -9 "$p1"; } || ok
  # requeued: the run goes on from its latest checkpoint and finishes
  step=$(sed 's/ckpt-0*\([0-9]*\)\.h5/\1/' "$out/latest")
  "$mpiexec" -n 2 --oversubscribe "$nnprec" "${long[@]}" --allreduce "$mode" --steps $((step + 5)) \
    --resume auto --out "$out" > "$out.r.out" 2>&1 && grep -q "resumed from $out/ckpt-0*$step.h5" "$out.r.out" \
    && ok || fail "$mode: resuming after the timeout: $(tail -3 "$out.r.out")"
done
echo "the line (fused): $(grep '^nnprec' "$tmp/stop_fused.err")"

# 1b. three ranks, rank 2 alive but stuck outside MPI (a data load that takes minutes): the
#     others name it, behind them in MPI calls, and not rank 1, which waits with them
out=$tmp/slow
NNPREC_FAULT_SLOW=2:60000000 "$mpiexec" -n 3 --oversubscribe "$nnprec" "${long[@]}" --batch 8 \
  --steps 30 --collective-timeout 3 --out "$out" > "$out.out" 2> "$out.err" &
pid=$!
wait_run 40
# ranks 0 and 1 both wait for rank 2; whichever fires first is the one that prints before
# mpirun ends the job, and neither may blame the other (it may already have exited)
line=$(grep -m1 '^nnprec: error (rank [01])' "$out.err")
echo "the line (3 ranks, rank 2 slow): $line"
[ "$rc" = 75 ] && ok || fail "slow rank: exit code $rc, want 75: $(tail -3 "$out.err")"
echo "$line" | grep -q "on this node: rank 2 alive (step 1, training, outside MPI, [0-9]* MPI calls\? behind this one); exiting" \
  && ! echo "$line" | grep -q "; rank [01] \|: rank [01] " && ok || fail "slow rank: the line does not name rank 2 alone: $line"

# 2. the whole job stopped for twice the timeout, then continued: it goes on
out=$tmp/pause
if start "$out" --collective-timeout 3 --stop-file "$tmp/pause.stop"; then
  p0=$(rank_pid "$out" 0) p1=$(rank_pid "$out" 1)
  kill -STOP "$p0" "$p1"; sleep 7; kill -CONT "$p0" "$p1"
  sleep 2
  kill -0 "$pid" 2> /dev/null && ok || fail "a job stopped and continued ended: $(tail -3 "$out.err")"
  touch "$tmp/pause.stop"
  wait_run 30
  [ "$rc" = 75 ] && ! grep -q "no progress" "$out.err" && grep -q "stop request (stop file)" "$out.out" \
    && ok || fail "a job stopped and continued: exit code $rc: $(tail -3 "$out.err")"
fi

# 3. no timeout: a stopped rank is waited for (8 s here), then the run goes on
out=$tmp/forever
if start "$out" --collective-timeout 0 --stop-file "$tmp/forever.stop"; then
  p1=$(rank_pid "$out" 1)
  kill -STOP "$p1"; sleep 8
  kill -0 "$pid" 2> /dev/null && ok || fail "--collective-timeout 0 gave up: $(tail -3 "$out.err")"
  kill -CONT "$p1"; touch "$tmp/forever.stop"
  wait_run 30
  [ "$rc" = 75 ] && ok || fail "--collective-timeout 0: exit code $rc: $(tail -3 "$out.err")"
fi
for v in -1 nan 1e10 x; do
  expect 2 "collective-timeout" "$nnprec" train --steps 1 --collective-timeout "$v"
done

# 4. FIFOs where files are read
mkfifo "$tmp/fifo.h5" "$tmp/fifo.cfg"
mkdir "$tmp/idx" && mkfifo "$tmp/idx/train-images-idx3-ubyte" && cp /usr/share/datasets/fashion-mnist/train-labels* "$tmp/idx/"
fifo="it is a FIFO, not a regular file"
expect 1 "cannot open data file $tmp/fifo.h5: $fifo" "$nnprec" train --data "$tmp/fifo.h5" --steps 1
expect 1 "cannot open data file $tmp/fifo.h5: $fifo" "$mpiexec" -n 2 --oversubscribe "$nnprec" train --data "$tmp/fifo.h5" --steps 1
expect 1 "cannot open images file $tmp/idx/train-images-idx3-ubyte: $fifo" "$nnprec" train --data "$tmp/idx" --steps 1
expect 1 "cannot open checkpoint $tmp/fifo.h5: $fifo" "$nnprec" train --resume "$tmp/fifo.h5" --steps 1
expect 1 "cannot open checkpoint $tmp/fifo.h5: $fifo" "$nnprec" eval --checkpoint "$tmp/fifo.h5"
expect 1 "cannot open checkpoint $tmp/fifo.h5: $fifo" "$nnprec" info "$tmp/fifo.h5"
expect 2 "config $tmp/fifo.cfg: not a regular file" "$nnprec" train --config "$tmp/fifo.cfg"
finish watchdog
