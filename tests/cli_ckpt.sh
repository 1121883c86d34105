#!/usr/bin/env bash
# `nnprec info` and `nnprec eval` on a checkpoint, and HDF5 datasets as input, under mpiexec:
#  1. a short 2-rank LeNet run with --out writes its final checkpoint; `nnprec info` shows
#     the model and the step;
#  2. `nnprec eval --checkpoint` on 1 and 2 ranks prints the same accuracy, equal to the
#     run's final test accuracy in eval.csv (same test set);
#  3. errors: missing file, truncated file, a non-checkpoint (CSV and HDF5), no --checkpoint;
#     each one line, every rank exits non-zero;
#  4. scripts/idx_to_h5.py converts the IDX files and `nnprec train --data FILE.h5` gives the
#     same train.csv as the IDX run, bit for bit; eval reads the .h5 test set too;
#  5. scripts/ckpt_to_torch.py (PyTorch, /usr/bin/python3) on the final checkpoint prints an
#     accuracy within 0.1 points of `nnprec eval`; so it does for two short-trained residual
#     networks (conv blocks with bn and a projection, a resmlp with bn);
#  6. resuming a finished run trains nothing and changes no file; checkpoints past the run's
#     end, from another training set or normalization, or with impossible values are refused.
# usage: cli_ckpt.sh NNPREC MPIEXEC
set -uo pipefail
nnprec=$1 mpiexec=$2
here=$(cd "$(dirname "$0")/.." && pwd)
py=/usr/bin/python3
source "$(dirname "$0")/cli_lib.sh"
mpi() { local np=$1; shift; timeout 120 "$mpiexec" -n "$np" --oversubscribe "$nnprec" "$@"; }
# accuracy printed by nnprec eval ("test loss X accuracy Y% ...") -> Y
eval_acc() { sed -n 's/^test loss [^ ]* accuracy \([0-9.]*\)%.*/\1/p' "$1"; }

# 1. a short run: 60 steps of LeNet, global batch 64, evaluated once at the end on the full
#    test set (the set eval and the PyTorch script use by default)
args=(train --train-limit 2000 --steps 60 --batch 32 --lr 0.02 --log-every 5 --eval-every 1000
      --seed 5 --quiet)
mpi 2 "${args[@]}" --out "$tmp/run" > "$tmp/run.log" 2>&1 || { cat "$tmp/run.log"; exit 1; }
ck=$tmp/run/ckpt-00000060.h5
[ -f "$ck" ] && ok || fail "the run wrote no final checkpoint"

"$nnprec" info "$ck" > "$tmp/info" 2>&1 || fail "nnprec info exit code: $(cat "$tmp/info")"
grep -q '^model  *lenet$' "$tmp/info" && ok || fail "info does not show the model: $(head -5 "$tmp/info")"
grep -q '^step  *60 ' "$tmp/info" && ok || fail "info does not show the step: $(head -6 "$tmp/info")"
grep -q '/fc3/weight' "$tmp/info" && ok || fail "info does not list the parameters"
mpi 2 info "$ck" > "$tmp/info2" 2>&1 && cmp -s "$tmp/info" "$tmp/info2" && ok \
  || fail "info on 2 ranks differs from 1 rank: $(head -3 "$tmp/info2")"

# 2. eval on 1 and 2 ranks, against eval.csv
mpi 1 eval --checkpoint "$ck" > "$tmp/e1" 2>&1 || fail "eval on 1 rank: $(cat "$tmp/e1")"
mpi 2 eval --checkpoint "$ck" > "$tmp/e2" 2>&1 || fail "eval on 2 ranks: $(cat "$tmp/e2")"
a1=$(eval_acc "$tmp/e1") a2=$(eval_acc "$tmp/e2")
csv=$(tail -1 "$tmp/run/eval.csv" | awk -F, '$1 == 60 { printf "%.2f", 100 * $4 }')
echo "eval accuracy: 1 rank $a1%, 2 ranks $a2%, eval.csv $csv%"
[ -n "$a1" ] && [ "$a1" = "$a2" ] && ok || fail "eval on 1 and 2 ranks: '$a1' vs '$a2'"
[ -n "$csv" ] && [ "$a1" = "$csv" ] && ok || fail "eval $a1% differs from eval.csv's $csv%"
grep -q 'step 60 (epoch' "$tmp/e1" && ok || fail "eval does not name the checkpoint's step"
# a run folder stands for its latest checkpoint
mpi 1 eval --checkpoint "$tmp/run" > "$tmp/e3" 2>&1 && [ "$(eval_acc "$tmp/e3")" = "$a1" ] && ok \
  || fail "eval --checkpoint RUNDIR: $(cat "$tmp/e3")"

