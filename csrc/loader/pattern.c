/* pattern.c: brace expansion of shard URL patterns, with the `braceexpand` package's meaning
 * (webdataset's): "train-{000000..000127}.tar", "{a,b}", "{a..e}", "{0..20..5}", nested and
 * several groups (their Cartesian product, in order), "\{" escapes. A group that is neither a
 * list (no top-level comma) nor a range stays literal, braces included, as braceexpand leaves it.
 * Unbalanced braces are an error: in a shard list they are always a typo. */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shards.h"

typedef struct {
    char **v;
    int64_t n, cap;
} strlist;

typedef struct {
    const char *pat;
    int64_t max;
    dc_status err;
} ctx;

static void sl_free(strlist *l)
{
    for (int64_t i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

static int sl_push(ctx *c, strlist *l, char *s)
{
    if (!s) {
        c->err = dc_error(DC_ERR_NOMEM, "out of memory expanding a shard pattern");
        return 0;
    }
    if (l->n >= c->max) {
        free(s);
        c->err =
            dc_error(DC_ERR_VALUE, "shard pattern '%.200s' expands to more than %lld names", c->pat, (long long)c->max);
        return 0;
    }
    if (l->n == l->cap) {
        int64_t cap = l->cap ? 2 * l->cap : 8;
        char **v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v) {
            free(s);
            c->err = dc_error(DC_ERR_NOMEM, "out of memory expanding a shard pattern");
            return 0;
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = s;
    return 1;
}

static char *cat(const char *a, const char *b, size_t blen)
{
    size_t alen = strlen(a);
    char *s = malloc(alen + blen + 1);
    if (!s) return NULL;
    memcpy(s, a, alen);
    memcpy(s + alen, b, blen);
    s[alen + blen] = 0;
    return s;
}

/* out = every element of out followed by every element of tail (tail consumed). */
static int product(ctx *c, strlist *out, strlist *tail)
{
    strlist r = { 0 };
    for (int64_t i = 0; i < out->n; i++)
        for (int64_t j = 0; j < tail->n; j++)
            if (!sl_push(c, &r, cat(out->v[i], tail->v[j], strlen(tail->v[j])))) {
                sl_free(&r);
                sl_free(tail);
                return 0;
            }
    sl_free(out);
    sl_free(tail);
    *out = r;
    return 1;
}

/* The matching '}' of the '{' at s[i] within [i, end), or -1. */
static int64_t match_brace(const char *s, int64_t i, int64_t end)
{
    int depth = 0;
    for (int64_t k = i; k < end; k++) {
        if (s[k] == '\\' && k + 1 < end) {
            k++;
            continue;
        }
        if (s[k] == '{')
            depth++;
        else if (s[k] == '}' && --depth == 0)
            return k;
    }
    return -1;
}

static int expand(ctx *c, const char *s, int64_t b, int64_t e, strlist *out);

static int is_int(const char *s, int64_t b, int64_t e)
{
    if (b < e && s[b] == '-') b++;
    if (b >= e || e - b > 18) return 0;
    for (int64_t k = b; k < e; k++)
        if (!isdigit((unsigned char)s[k])) return 0;
    return 1;
}

/* A range group's body s[b, e): "x..y" or "x..y..step" of ints or single letters. 1 expanded,
 * 0 not a range (caller treats the group otherwise), -1 error. */
static int try_range(ctx *c, const char *s, int64_t b, int64_t e, strlist *out)
{
    int64_t d1 = -1, d2 = -1;
    for (int64_t k = b; k + 1 < e; k++)
        if (s[k] == '.' && s[k + 1] == '.') {
            if (d1 < 0)
                d1 = k;
            else if (d2 < 0 && k >= d1 + 2)
                d2 = k;
        }
    if (d1 < 0) return 0;
    int64_t end_e = d2 >= 0 ? d2 : e;
    long long step = 1;
    if (d2 >= 0) {
        if (!is_int(s, d2 + 2, e)) return 0;
        step = strtoll(s + d2 + 2, NULL, 10);
        if (step < 0) step = -step;
        if (step == 0) step = 1;
    }
    int64_t a0 = b, a1 = d1, z0 = d1 + 2, z1 = end_e;
    if (is_int(s, a0, a1) && is_int(s, z0, z1)) {
        long long lo = strtoll(s + a0, NULL, 10), hi = strtoll(s + z0, NULL, 10);
        int pad = ((s[a0] == '0' || (s[a0] == '-' && s[a0 + 1] == '0')) && a1 - a0 > 1) ||
                  ((s[z0] == '0' || (s[z0] == '-' && s[z0 + 1] == '0')) && z1 - z0 > 1);
        int width = pad ? (int)(a1 - a0 > z1 - z0 ? a1 - a0 : z1 - z0) : 0;
        long long dir = lo <= hi ? step : -step;
        for (long long v = lo; lo <= hi ? v <= hi : v >= hi; v += dir) {
            char buf[48];
            if (v < 0 && width)
                snprintf(buf, sizeof buf, "-%0*lld", width - 1, -v);
            else
                snprintf(buf, sizeof buf, "%0*lld", width, v);
            if (!sl_push(c, out, strdup(buf))) return -1;
        }
        return 1;
    }
    if (a1 - a0 == 1 && z1 - z0 == 1 && isalpha((unsigned char)s[a0]) && isalpha((unsigned char)s[z0])) {
        int lo = (unsigned char)s[a0], hi = (unsigned char)s[z0];
        int dir = lo <= hi ? (int)step : -(int)step;
        for (int v = lo; lo <= hi ? v <= hi : v >= hi; v += dir) {
            char buf[2] = { (char)v, 0 };
            if (!sl_push(c, out, strdup(buf))) return -1;
        }
        return 1;
    }
    return 0;
}

/* A group "{...}" whose body is s[b, e). */
static int expand_group(ctx *c, const char *s, int64_t b, int64_t e, strlist *out)
{
    /* top-level commas */
    int depth = 0, commas = 0;
    for (int64_t k = b; k < e; k++) {
        if (s[k] == '\\' && k + 1 < e) {
            k++;
            continue;
        }
        if (s[k] == '{')
            depth++;
        else if (s[k] == '}')
            depth--;
        else if (s[k] == ',' && depth == 0)
            commas++;
    }
    if (commas) {
        int64_t start = b;
        depth = 0;
        for (int64_t k = b; k <= e; k++) {
            if (k < e && s[k] == '\\' && k + 1 < e) {
                k++;
                continue;
            }
            if (k < e && s[k] == '{')
                depth++;
            else if (k < e && s[k] == '}')
                depth--;
            else if (k == e || (s[k] == ',' && depth == 0)) {
                strlist alt = { 0 };
                if (!expand(c, s, start, k, &alt)) {
                    sl_free(&alt);
                    return 0;
                }
                for (int64_t i = 0; i < alt.n; i++) {
                    if (!sl_push(c, out, alt.v[i])) {
                        alt.v[i] = NULL;
                        for (int64_t j = i + 1; j < alt.n; j++) free(alt.v[j]);
                        free(alt.v);
                        return 0;
                    }
                }
                free(alt.v);
                start = k + 1;
            }
        }
        return 1;
    }
    int r = try_range(c, s, b, e, out);
    if (r) return r > 0;
    /* neither: literal braces around the expanded body */
    strlist body = { 0 };
    if (!expand(c, s, b, e, &body)) {
        sl_free(&body);
        return 0;
    }
    for (int64_t i = 0; i < body.n; i++) {
        size_t n = strlen(body.v[i]);
        char *t = malloc(n + 3);
        if (t) {
            t[0] = '{';
            memcpy(t + 1, body.v[i], n);
            t[n + 1] = '}';
            t[n + 2] = 0;
        }
        if (!sl_push(c, out, t)) {
            sl_free(&body);
            return 0;
        }
    }
    sl_free(&body);
    return 1;
}

/* s[b, e): literals and groups, expanded into out (Cartesian product). */
static int expand(ctx *c, const char *s, int64_t b, int64_t e, strlist *out)
{
    if (!sl_push(c, out, strdup(""))) return 0;
    int64_t k = b;
    while (k < e) {
        /* a literal run */
        char *lit = malloc((size_t)(e - k) + 1);
        if (!lit) {
            c->err = dc_error(DC_ERR_NOMEM, "out of memory");
            return 0;
        }
        size_t n = 0;
        while (k < e && s[k] != '{') {
            if (s[k] == '}') {
                free(lit);
                c->err = dc_error(DC_ERR_VALUE, "shard pattern '%.200s': unmatched '}' at position %lld", c->pat,
                                  (long long)k);
                return 0;
            }
            if (s[k] == '\\' && k + 1 < e &&
                (s[k + 1] == '{' || s[k + 1] == '}' || s[k + 1] == ',' || s[k + 1] == '\\')) {
                k++;
            }
            lit[n++] = s[k++];
        }
        if (n) {
            strlist t = { 0 };
            if (!sl_push(c, &t, strndup(lit, n)) || !product(c, out, &t)) {
                free(lit);
                return 0;
            }
        }
        free(lit);
        if (k >= e) break;
        int64_t close = match_brace(s, k, e);
        if (close < 0) {
            c->err =
                dc_error(DC_ERR_VALUE, "shard pattern '%.200s': unmatched '{' at position %lld", c->pat, (long long)k);
            return 0;
        }
        strlist g = { 0 };
        if (!expand_group(c, s, k + 1, close, &g)) {
            sl_free(&g);
            return 0;
        }
        if (!product(c, out, &g)) return 0;
        k = close + 1;
    }
    return 1;
}

dc_status dc_pattern_expand(const char *pattern, int64_t max_count, char ***out, int64_t *count)
{
    *out = NULL;
    *count = 0;
    ctx c = { pattern, max_count > 0 ? max_count : 10000000, DC_OK };
    strlist l = { 0 };
    if (!expand(&c, pattern, 0, (int64_t)strlen(pattern), &l)) {
        sl_free(&l);
        return c.err ? c.err : dc_error(DC_ERR_VALUE, "cannot expand shard pattern '%.200s'", pattern);
    }
    *out = l.v;
    *count = l.n;
    return DC_OK;
}

void dc_pattern_free(char **list, int64_t count)
{
    if (!list) return;
    for (int64_t i = 0; i < count; i++) free(list[i]);
    free(list);
}
