/* ops_linalg.c: matmul, cat, gather/index ops and tril/triu, forward next to backward (the fused
 * optimizer steps are in ops_optim.c). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "ops-impl.h"

/* --- matmul ------------------------------------------------------------------------------------ */

/* t (batch..., R, C) expanded to the broadcast batch shape bs: a view, never a copy. */
static dc_status expand_batch(dc_tensor **out, dc_tensor *t, int nb, const int64_t *bs)
{
    int64_t eshape[DC_MAX_DIMS];
    for (int d = 0; d < nb; d++) eshape[d] = bs[d];
    eshape[nb] = t->shape[t->ndim - 2];
    eshape[nb + 1] = t->shape[t->ndim - 1];
    return dc_expand(out, t, nb + 2, eshape);
}

static dc_status matmul_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    dc_tensor *a, *b, *t, *p;
    DC_TRY(dc_node_saved(n, 0, &a));
    DC_TRY(dc_node_saved(n, 1, &b));
    dc_status st = DC_OK;
    if (n->next[0]) { /* ga = g @ b^T */
        DC_TRY(dc_transpose(&t, b, -1, -2));
        st = dc_matmul(&p, g, t);
        dc_tensor_decref(t);
        if (st) return st;
        st = dc_sum_to(&gin[0], p, a->ndim, a->shape);
        dc_tensor_decref(p);
        if (st) return st;
    }
    if (n->next[1]) { /* gb = a^T @ g */
        DC_TRY(dc_transpose(&t, a, -1, -2));
        st = dc_matmul(&p, t, g);
        dc_tensor_decref(t);
        if (st) return st;
        st = dc_sum_to(&gin[1], p, b->ndim, b->shape);
        dc_tensor_decref(p);
    }
    return st;
}

/* Both operands have >= 2 dims. */
static dc_status matmul_nd(dc_tensor **out, dc_tensor *a, dc_tensor *b)
{
    int64_t M = a->shape[a->ndim - 2], K = a->shape[a->ndim - 1], K2 = b->shape[b->ndim - 2], N = b->shape[b->ndim - 1];
    if (K != K2)
        return dc_error(DC_ERR_SHAPE, "matmul: shapes %s and %s can't be multiplied (%lld != %lld)", DC_SHAPE(a),
                        DC_SHAPE(b), (long long)K, (long long)K2);
    int nb;
    int64_t bs[DC_MAX_DIMS];
    DC_TRY(dc_broadcast_shape(a->ndim - 2, a->shape, b->ndim - 2, b->shape, &nb, bs, "matmul (batch dims)"));
    if (nb + 2 > DC_MAX_DIMS) return dc_error(DC_ERR_SHAPE, "matmul: too many dims");
    int prev = dc_grad_enabled();
    dc_set_grad_enabled(0);
    dc_tensor *ka = NULL, *kb = NULL, *y = NULL;
    dc_kargs k = kargs_of(DC_OP_MATMUL);
    dc_status st = expand_batch(&ka, a, nb, bs);
    if (!st) st = expand_batch(&kb, b, nb, bs);
    dc_set_grad_enabled(prev);
    int64_t oshape[DC_MAX_DIMS];
    for (int d = 0; d < nb; d++) oshape[d] = bs[d];
    oshape[nb] = M;
    oshape[nb + 1] = N;
    if (!st) st = dc_empty(&y, nb + 2, oshape, a->dtype, a->device);
    if (!st) {
        kargs_add(&k, y);
        kargs_add(&k, ka);
        kargs_add(&k, kb);
        if (dc_numel(y)) st = dc_launch(a->device, &k);
    }
    dc_tensor_decref(ka);
    dc_tensor_decref(kb);
    if (st) {
        dc_tensor_decref(y);
        return st;
    }
    if (dc_needs_grad(a) || dc_needs_grad(b)) {
        dc_tensor *in[2] = { a, b };
        dc_node *n;
        if ((st = dc_node_new(&n, "MmBackward", matmul_backward, 2, in))) {
            dc_tensor_decref(y);
            return st;
        }
        dc_node_save(n, a);
        dc_node_save(n, b);
        dc_node_attach(y, n);
    }
    *out = y;
    return DC_OK;
}

