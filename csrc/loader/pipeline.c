/* pipeline.c: shards in, batches out: fetch -> tar parse -> shuffle buffer -> decode -> batch.
 *
 * Threads (none touches Python):
 *   fetchers (fetch_threads): read the shards' bytes in chunk_bytes pieces — pread for local files,
 *     range GETs through csrc/s3 — in stream order, as far ahead as the prefetch byte budget
 *     allows (at least one chunk is always allowed, so a chunk larger than the budget still moves).
 *   parser (one): feeds the chunks in order to the tar parser, groups members into samples by key,
 *     keeps the samples the stream wants, runs the shuffle buffer and emits samples in order.
 *   decoders (decode_threads): decode each emitted sample's fields and write them into their
 *     batch's row; a batch is ready when all of its rows are.
 * The consumer takes batches in order with dc_pipe_next. The parser emits at most
 * prefetch_batches batches ahead of the consumer, so memory is bounded by the byte budget, the
 * shuffle buffer and the batches ahead, whatever the shard sizes.
 *
 * Order: see shards.h. The emission order depends only on the config, never on timing: the
 * fetchers may finish out of order, but the parser consumes chunks in order, and decoders write
 * rows by emission number.
 *
 * Errors: the first failure on any thread is kept (status and message, with the shard's URL and
 * the sample's key), every thread stops, and dc_pipe_next returns it in the consumer's thread. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../s3/s3.h"
#include "shards.h"

/* ---- hashing and the shuffle ------------------------------------------------------------------ */

static uint64_t splitmix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

uint64_t dc_shard_hash(uint64_t a, uint64_t b)
{
    return splitmix(a ^ splitmix(b + 0x632be59bd9b4e019ull));
}

/* Uniform in [0, n) from a 64-bit hash (multiply-shift: no modulo bias worth naming). */
static int64_t pick(uint64_t key, int64_t k, int64_t n)
{
    return (int64_t)(((unsigned __int128)dc_shard_hash(key, (uint64_t)k) * (uint64_t)n) >> 64);
}

void dc_shard_permutation(int64_t n, uint64_t key, int64_t *out)
{
    for (int64_t i = 0; i < n; i++) out[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = pick(key, i, i + 1);
        int64_t t = out[i];
        out[i] = out[j];
        out[j] = t;
    }
}

dc_status dc_shuffle_simulate(int64_t len, int64_t capacity, uint64_t key, int64_t k, int64_t *slots, int64_t *nslots,
                              int64_t *next_in, int64_t *emitted)
{
    if (len < 0 || capacity < 1 || k < 0 || k > len)
        return dc_error(DC_ERR_VALUE, "shuffle_simulate: len %lld, capacity %lld, k %lld out of range", (long long)len,
                        (long long)capacity, (long long)k);
    int64_t n = 0, in = 0;
    for (int64_t e = 0; e < k; e++) {
        while (n < capacity && in < len) slots[n++] = in++;
        int64_t j = pick(key, e, n);
        if (emitted) emitted[e] = slots[j];
        slots[j] = slots[--n];
    }
    *nslots = n;
    *next_in = in;
    return DC_OK;
}

/* ---- the buffer pool (reusable batch buffers) ------------------------------------------------- */

/* A TENSOR column's buffer carries a hidden header in front of its data, so the tensor's deleter
 * (which only gets the data pointer) finds its pool. The pool lives until the pipeline and every
 * buffer it handed out are gone. */
typedef struct pool {
    pthread_mutex_t mu;
    pid_t pid;      /* a forked child must not take a lock the parent's threads may have held */
    int refs;       /* the pipeline's + one per buffer out */
    int nfree, cap; /* free list */
    void **free;    /* headers */
    size_t *sizes;  /* their capacities */
} pool_t;

typedef struct {
    pool_t *pool;
    size_t capacity;
    char pad[48]; /* 64-byte header: the data stays 64-aligned */
} buf_hdr;

