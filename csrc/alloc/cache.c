/* cache.c: the caching allocator of alloc.h.
 *
 * Each segment (one raw allocation) is a doubly linked list of blocks in address order; a block is
 * handed out (ALLOC), waiting for other streams' events before reuse (PENDING) or free (FREE).
 * Free blocks of each pool (small <= 1 MiB, large) sit in one array sorted by (stream, size,
 * address): best fit is a binary search, and neighbours merge on release so a segment whose blocks
 * are all free is one block again, which is what empty() returns to the raw allocator. Handed-out
 * blocks are found by address in a chained hash table. */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"

#define ROUND       ((size_t)512)
#define SMALL_MAX   ((size_t)1 << 20)  /* requests up to 1 MiB come from small segments */
#define SMALL_SEG   ((size_t)2 << 20)  /* 2 MiB */
#define MID_MAX     ((size_t)10 << 20) /* requests below 10 MiB share 20 MiB segments */
#define MID_SEG     ((size_t)20 << 20)
#define LARGE_ROUND ((size_t)2 << 20) /* larger requests: their own segment, rounded to 2 MiB */

enum { B_ALLOC, B_PENDING, B_FREE };

typedef struct block {
    char *ptr;
    size_t size;      /* bytes of this block (rounded) */
    size_t requested; /* what the caller asked for (ALLOC only) */
    void *stream;     /* the stream it belongs to */
    int state, small;
    struct block *prev, *next; /* address-order neighbours in the segment */
    struct block *hnext;       /* hash chain (ALLOC) or pending list (PENDING) */
    void **streams;            /* other streams that used it (record_stream) */
    int nstreams, cstreams;
    void **events; /* PENDING: one per stream in `streams` */
    int nevents;
} block;

typedef struct {
    block **v;
    size_t n, cap;
} block_set;

typedef struct {
    char *ptr;
    size_t size;
} segment;

struct dc_cache {
    dc_cache_config cfg;
    char name[64];
    pthread_mutex_t lock;
    block_set pools[2]; /* [0] large, [1] small */
    block **buckets;    /* handed-out blocks by address */
    size_t nbuckets, nlive;
    block *pending;
    segment *segs;
    size_t nsegs, csegs;
    dc_cache_stats st;
};

size_t dc_cache_round(size_t n)
{
    if (n == 0) return 0;
    return (n + ROUND - 1) / ROUND * ROUND;
}

size_t dc_cache_segment_size(size_t rounded)
{
    if (rounded <= SMALL_MAX) return SMALL_SEG;
    if (rounded < MID_MAX) return MID_SEG;
    return (rounded + LARGE_ROUND - 1) / LARGE_ROUND * LARGE_ROUND;
}

/* --- the free sets -------------------------------------------------------------------------------- */

static int block_before(const block *a, uintptr_t stream, size_t size, uintptr_t ptr)
{
    if ((uintptr_t)a->stream != stream) return (uintptr_t)a->stream < stream;
    if (a->size != size) return a->size < size;
    return (uintptr_t)a->ptr < ptr;
}

/* First index whose block is not before (stream, size, ptr). */
static size_t set_lower_bound(const block_set *s, void *stream, size_t size, const void *ptr)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (block_before(s->v[mid], (uintptr_t)stream, size, (uintptr_t)ptr))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static dc_status set_insert(block_set *s, block *b)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        block **v = realloc(s->v, cap * sizeof *v);
        if (!v) return dc_error(DC_ERR_NOMEM, "caching allocator: out of host memory for its free list");
        s->v = v;
        s->cap = cap;
    }
    size_t i = set_lower_bound(s, b->stream, b->size, b->ptr);
    memmove(s->v + i + 1, s->v + i, (s->n - i) * sizeof *s->v);
    s->v[i] = b;
    s->n++;
    return DC_OK;
}

static void set_erase(block_set *s, const block *b)
{
    size_t i = set_lower_bound(s, b->stream, b->size, b->ptr);
    if (i < s->n && s->v[i] == b) {
        memmove(s->v + i, s->v + i + 1, (s->n - i - 1) * sizeof *s->v);
        s->n--;
    }
}

/* --- handed-out blocks by address ------------------------------------------------------------------ */

