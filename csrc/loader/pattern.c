/* pattern.c: brace expansion of shard URL patterns, with the semantics of the `braceexpand`
 * package (what webdataset users write: "s3://b/train-{000000..001023}.tar").
 *
 * The package's rules, followed to the letter so a pattern expands the same in C and Python:
 *   - a top-level scan pairs braces (a backslash skips the next character); a group whose body is
 *     an integer range "a..b[..s]", a letter range "x..y[..s]" or a comma list becomes that set;
 *     any other group stays literal ("{" + its expanded body + "}");
 *   - integer ranges are padded to the longer end's width when either end (other than "0"/"-0")
 *     starts with "0" or "-0"; the step's sign is ignored and a 0 step means 1; ranges run down
 *     as well as up and include both ends (as far as the step reaches);
 *   - letter ranges run over "A..Za..z";
 *   - several groups multiply out in order (the first varies slowest);
 *   - after expansion "\c" becomes "c" (a backslash before a newline or at the end stays);
 *   - braces that do not balance when the pattern ends are an error (a stray "}" is not, as long
 *     as a later "{" brings the count back to zero, as in the package).
 * Nesting is limited to MAX_DEPTH levels (deeper: DC_ERR_VALUE) so the recursion stays small.
 * The result count is computed before anything is built, so a limit is enforced up front. */
#include "shards.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH     100
#define DEFAULT_COUNT 10000000

/* A string list. */
typedef struct {
    char **v;
    size_t *len;
    int64_t n, cap;
} strlist;

static void list_free(strlist *l)
{
    for (int64_t i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    free(l->len);
    memset(l, 0, sizeof *l);
}

static int list_push(strlist *l, char *s, size_t len)
{
    if (l->n == l->cap) {
        int64_t cap = l->cap ? l->cap * 2 : 8;
        char **v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v) return 0;
        l->v = v;
        size_t *ln = realloc(l->len, (size_t)cap * sizeof *ln);
        if (!ln) return 0;
        l->len = ln;
        l->cap = cap;
    }
    l->v[l->n] = s;
    l->len[l->n++] = len;
    return 1;
}

static char *dup_n(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

/* The parse runs twice: once counting (out == NULL), once building. */
typedef struct {
    const char *pattern; /* the whole pattern, for messages */
    int64_t max_count;
    dc_status st;
} ctx;

static int64_t sat_add(int64_t a, int64_t b, int64_t cap)
{
    return a > cap - b ? cap + 1 : a + b;
}
static int64_t sat_mul(int64_t a, int64_t b, int64_t cap)
{
    if (a == 0 || b == 0) return 0;
    return a > cap / b ? cap + 1 : a * b;
}

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/* Python's regex `$` also matches before one trailing newline. */
static size_t strip_nl(const char *s, size_t n)
{
    return n > 0 && s[n - 1] == '\n' ? n - 1 : n;
}

/* "-?\d+" at s[*i]: advances *i past it; *de is where it ends. */
static int scan_int(const char *s, size_t n, size_t *i, size_t *de)
{
    size_t j = *i;
    if (j < n && s[j] == '-') j++;
    size_t d0 = j;
    while (j < n && s[j] >= '0' && s[j] <= '9') j++;
    if (j == d0) return 0;
    *de = j;
    *i = j;
    return 1;
}

static int is_dotdot(const char *s, size_t n, size_t i)
{
    return i + 1 < n && s[i] == '.' && s[i + 1] == '.';
}

/* An optional "..-?\d+" step at s[*i] through the end; 1 when the syntax matches. */
static int scan_step(const char *s, size_t n, size_t i, int64_t *step)
{
    *step = 1;
    if (i == n) return 1;
    if (!is_dotdot(s, n, i)) return 0;
    i += 2;
    if (i < n && s[i] == '-') i++;
    size_t d0 = i;
    int64_t v = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        if (v > (INT64_MAX - 9) / 10)
            v = INT64_MAX; /* a step past every range: only the start */
        else if (v != INT64_MAX)
            v = v * 10 + (s[i] - '0');
        i++;
    }
    if (i == d0 || i != n) return 0;
    *step = v ? v : 1;
    return 1;
}