static pool_t *pool_new(int cap)
{
    pool_t *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->free = calloc((size_t)cap, sizeof *p->free);
    p->sizes = calloc((size_t)cap, sizeof *p->sizes);
    if (!p->free || !p->sizes) {
        free(p->free);
        free(p->sizes);
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    p->pid = getpid();
    p->refs = 1;
    p->cap = cap;
    return p;
}

static void pool_unref_locked_and_unlock(pool_t *p)
{
    int last = --p->refs == 0;
    pthread_mutex_unlock(&p->mu);
    if (!last) return;
    for (int i = 0; i < p->nfree; i++) free(p->free[i]);
    free(p->free);
    free(p->sizes);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* A buffer of at least n bytes: a free one that fits (and is not more than twice too big), else a new one. */
static void *pool_get(pool_t *p, size_t n)
{
    buf_hdr *h = NULL;
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < p->nfree; i++) {
        if (p->sizes[i] >= n && p->sizes[i] <= 2 * n + 4096) {
            h = p->free[i];
            p->free[i] = p->free[p->nfree - 1];
            p->sizes[i] = p->sizes[p->nfree - 1];
            p->nfree--;
            break;
        }
    }
    if (h) p->refs++;
    pthread_mutex_unlock(&p->mu);
    if (!h) {
        void *mem = NULL;
        if (posix_memalign(&mem, 64, sizeof(buf_hdr) + (n ? n : 1))) return NULL;
        h = mem;
        h->pool = p;
        h->capacity = n;
        pthread_mutex_lock(&p->mu);
        p->refs++;
        pthread_mutex_unlock(&p->mu);
    }
    return (char *)h + sizeof(buf_hdr);
}

void dc_pipe_buffer_release(void *buf)
{
    if (!buf) return;
    buf_hdr *h = (buf_hdr *)((char *)buf - sizeof(buf_hdr));
    pool_t *p = h->pool;
    if (p->pid != getpid()) { /* a batch tensor freed in a forked child: free it, leave the pool alone */
        free(h);
        return;
    }
    pthread_mutex_lock(&p->mu);
    if (p->refs > 1 && p->nfree < p->cap) { /* refs > 1: the pipeline is alive to reuse it */
        p->free[p->nfree] = h;
        p->sizes[p->nfree] = h->capacity;
        p->nfree++;
    } else {
        free(h);
    }
    pool_unref_locked_and_unlock(p);
}

/* ---- the pipeline's state --------------------------------------------------------------------- */

typedef struct {
    char *name; /* field, lowercase */
    uint8_t *data;
    size_t len;
} field_t;

typedef struct {
    char *key;
    int32_t shard;
    int64_t ordinal;
    int nfields, cap;
    field_t *fields;
    size_t bytes;
} sample_t;

typedef struct {
    int32_t shard;
    int64_t start, end;
    int64_t *keep, *keep_slot; /* prefill passes: sorted ordinals, their buffer slots */
    int64_t nkeep;
    int64_t ntasks, first_task;
    int cut; /* the parser has all it wants from this pass: skip its remaining chunks */
} pass_t;

enum { TASK_FREE = 0, TASK_FETCHING, TASK_DONE, TASK_SKIPPED };
typedef struct {
    int64_t t; /* task number held in this slot */
    int state;
    void *data;
    int64_t len;
} task_t;

typedef struct {
    int64_t n, done_rows;
    int ncols, capcols;
    dc_pipe_column *cols;
    uint8_t **filled; /* (ncols,) n flags each */
    char **keys;
    int32_t *shards;
    int64_t *ordinals;
    int ready;
} batch_t;

struct dc_pipe {
    dc_pipe_config cfg;
    dc_shard_src *shards;
    dc_field_spec *fields;
    pass_t *passes;
    int64_t npasses, ntasks;
    int64_t total_samples, nbatches;

    pthread_mutex_t mu;
    pthread_cond_t cv_fetch, cv_parse, cv_decode, cv_batch;
    int stop;
    dc_status err;
    char errmsg[1024];

    /* fetch */
    task_t *ring;
    int64_t nring;
    int64_t next_claim;  /* next task a fetcher takes */
    int64_t claim_pass;  /* the pass holding next_claim */
    int64_t parse_task;  /* the task the parser needs next */
    int64_t fetch_bytes; /* fetched or in flight, not yet parsed */

    /* shuffle + emission */
    sample_t **buf;
    int64_t nbuf, buf_bytes;
    int64_t emission; /* the shuffle's counter */

    /* decode: emitted samples by sequence number */
    sample_t **emitted; /* ring of nemit */
    int64_t nemit;
    int64_t emitted_count, decode_claim;

    batch_t *batches; /* ring of nbring */
    int64_t nbring;
    int64_t consumed; /* batches handed out */

    pool_t *pool;
    dc_pipe_stats stats;

    pthread_t *threads;
    int nthreads;
};

static void sample_free(sample_t *s)
{
    if (!s) return;
    for (int i = 0; i < s->nfields; i++) {
        free(s->fields[i].name);
        free(s->fields[i].data);
    }
    free(s->fields);
    free(s->key);
    free(s);
}

/* Record the first failure (this thread's dc_last_error, prefixed) and stop everything. Call with mu held. */
static void fail_locked(dc_pipe *p, dc_status st, const char *prefix)
{
    if (!p->err) {
        p->err = st;
        snprintf(p->errmsg, sizeof p->errmsg, "%s%s", prefix ? prefix : "", dc_last_error());
    }
    p->stop = 1;
    pthread_cond_broadcast(&p->cv_fetch);
    pthread_cond_broadcast(&p->cv_parse);
    pthread_cond_broadcast(&p->cv_decode);
    pthread_cond_broadcast(&p->cv_batch);
}

static void fail(dc_pipe *p, dc_status st, const char *prefix)
{
    pthread_mutex_lock(&p->mu);
    fail_locked(p, st, prefix);
    pthread_mutex_unlock(&p->mu);
}

/* ---- fetchers --------------------------------------------------------------------------------- */

static dc_status read_chunk(dc_pipe *p, const dc_shard_src *s, int64_t off, int64_t len, void *dst)
{
    if (s->path) {
        int fd = open(s->path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) return dc_error(DC_ERR_IO, "cannot open shard '%s': %s", s->url, strerror(errno));
        int64_t got = 0;
        while (got < len) {
            ssize_t r = pread(fd, (char *)dst + got, (size_t)(len - got), off + got);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
                int e = errno;
                close(fd);
                if (r == 0)
                    return dc_error(DC_ERR_IO, "shard '%s' is shorter than its %lld bytes (ends at byte %lld)", s->url,
                                    (long long)s->size, (long long)(off + got));
                return dc_error(DC_ERR_IO, "cannot read shard '%s' at byte %lld: %s", s->url, (long long)(off + got),
                                strerror(e));
            }
            got += r;
        }
        close(fd);
        return DC_OK;
    }
    if (!p->cfg.s3) return dc_error(DC_ERR_VALUE, "shard '%s' is an S3 object but the loader has no S3 client", s->url);
    return dc_s3_get_range(p->cfg.s3, s->bucket, s->key, off, len, dst, NULL);
}

