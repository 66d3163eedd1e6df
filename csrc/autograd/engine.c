/* engine.c: the backward engine (see autograd.h); the graph itself is csrc/core/graph.c.
 *
 * The engine runs without the GIL: it only calls C ops (with grad mode off on this thread) and
 * the leaves' C hooks. Order: a node runs once every consumer of its output has run (dependency
 * counts), and among ready nodes the most recently created runs first.
 *
 * Threads: two backward passes may reach the same nodes (a shared parameter's AccumulateGrad) and
 * the same leaf .grad, so passes are serialised by backward_lock (recursive: a hook may call
 * backward). It is taken only in dc_backward, whose caller has released the GIL, so a hook waiting
 * for the GIL can't deadlock with it. Nothing here recurses over the graph: discovery and
 * the run use explicit arrays, so a chain of any length fits the C stack.
 * dc_backward is called in flight (tensor.h: dc_inflight_begin), which is how .data / .grad
 * replacements from other threads are kept out of the pass. */
#define _POSIX_C_SOURCE 200809L /* recursive pthread mutexes under -std=c11 */
#include "autograd.h"

#include <pthread.h>
#include <stdlib.h>

#include "../core/ops.h"

static pthread_mutex_t backward_lock;
static pthread_once_t backward_lock_once = PTHREAD_ONCE_INIT;

static void backward_lock_init(void)
{
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&backward_lock, &a);
    pthread_mutexattr_destroy(&a);
}

/* --- engine ----------------------------------------------------------------------------------- */

typedef struct {
    dc_node **v;
    int n, cap;
} node_vec;

static int vec_push(node_vec *q, dc_node *x)
{
    if (q->n == q->cap) {
        int cap = q->cap ? 2 * q->cap : 64;
        dc_node **v = realloc(q->v, (size_t)cap * sizeof *v);
        if (!v) return -1;
        q->v = v;
        q->cap = cap;
    }
    q->v[q->n++] = x;
    return 0;
}

/* max-heap on seq: the latest-created ready node runs first */
static int heap_push(node_vec *h, dc_node *x)
{
    if (vec_push(h, x)) return -1;
    int i = h->n - 1;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (h->v[p]->seq >= h->v[i]->seq) break;
        dc_node *t = h->v[p];
        h->v[p] = h->v[i];
        h->v[i] = t;
        i = p;
    }
    return 0;
}

static dc_node *heap_pop(node_vec *h)
{
    dc_node *top = h->v[0];
    h->v[0] = h->v[--h->n];
    int i = 0;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->n && h->v[l]->seq > h->v[m]->seq) m = l;
        if (r < h->n && h->v[r]->seq > h->v[m]->seq) m = r;
        if (m == i) break;
        dc_node *t = h->v[m];
        h->v[m] = h->v[i];
        h->v[i] = t;
        i = m;
    }
    return top;
}

static int same_shape(int na, const int64_t *a, int nb, const int64_t *b)
{
    if (na != nb) return 0;
    for (int d = 0; d < na; d++)
        if (a[d] != b[d]) return 0;
    return 1;
}

static int64_t shape_numel(int nd, const int64_t *shape)
{
    int64_t n = 1;
    for (int d = 0; d < nd; d++) n *= shape[d];
    return n;
}

/* Make *g (owned) have the given shape: a reshape when only the dims differ (a (1,) grad for a 0-d
 * input), an error naming both shapes when the element counts differ. */
static dc_status fit_grad(dc_tensor **g, int nd, const int64_t *shape, const char *who, int k)
{
    if (same_shape((*g)->ndim, (*g)->shape, nd, shape)) return DC_OK;
    if (dc_numel(*g) != shape_numel(nd, shape))
        return dc_error(DC_ERR_AUTOGRAD,
                        "%s: the gradient for input %d has shape %s, but that input has shape %s (was a tensor's "
                        ".data replaced with one of another shape after the graph was built?)",
                        who, k, DC_SHAPE(*g), dc_shape_str(nd, shape));
    dc_tensor *r;
    DC_TRY(dc_reshape(&r, *g, nd, shape));
    dc_tensor_decref(*g);
    *g = r;
    return DC_OK;
}

