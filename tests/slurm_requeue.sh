#!/usr/bin/env bash
# slurm/train.sbatch under a real one-node Slurm (scripts/slurm-local.sh): a 2-task LeNet
# run gets SIGUSR1 on its batch shell (what --signal=B:USR1@120 sends before the time
# limit), checkpoints, exits 75, requeues itself, resumes from the checkpoint and finishes.
# With srun, the signal is sent by hand (scancel --batch --signal=USR1); with mpirun, Slurm's
# own timer sends it: the job has a one-minute limit and --signal=B:USR1@55, so it is
# signalled and requeued (once or more) until its training is done.
# Checks: the job was restarted (exactly once with srun) and completed with exit code 0, the
# log shows the signal, the stop at a checkpoint, the requeue and the resume from that
# checkpoint, the final checkpoint holds the requested step count, train.csv runs without a
# gap, and (mpirun) the final parameters equal those of the same run left uninterrupted, bit
# for bit.
#
# usage: tests/slurm_requeue.sh [NNPREC]     (as root; default NNPREC: build/nnprec)
# Environment: SLURM_TEST_LAUNCH  launchers to test, in turn     [srun mpirun]
#              SLURM_TEST_STEPS   training steps per job (3000: about 35 s here) [3000]
#              SLURM_TEST_TIMER_STEPS  the same for the timer-signalled job     [4000]
#              SLURM_TEST_STUDY   0: skip the study part                         [1]
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

# 4000 samples, global batch 32: 125 steps per epoch; a checkpoint every 20 steps
train_args=(--model lenet --train-limit 4000 --test-limit 1000 --global-batch 32 --eval-every 1000
            --log-every 50 --checkpoint-every 20 --keep 2 --seed 5)
timer_steps=${SLURM_TEST_TIMER_STEPS:-4000}
same_params() { # same_params A.h5 B.h5: every parameter dataset of LeNet identical
    for g in conv1 conv2 fc1 fc2 fc3; do
        for d in weight bias; do
            h5diff -q "$1" "$2" "/$g/$d" "/$g/$d" > /dev/null || return 1
        done
    done
}
ref_pid=
if [[ " $launchers " == *" mpirun "* ]]; then
    # the timer-signalled job's uninterrupted twin, outside Slurm, meanwhile
    timeout 600 mpirun -np 2 "$nnprec" train "${train_args[@]}" --steps "$timer_steps" --quiet \
        --out "$tmp/ref" > "$tmp/ref.log" 2>&1 &
    ref_pid=$!
fi

for launch in $launchers; do
    out=$tmp/run-$launch
    # the timer's job must outlast the signal (5-35 s into each run) on any machine: rank 0
    # sleeps 600 us per sample (NNPREC_FAULT_SLOW, a test hook that changes no number), so
    # 4000 steps of 16 samples take at least 38 s
    slow=
    if [ "$launch" = mpirun ]; then n=$timer_steps; lim=(--time=1 --signal=B:USR1@55); slow=0:600; else n=$steps; lim=(--time=10); fi
    say "$launch: submitting ($n steps of LeNet on 2 tasks, ${lim[*]})"
    NNPREC_FAULT_SLOW=$slow NNPREC=$nnprec OUT=$out LAUNCH=$launch \
        timeout 400 sbatch --wait --parsable -n 2 "${lim[@]}" --chdir="$tmp" \
        "$root/slurm/train.sbatch" "${train_args[@]}" --steps "$n" > "$tmp/sbatch-$launch.txt" 2>&1 &
    sbatch_pid=$!
    job=
    for _ in $(seq 100); do
        job=$(grep -Eo '^[0-9]+' "$tmp/sbatch-$launch.txt" | head -n 1)
        [ -n "$job" ] && break
        sleep 0.1
    done
    if [ -z "$job" ]; then fail "$launch: sbatch gave no job id: $(cat "$tmp/sbatch-$launch.txt")"; continue; fi
    log=$tmp/nnprec-train-$job.out
    if [ "$launch" != mpirun ]; then
        # let it train past a few checkpoints, then send what --signal=B:USR1 would send
        for _ in $(seq 600); do
            s=$(sed -n 's/^ckpt-0*\([0-9][0-9]*\)\.h5$/\1/p' "$out/latest" 2>/dev/null)
            [ -n "$s" ] && [ "$s" -ge 200 ] && break
            sleep 0.1
        done
        say "$launch: job $job at checkpoint step ${s:-none}: scancel --batch --signal=USR1"
        scancel --batch --signal=USR1 "$job"
    fi
    t_sig=$SECONDS
    wait "$sbatch_pid"
    rc=$?
    say "$launch: job $job ended, sbatch --wait exit code $rc ($((SECONDS - t_sig)) s after the signal)"

    info=$(scontrol show job "$job" 2>/dev/null)
    check "$launch: sbatch --wait exit code 0" [ "$rc" = 0 ]
    check "$launch: JobState=COMPLETED ExitCode=0:0" \
        grep -q 'JobState=COMPLETED' <<<"$info"
    grep -q 'ExitCode=0:0' <<<"$info" || fail "$launch: $(grep -o 'ExitCode=[^ ]*' <<<"$info")"
    if [ "$launch" = mpirun ]; then
        check "$launch: restarted by Slurm's timer ($(grep -o 'Restarts=[0-9]*' <<<"$info"))" \
            grep -Eq 'Restarts=[1-9][0-9]* ' <<<"$info"
    else
        check "$launch: restarted exactly once (Restarts=1)" grep -q 'Restarts=1 ' <<<"$info"
    fi
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
    check "$launch: the last run ended with exit code 0" grep -q 'step exit code 0' "$log"
    last=$out/$(cat "$out/latest" 2>/dev/null)
    check "$launch: final checkpoint holds step $n" [ "$(ckpt_step "$last")" = "$n" ]
    check "$launch: train.csv steps increase up to $n without repeats" \
        awk -F, -v n="$n" 'NR > 1 { if ($1 <= p) bad = 1; p = $1 } END { exit bad || p != n }' \
        "$out/train.csv"
    if [ "$launch" = mpirun ]; then
        wait "$ref_pid"
        check "$launch: final parameters equal the uninterrupted run's, bit for bit" \
            same_params "$last" "$tmp/ref/$(cat "$tmp/ref/latest" 2>/dev/null)"
    fi
    if [ "$fails" -gt 0 ]; then
        echo "---- $log"; cat "$log"; echo "---- scontrol show job $job"; echo "$info"
    fi
