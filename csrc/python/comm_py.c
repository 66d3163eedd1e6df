/* comm_py.c: _C.Comm and _C.Work, the Python face of the collectives (csrc/comm/comm.h), and the
 * exceptions DistributedError, CollectiveTimeoutError and DesyncError.
 *
 * A buffer is a dutycycle Tensor (contiguous), an object with the buffer protocol (NumPy arrays,
 * bytearray, memoryview) or an object with __dlpack__ (PyTorch tensors); its data pointer, size and
 * dtype are read with the GIL held, and the object (for tensors also their storage, which
 * `t.data = x` could swap; for DLPack the managed tensor) stays referenced until the operation
 * finished: by the Work for async_op=True, by the call itself otherwise. A work that can't finish
 * (interrupted wait, broken communicator with the transport stuck) hands its references to the
 * Comm, which drops them once the transport let go of the memory, or never.
 *
 * Waiting releases the GIL, in slices of 0.1 s so Ctrl-C is seen. The C threads never touch a
 * Python object. Contract of every method: a new reference, or NULL with an exception set. */
#include "py.h" /* first: Python.h sets the feature macros */

#include "../comm/comm.h"

/* --- DLPack (the ABI subset we read; the same layout tensor_type.c exports) ------------------ */

typedef struct {
    int32_t device_type, device_id;
} dlp_device;
typedef struct {
    uint8_t code, bits;
    uint16_t lanes;
} dlp_dtype;
typedef struct {
    void *data;
    dlp_device device;
    int32_t ndim;
    dlp_dtype dtype;
    int64_t *shape, *strides;
    uint64_t byte_offset;
} dlp_tensor;
typedef struct dlp_managed {
    dlp_tensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct dlp_managed *self);
} dlp_managed;
typedef struct dlp_managed_v {
    uint32_t major, minor;
    void *manager_ctx;
    void (*deleter)(struct dlp_managed_v *self);
    uint64_t flags;
    dlp_tensor dl_tensor;
} dlp_managed_v;
enum {
    DLP_CPU = 1,
    DLP_CUDA = 2,
    DLP_CUDA_HOST = 3,
    DLP_INT = 0,
    DLP_UINT = 1,
    DLP_FLOAT = 2,
    DLP_BF = 4,
    DLP_BOOL = 6
};

/* --- buffers --------------------------------------------------------------------------------- */

enum { HELD_NONE = 0, HELD_TENSOR, HELD_BUFFER, HELD_DLPACK, HELD_DLPACK_V };

typedef struct {
    PyObject *obj; /* owned: what the caller passed */
    int kind;
    Py_buffer view;      /* HELD_BUFFER */
    dc_storage *storage; /* HELD_TENSOR */
    void *dl;            /* HELD_DLPACK(_V): the managed tensor, whose deleter we call */
} held_buf;

typedef struct {
    void *ptr;
    size_t nbytes;
    dc_dtype dt;
    int cuda; /* device memory */
    held_buf h;
} buf_arg;

static void held_release(held_buf *h)
{
    switch (h->kind) {
    case HELD_BUFFER: PyBuffer_Release(&h->view); break;
    case HELD_TENSOR: dc_storage_decref(h->storage); break;
    case HELD_DLPACK: {
        dlp_managed *m = h->dl;
        if (m && m->deleter) m->deleter(m);
        break;
    }
    case HELD_DLPACK_V: {
        dlp_managed_v *m = h->dl;
        if (m && m->deleter) m->deleter(m);
        break;
    }
    default: break;
    }
    h->kind = HELD_NONE;
    Py_CLEAR(h->obj);
}

static const char *dt_name(dc_dtype dt)
{
    return dt == DC_COMM_UINT8 ? "uint8" : dc_dtype_name(dt);
}
static size_t dt_size(dc_dtype dt)
{
    return dt == DC_COMM_UINT8 ? 1 : dc_dtype_size(dt);
}

static int dtype_of_format(const char *f, Py_ssize_t isz, dc_dtype *out)
{
    if (!f) f = "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    if (!strcmp(f, "f") && isz == 4)
        *out = DC_FLOAT32;
    else if (!strcmp(f, "d") && isz == 8)
        *out = DC_FLOAT64;
    else if (!strcmp(f, "e") && isz == 2)
        *out = DC_FLOAT16;
    else if ((!strcmp(f, "i") || !strcmp(f, "l")) && isz == 4)
        *out = DC_INT32;
    else if ((!strcmp(f, "l") || !strcmp(f, "q")) && isz == 8)
        *out = DC_INT64;
    else if (!strcmp(f, "?") && isz == 1)
        *out = DC_BOOL;
    else if ((!strcmp(f, "B") || !strcmp(f, "c")) && isz == 1)
        *out = DC_COMM_UINT8;
    else
        return 0;
    return 1;
}

static int dtype_of_dl(dlp_dtype t, dc_dtype *out)
{
    if (t.lanes != 1) return 0;
    if (t.code == DLP_FLOAT && t.bits == 32)
        *out = DC_FLOAT32;
    else if (t.code == DLP_FLOAT && t.bits == 64)
        *out = DC_FLOAT64;
    else if (t.code == DLP_FLOAT && t.bits == 16)
        *out = DC_FLOAT16;
    else if (t.code == DLP_BF && t.bits == 16)
        *out = DC_BFLOAT16;
    else if (t.code == DLP_INT && t.bits == 32)
        *out = DC_INT32;
    else if (t.code == DLP_INT && t.bits == 64)
        *out = DC_INT64;
    else if (t.code == DLP_UINT && t.bits == 8)
        *out = DC_COMM_UINT8;
    else if (t.code == DLP_BOOL && t.bits == 8)
        *out = DC_BOOL;
    else
        return 0;
    return 1;
}

static int dl_contiguous(const dlp_tensor *t)
{
    if (!t->strides) return 1;
    int64_t expect = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] == 1) continue;
        if (t->strides[d] != expect) return 0;
        expect *= t->shape[d];
    }
    return 1;
}

