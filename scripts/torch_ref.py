#!/usr/bin/python3
"""PyTorch counterparts of nnprec's models, for side-by-side benchmarks.

  torch_ref.py bench --model lenet --batch 64 --steps 300 [--threads 1]
      single-process training speed (SGD momentum 0.9 on Fashion-MNIST), prints
      "samples_per_s: X"
  torch_ref.py ddp --model lenet --batch 64 --steps 200 --nproc 2
      DistributedDataParallel (gloo, one thread per process), prints the same line for the
      whole group (global samples per second)

Models mirror docs/models.md: lenet (conv1 padded by 2, flatten 576) and mlp:W0-W1xN-...
"""
import argparse
import gzip
import os
import struct
import sys
import time

# one BLAS/OpenMP thread per process unless told otherwise; set before torch loads its
# thread pools (spawned DDP workers re-import this module and inherit the environment)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import torch
import torch.nn as nn

DATA = "/usr/share/datasets/fashion-mnist"


def build(spec, act="relu"):
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "leaky-relu": nn.LeakyReLU}
    if spec == "lenet":
        return nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(576, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    if spec.startswith("mlp:"):
        widths = []
        for tok in spec[4:].split("-"):
            w, _, rep = tok.partition("x")
            widths += [int(w)] * (int(rep) if rep else 1)
        layers = [nn.Flatten()]
        for i in range(1, len(widths)):
            layers.append(nn.Linear(widths[i - 1], widths[i]))
            if i + 1 < len(widths):
                layers.append(acts[act]())
        return nn.Sequential(*layers)
    sys.exit(f"torch_ref.py: error: unsupported model '{spec}'")


def load_idx(split, limit=0):
    def read(path):
        if not os.path.exists(path):
            path = path[:-3]
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            return f.read()
    img = read(os.path.join(DATA, f"{split}-images-idx3-ubyte.gz"))
    lab = read(os.path.join(DATA, f"{split}-labels-idx1-ubyte.gz"))
    n, h, w = struct.unpack(">III", img[4:16])
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
    sps = train_loop(build(a.model, a.act), x, y, a.batch, a.steps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"samples_per_s: {sps:.1f}")


def ddp_worker(rank, a, port, q):
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
        q.put(sps)
    dist.destroy_process_group()


def cmd_ddp(a):
    import torch.multiprocessing as mp
    import random
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    port = 29500 + random.randint(0, 2000)
    procs = [ctx.Process(target=ddp_worker, args=(r, a, port, q)) for r in range(a.nproc)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            sys.exit(f"torch_ref.py: error: DDP worker exited with {p.exitcode}")
    print(f"torch {torch.__version__} DDP gloo, {a.nproc} process(es) x 1 thread")
    print(f"samples_per_s: {q.get():.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["bench", "ddp"])
    ap.add_argument("--model", default="lenet")
    ap.add_argument("--act", default="relu")
    ap.add_argument("--batch", type=int, default=64, help="samples per process per step")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--pin", action="store_true", help="DDP: pin process r to CPU r")
    a = ap.parse_args()
    (cmd_bench if a.action == "bench" else cmd_ddp)(a)


if __name__ == "__main__":
    main()