static void *fetch_main(void *arg)
{
    dc_pipe *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->next_claim < p->ntasks) {
            int64_t t = p->next_claim;
            while (p->claim_pass < p->npasses &&
                   t >= p->passes[p->claim_pass].first_task + p->passes[p->claim_pass].ntasks)
                p->claim_pass++;
            pass_t *ps = &p->passes[p->claim_pass];
            int64_t chunk = t - ps->first_task;
            const dc_shard_src *s = &p->shards[ps->shard];
            int64_t off = chunk * p->cfg.chunk_bytes;
            int64_t len = s->size - off < p->cfg.chunk_bytes ? s->size - off : p->cfg.chunk_bytes;
            /* Room in the ring, and in the byte budget (one chunk always goes, or nothing would move). */
            if (t >= p->parse_task + p->nring) break;
            if (!ps->cut && p->fetch_bytes > 0 && p->fetch_bytes + len > p->cfg.prefetch_bytes) break;
            task_t *slot = &p->ring[t % p->nring];
            p->next_claim++;
            slot->t = t;
            slot->data = NULL;
            slot->len = len;
            if (ps->cut) {
                slot->state = TASK_SKIPPED;
                pthread_cond_broadcast(&p->cv_parse);
                continue;
            }
            slot->state = TASK_FETCHING;
            p->fetch_bytes += len;
            if (p->fetch_bytes > p->stats.peak_fetch_bytes) p->stats.peak_fetch_bytes = p->fetch_bytes;
            pthread_mutex_unlock(&p->mu);

            void *data = malloc(len ? (size_t)len : 1);
            dc_status st = data ? read_chunk(p, s, off, len, data)
                                : dc_error(DC_ERR_NOMEM, "out of memory for a %lld-byte chunk", (long long)len);

            pthread_mutex_lock(&p->mu);
            if (st) {
                free(data);
                fail_locked(p, st, "");
                break;
            }
            slot->data = data;
            slot->state = TASK_DONE;
            p->stats.bytes_fetched += len;
            p->stats.fetches++;
            pthread_cond_broadcast(&p->cv_parse);
        }
        if (p->stop || p->next_claim >= p->ntasks) break;
        pthread_cond_wait(&p->cv_fetch, &p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* ---- parser: samples, the shuffle buffer, emission ------------------------------------------- */

/* Hand one sample to the decoders (waits while the consumer is prefetch_batches behind). */
static int emit_sample(dc_pipe *p, sample_t *s)
{
    pthread_mutex_lock(&p->mu);
    int64_t seq = p->emitted_count;
    while (!p->stop && seq >= (p->consumed + p->cfg.prefetch_batches) * p->cfg.batch_size)
        pthread_cond_wait(&p->cv_parse, &p->mu);
    if (p->stop) {
        pthread_mutex_unlock(&p->mu);
        sample_free(s);
        return 0;
    }
    p->emitted[seq % p->nemit] = s;
    p->emitted_count++;
    p->stats.samples_emitted++;
    pthread_cond_broadcast(&p->cv_decode);
    pthread_mutex_unlock(&p->mu);
    return 1;
}

static int emit_one(dc_pipe *p)
{
    int64_t j = pick(p->cfg.shuffle_key, p->emission, p->nbuf);
    sample_t *s = p->buf[j];
    p->buf[j] = p->buf[--p->nbuf];
    p->buf[p->nbuf] = NULL; /* slots past nbuf stay empty (pipe_release frees what is non-NULL) */
    p->buf_bytes -= (int64_t)s->bytes;
    p->emission++;
    if (p->emitted_count >= p->total_samples) { /* past drop_last's cut: not wanted */
        sample_free(s);
        return 1;
    }
    return emit_sample(p, s);
}

static int push_sample(dc_pipe *p, sample_t *s)
{
    p->buf[p->nbuf++] = s;
    p->buf_bytes += (int64_t)s->bytes;
    pthread_mutex_lock(&p->mu);
    if (p->buf_bytes > p->stats.peak_buffer_bytes) p->stats.peak_buffer_bytes = p->buf_bytes;
    pthread_mutex_unlock(&p->mu);
    if (p->nbuf == p->cfg.shuffle_capacity) return emit_one(p);
    return 1;
}

typedef struct {
    dc_pipe *p;
    pass_t *ps;
    const dc_shard_src *src;
    sample_t *cur; /* the sample being assembled (NULL: not wanted, or none yet) */
    char *cur_key;
    int64_t ordinal; /* of the current sample; -1 before the first */
    int64_t keep_i;  /* prefill: next entry of keep */
    int done;        /* the pass has everything it wants */
} pass_parse;

static int wanted(pass_parse *q, int64_t ord, int64_t *slot)
{
    pass_t *ps = q->ps;
    if (ord < ps->start || ord >= ps->end) return 0;
    if (!ps->keep) return 1;
    if (q->keep_i < ps->nkeep && ps->keep[q->keep_i] == ord) {
        *slot = ps->keep_slot[q->keep_i];
        return 1;
    }
    return 0;
}

/* The current sample is complete: into the prefill slot or the shuffle. 0: stop. */
static int finish_sample(pass_parse *q)
{
    sample_t *s = q->cur;
    q->cur = NULL;
    if (!s) return 1;
    dc_pipe *p = q->p;
    pthread_mutex_lock(&p->mu);
    p->stats.samples_parsed++;
    pthread_mutex_unlock(&p->mu);
    if (q->ps->keep) {
        int64_t slot = q->ps->keep_slot[q->keep_i++];
        p->buf[slot] = s;
        p->buf_bytes += (int64_t)s->bytes;
        return 1;
    }
    return push_sample(p, s);
}

static int start_sample(pass_parse *q, const char *key, size_t klen)
{
    q->ordinal++;
    free(q->cur_key);
    q->cur_key = strndup(key, klen);
    if (!q->cur_key) return 0;
    if (q->ordinal >= q->ps->end || (q->ps->keep && q->keep_i >= q->ps->nkeep)) {
        q->done = 1;
        return 1;
    }
    int64_t slot;
    if (!wanted(q, q->ordinal, &slot)) return 1;
    sample_t *s = calloc(1, sizeof *s);
    if (!s || !(s->key = strdup(q->cur_key))) {
        free(s);
        return 0;
    }
    s->shard = q->ps->shard;
    s->ordinal = q->ordinal;
    q->cur = s;
    return 1;
}

static const dc_field_spec *field_spec(const dc_pipe *p, const char *field)
{
    for (int i = 0; i < p->cfg.nfields; i++)
        if (!strcmp(p->fields[i].field, field)) return &p->fields[i];
    return NULL;
}

/* One tar member: starts a new sample when its key changes. */
static dc_status take_member(pass_parse *q, dc_tar *tar, const dc_tar_member *m)
{
    size_t klen;
    const char *field;
    if (!dc_wds_split(m->name, m->name_len, &klen, &field)) return DC_OK; /* no extension: not a sample's field */
    if (!q->cur_key || strlen(q->cur_key) != klen || memcmp(q->cur_key, m->name, klen)) {
        if (!finish_sample(q)) return DC_ERR_INTERNAL; /* stopped; the failure is recorded */
        if (!start_sample(q, m->name, klen)) return dc_error(DC_ERR_NOMEM, "out of memory");
        if (q->done) return DC_OK;
    }
    sample_t *s = q->cur;
    if (!s) return DC_OK;
    size_t flen = m->name_len - (size_t)(field - m->name);
    char *lname = strndup(field, flen);
    if (!lname) return dc_error(DC_ERR_NOMEM, "out of memory");
    for (char *c = lname; *c; c++)
        if (*c >= 'A' && *c <= 'Z') *c = (char)(*c - 'A' + 'a');
    const dc_field_spec *spec = field_spec(q->p, lname);
    if ((spec && spec->decoder == DC_DEC_SKIP) || (!spec && !q->p->cfg.keep_unknown)) {
        free(lname);
        return DC_OK;
    }
    for (int i = 0; i < s->nfields; i++) {
        if (!strcmp(s->fields[i].name, lname)) {
            free(lname);
            return dc_error(DC_ERR_FORMAT, "field '%.*s' appears twice (tar member '%s' at byte %lld)", (int)flen,
                            field, m->name, (long long)m->offset);
        }
    }
    if (s->nfields == s->cap) {
        int cap = s->cap ? 2 * s->cap : 4;
        field_t *f = realloc(s->fields, (size_t)cap * sizeof *f);
        if (!f) {
            free(lname);
            return dc_error(DC_ERR_NOMEM, "out of memory");
        }
        s->fields = f;
        s->cap = cap;
    }
    uint8_t *data = dc_tar_take(tar);
    if (!data && m->size > 0) {
        free(lname);
        return dc_error(DC_ERR_NOMEM, "out of memory");
    }
    s->fields[s->nfields++] = (field_t){ lname, data, (size_t)m->size };
    s->bytes += (size_t)m->size;
    return DC_OK;
}

static int parse_pass(dc_pipe *p, dc_tar *tar, pass_t *ps)
{
    pass_parse q = { .p = p, .ps = ps, .src = &p->shards[ps->shard], .ordinal = -1 };
    char prefix[600];
    snprintf(prefix, sizeof prefix, "shard '%s': ", q.src->url);
    dc_tar_reset(tar, 0);
    int ok = 1;
    for (int64_t c = 0; c < ps->ntasks && ok; c++) {
        int64_t t = ps->first_task + c;
        task_t *slot = &p->ring[t % p->nring];
        pthread_mutex_lock(&p->mu);
        while (!p->stop && !(slot->t == t && (slot->state == TASK_DONE || slot->state == TASK_SKIPPED)))
            pthread_cond_wait(&p->cv_parse, &p->mu);
        if (p->stop) {
            pthread_mutex_unlock(&p->mu);
            ok = 0;
            break;
        }
        void *data = slot->data;
        int64_t len = slot->len;
        int fetched = slot->state == TASK_DONE;
        slot->data = NULL;
        slot->state = TASK_FREE;
        if (fetched) p->fetch_bytes -= len;
        p->parse_task = t + 1;
        pthread_cond_broadcast(&p->cv_fetch);
        pthread_mutex_unlock(&p->mu);
        if (!fetched || q.done) {
            free(data);
            continue;
        }
        dc_status st = dc_tar_feed(tar, data, (size_t)len);
        free(data);
        while (st == DC_OK && !q.done) {
            dc_tar_member m;
            int have = 0;
            st = dc_tar_next(tar, &m, &have);
            if (st || !have) break;
            dc_status mst = take_member(&q, tar, &m);
            if (mst) {
                char pre[900];
                snprintf(pre, sizeof pre, "%s%s%s%s", prefix, q.cur_key ? "sample '" : "", q.cur_key ? q.cur_key : "",
                         q.cur_key ? "': " : "");
                if (mst != DC_ERR_INTERNAL) fail(p, mst, pre);
                ok = 0;
                break;
            }
        }
        if (st) {
            fail(p, st, prefix);
            ok = 0;
        }
        if (q.done && ok) {
            pthread_mutex_lock(&p->mu);
            ps->cut = 1; /* the rest of this shard is not needed: skip its chunks */
            pthread_cond_broadcast(&p->cv_fetch);
            pthread_mutex_unlock(&p->mu);
        }
    }
    if (ok && !q.done) { /* read to the end of the shard */
        dc_status st = dc_tar_finish(tar);
        if (st) {
            fail(p, st, prefix);
            ok = 0;
        } else if (!finish_sample(&q)) {
            ok = 0;
        } else {
            int64_t n = q.ordinal + 1;
            if (q.src->nsamples >= 0 && n != q.src->nsamples) {
                dc_error(DC_ERR_FORMAT,
                         "it holds %lld samples but the index says %lld (the shard changed after the index was "
                         "written: rebuild it with `dutycycle shard index`)",
                         (long long)n, (long long)q.src->nsamples);
                fail(p, DC_ERR_FORMAT, prefix);
                ok = 0;
            } else if (n < ps->end || (ps->keep && q.keep_i < ps->nkeep)) {
                dc_error(DC_ERR_FORMAT, "it holds %lld samples; the loader wanted samples up to #%lld", (long long)n,
                         (long long)(ps->keep ? ps->keep[ps->nkeep - 1] : ps->end - 1));
                fail(p, DC_ERR_FORMAT, prefix);
                ok = 0;
            }
        }
    } else if (ok && q.cur) {
        sample_free(q.cur); /* cut: the sample past the end */
        q.cur = NULL;
    }
    sample_free(q.cur);
    free(q.cur_key);
    return ok;
}

static void *parse_main(void *arg)
{
    dc_pipe *p = arg;
    dc_tar *tar = NULL;
    dc_status st = dc_tar_init(&tar, p->cfg.max_member_bytes);
    if (st) {
        fail(p, st, "");
        return NULL;
    }
    int ok = 1;
    int64_t npre = 0;
    for (int64_t i = 0; i < p->npasses && ok; i++) {
        pass_t *ps = &p->passes[i];
        ok = parse_pass(p, tar, ps);
        if (ok && ps->keep) {
            npre += ps->nkeep;
            if (npre == p->cfg.nprefill) p->nbuf = npre; /* the buffer as the resume found it */
        }
    }
    while (ok && p->nbuf > 0) ok = emit_one(p);
    dc_tar_free(tar);
    return NULL;
}

/* ---- decoders --------------------------------------------------------------------------------- */

typedef struct {
    int kind;
    dc_dtype dtype;
    int ndim;
    int64_t shape[8];
    void *data; /* TENSOR: malloc'd contiguous; else the field's bytes (moved) */
    size_t nbytes;
    const void *src; /* TENSOR from npy: points into the field's bytes, not owned */
} decoded_t;

static int auto_decoder(const char *field)
{
    const char *ext = strrchr(field, '.');
    ext = ext ? ext + 1 : field;
    if (!strcmp(ext, "npy")) return DC_DEC_NPY;
    if (!strcmp(ext, "jpg") || !strcmp(ext, "jpeg")) return DC_DEC_JPEG;
    if (!strcmp(ext, "txt") || !strcmp(ext, "text")) return DC_DEC_TEXT;
    if (!strcmp(ext, "json")) return DC_DEC_JSON;
    static const char *const ints[] = { "cls", "cls2", "class", "count", "index", "inx", "id", "label" };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (!strcmp(ext, ints[i])) return DC_DEC_INT;
    return DC_DEC_BYTES;
}

static int valid_utf8(const uint8_t *s, size_t n, size_t *bad)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!len || i + (size_t)len > n) break;
        uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1f : len == 3 ? c & 0x0f : c & 0x07;
        int j;
        for (j = 1; j < len; j++) {
            if ((s[i + j] & 0xc0) != 0x80) break;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        if (j < len) break;
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            break;
        i += (size_t)len;
    }
    *bad = i;
    return i == n;
}

