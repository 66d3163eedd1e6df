/* comm-impl.h: what comm.c, comm-mpi.c and comm-nccl.c share (private; the API is comm.h).
 *
 * Layout of the layer:
 *   comm.c       the engine: the issue queue, the progress thread, the watchdog thread, waiting,
 *                events, stats, the error buffer, fingerprints and the messages that name ranks.
 *   comm-mpi.c   the control plane every backend uses (MPI init/adopt, the duplicated
 *                communicators, the fingerprint exchange, the watchdog's heartbeats) and the
 *                "mpi" data backend (nonblocking MPI collectives on host buffers).
 *   comm-nccl.c  the "nccl" data backend (CUDA buffers on its own stream), DC_WITH_CUDA only.
 *
 * Locking: c->mu guards the queue, every work's state fields, the error, events, stats and the
 * peers' heartbeat table. Transport calls (MPI, NCCL, CUDA) are made without it. Only the
 * progress thread moves a work through QUEUED -> FP -> RUNNING -> DONE; a broken communicator may
 * mark works failed (done) from any thread, but their transport state stays the progress thread's. */
#ifndef DC_COMM_IMPL_H
#define DC_COMM_IMPL_H

#include <pthread.h>
#include <stdalign.h>
#include <stdint.h>
#include <sys/types.h>

#include "comm.h"

#define DC_COMM_ERRMAX  1024
#define DC_COMM_MAXHOST 64
#define DC_COMM_EVENTS  DC_COMM_EVENTS_MAX

/* The fingerprint of one collective, compared across ranks before it runs. */
typedef struct {
    int32_t op, dtype, root, red;
    int64_t seq, count;
} dc_fingerprint;

/* The fingerprint exchange: one fixed-size slot per rank, reduced by dc_fp_slot_combine (an
 * all-reduce on the control communicator). Every rank sends the same size whatever its collective,
 * so the exchange itself can't desynchronise. Small host all_reduce/broadcast payloads travel in the
 * slot (has_data), so for them the check and the collective are one round trip; a barrier is the
 * exchange alone (an all-reduce synchronises). */
#define DC_FP_SLOT 1024
typedef struct {
    dc_fingerprint fp;
    int32_t mismatch; /* set by the combine when two fingerprints differed */
    int32_t has_data; /* data holds a payload (all_reduce: every rank; broadcast: the root) */
    int32_t nbytes, pad;
    unsigned char data[DC_FP_SLOT - sizeof(dc_fingerprint) - 16];
} dc_fp_slot;
_Static_assert(sizeof(dc_fp_slot) == DC_FP_SLOT, "dc_fp_slot must be DC_FP_SLOT bytes");
#define DC_FP_INLINE (sizeof(((dc_fp_slot *)0)->data))

/* inout = combine(in, inout): flags a mismatch, else reduces (or, broadcast, carries) the payload. */
void dc_fp_slot_combine(const dc_fp_slot *in, dc_fp_slot *inout);
/* buf[k] /= by, for the float dtypes (avg = sum / size). */
void dc_comm_divide(void *buf, size_t n, dc_dtype dt, double by);

/* What a rank's watchdog tells the others, every heartbeat period and at once on a change. */
typedef struct {
    int64_t issued;      /* collectives issued: the last one is #issued-1 */
    int64_t completed;   /* collectives finished */
    int64_t pending_seq; /* the oldest unfinished operation, -1 when none */
    int64_t pending_ms;  /* how long it has been unfinished */
    int64_t idle_ms;     /* since the last operation was issued */
    int32_t pending_op;  /* its dc_coll_op, -1 */
    int32_t pending_peer;
    int32_t last_op; /* the last collective issued, -1 */
    int32_t in_wait; /* a caller is blocked in dc_work_wait */
    int32_t broken;  /* the communicator's sticky dc_status */
    int32_t closing; /* this rank is in dc_comm_close: its exit is no failure */
    char why[512];   /* the message when broken */
} dc_hb_msg;

typedef struct {
    char host[DC_COMM_MAXHOST];
    char machine[96]; /* host + boot id: ranks with the same one can see each other's pids */
    int32_t pid;
    int32_t pad;
} dc_comm_peer;

enum { W_QUEUED = 0, W_FP = 1, W_RUNNING = 2, W_DONE = 3 };

struct dc_work {
    dc_comm *c;
    dc_work *next; /* the engine's list, in issue order */
    int refs;      /* the caller's and the engine's */
    dc_coll_op op;
    dc_reduce_op red;
    dc_dtype dt;
    void *buf;        /* in/out; recv for reduce_scatter/all_gather */
    const void *send; /* reduce_scatter/all_gather/send input */
    size_t count;     /* the fingerprinted count (see comm.h per op) */
    size_t nbytes;    /* this rank's payload */
    int root;         /* broadcast root, p2p peer; -1 */
    int tag;
    int close_barrier; /* the barrier of dc_comm_close */
    int64_t seq;
    int64_t t_enq, t_fp, t_start, t_end;
    int state;
    int done; /* finished or failed, as the caller sees it */
    int busy; /* the transport may still touch the buffers */
    dc_status status;
    dc_fingerprint fp;
    int fp_inline; /* the payload travels in the fingerprint slot: no data operation */
    dc_fp_slot fp_in, fp_out;
    char errmsg[DC_COMM_ERRMAX];
    alignas(16) unsigned char be[128]; /* the backend's per-work state (requests, events) */
};

