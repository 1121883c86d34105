#!/usr/bin/env bash
# Checkpoint/resume end to end, under mpiexec:
#  1. kill -9 a 2-rank run at three random steps, resuming with --resume auto each
#     time: the final parameters equal those of an uninterrupted run bit for bit, and so do
#     the per-step losses;
#  2. a 2-rank checkpoint resumed on 1 and on 3 ranks follows the same trajectory within
#     the data-parallel tolerance (1e-5 relative);
#  3. SIGUSR1 during a run: checkpoint, exit code 75, and resuming finishes the run; the
#     stop file does the same;
#  4. resuming with a different model or global batch is refused with a clear message;
#  5. a checkpoint that cannot be written (its .tmp path is taken) stops every rank at that
#     step with one message naming the file; the previous checkpoint stays the latest, and
#     resuming from it ends at the reference's parameters (with --allreduce fused and shm);
#  6. lars and lamb resume bit for bit (fused and shm), and another optimizer is refused;
#  7. a model with BatchNorm (synchronized) and dropout, killed and resumed: parameters,
#     running statistics, num_batches_tracked and per-step losses bit for bit (fused, shm);
#  8. the same with residual blocks (bn in a branch and in a projection shortcut, dropout).
# usage: ckpt_resume.sh NNPREC MPIEXEC
set -uo pipefail
nnprec=$1 mpiexec=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'pkill -9 -f -- "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
fails=0 passes=0
ok()   { passes=$((passes + 1)); }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
# 600 steps of LeNet on 1000 samples, global batch 16; a checkpoint every 20 steps
args=(train --train-limit 1000 --test-limit 200 --steps 600 --global-batch 16 --log-every 1
      --eval-every 200 --checkpoint-every 20 --keep 2 --seed 3 --lr 0.003 --quiet)
run() { local np=$1 out=$2; shift 2; timeout 120 "$mpiexec" -n "$np" --oversubscribe "$nnprec" "${args[@]}" --out "$out" "$@"; }
same_params() { # same_params A.h5 B.h5: every parameter dataset identical
  for g in conv1 conv2 fc1 fc2 fc3; do
    for d in weight bias; do
      h5diff -q "$1" "$2" "/$g/$d" "/$g/$d" > /dev/null || return 1
    done
  done
}
# last_step DIR: the last step logged in DIR/train.csv (rows are flushed every step)
last_step() { tail -n 1 "$1/train.csv" 2>/dev/null | cut -d, -f1 | grep -E '^[0-9]+$' || echo 0; }
# wait_step DIR PID N: wait until the run PID in DIR has logged step N (or has ended)
wait_step() { while kill -0 "$2" 2> /dev/null && [ "$(last_step "$1")" -lt "$3" ]; do sleep 0.01; done; }
final() { echo "$1/ckpt-00000600.h5"; }

run 2 "$tmp/ref" > "$tmp/ref.log" 2>&1 || { cat "$tmp/ref.log"; exit 1; }
[ -f "$(final "$tmp/ref")" ] && ok || fail "uninterrupted run wrote no final checkpoint"
n=$(ls "$tmp/ref"/ckpt-*.h5 | wc -l)
[ "$n" = 2 ] && ok || fail "--keep 2 left $n checkpoints"

# 1. kill -9 at three random steps, resume each time. The targets lie in disjoint windows
# 200 steps apart, so each lies beyond what the previous (killed) run had logged.
mkdir -p "$tmp/killed"
targets="$((30 + RANDOM % 150)) $((230 + RANDOM % 150)) $((430 + RANDOM % 150))"
echo "kill targets: $targets"
kills=0 attempt=0
for target in $targets end; do
  attempt=$((attempt + 1))
  resume=(); [ $attempt -gt 1 ] && resume=(--resume auto)
  run 2 "$tmp/killed" "${resume[@]}" > "$tmp/k$attempt.log" 2>&1 &
  pid=$!
  if [ "$target" != end ]; then
    wait_step "$tmp/killed" $pid "$target"
    pkill -9 -f -- "^$nnprec train .*--out $tmp/killed" && kills=$((kills + 1))
  fi
  wait $pid 2>/dev/null
