#!/usr/bin/python3
"""Run and summarize nnprec's reference experiments on Fashion-MNIST.

Each experiment is a set of named configurations (nnprec train options) run for several
seeds; every run writes its CSVs to RESULTS/EXPERIMENT/CONFIG-sSEED/. `summary` prints a
markdown table of test accuracy (mean +- sample std over seeds) at chosen epochs, paired
differences against the default, and writes plots (PNG) next to the results.

  scripts/experiments.py run seed-precond       # default / seed init / static / dynamic
  scripts/experiments.py run deep-mlp           # 12-layer MLP: vanishing gradients
  scripts/experiments.py summary seed-precond

Runs go two at a time (--jobs) with one BLAS thread each. Runs that already finished
(eval.csv has its final row) are skipped, so an interrupted study can be resumed.
"""
import argparse
import math
import os
import re
import subprocess
import time

from clitools import ArgParser, die, why, positive_int, read_numeric_csv, image_path

PROG = "experiments.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Seed 000's recipe: LeNet, batch 4, SGD lr 0.001 momentum 0.9, pixels (x - 0.5)/0.5.
SEED_RECIPE = ["--model", "lenet", "--batch", "4", "--lr", "0.001", "--momentum", "0.9",
               "--normalize", "0.5,0.5", "--eval-every", "3750", "--log-every", "1000"]
DEEP_MLP = ["--model", "mlp:784-256x12-10", "--act", "relu", "--batch", "64", "--lr", "0.01",
            "--momentum", "0.9", "--normalize", "0.5,0.5", "--eval-every", "469",
            "--log-every", "100", "--stats-every", "100"]

EXPERIMENTS = {
    "seed-precond": {
        "epochs": 4, "seeds": [1, 2, 3, 4, 5], "base": SEED_RECIPE,
        "configs": {
            "default": ["--init", "pytorch", "--precond", "none"],
            "seed-init": ["--init", "seed", "--precond", "none"],
            "static": ["--init", "seed", "--precond", "static", "--precond-formula", "seed"],
            "dynamic-k1": ["--init", "seed", "--precond", "dynamic", "--precond-formula", "seed",
                           "--precond-every", "1"],
            "dynamic-k100": ["--init", "seed", "--precond", "dynamic", "--precond-formula",
                             "seed", "--precond-every", "100"],
        },
        "report_epochs": [0.25, 0.5, 1, 2, 3, 4],
        "reference": {
            "default": {0.25: 75.38, 0.5: 81.43, 1: 84.03, 2: 87.45, 3: 88.33, 4: 88.80},
            "static": {0.25: 80.35, 0.5: 83.28, 1: 85.22, 2: 87.24, 3: 87.92, 4: 88.56},
            "dynamic-k1": {0.25: 80.10, 0.5: 83.00, 1: 85.26, 2: 87.57, 3: 88.16, 4: 88.70},
            "dynamic-k100": {0.25: 80.12, 0.5: 83.42, 1: 85.24, 2: 87.52, 3: 88.02, 4: 88.59},
            "seed-init": {4: 89.4},
        },
    },
    "deep-mlp": {
        "epochs": 2, "seeds": [1, 2, 3], "base": DEEP_MLP,
        "configs": {
            "default": ["--init", "pytorch", "--precond", "none"],
            "kaiming": ["--init", "kaiming-normal", "--precond", "none"],
            "static": ["--init", "seed", "--precond", "static", "--precond-formula", "seed"],
            "dynamic-k1": ["--init", "seed", "--precond", "dynamic", "--precond-formula", "seed",
                           "--precond-every", "1"],
            # the corrected formula on the initializations it was not derived from
            "default-static": ["--init", "pytorch", "--precond", "static"],
            "default-dynamic": ["--init", "pytorch", "--precond", "dynamic"],
            "default-dynamic-w": ["--init", "pytorch", "--precond", "dynamic",
                                  "--precond-measure", "weights"],
            "kaiming-dynamic": ["--init", "kaiming-normal", "--precond", "dynamic"],
        },
        "report_epochs": [0.5, 1, 2],
        "reference": {
            "default": {1: 10.0, 2: 10.0},
            "static": {1: 81.64, 2: 84.54},
            "dynamic-k1": {1: 81.59, 2: 84.87},
        },
    },
}


def read_csv(path, need=()):
    """A results CSV (read_numeric_csv): FileNotFoundError when it is missing."""
    return read_numeric_csv(path, need)


def run_dir(results, exp, cfg, seed):
    return os.path.join(results, exp, f"{cfg}-s{seed}")


