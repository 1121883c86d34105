#!/usr/bin/python3
"""Cost of --deterministic: throughput against the plain fused allreduce at 2 ranks, on LeNet
(batch 64 per rank, global batch 128) and mlp:784-1024x4-10 (batch 256 per rank, global
batch 512), as the ratio of interleaved runs (fused, deterministic, fused, ...: both see the
same machine), and where the time goes (the phases of timing.csv, mean over ranks).

  scripts/bench_deterministic.py [--rounds 3] [--micro-shard 0 16 32] [--ranks 2]

--micro-shard 0 is the default size (the largest power of two up to 256 that cuts the global
batch into at least 4 micro-shards: 32 for LeNet's 128, 128 for the MLP's 512); give several
to compare sizes (docs/determinism.md).
"""
import argparse
import csv
import os
import statistics
import subprocess
import tempfile

from clitools import ArgParser, add_bench_args, parse_bench_args

PROG = "bench_deterministic.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [("lenet", 64, 200), ("mlp:784-1024x4-10", 256, 20)]
PHASES = ["forward", "backward", "ar_wait", "allreduce", "precond", "optimizer"]
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OPENBLAS_NUM_THREADS="1")


def run(a, model, batch, steps, extra):
    """Median samples/s over the log rows after the first, and seconds per step by phase."""
    with tempfile.TemporaryDirectory() as d:
        log_every = max(steps // 5, 1)
        cmd = ["mpirun", "-np", str(a.ranks), "--bind-to", "core", "--oversubscribe", a.nnprec,
               "train", "--model", model, "--batch", str(batch), "--steps", str(steps),
               "--lr", "0.001", "--log-every", str(log_every), "--eval-every", str(10 ** 9),
               "--test-limit", "100", "--check-replicas", "0", "--quiet", "--out", d] + extra
        subprocess.run(cmd, check=True, env=ENV, stdout=subprocess.DEVNULL)
        rows = list(csv.DictReader(open(os.path.join(d, "train.csv"))))
        sps = statistics.median(float(r["samples_per_s"]) for r in rows[1:])
        t = {}
        for r in csv.DictReader(open(os.path.join(d, "timing.csv"))):
            if int(r["step"]) > log_every:
                t[r["phase"]] = t.get(r["phase"], 0.0) + float(r["mean_s"]) / (steps - log_every)
        return sps, t


def main():
    ap = ArgParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_args(ap, ROOT, ranks=2, rounds=3)
    ap.add_argument("--micro-shard", type=int, nargs="+", default=[0])
    a = parse_bench_args(ap)
    if any(s < 0 for s in a.micro_shard):
        ap.error("--micro-shard sizes must be >= 0")
    configs = [("fused", [])] + [
        (f"det S={s or 'default'}", ["--deterministic"] + (["--micro-shard", str(s)] if s else []))
        for s in a.micro_shard]
    print(f"{a.ranks} ranks, {a.rounds} interleaved rounds; ratio = samples/s of fused / of the "
          f"configuration (1.05: 5% slower), of the medians and of the best rounds")
    for model, batch, steps in CASES:
        sps = {name: [] for name, _ in configs}
        phases = {name: [] for name, _ in configs}
        for _ in range(a.rounds):
            for name, extra in configs:
                s, t = run(a, model, batch, steps, extra)
                sps[name].append(s)
                phases[name].append(t)
        print(f"\n{model}, batch {batch} per rank ({steps} steps):")
        print(f"  {'':<16} {'samples/s':>10} {'ratio':>6} {'best':>6}  " +
              " ".join(f"{p:>9}" for p in PHASES) + "   (ms per step)")
        base, top = statistics.median(sps["fused"]), max(sps["fused"])
        for name, _ in configs:
            m = statistics.median(sps[name])
            ms = [1e3 * statistics.median(t.get(p, 0.0) for t in phases[name]) for p in PHASES]
            print(f"  {name:<16} {m:>10.0f} {base / m:>6.3f} {top / max(sps[name]):>6.3f}  " +
                  " ".join(f"{v:>9.2f}" for v in ms))


if __name__ == "__main__":
    main()
