/* engine.c: autograd nodes and the backward engine (see autograd.h).
 *
 * The engine runs without the GIL: it only calls C ops (with grad mode off on this thread) and
 * the leaves' C hooks. Order: a node runs once every consumer of its output has run (dependency
 * counts), and among ready nodes the most recently created runs first.
 *
 * Threads: two backward passes may reach the same nodes (a shared parameter's AccumulateGrad) and
 * the same leaf .grad, so passes are serialised by backward_lock (recursive: a hook may call
 * backward). It is taken only in dc_backward, whose caller has released the GIL, so a hook waiting
 * for the GIL can't deadlock with it. grad_acc_lock guards leaves' cached AccumulateGrad pointer
 * (forward ops in other threads look it up while a dying graph clears it); it is held for a few
 * instructions and never across a call that could block. */
#define _POSIX_C_SOURCE 200809L /* recursive pthread mutexes under -std=c11 */
#include "autograd.h"

#include <pthread.h>
#include <stdlib.h>

#include "../core/ops.h"

static atomic_ullong seq_counter;
static pthread_mutex_t grad_acc_lock = PTHREAD_MUTEX_INITIALIZER;
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

/* --- nodes ------------------------------------------------------------------------------------ */

void dc_node_decref(dc_node *n)
{
    if (!n) return;
    if (atomic_fetch_sub_explicit(&n->refcount, 1, memory_order_acq_rel) != 1) return;
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

/* The leaf's AccumulateGrad node (new reference), created on first use. A cached node whose count
 * already reached 0 is being freed by another thread: it is replaced, never revived. */
static dc_node *accumulate_node(dc_tensor *leaf)
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
    DC_ASSERT(n_in <= DC_NODE_MAX_IN);
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
            atomic_fetch_add(&x->grad_fn->refcount, 1);
            n->next[k] = x->grad_fn;
        } else if (!(n->next[k] = accumulate_node(x))) {
            dc_node_decref(n);
            return dc_error(DC_ERR_NOMEM, "out of host memory");
        }
    }
    *out = n;
    return DC_OK;
}

void dc_node_save(dc_node *n, dc_tensor *t)
{
    DC_ASSERT(n->n_saved < DC_NODE_MAX_SAVED);
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

/* Add g into leaf->grad (steals g's reference). The result is final when this runs. */
static dc_status accumulate(dc_tensor *leaf, dc_tensor *g)
{
    dc_status st = DC_OK;
    if (g->dtype != leaf->dtype || !dc_device_eq(g->device, leaf->device)) {
        dc_tensor *c;
        st = dc_to(&c, g, leaf->dtype, leaf->device);
        dc_tensor_decref(g);
        if (st) return st;
        g = c;
    }
    if (!leaf->grad) {
        /* steal the buffer when nobody else can see it, else copy */
        if (atomic_load(&g->refcount) == 1 && atomic_load(&g->storage->refcount) == 1 && dc_is_contiguous(g) &&
            g->ndim == leaf->ndim && !g->grad_fn) {
            for (int d = 0; d < g->ndim; d++) DC_ASSERT(g->shape[d] == leaf->shape[d]);
            leaf->grad = g;
            return DC_OK;
        }
        dc_tensor *c;
        st = dc_clone(&c, g);
        if (st == DC_OK) {
            dc_tensor *r;
            st = dc_reshape(&r, c, leaf->ndim, leaf->shape);
            dc_tensor_decref(c);
            if (st == DC_OK) leaf->grad = r;
        }
    } else {
        st = dc_binary_(DC_OP_ADD, leaf->grad, g);
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
    pthread_mutex_lock(&backward_lock);
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
        atomic_fetch_add(&start->refcount, 1);
    } else if (!(start = accumulate_node(root))) {
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
