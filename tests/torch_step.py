#!/usr/bin/python3
"""One training step of nnprec against the same step in PyTorch (tests/torch_step.sh).

usage: torch_step.py INIT.h5 STEP.h5 TRAIN_CSV EVAL_CSV DATA [--tol 1e-4] [--tie-safety 3]
                     [--mask-step 0]

INIT.h5 holds nnprec's initial parameters (a 1-step run at a learning rate of 1e-30, which
moves no parameter by more than ~1e-30), STEP.h5 the checkpoint after one step of the same
run (same --seed, model and data) at the real rate, TRAIN_CSV/EVAL_CSV that run's train.csv
and eval.csv. The run's only global batch must be its whole training set (--train-limit N
--global-batch N), so the batch is samples 0..N-1 of the training file whatever the shuffle.

PyTorch (1 thread) builds the module from INIT.h5 with scripts/ckpt_to_torch.py, sets
BatchNorm to its initial state (scale 1, shift 0, running mean 0, var 1, no batch tracked;
INIT.h5's running statistics are those after its step), replaces every nn.Dropout by a
module that applies nnprec's mask of step 0 (reproduced here from src/core/rng.c), normalizes
the samples as nnprec does (x = v*a + b in float32, a = (1/255)/std, b = -mean/std), and
takes one train-mode forward and backward of the mean softmax cross-entropy and one
torch.optim.SGD step with the checkpoint's lr, momentum, dampening, Nesterov flag and weight
decay, then evaluates the updated model in evaluation mode (running statistics, no dropout)
on the run's test samples. It does so twice: in float64 (the exact step up to float64
rounding) and in float32. Then, per tensor,

  rel(a, b) = max_i |a_i - b_i| / max(|b_i|, rms(b))      (b PyTorch's, rms over the tensor)

for every parameter, every BN running mean and variance (num_batches_tracked exactly), the
update STEP - INIT (less one float32 spacing of the parameter, its resolution; not for a
bias that feeds a BatchNorm, whose gradient is 0 in exact arithmetic) and SGD's momentum
buffer; the train-mode loss and accuracy (TRAIN_CSV's first row) and the eval-mode loss and
accuracy (EVAL_CSV). nnprec must be within TOL of the float64 step everywhere, and of the
float32 step in the parameters, running statistics and losses; accuracies equal. The
float32 step's own gradients are only within ~2e-4 of the exact ones where sums cancel
(printed), so updates and momentum buffers against float32 are shown, not required.

A ReLU input nearer 0 than float32's rounding error lets that rounding switch a unit on or
off, which moves a BatchNorm shift's gradient by ~1e-3 in a small batch; every ReLU input of
the float64 forward must therefore be at least --tie-safety times the float32 forward's
largest error in that layer away from 0 (the test's seeds and batches are chosen so).
Prints a table and exits 1 on a mismatch.
"""
import argparse
import copy
import math
import os
import sys

import h5py
import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import ckpt_to_torch as c2t  # noqa: E402

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
STREAM_DROPOUT = 5 << 56


def mix(z):
    """SplitMix64's finalizer (src/core/rng.c) on numpy uint64 arrays or Python ints."""
    if isinstance(z, int):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def rng_key(seed, stream):
    """nnp_rng_seed's key."""
    k = mix((seed + GOLDEN) & M64)
    return mix(k ^ mix((stream + 0xD1B54A32D192ED03) & M64))


def dropout_mask(seed, layer, step, ids, units, p):
    """nnprec's keep mask (src/nn/norm.c, net.c dropout_key): unit u of the sample with
    training-set index id is kept iff uniformf(key, id*U + u) >= p, the key that of
    (seed, NNP_STREAM_DROPOUT + (layer << 40) + step), uniformf = (u64 >> 40) * 2^-24."""
    key = rng_key(seed, STREAM_DROPOUT + (layer << 40) + (step & ((1 << 40) - 1)))
    with np.errstate(over="ignore"):
        ctr = (np.asarray(ids, dtype=np.uint64)[:, None] * np.uint64(units)
               + np.arange(units, dtype=np.uint64)[None, :])
        r = mix(np.uint64(key) + ctr * np.uint64(GOLDEN))
    u = (r >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0)
    return u >= np.float32(p)


