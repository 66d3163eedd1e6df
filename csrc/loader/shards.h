/* shards.h: WebDataset tar shards: a streaming tar parser, sample decoders (.npy, JPEG), shard
 * URL patterns, and the pipeline that turns a list of shards into batches ahead of compute.
 *
 * Why: reading petabytes of samples from object storage and preprocessing them on the CPU is what
 * left the GPUs waiting. Everything from the fetched bytes to a finished batch runs here in C
 * threads with no GIL: fetch (byte-budgeted), tar parsing, the shuffle buffer, decoding, batch
 * assembly. It knows nothing of Python or the trainer: inputs are shard locations (local paths or
 * S3 bucket/key through csrc/s3) and plain options; outputs are malloc'd buffers.
 *
 * Errors: DC_ERR_FORMAT for malformed data (a truncated or corrupt tar, a bad .npy header, a
 * corrupt JPEG), naming the member and byte offset; DC_ERR_IO for fetches; DC_ERR_VALUE for bad
 * options or patterns. Nothing here calls exit(). */
#ifndef DC_SHARDS_H
#define DC_SHARDS_H

#include <stddef.h>
#include <stdint.h>

#include "../core/dtype.h"
#include "../core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Streaming tar parser (tar.c) ------------------------------------------------------------
 * Feed the stream's bytes in any chunking; take complete regular-file members out in order.
 * Understands ustar/POSIX and GNU headers: octal and base-256 sizes, GNU long names ('L'), pax
 * extended headers ('x': path, size) and skips pax globals ('g'), GNU long link names ('K'),
 * directories, links and other non-regular members (unknown types with their data). Checks every
 * header's checksum (unsigned or signed sum, as tar does). The end-of-archive zero blocks are
 * optional (a stream that ends exactly at a member boundary is complete); the first all-zero block
 * ends the archive and whatever follows it is ignored (GNU tar's default, tarfile's too).
 * Details: the ustar prefix counts only under the POSIX magic "ustar\0" "00" (as GNU tar); a
 * type-'\0' member whose name ends in '/' is a directory; GNU sparse members ('S') are refused;
 * names are limited to 64 KiB and extended headers to 1 MiB (DC_ERR_FORMAT beyond). A member is
 * complete once its padding to the next 512-byte block is in. Every byte fed is parsed at once
 * (dc_tar_offset is the parse position); members wait in a queue until dc_tar_next. One handle is
 * used by one thread at a time; handles are independent. */
typedef struct dc_tar dc_tar;

typedef struct {
    const char *name; /* member path, NUL-terminated; valid until the next dc_tar_next */
    size_t name_len;
    int64_t size;   /* data bytes */
    int64_t offset; /* stream offset of the member's first header block (pax/longname included) */
    uint8_t *data;  /* (size,) the member's bytes; owned by the parser until the next call,
                     * unless taken with dc_tar_take */
} dc_tar_member;

/* max_member_bytes: a member larger than this fails (DC_ERR_FORMAT) instead of being buffered
 * (<= 0: 1 GiB). */
dc_status dc_tar_init(dc_tar **out, int64_t max_member_bytes);
void dc_tar_free(dc_tar *t);
/* Start over on a new stream whose first byte is at stream offset `offset` (a shard read from a
 * byte offset that is a member boundary). */
void dc_tar_reset(dc_tar *t, int64_t offset);
/* Append bytes: parsed at once, member data copied straight into the member's own buffer (the one
 * copy). Malformed input is not reported here but by dc_tar_next once the members before it have
 * been taken, so chunking never changes what a consumer sees; DC_ERR_NOMEM is returned here. */
dc_status dc_tar_feed(dc_tar *t, const void *buf, size_t len);
/* The next complete member: *have = 1 and m filled, or *have = 0 when more input is needed.
 * Malformed input: DC_ERR_FORMAT naming the offset ("bad header checksum at byte 1536"). */
dc_status dc_tar_next(dc_tar *t, dc_tar_member *m, int *have);
/* Take ownership of the last member's data buffer (malloc'd, m->size bytes, at least 1 byte
 * allocated so an empty member is not NULL; free() it). NULL if already taken. */
