/* py.h: what the binding files share: the tensor object layout, wrapping, and status -> exception.
 * Contract of every function returning PyObject*: a new reference, or NULL with an exception set. */
#ifndef DC_PY_H
#define DC_PY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "../autograd/autograd.h"
#include "../core/ops.h"

/* Release the GIL around a pure-C op on tensors, marking it in flight (the threading rule is in
 * csrc/core/tensor.h): a `t.data = x` / `t.grad = g` in another thread waits for it to finish. */
#define DC_BEGIN_OP                                    \
    {                                                  \
        PyThreadState *dc_save_ = PyEval_SaveThread(); \
        dc_inflight_begin();
#define DC_END_OP                   \
    dc_inflight_end();              \
    PyEval_RestoreThread(dc_save_); \
    }

typedef struct {
    PyObject_HEAD dc_tensor *t; /* owned reference */
    PyObject *weakrefs;
} TensorObject;

extern PyTypeObject *dc_py_tensor_base; /* _C.TensorBase */
extern PyTypeObject *dc_py_tensor_cls;  /* dutycycle.Tensor, registered from Python */

/* Wrap a C tensor (steals the reference). Returns the existing wrapper when there is one. */
PyObject *dc_py_wrap(dc_tensor *t);
/* Borrowed C tensor of a Python tensor, or NULL with TypeError naming `what`. */
dc_tensor *dc_py_tensor(PyObject *o, const char *what);
/* Turn a failed status into the matching dutycycle exception; returns NULL. */
PyObject *dc_py_raise(dc_status st);
int dc_py_init_tensor_type(PyObject *module);
int dc_py_init_errors(PyObject *module);
/* A Python exception raised by a hook on the backward thread, stashed until the caller re-enters. */
void dc_py_stash_exception(void);
int dc_py_restore_exception(void); /* 1 if one was restored */

#endif
