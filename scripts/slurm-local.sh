#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for testing nnprec's batch scripts
# (tests/slurm_requeue.sh). Debian 12, as root, no systemd needed: munged, slurmctld and
# slurmd are started as plain daemons and stopped again by their PID files.
#
#   scripts/slurm-local.sh up      install what is missing, write the config, start, wait for idle
#   scripts/slurm-local.sh down    cancel jobs left over, stop the daemons this script started
#   scripts/slurm-local.sh status  print whether it is up
#
# Environment (all optional):
#   NNPREC_SLURM_DIR          state, spool, logs and PID files [${TMPDIR:-/tmp}/nnprec-slurm]
#   NNPREC_SLURM_CPUS         CPUs the node advertises (more than the real count lets more
#                             tasks than cores run) [the count slurmd -C reports]
#   NNPREC_SLURM_CRED_EXPIRE  seconds before a requeued job may start again [10; Slurm: 120]
#   NNPREC_SLURM_INSTALL      0 = never apt-get install, fail if something is missing [1]
#   NNPREC_SLURM_TIMEOUT      seconds to wait for the node to become idle [60]
#
# The config goes to /etc/slurm/slurm.conf, the path every Slurm client reads by default,
# so sbatch, srun and scontrol (also inside jobs) need no SLURM_CONF. The file carries a
# marker line; a slurm.conf without it is never overwritten or removed.
set -euo pipefail

DIR=${NNPREC_SLURM_DIR:-${TMPDIR:-/tmp}/nnprec-slurm}
CRED_EXPIRE=${NNPREC_SLURM_CRED_EXPIRE:-10}
INSTALL=${NNPREC_SLURM_INSTALL:-1}
TIMEOUT=${NNPREC_SLURM_TIMEOUT:-60}
CONF=/etc/slurm/slurm.conf
MARK="# nnprec scripts/slurm-local.sh"
MUNGE_PID=/run/munge/munged.pid

say() { echo "[slurm-local] $*"; }
die() { echo "[slurm-local] error: $*" >&2; exit 1; }
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
ctld_up() { timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'; }
node_state() { sinfo -h -n localhost -o %t 2>/dev/null || true; }

# stop NAME PIDFILE: SIGTERM, up to 15 s, then SIGKILL; only if the PID in the file still
# belongs to a process called NAME (a stale file never kills a stranger)
stop() {
    local name=$1 pidfile=$2 pid
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ]; then
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name (pid $pid) ignored SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    say "stopped $name (pid $pid)"
}

install_missing() {
    local need=()
    command -v munged >/dev/null || need+=(munge)
    command -v slurmctld >/dev/null || need+=(slurmctld)
    command -v slurmd >/dev/null || need+=(slurmd)
    command -v sbatch >/dev/null || need+=(slurm-client)
    # srun --mpi=pmix dlopen()s the unversioned libpmix.so, which only libpmix-dev has
    ls /usr/lib/*/pmix2/lib/libpmix.so >/dev/null 2>&1 || need+=(libpmix-dev)
    [ ${#need[@]} -eq 0 ] && return 0
    [ "$INSTALL" = 1 ] || die "missing packages: ${need[*]} (NNPREC_SLURM_INSTALL=0)"
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # the packages' postinst scripts start nothing without systemd; this script does
    apt-get install -y -q --no-install-recommends "${need[@]}"
}

write_conf() {
    # the node's real hardware, e.g. "CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2
    # ThreadsPerCore=1 RealMemory=24105"
    local hw cpus mem extra=""
    hw=$(slurmd -C | head -n 1 | sed 's/^NodeName=[^ ]* //; s/ UpTime=.*//')
    if [ -n "${NNPREC_SLURM_CPUS:-}" ]; then
        mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
        cpus=$NNPREC_SLURM_CPUS
        hw="CPUs=$cpus RealMemory=$mem"
        extra="SlurmdParameters=config_overrides"
    fi
    if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; move it away first"
    fi
    mkdir -p /etc/slurm
    cat > "$CONF" <<EOF
$MARK: one-node test cluster, state in $DIR
ClusterName=nnprec
# node name and address independent of the machine's hostname (slurmd -N localhost)
SlurmctldHost=localhost(127.0.0.1)
NodeName=localhost NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
$extra
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# credential lifetime, and also how long a requeued job waits before it may start again
AuthInfo=cred_expire=$CRED_EXPIRE
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
MailProg=/bin/true
# no cgroups needed
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
# no slurmdbd: 'scontrol show job' keeps finished jobs MinJobAge seconds, jobcomp a line each
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
MinJobAge=600
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# schedule every 2 s: otherwise a requeued job waits up to a minute after it is eligible
SchedulerParameters=sched_interval=2,bf_interval=5
# Debian's Open MPI can be started by srun only through PMIx
MpiDefault=pmix
JobRequeue=1
ReturnToService=2
KillWait=30
EOF
}

