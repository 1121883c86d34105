#!/usr/bin/env bash
# The newcomer path of README.md, on a fresh copy of this checkout (its tracked files: no
# build/, no results/): scripts/demo.sh (installs what is missing, which in CI is nothing,
# builds, trains; with a small budget appended, which the demo passes on to nnprec train),
# then the next commands the demo prints, run exactly as printed (the second run reads the
# first one's options.txt, small budget included), then scripts/compare.py on both runs.
# Each step exits 0 and leaves what README says: train/eval CSVs, options.txt, checkpoints,
# the demo's own final line; a Markdown table naming both runs; results/compare.png.
# usage: newcomer.sh
set -uo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
source "$(dirname "$0")/cli_lib.sh"

clone=$tmp/clone
mkdir -p "$clone"
if git -C "$src" rev-parse --is-inside-work-tree > /dev/null 2>&1; then
  git -C "$src" ls-files -z | tar -C "$src" --null -T - --ignore-failed-read -cf - 2> /dev/null |
    tar -C "$clone" -xf -
else # a source tree without git: everything but the build and result folders
  tar -C "$src" --exclude=./build --exclude=./build-asan --exclude=./results -cf - . |
    tar -C "$clone" -xf -
fi
[ -x "$clone/scripts/demo.sh" ] || [ -f "$clone/scripts/demo.sh" ] || { fail "no scripts/demo.sh in the copy"; finish newcomer; }
cd "$clone" || exit 1

small=(--steps 40 --train-limit 2000 --test-limit 500 --eval-every 20)
t0=$SECONDS
bash scripts/demo.sh "${small[@]}" > demo.log 2>&1 || fail "scripts/demo.sh: $(tail -5 demo.log)"
echo "demo.sh (build included): $((SECONDS - t0)) s"
for f in train.csv eval.csv options.txt latest; do
  [ -s results/demo/$f ] && ok || fail "results/demo/$f missing after the demo: $(ls results/demo 2>&1)"
done
grep -q "^\[done\]  40 steps" demo.log && grep -q "^\[demo\] wrote results/demo/" demo.log && ok ||
  fail "the demo's log lacks its [done] and [demo] lines: $(tail -5 demo.log)"

# the next commands, as printed (the indented lines after "[demo] next")
sed -n '/^\[demo\] next/,$p' demo.log | grep '^  ' > next.sh
grep -q "build/nnprec train --config results/demo/options.txt" next.sh && grep -q "scripts/compare.py" next.sh &&
  ok || fail "the demo printed no next commands: $(tail -8 demo.log)"
t0=$SECONDS
bash -e next.sh > next.log 2>&1 || fail "the printed next commands: $(tail -5 next.log)"
echo "the next commands: $((SECONDS - t0)) s"
[ -s results/demo-precond/eval.csv ] && grep -q -- "--precond dynamic" results/demo-precond/options.txt &&
  grep -q -- "--steps 40" results/demo-precond/options.txt && ok ||
  fail "results/demo-precond is not the preconditioned run of the same budget: $(cat results/demo-precond/options.txt 2>&1 | head -5)"
grep -q "^| init pytorch, precond none.* | 1 | [0-9.]* |" next.log &&
  grep -q "^| init seed, precond dynamic.* | 1 | [0-9.]* |" next.log && ok ||
  fail "compare.py printed no table of the two runs: $(tail -8 next.log)"
[ -s results/compare.png ] && ok || fail "no results/compare.png: $(ls results)"
finish newcomer
