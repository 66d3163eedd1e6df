/* comm-mpi.c: MPI under every backend (the control plane) and the "mpi" data backend.
 *
 * The control plane: MPI_Init_thread(MPI_THREAD_MULTIPLE), or adopting an MPI the process already
 * initialised (mpi4py, a host program); three duplicates of MPI_COMM_WORLD per communicator, so
 * our traffic never matches anybody else's: `data` for the operations, `fp` for the fingerprint
 * exchange before each collective, `wd` for the watchdog's heartbeats. Errors return (never
 * MPI's default abort), and become messages naming the rank and the operation.
 *
 * The data backend: one nonblocking MPI call per operation (MPI_Iallreduce, ...), started by the
 * progress thread in issue order and driven by its MPI_Test calls (Open MPI progresses only inside
 * MPI calls). float16/bfloat16 reduce through user-defined ops; avg is a sum divided by the size;
 * bool reduces with logical or (sum, max) and and (min).
 *
 * Built without MPI (no mpicc at build time, or DUTYCYCLE_MPI=0) every entry point reports that. */
#define _GNU_SOURCE
#include "comm-impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef DC_WITH_MPI
#include <mpi.h>

typedef struct {
    MPI_Comm data, fp, wd;
    MPI_Request *hb_rreq, *hb_sreq; /* [size] */
    dc_hb_msg *hb_rbuf, *hb_sbuf;   /* [size] */
    int *hb_rdead;                  /* [size]: the receive failed; not reposted */
} ctl;

typedef struct {
    MPI_Request req, fpreq;
    void *tmp; /* a copy of an input that overlaps the output */
} mpi_work;
_Static_assert(sizeof(mpi_work) <= sizeof(((dc_work *)0)->be), "mpi_work must fit dc_work.be");

#define CTL(c) ((ctl *)(c)->ctl)
#define MW(w)  ((mpi_work *)(void *)(w)->be)

/* Process-wide MPI state: MPI is initialised once per process and finalised at exit. */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_owns, g_live, g_broken, g_types_up;
static MPI_Datatype g_half, g_slot;
static MPI_Op g_slot_op;
static MPI_Op g_half_ops[2][3]; /* [float16, bfloat16][sum, max, min] */

static void mpi_errstr(int code, char *buf, size_t n)
{
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, s, &len) != MPI_SUCCESS) len = snprintf(s, sizeof s, "MPI error %d", code);
    s[len < (int)sizeof s ? len : (int)sizeof s - 1] = '\0';
    snprintf(buf, n, "%s", s);
}

/* --- float16 / bfloat16 reductions ------------------------------------------------------------ */

#define HALF_OP(name, tof, fromf, expr)                                 \
    static void name(void *in, void *inout, int *len, MPI_Datatype *dt) \
    {                                                                   \
        (void)dt;                                                       \
        const uint16_t *a = in;                                         \
        uint16_t *b = inout;                                            \
        for (int k = 0; k < *len; k++) {                                \
            float x = tof(a[k]), y = tof(b[k]);                         \
            b[k] = fromf(expr);                                         \
        }                                                               \
    }
HALF_OP(f16_sum, dc_f16_to_f32, dc_f32_to_f16, x + y)
HALF_OP(f16_max, dc_f16_to_f32, dc_f32_to_f16, x > y || y != y ? (x != x ? x : (x > y ? x : y)) : y)
HALF_OP(f16_min, dc_f16_to_f32, dc_f32_to_f16, x < y || y != y ? (x != x ? x : (x < y ? x : y)) : y)
HALF_OP(bf16_sum, dc_bf16_to_f32, dc_f32_to_bf16, x + y)
HALF_OP(bf16_max, dc_bf16_to_f32, dc_f32_to_bf16, x > y || y != y ? (x != x ? x : (x > y ? x : y)) : y)
HALF_OP(bf16_min, dc_bf16_to_f32, dc_f32_to_bf16, x < y || y != y ? (x != x ? x : (x < y ? x : y)) : y)

