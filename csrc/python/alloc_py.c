/* alloc_py.c: _C.CacheAllocator, the caching allocator of csrc/alloc/alloc.h over host memory with
 * fake streams and events, so its bookkeeping (rounding, best fit, splitting, merging, per-stream
 * pools, deferred reuse after cross-stream use, OOM retry, limits, statistics) is tested on a
 * machine without a GPU. The CUDA backend runs the same code over cudaMalloc and CUDA events.
 *
 * Streams are small integers chosen by the test; an event recorded on stream s completes when the
 * test calls complete_events(s). Addresses are returned as ints. Contract of every method: a new
 * reference, or NULL with an exception set. */
#include "py.h"

#include <stdlib.h>

#include "../alloc/alloc.h"

typedef struct fake_event {
    intptr_t stream;
    int done;
    struct fake_event *next;
} fake_event;

typedef struct {
    PyObject_HEAD dc_cache *cache;
    size_t capacity, used; /* the fake device's memory (0: unlimited) */
    int64_t raw_live;
    fake_event *events;
    int64_t events_live;
} AllocObject;

#define ASTATE(self) ((dc_py_state *)PyType_GetModuleState(Py_TYPE(self)))

/* segment header: its size, so raw_free can give the fake device its bytes back */
#define RAW_HDR 512

static dc_status raw_alloc(void *ctx, size_t n, void **out)
{
    AllocObject *a = ctx;
    if (a->capacity && a->used + n > a->capacity) return DC_ERR_NOMEM;
    char *p = NULL;
    if (posix_memalign((void **)&p, RAW_HDR, RAW_HDR + n) != 0) return DC_ERR_NOMEM;
    *(size_t *)p = n;
    a->used += n;
    a->raw_live++;
    *out = p + RAW_HDR;
    return DC_OK;
}

static void raw_free(void *ctx, void *p)
{
    AllocObject *a = ctx;
    char *b = (char *)p - RAW_HDR;
    a->used -= *(size_t *)b;
    a->raw_live--;
    free(b);
}

static dc_status ev_record(void *ctx, void *stream, void **out)
{
    AllocObject *a = ctx;
    fake_event *e = calloc(1, sizeof *e);
    if (!e) return dc_error(DC_ERR_NOMEM, "fake event");
    e->stream = (intptr_t)stream;
    e->next = a->events;
    a->events = e;
    a->events_live++;
    *out = e;
    return DC_OK;
}

static int ev_query(void *ctx, void *ev)
{
    (void)ctx;
    return ((fake_event *)ev)->done;
}

static void ev_destroy(void *ctx, void *ev)
{
    AllocObject *a = ctx;
    for (fake_event **pp = &a->events; *pp; pp = &(*pp)->next)
        if (*pp == ev) {
            *pp = ((fake_event *)ev)->next;
            free(ev);
            a->events_live--;
            return;
        }
}

static int alloc_init(AllocObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "capacity", "limit", NULL };
    Py_ssize_t cap = 0, limit = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|nn:CacheAllocator", kwlist, &cap, &limit)) return -1;
    if (self->cache) {
        PyErr_SetString(PyExc_RuntimeError, "CacheAllocator is already initialised");
        return -1;
    }
    if (cap < 0 || limit < 0) {
        PyErr_SetString(PyExc_ValueError, "CacheAllocator: capacity and limit must be >= 0");
        return -1;
    }
    self->capacity = (size_t)cap;
    dc_cache_config cfg = { .name = "fake device",
                            .ctx = self,
                            .raw_alloc = raw_alloc,
                            .raw_free = raw_free,
                            .event_record = ev_record,
                            .event_query = ev_query,
                            .event_destroy = ev_destroy,
                            .limit = (size_t)limit };
    dc_status st = dc_cache_init(&self->cache, &cfg);
    if (st) {
        dc_py_raise(ASTATE(self), st);
        return -1;
    }
    return 0;
}

