/*
 * filerw.c - file I/O guest: open descriptors at nonzero offsets.
 *
 * Writes an output file made of fixed-size (64-byte) text records and
 * reads it back while it grows, through three descriptors that stay open
 * for the whole run, so that a checkpoint taken at any moment finds files
 * open at nonzero offsets:
 *
 *   A  O_WRONLY|O_CREAT|O_TRUNC|O_APPEND  appends every record
 *   W  O_RDWR                             seeks back (SEEK_SET/SEEK_CUR)
 *                                         and patches an 8-byte field of
 *                                         an earlier record; also pread
 *   R  O_RDONLY                           reads the file in odd-sized
 *                                         chunks, trailing the writer
 *
 * An optional input file is opened too and read a chunk at a time along
 * the way.  Progress lines report offsets (lseek(fd, 0, SEEK_CUR)), the
 * file size (fstat) and running checksums.  At the end the whole file is
 * re-read from offset 0 and every record is verified; the program exits
 * with status 1 on any mismatch.
 *
 * All printed values depend only on the arguments and on the input file
 * content, so output is deterministic.
 *
 * Usage: filerw [PATH] [--records N] [--input FILE]
 *   PATH        output file (default /data/out.txt, i.e. inside a
 *               directory preopened as /data); created or truncated
 *   --records N number of records to write (default 20000)
 *   --input F   also read file F (its size and checksum are printed)
 */
#define _POSIX_C_SOURCE 200809L   /* POSIX clocks, nanosleep, pread */

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define REC           64          /* record size in bytes */
#define PATCH_OFF     38          /* offset of the patchable field */
#define PATCH_LEN     8
#define READ_CHUNK    173         /* reader chunk (odd on purpose) */
#define INPUT_CHUNK   509         /* input file chunk */
#define VERIFY_CHUNK  1000        /* verification chunk */
#define DEFAULT_RECS  20000

static const char *prog = "filerw";

static void die(const char *what)
{
    fprintf(stderr, "%s: %s: %s\n", prog, what, strerror(errno));
    exit(1);
}

/* FNV-1a style running checksum over bytes. */
static uint64_t fold(uint64_t h, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

/* Deterministic value stored in record r. */
static unsigned long long rec_value(unsigned r)
{
    uint64_t x = (uint64_t)r * 0x9e3779b97f4a7c15ULL;

    x ^= x >> 29;
    x *= 0xbf58476d1ce4e5b9ULL;
    return (unsigned long long)(x ^ (x >> 32));
}

/* Format record r: "rec NNNNNNNN val HHHHHHHHHHHHHHHH pat --------" + pad. */
static void make_record(char *buf, unsigned r)
{
    int n = snprintf(buf, REC + 1, "rec %08u val %016llx pat %.*s", r,
                     rec_value(r), PATCH_LEN, "--------");

    memset(buf + n, '.', REC - 1 - (size_t)n);
    buf[REC - 1] = '\n';
}

/* The patch written over record r's field by the writer at record w. */
static void make_patch(char *buf, unsigned w)
{
    char tmp[16];

    snprintf(tmp, sizeof tmp, "P%07u", w % 10000000u);
    memcpy(buf, tmp, PATCH_LEN);
}

/* Write all of buf or die. */
static void write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;

    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            die("write");
        }
        p += k;
        n -= (size_t)k;
    }
}

static long long tell(int fd)
{
    off_t o = lseek(fd, 0, SEEK_CUR);

    if (o < 0)
        die("lseek");
    return (long long)o;
}

/* Should record r be patched, and by which later record?  Every record
 * r with r % 7 == 1 is patched when record r + 5 has been appended. */
static int patched_by(unsigned r, unsigned nrec, unsigned *w)
{
    if (r % 7 != 1 || r + 5 >= nrec)
        return 0;
    *w = r + 5;
    return 1;
}