dc_status dc_matmul(dc_tensor **out, dc_tensor *a, dc_tensor *b)
{
    DC_TRY(same_device(a, b, "matmul"));
    DC_TRY(same_dtype(a, b, "matmul"));
    DC_TRY(need_float(a, "matmul"));
    if (a->ndim == 0 || b->ndim == 0)
        return dc_error(DC_ERR_SHAPE, "matmul: both arguments need at least 1 dim, got shapes %s and %s", DC_SHAPE(a),
                        DC_SHAPE(b));
    /* Check here, against the caller's shapes: below, vectors become matrices and batches fold. */
    int64_t ka = a->shape[a->ndim - 1], kb = b->shape[b->ndim == 1 ? 0 : b->ndim - 2];
    if (ka != kb)
        return dc_error(DC_ERR_SHAPE, "matmul: shapes %s and %s can't be multiplied (%lld != %lld)", DC_SHAPE(a),
                        DC_SHAPE(b), (long long)ka, (long long)kb);
    int nbat;
    int64_t bshape[DC_MAX_DIMS];
    if (dc_broadcast_shape(a->ndim > 2 ? a->ndim - 2 : 0, a->shape, b->ndim > 2 ? b->ndim - 2 : 0, b->shape, &nbat,
                           bshape, "matmul"))
        return dc_error(DC_ERR_SHAPE, "matmul: the batch dims of shapes %s and %s can't be broadcast together",
                        DC_SHAPE(a), DC_SHAPE(b));
    dc_tensor *a2 = NULL, *b2 = NULL, *y = NULL;
    dc_status st = DC_OK;
    /* vectors become matrices (recorded as views, so autograd needs nothing special) */
    if (a->ndim == 1)
        st = dc_unsqueeze(&a2, a, 0);
    else
        dc_tensor_incref(a), a2 = a;
    if (!st) {
        if (b->ndim == 1)
            st = dc_unsqueeze(&b2, b, -1);
        else
            dc_tensor_incref(b), b2 = b;
    }
    if (!st) {
        if (b2->ndim == 2 && a2->ndim > 2 && a2->shape[a2->ndim - 1] == b2->shape[0]) {
            /* (..., M, K) @ (K, N): fold the batch into M for one large GEMM */
            int64_t flat[2] = { -1, a2->shape[a2->ndim - 1] }, oshape[DC_MAX_DIMS];
            dc_tensor *af, *yf;
            if (!(st = dc_reshape(&af, a2, 2, flat))) {
                if (!(st = matmul_nd(&yf, af, b2))) {
                    for (int d = 0; d < a2->ndim - 1; d++) oshape[d] = a2->shape[d];
                    oshape[a2->ndim - 1] = b2->shape[1];
                    st = dc_view(&y, yf, a2->ndim, oshape);
                    dc_tensor_decref(yf);
                }
                dc_tensor_decref(af);
            }
        } else {
            st = matmul_nd(&y, a2, b2);
        }
    }
    if (!st && (a->ndim == 1 || b->ndim == 1)) {
        dc_tensor *s1 = y, *s2;
        if (b->ndim == 1) {
            st = dc_squeeze(&s2, s1, -1);
            dc_tensor_decref(s1);
            s1 = st ? NULL : s2;
        }
        if (!st && a->ndim == 1) {
            st = dc_squeeze(&s2, s1, s1->ndim - (b->ndim == 1 ? 1 : 2));
            dc_tensor_decref(s1);
            s1 = st ? NULL : s2;
        }
        y = s1;
    }
    dc_tensor_decref(a2);
    dc_tensor_decref(b2);
    if (st) {
        dc_tensor_decref(y);
        return st;
    }
    *out = y;
    return DC_OK;
}

/* --- cat ------------------------------------------------------------------------------------- */

static dc_status cat_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    int dim = (int)n->i[0];
    int64_t off = 0;
    for (int k = 0; k < n->n_in; k++) {
        int64_t len = n->in_shape[k][dim];
        if (n->next[k]) DC_TRY(dc_slice(&gin[k], g, dim, off, off + len, 1));
        off += len;
    }
    return DC_OK;
}

static dc_status cat_group(dc_tensor **out, int n, dc_tensor *const *xs, int dim)
{
    dc_tensor *x0 = xs[0];
    int64_t shape[DC_MAX_DIMS];
    memcpy(shape, x0->shape, sizeof shape);
    shape[dim] = 0;
    for (int k = 0; k < n; k++) {
        dc_tensor *x = xs[k];
        DC_TRY(same_device(x0, x, "cat"));
        DC_TRY(same_dtype(x0, x, "cat"));
        if (x->ndim != x0->ndim)
            return dc_error(
                DC_ERR_SHAPE,
                "cat: tensors must have the same number of dims: tensor 0 has shape %s, tensor %d has shape %s",
                DC_SHAPE(x0), k, DC_SHAPE(x));
        for (int d = 0; d < x->ndim; d++)
            if (d != dim && x->shape[d] != x0->shape[d])
                return dc_error(DC_ERR_SHAPE,
                                "cat: sizes must match except in dim %d: tensor 0 has shape %s, tensor %d has shape %s",
                                dim, DC_SHAPE(x0), k, DC_SHAPE(x));
        shape[dim] += x->shape[dim];
    }
    dc_tensor *y;
    DC_TRY(dc_empty(&y, x0->ndim, shape, x0->dtype, x0->device));
    int64_t off = 0;
    dc_status st = DC_OK;
    for (int k = 0; k < n && !st; k++) {
        int64_t len = xs[k]->shape[dim];
        if (len == 0 || dc_numel(xs[k]) == 0) continue;
        dc_kargs a = kargs_of(DC_OP_COPY);
        kargs_add(&a, y);
        a.t[0].data += off * y->strides[dim] * (int64_t)dc_dtype_size(y->dtype);
        a.t[0].shape[dim] = len;
        kargs_add(&a, xs[k]);
        st = dc_launch(y->device, &a);
        off += len;
    }
    int need = 0;
    for (int k = 0; k < n; k++) need |= dc_needs_grad(xs[k]);
    if (!st && need) {
        dc_node *node;
        if (!(st = dc_node_new(&node, "CatBackward", cat_backward, n, xs))) {
            node->i[0] = dim;
            dc_node_attach(y, node);
        }
    }
    if (st) {
        dc_tensor_decref(y);
        return st;
    }
    *out = y;
    return DC_OK;
}

