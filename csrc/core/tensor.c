/* tensor.c: storage and tensor lifetime, geometry helpers, hooks, the in-flight gate for
 * replacing data and grads (see tensor.h), grad mode and the RNG state. */
#define _POSIX_C_SOURCE 200809L /* pthread under -std=c11 */
#include "tensor.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend-impl.h"
#include "graph.h"

/* --- lifetime ---------------------------------------------------------------------------- */

void dc_storage_incref(dc_storage *s)
{
    atomic_fetch_add_explicit(&s->refcount, 1, memory_order_relaxed);
}

void dc_storage_decref(dc_storage *s)
{
    if (!s) return;
    if (atomic_fetch_sub_explicit(&s->refcount, 1, memory_order_acq_rel) != 1) return;
    if (s->deleter) {
        s->deleter(s->ctx);
    } else if (s->data) {
        const dc_backend *be = dc_backend_get(s->device.type);
        if (be) be->free(s->device, s->data);
    }
    free(s);
}

void dc_tensor_incref(dc_tensor *t)
{
    atomic_fetch_add_explicit(&t->refcount, 1, memory_order_relaxed);
}

void dc_tensor_decref(dc_tensor *t)
{
    if (!t) return;
    if (atomic_fetch_sub_explicit(&t->refcount, 1, memory_order_acq_rel) != 1) return;
    dc_release_tensor_(t); /* iterative: see graph.c */
}

void dc_tensor_free_(dc_tensor *t)
{
    dc_tensor_decref(t->grad);
    dc_node_decref(t->grad_fn);
    for (dc_hook *h = t->hooks, *nx; h; h = nx) {
        nx = h->next;
        if (h->ctx_free) h->ctx_free(h->ctx);
        free(h);
    }
    dc_storage_decref(t->storage);
    free(t);
}

static dc_tensor *tensor_shell(int ndim, const int64_t *shape, dc_dtype dtype, dc_device dev)
{
    dc_tensor *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    atomic_init(&t->refcount, 1);
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
    dc_contiguous_strides(ndim, shape, t->strides);
    t->dtype = dtype;
    t->device = dev;
    return t;
}

static dc_status check_geometry(int ndim, const int64_t *shape, dc_dtype dtype)
{
    if (ndim < 0 || ndim > DC_MAX_DIMS)
        return dc_error(DC_ERR_SHAPE, "tensors have at most %d dims, got %d", DC_MAX_DIMS, ndim);
    if ((unsigned)dtype >= DC_DTYPE_COUNT) return dc_error(DC_ERR_DTYPE, "unknown dtype id %d", (int)dtype);
    for (int d = 0; d < ndim; d++)
        if (shape[d] < 0)
            return dc_error(DC_ERR_SHAPE, "negative size %lld in shape %s", (long long)shape[d],
                            dc_shape_str(ndim, shape));
    return DC_OK;
}

dc_status dc_empty(dc_tensor **out, int ndim, const int64_t *shape, dc_dtype dtype, dc_device dev)
{
    DC_TRY(check_geometry(ndim, shape, dtype));
    const dc_backend *be = dc_backend_get(dev.type);
    if (!be)
        return dc_error(DC_ERR_DEVICE, "device %s is not available: dutycycle was built without CUDA",
                        dc_device_str(dev));
    if (dev.type != DC_CPU && (dev.index < 0 || dev.index >= be->device_count()))
        return dc_error(DC_ERR_DEVICE, "device %s is not available (%d CUDA device(s) visible)", dc_device_str(dev),
                        be->device_count());
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] && n > INT64_MAX / 16 / shape[d])
            return dc_error(DC_ERR_NOMEM, "shape %s is too large", dc_shape_str(ndim, shape));
        n *= shape[d];
    }
    size_t nbytes = (size_t)n * dc_dtype_size(dtype);
    dc_storage *s = calloc(1, sizeof *s);
    if (!s) return dc_error(DC_ERR_NOMEM, "out of host memory");
    atomic_init(&s->refcount, 1);
    atomic_init(&s->version, 0);
    s->device = dev;
    s->nbytes = nbytes;
    dc_status st = be->alloc(dev, nbytes, &s->data);
    if (st != DC_OK) {
        free(s);
        return st;
    }
    dc_tensor *t = tensor_shell(ndim, shape, dtype, dev);
    if (!t) {
        dc_storage_decref(s);
        return dc_error(DC_ERR_NOMEM, "out of host memory");
    }
    t->storage = s;
    *out = t;
    return DC_OK;
}

dc_status dc_empty_like(dc_tensor **out, const dc_tensor *t)
{
    return dc_empty(out, t->ndim, t->shape, t->dtype, t->device);
}

