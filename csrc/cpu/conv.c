/* conv.c: 2-D convolution (forward, input gradient = transposed convolution, weight gradient),
 * max/avg pooling and batch norm on the CPU, NCHW.
 *
 * Convolution is im2col + BLAS GEMM per (sample, group): the patch matrix col (Ci/g * kh * kw,
 * Ho * Wo) of one sample is built in a per-thread buffer and multiplied by the group's weight
 * rows. A 1x1 stride-1 unpadded convolution multiplies the input plane directly. The batch is
 * split over threads (each GEMM single-threaded, as linalg.c's batched matmul does); the weight
 * gradient sums per-thread partials in thread order, so results are deterministic for a thread
 * count. The op layer (csrc/core/ops_conv.c) checks shapes and makes every operand contiguous;
 * the checks here guard against its bugs. */
#include <cblas.h>
#include <float.h>
#include <stdlib.h>

#include "cpu.h"

/* ================================ geometry =================================================== */

typedef struct {
    int64_t N, Ci, H, W;   /* the convolution's input */
    int64_t Co, Ho, Wo;    /* its output */
    int64_t kh, kw, G;     /* kernel size, groups */
    int64_t Cg, Cog, K, P; /* Ci/G, Co/G, Cg*kh*kw, Ho*Wo */
    int64_t sh, sw, ph, pw, dh, dw;
    int direct; /* 1x1, stride 1, no padding: col is the input itself */
} conv_geom;

static dc_status conv_geom_of(const dc_kargs *a, const dc_kview *in, const dc_kview *w, const dc_kview *out,
                              conv_geom *g)
{
    const struct dc_conv_params *p = &a->p.conv;
    const char *op = dc_op_names[a->op];
    if (in->ndim != 4 || w->ndim != 4 || out->ndim != 4)
        return dc_error(DC_ERR_INTERNAL, "%s kernel: operands must be 4-D", op);
    g->N = in->shape[0], g->Ci = in->shape[1], g->H = in->shape[2], g->W = in->shape[3];
    g->Co = out->shape[1], g->Ho = out->shape[2], g->Wo = out->shape[3];
    g->kh = w->shape[2], g->kw = w->shape[3], g->G = p->groups;
    g->sh = p->stride[0], g->sw = p->stride[1], g->ph = p->pad[0], g->pw = p->pad[1];
    g->dh = p->dilation[0], g->dw = p->dilation[1];
    if (g->G < 1 || g->Ci % g->G || g->Co % g->G || w->shape[0] != g->Co || w->shape[1] * g->G != g->Ci ||
        out->shape[0] != g->N || g->sh < 1 || g->sw < 1 || g->dh < 1 || g->dw < 1)
        return dc_error(DC_ERR_INTERNAL, "%s kernel: inconsistent shapes", op);
    g->Cg = g->Ci / g->G, g->Cog = g->Co / g->G;
    g->K = g->Cg * g->kh * g->kw, g->P = g->Ho * g->Wo;
    g->direct = g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0 && g->Ho == g->H &&
                g->Wo == g->W;
    return DC_OK;
}

static dc_status need_contig(const dc_kargs *a, int k, dc_dtype dt)
{
    if (a->t[k].dtype != dt) return cpu_bad_dtype(a->op, a->t[k].dtype);
    if (!cpu_is_contig(&a->t[k]))
        return dc_error(DC_ERR_INTERNAL, "%s: operand %d must be contiguous", dc_op_names[a->op], k);
    return DC_OK;
}

static dc_status float_operands(const dc_kargs *a, int n, dc_dtype *dt)
{
    *dt = a->t[0].dtype;
    if (*dt != DC_FLOAT32 && *dt != DC_FLOAT64) return cpu_bad_dtype(a->op, *dt);
    for (int k = 0; k < n; k++) DC_TRY(need_contig(a, k, *dt));
    return DC_OK;
}

/* Threads for nb independent pieces of `macs` multiply-adds in all. */
static int conv_threads(double macs, int64_t nb)
{
    int nt = cpu_max_threads();
    double by_work = macs / GEMM_GRAIN;
    if (by_work < (double)nt) nt = by_work < 1.0 ? 1 : (int)by_work;
    if (nb < nt) nt = nb < 1 ? 1 : (int)nb;
    return nt;
}

static void gemm(dc_dtype dt, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K, const void *A,
                 int64_t lda, const void *B, int64_t ldb, double beta, void *C, int64_t ldc)
{
    if (dt == DC_FLOAT32)
        cblas_sgemm(CblasRowMajor, ta, tb, (blasint)M, (blasint)N, (blasint)K, 1.0f, A, (blasint)lda, B, (blasint)ldb,
                    (float)beta, C, (blasint)ldc);
    else
        cblas_dgemm(CblasRowMajor, ta, tb, (blasint)M, (blasint)N, (blasint)K, 1.0, A, (blasint)lda, B, (blasint)ldb,
                    beta, C, (blasint)ldc);
}

/* ================================ im2col / col2im ============================================ */

/* col (Cg*kh*kw, Ho*Wo), rows ld apart, of one group's input planes x (Cg, H, W); zeros where the window falls in
 * the padding. The valid output columns of each row are computed once, so the inner loop is a
 * plain strided copy (contiguous for stride 1). */
