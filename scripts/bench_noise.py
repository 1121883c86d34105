#!/usr/bin/python3
"""Cost of --noise-scale: on LeNet (batch 64 per rank) and mlp:784-256x12-10 (batch 256 per
rank), at 2 ranks by default.

Two figures per case: the same-run share, read from the line rank 0 prints at the end of a
--noise-scale run ("[time]  --noise-scale: X s of rank 0's Y s of local work (Z%)": the
norm passes timed inside the run, stable), and the throughput ratio of interleaved runs
without and with --noise-scale (noisy on a shared machine). At 1 rank the share includes
the extra pass over half of each batch.

--deterministic: the runs with --noise-scale also take --deterministic --micro-shard G/2 (the
plain runs stay as they are): two micro-shards, the same small batches as one rank's halves
or two ranks' shares, and at 1 rank no extra pass. The throughput column is then the whole
price of the noise scale taken that way.

  scripts/bench_noise.py [--rounds 3] [--ranks 2] [--deterministic]
"""
import argparse
import csv
import os
import re
import statistics
import subprocess
import tempfile

from clitools import ArgParser, die, why, add_bench_args, parse_bench_args

PROG = "bench_noise.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [("lenet", 64, 300), ("mlp:784-256x12-10", 256, 80)]
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OPENBLAS_NUM_THREADS="1")
SHARE = re.compile(r"^\[time\]  --noise-scale: .*\(([0-9.]+)%\)", re.M)


def run(a, model, batch, steps, np_, noise):
    """(median samples/s over the log rows after the first, share of local work or None)"""
    with tempfile.TemporaryDirectory() as d:
        log_every = max(steps // 5, 1)
        cmd = ["mpirun", "-np", str(np_), "--bind-to", "core", "--oversubscribe", a.nnprec, "train",
               "--model", model, "--batch", str(batch), "--steps", str(steps), "--lr", "0.001",
               "--log-every", str(log_every), "--eval-every", str(10 ** 9), "--test-limit", "100",
               "--check-replicas", "0", "--out", d] + (["--noise-scale"] if noise else []) + \
              (["--deterministic", "--micro-shard", str(batch * np_ // 2)]
               if noise and a.deterministic else [])
        r = subprocess.run(cmd, check=True, env=ENV, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        with open(os.path.join(d, "train.csv")) as f:
            rows = list(csv.DictReader(f))
        sps = statistics.median(float(x["samples_per_s"]) for x in rows[1:])
        m = SHARE.search(r.stdout)
        if noise and not m:
            die("no '--noise-scale:' line in the output of: " + " ".join(cmd))
        return sps, float(m.group(1)) / 100 if m else None


def main():
    ap = ArgParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_args(ap, ROOT, ranks=[2], rounds=3)
    ap.add_argument("--deterministic", action="store_true",
                    help="the --noise-scale runs also take --deterministic")
    a = parse_bench_args(ap)
    print(f"{'model':<20} {'ranks':>5} {'plain samples/s':>16} {'noise samples/s':>16} "
          f"{'throughput cost':>15} {'same-run share':>15}")
    for model, batch, steps in CASES:
        for p in a.ranks:
            plain, noisy, share = [], [], []
            for _ in range(a.rounds):
                plain.append(run(a, model, batch, steps, p, False)[0])
                s, sh = run(a, model, batch, steps, p, True)
                noisy.append(s)
                share.append(sh)
            n, d = statistics.median(plain), statistics.median(noisy)
            print(f"{model:<20} {p:>5} {n:>16.0f} {d:>16.0f} {100 * (n / d - 1):>14.1f}% "
                  f"{100 * statistics.median(share):>14.2f}%", flush=True)


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, subprocess.CalledProcessError) as e:
        die(why(e))
