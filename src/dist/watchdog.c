/* watchdog.c - --collective-timeout (see watchdog.h).
 *
 * The wrappers use MPI's profiling interface: this file defines MPI_Allreduce, MPI_Bcast,
 * ... which record the call in `cur` and call PMPI_Allreduce, PMPI_Bcast, ... (every MPI
 * implementation provides both names; a definition in the executable takes precedence over
 * the MPI library's). comm_mpi.c stays as it is and every blocking call is covered, the
 * communication thread's allreduce (bucketed mode) included. The record costs a few stores
 * per call and allocates nothing.
 *
 * At most one thread is inside MPI at a time (MPI_THREAD_SERIALIZED, comm.h), so one record
 * describes "the" call this rank waits in. The watchdog thread never calls MPI: it reads the
 * record, and on timeout writes its line with write(2) and leaves with _exit, which is safe
 * while another thread is blocked inside MPI.
 */
#include "nnprec/watchdog.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <mpi.h>

/* The call this rank is in: seq changes at every entry, in_call is 1 between entry and
 * return. The descriptive fields are written before in_call is set (release) and read after
 * it was seen set (acquire). */
static struct {
    atomic_uint_fast64_t seq;
    atomic_int in_call;
    const char *_Atomic fn;
    const char *_Atomic type;
    const char *_Atomic op;
    atomic_long count;
} cur;

static struct {
    const char *_Atomic phase;
    const long long *_Atomic step;
} where = {"setup", NULL};

static double g_timeout;
static int g_rank, g_code, g_started;

/* The node's board: one slot per rank of the job in a shared-memory segment of this node,
 * written by its rank only (a few stores per MPI call), read by the watchdog of any rank of
 * the node when it fires, to name the ranks it waits for. Slots of ranks on other nodes
 * stay zero (pid 0). */
typedef struct {
    atomic_uint_fast64_t calls; /* MPI calls entered */
    atomic_int in_call;
    atomic_int pid;
    atomic_int gave_up;         /* its own watchdog fired: it waited too, it is no culprit */
    atomic_llong step;          /* 0-based step in progress, -1 outside training */
    char phase[40];             /* a copy of where.phase, always NUL-terminated */
} __attribute__((aligned(64))) board_slot;

static board_slot *board, *me;
static int board_n;

void nnp_watchdog_phase(const char *phase, const long long *step)
{
    atomic_store_explicit(&where.step, step, memory_order_release);
    atomic_store_explicit(&where.phase, phase, memory_order_release);
    if (me) {
        size_t n = strlen(phase);
        n = n < sizeof me->phase - 1 ? n : sizeof me->phase - 1;
        memcpy(me->phase, phase, n);
        me->phase[n] = 0;
    }
}

/* ---- the wrappers -------------------------------------------------------------------- */

static const char *type_name(MPI_Datatype t)
{
    return t == MPI_FLOAT    ? "float"
           : t == MPI_DOUBLE ? "double"
           : t == MPI_INT    ? "int"
           : t == MPI_2INT   ? "int pair"
           : t == MPI_BYTE   ? "byte"
           : t == MPI_INT64_T ? "int64"
                             : "value";
}

static const char *op_name(MPI_Op op)
{
    return op == MPI_SUM      ? "sum"
           : op == MPI_MAX    ? "max"
           : op == MPI_MIN    ? "min"
           : op == MPI_MINLOC ? "minloc"
                              : NULL;
}

static inline void enter(const char *fn, long count, const char *type, const char *op)
{
    atomic_store_explicit(&cur.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&cur.count, count, memory_order_relaxed);
    atomic_store_explicit(&cur.type, type, memory_order_relaxed);
    atomic_store_explicit(&cur.op, op, memory_order_relaxed);
    atomic_fetch_add_explicit(&cur.seq, 1, memory_order_relaxed);
    atomic_store_explicit(&cur.in_call, 1, memory_order_release);
    if (me) {
        const long long *step = atomic_load_explicit(&where.step, memory_order_relaxed);
        atomic_store_explicit(&me->step, step ? __atomic_load_n(step, __ATOMIC_RELAXED) : -1,
                              memory_order_relaxed);
        atomic_fetch_add_explicit(&me->calls, 1, memory_order_relaxed);
        atomic_store_explicit(&me->in_call, 1, memory_order_release);
    }
}

