/* decode_py.c: module-level _C functions over the shard decoders of csrc/loader/shards.h (the tar
 * parser, dc_wds_split, .npy, JPEG, brace patterns), one call each: for tests, and for users who
 * decode single samples themselves.
 *
 * Each function pulls the buffers and options out of its Python arguments first, runs the C work
 * with the GIL released (no PyObject touched meanwhile; the Py_buffer keeps the input alive), then
 * builds the result. Outputs are copied into new bytes objects. Contract of every function: a new
 * reference, or NULL with an exception set (DataFormatError for malformed data, ValueError for bad
 * options, through dc_py_raise). */
#include "py.h" /* Python.h first */

#include "../loader/shards.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    char *name;
    size_t name_len;
    int64_t offset, size;
    uint8_t *data;
} taken_member;

/* Parse a whole archive, fed in `chunk`-byte pieces (0: at once); the members in a malloc'd array. */
static dc_status parse_all(const uint8_t *buf, size_t len, size_t chunk, taken_member **out, size_t *n)
{
    dc_tar *t = NULL;
    taken_member *v = NULL;
    size_t nv = 0, cap = 0;
    dc_status st = dc_tar_init(&t, 0);
    if (st) return st;
    if (chunk == 0) chunk = len ? len : 1;
    for (size_t pos = 0; st == DC_OK;) {
        if (pos < len) {
            size_t k = len - pos < chunk ? len - pos : chunk;
            st = dc_tar_feed(t, buf + pos, k);
            pos += k;
        }
        int have = 1;
        while (st == DC_OK && have) {
            dc_tar_member m;
            st = dc_tar_next(t, &m, &have);
            if (st || !have) break;
            if (nv == cap) {
                size_t nc = cap ? cap * 2 : 16;
                taken_member *nvp = realloc(v, nc * sizeof *v);
                if (!nvp) {
                    st = dc_error(DC_ERR_NOMEM, "tar_members: out of memory");
                    break;
                }
                v = nvp;
                cap = nc;
            }
            taken_member *tm = &v[nv];
            tm->name = malloc(m.name_len + 1);
            if (!tm->name) {
                st = dc_error(DC_ERR_NOMEM, "tar_members: out of memory");
                break;
            }
            memcpy(tm->name, m.name, m.name_len + 1);
            tm->name_len = m.name_len;
            tm->offset = m.offset;
            tm->size = m.size;
            tm->data = dc_tar_take(t);
            nv++;
        }
        if (st == DC_OK && pos >= len) {
            st = dc_tar_finish(t);
            break;
        }
    }
    dc_tar_free(t);
    *out = v;
    *n = nv;
    return st;
}

static void free_members(taken_member *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].name);
        free(v[i].data);
    }
    free(v);
}

/* tar_members(data, chunk=0) -> [(name, offset, bytes)] */
static PyObject *py_tar_members(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "data", "chunk", NULL };
    Py_buffer b;
    Py_ssize_t chunk = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*|n:tar_members", kwlist, &b, &chunk)) return NULL;
    if (chunk < 0) {
        PyBuffer_Release(&b);
        return PyErr_Format(PyExc_ValueError, "tar_members: chunk must be >= 0, got %zd", chunk);
    }
    taken_member *v = NULL;
    size_t n = 0;
    dc_status st;
    Py_BEGIN_ALLOW_THREADS st = parse_all(b.buf, (size_t)b.len, (size_t)chunk, &v, &n);
    Py_END_ALLOW_THREADS PyBuffer_Release(&b);
    if (st) {
        free_members(v, n);
        return dc_py_raise(dc_py_state_of(m), st);
    }
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list && i < n; i++) {
        PyObject *item =
            Py_BuildValue("(NLy#)", PyUnicode_DecodeUTF8(v[i].name, (Py_ssize_t)v[i].name_len, "surrogateescape"),
                          (long long)v[i].offset, (const char *)v[i].data, (Py_ssize_t)v[i].size);
        if (!item)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    free_members(v, n);
    return list;
}

/* wds_split(name) -> (key, field) or None */
static PyObject *py_wds_split(PyObject *m, PyObject *arg)
{
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(arg, &n);
    if (!s) return NULL;
    size_t key_len;
    const char *field;
    if (!dc_wds_split(s, (size_t)n, &key_len, &field)) Py_RETURN_NONE;
    return Py_BuildValue("(s#s#)", s, (Py_ssize_t)key_len, field, (Py_ssize_t)(s + n - field));
}

