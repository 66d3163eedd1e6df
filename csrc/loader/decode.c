/* decode.c: the sample decoders of the shard loader: .npy arrays and JPEG images (libjpeg-turbo),
 * with the image preprocessing a training input pipeline needs (resize, crop, flip, normalise).
 *
 * Why in C: decoding and resizing on the CPU is what starved the GPUs. Here one call turns the
 * JPEG's bytes into the finished, normalised CHW tensor, on a loader thread without the GIL:
 *   - libjpeg's DCT scaling (M/8) decodes at the smallest size still at least as large as what the
 *     resize or crop needs, which skips most of the IDCT and colour-conversion work;
 *   - the resize is Pillow's antialiased bilinear (a triangle filter whose support widens with the
 *     downscale factor), separable, with weights precomputed per output row/column in Pillow's
 *     22-bit fixed point, and evaluated only for the output window a crop keeps;
 *   - the crop's randomness comes from the caller's seed through splitmix64, so a sample's crop
 *     and flip are reproducible wherever it is decoded;
 *   - normalisation is a per-channel 256-entry table (uint8 -> float32 or bfloat16).
 * Everything is per call (libjpeg state included): safe from any number of threads at once.
 * libjpeg's fatal errors longjmp back here (it would otherwise exit()); its warnings about corrupt
 * data (premature end, bad Huffman code, ...) are treated as errors too, so a damaged file raises
 * instead of decoding to gray blocks. */
#include "shards.h"

#include <ctype.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#include <jerror.h>

/* ======================================== .npy ================================================= */

typedef struct {
    const char *p, *end, *begin;
} lexer;

static void skip_ws(lexer *L)
{
    while (L->p < L->end && (*L->p == ' ' || *L->p == '\t' || *L->p == '\n' || *L->p == '\r')) L->p++;
}

static int peek(lexer *L)
{
    skip_ws(L);
    return L->p < L->end ? (unsigned char)*L->p : -1;
}

static int accept(lexer *L, char c)
{
    if (peek(L) != c) return 0;
    L->p++;
    return 1;
}

static dc_status npy_syntax(lexer *L, const char *what)
{
    int hl = (int)(L->end - L->begin);
    return dc_error(DC_ERR_FORMAT, "bad .npy header: %s at header byte %d (header: %.*s)", what, (int)(L->p - L->begin),
                    hl > 200 ? 200 : hl, L->begin);
}

/* A Python string literal ('...' or "..."); its raw contents in [*s, *s + *n). */
static int lex_string(lexer *L, const char **s, size_t *n)
{
    int q = peek(L);
    if (q != '\'' && q != '"') return 0;
    const char *start = ++L->p;
    while (L->p < L->end && *L->p != q) {
        if (*L->p == '\\' && L->p + 1 < L->end) L->p++;
        L->p++;
    }
    if (L->p >= L->end) return 0;
    *s = start;
    *n = (size_t)(L->p - start);
    L->p++;
    return 1;
}

static int lex_word(lexer *L, const char *w)
{
    size_t n = strlen(w);
    skip_ws(L);
    if ((size_t)(L->end - L->p) < n || memcmp(L->p, w, n)) return 0;
    const char *after = L->p + n;
    if (after < L->end && (isalnum((unsigned char)*after) || *after == '_')) return 0;
    L->p = after;
    return 1;
}

/* A non-negative integer literal (an old Python 2 "L" suffix allowed). */
static int lex_int(lexer *L, int64_t *v)
{
    skip_ws(L);
    const char *s = L->p;
    int64_t x = 0;
    while (L->p < L->end && *L->p >= '0' && *L->p <= '9') {
        if (x > (INT64_MAX - 9) / 10) return 0;
        x = x * 10 + (*L->p++ - '0');
    }
    if (L->p == s) return 0;
    if (L->p < L->end && (*L->p == 'L' || *L->p == 'l')) L->p++;
    *v = x;
    return 1;
}

/* Skip any literal value (for keys we do not use). */
static int skip_value(lexer *L, int depth)
{
    if (depth > 16) return 0;
    int c = peek(L);
    const char *s;
    size_t n;
    if (c == '\'' || c == '"') return lex_string(L, &s, &n);
    if (c == '(' || c == '[' || c == '{') {
        char close = c == '(' ? ')' : c == '[' ? ']' : '}';
        L->p++;
        for (;;) {
            if (accept(L, close)) return 1;
            if (!skip_value(L, depth + 1)) return 0;
            if (c == '{' && (!accept(L, ':') || !skip_value(L, depth + 1))) return 0;
            if (!accept(L, ',') && peek(L) != close) return 0;
        }
    }
    /* a number, True/False/None: a run of word characters (and signs/dots) */
    const char *st = L->p;
    while (L->p < L->end && (isalnum((unsigned char)*L->p) || strchr("+-._", *L->p))) L->p++;
    return L->p > st;
}