/* Read `o` as a buffer for `op`'s argument `what`. 1 ok (b->h holds the references), 0 error. */
static int get_buf(PyObject *o, const char *op, const char *what, int writable, buf_arg *b)
{
    memset(b, 0, sizeof *b);
    /* 1. a dutycycle tensor */
    PyObject *m = PyType_GetModuleByDef(Py_TYPE(o), &dc_py_module_def);
    if (!m) PyErr_Clear();
    if (m && PyObject_TypeCheck(o, dc_py_state_of(m)->tensor_base)) {
        dc_tensor *t = ((TensorObject *)o)->t;
        if (!t) {
            PyErr_Format(PyExc_TypeError, "%s: %s is an uninitialised tensor", op, what);
            return 0;
        }
        if (!dc_is_contiguous(t)) {
            PyErr_Format(PyExc_ValueError,
                         "%s: %s must be contiguous (shape %s is a strided view); pass "
                         "t.contiguous() and copy back",
                         op, what, DC_SHAPE(t));
            return 0;
        }
        b->ptr = dc_data(t);
        b->dt = t->dtype;
        b->nbytes = (size_t)dc_numel(t) * dc_dtype_size(t->dtype);
        b->cuda = t->device.type == DC_CUDA;
        b->h.kind = HELD_TENSOR;
        b->h.storage = dc_tensor_storage_ref(t);
        b->h.obj = Py_NewRef(o);
        return 1;
    }
    /* 2. the buffer protocol */
    if (PyObject_CheckBuffer(o)) {
        Py_buffer *v = &b->h.view;
        if (PyObject_GetBuffer(o, v, writable ? PyBUF_RECORDS : PyBUF_RECORDS_RO) < 0) {
            if (writable && PyErr_ExceptionMatches(PyExc_BufferError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_ValueError, "%s: %s must be writable (got a read-only %.100s)", op, what,
                             Py_TYPE(o)->tp_name);
            }
            return 0;
        }
        if (!PyBuffer_IsContiguous(v, 'C')) {
            PyBuffer_Release(v);
            PyErr_Format(PyExc_ValueError,
                         "%s: %s must be C-contiguous (pass numpy.ascontiguousarray(x) and copy "
                         "back)",
                         op, what);
            return 0;
        }
        if (!dtype_of_format(v->format, v->itemsize, &b->dt)) {
            PyErr_Format(PyExc_TypeError,
                         "%s: %s has an unsupported dtype (buffer format '%s', itemsize %zd); supported: float32, "
                         "float64, float16, int32, int64, uint8, bool",
                         op, what, v->format ? v->format : "B", v->itemsize);
            PyBuffer_Release(v);
            return 0;
        }
        b->ptr = v->buf;
        b->nbytes = (size_t)v->len;
        b->h.kind = HELD_BUFFER;
        b->h.obj = Py_NewRef(o);
        return 1;
    }
    /* 3. DLPack */
    PyObject *fn = PyObject_GetAttrString(o, "__dlpack__");
    if (!fn) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "%s: %s must be a dutycycle Tensor, an object with the buffer protocol (a NumPy array) or "
                     "with __dlpack__ (a PyTorch tensor), not %.100s",
                     op, what, Py_TYPE(o)->tp_name);
        return 0;
    }
    PyObject *cap = PyObject_CallNoArgs(fn);
    Py_DECREF(fn);
    if (!cap) return 0;
    dlp_tensor *dl;
    int versioned = PyCapsule_IsValid(cap, "dltensor_versioned");
    if (versioned) {
        dlp_managed_v *mv = PyCapsule_GetPointer(cap, "dltensor_versioned");
        if (writable && (mv->flags & 1)) {
            Py_DECREF(cap);
            PyErr_Format(PyExc_ValueError, "%s: %s is read-only (DLPack export flagged read-only)", op, what);
            return 0;
        }
        dl = &mv->dl_tensor;
        b->h.dl = mv;
        b->h.kind = HELD_DLPACK_V;
        PyCapsule_SetName(cap, "used_dltensor_versioned");
    } else if (PyCapsule_IsValid(cap, "dltensor")) {
        dlp_managed *mm = PyCapsule_GetPointer(cap, "dltensor");
        dl = &mm->dl_tensor;
        b->h.dl = mm;
        b->h.kind = HELD_DLPACK;
        PyCapsule_SetName(cap, "used_dltensor"); /* ours now: we call its deleter */
    } else {
        Py_DECREF(cap);
        PyErr_Format(PyExc_TypeError, "%s: %s.__dlpack__() did not return a DLPack capsule", op, what);
        return 0;
    }
    Py_DECREF(cap);
    b->h.obj = Py_NewRef(o);
    if (!dtype_of_dl(dl->dtype, &b->dt)) {
        PyErr_Format(PyExc_TypeError, "%s: %s has an unsupported DLPack dtype (code %d, %d bits, %d lanes)", op, what,
                     dl->dtype.code, dl->dtype.bits, dl->dtype.lanes);
        held_release(&b->h);
        return 0;
    }
    if (!dl_contiguous(dl)) {
        PyErr_Format(PyExc_ValueError, "%s: %s must be contiguous (call .contiguous() and copy back)", op, what);
        held_release(&b->h);
        return 0;
    }
    if (dl->device.device_type != DLP_CPU && dl->device.device_type != DLP_CUDA &&
        dl->device.device_type != DLP_CUDA_HOST) {
        PyErr_Format(PyExc_ValueError, "%s: %s is on DLPack device type %d (cpu and cuda are supported)", op, what,
                     dl->device.device_type);
        held_release(&b->h);
        return 0;
    }
    size_t n = 1;
    for (int d = 0; d < dl->ndim; d++) n *= (size_t)dl->shape[d];
    b->ptr = (char *)dl->data + dl->byte_offset;
    b->nbytes = n * dt_size(b->dt);
    b->cuda = dl->device.device_type == DLP_CUDA;
    return 1;
}

/* --- objects --------------------------------------------------------------------------------- */

typedef struct {
    dc_work *w;
    held_buf h[2];
} zombie;

typedef struct {
    PyObject_HEAD dc_comm *c; /* owned; NULL when init failed */
    int closed, nccl;
    zombie *zombies; /* works whose references outlived their Work (see the file comment) */
    Py_ssize_t nzombies, capzombies;
} CommObject;

typedef struct {
    PyObject_HEAD CommObject *comm; /* owned */
    dc_work *w;                     /* owned; NULL once handed to the comm */
    held_buf h[2];
    int released;
} WorkObject;

