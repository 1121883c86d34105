#!/usr/bin/env bash
# slurm/train.sbatch under a real one-node Slurm (scripts/slurm-local.sh): a 2-task LeNet
# run gets SIGUSR1 on its batch shell (what --signal=B:USR1@120 sends before the time
# limit), checkpoints, exits 75, requeues itself, resumes from the checkpoint and finishes.
# Checks: the job was restarted exactly once and completed with exit code 0, the log shows
# the signal, the stop at a checkpoint, the requeue and the resume from that checkpoint, the
# final checkpoint holds the requested step count, and train.csv runs without a gap.
#
# usage: tests/slurm_requeue.sh [NNPREC]     (as root; default NNPREC: build/nnprec)
# Environment: SLURM_TEST_LAUNCH  launchers to test, in turn     [srun mpirun]
#              SLURM_TEST_STEPS   training steps per job (3000: about 35 s here) [3000]
# Slurm is started if it is not running and then stopped again on exit; one that was
# already up is left running.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
nnprec=$(realpath "${1:-$root/build/nnprec}")
launchers=${SLURM_TEST_LAUNCH:-srun mpirun}
steps=${SLURM_TEST_STEPS:-3000}
t_start=$SECONDS
passes=0 fails=0
ok() { passes=$((passes + 1)); echo "ok: $*"; }
fail() { fails=$((fails + 1)); echo "FAIL: $*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else fail "$what"; fi; }
say() { echo "[slurm_requeue +$((SECONDS - t_start))s] $*"; }

[ -x "$nnprec" ] || { echo "slurm_requeue.sh: $nnprec is not an executable" >&2; exit 1; }
tmp=$(mktemp -d)
started_slurm=0
cleanup() {
    [ "$started_slurm" = 1 ] && bash "$root/scripts/slurm-local.sh" down > /dev/null 2>&1
    rm -rf "$tmp"
}
trap cleanup EXIT
if ! bash "$root/scripts/slurm-local.sh" status > /dev/null 2>&1; then
    started_slurm=1
    bash "$root/scripts/slurm-local.sh" up > "$tmp/up.log" 2>&1 || { cat "$tmp/up.log"; exit 1; }
fi
say "slurm up"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1

# steps of one stored checkpoint: h5dump prints "(0): 4000" for the scalar attribute
ckpt_step() { h5dump -a /step "$1" 2>/dev/null | sed -n 's/^ *(0): *\([0-9]*\).*/\1/p'; }

for launch in $launchers; do
    out=$tmp/run-$launch
    say "$launch: submitting ($steps steps of LeNet on 2 tasks)"
    # 4000 samples, global batch 32: 125 steps per epoch; a checkpoint every 20 steps
    NNPREC=$nnprec OUT=$out LAUNCH=$launch \
        timeout 300 sbatch --wait --parsable -n 2 --time=10 --chdir="$tmp" \
        "$root/slurm/train.sbatch" --model lenet --train-limit 4000 --test-limit 1000 \
        --global-batch 32 --steps "$steps" --eval-every 1000 --log-every 50 \
        --checkpoint-every 20 --keep 2 --seed 5 > "$tmp/sbatch-$launch.txt" 2>&1 &
    sbatch_pid=$!
    job=
    for _ in $(seq 100); do
        job=$(grep -Eo '^[0-9]+' "$tmp/sbatch-$launch.txt" | head -n 1)
        [ -n "$job" ] && break
        sleep 0.1
    done
    if [ -z "$job" ]; then fail "$launch: sbatch gave no job id: $(cat "$tmp/sbatch-$launch.txt")"; continue; fi
    log=$tmp/nnprec-train-$job.out
    # let it train past a few checkpoints, then send what --signal=B:USR1 would send
    for _ in $(seq 600); do
        s=$(sed -n 's/^ckpt-0*\([0-9][0-9]*\)\.h5$/\1/p' "$out/latest" 2>/dev/null)
        [ -n "$s" ] && [ "$s" -ge 200 ] && break
        sleep 0.1
    done
    say "$launch: job $job at checkpoint step ${s:-none}: scancel --batch --signal=USR1"
    scancel --batch --signal=USR1 "$job"
    t_sig=$SECONDS
    wait "$sbatch_pid"
    rc=$?
    say "$launch: job $job ended, sbatch --wait exit code $rc ($((SECONDS - t_sig)) s after the signal)"

    info=$(scontrol show job "$job" 2>/dev/null)
    check "$launch: sbatch --wait exit code 0" [ "$rc" = 0 ]
    check "$launch: JobState=COMPLETED ExitCode=0:0" \
        grep -q 'JobState=COMPLETED' <<<"$info"
    grep -q 'ExitCode=0:0' <<<"$info" || fail "$launch: $(grep -o 'ExitCode=[^ ]*' <<<"$info")"
    check "$launch: restarted exactly once (Restarts=1)" grep -q 'Restarts=1 ' <<<"$info"
    check "$launch: the batch shell got SIGUSR1" grep -q 'got SIGUSR1' "$log"
    stop=$(sed -n 's/^\[stop\]  stop request (\(SIGUSR1\|stop file\)) after step \([0-9]*\):.*/\2/p' "$log" | head -n 1)
    check "$launch: the ranks stopped at a checkpoint (step ${stop:-?})" \
        eval '[ -n "$stop" ] && [ "$stop" -gt 0 ] && [ "$stop" -lt "$steps" ]'
    check "$launch: step exit code 75, then requeued" \
        eval 'grep -q "step exit code 75" "$log" && grep -q "requeueing job $job" "$log" &&
              grep -q "JOB $job .* DUE TO JOB REQUEUE" "$log"'
    check "$launch: restart 1 names that checkpoint" \
        eval 'grep -q " restart 1 on " "$log" &&
              grep -Eq "checkpoint to resume from: .*/ckpt-0*${stop:-x}\.h5$" "$log"'
    check "$launch: nnprec resumed at step $stop" \
        grep -Eq "^\[ckpt\]  resumed from .*ckpt-0*${stop:-x}\.h5 at step ${stop:-x} " "$log"
    check "$launch: second run ended with exit code 0" grep -q 'step exit code 0' "$log"
    last=$out/$(cat "$out/latest" 2>/dev/null)
    check "$launch: final checkpoint holds step $steps" [ "$(ckpt_step "$last")" = "$steps" ]
    check "$launch: train.csv steps increase up to $steps without repeats" \
        awk -F, -v n="$steps" 'NR > 1 { if ($1 <= p) bad = 1; p = $1 } END { exit bad || p != n }' \
        "$out/train.csv"
    if [ "$fails" -gt 0 ]; then
        echo "---- $log"; cat "$log"; echo "---- scontrol show job $job"; echo "$info"
    fi
done

echo "slurm_requeue: $((SECONDS - t_start)) s"
echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
