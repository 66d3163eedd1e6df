/* attention.c: the fused attention kernels (FLASH_ATTN, FLASH_ATTN_BWD) on the CPU: the reference the
 * CUDA kernel (cuda/attention.cu) is tested against.
 *
 * Plain loops in double, one query row (forward) or one head (backward) per thread; the scores of a
 * row live only in a per-thread buffer of Tk doubles, never as a (Tq, Tk) tensor. Training on the
 * CPU does not route scaled_dot_product_attention here (its BLAS-based composition is faster on
 * CPUs); the op test and the autograd test compare the two. */
#include <math.h>
#include <stdlib.h>

#include "cpu.h"

static int contiguous3(const dc_kview *v, int64_t a, int64_t b, int64_t c)
{
    return v->ndim == 3 && v->shape[0] == a && v->shape[1] == b && v->shape[2] == c && v->strides[2] == 1 &&
           v->strides[1] == c && v->strides[0] == b * c;
}

/* Scaled scores of query row i of head h against its visible keys, into s[0..nk); returns nk. */
static int64_t row_scores(const dc_kview *q, const dc_kview *k, int64_t h, int64_t i, int64_t Tq, int64_t Tk, int64_t D,
                          double scale, int causal, double *s)
{
    int64_t nk = causal ? (i + 1 < Tk ? i + 1 : Tk) : Tk;
    const int64_t qo = (h * Tq + i) * D;
    for (int64_t j = 0; j < nk; j++) {
        const int64_t ko = (h * Tk + j) * D;
        double acc = 0;
        for (int64_t d = 0; d < D; d++) acc += cpu_view_get(q, qo + d) * cpu_view_get(k, ko + d);
        s[j] = scale * acc;
    }
    return nk;
}

static dc_status check_float(const dc_kargs *a, int n)
{
    const dc_dtype dt = a->t[0].dtype;
    if (dt != DC_FLOAT32 && dt != DC_FLOAT64) return cpu_bad_dtype(a->op, dt);
    for (int i = 1; i < n; i++)
        if (a->t[i].dtype != dt) return cpu_bad_dtype(a->op, a->t[i].dtype);
    return DC_OK;
}

/* t0 out (BH, Tq, Dv), t1 lse (BH, Tq), t2 q (BH, Tq, D), t3 k (BH, Tk, D), t4 v (BH, Tk, Dv) */
dc_status dc_cpu_flash_attn(const dc_kargs *a)
{
    const dc_kview *o = &a->t[0], *lse = &a->t[1], *q = &a->t[2], *k = &a->t[3], *v = &a->t[4];
    if (a->nt < 5) return dc_error(DC_ERR_INTERNAL, "flash_attention: %d operands, want 5", a->nt);
    DC_TRY(check_float(a, 5));
    const int64_t BH = q->shape[0], Tq = q->shape[1], D = q->shape[2], Tk = k->shape[1], Dv = v->shape[2];
    if (!contiguous3(q, BH, Tq, D) || !contiguous3(k, BH, Tk, D) || !contiguous3(v, BH, Tk, Dv) ||
        !contiguous3(o, BH, Tq, Dv) || lse->ndim != 2 || lse->shape[0] != BH || lse->shape[1] != Tq)
        return dc_error(DC_ERR_INTERNAL, "flash_attention: operands are not the contiguous (BH, T, D) views it needs");
    const double scale = a->p.attn.scale;
    const int causal = a->p.attn.causal;
    const int64_t rows = BH * Tq;
    dc_status status = DC_OK;
#pragma omp parallel num_threads(rows *Tk *(D + Dv) > 32768 ? cpu_max_threads() : 1)
    {
        double *s = malloc(sizeof(double) * (size_t)(Tk > 0 ? Tk : 1));
        double *acc = malloc(sizeof(double) * (size_t)(Dv > 0 ? Dv : 1));
        if (!s || !acc) {
#pragma omp critical
            status = DC_ERR_NOMEM;
        } else {
#pragma omp for schedule(static)
            for (int64_t r = 0; r < rows; r++) {
                const int64_t h = r / Tq, i = r % Tq;
                int64_t nk = row_scores(q, k, h, i, Tq, Tk, D, scale, causal, s);
                double m = -INFINITY, l = 0;
                for (int64_t j = 0; j < nk; j++) m = s[j] > m ? s[j] : m;
                for (int64_t d = 0; d < Dv; d++) acc[d] = 0;
                for (int64_t j = 0; j < nk; j++) {
                    double p = exp(s[j] - m);
                    l += p;
                    const int64_t vo = (h * Tk + j) * Dv;
                    for (int64_t d = 0; d < Dv; d++) acc[d] += p * cpu_view_get(v, vo + d);
                }
                for (int64_t d = 0; d < Dv; d++) cpu_view_set(o, r * Dv + d, l > 0 ? acc[d] / l : 0.0);
                cpu_view_set(lse, r, l > 0 ? m + log(l) : -INFINITY);
            }
        }
        free(s);
        free(acc);
    }
    if (status) return dc_error(DC_ERR_NOMEM, "flash_attention: out of memory for a row of %lld scores", (long long)Tk);
    return DC_OK;
}

