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

/* The module's state (multi-phase init, as CPython's own modules keep theirs): no PyTypeObject or
 * exception lives in a C global, so each interpreter that imports _C gets its own. Reach it from
 * the module (functions get it as their first argument) or from one of its types. */
typedef struct {
    PyTypeObject *tensor_base; /* _C.TensorBase */
    PyTypeObject *tensor_cls;  /* dutycycle.Tensor, registered from Python (NULL until then) */
    PyTypeObject *storage_ref; /* _C._StorageRef (NumPy views' owner) */
    PyTypeObject *loader_type; /* _C.Loader */
    PyTypeObject *comm_type;   /* _C.Comm (comm_py.c) */
    PyTypeObject *work_type;   /* _C.Work */
    PyObject *base_error;      /* dutycycle.DutycycleError */
    PyObject *exc_by_status[DC_STATUS_COUNT];
} dc_py_state;

extern PyModuleDef dc_py_module_def;

static inline dc_py_state *dc_py_state_of(PyObject *module)
{
    return (dc_py_state *)PyModule_GetState(module);
}
/* State of the _C module whose type `tp` is or derives from; NULL with an exception if none. */
dc_py_state *dc_py_state_of_type(PyTypeObject *tp);

/* Wrap a C tensor (steals the reference). Returns the existing wrapper when there is one. */
PyObject *dc_py_wrap(dc_py_state *S, dc_tensor *t);
/* Borrowed C tensor of a Python tensor, or NULL with TypeError naming `what`. */
dc_tensor *dc_py_tensor(PyObject *o, const char *what);
/* Turn a failed status into the matching dutycycle exception; returns NULL. */
PyObject *dc_py_raise(dc_py_state *S, dc_status st);
PyObject *dc_py_from_dlpack_capsule(dc_py_state *S, PyObject *cap);
int dc_py_init_tensor_type(PyObject *module);
int dc_py_init_ops(PyObject *module); /* ops_py.c: the _C.ops submodule */
int dc_py_init_errors(PyObject *module);
int dc_py_init_loader(PyObject *module);
int dc_py_init_ckpt(PyObject *module);   /* ckpt_py.c: _C.CheckpointWriter, _C.crc32c */
int dc_py_init_shards(PyObject *module); /* shards_py.c: _C.ShardPipeline and the sample-order helpers */
int dc_py_init_comm(PyObject *module);   /* comm_py.c: _C.Comm, _C.Work, the distributed exceptions */
int dc_py_init_s3(PyObject *module);     /* s3_py.c: _C.S3Client, _C.S3Upload, _C.S3Error */
int dc_py_init_alloc(PyObject *module);  /* alloc_py.c: _C.CacheAllocator (the caching allocator, tested on CPU) */
int dc_py_init_plan(PyObject *module);   /* plan_py.c: _C.PlanCache, _C.matmul_plan (csrc/plan, tested on CPU) */
int dc_py_init_cuda(PyObject *module);   /* cuda_py.c: _C.cuda_* (streams, events, memory statistics, pinned memory) */
/* The C client of a _C.S3Client (borrowed: keep a reference to obj while C code uses it), or NULL
 * with TypeError (not an S3Client) / ValueError (closed). For C pipelines (the data loader). */
struct dc_s3;
struct dc_s3 *dc_py_s3_client(PyObject *obj);
/* decode_py.c: _C.tar_members, _C.jpeg_decode and the other single-sample decoders */
int dc_py_init_decode(PyObject *module);
/* A Python exception raised by a hook on the backward thread, stashed until the caller re-enters. */
void dc_py_stash_exception(void);
int dc_py_restore_exception(void); /* 1 if one was restored */

/* Run a core call without the GIL (in flight); then wrap `out` or raise. `m` must name the _C module
 * in the calling function (its state holds the types and exceptions). */
#define RUN(call)             \
    dc_status st_;            \
    DC_BEGIN_OP st_ = (call); \
    DC_END_OP if (st_) return dc_py_raise(dc_py_state_of(m), st_)

#define RUN_WRAP(call, out) \
    RUN(call);              \
    return dc_py_wrap(dc_py_state_of(m), out)

#endif
