#!/usr/bin/env bash
# OUT/options.txt and --config: every effective option is recorded, in shortest round-trip
# form; a run repeated from it (--config) has the same per-step losses; an option on the
# command line wins over the file's, before or after --config; bad files are one error
# naming the line; a resumed run keeps options.txt and writes options-resume.txt; `nnprec
# info` takes a run folder. Tiny runs on 1 rank (a few seconds in all).
# usage: cli_options.sh NNPREC MPIEXEC
set -uo pipefail
nnprec=$1
source "$(dirname "$0")/cli_lib.sh"

# tr DIR: train.csv's step, epoch, loss, accuracy and learning rate (not the timings)
tr() { cut -d, -f1-5 "$1/train.csv"; }
args=(train --model mlp:784-32-10 --train-limit 512 --test-limit 100 --steps 8 --log-every 1
      --lr 0.05 --momentum 0.8 --seed 3 --warmup-epochs 0.5 --quiet)
"$nnprec" "${args[@]}" --out "$tmp/a" > "$tmp/a.log" 2>&1 || fail "first run: $(tail -2 "$tmp/a.log")"
o=$tmp/a/options.txt
for line in "--lr 0.05" "--momentum 0.8" "--eps 1e-8" "--lamb-clip 10" "--warmup-epochs 0.5" \
            "--seed 3" "--steps 8" "--model mlp:784-32-10" "--quiet 1" "--nesterov 0" \
            "--out $tmp/a" "--normalize" "# ranks: 1"; do
  grep -qxF -- "$line" "$o" && ok || fail "options.txt lacks the line '$line': $(cat "$o")"
done
# every option of `train --help` but --config itself, once
n_help=$("$nnprec" train --help | grep -c '^  --')
[ "$(grep -c '^--' "$o")" = $((n_help - 1)) ] && ok ||
  fail "options.txt has $(grep -c '^--' "$o") options, train --help lists $n_help (with --config)"
! grep -q -- '--config' <(grep '^--' "$o") && ok || fail "options.txt names --config"

# repeated from options.txt alone: the same losses step by step
"$nnprec" train --config "$o" --out "$tmp/b" > "$tmp/b.log" 2>&1 || fail "--config run: $(tail -2 "$tmp/b.log")"
[ "$(tr "$tmp/b")" = "$(tr "$tmp/a")" ] && [ "$(tr "$tmp/a" | wc -l)" = 9 ] && ok ||
  fail "the run repeated with --config differs: $(paste -d' ' <(tr "$tmp/a") <(tr "$tmp/b"))"
[ "$(grep -v -e '--out' -e 'config' "$tmp/b/options.txt")" = "$(grep -v -e '--out' -e 'config' "$o")" ] &&
  ok || fail "the repeated run's options.txt differs: $(diff "$o" "$tmp/b/options.txt")"
# the command line wins, before or after --config
"$nnprec" train --lr 0.02 --config "$o" --out "$tmp/c" > /dev/null 2>&1 || fail "--lr before --config"
"$nnprec" train --config "$o" --lr 0.02 --out "$tmp/d" > /dev/null 2>&1 || fail "--lr after --config"
grep -qxF -- "--lr 0.02" "$tmp/c/options.txt" && grep -qxF -- "--lr 0.02" "$tmp/d/options.txt" && ok ||
  fail "--lr on the command line did not win: $(grep -h -- '--lr ' "$tmp"/[cd]/options.txt)"
[ "$(tr "$tmp/c")" = "$(tr "$tmp/d")" ] && [ "$(tr "$tmp/c")" != "$(tr "$tmp/a")" ] && ok ||
  fail "--lr 0.02 before and after --config: $(paste -d' ' <(tr "$tmp/a") <(tr "$tmp/c") <(tr "$tmp/d"))"
# a file's value other than the default counts as given (an option the optimizer ignores is
# refused, as on the command line); at its default it does not
printf -- '--lars-eta 0.002\n' > "$tmp/eta.txt"
expect 2 "--lars-eta applies to --optim lars, not --optim sgd" "$nnprec" train --config "$tmp/eta.txt"
# bad files: one error naming the file and line, exit 2
expect 2 "--config $tmp/none.txt: No such file or directory" "$nnprec" train --config "$tmp/none.txt"
printf -- '# comment\n\n--lr 0.1\n--bogus 1\n' > "$tmp/bad1.txt"
expect 2 "--config $tmp/bad1.txt, line 4: unknown option '--bogus'" "$nnprec" train --config "$tmp/bad1.txt"
printf -- '--lr fast\n' > "$tmp/bad2.txt"
expect 2 "--config $tmp/bad2.txt, line 1: --lr expects a finite number, got 'fast'" \
  "$nnprec" train --config "$tmp/bad2.txt"
printf -- 'lr 0.1\n' > "$tmp/bad3.txt"
expect 2 "line 1: expected '--name value', got 'lr 0.1'" "$nnprec" train --config "$tmp/bad3.txt"
printf -- '--config %s\n' "$o" > "$tmp/bad4.txt"
expect 2 "line 1: a --config file cannot name another" "$nnprec" train --config "$tmp/bad4.txt"

# a resumed run keeps the folder's options.txt and records its own in options-resume.txt
cp "$o" "$tmp/a.options"
"$nnprec" train --config "$o" --steps 12 --resume auto > "$tmp/r.log" 2>&1 || fail "resume: $(tail -2 "$tmp/r.log")"
cmp -s "$o" "$tmp/a.options" && ok || fail "the resumed run changed options.txt"
grep -qxF -- "--steps 12" "$tmp/a/options-resume.txt" &&
  grep -q "^# this run resumed from $tmp/a/ckpt-00000008.h5" "$tmp/a/options-resume.txt" && ok ||
  fail "options-resume.txt: $(cat "$tmp/a/options-resume.txt")"

# nnprec info on a run folder: its latest checkpoint; options in shortest form
"$nnprec" info "$tmp/a" > "$tmp/info" 2>&1 || fail "info on a folder: $(cat "$tmp/info")"
grep -qx "checkpoint  *$tmp/a/ckpt-00000012.h5" "$tmp/info" && ok || fail "info on a folder: $(head -2 "$tmp/info")"
grep -qx '  lr=0.05' "$tmp/info" && grep -qx '  eps=1e-8' "$tmp/info" && ok ||
  fail "info's options are not in shortest form: $(grep -E 'lr=|eps=' "$tmp/info")"
mkdir -p "$tmp/empty"
expect 1 "no checkpoint in $tmp/empty" "$nnprec" info "$tmp/empty"
finish cli_options