static int parse_i64(const char *s, size_t n, int64_t *out)
{
    size_t i = 0;
    int neg = 0;
    if (s[0] == '-') neg = 1, i = 1;
    int64_t v = 0;
    for (; i < n; i++) {
        if (v > (INT64_MAX - 9) / 10) return 0;
        v = v * 10 + (s[i] - '0');
    }
    *out = neg ? -v : v;
    return 1;
}

typedef struct {
    int kind; /* 0: not a range, 1: integers, 2: letters */
    int64_t a, b, step;
    int pad;
} range;

static int match_range(ctx *c, const char *e, size_t en, range *r)
{
    r->kind = 0;
    size_t n = strip_nl(e, en);
    /* integers */
    size_t i = 0, ae, be;
    if (scan_int(e, n, &i, &ae) && is_dotdot(e, n, i)) {
        size_t b0 = i + 2, j = b0;
        if (scan_int(e, n, &j, &be)) {
            int64_t step;
            if (scan_step(e, n, j, &step)) {
                if (!parse_i64(e, ae, &r->a) || !parse_i64(e + b0, be - b0, &r->b)) {
                    c->st = dc_error(DC_ERR_VALUE, "pattern '%.200s': range '%.*s' has numbers too large", c->pattern,
                                     (int)(en > 100 ? 100 : en), e);
                    return -1;
                }
                r->step = step;
                const char *ends[2] = { e, e + b0 };
                size_t lens[2] = { ae, be - b0 };
                int padded = 0;
                for (int k = 0; k < 2; k++) {
                    const char *t = ends[k];
                    size_t l = lens[k];
                    int is_zero = (l == 1 && t[0] == '0') || (l == 2 && t[0] == '-' && t[1] == '0');
                    if (!is_zero && (t[0] == '0' || (l > 1 && t[0] == '-' && t[1] == '0'))) padded = 1;
                }
                r->pad = padded ? (int)(lens[0] > lens[1] ? lens[0] : lens[1]) : 0;
                if (r->pad > 64) {
                    c->st = dc_error(DC_ERR_VALUE, "pattern '%.200s': range padding of %d digits", c->pattern, r->pad);
                    return -1;
                }
                r->kind = 1;
                return 1;
            }
        }
    }
    /* letters */
    if (n >= 4 && strchr(alphabet, e[0]) && e[0] && is_dotdot(e, n, 1) && e[3] && strchr(alphabet, e[3])) {
        int64_t step;
        if (scan_step(e, n, 4, &step)) {
            r->a = strchr(alphabet, e[0]) - alphabet;
            r->b = strchr(alphabet, e[3]) - alphabet;
            r->step = step;
            r->kind = 2;
            return 1;
        }
    }
    return 0;
}

static int64_t range_count(const range *r)
{
    uint64_t span = r->a < r->b ? (uint64_t)r->b - (uint64_t)r->a : (uint64_t)r->a - (uint64_t)r->b;
    uint64_t cnt = span / (uint64_t)r->step + 1;
    return cnt > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)cnt;
}

/* Values of a range into `out`. */
static int range_values(const range *r, strlist *out)
{
    int64_t cnt = range_count(r);
    int up = r->a < r->b;
    for (int64_t k = 0; k < cnt; k++) {
        char buf[96];
        int len;
        if (r->kind == 1) {
            uint64_t dv = (uint64_t)k * (uint64_t)r->step;
            int64_t v = (int64_t)(up ? (uint64_t)r->a + dv : (uint64_t)r->a - dv);
            len = snprintf(buf, sizeof buf, "%0*lld", r->pad, (long long)v);
        } else {
            int64_t v = up ? r->a + k * r->step : r->a - k * r->step;
            buf[0] = alphabet[v];
            buf[1] = '\0';
            len = 1;
        }
        char *s = dup_n(buf, (size_t)len);
        if (!s || !list_push(out, s, (size_t)len)) {
            free(s);
            return 0;
        }
    }
    return 1;
}

