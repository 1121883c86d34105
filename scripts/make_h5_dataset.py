#!/usr/bin/python3
"""Generate a large synthetic HDF5 image dataset in nnprec's layout, to test the streaming
(out-of-core) reader on files far larger than Fashion-MNIST.

    /train/images  uint8 (N, 1, 28, 28)   N samples, each a randomly augmented copy of one of
    /train/labels  uint8 (N,)             Fashion-MNIST's 60,000 training images, its label
    /test/images   uint8 (10000, 1, 28, 28)   Fashion-MNIST's test set, untouched
    /test/labels   uint8 (10000,)

An augmented copy: a random source image, shifted by up to +-2 pixels in each direction
(zero fill), flipped left-right with probability 1/2, with optional Gaussian noise rounded
and clipped to 0..255. The bytes depend only on --seed, --noise and the source, not on
the layout options, so a contiguous and a gzip'd file from the same seed hold the same data,
and a smaller set is a prefix of a larger one.
Samples are generated and written in blocks of 64 Ki (51 MB), so memory stays under 300 MB
whatever the size (270 MB peak RSS measured for 200M).
"""
import argparse
import math
import os
import re
import shutil
import signal
import sys
import time

import h5py
import numpy as np

from clitools import ArgParser, die, positive_int, why
from idx_to_h5 import IDX_IMAGES, IDX_LABELS, find, read_idx

PROG = "make_h5_dataset.py"
DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"
GEN_BLOCK = 65536   # samples generated per random stream (fixes the bytes for a seed)
NOISE_SUB = 8192    # samples per float32 noise temporary (8192 x 784 x 4 B = 25 MB)
SHIFT = 2           # largest shift, pixels
PROGRESS_S = 3.0    # seconds between progress lines
MEASURE_SAMPLES = 2000
MEASURE_BATCH = 64
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

EPILOG = """\
sizes: a number of bytes of /train/images with an optional K, M, G or T suffix (powers of
1024; "B" or "iB" may follow): 200M, 4G, 1.5G, 123456. N = size // 784 samples.
Progress and measurements are in the same binary units (MiB = 2^20 bytes).

recommended layout for nnprec's streaming reader:
  row chunks of whole samples, (R, 1, 28, 28), about 1 MB each: the default --chunk-rows
  1024 is 784 KiB per chunk. A batch of random samples then touches at most one chunk per
  sample, and a sequential pass reads each chunk once. Keep the data uncompressed for speed
  on a local disk. --gzip trades CPU for I/O: the file is smaller (at level 4 about 0.57
  of the uncompressed size for these images without --noise; useful on a slow or network
  file system), but reading any one sample inflates its whole chunk, so random reads cost
  R samples' worth of decompression each (smaller chunks, e.g. --chunk-rows 64, cut that;
  see --measure). --contiguous: no chunks, no compression.
  --bad-chunks writes chunks of (R, 1, 14, 14), a quarter image each: a layout a streaming
  reader should detect and warn about (or refuse), for tests only.

--measure reads 2,000 random training samples, 64 at a time (sorted indices, h5py fancy
indexing), and prints samples/s and MiB/s of samples delivered. The OS page cache is not
dropped: on a file just written this measures HDF5 and decompression cost, not the disk.

examples:
  make_h5_dataset.py big.h5 --size 4G
  make_h5_dataset.py small.h5 --samples 100000 --gzip 4 --chunk-rows 256 --measure
  make_h5_dataset.py big.h5 --measure-only
"""


