#!/usr/bin/python3
"""The timeline of `nnprec train --trace FILE.json` as a PNG, and its phases per step.

One row per rank (and one per communication thread, with --allreduce bucketed), each phase
a coloured bar, time in milliseconds from the first traced event; --steps A:B draws only
those steps. It prints, per phase, the mean milliseconds per step over the ranks and the
spread between the ranks' means: where the time goes, and which phases wait for whom.
The same file opens interactively in ui.perfetto.dev or chrome://tracing.

  scripts/plot_trace.py results/trace.json --out trace.png
"""
import json
from collections import defaultdict

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from clitools import ArgParser, die, save_figure, add_figure_args, figure_args, why  # noqa: E402

ORDER = ["data", "forward", "backward", "allreduce wait", "allreduce", "allreduce bucket",
         "preconditioner", "stats", "optimizer", "allgather", "stop check", "evaluation",
         "checkpoint"]


def parse_steps(ap, s):
    try:
        a, b = (int(v) for v in s.split(":"))
    except ValueError:
        ap.error("--steps expects A:B, got '%s'" % s)
    if not 1 <= a <= b:
        ap.error("--steps expects A:B with 1 <= A <= B, got '%s'" % s)
    return a, b


def read_trace(path):
    try:
        with open(path) as f:
            d = json.load(f)
    except OSError as e:
        die("cannot read the trace %s" % why(e))
    except ValueError as e:
        die("%s is not a trace (JSON: %s)" % (path, e))
    if not isinstance(d, dict) or not isinstance(d.get("traceEvents"), list):
        die("%s is not a trace (no traceEvents list)" % path)
    ev = []
    for e in d["traceEvents"]:
        try:
            if e["ph"] == "X":
                ev.append((int(e["pid"]), int(e["tid"]), str(e["name"]), float(e["ts"]),
                           float(e["dur"]), int(e["args"]["step"])))
        except (KeyError, TypeError, ValueError):
            die("%s: an event without pid/tid/name/ts/dur/args.step: %r" % (path, e))
    return ev


def main():
    ap = ArgParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", metavar="FILE.json", help="the trace of nnprec train --trace")
    add_figure_args(ap)
    ap.add_argument("--steps", metavar="A:B", help="draw only steps A..B (default: all)")
    a = ap.parse_args()
    figure_args(ap, a)
    lo, hi = parse_steps(ap, a.steps) if a.steps else (1, float("inf"))

    ev = [e for e in read_trace(a.trace) if lo <= e[5] <= hi]
    if not ev:
        die("%s has no events%s" % (a.trace, " in steps %s" % a.steps if a.steps else ""))
    t0 = min(e[3] for e in ev)
    rows = sorted({(e[0], e[1]) for e in ev})
    names = sorted({e[2] for e in ev}, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))
    color = {n: "C%d" % (k % 10) for k, n in enumerate(names)}
    if len(names) > 10:  # tab20 past ten phases, so that no two share a colour
        cmap = plt.get_cmap("tab20")
        color = {n: cmap(k % 20) for k, n in enumerate(names)}

    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.6), constrained_layout=True)
    for y, (pid, tid) in enumerate(rows):
        for n in names:
            bars = [((e[3] - t0) / 1e3, e[4] / 1e3) for e in ev if (e[0], e[1], e[2]) == (pid, tid, n)]
            if bars:
                ax.broken_barh(bars, (y - 0.4, 0.8), color=color[n], lw=0)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(["rank %d%s" % (p, " comm" if t else "") for p, t in rows])
    ax.invert_yaxis()
    ax.set_xlabel("ms since the first traced event")
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=color[n]) for n in names], labels=names,
              fontsize=7, ncol=min(len(names), 7), loc="lower center", bbox_to_anchor=(0.5, 1.0),
              frameon=False)
    steps = sorted({e[5] for e in ev})
    save_figure(fig, a.out, a.dpi, a.title)

    # per phase: mean ms per step on each rank (main thread and communication thread)
    per = defaultdict(float)
    for pid, tid, n, _, dur, _ in ev:
        per[(n, pid)] += dur / 1e3
    ranks = sorted({p for p, _ in rows})
    print("%s: %d events, %d rank(s), steps %d..%d" % (a.trace, len(ev), len(ranks), steps[0], steps[-1]))
    print("%-18s %12s %12s %12s" % ("phase", "ms/step min", "mean", "max"))
    for n in names:
        v = [per[(n, p)] / len(steps) for p in ranks]
        print("%-18s %12.3f %12.3f %12.3f" % (n, min(v), sum(v) / len(v), max(v)))


if __name__ == "__main__":
    main()
