#!/usr/bin/python3
"""Data-parallel scaling of nnprec, with PyTorch DDP (gloo, 1 thread per process) alongside.

Weak scaling: fixed batch per rank (LeNet 64, mlp:784-1024x4-10 256), 1..P ranks;
efficiency(p) = samples/s(p) / (p * samples/s(1)), against the same round's 1-rank run
(median over --rounds, so drift of the machine between rounds cancels). Strong scaling: a fixed global batch
(LeNet 256, MLP 1024) split over the ranks. For every nnprec run it also reports the share
of step time spent in the allreduce (including the wait for the slowest rank) and, with
--allreduce bucketed, how much of the communication thread's allreduce time was hidden
behind backward (1 - exposed / thread time), and how much slower per sample its slowest
rank was than the mean rank (ranks.csv). Six variants: fused allreduce, fused with
--balance 10 (global batch re-split by rank speed), bucketed, sharded (reduce-scatter,
each rank updates its 1/P of the parameters, allgather), shm (the sharded step through a
node-local shared window), and shm with --balance 10. Weak scaling also runs P independent single-rank processes at
once: the machine's ceiling with no communication.

  scripts/bench_scaling.py [--ranks 1 2] [--models lenet mlp] [--modes weak strong]
                           [--variants fused shm ...] [--no-torch] [--rounds N]
                           [--plot PNG] [--csv FILE] [--logs DIR] [--torch-python PY]

Each rank is bound to a core (--bind-to core) with one BLAS thread. With --rounds N > 1 the
end of the output pairs every variant with fused round by round (ahead in k of N, median
and range of the difference in samples/s).
"""
import argparse
import csv
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

from clitools import ArgParser, die, why, positive_int

PROG = "bench_scaling.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {"lenet": ("lenet", 64, 256, 300), "mlp": ("mlp:784-1024x4-10", 256, 1024, 40)}
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OPENBLAS_NUM_THREADS="1")


VARIANTS = {"fused": ["--allreduce", "fused"], "balanced": ["--allreduce", "fused", "--balance", "10"],
            "bucketed": ["--allreduce", "bucketed"], "sharded": ["--allreduce", "sharded"],
            "shm": ["--allreduce", "shm"], "shm-balanced": ["--allreduce", "shm", "--balance", "10"]}