/* npy_decode(data) -> (dtype name, shape, bytes) */
static PyObject *py_npy_decode(PyObject *m, PyObject *arg)
{
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    dc_npy_info info;
    dc_status st;
    Py_BEGIN_ALLOW_THREADS st = dc_npy_parse(b.buf, (size_t)b.len, &info);
    Py_END_ALLOW_THREADS if (st)
    {
        PyBuffer_Release(&b);
        return dc_py_raise(dc_py_state_of(m), st);
    }
    PyObject *shape = PyTuple_New(info.ndim);
    for (int i = 0; shape && i < info.ndim; i++) {
        PyObject *d = PyLong_FromLongLong((long long)info.shape[i]);
        if (!d)
            Py_CLEAR(shape);
        else
            PyTuple_SET_ITEM(shape, i, d);
    }
    PyObject *r = shape ? Py_BuildValue("(sNy#)", dc_dtype_name(info.dtype), shape,
                                        (const char *)b.buf + info.data_offset, (Py_ssize_t)info.nbytes)
                        : NULL;
    PyBuffer_Release(&b);
    return r;
}

/* jpeg_info(data) -> (height, width, components) */
static PyObject *py_jpeg_info(PyObject *m, PyObject *arg)
{
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    int h, w, c;
    dc_status st;
    Py_BEGIN_ALLOW_THREADS st = dc_jpeg_info(b.buf, (size_t)b.len, &h, &w, &c);
    Py_END_ALLOW_THREADS PyBuffer_Release(&b);
    if (st) return dc_py_raise(dc_py_state_of(m), st);
    return Py_BuildValue("(iii)", h, w, c);
}

/* A tuple of `n` floats into out; 0 with TypeError otherwise. */
static int float_tuple(PyObject *o, float *out, int n, const char *what)
{
    PyObject *seq = PySequence_Fast(o, "");
    if (!seq || PySequence_Fast_GET_SIZE(seq) != n) {
        Py_XDECREF(seq);
        PyErr_Format(PyExc_TypeError, "jpeg_decode: %s must be a sequence of %d numbers", what, n);
        return 0;
    }
    for (int i = 0; i < n; i++) {
        double v = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (v == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return 0;
        }
        out[i] = (float)v;
    }
    Py_DECREF(seq);
    return 1;
}

/* jpeg_decode(data, resize=0, crop="none", size=(0, 0), scale=(0.08, 1.0), ratio=(3/4, 4/3),
 *             flip_p=0.0, dtype="uint8", mean=(0, 0, 0), std=(1, 1, 1), seed=0) -> (bytes, shape)
 * shape: (h, w, 3) for uint8, (3, h, w) for float32/bfloat16 (bfloat16 as raw 16-bit words). */
static PyObject *py_jpeg_decode(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "data",   "resize", "crop", "size", "scale", "ratio",
                              "flip_p", "dtype",  "mean", "std",  "seed",  NULL };
    Py_buffer b;
    int resize = 0;
    const char *crop = "none", *dtype = "uint8";
    PyObject *size = NULL, *scale = NULL, *ratio = NULL, *mean = NULL, *std = NULL;
    double flip_p = 0;
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*|isOOOdsOOK:jpeg_decode", kwlist, &b, &resize, &crop, &size, &scale,
                                     &ratio, &flip_p, &dtype, &mean, &std, &seed))
        return NULL;
    dc_image_opts o = { .resize = resize,
                        .scale = { 0.08f, 1.0f },
                        .ratio = { 3.0f / 4.0f, 4.0f / 3.0f },
                        .flip_p = (float)flip_p,
                        .std = { 1, 1, 1 },
                        .seed = seed };
    float hw[2] = { 0, 0 };
    if (!strcmp(crop, "none"))
        o.crop = DC_CROP_NONE;
    else if (!strcmp(crop, "center"))
        o.crop = DC_CROP_CENTER;
    else if (!strcmp(crop, "random"))
        o.crop = DC_CROP_RANDOM;
    else if (!strcmp(crop, "random_resized"))
        o.crop = DC_CROP_RANDOM_RESIZED;
    else {
        PyErr_Format(PyExc_ValueError, "jpeg_decode: crop must be none, center, random or random_resized, got '%s'",
                     crop);
        goto error;
    }
    if (!strcmp(dtype, "uint8"))
        o.out_dtype = DC_UINT8;
    else if (!strcmp(dtype, "float32"))
        o.out_dtype = DC_FLOAT32;
    else if (!strcmp(dtype, "bfloat16"))
        o.out_dtype = DC_BFLOAT16;
    else {
        PyErr_Format(PyExc_ValueError, "jpeg_decode: dtype must be uint8, float32 or bfloat16, got '%s'", dtype);
        goto error;
    }
    if (size && PyLong_Check(size)) {
        long v = PyLong_AsLong(size);
        if (v == -1 && PyErr_Occurred()) goto error;
        hw[0] = hw[1] = (float)v;
    } else if (size && !float_tuple(size, hw, 2, "size")) {
        goto error;
    }
    o.crop_h = (int)hw[0];
    o.crop_w = (int)hw[1];
    if ((scale && !float_tuple(scale, o.scale, 2, "scale")) || (ratio && !float_tuple(ratio, o.ratio, 2, "ratio")) ||
        (mean && !float_tuple(mean, o.mean, 3, "mean")) || (std && !float_tuple(std, o.std, 3, "std")))
        goto error;

    void *out = NULL;
    int oh = 0, ow = 0;
    dc_status st;
    Py_BEGIN_ALLOW_THREADS st = dc_jpeg_decode(b.buf, (size_t)b.len, &o, &out, &oh, &ow);
    Py_END_ALLOW_THREADS PyBuffer_Release(&b);
    if (st) return dc_py_raise(dc_py_state_of(m), st);
    size_t item = o.out_dtype == DC_UINT8 ? 1 : o.out_dtype == DC_FLOAT32 ? 4 : 2;
    PyObject *r;
    if (o.out_dtype == DC_UINT8)
        r = Py_BuildValue("(y#(iii))", (const char *)out, (Py_ssize_t)((size_t)oh * ow * 3 * item), oh, ow, 3);
    else
        r = Py_BuildValue("(y#(iii))", (const char *)out, (Py_ssize_t)((size_t)oh * ow * 3 * item), 3, oh, ow);
    free(out);
    return r;
