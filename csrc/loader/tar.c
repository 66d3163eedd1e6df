/* tar.c: the streaming tar parser behind the WebDataset shard loader, and dc_wds_split.
 *
 * Why streaming: a shard arrives as a sequence of fetched chunks of any size, and a sample must be
 * usable as soon as its bytes are in. dc_tar_feed runs a byte-level state machine over each chunk
 * as it comes (no look-ahead, so any chunking gives the same result) and copies member data once,
 * straight into a malloc'd buffer per member that the consumer may keep (dc_tar_take). Finished
 * members wait in a small queue until dc_tar_next hands them out; a malformed header stops the
 * parse and is reported by dc_tar_next after the members before it, so what a consumer sees never
 * depends on how the bytes were chunked.
 *
 * Format rules (the same choices as Python's tarfile and GNU tar's defaults):
 *   - a header's checksum must match the unsigned or the signed byte sum (old tars used signed);
 *   - sizes are octal (spaces/NULs around the digits) or GNU base-256 (first byte 0x80);
 *   - regular members are types '0', '\0' and '7'; '\0' with a name ending in '/' is a directory;
 *     directories, hard and symbolic links, devices and fifos carry no data and are skipped;
 *     unknown types are skipped together with their data; GNU sparse members ('S') are refused;
 *   - 'L' (GNU long name) and 'x' (pax: path, size) apply to the next header; 'K' (long link
 *     name) and 'g' (pax global) are read and dropped;
 *   - the first all-zero header block ends the archive: whatever follows is ignored (GNU tar
 *     without --ignore-zeros, tarfile), and a stream that stops on a member boundary is complete.
 * A member is complete when its data and the padding up to the next 512-byte block are in. */
#include "shards.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK        512
#define MAX_NAME     (64 * 1024)   /* longest member path accepted (GNU 'L' or pax path) */
#define MAX_EXT      (1024 * 1024) /* largest pax 'x' / GNU 'L'/'K' record we buffer */
#define FIRST_ALLOC  (16u << 20)   /* data buffers start at most this big and grow on demand */
#define DEFAULT_MAX  ((int64_t)1 << 30)
#define ERR_MSG_SIZE 512

enum {
    ST_HEADER, /* collecting a 512-byte header block */
    ST_EXT,    /* collecting an extended header's data ('L', 'K', 'x') */
    ST_DATA,   /* collecting a regular member's data */
    ST_SKIP,   /* skipping bytes: padding, or data of a member we drop */
    ST_END,    /* after the end-of-archive block: everything is ignored */
    ST_ERROR   /* a malformed header stopped the parse */
};

/* What a skip leads to once done. */
enum { AFTER_NOTHING, AFTER_MEMBER };

typedef struct {
    char *name;
    size_t name_len;
    int64_t size, offset;
    uint8_t *data;
} member;

struct dc_tar {
    int64_t max_member;
    int64_t pos; /* stream offset of the next byte fed */
    int state;

    uint8_t hdr[BLOCK];
    size_t hdr_fill;
    int64_t hdr_offset; /* stream offset of the block being collected */

    /* extended-header chain ('L'/'x' before a member header) */
    int64_t chain_offset; /* -1: no chain */
    char *chain_name;     /* malloc'd; from 'L' or pax path */
    size_t chain_name_len;
    int64_t chain_size; /* pax size override; -1: none */

    /* ST_EXT */
    char ext_type;
    uint8_t *ext_buf;
    size_t ext_len, ext_fill;
    int64_t ext_header_offset;

    /* the member being assembled (ST_DATA, or ST_SKIP with AFTER_MEMBER) */
    member cur;
    int64_t cur_data_offset;
    size_t cur_cap, cur_fill;

    /* ST_SKIP */
    int64_t skip_left;
    int skip_after;
    int skip_is_data; /* skipping a dropped member's data (for the truncation message) */
    char skip_what[64];

    /* finished members waiting for dc_tar_next */
    member *queue;
    size_t q_head, q_len, q_cap;
    member out; /* the member last handed out; its buffers are freed at the next call */

    dc_status err;
    char err_msg[ERR_MSG_SIZE];
};

static void member_clear(member *m)
{
    free(m->name);
    free(m->data);
    memset(m, 0, sizeof *m);
}

