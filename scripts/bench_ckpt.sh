#!/usr/bin/env bash
# Checkpoint write benchmark (docs/checkpoint.md, "Write speed"): how fast rank 0 writes a
# large checkpoint compared with the disk's sequential write bandwidth, and how long the
# other ranks wait for it.
#
# Each round trains mlp:784-2048x3-10 with Adam on 2 ranks for 14 steps with a checkpoint
# every 5 steps (10.0 M parameters + two Adam moments = 120 MB per checkpoint) and then
# measures the disk with `dd if=/dev/zero of=DIR/ddtest bs=1M count=256 conv=fsync` in the
# same folder; rounds are interleaved so that both see the same disk conditions.
#  * write speed: checkpoint bytes / the time of the `[ckpt] step N -> path (T s)` line
#    rank 0 prints (create, write, fsync, rename, directory fsync, `latest` update);
#  * stall: the trainer makes every rank wait for rank 0's write in one agreement
#    collective, and the next step's gradient allreduce keeps the ranks in lock step, so the
#    wall time of the log interval (--log-every 1, train.csv) that contains a checkpoint,
#    minus the median interval without one, is what rank 1 lost to it; it should not exceed
#    the write time by more than the agreement itself. timing.csv's ar_wait (max over
#    ranks) of that interval shows whether either rank was left waiting after the write.
# Checkpoints rotate with --keep 1, as in a long run: on a virtual machine a write into
# page-cache memory the guest has not used recently is several times slower than one into
# pages just freed (docs/checkpoint.md). Builds nothing.
#
# usage: scripts/bench_ckpt.sh [--nnprec build/nnprec] [--mpiexec mpiexec] [--dir DIR]
#                              [--rounds 3] [--keep-files]
set -euo pipefail
nnprec=build/nnprec mpiexec=mpiexec dir="" rounds=3 keep_files=0
while [ $# -gt 0 ]; do
  case $1 in
    --nnprec) nnprec=$2; shift 2 ;;
    --mpiexec) mpiexec=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --keep-files) keep_files=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "bench_ckpt.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$nnprec" ] || { echo "bench_ckpt.sh: $nnprec is not an executable (build first)" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
if [ -z "$dir" ]; then
  dir=$(mktemp -d "$PWD/bench-ckpt.XXXXXX")
else
  mkdir -p "$dir"
fi
[ "$keep_files" = 1 ] || trap 'rm -rf "$dir"' EXIT
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
model=mlp:784-2048x3-10
args=(train --model "$model" --optim adam --lr 0.001 --train-limit 2000 --test-limit 100
      --steps 14 --batch 32 --log-every 1 --eval-every 100000 --checkpoint-every 5 --keep 1)

echo "# nnprec checkpoint write benchmark: $model, Adam, 2 ranks, $rounds rounds"
echo "# folder $dir ($(df -P "$dir" | awk 'NR == 2 { print $1 }'), $(nproc) cores)"
: > "$dir/ckpts.txt"   # round step bytes write_s interval_s base_s ar_wait_s base_ar_wait_s
: > "$dir/dd.txt"      # round bytes seconds
# warm-up, not counted: the first writes into memory the page cache has never used are slow
# on a virtual machine (the host backs guest pages on first touch), and they would fall on
# whichever of the two measurements comes first
LC_ALL=C dd if=/dev/zero of="$dir/ddtest" bs=1M count=512 conv=fsync 2> /dev/null
rm -f "$dir/ddtest"
for r in $(seq 1 "$rounds"); do
  run=$dir/run$r
  "$mpiexec" -n 2 --oversubscribe "$nnprec" "${args[@]}" --out "$run" > "$run.log" 2>&1 \
    || { echo "bench_ckpt.sh: training run $r failed:" >&2; tail -5 "$run.log" >&2; exit 1; }
  # baseline: the median interval (and ar_wait) of steps 3.. whose interval holds no
  # checkpoint (a checkpoint after step k falls in the interval of step k + 1)
  base=$(awk -F, 'NR > 1 { if (p != "" && $1 >= 3 && ($1 - 1) % 5 != 0) print $7 - p; p = $7 }' \
           "$run/train.csv" | median)
  basew=$(awk -F, '$2 == "ar_wait" && $1 >= 3 && ($1 - 1) % 5 != 0 { print $5 }' "$run/timing.csv" | median)
  # every checkpoint of the run has the size of the last one (--keep 1 deleted the others)
  bytes=$(stat -c %s "$run/ckpt-00000014.h5")
  # [ckpt]  step N -> PATH (T s)
  sed -n 's/^\[ckpt\]  step \([0-9]*\) -> \(.*\) (\([0-9.]*\) s)$/\1 \2 \3/p' "$run.log" |
  while read -r step _ secs; do
    iv=$(awk -F, -v k="$step" 'NR > 1 && $1 == k { w0 = $7 } NR > 1 && $1 == k + 1 { w1 = $7 }
                               END { if (w1 != "") printf "%.3f", w1 - w0; else print "-" }' "$run/train.csv")
    aw=$(awk -F, -v k="$step" '$2 == "ar_wait" && $1 == k + 1 { print $5 }' "$run/timing.csv")
    echo "$r $step $bytes $secs $iv $base ${aw:--} $basew" >> "$dir/ckpts.txt"
  done
  rm -f "$run"/ckpt-*.h5
  sync
  t=$( { LC_ALL=C dd if=/dev/zero of="$dir/ddtest" bs=1M count=256 conv=fsync 2>&1 >/dev/null; } |
       sed -n 's/^\([0-9]*\) bytes.* copied, \([0-9.e+-]*\) s,.*/\1 \2/p')
  rm -f "$dir/ddtest"
  echo "$r $t" >> "$dir/dd.txt"
done

echo
echo "## checkpoints (rank 0's [ckpt] lines; the interval is train.csv's wall time of the step after the checkpoint, checkpoint included)"
printf "%5s %5s %8s %8s %8s %11s %11s %9s %11s %13s\n" round step MB write_s MB/s interval_s baseline_s stall_s "stall-write" "ar_wait(max)"
awk '{
  mbs = $3 / 1e6 / $4
  if ($5 == "-")
    printf "%5d %5d %8.1f %8.3f %8.0f %11s %11.3f %9s %11s %13s\n", $1, $2, $3 / 1e6, $4, mbs, "(last)", $6, "-", "-", "-"
  else
    printf "%5d %5d %8.1f %8.3f %8.0f %11.3f %11.3f %9.3f %11.3f %6.4f/%.4f\n", $1, $2, $3 / 1e6, $4, mbs, $5, $6, $5 - $6, $5 - $6 - $4, $7, $8
}' "$dir/ckpts.txt"
echo
echo "## dd if=/dev/zero of=DIR/ddtest bs=1M count=256 conv=fsync (after each round)"
awk '{ printf "round %d: %.1f MB in %.3f s = %.0f MB/s\n", $1, $2 / 1e6, $3, $2 / 1e6 / $3 }' "$dir/dd.txt"
echo
ck_mbs=$(awk '{ print $3 / 1e6 / $4 }' "$dir/ckpts.txt" | median)
dd_mbs=$(awk '{ print $2 / 1e6 / $3 }' "$dir/dd.txt" | median)
size=$(awk 'NR == 1 { printf "%.1f", $3 / 1e6 }' "$dir/ckpts.txt")
stall=$(awk '$5 != "-" { print $5 - $6 }' "$dir/ckpts.txt" | median)
write=$(awk '$5 != "-" { print $4 }' "$dir/ckpts.txt" | median)
worst=$(awk '$5 != "-" { d = $5 - $6 - $4; if (n++ == 0 || d > w) w = d } END { printf "%.3f", w }' "$dir/ckpts.txt")
meand=$(awk '$5 != "-" { d += $5 - $6 - $4; n++ } END { printf "%.3f", n ? d / n : 0 }' "$dir/ckpts.txt")
echo "## summary"
echo "checkpoint size     $size MB (params + Adam exp_avg + exp_avg_sq, float32)"
printf "checkpoint write    %.0f MB/s (median of %d writes)\n" "$ck_mbs" "$(wc -l < "$dir/ckpts.txt")"
printf "dd with fsync       %.0f MB/s (median of %d runs)\n" "$dd_mbs" "$(wc -l < "$dir/dd.txt")"
awk -v a="$ck_mbs" -v b="$dd_mbs" 'BEGIN { printf "ratio               %.0f%% of the disk bandwidth (goal >= 70%%: %s)\n", 100 * a / b, (a >= 0.7 * b) ? "met" : "not met" }'
printf "stall of rank 1     %.3f s per checkpoint (median) for a write of %.3f s (median)\n" "$stall" "$write"
printf "stall - write       mean %+.3f s, worst %+.3f s (one step takes %s s)\n" "$meand" "$worst" \
  "$(awk '{ print $6 }' "$dir/ckpts.txt" | sort -g | awk 'NR == 1 { a = $1 } { b = $1 } END { print (a == b) ? a : a "-" b }')"
