/*
 * plugsafe.h - guest SDK for plugsafe plugins written in C or C++ (plugin ABI version 1).
 *
 * One header, no libc needed. In exactly one source file of the plugin write
 *
 *     #define PLUGSAFE_IMPLEMENTATION
 *     #include "plugsafe.h"
 *
 * and include it plainly everywhere else. A complete plugin:
 *
 *     #define PLUGSAFE_IMPLEMENTATION
 *     #include "plugsafe.h"
 *
 *     PLUGSAFE_EXPORT(shout) {                  // input: uint8_t *input, size_t input_len
 *         if (input_len == 0) return plugsafe_error("nothing to shout");
 *         for (size_t i = 0; i < input_len; i++)
 *             if (input[i] >= 'a' && input[i] <= 'z') input[i] -= 32;
 *         return plugsafe_output(input, input_len);
 *     }
 *
 * Build it without libc:
 *     clang --target=wasm32-unknown-unknown -O2 -nostdlib -Wl,--no-entry -o shout.wasm shout.c
 * or with wasi-libc (for its string and math functions; the plugin must not call anything that
 * needs WASI imports, which plugsafe denies by default):
 *     clang --target=wasm32-wasi -O2 -nostartfiles -Wl,--no-entry -o shout.wasm shout.c
 *
 * Memory: the input buffer, plugsafe_malloc() blocks and host-function results all live in a
 * small arena that is released when the NEXT call starts (after the host has copied this
 * call's output). Nothing needs freeing; nothing from the arena may be kept across calls (use
 * static storage, or libc malloc with wasi-libc, for that).
 *
 * Inputs of up to PLUGSAFE_INPUT_BUFFER_SIZE bytes (4096 unless defined otherwise before the
 * implementation; 0 turns it off) do not even go through the arena: the host writes them into
 * a static buffer this header exports as plugsafe_input_buffer, which spares a wasm call per
 * plugin call. The rule is the same: the input is valid until the function returns.
 *
 * The ABI itself is described in docs/abi.md of the plugsafe repository.
 */
#ifndef PLUGSAFE_H
#define PLUGSAFE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** The plugin ABI version this header implements (the plugsafe_abi_version export). */
#define PLUGSAFE_ABI_VERSION 1

/** The i64 a plugin function returns: output or error message, as (ptr << 32) | E | len. */
typedef int64_t plugsafe_result;

/** Log levels of the built-in `log` host function (trace and debug are both Python DEBUG). */
enum plugsafe_level {
    PLUGSAFE_LEVEL_TRACE = 0,
    PLUGSAFE_LEVEL_DEBUG = 1,
    PLUGSAFE_LEVEL_INFO = 2,
    PLUGSAFE_LEVEL_WARN = 3,
    PLUGSAFE_LEVEL_ERROR = 4
};

/** A byte string a host function returned; `present` is 0 for Python's None. */
typedef struct plugsafe_bytes {
    uint8_t *ptr;
    size_t len;
    int present;
} plugsafe_bytes;

/* ------------------------------------------------------------------------------------------ */
/* Exporting plugin functions                                                                  */
/* ------------------------------------------------------------------------------------------ */

/**
 * Defines the plugin function `name`, exported under that name. Write the body right after
 * it. In the body, `input` (uint8_t *) and `input_len` (size_t) are the caller's bytes; the
 * buffer is the plugin's own and may be changed in place (it is NULL when input_len is 0).
 * Return plugsafe_output(...) or plugsafe_error(...).
 */
