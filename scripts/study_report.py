#!/usr/bin/python3
"""docs/large-batch.md from the large-batch study's runs (scripts/study.py).

  scripts/study_report.py RESULTS [--out REPORT.md] [--figures DIR] [--no-plots]
                          [--against OTHER]

RESULTS is the study's folder (results/study) or an export of it (docs/study): study.json,
bench.json and MODEL/bBATCH/PROC/lrLR-sSEED/{eval,train,layers}.csv. Every number of the
report is computed here from those files; nothing is typed in. Accuracy is a percentage;
± is the sample standard deviation over seeds; "k/n" counts the seeds that finished or
reached the target. The modeled times come from bench.json (see the report's section 4).
--against OTHER adds a section comparing every finished cell with the same cell of another
run of the study (another results folder or export: e.g. the study run again from scratch
with another build): the chosen rates, the final test accuracies and whether they differ by
more than the two seed spreads, and whether each (model, batch) has the same best procedure.
"""
import argparse
import json
import math
import os
import sys

from clitools import ArgParser, die, read_numeric_csv
from experiments import mean_std  # mean and sample std of the values that are not None

PROG = "study_report.py"
PRECOND = ("d-seed-static", "e-seed-dynamic", "i-default-dynamic")
RANKS = [2 ** i for i in range(11)]  # 1 ... 1024


def fmt_lr(lr):
    return "%.4g" % lr


def read_csv(path, need=()):
    try:
        return read_numeric_csv(path, need)
    except FileNotFoundError:
        return None


def read_layers(path):
    """The weight tensors' rows of a layers.csv (step, name, grad_std_precond), [] if none."""
    import csv
    try:
        with open(path) as f:
            rows = list(csv.DictReader(f))
        return [dict(step=float(r["step"]), name=r["name"],
                     grad_std_precond=float(r["grad_std_precond"]))
                for r in rows if r["name"].endswith(".weight")]
    except FileNotFoundError:
        return []
    except (OSError, KeyError, TypeError, ValueError, csv.Error) as e:
        die(f"{path}: {e}")


class Run:
    """One run's results: state done / diverged / missing, final accuracies, curves."""

    def __init__(self, d, epochs, target):
        self.d = d
        self.state, self.val, self.test, self.steps_to, self.ev, self.tr = "missing", None, None, None, [], []
        if os.path.exists(os.path.join(d, "diverged.txt")):
            self.state = "diverged"
            return
        ev = read_csv(os.path.join(d, "eval.csv"), ["step", "epoch", "val_acc", "test_acc", "wall_s"])
        if not ev or abs(ev[-1]["epoch"] - epochs) > 1e-6:
            return
        self.state, self.ev = "done", ev
        self.val, self.test = 100 * ev[-1]["val_acc"], 100 * ev[-1]["test_acc"]
        hit = next((r for r in ev if 100 * r["val_acc"] >= target), None)
        self.steps_to = hit["step"] if hit else None
        self.tr = read_csv(os.path.join(d, "train.csv"), ["step"]) or []


