#!/usr/bin/python3
"""Load an nnprec checkpoint into the equivalent PyTorch model and evaluate it.

The network is rebuilt from the checkpoint's `architecture` attribute (the model in seq-spec
syntax, e.g. "1x28x28/conv:6:3:1:2/relu/maxpool:2:2/.../dense:10" for lenet, or
"784/dense:256/relu/.../dense:10" for an mlp), as a torch.nn.Sequential whose Linear and
Conv2d layers take the /<layer>/weight and /<layer>/bias datasets unchanged (nnprec stores
them in PyTorch's orientation). The test set is normalized with the checkpoint's norm_mean
and norm_std attributes, as nnprec does, and the accuracy is printed as
"accuracy: XX.XX%".

Examples:
  /usr/bin/python3 scripts/ckpt_to_torch.py run/ckpt-00004690.h5
  /usr/bin/python3 scripts/ckpt_to_torch.py run/latest --data fmnist.h5
"""
import argparse
import gzip
import os
import struct
import sys

import h5py
import numpy as np
import torch
from torch import nn

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"


def parse_shape(tok):
    parts = tok.split("x")
    if not all(p.isdigit() for p in parts) or len(parts) not in (1, 3):
        return None
    return tuple(int(p) for p in parts)


def build(arch):
    """nn.Sequential for an architecture string; returns (model, input shape, trainable)."""
    items = [t for t in arch.replace(",", "/").split("/") if t]
    if items and items[0].startswith("seq:"):
        items[0] = items[0][4:]
    shape = parse_shape(items[0]) if items else None
    if shape is None:
        sys.exit("ckpt_to_torch: architecture '%s' does not start with an input shape" % arch)
    items = items[1:]
    layers, trainable = [], []
    cur = shape  # (F,) or (C, H, W)
    for it in items:
        a = it.split(":")
        kind = a[0]
        if kind in ("dense", "linear"):
            if len(cur) == 3:
                layers.append(nn.Flatten())
                cur = (cur[0] * cur[1] * cur[2],)
            lin = nn.Linear(cur[0], int(a[1]))
            layers.append(lin)
            trainable.append(lin)
            cur = (int(a[1]),)
        elif kind == "conv":
            cout, k = int(a[1]), int(a[2])
            s = int(a[3]) if len(a) > 3 else 1
            p = int(a[4]) if len(a) > 4 else 0
            conv = nn.Conv2d(cur[0], cout, k, stride=s, padding=p)
            layers.append(conv)
            trainable.append(conv)
            cur = (cout, (cur[1] + 2 * p - k) // s + 1, (cur[2] + 2 * p - k) // s + 1)
        elif kind in ("maxpool", "avgpool"):
            k = int(a[1])
            s = int(a[2]) if len(a) > 2 else k
            layers.append(nn.MaxPool2d(k, s) if kind == "maxpool" else nn.AvgPool2d(k, s))
            cur = (cur[0], (cur[1] - k) // s + 1, (cur[2] - k) // s + 1)
        elif kind == "flatten":
            layers.append(nn.Flatten())
            cur = (int(np.prod(cur)),)
        elif kind == "relu":
            layers.append(nn.ReLU())
        elif kind == "leaky-relu":
            layers.append(nn.LeakyReLU(float(a[1]) if len(a) > 1 else 0.01))
        elif kind == "tanh":
            layers.append(nn.Tanh())
        elif kind == "sigmoid":
            layers.append(nn.Sigmoid())
        elif kind in ("identity", "linear-act"):
            layers.append(nn.Identity())
        else:
            sys.exit("ckpt_to_torch: unknown item '%s' in architecture '%s'" % (it, arch))
    return nn.Sequential(*layers), shape, trainable


def text_attr(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def load_checkpoint(path):
    h = h5py.File(path, "r")
    fmt = text_attr(h.attrs.get("format", ""))
    if fmt != "nnprec-checkpoint":
        sys.exit("ckpt_to_torch: %s is not an nnprec checkpoint (format '%s')" % (path, fmt))
    ver = int(h.attrs["format_version"])
    if ver != 1:
        sys.exit("ckpt_to_torch: %s has format version %d, this script reads version 1"
                 % (path, ver))
    model, shape, trainable = build(text_attr(h.attrs["architecture"]))
    # layer groups in the order of the flat parameter buffer (the offset of their weight)
    groups = sorted((g for g in h if g not in ("optimizer", "precond")
                     and isinstance(h[g], h5py.Group) and "weight" in h[g]),
                    key=lambda g: int(h[g]["weight"].attrs["offset"]))
    if len(groups) != len(trainable):
        sys.exit("ckpt_to_torch: %d layer groups in %s, the architecture has %d trainable "
                 "layers" % (len(groups), path, len(trainable)))
    with torch.no_grad():
        for g, layer in zip(groups, trainable):
            for name in ("weight", "bias"):
                src = np.asarray(h[g][name], dtype=np.float32)
                dst = getattr(layer, name)
                if tuple(src.shape) != tuple(dst.shape):
                    sys.exit("ckpt_to_torch: /%s/%s has shape %s, PyTorch expects %s"
                             % (g, name, src.shape, tuple(dst.shape)))
                dst.copy_(torch.from_numpy(src))
    info = {
        "model": text_attr(h.attrs["model"]),
        "step": int(h.attrs["step"]),
        "norm_mean": float(h.attrs["norm_mean"]),
        "norm_std": float(h.attrs["norm_std"]),
    }
    h.close()
    return model.eval(), shape, info


def read_idx(path, ndim):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find_idx(dirname, kind, dim):
    for pat in ("t10k-{k}-idx{d}-ubyte.gz", "t10k-{k}-idx{d}-ubyte",
                "t10k-{k}.idx{d}-ubyte.gz", "t10k-{k}.idx{d}-ubyte"):
        p = os.path.join(dirname, pat.format(k=kind, d=dim))
        if os.path.exists(p):
            return p
    sys.exit("ckpt_to_torch: no t10k %s file in %s" % (kind, dirname))


def load_test(data):
    """Raw test images as float32 in their stored scale (uint8 -> /255) and labels."""
    if os.path.isfile(data) and h5py.is_hdf5(data):
        with h5py.File(data, "r") as h:
            x = np.asarray(h["test/images"])
            y = np.asarray(h["test/labels"]).astype(np.int64)
        if x.ndim == 3:
            x = x[:, None]
    else:
        x = read_idx(find_idx(data, "images", 3), 3)[:, None]
        y = read_idx(find_idx(data, "labels", 1), 1).astype(np.int64)
    xf = x.astype(np.float32)
    if x.dtype == np.uint8:
        xf *= np.float32(1.0 / 255.0)
    return xf, y


def main():
    ap = argparse.ArgumentParser(
        description="Load an nnprec checkpoint (lenet, mlp or seq model) into the equivalent "
                    "PyTorch nn.Sequential and print its test accuracy as 'accuracy: XX.XX%%'.")
    ap.add_argument("checkpoint", help="checkpoint file (.h5), or a directory with a 'latest' "
                                       "pointer")
    ap.add_argument("--data", default=DEFAULT_DATA,
                    help="Fashion-MNIST directory with t10k-*-ubyte[.gz], or an HDF5 dataset "
                         "file with /test/images and /test/labels (default %(default)s)")
    ap.add_argument("--batch", type=int, default=1000, help="evaluation batch size")
    ap.add_argument("--save", metavar="FILE.pt", help="also save the model's state_dict")
    args = ap.parse_args()

    path = args.checkpoint
    if os.path.isdir(path):
        with open(os.path.join(path, "latest")) as f:
            path = os.path.join(path, f.read().strip())
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    model, shape, info = load_checkpoint(path)
    x, y = load_test(args.data)
    # nnprec: x = (v*scale - mean) / std, in float32
    x = (x - np.float32(info["norm_mean"])) / np.float32(info["norm_std"])
    n = x.shape[0]
    per_sample = int(np.prod(shape))
    if x[0].size != per_sample:
        sys.exit("ckpt_to_torch: test samples have %d values, the model expects %d"
                 % (x[0].size, per_sample))
    x = x.reshape((n,) + tuple(shape))
    correct = 0
    with torch.no_grad():
        for i in range(0, n, args.batch):
            logits = model(torch.from_numpy(np.ascontiguousarray(x[i:i + args.batch])))
            correct += int((logits.argmax(1).numpy() == y[i:i + args.batch]).sum())
    print("checkpoint: %s (model %s, step %d)" % (path, info["model"], info["step"]))
    print("accuracy: %.2f%%" % (100.0 * correct / n))
    if args.save:
        torch.save(model.state_dict(), args.save)


if __name__ == "__main__":
    main()