static dc_status decode_field(dc_pipe *p, const sample_t *s, field_t *f, decoded_t *d)
{
    const dc_field_spec *spec = field_spec(p, f->name);
    int dec = spec && spec->decoder != DC_DEC_AUTO ? spec->decoder : auto_decoder(f->name);
    memset(d, 0, sizeof *d);
    switch (dec) {
    case DC_DEC_NPY: {
        dc_npy_info info;
        DC_TRY(dc_npy_parse(f->data, f->len, &info));
        d->kind = DC_COL_TENSOR;
        d->dtype = info.dtype;
        d->ndim = info.ndim;
        memcpy(d->shape, info.shape, sizeof info.shape);
        d->src = f->data + info.data_offset;
        d->nbytes = info.nbytes;
        return DC_OK;
    }
    case DC_DEC_JPEG: {
        dc_image_opts o = spec ? spec->image : (dc_image_opts){ .out_dtype = DC_UINT8 };
        o.seed = dc_shard_hash(p->cfg.image_seed, (uint64_t)s->shard << 40 | (uint64_t)s->ordinal);
        int h, w;
        void *out;
        DC_TRY(dc_jpeg_decode(f->data, f->len, &o, &out, &h, &w));
        d->kind = DC_COL_TENSOR;
        d->dtype = o.out_dtype;
        d->data = out;
        d->ndim = 3;
        size_t isz = o.out_dtype == DC_UINT8 ? 1 : o.out_dtype == DC_FLOAT32 ? 4 : 2;
        if (o.out_dtype == DC_UINT8) {
            d->shape[0] = h, d->shape[1] = w, d->shape[2] = 3;
        } else {
            d->shape[0] = 3, d->shape[1] = h, d->shape[2] = w;
        }
        d->nbytes = (size_t)h * (size_t)w * 3 * isz;
        return DC_OK;
    }
    case DC_DEC_INT: {
        char buf[64];
        size_t n = f->len;
        while (n &&
               (f->data[n - 1] == '\n' || f->data[n - 1] == ' ' || f->data[n - 1] == '\r' || f->data[n - 1] == '\t'))
            n--;
        size_t b = 0;
        while (b < n && (f->data[b] == ' ' || f->data[b] == '\t')) b++;
        if (n - b == 0 || n - b >= sizeof buf) return dc_error(DC_ERR_FORMAT, "is not an integer (%zu bytes)", f->len);
        memcpy(buf, f->data + b, n - b);
        buf[n - b] = 0;
        char *end;
        errno = 0;
        long long v = strtoll(buf, &end, 10);
        if (*end || errno) return dc_error(DC_ERR_FORMAT, "is not an integer: '%.40s'", buf);
        int64_t *out = malloc(sizeof *out);
        if (!out) return dc_error(DC_ERR_NOMEM, "out of memory");
        *out = v;
        d->kind = DC_COL_TENSOR;
        d->dtype = DC_INT64;
        d->ndim = 0;
        d->data = out;
        d->nbytes = sizeof *out;
        return DC_OK;
    }
    case DC_DEC_TEXT:
    case DC_DEC_JSON: {
        size_t bad;
        if (!valid_utf8(f->data, f->len, &bad))
            return dc_error(DC_ERR_FORMAT, "is not valid UTF-8 (byte %zu of %zu)", bad, f->len);
        d->kind = dec == DC_DEC_TEXT ? DC_COL_TEXT : DC_COL_JSON;
        break;
    }
    default: d->kind = DC_COL_BYTES; break;
    }
    d->data = f->data; /* moved */
    d->nbytes = f->len;
    f->data = NULL;
    return DC_OK;
}

