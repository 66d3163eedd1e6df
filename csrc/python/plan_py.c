/* plan_py.c: the host side of the GPU libraries' plans (csrc/plan) for the CPU tests.
 *
 * _C.PlanCache(slots, key_size): the LRU plan cache the cuBLASLt matmuls and cuDNN convolutions
 * keep, with payloads that only record which plan they are (a serial number) and a list of the
 * serials released (evicted, dropped, cleared).
 * _C.matmul_plan(...): what the CUDA matmul would decide for operands of given shapes, strides and
 * addresses — copies, host-looped batch dims, and the plan's key — with the copies' scratch
 * simulated as 512-byte aligned contiguous buffers (what the caching allocator hands out).
 *
 * Contract of every function and method: a new reference, or NULL with an exception set. */
#include "py.h"

#include <string.h>

#include "../plan/plan.h"

typedef struct {
    PyObject_HEAD dc_plan_cache *cache;
    size_t key_size;
    int64_t serial;
    PyObject *released; /* list of serials */
    PyObject *payloads; /* serial -> payload address, for drop() */
} PlanCacheObject;

typedef struct {
    PlanCacheObject *owner;
    int64_t serial; /* 0: never built into */
} fake_plan;

#define PSTATE(self) ((dc_py_state *)PyType_GetModuleState(Py_TYPE(self)))

static void fake_release(void *payload)
{
    fake_plan *p = payload;
    if (!p->serial) return;
    PyObject *v = PyLong_FromLongLong(p->serial);
    if (v) {
        if (PyList_Append(p->owner->released, v) < 0) PyErr_Clear();
        if (PyDict_DelItem(p->owner->payloads, v) < 0) PyErr_Clear();
        Py_DECREF(v);
    } else {
        PyErr_Clear();
    }
}

static int pc_init(PlanCacheObject *self, PyObject *args, PyObject *kw)
{
    static char *names[] = { "slots", "key_size", NULL };
    int slots = 0;
    Py_ssize_t key_size = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "in:PlanCache", names, &slots, &key_size)) return -1;
    if (self->cache) {
        PyErr_SetString(PyExc_RuntimeError, "PlanCache.__init__ called twice");
        return -1;
    }
    self->released = PyList_New(0);
    self->payloads = PyDict_New();
    if (!self->released || !self->payloads) return -1;
    if (key_size < 0) key_size = 0; /* refused below with the cache's own message */
    dc_status st = dc_plan_cache_new(slots, (size_t)key_size, sizeof(fake_plan), fake_release, &self->cache);
    if (st) {
        dc_py_raise(PSTATE(self), st);
        return -1;
    }
    self->key_size = (size_t)key_size;
    return 0;
}

static void pc_dealloc(PlanCacheObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->cache) dc_plan_cache_free(self->cache); /* releases into the lists below */
    Py_XDECREF(self->released);
    Py_XDECREF(self->payloads);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int pc_ready(PlanCacheObject *self)
{
    if (self->cache) return 1;
    PyErr_SetString(PyExc_RuntimeError, "PlanCache is not initialised");
    return 0;
}

/* get(key: bytes) -> (serial, fresh): fresh means a new plan was "built" under a new serial */
static PyObject *pc_get(PlanCacheObject *self, PyObject *o)
{
    if (!pc_ready(self)) return NULL;
    char *buf;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(o, &buf, &n) < 0) return NULL;
    if ((size_t)n != self->key_size)
        return PyErr_Format(PyExc_ValueError, "PlanCache.get: a key of %zd bytes, the cache's keys have %zu", n,
                            self->key_size);
    bool fresh = false;
    fake_plan *p = dc_plan_cache_get(self->cache, buf, &fresh);
    if (fresh) {
        p->owner = self;
        p->serial = ++self->serial;
        PyObject *k = PyLong_FromLongLong(p->serial), *v = PyLong_FromVoidPtr(p);
        int r = k && v ? PyDict_SetItem(self->payloads, k, v) : -1;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (r < 0) return NULL;
    }
    return Py_BuildValue("(LO)", (long long)p->serial, fresh ? Py_True : Py_False);
}

/* drop(serial): forget that plan (as after a failed build) */
static PyObject *pc_drop(PlanCacheObject *self, PyObject *o)
{
    if (!pc_ready(self)) return NULL;
    PyObject *addr = PyDict_GetItemWithError(self->payloads, o);
    if (!addr) {
        if (!PyErr_Occurred()) PyErr_Format(PyExc_KeyError, "PlanCache.drop: no cached plan %R", o);
        return NULL;
    }
    void *p = PyLong_AsVoidPtr(addr);
    if (!p && PyErr_Occurred()) return NULL;
    dc_plan_cache_drop(self->cache, p);
    Py_RETURN_NONE;
}

static PyObject *pc_clear(PlanCacheObject *self, PyObject *noargs)
{
    if (!pc_ready(self)) return NULL;
    dc_plan_cache_clear(self->cache);
    Py_RETURN_NONE;
}

