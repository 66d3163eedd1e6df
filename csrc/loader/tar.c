/* tar.c: a streaming tar reader for WebDataset shards, and WebDataset's key/field split.
 *
 * Why streaming: a shard arrives in chunks (range GETs, file reads) of any size, and a member may
 * span many chunks; the parser keeps only the header block being read and the member being
 * assembled, never the whole shard. Member data goes straight into a buffer of the member's size
 * that the caller can take over (dc_tar_take) — the bytes are copied once, from the chunk.
 *
 * Formats: ustar/POSIX (name + prefix), GNU ('L' long names, 'K' long link names, base-256
 * sizes), pax ('x' path and size records for the next member; 'g' globals skipped). Non-regular
 * members (directories, links, devices, FIFOs) are skipped. Every header's checksum is checked
 * (unsigned, and the signed sum old tars wrote). The archive ends at two zero blocks, or at EOF on
 * a member boundary; bytes after the end-of-archive blocks are ignored, as GNU tar does. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "shards.h"

#define BLOCK    512
#define MAX_NAME (64 * 1024)

enum { ST_HEADER, ST_DATA, ST_SKIP, ST_END };

struct dc_tar {
    int64_t max_member;
    int64_t offset; /* stream offset of the next byte fed */
    int state;
    uint8_t hdr[BLOCK]; /* the header block being read */
    size_t hdr_have;
    int zero_blocks; /* consecutive zero header blocks */
    /* the member being read */
    int kind;              /* 0 regular, 'L'/'K' long name/link, 'x'/'g' pax, 1 skipped */
    int64_t size, have;    /* data bytes, and how many arrived */
    int64_t pad;           /* padding still to skip after the data */
    int64_t member_offset; /* where its first header block began */
    uint8_t *data;         /* (size,) */
    char *name;            /* the member's path */
    /* carried to the next member by GNU long-name / pax headers */
    char *long_name;
    int64_t pax_size;     /* -1: none */
    int64_t first_offset; /* offset of the first extension header of the coming member, -1: none */
    /* completed members waiting to be taken: at most one (the caller drains with dc_tar_next) */
    int ready;
    uint8_t *out_data;
    char *out_name;
    int64_t out_size, out_offset;
    int taken;
    /* input not yet consumed (fed but a member was ready) */
    const uint8_t *in;
    size_t in_len;
    uint8_t *pending; /* a copy of unconsumed input */
    size_t pending_len, pending_pos;
};

dc_status dc_tar_init(dc_tar **out, int64_t max_member_bytes)
{
    dc_tar *t = calloc(1, sizeof *t);
    if (!t) return dc_error(DC_ERR_NOMEM, "out of memory");
    t->max_member = max_member_bytes > 0 ? max_member_bytes : (int64_t)1 << 30;
    dc_tar_reset(t, 0);
    *out = t;
    return DC_OK;
}

static void drop_member(dc_tar *t)
{
    free(t->data);
    t->data = NULL;
    free(t->name);
    t->name = NULL;
}

static void drop_out(dc_tar *t)
{
    if (!t->taken) free(t->out_data);
    t->out_data = NULL;
    free(t->out_name);
    t->out_name = NULL;
    t->ready = 0;
    t->taken = 0;
}

void dc_tar_reset(dc_tar *t, int64_t offset)
{
    drop_member(t);
    drop_out(t);
    free(t->long_name);
    t->long_name = NULL;
    free(t->pending);
    t->pending = NULL;
    t->pending_len = t->pending_pos = 0;
    t->offset = offset;
    t->state = ST_HEADER;
    t->hdr_have = 0;
    t->zero_blocks = 0;
    t->pax_size = -1;
    t->first_offset = -1;
}

void dc_tar_free(dc_tar *t)
{
    if (!t) return;
    dc_tar_reset(t, 0);
    free(t);
}

int64_t dc_tar_offset(const dc_tar *t)
{
    return t->offset;
}

