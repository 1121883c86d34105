#!/usr/bin/env bash
# What --shuffle block costs in accuracy (docs/data.md): LeNet on Fashion-MNIST (converted to
# HDF5 with scripts/idx_to_h5.py, in memory: the order alone differs), batch 64, SGD lr 0.01
# momentum 0.9, --epochs E, seeds 1..S, with the uniform permutation (full) and with block
# orders of growing locality. Prints each order's final test accuracy, mean ± sample std over
# the seeds, and its difference to full, as a Markdown table.
#
# usage: scripts/bench_shuffle.sh [--nnprec build/nnprec] [--epochs 3] [--seeds 3]
#                                 [--orders "full block:1024:16 block:1024:4"] [--dir DIR]
set -euo pipefail
nnprec=build/nnprec epochs=3 seeds=3 dir="" orders="full block:1024:16 block:1024:4 block:1024:1"
while [ $# -gt 0 ]; do
  case $1 in
    --nnprec) nnprec=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --orders) orders=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "bench_shuffle.sh: error: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$nnprec" ] || { echo "bench_shuffle.sh: error: $nnprec is not an executable (build first)" >&2; exit 1; }
[[ $epochs =~ ^[1-9][0-9]*$ && $seeds =~ ^[1-9][0-9]*$ ]] ||
  { echo "bench_shuffle.sh: error: --epochs and --seeds must be positive integers" >&2; exit 2; }
export OPENBLAS_NUM_THREADS=1
here=$(cd "$(dirname "$0")" && pwd)
if [ -z "$dir" ]; then dir=$(mktemp -d "$PWD/bench-shuffle.XXXXXX"); trap 'rm -rf "$dir"' EXIT; fi
mkdir -p "$dir"
[ -f "$dir/fm.h5" ] || /usr/bin/python3 "$here/idx_to_h5.py" /usr/share/datasets/fashion-mnist "$dir/fm.h5" > /dev/null
echo "# --shuffle and accuracy: LeNet, batch 64, SGD lr 0.01 momentum 0.9, $epochs epochs, seeds 1..$seeds"
for o in $orders; do
  for s in $(seq 1 "$seeds"); do
    out=$dir/${o//:/_}-s$s
    [ -f "$out/eval.csv" ] && [ "$(tail -1 "$out/eval.csv" | cut -d, -f1)" = "$((epochs * 938))" ] && continue
    rm -rf "$out"
    "$nnprec" train --data "$dir/fm.h5" --epochs "$epochs" --seed "$s" --shuffle "$o" \
      --threads 1 --quiet --out "$out" > /dev/null
    echo "[bench] $o seed $s: $(tail -1 "$out/eval.csv" | cut -d, -f4)" >&2
  done
done
echo "| order | test accuracy (%) | vs full |"
echo "|---|---|---|"
base=""
for o in $orders; do
  stats=$(for s in $(seq 1 "$seeds"); do tail -1 "$dir/${o//:/_}-s$s/eval.csv" | cut -d, -f4; done |
          awk '{ x[NR] = 100 * $1; m += 100 * $1 } END { m /= NR; for (i = 1; i <= NR; i++) v += (x[i] - m)^2;
                 printf "%.2f %.2f", m, (NR > 1 ? sqrt(v / (NR - 1)) : 0) }')
  read -r mean sd <<< "$stats"
  [ -z "$base" ] && base=$mean
  echo "| $o | $mean ± $sd | $(awk -v a="$mean" -v b="$base" 'BEGIN { printf "%+.2f", a - b }') |"
done