static int64_t pattern_run(ctx *c, const char *p, size_t n, int depth, strlist *out);

/* A group body: a range, a comma list, or neither (0). Count (or build into out) its values. */
static int64_t expression_run(ctx *c, const char *e, size_t n, int depth, strlist *out, int *is_set)
{
    range r;
    int m = match_range(c, e, n, &r);
    if (m < 0) return -1;
    if (m == 1) {
        *is_set = 1;
        int64_t cnt = range_count(&r);
        if (cnt > c->max_count) return c->max_count + 1;
        if (out && !range_values(&r, out)) return -1;
        return cnt;
    }
    /* a sequence: split at top-level commas */
    size_t commas = 0;
    int d = 0;
    for (size_t i = 0; i < n; i++) {
        if (e[i] == '\\') {
            i++; /* skips the escaped character */
            continue;
        }
        if (e[i] == '{')
            d++;
        else if (e[i] == '}')
            d--;
        else if (e[i] == ',' && d == 0)
            commas++;
    }
    if (d != 0 || commas == 0) {
        *is_set = 0;
        return 0;
    }
    *is_set = 1;
    int64_t total = 0;
    size_t start = 0, i = 0;
    d = 0;
    for (;;) {
        int cut = i >= n; /* the part after the last comma (a trailing backslash may step past n) */
        if (!cut) {
            if (e[i] == '\\') {
                i += 2;
                continue;
            }
            if (e[i] == '{')
                d++;
            else if (e[i] == '}')
                d--;
            else if (e[i] == ',' && d == 0)
                cut = 1;
        }
        if (cut) {
            size_t stop = i < n ? i : n;
            int64_t k = pattern_run(c, e + start, stop - start, depth + 1, out);
            if (k < 0) return -1;
            total = sat_add(total, k, c->max_count);
            if (total > c->max_count) return total;
            if (i >= n) break;
            start = i + 1;
        }
        i++;
    }
    return total;
}

/* out = out x vals (concatenated pairs), in order. */
static int product(strlist *acc, const strlist *vals)
{
    strlist nx = { 0 };
    for (int64_t i = 0; i < acc->n; i++)
        for (int64_t j = 0; j < vals->n; j++) {
            size_t l = acc->len[i] + vals->len[j];
            char *s = malloc(l + 1);
            if (!s || !list_push(&nx, s, l)) {
                free(s);
                list_free(&nx);
                return 0;
            }
            memcpy(s, acc->v[i], acc->len[i]);
            memcpy(s + acc->len[i], vals->v[j], vals->len[j]);
            s[l] = '\0';
        }
    list_free(acc);
    *acc = nx;
    return 1;
}

static int product_literal(strlist *acc, const char *lit, size_t n)
{
    strlist one = { 0 };
    char *s = dup_n(lit, n);
    if (!s || !list_push(&one, s, n)) {
        free(s);
        return 0;
    }
    int ok = product(acc, &one);
    list_free(&one);
    return ok;
}

/* A pattern: literals and groups multiplied out. Returns the count (saturated past max_count),
 * -1 on error; when out != NULL, appends the results to it. */