/* t0 dq, t1 dk, t2 dv, t3 dout, t4 q, t5 k, t6 v, t7 lse, t8 delta */
dc_status dc_cpu_flash_attn_bwd(const dc_kargs *a)
{
    if (a->nt < 9) return dc_error(DC_ERR_INTERNAL, "flash_attention_backward: %d operands, want 9", a->nt);
    DC_TRY(check_float(a, 9));
    const dc_kview *dq = &a->t[0], *dk = &a->t[1], *dv = &a->t[2], *dout = &a->t[3], *q = &a->t[4], *k = &a->t[5],
                   *v = &a->t[6], *lse = &a->t[7], *delta = &a->t[8];
    const int64_t BH = q->shape[0], Tq = q->shape[1], D = q->shape[2], Tk = k->shape[1], Dv = v->shape[2];
    if (!contiguous3(q, BH, Tq, D) || !contiguous3(k, BH, Tk, D) || !contiguous3(v, BH, Tk, Dv) ||
        !contiguous3(dout, BH, Tq, Dv) || !contiguous3(dq, BH, Tq, D) || !contiguous3(dk, BH, Tk, D) ||
        !contiguous3(dv, BH, Tk, Dv))
        return dc_error(DC_ERR_INTERNAL, "flash_attention_backward: operands are not contiguous (BH, T, D) views");
    const double scale = a->p.attn.scale;
    const int causal = a->p.attn.causal;
    dc_status status = DC_OK;
#pragma omp parallel num_threads(BH > 1 && BH * Tq * Tk * (D + Dv) > 32768 ? cpu_max_threads() : 1)
    {
        double *s = malloc(sizeof(double) * (size_t)(Tk > 0 ? Tk : 1));
        double *gk = calloc((size_t)(Tk * D > 0 ? Tk * D : 1), sizeof(double));
        double *gv = calloc((size_t)(Tk * Dv > 0 ? Tk * Dv : 1), sizeof(double));
        double *gq = malloc(sizeof(double) * (size_t)(D > 0 ? D : 1));
        if (!s || !gk || !gv || !gq) {
#pragma omp critical
            status = DC_ERR_NOMEM;
        } else {
#pragma omp for schedule(dynamic)
            for (int64_t h = 0; h < BH; h++) {
                for (int64_t x = 0; x < Tk * D; x++) gk[x] = 0;
                for (int64_t x = 0; x < Tk * Dv; x++) gv[x] = 0;
                for (int64_t i = 0; i < Tq; i++) {
                    const int64_t r = h * Tq + i;
                    int64_t nk = row_scores(q, k, h, i, Tq, Tk, D, scale, causal, s);
                    const double L = cpu_view_get(lse, r), dl = cpu_view_get(delta, r);
                    for (int64_t d = 0; d < D; d++) gq[d] = 0;
                    for (int64_t j = 0; j < nk; j++) {
                        const double p = exp(s[j] - L);
                        const int64_t vo = (h * Tk + j) * Dv, ko = (h * Tk + j) * D;
                        double dp = 0;
                        for (int64_t d = 0; d < Dv; d++) {
                            const double g = cpu_view_get(dout, r * Dv + d);
                            dp += g * cpu_view_get(v, vo + d);
                            gv[j * Dv + d] += p * g;
                        }
                        const double ds = p * (dp - dl) * scale;
                        for (int64_t d = 0; d < D; d++) {
                            gq[d] += ds * cpu_view_get(k, ko + d);
                            gk[j * D + d] += ds * cpu_view_get(q, r * D + d);
                        }
                    }
                    for (int64_t d = 0; d < D; d++) cpu_view_set(dq, r * D + d, gq[d]);
                }
                for (int64_t x = 0; x < Tk * D; x++) cpu_view_set(dk, h * Tk * D + x, gk[x]);
                for (int64_t x = 0; x < Tk * Dv; x++) cpu_view_set(dv, h * Tk * Dv + x, gv[x]);
            }
        }
        free(s);
        free(gk);
        free(gv);
        free(gq);
    }
    if (status) return dc_error(DC_ERR_NOMEM, "flash_attention_backward: out of memory for its per-head buffers");
    return DC_OK;
}