static void slot_combine(void *in, void *inout, int *len, MPI_Datatype *dt)
{
    (void)dt;
    for (int k = 0; k < *len; k++) dc_fp_slot_combine((const dc_fp_slot *)in + k, (dc_fp_slot *)inout + k);
}

static int types_up_locked(void)
{
    if (g_types_up) return MPI_SUCCESS;
    int rc = MPI_Type_contiguous(2, MPI_BYTE, &g_half);
    if (rc == MPI_SUCCESS) rc = MPI_Type_commit(&g_half);
    if (rc == MPI_SUCCESS) rc = MPI_Type_contiguous(DC_FP_SLOT, MPI_BYTE, &g_slot);
    if (rc == MPI_SUCCESS) rc = MPI_Type_commit(&g_slot);
    if (rc == MPI_SUCCESS) rc = MPI_Op_create(slot_combine, 1, &g_slot_op);
    MPI_User_function *fns[2][3] = { { f16_sum, f16_max, f16_min }, { bf16_sum, bf16_max, bf16_min } };
    for (int k = 0; k < 2 && rc == MPI_SUCCESS; k++)
        for (int j = 0; j < 3 && rc == MPI_SUCCESS; j++) rc = MPI_Op_create(fns[k][j], 1, &g_half_ops[k][j]);
    if (rc == MPI_SUCCESS) g_types_up = 1;
    return rc;
}

static MPI_Datatype mpi_type(dc_dtype dt)
{
    switch ((int)dt) {
    case DC_FLOAT32: return MPI_FLOAT;
    case DC_FLOAT64: return MPI_DOUBLE;
    case DC_INT32: return MPI_INT32_T;
    case DC_INT64: return MPI_INT64_T;
    case DC_BOOL: return MPI_C_BOOL;
    case DC_FLOAT16:
    case DC_BFLOAT16: return g_half;
    default: return MPI_UINT8_T;
    }
}

static MPI_Op mpi_op(dc_dtype dt, dc_reduce_op red)
{
    int j = red == DC_RED_MAX ? 1 : red == DC_RED_MIN ? 2 : 0;
    if (dt == DC_FLOAT16) return g_half_ops[0][j];
    if (dt == DC_BFLOAT16) return g_half_ops[1][j];
    if (dt == DC_BOOL) return red == DC_RED_MIN ? MPI_LAND : MPI_LOR;
    return j == 1 ? MPI_MAX : j == 2 ? MPI_MIN : MPI_SUM;
}

/* --- the control plane ------------------------------------------------------------------------ */

static void finalize_at_exit(void)
{
    pthread_mutex_lock(&g_mu);
    int fin = 0;
    MPI_Finalized(&fin);
    /* not while a communicator's threads still run, nor after one broke (a peer may be stuck, and
     * MPI_Finalize synchronises with every rank) */
    if (g_owns && !fin && !g_live && !g_broken) MPI_Finalize();
    pthread_mutex_unlock(&g_mu);
}

static void read_boot_id(char *buf, size_t n)
{
    buf[0] = '\0';
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (!f) return;
    if (!fgets(buf, (int)n, f)) buf[0] = '\0';
    fclose(f);
    buf[strcspn(buf, "\n")] = '\0';
}

