#!/usr/bin/env bash
# Same trajectory at any rank count: train the same model with the same seed and global
# batch on 1, 2, 3 and 4 ranks and require every logged per-step training loss to agree
# within 1e-5 relative over 250 steps, and the final test accuracy to be identical.
# Only the order of floating-point sums differs between rank counts (each rank sums its
# slice of the batch, then the allreduce sums the ranks).
#
# usage: ddp_equivalence.sh NNPREC MPIEXEC [extra nnprec train options...]
# (NNP_EXPECT_SLOW_RANK=R: also check that --balance gave the slowed rank R fewer samples;
#  NNP_EQ_RANKS="2 4": the rank counts compared with 1 rank, default "2 3 4";
#  NNP_EQ_EXPECT=differ: the opposite check, for a run that must depend on the rank count
#  (--bn local): every rank count's losses must differ from 1 rank's by more than 1e-4)
set -euo pipefail
nnprec=$1 mpiexec=$2
shift 2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The learning rate comes from the caller (CMake passes one per regime): large enough that
# the run really trains (checked at the end), small enough that float32 reordering is not
# amplified past 1e-5 in 250 steps; at a few times that rate this small-batch recipe turns
# chaotic after ~150 steps and rank counts part ways (docs/results.md).
# The global batch 18 does not divide by 4 (shares 5,5,4,4),
# and 2000 samples / 18 leaves a last partial batch of 2 samples, so uneven and empty
# shares are exercised too. SGD and LARS run with the default momentum 0.9 (not given here:
# --momentum is an error with --optim lamb, which would ignore it).
common=(train --train-limit 2000 --test-limit 500 --steps 250 --global-batch 18
        --log-every 1 --eval-every 125 --lr 0.001 --seed 5 --quiet
        --check-replicas 10 "$@")
ranks=${NNP_EQ_RANKS:-2 3 4}
for np in 1 $ranks; do
  "$mpiexec" -n "$np" --oversubscribe "$nnprec" "${common[@]}" --out "$tmp/np$np" \
    > "$tmp/np$np.log" 2>&1 || { echo "run with $np ranks failed:"; cat "$tmp/np$np.log"; exit 1; }
done
status=0
for np in $ranks; do
  # (the second file's columns start after the first's: train.csv has more with --noise-scale)
  worst=$(paste -d, "$tmp/np1/train.csv" "$tmp/np$np/train.csv" | awk -F, '
    NR == 1 { n = NF / 2; next }
    { rows++; a = $3; b = $(n + 3); if ($1 != $(n + 1)) { print "step mismatch"; exit }
      d = a - b; if (d < 0) d = -d; m = (a < 0 ? -a : a); r = d / m; if (r > w) w = r }
    END { printf "%d %.3e\n", rows, w }')
  set -- $worst
  rows=$1 rel=$2
  acc1=$(tail -n 1 "$tmp/np1/eval.csv" | cut -d, -f4)
  accn=$(tail -n 1 "$tmp/np$np/eval.csv" | cut -d, -f4)
  echo "np=$np: $rows steps compared, max relative loss difference $rel; final test acc $acc1 vs $accn"
  if [ "$rows" -lt 250 ]; then echo "FAIL: only $rows steps logged"; status=1; fi
  if [ "${NNP_EQ_EXPECT:-same}" = differ ]; then
    if awk -v r="$rel" 'BEGIN { exit !(r <= 1e-4) }'; then
      echo "FAIL: expected the rank count to change the trajectory (difference <= 1e-4)"; status=1
    fi
    continue
  fi
  if awk -v r="$rel" 'BEGIN { exit !(r > 1e-5) }'; then echo "FAIL: difference above 1e-5"; status=1; fi
  if [ "$acc1" != "$accn" ]; then echo "FAIL: final test accuracy differs"; status=1; fi
done
# With --balance and a rank slowed down (NNPREC_FAULT_SLOW), that rank must have computed
# under half the mean of the others' samples (ranks.csv) at every rank count.
if [ -n "${NNP_EXPECT_SLOW_RANK:-}" ]; then
  for np in $ranks; do
    awk -F, -v s="$NNP_EXPECT_SLOW_RANK" -v np="$np" '
      NR == 1 { for (i = 1; i <= NF; i++) if ($i == "samples") c = i; next }
      $1 == s { slow = $c; next } { sum += $c; n++ }
      END { printf "np=%d: slow rank %d computed %d samples, the others %.0f on average\n",
                   np, s, slow, sum / n; exit !(c && slow < 0.5 * sum / n) }' "$tmp/np$np/ranks.csv" ||
      { echo "FAIL: --balance did not move samples away from the slow rank"; status=1; }
  done
fi
first=$(sed -n 2p "$tmp/np1/train.csv" | cut -d, -f3)
last=$(tail -n 1 "$tmp/np1/train.csv" | cut -d, -f3)
echo "loss at step 1: $first, at step 250: $last"
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < 0.7 * a) }' || { echo "FAIL: the run did not train"; status=1; }
exit $status
