#!/usr/bin/env bash
# Command-line behaviour of `nnprec stats`: help, a synthetic run with --csv, collapse mode,
# option errors (exit 2, one line), and a launch under mpiexec.
# usage: cli_stats.sh NNPREC [MPIEXEC]
set -uo pipefail
nnprec=$1 mpiexec=${2:-}
source "$(dirname "$0")/cli_lib.sh"

# --help lists every option with its default, and exits 0
"$nnprec" stats --help > "$tmp/help" || fail "stats --help exit code"
for o in model depth width init act batch synthetic data grad precond repeat seed collapse \
         inits collapse-ratio csv; do
  grep -q -- "--$o " "$tmp/help" || fail "--help does not list --$o"
done
grep -q -- '--batch N .*\[256\]' "$tmp/help" && ok || fail "--help does not show the --batch default"
"$nnprec" --help | grep -q stats && ok || fail "nnprec --help does not list stats"

# a synthetic run: one CSV row per trainable layer under the header
if "$nnprec" stats --depth 5 --width 32 --batch 16 --init kaiming-normal --synthetic \
     --precond static --csv "$tmp/s.csv" > "$tmp/out" 2> "$tmp/err"; then
  head -1 "$tmp/s.csv" | grep -qx 'layer,name,in_mean,in_std,pre_std,post_std,wgrad_std,dx_std,pgrad_std' \
    && ok || fail "CSV header: $(head -1 "$tmp/s.csv")"
  [ "$(wc -l < "$tmp/s.csv")" = 6 ] && ok || fail "CSV has $(wc -l < "$tmp/s.csv") lines, want 6"
  [ "$(grep -c '^ *[0-9]\+  fc' "$tmp/out")" = 5 ] && ok || fail "stdout rows: $(cat "$tmp/out")"
else
  fail "synthetic run failed: $(cat "$tmp/err")"
fi
# repeats add a spread column per value
"$nnprec" stats --model mlp:16-8-4 --repeat 3 --batch 8 --csv "$tmp/r.csv" > /dev/null 2>&1 \
  && head -1 "$tmp/r.csv" | grep -q 'in_std,in_std_sd' && ok || fail "--repeat CSV lacks _sd columns"
# collapse mode: normal:0.01 collapses, kaiming-normal does not
if "$nnprec" stats --collapse --depth 30 --width 64 --batch 32 \
     --inits kaiming-normal,normal:0.01 --csv "$tmp/c.csv" > "$tmp/out" 2> "$tmp/err"; then
  grep -q '^kaiming-normal,none,' "$tmp/c.csv" && ok || fail "kaiming collapsed: $(cat "$tmp/c.csv")"
  grep -q '^normal:0.01,[0-9]' "$tmp/c.csv" && ok || fail "normal:0.01 did not collapse: $(cat "$tmp/c.csv")"
else
  fail "collapse run failed: $(cat "$tmp/err")"
fi

# bn, gap and dropout: stats (also with the preconditioner) and bench --layers run
bnm=seq:1x28x28/conv:4:3/bn/relu/gap/dropout:0.2/dense:16/bn/relu/dense:10
"$nnprec" stats --model $bnm --batch 16 --synthetic > "$tmp/bn.out" 2>&1 &&
  [ "$(grep -c '^ *[0-9]\+  bn[12] ' "$tmp/bn.out")" = 2 ] && ok || fail "stats on bn: $(cat "$tmp/bn.out")"
"$nnprec" bench --layers --model $bnm --batch 16 --reps 2 > "$tmp/bnb.out" 2>&1 &&
  grep -q 'batchnorm2d 4' "$tmp/bnb.out" && grep -q 'dropout p=0.2' "$tmp/bnb.out" &&
  grep -qE '^ *[0-9]+ batchnorm2d 4 .*% +[0-9]+\.[0-9]+$' "$tmp/bnb.out" &&
  grep -qE '^memory bandwidth .*: [0-9.]+ GB/s; batchnorm layers at [0-9.]+-[0-9.]+ GB/s' "$tmp/bnb.out" && ok ||
  fail "bench --layers on bn: $(tail -3 "$tmp/bnb.out")"
