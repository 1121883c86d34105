#!/usr/bin/env bash
# --stream (docs/data.md): a generated HDF5 set (scripts/make_h5_dataset.py) read as training
# goes gives the in-memory run's per-step losses and parameters bit for bit, at 1 and 2 ranks
# (even split and --deterministic, read ahead and in the step, full and block shuffle, a
# resumed run, --val-split, uint8 and float32; --balance within 1e-5); streaming is chosen by --data-memory-mb far
# below the set's size; a streaming rank's peak memory stays under the in-memory rank's by
# most of the set and does not grow with it; a file truncated or removed mid-run stops every
# rank with the file and sample named, after checkpointing; bad layouts and options are
# refused before training.
# Usage: stream.sh NNPREC MPIEXEC
set -uo pipefail
nnprec=$1 mpiexec=$2
source "$(dirname "$0")/cli_lib.sh"
py=/usr/bin/python3
gen=$(cd "$(dirname "$0")/../scripts" && pwd)/make_h5_dataset.py

# 60,000 samples (45 MB, 512-row chunks); 8,000 with gzip in 128-row chunks; 8,000 contiguous
$py "$gen" "$tmp/big.h5" --samples 60000 --chunk-rows 512 > /dev/null &&
  $py "$gen" "$tmp/gz.h5" --samples 8000 --chunk-rows 128 --gzip 4 > /dev/null &&
  $py "$gen" "$tmp/flat.h5" --samples 8000 --contiguous > /dev/null &&
  $py "$gen" "$tmp/bad.h5" --samples 2000 --chunk-rows 100 --bad-chunks > /dev/null ||
  { fail "make_h5_dataset.py failed"; finish stream; }

common=(train --steps 30 --log-every 1 --eval-every 30 --test-limit 500 --seed 5 --quiet)
run() { # run NP OUT ARGS...: a run that must succeed
  local np=$1 out=$2; shift 2
  timeout 120 "$mpiexec" -n "$np" --oversubscribe "$nnprec" "${common[@]}" --out "$out" "$@" \
    > "$out.log" 2>&1 || fail "$out: exit $?: $(tail -3 "$out.log")"
}
params() { # params A.h5 B.h5: every parameter dataset identical (LeNet)
  for g in conv1 conv2 fc1 fc2 fc3; do
    for d in weight bias; do
      h5diff -q "$1" "$2" "/$g/$d" "/$g/$d" > /dev/null || return 1
    done
  done
}
same() { # same REF RUN WHAT: identical per-step losses and final parameters
  if cmp -s <(cut -d, -f1,3,4 "$1/train.csv") <(cut -d, -f1,3,4 "$2/train.csv") &&
     params "$1/ckpt-00000030.h5" "$2/ckpt-00000030.h5"; then ok
  else fail "$3: not the in-memory trajectory: $(diff <(cut -d, -f1,3 "$1/train.csv") <(cut -d, -f1,3 "$2/train.csv") | head -4)"; fi
}

# 1. one rank: in memory, streamed by --data-memory-mb (45 MB > 8), read in the step
run 1 "$tmp/m1" --data "$tmp/big.h5"
run 1 "$tmp/s1" --data "$tmp/big.h5" --data-memory-mb 8
run 1 "$tmp/s1p0" --data "$tmp/big.h5" --stream --prefetch 0
same "$tmp/m1" "$tmp/s1" "1 rank, chosen by --data-memory-mb"
same "$tmp/m1" "$tmp/s1p0" "1 rank, --prefetch 0"
timeout 60 "$nnprec" train --steps 1 --test-limit 100 --data "$tmp/big.h5" --data-memory-mb 8 > "$tmp/setup.log" 2>&1
grep -q "^\[setup\] streaming the training set (45 MB > --data-memory-mb 8): each rank reads its samples of the coming steps, with pread(2), a reader thread reads ahead$" "$tmp/setup.log" 2> /dev/null \
  && ok || fail "the setup line: $(grep stream "$tmp/setup.log" 2>&1)"

# memory: the streaming rank does not hold the 45 MB (ranks.csv: peak_rss_mb, VmHWM)
rss() { awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "peak_rss_mb") c = i } NR == 2 { print $c }' "$1/ranks.csv"; }
m=$(rss "$tmp/m1") s=$(rss "$tmp/s1")
echo "peak resident memory: in memory $m MB, streamed $s MB"
awk -v m="$m" -v s="$s" 'BEGIN { exit !(m > 0 && s > 0 && s < m - 35) }' && ok ||
  fail "peak memory: streamed $s MB, in memory $m MB: not 35 MB less"
