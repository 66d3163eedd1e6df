/* comm-nccl.c: the "nccl" data backend: collectives on CUDA buffers with NCCL.
 *
 * Bootstrap as llm.c does it: rank 0 makes the ncclUniqueId and MPI broadcasts it (on the
 * communicator's own MPI duplicate; no rendezvous of our own). The NCCL communicator is
 * non-blocking (ncclConfig_t.blocking = 0) so the watchdog's failure path can ncclCommAbort it
 * while a collective is stuck; every NCCL call that answers ncclInProgress is polled with
 * ncclCommGetAsyncError, bounded by the communicator's timeout.
 *
 * Streams: NCCL runs on a stream of its own. When an operation is issued (in the caller's thread)
 * an event is recorded on that thread's current stream (dutycycle.cuda.current_stream(): the
 * compute stream unless a `with dutycycle.cuda.stream(s)` block is active, so gradients made on a
 * side stream are waited for too), and the NCCL stream waits for it before the collective: the
 * collective sees the buffer as the kernels issued before it left it, and compute issued after it
 * is not held up. Completion is an event on the NCCL stream that the progress thread polls; dc_work_wait
 * returns once it fired, so the host may hand the result to the next kernel.
 *
 * The control plane (fingerprints, heartbeats, the watchdog) is the MPI one of comm-mpi.c.
 * Compiled only with DC_WITH_CUDA and DC_WITH_MPI. */
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#include "comm-impl.h"

#ifdef DC_COMM_NCCL
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime.h>
#include <nccl.h>

#include "../../cuda/cuda-backend.h"

typedef struct {
    ncclComm_t nc;
    cudaStream_t stream;
    int device;
    int aborted;
    float *scratch; /* one float for the barrier */
} nccl_state;

typedef struct {
    cudaEvent_t ready; /* recorded on the issuing thread's current stream at issue */
    cudaEvent_t done;  /* recorded on the NCCL stream after the collective */
} nccl_work;
_Static_assert(sizeof(nccl_work) <= sizeof(((dc_work *)0)->be), "nccl_work must fit dc_work.be");

#define NS(c) ((nccl_state *)(c)->be_state)
#define NW(w) ((nccl_work *)(void *)(w)->be)

static const char *who(dc_comm *c, char *buf, size_t n)
{
    return dc_comm_who(c, c->rank, buf, n);
}

/* Wait out ncclInProgress on the non-blocking communicator (bounded by the timeout). */
static ncclResult_t settle(dc_comm *c, ncclComm_t nc, ncclResult_t r)
{
    int64_t t0 = dc_comm_now_ns();
    while (r == ncclInProgress) {
        if (ncclCommGetAsyncError(nc, &r) != ncclSuccess) return ncclSystemError;
        if (r != ncclInProgress) break;
        if ((dc_comm_now_ns() - t0) * 1e-9 > c->timeout_s) return ncclInProgress;
        struct timespec ts = { 0, 20000 };
        nanosleep(&ts, NULL);
    }
    return r;
}

