#!/usr/bin/python3
"""Load an nnprec checkpoint into the equivalent PyTorch model and evaluate it.

The network is rebuilt from the checkpoint's `architecture` attribute (the model in seq-spec
syntax, e.g. "1x28x28/conv:6:3:1:2/relu/maxpool:2:2/.../dense:10" for lenet, or
"784/dense:256/relu/.../dense:10" for an mlp), as a torch.nn.Sequential whose Linear and
Conv2d layers take the /<layer>/weight and /<layer>/bias datasets unchanged (nnprec stores
them in PyTorch's orientation); with residual blocks (res[...], resnet8, resmlp) as a module
whose `layers` hold one module per item, a block being Residual(branch, shortcut), so that
its state_dict names are the checkpoint's groups (layers.3.branch.0.weight, ...); bn becomes BatchNorm2d after a convolution and BatchNorm1d
after a dense layer, with its running statistics, gap AdaptiveAvgPool2d(1) + Flatten, and
dropout:P Dropout(P) (the identity in evaluation). The test set is normalized with the checkpoint's norm_mean
and norm_std attributes, as nnprec does, and the accuracy is printed as
"accuracy: XX.XX%".

Examples:
  /usr/bin/python3 scripts/ckpt_to_torch.py run/ckpt-00004690.h5
  /usr/bin/python3 scripts/ckpt_to_torch.py run/latest --data fmnist.h5
"""
import gzip
import math
import os
import struct
import zlib

import h5py
import numpy as np
import torch
from torch import nn

from clitools import ArgParser, die, why, positive_int

PROG = "ckpt_to_torch.py"
DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"


def parse_shape(tok):
    parts = tok.split("x")
    if not all(p.isdigit() for p in parts) or len(parts) not in (1, 3):
        return None
    return tuple(int(p) for p in parts)


def field(a, i, default=None, least=1):
    """Field i of an architecture item split at ':', as an int >= least (ValueError if not)."""
    if i >= len(a):
        if default is None:
            raise ValueError("missing field")
        return default
    v = int(a[i])
    if v < least:
        raise ValueError("%d is below %d" % (v, least))
    return v


class Residual(nn.Module):
    """res[...]: branch(x) + shortcut(x); an empty shortcut is the identity."""

    def __init__(self, branch, shortcut):
        super().__init__()
        self.branch = nn.Sequential(*branch)
        self.shortcut = nn.Sequential(*shortcut)

    def forward(self, x):
        return self.branch(x) + self.shortcut(x)


class FlatLinear(nn.Linear):
    """nnprec's dense item: a Linear on the flattened input (parameters as nn.Linear's)."""

    def forward(self, x):
        return super().forward(x.flatten(1))


class GlobalAvgPool(nn.Module):
    """gap: the mean over H x W of each channel (AdaptiveAvgPool2d(1) + Flatten)."""

    def forward(self, x):
        return x.mean((2, 3))


