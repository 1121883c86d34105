#!/usr/bin/python3
"""Cost of --optim lars and lamb in a training step: LeNet (batch 64 per rank) and
mlp:784-256x12-10 (batch 256 per rank), at 2 ranks by default, with the fused and the shm
allreduce (shm: each rank updates its half of the parameters, and LARS/LAMB sum their
norms over shares in a small allreduce).

Runs of sgd, lars, adam and lamb are interleaved (round 1 of each, round 2 of each, ...), so
all four see the same machine. From each run's timing.csv: the optimizer phase (ms per step,
the update and, over shares, the norms' allreduce, which also absorbs whatever skew the
ranks have when they reach it) and the whole step (the sum of the phases). The cost of a layer-wise optimizer is its optimizer phase less its base's (LARS
over SGD, LAMB over Adam), as a share of the base's whole step, both from the same round: a
same-run figure, steadier than a throughput ratio on a shared machine. The median over the
rounds (of the extra in ms, and of the share), and the quartiles of the rounds' shares.

  scripts/bench_optim.py [--rounds 5] [--ranks 2] [--modes fused shm] [--also NNPREC]

--also runs a second build in the same rounds (each of its runs right after the same
optimizer's run of --nnprec), so two builds are compared on the same machine state.
"""
import argparse
import csv
import os
import statistics
import subprocess
import tempfile

from clitools import ArgParser, die, add_bench_args, parse_bench_args

PROG = "bench_optim.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [("lenet", 64, 300), ("mlp:784-256x12-10", 256, 80)]
OPTIMS = [("sgd", []), ("lars", []), ("adam", []), ("lamb", ["--weight-decay", "0.01"])]
BASE = {"lars": "sgd", "lamb": "adam"}
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OPENBLAS_NUM_THREADS="1")


def run(a, exe, model, batch, steps, mode, optim, extra):
    """(optimizer ms per step, whole step ms) over the log rows after the first"""
    with tempfile.TemporaryDirectory() as d:
        log_every = max(steps // 5, 1)
        cmd = ["mpirun", "-np", str(a.ranks), "--bind-to", "core", "--oversubscribe", exe,
               "train", "--model", model, "--batch", str(batch), "--steps", str(steps),
               "--lr", "0.001", "--optim", optim, "--allreduce", mode,
               "--log-every", str(log_every), "--eval-every", str(10 ** 9), "--test-limit", "100",
               "--check-replicas", "0", "--quiet", "--out", d] + extra
        r = subprocess.run(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
        if r.returncode != 0:
            last = r.stderr.strip().splitlines()[-1:] or ["no message"]
            die(f"{' '.join(cmd)} failed (exit {r.returncode}): {last[0]}")
        opt = total = 0.0
        for row in csv.DictReader(open(os.path.join(d, "timing.csv"))):
            if int(row["step"]) > log_every:
                s = 1e3 * float(row["mean_s"]) / (steps - log_every)
                total += s
                if row["phase"] == "optimizer":
                    opt += s
        return opt, total


def main():
    ap = ArgParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_args(ap, ROOT, ranks=2, rounds=5)
    ap.add_argument("--modes", nargs="+", default=["fused", "shm"],
                    choices=["fused", "bucketed", "sharded", "shm"])
    ap.add_argument("--also", metavar="NNPREC",
                    help="a second build, run in the same rounds (compare two builds)")
    a = parse_bench_args(ap)
    if a.also and not os.access(a.also, os.X_OK):
        die(f"--also {a.also} is not an executable")
    exes = [a.nnprec] + ([a.also] if a.also else [])
    print(f"{a.ranks} ranks, {a.rounds} interleaved rounds, medians; extra = optimizer phase "
          f"less its base's (lars: sgd, lamb: adam), as a share of the base's whole step")
    for model, batch, steps in CASES:
        for mode in a.modes:
            opt = {(e, o): [] for e in exes for o, _ in OPTIMS}
            tot = {(e, o): [] for e in exes for o, _ in OPTIMS}
            for _ in range(a.rounds):
                for o, extra in OPTIMS:
                    for e in exes:
                        x, t = run(a, e, model, batch, steps, mode, o, extra)
                        opt[e, o].append(x)
                        tot[e, o].append(t)
            print(f"\n{model}, batch {batch} per rank, {mode} ({steps} steps):")
            for e in exes:
                if a.also:
                    print(f"  {e}:")
                print(f"  {'optim':<6} {'step ms':>8} {'optimizer ms':>13} {'extra ms':>9} "
                      f"{'extra':>7} {'rounds q1-q3':>14}")
                for o, _ in OPTIMS:
                    mo, mt = statistics.median(opt[e, o]), statistics.median(tot[e, o])
                    line = f"  {o:<6} {mt:>8.2f} {mo:>13.3f}"
                    if o in BASE:
                        b = BASE[o]
                        # paired by round: both ran in the same round
                        d = statistics.median(x - y for x, y in zip(opt[e, o], opt[e, b]))
                        # each round's extra over its base's whole step: the median, and
                        # the quartiles for the spread
                        r = [100 * (x - y) / t for x, y, t in zip(opt[e, o], opt[e, b], tot[e, b])]
                        line += f" {d:>9.3f} {statistics.median(r):>6.2f}%"
                        if len(r) >= 4:
                            q = statistics.quantiles(r, n=4)
                            line += f" {q[0]:>6.2f}-{q[2]:.2f}%"
                    print(line)


if __name__ == "__main__":
    main()