/* Add g into leaf->grad (steals g's reference). The result is final when this runs. The leaf's
 * geometry is read now, not when the graph was built: `w.data = x` may have changed it since,
 * which is the user's error to report, not an invariant to assert. */
static dc_status accumulate(dc_tensor *leaf, dc_tensor *g)
{
    dc_status st = DC_OK;
    if (!same_shape(g->ndim, g->shape, leaf->ndim, leaf->shape)) { /* grads were fit to the recorded shape */
        st = dc_error(DC_ERR_AUTOGRAD,
                      "AccumulateGrad: the gradient has shape %s but the leaf tensor now has shape %s (was its .data "
                      "replaced with one of another shape after the graph was built?)",
                      DC_SHAPE(g), DC_SHAPE(leaf));
        dc_tensor_decref(g);
        return st;
    }
    if (g->dtype != leaf->dtype || !dc_device_eq(g->device, leaf->device)) {
        dc_tensor *c;
        st = dc_to(&c, g, leaf->dtype, leaf->device);
        dc_tensor_decref(g);
        if (st) return st;
        g = c;
    }
    dc_tensor *have = leaf->grad;
    if (!have) {
        /* steal the buffer when nobody else can see it, else copy */
        if (atomic_load(&g->refcount) == 1 && atomic_load(&g->storage->refcount) == 1 && dc_is_contiguous(g) &&
            !g->grad_fn) {
            leaf->grad = g;
            return DC_OK;
        }
        dc_tensor *c;
        st = dc_clone(&c, g);
        if (st == DC_OK) leaf->grad = c;
    } else {
        /* hold the grad we add into for the time of the add (see the rule in tensor.h) */
        dc_tensor_incref(have);
        st = dc_binary_(DC_OP_ADD, have, g);
        dc_tensor_decref(have);
    }
    dc_tensor_decref(g);
    return st;
}

static void release_saved(dc_node *n)
{
    for (int k = 0; k < n->n_saved; k++) {
        dc_tensor_decref(n->saved[k]);
        n->saved[k] = NULL;
    }
    n->released = 1;
}

static dc_status backward_locked(dc_tensor *root, dc_tensor *grad, int retain_graph);

dc_status dc_backward(dc_tensor *root, dc_tensor *grad, int retain_graph)
{
    pthread_once(&backward_lock_once, backward_lock_init);
    if (pthread_mutex_trylock(&backward_lock) != 0) {
        /* Wait for the other pass out of flight: it may be paused in a hook that replaces a
         * tensor's data, which waits for every other thread's op in flight (tensor.h). */
        dc_inflight_end();
        pthread_mutex_lock(&backward_lock);
        dc_inflight_begin();
    }
    dc_status st = backward_locked(root, grad, retain_graph);
    pthread_mutex_unlock(&backward_lock);
    return st;
}