PyObject *dc_py_plan_cache_stats_dict(const dc_plan_cache_stats *s)
{
    return Py_BuildValue("{sLsLsLsLsL}", "slots", (long long)s->slots, "used", (long long)s->used, "hits",
                         (long long)s->hits, "misses", (long long)s->misses, "evictions", (long long)s->evictions);
}

static PyObject *pc_stats(PlanCacheObject *self, PyObject *noargs)
{
    if (!pc_ready(self)) return NULL;
    dc_plan_cache_stats s;
    dc_plan_cache_get_stats(self->cache, &s);
    return dc_py_plan_cache_stats_dict(&s);
}

static PyObject *pc_released(PlanCacheObject *self, PyObject *noargs)
{
    if (!pc_ready(self)) return NULL;
    return PyList_GetSlice(self->released, 0, PY_SSIZE_T_MAX);
}

static PyMethodDef pc_methods[] = {
    { "get", (PyCFunction)pc_get, METH_O, "get(key: bytes) -> (serial, fresh)" },
    { "drop", (PyCFunction)pc_drop, METH_O, "drop(serial): forget that plan" },
    { "clear", (PyCFunction)pc_clear, METH_NOARGS, "release every plan" },
    { "stats", (PyCFunction)pc_stats, METH_NOARGS, "slots, used, hits, misses, evictions" },
    { "released", (PyCFunction)pc_released, METH_NOARGS, "serials released so far, in order" },
    { NULL, NULL, 0, NULL },
};

static PyType_Slot pc_slots[] = {
    { Py_tp_init, pc_init },
    { Py_tp_dealloc, pc_dealloc },
    { Py_tp_methods, pc_methods },
    { Py_tp_doc, "PlanCache(slots, key_size): the GPU plan cache of csrc/plan with payloads that record only "
                 "which plan they are (tests)" },
    { 0, NULL },
};

static PyType_Spec pc_spec = {
    .name = "dutycycle._C.PlanCache",
    .basicsize = sizeof(PlanCacheObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = pc_slots,
};

/* --- matmul_plan ------------------------------------------------------------------------------- */

/* A sequence of ints into dims[DC_MAX_DIMS]; its length, or -1 with an exception set. */
static int int_tuple(PyObject *o, const char *what, int64_t *dims)
{
    PyObject *seq = PySequence_Fast(o, what);
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > DC_MAX_DIMS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "matmul_plan: %s has %zd dims (at most %d)", what, n, DC_MAX_DIMS);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        dims[i] = v;
    }
    Py_DECREF(seq);
    return (int)n;
}

static PyObject *key_dict(const dc_mm_key *k)
{
    return Py_BuildValue("{sLsLsLsLsLsLsLsLsLsLsLsLsLsLsLsLsLsLsLsLsLsLsLsL}", "device", (long long)k->device, "dtype",
                         (long long)k->dtype, "compute", (long long)k->compute, "m", (long long)k->m, "n",
                         (long long)k->n, "k", (long long)k->k, "batch", (long long)k->batch, "op_a",
                         (long long)k->op_a, "op_b", (long long)k->op_b, "rows_a", (long long)k->rows_a, "cols_a",
                         (long long)k->cols_a, "ld_a", (long long)k->ld_a, "stride_a", (long long)k->stride_a, "rows_b",
                         (long long)k->rows_b, "cols_b", (long long)k->cols_b, "ld_b", (long long)k->ld_b, "stride_b",
                         (long long)k->stride_b, "ld_c", (long long)k->ld_c, "stride_c", (long long)k->stride_c,
                         "align_a", (long long)k->align_a, "align_b", (long long)k->align_b, "align_c",
                         (long long)k->align_c, "workspace", (long long)k->workspace, "size", (long long)sizeof *k);
}

/* A contiguous copy of v at a fresh 512-aligned scratch address. */
static void simulate_copy(dc_kview *v, uintptr_t *scratch)
{
    int64_t s = 1, n = 1;
    for (int d = v->ndim - 1; d >= 0; d--) {
        v->strides[d] = s;
        s *= v->shape[d];
    }
    for (int d = 0; d < v->ndim; d++) n *= v->shape[d];
    v->data = (char *)*scratch;
    *scratch += ((uintptr_t)n * dc_dtype_size(v->dtype) + 511) / 512 * 512 + 512;
}

