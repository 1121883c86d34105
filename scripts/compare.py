#!/usr/bin/python3
"""Compare nnprec runs: test accuracy and training loss against step, epoch and wall time.

    scripts/compare.py results/demo results/demo-precond
    scripts/compare.py results/seed-precond/*-s* --target 85 --plot cmp.png

Each RUN_DIR is a run's --out folder (train.csv, eval.csv). Runs are grouped by their
configuration, read from the run's options.txt (every option nnprec used; older folders:
the command in command.txt, else the folder name without a trailing -sSEED): runs that
differ only in --seed (or in options that do not change the training, such as --out,
--log-every or --threads) form one group, shown as the mean ± sample std over its runs.
Each group's label names its --init and --precond, and every other option that differs
between the groups.

Prints a Markdown table: final and best test accuracy, and the steps, epochs and wall
seconds (since the run first started) to the first evaluation at or above --target; and
writes one PNG (test accuracy and training loss against step, epoch and wall time), by
default compare.png next to the first run's folder.
"""
import argparse
import math
import os
import re
import shlex

from clitools import ArgParser, die, why, read_numeric_csv, image_path

PROG = "compare.py"

# Options that do not change what is trained (only what is logged, where files go, how
# the work is spread): runs that differ only in these belong to one configuration, as do
# runs that differ only in --seed.
NOT_CONFIG = {"seed", "out", "resume", "stop-file", "quiet", "threads", "log-every",
              "eval-every", "test-every", "stats-every", "check-replicas", "checkpoint-every", "keep",
              "noise-scale", "noise-ema", "allreduce", "bucket-mb", "balance", "config"}
# Named in every label, with nnprec's defaults for folders that only have a command.txt.
ALWAYS = {"init": "pytorch", "precond": "none"}


def parse_args_list(tokens):
    """{name: value} of '--name value' / '--name=value' / '--flag' tokens (a command line)."""
    opts, i = {}, 0
    while i < len(tokens):
        t = tokens[i]
        i += 1
        if not t.startswith("--"):
            continue
        name, eq, value = t[2:].partition("=")
        if not eq:
            if i < len(tokens) and not tokens[i].startswith("--"):
                value = tokens[i]
                i += 1
            elif name.startswith("no-"):
                name, value = name[3:], "0"
            else:
                value = "1"
        opts[name] = value
    return opts


def read_options(d):
    """(options dict, where from) of run folder d: options.txt ('--name value' lines, '#'
    comments, '# ranks: N'), else command.txt, else None."""
    path = os.path.join(d, "options.txt")
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = None
    except (OSError, UnicodeDecodeError) as e:
        die("%s: %s" % (path, why(e)))
    if text is not None:
        opts = {}
        for n, line in enumerate(text.splitlines(), 1):
            m = re.match(r"#\s*ranks:\s*(\d+)\s*$", line)
            if m:
                opts["ranks"] = m.group(1)
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not line.startswith("--"):
                die("%s, line %d: not an option line '--name value': %s" % (path, n, line))
            name, _, value = line[2:].partition(" ")
            opts[name] = value
        return opts, "options.txt"
    path = os.path.join(d, "command.txt")
    try:
        with open(path) as f:
            tokens = shlex.split(f.read())
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        die("%s: %s" % (path, why(e)))
    opts = parse_args_list(tokens)
    for k, v in ALWAYS.items():
        opts.setdefault(k, v)
    return opts, "command.txt"


class Run:
    def __init__(self, d):
        self.dir = d
        self.name = os.path.basename(os.path.normpath(d))
        if not os.path.exists(d):
            die("%s: no such run folder" % d)
        if not os.path.isdir(d):
            die("%s is not a directory (give nnprec --out folders)" % d)
        paths = {k: os.path.join(d, k + ".csv") for k in ("train", "eval")}
        have = {k: os.path.isfile(p) for k, p in paths.items()}
        if not any(have.values()):
            die("%s has no train.csv or eval.csv: not an nnprec run folder (--out)" % d)
        for k, ok in have.items():
            if not ok:
                die("%s has no %s.csv" % (d, k))
        self.train = read_numeric_csv(paths["train"], ["step", "epoch", "train_loss", "wall_s"])
        # (with --test-every, evaluations of the validation set alone leave test_acc nan)
        self.eval = [r for r in read_numeric_csv(paths["eval"], ["step", "epoch", "test_acc",
                                                                 "wall_s"])
                     if not math.isnan(r["test_acc"])]
        self.opts, self.source = read_options(d)
        if self.opts is None:
            self.key = (("name", re.sub(r"[-_](s|seed)\d+$", "", self.name)),)
        else:
            self.key = tuple(sorted((k, v) for k, v in self.opts.items() if k not in NOT_CONFIG))


def mean_std(xs):
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def group_runs(runs):
    """[(label, [runs])] in the order the groups first appear. A label names --init and
    --precond, then each option whose value differs between the groups (an option a
    command.txt does not give is left out of that comparison: its default is not known)."""
    groups = {}
    for r in runs:
        groups.setdefault(r.key, []).append(r)
    named = [dict(k) for k in groups]
    order = []
    for r in runs:
        order += [n for n in (r.opts or {}) if n not in order]
    differ = [n for n in order if n not in ALWAYS and n not in NOT_CONFIG and
              len({d[n] for d in named if n in d}) > 1]
    out, seen = [], set()
    for d, members in zip(named, groups.values()):
        if "name" in d:
            label = d["name"]
        else:
            label = ", ".join(["%s %s" % (n, d.get(n, v)) for n, v in ALWAYS.items()] +
                              ["%s %s" % (n, d[n]) for n in differ if n in d])
        if label in seen:  # only possible when a command.txt leaves an option out
            label += " (%s)" % members[0].name
        seen.add(label)
        out.append((label, members))
    return out


