/* plan.h: the host-side half of the GPU libraries' plans, kept out of cuda/ so that it compiles
 * and is unit-tested on machines without a GPU.
 *
 * - A plan cache: a fixed number of slots, each a key (fixed-size bytes, compared with memcmp) and
 *   a payload the caller builds (cuBLASLt descriptors and algorithm; cuDNN descriptors and
 *   algorithm candidates), least recently used evicted, with hit / miss / eviction counts. The
 *   cuBLASLt matmuls (cuda/linalg.cu) and the cuDNN convolutions (cuda/conv.cu) each keep one.
 * - The matmul planner: how cuBLASLt reads each operand of t0 = t1 @ t2 (in place as N or T, with
 *   host-looped outer batch dims, or from a contiguous copy) and the key of its plan.
 *
 * Plain memory and dc_kview only: no CUDA types (the compute type and the operations are small
 * enums that cuda/linalg.cu maps to cuBLAS's). Not thread-safe: each user holds its own lock. */
#ifndef DC_PLAN_H
#define DC_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/backend-impl.h"
#include "../core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* --- the plan cache ---------------------------------------------------------------------------- */

typedef struct dc_plan_cache dc_plan_cache;

/* Frees what a payload holds: called when a slot handed out by dc_plan_cache_get is evicted,
 * dropped or cleared, so also on a payload whose build failed half way (it started zeroed). */
typedef void (*dc_plan_release_fn)(void *payload);

typedef struct {
    int64_t slots, used;
    int64_t hits, misses, evictions;
} dc_plan_cache_stats;

/* A cache of `slots` (>= 2) plans of key_size-byte keys and payload_size-byte payloads (aligned
 * for any type). DC_ERR_NOMEM, DC_ERR_VALUE for bad sizes. */
dc_status dc_plan_cache_new(int slots, size_t key_size, size_t payload_size, dc_plan_release_fn release,
                            dc_plan_cache **out);
void dc_plan_cache_free(dc_plan_cache *c); /* releases every payload; NULL is a no-op */

/* The payload for `key`. Cached: *fresh = false (a hit). Not cached: the least recently used slot
 * (a free one first; else its payload is released, an eviction) now holds key with a zeroed
 * payload and *fresh = true (a miss): build the plan into it, and dc_plan_cache_drop it if that
 * fails. Either way the slot becomes the most recently used, so the next get never evicts it: a
 * caller may hold two plans at once. The payload stays valid until its slot is evicted, dropped or
 * cleared. */
void *dc_plan_cache_get(dc_plan_cache *c, const void *key, bool *fresh);
/* Forget the plan whose payload this is (a build failed): released, slot free. */
void dc_plan_cache_drop(dc_plan_cache *c, void *payload);
void dc_plan_cache_clear(dc_plan_cache *c); /* every slot released and free; counts kept */
void dc_plan_cache_get_stats(const dc_plan_cache *c, dc_plan_cache_stats *s);

/* --- the matmul planner ------------------------------------------------------------------------ */

/* cuBLASLt is column-major, so row-major C = A @ B runs as C^T = B^T @ A^T: cuBLAS's "A" is our
 * B, its "B" our A, m = N, n = M, k = K, and row-major C (ld N) is exactly column-major C^T. */
enum { DC_MM_OP_N = 0, DC_MM_OP_T = 1 };
enum { DC_MM_COMPUTE_32F = 0, DC_MM_COMPUTE_32F_FAST_TF32 = 1, DC_MM_COMPUTE_64F = 2 };

/* Host-loop outer batches beyond this many: copy the operand instead (one pass beats many calls). */
#define DC_MM_MAX_LOOP 8

/* One input as cuBLASLt reads it: stored column-major (rows, cols, ld), used as op(stored). */
typedef struct {
    int op; /* DC_MM_OP_N / _T */
    int64_t rows, cols, ld;
} dc_mm_mat;

/* Everything that decides cuBLASLt's descriptors and algorithm. All int64 (no padding), zeroed
 * before filling, compared with memcmp. a / b are cuBLAS's A and B (our B and A). A single matrix
 * (batch 1) keys no batch strides. */
typedef struct {
    int64_t device, dtype, compute;
    int64_t m, n, k, batch;
    int64_t op_a, op_b;
    int64_t rows_a, cols_a, ld_a, stride_a;
    int64_t rows_b, cols_b, ld_b, stride_b;
    int64_t ld_c, stride_c;
    int64_t align_a, align_b, align_c; /* bytes every pointer of the call is aligned to (<= 256) */
    int64_t workspace;
} dc_mm_key;

/* How t0 (batch..., M, N) = t1 (batch..., M, K) @ t2 (batch..., K, N) runs. */
typedef struct {
    int64_t M, N, K;
    bool copy_a, copy_b;  /* our A (t1) / B (t2) is first copied to contiguous scratch */
    int split;            /* batch dims [0, split) are looped on the host, [split, nb) one batched call */
    int64_t outer, inner; /* products of those batch dims */
    int64_t sa, sb;       /* the batched call's batch strides of our A and B (elements) */
    dc_mm_mat ma, mb;     /* cuBLAS's A (our B) and B (our A) */
} dc_mm_layout;

/* Step 1: which operands need a contiguous copy, and the batch split. The caller has checked the
 * shapes (same ndim >= 2, equal batch dims, inner dims that fit; none empty) and that o is
 * contiguous. */
void dc_mm_choose(const dc_kview *o, const dc_kview *A, const dc_kview *B, dc_mm_layout *L);

/* Step 2, once any copies replaced A / B by contiguous views of the same shape: the operands'
 * layouts, the batch strides and the plan's key (for a device, a compute type and the workspace
 * bytes). DC_ERR_UNSUPPORTED when a batched call would hold 2^31 or more matrices; DC_ERR_INTERNAL
 * when A / B are not readable as L says (a copy was skipped). */
dc_status dc_mm_plan(const dc_kview *o, const dc_kview *A, const dc_kview *B, int device, int compute,
                     int64_t workspace, dc_mm_layout *L, dc_mm_key *key);

/* Element offset of outer batch `b` (row-major over dims [0, split)) in v. */
int64_t dc_mm_outer_offset(const dc_kview *v, int split, int64_t b);

#ifdef __cplusplus
}
#endif

#endif