#define DEF_IM2COL(NAME, T)                                                                            \
    static void NAME(const conv_geom *g, const T *x, T *col, int64_t ld)                               \
    {                                                                                                  \
        for (int64_t c = 0; c < g->Cg; c++)                                                            \
            for (int64_t ki = 0; ki < g->kh; ki++)                                                     \
                for (int64_t kj = 0; kj < g->kw; kj++) {                                               \
                    T *row = col + ((c * g->kh + ki) * g->kw + kj) * ld;                               \
                    const int64_t off_w = kj * g->dw - g->pw;                                          \
                    /* ow in [lo, hi): 0 <= ow*sw + off_w < W */                                       \
                    int64_t lo = off_w >= 0 ? 0 : (-off_w + g->sw - 1) / g->sw;                        \
                    int64_t hi = g->W - off_w <= 0 ? 0 : (g->W - off_w + g->sw - 1) / g->sw;           \
                    if (hi > g->Wo) hi = g->Wo;                                                        \
                    if (lo > hi) lo = hi;                                                              \
                    for (int64_t oh = 0; oh < g->Ho; oh++) {                                           \
                        T *r = row + oh * g->Wo;                                                       \
                        const int64_t ih = oh * g->sh - g->ph + ki * g->dh;                            \
                        if (ih < 0 || ih >= g->H) {                                                    \
                            memset(r, 0, (size_t)g->Wo * sizeof(T));                                   \
                            continue;                                                                  \
                        }                                                                              \
                        const T *src = x + (c * g->H + ih) * g->W + off_w;                             \
                        for (int64_t ow = 0; ow < lo; ow++) r[ow] = 0;                                 \
                        if (g->sw == 1)                                                                \
                            memcpy(r + lo, src + lo, (size_t)(hi - lo) * sizeof(T));                   \
                        else                                                                           \
                            for (int64_t ow = lo; ow < hi; ow++) r[ow] = src[ow * g->sw];              \
                        for (int64_t ow = hi; ow < g->Wo; ow++) r[ow] = 0;                             \
                    }                                                                                  \
                }                                                                                      \
    }                                                                                                  \
    /* x (Cg, H, W) += the patches of col, the adjoint of im2col (x zeroed by the caller). */          \
    static void NAME##_adjoint(const conv_geom *g, const T *col, int64_t ld, T *x)                     \
    {                                                                                                  \
        for (int64_t c = 0; c < g->Cg; c++)                                                            \
            for (int64_t ki = 0; ki < g->kh; ki++)                                                     \
                for (int64_t kj = 0; kj < g->kw; kj++) {                                               \
                    const T *row = col + ((c * g->kh + ki) * g->kw + kj) * ld;                         \
                    const int64_t off_w = kj * g->dw - g->pw;                                          \
                    int64_t lo = off_w >= 0 ? 0 : (-off_w + g->sw - 1) / g->sw;                        \
                    int64_t hi = g->W - off_w <= 0 ? 0 : (g->W - off_w + g->sw - 1) / g->sw;           \
                    if (hi > g->Wo) hi = g->Wo;                                                        \
                    for (int64_t oh = 0; oh < g->Ho; oh++) {                                           \
                        const int64_t ih = oh * g->sh - g->ph + ki * g->dh;                            \
                        if (ih < 0 || ih >= g->H) continue;                                            \
                        const T *r = row + oh * g->Wo;                                                 \
                        T *dst = x + (c * g->H + ih) * g->W + off_w;                                   \
                        if (g->sw == 1) {                                                              \
                            _Pragma("omp simd") for (int64_t ow = lo; ow < hi; ow++) dst[ow] += r[ow]; \
                        } else {                                                                       \
                            for (int64_t ow = lo; ow < hi; ow++) dst[ow * g->sw] += r[ow];             \
                        }                                                                              \
                    }                                                                                  \
                }                                                                                      \
    }
DEF_IM2COL(im2col_f32, float)
DEF_IM2COL(im2col_f64, double)

static void im2col(dc_dtype dt, const conv_geom *g, const char *x, char *col, int64_t ld)
{
    if (dt == DC_FLOAT32)
        im2col_f32(g, (const float *)x, (float *)col, ld);
    else
        im2col_f64(g, (const double *)x, (double *)col, ld);
}

static void col2im(dc_dtype dt, const conv_geom *g, const char *col, int64_t ld, char *x)
{
    if (dt == DC_FLOAT32)
        im2col_f32_adjoint(g, (const float *)col, ld, (float *)x);
    else
        im2col_f64_adjoint(g, (const double *)col, ld, (double *)x);
}

/* Samples per GEMM: planes of P outputs are placed side by side until a GEMM has ~CHUNK_COLS
 * columns (a 4x4 output plane alone is a 16-column GEMM, and a 1x1 one a matrix-vector product;
 * DCGAN's generator starts from 1x1). Capped by the samples each thread gets. */
#define CHUNK_COLS 512
static int64_t conv_chunk(int64_t P, int64_t N, int nt)
{
    int64_t b = P >= CHUNK_COLS ? 1 : (CHUNK_COLS + P - 1) / P, per = (N + nt - 1) / nt;
    return b < per ? b : (per < 1 ? 1 : per);
}

/* dst (C, B * P) <- planes src[b] (C, P), sample stride sstride elements (gather), or back (scatter). */
static void planes_gather(size_t es, const char *src, int64_t sstride, int64_t B, int64_t C, int64_t P, char *dst)
{
    for (int64_t c = 0; c < C; c++)
        for (int64_t b = 0; b < B; b++)
            memcpy(dst + ((c * B + b) * P) * es, src + (b * sstride + c * P) * es, (size_t)P * es);
}
static void planes_scatter(size_t es, const char *src, int64_t B, int64_t C, int64_t P, char *dst, int64_t dstride)
{
    for (int64_t c = 0; c < C; c++)
        for (int64_t b = 0; b < B; b++)
            memcpy(dst + (b * dstride + c * P) * es, src + ((c * B + b) * P) * es, (size_t)P * es);
}