/* Record a parse error in the handle (sticky) and in the thread's buffer. */
static dc_status fail(dc_tar *t, dc_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static dc_status fail(dc_tar *t, dc_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->err_msg, sizeof t->err_msg, fmt, ap);
    va_end(ap);
    t->err = st;
    t->state = ST_ERROR;
    return dc_error(st, "%s", t->err_msg);
}

static void chain_clear(dc_tar *t)
{
    free(t->chain_name);
    t->chain_name = NULL;
    t->chain_name_len = 0;
    t->chain_size = -1;
    t->chain_offset = -1;
}

dc_status dc_tar_init(dc_tar **out, int64_t max_member_bytes)
{
    *out = NULL;
    dc_tar *t = calloc(1, sizeof *t);
    if (!t) return dc_error(DC_ERR_NOMEM, "tar parser: out of memory");
    t->max_member = max_member_bytes > 0 ? max_member_bytes : DEFAULT_MAX;
    t->chain_offset = -1;
    t->chain_size = -1;
    *out = t;
    return DC_OK;
}

void dc_tar_reset(dc_tar *t, int64_t offset)
{
    chain_clear(t);
    free(t->ext_buf);
    t->ext_buf = NULL;
    member_clear(&t->cur);
    member_clear(&t->out);
    for (size_t i = t->q_head; i < t->q_head + t->q_len; i++) member_clear(&t->queue[i]);
    t->q_head = t->q_len = 0;
    t->state = ST_HEADER;
    t->hdr_fill = 0;
    t->pos = offset;
    t->err = DC_OK;
    t->err_msg[0] = '\0';
}

void dc_tar_free(dc_tar *t)
{
    if (!t) return;
    dc_tar_reset(t, 0);
    free(t->queue);
    free(t);
}

int64_t dc_tar_offset(const dc_tar *t)
{
    return t->pos;
}

static int64_t pad_of(int64_t size)
{
    return (BLOCK - size % BLOCK) % BLOCK;
}

/* ---- header fields ---------------------------------------------------------------------------- */

/* An octal field: optional leading spaces/NULs, digits, then spaces or NULs. -1 when malformed. */
static int64_t parse_octal(const uint8_t *f, size_t n)
{
    size_t i = 0;
    while (i < n && (f[i] == ' ' || f[i] == 0)) i++;
    if (i == n) return 0; /* an all-blank field reads as 0, as tarfile does */
    int64_t v = 0;
    size_t digits = 0;
    for (; i < n && f[i] >= '0' && f[i] <= '7'; i++, digits++) {
        if (v > (INT64_MAX >> 3)) return -1;
        v = v * 8 + (f[i] - '0');
    }
    for (; i < n; i++)
        if (f[i] != ' ' && f[i] != 0) return -1;
    return digits ? v : -1;
}

/* The size field: octal or GNU base-256 (0x80 then a big-endian number; 0xff, negative, refused). */
static int64_t parse_size(const uint8_t *f)
{
    if (f[0] & 0x80) {
        if (f[0] != 0x80) return -1;
        uint64_t v = 0;
        for (int i = 1; i < 12; i++) {
            if (v >> 55) return -1;
            v = (v << 8) | f[i];
        }
        return v > (uint64_t)INT64_MAX ? -1 : (int64_t)v;
    }
    return parse_octal(f, 12);
}

static int checksum_ok(const uint8_t *h)
{
    int64_t stored = parse_octal(h + 148, 8);
    if (stored < 0) return 0;
    int64_t u = 0, s = 0;
    for (int i = 0; i < BLOCK; i++) {
        uint8_t c = (i >= 148 && i < 156) ? ' ' : h[i];
        u += c;
        s += (int8_t)c;
    }
    return stored == u || stored == s;
}

static size_t field_len(const uint8_t *f, size_t n)
{
    const uint8_t *z = memchr(f, 0, n);
    return z ? (size_t)(z - f) : n;
}

/* ---- the queue -------------------------------------------------------------------------------- */

