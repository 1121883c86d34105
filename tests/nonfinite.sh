#!/usr/bin/env bash
# Non-finite values (docs/reliability.md):
#  1. a nan that enters the parameters but not the loss: LeNet on pixels in [0, 1] at a
#     learning rate of 1e20 with plain SGD overflows weights at step 2 while the loss stays
#     finite (a relu maps nan to 0, inf * 0 is nan); without the optimizer's own check such a
#     run finished with exit code 0 and chance accuracy. Every rank stops at that step with
#     one message naming the step and the first non-finite tensor, at 1 and 2 ranks in every
#     --allreduce mode (with sharded and shm each rank checks only its share: the tensor is
#     agreed over the ranks), and for LARS and Adam; train.csv logs the step (finite loss) and
#     no checkpoint of it is written;
#  2. input data: a float32 HDF5 dataset file with a nan (training set) or an inf (test set,
#     read by rank 1 at 2 ranks) is refused at load time, naming the sample and the pixel;
#     the same file without them trains.
# usage: nonfinite.sh NNPREC MPIEXEC
set -uo pipefail
nnprec=$1 mpiexec=$2
py=/usr/bin/python3
source "$(dirname "$0")/cli_lib.sh"
mpi=("$mpiexec" -n 2 --oversubscribe "$nnprec")

# 1. parameters only
big=(train --model lenet --normalize 0,1 --lr 1e20 --momentum 0 --train-limit 1000 --test-limit 200
     --steps 30 --global-batch 16 --log-every 1 --quiet)
msg="training diverged at step 2: the optimizer step left non-finite parameters (nan or inf), first in fc2.weight; lower --lr, or check the data"
expect 1 "^nnprec: error: $msg$" "$nnprec" "${big[@]}"
expect 1 "^nnprec: error: $msg; no checkpoint was written for this step$" "$nnprec" "${big[@]}" \
  --checkpoint-every 1 --out "$tmp/one"
tail -1 "$tmp/one/train.csv" | awk -F, '$1 == 2 && $3 + 0 == $3 && $3 != "nan" && $3 != "-nan" { ok = 1 } END { exit !ok }' \
  && ok || fail "train.csv does not end at step 2 with a finite loss: $(tail -2 "$tmp/one/train.csv")"
[ "$(cat "$tmp/one/latest")" = ckpt-00000001.h5 ] && [ ! -e "$tmp/one/ckpt-00000002.h5" ] && ok \
  || fail "a checkpoint of the non-finite parameters: $(ls "$tmp/one")"
for mode in fused bucketed sharded shm; do
  expect 1 "^nnprec: error (rank 0): $msg$" "${mpi[@]}" "${big[@]}" --allreduce "$mode"
done
expect 1 "training diverged at step [0-9]*: the optimizer step left non-finite parameters (nan or inf), first in [a-z0-9]*\.weight" \
  "${mpi[@]}" "${big[@]}" --optim lars --lr 1e36 --allreduce sharded
expect 1 "training diverged at step 1: the optimizer step left non-finite parameters (nan or inf), first in conv1\.weight" \
  "${mpi[@]}" "${big[@]}" --optim adam --lr 1e38 --allreduce shm
# the dynamic preconditioner, which measures the layers' moments first, says the same
expect 1 "^nnprec: error: training diverged at step [0-9]*: the layers' activation or gradient moments the preconditioner measures are no longer finite; lower --lr$" \
  "$nnprec" train --model lenet --precond dynamic --lr 50 --steps 30 --train-limit 1000 \
  --test-limit 100 --global-batch 64 --quiet

# 2. non-finite input data
$py - "$tmp" <<'EOF' || { echo "cannot write the datasets"; exit 1; }
import sys
import h5py
import numpy as np
d = sys.argv[1]
rng = np.random.default_rng(5)
x = rng.random((200, 1, 28, 28), dtype=np.float32)
y = rng.integers(0, 10, 200).astype(np.uint8)
xt, yt = x[:50].copy(), y[:50].copy()
def write(name, x, xt):
    with h5py.File(f"{d}/{name}.h5", "w") as f:
        f["train/images"], f["train/labels"] = x, y
        f["test/images"], f["test/labels"] = xt, yt
write("good", x, xt)
xn = x.copy(); xn[137, 0, 3, 11] = np.nan
write("nan", xn, xt)
xi = xt.copy(); xi[40, 0, 27, 0] = -np.inf
write("inf", x, xi)
EOF
data=(train --steps 3 --batch 8 --quiet)
"$nnprec" "${data[@]}" --data "$tmp/good.h5" > "$tmp/good.log" 2>&1 && ok || fail "the float dataset: $(cat "$tmp/good.log")"
expect 1 "^nnprec: error: $tmp/nan.h5: /train/images sample 137 holds a non-finite value (nan) at channel 0, row 3, column 11$" \
  "$nnprec" "${data[@]}" --data "$tmp/nan.h5"
expect 1 "^nnprec: error (rank 1): $tmp/inf.h5: /test/images sample 40 holds a non-finite value (inf) at channel 0, row 27, column 0$" \
  "${mpi[@]}" "${data[@]}" --data "$tmp/inf.h5"
expect 1 "/test/images sample 40 holds a non-finite value (inf)" "$nnprec" eval --checkpoint "$tmp/one/ckpt-00000001.h5" --data "$tmp/inf.h5"
finish nonfinite