/* rows (C, P) of plane block y: row c = bias[c] */
static void fill_bias(dc_dtype dt, char *y, const char *bias, int64_t C, int64_t P)
{
    for (int64_t c = 0; c < C; c++) {
        if (dt == DC_FLOAT32) {
            float *r = (float *)y + c * P, b = ((const float *)bias)[c];
            for (int64_t i = 0; i < P; i++) r[i] = b;
        } else {
            double *r = (double *)y + c * P, b = ((const double *)bias)[c];
            for (int64_t i = 0; i < P; i++) r[i] = b;
        }
    }
}

/* One buffer of `per` bytes for each of nt threads (NULL, DC_OK when per == 0). */
static dc_status thread_buffers(const dc_kargs *a, int nt, size_t per, char **buf)
{
    *buf = NULL;
    if (!per) return DC_OK;
    *buf = malloc(per * (size_t)nt);
    if (!*buf)
        return dc_error(DC_ERR_NOMEM, "%s: out of memory for %d patch buffer(s) of %zu bytes", dc_op_names[a->op], nt,
                        per);
    return DC_OK;
}

/* ================================ convolution ================================================ */

/* conv2d: t0 y (N, Co, Ho, Wo), t1 x (N, Ci, H, W), t2 w (Co, Cg, kh, kw), t3 bias (Co). A chunk
 * of B samples: col (K, B*P) of their patches, then y_g (Cog, B*P) = w_g @ col, scattered back into
 * the samples' planes (B == 1: straight into y, and a 1x1 stride-1 conv reads x itself). */
dc_status dc_cpu_conv2d(const dc_kargs *a)
{
    dc_dtype dt;
    const int has_bias = a->p.conv.has_bias != 0;
    DC_TRY(float_operands(a, has_bias ? 4 : 3, &dt));
    conv_geom g;
    DC_TRY(conv_geom_of(a, &a->t[1], &a->t[2], &a->t[0], &g));
    if (g.N == 0 || g.Co == 0 || g.P == 0) return DC_OK;
    const size_t es = dc_dtype_size(dt);
    const char *X = a->t[1].data, *Wt = a->t[2].data, *B = has_bias ? a->t[3].data : NULL;
    char *Y = a->t[0].data;
    const int nt = conv_threads((double)g.N * g.Co * g.P * g.K, g.N);
    const int64_t Bc = conv_chunk(g.P, g.N, nt), nchunks = (g.N + Bc - 1) / Bc;
    const size_t colsz = (Bc == 1 && g.direct) ? 0 : (size_t)g.K * Bc * g.P * es;
    const size_t ysz = Bc == 1 ? 0 : (size_t)g.Cog * Bc * g.P * es, per = colsz + ysz;
    char *buf;
    DC_TRY(thread_buffers(a, nt, per, &buf));
    const int saved = nt == 1 ? cpu_blas_serial_begin() : 1;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t ch = 0; ch < nchunks; ch++) {
        char *col = buf ? buf + (size_t)cpu_thread_num() * per : NULL, *yb = col ? col + colsz : NULL;
        const int64_t n0 = ch * Bc, nb = n0 + Bc <= g.N ? Bc : g.N - n0, cols = nb * g.P;
        for (int64_t gi = 0; gi < g.G; gi++) {
            char *yg = Y + ((n0 * g.Co + gi * g.Cog) * g.P) * es, *out = Bc == 1 ? yg : yb;
            const char *bg = B ? B + gi * g.Cog * es : NULL;
            if (g.K == 0) { /* no input channels: the output is the bias */
                if (bg)
                    fill_bias(dt, out, bg, g.Cog, cols);
                else
                    memset(out, 0, (size_t)g.Cog * cols * es);
            } else {
                const char *src = col;
                if (Bc == 1 && g.direct)
                    src = X + ((n0 * g.Ci + gi * g.Cg) * g.H * g.W) * es;
                else
                    for (int64_t b = 0; b < nb; b++)
                        im2col(dt, &g, X + (((n0 + b) * g.Ci + gi * g.Cg) * g.H * g.W) * es, col + b * g.P * es, cols);
                if (bg) fill_bias(dt, out, bg, g.Cog, cols);
                gemm(dt, CblasNoTrans, CblasNoTrans, g.Cog, cols, g.K, Wt + gi * g.Cog * g.K * es, g.K, src, cols,
                     bg ? 1.0 : 0.0, out, cols);
            }
            if (Bc != 1) planes_scatter(es, yb, nb, g.Cog, g.P, yg, g.Co * g.P);
        }
    }
    if (nt == 1) cpu_blas_serial_end(saved);
    free(buf);
    return DC_OK;
}

/* The adjoint: t0 dx (N, Ci, H, W), t1 dy (N, Co, Ho, Wo), t2 w (Co, Cg, kh, kw), t3 bias (Ci).
 * conv2d_input_grad and conv_transpose2d share it. Per chunk of B samples: dy_g gathered into
 * (Cog, B*P), dcol (K, B*P) = w_g^T @ dy_g, then col2im into each sample's planes. */