error:
    PyBuffer_Release(&b);
    return NULL;
}

/* expand_braces(pattern, max_count=0) -> [str] */
static PyObject *py_expand_braces(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "pattern", "max_count", NULL };
    PyObject *pat;
    long long max_count = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "U|L:expand_braces", kwlist, &pat, &max_count)) return NULL;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(pat, &n);
    if (!s) return NULL;
    if ((size_t)n != strlen(s)) return PyErr_Format(PyExc_ValueError, "expand_braces: the pattern contains a NUL");
    char *copy = malloc((size_t)n + 1); /* the str's UTF-8 is not ours to read without the GIL */
    if (!copy) return PyErr_NoMemory();
    memcpy(copy, s, (size_t)n + 1);
    char **list = NULL;
    int64_t count = 0;
    dc_status st;
    Py_BEGIN_ALLOW_THREADS st = dc_pattern_expand(copy, (int64_t)max_count, &list, &count);
    Py_END_ALLOW_THREADS free(copy);
    if (st) return dc_py_raise(dc_py_state_of(m), st);
    PyObject *r = PyList_New((Py_ssize_t)count);
    for (int64_t i = 0; r && i < count; i++) {
        PyObject *v = PyUnicode_DecodeUTF8(list[i], (Py_ssize_t)strlen(list[i]), "surrogateescape");
        if (!v)
            Py_CLEAR(r);
        else
            PyList_SET_ITEM(r, (Py_ssize_t)i, v);
    }
    dc_pattern_free(list, count);
    return r;
}

static PyMethodDef decode_functions[] = {
    { "tar_members", (PyCFunction)(void (*)(void))py_tar_members, METH_VARARGS | METH_KEYWORDS,
      "tar_members(data, chunk=0) -> [(name, offset, bytes)]: the regular members of a tar archive, fed to the "
      "streaming parser in chunk-byte pieces (0: at once)" },
    { "wds_split", py_wds_split, METH_O, "wds_split(name) -> (key, field) or None (webdataset's base_plus_ext)" },
    { "npy_decode", py_npy_decode, METH_O, "npy_decode(data) -> (dtype name, shape, bytes) of a .npy file" },
    { "jpeg_info", py_jpeg_info, METH_O, "jpeg_info(data) -> (height, width, components) from the header" },
    { "jpeg_decode", (PyCFunction)(void (*)(void))py_jpeg_decode, METH_VARARGS | METH_KEYWORDS,
      "jpeg_decode(data, resize=0, crop='none', size=(0, 0), scale=(0.08, 1.0), ratio=(3/4, 4/3), flip_p=0.0, "
      "dtype='uint8', mean=(0, 0, 0), std=(1, 1, 1), seed=0) -> (bytes, shape): decode, resize, crop, flip, "
      "normalise" },
    { "expand_braces", (PyCFunction)(void (*)(void))py_expand_braces, METH_VARARGS | METH_KEYWORDS,
      "expand_braces(pattern, max_count=0) -> [str] (the braceexpand package's semantics)" },
    { NULL, NULL, 0, NULL },
};

int dc_py_init_decode(PyObject *module)
{
    return PyModule_AddFunctions(module, decode_functions);
}
