/* ops_math.c: elementwise ops, reductions, softmax, layer norm and dropout, each forward next to
 * its backward. Backward formulas are written with the same ops (grad mode is off while they run). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "ops-impl.h"

static dc_status launch_binary(dc_tensor **out, dc_op op, dc_tensor *a, dc_tensor *b, dc_dtype out_dt)
{
    const char *name = dc_op_names[op];
    DC_TRY(same_device(a, b, name));
    DC_TRY(same_dtype(a, b, name));
    int nd;
    int64_t shape[DC_MAX_DIMS];
    DC_TRY(dc_broadcast_shape(a->ndim, a->shape, b->ndim, b->shape, &nd, shape, name));
    dc_tensor *y;
    DC_TRY(dc_empty(&y, nd, shape, out_dt, a->device));
    dc_kargs k = kargs_of(op);
    kargs_add(&k, y);
    dc_kview_broadcast(&k.t[k.nt++], a, nd, shape);
    dc_kview_broadcast(&k.t[k.nt++], b, nd, shape);
    DC_TRY(dc_launch_or_free(y, &k));
    *out = y;
    return DC_OK;
}

/* --- unary ---------------------------------------------------------------------------------- */

/* Backward of a UNARY op. Ops whose ops.def line names a GRAD op run that kernel on (g, saved);
 * the others compose their formula here from other ops. */
static dc_status unary_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    dc_op op = (dc_op)n->i[0];
    const dc_op_info_t *info = &dc_op_info[op];
    dc_tensor *s = NULL; /* what ops.def's saves column says: input x or output y */
    if (info->saves != DC_SAVES_NONE) DC_TRY(dc_node_saved(n, 0, &s));
    if (info->backward != DC_OP_NONE) return launch_binary(&gin[0], info->backward, g, s, g->dtype);
    dc_tensor *t1 = NULL, *t2 = NULL;
    dc_status st = DC_OK;
    switch (op) {
    case DC_OP_NEG: return dc_unary(&gin[0], DC_OP_NEG, g);
    case DC_OP_EXP: return dc_binary(&gin[0], DC_OP_MUL, g, s);
    case DC_OP_LOG: return dc_binary(&gin[0], DC_OP_DIV, g, s);
    case DC_OP_SQRT: /* g / (2 y) */
        DC_TRY(dc_binary(&t1, DC_OP_DIV, g, s));
        st = dc_mul_scalar(&gin[0], t1, 0.5);
        break;
    case DC_OP_RSQRT: /* -0.5 g y^3 */
        DC_TRY(dc_pow_scalar(&t1, s, 3.0));
        if (!(st = dc_binary(&t2, DC_OP_MUL, g, t1))) st = dc_mul_scalar(&gin[0], t2, -0.5);
        break;
    case DC_OP_SIN:
        DC_TRY(dc_unary(&t1, DC_OP_COS, s));
        st = dc_binary(&gin[0], DC_OP_MUL, g, t1);
        break;
    case DC_OP_COS:
        DC_TRY(dc_unary(&t1, DC_OP_SIN, s));
        if (!(st = dc_binary(&t2, DC_OP_MUL, g, t1))) st = dc_unary(&gin[0], DC_OP_NEG, t2);
        break;
    case DC_OP_ABS: { /* g * sign(x), 0 at 0 */
        dc_tensor *z = NULL, *pos = NULL, *neg = NULL, *ng = NULL, *inner = NULL;
        st = dc_scalar_like(&z, 0.0, s);
        if (!st) st = dc_binary(&pos, DC_OP_GT, s, z);
        if (!st) st = dc_binary(&neg, DC_OP_LT, s, z);
        if (!st) st = dc_unary(&ng, DC_OP_NEG, g);
        if (!st) st = dc_where(&inner, neg, ng, z);
        if (!st) st = dc_where(&gin[0], pos, g, inner);
        dc_tensor_decref(z);
        dc_tensor_decref(pos);
        dc_tensor_decref(neg);
        dc_tensor_decref(ng);
        dc_tensor_decref(inner);
        return st;
    }
    default:
        return dc_error(DC_ERR_INTERNAL, "no backward for unary op %s: give it a GRAD op in ops.def or a formula here",
                        dc_op_names[op]);
    }
    dc_tensor_decref(t1);
    dc_tensor_decref(t2);
    return st;
}

dc_status dc_unary(dc_tensor **out, dc_op op, dc_tensor *x)
{
    if (!dc_op_is(op, DC_FAM_UNARY)) return dc_error(DC_ERR_INTERNAL, "dc_unary: %d is not a unary op", (int)op);
    const dc_op_info_t *info = &dc_op_info[op];
    dc_tensor *y;
    DC_TRY(dc_empty(&y, x->ndim, x->shape, x->dtype, x->device));
    dc_kargs k = kargs_of(op);
    kargs_add(&k, y);
    kargs_add(&k, x);
    DC_TRY(dc_launch_or_free(y, &k));
    dc_node *n;
    DC_TRY(dc_record(y, info->node, unary_backward, 1, &x, &n));
    if (n) {
        n->i[0] = op;
        if (info->saves == DC_SAVES_OUTPUT)
            dc_save_output(n, y);
        else if (info->saves == DC_SAVES_INPUT)
            dc_node_save(n, x);
    }
    *out = y;
    return DC_OK;
}

static dc_status clamp_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    SAVED(n, 0, x);
    dc_tensor *y;
    DC_TRY(dc_empty(&y, g->ndim, g->shape, g->dtype, g->device));
    dc_kargs k = kargs_of(DC_OP_CLAMP_BWD);
    kargs_add(&k, y);
    dc_kview_broadcast(&k.t[k.nt++], g, y->ndim, y->shape);
    dc_kview_broadcast(&k.t[k.nt++], x, y->ndim, y->shape);
    k.p.clamp =
        (struct dc_clamp_params){ .lo = n->f[0], .hi = n->f[1], .has_lo = (int)n->i[0], .has_hi = (int)n->i[1] };
    DC_TRY(dc_launch_or_free(y, &k));
    gin[0] = y;
    return DC_OK;
}

