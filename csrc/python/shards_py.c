/* shards_py.c: _C.ShardPipeline, the Python face of the shard pipeline (csrc/loader/pipeline.c),
 * and the order helpers the Python layer computes epochs and resumes with.
 *
 * dutycycle.data.ShardedDataset builds the plan (which shards, which samples, the shuffle's key,
 * the prefill of a resume) and hands it over here; next() waits for the next batch with the GIL
 * released and returns its columns: tensors that own the pipeline's pooled buffers (no copy), or
 * lists of str/bytes. The pipeline's threads never see a Python object; an S3 client passed in is
 * referenced by this object for as long as the pipeline runs.
 * Contract of every function: a new reference, or NULL with an exception set. */
#include <unistd.h>

#include "../loader/shards.h"
#include "../s3/s3.h"
#include "py.h"

typedef struct {
    PyObject_HEAD dc_pipe *pipe; /* owned; NULL once closed */
    PyObject *s3_obj;            /* the S3Client the pipeline borrows from, or NULL */
    int busy;                    /* a next() is waiting with the GIL released */
    pid_t pid;                   /* the process whose threads run the pipeline */
} PipeObject;

#define PSTATE(self) (dc_py_state_of_type(Py_TYPE(self)))

static int64_t as_i64(PyObject *o, int *bad)
{
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) *bad = 1;
    return (int64_t)v;
}

/* A sequence of int tuples of width w into a malloc'd int64 array. */
static int64_t *int_rows(PyObject *seq, int w, Py_ssize_t *n, const char *what)
{
    PyObject *fast = PySequence_Fast(seq, what);
    if (!fast) return NULL;
    *n = PySequence_Fast_GET_SIZE(fast);
    int64_t *out = PyMem_Malloc((size_t)(*n ? *n : 1) * (size_t)w * sizeof *out);
    if (!out) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    int bad = 0;
    for (Py_ssize_t i = 0; i < *n && !bad; i++) {
        PyObject *row = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != w) {
            PyErr_Format(PyExc_TypeError, "%s: entry %zd must be a tuple of %d ints", what, i, w);
            bad = 1;
            break;
        }
        for (int k = 0; k < w; k++) out[i * w + k] = as_i64(PyTuple_GET_ITEM(row, k), &bad);
    }
    Py_DECREF(fast);
    if (bad) {
        PyMem_Free(out);
        return NULL;
    }
    return out;
}

static int dtype_code(const char *name, dc_dtype *out)
{
    if (!strcmp(name, "uint8"))
        *out = DC_UINT8;
    else if (!strcmp(name, "float32"))
        *out = DC_FLOAT32;
    else if (!strcmp(name, "bfloat16"))
        *out = DC_BFLOAT16;
    else {
        PyErr_Format(PyExc_ValueError, "image dtype must be 'uint8', 'float32' or 'bfloat16', not '%s'", name);
        return 0;
    }
    return 1;
}

static int float_pair(PyObject *d, const char *k, float *out, int n)
{
    PyObject *v = PyDict_GetItemString(d, k); /* borrowed */
    if (!v) return 1;
    PyObject *fast = PySequence_Fast(v, k);
    if (!fast) return 0;
    if (PySequence_Fast_GET_SIZE(fast) != n) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "image option '%s' needs %d numbers", k, n);
        return 0;
    }
    for (int i = 0; i < n; i++) out[i] = (float)PyFloat_AsDouble(PySequence_Fast_GET_ITEM(fast, i));
    Py_DECREF(fast);
    return !PyErr_Occurred();
}

static int int_opt(PyObject *d, const char *k, int *out)
{
    PyObject *v = PyDict_GetItemString(d, k);
    if (!v) return 1;
    *out = (int)PyLong_AsLong(v);
    return !PyErr_Occurred();
}