dc_status dc_ctl_init(dc_comm *c, char *err, size_t errn)
{
    int inited = 0, fin = 0, provided = 0, rc;
    char es[256];
    pthread_mutex_lock(&g_mu);
    MPI_Initialized(&inited);
    MPI_Finalized(&fin);
    if (fin) {
        pthread_mutex_unlock(&g_mu);
        snprintf(err, errn, "MPI is already finalised in this process: no communicator can be created any more");
        return DC_ERR_COMM;
    }
    if (!inited) {
        rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided);
        if (rc != MPI_SUCCESS) {
            pthread_mutex_unlock(&g_mu);
            mpi_errstr(rc, es, sizeof es);
            snprintf(err, errn, "MPI_Init_thread failed: %s", es);
            return DC_ERR_COMM;
        }
        g_owns = 1;
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
        atexit(finalize_at_exit);
    } else {
        MPI_Query_thread(&provided);
    }
    if (provided < MPI_THREAD_MULTIPLE) {
        pthread_mutex_unlock(&g_mu);
        snprintf(err, errn,
                 "MPI was initialised with thread level %d; dutycycle's progress and watchdog threads need "
                 "MPI_THREAD_MULTIPLE (%d): initialise MPI with MPI_Init_thread(MPI_THREAD_MULTIPLE), or let "
                 "dutycycle do it",
                 provided, MPI_THREAD_MULTIPLE);
        return DC_ERR_COMM;
    }
    rc = types_up_locked();
    if (rc == MPI_SUCCESS) g_live++;
    pthread_mutex_unlock(&g_mu);
    if (rc != MPI_SUCCESS) {
        mpi_errstr(rc, es, sizeof es);
        snprintf(err, errn, "MPI: can't create the float16 reduction ops: %s", es);
        return DC_ERR_COMM;
    }
    ctl *x = calloc(1, sizeof *x);
    if (!x) goto nomem;
    c->ctl = x;
    x->data = x->fp = x->wd = MPI_COMM_NULL;
    MPI_Comm *dups[3] = { &x->data, &x->fp, &x->wd };
    for (int k = 0; k < 3; k++) {
        rc = MPI_Comm_dup(MPI_COMM_WORLD, dups[k]);
        if (rc != MPI_SUCCESS) {
            mpi_errstr(rc, es, sizeof es);
            snprintf(err, errn, "MPI_Comm_dup failed: %s", es);
            dc_ctl_free(c, 1);
            return DC_ERR_COMM;
        }
        MPI_Comm_set_errhandler(*dups[k], MPI_ERRORS_RETURN);
    }
    MPI_Comm_rank(x->data, &c->rank);
    MPI_Comm_size(x->data, &c->size);
    c->peers = calloc((size_t)c->size, sizeof *c->peers);
    x->hb_rreq = calloc((size_t)c->size, sizeof *x->hb_rreq);
    x->hb_sreq = calloc((size_t)c->size, sizeof *x->hb_sreq);
    x->hb_rbuf = calloc((size_t)c->size, sizeof *x->hb_rbuf);
    x->hb_sbuf = calloc((size_t)c->size, sizeof *x->hb_sbuf);
    x->hb_rdead = calloc((size_t)c->size, sizeof *x->hb_rdead);
    if (!c->peers || !x->hb_rreq || !x->hb_sreq || !x->hb_rbuf || !x->hb_sbuf || !x->hb_rdead) {
        dc_ctl_free(c, 1);
        goto nomem;
    }
    for (int r = 0; r < c->size; r++) x->hb_rreq[r] = x->hb_sreq[r] = MPI_REQUEST_NULL;
    dc_comm_peer me;
    memset(&me, 0, sizeof me);
    gethostname(me.host, sizeof me.host - 1);
    char boot[64];
    read_boot_id(boot, sizeof boot);
    snprintf(me.machine, sizeof me.machine, "%.48s/%.40s", me.host, boot);
    me.pid = (int32_t)getpid();
    rc = MPI_Allgather(&me, (int)sizeof me, MPI_BYTE, c->peers, (int)sizeof me, MPI_BYTE, x->data);
    if (rc != MPI_SUCCESS) {
        mpi_errstr(rc, es, sizeof es);
        snprintf(err, errn, "rank %d: exchanging host names failed: %s", c->rank, es);
        dc_ctl_free(c, 1);
        return DC_ERR_COMM;
    }
    for (int r = 0; r < c->size; r++) {
        c->peers[r].host[DC_COMM_MAXHOST - 1] = '\0';
        c->peers[r].machine[sizeof me.machine - 1] = '\0';
        if (strcmp(c->peers[r].machine, c->peers[c->rank].machine)) continue;
        if (r < c->rank) c->local_rank++;
        c->local_size++;
    }
    return DC_OK;
