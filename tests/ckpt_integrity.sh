#!/usr/bin/env bash
# Checkpoint integrity (docs/checkpoint.md "Checksums", docs/reliability.md): one flipped bit
# in any dataset of a checkpoint is an error naming the dataset.
#  1. two checkpoints hold every kind of dataset: LeNet with SGD momentum and the dynamic
#     preconditioner (parameters, momentum_buffer, precond sigma/gain/prec/scale) and a
#     BatchNorm network with Adam (bn weight/bias, running_mean, running_var,
#     num_batches_tracked, exp_avg, exp_avg_sq); `info --verify` accepts them as written;
#  2. every dataset of both, with one low mantissa bit flipped (the value stays finite):
#     `nnprec info --verify` exits 1 naming it;
#  3. the same through the paths that load them: eval (parameters, BatchNorm statistics) and
#     train --resume (optimizer and preconditioner state), at 1 and 2 ranks, one line each;
#  4. a flipped bit in the file's metadata (an attribute) is caught by HDF5's own metadata
#     checksums: a clear error, not a silent change;
#  5. a file without checksums (as written before them) still loads, with a note; `info
#     --verify` says it cannot verify it; a checksummed file that lost one dataset's checksum
#     is an error.
# usage: ckpt_integrity.sh NNPREC MPIEXEC
set -uo pipefail
nnprec=$1 mpiexec=$2
here=$(cd "$(dirname "$0")" && pwd)
py=/usr/bin/python3
source "$here/cli_lib.sh"
flip() { $py "$here/ckpt_flip.py" "$@"; }
base=(--train-limit 500 --test-limit 100 --batch 16 --log-every 5 --eval-every 1000 --quiet)

# 1. the two checkpoints
"$nnprec" train "${base[@]}" --steps 6 --precond dynamic --seed 123456789 --out "$tmp/a" > "$tmp/a.log" 2>&1 \
  || { cat "$tmp/a.log"; exit 1; }
bn=seq:1x28x28/conv:4:3:1:1/bn/relu/maxpool:2/flatten/dense:16/bn/relu/dense:10
"$nnprec" train "${base[@]}" --steps 6 --model "$bn" --optim adam --lr 0.001 --out "$tmp/b" > "$tmp/b.log" 2>&1 \
  || { cat "$tmp/b.log"; exit 1; }
a=$tmp/a/ckpt-00000006.h5 b=$tmp/b/ckpt-00000006.h5
for f in "$a" "$b"; do
  "$nnprec" info --verify "$f" > "$tmp/v.out" 2>&1 && grep -q "^verified  *[0-9][0-9]* datasets, [0-9]* bytes: every checksum matches$" "$tmp/v.out" \
    && ok || fail "info --verify $f: $(tail -2 "$tmp/v.out")"
done
grep -q "^checksums  *xxh64 of every dataset" "$tmp/v.out" && ok || fail "info does not show the checksums"
flip list "$a" > "$tmp/a.sets" && flip list "$b" > "$tmp/b.sets" || fail "ckpt_flip.py list"
for want in /conv1/weight /fc3/bias /optimizer/momentum_buffer /precond/sigma /precond/gain /precond/prec /precond/scale; do
  grep -qx "$want" "$tmp/a.sets" && ok || fail "$a lacks $want"
done
for want in /bn1/running_mean /bn1/running_var /bn1/num_batches_tracked /bn2/weight /optimizer/exp_avg /optimizer/exp_avg_sq; do
  grep -qx "$want" "$tmp/b.sets" && ok || fail "$b lacks $want"
done

# 2. every dataset, one bit
for f in a b; do
  while read -r d; do
    flip flip "$tmp/$f/ckpt-00000006.h5" "$tmp/bad.h5" "$d" || { fail "ckpt_flip.py flip $d"; continue; }
    expect 1 "^nnprec: error: checkpoint $tmp/bad.h5: dataset $d is corrupt: its data does not match its checksum (xxh64 [0-9a-f]* stored, [0-9a-f]* computed)$" \
      "$nnprec" info --verify "$tmp/bad.h5"
  done < "$tmp/$f.sets"
done

# 3. the loading paths: eval (parameters, BatchNorm statistics), resume (all of it)
corrupt() { echo "checkpoint $1: dataset $2 is corrupt: its data does not match its checksum"; }
for d in /conv2/weight /fc1/bias; do
  flip flip "$a" "$tmp/p.h5" "$d"
  expect 1 "$(corrupt "$tmp/p.h5" "$d")" "$nnprec" eval --checkpoint "$tmp/p.h5" --test-limit 100
