/* ckpt_py.c: _C.CheckpointWriter and _C.crc32c, the Python face of csrc/ckpt/ckpt.h.
 *
 * dutycycle.checkpoint builds the bytes (safetensors headers, the manifest's JSON) and hands the
 * tensor data over as buffer-protocol objects; submit() copies them into the staging ring with the
 * GIL released and returns, and the C writer thread persists them. The buffers are only read
 * during submit(), so no reference outlives the call. Python objects are only touched here, with
 * the GIL held; the writer thread never sees one. Contract of every method: a new reference, or
 * NULL with an exception set. */
#include "../ckpt/ckpt.h"
#include "py.h"

typedef struct {
    PyObject_HEAD dc_ckpt *ck; /* owned; NULL once closed */
} CkptObject;

#define CSTATE(self) ((dc_py_state *)PyType_GetModuleState(Py_TYPE(self)))

static int ckpt_open(CkptObject *self)
{
    if (self->ck) return 1;
    PyErr_SetString(PyExc_ValueError, "CheckpointWriter is closed");
    return 0;
}

static int ckpt_init(CkptObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "capacity", "nice", NULL };
    Py_ssize_t cap;
    int niceness = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "n|i:CheckpointWriter", kwlist, &cap, &niceness)) return -1;
    if (self->ck) {
        PyErr_SetString(PyExc_RuntimeError, "CheckpointWriter is already initialised");
        return -1;
    }
    if (cap <= 0) {
        PyErr_Format(PyExc_ValueError, "CheckpointWriter: capacity must be > 0 bytes, got %zd", cap);
        return -1;
    }
    dc_status st;
    Py_BEGIN_ALLOW_THREADS st = dc_ckpt_init(&self->ck, (size_t)cap, niceness);
    Py_END_ALLOW_THREADS if (st)
    {
        dc_py_raise(CSTATE(self), st);
        return -1;
    }
    return 0;
}

/* A str attribute of an optional argument as UTF-8 (borrowed from the object), NULL for None. */
static int opt_str(PyObject *o, const char **out, const char *what)
{
    *out = NULL;
    if (!o || o == Py_None) return 1;
    if (!PyUnicode_Check(o)) {
        PyErr_Format(PyExc_TypeError, "CheckpointWriter.submit: %s must be a str, got %s", what, Py_TYPE(o)->tp_name);
        return 0;
    }
    return (*out = PyUnicode_AsUTF8(o)) != NULL;
}

/* submit(dir, segments, files, fragment=None, manifest=None, commit_to=None, link=None, fsync=True)
 *   segments: [(buffer, key or None)]  files: [(name, head bytes, [segment index])]
 *   manifest: (name, prefix, suffix, [fragment names], timeout_s)   link: (path, target) */