static const char *kind_name(int k)
{
    return k == DC_COL_TENSOR ? "an array" : k == DC_COL_TEXT ? "text" : k == DC_COL_JSON ? "JSON" : "bytes";
}

static void shape_str(char *out, size_t cap, int ndim, const int64_t *shape)
{
    size_t n = (size_t)snprintf(out, cap, "(");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(out + n, cap - n, "%lld%s", (long long)shape[i], i + 1 < ndim || ndim == 1 ? "," : "");
    if (n < cap) snprintf(out + n, cap - n, ")");
}

/* Find or make batch b's column for this field, checking that it agrees. mu held. Returns the index or -1. */
static int batch_column(dc_pipe *p, batch_t *b, const char *name, const decoded_t *d, dc_status *st)
{
    for (int i = 0; i < b->ncols; i++) {
        dc_pipe_column *c = &b->cols[i];
        if (strcmp(c->name, name)) continue;
        if (c->kind != d->kind) {
            *st = dc_error(DC_ERR_FORMAT, "field '%s' is %s here but %s in other samples of its batch", name,
                           kind_name(d->kind), kind_name(c->kind));
            return -1;
        }
        if (c->kind == DC_COL_TENSOR &&
            (c->dtype != d->dtype || c->ndim != d->ndim + 1 || memcmp(c->shape + 1, d->shape, (size_t)d->ndim * 8))) {
            char a[128], e[128];
            shape_str(a, sizeof a, d->ndim, d->shape);
            shape_str(e, sizeof e, c->ndim - 1, c->shape + 1);
            *st = dc_error(DC_ERR_SHAPE,
                           "field '%s' has shape %s (%s) but other samples of its batch have %s (%s): batching stacks "
                           "equal shapes (resize/crop images, or batch_size=None)",
                           name, a, dc_dtype_name(d->dtype), e, dc_dtype_name(c->dtype));
            return -1;
        }
        return i;
    }
    if (b->ncols == b->capcols) {
        int cap = b->capcols ? 2 * b->capcols : 4;
        dc_pipe_column *nc = realloc(b->cols, (size_t)cap * sizeof *nc);
        if (!nc) return *st = dc_error(DC_ERR_NOMEM, "out of memory"), -1;
        b->cols = nc;
        uint8_t **nf = realloc(b->filled, (size_t)cap * sizeof *nf);
        if (!nf) return *st = dc_error(DC_ERR_NOMEM, "out of memory"), -1;
        b->filled = nf;
        b->capcols = cap;
    }
    dc_pipe_column *c = &b->cols[b->ncols];
    memset(c, 0, sizeof *c);
    b->filled[b->ncols] = calloc((size_t)b->n, 1);
    c->name = strdup(name);
    c->kind = d->kind;
    if (!b->filled[b->ncols] || !c->name) goto nomem;
    if (d->kind == DC_COL_TENSOR) {
        c->dtype = d->dtype;
        c->ndim = d->ndim + 1;
        c->shape[0] = b->n;
        memcpy(c->shape + 1, d->shape, (size_t)d->ndim * 8);
        c->nbytes = d->nbytes * (size_t)b->n;
        c->data = pool_get(p->pool, c->nbytes);
        if (!c->data) goto nomem;
    } else {
        c->items = calloc((size_t)b->n, sizeof *c->items);
        c->lens = calloc((size_t)b->n, sizeof *c->lens);
        if (!c->items || !c->lens) goto nomem;
    }
    return b->ncols++;
nomem:
    free(b->filled[b->ncols]);
    free(c->name);
    free(c->items);
    free(c->lens);
    *st = dc_error(DC_ERR_NOMEM, "out of memory for a batch column");
    return -1;
}

static void batch_reset(batch_t *b)
{
    for (int i = 0; i < b->ncols; i++) {
        dc_pipe_column *c = &b->cols[i];
        free(c->name);
        dc_pipe_buffer_release(c->data);
        if (c->items)
            for (int64_t r = 0; r < b->n; r++) free(c->items[r]);
        free(c->items);
        free(c->lens);
        free(b->filled[i]);
    }
    free(b->cols);
    free(b->filled);
    if (b->keys)
        for (int64_t r = 0; r < b->n; r++) free(b->keys[r]);
    free(b->keys);
    free(b->shards);
    free(b->ordinals);
    memset(b, 0, sizeof *b);
}