static dc_status queue_push(dc_tar *t, member *m)
{
    if (t->q_head + t->q_len == t->q_cap) {
        if (t->q_head > 0) {
            memmove(t->queue, t->queue + t->q_head, t->q_len * sizeof *t->queue);
            t->q_head = 0;
        } else {
            size_t cap = t->q_cap ? t->q_cap * 2 : 16;
            member *q = realloc(t->queue, cap * sizeof *q);
            if (!q) return fail(t, DC_ERR_NOMEM, "tar parser: out of memory queueing member");
            t->queue = q;
            t->q_cap = cap;
        }
    }
    t->queue[t->q_head + t->q_len++] = *m;
    memset(m, 0, sizeof *m);
    return DC_OK;
}

/* ---- state transitions -------------------------------------------------------------------------- */

static void start_skip(dc_tar *t, int64_t n, int after, int is_data, const char *what)
{
    t->state = ST_SKIP;
    t->skip_left = n;
    t->skip_after = after;
    t->skip_is_data = is_data;
    snprintf(t->skip_what, sizeof t->skip_what, "%s", what);
}

/* The member in t->cur has all its data: skip its padding, then queue it. */
static dc_status data_done(dc_tar *t)
{
    int64_t pad = pad_of(t->cur.size);
    if (pad) {
        start_skip(t, pad, AFTER_MEMBER, 0, "padding");
        return DC_OK;
    }
    t->state = ST_HEADER;
    return queue_push(t, &t->cur);
}

/* Apply a finished extended header's data to the chain. */
static dc_status ext_done(dc_tar *t)
{
    const char *b = (const char *)t->ext_buf;
    size_t n = t->ext_len;
    if (t->ext_type == 'L') {
        const char *z = memchr(b, 0, n);
        size_t len = z ? (size_t)(z - b) : n;
        if (len > MAX_NAME)
            return fail(t, DC_ERR_FORMAT, "tar: GNU long name of %zu bytes at byte %lld exceeds the %d-byte limit", len,
                        (long long)t->ext_header_offset, MAX_NAME);
        char *name = malloc(len + 1);
        if (!name) return fail(t, DC_ERR_NOMEM, "tar parser: out of memory");
        memcpy(name, b, len);
        name[len] = '\0';
        free(t->chain_name);
        t->chain_name = name;
        t->chain_name_len = len;
    } else if (t->ext_type == 'x') {
        /* records "<len> <key>=<value>\n", len counting the whole record */
        size_t p = 0;
        while (p < n) {
            if (b[p] == 0) break; /* NUL padding after the last record */
            size_t q = p, len = 0;
            while (q < n && b[q] >= '0' && b[q] <= '9' && len <= n) len = len * 10 + (size_t)(b[q++] - '0');
            if (q == p || q >= n || b[q] != ' ' || len <= q - p + 1 || len > n - p || b[p + len - 1] != '\n')
                return fail(t, DC_ERR_FORMAT,
                            "tar: malformed pax record at byte %zu of the extended header at byte %lld", p,
                            (long long)t->ext_header_offset);
            const char *kv = b + q + 1, *end = b + p + len - 1; /* [kv, end): key=value */
            const char *eq = memchr(kv, '=', (size_t)(end - kv));
            if (!eq)
                return fail(t, DC_ERR_FORMAT, "tar: pax record without '=' in the extended header at byte %lld",
                            (long long)t->ext_header_offset);
            size_t klen = (size_t)(eq - kv), vlen = (size_t)(end - eq - 1);
            const char *v = eq + 1;
            if (klen == 4 && !memcmp(kv, "path", 4)) {
                if (vlen > MAX_NAME)
                    return fail(t, DC_ERR_FORMAT, "tar: pax path of %zu bytes at byte %lld exceeds the %d-byte limit",
                                vlen, (long long)t->ext_header_offset, MAX_NAME);
                char *name = malloc(vlen + 1);
                if (!name) return fail(t, DC_ERR_NOMEM, "tar parser: out of memory");
                memcpy(name, v, vlen);
                name[vlen] = '\0';
                free(t->chain_name);
                t->chain_name = name;
                t->chain_name_len = vlen;
            } else if (klen == 4 && !memcmp(kv, "size", 4)) {
                int64_t s = 0;
                size_t i = 0;
                for (; i < vlen && v[i] >= '0' && v[i] <= '9'; i++) {
                    if (s > (INT64_MAX - 9) / 10) break;
                    s = s * 10 + (v[i] - '0');
                }
                if (i == 0 || i != vlen)
                    return fail(t, DC_ERR_FORMAT, "tar: bad pax size '%.*s' in the extended header at byte %lld",
                                (int)(vlen > 40 ? 40 : vlen), v, (long long)t->ext_header_offset);
                t->chain_size = s;
            }
            p += len;
        }
    } /* 'K': the long link name of a link we skip anyway */
    free(t->ext_buf);
    t->ext_buf = NULL;
    int64_t pad = pad_of((int64_t)t->ext_len);
    if (pad)
        start_skip(t, pad, AFTER_NOTHING, 0, "padding");
    else
        t->state = ST_HEADER;
    return DC_OK;
}

