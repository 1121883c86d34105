#!/usr/bin/python3
"""The large-batch study: does the preconditioner keep its lead as the global batch grows?

For every model, global batch and procedure (default recipe, Kaiming, seed init, seed init +
static / dynamic preconditioner, LARS, LAMB, AdamW, dynamic preconditioner on the default
recipe) the learning rate is tuned on a validation split (a log grid, x3 apart, extended
until the best rate has a neighbour on both sides) with one seed; then more seeds run at
the chosen rate. Every (model, batch) gets the same epoch budget. docs/large-batch.md
describes the design; scripts/study_report.py turns the runs into that report.

  scripts/study.py run                    # the whole study here, 2 runs at a time
  scripts/study.py run --quick            # lenet, batches 128 and 2048, one seed, 3 epochs
                                          # (in results/study-quick)
  scripts/study.py plan                   # what is finished, what runs next
  scripts/study.py slurm --sbatch "-t 2:00:00"   # the same study as Slurm job arrays
  scripts/study.py bench                  # step and allreduce times for the time model
  scripts/study.py export DEST            # the runs' CSVs (no checkpoints) into DEST

Runs live in RESULTS/MODEL/bBATCH/PROC/lrLR-sSEED/ (nnprec's --out). A run that finished
(its last evaluation is at the budget's end) or diverged (diverged.txt) is never run again;
an interrupted one resumes from its last checkpoint (--resume auto); logs are appended. A
folder holding a run made with other options (another --epochs) stops the driver before it
writes or starts anything: each study needs its own --results.
SIGTERM, SIGINT (Ctrl-C) or SIGHUP to `run` stops it cleanly: it starts nothing more, sends
each of its runs one SIGTERM (nnprec checkpoints and exits), waits for them and exits 75;
the next `run` resumes them.
Runs are independent nnprec jobs: locally each starts with `mpirun -np RANKS`; on Slurm each
is one task of an array running slurm/train.sbatch, which checkpoints on the pre-timeout
signal and requeues itself. The tuning is adaptive (the grid grows where the best rate is at
an edge, the seeds wait for the chosen rate), so the study advances in waves: `plan` lists
the runs whose settings are known now; `run` and `slurm` repeat waves until none is left.
Each line `run` prints for a finished run also says how many runs are left at least (the
grids may still grow) and about how long they take at --jobs at a time, from the run times
per model this driver has seen (resumed runs not counted).
"""
import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from clitools import ArgParser, die, why, positive_int, read_numeric_csv
from experiments import diverged_at  # noqa: E402  (diverged.txt: the step it diverged at)

PROG = "study.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_SIZE = 60000  # Fashion-MNIST's training set

