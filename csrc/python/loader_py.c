/* loader_py.c: _C.Loader, the Python face of the C batch-assembly pool (csrc/loader/loader.h).
 *
 * dutycycle.data.DataLoader drives it: submit() hands over one batch's columns (source tensors
 * and row indices) and returns at once; next() waits, with the GIL released, for the oldest
 * batch and returns it as fresh contiguous tensors that own the loader's buffers (no copy).
 *
 * Lifetime: the worker threads read the source tensors' memory without the GIL, so this object
 * keeps a reference to every source of a batch until that batch came out of next() (or reset()
 * dropped it). Python objects are only touched here, with the GIL held; the C pool never sees one.
 * Contract of every method: a new reference, or NULL with an exception set. */
#include "../loader/loader.h"
#include "py.h"

typedef struct {
    PyObject_HEAD dc_loader *loader; /* owned; NULL once closed */
    PyObject *outstanding;           /* batch_id -> (sources, meta, storage refs), oldest first */
    int waiting;                     /* next() calls in progress with the GIL released */
    int nthreads, prefetch;
} LoaderObject;

/* The module state, through the type (Loader can't be subclassed, so it is the defining type). */
#define LSTATE(self) ((dc_py_state *)PyType_GetModuleState(Py_TYPE(self)))

static int loader_check_open(LoaderObject *self)
{
    if (self->loader) return 1;
    PyErr_SetString(PyExc_ValueError, "Loader is closed");
    return 0;
}

static int loader_init(LoaderObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "nthreads", "prefetch", NULL };
    int nthreads, prefetch;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ii:Loader", kwlist, &nthreads, &prefetch)) return -1;
    if (self->loader) {
        PyErr_SetString(PyExc_RuntimeError, "Loader is already initialised");
        return -1;
    }
    if (!self->outstanding && !(self->outstanding = PyDict_New())) return -1;
    dc_status st = dc_loader_init(&self->loader, nthreads, prefetch);
    if (st) {
        dc_py_raise(LSTATE(self), st);
        return -1;
    }
    self->nthreads = nthreads;
    self->prefetch = prefetch;
    return 0;
}

/* One column of a submit() call, parsed: borrowed tensors (the sources list keeps them alive). */
typedef struct {
    dc_loader_part *parts;
    dc_storage **storages; /* a reference per part (NULL where none was taken yet) */
    Py_ssize_t nparts;
    Py_buffer idx; /* idx.obj NULL when the rows are 0..n-1 */
} col_parse;

/* The storages an outstanding batch reads, referenced until the batch is out: the workers read
 * them without the GIL, and `t.data = x` on a source tensor must not free them meanwhile (the
 * tensors themselves stay referenced too, but a tensor can change storage). */
typedef struct {
    Py_ssize_t n;
    dc_storage *v[];
} storage_refs;

static void storage_refs_free(PyObject *cap)
{
    storage_refs *r = PyCapsule_GetPointer(cap, "dutycycle.storage_refs");
    if (!r) {
        PyErr_Clear();
        return;
    }
    for (Py_ssize_t k = 0; k < r->n; k++) dc_storage_decref(r->v[k]);
    PyMem_Free(r);
}

