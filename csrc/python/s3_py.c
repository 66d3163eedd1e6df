/* s3_py.c: _C.S3Client, _C.S3Upload and _C.S3Error, the Python face of csrc/s3/s3.h.
 *
 * dutycycle.s3 resolves the configuration (environment, ~/.aws files) and wraps these in a
 * friendlier Client; everything here takes a bucket and a key. Each blocking call pulls its
 * strings and buffers out first, then releases the GIL around the pure-C call, so Python threads
 * (and the loader's C threads, through dc_py_s3_client) share one engine concurrently. Failures of
 * a transfer raise S3Error (a DataIOError, so an OSError) carrying .code, .status, .url and
 * .attempts; the message never holds a secret, and neither does the repr.
 *
 * Lifetime: an S3Upload holds a reference to its client; close() refuses while calls are in
 * flight or uploads are open, so the C client is never freed under a caller. Contract of every
 * method: a new reference, or NULL with an exception set. */
#include "py.h" /* first: Python.h sets the feature macros */

#include "../s3/s3.h"

typedef struct {
    PyObject_HEAD dc_s3 *s3; /* owned; NULL once closed */
    PyObject *endpoint;      /* str or None, for repr */
    PyObject *region;        /* str */
    int path_style, anonymous;
    int busy;    /* calls in flight with the GIL released */
    int uploads; /* open S3Upload objects */
} S3ClientObject;

typedef struct {
    PyObject_HEAD S3ClientObject *client; /* owned reference */
    dc_s3_upload *up;                     /* owned; NULL once finished or aborted */
    PyObject *url;                        /* "s3://bucket/key" */
    int busy;
} S3UploadObject;

static void s3client_dealloc(S3ClientObject *self);

/* The _C module of one of our objects (borrowed), and a borrowed attribute of it. */
static PyObject *module_attr(PyObject *self, const char *name)
{
    PyObject *m = PyType_GetModuleByDef(Py_TYPE(self), &dc_py_module_def);
    if (!m) return NULL;
    PyObject *v = PyObject_GetAttrString(m, name);
    if (v) Py_DECREF(v); /* the module keeps it */
    return v;
}

/* Raise the failure of the last call made by this thread (the C client's error is thread-local,
 * and the GIL was released and retaken in this same thread). */
static PyObject *raise_s3(PyObject *self, dc_status st, const char *bucket, const char *key)
{
    if (st != DC_ERR_IO) return dc_py_raise(dc_py_state_of_type(Py_TYPE(self)), st);
    const dc_s3_error *e = dc_s3_last_error();
    PyObject *cls = module_attr(self, "S3Error");
    if (!cls) return NULL;
    const char *msg = dc_last_error();
    PyObject *inst = PyObject_CallFunction(cls, "s", msg && *msg ? msg : "S3 request failed");
    if (!inst) return NULL;
    PyObject *code = PyUnicode_DecodeUTF8(e->code, (Py_ssize_t)strlen(e->code), "replace");
    PyObject *status = PyLong_FromLong(e->http_status);
    PyObject *attempts = PyLong_FromLong(e->attempts);
    PyObject *url = PyUnicode_FromFormat("s3://%s/%s", bucket ? bucket : "", key ? key : "");
    PyObject *curl = PyLong_FromLong(e->curl_code);
    int bad = !code || !status || !attempts || !url || !curl || PyObject_SetAttrString(inst, "code", code) < 0 ||
              PyObject_SetAttrString(inst, "status", status) < 0 ||
              PyObject_SetAttrString(inst, "attempts", attempts) < 0 || PyObject_SetAttrString(inst, "url", url) < 0 ||
              PyObject_SetAttrString(inst, "curl_code", curl) < 0;
    Py_XDECREF(code);
    Py_XDECREF(status);
    Py_XDECREF(attempts);
    Py_XDECREF(url);
    Py_XDECREF(curl);
    if (!bad) PyErr_SetObject(cls, inst);
    Py_DECREF(inst);
    return NULL;
}

