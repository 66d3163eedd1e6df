/* alloc.c: host memory for CPU tensors, with a cache of freed large blocks.
 *
 * A training step allocates and frees the same large activations every step. glibc serves blocks
 * above its mmap threshold with fresh mmap()s, so every step paid page faults and kernel page
 * zeroing (a quarter of a small GPT step's time). Freed blocks of 64 KiB and more are kept here in
 * size classes (four per power of two, so at most 25% slack) and handed out again; the cache is
 * capped (DUTYCYCLE_CPU_CACHE_MB, default 2048; 0 turns it off) and can be emptied.
 *
 * Each block carries a 64-byte header holding its class size, which keeps the user pointer 64-byte
 * aligned (a cache line, an AVX-512 vector). */
#define _POSIX_C_SOURCE 200112L /* posix_memalign under -std=c11 */
#include <pthread.h>
#include <stdlib.h>

#include "cpu.h"

#define HDR       64
#define CACHE_MIN ((size_t)64 << 10)
#define NCLASS    (64 * 4)

typedef struct block {
    size_t size; /* class size (bytes after the header) */
    struct block *next;
} block;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static block *free_lists[NCLASS];
static size_t cached_bytes, cache_limit;
static int limit_read;

/* Round n up to its size class: 4 classes per power of two above CACHE_MIN. */
static size_t class_size(size_t n, int *cls)
{
    if (n < CACHE_MIN) {
        *cls = -1;
        return (n + 63) & ~(size_t)63;
    }
    int k = 63 - __builtin_clzll((unsigned long long)n); /* 2^k <= n < 2^(k+1) */
    size_t step = (size_t)1 << (k - 2), r = (n + step - 1) & ~(step - 1);
    int k2 = 63 - __builtin_clzll((unsigned long long)r);
    *cls = k2 * 4 + (int)((r >> (k2 - 2)) & 3);
    return r;
}

static size_t read_limit(void)
{
    const char *e = getenv("DUTYCYCLE_CPU_CACHE_MB");
    if (e && *e) {
        char *end;
        long long mb = strtoll(e, &end, 10);
        if (*end == '\0' && mb >= 0) return (size_t)mb << 20;
    }
    return (size_t)2048 << 20;
}

dc_status dc_cpu_alloc(dc_device dev, size_t nbytes, void **out)
{
    (void)dev;
    int cls;
    size_t size = class_size(nbytes ? nbytes : 1, &cls);
    block *b = NULL;
    if (cls >= 0) {
        pthread_mutex_lock(&lock);
        if ((b = free_lists[cls])) {
            free_lists[cls] = b->next;
            cached_bytes -= b->size;
        }
        pthread_mutex_unlock(&lock);
    }
    if (!b) {
        void *p = NULL;
        if (posix_memalign(&p, 64, HDR + size) != 0 || !p)
            return dc_error(DC_ERR_NOMEM, "out of host memory allocating %zu bytes", nbytes);
        b = p;
        b->size = size;
    }
    *out = (char *)b + HDR;
    return DC_OK;
}

void dc_cpu_free(dc_device dev, void *p)
{
    (void)dev;
    if (!p) return;
    block *b = (block *)((char *)p - HDR);
    int cls;
    class_size(b->size, &cls);
    if (cls >= 0) {
        pthread_mutex_lock(&lock);
        if (!limit_read) {
            cache_limit = read_limit();
            limit_read = 1;
        }
        if (cached_bytes + b->size <= cache_limit) {
            b->next = free_lists[cls];
            free_lists[cls] = b;
            cached_bytes += b->size;
            b = NULL;
        }
        pthread_mutex_unlock(&lock);
    }
    free(b);
}

void dc_cpu_cache_info(size_t *cached, size_t *limit)
{
    pthread_mutex_lock(&lock);
    if (!limit_read) {
        cache_limit = read_limit();
        limit_read = 1;
    }
    *cached = cached_bytes;
    *limit = cache_limit;
    pthread_mutex_unlock(&lock);
}

void dc_cpu_empty_cache(void)
{
    block *all = NULL;
    pthread_mutex_lock(&lock);
    for (int c = 0; c < NCLASS; c++) {
        while (free_lists[c]) {
            block *b = free_lists[c];
            free_lists[c] = b->next;
            b->next = all;
            all = b;
        }
    }
    cached_bytes = 0;
    pthread_mutex_unlock(&lock);
    while (all) {
        block *n = all->next;
        free(all);
        all = n;
    }
}
