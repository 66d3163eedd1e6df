/* iter.c: the strided N-d iterator shared by every CPU kernel (see cpu.h).
 *
 * Size-1 dims are dropped and adjacent dims merged whenever every operand steps through them as one
 * (stride[d] == stride[d+1] * shape[d+1]), so contiguous and simply-broadcast tensors become one or
 * two long runs and the per-run callback sees unit strides it can vectorise. Large iterations are
 * cut into one contiguous linear range per thread; each range recomputes its start index, so no
 * state is shared between threads. */
#include <stdlib.h>

#include "cpu.h"

void cpu_iter_init(cpu_iter *it, int n, const dc_kview *const *v, int reorder)
{
    const dc_kview *v0 = v[0];
    int dims[DC_MAX_DIMS], nd = 0;
    it->n = n;
    it->numel = cpu_numel(v0);
    for (int d = 0; d < v0->ndim; d++)
        if (v0->shape[d] != 1) dims[nd++] = d;
    if (reorder) {
        /* Stable insertion sort by |stride of operand 0| descending: the writes then walk memory in
         * order even when the output is a transposed view. */
        for (int i = 1; i < nd; i++) {
            int d = dims[i], j = i;
            int64_t s = llabs(v0->strides[d]);
            while (j > 0 && llabs(v0->strides[dims[j - 1]]) < s) {
                dims[j] = dims[j - 1];
                j--;
            }
            dims[j] = d;
        }
    }
    for (int i = 0; i < nd; i++) {
        it->shape[i] = v0->shape[dims[i]];
        for (int k = 0; k < n; k++) it->st[k][i] = v[k]->strides[dims[i]] * (int64_t)cpu_esize(v[k]);
    }
    for (int k = 0; k < n; k++) it->base[k] = v[k]->data;
    /* Coalesce from the inside out. */
    int out = nd - 1;
    if (nd > 0) {
        for (int i = nd - 2; i >= 0; i--) {
            int ok = 1;
            for (int k = 0; k < n && ok; k++) ok = it->st[k][i] == it->st[k][out] * it->shape[out];
            if (ok) {
                it->shape[out] *= it->shape[i];
            } else {
                out--;
                it->shape[out] = it->shape[i];
                for (int k = 0; k < n; k++) it->st[k][out] = it->st[k][i];
            }
        }
        int m = nd - out;
        for (int i = 0; i < m; i++) {
            it->shape[i] = it->shape[out + i];
            for (int k = 0; k < n; k++) it->st[k][i] = it->st[k][out + i];
        }
        nd = m;
    }
    if (nd == 0) { /* a scalar, or all size-1 dims */
        nd = 1;
        it->shape[0] = it->numel; /* 1, or 0 for an empty tensor */
        for (int k = 0; k < n; k++) it->st[k][0] = 0;
    }
    it->ndim = nd;
}

void cpu_iter_range(const cpu_iter *it, int64_t start, int64_t end, cpu_inner_fn fn, const void *ctx)
{
    if (start >= end) return;
    const int nd = it->ndim, n = it->n;
    const int64_t inner = it->shape[nd - 1];
    int64_t idx[DC_MAX_DIMS];
    char *p[DC_KARGS_MAX_T];
    int64_t s[DC_KARGS_MAX_T];
    int64_t r = start;
    for (int d = nd - 1; d >= 0; d--) {
        idx[d] = r % it->shape[d];
        r /= it->shape[d];
    }
    for (int k = 0; k < n; k++) {
        p[k] = it->base[k];
        for (int d = 0; d < nd; d++) p[k] += idx[d] * it->st[k][d];
        s[k] = it->st[k][nd - 1];
    }
    while (start < end) {
        int64_t len = inner - idx[nd - 1];
        if (len > end - start) len = end - start;
        fn(p, s, len, ctx);
        start += len;
        if (start >= end) break;
        idx[nd - 1] += len;
        for (int k = 0; k < n; k++) p[k] += len * s[k];
        if (idx[nd - 1] < inner) continue;
        idx[nd - 1] = 0;
        for (int k = 0; k < n; k++) p[k] -= inner * s[k];
        for (int d = nd - 2; d >= 0; d--) {
            idx[d]++;
            for (int k = 0; k < n; k++) p[k] += it->st[k][d];
            if (idx[d] < it->shape[d]) break;
            idx[d] = 0;
            for (int k = 0; k < n; k++) p[k] -= it->shape[d] * it->st[k][d];
        }
    }
}

void cpu_iter_run(const cpu_iter *it, cpu_inner_fn fn, const void *ctx, int64_t par_min)
{
    int64_t numel = it->numel;
    if (numel <= 0) return;
    int nthr = cpu_max_threads();
    if (numel < par_min || nthr <= 1) {
        cpu_iter_range(it, 0, numel, fn, ctx);
        return;
    }
    /* Chunks rounded to 64 elements so neighbouring threads rarely share a cache line of output. */
    int64_t chunk = (numel + nthr - 1) / nthr;
    chunk = (chunk + 63) & ~(int64_t)63;
#pragma omp parallel num_threads(nthr)
    {
        int64_t t = cpu_thread_num();
        int64_t b = t * chunk, e = b + chunk;
        if (e > numel) e = numel;
        cpu_iter_range(it, b, e, fn, ctx);
    }
}