/* {"resize", "crop", "crop_h", "crop_w", "scale", "ratio", "flip_p", "dtype", "mean", "std"} */
static int image_opts(PyObject *d, dc_image_opts *o)
{
    memset(o, 0, sizeof *o);
    o->out_dtype = DC_UINT8;
    o->scale[0] = 0.08f, o->scale[1] = 1.0f;
    o->ratio[0] = 3.0f / 4.0f, o->ratio[1] = 4.0f / 3.0f;
    o->std[0] = o->std[1] = o->std[2] = 1.0f;
    if (d == Py_None) return 1;
    if (!PyDict_Check(d)) {
        PyErr_SetString(PyExc_TypeError, "image options must be a dict");
        return 0;
    }
    if (!int_opt(d, "resize", &o->resize) || !int_opt(d, "crop", &o->crop) || !int_opt(d, "crop_h", &o->crop_h) ||
        !int_opt(d, "crop_w", &o->crop_w) || !float_pair(d, "scale", o->scale, 2) ||
        !float_pair(d, "ratio", o->ratio, 2) || !float_pair(d, "mean", o->mean, 3) || !float_pair(d, "std", o->std, 3))
        return 0;
    PyObject *f = PyDict_GetItemString(d, "flip_p");
    if (f) o->flip_p = (float)PyFloat_AsDouble(f);
    PyObject *dt = PyDict_GetItemString(d, "dtype");
    if (dt) {
        const char *name = PyUnicode_AsUTF8(dt);
        if (!name || !dtype_code(name, &o->out_dtype)) return 0;
    }
    return !PyErr_Occurred();
}

static const char *opt_str(PyObject *o, int *bad)
{
    if (o == Py_None) return NULL;
    const char *s = PyUnicode_AsUTF8(o);
    if (!s) *bad = 1;
    return s;
}