static PyObject *ckpt_submit(CkptObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "dir", "segments", "files", "fragment", "manifest", "commit_to", "link", "fsync", NULL };
    PyObject *dir, *segs, *files, *fragment = Py_None, *manifest = Py_None, *commit_to = Py_None, *link = Py_None;
    int do_fsync = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "UO!O!|OOOOp:submit", kwlist, &dir, &PyList_Type, &segs, &PyList_Type,
                                     &files, &fragment, &manifest, &commit_to, &link, &do_fsync))
        return NULL;
    if (!ckpt_open(self)) return NULL;
    Py_ssize_t ns = PyList_GET_SIZE(segs), nf = PyList_GET_SIZE(files);
    if (ns > INT_MAX || nf > INT_MAX) return PyErr_Format(PyExc_ValueError, "CheckpointWriter.submit: too many items");
    dc_ckpt_job job = { 0 };
    Py_buffer *views = PyMem_Calloc((size_t)ns + 1, sizeof *views);
    dc_ckpt_segment *sv = PyMem_Calloc((size_t)ns + 1, sizeof *sv);
    dc_ckpt_file *fv = PyMem_Calloc((size_t)nf + 1, sizeof *fv);
    int **segidx = PyMem_Calloc((size_t)nf + 1, sizeof *segidx);
    Py_buffer *heads = PyMem_Calloc((size_t)nf + 1, sizeof *heads);
    const char **waits = NULL;
    PyObject *result = NULL;
    Py_ssize_t nviews = 0, nheads = 0;
    if (!views || !sv || !fv || !segidx || !heads) {
        PyErr_NoMemory();
        goto out;
    }
    if (!(job.dir = PyUnicode_AsUTF8(dir))) goto out;
    for (Py_ssize_t i = 0; i < ns; i++) {
        PyObject *it = PyList_GET_ITEM(segs, i), *key;
        if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 2) {
            PyErr_Format(PyExc_TypeError, "CheckpointWriter.submit: segment %zd must be (buffer, key or None)", i);
            goto out;
        }
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(it, 0), &views[i], PyBUF_C_CONTIGUOUS) < 0) goto out;
        nviews = i + 1;
        key = PyTuple_GET_ITEM(it, 1);
        sv[i].src = views[i].buf;
        sv[i].nbytes = (size_t)views[i].len;
        if (!opt_str(key, &sv[i].key, "a segment key")) goto out;
    }
    for (Py_ssize_t f = 0; f < nf; f++) {
        PyObject *it = PyList_GET_ITEM(files, f);
        PyObject *name, *head, *idx;
        if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 3 || !PyList_Check(PyTuple_GET_ITEM(it, 2))) {
            PyErr_Format(PyExc_TypeError, "CheckpointWriter.submit: file %zd must be (name, head, [segments])", f);
            goto out;
        }
        name = PyTuple_GET_ITEM(it, 0);
        head = PyTuple_GET_ITEM(it, 1);
        idx = PyTuple_GET_ITEM(it, 2);
        if (!opt_str(name, &fv[f].name, "a file name") || !fv[f].name) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "CheckpointWriter.submit: a file needs a name");
            goto out;
        }
        if (PyObject_GetBuffer(head, &heads[f], PyBUF_C_CONTIGUOUS) < 0) goto out;
        nheads = f + 1;
        fv[f].head = heads[f].buf;
        fv[f].head_len = (size_t)heads[f].len;
        Py_ssize_t k = PyList_GET_SIZE(idx);
        if (!(segidx[f] = PyMem_Calloc((size_t)k + 1, sizeof(int)))) {
            PyErr_NoMemory();
            goto out;
        }
        for (Py_ssize_t q = 0; q < k; q++) {
            long v = PyLong_AsLong(PyList_GET_ITEM(idx, q));
            if (v == -1 && PyErr_Occurred()) goto out;
            if (v < 0 || v >= ns) {
                PyErr_Format(PyExc_IndexError, "CheckpointWriter.submit: file '%s' names segment %ld of %zd",
                             fv[f].name, v, ns);
                goto out;
            }
            segidx[f][q] = (int)v;
        }
        fv[f].nsegs = (int)k;
        fv[f].segs = segidx[f];
    }
    job.nsegments = (int)ns;
    job.segments = sv;
    job.nfiles = (int)nf;
    job.files = fv;
    job.fsync = do_fsync;
    if (!opt_str(fragment, &job.fragment_name, "fragment") || !opt_str(commit_to, &job.commit_to, "commit_to"))
        goto out;
    if (manifest != Py_None) {
        PyObject *wl;
        PyObject *mname, *mpre, *msuf;
        if (!PyArg_ParseTuple(manifest, "UUUO!d:manifest", &mname, &mpre, &msuf, &PyList_Type, &wl,
                              &job.wait_timeout_s))
            goto out;
        job.manifest_name = PyUnicode_AsUTF8(mname);
        job.manifest_prefix = PyUnicode_AsUTF8(mpre);
        job.manifest_suffix = PyUnicode_AsUTF8(msuf);
        if (!job.manifest_name || !job.manifest_prefix || !job.manifest_suffix) goto out;
        Py_ssize_t nw = PyList_GET_SIZE(wl);
        if (!(waits = PyMem_Calloc((size_t)nw + 1, sizeof *waits))) {
            PyErr_NoMemory();
            goto out;
        }
        for (Py_ssize_t i = 0; i < nw; i++)
            if (!opt_str(PyList_GET_ITEM(wl, i), &waits[i], "a fragment name") || !waits[i]) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "CheckpointWriter.submit: fragment name None");
                goto out;
            }
        job.nwait = (int)nw;
        job.wait_for = waits;
    }
    if (link != Py_None) {
        PyObject *lp, *lt;
        if (!PyArg_ParseTuple(link, "UU:link", &lp, &lt)) goto out;
        if (!(job.link_path = PyUnicode_AsUTF8(lp)) || !(job.link_target = PyUnicode_AsUTF8(lt))) goto out;
    }
    dc_status st;
    Py_BEGIN_ALLOW_THREADS st = dc_ckpt_submit(self->ck, &job);
    Py_END_ALLOW_THREADS if (st)
    {
        dc_py_raise(CSTATE(self), st);
        goto out;
    }
    result = Py_NewRef(Py_None);
