/* module.c: the dutycycle._C module: one thin function per core op. Each parses its arguments,
 * releases the GIL around the pure-C op (no PyObject touched meanwhile), and wraps the result.
 * Argument checks that need Python types live here; everything about shapes, dtypes and devices
 * is checked by the core and comes back as a status. */
#include <limits.h>
#include <math.h>

#include "py.h"

#include "../cpu/cpu-backend.h"
#ifdef DC_WITH_CUDA
#include "../../cuda/cuda-backend.h"
#endif

/* --- argument converters (for PyArg "O&") ---------------------------------------------------- */

static int conv_tensor(PyObject *o, void *out)
{
    dc_tensor *t = dc_py_tensor(o, "argument");
    if (!t) return 0;
    *(dc_tensor **)out = t;
    return 1;
}

static int conv_opt_tensor(PyObject *o, void *out)
{
    if (o == Py_None) {
        *(dc_tensor **)out = NULL;
        return 1;
    }
    return conv_tensor(o, out);
}

typedef struct {
    int n;
    int64_t v[DC_MAX_DIMS];
} shape_arg;

static int conv_shape(PyObject *o, void *out)
{
    shape_arg *s = out;
    PyObject *seq = PySequence_Fast(o, "shape must be a tuple or list of ints");
    if (!seq) return 0;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > DC_MAX_DIMS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "tensors have at most %d dims, got %zd", DC_MAX_DIMS, n);
        return 0;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *x = PySequence_Fast_GET_ITEM(seq, k);
        if (!PyIndex_Check(x)) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_TypeError, "shape entries must be ints, got %.100s at position %zd", Py_TYPE(x)->tp_name,
                         k);
            return 0;
        }
        s->v[k] = PyLong_AsLongLong(x);
        if (s->v[k] == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return 0;
        }
    }
    s->n = (int)n;
    Py_DECREF(seq);
    return 1;
}

typedef struct {
    int n;
    dc_tensor **v;
} tensor_list;

static int conv_tensor_list(PyObject *o, void *out)
{
    tensor_list *l = out;
    if (!o) { /* cleanup call */
        PyMem_Free(l->v);
        return 0;
    }
    PyObject *seq = PySequence_Fast(o, "expected a list or tuple of tensors");
    if (!seq) return 0;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    l->v = PyMem_Calloc(n ? (size_t)n : 1, sizeof *l->v);
    l->n = (int)n;
    if (!l->v) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return 0;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *x = PySequence_Fast_GET_ITEM(seq, k);
        if (!dc_py_tensor(x, "element")) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "expected a sequence of tensors, but element %zd is %.100s", k,
                         Py_TYPE(x)->tp_name);
            Py_DECREF(seq);
            PyMem_Free(l->v);
            l->v = NULL;
            return 0;
        }
        l->v[k] = ((TensorObject *)x)->t;
    }
    Py_DECREF(seq); /* the caller's list keeps the tensors alive during the call */
    return Py_CLEANUP_SUPPORTED;
}

/* A dim argument (for PyArg "O&"): any Python int, so 2**32 is reported as out of range
 * instead of being truncated to a C int that happens to name dim 0. */
static int dim_of(PyObject *o, int *out)
{
    if (!PyIndex_Check(o)) {
        PyErr_Format(PyExc_TypeError, "dim must be an int, not %.100s", Py_TYPE(o)->tp_name);
        return 0;
    }
    int overflow;
    PyObject *i = PyNumber_Index(o);
    if (!i) return 0;
    long long v = PyLong_AsLongLongAndOverflow(i, &overflow);
    Py_DECREF(i);
    if (v == -1 && PyErr_Occurred()) return 0;
    if (overflow || v > INT_MAX / 2 || v < -(INT_MAX / 2)) {
        PyErr_Format(PyExc_IndexError, "dim %S is out of range (tensors have at most %d dims)", o, DC_MAX_DIMS);
        return 0;
    }
    *out = (int)v;
    return 1;
}

static int conv_dim(PyObject *o, void *out)
{
    return dim_of(o, out);
}

static int parse_dims(PyObject *o, int *n, int *dims, const char *op)
{
    *n = 0;
    if (o == Py_None) return 1;
    if (PyIndex_Check(o)) {
        if (!dim_of(o, &dims[0])) return 0;
        *n = 1;
        return 1;
    }
    shape_arg s;
    if (!conv_shape(o, &s)) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: dim must be an int or a tuple of ints", op);
        return 0;
    }
    if (s.n == 0) {
        /* an empty tuple means every dim, as in torch */
        return 1;
    }
    for (int k = 0; k < s.n; k++) {
        if (s.v[k] > INT_MAX / 2 || s.v[k] < -(INT_MAX / 2)) {
            PyErr_Format(PyExc_IndexError, "%s: dim %lld is out of range", op, (long long)s.v[k]);
            return 0;
        }
        dims[k] = (int)s.v[k];
    }
    *n = s.n;
    return 1;
}

static int check_dtype_dev(int dtype, int devtype)
{
    if (dtype < 0 || dtype >= DC_DTYPE_COUNT) {
        PyErr_Format(PyExc_TypeError, "unknown dtype id %d", dtype);
        return 0;
    }
    if (devtype < 0 || devtype >= DC_DEVICE_TYPE_COUNT) {
        PyErr_Format(PyExc_ValueError, "unknown device type %d", devtype);
        return 0;
    }
    return 1;
}

/* A fill value: Python ints for integer dtypes stay exact int64 (2**53 + 1 survives); an int that
 * does not fit int64 raises instead of wrapping; everything else goes through float. */
typedef struct {
    int is_int;
    long long i;
    double d;
} fill_value;

