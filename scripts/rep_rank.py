#!/usr/bin/python3
"""How many directions a dense relu network's layers use: for each checkpoint of a run, the
participation ratio of every hidden layer's input over Fashion-MNIST test images.

  scripts/rep_rank.py RUN [RUN ...] [--images N] [--csv FILE] [--out FIG.png [--label T ...]]

RUN is an nnprec --out folder of an `mlp:...` model (relu) with checkpoints
(ckpt-STEP.h5, e.g. from --checkpoint-every 10 --keep 0). For the input a_l of every layer
l >= 2, over the first N test images (normalized with the training set's mean and std that the
checkpoint records, as nnprec does):

  between = mean over units of the between-sample variance / mean of a_l^2
            (0: every image gives the same vector: the input carries nothing)
  PR      = (sum of the covariance's eigenvalues)^2 / sum of their squares
            (the participation ratio: about how many directions the images' vectors
            spread over; 1 when they all lie on one line)

Printed as a table per run (one row per checkpoint), and plotted (PR of every layer
against the step, one panel per run) with --out. docs/preconditioner.md section 6 uses it.
"""
import glob
import gzip
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clitools import ArgParser, die, why, positive_int, image_path, save_figure  # noqa: E402

PROG = "rep_rank.py"
DATA = "/usr/share/datasets/fashion-mnist"


def images(path, n):
    import numpy as np
    try:
        with gzip.open(path) as f:
            raw = f.read()
    except OSError as e:
        die(f"cannot read {path}: {why(e)} (Debian's dataset-fashion-mnist)")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 784)[:n].astype(np.float64)


def layers_of(h5):
    """[(W, b)] of fc1, fc2, ... in order; dies on anything that is not a dense stack."""
    names = sorted((k for k in h5.keys() if re.fullmatch(r"fc\d+", k)), key=lambda k: int(k[2:]))
    other = [k for k in h5.keys() if k not in names and k not in ("optimizer", "precond", "meta")]
    if not names or other:
        die(f"{h5.filename}: not a dense network (groups {', '.join(h5.keys())}); "
            "rep_rank.py reads mlp:... checkpoints")
    return [(h5[k]["weight"][:].astype("float64"), h5[k]["bias"][:].astype("float64"))
            for k in names]


def measure(X, layers):
    import numpy as np
    a, rows = X, []
    for i, (W, b) in enumerate(layers):
        if a.shape[1] != W.shape[1]:
            die(f"layer fc{i + 1} expects {W.shape[1]} inputs, has {a.shape[1]}")
        if i > 0:
            tot = float((a ** 2).mean())
            c = np.cov(a.T)
            ev = np.clip(np.linalg.eigvalsh(c), 0, None)
            betw = float(np.trace(c) * (len(a) - 1) / len(a) / a.shape[1]) / tot if tot else 0.0
            pr = float(ev.sum() ** 2 / (ev ** 2).sum()) if (ev ** 2).sum() > 0 else 0.0
            rows.append((betw, pr))
        z = a @ W.T + b
        a = np.maximum(z, 0) if i + 1 < len(layers) else z
    return rows


def main():
    ap = ArgParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN")
    ap.add_argument("--images", type=positive_int, default=1000, help="test images [1000]")
    ap.add_argument("--csv", help="also write the table here (run,step,layer,between,pr)")
    ap.add_argument("--out", metavar="PNG", help="also plot PR against the step, a panel per run")
    ap.add_argument("--label", action="append", default=[],
                    help="a panel's title, once per RUN in order [the folder's name]")
    a = ap.parse_args()
    if a.label and len(a.label) != len(a.runs):
        ap.error(f"--label given {len(a.label)} times for {len(a.runs)} runs")
    if a.out is not None:
        image_path(ap, "--out", a.out)
    try:
        import h5py
        import numpy as np
    except ImportError as e:
        die(f"{why(e)}: run it with Debian's /usr/bin/python3 (python3-h5py, python3-numpy)")
    raw = images(os.path.join(DATA, "t10k-images-idx3-ubyte.gz"), a.images) / 255.0
    table = []
    for run in a.runs:
        cks = sorted(glob.glob(os.path.join(run, "ckpt-*.h5")))
        if not cks:
            die(f"{run}: no checkpoints (ckpt-STEP.h5); train with --checkpoint-every N --keep 0")
        print(f"== {run}: per layer input from fc2 on, between / PR")
        for ck in cks:
            step = int(re.search(r"ckpt-(\d+)\.h5$", ck).group(1))
            try:
                with h5py.File(ck, "r") as h:
                    # the training set's normalization, as the run used it
                    X = (raw - float(h.attrs["norm_mean"])) / float(h.attrs["norm_std"])
                    rows = measure(X, layers_of(h))
            except KeyError as e:
                die(f"{ck}: no {why(e)} attribute: not an nnprec checkpoint")
            except OSError as e:
                die(f"cannot read {ck}: {why(e)}")
            for li, (betw, pr) in enumerate(rows):
                table.append((run, step, li + 2, betw, pr))
            print(f"{step:6d}  between " + " ".join(f"{s:.2f}" for s, _ in rows)
                  + "  PR " + " ".join(f"{p:.1f}" for _, p in rows))
    if a.csv:
        with open(a.csv, "w") as f:
            f.write("run,step,layer,between,pr\n")
            for r in table:
                f.write("%s,%d,%d,%.6g,%.6g\n" % r)
    if a.out:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, len(a.runs), figsize=(4.2 * len(a.runs), 3.4),
                                 sharey=True, squeeze=False)
        cmap = plt.get_cmap("viridis")
        for i, (ax, run) in enumerate(zip(axes[0], a.runs)):
            mine = [r for r in table if r[0] == run]
            nl = max(r[2] for r in mine)
            for li in range(2, nl + 1):
                pts = sorted((r[1], r[4]) for r in mine if r[2] == li)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=cmap((li - 2) / max(1, nl - 2)),
                        label=f"fc{li} input" if li in (2, nl // 2 + 1, nl) else None)
            ax.set_yscale("log")
            ax.set_title(a.label[i] if a.label else os.path.basename(os.path.normpath(run)),
                         fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("participation ratio of the layer's input")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, a.out, 110)


if __name__ == "__main__":
    main()
