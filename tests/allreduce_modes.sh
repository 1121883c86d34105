#!/usr/bin/env bash
# The bucketed (overlapped), sharded and shm allreduce must give exactly the fused result:
# at 2 ranks every element is a + b in every mode, so the per-step losses must be bitwise
# identical. Small buckets (0.05 MiB) split LeNet's 325 KB of gradients into several
# buckets. Sharded (each rank updates half of the parameters with Adam and the dynamic
# preconditioner, whose sums are sharded the same way) must also write the same per-layer
# statistics and, after gathering the optimizer state, the same checkpoint, and resume
# from a mid-run checkpoint to the same end; so must shm, on one node and across nodes.
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
# sharded: MPI reduce-scatter + allgather; shm: through a shared window on the node;
# shm1: shm with every rank a node of its own (NNPREC_SHM_NODE_RANKS=1), so the sum goes
# through the across-nodes allreduce and each "node" updates every parameter itself.
for v in sharded shm shm1; do
  mode=${v%1}
  node_ranks=; [ "$v" = shm1 ] && node_ranks=1
  NNPREC_SHM_NODE_RANKS=$node_ranks sharded_run "$tmp/a_$v" --allreduce "$mode"
  cmp -s <(cut -d, -f1,3,4 "$tmp/af/train.csv") <(cut -d, -f1,3,4 "$tmp/a_$v/train.csv") ||
    { echo "FAIL: $v and fused losses differ"; exit 1; }
  cmp -s "$tmp/af/layers.csv" "$tmp/a_$v/layers.csv" || { echo "FAIL: $v layers.csv differs"; exit 1; }
  for d in /conv1/weight /fc3/bias /optimizer/exp_avg /optimizer/exp_avg_sq /precond/scale; do
    # shm1 sums each weight tensor in one pass, not in two halves: the multipliers (double)
    # may differ in the last bits (1e-12 relative), the float updates did not
    tol=(); [ "$v" = shm1 ] && [ "$d" = /precond/scale ] && tol=(-p 1e-12 --exclude-attribute "$d")
    h5diff -q "${tol[@]}" "$tmp/af/ckpt-00000060.h5" "$tmp/a_$v/ckpt-00000060.h5" "$d" "$d" > /dev/null ||
      { echo "FAIL: $v checkpoint differs from fused in $d"; exit 1; }
  done
  mkdir -p "$tmp/r_$v"
  NNPREC_SHM_NODE_RANKS=$node_ranks sharded_run "$tmp/r_$v" --allreduce "$mode" \
    --resume "$tmp/a_$v/ckpt-00000030.h5"
  for d in /conv1/weight /fc1/weight /fc3/bias /optimizer/exp_avg_sq; do
    h5diff -q "$tmp/a_$v/ckpt-00000060.h5" "$tmp/r_$v/ckpt-00000060.h5" "$d" "$d" > /dev/null ||
      { echo "FAIL: $v run resumed at step 30 differs in $d"; exit 1; }
  done
  echo "$v == fused (losses, layers.csv, checkpoint) and resumes exactly: 1 passed, 0 failed"
done

# shm across "nodes" of unequal size, or a bad NNPREC_SHM_NODE_RANKS: one clear error
# (timeout: a rank left waiting would hang the test)
expect_error() { # PATTERN NODE_RANKS NP
  local out
  if out=$(NNPREC_SHM_NODE_RANKS=$2 timeout 60 "$mpiexec" -n "$3" --oversubscribe "$nnprec" train \
             --train-limit 100 --test-limit 50 --steps 2 --batch 4 --quiet --allreduce shm 2>&1); then
    echo "FAIL: NNPREC_SHM_NODE_RANKS=$2 on $3 ranks did not fail"; exit 1
  fi
  grep -q "$1" <<< "$out" || { echo "FAIL: expected '$1', got:"; echo "$out"; exit 1; }
  [ "$(grep -c "error" <<< "$out")" = 1 ] || { echo "FAIL: not exactly one error line:"; echo "$out"; exit 1; }
}
expect_error "same number of ranks on every node (found 1 to 2)" 2 3
expect_error "NNPREC_SHM_NODE_RANKS must be a positive integer, got 'x'" x 2
# too little room for the window's backing file (Open MPI would hang there, not fail):
# NNPREC_FAULT_SHM_FREE_MB pretends the free space (2 ranks: their gradients and one copy of
# the parameters, 3 x 81,194 floats, + 1 MB for Open MPI)
NNPREC_FAULT_SHM_FREE_MB=0.5 expect_error "needs 2.0 MB of shared memory per node in /dev/shm, which has 0.5 MB free" "" 2
echo "shm on unequal nodes, a bad NNPREC_SHM_NODE_RANKS, too little shared memory: one message each: 1 passed, 0 failed"

# the bucketed run really used the communication thread
awk -F, '$2 == "ar_thread" && $4 > 0 { found = 1 } END { exit !found }' "$tmp/bucketed/timing.csv" \
  || { echo "FAIL: no communication-thread time recorded"; exit 1; }