dc_status dc_clamp(dc_tensor **out, dc_tensor *x, double lo, double hi, int has_lo, int has_hi)
{
    if (!has_lo && !has_hi) return dc_error(DC_ERR_VALUE, "clamp: at least one of min or max must be given");
    dc_tensor *y;
    DC_TRY(dc_empty(&y, x->ndim, x->shape, x->dtype, x->device));
    dc_kargs k = kargs_of(DC_OP_CLAMP);
    kargs_add(&k, y);
    kargs_add(&k, x);
    k.p.clamp = (struct dc_clamp_params){ .lo = lo, .hi = hi, .has_lo = has_lo, .has_hi = has_hi };
    DC_TRY(dc_launch_or_free(y, &k));
    dc_node *n;
    DC_TRY(dc_record(y, "ClampBackward", clamp_backward, 1, &x, &n));
    if (n) {
        dc_node_save(n, x);
        n->f[0] = lo;
        n->f[1] = hi;
        n->i[0] = has_lo;
        n->i[1] = has_hi;
    }
    *out = y;
    return DC_OK;
}

static dc_status pow_scalar_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    SAVED(n, 0, s);
    dc_tensor *t1, *t2;
    dc_status st;
    if (n->i[0]) { /* rpow: y = b^x, saved y: g * y * ln b */
        DC_TRY(dc_binary(&t1, DC_OP_MUL, g, s));
        st = dc_mul_scalar(&gin[0], t1, log(n->f[0]));
        dc_tensor_decref(t1);
        return st;
    }
    double p = n->f[0]; /* g * p * x^(p-1); exactly 0 for p == 0 (not 0 * inf at x = 0) */
    if (p == 0.0) return dc_zeros_of(&gin[0], g->ndim, g->shape, g->dtype, g->device);
    DC_TRY(dc_pow_scalar(&t1, s, p - 1.0));
    st = dc_binary(&t2, DC_OP_MUL, g, t1);
    dc_tensor_decref(t1);
    if (st) return st;
    st = dc_mul_scalar(&gin[0], t2, p);
    dc_tensor_decref(t2);
    return st;
}

static dc_status pow_scalar_impl(dc_tensor **out, dc_tensor *x, double v, int rpow)
{
    dc_tensor *y;
    DC_TRY(dc_empty(&y, x->ndim, x->shape, x->dtype, x->device));
    dc_kargs k = kargs_of(rpow ? DC_OP_RPOW_SCALAR : DC_OP_POW_SCALAR);
    kargs_add(&k, y);
    kargs_add(&k, x);
    k.p.scalar.value = v;
    DC_TRY(dc_launch_or_free(y, &k));
    dc_node *n;
    DC_TRY(dc_record(y, "PowBackward", pow_scalar_backward, 1, &x, &n));
    if (n) {
        n->f[0] = v;
        n->i[0] = rpow;
        if (rpow)
            dc_save_output(n, y);
        else
            dc_node_save(n, x);
    }
    *out = y;
    return DC_OK;
}

dc_status dc_pow_scalar(dc_tensor **out, dc_tensor *x, double p)
{
    return pow_scalar_impl(out, x, p, 0);
}
dc_status dc_rpow_scalar(dc_tensor **out, double base, dc_tensor *x)
{
    return pow_scalar_impl(out, x, base, 1);
}

/* --- binary ----------------------------------------------------------------------------------- */

/* gin[k] = sum_to(t, input k's shape); consumes t */
static dc_status reduce_into(dc_node *n, int k, dc_tensor *t, dc_tensor **gin)
{
    dc_status st = dc_sum_to(&gin[k], t, n->in_ndim[k], n->in_shape[k]);
    dc_tensor_decref(t);
    return st;
}

