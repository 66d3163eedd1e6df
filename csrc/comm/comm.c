/* comm.c: the engine under every backend (see comm-impl.h for the layout).
 *
 * One queue per communicator holds the operations in issue order. The progress thread walks it:
 * it starts the first unstarted operation once its fingerprint exchange agreed (so the k-th
 * collective runs as the k-th everywhere, and a mismatch fails before any data moves), and tests
 * the running ones, which may overlap (MPI allows nonblocking collectives in flight together as
 * long as every rank started them in the same order). The caller's thread only enqueues and
 * waits; it never calls the transport.
 *
 * The watchdog thread is independent of both: every heartbeat period it sends this rank's state
 * (what it issued, what it waits in, whether its caller is blocked) to every peer on its own
 * communicator, so a rank whose Python thread is busy still answers. From the peers' states it
 * names the lagging ranks when an operation outlives the timeout, sees dead peers (their process
 * gone on this machine, or silent for dead_after_s elsewhere), and spreads a failure of one rank
 * to all of them. */
#define _GNU_SOURCE
#include "comm-impl.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *const coll_names[] = { "all_reduce", "reduce_scatter", "all_gather", "broadcast",
                                          "barrier",    "send",           "recv" };
_Static_assert(sizeof coll_names / sizeof coll_names[0] == DC_COLL_COUNT, "coll_names must name every op");
static const char *const red_names[] = { "sum", "avg", "max", "min" };
_Static_assert(sizeof red_names / sizeof red_names[0] == DC_RED_COUNT, "red_names must name every op");

const char *dc_coll_op_name(dc_coll_op op)
{
    return (unsigned)op < DC_COLL_COUNT ? coll_names[op] : "?";
}
const char *dc_reduce_op_name(dc_reduce_op op)
{
    return (unsigned)op < DC_RED_COUNT ? red_names[op] : "?";
}
int dc_reduce_op_by_name(const char *name)
{
    for (int k = 0; k < DC_RED_COUNT; k++)
        if (!strcmp(name, red_names[k])) return k;
    return -1;
}

static const char *dtype_name(dc_dtype dt)
{
    return dt == DC_COMM_UINT8 ? "uint8" : dc_dtype_name(dt);
}
static size_t dtype_size(dc_dtype dt)
{
    return dt == DC_COMM_UINT8 ? 1 : dc_dtype_size(dt);
}

int64_t dc_comm_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_ns(int64_t ns)
{
    struct timespec ts = { ns / 1000000000, ns % 1000000000 };
    nanosleep(&ts, NULL);
}

static void abs_deadline(struct timespec *ts, double s)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    int64_t ns = ts->tv_nsec + (int64_t)(s * 1e9);
    ts->tv_sec += ns / 1000000000;
    ts->tv_nsec = ns % 1000000000;
}

const char *dc_comm_who(dc_comm *c, int rank, char *buf, size_t n)
{
    if (c->peers && rank >= 0 && rank < c->size)
        snprintf(buf, n, "rank %d (host %s)", rank, c->peers[rank].host);
    else
        snprintf(buf, n, "rank %d", rank);
    return buf;
}

/* "rank 3 (host h, pid 123)" */
static const char *who_pid(dc_comm *c, int rank, char *buf, size_t n)
{
    snprintf(buf, n, "rank %d (host %s, pid %d)", rank, c->peers[rank].host, (int)c->peers[rank].pid);
    return buf;
}

const char *dc_comm_describe(const dc_fingerprint *fp, char *buf, size_t n)
{
    const char *op = dc_coll_op_name((dc_coll_op)fp->op);
    switch (fp->op) {
    case DC_COLL_ALL_REDUCE:
    case DC_COLL_REDUCE_SCATTER:
        snprintf(buf, n, "%s #%lld (%s x %lld, %s)", op, (long long)fp->seq, dtype_name((dc_dtype)fp->dtype),
                 (long long)fp->count, dc_reduce_op_name((dc_reduce_op)fp->red));
        break;
    case DC_COLL_BROADCAST:
        snprintf(buf, n, "%s #%lld (%s x %lld, root %d)", op, (long long)fp->seq, dtype_name((dc_dtype)fp->dtype),
                 (long long)fp->count, fp->root);
        break;
    case DC_COLL_BARRIER: snprintf(buf, n, "%s #%lld", op, (long long)fp->seq); break;
    default:
        snprintf(buf, n, "%s #%lld (%s x %lld)", op, (long long)fp->seq, dtype_name((dc_dtype)fp->dtype),
                 (long long)fp->count);
    }
    return buf;
}

/* --- errors ---------------------------------------------------------------------------------- */

void dc_comm_break_locked(dc_comm *c, dc_status st, const char *msg)
{
    snprintf(c->lasterr, sizeof c->lasterr, "%s", msg);
    if (c->err) return; /* the first failure is the cause; later ones are its consequences */
    c->err = st;
    snprintf(c->errbuf, sizeof c->errbuf, "%s", msg);
    for (dc_work *w = c->head; w; w = w->next) {
        if (w->done) continue;
        w->done = 1;
        w->status = st;
        snprintf(w->errmsg, sizeof w->errmsg, "%s", msg);
        if (w->state < W_RUNNING) {
            w->state = W_DONE; /* never started: the transport never saw its buffers */
            w->busy = 0;
        }
    }
    c->abort_requested = 1;
    pthread_cond_broadcast(&c->cv_done);
    pthread_cond_broadcast(&c->cv_submit);
}

void dc_comm_break(dc_comm *c, dc_status st, const char *msg)
{
    pthread_mutex_lock(&c->mu);
    dc_comm_break_locked(c, st, msg);
    pthread_mutex_unlock(&c->mu);
}