static dc_status backward_locked(dc_tensor *root, dc_tensor *grad, int retain_graph)
{
    if (!root->requires_grad)
        return dc_error(DC_ERR_AUTOGRAD, "element 0 of tensors does not require grad and does not have a grad_fn");
    dc_status st = DC_OK;
    dc_tensor *g = NULL;
    dc_node *start = NULL;
    node_vec all = { 0 }, heap = { 0 };
    int prev_mode = dc_grad_enabled();
    dc_set_grad_enabled(0);

    if (!grad) {
        if (dc_numel(root) != 1) {
            st = dc_error(DC_ERR_AUTOGRAD,
                          "grad can be implicitly created only for scalar outputs, but the output "
                          "has shape %s: pass a gradient to backward()",
                          DC_SHAPE(root));
            goto done;
        }
        if ((st = dc_full(&g, root->ndim, root->shape, 1.0, root->dtype, root->device))) goto done;
    } else {
        int same = grad->ndim == root->ndim;
        for (int d = 0; same && d < grad->ndim; d++) same = grad->shape[d] == root->shape[d];
        if (!same) {
            st = dc_error(DC_ERR_SHAPE, "backward(): gradient has shape %s but the output has shape %s", DC_SHAPE(grad),
                          DC_SHAPE(root));
            goto done;
        }
        if (grad->dtype != root->dtype || !dc_device_eq(grad->device, root->device)) {
            if ((st = dc_to(&g, grad, root->dtype, root->device))) goto done;
        } else {
            dc_tensor_incref(grad);
            g = grad;
        }
    }

    if (root->grad_fn) {
        start = root->grad_fn;
        dc_node_incref(start);
    } else if (!(start = dc_node_accumulate(root))) {
        st = dc_error(DC_ERR_NOMEM, "out of host memory");
        goto done;
    }

    /* 1. discover the graph and count, for each node, the edges into it */
    start->visited = 1;
    if (vec_push(&all, start)) goto nomem;
    for (int i = 0; i < all.n; i++) {
        dc_node *n = all.v[i];
        for (int k = 0; k < n->n_in; k++) {
            dc_node *m = n->next[k];
            if (!m) continue;
            m->deps++;
            if (!m->visited) {
                m->visited = 1;
                if (vec_push(&all, m)) goto nomem;
            }
        }
    }

    /* 2. run ready nodes, latest first */
    start->gbuf = g;
    g = NULL;
    if (heap_push(&heap, start)) goto nomem;
    while (heap.n) {
        dc_node *n = heap_pop(&heap);
        dc_tensor *gout = n->gbuf;
        n->gbuf = NULL;
        if (n->leaf) {
            if (gout) {
                st = accumulate(n->leaf, gout);
                if (st) goto done;
                if ((st = dc_tensor_run_hooks(n->leaf))) goto done;
            }
            continue;
        }
        dc_tensor *gin[DC_NODE_MAX_IN] = { 0 };
        if (gout) {
            if (n->released && n->n_saved) {
                dc_tensor_decref(gout);
                st = dc_error(DC_ERR_AUTOGRAD,
                              "trying to backward through the graph a second time (%s's saved tensors "
                              "were freed by the first backward); pass retain_graph=True to the first "
                              "backward() if you need to do this",
                              n->name);
                goto done;
            }
            st = n->backward(n, gout, gin);
            dc_tensor_decref(gout);
            for (int k = 0; !st && k < n->n_in; k++)
                if (gin[k]) st = fit_grad(&gin[k], n->in_ndim[k], n->in_shape[k], n->name, k);
            if (st) {
                for (int k = 0; k < n->n_in; k++) dc_tensor_decref(gin[k]);
                goto done;
            }
        }
        if (!retain_graph) release_saved(n);
        for (int k = 0; k < n->n_in; k++) {
            dc_node *m = n->next[k];
            if (!m) {
                dc_tensor_decref(gin[k]);
                continue;
            }
            if (gin[k]) {
                if (!m->gbuf) {
                    m->gbuf = gin[k];
                } else {
                    dc_tensor *s;
                    st = dc_binary(&s, DC_OP_ADD, m->gbuf, gin[k]);
                    dc_tensor_decref(gin[k]);
                    if (st) {
                        for (int j = k + 1; j < n->n_in; j++) dc_tensor_decref(gin[j]);
                        goto done;
                    }
                    dc_tensor_decref(m->gbuf);
                    m->gbuf = s;
                }
            }
            if (--m->deps == 0 && heap_push(&heap, m)) goto nomem;
        }
    }
    goto done;
nomem:
    st = dc_error(DC_ERR_NOMEM, "out of host memory in backward");
done:
    for (int i = 0; i < all.n; i++) {
        dc_node *n = all.v[i];
        dc_tensor_decref(n->gbuf);
        n->gbuf = NULL;
        n->deps = 0;
        n->visited = 0;
    }
    free(all.v);
    free(heap.v);
    dc_node_decref(start);
    dc_tensor_decref(g);
    dc_set_grad_enabled(prev_mode);
    return st;
}