/* Parse (parts, indices, stack) into cols[k]; appends (dtype, row shape) to meta. 1 ok, 0 error. */
static int parse_column(PyObject *spec, int k, int64_t n, dc_loader_column *col, col_parse *cp, PyObject *meta)
{
    PyObject *parts_o, *idx_o;
    int stack;
    if (!PyTuple_Check(spec) || !PyArg_ParseTuple(spec, "OOp", &parts_o, &idx_o, &stack)) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "Loader.submit: column %d must be a tuple (parts, indices or None, stack)", k);
        return 0;
    }
    if (!PyList_Check(parts_o) || PyList_GET_SIZE(parts_o) < 1 || PyList_GET_SIZE(parts_o) > INT_MAX) {
        PyErr_Format(PyExc_TypeError, "Loader.submit: column %d: parts must be a non-empty list of tensors", k);
        return 0;
    }
    Py_ssize_t np_ = PyList_GET_SIZE(parts_o);
    cp->parts = PyMem_Calloc((size_t)np_, sizeof *cp->parts);
    cp->storages = PyMem_Calloc((size_t)np_, sizeof *cp->storages);
    cp->nparts = np_;
    if (!cp->parts || !cp->storages) {
        PyErr_NoMemory();
        return 0;
    }
    dc_tensor *first = NULL;
    int row_ndim = 0;
    const int64_t *row_shape = NULL;
    for (Py_ssize_t p = 0; p < np_; p++) {
        dc_tensor *t = dc_py_tensor(PyList_GET_ITEM(parts_o, p), "Loader.submit: a column part");
        if (!t) return 0;
        if (t->device.type != DC_CPU) {
            PyErr_Format(PyExc_ValueError, "Loader.submit: column %d part %zd is not on the CPU", k, p);
            return 0;
        }
        if (!dc_is_contiguous(t)) {
            PyErr_Format(PyExc_ValueError, "Loader.submit: column %d part %zd is not contiguous", k, p);
            return 0;
        }
        if (!stack && t->ndim < 1) {
            PyErr_Format(PyExc_ValueError, "Loader.submit: column %d part %zd is 0-d; rows need a first dim", k, p);
            return 0;
        }
        int rnd = stack ? t->ndim : t->ndim - 1;
        const int64_t *rs = stack ? t->shape : t->shape + 1;
        if (!first) {
            first = t;
            row_ndim = rnd;
            row_shape = rs;
        } else if (t->dtype != first->dtype || rnd != row_ndim ||
                   memcmp(rs, row_shape, sizeof(int64_t) * (size_t)rnd) != 0) {
            PyErr_Format(PyExc_ValueError,
                         "Loader.submit: column %d part %zd has %s rows of shape %s, but part 0 has %s rows of shape "
                         "%s",
                         k, p, dc_dtype_name(t->dtype), dc_shape_str(rnd, rs), dc_dtype_name(first->dtype),
                         dc_shape_str(row_ndim, row_shape));
            return 0;
        }
        cp->parts[p].base = dc_data(t);
        cp->storages[p] = dc_tensor_storage_ref(t);
        cp->parts[p].nrows = stack ? 1 : t->shape[0];
    }
    if (row_ndim + 1 > DC_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "Loader.submit: column %d: batched rows would have more than %d dims", k,
                     DC_MAX_DIMS);
        return 0;
    }
    int64_t row_elems = 1;
    for (int d = 0; d < row_ndim; d++) row_elems *= row_shape[d];
    col->row_bytes = (size_t)row_elems * dc_dtype_size(first->dtype);
    col->nparts = (int)np_;
    col->parts = cp->parts;
    col->indices = NULL;
    if (idx_o != Py_None) {
        if (PyObject_GetBuffer(idx_o, &cp->idx, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return 0;
        const char *f = cp->idx.format ? cp->idx.format : "B";
        if (*f == '<' || *f == '=' || *f == '@') f++;
        if (cp->idx.itemsize != 8 || (strcmp(f, "q") && strcmp(f, "l"))) {
            PyErr_Format(PyExc_TypeError, "Loader.submit: column %d: indices must be int64 (got format '%s')", k,
                         cp->idx.format ? cp->idx.format : "B");
            return 0;
        }
        if (cp->idx.len / 8 != n) {
            PyErr_Format(PyExc_ValueError, "Loader.submit: column %d has %zd indices for a batch of %lld", k,
                         cp->idx.len / 8, (long long)n);
            return 0;
        }
        col->indices = cp->idx.buf;
    }
    PyObject *shape = PyTuple_New(row_ndim);
    if (!shape) return 0;
    for (int d = 0; d < row_ndim; d++) {
        PyObject *v = PyLong_FromLongLong(row_shape[d]);
        if (!v) {
            Py_DECREF(shape);
            return 0;
        }
        PyTuple_SET_ITEM(shape, d, v);
    }
    PyObject *m = Py_BuildValue("(iN)", (int)first->dtype, shape);
    if (!m) return 0;
    int rc = PyList_Append(meta, m);
    Py_DECREF(m);
    return rc == 0;
}

/* submit(batch_id, n, columns): columns is a list of (parts, indices, stack); see DataLoader. */
static PyObject *loader_submit(LoaderObject *self, PyObject *args)
{
    long long batch_id, n;
    PyObject *cols_o, *r = NULL, *meta = NULL, *key = NULL, *entry = NULL, *refs_cap = NULL;
    dc_loader_column *cols = NULL;
    col_parse *cps = NULL;
    Py_ssize_t ncols = 0;
    if (!PyArg_ParseTuple(args, "LLO!:submit", &batch_id, &n, &PyList_Type, &cols_o)) return NULL;
    if (!loader_check_open(self)) return NULL;
    ncols = PyList_GET_SIZE(cols_o);
    if (ncols < 1 || ncols > INT_MAX || n < 0) {
        PyErr_Format(PyExc_ValueError, "Loader.submit: need at least one column and n >= 0 (got %zd columns, n=%lld)",
                     ncols, n);
        return NULL;
    }
    if (!(key = PyLong_FromLongLong(batch_id))) goto done;
    int have = PyDict_Contains(self->outstanding, key);
    if (have != 0) {
        if (have > 0) PyErr_Format(PyExc_ValueError, "Loader.submit: batch %lld is already outstanding", batch_id);
        goto done;
    }
    cols = PyMem_Calloc((size_t)ncols, sizeof *cols);
    cps = PyMem_Calloc((size_t)ncols, sizeof *cps);
    if (!(meta = PyList_New(0))) goto done;
    if (!cols || !cps) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < ncols; k++)
        if (!parse_column(PyList_GET_ITEM(cols_o, k), (int)k, n, &cols[k], &cps[k], meta)) goto done;
    /* the sources and their storages stay referenced until the batch is out */
    Py_ssize_t nrefs = 0;
    for (Py_ssize_t k = 0; k < ncols; k++) nrefs += cps[k].nparts;
    storage_refs *refs = PyMem_Malloc(sizeof *refs + (size_t)nrefs * sizeof(dc_storage *));
    if (!refs) {
        PyErr_NoMemory();
        goto done;
    }
    refs->n = 0;
    for (Py_ssize_t k = 0; k < ncols; k++)
        for (Py_ssize_t p = 0; p < cps[k].nparts; p++) {
            refs->v[refs->n++] = cps[k].storages[p];
            cps[k].storages[p] = NULL; /* moved */
        }
    if (!(refs_cap = PyCapsule_New(refs, "dutycycle.storage_refs", storage_refs_free))) {
        for (Py_ssize_t k = 0; k < refs->n; k++) dc_storage_decref(refs->v[k]);
        PyMem_Free(refs);
        goto done;
    }
    if (!(entry = PyTuple_Pack(3, cols_o, meta, refs_cap))) goto done;
    if (PyDict_SetItem(self->outstanding, key, entry) < 0) goto done;
    dc_status st = dc_loader_submit(self->loader, batch_id, (int)ncols, cols, n); /* copies, never blocks */
    if (st) {
        PyDict_DelItem(self->outstanding, key);
        dc_py_raise(LSTATE(self), st);
        goto done;
    }
    r = Py_NewRef(Py_None);
done:
    for (Py_ssize_t k = 0; cps && k < ncols; k++) {
        for (Py_ssize_t p = 0; cps[k].storages && p < cps[k].nparts; p++) dc_storage_decref(cps[k].storages[p]);
        PyMem_Free(cps[k].storages);
        PyMem_Free(cps[k].parts);
        if (cps[k].idx.obj) PyBuffer_Release(&cps[k].idx);
    }
    PyMem_Free(cps);
    PyMem_Free(cols);
    Py_XDECREF(meta);
    Py_XDECREF(key);
    Py_XDECREF(entry);
    Py_XDECREF(refs_cap);
    return r;
}