/* ShardPipeline(shards, runs, prefill, fields, *, ...) — see dc_pipe_config. */
static int pipe_init(PipeObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "shards",
                              "runs",
                              "prefill",
                              "fields",
                              "shuffle_capacity",
                              "shuffle_key",
                              "first_emission",
                              "batch_size",
                              "drop_last",
                              "prefetch_batches",
                              "prefetch_bytes",
                              "chunk_bytes",
                              "fetch_threads",
                              "decode_threads",
                              "keep_unknown",
                              "image_seed",
                              "s3",
                              "max_member_bytes",
                              NULL };
    PyObject *shards, *runs, *prefill, *fields, *s3 = Py_None;
    long long cap = 1, first = 0, bs = 1, pb = 2, pbytes = 256 << 20, chunk = 8 << 20, maxm = 0;
    unsigned long long key = 0, iseed = 0;
    int drop_last = 0, nf = 2, nd = 2, keep_unknown = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|$LKLLpLLLiipKOL:ShardPipeline", kwlist, &shards, &runs, &prefill,
                                     &fields, &cap, &key, &first, &bs, &drop_last, &pb, &pbytes, &chunk, &nf, &nd,
                                     &keep_unknown, &iseed, &s3, &maxm))
        return -1;
    if (self->pipe) {
        PyErr_SetString(PyExc_RuntimeError, "ShardPipeline is already initialised");
        return -1;
    }
    dc_pipe_config cfg = { 0 };
    dc_shard_src *src = NULL;
    dc_field_spec *fs = NULL;
    int64_t *rr = NULL, *pr = NULL;
    int ret = -1, bad = 0;
    PyObject *sh_fast = PySequence_Fast(shards, "shards must be a sequence");
    PyObject *f_fast = sh_fast ? PySequence_Fast(fields, "fields must be a sequence") : NULL;
    if (!f_fast) goto done;
    Py_ssize_t ns = PySequence_Fast_GET_SIZE(sh_fast), nfld = PySequence_Fast_GET_SIZE(f_fast), nr, np;
    src = PyMem_Calloc((size_t)(ns ? ns : 1), sizeof *src);
    fs = PyMem_Calloc((size_t)(nfld ? nfld : 1), sizeof *fs);
    if (!src || !fs) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < ns && !bad; i++) {
        PyObject *t = PySequence_Fast_GET_ITEM(sh_fast, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 6) {
            PyErr_Format(PyExc_TypeError, "shards[%zd] must be (url, path, bucket, key, size, nsamples)", i);
            goto done;
        }
        src[i].url = opt_str(PyTuple_GET_ITEM(t, 0), &bad);
        src[i].path = opt_str(PyTuple_GET_ITEM(t, 1), &bad);
        src[i].bucket = opt_str(PyTuple_GET_ITEM(t, 2), &bad);
        src[i].key = opt_str(PyTuple_GET_ITEM(t, 3), &bad);
        src[i].size = as_i64(PyTuple_GET_ITEM(t, 4), &bad);
        src[i].nsamples = as_i64(PyTuple_GET_ITEM(t, 5), &bad);
    }
    for (Py_ssize_t i = 0; i < nfld && !bad; i++) {
        PyObject *t = PySequence_Fast_GET_ITEM(f_fast, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3) {
            PyErr_Format(PyExc_TypeError, "fields[%zd] must be (field, decoder, image options or None)", i);
            goto done;
        }
        fs[i].field = opt_str(PyTuple_GET_ITEM(t, 0), &bad);
        fs[i].decoder = (int)as_i64(PyTuple_GET_ITEM(t, 1), &bad);
        if (!bad && !image_opts(PyTuple_GET_ITEM(t, 2), &fs[i].image)) bad = 1;
    }
    if (bad) goto done;
    if (!(rr = int_rows(runs, 3, &nr, "runs")) || !(pr = int_rows(prefill, 2, &np, "prefill"))) goto done;
    dc_shard_run *rv = PyMem_Malloc((size_t)(nr + np + 1) * sizeof *rv);
    if (!rv) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < nr; i++) rv[i] = (dc_shard_run){ (int32_t)rr[3 * i], rr[3 * i + 1], rr[3 * i + 2] };
    for (Py_ssize_t i = 0; i < np; i++)
        rv[nr + i] = (dc_shard_run){ (int32_t)pr[2 * i], pr[2 * i + 1], pr[2 * i + 1] + 1 };
    dc_s3 *client = NULL;
    if (s3 != Py_None && !(client = dc_py_s3_client(s3))) {
        PyMem_Free(rv);
        goto done;
    }
    cfg = (dc_pipe_config){ .shards = src,
                            .nshards = (int32_t)ns,
                            .runs = rv,
                            .nruns = nr,
                            .prefill = rv + nr,
                            .nprefill = np,
                            .shuffle_capacity = cap,
                            .shuffle_key = key,
                            .first_emission = first,
                            .batch_size = bs,
                            .drop_last = drop_last,
                            .prefetch_batches = pb,
                            .prefetch_bytes = pbytes,
                            .chunk_bytes = chunk,
                            .fetch_threads = nf,
                            .decode_threads = nd,
                            .fields = fs,
                            .nfields = (int)nfld,
                            .keep_unknown = keep_unknown,
                            .image_seed = iseed,
                            .s3 = client,
                            .max_member_bytes = maxm };
    dc_status st = dc_pipe_init(&self->pipe, &cfg); /* copies everything it keeps */
    PyMem_Free(rv);
    if (st) {
        dc_py_raise(PSTATE(self), st);
        goto done;
    }
    if (client) self->s3_obj = Py_NewRef(s3);
    self->pid = getpid();
    ret = 0;
done:
    Py_XDECREF(sh_fast);
    Py_XDECREF(f_fast);
    PyMem_Free(src);
    PyMem_Free(fs);
    PyMem_Free(rr);
    PyMem_Free(pr);
    return ret;
}

static PyObject *str_list(uint8_t **items, const size_t *lens, int64_t n, int kind)
{
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (!list) return NULL;
    for (int64_t r = 0; r < n; r++) {
        PyObject *o = kind == DC_COL_BYTES
                          ? PyBytes_FromStringAndSize((const char *)items[r], (Py_ssize_t)lens[r])
                          : PyUnicode_DecodeUTF8((const char *)items[r], (Py_ssize_t)lens[r], "strict");
        if (!o) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)r, o);
    }
    return list;
}

