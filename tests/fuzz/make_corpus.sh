#!/usr/bin/env bash
# Write the seed corpora of the fuzz harnesses into tests/fuzz/corpus/NAME (committed; run
# again only to change the seeds): small valid inputs of every kind each reader takes, from
# which libFuzzer mutates. Needs a built nnprec (for the checkpoints) and Debian's Python
# with h5py and numpy.
# usage: tests/fuzz/make_corpus.sh [NNPREC]        (default: build/nnprec)
set -euo pipefail
cd "$(dirname "$0")/../.."
nnprec=${1:-build/nnprec}
out=tests/fuzz/corpus
rm -rf "$out"
mkdir -p "$out"/{idx,h5data,spec,options,ckpt}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

/usr/bin/python3 - "$out" "$tmp" <<'EOF'
import gzip, struct, sys
import h5py
import numpy as np

out, tmp = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(7)

# idx: [cut (2 bytes, big-endian), mode] + images file + labels file
def idx_pair(n, h, w, gz_images=False, gz_labels=False, lab_n=None):
    img = struct.pack(">IIII", 0x803, n, h, w) + rng.integers(0, 256, n * h * w, dtype=np.uint8).tobytes()
    lab = struct.pack(">II", 0x801, n if lab_n is None else lab_n) + rng.integers(0, 10, n, dtype=np.uint8).tobytes()
    if gz_images:
        img = gzip.compress(img, mtime=0)
    if gz_labels:
        lab = gzip.compress(lab, mtime=0)
    return img, lab
cases = [((3, 4, 4), {}, 0), ((2, 28, 28), {}, 0), ((5, 3, 2), {"gz_images": True}, 1),
         ((4, 2, 2), {"gz_images": True, "gz_labels": True}, 2), ((6, 1, 3), {}, 0x13),
         ((0, 2, 2), {}, 0), ((3, 2, 2), {"lab_n": 4}, 0)]
for i, (shape, kw, mode) in enumerate(cases):
    img, lab = idx_pair(*shape, **kw)
    with open(f"{out}/idx/seed{i}", "wb") as f:
        f.write(struct.pack(">H", len(img) % 65536) + bytes([mode]) + img + lab)

# h5data: an HDF5 dataset file + a mode byte
# HDF5 1.8's format (checksummed metadata): with h5py's default, the oldest format, a
# damaged local heap crashes HDF5 1.10 itself (docs/reliability.md), which would end every
# run that mutates into it
def h5file(path, train_x, train_y, test_x, test_y):
    with h5py.File(path, "w", libver=("v108", "v108")) as f:
        f["train/images"], f["train/labels"] = train_x, train_y
        f["test/images"], f["test/labels"] = test_x, test_y
def h5seed(name, mode, *arrays):
    p = f"{tmp}/{name}.h5"
    h5file(p, *arrays)
    with open(p, "rb") as f:
        data = f.read()
    with open(f"{out}/h5data/{name}", "wb") as f:
        f.write(data + bytes([mode]))
u8 = lambda *s: rng.integers(0, 256, s, dtype=np.uint8)
f32 = lambda *s: rng.random(s, dtype=np.float32)
lab = lambda n: rng.integers(0, 3, n).astype(np.uint8)
h5seed("u8", 0, u8(4, 3, 3), lab(4), u8(2, 3, 3), lab(2))
h5seed("f32_nchw", 1, f32(3, 2, 2, 2), lab(3), f32(2, 2, 2, 2), lab(2))
h5seed("i64_labels", 4, u8(5, 2, 2), lab(5).astype(np.int64), u8(3, 2, 2), lab(3).astype(np.int16))

# spec: [input shape, activation] + the spec string
specs = ["lenet", "mlp:784-16x2-10", "resnet8", "resnet20", "resmlp:784-8x2-10",
         "seq:1x28x28/conv:4:3:1:1/bn/relu/maxpool:2/flatten/dense:8/bn/relu/dense:10",
         "seq:784/dense:16/relu/dropout:0.3/dense:8/bn/relu/dropout:0.1/dense:10",
         "seq:784/dense:16/bn/relu/res[dense:16/bn/relu/dense:16/bn]/relu/res[dense:8/bn]/relu/dense:10",
         "seq:3x8x8/conv:4:3:2:1/leaky-relu:0.1/avgpool:2/flatten/dense:10",
         "seq:3x8x8/conv:8:3:1:1/bn/relu/gap/dense:10", "seq:2x5x7/flatten/dense:3/tanh/dense:2/sigmoid",
         "seq:4/dense:3/identity/dense:2"]
for i, s in enumerate(specs):
    with open(f"{out}/spec/seed{i}", "wb") as f:
        f.write(bytes([i % 4, i % 5]) + s.encode())

# options: [mode] + NUL-separated arguments, or + a --config file
cmds = [["--lr", "0.1", "--batch", "32", "--steps", "100", "--model", "mlp:784-16-10", "--nesterov"],
        ["--no-nesterov", "--out", "run", "--lr=0.5"], ["--batch", "-1"], ["--lr", "1e400"],
        ["--steps", "99999999999999999999"], ["--help"], ["--model"]]
for i, c in enumerate(cmds):
    with open(f"{out}/options/cmd{i}", "wb") as f:
        f.write(b"\0" + b"\0".join(a.encode() for a in c))
configs = ["# a run's options\n--lr 0.05\n--batch 16\n--model lenet\n--nesterov 1\n",
           "--steps  12 \n\n--out /tmp/x\n--lr\t0.25\n", "--bogus 1\n", "lr 0.1\n"]
for i, c in enumerate(configs):
    with open(f"{out}/options/config{i}", "wb") as f:
        f.write(b"\1" + c.encode())

# a tiny dataset for the checkpoint seeds: 2x2 images, 3 classes
h5file(f"{tmp}/tiny.h5", f32(40, 1, 2, 2), lab(40), f32(6, 1, 2, 2), lab(6))
EOF

# ckpt: small checkpoints written by nnprec (momentum + dynamic preconditioner, BatchNorm
# with Adam), and one written before checksums
run() { "$nnprec" train --data "$tmp/tiny.h5" --steps 2 --batch 4 --quiet "$@" > /dev/null; }
run --model seq:1x2x2/flatten/dense:3/relu/dense:3 --precond dynamic --out "$tmp/a"
run --model seq:1x2x2/flatten/dense:4/bn/relu/dense:3 --optim adam --out "$tmp/b"
run --model seq:1x2x2/flatten/dense:2/tanh/dense:3 --momentum 0 --out "$tmp/c"
cp "$tmp/a/ckpt-00000002.h5" "$out/ckpt/sgd_dynamic.h5"
cp "$tmp/b/ckpt-00000002.h5" "$out/ckpt/bn_adam.h5"
cp "$tmp/c/ckpt-00000002.h5" "$out/ckpt/plain_sgd.h5"
/usr/bin/python3 "$(dirname "$0")/../ckpt_flip.py" strip "$out/ckpt/sgd_dynamic.h5" "$out/ckpt/no_checksums.h5"
for d in "$out"/*; do echo "$(basename "$d"): $(ls "$d" | wc -l) seeds, $(du -sk "$d" | cut -f1) kB"; done
