/* s3-impl.h: what the S3 client's own files share (not part of the public interface in s3.h):
 * hashing and URI encoding (sigv4.c), a small growable byte buffer, and the tiny XML reader
 * (xml.c) that S3's responses need. Nothing here is used outside csrc/s3/. */
#ifndef DC_S3_IMPL_H
#define DC_S3_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "s3.h"

/* A growable byte buffer, always NUL-terminated when non-empty (so XML can be scanned as text). */
typedef struct {
    char *data;
    size_t len, cap;
} s3_buf;

/* 0 on success, -1 when out of memory. */
int s3_buf_append(s3_buf *b, const void *p, size_t n);
int s3_buf_appendf(s3_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void s3_buf_free(s3_buf *b);

/* Lowercase hex SHA-256 of bytes into out (65 bytes with the NUL). */
void s3_sha256_hex(const void *data, size_t len, char out[65]);

/* URI-encode per SigV4: unreserved A-Za-z0-9-._~ kept, everything else %XX (uppercase); '/' kept
 * when keep_slash. Appends to b; -1 when out of memory. */
int s3_uri_encode(s3_buf *b, const char *s, size_t n, int keep_slash);

/* One query parameter (raw, unencoded), and the canonical query of a list of them: each name and
 * value encoded, sorted by name then value, joined with '&' (a parameter with no value as "name=").
 * The same string is sent on the wire, so the server sees exactly what was signed. */
typedef struct {
    const char *name, *value; /* value NULL: "name=" */
} s3_param;
int s3_canonical_query(s3_buf *b, const s3_param *params, int n);

/* --- xml.c: just enough XML for S3's replies -------------------------------------------------- */

/* The inner text span of the first <tag>...</tag> (or <tag/>, an empty span) in [s, end); 1 when
 * found (*in_s, *in_e set; *after points past the closing tag), 0 when not. */
int s3_xml_find(const char *s, const char *end, const char *tag, const char **in_s, const char **in_e,
                const char **after);
/* The entity-decoded (&amp; &lt; &gt; &quot; &apos; &#N; &#xH;) copy of [s, e), malloc'd; NULL when
 * out of memory. */
char *s3_xml_text(const char *s, const char *e);
/* Decoded text of the first <tag> in [s, end) into out (truncated to cap); 1 when found. */
int s3_xml_get(const char *s, const char *end, const char *tag, char *out, size_t cap);

#endif