static int conv_fill_value(PyObject *o, dc_dtype dt, const char *op, fill_value *v)
{
    v->is_int = 0;
    if (PyLong_Check(o) && !dc_dtype_is_float(dt)) {
        int overflow = 0;
        v->i = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (overflow) {
            PyErr_Format(PyExc_OverflowError, "%s: value %R is out of range for %s", op, o, dc_dtype_name(dt));
            return 0;
        }
        if (v->i == -1 && PyErr_Occurred()) return 0;
        v->is_int = 1;
        return 1;
    }
    v->d = PyFloat_AsDouble(o);
    return !(v->d == -1 && PyErr_Occurred());
}

/* --- creation -------------------------------------------------------------------------------- */

static PyObject *f_empty(PyObject *m, PyObject *args)
{
    (void)m;
    shape_arg s;
    int dt, devt, devi;
    if (!PyArg_ParseTuple(args, "O&iii:empty", conv_shape, &s, &dt, &devt, &devi)) return NULL;
    if (!check_dtype_dev(dt, devt)) return NULL;
    dc_tensor *out;
    RUN_WRAP(dc_empty(&out, s.n, s.v, (dc_dtype)dt, (dc_device){ devt, devi }), out);
}

static PyObject *f_full(PyObject *m, PyObject *args)
{
    (void)m;
    shape_arg s;
    PyObject *vo;
    int dt, devt, devi;
    if (!PyArg_ParseTuple(args, "O&Oiii:full", conv_shape, &s, &vo, &dt, &devt, &devi)) return NULL;
    if (!check_dtype_dev(dt, devt)) return NULL;
    fill_value v;
    if (!conv_fill_value(vo, (dc_dtype)dt, "full", &v)) return NULL;
    dc_tensor *out;
    dc_device dev = { devt, devi };
    RUN_WRAP(v.is_int ? dc_full_int(&out, s.n, s.v, v.i, (dc_dtype)dt, dev)
                      : dc_full(&out, s.n, s.v, v.d, (dc_dtype)dt, dev),
             out);
}

static PyObject *f_arange(PyObject *m, PyObject *args)
{
    (void)m;
    double a, b, step;
    int dt, devt, devi;
    if (!PyArg_ParseTuple(args, "dddiii:arange", &a, &b, &step, &dt, &devt, &devi)) return NULL;
    if (!check_dtype_dev(dt, devt)) return NULL;
    dc_tensor *out;
    RUN_WRAP(dc_arange(&out, a, b, step, (dc_dtype)dt, (dc_device){ devt, devi }), out);
}

static PyObject *f_random(PyObject *m, PyObject *args)
{
    (void)m;
    const char *name;
    int dt, devt, devi;
    shape_arg s;
    long long lo, hi;
    if (!PyArg_ParseTuple(args, "sO&LLiii:random", &name, conv_shape, &s, &lo, &hi, &dt, &devt, &devi)) return NULL;
    if (!check_dtype_dev(dt, devt)) return NULL;
    dc_op kind = dc_op_by_name(name);
    if (kind != DC_OP_RAND && kind != DC_OP_RANDN && kind != DC_OP_RANDINT)
        return PyErr_Format(PyExc_ValueError, "random: unknown kind %.50s (rand, randn or randint)", name);
    dc_tensor *out;
    RUN_WRAP(dc_random(&out, kind, s.n, s.v, lo, hi, (dc_dtype)dt, (dc_device){ devt, devi }), out);
}

static PyObject *f_to(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    int dt, devt, devi;
    if (!PyArg_ParseTuple(args, "O&iii:to", conv_tensor, &x, &dt, &devt, &devi)) return NULL;
    if (!check_dtype_dev(dt, devt)) return NULL;
    RUN_WRAP(dc_to(&out, x, (dc_dtype)dt, (dc_device){ devt, devi }), out);
}

#define UNARY_T(name, fn)                                            \
    static PyObject *f_##name(PyObject *m, PyObject *arg)            \
    {                                                                \
        (void)m;                                                     \
        dc_tensor *x = dc_py_tensor(arg, #name "() argument"), *out; \
        if (!x) return NULL;                                         \
        RUN_WRAP(fn(&out, x), out);                                  \
    }
UNARY_T(contiguous, dc_contiguous)
UNARY_T(clone, dc_clone)
UNARY_T(detach, dc_detach)

static PyObject *f_from_dlpack_capsule(PyObject *m, PyObject *cap)
{
    (void)m;
    return dc_py_from_dlpack_capsule(dc_py_state_of(m), cap);
}

/* from_numpy: share the memory of any object with the buffer protocol */
static void release_buffer(void *ctx)
{
    PyGILState_STATE g = PyGILState_Ensure();
    PyBuffer_Release((Py_buffer *)ctx);
    PyMem_RawFree(ctx);
    PyGILState_Release(g);
}

static PyObject *f_from_buffer(PyObject *m, PyObject *obj)
{
    (void)m;
    Py_buffer *view = PyMem_RawCalloc(1, sizeof *view);
    if (!view) return PyErr_NoMemory();
    if (PyObject_GetBuffer(obj, view, PyBUF_RECORDS) < 0) {
        PyErr_Clear();
        if (PyObject_GetBuffer(obj, view, PyBUF_RECORDS_RO) < 0) {
            PyMem_RawFree(view);
            return NULL;
        }
    }
    const char *f = view->format ? view->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    dc_dtype dt;
    Py_ssize_t isz = view->itemsize;
    if (!strcmp(f, "f") && isz == 4)
        dt = DC_FLOAT32;
    else if (!strcmp(f, "d") && isz == 8)
        dt = DC_FLOAT64;
    else if (!strcmp(f, "e") && isz == 2)
        dt = DC_FLOAT16;
    else if ((!strcmp(f, "i") || !strcmp(f, "l")) && isz == 4)
        dt = DC_INT32;
    else if ((!strcmp(f, "l") || !strcmp(f, "q")) && isz == 8)
        dt = DC_INT64;
    else if (!strcmp(f, "?") && isz == 1)
        dt = DC_BOOL;
    else if (!strcmp(f, "B") && isz == 1)
        dt = DC_UINT8;
    else if (!strcmp(f, "b") && isz == 1)
        dt = DC_INT8;
    else if (!strcmp(f, "h") && isz == 2)
        dt = DC_INT16;
    else {
        PyErr_Format(PyExc_TypeError,
                     "from_numpy: unsupported array dtype (buffer format '%s', itemsize %zd); supported: float32, "
                     "float64, float16, int64, int32, int16, int8, uint8, bool",
                     view->format ? view->format : "B", isz);
        PyBuffer_Release(view);
        PyMem_RawFree(view);
        return NULL;
    }
    if (view->ndim > DC_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "from_numpy: %d dims is more than the supported %d", view->ndim, DC_MAX_DIMS);
        PyBuffer_Release(view);
        PyMem_RawFree(view);
        return NULL;
    }
    int64_t shape[DC_MAX_DIMS], strides[DC_MAX_DIMS];
    for (int d = 0; d < view->ndim; d++) {
        shape[d] = view->shape[d];
        Py_ssize_t bs = view->strides ? view->strides[d] : 0;
        if (bs < 0 || bs % isz) {
            PyErr_SetString(PyExc_ValueError,
                            "from_numpy: arrays with negative or unaligned strides are not supported; pass "
                            "numpy.ascontiguousarray(a)");
            PyBuffer_Release(view);
            PyMem_RawFree(view);
            return NULL;
        }
        strides[d] = bs / isz;
    }
    if (!view->strides) dc_contiguous_strides(view->ndim, shape, strides);
    dc_tensor *t;
    dc_status st = dc_from_blob(&t, view->buf, (size_t)view->len, view->ndim, shape, strides, dt,
                                (dc_device){ DC_CPU, 0 }, release_buffer, view);
    if (st) return dc_py_raise(dc_py_state_of(m), st); /* the deleter already released the buffer */
    return dc_py_wrap(dc_py_state_of(m), t);
}