done
[ "$kills" = 3 ] && ok || fail "only $kills of 3 kills hit a running job"
echo "killed $kills times; last checkpoint: $(cat "$tmp/killed/latest" 2>/dev/null)"
if [ -f "$(final "$tmp/killed")" ] && same_params "$(final "$tmp/ref")" "$(final "$tmp/killed")"; then
  ok
else
  fail "killed-and-resumed run does not end with the reference parameters"
fi
cmp -s <(cut -d, -f1,3 "$tmp/ref/train.csv") <(cut -d, -f1,3 "$tmp/killed/train.csv") && ok \
  || fail "per-step losses of the resumed run differ from the reference"
# wall_s counts from the run's first start, across the resumes (time-to-accuracy needs it)
back=$(awk -F, 'NR > 2 && $7 < prev { print "step " $1 ": " prev " -> " $7; exit } { prev = $7 }' \
  "$tmp/killed/train.csv")
[ -z "$back" ] && ok || fail "wall_s of the resumed run goes back at $back"

# 2. a 2-rank checkpoint (step 300) resumed on 1 and 3 ranks
for np in 1 3; do
  mkdir -p "$tmp/np$np"
  cp "$tmp/ref/train.csv" "$tmp/np$np/"
  run 2 "$tmp/half" --steps 300 > /dev/null 2>&1
  run "$np" "$tmp/np$np" --resume "$tmp/half/ckpt-00000300.h5" > "$tmp/np$np.log" 2>&1 \
    || { fail "resume on $np ranks: $(tail -2 "$tmp/np$np.log")"; continue; }
  worst=$(paste -d, "$tmp/ref/train.csv" "$tmp/np$np/train.csv" | awk -F, 'NR > 301 {
      d = $3 - $10; if (d < 0) d = -d; r = d / $3; if (r > w) w = r } END { printf "%.3e", w }')
  echo "2-rank checkpoint resumed on $np rank(s): max relative loss difference $worst"
  awk -v r="$worst" 'BEGIN { exit !(r <= 1e-5) }' && ok || fail "resume on $np ranks diverged ($worst)"
done

# 3. SIGUSR1 and the stop file
run 2 "$tmp/sig" > "$tmp/sig.log" 2>&1 &
pid=$!
wait_step "$tmp/sig" $pid 100
# to the ranks themselves (as SLURM's --signal does), not to timeout/mpiexec
pkill -USR1 -f -- "^$nnprec train .*--out $tmp/sig"
wait $pid
rc=$?
[ "$rc" = 75 ] && ok || fail "SIGUSR1: exit code $rc, want 75 ($(tail -2 "$tmp/sig.log"))"
grep -q "stop request (SIGUSR1)" "$tmp/sig.log" && ok || fail "SIGUSR1: no stop message"
run 2 "$tmp/sig" --resume auto > "$tmp/sig2.log" 2>&1 && ok || fail "resume after SIGUSR1 failed"
same_params "$(final "$tmp/ref")" "$(final "$tmp/sig")" && ok || fail "SIGUSR1 + resume does not reproduce the reference"
run 2 "$tmp/stopf" --stop-file "$tmp/stop" > "$tmp/stop.log" 2>&1 &
pid=$!
wait_step "$tmp/stopf" $pid 100
touch "$tmp/stop"
wait $pid
rc=$?
stopped=$(cat "$tmp/stopf/latest" 2> /dev/null)
[ "$rc" = 75 ] && [ -n "$stopped" ] && [ "$stopped" != "$(basename "$(final "$tmp/stopf")")" ] && ok ||
  fail "stop file: exit $rc, files: $(ls "$tmp/stopf")"

# 4. refused resumes
out=$(run 1 "$tmp/np1" --resume "$(final "$tmp/ref")" --global-batch 32 2>&1)
[ $? = 2 ] && grep -q "global batch 16" <<< "$out" && ok || fail "different global batch: $out"
out=$(run 1 "$tmp/np1" --resume "$(final "$tmp/ref")" --model mlp:784-10 2>&1)
[ $? = 2 ] && grep -q "holds model 'lenet'" <<< "$out" && ok || fail "different model: $out"
head -c 3000 "$(final "$tmp/ref")" > "$tmp/trunc.h5"
out=$(run 1 "$tmp/np1" --resume "$tmp/trunc.h5" 2>&1)
[ $? = 1 ] && grep -q "trunc.h5" <<< "$out" && ok || fail "truncated checkpoint: $out"