#define CSTATE(self) ((dc_py_state *)PyType_GetModuleState(Py_TYPE(self)))

/* The comms not yet closed, closed at interpreter exit (strong references). */
static CommObject **g_comms;
static Py_ssize_t g_ncomms;

static PyObject *raise_comm(dc_py_state *S, dc_status st, const char *msg)
{
    PyObject *e =
        S && (unsigned)st < DC_STATUS_COUNT && S->exc_by_status[st] ? S->exc_by_status[st] : PyExc_RuntimeError;
    PyErr_SetString(e, msg && *msg ? msg : dc_strerror(st));
    return NULL;
}

static void reap_zombies(CommObject *self)
{
    Py_ssize_t k = 0;
    while (k < self->nzombies) {
        zombie *z = &self->zombies[k];
        if (dc_work_busy(z->w)) {
            k++;
            continue;
        }
        held_release(&z->h[0]);
        held_release(&z->h[1]);
        dc_work_free(z->w);
        self->zombies[k] = self->zombies[--self->nzombies];
    }
}

/* Hand a busy work and its references to the comm. 0 ok, -1 no memory (then they leak). */
static int make_zombie(CommObject *self, dc_work *w, held_buf *h)
{
    if (self->nzombies == self->capzombies) {
        Py_ssize_t cap = self->capzombies ? 2 * self->capzombies : 8;
        zombie *z = PyMem_Realloc(self->zombies, (size_t)cap * sizeof *z);
        if (!z) return -1; /* leak: the memory is the transport's until it is done */
        self->zombies = z;
        self->capzombies = cap;
    }
    zombie *z = &self->zombies[self->nzombies++];
    z->w = w;
    z->h[0] = h[0];
    z->h[1] = h[1];
    memset(h, 0, 2 * sizeof *h);
    return 0;
}

static int comm_check_open(CommObject *self)
{
    if (!self->c) {
        PyErr_SetString(PyExc_ValueError, "Comm is not initialised");
        return 0;
    }
    if (self->closed) {
        raise_comm(CSTATE(self), DC_ERR_COMM, "Comm is closed");
        return 0;
    }
    return 1;
}

/* Wait for w with the GIL released, in slices (signals are checked between them). timeout < 0:
 * until it finished. 1 finished, 0 timed out, -1 a signal handler raised. *st: its status. */
static int wait_work(dc_work *w, double timeout, dc_status *st)
{
    double waited = 0;
    for (;;) {
        double slice = 0.1;
        if (timeout >= 0 && timeout - waited < slice) slice = timeout - waited > 0 ? timeout - waited : 0;
        int done = 0;
        Py_BEGIN_ALLOW_THREADS dc_work_wait(w, slice);
        *st = dc_work_test(w, &done);
        Py_END_ALLOW_THREADS if (done) return 1;
        waited += slice;
        if (timeout >= 0 && waited >= timeout) return 0;
        if (PyErr_CheckSignals() < 0) return -1;
    }
}

static PyObject *new_work_obj(CommObject *self, dc_work *w, buf_arg *a, int na)
{
    dc_py_state *S = CSTATE(self);
    WorkObject *o = PyObject_New(WorkObject, S->work_type);
    if (!o) return NULL;
    o->comm = (CommObject *)Py_NewRef(self);
    o->w = w;
    memset(o->h, 0, sizeof o->h);
    for (int k = 0; k < na; k++) {
        o->h[k] = a[k].h;
        memset(&a[k].h, 0, sizeof a[k].h);
    }
    o->released = 0;
    return (PyObject *)o;
}

/* After a submit: async -> a Work; sync -> wait, release, None. `a` are moved out either way. */
static PyObject *finish_op(CommObject *self, dc_status st, dc_work *w, buf_arg *a, int na, int async_op)
{
    if (st) {
        for (int k = 0; k < na; k++) held_release(&a[k].h);
        return raise_comm(CSTATE(self), st, dc_comm_errmsg(self->c));
    }
    if (async_op) {
        PyObject *o = new_work_obj(self, w, a, na);
        if (!o) {
            held_buf h[2] = { na > 0 ? a[0].h : (held_buf){ 0 }, na > 1 ? a[1].h : (held_buf){ 0 } };
            if (make_zombie(self, w, h) < 0) PyErr_NoMemory();
        }
        return o;
    }
    dc_status ws = DC_OK;
    int r = wait_work(w, -1, &ws);
    held_buf h[2] = { na > 0 ? a[0].h : (held_buf){ 0 }, na > 1 ? a[1].h : (held_buf){ 0 } };
    int busy = r < 0 || dc_work_busy(w); /* interrupted, or failed with the transport still on the memory */
    if (busy) {
        if (make_zombie(self, w, h) < 0) PyErr_Clear(); /* then the references leak, on purpose */
    } else {
        held_release(&h[0]);
        held_release(&h[1]);
    }
    if (r < 0) return NULL;
    PyObject *res = ws ? raise_comm(CSTATE(self), ws, dc_work_errmsg(w)) : Py_NewRef(Py_None);
    if (!busy) dc_work_free(w);
    return res;
}

/* --- Comm ------------------------------------------------------------------------------------ */

static int comm_init(CommObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "backend", "timeout", NULL };
    const char *backend = "mpi";
    PyObject *timeout_o = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|sO:Comm", kwlist, &backend, &timeout_o)) return -1;
    if (self->c) {
        PyErr_SetString(PyExc_RuntimeError, "Comm is already initialised");
        return -1;
    }
    double timeout = -1;
    if (timeout_o != Py_None) {
        timeout = PyFloat_AsDouble(timeout_o);
        if (timeout == -1 && PyErr_Occurred()) return -1;
        if (!(timeout > 0)) {
            PyErr_Format(PyExc_ValueError, "Comm: timeout must be > 0 seconds or None, got %R", timeout_o);
            return -1;
        }
    }
    dc_comm *c = NULL;
    dc_status st;
    Py_BEGIN_ALLOW_THREADS st = dc_comm_init(&c, backend, timeout);
    Py_END_ALLOW_THREADS if (st)
    {
        if (st == DC_ERR_VALUE) {
            PyErr_SetString(PyExc_ValueError, dc_last_error());
            return -1;
        }
        raise_comm(CSTATE(self), st == DC_ERR_NOMEM ? st : DC_ERR_COMM, dc_last_error());
        return -1;
    }
    CommObject **v = PyMem_Realloc(g_comms, (size_t)(g_ncomms + 1) * sizeof *v);
    if (!v) {
        Py_BEGIN_ALLOW_THREADS dc_comm_free(c);
        Py_END_ALLOW_THREADS PyErr_NoMemory();
        return -1;
    }
    g_comms = v;
    g_comms[g_ncomms++] = (CommObject *)Py_NewRef(self);
    self->c = c;
    self->nccl = !strcmp(dc_comm_backend(c), "nccl");
    return 0;
}