/* A complete header block is in t->hdr. */
static dc_status header_done(dc_tar *t)
{
    const uint8_t *h = t->hdr;
    int64_t off = t->hdr_offset;
    int zero = 1;
    for (int i = 0; i < BLOCK && zero; i++) zero = h[i] == 0;
    if (zero) {
        if (t->chain_offset >= 0)
            return fail(t, DC_ERR_FORMAT,
                        "tar: end-of-archive block at byte %lld follows an extended header at byte %lld",
                        (long long)off, (long long)t->chain_offset);
        t->state = ST_END;
        return DC_OK;
    }
    if (!checksum_ok(h)) return fail(t, DC_ERR_FORMAT, "tar: bad header checksum at byte %lld", (long long)off);
    int64_t size = parse_size(h + 124);
    if (size < 0) return fail(t, DC_ERR_FORMAT, "tar: bad size field in the header at byte %lld", (long long)off);
    char type = (char)h[156];

    if (type == 'L' || type == 'K' || type == 'x') {
        if (size > MAX_EXT)
            return fail(t, DC_ERR_FORMAT,
                        "tar: extended header ('%c') of %lld bytes at byte %lld exceeds the %d-byte limit", type,
                        (long long)size, (long long)off, MAX_EXT);
        if (t->chain_offset < 0) t->chain_offset = off;
        t->ext_type = type;
        t->ext_len = (size_t)size;
        t->ext_fill = 0;
        t->ext_header_offset = off;
        t->ext_buf = malloc(t->ext_len + 1);
        if (!t->ext_buf) return fail(t, DC_ERR_NOMEM, "tar parser: out of memory");
        t->state = ST_EXT;
        if (size == 0) return ext_done(t);
        return DC_OK;
    }
    if (type == 'g') { /* pax global header: not part of any member */
        start_skip(t, size + pad_of(size), AFTER_NOTHING, 1, "pax global header");
        return DC_OK;
    }
    if (type == 'S')
        return fail(t, DC_ERR_FORMAT, "tar: GNU sparse member at byte %lld is not supported", (long long)off);

    /* the member's name: the chain's, or ustar prefix + name */
    int64_t first = t->chain_offset >= 0 ? t->chain_offset : off;
    char *name;
    size_t name_len;
    if (t->chain_name) {
        name = t->chain_name;
        name_len = t->chain_name_len;
        t->chain_name = NULL;
    } else {
        size_t nl = field_len(h, 100), pl = 0;
        if (!memcmp(h + 257,
                    "ustar\0"
                    "00",
                    8))
            pl = field_len(h + 345, 155);
        name_len = pl ? pl + 1 + nl : nl;
        name = malloc(name_len + 1);
        if (!name) return fail(t, DC_ERR_NOMEM, "tar parser: out of memory");
        if (pl) {
            memcpy(name, h + 345, pl);
            name[pl] = '/';
            memcpy(name + pl + 1, h, nl);
        } else {
            memcpy(name, h, nl);
        }
        name[name_len] = '\0';
    }
    if (t->chain_size >= 0) size = t->chain_size;
    chain_clear(t);

    int regular = type == '0' || type == '7' || (type == 0 && !(name_len && name[name_len - 1] == '/'));
    int no_data = type == 0 || (type >= '1' && type <= '6'); /* dirs, links, devices, fifos */
    if (!regular) {
        free(name);
        if (no_data) {
            t->state = ST_HEADER;
        } else {
            char what[64];
            snprintf(what, sizeof what, "data of the type-'%c' member at byte %lld", type, (long long)off);
            start_skip(t, size + pad_of(size), AFTER_NOTHING, 1, what);
        }
        return DC_OK;
    }
    if (size > t->max_member) {
        dc_status st =
            fail(t, DC_ERR_FORMAT, "tar: member '%.200s' at byte %lld has %lld bytes, over the %lld-byte limit", name,
                 (long long)first, (long long)size, (long long)t->max_member);
        free(name);
        return st;
    }
    t->cur.name = name;
    t->cur.name_len = name_len;
    t->cur.size = size;
    t->cur.offset = first;
    t->cur_data_offset = off + BLOCK;
    t->cur_cap = (size_t)(size < FIRST_ALLOC ? size : FIRST_ALLOC);
    t->cur.data = malloc(t->cur_cap ? t->cur_cap : 1);
    if (!t->cur.data)
        return fail(t, DC_ERR_NOMEM, "tar: out of memory for member '%.200s' (%lld bytes)", name, (long long)size);
    t->cur_fill = 0;
    t->state = ST_DATA;
    if (size == 0) return data_done(t);
    return DC_OK;
}