/* A numeric header field: octal (spaces/NULs around it), or GNU base-256 when the top bit is set. */
static int parse_num(const uint8_t *f, size_t n, int64_t *out)
{
    if (f[0] & 0x80) {
        if (f[0] & 0x40) return 0; /* negative */
        uint64_t v = f[0] & 0x3f;
        for (size_t i = 1; i < n; i++) {
            if (v >> 55) return 0;
            v = v << 8 | f[i];
        }
        if (v > INT64_MAX) return 0;
        *out = (int64_t)v;
        return 1;
    }
    size_t i = 0;
    while (i < n && (f[i] == ' ' || f[i] == 0)) i++;
    uint64_t v = 0;
    int digits = 0;
    for (; i < n && f[i] >= '0' && f[i] <= '7'; i++, digits++) {
        if (v >> 60) return 0;
        v = v * 8 + (uint64_t)(f[i] - '0');
    }
    for (; i < n; i++)
        if (f[i] != ' ' && f[i] != 0) return 0;
    (void)digits; /* an all-blank field reads as 0, as GNU tar does */
    *out = (int64_t)v;
    return 1;
}

static int checksum_ok(const uint8_t *h)
{
    int64_t want;
    if (!parse_num(h + 148, 8, &want)) return 0;
    int64_t u = 0, s = 0;
    for (int i = 0; i < BLOCK; i++) {
        uint8_t c = (i >= 148 && i < 156) ? ' ' : h[i];
        u += c;
        s += (signed char)c;
    }
    return want == u || want == s;
}

static char *field_str(const uint8_t *f, size_t n)
{
    size_t len = strnlen((const char *)f, n);
    return strndup((const char *)f, len);
}

/* Parse pax records "len key=value\n" for path and size. */
static dc_status parse_pax(dc_tar *t, const uint8_t *d, int64_t n)
{
    int64_t i = 0;
    while (i < n) {
        int64_t len = 0, j = i;
        while (j < n && d[j] >= '0' && d[j] <= '9') {
            len = len * 10 + (d[j] - '0');
            if (len > n) break;
            j++;
        }
        if (j == i || j >= n || d[j] != ' ' || len <= j - i + 1 || i + len > n || d[i + len - 1] != '\n')
            return dc_error(DC_ERR_FORMAT, "malformed pax header record at byte %lld", (long long)(t->member_offset));
        const uint8_t *kv = d + j + 1;
        int64_t kvlen = i + len - 1 - (j + 1);
        const uint8_t *eq = memchr(kv, '=', (size_t)kvlen);
        if (!eq) return dc_error(DC_ERR_FORMAT, "pax record without '=' at byte %lld", (long long)t->member_offset);
        size_t klen = (size_t)(eq - kv);
        const char *val = (const char *)eq + 1;
        size_t vlen = (size_t)(kvlen - (int64_t)klen - 1);
        if (klen == 4 && !memcmp(kv, "path", 4)) {
            if (vlen > MAX_NAME) return dc_error(DC_ERR_FORMAT, "pax path longer than %d bytes", MAX_NAME);
            free(t->long_name);
            t->long_name = strndup(val, vlen);
            if (!t->long_name) return dc_error(DC_ERR_NOMEM, "out of memory");
        } else if (klen == 4 && !memcmp(kv, "size", 4)) {
            int64_t v = 0;
            for (size_t k = 0; k < vlen; k++) {
                if (val[k] < '0' || val[k] > '9' || v > INT64_MAX / 10 - 10)
                    return dc_error(DC_ERR_FORMAT, "bad pax size at byte %lld", (long long)t->member_offset);
                v = v * 10 + (val[k] - '0');
            }
            t->pax_size = v;
        }
        i += len;
    }
    return DC_OK;
}