# ---------------------------------------------------------------- the study's description
# Procedures. `center`: the learning rate at global batch BASE_BATCH around which the grid
# starts (rates c x 3^k, k = -2..1); `scaling`: how the centre moves with the global batch
# (linear: x G/128, Goyal et al. 2017; sqrt: x sqrt(G/128), the usual rule for Adam-type
# methods); `warmup`: linear warm-up over the first 5% of the steps. Every procedure then
# decays the rate with a cosine to zero over the budget, and none uses weight decay except
# the decoupled decay that defines AdamW and LAMB (0.01, their published default).
BASE_BATCH = 128
SGD = ["--optim", "sgd", "--momentum", "0.9"]
PROCEDURES = {
    "a-default": dict(args=["--init", "pytorch"] + SGD, center=0.03, scaling="linear",
                      warmup=True, noise=True,  # the noise scale, at the smallest batch
                      label="(a) default: PyTorch init, SGD, linear scaling + warm-up"),
    "b-kaiming": dict(args=["--init", "kaiming-normal"] + SGD, center=0.03, scaling="linear",
                      warmup=True, label="(b) Kaiming init, SGD, linear scaling + warm-up"),
    "c-seed": dict(args=["--init", "seed"] + SGD, center=0.03, scaling="linear", warmup=False,
                   label="(c) seed init, SGD"),
    "d-seed-static": dict(args=["--init", "seed", "--precond", "static"] + SGD, center=0.03,
                          scaling="linear", warmup=False,
                          label="(d) seed init + static preconditioner"),
    "e-seed-dynamic": dict(args=["--init", "seed", "--precond", "dynamic"] + SGD, center=0.03,
                           scaling="linear", warmup=False,
                           label="(e) seed init + dynamic preconditioner"),
    "f-lars": dict(args=["--init", "pytorch", "--optim", "lars", "--momentum", "0.9",
                         "--no-lars-exclude-bias"], center=1.0, scaling="linear", warmup=True,
                   label="(f) LARS (eta 0.001), linear scaling + warm-up"),
    "g-lamb": dict(args=["--init", "pytorch", "--optim", "lamb", "--weight-decay", "0.01"],
                   center=0.01, scaling="sqrt", warmup=True,
                   label="(g) LAMB, sqrt scaling + warm-up"),
    "h-adamw": dict(args=["--init", "pytorch", "--optim", "adamw", "--weight-decay", "0.01"],
                    center=0.001, scaling="sqrt", warmup=True,
                    label="(h) AdamW, sqrt scaling + warm-up"),
    "i-default-dynamic": dict(args=["--init", "pytorch", "--precond", "dynamic"] + SGD,
                              center=0.03, scaling="linear", warmup=True,
                              label="(i) default recipe + dynamic preconditioner"),
}
# target: the validation accuracy whose steps the report counts, set where the best
# procedure at the largest batch reaches it in every seed within the budget (the study
# asks for that), so that the steps-to-target curves reach the largest batch
MODELS = {
    "lenet": dict(spec="lenet", epochs=8, batches=[128, 512, 2048, 8192], target=84.0,
                  procs=list(PROCEDURES)),
    "mlp": dict(spec="mlp:784-256x12-10", epochs=8, batches=[128, 512, 2048, 8192],
                target=75.0, procs=list(PROCEDURES), stats=True),
    # about 25x the cost of a LeNet step here: a reduced matrix (stated in the report), the
    # default recipe and the dynamic preconditioner on it; add "f-lars", "g-lamb" ... here to
    # run more of the procedures on it
    "resnet8": dict(spec="resnet8", epochs=3, batches=[128, 2048], target=80.0,
                    procs=["a-default", "i-default-dynamic"]),
}
STUDY = dict(val_split=5000, seeds=[1, 2, 3], tune_seed=1, grid=[-2, -1, 0, 1], max_points=7,
             max_rates=10, warmup_frac=0.05, evals_per_epoch=4)
QUICK = dict(models=["lenet"], batches=[128, 2048], seeds=[1], epochs=3)
CHANCE = 0.15  # a final validation accuracy at or below this did not train


def lr_of(proc, batch, k):
    p = PROCEDURES[proc]
    r = batch / BASE_BATCH
    s = {"linear": r, "sqrt": math.sqrt(r), "none": 1.0}[p["scaling"]]
    return float("%.4g" % (p["center"] * s * 3.0 ** k))


def fmt_lr(lr):
    return "%.4g" % lr


class Study:
    """The study as configured on the command line (the full one, --quick, or a subset)."""

    def __init__(self, a):
        self.results = a.results
        self.models = a.models or (QUICK["models"] if a.quick else list(MODELS))
        self.seeds = a.seeds or (QUICK["seeds"] if a.quick else STUDY["seeds"])
        self.val_split = STUDY["val_split"] if a.val_split is None else a.val_split
        self.train_limit = a.train_limit
        self.a = a

    def epochs(self, model):
        if self.a.epochs:
            return self.a.epochs
        return QUICK["epochs"] if self.a.quick else MODELS[model]["epochs"]

    def batches(self, model):
        if self.a.batches:
            return self.a.batches
        return QUICK["batches"] if self.a.quick else MODELS[model]["batches"]

    def stats(self, model):
        """Per-layer statistics (layers.csv, the report's per-layer figure): the deep MLP's
        runs, and --quick's, so that it makes every figure"""
        return bool(MODELS[model].get("stats") or self.a.quick)

    def procs(self, model):
        ps = MODELS[model]["procs"]
        return [p for p in ps if p in self.a.procs] if self.a.procs else ps

    def n_train(self):
        n = self.train_limit or TRAIN_SIZE
        return n - self.val_split

    def cells(self):
        for m in self.models:
            # the extremes first: a study cut short has its widest comparison
            bs = self.batches(m)
            for b in [b for b in bs if b in (min(bs), max(bs))] + [b for b in bs if b not in (min(bs), max(bs))]:
                for p in self.procs(m):
                    yield m, b, p

    def run_dir(self, model, batch, proc, lr, seed):
        return os.path.join(self.results, model, f"b{batch}", proc, f"lr{fmt_lr(lr)}-s{seed}")

    def argv(self, model, batch, proc, lr, seed):
        """nnprec train options of one run (without --out/--resume)."""
        p, mdl = PROCEDURES[proc], MODELS[model]
        E = self.epochs(model)
        spe = math.ceil(self.n_train() / batch)  # steps per epoch (the last batch is partial)
        every = max(1, round(spe / STUDY["evals_per_epoch"]))
        # the validation set at every evaluation, the test set at the end only
        args = ["--model", mdl["spec"], "--global-batch", str(batch), "--epochs", str(E),
                "--lr", fmt_lr(lr), "--schedule", "cosine", "--seed", str(seed),
                "--val-split", str(self.val_split), "--eval-every", str(every),
                "--test-every", str(spe * E),
                "--log-every", str(every), "--quiet"] + p["args"]
        if self.train_limit:
            args += ["--train-limit", str(self.train_limit)]
        if p.get("warmup"):
            args += ["--warmup-epochs", "%g" % (STUDY["warmup_frac"] * E)]
        if p.get("noise") and batch == min(self.batches(model)):
            args += ["--noise-scale"]
        if self.stats(model):
            args += ["--stats-every", str(every)]
        return args