static int client_open(S3ClientObject *self)
{
    if (self->s3) return 1;
    PyErr_SetString(PyExc_ValueError, "S3Client is closed");
    return 0;
}

/* Bracket a blocking call: the client stays open while busy. */
#define S3_CALL(self, stmt)                 \
    do {                                    \
        (self)->busy++;                     \
        Py_BEGIN_ALLOW_THREADS stmt;        \
        Py_END_ALLOW_THREADS(self)->busy--; \
    } while (0)

/* --- S3Client -------------------------------------------------------------------------------- */

static int s3client_init(S3ClientObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "endpoint",   "region",          "access_key",   "secret_key",      "session_token",
                              "path_style", "max_connections", "max_attempts", "connect_timeout", "stall_timeout",
                              "verify_tls", "ca_file",         "backoff_base", "backoff_cap",     NULL };
    dc_s3_config c = dc_s3_config_default();
    c.region = NULL;
    double connect = 10.0, stall = 30.0, base = 0.1, cap = 20.0;
    int path_style = 0, verify = 1, maxc = 16, maxa = 5;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|zzzzzpiiddpzdd:S3Client", kwlist, &c.endpoint, &c.region,
                                     &c.access_key, &c.secret_key, &c.session_token, &path_style, &maxc, &maxa,
                                     &connect, &stall, &verify, &c.ca_file, &base, &cap))
        return -1;
    if (self->s3) {
        PyErr_SetString(PyExc_RuntimeError, "S3Client is already initialised");
        return -1;
    }
    if (maxc <= 0 || maxa <= 0 || connect <= 0 || stall <= 0 || base <= 0 || cap <= 0) {
        PyErr_SetString(PyExc_ValueError, "S3Client: max_connections, max_attempts and the timeouts must be > 0");
        return -1;
    }
    if (c.access_key && !c.secret_key) {
        PyErr_SetString(PyExc_ValueError, "S3Client: access_key given without secret_key");
        return -1;
    }
    c.path_style = path_style;
    c.max_connections = maxc;
    c.max_attempts = maxa;
    c.connect_timeout_s = connect;
    c.stall_timeout_s = stall;
    c.backoff_base_s = base;
    c.backoff_cap_s = cap;
    c.verify_tls = verify;
    dc_status st = dc_s3_init(&self->s3, &c);
    if (st) {
        dc_py_raise(dc_py_state_of_type(Py_TYPE(self)), st);
        return -1;
    }
    Py_XSETREF(self->endpoint, c.endpoint ? PyUnicode_FromString(c.endpoint) : Py_NewRef(Py_None));
    Py_XSETREF(self->region, PyUnicode_FromString(c.region ? c.region : "us-east-1"));
    self->path_style = path_style;
    self->anonymous = c.access_key == NULL;
    return self->endpoint && self->region ? 0 : -1;
}

static PyObject *s3client_get_range(S3ClientObject *self, PyObject *args)
{
    const char *bucket, *key;
    long long off, len;
    if (!PyArg_ParseTuple(args, "ssLL:get_range", &bucket, &key, &off, &len)) return NULL;
    if (!client_open(self)) return NULL;
    if (off < 0 || len < 0) return PyErr_Format(PyExc_ValueError, "get_range: offset and length must be >= 0");
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
    if (!out) return NULL;
    char *dst = PyBytes_AS_STRING(out); /* not yet shared: filled without the GIL */
    dc_status st;
    S3_CALL(self, st = dc_s3_get_range(self->s3, bucket, key, off, len, dst, NULL));
    if (st) {
        Py_DECREF(out);
        return raise_s3((PyObject *)self, st, bucket, key);
    }
    return out;
}

/* get_range_into(bucket, key, offset, buffer) -> object size: fills all of a writable buffer */
static PyObject *s3client_get_range_into(S3ClientObject *self, PyObject *args)
{
    const char *bucket, *key;
    long long off;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "ssLw*:get_range_into", &bucket, &key, &off, &b)) return NULL;
    if (!client_open(self)) {
        PyBuffer_Release(&b);
        return NULL;
    }
    int64_t total = -1;
    dc_status st;
    S3_CALL(self, st = dc_s3_get_range(self->s3, bucket, key, off, (int64_t)b.len, b.buf, &total));
    PyBuffer_Release(&b);
    if (st) return raise_s3((PyObject *)self, st, bucket, key);
    return PyLong_FromLongLong(total);
}