/* --- in place -------------------------------------------------------------------------------- */

static PyObject *f_copy_(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *dst, *src;
    if (!PyArg_ParseTuple(args, "O&O&:copy_", conv_tensor, &dst, conv_tensor, &src)) return NULL;
    RUN(dc_copy_(dst, src));
    Py_RETURN_NONE;
}

static PyObject *f_fill_(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *t;
    PyObject *vo;
    if (!PyArg_ParseTuple(args, "O&O:fill_", conv_tensor, &t, &vo)) return NULL;
    fill_value v;
    if (!conv_fill_value(vo, t->dtype, "fill_", &v)) return NULL;
    RUN(v.is_int ? dc_fill_int_(t, v.i) : dc_fill_(t, v.d));
    Py_RETURN_NONE;
}

/* --- views ----------------------------------------------------------------------------------- */

static PyObject *f_view(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    shape_arg s;
    int reshape = 0;
    if (!PyArg_ParseTuple(args, "O&O&|p:view", conv_tensor, &x, conv_shape, &s, &reshape)) return NULL;
    RUN_WRAP(reshape ? dc_reshape(&out, x, s.n, s.v) : dc_view(&out, x, s.n, s.v), out);
}

static PyObject *f_expand(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    shape_arg s;
    if (!PyArg_ParseTuple(args, "O&O&:expand", conv_tensor, &x, conv_shape, &s)) return NULL;
    RUN_WRAP(dc_expand(&out, x, s.n, s.v), out);
}

static PyObject *f_permute(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    shape_arg s;
    if (!PyArg_ParseTuple(args, "O&O&:permute", conv_tensor, &x, conv_shape, &s)) return NULL;
    if (s.n != x->ndim) {
        PyErr_Format(PyExc_ValueError, "permute: got %d dims for a tensor with %d dims (shape %s)", s.n, x->ndim,
                     DC_SHAPE(x));
        return NULL;
    }
    int dims[DC_MAX_DIMS];
    for (int d = 0; d < s.n; d++) {
        if (s.v[d] > INT_MAX / 2 || s.v[d] < -(INT_MAX / 2)) {
            PyErr_Format(PyExc_IndexError, "permute: dim %lld is out of range", (long long)s.v[d]);
            return NULL;
        }
        dims[d] = (int)s.v[d];
    }
    RUN_WRAP(dc_permute(&out, x, dims), out);
}

static PyObject *f_transpose(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    int a, b;
    if (!PyArg_ParseTuple(args, "O&O&O&:transpose", conv_tensor, &x, conv_dim, &a, conv_dim, &b)) return NULL;
    RUN_WRAP(dc_transpose(&out, x, a, b), out);
}

static PyObject *f_slice(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    int dim;
    long long a, b, step;
    if (!PyArg_ParseTuple(args, "O&O&LLL:slice", conv_tensor, &x, conv_dim, &dim, &a, &b, &step)) return NULL;
    RUN_WRAP(dc_slice(&out, x, dim, a, b, step), out);
}

static PyObject *f_select(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    int dim;
    long long i;
    if (!PyArg_ParseTuple(args, "O&O&L:select", conv_tensor, &x, conv_dim, &dim, &i)) return NULL;
    RUN_WRAP(dc_select(&out, x, dim, i), out);
}

static PyObject *f_unsqueeze(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    int dim;
    if (!PyArg_ParseTuple(args, "O&O&:unsqueeze", conv_tensor, &x, conv_dim, &dim)) return NULL;
    RUN_WRAP(dc_unsqueeze(&out, x, dim), out);
}

