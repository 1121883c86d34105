#!/usr/bin/python3
"""Per-layer diagnostics of nnprec runs: heatmaps and lines from RUN_DIR/layers.csv.

`nnprec train --stats-every N --out RUN_DIR` writes RUN_DIR/layers.csv, one row per
trainable tensor every N steps (columns step, tensor, name, w_mean, w_std, act_mean,
act_std, grad_std, grad_std_precond, factor; see docs/layers.md). This script draws, for
every (run, quantity) pair, one heatmap of log10(quantity) over tensor (y, first layer at
the bottom) x step (x), and below it the same data as one line per tensor against the step
(log y axis). All heatmaps share one color scale and all line plots one y range, so panels
side by side compare directly (before vs after preconditioning, default vs static, ...).

With one run and no --quantity, the panels are grad_std and grad_std_precond: the gradient
as allreduced, and after the preconditioner multiplied it by the factor P_j. With several
runs the default quantity is grad_std_precond (the gradient the optimizer actually gets;
equal to grad_std for --precond none).

It also prints, per run, at the first logged step (and the last), the ratio of the largest
to the smallest weight-gradient std across layers, before and after preconditioning, and
the ratio output layer / first layer: how vanishing gradients show, and their equalization.

Examples:
  scripts/plot_layers.py results/deep-mlp/default-s1 --out grads.png
  scripts/plot_layers.py results/deep-mlp/default-s1 results/deep-mlp/static-s1 \\
      --quantity grad_std --quantity grad_std_precond --weights-only --out cmp.png
"""
import argparse
import csv
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from clitools import ArgParser, die, why, positive_int, save_figure, image_path

PROG = "plot_layers.py"
MAX_PIXELS = 2 ** 27  # --dpi bound: 512 MiB of RGBA (and matplotlib's own 2^16 per side)
QUANTITIES = ("grad_std", "grad_std_precond", "w_std", "act_std", "factor",
              "w_mean", "act_mean")
LABELS = {
    "grad_std": "gradient std (before preconditioning)",
    "grad_std_precond": "gradient std (after preconditioning)",
    "w_std": "weight std",
    "act_std": "input-activation std",
    "factor": "preconditioner factor P_j",
    "w_mean": "|weight mean|",
    "act_mean": "|input-activation mean|",
}