static void alloc_dealloc(AllocObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    dc_cache_free(self->cache);
    while (self->events) {
        fake_event *n = self->events->next;
        free(self->events);
        self->events = n;
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *a_alloc(AllocObject *self, PyObject *args)
{
    Py_ssize_t n;
    long long stream = 0;
    if (!PyArg_ParseTuple(args, "n|L:alloc", &n, &stream)) return NULL;
    if (n < 0) return PyErr_Format(PyExc_ValueError, "alloc: size must be >= 0, got %zd", n);
    void *p = NULL;
    dc_status st = dc_cache_alloc(self->cache, (size_t)n, (void *)(intptr_t)stream, &p);
    if (st) return dc_py_raise(ASTATE(self), st);
    if (p) memset(p, 0xA5, (size_t)n < 64 ? (size_t)n : 64); /* touch it: ASan catches a bad block */
    return PyLong_FromVoidPtr(p);
}

static void *addr_of(PyObject *o)
{
    return PyLong_AsVoidPtr(o);
}

static PyObject *a_release(AllocObject *self, PyObject *o)
{
    void *p = addr_of(o);
    if (!p && PyErr_Occurred()) return NULL;
    dc_status st = dc_cache_release(self->cache, p);
    if (st) return dc_py_raise(ASTATE(self), st);
    Py_RETURN_NONE;
}

static PyObject *a_record_stream(AllocObject *self, PyObject *args)
{
    PyObject *o;
    long long stream;
    if (!PyArg_ParseTuple(args, "OL:record_stream", &o, &stream)) return NULL;
    void *p = addr_of(o);
    if (!p && PyErr_Occurred()) return NULL;
    dc_status st = dc_cache_record_stream(self->cache, p, (void *)(intptr_t)stream);
    if (st) return dc_py_raise(ASTATE(self), st);
    Py_RETURN_NONE;
}

static PyObject *a_complete_events(AllocObject *self, PyObject *args)
{
    PyObject *s = Py_None;
    if (!PyArg_ParseTuple(args, "|O:complete_events", &s)) return NULL;
    long long stream = 0;
    if (s != Py_None && (stream = PyLong_AsLongLong(s)) == -1 && PyErr_Occurred()) return NULL;
    long n = 0;
    for (fake_event *e = self->events; e; e = e->next)
        if (!e->done && (s == Py_None || e->stream == (intptr_t)stream)) e->done = 1, n++;
    return PyLong_FromLong(n);
}

static PyObject *a_empty_cache(AllocObject *self, PyObject *noargs)
{
    (void)noargs;
    dc_cache_empty(self->cache);
    Py_RETURN_NONE;
}

static PyObject *a_reset_peak(AllocObject *self, PyObject *noargs)
{
    (void)noargs;
    dc_cache_reset_peak(self->cache);
    Py_RETURN_NONE;
}

static PyObject *a_block_size(AllocObject *self, PyObject *o)
{
    void *p = addr_of(o);
    if (!p && PyErr_Occurred()) return NULL;
    return PyLong_FromSize_t(dc_cache_block_size(self->cache, p));
}

/* stats() -> dict of dc_cache_stats plus the fake device's view (raw_bytes, raw_segments, events) */
PyObject *dc_py_cache_stats_dict(const dc_cache_stats *s)
{
    return Py_BuildValue(
        "{sLsLsLsLsLsLsLsLsLsLsLsLsLsLsLsLsL}", "allocated_bytes", (long long)s->allocated, "allocated_bytes_peak",
        (long long)s->allocated_peak, "requested_bytes", (long long)s->requested, "requested_bytes_peak",
        (long long)s->requested_peak, "reserved_bytes", (long long)s->reserved, "reserved_bytes_peak",
        (long long)s->reserved_peak, "active_blocks", (long long)s->active_blocks, "segments", (long long)s->segments,
        "free_blocks", (long long)s->free_blocks, "pending_blocks", (long long)s->pending_blocks, "num_allocs",
        (long long)s->num_allocs, "num_frees", (long long)s->num_frees, "num_raw_allocs", (long long)s->num_raw_allocs,
        "num_raw_frees", (long long)s->num_raw_frees, "num_ooms", (long long)s->num_ooms, "num_splits",
        (long long)s->num_splits, "num_merges", (long long)s->num_merges);
}

static PyObject *a_stats(AllocObject *self, PyObject *noargs)
{
    (void)noargs;
    dc_cache_stats s;
    dc_cache_get_stats(self->cache, &s);
    PyObject *d = dc_py_cache_stats_dict(&s);
    if (!d) return NULL;
    PyObject *v;
    if (!(v = PyLong_FromSize_t(self->used)) || PyDict_SetItemString(d, "raw_bytes", v) < 0) goto error;
    Py_DECREF(v);
    if (!(v = PyLong_FromLongLong(self->raw_live)) || PyDict_SetItemString(d, "raw_segments", v) < 0) goto error;
    Py_DECREF(v);
    if (!(v = PyLong_FromLongLong(self->events_live)) || PyDict_SetItemString(d, "live_events", v) < 0) goto error;
    Py_DECREF(v);
    return d;
error:
    Py_XDECREF(v);
    Py_DECREF(d);
    return NULL;
}

static PyObject *a_round(PyObject *cls, PyObject *o)
{
    (void)cls;
    size_t n = PyLong_AsSize_t(o);
    if (n == (size_t)-1 && PyErr_Occurred()) return NULL;
    size_t r = dc_cache_round(n);
    return Py_BuildValue("(nn)", (Py_ssize_t)r, (Py_ssize_t)(r ? dc_cache_segment_size(r) : 0));
}

static PyMethodDef alloc_methods[] = {
    { "alloc", (PyCFunction)a_alloc, METH_VARARGS, "alloc(nbytes, stream=0) -> address (0 for 0 bytes)" },
    { "release", (PyCFunction)a_release, METH_O, "release(address)" },
    { "record_stream", (PyCFunction)a_record_stream, METH_VARARGS, "record_stream(address, stream)" },
    { "complete_events", (PyCFunction)a_complete_events, METH_VARARGS,
      "complete_events(stream=None) -> how many fake events completed" },
    { "empty_cache", (PyCFunction)a_empty_cache, METH_NOARGS, "return wholly free segments" },
    { "reset_peak", (PyCFunction)a_reset_peak, METH_NOARGS, "peaks := current values" },
    { "block_size", (PyCFunction)a_block_size, METH_O, "rounded size of a live block, 0 otherwise" },
    { "stats", (PyCFunction)a_stats, METH_NOARGS, "the allocator's statistics and the fake device's" },
    { "round", (PyCFunction)a_round, METH_O | METH_CLASS, "round(n) -> (block size, segment size)" },
    { NULL, NULL, 0, NULL },
};

static PyType_Slot alloc_slots[] = {
    { Py_tp_init, alloc_init },
    { Py_tp_dealloc, alloc_dealloc },
    { Py_tp_methods, alloc_methods },
    { Py_tp_doc, "CacheAllocator(capacity=0, limit=0): the device caching allocator over host memory with fake "
                 "streams and events (tests)" },
    { 0, NULL },
};

static PyType_Spec alloc_spec = {
    .name = "dutycycle._C.CacheAllocator",
    .basicsize = sizeof(AllocObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = alloc_slots,
};

int dc_py_init_alloc(PyObject *m)
{
    PyObject *tp = PyType_FromModuleAndSpec(m, &alloc_spec, NULL);
    if (!tp) return -1;
    int r = PyModule_AddObjectRef(m, "CacheAllocator", tp);
    Py_DECREF(tp);
    return r;
}
