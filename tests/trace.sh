#!/usr/bin/env bash
# --trace FILE.json (docs/usage.md "Trace view"): the Chrome/Perfetto timeline of every
# rank's phases over --trace-steps, gathered to rank 0.
#   * it parses as trace-event JSON; every rank is a named process;
#   * every rank has each per-step phase of its mode exactly once in every traced step
#     (fused: data, forward, backward, allreduce wait, allreduce, optimizer, stop check;
#     sharded adds allgather; bucketed has the communication thread's buckets instead, on
#     a second, named thread), and evaluation/checkpoint at the steps that have them;
#   * no event outside the window; per (rank, thread) no two events overlap, and within a
#     step the training loop's phases come in the loop's order;
#   * the training is the same with and without --trace (train.csv bit for bit);
#   * the default window is the run's first 20 steps, a resumed run's included;
#   * bad windows and unwritable files: one line and a non-zero exit.
# usage: trace.sh NNPREC MPIEXEC
set -uo pipefail
nnprec=$1 mpiexec=$2
source "$(dirname "$0")/cli_lib.sh"
py=$(command -v python3)

run=(train --model mlp:784-32-32-10 --train-limit 1024 --test-limit 256 --global-batch 64
     --log-every 5 --quiet)

# check.py FILE RANKS A B PHASES... [-- EXTRA_PHASE:STEP...]: the checks above
cat > "$tmp/check.py" <<'EOF'
import json, sys
from collections import defaultdict
path, ranks, a, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rest = sys.argv[5:]
extra = rest[rest.index("--") + 1:] if "--" in rest else []
per_step = rest[:rest.index("--")] if "--" in rest else rest
d = json.load(open(path))
ev = d["traceEvents"]
names = {e["pid"]: e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "process_name"}
assert names == {r: "rank %d" % r for r in range(ranks)}, names
x = [e for e in ev if e["ph"] == "X"]
assert x, "no events"
count = defaultdict(int)
for e in x:
    s = e["args"]["step"]
    assert a <= s <= b, "event outside the window: %r" % e
    assert e["dur"] >= 0, e
    count[(e["pid"], e["name"], s)] += 1
for r in range(ranks):
    for s in range(a, b + 1):
        for p in per_step:
            n = count[(r, p, s)]
            if p == "allreduce bucket":
                assert n >= 1, "rank %d step %d: no bucket" % (r, s)
            else:
                assert n == 1, "rank %d step %d: %s %d times" % (r, s, p, n)
    for ps in extra:
        p, s = ps.rsplit(":", 1)
        assert count[(r, p, int(s))] == 1, "rank %d: no %s at step %s" % (r, p, s)
order = ["data", "forward", "backward", "allreduce wait", "allreduce", "preconditioner",
         "stats", "optimizer", "allgather", "stop check", "evaluation", "checkpoint"]
threads = defaultdict(list)
for e in x:
    threads[(e["pid"], e["tid"])].append(e)
for (pid, tid), es in threads.items():
    es.sort(key=lambda e: (e["ts"], e["ts"] + e["dur"]))
    for u, v in zip(es, es[1:]):
        assert u["ts"] + u["dur"] <= v["ts"] + 1e-3, "overlap on rank %d thread %d: %r %r" % (pid, tid, u, v)
        if tid == 0 and u["args"]["step"] == v["args"]["step"] and u["name"] in order and v["name"] in order:
            assert order.index(u["name"]) <= order.index(v["name"]), (u, v)
if "allreduce bucket" in per_step:
    tn = {(e["pid"], e["tid"]): e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "thread_name"}
    assert all(tn.get((r, 1)) == "communication thread" for r in range(ranks)), tn
print("%s: %d events, %d ranks, steps %d..%d" % (path, len(x), ranks, a, b))
EOF
fused=(data forward backward "allreduce wait" allreduce optimizer "stop check")

# fused, 2 ranks, a window with an evaluation and a checkpoint in it; the run itself
"$mpiexec" -n 2 "$nnprec" "${run[@]}" --steps 16 --eval-every 6 --checkpoint-every 4 \
  --out "$tmp/fused" --trace "$tmp/fused.json" --trace-steps 3:9 > "$tmp/log" 2>&1 ||
  fail "fused run: $(tail -3 "$tmp/log")"
"$py" "$tmp/check.py" "$tmp/fused.json" 2 3 9 "${fused[@]}" -- evaluation:6 checkpoint:4 \
  checkpoint:8 && ok || fail "fused trace"
"$mpiexec" -n 2 "$nnprec" "${run[@]}" --steps 16 --eval-every 6 --checkpoint-every 4 \
  --out "$tmp/plain" > "$tmp/log" 2>&1 || fail "plain run: $(tail -3 "$tmp/log")"
