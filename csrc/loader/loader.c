/* loader.c: the batch-assembly thread pool behind dutycycle.data.DataLoader (see loader.h).
 *
 * One mutex guards a FIFO of jobs (one job = one batch) in submission order. A worker takes the
 * oldest queued job when fewer than `prefetch` jobs are being assembled or wait ready, gathers its
 * rows with the mutex released, and marks it done; the consumer waits for the head of the FIFO
 * only, so batches come out in order however the workers race. Each job carries its own status
 * and message: a worker cannot use the thread-local error buffer of the thread that will see the
 * failure, so the message is copied into that thread's buffer by dc_loader_next. */
#define _POSIX_C_SOURCE 200809L
#include "loader.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE };

typedef struct {
    size_t row_bytes;
    int nparts;
    dc_loader_part *parts; /* (nparts,) owned copy */
    int64_t *cum;          /* (nparts + 1,) first column row of each part; cum[nparts] = rows */
    int64_t *indices;      /* (n,) owned copy, or NULL for rows 0..n-1 */
} column;

typedef struct job {
    int64_t batch_id;
    int64_t n;
    int ncols;
    column *cols;   /* (ncols,) */
    void **out;     /* (ncols,) output buffers, filled by the worker; NULL once handed over */
    size_t *nbytes; /* (ncols,) */
    int state;      /* JOB_* */
    dc_status st;   /* the worker's verdict */
    char msg[512];  /* the worker's message when st != DC_OK */
    struct job *next;
} job;

struct dc_loader {
    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* workers: a job may be startable, or stop */
    pthread_cond_t done_cv; /* consumer and reset: a job finished */
    job *head, *tail;       /* outstanding jobs, oldest first */
    int64_t pending;        /* jobs in the FIFO */
    int running;            /* jobs being assembled */
    int ready;              /* finished jobs not yet taken by dc_loader_next */
    int prefetch;
    int paused; /* > 0 while a reset drains the workers */
    int stop;
    int nthreads; /* threads started (joined by dc_loader_free) */
    pthread_t *threads;
};

/* --- jobs ---------------------------------------------------------------------------------- */

void dc_loader_buffer_free(void *p)
{
    free(p);
}

static void job_free(job *j)
{
    if (!j) return;
    for (int c = 0; c < j->ncols; c++) {
        if (j->cols) {
            free(j->cols[c].parts);
            free(j->cols[c].cum);
            free(j->cols[c].indices);
        }
        if (j->out) free(j->out[c]);
    }
    free(j->cols);
    free(j->out);
    free(j->nbytes);
    free(j);
}

/* Column row `r` of a multi-part column: the part holding it by binary search over part starts. */
static const char *column_row(const column *c, int64_t r)
{
    int lo = 0, hi = c->nparts - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (c->cum[mid] <= r)
            lo = mid;
        else
            hi = mid - 1;
    }
    return (const char *)c->parts[lo].base + (size_t)(r - c->cum[lo]) * c->row_bytes;
}

/* Runs on a worker with the mutex released: touches only the job and the source rows. */
static void job_assemble(job *j)
{
    for (int k = 0; k < j->ncols; k++) {
        const column *c = &j->cols[k];
        size_t nbytes = (size_t)j->n * c->row_bytes;
        void *buf = NULL;
        /* 64-byte alignment for the SIMD kernels; never a zero-size request */
        if (posix_memalign(&buf, 64, nbytes ? nbytes : 64) != 0) {
            j->st = DC_ERR_NOMEM;
            snprintf(j->msg, sizeof j->msg, "data loader: out of host memory for a %zu-byte batch buffer (batch %lld)",
                     nbytes, (long long)j->batch_id);
            return;
        }
        j->out[k] = buf;
        j->nbytes[k] = nbytes;
        int64_t rows = c->cum[c->nparts];
        if (!c->indices && c->nparts == 1) { /* rows 0..n-1 of one part: one copy */
            if (nbytes) memcpy(buf, c->parts[0].base, nbytes);
            continue;
        }
        char *dst = buf;
        for (int64_t i = 0; i < j->n; i++, dst += c->row_bytes) {
            int64_t r = c->indices ? c->indices[i] : i;
            if (r < 0 || r >= rows) {
                j->st = DC_ERR_INDEX;
                snprintf(j->msg, sizeof j->msg,
                         "data loader: row index %lld (position %lld of batch %lld) is out of range for column %d "
                         "with %lld rows",
                         (long long)r, (long long)i, (long long)j->batch_id, k, (long long)rows);
                return;
            }
            const char *src =
                c->nparts == 1 ? (const char *)c->parts[0].base + (size_t)r * c->row_bytes : column_row(c, r);
            memcpy(dst, src, c->row_bytes);
        }
    }
}

/* --- workers ----------------------------------------------------------------------------- */

/* The oldest queued job, if the prefetch budget allows starting one (mutex held). */
static job *pick(dc_loader *l)
{
    if (l->paused || l->running + l->ready >= l->prefetch) return NULL;
    for (job *j = l->head; j; j = j->next)
        if (j->state == JOB_QUEUED) return j;
    return NULL;
}