dc_status dc_cat(dc_tensor **out, int n, dc_tensor *const *xs, int dim)
{
    if (n <= 0) return dc_error(DC_ERR_VALUE, "cat: expected a non-empty list of tensors");
    DC_TRY(wrap_dim(&dim, xs[0]->ndim, "cat"));
    if (xs[0]->ndim == 0) return dc_error(DC_ERR_SHAPE, "cat: zero-dimensional tensors can't be concatenated");
    dc_dtype rt = xs[0]->dtype;
    for (int k = 1; k < n; k++) rt = dc_promote_types(rt, xs[k]->dtype);
    for (int k = 0; k < n; k++)
        if (xs[k]->dtype != rt) { /* mixed dtypes meet in their promoted type, as torch.cat */
            dc_tensor **cs = calloc((size_t)n, sizeof *cs);
            if (!cs) return dc_error(DC_ERR_NOMEM, "out of host memory");
            dc_status st = DC_OK;
            for (int j = 0; j < n && !st; j++) {
                st = same_device(xs[0], xs[j], "cat");
                if (!st) st = cast_to(&cs[j], xs[j], rt);
            }
            if (!st) st = dc_cat(out, n, cs, dim);
            for (int j = 0; j < n; j++) dc_tensor_decref(cs[j]);
            free(cs);
            return st;
        }
    if (n <= DC_NODE_MAX_IN) return cat_group(out, n, xs, dim);
    /* autograd nodes have at most DC_NODE_MAX_IN inputs: concatenate in groups, then the groups */
    int ng = (n + DC_NODE_MAX_IN - 1) / DC_NODE_MAX_IN;
    dc_tensor **parts = calloc((size_t)ng, sizeof *parts);
    if (!parts) return dc_error(DC_ERR_NOMEM, "out of host memory");
    dc_status st = DC_OK;
    for (int gi = 0; gi < ng && !st; gi++) {
        int lo = gi * DC_NODE_MAX_IN, cnt = n - lo < DC_NODE_MAX_IN ? n - lo : DC_NODE_MAX_IN;
        st = cat_group(&parts[gi], cnt, xs + lo, dim);
    }
    if (!st) st = dc_cat(out, ng, parts, dim);
    for (int gi = 0; gi < ng; gi++) dc_tensor_decref(parts[gi]);
    free(parts);
    return st;
}

/* --- gather / index_select ------------------------------------------------------------------- */

static dc_status need_index(const dc_tensor *idx, const dc_tensor *x, const char *op)
{
    if (idx->dtype != DC_INT64)
        return dc_error(DC_ERR_DTYPE, "%s: index must be an int64 tensor, got %s", op, dc_dtype_name(idx->dtype));
    return same_device(x, idx, op);
}

static dc_status scatter_like_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    SAVED(n, 0, idx);
    dc_tensor *z, *gc;
    DC_TRY(dc_zeros_of(&z, n->in_ndim[0], n->in_shape[0], g->dtype, g->device));
    dc_status st = dc_contiguous(&gc, g);
    if (!st) {
        dc_kargs k = kargs_of(n->i[1] ? DC_OP_INDEX_ADD : DC_OP_SCATTER_ADD);
        kargs_add(&k, z);
        kargs_add(&k, gc);
        kargs_add(&k, idx);
        k.p.dim.dim = n->i[0];
        if (dc_numel(gc)) st = dc_launch(g->device, &k);
        dc_tensor_decref(gc);
    }
    if (st) {
        dc_tensor_decref(z);
        return st;
    }
    gin[0] = z;
    return DC_OK;
}