static size_t hash_ptr(const void *p, size_t nb)
{
    uint64_t x = (uint64_t)(uintptr_t)p >> 9; /* blocks are 512-aligned */
    x *= 0x9E3779B97F4A7C15ull;
    return (size_t)(x >> 20) & (nb - 1);
}

static dc_status hash_grow(dc_cache *c)
{
    size_t nb = c->nbuckets ? c->nbuckets * 2 : 1024;
    block **nbk = calloc(nb, sizeof *nbk);
    if (!nbk) return dc_error(DC_ERR_NOMEM, "caching allocator: out of host memory for its block table");
    for (size_t i = 0; i < c->nbuckets; i++) {
        block *b = c->buckets[i];
        while (b) {
            block *nx = b->hnext;
            size_t h = hash_ptr(b->ptr, nb);
            b->hnext = nbk[h];
            nbk[h] = b;
            b = nx;
        }
    }
    free(c->buckets);
    c->buckets = nbk;
    c->nbuckets = nb;
    return DC_OK;
}

static dc_status hash_insert(dc_cache *c, block *b)
{
    if (c->nlive + 1 > c->nbuckets) DC_TRY(hash_grow(c));
    size_t h = hash_ptr(b->ptr, c->nbuckets);
    b->hnext = c->buckets[h];
    c->buckets[h] = b;
    c->nlive++;
    return DC_OK;
}

static block *hash_find(dc_cache *c, const void *p, int remove)
{
    if (!c->nbuckets) return NULL;
    block **pp = &c->buckets[hash_ptr(p, c->nbuckets)];
    for (; *pp; pp = &(*pp)->hnext) {
        block *b = *pp;
        if (b->ptr == p) {
            if (remove) {
                *pp = b->hnext;
                b->hnext = NULL;
                c->nlive--;
            }
            return b;
        }
    }
    return NULL;
}

/* --- segments --------------------------------------------------------------------------------------- */

static dc_status seg_add(dc_cache *c, char *ptr, size_t size)
{
    if (c->nsegs == c->csegs) {
        size_t cap = c->csegs ? c->csegs * 2 : 32;
        segment *v = realloc(c->segs, cap * sizeof *v);
        if (!v) return dc_error(DC_ERR_NOMEM, "caching allocator: out of host memory for its segment list");
        c->segs = v;
        c->csegs = cap;
    }
    c->segs[c->nsegs++] = (segment){ ptr, size };
    return DC_OK;
}

static void seg_remove(dc_cache *c, const char *ptr)
{
    for (size_t i = 0; i < c->nsegs; i++)
        if (c->segs[i].ptr == ptr) {
            c->segs[i] = c->segs[--c->nsegs];
            return;
        }
}

/* --- block life ------------------------------------------------------------------------------------ */

static void block_destroy(block *b)
{
    free(b->streams);
    free(b->events);
    free(b);
}

/* A released block (no pending events) becomes FREE, merged with FREE neighbours. */
static dc_status block_make_free(dc_cache *c, block *b)
{
    block_set *s = &c->pools[b->small];
    b->state = B_FREE;
    b->nstreams = 0;
    block *p = b->prev, *n = b->next;
    if (p && p->state == B_FREE) {
        set_erase(s, p);
        b->ptr = p->ptr;
        b->size += p->size;
        b->prev = p->prev;
        if (b->prev) b->prev->next = b;
        block_destroy(p);
        c->st.num_merges++;
    }
    if (n && n->state == B_FREE) {
        set_erase(s, n);
        b->size += n->size;
        b->next = n->next;
        if (b->next) b->next->prev = b;
        block_destroy(n);
        c->st.num_merges++;
    }
    return set_insert(s, b);
}

/* PENDING blocks whose events have all completed become FREE. Never waits. */
static void poll_pending(dc_cache *c)
{
    block **pp = &c->pending;
    while (*pp) {
        block *b = *pp;
        int done = 1;
        for (int i = 0; i < b->nevents; i++)
            if (b->events[i] && c->cfg.event_query(c->cfg.ctx, b->events[i]) == 0) done = 0;
        if (!done) {
            pp = &b->hnext;
            continue;
        }
        for (int i = 0; i < b->nevents; i++)
            if (b->events[i] && c->cfg.event_destroy) c->cfg.event_destroy(c->cfg.ctx, b->events[i]);
        b->nevents = 0;
        *pp = b->hnext;
        b->hnext = NULL;
        c->st.pending_blocks--;
        if (block_make_free(c, b)) {
            /* no host memory for the free list: keep the block out of circulation (it still
             * belongs to its segment, which dc_cache_free returns) */
            b->state = B_PENDING;
        }
    }
}

