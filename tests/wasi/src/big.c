/* A large WASI program: a few MiB of initialised data, malloc and printf. */
#include <stdio.h>
#include <stdlib.h>

#define TABLE (3 * 1024 * 1024)
static unsigned char table[TABLE] = {[0] = 1, [TABLE / 2] = 2, [TABLE - 1] = 3};

int main(void) {
    unsigned long sum = 0;
    for (size_t i = 0; i < TABLE; i += 4096) sum += table[i];
    sum += table[TABLE / 2] + table[TABLE - 1];
    char *block = malloc(8 << 20);
    if (!block) return 1;
    for (size_t i = 0; i < (8u << 20); i += 4096) block[i] = 1;
    printf("sum=%lu malloc=ok\n", sum);
    free(block);
    return 0;
}
