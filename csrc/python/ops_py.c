/* ops_py.c: the binding's op list, generated from ops.def.
 *
 * `dutycycle._C.ops` gets one function per op of the UNARY, BINARY and COMPARE families, named as
 * in ops.def (`ops.exp(x)`, `ops.add(a, b)`), plus an in-place form of each BINARY op (`ops.add_(t,
 * other)`); Python never handles op ids. `ops.table()` describes every op of the table (family,
 * backward, saves, params, the devices with a kernel) for the cross-device op test. */
#include "py.h"

/* `self` of each generated function is (the _C module, the op id): the module's state holds the
 * types and exceptions the result needs. */
static int op_of(PyObject *self)
{
    return (int)PyLong_AsLong(PyTuple_GET_ITEM(self, 1));
}

static PyObject *op_unary(PyObject *self, PyObject *arg)
{
    PyObject *m = PyTuple_GET_ITEM(self, 0);
    dc_tensor *x = dc_py_tensor(arg, dc_op_names[op_of(self)]), *out;
    if (!x) return NULL;
    RUN_WRAP(dc_unary(&out, (dc_op)op_of(self), x), out);
}

static PyObject *op_binary(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *m = PyTuple_GET_ITEM(self, 0);
    int op = op_of(self);
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "%s() takes 2 tensors (%zd given)", dc_op_names[op], nargs);
    dc_tensor *a = dc_py_tensor(args[0], dc_op_names[op]), *b = a ? dc_py_tensor(args[1], dc_op_names[op]) : NULL;
    if (!b) return NULL;
    dc_tensor *out;
    RUN_WRAP(dc_binary(&out, (dc_op)op, a, b), out);
}

static PyObject *op_binary_(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *m = PyTuple_GET_ITEM(self, 0);
    int op = op_of(self);
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "%s_() takes 2 tensors (%zd given)", dc_op_names[op], nargs);
    dc_tensor *t = dc_py_tensor(args[0], dc_op_names[op]), *o = t ? dc_py_tensor(args[1], dc_op_names[op]) : NULL;
    if (!o) return NULL;
    RUN(dc_binary_((dc_op)op, t, o));
    Py_RETURN_NONE;
}

/* One PyMethodDef per generated function (they must outlive the module); names from ops.def. */
static PyMethodDef op_defs[DC_OP_COUNT] = {
#define DC_OP(id, name, fam, kern, bwd, saves, params, node) [DC_OP_##id] = { name, NULL, 0, NULL },
#include "../core/ops.def"
#undef DC_OP
};
static PyMethodDef op_defs_inplace[DC_OP_COUNT] = {
#define DC_OP(id, name, fam, kern, bwd, saves, params, node) [DC_OP_##id] = { name "_", NULL, 0, NULL },
#include "../core/ops.def"
#undef DC_OP
};
_Static_assert(sizeof(op_defs) / sizeof(op_defs[0]) == DC_OP_COUNT, "op_defs must cover every dc_op");

static PyObject *ops_table(PyObject *mod, PyObject *noargs)
{
    (void)mod;
    (void)noargs;
    static const char *saves_names[] = { "none", "input", "output" };
    PyObject *list = PyList_New(0);
    for (int k = 0; list && k < DC_OP_COUNT; k++) {
        const dc_op_info_t *info = &dc_op_info[k];
        PyObject *devs = PyList_New(0);
        for (int d = 0; devs && d < DC_DEVICE_TYPE_COUNT; d++) {
            if (!dc_op_has_kernel(k, d)) continue;
            PyObject *n = PyUnicode_FromString(dc_device_type_name(d));
            if (!n || PyList_Append(devs, n) < 0) Py_CLEAR(devs);
            Py_XDECREF(n);
        }
        PyObject *row =
            devs ? Py_BuildValue("{s:s,s:s,s:z,s:s,s:s,s:s,s:N}", "name", info->name, "family",
                                 dc_op_family_names[info->family], "backward",
                                 info->backward == DC_OP_NONE ? NULL : dc_op_names[info->backward], "saves",
                                 saves_names[info->saves], "params", info->params, "node", info->node, "devices", devs)
                 : NULL;
        if (!row || PyList_Append(list, row) < 0) Py_CLEAR(list);
        Py_XDECREF(row);
    }
    return list;
}

static PyMethodDef table_def = { "table", ops_table, METH_NOARGS,
                                 "table() -> list of dicts: every op of ops.def and the devices with a kernel" };

static int add_fn(PyObject *module, PyObject *ops, PyMethodDef *def, int op)
{
    PyObject *self = Py_BuildValue("(Oi)", module, op);
    PyObject *fn = self ? PyCFunction_NewEx(def, self, NULL) : NULL;
    Py_XDECREF(self);
    if (!fn) return -1;
    int rc = PyModule_AddObjectRef(ops, def->ml_name, fn);
    Py_DECREF(fn);
    return rc;
}

int dc_py_init_ops(PyObject *module)
{
    PyObject *ops = PyModule_New("dutycycle._C.ops");
    if (!ops) return -1;
    for (int k = 0; k < DC_OP_COUNT; k++) {
        dc_op_family_t fam = dc_op_info[k].family;
        if (fam == DC_FAM_UNARY) {
            op_defs[k].ml_meth = op_unary;
            op_defs[k].ml_flags = METH_O;
        } else if (fam == DC_FAM_BINARY || fam == DC_FAM_COMPARE) {
            op_defs[k].ml_meth = (PyCFunction)(void (*)(void))op_binary;
            op_defs[k].ml_flags = METH_FASTCALL;
        } else {
            continue;
        }
        if (add_fn(module, ops, &op_defs[k], k) < 0) goto error;
        if (fam == DC_FAM_BINARY) {
            op_defs_inplace[k].ml_meth = (PyCFunction)(void (*)(void))op_binary_;
            op_defs_inplace[k].ml_flags = METH_FASTCALL;
            if (add_fn(module, ops, &op_defs_inplace[k], k) < 0) goto error;
        }
    }
    PyObject *table = PyCFunction_NewEx(&table_def, NULL, NULL);
    if (!table || PyModule_AddObjectRef(ops, "table", table) < 0) {
        Py_XDECREF(table);
        goto error;
    }
    Py_DECREF(table);
    if (PyModule_AddObjectRef(module, "ops", ops) < 0) goto error;
    Py_DECREF(ops);
    return 0;
error:
    Py_DECREF(ops);
    return -1;
}
