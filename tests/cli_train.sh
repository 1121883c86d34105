#!/usr/bin/env bash
# Command-line behaviour of `nnprec train`: help, option errors, data errors, failures on
# one rank of several, and the files a run writes.
# usage: cli_train.sh NNPREC MPIEXEC
set -uo pipefail
nnprec=$1 mpiexec=$2
source "$(dirname "$0")/cli_lib.sh"

# --help lists every option with its default, and exits 0
"$nnprec" train --help > "$tmp/help" || fail "train --help exit code"
for o in model act loss init optim lr momentum nesterov weight-decay schedule warmup epochs steps \
         batch global-batch seed data normalize train-limit test-limit eval-every log-every out \
         precond precond-every stats-every check-replicas lars-eta lamb-clip lars-exclude-bias bn; do
  grep -q -- "--$o " "$tmp/help" || fail "--help does not list --$o"
done
grep -q -- '--lr X .*\[0.01\]' "$tmp/help" && ok || fail "--help does not show the --lr default"
"$nnprec" --help | grep -q train && ok || fail "nnprec --help does not list train"

expect 2 "unknown option '--bogus'" "$nnprec" train --bogus 1
expect 2 "needs a value" "$nnprec" train --lr
expect 2 "expects a finite number" "$nnprec" train --lr abc
# plain decimal numbers only (strtol/strtod would take hex, blanks and '+')
expect 2 "--lr expects a finite number, got '0x10'" "$nnprec" train --lr 0x10
expect 2 "--batch expects an integer, got ' 8'" "$nnprec" train --batch ' 8'
expect 2 "--steps expects an integer, got '1e3'" "$nnprec" train --steps 1e3
expect 2 "--lr must be positive" "$nnprec" train --lr -1
# under mpiexec every rank exits with the code of the rank that reports (2: bad command line)
expect 2 "--lr must be positive" "$mpiexec" -n 3 --oversubscribe "$nnprec" train --lr -1
expect 2 "--batch must be >= 1" "$nnprec" train --batch 0
expect 2 "--balance must be >= 0" "$nnprec" train --balance -1
expect 2 "--allreduce-mb: expected sizes" "$nnprec" bench --allreduce-mb 1,x
expect 2 "--collective must be" "$nnprec" bench --allreduce-mb 1 --collective bcast
expect 2 "--allreduce must be fused, bucketed, sharded or shm" "$nnprec" train --allreduce ring
expect 2 "unknown model 'resnet'" "$nnprec" train --model resnet
expect 2 "init" "$nnprec" train --init bogus
expect 2 "optimizer" "$nnprec" train --optim rmsprop
expect 2 "--normalize expects MEAN,STD" "$nnprec" train --normalize 0.5
expect 2 "unknown command" "$nnprec" fly
expect 2 "--gamma must be in (0, 1\], got -1" "$nnprec" train --schedule step --gamma -1
expect 2 "--min-lr must be in \[0, --lr\], got 5" "$nnprec" train --schedule cosine --min-lr 5
expect 2 "the global batch (--batch x ranks) must be at most" "$mpiexec" -n 2 --oversubscribe \
  "$nnprec" train --batch 2147483647
expect 2 "the global batch (--global-batch) must be at most" "$nnprec" train --global-batch 2147483647
expect 2 "--act applies to mlp: models only; lenet names its own" "$nnprec" train --model lenet --act tanh
expect 2 "--stop-file needs --out" "$nnprec" train --stop-file "$tmp/stop"
# lars and lamb: bad values, and options the chosen optimizer would ignore
expect 2 "--lars-eta must be > 0, got 0" "$nnprec" train --optim lars --lars-eta 0
expect 2 "--lars-eta must be > 0, got -0.1" "$nnprec" train --optim lars --lars-eta -0.1
expect 2 "--lamb-clip must be > 0, got 0" "$nnprec" train --optim lamb --lamb-clip 0
expect 2 "--lars-eta applies to --optim lars, not --optim sgd" "$nnprec" train --lars-eta 0.01
expect 2 "--lamb-clip applies to --optim lamb, not --optim lars" "$nnprec" train --optim lars --lamb-clip 5
expect 2 "--lars-exclude-bias applies to --optim lars and lamb, not --optim adam" "$nnprec" train \
  --optim adam --no-lars-exclude-bias
expect 2 "--momentum applies to --optim sgd and lars" "$nnprec" train --optim lamb --momentum 0.9
expect 2 "--nesterov applies to --optim sgd and lars" "$nnprec" train --optim lamb --nesterov
expect 2 "--beta1 applies to --optim adam, adamw and lamb, not --optim lars" "$nnprec" train \
  --optim lars --beta1 0.8
# bn, gap, dropout: bad values, and the seed's preconditioner formula, a recipe for plain
# stacks, refused for them (the corrected one is derived: docs/preconditioner.md section 7)
expect 2 "--bn must be sync or local, got 'global'" "$nnprec" train --bn global
expect 2 "dropout is dropout:P with 0 <= P < 1 (got '1.5')" "$nnprec" train \
  --model seq:784/dense:16/dropout:1.5/dense:10