static PyObject *comm_close_impl(CommObject *self)
{
    if (!self->c || self->closed) Py_RETURN_NONE;
    self->closed = 1;
    dc_status st;
    Py_BEGIN_ALLOW_THREADS st = dc_comm_close(self->c);
    Py_END_ALLOW_THREADS reap_zombies(self);
    (void)st; /* a broken comm closes too; its error was raised where it happened */
    for (Py_ssize_t k = 0; k < g_ncomms; k++)
        if (g_comms[k] == self) {
            g_comms[k] = g_comms[--g_ncomms];
            Py_DECREF(self); /* the registry's reference; the caller holds another */
            break;
        }
    Py_RETURN_NONE;
}

static PyObject *comm_close(CommObject *self, PyObject *noargs)
{
    (void)noargs;
    return comm_close_impl(self);
}

/* Parse an op argument: "sum" / "avg" / "max" / "min", or an enum whose .value is one. */
static int conv_red(PyObject *o, const char *opname, dc_reduce_op *out)
{
    PyObject *s = NULL;
    if (PyUnicode_Check(o)) {
        s = Py_NewRef(o);
    } else {
        PyObject *v = PyObject_GetAttrString(o, "value");
        if (v && PyUnicode_Check(v))
            s = v;
        else {
            Py_XDECREF(v);
            PyErr_Clear();
        }
    }
    const char *name = s ? PyUnicode_AsUTF8(s) : NULL;
    int red = name ? dc_reduce_op_by_name(name) : -1;
    if (red < 0 && name) {
        char low[16];
        size_t k = 0;
        for (; name[k] && k < sizeof low - 1; k++)
            low[k] = (char)(name[k] >= 'A' && name[k] <= 'Z' ? name[k] + 32 : name[k]);
        low[k] = '\0';
        red = dc_reduce_op_by_name(low);
    }
    Py_XDECREF(s);
    if (red < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s: op must be 'sum', 'avg', 'max' or 'min', got %R", opname, o);
        return 0;
    }
    *out = (dc_reduce_op)red;
    return 1;
}

static int check_device(CommObject *self, buf_arg *b, const char *op, const char *what)
{
    if (b->cuda == self->nccl) return 1;
    if (self->nccl)
        PyErr_Format(PyExc_ValueError, "%s: %s is in host memory, but the 'nccl' backend takes CUDA buffers", op, what);
    else
        PyErr_Format(PyExc_ValueError,
                     "%s: %s is in CUDA memory, but the 'mpi' backend takes host buffers (use backend='nccl')", op,
                     what);
    return 0;
}

static int check_elems(buf_arg *b, const char *op, const char *what)
{
    if (b->nbytes % dt_size(b->dt)) {
        PyErr_Format(PyExc_ValueError, "%s: %s has %zu bytes, not a whole number of %s", op, what, b->nbytes,
                     dt_name(b->dt));
        return 0;
    }
    return 1;
}

static PyObject *comm_all_reduce(CommObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "buf", "op", "async_op", NULL };
    PyObject *bo, *opo = NULL;
    int async_op = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|Op:all_reduce", kwlist, &bo, &opo, &async_op)) return NULL;
    if (!comm_check_open(self)) return NULL;
    reap_zombies(self);
    dc_reduce_op red = DC_RED_SUM;
    if (opo && opo != Py_None && !conv_red(opo, "all_reduce", &red)) return NULL;
    buf_arg a;
    if (!get_buf(bo, "all_reduce", "buf", 1, &a)) return NULL;
    if (!check_device(self, &a, "all_reduce", "buf") || !check_elems(&a, "all_reduce", "buf")) {
        held_release(&a.h);
        return NULL;
    }
    dc_work *w = NULL;
    dc_status st = dc_comm_all_reduce(self->c, a.ptr, a.nbytes / dt_size(a.dt), a.dt, red, &w);
    return finish_op(self, st, w, &a, 1, async_op);
}

/* reduce_scatter and all_gather: two buffers of one dtype, one `size` times the other. */
static PyObject *two_buf_op(CommObject *self, PyObject *args, PyObject *kw, int gather)
{
    static char *kwlist_rs[] = { "send", "recv", "op", "async_op", NULL };
    static char *kwlist_ag[] = { "send", "recv", "async_op", NULL };
    const char *opname = gather ? "all_gather" : "reduce_scatter";
    PyObject *so, *ro, *opo = NULL;
    int async_op = 0;
    if (gather) {
        if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|p:all_gather", kwlist_ag, &so, &ro, &async_op)) return NULL;
    } else {
        if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|Op:reduce_scatter", kwlist_rs, &so, &ro, &opo, &async_op))
            return NULL;
    }
    if (!comm_check_open(self)) return NULL;
    reap_zombies(self);
    dc_reduce_op red = DC_RED_SUM;
    if (opo && opo != Py_None && !conv_red(opo, opname, &red)) return NULL;
    buf_arg a[2];
    if (!get_buf(so, opname, "send", 0, &a[0])) return NULL;
    if (!get_buf(ro, opname, "recv", 1, &a[1])) {
        held_release(&a[0].h);
        return NULL;
    }
    int size = dc_comm_size(self->c);
    size_t small = gather ? a[0].nbytes : a[1].nbytes, big = gather ? a[1].nbytes : a[0].nbytes;
    if (!check_device(self, &a[0], opname, "send") || !check_device(self, &a[1], opname, "recv") ||
        !check_elems(&a[0], opname, "send") || !check_elems(&a[1], opname, "recv"))
        goto fail;
    if (a[0].dt != a[1].dt) {
        PyErr_Format(PyExc_TypeError, "%s: send is %s but recv is %s; they must have one dtype", opname,
                     dt_name(a[0].dt), dt_name(a[1].dt));
        goto fail;
    }
    if (big != small * (size_t)size) {
        size_t es = dt_size(a[0].dt);
        PyErr_Format(PyExc_ValueError,
                     "%s: %s has %zu %s elements, but it must have world size (%d) x %s's %zu = %zu (pad the "
                     "buffers to a multiple of the world size)",
                     opname, gather ? "recv" : "send", big / es, dt_name(a[0].dt), size, gather ? "send" : "recv",
                     small / es, small / es * (size_t)size);
        goto fail;
    }
    dc_work *w = NULL;
    size_t n = small / dt_size(a[0].dt);
    dc_status st = gather ? dc_comm_all_gather(self->c, a[0].ptr, a[1].ptr, n, a[0].dt, &w)
                          : dc_comm_reduce_scatter(self->c, a[0].ptr, a[1].ptr, n, a[0].dt, red, &w);
    return finish_op(self, st, w, a, 2, async_op);
fail:
    held_release(&a[0].h);
    held_release(&a[1].h);
    return NULL;
}