static PyObject *f_squeeze(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    PyObject *d = Py_None;
    if (!PyArg_ParseTuple(args, "O&|O:squeeze", conv_tensor, &x, &d)) return NULL;
    int dim = DC_ALL_DIMS;
    if (d != Py_None) {
        if (!dim_of(d, &dim)) return NULL;
    }
    RUN_WRAP(dc_squeeze(&out, x, dim), out);
}

/* --- elementwise ------------------------------------------------------------------------------ */

static PyObject *f_clamp(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    PyObject *lo, *hi;
    if (!PyArg_ParseTuple(args, "O&OO:clamp", conv_tensor, &x, &lo, &hi)) return NULL;
    double l = 0, h = 0;
    if (lo != Py_None && (l = PyFloat_AsDouble(lo)) == -1 && PyErr_Occurred()) return NULL;
    if (hi != Py_None && (h = PyFloat_AsDouble(hi)) == -1 && PyErr_Occurred()) return NULL;
    RUN_WRAP(dc_clamp(&out, x, l, h, lo != Py_None, hi != Py_None), out);
}

static PyObject *f_pow_scalar(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    double p;
    int reverse = 0;
    if (!PyArg_ParseTuple(args, "O&d|p:pow_scalar", conv_tensor, &x, &p, &reverse)) return NULL;
    RUN_WRAP(reverse ? dc_rpow_scalar(&out, p, x) : dc_pow_scalar(&out, x, p), out);
}

static PyObject *f_where(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *c, *a, *b, *out;
    if (!PyArg_ParseTuple(args, "O&O&O&:where", conv_tensor, &c, conv_tensor, &a, conv_tensor, &b)) return NULL;
    RUN_WRAP(dc_where(&out, c, a, b), out);
}

static PyObject *f_dropout(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    double p;
    int training;
    if (!PyArg_ParseTuple(args, "O&dp:dropout", conv_tensor, &x, &p, &training)) return NULL;
    RUN_WRAP(dc_dropout(&out, x, p, training), out);
}

static PyObject *f_gelu(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    int approx = 0;
    if (!PyArg_ParseTuple(args, "O&|p:gelu", conv_tensor, &x, &approx)) return NULL;
    RUN_WRAP(dc_unary(&out, approx ? DC_OP_GELU_TANH : DC_OP_GELU_ERF, x), out);
}

/* --- reductions ----------------------------------------------------------------------------- */

static PyObject *f_sum(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    PyObject *dims_o = Py_None;
    int keepdim = 0, mean = 0, n, dims[DC_MAX_DIMS];
    if (!PyArg_ParseTuple(args, "O&|Opp:sum", conv_tensor, &x, &dims_o, &keepdim, &mean)) return NULL;
    if (!parse_dims(dims_o, &n, dims, mean ? "mean" : "sum")) return NULL;
    RUN_WRAP(mean ? dc_mean(&out, x, n, dims, keepdim) : dc_sum(&out, x, n, dims, keepdim), out);
}

static PyObject *f_amax(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    PyObject *dims_o = Py_None;
    int keepdim = 0, is_min = 0, n, dims[DC_MAX_DIMS];
    if (!PyArg_ParseTuple(args, "O&|Opp:amax", conv_tensor, &x, &dims_o, &keepdim, &is_min)) return NULL;
    if (!parse_dims(dims_o, &n, dims, is_min ? "min" : "max")) return NULL;
    RUN_WRAP(dc_amax(&out, x, n, dims, keepdim, is_min), out);
}

static PyObject *f_argmax(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    PyObject *d = Py_None;
    int keepdim = 0, is_min = 0;
    if (!PyArg_ParseTuple(args, "O&|Opp:argmax", conv_tensor, &x, &d, &keepdim, &is_min)) return NULL;
    int dim = DC_ALL_DIMS;
    if (d != Py_None) {
        if (!dim_of(d, &dim)) return NULL;
    }
    RUN_WRAP(dc_argmax(&out, x, dim, keepdim, is_min), out);
}

static PyObject *f_softmax(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    int dim, log = 0;
    if (!PyArg_ParseTuple(args, "O&O&|p:softmax", conv_tensor, &x, conv_dim, &dim, &log)) return NULL;
    RUN_WRAP(dc_softmax(&out, x, dim, log), out);
}

static PyObject *f_layer_norm(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *w, *b, *out;
    double eps = 1e-5;
    if (!PyArg_ParseTuple(args, "O&O&O&|d:layer_norm", conv_tensor, &x, conv_opt_tensor, &w, conv_opt_tensor, &b, &eps))
        return NULL;
    RUN_WRAP(dc_layer_norm(&out, x, w, b, eps), out);
}

/* --- type promotion ---------------------------------------------------------------------------- */

static PyObject *f_promote_types(PyObject *m, PyObject *args)
{
    (void)m;
    int a, b;
    if (!PyArg_ParseTuple(args, "ii:promote_types", &a, &b)) return NULL;
    if (a < 0 || a >= DC_DTYPE_COUNT || b < 0 || b >= DC_DTYPE_COUNT)
        return PyErr_Format(PyExc_ValueError, "bad dtype id");
    return PyLong_FromLong(dc_promote_types((dc_dtype)a, (dc_dtype)b));
}

static PyObject *f_can_cast(PyObject *m, PyObject *args)
{
    (void)m;
    int a, b;
    if (!PyArg_ParseTuple(args, "ii:can_cast", &a, &b)) return NULL;
    if (a < 0 || a >= DC_DTYPE_COUNT || b < 0 || b >= DC_DTYPE_COUNT)
        return PyErr_Format(PyExc_ValueError, "bad dtype id");
    return PyBool_FromLong(dc_can_cast((dc_dtype)a, (dc_dtype)b));
}

static PyObject *f_result_type(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *a, *b;
    if (!PyArg_ParseTuple(args, "O&O&:result_type", conv_tensor, &a, conv_tensor, &b)) return NULL;
    return PyLong_FromLong(dc_result_type(a, b));
}