static dc_status binary_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    dc_op op = (dc_op)n->i[0];
    dc_tensor *a = NULL, *b = NULL, *t = NULL, *u = NULL;
    if (n->n_saved) {
        DC_TRY(dc_node_saved(n, 0, &a));
        DC_TRY(dc_node_saved(n, 1, &b));
    }
    int ga = n->next[0] != NULL, gb = n->next[1] != NULL;
    dc_status st = DC_OK;
    switch (op) {
    case DC_OP_ADD:
    case DC_OP_SUB:
        if (ga) {
            dc_tensor_incref(g);
            DC_TRY(reduce_into(n, 0, g, gin));
        }
        if (gb) {
            if (op == DC_OP_ADD)
                dc_tensor_incref(g), t = g;
            else
                DC_TRY(dc_unary(&t, DC_OP_NEG, g));
            DC_TRY(reduce_into(n, 1, t, gin));
        }
        return DC_OK;
    case DC_OP_MUL:
        if (ga) {
            DC_TRY(dc_binary(&t, DC_OP_MUL, g, b));
            DC_TRY(reduce_into(n, 0, t, gin));
        }
        if (gb) {
            DC_TRY(dc_binary(&t, DC_OP_MUL, g, a));
            DC_TRY(reduce_into(n, 1, t, gin));
        }
        return DC_OK;
    case DC_OP_DIV: /* ga = g / b; gb = -ga * a / b */
        DC_TRY(dc_binary(&t, DC_OP_DIV, g, b));
        if (gb) {
            if (!(st = dc_binary(&u, DC_OP_MUL, t, a))) {
                dc_tensor *v;
                if (!(st = dc_binary(&v, DC_OP_DIV, u, b))) {
                    dc_tensor *w;
                    if (!(st = dc_unary(&w, DC_OP_NEG, v))) st = reduce_into(n, 1, w, gin);
                    dc_tensor_decref(v);
                }
                dc_tensor_decref(u);
            }
        }
        if (!st && ga) return reduce_into(n, 0, t, gin);
        dc_tensor_decref(t);
        return st;
    case DC_OP_POW: { /* ga = g * b * a^(b-1); gb = g * a^b * log(a) */
        dc_tensor *one, *bm1, *p, *q;
        if (ga) {
            DC_TRY(dc_scalar_like(&one, 1.0, b));
            st = dc_binary(&bm1, DC_OP_SUB, b, one);
            dc_tensor_decref(one);
            if (st) return st;
            st = dc_binary(&p, DC_OP_POW, a, bm1);
            dc_tensor_decref(bm1);
            if (st) return st;
            st = dc_binary(&q, DC_OP_MUL, p, b);
            dc_tensor_decref(p);
            if (st) return st;
            { /* where b == 0 the derivative is 0, not 0 * a^-1 (NaN at a = 0) */
                dc_tensor *z, *bz, *qm;
                if ((st = dc_scalar_like(&z, 0.0, b))) goto pow_q;
                if (!(st = dc_binary(&bz, DC_OP_EQ, b, z))) {
                    if (!(st = dc_where(&qm, bz, z, q))) {
                        dc_tensor_decref(q);
                        q = qm;
                    }
                    dc_tensor_decref(bz);
                }
                dc_tensor_decref(z);
            }
        pow_q:
            if (st) {
                dc_tensor_decref(q);
                return st;
            }
            st = dc_binary(&t, DC_OP_MUL, g, q);
            dc_tensor_decref(q);
            if (st) return st;
            DC_TRY(reduce_into(n, 0, t, gin));
        }
        if (gb) {
            DC_TRY(dc_binary(&p, DC_OP_POW, a, b));
            st = dc_unary(&q, DC_OP_LOG, a);
            if (!st) {
                dc_tensor *r;
                if (!(st = dc_binary(&r, DC_OP_MUL, p, q))) {
                    /* 0 where a == 0 and b >= 0 (a^b log a -> 0 there, not 1 * -inf), as torch does */
                    dc_tensor *z = NULL, *a0 = NULL, *bpos = NULL, *no = NULL, *cond = NULL, *rm = NULL;
                    st = dc_scalar_like(&z, 0.0, a);
                    if (!st) st = dc_binary(&a0, DC_OP_EQ, a, z);
                    if (!st) st = dc_binary(&bpos, DC_OP_GE, b, z);
                    if (!st) st = dc_full(&no, 0, NULL, 0.0, DC_BOOL, a->device);
                    if (!st) st = dc_where(&cond, a0, bpos, no);
                    if (!st) st = dc_where(&rm, cond, z, r);
                    if (!st) st = dc_binary(&t, DC_OP_MUL, g, rm);
                    if (!st) st = reduce_into(n, 1, t, gin);
                    dc_tensor_decref(z);
                    dc_tensor_decref(a0);
                    dc_tensor_decref(bpos);
                    dc_tensor_decref(no);
                    dc_tensor_decref(cond);
                    dc_tensor_decref(rm);
                    dc_tensor_decref(r);
                }
                dc_tensor_decref(q);
            }
            dc_tensor_decref(p);
        }
        return st;
    }
    case DC_OP_MAXIMUM:
    case DC_OP_MINIMUM: { /* the larger (smaller) side gets g; ties split it in half */
        dc_tensor *win, *tie, *z, *half, *gh;
        DC_TRY(dc_binary(&win, op == DC_OP_MAXIMUM ? DC_OP_GT : DC_OP_LT, a, b));
        DC_TRY(dc_binary(&tie, DC_OP_EQ, a, b));
        DC_TRY(dc_scalar_like(&z, 0.0, g));
        DC_TRY(dc_mul_scalar(&gh, g, 0.5));
        for (int side = 0; side < 2 && !st; side++) {
            if (!(side ? gb : ga)) continue;
            dc_tensor *base;
            if (side == 0)
                st = dc_where(&base, win, g, z);
            else
                st = dc_where(&base, win, z, g);
            if (st) break;
            if (!(st = dc_where(&half, tie, gh, base))) st = reduce_into(n, side, half, gin);
            dc_tensor_decref(base);
        }
        dc_tensor_decref(win);
        dc_tensor_decref(tie);
        dc_tensor_decref(z);
        dc_tensor_decref(gh);
        return st;
    }
    case DC_OP_FLOOR_DIVIDE: /* piecewise constant: zero gradient, as torch */
        for (int side = 0; side < 2; side++)
            if (n->next[side])
                DC_TRY(dc_zeros_of(&gin[side], n->in_ndim[side], n->in_shape[side], g->dtype, g->device));
        return DC_OK;
    case DC_OP_REMAINDER: /* a - floor(a / b) * b: ga = g, gb = -g * floor(a / b) */
        if (ga) {
            dc_tensor_incref(g);
            DC_TRY(reduce_into(n, 0, g, gin));
        }
        if (gb) {
            DC_TRY(dc_binary(&t, DC_OP_FLOOR_DIVIDE, a, b));
            st = dc_binary(&u, DC_OP_MUL, g, t);
            dc_tensor_decref(t);
            if (st) return st;
            st = dc_unary(&t, DC_OP_NEG, u);
            dc_tensor_decref(u);
            if (st) return st;
            DC_TRY(reduce_into(n, 1, t, gin));
        }
        return DC_OK;
    default: return dc_error(DC_ERR_INTERNAL, "no backward for binary op %s", dc_op_names[op]);
    }
}

static dc_status binary_same(dc_tensor **out, dc_op op, dc_tensor *a, dc_tensor *b);

/* Operands of different dtypes meet in their result type (torch's type promotion): each is cast
 * (differentiably) first. */
dc_status dc_binary(dc_tensor **out, dc_op op, dc_tensor *a, dc_tensor *b)
{
    if (a->dtype == b->dtype) return binary_same(out, op, a, b);
    DC_TRY(same_device(a, b, dc_op_names[op]));
    dc_dtype rt = result_type2(a, b);
    dc_tensor *ca, *cb;
    DC_TRY(cast_to(&ca, a, rt));
    dc_status st = cast_to(&cb, b, rt);
    if (!st) {
        st = binary_same(out, op, ca, cb);
        dc_tensor_decref(cb);
    }
    dc_tensor_decref(ca);
    return st;
}