static PyObject *comm_reduce_scatter(CommObject *self, PyObject *args, PyObject *kw)
{
    return two_buf_op(self, args, kw, 0);
}

static PyObject *comm_all_gather(CommObject *self, PyObject *args, PyObject *kw)
{
    return two_buf_op(self, args, kw, 1);
}

static PyObject *comm_broadcast(CommObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "buf", "root", "async_op", NULL };
    PyObject *bo;
    int root = 0, async_op = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|ip:broadcast", kwlist, &bo, &root, &async_op)) return NULL;
    if (!comm_check_open(self)) return NULL;
    reap_zombies(self);
    if (root < 0 || root >= dc_comm_size(self->c))
        return PyErr_Format(PyExc_ValueError, "broadcast: root %d is not a rank (world size %d)", root,
                            dc_comm_size(self->c));
    buf_arg a;
    if (!get_buf(bo, "broadcast", "buf", 1, &a)) return NULL;
    if (!check_device(self, &a, "broadcast", "buf") || !check_elems(&a, "broadcast", "buf")) {
        held_release(&a.h);
        return NULL;
    }
    dc_work *w = NULL;
    dc_status st = dc_comm_broadcast(self->c, a.ptr, a.nbytes / dt_size(a.dt), a.dt, root, &w);
    return finish_op(self, st, w, &a, 1, async_op);
}

static PyObject *comm_barrier(CommObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "async_op", NULL };
    int async_op = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|p:barrier", kwlist, &async_op)) return NULL;
    if (!comm_check_open(self)) return NULL;
    reap_zombies(self);
    dc_work *w = NULL;
    dc_status st = dc_comm_barrier(self->c, &w);
    return finish_op(self, st, w, NULL, 0, async_op);
}

static PyObject *p2p_op(CommObject *self, PyObject *args, PyObject *kw, int is_send)
{
    static char *kwlist_s[] = { "buf", "dst", "tag", "async_op", NULL };
    static char *kwlist_r[] = { "buf", "src", "tag", "async_op", NULL };
    const char *opname = is_send ? "send" : "recv";
    PyObject *bo;
    int peer, tag = 0, async_op = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, is_send ? "Oi|ip:send" : "Oi|ip:recv", is_send ? kwlist_s : kwlist_r,
                                     &bo, &peer, &tag, &async_op))
        return NULL;
    if (!comm_check_open(self)) return NULL;
    reap_zombies(self);
    int size = dc_comm_size(self->c);
    if (peer < 0 || peer >= size)
        return PyErr_Format(PyExc_ValueError, "%s: %s %d is not a rank (world size %d)", opname,
                            is_send ? "dst" : "src", peer, size);
    if (tag < 0 || tag > 32767)
        return PyErr_Format(PyExc_ValueError, "%s: tag %d out of range (0..32767)", opname, tag);
    buf_arg a;
    if (!get_buf(bo, opname, "buf", !is_send, &a)) return NULL;
    if (!check_device(self, &a, opname, "buf") || !check_elems(&a, opname, "buf")) {
        held_release(&a.h);
        return NULL;
    }
    dc_work *w = NULL;
    size_t n = a.nbytes / dt_size(a.dt);
    dc_status st = is_send ? dc_comm_send(self->c, a.ptr, n, a.dt, peer, tag, &w)
                           : dc_comm_recv(self->c, a.ptr, n, a.dt, peer, tag, &w);
    return finish_op(self, st, w, &a, 1, async_op);
}

static PyObject *comm_send(CommObject *self, PyObject *args, PyObject *kw)
{
    return p2p_op(self, args, kw, 1);
}

static PyObject *comm_recv(CommObject *self, PyObject *args, PyObject *kw)
{
    return p2p_op(self, args, kw, 0);
}

static PyObject *comm_abort(CommObject *self, PyObject *args)
{
    const char *reason = "";
    if (!PyArg_ParseTuple(args, "|s:abort", &reason)) return NULL;
    /* flush Python's own streams first: the job ends without running any more Python */
    PyObject *r = PyObject_CallMethod(PySys_GetObject("stdout"), "flush", NULL);
    Py_XDECREF(r);
    PyErr_Clear();
    r = PyObject_CallMethod(PySys_GetObject("stderr"), "flush", NULL);
    Py_XDECREF(r);
    PyErr_Clear();
    Py_BEGIN_ALLOW_THREADS dc_comm_abort(self->c, reason);
    Py_END_ALLOW_THREADS Py_RETURN_NONE; /* not reached */
}

