#!/usr/bin/python3
"""Convert Fashion-MNIST / MNIST IDX files to nnprec's HDF5 dataset layout.

Reads DIR/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] and writes FILE.h5 with

    /train/images  uint8 (N, 1, 28, 28)    /train/labels  uint8 (N,)
    /test/images   uint8 (N, 1, 28, 28)    /test/labels   uint8 (N,)

contiguous and uncompressed, so that `nnprec train --data FILE.h5` can read each rank's
rows with a hyperslab (docs/checkpoint.md, "HDF5 input datasets").
"""
import gzip
import math
import os
import struct
import zlib

import h5py
import numpy as np

from clitools import ArgParser, die

PROG = "idx_to_h5.py"
IDX_IMAGES = 0x00000803
IDX_LABELS = 0x00000801


def find(dirname, split, kind, dim):
    for pat in ("{s}-{k}-idx{d}-ubyte.gz", "{s}-{k}-idx{d}-ubyte",
                "{s}-{k}.idx{d}-ubyte.gz", "{s}-{k}.idx{d}-ubyte"):
        p = os.path.join(dirname, pat.format(s=split, k=kind, d=dim))
        if os.path.exists(p):
            return p
    die("no %s %s file in %s (expected %s-%s-idx%d-ubyte[.gz])"
        % (split, kind, dirname, split, kind, dim))


def read_idx(path, magic_expected, ndim):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as e:  # missing, a folder, unreadable, not gzip (BadGzipFile)
        die("%s: %s" % (path, e.strerror or e))
    except (EOFError, zlib.error) as e:  # truncated or corrupt .gz
        die("%s: corrupt or truncated gzip data (%s)" % (path, e))
    if len(data) < 4 + 4 * ndim:
        die("%s: truncated header" % path)
    magic = struct.unpack(">I", data[:4])[0]
    if magic != magic_expected:
        die("%s: wrong magic 0x%08x, expected 0x%08x" % (path, magic, magic_expected))
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    if 0 in dims:
        die("%s: empty (dimensions %s)" % (path, "x".join(map(str, dims))))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    need = math.prod(dims)
    if body.size != need:
        die("%s: %d data bytes, expected %d" % (path, body.size, need))
    return body.reshape(dims)


def main():
    ap = ArgParser(
        description="Convert a directory of (Fashion-)MNIST IDX files (.gz or raw) to one "
                    "HDF5 file with /train/images, /train/labels, /test/images, "
                    "/test/labels (uint8, images shaped (N, 1, H, W)).")
    ap.add_argument("dir", help="directory holding train-*-ubyte[.gz] and t10k-*-ubyte[.gz]")
    ap.add_argument("out", help="output HDF5 file (overwritten)")
    args = ap.parse_args()
    if not args.out:
        ap.error("the output file name is empty")
    if not os.path.isdir(args.dir):
        die("%s is not a directory" % args.dir)
    if os.path.isdir(args.out):
        die("%s is a directory, not an output file" % args.out)
    parent = os.path.dirname(args.out) or "."
    if not os.path.isdir(parent):
        die("%s: no such directory for the output file" % parent)

    # read and check all four files before writing anything
    splits = []
    for split, name in (("train", "train"), ("t10k", "test")):
        x = read_idx(find(args.dir, split, "images", 3), IDX_IMAGES, 3)
        y = read_idx(find(args.dir, split, "labels", 1), IDX_LABELS, 1)
        if x.shape[0] != y.shape[0]:
            die("%s: %d images but %d labels" % (split, x.shape[0], y.shape[0]))
        splits.append((name, x, y))
    tmp = args.out + ".tmp"
    try:
        with h5py.File(tmp, "w") as h:
            h.attrs["source"] = os.path.abspath(args.dir)
            h.attrs["layout"] = "nnprec-dataset"
            for name, x, y in splits:
                g = h.create_group(name)
                g.create_dataset("images", data=x.reshape(x.shape[0], 1, x.shape[1], x.shape[2]))
                g.create_dataset("labels", data=y)
                print("%s: %d images %dx%d, %d classes"
                      % (name, x.shape[0], x.shape[1], x.shape[2], int(y.max()) + 1))
        os.replace(tmp, args.out)
    except BaseException as e:  # never leave FILE.h5.tmp behind
        if os.path.isfile(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            die("cannot write %s: %s" % (args.out, e.strerror or e))
        raise
    print("wrote", args.out)


if __name__ == "__main__":
    main()