static dc_status binary_same(dc_tensor **out, dc_op op, dc_tensor *a, dc_tensor *b)
{
    int cmp = dc_op_is(op, DC_FAM_COMPARE);
    if (!cmp && !dc_op_is(op, DC_FAM_BINARY))
        return dc_error(DC_ERR_INTERNAL, "dc_binary: %d is not a binary op", (int)op);
    if (op == DC_OP_DIV || op == DC_OP_POW) DC_TRY(need_float(a, dc_op_names[op]));
    dc_tensor *y;
    DC_TRY(launch_binary(&y, op, a, b, cmp ? DC_BOOL : a->dtype));
    if (!cmp && dc_dtype_is_float(a->dtype)) {
        dc_tensor *in[2] = { a, b };
        dc_node *n;
        DC_TRY(dc_record(y, dc_op_info[op].node, binary_backward, 2, in, &n));
        if (n) {
            n->i[0] = op;
            if (op != DC_OP_ADD && op != DC_OP_SUB) {
                dc_node_save(n, a);
                dc_node_save(n, b);
            }
        }
    }
    *out = y;
    return DC_OK;
}

dc_status dc_binary_(dc_op op, dc_tensor *t, dc_tensor *other)
{
    if (!dc_op_is(op, DC_FAM_BINARY)) return dc_error(DC_ERR_INTERNAL, "dc_binary_: %d is not a binary op", (int)op);
    int nd;
    int64_t shape[DC_MAX_DIMS];
    DC_TRY(same_device(t, other, dc_op_names[op]));
    if (other->dtype != t->dtype) { /* torch: the result type must be castable to t's dtype */
        dc_dtype rt = result_type2(t, other);
        if (!dc_can_cast(rt, t->dtype))
            return dc_error(DC_ERR_DTYPE, "in-place %s: result type %s can't be cast to the desired output type %s",
                            dc_op_names[op], dc_dtype_name(rt), dc_dtype_name(t->dtype));
        dc_tensor *c;
        int prev = dc_grad_enabled();
        dc_set_grad_enabled(0);
        dc_status st = dc_to(&c, other, t->dtype, other->device);
        if (!st) {
            st = dc_binary_(op, t, c);
            dc_tensor_decref(c);
        }
        dc_set_grad_enabled(prev);
        return st;
    }
    DC_TRY(dc_broadcast_shape(t->ndim, t->shape, other->ndim, other->shape, &nd, shape, dc_op_names[op]));
    if (nd != t->ndim || memcmp(shape, t->shape, sizeof(int64_t) * nd))
        return dc_error(DC_ERR_SHAPE, "in-place %s: other of shape %s can't be broadcast to shape %s", dc_op_names[op],
                        DC_SHAPE(other), DC_SHAPE(t));
    DC_TRY(begin_inplace(t, dc_op_names[op]));
    if (inplace_overlap(t, other)) { /* e.g. x.add_(x.T): read a copy of other */
        dc_tensor *c;
        int prev = dc_grad_enabled();
        dc_set_grad_enabled(0);
        dc_status st = dc_clone(&c, other);
        if (st == DC_OK) {
            st = dc_binary_(op, t, c);
            dc_tensor_decref(c);
        }
        dc_set_grad_enabled(prev);
        return st;
    }
    if (!dc_is_contiguous(t)) { /* compute out of place, then write back through the view */
        dc_tensor *y;
        int prev = dc_grad_enabled();
        dc_set_grad_enabled(0);
        dc_status st = launch_binary(&y, op, t, other, t->dtype);
        if (st == DC_OK) {
            st = dc_copy_(t, y);
            dc_tensor_decref(y);
        }
        dc_set_grad_enabled(prev);
        return st;
    }
    dc_kargs k = kargs_of(op);
    kargs_add(&k, t);
    kargs_add(&k, t);
    dc_kview_broadcast(&k.t[k.nt++], other, t->ndim, t->shape);
    return dc_numel(t) ? dc_launch(t->device, &k) : DC_OK;
}

static dc_status where_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    SAVED(n, 0, cond);
    dc_tensor *z, *t;
    DC_TRY(dc_scalar_like(&z, 0.0, g));
    dc_status st = DC_OK;
    for (int side = 1; side <= 2 && !st; side++) {
        if (!n->next[side]) continue;
        st = side == 1 ? dc_where(&t, cond, g, z) : dc_where(&t, cond, z, g);
        if (!st) st = reduce_into(n, side, t, gin);
    }
    dc_tensor_decref(z);
    return st;
}

dc_status dc_where(dc_tensor **out, dc_tensor *cond, dc_tensor *a, dc_tensor *b)
{
    if (cond->dtype != DC_BOOL)
        return dc_error(DC_ERR_DTYPE, "where: condition must be a bool tensor, got %s", dc_dtype_name(cond->dtype));
    DC_TRY(same_device(cond, a, "where"));
    DC_TRY(same_device(a, b, "where"));
    if (a->dtype != b->dtype) {
        dc_dtype rt = result_type2(a, b);
        dc_tensor *ca, *cb;
        DC_TRY(cast_to(&ca, a, rt));
        dc_status st = cast_to(&cb, b, rt);
        if (!st) {
            st = dc_where(out, cond, ca, cb);
            dc_tensor_decref(cb);
        }
        dc_tensor_decref(ca);
        return st;
    }
    int nd, nd2;
    int64_t s1[DC_MAX_DIMS], shape[DC_MAX_DIMS];
    DC_TRY(dc_broadcast_shape(cond->ndim, cond->shape, a->ndim, a->shape, &nd, s1, "where"));
    DC_TRY(dc_broadcast_shape(nd, s1, b->ndim, b->shape, &nd2, shape, "where"));
    dc_tensor *y;
    DC_TRY(dc_empty(&y, nd2, shape, a->dtype, a->device));
    dc_kargs k = kargs_of(DC_OP_WHERE);
    kargs_add(&k, y);
    dc_kview_broadcast(&k.t[k.nt++], cond, nd2, shape);
    dc_kview_broadcast(&k.t[k.nt++], a, nd2, shape);
    dc_kview_broadcast(&k.t[k.nt++], b, nd2, shape);
    DC_TRY(dc_launch_or_free(y, &k));
    dc_tensor *in[3] = { cond, a, b };
    dc_node *n;
    DC_TRY(dc_record(y, "WhereBackward", where_backward, 3, in, &n));
    if (n) dc_node_save(n, cond);
    *out = y;
    return DC_OK;
}