static PyObject *comm_events(CommObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "clear", NULL };
    int clear = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|p:events", kwlist, &clear)) return NULL;
    if (!self->c) return PyList_New(0);
    size_t cap = dc_comm_event_count(self->c) + 64; /* a few more may finish meanwhile */
    if (cap > DC_COMM_EVENTS_MAX) cap = DC_COMM_EVENTS_MAX;
    dc_comm_event *ev = PyMem_RawMalloc(cap * sizeof *ev);
    if (!ev) return PyErr_NoMemory();
    size_t n = dc_comm_events(self->c, ev, cap, clear);
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t k = 0; list && k < n; k++) {
        PyObject *d =
            Py_BuildValue("{s:L,s:s,s:i,s:n,s:L,s:L,s:L,s:s}", "seq", (long long)ev[k].seq, "op",
                          dc_coll_op_name(ev[k].op), "peer", ev[k].peer, "nbytes", (Py_ssize_t)ev[k].nbytes,
                          "enqueued_ns", (long long)ev[k].enqueued_ns, "started_ns", (long long)ev[k].started_ns,
                          "finished_ns", (long long)ev[k].finished_ns, "status", dc_strerror(ev[k].status));
        if (!d) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)k, d);
    }
    PyMem_RawFree(ev);
    return list;
}

static PyObject *comm_stats(CommObject *self, PyObject *noargs)
{
    (void)noargs;
    if (!self->c) return PyDict_New();
    dc_comm_stats s;
    dc_comm_get_stats(self->c, &s);
    PyObject *by = PyDict_New();
    for (int k = 0; by && k < DC_COLL_COUNT; k++) {
        PyObject *v = PyLong_FromLongLong(s.ops_by[k]);
        if (!v || PyDict_SetItemString(by, dc_coll_op_name((dc_coll_op)k), v) < 0) Py_CLEAR(by);
        Py_XDECREF(v);
    }
    if (!by) return NULL;
    return Py_BuildValue("{s:L,s:N,s:L,s:d,s:d,s:d,s:L,s:L,s:L,s:O}", "ops", (long long)s.ops, "ops_by", by, "bytes",
                         (long long)s.bytes, "wait_s", s.wait_s, "run_s", s.run_s, "desync_check_s", s.desync_check_s,
                         "desync_checks", (long long)s.desync_checks, "pending", (long long)s.pending, "max_pending",
                         (long long)s.max_pending, "desync_check", s.desync_check_enabled ? Py_True : Py_False);
}

static PyObject *comm_hostname_of(CommObject *self, PyObject *arg)
{
    if (!comm_check_open(self)) return NULL;
    int r = (int)PyLong_AsLong(arg);
    if (r == -1 && PyErr_Occurred()) return NULL;
    if (r < 0 || r >= dc_comm_size(self->c))
        return PyErr_Format(PyExc_ValueError, "hostname_of: %d is not a rank (world size %d)", r,
                            dc_comm_size(self->c));
    return PyUnicode_FromString(dc_comm_hostname(self->c, r));
}

#define GETI(name, fn)                                          \
    static PyObject *comm_get_##name(CommObject *self, void *x) \
    {                                                           \
        (void)x;                                                \
        if (!self->c) return PyLong_FromLong(-1);               \
        return PyLong_FromLong(fn(self->c));                    \
    }
GETI(rank, dc_comm_rank)
GETI(size, dc_comm_size)
GETI(local_rank, dc_comm_local_rank)
GETI(local_size, dc_comm_local_size)

static PyObject *comm_get_hostname(CommObject *self, void *x)
{
    (void)x;
    return self->c ? PyUnicode_FromString(dc_comm_hostname(self->c, -1)) : Py_NewRef(Py_None);
}
static PyObject *comm_get_backend(CommObject *self, void *x)
{
    (void)x;
    return self->c ? PyUnicode_FromString(dc_comm_backend(self->c)) : Py_NewRef(Py_None);
}
static PyObject *comm_get_closed(CommObject *self, void *x)
{
    (void)x;
    return PyBool_FromLong(!self->c || self->closed);
}
static PyObject *comm_get_timeout(CommObject *self, void *x)
{
    (void)x;
    return self->c ? PyFloat_FromDouble(dc_comm_timeout(self->c)) : Py_NewRef(Py_None);
}
static int comm_set_timeout(CommObject *self, PyObject *v, void *x)
{
    (void)x;
    if (!self->c) {
        PyErr_SetString(PyExc_ValueError, "Comm is not initialised");
        return -1;
    }
    double t = -1;
    if (v && v != Py_None) {
        t = PyFloat_AsDouble(v);
        if (t == -1 && PyErr_Occurred()) return -1;
        if (!(t > 0)) {
            PyErr_Format(PyExc_ValueError, "Comm.timeout must be > 0 seconds or None, got %R", v);
            return -1;
        }
    }
    dc_comm_set_timeout(self->c, t);
    return 0;
}