class Report:
    def __init__(self, results):
        self.res = results
        try:
            with open(os.path.join(results, "study.json")) as f:
                self.meta = json.load(f)
        except FileNotFoundError:
            die(f"{results}/study.json is missing (run scripts/study.py first, or give the "
                "study's results folder)")
        except (OSError, ValueError) as e:
            die(f"{results}/study.json: {e}")
        self.bench = None
        try:
            with open(os.path.join(results, "bench.json")) as f:
                self.bench = json.load(f)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            die(f"{results}/bench.json: {e}")
        self.procs = self.meta["procedures"]
        self.models = self.meta["models"]
        self.cells = {}
        for c in self.meta["cells"]:
            m, b, p = c["model"], c["batch"], c["proc"]
            E, T = self.models[m]["epochs"], self.models[m]["target"]
            d = os.path.join(results, m, f"b{b}", p)
            c["grid"] = [(lr, Run(os.path.join(d, f"lr{fmt_lr(lr)}-s{self.meta['study']['tune_seed']}"), E, T))
                         for lr in c["lrs"]]
            c["seeds"] = ([Run(os.path.join(d, f"lr{fmt_lr(c['best_lr'])}-s{s}"), E, T)
                           for s in self.meta["seeds"]] if c["best_lr"] else [])
            self.cells[(m, b, p)] = c

    # ------------------------------------------------------------ numbers
    def final(self, m, b, p):
        """(mean, std, n finished, n seeds, n diverged) of the final test accuracy."""
        c = self.cells.get((m, b, p))
        if not c or c["phase"] != "done":
            return None
        if not c["best_lr"]:  # no rate of the grid got above chance
            return None, None, 0, 0, 0
        runs = c["seeds"]
        acc = [r.test for r in runs if r.state == "done"]
        mu, sd = mean_std(acc)
        return mu, sd, len(acc), len(runs), sum(r.state == "diverged" for r in runs)

    def steps(self, m, b, p):
        """(mean, std, n reached, n seeds) of the steps to the target validation accuracy."""
        c = self.cells.get((m, b, p))
        if not c or c["phase"] != "done":
            return None
        if not c["best_lr"]:
            return None, None, 0, 0
        st = [r.steps_to for r in c["seeds"] if r.steps_to is not None]
        mu, sd = mean_std(st)
        return mu, sd, len(st), len(c["seeds"])

    def steps_lower_bound(self, m, b, p):
        """A lower bound of the mean steps to the target over the seeds of a cell, a seed that
        never reaches it counted as the budget's last step; None if no seed reaches it."""
        c = self.cells.get((m, b, p))
        runs = (c or {}).get("seeds", [])
        done = [r for r in runs if r.state == "done"]
        if not done or all(r.steps_to is None for r in runs):
            return None
        budget = max(r.ev[-1]["step"] for r in done)  # a diverged seed counts as the budget too
        return sum(r.steps_to if r.steps_to is not None else budget for r in runs) / len(runs)

    def noise_scale(self, m):
        """The gradient noise scale B_simple of the default recipe at the smallest batch:
        the median of train.csv's noise_scale over the second half of the chosen-rate runs."""
        b = min(self.models[m]["batches"])
        c = self.cells.get((m, b, "a-default"))
        vals = []
        for r in (c or {}).get("seeds", []):
            rows = [x for x in r.tr if "noise_scale" in x and math.isfinite(x["noise_scale"])]
            vals += [x["noise_scale"] for x in rows[len(rows) // 2:]]
        vals = sorted(v for v in vals if v > 0)
        return vals[len(vals) // 2] if vals else None

    # ------------------------------------------------------------ the time model
    def fit_allreduce(self):
        """alpha (s) and beta (s per byte) of T(S) = 2 alpha + beta S at 2 ranks: least squares
        of the relative error (weights 1/T^2), so the small messages count as much as the big."""
        pts = [(float(k) * 2 ** 20, v) for k, v in self.bench["allreduce"].items()]
        w = [1 / (y * y) for _, y in pts]
        sw = sum(w)
        sx = sum(wi * x for wi, (x, _) in zip(w, pts))
        sy = sum(wi * y for wi, (_, y) in zip(w, pts))
        sxx = sum(wi * x * x for wi, (x, _) in zip(w, pts))
        sxy = sum(wi * x * y for wi, (x, y) in zip(w, pts))
        beta = (sw * sxy - sx * sy) / (sw * sxx - sx * sx)
        a2 = (sy - beta * sx) / sw
        return max(a2, 0.0) / 2, beta

    def compute_s(self, m, b):
        """One rank's seconds per step at local batch b: log-log interpolation between the
        measured batches; below the smallest, that batch's time (a step has a floor)."""
        pts = sorted((int(k), v) for k, v in self.bench["models"][m]["step_s"].items())
        if b <= pts[0][0]:
            return pts[0][1]
        if b >= pts[-1][0]:
            return pts[-1][1] * b / pts[-1][0]
        for (b0, t0), (b1, t1) in zip(pts, pts[1:]):
            if b0 <= b <= b1:
                w = math.log(b / b0) / math.log(b1 / b0)
                return math.exp((1 - w) * math.log(t0) + w * math.log(t1))

    def allreduce_s(self, m, P):
        if P == 1:
            return 0.0
        alpha, beta = self.fit_allreduce()
        S = self.bench["models"][m]["param_bytes"]
        return 2 * math.ceil(math.log2(P)) * alpha + 2 * (P - 1) / P * S * beta

    def step_s(self, m, B, P):
        return self.compute_s(m, B / P) + self.allreduce_s(m, P)

    def model_check(self):
        """[(model, batch, measured 2-rank s/step, modeled)]."""
        out = []
        for m, r in self.bench["models"].items():
            for b, t in sorted(r.get("step_s_2ranks", {}).items(), key=lambda x: int(x[0])):
                out.append((m, int(b), t, self.step_s(m, int(b), 2)))
        return out

    def has_bench(self, m):
        """Whether bench.json times model m (a study in progress may lack it)."""
        return self.bench is not None and m in self.bench.get("models", {})

    def time_to_target(self, m, p, P):
        """Modeled seconds to the target at P ranks: the best global batch B >= P of those
        measured, steps to target(B) x step time(B, P); (seconds, B) or None."""
        if not self.has_bench(m):
            return None
        best = None
        for b in self.models[m]["batches"]:
            s = self.steps(m, b, p)
            if b < P or not s or s[0] is None or s[2] < s[3]:
                continue  # every seed must reach the target
            t = s[0] * self.step_s(m, b, P)
            if best is None or t < best[0]:
                best = (t, b)
        return best


# ---------------------------------------------------------------- Markdown
def header(R, out, figlink):
    meta, w = R.meta, out.write
    st = meta["study"]
    w("# The large-batch study: does the preconditioner keep its lead as the global batch grows?\n\n")
    w("Generated by `scripts/study_report.py` from the runs' CSVs (committed in "
      "[study/](study/)); every number below is computed from them, and "
      "`tests/study.sh` regenerates the tables and compares. Reproduce with "
      "`scripts/study.py run && scripts/study.py bench && scripts/study.py export docs/study && "
      "scripts/study_report.py docs/study --out docs/large-batch.md --figures docs/figures`.\n\n")
    w("## 1. Design\n\n")
    n_cells = len(R.cells)
    n_done = sum(1 for c in R.cells.values() if c["phase"] == "done")
    if n_done < n_cells:
        w(f"**Partial: {n_done} of {n_cells} cells finished** (the others show \"(not finished)\"); "
          "`scripts/study.py run` continues where it stopped.\n\n")
    limit = f" (tests only: the first {meta['train_limit']} samples)" if meta.get("train_limit") else ""
    w(f"* Data: Fashion-MNIST, all of the training set{limit} less a validation split of "
      f"{meta['val_split']} samples chosen by the seed ({meta['n_train']} left to train on); "
      "learning rates are chosen on the validation split, accuracies reported on the test set "
      "(evaluated once, at the end).\n")
    w(f"* Budget: the same number of epochs at every global batch of a model; a cosine decay "
      f"to zero over it for every procedure. Validation accuracy {st['evals_per_epoch']} times "
      "per epoch gives the steps to the target.\n")
    w(f"* Learning rates: each (model, batch, procedure) cell tries a log grid c·3^k, k = "
      f"{st['grid'][0]} … {st['grid'][-1]}, around a centre c that follows the procedure's "
      f"scaling rule from global batch {meta['base_batch']}, with seed {st['tune_seed']}; the "
      f"grid grows by one rate on the side of the best while the best is at an edge (up to "
      f"{st.get('max_rates', st['max_points'])} rates), and downwards while no rate trains "
      f"(up to {st['max_points']} rates); the best final "
      f"validation accuracy wins; then seeds "
      f"{', '.join(map(str, meta['seeds']))} run at that rate (the tuning run is seed "
      f"{st['tune_seed']}'s).\n")
    w(f"* Warm-up, where a procedure has it: linear over the first {100 * st['warmup_frac']:g}% "
      "of the steps (Goyal et al. 2017).\n")
    w("* Ranks: every run here is one process (two runs at a time on this 2-core machine). The "
      "trajectory at a given global batch does not depend on the rank count "
      "(tests/ddp_equivalence.sh: 1–4 ranks, every allreduce mode, the same losses up to the "
      "order of float32 sums), so these are the trajectories a 64- or 1024-rank run with the "
      "same global batch would follow, up to that rounding, which a chaotic run grows into a "
      "different but statistically equivalent trajectory (docs/results.md §3); with "
      "`--deterministic` (not used here) runs are bit for bit the same at any rank count "
      "(tests/deterministic.sh, docs/determinism.md). Only the time per step changes with "
      "the rank count, which section 4 models.\n\n")
    w("| model | spec | epochs | global batches | target (validation) | procedures |\n"
      "|---|---|---|---|---|---|\n")
    for m, M in R.models.items():
        w(f"| {m} | `{M['spec']}` | {M['epochs']} | {', '.join(map(str, sorted(M['batches'])))} "
          f"| {M['target']:g}% | {len(M['procs'])} |\n")
    w("\n| procedure | what | centre lr at batch "
      f"{meta['base_batch']} | scaling | options |\n|---|---|---|---|---|\n")
    used = {p for M in R.models.values() for p in M["procs"]}
    for p, P in R.procs.items():
        if p not in used:
            continue
        w(f"| {p} | {P['label']} | {P['center']:g} | {P['scaling']} | "
          f"`{' '.join(P['args'])}` |\n")
    if figlink is not None:
        w("\nFigures (from the same files):\n\n")
        for name, what in (("accuracy", "test accuracy at the end of the budget against global batch"),
                           ("steps", "steps to the target against global batch (log-log; perfect "
                                     "scaling is a slope of −1), with the measured noise scale"),
                           ("time-model", "MODELED time to target against ranks, and scaling efficiency"),):
            if name == "time-model" and R.bench is None:
                continue
            w(f"* {what}: ![{name}]({figlink}large-batch-{name}.png)\n")
        for m, M in R.models.items():
            if M.get("stats"):
                w(f"* {m}: gradient scale per layer at the largest batch: "
                  f"![layers-{m}]({figlink}large-batch-layers-{m}.png)\n")
            if has_curves(R, m):
                w(f"* {m}: validation accuracy against step and wall time, smallest and largest "
                  f"batch: ![curves-{m}]({figlink}large-batch-curves-{m}.png)\n")


def has_curves(R, m):
    """Whether model m has a finished seed run in a cell at its smallest or largest batch:
    its curves figure would be empty otherwise (a study in progress)."""
    bs = sorted(R.models[m]["batches"])
    return any(r.state == "done" for b in {bs[0], bs[-1]} for p in R.models[m]["procs"]
               for r in (R.cells.get((m, b, p)) or {}).get("seeds", []))


def cell_acc(f):
    if f is None:
        return "(not finished)"
    mu, sd, n, N, nd = f
    if N == 0:
        return "did not train"
    if mu is None:
        return f"diverged ({nd}/{N})" if nd else "–"
    s = f"{mu:.2f} ± {sd:.2f}" + (f" ({n}/{N})" if n < N else "")
    return s + (f", {nd} diverged" if nd else "")


def cell_steps(s):
    if s is None:
        return "(not finished)"
    mu, sd, n, N = s
    if N == 0:
        return "did not train"
    if mu is None:
        return f"not reached (0/{N})"
    return f"{mu:.0f} ± {sd:.0f}" + (f" ({n}/{N})" if n < N else "")


def tables(R, out):
    meta = R.meta
    w = out.write
    for m, M in R.models.items():
        bs = sorted(M["batches"])
        w(f"\n### {m} (`{M['spec']}`), {M['epochs']} epochs at every batch\n\n")
        w("Test accuracy (%) at the end of the budget, at each cell's chosen rate, mean ± std "
          f"over seeds {', '.join(map(str, meta['seeds']))}:\n\n")
        w("| procedure | " + " | ".join(f"batch {b}" for b in bs) + " |\n")
        w("|---|" + "---|" * len(bs) + "\n")
        for p in M["procs"]:
            w(f"| {p} | " + " | ".join(cell_acc(R.final(m, b, p)) for b in bs) + " |\n")
        w(f"\nSteps to {M['target']:g}% validation accuracy (first evaluation at or above it; "
          "mean ± std over the seeds that reach it, k/n when not all do):\n\n")
        w("| procedure | " + " | ".join(f"batch {b}" for b in bs) + " |\n")
        w("|---|" + "---|" * len(bs) + "\n")
        for p in M["procs"]:
            w(f"| {p} | " + " | ".join(cell_steps(R.steps(m, b, p)) for b in bs) + " |\n")
        w("\nLearning rate chosen on the validation split (seed "
          f"{meta['study']['tune_seed']}), and the grid it was chosen from "
          "(validation accuracy % of each rate; div = diverged):\n\n")
        w("| procedure | batch | chosen lr | grid: lr (val %) |\n|---|---|---|---|\n")
        for p in M["procs"]:
            for b in bs:
                c = R.cells.get((m, b, p))
                if not c:
                    continue
                g = ", ".join(fmt_lr(lr) + (" (div)" if r.state == "diverged" else
                                            f" ({r.val:.1f})" if r.state == "done" else " (…)")
                              for lr, r in c["grid"])
                chosen = fmt_lr(c["best_lr"]) if c["best_lr"] else "–"
                if c.get("note"):
                    chosen += f" ({c['note']})"
                w(f"| {p} | {b} | {chosen} | {g} |\n")


def verdict(R, out):
    w = out.write
    lines = []
    for m, M in R.models.items():
        bs = sorted(M["batches"])
        procs = M["procs"]
        pre = [p for p in procs if p in PRECOND]
        base = [p for p in procs if p not in PRECOND]
        for b in bs:
            fs = {p: R.final(m, b, p) for p in procs}
            if any(f is None for f in fs.values()):
                lines.append(f"* {m}, batch {b}: not every procedure has finished.")
                continue
            ok = {p: f for p, f in fs.items() if f[0] is not None}
            bb = max((p for p in base if p in ok), key=lambda p: ok[p][0], default=None)
            bp = max((p for p in pre if p in ok), key=lambda p: ok[p][0], default=None)
            if bb is None or bp is None:
                lines.append(f"* {m}, batch {b}: no {'baseline' if bb is None else 'preconditioned procedure'} trained.")
                continue
            d = ok[bp][0] - ok[bb][0]
            spread = ok[bp][1] + ok[bb][1]
            how = ("ahead of" if d > spread else "behind" if d < -spread else "within the seed spread of")
            lines.append(f"* {m}, batch {b}: the best preconditioned procedure, {bp} "
                         f"({ok[bp][0]:.2f} ± {ok[bp][1]:.2f}), is {how} the best baseline, {bb} "
                         f"({ok[bb][0]:.2f} ± {ok[bb][1]:.2f}): {d:+.2f} points, the two spreads "
                         f"summing to {spread:.2f}.")
    w("\n".join(lines) + "\n")
    # ablations
    w("\nAblations, difference of the mean final test accuracy (points) with the two standard "
      "deviations summed in brackets:\n\n")
    pairs = [("d-seed-static", "c-seed"), ("e-seed-dynamic", "c-seed"),
             ("e-seed-dynamic", "d-seed-static"), ("i-default-dynamic", "a-default")]
    for m, M in R.models.items():
        bs = sorted(M["batches"])
        rows = [(x, y) for x, y in pairs if x in M["procs"] and y in M["procs"]]
        if not rows:
            continue
        w(f"| {m} | " + " | ".join(f"batch {b}" for b in bs) + " |\n")
        w("|---|" + "---|" * len(bs) + "\n")
        for x, y in rows:
            cells = []
            for b in bs:
                fx, fy = R.final(m, b, x), R.final(m, b, y)
                if not fx or not fy or fx[0] is None or fy[0] is None:
                    cells.append("–")
                else:
                    cells.append(f"{fx[0] - fy[0]:+.2f} ({fx[1] + fy[1]:.2f})")
            w(f"| {x} − {y} | " + " | ".join(cells) + " |\n")
        w("\n")
    # the goal
    w("The goal, measured: a preconditioned procedure that at global batch ≥ 2048 reaches the "
      "best batch-128 accuracy (any procedure) within 1 point in the same epochs, or needs ≤ 0.5× "
      "the default recipe's steps to the target at the same batch:\n\n")
    for m, M in R.models.items():
        b0 = min(M["batches"])
        best128 = [R.final(m, b0, p) for p in M["procs"]]
        if any(f is None for f in best128):
            w(f"* {m}: not finished.\n")
            continue
        top = max((f[0] for f in best128 if f[0] is not None), default=None)
        hits = []
        for b in [b for b in M["batches"] if b >= 2048]:
            sa = R.steps(m, b, "a-default")
            for p in [p for p in M["procs"] if p in PRECOND]:
                f, s = R.final(m, b, p), R.steps(m, b, p)
                if f and f[0] is not None and top is not None and f[0] >= top - 1:
                    hits.append(f"{p} at batch {b}: {f[0]:.2f}% against {top:.2f}%")
                lo = R.steps_lower_bound(m, b, "a-default")
                if s and s[0] is not None and s[2] == s[3] and sa and (lo is None or s[0] <= 0.5 * lo):
                    if not sa[2]:
                        ref = "the default never reaches it"
                    elif sa[2] < sa[3]:
                        ref = (f"the default at least {lo:.0f} on average (it reaches it in "
                               f"{sa[2]}/{sa[3]} seeds; the others count as the budget's steps)")
                    else:
                        ref = f"{sa[0]:.0f} for the default"
                    hits.append(f"{p} at batch {b}: {s[0]:.0f} steps to the target, {ref}")
        w(f"* {m}: " + ("; ".join(hits) if hits else "no preconditioned procedure meets it") + ".\n")


def best_proc(R, m, b):
    """The procedure with the highest mean final test accuracy at (m, b), None until every
    procedure's cell has finished."""
    fs = {p: R.final(m, b, p) for p in R.models[m]["procs"]}
    if any(f is None for f in fs.values()):
        return None
    ok = {p: f[0] for p, f in fs.items() if f[0] is not None}
    return max(ok, key=ok.get) if ok else None


def reproduction(R, O, other, out):
    """Every cell finished in both R and O: chosen rates, final accuracies and their
    difference against the two seed spreads summed; then the best procedure per (model,
    batch) in each."""
    w = out.write
    w(f"Each cell against the same cell of `{other}` (another run of this study; this one "
      "first). A difference is flagged (**) when it exceeds the two seed standard deviations "
      "summed.\n")
    n = same_lr = within = 0
    worst = None
    for m, M in R.models.items():
        if m not in O.models:
            continue
        rows = []
        for p in M["procs"]:
            for b in sorted(M["batches"]):
                f, g = R.final(m, b, p), O.final(m, b, p)
                if f is None or g is None or (m, b, p) not in O.cells:
                    continue
                lr1, lr2 = R.cells[(m, b, p)]["best_lr"], O.cells[(m, b, p)]["best_lr"]
                n += 1
                same_lr += lr1 == lr2
                if f[0] is None or g[0] is None:
                    rows.append(f"| {p} | {b} | {fmt_lr(lr1) if lr1 else '–'} / "
                                f"{fmt_lr(lr2) if lr2 else '–'} | {cell_acc(f)} | {cell_acc(g)} | – |")
                    within += f[0] is None and g[0] is None
                    continue
                d, spread = f[0] - g[0], f[1] + g[1]
                flag = abs(d) > spread
                within += not flag
                if worst is None or abs(d) > abs(worst[0]):
                    worst = (d, m, b, p)
                rows.append(f"| {p} | {b} | {fmt_lr(lr1)} / {fmt_lr(lr2)} | {cell_acc(f)} | "
                            f"{cell_acc(g)} | {d:+.2f} ({spread:.2f}){' **' if flag else ''} |")
        if rows:
            w(f"\n{m}:\n\n| procedure | batch | chosen lr (this / other) | test % (this) | "
              "test % (other) | difference (spreads) |\n|---|---|---|---|---|---|\n")
            w("\n".join(rows) + "\n")
    if not n:
        w("\nNo cell has finished in both.\n")
        return
    w(f"\nIn {n} cells finished in both: the same chosen rate in {same_lr}, the final test "
      f"accuracies within the two seed spreads in {within}")
    if worst:
        w(f"; the largest difference {worst[0]:+.2f} points ({worst[1]}, batch {worst[2]}, "
          f"{worst[3]})")
    w(".\n")
    agree = []
    for m, M in R.models.items():
        if m not in O.models:
            continue
        for b in sorted(M["batches"]):
            p1, p2 = best_proc(R, m, b), best_proc(O, m, b)
            if p1 and p2:
                agree.append(f"{m} batch {b}: {p1}" + ("" if p1 == p2 else f" (other: {p2})"))
    if agree:
        w("\nBest procedure per (model, batch), where both have finished every cell: "
          + "; ".join(agree) + ".\n")


def model_section(R, out):
    w = out.write
    if R.bench is None:
        w("\n(no bench.json: run `scripts/study.py bench` for the time model)\n")
        return
    alpha, beta = R.fit_allreduce()
    w(f"\nAllreduce at 2 ranks, fitted as 2α + β·S over {len(R.bench['allreduce'])} sizes: "
      f"α = {1e6 * alpha:.1f} µs, 1/β = {1e-9 / beta:.2f} GB/s. Modeled at P ranks as "
      "2⌈log2 P⌉α + 2(P−1)/P·S·β (tree latency, ring bandwidth; S = the parameters' bytes), "
      "plus one rank's measured compute time at the local batch B/P"
      + (f" (timed with {R.bench['compute_copies']} copies running at once, one per core, as "
         "ranks that share a node compute)" if R.bench.get("compute_copies", 1) > 1 else
         " (timed alone)") + ".\n\n")
    chk = R.model_check()
    if chk:
        w("Model against measured 2-rank steps (ms per step):\n\n| model | global batch | "
          "measured | modeled | error |\n|---|---|---|---|---|\n")
        errs = []
        for m, b, t, p in chk:
            e = (p - t) / t
            errs.append(abs(e))
            w(f"| {m} | {b} | {1e3 * t:.2f} | {1e3 * p:.2f} | {100 * e:+.0f}% |\n")
        errs.sort()
        w(f"\nMedian absolute error {100 * errs[len(errs) // 2]:.0f}%, largest "
          f"{100 * errs[-1]:.0f}%. (At 1 rank the model is the measurement itself.)\n")
    for m, M in R.models.items():
        if not R.has_bench(m):
            w(f"\n{m}: no step times in bench.json yet (`scripts/study.py bench` measures "
              "them), so no modeled time to the target.\n")
            continue
        w(f"\nModeled time to {M['target']:g}% validation accuracy, {m} (seconds; the global "
          "batch that minimizes it in brackets; –: no global batch of at least one sample per rank reaches it in every seed):\n\n")
        ps = [P for P in RANKS if P in (1, 2, 8, 64, 1024)]
        w("| procedure | " + " | ".join(f"{P} rank{'s' if P > 1 else ''}" for P in ps) + " |\n")
        w("|---|" + "---|" * len(ps) + "\n")
        for p in M["procs"]:
            cells = []
            for P in ps:
                t = R.time_to_target(m, p, P)
                cells.append("–" if t is None else f"{t[0]:.3g} (B {t[1]})")
            w(f"| {p} | " + " | ".join(cells) + " |\n")


# ---------------------------------------------------------------- plots
def plots(R, figdir, prefix):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    models = list(R.models)
    colors = {p: plt.cm.tab10(i % 10) for i, p in enumerate(R.procs)}

    def style(p):
        return dict(color=colors[p], ls="-" if p in PRECOND else "--", marker="o", ms=4)

    def legend(ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)

    def save(fig, name):
        path = os.path.join(figdir, f"{prefix}{name}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    # 1. final test accuracy against global batch
    fig, axs = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, m in zip(axs[0], models):
        M = R.models[m]
        for p in M["procs"]:
            pts = [(b, R.final(m, b, p)) for b in sorted(M["batches"])]
            pts = [(b, f[0], f[1]) for b, f in pts if f and f[0] is not None]
            if pts:
                ax.errorbar([x[0] for x in pts], [x[1] for x in pts], yerr=[x[2] for x in pts],
                            label=p, capsize=3, **style(p))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("global batch")
        ax.set_ylabel("test accuracy (%) at the end of the budget")
        ax.set_title(f"{m}: {M['epochs']} epochs at every batch (mean ± std)")
        ax.grid(alpha=0.3)
    legend(axs[0][0])
    save(fig, "accuracy")

    # 2. steps to target against global batch, log-log, noise scale marked
    fig, axs = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, m in zip(axs[0], models):
        M = R.models[m]
        bs = sorted(M["batches"])
        for p in M["procs"]:
            pts = [(b, R.steps(m, b, p)) for b in bs]
            pts = [(b, s[0], s[1], s[2] < s[3]) for b, s in pts if s and s[0] is not None]
            if pts:
                ax.errorbar([x[0] for x in pts], [x[1] for x in pts], yerr=[x[2] for x in pts],
                            label=p, capsize=3, **style(p))
                for b, y, _, partial in pts:
                    if partial:
                        ax.plot([b], [y], marker="x", color="k", ms=8)
        y0 = [R.steps(m, bs[0], p) for p in M["procs"]]
        y0 = [s[0] for s in y0 if s and s[0] is not None]
        if y0:
            ref = min(y0)
            ax.plot(bs, [ref * bs[0] / b for b in bs], color="gray", lw=0.8, ls=":",
                    label="perfect scaling (slope −1)")
        ns = R.noise_scale(m)
        if ns:
            ax.axvline(ns, color="k", lw=0.8, ls="-.", label=f"noise scale B_simple ≈ {ns:.0f}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("global batch")
        ax.set_ylabel(f"steps to {M['target']:g}% validation accuracy")
        ax.set_title(f"{m} (x: not every seed reached it)")
        ax.grid(alpha=0.3, which="both")
    legend(axs[0][0])
    save(fig, "steps")

    # 3. per-layer gradient std, deep MLP, largest batch: at the first and the last logged step
    for m, M in R.models.items():
        if not M.get("stats"):
            continue
        b = max(M["batches"])
        fig, axs = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        any_ = False
        for p in M["procs"]:
            c = R.cells.get((m, b, p))
            if not c or not c["seeds"] or c["seeds"][0].state != "done":
                continue
            wr = read_layers(os.path.join(c["seeds"][0].d, "layers.csv"))
            if not wr:
                continue
            for ax, step in zip(axs, (min(r["step"] for r in wr), max(r["step"] for r in wr))):
                y = [r["grad_std_precond"] for r in wr if r["step"] == step]
                ax.plot(range(1, len(y) + 1), y, label=p, **dict(style(p), ms=3))
                ax.set_title(f"{m}, global batch {b}, step {step:.0f}")
            any_ = True
        if any_:
            for ax in axs:
                ax.set_yscale("log")
                ax.set_xlabel("weight layer (input → output)")
                ax.grid(alpha=0.3, which="both")
            axs[0].set_ylabel("std of the weight gradient after the preconditioner (seed 1)")
            legend(axs[0])
            save(fig, f"layers-{m}")
        else:
            plt.close(fig)

    # 4. modeled time to target against ranks, and strong-scaling efficiency
    if R.bench is not None:
        fig, axs = plt.subplots(1, len(models) + 1, figsize=(5.5 * (len(models) + 1), 4.5),
                                squeeze=False)
        for ax, m in zip(axs[0], models):
            M = R.models[m]
            for p in M["procs"] if R.has_bench(m) else []:
                pts = [(P, R.time_to_target(m, p, P)) for P in RANKS]
                pts = [(P, t[0]) for P, t in pts if t]
                if pts:
                    ax.plot([x[0] for x in pts], [x[1] for x in pts], label=p, **style(p))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("ranks")
            ax.set_ylabel(f"MODELED seconds to {M['target']:g}% validation accuracy")
            ax.set_title(f"{m}: a model (measured steps × modeled step time)")
            ax.grid(alpha=0.3, which="both")
        legend(axs[0][0])
        ax = axs[0][-1]
        for m in models:
            for b in sorted(R.models[m]["batches"]) if R.has_bench(m) else []:
                if not str(b) in R.bench["models"][m].get("step_s_2ranks", {}):
                    continue
                t1 = R.step_s(m, b, 1)
                Ps = [P for P in RANKS if P <= b]
                line, = ax.plot(Ps, [t1 / (P * R.step_s(m, b, P)) for P in Ps],
                                label=f"{m} B={b} (model)")
                t2 = R.bench["models"][m]["step_s_2ranks"][str(b)]
                ax.plot([2], [t1 / (2 * t2)], marker="s", color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ranks")
        ax.set_ylabel("strong-scaling efficiency T1 / (P·T_P)")
        ax.set_title("efficiency at a fixed global batch (squares: measured at 2 ranks)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        save(fig, "time-model")

    # 5. validation accuracy against step and wall time, smallest and largest batch
    for m, M in R.models.items():
        if not has_curves(R, m):
            continue
        bs = sorted(M["batches"])
        show = [bs[0], bs[-1]] if len(bs) > 1 else bs
        fig, axs = plt.subplots(len(show), 2, figsize=(12, 4 * len(show)), squeeze=False)
        for row, b in zip(axs, show):
            for p in M["procs"]:
                c = R.cells.get((m, b, p))
                runs = [r for r in (c or {}).get("seeds", []) if r.state == "done"]
                if not runs:
                    continue
                n = min(len(r.ev) for r in runs)
                for ax, key in zip(row, ("step", "wall_s")):
                    xs = [sum(r.ev[i][key] for r in runs) / len(runs) for i in range(n)]
                    ys = [mean_std([100 * r.ev[i]["val_acc"] for r in runs]) for i in range(n)]
                    ax.plot(xs, [y[0] for y in ys], label=f"{p} ({len(runs)})",
                            **dict(style(p), marker=None))
                    ax.fill_between(xs, [y[0] - y[1] for y in ys], [y[0] + y[1] for y in ys],
                                    color=colors[p], alpha=0.12)
            for ax, lab in zip(row, ("step", "wall seconds (two runs shared the 2 cores)")):
                ax.set_xlabel(lab)
                ax.set_ylabel("validation accuracy (%)")
                ax.set_title(f"{m}, global batch {b}")
                ax.set_ylim(max(0, ax.get_ylim()[0]), 100)
                ax.grid(alpha=0.3)
            legend(row[0])
        save(fig, f"curves-{m}")
    return written


def main():
    ap = ArgParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="the study's folder (results/study or docs/study)")
    ap.add_argument("--out", help="write the Markdown here [stdout]")
    ap.add_argument("--figures", help="folder for the PNGs [RESULTS]")
    ap.add_argument("--prefix", default="large-batch-", help="PNG name prefix [large-batch-]")
    ap.add_argument("--no-plots", action="store_true", help="tables only")
    ap.add_argument("--against", metavar="OTHER",
                    help="compare every cell with another run of the study (its folder)")
    ap.add_argument("--figure-link", help="the figures' path as the report links them "
                    "[--figures relative to --out's folder]")
    a = ap.parse_args()
    if not os.path.isdir(a.results):
        die(f"{a.results} is not a directory")
    figdir = a.figures or a.results
    if not a.no_plots and not os.path.isdir(figdir):
        die(f"--figures {figdir} is not a directory")
    R = Report(a.results)
    if a.against and not os.path.isdir(a.against):
        die(f"--against {a.against} is not a directory")
    O = Report(a.against) if a.against else None
    out = open(a.out, "w") if a.out else sys.stdout
    from io import StringIO
    body = StringIO()
    figlink = None
    if a.figure_link is not None:
        figlink = a.figure_link
    elif not a.no_plots or a.figures:
        here = os.path.dirname(os.path.abspath(a.out)) if a.out else os.getcwd()
        figlink = os.path.relpath(os.path.abspath(figdir), here).replace(os.sep, "/") + "/"
    header(R, body, figlink)
    body.write("\n## 2. Results\n")
    tables(R, body)
    body.write("\n## 3. Verdict, computed from the tables\n\n")
    verdict(R, body)
    body.write("\n## 4. Time to target at scale: a model\n")
    model_section(R, body)
    if O is not None:
        body.write("\n## Reproduction: this study against another run of it\n\n")
        reproduction(R, O, a.against, body)
    notes = os.path.join(a.results, "notes.md")
    if os.path.exists(notes):
        with open(notes) as f:
            body.write("\n" + f.read())
    out.write(body.getvalue())
    if not a.no_plots:
        for path in plots(R, figdir, a.prefix):
            print(f"plot: {path}", file=sys.stderr)
    if a.out:
        out.close()


if __name__ == "__main__":
    main()
