/* decode.c: sample decoders the pipeline runs on its threads: .npy arrays, and JPEG with the
 * usual training preprocessing (resize, crop, flip, normalise) — the CPU work that used to stall
 * training, now in C.
 *
 * JPEG: libjpeg-turbo, with an error manager that jumps back instead of exiting, and that treats
 * libjpeg's corrupt-data warnings (premature end of data, bad Huffman codes) as errors: a corrupt
 * image raises rather than decoding to gray. The decoder's DCT scaling (M/8) gets the image to the
 * smallest size still at least as large as what the resize needs, then a separable antialiased
 * bilinear filter (a triangle widened by the downscale factor, as Pillow's BILINEAR) produces the
 * output straight from the region the crop keeps. Every buffer is per call: thread-safe. */
#define _GNU_SOURCE
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#include "shards.h"

/* ---- .npy -------------------------------------------------------------------------------------- */

static const char *skip_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* The value text after key 'k' in the header dict (points at its first non-space char). */
static const char *dict_value(const char *h, const char *e, const char *key)
{
    size_t kl = strlen(key);
    for (const char *p = h; p + kl + 2 < e; p++) {
        if ((*p == '\'' || *p == '"') && !memcmp(p + 1, key, kl) && p[kl + 1] == *p) {
            const char *q = skip_ws(p + kl + 2, e);
            if (q < e && *q == ':') return skip_ws(q + 1, e);
        }
    }
    return NULL;
}

static int npy_dtype(const char *d, size_t n, dc_dtype *out, size_t *isz)
{
    static const struct {
        const char *name;
        dc_dtype dt;
        size_t size;
    } t[] = {
        { "b1", DC_BOOL, 1 },    { "u1", DC_UINT8, 1 },   { "i1", DC_INT8, 1 },
        { "i2", DC_INT16, 2 },   { "i4", DC_INT32, 4 },   { "i8", DC_INT64, 8 },
        { "f2", DC_FLOAT16, 2 }, { "f4", DC_FLOAT32, 4 }, { "f8", DC_FLOAT64, 8 },
    };
    if (n != 3 || (d[0] != '<' && d[0] != '|' && d[0] != '=')) return 0;
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        if (!memcmp(d + 1, t[i].name, 2)) {
            if (d[0] == '|' && t[i].size != 1) return 0;
            *out = t[i].dt;
            *isz = t[i].size;
            return 1;
        }
    }
    return 0;
}