static void comm_dealloc(CommObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    /* only reached after close() (the registry holds a reference until then) or a failed init */
    if (self->c) {
        dc_comm *c = self->c;
        self->c = NULL;
        reap_zombies(self);
        if (self->nzombies == 0) {
            Py_BEGIN_ALLOW_THREADS dc_comm_free(c);
            Py_END_ALLOW_THREADS
        } /* else: works still in the transport keep the comm (and their buffers) alive for good */
    }
    PyMem_Free(self->nzombies ? NULL : self->zombies);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *comm_repr(CommObject *self)
{
    if (!self->c) return PyUnicode_FromString("<Comm uninitialised>");
    return PyUnicode_FromFormat("<Comm backend=%s rank=%d size=%d host=%s%s>", dc_comm_backend(self->c),
                                dc_comm_rank(self->c), dc_comm_size(self->c), dc_comm_hostname(self->c, -1),
                                self->closed ? " closed" : "");
}

static PyMethodDef comm_methods[] = {
    { "all_reduce", (PyCFunction)(void (*)(void))comm_all_reduce, METH_VARARGS | METH_KEYWORDS,
      "all_reduce(buf, op='sum', async_op=False) -> None or Work: in place over all ranks (sum avg max min)" },
    { "reduce_scatter", (PyCFunction)(void (*)(void))comm_reduce_scatter, METH_VARARGS | METH_KEYWORDS,
      "reduce_scatter(send, recv, op='sum', async_op=False): send.nbytes == size * recv.nbytes" },
    { "all_gather", (PyCFunction)(void (*)(void))comm_all_gather, METH_VARARGS | METH_KEYWORDS,
      "all_gather(send, recv, async_op=False): recv.nbytes == size * send.nbytes, rank r's at r * send.nbytes" },
    { "broadcast", (PyCFunction)(void (*)(void))comm_broadcast, METH_VARARGS | METH_KEYWORDS,
      "broadcast(buf, root=0, async_op=False)" },
    { "barrier", (PyCFunction)(void (*)(void))comm_barrier, METH_VARARGS | METH_KEYWORDS, "barrier(async_op=False)" },
    { "send", (PyCFunction)(void (*)(void))comm_send, METH_VARARGS | METH_KEYWORDS,
      "send(buf, dst, tag=0, async_op=False)" },
    { "recv", (PyCFunction)(void (*)(void))comm_recv, METH_VARARGS | METH_KEYWORDS,
      "recv(buf, src, tag=0, async_op=False)" },
    { "abort", (PyCFunction)comm_abort, METH_VARARGS,
      "abort(reason): print the reason to stderr and end every rank of the job (MPI_Abort)" },
    { "close", (PyCFunction)comm_close, METH_NOARGS,
      "close(): finish pending operations, meet the other ranks, stop the threads (idempotent; also at exit)" },
    { "events", (PyCFunction)(void (*)(void))comm_events, METH_VARARGS | METH_KEYWORDS,
      "events(clear=False) -> [{seq, op, peer, nbytes, enqueued_ns, started_ns, finished_ns, status}] "
      "(time.monotonic_ns clock)" },
    { "stats", (PyCFunction)comm_stats, METH_NOARGS, "stats() -> dict: ops, bytes, wait_s, run_s, ..." },
    { "hostname_of", (PyCFunction)comm_hostname_of, METH_O, "hostname_of(rank) -> str" },
    { NULL, NULL, 0, NULL },
};

static PyGetSetDef comm_getset[] = {
    { "rank", (getter)comm_get_rank, NULL, NULL, NULL },
    { "size", (getter)comm_get_size, NULL, NULL, NULL },
    { "local_rank", (getter)comm_get_local_rank, NULL, NULL, NULL },
    { "local_size", (getter)comm_get_local_size, NULL, NULL, NULL },
    { "hostname", (getter)comm_get_hostname, NULL, NULL, NULL },
    { "backend", (getter)comm_get_backend, NULL, NULL, NULL },
    { "closed", (getter)comm_get_closed, NULL, NULL, NULL },
    { "timeout", (getter)comm_get_timeout, (setter)comm_set_timeout, "watchdog timeout in seconds", NULL },
    { NULL, NULL, NULL, NULL, NULL },
};

static PyType_Slot comm_slots[] = {
    { Py_tp_init, comm_init },
    { Py_tp_new, PyType_GenericNew },
    { Py_tp_dealloc, comm_dealloc },
    { Py_tp_repr, comm_repr },
    { Py_tp_methods, comm_methods },
    { Py_tp_getset, comm_getset },
    { Py_tp_doc, "Comm(backend='mpi', timeout=None): a communicator over every rank of the job (collective)" },
    { 0, NULL },
};

static PyType_Spec comm_spec = {
    .name = "dutycycle._C.Comm",
    .basicsize = sizeof(CommObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = comm_slots,
};

/* --- Work ------------------------------------------------------------------------------------ */

static void work_release(WorkObject *self)
{
    if (self->released || !self->w) return;
    if (dc_work_busy(self->w)) return;
    held_release(&self->h[0]);
    held_release(&self->h[1]);
    self->released = 1;
}

static PyObject *work_raise_if_failed(WorkObject *self, dc_status st)
{
    if (!st) return Py_NewRef(Py_None);
    return raise_comm(CSTATE(self), st, dc_work_errmsg(self->w));
}

static PyObject *work_wait(WorkObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "timeout", NULL };
    PyObject *to = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:wait", kwlist, &to)) return NULL;
    double timeout = -1;
    if (to != Py_None) {
        timeout = PyFloat_AsDouble(to);
        if (timeout == -1 && PyErr_Occurred()) return NULL;
        if (timeout < 0) timeout = 0;
    }
    dc_status st = DC_OK;
    int r = wait_work(self->w, timeout, &st);
    if (r < 0) return NULL;
    if (r == 0) {
        char msg[256];
        snprintf(msg, sizeof msg, "Work.wait: %s #%lld not finished after %g s (it keeps running; rank %d)",
                 dc_coll_op_name(dc_work_op(self->w)), (long long)dc_work_seq(self->w), timeout,
                 dc_comm_rank(self->comm->c));
        return raise_comm(CSTATE(self), DC_ERR_TIMEOUT, msg);
    }
    work_release(self);
    return work_raise_if_failed(self, st);
}

static PyObject *work_test(WorkObject *self, PyObject *noargs)
{
    (void)noargs;
    int done = 0;
    dc_status st = dc_work_test(self->w, &done);
    if (!done) Py_RETURN_FALSE;
    work_release(self);
    if (st) return work_raise_if_failed(self, st);
    Py_RETURN_TRUE;
}

static PyObject *work_is_completed(WorkObject *self, PyObject *noargs)
{
    (void)noargs;
    int done = 0;
    dc_work_test(self->w, &done);
    if (done) work_release(self);
    return PyBool_FromLong(done);
}

static PyObject *work_get_seq(WorkObject *self, void *x)
{
    (void)x;
    return PyLong_FromLongLong(dc_work_seq(self->w));
}
static PyObject *work_get_op(WorkObject *self, void *x)
{
    (void)x;
    return PyUnicode_FromString(dc_coll_op_name(dc_work_op(self->w)));
}
static PyObject *work_get_nbytes(WorkObject *self, void *x)
{
    (void)x;
    return PyLong_FromSize_t(dc_work_nbytes(self->w));
}
static PyObject *work_get_times(WorkObject *self, void *x)
{
    int64_t t[3];
    dc_work_times(self->w, &t[0], &t[1], &t[2]);
    int k = (int)(intptr_t)x;
    return PyLong_FromLongLong(t[k]);
}

static void work_dealloc(WorkObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->w) {
        if (dc_work_busy(self->w)) {
            /* still running (or stuck): the comm keeps the buffers until the transport let go */
            if (self->comm->c && !self->comm->closed && make_zombie(self->comm, self->w, self->h) == 0) {
                self->w = NULL;
            } else {
                self->w = NULL; /* leak the buffers on purpose: freeing them under the transport corrupts */
                memset(self->h, 0, sizeof self->h);
            }
        } else {
            held_release(&self->h[0]);
            held_release(&self->h[1]);
            dc_work_free(self->w);
        }
    }
    Py_XDECREF(self->comm);
    PyObject_Free(self);
    Py_DECREF(tp);
}