/* The batch as {"index", "n", "keys", "shards", "ordinals", "columns": [(name, kind, value)]}. */
static PyObject *batch_to_py(dc_py_state *S, dc_pipe_batch *b)
{
    PyObject *d = PyDict_New(), *keys = NULL, *sh = NULL, *ords = NULL, *cols = NULL;
    if (!d) return NULL;
    keys = PyList_New((Py_ssize_t)b->n);
    sh = PyList_New((Py_ssize_t)b->n);
    ords = PyList_New((Py_ssize_t)b->n);
    cols = PyList_New(0);
    if (!keys || !sh || !ords || !cols) goto error;
    for (int64_t r = 0; r < b->n; r++) {
        PyObject *k = PyUnicode_DecodeUTF8(b->keys[r], (Py_ssize_t)strlen(b->keys[r]), "surrogateescape");
        PyObject *s = PyLong_FromLong(b->shards[r]);
        PyObject *o = PyLong_FromLongLong(b->ordinals[r]);
        if (!k || !s || !o) {
            Py_XDECREF(k);
            Py_XDECREF(s);
            Py_XDECREF(o);
            goto error;
        }
        PyList_SET_ITEM(keys, (Py_ssize_t)r, k);
        PyList_SET_ITEM(sh, (Py_ssize_t)r, s);
        PyList_SET_ITEM(ords, (Py_ssize_t)r, o);
    }
    for (int i = 0; i < b->ncols; i++) {
        dc_pipe_column *c = &b->cols[i];
        PyObject *val;
        if (c->kind == DC_COL_TENSOR) {
            dc_tensor *t;
            void *buf = c->data;
            c->data = NULL; /* the tensor owns it now (dc_from_blob releases it on failure too) */
            dc_status st = dc_from_blob(&t, buf, c->nbytes, c->ndim, c->shape, NULL, c->dtype, (dc_device){ DC_CPU, 0 },
                                        dc_pipe_buffer_release, buf);
            if (st) {
                dc_py_raise(S, st);
                goto error;
            }
            val = dc_py_wrap(S, t);
        } else {
            val = str_list(c->items, c->lens, b->n, c->kind);
        }
        if (!val) goto error;
        PyObject *entry = Py_BuildValue("(siN)", c->name, c->kind, val);
        if (!entry || PyList_Append(cols, entry) < 0) {
            Py_XDECREF(entry);
            goto error;
        }
        Py_DECREF(entry);
    }
    if (PyDict_SetItemString(d, "keys", keys) < 0 || PyDict_SetItemString(d, "shards", sh) < 0 ||
        PyDict_SetItemString(d, "ordinals", ords) < 0 || PyDict_SetItemString(d, "columns", cols) < 0)
        goto error;
    PyObject *idx = PyLong_FromLongLong(b->index), *n = PyLong_FromLongLong(b->n);
    int bad = !idx || !n || PyDict_SetItemString(d, "index", idx) < 0 || PyDict_SetItemString(d, "n", n) < 0;
    Py_XDECREF(idx);
    Py_XDECREF(n);
    if (bad) goto error;
    Py_DECREF(keys);
    Py_DECREF(sh);
    Py_DECREF(ords);
    Py_DECREF(cols);
    return d;
error:
    Py_XDECREF(keys);
    Py_XDECREF(sh);
    Py_XDECREF(ords);
    Py_XDECREF(cols);
    Py_DECREF(d);
    return NULL;
}

static int pipe_open(PipeObject *self)
{
    if (self->pipe) return 1;
    PyErr_SetString(PyExc_ValueError, "ShardPipeline is closed");
    return 0;
}

/* next() -> the next batch (a dict), or None after the last. */
static PyObject *pipe_next(PipeObject *self, PyObject *noargs)
{
    if (!pipe_open(self)) return NULL;
    if (self->pid != getpid()) {
        PyErr_SetString(PyExc_RuntimeError, "ShardPipeline.next: this pipeline's threads belong to the parent "
                                            "process (fork); iterate the dataset again in the child");
        return NULL;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "ShardPipeline.next: another thread is already waiting on this pipeline");
        return NULL;
    }
    dc_pipe_batch b;
    int have = 0;
    dc_status st;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS st = dc_pipe_next(self->pipe, &b, &have);
    Py_END_ALLOW_THREADS self->busy = 0;
    if (st) return dc_py_raise(PSTATE(self), st);
    if (!have) Py_RETURN_NONE;
    PyObject *out = batch_to_py(PSTATE(self), &b);
    dc_pipe_batch_clear(&b);
    return out;
}