/* descr -> dtype; DC_ERR_FORMAT naming anything else. */
static dc_status npy_dtype(const char *d, size_t n, dc_dtype *out)
{
    char bo = '=';
    const char *t = d;
    size_t tn = n;
    if (n > 0 && strchr("<>|=", d[0])) bo = d[0], t++, tn--;
    static const struct {
        const char *code;
        dc_dtype dt;
    } table[] = { { "b1", DC_BOOL },    { "u1", DC_UINT8 }, { "i1", DC_INT8 },    { "i2", DC_INT16 },
                  { "i4", DC_INT32 },   { "i8", DC_INT64 }, { "f2", DC_FLOAT16 }, { "f4", DC_FLOAT32 },
                  { "f8", DC_FLOAT64 }, { "?", DC_BOOL } };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        if (tn != strlen(table[i].code) || memcmp(t, table[i].code, tn)) continue;
        int one_byte = table[i].dt == DC_BOOL || table[i].dt == DC_UINT8 || table[i].dt == DC_INT8;
        if (bo == '>' && !one_byte)
            return dc_error(DC_ERR_FORMAT, "big-endian .npy dtype '%.*s' is not supported (save it little-endian)",
                            (int)n, d);
        if (bo == '|' && !one_byte) break;
        *out = table[i].dt;
        return DC_OK;
    }
    if (tn >= 1 && t[0] == 'O')
        return dc_error(DC_ERR_FORMAT, ".npy holds Python objects (dtype '%.*s'), which cannot be decoded", (int)n, d);
    return dc_error(DC_ERR_FORMAT, "unsupported .npy dtype '%.*s' (supported: |b1 |u1 |i1 <i2 <i4 <i8 <f2 <f4 <f8)",
                    (int)(n > 40 ? 40 : n), d);
}

static size_t npy_itemsize(dc_dtype d)
{
    switch (d) {
    case DC_BOOL:
    case DC_UINT8:
    case DC_INT8: return 1;
    case DC_INT16:
    case DC_FLOAT16: return 2;
    case DC_INT32:
    case DC_FLOAT32: return 4;
    default: return 8;
    }
}

dc_status dc_npy_parse(const void *buf, size_t len, dc_npy_info *out)
{
    const uint8_t *b = buf;
    memset(out, 0, sizeof *out);
    if (len < 10 || memcmp(b, "\x93NUMPY", 6))
        return dc_error(DC_ERR_FORMAT, "not a .npy file: bad magic (the first %zu bytes do not start with \\x93NUMPY)",
                        len < 6 ? len : (size_t)6);
    int major = b[6], minor = b[7];
    size_t hstart, hlen;
    if (major == 1) {
        hstart = 10;
        hlen = (size_t)b[8] | (size_t)b[9] << 8;
    } else if (major == 2 || major == 3) {
        if (len < 12) return dc_error(DC_ERR_FORMAT, "truncated .npy: %zu bytes, the header length needs 12", len);
        hstart = 12;
        hlen = (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
    } else {
        return dc_error(DC_ERR_FORMAT, "unsupported .npy format version %d.%d", major, minor);
    }
    if (hlen > len - hstart)
        return dc_error(DC_ERR_FORMAT, "truncated .npy: the header needs %zu bytes, the file has %zu", hstart + hlen,
                        len);

    lexer L = { (const char *)b + hstart, (const char *)b + hstart + hlen, (const char *)b + hstart };
    const char *descr = NULL;
    size_t descr_n = 0;
    int fortran = -1, have_shape = 0;
    if (!accept(&L, '{')) return npy_syntax(&L, "expected '{'");
    while (!accept(&L, '}')) {
        const char *key;
        size_t kn;
        if (!lex_string(&L, &key, &kn)) return npy_syntax(&L, "expected a quoted key");
        if (!accept(&L, ':')) return npy_syntax(&L, "expected ':'");
        if (kn == 5 && !memcmp(key, "descr", 5)) {
            int c = peek(&L);
            if (c == '[' || c == '(' || c == '{')
                return dc_error(DC_ERR_FORMAT, "structured .npy dtypes (a descr list) are not supported");
            if (!lex_string(&L, &descr, &descr_n)) return npy_syntax(&L, "expected a dtype string for 'descr'");
        } else if (kn == 13 && !memcmp(key, "fortran_order", 13)) {
            if (lex_word(&L, "True"))
                fortran = 1;
            else if (lex_word(&L, "False"))
                fortran = 0;
            else
                return npy_syntax(&L, "expected True or False for 'fortran_order'");
        } else if (kn == 5 && !memcmp(key, "shape", 5)) {
            int c = peek(&L);
            if (c != '(' && c != '[') return npy_syntax(&L, "expected a tuple for 'shape'");
            char close = c == '(' ? ')' : ']';
            L.p++;
            out->ndim = 0;
            while (!accept(&L, close)) {
                int64_t v;
                if (!lex_int(&L, &v)) return npy_syntax(&L, "expected a non-negative integer in 'shape'");
                if (out->ndim == 8) return dc_error(DC_ERR_FORMAT, ".npy array has more than 8 dimensions");
                out->shape[out->ndim++] = v;
                if (!accept(&L, ',') && peek(&L) != close) return npy_syntax(&L, "expected ',' in 'shape'");
            }
            have_shape = 1;
        } else if (!skip_value(&L, 0)) {
            return npy_syntax(&L, "unreadable value");
        }
        if (!accept(&L, ',') && peek(&L) != '}') return npy_syntax(&L, "expected ',' or '}'");
    }
    if (!descr || fortran < 0 || !have_shape)
        return dc_error(DC_ERR_FORMAT, "bad .npy header: missing '%s'",
                        !descr        ? "descr"
                        : fortran < 0 ? "fortran_order"
                                      : "shape");
    DC_TRY(npy_dtype(descr, descr_n, &out->dtype));

    size_t item = npy_itemsize(out->dtype), numel = 1;
    int big_dims = 0;
    for (int i = 0; i < out->ndim; i++) {
        int64_t d = out->shape[i];
        big_dims += d > 1;
        if (d == 0)
            numel = 0;
        else if (numel && (uint64_t)d > (SIZE_MAX / item) / numel)
            return dc_error(DC_ERR_FORMAT, ".npy shape overflows: the element count does not fit in memory");
        else
            numel *= (size_t)d;
    }
    /* Fortran order is the same bytes as C order when at most one dimension exceeds 1. */
    if (fortran == 1 && big_dims > 1)
        return dc_error(DC_ERR_FORMAT, "Fortran-order .npy arrays are not supported (save with np.ascontiguousarray)");
    out->data_offset = hstart + hlen;
    out->nbytes = numel * item;
    if (out->nbytes > len - out->data_offset)
        return dc_error(DC_ERR_FORMAT, "truncated .npy: %zu data bytes from byte %zu, the file has %zu", out->nbytes,
                        out->data_offset, len);
    return DC_OK;
}

/* ======================================== JPEG ================================================= */

/* Images above this many pixels are refused (the decoded RGB alone would be 400 MB). */
#define MAX_PIXELS  ((int64_t)1 << 27)
#define JPEG_MEMORY (1024L * 1024 * 1024) /* libjpeg's own working memory (progressive buffers) */
#define PRECISION   22                    /* Pillow's fixed-point bits for 8-bit resampling */

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char msg[JMSG_LENGTH_MAX];
} jpeg_err;