static PyObject *work_repr(WorkObject *self)
{
    int done = 0;
    dc_work_test(self->w, &done);
    return PyUnicode_FromFormat("<Work %s #%lld %s>", dc_coll_op_name(dc_work_op(self->w)),
                                (long long)dc_work_seq(self->w), done ? "done" : "pending");
}

static PyMethodDef work_methods[] = {
    { "wait", (PyCFunction)(void (*)(void))work_wait, METH_VARARGS | METH_KEYWORDS,
      "wait(timeout=None): until finished (GIL released); raises the operation's error" },
    { "test", (PyCFunction)work_test, METH_NOARGS, "test() -> bool: finished? (raises its error if it failed)" },
    { "is_completed", (PyCFunction)work_is_completed, METH_NOARGS, "is_completed() -> bool (finished or failed)" },
    { NULL, NULL, 0, NULL },
};

static PyGetSetDef work_getset[] = {
    { "seq", (getter)work_get_seq, NULL, NULL, NULL },
    { "op", (getter)work_get_op, NULL, NULL, NULL },
    { "nbytes", (getter)work_get_nbytes, NULL, NULL, NULL },
    { "enqueued_ns", (getter)work_get_times, NULL, NULL, (void *)0 },
    { "started_ns", (getter)work_get_times, NULL, NULL, (void *)1 },
    { "finished_ns", (getter)work_get_times, NULL, NULL, (void *)2 },
    { NULL, NULL, NULL, NULL, NULL },
};

static PyType_Slot work_slots[] = {
    { Py_tp_dealloc, work_dealloc },
    { Py_tp_repr, work_repr },
    { Py_tp_methods, work_methods },
    { Py_tp_getset, work_getset },
    { Py_tp_doc, "Work: an asynchronous collective; wait() or test() it. Keeps its buffers alive until done." },
    { 0, NULL },
};

static PyType_Spec work_spec = {
    .name = "dutycycle._C.Work",
    .basicsize = sizeof(WorkObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = work_slots,
};

/* --- module ---------------------------------------------------------------------------------- */

/* _C._comm_close_all(): registered with atexit; closes every comm still open. */
static PyObject *f_comm_close_all(PyObject *m, PyObject *noargs)
{
    (void)m;
    (void)noargs;
    while (g_ncomms > 0) {
        CommObject *c = (CommObject *)Py_NewRef(g_comms[g_ncomms - 1]);
        PyObject *r = comm_close_impl(c);
        Py_XDECREF(r);
        if (!r) PyErr_Clear();
        if (g_ncomms > 0 && g_comms[g_ncomms - 1] == c) { /* not removed: drop it anyway */
            g_ncomms--;
            Py_DECREF(c);
        }
        Py_DECREF(c);
    }
    Py_RETURN_NONE;
}

/* _C.comm_backends() -> the backends this build has: ("mpi", "nccl"), ("mpi",) or (). */
static PyObject *f_comm_backends(PyObject *m, PyObject *noargs)
{
    (void)m;
    (void)noargs;
#if defined(DC_WITH_MPI) && defined(DC_WITH_CUDA)
    return Py_BuildValue("(ss)", "mpi", "nccl");
#elif defined(DC_WITH_MPI)
    return Py_BuildValue("(s)", "mpi");
#else
    return PyTuple_New(0);
#endif
}

static PyMethodDef comm_module_fns[] = {
    { "_comm_close_all", f_comm_close_all, METH_NOARGS, "close every open Comm (at interpreter exit)" },
    { "comm_backends", f_comm_backends, METH_NOARGS, "the collective backends this build has" },
    { NULL, NULL, 0, NULL },
};

int dc_py_init_comm(PyObject *m)
{
    dc_py_state *S = dc_py_state_of(m);
    struct {
        dc_status st;
        const char *name, *doc;
        PyObject *base;
    } table[] = {
        { DC_ERR_COMM, "DistributedError",
          "A collective failed: a peer died, the job aborted, or the transport failed.", S->base_error },
        { DC_ERR_TIMEOUT, "CollectiveTimeoutError",
          "A collective outlived the timeout; the message names the lagging ranks and what the others wait in.", NULL },
        { DC_ERR_DESYNC, "DesyncError", "The ranks issued different collectives; the message shows both sides.", NULL },
    };
    for (size_t k = 0; k < sizeof table / sizeof table[0]; k++) {
        char full[64];
        snprintf(full, sizeof full, "dutycycle.%s", table[k].name);
        PyObject *base = table[k].base ? table[k].base : S->exc_by_status[DC_ERR_COMM];
        PyObject *e = PyErr_NewExceptionWithDoc(full, table[k].doc, base, NULL);
        if (!e) return -1;
        S->exc_by_status[table[k].st] = e; /* the state's reference */
        if (PyModule_AddObjectRef(m, table[k].name, e) < 0) return -1;
    }
    PyObject *tp = PyType_FromModuleAndSpec(m, &comm_spec, NULL);
    if (!tp) return -1;
    S->comm_type = (PyTypeObject *)tp;
    if (PyModule_AddObjectRef(m, "Comm", tp) < 0) return -1;
    tp = PyType_FromModuleAndSpec(m, &work_spec, NULL);
    if (!tp) return -1;
    S->work_type = (PyTypeObject *)tp;
    if (PyModule_AddObjectRef(m, "Work", tp) < 0) return -1;
    if (PyModule_AddFunctions(m, comm_module_fns) < 0) return -1;
    /* close the comms at exit (collective: every rank does it at its exit) */
    PyObject *atexit = PyImport_ImportModule("atexit");
    if (!atexit) return -1;
    PyObject *fn = PyObject_GetAttrString(m, "_comm_close_all");
    PyObject *r = fn ? PyObject_CallMethod(atexit, "register", "O", fn) : NULL;
    Py_XDECREF(fn);
    Py_DECREF(atexit);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}