uint8_t *dc_tar_take(dc_tar *t);
/* The stream has ended: DC_OK if it ended on a member boundary (or in the end-of-archive blocks),
 * DC_ERR_FORMAT "truncated tar: member 'x' needs N bytes, the stream ended at byte O" otherwise. */
dc_status dc_tar_finish(dc_tar *t);
/* Bytes consumed so far (the stream offset of the next byte to be fed). */
int64_t dc_tar_offset(const dc_tar *t);

/* WebDataset's split of a member path into sample key and field: the key is the path up to the
 * first '.' after the last '/', the field what follows ("a/000123.x.npy" -> "a/000123", "x.npy").
 * Returns 0 (and no split) for a name with no '.' in its last component. Exactly webdataset's
 * base_plus_ext regex, including its backtracking for a last component that starts with '.':
 * "a/.x" -> ("a/", "x"), and no split when the component before it has a '.' ("a.b/.x"). */
int dc_wds_split(const char *name, size_t name_len, size_t *key_len, const char **field);

/* ---- .npy (decode.c) ------------------------------------------------------------------------
 * NumPy format versions 1.0-3.0, C order, little-endian or byte-order-free dtypes: |b1 |u1 |i1
 * <i2 <i4 <i8 <f2 <f4 <f8 (and bf16 written as "<V2" is not supported). Fortran order, big-endian,
 * object or structured dtypes: DC_ERR_FORMAT naming what was found. The header dict is parsed as
 * a Python literal (any key order and spacing, trailing commas, unknown keys skipped); Fortran
 * order is accepted when at most one dimension exceeds 1 (the bytes are the same as C order).
 * Element counts are overflow-checked; nbytes beyond the buffer is a "truncated .npy" error. */
typedef struct {
    dc_dtype dtype;
    int ndim; /* 0..8 */
    int64_t shape[8];
    size_t data_offset; /* where the array's bytes start in the buffer */
    size_t nbytes;      /* numel * itemsize; the buffer holds at least data_offset + nbytes */
} dc_npy_info;
dc_status dc_npy_parse(const void *buf, size_t len, dc_npy_info *out);

/* ---- JPEG (decode.c, libjpeg-turbo) ---------------------------------------------------------
 * Decode to RGB (grayscale and CMYK/YCCK converted), then, in order: resize so the shorter side
 * is `resize` (0: no resize; libjpeg's DCT scaling to the nearest larger size first, then
 * antialiased bilinear), crop to crop_h x crop_w (0: no crop; CENTER, RANDOM position, or
 * RANDOM_RESIZED as torchvision's RandomResizedCrop with scale/ratio, resized to the crop size),
 * flip horizontally with probability flip_p, and write HWC uint8, or CHW float32/bfloat16 as
 * (x/255 - mean[c]) / std[c]. The randomness comes only from `seed` (same seed, same crop).
 * Details: the long side after resize is int(resize * long / short) (torchvision's Resize); the
 * resize is Pillow's BILINEAR (reducing_gap=None) in its fixed point, identical to Pillow when no
 * DCT scaling applies (decoded size under 8/8 only when that still covers the output); CENTER is
 * at round((H - h) / 2) (torchvision); a CENTER/RANDOM crop larger than the resized image is
 * DC_ERR_VALUE naming both sizes; RANDOM_RESIZED draws up to 10 (area, log-ratio) tries, then
 * falls back to a centred crop of the clamped ratio, and keeps the filter inside the region
 * (crop-then-resize); after a resize it resamples twice, as the two transforms would. Randomness:
 * splitmix64 over a counter started at `seed`, drawn crop first, then flip. CMYK/YCCK with an Adobe
 * marker are taken as inverted (Adobe's and Pillow's convention). libjpeg errors and its
 * corrupt-data warnings (premature end, bad Huffman/arithmetic code, extraneous bytes, missing RST,
 * bad progression) are DC_ERR_FORMAT with libjpeg's message; images over 2^27 pixels are refused.
 * Per-call state only: safe from many threads at once. */