dc_status dc_cpu_conv2d_bwd_input(const dc_kargs *a)
{
    dc_dtype dt;
    const int has_bias = a->p.conv.has_bias != 0;
    DC_TRY(float_operands(a, has_bias ? 4 : 3, &dt));
    conv_geom g;
    DC_TRY(conv_geom_of(a, &a->t[0], &a->t[2], &a->t[1], &g));
    if (g.N == 0 || g.Ci == 0 || g.H * g.W == 0) return DC_OK;
    const size_t es = dc_dtype_size(dt);
    const char *DY = a->t[1].data, *Wt = a->t[2].data, *B = has_bias ? a->t[3].data : NULL;
    char *DX = a->t[0].data;
    const int64_t HW = g.H * g.W;
    const int nt = conv_threads((double)g.N * g.Co * g.P * g.K, g.N);
    const int64_t Bc = conv_chunk(g.P, g.N, nt), nchunks = (g.N + Bc - 1) / Bc;
    const size_t colsz = (Bc == 1 && g.direct) ? 0 : (size_t)g.K * Bc * g.P * es;
    const size_t dysz = Bc == 1 ? 0 : (size_t)g.Cog * Bc * g.P * es, per = colsz + dysz;
    char *buf;
    DC_TRY(thread_buffers(a, nt, per, &buf));
    const int saved = nt == 1 ? cpu_blas_serial_begin() : 1;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t ch = 0; ch < nchunks; ch++) {
        char *col = buf ? buf + (size_t)cpu_thread_num() * per : NULL, *dyb = col ? col + colsz : NULL;
        const int64_t n0 = ch * Bc, nb = n0 + Bc <= g.N ? Bc : g.N - n0, cols = nb * g.P;
        for (int64_t gi = 0; gi < g.G; gi++) {
            const char *bg = B ? B + gi * g.Cg * es : NULL, *wg = Wt + gi * g.Cog * g.K * es;
            const char *dyg = DY + ((n0 * g.Co + gi * g.Cog) * g.P) * es;
            if (Bc == 1 && g.direct) { /* dx_g (Cg, HW) = w_g^T (Cg, Cog) @ dy_g (Cog, HW) (+ bias) */
                char *dxg = DX + ((n0 * g.Ci + gi * g.Cg) * HW) * es;
                if (bg) fill_bias(dt, dxg, bg, g.Cg, HW);
                if (g.Cog)
                    gemm(dt, CblasTrans, CblasNoTrans, g.Cg, HW, g.Cog, wg, g.K, dyg, g.P, bg ? 1.0 : 0.0, dxg, HW);
                else if (!bg)
                    memset(dxg, 0, (size_t)g.Cg * HW * es);
                continue;
            }
            for (int64_t b = 0; b < nb; b++) {
                char *dxg = DX + (((n0 + b) * g.Ci + gi * g.Cg) * HW) * es;
                if (bg)
                    fill_bias(dt, dxg, bg, g.Cg, HW);
                else
                    memset(dxg, 0, (size_t)g.Cg * HW * es);
            }
            if (g.Cog == 0 || g.P == 0) continue;
            if (Bc != 1) planes_gather(es, dyg, g.Co * g.P, nb, g.Cog, g.P, dyb);
            gemm(dt, CblasTrans, CblasNoTrans, g.K, cols, g.Cog, wg, g.K, Bc == 1 ? dyg : dyb, cols, 0.0, col, cols);
            for (int64_t b = 0; b < nb; b++)
                col2im(dt, &g, col + b * g.P * es, cols, DX + (((n0 + b) * g.Ci + gi * g.Cg) * HW) * es);
        }
    }
    if (nt == 1) cpu_blas_serial_end(saved);
    free(buf);
    return DC_OK;
}

/* t0 dw (Co, Cg, kh, kw), t1 dy (N, Co, Ho, Wo), t2 x (N, Ci, H, W). Thread t sums its chunks of
 * samples into its own partial (thread 0: dw itself): dw_g += dy_g (Cog, B*P) @ col^T (B*P, K); the
 * partials are added in thread order. */
dc_status dc_cpu_conv2d_bwd_weight(const dc_kargs *a)
{
    dc_dtype dt;
    DC_TRY(float_operands(a, 3, &dt));
    conv_geom g;
    DC_TRY(conv_geom_of(a, &a->t[2], &a->t[0], &a->t[1], &g));
    const size_t es = dc_dtype_size(dt);
    char *DW = a->t[0].data;
    const int64_t wn = g.Co * g.K;
    if (wn == 0) return DC_OK;
    if (g.N == 0 || g.P == 0) {
        memset(DW, 0, (size_t)wn * es);
        return DC_OK;
    }
    const char *DY = a->t[1].data, *X = a->t[2].data;
    const int nt = conv_threads((double)g.N * g.Co * g.P * g.K, g.N);
    const int64_t Bc = conv_chunk(g.P, g.N, nt);
    const size_t colsz = (Bc == 1 && g.direct) ? 0 : (size_t)g.K * Bc * g.P * es;
    const size_t dysz = Bc == 1 ? 0 : (size_t)g.Cog * Bc * g.P * es, partsz = (size_t)wn * es;
    const size_t per = colsz + dysz + partsz;
    char *buf;
    DC_TRY(thread_buffers(a, nt, per, &buf));
    const int saved = nt == 1 ? cpu_blas_serial_begin() : 1;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        const int t = cpu_thread_num();
        int nteam = 1;
#ifdef _OPENMP
        nteam = omp_get_num_threads();
#endif
        char *col = buf + (size_t)t * per, *dyb = col + colsz, *part = t == 0 ? DW : dyb + dysz;
        const int64_t chunk = (g.N + nteam - 1) / nteam, s0 = t * chunk, s1 = s0 + chunk < g.N ? s0 + chunk : g.N;
        memset(part, 0, partsz);
        for (int64_t n0 = s0; n0 < s1; n0 += Bc) {
            const int64_t nb = n0 + Bc <= s1 ? Bc : s1 - n0, cols = nb * g.P;
            for (int64_t gi = 0; gi < g.G; gi++) {
                const char *dyg = DY + ((n0 * g.Co + gi * g.Cog) * g.P) * es, *src = col;
                if (Bc == 1 && g.direct)
                    src = X + ((n0 * g.Ci + gi * g.Cg) * g.H * g.W) * es;
                else
                    for (int64_t b = 0; b < nb; b++)
                        im2col(dt, &g, X + (((n0 + b) * g.Ci + gi * g.Cg) * g.H * g.W) * es, col + b * g.P * es, cols);
                if (Bc != 1) planes_gather(es, dyg, g.Co * g.P, nb, g.Cog, g.P, dyb);
                gemm(dt, CblasNoTrans, CblasTrans, g.Cog, g.K, cols, Bc == 1 ? dyg : dyb, cols, src, cols, 1.0,
                     part + gi * g.Cog * g.K * es, g.K);
            }
        }
#pragma omp barrier
#pragma omp for schedule(static)
        for (int64_t i = 0; i < wn; i++)
            for (int u = 1; u < nteam; u++) {
                const char *pu = buf + (size_t)u * per + colsz + dysz;
                if (dt == DC_FLOAT32)
                    ((float *)DW)[i] += ((const float *)pu)[i];
                else
                    ((double *)DW)[i] += ((const double *)pu)[i];
            }
    }
    if (nt == 1) cpu_blas_serial_end(saved);
    free(buf);
    return DC_OK;
}