#define PLUGSAFE_EXPORT(name)                                                                  \
    static plugsafe_result plugsafe__impl_##name(uint8_t *input, size_t input_len);            \
    __attribute__((export_name(#name))) int64_t plugsafe__export_##name(int32_t ptr,           \
                                                                          int32_t len);         \
    int64_t plugsafe__export_##name(int32_t ptr, int32_t len) {                                \
        return plugsafe__call(plugsafe__impl_##name, ptr, len);                                \
    }                                                                                          \
    static plugsafe_result plugsafe__impl_##name(uint8_t *input, size_t input_len)

/** What PLUGSAFE_EXPORT expands to; not for direct use. */
int64_t plugsafe__call(plugsafe_result (*fn)(uint8_t *, size_t), int32_t ptr, int32_t len);

/** Length of a NUL-terminated string (no libc needed). */
size_t plugsafe_strlen(const char *s);

/**
 * Returns `len` bytes at `ptr` as the call's output. The bytes must stay valid until the function
 * has returned: the input buffer, plugsafe_malloc() memory or static data; never a local array.
 */
static inline plugsafe_result plugsafe_output(const void *ptr, size_t len) {
    /* The length field has 31 bits; larger outputs cannot be described. */
    if (len > 0x7FFFFFFFu) {
        static const char msg[] = "output too large for the plugsafe ABI";
        return (plugsafe_result)(((uint64_t)(uintptr_t)msg << 32) | 0x80000000u |
                                 (uint64_t)(sizeof msg - 1));
    }
    return (plugsafe_result)(((uint64_t)(uintptr_t)ptr << 32) | (uint64_t)len);
}

/** Returns a NUL-terminated string as the call's output (same lifetime rule as above). */
static inline plugsafe_result plugsafe_output_str(const char *s) {
    return plugsafe_output(s, plugsafe_strlen(s));
}

/** Ends the call with an error: the host raises GuestError with this message (`len` bytes). */
static inline plugsafe_result plugsafe_error_n(const char *msg, size_t len) {
    if (len > 0x7FFFFFFFu) len = 0x7FFFFFFFu; /* cut: the host decodes messages leniently */
    return (plugsafe_result)(((uint64_t)(uintptr_t)msg << 32) | 0x80000000u | (uint64_t)len);
}

/** Ends the call with an error; `msg` is NUL-terminated and must outlive the return. */
static inline plugsafe_result plugsafe_error(const char *msg) {
    return plugsafe_error_n(msg, plugsafe_strlen(msg));
}

/** `return PLUGSAFE_OUTPUT_LITERAL("text");` - a string literal as output, length from sizeof. */
#define PLUGSAFE_OUTPUT_LITERAL(lit) plugsafe_output("" lit, sizeof(lit) - 1)

/** `return PLUGSAFE_ERROR_LITERAL("message");` - a string literal as the error message. */
#define PLUGSAFE_ERROR_LITERAL(lit) plugsafe_error_n("" lit, sizeof(lit) - 1)

/* ------------------------------------------------------------------------------------------ */
/* Memory                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/**
 * `n` bytes aligned to 8, valid until the next call starts, or NULL when the policy's memory
 * cap is reached. Nothing needs freeing.
 */
void *plugsafe_malloc(size_t n);

/** Copies `len` bytes into fresh arena memory (NULL if out of memory). */
void *plugsafe_memdup(const void *ptr, size_t len);

/** Writes `v` in decimal to `buf` (at least 20 bytes, no NUL added); returns the length. */
size_t plugsafe_format_u64(uint64_t v, char *buf);

/** Writes `v` in decimal to `buf` (at least 21 bytes, no NUL added); returns the length. */
size_t plugsafe_format_i64(int64_t v, char *buf);

/* ------------------------------------------------------------------------------------------ */
/* Logging (the plugin's policy must allow "log"; the import only exists if you log)           */
/* ------------------------------------------------------------------------------------------ */

__attribute__((import_module("plugsafe"), import_name("log"))) void plugsafe__host_log(
    int32_t level, const char *ptr, size_t len);

/** Logs `len` bytes of UTF-8 at `level` to the Python logger plugsafe.plugin.<name>. */
static inline void plugsafe_log_n(enum plugsafe_level level, const char *msg, size_t len) {
    plugsafe__host_log((int32_t)level, msg, len);
}

/** Logs a NUL-terminated message at `level`. */
static inline void plugsafe_log(enum plugsafe_level level, const char *msg) {
    plugsafe__host_log((int32_t)level, msg, plugsafe_strlen(msg));
}

#define PLUGSAFE_LOG_TRACE(msg) plugsafe_log(PLUGSAFE_LEVEL_TRACE, (msg))
#define PLUGSAFE_LOG_DEBUG(msg) plugsafe_log(PLUGSAFE_LEVEL_DEBUG, (msg))
#define PLUGSAFE_LOG_INFO(msg) plugsafe_log(PLUGSAFE_LEVEL_INFO, (msg))
#define PLUGSAFE_LOG_WARN(msg) plugsafe_log(PLUGSAFE_LEVEL_WARN, (msg))
#define PLUGSAFE_LOG_ERROR(msg) plugsafe_log(PLUGSAFE_LEVEL_ERROR, (msg))

/* ------------------------------------------------------------------------------------------ */
/* App-defined host functions                                                                  */
/* ------------------------------------------------------------------------------------------ */

/**
 * Put in front of a declaration to import the app-defined host function `name`:
 *
 *     PLUGSAFE_IMPORT(kv_get) int64_t kv_get(const char *key, size_t key_len);
 *     PLUGSAFE_IMPORT(add) int64_t add(int64_t a, int64_t b);
 *
 * Parameter and result types follow the Python annotations: bytes/str -> (const void *, size_t)
 * pair; int -> int64_t; float -> double; bool -> int32_t; a bytes/str result -> int64_t word
 * (decode it with plugsafe_bytes_from); no result -> void. The policy must allow `name`.
 */
#define PLUGSAFE_IMPORT(name) __attribute__((import_module("plugsafe"), import_name(#name)))

/** Decodes a bytes/str result word of a host function (-1, Python's None, gives present=0). */
static inline plugsafe_bytes plugsafe_bytes_from(int64_t word) {
    plugsafe_bytes b;
    if (word == -1) {
        b.ptr = NULL;
        b.len = 0;
        b.present = 0;
    } else {
        b.ptr = (uint8_t *)(uintptr_t)(uint32_t)((uint64_t)word >> 32);
        b.len = (size_t)((uint64_t)word & 0x7FFFFFFFu);
        b.present = 1;
    }
    return b;
}

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* PLUGSAFE_H */

/* ========================================================================================== */
/* Implementation: compiled into the one file that defines PLUGSAFE_IMPLEMENTATION (outside the */
/* include guard, so it also works if the header was already included plainly).               */
/* ========================================================================================== */
#ifdef PLUGSAFE_IMPLEMENTATION
#ifndef PLUGSAFE__IMPLEMENTED
#define PLUGSAFE__IMPLEMENTED

#ifdef __cplusplus
extern "C" {
#endif

#define PLUGSAFE__PAGE ((uintptr_t)65536)

/* Where the instance is in the host's sequence alloc(input) -> f(ptr, len) -> copy output. */
enum { PLUGSAFE__IDLE = 0, PLUGSAFE__PREPARED = 1, PLUGSAFE__IN_CALL = 2 };

/* All zero at start, so it costs no data segment. Plugins are single-threaded. */
static struct {
    uintptr_t start; /* first byte of the region the arena bumps in (0: none yet) */
    uintptr_t top;   /* next free byte */
    uintptr_t end;   /* one past the region */
    int phase;
} plugsafe__st;

/* Takes `pages` fresh pages; returns their address, or 0 when the host refuses. */
static uintptr_t plugsafe__grow(uintptr_t pages) {
    size_t prev = __builtin_wasm_memory_grow(0, pages);
    if (prev == (size_t)-1) return 0;
    return (uintptr_t)prev * PLUGSAFE__PAGE;
}

static uintptr_t plugsafe__pages_for(uintptr_t bytes) {
    return bytes / PLUGSAFE__PAGE + (bytes % PLUGSAFE__PAGE != 0);
}

void *plugsafe_malloc(size_t n) {
    uintptr_t addr = (plugsafe__st.top + 7u) & ~(uintptr_t)7u;
    uintptr_t new_top, base, pages;
    if (n > UINTPTR_MAX - addr) return NULL;
    new_top = addr + n;
    if (plugsafe__st.end != 0 && new_top <= plugsafe__st.end) {
        plugsafe__st.top = new_top;
        return (void *)addr;
    }
    /* Out of room: take pages that usually continue the region. If something else grew memory
       in between (libc malloc) or this is the first block, start a new region there instead:
       the arena never touches memory it did not grow itself. */
    if (plugsafe__st.end != 0) {
        pages = plugsafe__pages_for(new_top - plugsafe__st.end);
    } else {
        if (n > UINTPTR_MAX - 8u) return NULL;
        pages = plugsafe__pages_for(n + 8u);
    }
    base = plugsafe__grow(pages);
    if (base == 0) return NULL;
    if (plugsafe__st.end != 0 && base == plugsafe__st.end) {
        plugsafe__st.end += pages * PLUGSAFE__PAGE;
    } else {
        plugsafe__st.start = base;
        plugsafe__st.end = base + pages * PLUGSAFE__PAGE;
        addr = base; /* page aligned */
        new_top = addr + n;
        if (new_top > plugsafe__st.end) {
            uintptr_t more = plugsafe__pages_for(new_top - plugsafe__st.end);
            if (plugsafe__grow(more) != plugsafe__st.end) return NULL;
            plugsafe__st.end += more * PLUGSAFE__PAGE;
        }
    }
    plugsafe__st.top = new_top;
    return (void *)addr;
}

/* The input buffer (docs/abi.md, "The input buffer"): the host places inputs that fit here
   instead of asking plugsafe_alloc for room, so a call is one wasm call instead of two. A
   zero-initialized static: it costs memory, not bytes of the .wasm file. */
#ifndef PLUGSAFE_INPUT_BUFFER_SIZE
#define PLUGSAFE_INPUT_BUFFER_SIZE 4096
#endif
#if PLUGSAFE_INPUT_BUFFER_SIZE > 0x7FFFFFFF
#error "PLUGSAFE_INPUT_BUFFER_SIZE must fit the ABI's 31-bit lengths"
#endif
#if PLUGSAFE_INPUT_BUFFER_SIZE > 0
static uint8_t plugsafe__input[PLUGSAFE_INPUT_BUFFER_SIZE] __attribute__((aligned(8)));

/* Asked once per instance, before its first call with input: (pointer << 32) | capacity. */
__attribute__((export_name("plugsafe_input_buffer"))) int64_t plugsafe__input_buffer(void);
int64_t plugsafe__input_buffer(void) {
    return (int64_t)(((uint64_t)(uintptr_t)plugsafe__input << 32) |
                     (uint64_t)(uint32_t)PLUGSAFE_INPUT_BUFFER_SIZE);
}
#endif

/* The previous call's output has been copied by now: everything in the arena is free again. */
static void plugsafe__new_call(void) { plugsafe__st.top = plugsafe__st.start; }

__attribute__((export_name("plugsafe_abi_version"))) int32_t plugsafe__abi_version(void);
int32_t plugsafe__abi_version(void) { return PLUGSAFE_ABI_VERSION; }

__attribute__((export_name("plugsafe_alloc"))) int32_t plugsafe__alloc(int32_t len);
int32_t plugsafe__alloc(int32_t len) {
    if (plugsafe__st.phase == PLUGSAFE__IDLE) {
        /* The host allocates a new call's input: the first moment the old output is done. */
        plugsafe__new_call();
        plugsafe__st.phase = PLUGSAFE__PREPARED;
    }
    /* The ABI reads lengths as unsigned; 0 means "cannot". */
    return (int32_t)(uintptr_t)plugsafe_malloc((size_t)(uint32_t)len);
}

int64_t plugsafe__call(plugsafe_result (*fn)(uint8_t *, size_t), int32_t ptr, int32_t len) {
    plugsafe_result r;
    size_t n = (size_t)(uint32_t)len;
    /* Empty input, and input placed in the input buffer, skip plugsafe_alloc, so the new call
       may start only here. */
    if (plugsafe__st.phase == PLUGSAFE__IDLE) plugsafe__new_call();
    plugsafe__st.phase = PLUGSAFE__IN_CALL;
    r = fn(n ? (uint8_t *)(uintptr_t)(uint32_t)ptr : (uint8_t *)NULL, n);
    plugsafe__st.phase = PLUGSAFE__IDLE;
    return r;
}

size_t plugsafe_strlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

void *plugsafe_memdup(const void *ptr, size_t len) {
    uint8_t *dst = (uint8_t *)plugsafe_malloc(len);
    const uint8_t *src = (const uint8_t *)ptr;
    size_t i;
    if (dst == NULL) return NULL;
    for (i = 0; i < len; i++) dst[i] = src[i];
    return dst;
}

size_t plugsafe_format_u64(uint64_t v, char *buf) {
    char tmp[20];
    size_t n = 0, i;
    do {
        tmp[n++] = (char)('0' + (int)(v % 10u));
        v /= 10u;
    } while (v != 0);
    for (i = 0; i < n; i++) buf[i] = tmp[n - 1 - i];
    return n;
}

size_t plugsafe_format_i64(int64_t v, char *buf) {
    if (v < 0) {
        buf[0] = '-';
        /* 0 - (uint64_t)v is |v| even for INT64_MIN. */
        return 1 + plugsafe_format_u64(0u - (uint64_t)v, buf + 1);
    }
    return plugsafe_format_u64((uint64_t)v, buf);
}

#if !defined(__wasi__) && !defined(PLUGSAFE_NO_MEMFUNCS)
/* Without libc, clang still emits calls to these for struct copies and recognised loops. They
   are weak so a plugin's own versions win, and no_builtin keeps clang from turning their loops
   back into calls to themselves. */
__attribute__((weak, no_builtin)) void *memcpy(void *dst, const void *src, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    while (n--) *d++ = *s++;
    return dst;
}

__attribute__((weak, no_builtin)) void *memmove(void *dst, const void *src, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    if (d < s) {
        while (n--) *d++ = *s++;
    } else {
        while (n--) d[n] = s[n];
    }
    return dst;
}

__attribute__((weak, no_builtin)) void *memset(void *dst, int c, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    while (n--) *d++ = (uint8_t)c;
    return dst;
}

__attribute__((weak, no_builtin)) int memcmp(const void *a, const void *b, size_t n) {
    const uint8_t *x = (const uint8_t *)a, *y = (const uint8_t *)b;
    for (; n; n--, x++, y++)
        if (*x != *y) return *x < *y ? -1 : 1;
    return 0;
}
#endif

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* PLUGSAFE__IMPLEMENTED */
#endif /* PLUGSAFE_IMPLEMENTATION */