def parse_size(s):
    """argparse type: '200M', '4G', '1.5G', '123456' -> bytes (int >= 1)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*", s)
    if not m:
        raise argparse.ArgumentTypeError(
            "'%s' is not a size (a number of bytes with an optional K, M, G or T suffix)" % s)
    v = float(m.group(1)) * UNITS[m.group(2).upper()]
    if not math.isfinite(v) or v < 1:
        raise argparse.ArgumentTypeError("must be a positive, finite size, got '%s'" % s)
    return int(v)


def gzip_level(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError("invalid int value: '%s'" % s) from None
    if not 0 <= v <= 9:
        raise argparse.ArgumentTypeError("gzip level must be 0..9, got %d" % v)
    return v


def nonneg_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError("invalid int value: '%s'" % s) from None
    if v < 0:
        raise argparse.ArgumentTypeError("must be >= 0, got %d" % v)
    return v


def noise_std(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError("invalid number: '%s'" % s) from None
    if not 0 <= v <= 64:
        raise argparse.ArgumentTypeError("must be in 0..64 (pixel levels), got %s" % s)
    return v


def human(nbytes, unit=None):
    """(value, unit) in KiB/MiB/GiB; `unit` forces one."""
    if unit is None:
        unit = "GiB" if nbytes >= 1 << 30 else "MiB" if nbytes >= 1 << 20 else "KiB"
    return nbytes / {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[unit], unit


def fmt_time(s):
    s = int(round(s))
    if s >= 3600:
        return "%dh%02dm" % (s // 3600, s % 3600 // 60)
    return "%dm%02ds" % (s // 60, s % 60) if s >= 60 else "%ds" % s


class Samples:
    """The generated training set as a stream: take(lo, hi) returns images (hi-lo, 1, H, W)
    and labels for samples [lo, hi). Sample i comes from generation block i // GEN_BLOCK,
    whose random stream is seeded by (seed, block), so the bytes do not depend on how the
    writer slices its writes. The last block is cached (writes are sequential)."""

    def __init__(self, x, y, n, seed, noise):
        self.h, self.w = x.shape[1:]
        # zero border of SHIFT pixels: a shifted window of the padded image is the shift
        self.padded = np.pad(x, ((0, 0), (SHIFT, SHIFT), (SHIFT, SHIFT)))
        self.y = y
        self.n, self.seed, self.noise = n, seed, noise
        self.cached = (None, None, None)

    def block(self, b):
        if self.cached[0] == b:
            return self.cached[1:]
        lo = b * GEN_BLOCK
        k = min(GEN_BLOCK, self.n - lo)
        # full-size draws even for a short last block, so sample i does not depend on N
        rng = np.random.default_rng([self.seed, b])
        src = rng.integers(0, self.padded.shape[0], GEN_BLOCK)[:k]
        sy = rng.integers(0, 2 * SHIFT + 1, GEN_BLOCK)[:k]   # window offset in the padding
        sx = rng.integers(0, 2 * SHIFT + 1, GEN_BLOCK)[:k]
        flip = rng.integers(0, 2, GEN_BLOCK)[:k]
        out = np.empty((k, 1, self.h, self.w), np.uint8)
        combo = (sy * (2 * SHIFT + 1) + sx) * 2 + flip
        order = np.argsort(combo, kind="stable")
        bounds = np.searchsorted(combo[order], np.arange(combo.max() + 2))
        for c in range(len(bounds) - 1):  # one slice per (shift, flip): fast copies
            sel = order[bounds[c]:bounds[c + 1]]
            if sel.size == 0:
                continue
            f, xy = c % 2, c // 2
            oy, ox = xy // (2 * SHIFT + 1), xy % (2 * SHIFT + 1)
            imgs = self.padded[src[sel], oy:oy + self.h, ox:ox + self.w]
            out[sel, 0] = imgs[:, :, ::-1] if f else imgs
        if self.noise > 0:
            for s in range(0, k, NOISE_SUB):
                part = out[s:s + NOISE_SUB]
                z = rng.standard_normal((NOISE_SUB,) + part.shape[1:], np.float32)
                z = z[:len(part)]
                z *= self.noise
                z += part
                np.rint(z, out=z)
                np.clip(z, 0, 255, out=z)
                part[...] = z
        self.cached = (b, out, self.y[src])
        return self.cached[1:]

    def take(self, lo, hi):
        xs, ys = [], []
        while lo < hi:
            b = lo // GEN_BLOCK
            x, y = self.block(b)
            a, e = lo - b * GEN_BLOCK, min(hi, (b + 1) * GEN_BLOCK) - b * GEN_BLOCK
            xs.append(x[a:e])
            ys.append(y[a:e])
            lo += e - a
        if len(xs) == 1:
            return xs[0], ys[0]
        return np.concatenate(xs), np.concatenate(ys)


def layout_of(d):
    """A dataset's layout as words: 'chunked (1024, 1, 28, 28), gzip 4' or 'contiguous'."""
    if d.chunks is None:
        return "contiguous"
    s = "chunked %s" % (d.chunks,)
    if d.compression:
        s += ", %s %s" % (d.compression, d.compression_opts)
    return s