/* Split `b` (FREE, out of its set) for a request of `size`: the rest goes back to the set when
 * it is worth keeping (small pool: any 512 bytes; large pool: more than 1 MiB, so large segments
 * are not shredded into slivers). */
static dc_status block_take(dc_cache *c, block *b, size_t size)
{
    size_t rest = b->size - size;
    int split = b->small ? rest >= ROUND : rest > SMALL_MAX;
    if (split) {
        block *r = calloc(1, sizeof *r);
        if (!r) return dc_error(DC_ERR_NOMEM, "caching allocator: out of host memory for a block");
        r->ptr = b->ptr + size;
        r->size = rest;
        r->stream = b->stream;
        r->small = b->small;
        r->state = B_FREE;
        r->prev = b;
        r->next = b->next;
        if (b->next) b->next->prev = r;
        b->next = r;
        b->size = size;
        dc_status st = set_insert(&c->pools[b->small], r);
        if (st) {
            b->next = r->next;
            if (r->next) r->next->prev = b;
            b->size += rest;
            free(r);
            return st;
        }
        c->st.num_splits++;
    }
    b->state = B_ALLOC;
    return DC_OK;
}

/* Return wholly free segments to the raw allocator. */
static void release_free_segments(dc_cache *c)
{
    for (int pool = 0; pool < 2; pool++) {
        block_set *s = &c->pools[pool];
        size_t w = 0;
        for (size_t i = 0; i < s->n; i++) {
            block *b = s->v[i];
            if (!b->prev && !b->next) {
                c->cfg.raw_free(c->cfg.ctx, b->ptr);
                seg_remove(c, b->ptr);
                c->st.reserved -= (int64_t)b->size;
                c->st.segments--;
                c->st.num_raw_frees++;
                block_destroy(b);
            } else {
                s->v[w++] = b;
            }
        }
        s->n = w;
    }
}

static void count_free_blocks(dc_cache *c)
{
    c->st.free_blocks = (int64_t)(c->pools[0].n + c->pools[1].n);
}

static void fmt_bytes(char *buf, size_t n, int64_t b)
{
    if (b >= (int64_t)1 << 30)
        snprintf(buf, n, "%.2f GiB", (double)b / (double)(1 << 30));
    else if (b >= (int64_t)1 << 20)
        snprintf(buf, n, "%.2f MiB", (double)b / (double)(1 << 20));
    else
        snprintf(buf, n, "%.2f KiB", (double)b / 1024.0);
}

static dc_status oom(dc_cache *c, size_t nbytes, size_t seg, const char *why)
{
    char req[32], res[32], al[32];
    c->st.num_ooms++;
    fmt_bytes(req, sizeof req, (int64_t)nbytes);
    fmt_bytes(res, sizeof res, c->st.reserved);
    fmt_bytes(al, sizeof al, c->st.allocated);
    (void)seg;
    return dc_error(DC_ERR_NOMEM,
                    "out of memory on %s: tried to allocate %s (%zu bytes); %s; this process holds %s reserved, %s "
                    "allocated to tensors",
                    c->name, req, nbytes, why, res, al);
}

/* --- public ----------------------------------------------------------------------------------------- */

dc_status dc_cache_init(dc_cache **out, const dc_cache_config *cfg)
{
    *out = NULL;
    if (!cfg || !cfg->raw_alloc || !cfg->raw_free)
        return dc_error(DC_ERR_INTERNAL, "dc_cache_init: raw_alloc and raw_free are required");
    dc_cache *c = calloc(1, sizeof *c);
    if (!c) return dc_error(DC_ERR_NOMEM, "caching allocator: out of host memory");
    c->cfg = *cfg;
    snprintf(c->name, sizeof c->name, "%s", cfg->name ? cfg->name : "device");
    c->cfg.name = c->name;
    pthread_mutex_init(&c->lock, NULL);
    *out = c;
    return DC_OK;
}