dc_status dc_dropout(dc_tensor **out, dc_tensor *x, double p, int training)
{
    if (!(p >= 0 && p <= 1)) return dc_error(DC_ERR_VALUE, "dropout probability has to be between 0 and 1, got %g", p);
    if (!training || p == 0) {
        dc_tensor_incref(x);
        *out = x;
        return DC_OK;
    }
    DC_TRY(need_float(x, "dropout"));
    if (p == 1) return dc_mul_scalar(out, x, 0.0);
    dc_tensor *r, *thr, *keep, *mask;
    DC_TRY(dc_random(&r, DC_OP_RAND, x->ndim, x->shape, 0, 0, x->dtype, x->device));
    dc_status st = dc_scalar_like(&thr, p, r);
    if (!st) {
        st = dc_binary(&keep, DC_OP_GE, r, thr);
        dc_tensor_decref(thr);
    }
    dc_tensor_decref(r);
    if (st) return st;
    st = dc_to(&mask, keep, x->dtype, x->device);
    dc_tensor_decref(keep);
    if (st) return st;
    dc_tensor *scaled;
    st = dc_mul_scalar(&scaled, mask, 1.0 / (1.0 - p));
    dc_tensor_decref(mask);
    if (st) return st;
    st = dc_binary(out, DC_OP_MUL, x, scaled);
    dc_tensor_decref(scaled);
    return st;
}

/* --- reductions ------------------------------------------------------------------------------ */

/* Parse a dim list into a mask; n == 0: all dims. */
static dc_status dims_mask(int n, const int *dims, int ndim, int *mask, const char *op)
{
    for (int d = 0; d < DC_MAX_DIMS; d++) mask[d] = n == 0;
    for (int k = 0; k < n; k++) {
        int d = dims[k];
        DC_TRY(wrap_dim(&d, ndim, op));
        if (ndim == 0) continue;
        if (mask[d]) return dc_error(DC_ERR_VALUE, "%s: dim %d appears more than once", op, dims[k]);
        mask[d] = 1;
    }
    return DC_OK;
}

/* Run reduction kernel `op` over masked dims; result has keepdim geometry unless !keepdim. */
dc_status dc_reduce_raw(dc_tensor **out, dc_op op, dc_tensor *x, const int *mask, int keepdim, dc_dtype dt)
{
    int64_t kshape[DC_MAX_DIMS], shape[DC_MAX_DIMS];
    int nd = 0;
    for (int d = 0; d < x->ndim; d++) {
        kshape[d] = mask[d] ? 1 : x->shape[d];
        if (!mask[d] || keepdim) shape[nd++] = kshape[d];
    }
    dc_tensor *y;
    DC_TRY(dc_empty(&y, x->ndim, kshape, dt, x->device));
    dc_kargs k = kargs_of(op);
    kargs_add(&k, y);
    kargs_add(&k, x);
    dc_status st = dc_numel(y) ? dc_launch(x->device, &k) : DC_OK;
    if (!st && !keepdim) {
        dc_tensor *v;
        int64_t strides[DC_MAX_DIMS];
        dc_contiguous_strides(nd, shape, strides);
        st = dc_alias(&v, y, nd, shape, strides, 0);
        dc_tensor_decref(y);
        y = st ? NULL : v;
    }
    if (st) {
        dc_tensor_decref(y);
        return st;
    }
    *out = y;
    return DC_OK;
}

/* g (reduced, maybe without keepdim) -> keepdim shape of the input, as a view */
static dc_status unsqueeze_reduced(dc_tensor **out, dc_tensor *g, dc_node *n)
{
    int64_t shape[DC_MAX_DIMS];
    int nd = n->in_ndim[0];
    for (int d = 0; d < nd; d++) shape[d] = n->i[d] ? 1 : n->in_shape[0][d];
    return dc_reshape(out, g, nd, shape);
}

static dc_status sum_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    dc_tensor *k, *e, *s;
    DC_TRY(unsqueeze_reduced(&k, g, n));
    dc_status st = dc_expand(&e, k, n->in_ndim[0], n->in_shape[0]);
    dc_tensor_decref(k);
    if (st) return st;
    if (n->f[0] == 1.0) {
        gin[0] = e;
        return DC_OK;
    }
    st = dc_mul_scalar(&s, e, n->f[0]); /* mean: divide by the count */
    dc_tensor_decref(e);
    if (!st) gin[0] = s;
    return st;
}