static void on_error_exit(j_common_ptr cinfo)
{
    jpeg_err *e = (jpeg_err *)cinfo->err;
    cinfo->err->format_message(cinfo, e->msg);
    longjmp(e->jump, 1);
}

static void on_output_message(j_common_ptr cinfo)
{
    (void)cinfo; /* never print: messages travel in the status */
}

/* Warnings (level -1) that mean the data is damaged end the decode like errors. */
static void on_emit_message(j_common_ptr cinfo, int level)
{
    if (level != -1) return;
    switch (cinfo->err->msg_code) {
#if JPEG_LIB_VERSION >= 70 || defined(C_ARITH_CODING_SUPPORTED) || defined(D_ARITH_CODING_SUPPORTED)
    case JWRN_ARITH_BAD_CODE:
#endif
    case JWRN_BOGUS_PROGRESSION:
    case JWRN_EXTRANEOUS_DATA:
    case JWRN_HIT_MARKER:
    case JWRN_HUFF_BAD_CODE:
    case JWRN_JPEG_EOF:
    case JWRN_MUST_RESYNC:
    case JWRN_NOT_SEQUENTIAL: on_error_exit(cinfo); break;
    default: cinfo->err->num_warnings++;
    }
}

static void jpeg_setup(struct jpeg_decompress_struct *ci, jpeg_err *err)
{
    ci->err = jpeg_std_error(&err->pub);
    err->pub.error_exit = on_error_exit;
    err->pub.output_message = on_output_message;
    err->pub.emit_message = on_emit_message;
    err->msg[0] = '\0';
}

dc_status dc_jpeg_info(const void *buf, size_t len, int *h, int *w, int *components)
{
    struct jpeg_decompress_struct ci;
    jpeg_err err;
    *h = *w = *components = 0;
    if (len == 0 || len > (size_t)0xffffffffu) return dc_error(DC_ERR_FORMAT, "JPEG: %zu bytes is not a JPEG", len);
    jpeg_setup(&ci, &err);
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&ci);
        return dc_error(DC_ERR_FORMAT, "JPEG: %s", err.msg);
    }
    jpeg_create_decompress(&ci);
    jpeg_mem_src(&ci, buf, (unsigned long)len);
    jpeg_read_header(&ci, TRUE);
    *h = (int)ci.image_height;
    *w = (int)ci.image_width;
    *components = ci.num_components;
    jpeg_destroy_decompress(&ci);
    return DC_OK;
}

/* ---- randomness: splitmix64 over a counter started at the seed --------------------------------- */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double rng_uniform(uint64_t *s, double lo, double hi) /* [lo, hi) */
{
    return lo + (double)(rng_next(s) >> 11) * 0x1.0p-53 * (hi - lo);
}
static int64_t rng_int(uint64_t *s, int64_t n) /* [0, n) */
{
    return (int64_t)(((unsigned __int128)rng_next(s) * (uint64_t)n) >> 64);
}

