/*
 * Image processing example plugin in C, built against wasi-libc for its math functions (exp,
 * floor, ceil); it calls nothing that needs a WASI import. Same formats and algorithms as the
 * Rust version (see examples/plugins/rust/image/src/lib.rs):
 *
 *   image:      width u32 LE | height u32 LE | width * height * 3 bytes of RGB
 *   grayscale:  image                          -> image
 *   resize:     new_w u32 | new_h u32 | image  -> image (bilinear)
 *   blur:       radius f64 LE | image          -> image (gaussian, sigma = radius)
 */
#include <math.h>
#include <string.h>

#define PLUGSAFE_IMPLEMENTATION
#include "plugsafe.h"

#define MAX_PIXELS ((uint64_t)1 << 24)
#define MAX_RADIUS 64.0

typedef struct {
    size_t width, height;
    const uint8_t *pixels;
} image;

static uint32_t le_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static char *put(char *p, const char *s) {
    while (*s) *p++ = *s++;
    return p;
}

/* Error messages are built in the arena: they must outlive the function's return. */
static const char *message(const char *a, uint64_t n1, const char *b, uint64_t n2,
                           const char *c) {
    char *m = (char *)plugsafe_malloc(200), *p = m;
    if (m == NULL) return "out of memory";
    p = put(p, a);
    p += plugsafe_format_u64(n1, p);
    p = put(p, b);
    p += plugsafe_format_u64(n2, p);
    *put(p, c) = '\0';
    return m;
}

/* NULL if width x height is acceptable, else the error message. */
static const char *check_size(uint64_t width, uint64_t height) {
    if (width == 0 || height == 0)
        return message("image must be at least 1x1, got ", width, "x", height, "");
    if (width * height > MAX_PIXELS)
        return message("image of ", width, "x", height, " pixels is over the limit");
    return NULL;
}

/* Parses an image whose header must describe exactly the data that follows. */
static const char *parse(const uint8_t *data, size_t len, image *img) {
    uint64_t width, height, needed;
    const char *err;
    if (len < 8) return message("image header needs 8 bytes, got ", len, "", 0, "");
    width = le_u32(data);
    height = le_u32(data + 4);
    if ((err = check_size(width, height)) != NULL) return err;
    needed = width * height * 3;
    if ((uint64_t)(len - 8) != needed)
        return message("header says the pixels take ", needed, " bytes but ", len - 8,
                       " bytes follow");
    img->width = (size_t)width;
    img->height = (size_t)height;
    img->pixels = data + 8;
    return NULL;
}

/* An output buffer with the header filled in, or NULL. */
static uint8_t *new_image(size_t width, size_t height) {
    uint8_t *out = (uint8_t *)plugsafe_malloc(8 + width * height * 3);
    size_t i;
    if (out == NULL) return NULL;
    for (i = 0; i < 4; i++) {
        out[i] = (uint8_t)(width >> (8 * i));
        out[4 + i] = (uint8_t)(height >> (8 * i));
    }
    return out;
}

static uint8_t to_u8(double v) {
    double r = floor(v + 0.5);
    return r < 0.0 ? 0 : r > 255.0 ? 255 : (uint8_t)r;
}

static double at(const image *img, size_t x, size_t y, size_t c) {
    return (double)img->pixels[(y * img->width + x) * 3 + c];
}

PLUGSAFE_EXPORT(grayscale) {
    image img;
    const char *err = parse(input, input_len, &img);
    uint8_t *out, *o;
    size_t i, n;
    if (err) return plugsafe_error(err);
    if ((out = new_image(img.width, img.height)) == NULL) return plugsafe_error("out of memory");
    n = img.width * img.height;
    for (i = 0, o = out + 8; i < n; i++, o += 3) {
        const uint8_t *px = img.pixels + 3 * i;
        uint8_t grey = (uint8_t)((299u * px[0] + 587u * px[1] + 114u * px[2] + 500u) / 1000u);
        o[0] = o[1] = o[2] = grey;
    }
    return plugsafe_output(out, 8 + 3 * n);
}

typedef struct {
    size_t i0, i1;
    double f;
} sample;

/* Where each of `dst` output pixels samples a row or column of `src` pixels. */
static sample *sample_points(size_t src, size_t dst) {
    sample *s = (sample *)plugsafe_malloc(dst * sizeof(sample));
    double scale = (double)src / (double)dst, last = (double)(src - 1);
    size_t i;
    if (s == NULL) return NULL;
    for (i = 0; i < dst; i++) {
        double p = ((double)i + 0.5) * scale - 0.5;
        if (p < 0.0) p = 0.0;
        if (p > last) p = last;
        s[i].i0 = (size_t)floor(p);
        s[i].i1 = s[i].i0 + 1 < src ? s[i].i0 + 1 : src - 1;
        s[i].f = p - (double)s[i].i0;
    }
    return s;
}

