/*
 * A plugsafe plugin in C, as a WebAssembly component: the world in wit/world.wit.
 * Build it with `make` (the plugin is plugsafe_template.wasm); test it with `python -m pytest`.
 *
 * No binding generator: the canonical-ABI glue is written out here, and is short for strings.
 * For each function the world exports, the core module exports
 *   - the function under its WIT name ("shout"; "ns:pkg/iface#func" for an interface's), taking
 *     its parameters flattened (a string is a pointer and a length, in memory the host
 *     allocated through cabi_realloc: the function owns it and must free it), and returning a
 *     pointer to a return area that holds the result in the canonical layout;
 *   - "cabi_post_" + that name, which the host calls after reading the result, to free it.
 * The layouts are in the component model's canonical ABI:
 * https://github.com/WebAssembly/component-model/blob/main/design/mvp/CanonicalABI.md
 *
 * A trap (__builtin_trap, an out-of-bounds access, ...) is a plugsafe.PluginTrap on the host;
 * the plugin's next call runs on a fresh instance.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define EXPORT(name) __attribute__((export_name(name)))

/* The canonical layout of result<string, string>: a tag byte (0 ok, 1 err), then the string
   (pointer and length) at offset 4. */
typedef struct {
    uint8_t is_err;
    const uint8_t *ptr;
    size_t len;
} result_string;

/* The return area: one per function is enough, since a plugin instance runs one call at a time
   and the host reads the result before the next call. */
static result_string RET;
/* Whether RET.ptr came from malloc (cabi_post_* frees it) or is a static string. */
static int RET_OWNED;

/* The host allocates the memory for the arguments (the text of a string) through this. */
EXPORT("cabi_realloc")
void *cabi_realloc(void *ptr, size_t old_size, size_t align, size_t new_size) {
    void *p;
    (void)old_size;
    if (new_size == 0) return (void *)align; /* any aligned non-null pointer will do */
    p = realloc(ptr, new_size);
    if (p == NULL) __builtin_trap(); /* out of memory (the policy's memory cap) */
    return p;
}

static result_string *ok(uint8_t *text, size_t len) {
    RET.is_err = 0;
    RET.ptr = text;
    RET.len = len;
    RET_OWNED = 1;
    return &RET;
}

static result_string *err(const char *message) {
    size_t n = 0;
    while (message[n] != '\0') n++;
    RET.is_err = 1;
    RET.ptr = (const uint8_t *)message;
    RET.len = n;
    RET_OWNED = 0;
    return &RET;
}

/* shout("hello") returns "HELLO"; an empty text is an error (a GuestError on the host).
   It works on the text in place: the host gave it to us, so it is ours to return (and free). */
EXPORT("shout")
result_string *shout(uint8_t *text, size_t len) {
    size_t i;
    if (len == 0) return err("nothing to shout");
    for (i = 0; i < len; i++) {
        if (text[i] >= 'a' && text[i] <= 'z') text[i] = (uint8_t)(text[i] - 'a' + 'A');
    }
    return ok(text, len);
}

EXPORT("cabi_post_shout")
void post_shout(result_string *ret) {
    if (RET_OWNED) free((void *)ret->ptr);
    RET_OWNED = 0;
}
