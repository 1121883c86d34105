#!/usr/bin/env bash
# scripts/scaling_report.py on a made-up RESULTS tree whose answers are known: two configs,
# 1 and 2 ranks, two seeds each, one run that never finished. Checks the table cells (means,
# time to target, the ratio to default, the speed-up), the plot, and the error exits.
#
# usage: scaling_report.sh PYTHON
set -uo pipefail
py=$1
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/tests/cli_lib.sh"
EXPECT_PREFIX=scaling_report.py

# run CONFIG RANKS SEED DONE "ACC1 WALL1; ACC2 WALL2; ..." SPS...
run() {
  local d=$tmp/res/train/$1-np$2-s$3 i=1
  mkdir -p "$d"
  [ "$4" = 1 ] && touch "$d/done"
  echo "step,epoch,test_loss,test_acc,wall_s" > "$d/eval.csv"
  IFS=';' read -ra evs <<< "$5"
  for e in "${evs[@]}"; do
    set -- $e
    echo "$((i * 10)),$i,0.5,$1,$2" >> "$d/eval.csv"
    i=$((i + 1))
  done
}
train() {
  local d=$tmp/res/train/$1-np$2-s$3
  echo "step,epoch,train_loss,train_acc,lr,samples_per_s,wall_s" > "$d/train.csv"
  shift 3
  for s in "$@"; do echo "1,0.1,1,0.5,0.01,$s,1" >> "$d/train.csv"; done
}
# default reaches 80% at 30 s (seed 1) and 40 s (seed 2) on 1 rank, 20 and 30 s on 2 ranks
run default 1 1 1 "0.70 10; 0.80 30; 0.85 60"
run default 1 2 1 "0.70 10; 0.75 30; 0.82 40; 0.84 60"
run default 2 1 1 "0.79 10; 0.81 20; 0.85 30"
run default 2 2 1 "0.60 10; 0.80 30; 0.83 30"
# dynamic gets there at 10 and 20 s on 1 rank (2x faster than default's 35), 5 s on 2 ranks
run dynamic 1 1 1 "0.80 10; 0.86 60"
run dynamic 1 2 1 "0.78 10; 0.81 20; 0.88 60"
run dynamic 2 1 1 "0.81 5; 0.87 30"
run dynamic 2 2 0 "0.50 5"   # cut short: not finished, never reached 80%
train default 1 1 999 1000 3000 2000   # median after the first row: 2000
train default 1 2 999 2000 2000        # 2000
train default 2 1 1 4000               # 4000
train default 2 2 1 3000 5000          # 4000

out=$("$py" "$root/scripts/scaling_report.py" "$tmp/res" --target 80 --plot "$tmp/r.png")
echo "$out"
row() { grep -F "| $1 | $2 |" <<< "$out" | sed -n "${3}p"; }
# runs table: final accuracy 84.5 ± 0.71 (85, 84), wall 60 s each, samples/s 2000, speed-up
row default 1 1 | grep -qF '| 2/2 | 84.50 ± 0.71 | 60.0 ± 0.0 | 2000 | 1.00× |' && ok || fail "default np1 runs row"
row default 2 1 | grep -qF '| 2/2 | 84.00 ± 1.41 | 30.0 ± 0.0 | 4000 | 2.00× |' && ok || fail "default np2 runs row"
row dynamic 2 1 | grep -qF '| 1/2 | 87.00 ± 0.00 | 30.0 ± 0.0 | – | 2.00× |' && ok || fail "unfinished run counted"
# time to 80%: default np1 (30+40)/2 = 35 s, dynamic np1 15 s -> 35/15 = 2.33x
row default 1 2 | grep -qF '| 2/2 | 35.0 ± 7.1 | 2.50 ± 0.71 | – |' && ok || fail "default np1 time to target"
row dynamic 1 2 | grep -qF '| 2/2 | 15.0 ± 7.1 | 1.50 ± 0.71 | 2.33× |' && ok || fail "dynamic np1 vs default"
# np2: default (20 + 30)/2 = 25 s; dynamic reached it in one seed of two, 5 s -> 5.00x
row dynamic 2 2 | grep -qF '| 1/2 | 5.0 ± 0.0 | 1.00 ± 0.00 | 5.00× |' && ok || fail "dynamic np2 vs default"
[ -s "$tmp/r.png" ] && ok || fail "no plot written"

# bad input: one line on stderr, non-zero exit
expect 1 "is not a directory" "$py" "$root/scripts/scaling_report.py" "$tmp/nowhere"
mkdir -p "$tmp/empty/train"
expect 1 "no CONFIG-npP-sSEED runs" "$py" "$root/scripts/scaling_report.py" "$tmp/empty"
expect 1 "--target must be in" "$py" "$root/scripts/scaling_report.py" "$tmp/res" --target 0
finish