class ResNet(nn.Module):
    """A network with residual blocks: one module per spec item in self.layers, so that the
    state_dict's names are nnprec's tensor names (layers.I..., layers.I.branch.J...)."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


def split_items(arch):
    """Items at '/' (or ',') outside brackets; ValueError on unbalanced brackets."""
    items, depth, cur = [], 0, ""
    for ch in arch:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError("unmatched ']'")
        if ch in "/," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    if depth != 0:
        raise ValueError("unclosed '['")
    items.append(cur)
    return [t for t in items if t]


def build_item(it, cur, res_mode):
    """(modules for one item, trainable modules among them, output shape)."""
    a = it.split(":")
    kind = a[0]
    if kind in ("dense", "linear"):
        n_in = int(np.prod(cur))
        if res_mode:
            lin = FlatLinear(n_in, field(a, 1))
            return [lin], [lin], (field(a, 1),)
        mods = [nn.Flatten()] if len(cur) == 3 else []
        lin = nn.Linear(n_in, field(a, 1))
        return mods + [lin], [lin], (field(a, 1),)
    if kind == "conv":
        cout, k = field(a, 1), field(a, 2)
        s = field(a, 3, 1)
        p = field(a, 4, 0, least=0)
        if len(cur) != 3:
            raise ValueError("conv needs a C x H x W input")
        conv = nn.Conv2d(cur[0], cout, k, stride=s, padding=p)
        return [conv], [conv], (cout, (cur[1] + 2 * p - k) // s + 1, (cur[2] + 2 * p - k) // s + 1)
    if kind in ("maxpool", "avgpool"):
        k = field(a, 1)
        s = field(a, 2, k)
        m = nn.MaxPool2d(k, s) if kind == "maxpool" else nn.AvgPool2d(k, s)
        return [m], [], (cur[0], (cur[1] - k) // s + 1, (cur[2] - k) // s + 1)
    if kind == "flatten":
        return [nn.Flatten()], [], (int(np.prod(cur)),)
    if kind == "bn":  # per channel after conv, per feature after dense
        bn = nn.BatchNorm2d(cur[0]) if len(cur) == 3 else nn.BatchNorm1d(cur[0])
        return [bn], [bn], cur
    if kind == "gap":
        if len(cur) != 3:
            raise ValueError("gap needs a C x H x W input")
        mods = [GlobalAvgPool()] if res_mode else [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        return mods, [], (cur[0],)
    if kind == "dropout":
        p = float(a[1])
        if not 0 <= p < 1:
            raise ValueError("probability %g outside [0, 1)" % p)
        return [nn.Dropout(p)], [], cur
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "identity": nn.Identity,
            "linear-act": nn.Identity}
    if kind == "leaky-relu":
        return [nn.LeakyReLU(float(a[1]) if len(a) > 1 else 0.01)], [], cur
    if kind in acts:
        return [acts[kind]()], [], cur
    raise KeyError(kind)


def build_block(it, cur):
    """res[ITEMS]: the branch, and a shortcut as nnprec builds it (identity when the shape is
    kept; else a 1x1 conv with the branch's stride or a dense layer, + bn if the branch has
    one). Returns (Residual, trainable modules in nnprec's order, output shape)."""
    if not (it.startswith("res[") and it.endswith("]")) or len(it) == 5:
        raise ValueError("expected res[ITEM/...]")
    inner = split_items(it[4:-1])
    branch, trainable, out = [], [], cur
    has_conv = has_dense = has_bn = False
    stride = 1
    for sub in inner:
        if "[" in sub:
            raise ValueError("nested group")
        mods, tr, out = build_item(sub, out, True)
        if len(mods) != 1:
            raise ValueError("item '%s' is not one module" % sub)
        branch += mods
        trainable += tr
        kind = sub.split(":")[0]
        has_conv |= kind == "conv"
        has_dense |= kind in ("dense", "linear")
        has_bn |= kind == "bn"
        if kind in ("conv", "maxpool", "avgpool"):
            m = mods[0]
            st = m.stride[0] if isinstance(m.stride, tuple) else m.stride
            stride *= st
    shortcut = []
    flat_in = tuple(cur) if len(cur) == 1 else (cur if cur[1] * cur[2] > 1 else (cur[0],))
    flat_out = tuple(out) if len(out) == 1 else (out if out[1] * out[2] > 1 else (out[0],))
    if flat_in != flat_out:
        if has_dense and len(flat_out) == 1:
            shortcut.append(FlatLinear(int(np.prod(cur)), out[0]))
            if has_bn:
                shortcut.append(nn.BatchNorm1d(out[0]))
        elif has_conv and not has_dense and len(cur) == 3 and cur[1] * cur[2] > 1:
            conv = nn.Conv2d(cur[0], out[0], 1, stride=stride)
            if len(out) != 3 or (cur[1] - 1) // stride + 1 != out[1] \
                    or (cur[2] - 1) // stride + 1 != out[2]:
                raise ValueError("the shortcut cannot be built")
            shortcut.append(conv)
            if has_bn:
                shortcut.append(nn.BatchNorm2d(out[0]))
        else:
            raise ValueError("the shortcut cannot be built")
    trainable += [m for m in shortcut if not isinstance(m, GlobalAvgPool)]
    return Residual(branch, shortcut), trainable, out


def build(arch):
    """The torch module for an architecture string; returns (model, input shape, trainable,
    output shape). Without residual blocks an nn.Sequential; with them a ResNet whose
    state_dict names are nnprec's tensor names."""
    try:
        items = split_items(arch)
    except ValueError as e:
        die("bad architecture '%s' (%s)" % (arch, e))
    if items and items[0].startswith("seq:"):
        items[0] = items[0][4:]
    shape = parse_shape(items[0]) if items else None
    if shape is None or min(shape) < 1:
        die("architecture '%s' does not start with an input shape" % arch)
    items = items[1:]
    res_mode = any(it.startswith("res[") for it in items)
    layers, trainable = [], []
    cur = shape  # (F,) or (C, H, W)
    for it in items:
        try:
            if "[" in it or "]" in it:
                block, tr, cur = build_block(it, cur)
                mods = [block]
            else:
                mods, tr, cur = build_item(it, cur, res_mode)
            layers += mods
            trainable += tr
        except KeyError:
            die("unknown item '%s' in architecture '%s'" % (it, arch))
        except (ValueError, IndexError, RuntimeError) as e:
            die("bad item '%s' in architecture '%s' (%s)" % (it, arch, e))
        if min(cur) < 1:
            die("item '%s' in architecture '%s' leaves an empty shape %s" % (it, arch, cur))
    model = ResNet(layers) if res_mode else nn.Sequential(*layers)
    return model, shape, trainable, cur


def text_attr(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def attr(h, path, name):
    if name not in h.attrs:
        die("%s lacks the attribute '%s'" % (path, name))
    return h.attrs[name]


def load_checkpoint(path):
    if not os.path.isfile(path):
        die("%s: no such checkpoint file" % path)
    if not h5py.is_hdf5(path):
        die("%s is not an HDF5 file" % path)
    try:
        with h5py.File(path, "r") as h:
            return read_checkpoint(h, path)
    except (OSError, KeyError, ValueError, TypeError) as e:  # truncated or damaged file
        die("%s: cannot read the checkpoint (%s)" % (path, e))


def read_checkpoint(h, path):
    fmt = text_attr(h.attrs.get("format", ""))
    if fmt != "nnprec-checkpoint":
        die("%s is not an nnprec checkpoint (format '%s')" % (path, fmt))
    ver = int(attr(h, path, "format_version"))
    if ver != 1:
        die("%s has format version %d, this script reads version 1" % (path, ver))
    model, shape, trainable, out_shape = build(text_attr(attr(h, path, "architecture")))
    # layer groups in the order of the flat parameter buffer (the offset of their weight)
    groups = [g for g in h if g not in ("optimizer", "precond")
              and isinstance(h[g], h5py.Group) and "weight" in h[g]]
    for g in groups:
        if "offset" not in h[g]["weight"].attrs:
            die("%s: /%s/weight lacks the attribute 'offset'" % (path, g))
    groups.sort(key=lambda g: int(h[g]["weight"].attrs["offset"]))
    if len(groups) != len(trainable):
        die("%d layer groups in %s, the architecture has %d trainable layers"
            % (len(groups), path, len(trainable)))
    if isinstance(model, ResNet):  # the groups are the modules' names
        names = {id(m): n for n, m in model.named_modules()}
        for g, layer in zip(groups, trainable):
            if names.get(id(layer)) != g:
                die("%s: group /%s is module %s of the PyTorch model"
                    % (path, g, names.get(id(layer))))
    with torch.no_grad():
        for g, layer in zip(groups, trainable):
            for name in ("weight", "bias"):
                if not isinstance(h[g].get(name), h5py.Dataset):
                    die("%s: no dataset /%s/%s" % (path, g, name))
                src = np.asarray(h[g][name], dtype=np.float32)
                dst = getattr(layer, name)
                if tuple(src.shape) != tuple(dst.shape):
                    die("/%s/%s has shape %s, PyTorch expects %s"
                        % (g, name, src.shape, tuple(dst.shape)))
                if not np.isfinite(src).all():
                    die("%s: /%s/%s holds non-finite values (NaN or inf)" % (path, g, name))
                dst.copy_(torch.from_numpy(src))
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                for name in ("running_mean", "running_var", "num_batches_tracked"):
                    if not isinstance(h[g].get(name), h5py.Dataset):
                        die("%s: no dataset /%s/%s (BatchNorm's running statistics)"
                            % (path, g, name))
                    src = np.asarray(h[g][name])
                    dst = getattr(layer, name)
                    if src.size != dst.numel():
                        die("/%s/%s has %d values, PyTorch expects %d"
                            % (g, name, src.size, dst.numel()))
                    dst.copy_(torch.from_numpy(src.astype(np.int64 if name[0] == "n"
                                                          else np.float32)).reshape(dst.shape))
    info = {
        "model": text_attr(attr(h, path, "model")),
        "step": int(attr(h, path, "step")),
        "norm_mean": float(attr(h, path, "norm_mean")),
        "norm_std": float(attr(h, path, "norm_std")),
        "outputs": out_shape[0] if len(out_shape) == 1 else None,
    }
    if not math.isfinite(info["norm_mean"]):
        die("%s: normalization mean %g is not finite" % (path, info["norm_mean"]))
    if not (math.isfinite(info["norm_std"]) and info["norm_std"] > 0):
        die("%s: normalization std %g is not a finite positive number"
            % (path, info["norm_std"]))
    return model.eval(), shape, info


def read_idx(path, ndim):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as e:  # a folder, unreadable, not gzip (BadGzipFile)
        die("%s: %s" % (path, e.strerror or e))
    except (EOFError, zlib.error) as e:  # truncated or corrupt .gz
        die("%s: corrupt or truncated gzip data (%s)" % (path, e))
    if len(data) < 4 + 4 * ndim:
        die("%s: truncated header" % path)
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        die("%s: %d data bytes, the header's dimensions %s need %d"
            % (path, body.size, dims, math.prod(dims)))
    return body.reshape(dims)


def find_idx(dirname, kind, dim):
    for pat in ("t10k-{k}-idx{d}-ubyte.gz", "t10k-{k}-idx{d}-ubyte",
                "t10k-{k}.idx{d}-ubyte.gz", "t10k-{k}.idx{d}-ubyte"):
        p = os.path.join(dirname, pat.format(k=kind, d=dim))
        if os.path.exists(p):
            return p
    die("no t10k %s file in %s" % (kind, dirname))


def load_test(data):
    """Raw test images as float32 in their stored scale (uint8 -> /255) and labels."""
    if os.path.isfile(data) and h5py.is_hdf5(data):
        try:
            with h5py.File(data, "r") as h:
                x = np.asarray(h["test/images"])
                y = np.asarray(h["test/labels"]).astype(np.int64)
        except (OSError, KeyError, ValueError, TypeError) as e:
            die("%s: cannot read /test/images and /test/labels (%s)" % (data, e))
        if x.ndim == 3:
            x = x[:, None]
    elif os.path.isdir(data):
        x = read_idx(find_idx(data, "images", 3), 3)[:, None]
        y = read_idx(find_idx(data, "labels", 1), 1).astype(np.int64)
    elif os.path.exists(data):
        die("%s is neither an HDF5 file nor a folder of IDX files" % data)
    else:
        die("%s: no such file or folder" % data)
    if y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        die("%s: %d test images and labels of shape %s (want as many labels as images, "
            "at least one)" % (data, x.shape[0], y.shape))
    xf = x.astype(np.float32)
    if x.dtype == np.uint8:
        xf *= np.float32(1.0 / 255.0)
    return xf, y


def main():
    ap = ArgParser(
        description="Load an nnprec checkpoint (lenet, mlp, resnet, resmlp or seq model) into "
                    "the equivalent PyTorch module and print its test accuracy as 'accuracy: XX.XX%%'.")
    ap.add_argument("checkpoint", help="checkpoint file (.h5), or a directory with a 'latest' "
                                       "pointer")
    ap.add_argument("--data", default=DEFAULT_DATA,
                    help="Fashion-MNIST directory with t10k-*-ubyte[.gz], or an HDF5 dataset "
                         "file with /test/images and /test/labels (default %(default)s)")
    ap.add_argument("--batch", type=positive_int, default=1000, help="evaluation batch size")
    ap.add_argument("--save", metavar="FILE.pt", help="also save the model's state_dict")
    args = ap.parse_args()
    if args.save is not None:  # check before the evaluation, not after it
        if not args.save:
            ap.error("--save: the file name is empty")
        if os.path.isdir(args.save):
            die("--save: %s is a directory" % args.save)
        parent = os.path.dirname(args.save) or "."
        if not os.path.isdir(parent):
            die("--save: %s: no such directory" % parent)

    path = args.checkpoint
    if os.path.isdir(path):
        latest = os.path.join(path, "latest")
        if not os.path.isfile(latest):
            die("%s is a folder without a 'latest' pointer; give a checkpoint file" % path)
        with open(latest) as f:
            name = f.read().strip()
        if not name:
            die("%s is empty" % latest)
        path = os.path.join(path, name)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    model, shape, info = load_checkpoint(path)
    x, y = load_test(args.data)
    if info["outputs"] is not None and (y.min() < 0 or y.max() >= info["outputs"]):
        die("%s: labels range over %d..%d, the model has %d outputs"
            % (args.data, y.min(), y.max(), info["outputs"]))
    # nnprec: x = (v*scale - mean) / std, in float32
    x = (x - np.float32(info["norm_mean"])) / np.float32(info["norm_std"])
    n = x.shape[0]
    per_sample = int(np.prod(shape))
    if x[0].size != per_sample:
        die("test samples have %d values, the model expects %d" % (x[0].size, per_sample))
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
    try:
        main()
    except (OSError, ValueError, RuntimeError) as e:  # e.g. an unreadable 'latest' pointer
        die(why(e))
