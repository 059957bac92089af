/*
 * The image-service world (wit/world.wit) as a WebAssembly component written in C.
 *
 * No binding generator: the canonical-ABI glue is written out here. Each exported function
 * gets the record `image` flattened into (width, height, data pointer, data length), owns the
 * `data` list the host allocated through cabi_realloc (and frees it), and returns a pointer to
 * a static return area holding the result record; the host then calls the function's
 * `cabi_post_*` export, which frees the result's pixels.
 *
 * The algorithms are the core-ABI example's (examples/plugins/c/image.c): the same grayscale
 * weights, bilinear resize and separable gaussian blur (sigma = radius), so the results match.
 * An image whose data is not width * height * 3 bytes of RGB traps: the world's functions
 * return an image, not a result, so there is no error value to return.
 *
 * Build (what tests/test_component_examples.py does):
 *   clang --target=wasm32-wasi -nostartfiles -O2 -Wl,--no-entry -Wl,--strip-all \
 *       -o image-core.wasm image.c
 *   wasm-tools component embed wit image-core.wasm --world image-service -o embedded.wasm
 *   wasm-tools component new embedded.wasm -o image-service.wasm
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define IFACE "mycompany:image-processor/processor@1.0.0#"
#define EXPORT(name) __attribute__((export_name(name)))
#define MAX_PIXELS ((uint64_t)1 << 24)
#define MAX_RADIUS 64.0

/* The canonical ABI's layout of `image`: four 32-bit fields. */
typedef struct {
    uint32_t width, height;
    uint8_t *data;
    uint32_t len;
} image;

static image RET;

EXPORT("cabi_realloc")
void *cabi_realloc(void *ptr, size_t old_size, size_t align, size_t new_size) {
    void *p;
    (void)old_size;
    if (new_size == 0) return (void *)align; /* any aligned non-null pointer will do */
    p = realloc(ptr, new_size);
    if (p == NULL) __builtin_trap();
    return p;
}

/* Checks that the data is width * height RGB pixels (traps otherwise). */
static void check(uint32_t width, uint32_t height, uint32_t len) {
    uint64_t n = (uint64_t)width * height;
    if (width == 0 || height == 0 || n > MAX_PIXELS || (uint64_t)len != n * 3) __builtin_trap();
}

static image *give(uint32_t width, uint32_t height, uint8_t *data) {
    RET.width = width;
    RET.height = height;
    RET.data = data;
    RET.len = width * height * 3;
    return &RET;
}

static uint8_t *alloc_pixels(size_t n) {
    uint8_t *p = (uint8_t *)malloc(n * 3);
    if (p == NULL) __builtin_trap();
    return p;
}

static uint8_t to_u8(double v) {
    double r = floor(v + 0.5);
    return r < 0.0 ? 0 : r > 255.0 ? 255 : (uint8_t)r;
}

EXPORT(IFACE "grayscale")
image *grayscale(uint32_t width, uint32_t height, uint8_t *data, uint32_t len) {
    size_t i, n;
    uint8_t *out;
    check(width, height, len);
    n = (size_t)width * height;
    out = alloc_pixels(n);
    for (i = 0; i < n; i++) {
        const uint8_t *px = data + 3 * i;
        uint8_t grey = (uint8_t)((299u * px[0] + 587u * px[1] + 114u * px[2] + 500u) / 1000u);
        out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = grey;
    }
    free(data);
    return give(width, height, out);
}

typedef struct {
    size_t i0, i1;
    double f;
} sample;

static sample *sample_points(size_t src, size_t dst) {
    sample *s = (sample *)malloc(dst * sizeof(sample));
    double scale = (double)src / (double)dst, last = (double)(src - 1);
    size_t i;
    if (s == NULL) __builtin_trap();
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

EXPORT(IFACE "resize")
image *resize(uint32_t width, uint32_t height, uint8_t *data, uint32_t len, uint32_t dw,
              uint32_t dh) {
    sample *xs, *ys;
    uint8_t *out, *o;
    size_t x, y, c;
    check(width, height, len);
    check(dw, dh, dw * dh * 3);
    xs = sample_points(width, dw);
    ys = sample_points(height, dh);
    out = o = alloc_pixels((size_t)dw * dh);
    for (y = 0; y < dh; y++)
        for (x = 0; x < dw; x++)
            for (c = 0; c < 3; c++) {
                double fx = xs[x].f, fy = ys[y].f;
#define AT(xx, yy) ((double)data[((yy) * width + (xx)) * 3 + c])
                double top = AT(xs[x].i0, ys[y].i0) * (1.0 - fx) + AT(xs[x].i1, ys[y].i0) * fx;
                double bottom = AT(xs[x].i0, ys[y].i1) * (1.0 - fx) + AT(xs[x].i1, ys[y].i1) * fx;
#undef AT
                *o++ = to_u8(top * (1.0 - fy) + bottom * fy);
            }
    free(xs);
    free(ys);
    free(data);
    return give(dw, dh, out);
}

static size_t clamp_index(long long i, size_t len) {
    return i < 0 ? 0 : (size_t)i >= len ? len - 1 : (size_t)i;
}

EXPORT(IFACE "blur")
image *blur(uint32_t width, uint32_t height, uint8_t *data, uint32_t len, float radius_f) {
    double radius = (double)radius_f, total = 0.0, *weights, *tmp;
    long long k, i, taps;
    size_t x, y, c, w = width, h = height;
    uint8_t *out, *o;
    check(width, height, len);
    /* Written so that NaN traps too. */
    if (!(radius >= 0.0 && radius <= MAX_RADIUS)) __builtin_trap();
    out = alloc_pixels(w * h);
    if (radius == 0.0) {
        memcpy(out, data, w * h * 3);
        free(data);
        return give(width, height, out);
    }
    k = (long long)ceil(3.0 * radius);
    taps = 2 * k + 1;
    weights = (double *)malloc((size_t)taps * sizeof(double));
    tmp = (double *)malloc(w * h * 3 * sizeof(double));
    if (!weights || !tmp) __builtin_trap();
    for (i = -k; i <= k; i++) weights[i + k] = exp(-(double)(i * i) / (2.0 * radius * radius));
    for (i = 0; i < taps; i++) total += weights[i];
    for (i = 0; i < taps; i++) weights[i] /= total;
    for (y = 0; y < h; y++)
        for (x = 0; x < w; x++)
            for (c = 0; c < 3; c++) {
                double acc = 0.0;
                for (i = 0; i < taps; i++)
                    acc += weights[i] *
                           (double)data[(y * w + clamp_index((long long)x + i - k, w)) * 3 + c];
                tmp[(y * w + x) * 3 + c] = acc;
            }
    o = out;
    for (y = 0; y < h; y++)
        for (x = 0; x < w; x++)
            for (c = 0; c < 3; c++) {
                double acc = 0.0;
                for (i = 0; i < taps; i++)
                    acc += weights[i] * tmp[(clamp_index((long long)y + i - k, h) * w + x) * 3 + c];
                *o++ = to_u8(acc);
            }
    free(weights);
    free(tmp);
    free(data);
    return give(width, height, out);
}

/* After the host has copied a result out: free its pixels. */
static void post(image *ret) {
    free(ret->data);
    ret->data = NULL;
}

EXPORT("cabi_post_" IFACE "grayscale") void post_grayscale(image *ret) { post(ret); }
EXPORT("cabi_post_" IFACE "resize") void post_resize(image *ret) { post(ret); }
EXPORT("cabi_post_" IFACE "blur") void post_blur(image *ret) { post(ret); }
