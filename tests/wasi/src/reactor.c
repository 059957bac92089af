/* A WASI reactor that speaks the plugsafe ABI with malloc, keeps state set up by a constructor
 * (run by _initialize), and can exit, sleep, print and spin on request. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define EXPORT(name) __attribute__((export_name(name)))

static int initialized = 0;
static int calls = 0;
__attribute__((constructor)) static void setup(void) { initialized = 42; }

EXPORT("plugsafe_abi_version") int32_t abi_version(void) { return 1; }
EXPORT("plugsafe_alloc") uint32_t alloc(uint32_t n) { return (uint32_t)(uintptr_t)malloc(n); }

/* reverse(input) -> the input reversed, in a fresh malloc'd buffer; the input is freed. */
EXPORT("reverse") uint64_t reverse(uint32_t ptr, uint32_t len) {
    char *in = (char *)(uintptr_t)ptr;
    char *out = malloc(len ? len : 1);
    for (uint32_t i = 0; i < len; i++) out[i] = in[len - 1 - i];
    free(in);
    return ((uint64_t)(uintptr_t)out << 32) | len;
}

EXPORT("initialized") int32_t get_initialized(void) { return initialized; }
EXPORT("count") int32_t count(void) { return ++calls; }
EXPORT("do_exit") void do_exit(int32_t code) { exit(code); }
EXPORT("nap") int32_t nap(int32_t seconds) { return (int32_t)sleep((unsigned)seconds); }
EXPORT("say") int32_t say(void) { return printf("hello from the reactor\n"); }
EXPORT("spin") void spin(void) { for (volatile int i = 0;; i++) {} }
/* Milliseconds on the monotonic clock (plugsafe starts it near 0 for each plugin). */
EXPORT("mono_ms") int64_t mono_ms(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) return -1;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
/* 0 if the process CPU-time clock can be read, -1 if it is refused. */
EXPORT("cpu_clock") int32_t cpu_clock(void) {
    struct timespec ts;
    return clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
}
EXPORT("crash") void crash(void) { __builtin_trap(); }
/* Allocates up to `mib` blocks of 1 MiB, touching and keeping each (so the compiler cannot drop
 * them); returns how many it got before malloc returned NULL. */
static char *kept[4096];
EXPORT("hog") int32_t hog(int32_t mib) {
    int32_t got = 0;
    for (int32_t i = 0; i < mib && i < 4096; i++) {
        char *p = malloc(1 << 20);
        if (!p) break;
        memset(p, 1, 1 << 20);
        kept[i] = p;
        got++;
    }
    return got;
}