/* A complete header block in t->hdr: set up the member. */
static dc_status start_member(dc_tar *t)
{
    const uint8_t *h = t->hdr;
    int64_t hdr_offset = t->offset - BLOCK;
    int zero = 1;
    for (int i = 0; i < BLOCK && zero; i++) zero = h[i] == 0;
    if (zero) {
        if (++t->zero_blocks == 2) t->state = ST_END;
        return DC_OK;
    }
    if (t->zero_blocks)
        return dc_error(DC_ERR_FORMAT, "a zero block in the middle of the archive at byte %lld",
                        (long long)(hdr_offset - BLOCK));
    if (!checksum_ok(h)) return dc_error(DC_ERR_FORMAT, "bad tar header checksum at byte %lld", (long long)hdr_offset);
    int64_t size;
    if (!parse_num(h + 124, 12, &size))
        return dc_error(DC_ERR_FORMAT, "bad size field in the tar header at byte %lld", (long long)hdr_offset);
    char type = (char)h[156];
    if (t->first_offset < 0) t->first_offset = hdr_offset;
    t->member_offset = t->first_offset;
    if (type == 'L' || type == 'K' || type == 'x' || type == 'g') {
        if (size > MAX_NAME * 4)
            return dc_error(DC_ERR_FORMAT, "extended header of %lld bytes at byte %lld is too large", (long long)size,
                            (long long)hdr_offset);
        t->kind = type;
        if (type == 'g') t->first_offset = -1; /* a global header belongs to no member */
    } else {
        if (t->pax_size >= 0) size = t->pax_size;
        int regular = type == '0' || type == 0 || type == '7';
        t->kind = regular ? 0 : 1;
        if (regular) {
            if (t->long_name) {
                t->name = t->long_name;
                t->long_name = NULL;
            } else {
                char *nm = field_str(h, 100);
                int ustar = !memcmp(h + 257, "ustar", 5);
                char *pre = ustar ? field_str(h + 345, 155) : NULL;
                if (!nm || (ustar && !pre)) {
                    free(nm);
                    free(pre);
                    return dc_error(DC_ERR_NOMEM, "out of memory");
                }
                if (pre && pre[0]) {
                    size_t a = strlen(pre), b = strlen(nm);
                    char *full = malloc(a + b + 2);
                    if (!full) {
                        free(nm);
                        free(pre);
                        return dc_error(DC_ERR_NOMEM, "out of memory");
                    }
                    memcpy(full, pre, a);
                    full[a] = '/';
                    memcpy(full + a + 1, nm, b + 1);
                    free(nm);
                    nm = full;
                }
                free(pre);
                t->name = nm;
            }
            if (size > t->max_member)
                return dc_error(DC_ERR_FORMAT, "member '%s' is %lld bytes, more than the limit of %lld", t->name,
                                (long long)size, (long long)t->max_member);
        } else {
            free(t->long_name);
            t->long_name = NULL;
        }
        t->pax_size = -1;
        t->first_offset = -1;
    }
    t->size = size;
    t->have = 0;
    t->pad = (BLOCK - size % BLOCK) % BLOCK;
    if (t->kind == 1) {
        t->state = ST_SKIP;
    } else {
        t->data = malloc(size ? (size_t)size : 1);
        if (!t->data) return dc_error(DC_ERR_NOMEM, "out of memory for a %lld-byte tar member", (long long)size);
        t->state = ST_DATA;
    }
    return DC_OK;
}

/* The member's data is complete (its padding may still follow). */
static dc_status end_member(dc_tar *t)
{
    dc_status st = DC_OK;
    if (t->kind == 'L') {
        if (t->size > MAX_NAME)
            st = dc_error(DC_ERR_FORMAT, "GNU long name over %d bytes", MAX_NAME);
        else {
            free(t->long_name);
            t->long_name = strndup((const char *)t->data, (size_t)t->size);
            if (!t->long_name) st = dc_error(DC_ERR_NOMEM, "out of memory");
        }
        drop_member(t);
    } else if (t->kind == 'x') {
        st = parse_pax(t, t->data, t->size);
        drop_member(t);
    } else if (t->kind == 'K' || t->kind == 'g') {
        drop_member(t);
    } else if (t->kind == 0) {
        t->ready = 1;
        t->out_data = t->data;
        t->out_name = t->name;
        t->out_size = t->size;
        t->out_offset = t->member_offset;
        t->data = NULL;
        t->name = NULL;
    }
    return st;
}

/* Consume input until a member is complete (t->ready) or the input runs out. */
static dc_status consume(dc_tar *t, const uint8_t **in, size_t *len)
{
    while (*len > 0 && !t->ready) {
        switch (t->state) {
        case ST_END: /* ignore what follows the end-of-archive blocks */
            t->offset += (int64_t)*len;
            *len = 0;
            return DC_OK;
        case ST_HEADER: {
            size_t n = BLOCK - t->hdr_have < *len ? BLOCK - t->hdr_have : *len;
            memcpy(t->hdr + t->hdr_have, *in, n);
            t->hdr_have += n;
            *in += n;
            *len -= n;
            t->offset += (int64_t)n;
            if (t->hdr_have == BLOCK) {
                t->hdr_have = 0;
                DC_TRY(start_member(t));
                if ((t->state == ST_DATA || t->state == ST_SKIP) && t->size == 0 && t->pad == 0) {
                    if (t->state == ST_DATA) DC_TRY(end_member(t));
                    t->state = ST_HEADER;
                }
            }
            break;
        }
        case ST_DATA:
        case ST_SKIP: {
            int64_t left = t->size - t->have;
            if (left > 0) {
                size_t n = (uint64_t)left < *len ? (size_t)left : *len;
                if (t->state == ST_DATA) memcpy(t->data + t->have, *in, n);
                t->have += (int64_t)n;
                *in += n;
                *len -= n;
                t->offset += (int64_t)n;
                if (t->have == t->size && t->state == ST_DATA) DC_TRY(end_member(t));
                if (t->have < t->size) break;
            }
            size_t n = (uint64_t)t->pad < *len ? (size_t)t->pad : *len;
            t->pad -= (int64_t)n;
            *in += n;
            *len -= n;
            t->offset += (int64_t)n;
            if (t->pad == 0) t->state = ST_HEADER;
            break;
        }
        }
    }
    return DC_OK;
}