dc_status dc_npy_parse(const void *buf, size_t len, dc_npy_info *out)
{
    const unsigned char *b = buf;
    memset(out, 0, sizeof *out);
    if (len < 10 || memcmp(b, "\x93NUMPY", 6)) return dc_error(DC_ERR_FORMAT, "not a .npy file (bad magic)");
    int major = b[6];
    size_t hlen, start;
    if (major == 1) {
        hlen = (size_t)b[8] | (size_t)b[9] << 8;
        start = 10;
    } else if (major == 2 || major == 3) {
        if (len < 12) return dc_error(DC_ERR_FORMAT, "truncated .npy header");
        hlen = (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
        start = 12;
    } else {
        return dc_error(DC_ERR_FORMAT, ".npy format version %d.%d is not supported", major, b[7]);
    }
    if (hlen > len - start)
        return dc_error(DC_ERR_FORMAT, "truncated .npy header (%zu of %zu bytes)", len - start, hlen);
    const char *h = (const char *)b + start, *e = h + hlen;
    const char *d = dict_value(h, e, "descr");
    if (!d || (*d != '\'' && *d != '"')) return dc_error(DC_ERR_FORMAT, ".npy header has no 'descr' string");
    const char *dq = memchr(d + 1, *d, (size_t)(e - d - 1));
    if (!dq) return dc_error(DC_ERR_FORMAT, ".npy header: unterminated 'descr'");
    size_t isz;
    if (!npy_dtype(d + 1, (size_t)(dq - d - 1), &out->dtype, &isz)) {
        int n = (int)(dq - d - 1);
        if (n == 3 && d[1] == '>')
            return dc_error(DC_ERR_FORMAT, ".npy dtype '%.*s' is big-endian; save it little-endian", n, d + 1);
        return dc_error(DC_ERR_FORMAT, ".npy dtype '%.*s' is not supported (bool, uint8, int8/16/32/64, float16/32/64)",
                        n > 40 ? 40 : n, d + 1);
    }
    const char *f = dict_value(h, e, "fortran_order");
    if (!f) return dc_error(DC_ERR_FORMAT, ".npy header has no 'fortran_order'");
    if (e - f >= 4 && !memcmp(f, "True", 4))
        return dc_error(DC_ERR_FORMAT, ".npy array is in Fortran order; save a C-contiguous array");
    if (!(e - f >= 5 && !memcmp(f, "False", 5))) return dc_error(DC_ERR_FORMAT, ".npy header: bad 'fortran_order'");
    const char *s = dict_value(h, e, "shape");
    if (!s || *s != '(') return dc_error(DC_ERR_FORMAT, ".npy header has no 'shape' tuple");
    s++;
    int nd = 0;
    uint64_t numel = 1;
    for (;;) {
        s = skip_ws(s, e);
        if (s >= e) return dc_error(DC_ERR_FORMAT, ".npy header: unterminated 'shape'");
        if (*s == ')') break;
        if (*s < '0' || *s > '9') return dc_error(DC_ERR_FORMAT, ".npy header: bad 'shape'");
        uint64_t v = 0;
        while (s < e && *s >= '0' && *s <= '9') {
            if (v > (UINT64_C(1) << 50)) return dc_error(DC_ERR_FORMAT, ".npy shape is too large");
            v = v * 10 + (uint64_t)(*s++ - '0');
        }
        if (s < e && *s == 'L') s++;
        if (nd == 8) return dc_error(DC_ERR_FORMAT, ".npy array has more than 8 dimensions");
        out->shape[nd++] = (int64_t)v;
        if (v && numel > (UINT64_C(1) << 62) / v) return dc_error(DC_ERR_FORMAT, ".npy shape is too large");
        numel *= v;
        s = skip_ws(s, e);
        if (s < e && *s == ',') s++;
    }
    out->ndim = nd;
    if (numel > (UINT64_C(1) << 62) / isz) return dc_error(DC_ERR_FORMAT, ".npy array is too large");
    out->nbytes = (size_t)(numel * isz);
    out->data_offset = start + hlen;
    if (out->nbytes > len - out->data_offset)
        return dc_error(DC_ERR_FORMAT, "truncated .npy data: %zu of %zu bytes", len - out->data_offset, out->nbytes);
    return DC_OK;
}

/* ---- JPEG -------------------------------------------------------------------------------------- */

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char msg[JMSG_LENGTH_MAX];
} jerr_t;