int main(int argc, char **argv)
{
    const char *path = "/data/out.txt", *input = NULL;
    unsigned nrec = DEFAULT_RECS;
    int fa, fw, fr, fi = -1;

    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--records") == 0 && i + 1 < argc)
            nrec = (unsigned)strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--input") == 0 && i + 1 < argc)
            input = argv[++i];
        else if (argv[i][0] != '-' || argv[i][1] == '\0')
            path = argv[i];
        else {
            fprintf(stderr,
                    "usage: filerw [PATH] [--records N] [--input FILE]\n");
            return 2;
        }
    }
    if (nrec == 0 || nrec > 10000000u) {
        fprintf(stderr, "%s: --records must be in 1..10000000\n", prog);
        return 2;
    }
    unsigned report = nrec >= 30 ? nrec / 30 : 1;

    fa = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    if (fa < 0)
        die(path);
    fw = open(path, O_RDWR);
    if (fw < 0)
        die(path);
    fr = open(path, O_RDONLY);
    if (fr < 0)
        die(path);
    if (input != NULL && (fi = open(input, O_RDONLY)) < 0)
        die(input);
    printf("filerw: path=%s records=%u record_size=%d\n", path, nrec, REC);

    uint64_t rsum = 0xcbf29ce484222325ULL;      /* reader checksum */
    uint64_t isum = 0xcbf29ce484222325ULL;      /* input checksum */
    long long rbytes = 0, ibytes = 0;
    int input_eof = (fi < 0);
    unsigned npatch = 0;
    char rec[REC + 1], patch[PATCH_LEN];
    unsigned char buf[VERIFY_CHUNK];

    for (unsigned r = 0; r < nrec; r++) {
        make_record(rec, r);
        write_all(fa, rec, REC);                /* append */

        /* patch record r-5 if it is due: alternate SEEK_SET and SEEK_CUR */
        unsigned w;
        if (r >= 5 && patched_by(r - 5, nrec, &w)) {
            long long target = (long long)(r - 5) * REC + PATCH_OFF;
            off_t o;

            if (npatch % 2 == 0)
                o = lseek(fw, (off_t)target, SEEK_SET);
            else
                o = lseek(fw, (off_t)(target - tell(fw)), SEEK_CUR);
            if (o != (off_t)target)
                die("lseek patch");
            make_patch(patch, w);
            write_all(fw, patch, PATCH_LEN);
            npatch++;
        }

        /* the reader trails the writer with odd-sized chunks */
        if (r % 3 == 2) {
            ssize_t k = read(fr, buf, READ_CHUNK);
            if (k < 0)
                die("read");
            rsum = fold(rsum, buf, (size_t)k);
            rbytes += k;
        }

        if ((r + 1) % report == 0 || r + 1 == nrec) {
            struct stat st;
            char head[16];

            if (fstat(fa, &st) != 0)
                die("fstat");
            /* pread does not move W's offset */
            if (pread(fw, head, 12, 0) != 12 || memcmp(head, "rec 00000000", 12) != 0)
                die("pread");
            if (!input_eof) {
                ssize_t k = read(fi, buf, INPUT_CHUNK);
                if (k < 0)
                    die("read input");
                if (k == 0)
                    input_eof = 1;
                isum = fold(isum, buf, (size_t)k);
                ibytes += k;
            }
            printf("rec %u size=%lld W@%lld R@%lld patches=%u rsum=%016llx",
                   r + 1, (long long)st.st_size, tell(fw), tell(fr), npatch,
                   (unsigned long long)rsum);
            if (fi >= 0)
                printf(" I@%lld", tell(fi));
            printf("\n");
        }
    }

    /* the reader finishes the file from where it is */
    for (;;) {
        ssize_t k = read(fr, buf, READ_CHUNK);
        if (k < 0)
            die("read");
        if (k == 0)
            break;
        rsum = fold(rsum, buf, (size_t)k);
        rbytes += k;
    }
    printf("reader: %lld bytes rsum=%016llx\n", rbytes, (unsigned long long)rsum);

    /* verification pass from offset 0 through R */
    if (lseek(fr, 0, SEEK_SET) != 0)
        die("lseek");
    unsigned long errors = 0, seen = 0, patched = 0;
    uint64_t vsum = 0xcbf29ce484222325ULL;
    size_t have = 0;
    char line[REC];
    for (;;) {
        ssize_t k = read(fr, buf, VERIFY_CHUNK);
        if (k < 0)
            die("read");
        if (k == 0)
            break;
        vsum = fold(vsum, buf, (size_t)k);
        for (ssize_t j = 0; j < k; j++) {
            line[have++] = (char)buf[j];
            if (have < REC)
                continue;
            /* compare one complete record with its expected content */
            unsigned w;
            make_record(rec, (unsigned)seen);
            if (patched_by((unsigned)seen, nrec, &w)) {
                make_patch(rec + PATCH_OFF, w);
                patched++;
            }
            if (memcmp(line, rec, REC) != 0) {
                if (errors < 5)
                    printf("MISMATCH at record %lu\n", seen);
                errors++;
            }
            seen++;
            have = 0;
        }
    }
    long long end = (long long)lseek(fr, 0, SEEK_END);
    if (have != 0 || seen != nrec || end != (long long)nrec * REC)
        errors++;
    printf("verify: records=%lu patched=%lu size=%lld errors=%lu vsum=%016llx\n",
           seen, patched, end, errors, (unsigned long long)vsum);

    if (fi >= 0) {
        /* read the rest of the input file and cross-check with fstat */
        struct stat st;
        for (;;) {
            ssize_t k = read(fi, buf, INPUT_CHUNK);
            if (k < 0)
                die("read input");
            if (k == 0)
                break;
            isum = fold(isum, buf, (size_t)k);
            ibytes += k;
        }
        if (fstat(fi, &st) != 0)
            die("fstat input");
        if ((long long)st.st_size != ibytes)
            errors++;
        printf("input: %s size=%lld isum=%016llx\n", input, ibytes,
               (unsigned long long)isum);
        close(fi);
    }

    close(fa);
    close(fw);
    close(fr);
    printf("filerw: %s\n", errors == 0 ? "ok" : "FAILED");
    return errors == 0 ? 0 : 1;
}
