#!/usr/bin/env bash
# The bucketed (overlapped) allreduce must give exactly the fused result: at 2 ranks every
# element is a + b in either mode, so the per-step losses must be bitwise identical.
# Small buckets (0.05 MiB) split LeNet's 325 KB of gradients into several buckets.
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
# the bucketed run really used the communication thread
awk -F, '$2 == "ar_thread" && $4 > 0 { found = 1 } END { exit !found }' "$tmp/bucketed/timing.csv" \
  || { echo "FAIL: no communication-thread time recorded"; exit 1; }