static void on_error(j_common_ptr cinfo)
{
    jerr_t *e = (jerr_t *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, e->msg);
    longjmp(e->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level)
{
    if (level < 0) { /* a warning: corrupt data. Make it an error. */
        jerr_t *e = (jerr_t *)cinfo->err;
        (*cinfo->err->format_message)(cinfo, e->msg);
        longjmp(e->jump, 1);
    }
}

static uint64_t mix(uint64_t *s)
{
    uint64_t x = (*s += 0x9e3779b97f4a7c15ull);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static double uniform(uint64_t *s)
{
    return (double)(mix(s) >> 11) * (1.0 / 9007199254740992.0);
}

static int64_t randint(uint64_t *s, int64_t lo, int64_t hi) /* [lo, hi] */
{
    return lo + (int64_t)(uniform(s) * (double)(hi - lo + 1));
}

/* The geometry: which rectangle of the source (in source pixels, as floats) becomes the output of
 * out_h x out_w, and whether to flip. */
typedef struct {
    double rx, ry, rw, rh;
    int out_w, out_h, flip;
} geom_t;

static dc_status plan(const dc_image_opts *o, int h, int w, geom_t *g)
{
    uint64_t rng = o->seed ^ 0x5851f42d4c957f2dull;
    /* 1. resize: the working image (h2 x w2) the crop sees, as torchvision's Resize(int) */
    double fx = 1, fy = 1;
    int h2 = h, w2 = w;
    if (o->resize > 0) {
        if (h <= w) {
            h2 = o->resize;
            w2 = (int)((double)o->resize * w / h);
        } else {
            w2 = o->resize;
            h2 = (int)((double)o->resize * h / w);
        }
        if (w2 < 1) w2 = 1;
        if (h2 < 1) h2 = 1;
        fx = (double)w2 / w;
        fy = (double)h2 / h;
    }
    /* 2. the crop, in working coordinates */
    double cx = 0, cy = 0, cw = w2, ch = h2;
    g->out_w = w2;
    g->out_h = h2;
    if (o->crop != DC_CROP_NONE) {
        if (o->crop_h <= 0 || o->crop_w <= 0)
            return dc_error(DC_ERR_VALUE, "image crop size %dx%d must be positive", o->crop_h, o->crop_w);
        g->out_w = o->crop_w;
        g->out_h = o->crop_h;
        if (o->crop == DC_CROP_RANDOM_RESIZED) {
            double area = (double)w2 * h2;
            double lr0 = log(o->ratio[0] > 0 ? o->ratio[0] : 0.75), lr1 = log(o->ratio[1] > 0 ? o->ratio[1] : 4.0 / 3);
            int found = 0;
            for (int t = 0; t < 10 && !found; t++) {
                double target = area * (o->scale[0] + uniform(&rng) * (o->scale[1] - o->scale[0]));
                double ar = exp(lr0 + uniform(&rng) * (lr1 - lr0));
                int ww = (int)lround(sqrt(target * ar)), hh = (int)lround(sqrt(target / ar));
                if (ww > 0 && hh > 0 && ww <= w2 && hh <= h2) {
                    cy = (double)randint(&rng, 0, h2 - hh);
                    cx = (double)randint(&rng, 0, w2 - ww);
                    cw = ww;
                    ch = hh;
                    found = 1;
                }
            }
            if (!found) { /* torchvision's fallback: a center crop of the clamped ratio */
                double in_ratio = (double)w2 / h2;
                double r0 = exp(lr0), r1 = exp(lr1);
                if (in_ratio < r0) {
                    cw = w2;
                    ch = lround(cw / r0);
                } else if (in_ratio > r1) {
                    ch = h2;
                    cw = lround(ch * r1);
                } else {
                    cw = w2;
                    ch = h2;
                }
                cy = floor((h2 - ch) / 2);
                cx = floor((w2 - cw) / 2);
            }
        } else {
            if (o->crop_h > h2 || o->crop_w > w2)
                return dc_error(DC_ERR_VALUE, "crop %dx%d is larger than the image (%dx%d after resize; %dx%d decoded)",
                                o->crop_h, o->crop_w, h2, w2, h, w);
            cw = o->crop_w;
            ch = o->crop_h;
            if (o->crop == DC_CROP_CENTER) {
                cy = (double)(int)lround((h2 - o->crop_h) / 2.0);
                cx = (double)(int)lround((w2 - o->crop_w) / 2.0);
            } else {
                cy = (double)randint(&rng, 0, h2 - o->crop_h);
                cx = (double)randint(&rng, 0, w2 - o->crop_w);
            }
        }
    }
    g->rx = cx / fx;
    g->ry = cy / fy;
    g->rw = cw / fx;
    g->rh = ch / fy;
    g->flip = o->flip_p > 0 && uniform(&rng) < o->flip_p;
    return DC_OK;
}

void dc_image_out_size(const dc_image_opts *o, int h, int w, int *out_h, int *out_w)
{
    geom_t g;
    dc_image_opts q = *o;
    if (q.crop == DC_CROP_CENTER || q.crop == DC_CROP_RANDOM) q.crop = DC_CROP_CENTER;
    if (plan(&q, h, w, &g)) {
        dc_clear_error();
        *out_h = o->crop ? o->crop_h : h;
        *out_w = o->crop ? o->crop_w : w;
        return;
    }
    *out_h = g.out_h;
    *out_w = g.out_w;
}

/* Filter taps for one axis: output i covers source [r0 + i*scale, r0 + (i+1)*scale) of a source
 * of n pixels. Triangle of radius max(scale, 1) (antialiased when reducing). */
typedef struct {
    int *start, *count;
    float *w; /* count[i] weights from w[i * maxk] */
    int maxk;
} taps_t;

static int make_taps(taps_t *t, int out, double r0, double rlen, int n)
{
    double scale = rlen / out;
    double support = scale > 1 ? scale : 1;
    t->maxk = (int)ceil(support) * 2 + 2;
    t->start = malloc((size_t)out * sizeof(int));
    t->count = malloc((size_t)out * sizeof(int));
    t->w = malloc((size_t)out * (size_t)t->maxk * sizeof(float));
    if (!t->start || !t->count || !t->w) return 0;
    for (int i = 0; i < out; i++) {
        double center = r0 + (i + 0.5) * scale;
        int lo = (int)floor(center - support), hi = (int)ceil(center + support);
        if (lo < 0) lo = 0;
        if (hi > n) hi = n;
        double sum = 0;
        int k = 0;
        float *w = t->w + (size_t)i * t->maxk;
        for (int j = lo; j < hi && k < t->maxk; j++) {
            double x = fabs((j + 0.5 - center) / support);
            double v = x < 1 ? 1 - x : 0;
            w[k++] = (float)v;
            sum += v;
        }
        if (sum <= 0) { /* the nearest pixel */
            int j = (int)floor(center);
            if (j < 0) j = 0;
            if (j >= n) j = n - 1;
            lo = j;
            k = 1;
            w[0] = 1;
            sum = 1;
        }
        for (int q = 0; q < k; q++) w[q] = (float)(w[q] / sum);
        t->start[i] = lo;
        t->count[i] = k;
    }
    return 1;
}

static void free_taps(taps_t *t)
{
    free(t->start);
    free(t->count);
    free(t->w);
}

static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

dc_status dc_jpeg_info(const void *buf, size_t len, int *h, int *w, int *components)
{
    struct jpeg_decompress_struct ci;
    jerr_t je;
    ci.err = jpeg_std_error(&je.pub);
    je.pub.error_exit = on_error;
    je.pub.emit_message = on_message;
    if (setjmp(je.jump)) {
        jpeg_destroy_decompress(&ci);
        return dc_error(DC_ERR_FORMAT, "corrupt JPEG: %s", je.msg);
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

dc_status dc_jpeg_decode(const void *buf, size_t len, const dc_image_opts *o, void **out, int *out_h, int *out_w)
{
    *out = NULL;
    if (o->out_dtype != DC_UINT8 && o->out_dtype != DC_FLOAT32 && o->out_dtype != DC_BFLOAT16)
        return dc_error(DC_ERR_VALUE, "image output dtype must be uint8, float32 or bfloat16");
    struct jpeg_decompress_struct ci;
    jerr_t je;
    /* everything the jump may leave behind lives in these volatile slots */
    uint8_t *volatile img = NULL;
    void *volatile res = NULL;
    float *volatile tmp = NULL;
    taps_t tx = { 0 }, ty = { 0 };
    ci.err = jpeg_std_error(&je.pub);
    je.pub.error_exit = on_error;
    je.pub.emit_message = on_message;
    if (setjmp(je.jump)) {
        jpeg_destroy_decompress(&ci);
        free(img);
        free(res);
        free(tmp);
        return dc_error(DC_ERR_FORMAT, "corrupt JPEG: %s", je.msg);
    }
    jpeg_create_decompress(&ci);
    if (len > 0xffffffffu) longjmp(je.jump, 1);
    jpeg_mem_src(&ci, buf, (unsigned long)len);
    jpeg_read_header(&ci, TRUE);
    int H = (int)ci.image_height, W = (int)ci.image_width;
    if ((int64_t)H * W > (int64_t)1 << 28) {
        jpeg_destroy_decompress(&ci);
        return dc_error(DC_ERR_FORMAT, "JPEG of %dx%d pixels is larger than the decoder's limit", H, W);
    }
    geom_t g;
    dc_status st = plan(o, H, W, &g);
    if (st) {
        jpeg_destroy_decompress(&ci);
        return st;
    }
    /* DCT scaling: the smallest M/8 that keeps the kept region at least the output size */
    int m = 8;
    while (m > 1 && g.rw * (m - 1) / 8.0 >= g.out_w && g.rh * (m - 1) / 8.0 >= g.out_h) m--;
    ci.scale_num = (unsigned)m;
    ci.scale_denom = 8;
    int cmyk = ci.jpeg_color_space == JCS_CMYK || ci.jpeg_color_space == JCS_YCCK;
    ci.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    ci.dct_method = JDCT_ISLOW;
    jpeg_start_decompress(&ci);
    int dh = (int)ci.output_height, dw = (int)ci.output_width, nc = ci.output_components;
    img = malloc((size_t)dh * (size_t)dw * (size_t)nc);
    if (!img) {
        jpeg_destroy_decompress(&ci);
        return dc_error(DC_ERR_NOMEM, "out of memory decoding a %dx%d JPEG", dh, dw);
    }
    while (ci.output_scanline < ci.output_height) {
        JSAMPROW row = img + (size_t)ci.output_scanline * (size_t)dw * (size_t)nc;
        jpeg_read_scanlines(&ci, &row, 1);
    }
    int adobe_inverted = ci.saw_Adobe_marker;
    jpeg_finish_decompress(&ci);
    jpeg_destroy_decompress(&ci);
    if (cmyk) { /* CMYK -> RGB in place (Adobe writes inverted CMYK) */
        uint8_t *rgb = img;
        for (size_t p = 0; p < (size_t)dh * (size_t)dw; p++) {
            int c = img[4 * p], mm = img[4 * p + 1], y = img[4 * p + 2], k = img[4 * p + 3];
            if (!adobe_inverted) c = 255 - c, mm = 255 - mm, y = 255 - y, k = 255 - k;
            rgb[3 * p] = (uint8_t)((c * k + 127) / 255);
            rgb[3 * p + 1] = (uint8_t)((mm * k + 127) / 255);
            rgb[3 * p + 2] = (uint8_t)((y * k + 127) / 255);
        }
        nc = 3;
    }
    /* the region in decoded pixels */
    double sx = (double)dw / W, sy = (double)dh / H;
    int ow = g.out_w, oh = g.out_h;
    if (!make_taps(&tx, ow, g.rx * sx, g.rw * sx, dw) || !make_taps(&ty, oh, g.ry * sy, g.rh * sy, dh)) goto nomem;
    /* rows the vertical pass needs */
    int y0 = ty.start[0], y1 = ty.start[oh - 1] + ty.count[oh - 1];
    tmp = malloc((size_t)(y1 - y0) * (size_t)ow * 3 * sizeof(float));
    size_t isz = o->out_dtype == DC_UINT8 ? 1 : o->out_dtype == DC_FLOAT32 ? 4 : 2;
    res = malloc((size_t)oh * (size_t)ow * 3 * isz);
    if (!tmp || !res) goto nomem;
    /* horizontal pass */
    for (int y = y0; y < y1; y++) {
        const uint8_t *src = img + (size_t)y * (size_t)dw * 3;
        float *dst = tmp + (size_t)(y - y0) * (size_t)ow * 3;
        for (int x = 0; x < ow; x++) {
            const float *w = tx.w + (size_t)x * tx.maxk;
            const uint8_t *s = src + (size_t)tx.start[x] * 3;
            float r = 0, gg = 0, b = 0;
            for (int k = 0; k < tx.count[x]; k++) {
                r += w[k] * s[3 * k];
                gg += w[k] * s[3 * k + 1];
                b += w[k] * s[3 * k + 2];
            }
            int xo = g.flip ? ow - 1 - x : x;
            dst[3 * xo] = r;
            dst[3 * xo + 1] = gg;
            dst[3 * xo + 2] = b;
        }
    }
    /* vertical pass, and the output format */
    float scale[3], shift[3];
    for (int c = 0; c < 3; c++) {
        float sd = o->std[c] != 0 ? o->std[c] : 1;
        scale[c] = 1.0f / (255.0f * sd);
        shift[c] = -o->mean[c] / sd;
    }
    size_t plane = (size_t)oh * (size_t)ow;
    for (int y = 0; y < oh; y++) {
        const float *w = ty.w + (size_t)y * ty.maxk;
        const float *base = tmp + (size_t)(ty.start[y] - y0) * (size_t)ow * 3;
        for (int x = 0; x < ow; x++) {
            float acc[3] = { 0, 0, 0 };
            for (int k = 0; k < ty.count[y]; k++) {
                const float *p = base + (size_t)k * (size_t)ow * 3 + 3 * (size_t)x;
                acc[0] += w[k] * p[0];
                acc[1] += w[k] * p[1];
                acc[2] += w[k] * p[2];
            }
            for (int c = 0; c < 3; c++) {
                float v = acc[c];
                if (o->out_dtype == DC_UINT8) {
                    int q = (int)lrintf(v);
                    ((uint8_t *)res)[((size_t)y * ow + x) * 3 + c] = (uint8_t)(q < 0 ? 0 : q > 255 ? 255 : q);
                } else {
                    float q = v < 0 ? 0 : v > 255 ? 255 : v;
                    float f = q * scale[c] + shift[c];
                    size_t idx = (size_t)c * plane + (size_t)y * ow + x;
                    if (o->out_dtype == DC_FLOAT32)
                        ((float *)res)[idx] = f;
                    else
                        ((uint16_t *)res)[idx] = to_bf16(f);
                }
            }
        }
    }
    free_taps(&tx);
    free_taps(&ty);
    free(tmp);
    free(img);
    *out = res;
    *out_h = oh;
    *out_w = ow;
    return DC_OK;
nomem:
    free_taps(&tx);
    free_taps(&ty);
    free(tmp);
    free(img);
    free(res);
    return dc_error(DC_ERR_NOMEM, "out of memory resizing a JPEG");
}
