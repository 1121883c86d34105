#!/usr/bin/python3
"""Single-rank training speed: nnprec vs PyTorch on CPU, same model, batch and thread count.

For each case (LeNet batch 64, mlp:784-1024x4-10 batch 256, resnet8 batch 128) it
alternates nnprec and PyTorch runs --rounds times (the machine is shared, so interleaving
keeps both under the same load) and reports the median samples/s of each, and their ratio.
For the MLP it also prints the GFLOP/s nnprec achieves as a fraction of what cblas_sgemm
reaches on exactly the same GEMM shapes in the same run (`nnprec bench`), and which
OpenBLAS kernel ran. Beside the speeds: each process's peak resident memory (the kernel's
maximum RSS of the child, from wait4), the largest over the rounds.

  scripts/bench_speed.py [--nnprec build/nnprec] [--rounds 3] [--models lenet resnet8]
  scripts/bench_speed.py --models lenet --also /tmp/old/nnprec   # two builds, one run
"""
import argparse
import csv
import os
import re
import statistics
import subprocess
import tempfile

from clitools import ArgParser, die, why, positive_int

PROG = "bench_speed.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [("lenet", 64, 400), ("mlp:784-1024x4-10", 256, 60), ("resnet8", 128, 40)]


def run_rss(cmd, capture=False):
    """Run cmd; (its stdout or None, its peak resident memory in MB from wait4)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE if capture else None, text=True)
    out = p.stdout.read() if capture else None
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise subprocess.CalledProcessError(p.returncode, cmd)
    return out, ru.ru_maxrss / 1024.0


def nnprec_sps(nnprec, model, batch, steps, threads):
    with tempfile.TemporaryDirectory() as d:
        log_every = max(steps // 5, 1)
        cmd = [nnprec, "train", "--model", model, "--batch", str(batch), "--steps", str(steps),
               "--threads", str(threads), "--log-every", str(log_every), "--eval-every",
               str(10 ** 9), "--test-limit", "100", "--check-replicas", "0", "--quiet", "--out", d]
        _, rss = run_rss(cmd, capture=True)  # its [done] line is not this table's
        rows = list(csv.DictReader(open(os.path.join(d, "train.csv"))))
        # the first interval includes warm-up (page faults, OpenBLAS buffers)
        return statistics.median(float(r["samples_per_s"]) for r in rows[1:]), rss


def torch_sps(model, batch, steps, threads):
    out, rss = run_rss(["/usr/bin/python3", os.path.join(ROOT, "scripts", "torch_ref.py"), "bench",
                        "--model", model, "--batch", str(batch), "--steps", str(steps),
                        "--threads", str(threads)], capture=True)
    m = re.search(r"samples_per_s: ([\d.]+)", out)
    if not m:
        die(f"torch_ref.py printed no 'samples_per_s:' line: {out.strip()[-200:]}")
    return float(m.group(1)), out.splitlines()[0], rss


def main():
    ap = ArgParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nnprec", default=os.path.join(ROOT, "build", "nnprec"))
    ap.add_argument("--rounds", type=positive_int, default=3)
    ap.add_argument("--threads", type=positive_int, default=1)
    ap.add_argument("--models", nargs="+", choices=[c[0].split(":")[0] for c in CASES],
                    help="only these cases (default: all three)")
    ap.add_argument("--also", metavar="NNPREC",
                    help="a second nnprec build, run in the same rounds (its samples/s and its "
                         "ratio to PyTorch on the next line): compare builds within one run")
    a = ap.parse_args()
    for exe in [a.nnprec] + ([a.also] if a.also else []):
        if not os.access(exe, os.X_OK):
            die(f"{exe} is not an executable (build first)")
    env_core = os.environ.get("OPENBLAS_CORETYPE", "(unset)")
    print(f"OPENBLAS_CORETYPE={env_core}; threads per process: {a.threads}")
    gemm = subprocess.run([a.nnprec, "bench", "--model", CASES[1][0], "--batch", str(CASES[1][1]),
                           "--threads", str(a.threads)], check=True, capture_output=True, text=True).stdout
    total = re.search(r"total: ([\d.]+) ms per step of batch (\d+), ([\d.]+) GFLOP, ([\d.]+) GFLOP/s", gemm)
    if not total:
        die(f"`{a.nnprec} bench` printed no 'total: ... GFLOP/s' line")
    print(gemm.splitlines()[0])
    gflop_step, gemm_rate = float(total.group(3)), float(total.group(4))
    print(f"{'model':<20} {'batch':>5} {'nnprec samples/s':>17} {'torch samples/s':>16} {'ratio':>6}"
          f" {'nnprec MB':>10} {'torch MB':>9}")
    tver = ""
    for model, batch, steps in CASES:
        if a.models and model.split(":")[0] not in a.models:
            continue
        ours, also, theirs, mem_o, mem_a, mem_t = [], [], [], 0.0, 0.0, 0.0
        for _ in range(a.rounds):
            o, r = nnprec_sps(a.nnprec, model, batch, steps, a.threads)
            ours.append(o)
            mem_o = max(mem_o, r)
            if a.also:
                o, r = nnprec_sps(a.also, model, batch, steps, a.threads)
                also.append(o)
                mem_a = max(mem_a, r)
            t, tver, r = torch_sps(model, batch, steps, a.threads)
            theirs.append(t)
            mem_t = max(mem_t, r)
        o, t = statistics.median(ours), statistics.median(theirs)
        print(f"{model:<20} {batch:>5} {o:>17.0f} {t:>16.0f} {o / t:>6.2f}x {mem_o:>10.0f} "
              f"{mem_t:>9.0f}", flush=True)
        if a.also:
            x = statistics.median(also)
            print(f"  --also {a.also}: {x:.0f} samples/s, {x / t:.2f}x PyTorch, "
                  f"{mem_a:.0f} MB", flush=True)
        if model.startswith("mlp"):
            achieved = o / batch * gflop_step
            print(f"  MLP: nnprec {achieved:.1f} GFLOP/s = {100 * achieved / gemm_rate:.0f}% of "
                  f"cblas_sgemm on the same shapes ({gemm_rate:.1f} GFLOP/s); PyTorch "
                  f"{t / batch * gflop_step:.1f} GFLOP/s = {100 * t / batch * gflop_step / gemm_rate:.0f}%")
    print(f"({tver}; medians of {a.rounds} interleaved rounds)")


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, subprocess.CalledProcessError) as e:
        die(why(e))