static PyObject *pipe_stats(PipeObject *self, PyObject *noargs)
{
    if (!pipe_open(self)) return NULL;
    dc_pipe_stats s;
    dc_pipe_get_stats(self->pipe, &s);
    return Py_BuildValue("{sLsLsLsLsLsLsLsL}", "bytes_fetched", (long long)s.bytes_fetched, "fetches",
                         (long long)s.fetches, "samples_parsed", (long long)s.samples_parsed, "samples_emitted",
                         (long long)s.samples_emitted, "batches", (long long)s.batches, "peak_fetch_bytes",
                         (long long)s.peak_fetch_bytes, "peak_buffer_bytes", (long long)s.peak_buffer_bytes,
                         "total_samples", (long long)s.total_samples);
}

static PyObject *pipe_num_batches(PipeObject *self, void *closure)
{
    if (!pipe_open(self)) return NULL;
    return PyLong_FromLongLong(dc_pipe_num_batches(self->pipe));
}

static void pipe_close_impl(PipeObject *self)
{
    dc_pipe *p = self->pipe;
    self->pipe = NULL;
    if (p && self->pid != getpid()) p = NULL; /* forked: its threads are the parent's; leak, never join */
    if (p) {
        Py_BEGIN_ALLOW_THREADS dc_pipe_free(p); /* joins the threads (a fetch in flight finishes first) */
        Py_END_ALLOW_THREADS
    }
    Py_CLEAR(self->s3_obj);
}

static PyObject *pipe_close(PipeObject *self, PyObject *noargs)
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "ShardPipeline.close: a next() is waiting on it in another thread");
        return NULL;
    }
    pipe_close_impl(self);
    Py_RETURN_NONE;
}