static void *worker_main(void *arg)
{
    dc_loader *l = arg;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        job *j = NULL;
        while (!l->stop && !(j = pick(l))) pthread_cond_wait(&l->work_cv, &l->mu);
        if (l->stop) break;
        j->state = JOB_RUNNING;
        l->running++;
        pthread_mutex_unlock(&l->mu);
        job_assemble(j); /* the gather itself: no lock held */
        pthread_mutex_lock(&l->mu);
        j->state = JOB_DONE;
        l->running--;
        l->ready++;
        pthread_cond_broadcast(&l->done_cv);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* --- public API -------------------------------------------------------------------------- */

dc_status dc_loader_init(dc_loader **out, int nthreads, int prefetch)
{
    *out = NULL;
    if (nthreads < 1 || nthreads > 1024)
        return dc_error(DC_ERR_VALUE, "dc_loader_init: nthreads must be in [1, 1024], got %d", nthreads);
    if (prefetch < 1) return dc_error(DC_ERR_VALUE, "dc_loader_init: prefetch must be >= 1, got %d", prefetch);
    dc_loader *l = calloc(1, sizeof *l);
    if (!l) return dc_error(DC_ERR_NOMEM, "dc_loader_init: out of host memory");
    l->threads = calloc((size_t)nthreads, sizeof *l->threads);
    int have_done = 0, have_work = 0, have_mu = 0;
    pthread_condattr_t ca;
    if (l->threads && pthread_condattr_init(&ca) == 0) {
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* timeouts immune to wall-clock jumps */
        have_done = pthread_cond_init(&l->done_cv, &ca) == 0;
        pthread_condattr_destroy(&ca);
    }
    if (have_done) have_work = pthread_cond_init(&l->work_cv, NULL) == 0;
    if (have_work) have_mu = pthread_mutex_init(&l->mu, NULL) == 0;
    if (!have_mu) {
        if (have_work) pthread_cond_destroy(&l->work_cv);
        if (have_done) pthread_cond_destroy(&l->done_cv);
        free(l->threads);
        free(l);
        return dc_error(DC_ERR_NOMEM, "dc_loader_init: could not create the loader's locks");
    }
    l->prefetch = prefetch;
    for (int k = 0; k < nthreads; k++) {
        int rc = pthread_create(&l->threads[k], NULL, worker_main, l);
        if (rc != 0) {
            dc_loader_free(l); /* joins the ones already started */
            return dc_error(DC_ERR_NOMEM, "dc_loader_init: could not start worker thread %d of %d: %s", k, nthreads,
                            strerror(rc));
        }
        l->nthreads = k + 1;
    }
    *out = l;
    return DC_OK;
}

dc_status dc_loader_submit(dc_loader *l, int64_t batch_id, int ncols, const dc_loader_column *cols, int64_t n)
{
    dc_status st = DC_OK;
    job *j = NULL;
    if (!l) return dc_error(DC_ERR_VALUE, "dc_loader_submit: NULL loader");
    if (ncols < 1 || n < 0 || !cols)
        return dc_error(DC_ERR_VALUE, "dc_loader_submit: need ncols >= 1 and n >= 0, got ncols=%d n=%lld", ncols,
                        (long long)n);
    j = calloc(1, sizeof *j);
    if (!j) goto nomem;
    j->batch_id = batch_id;
    j->n = n;
    j->cols = calloc((size_t)ncols, sizeof *j->cols);
    j->out = calloc((size_t)ncols, sizeof *j->out);
    j->nbytes = calloc((size_t)ncols, sizeof *j->nbytes);
    if (!j->cols || !j->out || !j->nbytes) goto nomem;
    j->ncols = ncols;
    for (int k = 0; k < ncols; k++) {
        const dc_loader_column *src = &cols[k];
        column *c = &j->cols[k];
        if (src->nparts < 1 || !src->parts) {
            st = dc_error(DC_ERR_VALUE, "dc_loader_submit: column %d has no parts", k);
            goto error;
        }
        if (src->row_bytes && (uint64_t)n > SIZE_MAX / src->row_bytes) {
            st = dc_error(DC_ERR_VALUE, "dc_loader_submit: column %d: %lld rows of %zu bytes overflow", k, (long long)n,
                          src->row_bytes);
            goto error;
        }
        c->row_bytes = src->row_bytes;
        c->parts = malloc(sizeof *c->parts * (size_t)src->nparts);
        c->cum = malloc(sizeof *c->cum * ((size_t)src->nparts + 1));
        if (!c->parts || !c->cum) goto nomem;
        c->nparts = src->nparts;
        c->cum[0] = 0;
        for (int p = 0; p < src->nparts; p++) {
            const dc_loader_part *sp = &src->parts[p];
            if (sp->nrows < 0 || (sp->nrows > 0 && src->row_bytes > 0 && !sp->base)) {
                st = dc_error(DC_ERR_VALUE, "dc_loader_submit: column %d part %d: bad rows (%lld rows at %p)", k, p,
                              (long long)sp->nrows, sp->base);
                goto error;
            }
            c->parts[p] = *sp;
            c->cum[p + 1] = c->cum[p] + sp->nrows;
        }
        if (src->indices) {
            c->indices = malloc(sizeof *c->indices * (size_t)(n ? n : 1));
            if (!c->indices) goto nomem;
            if (n) memcpy(c->indices, src->indices, sizeof *c->indices * (size_t)n);
        } else if (n > c->cum[c->nparts]) {
            st = dc_error(DC_ERR_INDEX, "dc_loader_submit: column %d has %lld rows, fewer than the batch's %lld", k,
                          (long long)c->cum[c->nparts], (long long)n);
            goto error;
        }
    }
    j->state = JOB_QUEUED;
    pthread_mutex_lock(&l->mu);
    if (l->tail)
        l->tail->next = j;
    else
        l->head = j;
    l->tail = j;
    l->pending++;
    pthread_cond_signal(&l->work_cv);
    pthread_mutex_unlock(&l->mu);
    return DC_OK;
nomem:
    st = dc_error(DC_ERR_NOMEM, "dc_loader_submit: out of host memory");
error:
    job_free(j);
    return st;
}

dc_status dc_loader_next(dc_loader *l, dc_loader_batch *out, double timeout_s, int *timed_out)
{
    memset(out, 0, sizeof *out);
    *timed_out = 0;
    if (!l) return dc_error(DC_ERR_VALUE, "dc_loader_next: NULL loader");
    struct timespec until = { 0 };
    if (timeout_s >= 0) {
        clock_gettime(CLOCK_MONOTONIC, &until);
        time_t whole = (time_t)timeout_s;
        until.tv_sec += whole;
        until.tv_nsec += (long)((timeout_s - (double)whole) * 1e9);
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&l->mu);
    if (!l->head) {
        pthread_mutex_unlock(&l->mu);
        return dc_error(DC_ERR_VALUE, "dc_loader_next: no batch was submitted");
    }
    while (l->head && l->head->state != JOB_DONE) {
        if (timeout_s < 0) {
            pthread_cond_wait(&l->done_cv, &l->mu);
        } else if (pthread_cond_timedwait(&l->done_cv, &l->mu, &until) == ETIMEDOUT) {
            if (l->head && l->head->state == JOB_DONE) break;
            pthread_mutex_unlock(&l->mu);
            *timed_out = 1;
            return DC_OK;
        }
    }
    job *j = l->head;
    if (!j) { /* a concurrent reset dropped it */
        pthread_mutex_unlock(&l->mu);
        return dc_error(DC_ERR_VALUE, "dc_loader_next: the loader was reset while waiting");
    }
    l->head = j->next;
    if (!l->head) l->tail = NULL;
    l->pending--;
    l->ready--;
    pthread_cond_broadcast(&l->work_cv); /* a prefetch slot is free again */
    pthread_mutex_unlock(&l->mu);

    dc_status st = j->st;
    if (st != DC_OK) {
        dc_error(st, "%s", j->msg);
    } else {
        out->batch_id = j->batch_id;
        out->n = j->n;
        out->ncols = j->ncols;
        out->data = j->out; /* handed over: job_free skips them */
        out->nbytes = j->nbytes;
        j->out = NULL;
        j->nbytes = NULL;
    }
    job_free(j);
    return st;
}

int64_t dc_loader_pending(dc_loader *l)
{
    if (!l) return 0;
    pthread_mutex_lock(&l->mu);
    int64_t n = l->pending;
    pthread_mutex_unlock(&l->mu);
    return n;
}

void dc_loader_reset(dc_loader *l)
{
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    l->paused++; /* no worker starts a job while we drain */
    while (l->running > 0) pthread_cond_wait(&l->done_cv, &l->mu);
    job *j = l->head;
    l->head = l->tail = NULL;
    l->pending = 0;
    l->ready = 0;
    l->paused--;
    pthread_cond_broadcast(&l->done_cv); /* wakes a consumer waiting on a dropped job */
    pthread_cond_broadcast(&l->work_cv);
    pthread_mutex_unlock(&l->mu);
    while (j) {
        job *next = j->next;
        job_free(j);
        j = next;
    }
}

void dc_loader_free(dc_loader *l)
{
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_broadcast(&l->work_cv);
    pthread_mutex_unlock(&l->mu);
    for (int k = 0; k < l->nthreads; k++) pthread_join(l->threads[k], NULL);
    for (job *j = l->head; j;) {
        job *next = j->next;
        job_free(j);
        j = next;
    }
    pthread_cond_destroy(&l->work_cv);
    pthread_cond_destroy(&l->done_cv);
    pthread_mutex_destroy(&l->mu);
    free(l->threads);
    free(l);
}

void dc_loader_batch_clear(dc_loader_batch *b)
{
    if (!b) return;
    for (int c = 0; c < b->ncols; c++)
        if (b->data) free(b->data[c]);
    free(b->data);
    free(b->nbytes);
    memset(b, 0, sizeof *b);
}