/* The batch holding emission seq, set up on first use. mu held. */
static batch_t *batch_for(dc_pipe *p, int64_t seq)
{
    int64_t bi = seq / p->cfg.batch_size;
    batch_t *b = &p->batches[bi % p->nbring];
    if (!b->n) {
        b->n = bi == p->nbatches - 1 ? p->total_samples - bi * p->cfg.batch_size : p->cfg.batch_size;
        b->keys = calloc((size_t)b->n, sizeof *b->keys);
        b->shards = calloc((size_t)b->n, sizeof *b->shards);
        b->ordinals = calloc((size_t)b->n, sizeof *b->ordinals);
        if (!b->keys || !b->shards || !b->ordinals) return NULL;
    }
    return b;
}

static int decode_sample(dc_pipe *p, int64_t seq, sample_t *s)
{
    int64_t row = seq % p->cfg.batch_size;
    char prefix[900];
    snprintf(prefix, sizeof prefix, "shard '%s', sample '%s'", p->shards[s->shard].url, s->key);
    size_t plen = strlen(prefix);
    for (int i = 0; i < s->nfields; i++) {
        field_t *f = &s->fields[i];
        decoded_t d;
        dc_status st = decode_field(p, s, f, &d);
        if (st) {
            snprintf(prefix + plen, sizeof prefix - plen, ", field '%s': ", f->name);
            fail(p, st, prefix);
            return 0;
        }
        pthread_mutex_lock(&p->mu);
        batch_t *b = batch_for(p, seq);
        dc_status cst = DC_OK;
        int col = b ? batch_column(p, b, f->name, &d, &cst) : -1;
        if (col < 0) {
            if (!b) cst = dc_error(DC_ERR_NOMEM, "out of memory");
            snprintf(prefix + plen, sizeof prefix - plen, ": ");
            fail_locked(p, cst, prefix);
            pthread_mutex_unlock(&p->mu);
            free(d.data);
            return 0;
        }
        dc_pipe_column *c = &b->cols[col];
        b->filled[col][row] = 1;
        if (c->kind == DC_COL_TENSOR) {
            char *dst = (char *)c->data + (size_t)row * d.nbytes;
            pthread_mutex_unlock(&p->mu);
            memcpy(dst, d.src ? d.src : d.data, d.nbytes); /* the one copy: decoded sample -> batch row */
            free(d.data);
        } else {
            c->items[row] = d.data;
            c->lens[row] = d.nbytes;
            pthread_mutex_unlock(&p->mu);
        }
    }
    pthread_mutex_lock(&p->mu);
    batch_t *b = batch_for(p, seq);
    if (!b) {
        dc_error(DC_ERR_NOMEM, "out of memory");
        fail_locked(p, DC_ERR_NOMEM, "");
        pthread_mutex_unlock(&p->mu);
        return 0;
    }
    b->keys[row] = s->key;
    s->key = NULL;
    b->shards[row] = s->shard;
    b->ordinals[row] = s->ordinal;
    if (++b->done_rows == b->n) {
        /* every sample of a batch must have the same fields */
        for (int i = 0; i < b->ncols; i++) {
            for (int64_t r = 0; r < b->n; r++) {
                if (b->filled[i][r]) continue;
                dc_error(DC_ERR_FORMAT, "shard '%s', sample '%s' has no field '%s' (other samples of its batch do)",
                         p->shards[b->shards[r]].url, b->keys[r], b->cols[i].name);
                fail_locked(p, DC_ERR_FORMAT, "");
                pthread_mutex_unlock(&p->mu);
                return 0;
            }
        }
        b->ready = 1;
        p->stats.batches++;
        pthread_cond_broadcast(&p->cv_batch);
    }
    pthread_mutex_unlock(&p->mu);
    return 1;
}

static void *decode_main(void *arg)
{
    dc_pipe *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->decode_claim >= p->emitted_count && p->decode_claim < p->total_samples)
            pthread_cond_wait(&p->cv_decode, &p->mu);
        if (p->stop || p->decode_claim >= p->total_samples) break;
        int64_t seq = p->decode_claim++;
        sample_t *s = p->emitted[seq % p->nemit];
        p->emitted[seq % p->nemit] = NULL;
        pthread_mutex_unlock(&p->mu);
        int ok = decode_sample(p, seq, s);
        sample_free(s);
        pthread_mutex_lock(&p->mu);
        if (!ok) break;
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* ---- set-up, consumer, teardown --------------------------------------------------------------- */

static int cmp_pair(const void *a, const void *b)
{
    const int64_t *x = a, *y = b; /* (shard, ordinal, slot) */
    if (x[0] != y[0]) return x[0] < y[0] ? -1 : 1;
    if (x[1] != y[1]) return x[1] < y[1] ? -1 : 1;
    return 0;
}

static dc_status build_passes(dc_pipe *p)
{
    const dc_pipe_config *c = &p->cfg;
    int64_t n = c->nruns, cap = c->nruns + c->nprefill;
    p->passes = calloc((size_t)(cap ? cap : 1), sizeof *p->passes);
    if (!p->passes) return dc_error(DC_ERR_NOMEM, "out of memory");
    int64_t np = 0;
    if (c->nprefill) {
        int64_t *tr = malloc((size_t)c->nprefill * 3 * sizeof *tr);
        if (!tr) return dc_error(DC_ERR_NOMEM, "out of memory");
        for (int64_t i = 0; i < c->nprefill; i++) {
            tr[3 * i] = c->prefill[i].shard;
            tr[3 * i + 1] = c->prefill[i].start;
            tr[3 * i + 2] = i;
        }
        qsort(tr, (size_t)c->nprefill, 3 * sizeof *tr, cmp_pair);
        for (int64_t i = 0; i < c->nprefill;) {
            int64_t j = i;
            while (j < c->nprefill && tr[3 * j] == tr[3 * i]) j++;
            pass_t *ps = &p->passes[np++];
            ps->shard = (int32_t)tr[3 * i];
            ps->start = tr[3 * i + 1];
            ps->end = tr[3 * (j - 1) + 1] + 1;
            ps->nkeep = j - i;
            ps->keep = malloc((size_t)ps->nkeep * sizeof *ps->keep);
            ps->keep_slot = malloc((size_t)ps->nkeep * sizeof *ps->keep_slot);
            if (!ps->keep || !ps->keep_slot) {
                free(tr);
                return dc_error(DC_ERR_NOMEM, "out of memory");
            }
            for (int64_t k = i; k < j; k++) {
                if (k > i && tr[3 * k + 1] == tr[3 * (k - 1) + 1]) {
                    free(tr);
                    return dc_error(DC_ERR_VALUE, "prefill names sample %lld of shard '%s' twice",
                                    (long long)tr[3 * k + 1], p->shards[ps->shard].url);
                }
                ps->keep[k - i] = tr[3 * k + 1];
                ps->keep_slot[k - i] = tr[3 * k + 2];
            }
            i = j;
        }
        free(tr);
    }
    for (int64_t i = 0; i < n; i++) {
        const dc_shard_run *r = &c->runs[i];
        if (r->end <= r->start) continue;
        p->passes[np++] = (pass_t){ .shard = r->shard, .start = r->start, .end = r->end };
    }
    p->npasses = np;
    int64_t t = 0;
    for (int64_t i = 0; i < np; i++) {
        pass_t *ps = &p->passes[i];
        int64_t size = p->shards[ps->shard].size;
        ps->first_task = t;
        ps->ntasks = (size + c->chunk_bytes - 1) / c->chunk_bytes;
        t += ps->ntasks;
    }
    p->ntasks = t;
    return DC_OK;
}