/* ================================ pooling ==================================================== */

typedef struct {
    int64_t planes, H, W, Ho, Wo;
} pool_geom;

static dc_status pool_geom_of(const dc_kargs *a, const dc_kview *in, const dc_kview *out, pool_geom *g)
{
    if (in->ndim != 4 || out->ndim != 4 || in->shape[0] != out->shape[0] || in->shape[1] != out->shape[1])
        return dc_error(DC_ERR_INTERNAL, "%s kernel: inconsistent shapes", dc_op_names[a->op]);
    const struct dc_pool_params *p = &a->p.pool;
    for (int d = 0; d < 2; d++)
        if (p->kernel[d] < 1 || p->stride[d] < 1 || p->dilation[d] < 1 || p->pad[d] < 0)
            return dc_error(DC_ERR_INTERNAL, "%s kernel: bad window", dc_op_names[a->op]);
    g->planes = in->shape[0] * in->shape[1];
    g->H = in->shape[2], g->W = in->shape[3], g->Ho = out->shape[2], g->Wo = out->shape[3];
    return DC_OK;
}

/* NaN wins, as in torch (a NaN in the window gives NaN and its index). */
#define DEF_MAXPOOL(NAME, T)                                                                                        \
    static void NAME(const struct dc_pool_params *p, const pool_geom *g, const T *X, T *Y, int64_t *IX)             \
    {                                                                                                               \
        const int par = g->planes * g->Ho * g->Wo * p->kernel[0] * p->kernel[1] >= DC_CPU_PAR_MIN && g->planes > 1; \
        _Pragma("omp parallel for schedule(static) if (par)") for (int64_t pl = 0; pl < g->planes; pl++)            \
        {                                                                                                           \
            const T *x = X + pl * g->H * g->W;                                                                      \
            T *y = Y + pl * g->Ho * g->Wo;                                                                          \
            int64_t *ix = IX + pl * g->Ho * g->Wo;                                                                  \
            for (int64_t oh = 0; oh < g->Ho; oh++)                                                                  \
                for (int64_t ow = 0; ow < g->Wo; ow++) {                                                            \
                    const int64_t h0 = oh * p->stride[0] - p->pad[0], w0 = ow * p->stride[1] - p->pad[1];           \
                    T best = -(T)INFINITY;                                                                          \
                    int64_t bi = -1;                                                                                \
                    for (int64_t ki = 0; ki < p->kernel[0]; ki++) {                                                 \
                        const int64_t ih = h0 + ki * p->dilation[0];                                                \
                        if (ih < 0 || ih >= g->H) continue;                                                         \
                        for (int64_t kj = 0; kj < p->kernel[1]; kj++) {                                             \
                            const int64_t iw = w0 + kj * p->dilation[1];                                            \
                            if (iw < 0 || iw >= g->W) continue;                                                     \
                            const T v = x[ih * g->W + iw];                                                          \
                            if (bi < 0 || v > best || isnan(v)) {                                                   \
                                best = v;                                                                           \
                                bi = ih * g->W + iw;                                                                \
                                if (isnan(v)) goto done_##NAME;                                                     \
                            }                                                                                       \
                        }                                                                                           \
                    }                                                                                               \
                    done_##NAME : y[oh * g->Wo + ow] = best;                                                        \
                    ix[oh * g->Wo + ow] = bi < 0 ? 0 : bi;                                                          \
                }                                                                                                   \
        }                                                                                                           \
    }
DEF_MAXPOOL(maxpool_f32, float)
DEF_MAXPOOL(maxpool_f64, double)

/* t0 y, t1 indices int64, t2 x */
dc_status dc_cpu_max_pool2d(const dc_kargs *a)
{
    dc_dtype dt = a->t[2].dtype;
    if (dt != DC_FLOAT32 && dt != DC_FLOAT64) return cpu_bad_dtype(a->op, dt);
    DC_TRY(need_contig(a, 0, dt));
    DC_TRY(need_contig(a, 1, DC_INT64));
    DC_TRY(need_contig(a, 2, dt));
    pool_geom g;
    DC_TRY(pool_geom_of(a, &a->t[2], &a->t[0], &g));
    if (dt == DC_FLOAT32)
        maxpool_f32(&a->p.pool, &g, (const float *)a->t[2].data, (float *)a->t[0].data, (int64_t *)a->t[1].data);
    else
        maxpool_f64(&a->p.pool, &g, (const double *)a->t[2].data, (double *)a->t[0].data, (int64_t *)a->t[1].data);
    return DC_OK;
}

