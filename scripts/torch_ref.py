#!/usr/bin/python3
"""PyTorch counterparts of nnprec's models, for side-by-side benchmarks.

  torch_ref.py bench --model lenet --batch 64 --steps 300 [--threads 1]
      single-process training speed (SGD momentum 0.9 on Fashion-MNIST), prints
      "samples_per_s: X"
  torch_ref.py ddp --model lenet --batch 64 --steps 200 --nproc 2
      DistributedDataParallel (gloo, one thread per process), prints the same line for the
      whole group (global samples per second)

Models mirror docs/models.md: lenet (conv1 padded by 2, flatten 576), mlp:W0-W1xN-... and
resnet8 (built by ckpt_to_torch.py from nnprec's expanded spec, RESNET8: convs with bias,
BatchNorm, 1x1-conv + bn projections)
"""
import argparse
import gzip
import os
import struct
import sys
import time
import zlib

# one BLAS/OpenMP thread per process unless told otherwise; set before torch loads its
# thread pools (spawned DDP workers re-import this module and inherit the environment)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import torch
import torch.nn as nn

from clitools import ArgParser, die, positive_int

PROG = "torch_ref.py"
DATA = "/usr/share/datasets/fashion-mnist"
ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "leaky-relu": nn.LeakyReLU}
# resnet8 as nnprec expands it (docs/models.md, n = 1)
RESNET8 = ("1x28x28/conv:16:3:1:1/bn/relu/res[conv:16:3:1:1/bn/relu/conv:16:3:1:1/bn]/relu/"
           "res[conv:32:3:2:1/bn/relu/conv:32:3:1:1/bn]/relu/"
           "res[conv:64:3:2:1/bn/relu/conv:64:3:1:1/bn]/relu/gap/dense:10")


def activation(s):
    """argparse type: a key of ACTS."""
    if s not in ACTS:
        raise argparse.ArgumentTypeError(f"invalid choice: '{s}' (choose from {', '.join(ACTS)})")
    return s


def mlp_widths(spec):
    """[W0, W1, ...] of mlp:W0-W1xN-...; ValueError unless 784 inputs, >= 10 outputs."""
    widths = []
    for tok in spec[4:].split("-"):
        w, _, rep = tok.partition("x")
        n = int(rep) if rep else 1
        if int(w) < 1 or n < 1:
            raise ValueError(f"'{tok}' is not a positive width (times a positive count)")
        widths += [int(w)] * n
    if len(widths) < 2:
        raise ValueError("at least two widths")
    if widths[0] != 784 or widths[-1] < 10:
        raise ValueError("784 inputs (28x28 images) and at least 10 outputs (the classes)")
    return widths


def model_spec(s):
    """argparse type: lenet, resnet8 or mlp:W0-W1xN-... (checked here, so that no run starts)."""
    if s not in ("lenet", "resnet8"):
        if not s.startswith("mlp:"):
            raise argparse.ArgumentTypeError(
                f"unsupported model '{s}' (lenet, resnet8 or mlp:W0-W1xN-...)")
        try:
            mlp_widths(s)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"bad model '{s}' (mlp:W0-W1xN-...: {e})") from None
    return s