out:
    for (Py_ssize_t i = 0; i < nviews; i++) PyBuffer_Release(&views[i]);
    for (Py_ssize_t i = 0; i < nheads; i++) PyBuffer_Release(&heads[i]);
    if (segidx)
        for (Py_ssize_t f = 0; f < nf; f++) PyMem_Free(segidx[f]);
    PyMem_Free(segidx);
    PyMem_Free(views);
    PyMem_Free(sv);
    PyMem_Free(fv);
    PyMem_Free(heads);
    PyMem_Free(waits);
    return result;
}

static PyObject *ckpt_poll(CkptObject *self, PyObject *unused)
{
    if (!ckpt_open(self)) return NULL;
    static const char *names[] = { "idle", "running", "done" };
    return PyUnicode_FromString(names[dc_ckpt_poll(self->ck)]);
}

static PyObject *ckpt_wait(CkptObject *self, PyObject *args)
{
    double timeout = -1;
    if (!PyArg_ParseTuple(args, "|d:wait", &timeout)) return NULL;
    if (!ckpt_open(self)) return NULL;
    int done = 0;
    /* waits in slices so that Ctrl-C reaches Python while a long write is in flight */
    for (;;) {
        double slice = timeout < 0 || timeout > 0.1 ? 0.1 : timeout;
        Py_BEGIN_ALLOW_THREADS dc_ckpt_wait(self->ck, slice, &done);
        Py_END_ALLOW_THREADS if (done) break;
        if (PyErr_CheckSignals() < 0) return NULL;
        if (timeout >= 0 && (timeout -= slice) <= 0) break;
    }
    return PyBool_FromLong(done);
}

/* result(nsegments) -> (crcs list, seconds, bytes); raises the job's error */
static PyObject *ckpt_result(CkptObject *self, PyObject *args)
{
    int n;
    if (!PyArg_ParseTuple(args, "i:result", &n)) return NULL;
    if (!ckpt_open(self)) return NULL;
    uint32_t *crcs = PyMem_Calloc((size_t)(n > 0 ? n : 1), sizeof *crcs);
    if (!crcs) return PyErr_NoMemory();
    double secs = 0;
    uint64_t bytes = 0;
    dc_status st = dc_ckpt_result(self->ck, crcs, n, &secs, &bytes);
    if (st) {
        PyMem_Free(crcs);
        return dc_py_raise(CSTATE(self), st);
    }
    PyObject *lst = PyList_New(n);
    if (!lst) {
        PyMem_Free(crcs);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        PyObject *v = PyLong_FromUnsignedLong(crcs[i]);
        if (!v) {
            Py_DECREF(lst);
            PyMem_Free(crcs);
            return NULL;
        }
        PyList_SET_ITEM(lst, i, v);
    }
    PyMem_Free(crcs);
    return Py_BuildValue("(NdK)", lst, secs, (unsigned long long)bytes);
}

static PyObject *ckpt_resize(CkptObject *self, PyObject *args)
{
    Py_ssize_t cap;
    if (!PyArg_ParseTuple(args, "n:resize", &cap)) return NULL;
    if (!ckpt_open(self)) return NULL;
    if (cap <= 0) return PyErr_Format(PyExc_ValueError, "CheckpointWriter.resize: capacity must be > 0, got %zd", cap);
    dc_status st;
    Py_BEGIN_ALLOW_THREADS st = dc_ckpt_resize(self->ck, (size_t)cap);
    Py_END_ALLOW_THREADS if (st) return dc_py_raise(CSTATE(self), st);
    Py_RETURN_NONE;
}

