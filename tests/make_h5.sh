#!/usr/bin/env bash
# scripts/make_h5_dataset.py: tiny synthetic sets (3,000 samples) in each layout (row chunks,
# gzip, contiguous, --bad-chunks, --size), checked with h5py: shapes, dtypes, chunking,
# compression, the untouched Fashion-MNIST test split, labels 0..9, same seed -> same bytes
# (whatever the layout), another seed -> other bytes; every sample of a run from a 12-image
# source is a shifted/flipped copy of a source image with its label; --noise stays near the
# clean copy; SIGTERM mid-write removes OUT.tmp-PID; --measure-only prints its line. Then each
# bad input exits non-zero with one stderr line "make_h5_dataset.py: error: ..." and no
# traceback. Runs in about 15 s; needs Fashion-MNIST in /usr/share/datasets/fashion-mnist.
#
# usage: tests/make_h5.sh [SCRIPT]      (default: scripts/make_h5_dataset.py of this checkout)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
script=${1:-$root/scripts/make_h5_dataset.py}
case $script in /*) ;; *) script=$PWD/$script ;; esac  # the checks run in a temporary folder
py=/usr/bin/python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
passes=0 fails=0
ok()   { passes=$((passes + 1)); }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
finish() { echo "make_h5: $passes passed, $fails failed"; [ "$fails" = 0 ]; }

# gen NAME ARGS...: make NAME.h5, log in NAME.log
gen() {
  local name=$1; shift
  if timeout 60 "$py" "$script" "$name.h5" "$@" > "$name.log" 2>&1; then ok
  else fail "make_h5_dataset.py $name.h5 $* -> exit $?: $(tail -2 "$name.log")"; fi
}

# bad WHAT ARGS...: must exit non-zero, stderr exactly one line with "error:", no traceback
bad() {
  local what=$1 rc=0; shift
  timeout 30 "$py" "$script" "$@" > out 2> err || rc=$?
  if [ "$rc" = 0 ]; then fail "$what ($*) -> exit 0"
  elif [ "$rc" = 124 ]; then fail "$what ($*) -> timed out"
  elif grep -q Traceback out err; then fail "$what ($*) -> traceback: $(tail -1 err)"
  elif [ "$(wc -l < err)" != 1 ]; then fail "$what ($*) -> $(wc -l < err) stderr lines: $(head -c 300 err)"
  elif ! grep -q "^make_h5_dataset.py: error: " err; then fail "$what ($*) -> stderr: $(cat err)"
  else ok; fi
}

# --- sources: Fashion-MNIST unpacked (raw IDX files read in 0.1 s, the .gz in 1 s: all runs
# but the first use it), and 12 training images (labels 0..9, 0, 1) to check the augmentation
"$py" - <<'EOF' || fail "making the sources"
import gzip, os, shutil, struct
import numpy as np
os.makedirs("fm")
for name in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
    with gzip.open(f"/usr/share/datasets/fashion-mnist/{name}-ubyte.gz") as f, \
         open(f"fm/{name}-ubyte", "wb") as g:
        shutil.copyfileobj(f, g)
rng = np.random.default_rng(7)
os.makedirs("tiny")
for split, n in (("train", 12), ("t10k", 5)):
    x = rng.integers(1, 256, (n, 28, 28), dtype=np.uint8)  # no zeros: a shift shows
    with gzip.open(f"tiny/{split}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + x.tobytes())
    with gzip.open(f"tiny/{split}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + (np.arange(n, dtype=np.uint8) % 10).tobytes())
EOF

gen rows    --samples 3000 --chunk-rows 256   # the default --source
gen rows2   --samples 3000 --chunk-rows 256 --source fm
gen gz      --samples 3000 --chunk-rows 256 --gzip 4 --source fm
gen contig  --samples 3000 --contiguous --source fm
gen badch   --samples 3000 --chunk-rows 256 --bad-chunks --source fm
gen size    --size 2M --source fm
gen big     --samples 300 --chunk-rows 5000 --source tiny
gen tiny    --samples 3000 --chunk-rows 100 --source tiny
gen noisy   --samples 3000 --chunk-rows 100 --source tiny --noise 8
gen contig  --samples 3000 --contiguous --source fm --force --seed 2   # overwrites, seed 2

"$py" - <<'EOF' > check.out 2>&1 || fail "the h5py checks crashed: $(tail -3 check.out)"
import gzip, struct
import h5py
import numpy as np

def idx(path):
    d = gzip.open(path).read()
    ndim = d[3]
    dims = struct.unpack(">" + "I" * ndim, d[4:4 + 4 * ndim])
    return np.frombuffer(d, np.uint8, offset=4 + 4 * ndim).reshape(dims)

fm = "/usr/share/datasets/fashion-mnist"
tx, ty = idx(fm + "/t10k-images-idx3-ubyte.gz"), idx(fm + "/t10k-labels-idx1-ubyte.gz")

def check(name, cond, detail=""):
    print(("PASS " if cond else "FAIL ") + name + ("" if cond else ": " + str(detail)))

def load(name):
    return h5py.File(name + ".h5", "r")

want = {  # name: (N, chunks, compression, compression_opts)
    "rows": (3000, (256, 1, 28, 28), None, None),
    "gz": (3000, (256, 1, 28, 28), "gzip", 4),
    "contig": (3000, None, None, None),
    "badch": (3000, (256, 1, 14, 14), None, None),
    "size": (2 * 2**20 // 784, (1024, 1, 28, 28), None, None),
    "big": (300, (300, 1, 28, 28), None, None),  # chunk rows > N: one chunk of N rows
}
for name, (n, chunks, comp, opts) in want.items():
    fmnist = name != "big"  # big.h5 comes from the tiny source
    with load(name) as f:
        im, lb = f["/train/images"], f["/train/labels"]
        check(f"{name}: /train/images uint8 {(n, 1, 28, 28)}",
              im.dtype == np.uint8 and im.shape == (n, 1, 28, 28), (im.dtype, im.shape))
        check(f"{name}: /train/labels uint8 ({n},) contiguous",
              lb.dtype == np.uint8 and lb.shape == (n,) and lb.chunks is None,
              (lb.dtype, lb.shape, lb.chunks))
        check(f"{name}: chunks {chunks}", im.chunks == chunks, im.chunks)
        check(f"{name}: compression {comp} {opts}",
              im.compression == comp and im.compression_opts == opts,
              (im.compression, im.compression_opts))
        y = lb[:]
        check(f"{name}: labels in 0..9", y.max() <= 9, y.max())
        check(f"{name}: all 10 classes present", len(np.unique(y)) == 10, np.unique(y))
        check(f"{name}: images not blank", im[:].mean() > 20, im[:].mean())
        if not fmnist:
            continue
        ti, tl = f["/test/images"], f["/test/labels"]
        check(f"{name}: /test = Fashion-MNIST's test set",
              ti.dtype == np.uint8 and ti.shape == (10000, 1, 28, 28) and tl.dtype == np.uint8
              and np.array_equal(ti[:, 0], tx) and np.array_equal(tl[:], ty),
              (ti.dtype, ti.shape, tl.dtype))

def train(name):
    with load(name) as f:
        return f["/train/images"][:], f["/train/labels"][:]

rows, rows2, seed2 = train("rows"), train("rows2"), train("contig")
check("same seed, same bytes", np.array_equal(rows[0], rows2[0]) and np.array_equal(rows[1], rows2[1]))
check("other seed (contig.h5 rewritten by --force), other bytes",
      not np.array_equal(rows[0], seed2[0]) and not np.array_equal(rows[1], seed2[1]))
check("gzip'd file holds the same samples", np.array_equal(rows[0], train("gz")[0]))
check("bad-chunks file holds the same samples", np.array_equal(rows[0], train("badch")[0]))
s = train("size")[0]
check("--size 2M: a prefix of the same stream", np.array_equal(s, rows[0][:len(s)]))

# every tiny-source sample is a +-2 px shifted (zero fill), maybe flipped, source image
src, srcl = idx("tiny/train-images-idx3-ubyte.gz"), idx("tiny/train-labels-idx1-ubyte.gz")
x, y = train("tiny")
pad = np.pad(src, ((0, 0), (2, 2), (2, 2)))
cands = np.stack([w[:, :, ::-1] if f else w for oy in range(5) for ox in range(5)
                  for w in [pad[:, oy:oy + 28, ox:ox + 28]] for f in (0, 1)], 1)  # (12, 50, 28, 28)
flat = cands.reshape(-1, 784)
lut = {flat[k].tobytes(): k for k in range(len(flat))}
hits = [lut.get(s.tobytes()) for s in x[:, 0]]
check("each sample is a shifted/flipped source image",
      all(h is not None for h in hits), sum(h is None for h in hits))
k = np.array([h if h is not None else 0 for h in hits])
check("each sample has its source's label", np.array_equal(srcl[k // 50], y))
check("all 50 shift/flip variants occur", len(np.unique(k % 50)) == 50, len(np.unique(k % 50)))
check("all 12 source images occur", len(np.unique(k // 50)) == 12)
xn, yn = train("noisy")
diff = np.abs(xn.astype(int) - x.astype(int))
check("--noise 8: same sources and labels, pixels moved a little",
      np.array_equal(yn, y) and 3 < diff.mean() < 12 and diff.max() <= 64,
      (diff.mean(), diff.max()))
EOF
while read -r word rest; do
  case $word in PASS) ok ;; FAIL) fail "$rest" ;; *) fail "h5py check: $word $rest" ;; esac
done < check.out

# --- --measure-only prints its one line
if timeout 60 "$py" "$script" gz.h5 --measure-only > m.out 2>&1 \
   && grep -q '^\[measure\] gz.h5 (chunked (256, 1, 28, 28), gzip 4): 2000 random samples.* samples/s, .* MiB/s$' m.out
then ok; else fail "--measure-only: $(cat m.out)"; fi

# --- SIGTERM while writing: exit non-zero, one error line, no OUT.tmp-PID, no OUT
"$py" "$script" killed.h5 --samples 3000000 --noise 8 --source tiny > k.out 2> k.err &
pid=$!
for _ in $(seq 100); do compgen -G 'killed.h5.tmp-*' > /dev/null && break; sleep 0.1; done
kill -TERM "$pid" 2> /dev/null || true
rc=0; wait "$pid" || rc=$?
if [ "$rc" = 0 ]; then fail "SIGTERM: the write finished before the signal"
elif compgen -G 'killed.h5*' > /dev/null; then fail "SIGTERM: left $(echo killed.h5*)"
elif [ "$(wc -l < k.err)" != 1 ] || ! grep -q '^make_h5_dataset.py: error: interrupted' k.err
then fail "SIGTERM (exit $rc): stderr $(head -c 300 k.err)"
else ok; fi

# --- bad input
touch exists.h5
bad "output exists"              exists.h5 --samples 10
bad "output folder missing"      nodir/x.h5 --samples 10
bad "output is a folder"         tiny --samples 10 --force
bad "no size"                    x.h5
bad "size 0"                     x.h5 --size 0
bad "size negative"              x.h5 --size -5M
bad "size not a number"          x.h5 --size lots
bad "size bad suffix"            x.h5 --size 4X
bad "size below one sample"      x.h5 --size 500 --source tiny
bad "size and samples"           x.h5 --size 1M --samples 10
bad "samples 0"                  x.h5 --samples 0
bad "chunk rows 0"               x.h5 --samples 10 --chunk-rows 0
bad "chunk rows negative"        x.h5 --samples 10 --chunk-rows -3
bad "gzip 10"                    x.h5 --samples 10 --gzip 10
bad "gzip -1"                    x.h5 --samples 10 --gzip -1
bad "gzip with contiguous"       x.h5 --samples 10 --gzip 4 --contiguous
bad "bad-chunks with contiguous" x.h5 --samples 10 --bad-chunks --contiguous
bad "source folder missing"      x.h5 --samples 10 --source nosuchdir
mkdir empty
bad "source folder empty"        x.h5 --samples 10 --source empty
bad "measure-only, no file"      nofile.h5 --measure-only
bad "measure-only with --size"   gz.h5 --measure-only --size 1M
bad "measure-only, not HDF5"     exists.h5 --measure-only
if [ -e x.h5 ] || compgen -G '*.tmp-*' > /dev/null; then fail "left files: $(ls)"; else ok; fi
if [ -s exists.h5 ]; then fail "exists.h5 was overwritten"; else ok; fi

finish