class MaskedDropout(nn.Module):
    """Inverted dropout with a given keep mask: y = x * (1/(1-p)) where kept, else 0 (the
    scale in float32, as nnprec's)."""

    def __init__(self, p):
        super().__init__()
        self.p = np.float32(p)
        self.scale = float(np.float32(1.0) / (np.float32(1.0) - self.p))
        self.mask = None

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        m = self.mask.reshape(x.shape)
        return torch.where(m, x * self.scale, torch.zeros((), dtype=x.dtype))


def flat_dropout_layers(arch, model):
    """nnprec's layer index of each dropout item, in module order. The network is laid out
    flat (net.c, docs/models.md): one layer per item (the input shape is none), a block
    res[...] being its fork, its branch's items, its shortcut's layers and its add."""
    items = c2t.split_items(arch)[1:]
    out, i = [], 0
    for k, it in enumerate(items):
        if it.startswith("res["):
            block = model.layers[k]
            i += 1  # fork
            for sub in c2t.split_items(it[4:-1]):
                if sub.split(":")[0] == "dropout":
                    out.append(i)
                i += 1
            i += len(block.shortcut) + 1  # the projection's layers, the add
        else:
            if it.split(":")[0] == "dropout":
                out.append(i)
            i += 1
    return out


def find_train(data):
    for pat in ("train-{k}-idx{d}-ubyte.gz", "train-{k}-idx{d}-ubyte"):
        imgs = os.path.join(data, pat.format(k="images", d=3))
        labs = os.path.join(data, pat.format(k="labels", d=1))
        if os.path.exists(imgs) and os.path.exists(labs):
            return imgs, labs
    sys.exit("torch_step.py: no train-images/labels IDX files in %s" % data)


def normalize(v, mean, std):
    """nnprec's x = v*a + b (src/data/dataset.c), a = (1/255)/std and b = -mean/std in float32."""
    a = np.float32((1.0 / 255.0) / std)
    b = np.float32(-mean / std)
    return v.astype(np.float32) * a + b


