/*
 * dirtier.c - memory dirtier, the workhorse of Tern's migration tests and
 * benchmarks.
 *
 * Allocates a working set with malloc, initialises every word of it, then
 * runs iterations.  One iteration writes one 64-bit word in each page of a
 * window of consecutive pages; the window then moves on by its own size
 * (wrapping around the working set), so over time every page is dirtied
 * again and again.  Each write first reads the old word and folds it into
 * a running checksum, so the checksum verifies that memory contents
 * survived a checkpoint/restore, not only that the program kept running.
 * The word written in a page, and its offset within the page, are derived
 * from the iteration and page numbers only (never from time).
 *
 * With --rate the writes are paced to the given dirty rate using
 * clock_gettime(CLOCK_MONOTONIC) and nanosleep, so the guest spends part
 * of its time blocked in poll_oneoff.  The pacing changes timing only,
 * never the output.
 *
 * Output (stdout) depends only on the arguments when the run is bounded
 * by --iterations (the default); with --seconds the number of iterations,
 * hence the output, depends on time.
 *
 * Usage: dirtier [--mem MiB] [--rate MB/s] [--iterations N | --seconds S]
 *                [--page BYTES] [--window PAGES] [--report N]
 *   --mem MiB        working set in MiB (2^20 bytes), default 64
 *   --rate MB/s      dirty rate in MB/s (10^6 bytes of dirtied pages per
 *                    second); 0 = as fast as possible (default)
 *   --iterations N   number of iterations (default 40000, about 1 s with
 *                    the default window)
 *   --seconds S      run until S seconds (may be fractional) have passed,
 *                    instead of a fixed number of iterations
 *   --page BYTES     page size used for dirtying, multiple of 8 (default
 *                    4096)
 *   --window PAGES   pages written per iteration (default: all pages of
 *                    the working set / 8)
 *   --report N       print a progress line every N iterations (default:
 *                    iterations / 30, at least 1; with --seconds 100)
 */
#define _POSIX_C_SOURCE 200809L   /* POSIX clocks, nanosleep, pread */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MIB              (1024u * 1024u)
#define DEFAULT_MEM      64
#define DEFAULT_ITERS    40000
#define PACE_CHUNK       16     /* pages written between pacing checks */

/* 64-bit mixer (a fixed-constant finaliser, bijective). */
static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 31;
    x *= 0x7fb5d329728ea185ULL;
    x ^= x >> 27;
    x *= 0x81dadef4bc2dd44dULL;
    x ^= x >> 33;
    return x;
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Sleep for ns nanoseconds (nanosleep -> poll_oneoff in WASI). */
static void sleep_ns(uint64_t ns)
{
    struct timespec ts;

    ts.tv_sec = (time_t)(ns / 1000000000ull);
    ts.tv_nsec = (long)(ns % 1000000000ull);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: dirtier [--mem MiB] [--rate MB/s] "
            "[--iterations N | --seconds S]\n"
            "               [--page BYTES] [--window PAGES] [--report N]\n");
    exit(2);
}

/* Parse a non-negative number argument or die. */
static double num_arg(int argc, char **argv, int *i)
{
    char *end;
    double v;

    if (*i + 1 >= argc)
        usage();
    v = strtod(argv[++*i], &end);
    if (*end != '\0' || v < 0)
        usage();
    return v;
}

/* Checksum over the whole working set, word by word. */
static uint64_t checksum_all(const uint64_t *w, size_t nwords)
{
    uint64_t h = 0x243f6a8885a308d3ULL;

    for (size_t i = 0; i < nwords; i++)
        h = (h ^ w[i]) * 0x100000001b3ULL + (h >> 29);
    return mix64(h ^ nwords);
}