PLUGSAFE_EXPORT(resize) {
    image img;
    const char *err;
    uint64_t dw, dh;
    sample *xs, *ys;
    uint8_t *out, *o;
    size_t x, y, c;
    if (input_len < 8)
        return plugsafe_error("resize needs the new width and height (8 bytes) before the image");
    dw = le_u32(input);
    dh = le_u32(input + 4);
    if ((err = check_size(dw, dh)) != NULL) return plugsafe_error(err);
    if ((err = parse(input + 8, input_len - 8, &img)) != NULL) return plugsafe_error(err);
    xs = sample_points(img.width, (size_t)dw);
    ys = sample_points(img.height, (size_t)dh);
    out = new_image((size_t)dw, (size_t)dh);
    if (!xs || !ys || !out) return plugsafe_error("out of memory");
    o = out + 8;
    for (y = 0; y < dh; y++) {
        for (x = 0; x < dw; x++) {
            for (c = 0; c < 3; c++) {
                double fx = xs[x].f, fy = ys[y].f;
                double top = at(&img, xs[x].i0, ys[y].i0, c) * (1.0 - fx) +
                             at(&img, xs[x].i1, ys[y].i0, c) * fx;
                double bottom = at(&img, xs[x].i0, ys[y].i1, c) * (1.0 - fx) +
                                at(&img, xs[x].i1, ys[y].i1, c) * fx;
                *o++ = to_u8(top * (1.0 - fy) + bottom * fy);
            }
        }
    }
    return plugsafe_output(out, 8 + 3 * (size_t)(dw * dh));
}

static size_t clamp_index(long long i, size_t len) {
    return i < 0 ? 0 : (size_t)i >= len ? len - 1 : (size_t)i;
}

PLUGSAFE_EXPORT(blur) {
    image img;
    const char *err;
    double radius, total = 0.0, *weights, *tmp;
    long long k, i, taps;
    size_t x, y, c, w, h;
    uint8_t *out, *o;
    if (input_len < 8) return plugsafe_error("blur needs the radius (8 bytes, f64) before the image");
    memcpy(&radius, input, 8); /* wasm is little-endian, like the request */
    /* Written so that NaN fails too. */
    if (!(radius >= 0.0 && radius <= MAX_RADIUS))
        return plugsafe_error("blur radius must be a number from 0 to 64");
    if ((err = parse(input + 8, input_len - 8, &img)) != NULL) return plugsafe_error(err);
    w = img.width;
    h = img.height;
    if ((out = new_image(w, h)) == NULL) return plugsafe_error("out of memory");
    if (radius == 0.0) {
        memcpy(out + 8, img.pixels, w * h * 3);
        return plugsafe_output(out, 8 + w * h * 3);
    }
    k = (long long)ceil(3.0 * radius);
    taps = 2 * k + 1;
    weights = (double *)plugsafe_malloc((size_t)taps * sizeof(double));
    tmp = (double *)plugsafe_malloc(w * h * 3 * sizeof(double));
    if (!weights || !tmp) return plugsafe_error("out of memory");
    for (i = -k; i <= k; i++) weights[i + k] = exp(-(double)(i * i) / (2.0 * radius * radius));
    for (i = 0; i < taps; i++) total += weights[i];
    for (i = 0; i < taps; i++) weights[i] /= total;
    /* Horizontal pass into doubles, unrounded; the vertical pass rounds once. */
    for (y = 0; y < h; y++)
        for (x = 0; x < w; x++)
            for (c = 0; c < 3; c++) {
                double acc = 0.0;
                for (i = 0; i < taps; i++)
                    acc += weights[i] * at(&img, clamp_index((long long)x + i - k, w), y, c);
                tmp[(y * w + x) * 3 + c] = acc;
            }
    o = out + 8;
    for (y = 0; y < h; y++)
        for (x = 0; x < w; x++)
            for (c = 0; c < 3; c++) {
                double acc = 0.0;
                for (i = 0; i < taps; i++)
                    acc += weights[i] * tmp[(clamp_index((long long)y + i - k, h) * w + x) * 3 + c];
                *o++ = to_u8(acc);
            }
    return plugsafe_output(out, 8 + w * h * 3);
}
