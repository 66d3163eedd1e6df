/* alloc.h: a caching allocator over any raw allocator that is slow to call (cudaMalloc, which also
 * synchronises the device on free; cudaHostAlloc for pinned host memory).
 *
 * PyTorch's CUDA caching allocator is the model: requests round up to 512 bytes; small ones (<= 1
 * MiB) are cut from 2 MiB segments, mid-size ones (< 10 MiB) from 20 MiB segments, larger ones get
 * a segment of their own rounded to 2 MiB. A freed block goes back to its pool (merged with free
 * neighbours of its segment) and is handed out again best-fit, split when the rest is worth
 * keeping. The raw allocator is called only when no cached block fits, so a training loop's steady
 * state makes no raw call at all.
 *
 * Streams: a block belongs to the stream it was allocated on and is reused only by work on that
 * stream, which the stream itself orders after the old work: no wait. A block used by another
 * stream too (dc_cache_record_stream) is reused only after an event recorded on each such stream at
 * free time has completed (polled, never waited for, on later calls).
 *
 * Plain buffers only: the allocator knows nothing of tensors or devices beyond the callbacks, so the
 * CPU tests drive it with malloc and fake events. Thread-safe (one mutex per cache). */
#ifndef DC_ALLOC_H
#define DC_ALLOC_H

#include <stddef.h>
#include <stdint.h>

#include "../core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dc_cache dc_cache;

typedef struct {
    const char *name; /* for messages: "cuda:0", "pinned host memory" (copied) */
    void *ctx;        /* passed to every callback */
    /* DC_ERR_NOMEM when the memory is not there (the cache then releases its free segments and
     * retries once); any other status is passed on. */
    dc_status (*raw_alloc)(void *ctx, size_t nbytes, void **out);
    void (*raw_free)(void *ctx, void *p);
    /* Cross-stream reuse (may all be NULL when the memory is never used across streams): record an
     * event on `stream` now; query: 1 completed, 0 not yet, < 0 failed (treated as completed). */
    dc_status (*event_record)(void *ctx, void *stream, void **event);
    int (*event_query)(void *ctx, void *event);
    void (*event_destroy)(void *ctx, void *event);
    /* Byte budget for reserved memory (0: none): past it a request first releases free segments,
     * then fails with DC_ERR_NOMEM. */
    size_t limit;
} dc_cache_config;

typedef struct {
    int64_t allocated, allocated_peak; /* bytes in blocks handed out (rounded sizes) */
    int64_t requested, requested_peak; /* bytes the callers asked for */
    int64_t reserved, reserved_peak;   /* bytes held from the raw allocator */
    int64_t active_blocks, segments, free_blocks, pending_blocks;
    int64_t num_allocs, num_frees;         /* dc_cache_alloc / dc_cache_release calls */
    int64_t num_raw_allocs, num_raw_frees; /* raw allocator calls */
    int64_t num_ooms;                      /* requests that failed for memory */
    int64_t num_splits, num_merges;
} dc_cache_stats;

dc_status dc_cache_init(dc_cache **out, const dc_cache_config *cfg);
/* Returns every segment to the raw allocator, handed-out blocks included (process teardown).
 * NULL is a no-op. */
void dc_cache_free(dc_cache *c);

/* nbytes == 0 gives *out = NULL. The block is at least 512-byte aligned (as its segment is). */
dc_status dc_cache_alloc(dc_cache *c, size_t nbytes, void *stream, void **out);
/* Back to the cache; NULL is a no-op. A pointer this cache did not hand out is a bug in the caller:
 * DC_ERR_INTERNAL (also what a double release gives). */
dc_status dc_cache_release(dc_cache *c, void *p);
/* Mark the block holding `p` as used by `stream` (not its own): its reuse waits for that stream's
 * work queued before the release. */
dc_status dc_cache_record_stream(dc_cache *c, void *p, void *stream);
/* Return every wholly free segment to the raw allocator (blocks in use stay). */
void dc_cache_empty(dc_cache *c);
void dc_cache_get_stats(dc_cache *c, dc_cache_stats *s);
void dc_cache_reset_peak(dc_cache *c);
/* Size of the block handed out for `p` (rounded), 0 if `p` is not a live block of this cache. */
size_t dc_cache_block_size(dc_cache *c, const void *p);
/* The rounded size and segment size a request of n bytes gets (for tests and docs). */
size_t dc_cache_round(size_t n);
size_t dc_cache_segment_size(size_t rounded);

#ifdef __cplusplus
}
#endif
#endif
