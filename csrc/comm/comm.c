/* comm.c: the engine under every backend (see comm-impl.h for the layout).
 *
 * One queue per communicator holds the operations in issue order. The progress thread walks it:
 * it starts the first unstarted operation once its fingerprint exchange agreed (so the k-th
 * collective runs as the k-th everywhere, and a mismatch fails before any data moves), and tests
 * the running ones, which may overlap (MPI allows nonblocking collectives in flight together as
 * long as every rank started them in the same order). The caller's thread only enqueues and
 * waits; it never calls the transport.
 *
 * The watchdog thread, independent of both, is in watchdog.c. */
#define _GNU_SOURCE
#include "comm-impl.h"

#include <errno.h>
#include <stddef.h>
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

void dc_comm_abs_deadline(struct timespec *ts, double s)
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
const char *dc_comm_who_pid(dc_comm *c, int rank, char *buf, size_t n)
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
    if (timeout_s >= 0) dc_comm_abs_deadline(&deadline, timeout_s);
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

/* --- the fingerprint slot --------------------------------------------------------------------- */

#define REDUCE_LOOP(T, load, store)                                                                       \
    do {                                                                                                  \
        const T *a = (const T *)in;                                                                       \
        T *b = (T *)inout;                                                                                \
        for (size_t k = 0; k < n; k++) {                                                                  \
            double x = load(a[k]), y = load(b[k]);                                                        \
            double r = red == DC_RED_MAX ? (x > y ? x : y) : red == DC_RED_MIN ? (x < y ? x : y) : x + y; \
            b[k] = store(r);                                                                              \
        }                                                                                                 \
    } while (0)
#define ID(x)       (x)
#define F16_IN(h)   ((double)dc_f16_to_f32(h))
#define F16_OUT(r)  dc_f32_to_f16((float)(r))
#define BF16_IN(h)  ((double)dc_bf16_to_f32(h))
#define BF16_OUT(r) dc_f32_to_bf16((float)(r))

/* The same arithmetic MPI's own ops do (float32 adds in float; int64 exactly). */
static void reduce_payload(const void *in, void *inout, size_t n, dc_dtype dt, dc_reduce_op red)
{
    switch ((int)dt) {
    case DC_FLOAT32: {
        const float *a = in;
        float *b = inout;
        for (size_t k = 0; k < n; k++)
            b[k] = red == DC_RED_MAX   ? (a[k] > b[k] ? a[k] : b[k])
                   : red == DC_RED_MIN ? (a[k] < b[k] ? a[k] : b[k])
                                       : a[k] + b[k];
        break;
    }
    case DC_FLOAT64: REDUCE_LOOP(double, ID, ID); break;
    case DC_FLOAT16: REDUCE_LOOP(uint16_t, F16_IN, F16_OUT); break;
    case DC_BFLOAT16: REDUCE_LOOP(uint16_t, BF16_IN, BF16_OUT); break;
    case DC_INT32: {
        const int32_t *a = in;
        int32_t *b = inout;
        for (size_t k = 0; k < n; k++)
            b[k] = red == DC_RED_MAX   ? (a[k] > b[k] ? a[k] : b[k])
                   : red == DC_RED_MIN ? (a[k] < b[k] ? a[k] : b[k])
                                       : (int32_t)((uint32_t)a[k] + (uint32_t)b[k]);
        break;
    }
    case DC_INT64: {
        const int64_t *a = in;
        int64_t *b = inout;
        for (size_t k = 0; k < n; k++)
            b[k] = red == DC_RED_MAX   ? (a[k] > b[k] ? a[k] : b[k])
                   : red == DC_RED_MIN ? (a[k] < b[k] ? a[k] : b[k])
                                       : (int64_t)((uint64_t)a[k] + (uint64_t)b[k]);
        break;
    }
    case DC_BOOL: {
        const uint8_t *a = in;
        uint8_t *b = inout;
        for (size_t k = 0; k < n; k++) b[k] = red == DC_RED_MIN ? (a[k] && b[k]) : (a[k] || b[k]);
        break;
    }
    default: { /* uint8 */
        const uint8_t *a = in;
        uint8_t *b = inout;
        for (size_t k = 0; k < n; k++)
            b[k] = red == DC_RED_MAX   ? (a[k] > b[k] ? a[k] : b[k])
                   : red == DC_RED_MIN ? (a[k] < b[k] ? a[k] : b[k])
                                       : (uint8_t)(a[k] + b[k]);
    }
    }
}

void dc_fp_slot_combine(const dc_fp_slot *in, dc_fp_slot *inout)
{
    if (inout->mismatch) return;
    if (in->mismatch || memcmp(&in->fp, &inout->fp, sizeof in->fp) || in->nbytes != inout->nbytes) {
        inout->mismatch = 1;
        return;
    }
    if (!in->has_data || in->nbytes <= 0) return;
    if (in->fp.op == DC_COLL_BROADCAST) { /* carry the root's payload */
        if (!inout->has_data) memcpy(inout->data, in->data, (size_t)in->nbytes);
        inout->has_data = 1;
    } else if (in->fp.op == DC_COLL_ALL_REDUCE && inout->has_data) {
        reduce_payload(in->data, inout->data, (size_t)in->fp.count, (dc_dtype)in->fp.dtype, (dc_reduce_op)in->fp.red);
    }
}