/* ---- geometry ------------------------------------------------------------------------------- */

/* What decode does to an image of h x w: resize to rh x rw, keep the region (ry, rx, rrh, rrw) of
 * it, scale that to oh x ow (the identity unless RANDOM_RESIZED), flip or not. */
typedef struct {
    int rh, rw;
    int ry, rx, rrh, rrw;
    int oh, ow;
    int flip;
} plan;

static void resized_size(const dc_image_opts *o, int h, int w, int *rh, int *rw)
{
    *rh = h, *rw = w;
    if (o->resize <= 0) return;
    /* torchvision's Resize(int): the short side becomes `resize`, the long side int(resize*long/short) */
    if (h <= w) {
        *rh = o->resize;
        *rw = (int)((int64_t)o->resize * w / h);
    } else {
        *rw = o->resize;
        *rh = (int)((int64_t)o->resize * h / w);
    }
    if (*rh < 1) *rh = 1;
    if (*rw < 1) *rw = 1;
}

void dc_image_out_size(const dc_image_opts *o, int h, int w, int *out_h, int *out_w)
{
    if (o->crop != DC_CROP_NONE) {
        *out_h = o->crop_h;
        *out_w = o->crop_w;
        return;
    }
    resized_size(o, h, w, out_h, out_w);
}

static dc_status check_opts(const dc_image_opts *o)
{
    if (o->resize < 0 || o->resize > 65535)
        return dc_error(DC_ERR_VALUE, "image decode: resize must be 0..65535, got %d", o->resize);
    if (o->crop < DC_CROP_NONE || o->crop > DC_CROP_RANDOM_RESIZED)
        return dc_error(DC_ERR_VALUE, "image decode: unknown crop mode %d", o->crop);
    if (o->crop != DC_CROP_NONE && (o->crop_h <= 0 || o->crop_w <= 0 || o->crop_h > 65535 || o->crop_w > 65535))
        return dc_error(DC_ERR_VALUE, "image decode: crop size must be 1..65535, got %dx%d", o->crop_h, o->crop_w);
    if (o->crop == DC_CROP_RANDOM_RESIZED &&
        !(o->scale[0] > 0 && o->scale[0] <= o->scale[1] && o->ratio[0] > 0 && o->ratio[0] <= o->ratio[1] &&
          isfinite(o->scale[1]) && isfinite(o->ratio[1])))
        return dc_error(DC_ERR_VALUE,
                        "image decode: random_resized needs 0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1], got "
                        "scale (%g, %g), ratio (%g, %g)",
                        o->scale[0], o->scale[1], o->ratio[0], o->ratio[1]);
    if (!(o->flip_p >= 0 && o->flip_p <= 1))
        return dc_error(DC_ERR_VALUE, "image decode: flip_p must be in [0, 1], got %g", o->flip_p);
    if (o->out_dtype != DC_UINT8 && o->out_dtype != DC_FLOAT32 && o->out_dtype != DC_BFLOAT16)
        return dc_error(DC_ERR_VALUE, "image decode: output dtype must be uint8, float32 or bfloat16 (got id %d)",
                        (int)o->out_dtype);
    for (int c = 0; c < 3; c++)
        if (!isfinite(o->mean[c]) || !isfinite(o->std[c]))
            return dc_error(DC_ERR_VALUE, "image decode: mean and std must be finite");
    return DC_OK;
}

