#!/usr/bin/env bash
# scripts/compare.py on made-up run folders whose answers are known: two seeds of one
# configuration (differing also in --out and --log-every, which do not make another
# configuration), a single run of another, an older folder with only command.txt, and one
# with no options at all (labelled by its folder name). Checks the table cells, the labels,
# the plot, and the error exits.
#
# usage: scripts_compare.sh PYTHON
set -uo pipefail
py=$1
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/tests/cli_lib.sh"
EXPECT_PREFIX=compare.py
cmp_py=$root/scripts/compare.py

# run DIR "STEP EPOCH ACC WALL; ...": eval.csv and train.csv with one row per evaluation
# (training loss 1 - accuracy)
run() {
  local d=$tmp/runs/$1
  mkdir -p "$d"
  echo "step,epoch,test_loss,test_acc,wall_s" > "$d/eval.csv"
  echo "step,epoch,train_loss,train_acc,lr,samples_per_s,wall_s" > "$d/train.csv"
  IFS=';' read -ra evs <<< "$2"
  for e in "${evs[@]}"; do
    set -- $e
    echo "$1,$2,0.5,$3,$4" >> "$d/eval.csv"
    echo "$1,$2,$(awk -v a="$3" 'BEGIN { print 1 - a }'),$3,0.01,100,$4" >> "$d/train.csv"
  done
}
# opts DIR OPTION...: an options.txt as nnprec writes it
opts() {
  local d=$tmp/runs/$1; shift
  { echo "# nnprec train options"; echo "# ranks: 2"; printf '%s\n' "$@"; } > "$d/options.txt"
}
# a: 80% at step 20 in both seeds (10 s and 12 s); final 85 and 83, best 85 and 84
run a-s1 "10 0.5 0.70 5; 20 1.0 0.80 10; 30 1.5 0.85 15"
opts a-s1 "--model lenet" "--init pytorch" "--precond none" "--optim sgd" "--lr 0.01" \
  "--seed 1" "--out runs/a-s1" "--log-every 10" "--normalize"
run a-s2 "10 0.5 0.60 6; 20 1.0 0.84 12; 30 1.5 0.83 18"
opts a-s2 "--model lenet" "--init pytorch" "--precond none" "--optim sgd" "--lr 0.01" \
  "--seed 2" "--out runs/a-s2" "--log-every 5" "--normalize"
# b: the seed init with the static preconditioner, 80% at its first evaluation
run b "10 0.5 0.82 4; 20 1.0 0.86 8; 30 1.5 0.87 12"
opts b "--model lenet" "--init seed" "--precond static" "--optim sgd" "--lr 0.01" \
  "--seed 1" "--out runs/b" "--log-every 10" "--normalize"
# c: only the command line (command.txt), another --lr; never reaches 80%
run c "10 0.5 0.50 4; 20 1.0 0.60 8; 30 1.5 0.70 12"
echo "build/nnprec train --init seed --precond dynamic --lr 0.05 --seed 3 --out runs/c --quiet" \
  > "$tmp/runs/c/command.txt"
# plain-s4: no options recorded: the folder name without its seed
run plain-s4 "10 0.5 0.79 3; 20 1.0 0.80 6"

out=$("$py" "$cmp_py" "$tmp"/runs/{a-s1,a-s2,b,c,plain-s4} --target 80)
rc=$?
echo "$out"
[ "$rc" = 0 ] && ok || fail "compare.py exit $rc"
row() { grep -F "| $1 |" <<< "$out"; }
row "init pytorch, precond none, lr 0.01" |
  grep -qF '| 2 | 84.00 ± 1.41 | 84.50 ± 0.71 | 2/2 | 20 ± 0 | 1.00 ± 0.00 | 11.0 ± 1.4 |' &&
  ok || fail "two seeds: $(row "init pytorch")"
row "init seed, precond static, lr 0.01" | grep -qF '| 1 | 87.00 | 87.00 | 1/1 | 10 | 0.50 | 4.0 |' &&
  ok || fail "one run: $(row "init seed, precond static")"
row "init seed, precond dynamic, lr 0.05" | grep -qF '| 1 | 70.00 | 70.00 | 0/1 | – | – | – |' &&
  ok || fail "command.txt run that never reaches the target: $(row "init seed, precond dynamic")"
row "plain" | grep -qF '| 1 | 80.00 | 80.00 | 1/1 | 20 | 1.00 | 6.0 |' && ok || fail "folder-name run: $(row plain)"
[ "$(grep -c '^| ' <<< "$out")" = 5 ] && ok || fail "want the header and 4 rows"
grep -qF "* init pytorch, precond none, lr 0.01: $tmp/runs/a-s1, $tmp/runs/a-s2" <<< "$out" && ok ||
  fail "the runs of a group are not listed"
[ -s "$tmp/runs/compare.png" ] && ok || fail "no compare.png next to the first run"
# with one configuration only --init and --precond are named; --plot puts the PNG elsewhere
out=$("$py" "$cmp_py" "$tmp/runs/a-s1" "$tmp/runs/a-s2" --plot "$tmp/two.png")
row "init pytorch, precond none" | grep -qF '| 2 | 84.00 ± 1.41 | 84.50 ± 0.71 | 1/2 | 30 | 1.50 | 15.0 |' &&
  ok || fail "one group at the default --target 85: $out"
[ -s "$tmp/two.png" ] && ok || fail "--plot not written"

# bad input: one line on stderr, exit 1 (files) or 2 (arguments)
mkdir -p "$tmp/empty"
expect 1 "$tmp/nowhere: no such run folder" "$py" "$cmp_py" "$tmp/nowhere"
expect 1 "$tmp/empty has no train.csv or eval.csv" "$py" "$cmp_py" "$tmp/runs/b" "$tmp/empty"
expect 1 "is not a directory" "$py" "$cmp_py" "$tmp/runs/b/eval.csv"
expect 2 "--target must be in (0, 100\], got 0" "$py" "$cmp_py" "$tmp/runs/b" --target 0
expect 2 "--target must be in (0, 100\], got 101" "$py" "$cmp_py" "$tmp/runs/b" --target 101
expect 2 "invalid float value: 'x'" "$py" "$cmp_py" "$tmp/runs/b" --target x
expect 2 "does not end in an image format" "$py" "$cmp_py" "$tmp/runs/b" --plot "$tmp/p.txt"
finish scripts_compare
