/* graph.h: the autograd graph that ops record: nodes, saved tensors, edges, and their release.
 *
 * It lives in the core because every differentiable op records a node, and tensors own their
 * grad_fn: the core must be able to build and free a graph without knowing how it is run. The
 * engine that runs it (csrc/autograd/) sits one layer up and only reads these structures.
 *
 * Every differentiable op with an input that requires grad creates one dc_node with one output:
 * the node holds its backward function, the tensors it saved, and edges to the nodes of its
 * inputs. Leaves that require grad get an AccumulateGrad node (cached, borrowed, on the leaf). */
#ifndef DC_GRAPH_H
#define DC_GRAPH_H

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DC_NODE_MAX_IN    4
#define DC_NODE_MAX_SAVED 6

typedef struct dc_node dc_node;
/* Compute gin[k] for each input edge k from gout (the gradient of this node's output). Leave
 * gin[k] NULL for inputs that need no gradient (next[k] == NULL). */
typedef dc_status (*dc_backward_fn)(dc_node *n, dc_tensor *gout, dc_tensor **gin);

struct dc_node {
    atomic_long refcount;
    const char *name; /* "MulBackward" */
    dc_backward_fn backward;
    uint64_t seq; /* creation order */
    int n_in;
    dc_node *next[DC_NODE_MAX_IN]; /* owned; NULL where that input needs no grad */
    /* input geometry, for reducing broadcast grads and rebuilding shapes */
    int in_ndim[DC_NODE_MAX_IN];
    int64_t in_shape[DC_NODE_MAX_IN][DC_MAX_DIMS];
    dc_dtype in_dtype[DC_NODE_MAX_IN];
    int n_saved;
    dc_tensor *saved[DC_NODE_MAX_SAVED];
    long saved_version[DC_NODE_MAX_SAVED];
    double f[4];
    int64_t i[2 * DC_MAX_DIMS];
    int released;    /* saved tensors were freed by a backward without retain_graph */
    dc_tensor *leaf; /* AccumulateGrad: the leaf (owned) */
    /* engine scratch, valid during one backward */
    dc_tensor *gbuf;
    int deps;
    int visited;
    dc_node *dead_next; /* release work list (graph.c) */
};

void dc_node_incref(dc_node *n);
/* Drop a reference; the last one frees the node and, iteratively, whatever only it kept alive
 * (a 300k-op chain is freed without recursion). NULL is a no-op. */
void dc_node_decref(dc_node *n);

/* For op implementations: does this op need to record a node for these inputs? */
int dc_needs_grad(const dc_tensor *t);
/* New node with n_in (<= DC_NODE_MAX_IN) edges taken from inputs (NULL entries allowed: no grad). */
dc_status dc_node_new(dc_node **out, const char *name, dc_backward_fn fn, int n_in, dc_tensor *const *inputs);
/* Save a tensor for backward (takes a reference, records its version); at most DC_NODE_MAX_SAVED. */
void dc_node_save(dc_node *n, dc_tensor *t);
/* Check a saved tensor was not modified in place since; DC_ERR_AUTOGRAD if it was. */
dc_status dc_node_saved(dc_node *n, int k, dc_tensor **out);
/* Make `out` the (non-leaf) result of node n: sets requires_grad and grad_fn (steals n). */
void dc_node_attach(dc_tensor *out, dc_node *n);
/* The leaf's AccumulateGrad node (new reference), created on first use; NULL when out of memory. */
dc_node *dc_node_accumulate(dc_tensor *leaf);

/* Internal to the core (tensor.c): queue a tensor whose count reached 0 and free the queue. */
void dc_release_tensor_(dc_tensor *t);

#ifdef __cplusplus
}
#endif
#endif