static inline int leave(int rc)
{
    atomic_store_explicit(&cur.in_call, 0, memory_order_release);
    if (me)
        atomic_store_explicit(&me->in_call, 0, memory_order_release);
    return rc;
}

int MPI_Allreduce(const void *sendbuf, void *recvbuf, int count, MPI_Datatype datatype, MPI_Op op,
                  MPI_Comm comm)
{
    enter("MPI_Allreduce", count, type_name(datatype), op_name(op));
    return leave(PMPI_Allreduce(sendbuf, recvbuf, count, datatype, op, comm));
}

int MPI_Bcast(void *buffer, int count, MPI_Datatype datatype, int root, MPI_Comm comm)
{
    enter("MPI_Bcast", count, type_name(datatype), NULL);
    return leave(PMPI_Bcast(buffer, count, datatype, root, comm));
}

int MPI_Barrier(MPI_Comm comm)
{
    enter("MPI_Barrier", -1, NULL, NULL);
    return leave(PMPI_Barrier(comm));
}

int MPI_Allgather(const void *sendbuf, int sendcount, MPI_Datatype sendtype, void *recvbuf,
                  int recvcount, MPI_Datatype recvtype, MPI_Comm comm)
{
    enter("MPI_Allgather", sendcount, type_name(sendtype), NULL);
    return leave(
        PMPI_Allgather(sendbuf, sendcount, sendtype, recvbuf, recvcount, recvtype, comm));
}

int MPI_Allgatherv(const void *sendbuf, int sendcount, MPI_Datatype sendtype, void *recvbuf,
                   const int recvcounts[], const int displs[], MPI_Datatype recvtype,
                   MPI_Comm comm)
{
    enter("MPI_Allgatherv", -1, type_name(recvtype), NULL);
    return leave(PMPI_Allgatherv(sendbuf, sendcount, sendtype, recvbuf, recvcounts, displs,
                                 recvtype, comm));
}

int MPI_Gather(const void *sendbuf, int sendcount, MPI_Datatype sendtype, void *recvbuf,
               int recvcount, MPI_Datatype recvtype, int root, MPI_Comm comm)
{
    enter("MPI_Gather", sendcount, type_name(sendtype), NULL);
    return leave(
        PMPI_Gather(sendbuf, sendcount, sendtype, recvbuf, recvcount, recvtype, root, comm));
}

int MPI_Sendrecv(const void *sendbuf, int sendcount, MPI_Datatype sendtype, int dest,
                 int sendtag, void *recvbuf, int recvcount, MPI_Datatype recvtype, int source,
                 int recvtag, MPI_Comm comm, MPI_Status *status)
{
    enter("MPI_Sendrecv", sendcount, type_name(sendtype), NULL);
    return leave(PMPI_Sendrecv(sendbuf, sendcount, sendtype, dest, sendtag, recvbuf, recvcount,
                               recvtype, source, recvtag, comm, status));
}

int MPI_Comm_split(MPI_Comm comm, int color, int key, MPI_Comm *newcomm)
{
    enter("MPI_Comm_split", -1, NULL, NULL);
    return leave(PMPI_Comm_split(comm, color, key, newcomm));
}

int MPI_Comm_split_type(MPI_Comm comm, int split_type, int key, MPI_Info info, MPI_Comm *newcomm)
{
    enter("MPI_Comm_split_type", -1, NULL, NULL);
    return leave(PMPI_Comm_split_type(comm, split_type, key, info, newcomm));
}

int MPI_Comm_dup(MPI_Comm comm, MPI_Comm *newcomm)
{
    enter("MPI_Comm_dup", -1, NULL, NULL);
    return leave(PMPI_Comm_dup(comm, newcomm));
}

int MPI_Win_allocate_shared(MPI_Aint size, int disp_unit, MPI_Info info, MPI_Comm comm,
                            void *baseptr, MPI_Win *win)
{
    enter("MPI_Win_allocate_shared", -1, NULL, NULL);
    return leave(PMPI_Win_allocate_shared(size, disp_unit, info, comm, baseptr, win));
}

int MPI_Win_free(MPI_Win *win)
{
    enter("MPI_Win_free", -1, NULL, NULL);
    return leave(PMPI_Win_free(win));
}

int MPI_Finalize(void)
{
    nnp_watchdog_phase("MPI's shutdown at the end of the run", NULL);
    enter("MPI_Finalize", -1, NULL, NULL);
    return leave(PMPI_Finalize());
}

/* ---- the watchdog thread ------------------------------------------------------------- */

