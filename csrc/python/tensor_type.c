/* tensor_type.c: _C.TensorBase, the C half of dutycycle.Tensor (the Python subclass in
 * python/dutycycle/_tensor.py adds operators and methods), plus the exceptions, NumPy and DLPack
 * interop and the Python post-accumulate-grad hooks. */
#include <stdlib.h>

#include "py.h"
#include "structmember.h"

dc_py_state *dc_py_state_of_type(PyTypeObject *tp)
{
    PyObject *m = PyType_GetModuleByDef(tp, &dc_py_module_def); /* borrowed */
    return m ? dc_py_state_of(m) : NULL;
}

/* --- exceptions --------------------------------------------------------------------------- */

int dc_py_init_errors(PyObject *m)
{
    dc_py_state *S = dc_py_state_of(m);
    PyObject *base = PyErr_NewExceptionWithDoc("dutycycle.DutycycleError", "Base class of dutycycle's errors.",
                                               PyExc_RuntimeError, NULL);
    if (!base || PyModule_AddObjectRef(m, "DutycycleError", base) < 0) {
        Py_XDECREF(base);
        return -1;
    }
    S->base_error = base; /* the state's reference */
    struct {
        dc_status st;
        const char *name;
        PyObject *also;
    } table[] = {
        { DC_ERR_SHAPE, "ShapeError", PyExc_ValueError },
        { DC_ERR_DTYPE, "DTypeError", PyExc_TypeError },
        { DC_ERR_DEVICE, "DeviceError", NULL },
        { DC_ERR_VALUE, "ValueError_", PyExc_ValueError },
        { DC_ERR_INDEX, "IndexError_", PyExc_IndexError },
        { DC_ERR_AUTOGRAD, "AutogradError", NULL },
        { DC_ERR_UNSUPPORTED, "UnsupportedError", NULL },
        { DC_ERR_CUDA, "CudaError", NULL },
        { DC_ERR_INTERNAL, "InternalError", NULL },
        { DC_ERR_IO, "DataIOError", PyExc_OSError },
        { DC_ERR_FORMAT, "DataFormatError", PyExc_ValueError },
    };
    for (size_t k = 0; k < sizeof table / sizeof table[0]; k++) {
        PyObject *bases = table[k].also ? PyTuple_Pack(2, base, table[k].also) : PyTuple_Pack(1, base);
        if (!bases) return -1;
        char full[64];
        snprintf(full, sizeof full, "dutycycle.%s", table[k].name);
        PyObject *e = PyErr_NewException(full, bases, NULL);
        Py_DECREF(bases);
        if (!e) return -1;
        S->exc_by_status[table[k].st] = e; /* the state's reference */
        if (PyModule_AddObjectRef(m, table[k].name, e) < 0) return -1;
    }
    S->exc_by_status[DC_ERR_NOMEM] = Py_NewRef(PyExc_MemoryError);
    S->exc_by_status[DC_ERR_CALLBACK] = Py_NewRef(base);
    return 0;
}

static _Thread_local PyObject *stashed_type, *stashed_value, *stashed_tb;

void dc_py_stash_exception(void)
{
    Py_XDECREF(stashed_type);
    Py_XDECREF(stashed_value);
    Py_XDECREF(stashed_tb);
    PyErr_Fetch(&stashed_type, &stashed_value, &stashed_tb);
}

int dc_py_restore_exception(void)
{
    if (!stashed_type) return 0;
    PyErr_Restore(stashed_type, stashed_value, stashed_tb);
    stashed_type = stashed_value = stashed_tb = NULL;
    return 1;
}

PyObject *dc_py_raise(dc_py_state *S, dc_status st)
{
    if (st == DC_ERR_CALLBACK && dc_py_restore_exception()) return NULL;
    if (PyErr_Occurred()) return NULL;
    PyObject *e =
        S && (unsigned)st < DC_STATUS_COUNT && S->exc_by_status[st] ? S->exc_by_status[st] : PyExc_RuntimeError;
    const char *msg = dc_last_error();
    PyErr_SetString(e, msg && *msg ? msg : dc_strerror(st));
    return NULL;
}

/* --- wrapping ------------------------------------------------------------------------------ */

PyObject *dc_py_wrap(dc_py_state *S, dc_tensor *t)
{
    if (!t) return NULL;
    if (t->pyobj) {
        PyObject *o = (PyObject *)t->pyobj;
        Py_INCREF(o);
        dc_tensor_decref(t);
        return o;
    }
    PyTypeObject *cls = S->tensor_cls ? S->tensor_cls : S->tensor_base;
    TensorObject *o = (TensorObject *)cls->tp_alloc(cls, 0);
    if (!o) {
        dc_tensor_decref(t);
        return NULL;
    }
    o->t = t;
    t->pyobj = o;
    return (PyObject *)o;
}