void dc_comm_divide(void *buf, size_t n, dc_dtype dt, double by)
{
    switch ((int)dt) {
    case DC_FLOAT32:
        for (size_t k = 0; k < n; k++) ((float *)buf)[k] = (float)(((float *)buf)[k] / by);
        break;
    case DC_FLOAT64:
        for (size_t k = 0; k < n; k++) ((double *)buf)[k] /= by;
        break;
    case DC_FLOAT16:
        for (size_t k = 0; k < n; k++)
            ((uint16_t *)buf)[k] = dc_f32_to_f16((float)(dc_f16_to_f32(((uint16_t *)buf)[k]) / by));
        break;
    case DC_BFLOAT16:
        for (size_t k = 0; k < n; k++)
            ((uint16_t *)buf)[k] = dc_f32_to_bf16((float)(dc_bf16_to_f32(((uint16_t *)buf)[k]) / by));
        break;
    default: break;
    }
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

static void finish_locked(dc_comm *c, dc_work *w, dc_status st);

/* Move w (the first unstarted work) towards RUNNING. Called without c->mu. 1 when it moved. */
static int advance(dc_comm *c, dc_work *w, int state)
{
    char msg[DC_COMM_ERRMAX], who_[96], d[160];
    int is_p2p = w->op == DC_COLL_SEND || w->op == DC_COLL_RECV;
    dc_status st = DC_OK;
    if (state == W_QUEUED && c->check_desync && !is_p2p && c->size > 1) {
        dc_fp_slot *in = &w->fp_in;
        memset(in, 0, offsetof(dc_fp_slot, data));
        in->fp = w->fp;
        in->nbytes = (int32_t)(w->nbytes <= DC_FP_INLINE ? w->nbytes : 0);
        w->fp_inline = c->host_buffers && w->nbytes <= DC_FP_INLINE &&
                       (w->op == DC_COLL_ALL_REDUCE || w->op == DC_COLL_BROADCAST || w->op == DC_COLL_BARRIER);
        if (w->fp_inline && (w->op == DC_COLL_ALL_REDUCE || (w->op == DC_COLL_BROADCAST && w->root == c->rank))) {
            memcpy(in->data, w->buf, w->nbytes);
            in->has_data = 1;
        }
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
        int64_t now = dc_comm_now_ns();
        pthread_mutex_lock(&c->mu);
        c->st.desync_checks++;
        c->st.desync_check_s += (now - w->t_fp) * 1e-9;
        pthread_mutex_unlock(&c->mu);
        if (w->fp_out.mismatch) {
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
        if (w->fp_inline) { /* the exchange was the collective */
            if (w->op != DC_COLL_BARRIER && w->fp_out.has_data) memcpy(w->buf, w->fp_out.data, w->nbytes);
            if (w->op == DC_COLL_ALL_REDUCE && w->red == DC_RED_AVG)
                dc_comm_divide(w->buf, w->count, w->dt, (double)c->size);
            pthread_mutex_lock(&c->mu);
            w->t_start = w->t_fp;
            finish_locked(c, w, DC_OK);
            pthread_mutex_unlock(&c->mu);
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
            dc_comm_abs_deadline(&dl, 0.1);
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
        /* Nothing moved: poll again after a growing pause. For the first 200 us yields (the
         * transport progresses only inside our test calls, and a collective's partner is usually
         * that close), then sleeps up to 50 us, so a rank that waits long leaves the cores to its
         * compute threads (DUTYCYCLE_COMM_SPIN_US / _SLEEP_MAX_US tune both). */
        pthread_mutex_unlock(&c->mu);
        if (backoff_ns < c->spin_ns) {
            sched_yield();
            backoff_ns += 1000;
        } else {
            sleep_ns(backoff_ns);
            backoff_ns = backoff_ns * 2 > c->sleep_max_ns ? c->sleep_max_ns : backoff_ns * 2;
        }
        pthread_mutex_lock(&c->mu);
    }
    pthread_mutex_unlock(&c->mu);
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
    c->spin_ns = (int64_t)(env_seconds("DUTYCYCLE_COMM_SPIN_US", 200) * 1e3);
    c->sleep_max_ns = (int64_t)(env_seconds("DUTYCYCLE_COMM_SLEEP_MAX_US", 50) * 1e3);
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
    if (pthread_create(&c->watchdog_th, NULL, dc_comm_watchdog_main, c)) {
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

size_t dc_comm_event_count(dc_comm *c)
{
    pthread_mutex_lock(&c->mu);
    size_t n = c->ev_count;
    pthread_mutex_unlock(&c->mu);
    return n;
}

void dc_comm_get_stats(dc_comm *c, dc_comm_stats *out)
{
    pthread_mutex_lock(&c->mu);
    *out = c->st;
    pthread_mutex_unlock(&c->mu);
}
