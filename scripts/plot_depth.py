#!/usr/bin/python3
"""Activation and gradient std through depth for every initializer (docs/initialization.md).

Runs `nnprec stats --depth D --width W --act ACT --init INIT --csv ...` for each initializer
and each activation (relu and tanh by default), then `nnprec stats --collapse` per
activation, and draws one figure per activation: activation std (after each layer's
activation) and weight-gradient std against the layer index, log y axis, one line per
initializer. Writes OUT/depth_ACT.png, the CSVs under OUT/csv/, and prints the table of
docs/initialization.md (std at chosen layers, collapse depth).

usage: scripts/plot_depth.py [--nnprec build/nnprec] [--out docs/figures] [--depth 50]
                             [--width 256] [--batch 256] [--seed 1] [--acts relu,tanh]
                             [--inits LIST] [--layers 1,10,25,50]
"""
import csv
import math
import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from clitools import ArgParser, die, positive_int

PROG = "plot_depth.py"
DEFAULT_INITS = ("kaiming-normal,xavier-normal,normal:0.01,uniform:0.01,orthogonal,pytorch,"
                 "constant:0.01,seed")
# values at or below this (0 after underflow included) are drawn at it on the log axis
FLOOR = 1e-30


def int_list(s):
    """argparse type: a comma-separated list of positive integers."""
    return [positive_int(t) for t in s.split(",") if t]


def run(cmd):
    print("+ " + " ".join(cmd), file=sys.stderr)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or [""])[-1]  # nnprec's own error line
        die("command failed (exit %d): %s: %s" % (r.returncode, " ".join(cmd), last))
    return r.stdout


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def num(s):
    try:
        v = float(s)
    except ValueError:
        return float("nan")
    return v


def main():
    ap = ArgParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nnprec", default="build/nnprec")
    ap.add_argument("--out", default="docs/figures")
    ap.add_argument("--depth", type=positive_int, default=50)
    ap.add_argument("--width", type=positive_int, default=256)
    ap.add_argument("--batch", type=positive_int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--acts", default="relu,tanh")
    ap.add_argument("--inits", default=DEFAULT_INITS)
    ap.add_argument("--layers", type=int_list, default="1,10,25,50",
                    help="layers whose activation std goes into the printed table")
    a = ap.parse_args()
    inits = [s for s in a.inits.split(",") if s]
    acts = [s for s in a.acts.split(",") if s]
    layers = a.layers
    for opt, v in (("--inits", inits), ("--acts", acts), ("--layers", layers)):
        if not v:
            ap.error("%s: the list is empty" % opt)
    if any(k < 1 or k > a.depth for k in layers):
        ap.error("--layers must lie in [1, %d]" % a.depth)
    if not os.access(a.nnprec, os.X_OK):
        die("%s is not an executable (build first, or give --nnprec)" % a.nnprec)
    csv_dir = os.path.join(a.out, "csv")
    os.makedirs(csv_dir, exist_ok=True)
    common = ["--depth", str(a.depth), "--width", str(a.width), "--batch", str(a.batch),
              "--seed", str(a.seed)]

    for act in acts:
        data = {}
        for init in inits:
            path = os.path.join(csv_dir, "%s_%s.csv" % (act, init.replace(":", "_")))
            run([a.nnprec, "stats", "--init", init, "--act", act, "--csv", path] + common)
            data[init] = read_csv(path)
        cpath = os.path.join(csv_dir, "%s_collapse.csv" % act)
        run([a.nnprec, "stats", "--collapse", "--inits", ",".join(inits), "--act", act,
             "--csv", cpath] + common)
        collapse = {r["init"]: r["collapse"] for r in read_csv(cpath)}

        fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
        cmap = plt.get_cmap("tab10")
        for i, init in enumerate(inits):
            rows = data[init]
            x = [int(r["layer"]) for r in rows]
            for ax, col in zip(axes, ("post_std", "wgrad_std")):
                y = [num(r[col]) for r in rows]
                y = [v if (math.isfinite(v) and v > FLOOR) else FLOOR for v in y]
                label = init
                if ax is axes[0] and collapse.get(init, "none") != "none":
                    label += " (collapse at %s)" % collapse[init]
                # dashed every other line: xavier-normal equals kaiming-normal on square
                # layers and would hide under it
                ax.plot(x, y, label=label, color=cmap(i % 10),
                        linestyle="--" if i % 2 else "-", linewidth=1.6)
        axes[0].set_title("activation std after each layer")
        axes[1].set_title("weight-gradient std (standard normal loss gradient)")
        for ax in axes:
            ax.set_yscale("log")
            ax.set_xlabel("layer")
            ax.grid(True, which="major", alpha=0.3)
            ax.set_xlim(1, a.depth)
        axes[0].axhline(1e-6, color="gray", linestyle=":", linewidth=1)
        axes[0].set_ylabel("std (input std = 1)")
        axes[0].legend(fontsize=8, loc="lower left")
        fig.suptitle("%d-layer MLP, width %d, %s, batch %d of standard normal input, seed %d\n"
                     "(values at or below %g, down to 0 after float underflow, are drawn at "
                     "%g; dotted: collapse threshold 1e-6)" % (a.depth, a.width, act, a.batch, a.seed, FLOOR, FLOOR))
        fig.tight_layout()
        png = os.path.join(a.out, "depth_%s.png" % act)
        fig.savefig(png, dpi=110)
        plt.close(fig)
        print("wrote %s" % png, file=sys.stderr)

        # the table of docs/initialization.md
        print("\n%s: activation std after layer k (input std 1), collapse layer" % act)
        head = "| init | " + " | ".join("layer %d" % k for k in layers) + " | collapse |"
        print(head)
        print("|" + "---|" * (len(layers) + 2))
        for init in inits:
            rows = data[init]
            vals = ["%.3g" % num(rows[k - 1]["post_std"]) for k in layers]
            print("| %s | %s | %s |" % (init, " | ".join(vals), collapse.get(init, "?")))


if __name__ == "__main__":
    try:
        main()
    except OSError as e:  # e.g. an --out that is a file
        die("%s: %s" % (e.filename, e.strerror) if e.filename and e.strerror else e)
    except KeyError as e:
        die("nnprec's CSV lacks the column %s (a different nnprec version?)" % e)