# ---------------------------------------------------------------- run states
def final_eval(d, epochs):
    """The last eval.csv row if the run reached the end of its budget, else None."""
    try:
        rows = read_numeric_csv(os.path.join(d, "eval.csv"), ["epoch", "val_acc", "test_acc"])
    except FileNotFoundError:
        return None
    if rows and abs(rows[-1]["epoch"] - epochs) < 1e-6:
        return rows[-1]
    return None


def mark_diverged(d):
    """A run whose log says it diverged gets diverged.txt (a result, not a failure)."""
    try:
        with open(os.path.join(d, "log.txt"), errors="replace") as f:
            # (nnprec before 2026-12-06 said "preconditioner: non-finite weight sums of T
            # at step N" or "... activation or gradient moments at step N", N counted from
            # 0, when the dynamic preconditioner met the divergence first)
            m = [m1 or str(int(m2) + 1) for m1, m2 in re.findall(
                r"training diverged at step (\d+)|preconditioner: non-finite (?:weight sums "
                r"of \S+|activation or gradient moments) at step (\d+)", f.read())]
    except FileNotFoundError:
        return False
    if not m:
        return False
    with open(os.path.join(d, "diverged.txt"), "w") as f:
        f.write(m[-1] + "\n")
    return True


def score(st, d, epochs):
    """(state, validation accuracy): done / diverged / todo."""
    if diverged_at(d) is not None:
        return "diverged", 0.0
    r = final_eval(d, epochs)
    if r is not None:
        return "done", r["val_acc"]
    if mark_diverged(d):
        return "diverged", 0.0
    return "todo", None


def best_k(ks, accs):
    """The grid point with the best final validation accuracy; ties: the one nearer the
    centre (k = 0)."""
    return max(ks, key=lambda k: (accs[k], -abs(k)))


def grow_grid(ks, accs):
    """The tuning grid's next rate, or None when it is settled. ks: the grid's exponents k
    (rate = centre * 3^k), ascending; accs: {k: final validation accuracy}, 0 for a
    diverged run. While no rate trains (all at or below CHANCE), one rate lower, up to
    max_points rates; while the best rate (best_k) is at an edge,
    one rate on its side, up to max_rates rates: a best rate at the grid's edge is left
    only when max_rates is reached, and the report flags it."""
    best = best_k(ks, accs)
    if accs[best] <= CHANCE:
        return ks[0] - 1 if len(ks) < STUDY["max_points"] else None
    if len(ks) < STUDY["max_rates"] and best == ks[0]:
        return ks[0] - 1
    if len(ks) < STUDY["max_rates"] and best == ks[-1]:
        return ks[-1] + 1
    return None


def cell_plan(st, model, batch, proc):
    """What a cell needs now: (runs to start [(lr, seed)], status dict). The tuning grid
    starts at STUDY['grid'] and grows as grow_grid says; once settled, the other seeds run
    at the best rate."""
    E = st.epochs(model)
    ks = list(STUDY["grid"])
    seed = STUDY["tune_seed"]
    while True:
        accs = {}
        todo = []
        for k in ks:
            lr = lr_of(proc, batch, k)
            state, acc = score(st, st.run_dir(model, batch, proc, lr, seed), E)
            if state == "todo":
                todo.append((lr, seed))
            else:
                accs[k] = acc
        if todo:
            return todo, dict(phase="tune", ks=ks)
        k = grow_grid(ks, accs)
        if k is None:
            break
        ks = sorted(ks + [k])
    best = best_k(ks, accs)
    if accs[best] <= CHANCE:
        return [], dict(phase="done", ks=ks, best=None, accs=accs, note="no rate trained")
    lr = lr_of(proc, batch, best)
    note = "" if ks[0] < best < ks[-1] else "best rate at the grid's edge"
    todo = []
    for s in st.seeds:
        state, _ = score(st, st.run_dir(model, batch, proc, lr, s), E)
        if state == "todo":
            todo.append((lr, s))
    return todo, dict(phase="seeds" if todo else "done", ks=ks, best=best, lr=lr, accs=accs,
                      note=note)