static int64_t pattern_run(ctx *c, const char *p, size_t n, int depth, strlist *out)
{
    if (depth > MAX_DEPTH) {
        c->st = dc_error(DC_ERR_VALUE, "pattern '%.200s': braces nested deeper than %d levels", c->pattern, MAX_DEPTH);
        return -1;
    }
    strlist acc = { 0 };
    if (out) {
        char *s = dup_n("", 0);
        if (!s || !list_push(&acc, s, 0)) {
            free(s);
            goto nomem;
        }
    }
    int64_t count = 1;
    size_t start = 0, pos = 0;
    int d = 0;
    size_t first_open = 0, neg_at = 0;
    int went_neg = 0;
    while (pos < n) {
        if (p[pos] == '\\') {
            pos += 2;
            continue;
        }
        if (p[pos] == '{') {
            if (d == 0 && pos > start) {
                if (out && !product_literal(&acc, p + start, pos - start)) goto nomem;
                start = pos;
            }
            if (d == 0) first_open = pos;
            d++;
        } else if (p[pos] == '}') {
            d--;
            if (d < 0 && !went_neg) went_neg = 1, neg_at = pos;
            if (d == 0) {
                const char *e = p + start + 1;
                size_t en = pos - start - 1;
                strlist vals = { 0 };
                int is_set = 0;
                int64_t k = expression_run(c, e, en, depth, out ? &vals : NULL, &is_set);
                if (k < 0) {
                    list_free(&vals);
                    list_free(&acc);
                    return -1;
                }
                if (!is_set) { /* literal braces around the expanded body */
                    k = pattern_run(c, e, en, depth + 1, out ? &vals : NULL);
                    if (k < 0) {
                        list_free(&vals);
                        list_free(&acc);
                        return -1;
                    }
                    if (out &&
                        (!product_literal(&acc, "{", 1) || !product(&acc, &vals) || !product_literal(&acc, "}", 1))) {
                        list_free(&vals);
                        goto nomem;
                    }
                } else if (out && !product(&acc, &vals)) {
                    list_free(&vals);
                    goto nomem;
                }
                list_free(&vals);
                count = sat_mul(count, k, c->max_count);
                if (count > c->max_count && out == NULL) return count;
                start = pos + 1;
            }
        }
        pos++;
    }
    if (d != 0) {
        list_free(&acc);
        if (d > 0)
            c->st =
                dc_error(DC_ERR_VALUE, "unbalanced braces in pattern '%.200s': the '{' at position %zu is never closed",
                         c->pattern, (size_t)(p - c->pattern) + first_open);
        else
            c->st = dc_error(DC_ERR_VALUE, "unbalanced braces in pattern '%.200s': the '}' at position %zu has no '{'",
                             c->pattern, (size_t)(p - c->pattern) + neg_at);
        return -1;
    }
    if (start < n && out && !product_literal(&acc, p + start, n - start)) goto nomem;
    if (out) {
        for (int64_t i = 0; i < acc.n; i++)
            if (!list_push(out, acc.v[i], acc.len[i])) {
                for (int64_t j = i; j < acc.n; j++) free(acc.v[j]);
                acc.n = 0;
                list_free(&acc);
                goto nomem;
            }
        acc.n = 0;
        list_free(&acc);
    }
    return count;
nomem:
    list_free(&acc);
    c->st = dc_error(DC_ERR_NOMEM, "pattern '%.200s': out of memory", c->pattern);
    return -1;
}

/* "\c" -> "c" (not before a newline, and not a trailing backslash), in place. */
static void unescape(char *s)
{
    char *w = s;
    for (const char *r = s; *r; r++) {
        if (r[0] == '\\' && r[1] && r[1] != '\n') r++;
        *w++ = *r;
    }
    *w = '\0';
}

dc_status dc_pattern_expand(const char *pattern, int64_t max_count, char ***out, int64_t *count)
{
    *out = NULL;
    *count = 0;
    ctx c = { pattern, max_count > 0 ? max_count : DEFAULT_COUNT, DC_OK };
    size_t n = strlen(pattern);
    int64_t k = pattern_run(&c, pattern, n, 0, NULL);
    if (k < 0) return c.st;
    if (k > c.max_count)
        return dc_error(DC_ERR_VALUE, "pattern '%.200s' expands to more than %lld names", pattern,
                        (long long)c.max_count);
    strlist res = { 0 };
    k = pattern_run(&c, pattern, n, 0, &res);
    if (k < 0) {
        list_free(&res);
        return c.st;
    }
    for (int64_t i = 0; i < res.n; i++) unescape(res.v[i]);
    free(res.len);
    if (res.n == 0) {
        free(res.v);
        res.v = NULL;
    }
    *out = res.v;
    *count = res.n;
    return DC_OK;
}

void dc_pattern_free(char **list, int64_t count)
{
    if (!list) return;
    for (int64_t i = 0; i < count; i++) free(list[i]);
    free(list);
}
