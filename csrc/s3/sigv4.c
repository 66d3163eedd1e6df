/* sigv4.c: AWS Signature Version 4 on OpenSSL's libcrypto, plus the byte buffer and URI encoding
 * the client builds its requests with.
 *
 * Why our own signer: Debian 12's libcurl (7.88) has CURLOPT_AWS_SIGV4, but its S3
 * canonicalisation (query sorting, percent-encoding, path encoding) was only fixed in 8.3-8.9, and
 * a key with a space or '+' would be signed differently from how it is sent. Here the canonical
 * URI and query are built once and the very same strings go on the wire.
 *
 * S3 flavour: the path is encoded once (not twice as for other services), each segment on its
 * own with '/' kept; the payload hash is the body's SHA-256 (or UNSIGNED-PAYLOAD). The signing key
 * and signature live in stack buffers that are wiped before returning. */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "s3-impl.h"

/* --- buffer ------------------------------------------------------------------------------------ */

static int buf_reserve(s3_buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

int s3_buf_append(s3_buf *b, const void *p, size_t n)
{
    if (buf_reserve(b, n)) return -1;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int s3_buf_appendf(s3_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || buf_reserve(b, (size_t)n)) return -1;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void s3_buf_free(s3_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* --- hashing and encoding ---------------------------------------------------------------------- */

static void hex(const unsigned char *d, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[d[i] >> 4];
        out[2 * i + 1] = digits[d[i] & 15];
    }
    out[2 * n] = '\0';
}

void s3_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(data, len, md);
    hex(md, sizeof md, out);
}

static void hmac(const unsigned char *key, size_t klen, const char *msg, size_t mlen, unsigned char out[32])
{
    unsigned char md[32]; /* key and out may be the same buffer */
    unsigned int n = 32;
    HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)msg, mlen, md, &n);
    memcpy(out, md, 32);
    OPENSSL_cleanse(md, sizeof md);
}

int s3_uri_encode(s3_buf *b, const char *s, size_t n, int keep_slash)
{
    static const char digits[] = "0123456789ABCDEF";
    if (buf_reserve(b, 3 * n)) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
            b->data[b->len++] = (char)c;
        } else {
            b->data[b->len++] = '%';
            b->data[b->len++] = digits[c >> 4];
            b->data[b->len++] = digits[c & 15];
        }
    }
    b->data[b->len] = '\0';
    return 0;
}

typedef struct {
    char *name, *value; /* encoded */
} enc_pair;

static int cmp_pair(const void *a, const void *b)
{
    const enc_pair *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : strcmp(x->value, y->value);
}

static char *encode_dup(const char *s, size_t n)
{
    s3_buf b = { 0 };
    if (s3_uri_encode(&b, s, n, 0)) return NULL;
    if (!b.data) return strdup("");
    return b.data;
}

/* Sort and join already-built pairs (frees them). */
static int join_pairs(s3_buf *b, enc_pair *v, int n, int ok)
{
    if (ok) qsort(v, (size_t)n, sizeof *v, cmp_pair);
    for (int i = 0; i < n && ok; i++)
        if (s3_buf_appendf(b, "%s%s=%s", i ? "&" : "", v[i].name, v[i].value)) ok = 0;
    for (int i = 0; i < n; i++) {
        free(v[i].name);
        free(v[i].value);
    }
    free(v);
    if (ok && !b->data) ok = s3_buf_append(b, "", 0) == 0;
    return ok ? 0 : -1;
}

int s3_canonical_query(s3_buf *b, const s3_param *params, int n)
{
    enc_pair *v = calloc((size_t)n + 1, sizeof *v);
    if (!v) return -1;
    int ok = 1;
    for (int i = 0; i < n; i++) {
        const char *val = params[i].value ? params[i].value : "";
        v[i].name = encode_dup(params[i].name, strlen(params[i].name));
        v[i].value = encode_dup(val, strlen(val));
        if (!v[i].name || !v[i].value) ok = 0;
    }
    return join_pairs(b, v, n, ok);
}

static int unhex(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decode [s, s+n) then encode it canonically: a raw or an already-encoded query part
 * canonicalises the same way. */
static char *reencode(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (!d) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n && unhex(s[i + 1]) >= 0 && unhex(s[i + 2]) >= 0) {
            d[k++] = (char)(unhex(s[i + 1]) * 16 + unhex(s[i + 2]));
            i += 2;
        } else {
            d[k++] = s[i];
        }
    }
    char *e = encode_dup(d, k);
    free(d);
    return e;
}