def plan(st):
    """[(model, batch, proc, lr, seed)] that can run now, and the cells' status."""
    runs, status = [], {}
    for m, b, p in st.cells():
        todo, s = cell_plan(st, m, b, p)
        status[(m, b, p)] = s
        runs += [(m, b, p, lr, seed) for lr, seed in todo]
    for r in runs:  # before anything is written or started
        check_same_run(st.run_dir(*r), st.argv(*r))
    return runs, status


def resumed(d):
    """True if the run in folder d was started more than once (resumed from a checkpoint):
    its time in this driver is not a whole run's."""
    try:
        with open(os.path.join(d, "log.txt"), errors="replace") as f:
            return sum(ln.startswith("[study ") for ln in f) > 1
    except FileNotFoundError:
        return False


def runs_left(st, runs, status):
    """{model: runs still to go}, at least: those that can start now plus, for a cell still
    tuning, its other seeds (more if its grid has to grow)."""
    left = {m: 0 for m in st.models}
    for r in runs:
        left[r[0]] += 1
    for (m, _, _), s in status.items():
        if s["phase"] == "tune":
            left[m] += len(st.seeds) - 1
    return left


def eta_text(left, took, jobs):
    """'N runs left, about T min' from this driver's run times per model (took: {model:
    [seconds]}); models not timed yet are named."""
    n = sum(left.values())
    if not n:
        return "none left"
    untimed = [m for m, k in left.items() if k and not took.get(m)]
    secs = sum(k * sum(took[m]) / len(took[m]) for m, k in left.items() if k and took.get(m))
    txt = f"at least {n} run(s) left, about {secs / 60 / jobs:.0f} min at {jobs} at a time"
    return txt + (f" plus {', '.join(untimed)} (not timed yet)" if untimed else "")


def write_meta(st, status):
    """RESULTS/study.json: the study's settings and every cell's grid and chosen rate, for
    the report."""
    cells = []
    for (m, b, p), s in status.items():
        cells.append(dict(model=m, batch=b, proc=p, phase=s["phase"],
                          lrs=[lr_of(p, b, k) for k in s["ks"]],
                          best_lr=s.get("lr"), note=s.get("note", "")))
    models = {m: dict(MODELS[m], epochs=st.epochs(m), batches=st.batches(m),
                      procs=st.procs(m), stats=st.stats(m)) for m in st.models}
    # a driver over some of the models (--models mlp) keeps what study.json says of the
    # others, so that the report still sees every model that ran
    path = os.path.join(st.results, "study.json")
    try:
        with open(path) as f:
            old = json.load(f)
        for m, v in old.get("models", {}).items():
            if m not in models and m in MODELS:
                models[m] = v
        cells = [c for c in old.get("cells", []) if c.get("model") not in st.models
                 and c.get("model") in models] + cells
    except (OSError, ValueError, AttributeError, TypeError):
        pass  # none yet, or unreadable: this driver's view alone
    models = {m: models[m] for m in MODELS if m in models}  # the study's order
    meta = dict(models=models,
                procedures=PROCEDURES, seeds=st.seeds, val_split=st.val_split,
                train_limit=st.train_limit, n_train=st.n_train(), base_batch=BASE_BATCH,
                study=STUDY, cells=cells)
    os.makedirs(st.results, exist_ok=True)
    tmp = os.path.join(st.results, f"study.json.{os.getpid()}.tmp")  # drivers side by side
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(st.results, "study.json"))


# ---------------------------------------------------------------- actions
def cmd_plan(st):
    runs, status = plan(st)
    write_meta(st, status)
    n_done = sum(1 for s in status.values() if s["phase"] == "done")
    for (m, b, p), s in status.items():
        ks = s["ks"]
        lrs = ", ".join(fmt_lr(lr_of(p, b, k)) for k in ks)
        extra = f"; chosen lr {fmt_lr(s['lr'])}" if s.get("lr") else ""
        print(f"{m:8s} b{b:<5d} {p:18s} {s['phase']:6s} grid {lrs}{extra}"
              + (f" ({s['note']})" if s.get("note") else ""))
    print(f"{n_done}/{len(status)} cells done; {len(runs)} run(s) can start now")
    return runs