/* --- the conv stack (NCHW; nn.functional does the argument normalisation) -------------------- */

#define PAIR(v) &(v)[0], &(v)[1]

static PyObject *f_conv2d(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *w, *b, *out;
    dc_conv_opts o;
    memset(&o, 0, sizeof o);
    if (!PyArg_ParseTuple(args, "O&O&O&(LL)(LL)(LL)(LL)L:conv2d", conv_tensor, &x, conv_tensor, &w, conv_opt_tensor, &b,
                          PAIR(o.stride), PAIR(o.pad), PAIR(o.pad_end), PAIR(o.dilation), &o.groups))
        return NULL;
    RUN_WRAP(dc_conv2d(&out, x, w, b, &o), out);
}

static PyObject *f_conv_transpose2d(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *w, *b, *out;
    dc_conv_opts o;
    memset(&o, 0, sizeof o);
    if (!PyArg_ParseTuple(args, "O&O&O&(LL)(LL)(LL)(LL)L:conv_transpose2d", conv_tensor, &x, conv_tensor, &w,
                          conv_opt_tensor, &b, PAIR(o.stride), PAIR(o.pad), PAIR(o.output_padding), PAIR(o.dilation),
                          &o.groups))
        return NULL;
    RUN_WRAP(dc_conv_transpose2d(&out, x, w, b, &o), out);
}

static PyObject *f_max_pool2d(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out, *idx = NULL;
    dc_pool_opts o;
    memset(&o, 0, sizeof o);
    int with_indices = 0;
    if (!PyArg_ParseTuple(args, "O&(LL)(LL)(LL)(LL)pp:max_pool2d", conv_tensor, &x, PAIR(o.kernel), PAIR(o.stride),
                          PAIR(o.pad), PAIR(o.dilation), &o.ceil_mode, &with_indices))
        return NULL;
    RUN(dc_max_pool2d(&out, with_indices ? &idx : NULL, x, &o));
    PyObject *y = dc_py_wrap(dc_py_state_of(m), out);
    if (!with_indices || !y) {
        if (idx) dc_tensor_decref(idx);
        return y;
    }
    PyObject *i = dc_py_wrap(dc_py_state_of(m), idx);
    if (!i) {
        Py_DECREF(y);
        return NULL;
    }
    return Py_BuildValue("(NN)", y, i);
}

static PyObject *f_avg_pool2d(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    dc_pool_opts o;
    memset(&o, 0, sizeof o);
    if (!PyArg_ParseTuple(args, "O&(LL)(LL)(LL)ppL:avg_pool2d", conv_tensor, &x, PAIR(o.kernel), PAIR(o.stride),
                          PAIR(o.pad), &o.ceil_mode, &o.count_include_pad, &o.divisor))
        return NULL;
    o.dilation[0] = o.dilation[1] = 1;
    RUN_WRAP(dc_avg_pool2d(&out, x, &o), out);
}

static PyObject *f_batch_norm(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *w, *b, *rm, *rv, *out;
    int training;
    double momentum, eps;
    if (!PyArg_ParseTuple(args, "O&O&O&O&O&pdd:batch_norm", conv_tensor, &x, conv_opt_tensor, &w, conv_opt_tensor, &b,
                          conv_opt_tensor, &rm, conv_opt_tensor, &rv, &training, &momentum, &eps))
        return NULL;
    RUN_WRAP(dc_batch_norm(&out, x, w, b, rm, rv, training, momentum, eps), out);
}

/* --- linear algebra, indexing ---------------------------------------------------------------- */

static PyObject *f_matmul(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *a, *b, *out;
    if (!PyArg_ParseTuple(args, "O&O&:matmul", conv_tensor, &a, conv_tensor, &b)) return NULL;
    RUN_WRAP(dc_matmul(&out, a, b), out);
}

static PyObject *f_cat(PyObject *m, PyObject *args)
{
    (void)m;
    tensor_list l = { 0 };
    int dim = 0;
    dc_tensor *out;
    if (!PyArg_ParseTuple(args, "O&|O&:cat", conv_tensor_list, &l, conv_dim, &dim)) return NULL;
    dc_status st;
    DC_BEGIN_OP st = dc_cat(&out, l.n, l.v, dim);
    DC_END_OP PyMem_Free(l.v);
    if (st) return dc_py_raise(dc_py_state_of(m), st);
    return dc_py_wrap(dc_py_state_of(m), out);
}

static PyObject *f_gather(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *idx, *out;
    int dim, select = 0;
    if (!PyArg_ParseTuple(args, "O&O&O&|p:gather", conv_tensor, &x, conv_dim, &dim, conv_tensor, &idx, &select))
        return NULL;
    RUN_WRAP(select ? dc_index_select(&out, x, dim, idx) : dc_gather(&out, x, dim, idx), out);
}

static PyObject *f_tril(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    long long diag = 0;
    int upper = 0;
    if (!PyArg_ParseTuple(args, "O&|Lp:tril", conv_tensor, &x, &diag, &upper)) return NULL;
    RUN_WRAP(dc_tril(&out, x, diag, upper), out);
}

/* --- scans, sort orders, nonzero -------------------------------------------------------------- */

static PyObject *f_attn_softmax(PyObject *m, PyObject *args)
{
    dc_tensor *x, *out;
    double scale;
    int causal = 0;
    if (!PyArg_ParseTuple(args, "O&d|p:attn_softmax", conv_tensor, &x, &scale, &causal)) return NULL;
    RUN_WRAP(dc_attn_softmax(&out, x, scale, causal), out);
}