/* The type check goes through the object's type to the module that made it: a type none of our
 * modules made is not a tensor, and a dutycycle type is checked against that module's TensorBase. */
dc_tensor *dc_py_tensor(PyObject *o, const char *what)
{
    PyObject *m = PyType_GetModuleByDef(Py_TYPE(o), &dc_py_module_def);
    if (!m) PyErr_Clear();
    if (!m || !PyObject_TypeCheck(o, dc_py_state_of(m)->tensor_base)) {
        PyErr_Format(PyExc_TypeError, "%s must be a dutycycle.Tensor, not %.100s", what, Py_TYPE(o)->tp_name);
        return NULL;
    }
    dc_tensor *t = ((TensorObject *)o)->t;
    if (!t) {
        PyErr_Format(PyExc_TypeError, "%s is an uninitialised tensor", what);
        return NULL;
    }
    return t;
}

static void tensor_dealloc(TensorObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (tp->tp_flags & Py_TPFLAGS_HAVE_GC) PyObject_GC_UnTrack(self);
    /* Detach from the C tensor first: a weakref callback below may run code that wraps this C
     * tensor again (p.grad, a graph's output), which must build a new wrapper instead of reviving
     * this dying one. */
    dc_tensor *t = self->t;
    if (t && t->pyobj == self) t->pyobj = NULL;
    if (self->weakrefs) PyObject_ClearWeakRefs((PyObject *)self);
    self->t = NULL;
    dc_tensor_decref(t);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *tensor_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    (void)args;
    (void)kw;
    (void)type;
    PyErr_SetString(PyExc_TypeError,
                    "create tensors with dutycycle.tensor(), zeros(), empty(), from_numpy() and friends");
    return NULL;
}

/* --- properties ---------------------------------------------------------------------------- */

#define SELF_T(self) (((TensorObject *)(self))->t)

static PyObject *shape_tuple(int ndim, const int64_t *v)
{
    PyObject *tup = PyTuple_New(ndim);
    if (!tup) return NULL;
    for (int d = 0; d < ndim; d++) {
        PyObject *x = PyLong_FromLongLong(v[d]);
        if (!x) {
            Py_DECREF(tup);
            return NULL;
        }
        PyTuple_SET_ITEM(tup, d, x);
    }
    return tup;
}

static PyObject *get_shape(PyObject *self, void *c)
{
    (void)c;
    return shape_tuple(SELF_T(self)->ndim, SELF_T(self)->shape);
}
static PyObject *get_dtype_id(PyObject *self, void *c)
{
    (void)c;
    return PyLong_FromLong(SELF_T(self)->dtype);
}
static PyObject *get_device_t(PyObject *self, void *c)
{
    (void)c;
    return Py_BuildValue("(ii)", SELF_T(self)->device.type, SELF_T(self)->device.index);
}
static PyObject *get_ndim(PyObject *self, void *c)
{
    (void)c;
    return PyLong_FromLong(SELF_T(self)->ndim);
}
static PyObject *get_is_leaf(PyObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(SELF_T(self)->grad_fn == NULL);
}
static PyObject *get_version(PyObject *self, void *c)
{
    (void)c;
    return PyLong_FromLong(atomic_load(&SELF_T(self)->storage->version));
}
static PyObject *get_grad_fn_name(PyObject *self, void *c)
{
    (void)c;
    dc_node *n = SELF_T(self)->grad_fn;
    if (!n) Py_RETURN_NONE;
    return PyUnicode_FromString(n->name);
}
static PyObject *get_requires_grad(PyObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(SELF_T(self)->requires_grad);
}
static int set_requires_grad(PyObject *self, PyObject *v, void *c)
{
    (void)c;
    dc_tensor *t = SELF_T(self);
    if (!v) {
        PyErr_SetString(PyExc_AttributeError, "can't delete requires_grad");
        return -1;
    }
    int on = PyObject_IsTrue(v);
    if (on < 0) return -1;
    if (t->grad_fn) {
        if (on) return 0;
        PyErr_SetString(PyExc_RuntimeError,
                        "you can only change requires_grad flags of leaf tensors; use .detach() for a non-leaf");
        return -1;
    }
    if (on && !dc_dtype_is_float(t->dtype)) {
        PyErr_Format(PyExc_RuntimeError, "only floating-point tensors can require gradients (this one is %s)",
                     dc_dtype_name(t->dtype));
        return -1;
    }
    t->requires_grad = on;
    return 0;
}
static PyObject *get_grad(PyObject *self, void *c)
{
    (void)c;
    dc_tensor *g = SELF_T(self)->grad;
    if (!g) Py_RETURN_NONE;
    dc_py_state *S = dc_py_state_of_type(Py_TYPE(self));
    if (!S) return NULL;
    dc_tensor_incref(g);
    return dc_py_wrap(S, g);
}
static int set_grad(PyObject *self, PyObject *v, void *c)
{
    (void)c;
    dc_tensor *t = SELF_T(self), *g = NULL;
    if (v && v != Py_None) {
        if (!(g = dc_py_tensor(v, "grad"))) return -1;
        if (g->ndim != t->ndim || memcmp(g->shape, t->shape, sizeof(int64_t) * t->ndim)) {
            PyErr_Format(PyExc_ValueError, "assigned grad has shape %s but the tensor has shape %s", DC_SHAPE(g),
                         DC_SHAPE(t));
            return -1;
        }
        if (g->dtype != t->dtype || !dc_device_eq(g->device, t->device)) {
            PyErr_Format(PyExc_TypeError, "assigned grad has dtype %s on %s but the tensor is %s",
                         dc_dtype_name(g->dtype), dc_device_str(g->device), dc_dtype_name(t->dtype));
            return -1;
        }
    }
    Py_BEGIN_ALLOW_THREADS dc_tensor_set_grad(t, g); /* waits for ops of other threads in flight */
    Py_END_ALLOW_THREADS return 0;
}