int main(int argc, char **argv)
{
    double mem_mib = DEFAULT_MEM, rate = 0, seconds = 0;
    uint64_t iters = 0, report = 0, window = 0;
    size_t page = 4096;
    int have_iters = 0, have_seconds = 0;

    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--mem") == 0)
            mem_mib = num_arg(argc, argv, &i);
        else if (strcmp(argv[i], "--rate") == 0)
            rate = num_arg(argc, argv, &i);
        else if (strcmp(argv[i], "--seconds") == 0)
            seconds = num_arg(argc, argv, &i), have_seconds = 1;
        else if (strcmp(argv[i], "--iterations") == 0)
            iters = (uint64_t)num_arg(argc, argv, &i), have_iters = 1;
        else if (strcmp(argv[i], "--page") == 0)
            page = (size_t)num_arg(argc, argv, &i);
        else if (strcmp(argv[i], "--window") == 0)
            window = (uint64_t)num_arg(argc, argv, &i);
        else if (strcmp(argv[i], "--report") == 0)
            report = (uint64_t)num_arg(argc, argv, &i);
        else
            usage();
    }
    if (have_iters && have_seconds) {
        fprintf(stderr, "dirtier: --iterations and --seconds exclude each other\n");
        return 2;
    }
    if (page < 8 || page % 8 != 0) {
        fprintf(stderr, "dirtier: --page must be a positive multiple of 8\n");
        return 2;
    }
    /* wasm32 linear memory is at most 4 GiB; keep the size in a size_t */
    if (mem_mib <= 0 || mem_mib >= 4095) {
        fprintf(stderr, "dirtier: --mem must be in (0, 4095) MiB\n");
        return 2;
    }

    size_t bytes = (size_t)(mem_mib * MIB);
    size_t npages = bytes / page;
    if (npages == 0) {
        fprintf(stderr, "dirtier: working set smaller than one page\n");
        return 2;
    }
    bytes = npages * page;
    if (window == 0)
        window = npages >= 8 ? npages / 8 : 1;
    if (window > npages)
        window = npages;
    if (!have_iters && !have_seconds)
        iters = DEFAULT_ITERS;
    if (report == 0)
        report = have_seconds ? 100 : (iters >= 30 ? iters / 30 : 1);

    size_t words_per_page = page / 8;
    size_t nwords = bytes / 8;
    uint64_t *mem = malloc(bytes);
    if (mem == NULL) {
        fprintf(stderr, "dirtier: cannot allocate %zu bytes\n", bytes);
        return 1;
    }

    printf("dirtier: mem=%zu bytes pages=%zu page=%zu window=%llu\n",
           bytes, npages, page, (unsigned long long)window);
    if (have_seconds)
        printf("dirtier: bounded by time (output is not deterministic)\n");
    else
        printf("dirtier: iterations=%llu report every %llu\n",
               (unsigned long long)iters, (unsigned long long)report);

    /* Touch everything: every word gets a value derived from its index.
     * Progress is reported every 64 MiB so large sets show life. */
    for (size_t i = 0; i < nwords; i++) {
        mem[i] = mix64(i + 1);
        if ((i + 1) % (64 * MIB / 8) == 0)
            printf("init: %zu MiB\n", (i + 1) / (MIB / 8));
    }
    printf("init: done checksum=%016llx\n",
           (unsigned long long)checksum_all(mem, nwords));

    uint64_t start = now_ns();
    uint64_t deadline = start + (uint64_t)(seconds * 1e9);
    uint64_t dirtied = 0;           /* bytes dirtied, for pacing */
    uint64_t run = 0x9e3779b97f4a7c15ULL;   /* running checksum */
    uint64_t pos = 0;               /* first page of the current window */
    uint64_t it;

    for (it = 0; have_seconds ? now_ns() < deadline : it < iters; it++) {
        /* word offset inside the page shifts every iteration */
        size_t off = (size_t)((it * 8 + 1) % words_per_page);
        uint64_t p = pos;

        for (uint64_t k = 0; k < window; k++) {
            uint64_t *w = &mem[p * words_per_page + off];
            uint64_t old = *w;

            run = mix64(run ^ old) + p;
            *w = mix64((it << 32) ^ p ^ old);
            if (++p == npages)
                p = 0;

            if (rate > 0 && (k + 1) % PACE_CHUNK == 0) {
                /* dirty-rate pacing: sleep until we are back on schedule */
                uint64_t target, now;

                dirtied += (uint64_t)PACE_CHUNK * page;
                target = start + (uint64_t)((double)dirtied / rate * 1e3);
                now = now_ns();
                if (now < target)
                    sleep_ns(target - now);
            }
        }
        if (rate > 0)
            dirtied += (window % PACE_CHUNK) * page;
        pos = p;

        if ((it + 1) % report == 0)
            printf("iter %llu window@%llu checksum=%016llx\n",
                   (unsigned long long)(it + 1), (unsigned long long)pos,
                   (unsigned long long)run);
    }

    printf("dirtier: %llu iterations, %llu page writes\n",
           (unsigned long long)it, (unsigned long long)(it * window));
    printf("running checksum=%016llx\n", (unsigned long long)run);
    printf("final checksum=%016llx\n",
           (unsigned long long)checksum_all(mem, nwords));
    free(mem);
    return 0;
}