expect 2 "item 'bn' takes no arguments" "$nnprec" train --model seq:784/dense:16/bn:2/dense:10
expect 2 "--precond-formula seed is not defined for BatchNorm layers" "$nnprec" train \
  --model seq:1x28x28/conv:4:3/bn/relu/flatten/dense:10 --precond static --precond-formula seed \
  --train-limit 64
expect 2 "--precond-formula seed is not defined for global average pooling (gap)" "$nnprec" train \
  --model seq:1x28x28/conv:4:3/relu/gap/dense:10 --precond dynamic --precond-formula seed \
  --train-limit 64
expect 2 "--precond-formula seed is not defined for dropout" "$nnprec" train \
  --model seq:784/dense:16/relu/dropout:0.5/dense:10 --precond dynamic --precond-formula seed \
  --train-limit 64
# residual blocks: spec errors name the item; the seed formula is refused for them
expect 2 "--precond-formula seed is not defined for residual blocks (res\\[...\\])" "$nnprec" train \
  --model resmlp:784-32x3-10 --precond static --precond-formula seed --train-limit 64
# the corrected preconditioner on resnet8 (bn, residual blocks, gap), static and dynamic: a
# few steps, the training loss falls (measured at lr 0.01: 2.26 -> 1.33 in 30 steps of 32)
for pc in static dynamic; do
  "$nnprec" train --model resnet8 --precond $pc --steps 20 --batch 16 --lr 0.01 --momentum 0.9 \
    --train-limit 320 --test-limit 50 --log-every 2 --eval-every 20 --seed 1 --out "$tmp/r8$pc" \
    > "$tmp/r8$pc.log" 2>&1 || fail "resnet8 --precond $pc: $(tail -2 "$tmp/r8$pc.log")"
  awk -F, 'NR == 2 { a = $3 } END { exit !($3 < 0.85 * a) }' "$tmp/r8$pc/train.csv" && ok ||
    fail "resnet8 --precond $pc: the loss does not fall: $(cut -d, -f3 "$tmp/r8$pc/train.csv" | tr '\n' ' ')"
done
expect 2 "unclosed '\\[' in item 'res\\[dense:16/relu'" "$nnprec" train \
  --model 'seq:784/dense:16/res[dense:16/relu' --train-limit 64
expect 2 "empty group 'res\\[\\]'" "$nnprec" train --model 'seq:784/dense:16/res[]/dense:10'
expect 2 "nested group in item 'res\\[res\\[dense:16\\]\\]'" "$nnprec" train \
  --model 'seq:784/dense:16/res[res[dense:16]]'
expect 2 "the shortcut of 'res\\[conv:4:3\\]' cannot be built" "$nnprec" train \
  --model 'seq:1x28x28/res[conv:4:3]/gap/dense:10'
# the default recipe (pytorch init, SGD lr 0.01 momentum 0.9, batch 64) trains the residual
# 12-layer MLP (measured 82-84% in 400 steps at seeds 1-3) where the plain one stays at
# chance (10%); a few seconds each
for m in resmlp:784-256x12-10 mlp:784-256x12-10; do
  "$nnprec" train --model $m --steps 400 --batch 64 --lr 0.01 --momentum 0.9 --eval-every 400 \
    --train-limit 30000 --test-limit 2000 --seed 1 > "$tmp/deep.log" 2>&1 || fail "train $m: $(tail -2 "$tmp/deep.log")"
  acc=$(sed -n 's/^\[done\].* accuracy \([0-9.]*\)%$/\1/p' "$tmp/deep.log")
  if [ "${m%%:*}" = resmlp ]; then want='a >= 60'; else want='a <= 15'; fi
  [ -n "$acc" ] && awk -v a="$acc" "BEGIN { exit !($want) }" && ok || fail "$m after 400 steps: '$acc%', want $want"
done
# a residual network's step (synchronized bn, projection shortcut) allocates nothing
"$mpiexec" -n 2 --oversubscribe "$nnprec" train --steps 10 --train-limit 200 --test-limit 50 --verbose \
  --model 'seq:1x28x28/conv:4:3:2:1/bn/relu/res[conv:4:3:1:1/bn/relu/conv:4:3:1:1/bn]/relu/res[conv:8:3:2:1/bn]/relu/gap/dense:10' \
  > "$tmp/resrun.log" 2>&1 && grep -q '^\[check\] 0 allocations inside 10 training steps' "$tmp/resrun.log" && ok ||
  fail "allocations in a step with residual blocks: $(grep -E 'check|error' "$tmp/resrun.log")"
# synchronized BatchNorm, gap and dropout allocate nothing in the step either
"$mpiexec" -n 2 --oversubscribe "$nnprec" train --model seq:1x28x28/conv:4:3/bn/relu/gap/dropout:0.2/dense:10 \
  --steps 10 --train-limit 200 --test-limit 50 --verbose > "$tmp/bnrun.log" 2>&1 &&
  grep -q '^\[check\] 0 allocations inside 10 training steps' "$tmp/bnrun.log" && ok ||
  fail "allocations in a step with bn: $(grep -E 'check|error' "$tmp/bnrun.log")"