/* _C._StorageRef: a reference to a dc_storage, exporting its bytes through the buffer protocol.
 * __array_interface__ hands one to NumPy as the array's data, so the array keeps the *storage*
 * alive: `t.data = other` (which drops t's reference to its old storage) can't free memory a NumPy
 * view still uses, and the view keeps seeing the old data, as in PyTorch. */
typedef struct {
    PyObject_HEAD dc_storage *s; /* owned reference */
} StorageRefObject;

static int storage_ref_getbuffer(PyObject *self, Py_buffer *view, int flags)
{
    dc_storage *s = ((StorageRefObject *)self)->s;
    return PyBuffer_FillInfo(view, self, s->data, (Py_ssize_t)s->nbytes, 0, flags);
}

static void storage_ref_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    dc_storage_decref(((StorageRefObject *)self)->s);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyType_Slot storage_ref_slots[] = {
    { Py_bf_getbuffer, storage_ref_getbuffer },
    { Py_tp_dealloc, storage_ref_dealloc },
    { Py_tp_doc, "a reference to a tensor's storage, exported as a buffer (for NumPy views)" },
    { 0, NULL },
};

static PyType_Spec storage_ref_spec = {
    .name = "dutycycle._C._StorageRef",
    .basicsize = sizeof(StorageRefObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = storage_ref_slots,
};

/* NumPy's array interface: numpy.asarray(t) shares memory and keeps t's storage alive. */
static PyObject *get_array_interface(PyObject *self, void *c)
{
    (void)c;
    dc_tensor *t = SELF_T(self);
    if (t->device.type != DC_CPU) {
        PyErr_Format(PyExc_TypeError, "can't convert a %s tensor to NumPy; call .cpu() first",
                     dc_device_str(t->device));
        return NULL;
    }
    static const char *typestr[DC_DTYPE_COUNT] = {
        "<f4", "<f8", NULL, "<f2", "<i4", "<i8", "|b1", "|u1", "|i1", "<i2"
    };
    if (!typestr[t->dtype]) {
        PyErr_SetString(PyExc_TypeError, "NumPy has no bfloat16 dtype; convert with .float() first");
        return NULL;
    }
    size_t isz = dc_dtype_size(t->dtype);
    int64_t bstr[DC_MAX_DIMS];
    for (int d = 0; d < t->ndim; d++) bstr[d] = t->strides[d] * (int64_t)isz;
    PyObject *shape = shape_tuple(t->ndim, t->shape), *strides = shape_tuple(t->ndim, bstr);
    dc_py_state *S = dc_py_state_of_type(Py_TYPE(self));
    if (!S) return NULL;
    StorageRefObject *ref = PyObject_New(StorageRefObject, S->storage_ref);
    PyObject *r = NULL;
    if (ref) ref->s = dc_tensor_storage_ref(t);
    if (shape && strides && ref)
        r = Py_BuildValue("{s:O,s:s,s:O,s:n,s:O,s:i}", "shape", shape, "typestr", typestr[t->dtype], "data", ref,
                          "offset", (Py_ssize_t)(t->offset * (int64_t)isz), "strides", strides, "version", 3);
    Py_XDECREF(shape);
    Py_XDECREF(strides);
    Py_XDECREF(ref);
    return r;
}

static PyGetSetDef tensor_getset[] = {
    { "shape", get_shape, NULL, "the size of each dim, as a tuple", NULL },
    { "_dtype_id", get_dtype_id, NULL, NULL, NULL },
    { "_device_tuple", get_device_t, NULL, NULL, NULL },
    { "ndim", get_ndim, NULL, "number of dims", NULL },
    { "is_leaf", get_is_leaf, NULL, "True for tensors not produced by a differentiable op", NULL },
    { "_version", get_version, NULL, "in-place modification counter of the storage", NULL },
    { "_grad_fn_name", get_grad_fn_name, NULL, NULL, NULL },
    { "requires_grad", get_requires_grad, set_requires_grad, "whether autograd records ops on this tensor", NULL },
    { "grad", get_grad, set_grad, "the accumulated gradient (None until backward)", NULL },
    { "__array_interface__", get_array_interface, NULL, NULL, NULL },
    { NULL, NULL, NULL, NULL, NULL },
};

/* --- methods ------------------------------------------------------------------------------- */

static PyObject *m_stride(PyObject *self, PyObject *noargs)
{
    (void)noargs;
    return shape_tuple(SELF_T(self)->ndim, SELF_T(self)->strides);
}
static PyObject *m_numel(PyObject *self, PyObject *noargs)
{
    (void)noargs;
    return PyLong_FromLongLong(dc_numel(SELF_T(self)));
}
static PyObject *m_is_contiguous(PyObject *self, PyObject *noargs)
{
    (void)noargs;
    return PyBool_FromLong(dc_is_contiguous(SELF_T(self)));
}
static PyObject *m_data_ptr(PyObject *self, PyObject *noargs)
{
    (void)noargs;
    return PyLong_FromVoidPtr(dc_data(SELF_T(self)));
}
static PyObject *m_storage_offset(PyObject *self, PyObject *noargs)
{
    (void)noargs;
    return PyLong_FromLongLong(SELF_T(self)->offset);
}

static PyObject *m_item(PyObject *self, PyObject *noargs)
{
    (void)noargs;
    dc_tensor *t = SELF_T(self), *c;
    if (dc_numel(t) != 1) {
        PyErr_Format(PyExc_ValueError,
                     "item(): only one-element tensors can be converted to a Python scalar, got shape %s", DC_SHAPE(t));
        return NULL;
    }
    dc_status st;
    /* note: for device tensors this is a sync point (copy to host) */
    dc_sync_note(DC_SYNC_ITEM);
    dc_dtype want = t->dtype == DC_BOOL ? DC_BOOL : dc_dtype_is_float(t->dtype) ? DC_FLOAT64 : DC_INT64;
    DC_BEGIN_OP st = dc_to(&c, t, want, (dc_device){ DC_CPU, 0 });
    DC_END_OP if (st) return dc_py_raise(dc_py_state_of_type(Py_TYPE(self)), st);
    PyObject *r;
    if (want == DC_FLOAT64)
        r = PyFloat_FromDouble(*(double *)dc_data(c));
    else if (want == DC_INT64)
        r = PyLong_FromLongLong(*(int64_t *)dc_data(c));
    else
        r = PyBool_FromLong(*(uint8_t *)dc_data(c));
    dc_tensor_decref(c);
    return r;
}

/* Python post-accumulate-grad hooks. Runs on the backward thread, which does not hold the GIL;
 * the hook keeps the module whose state wraps the parameter. */
typedef struct {
    PyObject *fn;     /* owned: the callable */
    PyObject *module; /* owned: the _C module that registered it */
} py_hook_ctx;

static dc_status py_hook(void *ctx, dc_tensor *param)
{
    py_hook_ctx *h = ctx;
    PyGILState_STATE g = PyGILState_Ensure();
    dc_tensor_incref(param);
    PyObject *p = dc_py_wrap(dc_py_state_of(h->module), param);
    PyObject *r = p ? PyObject_CallOneArg(h->fn, p) : NULL;
    Py_XDECREF(p);
    dc_status st = DC_OK;
    if (!r) {
        dc_py_stash_exception();
        st = dc_error(DC_ERR_CALLBACK, "a post-accumulate-grad hook raised");
    }
    Py_XDECREF(r);
    PyGILState_Release(g);
    return st;
}
static void py_hook_free(void *ctx)
{
    py_hook_ctx *h = ctx;
    PyGILState_STATE g = PyGILState_Ensure();
    Py_DECREF(h->fn);
    Py_DECREF(h->module);
    PyGILState_Release(g);
    free(h);
}

/* Garbage collection: a hook's closure often refers back to its parameter (or to an optimizer
 * holding it), a cycle through C the collector can't see. The wrapper reports its Python hooks
 * only while it holds the sole reference to the C tensor; while a graph or another C owner also
 * holds it the hooks may still fire, so they count as reachable. */
static int tensor_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self)); /* instances of heap types visit their type */
    dc_tensor *t = SELF_T(self);
    if (t && atomic_load(&t->refcount) == 1)
        for (dc_hook *h = t->hooks; h; h = h->next)
            if (h->fn == py_hook) Py_VISIT(((py_hook_ctx *)h->ctx)->fn);
    return 0;
}

