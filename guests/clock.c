/*
 * clock.c - monotonic clock checker.
 *
 * Runs a fixed number of steps; each step reads CLOCK_MONOTONIC, checks
 * that it did not go backwards since the previous reading, and sleeps a
 * few milliseconds with nanosleep (poll_oneoff in WASI).  With the
 * defaults (200 steps of 5 ms) it runs for a little over 1 s, so a
 * checkpoint/restore will usually land inside a sleep or between two
 * readings; the restored process must keep the monotonic clock from going
 * backwards.
 *
 * Only deterministic lines are printed (step numbers and "ok"), never the
 * times themselves.  If the clock goes backwards the program prints
 * "ERROR: clock went backwards" and exits with status 1.
 *
 * With --check-sleep it also requires each sleep to last at least the
 * requested time as measured by CLOCK_MONOTONIC (prints "ERROR: sleep
 * returned early" and exits 1 otherwise).  This is off by default because
 * a restore that shortens an interrupted sleep is legitimate.
 *
 * Usage: clock [STEPS [SLEEP_MS]] [--check-sleep]
 */
#define _POSIX_C_SOURCE 200809L   /* POSIX clocks, nanosleep, pread */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t mono_ns(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        printf("ERROR: clock_gettime failed\n");
        exit(1);
    }
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    long steps = 200, sleep_ms = 5;
    int check_sleep = 0, npos = 0;

    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--check-sleep") == 0)
            check_sleep = 1;
        else if (npos == 0)
            steps = strtol(argv[i], NULL, 10), npos++;
        else if (npos == 1)
            sleep_ms = strtol(argv[i], NULL, 10), npos++;
        else {
            fprintf(stderr, "usage: clock [STEPS [SLEEP_MS]] [--check-sleep]\n");
            return 2;
        }
    }
    if (steps < 1 || sleep_ms < 0) {
        fprintf(stderr, "clock: STEPS must be >= 1 and SLEEP_MS >= 0\n");
        return 2;
    }

    struct timespec res;
    if (clock_getres(CLOCK_MONOTONIC, &res) != 0) {
        printf("ERROR: clock_getres failed\n");
        return 1;
    }
    printf("clock: steps=%ld sleep=%ldms\n", steps, sleep_ms);

    uint64_t prev = mono_ns();
    for (long s = 1; s <= steps; s++) {
        struct timespec req;

        req.tv_sec = sleep_ms / 1000;
        req.tv_nsec = (sleep_ms % 1000) * 1000000L;
        while (nanosleep(&req, &req) != 0) {
            if (errno != EINTR) {
                printf("ERROR: nanosleep failed\n");
                return 1;
            }
        }

        uint64_t now = mono_ns();
        if (now < prev) {
            printf("ERROR: clock went backwards\n");
            fprintf(stderr, "clock: backwards at step %ld\n", s);
            return 1;
        }
        if (check_sleep && now - prev < (uint64_t)sleep_ms * 1000000ull) {
            printf("ERROR: sleep returned early\n");
            fprintf(stderr, "clock: early wakeup at step %ld\n", s);
            return 1;
        }
        prev = now;
        if (s % 10 == 0 || s == steps)
            printf("step %ld ok\n", s);
    }
    printf("clock: ok\n");
    return 0;
}
