/* ckpt.h: asynchronous checkpoint writes: snapshot into a bounded staging ring, persist from a
 * background thread, commit atomically.
 *
 * Why: a training step must not wait for a checkpoint's disk write. dc_ckpt_submit copies the
 * state's bytes into a reusable staging ring (the only part that blocks the caller) and returns;
 * one background thread then writes the job's files, computing a CRC32C of every segment as it
 * goes, and commits them so that a crash at any instant leaves either the previous checkpoint or
 * the new one, never half of one.
 *
 * It knows nothing of tensors, Python or the trainer: a job is a list of byte segments (copied at
 * submit) and a list of files (a header blob followed by some of the segments), plus optional
 * commit steps. Formats (safetensors, the manifest's JSON) are built by the caller.
 *
 * A job, in the order the writer thread carries it out:
 *   1. mkdir -p dir.
 *   2. For every file: write `name.tmp` (header, then its segments, CRC32C of each segment
 *      computed from the staged bytes as they are written), fsync, rename to `name`.
 *   3. fragment (optional): write `fragment_name` the same way, holding, for every segment with a
 *      key, `<key>:"<crc hex>"` joined by commas — a JSON object's body; the caller gives keys
 *      already JSON-quoted. This is how each rank publishes its CRCs to the rank that commits.
 *   4. manifest (optional): wait until every file of `wait_for` exists in dir (other ranks'
 *      fragments; polled, up to wait_timeout_s), then write `manifest_name` = prefix + the
 *      fragments' bodies joined by commas + suffix, tmp + fsync + rename. Then fsync dir.
 *   5. commit_to (optional): rename dir to commit_to; if commit_to exists it is exchanged
 *      atomically (RENAME_EXCHANGE) and the old one is left at dir for the caller to delete.
 *      fsync the parent.
 *   6. link (optional): symlink link_target at link_path.tmp, rename onto link_path, fsync its
 *      parent: the "last" pointer switches atomically.
 * Any failure stops the job there, keeps its message (errno text and path) and removes its
 * temporary file; files committed before it stay. Nothing here calls exit().
 *
 * Memory: the ring's capacity is fixed at init (dc_ckpt_resize changes it between jobs). A state
 * larger than the ring still saves: submit then copies as the writer frees space, so it blocks
 * for roughly the write of (state - capacity) bytes. */
#ifndef DC_CKPT_H
#define DC_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "../core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dc_ckpt dc_ckpt;

typedef struct {
    const void *src; /* host bytes, read during dc_ckpt_submit only */
    size_t nbytes;
    const char *key; /* JSON-quoted key for the fragment ("\"model/w\""), or NULL: not listed */
} dc_ckpt_segment;

typedef struct {
    const char *name; /* file name inside the job's dir */
    const void *head; /* written first (the safetensors header); may be NULL when head_len is 0 */
    size_t head_len;
    int nsegs;
    const int *segs; /* (nsegs,) indices into the job's segments, written in this order */
} dc_ckpt_file;

typedef struct {
    const char *dir;
    int nsegments;
    const dc_ckpt_segment *segments;
    int nfiles;
    const dc_ckpt_file *files;
    const char *fragment_name; /* NULL: none */
    const char *manifest_name; /* NULL: none (then prefix, suffix, wait_for are unused) */
    const char *manifest_prefix;
    const char *manifest_suffix;
    int nwait;
    const char *const *wait_for; /* fragment file names in dir, this job's own among them or not */
    double wait_timeout_s;
    const char *commit_to; /* NULL: dir is the final place */
    const char *link_path; /* NULL: no pointer */
    const char *link_target;
    int fsync; /* 0 only for tests and benchmarks of the page cache: skip every fsync */
} dc_ckpt_job;

typedef enum {
    DC_CKPT_IDLE = 0,    /* no job submitted since the last result was taken */
    DC_CKPT_RUNNING = 1, /* the writer is working on the job */
    DC_CKPT_DONE = 2,    /* finished: dc_ckpt_result has its status */
} dc_ckpt_state;

/* Start the writer thread with a staging ring of `capacity` bytes (> 0; allocated at once). The
 * thread runs `niceness` nice levels below the caller (0..19; Linux sets nice per thread), so on a
 * machine whose cores all compute, the write takes the CPU they leave rather than slowing them. */
dc_status dc_ckpt_init(dc_ckpt **out, size_t capacity, int niceness);

/* Change the ring's capacity; waits for a running job first. */
dc_status dc_ckpt_resize(dc_ckpt *c, size_t capacity);
size_t dc_ckpt_capacity(const dc_ckpt *c);

/* Snapshot the job's segments into the ring and hand the job to the writer. Everything the job
 * points at is copied before this returns, so the caller may change or free it at once. Blocks
 * only while copying (and, for a state larger than the ring, while the writer frees space).
 * DC_ERR_VALUE when a job is still running or its result was not taken (one job at a time). */
dc_status dc_ckpt_submit(dc_ckpt *c, const dc_ckpt_job *job);

dc_ckpt_state dc_ckpt_poll(dc_ckpt *c);

/* Wait up to timeout_s (< 0: forever) for the running job. *done = 1 when it finished. */
dc_status dc_ckpt_wait(dc_ckpt *c, double timeout_s, int *done);

/* The finished job's status (its message in this thread's error buffer) and its segments'
 * CRC32Cs (copied to crcs, which holds nsegments entries; NULL to skip). Resets to IDLE.
 * DC_ERR_VALUE when no job is finished. */
dc_status dc_ckpt_result(dc_ckpt *c, uint32_t *crcs, int nsegments, double *seconds, uint64_t *bytes);

/* Wait for a running job, stop the thread, free the ring. NULL is a no-op. */
void dc_ckpt_free(dc_ckpt *c);

/* CRC32C (Castagnoli, reflected, as in iSCSI/ext4/safetensors-free tools): crc = dc_crc32c(0, p,
 * n) for a whole buffer, or chained: dc_crc32c(dc_crc32c(0, a, na), b, nb) == crc of a||b. Uses
 * the SSE4.2 crc32 instruction when the CPU has it. */
uint32_t dc_crc32c(uint32_t crc, const void *p, size_t n);
int dc_crc32c_hw(void);                                       /* 1 when the hardware instruction is used */
uint32_t dc_crc32c_sw(uint32_t crc, const void *p, size_t n); /* the table version, always */

#ifdef __cplusplus
}
#endif
#endif