static void pipe_release(dc_pipe *p)
{
    for (int i = 0; i < p->cfg.nshards && p->shards; i++) {
        free((char *)p->shards[i].url);
        free((char *)p->shards[i].path);
        free((char *)p->shards[i].bucket);
        free((char *)p->shards[i].key);
    }
    free(p->shards);
    for (int i = 0; i < p->cfg.nfields && p->fields; i++) free((char *)p->fields[i].field);
    free(p->fields);
    for (int64_t i = 0; i < p->npasses; i++) {
        free(p->passes[i].keep);
        free(p->passes[i].keep_slot);
    }
    free(p->passes);
    for (int64_t i = 0; p->ring && i < p->nring; i++) free(p->ring[i].data);
    free(p->ring);
    for (int64_t i = 0; p->buf && i < p->cfg.shuffle_capacity; i++) sample_free(p->buf[i]);
    free(p->buf);
    for (int64_t i = 0; p->emitted && i < p->nemit; i++) sample_free(p->emitted[i]);
    free(p->emitted);
    for (int64_t i = 0; p->batches && i < p->nbring; i++) batch_reset(&p->batches[i]);
    free(p->batches);
    if (p->pool) {
        pthread_mutex_lock(&p->pool->mu);
        pool_unref_locked_and_unlock(p->pool);
    }
    free(p->threads);
}

static char *dup_or_null(const char *s, int *bad)
{
    if (!s) return NULL;
    char *d = strdup(s);
    if (!d) *bad = 1;
    return d;
}

dc_status dc_pipe_init(dc_pipe **out, const dc_pipe_config *cfg)
{
    *out = NULL;
    if (cfg->batch_size < 1 || cfg->shuffle_capacity < 1 || cfg->prefetch_batches < 1 || cfg->chunk_bytes < 1 ||
        cfg->prefetch_bytes < 1 || cfg->fetch_threads < 1 || cfg->decode_threads < 1 || cfg->nshards < 0 ||
        cfg->nprefill > cfg->shuffle_capacity)
        return dc_error(DC_ERR_VALUE,
                        "loader config out of range: batch_size %lld, shuffle buffer %lld (prefill %lld), prefetch "
                        "%lld batches / %lld bytes, chunk %lld bytes, %d fetch and %d decode threads",
                        (long long)cfg->batch_size, (long long)cfg->shuffle_capacity, (long long)cfg->nprefill,
                        (long long)cfg->prefetch_batches, (long long)cfg->prefetch_bytes, (long long)cfg->chunk_bytes,
                        cfg->fetch_threads, cfg->decode_threads);
    for (int64_t i = 0; i < cfg->nruns + cfg->nprefill; i++) {
        const dc_shard_run *r = i < cfg->nruns ? &cfg->runs[i] : &cfg->prefill[i - cfg->nruns];
        if (r->shard < 0 || r->shard >= cfg->nshards || r->start < 0 || r->end < r->start ||
            (i >= cfg->nruns && r->end != r->start + 1))
            return dc_error(DC_ERR_VALUE, "stream entry %lld (shard %d, samples [%lld, %lld)) is out of range",
                            (long long)i, (int)r->shard, (long long)r->start, (long long)r->end);
        if (cfg->shards[r->shard].nsamples >= 0 && r->end > cfg->shards[r->shard].nsamples)
            return dc_error(DC_ERR_VALUE, "stream entry %lld wants samples up to %lld of shard '%s', which has %lld",
                            (long long)i, (long long)r->end, cfg->shards[r->shard].url,
                            (long long)cfg->shards[r->shard].nsamples);
    }
    dc_pipe *p = calloc(1, sizeof *p);
    if (!p) return dc_error(DC_ERR_NOMEM, "out of memory");
    p->cfg = *cfg;
    p->cfg.runs = NULL;
    p->cfg.prefill = NULL;
    if (p->cfg.max_member_bytes <= 0) p->cfg.max_member_bytes = (int64_t)1 << 30;
    int bad = 0;
    p->shards = calloc((size_t)(cfg->nshards ? cfg->nshards : 1), sizeof *p->shards);
    p->fields = calloc((size_t)(cfg->nfields ? cfg->nfields : 1), sizeof *p->fields);
    if (!p->shards || !p->fields) bad = 1;
    for (int i = 0; !bad && i < cfg->nshards; i++) {
        const dc_shard_src *s = &cfg->shards[i];
        if (s->size < 0) {
            p->cfg.nshards = i;
            pipe_release(p);
            free(p);
            return dc_error(DC_ERR_VALUE, "shard '%s' has no size", s->url ? s->url : "?");
        }
        p->shards[i] = (dc_shard_src){ dup_or_null(s->url ? s->url : "?", &bad),
                                       dup_or_null(s->path, &bad),
                                       dup_or_null(s->bucket, &bad),
                                       dup_or_null(s->key, &bad),
                                       s->size,
                                       s->nsamples };
    }
    for (int i = 0; !bad && i < cfg->nfields; i++) {
        p->fields[i] = cfg->fields[i];
        p->fields[i].field = dup_or_null(cfg->fields[i].field, &bad);
    }
    p->cfg.shards = p->shards;
    p->cfg.fields = p->fields;
    if (bad) {
        pipe_release(p);
        free(p);
        return dc_error(DC_ERR_NOMEM, "out of memory");
    }
    p->cfg.runs = cfg->runs; /* read by build_passes only, during this call */
    p->cfg.prefill = cfg->prefill;
    dc_status st = build_passes(p);
    p->cfg.runs = NULL;
    p->cfg.prefill = NULL;
    if (st) {
        pipe_release(p);
        free(p);
        return st;
    }
    int64_t total = cfg->nprefill;
    for (int64_t i = 0; i < cfg->nruns; i++) total += cfg->runs[i].end - cfg->runs[i].start;
    p->nbatches = cfg->drop_last ? total / cfg->batch_size : (total + cfg->batch_size - 1) / cfg->batch_size;
    p->total_samples = cfg->drop_last ? p->nbatches * cfg->batch_size : total;
    p->stats.total_samples = p->total_samples;
    p->nring = cfg->prefetch_bytes / cfg->chunk_bytes + cfg->fetch_threads + 2;
    p->ring = calloc((size_t)p->nring, sizeof *p->ring);
    for (int64_t i = 0; p->ring && i < p->nring; i++) p->ring[i].t = -1;
    p->buf = calloc((size_t)cfg->shuffle_capacity, sizeof *p->buf);
    p->nemit = (cfg->prefetch_batches + 1) * cfg->batch_size;
    p->emitted = calloc((size_t)p->nemit, sizeof *p->emitted);
    p->nbring = cfg->prefetch_batches + 1;
    p->batches = calloc((size_t)p->nbring, sizeof *p->batches);
    p->pool = pool_new((int)(2 * p->nbring * (cfg->nfields > 4 ? cfg->nfields : 4)));
    p->emission = cfg->first_emission;
    p->nthreads = cfg->fetch_threads + cfg->decode_threads + 1;
    p->threads = calloc((size_t)p->nthreads, sizeof *p->threads);
    if (!p->ring || !p->buf || !p->emitted || !p->batches || !p->pool || !p->threads) {
        pipe_release(p);
        free(p);
        return dc_error(DC_ERR_NOMEM, "out of memory for the loader's queues");
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_fetch, NULL);
    pthread_cond_init(&p->cv_parse, NULL);
    pthread_cond_init(&p->cv_decode, NULL);
    pthread_cond_init(&p->cv_batch, NULL);
    int started = 0;
    for (int i = 0; i < p->nthreads; i++) {
        void *(*fn)(void *) = i == 0 ? parse_main : i <= cfg->fetch_threads ? fetch_main : decode_main;
        if (pthread_create(&p->threads[i], NULL, fn, p)) break;
        started++;
    }
    if (started < p->nthreads) {
        pthread_mutex_lock(&p->mu);
        p->stop = 1;
        pthread_cond_broadcast(&p->cv_fetch);
        pthread_cond_broadcast(&p->cv_parse);
        pthread_cond_broadcast(&p->cv_decode);
        pthread_mutex_unlock(&p->mu);
        for (int i = 0; i < started; i++) pthread_join(p->threads[i], NULL);
        p->nthreads = 0;
        dc_pipe_free(p);
        return dc_error(DC_ERR_NOMEM, "cannot start the loader's threads");
    }
    *out = p;
    return DC_OK;
}

