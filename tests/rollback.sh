#!/usr/bin/env bash
# --on-nonfinite rollback (docs/reliability.md): a forced divergence (LeNet, SGD lr 60 with
# 40 steps of warm-up: the parameters stop being finite at step 11) sends every rank back
# to a checkpoint with the learning rate halved, and the run finishes:
#   * at 1 rank (fused) and 2 ranks (shm, sharded), 3 (bucketed): exit 0; OUT/rollbacks.csv
#     holds two rollbacks, to step 8 (x0.5) and, diverging again at step 11 before getting
#     past it, one checkpoint further back to step 4 (x0.25); train.csv holds every step
#     once, in order; the final checkpoint records both (nnprec info);
#   * resuming from a checkpoint written after the rollbacks continues the same run: the
#     learning-rate factor travels in the checkpoint (train.csv's rows agree);
#   * the dynamic preconditioner, which meets a divergence first, rolls back too (the rule
#     checked, not one trajectory: after its first rollback the run is chaotic);
#   * out of rollbacks, or without a checkpoint to go back to: one [warn] line, the usual
#     error, exit 1; bad options: exit 2.
# usage: rollback.sh NNPREC MPIEXEC
set -uo pipefail
nnprec=$1 mpiexec=$2
source "$(dirname "$0")/cli_lib.sh"

run=(train --model lenet --lr 60 --warmup 40 --momentum 0.9 --steps 80 --global-batch 64
     --train-limit 4000 --test-limit 500 --checkpoint-every 4 --keep 10 --log-every 1
     --eval-every 80 --quiet)
rb=(--on-nonfinite rollback)
want="step,restored_step,lr_factor,rollback
11,8,0.5,1
11,4,0.25,2"
for m in "1 fused" "2 shm" "2 sharded" "3 bucketed"; do
  set -- $m
  d=$tmp/r$1$2
  "$mpiexec" -n "$1" --oversubscribe "$nnprec" "${run[@]}" "${rb[@]}" --allreduce "$2" --out "$d" \
    > "$d.log" 2>&1 || fail "$m: exit $?: $(tail -3 "$d.log")"
  [ "$(cat "$d/rollbacks.csv" 2>&1)" = "$want" ] && ok || fail "$m: rollbacks.csv: $(cat "$d/rollbacks.csv" 2>&1)"
  [ "$(grep -c '^\[rollback\] step 11 was not finite: back to step [84] ' "$d.log")" = 2 ] && ok ||
    fail "$m: the [rollback] lines: $(grep rollback "$d.log")"
  cut -d, -f1 "$d/train.csv" | tail -n +2 | awk 'NR != $1 { bad = 1 } END { exit bad || NR != 80 }' &&
    ok || fail "$m: train.csv does not hold steps 1..80 once each: $(cut -d, -f1 "$d/train.csv" | tr '\n' ' ')"
done
info=$("$nnprec" info "$tmp/r1fused" 2>&1) # (not piped into grep -q: pipefail is on)
grep -q "^rollbacks        2 (--on-nonfinite rollback): learning rate x0.25 from here on$" <<< "$info" &&
  ok || fail "nnprec info: $("$nnprec" info "$tmp/r1fused" | head -14)"

# resumed after the rollbacks, from step 60: the same rows 61..80 (the factor x0.25 came back)
"$nnprec" "${run[@]}" "${rb[@]}" --out "$tmp/resumed" --resume "$tmp/r1fused/ckpt-00000060.h5" \
  > "$tmp/resumed.log" 2>&1 || fail "resume: $(tail -3 "$tmp/resumed.log")"
cmp -s <(tail -n 20 "$tmp/r1fused/train.csv" | cut -d, -f1-5) <(tail -n 20 "$tmp/resumed/train.csv" | cut -d, -f1-5) &&
  ok || fail "the resumed run differs: $(diff <(tail -n 20 "$tmp/r1fused/train.csv") <(tail -n 20 "$tmp/resumed/train.csv") | head -4)"

