/* hog: takes one resource without bound, for Tern's resource limit tests.
 *
 *   hog mem           malloc and touch 1 MiB blocks until malloc fails
 *   hog fds           open /data/f0, /data/f1, ... until open fails
 *   hog out           print numbered lines forever
 *   hog cpu SECONDS   spin for SECONDS of monotonic time
 *
 * mem and fds print what they got on stderr and exit with 1 when the
 * resource runs out; a usage error exits with 2.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Every block is kept on a list the compiler cannot see through: a block
 * written and never read could otherwise be optimized away, malloc and all. */
static void *volatile blocks;

static int hog_mem(void) {
    size_t mib = 0;
    for (;;) {
        char *p = malloc(1 << 20);
        if (!p) {
            fprintf(stderr, "hog: malloc failed after %zu MiB\n", mib);
            return 1;
        }
        memset(p, (int)(mib & 0xff) | 1, 1 << 20);
        *(void **)p = blocks;
        blocks = p;
        mib++;
        if (mib % 16 == 0)
            printf("%zu MiB\n", mib);
    }
}

static int hog_fds(void) {
    char path[64];
    for (int n = 0;; n++) {
        snprintf(path, sizeof path, "/data/f%d", n);
        if (open(path, O_CREAT | O_WRONLY, 0644) < 0) {
            fprintf(stderr, "hog: open failed after %d files: %s\n", n, strerror(errno));
            return 1;
        }
    }
}

static int hog_out(void) {
    for (unsigned long i = 0;; i++)
        printf("line %lu: output that never ends\n", i);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int hog_cpu(double seconds) {
    double end = now() + seconds;
    unsigned long x = 1, rounds = 0;
    while (now() < end) {
        for (int i = 0; i < 100000; i++)
            x = x * 6364136223846793005UL + 1442695040888963407UL;
        rounds++;
    }
    printf("spun %lu rounds (%lu)\n", rounds, x & 1);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *what = argc > 1 ? argv[1] : "";
    if (!strcmp(what, "mem"))
        return hog_mem();
    if (!strcmp(what, "fds"))
        return hog_fds();
    if (!strcmp(what, "out"))
        return hog_out();
    if (!strcmp(what, "cpu") && argc > 2)
        return hog_cpu(atof(argv[2]));
    fprintf(stderr, "usage: hog mem | fds | out | cpu SECONDS\n");
    return 2;
}