static PyObject *s3client_get(S3ClientObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "bucket", "key", "part_size", NULL };
    const char *bucket, *key;
    long long part = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ss|L:get", kwlist, &bucket, &key, &part)) return NULL;
    if (!client_open(self)) return NULL;
    void *data = NULL;
    int64_t size = 0;
    dc_status st;
    S3_CALL(self, st = dc_s3_get(self->s3, bucket, key, part, &data, &size));
    if (st) return raise_s3((PyObject *)self, st, bucket, key);
    PyObject *out = PyBytes_FromStringAndSize(data, (Py_ssize_t)size); /* one host copy into the bytes object */
    free(data);
    return out;
}

static PyObject *s3client_head(S3ClientObject *self, PyObject *args)
{
    const char *bucket, *key;
    if (!PyArg_ParseTuple(args, "ss:head", &bucket, &key)) return NULL;
    if (!client_open(self)) return NULL;
    int64_t size = 0;
    char etag[160] = "";
    dc_status st;
    S3_CALL(self, st = dc_s3_head(self->s3, bucket, key, &size, etag, sizeof etag));
    if (st) return raise_s3((PyObject *)self, st, bucket, key);
    return Py_BuildValue("(Ls)", (long long)size, etag);
}

/* list_page(bucket, prefix=None, delimiter=None, token=None, max_keys=0)
 *   -> ([(key, size)], [common prefix], next token or None) */
static PyObject *s3client_list_page(S3ClientObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "bucket", "prefix", "delimiter", "token", "max_keys", NULL };
    const char *bucket, *prefix = NULL, *delim = NULL, *token = NULL;
    int max_keys = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s|zzzi:list_page", kwlist, &bucket, &prefix, &delim, &token, &max_keys))
        return NULL;
    if (!client_open(self)) return NULL;
    dc_s3_list_page p;
    dc_status st;
    S3_CALL(self, st = dc_s3_list(self->s3, bucket, prefix, delim, token, max_keys, &p));
    if (st) return raise_s3((PyObject *)self, st, bucket, prefix);
    PyObject *keys = PyList_New(p.n), *prefixes = PyList_New(p.nprefixes), *tok = NULL, *out = NULL;
    if (!keys || !prefixes) goto done;
    for (int i = 0; i < p.n; i++) {
        PyObject *k = PyUnicode_DecodeUTF8(p.keys[i], (Py_ssize_t)strlen(p.keys[i]), "surrogateescape");
        PyObject *t = k ? Py_BuildValue("(NL)", k, (long long)p.sizes[i]) : NULL;
        if (!t) goto done;
        PyList_SET_ITEM(keys, i, t);
    }
    for (int i = 0; i < p.nprefixes; i++) {
        PyObject *k = PyUnicode_DecodeUTF8(p.prefixes[i], (Py_ssize_t)strlen(p.prefixes[i]), "surrogateescape");
        if (!k) goto done;
        PyList_SET_ITEM(prefixes, i, k);
    }
    tok = p.next_token ? PyUnicode_FromString(p.next_token) : Py_NewRef(Py_None);
    if (!tok) goto done;
    out = PyTuple_Pack(3, keys, prefixes, tok);
done:
    Py_XDECREF(keys);
    Py_XDECREF(prefixes);
    Py_XDECREF(tok);
    dc_s3_list_page_clear(&p);
    return out;
}

static PyObject *s3client_put(S3ClientObject *self, PyObject *args)
{
    const char *bucket, *key;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "ssy*:put", &bucket, &key, &b)) return NULL;
    if (!client_open(self)) {
        PyBuffer_Release(&b);
        return NULL;
    }
    dc_status st;
    S3_CALL(self, st = dc_s3_put(self->s3, bucket, key, b.buf, (size_t)b.len));
    PyBuffer_Release(&b);
    if (st) return raise_s3((PyObject *)self, st, bucket, key);
    Py_RETURN_NONE;
}