# the dynamic preconditioner meets this divergence first (its measured moments): without
# rollback the run stops with its error at some step S; with it, the first rollback is at
# that same step S, back to the latest checkpoint before it (every 5 steps) at x0.5. Where
# the run goes after that is chaotic (on one machine it got past step 8 at x0.5 and spent
# its 3 rollbacks by step 11, on another it failed at step 8 again; the last bits of the
# CPU's float kernels decide), so the rule is checked rather than one trajectory: every
# later rollback halves the factor again and goes back to the latest checkpoint before its
# step, or one checkpoint further back than the last one when it failed again before getting
# past the step that failed last; the run ends with exit 0, or exit 1 with one of the two
# [warn] lines and a divergence error
pre=(train --model lenet --precond dynamic --lr 10 --steps 100 --global-batch 64 --train-limit 4000
     --test-limit 500 --checkpoint-every 5 --keep 10 --log-every 20 --eval-every 100 --quiet)
"$nnprec" "${pre[@]}" --out "$tmp/pre0" > "$tmp/pre0.log" 2>&1
s0=$(sed -n "s/^nnprec: error: training diverged at step \([0-9]*\): the layers' activation or gradient moments the preconditioner measures are no longer finite; lower --lr$/\1/p" "$tmp/pre0.log")
[ -n "$s0" ] && ok || fail "without rollback, no preconditioner divergence: $(tail -2 "$tmp/pre0.log")"
"$nnprec" "${pre[@]}" "${rb[@]}" --out "$tmp/pre" > "$tmp/pre.log" 2>&1
rc=$?
echo "preconditioner: diverges at step ${s0:-?}; rollbacks: $(tail -n +2 "$tmp/pre/rollbacks.csv" | tr '\n' ' ')exit $rc"
awk -F, -v s0="${s0:-0}" 'NR == 1 { next }
  { k = NR - 1; step = $1; back = $2; f = $3
    latest = int((step - 1) / 5) * 5
    want = (k > 1 && step <= last_step) ? last_back - 5 : latest
    if ($4 != k || f != 0.5 ^ k || back != want || (k == 1 && step != s0)) bad = 1
    last_step = step; last_back = back }
  END { exit bad || NR < 2 }' "$tmp/pre/rollbacks.csv" && ok ||
  fail "the preconditioner's rollbacks: $(cat "$tmp/pre/rollbacks.csv" 2>&1 | tr '\n' ' ')"
if [ "$rc" = 0 ]; then ok
else
  [ "$rc" = 1 ] && grep -qE "^\[warn\]  --on-nonfinite rollback: (all 3 rollbacks are spent|no older checkpoint in $tmp/pre to go back to)" "$tmp/pre.log" &&
    grep -qE "^nnprec: error: training diverged at step [0-9]+: " "$tmp/pre.log" &&
    ok || fail "the preconditioner's run: exit $rc: $(grep -v '^\[warn\]  step' "$tmp/pre.log" | tail -4)"
fi

# out of rollbacks; nothing to go back to
"$nnprec" "${run[@]}" "${rb[@]}" --rollbacks 1 --out "$tmp/one" > "$tmp/one.log" 2>&1
rc=$?
[ "$rc" = 1 ] && grep -q "^\[warn\]  --on-nonfinite rollback: all 1 rollbacks are spent$" "$tmp/one.log" &&
  grep -q "^nnprec: error: training diverged at step 11: " "$tmp/one.log" && ok ||
  fail "--rollbacks 1: exit $rc: $(grep -v '^\[warn\]  step' "$tmp/one.log" | tail -3)"
"$nnprec" "${run[@]}" "${rb[@]}" --checkpoint-every 0 --out "$tmp/none" > "$tmp/none.log" 2>&1
rc=$?
[ "$rc" = 1 ] && grep -q "^\[warn\]  --on-nonfinite rollback: no checkpoint in $tmp/none to go back to" "$tmp/none.log" &&
  ok || fail "no checkpoint: exit $rc: $(grep -v '^\[warn\]  step' "$tmp/none.log" | tail -3)"

expect 2 "--on-nonfinite must be stop or rollback, got 'retry'" "$nnprec" train --steps 1 --on-nonfinite retry
expect 2 "--on-nonfinite rollback needs --out" "$nnprec" train --steps 1 --on-nonfinite rollback
expect 2 "--rollbacks goes with --on-nonfinite rollback" "$nnprec" train --steps 1 --rollbacks 2
expect 2 "--rollbacks must be in 1..60, got 0" "$nnprec" train --steps 1 --on-nonfinite rollback --out "$tmp/x" --rollbacks 0
finish rollback