# ... and it does not grow with the set: 8,000 samples (6 MB) against 60,000 (45 MB)
run 1 "$tmp/s1small" --data "$tmp/flat.h5" --stream
small=$(rss "$tmp/s1small")
echo "peak resident memory streamed: 45 MB set $s MB, 6 MB set $small MB"
awk -v a="$s" -v b="$small" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(b > 0 && d < 5) }' && ok ||
  fail "peak memory grows with the streamed set: $small MB for 6 MB, $s MB for 45 MB"

# 2. two ranks: gzip'd 128-row chunks, two batches ahead; contiguous; --deterministic
run 2 "$tmp/m2" --data "$tmp/gz.h5"
run 2 "$tmp/s2" --data "$tmp/gz.h5" --stream --prefetch 2
same "$tmp/m2" "$tmp/s2" "2 ranks, gzip chunks"
run 2 "$tmp/m2f" --data "$tmp/flat.h5"
run 2 "$tmp/s2f" --data "$tmp/flat.h5" --data-memory-mb 1
same "$tmp/m2f" "$tmp/s2f" "2 ranks, contiguous"
det=(--deterministic --micro-shard 16 --global-batch 64)
run 1 "$tmp/d1" --data "$tmp/flat.h5" "${det[@]}"
run 2 "$tmp/d2" --data "$tmp/flat.h5" "${det[@]}" --stream
same "$tmp/d1" "$tmp/d2" "--deterministic, 1 rank in memory against 2 streaming"

# --val-split: the same samples held out (read into memory), the same normalization (uint8:
# every rank's histogram less the held-out values; float32: rank 0's pass skipping them)
run 2 "$tmp/mv" --data "$tmp/gz.h5" --val-split 700
run 2 "$tmp/sv" --data "$tmp/gz.h5" --val-split 700 --stream
same "$tmp/mv" "$tmp/sv" "2 ranks, --val-split 700"
cmp -s <(cut -d, -f1-4,6- "$tmp/mv/eval.csv") <(cut -d, -f1-4,6- "$tmp/sv/eval.csv") && ok ||
  fail "--val-split: test and validation figures differ: $(diff "$tmp/mv/eval.csv" "$tmp/sv/eval.csv")"

# --balance with rank 1 slowed down: the reader waits for each re-split's shares, rank 1
# gets fewer samples, and the losses stay the 1-rank run's (within 1e-5: the sums' order
# follows the shares; LeNet at lr 0.002, as in ddp_equivalence_balance)
bal=(--lr 0.002 --global-batch 64 --steps 40)
run 1 "$tmp/b1" --data "$tmp/big.h5" "${bal[@]}"
NNPREC_FAULT_SLOW=1:2000 run 2 "$tmp/b2" --data "$tmp/big.h5" "${bal[@]}" --stream --balance 2
paste -d, <(cut -d, -f3 "$tmp/b1/train.csv") <(cut -d, -f3 "$tmp/b2/train.csv") | tail -n +2 |
  awk -F, '{ d = $1 - $2; if (d < 0) d = -d; r = d / ($1 > 0 ? $1 : 1); if (r > m) m = r; n++ }
           END { printf "--stream --balance: largest relative loss difference %.2g over %d steps\n", m, n
                 exit !(n == 40 && m <= 1e-5) }' && ok || fail "--stream --balance: not the 1-rank trajectory"
awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "samples") c = i; next } { v[$1] = $c }
         END { exit !(c && v[1] < 0.5 * v[0]) }' "$tmp/b2/ranks.csv" && ok ||
  fail "--stream --balance: the slow rank kept its samples: $(cat "$tmp/b2/ranks.csv")"

# 3. --shuffle block: the same order in memory and streamed, not the full permutation's
run 2 "$tmp/mb" --data "$tmp/gz.h5" --shuffle block:128:4
run 2 "$tmp/sb" --data "$tmp/gz.h5" --shuffle block:128:4 --stream
same "$tmp/mb" "$tmp/sb" "--shuffle block:128:4"
cmp -s <(cut -d, -f3 "$tmp/mb/train.csv") <(cut -d, -f3 "$tmp/m2/train.csv") &&
  fail "--shuffle block gives the full permutation's losses" || ok

# 4. resumed: 15 steps, then on to 30
run 2 "$tmp/r" --data "$tmp/gz.h5" --stream --steps 15
run 2 "$tmp/r" --data "$tmp/gz.h5" --stream --resume auto
same "$tmp/m2" "$tmp/r" "streamed, resumed at step 15"
# the order is the checkpoint's: another --shuffle is refused, and nnprec info shows it
expect 2 "was written with --shuffle full, this run has block:128:4 (the sample order depends on it)" \
  "$nnprec" train --data "$tmp/gz.h5" --stream --steps 40 --global-batch 128 --seed 5 --shuffle block:128:4 --resume auto --out "$tmp/r"
info=$("$nnprec" info "$tmp/mb" 2>&1)
grep -q "^shuffle          block:128:4 (resume with --shuffle block:128:4)$" <<< "$info" && ok ||
  fail "nnprec info: no shuffle line: $info"

