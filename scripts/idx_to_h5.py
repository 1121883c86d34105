#!/usr/bin/python3
"""Convert Fashion-MNIST / MNIST IDX files to nnprec's HDF5 dataset layout.

Reads DIR/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] and writes FILE.h5 with

    /train/images  uint8 (N, 1, 28, 28)    /train/labels  uint8 (N,)
    /test/images   uint8 (N, 1, 28, 28)    /test/labels   uint8 (N,)

contiguous and uncompressed, so that `nnprec train --data FILE.h5` can read each rank's
rows with a hyperslab (docs/checkpoint.md, "HDF5 input datasets").
"""
import argparse
import gzip
import os
import struct
import sys

import h5py
import numpy as np

IDX_IMAGES = 0x00000803
IDX_LABELS = 0x00000801


def find(dirname, split, kind, dim):
    for pat in ("{s}-{k}-idx{d}-ubyte.gz", "{s}-{k}-idx{d}-ubyte",
                "{s}-{k}.idx{d}-ubyte.gz", "{s}-{k}.idx{d}-ubyte"):
        p = os.path.join(dirname, pat.format(s=split, k=kind, d=dim))
        if os.path.exists(p):
            return p
    sys.exit("idx_to_h5: no %s %s file in %s (expected %s-%s-idx%d-ubyte[.gz])"
             % (split, kind, dirname, split, kind, dim))


def read_idx(path, magic_expected, ndim):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 + 4 * ndim:
        sys.exit("idx_to_h5: %s: truncated header" % path)
    magic = struct.unpack(">I", data[:4])[0]
    if magic != magic_expected:
        sys.exit("idx_to_h5: %s: wrong magic 0x%08x, expected 0x%08x"
                 % (path, magic, magic_expected))
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    need = int(np.prod(dims))
    if body.size != need:
        sys.exit("idx_to_h5: %s: %d data bytes, expected %d" % (path, body.size, need))
    return body.reshape(dims)


def main():
    ap = argparse.ArgumentParser(
        description="Convert a directory of (Fashion-)MNIST IDX files (.gz or raw) to one "
                    "HDF5 file with /train/images, /train/labels, /test/images, "
                    "/test/labels (uint8, images shaped (N, 1, H, W)).")
    ap.add_argument("dir", help="directory holding train-*-ubyte[.gz] and t10k-*-ubyte[.gz]")
    ap.add_argument("out", help="output HDF5 file (overwritten)")
    args = ap.parse_args()

    tmp = args.out + ".tmp"
    with h5py.File(tmp, "w") as h:
        h.attrs["source"] = os.path.abspath(args.dir)
        h.attrs["layout"] = "nnprec-dataset"
        for split, name in (("train", "train"), ("t10k", "test")):
            x = read_idx(find(args.dir, split, "images", 3), IDX_IMAGES, 3)
            y = read_idx(find(args.dir, split, "labels", 1), IDX_LABELS, 1)
            if x.shape[0] != y.shape[0]:
                sys.exit("idx_to_h5: %s: %d images but %d labels" % (split, x.shape[0], y.shape[0]))
            g = h.create_group(name)
            g.create_dataset("images", data=x.reshape(x.shape[0], 1, x.shape[1], x.shape[2]))
            g.create_dataset("labels", data=y)
            print("%s: %d images %dx%d, %d classes"
                  % (name, x.shape[0], x.shape[1], x.shape[2], int(y.max()) + 1))
    os.replace(tmp, args.out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