static int tensor_clear(PyObject *self)
{
    dc_tensor *t = SELF_T(self);
    if (!t || atomic_load(&t->refcount) != 1) return 0;
    dc_hook **p = &t->hooks, *dead = NULL;
    while (*p) { /* unlink first: freeing a hook runs arbitrary Python code */
        dc_hook *h = *p;
        if (h->fn == py_hook) {
            *p = h->next;
            h->next = dead;
            dead = h;
        } else {
            p = &h->next;
        }
    }
    while (dead) {
        dc_hook *h = dead;
        dead = h->next;
        py_hook_free(h->ctx);
        free(h);
    }
    return 0;
}

static PyObject *m_add_hook(PyObject *self, PyObject *fn)
{
    dc_tensor *t = SELF_T(self);
    if (!PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "hook must be callable, not %.100s", Py_TYPE(fn)->tp_name);
        return NULL;
    }
    if (t->grad_fn || !t->requires_grad) {
        PyErr_SetString(PyExc_RuntimeError,
                        "post-accumulate-grad hooks can only be registered on leaf tensors that require grad");
        return NULL;
    }
    PyObject *module = PyType_GetModuleByDef(Py_TYPE(self), &dc_py_module_def);
    if (!module) return NULL;
    py_hook_ctx *h = malloc(sizeof *h);
    if (!h) return PyErr_NoMemory();
    h->fn = Py_NewRef(fn);
    h->module = Py_NewRef(module);
    int id = dc_tensor_add_hook(t, py_hook, h, py_hook_free);
    if (id < 0) {
        Py_DECREF(h->fn);
        Py_DECREF(h->module);
        free(h);
        return PyErr_NoMemory();
    }
    return PyLong_FromLong(id);
}

