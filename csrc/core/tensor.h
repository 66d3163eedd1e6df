/* tensor.h: reference-counted storage and strided tensors: the one data structure every op,
 * backend and the Python binding share.
 *
 * A dc_tensor is a strided view (offset, shape, strides in elements) of a dc_storage. Views share
 * the storage; the storage's version counter lets autograd notice in-place writes to data it saved.
 * Reference counts are atomic because backward runs with the GIL released. */
#ifndef DC_TENSOR_H
#define DC_TENSOR_H

#ifdef __cplusplus
#include <atomic>
using std::atomic_long;
#else
#include <stdatomic.h>
#endif
#include <stdint.h>

#include "dtype.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DC_MAX_DIMS 8

typedef struct dc_storage {
    atomic_long refcount;
    void *data;
    size_t nbytes;
    dc_device device;
    /* External memory (NumPy, DLPack): deleter(ctx) releases it. NULL: the backend frees data. */
    void (*deleter)(void *ctx);
    void *ctx;
    atomic_long version; /* bumped by every in-place write */
} dc_storage;

struct dc_node;
struct dc_tensor;

/* A C-level post-accumulate-grad hook: called on the backward thread the moment `param`'s .grad
 * is final for this backward pass. Return DC_OK, or an error (with dc_error) to stop backward. */
typedef dc_status (*dc_hook_fn)(void *ctx, struct dc_tensor *param);

typedef struct dc_hook {
    dc_hook_fn fn;
    void *ctx;
    void (*ctx_free)(void *ctx); /* may be NULL */
    int id;
    struct dc_hook *next;
} dc_hook;

typedef struct dc_tensor {
    atomic_long refcount;
    dc_storage *storage; /* owned reference */
    int64_t offset;      /* in elements */
    int ndim;
    int64_t shape[DC_MAX_DIMS];
    int64_t strides[DC_MAX_DIMS]; /* in elements */
    dc_dtype dtype;
    dc_device device;
    int requires_grad;
    struct dc_tensor *grad;      /* owned; NULL until the first backward */
    struct dc_node *grad_fn;     /* owned; NULL for leaves */
    struct dc_node *grad_acc;    /* borrowed: this leaf's live AccumulateGrad node, if any */
    dc_hook *hooks;              /* post-accumulate-grad hooks (leaves) */
    void *pyobj;                 /* borrowed back-pointer to the Python wrapper (binding only) */
    struct dc_tensor *dead_next; /* release work list (graph.c) */
} dc_tensor;

/* --- lifetime ---------------------------------------------------------------------------- */
void dc_tensor_incref(dc_tensor *t);
void dc_tensor_decref(dc_tensor *t); /* NULL is a no-op */
void dc_storage_incref(dc_storage *s);
void dc_storage_decref(dc_storage *s);

/* New contiguous tensor with uninitialised data. */
dc_status dc_empty(dc_tensor **out, int ndim, const int64_t *shape, dc_dtype dtype, dc_device dev);
dc_status dc_empty_like(dc_tensor **out, const dc_tensor *t);
/* Wrap memory owned elsewhere; deleter(ctx) is called when the last view dies (also on failure). */
dc_status dc_from_blob(dc_tensor **out, void *data, size_t nbytes, int ndim, const int64_t *shape,
                       const int64_t *strides, dc_dtype dtype, dc_device dev, void (*deleter)(void *), void *ctx);
/* A new tensor object aliasing `t`'s storage with the given geometry (no autograd history). */
dc_status dc_alias(dc_tensor **out, const dc_tensor *t, int ndim, const int64_t *shape, const int64_t *strides,
                   int64_t offset);

/* --- geometry ---------------------------------------------------------------------------- */
int64_t dc_numel(const dc_tensor *t);
int dc_is_contiguous(const dc_tensor *t);
static inline char *dc_data(const dc_tensor *t)
{
    return (char *)t->storage->data + t->offset * (int64_t)dc_dtype_size(t->dtype);
}
void dc_contiguous_strides(int ndim, const int64_t *shape, int64_t *strides);
/* "(2, 3, 4)" into a per-thread rotating buffer, for messages. */
const char *dc_shape_str(int ndim, const int64_t *shape);
#define DC_SHAPE(t) dc_shape_str((t)->ndim, (t)->shape)

/* --- hooks --------------------------------------------------------------------------------- */
/* Returns a handle id (> 0) usable with dc_tensor_remove_hook. */
int dc_tensor_add_hook(dc_tensor *t, dc_hook_fn fn, void *ctx, void (*ctx_free)(void *));
int dc_tensor_remove_hook(dc_tensor *t, int id); /* 1 if removed */
/* Call t's post-accumulate-grad hooks in registration order. Hooks may add or remove hooks, and
 * other threads may too, while they run; a hook added during this call first runs at the next
 * call (so a hook that registers a hook can't make one backward pass run forever). Stops at the
 * first error. */
dc_status dc_tensor_run_hooks(dc_tensor *t);

/* --- threads: what is safe -------------------------------------------------------------------
 * Ops and backward run without the GIL and read their tensors' storage, geometry and .grad while
 * other Python threads run. The rule (as in PyTorch, memory-safe where PyTorch is merely "don't"):
 *   - an op or a backward pass is "in flight" between dc_inflight_begin() and dc_inflight_end();
 *     the binding brackets every GIL-released call with them;
 *   - replacing what a tensor points to - its storage and geometry (`t.data = x`) or its .grad
 *     (`t.grad = g` / None) - goes through dc_tensor_set_data / dc_tensor_set_grad, which wait
 *     until no op or backward pass of another thread is in flight (the calling thread's own, e.g.
 *     a hook called by its backward, don't count: it is paused in the hook), and new ops wait
 *     while the replacement is made;
 *   - so no op sees a buffer freed, or half a geometry, under it. In-place writes to the same
 *     storage from two threads stay a data race on the numbers (as in NumPy and PyTorch), never
 *     a memory error. Call the waiting functions without the GIL: an op in flight may need it
 *     for a hook. */
void dc_inflight_begin(void);
void dc_inflight_end(void);
/* Make t alias src's data (storage, offset, geometry, dtype, device); a .grad that no longer fits
 * t is dropped. Keeps t's identity, graph links and hooks. */
void dc_tensor_set_data(dc_tensor *t, const dc_tensor *src);
/* Replace t->grad with g (a new reference is taken; NULL clears it). */
void dc_tensor_set_grad(dc_tensor *t, dc_tensor *g);
/* The storage of t, referenced (a view, export or reader keeps it, not the tensor, alive). */
dc_storage *dc_tensor_storage_ref(const dc_tensor *t);

/* --- grad mode (per thread) ---------------------------------------------------------------- */
int dc_grad_enabled(void);
void dc_set_grad_enabled(int on);

/* --- random numbers ------------------------------------------------------------------------- */
/* Counter-based generator: results depend only on (seed, position), never on thread count. */
void dc_manual_seed(uint64_t seed);
uint64_t dc_initial_seed(void);
/* Reserve n numbers: returns (seed, offset) for a kernel to use. */
void dc_rng_reserve(uint64_t n, uint64_t *seed, uint64_t *offset);
uint64_t dc_rng_get_offset(void);
void dc_rng_set_state(uint64_t seed, uint64_t offset);

#ifdef __cplusplus
}
#endif
#endif