/* Tensors owning the batch's buffers, described by meta [(dtype, row_shape), ...]. */
static PyObject *wrap_batch(dc_py_state *S, dc_loader_batch *b, PyObject *meta)
{
    PyObject *list = PyList_New(b->ncols);
    if (!list) return NULL;
    for (int k = 0; k < b->ncols; k++) {
        PyObject *m = PyList_GET_ITEM(meta, k);
        int dtype = (int)PyLong_AsLong(PyTuple_GET_ITEM(m, 0));
        PyObject *rs = PyTuple_GET_ITEM(m, 1);
        int ndim = (int)PyTuple_GET_SIZE(rs) + 1;
        int64_t shape[DC_MAX_DIMS];
        shape[0] = b->n;
        for (int d = 1; d < ndim; d++) shape[d] = PyLong_AsLongLong(PyTuple_GET_ITEM(rs, d - 1));
        dc_tensor *t;
        void *buf = b->data[k];
        b->data[k] = NULL; /* the tensor owns it now (dc_from_blob frees it on failure too) */
        dc_status st = dc_from_blob(&t, buf, b->nbytes[k], ndim, shape, NULL, (dc_dtype)dtype, (dc_device){ DC_CPU, 0 },
                                    dc_loader_buffer_free, buf);
        if (st) {
            Py_DECREF(list);
            return dc_py_raise(S, st);
        }
        PyObject *o = dc_py_wrap(S, t);
        if (!o) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, k, o);
    }
    return list;
}