enum { DC_CROP_NONE = 0, DC_CROP_CENTER = 1, DC_CROP_RANDOM = 2, DC_CROP_RANDOM_RESIZED = 3 };
typedef struct {
    int resize;               /* shorter side after resize; 0: none */
    int crop, crop_h, crop_w; /* DC_CROP_*; size of the crop (required unless NONE) */
    float scale[2], ratio[2]; /* RANDOM_RESIZED: area fraction and aspect ratio ranges */
    float flip_p;             /* 0: never */
    dc_dtype out_dtype;       /* DC_UINT8 (HWC) or DC_FLOAT32 / DC_BFLOAT16 (CHW, normalised) */
    float mean[3], std[3];    /* std 0 means 1 */
    uint64_t seed;
} dc_image_opts;
/* Height and width of the output for an image of h x w (no decoding). */
void dc_image_out_size(const dc_image_opts *o, int h, int w, int *out_h, int *out_w);
/* Header only: image size and components. */
dc_status dc_jpeg_info(const void *buf, size_t len, int *h, int *w, int *components);
/* Decode into a malloc'd buffer (*out, *out_h, *out_w; 3 channels of out_dtype). */
dc_status dc_jpeg_decode(const void *buf, size_t len, const dc_image_opts *o, void **out, int *out_h, int *out_w);

/* ---- Shard URL patterns (pattern.c) ---------------------------------------------------------
 * Brace expansion as the `braceexpand` package (webdataset's): "{000000..000127}" numeric ranges
 * (zero-padded to the wider end's width), "{a..e}" letter ranges, "{0..20..5}" steps, "{x,y,z}"
 * lists, several and nested groups, "\{" escapes. Unbalanced braces: DC_ERR_VALUE naming the
 * position. More than max_count (<= 0: 10,000,000) results: DC_ERR_VALUE. As the package: a group
 * that is neither a range nor a list stays literal ("{x}", "{}"), ranges run downwards too, a
 * step's sign is ignored. Beyond it: range ends must fit in int64 and nesting is limited to 100
 * levels (DC_ERR_VALUE). The count is checked before anything is built. *out: count malloc'd
 * strings in a malloc'd array (NULL when count is 0), freed with dc_pattern_free. */
dc_status dc_pattern_expand(const char *pattern, int64_t max_count, char ***out, int64_t *count);
void dc_pattern_free(char **list, int64_t count);

#ifdef __cplusplus
}
#endif
#endif

/* ---- Sample order and the pipeline (pipeline.c) ---------------------------------------------
 * A rank's epoch is a stream of samples named (shard, ordinal) — ordinal = the sample's position
 * in its shard's tar — given as runs [start, end) of shards. The stream passes through a shuffle
 * buffer of `capacity` samples whose choices depend only on (key, emission number): before each
 * emission the buffer is refilled from the stream up to capacity, then slot j = pick(key, k, len)
 * is emitted and the last slot moved into it. Same inputs, same order, whatever the thread timing;
 * and the state after k emissions is computable without any data (dc_shuffle_simulate), which is
 * what makes resume exact and elastic. */
uint64_t dc_shard_hash(uint64_t a, uint64_t b);
/* A seeded permutation of 0..n-1 (Fisher-Yates on dc_shard_hash). */
void dc_shard_permutation(int64_t n, uint64_t key, int64_t *out);
/* Run the shuffle over stream positions 0..len-1 for k emissions: slots (capacity entries) gets
 * the buffer's positions in slot order (*nslots of them), *next_in the next stream position;
 * emitted (k entries, may be NULL) the emitted positions in order. */
dc_status dc_shuffle_simulate(int64_t len, int64_t capacity, uint64_t key, int64_t k, int64_t *slots, int64_t *nslots,
                              int64_t *next_in, int64_t *emitted);

struct dc_s3;
typedef struct {
    const char *url;    /* for messages */
    const char *path;   /* local file; NULL for an S3 object */
    const char *bucket; /* S3 */
    const char *key;
    int64_t size;     /* bytes (>= 0) */
    int64_t nsamples; /* < 0: unknown (not checked) */
} dc_shard_src;

typedef struct {
    int32_t shard;
    int64_t start, end; /* ordinals [start, end) */
} dc_shard_run;