def run_options(d):
    """{option: value} of the run in folder d, from the options.txt nnprec writes there."""
    with open(os.path.join(d, "options.txt")) as f:
        return dict(ln.rstrip("\n")[2:].partition(" ")[::2] for ln in f if ln.startswith("--"))


def run_state(d):
    """done / diverged / todo for the run in folder d, against its own epoch budget."""
    try:
        epochs = float(run_options(d)["epochs"])
    except (OSError, KeyError, ValueError):
        return "todo"
    if diverged_at(d) is not None or mark_diverged(d):
        return "diverged"
    return "done" if final_eval(d, epochs) is not None else "todo"


def check_same_run(d, argv):
    """A run folder that already holds a run (its options.txt, which nnprec writes) must have
    been started with these options: resuming it under others (another epoch budget, a
    --quick study pointed at the full one's folder) would mix two runs in one folder."""
    try:
        have = run_options(d)
    except FileNotFoundError:
        return
    i = 0
    while i < len(argv):
        name = argv[i][2:]
        valued = i + 1 < len(argv) and not argv[i + 1].startswith("--")
        want = argv[i + 1] if valued else "1"
        i += 2 if valued else 1
        if name in ("quiet", "out", "resume", "threads", "config") or name not in have:
            continue
        got = have[name].strip()
        try:
            same = math.isclose(float(got), float(want), rel_tol=1e-9)
        except ValueError:
            same = got == want
        if not same:
            die(f"{d} holds a run with --{name} {got}, where this study asks for {want}: "
                f"give this study its own --results (or remove that folder)")


def launch(st, run, ranks, nnprec):
    m, b, p, lr, seed = run
    d = st.run_dir(m, b, p, lr, seed)
    os.makedirs(d, exist_ok=True)
    # not bound: Open MPI binds each job's ranks from core 0 on, without seeing the other
    # jobs, so two 1-rank runs at once would share core 0 and leave the other idle
    argv = (["mpirun", "-np", str(ranks), "--bind-to", "none", nnprec, "train"]
            + st.argv(m, b, p, lr, seed) + ["--out", d, "--resume", "auto", "--threads", "1"])
    with open(os.path.join(d, "command.txt"), "w") as f:
        f.write(" ".join(argv) + "\n")
    log = open(os.path.join(d, "log.txt"), "a")
    log.write(f"[study {time.strftime('%F %T')}] {' '.join(argv)}\n")
    log.flush()
    # a session of its own: a terminal's Ctrl-C reaches the driver alone, which stops each
    # run with one SIGTERM (on_signal in cmd_run)
    return d, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=ENV,
                               start_new_session=True)


def cmd_run(st, a):
    if not os.access(a.nnprec, os.X_OK):
        die(f"{a.nnprec} is not an executable (build first, or give --nnprec)")
    if shutil.which("mpirun") is None:
        die("mpirun is not on PATH (install Open MPI: scripts/install-deps.sh)")
    t0 = time.time()
    n_started = n_done = 0
    running = {}  # Popen -> (run, dir, start time)
    took = {}  # model -> wall seconds of the runs this driver saw start and finish
    stop = False
    signalled = set()

    def on_signal(signum, frame):
        """SIGTERM, SIGINT, SIGHUP: start nothing more, stop the runs (mpirun passes SIGTERM
        to its ranks, which checkpoint and exit) and wait for them, so that no run is left
        behind to collide with the next driver; a later `run` resumes them."""
        nonlocal stop
        if not stop:
            print(f"[study] {signal.Signals(signum).name}: stopping {len(running)} run(s) "
                  "(they checkpoint and resume at the next `run`)", flush=True)
        stop = True  # the loop below signals the runs

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    while True:
        if not stop:
            runs, status = plan(st)
            write_meta(st, status)
            busy = {r for r, _, _ in running.values()}
            runs = [r for r in runs if r not in busy]
            if a.max_runs is not None:
                runs = runs[:max(0, a.max_runs - n_started)]
        else:
            runs = []
        while runs and not stop and len(running) < a.jobs:
            r = runs.pop(0)
            d, proc = launch(st, r, a.ranks, a.nnprec)
            running[proc] = (r, d, time.time())
            n_started += 1
        if stop:  # each run once: a second SIGTERM would make mpirun kill it unsaved
            for proc in running:
                if proc not in signalled and proc.poll() is None:
                    proc.terminate()
                    signalled.add(proc)
        if not running:
            break
        time.sleep(0.5)
        for proc in [p for p in running if p.poll() is not None]:
            (m, b, p, lr, seed), d, t_run = running.pop(proc)
            n_done += 1
            el = time.time() - t0
            state, acc = score(st, d, st.epochs(m))
            what = (f"val {100 * acc:.2f}%" if state == "done" else
                    f"diverged at step {diverged_at(d)}" if state == "diverged" else None)
            if what is None and stop:
                print(f"[study] {m} b{b} {p} lr {fmt_lr(lr)} s{seed}: stopped (exit "
                      f"{proc.returncode}), resumes at the next `run`", flush=True)
                continue
            if what is None:
                for other in running:  # nnprec checkpoints on SIGTERM: they resume later
                    other.terminate()
                    other.wait()
                die(f"{m} b{b} {p} lr {fmt_lr(lr)} seed {seed} failed (exit {proc.returncode}), "
                    f"see {d}/log.txt")
            if state == "done" and not resumed(d):
                took.setdefault(m, []).append(time.time() - t_run)
            runs, status = plan(st)
            print(f"[study] {n_done} {m} b{b} {p} lr {fmt_lr(lr)} s{seed}: {what} "
                  f"({el / 60:.1f} min elapsed; "
                  f"{eta_text(runs_left(st, runs, status), took, a.jobs)})", flush=True)
    runs, status = plan(st)
    write_meta(st, status)
    left = sum(1 for s in status.values() if s["phase"] != "done")
    print(f"[study] {n_done} run(s) in {(time.time() - t0) / 60:.1f} min; "
          f"{len(status) - left}/{len(status)} cells done"
          + (f", {len(runs)} run(s) still to start" if runs else ""))
    if stop:
        sys.exit(75)  # stopped by a signal: the study resumes at the next `run`