static PyObject *f_matmul_plan(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *names[] = { "out_shape", "a_shape", "a_strides", "b_shape",   "b_strides", "dtype", "a_addr",
                             "b_addr",    "o_addr",  "compute",   "workspace", "device",    NULL };
    PyObject *os, *as, *ast, *bs, *bst;
    int dtype = DC_FLOAT32, compute = DC_MM_COMPUTE_32F, device = 0;
    unsigned long long a_addr = 1 << 20, b_addr = 2 << 20, o_addr = 3 << 20;
    long long workspace = 32 << 20;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOO|iKKKiLi:matmul_plan", names, &os, &as, &ast, &bs, &bst, &dtype,
                                     &a_addr, &b_addr, &o_addr, &compute, &workspace, &device))
        return NULL;
    if (dtype != DC_FLOAT32 && dtype != DC_FLOAT64 && dtype != DC_BFLOAT16 && dtype != DC_FLOAT16)
        return PyErr_Format(PyExc_ValueError, "matmul_plan: dtype id %d is not a float dtype", dtype);
    dc_kview o, A, B;
    memset(&o, 0, sizeof o);
    memset(&A, 0, sizeof A);
    memset(&B, 0, sizeof B);
    if ((o.ndim = int_tuple(os, "out_shape", o.shape)) < 0 || (A.ndim = int_tuple(as, "a_shape", A.shape)) < 0 ||
        int_tuple(ast, "a_strides", A.strides) != A.ndim || (B.ndim = int_tuple(bs, "b_shape", B.shape)) < 0 ||
        int_tuple(bst, "b_strides", B.strides) != B.ndim) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "matmul_plan: strides and shape lengths differ");
        return NULL;
    }
    const int nd = o.ndim;
    if (nd < 2 || A.ndim != nd || B.ndim != nd)
        return PyErr_Format(PyExc_ValueError, "matmul_plan: want operands of one ndim >= 2, got %d, %d, %d", nd, A.ndim,
                            B.ndim);
    for (int d = 0; d < nd - 2; d++)
        if (A.shape[d] != o.shape[d] || B.shape[d] != o.shape[d])
            return PyErr_Format(PyExc_ValueError, "matmul_plan: batch dim %d differs", d);
    if (A.shape[nd - 2] != o.shape[nd - 2] || B.shape[nd - 1] != o.shape[nd - 1] || A.shape[nd - 1] != B.shape[nd - 2])
        return PyErr_Format(PyExc_ValueError, "matmul_plan: the inner dims do not fit");
    for (int d = 0; d < nd; d++)
        if (o.shape[d] <= 0) return PyErr_Format(PyExc_ValueError, "matmul_plan: empty dims are not planned");
    int64_t s = 1;
    for (int d = nd - 1; d >= 0; d--) {
        o.strides[d] = s;
        s *= o.shape[d];
    }
    o.dtype = A.dtype = B.dtype = (dc_dtype)dtype;
    o.data = (char *)(uintptr_t)o_addr;
    A.data = (char *)(uintptr_t)a_addr;
    B.data = (char *)(uintptr_t)b_addr;

    dc_mm_layout L;
    dc_mm_choose(&o, &A, &B, &L);
    uintptr_t scratch = (uintptr_t)1 << 40;
    if (L.copy_a) simulate_copy(&A, &scratch);
    if (L.copy_b) simulate_copy(&B, &scratch);
    dc_mm_key key;
    dc_status st = dc_mm_plan(&o, &A, &B, device, compute, workspace, &L, &key);
    if (st) return dc_py_raise(dc_py_state_of(m), st);
    PyObject *kd = key_dict(&key);
    if (!kd) return NULL;
    PyObject *offs = PyList_New(L.outer);
    if (!offs) {
        Py_DECREF(kd);
        return NULL;
    }
    for (int64_t b = 0; b < L.outer; b++) {
        PyObject *t = Py_BuildValue("(LL)", (long long)dc_mm_outer_offset(&A, L.split, b),
                                    (long long)dc_mm_outer_offset(&B, L.split, b));
        if (!t) {
            Py_DECREF(kd);
            Py_DECREF(offs);
            return NULL;
        }
        PyList_SET_ITEM(offs, b, t);
    }
    PyObject *r = Py_BuildValue("{sOsOsisLsLsLsLsNsNsy#}", "copy_a", L.copy_a ? Py_True : Py_False, "copy_b",
                                L.copy_b ? Py_True : Py_False, "split", L.split, "outer", (long long)L.outer, "inner",
                                (long long)L.inner, "sa", (long long)L.sa, "sb", (long long)L.sb, "key", kd,
                                "outer_offsets", offs, "key_bytes", (const char *)&key, (Py_ssize_t)sizeof key);
    return r;
}

static PyMethodDef plan_functions[] = {
    { "matmul_plan", (PyCFunction)(void (*)(void))f_matmul_plan, METH_VARARGS | METH_KEYWORDS,
      "matmul_plan(out_shape, a_shape, a_strides, b_shape, b_strides, dtype=float32 id, a_addr, b_addr, o_addr, "
      "compute=0, workspace=32 MiB, device=0) -> what the CUDA matmul decides (csrc/plan/matmul.c)" },
    { NULL, NULL, 0, NULL },
};

int dc_py_init_plan(PyObject *m)
{
    if (PyModule_AddFunctions(m, plan_functions) < 0) return -1;
    PyObject *tp = PyType_FromModuleAndSpec(m, &pc_spec, NULL);
    if (!tp) return -1;
    int r = PyModule_AddObjectRef(m, "PlanCache", tp);
    Py_DECREF(tp);
    return r;
}
