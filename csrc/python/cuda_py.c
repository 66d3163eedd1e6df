/* cuda_py.c: the _C.cuda_* functions behind dutycycle.cuda: streams and events (as integer
 * handles; dutycycle.cuda.Stream/Event own them), the caching allocator's statistics, pinned host
 * memory and the overlapped host -> device copy. Only in a CUDA build: dutycycle.cuda checks
 * is_built() before calling any of them. Contract of every function: a new reference, or NULL with
 * an exception set. */
#include "py.h"

#ifdef DC_WITH_CUDA
#include "../../cuda/cuda-backend.h"

#define H(p)        PyLong_FromVoidPtr(p)
#define CHECK(call) RUN(call)

static int conv_handle(PyObject *o, void *out)
{
    void *p = PyLong_AsVoidPtr(o);
    if (!p && PyErr_Occurred()) return 0;
    *(void **)out = p;
    return 1;
}

static PyObject *f_stream_create(PyObject *m, PyObject *args)
{
    int dev, prio = 0;
    if (!PyArg_ParseTuple(args, "i|i:cuda_stream_create", &dev, &prio)) return NULL;
    void *s = NULL;
    CHECK(dc_cuda_stream_create(dev, prio, &s));
    return H(s);
}

static PyObject *f_stream_destroy(PyObject *m, PyObject *o)
{
    void *s;
    if (!conv_handle(o, &s)) return NULL;
    dc_cuda_stream_destroy(s);
    Py_RETURN_NONE;
}

static PyObject *f_stream_synchronize(PyObject *m, PyObject *o)
{
    void *s;
    if (!conv_handle(o, &s)) return NULL;
    CHECK(dc_cuda_stream_synchronize(s)); /* note: a sync point (counted) */
    Py_RETURN_NONE;
}

static PyObject *f_stream_query(PyObject *m, PyObject *o)
{
    void *s;
    int done = 0;
    if (!conv_handle(o, &s)) return NULL;
    CHECK(dc_cuda_stream_query(s, &done));
    return PyBool_FromLong(done);
}

static PyObject *f_stream_wait_event(PyObject *m, PyObject *args)
{
    void *s, *e;
    if (!PyArg_ParseTuple(args, "O&O&:cuda_stream_wait_event", conv_handle, &s, conv_handle, &e)) return NULL;
    CHECK(dc_cuda_stream_wait_event(s, e));
    Py_RETURN_NONE;
}

static PyObject *f_current_stream(PyObject *m, PyObject *args)
{
    (void)m;
    int dev;
    if (!PyArg_ParseTuple(args, "i:cuda_current_stream", &dev)) return NULL;
    return H(dc_cuda_current_stream(dev));
}

static PyObject *f_set_current_stream(PyObject *m, PyObject *args)
{
    int dev;
    void *s;
    if (!PyArg_ParseTuple(args, "iO&:cuda_set_current_stream", &dev, conv_handle, &s)) return NULL;
    CHECK(dc_cuda_set_current_stream(dev, s));
    Py_RETURN_NONE;
}

static PyObject *f_compute_stream(PyObject *m, PyObject *noargs)
{
    (void)m;
    (void)noargs;
    return H(dc_cuda_compute_stream());
}

static PyObject *f_event_create(PyObject *m, PyObject *args)
{
    int timing = 0, blocking = 0;
    if (!PyArg_ParseTuple(args, "|pp:cuda_event_create", &timing, &blocking)) return NULL;
    void *e = NULL;
    CHECK(dc_cuda_event_create(timing, blocking, &e));
    return H(e);
}

static PyObject *f_event_destroy(PyObject *m, PyObject *o)
{
    (void)m;
    void *e;
    if (!conv_handle(o, &e)) return NULL;
    dc_cuda_event_destroy(e);
    Py_RETURN_NONE;
}

static PyObject *f_event_record(PyObject *m, PyObject *args)
{
    void *e, *s;
    if (!PyArg_ParseTuple(args, "O&O&:cuda_event_record", conv_handle, &e, conv_handle, &s)) return NULL;
    CHECK(dc_cuda_event_record(e, s));
    Py_RETURN_NONE;
}

static PyObject *f_event_synchronize(PyObject *m, PyObject *o)
{
    void *e;
    if (!conv_handle(o, &e)) return NULL;
    CHECK(dc_cuda_event_synchronize(e)); /* note: a sync point (counted) */
    Py_RETURN_NONE;
}

static PyObject *f_event_query(PyObject *m, PyObject *o)
{
    void *e;
    int done = 0;
    if (!conv_handle(o, &e)) return NULL;
    CHECK(dc_cuda_event_query(e, &done));
    return PyBool_FromLong(done);
}

