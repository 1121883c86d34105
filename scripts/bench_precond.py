#!/usr/bin/python3
"""Cost of the dynamic preconditioner: step time with --precond dynamic --precond-every 1
against --precond none, on LeNet (batch 64 per rank) and the deep MLP mlp:784-256x12-10
(batch 256 per rank), at 1 and 2 ranks.

Two figures per case: the throughput ratio of interleaved runs (noisy on a shared machine),
and the share of step time in the `precond` phase of timing.csv (per-tensor sums over this
rank's 1/p of the parameters, one pass over the layers' activations for their moments, and one
allreduce of 2T + 2L + 1 doubles), which is what the update
itself costs and is stable.

  scripts/bench_precond.py [--rounds 3] [--ranks 1 2]
"""
import argparse
import csv
import os
import statistics
import subprocess
import tempfile

from clitools import ArgParser, die, why, add_bench_args, parse_bench_args

PROG = "bench_precond.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [("lenet", 64, 300), ("mlp:784-256x12-10", 256, 80)]
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OPENBLAS_NUM_THREADS="1")


def run(a, model, batch, steps, np_, precond):
    with tempfile.TemporaryDirectory() as d:
        log_every = max(steps // 5, 1)
        extra = ["--init", "seed", "--precond", precond, "--precond-every", "1"]
        cmd = ["mpirun", "-np", str(np_), "--bind-to", "core", "--oversubscribe", a.nnprec, "train",
               "--model", model, "--batch", str(batch), "--steps", str(steps), "--lr", "0.001",
               "--log-every", str(log_every), "--eval-every", str(10 ** 9), "--test-limit", "100",
               "--check-replicas", "0", "--quiet", "--out", d] + extra
        subprocess.run(cmd, check=True, env=ENV, stdout=subprocess.DEVNULL)
        rows = list(csv.DictReader(open(os.path.join(d, "train.csv"))))
        sps = statistics.median(float(r["samples_per_s"]) for r in rows[1:])
        t = {}
        for r in csv.DictReader(open(os.path.join(d, "timing.csv"))):
            if int(r["step"]) > log_every:
                t[r["phase"]] = t.get(r["phase"], 0.0) + float(r["mean_s"])
        total = sum(v for k, v in t.items() if k != "ar_thread")
        return sps, t.get("precond", 0.0) / total if total else 0.0


def main():
    ap = ArgParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_args(ap, ROOT, ranks=[1, 2], rounds=3)
    a = parse_bench_args(ap)
    print(f"{'model':<20} {'ranks':>5} {'none samples/s':>15} {'dynamic samples/s':>18} "
          f"{'throughput cost':>15} {'precond phase share':>20}")
    for model, batch, steps in CASES:
        for p in a.ranks:
            none, dyn, share = [], [], []
            for _ in range(a.rounds):
                none.append(run(a, model, batch, steps, p, "none")[0])
                s, sh = run(a, model, batch, steps, p, "dynamic")
                dyn.append(s)
                share.append(sh)
            n, d = statistics.median(none), statistics.median(dyn)
            print(f"{model:<20} {p:>5} {n:>15.0f} {d:>18.0f} {100 * (n / d - 1):>14.1f}% "
                  f"{100 * statistics.median(share):>19.2f}%", flush=True)


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, subprocess.CalledProcessError) as e:
        die(why(e))