static dc_status index_op(dc_tensor **out, dc_op op, dc_tensor *x, int dim, dc_tensor *idx, const char *name)
{
    DC_TRY(need_index(idx, x, name));
    DC_TRY(wrap_dim(&dim, x->ndim, name));
    int64_t shape[DC_MAX_DIMS];
    if (op == DC_OP_GATHER) {
        if (idx->ndim != x->ndim)
            return dc_error(DC_ERR_SHAPE, "gather: index %s and input %s must have the same number of dims",
                            DC_SHAPE(idx), DC_SHAPE(x));
        for (int d = 0; d < x->ndim; d++) {
            if (d != dim && idx->shape[d] > x->shape[d])
                return dc_error(DC_ERR_SHAPE, "gather: index %s is larger than input %s at dim %d", DC_SHAPE(idx),
                                DC_SHAPE(x), d);
            shape[d] = idx->shape[d];
        }
    } else {
        if (idx->ndim != 1)
            return dc_error(DC_ERR_SHAPE, "index_select: index must be 1-D, got shape %s", DC_SHAPE(idx));
        if (x->ndim == 0) return dc_error(DC_ERR_SHAPE, "index_select: input must have at least 1 dim");
        memcpy(shape, x->shape, sizeof shape);
        shape[dim] = idx->shape[0];
    }
    dc_tensor *y, *ic;
    DC_TRY(dc_contiguous(&ic, idx));
    dc_status st = dc_empty(&y, x->ndim, shape, x->dtype, x->device);
    if (!st) {
        dc_kargs k = kargs_of(op);
        kargs_add(&k, y);
        kargs_add(&k, x);
        kargs_add(&k, ic);
        k.p.dim.dim = dim;
        if (x->ndim == 0) { /* gather on a scalar: one element, index must be 0 */
            k.t[0].ndim = k.t[1].ndim = k.t[2].ndim = 1;
            k.t[0].shape[0] = k.t[1].shape[0] = k.t[2].shape[0] = 1;
            k.t[0].strides[0] = k.t[1].strides[0] = k.t[2].strides[0] = 1;
        }
        if (dc_numel(y))
            st = dc_launch(x->device, &k);
        else if (op == DC_OP_INDEX_SELECT && dc_numel(ic) && x->shape[dim] == 0)
            st = dc_error(DC_ERR_INDEX, "index_select: index out of range for dimension %d with size 0", dim);
    }
    dc_node *n = NULL;
    if (!st && dc_needs_grad(x) && dc_dtype_is_float(x->dtype)) {
        if (!(st = dc_node_new(&n, op == DC_OP_GATHER ? "GatherBackward" : "IndexSelectBackward", scatter_like_backward,
                               1, &x))) {
            dc_node_save(n, ic);
            n->i[0] = dim;
            n->i[1] = op == DC_OP_INDEX_SELECT;
            dc_node_attach(y, n);
        }
    }
    dc_tensor_decref(ic);
    if (st) {
        dc_tensor_decref(y);
        return st;
    }
    *out = y;
    return DC_OK;
}

dc_status dc_gather(dc_tensor **out, dc_tensor *x, int dim, dc_tensor *index)
{
    return index_op(out, DC_OP_GATHER, x, dim, index, "gather");
}
dc_status dc_index_select(dc_tensor **out, dc_tensor *x, int dim, dc_tensor *index)
{
    return index_op(out, DC_OP_INDEX_SELECT, x, dim, index, "index_select");
}

/* --- tril / triu ------------------------------------------------------------------------------ */

static dc_status tril_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    return dc_tril(&gin[0], g, n->i[0], (int)n->i[1]);
}

dc_status dc_tril(dc_tensor **out, dc_tensor *x, int64_t diagonal, int upper)
{
    if (x->ndim < 2)
        return dc_error(DC_ERR_SHAPE, "%s: input must have at least 2 dims, got shape %s", upper ? "triu" : "tril",
                        DC_SHAPE(x));
    dc_tensor *y;
    DC_TRY(dc_empty(&y, x->ndim, x->shape, x->dtype, x->device));
    dc_kargs k = kargs_of(DC_OP_TRIL);
    kargs_add(&k, y);
    kargs_add(&k, x);
    k.p.tril.diagonal = diagonal;
    k.p.tril.upper = upper;
    dc_status st = dc_numel(y) ? dc_launch(x->device, &k) : DC_OK;
    if (!st && dc_needs_grad(x)) {
        dc_node *n;
        if (!(st = dc_node_new(&n, upper ? "TriuBackward" : "TrilBackward", tril_backward, 1, &x))) {
            n->i[0] = diagonal;
            n->i[1] = upper;
            dc_node_attach(y, n);
        }
    }
    if (st) {
        dc_tensor_decref(y);
        return st;
    }
    *out = y;
    return DC_OK;
}