# --precond with lars: one warning line (the trust ratio divides the multipliers out);
# --quiet keeps only the final [done] line on stdout
"$nnprec" train --optim lars --precond static --train-limit 64 --test-limit 10 --steps 1 --quiet \
  > "$tmp/lars.out" 2> "$tmp/lars.err" && [ "$(grep -c '^\[warn\]  --precond static with --optim lars: LARS' "$tmp/lars.err")" = 1 ] &&
  ok || fail "--precond with lars: want one warning, got: $(cat "$tmp/lars.err")"
[ "$(wc -l < "$tmp/lars.out")" = 1 ] && grep -q '^\[done\]  1 steps in .* final test loss [0-9.]* accuracy [0-9.]*%$' "$tmp/lars.out" &&
  ok || fail "--quiet: want the [done] line alone, got: $(cat "$tmp/lars.out")"
# a loss that grows 100x over its lowest (moving average) is warned about once, naming the
# step, before it stops being finite; losses of 1e4 and more print in scientific notation
"$nnprec" train --train-limit 640 --test-limit 100 --steps 40 --log-every 1 --lr 1e4 \
  > "$tmp/div.out" 2> "$tmp/div.err"
warn_step=$(sed -n 's/^\[warn\]  step \([0-9]*\): the training loss has grown to .*, over 100x its lowest .*$/\1/p' "$tmp/div.err")
div_step=$(sed -n 's/^nnprec: error: training diverged at step \([0-9]*\):.*/\1/p' "$tmp/div.err")
[ "$(grep -c '^\[warn\]' "$tmp/div.err")" = 1 ] && [ -n "$warn_step" ] && [ -n "$div_step" ] &&
  [ "$warn_step" -lt "$div_step" ] && ok || fail "no growth warning before the divergence: $(cat "$tmp/div.err")"
grep -q "^\[train\] .* step $warn_step/40 loss [0-9]\.[0-9]\{4\}e+[0-9]* acc" "$tmp/div.out" && ok ||
  fail "a large loss is not in scientific notation: $(grep "step $warn_step/" "$tmp/div.out")"
# a loss that grows large, swings and stays finite: one warning, no long fixed-point numbers
"$nnprec" train --model mlp:784-64-10 --train-limit 640 --test-limit 100 --steps 40 --log-every 1 \
  --lr 3 > "$tmp/big.out" 2> "$tmp/big.err" || fail "--lr 3 run: $(tail -2 "$tmp/big.err")"
[ "$(grep -c '^\[warn\]  step [0-9]*: the training loss has grown' "$tmp/big.err")" = 1 ] && ok ||
  fail "want one growth warning: $(cat "$tmp/big.err")"
grep -q '^\[train\] .* loss [0-9]\.[0-9]\{4\}e+[0-9]* acc' "$tmp/big.out" &&
  ! grep -qE 'loss [0-9]{5,}\.' "$tmp/big.out" && ok || fail "large losses in fixed notation: $(cat "$tmp/big.out")"
# SIGTERM without --out: not the "checkpointed, resume me" code 75, since nothing was saved
"$nnprec" train --train-limit 640 --test-limit 100 --steps 1000000 --quiet 2> "$tmp/sig.err" &
sleep 2; kill -TERM $!; wait $!; rc=$?
[ "$rc" = 1 ] && grep -q '^nnprec: error: stopped by SIGTERM after step [0-9]*; without --out nothing was saved$' \
  "$tmp/sig.err" && ok || fail "SIGTERM without --out: exit $rc, $(cat "$tmp/sig.err")"
touch "$tmp/stale-stop"
expect 2 "--stop-file $tmp/stale-stop exists already" "$mpiexec" -n 2 --oversubscribe "$nnprec" train \
  --stop-file "$tmp/stale-stop" --out "$tmp/stale"
expect 1 "$tmp/nowhere" "$nnprec" train --data "$tmp/nowhere"
# a model far larger than the machine's memory: a message before allocating (calloc would
# succeed and the kernel kill the process once the pages are touched)
expect 1 "at batch 64 needs [0-9.]* GB for parameters, activations and workspace; this machine has" \
  "$nnprec" train --model seq:1x28x28/conv:1000000:3/dense:10 --train-limit 64 --test-limit 10
expect 1 "needs more memory than can be addressed" "$nnprec" stats --model seq:100000x100000x100000/dense:10
# a model whose input does not match the data
expect 2 "expects 100 input values" "$nnprec" train --model mlp:100-10 --train-limit 64 --test-limit 10
# bad data on every rank of 2: one message, every rank exits non-zero, nobody hangs
expect 1 "$tmp/nowhere" "$mpiexec" -n 2 --oversubscribe "$nnprec" train --data "$tmp/nowhere"
# a failure on rank 1 only: rank 1 reports it, rank 0 stops too
NNPREC_FAULT_LOAD_RANK=1 expect 1 "rank 1.*injected" "$mpiexec" -n 2 --oversubscribe "$nnprec" train --train-limit 64
# replicas that drift apart are caught at the next check, naming the step, on every rank
NNPREC_FAULT_DRIFT=1:12 expect 1 "replicas diverged at step 15" "$mpiexec" -n 2 --oversubscribe \
  "$nnprec" train --train-limit 640 --test-limit 100 --steps 40 --check-replicas 5