/* An argument error in the caller's thread: the message goes to the handle, nothing breaks. */
static dc_status arg_error(dc_comm *c, dc_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static dc_status arg_error(dc_comm *c, dc_status st, const char *fmt, ...)
{
    char msg[DC_COMM_ERRMAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&c->mu);
    snprintf(c->lasterr, sizeof c->lasterr, "%s", msg);
    pthread_mutex_unlock(&c->mu);
    dc_error(st, "%s", msg);
    return st;
}

const char *dc_comm_errmsg(dc_comm *c)
{
    return c->lasterr;
}

dc_status dc_comm_status(dc_comm *c)
{
    pthread_mutex_lock(&c->mu);
    dc_status st = c->err;
    pthread_mutex_unlock(&c->mu);
    return st;
}

/* --- works ----------------------------------------------------------------------------------- */

static void work_unref_locked(dc_work *w)
{
    if (--w->refs == 0) free(w);
}

/* Validate, number and enqueue w (allocated by the caller, refs = 2); wait for it when !out. */
static dc_status submit(dc_comm *c, dc_work *w, dc_work **out)
{
    if (c->be->issue) {
        dc_status ist = c->be->issue(c, w);
        if (ist) {
            char m[DC_COMM_ERRMAX];
            snprintf(m, sizeof m, "%s", dc_last_error());
            free(w);
            if (out) *out = NULL;
            return arg_error(c, ist, "%s", m);
        }
    }
    pthread_mutex_lock(&c->mu);
    if (c->err || c->closed) {
        dc_status st = c->err ? c->err : DC_ERR_COMM;
        char msg[DC_COMM_ERRMAX], who[96];
        if (c->err)
            snprintf(msg, sizeof msg, "%s: %s: the communicator already failed: %.900s",
                     dc_comm_who(c, c->rank, who, sizeof who), dc_coll_op_name(w->op), c->errbuf);
        else
            snprintf(msg, sizeof msg, "%s: %s: the communicator is closed", dc_comm_who(c, c->rank, who, sizeof who),
                     dc_coll_op_name(w->op));
        snprintf(c->lasterr, sizeof c->lasterr, "%s", msg);
        pthread_mutex_unlock(&c->mu);
        dc_error(st, "%s", msg);
        free(w);
        if (out) *out = NULL;
        return st;
    }
    w->c = c;
    w->refs = 2;
    w->busy = 0;
    if (w->op == DC_COLL_SEND || w->op == DC_COLL_RECV) {
        w->seq = c->p2p_seq++;
    } else {
        w->seq = c->coll_seq++;
        c->last_coll_op = w->op;
    }
    w->fp = (dc_fingerprint){ w->op, (int32_t)w->dt, w->root, w->red, w->seq, (int64_t)w->count };
    w->t_enq = c->last_issue_ns = dc_comm_now_ns();
    if (c->tail)
        c->tail->next = w;
    else
        c->head = w;
    c->tail = w;
    if (++c->st.pending > c->st.max_pending) c->st.max_pending = c->st.pending;
    pthread_cond_signal(&c->cv_submit);
    pthread_mutex_unlock(&c->mu);
    if (out) {
        *out = w;
        return DC_OK;
    }
    dc_status st = dc_work_wait(w, -1);
    dc_work_free(w);
    return st;
}

dc_status dc_work_wait(dc_work *w, double timeout_s)
{
    dc_comm *c = w->c;
    int64_t t0 = dc_comm_now_ns();
    struct timespec deadline;
    if (timeout_s >= 0) abs_deadline(&deadline, timeout_s);
    pthread_mutex_lock(&c->mu);
    c->in_wait++;
    while (!w->done) {
        if (timeout_s >= 0) {
            if (pthread_cond_timedwait(&c->cv_done, &c->mu, &deadline) == ETIMEDOUT && !w->done) break;
        } else {
            pthread_cond_wait(&c->cv_done, &c->mu);
        }
    }
    c->in_wait--;
    c->st.wait_s += (dc_comm_now_ns() - t0) * 1e-9;
    dc_status st = w->done ? w->status : DC_ERR_TIMEOUT;
    if (!w->done) {
        char who[96];
        snprintf(w->errmsg, sizeof w->errmsg, "%s: %s #%lld not finished after %.3g s (it keeps running)",
                 dc_comm_who(c, c->rank, who, sizeof who), dc_coll_op_name(w->op), (long long)w->seq, timeout_s);
    }
    if (st) snprintf(c->lasterr, sizeof c->lasterr, "%s", w->errmsg);
    pthread_mutex_unlock(&c->mu);
    if (st) dc_error(st, "%s", w->errmsg);
    return st;
}

dc_status dc_work_test(dc_work *w, int *done)
{
    pthread_mutex_lock(&w->c->mu);
    *done = w->done;
    dc_status st = w->done ? w->status : DC_OK;
    pthread_mutex_unlock(&w->c->mu);
    if (st) dc_error(st, "%s", w->errmsg);
    return st;
}

const char *dc_work_errmsg(dc_work *w)
{
    return w->errmsg;
}

int dc_work_busy(dc_work *w)
{
    pthread_mutex_lock(&w->c->mu);
    int b = !w->done || w->busy;
    pthread_mutex_unlock(&w->c->mu);
    return b;
}

int64_t dc_work_seq(const dc_work *w)
{
    return w->seq;
}
dc_coll_op dc_work_op(const dc_work *w)
{
    return w->op;
}
size_t dc_work_nbytes(const dc_work *w)
{
    return w->nbytes;
}

void dc_work_times(dc_work *w, int64_t *enq, int64_t *start, int64_t *end)
{
    pthread_mutex_lock(&w->c->mu);
    *enq = w->t_enq;
    *start = w->t_start;
    *end = w->t_end;
    pthread_mutex_unlock(&w->c->mu);
}

void dc_work_free(dc_work *w)
{
    if (!w) return;
    dc_comm *c = w->c;
    pthread_mutex_lock(&c->mu);
    work_unref_locked(w);
    pthread_mutex_unlock(&c->mu);
}

/* --- the operations (argument checks in the caller's thread) ---------------------------------- */

static int dtype_ok(dc_dtype dt)
{
    return ((unsigned)dt < DC_DTYPE_COUNT) || dt == DC_COMM_UINT8;
}

static dc_work *new_work(dc_coll_op op, dc_dtype dt, size_t count, size_t nbytes)
{
    dc_work *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->op = op;
    w->dt = dt;
    w->count = count;
    w->nbytes = nbytes;
    w->root = -1;
    w->red = DC_RED_SUM;
    return w;
}

#define WHO (dc_comm_who(c, c->rank, who_, sizeof who_))

static dc_status check_common(dc_comm *c, dc_coll_op op, const void *p, size_t count, dc_dtype dt)
{
    char who_[96];
    if (!dtype_ok(dt))
        return arg_error(c, DC_ERR_DTYPE, "%s: %s: unknown dtype id %d", WHO, dc_coll_op_name(op), (int)dt);
    if (count > (size_t)INT32_MAX)
        return arg_error(c, DC_ERR_VALUE, "%s: %s: %zu elements is more than one operation takes (2^31-1); split it",
                         WHO, dc_coll_op_name(op), count);
    if (!p && count)
        return arg_error(c, DC_ERR_VALUE, "%s: %s: NULL buffer for %zu elements", WHO, dc_coll_op_name(op), count);
    return DC_OK;
}

static dc_status check_red(dc_comm *c, dc_coll_op op, dc_dtype dt, dc_reduce_op red)
{
    char who_[96];
    if ((unsigned)red >= DC_RED_COUNT)
        return arg_error(c, DC_ERR_VALUE, "%s: %s: unknown reduction %d", WHO, dc_coll_op_name(op), (int)red);
    if (red == DC_RED_AVG && (dt == DC_COMM_UINT8 || !dc_dtype_is_float(dt)))
        return arg_error(c, DC_ERR_DTYPE, "%s: %s: op 'avg' needs a floating-point buffer, got %s", WHO,
                         dc_coll_op_name(op), dtype_name(dt));
    if (dt == DC_BOOL && red == DC_RED_SUM) return DC_OK; /* logical or */
    return DC_OK;
}

dc_status dc_comm_all_reduce(dc_comm *c, void *buf, size_t count, dc_dtype dt, dc_reduce_op op, dc_work **out)
{
    if (out) *out = NULL;
    DC_TRY(check_common(c, DC_COLL_ALL_REDUCE, buf, count, dt));
    DC_TRY(check_red(c, DC_COLL_ALL_REDUCE, dt, op));
    dc_work *w = new_work(DC_COLL_ALL_REDUCE, dt, count, count * dtype_size(dt));
    if (!w) return arg_error(c, DC_ERR_NOMEM, "all_reduce: out of memory");
    w->buf = buf;
    w->red = op;
    return submit(c, w, out);
}

dc_status dc_comm_reduce_scatter(dc_comm *c, const void *send, void *recv, size_t recv_count, dc_dtype dt,
                                 dc_reduce_op op, dc_work **out)
{
    if (out) *out = NULL;
    DC_TRY(check_common(c, DC_COLL_REDUCE_SCATTER, recv, recv_count, dt));
    DC_TRY(check_common(c, DC_COLL_REDUCE_SCATTER, send, recv_count * (size_t)c->size, dt));
    DC_TRY(check_red(c, DC_COLL_REDUCE_SCATTER, dt, op));
    dc_work *w = new_work(DC_COLL_REDUCE_SCATTER, dt, recv_count, recv_count * (size_t)c->size * dtype_size(dt));
    if (!w) return arg_error(c, DC_ERR_NOMEM, "reduce_scatter: out of memory");
    w->buf = recv;
    w->send = send;
    w->red = op;
    return submit(c, w, out);
}

dc_status dc_comm_all_gather(dc_comm *c, const void *send, void *recv, size_t send_count, dc_dtype dt, dc_work **out)
{
    if (out) *out = NULL;
    DC_TRY(check_common(c, DC_COLL_ALL_GATHER, send, send_count, dt));
    DC_TRY(check_common(c, DC_COLL_ALL_GATHER, recv, send_count * (size_t)c->size, dt));
    dc_work *w = new_work(DC_COLL_ALL_GATHER, dt, send_count, send_count * (size_t)c->size * dtype_size(dt));
    if (!w) return arg_error(c, DC_ERR_NOMEM, "all_gather: out of memory");
    w->buf = recv;
    w->send = send;
    return submit(c, w, out);
}

dc_status dc_comm_broadcast(dc_comm *c, void *buf, size_t count, dc_dtype dt, int root, dc_work **out)
{
    char who_[96];
    if (out) *out = NULL;
    DC_TRY(check_common(c, DC_COLL_BROADCAST, buf, count, dt));
    if (root < 0 || root >= c->size)
        return arg_error(c, DC_ERR_VALUE, "%s: broadcast: root %d is not a rank (world size %d)", WHO, root, c->size);
    dc_work *w = new_work(DC_COLL_BROADCAST, dt, count, count * dtype_size(dt));
    if (!w) return arg_error(c, DC_ERR_NOMEM, "broadcast: out of memory");
    w->buf = buf;
    w->root = root;
    return submit(c, w, out);
}

static dc_status barrier(dc_comm *c, dc_work **out, int close)
{
    if (out) *out = NULL;
    dc_work *w = new_work(DC_COLL_BARRIER, DC_COMM_UINT8, 0, 0);
    if (!w) return arg_error(c, DC_ERR_NOMEM, "barrier: out of memory");
    w->close_barrier = close;
    return submit(c, w, out);
}

dc_status dc_comm_barrier(dc_comm *c, dc_work **out)
{
    return barrier(c, out, 0);
}

static dc_status p2p(dc_comm *c, dc_coll_op op, void *buf, size_t count, dc_dtype dt, int peer, int tag, dc_work **out)
{
    char who_[96];
    if (out) *out = NULL;
    DC_TRY(check_common(c, op, buf, count, dt));
    if (peer < 0 || peer >= c->size)
        return arg_error(c, DC_ERR_VALUE, "%s: %s: peer %d is not a rank (world size %d)", WHO, dc_coll_op_name(op),
                         peer, c->size);
    if (tag < 0 || tag > 32767)
        return arg_error(c, DC_ERR_VALUE, "%s: %s: tag %d out of range (0..32767)", WHO, dc_coll_op_name(op), tag);
    dc_work *w = new_work(op, dt, count, count * dtype_size(dt));
    if (!w) return arg_error(c, DC_ERR_NOMEM, "%s: out of memory", dc_coll_op_name(op));
    w->buf = buf;
    w->root = peer;
    w->tag = tag;
    return submit(c, w, out);
}

dc_status dc_comm_send(dc_comm *c, const void *buf, size_t count, dc_dtype dt, int peer, int tag, dc_work **out)
{
    return p2p(c, DC_COLL_SEND, (void *)buf, count, dt, peer, tag, out);
}

dc_status dc_comm_recv(dc_comm *c, void *buf, size_t count, dc_dtype dt, int peer, int tag, dc_work **out)
{
    return p2p(c, DC_COLL_RECV, buf, count, dt, peer, tag, out);
}

/* --- the progress thread ---------------------------------------------------------------------- */

static void record_event_locked(dc_comm *c, dc_work *w)
{
    size_t at = (c->ev_head + c->ev_count) % DC_COMM_EVENTS;
    if (c->ev_count == DC_COMM_EVENTS)
        c->ev_head = (c->ev_head + 1) % DC_COMM_EVENTS;
    else
        c->ev_count++;
    c->ev[at] = (dc_comm_event){ w->seq, w->op, w->root, w->nbytes, w->t_enq, w->t_start, w->t_end, w->status };
}

/* The desync message: every distinct fingerprint with the ranks that issued it. */
static void desync_message(dc_comm *c, dc_work *w, const dc_fingerprint *all, char *msg, size_t n)
{
    char who_[96], d[160];
    int *group = calloc((size_t)c->size, sizeof *group);
    size_t len =
        (size_t)snprintf(msg, n, "%s: collective #%lld differs across ranks (desync):", WHO, (long long)w->seq);
    int ngroups = 0;
    for (int r = 0; r < c->size && group; r++) {
        if (group[r]) continue;
        group[r] = ++ngroups;
        char ranks[256];
        size_t rl = (size_t)snprintf(ranks, sizeof ranks, "%d", r);
        int nr = 1;
        for (int q = r + 1; q < c->size; q++) {
            if (group[q] || memcmp(&all[q], &all[r], sizeof all[r])) continue;
            group[q] = ngroups;
            nr++;
            if (rl < sizeof ranks - 16) rl += (size_t)snprintf(ranks + rl, sizeof ranks - rl, ",%d", q);
        }
        if (len < n)
            len += (size_t)snprintf(msg + len, n - len, "%s %s %s issued %s", ngroups > 1 ? ";" : "",
                                    nr > 1 ? "ranks" : "rank", ranks, dc_comm_describe(&all[r], d, sizeof d));
    }
    if (len < n) snprintf(msg + len, n - len, ". Every rank must issue the same collectives in the same order.");
    free(group);
}

/* Move w (the first unstarted work) towards RUNNING. Called without c->mu. 1 when it moved. */
static int advance(dc_comm *c, dc_work *w, int state)
{
    char msg[DC_COMM_ERRMAX], who_[96], d[160];
    int is_p2p = w->op == DC_COLL_SEND || w->op == DC_COLL_RECV;
    dc_status st = DC_OK;
    if (state == W_QUEUED && c->check_desync && !is_p2p && c->size > 1) {
        w->fp_words[0] = (uint64_t)w->fp.op | (uint64_t)(uint32_t)w->fp.dtype << 8 |
                         (uint64_t)(uint32_t)w->fp.red << 16 | (uint64_t)(uint32_t)(w->fp.root + 1) << 32;
        /* a hash of the whole fingerprint; compared by MAX of (h, ~h): equal everywhere iff max == ~max~ */
        uint64_t h = w->fp_words[0] * 0x9E3779B97F4A7C15ull ^ (uint64_t)w->fp.count * 0xC2B2AE3D27D4EB4Full ^
                     (uint64_t)w->fp.seq * 0x165667B19E3779F9ull;
        h ^= h >> 31;
        w->fp_words[0] = h;
        w->fp_words[1] = ~h;
        pthread_mutex_lock(&c->mu);
        w->t_fp = dc_comm_now_ns();
        pthread_mutex_unlock(&c->mu);
        st = dc_ctl_fp_start(c, w);
        if (st) {
            dc_comm_break(c, DC_ERR_COMM, w->errmsg);
            return 1;
        }
        pthread_mutex_lock(&c->mu);
        w->state = W_FP;
        pthread_mutex_unlock(&c->mu);
        return 1;
    }
    if (state == W_FP) {
        int done = 0;
        st = dc_ctl_fp_test(c, w, &done);
        if (st) {
            dc_comm_break(c, DC_ERR_COMM, w->errmsg);
            return 1;
        }
        if (!done) return 0;
        pthread_mutex_lock(&c->mu);
        c->st.desync_checks++;
        c->st.desync_check_s += (dc_comm_now_ns() - w->t_fp) * 1e-9;
        pthread_mutex_unlock(&c->mu);
        if (w->fp_red[0] != ~w->fp_red[1]) {
            dc_fingerprint *all = calloc((size_t)c->size, sizeof *all);
            if (!all || dc_ctl_fp_gather(c, w, all)) {
                snprintf(msg, sizeof msg,
                         "%s: collective #%lld differs across ranks (desync); this rank issued %s (the other "
                         "fingerprints could not be gathered)",
                         WHO, (long long)w->seq, dc_comm_describe(&w->fp, d, sizeof d));
            } else {
                desync_message(c, w, all, msg, sizeof msg);
            }
            free(all);
            dc_comm_break(c, DC_ERR_DESYNC, msg);
            return 1;
        }
    }
    /* start the operation itself */
    pthread_mutex_lock(&c->mu);
    w->t_start = dc_comm_now_ns();
    w->busy = 1;
    w->state = W_RUNNING;
    pthread_mutex_unlock(&c->mu);
    st = c->be->start(c, w);
    if (st) {
        pthread_mutex_lock(&c->mu);
        w->busy = 0;
        w->state = W_DONE;
        dc_comm_break_locked(c, st == DC_ERR_DESYNC ? st : DC_ERR_COMM, w->errmsg);
        pthread_mutex_unlock(&c->mu);
    }
    return 1;
}

static void finish_locked(dc_comm *c, dc_work *w, dc_status st)
{
    w->t_end = dc_comm_now_ns();
    w->state = W_DONE;
    w->busy = 0;
    if (!w->done) {
        w->done = 1;
        w->status = st;
    }
    if (w->op != DC_COLL_SEND && w->op != DC_COLL_RECV && w->seq + 1 > c->coll_done) c->coll_done = w->seq + 1;
    if (w->close_barrier && !st) c->closing = 2; /* every rank is closing now: exits are no failure */
    c->st.ops++;
    c->st.ops_by[w->op]++;
    c->st.bytes += (int64_t)w->nbytes;
    c->st.run_s += (w->t_end - w->t_start) * 1e-9;
    record_event_locked(c, w);
    pthread_cond_broadcast(&c->cv_done);
}

static void *progress_main(void *arg)
{
    dc_comm *c = arg;
    int64_t backoff_ns = 0;
    pthread_mutex_lock(&c->mu);
    while (!c->stop) {
        if (c->abort_requested && c->be->abort) {
            c->abort_requested = 0;
            pthread_mutex_unlock(&c->mu);
            c->be->abort(c);
            pthread_mutex_lock(&c->mu);
        }
        if (!c->head) {
            struct timespec dl;
            abs_deadline(&dl, 0.1);
            pthread_cond_timedwait(&c->cv_submit, &c->mu, &dl);
            backoff_ns = 0;
            continue;
        }
        int moved = 0, may_start = 1;
        dc_work *prev = NULL, *w = c->head;
        while (w) {
            if (w->state == W_QUEUED || w->state == W_FP) {
                if (may_start && !c->err) {
                    int state = w->state;
                    pthread_mutex_unlock(&c->mu);
                    moved |= advance(c, w, state);
                    pthread_mutex_lock(&c->mu);
                }
                if (w->state == W_QUEUED || w->state == W_FP) may_start = 0; /* issue order */
            } else if (w->state == W_RUNNING) {
                int done = 0;
                pthread_mutex_unlock(&c->mu);
                dc_status st = c->be->test(c, w, &done);
                pthread_mutex_lock(&c->mu);
                if (st) {
                    finish_locked(c, w, st);
                    dc_comm_break_locked(c, st == DC_ERR_DESYNC ? st : DC_ERR_COMM, w->errmsg);
                    moved = 1;
                } else if (done) {
                    finish_locked(c, w, DC_OK);
                    moved = 1;
                }
            }
            dc_work *next = w->next;
            if (w->state == W_DONE) { /* the engine's part is over */
                if (prev)
                    prev->next = next;
                else
                    c->head = next;
                if (c->tail == w) c->tail = prev;
                c->st.pending--;
                work_unref_locked(w);
            } else {
                prev = w;
            }
            w = next;
        }
        if (moved) {
            backoff_ns = 0;
            continue;
        }
        /* Nothing moved: poll again after a growing pause. The first ones are yields (the
         * transport progresses only inside our test calls), then sleeps up to 200 us so a rank
         * that waits long does not take the cores its compute threads need. */
        pthread_mutex_unlock(&c->mu);
        if (backoff_ns < 20000) {
            sched_yield();
            backoff_ns += 1000;
        } else {
            sleep_ns(backoff_ns);
            backoff_ns = backoff_ns * 2 > 200000 ? 200000 : backoff_ns * 2;
        }
        pthread_mutex_lock(&c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* --- the watchdog ----------------------------------------------------------------------------- */

static void hb_fill_locked(dc_comm *c, dc_hb_msg *m, int64_t now)
{
    memset(m, 0, sizeof *m);
    m->issued = c->coll_seq;
    m->completed = c->coll_done;
    m->pending_seq = -1;
    m->pending_op = -1;
    m->pending_peer = -1;
    for (dc_work *w = c->head; w; w = w->next) {
        if (w->done) continue;
        m->pending_seq = w->seq;
        m->pending_op = w->op;
        m->pending_peer = w->root;
        m->pending_ms = (now - w->t_enq) / 1000000;
        break;
    }
    m->idle_ms = c->last_issue_ns ? (now - c->last_issue_ns) / 1000000 : -1;
    m->last_op = c->coll_seq ? c->last_coll_op : -1;
    m->in_wait = c->in_wait > 0;
    m->broken = c->err;
    m->closing = c->closing;
    if (c->err) snprintf(m->why, sizeof m->why, "%.500s", c->errbuf);
}

static void hb_got(dc_comm *c, int rank, const dc_hb_msg *m)
{
    pthread_mutex_lock(&c->mu);
    c->peer_hb[rank] = *m;
    c->peer_hb[rank].why[sizeof m->why - 1] = '\0';
    c->peer_heard_ns[rank] = dc_comm_now_ns();
    pthread_mutex_unlock(&c->mu);
}

/* What a rank does, from its heartbeat: "waiting in all_reduce #42", "in no collective (last
 * issued all_reduce #41)". */
static void state_phrase(const dc_hb_msg *m, char *buf, size_t n)
{
    if (m->pending_seq >= 0) {
        if (m->pending_op == DC_COLL_SEND || m->pending_op == DC_COLL_RECV)
            snprintf(buf, n, "waiting in %s #%lld (peer %d)", dc_coll_op_name((dc_coll_op)m->pending_op),
                     (long long)m->pending_seq, m->pending_peer);
        else
            snprintf(buf, n, "waiting in %s #%lld", dc_coll_op_name((dc_coll_op)m->pending_op),
                     (long long)m->pending_seq);
    } else if (m->issued > 0) {
        snprintf(buf, n, "in no collective (last issued %s #%lld)", dc_coll_op_name((dc_coll_op)m->last_op),
                 (long long)m->issued - 1);
    } else {
        snprintf(buf, n, "in no collective (issued none yet)");
    }
}

/* The timeout message for this rank's oldest unfinished work w (caller holds c->mu). */
static void timeout_message(dc_comm *c, dc_work *w, int64_t now, char *msg, size_t n)
{
    char who_[96], d[160], who2[96];
    dc_hb_msg *st = calloc((size_t)c->size, sizeof *st);
    if (!st) {
        snprintf(msg, n, "%s: %s did not finish within %g s", WHO, dc_comm_describe(&w->fp, d, sizeof d), c->timeout_s);
        return;
    }
    for (int r = 0; r < c->size; r++) st[r] = c->peer_hb[r];
    hb_fill_locked(c, &st[c->rank], now);
    int is_p2p = w->op == DC_COLL_SEND || w->op == DC_COLL_RECV;
    size_t len;
    if (is_p2p)
        len = (size_t)snprintf(msg, n, "%s: collective timeout: %s #%lld (peer %d, tag %d) did not finish within %g s",
                               WHO, dc_coll_op_name(w->op), (long long)w->seq, w->root, w->tag, c->timeout_s);
    else
        len = (size_t)snprintf(msg, n, "%s: collective timeout: %s did not finish within %g s", WHO,
                               dc_comm_describe(&w->fp, d, sizeof d), c->timeout_s);
    /* lagging: the ranks that never issued this collective */
    int nlag = 0;
    if (!is_p2p) {
        for (int r = 0; r < c->size && len < n; r++) {
            if (st[r].issued > w->seq) continue;
            char ph[160];
            state_phrase(&st[r], ph, sizeof ph);
            int64_t age = c->peer_heard_ns[r] ? (now - c->peer_heard_ns[r]) / 1000000 : -1;
            len += (size_t)snprintf(msg + len, n - len, "%s %s is %s",
                                    nlag ? ";" : "; lagging:", who_pid(c, r, who2, sizeof who2), ph);
            if (!st[r].in_wait && st[r].idle_ms >= 0 && len < n)
                len += (size_t)snprintf(msg + len, n - len, ", its caller busy elsewhere for %.1f s",
                                        st[r].idle_ms * 1e-3);
            if (age > 3000 && r != c->rank && len < n)
                len += (size_t)snprintf(msg + len, n - len, " (status %.1f s old)", age * 1e-3);
            nlag++;
        }
    }
    /* everyone else, grouped by what they wait in */
    int *done = calloc((size_t)c->size, sizeof *done);
    for (int r = 0; r < c->size && done && len < n; r++) {
        if (done[r] || (!is_p2p && st[r].issued <= w->seq)) continue;
        char ph[160], ranks[256];
        state_phrase(&st[r], ph, sizeof ph);
        size_t rl = (size_t)snprintf(ranks, sizeof ranks, "%d", r);
        int nr = 1;
        done[r] = 1;
        for (int q = r + 1; q < c->size; q++) {
            if (done[q] || (!is_p2p && st[q].issued <= w->seq)) continue;
            char ph2[160];
            state_phrase(&st[q], ph2, sizeof ph2);
            if (strcmp(ph, ph2)) continue;
            done[q] = 1;
            nr++;
            if (rl < sizeof ranks - 16) rl += (size_t)snprintf(ranks + rl, sizeof ranks - rl, ",%d", q);
        }
        len += (size_t)snprintf(msg + len, n - len, "; %s %s %s %s", nr > 1 ? "ranks" : "rank", ranks,
                                nr > 1 ? "are" : "is", ph);
    }
    if (!is_p2p && nlag == 0 && len < n)
        snprintf(msg + len, n - len,
                 " (every rank issued it, but the transport did not complete it: a stuck peer or the network)");
    free(done);
    free(st);
}

/* 1 when the process of `rank` (on this machine) is gone or a zombie. */
static int local_pid_dead(dc_comm *c, int rank)
{
    pid_t pid = c->peers[rank].pid;
    if (kill(pid, 0) < 0 && errno == ESRCH) return 1;
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t k = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[k] = '\0';
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
}

static void *watchdog_main(void *arg)
{
    dc_comm *c = arg;
    const char *me_machine = c->peers[c->rank].machine;
    int64_t last_send = 0, last_live = 0;
    int last_broken = 0, last_closing = 0;
    dc_hb_msg mine;
    char msg[DC_COMM_ERRMAX], who_[96], who2[96];
    pthread_mutex_lock(&c->mu);
    while (!c->stop) {
        int64_t now = dc_comm_now_ns();
        /* 1. tell the others where we are */
        if (now - last_send >= (int64_t)(c->hb_period_s * 1e9) || (int)c->err != last_broken ||
            c->closing != last_closing) {
            hb_fill_locked(c, &mine, now);
            last_broken = c->err;
            last_closing = c->closing;
            last_send = now;
            pthread_mutex_unlock(&c->mu);
            dc_ctl_hb_send(c, &mine);
            pthread_mutex_lock(&c->mu);
        }
        pthread_mutex_unlock(&c->mu);
        dc_ctl_hb_poll(c, hb_got);
        pthread_mutex_lock(&c->mu);
        now = dc_comm_now_ns();
        /* 2. a peer failed: so do we, with its message */
        for (int r = 0; r < c->size && !c->err; r++) {
            if (r == c->rank || !c->peer_hb[r].broken) continue;
            snprintf(msg, sizeof msg, "%s: the communicator failed on %s: %s", WHO,
                     dc_comm_who(c, r, who2, sizeof who2), c->peer_hb[r].why);
            dc_comm_break_locked(c, (dc_status)c->peer_hb[r].broken, msg);
        }
        /* 3. dead peers (once per second) */
        if (!c->err && !c->closing && now - last_live >= 1000000000) {
            last_live = now;
            for (int r = 0; r < c->size; r++) {
                if (r == c->rank || c->peer_hb[r].closing) continue;
                int dead = 0;
                const char *how = "";
                if (!strcmp(c->peers[r].machine, me_machine)) {
                    dead = local_pid_dead(c, r);
                    how = "its process is gone";
                } else if (c->peer_heard_ns[r] && (now - c->peer_heard_ns[r]) * 1e-9 > c->dead_after_s) {
                    dead = 1;
                    how = "no heartbeat";
                }
                if (!dead) continue;
                dc_hb_msg self;
                hb_fill_locked(c, &self, now);
                char ph[160];
                state_phrase(&self, ph, sizeof ph);
                snprintf(msg, sizeof msg, "%s: peer %s died (%s) while this rank is %s", WHO,
                         who_pid(c, r, who2, sizeof who2), how, ph);
                c->peer_dead[r] = 1;
                dc_comm_break_locked(c, DC_ERR_COMM, msg);
                fprintf(stderr, "dutycycle: %s\n", msg); /* the job may be killed before a caller sees it */
                fflush(stderr);
                break;
            }
        }
        /* 4. the timeout: this rank's oldest unfinished operation */
        if (!c->err && c->timeout_s > 0) {
            for (dc_work *w = c->head; w; w = w->next) {
                if (w->done) continue;
                if ((now - w->t_enq) * 1e-9 > c->timeout_s) {
                    timeout_message(c, w, now, msg, sizeof msg);
                    dc_comm_break_locked(c, DC_ERR_TIMEOUT, msg);
                    fprintf(stderr, "dutycycle: %s\n", msg);
                    fflush(stderr);
                }
                break;
            }
        }
        struct timespec dl;
        abs_deadline(&dl, 0.05);
        pthread_cond_timedwait(&c->cv_done, &c->mu, &dl);
    }
    pthread_mutex_unlock(&c->mu);
    dc_ctl_hb_stop(c);
    return NULL;
}

/* --- life cycle ------------------------------------------------------------------------------- */

static double env_seconds(const char *name, double dflt)
{
    const char *v = getenv(name);
    if (!v || !*v) return dflt;
    char *end;
    double d = strtod(v, &end);
    return end != v && d > 0 ? d : dflt;
}

dc_status dc_comm_init(dc_comm **out, const char *backend, double timeout_s)
{
    *out = NULL;
    const dc_comm_vtable *be = NULL;
    if (!backend || !strcmp(backend, "mpi") || !strcmp(backend, "gloo")) {
        be = &dc_comm_backend_mpi;
    } else if (!strcmp(backend, "nccl")) {
#ifdef DC_COMM_NCCL
        be = &dc_comm_backend_nccl;
#else
        return dc_error(DC_ERR_COMM, "backend 'nccl' is not available: dutycycle was built without CUDA or without "
                                     "MPI (NCCL's unique id travels over MPI); use backend='mpi'");
#endif
    } else {
        return dc_error(DC_ERR_VALUE, "unknown communication backend '%s' (mpi or nccl)", backend);
    }
    dc_comm *c = calloc(1, sizeof *c);
    if (!c) return dc_error(DC_ERR_NOMEM, "dc_comm_init: out of memory");
    pthread_mutex_init(&c->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cv_submit, &ca);
    pthread_cond_init(&c->cv_done, &ca);
    pthread_condattr_destroy(&ca);
    c->be = be;
    c->timeout_s = timeout_s > 0 ? timeout_s : env_seconds("DUTYCYCLE_COMM_TIMEOUT", 600.0);
    c->dead_after_s = env_seconds("DUTYCYCLE_COMM_DEAD_AFTER", 30.0);
    c->hb_period_s = env_seconds("DUTYCYCLE_COMM_HEARTBEAT", 1.0);
    const char *chk = getenv("DUTYCYCLE_COMM_DESYNC_CHECK"); /* for measuring its cost only */
    c->check_desync = !(chk && !strcmp(chk, "0"));
    c->st.desync_check_enabled = c->check_desync;
    c->last_coll_op = -1;
    c->ev = calloc(DC_COMM_EVENTS, sizeof *c->ev);
    char err[DC_COMM_ERRMAX] = "";
    dc_status st = c->ev ? dc_ctl_init(c, err, sizeof err) : DC_ERR_NOMEM;
    if (st) {
        dc_error(st, "%s", err[0] ? err : "dc_comm_init: out of memory");
        free(c->ev);
        free(c);
        return st;
    }
    c->peer_hb = calloc((size_t)c->size, sizeof *c->peer_hb);
    c->peer_heard_ns = calloc((size_t)c->size, sizeof *c->peer_heard_ns);
    c->peer_dead = calloc((size_t)c->size, sizeof *c->peer_dead);
    if (!c->peer_hb || !c->peer_heard_ns || !c->peer_dead) {
        st = dc_error(DC_ERR_NOMEM, "dc_comm_init: out of memory");
        goto fail;
    }
    for (int r = 0; r < c->size; r++) {
        c->peer_hb[r].pending_seq = -1;
        c->peer_hb[r].pending_op = -1;
        c->peer_hb[r].last_op = -1;
    }
    if ((st = be->init(c))) goto fail; /* message in dc_last_error */
    if ((st = dc_ctl_hb_start(c))) goto fail_be;
    if (pthread_create(&c->progress_th, NULL, progress_main, c)) {
        st = dc_error(DC_ERR_COMM, "dc_comm_init: can't start the progress thread");
        goto fail_hb;
    }
    if (pthread_create(&c->watchdog_th, NULL, watchdog_main, c)) {
        pthread_mutex_lock(&c->mu);
        c->stop = 1;
        pthread_cond_broadcast(&c->cv_submit);
        pthread_mutex_unlock(&c->mu);
        pthread_join(c->progress_th, NULL);
        st = dc_error(DC_ERR_COMM, "dc_comm_init: can't start the watchdog thread");
        goto fail_hb;
    }
    c->threads_up = 1;
    *out = c;
    return DC_OK;
fail_hb:
    dc_ctl_hb_stop(c);
fail_be:
    be->free(c);
fail:
    dc_ctl_free(c, 0);
    free(c->peer_hb);
    free(c->peer_heard_ns);
    free(c->peer_dead);
    free(c->ev);
    free(c);
    return st;
}

dc_status dc_comm_close(dc_comm *c)
{
    if (!c) return DC_OK;
    pthread_mutex_lock(&c->mu);
    int closed = c->closed, broken = c->err != DC_OK;
    if (!closed && !broken) c->closing = 1; /* announced to the peers by the watchdog */
    pthread_mutex_unlock(&c->mu);
    if (closed) return c->err;
    if (!broken) barrier(c, NULL, 1); /* drains this rank's queue (issue order) and meets the others */
    pthread_mutex_lock(&c->mu);
    c->closed = 1;
    c->stop = 1;
    broken = c->err != DC_OK;
    pthread_cond_broadcast(&c->cv_submit);
    pthread_cond_broadcast(&c->cv_done);
    pthread_mutex_unlock(&c->mu);
    if (c->threads_up) {
        pthread_join(c->progress_th, NULL);
        pthread_join(c->watchdog_th, NULL);
        c->threads_up = 0;
    }
    int stuck = 0;
    for (dc_work *w = c->head; w; w = w->next) stuck |= w->busy;
    c->be->free(c);
    /* a desync fails before any data moved: MPI itself is fine. Stuck works (timeout, dead peer)
     * leave MPI unusable: then its communicators are not freed nor MPI finalised */
    dc_ctl_free(c, stuck || (broken && c->err != DC_ERR_DESYNC));
    return c->err;
}

void dc_comm_free(dc_comm *c)
{
    if (!c) return;
    dc_comm_close(c);
    /* works still in the list are stuck in the transport: the engine's references leak with them */
    free(c->peer_hb);
    free(c->peer_heard_ns);
    free(c->peer_dead);
    free(c->ev);
    free(c->peers);
    pthread_cond_destroy(&c->cv_submit);
    pthread_cond_destroy(&c->cv_done);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

void dc_comm_abort(dc_comm *c, const char *reason)
{
    char who_[96];
    fprintf(stderr, "dutycycle: %s: aborting the job: %s\n", c ? WHO : "rank ?", reason ? reason : "");
    fflush(stderr);
    if (c && c->be->abort) c->be->abort(c);
    dc_ctl_abort(c);
}

/* --- accessors -------------------------------------------------------------------------------- */

int dc_comm_rank(const dc_comm *c)
{
    return c->rank;
}
int dc_comm_size(const dc_comm *c)
{
    return c->size;
}
int dc_comm_local_rank(const dc_comm *c)
{
    return c->local_rank;
}
int dc_comm_local_size(const dc_comm *c)
{
    return c->local_size;
}
const char *dc_comm_hostname(const dc_comm *c, int rank)
{
    if (rank < 0) rank = c->rank;
    return rank < c->size ? c->peers[rank].host : "?";
}
const char *dc_comm_backend(const dc_comm *c)
{
    return c->be->name;
}
double dc_comm_timeout(const dc_comm *c)
{
    return c->timeout_s;
}
void dc_comm_set_timeout(dc_comm *c, double timeout_s)
{
    pthread_mutex_lock(&c->mu);
    c->timeout_s = timeout_s > 0 ? timeout_s : env_seconds("DUTYCYCLE_COMM_TIMEOUT", 600.0);
    pthread_mutex_unlock(&c->mu);
}

size_t dc_comm_events(dc_comm *c, dc_comm_event *out, size_t max, int clear)
{
    pthread_mutex_lock(&c->mu);
    size_t n = c->ev_count < max ? c->ev_count : max;
    size_t skip = c->ev_count - n; /* keep the newest when out is short */
    for (size_t k = 0; k < n; k++) out[k] = c->ev[(c->ev_head + skip + k) % DC_COMM_EVENTS];
    if (clear) c->ev_head = c->ev_count = 0;
    pthread_mutex_unlock(&c->mu);
    return n;
}

void dc_comm_get_stats(dc_comm *c, dc_comm_stats *out)
{
    pthread_mutex_lock(&c->mu);
    *out = c->st;
    pthread_mutex_unlock(&c->mu);
}
