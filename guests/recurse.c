/*
 * recurse.c - deep recursion guest.
 *
 * Exercises deep call stacks so that checkpoints land with thousands of
 * frames live.  Four kinds of recursion, each computing a deterministic
 * 32-bit hash:
 *
 *   deep      direct recursion, not a tail call: locals computed before
 *             the recursive call are still needed after it returns
 *   mutual    three functions calling each other in a cycle
 *   indirect  recursion through a table of function pointers
 *             (call_indirect in wasm), the callee chosen by the data
 *   frame     recursion with an address-taken local array, so every frame
 *             also lives on the C (shadow) stack in linear memory
 *
 * A round runs each kind REPS times with different seeds and prints one
 * line of results; ROUNDS rounds are run.
 *
 * Depths: deep and mutual recurse DEPTH frames, indirect DEPTH/2 frames
 * (a call_indirect frame is larger; under wasmtime's default 512 KiB wasm
 * stack, deep reaches ~16000 frames, mutual ~32000 and indirect ~10900).
 * The shadow-stack recursion is limited to DEPTH/10 frames and at most
 * 1000 frames, because the default C stack of a wasm32-wasi program is
 * only 64 KiB and overflowing it would silently corrupt static data.
 *
 * Usage: recurse [DEPTH [ROUNDS [REPS]]]   (defaults 10000 30 250)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#if defined(__GNUC__) || defined(__clang__)
#define NOINLINE __attribute__((noinline))
#else
#define NOINLINE
#endif

#define MAX_FRAME_DEPTH 1000

/* Direct, non-tail recursion: a and b are live across the call. */
static NOINLINE uint32_t deep(uint32_t n, uint32_t x)
{
    uint32_t a, b, r;

    if (n == 0)
        return x ^ 0x5bd1e995u;
    a = x * 2654435761u + n;
    b = a ^ (a >> 15);
    r = deep(n - 1, b);
    return (r ^ a) * 0x27d4eb2du + (b >> 7);
}

/* Mutual recursion through a cycle of three functions. */
static NOINLINE uint32_t mut_b(uint32_t n, uint32_t x);
static NOINLINE uint32_t mut_c(uint32_t n, uint32_t x);

static NOINLINE uint32_t mut_a(uint32_t n, uint32_t x)
{
    uint32_t k = x + 0x9e3779b9u;

    if (n == 0)
        return k;
    return (mut_b(n - 1, k ^ (k << 6)) + k) ^ n;
}

static NOINLINE uint32_t mut_b(uint32_t n, uint32_t x)
{
    uint32_t k = x * 0x85ebca6bu;

    if (n == 0)
        return k;
    return (mut_c(n - 1, k ^ (k >> 13)) * 3u) ^ k;
}

static NOINLINE uint32_t mut_c(uint32_t n, uint32_t x)
{
    uint32_t k = (x << 5 | x >> 27) + n;

    if (n == 0)
        return k;
    return mut_a(n - 1, k) - (k >> 3);
}

/* Recursion through function pointers; the next callee depends on data. */
typedef uint32_t (*step_fn)(uint32_t n, uint32_t x);

static uint32_t ind_0(uint32_t n, uint32_t x);
static uint32_t ind_1(uint32_t n, uint32_t x);
static uint32_t ind_2(uint32_t n, uint32_t x);
static uint32_t ind_3(uint32_t n, uint32_t x);

/* not const: keeps the calls indirect */
static step_fn steps[4] = { ind_0, ind_1, ind_2, ind_3 };

#define IND_NEXT(n, x) (steps[((x) >> 11) & 3]((n) - 1, (x)))

static uint32_t ind_0(uint32_t n, uint32_t x)
{
    uint32_t k = x * 0xcc9e2d51u + 1;

    return n == 0 ? k : IND_NEXT(n, k) ^ k;
}

static uint32_t ind_1(uint32_t n, uint32_t x)
{
    uint32_t k = (x ^ 0x1b873593u) + (x >> 9);

    return n == 0 ? k : IND_NEXT(n, k) + (k >> 1);
}

static uint32_t ind_2(uint32_t n, uint32_t x)
{
    uint32_t k = x * 5u + 0xe6546b64u;

    return n == 0 ? k : (IND_NEXT(n, k) * 7u) ^ (k >> 4);
}

static uint32_t ind_3(uint32_t n, uint32_t x)
{
    uint32_t k = (x << 13 | x >> 19) ^ n;

    return n == 0 ? k : IND_NEXT(n, k) - k;
}

/* Fill an array through a pointer (keeps the caller's array in memory). */
static NOINLINE void fill(uint32_t *buf, uint32_t n, uint32_t x)
{
    for (int i = 0; i < 4; i++) {
        x = x * 1664525u + 1013904223u + n;
        buf[i] = x;
    }
}

/* Recursion with a local array on the C stack, read after the call. */
static NOINLINE uint32_t frame(uint32_t n, uint32_t x)
{
    uint32_t buf[4], r;

    fill(buf, n, x);
    if (n == 0)
        return buf[0] ^ buf[3];
    r = frame(n - 1, buf[n & 3]);
    return r * 31u + (buf[0] ^ buf[1] ^ buf[2] ^ buf[3]);
}

int main(int argc, char **argv)
{
    long depth = 10000, rounds = 30, reps = 250;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1)
        depth = strtol(argv[1], NULL, 10);
    if (argc > 2)
        rounds = strtol(argv[2], NULL, 10);
    if (argc > 3)
        reps = strtol(argv[3], NULL, 10);
    if (depth < 1 || rounds < 1 || reps < 1) {
        fprintf(stderr, "usage: recurse [DEPTH [ROUNDS [REPS]]] (all >= 1)\n");
        return 2;
    }
    long idepth = depth / 2;
    long fdepth = depth / 10 < MAX_FRAME_DEPTH ? depth / 10 : MAX_FRAME_DEPTH;

    printf("recurse: depth=%ld indirect_depth=%ld frame_depth=%ld "
           "rounds=%ld reps=%ld\n", depth, idepth, fdepth, rounds, reps);

    uint32_t total = 0;
    for (long r = 0; r < rounds; r++) {
        uint32_t hd = 0, hm = 0, hi = 0, hf = 0;

        for (long k = 0; k < reps; k++) {
            uint32_t seed = (uint32_t)(r * reps + k) * 0x9e3779b9u + 1u;

            hd = hd * 33u ^ deep((uint32_t)depth, seed);
            hm = hm * 33u ^ mut_a((uint32_t)depth, seed);
            hi = hi * 33u ^ steps[seed & 3]((uint32_t)idepth, seed);
            hf = hf * 33u ^ frame((uint32_t)fdepth, seed);
        }
        total = (total * 0x01000193u) ^ hd ^ (hm << 1) ^ (hi << 2) ^ (hf << 3);
        printf("round %ld deep=%08x mutual=%08x indirect=%08x frame=%08x\n",
               r + 1, (unsigned)hd, (unsigned)hm, (unsigned)hi, (unsigned)hf);
    }
    printf("recurse: total=%08x\n", (unsigned)total);
    return 0;
}