static PyObject *s3client_delete(S3ClientObject *self, PyObject *args)
{
    const char *bucket, *key;
    if (!PyArg_ParseTuple(args, "ss:delete", &bucket, &key)) return NULL;
    if (!client_open(self)) return NULL;
    dc_status st;
    S3_CALL(self, st = dc_s3_delete(self->s3, bucket, key));
    if (st) return raise_s3((PyObject *)self, st, bucket, key);
    Py_RETURN_NONE;
}

static PyObject *s3client_upload(S3ClientObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "bucket", "key", "part_size", "max_inflight", NULL };
    const char *bucket, *key;
    long long part = 0;
    int inflight = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ss|Li:upload", kwlist, &bucket, &key, &part, &inflight)) return NULL;
    if (!client_open(self)) return NULL;
    PyTypeObject *tp = (PyTypeObject *)module_attr((PyObject *)self, "S3Upload");
    if (!tp) return NULL;
    dc_s3_upload *up = NULL;
    dc_status st = dc_s3_upload_init(self->s3, bucket, key, part, inflight, &up); /* no I/O: memory only */
    if (st) return raise_s3((PyObject *)self, st, bucket, key);
    S3UploadObject *u = PyObject_New(S3UploadObject, tp);
    if (!u) {
        dc_s3_upload_abort(up);
        return NULL;
    }
    u->client = (S3ClientObject *)Py_NewRef(self);
    u->up = up;
    u->busy = 0;
    u->url = PyUnicode_FromFormat("s3://%s/%s", bucket, key);
    self->uploads++;
    if (!u->url) {
        Py_DECREF(u);
        return NULL;
    }
    return (PyObject *)u;
}

static PyObject *s3client_stats(S3ClientObject *self, PyObject *unused)
{
    if (!client_open(self)) return NULL;
    dc_s3_stats s;
    dc_s3_get_stats(self->s3, &s);
    return Py_BuildValue("{sLsLsLsLsL}", "requests", (long long)s.requests, "retries", (long long)s.retries, "bytes_in",
                         (long long)s.bytes_in, "bytes_out", (long long)s.bytes_out, "connections",
                         (long long)s.connections);
}