static dc_status nccl_init(dc_comm *c)
{
    char w[96];
    int ndev = 0;
    cudaError_t ce = cudaGetDeviceCount(&ndev);
    if (ce != cudaSuccess || ndev == 0)
        return dc_error(DC_ERR_COMM,
                        "%s: backend 'nccl' needs a CUDA GPU, and this process sees none (%s); use backend='mpi'",
                        who(c, w, sizeof w), ce != cudaSuccess ? cudaGetErrorString(ce) : "0 devices");
    nccl_state *s = calloc(1, sizeof *s);
    if (!s) return dc_error(DC_ERR_NOMEM, "nccl: out of memory");
    s->device = c->local_rank % ndev; /* one GPU per local rank */
    if ((ce = cudaSetDevice(s->device)) != cudaSuccess ||
        (ce = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking)) != cudaSuccess ||
        (ce = cudaMalloc((void **)&s->scratch, sizeof(float))) != cudaSuccess) {
        int dev = s->device;
        if (s->stream) cudaStreamDestroy(s->stream);
        free(s);
        return dc_error(DC_ERR_CUDA, "%s: nccl: CUDA setup on device %d failed: %s", who(c, w, sizeof w), dev,
                        cudaGetErrorString(ce));
    }
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    ncclResult_t r = ncclSuccess;
    if (c->rank == 0) r = ncclGetUniqueId(&id);
    /* every rank joins the broadcast, also after rank 0 failed (it sends a zero id and fails next) */
    int rc = MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, (MPI_Comm)(uintptr_t)dc_ctl_data_comm(c));
    if (r != ncclSuccess || rc != MPI_SUCCESS) {
        cudaStreamDestroy(s->stream);
        cudaFree(s->scratch);
        free(s);
        return dc_error(DC_ERR_COMM, "%s: nccl: making/broadcasting the unique id failed (%s)", who(c, w, sizeof w),
                        r != ncclSuccess ? ncclGetErrorString(r) : "MPI_Bcast");
    }
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0; /* abortable */
    r = ncclCommInitRankConfig(&s->nc, c->size, id, c->rank, &cfg);
    if (r == ncclInProgress) r = settle(c, s->nc, r);
    if (r != ncclSuccess) {
        int dev = s->device;
        if (s->nc) ncclCommAbort(s->nc);
        cudaStreamDestroy(s->stream);
        cudaFree(s->scratch);
        free(s);
        return dc_error(DC_ERR_COMM, "%s: ncclCommInitRankConfig (%d ranks, device %d) failed: %s", who(c, w, sizeof w),
                        c->size, dev, r == ncclInProgress ? "timed out" : ncclGetErrorString(r));
    }
    c->be_state = s;
    return DC_OK;
}

static void nccl_free(dc_comm *c)
{
    nccl_state *s = NS(c);
    if (!s) return;
    cudaSetDevice(s->device);
    if (!s->aborted && !c->err) {
        if (settle(c, s->nc, ncclCommFinalize(s->nc)) == ncclSuccess)
            ncclCommDestroy(s->nc);
        else
            ncclCommAbort(s->nc);
    } else if (!s->aborted) {
        ncclCommAbort(s->nc);
    }
    cudaStreamDestroy(s->stream);
    cudaFree(s->scratch);
    free(s);
    c->be_state = NULL;
}

/* In the caller's thread, at issue: mark where its current stream is. */
static dc_status nccl_issue(dc_comm *c, dc_work *w)
{
    nccl_state *s = NS(c);
    nccl_work *m = NW(w);
    cudaSetDevice(s->device);
    cudaError_t ce = cudaEventCreateWithFlags(&m->ready, cudaEventDisableTiming);
    if (ce == cudaSuccess) ce = cudaEventRecord(m->ready, (cudaStream_t)dc_cuda_current_stream(s->device));
    if (ce == cudaSuccess) ce = cudaEventCreateWithFlags(&m->done, cudaEventDisableTiming);
    if (ce != cudaSuccess) {
        char b[96];
        return dc_error(DC_ERR_CUDA, "%s: %s: recording the current stream's event failed: %s", who(c, b, sizeof b),
                        dc_coll_op_name(w->op), cudaGetErrorString(ce));
    }
    return DC_OK;
}

static ncclDataType_t nccl_type(dc_dtype dt)
{
    switch ((int)dt) {
    case DC_FLOAT32: return ncclFloat32;
    case DC_FLOAT64: return ncclFloat64;
    case DC_FLOAT16: return ncclFloat16;
    case DC_BFLOAT16: return ncclBfloat16;
    case DC_INT32: return ncclInt32;
    case DC_INT64: return ncclInt64;
    default: return ncclUint8; /* uint8, bool */
    }
}

static ncclRedOp_t nccl_op(dc_dtype dt, dc_reduce_op red)
{
    if (dt == DC_BOOL) return red == DC_RED_MIN ? ncclMin : ncclMax; /* logical and / or on 0/1 */
    switch (red) {
    case DC_RED_AVG: return ncclAvg;
    case DC_RED_MAX: return ncclMax;
    case DC_RED_MIN: return ncclMin;
    default: return ncclSum;
    }
}