static dc_status sum_impl(dc_tensor **out, dc_tensor *x, int n, const int *dims, int keepdim, int mean)
{
    int mask[DC_MAX_DIMS];
    const char *name = mean ? "mean" : "sum";
    DC_TRY(dims_mask(n, dims, x->ndim, mask, name));
    if (mean) DC_TRY(need_float(x, "mean"));
    dc_tensor *src = x, *y;
    if (!dc_dtype_is_float(x->dtype) && x->dtype != DC_INT64) /* torch: integer sums are int64 */
        DC_TRY(dc_to(&src, x, DC_INT64, x->device));
    else
        dc_tensor_incref(src);
    dc_status st = dc_reduce_raw(&y, DC_OP_SUM, src, mask, keepdim, src->dtype);
    dc_tensor_decref(src);
    if (st) return st;
    int64_t count = 1;
    for (int d = 0; d < x->ndim; d++)
        if (mask[d]) count *= x->shape[d];
    if (mean) {
        dc_tensor *m;
        st = dc_mul_scalar(&m, y, count ? 1.0 / (double)count : NAN);
        dc_tensor_decref(y);
        if (st) return st;
        y = m;
        dc_node_decref(y->grad_fn); /* the node below replaces the scalar multiply's */
        y->grad_fn = NULL;
        y->requires_grad = 0;
    }
    dc_node *node;
    DC_TRY(dc_record(y, mean ? "MeanBackward" : "SumBackward", sum_backward, 1, &x, &node));
    if (node) {
        for (int d = 0; d < x->ndim; d++) node->i[d] = mask[d];
        node->f[0] = mean ? (count ? 1.0 / (double)count : NAN) : 1.0;
    }
    *out = y;
    return DC_OK;
}

dc_status dc_sum(dc_tensor **out, dc_tensor *x, int n, const int *dims, int keepdim)
{
    return sum_impl(out, x, n, dims, keepdim, 0);
}
dc_status dc_mean(dc_tensor **out, dc_tensor *x, int n, const int *dims, int keepdim)
{
    return sum_impl(out, x, n, dims, keepdim, 1);
}

static dc_status amax_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    SAVED(n, 0, x);
    SAVED(n, 1, yk); /* keepdim-shaped result */
    dc_tensor *eq, *m, *cnt, *gk, *t;
    DC_TRY(dc_binary(&eq, DC_OP_EQ, x, yk));
    dc_status st = dc_to(&m, eq, x->dtype, x->device);
    dc_tensor_decref(eq);
    if (st) return st;
    int mask[DC_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++) mask[d] = yk->shape[d] == 1 && x->shape[d] != 1;
    for (int d = 0; d < x->ndim; d++) mask[d] |= (int)n->i[DC_MAX_DIMS + d];
    if ((st = dc_reduce_raw(&cnt, DC_OP_SUM, m, mask, 1, m->dtype))) goto out_m;
    if ((st = dc_reshape(&gk, g, yk->ndim, yk->shape))) goto out_c;
    if (!(st = dc_binary(&t, DC_OP_DIV, gk, cnt))) {
        st = dc_binary(&gin[0], DC_OP_MUL, m, t);
        dc_tensor_decref(t);
    }
    dc_tensor_decref(gk);
out_c:
    dc_tensor_decref(cnt);
out_m:
    dc_tensor_decref(m);
    return st;
}

dc_status dc_amax(dc_tensor **out, dc_tensor *x, int n, const int *dims, int keepdim, int is_min)
{
    if (narrow_int(x->dtype)) {
        dc_tensor *w, *r;
        DC_TRY(dc_to(&w, x, DC_INT32, x->device));
        dc_status st = dc_amax(&r, w, n, dims, keepdim, is_min);
        dc_tensor_decref(w);
        if (st) return st;
        st = dc_to(out, r, x->dtype, x->device);
        dc_tensor_decref(r);
        return st;
    }
    int mask[DC_MAX_DIMS];
    const char *name = is_min ? "min" : "max";
    DC_TRY(dims_mask(n, dims, x->ndim, mask, name));
    for (int d = 0; d < x->ndim; d++)
        if (mask[d] && x->shape[d] == 0)
            return dc_error(DC_ERR_VALUE, "%s(): expected a non-empty dim %d to reduce over (shape %s)", name, d,
                            DC_SHAPE(x));
    dc_tensor *yk, *y;
    DC_TRY(dc_reduce_raw(&yk, is_min ? DC_OP_MIN : DC_OP_MAX, x, mask, 1, x->dtype));
    if (keepdim) {
        y = yk;
        dc_tensor_incref(y);
    } else {
        int64_t shape[DC_MAX_DIMS], strides[DC_MAX_DIMS];
        int nd = 0;
        for (int d = 0; d < x->ndim; d++)
            if (!mask[d]) shape[nd++] = x->shape[d];
        dc_contiguous_strides(nd, shape, strides);
        dc_status st = dc_alias(&y, yk, nd, shape, strides, 0);
        if (st) {
            dc_tensor_decref(yk);
            return st;
        }
    }
    dc_node *node = NULL;
    if (dc_dtype_is_float(x->dtype)) {
        dc_status st = dc_record(y, is_min ? "MinBackward" : "MaxBackward", amax_backward, 1, &x, &node);
        if (st) {
            dc_tensor_decref(yk);
            return st;
        }
    }
    if (node) {
        dc_node_save(node, x);
        dc_node_save(node, yk);
        for (int d = 0; d < x->ndim; d++) node->i[DC_MAX_DIMS + d] = mask[d];
    }
    dc_tensor_decref(yk);
    *out = y;
    return DC_OK;
}