nomem:
    snprintf(err, errn, "dc_comm_init: out of memory");
    return DC_ERR_NOMEM;
}

void dc_ctl_free(dc_comm *c, int broken)
{
    ctl *x = CTL(c);
    if (x) {
        if (!broken) {
            if (x->data != MPI_COMM_NULL) MPI_Comm_free(&x->data);
            if (x->fp != MPI_COMM_NULL) MPI_Comm_free(&x->fp);
            if (x->wd != MPI_COMM_NULL) MPI_Comm_free(&x->wd);
        }
        free(x->hb_rreq);
        free(x->hb_sreq);
        free(x->hb_rbuf);
        free(x->hb_sbuf);
        free(x->hb_rdead);
        free(x);
        c->ctl = NULL;
    }
    pthread_mutex_lock(&g_mu);
    g_live--;
    if (broken) g_broken = 1;
    pthread_mutex_unlock(&g_mu);
}

void *dc_ctl_data_comm(dc_comm *c)
{
    return (void *)(uintptr_t)CTL(c)->data;
}

static void work_mpi_error(dc_comm *c, dc_work *w, const char *what, int rc)
{
    char es[256], who[96], d[160];
    mpi_errstr(rc, es, sizeof es);
    snprintf(w->errmsg, sizeof w->errmsg, "%s: %s: %s failed: %s", dc_comm_who(c, c->rank, who, sizeof who),
             dc_comm_describe(&w->fp, d, sizeof d), what, es);
}

dc_status dc_ctl_fp_start(dc_comm *c, dc_work *w)
{
    int rc = MPI_Iallreduce(&w->fp_in, &w->fp_out, 1, g_slot, g_slot_op, CTL(c)->fp, &MW(w)->fpreq);
    if (rc == MPI_SUCCESS) return DC_OK;
    work_mpi_error(c, w, "the fingerprint exchange", rc);
    return DC_ERR_COMM;
}

dc_status dc_ctl_fp_test(dc_comm *c, dc_work *w, int *done)
{
    int rc = MPI_Test(&MW(w)->fpreq, done, MPI_STATUS_IGNORE);
    if (rc == MPI_SUCCESS) return DC_OK;
    work_mpi_error(c, w, "the fingerprint exchange", rc);
    return DC_ERR_COMM;
}