void dc_cache_free(dc_cache *c)
{
    if (!c) return;
    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; i < c->nsegs; i++) c->cfg.raw_free(c->cfg.ctx, c->segs[i].ptr);
    /* every block struct: free sets, handed out, pending */
    for (int pool = 0; pool < 2; pool++) {
        for (size_t i = 0; i < c->pools[pool].n; i++) block_destroy(c->pools[pool].v[i]);
        free(c->pools[pool].v);
    }
    for (size_t i = 0; i < c->nbuckets; i++) {
        block *b = c->buckets[i];
        while (b) {
            block *n = b->hnext;
            block_destroy(b);
            b = n;
        }
    }
    while (c->pending) {
        block *b = c->pending;
        c->pending = b->hnext;
        for (int i = 0; i < b->nevents; i++)
            if (b->events[i] && c->cfg.event_destroy) c->cfg.event_destroy(c->cfg.ctx, b->events[i]);
        block_destroy(b);
    }
    free(c->buckets);
    free(c->segs);
    pthread_mutex_unlock(&c->lock);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

dc_status dc_cache_alloc(dc_cache *c, size_t nbytes, void *stream, void **out)
{
    *out = NULL;
    if (nbytes == 0) return DC_OK;
    if (nbytes > SIZE_MAX - LARGE_ROUND) return oom(c, nbytes, 0, "the size is beyond any device");
    size_t size = dc_cache_round(nbytes);
    int small = size <= SMALL_MAX;
    dc_status st = DC_OK;
    pthread_mutex_lock(&c->lock);
    if (c->pending) poll_pending(c);
    block_set *s = &c->pools[small];
    size_t i = set_lower_bound(s, stream, size, NULL);
    block *b = NULL;
    if (i < s->n && s->v[i]->stream == stream) {
        b = s->v[i];
        memmove(s->v + i, s->v + i + 1, (s->n - i - 1) * sizeof *s->v);
        s->n--;
    } else {
        size_t seg = dc_cache_segment_size(size);
        if (c->cfg.limit && (size_t)c->st.reserved + seg > c->cfg.limit) release_free_segments(c);
        if (c->cfg.limit && (size_t)c->st.reserved + seg > c->cfg.limit) {
            st = oom(c, nbytes, seg, "the allocator's memory limit would be exceeded");
            goto done;
        }
        void *p = NULL;
        st = c->cfg.raw_alloc(c->cfg.ctx, seg, &p);
        if (st == DC_ERR_NOMEM) { /* give back what the cache holds, then once more */
            release_free_segments(c);
            st = c->cfg.raw_alloc(c->cfg.ctx, seg, &p);
        }
        size_t exact = (size + LARGE_ROUND - 1) / LARGE_ROUND * LARGE_ROUND;
        if (st == DC_ERR_NOMEM && !small && exact < seg) { /* near the end: a mid-size request alone */
            seg = exact;
            st = c->cfg.raw_alloc(c->cfg.ctx, seg, &p);
        }
        if (st == DC_ERR_NOMEM) {
            st = oom(c, nbytes, seg, "the device has no more memory");
            goto done;
        }
        if (st) goto done;
        b = calloc(1, sizeof *b);
        if (!b || seg_add(c, p, seg)) {
            free(b);
            c->cfg.raw_free(c->cfg.ctx, p);
            st = dc_error(DC_ERR_NOMEM, "caching allocator: out of host memory for a block");
            goto done;
        }
        b->ptr = p;
        b->size = seg;
        b->stream = stream;
        b->small = small;
        c->st.num_raw_allocs++;
        c->st.reserved += (int64_t)seg;
        c->st.segments++;
        if (c->st.reserved > c->st.reserved_peak) c->st.reserved_peak = c->st.reserved;
    }
    if ((st = block_take(c, b, size))) {
        set_insert(s, b); /* back where it was (the set had room for it) */
        b->state = B_FREE;
        goto done;
    }
    if ((st = hash_insert(c, b))) {
        b->state = B_FREE;
        block_make_free(c, b);
        goto done;
    }
    b->requested = nbytes;
    c->st.num_allocs++;
    c->st.active_blocks++;
    c->st.allocated += (int64_t)b->size;
    c->st.requested += (int64_t)nbytes;
    if (c->st.allocated > c->st.allocated_peak) c->st.allocated_peak = c->st.allocated;
    if (c->st.requested > c->st.requested_peak) c->st.requested_peak = c->st.requested;
    *out = b->ptr;
done:
    count_free_blocks(c);
    pthread_mutex_unlock(&c->lock);
    return st;
}