/* next(timeout=-1.0) -> (batch_id, [tensor per column]); TimeoutError when not ready in time. */
static PyObject *loader_next(LoaderObject *self, PyObject *args)
{
    double timeout = -1.0;
    if (!PyArg_ParseTuple(args, "|d:next", &timeout)) return NULL;
    if (!loader_check_open(self)) return NULL;
    if (PyDict_GET_SIZE(self->outstanding) == 0) {
        PyErr_SetString(PyExc_ValueError, "Loader.next: no batch is outstanding");
        return NULL;
    }
    dc_loader_batch b;
    dc_status st = DC_OK;
    int timed_out = 1;
    double waited = 0;
    /* wait in slices so Ctrl-C is seen between them */
    while (timed_out && (timeout < 0 || waited < timeout)) {
        double slice = timeout < 0 ? 0.1 : (timeout - waited < 0.1 ? timeout - waited : 0.1);
        self->waiting++;
        Py_BEGIN_ALLOW_THREADS st = dc_loader_next(self->loader, &b, slice, &timed_out);
        Py_END_ALLOW_THREADS self->waiting--;
        waited += slice;
        if (st) break;
        if (timed_out && PyErr_CheckSignals() < 0) return NULL;
    }
    /* the oldest outstanding entry is this batch: the pool delivers in submission order */
    PyObject *key = NULL, *entry = NULL;
    Py_ssize_t pos = 0;
    if (!timed_out || st) {
        if (PyDict_Next(self->outstanding, &pos, &key, &entry)) {
            Py_INCREF(key);
            Py_INCREF(entry);
            PyDict_DelItem(self->outstanding, key);
        }
    }
    PyObject *r = NULL;
    if (st) {
        dc_py_raise(LSTATE(self), st);
    } else if (timed_out) {
        PyErr_Format(PyExc_TimeoutError, "Loader.next: no batch ready after %.3g s", timeout);
    } else if (!entry) {
        dc_loader_batch_clear(&b);
        PyErr_SetString(PyExc_RuntimeError, "Loader.next: a batch came out that was never submitted");
    } else {
        long long id = (long long)b.batch_id;
        PyObject *tensors = wrap_batch(LSTATE(self), &b, PyTuple_GET_ITEM(entry, 1));
        dc_loader_batch_clear(&b); /* frees the arrays, and the buffers wrap_batch did not take */
        if (tensors) r = Py_BuildValue("(LN)", id, tensors);
    }
    Py_XDECREF(key);
    Py_XDECREF(entry);
    return r;
}

static PyObject *loader_pending(LoaderObject *self, PyObject *noargs)
{
    (void)noargs;
    return PyLong_FromSsize_t(PyDict_GET_SIZE(self->outstanding));
}

