#!/usr/bin/env bash
# Bad input to the Python scripts (scripts/*.py): every case must exit with its code (2 for a
# bad argument, 1 for a bad file or a failed step), write exactly one stderr line
# "SCRIPT: error: ..." and no Python traceback, and never hang (each run is limited to 20 s:
# `experiments.py run --jobs 0` and `torch_ref.py ddp --nproc 0` used to loop forever).
# idx_to_h5.py must not leave FILE.h5.tmp behind. Nothing here trains: the inputs are small
# files made below, plus one 1-step checkpoint from nnprec for ckpt_to_torch.py.
#
# usage: scripts_errors.sh [NNPREC]        (default: build/nnprec of this checkout)
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
nnprec=${1:-$root/build/nnprec}
case $nnprec in /*) ;; *) nnprec=$PWD/$nnprec ;; esac  # the checks run in a temporary folder
py=/usr/bin/python3
S=$root/scripts
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp" || exit 1
passes=0 fails=0
ok()   { passes=$((passes + 1)); }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
finish() { echo "$passes passed, $fails failed"; [ "$fails" = 0 ]; exit $?; }

# check CODE PATTERN SCRIPT ARGS...: exit CODE, and stderr exactly one line
# "SCRIPT: error: ..." matching PATTERN, no traceback anywhere
check() {
  local code=$1 pat=$2 script=$3; shift 3
  timeout 20 "$py" "$S/$script" "$@" > out 2> err
  local rc=$? what="$script $*" note=
  [ "$rc" = 124 ] && note=" (timed out after 20 s)"
  if [ "$rc" != "$code" ]; then
    fail "$what -> exit $rc$note, want $code; stderr: $(head -c 300 err)"
  elif grep -q Traceback out err; then
    fail "$what -> traceback: $(tail -1 err)"
  elif [ "$(wc -l < err)" != 1 ]; then
    fail "$what -> $(wc -l < err) stderr lines, want 1: $(head -c 300 err)"
  elif ! grep -q "^$script: error: " err; then
    fail "$what -> stderr is not '$script: error: ...': $(cat err)"
  elif ! grep -q -- "$pat" err; then
    fail "$what -> stderr lacks '$pat': $(cat err)"
  else
    ok
  fi
}
no_tmp() { [ -z "$(find . -name '*.h5.tmp')" ] && ok || fail "$1: left $(find . -name '*.h5.tmp')"; }

# --- inputs: a tiny IDX set (8 train, 4 test images) and its variants, a layers.csv, a
# scaling study with a short row, and a 1-step nnprec checkpoint with damaged copies
[ -x "$nnprec" ] || { fail "$nnprec is not an executable (give the nnprec binary as \$1)"; finish; }
"$py" - <<'EOF' || { fail "making the inputs"; finish; }
import gzip, os, struct
import numpy as np
def idx(d, split, n, zero=False):
    os.makedirs(d, exist_ok=True)
    k = 0 if zero else n
    with gzip.open(f"{d}/{split}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, k, 28, 28) + bytes(k * 784))
    with gzip.open(f"{d}/{split}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, k) + bytes(np.arange(k, dtype=np.uint8) % 10))
for d in ("good", "corrupt", "trunc", "dirin", "zero"):
    idx(d, "train", 8, zero=d == "zero")
    idx(d, "t10k", 4, zero=d == "zero")
open("corrupt/t10k-labels-idx1-ubyte.gz", "wb").write(b"this is not gzip data")
data = open("good/train-images-idx3-ubyte.gz", "rb").read()
open("trunc/train-images-idx3-ubyte.gz", "wb").write(data[:len(data) // 2])
os.remove("dirin/train-labels-idx1-ubyte.gz")
os.mkdir("dirin/train-labels-idx1-ubyte.gz")
os.makedirs("run")
with open("run/layers.csv", "w") as f:
    f.write("step,tensor,name,w_mean,w_std,act_mean,act_std,grad_std,grad_std_precond,factor\n")
    for step in (0, 10):
        for t, name in enumerate(("fc1.weight", "fc1.bias", "fc2.weight")):
            f.write(f"{step},{t},{name},0.01,0.1,0.0,1.0,{1e-3 * (t + 1)},{1e-3 * (t + 1)},1\n")
os.makedirs("study/train/default-np1-s1")
with open("study/train/default-np1-s1/eval.csv", "w") as f:
    f.write("step,epoch,test_loss,test_acc,wall_s\n10,1,0.5,0.8,3\n20,2,0.4\n")
EOF
"$nnprec" train --steps 1 --train-limit 64 --test-limit 64 --quiet --out ck > ck.log 2>&1 \
  || { fail "$nnprec train for the checkpoint: $(tail -2 ck.log)"; finish; }
ck=ck/$(cat ck/latest)
"$py" - "$ck" <<'EOF' || { fail "damaging the checkpoint"; finish; }
import shutil, sys
import h5py, numpy as np
src = sys.argv[1]
def copy(name, change):
    shutil.copy(src, name)
    with h5py.File(name, "r+") as h:
        change(h)
layers = lambda h: [g for g in h if isinstance(h[g], h5py.Group) and "weight" in h[g]]
copy("std0.h5", lambda h: h.attrs.modify("norm_std", 0.0))
def nan_weight(h):
    w = h[layers(h)[0]]["weight"]
    a = w[()]
    a.flat[0] = np.inf
    w[...] = a
copy("nanw.h5", nan_weight)
copy("nobias.h5", lambda h: h[layers(h)[-1]].__delitem__("bias"))
data = open(src, "rb").read()
open("trunc.h5", "wb").write(data[:len(data) // 2])
open("text.h5", "w").write("not HDF5\n")
EOF
mkdir nolatest adir
touch study2

# --- idx_to_h5.py
timeout 20 "$py" "$S/idx_to_h5.py" good good.h5 > conv.log 2>&1 && [ -s good.h5 ] && ok \
  || fail "idx_to_h5.py does not convert the good IDX set: $(tail -2 conv.log)"
check 1 "Not a gzipped file" idx_to_h5.py corrupt o.h5;          no_tmp "corrupt .gz"
check 1 "truncated" idx_to_h5.py trunc o.h5;                     no_tmp "truncated .gz"
check 1 "Is a directory" idx_to_h5.py dirin o.h5;                no_tmp "folder for an input"
check 1 "empty" idx_to_h5.py zero o.h5;                          no_tmp "zero-count files"
check 1 "no such directory" idx_to_h5.py good nowhere/o.h5;      no_tmp "missing output folder"
check 1 "is a directory" idx_to_h5.py good adir;                 no_tmp "output is a folder"
check 2 "empty" idx_to_h5.py good ''
check 1 "not a directory" idx_to_h5.py nowhere o.h5
[ ! -e o.h5 ] && ok || fail "idx_to_h5.py wrote o.h5 from bad input"

# --- ckpt_to_torch.py (each run imports torch: about 2 s, so only the main cases)
d=(--data good.h5)
check 2 "positive" ckpt_to_torch.py "$ck" "${d[@]}" --batch 0
check 1 "normalization std" ckpt_to_torch.py std0.h5 "${d[@]}"
check 1 "non-finite" ckpt_to_torch.py nanw.h5 "${d[@]}"
check 1 "no dataset" ckpt_to_torch.py nobias.h5 "${d[@]}"
check 1 "no such checkpoint" ckpt_to_torch.py missing.h5 "${d[@]}"
check 1 "cannot read the checkpoint" ckpt_to_torch.py trunc.h5 "${d[@]}"
check 1 "not an HDF5 file" ckpt_to_torch.py text.h5 "${d[@]}"
check 1 "latest" ckpt_to_torch.py nolatest "${d[@]}"
check 1 "no such directory" ckpt_to_torch.py "$ck" "${d[@]}" --save nowhere/m.pt

# --- experiments.py (--jobs 0 used to loop forever)
check 2 "positive" experiments.py run seed-precond --jobs 0 --nnprec "$nnprec" --results res
check 2 "positive" experiments.py run seed-precond --jobs -1 --nnprec "$nnprec" --results res
check 2 "positive" experiments.py run seed-precond --epochs 0 --nnprec "$nnprec" --results res
check 2 "no config" experiments.py run seed-precond --only nosuch --nnprec "$nnprec" --results res
check 1 "no runs" experiments.py summary seed-precond --results res

# --- scaling_report.py
check 1 "line 3" scaling_report.py study
check 1 "not a directory" scaling_report.py study2

# --- compare.py
check 1 "no such run folder" compare.py nowhere
check 1 "no train.csv or eval.csv" compare.py run
check 1 "has no train.csv" compare.py study/train/default-np1-s1
check 2 "--target must be in" compare.py run --target 0
check 2 "image format" compare.py run --plot p.xyz

# --- plot_layers.py
check 2 "positive" plot_layers.py run --out p.png --dpi 0
check 2 "too large" plot_layers.py run --out p.png --dpi 100000
check 2 "image format" plot_layers.py run --out p.xyz
check 2 "empty" plot_layers.py run --out ''
check 1 "not found" plot_layers.py nowhere --out p.png
left=$(find . -maxdepth 1 \( -name 'p.*' -o -name '.png' \))
[ -z "$left" ] && ok || fail "plot_layers.py wrote $left"

# --- plot_depth.py
check 2 "invalid int" plot_depth.py --nnprec "$nnprec" --out pd --layers abc
check 2 "positive" plot_depth.py --nnprec "$nnprec" --out pd --depth 0

# --- torch_ref.py (ddp --nproc 0 used to hang)
check 2 "positive" torch_ref.py ddp --nproc 0 --steps 1
check 2 "positive" torch_ref.py bench --batch 0
check 2 "positive" torch_ref.py bench --steps 0
check 2 "invalid choice" torch_ref.py bench --act foo

# --- bench_speed.py, bench_precond.py, bench_scaling.py (nothing runs: argument errors)
check 2 "positive" bench_speed.py --nnprec "$nnprec" --rounds 0
check 2 "positive" bench_precond.py --nnprec "$nnprec" --rounds 0
check 2 "positive" bench_precond.py --nnprec "$nnprec" --ranks 0
check 2 "positive" bench_precond.py --nnprec "$nnprec" --ranks -1
check 2 "positive" bench_scaling.py --nnprec "$nnprec" --ranks 0
check 2 "image format" bench_scaling.py --nnprec "$nnprec" --plot s.xyz
check 2 "positive" bench_noise.py --nnprec "$nnprec" --rounds 0
check 2 "positive" bench_noise.py --nnprec "$nnprec" --ranks 0
check 1 "not an executable" bench_noise.py --nnprec nowhere/nnprec
check 2 "positive" bench_deterministic.py --nnprec "$nnprec" --rounds 0
check 2 "positive" bench_deterministic.py --nnprec "$nnprec" --ranks 0
check 2 ">= 0" bench_deterministic.py --nnprec "$nnprec" --micro-shard -1
check 1 "not an executable" bench_deterministic.py --nnprec nowhere/nnprec
check 2 "positive" bench_optim.py --nnprec "$nnprec" --rounds 0
check 2 "invalid choice" bench_optim.py --nnprec "$nnprec" --modes ring
check 1 "not an executable" bench_optim.py --nnprec nowhere/nnprec
check 1 "--also nowhere/nnprec is not an executable" bench_optim.py --nnprec "$nnprec" --also nowhere/nnprec

# --- plot_noise.py
mkdir -p ns plain
printf 'step,epoch,train_loss,train_acc,lr,samples_per_s,wall_s,g2,trsigma,noise_scale\n10,0.5,2,0.1,0.01,100,1,0.5,20,40\n' \
  > ns/train.csv
printf 'step,epoch,train_loss,train_acc,lr,samples_per_s,wall_s\n10,0.5,2,0.1,0.01,100,1\n' > plain/train.csv
timeout 20 "$py" "$S/plot_noise.py" ns --batch 64 --out n.png > pn.log 2>&1 && [ -s n.png ] && ok \
  || fail "plot_noise.py does not plot a good train.csv: $(tail -2 pn.log)"
check 2 "positive" plot_noise.py ns --out p.png --dpi 0
check 2 "too large" plot_noise.py ns --out p.png --dpi 100000
check 2 "image format" plot_noise.py ns --out p.xyz
check 2 "empty" plot_noise.py ns --out ''
check 2 "one per run" plot_noise.py ns --out p.png --batch 1 --batch 2
check 1 "not found" plot_noise.py nowhere --out p.png
check 1 "lacks the column" plot_noise.py plain --out p.png
left=$(find . -maxdepth 1 \( -name 'p.*' -o -name '.png' \))
[ -z "$left" ] && ok || fail "plot_noise.py wrote $left"

# --- plot_trace.py (a real trace is drawn in tests/trace.sh)
printf '{"traceEvents": [{"name": "data", "ph": "X", "pid": 0, "tid": 0, "ts": 0, "dur": 5, "args": {"step": 1}}]}\n' > t.json
printf '{"traceEvents": [{"name": "data", "ph": "X", "pid": 0}]}\n' > bad-event.json
printf '{"traceEvents": [' > cut.json
printf '[1, 2]\n' > list.json
check 2 "A:B" plot_trace.py t.json --out p.png --steps 3
check 2 "1 <= A <= B" plot_trace.py t.json --out p.png --steps 4:2
check 2 "image format" plot_trace.py t.json --out p.xyz
check 1 "No such file" plot_trace.py nowhere.json --out p.png
check 1 "is not a trace (JSON" plot_trace.py cut.json --out p.png
check 1 "no traceEvents list" plot_trace.py list.json --out p.png
check 1 "an event without" plot_trace.py bad-event.json --out p.png
check 1 "has no events in steps 2:3" plot_trace.py t.json --out p.png --steps 2:3
left=$(find . -maxdepth 1 \( -name 'p.*' -o -name '.png' \))
[ -z "$left" ] && ok || fail "plot_trace.py wrote $left"

# --- bench_stream.py (make_h5_dataset.py has its own test, tests/make_h5.sh)
check 1 "not an executable" bench_stream.py --nnprec nowhere/nnprec
check 2 "positive" bench_stream.py --nnprec "$nnprec" --steps 0
check 2 "positive" bench_stream.py --nnprec "$nnprec" --ranks -1
check 1 "no such file" bench_stream.py --nnprec "$nnprec" --file nowhere.h5
check 1 "no such folder" bench_stream.py --nnprec "$nnprec" --file t.json --out nowhere
check 1 "not found" bench_stream.py --nnprec "$nnprec" --mpiexec no-such-mpiexec

# --- rep_rank.py: a known answer (fc2 made rank one with no bias: fc3's input lies on one
# line, participation ratio 1), then bad input
"$nnprec" train --model mlp:784-16x3-10 --steps 1 --train-limit 64 --test-limit 64 --quiet \
  --out rr > rr.log 2>&1 || fail "$nnprec train for rep_rank.py: $(tail -2 rr.log)"
"$py" - rr/"$(cat rr/latest)" <<'EOF' || fail "making the rank-one checkpoint"
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r+") as h:
    r = np.random.default_rng(1)
    h["fc2/weight"][...] = np.outer(r.uniform(0.5, 1, 16), r.normal(size=16)).astype("float32")
    h["fc2/bias"][...] = 0
EOF
timeout 60 "$py" "$S/rep_rank.py" rr --images 200 --csv rr.csv > rr.out 2>&1 && ok \
  || fail "rep_rank.py on an mlp checkpoint: $(tail -2 rr.out)"
"$py" - <<'EOF' && ok || fail "rep_rank.py: fc3's input is not on one line: $(cat rr.csv)"
import csv
rows = {int(r["layer"]): float(r["pr"]) for r in csv.DictReader(open("rr.csv"))}
assert sorted(rows) == [2, 3, 4], rows
assert abs(rows[3] - 1) < 1e-6 and rows[2] > 1.5, rows
EOF
check 1 "not a dense network" rep_rank.py ck
check 1 "no checkpoints" rep_rank.py adir
check 2 "given 2 times for 1 runs" rep_rank.py rr --label a --label b --out p.png
check 2 "image format" rep_rank.py rr --out p.xyz
check 2 "positive" rep_rank.py rr --images 0
mkdir -p rrbad && cp text.h5 rrbad/ckpt-00000001.h5
check 1 "cannot read" rep_rank.py rrbad

finish