done

# ---- the large-batch study's Slurm path (scripts/study.py slurm): a tiny study runs as job
# arrays, one wave after the other; one array task gets SIGUSR1 mid-run as the time limit
# would send it, checkpoints, requeues itself and resumes; every cell finishes and the report
# and its plots are produced from the runs.
if [ "${SLURM_TEST_STUDY:-1}" = 1 ]; then
    sres=$tmp/study
    py=/usr/bin/python3
    say "study: scripts/study.py slurm, a tiny study"
    (cd "$tmp" && timeout 400 "$py" "$root/scripts/study.py" slurm --results "$sres" \
        --nnprec "$nnprec" --models lenet --procs e-seed-dynamic --batches 32 --epochs 2 \
        --train-limit 24000 --val-split 2000 --seeds 1 2 --jobs 2 \
        --sbatch "--time=10 --chdir=$tmp" > "$tmp/study.log" 2>&1) &
    study_pid=$!
    # the first task that has logged a training row: signal it as --signal=B:USR1 would
    sig_dir= sig_task=
    for _ in $(seq 600); do
        for f in "$sres"/lenet/b32/*/*/train.csv; do
            [ -s "$f" ] || continue
            d=$(dirname "$f")
            [ -e "$d/diverged.txt" ] && continue
            line=$(grep -n "^$d"$'\t' "$sres/plan-1.tsv" 2>/dev/null | cut -d: -f1)
            [ -n "$line" ] || continue
            arr=$(squeue -h -o '%F %K %T' 2>/dev/null | awk -v t=$((line - 1)) '$2 == t && $3 == "RUNNING" { print $1; exit }')
            [ -n "$arr" ] || continue
            sig_dir=$d sig_task=${arr}_$((line - 1))
            break 2
        done
        sleep 0.1
    done
    if [ -n "$sig_task" ]; then
        say "study: scancel --batch --signal=USR1 $sig_task ($sig_dir)"
        scancel --batch --signal=USR1 "$sig_task"
    else
        fail "study: no running array task with a training row to signal"
    fi
    wait "$study_pid"
    rc=$?
    say "study: study.py slurm exit code $rc"
    check "study: study.py slurm exit code 0" [ "$rc" = 0 ]
    check "study: waves of job arrays" grep -q '^\[study\] wave 1: .*sbatch --wait --array=0-' "$tmp/study.log"
    check "study: every cell done" grep -q '1/1 cells done' "$tmp/study.log"
    if [ -n "$sig_dir" ]; then
        check "study: the signalled task checkpointed, requeued and resumed" \
            eval 'grep -q "got SIGUSR1" "$sig_dir/log.txt" && grep -q "requeueing job" "$sig_dir/log.txt" &&
                  grep -q " restart 1 on " "$sig_dir/log.txt" &&
                  grep -Eq "checkpoint to resume from: .*/ckpt-[0-9]+\.h5$" "$sig_dir/log.txt"'
        check "study: the signalled run finished its budget" \
            eval 'tail -n 1 "$sig_dir/eval.csv" | grep -q "^[0-9]*,2.000000,"'
    fi
    "$py" "$root/scripts/study_report.py" "$sres" --out "$tmp/report.md" > "$tmp/report.log" 2>&1
    check "study: the report and its plots" \
        eval 'grep -q "^| e-seed-dynamic | [0-9.]* ± [0-9.]* |$" "$tmp/report.md" &&
              [ -s "$sres/large-batch-accuracy.png" ] && [ -s "$sres/large-batch-curves-lenet.png" ]'
    if [ "$fails" -gt 0 ]; then
        echo "---- study.log"; cat "$tmp/study.log"; echo "---- report"; cat "$tmp/report.md" "$tmp/report.log"
        [ -n "$sig_dir" ] && { echo "---- $sig_dir/log.txt"; cat "$sig_dir/log.txt"; }
    fi
fi

echo "slurm_requeue: $((SECONDS - t_start)) s"
echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