dc_status dc_from_blob(dc_tensor **out, void *data, size_t nbytes, int ndim, const int64_t *shape,
                       const int64_t *strides, dc_dtype dtype, dc_device dev, void (*deleter)(void *), void *ctx)
{
    dc_status st = check_geometry(ndim, shape, dtype);
    dc_storage *s = NULL;
    dc_tensor *t = NULL;
    if (st != DC_OK) goto error;
    s = calloc(1, sizeof *s);
    t = tensor_shell(ndim, shape, dtype, dev);
    if (!s || !t) {
        st = dc_error(DC_ERR_NOMEM, "out of host memory");
        goto error;
    }
    atomic_init(&s->refcount, 1);
    atomic_init(&s->version, 0);
    s->data = data;
    s->nbytes = nbytes;
    s->device = dev;
    s->deleter = deleter;
    s->ctx = ctx;
    if (strides)
        for (int d = 0; d < ndim; d++) t->strides[d] = strides[d];
    t->storage = s;
    *out = t;
    return DC_OK;
error:
    free(s);
    free(t);
    if (deleter) deleter(ctx);
    return st;
}

dc_status dc_alias(dc_tensor **out, const dc_tensor *t, int ndim, const int64_t *shape, const int64_t *strides,
                   int64_t offset)
{
    DC_TRY(check_geometry(ndim, shape, t->dtype));
    dc_tensor *v = tensor_shell(ndim, shape, t->dtype, t->device);
    if (!v) return dc_error(DC_ERR_NOMEM, "out of host memory");
    for (int d = 0; d < ndim; d++) v->strides[d] = strides[d];
    v->offset = offset;
    v->storage = t->storage;
    dc_storage_incref(t->storage);
    *out = v;
    return DC_OK;
}

/* --- geometry ---------------------------------------------------------------------------- */

int64_t dc_numel(const dc_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

void dc_contiguous_strides(int ndim, const int64_t *shape, int64_t *strides)
{
    int64_t s = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        strides[d] = s;
        s *= shape[d] > 0 ? shape[d] : 1;
    }
}

int dc_is_contiguous(const dc_tensor *t)
{
    int64_t s = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] == 1) continue;
        if (t->shape[d] == 0) return 1;
        if (t->strides[d] != s) return 0;
        s *= t->shape[d];
    }
    return 1;
}

const char *dc_shape_str(int ndim, const int64_t *shape)
{
    static _Thread_local char bufs[4][160];
    static _Thread_local int which;
    char *b = bufs[which++ & 3];
    int n = snprintf(b, 160, "(");
    for (int d = 0; d < ndim && n < 150; d++) n += snprintf(b + n, 160 - n, d ? ", %lld" : "%lld", (long long)shape[d]);
    snprintf(b + n, 160 - n, ndim == 1 ? ",)" : ")");
    return b;
}

/* --- hooks ------------------------------------------------------------------------------- */

/* The backward engine calls hooks without holding hooks_lock (a hook may add or remove hooks, and
 * Python removes them from other threads). So while any hook runs, a removed hook is only marked
 * (fn = NULL) and is unlinked and freed later, once none runs; the engine finds the next hook by id,
 * never through a pointer it held across a call. */
static pthread_mutex_t hooks_lock = PTHREAD_MUTEX_INITIALIZER;
static int hooks_running; /* hook calls in progress, all threads (guarded by hooks_lock) */
static atomic_int next_hook_id = 1;

/* Unlink t's marked hooks when no hook runs; returns them as a list to free outside the lock. */
static dc_hook *unlink_removed(dc_tensor *t)
{
    dc_hook *dead = NULL;
    if (hooks_running) return NULL;
    for (dc_hook **p = &t->hooks; *p;) {
        dc_hook *h = *p;
        if (h->fn) {
            p = &h->next;
            continue;
        }
        *p = h->next;
        h->next = dead;
        dead = h;
    }
    return dead;
}

static void free_hooks(dc_hook *h) /* ctx_free may take the GIL: never call it under hooks_lock */
{
    for (dc_hook *nx; h; h = nx) {
        nx = h->next;
        if (h->ctx_free) h->ctx_free(h->ctx);
        free(h);
    }
}

int dc_tensor_add_hook(dc_tensor *t, dc_hook_fn fn, void *ctx, void (*ctx_free)(void *))
{
    dc_hook *h = calloc(1, sizeof *h);
    if (!h) return -1;
    h->fn = fn;
    h->ctx = ctx;
    h->ctx_free = ctx_free;
    h->id = atomic_fetch_add(&next_hook_id, 1);
    pthread_mutex_lock(&hooks_lock);
    dc_hook **p = &t->hooks; /* keep registration order (ids increase along the list) */
    while (*p) p = &(*p)->next;
    *p = h;
    dc_hook *dead = unlink_removed(t);
    pthread_mutex_unlock(&hooks_lock);
    free_hooks(dead);
    return h->id;
}

int dc_tensor_remove_hook(dc_tensor *t, int id)
{
    int found = 0;
    pthread_mutex_lock(&hooks_lock);
    for (dc_hook *h = t->hooks; h; h = h->next) {
        if (h->id == id && h->fn) {
            h->fn = NULL;
            found = 1;
            break;
        }
    }
    dc_hook *dead = unlink_removed(t);
    pthread_mutex_unlock(&hooks_lock);
    free_hooks(dead);
    return found;
}