/* reset(): drop every outstanding batch (waits for the ones being assembled). */
static PyObject *loader_reset(LoaderObject *self, PyObject *noargs)
{
    (void)noargs;
    if (!loader_check_open(self)) return NULL;
    Py_BEGIN_ALLOW_THREADS dc_loader_reset(self->loader);
    Py_END_ALLOW_THREADS PyDict_Clear(self->outstanding); /* after: no worker reads the sources now */
    Py_RETURN_NONE;
}

/* close(): stop and join the worker threads. Idempotent. */
static PyObject *loader_close(LoaderObject *self, PyObject *noargs)
{
    (void)noargs;
    if (self->waiting) {
        PyErr_SetString(PyExc_RuntimeError, "Loader.close: another thread is waiting in next()");
        return NULL;
    }
    dc_loader *l = self->loader;
    self->loader = NULL;
    Py_BEGIN_ALLOW_THREADS dc_loader_free(l);
    Py_END_ALLOW_THREADS if (self->outstanding) PyDict_Clear(self->outstanding);
    Py_RETURN_NONE;
}

static PyObject *loader_get_closed(LoaderObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->loader == NULL);
}

static PyObject *loader_get_nthreads(LoaderObject *self, void *c)
{
    (void)c;
    return PyLong_FromLong(self->nthreads);
}

static PyObject *loader_get_prefetch(LoaderObject *self, void *c)
{
    (void)c;
    return PyLong_FromLong(self->prefetch);
}

static int loader_traverse(LoaderObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->outstanding);
    return 0;
}

static int loader_clear(LoaderObject *self)
{
    /* the workers must stop reading the sources before their references go */
    dc_loader_free(self->loader);
    self->loader = NULL;
    Py_CLEAR(self->outstanding);
    return 0;
}

static void loader_dealloc(LoaderObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    /* joins the workers with the GIL held: they never take it, and finish within one batch */
    loader_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef loader_methods[] = {
    { "submit", (PyCFunction)loader_submit, METH_VARARGS,
      "submit(batch_id, n, columns): queue a batch; columns = [(parts, indices or None, stack), ...]" },
    { "next", (PyCFunction)loader_next, METH_VARARGS,
      "next(timeout=-1) -> (batch_id, [tensors]): the oldest batch, waiting with the GIL released" },
    { "pending", (PyCFunction)loader_pending, METH_NOARGS, "number of submitted batches not yet returned" },
    { "reset", (PyCFunction)loader_reset, METH_NOARGS, "drop every outstanding batch" },
    { "close", (PyCFunction)loader_close, METH_NOARGS, "stop and join the worker threads" },
    { NULL, NULL, 0, NULL },
};

static PyGetSetDef loader_getset[] = {
    { "closed", (getter)loader_get_closed, NULL, NULL, NULL },
    { "nthreads", (getter)loader_get_nthreads, NULL, NULL, NULL },
    { "prefetch", (getter)loader_get_prefetch, NULL, NULL, NULL },
    { NULL, NULL, NULL, NULL, NULL },
};

static PyType_Slot loader_slots[] = {
    { Py_tp_init, loader_init },
    { Py_tp_new, PyType_GenericNew },
    { Py_tp_dealloc, loader_dealloc },
    { Py_tp_traverse, loader_traverse },
    { Py_tp_clear, loader_clear },
    { Py_tp_methods, loader_methods },
    { Py_tp_getset, loader_getset },
    { Py_tp_doc, "Loader(nthreads, prefetch): C threads that gather batch rows ahead of the consumer" },
    { 0, NULL },
};

static PyType_Spec loader_spec = {
    .name = "dutycycle._C.Loader",
    .basicsize = sizeof(LoaderObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = loader_slots,
};

int dc_py_init_loader(PyObject *m)
{
    PyObject *tp = PyType_FromModuleAndSpec(m, &loader_spec, NULL);
    if (!tp) return -1;
    dc_py_state_of(m)->loader_type = (PyTypeObject *)tp; /* the state's reference */
    return PyModule_AddObjectRef(m, "Loader", tp);
}
