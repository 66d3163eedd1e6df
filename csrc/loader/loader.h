/* loader.h: a small pool of worker threads that assembles data batches ahead of the consumer.
 *
 * Why: a training step should never wait for its batch. The data loader hands this subsystem row
 * indices; N threads gather those rows of contiguous host arrays into fresh contiguous batch
 * buffers while the consumer computes, keeping up to `prefetch` batches in flight or ready. It
 * knows nothing of tensors, Python or the trainer: sources are (base pointer, row size, row count)
 * and results are malloc'd buffers the caller takes over.
 *
 * Threads: the worker threads only read the source rows, write their own output buffers and take
 * the loader's mutex. Errors on a worker (an index out of range, out of memory) are stored with
 * the batch and returned by dc_loader_next for that batch, in the calling thread. Nothing here
 * calls exit(). Batches come out of dc_loader_next in submission order. */
#ifndef DC_LOADER_H
#define DC_LOADER_H

#include <stddef.h>
#include <stdint.h>

#include "../core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dc_loader dc_loader;

/* A contiguous run of rows: `nrows` rows of the column's row_bytes each, starting at `base`. */
typedef struct {
    const void *base;
    int64_t nrows;
} dc_loader_part;

/* One output buffer of a batch. Its rows are the concatenation of `parts` (a ConcatDataset of
 * arrays is several parts; stacking n separate items is n parts of one row each). Output row i is
 * column row indices[i], or row i when indices is NULL. */
typedef struct {
    size_t row_bytes;
    int nparts;
    const dc_loader_part *parts; /* (nparts,) */
    const int64_t *indices;      /* (n,) or NULL */
} dc_loader_column;

/* A finished batch: ncols buffers of n * row_bytes bytes each. The caller owns data[k] and frees
 * each with dc_loader_buffer_free (or hands it to a tensor as its deleter), then calls
 * dc_loader_batch_clear for the arrays themselves. */
typedef struct {
    int64_t batch_id;
    int64_t n;
    int ncols;
    void **data;    /* (ncols,) */
    size_t *nbytes; /* (ncols,) */
} dc_loader_batch;

/* Start `nthreads` (>= 1) workers; at most `prefetch` (>= 1) batches are being assembled or wait
 * ready at any time (more may be submitted: they queue). */
dc_status dc_loader_init(dc_loader **out, int nthreads, int prefetch);

/* Queue one batch of n rows from each of ncols columns. The column descriptions and indices are
 * copied; the source rows themselves are read later by a worker, so they must stay valid and
 * unchanged until this batch has come out of dc_loader_next (or the loader is reset or freed).
 * Never blocks on the workers. */
dc_status dc_loader_submit(dc_loader *l, int64_t batch_id, int ncols, const dc_loader_column *cols, int64_t n);

/* Wait up to timeout_s seconds (< 0: forever) for the oldest submitted batch. On success *out owns
 * the buffers. When it is not ready in time, returns DC_OK with *timed_out = 1 and *out zeroed.
 * When the batch failed, returns its status with the worker's message in this thread's error
 * buffer (the batch is consumed; later batches are unaffected). DC_ERR_VALUE when nothing is
 * outstanding. */
dc_status dc_loader_next(dc_loader *l, dc_loader_batch *out, double timeout_s, int *timed_out);

/* Number of submitted batches not yet returned by dc_loader_next. */
int64_t dc_loader_pending(dc_loader *l);

/* Drop every queued and finished batch (waits for the ones being assembled): afterwards the
 * sources of earlier submissions are no longer read. Used when an epoch is abandoned. */
void dc_loader_reset(dc_loader *l);

/* Stop and join the workers, drop all batches. NULL is a no-op. */
void dc_loader_free(dc_loader *l);

/* Release one output buffer (deleter-compatible: void (*)(void *)). */
void dc_loader_buffer_free(void *p);
/* Free a batch's arrays and every buffer still in data[] (a caller that took a buffer over sets
 * its slot to NULL first). Leaves *b zeroed; a zeroed batch is a no-op. */
void dc_loader_batch_clear(dc_loader_batch *b);

#ifdef __cplusplus
}
#endif
#endif
