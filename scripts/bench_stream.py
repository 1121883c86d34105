#!/usr/bin/python3
"""Streaming benchmark (docs/data.md): training speed with the training set streamed from
HDF5 (--stream) against the same set held in memory, in the same run of this script.

Writes a generated set of --size bytes (scripts/make_h5_dataset.py, row chunks of 1024
samples, uncompressed) unless --file names one, then trains LeNet, global batch 64 per rank,
on --ranks ranks for --steps steps, in rounds of four variants:

  memory        every rank holds the whole set (the default below --data-memory-mb)
  stream        --stream, the uniform permutation: random rows
  stream-block  --stream --shuffle block (blocks of 1024 samples, shuffled within 16 blocks)
  memory-block  in memory with the same block order (its accuracy twin)

Before every streamed run the file is dropped from the page cache where this process may
(`echo 1 > /proc/sys/vm/drop_caches`, root; else posix_fadvise DONTNEED on the file), so
streaming reads from the disk; the script says which it could do. It reports each
variant's training samples/s (train.csv, the evaluation and checkpoint time excluded), the
ratio to `memory`, the mean step's wait for data (timing.csv data_wait) and the reader
thread's time (prefetch), and each rank's peak memory (ranks.csv), as a table and as
OUT/bench_stream.csv.

  scripts/bench_stream.py --size 4G --ranks 2 --steps 3000
  scripts/bench_stream.py --file big.h5 --rounds 3
"""
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from clitools import ArgParser, die, positive_int

PROG = "bench_stream.py"
HERE = os.path.dirname(os.path.abspath(__file__))
MEM = ["--data-memory-mb", "1000000"]  # in memory whatever the set's size
VARIANTS = [
    ("memory", MEM),
    ("stream", ["--stream"]),
    ("stream-block", ["--stream", "--shuffle", "block"]),
    ("memory-block", MEM + ["--shuffle", "block"]),
]


def drop_cache(path):
    """Drop path from the page cache: the whole cache as root, else the file's pages."""
    try:
        subprocess.run(["sync"], check=False)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return "drop_caches"
    except OSError:
        pass
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return "fadvise"
    except (OSError, AttributeError):
        return "none"


def last_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def run_variant(a, name, extra, data, out):
    cmd = [a.mpiexec, "-n", str(a.ranks), "--oversubscribe", "--bind-to", "none", a.nnprec,
           "train", "--model", "lenet", "--data", data, "--steps", str(a.steps),
           "--global-batch", str(64 * a.ranks), "--log-every", str(a.steps // 4 or 1),
           "--eval-every", str(a.steps), "--test-limit", "1000", "--threads", "1",
           "--quiet", "--out", out] + extra
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OPENBLAS_NUM_THREADS="1")
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        die("%s: nnprec failed (exit %d): %s" % (name, p.returncode,
                                                 (p.stderr.strip().splitlines() or ["?"])[-1]))
    train = last_rows(os.path.join(out, "train.csv"))
    # samples/s over the log intervals after the first (the reader's start-up excluded)
    steps = [float(r["step"]) for r in train]
    walls = [float(r["wall_s"]) for r in train]
    if len(train) >= 2:
        sps = (steps[-1] - steps[0]) * 64 * a.ranks / (walls[-1] - walls[0])
    else:
        sps = float(train[-1]["samples_per_s"])
    tim = {}
    for r in last_rows(os.path.join(out, "timing.csv")):
        tim.setdefault(r["phase"], 0.0)
        tim[r["phase"]] += float(r["max_s"])
    ranks = last_rows(os.path.join(out, "ranks.csv"))
    rss = max(float(r["peak_rss_mb"]) for r in ranks)
    return dict(sps=sps, wait_ms=1000 * tim.get("data_wait", 0) / a.steps,
                data_ms=1000 * tim.get("data", 0) / a.steps,
                prefetch_ms=1000 * tim.get("prefetch", 0) / a.steps, rss=rss, wall=wall)