/* A data backend: starts one work and tests it; errors are written with dc_comm_fail_work. */
typedef struct {
    const char *name;
    dc_status (*init)(dc_comm *c); /* after the control plane is up */
    void (*free)(dc_comm *c);      /* c->err set: the transport may be stuck; release what is safe */
    /* In the caller's thread when the work is issued (may be NULL): e.g. mark the compute stream.
     * Called without c->mu, before the work is queued; a failure fails the call, nothing queued. */
    dc_status (*issue)(dc_comm *c, dc_work *w);
    dc_status (*start)(dc_comm *c, dc_work *w);
    dc_status (*test)(dc_comm *c, dc_work *w, int *done);
    void (*abort)(dc_comm *c); /* unblock stuck operations after the communicator broke; may be NULL */
} dc_comm_vtable;

/* NCCL bootstraps over MPI: the nccl backend needs both. */
#if defined(DC_WITH_CUDA) && defined(DC_WITH_MPI)
#define DC_COMM_NCCL 1
#endif

extern const dc_comm_vtable dc_comm_backend_mpi;
#ifdef DC_COMM_NCCL
extern const dc_comm_vtable dc_comm_backend_nccl;
#endif

struct dc_comm {
    pthread_mutex_t mu;
    pthread_cond_t cv_submit; /* the progress thread sleeps on it when idle */
    pthread_cond_t cv_done;   /* waiters */
    const dc_comm_vtable *be;
    void *be_state;
    void *ctl; /* comm-mpi.c's control plane */
    int rank, size, local_rank, local_size;
    dc_comm_peer *peers; /* [size] */
    double timeout_s;
    double dead_after_s; /* a silent remote peer counts as dead after this */
    double hb_period_s;
    int64_t spin_ns, sleep_max_ns; /* the progress thread's polling: yields first, then sleeps up to this */
    int check_desync;
    int host_buffers; /* the data backend works on host memory (payloads may ride in the fp slot) */

    dc_work *head, *tail;
    int64_t coll_seq, p2p_seq, coll_done;
    int last_coll_op;
    int64_t last_issue_ns;
    int in_wait;

    dc_status err;
    char errbuf[DC_COMM_ERRMAX]; /* why it broke */
    char lasterr[DC_COMM_ERRMAX];
    int abort_requested; /* the backend's abort is due (the progress thread calls it) */

    int stop, closing, closed, threads_up;
    pthread_t progress_th, watchdog_th;

    dc_hb_msg *peer_hb;     /* [size], the last heartbeat from each rank */
    int64_t *peer_heard_ns; /* [size], 0: never */
    int *peer_dead;         /* [size] */

    dc_comm_event *ev; /* ring of DC_COMM_EVENTS */
    size_t ev_head, ev_count;
    dc_comm_stats st;
};

int64_t dc_comm_now_ns(void);

/* Break the communicator (first failure wins): every unfinished work fails with st and msg.
 * Locked variant: the caller holds c->mu. */
void dc_comm_break(dc_comm *c, dc_status st, const char *msg);
void dc_comm_break_locked(dc_comm *c, dc_status st, const char *msg);
/* "rank 3 (host h)" */
const char *dc_comm_who(dc_comm *c, int rank, char *buf, size_t n);
/* This rank as "rank 3 (host h)", in a function that declares `char who_[96]` and has `c`. */
#define WHO (dc_comm_who(c, c->rank, who_, sizeof who_))
/* "rank 3 (host h, pid 123)" */
const char *dc_comm_who_pid(dc_comm *c, int rank, char *buf, size_t n);
/* ts = CLOCK_MONOTONIC now + s seconds (for pthread_cond_timedwait on a monotonic condvar). */
void dc_comm_abs_deadline(struct timespec *ts, double s);
/* watchdog.c: the watchdog thread's body (arg: the dc_comm). */
void *dc_comm_watchdog_main(void *arg);
/* "all_reduce #42 (float32 x 1024, sum)" */
const char *dc_comm_describe(const dc_fingerprint *fp, char *buf, size_t n);

/* --- the control plane (comm-mpi.c) --- */
/* MPI up (init or adopt), communicators duplicated, rank/size/peers filled. */
dc_status dc_ctl_init(dc_comm *c, char *err, size_t errn);
void dc_ctl_free(dc_comm *c, int broken);
/* Fingerprint exchange of one collective (nonblocking): w->fp_in in, w->fp_out out. */
dc_status dc_ctl_fp_start(dc_comm *c, dc_work *w);
dc_status dc_ctl_fp_test(dc_comm *c, dc_work *w, int *done);
/* After a mismatch: every rank's fingerprint into all[size] (polls; bounded by the caller). */
dc_status dc_ctl_fp_gather(dc_comm *c, dc_work *w, dc_fingerprint *all);
/* Heartbeats (watchdog thread only). */
dc_status dc_ctl_hb_start(dc_comm *c);
void dc_ctl_hb_send(dc_comm *c, const dc_hb_msg *m);
/* Calls got(c, rank, msg) for every heartbeat that arrived. */
void dc_ctl_hb_poll(dc_comm *c, void (*got)(dc_comm *, int, const dc_hb_msg *));
void dc_ctl_hb_stop(dc_comm *c);
void dc_ctl_abort(dc_comm *c) __attribute__((noreturn));
/* The MPI data communicator (MPI_Comm as a pointer-sized handle), for backends bootstrapping on it. */
void *dc_ctl_data_comm(dc_comm *c);

#endif