static PyObject *ckpt_close(CkptObject *self, PyObject *unused)
{
    dc_ckpt *c = self->ck;
    self->ck = NULL;
    Py_BEGIN_ALLOW_THREADS dc_ckpt_free(c);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

static PyObject *ckpt_get_capacity(CkptObject *self, void *unused)
{
    if (!ckpt_open(self)) return NULL;
    return PyLong_FromSize_t(dc_ckpt_capacity(self->ck));
}

static PyObject *ckpt_get_closed(CkptObject *self, void *unused)
{
    return PyBool_FromLong(self->ck == NULL);
}

static void ckpt_dealloc(CkptObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    dc_ckpt *c = self->ck;
    self->ck = NULL;
    if (c) {
        Py_BEGIN_ALLOW_THREADS dc_ckpt_free(c); /* finishes a save in flight: it is never dropped */
        Py_END_ALLOW_THREADS
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef ckpt_methods[] = {
    { "submit", (PyCFunction)(void (*)(void))ckpt_submit, METH_VARARGS | METH_KEYWORDS,
      "submit(dir, segments, files, fragment=None, manifest=None, commit_to=None, link=None, fsync=True): "
      "snapshot the segments into the staging ring and start the background write" },
    { "poll", (PyCFunction)ckpt_poll, METH_NOARGS, "'idle', 'running' or 'done'" },
    { "wait", (PyCFunction)ckpt_wait, METH_VARARGS, "wait(timeout=-1) -> True when the job finished" },
    { "result", (PyCFunction)ckpt_result, METH_VARARGS,
      "result(nsegments) -> (crc32c per segment, seconds, bytes); raises the job's error" },
    { "resize", (PyCFunction)ckpt_resize, METH_VARARGS, "resize(capacity): new staging ring size (between jobs)" },
    { "close", (PyCFunction)ckpt_close, METH_NOARGS, "finish a save in flight, stop the writer thread" },
    { NULL, NULL, 0, NULL },
};

static PyGetSetDef ckpt_getset[] = {
    { "capacity", (getter)ckpt_get_capacity, NULL, NULL, NULL },
    { "closed", (getter)ckpt_get_closed, NULL, NULL, NULL },
    { NULL, NULL, NULL, NULL, NULL },
};

static PyType_Slot ckpt_slots[] = {
    { Py_tp_init, ckpt_init },
    { Py_tp_new, PyType_GenericNew },
    { Py_tp_dealloc, ckpt_dealloc },
    { Py_tp_methods, ckpt_methods },
    { Py_tp_getset, ckpt_getset },
    { Py_tp_doc, "CheckpointWriter(capacity, nice=0): a staging ring and a C thread (nice levels lower) that persists "
                 "checkpoints" },
    { 0, NULL },
};

static PyType_Spec ckpt_spec = {
    .name = "dutycycle._C.CheckpointWriter",
    .basicsize = sizeof(CkptObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = ckpt_slots,
};

/* crc32c(buffer, crc=0, software=False) -> int; the GIL is released for large buffers */
static PyObject *py_crc32c(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "data", "crc", "software", NULL };
    Py_buffer b;
    unsigned long crc = 0;
    int sw = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*|kp:crc32c", kwlist, &b, &crc, &sw)) return NULL;
    uint32_t r;
    if (b.len > (1 << 16)) {
        Py_BEGIN_ALLOW_THREADS r =
            sw ? dc_crc32c_sw((uint32_t)crc, b.buf, (size_t)b.len) : dc_crc32c((uint32_t)crc, b.buf, (size_t)b.len);
        Py_END_ALLOW_THREADS
    } else {
        r = sw ? dc_crc32c_sw((uint32_t)crc, b.buf, (size_t)b.len) : dc_crc32c((uint32_t)crc, b.buf, (size_t)b.len);
    }
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(r);
}

static PyObject *py_crc32c_hw(PyObject *m, PyObject *unused)
{
    return PyBool_FromLong(dc_crc32c_hw());
}

static PyMethodDef ckpt_functions[] = {
    { "crc32c", (PyCFunction)(void (*)(void))py_crc32c, METH_VARARGS | METH_KEYWORDS,
      "crc32c(data, crc=0, software=False) -> CRC32C of a bytes-like object (chained from crc)" },
    { "crc32c_hw", py_crc32c_hw, METH_NOARGS, "True when CRC32C uses the CPU's crc32 instruction" },
    { NULL, NULL, 0, NULL },
};

int dc_py_init_ckpt(PyObject *m)
{
    if (PyModule_AddFunctions(m, ckpt_functions) < 0) return -1;
    PyObject *tp = PyType_FromModuleAndSpec(m, &ckpt_spec, NULL);
    if (!tp) return -1;
    int r = PyModule_AddObjectRef(m, "CheckpointWriter", tp);
    Py_DECREF(tp);
    return r;
}