static PyObject *f_flash_attention(PyObject *m, PyObject *args)
{
    dc_tensor *q, *k, *v, *out;
    double scale;
    int causal = 0;
    if (!PyArg_ParseTuple(args, "O&O&O&d|p:flash_attention", conv_tensor, &q, conv_tensor, &k, conv_tensor, &v, &scale,
                          &causal))
        return NULL;
    RUN_WRAP(dc_flash_attention(&out, q, k, v, scale, causal), out);
}

static PyObject *f_cross_entropy(PyObject *m, PyObject *args)
{
    dc_tensor *x, *t, *out;
    long long ignore = -100;
    double eps = 0;
    if (!PyArg_ParseTuple(args, "O&O&|Ld:cross_entropy", conv_tensor, &x, conv_tensor, &t, &ignore, &eps)) return NULL;
    RUN_WRAP(dc_cross_entropy(&out, x, t, (int64_t)ignore, eps), out);
}

static PyObject *f_cumsum(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    int dim;
    if (!PyArg_ParseTuple(args, "O&O&:cumsum", conv_tensor, &x, conv_dim, &dim)) return NULL;
    RUN_WRAP(dc_cumsum(&out, x, dim), out);
}

static PyObject *f_cumprod(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    int dim;
    if (!PyArg_ParseTuple(args, "O&O&:cumprod", conv_tensor, &x, conv_dim, &dim)) return NULL;
    RUN_WRAP(dc_cumprod(&out, x, dim), out);
}

static PyObject *f_argsort(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *x, *out;
    int dim, desc = 0;
    if (!PyArg_ParseTuple(args, "O&O&|p:argsort", conv_tensor, &x, conv_dim, &dim, &desc)) return NULL;
    RUN_WRAP(dc_argsort(&out, x, dim, desc), out);
}

static PyObject *f_nonzero(PyObject *m, PyObject *arg)
{
    (void)m;
    dc_tensor *x = dc_py_tensor(arg, "nonzero() argument"), *out;
    if (!x) return NULL;
    RUN_WRAP(dc_nonzero(&out, x), out);
}

/* --- optimizers ------------------------------------------------------------------------------ */

static int same_len(const tensor_list *a, const tensor_list *b, const char *op, const char *what)
{
    if (a->n == b->n) return 1;
    PyErr_Format(PyExc_ValueError, "%s: got %d params but %d %s", op, a->n, b->n, what);
    return 0;
}

static PyObject *f_sgd_step(PyObject *m, PyObject *args)
{
    (void)m;
    tensor_list p = { 0 }, g = { 0 }, b = { 0 };
    double lr, mom, damp, wd;
    int nesterov, maximize, first = 0;
    PyObject *r = NULL;
    if (!PyArg_ParseTuple(args, "O&O&O&ddddpp|p:sgd_step", conv_tensor_list, &p, conv_tensor_list, &g, conv_tensor_list,
                          &b, &lr, &mom, &damp, &wd, &nesterov, &maximize, &first))
        return NULL;
    if (same_len(&p, &g, "sgd_step", "grads") && (mom == 0 || same_len(&p, &b, "sgd_step", "momentum buffers"))) {
        dc_status st;
        DC_BEGIN_OP st =
            dc_sgd_step(p.n, p.v, g.v, mom != 0 ? b.v : NULL, lr, mom, damp, wd, nesterov, maximize, first);
        DC_END_OP r = st ? dc_py_raise(dc_py_state_of(m), st) : Py_NewRef(Py_None);
    }
    PyMem_Free(p.v);
    PyMem_Free(g.v);
    PyMem_Free(b.v);
    return r;
}

static PyObject *f_adamw_step(PyObject *m, PyObject *args)
{
    (void)m;
    tensor_list p = { 0 }, g = { 0 }, ea = { 0 }, eas = { 0 };
    long long step;
    double lr, b1, b2, eps, wd;
    int maximize = 0;
    PyObject *r = NULL;
    if (!PyArg_ParseTuple(args, "O&O&O&O&Lddddd|p:adamw_step", conv_tensor_list, &p, conv_tensor_list, &g,
                          conv_tensor_list, &ea, conv_tensor_list, &eas, &step, &lr, &b1, &b2, &eps, &wd, &maximize))
        return NULL;
    if (same_len(&p, &g, "adamw_step", "grads") && same_len(&p, &ea, "adamw_step", "exp_avgs") &&
        same_len(&p, &eas, "adamw_step", "exp_avg_sqs")) {
        dc_status st;
        DC_BEGIN_OP st = dc_adamw_step(p.n, p.v, g.v, ea.v, eas.v, step, lr, b1, b2, eps, wd, maximize);
        DC_END_OP r = st ? dc_py_raise(dc_py_state_of(m), st) : Py_NewRef(Py_None);
    }
    PyMem_Free(p.v);
    PyMem_Free(g.v);
    PyMem_Free(ea.v);
    PyMem_Free(eas.v);
    return r;
}

static PyObject *f_grad_norm(PyObject *m, PyObject *args)
{
    (void)m;
    tensor_list l = { 0 };
    double p, out = 0;
    if (!PyArg_ParseTuple(args, "O&d:grad_norm", conv_tensor_list, &l, &p)) return NULL;
    dc_status st;
    DC_BEGIN_OP st = dc_total_norm(l.n, l.v, p, &out);
    DC_END_OP PyMem_Free(l.v);
    if (st) return dc_py_raise(dc_py_state_of(m), st);
    return PyFloat_FromDouble(out);
}

/* clip_grad_norm_(grads, max_norm, p) -> the total norm as a float64 0-d tensor on the grads' device;
 * the grads are scaled on the device: no host read */