static dc_status make_plan(const dc_image_opts *o, int h, int w, plan *p)
{
    uint64_t rng = o->seed;
    resized_size(o, h, w, &p->rh, &p->rw);
    p->ry = p->rx = 0;
    p->rrh = p->oh = p->rh;
    p->rrw = p->ow = p->rw;
    if (o->crop == DC_CROP_CENTER || o->crop == DC_CROP_RANDOM) {
        if (o->crop_h > p->rh || o->crop_w > p->rw)
            return dc_error(DC_ERR_VALUE,
                            "image decode: crop %dx%d is larger than the image, %dx%d after resize (%dx%d before)",
                            o->crop_h, o->crop_w, p->rh, p->rw, h, w);
        p->rrh = p->oh = o->crop_h;
        p->rrw = p->ow = o->crop_w;
        if (o->crop == DC_CROP_CENTER) { /* torchvision: int(round((H - h) / 2)) */
            p->ry = (int)rint((p->rh - o->crop_h) / 2.0);
            p->rx = (int)rint((p->rw - o->crop_w) / 2.0);
        } else {
            p->ry = (int)rng_int(&rng, p->rh - o->crop_h + 1);
            p->rx = (int)rng_int(&rng, p->rw - o->crop_w + 1);
        }
    } else if (o->crop == DC_CROP_RANDOM_RESIZED) { /* torchvision RandomResizedCrop.get_params */
        int H = p->rh, W = p->rw, found = 0;
        double area = (double)H * W, lr0 = log(o->ratio[0]), lr1 = log(o->ratio[1]);
        for (int attempt = 0; attempt < 10 && !found; attempt++) {
            double target = area * rng_uniform(&rng, o->scale[0], o->scale[1]);
            double ar = exp(rng_uniform(&rng, lr0, lr1));
            double cw = rint(sqrt(target * ar)), ch = rint(sqrt(target / ar));
            if (cw > 0 && cw <= W && ch > 0 && ch <= H) {
                p->rrh = (int)ch;
                p->rrw = (int)cw;
                p->ry = (int)rng_int(&rng, H - p->rrh + 1);
                p->rx = (int)rng_int(&rng, W - p->rrw + 1);
                found = 1;
            }
        }
        if (!found) { /* fall back to a central crop of the clamped ratio */
            double in_ratio = (double)W / H;
            if (in_ratio < o->ratio[0]) {
                p->rrw = W;
                p->rrh = (int)rint(W / (double)o->ratio[0]);
            } else if (in_ratio > o->ratio[1]) {
                p->rrh = H;
                p->rrw = (int)rint(H * (double)o->ratio[1]);
            } else {
                p->rrh = H;
                p->rrw = W;
            }
            if (p->rrh < 1) p->rrh = 1;
            if (p->rrw < 1) p->rrw = 1;
            if (p->rrh > H) p->rrh = H;
            if (p->rrw > W) p->rrw = W;
            p->ry = (H - p->rrh) / 2;
            p->rx = (W - p->rrw) / 2;
        }
        p->oh = o->crop_h;
        p->ow = o->crop_w;
    }
    p->flip = o->flip_p > 0 && rng_uniform(&rng, 0, 1) < o->flip_p;
    return DC_OK;
}

/* ---- resampling (Pillow's antialiased bilinear, 8-bit fixed point) ----------------------------- */

/* Per output index of a window: the first source index and the taps' weights. */
typedef struct {
    int *first; /* (n,) */
    int *count; /* (n,) */
    int32_t *w; /* (n, ksize) */
    int ksize;
} taps;

static void taps_free(taps *t)
{
    free(t->first);
    free(t->count);
    free(t->w);
}

static double triangle(double x)
{
    if (x < 0) x = -x;
    return x < 1 ? 1 - x : 0;
}

/* Source span [in0, in1) (in source pixels, clamped to source pixels [lo, hi)) resized to `full`
 * output pixels; weights for output indices [win0, win0 + n). */
static int taps_init(taps *t, double in0, double in1, int lo, int hi, int full, int win0, int n)
{
    double scale = (in1 - in0) / full, fscale = scale < 1 ? 1 : scale;
    double support = 1.0 * fscale, ss = 1.0 / fscale;
    int ksize = (int)ceil(support) * 2 + 1;
    t->ksize = ksize;
    t->first = malloc((size_t)n * sizeof(int));
    t->count = malloc((size_t)n * sizeof(int));
    t->w = malloc((size_t)n * (size_t)ksize * sizeof(int32_t));
    double *k = malloc((size_t)ksize * sizeof(double));
    if (!t->first || !t->count || !t->w || !k) {
        free(k);
        return 0;
    }
    for (int i = 0; i < n; i++) {
        double center = in0 + (win0 + i + 0.5) * scale;
        int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
        if (xmin < lo) xmin = lo;
        if (xmax > hi) xmax = hi;
        if (xmax - xmin > ksize) xmax = xmin + ksize;
        if (xmax <= xmin) { /* cannot happen for a non-empty span; keep one tap to stay defined */
            xmin = xmin < hi ? xmin : hi - 1;
            xmax = xmin + 1;
        }
        double sum = 0;
        for (int x = xmin; x < xmax; x++) sum += k[x - xmin] = triangle((x - center + 0.5) * ss);
        int32_t *wi = t->w + (size_t)i * ksize;
        for (int x = 0; x < xmax - xmin; x++) {
            double v = sum != 0 ? k[x] / sum : 1.0 / (xmax - xmin);
            wi[x] = (int32_t)(v * (1 << PRECISION) + (v < 0 ? -0.5 : 0.5));
        }
        t->first[i] = xmin;
        t->count[i] = xmax - xmin;
    }
    free(k);
    return 1;
}