def cmd_slurm(st, a):
    """Waves of job arrays: each array task runs one planned run through slurm/train.sbatch
    (PLAN= mode), which checkpoints before the time limit and requeues itself; `sbatch
    --wait` ends when every task has, then the next wave is planned."""
    sbatch = os.path.join(ROOT, "slurm", "train.sbatch")
    wave = 0
    while True:
        runs, status = plan(st)
        write_meta(st, status)
        if not runs:
            break
        wave += 1
        planfile = os.path.join(st.results, f"plan-{wave}.tsv")
        with open(planfile, "w") as f:
            for m, b, p, lr, seed in runs:
                d = os.path.abspath(st.run_dir(m, b, p, lr, seed))
                os.makedirs(d, exist_ok=True)
                f.write(d + "\t" + " ".join(st.argv(m, b, p, lr, seed)) + "\n")
        cmd = (["sbatch", "--wait", f"--array=0-{len(runs) - 1}%{a.jobs}", "-n", str(a.ranks),
                "--export", f"ALL,PLAN={os.path.abspath(planfile)},NNPREC={os.path.abspath(a.nnprec)}"]
               + a.sbatch_args + [sbatch])
        print(f"[study] wave {wave}: {len(runs)} run(s): {' '.join(cmd)}", flush=True)
        rc = subprocess.run(cmd).returncode
        if rc != 0:
            # a task that failed (not diverged) stops the study: its run is left to look at
            for m, b, p, lr, seed in runs:
                d = st.run_dir(m, b, p, lr, seed)
                if score(st, d, st.epochs(m))[0] == "todo":
                    die(f"wave {wave}: {m} b{b} {p} lr {fmt_lr(lr)} seed {seed} did not finish "
                        f"(sbatch exit {rc}), see {d}/log.txt")
    left = sum(1 for s in status.values() if s["phase"] != "done")
    print(f"[study] {wave} wave(s); {len(status) - left}/{len(status)} cells done")


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return 0.5 * (xs[(n - 1) // 2] + xs[n // 2])


def time_steps(st, a, model, ranks, batch, steps, copies=1):
    """Median seconds per training step (1 thread per rank) of `steps` steps after the
    first log interval, from train.csv's samples_per_s; with copies > 1, that many identical
    runs at once (every core busy, as when P ranks share a node), the median over all."""
    every = max(1, steps // 5)
    runs = []
    for c in range(copies):
        d = os.path.join(st.results, "bench", f"{model}-np{ranks}-b{batch}-c{c}")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        # copies side by side: not bound (as launch(): each job would be bound to core 0)
        bind = ["--bind-to", "none"] if copies > 1 else []
        argv = (["mpirun", "-np", str(ranks)] + bind + [a.nnprec, "train", "--model",
                 MODELS[model]["spec"], "--global-batch", str(batch), "--steps",
                 str(steps + every), "--log-every", str(every), "--eval-every", str(10 ** 9),
                 "--threads", "1", "--quiet", "--out", d]
                + (["--train-limit", str(st.train_limit)] if st.train_limit else []))
        runs.append((d, subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True)))
    times = []
    for d, proc in runs:
        err = proc.communicate()[1]
        if proc.returncode != 0:
            die(f"the timing run in {d} failed (exit {proc.returncode}): "
                + " ".join((err or "").split()[-30:]))
        rows = read_numeric_csv(os.path.join(d, "train.csv"), ["samples_per_s"])[1:]
        if not rows:
            die(f"{d}/train.csv has no timed rows")
        times += [batch / r["samples_per_s"] for r in rows]
        shutil.rmtree(d, ignore_errors=True)
    return median(times)


def param_bytes(st, a, model):
    out = subprocess.run([a.nnprec, "train", "--model", MODELS[model]["spec"], "--steps", "1",
                          "--train-limit", "8", "--test-limit", "8", "--batch", "8"], env=ENV,
                         check=True, capture_output=True, text=True).stdout
    m = re.search(r"\(([0-9]+) parameters\)", out)
    if not m:
        die(f"nnprec train --model {MODELS[model]['spec']} printed no parameter count")
    return 4 * int(m.group(1).replace(",", ""))


def cmd_bench(st, a):
    """RESULTS/bench.json, the measurements behind the report's modeled time to target:
    seconds per step of one rank at local batches 8 ... 8192 for each model (compute per
    sample), the allreduce time of 2 ranks for message sizes 1/16 ... 16 MiB (fitted as
    alpha + beta x bytes), and 2-rank step times to check the model against."""
    if not os.access(a.nnprec, os.X_OK):
        die(f"{a.nnprec} is not an executable (build first, or give --nnprec)")
    quick = a.quick or st.train_limit
    # one rank's compute is timed with a copy on every core: the model's P ranks compute
    # side by side, sharing memory bandwidth and caches (measured alone, the model was
    # 40-65% optimistic against 2-rank steps)
    copies = max(1, min(os.cpu_count() or 1, 16))
    # a bench of some models keeps the others' step times and the allreduce table already
    # measured (one fit for every model), as write_meta keeps the runs of other models
    path = os.path.join(st.results, "bench.json")
    res = dict(models={}, allreduce={}, compute_copies=copies)
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
            res["models"] = dict(old.get("models", {}))
            res["allreduce"] = dict(old.get("allreduce", {}))
        except (OSError, ValueError) as e:
            die(f"{path}: {why(e)}")
        if res["models"] and old.get("compute_copies") != copies:
            die(f"{path} was timed with {old.get('compute_copies')} copies per node, this machine "
                f"has {copies} cores: time every model here (move the file away) or on that machine")
    sizes = [0.125, 0.25, 1, 4, 16]
    if res["allreduce"]:
        print(f"[bench] allreduce at 2 ranks, kept from {path}: {res['allreduce']}", flush=True)
    else:
        out = subprocess.run(["mpirun", "-np", "2", a.nnprec, "bench", "--allreduce-mb",
                              ",".join("%g" % x for x in sizes)], env=ENV, check=True,
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            f = line.split()
            if len(f) >= 2 and re.fullmatch(r"[0-9.]+", f[0]) and re.fullmatch(r"[0-9.]+", f[1]):
                res["allreduce"]["%g" % float(f[0])] = float(f[1]) / 1e3  # MiB -> seconds
        if len(res["allreduce"]) != len(sizes):
            die("could not read `nnprec bench --allreduce-mb`'s table: " + out[-200:])
        print(f"[bench] allreduce at 2 ranks: {res['allreduce']}", flush=True)
    for m in st.models:
        top = max(st.batches(m))
        locals_ = [b for b in (8, 32, 128, 512, 2048, 8192) if b <= top]
        steps_of = lambda b: 10 if quick else max(10 if m == "resnet8" else 20, min(200, 4096 // b))
        r = dict(param_bytes=param_bytes(st, a, m), step_s={}, step_s_2ranks={})
        for b in locals_:
            r["step_s"][str(b)] = time_steps(st, a, m, 1, b, steps_of(b), copies)
            print(f"[bench] {m} 1 rank ({copies} at once), batch {b}: "
                  f"{1e3 * r['step_s'][str(b)]:.2f} ms/step", flush=True)
        for b in st.batches(m):
            r["step_s_2ranks"][str(b)] = time_steps(st, a, m, 2, b, steps_of(b // 2))
            print(f"[bench] {m} 2 ranks, global batch {b}: "
                  f"{1e3 * r['step_s_2ranks'][str(b)]:.2f} ms/step", flush=True)
        res["models"][m] = r
    os.makedirs(st.results, exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print(f"[bench] wrote {path}")


def cmd_export(st, a):
    """Copy the runs' text files (no checkpoints) into DEST: the tree the report reads. Runs
    still under way (not finished, not diverged) are left out."""
    n = left_out = 0
    keep = (".csv", ".txt", ".json")
    for dirpath, _, files in os.walk(st.results):
        rel = os.path.relpath(dirpath, st.results)
        if "options.txt" in files and run_state(dirpath) == "todo":
            left_out += 1
            continue
        for fn in files:
            if not fn.endswith(keep) or fn == "log.txt" or fn.startswith("plan-"):
                continue
            os.makedirs(os.path.join(a.dest, rel), exist_ok=True)
            shutil.copyfile(os.path.join(dirpath, fn), os.path.join(a.dest, rel, fn))
            n += 1
    print(f"[study] {n} file(s) copied into {a.dest}"
          + (f"; {left_out} run(s) under way left out" if left_out else ""))


ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1")
if os.geteuid() == 0:  # Open MPI refuses root without these (containers, CI machines)
    ENV.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def main():
    ap = ArgParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["run", "plan", "slurm", "bench", "export"])
    ap.add_argument("dest", nargs="?", help="export: the folder to copy the CSVs into")
    ap.add_argument("--results",
                    help="the runs' folder [results/study; with --quick, results/study-quick]")
    ap.add_argument("--nnprec", default=os.path.join(ROOT, "build", "nnprec"))
    ap.add_argument("--quick", action="store_true",
                    help="lenet, global batches 128 and 2048, seed 1, 3 epochs, per-layer "
                         "statistics (about 7 min here, with bench and the report)")
    ap.add_argument("--jobs", type=positive_int, default=2,
                    help="runs at once (local), array tasks at once (slurm) [2]")
    ap.add_argument("--ranks", type=positive_int, default=1, help="MPI ranks per run [1]")
    ap.add_argument("--models", nargs="+", help=f"a subset of {', '.join(MODELS)}")
    ap.add_argument("--procs", nargs="+", help="a subset of the procedures")
    ap.add_argument("--batches", type=positive_int, nargs="+", help="override the global batches")
    ap.add_argument("--seeds", type=positive_int, nargs="+", help="override the seeds [1 2 3]")
    ap.add_argument("--epochs", type=positive_int, help="override the epoch budget")
    ap.add_argument("--train-limit", type=positive_int, default=0,
                    help="tests only: use the first N training samples (the study uses all)")
    ap.add_argument("--val-split", type=positive_int, help="validation samples [5000]")
    ap.add_argument("--max-runs", type=int, help="run: stop starting runs after this many")
    ap.add_argument("--sbatch", default="",
                    help='slurm: more sbatch options, e.g. "-t 1:00:00 -p batch" []')
    a = ap.parse_args()
    if a.results is None:
        a.results = os.path.join(ROOT, "results", "study-quick" if a.quick else "study")
    if (a.action == "export") != bool(a.dest):
        ap.error("export needs DEST" if a.action == "export" else f"{a.action} takes no DEST")
    a.sbatch_args = a.sbatch.split()
    for m in a.models or []:
        if m not in MODELS:
            ap.error(f"--models: no model {m} (choose from {', '.join(MODELS)})")
    for p in a.procs or []:
        if p not in PROCEDURES:
            ap.error(f"--procs: no procedure {p} (choose from {', '.join(PROCEDURES)})")
    st = Study(a)
    if st.n_train() < 1:
        ap.error("--val-split leaves no training samples")
    if STUDY["tune_seed"] not in st.seeds:
        st.seeds = [STUDY["tune_seed"]] + st.seeds
    if a.action == "plan":
        cmd_plan(st)
    elif a.action == "run":
        cmd_run(st, a)
    elif a.action == "bench":
        cmd_bench(st, a)
    elif a.action == "slurm":
        if not os.access(a.nnprec, os.X_OK):
            die(f"{a.nnprec} is not an executable (build first, or give --nnprec)")
        if shutil.which("sbatch") is None:
            die("sbatch is not on PATH (no Slurm here: use `study.py run`)")
        cmd_slurm(st, a)
    else:
        cmd_export(st, a)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except (OSError, subprocess.CalledProcessError) as e:
        die(why(e))