def run_nnprec(a, model, np_, batch_args, steps, variant, threads=1):
    """np_ ranks of `threads` BLAS threads each, every rank bound to `threads` cores."""
    with tempfile.TemporaryDirectory() as d:
        log_every = max(steps // 5, 1)
        mapping = ["--map-by", f"slot:PE={threads}"] if threads > 1 else []
        cmd = ["mpirun", "-np", str(np_), *mapping, "--bind-to", "core", "--oversubscribe", a.nnprec,
               "train", "--model", model, *batch_args, "--steps", str(steps), "--log-every",
               str(log_every), "--eval-every", str(10 ** 9), "--test-limit", "100",
               "--check-replicas", "0", *VARIANTS.get(variant, VARIANTS["fused"]),
               "--threads", str(threads), "--quiet", "--out", d]
        subprocess.run(cmd, check=True, env=ENV, stdout=subprocess.DEVNULL)
        if a.logs:
            os.makedirs(a.logs, exist_ok=True)
            tag = (f"{model.split(':')[0]}_{batch_args[0].strip('-')}{batch_args[1]}_"
                   f"{variant.replace('/', '-')}_{np_}")
            for f in ("train.csv", "timing.csv", "ranks.csv"):
                shutil.copy(os.path.join(d, f), os.path.join(a.logs, f"{tag}_{f}"))
        rows = list(csv.DictReader(open(os.path.join(d, "train.csv"))))
        sps = statistics.median(float(r["samples_per_s"]) for r in rows[1:])
        t = {}
        for r in csv.DictReader(open(os.path.join(d, "timing.csv"))):
            if int(r["step"]) > log_every:  # skip the warm-up interval
                t[r["phase"]] = t.get(r["phase"], 0.0) + float(r["mean_s"])
        step_time = sum(v for k, v in t.items() if k != "ar_thread")
        ar_share = (t.get("allreduce", 0) + t.get("ar_wait", 0)) / step_time if step_time else 0
        hidden = None
        if t.get("ar_thread", 0) > 0:
            hidden = 1 - t["allreduce"] / t["ar_thread"]
        # straggling: the slowest rank's local work over the mean rank's, per sample
        work = [sum(float(r[k]) for k in ("data_s", "forward_s", "backward_s", "precond_s",
                                          "optimizer_s")) / max(float(r["samples"]), 1)
                for r in csv.DictReader(open(os.path.join(d, "ranks.csv")))]
        spread = max(work) / (sum(work) / len(work)) - 1
        return sps, ar_share, hidden, spread


def run_independent(a, model, np_, batch, steps):
    """p single-rank runs at once, each pinned to its own core: what p ranks could reach
    with no communication at all (shared caches, memory bandwidth, clock)."""
    with tempfile.TemporaryDirectory() as d:
        procs = []
        for r in range(np_):
            out = os.path.join(d, str(r))
            cmd = ["taskset", "-c", str(r % os.cpu_count()), a.nnprec, "train", "--model", model,
                   "--batch", str(batch), "--steps", str(steps), "--log-every", str(max(steps // 5, 1)),
                   "--eval-every", str(10 ** 9), "--test-limit", "100", "--quiet", "--out", out]
            procs.append(subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL))
        total = 0.0
        for r, p in enumerate(procs):
            if p.wait() != 0:
                die("an independent run failed")
            rows = list(csv.DictReader(open(os.path.join(d, str(r), "train.csv"))))
            total += statistics.median(float(x["samples_per_s"]) for x in rows[1:])
        return total


def run_torch(a, model, np_, batch, steps):
    out = subprocess.run([a.torch_python, os.path.join(ROOT, "scripts", "torch_ref.py"), "ddp",
                          "--model", model, "--nproc", str(np_), "--batch", str(batch),
                          "--steps", str(steps), "--pin"], check=True, capture_output=True,
                         text=True).stdout
    m = re.search(r"samples_per_s: ([\d.]+)", out)
    if not m:
        die(f"torch_ref.py printed no 'samples_per_s:' line: {out.strip()[-200:]}")
    return float(m.group(1))


def check_outputs(ap, a):
    """--csv, --plot and --logs, checked before the benchmark rather than after it."""
    for opt, path in (("--csv", a.csv), ("--plot", a.plot), ("--logs", a.logs)):
        if path is None:
            continue
        if not path:
            ap.error(f"{opt}: the name is empty")
        if opt == "--logs":
            if os.path.exists(path) and not os.path.isdir(path):
                die(f"--logs: {path} exists and is not a directory")
            continue
        if os.path.isdir(path):
            die(f"{opt}: {path} is a directory")
        if not os.path.isdir(os.path.dirname(path) or "."):
            die(f"{opt}: {os.path.dirname(path)}: no such directory")
    if a.plot:
        try:
            from matplotlib.backend_bases import FigureCanvasBase
        except ImportError:
            die(f"--plot needs matplotlib, which {sys.executable} cannot import")
        kinds = FigureCanvasBase.get_supported_filetypes()
        if os.path.splitext(a.plot)[1][1:].lower() not in kinds:
            ap.error(f"--plot: '{a.plot}' does not end in an image format matplotlib writes "
                     f"({', '.join(sorted(kinds))})")


def main():
    ap = ArgParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nnprec", default=os.path.join(ROOT, "build", "nnprec"))
    ap.add_argument("--ranks", type=positive_int, nargs="+", default=[1, 2])
    ap.add_argument("--models", nargs="+", default=["lenet", "mlp"], choices=sorted(MODELS))
    ap.add_argument("--modes", nargs="+", default=["weak", "strong"], choices=["weak", "strong"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="nnprec variants to run (fused always runs: it is the baseline)")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch DDP")
    ap.add_argument("--rounds", type=positive_int, default=1,
                    help="repeat every measurement, rounds interleaved, and keep the medians")
    ap.add_argument("--plot", help="PNG: samples/s and efficiency against ranks")
    ap.add_argument("--csv", help="also write the rows to this CSV file")
    ap.add_argument("--logs", help="keep every nnprec run's train.csv, timing.csv and ranks.csv "
                    "here (the last round's)")
    ap.add_argument("--threads-per-rank", type=int, default=0, metavar="T",
                    help="also run P/T ranks of T BLAS threads on P cores (variant 'Tthr/rank'; "
                    "weak scaling: T times the batch per rank)")
    ap.add_argument("--torch-python", default="/usr/bin/python3",
                    help="Python that imports torch (default: Debian's /usr/bin/python3)")
    a = ap.parse_args()
    if a.threads_per_rank < 0 or a.threads_per_rank == 1:
        ap.error("--threads-per-rank must be 2 or more")
    if 1 not in a.ranks:
        ap.error("--ranks must include 1 (the baseline of every efficiency)")
    check_outputs(ap, a)
    if not os.access(a.nnprec, os.X_OK):
        die(f"{a.nnprec} is not an executable (build first)")
    if not a.no_torch and not shutil.which(a.torch_python):
        die(f"--torch-python: {a.torch_python} is not an executable (or give --no-torch)")
    print("eff: samples/s over ranks x samples/s of 1 rank in the same round (median over\n"
          "rounds; samples/s: median). AR share: allreduce + wait for the\n"
          "slowest rank, share of step time. hidden: bucketed allreduce time overlapped with\n"
          "backward. slow: the slowest rank's local work per sample over the mean rank's.\n"
          "balanced: --balance 10 (shares of the global batch follow rank speed).\n"
          "sharded: --allreduce sharded (each rank runs the optimizer on 1/P of the parameters).\n"
          "shm: --allreduce shm (sharded through a node-local shared window, no message copies);\n"
          "shm-balanced: with --balance 10.\n"
          "'independent': the ranks run alone at once (no communication), the machine's own\n"
          "ceiling for that many concurrent processes. Tthr/rank: ranks/T ranks of T BLAS\n"
          "threads (the 'ranks' column counts cores).", flush=True)
    # Every measurement of a round is taken before the next round starts, so a slow drift of
    # the machine's load spreads over all of them; each figure is the median over rounds.
    jobs = []  # (model key, mode, who, ranks)
    for m in a.models:
        for mode in a.modes:
            for variant in VARIANTS:
                if variant == "fused" or variant in a.variants:
                    jobs += [(m, mode, variant, p) for p in a.ranks if variant == "fused" or p > 1]
            T = a.threads_per_rank
            if T > 1:
                jobs += [(m, mode, f"{T}thr/rank", p) for p in a.ranks if p >= T and p % T == 0]
            if mode == "weak":
                if not a.no_torch:
                    jobs += [(m, mode, "torch", p) for p in a.ranks]
                jobs += [(m, mode, "independent", p) for p in a.ranks if p > 1]
    got = {j: [] for j in jobs}
    for rnd in range(a.rounds):
        for j in jobs:
            m, mode, who, p = j
            model, b, gb, steps = MODELS[m]
            if who == "torch":
                r = (run_torch(a, model, p, b, steps), None, None, None)
            elif who == "independent":
                r = (run_independent(a, model, p, b, steps), None, None, None)
            elif who.endswith("thr/rank"):
                T = a.threads_per_rank
                batch_args = ["--batch", str(b * T)] if mode == "weak" else ["--global-batch", str(gb)]
                r = run_nnprec(a, model, p // T, batch_args, steps, who, threads=T)
            else:
                batch_args = ["--batch", str(b)] if mode == "weak" else ["--global-batch", str(gb)]
                r = run_nnprec(a, model, p, batch_args, steps, who)
            got[j].append(r)
            print(f"[{rnd + 1}/{a.rounds}] {m} {mode} {who} {p} rank(s): {r[0]:.0f} samples/s",
                  file=sys.stderr, flush=True)

    def med(j, k):
        v = [r[k] for r in got.get(j, []) if r[k] is not None]
        return statistics.median(v) if v else None

    def eff_of(j, base_j, p):
        """Median over rounds of samples/s over p x the same round's baseline: the machine's
        drift between rounds cancels (with one round, the plain ratio)."""
        v = [r[0] / (p * b[0]) for r, b in zip(got.get(j, []), got.get(base_j, []))
             if r[0] is not None and b[0]]
        return statistics.median(v) if v else None

    print(f"{'model':<6} {'mode':<6} {'ranks':>5} {'variant':>12} {'samples/s':>10} {'eff':>6} "
          f"{'AR share':>8} {'hidden':>6} {'slow':>6} {'torch DDP':>10} {'torch eff':>9}")
    rows = []  # (model, mode, who, ranks, samples/s, efficiency, AR share, hidden)
    for m, mode, who, p in jobs:
        if who == "torch":
            continue
        sps = med((m, mode, who, p), 0)
        eff = eff_of((m, mode, who, p), (m, mode, "fused", 1), p)
        eff = float("nan") if eff is None else eff
        if who == "independent":
            rows.append((m, mode, "independent", p, sps, eff, None, None))
            print(f"{m:<6} {mode:<6} {p:>5} {'independent':>12} {sps:>10.0f} {100 * eff:>5.0f}% "
                  f"(ceiling)")
            continue
        share, hidden, spread = (med((m, mode, who, p), k) for k in (1, 2, 3))
        tsps = med((m, mode, "torch", p), 0) if who == "fused" else None
        teff = eff_of((m, mode, "torch", p), (m, mode, "torch", 1), p) if tsps else None
        rows.append((m, mode, f"nnprec {who}", p, sps, eff, share, hidden))
        if tsps is not None:
            rows.append((m, mode, "PyTorch DDP", p, tsps, teff, None, None))
        print(f"{m:<6} {mode:<6} {p:>5} {who:>12} {sps:>10.0f} {100 * eff:>5.0f}% "
              f"{100 * share:>7.1f}% "
              f"{'' if hidden is None else f'{100 * hidden:.0f}%':>6} "
              f"{f'{100 * spread:+.0f}%' if p > 1 else '':>6} "
              f"{'' if tsps is None else f'{tsps:.0f}':>10} "
              f"{'' if teff is None else f'{100 * teff:.0f}%':>9}", flush=True)

    if a.rounds > 1:
        # each variant against fused in the same round: how often it was faster, by how much
        lines = []
        for m, mode, who, p in jobs:
            if who in ("fused", "torch", "independent") or p == 1:
                continue
            d = [r[0] / f[0] - 1 for r, f in zip(got[(m, mode, who, p)], got[(m, mode, "fused", p)])
                 if r[0] and f[0]]
            if d:
                lines.append(f"{m:<6} {mode:<6} {p:>5} {who:>12}  ahead in {sum(x > 0 for x in d)} "
                             f"of {len(d)}, median {100 * statistics.median(d):+.1f}% "
                             f"({100 * min(d):+.1f}% .. {100 * max(d):+.1f}%)")
        if lines:
            print("\nsamples/s against fused in the same round:")
            print("\n".join(lines), flush=True)

    if a.csv:
        with open(a.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["model", "mode", "who", "ranks", "samples_per_s", "efficiency",
                        "allreduce_share", "hidden"])
            w.writerows(rows)
    if a.plot:
        plot(rows, a.plot)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = sorted({(r[0], r[1]) for r in rows})
    fig, axes = plt.subplots(2, len(panels), figsize=(4.5 * len(panels), 7), squeeze=False)
    for col, (m, mode) in enumerate(panels):
        whos = sorted({r[2] for r in rows if r[2].endswith("thr/rank")})
        for who, color in (("nnprec fused", "C0"), ("nnprec balanced", "C3"), ("nnprec bucketed", "C1"),
                           ("nnprec sharded", "C4"), ("nnprec shm", "C6"), ("nnprec shm-balanced", "C7"),
                           ("PyTorch DDP", "C2"), ("independent", "grey"),
                           *((w, "C5") for w in whos)):
            pts = sorted((r[3], r[4], r[5]) for r in rows if (r[0], r[1], r[2]) == (m, mode, who))
            if not pts:
                continue
            ranks = [x[0] for x in pts]
            # the variants have no 1-rank runs of their own (measured against fused's)
            style = dict(marker="s", ls="none") if who in ("nnprec bucketed", "nnprec balanced",
                                                           "nnprec sharded", "nnprec shm",
                                                           "nnprec shm-balanced") \
                else dict(marker="o")
            if who == "independent":  # no communication: the machine's ceiling
                style = dict(marker="x", ls="--")
            axes[0][col].plot(ranks, [x[1] for x in pts], color=color, label=who, **style)
            axes[1][col].plot(ranks, [100 * x[2] for x in pts], color=color, label=who, **style)
        axes[1][col].set_ylim(0, 115)
        axes[0][col].set_title(f"{m}, {mode} scaling")
        axes[0][col].set_ylabel("samples/s")
        axes[1][col].set_ylabel("efficiency (%)")
        axes[1][col].axhline(100, color="grey", lw=0.8, ls=":")
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xlabel("ranks")
            ax.set_xticks(sorted({r[3] for r in rows}))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, subprocess.CalledProcessError) as e:
        die(why(e))