# with --allreduce shm a node's ranks share one copy of the parameters: the check compares
# the nodes' copies (here each rank a "node" of its own), caught once the drift is stored
NNPREC_SHM_NODE_RANKS=1 NNPREC_FAULT_DRIFT=1:12 expect 1 "replicas diverged at step 15" \
  "$mpiexec" -n 2 --oversubscribe "$nnprec" train \
  --train-limit 640 --test-limit 100 --steps 40 --check-replicas 5 --allreduce shm
# a diverging run (far too large a step) stops every rank at the first non-finite loss or
# parameters (the optimizer step's own check) with one message, logs that step, and keeps
# only checkpoints with finite parameters
nan_args=(train --train-limit 640 --test-limit 100 --steps 40 --log-every 10 --checkpoint-every 1)
expect 1 "training diverged at step [0-9]*: the \(loss is no longer finite\|optimizer step left non-finite parameters\)" \
  "$mpiexec" -n 2 --oversubscribe "$nnprec" "${nan_args[@]}" --lr 1e4 --out "$tmp/div"
tail -1 "$tmp/div/train.csv" | grep -qi ',-\?nan,' && ok || fail "the diverged step is not in train.csv: $(tail -1 "$tmp/div/train.csv")"
# (its parameter datasets: the optimizer's buffers may hold an inf already)
ck="$tmp/div/$(cat "$tmp/div/latest")"
ds=$(h5ls -r "$ck" | awk '$2 == "Dataset" && $1 !~ /^\/(optimizer|precond)/ { printf " -d %s", $1 }')
[ -f "$ck" ] && [ -n "$ds" ] && ! grep -qiw 'nan\|inf' <<< "$(h5dump $ds "$ck")" &&
  ok || fail "the latest checkpoint after divergence is missing or not finite: $(grep -iw 'nan\|inf' <<< "$(h5dump $ds "$ck")" | head -3)"
# parameters that overflow before the loss does (the float step size is inf): no checkpoint
expect 1 "training diverged at step 1: the optimizer step left non-finite parameters (nan or inf), first in conv1.weight" "$mpiexec" -n 2 \
  --oversubscribe "$nnprec" "${nan_args[@]}" --lr 1e39 --out "$tmp/inf" --allreduce shm
[ ! -e "$tmp/inf/latest" ] && ! ls "$tmp/inf"/ckpt-* > /dev/null 2>&1 && ok || fail "a non-finite checkpoint was written: $(ls "$tmp/inf")"
# rank 0 cannot write its CSV files (a full disk: train.csv is /dev/full): every rank stops at
# the next step, after checkpointing it
mkdir -p "$tmp/full" && ln -s /dev/full "$tmp/full/train.csv"
expect 1 "cannot write $tmp/full/train.csv: No space left on device; step 2 was checkpointed" \
  "$mpiexec" -n 2 --oversubscribe "$nnprec" train --train-limit 640 --test-limit 100 --steps 20 \
  --log-every 1 --out "$tmp/full"
[ "$(cat "$tmp/full/latest" 2>/dev/null)" = ckpt-00000002.h5 ] && ok || fail "no checkpoint after the failed CSV write: $(ls "$tmp/full")"
# a file size limit (ulimit -f) smaller than the checkpoint: an error, not death by SIGXFSZ
expect 1 "ckpt-00000002.h5.tmp cannot hold [0-9]* bytes: File too large" bash -c 'ulimit -f 16384; exec "$0" "$@"' \
  "$nnprec" train --model mlp:784-1024x4-10 --train-limit 512 --test-limit 100 --steps 2 --out "$tmp/fsize"
