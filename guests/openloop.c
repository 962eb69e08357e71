/*
 * openloop.c - opens one path over and over and reports what it read.
 *
 * The sandbox race test runs it while another process swaps a directory
 * on the path with a symbolic link that points out of the preopen: every
 * open must either read the file inside the sandbox or fail, never read
 * the file outside.  The file inside is expected to hold "inside" and the
 * one outside "outside"; anything else read counts as "other".
 *
 * Usage: openloop [PATH [COUNT]]
 *   PATH   default /data/d/x/f
 *   COUNT  number of opens, default 200000 (1..100000000)
 *
 * Output: one line,
 *   openloop: opens=N inside=I outside=O failed=F other=X
 * The split between inside and failed depends on timing (this guest is
 * the exception to the deterministic-output rule); outside must be 0.
 * Exit status 1 if any open read the outside file, else 0.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "/data/d/x/f";
    unsigned long count = argc > 2 ? strtoul(argv[2], NULL, 10) : 200000;
    unsigned long inside = 0, outside = 0, failed = 0, other = 0;
    char buf[32];

    if (argc > 3 || count == 0 || count > 100000000) {
        fprintf(stderr, "usage: openloop [PATH [COUNT]]\n");
        return 2;
    }
    for (unsigned long i = 0; i < count; i++) {
        int fd = open(path, O_RDONLY);
        if (fd < 0) {
            failed++;
            continue;
        }
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n < 0) {
            failed++;
            continue;
        }
        buf[n] = '\0';
        if (strncmp(buf, "outside", 7) == 0)
            outside++;
        else if (strncmp(buf, "inside", 6) == 0)
            inside++;
        else
            other++;
    }
    printf("openloop: opens=%lu inside=%lu outside=%lu failed=%lu other=%lu\n",
           count, inside, outside, failed, other);
    return outside == 0 ? 0 : 1;
}