static PyObject *f_clip_grad_norm_(PyObject *m, PyObject *args)
{
    tensor_list l = { 0 };
    double max_norm, p;
    if (!PyArg_ParseTuple(args, "O&dd:clip_grad_norm_", conv_tensor_list, &l, &max_norm, &p)) return NULL;
    dc_status st;
    dc_tensor *out = NULL;
    DC_BEGIN_OP st = dc_clip_grad_norm_(l.n, l.v, max_norm, p, &out);
    DC_END_OP PyMem_Free(l.v);
    if (st) return dc_py_raise(dc_py_state_of(m), st);
    return dc_py_wrap(dc_py_state_of(m), out);
}

/* sync_counts() -> (synchronize, d2h copies, item calls) since the process started */
static PyObject *f_sync_counts(PyObject *m, PyObject *noargs)
{
    (void)m;
    (void)noargs;
    int64_t c[DC_SYNC_KINDS];
    dc_sync_counts(c);
    return Py_BuildValue("(LLL)", (long long)c[DC_SYNC_SYNCHRONIZE], (long long)c[DC_SYNC_D2H],
                         (long long)c[DC_SYNC_ITEM]);
}

static PyObject *f_scale_(PyObject *m, PyObject *args)
{
    (void)m;
    tensor_list l = { 0 };
    double f;
    if (!PyArg_ParseTuple(args, "O&d:scale_", conv_tensor_list, &l, &f)) return NULL;
    dc_status st;
    DC_BEGIN_OP st = dc_scale_(l.n, l.v, f);
    DC_END_OP PyMem_Free(l.v);
    if (st) return dc_py_raise(dc_py_state_of(m), st);
    Py_RETURN_NONE;
}

/* --- autograd, RNG, misc -------------------------------------------------------------------- */

static PyObject *f_backward(PyObject *m, PyObject *args)
{
    (void)m;
    dc_tensor *t, *g;
    int retain = 0;
    if (!PyArg_ParseTuple(args, "O&O&|p:backward", conv_tensor, &t, conv_opt_tensor, &g, &retain)) return NULL;
    RUN(dc_backward(t, g, retain)); /* the whole backward pass runs without the GIL */
    Py_RETURN_NONE;
}

static PyObject *f_set_grad_enabled(PyObject *m, PyObject *arg)
{
    (void)m;
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    int prev = dc_grad_enabled();
    dc_set_grad_enabled(on);
    return PyBool_FromLong(prev);
}

static PyObject *f_is_grad_enabled(PyObject *m, PyObject *noargs)
{
    (void)m;
    (void)noargs;
    return PyBool_FromLong(dc_grad_enabled());
}

static PyObject *f_manual_seed(PyObject *m, PyObject *arg)
{
    (void)m;
    unsigned long long s = PyLong_AsUnsignedLongLongMask(arg);
    if (PyErr_Occurred()) return NULL;
    dc_manual_seed(s);
    Py_RETURN_NONE;
}

static PyObject *f_rng_state(PyObject *m, PyObject *noargs)
{
    (void)m;
    (void)noargs;
    return Py_BuildValue("(KK)", (unsigned long long)dc_initial_seed(), (unsigned long long)dc_rng_get_offset());
}

static PyObject *f_set_rng_state(PyObject *m, PyObject *args)
{
    (void)m;
    unsigned long long seed, off;
    if (!PyArg_ParseTuple(args, "KK:set_rng_state", &seed, &off)) return NULL;
    dc_rng_set_state(seed, off);
    Py_RETURN_NONE;
}

static PyObject *f_set_tensor_class(PyObject *m, PyObject *cls)
{
    dc_py_state *S = dc_py_state_of(m);
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, S->tensor_base)) {
        PyErr_SetString(PyExc_TypeError, "_set_tensor_class: expected a subclass of TensorBase");
        return NULL;
    }
    Py_INCREF(cls);
    Py_XSETREF(S->tensor_cls, (PyTypeObject *)cls);
    Py_RETURN_NONE;
}

static PyObject *f_cuda_info(PyObject *m, PyObject *noargs)
{
    (void)m;
    (void)noargs;
    int built = dc_device_built(DC_CUDA), n = 0;
    if (built) {
        Py_BEGIN_ALLOW_THREADS n = dc_device_count(DC_CUDA);
        Py_END_ALLOW_THREADS
    }
    return Py_BuildValue("(Oi)", built ? Py_True : Py_False, n);
}

static PyObject *f_synchronize(PyObject *m, PyObject *args)
{
    (void)m;
    int devt, devi;
    if (!PyArg_ParseTuple(args, "ii:synchronize", &devt, &devi)) return NULL;
    if (!dc_device_built(devt)) {
        PyErr_SetString(PyExc_RuntimeError, "synchronize: that device type is not built in");
        return NULL;
    }
    RUN(dc_synchronize((dc_device){ devt, devi }));
    Py_RETURN_NONE;
}

static PyObject *f_cpu_cache_info(PyObject *m, PyObject *noargs)
{
    (void)m;
    (void)noargs;
    size_t cached, limit;
    dc_device_cache_info(DC_CPU, &cached, &limit);
    return Py_BuildValue("{s:n,s:n}", "cached_bytes", (Py_ssize_t)cached, "limit_bytes", (Py_ssize_t)limit);
}

static PyObject *f_cpu_empty_cache(PyObject *m, PyObject *noargs)
{
    (void)m;
    (void)noargs;
    Py_BEGIN_ALLOW_THREADS dc_device_empty_cache(DC_CPU);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

static PyObject *f_set_num_threads(PyObject *m, PyObject *arg)
{
    (void)m;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1 || n > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "set_num_threads expects a positive integer, got %ld", n);
        return NULL;
    }
    dc_cpu_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *f_get_num_threads(PyObject *m, PyObject *noargs)
{
    (void)m;
    (void)noargs;
    return PyLong_FromLong(dc_cpu_get_num_threads());
}

#define F(name, flags)                                            \
    {                                                             \
#name, (PyCFunction)(void (*)(void))f_##name, flags, NULL \
    }
