#!/usr/bin/env bash
# One training step of nnprec against the same step in PyTorch (tests/torch_step.py, run by
# /usr/bin/python3 with torch and h5py), from the same weights on the same samples:
#  1. resnet8 (BatchNorm2d, identity and 1x1-conv + bn projection blocks, gap), 8 samples;
#  2. a residual MLP with dropout inside and outside its blocks and BatchNorm1d in a block
#     with a dense + bn projection, 64 samples, torch fed nnprec's dropout masks;
# each: the parameters, BN running statistics, updates and momentum buffer after one SGD
# step (lr 0.1, momentum 0.9, weight decay 5e-4) within 1e-4 relative of PyTorch's float64
# step (parameters and running statistics also of its float32 step), the train-mode loss
# and accuracy, and the updated model's eval-mode loss and accuracy on 500 test samples;
#  3. the masks of another step (1 instead of 0) must not match: the dropout check is not
#     vacuous.
# The initial weights come from a 1-step run at lr 1e-30 (no parameter moves by more than
# ~1e-30); the step run has --train-limit N --global-batch N, so its batch is samples
# 0..N-1. The seeds are chosen so that no ReLU input of the batch lies within float32's
# rounding of 0 (torch_step.py checks that; such a tie would let rounding switch a unit).
# usage: torch_step.sh NNPREC
set -uo pipefail
nnprec=$1
here=$(cd "$(dirname "$0")/.." && pwd)
py=/usr/bin/python3
data=/usr/share/datasets/fashion-mnist
source "$(dirname "$0")/cli_lib.sh"

# run NAME MODEL N SEED: the initial and the one-step checkpoint in $tmp/NAME.{init,step}
run() {
  local name=$1 model=$2 n=$3 seed=$4
  local common=(train --model "$model" --train-limit "$n" --global-batch "$n" --steps 1
                --seed "$seed" --momentum 0.9 --weight-decay 5e-4 --quiet --data "$data")
  timeout 120 "$nnprec" "${common[@]}" --lr 1e-30 --test-limit 1 --out "$tmp/$name.init" \
    > "$tmp/$name.log" 2>&1 \
    && timeout 120 "$nnprec" "${common[@]}" --lr 0.1 --test-limit 500 --out "$tmp/$name.step" \
    >> "$tmp/$name.log" 2>&1
}
# compare NAME [ARGS]: torch_step.py on NAME's runs; its output in $tmp/NAME.cmp
compare() {
  local name=$1; shift
  timeout 120 $py "$here/tests/torch_step.py" "$tmp/$name.init/ckpt-00000001.h5" \
    "$tmp/$name.step/ckpt-00000001.h5" "$tmp/$name.step/train.csv" "$tmp/$name.step/eval.csv" \
    "$data" "$@" > "$tmp/$name.cmp" 2>&1
}

if ! $py -c 'import torch, h5py' 2> "$tmp/torch.err"; then
  fail "$py cannot import torch and h5py (scripts/install-deps.sh installs python3-torch): $(tail -1 "$tmp/torch.err")"
  finish torch_step
fi

resmlp='seq:784/dense:64/relu/res[dense:64/relu/dropout:0.3/dense:64]/relu/res[dense:32/bn/relu/dropout:0.1/dense:32]/relu/dropout:0.2/dense:10'
for m in "resnet8 resnet8 8 29" "resmlp $resmlp 64 7"; do
  set -- $m
  echo "== $2, $3 samples, seed $4"
  if ! run "$1" "$2" "$3" "$4"; then
    fail "nnprec train $2: $(tail -3 "$tmp/$1.log")"
    continue
  fi
  compare "$1"
  rc=$?
  cat "$tmp/$1.cmp"
  [ "$rc" = 0 ] && ok || fail "$2: nnprec's step differs from PyTorch's (exit $rc)"
done

# 3. the masks of step 1 instead of step 0: the losses and updates must differ
if [ -f "$tmp/resmlp.step/ckpt-00000001.h5" ]; then
  compare resmlp --mask-step 1
  rc=$?
  [ "$rc" = 1 ] && grep -q "train-mode loss differs" "$tmp/resmlp.cmp" && ok \
    || fail "the masks of step 1 were accepted (exit $rc): $(tail -3 "$tmp/resmlp.cmp")"
fi

finish torch_step