def diverged_at(d):
    """The step at which a run diverged (diverged.txt, written by `run`), or None."""
    try:
        with open(os.path.join(d, "diverged.txt")) as f:
            return int(f.read().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def finished(d, epochs):
    if diverged_at(d) is not None:
        return True  # a diverged run is a result: it is not run again
    path = os.path.join(d, "eval.csv")
    if not os.path.exists(path):
        return False
    rows = read_csv(path, ["epoch"])
    return bool(rows) and abs(rows[-1]["epoch"] - epochs) < 1e-6


def cmd_run(args):
    e = EXPERIMENTS[args.experiment]
    epochs = args.epochs or e["epochs"]
    seeds = args.seeds or e["seeds"]
    todo = []
    for cfg, opts in e["configs"].items():
        if args.only and cfg not in args.only:
            continue
        for s in seeds:
            d = run_dir(args.results, args.experiment, cfg, s)
            if finished(d, epochs):
                print(f"[exp] {cfg} seed {s}: done already")
                continue
            os.makedirs(d, exist_ok=True)
            argv = [args.nnprec, "train"] + e["base"] + opts + [
                "--epochs", str(epochs), "--seed", str(s), "--out", d, "--resume", "auto", "--quiet"]
            todo.append((cfg, s, d, argv))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    running = []
    t0 = time.time()
    n_total, n_done = len(todo), 0
    while todo or running:
        while todo and len(running) < args.jobs:
            cfg, s, d, argv = todo.pop(0)
            with open(os.path.join(d, "command.txt"), "w") as f:
                f.write(" ".join(argv) + "\n")
            log = open(os.path.join(d, "log.txt"), "w")
            running.append((cfg, s, d, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)))
        time.sleep(0.5)
        for item in list(running):
            cfg, s, d, p = item
            if p.poll() is None:
                continue
            running.remove(item)
            n_done += 1
            if p.returncode != 0:
                # a run whose loss stopped being finite is a result of its configuration
                with open(os.path.join(d, "log.txt")) as f:
                    m = re.search(r"training diverged at step (\d+)", f.read())
                if m:
                    with open(os.path.join(d, "diverged.txt"), "w") as f:
                        f.write(m.group(1) + "\n")
                    print(f"[exp] {n_done}/{n_total} {cfg} seed {s}: diverged at step "
                          f"{m.group(1)} ({time.time() - t0:.0f} s elapsed)", flush=True)
                    continue
                for *_, other in running:  # stop the others (nnprec checkpoints on SIGTERM)
                    other.terminate()
                    other.wait()
                die(f"{cfg} seed {s} failed (exit {p.returncode}), see {d}/log.txt")
            ev = read_csv(os.path.join(d, "eval.csv"), ["test_acc"])
            if not ev:
                die(f"{cfg} seed {s}: {d}/eval.csv has no evaluation")
            acc = ev[-1]["test_acc"]
            print(f"[exp] {n_done}/{n_total} {cfg} seed {s}: final test acc "
                  f"{100 * float(acc):.2f}% ({time.time() - t0:.0f} s elapsed)", flush=True)


def load(results, exp, cfg, seed):
    """(eval rows, train rows) of a run; a diverged run has no evaluations to report (its
    accuracy cells count it as diverged)."""
    d = run_dir(results, exp, cfg, seed)
    if diverged_at(d) is not None:
        return [], []
    ev = read_csv(os.path.join(d, "eval.csv"), ["epoch", "test_acc", "wall_s"])
    tr = read_csv(os.path.join(d, "train.csv"), ["step", "train_loss"])
    return ev, tr


def acc_at(ev, epoch):
    for r in ev:
        if abs(r["epoch"] - epoch) < 1e-3:
            return 100 * r["test_acc"]
    return None


def mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def cmd_summary(args):
    e = EXPERIMENTS[args.experiment]
    seeds = args.seeds or e["seeds"]
    epochs = e["report_epochs"]
    data = {}
    for cfg in e["configs"]:
        runs = []
        for s in seeds:
            try:
                runs.append(load(args.results, args.experiment, cfg, s))
            except FileNotFoundError:
                pass
        if runs:
            data[cfg] = runs
    if not data:
        die(f"no runs of {args.experiment} with seeds {seeds} under "
            f"{os.path.join(args.results, args.experiment)} (run `{PROG} run {args.experiment}` "
            "first, or give --results)")
    ref = e.get("reference", {})
    print(f"Test accuracy (%), mean ± std over seeds {seeds}; PyTorch reference in brackets.\n")
    print("| config | " + " | ".join(f"epoch {x:g}" for x in epochs) + " |")
    print("|---|" + "---|" * len(epochs))
    for cfg, runs in data.items():
        cells = []
        n_div = sum(1 for ev, _ in runs if not ev)
        for ep in epochs:
            m, s = mean_std([acc_at(ev, ep) for ev, _ in runs])
            r = ref.get(cfg, {}).get(ep)
            cell = "–" if m is None else f"{m:.2f} ± {s:.2f}"
            if n_div:
                cell = f"diverged ({n_div})" if m is None else cell + f" ({n_div} diverged)"
            if r is not None and m is not None:
                cell += f" [{r:.2f}, Δ {m - r:+.2f}]"
            cells.append(cell)
        print(f"| {cfg} ({len(runs)} seeds) | " + " | ".join(cells) + " |")
    if "default" in data:
        print("\nPaired by seed: config minus default, mean ± std of the per-seed difference.\n")
        print("| config | " + " | ".join(f"epoch {x:g}" for x in epochs) + " |")
        print("|---|" + "---|" * len(epochs))
        base = {s: ev for s, (ev, _) in zip(seeds, data["default"])}
        for cfg, runs in data.items():
            if cfg == "default":
                continue
            cells = []
            for ep in epochs:
                diffs = []
                for s, (ev, _) in zip(seeds, runs):
                    a, b = acc_at(ev, ep), acc_at(base.get(s, []), ep)
                    if a is not None and b is not None:
                        diffs.append(a - b)
                m, sd = mean_std(diffs)
                cells.append("–" if m is None else f"{m:+.2f} ± {sd:.2f}")
            print(f"| {cfg} | " + " | ".join(cells) + " |")
    target = args.target
    print(f"\nTime to {target:g}% test accuracy (first evaluation at or above it): epochs and "
          f"training wall seconds, mean ± std over the seeds that reach it.\n")
    print("| config | reached | epochs | wall s |")
    print("|---|---|---|---|")
    for cfg, runs in data.items():
        eps, walls = [], []
        for ev, _ in runs:
            hit = next((r for r in ev if 100 * r["test_acc"] >= target), None)
            if hit:
                eps.append(hit["epoch"])
                walls.append(hit["wall_s"])
        me, se = mean_std(eps)
        mw, sw = mean_std(walls)
        cell = lambda m, sd, f: "–" if m is None else f"{m:{f}} ± {sd:{f}}"
        print(f"| {cfg} | {len(eps)}/{len(runs)} | {cell(me, se, '.2f')} | {cell(mw, sw, '.1f')} |")
    plot(args, e, data)


def plot(args, e, data):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for cfg, runs in data.items():
        runs = [(ev, tr) for ev, tr in runs if ev]  # diverged runs have no curve
        if not runs:
            continue
        eps = sorted({r["epoch"] for ev, _ in runs for r in ev})
        ms, ss = [], []
        for ep in eps:
            m, s = mean_std([acc_at(ev, ep) for ev, _ in runs])
            ms.append(m)
            ss.append(s)
        line, = ax1.plot(eps, ms, marker="o", ms=3, label=cfg)
        ax1.fill_between(eps, [m - s for m, s in zip(ms, ss)], [m + s for m, s in zip(ms, ss)],
                         color=line.get_color(), alpha=0.15)
        n = min(len(tr) for _, tr in runs)  # a run cut short logged fewer steps
        steps = [r["step"] for r in runs[0][1][:n]]
        losses = [sum(tr[i]["train_loss"] for _, tr in runs) / len(runs) for i in range(len(steps))]
        ax2.plot(steps, losses, label=cfg, color=line.get_color())
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_title(f"{args.experiment}: test accuracy (mean ± std over seeds)")
    ax1.grid(alpha=0.3)
    ax1.legend()
    ax2.set_xlabel("step")
    ax2.set_ylabel("training loss (mean over log interval and seeds)")
    ax2.set_yscale("log")
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.tight_layout()
    out = args.plot or os.path.join(args.results, args.experiment, f"{args.experiment}.png")
    fig.savefig(out, dpi=110)
    print(f"\nplot: {out}")


def main():
    ap = ArgParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["run", "summary"])
    ap.add_argument("experiment", choices=sorted(EXPERIMENTS))
    ap.add_argument("--nnprec", default=os.path.join(ROOT, "build", "nnprec"))
    ap.add_argument("--results", default=os.path.join(ROOT, "results"))
    ap.add_argument("--jobs", type=positive_int, default=2, help="runs in parallel (default 2)")
    ap.add_argument("--seeds", type=int, nargs="*", help="override the seeds")
    ap.add_argument("--epochs", type=positive_int, help="override the epochs")
    ap.add_argument("--only", nargs="*", help="run only these configs")
    ap.add_argument("--plot", help="PNG path for the summary plot")
    ap.add_argument("--target", type=float, default=85.0,
                    help="summary: test accuracy (%%) for the time-to-accuracy table [85]")
    args = ap.parse_args()
    configs = EXPERIMENTS[args.experiment]["configs"]
    unknown = [c for c in args.only or [] if c not in configs]
    if unknown:
        ap.error(f"--only: no config {', '.join(unknown)} in {args.experiment} (choose from "
                 f"{', '.join(configs)})")
    if not 0 < args.target <= 100:
        ap.error(f"--target must be in (0, 100], got {args.target:g}")
    if args.action == "run":
        if not os.access(args.nnprec, os.X_OK):
            die(f"{args.nnprec} is not an executable (build first)")
        cmd_run(args)
    else:
        if args.plot is not None:
            image_path(ap, "--plot", args.plot, folder_must_exist=True)
        cmd_summary(args)


if __name__ == "__main__":
    try:
        main()
    except OSError as e:  # e.g. a results folder that cannot be written
        die(why(e))