static PyMethodDef module_methods[] = {
    F(empty, METH_VARARGS),
    F(full, METH_VARARGS),
    F(arange, METH_VARARGS),
    F(random, METH_VARARGS),
    F(to, METH_VARARGS),
    F(contiguous, METH_O),
    F(clone, METH_O),
    F(detach, METH_O),
    F(from_dlpack_capsule, METH_O),
    F(from_buffer, METH_O),
    F(copy_, METH_VARARGS),
    F(fill_, METH_VARARGS),
    F(view, METH_VARARGS),
    F(expand, METH_VARARGS),
    F(permute, METH_VARARGS),
    F(transpose, METH_VARARGS),
    F(slice, METH_VARARGS),
    F(select, METH_VARARGS),
    F(unsqueeze, METH_VARARGS),
    F(squeeze, METH_VARARGS),
    F(clamp, METH_VARARGS),
    F(pow_scalar, METH_VARARGS),
    F(where, METH_VARARGS),
    F(dropout, METH_VARARGS),
    F(gelu, METH_VARARGS),
    F(sum, METH_VARARGS),
    F(amax, METH_VARARGS),
    F(argmax, METH_VARARGS),
    F(softmax, METH_VARARGS),
    F(layer_norm, METH_VARARGS),
    F(conv2d, METH_VARARGS),
    F(promote_types, METH_VARARGS),
    F(can_cast, METH_VARARGS),
    F(result_type, METH_VARARGS),
    F(conv_transpose2d, METH_VARARGS),
    F(max_pool2d, METH_VARARGS),
    F(avg_pool2d, METH_VARARGS),
    F(batch_norm, METH_VARARGS),
    F(matmul, METH_VARARGS),
    F(cat, METH_VARARGS),
    F(gather, METH_VARARGS),
    F(tril, METH_VARARGS),
    F(cumsum, METH_VARARGS),
    F(cumprod, METH_VARARGS),
    F(attn_softmax, METH_VARARGS),
    F(flash_attention, METH_VARARGS),
    F(cross_entropy, METH_VARARGS),
    F(argsort, METH_VARARGS),
    F(nonzero, METH_O),
    F(sgd_step, METH_VARARGS),
    F(adamw_step, METH_VARARGS),
    F(grad_norm, METH_VARARGS),
    F(scale_, METH_VARARGS),
    F(clip_grad_norm_, METH_VARARGS),
    F(sync_counts, METH_NOARGS),
    F(backward, METH_VARARGS),
    F(set_grad_enabled, METH_O),
    F(is_grad_enabled, METH_NOARGS),
    F(manual_seed, METH_O),
    F(rng_state, METH_NOARGS),
    F(set_rng_state, METH_VARARGS),
    F(set_tensor_class, METH_O),
    F(cuda_info, METH_NOARGS),
    F(synchronize, METH_VARARGS),
    F(cpu_cache_info, METH_NOARGS),
    F(cpu_empty_cache, METH_NOARGS),
    F(set_num_threads, METH_O),
    F(get_num_threads, METH_NOARGS),
    { NULL, NULL, 0, NULL },
};

/* --- module state (see py.h) ------------------------------------------------------------------ */

static int module_traverse(PyObject *m, visitproc visit, void *arg)
{
    dc_py_state *S = dc_py_state_of(m);
    if (!S) return 0;
    Py_VISIT(S->tensor_base);
    Py_VISIT(S->tensor_cls);
    Py_VISIT(S->storage_ref);
    Py_VISIT(S->loader_type);
    Py_VISIT(S->comm_type);
    Py_VISIT(S->work_type);
    Py_VISIT(S->base_error);
    for (int k = 0; k < DC_STATUS_COUNT; k++) Py_VISIT(S->exc_by_status[k]);
    return 0;
}

static int module_clear(PyObject *m)
{
    dc_py_state *S = dc_py_state_of(m);
    if (!S) return 0;
    Py_CLEAR(S->tensor_base);
    Py_CLEAR(S->tensor_cls);
    Py_CLEAR(S->storage_ref);
    Py_CLEAR(S->loader_type);
    Py_CLEAR(S->comm_type);
    Py_CLEAR(S->work_type);
    Py_CLEAR(S->base_error);
    for (int k = 0; k < DC_STATUS_COUNT; k++) Py_CLEAR(S->exc_by_status[k]);
    return 0;
}

static void module_free(void *m)
{
    module_clear((PyObject *)m);
}

static int module_exec(PyObject *m)
{
    /* the library is assembled here: the core names no backend */
    dc_backend_register(DC_CPU, dc_cpu_backend_get());
#ifdef DC_WITH_CUDA
    dc_backend_register(DC_CUDA, dc_cuda_backend_get());
#endif
    if (dc_py_init_errors(m) < 0) return -1;
    if (dc_py_init_tensor_type(m) < 0) return -1;
    if (dc_py_init_ops(m) < 0) return -1;
    if (dc_py_init_loader(m) < 0) return -1;
    if (dc_py_init_ckpt(m) < 0) return -1;
    if (dc_py_init_s3(m) < 0) return -1;
    if (dc_py_init_shards(m) < 0) return -1;
    if (dc_py_init_decode(m) < 0) return -1;
    if (dc_py_init_comm(m) < 0) return -1;
    if (dc_py_init_alloc(m) < 0) return -1;
    if (dc_py_init_plan(m) < 0) return -1;
    if (dc_py_init_cuda(m) < 0) return -1;
    return 0;
}

static PyModuleDef_Slot module_slots[] = {
    { Py_mod_exec, module_exec },
    { 0, NULL },
};

PyModuleDef dc_py_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "dutycycle._C",
    .m_doc = "dutycycle's C core: tensors, autograd, kernels.",
    .m_size = sizeof(dc_py_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__C(void)
{
    return PyModuleDef_Init(&dc_py_module_def);
}