static inline uint8_t clip8(int32_t v)
{
    v >>= PRECISION;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

typedef struct {
    double in0, in1; /* source span (source pixels) */
    int lo, hi;      /* source pixels the filter may read */
    int full;        /* output size of the whole span */
    int win0, n;     /* the output window computed */
} axis;

/* dst (ay.n, ax.n, 3) = the window of src (sh, sw, 3) resized along both axes. Horizontal pass first
 * over the source rows the window needs (as Pillow), then vertical. */
static dc_status resample(const uint8_t *src, int sw, const axis *ax, const axis *ay, uint8_t *dst)
{
    taps tx = { 0 }, ty = { 0 };
    uint8_t *tmp = NULL;
    int32_t *acc = NULL;
    dc_status st = DC_OK;
    if (!taps_init(&tx, ax->in0, ax->in1, ax->lo, ax->hi, ax->full, ax->win0, ax->n) ||
        !taps_init(&ty, ay->in0, ay->in1, ay->lo, ay->hi, ay->full, ay->win0, ay->n)) {
        st = dc_error(DC_ERR_NOMEM, "image resize: out of memory");
        goto done;
    }
    int y_first = ty.first[0], y_last = ty.first[ay->n - 1] + ty.count[ay->n - 1];
    for (int i = 0; i < ay->n; i++) { /* monotone in practice; be safe */
        if (ty.first[i] < y_first) y_first = ty.first[i];
        if (ty.first[i] + ty.count[i] > y_last) y_last = ty.first[i] + ty.count[i];
    }
    size_t row = (size_t)ax->n * 3;
    tmp = malloc((size_t)(y_last - y_first) * row);
    acc = malloc(row * sizeof(int32_t));
    if (!tmp || !acc) {
        st = dc_error(DC_ERR_NOMEM, "image resize: out of memory");
        goto done;
    }
    /* horizontal: tmp (y_last - y_first, ax.n, 3) */
    for (int y = y_first; y < y_last; y++) {
        const uint8_t *s = src + (size_t)y * sw * 3;
        uint8_t *d = tmp + (size_t)(y - y_first) * row;
        for (int x = 0; x < ax->n; x++) {
            const int32_t *w = tx.w + (size_t)x * tx.ksize;
            const uint8_t *p = s + (size_t)tx.first[x] * 3;
            int32_t r = 1 << (PRECISION - 1), g = r, b = r;
            for (int k = 0; k < tx.count[x]; k++, p += 3) {
                r += p[0] * w[k];
                g += p[1] * w[k];
                b += p[2] * w[k];
            }
            d[3 * x] = clip8(r);
            d[3 * x + 1] = clip8(g);
            d[3 * x + 2] = clip8(b);
        }
    }
    /* vertical: whole rows at a time (the inner loop vectorises) */
    for (int y = 0; y < ay->n; y++) {
        const int32_t *w = ty.w + (size_t)y * ty.ksize;
        for (size_t j = 0; j < row; j++) acc[j] = 1 << (PRECISION - 1);
        for (int k = 0; k < ty.count[y]; k++) {
            const uint8_t *s = tmp + (size_t)(ty.first[y] + k - y_first) * row;
            int32_t wk = w[k];
            for (size_t j = 0; j < row; j++) acc[j] += s[j] * wk;
        }
        uint8_t *d = dst + (size_t)y * row;
        for (size_t j = 0; j < row; j++) d[j] = clip8(acc[j]);
    }
done:
    taps_free(&tx);
    taps_free(&ty);
    free(tmp);
    free(acc);
    return st;
}

/* ---- decode ------------------------------------------------------------------------------------ */

/* Everything a decode owns, reachable after a longjmp. */
typedef struct {
    struct jpeg_decompress_struct ci;
    jpeg_err err;
    int created;
    uint8_t *img;   /* (sh, sw, 3) the decoded (DCT-scaled) image */
    uint8_t *cmyk;  /* (rows, sw, 4) row buffer for CMYK/YCCK */
    JSAMPROW *rows; /* (rows,) */
    int sh, sw;     /* decoded size */
} jctx;

static inline uint8_t muldiv255(int a, int b)
{
    int t = a * b + 128;
    return (uint8_t)(((t >> 8) + t) >> 8);
}

/* The decode proper; libjpeg errors come back here through longjmp and leave what was allocated in
 * the context for the caller to free. */
static dc_status jpeg_run(jctx *x, const void *buf, size_t len, const dc_image_opts *o, plan *p)
{
    struct jpeg_decompress_struct *ci = &x->ci;
    jpeg_setup(ci, &x->err);
    if (setjmp(x->err.jump)) return dc_error(DC_ERR_FORMAT, "JPEG: %s", x->err.msg);
    jpeg_create_decompress(ci);
    x->created = 1;
    ci->mem->max_memory_to_use = JPEG_MEMORY;
    jpeg_mem_src(ci, buf, (unsigned long)len);
    jpeg_read_header(ci, TRUE);
    int h = (int)ci->image_height, w = (int)ci->image_width;
    if ((int64_t)h * w > MAX_PIXELS)
        return dc_error(DC_ERR_FORMAT, "JPEG: %dx%d is over the %lld-pixel limit", h, w, (long long)MAX_PIXELS);
    DC_TRY(make_plan(o, h, w, p));

    int cmyk = 0;
    switch (ci->jpeg_color_space) {
    case JCS_GRAYSCALE:
    case JCS_YCbCr:
    case JCS_RGB: ci->out_color_space = JCS_RGB; break;
    case JCS_CMYK:
    case JCS_YCCK:
        ci->out_color_space = JCS_CMYK;
        cmyk = 1;
        break;
    default: return dc_error(DC_ERR_FORMAT, "JPEG: unsupported color space %d", (int)ci->jpeg_color_space);
    }
    ci->dct_method = JDCT_ISLOW; /* libjpeg's (and Pillow's) default; the SIMD path makes it cheap */

    /* DCT scaling: the smallest M/8 whose output still covers what the resample needs, so the
     * resize only ever shrinks. The region kept, in source pixels, must be at least as large as
     * the output it is resampled to. */
    double need_y = 0, need_x = 0; /* required source pixels per output pixel */
    if (o->resize > 0) {
        need_y = (double)p->rh / h;
        need_x = (double)p->rw / w;
    }
    if (o->crop == DC_CROP_RANDOM_RESIZED) {
        double fy = (double)p->oh / p->rrh * p->rh / h, fx = (double)p->ow / p->rrw * p->rw / w;
        if (fy > need_y) need_y = fy;
        if (fx > need_x) need_x = fx;
    }
    if (o->resize > 0 || o->crop == DC_CROP_RANDOM_RESIZED) {
        for (int m = 1; m <= 8; m++) {
            ci->scale_num = (unsigned)m;
            ci->scale_denom = 8;
            jpeg_calc_output_dimensions(ci);
            if ((double)ci->output_height >= need_y * h - 1e-9 && (double)ci->output_width >= need_x * w - 1e-9) break;
        }
    }
    jpeg_start_decompress(ci);
    x->sh = (int)ci->output_height;
    x->sw = (int)ci->output_width;
    x->img = malloc((size_t)x->sh * x->sw * 3);
    int batch = ci->rec_outbuf_height > 0 ? ci->rec_outbuf_height : 1;
    x->rows = malloc((size_t)batch * sizeof(JSAMPROW));
    if (cmyk) x->cmyk = malloc((size_t)batch * x->sw * 4);
    if (!x->img || !x->rows || (cmyk && !x->cmyk))
        return dc_error(DC_ERR_NOMEM, "JPEG: out of memory for a %dx%d image", x->sh, x->sw);
    int inverted = cmyk && ci->saw_Adobe_marker; /* Adobe writes CMYK inverted (as Pillow assumes) */
    while (ci->output_scanline < ci->output_height) {
        int y0 = (int)ci->output_scanline, n = batch;
        if (n > x->sh - y0) n = x->sh - y0;
        for (int i = 0; i < n; i++)
            x->rows[i] = cmyk ? x->cmyk + (size_t)i * x->sw * 4 : x->img + (size_t)(y0 + i) * x->sw * 3;
        int got = (int)jpeg_read_scanlines(ci, x->rows, (JDIMENSION)n);
        if (cmyk)
            for (int i = 0; i < got; i++) {
                const uint8_t *s = x->cmyk + (size_t)i * x->sw * 4;
                uint8_t *d = x->img + (size_t)(y0 + i) * x->sw * 3;
                for (int j = 0; j < x->sw; j++, s += 4, d += 3) {
                    int k = inverted ? s[3] : 255 - s[3]; /* 255 - K */
                    for (int c = 0; c < 3; c++) {
                        int cc = inverted ? 255 - s[c] : s[c];
                        int v = k - muldiv255(cc, k);
                        d[c] = (uint8_t)(v < 0 ? 0 : v);
                    }
                }
            }
        if (got == 0) return dc_error(DC_ERR_FORMAT, "JPEG: no scanlines decoded at row %d", y0);
    }
    jpeg_finish_decompress(ci);
    return DC_OK;
}

/* Output: (oh, ow, 3) uint8 `im` (freed or handed over) -> the requested dtype and layout. */
static dc_status finish_output(uint8_t *im, int oh, int ow, const dc_image_opts *o, int flip, void **out)
{
    size_t npix = (size_t)oh * ow;
    if (flip)
        for (int y = 0; y < oh; y++) {
            uint8_t *r = im + (size_t)y * ow * 3;
            for (int a = 0, b = ow - 1; a < b; a++, b--)
                for (int c = 0; c < 3; c++) {
                    uint8_t t = r[3 * a + c];
                    r[3 * a + c] = r[3 * b + c];
                    r[3 * b + c] = t;
                }
        }
    if (o->out_dtype == DC_UINT8) {
        *out = im;
        return DC_OK;
    }
    float lut[3][256];
    for (int c = 0; c < 3; c++) {
        float sd = o->std[c] != 0 ? o->std[c] : 1.0f;
        for (int v = 0; v < 256; v++) lut[c][v] = ((float)v / 255.0f - o->mean[c]) / sd;
    }
    if (o->out_dtype == DC_FLOAT32) {
        float *f = malloc(npix * 3 * sizeof(float)); /* (3, oh, ow) */
        if (!f) {
            free(im);
            return dc_error(DC_ERR_NOMEM, "image decode: out of memory");
        }
        for (int c = 0; c < 3; c++) {
            float *d = f + (size_t)c * npix;
            const float *l = lut[c];
            for (size_t i = 0; i < npix; i++) d[i] = l[im[3 * i + c]];
        }
        free(im);
        *out = f;
        return DC_OK;
    }
    uint16_t blut[3][256];
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) blut[c][v] = dc_f32_to_bf16(lut[c][v]);
    uint16_t *b = malloc(npix * 3 * sizeof(uint16_t));
    if (!b) {
        free(im);
        return dc_error(DC_ERR_NOMEM, "image decode: out of memory");
    }
    for (int c = 0; c < 3; c++) {
        uint16_t *d = b + (size_t)c * npix;
        const uint16_t *l = blut[c];
        for (size_t i = 0; i < npix; i++) d[i] = l[im[3 * i + c]];
    }
    free(im);
    *out = b;
    return DC_OK;
}