/* ---- the byte pump ------------------------------------------------------------------------------- */

dc_status dc_tar_feed(dc_tar *t, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    if (t->state == ST_ERROR) return DC_OK; /* reported by dc_tar_next / dc_tar_finish */
    while (len > 0) {
        size_t n = 0;
        dc_status st = DC_OK;
        switch (t->state) {
        case ST_HEADER:
            if (t->hdr_fill == 0) t->hdr_offset = t->pos;
            n = BLOCK - t->hdr_fill;
            if (n > len) n = len;
            memcpy(t->hdr + t->hdr_fill, p, n);
            t->hdr_fill += n;
            if (t->hdr_fill == BLOCK) {
                t->hdr_fill = 0;
                t->pos += (int64_t)n, p += n, len -= n;
                st = header_done(t);
                n = 0;
            }
            break;
        case ST_EXT:
            n = t->ext_len - t->ext_fill;
            if (n > len) n = len;
            memcpy(t->ext_buf + t->ext_fill, p, n);
            t->ext_fill += n;
            if (t->ext_fill == t->ext_len) {
                t->ext_buf[t->ext_len] = 0;
                t->pos += (int64_t)n, p += n, len -= n;
                st = ext_done(t);
                n = 0;
            }
            break;
        case ST_DATA: {
            size_t want = (size_t)t->cur.size - t->cur_fill;
            n = want < len ? want : len;
            if (t->cur_fill + n > t->cur_cap) { /* grow: the header's size is only believed as data comes */
                size_t cap = t->cur_cap * 2;
                if (cap < t->cur_fill + n) cap = t->cur_fill + n;
                if (cap > (size_t)t->cur.size) cap = (size_t)t->cur.size;
                uint8_t *d = realloc(t->cur.data, cap);
                if (!d) {
                    st = fail(t, DC_ERR_NOMEM, "tar: out of memory for member '%.200s' (%lld bytes)", t->cur.name,
                              (long long)t->cur.size);
                    break;
                }
                t->cur.data = d;
                t->cur_cap = cap;
            }
            memcpy(t->cur.data + t->cur_fill, p, n);
            t->cur_fill += n;
            if (t->cur_fill == (size_t)t->cur.size) {
                t->pos += (int64_t)n, p += n, len -= n;
                st = data_done(t);
                n = 0;
            }
            break;
        }
        case ST_SKIP:
            n = t->skip_left < (int64_t)len ? (size_t)t->skip_left : len;
            t->skip_left -= (int64_t)n;
            if (t->skip_left == 0) {
                t->pos += (int64_t)n, p += n, len -= n;
                n = 0;
                t->state = ST_HEADER;
                if (t->skip_after == AFTER_MEMBER) st = queue_push(t, &t->cur);
            }
            break;
        case ST_END: n = len; break;
        default: return DC_OK; /* ST_ERROR */
        }
        t->pos += (int64_t)n, p += n, len -= n;
        if (st == DC_ERR_NOMEM) return st;
        if (st != DC_OK) return DC_OK; /* a format error: sticky, reported in order by dc_tar_next */
    }
    return DC_OK;
}