/* t0 dx (zeroed here), t1 dy, t2 indices: dx[idx] += dy, plane by plane (no two planes share). */
dc_status dc_cpu_max_pool2d_bwd(const dc_kargs *a)
{
    dc_dtype dt = a->t[0].dtype;
    if (dt != DC_FLOAT32 && dt != DC_FLOAT64) return cpu_bad_dtype(a->op, dt);
    DC_TRY(need_contig(a, 0, dt));
    DC_TRY(need_contig(a, 1, dt));
    DC_TRY(need_contig(a, 2, DC_INT64));
    pool_geom g;
    DC_TRY(pool_geom_of(a, &a->t[0], &a->t[1], &g));
    const int64_t HW = g.H * g.W, P = g.Ho * g.Wo;
    const int64_t *IX = (const int64_t *)a->t[2].data;
    for (int64_t i = 0; i < g.planes * P; i++)
        if (IX[i] < 0 || IX[i] >= HW)
            return dc_error(DC_ERR_INDEX, "max_pool2d_backward: index %lld is out of range for a %lld x %lld plane",
                            (long long)IX[i], (long long)g.H, (long long)g.W);
#pragma omp parallel for schedule(static) if (g.planes * (HW + P) >= DC_CPU_PAR_MIN && g.planes > 1)
    for (int64_t pl = 0; pl < g.planes; pl++) {
        const int64_t *ix = IX + pl * P;
        if (dt == DC_FLOAT32) {
            float *dx = (float *)a->t[0].data + pl * HW;
            const float *dy = (const float *)a->t[1].data + pl * P;
            memset(dx, 0, (size_t)HW * sizeof(float));
            for (int64_t i = 0; i < P; i++) dx[ix[i]] += dy[i];
        } else {
            double *dx = (double *)a->t[0].data + pl * HW;
            const double *dy = (const double *)a->t[1].data + pl * P;
            memset(dx, 0, (size_t)HW * sizeof(double));
            for (int64_t i = 0; i < P; i++) dx[ix[i]] += dy[i];
        }
    }
    return DC_OK;
}

/* torch's window: [h0, h0 + k) clipped to the padded input for the count_include_pad divisor, then
 * to the input itself for the sum. Returns the divisor (0: empty window). */
static inline int64_t avg_window(const struct dc_pool_params *p, const pool_geom *g, int64_t oh, int64_t ow,
                                 int64_t *h0, int64_t *h1, int64_t *w0, int64_t *w1)
{
    int64_t hs = oh * p->stride[0] - p->pad[0], ws = ow * p->stride[1] - p->pad[1];
    int64_t he = hs + p->kernel[0], we = ws + p->kernel[1];
    if (he > g->H + p->pad[0]) he = g->H + p->pad[0];
    if (we > g->W + p->pad[1]) we = g->W + p->pad[1];
    const int64_t padded = (he - hs) * (we - ws);
    *h0 = hs < 0 ? 0 : hs, *w0 = ws < 0 ? 0 : ws;
    *h1 = he > g->H ? g->H : he, *w1 = we > g->W ? g->W : we;
    if (*h0 >= *h1 || *w0 >= *w1) return 0;
    if (p->divisor) return p->divisor;
    return p->count_include_pad ? padded : (*h1 - *h0) * (*w1 - *w0);
}

#define DEF_AVGPOOL(NAME, T)                                                                                        \
    static void NAME(const struct dc_pool_params *p, const pool_geom *g, const T *X, T *Y)                          \
    {                                                                                                               \
        const int par = g->planes * g->Ho * g->Wo * p->kernel[0] * p->kernel[1] >= DC_CPU_PAR_MIN && g->planes > 1; \
        _Pragma("omp parallel for schedule(static) if (par)") for (int64_t pl = 0; pl < g->planes; pl++)            \
        {                                                                                                           \
            const T *x = X + pl * g->H * g->W;                                                                      \
            T *y = Y + pl * g->Ho * g->Wo;                                                                          \
            for (int64_t oh = 0; oh < g->Ho; oh++)                                                                  \
                for (int64_t ow = 0; ow < g->Wo; ow++) {                                                            \
                    int64_t h0, h1, w0, w1;                                                                         \
                    const int64_t div = avg_window(p, g, oh, ow, &h0, &h1, &w0, &w1);                               \
                    double s = 0;                                                                                   \
                    if (div)                                                                                        \
                        for (int64_t ih = h0; ih < h1; ih++)                                                        \
                            for (int64_t iw = w0; iw < w1; iw++) s += (double)x[ih * g->W + iw];                    \
                    y[oh * g->Wo + ow] = div ? (T)(s / (double)div) : (T)0;                                         \
                }                                                                                                   \
        }                                                                                                           \
    }                                                                                                               \
    static void NAME##_bwd(const struct dc_pool_params *p, const pool_geom *g, const T *DY, T *DX)                  \
    {                                                                                                               \
        const int par = g->planes * g->H * g->W >= DC_CPU_PAR_MIN && g->planes > 1;                                 \
        _Pragma("omp parallel for schedule(static) if (par)") for (int64_t pl = 0; pl < g->planes; pl++)            \
        {                                                                                                           \
            T *dx = DX + pl * g->H * g->W;                                                                          \
            const T *dy = DY + pl * g->Ho * g->Wo;                                                                  \
            memset(dx, 0, (size_t)(g->H * g->W) * sizeof(T));                                                       \
            for (int64_t oh = 0; oh < g->Ho; oh++)                                                                  \
                for (int64_t ow = 0; ow < g->Wo; ow++) {                                                            \
                    int64_t h0, h1, w0, w1;                                                                         \
                    const int64_t div = avg_window(p, g, oh, ow, &h0, &h1, &w0, &w1);                               \
                    if (!div) continue;                                                                             \
                    const T v = dy[oh * g->Wo + ow] / (T)div;                                                       \
                    for (int64_t ih = h0; ih < h1; ih++)                                                            \
                        for (int64_t iw = w0; iw < w1; iw++) dx[ih * g->W + iw] += v;                               \
                }                                                                                                   \
        }                                                                                                           \
    }