static PyObject *m_remove_hook(PyObject *self, PyObject *id)
{
    long v = PyLong_AsLong(id);
    if (v == -1 && PyErr_Occurred()) return NULL;
    return PyBool_FromLong(dc_tensor_remove_hook(SELF_T(self), (int)v));
}

/* t._set_data(src): make t an alias of src's data (storage, geometry, dtype, device), keeping t's
 * identity, requires_grad and hooks: what `param.data = x` means in PyTorch. A .grad that no
 * longer fits is dropped. */
static PyObject *m_set_data(PyObject *self, PyObject *arg)
{
    dc_tensor *t = SELF_T(self), *s = dc_py_tensor(arg, "data");
    if (!s) return NULL;
    if (t->requires_grad && !dc_dtype_is_float(s->dtype)) {
        PyErr_Format(PyExc_TypeError, "can't assign %s data to a tensor that requires grad", dc_dtype_name(s->dtype));
        return NULL;
    }
    /* `s` stays alive without the GIL: the caller's argument holds it */
    Py_BEGIN_ALLOW_THREADS dc_tensor_set_data(t, s); /* waits for ops of other threads in flight */
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

/* t._bump_version(): count a write made behind the core's back (NumPy writing through
 * np.asarray(t) for index assignment), so autograd notices it like any in-place op. */
static PyObject *m_bump_version(PyObject *self, PyObject *noargs)
{
    (void)noargs;
    atomic_fetch_add(&SELF_T(self)->storage->version, 1);
    Py_RETURN_NONE;
}

/* Tensor._make_subclass(cls, data, requires_grad): a new `cls` object sharing data's storage. */
static PyObject *m_make_subclass(PyObject *unused, PyObject *args)
{
    (void)unused;
    PyObject *cls, *data;
    int rg = 0;
    if (!PyArg_ParseTuple(args, "OO|p:_make_subclass", &cls, &data, &rg)) return NULL;
    dc_py_state *S = PyType_Check(cls) ? dc_py_state_of_type((PyTypeObject *)cls) : NULL;
    if (!S || !PyType_IsSubtype((PyTypeObject *)cls, S->tensor_base)) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "_make_subclass: cls must be a subclass of dutycycle.Tensor");
        return NULL;
    }
    dc_tensor *src = dc_py_tensor(data, "data"), *t;
    if (!src) return NULL;
    dc_status st = dc_detach(&t, src);
    if (st) return dc_py_raise(S, st);
    if (rg && !dc_dtype_is_float(t->dtype)) {
        dc_tensor_decref(t);
        PyErr_Format(PyExc_RuntimeError, "only floating-point tensors can require gradients (got %s)",
                     dc_dtype_name(src->dtype));
        return NULL;
    }
    t->requires_grad = rg;
    TensorObject *o = (TensorObject *)((PyTypeObject *)cls)->tp_alloc((PyTypeObject *)cls, 0);
    if (!o) {
        dc_tensor_decref(t);
        return NULL;
    }
    o->t = t;
    t->pyobj = o;
    return (PyObject *)o;
}

