/*
 * dispatch.c - the shape of an interpreter's dispatch loop.
 *
 * A bytecode program (generated with a linear congruential generator) is
 * run by one loop that switches over 256 opcodes; each case calls its own
 * small out-of-line handler, and every handler contains a loop, so each
 * of the 256 calls can reach a migration point.  This is the shape that
 * made Tern's first transform slow on real interpreters (issue 10): many
 * call sites that can unwind inside one hot loop.  Every 16th opcode also
 * goes through a table of function pointers (an indirect call).
 *
 * The handlers mix an accumulator with a 4 KiB scratch array; after each
 * group of steps a progress line with the accumulator and a checksum of
 * the array is printed.  Integer arithmetic only: the output is
 * deterministic.
 *
 * Usage: dispatch [MILLIONS_OF_STEPS]   (default 20, range 1..1000)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CODE 4096
#define SLOTS 1024
#define GROUPS 24

static uint32_t mem[SLOTS];
static uint8_t code[CODE];

/* Every opcode h, as two hex digits: op##h is its handler, 0x##h its value. */
#define HEX(M, p)                                                        \
    M(p##0) M(p##1) M(p##2) M(p##3) M(p##4) M(p##5) M(p##6) M(p##7)      \
    M(p##8) M(p##9) M(p##a) M(p##b) M(p##c) M(p##d) M(p##e) M(p##f)
#define ALL(M)                                                           \
    HEX(M, 0) HEX(M, 1) HEX(M, 2) HEX(M, 3) HEX(M, 4) HEX(M, 5) HEX(M, 6) \
    HEX(M, 7) HEX(M, 8) HEX(M, 9) HEX(M, a) HEX(M, b) HEX(M, c) HEX(M, d) \
    HEX(M, e) HEX(M, f)

/* Handler h: a short loop whose trip count depends on the data. */
#define DEF(h)                                                           \
    __attribute__((noinline)) static uint32_t op##h(uint32_t acc) {      \
        uint32_t trips = 1 + ((acc >> 7) & 3);                           \
        for (uint32_t i = 0; i < trips; i++) {                           \
            acc = acc * (2u * 0x##h + 1u) + mem[(acc + 0x##h + i) & (SLOTS - 1)]; \
            mem[(acc ^ 0x##h) & (SLOTS - 1)] += i + 0x##h;               \
        }                                                                \
        return acc;                                                      \
    }
ALL(DEF)

typedef uint32_t (*handler)(uint32_t);
#define PTR(h) op##h,
static handler table[256] = {ALL(PTR)};

#define CASE(h)                                                          \
    case 0x##h:                                                          \
        acc = (0x##h % 16 == 15) ? table[(acc + 0x##h) & 255](acc) : op##h(acc); \
        break;

/* The dispatch loop: `steps` opcodes from the program, wrapping around. */
static uint32_t run(uint32_t acc, uint32_t *pc, uint32_t steps) {
    uint32_t p = *pc;
    for (uint32_t s = 0; s < steps; s++) {
        switch (code[p]) {
            ALL(CASE)
        }
        p = (p + 1 + (acc & 1)) & (CODE - 1);
    }
    *pc = p;
    return acc;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    long millions = 20;
    if (argc > 1) {
        char *end;
        millions = strtol(argv[1], &end, 10);
        if (*end || millions < 1 || millions > 1000) {
            fprintf(stderr, "usage: dispatch [MILLIONS_OF_STEPS]  (1..1000)\n");
            return 2;
        }
    }
    uint32_t x = 12345;
    for (int i = 0; i < CODE; i++) {
        x = x * 1103515245u + 12345u;
        code[i] = (uint8_t)(x >> 16);
    }
    for (int i = 0; i < SLOTS; i++)
        mem[i] = (uint32_t)i * 2654435761u;
    uint32_t acc = 1, pc = 0;
    uint64_t total = (uint64_t)millions * 1000000u;
    for (int g = 0; g < GROUPS; g++) {
        acc = run(acc, &pc, (uint32_t)(total / GROUPS));
        uint32_t sum = 0;
        for (int i = 0; i < SLOTS; i++)
            sum = sum * 31u + mem[i];
        printf("group %2d acc %08x sum %08x\n", g + 1, acc, sum);
    }
    printf("done: %ld million steps\n", millions);
    return 0;
}