dc_status dc_argmax(dc_tensor **out, dc_tensor *x, int dim, int keepdim, int is_min)
{
    if (narrow_int(x->dtype)) {
        dc_tensor *w;
        DC_TRY(dc_to(&w, x, DC_INT32, x->device));
        dc_status st = dc_argmax(out, w, dim, keepdim, is_min);
        dc_tensor_decref(w);
        return st;
    }
    const char *name = is_min ? "argmin" : "argmax";
    dc_tensor *src;
    if (dim == DC_ALL_DIMS) {
        int64_t n = dc_numel(x);
        int prev = dc_grad_enabled();
        dc_set_grad_enabled(0);
        dc_status st = dc_reshape(&src, x, 1, &n);
        dc_set_grad_enabled(prev);
        if (st) return st;
        dim = 0;
        keepdim = 0;
    } else {
        DC_TRY(wrap_dim(&dim, x->ndim, name));
        dc_tensor_incref(x);
        src = x;
    }
    if (src->ndim > 0 && src->shape[dim] == 0) {
        dc_tensor_decref(src);
        return dc_error(DC_ERR_VALUE, "%s(): expected a non-empty dim to reduce over", name);
    }
    int mask[DC_MAX_DIMS] = { 0 };
    if (src->ndim) mask[dim] = 1;
    dc_tensor *y;
    int64_t kshape[DC_MAX_DIMS];
    for (int d = 0; d < src->ndim; d++) kshape[d] = mask[d] ? 1 : src->shape[d];
    dc_status st = dc_empty(&y, src->ndim, kshape, DC_INT64, src->device);
    if (!st) {
        dc_kargs k = kargs_of(is_min ? DC_OP_ARGMIN : DC_OP_ARGMAX);
        kargs_add(&k, y);
        kargs_add(&k, src);
        k.p.dim.dim = dim;
        if (src->ndim == 0)
            st = dc_fill_(y, 0.0);
        else if (dc_numel(y))
            st = dc_launch(src->device, &k);
    }
    dc_tensor_decref(src);
    if (st) {
        dc_tensor_decref(y);
        return st;
    }
    if (!keepdim && y->ndim) {
        dc_tensor *v;
        st = dc_squeeze(&v, y, dim);
        dc_tensor_decref(y);
        if (st) return st;
        y = v;
    }
    *out = y;
    return DC_OK;
}

/* --- softmax and layer norm -------------------------------------------------------------------- */

static dc_status softmax_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    SAVED(n, 0, y);
    dc_tensor *dx;
    DC_TRY(dc_empty(&dx, y->ndim, y->shape, y->dtype, y->device));
    dc_kargs k = kargs_of(n->i[1] ? DC_OP_LOG_SOFTMAX_BWD : DC_OP_SOFTMAX_BWD);
    kargs_add(&k, dx);
    kargs_add(&k, g);
    kargs_add(&k, y);
    k.p.dim.dim = n->i[0];
    DC_TRY(dc_launch_or_free(dx, &k));
    gin[0] = dx;
    return DC_OK;
}

dc_status dc_softmax(dc_tensor **out, dc_tensor *x, int dim, int log)
{
    const char *name = log ? "log_softmax" : "softmax";
    DC_TRY(need_float(x, name));
    DC_TRY(wrap_dim(&dim, x->ndim, name));
    dc_tensor *y;
    DC_TRY(dc_empty(&y, x->ndim, x->shape, x->dtype, x->device));
    dc_kargs k = kargs_of(log ? DC_OP_LOG_SOFTMAX : DC_OP_SOFTMAX);
    kargs_add(&k, y);
    kargs_add(&k, x);
    k.p.dim.dim = x->ndim ? dim : 0;
    if (x->ndim == 0) { /* treat a scalar as one element along a length-1 dim */
        k.t[0].ndim = k.t[1].ndim = 1;
        k.t[0].shape[0] = k.t[1].shape[0] = 1;
        k.t[0].strides[0] = k.t[1].strides[0] = 1;
    }
    DC_TRY(dc_launch_or_free(y, &k));
    dc_node *n;
    DC_TRY(dc_record(y, log ? "LogSoftmaxBackward" : "SoftmaxBackward", softmax_backward, 1, &x, &n));
    if (n) {
        dc_save_output(n, y);
        n->i[0] = k.p.dim.dim;
        n->i[1] = log;
    }
    *out = y;
    return DC_OK;
}

/* Attention weights: softmax(scale * x) over the last dim in one pass, keys in the future of each
 * query masked when causal. Replaces scale, masked_fill and softmax (three passes over the
 * (..., Tq, Tk) scores, forward and backward) in scaled_dot_product_attention. */
static dc_status attn_softmax_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    SAVED(n, 0, y);
    dc_tensor *gc, *dx;
    DC_TRY(dc_contiguous(&gc, g));
    dc_status st = dc_empty(&dx, y->ndim, y->shape, y->dtype, y->device);
    if (st) {
        dc_tensor_decref(gc);
        return st;
    }
    dc_kargs k = kargs_of(DC_OP_ATTN_SOFTMAX_BWD);
    kargs_add(&k, dx);
    kargs_add(&k, gc);
    kargs_add(&k, y);
    k.p.attn = (struct dc_attn_params){ .scale = n->f[0], .causal = (int)n->i[0] };
    st = dc_launch_or_free(dx, &k);
    dc_tensor_decref(gc);
    if (st) return st;
    gin[0] = dx;
    return DC_OK;
}

dc_status dc_attn_softmax(dc_tensor **out, dc_tensor *x, double scale, int causal)
{
    DC_TRY(need_float(x, "attn_softmax"));
    if (x->ndim < 1) return dc_error(DC_ERR_SHAPE, "attn_softmax: expected scores of at least 1 dim, got a scalar");
    if (!isfinite(scale)) return dc_error(DC_ERR_VALUE, "attn_softmax: scale must be finite, got %g", scale);
    dc_tensor *xc, *y;
    DC_TRY(dc_contiguous(&xc, x));
    dc_status st = dc_empty(&y, x->ndim, x->shape, x->dtype, x->device);
    if (st) {
        dc_tensor_decref(xc);
        return st;
    }
    dc_kargs k = kargs_of(DC_OP_ATTN_SOFTMAX);
    kargs_add(&k, y);
    kargs_add(&k, xc);
    k.p.attn = (struct dc_attn_params){ .scale = scale, .causal = causal != 0 };
    st = dc_launch_or_free(y, &k);
    dc_tensor_decref(xc);
    if (st) return st;
    dc_node *n;
    DC_TRY(dc_record(y, dc_op_info[DC_OP_ATTN_SOFTMAX].node, attn_softmax_backward, 1, &x, &n));
    if (n) {
        dc_save_output(n, y);
        n->f[0] = scale;
        n->i[0] = causal != 0;
    }
    *out = y;
    return DC_OK;
}