dc_status dc_jpeg_decode(const void *buf, size_t len, const dc_image_opts *o, void **out, int *out_h, int *out_w)
{
    *out = NULL;
    *out_h = *out_w = 0;
    DC_TRY(check_opts(o));
    if (len == 0 || len > (size_t)0xffffffffu) return dc_error(DC_ERR_FORMAT, "JPEG: %zu bytes is not a JPEG", len);
    jctx *x = calloc(1, sizeof *x);
    if (!x) return dc_error(DC_ERR_NOMEM, "JPEG: out of memory");
    plan p;
    dc_status st = jpeg_run(x, buf, len, o, &p);
    if (x->created) jpeg_destroy_decompress(&x->ci);
    free(x->cmyk);
    free(x->rows);
    uint8_t *img = x->img;
    int sh = x->sh, sw = x->sw, h = (int)x->ci.image_height, w = (int)x->ci.image_width;
    free(x);
    if (st != DC_OK) {
        free(img);
        return st;
    }

    /* geometry in decoded pixels: the decoded image spans the original's extent */
    double fy = (double)sh / h, fx = (double)sw / w;
    uint8_t *res = NULL;
    int resized = p.rh != h || p.rw != w || sh != h || sw != w;
    if (!resized && (p.rrh != p.oh || p.rrw != p.ow)) resized = 1;
    if (!resized) { /* a plain crop (or nothing) of the full-size image */
        if (p.oh == sh && p.ow == sw) {
            res = img;
            img = NULL;
        } else {
            res = malloc((size_t)p.oh * p.ow * 3);
            if (!res) {
                free(img);
                return dc_error(DC_ERR_NOMEM, "image decode: out of memory");
            }
            for (int y = 0; y < p.oh; y++)
                memcpy(res + (size_t)y * p.ow * 3, img + ((size_t)(p.ry + y) * sw + p.rx) * 3, (size_t)p.ow * 3);
        }
    } else if (p.rrh == p.oh && p.rrw == p.ow) {
        /* resize, then keep a window of it: compute only the window */
        axis ay = { 0, sh, 0, sh, p.rh, p.ry, p.oh }, ax = { 0, sw, 0, sw, p.rw, p.rx, p.ow };
        res = malloc((size_t)p.oh * p.ow * 3);
        st = res ? resample(img, sw, &ax, &ay, res) : dc_error(DC_ERR_NOMEM, "image decode: out of memory");
    } else if (p.rh == h && p.rw == w) {
        /* random-resized crop of the (DCT-scaled) original: one resample of the region's box, the
         * filter kept inside the region as torchvision's crop-then-resize does */
        double y0 = p.ry * fy, y1 = (p.ry + p.rrh) * fy, x0 = p.rx * fx, x1 = (p.rx + p.rrw) * fx;
        int ylo = (int)floor(y0), yhi = (int)ceil(y1), xlo = (int)floor(x0), xhi = (int)ceil(x1);
        if (yhi > sh) yhi = sh;
        if (xhi > sw) xhi = sw;
        axis ay = { y0, y1, ylo, yhi, p.oh, 0, p.oh }, ax = { x0, x1, xlo, xhi, p.ow, 0, p.ow };
        res = malloc((size_t)p.oh * p.ow * 3);
        st = res ? resample(img, sw, &ax, &ay, res) : dc_error(DC_ERR_NOMEM, "image decode: out of memory");
    } else {
        /* resize, then a random-resized crop of it: two resamples, as the two transforms would do */
        axis ay = { 0, sh, 0, sh, p.rh, p.ry, p.rrh }, ax = { 0, sw, 0, sw, p.rw, p.rx, p.rrw };
        uint8_t *mid = malloc((size_t)p.rrh * p.rrw * 3);
        st = mid ? resample(img, sw, &ax, &ay, mid) : dc_error(DC_ERR_NOMEM, "image decode: out of memory");
        if (st == DC_OK) {
            axis by = { 0, p.rrh, 0, p.rrh, p.oh, 0, p.oh }, bx = { 0, p.rrw, 0, p.rrw, p.ow, 0, p.ow };
            res = malloc((size_t)p.oh * p.ow * 3);
            st = res ? resample(mid, p.rrw, &bx, &by, res) : dc_error(DC_ERR_NOMEM, "image decode: out of memory");
        }
        free(mid);
    }
    free(img);
    if (st != DC_OK) {
        free(res);
        return st;
    }
    st = finish_output(res, p.oh, p.ow, o, p.flip, out);
    if (st != DC_OK) return st;
    *out_h = p.oh;
    *out_w = p.ow;
    return DC_OK;
}
