/* graph.c: recording the autograd graph (nodes, saved tensors, AccumulateGrad) and freeing it.
 *
 * Release is iterative: a tensor owns its grad_fn, a node owns its inputs' nodes and its saved
 * tensors, so dropping the last reference to the end of a long chain would otherwise recurse once
 * per op and overflow the C stack. Objects whose count reaches 0 go on a per-thread work list that
 * the outermost release on that thread drains (CPython's "trashcan" idea), so the depth of a
 * graph never becomes the depth of the C stack.
 *
 * grad_acc_lock guards leaves' cached AccumulateGrad pointer (forward ops in other threads look it
 * up while a dying graph clears it); it is held for a few instructions and never across a call
 * that could block. */
#define _POSIX_C_SOURCE 200809L /* pthread under -std=c11 */
#include "graph.h"

#include <pthread.h>
#include <stdlib.h>

static atomic_ullong seq_counter;
static pthread_mutex_t grad_acc_lock = PTHREAD_MUTEX_INITIALIZER;

/* --- iterative release ------------------------------------------------------------------------ */

void dc_tensor_free_(dc_tensor *t); /* tensor.c: frees t's own fields, dropping its references */

static _Thread_local dc_tensor *dead_tensors;
static _Thread_local dc_node *dead_nodes;
static _Thread_local int releasing;

static void node_free(dc_node *n)
{
    for (int k = 0; k < n->n_in; k++) dc_node_decref(n->next[k]);
    for (int k = 0; k < n->n_saved; k++) dc_tensor_decref(n->saved[k]);
    if (n->leaf) {
        pthread_mutex_lock(&grad_acc_lock);
        if (n->leaf->grad_acc == n) n->leaf->grad_acc = NULL;
        pthread_mutex_unlock(&grad_acc_lock);
        dc_tensor_decref(n->leaf);
    }
    dc_tensor_decref(n->gbuf);
    free(n);
}

/* Free everything queued on this thread; nested releases (from the frees below, or from a
 * deleter or hook destructor that runs Python which drops tensors) only queue. */
static void drain(void)
{
    if (releasing) return;
    releasing = 1;
    for (;;) {
        if (dead_nodes) {
            dc_node *n = dead_nodes;
            dead_nodes = n->dead_next;
            node_free(n);
        } else if (dead_tensors) {
            dc_tensor *t = dead_tensors;
            dead_tensors = t->dead_next;
            dc_tensor_free_(t);
        } else {
            break;
        }
    }
    releasing = 0;
}

void dc_release_tensor_(dc_tensor *t)
{
    t->dead_next = dead_tensors;
    dead_tensors = t;
    drain();
}

void dc_node_incref(dc_node *n)
{
    atomic_fetch_add_explicit(&n->refcount, 1, memory_order_relaxed);
}

void dc_node_decref(dc_node *n)
{
    if (!n) return;
    if (atomic_fetch_sub_explicit(&n->refcount, 1, memory_order_acq_rel) != 1) return;
    n->dead_next = dead_nodes;
    dead_nodes = n;
    drain();
}

/* --- recording -------------------------------------------------------------------------------- */

int dc_needs_grad(const dc_tensor *t)
{
    return t && t->requires_grad && dc_grad_enabled();
}

static dc_node *node_alloc(const char *name)
{
    dc_node *n = calloc(1, sizeof *n);
    if (!n) return NULL;
    atomic_init(&n->refcount, 1);
    n->name = name;
    n->seq = atomic_fetch_add(&seq_counter, 1);
    return n;
}

/* A cached node whose count already reached 0 is being freed by another thread: it is replaced,
 * never revived. */
dc_node *dc_node_accumulate(dc_tensor *leaf)
{
    pthread_mutex_lock(&grad_acc_lock);
    dc_node *n = leaf->grad_acc;
    if (n) {
        long r = atomic_load(&n->refcount);
        while (r > 0 && !atomic_compare_exchange_weak(&n->refcount, &r, r + 1)) {
        }
        if (r > 0) {
            pthread_mutex_unlock(&grad_acc_lock);
            return n;
        }
    }
    if ((n = node_alloc("AccumulateGrad"))) {
        dc_tensor_incref(leaf);
        n->leaf = leaf;
        leaf->grad_acc = n;
    }
    pthread_mutex_unlock(&grad_acc_lock);
    return n;
}

dc_status dc_node_new(dc_node **out, const char *name, dc_backward_fn fn, int n_in, dc_tensor *const *inputs)
{
    DC_ASSERT(n_in <= DC_NODE_MAX_IN); /* fixed per op: a coding error, not reachable from input */
    dc_node *n = node_alloc(name);
    if (!n) return dc_error(DC_ERR_NOMEM, "out of host memory");
    n->backward = fn;
    n->n_in = n_in;
    for (int k = 0; k < n_in; k++) {
        dc_tensor *x = inputs[k];
        if (!x) continue;
        n->in_ndim[k] = x->ndim;
        n->in_dtype[k] = x->dtype;
        for (int d = 0; d < x->ndim; d++) n->in_shape[k][d] = x->shape[d];
        if (!x->requires_grad) continue;
        if (x->grad_fn) {
            dc_node_incref(x->grad_fn);
            n->next[k] = x->grad_fn;
        } else if (!(n->next[k] = dc_node_accumulate(x))) {
            dc_node_decref(n);
            return dc_error(DC_ERR_NOMEM, "out of host memory");
        }
    }
    *out = n;
    return DC_OK;
}

void dc_node_save(dc_node *n, dc_tensor *t)
{
    DC_ASSERT(n->n_saved < DC_NODE_MAX_SAVED); /* fixed per op: a coding error, not reachable from input */
    int k = n->n_saved++;
    if (!t) return;
    dc_tensor_incref(t);
    n->saved[k] = t;
    n->saved_version[k] = atomic_load(&t->storage->version);
}

dc_status dc_node_saved(dc_node *n, int k, dc_tensor **out)
{
    dc_tensor *t = n->saved[k];
    if (t && atomic_load(&t->storage->version) != n->saved_version[k])
        return dc_error(DC_ERR_AUTOGRAD,
                        "one of the tensors needed for gradient computation (saved by %s, shape %s) "
                        "has been modified by an in-place operation",
                        n->name, DC_SHAPE(t));
    *out = t;
    return DC_OK;
}

void dc_node_attach(dc_tensor *out, dc_node *n)
{
    dc_node_decref(out->grad_fn);
    out->grad_fn = n;
    out->requires_grad = 1;
}
