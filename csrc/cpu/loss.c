/* loss.c: cross entropy fused with the softmax over the classes (CROSS_ENTROPY, CROSS_ENTROPY_BWD) on
 * the CPU, in double: the reference the CUDA kernel (cuda/loss.cu) is tested against. One row per
 * iteration; only the row's logsumexp is kept for backward, never the (N, C) probabilities. */
#include <math.h>

#include "cpu.h"

static dc_status check(const dc_kargs *a, const dc_kview *x, const dc_kview *t, int nfloat)
{
    if (x->dtype != DC_FLOAT32 && x->dtype != DC_FLOAT64) return cpu_bad_dtype(a->op, x->dtype);
    for (int k = 0; k < nfloat; k++)
        if (a->t[k].dtype != x->dtype) return cpu_bad_dtype(a->op, a->t[k].dtype);
    if (t->dtype != DC_INT64) return cpu_bad_dtype(a->op, t->dtype);
    if (x->ndim != 2 || x->strides[1] != 1 || x->strides[0] != x->shape[1] || t->ndim != 1 ||
        t->shape[0] != x->shape[0])
        return dc_error(DC_ERR_INTERNAL, "%s: expects contiguous logits (N, C) and targets (N,)", dc_op_names[a->op]);
    return DC_OK;
}

/* The first target outside [0, C) that is not ignore_index, or -1. */
static int64_t bad_target(const dc_kview *t, int64_t N, int64_t C, int64_t ignore)
{
    const int64_t *tg = (const int64_t *)t->data;
    for (int64_t i = 0; i < N; i++) {
        int64_t c = tg[i * t->strides[0]];
        if (c != ignore && (c < 0 || c >= C)) return i;
    }
    return -1;
}

/* t0 loss (N), t1 lse (N), t2 logits (N, C), t3 target (N) */
dc_status dc_cpu_cross_entropy(const dc_kargs *a)
{
    const dc_kview *loss = &a->t[0], *lse = &a->t[1], *x = &a->t[2], *t = &a->t[3];
    DC_TRY(check(a, x, t, 2));
    const int64_t N = x->shape[0], C = x->shape[1], ignore = a->p.ce.ignore_index;
    const double eps = a->p.ce.label_smoothing;
    int64_t bad = bad_target(t, N, C, ignore);
    if (bad >= 0)
        return dc_error(DC_ERR_INDEX, "cross_entropy: target %lld of row %lld is out of range for %lld classes",
                        (long long)((const int64_t *)t->data)[bad * t->strides[0]], (long long)bad, (long long)C);
    const int64_t *tg = (const int64_t *)t->data;
#pragma omp parallel for schedule(static) num_threads(N *C > 65536 ? cpu_max_threads() : 1)
    for (int64_t i = 0; i < N; i++) {
        double m = -INFINITY, sum = 0, mean = 0;
        for (int64_t j = 0; j < C; j++) m = fmax(m, cpu_view_get(x, i * C + j));
        for (int64_t j = 0; j < C; j++) {
            double v = cpu_view_get(x, i * C + j);
            sum += exp(v - m);
            mean += v;
        }
        mean /= (double)(C ? C : 1);
        double l = m + log(sum);
        cpu_view_set(lse, i * lse->strides[0], l);
        int64_t c = tg[i * t->strides[0]];
        /* eps == 0: no mean term at all (a masked -inf logit would make 0 * -inf = NaN) */
        cpu_view_set(loss, i * loss->strides[0],
                     c == ignore ? 0.0 : l - (1.0 - eps) * cpu_view_get(x, i * C + c) - (eps > 0 ? eps * mean : 0.0));
    }
    return DC_OK;
}

/* t0 dlogits (N, C), t1 g (N), t2 logits, t3 target, t4 lse */
dc_status dc_cpu_cross_entropy_bwd(const dc_kargs *a)
{
    const dc_kview *dx = &a->t[0], *g = &a->t[1], *x = &a->t[2], *t = &a->t[3], *lse = &a->t[4];
    DC_TRY(check(a, x, t, 2));
    if (lse->dtype != x->dtype) return cpu_bad_dtype(a->op, lse->dtype);
    const int64_t N = x->shape[0], C = x->shape[1], ignore = a->p.ce.ignore_index;
    const double eps = a->p.ce.label_smoothing;
    const int64_t *tg = (const int64_t *)t->data;
#pragma omp parallel for schedule(static) num_threads(N *C > 65536 ? cpu_max_threads() : 1)
    for (int64_t i = 0; i < N; i++) {
        int64_t c = tg[i * t->strides[0]];
        if (c == ignore) {
            for (int64_t j = 0; j < C; j++) cpu_view_set(dx, i * C + j, 0.0);
            continue;
        }
        double gi = cpu_view_get(g, i * g->strides[0]), L = cpu_view_get(lse, i * lse->strides[0]);
        for (int64_t j = 0; j < C; j++)
            cpu_view_set(dx, i * C + j,
                         gi * (exp(cpu_view_get(x, i * C + j) - L) - (j == c ? 1.0 - eps : 0.0) - eps / (double)C));
    }
    return DC_OK;
}