DEF_AVGPOOL(avgpool_f32, float)
DEF_AVGPOOL(avgpool_f64, double)

/* t0 y, t1 x */
dc_status dc_cpu_avg_pool2d(const dc_kargs *a)
{
    dc_dtype dt;
    DC_TRY(float_operands(a, 2, &dt));
    pool_geom g;
    DC_TRY(pool_geom_of(a, &a->t[1], &a->t[0], &g));
    if (dt == DC_FLOAT32)
        avgpool_f32(&a->p.pool, &g, (const float *)a->t[1].data, (float *)a->t[0].data);
    else
        avgpool_f64(&a->p.pool, &g, (const double *)a->t[1].data, (double *)a->t[0].data);
    return DC_OK;
}

/* t0 dx (written whole), t1 dy */
dc_status dc_cpu_avg_pool2d_bwd(const dc_kargs *a)
{
    dc_dtype dt;
    DC_TRY(float_operands(a, 2, &dt));
    pool_geom g;
    DC_TRY(pool_geom_of(a, &a->t[0], &a->t[1], &g));
    if (dt == DC_FLOAT32)
        avgpool_f32_bwd(&a->p.pool, &g, (const float *)a->t[1].data, (float *)a->t[0].data);
    else
        avgpool_f64_bwd(&a->p.pool, &g, (const double *)a->t[1].data, (double *)a->t[0].data);
    return DC_OK;
}

/* ================================ batch norm ================================================= */

/* x (N, C, L): channel c is N blocks of L contiguous elements, L apart by C * L. Statistics in
 * double, two passes (no cancellation when |mean| >> std). Parallel over channels. */
#define DEF_BN(NAME, T)                                                                                            \
    static void NAME(const dc_kargs *a, int64_t N, int64_t C, int64_t L)                                           \
    {                                                                                                              \
        const struct dc_batchnorm_params *bp = &a->p.batchnorm;                                                    \
        T *Y = (T *)a->t[0].data, *MEAN = (T *)a->t[1].data, *RSTD = (T *)a->t[2].data;                            \
        const T *X = (const T *)a->t[3].data;                                                                      \
        const T *Wt = bp->has_w ? (const T *)a->t[4].data : NULL, *B = bp->has_b ? (const T *)a->t[5].data : NULL; \
        T *RM = bp->has_running ? (T *)a->t[6].data : NULL, *RV = bp->has_running ? (T *)a->t[7].data : NULL;      \
        const double cnt = (double)N * (double)L;                                                                  \
        _Pragma("omp parallel for schedule(static) if (N * C * L >= DC_CPU_PAR_MIN && C > 1)") for (int64_t c = 0; \
                                                                                                    c < C; c++)    \
        {                                                                                                          \
            double mean, rstd;                                                                                     \
            if (bp->training) {                                                                                    \
                double s = 0, v = 0;                                                                               \
                for (int64_t n = 0; n < N; n++) {                                                                  \
                    const T *x = X + (n * C + c) * L;                                                              \
                    _Pragma("omp simd reduction(+ : s)") for (int64_t i = 0; i < L; i++) s += (double)x[i];        \
                }                                                                                                  \
                mean = s / cnt;                                                                                    \
                for (int64_t n = 0; n < N; n++) {                                                                  \
                    const T *x = X + (n * C + c) * L;                                                              \
                    _Pragma("omp simd reduction(+ : v)") for (int64_t i = 0; i < L; i++)                           \
                    {                                                                                              \
                        double d = (double)x[i] - mean;                                                            \
                        v += d * d;                                                                                \
                    }                                                                                              \
                }                                                                                                  \
                rstd = 1.0 / sqrt(v / cnt + bp->eps);                                                              \
                if (RM) {                                                                                          \
                    const double m = bp->momentum;                                                                 \
                    RM[c] = (T)((1.0 - m) * (double)RM[c] + m * mean);                                             \
                    RV[c] = (T)((1.0 - m) * (double)RV[c] + m * (cnt > 1 ? v / (cnt - 1) : v));                    \
                }                                                                                                  \
            } else {                                                                                               \
                mean = (double)RM[c];                                                                              \
                rstd = 1.0 / sqrt((double)RV[c] + bp->eps);                                                        \
            }                                                                                                      \
            MEAN[c] = (T)mean;                                                                                     \
            RSTD[c] = (T)rstd;                                                                                     \
            const double w = Wt ? (double)Wt[c] : 1.0, b = B ? (double)B[c] : 0.0;                                 \
            const T scale = (T)(w * rstd), shift = (T)(b - mean * w * rstd);                                       \
            for (int64_t n = 0; n < N; n++) {                                                                      \
                const T *x = X + (n * C + c) * L;                                                                  \
                T *y = Y + (n * C + c) * L;                                                                        \
                _Pragma("omp simd") for (int64_t i = 0; i < L; i++) y[i] = x[i] * scale + shift;                   \
            }                                                                                                      \
        }                                                                                                          \
    }