static void pipe_dealloc(PipeObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    pipe_close_impl(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int pipe_traverse(PipeObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->s3_obj);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static PyMethodDef pipe_methods[] = {
    { "next", (PyCFunction)pipe_next, METH_NOARGS, "next() -> the next batch as a dict, or None after the last" },
    { "stats", (PyCFunction)pipe_stats, METH_NOARGS, "stats() -> counters: bytes fetched, peaks, samples" },
    { "close", (PyCFunction)pipe_close, METH_NOARGS, "close(): stop and join the threads" },
    { NULL, NULL, 0, NULL },
};

static PyGetSetDef pipe_getset[] = {
    { "num_batches", (getter)pipe_num_batches, NULL, "batches the stream yields", NULL },
    { NULL, NULL, NULL, NULL, NULL },
};

static PyType_Slot pipe_slots[] = {
    { Py_tp_doc, "ShardPipeline(shards, runs, prefill, fields, **config): batches from WebDataset shards, ahead of "
                 "the consumer, in C threads" },
    { Py_tp_new, PyType_GenericNew },
    { Py_tp_init, pipe_init },
    { Py_tp_dealloc, pipe_dealloc },
    { Py_tp_traverse, pipe_traverse },
    { Py_tp_methods, pipe_methods },
    { Py_tp_getset, pipe_getset },
    { 0, NULL },
};

static PyType_Spec pipe_spec = {
    .name = "dutycycle._C.ShardPipeline",
    .basicsize = sizeof(PipeObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = pipe_slots,
};

/* ---- order helpers ------------------------------------------------------------------------------ */

static PyObject *py_shard_hash(PyObject *m, PyObject *args)
{
    unsigned long long a, b;
    if (!PyArg_ParseTuple(args, "KK:shard_hash", &a, &b)) return NULL;
    return PyLong_FromUnsignedLongLong(dc_shard_hash(a, b));
}

static PyObject *list_of(const int64_t *v, int64_t n)
{
    PyObject *l = PyList_New((Py_ssize_t)n);
    if (!l) return NULL;
    for (int64_t i = 0; i < n; i++) {
        PyObject *o = PyLong_FromLongLong(v[i]);
        if (!o) {
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, (Py_ssize_t)i, o);
    }
    return l;
}

static PyObject *py_shard_permutation(PyObject *m, PyObject *args)
{
    long long n;
    unsigned long long key;
    if (!PyArg_ParseTuple(args, "LK:shard_permutation", &n, &key)) return NULL;
    if (n < 0) return PyErr_Format(PyExc_ValueError, "shard_permutation: n must be >= 0, got %lld", n);
    int64_t *v = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *v);
    if (!v) return PyErr_NoMemory();
    dc_shard_permutation(n, key, v);
    PyObject *l = list_of(v, n);
    PyMem_Free(v);
    return l;
}

/* shuffle_simulate(len, capacity, key, k, emitted=False) -> (slots, next_in, emitted or None) */
static PyObject *py_shuffle_simulate(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "len", "capacity", "key", "k", "emitted", NULL };
    long long len, cap, k;
    unsigned long long key;
    int want = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LLKL|p:shuffle_simulate", kwlist, &len, &cap, &key, &k, &want))
        return NULL;
    if (cap < 1 || len < 0 || k < 0 || k > len)
        return PyErr_Format(PyExc_ValueError, "shuffle_simulate: len %lld, capacity %lld, k %lld out of range", len,
                            cap, k);
    int64_t capn = cap < len + 1 ? cap : len + 1;
    int64_t *slots = PyMem_Malloc((size_t)(capn ? capn : 1) * sizeof *slots);
    int64_t *em = want ? PyMem_Malloc((size_t)(k ? k : 1) * sizeof *em) : NULL;
    if (!slots || (want && !em)) {
        PyMem_Free(slots);
        PyMem_Free(em);
        return PyErr_NoMemory();
    }
    int64_t ns, next;
    dc_status st;
    Py_BEGIN_ALLOW_THREADS st = dc_shuffle_simulate(len, capn, key, k, slots, &ns, &next, em);
    Py_END_ALLOW_THREADS if (st)
    {
        PyMem_Free(slots);
        PyMem_Free(em);
        return dc_py_raise(dc_py_state_of(m), st);
    }
    PyObject *out =
        Py_BuildValue("(NLN)", list_of(slots, ns), (long long)next, want ? list_of(em, k) : Py_NewRef(Py_None));
    PyMem_Free(slots);
    PyMem_Free(em);
    return out;
}

/* shard_count(url, path, bucket, key, size, s3=None, chunk_bytes=8 MiB) -> samples in the shard */
static PyObject *py_shard_count(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "url", "path", "bucket", "key", "size", "s3", "chunk_bytes", NULL };
    const char *url, *path, *bucket, *key;
    long long size, chunk = 8 << 20;
    PyObject *s3 = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "szzzL|OL:shard_count", kwlist, &url, &path, &bucket, &key, &size, &s3,
                                     &chunk))
        return NULL;
    dc_s3 *client = NULL;
    if (s3 != Py_None && !(client = dc_py_s3_client(s3))) return NULL;
    dc_shard_src src = { url, path, bucket, key, size, -1 };
    int64_t n = 0;
    dc_status st;
    Py_INCREF(s3); /* the client must outlive the call */
    Py_BEGIN_ALLOW_THREADS st = dc_shard_count(&src, client, chunk, &n);
    Py_END_ALLOW_THREADS Py_DECREF(s3);
    if (st) return dc_py_raise(dc_py_state_of(m), st);
    return PyLong_FromLongLong(n);
}

static PyMethodDef shard_functions[] = {
    { "shard_hash", py_shard_hash, METH_VARARGS, "shard_hash(a, b) -> the 64-bit mix the sample order uses" },
    { "shard_permutation", py_shard_permutation, METH_VARARGS, "shard_permutation(n, key) -> a seeded permutation" },
    { "shuffle_simulate", (PyCFunction)(void (*)(void))py_shuffle_simulate, METH_VARARGS | METH_KEYWORDS,
      "shuffle_simulate(len, capacity, key, k, emitted=False) -> (buffer slots, next input, emitted)" },
    { "shard_count", (PyCFunction)(void (*)(void))py_shard_count, METH_VARARGS | METH_KEYWORDS,
      "shard_count(url, path, bucket, key, size, s3=None, chunk_bytes=8 MiB) -> samples in a shard" },
    { NULL, NULL, 0, NULL },
};

int dc_py_init_shards(PyObject *m)
{
    PyObject *tp = PyType_FromModuleAndSpec(m, &pipe_spec, NULL);
    if (!tp) return -1;
    int rc = PyModule_AddObjectRef(m, "ShardPipeline", tp);
    Py_DECREF(tp);
    if (rc < 0) return -1;
    return PyModule_AddFunctions(m, shard_functions);
}