static double mono_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The state letter of process pid from /proc (R, S, D, T, t, Z, X), or 0 when it is gone. */
static char proc_state(int pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    const char *p = strrchr(buf, ')'); /* the command name in parentheses may hold spaces */
    return p && p[1] == ' ' ? p[2] : '?';
}

/* What this node's board says about the other ranks, into buf: the ranks this one may be
 * waiting for (stopped, dead, or behind it in MPI calls) or that every other rank here waits
 * too. Only reads memory and /proc: safe while another thread is blocked in MPI. */
static void board_report(char *buf, size_t cap)
{
    buf[0] = 0;
    if (!board)
        return;
    size_t len = 0;
    int here = 0, named = 0;
    const uint_fast64_t mine = atomic_load_explicit(&me->calls, memory_order_relaxed);
    for (int r = 0; r < board_n && len + 160 < cap; r++) {
        board_slot *b = &board[r];
        const int pid = atomic_load_explicit(&b->pid, memory_order_acquire);
        if (pid == 0 || b == me)
            continue;
        here++;
        const char st = proc_state(pid);
        const uint_fast64_t calls = atomic_load_explicit(&b->calls, memory_order_relaxed);
        const int in = atomic_load_explicit(&b->in_call, memory_order_relaxed);
        const long long step = atomic_load_explicit(&b->step, memory_order_relaxed);
        /* a rank whose own watchdog fired first may already be gone: it waited too */
        const int gave = atomic_load_explicit(&b->gave_up, memory_order_acquire);
        const char *what = gave ? NULL : st == 0 ? "gone" : st == 'T' || st == 't' ? "stopped"
                         : st == 'Z' || st == 'X' ? "dead" : NULL;
        if (!what && calls >= mine)
            continue; /* waiting with this one, or past it */
        if (gave)
            what = "timed out too";
        char ph[sizeof b->phase];
        memcpy(ph, b->phase, sizeof ph);
        ph[sizeof ph - 1] = 0;
        char behind[64] = "";
        if (calls < mine)
            snprintf(behind, sizeof behind, ", %llu MPI call%s behind this one",
                     (unsigned long long)(mine - calls), mine - calls == 1 ? "" : "s");
        char at[96];
        if (step >= 0)
            snprintf(at, sizeof at, "step %lld, %s", step + 1, ph);
        else
            snprintf(at, sizeof at, "%s", ph);
        int n = snprintf(buf + len, cap - len, "%srank %d %s (%s, %s MPI%s)",
                         named ? "; " : "", r, what ? what : "alive", at,
                         in ? "inside" : "outside", behind);
        if (n > 0)
            len += (size_t)n < cap - len ? (size_t)n : cap - len - 1;
        named++;
    }
    const int elsewhere = board_n - 1 - here;
    if (!named && here)
        snprintf(buf + len, cap - len, "every other rank on this node waits in MPI too%s",
                 elsewhere > 0 ? ": the one missing runs on another node" : "");
    else if (elsewhere > 0)
        snprintf(buf + len, cap - len, "%sthe %d rank%s on other nodes cannot be seen from here",
                 len ? "; " : "", elsewhere, elsewhere == 1 ? "" : "s");
}

static void fire(double waited)
{
    char call[160], at[96], line[1536], ranks[900];
    const char *fn = atomic_load_explicit(&cur.fn, memory_order_relaxed);
    const char *type = atomic_load_explicit(&cur.type, memory_order_relaxed);
    const char *op = atomic_load_explicit(&cur.op, memory_order_relaxed);
    long count = atomic_load_explicit(&cur.count, memory_order_relaxed);
    if (count >= 0 && type)
        snprintf(call, sizeof call, "%s of %ld %s%s%s%s", fn, count, type,
                 count == 1 ? "" : "s", op ? ", " : "", op ? op : "");
    else
        snprintf(call, sizeof call, "%s", fn);
    const char *phase = atomic_load_explicit(&where.phase, memory_order_acquire);
    const long long *step = atomic_load_explicit(&where.step, memory_order_acquire);
    if (step) /* written by the training loop's thread: an aligned 64-bit load */
        snprintf(at, sizeof at, "%s, step %lld", phase,
                 (long long)__atomic_load_n(step, __ATOMIC_RELAXED) + 1);
    else
        snprintf(at, sizeof at, "%s", phase);
    if (me)
        atomic_store_explicit(&me->gave_up, 1, memory_order_release);
    board_report(ranks, sizeof ranks);
    int n = snprintf(line, sizeof line,
                     "nnprec: error (rank %d): no progress for %.0f s in %s (%s): another rank "
                     "has stopped, hangs or died, or is that much slower "
                     "(--collective-timeout %g)%s%s; exiting with code %d so that the job can be "
                     "requeued and resumed from its latest checkpoint\n",
                     g_rank, waited, call, at, g_timeout, ranks[0] ? "; on this node: " : "",
                     ranks, g_code);
    if (n > 0) {
        size_t len = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
        ssize_t w = write(STDERR_FILENO, line, len);
        (void)w;
    }
    _exit(g_code);
}