done
for d in /bn1/running_var /bn2/running_mean /bn1/num_batches_tracked; do
  flip flip "$b" "$tmp/p.h5" "$d"
  expect 1 "$(corrupt "$tmp/p.h5" "$d")" "$nnprec" eval --checkpoint "$tmp/p.h5" --test-limit 100
done
i=0
for d in /optimizer/momentum_buffer /precond/scale /precond/sigma; do
  flip flip "$a" "$tmp/p.h5" "$d"
  i=$((i + 1))
  expect 1 "$(corrupt "$tmp/p.h5" "$d")" "$nnprec" train "${base[@]}" --steps 10 --precond dynamic \
    --seed 123456789 --resume "$tmp/p.h5" --out "$tmp/ra$i"
done
for d in /optimizer/exp_avg /optimizer/exp_avg_sq; do
  flip flip "$b" "$tmp/p.h5" "$d"
  i=$((i + 1))
  expect 1 "$(corrupt "$tmp/p.h5" "$d")" "$mpiexec" -n 2 --oversubscribe "$nnprec" train "${base[@]}" \
    --steps 10 --model "$bn" --optim adam --lr 0.001 --batch 8 --resume "$tmp/p.h5" --out "$tmp/rb$i"
done
flip flip "$a" "$tmp/p.h5" /fc2/weight
expect 1 "$(corrupt "$tmp/p.h5" /fc2/weight)" "$mpiexec" -n 2 --oversubscribe "$nnprec" eval --checkpoint "$tmp/p.h5" --test-limit 100
# the run folder's latest, damaged in place: --resume auto stops on it
cp "$a" "$tmp/a/good.h5"
flip flip "$tmp/a/good.h5" "$a" /conv1/bias
expect 1 "$(corrupt "$a" /conv1/bias)" "$nnprec" train "${base[@]}" --steps 10 --precond dynamic \
  --seed 123456789 --resume auto --out "$tmp/a"
cp "$tmp/a/good.h5" "$a"

# 4. metadata: the seed attribute (123456789 as uint64, found by its bytes) with one bit flipped
$py - "$a" "$tmp/meta.h5" <<'EOF' || fail "cannot damage the seed attribute"
import struct, sys
b = bytearray(open(sys.argv[1], "rb").read())
i = b.find(struct.pack("<Q", 123456789))
assert i > 0 and b.count(struct.pack("<Q", 123456789)) == 1
b[i] ^= 0x04
open(sys.argv[2], "wb").write(b)
EOF
expect 1 "checkpoint $tmp/meta.h5: cannot read .*(the file is damaged)" "$nnprec" eval --checkpoint "$tmp/meta.h5" --test-limit 100
expect 1 "checkpoint $tmp/meta.h5: cannot read .*(the file is damaged)" "$nnprec" info --verify "$tmp/meta.h5"

# 5. no checksums: loads with a note; one dataset's checksum missing: an error
flip strip "$a" "$tmp/old.h5"
"$nnprec" eval --checkpoint "$tmp/old.h5" --test-limit 100 > "$tmp/old.out" 2>&1 && ok || fail "eval of a file without checksums: $(cat "$tmp/old.out")"
grep -q "^\[note\]  $tmp/old.h5 has no checksums (written before nnprec stored them)" "$tmp/old.out" && ok \
  || fail "no note for a file without checksums: $(cat "$tmp/old.out")"
"$nnprec" train "${base[@]}" --steps 10 --precond dynamic --seed 123456789 --resume "$tmp/old.h5" \
  --out "$tmp/rold" > "$tmp/rold.out" 2>&1 && ok || fail "resume from a file without checksums: $(cat "$tmp/rold.out")"
grep -q "^checksums  *none" <<< "$("$nnprec" info "$tmp/old.h5" 2>&1)" && ok || fail "info of a file without checksums"
expect 1 "checkpoint $tmp/old.h5 has no checksums (written by an nnprec that did not store them): its data cannot be verified" \
  "$nnprec" info --verify "$tmp/old.h5"
flip unhash "$a" "$tmp/nohash.h5" /fc1/weight
expect 1 "checkpoint $tmp/nohash.h5: dataset /fc1/weight has no checksum (attribute xxh64): the file is damaged" \
  "$nnprec" eval --checkpoint "$tmp/nohash.h5" --test-limit 100
expect 2 "usage: nnprec info \[--verify\] FILE" "$nnprec" info --verify
finish ckpt_integrity