# 5. the file truncated, then removed, under a running 2-rank job: every rank stops, the
#    error names the file and a sample (each rank that met it prints its line), the state
#    before the failed step is checkpointed
for how in truncated removed; do
  cp "$tmp/big.h5" "$tmp/v.h5"
  d=$tmp/v-$how
  NNPREC_FAULT_SLOW=1:1500 timeout 120 "$mpiexec" -n 2 --oversubscribe "$nnprec" train \
    --data "$tmp/v.h5" --stream --steps 3000 --checkpoint-every 7 --log-every 1 --test-limit 200 \
    --quiet --out "$d" > "$d.log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do
    [ "$(tail -n 1 "$d/train.csv" 2> /dev/null | cut -d, -f1)" -ge 10 ] 2> /dev/null && break
    sleep 0.1
  done
  if [ "$how" = truncated ]; then truncate -s 20000000 "$tmp/v.h5"; else rm "$tmp/v.h5"; fi
  wait $pid
  rc=$?
  line=$(grep "^nnprec: error" "$d.log" | head -1)
  echo "$how: exit $rc: $line"
  step=$(sed -n 's/.*the state after step \([0-9]*\) is in the checkpoint of that step.*/\1/p' <<< "$line")
  [ "$rc" = 1 ] && grep -q "^nnprec: error (rank [01]): $tmp/v.h5: the file was $how.* while training read it (step [0-9]*, sample [0-9]*): stopping; the state after step [0-9]* is in the checkpoint of that step: resume with --resume auto once the file is whole$" <<< "$line" \
    && [ -n "$step" ] && [ -f "$d/ckpt-$(printf %08d "$step").h5" ] \
    && ! grep '^nnprec: error' "$d.log" | grep -v "the file was $how" | grep -q . \
    && [ "$(tail -n 1 "$d/train.csv" | cut -d, -f1)" = "$step" ] \
    && ok || fail "$how mid-run: exit $rc, step '$step': $(tail -3 "$d.log"; ls "$d")"
done

# 6. refused before training
expect 1 "bad.h5: /train/images is stored in chunks of (100, 1, 14, 14): streaming reads whole samples" \
  "$nnprec" train --data "$tmp/bad.h5" --stream --steps 1
run 1 "$tmp/badmem" --data "$tmp/bad.h5" --steps 2 --train-limit 500 # in memory the layout is fine
$py - "$tmp/gz.h5" "$tmp/nolabels.h5" "$tmp/f64.h5" "$tmp/f32.h5" << 'EOF'
import shutil, sys, h5py, numpy as np
src, nolab, f64, f32 = sys.argv[1:]
shutil.copy(src, nolab)
with h5py.File(nolab, "a") as f:
    del f["train/labels"]
shutil.copy(src, f64)
with h5py.File(f64, "a") as f:
    x = f["train/images"][:]
    del f["train/images"]
    f.create_dataset("train/images", data=x.astype(np.float64), chunks=(128, 1, 28, 28))
shutil.copy(src, f32)
with h5py.File(f32, "a") as f:
    x = f["train/images"][:]
    del f["train/images"]
    f.create_dataset("train/images", data=(x / 255.0).astype("<f4"), chunks=(100, 1, 28, 28))
EOF
# float32 pixels, little-endian, in chunks of 100: read directly, the same trajectory
run 1 "$tmp/mf" --data "$tmp/f32.h5"
run 1 "$tmp/sf" --data "$tmp/f32.h5" --stream
same "$tmp/mf" "$tmp/sf" "float32 pixels"
run 1 "$tmp/mfv" --data "$tmp/f32.h5" --val-split 300
run 1 "$tmp/sfv" --data "$tmp/f32.h5" --val-split 300 --stream
same "$tmp/mfv" "$tmp/sfv" "float32 pixels, --val-split 300"
expect 1 "nolabels.h5: dataset /train/labels missing" "$nnprec" train --data "$tmp/nolabels.h5" --stream --steps 1
expect 1 "f64.h5: /train/images has dtype float64, expected uint8 or float32" \
  "$nnprec" train --data "$tmp/f64.h5" --stream --steps 1
expect 2 "--stream reads HDF5 files" "$nnprec" train --stream --steps 1
for v in -1 65 x; do expect 2 "--prefetch" "$nnprec" train --data "$tmp/gz.h5" --stream --prefetch "$v" --steps 1; done
for v in blocks block:0 block:8:0 block:x block:8:2:1; do
  expect 2 "--shuffle must be full, block, block:ROWS or block:ROWS:WINDOW" "$nnprec" train --shuffle "$v" --steps 1
done
expect 2 "--data-memory-mb must be >= 0" "$nnprec" train --data-memory-mb -5 --steps 1
finish stream