# 5. a failed checkpoint write loses nothing
for mode in fused shm; do
  d=$tmp/full-$mode
  mkdir -p "$d/ckpt-00000100.h5.tmp" # the write at step 100 cannot create its file
  run 2 "$d" --allreduce $mode > "$d.log" 2>&1
  rc=$?
  [ "$rc" = 1 ] && ok || fail "$mode: failed checkpoint: exit $rc, want 1 ($(tail -2 "$d.log"))"
  [ "$(grep -c '^nnprec: error' "$d.log")" = 1 ] && grep -q '^nnprec: error.*ckpt-00000100.h5' "$d.log" &&
    ok || fail "$mode: failed checkpoint: want one error naming the file: $(grep error "$d.log")"
  [ "$(cat "$d/latest")" = ckpt-00000080.h5 ] && ok || fail "$mode: latest is '$(cat "$d/latest")' after the failed write"
  [ "$(last_step "$d")" = 100 ] && ok || fail "$mode: the run went on past the failed checkpoint: $(last_step "$d")"
  rmdir "$d/ckpt-00000100.h5.tmp"
  run 2 "$d" --allreduce $mode --resume auto > "$d.2.log" 2>&1 && ok || fail "$mode: resume after the failed checkpoint: $(tail -2 "$d.2.log")"
  same_params "$(final "$tmp/ref")" "$(final "$d")" && ok || fail "$mode: resume after the failed checkpoint does not reproduce the reference"
done

# 6. lars and lamb: stopped at step 60 and resumed, a run ends at the uninterrupted run's
# parameters and optimizer state bit for bit (momentum buffer, Adam's moments, step count;
# with shm each rank's share of them is gathered into the checkpoint), and a checkpoint of
# one optimizer is refused by another
for opt in "lars --lr 0.15 --weight-decay 1e-4" "lamb --lr 0.002 --weight-decay 1e-2"; do
  name=${opt%% *}
  for mode in fused shm; do
    d=$tmp/$name-$mode
    run 2 "$d-ref" --optim $opt --allreduce $mode --steps 120 > "$d-ref.log" 2>&1 &&
      run 2 "$d" --optim $opt --allreduce $mode --steps 60 > "$d.log" 2>&1 &&
      run 2 "$d" --optim $opt --allreduce $mode --steps 120 --resume auto >> "$d.log" 2>&1 ||
      { fail "$name $mode: $(tail -2 "$d-ref.log" "$d.log")"; continue; }
    same=1
    same_params "$d-ref/ckpt-00000120.h5" "$d/ckpt-00000120.h5" || same=0
    for b in momentum_buffer exp_avg exp_avg_sq; do
      h5ls "$d-ref/ckpt-00000120.h5/optimizer/$b" > /dev/null 2>&1 || continue
      h5diff -q "$d-ref/ckpt-00000120.h5" "$d/ckpt-00000120.h5" "/optimizer/$b" "/optimizer/$b" \
        > /dev/null || same=0
    done
    [ "$same" = 1 ] && ok || fail "$name $mode: the resumed run does not end at the reference's state"
  done
done
out=$(run 1 "$tmp/np1" --resume "$tmp/lars-fused/ckpt-00000120.h5" --steps 130 2>&1)
[ $? != 0 ] && grep -q "optimizer 'lars' in the checkpoint, the run uses 'sgd'" <<< "$out" && ok ||
  fail "a lars checkpoint resumed with sgd: $out"

