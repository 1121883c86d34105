#!/usr/bin/env bash
# The run folder (--out) under failures (docs/reliability.md):
#  1. two runs into one folder: while a run holds it, a second one (1 rank, 2 ranks, fresh or
#     --resume auto) is refused at once with one line and exit code 2, and changes nothing;
#     the first run goes on and ends normally;
#  2. the temporary files an interrupted run leaves (ckpt-*.h5.tmp, latest.tmp, *.csv.tmp)
#     are removed at the start of the next run with one line each; other files stay;
#  3. a `latest` that names a file outside its folder (../x, /abs, sub/x) is an error for
#     --resume auto, info and eval;
#  4. --out creates its parent folders; a path through a file is a clear error.
# usage: rundir.sh NNPREC MPIEXEC
set -uo pipefail
nnprec=$1 mpiexec=$2
source "$(dirname "$0")/cli_lib.sh"
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
short=(train --train-limit 1000 --test-limit 100 --batch 16 --log-every 5 --eval-every 100000)

# 1. a long run A (stopped below through its stop file) and runs into its folder
out=$tmp/busy
"$nnprec" "${short[@]}" --steps 100000 --stop-file "$tmp/stop" --out "$out" > "$tmp/a.log" 2>&1 &
apid=$!
for _ in $(seq 1 300); do
  [ -s "$out/train.csv" ] && [ "$(wc -l < "$out/train.csv")" -ge 2 ] && break
  sleep 0.1
done
[ "$(wc -l < "$out/train.csv" 2>/dev/null || echo 0)" -ge 2 ] || { cat "$tmp/a.log"; echo "run A did not start"; exit 1; }
snap() { (cd "$out" && ls -A | grep -v '^train.csv$\|^timing.csv$' | sort && cat options.txt .lock); }
snap > "$tmp/before"
t0=$(date +%s.%N)
expect 2 "^nnprec: error: --out $out is in use by another nnprec run (pid $apid on .*holds $out/.lock)" \
  "$nnprec" "${short[@]}" --steps 10 --out "$out"
t1=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" 'BEGIN { exit !(b - a < 5) }' && ok || fail "the refusal took $(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }') s"
expect 2 "is in use by another nnprec run" "$nnprec" "${short[@]}" --steps 10 --out "$out" --resume auto
expect 2 "is in use by another nnprec run" "$mpiexec" -n 2 --oversubscribe "$nnprec" "${short[@]}" --steps 10 --out "$out"
snap > "$tmp/after"
cmp -s "$tmp/before" "$tmp/after" && ok || fail "the refused runs changed the folder: $(diff "$tmp/before" "$tmp/after")"
kill -0 "$apid" 2>/dev/null && ok || fail "run A died: $(tail -3 "$tmp/a.log")"
touch "$tmp/stop"
wait "$apid"; rc=$?
[ "$rc" = 75 ] && ok || fail "run A exit code $rc, want 75 (stop file): $(tail -3 "$tmp/a.log")"
grep -q "error" "$tmp/a.log" && fail "run A printed an error: $(grep error "$tmp/a.log")" || ok
last=$(cat "$out/latest")
step=$(echo "$last" | sed 's/ckpt-0*\([0-9]*\)\.h5/\1/')
# once A has ended the folder is free again (the kernel dropped the lock with the process)
"$nnprec" "${short[@]}" --steps $((step + 5)) --out "$out" --resume auto > "$tmp/a2.log" 2>&1 \
  && ok || fail "resuming the folder after run A ended: $(tail -3 "$tmp/a2.log")"

# 2. stale temporary files: removed with a line each, on a resumed and on a fresh run
last=$(cat "$out/latest")
head -c 4096 /dev/urandom > "$out/ckpt-99999999.h5.tmp"
echo "$last" > "$out/latest.tmp"
echo "step" > "$out/train.csv.tmp"
echo "mine" > "$out/notes.tmp"
"$nnprec" "${short[@]}" --steps $((step + 10)) --out "$out" --resume auto > "$tmp/r.log" 2>&1 \
  || fail "resume with stale files: $(tail -3 "$tmp/r.log")"
for f in ckpt-99999999.h5.tmp latest.tmp train.csv.tmp; do
  grep -q "^\[setup\] removed $out/$f ([0-9]* bytes), left by an interrupted write$" "$tmp/r.log" && ok \
    || fail "no line for the removal of $f: $(grep setup "$tmp/r.log")"
  [ ! -e "$out/$f" ] && ok || fail "$f is still there"
done
[ -f "$out/notes.tmp" ] && ok || fail "a file that is not nnprec's (notes.tmp) was removed"
grep -q "resumed from $out/ckpt-0*$((step + 5)).h5" "$tmp/r.log" && ok || fail "did not resume: $(grep ckpt "$tmp/r.log")"
mkdir -p "$tmp/fresh"
head -c 100 /dev/urandom > "$tmp/fresh/ckpt-00000010.h5.tmp"
"$nnprec" "${short[@]}" --steps 10 --out "$tmp/fresh" > "$tmp/f.log" 2>&1 || fail "fresh run: $(tail -3 "$tmp/f.log")"
grep -q "removed $tmp/fresh/ckpt-00000010.h5.tmp" "$tmp/f.log" && [ -f "$tmp/fresh/ckpt-00000010.h5" ] \
  && [ ! -e "$tmp/fresh/ckpt-00000010.h5.tmp" ] && ok || fail "fresh run with a stale tmp: $(ls "$tmp/fresh")"

# 3. `latest` must name a file of its own folder
mkdir -p "$tmp/esc/sub"
cp "$tmp/fresh/ckpt-00000010.h5" "$tmp/esc/ckpt-00000010.h5"
cp "$tmp/fresh/ckpt-00000010.h5" "$tmp/esc/sub/ckpt-00000010.h5"
cp "$tmp/fresh/ckpt-00000010.h5" "$tmp/elsewhere.h5"
for name in ../elsewhere.h5 "$tmp/elsewhere.h5" sub/ckpt-00000010.h5 ..; do
  echo "$name" > "$tmp/esc/latest"
  expect 1 "$tmp/esc/latest names '$name', which is not a file in $tmp/esc" \
    "$nnprec" "${short[@]}" --steps 20 --out "$tmp/esc" --resume auto
  expect 1 "$tmp/esc/latest names '$name', which is not a file in $tmp/esc" "$nnprec" info "$tmp/esc"
  expect 1 "$tmp/esc/latest names '$name', which is not a file in $tmp/esc" \
    "$nnprec" eval --checkpoint "$tmp/esc"
done
echo ckpt-00000010.h5 > "$tmp/esc/latest"
"$nnprec" info "$tmp/esc" > "$tmp/info" 2>&1 && ok || fail "info on a plain latest: $(cat "$tmp/info")"

# 4. parents created; a path through a file is an error
"$nnprec" "${short[@]}" --steps 2 --out "$tmp/deep/a/b/c" > "$tmp/d.log" 2>&1 \
  && [ -f "$tmp/deep/a/b/c/ckpt-00000002.h5" ] && ok || fail "--out with missing parents: $(tail -3 "$tmp/d.log")"
touch "$tmp/afile"
expect 1 "cannot create folder $tmp/afile/x: $tmp/afile is a file" "$nnprec" "${short[@]}" --steps 2 --out "$tmp/afile/x"
finish rundir