def fmt(m, s, n, spec):
    if m is None:
        return "–"
    return f"{m:{spec}} ± {s:{spec}}" if n > 1 else f"{m:{spec}}"


def table(groups, target):
    print(f"Test accuracy (%) and the first evaluation at or above {target:g}%; groups of "
          "several runs (seeds): mean ± sample std over the runs (time to target: over the "
          "runs that reach it).\n")
    print(f"| configuration | runs | final acc | best acc | reached {target:g}% | steps | epochs "
          f"| wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for label, runs in groups:
        final = [100 * r.eval[-1]["test_acc"] if r.eval else None for r in runs]
        best = [max(100 * e["test_acc"] for e in r.eval) if r.eval else None for r in runs]
        hits = [next((e for e in r.eval if 100 * e["test_acc"] >= target - 1e-9), None)
                for r in runs]
        hits = [h for h in hits if h]
        n_eval = sum(1 for r in runs if r.eval)
        cells = [fmt(*mean_std(final), n_eval, ".2f"), fmt(*mean_std(best), n_eval, ".2f"),
                 f"{len(hits)}/{len(runs)}"]
        for col, spec in (("step", ".0f"), ("epoch", ".2f"), ("wall_s", ".1f")):
            cells.append(fmt(*mean_std([h[col] for h in hits]), len(hits), spec))
        print(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
    print()
    for label, runs in groups:
        print(f"* {label}: " + ", ".join(r.dir for r in runs))


def curves(runs, rows, ycol, scale=1.0):
    """The steps that every run of a group logged, with the mean and std over the runs of
    ycol (times scale), epoch and wall_s at each."""
    by_step = [{r["step"]: r for r in getattr(run, rows)} for run in runs]
    steps = sorted(set.intersection(*[set(b) for b in by_step]))
    out = {"step": steps}
    for col, sc in ((ycol, scale), ("epoch", 1.0), ("wall_s", 1.0)):
        ms, ss = [], []
        for st in steps:
            m, s = mean_std([sc * b[st][col] for b in by_step])
            ms.append(float("nan") if m is None else m)
            ss.append(float("nan") if s is None else s)
        out[col], out[col + "_std"] = ms, ss
    return out


def plot(groups, path, dpi):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), squeeze=False)
    xs = (("step", "step"), ("epoch", "epoch"), ("wall_s", "wall time (s)"))
    loss_positive = True
    for i, (label, runs) in enumerate(groups):
        color = "C%d" % (i % 10)
        n = len(runs)
        for row, (rows, ycol, scale) in enumerate((("eval", "test_acc", 100.0),
                                                   ("train", "train_loss", 1.0))):
            c = curves(runs, rows, ycol, scale)
            if not c["step"]:
                continue
            y, sd = c[ycol], c[ycol + "_std"]
            if row == 1 and any(v <= 0 for v in y if not math.isnan(v)):
                loss_positive = False
            for col, (xcol, _) in enumerate(xs):
                ax = axes[row][col]
                x = c[xcol]
                ax.plot(x, y, color=color, marker="o" if row == 0 else None, ms=3,
                        label=f"{label} ({n} runs)" if n > 1 else label)
                if n > 1:
                    ax.fill_between(x, [m - s for m, s in zip(y, sd)],
                                    [m + s for m, s in zip(y, sd)], color=color, alpha=0.15)
    for col, (_, xlabel) in enumerate(xs):
        axes[0][col].set_ylabel("test accuracy (%)")
        axes[1][col].set_ylabel("training loss (mean over log interval)")
        if loss_positive:
            axes[1][col].set_yscale("log")
        for row in (0, 1):
            axes[row][col].set_xlabel(xlabel)
            axes[row][col].grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("mean ± sample std over the runs of each configuration" if
                 any(len(r) > 1 for _, r in groups) else "")
    fig.tight_layout()
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=dpi)
    except OSError as e:
        die("cannot write %s (%s)" % (path, why(e)))
    print(f"\nwrote {path}")


def main():
    ap = ArgParser(prog=PROG, description=__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR", help="nnprec --out folders")
    ap.add_argument("--target", type=float, default=85.0,
                    help="test accuracy (%%) for the time-to-target columns [85]")
    ap.add_argument("--plot", help="PNG to write [compare.png next to the first run]")
    ap.add_argument("--dpi", type=int, default=100, help="resolution of the plot [100]")
    args = ap.parse_args()
    if not 0 < args.target <= 100:  # also rejects nan
        ap.error(f"--target must be in (0, 100], got {args.target:g}")
    if not 10 <= args.dpi <= 1000:
        ap.error(f"--dpi must be in [10, 1000], got {args.dpi}")
    path = args.plot
    if path is None:
        parent = os.path.dirname(os.path.normpath(args.runs[0]))
        path = os.path.join(parent, "compare.png")
    image_path(ap, "--plot", path, folder_must_exist=args.plot is not None)
    runs = [Run(d) for d in args.runs]
    groups = group_runs(runs)
    table(groups, args.target)
    plot(groups, path, args.dpi)


if __name__ == "__main__":
    try:
        main()
    except OSError as e:
        die(why(e))