# truncated data file: a clear message naming the file
mkdir -p "$tmp/trunc"
for f in /usr/share/datasets/fashion-mnist/*; do cp "$f" "$tmp/trunc/"; done
head -c 100000 /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz > "$tmp/trunc/train-images-idx3-ubyte.gz"
expect 1 "train-images-idx3-ubyte.gz" "$nnprec" train --data "$tmp/trunc"
# a test set that does not fit the training set: other image size, labels beyond the
# model's outputs, no samples (each used to be evaluated: a heap overflow, a garbage
# accuracy, nan); raw IDX files written here: magic, count, rows, columns, then the bytes
be32() { printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 >> 24 & 255)) $(($1 >> 16 & 255)) \
  $(($1 >> 8 & 255)) $(($1 & 255)))"; }
idx_test() { # DIR N SIDE LABEL
  mkdir -p "$1"
  ln -sf /usr/share/datasets/fashion-mnist/train-* "$1/"
  { be32 2051; be32 "$2"; be32 "$3"; be32 "$3"; head -c $(($2 * $3 * $3)) /dev/zero; } \
    > "$1/t10k-images-idx3-ubyte"
  { be32 2049; be32 "$2"; for ((i = 0; i < $2; i++)); do printf "$(printf '\\x%02x' "$4")"; done; } \
    > "$1/t10k-labels-idx1-ubyte"
}
idx_test "$tmp/t32" 10 32 1
expect 1 "test images in $tmp/t32 are 1x32x32, training images 1x28x28" "$mpiexec" -n 2 \
  --oversubscribe "$nnprec" train --train-limit 64 --steps 1 --data "$tmp/t32"
idx_test "$tmp/tlab" 10 28 200
expect 1 "model lenet has 10 outputs but the test labels in $tmp/tlab go up to 200" \
  "$nnprec" train --train-limit 64 --steps 1 --data "$tmp/tlab"
idx_test "$tmp/t0" 0 28 0
expect 1 "the test set in $tmp/t0 is empty" "$nnprec" train --train-limit 64 --steps 1 --data "$tmp/t0"

# a short real run writes its CSV files with the documented columns
timeout 120 "$mpiexec" -n 2 --oversubscribe "$nnprec" train --train-limit 640 --test-limit 200 \
  --epochs 2 --log-every 2 --out "$tmp/run" --verbose > "$tmp/run.log" 2>&1 || fail "short run failed: $(tail -3 "$tmp/run.log")"
head -1 "$tmp/run/train.csv" | grep -q '^step,epoch,train_loss,train_acc,lr,samples_per_s,wall_s$' && ok || fail "train.csv header"
head -1 "$tmp/run/eval.csv" | grep -q '^step,epoch,test_loss,test_acc,wall_s$' && ok || fail "eval.csv header"
# 640 samples / (64 per rank x 2 ranks) = 5 steps per epoch, 10 steps, a row every 2
[ "$(tail -n +2 "$tmp/run/train.csv" | wc -l)" = 5 ] && ok || fail "train.csv rows: $(cat "$tmp/run/train.csv")"
[ "$(tail -n +2 "$tmp/run/eval.csv" | wc -l)" = 2 ] && ok || fail "eval.csv should have one row per epoch"
grep -q 'allreduce' "$tmp/run/timing.csv" && ok || fail "timing.csv"
# ranks.csv: one row per rank; together they computed every sample of the 10 steps
awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "samples") c = i; next }
         { n++; s += $c } END { exit !(c && n == 2 && s == 1280) }' "$tmp/run/ranks.csv" &&
  ok || fail "ranks.csv: $(cat "$tmp/run/ranks.csv")"
grep -q '^\[time\]  local work .* slowest rank [01] ' "$tmp/run.log" && ok || fail "slowest-rank line"
# a fresh run into that folder (it holds the run's checkpoint) is refused and changes nothing
ls -l --time-style=full-iso "$tmp/run" > "$tmp/run.before"
expect 2 "--out $tmp/run already holds another run's checkpoints (latest $tmp/run/ckpt-[0-9]*.h5): continue it with --resume auto" \
  "$mpiexec" -n 2 --oversubscribe "$nnprec" train --train-limit 640 --test-limit 100 --steps 3 --out "$tmp/run"
ls -l --time-style=full-iso "$tmp/run" | cmp -s - "$tmp/run.before" && ok || fail "the refused run changed $tmp/run"

# nnprec bench --allreduce-mb: every rank takes part, rank 0 prints one row per size; the
# bench checks each collective's result (exact sums), so the 3-rank runs test the ring too
timeout 60 "$mpiexec" -n 2 --oversubscribe "$nnprec" bench --allreduce-mb 0.25,1 --reps 3 \
  > "$tmp/arbench.log" 2>&1 || fail "bench --allreduce-mb failed: $(tail -3 "$tmp/arbench.log")"
grep -q '^allreduce over 2 ranks' "$tmp/arbench.log" && ok || fail "bench --allreduce-mb header"
# (shm1: shm with every rank a "node" of its own, summed by the across-nodes allreduce)
for c in reduce-scatter allgather shm shm1; do
  node_ranks=; [ "$c" = shm1 ] && node_ranks=1
  NNPREC_SHM_NODE_RANKS=$node_ranks timeout 60 "$mpiexec" -n 3 --oversubscribe "$nnprec" bench \
    --allreduce-mb 0.1,0.5 --reps 2 --collective "${c%1}" 2>&1 |
    grep -cE '^ +(0\.100|0\.500) ' | grep -q '^2$' && ok || fail "bench --collective $c on 3 ranks"
done
[ "$(grep -cE '^ +(0\.250|1\.000) +[0-9.]+ +[0-9.]+ +[0-9.]+$' "$tmp/arbench.log")" = 2 ] && ok ||
  fail "bench --allreduce-mb rows: $(cat "$tmp/arbench.log")"
# nnprec bench --layers: one row per layer of the network (LeNet: 12), GFLOP/s and the share
# of cblas_sgemm's rate on the layer's own product on the 5 with weights, then the total
"$nnprec" bench --layers --model lenet --batch 4 --reps 3 > "$tmp/lbench.log" 2>&1 ||
  fail "bench --layers failed: $(tail -3 "$tmp/lbench.log")"
rows='^ ?[0-9]+ [a-z].* -> [0-9x]+ +[0-9.]+ +[0-9.]+ +[0-9.]+%'
[ "$(grep -cE "$rows" "$tmp/lbench.log")" = 12 ] && ok || fail "bench --layers rows: $(cat "$tmp/lbench.log")"
[ "$(grep -E "$rows" "$tmp/lbench.log" | grep -cE '(conv|dense) .*% +[0-9]+\.[0-9]+ +[0-9]+%$')" = 5 ] && ok ||
  fail "bench --layers GFLOP/s and sgemm columns: $(cat "$tmp/lbench.log")"
grep -qE '^cblas_sgemm on 1024x1024x1024 in this run: [0-9.]+ GFLOP/s; convolutions at [0-9]+-[0-9]+% of it$' \
  "$tmp/lbench.log" && ok || fail "bench --layers: no sgemm yardstick line: $(cat "$tmp/lbench.log")"
grep -q '^total: .* ms per forward + backward of batch 4' "$tmp/lbench.log" && ok || fail "bench --layers total"
grep -qE '^layers run as one .*: 0\+1\+2, 3\+4\+5$' "$tmp/lbench.log" && ok ||
  fail "bench --layers: LeNet's fused conv + relu + pooling not listed: $(cat "$tmp/lbench.log")"
# each convolution's kernels: direct (or GEMM without AVX2) for LeNet's two; forced GEMM says so
grep -qE '^convolution kernels: 0 (direct|gemm), 3 (direct|gemm) \(' "$tmp/lbench.log" && ok ||
  fail "bench --layers: no kernel line: $(cat "$tmp/lbench.log")"
# ... and the instruction set of their products: the CPU's widest unless NNPREC_CONV_ISA asks
if grep -q avx512f /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then want=AVX-512; elif grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then want=AVX2; else want=none; fi
grep -qE "^convolution kernels: .*\(direct and winograd products in $want;" "$tmp/lbench.log" && ok ||
  fail "bench --layers: the products' ISA is not $want: $(grep kernels "$tmp/lbench.log")"
[ "$want" = none ] || want=AVX2
NNPREC_CONV_ISA=avx2 "$nnprec" bench --layers --model lenet --batch 4 --reps 1 > "$tmp/isa.log" 2>&1
grep -qE "^convolution kernels: .*\(direct and winograd products in $want;" "$tmp/isa.log" && ok ||
  fail "bench --layers: NNPREC_CONV_ISA=avx2 not followed: $(grep kernels "$tmp/isa.log")"
NNPREC_CONV_ISA=avx1024 "$nnprec" bench --layers --model lenet --batch 4 --reps 1 > "$tmp/badisa.log" 2>&1
grep -q '^\[warn\]  NNPREC_CONV_ISA=avx1024 is not auto, avx2 or avx512: ignored (auto)$' \
  "$tmp/badisa.log" && ok || fail "an unknown NNPREC_CONV_ISA is not named: $(head -3 "$tmp/badisa.log")"
NNPREC_CONV_PATH=gemm "$nnprec" bench --layers --model lenet --batch 4 --reps 1 > "$tmp/gemmpath.log" 2>&1
grep -qE '^convolution kernels: 0 gemm, 3 gemm \(' "$tmp/gemmpath.log" && ok ||
  fail "bench --layers: forced GEMM not named: $(grep kernels "$tmp/gemmpath.log")"
NNPREC_CONV_PATH=winogard "$nnprec" bench --layers --model lenet --batch 4 --reps 1 > "$tmp/badpath.log" 2>&1
grep -q '^\[warn\]  NNPREC_CONV_PATH=winogard is not auto, gemm, direct or winograd: ignored (auto)$' \
  "$tmp/badpath.log" && ok || fail "an unknown NNPREC_CONV_PATH is not named: $(head -3 "$tmp/badpath.log")"
grep -qE '^peak resident memory: [1-9][0-9]*\.[0-9] MB' "$tmp/lbench.log" && ok || fail "bench --layers: no peak memory line"
expect 2 "--reps in 1..1000" "$nnprec" bench --layers --reps 0
expect 2 "give one of --layers, --optim and --allreduce-mb" "$nnprec" bench --layers --allreduce-mb 1
expect 2 "--collective goes with --allreduce-mb" "$nnprec" bench --collective shm
expect 2 "(4 bytes to 4096 MiB), got '1e-9'" "$nnprec" bench --allreduce-mb 1e-9
expect 2 "--chunk-mb >= 1/256" "$nnprec" bench --allreduce-mb 1 --chunk-mb 1e-6
grep -q '^\[train\] epoch .* samples/s ETA' "$tmp/run.log" && ok || fail "progress lines"
! grep -q '^\[warn\]' "$tmp/run.log" && ok || fail "a warning in a plain run: $(grep warn "$tmp/run.log")"
grep -q '1 BLAS thread per rank\|OPENBLAS_NUM_THREADS' "$tmp/run.log" && ok || fail "BLAS thread note"
# the allocation counter (nnp_malloc/nnp_calloc) does not move during training steps
grep -q '^\[check\] 0 allocations inside 10 training steps' "$tmp/run.log" && ok || fail "allocations in the step: $(grep check "$tmp/run.log")"
# without --verbose no [check] line; a phase the run never entered (fused: no allreduce
# thread, no balancing, no preconditioner) has no [time] row
"$mpiexec" -n 2 --oversubscribe "$nnprec" train --train-limit 640 --test-limit 200 --steps 5 \
  > "$tmp/plain.log" 2>&1 || fail "plain run failed: $(tail -3 "$tmp/plain.log")"
! grep -q '^\[check\]' "$tmp/plain.log" && grep -q '^\[time\]  forward ' "$tmp/plain.log" &&
  ! grep -Eq '^\[time\]  (ar_thread|balance|precond) ' "$tmp/plain.log" && ok ||
  fail "console without --verbose: $(grep -E 'check|time' "$tmp/plain.log")"

# --val-split: N samples held out by the seed, the same at any rank count, evaluated with the
# test set (eval.csv gains val_loss,val_acc); a resume must keep the same N
expect 2 "--val-split must be >= 0, got -1" "$nnprec" train --val-split -1
expect 2 "--val-split 300 leaves no training samples (the training set has 300)" \
  "$nnprec" train --train-limit 300 --test-limit 10 --val-split 300
val_args=(train --train-limit 700 --test-limit 100 --val-split 100 --global-batch 30 --steps 12
          --eval-every 6 --log-every 6)
for np in 1 2; do
  timeout 120 "$mpiexec" -n $np --oversubscribe "$nnprec" "${val_args[@]}" --out "$tmp/val$np" \
    > "$tmp/val$np.log" 2>&1 || fail "--val-split run on $np ranks failed: $(tail -3 "$tmp/val$np.log")"
done
head -1 "$tmp/val1/eval.csv" | grep -q '^step,epoch,test_loss,test_acc,wall_s,val_loss,val_acc$' &&
  ok || fail "eval.csv header with --val-split: $(head -1 "$tmp/val1/eval.csv")"
[ "$(cut -d, -f1,7 "$tmp/val1/eval.csv" | tail -n +2)" = "$(cut -d, -f1,7 "$tmp/val2/eval.csv" | tail -n +2)" ] &&
  [ "$(tail -n +2 "$tmp/val1/eval.csv" | wc -l)" = 2 ] && ok ||
  fail "val_acc differs between 1 and 2 ranks: $(cat "$tmp/val1/eval.csv" "$tmp/val2/eval.csv")"
grep -q '^\[eval\] .* test acc [0-9.]*% val loss [0-9.]* val acc [0-9.]*%$' "$tmp/val2.log" && ok ||
  fail "no val accuracy in the eval lines"
grep -q '^\[setup\] data .*: 600 training samples' "$tmp/val2.log" && ok || fail "600 training samples left"
expect 2 "was written with --val-split 100, this run has 50" "$nnprec" "${val_args[@]}" \
  --val-split 50 --steps 20 --out "$tmp/val1" --resume auto
# --test-every: the evaluations in between are of the validation set only (test columns nan,
# the same val_acc as with the test set every time), and the last step has both
expect 2 "--test-every needs --val-split" "$nnprec" train --test-every 5
timeout 120 "$nnprec" "${val_args[@]}" --steps 18 --test-every 12 --out "$tmp/valt" \
  > "$tmp/valt.log" 2>&1 || fail "--test-every run failed: $(tail -3 "$tmp/valt.log")"
[ "$(cut -d, -f1,3,4 "$tmp/valt/eval.csv" | tail -n +2 | tr '\n' ' ')" = "6,nan,nan 12,$(sed -n 3p "$tmp/val1/eval.csv" | cut -d, -f3,4) 18,$(tail -1 "$tmp/valt/eval.csv" | cut -d, -f3,4) " ] &&
  [ "$(cut -d, -f1,7 "$tmp/valt/eval.csv" | head -3)" = "$(cut -d, -f1,7 "$tmp/val1/eval.csv" | head -3)" ] &&
  tail -1 "$tmp/valt/eval.csv" | grep -qv nan && ok ||
  fail "--test-every 12 evaluations: $(cat "$tmp/valt/eval.csv")"
grep -q '^\[eval\]  epoch [0-9.]* step 6 val loss' "$tmp/valt.log" && ok ||
  fail "a validation-only evaluation line: $(grep eval "$tmp/valt.log")"

# --lr-scaling: --lr is for --base-batch and scaled to the global batch; --warmup-epochs in
# steps per epoch, rounded up; both printed at the start
expect 2 "--lr-scaling must be none, linear or sqrt, got 'cube'" "$nnprec" train --lr-scaling cube
expect 2 "--base-batch goes with --lr-scaling linear or sqrt" "$nnprec" train --base-batch 64
expect 2 "--base-batch must be >= 1, got 0" "$nnprec" train --lr-scaling sqrt --base-batch 0
expect 2 "give --warmup (steps) or --warmup-epochs, not both" "$nnprec" train --warmup 3 --warmup-epochs 1
expect 2 "--warmup-epochs must be in \[0, 1e6\], got -1" "$nnprec" train --warmup-epochs -1
expect 2 "--min-lr 0.05 is above the scaled learning rate 0.00625" "$nnprec" train --schedule cosine \
  --lr 0.1 --min-lr 0.05 --lr-scaling linear --base-batch 1024
for o in val-split lr-scaling base-batch warmup-epochs; do
  grep -q -- "--$o " "$tmp/help" && ok || fail "--help does not list --$o"
done
timeout 60 "$mpiexec" -n 2 --oversubscribe "$nnprec" train --train-limit 1000 --test-limit 100 \
  --global-batch 64 --lr 0.1 --lr-scaling sqrt --warmup-epochs 0.3 --steps 6 --log-every 1 \
  --out "$tmp/lrs" > "$tmp/lrs.log" 2>&1 || fail "--lr-scaling run failed: $(tail -3 "$tmp/lrs.log")"
# 1000 / 64 = 16 steps per epoch, 0.3 epochs = 4.8 -> 5 steps; 0.1 * sqrt(64/256) = 0.05
grep -q '^\[setup\] learning rate 0.05 at global batch 64 (--lr 0.1 for batch 256, --lr-scaling sqrt); warmup 5 steps' \
  "$tmp/lrs.log" && ok || fail "effective LR line: $(grep 'learning rate' "$tmp/lrs.log")"
[ "$(cut -d, -f5 "$tmp/lrs/train.csv" | tail -n +2 | tr '\n' ' ')" = "0.01 0.02 0.03 0.04 0.05 0.05 " ] && ok ||
  fail "warmup to the scaled rate: $(cut -d, -f5 "$tmp/lrs/train.csv" | tr '\n' ' ')"

# --noise-scale: train.csv gains g2,trsigma,noise_scale, the training itself is unchanged (the
# same losses bit for bit), and one rank's two halves of a batch of 64 are the same small
# batches as two ranks' shares of it, so the estimates agree up to float rounding
expect 2 "--noise-ema goes with --noise-scale" "$nnprec" train --noise-ema 0.5
expect 2 "--noise-ema must be in (0, 1\], got 0" "$nnprec" train --noise-scale --noise-ema 0
ns_args=(train --train-limit 2000 --test-limit 100 --global-batch 64 --steps 30 --log-every 10 --verbose)
for np in 1 2; do
  for v in plain noise; do
    extra=(); [ $v = noise ] && extra=(--noise-scale --noise-ema 0.1)
    timeout 120 "$mpiexec" -n $np --oversubscribe "$nnprec" "${ns_args[@]}" "${extra[@]}" \
      --out "$tmp/ns-$v$np" > "$tmp/ns-$v$np.log" 2>&1 ||
      fail "--noise-scale run ($v, $np ranks) failed: $(tail -3 "$tmp/ns-$v$np.log")"
  done
  cmp -s <(cut -d, -f1-5 "$tmp/ns-plain$np/train.csv") <(cut -d, -f1-5 "$tmp/ns-noise$np/train.csv") &&
    ok || fail "--noise-scale changed the training on $np ranks"
  grep -q '^\[check\] 0 allocations inside 30 training steps' "$tmp/ns-noise$np.log" && ok ||
    fail "allocations in the step with --noise-scale: $(grep check "$tmp/ns-noise$np.log")"
done
head -1 "$tmp/ns-noise2/train.csv" | grep -q '^step,epoch,train_loss,train_acc,lr,samples_per_s,wall_s,g2,trsigma,noise_scale$' &&
  ok || fail "train.csv header with --noise-scale: $(head -1 "$tmp/ns-noise2/train.csv")"
# the noise-scale columns (g2, trsigma, noise_scale) of two train.csv agree to 1e-3, 3 rows
ns_agree() {
  paste -d, "$1" "$2" | awk -F, '
    NR > 1 { n++; for (c = 8; c <= 10; c++) { d = $c - $(c + 10); if (d < 0) d = -d
             if (!($c > 0) || d > 1e-3 * ($c < 0 ? -$c : $c)) bad = 1 } }
    END { exit !(n == 3 && !bad) }'
}
ns_agree "$tmp/ns-noise1/train.csv" "$tmp/ns-noise2/train.csv" && ok ||
  fail "noise scale at 1 rank (halves) and 2 ranks differ: $(cat "$tmp/ns-noise1/train.csv" "$tmp/ns-noise2/train.csv")"
# one rank's extra half-batch pass is named, with the cheaper way to the same halves: two
# micro-shards of --deterministic, whose estimates agree with the halves' (not named at 2
# ranks, nor when --deterministic is given)
grep -q '^\[note\]  --noise-scale on one rank runs an extra forward and backward .* --deterministic --micro-shard 32 ' \
  "$tmp/ns-noise1.log" && ok || fail "no note on one rank's extra pass: $(grep note "$tmp/ns-noise1.log")"
grep -q 'noise-scale on one rank' "$tmp/ns-noise2.log" && fail "the one-rank note at 2 ranks" || ok
timeout 120 "$nnprec" "${ns_args[@]}" --noise-scale --noise-ema 0.1 --deterministic --micro-shard 32 \
  --out "$tmp/ns-det1" > "$tmp/ns-det1.log" 2>&1 || fail "--deterministic --noise-scale: $(tail -3 "$tmp/ns-det1.log")"
grep -q 'noise-scale on one rank' "$tmp/ns-det1.log" && fail "the one-rank note with --deterministic" || ok
ns_agree "$tmp/ns-noise1/train.csv" "$tmp/ns-det1/train.csv" && ok ||
  fail "noise scale at 1 rank: halves and two micro-shards differ: $(cat "$tmp/ns-noise1/train.csv" "$tmp/ns-det1/train.csv")"
grep -q '^\[train\] .* samples/s noise scale [0-9.e+]* ETA' "$tmp/ns-noise2.log" && ok ||
  fail "no noise scale in the progress lines"
expect 2 "was written with --noise-scale and this run is without it" "$nnprec" "${ns_args[@]}" \
  --steps 40 --out "$tmp/ns-noise1" --resume auto

finish