static dc_status nccl_start(dc_comm *c, dc_work *w)
{
    nccl_state *s = NS(c);
    nccl_work *m = NW(w);
    cudaSetDevice(s->device);
    cudaStreamWaitEvent(s->stream, m->ready, 0); /* after the kernels that produced the buffer */
    cudaEventDestroy(m->ready);
    m->ready = NULL;
    ncclDataType_t t = nccl_type(w->dt);
    ncclRedOp_t o = nccl_op(w->dt, w->red);
    ncclResult_t r;
    switch (w->op) {
    case DC_COLL_ALL_REDUCE: r = ncclAllReduce(w->buf, w->buf, w->count, t, o, s->nc, s->stream); break;
    case DC_COLL_REDUCE_SCATTER: r = ncclReduceScatter(w->send, w->buf, w->count, t, o, s->nc, s->stream); break;
    case DC_COLL_ALL_GATHER: r = ncclAllGather(w->send, w->buf, w->count, t, s->nc, s->stream); break;
    case DC_COLL_BROADCAST: r = ncclBroadcast(w->buf, w->buf, w->count, t, w->root, s->nc, s->stream); break;
    case DC_COLL_BARRIER: r = ncclAllReduce(s->scratch, s->scratch, 1, ncclFloat32, ncclSum, s->nc, s->stream); break;
    case DC_COLL_SEND: r = ncclSend(w->buf, w->count, t, w->root, s->nc, s->stream); break;
    case DC_COLL_RECV: r = ncclRecv(w->buf, w->count, t, w->root, s->nc, s->stream); break;
    default: r = ncclInvalidArgument;
    }
    r = settle(c, s->nc, r);
    cudaError_t ce = r == ncclSuccess ? cudaEventRecord(m->done, s->stream) : cudaSuccess;
    if (r == ncclSuccess && ce == cudaSuccess) return DC_OK;
    char b[96], d[160];
    snprintf(w->errmsg, sizeof w->errmsg, "%s: %s: NCCL failed: %s", who(c, b, sizeof b),
             dc_comm_describe(&w->fp, d, sizeof d),
             r != ncclSuccess ? (r == ncclInProgress ? "enqueue timed out" : ncclGetErrorString(r))
                              : cudaGetErrorString(ce));
    cudaEventDestroy(m->done);
    m->done = NULL;
    return DC_ERR_COMM;
}

static dc_status nccl_test(dc_comm *c, dc_work *w, int *done)
{
    nccl_state *s = NS(c);
    nccl_work *m = NW(w);
    char b[96], d[160];
    cudaSetDevice(s->device);
    *done = 0;
    ncclResult_t ar = ncclSuccess;
    if (s->aborted) {
        ar = ncclInternalError;
    } else if (ncclCommGetAsyncError(s->nc, &ar) != ncclSuccess) {
        ar = ncclSystemError;
    }
    if (ar != ncclSuccess && ar != ncclInProgress) {
        *done = 1;
        snprintf(w->errmsg, sizeof w->errmsg, "%s: %s: NCCL failed: %s", who(c, b, sizeof b),
                 dc_comm_describe(&w->fp, d, sizeof d),
                 s->aborted ? "the communicator was aborted" : ncclGetErrorString(ar));
        return DC_ERR_COMM;
    }
    cudaError_t ce = cudaEventQuery(m->done);
    if (ce == cudaErrorNotReady) return DC_OK;
    cudaEventDestroy(m->done);
    m->done = NULL;
    *done = 1;
    if (ce == cudaSuccess) return DC_OK;
    snprintf(w->errmsg, sizeof w->errmsg, "%s: %s: CUDA error: %s", who(c, b, sizeof b),
             dc_comm_describe(&w->fp, d, sizeof d), cudaGetErrorString(ce));
    return DC_ERR_COMM;
}

/* The watchdog's failure path (a timeout, a dead peer): unblock the kernels stuck in NCCL. */
static void nccl_abort(dc_comm *c)
{
    nccl_state *s = NS(c);
    if (!s || s->aborted) return;
    cudaSetDevice(s->device);
    s->aborted = 1;
    ncclCommAbort(s->nc);
}

const dc_comm_vtable dc_comm_backend_nccl = {
    .name = "nccl",
    .init = nccl_init,
    .free = nccl_free,
    .issue = nccl_issue,
    .start = nccl_start,
    .test = nccl_test,
    .abort = nccl_abort,
};
#endif
