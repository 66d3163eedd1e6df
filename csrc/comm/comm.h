/* comm.h: dutycycle's collectives on plain buffers (pointer, element count, dtype).
 *
 * A dc_comm is one communicator over every rank of the job (MPI_COMM_WORLD, duplicated), with its
 * own progress thread, watchdog thread and error buffer. Every operation comes in one shape:
 *
 *     dc_status dc_comm_<op>(dc_comm *c, <buffers and sizes>, dc_work **work_out);
 *
 * With work_out == NULL the call blocks until the operation finished (or failed). Otherwise it
 * returns at once with a handle to dc_work_wait / dc_work_test and dc_work_free; the buffers must
 * stay valid and untouched until the work completed. The blocking form is a thin wrapper over the
 * asynchronous one (curl's easy-over-multi shape).
 *
 * Order: operations run in the order they were issued, on every rank. Collectives must be issued
 * in the same order with the same sizes on every rank; each carries a fingerprint (op, seq, dtype,
 * count, root, reduction) that is compared across ranks before it runs, so a mismatch fails with
 * DC_ERR_DESYNC naming both sides instead of summing the wrong buffers or deadlocking.
 *
 * Errors: functions return dc_status; the message (this rank and host, the collective, its
 * sequence number) is kept in the communicator, read with dc_comm_errmsg(). Once a peer died, a
 * collective timed out or the ranks desynchronised, the communicator is broken: every pending and
 * later operation fails with the same status and message (DC_ERR_COMM, DC_ERR_TIMEOUT or
 * DC_ERR_DESYNC). Nothing here exits the process except dc_comm_abort().
 *
 * Threads: the calls may come from any thread, but operations of one communicator must be issued
 * in one agreed order (issue them from one thread). */
#ifndef DC_COMM_H
#define DC_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "../core/dtype.h"
#include "../core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Raw bytes, for buffers that are no tensor (a bytearray); not a tensor dtype. */
#define DC_COMM_UINT8 ((dc_dtype)64)

typedef enum { DC_RED_SUM = 0, DC_RED_AVG = 1, DC_RED_MAX = 2, DC_RED_MIN = 3, DC_RED_COUNT } dc_reduce_op;

/* Numbers appear in fingerprints exchanged between ranks: never renumber. */
typedef enum {
    DC_COLL_ALL_REDUCE = 0,
    DC_COLL_REDUCE_SCATTER = 1,
    DC_COLL_ALL_GATHER = 2,
    DC_COLL_BROADCAST = 3,
    DC_COLL_BARRIER = 4,
    DC_COLL_SEND = 5,
    DC_COLL_RECV = 6,
    DC_COLL_COUNT
} dc_coll_op;

typedef struct dc_comm dc_comm;
typedef struct dc_work dc_work;

/* Names: "all_reduce", ...; "sum", ... (static strings; "?" when out of range). */
const char *dc_coll_op_name(dc_coll_op op);
const char *dc_reduce_op_name(dc_reduce_op op);
/* DC_RED_* of "sum"/"avg"/"max"/"min", or -1. */
int dc_reduce_op_by_name(const char *name);

/* Create a communicator over all ranks. backend: "mpi" (host buffers) or "nccl" (CUDA buffers;
 * built only with DC_WITH_CUDA). timeout_s: the watchdog's limit on one operation (<= 0: the
 * environment's DUTYCYCLE_COMM_TIMEOUT, else 600 s). Collective over the job: every rank must call
 * it, in the same order relative to other communicators. Initialises MPI with
 * MPI_THREAD_MULTIPLE, or adopts an MPI the process already initialised. On failure *out is NULL
 * and the message is in dc_last_error() (there is no handle to keep it in). */
dc_status dc_comm_init(dc_comm **out, const char *backend, double timeout_s);
/* Finish the pending operations, synchronise with the other ranks (a barrier), stop the threads.
 * Collective, like init. dc_comm_free(NULL) is a no-op. Returns the communicator's status. */
dc_status dc_comm_close(dc_comm *c);
void dc_comm_free(dc_comm *c); /* closes first when not closed */

int dc_comm_rank(const dc_comm *c);
int dc_comm_size(const dc_comm *c);
int dc_comm_local_rank(const dc_comm *c); /* among the ranks of this machine */
int dc_comm_local_size(const dc_comm *c);
const char *dc_comm_hostname(const dc_comm *c, int rank); /* rank -1: this rank's host */
const char *dc_comm_backend(const dc_comm *c);            /* "mpi" or "nccl" */
double dc_comm_timeout(const dc_comm *c);
void dc_comm_set_timeout(dc_comm *c, double timeout_s);

