#!/usr/bin/python3
"""Tables and a plot from a scaling study (slurm/scaling.sbatch): default vs preconditioned
training at every rank count.

It reads RESULTS/train/CONFIG-npP-sSEED/{train,eval}.csv and prints, as Markdown:
  1. per config and rank count: seeds finished, final test accuracy, wall seconds, samples/s
     and the speed-up of the wall time over the same config's smallest rank count;
  2. time to a target test accuracy (first evaluation at or above it), and how many times
     faster than `default` at the same rank count each config got there: the study's
     question, whether the preconditioner trains faster and stays ahead at scale.
With --plot: time to target and samples/s against ranks, and test accuracy against wall
time at the smallest and largest rank count.

  scripts/scaling_report.py RESULTS [--target 85] [--plot PNG]

Wall seconds are eval.csv's wall_s: training time since the run first started (across
requeues), evaluations included. Means are over the seeds that finished (or, for time to
target, that reached it); ± is the sample standard deviation.
"""
import argparse
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from experiments import mean_std  # noqa: E402

from clitools import ArgParser, die, read_numeric_csv

PROG = "scaling_report.py"
RUN = re.compile(r"^(?P<config>.+)-np(?P<ranks>\d+)-s(?P<seed>\d+)$")


def read_csv(path, need=()):
    """A run's CSV (read_numeric_csv), [] when it is missing."""
    try:
        return read_numeric_csv(path, need)
    except FileNotFoundError:
        return []


def load(results):
    """{(config, ranks): [run, ...]}, run = dict(seed, done, eval rows, train rows)."""
    root = os.path.join(results, "train")
    if not os.path.isdir(root):
        die(f"{root} is not a directory (give the RESULTS folder of slurm/scaling.sbatch)")
    runs = {}
    for name in sorted(os.listdir(root)):
        m = RUN.match(name)
        if not m:
            continue
        d = os.path.join(root, name)
        run = dict(seed=int(m["seed"]), done=os.path.exists(os.path.join(d, "done")),
                   ev=read_csv(os.path.join(d, "eval.csv"), ["epoch", "test_acc", "wall_s"]),
                   tr=read_csv(os.path.join(d, "train.csv"), ["samples_per_s"]))
        runs.setdefault((m["config"], int(m["ranks"])), []).append(run)
    if not runs:
        die(f"no CONFIG-npP-sSEED runs under {root}")
    return runs


def time_to(ev, target):
    """(wall_s, epoch) of the first evaluation at or above target %, or None."""
    hit = next((r for r in ev if 100 * r["test_acc"] >= target), None)
    return (hit["wall_s"], hit["epoch"]) if hit else None


def throughput(run):
    """Median samples/s of a run's logged intervals after the first (warm-up), or None."""
    rows = run["tr"][1:] or run["tr"]
    return statistics.median(x["samples_per_s"] for x in rows) if rows else None


def fmt(m, s, f):
    return "–" if m is None else f"{m:{f}} ± {s:{f}}"


