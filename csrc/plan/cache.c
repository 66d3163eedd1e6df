/* cache.c: the plan cache of plan.h. A linear scan over the slots: caches hold tens of plans and a
 * lookup is one memcmp each, against the microseconds of the library call the plan saves. */
#include <stdlib.h>
#include <string.h>

#include "plan.h"

typedef struct {
    bool used;
    uint64_t stamp; /* larger: used more recently */
    void *key, *payload;
} slot;

struct dc_plan_cache {
    int nslots;
    size_t key_size, payload_size;
    dc_plan_release_fn release;
    uint64_t clock;
    int64_t hits, misses, evictions;
    slot *slots;
    char *keys;    /* nslots * key_size */
    char *payload; /* nslots * payload stride */
};

static size_t payload_stride(size_t n)
{
    const size_t a = 16; /* max_align_t on x86-64 and aarch64 */
    return (n + a - 1) / a * a;
}

dc_status dc_plan_cache_new(int slots, size_t key_size, size_t payload_size, dc_plan_release_fn release,
                            dc_plan_cache **out)
{
    *out = NULL;
    if (slots < 2 || slots > 4096 || key_size == 0 || key_size > 4096 || payload_size > ((size_t)1 << 20))
        return dc_error(DC_ERR_VALUE,
                        "plan cache: %d slots of %zu-byte keys and %zu-byte payloads (want 2..4096 "
                        "slots, keys of 1..4096 bytes, payloads up to 1 MiB)",
                        slots, key_size, payload_size);
    dc_plan_cache *c = calloc(1, sizeof *c);
    if (!c) return dc_error(DC_ERR_NOMEM, "plan cache: out of host memory");
    c->nslots = slots;
    c->key_size = key_size;
    c->payload_size = payload_size;
    c->release = release;
    c->slots = calloc((size_t)slots, sizeof *c->slots);
    c->keys = calloc((size_t)slots, key_size);
    c->payload = calloc((size_t)slots, payload_stride(payload_size) ? payload_stride(payload_size) : 1);
    if (!c->slots || !c->keys || !c->payload) {
        dc_plan_cache_free(c);
        return dc_error(DC_ERR_NOMEM, "plan cache: out of host memory for %d slots", slots);
    }
    for (int i = 0; i < slots; i++) {
        c->slots[i].key = c->keys + (size_t)i * key_size;
        c->slots[i].payload = c->payload + (size_t)i * payload_stride(payload_size);
    }
    *out = c;
    return DC_OK;
}

static void release_slot(dc_plan_cache *c, slot *s)
{
    if (s->used && c->release) c->release(s->payload);
    s->used = false;
    memset(s->payload, 0, c->payload_size);
}

void dc_plan_cache_free(dc_plan_cache *c)
{
    if (!c) return;
    if (c->slots) dc_plan_cache_clear(c);
    free(c->slots);
    free(c->keys);
    free(c->payload);
    free(c);
}

void *dc_plan_cache_get(dc_plan_cache *c, const void *key, bool *fresh)
{
    slot *victim = NULL;
    for (int i = 0; i < c->nslots; i++) {
        slot *s = &c->slots[i];
        if (s->used && memcmp(s->key, key, c->key_size) == 0) {
            s->stamp = ++c->clock;
            c->hits++;
            *fresh = false;
            return s->payload;
        }
        /* a free slot first, else the least recently used */
        if (!victim || (victim->used && (!s->used || s->stamp < victim->stamp))) victim = s;
    }
    c->misses++;
    if (victim->used) c->evictions++;
    release_slot(c, victim);
    memcpy(victim->key, key, c->key_size);
    victim->used = true;
    victim->stamp = ++c->clock;
    *fresh = true;
    return victim->payload;
}

void dc_plan_cache_drop(dc_plan_cache *c, void *payload)
{
    for (int i = 0; i < c->nslots; i++)
        if (c->slots[i].payload == payload) {
            release_slot(c, &c->slots[i]);
            return;
        }
}

void dc_plan_cache_clear(dc_plan_cache *c)
{
    for (int i = 0; i < c->nslots; i++) release_slot(c, &c->slots[i]);
}

void dc_plan_cache_get_stats(const dc_plan_cache *c, dc_plan_cache_stats *s)
{
    memset(s, 0, sizeof *s);
    s->slots = c->nslots;
    for (int i = 0; i < c->nslots; i++) s->used += c->slots[i].used;
    s->hits = c->hits;
    s->misses = c->misses;
    s->evictions = c->evictions;
}
