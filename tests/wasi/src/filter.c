/* A WASI command: uppercases stdin to stdout, reports its args and environment on stderr, and
 * exits with the number in argv[2] if there is one. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) {
        for (size_t i = 0; i < n; i++)
            if (buf[i] >= 'a' && buf[i] <= 'z') buf[i] -= 32;
        fwrite(buf, 1, n, stdout);
    }
    fprintf(stderr, "argc=%d", argc);
    for (int i = 0; i < argc; i++) fprintf(stderr, " [%s]", argv[i]);
    const char *home = getenv("HOME"), *lang = getenv("LANG");
    fprintf(stderr, " HOME=%s LANG=%s\n", home ? home : "-", lang ? lang : "-");
    return argc > 2 ? atoi(argv[2]) : 0;
}
