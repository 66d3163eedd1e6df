/* xml.c: the little XML S3 needs: find an element's text, decode entities.
 *
 * S3's replies (ListObjectsV2, errors, multipart) are flat documents of known elements, with every
 * '<' and '&' inside text escaped, so a tag search plus entity decoding reads them exactly; a full
 * parser (and a dependency) would buy nothing. Keys may hold any character, so text is always
 * decoded (&amp; &lt; &gt; &quot; &apos; and numeric references, written out as UTF-8). */
#include <stdlib.h>
#include <string.h>

#include "s3-impl.h"

/* The first "<tag" in [s, end) followed by '>', '/' or whitespace (so <Key> does not match <KeyCount>). */
static const char *find_open(const char *s, const char *end, const char *tag, size_t tl)
{
    for (const char *p = s; p + tl + 1 < end; p++) {
        p = memchr(p, '<', (size_t)(end - p));
        if (!p || p + tl + 1 >= end) return NULL;
        if (!memcmp(p + 1, tag, tl)) {
            char c = p[tl + 1];
            if (c == '>' || c == '/' || c == ' ' || c == '\t' || c == '\n' || c == '\r') return p;
        }
    }
    return NULL;
}

int s3_xml_find(const char *s, const char *end, const char *tag, const char **in_s, const char **in_e,
                const char **after)
{
    if (!s || s >= end) return 0;
    size_t tl = strlen(tag);
    const char *o = find_open(s, end, tag, tl);
    if (!o) return 0;
    const char *gt = memchr(o, '>', (size_t)(end - o));
    if (!gt) return 0;
    if (gt[-1] == '/') { /* <tag/> */
        *in_s = *in_e = gt + 1;
        if (after) *after = gt + 1;
        return 1;
    }
    const char *body = gt + 1;
    for (const char *p = body; p + tl + 3 <= end; p++) {
        p = memchr(p, '<', (size_t)(end - p));
        if (!p || p + tl + 3 > end) return 0;
        if (p[1] == '/' && !memcmp(p + 2, tag, tl) && p[tl + 2] == '>') {
            *in_s = body;
            *in_e = p;
            if (after) *after = p + tl + 3;
            return 1;
        }
    }
    return 0;
}

static size_t put_utf8(char *d, unsigned long cp)
{
    if (cp < 0x80) {
        d[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        d[0] = (char)(0xC0 | (cp >> 6));
        d[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        d[0] = (char)(0xE0 | (cp >> 12));
        d[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        d[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    d[0] = (char)(0xF0 | (cp >> 18));
    d[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    d[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    d[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

char *s3_xml_text(const char *s, const char *e)
{
    size_t n = (size_t)(e - s);
    char *d = malloc(n + 1); /* decoding never grows the text */
    if (!d) return NULL;
    size_t k = 0;
    static const struct {
        const char *name;
        char c;
    } ents[] = { { "amp;", '&' }, { "lt;", '<' }, { "gt;", '>' }, { "quot;", '"' }, { "apos;", '\'' } };
    for (const char *p = s; p < e; p++) {
        if (*p != '&') {
            d[k++] = *p;
            continue;
        }
        size_t rest = (size_t)(e - p - 1);
        int done = 0;
        for (size_t j = 0; j < sizeof ents / sizeof ents[0] && !done; j++) {
            size_t l = strlen(ents[j].name);
            if (rest >= l && !memcmp(p + 1, ents[j].name, l)) {
                d[k++] = ents[j].c;
                p += l;
                done = 1;
            }
        }
        if (!done && rest >= 3 && p[1] == '#') {
            const char *q = p + 2;
            int base = 10;
            if (*q == 'x' || *q == 'X') {
                base = 16;
                q++;
            }
            char *stop;
            unsigned long cp = strtoul(q, &stop, base);
            if (stop > q && stop < e && *stop == ';' && cp > 0 && cp <= 0x10FFFF) {
                size_t w = put_utf8(d + k, cp);
                if ((size_t)(stop - p + 1) >= w) { /* the reference is never shorter than its UTF-8 */
                    k += w;
                    p = stop;
                    done = 1;
                }
            }
        }
        if (!done) d[k++] = '&';
    }
    d[k] = '\0';
    return d;
}

int s3_xml_get(const char *s, const char *end, const char *tag, char *out, size_t cap)
{
    const char *a, *b;
    if (!s3_xml_find(s, end, tag, &a, &b, NULL)) return 0;
    char *t = s3_xml_text(a, b);
    if (!t) return 0;
    if (cap) {
        size_t n = strlen(t);
        if (n >= cap) n = cap - 1;
        memcpy(out, t, n);
        out[n] = '\0';
    }
    free(t);
    return 1;
}