# 7. BatchNorm and dropout: killed (kill -9) at a random step, resumed from the last
# checkpoint; the BatchNorm buffers come back from it and the dropout masks depend only on
# (seed, step, sample), so the end is the uninterrupted run's
bnm=seq:1x28x28/conv:4:3:1:1/bn/relu/maxpool:2/flatten/dense:32/bn/relu/dropout:0.2/dense:10
for mode in fused shm; do
  d=$tmp/bn-$mode
  run 2 "$d-ref" --model $bnm --allreduce $mode --steps 400 > "$d-ref.log" 2>&1 ||
    { fail "bn $mode: $(tail -2 "$d-ref.log")"; continue; }
  run 2 "$d" --model $bnm --allreduce $mode --steps 400 > "$d.log" 2>&1 &
  pid=$!
  wait_step "$d" $pid $((30 + RANDOM % 150))
  killed=0
  pkill -9 -f -- "^$nnprec train .*--out $d( |$)" && killed=1
  wait $pid 2>/dev/null
  [ "$killed" = 1 ] && [ ! -f "$d/ckpt-00000400.h5" ] ||
    { fail "bn $mode: the kill did not hit a running job"; continue; }
  echo "bn $mode: killed after step $(last_step "$d"), resuming from $(cat "$d/latest" 2>/dev/null)"
  run 2 "$d" --model $bnm --allreduce $mode --steps 400 --resume auto >> "$d.log" 2>&1 ||
    { fail "bn $mode: resume: $(tail -2 "$d.log")"; continue; }
  same=1
  for g in conv1 bn1 fc1 bn2 fc2; do
    for ds in weight bias running_mean running_var num_batches_tracked; do
      h5ls "$d-ref/ckpt-00000400.h5/$g/$ds" > /dev/null 2>&1 || continue
      h5diff -q "$d-ref/ckpt-00000400.h5" "$d/ckpt-00000400.h5" "/$g/$ds" "/$g/$ds" > /dev/null ||
        { same=0; echo "bn $mode: /$g/$ds differs"; }
    done
  done
  h5ls "$d/ckpt-00000400.h5/bn2/num_batches_tracked" > /dev/null 2>&1 || same=0
  cmp -s <(cut -d, -f1,3 "$d-ref/train.csv") <(cut -d, -f1,3 "$d/train.csv") || same=0
  [ "$same" = 1 ] && ok || fail "bn $mode: the killed and resumed run does not end at the reference's state"
done

# 8. residual blocks (bn in the branch and the projection, dropout in the branch): killed at
# a random step and resumed, the end is the uninterrupted run's (every dataset of every
# layers.* group)
resm='seq:1x28x28/conv:4:3:2:1/bn/relu/res[conv:4:3:1:1/bn/relu/conv:4:3:1:1/bn]/relu/res[conv:8:3:2:1/bn/dropout:0.2]/relu/gap/dense:10'
d=$tmp/res
if run 2 "$d-ref" --model "$resm" --steps 400 > "$d-ref.log" 2>&1; then
  run 2 "$d" --model "$resm" --steps 400 > "$d.log" 2>&1 &
  pid=$!
  wait_step "$d" $pid $((30 + RANDOM % 120))
  killed=0
  pkill -9 -f -- "^$nnprec train .*--out $d( |$)" && killed=1
  wait $pid 2>/dev/null
  echo "res: killed after step $(last_step "$d"), resuming from $(cat "$d/latest" 2>/dev/null)"
  if [ "$killed" = 0 ] || [ -f "$d/ckpt-00000400.h5" ]; then
    fail "res: the kill did not hit a running job"
  elif run 2 "$d" --model "$resm" --steps 400 --resume auto >> "$d.log" 2>&1; then
    same=1 n=0
    for g in $(h5ls "$d-ref/ckpt-00000400.h5" | awk '$1 ~ /^layers/ { print $1 }'); do
      for ds in weight bias running_mean running_var num_batches_tracked; do
        h5ls "$d-ref/ckpt-00000400.h5/$g/$ds" > /dev/null 2>&1 || continue
        n=$((n + 1))
        h5diff -q "$d-ref/ckpt-00000400.h5" "$d/ckpt-00000400.h5" "/$g/$ds" "/$g/$ds" > /dev/null ||
          { same=0; echo "res: /$g/$ds differs"; }
      done
    done
    cmp -s <(cut -d, -f1,3 "$d-ref/train.csv") <(cut -d, -f1,3 "$d/train.csv") || same=0
    [ "$same" = 1 ] && [ "$n" = 37 ] && ok || fail "res: the resumed run does not end at the reference's state ($n datasets)"
  else
    fail "res: resume: $(tail -2 "$d.log")"
  fi
else
  fail "res: $(tail -2 "$d-ref.log")"
fi

echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