dc_status dc_tar_next(dc_tar *t, dc_tar_member *m, int *have)
{
    member_clear(&t->out);
    *have = 0;
    if (t->q_len > 0) {
        t->out = t->queue[t->q_head++];
        if (--t->q_len == 0) t->q_head = 0;
        m->name = t->out.name;
        m->name_len = t->out.name_len;
        m->size = t->out.size;
        m->offset = t->out.offset;
        m->data = t->out.data;
        *have = 1;
        return DC_OK;
    }
    if (t->err) return dc_error(t->err, "%s", t->err_msg);
    return DC_OK;
}

uint8_t *dc_tar_take(dc_tar *t)
{
    uint8_t *d = t->out.data;
    t->out.data = NULL;
    return d;
}

dc_status dc_tar_finish(dc_tar *t)
{
    if (t->err) return dc_error(t->err, "%s", t->err_msg);
    long long end = (long long)t->pos;
    switch (t->state) {
    case ST_END: return DC_OK;
    case ST_HEADER:
        if (t->hdr_fill > 0) {
            int zero = 1;
            for (size_t i = 0; i < t->hdr_fill && zero; i++) zero = t->hdr[i] == 0;
            if (zero && t->chain_offset < 0) return DC_OK; /* inside the end-of-archive blocks */
            return dc_error(DC_ERR_FORMAT,
                            "truncated tar: the header at byte %lld needs %d bytes, the stream ended at byte %lld",
                            (long long)t->hdr_offset, BLOCK, end);
        }
        if (t->chain_offset >= 0)
            return dc_error(DC_ERR_FORMAT,
                            "truncated tar: the extended header at byte %lld has no member header, the stream ended at "
                            "byte %lld",
                            (long long)t->chain_offset, end);
        return DC_OK;
    case ST_EXT:
        return dc_error(DC_ERR_FORMAT,
                        "truncated tar: the extended header at byte %lld needs %zu bytes from byte %lld, the stream "
                        "ended at byte %lld",
                        (long long)t->ext_header_offset, t->ext_len, (long long)t->ext_header_offset + BLOCK, end);
    case ST_DATA:
        return dc_error(DC_ERR_FORMAT,
                        "truncated tar: member '%.200s' (header at byte %lld) needs %lld bytes from byte %lld, the "
                        "stream ended at byte %lld",
                        t->cur.name, (long long)t->cur.offset, (long long)t->cur.size, (long long)t->cur_data_offset,
                        end);
    case ST_SKIP:
        if (t->skip_after == AFTER_MEMBER)
            return dc_error(
                DC_ERR_FORMAT,
                "truncated tar: member '%.200s' (header at byte %lld) needs %lld bytes of padding up to byte "
                "%lld, the stream ended at byte %lld",
                t->cur.name, (long long)t->cur.offset, (long long)pad_of(t->cur.size),
                (long long)(t->pos + t->skip_left), end);
        return dc_error(DC_ERR_FORMAT, "truncated tar: %s needs bytes up to byte %lld, the stream ended at byte %lld",
                        t->skip_what, (long long)(t->pos + t->skip_left), end);
    default: return dc_error(t->err, "%s", t->err_msg);
    }
}

/* ---- WebDataset keys ---------------------------------------------------------------------------- */

/* webdataset's base_plus_ext is the regex  ^((?:.* /|)[^.]+)[.]([^/]*)$  (no space in it): the key is a run of
 * non-dots ending right before the first '.' of the last component, started at a component start.
 * When the last component itself starts with '.', the regex backtracks: the run is the whole
 * previous component and its '/' ("a/.x" -> "a/", "x"), if that component has no '.'. */
int dc_wds_split(const char *name, size_t name_len, size_t *key_len, const char **field)
{
    size_t s = name_len;
    while (s > 0 && name[s - 1] != '/') s--; /* start of the last component */
    const char *dot = memchr(name + s, '.', name_len - s);
    if (!dot) return 0;
    size_t d = (size_t)(dot - name);
    if (d == s) {
        if (s == 0) return 0;
        size_t p = s - 1; /* the '/' ending the previous component */
        while (p > 0 && name[p - 1] != '/') {
            if (name[p - 1] == '.') return 0;
            p--;
        }
    }
    *key_len = d;
    *field = name + d + 1;
    return 1;
}
