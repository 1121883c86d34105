#!/usr/bin/python3
"""The gradient noise scale of nnprec runs: RUN_DIR/train.csv of `nnprec train --noise-scale`.

Two panels against the epoch: the noise scale B_simple = tr(Sigma)/|G|^2 (log axis), with
each run's global batch as a dashed line when --batch is given; and its two smoothed
estimates, |G|^2 and tr(Sigma) (log axis; an average of |G|^2 that is not positive is left
out). It prints, per run, the median noise scale over each epoch: the global batch beyond
which a larger batch no longer saves steps in proportion (McCandlish et al. 2018).
docs/noise-scale-and-validation.md explains the estimator.

  scripts/plot_noise.py results/noise-lenet --batch 64 --out docs/figures/noise-lenet.png
"""
import math
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from clitools import ArgParser, die, positive_int, read_numeric_csv, save_figure, add_figure_args, figure_args  # noqa: E402

PROG = "plot_noise.py"
COLUMNS = ("step", "epoch", "g2", "trsigma", "noise_scale")


def read_run(run):
    path = run if run.endswith(".csv") else os.path.join(run, "train.csv")
    try:
        rows = read_numeric_csv(path, COLUMNS)
    except FileNotFoundError:
        die("%s not found (train with --noise-scale --out DIR)" % path)
    if not rows:
        die("%s has no rows" % path)
    return rows


def finite(v):
    return math.isfinite(v)


def main():
    ap = ArgParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR",
                    help="run directory holding train.csv (or the CSV itself)")
    add_figure_args(ap)
    ap.add_argument("--batch", type=positive_int, action="append",
                    help="global batch of each run (once per run, in order): drawn as a line")
    a = ap.parse_args()
    figure_args(ap, a)
    if a.batch and len(a.batch) != len(a.runs):
        ap.error("--batch: give one per run (%d runs, %d batches)" % (len(a.runs), len(a.batch)))

    runs = [(r.rstrip("/"), read_run(r)) for r in a.runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    drawn = 0
    for k, (run, rows) in enumerate(runs):
        label = os.path.basename(run) or run
        color = "C%d" % k
        pts = [(r["epoch"], r["noise_scale"]) for r in rows
               if finite(r["noise_scale"]) and r["noise_scale"] > 0]
        if pts:
            ax1.plot(*zip(*pts), color=color, label=label)
            drawn += 1
        if a.batch:
            ax1.axhline(a.batch[k], color=color, ls="--", lw=0.8,
                        label="%s: global batch %d" % (label, a.batch[k]))
        g2 = [(r["epoch"], r["g2"]) for r in rows if finite(r["g2"]) and r["g2"] > 0]
        tr = [(r["epoch"], r["trsigma"]) for r in rows
              if finite(r["trsigma"]) and r["trsigma"] > 0]
        if g2:
            ax2.plot(*zip(*g2), color=color, label="|G|² " + label)
        if tr:
            ax2.plot(*zip(*tr), color=color, ls=":", label="tr(Σ) " + label)
        # the median noise scale over each epoch
        by_epoch = {}
        for e, v in pts:
            by_epoch.setdefault(max(int(math.ceil(e)) - 1, 0), []).append(v)
        med = ["epoch %d: %.0f" % (e + 1, sorted(v)[len(v) // 2]) for e, v in sorted(by_epoch.items())]
        print("%s: %d rows, median noise scale %s" % (run, len(rows), ", ".join(med) or "none"))
    if not drawn:
        die("no positive noise scale to plot (train with --noise-scale)")
    ax1.set_yscale("log")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("noise scale B_simple = tr(Σ)/|G|²")
    ax1.legend(fontsize=7)
    ax2.set_yscale("log")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("moving averages")
    ax2.legend(fontsize=7)
    save_figure(fig, a.out, a.dpi, a.title)


if __name__ == "__main__":
    main()