# 3. errors
expect 1 "cannot open checkpoint $tmp/missing.h5: No such file" "$nnprec" eval --checkpoint "$tmp/missing.h5"
expect 1 "cannot open checkpoint $tmp/missing.h5" "$mpiexec" -n 2 --oversubscribe "$nnprec" eval --checkpoint "$tmp/missing.h5"
head -c 50000 "$ck" > "$tmp/trunc.h5"
expect 1 "checkpoint $tmp/trunc.h5: not a valid HDF5 file (truncated" "$nnprec" eval --checkpoint "$tmp/trunc.h5"
expect 1 "checkpoint $tmp/trunc.h5: not a valid HDF5 file" "$mpiexec" -n 2 --oversubscribe "$nnprec" eval --checkpoint "$tmp/trunc.h5"
expect 1 "checkpoint $tmp/trunc.h5: not a valid HDF5 file" "$nnprec" info "$tmp/trunc.h5"
expect 1 "checkpoint $tmp/run/train.csv: not a valid HDF5 file" "$nnprec" info "$tmp/run/train.csv"
expect 1 "cannot open checkpoint $tmp/missing.h5" "$mpiexec" -n 2 --oversubscribe "$nnprec" info "$tmp/missing.h5"
expect 2 "eval needs --checkpoint" "$nnprec" eval
expect 2 "usage: nnprec info \[--verify\] FILE" "$nnprec" info
expect 1 "$tmp/nowhere" "$nnprec" eval --checkpoint "$ck" --data "$tmp/nowhere"

# 4. the same data as HDF5: the same run, the same losses bit for bit
timeout 60 $py "$here/scripts/idx_to_h5.py" /usr/share/datasets/fashion-mnist "$tmp/fm.h5" > "$tmp/conv.log" 2>&1 \
  || fail "idx_to_h5.py: $(tail -3 "$tmp/conv.log")"
expect 1 "not an nnprec checkpoint" "$nnprec" info "$tmp/fm.h5"
mpi 2 "${args[@]}" --data "$tmp/fm.h5" --out "$tmp/runh5" > "$tmp/runh5.log" 2>&1 \
  || fail "train --data FILE.h5: $(tail -3 "$tmp/runh5.log")"
n=$(tail -n +2 "$tmp/run/train.csv" | wc -l)
[ "$n" = 12 ] && cmp -s <(cut -d, -f1-4 "$tmp/run/train.csv") <(cut -d, -f1-4 "$tmp/runh5/train.csv") && ok \
  || fail "train.csv from --data FILE.h5 differs from the IDX run ($n rows)"
cmp -s <(cut -d, -f1-4 "$tmp/run/eval.csv") <(cut -d, -f1-4 "$tmp/runh5/eval.csv") && ok \
  || fail "eval.csv from --data FILE.h5 differs from the IDX run"
mpi 2 eval --checkpoint "$ck" --data "$tmp/fm.h5" > "$tmp/e4" 2>&1 && [ "$(eval_acc "$tmp/e4")" = "$a1" ] && ok \
  || fail "eval --data FILE.h5: $(cat "$tmp/e4")"

# 5. PyTorch: the same checkpoint in torch.nn, the same accuracy within 0.1 points
if ! $py -c 'import torch, h5py' 2> "$tmp/torch.err"; then
  fail "$py cannot import torch and h5py (scripts/install-deps.sh installs python3-torch): $(tail -1 "$tmp/torch.err")"
else
  timeout 120 $py "$here/scripts/ckpt_to_torch.py" "$ck" > "$tmp/torch.log" 2>&1 \
    || fail "ckpt_to_torch.py: $(tail -3 "$tmp/torch.log")"
  at=$(sed -n 's/^accuracy: \([0-9.]*\)%$/\1/p' "$tmp/torch.log")
  echo "PyTorch accuracy $at%, nnprec eval $a1%"
  [ -n "$at" ] && [ -n "$a1" ] && awk -v a="$at" -v b="$a1" 'BEGIN { d = a - b; exit !(d <= 0.1 && d >= -0.1) }' \
    && ok || fail "PyTorch accuracy '$at%' vs nnprec eval '$a1%'"
  # residual networks (conv blocks with bn and a stride-2 projection; a residual MLP with
  # bn): 30 steps at 2 ranks, the torch module of the same layout gives eval's accuracy
  for m in 'seq:1x28x28/conv:8:3:1:1/bn/relu/res[conv:8:3:1:1/bn/relu/conv:8:3:1:1/bn]/relu/res[conv:16:3:2:1/bn/relu/conv:16:3:1:1/bn]/relu/gap/dense:10' \
           resmlp-bn:784-64x4-10; do
    rm -rf "$tmp/res"
    mpi 2 train --model "$m" --train-limit 2000 --steps 30 --batch 32 --lr 0.05 --seed 5 \
      --eval-every 1000 --quiet --out "$tmp/res" > "$tmp/res.log" 2>&1 || fail "train $m: $(tail -3 "$tmp/res.log")"
    mpi 1 eval --checkpoint "$tmp/res" > "$tmp/res.eval" 2>&1 || fail "eval $m: $(tail -3 "$tmp/res.eval")"
    ar=$(eval_acc "$tmp/res.eval")
    timeout 120 $py "$here/scripts/ckpt_to_torch.py" "$tmp/res" > "$tmp/res.torch" 2>&1 \
      || fail "ckpt_to_torch.py on $m: $(tail -3 "$tmp/res.torch")"
    at=$(sed -n 's/^accuracy: \([0-9.]*\)%$/\1/p' "$tmp/res.torch")
    echo "$m: PyTorch accuracy $at%, nnprec eval $ar%"
    [ -n "$at" ] && [ -n "$ar" ] && awk -v a="$at" -v b="$ar" 'BEGIN { d = a - b; exit !(d <= 0.1 && d >= -0.1) }' \
      && ok || fail "$m: PyTorch accuracy '$at%' vs nnprec eval '$ar%'"
  done