dc_status dc_cache_release(dc_cache *c, void *p)
{
    if (!p) return DC_OK;
    dc_status st = DC_OK;
    pthread_mutex_lock(&c->lock);
    block *b = hash_find(c, p, 1);
    if (!b) {
        st = dc_error(DC_ERR_INTERNAL,
                      "caching allocator (%s): release of %p, which it did not hand out or which "
                      "was already released",
                      c->name, p);
        goto done;
    }
    c->st.num_frees++;
    c->st.active_blocks--;
    c->st.allocated -= (int64_t)b->size;
    c->st.requested -= (int64_t)b->requested;
    b->requested = 0;
    if (b->nstreams > 0 && c->cfg.event_record && c->cfg.event_query) {
        b->events = calloc((size_t)b->nstreams, sizeof *b->events);
        int recorded = 0;
        if (b->events) {
            for (int i = 0; i < b->nstreams; i++) {
                void *ev = NULL;
                if (c->cfg.event_record(c->cfg.ctx, b->streams[i], &ev) == DC_OK) {
                    b->events[i] = ev;
                    recorded++;
                }
            }
            b->nevents = b->nstreams;
        }
        if (recorded) {
            b->state = B_PENDING;
            b->hnext = c->pending;
            c->pending = b;
            c->st.pending_blocks++;
            goto done;
        }
        /* no event could be recorded: the block can't be proven idle; keep it out of circulation
         * rather than hand out memory another stream may still write */
        b->state = B_PENDING;
        b->nevents = 0;
        st = dc_error(DC_ERR_INTERNAL, "caching allocator (%s): could not record an event to release %p", c->name, p);
        goto done;
    }
    st = block_make_free(c, b);
done:
    count_free_blocks(c);
    pthread_mutex_unlock(&c->lock);
    return st;
}

dc_status dc_cache_record_stream(dc_cache *c, void *p, void *stream)
{
    dc_status st = DC_OK;
    pthread_mutex_lock(&c->lock);
    block *b = hash_find(c, p, 0);
    if (!b) {
        st = dc_error(DC_ERR_VALUE, "record_stream: %p is not memory handed out by the %s allocator", p, c->name);
        goto done;
    }
    if (stream == b->stream) goto done;
    for (int i = 0; i < b->nstreams; i++)
        if (b->streams[i] == stream) goto done;
    if (b->nstreams == b->cstreams) {
        int cap = b->cstreams ? b->cstreams * 2 : 2;
        void **v = realloc(b->streams, (size_t)cap * sizeof *v);
        if (!v) {
            st = dc_error(DC_ERR_NOMEM, "record_stream: out of host memory");
            goto done;
        }
        b->streams = v;
        b->cstreams = cap;
    }
    b->streams[b->nstreams++] = stream;
done:
    pthread_mutex_unlock(&c->lock);
    return st;
}

void dc_cache_empty(dc_cache *c)
{
    pthread_mutex_lock(&c->lock);
    if (c->pending) poll_pending(c);
    release_free_segments(c);
    count_free_blocks(c);
    pthread_mutex_unlock(&c->lock);
}

void dc_cache_get_stats(dc_cache *c, dc_cache_stats *s)
{
    pthread_mutex_lock(&c->lock);
    count_free_blocks(c);
    *s = c->st;
    pthread_mutex_unlock(&c->lock);
}

void dc_cache_reset_peak(dc_cache *c)
{
    pthread_mutex_lock(&c->lock);
    c->st.allocated_peak = c->st.allocated;
    c->st.requested_peak = c->st.requested;
    c->st.reserved_peak = c->st.reserved;
    pthread_mutex_unlock(&c->lock);
}

size_t dc_cache_block_size(dc_cache *c, const void *p)
{
    pthread_mutex_lock(&c->lock);
    block *b = hash_find(c, p, 0);
    size_t n = b ? b->size : 0;
    pthread_mutex_unlock(&c->lock);
    return n;
}