def rel(a, b, slack=0.0):
    """max_i |a_i - b_i| / max(|b_i|, rms(b)); |a_i - b_i| less slack_i first (an update
    read from float32 parameters is only known to the parameter's spacing)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size == 0:
        return 0.0
    rms = math.sqrt(float(np.mean(b * b)))
    den = np.maximum(np.abs(b), rms)
    d = np.maximum(np.abs(a - b) - np.asarray(slack, dtype=np.float64).ravel(), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, d / np.where(den > 0, den, 1), np.where(d > 0, np.inf, 0))
    return float(r.max())


def options(h):
    text = c2t.text_attr(h.attrs["options"])
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def csv_row(path, step):
    with open(path) as f:
        head = f.readline().strip().split(",")
        for line in f:
            row = dict(zip(head, line.strip().split(",")))
            if int(row["step"]) == step:
                return row
    sys.exit("torch_step.py: %s has no row for step %d" % (path, step))


def torch_step(model, dtype, x, y, tx, ty, hyper):
    """One train-mode step of a copy of model in dtype (forward, mean cross-entropy, backward,
    torch.optim.SGD), then the evaluation-mode loss and accuracy on (tx, ty). Returns the
    loss, accuracy, parameters before and after, momentum buffers, BN buffers (float64 numpy
    by state_dict name) and the inputs of the ReLUs in the training forward."""
    m = copy.deepcopy(model).to(dtype)
    relu_in = []
    names = {id(mod): n for n, mod in m.named_modules()}

    def relu_hook(mod, inp, out):
        relu_in.append((names[id(mod)], inp[0].detach().double().numpy().copy()))
    hooks = [mod.register_forward_hook(relu_hook) for mod in m.modules()
             if isinstance(mod, nn.ReLU)]
    m.train()
    named = dict(m.named_parameters())
    old = {k: p.detach().double().numpy().copy() for k, p in named.items()}
    sgd = torch.optim.SGD(m.parameters(), **hyper)
    logits = m(torch.from_numpy(x).to(dtype))
    loss = nn.functional.cross_entropy(logits, torch.from_numpy(y))
    sgd.zero_grad()
    loss.backward()
    sgd.step()
    for hk in hooks:
        hk.remove()
    out = {
        "loss": loss.item(),
        "acc": float((logits.argmax(1).numpy() == y).mean()),
        "old": old,
        "params": {k: p.detach().double().numpy() for k, p in named.items()},
        "momentum": {k: sgd.state[p]["momentum_buffer"].double().numpy()
                     for k, p in named.items()},
        "buffers": {k: b.double().numpy() for k, b in m.named_buffers()},
        "relu_in": relu_in,
    }
    m.eval()
    with torch.no_grad():
        tl = m(torch.from_numpy(tx).to(dtype))
        out["test_loss"] = nn.functional.cross_entropy(tl, torch.from_numpy(ty)).item()
        out["test_acc"] = float((tl.argmax(1).numpy() == ty).mean())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for a in ("init", "step", "train_csv", "eval_csv", "data"):
        ap.add_argument(a)
    ap.add_argument("--tol", type=float, default=1e-4, help="relative tolerance (1e-4)")
    ap.add_argument("--tie-safety", type=float, default=3.0,
                    help="least |ReLU input| in float32 errors (3)")
    ap.add_argument("--mask-step", type=int, default=0,
                    help="the step whose dropout masks torch gets (0, the run's; another one "
                         "must make the comparison fail)")
    args = ap.parse_args()
    init_path, step_path, train_csv, eval_csv, data = (
        args.init, args.step, args.train_csv, args.eval_csv, args.data)
    tol, tie_safety = args.tol, args.tie_safety
    torch.set_num_threads(1)
    torch.manual_seed(0)
    fails = []

    model, shape, info = c2t.load_checkpoint(init_path)
    with h5py.File(step_path, "r") as hs, h5py.File(init_path, "r") as hi:
        arch = c2t.text_attr(hs.attrs["architecture"])
        if c2t.text_attr(hi.attrs["architecture"]) != arch:
            sys.exit("torch_step.py: the two checkpoints hold different models")
        opt = dict(hs["optimizer"].attrs)
        o = options(hs)
        seed = int(hs.attrs["seed"])
        n = int(hs.attrs["train_samples"])
        if int(hs.attrs["step"]) != 1 or int(hs.attrs["global_batch"]) != n:
            sys.exit("torch_step.py: %s is not one step over the whole training set" % step_path)
        if c2t.text_attr(opt["kind"]) != "sgd":
            sys.exit("torch_step.py: the run's optimizer is not sgd")
        if o.get("val-split", "0") != "0":
            sys.exit("torch_step.py: the run held out samples (--val-split): its training set "
                     "is not the file's first samples")
        lr = float(o["lr"])
        groups = [g for g in hs if g not in ("optimizer", "precond")
                  and isinstance(hs[g], h5py.Group) and "weight" in hs[g]]
        groups.sort(key=lambda g: int(hs[g]["weight"].attrs["offset"]))
        after = {g: {k: np.asarray(hs[g][k]) for k in hs[g]} for g in groups}
        offsets = {g: {k: int(hs[g][k].attrs["offset"]) for k in ("weight", "bias")}
                   for g in groups}
        before = {g: {k: np.asarray(hi[g][k]) for k in ("weight", "bias")} for g in groups}
        mom_buf = np.asarray(hs["optimizer/momentum_buffer"])
        test_limit = int(o.get("test-limit", "0"))
    bn_types = (nn.BatchNorm1d, nn.BatchNorm2d)
    trainable = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d) + bn_types)]
    assert len(trainable) == len(groups)

    # BatchNorm's initial state; INIT's scale and shift moved by at most lr*|grad| ~ 1e-30
    names = {id(m): n for n, m in model.named_modules()}
    with torch.no_grad():
        for m in trainable:
            if isinstance(m, bn_types):
                if not (torch.all(m.weight == 1) and m.bias.abs().max() < 1e-20):
                    fails.append("BatchNorm's initial scale 1 and shift 0")
                    print("%s: nnprec's initial BatchNorm scale is not 1 or its shift not 0"
                          "   MISMATCH" % names[id(m)])
                m.weight.fill_(1)
                m.bias.zero_()
                m.reset_running_stats()

    # nnprec's dropout masks of step 0 on samples 0..n-1
    drops = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Dropout)]
    layers = flat_dropout_layers(arch, model) if isinstance(model, c2t.ResNet) else None
    if drops and layers is None:
        sys.exit("torch_step.py: dropout is handled in networks with residual blocks only")
    imgs, labs = find_train(data)
    x = c2t.read_idx(imgs, 3)[:n]
    y = c2t.read_idx(labs, 1)[:n].astype(np.int64)
    x = normalize(x, info["norm_mean"], info["norm_std"]).reshape((n,) + tuple(shape))
    ids = np.arange(n)
    masked = []
    for (name, m), layer in zip(drops, layers or []):
        md = MaskedDropout(m.p)
        parent = model.get_submodule(name.rsplit(".", 1)[0])
        setattr(parent, name.rsplit(".", 1)[1], md)
        masked.append((name, layer, md))

    # the units of each dropout layer: its input's size (a hook on a first eval-mode pass)
    units = {}

    def hook(name):
        def record(mod, inp, out):
            units[name] = int(np.prod(inp[0].shape[1:]))
        return record
    hooks = [md.register_forward_hook(hook(name)) for name, _, md in masked]
    model.eval()
    with torch.no_grad():
        model(torch.from_numpy(x[:1]))
    for hk in hooks:
        hk.remove()
    for name, layer, md in masked:
        md.mask = torch.from_numpy(dropout_mask(seed, layer, args.mask_step, ids, units[name],
                                                   md.p))
        print("dropout %s = nnprec layer %d: p %.3g, %d units, kept %.4f"
              % (name, layer, md.p, units[name], md.mask.float().mean().item()))

    # one train-mode step and the evaluation, in float64 (the reference: the exact step up
    # to float64 rounding) and in float32
    tv = c2t.read_idx(c2t.find_idx(data, "images", 3), 3)
    ty = c2t.read_idx(c2t.find_idx(data, "labels", 1), 1).astype(np.int64)
    if test_limit > 0:
        tv, ty = tv[:test_limit], ty[:test_limit]
    tx = normalize(tv, info["norm_mean"], info["norm_std"]).reshape((len(ty),) + tuple(shape))
    hyper = dict(lr=lr, momentum=float(opt["momentum"]), dampening=float(opt["dampening"]),
                 nesterov=bool(opt["nesterov"]), weight_decay=float(opt["weight_decay"]))
    ref = {dt: torch_step(model, dt, x, y, tx, ty, hyper) for dt in (torch.float64, torch.float32)}

    # A ReLU input closer to 0 than float32's rounding error makes the step depend on that
    # rounding: one unit that turns off in one implementation and not in the other moves a
    # BatchNorm shift's gradient by ~1e-3 in a small batch. The reference's inputs must keep
    # clear of 0 by tie_safety times float32's largest error in that layer (measured: the
    # float32 forward against the float64 one).
    safety, where = math.inf, ""
    for (name, z64), (_, z32) in zip(ref[torch.float64]["relu_in"], ref[torch.float32]["relu_in"]):
        err = float(np.abs(z32 - z64).max())
        f = float(np.abs(z64).min()) / err if err > 0 else math.inf
        if f < safety:
            safety, where = f, name
    print("ReLU inputs: the smallest |input| is %.3g x float32's largest error (%s)"
          % (safety, where))
    if safety < tie_safety:
        fails.append("a ReLU input within %g float32 errors of 0" % tie_safety)
        print("a ReLU input in %s is within %g x float32's rounding error of 0: the step "
              "depends on rounding; take another seed or batch   MISMATCH" % (where, tie_safety))

    row = csv_row(train_csv, 1)
    erow = csv_row(eval_csv, 1)
    # a bias feeding a BatchNorm has a zero gradient in exact arithmetic (the batch mean
    # removes it): its computed gradient is rounding noise, so its update is not compared
    pre_bn = set()
    for mod in model.modules():
        if isinstance(mod, nn.Sequential):
            kids = list(mod)
            pre_bn |= {id(a) for a, b in zip(kids, kids[1:])
                       if isinstance(a, (nn.Linear, nn.Conv2d)) and isinstance(b, bn_types)}
    r64, r32 = ref[torch.float64], ref[torch.float32]
    # per quantity: (nnprec's value, the reference's by dtype, slack) for each tensor
    rows = {"parameter": [], "update": [], "running statistic": [], "momentum buffer": []}
    buf = {"n": [], torch.float64: [], torch.float32: []}
    for g, m in zip(groups, trainable):
        mn = names[id(m)]
        for k in ("weight", "bias"):
            key = mn + "." + k
            rows["parameter"].append(("%s/%s" % (g, k), after[g][k],
                                      {dt: r["params"][key] for dt, r in ref.items()}, 0.0))
            if k == "weight" or id(m) not in pre_bn:
                rows["update"].append((
                    "%s/%s" % (g, k), after[g][k].astype(np.float64) - before[g][k],
                    {dt: r["params"][key] - r["old"][key] for dt, r in ref.items()},
                    np.spacing(after[g][k])))
                o = offsets[g][k]
                buf["n"].append(mom_buf[o:o + after[g][k].size])
                for dt, r in ref.items():
                    buf[dt].append(r["momentum"][key].ravel())
        if isinstance(m, bn_types):
            for k in ("running_mean", "running_var"):
                rows["running statistic"].append((
                    "%s/%s" % (g, k), after[g][k],
                    {dt: r["buffers"][mn + "." + k] for dt, r in ref.items()}, 0.0))
            nbt = {int(r["buffers"][mn + ".num_batches_tracked"]) for r in ref.values()}
            if {int(after[g]["num_batches_tracked"].ravel()[0])} != nbt:
                fails.append("%s/num_batches_tracked" % g)
                print("%s/num_batches_tracked differs   MISMATCH" % g)
    rows["momentum buffer"].append(("(all)", np.concatenate(buf["n"]),
                                    {dt: np.concatenate(buf[dt]) for dt in ref}, 0.0))

    # nnprec must match the float64 step in everything; the float32 step in the parameters,
    # running statistics, losses and accuracies (its gradients are themselves only within
    # ~2e-4 of the exact ones where the sums cancel: the last column)
    print("max rel. difference       nnprec-float64             nnprec-float32"
          "             float32-float64")
    for kind, items in rows.items():
        worst = {}
        for what, a, refs, slack in items:
            for col, (x, y) in {"64": (a, refs[torch.float64]), "32": (a, refs[torch.float32]),
                                "own": (refs[torch.float32], refs[torch.float64])}.items():
                d = rel(x, y, slack)
                if col not in worst or d > worst[col][0]:
                    worst[col] = (d, what)
                if d > tol and (col == "64" or (col == "32" and kind in
                                                ("parameter", "running statistic"))):
                    fails.append("%s %s (PyTorch float%s)" % (kind, what, col))
                    print("%s %s: %.3g against PyTorch float%s   MISMATCH" % (kind, what, d, col))
        print("%-18s" % kind + "".join("  %8.2e %-24s" % (worst[c][0], worst[c][1][:24])
                                       for c in ("64", "32", "own")))
    for what, nv, key in (("train-mode loss", float(row["train_loss"]), "loss"),
                          ("eval-mode loss", float(erow["test_loss"]), "test_loss")):
        ds = [rel(nv, r[key]) for r in (r64, r32)]
        print("%-18s  %8.2e %-24s  %8.2e %-24s  %8.2e" % (what, ds[0], "", ds[1], "",
                                                        rel(r32[key], r64[key])))
        if max(ds) > tol:
            fails.append(what)
            print("%s differs   MISMATCH" % what)
    for what, nv, key in (("train-mode accuracy", float(row["train_acc"]), "acc"),
                          ("eval-mode accuracy", float(erow["test_acc"]), "test_acc")):
        if any(abs(nv - r[key]) > 1e-6 for r in (r64, r32)):
            fails.append(what)
            print("%s: nnprec %g, PyTorch %g (float64) %g (float32)   MISMATCH"
                  % (what, nv, r64[key], r32[key]))
    print("train-mode loss %s, accuracy %s; eval-mode loss %s, accuracy %s on %d test samples "
          "(nnprec; PyTorch float64 %.9g %.6f, %.9g %.6f)"
          % (row["train_loss"], row["train_acc"], erow["test_loss"], erow["test_acc"], len(ty),
             r64["loss"], r64["acc"], r64["test_loss"], r64["test_acc"]))

    if fails:
        print("MISMATCH: %s" % ", ".join(fails[:10]))
        return 1
    print("all within %g" % tol)
    return 0


if __name__ == "__main__":
    sys.exit(main())