dc_status dc_tar_feed(dc_tar *t, const void *buf, size_t len)
{
    const uint8_t *in = buf;
    if (t->pending_pos < t->pending_len) { /* keep the order: append after what is still pending */
        uint8_t *p = realloc(t->pending, t->pending_len - t->pending_pos + len);
        if (!p) return dc_error(DC_ERR_NOMEM, "out of memory");
        memmove(p, p + t->pending_pos, t->pending_len - t->pending_pos);
        t->pending_len -= t->pending_pos;
        t->pending_pos = 0;
        memcpy(p + t->pending_len, in, len);
        t->pending = p;
        t->pending_len += len;
        return DC_OK;
    }
    if (!t->ready) DC_TRY(consume(t, &in, &len));
    if (len) { /* a member completed before the chunk ended: keep the rest for dc_tar_next */
        free(t->pending);
        t->pending = malloc(len);
        if (!t->pending) return dc_error(DC_ERR_NOMEM, "out of memory");
        memcpy(t->pending, in, len);
        t->pending_len = len;
        t->pending_pos = 0;
    }
    return DC_OK;
}

dc_status dc_tar_next(dc_tar *t, dc_tar_member *m, int *have)
{
    *have = 0;
    if (t->ready == 2) drop_out(t); /* the member handed out last time (freed unless taken) */
    if (!t->ready && t->pending_pos < t->pending_len) {
        const uint8_t *in = t->pending + t->pending_pos;
        size_t len = t->pending_len - t->pending_pos;
        dc_status st = consume(t, &in, &len);
        t->pending_pos = t->pending_len - len;
        if (t->pending_pos == t->pending_len) {
            free(t->pending);
            t->pending = NULL;
            t->pending_len = t->pending_pos = 0;
        }
        if (st) return st;
    }
    if (t->ready != 1) return DC_OK;
    m->name = t->out_name;
    m->name_len = strlen(t->out_name);
    m->size = t->out_size;
    m->offset = t->out_offset;
    m->data = t->out_data;
    t->ready = 2;
    *have = 1;
    return DC_OK;
}

uint8_t *dc_tar_take(dc_tar *t)
{
    if (t->ready != 2 || t->taken) return NULL;
    t->taken = 1;
    uint8_t *d = t->out_data;
    if (!d) d = malloc(1); /* a zero-byte member: a buffer the caller can free */
    t->out_data = NULL;
    return d;
}

dc_status dc_tar_finish(dc_tar *t)
{
    if (t->ready == 2) drop_out(t);
    if (t->pending_pos < t->pending_len || t->ready == 1)
        return dc_error(DC_ERR_INTERNAL, "dc_tar_finish with members not taken out yet");
    if (t->state == ST_END || (t->state == ST_HEADER && t->hdr_have == 0)) return DC_OK;
    if (t->state == ST_HEADER)
        return dc_error(DC_ERR_FORMAT, "truncated tar: the stream ended inside a header block at byte %lld",
                        (long long)t->offset);
    const char *nm = t->name ? t->name : "(extended header)";
    return dc_error(DC_ERR_FORMAT,
                    "truncated tar: member '%s' (header at byte %lld) needs %lld bytes, the stream ended at byte %lld",
                    nm, (long long)t->member_offset, (long long)(t->size + t->pad - t->have), (long long)t->offset);
}

int dc_wds_split(const char *name, size_t name_len, size_t *key_len, const char **field)
{
    size_t base = 0;
    for (size_t i = 0; i < name_len; i++)
        if (name[i] == '/') base = i + 1;
    for (size_t i = base; i < name_len; i++) {
        if (name[i] == '.') {
            if (i == base) return 0; /* ".hidden": no key */
            *key_len = i;
            *field = name + i + 1;
            return i + 1 < name_len;
        }
    }
    return 0;
}