static PyObject *s3client_close(S3ClientObject *self, PyObject *unused)
{
    if (self->busy || self->uploads)
        return PyErr_Format(PyExc_RuntimeError, "S3Client.close: %d call(s) in flight and %d upload(s) open",
                            self->busy, self->uploads);
    dc_s3 *s = self->s3;
    self->s3 = NULL;
    Py_BEGIN_ALLOW_THREADS dc_s3_free(s); /* joins the transfer thread */
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

static PyObject *s3client_repr(S3ClientObject *self)
{
    /* never the keys or the token */
    return PyUnicode_FromFormat("S3Client(endpoint=%R, region=%R, path_style=%s, anonymous=%s%s)",
                                self->endpoint ? self->endpoint : Py_None, self->region ? self->region : Py_None,
                                self->path_style ? "True" : "False", self->anonymous ? "True" : "False",
                                self->s3 ? "" : ", closed");
}

static PyObject *s3client_get_closed(S3ClientObject *self, void *unused)
{
    return PyBool_FromLong(self->s3 == NULL);
}

static PyObject *s3client_get_endpoint(S3ClientObject *self, void *unused)
{
    return Py_NewRef(self->endpoint ? self->endpoint : Py_None);
}

static PyObject *s3client_get_region(S3ClientObject *self, void *unused)
{
    return Py_NewRef(self->region ? self->region : Py_None);
}

static void s3client_dealloc(S3ClientObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    dc_s3 *s = self->s3;
    self->s3 = NULL;
    if (s) {
        Py_BEGIN_ALLOW_THREADS dc_s3_free(s);
        Py_END_ALLOW_THREADS
    }
    Py_XDECREF(self->endpoint);
    Py_XDECREF(self->region);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

dc_s3 *dc_py_s3_client(PyObject *obj)
{
    for (PyTypeObject *tp = obj ? Py_TYPE(obj) : NULL; tp; tp = tp->tp_base) {
        if (PyType_GetSlot(tp, Py_tp_dealloc) == (void *)s3client_dealloc) {
            S3ClientObject *c = (S3ClientObject *)obj;
            if (!c->s3) {
                PyErr_SetString(PyExc_ValueError, "S3Client is closed");
                return NULL;
            }
            return c->s3;
        }
        if (!(tp->tp_flags & Py_TPFLAGS_HEAPTYPE)) break; /* PyType_GetSlot needs heap types */
    }
    PyErr_Format(PyExc_TypeError, "expected a dutycycle._C.S3Client, got %.100s", obj ? Py_TYPE(obj)->tp_name : "NULL");
    return NULL;
}

static PyMethodDef s3client_methods[] = {
    { "get_range", (PyCFunction)s3client_get_range, METH_VARARGS,
      "get_range(bucket, key, offset, length) -> bytes (exactly length bytes or S3Error)" },
    { "get_range_into", (PyCFunction)s3client_get_range_into, METH_VARARGS,
      "get_range_into(bucket, key, offset, buffer) -> object size: fill a writable buffer from offset" },
    { "get", (PyCFunction)(void (*)(void))s3client_get, METH_VARARGS | METH_KEYWORDS,
      "get(bucket, key, part_size=0) -> bytes: the whole object, large ones as parallel ranges" },
    { "head", (PyCFunction)s3client_head, METH_VARARGS, "head(bucket, key) -> (size, etag)" },
    { "list_page", (PyCFunction)(void (*)(void))s3client_list_page, METH_VARARGS | METH_KEYWORDS,
      "list_page(bucket, prefix=None, delimiter=None, token=None, max_keys=0) -> ([(key, size)], [prefix], "
      "next_token or None): one ListObjectsV2 page" },
    { "put", (PyCFunction)s3client_put, METH_VARARGS, "put(bucket, key, data): one PUT (<= 5 GiB)" },
    { "delete", (PyCFunction)s3client_delete, METH_VARARGS, "delete(bucket, key)" },
    { "upload", (PyCFunction)(void (*)(void))s3client_upload, METH_VARARGS | METH_KEYWORDS,
      "upload(bucket, key, part_size=0, max_inflight=0) -> S3Upload: a multipart upload" },
    { "stats", (PyCFunction)s3client_stats, METH_NOARGS,
      "stats() -> dict(requests, retries, bytes_in, bytes_out, connections) since creation" },
    { "close", (PyCFunction)s3client_close, METH_NOARGS, "stop the transfer thread and free the client" },
    { NULL, NULL, 0, NULL },
};

static PyGetSetDef s3client_getset[] = {
    { "closed", (getter)s3client_get_closed, NULL, NULL, NULL },
    { "endpoint", (getter)s3client_get_endpoint, NULL, NULL, NULL },
    { "region", (getter)s3client_get_region, NULL, NULL, NULL },
    { NULL, NULL, NULL, NULL, NULL },
};

static PyType_Slot s3client_slots[] = {
    { Py_tp_init, s3client_init },
    { Py_tp_new, PyType_GenericNew },
    { Py_tp_dealloc, s3client_dealloc },
    { Py_tp_methods, s3client_methods },
    { Py_tp_getset, s3client_getset },
    { Py_tp_repr, s3client_repr },
    { Py_tp_doc, "S3Client(endpoint=None, region=None, access_key=None, secret_key=None, session_token=None, "
                 "path_style=False, max_connections=16, max_attempts=5, connect_timeout=10.0, stall_timeout=30.0, "
                 "verify_tls=True, ca_file=None, backoff_base=0.1, backoff_cap=20.0): an S3 client on one curl multi "
                 "handle and one transfer thread; every call releases the GIL" },
    { 0, NULL },
};

static PyType_Spec s3client_spec = {
    .name = "dutycycle._C.S3Client",
    .basicsize = sizeof(S3ClientObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = s3client_slots,
};

/* --- S3Upload -------------------------------------------------------------------------------- */

static int upload_usable(S3UploadObject *self)
{
    if (!self->up) {
        PyErr_Format(PyExc_ValueError, "S3Upload %R is already finished or aborted", self->url);
        return 0;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "S3Upload is in use by another thread");
        return 0;
    }
    return 1;
}

/* The bucket and key for an error's .url, from "s3://bucket/key". */
static PyObject *upload_raise(S3UploadObject *self, dc_status st)
{
    const char *u = PyUnicode_AsUTF8(self->url);
    if (!u) return NULL;
    const char *b = u + 5, *slash = strchr(b, '/');
    char bucket[256];
    snprintf(bucket, sizeof bucket, "%.*s", slash ? (int)(slash - b) : (int)strlen(b), b);
    return raise_s3((PyObject *)self->client, st, bucket, slash ? slash + 1 : "");
}

static void upload_done(S3UploadObject *self)
{
    self->up = NULL;
    self->client->uploads--;
}

static PyObject *s3upload_write(S3UploadObject *self, PyObject *arg)
{
    if (!upload_usable(self)) return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    dc_status st;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS st = dc_s3_upload_write(self->up, b.buf, (size_t)b.len); /* copies into parts */
    Py_END_ALLOW_THREADS self->busy = 0;
    Py_ssize_t n = b.len;
    PyBuffer_Release(&b);
    if (st) return upload_raise(self, st); /* the upload was aborted on the server; abort() frees it */
    return PyLong_FromSsize_t(n);
}

static PyObject *s3upload_finish(S3UploadObject *self, PyObject *unused)
{
    if (!upload_usable(self)) return NULL;
    dc_s3_upload *up = self->up;
    upload_done(self);
    dc_status st;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS st = dc_s3_upload_finish(up); /* frees up whatever the outcome */
    Py_END_ALLOW_THREADS self->busy = 0;
    if (st) return upload_raise(self, st);
    Py_RETURN_NONE;
}

static PyObject *s3upload_abort(S3UploadObject *self, PyObject *unused)
{
    if (!self->up) Py_RETURN_NONE; /* aborting twice (or after finish) is harmless */
    if (!upload_usable(self)) return NULL;
    dc_s3_upload *up = self->up;
    upload_done(self);
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS dc_s3_upload_abort(up);
    Py_END_ALLOW_THREADS self->busy = 0;
    Py_RETURN_NONE;
}

static PyObject *s3upload_get_done(S3UploadObject *self, void *unused)
{
    return PyBool_FromLong(self->up == NULL);
}

static PyObject *s3upload_repr(S3UploadObject *self)
{
    return PyUnicode_FromFormat("S3Upload(%R%s)", self->url, self->up ? "" : ", done");
}

static void s3upload_dealloc(S3UploadObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->up) { /* dropped without finish(): never leave an orphaned upload */
        dc_s3_upload *up = self->up;
        upload_done(self);
        Py_BEGIN_ALLOW_THREADS dc_s3_upload_abort(up);
        Py_END_ALLOW_THREADS
    }
    Py_XDECREF(self->client);
    Py_XDECREF(self->url);
    PyObject_Free(self);
    Py_DECREF(tp);
}

static PyMethodDef s3upload_methods[] = {
    { "write", (PyCFunction)s3upload_write, METH_O,
      "write(data) -> len(data): buffer into parts; full parts upload in the background" },
    { "finish", (PyCFunction)s3upload_finish, METH_NOARGS,
      "upload the last part and complete (one PUT for an object smaller than a part); aborts on failure" },
    { "abort", (PyCFunction)s3upload_abort, METH_NOARGS, "abort the upload: no parts are left on the server" },
    { NULL, NULL, 0, NULL },
};

static PyGetSetDef s3upload_getset[] = {
    { "done", (getter)s3upload_get_done, NULL, NULL, NULL },
    { NULL, NULL, NULL, NULL, NULL },
};

static PyType_Slot s3upload_slots[] = {
    { Py_tp_dealloc, s3upload_dealloc },
    { Py_tp_methods, s3upload_methods },
    { Py_tp_getset, s3upload_getset },
    { Py_tp_repr, s3upload_repr },
    { Py_tp_doc, "A multipart upload from S3Client.upload(): write(), then finish() or abort()" },
    { 0, NULL },
};

static PyType_Spec s3upload_spec = {
    .name = "dutycycle._C.S3Upload",
    .basicsize = sizeof(S3UploadObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = s3upload_slots,
};

/* sigv4_sign(method, path, query, headers, payload_hash, amz_date, region, service, access_key,
 *            secret_key) -> (authorization, canonical_request, string_to_sign): the signer on its
 * own, for the published test vectors and comparisons with botocore. */
static PyObject *py_sigv4_sign(PyObject *m, PyObject *args)
{
    dc_sigv4_request r = { 0 };
    PyObject *hl;
    if (!PyArg_ParseTuple(args, "sszO!ssssss:sigv4_sign", &r.method, &r.path, &r.query, &PyList_Type, &hl,
                          &r.payload_hash, &r.amz_date, &r.region, &r.service, &r.access_key, &r.secret_key))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(hl);
    const char **hv = PyMem_Calloc((size_t)n + 1, sizeof *hv);
    if (!hv) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!(hv[i] = PyUnicode_AsUTF8(PyList_GET_ITEM(hl, i)))) {
            PyMem_Free(hv);
            return NULL;
        }
    }
    r.headers = hv;
    size_t cap = 16384;
    char *auth = PyMem_Malloc(cap), *creq = PyMem_Malloc(cap), *sts = PyMem_Malloc(cap);
    PyObject *out = NULL;
    if (!auth || !creq || !sts) {
        PyErr_NoMemory();
    } else {
        dc_status st = dc_sigv4_sign(&r, auth, cap, creq, cap, sts, cap);
        if (st)
            dc_py_raise(dc_py_state_of(m), st);
        else
            out = Py_BuildValue("(sss)", auth, creq, sts);
    }
    PyMem_Free(auth);
    PyMem_Free(creq);
    PyMem_Free(sts);
    PyMem_Free(hv);
    return out;
}