/* The message of the communicator's last failure ("" when none). Valid until the next failure. */
const char *dc_comm_errmsg(dc_comm *c);
/* The sticky status: DC_OK while the communicator works, else why it broke. */
dc_status dc_comm_status(dc_comm *c);

/* In place: buf (count elements) becomes the reduction over all ranks. */
dc_status dc_comm_all_reduce(dc_comm *c, void *buf, size_t count, dc_dtype dt, dc_reduce_op op, dc_work **work_out);
/* send: size * recv_count elements; recv: recv_count elements, rank r's block of the reduction. */
dc_status dc_comm_reduce_scatter(dc_comm *c, const void *send, void *recv, size_t recv_count, dc_dtype dt,
                                 dc_reduce_op op, dc_work **work_out);
/* send: send_count elements; recv: size * send_count elements, rank r's at offset r * send_count. */
dc_status dc_comm_all_gather(dc_comm *c, const void *send, void *recv, size_t send_count, dc_dtype dt,
                             dc_work **work_out);
dc_status dc_comm_broadcast(dc_comm *c, void *buf, size_t count, dc_dtype dt, int root, dc_work **work_out);
dc_status dc_comm_barrier(dc_comm *c, dc_work **work_out);
/* Point to point, matched by (peer, tag); not fingerprinted (they are no collective), but a recv
 * whose message has another size fails with DC_ERR_DESYNC. */
dc_status dc_comm_send(dc_comm *c, const void *buf, size_t count, dc_dtype dt, int peer, int tag, dc_work **work_out);
dc_status dc_comm_recv(dc_comm *c, void *buf, size_t count, dc_dtype dt, int peer, int tag, dc_work **work_out);

/* Print "dutycycle: rank R (host H): aborting the job: <reason>" to stderr and end every rank of
 * the job (MPI_Abort). Does not return. */
void dc_comm_abort(dc_comm *c, const char *reason) __attribute__((noreturn));

/* Wait for w: timeout_s < 0 waits until it finished or the communicator broke (the watchdog bounds
 * that); otherwise DC_ERR_TIMEOUT after timeout_s with the work still running. Returns the work's
 * status; on failure the message is in dc_work_errmsg(w) and dc_comm_errmsg(). */
dc_status dc_work_wait(dc_work *w, double timeout_s);
/* *done = 1 when w finished or failed (then returns its status), else 0 and DC_OK. */
dc_status dc_work_test(dc_work *w, int *done);
const char *dc_work_errmsg(dc_work *w);
/* 1 while the backend may still read or write the work's buffers: 0 once it finished, and for a
 * work failed before it started. A failed work can stay busy forever (a collective stuck in the
 * transport): then its buffers must never be freed. */
int dc_work_busy(dc_work *w);
int64_t dc_work_seq(const dc_work *w); /* collectives: #0, #1, ... per communicator; p2p counted apart */
dc_coll_op dc_work_op(const dc_work *w);
size_t dc_work_nbytes(const dc_work *w);
/* CLOCK_MONOTONIC ns of enqueue, start and finish (0 while not reached). */
void dc_work_times(dc_work *w, int64_t *enqueued_ns, int64_t *started_ns, int64_t *finished_ns);
void dc_work_free(dc_work *w); /* any time; a pending work still runs to its end. NULL: no-op */

/* One finished operation; times are CLOCK_MONOTONIC ns (Python's time.monotonic_ns()). */
typedef struct {
    int64_t seq;
    dc_coll_op op;
    int peer; /* root, or the p2p peer; -1 */
    size_t nbytes;
    int64_t enqueued_ns, started_ns, finished_ns;
    dc_status status;
} dc_comm_event;

#define DC_COMM_EVENTS_MAX 65536
/* Copy up to max of the retained events (oldest first, at most the last 65536) into out; returns
 * the number copied. clear != 0 drops the retained events. */
size_t dc_comm_events(dc_comm *c, dc_comm_event *out, size_t max, int clear);
size_t dc_comm_event_count(dc_comm *c);

typedef struct {
    int64_t ops; /* operations finished */
    int64_t ops_by[DC_COLL_COUNT];
    int64_t bytes;         /* payload bytes of the finished operations (this rank's buffer) */
    double wait_s;         /* time callers spent blocked in dc_work_wait */
    double run_s;          /* sum of started -> finished */
    double desync_check_s; /* sum of the fingerprint exchanges (enqueue-to-start share) */
    int64_t desync_checks;
    int64_t pending; /* issued, not finished */
    int64_t max_pending;
    int desync_check_enabled;
} dc_comm_stats;
void dc_comm_get_stats(dc_comm *c, dc_comm_stats *out);

#ifdef __cplusplus
}
#endif
#endif