def read_run(run_dir):
    """Return (steps, names, {column: array[tensor, step]}) for RUN_DIR/layers.csv."""
    path = run_dir if run_dir.endswith(".csv") else os.path.join(run_dir, "layers.csv")
    if not os.path.exists(path):
        die("%s not found (train with --stats-every N --out DIR)" % path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        die(why(e) if isinstance(e, OSError) else "%s: %s" % (path, e))
    if not rows:
        die("%s has no rows" % path)
    missing = [c for c in ("step", "tensor", "name") + QUANTITIES if c not in rows[0]]
    if missing:
        die("%s lacks column(s) %s" % (path, ", ".join(missing)))
    for k, r in enumerate(rows):
        try:
            r["step"], r["tensor"] = int(r["step"]), int(r["tensor"])
            if r["name"] is None:
                raise ValueError("no name")
        except (TypeError, ValueError):
            if k + 1 < len(rows):
                die("%s, row %d: no integer step and tensor and a name" % (path, k + 1))
            rows.pop()  # the last row, still being written
    if not rows:
        die("%s has no complete rows" % path)
    steps = sorted({int(r["step"]) for r in rows})
    tensors = sorted({int(r["tensor"]) for r in rows})
    names = {}
    for r in rows:
        names.setdefault(int(r["tensor"]), r["name"])
    si = {s: i for i, s in enumerate(steps)}
    ti = {t: i for i, t in enumerate(tensors)}
    data = {q: np.full((len(tensors), len(steps)), np.nan) for q in QUANTITIES}
    for r in rows:
        i, j = ti[int(r["tensor"])], si[int(r["step"])]
        for q in QUANTITIES:
            try:
                data[q][i, j] = float(r[q])
            except (TypeError, ValueError):  # empty field or a row still being written
                pass
    return np.array(steps), [names[t] for t in tensors], data


def is_weight(name):
    return not name.endswith("bias")


def log10_pos(a):
    """log10(|a|) with 0 and non-finite values masked (drawn grey)."""
    a = np.abs(np.asarray(a, dtype=float))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log10(a)
    return np.ma.masked_invalid(out)


def edges(x):
    """Cell edges for the sample steps x: each cell spans [x_i, x_i+1), the last one as wide
    as the one before it (so the x axis starts at the first logged step)."""
    x = np.asarray(x, dtype=float)
    last = x[-1] - x[-2] if len(x) > 1 else 1.0
    return np.concatenate([x, [x[-1] + last]])


def spread(values, names):
    """(max/min, argmax name, argmin name, last/first) over finite positive values."""
    ok = [(v, n) for v, n in zip(values, names) if math.isfinite(v) and v > 0]
    if not ok:
        return None
    hi = max(ok)
    lo = min(ok)
    first, last = values[0], values[-1]
    lf = last / first if first > 0 and math.isfinite(first) and math.isfinite(last) else float("nan")
    return hi[0] / lo[0], hi, lo, lf


def summary(run, steps, names, data):
    w = [i for i, n in enumerate(names) if is_weight(n)]
    wn = [names[i] for i in w]
    if not wn:
        die("%s: no weight tensors (only %s)" % (run, ", ".join(names)))
    print("%s: %d weight tensors (%s ... %s), %d logged steps (%d..%d)" %
          (run, len(w), wn[0], wn[-1], len(steps), steps[0], steps[-1]))
    # the last step with every weight tensor logged (a run still writing may lack some)
    full = [j for j in range(len(steps)) if np.isfinite(data["grad_std"][w, j]).all()]
    cols = [0] + ([full[-1]] if full and full[-1] > 0 else [])
    for j in cols:
        for q in ("grad_std", "grad_std_precond"):
            s = spread([data[q][i, j] for i in w], wn)
            if s is None:
                print("  step %-6d %-16s  no finite positive values" % (steps[j], q))
                continue
            ratio, hi, lo, lf = s
            print("  step %-6d %-16s  max/min %9.4g   max %.3g (%s)  min %.3g (%s)   "
                  "output/first %.4g" % (steps[j], q, ratio, hi[0], hi[1], lo[0], lo[1], lf))


def main():
    ap = ArgParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR",
                    help="run directory holding layers.csv (or the CSV itself)")
    ap.add_argument("--out", required=True, metavar="PNG", help="output image")
    ap.add_argument("--quantity", action="append", choices=QUANTITIES,
                    help="column to plot (repeat for several; default: grad_std and "
                         "grad_std_precond for one run, grad_std_precond for several)")
    ap.add_argument("--weights-only", action="store_true", help="leave out bias tensors")
    ap.add_argument("--title", help="figure title (default: none)")
    ap.add_argument("--dpi", type=positive_int, default=110,
                    help="resolution of the PNG (default 110)")
    a = ap.parse_args()
    image_path(ap, "--out", a.out)

    runs = [(r.rstrip("/"),) + read_run(r) for r in a.runs]
    quantities = a.quantity or (["grad_std", "grad_std_precond"] if len(runs) == 1
                                else ["grad_std_precond"])
    for run, steps, names, data in runs:
        summary(run, steps, names, data)

    panels = []  # (run label, steps, names, log10 matrix, quantity)
    for run, steps, names, data in runs:
        keep = [i for i, n in enumerate(names) if is_weight(n) or not a.weights_only]
        no_precond = np.all(data["factor"][np.isfinite(data["factor"])] == 1.0)
        for q in quantities:
            label = LABELS[q]
            if q == "grad_std_precond" and no_precond:
                label = "gradient std (no preconditioner: factor 1)"
            panels.append((run, steps, [names[i] for i in keep], log10_pos(data[q][keep]), q,
                           label))

    finite = np.concatenate([p[3].compressed() for p in panels])
    if finite.size == 0:
        die("nothing finite and positive to plot")
    vmin, vmax = np.floor(finite.min() * 2) / 2, np.ceil(finite.max() * 2) / 2
    if vmax - vmin < 0.5:
        vmin, vmax = vmin - 0.25, vmax + 0.25

    n = len(panels)
    ntens = max(len(p[2]) for p in panels)
    heat_h = max(2.6, 0.17 * ntens + 1.0)
    width, height = (4.4 * n + 1.8) * a.dpi, (heat_h + 3.4) * a.dpi
    if max(width, height) >= 2 ** 16 or width * height > MAX_PIXELS:
        ap.error("--dpi %d makes a %.0fx%.0f-pixel figure, too large (at most %d pixels)"
                 % (a.dpi, width, height, MAX_PIXELS))
    fig = plt.figure(figsize=(4.4 * n + 1.8, heat_h + 3.4), constrained_layout=True)
    gs = fig.add_gridspec(2, n + 1, height_ratios=[heat_h, 3.0], width_ratios=[1.0] * n + [0.38])
    axes = np.array([[fig.add_subplot(gs[r, k]) for k in range(n)] for r in range(2)])
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("0.7")
    mesh = None
    handles = []
    for k, (run, steps, names, z, q, label) in enumerate(panels):
        ax = axes[0, k]
        mesh = ax.pcolormesh(edges(steps), np.arange(len(names) + 1) - 0.5, z, cmap=cmap,
                             vmin=vmin, vmax=vmax, shading="flat")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names if k == 0 or panels[k - 1][2] != names else [], fontsize=7)
        ax.set_ylim(-0.5, len(names) - 0.5)
        ax.set_xlabel("step")
        if k == 0:
            ax.set_ylabel("tensor (input layer at bottom)")
        ax.set_title("%s\n%s" % (run, label), fontsize=9)

        ax = axes[1, k]
        colors = plt.get_cmap("plasma")(np.linspace(0, 0.9, len(names)))
        handles = []
        for i, name in enumerate(names):
            y = np.ma.filled(10.0 ** z[i].astype(float), np.nan)
            handles += ax.plot(steps, y, color=colors[i], lw=1.3 if is_weight(name) else 0.8,
                               ls="-" if is_weight(name) else ":", label=name)
        ax.set_yscale("log")
        ax.set_ylim(10 ** vmin, 10 ** vmax)
        ax.set_xlabel("step")
        if k == 0 or panels[k - 1][4] != q:
            ax.set_ylabel(q)
        ax.grid(True, which="major", alpha=0.3)
        ax.set_title("%s, one line per tensor" % q, fontsize=9)
    cell = fig.add_subplot(gs[0, n])
    cell.axis("off")
    cax = cell.inset_axes([0.0, 0.0, 0.16, 1.0])
    qs = sorted({p[4] for p in panels}, key=quantities.index)
    fig.colorbar(mesh, cax=cax, label="log10(%s)" % ", ".join(qs))
    cell = fig.add_subplot(gs[1, n])
    cell.axis("off")
    names = panels[-1][2]
    cell.legend(handles=handles, fontsize=6.5, ncol=1 if len(names) <= 14 else 2,
                loc="upper left", borderaxespad=0, frameon=False,
                title="first layer → output", title_fontsize=7)
    save_figure(fig, a.out, a.dpi, a.title)


if __name__ == "__main__":
    main()
