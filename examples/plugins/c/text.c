/*
 * Text transform example plugin in C (no libc): `uppercase` and `word_count`.
 * Same behaviour as the Rust version, except that `uppercase` only changes ASCII letters.
 *
 *   plugin.call("uppercase", "hello")      -> b"HELLO"
 *   plugin.call("word_count", "a b\nc")    -> b'{"words":3,"lines":2,"chars":5}'
 */
#define PLUGSAFE_IMPLEMENTATION
#include "plugsafe.h"

/* Checks UTF-8 the way Rust's str does (no overlongs, no surrogates, at most U+10FFFF) and
   counts the characters; returns -1 if the text is not valid UTF-8. */
static long long utf8_chars(const uint8_t *s, size_t n) {
    size_t i = 0;
    long long chars = 0;
    while (i < n) {
        uint8_t b = s[i];
        size_t len, k;
        uint32_t cp;
        if (b < 0x80) { len = 1; cp = b; }
        else if ((b & 0xE0) == 0xC0) { len = 2; cp = b & 0x1Fu; }
        else if ((b & 0xF0) == 0xE0) { len = 3; cp = b & 0x0Fu; }
        else if ((b & 0xF8) == 0xF0) { len = 4; cp = b & 0x07u; }
        else return -1;
        if (len > n - i) return -1;
        for (k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return -1;
            cp = (cp << 6) | (s[i + k] & 0x3Fu);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return -1;
        i += len;
        chars++;
    }
    return chars;
}

PLUGSAFE_EXPORT(uppercase) {
    size_t i;
    if (utf8_chars(input, input_len) < 0) return plugsafe_error("input is not valid UTF-8");
    /* In place: the input buffer is the plugin's and becomes the output. */
    for (i = 0; i < input_len; i++)
        if (input[i] >= 'a' && input[i] <= 'z') input[i] = (uint8_t)(input[i] - 'a' + 'A');
    return plugsafe_output(input, input_len);
}

static int is_space(uint8_t b) {
    return b == ' ' || b == '\t' || b == '\n' || b == 0x0B || b == 0x0C || b == '\r';
}

static char *append(char *p, const char *s) {
    while (*s) *p++ = *s++;
    return p;
}

PLUGSAFE_EXPORT(word_count) {
    uint64_t words = 0, lines = 0;
    long long chars = utf8_chars(input, input_len);
    int in_word = 0;
    size_t i;
    char *out, *p;
    if (chars < 0) return plugsafe_error("input is not valid UTF-8");
    for (i = 0; i < input_len; i++) {
        int space = is_space(input[i]);
        if (!space && !in_word) words++;
        in_word = !space;
        if (input[i] == '\n') lines++;
    }
    if (input_len > 0 && input[input_len - 1] != '\n') lines++;
    /* 3 numbers of at most 20 digits plus the JSON around them. */
    out = (char *)plugsafe_malloc(100);
    if (out == NULL) return plugsafe_error("out of memory");
    p = append(out, "{\"words\":");
    p += plugsafe_format_u64(words, p);
    p = append(p, ",\"lines\":");
    p += plugsafe_format_u64(lines, p);
    p = append(p, ",\"chars\":");
    p += plugsafe_format_u64((uint64_t)chars, p);
    p = append(p, "}");
    return plugsafe_output(out, (size_t)(p - out));
}