fi

# 6. resuming: a finished run has nothing to train and changes none of its files; a
#    checkpoint past the run's end, from another training set, with other normalization, or
#    with impossible contents is refused before any step
for f in train.csv eval.csv ranks.csv timing.csv; do cp "$tmp/run/$f" "$tmp/before.$f"; done
mpi 2 "${args[@]}" --out "$tmp/run" --resume auto --allreduce shm > "$tmp/again.log" 2>&1 \
  || fail "resuming a finished run: $(tail -3 "$tmp/again.log")"
grep -q "nothing to train: $tmp/run/ckpt-00000060.h5 is at step 60, this run's last; its test loss [0-9.]* accuracy $a1%" \
  "$tmp/again.log" && ok || fail "resuming a finished run: $(cat "$tmp/again.log")"
for f in train.csv eval.csv ranks.csv timing.csv; do
  cmp -s "$tmp/run/$f" "$tmp/before.$f" && ok || fail "resuming a finished run changed $f"
done
rargs=(train --train-limit 2000 --batch 32 --lr 0.02 --seed 5 --quiet)
expect 2 "checkpoint $ck is at step 60, past this run's 30 steps" \
  "$mpiexec" -n 2 --oversubscribe "$nnprec" "${rargs[@]}" --steps 30 --resume "$ck"
expect 2 "checkpoint $ck was written with 2000 training samples, this run has 3000" \
  "$mpiexec" -n 2 --oversubscribe "$nnprec" train --train-limit 3000 --batch 32 --seed 5 --steps 80 --resume "$ck"
expect 2 "normalize 0.5,0.5 differs from the checkpoint's mean" \
  "$nnprec" "${rargs[@]}" --steps 80 --batch 64 --resume "$ck" --normalize 0.5,0.5
# a checkpoint edited with h5py: an impossible step, a zero std, a nan weight (in a file
# without checksums, as written before them: with its checksum the edit is corruption)
$py - "$ck" "$tmp" <<'PY' || fail "could not write the edited checkpoints"
import shutil, sys, h5py, numpy as np
ck, d = sys.argv[1], sys.argv[2]
def nan_weight(f, strip):
    f["fc1/weight"][0, 0] = np.nan
    if strip:
        del f.attrs["checksum"]
        f.visititems(lambda n, o: o.attrs.__delitem__("xxh64") if isinstance(o, h5py.Dataset) else None)
for name, edit in [("negstep", lambda f: f.attrs.__setitem__("step", np.int64(-5))),
                   ("std0", lambda f: f.attrs.__setitem__("norm_std", 0.0)),
                   ("nanw", lambda f: nan_weight(f, True)),
                   ("nanw_sum", lambda f: nan_weight(f, False))]:
    shutil.copy(ck, f"{d}/{name}.h5")
    with h5py.File(f"{d}/{name}.h5", "r+") as f:
        edit(f)
PY
expect 1 "checkpoint $tmp/negstep.h5: attribute step has an impossible value" \
  "$mpiexec" -n 2 --oversubscribe "$nnprec" "${rargs[@]}" --steps 80 --resume "$tmp/negstep.h5"
expect 1 "checkpoint $tmp/std0.h5: attribute norm_std has an impossible value" "$nnprec" eval --checkpoint "$tmp/std0.h5"
expect 1 "checkpoint $tmp/nanw.h5: dataset /fc1/weight holds non-finite values" \
  "$mpiexec" -n 2 --oversubscribe "$nnprec" eval --checkpoint "$tmp/nanw.h5"
expect 1 "checkpoint $tmp/nanw_sum.h5: dataset /fc1/weight is corrupt" \
  "$mpiexec" -n 2 --oversubscribe "$nnprec" eval --checkpoint "$tmp/nanw_sum.h5"

finish