enum { DC_DEC_AUTO = 0, DC_DEC_BYTES, DC_DEC_TEXT, DC_DEC_INT, DC_DEC_NPY, DC_DEC_JPEG, DC_DEC_JSON, DC_DEC_SKIP };
typedef struct {
    const char *field; /* "x.npy", "jpg" (lowercase, as samples' fields are) */
    int decoder;       /* DC_DEC_* */
    dc_image_opts image;
} dc_field_spec;

typedef struct {
    const dc_shard_src *shards;
    int32_t nshards;
    const dc_shard_run *runs; /* the stream after the prefill, in order */
    int64_t nruns;
    const dc_shard_run *prefill; /* single samples (end == start + 1) in the buffer's slot order */
    int64_t nprefill;
    int64_t shuffle_capacity; /* >= 1 (1: stream order) */
    uint64_t shuffle_key;
    int64_t first_emission; /* the emission counter's start (a resume's k) */
    int64_t batch_size;     /* >= 1 */
    int drop_last;          /* drop a last partial batch */
    int64_t prefetch_batches;
    int64_t prefetch_bytes; /* fetched but not yet parsed */
    int64_t chunk_bytes;    /* one read / range GET */
    int fetch_threads, decode_threads;
    const dc_field_spec *fields;
    int nfields;
    int keep_unknown;    /* fields with no spec: decoded by extension (1) or dropped (0) */
    uint64_t image_seed; /* a sample's crop/flip seed: dc_shard_hash(image_seed, shard << 40 | ordinal) */
    struct dc_s3 *s3;    /* borrowed, for S3 shards; must outlive the pipeline */
    int64_t max_member_bytes;
} dc_pipe_config;

typedef struct dc_pipe dc_pipe;

enum { DC_COL_TENSOR = 0, DC_COL_BYTES = 1, DC_COL_TEXT = 2, DC_COL_JSON = 3 };
typedef struct {
    char *name;
    int kind; /* DC_COL_* */
    dc_dtype dtype;
    int ndim;         /* TENSOR: batch dimension included */
    int64_t shape[9]; /* TENSOR: (n, ...) */
    void *data;       /* TENSOR: pool buffer; take it (set NULL) and free with dc_pipe_buffer_release */
    size_t nbytes;
    uint8_t **items; /* BYTES/TEXT/JSON: (n,) malloc'd */
    size_t *lens;
} dc_pipe_column;

typedef struct {
    int64_t index; /* batch number since the pipeline's start */
    int64_t n;
    char **keys;       /* (n,) */
    int32_t *shards;   /* (n,) */
    int64_t *ordinals; /* (n,) */
    int ncols;
    dc_pipe_column *cols;
} dc_pipe_batch;

typedef struct {
    int64_t bytes_fetched, fetches, samples_parsed, samples_emitted, batches;
    int64_t peak_fetch_bytes;  /* most bytes fetched or in flight, not yet parsed */
    int64_t peak_buffer_bytes; /* most bytes held by the shuffle buffer */
    int64_t total_samples;     /* what the stream delivers (after drop_last) */
} dc_pipe_stats;

/* Copies what cfg points to and starts the threads. */
dc_status dc_pipe_init(dc_pipe **out, const dc_pipe_config *cfg);
/* The next batch in order (*have = 0 after the last). A failure on any thread comes out here. */
dc_status dc_pipe_next(dc_pipe *p, dc_pipe_batch *b, int *have);
void dc_pipe_batch_clear(dc_pipe_batch *b);
void dc_pipe_buffer_release(void *buf); /* a taken TENSOR buffer's deleter: back to its pool */
void dc_pipe_get_stats(dc_pipe *p, dc_pipe_stats *out);
/* Batches the stream yields in all. */
int64_t dc_pipe_num_batches(const dc_pipe *p);
void dc_pipe_free(dc_pipe *p); /* stops and joins the threads; NULL: no-op */

/* Samples in one shard (reads it through the tar parser). */
dc_status dc_shard_count(const dc_shard_src *src, struct dc_s3 *s3, int64_t chunk_bytes, int64_t *nsamples);