up() {
    [ "$(id -u)" = 0 ] || die "run as root"
    install_missing
    if running "$DIR/slurmctld.pid" && running "$DIR/slurmd.pid" && ctld_up \
        && [ "$(node_state)" = idle ]; then
        say "already up ($DIR)"
        return 0
    fi
    if [ ! -e "$DIR/slurmctld.pid" ] && ctld_up; then
        die "another slurmctld answers on this machine; stop it first"
    fi
    down_daemons
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    rm -rf "${DIR:?}/state/"* "${DIR:?}/spool/"*
    write_conf

    # munge: the package makes /etc/munge/munge.key; reuse a munged that is already running
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
    chmod 400 /etc/munge/munge.key
    if running "$MUNGE_PID"; then
        say "munged already running (pid $(cat "$MUNGE_PID")), using it"
    else
        rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
        su -s /bin/sh munge -c "munged --pid-file=$MUNGE_PID" \
            || die "munged did not start (see /var/log/munge/munged.log)"
        touch "$DIR/munged.ours"
    fi
    munge -n | unmunge >/dev/null || die "munge credential round trip failed"

    # both daemonize and write their PID files; -c: start with an empty job table
    slurmctld -c || die "slurmctld did not start (see $DIR/log/slurmctld.log)"
    slurmd -N localhost || die "slurmd did not start (see $DIR/log/slurmd.log)"
    local t_end=$((SECONDS + TIMEOUT)) st
    while st=$(node_state); [ "$st" != idle ]; do
        if [ $SECONDS -ge $t_end ]; then
            tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
            die "node not idle after ${TIMEOUT}s (state '$st')"
        fi
        case $st in down* | drain*) scontrol update nodename=localhost state=resume 2>/dev/null || true ;; esac
        sleep 0.2
    done
    say "up: slurmctld $(cat "$DIR/slurmctld.pid"), slurmd $(cat "$DIR/slurmd.pid"), state in $DIR"
    sinfo
}

down_daemons() {
    stop slurmd "$DIR/slurmd.pid"
    stop slurmctld "$DIR/slurmctld.pid"
    if [ -e "$DIR/munged.ours" ]; then
        stop munged "$MUNGE_PID"
        rm -f "$DIR/munged.ours"
    fi
}

down() {
    if running "$DIR/slurmctld.pid" && ctld_up; then
        local jobs
        jobs=$(squeue -h -o %A | tr '\n' ' ')
        if [ -n "${jobs// /}" ]; then
            say "cancelling jobs $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 100); do [ -z "$(squeue -h -o %A)" ] && break; sleep 0.2; done
            # shellcheck disable=SC2046
            [ -z "$(squeue -h -o %A)" ] || scancel --full --signal=KILL $(squeue -h -o %A) 2>/dev/null || true
        fi
        # wait until no slurmstepd is left on the node
        for _ in $(seq 50); do [ "$(scontrol listpids 2>/dev/null | wc -l)" -le 1 ] && break; sleep 0.2; done
    fi
    down_daemons
    if [ -e "$CONF" ] && grep -qF "$MARK" "$CONF"; then rm -f "$CONF"; fi
    say "down"
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status)
        if running "$DIR/slurmctld.pid" && ctld_up; then sinfo; else say "not running"; exit 1; fi ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