def report(runs, target):
    configs = sorted({c for c, _ in runs}, key=lambda c: (c != "default", c))
    ranks = sorted({p for _, p in runs})
    print("## Runs\n")
    print("| config | ranks | finished | final test acc (%) | wall s | samples/s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    wall = {}
    for c in configs:
        for p in ranks:
            rs = runs.get((c, p))
            if not rs:
                continue
            done = [r for r in rs if r["done"] and r["ev"]]
            acc = mean_std([100 * r["ev"][-1]["test_acc"] for r in done])
            w = mean_std([r["ev"][-1]["wall_s"] for r in done])
            sps = [throughput(r) for r in done if r["tr"]]
            wall[c, p] = w[0]
            base = next((wall[c, q] for q in ranks if wall.get((c, q))), None)
            up = f"{base / w[0]:.2f}×" if base and w[0] else "–"
            print(f"| {c} | {p} | {len(done)}/{len(rs)} | {fmt(*acc, '.2f')} | {fmt(*w, '.1f')} "
                  f"| {f'{statistics.mean(sps):.0f}' if sps else '–'} | {up} |")

    print(f"\n## Time to {target:g}% test accuracy\n")
    print("(first evaluation at or above it; mean ± std over the seeds that reach it; "
          "vs default: default's mean time over this config's at the same rank count)\n")
    print("| config | ranks | reached | wall s | epochs | vs default |")
    print("|---|---|---|---|---|---|")
    tta = {}
    for c in configs:
        for p in ranks:
            rs = runs.get((c, p))
            if not rs:
                continue
            hits = [h for h in (time_to(r["ev"], target) for r in rs) if h]
            w = mean_std([h[0] for h in hits])
            e = mean_std([h[1] for h in hits])
            tta[c, p] = w
            d = tta.get(("default", p), (None, None))[0]
            vs = f"{d / w[0]:.2f}×" if c != "default" and d and w[0] else "–"
            print(f"| {c} | {p} | {len(hits)}/{len(rs)} | {fmt(*w, '.1f')} | {fmt(*e, '.2f')} "
                  f"| {vs} |")
    return configs, ranks, tta


def plot(runs, configs, ranks, tta, target, path):
    try:
        import matplotlib
    except ImportError:
        print(f"\nplot skipped: {sys.executable} cannot import matplotlib (Debian's "
              "/usr/bin/python3 can, with python3-matplotlib)", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.5))
    for i, c in enumerate(configs):
        color = f"C{i}"
        pts = [(p, *tta[c, p]) for p in ranks if tta.get((c, p), (None,))[0] is not None]
        if pts:
            ax[0].errorbar([x[0] for x in pts], [x[1] for x in pts], yerr=[x[2] for x in pts],
                           marker="o", capsize=3, color=color, label=c)
        sps = []
        for p in ranks:
            v = [throughput(r) for r in runs.get((c, p), []) if r["tr"]]
            if v:
                sps.append((p, statistics.mean(v)))
        if sps:
            ax[1].plot([x[0] for x in sps], [x[1] for x in sps], marker="o", color=color, label=c)
        for p, ls in ((ranks[0], "-"), (ranks[-1], "--")):
            for j, r in enumerate(runs.get((c, p), [])):
                if r["ev"]:
                    ax[2].plot([x["wall_s"] for x in r["ev"]], [100 * x["test_acc"] for x in r["ev"]],
                               ls=ls, color=color, alpha=0.7,
                               label=f"{c}, {p} rank{'s' if p > 1 else ''}" if j == 0 else None)
            if ranks[0] == ranks[-1]:
                break
    ax[0].set_title(f"wall time to {target:g}% test accuracy")
    ax[0].set_ylabel("seconds")
    ax[1].set_title("throughput")
    ax[1].set_ylabel("samples/s")
    for a in ax[:2]:
        a.set_xscale("log", base=2)
        a.set_xticks(ranks)
        a.set_xticklabels([str(p) for p in ranks])
        a.set_xlabel("ranks")
    ax[2].set_title("test accuracy against wall time")
    ax[2].set_xlabel("wall seconds")
    ax[2].set_ylabel("test accuracy (%)")
    ax[2].axhline(target, color="grey", lw=0.8, ls=":")
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"\nplot: {path}")


def main():
    ap = ArgParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="the RESULTS folder of slurm/scaling.sbatch")
    ap.add_argument("--target", type=float, default=85.0, help="test accuracy (%%) [85]")
    ap.add_argument("--plot", help="write the figure to this PNG")
    a = ap.parse_args()
    if not 0 < a.target <= 100:
        die(f"--target must be in (0, 100], got {a.target:g}")
    if a.plot is not None:  # check before the report, not after it
        if not a.plot:
            ap.error("--plot: the file name is empty")
        try:
            from matplotlib.backend_bases import FigureCanvasBase
            kinds = FigureCanvasBase.get_supported_filetypes()
        except ImportError:  # plot() says it skips the figure
            kinds = None
        if kinds and os.path.splitext(a.plot)[1][1:].lower() not in kinds:
            ap.error(f"--plot: '{a.plot}' does not end in an image format matplotlib writes "
                     f"({', '.join(sorted(kinds))})")
        if os.path.isdir(a.plot):
            die(f"--plot: {a.plot} is a directory")
        if not os.path.isdir(os.path.dirname(a.plot) or "."):
            die(f"--plot: {os.path.dirname(a.plot)}: no such directory")
    runs = load(a.results)
    configs, ranks, tta = report(runs, a.target)
    if a.plot:
        plot(runs, configs, ranks, tta, a.target, a.plot)


if __name__ == "__main__":
    try:
        main()
    except OSError as e:  # e.g. an unreadable results folder
        die(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else e)
