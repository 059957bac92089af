/*
 * Example plugin in C (no libc) that calls app-defined host functions and logs.
 * The host app provides kv_get(key: str) -> str | None and kv_incr(key: str, by: int) -> int;
 * the policy must allow "log", "kv_get" and "kv_incr". Same behaviour as the Rust version.
 *
 *   plugin.call("render", "Hello, {user}!")   -> b"Hello, Ada!"
 *   plugin.call("visit", "home")               -> b"home: 3 visits"
 */
#define PLUGSAFE_IMPLEMENTATION
#include "plugsafe.h"

PLUGSAFE_IMPORT(kv_get) int64_t kv_get(const char *key, size_t key_len);
PLUGSAFE_IMPORT(kv_incr) int64_t kv_incr(const char *key, size_t key_len, int64_t by);

/* A growable output string in the arena. */
typedef struct {
    char *data;
    size_t len, cap;
} buf;

static int buf_add(buf *b, const void *src, size_t n) {
    const char *s = (const char *)src;
    size_t i;
    if (b->len + n > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 64);
        char *bigger;
        while (cap < b->len + n) cap *= 2;
        bigger = (char *)plugsafe_malloc(cap);
        if (bigger == NULL) return 0;
        for (i = 0; i < b->len; i++) bigger[i] = b->data[i];
        b->data = bigger; /* the old block stays in the arena until the next call */
        b->cap = cap;
    }
    for (i = 0; i < n; i++) b->data[b->len + i] = s[i];
    b->len += n;
    return 1;
}

static int buf_str(buf *b, const char *s) { return buf_add(b, s, plugsafe_strlen(s)); }

static int buf_u64(buf *b, uint64_t v) {
    char digits[20];
    return buf_add(b, digits, plugsafe_format_u64(v, digits));
}

static int buf_i64(buf *b, int64_t v) {
    char digits[21];
    return buf_add(b, digits, plugsafe_format_i64(v, digits));
}

/* Replaces every {key} with the store's value; a missing key logs a warning and renders as
   nothing; an unclosed '{' is an error. */
PLUGSAFE_EXPORT(render) {
    buf out = {NULL, 0, 0}, msg = {NULL, 0, 0};
    size_t i = 0, lookups = 0;
    while (i < input_len) {
        size_t open = i, close;
        while (open < input_len && input[open] != '{') open++;
        if (!buf_add(&out, input + i, open - i)) return plugsafe_error("out of memory");
        if (open == input_len) break;
        close = open + 1;
        while (close < input_len && input[close] != '}') close++;
        if (close == input_len) {
            buf err = {NULL, 0, 0};
            if (!buf_str(&err, "unclosed '{' at byte ") || !buf_u64(&err, open))
                return plugsafe_error("out of memory");
            return plugsafe_error_n(err.data, err.len);
        }
        {
            const char *key = (const char *)input + open + 1;
            size_t key_len = close - open - 1;
            plugsafe_bytes value = plugsafe_bytes_from(kv_get(key, key_len));
            lookups++;
            if (value.present) {
                if (!buf_add(&out, value.ptr, value.len)) return plugsafe_error("out of memory");
            } else {
                buf w = {NULL, 0, 0};
                if (buf_str(&w, "no value for key \"") && buf_add(&w, key, key_len) &&
                    buf_str(&w, "\""))
                    plugsafe_log_n(PLUGSAFE_LEVEL_WARN, w.data, w.len);
            }
        }
        i = close + 1;
    }
    if (buf_str(&msg, "rendered ") && buf_u64(&msg, out.len) && buf_str(&msg, " bytes with ") &&
        buf_u64(&msg, lookups) && buf_str(&msg, " lookups"))
        plugsafe_log_n(PLUGSAFE_LEVEL_INFO, msg.data, msg.len);
    return plugsafe_output(out.data, out.len);
}

/* Counts a visit to the page named by the input: "<page>: <n> visits". */
PLUGSAFE_EXPORT(visit) {
    buf key = {NULL, 0, 0}, out = {NULL, 0, 0};
    int64_t n;
    if (input_len == 0) return plugsafe_error("which page?");
    if (!buf_str(&key, "visits:") || !buf_add(&key, input, input_len))
        return plugsafe_error("out of memory");
    n = kv_incr(key.data, key.len, 1);
    if (!buf_add(&out, input, input_len) || !buf_str(&out, ": ") ||
        !buf_i64(&out, n) || !buf_str(&out, " visits"))
        return plugsafe_error("out of memory");
    return plugsafe_output(out.data, out.len);
}