dc_status dc_tensor_run_hooks(dc_tensor *t)
{
    dc_status st = DC_OK;
    int last = 0;
    pthread_mutex_lock(&hooks_lock);
    /* ids only grow: hooks registered from now on (by a hook, or by another thread) have ids >= end */
    int end = atomic_load(&next_hook_id);
    hooks_running++;
    for (;;) {
        dc_hook *h = t->hooks;
        while (h && (h->id <= last || !h->fn)) h = h->next;
        if (h && h->id >= end) h = NULL;
        if (!h) break;
        dc_hook_fn fn = h->fn;
        void *ctx = h->ctx; /* stays valid: a removal now only marks the hook */
        last = h->id;
        pthread_mutex_unlock(&hooks_lock);
        st = fn(ctx, t);
        pthread_mutex_lock(&hooks_lock);
        if (st) break;
    }
    hooks_running--;
    dc_hook *dead = unlink_removed(t);
    pthread_mutex_unlock(&hooks_lock);
    free_hooks(dead);
    return st;
}

/* --- in flight gate (the rule is in tensor.h) -------------------------------------------------- */

static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static long gate_inflight;             /* ops and backward passes in flight, all threads */
static int gate_writers;               /* replacements waiting or being made */
static int gate_writing;               /* a replacement is being made */
static _Thread_local long my_inflight; /* this thread's share of gate_inflight */

void dc_inflight_begin(void)
{
    pthread_mutex_lock(&gate_lock);
    /* a thread already in flight (a hook calling ops) must not wait for a writer that waits for it */
    while (gate_writing || (gate_writers && !my_inflight)) pthread_cond_wait(&gate_cond, &gate_lock);
    gate_inflight++;
    my_inflight++;
    pthread_mutex_unlock(&gate_lock);
}

void dc_inflight_end(void)
{
    pthread_mutex_lock(&gate_lock);
    gate_inflight--;
    my_inflight--;
    if (gate_writers) pthread_cond_broadcast(&gate_cond);
    pthread_mutex_unlock(&gate_lock);
}

static void exclusive_begin(void)
{
    pthread_mutex_lock(&gate_lock);
    gate_writers++;
    while (gate_writing || gate_inflight > my_inflight) pthread_cond_wait(&gate_cond, &gate_lock);
    gate_writing = 1;
    pthread_mutex_unlock(&gate_lock);
}

static void exclusive_end(void)
{
    pthread_mutex_lock(&gate_lock);
    gate_writing = 0;
    gate_writers--;
    pthread_cond_broadcast(&gate_cond);
    pthread_mutex_unlock(&gate_lock);
}

static int same_geometry(const dc_tensor *a, const dc_tensor *b)
{
    if (a->dtype != b->dtype || !dc_device_eq(a->device, b->device) || a->ndim != b->ndim) return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return 0;
    return 1;
}

void dc_tensor_set_data(dc_tensor *t, const dc_tensor *src)
{
    dc_storage *s = dc_tensor_storage_ref(src);
    exclusive_begin();
    dc_storage *old = t->storage;
    t->storage = s;
    t->offset = src->offset;
    t->ndim = src->ndim;
    memcpy(t->shape, src->shape, sizeof t->shape);
    memcpy(t->strides, src->strides, sizeof t->strides);
    t->dtype = src->dtype;
    t->device = src->device;
    dc_tensor *g = t->grad;
    if (g && !same_geometry(g, t))
        t->grad = NULL;
    else
        g = NULL;
    exclusive_end();
    /* outside the gate: a deleter may call into Python */
    dc_storage_decref(old);
    dc_tensor_decref(g);
}

void dc_tensor_set_grad(dc_tensor *t, dc_tensor *g)
{
    if (g) dc_tensor_incref(g);
    exclusive_begin();
    dc_tensor *old = t->grad;
    t->grad = g;
    exclusive_end();
    dc_tensor_decref(old);
}

dc_storage *dc_tensor_storage_ref(const dc_tensor *t)
{
    dc_storage_incref(t->storage);
    return t->storage;
}

/* --- grad mode ------------------------------------------------------------------------------ */

static _Thread_local int grad_disabled;
int dc_grad_enabled(void)
{
    return !grad_disabled;
}
void dc_set_grad_enabled(int on)
{
    grad_disabled = !on;
}

/* --- RNG state ------------------------------------------------------------------------------ */

static uint64_t rng_seed = 0x5eed;
static atomic_ullong rng_offset;

void dc_manual_seed(uint64_t seed)
{
    rng_seed = seed;
    atomic_store(&rng_offset, 0);
}
uint64_t dc_initial_seed(void)
{
    return rng_seed;
}
void dc_rng_reserve(uint64_t n, uint64_t *seed, uint64_t *offset)
{
    *seed = rng_seed;
    *offset = atomic_fetch_add(&rng_offset, n);
}
uint64_t dc_rng_get_offset(void)
{
    return atomic_load(&rng_offset);
}
void dc_rng_set_state(uint64_t seed, uint64_t offset)
{
    rng_seed = seed;
    atomic_store(&rng_offset, offset);
}