static dc_status layer_norm_backward(dc_node *n, dc_tensor *g, dc_tensor **gin)
{
    SAVED(n, 0, x);    /* (N, D) contiguous */
    SAVED(n, 1, mean); /* (N,) */
    SAVED(n, 2, rstd); /* (N,) */
    SAVED(n, 3, w);    /* (D,) or NULL */
    int64_t N = x->shape[0], D = x->shape[1];
    int has_w = n->i[0], has_b = n->i[1];
    dc_tensor *dy = NULL, *dx = NULL, *dw = NULL, *db = NULL, *gc = NULL;
    dc_status st = dc_contiguous(&gc, g);
    if (!st) st = dc_reshape(&dy, gc, 2, x->shape);
    if (!st) st = dc_empty(&dx, 2, x->shape, x->dtype, x->device);
    if (!st && has_w) st = dc_empty(&dw, 1, &D, x->dtype, x->device);
    if (!st && has_b) st = dc_empty(&db, 1, &D, x->dtype, x->device);
    if (!st) {
        dc_kargs k = kargs_of(DC_OP_LAYERNORM_BWD);
        k.nt = 8;
        dc_kview_of(&k.t[0], dx);
        if (dw) dc_kview_of(&k.t[1], dw);
        if (db) dc_kview_of(&k.t[2], db);
        dc_kview_of(&k.t[3], dy);
        dc_kview_of(&k.t[4], x);
        dc_kview_of(&k.t[5], mean);
        dc_kview_of(&k.t[6], rstd);
        if (w) dc_kview_of(&k.t[7], w);
        k.p.layernorm.has_w = has_w;
        k.p.layernorm.has_b = has_b;
        if (N && D)
            st = dc_launch(x->device, &k);
        else {
            if (dw) st = dc_fill_(dw, 0);
            if (!st && db) st = dc_fill_(db, 0);
        }
    }
    if (!st) st = dc_reshape(&gin[0], dx, n->in_ndim[0], n->in_shape[0]);
    dc_tensor_decref(gc);
    dc_tensor_decref(dy);
    dc_tensor_decref(dx);
    if (!st && n->next[1]) {
        gin[1] = dw;
        dw = NULL;
    }
    if (!st && n->next[2]) {
        gin[2] = db;
        db = NULL;
    }
    dc_tensor_decref(dw);
    dc_tensor_decref(db);
    return st;
}

dc_status dc_layer_norm(dc_tensor **out, dc_tensor *x, dc_tensor *w, dc_tensor *b, double eps)
{
    DC_TRY(need_float(x, "layer_norm"));
    if (x->ndim == 0) return dc_error(DC_ERR_SHAPE, "layer_norm: input must have at least 1 dim");
    int64_t D = x->shape[x->ndim - 1], N = D ? dc_numel(x) / D : 0;
    dc_tensor *p[2] = { w, b };
    for (int k = 0; k < 2; k++) {
        if (!p[k]) continue;
        const char *nm = k ? "bias" : "weight";
        DC_TRY(same_device(x, p[k], "layer_norm"));
        DC_TRY(same_dtype(x, p[k], "layer_norm"));
        if (p[k]->ndim != 1 || p[k]->shape[0] != D)
            return dc_error(DC_ERR_SHAPE, "layer_norm: %s has shape %s but the normalised dim has size %lld", nm,
                            DC_SHAPE(p[k]), (long long)D);
    }
    dc_tensor *xc = NULL, *x2 = NULL, *y = NULL, *mean = NULL, *rstd = NULL, *wc = NULL, *bc = NULL;
    int64_t shape2[2] = { N, D };
    int prev = dc_grad_enabled();
    dc_set_grad_enabled(0); /* internal reshapes are not part of the graph */
    dc_status st = dc_contiguous(&xc, x);
    if (!st) st = dc_reshape(&x2, xc, 2, shape2);
    if (!st && w) st = dc_contiguous(&wc, w);
    if (!st && b) st = dc_contiguous(&bc, b);
    dc_set_grad_enabled(prev);
    if (!st) st = dc_empty(&y, x->ndim, x->shape, x->dtype, x->device);
    if (!st) st = dc_empty(&mean, 1, &N, x->dtype, x->device);
    if (!st) st = dc_empty(&rstd, 1, &N, x->dtype, x->device);
    if (!st && N && D) {
        dc_kargs k = kargs_of(DC_OP_LAYERNORM);
        k.nt = 6;
        dc_kview_of(&k.t[0], y);
        k.t[0].ndim = 2;
        k.t[0].shape[0] = N;
        k.t[0].shape[1] = D;
        k.t[0].strides[0] = D;
        k.t[0].strides[1] = 1;
        dc_kview_of(&k.t[1], mean);
        dc_kview_of(&k.t[2], rstd);
        dc_kview_of(&k.t[3], x2);
        if (wc) dc_kview_of(&k.t[4], wc);
        if (bc) dc_kview_of(&k.t[5], bc);
        k.p.layernorm = (struct dc_layernorm_params){ .eps = eps, .has_w = w != NULL, .has_b = b != NULL };
        st = dc_launch(x->device, &k);
    }
    dc_node *n = NULL;
    if (!st) {
        dc_tensor *in[3] = { x, w, b };
        st = dc_record(y, "LayerNormBackward", layer_norm_backward, 3, in, &n);
        if (st) y = NULL;
    }
    if (!st && n) {
        dc_tensor *x2d;
        if (!(st = dc_detach(&x2d, x2))) {
            dc_node_save(n, x2d);
            dc_tensor_decref(x2d);
        }
        dc_node_save(n, mean);
        dc_node_save(n, rstd);
        dc_node_save(n, wc);
        n->i[0] = w != NULL;
        n->i[1] = b != NULL;
    }
    dc_tensor_decref(xc);
    dc_tensor_decref(x2);
    dc_tensor_decref(mean);
    dc_tensor_decref(rstd);
    dc_tensor_decref(wc);
    dc_tensor_decref(bc);
    if (st) {
        dc_tensor_decref(y);
        return st;
    }
    *out = y;
    return DC_OK;
}