/* --- DLPack (ABI of dlpack.h v1.0: the unversioned capsule "dltensor" and, for consumers that
 * pass max_version >= (1, 0), "dltensor_versioned"; NumPy imports only the latter as writable) --- */

typedef struct {
    int32_t device_type, device_id;
} DLDevice;
typedef struct {
    uint8_t code, bits;
    uint16_t lanes;
} DLDataType;
typedef struct {
    void *data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape, *strides;
    uint64_t byte_offset;
} DLTensor;
typedef struct DLManagedTensor {
    DLTensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensor *self);
} DLManagedTensor;
typedef struct {
    uint32_t major, minor;
} DLPackVersion;
typedef struct DLManagedTensorVersioned {
    DLPackVersion version;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensorVersioned *self);
    uint64_t flags;
    DLTensor dl_tensor;
} DLManagedTensorVersioned;
enum { kDLCPU = 1, kDLCUDA = 2, kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4, kDLBool = 6 };
#define DLPACK_FLAG_BITMASK_IS_COPIED (1ull << 1)

/* One allocation per export, holding both layouts; `versioned` says which one the capsule has. */
typedef struct {
    DLManagedTensor m;
    DLManagedTensorVersioned mv;
    int versioned;
    int64_t shape[DC_MAX_DIMS], strides[DC_MAX_DIMS];
    dc_storage *storage; /* the storage, not the tensor: `t.data = x` must not free it under the consumer */
} dl_export;

static void dl_export_free(dl_export *e)
{
    dc_storage_decref(e->storage);
    free(e);
}
static void dl_export_deleter(DLManagedTensor *m)
{
    dl_export_free(m->manager_ctx);
}
static void dl_export_deleter_v(DLManagedTensorVersioned *m)
{
    dl_export_free(m->manager_ctx);
}

static void dl_capsule_destructor(PyObject *cap)
{
    if (PyCapsule_IsValid(cap, "used_dltensor")) return;
    DLManagedTensor *m = PyCapsule_GetPointer(cap, "dltensor");
    if (m && m->deleter)
        m->deleter(m);
    else
        PyErr_Clear();
}

static void dl_capsule_destructor_v(PyObject *cap)
{
    if (PyCapsule_IsValid(cap, "used_dltensor_versioned")) return;
    DLManagedTensorVersioned *m = PyCapsule_GetPointer(cap, "dltensor_versioned");
    if (m && m->deleter)
        m->deleter(m);
    else
        PyErr_Clear();
}