def write(path, name, a, train, test, n):
    """Write the dataset to `path` (the temporary), calling it `name` in messages."""
    x, y = train
    h, w = x.shape[1:]
    per = h * w
    chunks = None
    if not a.contiguous:
        r = min(a.chunk_rows, n)
        if r < a.chunk_rows:
            print("[make_h5] --chunk-rows %d is more than the %d samples: chunks of %d rows"
                  % (a.chunk_rows, n, r))
        chunks = (r, 1, h // 2, w // 2) if a.bad_chunks else (r, 1, h, w)
        if r * per >= 1 << 32:
            die("--chunk-rows %d makes chunks of %d bytes; HDF5 chunks must be under 4 GiB"
                % (a.chunk_rows, r * per))
    rows = chunks[0] if chunks else 1
    wblock = max(1, GEN_BLOCK // rows) * rows   # writes cover whole chunks
    cbytes = math.prod(chunks) if chunks else 0
    stream = Samples(x, y, n, a.seed, a.noise)
    total = n * per
    unit = human(total)[1]
    # a chunk cache holding a write's partial last chunk, so each chunk is written once
    with h5py.File(path, "w", rdcc_nbytes=max(1 << 20, 2 * cbytes), rdcc_nslots=1009) as f:
        f.attrs["layout"] = "nnprec-dataset"
        f.attrs["generator"] = PROG
        f.attrs["source"] = os.path.abspath(a.source)
        f.attrs["seed"] = a.seed
        f.attrs["augment"] = ("random source image, shift up to +-%d px (zero fill), "
                              "random horizontal flip, gaussian noise std %g"
                              % (SHIFT, a.noise))
        g = f.create_group("train")
        kw = {}
        if chunks:
            kw["chunks"] = chunks
            if a.gzip is not None:
                kw.update(compression="gzip", compression_opts=a.gzip)
        di = g.create_dataset("images", (n, 1, h, w), np.uint8, **kw)
        dl = g.create_dataset("labels", (n,), np.uint8)
        print("[make_h5] %s: %d training samples (%.1f %s of /train/images, %s), seed %d"
              % (name, n, *human(total, unit), layout_of(di), a.seed), flush=True)
        t0 = last = time.monotonic()
        for lo in range(0, n, wblock):
            hi = min(n, lo + wblock)
            xi, yi = stream.take(lo, hi)
            di[lo:hi] = xi
            dl[lo:hi] = yi
            now = time.monotonic()
            if now - last >= PROGRESS_S and hi < n:
                last = now
                rate = hi * per / (now - t0)
                print("[make_h5] %.1f / %.1f %s, %.0f MiB/s, ETA %s"
                      % (human(hi * per, unit)[0], human(total, unit)[0], unit,
                         rate / (1 << 20), fmt_time((n - hi) * per / rate)), flush=True)
        tx, ty = test
        g = f.create_group("test")
        g.create_dataset("images", data=tx.reshape(tx.shape[0], 1, *tx.shape[1:]))
        g.create_dataset("labels", data=ty)
    dt = time.monotonic() - t0
    return dt, total / max(dt, 1e-9)


def measure(path, seed):
    try:
        with h5py.File(path, "r") as f:
            try:
                d = f["/train/images"]
            except KeyError:
                die("%s: no dataset /train/images" % path)
            if not isinstance(d, h5py.Dataset) or d.ndim < 2 or d.shape[0] < 1:
                die("%s: /train/images is not a non-empty dataset of samples" % path)
            n = d.shape[0]
            k = min(MEASURE_SAMPLES, n)
            idx = np.random.default_rng([seed, 1 << 30]).choice(n, k, replace=False)
            per = d.dtype.itemsize * math.prod(d.shape[1:])
            t0 = time.monotonic()
            for s in range(0, k, MEASURE_BATCH):
                d[np.sort(idx[s:s + MEASURE_BATCH])]
            dt = max(time.monotonic() - t0, 1e-9)
            lay = layout_of(d)
    except OSError as e:
        die("cannot read %s: %s" % (path, why(e)))
    print("[measure] %s (%s): %d random samples in batches of %d in %.2f s: "
          "%.0f samples/s, %.1f MiB/s" % (path, lay, k, MEASURE_BATCH, dt, k / dt,
                                          k * per / dt / (1 << 20)), flush=True)


def on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main():
    ap = ArgParser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
                   description="Write a large synthetic HDF5 dataset for nnprec's "
                               "out-of-core training tests:\n"
                               "  /train = randomly augmented copies of the Fashion-MNIST "
                               "training images\n"
                               "           (shift up to +-2 px, flip, optional noise),\n"
                               "  /test  = the Fashion-MNIST test set, untouched.",
                   epilog=EPILOG)
    ap.add_argument("out", help="output HDF5 file (written as OUT.tmp-PID, then renamed); "
                                "with --measure-only, the existing file to read")
    n_grp = ap.add_mutually_exclusive_group()
    n_grp.add_argument("--size", type=parse_size, metavar="SIZE",
                       help="bytes of /train/images, e.g. 200M, 4G (see below)")
    n_grp.add_argument("--samples", type=positive_int, metavar="N",
                       help="number of training samples")
    ap.add_argument("--source", default=DEFAULT_SOURCE, metavar="DIR",
                    help="Fashion-MNIST IDX files (default %(default)s)")
    ap.add_argument("--seed", type=nonneg_int, default=1,
                    help="random seed; same seed, same bytes (default %(default)s)")
    ap.add_argument("--noise", type=noise_std, default=0.0, metavar="STD",
                    help="add Gaussian noise of this std (pixel levels, 0..64), rounded and "
                         "clipped to 0..255 (default 0: none)")
    ap.add_argument("--chunk-rows", type=positive_int, default=1024, metavar="R",
                    help="chunk /train/images as (R, 1, 28, 28), whole samples "
                         "(default %(default)s, 784 KiB)")
    ap.add_argument("--contiguous", action="store_true",
                    help="no chunking (cannot be combined with --gzip or --bad-chunks)")
    ap.add_argument("--gzip", type=gzip_level, metavar="LEVEL",
                    help="compress /train/images with HDF5's gzip filter, level 0..9")
    ap.add_argument("--bad-chunks", action="store_true",
                    help="for tests: chunks of (R, 1, 14, 14), not whole samples")
    ap.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    ap.add_argument("--measure", action="store_true",
                    help="after writing, time reading 2,000 random training samples")
    ap.add_argument("--measure-only", action="store_true",
                    help="only time the reads, on an existing OUT")
    a = ap.parse_args()

    if not a.out:
        ap.error("the output file name is empty")
    if a.measure_only:
        if a.size is not None or a.samples is not None:
            ap.error("--measure-only reads an existing file; --size/--samples do not apply")
        if not os.path.isfile(a.out):
            die("%s: no such file" % a.out)
        measure(a.out, a.seed)
        return
    if a.size is None and a.samples is None:
        ap.error("give the size of the training set: --size SIZE or --samples N")
    if a.contiguous and a.gzip is not None:
        ap.error("--gzip needs a chunked dataset; it cannot be combined with --contiguous")
    if a.contiguous and a.bad_chunks:
        ap.error("--bad-chunks needs a chunked dataset; it cannot be combined with "
                 "--contiguous")
    if os.path.isdir(a.out):
        die("%s is a directory, not an output file" % a.out)
    if os.path.lexists(a.out) and not a.force:
        die("%s exists (use --force to overwrite it)" % a.out)
    parent = os.path.dirname(a.out) or "."
    if not os.path.isdir(parent):
        die("%s: no such directory for the output file" % parent)
    if not os.path.isdir(a.source):
        die("--source %s: no such directory" % a.source)

    train = (read_idx(find(a.source, "train", "images", 3), IDX_IMAGES, 3),
             read_idx(find(a.source, "train", "labels", 1), IDX_LABELS, 1))
    test = (read_idx(find(a.source, "t10k", "images", 3), IDX_IMAGES, 3),
            read_idx(find(a.source, "t10k", "labels", 1), IDX_LABELS, 1))
    for name, (x, y) in (("train", train), ("t10k", test)):
        if x.shape[0] != y.shape[0]:
            die("%s: %d images but %d labels" % (name, x.shape[0], y.shape[0]))
    if train[0].shape[1:] != test[0].shape[1:]:
        die("train images are %s but test images %s" % (train[0].shape[1:], test[0].shape[1:]))
    per = train[0].shape[1] * train[0].shape[2]
    if a.size is not None:
        if a.size < per:
            ap.error("--size %d bytes is smaller than one sample (%d bytes)" % (a.size, per))
        n = a.size // per
    else:
        n = a.samples
    if a.gzip is None:
        free = shutil.disk_usage(parent).free
        if n * per > free:
            die("%s needs %.1f GiB but %s has only %.1f GiB free"
                % (a.out, n * per / (1 << 30), parent, free / (1 << 30)))

    tmp = "%s.tmp-%d" % (a.out, os.getpid())
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        dt, rate = write(tmp, a.out, a, train, test, n)
        if os.path.lexists(a.out) and not a.force:  # appeared while we wrote
            die("%s exists (use --force to overwrite it)" % a.out)
        os.replace(tmp, a.out)
    except BaseException as e:  # never leave OUT.tmp-PID behind
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, KeyboardInterrupt):
            print("%s: error: interrupted; removed %s" % (PROG, tmp), file=sys.stderr)
            sys.exit(130)
        if isinstance(e, SystemExit):
            raise
        die("cannot write %s: %s" % (a.out, why(e)))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    size = os.path.getsize(a.out)
    print("[make_h5] wrote %s: %d training samples in %.1f s (%.0f MiB/s of samples), "
          "%d test samples; file %.1f %s"
          % (a.out, n, dt, rate / (1 << 20), test[0].shape[0], *human(size)), flush=True)
    if a.measure:
        measure(a.out, a.seed)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # before or after the write: nothing to clean up
        print("%s: error: interrupted" % PROG, file=sys.stderr)
        sys.exit(130)