def build(spec, act="relu"):
    acts = ACTS
    if spec == "lenet":
        return nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(576, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    if spec == "resnet8":
        import ckpt_to_torch  # h5py with it; only this model needs it
        return ckpt_to_torch.build(RESNET8)[0]
    if spec.startswith("mlp:"):
        widths = mlp_widths(spec)
        layers = [nn.Flatten()]
        for i in range(1, len(widths)):
            layers.append(nn.Linear(widths[i - 1], widths[i]))
            if i + 1 < len(widths):
                layers.append(acts[act]())
        return nn.Sequential(*layers)
    die(f"unsupported model '{spec}'")


def load_idx(split, limit=0):
    def read(path, magic, ndim):
        if not os.path.exists(path):
            path = path[:-3]
        opener = gzip.open if path.endswith(".gz") else open
        try:
            with opener(path, "rb") as f:
                data = f.read()
        except OSError as e:  # missing, a folder, not gzip
            die(f"{path}: {e.strerror or e}")
        except (EOFError, zlib.error) as e:  # truncated or corrupt .gz
            die(f"{path}: corrupt or truncated gzip data ({e})")
        head = 4 + 4 * ndim
        dims = struct.unpack(">" + "I" * ndim, data[4:head]) if len(data) >= head else ()
        if (not dims or struct.unpack(">I", data[:4])[0] != magic or 0 in dims
                or len(data) - head != np.prod(dims, dtype=np.int64)):
            die(f"{path}: not an IDX file of {ndim}-dimensional uint8 data, or truncated")
        return data, dims
    img, (n, h, w) = read(os.path.join(DATA, f"{split}-images-idx3-ubyte.gz"), 0x803, 3)
    lab, (m,) = read(os.path.join(DATA, f"{split}-labels-idx1-ubyte.gz"), 0x801, 1)
    if m != n:
        die(f"{DATA}: {n} {split} images but {m} labels")
    x = np.frombuffer(img, dtype=np.uint8, offset=16).reshape(n, 1, h, w)
    y = np.frombuffer(lab, dtype=np.uint8, offset=8)
    if limit:
        x, y = x[:limit], y[:limit]
    return x, y


def train_loop(model, x, y, batch, steps, rank=0, world=1):
    """Train `steps` steps; rank r takes its slice of every global batch, as nnprec does."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    lossf = nn.CrossEntropyLoss()
    n = x.shape[0]
    gb = batch * world
    if gb >= n:
        raise ValueError(f"a global batch of {gb} needs more than the {n} training samples")
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(n, generator=g)
    # normalize once up front (nnprec normalizes while gathering a batch), so that PyTorch's
    # figure is its model's speed and not that of uint8 fancy indexing
    xf = (x.float() / 255.0 - 0.2860) / 0.3530
    t0 = None
    warm = max(steps // 10, 3)
    for step in range(steps + warm):
        if step == warm:
            t0 = time.perf_counter()
        i0 = (step * gb) % (n - gb)
        idx = perm[i0 + rank * batch: i0 + (rank + 1) * batch]
        xb = xf.index_select(0, idx)
        yb = y[idx].long()
        opt.zero_grad(set_to_none=True)
        loss = lossf(model(xb), yb)
        loss.backward()
        opt.step()
    return steps * gb / (time.perf_counter() - t0)


def cmd_bench(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x, y = load_idx("train")
    x, y = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
    try:
        sps = train_loop(build(a.model, a.act), x, y, a.batch, a.steps)
    except (ValueError, RuntimeError) as e:
        die(e)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"samples_per_s: {sps:.1f}")


def ddp_worker(rank, a, port, q):
    """One DDP process; puts ("ok", samples/s) from rank 0, or ("error", message) and exits 1
    (no traceback: the parent reports the message)."""
    try:
        import torch.distributed as dist
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        torch.set_num_threads(1)
        if a.pin and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {rank % os.cpu_count()})
        dist.init_process_group("gloo", rank=rank, world_size=a.nproc)
        torch.manual_seed(0)
        x, y = load_idx("train")
        x, y = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
        model = nn.parallel.DistributedDataParallel(build(a.model, a.act))
        sps = train_loop(model, x, y, a.batch, a.steps, rank, a.nproc)
        if rank == 0:
            q.put(("ok", sps))
        dist.destroy_process_group()
    except Exception as e:  # noqa: BLE001 - reported by the parent as one line
        q.put(("error", f"DDP rank {rank}: {e}"))
        sys.exit(1)


def cmd_ddp(a):
    import torch.multiprocessing as mp
    import random
    from multiprocessing.connection import wait
    x, y = load_idx("train")  # check the data (and the batch) before starting processes
    if a.batch * a.nproc >= x.shape[0]:
        die(f"a global batch of {a.batch} x {a.nproc} needs more than the {x.shape[0]} "
            "training samples")
    del x, y
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    port = 29500 + random.randint(0, 2000)
    procs = [ctx.Process(target=ddp_worker, args=(r, a, port, q)) for r in range(a.nproc)]
    for p in procs:
        p.start()
    left = {p.sentinel: p for p in procs}
    while left:  # a failed worker stops the others, which would wait for it for minutes
        for s in wait(list(left)):
            p = left.pop(s)
            p.join()
            if p.exitcode != 0:
                for other in left.values():
                    other.terminate()
                    other.join()
                msgs = []
                while not q.empty():
                    msgs.append(q.get())
                errs = [m for kind, m in msgs if kind == "error"]
                die(errs[0] if errs else f"DDP worker exited with {p.exitcode}")
    kind, sps = q.get()
    print(f"torch {torch.__version__} DDP gloo, {a.nproc} process(es) x 1 thread")
    print(f"samples_per_s: {sps:.1f}")


def main():
    ap = ArgParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["bench", "ddp"])
    ap.add_argument("--model", type=model_spec, default="lenet")
    ap.add_argument("--act", type=activation, default="relu")
    ap.add_argument("--batch", type=positive_int, default=64, help="samples per process per step")
    ap.add_argument("--steps", type=positive_int, default=200)
    ap.add_argument("--threads", type=positive_int, default=1)
    ap.add_argument("--nproc", type=positive_int, default=2)
    ap.add_argument("--pin", action="store_true", help="DDP: pin process r to CPU r")
    a = ap.parse_args()
    (cmd_bench if a.action == "bench" else cmd_ddp)(a)


if __name__ == "__main__":
    main()