/* __dlpack__(*, stream, max_version, dl_device, copy): the array API's export. */
static PyObject *m_dlpack(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "stream", "max_version", "dl_device", "copy", NULL };
    PyObject *stream = Py_None, *maxv = Py_None, *dldev = Py_None, *copy = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|$OOOO:__dlpack__", kwlist, &stream, &maxv, &dldev, &copy)) return NULL;
    dc_tensor *t = SELF_T(self);
    if (t->requires_grad) {
        PyErr_SetString(PyExc_RuntimeError, "can't export a tensor that requires grad via DLPack; use .detach()");
        return NULL;
    }
    int dev_type = t->device.type == DC_CPU ? kDLCPU : kDLCUDA;
    if (dldev != Py_None) {
        int want_type, want_id;
        if (!PyArg_ParseTuple(dldev, "ii:__dlpack__ dl_device", &want_type, &want_id)) return NULL;
        if (want_type != dev_type || want_id != t->device.index) {
            PyErr_Format(PyExc_BufferError, "__dlpack__: can't export a %s tensor to DLPack device (%d, %d)",
                         dc_device_str(t->device), want_type, want_id);
            return NULL;
        }
    }
    int versioned = 0, copied = copy != Py_None && PyObject_IsTrue(copy) == 1;
    if (maxv != Py_None) {
        unsigned major, minor;
        if (!PyArg_ParseTuple(maxv, "II:__dlpack__ max_version", &major, &minor)) return NULL;
        versioned = major >= 1;
    }
    static const DLDataType dts[] = { { kDLFloat, 32, 1 }, { kDLFloat, 64, 1 }, { kDLBfloat, 16, 1 },
                                      { kDLFloat, 16, 1 }, { kDLInt, 32, 1 },   { kDLInt, 64, 1 },
                                      { kDLBool, 8, 1 },   { kDLUInt, 8, 1 },   { kDLInt, 8, 1 },
                                      { kDLInt, 16, 1 } };
    if (copied) { /* the consumer asked for its own copy */
        dc_tensor *c;
        dc_status st;
        DC_BEGIN_OP st = dc_clone(&c, t);
        DC_END_OP if (st) return dc_py_raise(dc_py_state_of_type(Py_TYPE(self)), st);
        t = c;
    } else {
        dc_tensor_incref(t);
    }
    dl_export *e = calloc(1, sizeof *e);
    if (!e) {
        dc_tensor_decref(t);
        return PyErr_NoMemory();
    }
    e->storage = dc_tensor_storage_ref(t);
    e->versioned = versioned;
    for (int d = 0; d < t->ndim; d++) {
        e->shape[d] = t->shape[d];
        e->strides[d] = t->strides[d];
    }
    DLTensor *dl = versioned ? &e->mv.dl_tensor : &e->m.dl_tensor;
    dl->data = dc_data(t);
    dl->device.device_type = dev_type;
    dl->device.device_id = t->device.index;
    dl->ndim = t->ndim;
    dl->dtype = dts[t->dtype];
    dl->shape = e->shape;
    dl->strides = e->strides;
    PyObject *cap;
    if (versioned) {
        e->mv.version = (DLPackVersion){ 1, 0 };
        e->mv.manager_ctx = e;
        e->mv.deleter = dl_export_deleter_v;
        e->mv.flags = copied ? DLPACK_FLAG_BITMASK_IS_COPIED : 0; /* writable */
        if (!(cap = PyCapsule_New(&e->mv, "dltensor_versioned", dl_capsule_destructor_v))) dl_export_free(e);
    } else {
        e->m.manager_ctx = e;
        e->m.deleter = dl_export_deleter;
        if (!(cap = PyCapsule_New(&e->m, "dltensor", dl_capsule_destructor))) dl_export_free(e);
    }
    dc_tensor_decref(t); /* the export holds the storage; the geometry was copied above */
    return cap;
}

static PyObject *m_dlpack_device(PyObject *self, PyObject *noargs)
{
    (void)noargs;
    dc_tensor *t = SELF_T(self);
    return Py_BuildValue("(ii)", t->device.type == DC_CPU ? kDLCPU : kDLCUDA, t->device.index);
}

static void dl_import_deleter(void *ctx)
{
    DLManagedTensor *m = ctx;
    if (m->deleter) m->deleter(m); /* may call back into Python (e.g. NumPy's); it takes the GIL itself */
}