def main():
    ap = ArgParser(prog=PROG, description=__doc__.split("\n\n")[0],
                   epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--nnprec", default="build/nnprec")
    ap.add_argument("--mpiexec", default="mpiexec")
    ap.add_argument("--file", help="an existing HDF5 set (else one is generated)")
    ap.add_argument("--size", default="4G", help="the generated set's size [4G]")
    ap.add_argument("--dir", help="where the generated set and the runs go [a temporary "
                                  "folder under the current one, removed at the end]")
    ap.add_argument("--ranks", type=positive_int, default=2)
    ap.add_argument("--steps", type=positive_int, default=2000)
    ap.add_argument("--rounds", type=positive_int, default=1)
    ap.add_argument("--out", default=".", help="folder for bench_stream.csv [.]")
    a = ap.parse_args()
    if not (os.path.isfile(a.nnprec) and os.access(a.nnprec, os.X_OK)):
        die("%s is not an executable (build first, or give --nnprec)" % a.nnprec)
    if shutil.which(a.mpiexec) is None:
        die("%s not found (give --mpiexec)" % a.mpiexec)
    if a.file and not os.path.isfile(a.file):
        die("%s: no such file" % a.file)
    if not os.path.isdir(a.out):
        die("%s: no such folder" % a.out)
    work = a.dir or tempfile.mkdtemp(prefix="bench-stream.", dir=".")
    os.makedirs(work, exist_ok=True)
    try:
        data = a.file
        if not data:
            data = os.path.join(work, "set.h5")
            if not os.path.exists(data):
                print("[bench] generating %s of %s" % (data, a.size), flush=True)
                p = subprocess.run([sys.executable, os.path.join(HERE, "make_h5_dataset.py"),
                                    data, "--size", a.size])
                if p.returncode != 0:
                    die("make_h5_dataset.py failed")
        mb = os.path.getsize(data) / 2**20
        print("# nnprec streaming benchmark: LeNet, %d ranks x batch 64, %d steps, %s (%.0f MiB)"
              % (a.ranks, a.steps, data, mb), flush=True)
        rows = []
        for rnd in range(1, a.rounds + 1):
            for name, extra in VARIANTS:
                how = drop_cache(data) if "--stream" in extra else "-"
                out = os.path.join(work, "r%d-%s" % (rnd, name))
                shutil.rmtree(out, ignore_errors=True)
                r = run_variant(a, name, extra, data, out)
                r.update(round=rnd, variant=name, cache=how)
                rows.append(r)
                print("[bench] round %d %-12s %8.0f samples/s  data wait %6.3f ms/step  "
                      "reader %6.3f ms/step  peak %6.0f MB  (page cache: %s, %.0f s)"
                      % (rnd, name, r["sps"], r["wait_ms"], r["prefetch_ms"], r["rss"], how,
                         r["wall"]), flush=True)
        base = statistics.median(r["sps"] for r in rows if r["variant"] == "memory")
        print("\n| variant | samples/s (median) | vs memory | data wait ms/step | reader ms/step "
              "| peak MB per rank |")
        print("|---|---|---|---|---|---|")
        for name, _ in VARIANTS:
            rs = [r for r in rows if r["variant"] == name]
            sps = statistics.median(r["sps"] for r in rs)
            print("| %s | %.0f | %.2f | %.3f | %.3f | %.0f |"
                  % (name, sps, sps / base, statistics.median(r["wait_ms"] for r in rs),
                     statistics.median(r["prefetch_ms"] for r in rs),
                     max(r["rss"] for r in rs)))
        path = os.path.join(a.out, "bench_stream.csv")
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["round", "variant", "sps", "wait_ms", "data_ms",
                                              "prefetch_ms", "rss", "wall", "cache"])
            w.writeheader()
            for r in rows:
                w.writerow(r)
        print("\nwrote %s" % path)
    finally:
        if not a.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