static int canonical_raw_query(s3_buf *b, const char *q)
{
    if (!q || !*q) return s3_buf_append(b, "", 0);
    int cap = 1;
    for (const char *p = q; *p; p++) cap += *p == '&';
    enc_pair *v = calloc((size_t)cap, sizeof *v);
    if (!v) return -1;
    int n = 0, ok = 1;
    for (const char *p = q; ok;) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        if (len) {
            const char *eq = memchr(p, '=', len);
            size_t nl = eq ? (size_t)(eq - p) : len;
            v[n].name = reencode(p, nl);
            v[n].value = eq ? reencode(eq + 1, len - nl - 1) : strdup("");
            if (!v[n].name || !v[n].value) ok = 0;
            n++;
        }
        if (!amp) break;
        p = amp + 1;
    }
    return join_pairs(b, v, n, ok);
}

/* --- canonical headers ------------------------------------------------------------------------- */

typedef struct {
    char *name;  /* lowercase */
    char *value; /* trimmed, inner runs of spaces collapsed */
} header;

static int cmp_header(const void *a, const void *b)
{
    return strcmp(((const header *)a)->name, ((const header *)b)->name);
}

static int parse_header(const char *line, header *h)
{
    const char *colon = strchr(line, ':');
    if (!colon || colon == line) return -1;
    size_t nl = (size_t)(colon - line);
    while (nl && isspace((unsigned char)line[nl - 1])) nl--;
    h->name = malloc(nl + 1);
    h->value = malloc(strlen(colon) + 1);
    if (!h->name || !h->value) return -2;
    for (size_t i = 0; i < nl; i++) h->name[i] = (char)tolower((unsigned char)line[i]);
    h->name[nl] = '\0';
    const char *v = colon + 1;
    size_t k = 0;
    int space = 0;
    while (isspace((unsigned char)*v)) v++;
    for (; *v; v++) {
        if (isspace((unsigned char)*v)) {
            space = 1;
            continue;
        }
        if (space && k) h->value[k++] = ' ';
        space = 0;
        h->value[k++] = *v;
    }
    h->value[k] = '\0';
    return 0;
}

static dc_status copy_out(const s3_buf *b, char *out, size_t cap, const char *what)
{
    if (!out) return DC_OK;
    if (b->len + 1 > cap)
        return dc_error(DC_ERR_VALUE, "dc_sigv4_sign: %s needs %zu bytes, got %zu", what, b->len + 1, cap);
    memcpy(out, b->data ? b->data : "", b->len + 1);
    return DC_OK;
}