/* _C.from_dlpack_capsule(capsule) */
PyObject *dc_py_from_dlpack_capsule(dc_py_state *S, PyObject *cap)
{
    DLManagedTensor *m = PyCapsule_GetPointer(cap, "dltensor");
    if (!m) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "from_dlpack: expected an unused 'dltensor' capsule");
        return NULL;
    }
    DLTensor *dl = &m->dl_tensor;
    dc_dtype dt;
    DLDataType ty = dl->dtype;
    if (ty.lanes != 1) goto bad_dtype;
    if (ty.code == kDLFloat && ty.bits == 32)
        dt = DC_FLOAT32;
    else if (ty.code == kDLFloat && ty.bits == 64)
        dt = DC_FLOAT64;
    else if (ty.code == kDLFloat && ty.bits == 16)
        dt = DC_FLOAT16;
    else if (ty.code == kDLBfloat && ty.bits == 16)
        dt = DC_BFLOAT16;
    else if (ty.code == kDLInt && ty.bits == 32)
        dt = DC_INT32;
    else if (ty.code == kDLInt && ty.bits == 64)
        dt = DC_INT64;
    else if (ty.code == kDLBool && ty.bits == 8)
        dt = DC_BOOL;
    else if (ty.code == kDLUInt && ty.bits == 8)
        dt = DC_UINT8;
    else if (ty.code == kDLInt && ty.bits == 8)
        dt = DC_INT8;
    else if (ty.code == kDLInt && ty.bits == 16)
        dt = DC_INT16;
    else
        goto bad_dtype;
    dc_device dev;
    if (dl->device.device_type == kDLCPU)
        dev = (dc_device){ DC_CPU, 0 };
    else if (dl->device.device_type == kDLCUDA)
        dev = (dc_device){ DC_CUDA, dl->device.device_id };
    else {
        PyErr_Format(PyExc_ValueError, "from_dlpack: unsupported device type %d (cpu=1 and cuda=2 are supported)",
                     dl->device.device_type);
        return NULL;
    }
    if (dl->ndim < 0 || dl->ndim > DC_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "from_dlpack: %d dims is more than the supported %d", dl->ndim, DC_MAX_DIMS);
        return NULL;
    }
    int64_t strides[DC_MAX_DIMS], extent = 1;
    if (dl->strides)
        memcpy(strides, dl->strides, sizeof(int64_t) * dl->ndim);
    else
        dc_contiguous_strides(dl->ndim, dl->shape, strides);
    for (int d = 0; d < dl->ndim; d++) {
        if (strides[d] < 0) {
            PyErr_SetString(PyExc_ValueError, "from_dlpack: negative strides are not supported");
            return NULL;
        }
        if (dl->shape[d] > 0) extent += (dl->shape[d] - 1) * strides[d];
    }
    char *data = (char *)dl->data + dl->byte_offset;
    if (PyCapsule_SetName(cap, "used_dltensor") < 0) return NULL;
    dc_tensor *t;
    dc_status st = dc_from_blob(&t, data, (size_t)extent * dc_dtype_size(dt), dl->ndim, dl->shape, strides, dt, dev,
                                dl_import_deleter, m);
    if (st) return dc_py_raise(S, st);
    return dc_py_wrap(S, t);
bad_dtype:
    PyErr_Format(PyExc_TypeError, "from_dlpack: unsupported dtype (code %d, %d bits, %d lanes)", ty.code, ty.bits,
                 ty.lanes);
    return NULL;
}

static PyMethodDef tensor_methods[] = {
    { "stride", m_stride, METH_NOARGS, "strides in elements" },
    { "numel", m_numel, METH_NOARGS, "number of elements" },
    { "is_contiguous", m_is_contiguous, METH_NOARGS, "row-major contiguous?" },
    { "data_ptr", m_data_ptr, METH_NOARGS, "address of the first element" },
    { "storage_offset", m_storage_offset, METH_NOARGS, "offset in elements into the storage" },
    { "item", m_item, METH_NOARGS, "the value of a one-element tensor as a Python scalar" },
    { "_add_post_accumulate_grad_hook", m_add_hook, METH_O, NULL },
    { "_remove_post_accumulate_grad_hook", m_remove_hook, METH_O, NULL },
    { "_set_data", m_set_data, METH_O, NULL },
    { "_bump_version", m_bump_version, METH_NOARGS, NULL },
    { "_make_subclass", m_make_subclass, METH_VARARGS | METH_STATIC, NULL },
    { "__dlpack__", (PyCFunction)(void (*)(void))m_dlpack, METH_VARARGS | METH_KEYWORDS, "export via DLPack" },
    { "__dlpack_device__", m_dlpack_device, METH_NOARGS, "(device_type, device_id) for DLPack" },
    { NULL, NULL, 0, NULL },
};

static PyMemberDef tensor_members[] = {
    { "__weaklistoffset__", T_PYSSIZET, offsetof(TensorObject, weakrefs), READONLY, NULL },
    { NULL, 0, 0, 0, NULL },
};

static PyType_Slot tensor_slots[] = {
    { Py_tp_dealloc, tensor_dealloc },
    { Py_tp_traverse, tensor_traverse },
    { Py_tp_clear, tensor_clear },
    { Py_tp_new, tensor_new },
    { Py_tp_getset, tensor_getset },
    { Py_tp_methods, tensor_methods },
    { Py_tp_members, tensor_members },
    { Py_tp_doc, "C base of dutycycle.Tensor" },
    { 0, NULL },
};

static PyType_Spec tensor_spec = {
    .name = "dutycycle._C.TensorBase",
    .basicsize = sizeof(TensorObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = tensor_slots,
};

int dc_py_init_tensor_type(PyObject *m)
{
    dc_py_state *S = dc_py_state_of(m);
    S->storage_ref = (PyTypeObject *)PyType_FromModuleAndSpec(m, &storage_ref_spec, NULL);
    if (!S->storage_ref) return -1;
    S->tensor_base = (PyTypeObject *)PyType_FromModuleAndSpec(m, &tensor_spec, NULL);
    if (!S->tensor_base) return -1;
    return PyModule_AddObjectRef(m, "TensorBase", (PyObject *)S->tensor_base);
}