dc_status dc_ctl_fp_gather(dc_comm *c, dc_work *w, dc_fingerprint *all)
{
    MPI_Request rq;
    int rc = MPI_Iallgather(&w->fp, (int)sizeof w->fp, MPI_BYTE, all, (int)sizeof w->fp, MPI_BYTE, CTL(c)->fp, &rq);
    if (rc != MPI_SUCCESS) return DC_ERR_COMM;
    /* every rank saw the same mismatch, so every rank gathers: bounded by the timeout anyway */
    int64_t t0 = dc_comm_now_ns();
    for (int done = 0; !done;) {
        if (MPI_Test(&rq, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) return DC_ERR_COMM;
        if (!done) {
            if ((dc_comm_now_ns() - t0) * 1e-9 > c->timeout_s) return DC_ERR_TIMEOUT;
            struct timespec ts = { 0, 100000 };
            nanosleep(&ts, NULL);
        }
    }
    return DC_OK;
}

enum { HB_TAG = 7 };

dc_status dc_ctl_hb_start(dc_comm *c)
{
    ctl *x = CTL(c);
    for (int r = 0; r < c->size; r++) {
        if (r == c->rank) continue;
        int rc = MPI_Irecv(&x->hb_rbuf[r], (int)sizeof(dc_hb_msg), MPI_BYTE, r, HB_TAG, x->wd, &x->hb_rreq[r]);
        if (rc != MPI_SUCCESS) {
            char es[256];
            mpi_errstr(rc, es, sizeof es);
            return dc_error(DC_ERR_COMM, "rank %d: posting the watchdog's receives failed: %s", c->rank, es);
        }
    }
    return DC_OK;
}

void dc_ctl_hb_send(dc_comm *c, const dc_hb_msg *m)
{
    ctl *x = CTL(c);
    for (int r = 0; r < c->size; r++) {
        if (r == c->rank || c->peer_dead[r]) continue;
        if (x->hb_sreq[r] != MPI_REQUEST_NULL) {
            int done = 0;
            if (MPI_Test(&x->hb_sreq[r], &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
                x->hb_sreq[r] = MPI_REQUEST_NULL;
                continue;
            }
            if (!done) continue; /* the previous one is still on its way: skip this beat */
        }
        x->hb_sbuf[r] = *m;
        if (MPI_Isend(&x->hb_sbuf[r], (int)sizeof *m, MPI_BYTE, r, HB_TAG, x->wd, &x->hb_sreq[r]) != MPI_SUCCESS)
            x->hb_sreq[r] = MPI_REQUEST_NULL;
    }
}

void dc_ctl_hb_poll(dc_comm *c, void (*got)(dc_comm *, int, const dc_hb_msg *))
{
    ctl *x = CTL(c);
    for (int r = 0; r < c->size; r++) {
        if (r == c->rank || x->hb_rdead[r]) continue;
        for (int k = 0; k < 8; k++) { /* drain a few queued beats */
            int done = 0;
            if (MPI_Test(&x->hb_rreq[r], &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
                x->hb_rdead[r] = 1;
                break;
            }
            if (!done) break;
            got(c, r, &x->hb_rbuf[r]);
            if (MPI_Irecv(&x->hb_rbuf[r], (int)sizeof(dc_hb_msg), MPI_BYTE, r, HB_TAG, x->wd, &x->hb_rreq[r]) !=
                MPI_SUCCESS) {
                x->hb_rdead[r] = 1;
                break;
            }
        }
    }
}

void dc_ctl_hb_stop(dc_comm *c)
{
    ctl *x = CTL(c);
    if (!x || !x->hb_rreq) return;
    int leak = 0;
    for (int r = 0; r < c->size; r++) {
        if (x->hb_rreq[r] != MPI_REQUEST_NULL) {
            MPI_Cancel(&x->hb_rreq[r]);
            MPI_Request_free(&x->hb_rreq[r]);
        }
        if (x->hb_sreq[r] != MPI_REQUEST_NULL) {
            int done = 0;
            MPI_Test(&x->hb_sreq[r], &done, MPI_STATUS_IGNORE);
            /* a beat still on its way finishes (or not) on its own; its buffer must outlive it */
            if (!done) {
                MPI_Request_free(&x->hb_sreq[r]);
                leak = 1;
            }
        }
    }
    if (leak) x->hb_sbuf = NULL; /* leaked on purpose: MPI may still read it */
}

void dc_ctl_abort(dc_comm *c)
{
    int inited = 0, fin = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&fin);
    if (inited && !fin) MPI_Abort(MPI_COMM_WORLD, 1);
    _exit(1);
}

/* --- the "mpi" data backend ------------------------------------------------------------------- */

static dc_status mpi_init(dc_comm *c)
{
    c->host_buffers = 1;
    return DC_OK;
}
static void mpi_free(dc_comm *c)
{
    (void)c;
}

static size_t esize(dc_dtype dt)
{
    return dt == DC_COMM_UINT8 ? 1 : dc_dtype_size(dt);
}

static int overlaps(const void *a, size_t na, const void *b, size_t nb)
{
    const char *pa = a, *pb = b;
    return na && nb && pa < pb + nb && pb < pa + na;
}

static dc_status mpi_start(dc_comm *c, dc_work *w)
{
    mpi_work *m = MW(w);
    MPI_Comm comm = CTL(c)->data;
    MPI_Datatype t = mpi_type(w->dt);
    MPI_Op o = mpi_op(w->dt, w->red);
    int n = (int)w->count, rc = MPI_SUCCESS;
    size_t es = esize(w->dt), part = w->count * es, whole = part * (size_t)c->size;
    m->req = MPI_REQUEST_NULL;
    m->tmp = NULL;
    const void *send = w->send;
    switch (w->op) {
    case DC_COLL_ALL_REDUCE: rc = MPI_Iallreduce(MPI_IN_PLACE, w->buf, n, t, o, comm, &m->req); break;
    case DC_COLL_REDUCE_SCATTER:
        if (overlaps(send, whole, w->buf, part)) { /* e.g. recv is this rank's slice of send */
            if (!(m->tmp = malloc(whole))) goto nomem;
            memcpy(m->tmp, send, whole); /* copy: MPI wants disjoint buffers */
            send = m->tmp;
        }
        rc = MPI_Ireduce_scatter_block(send, w->buf, n, t, o, comm, &m->req);
        break;
    case DC_COLL_ALL_GATHER:
        if (send == (const char *)w->buf + part * (size_t)c->rank) {
            send = MPI_IN_PLACE;
        } else if (overlaps(send, part, w->buf, whole)) {
            if (!(m->tmp = malloc(part ? part : 1))) goto nomem;
            memcpy(m->tmp, send, part);
            send = m->tmp;
        }
        rc = MPI_Iallgather(send, n, t, w->buf, n, t, comm, &m->req);
        break;
    case DC_COLL_BROADCAST: rc = MPI_Ibcast(w->buf, n, t, w->root, comm, &m->req); break;
    case DC_COLL_BARRIER: rc = MPI_Ibarrier(comm, &m->req); break;
    case DC_COLL_SEND: rc = MPI_Isend(w->buf, n, t, w->root, w->tag, comm, &m->req); break;
    case DC_COLL_RECV: rc = MPI_Irecv(w->buf, n, t, w->root, w->tag, comm, &m->req); break;
    default: rc = MPI_ERR_OP;
    }
    if (rc == MPI_SUCCESS) return DC_OK;
    free(m->tmp);
    m->tmp = NULL;
    work_mpi_error(c, w, "starting it", rc);
    return DC_ERR_COMM;
nomem : {
    char who[96];
    snprintf(w->errmsg, sizeof w->errmsg, "%s: %s #%lld: out of memory for a copy of the input",
             dc_comm_who(c, c->rank, who, sizeof who), dc_coll_op_name(w->op), (long long)w->seq);
    return DC_ERR_NOMEM;
}
}

static dc_status mpi_test(dc_comm *c, dc_work *w, int *done)
{
    mpi_work *m = MW(w);
    MPI_Status s;
    memset(&s, 0, sizeof s);
    int rc = MPI_Test(&m->req, done, &s);
    char who[96], peer[96];
    if (rc != MPI_SUCCESS || (*done && w->op == DC_COLL_RECV && s.MPI_ERROR != MPI_SUCCESS && s.MPI_ERROR != 0)) {
        int code = rc != MPI_SUCCESS ? rc : s.MPI_ERROR, cls = 0;
        MPI_Error_class(code, &cls);
        free(m->tmp);
        m->tmp = NULL;
        *done = 1;
        if (w->op == DC_COLL_RECV && cls == MPI_ERR_TRUNCATE) {
            snprintf(w->errmsg, sizeof w->errmsg,
                     "%s: recv #%lld from %s (tag %d): the message is longer than the %zu %s this rank expects "
                     "(desync)",
                     dc_comm_who(c, c->rank, who, sizeof who), (long long)w->seq,
                     dc_comm_who(c, w->root, peer, sizeof peer), w->tag, w->count,
                     w->dt == DC_COMM_UINT8 ? "uint8" : dc_dtype_name(w->dt));
            return DC_ERR_DESYNC;
        }
        work_mpi_error(c, w, "MPI", code);
        return DC_ERR_COMM;
    }
    if (!*done) return DC_OK;
    free(m->tmp);
    m->tmp = NULL;
    if (w->op == DC_COLL_RECV) {
        int got = 0;
        MPI_Get_count(&s, mpi_type(w->dt), &got);
        if (got != (int)w->count) {
            snprintf(w->errmsg, sizeof w->errmsg,
                     "%s: recv #%lld from %s (tag %d): got %d elements but this rank expects %zu %s (desync)",
                     dc_comm_who(c, c->rank, who, sizeof who), (long long)w->seq,
                     dc_comm_who(c, w->root, peer, sizeof peer), w->tag, got, w->count,
                     w->dt == DC_COMM_UINT8 ? "uint8" : dc_dtype_name(w->dt));
            return DC_ERR_DESYNC;
        }
    }
    if (w->red == DC_RED_AVG && (w->op == DC_COLL_ALL_REDUCE || w->op == DC_COLL_REDUCE_SCATTER))
        dc_comm_divide(w->buf, w->count, w->dt, (double)c->size);
    return DC_OK;
}

const dc_comm_vtable dc_comm_backend_mpi = {
    .name = "mpi",
    .init = mpi_init,
    .free = mpi_free,
    .start = mpi_start,
    .test = mpi_test,
    .abort = NULL,
};

#else /* !DC_WITH_MPI */

#define NO_MPI                                                                                              \
    "dutycycle was built without MPI, so it has no distributed backend: install Open MPI (apt-get install " \
    "libopenmpi-dev openmpi-bin) and rebuild (pip install -e .); DUTYCYCLE_MPI=0 builds without it"

dc_status dc_ctl_init(dc_comm *c, char *err, size_t errn)
{
    (void)c;
    snprintf(err, errn, "%s", NO_MPI);
    return DC_ERR_COMM;
}
void dc_ctl_free(dc_comm *c, int broken)
{
    (void)c;
    (void)broken;
}
void *dc_ctl_data_comm(dc_comm *c)
{
    (void)c;
    return NULL;
}
dc_status dc_ctl_fp_start(dc_comm *c, dc_work *w)
{
    return DC_ERR_COMM;
}
dc_status dc_ctl_fp_test(dc_comm *c, dc_work *w, int *done)
{
    return DC_ERR_COMM;
}
dc_status dc_ctl_fp_gather(dc_comm *c, dc_work *w, dc_fingerprint *all)
{
    return DC_ERR_COMM;
}
dc_status dc_ctl_hb_start(dc_comm *c)
{
    return DC_ERR_COMM;
}
void dc_ctl_hb_send(dc_comm *c, const dc_hb_msg *m) {}
void dc_ctl_hb_poll(dc_comm *c, void (*got)(dc_comm *, int, const dc_hb_msg *)) {}
void dc_ctl_hb_stop(dc_comm *c) {}
void dc_ctl_abort(dc_comm *c)
{
    _exit(1);
}
static dc_status no_init(dc_comm *c)
{
    return dc_error(DC_ERR_COMM, "%s", NO_MPI);
}
static void no_free(dc_comm *c) {}
static dc_status no_start(dc_comm *c, dc_work *w)
{
    return DC_ERR_COMM;
}
static dc_status no_test(dc_comm *c, dc_work *w, int *done)
{
    return DC_ERR_COMM;
}
const dc_comm_vtable dc_comm_backend_mpi = {
    .name = "mpi",
    .init = no_init,
    .free = no_free,
    .start = no_start,
    .test = no_test,
    .abort = NULL,
};
#endif