# bench --optim: a row for each optimizer, the layer-wise ones with their extra time
"$nnprec" bench --optim --model $bnm --batch 16 --reps 3 > "$tmp/bo.out" 2>&1 &&
  grep -q '^forward + backward: [0-9.]* ms$' "$tmp/bo.out" && grep -q '^sgd  *[0-9.]*  *$' "$tmp/bo.out" &&
  grep -q '^lars  *[0-9.]*  *-\?[0-9.]* (sgd)  *-\?[0-9.]*%$' "$tmp/bo.out" &&
  grep -q '^lamb  *[0-9.]*  *-\?[0-9.]* (adam)  *-\?[0-9.]*%$' "$tmp/bo.out" && ok ||
  fail "bench --optim: $(cat "$tmp/bo.out")"
expect 2 "give one of --layers, --optim and --allreduce-mb" "$nnprec" bench --optim --layers
for pc in static dynamic; do
  "$nnprec" stats --model $bnm --batch 16 --synthetic --precond $pc > "$tmp/bnp.out" 2>&1 &&
    grep -q 'pgrad_std' "$tmp/bnp.out" && [ "$(grep -c '^ *[0-9]\+  bn[12] .* [0-9.e+-]\+$' "$tmp/bnp.out")" = 2 ] &&
    ok || fail "stats --precond $pc on bn: $(cat "$tmp/bnp.out")"
done
expect 2 "--precond-formula seed is not defined for BatchNorm layers" "$nnprec" stats --model $bnm \
  --precond static --precond-formula seed
# residual blocks: stats names the shortcut's tensors, with and without the preconditioner
"$nnprec" stats --model resnet8 --batch 8 --synthetic > "$tmp/res.out" 2>&1 &&
  grep -q ' layers\.5\.shortcut\.0 ' "$tmp/res.out" && ok || fail "stats on resnet8: $(tail -3 "$tmp/res.out")"
for m in resnet8 resmlp:784-32x3-10 resmlp-bn:784-32x3-10; do
  for pc in static dynamic; do
    "$nnprec" stats --model $m --batch 8 --synthetic --precond $pc > "$tmp/resp.out" 2>&1 &&
      grep -q 'pgrad_std' "$tmp/resp.out" && ! grep -qi 'nan\|inf' "$tmp/resp.out" && ok ||
      fail "stats --model $m --precond $pc: $(tail -3 "$tmp/resp.out")"
  done
done
expect 2 "unknown option '--bogus'" "$nnprec" stats --bogus 1
expect 2 "give --model SPEC or --depth D" "$nnprec" stats
expect 2 "--grad must be normal or loss" "$nnprec" stats --depth 3 --grad foo
expect 2 "--batch must be" "$nnprec" stats --depth 3 --batch 0
expect 2 "not both" "$nnprec" stats --depth 3 --synthetic --data /nonexistent
expect 1 "cannot open" "$nnprec" stats --depth 3 --width 8 --batch 4 --csv /nonexistent/dir/x.csv
# options that would be ignored are errors
expect 2 "--act applies to mlp: models and --depth only; lenet names" "$nnprec" stats --model lenet --act tanh
expect 2 "--width goes with --depth" "$nnprec" stats --model lenet --width 10
expect 2 "stats --data reads an IDX folder, not an HDF5 file" "$nnprec" stats --model lenet --data x.h5

# under mpiexec every rank starts; rank 0 alone prints the table
if [ -n "$mpiexec" ]; then
  if timeout 120 "$mpiexec" -n 2 --oversubscribe "$nnprec" stats --depth 4 --width 16 --batch 8 \
       > "$tmp/out" 2> "$tmp/err"; then
    [ "$(grep -c '^# nnprec stats' "$tmp/out")" = 1 ] && ok || fail "mpiexec -n 2: $(cat "$tmp/out")"
  else
    fail "mpiexec -n 2 run failed: $(cat "$tmp/err")"
  fi
fi

finish cli_stats