static PyMethodDef s3_functions[] = {
    { "sigv4_sign", py_sigv4_sign, METH_VARARGS,
      "sigv4_sign(method, path, query, headers, payload_hash, amz_date, region, service, access_key, secret_key) "
      "-> (authorization, canonical_request, string_to_sign)" },
    { NULL, NULL, 0, NULL },
};

int dc_py_init_s3(PyObject *m)
{
    if (PyModule_AddFunctions(m, s3_functions) < 0) return -1;
    dc_py_state *S = dc_py_state_of(m);
    if (!S->exc_by_status[DC_ERR_IO]) {
        PyErr_SetString(PyExc_RuntimeError, "dc_py_init_s3: DataIOError must exist first");
        return -1;
    }
    PyObject *bases = PyTuple_Pack(1, S->exc_by_status[DC_ERR_IO]);
    if (!bases) return -1;
    PyObject *e = PyErr_NewExceptionWithDoc(
        "dutycycle.s3.S3Error",
        "An S3 request failed (after its retries). Attributes: code (S3's error code, '' if none), status (HTTP "
        "status, 0 for a transport error), url ('s3://bucket/key'), attempts, curl_code.",
        bases, NULL);
    Py_DECREF(bases);
    if (!e) return -1;
    int r = PyModule_AddObjectRef(m, "S3Error", e);
    Py_DECREF(e);
    if (r < 0) return -1;
    PyObject *tp = PyType_FromModuleAndSpec(m, &s3client_spec, NULL);
    if (!tp) return -1;
    r = PyModule_AddObjectRef(m, "S3Client", tp);
    Py_DECREF(tp);
    if (r < 0) return -1;
    tp = PyType_FromModuleAndSpec(m, &s3upload_spec, NULL);
    if (!tp) return -1;
    r = PyModule_AddObjectRef(m, "S3Upload", tp);
    Py_DECREF(tp);
    return r;
}