static PyObject *f_event_elapsed(PyObject *m, PyObject *args)
{
    void *a, *b;
    float ms = 0;
    if (!PyArg_ParseTuple(args, "O&O&:cuda_event_elapsed", conv_handle, &a, conv_handle, &b)) return NULL;
    CHECK(dc_cuda_event_elapsed_ms(a, b, &ms));
    return PyFloat_FromDouble(ms);
}

PyObject *dc_py_cache_stats_dict(const dc_cache_stats *s);           /* alloc_py.c */
PyObject *dc_py_plan_cache_stats_dict(const dc_plan_cache_stats *s); /* plan_py.c */

static PyObject *f_memory_stats(PyObject *m, PyObject *args)
{
    int dev;
    if (!PyArg_ParseTuple(args, "i:cuda_memory_stats", &dev)) return NULL;
    dc_cache_stats s;
    long mallocs = 0, frees = 0;
    CHECK(dc_cuda_memory_stats(dev, &s, &mallocs, &frees));
    PyObject *d = dc_py_cache_stats_dict(&s);
    if (!d) return NULL;
    PyObject *a = PyLong_FromLong(mallocs), *b = PyLong_FromLong(frees);
    if (!a || !b || PyDict_SetItemString(d, "cuda_malloc_calls", a) < 0 ||
        PyDict_SetItemString(d, "cuda_free_calls", b) < 0) {
        Py_XDECREF(a);
        Py_XDECREF(b);
        Py_DECREF(d);
        return NULL;
    }
    Py_DECREF(a);
    Py_DECREF(b);
    return d;
}

static PyObject *f_reset_peak(PyObject *m, PyObject *args)
{
    int dev;
    if (!PyArg_ParseTuple(args, "i:cuda_reset_peak_memory_stats", &dev)) return NULL;
    CHECK(dc_cuda_reset_peak_memory_stats(dev));
    Py_RETURN_NONE;
}

