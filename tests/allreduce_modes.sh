#!/usr/bin/env bash
# The bucketed (overlapped) and sharded allreduce must give exactly the fused result: at 2
# ranks every element is a + b in every mode, so the per-step losses must be bitwise
# identical. Small buckets (0.05 MiB) split LeNet's 325 KB of gradients into several
# buckets. Sharded (each rank updates half of the parameters with Adam and the dynamic
# preconditioner, whose sums are sharded the same way) must also write the same per-layer
# statistics and, after gathering the optimizer state, the same checkpoint, and resume
# from a mid-run checkpoint to the same end.
# usage: allreduce_modes.sh NNPREC MPIEXEC
set -euo pipefail
nnprec=$1 mpiexec=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for mode in fused bucketed; do
  "$mpiexec" -n 2 --oversubscribe "$nnprec" train --train-limit 1000 --test-limit 200 \
    --steps 60 --batch 8 --log-every 1 --quiet --allreduce "$mode" --bucket-mb 0.05 \
    --out "$tmp/$mode" > "$tmp/$mode.log" 2>&1 || { cat "$tmp/$mode.log"; exit 1; }
done
rows=$(tail -n +2 "$tmp/fused/train.csv" | wc -l)
if diff <(cut -d, -f1,3,4 "$tmp/fused/train.csv") <(cut -d, -f1,3,4 "$tmp/bucketed/train.csv") > /dev/null; then
  echo "bucketed == fused over $rows steps: 1 passed, 0 failed"
else
  echo "FAIL: bucketed and fused losses differ"
  diff <(cut -d, -f1,3 "$tmp/fused/train.csv") <(cut -d, -f1,3 "$tmp/bucketed/train.csv") | head
  exit 1
fi
sharded_run() { # OUT [extra options]
  local out=$1; shift
  "$mpiexec" -n 2 --oversubscribe "$nnprec" train --train-limit 1000 --test-limit 200 \
    --steps 60 --batch 8 --log-every 1 --quiet --optim adam --lr 0.001 --precond dynamic \
    --stats-every 20 --checkpoint-every 30 --out "$out" "$@" > "$out.log" 2>&1 ||
    { cat "$out.log"; exit 1; }
}
sharded_run "$tmp/af" --allreduce fused
sharded_run "$tmp/as" --allreduce sharded
cmp -s <(cut -d, -f1,3,4 "$tmp/af/train.csv") <(cut -d, -f1,3,4 "$tmp/as/train.csv") ||
  { echo "FAIL: sharded and fused losses differ"; exit 1; }
cmp -s "$tmp/af/layers.csv" "$tmp/as/layers.csv" || { echo "FAIL: sharded layers.csv differs"; exit 1; }
for d in /conv1/weight /fc3/bias /optimizer/exp_avg /optimizer/exp_avg_sq /precond/scale; do
  h5diff -q "$tmp/af/ckpt-00000060.h5" "$tmp/as/ckpt-00000060.h5" "$d" "$d" > /dev/null ||
    { echo "FAIL: sharded checkpoint differs from fused in $d"; exit 1; }
done
mkdir -p "$tmp/ar"
sharded_run "$tmp/ar" --allreduce sharded --resume "$tmp/as/ckpt-00000030.h5"
for d in /conv1/weight /fc1/weight /fc3/bias /optimizer/exp_avg_sq; do
  h5diff -q "$tmp/as/ckpt-00000060.h5" "$tmp/ar/ckpt-00000060.h5" "$d" "$d" > /dev/null ||
    { echo "FAIL: sharded run resumed at step 30 differs in $d"; exit 1; }
done
echo "sharded == fused (losses, layers.csv, checkpoint) and resumes exactly: 1 passed, 0 failed"

# the bucketed run really used the communication thread
awk -F, '$2 == "ar_thread" && $4 > 0 { found = 1 } END { exit !found }' "$tmp/bucketed/timing.csv" \
  || { echo "FAIL: no communication-thread time recorded"; exit 1; }