DEF_BN(bn_fwd_f32, float)
DEF_BN(bn_fwd_f64, double)

static dc_status bn_dims(const dc_kargs *a, const dc_kview *x, int64_t *N, int64_t *C, int64_t *L)
{
    if (x->ndim != 3) return dc_error(DC_ERR_INTERNAL, "%s kernel: x must be (N, C, L)", dc_op_names[a->op]);
    *N = x->shape[0], *C = x->shape[1], *L = x->shape[2];
    return DC_OK;
}

dc_status dc_cpu_batchnorm(const dc_kargs *a)
{
    const struct dc_batchnorm_params *bp = &a->p.batchnorm;
    dc_dtype dt;
    DC_TRY(float_operands(a, 4, &dt));
    if (bp->has_w) DC_TRY(need_contig(a, 4, dt));
    if (bp->has_b) DC_TRY(need_contig(a, 5, dt));
    if (bp->has_running || !bp->training) {
        if (!bp->has_running) return dc_error(DC_ERR_INTERNAL, "batch_norm kernel: eval mode needs running stats");
        DC_TRY(need_contig(a, 6, dt));
        DC_TRY(need_contig(a, 7, dt));
    }
    int64_t N = 0, C = 0, L = 0;
    DC_TRY(bn_dims(a, &a->t[3], &N, &C, &L));
    if (dt == DC_FLOAT32)
        bn_fwd_f32(a, N, C, L);
    else
        bn_fwd_f64(a, N, C, L);
    return DC_OK;
}

#define DEF_BN_BWD(NAME, T)                                                                                        \
    static void NAME(const dc_kargs *a, int64_t N, int64_t C, int64_t L)                                           \
    {                                                                                                              \
        const struct dc_batchnorm_params *bp = &a->p.batchnorm;                                                    \
        T *DX = (T *)a->t[0].data, *DW = bp->has_w ? (T *)a->t[1].data : NULL;                                     \
        T *DB = bp->has_b ? (T *)a->t[2].data : NULL;                                                              \
        const T *DY = (const T *)a->t[3].data, *X = (const T *)a->t[4].data;                                       \
        const T *MEAN = (const T *)a->t[5].data, *RSTD = (const T *)a->t[6].data;                                  \
        const T *Wt = bp->has_w ? (const T *)a->t[7].data : NULL;                                                  \
        const double cnt = (double)N * (double)L;                                                                  \
        _Pragma("omp parallel for schedule(static) if (N * C * L >= DC_CPU_PAR_MIN && C > 1)") for (int64_t c = 0; \
                                                                                                    c < C; c++)    \
        {                                                                                                          \
            const double m = (double)MEAN[c], r = (double)RSTD[c];                                                 \
            double sg = 0, sgx = 0;                                                                                \
            for (int64_t n = 0; n < N; n++) {                                                                      \
                const T *x = X + (n * C + c) * L, *dy = DY + (n * C + c) * L;                                      \
                _Pragma("omp simd reduction(+ : sg, sgx)") for (int64_t i = 0; i < L; i++)                         \
                {                                                                                                  \
                    sg += (double)dy[i];                                                                           \
                    sgx += (double)dy[i] * ((double)x[i] - m);                                                     \
                }                                                                                                  \
            }                                                                                                      \
            if (DW) DW[c] = (T)(sgx * r);                                                                          \
            if (DB) DB[c] = (T)sg;                                                                                 \
            const double w = Wt ? (double)Wt[c] : 1.0, k = w * r;                                                  \
            /* training: dx = k * (dy - mean(dy) - xhat * mean(dy * xhat)); eval: k * dy */                        \
            const T a1 = (T)k, a2 = bp->training ? (T)(k * r * r * sgx / cnt) : (T)0;                              \
            const T a3 = bp->training ? (T)(k * sg / cnt) : (T)0, mt = (T)m;                                       \
            for (int64_t n = 0; n < N; n++) {                                                                      \
                const T *x = X + (n * C + c) * L, *dy = DY + (n * C + c) * L;                                      \
                T *dx = DX + (n * C + c) * L;                                                                      \
                _Pragma("omp simd") for (int64_t i = 0; i < L; i++) dx[i] = a1 * dy[i] - a2 * (x[i] - mt) - a3;    \
            }                                                                                                      \
        }                                                                                                          \
    }
DEF_BN_BWD(bn_bwd_f32, float)
DEF_BN_BWD(bn_bwd_f64, double)

dc_status dc_cpu_batchnorm_bwd(const dc_kargs *a)
{
    const struct dc_batchnorm_params *bp = &a->p.batchnorm;
    dc_dtype dt;
    DC_TRY(float_operands(a, 1, &dt));
    for (int k = 3; k < 7; k++) DC_TRY(need_contig(a, k, dt));
    if (bp->has_w) {
        DC_TRY(need_contig(a, 1, dt));
        DC_TRY(need_contig(a, 7, dt));
    }
    if (bp->has_b) DC_TRY(need_contig(a, 2, dt));
    int64_t N = 0, C = 0, L = 0;
    DC_TRY(bn_dims(a, &a->t[4], &N, &C, &L));
    if (dt == DC_FLOAT32)
        bn_bwd_f32(a, N, C, L);
    else
        bn_bwd_f64(a, N, C, L);
    return DC_OK;
}