dc_status dc_pipe_next(dc_pipe *p, dc_pipe_batch *out, int *have)
{
    memset(out, 0, sizeof *out);
    *have = 0;
    pthread_mutex_lock(&p->mu);
    if (!p->err && p->consumed >= p->nbatches) {
        pthread_mutex_unlock(&p->mu);
        return DC_OK;
    }
    batch_t *b = &p->batches[p->consumed % p->nbring];
    while (!p->err && !b->ready) pthread_cond_wait(&p->cv_batch, &p->mu);
    if (p->err) {
        dc_status st = p->err;
        char msg[sizeof p->errmsg];
        memcpy(msg, p->errmsg, sizeof msg);
        pthread_mutex_unlock(&p->mu);
        return dc_error(st, "%s", msg);
    }
    out->index = p->consumed;
    out->n = b->n;
    out->keys = b->keys;
    out->shards = b->shards;
    out->ordinals = b->ordinals;
    out->ncols = b->ncols;
    out->cols = b->cols;
    for (int i = 0; i < b->ncols; i++) free(b->filled[i]);
    free(b->filled);
    memset(b, 0, sizeof *b);
    p->consumed++;
    pthread_cond_broadcast(&p->cv_parse); /* room to emit */
    pthread_mutex_unlock(&p->mu);
    *have = 1;
    return DC_OK;
}

void dc_pipe_batch_clear(dc_pipe_batch *b)
{
    batch_t tmp = {
        .n = b->n, .ncols = b->ncols, .cols = b->cols, .keys = b->keys, .shards = b->shards, .ordinals = b->ordinals
    };
    tmp.filled = calloc((size_t)(b->ncols ? b->ncols : 1), sizeof *tmp.filled); /* batch_reset frees these */
    batch_reset(&tmp);
    memset(b, 0, sizeof *b);
}

void dc_pipe_get_stats(dc_pipe *p, dc_pipe_stats *out)
{
    pthread_mutex_lock(&p->mu);
    *out = p->stats;
    pthread_mutex_unlock(&p->mu);
}

int64_t dc_pipe_num_batches(const dc_pipe *p)
{
    return p->nbatches;
}

void dc_pipe_free(dc_pipe *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv_fetch);
    pthread_cond_broadcast(&p->cv_parse);
    pthread_cond_broadcast(&p->cv_decode);
    pthread_cond_broadcast(&p->cv_batch);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthreads; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_fetch);
    pthread_cond_destroy(&p->cv_parse);
    pthread_cond_destroy(&p->cv_decode);
    pthread_cond_destroy(&p->cv_batch);
    pipe_release(p);
    free(p);
}

/* ---- counting ----------------------------------------------------------------------------------- */

dc_status dc_shard_count(const dc_shard_src *src, struct dc_s3 *s3, int64_t chunk_bytes, int64_t *nsamples)
{
    if (chunk_bytes <= 0) chunk_bytes = 8 << 20;
    dc_pipe fake = { .cfg = { .s3 = s3 } };
    dc_tar *tar;
    DC_TRY(dc_tar_init(&tar, 0));
    void *buf = malloc((size_t)chunk_bytes);
    char *key = NULL;
    int64_t n = 0;
    dc_status st = buf ? DC_OK : dc_error(DC_ERR_NOMEM, "out of memory");
    for (int64_t off = 0; !st && off < src->size; off += chunk_bytes) {
        int64_t len = src->size - off < chunk_bytes ? src->size - off : chunk_bytes;
        st = read_chunk(&fake, src, off, len, buf);
        if (!st) st = dc_tar_feed(tar, buf, (size_t)len);
        while (!st) {
            dc_tar_member m;
            int have;
            st = dc_tar_next(tar, &m, &have);
            if (st || !have) break;
            size_t klen;
            const char *field;
            if (!dc_wds_split(m.name, m.name_len, &klen, &field)) continue;
            if (!key || strlen(key) != klen || memcmp(key, m.name, klen)) {
                free(key);
                key = strndup(m.name, klen);
                if (!key) st = dc_error(DC_ERR_NOMEM, "out of memory");
                n++;
            }
        }
    }
    if (!st) st = dc_tar_finish(tar);
    if (st && st != DC_ERR_IO) {
        char msg[900];
        snprintf(msg, sizeof msg, "%s", dc_last_error());
        st = dc_error(st, "shard '%s': %s", src->url, msg);
    }
    free(key);
    free(buf);
    dc_tar_free(tar);
    *nsamples = n;
    return st;
}