cmp -s <(cut -d, -f1-5 "$tmp/fused/train.csv") <(cut -d, -f1-5 "$tmp/plain/train.csv") && ok ||
  fail "--trace changed the training: $(diff "$tmp/fused/train.csv" "$tmp/plain/train.csv" | head -4)"

# scripts/plot_trace.py draws it and prints each phase's time per step
if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c "import matplotlib" 2> /dev/null; then
  /usr/bin/python3 "$(dirname "$0")/../scripts/plot_trace.py" "$tmp/fused.json" --steps 4:6 \
    --out "$tmp/fused.png" > "$tmp/plot.log" 2>&1 && [ -s "$tmp/fused.png" ] &&
    grep -q "2 rank(s), steps 4..6" "$tmp/plot.log" && grep -q "^allreduce wait " "$tmp/plot.log" &&
    ok || fail "plot_trace.py: $(tail -3 "$tmp/plot.log")"
else
  fail "plot_trace.py needs /usr/bin/python3 with matplotlib (scripts/install-deps.sh)"
fi

# sharded (3 ranks) with the dynamic preconditioner; bucketed, whose buckets run on the
# communication thread
"$mpiexec" -n 3 --oversubscribe "$nnprec" "${run[@]}" --global-batch 63 --steps 8 \
  --allreduce sharded --precond dynamic --trace "$tmp/sharded.json" > "$tmp/log" 2>&1 ||
  fail "sharded run: $(tail -3 "$tmp/log")"
"$py" "$tmp/check.py" "$tmp/sharded.json" 3 1 8 "${fused[@]}" preconditioner allgather &&
  ok || fail "sharded trace"
"$mpiexec" -n 2 "$nnprec" "${run[@]}" --steps 6 --allreduce bucketed --bucket-mb 0.004 \
  --trace "$tmp/bucketed.json" > "$tmp/log" 2>&1 || fail "bucketed run: $(tail -3 "$tmp/log")"
"$py" "$tmp/check.py" "$tmp/bucketed.json" 2 1 6 data forward backward "allreduce wait" \
  optimizer "stop check" "allreduce bucket" && ok || fail "bucketed trace"

# the default window: the first 20 steps of the run; of a resumed run, its own first 20
"$nnprec" "${run[@]}" --steps 30 --out "$tmp/res" --checkpoint-every 10 \
  --trace "$tmp/one.json" > "$tmp/log" 2>&1 || fail "one rank: $(tail -3 "$tmp/log")"
"$py" "$tmp/check.py" "$tmp/one.json" 1 1 20 data forward backward optimizer "stop check" &&
  ok || fail "default window"
"$nnprec" "${run[@]}" --steps 30 --out "$tmp/res2" --resume "$tmp/res/ckpt-00000010.h5" \
  --trace "$tmp/resumed.json" \
  > "$tmp/log" 2>&1 || fail "resumed: $(tail -3 "$tmp/log")"
"$py" "$tmp/check.py" "$tmp/resumed.json" 1 11 30 data forward backward optimizer "stop check" \
  -- checkpoint:30 evaluation:30 && ok || fail "resumed window"

# a window outside the run: a warning, and a file without events
"$nnprec" "${run[@]}" --steps 4 --trace "$tmp/empty.json" --trace-steps 10:12 > "$tmp/log" 2>&1 ||
  fail "window outside the run: $(tail -3 "$tmp/log")"
grep -q "^\[warn\]  --trace-steps 10:12 lies outside this run's steps 1..4" "$tmp/log" && ok ||
  fail "no warning for a window outside the run: $(cat "$tmp/log")"
"$py" -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(any(e['ph']=='X' for e in d['traceEvents']))" \
  "$tmp/empty.json" && ok || fail "events in an empty window"

expect 2 "--trace-steps expects A:B with 1 <= A <= B, got '5:2'" "$nnprec" "${run[@]}" --steps 4 \
  --trace "$tmp/t.json" --trace-steps 5:2
expect 2 "--trace-steps expects A:B" "$nnprec" "${run[@]}" --steps 4 --trace "$tmp/t.json" --trace-steps 0:3
expect 2 "--trace-steps goes with --trace" "$nnprec" "${run[@]}" --steps 4 --trace-steps 1:3
expect 2 "spans more than 100000 steps" "$nnprec" "${run[@]}" --steps 4 --trace "$tmp/t.json" \
  --trace-steps 1:100001
expect 1 "cannot write the trace $tmp/no/such/dir/t.json: No such file or directory" \
  "$mpiexec" -n 2 "$nnprec" "${run[@]}" --steps 4 --trace "$tmp/no/such/dir/t.json"
finish trace