dc_status dc_sigv4_sign(const dc_sigv4_request *r, char *authorization, size_t auth_cap, char *canonical,
                        size_t canonical_cap, char *string_to_sign, size_t sts_cap)
{
    if (!r || !r->method || !r->path || !r->headers || !r->payload_hash || !r->amz_date || !r->region || !r->service ||
        !r->access_key || !r->secret_key)
        return dc_error(DC_ERR_VALUE, "dc_sigv4_sign: method, path, headers, payload_hash, amz_date, region, "
                                      "service and both keys are required");
    if (strlen(r->amz_date) != 16 || r->amz_date[8] != 'T')
        return dc_error(DC_ERR_VALUE, "dc_sigv4_sign: amz_date must look like 20150830T123600Z");
    dc_status st = DC_OK;
    s3_buf creq = { 0 }, sts = { 0 }, auth = { 0 }, signed_names = { 0 };
    int nh = 0;
    while (r->headers[nh]) nh++;
    header *hs = calloc((size_t)nh + 1, sizeof *hs);
    if (!hs) return dc_error(DC_ERR_NOMEM, "dc_sigv4_sign: out of memory");
    for (int i = 0; i < nh; i++) {
        int rc = parse_header(r->headers[i], &hs[i]);
        if (rc) {
            st = rc == -2 ? dc_error(DC_ERR_NOMEM, "dc_sigv4_sign: out of memory")
                          : dc_error(DC_ERR_VALUE, "dc_sigv4_sign: header %d is not 'Name: value'", i);
            nh = i + 1;
            goto done;
        }
    }
    /* stable order by name (insertion sort keeps repeated names in their given order) */
    for (int i = 1; i < nh; i++)
        for (int j = i; j > 0 && cmp_header(&hs[j - 1], &hs[j]) > 0; j--) {
            header t = hs[j];
            hs[j] = hs[j - 1];
            hs[j - 1] = t;
        }
    int oom = s3_buf_appendf(&creq, "%s\n", r->method);
    const char *path = *r->path ? r->path : "/";
    if (*path != '/') oom |= s3_buf_append(&creq, "/", 1);
    oom |= s3_uri_encode(&creq, path, strlen(path), 1);
    oom |= s3_buf_append(&creq, "\n", 1);
    oom |= canonical_raw_query(&creq, r->query);
    oom |= s3_buf_append(&creq, "\n", 1);
    for (int i = 0; i < nh; i++) {
        if (i && !strcmp(hs[i].name, hs[i - 1].name)) {
            /* repeated header: values joined with ',' on the line already written */
            creq.len--; /* drop the '\n' */
            oom |= s3_buf_appendf(&creq, ",%s\n", hs[i].value);
            continue;
        }
        oom |= s3_buf_appendf(&creq, "%s:%s\n", hs[i].name, hs[i].value);
        oom |= s3_buf_appendf(&signed_names, "%s%s", signed_names.len ? ";" : "", hs[i].name);
    }
    oom |= s3_buf_appendf(&creq, "\n%s\n%s", signed_names.data ? signed_names.data : "", r->payload_hash);
    if (oom) {
        st = dc_error(DC_ERR_NOMEM, "dc_sigv4_sign: out of memory");
        goto done;
    }
    char creq_hash[65], date[9];
    s3_sha256_hex(creq.data, creq.len, creq_hash);
    memcpy(date, r->amz_date, 8);
    date[8] = '\0';
    oom |= s3_buf_appendf(&sts, "AWS4-HMAC-SHA256\n%s\n%s/%s/%s/aws4_request\n%s", r->amz_date, date, r->region,
                          r->service, creq_hash);

    /* signing key: HMAC chain from "AWS4" + secret over date, region, service, "aws4_request" */
    size_t sl = strlen(r->secret_key);
    unsigned char *k0 = malloc(sl + 4);
    unsigned char k[32], sig[32];
    char sig_hex[65];
    if (!k0 || oom) {
        free(k0);
        st = dc_error(DC_ERR_NOMEM, "dc_sigv4_sign: out of memory");
        goto done;
    }
    memcpy(k0, "AWS4", 4);
    memcpy(k0 + 4, r->secret_key, sl);
    hmac(k0, sl + 4, date, 8, k);
    OPENSSL_cleanse(k0, sl + 4);
    free(k0);
    hmac(k, 32, r->region, strlen(r->region), k);
    hmac(k, 32, r->service, strlen(r->service), k);
    hmac(k, 32, "aws4_request", 12, k);
    hmac(k, 32, sts.data, sts.len, sig);
    hex(sig, 32, sig_hex);
    OPENSSL_cleanse(k, sizeof k);
    OPENSSL_cleanse(sig, sizeof sig);
    if (s3_buf_appendf(&auth, "AWS4-HMAC-SHA256 Credential=%s/%s/%s/%s/aws4_request,SignedHeaders=%s,Signature=%s",
                       r->access_key, date, r->region, r->service, signed_names.data, sig_hex)) {
        st = dc_error(DC_ERR_NOMEM, "dc_sigv4_sign: out of memory");
    }
    OPENSSL_cleanse(sig_hex, sizeof sig_hex);
    if (!st) st = copy_out(&auth, authorization, auth_cap, "the Authorization header");
    if (!st) st = copy_out(&creq, canonical, canonical_cap, "the canonical request");
    if (!st) st = copy_out(&sts, string_to_sign, sts_cap, "the string to sign");
done:
    for (int i = 0; i < nh; i++) {
        free(hs[i].name);
        free(hs[i].value);
    }
    free(hs);
    if (auth.data) OPENSSL_cleanse(auth.data, auth.len);
    s3_buf_free(&auth);
    s3_buf_free(&creq);
    s3_buf_free(&sts);
    s3_buf_free(&signed_names);
    return st;
}
