/* Tries one file-system operation named in argv and prints "ok" or "denied <errno>".
 *   read PATH | write PATH | trunc PATH | mkdir PATH | link FROM TO | symlink TARGET PATH */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int report(int rc) {
    if (rc < 0) printf("denied %d\n", errno);
    else printf("ok\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *op = argv[1], *path = argv[2];
    if (!strcmp(op, "read")) {
        int fd = open(path, O_RDONLY);
        if (fd < 0) return report(-1);
        char buf[64];
        ssize_t n = read(fd, buf, sizeof buf - 1);
        if (n < 0) return report(-1);
        buf[n] = 0;
        printf("ok %s\n", buf);
        return 0;
    }
    if (!strcmp(op, "write")) {
        int fd = open(path, O_WRONLY | O_CREAT, 0644);
        if (fd < 0) return report(-1);
        return report((int)write(fd, "pwned", 5));
    }
    if (!strcmp(op, "trunc")) return report(open(path, O_WRONLY | O_TRUNC));
    if (!strcmp(op, "mkdir")) return report(mkdir(path, 0755));
    if (!strcmp(op, "link") && argc > 3) return report(link(path, argv[3]));
    if (!strcmp(op, "symlink") && argc > 3) return report(symlink(path, argv[3]));
    return 2;
}