static PyObject *f_empty_cache(PyObject *m, PyObject *noargs)
{
    (void)m;
    (void)noargs;
    Py_BEGIN_ALLOW_THREADS dc_cuda_empty_cache();
    dc_cuda_host_empty_cache();
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

static PyObject *f_mem_get_info(PyObject *m, PyObject *args)
{
    int dev;
    if (!PyArg_ParseTuple(args, "i:cuda_mem_get_info", &dev)) return NULL;
    size_t fb = 0, tb = 0;
    CHECK(dc_cuda_mem_get_info(dev, &fb, &tb));
    return Py_BuildValue("(nn)", (Py_ssize_t)fb, (Py_ssize_t)tb);
}

/* record_stream(tensor, stream): the tensor's block is reused only after `stream`'s work queued
 * before it is freed (torch.Tensor.record_stream) */
static PyObject *f_record_stream(PyObject *m, PyObject *args)
{
    PyObject *to;
    void *s;
    if (!PyArg_ParseTuple(args, "OO&:cuda_record_stream", &to, conv_handle, &s)) return NULL;
    dc_tensor *t = dc_py_tensor(to, "record_stream");
    if (!t) return NULL;
    if (t->device.type != DC_CUDA)
        return PyErr_Format(PyExc_ValueError, "record_stream: the tensor is on %s, not a CUDA device",
                            dc_device_str(t->device));
    CHECK(dc_cuda_record_stream(t->device.index, t->storage->data, s));
    Py_RETURN_NONE;
}

static void pinned_deleter(void *ctx)
{
    dc_cuda_host_free(ctx);
}

/* pin_memory(tensor) -> a CPU copy in page-locked memory (contiguous) */
static PyObject *f_pin_memory(PyObject *m, PyObject *o)
{
    dc_tensor *t = dc_py_tensor(o, "pin_memory");
    if (!t) return NULL;
    if (t->device.type != DC_CPU)
        return PyErr_Format(PyExc_ValueError, "pin_memory: only CPU tensors can be pinned, got a tensor on %s",
                            dc_device_str(t->device));
    if (!dc_is_contiguous(t))
        return PyErr_Format(PyExc_ValueError, "pin_memory: make the tensor contiguous first (shape %s)", DC_SHAPE(t));
    size_t nbytes = (size_t)dc_numel(t) * dc_dtype_size(t->dtype);
    void *p = NULL;
    dc_tensor *out = NULL;
    dc_status st;
    DC_BEGIN_OP st = dc_cuda_host_alloc(nbytes ? nbytes : 1, &p);
    if (!st) {
        if (nbytes) memcpy(p, dc_data(t), nbytes);
        st = dc_from_blob(&out, p, nbytes, t->ndim, t->shape, t->strides, t->dtype, (dc_device){ DC_CPU, 0 },
                          pinned_deleter, p); /* on failure it ran the deleter */
    }
    DC_END_OP if (st) return dc_py_raise(dc_py_state_of(m), st);
    return dc_py_wrap(dc_py_state_of(m), out);
}

static PyObject *f_is_pinned(PyObject *m, PyObject *o)
{
    (void)m;
    dc_tensor *t = dc_py_tensor(o, "is_pinned");
    if (!t) return NULL;
    return PyBool_FromLong(t->device.type == DC_CPU && dc_cuda_host_is_pinned_block(t->storage->data));
}

static PyObject *f_host_stats(PyObject *m, PyObject *noargs)
{
    (void)m;
    (void)noargs;
    dc_cache_stats s;
    dc_cuda_host_stats(&s);
    return dc_py_cache_stats_dict(&s);
}

/* to_device_async(tensor, device, copy_stream) -> the tensor on cuda:device, copied on copy_stream
 * without a host wait; the current stream waits for the copy (an event, on the device), so work
 * queued after this call sees the data. The new tensor's memory comes from copy_stream's pool and is
 * marked as used by the current stream, so it is not reused before that stream is done with it; a
 * pinned source block is not reused before the copy has read it. A source that is not pinned is
 * staged by the runtime (the host waits for the staging only). */
static PyObject *f_to_device_async(PyObject *m, PyObject *args)
{
    PyObject *to;
    int dev;
    void *copy;
    if (!PyArg_ParseTuple(args, "OiO&:cuda_to_device_async", &to, &dev, conv_handle, &copy)) return NULL;
    dc_tensor *t = dc_py_tensor(to, "to_device_async");
    if (!t) return NULL;
    if (t->device.type != DC_CPU || !dc_is_contiguous(t))
        return PyErr_Format(PyExc_ValueError, "to_device_async: expected a contiguous CPU tensor, got %s on %s",
                            DC_SHAPE(t), dc_device_str(t->device));
    size_t nbytes = (size_t)dc_numel(t) * dc_dtype_size(t->dtype);
    dc_tensor *out = NULL;
    void *ev = NULL;
    dc_status st;
    DC_BEGIN_OP void *compute = dc_cuda_current_stream(dev);
    st = dc_cuda_set_current_stream(dev, copy);
    if (!st) {
        st = dc_empty(&out, t->ndim, t->shape, t->dtype, (dc_device){ DC_CUDA, dev });
        dc_cuda_set_current_stream(dev, compute);
    }
    void *pinned = dc_cuda_host_is_pinned_block(t->storage->data) ? t->storage->data : NULL;
    if (!st) st = dc_cuda_copy_h2d_async(dev, dc_data(out), dc_data(t), nbytes, copy, pinned);
    if (!st && nbytes && compute != copy) st = dc_cuda_record_stream(dev, out->storage->data, compute);
    if (!st) st = dc_cuda_event_create(0, 0, &ev);
    if (!st) st = dc_cuda_event_record(ev, copy);
    if (!st) st = dc_cuda_stream_wait_event(compute, ev);
    dc_cuda_event_destroy(ev); /* CUDA keeps a recorded event alive until its work completes */
    DC_END_OP if (st)
    {
        dc_tensor_decref(out);
        return dc_py_raise(dc_py_state_of(m), st);
    }
    return dc_py_wrap(dc_py_state_of(m), out);
}

/* to_host_async(tensor, stream) -> a CPU tensor in pinned memory that will hold the CUDA tensor's
 * bytes once `stream` passes this point: `stream` first waits (on the device) for the current
 * stream's queued work, then copies; the source block is marked as used by `stream` so freeing
 * the tensor early cannot hand its memory to another kernel. The caller synchronises `stream` once
 * before reading (checkpoint snapshots: one wait for all tensors). */
static PyObject *f_to_host_async(PyObject *m, PyObject *args)
{
    PyObject *to;
    void *stream;
    if (!PyArg_ParseTuple(args, "OO&:cuda_to_host_async", &to, conv_handle, &stream)) return NULL;
    dc_tensor *t = dc_py_tensor(to, "to_host_async");
    if (!t) return NULL;
    if (t->device.type != DC_CUDA || !dc_is_contiguous(t))
        return PyErr_Format(PyExc_ValueError, "to_host_async: expected a contiguous CUDA tensor, got %s on %s",
                            DC_SHAPE(t), dc_device_str(t->device));
    size_t nbytes = (size_t)dc_numel(t) * dc_dtype_size(t->dtype);
    int dev = t->device.index;
    void *p = NULL, *ev = NULL;
    dc_tensor *out = NULL;
    dc_status st;
    DC_BEGIN_OP void *cur = dc_cuda_current_stream(dev);
    st = dc_cuda_host_alloc(nbytes ? nbytes : 1, &p);
    if (!st) {
        st = dc_from_blob(&out, p, nbytes, t->ndim, t->shape, NULL, t->dtype, (dc_device){ DC_CPU, 0 }, pinned_deleter,
                          p); /* on failure it ran the deleter */
    }
    if (!st && cur != stream) st = dc_cuda_event_create(0, 0, &ev);
    if (!st && ev) st = dc_cuda_event_record(ev, cur);
    if (!st && ev) st = dc_cuda_stream_wait_event(stream, ev);
    dc_cuda_event_destroy(ev);
    if (!st) st = dc_cuda_copy_d2h_async(dev, p, dc_data(t), nbytes, stream);
    if (!st && nbytes && cur != stream) st = dc_cuda_record_stream(dev, t->storage->data, stream);
    DC_END_OP if (st)
    {
        dc_tensor_decref(out);
        return dc_py_raise(dc_py_state_of(m), st);
    }
    return dc_py_wrap(dc_py_state_of(m), out);
}

static PyObject *f_allow_tf32(PyObject *m, PyObject *args)
{
    (void)m;
    int on = -1;
    if (!PyArg_ParseTuple(args, "|i:cuda_allow_tf32", &on)) return NULL;
    if (on >= 0) dc_cuda_set_allow_tf32(on);
    return PyBool_FromLong(dc_cuda_get_allow_tf32());
}

static PyObject *f_plan_cache_stats(PyObject *m, PyObject *noargs)
{
    (void)m;
    (void)noargs;
    dc_plan_cache_stats mm, cv;
    dc_cuda_matmul_cache_stats(&mm);
    dc_cuda_conv_cache_stats(&cv);
    PyObject *a = dc_py_plan_cache_stats_dict(&mm), *b = a ? dc_py_plan_cache_stats_dict(&cv) : NULL;
    PyObject *d = b ? Py_BuildValue("{sOsO}", "matmul", a, "conv", b) : NULL;
    Py_XDECREF(a);
    Py_XDECREF(b);
    return d;
}

static PyObject *f_device_name(PyObject *m, PyObject *args)
{
    (void)m;
    int i;
    if (!PyArg_ParseTuple(args, "i:cuda_device_name", &i)) return NULL;
    return PyUnicode_FromString(dc_cuda_device_name(i));
}

static PyObject *f_runtime_version(PyObject *m, PyObject *noargs)
{
    (void)m;
    (void)noargs;
    return PyLong_FromLong(dc_cuda_runtime_version());
}

#define F(name, flags)                                                    \
    {                                                                     \
        "cuda_" #name, (PyCFunction)(void (*)(void))f_##name, flags, NULL \
    }
static PyMethodDef cuda_functions[] = {
    F(stream_create, METH_VARARGS),
    F(stream_destroy, METH_O),
    F(stream_synchronize, METH_O),
    F(stream_query, METH_O),
    F(stream_wait_event, METH_VARARGS),
    F(current_stream, METH_VARARGS),
    F(set_current_stream, METH_VARARGS),
    F(compute_stream, METH_NOARGS),
    F(event_create, METH_VARARGS),
    F(event_destroy, METH_O),
    F(event_record, METH_VARARGS),
    F(event_synchronize, METH_O),
    F(event_query, METH_O),
    F(event_elapsed, METH_VARARGS),
    F(memory_stats, METH_VARARGS),
    F(reset_peak, METH_VARARGS),
    F(empty_cache, METH_NOARGS),
    F(mem_get_info, METH_VARARGS),
    F(record_stream, METH_VARARGS),
    F(pin_memory, METH_O),
    F(is_pinned, METH_O),
    F(host_stats, METH_NOARGS),
    F(to_device_async, METH_VARARGS),
    F(to_host_async, METH_VARARGS),
    F(allow_tf32, METH_VARARGS),
    F(plan_cache_stats, METH_NOARGS),
    F(device_name, METH_VARARGS),
    F(runtime_version, METH_NOARGS),
    { NULL, NULL, 0, NULL },
};

int dc_py_init_cuda(PyObject *m)
{
    return PyModule_AddFunctions(m, cuda_functions);
}

#else

int dc_py_init_cuda(PyObject *m)
{
    (void)m;
    return 0;
}

#endif