/* Map this node's board: a POSIX shared-memory segment named by rank 0 (the same name on
 * every node: each node has its own), unlinked once every rank has it mapped. Collective
 * over MPI_COMM_WORLD. Without it (no /dev/shm room, no shm_open) the watchdog still
 * works, without naming other ranks. */
static void board_open(int rank)
{
    int size = 0, ok = 1, all = 0;
    char name[64] = "";
    PMPI_Comm_size(MPI_COMM_WORLD, &size);
    if (rank == 0)
        snprintf(name, sizeof name, "/nnprec-watchdog-%ld-%ld", (long)getpid(), (long)time(NULL));
    PMPI_Bcast(name, sizeof name, MPI_CHAR, 0, MPI_COMM_WORLD);
    const size_t bytes = (size_t)size * sizeof(board_slot);
    int fd = shm_open(name, O_RDWR | O_CREAT, 0600);
    void *p = MAP_FAILED;
    if (fd >= 0) {
        /* every rank of the node sets the same size; the new pages read as zeros */
        if (ftruncate(fd, (off_t)bytes) == 0)
            p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
    }
    ok = p != MAP_FAILED;
    PMPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD); /* and all have opened it */
    shm_unlink(name); /* the mappings stay; the name goes (ENOENT for all but one per node) */
    if (!all) {
        if (ok)
            munmap(p, bytes);
        return;
    }
    board = p;
    board_n = size;
    me = &board[rank];
    atomic_store_explicit(&me->step, -1, memory_order_relaxed);
    nnp_watchdog_phase(atomic_load_explicit(&where.phase, memory_order_relaxed),
                       atomic_load_explicit(&where.step, memory_order_relaxed));
    atomic_store_explicit(&me->pid, (int)getpid(), memory_order_release);
}

static void *watch_main(void *arg)
{
    (void)arg;
    /* look ten times per timeout, at least every second, at most every 50 ms */
    double tick = g_timeout / 10;
    tick = tick > 1.0 ? 1.0 : tick < 0.05 ? 0.05 : tick;
    struct timespec ts = {(time_t)tick, (long)((tick - (double)(time_t)tick) * 1e9)};
    uint_fast64_t seen = 0;
    double waited = 0, last = mono_s();
    for (;;) {
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
        ts.tv_sec = (time_t)tick;
        ts.tv_nsec = (long)((tick - (double)(time_t)tick) * 1e9);
        const double now = mono_s();
        double dt = now - last;
        last = now;
        /* a gap far beyond one tick: the whole process was stopped, not waiting */
        if (dt > 3 * tick)
            dt = tick;
        if (!atomic_load_explicit(&cur.in_call, memory_order_acquire)) {
            waited = 0;
            continue;
        }
        const uint_fast64_t s = atomic_load_explicit(&cur.seq, memory_order_relaxed);
        if (s != seen) { /* another call than at the last look */
            seen = s;
            waited = 0;
            continue;
        }
        waited += dt;
        if (waited >= g_timeout)
            fire(waited);
    }
    return NULL;
}

nnp_status nnp_watchdog_start(double timeout_s, int rank, int exit_code)
{
    if (g_started)
        return nnp_error(NNP_ERR_ARG, "the watchdog is already running");
    if (!(timeout_s > 0))
        return NNP_OK;
    g_timeout = timeout_s;
    g_rank = rank;
    g_code = exit_code;
    board_open(rank);
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    int e = pthread_create(&th, &at, watch_main, NULL);
    pthread_attr_destroy(&at);
    if (e != 0)
        return nnp_error(NNP_ERR_NOMEM, "cannot start the --collective-timeout thread: %s",
                         strerror(e));
    g_started = 1;
    return NNP_OK;
}
