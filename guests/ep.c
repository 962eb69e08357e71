/*
 * ep.c - NAS EP-like ("embarrassingly parallel") compute kernel.
 *
 * Generates 2^M pairs of uniform deviates with a 46-bit multiplicative
 * linear congruential generator evaluated in double precision (the scheme
 * of the NAS Parallel Benchmarks' randlc: x <- 5^13 * x mod 2^46), turns
 * acceptable pairs into Gaussian deviates with the Marsaglia polar method,
 * and tallies them by square annulus (max(|X|,|Y|) in [l, l+1)) while
 * summing sx = sum X and sy = sum Y.
 *
 * The work is split into batches of 2^16 pairs.  Every batch starts from a
 * seed obtained by jumping the generator ahead, so batches are
 * independent; after each group of batches a progress line with the
 * running sums (%.10e) is printed.  At the end the annulus counts and
 * totals are printed.
 *
 * The hot inner loop (one batch) contains no calls at all: the generator
 * and the natural logarithm are written out inline with plain floating
 * point arithmetic (sqrt maps to the f64.sqrt instruction), which is what
 * lets a checkpoint land inside a long call-free loop.  All arithmetic is
 * IEEE-754 double, so the output is bit-for-bit deterministic.
 *
 * Usage: ep [LOG2_PAIRS]      (default 24, range 16..40)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#define LOG2_BATCH   16                 /* pairs per batch = 2^16 */
#define BATCH        (1 << LOG2_BATCH)
#define NQ           10                 /* number of annuli */
#define DEFAULT_M    24
#define SEED         271828183.0        /* NAS EP seed */
#define MULT         1220703125.0       /* 5^13 */

/* Powers of two used by the split multiplication. */
#define R23 (1.0 / 8388608.0)           /* 2^-23 */
#define T23 8388608.0                   /* 2^23  */
#define R46 (R23 * R23)                 /* 2^-46 */
#define T46 (T23 * T23)                 /* 2^46  */

/*
 * One LCG step: x <- a * x mod 2^46, exactly, in doubles.  a and x are
 * split into 23-bit halves so that every partial product is exact.
 * Written as a macro so the inner loop stays free of calls.
 * a1/a2 are the pre-split halves of the multiplier.
 */
#define LCG_STEP(x, a1, a2) do {                                        \
        double t1_, t2_, t3_, t4_, x1_, x2_, z_;                        \
        t1_ = R23 * (x);                                                \
        x1_ = (double)(int32_t)t1_;                                     \
        x2_ = (x) - T23 * x1_;                                          \
        t1_ = (a1) * x2_ + (a2) * x1_;                                  \
        t2_ = (double)(int32_t)(R23 * t1_);                             \
        z_ = t1_ - T23 * t2_;                                           \
        t3_ = T23 * z_ + (a2) * x2_;                                    \
        t4_ = (double)(int32_t)(R46 * t3_);                             \
        (x) = t3_ - T46 * t4_;                                          \
    } while (0)

/* Split a multiplier into its 23-bit halves. */
static void split23(double a, double *a1, double *a2)
{
    *a1 = (double)(int32_t)(R23 * a);
    *a2 = a - T23 * *a1;
}

/* x <- a * x mod 2^46 (out-of-loop helper). */
static double lcg_mul(double x, double a)
{
    double a1, a2;

    split23(a, &a1, &a2);
    LCG_STEP(x, a1, a2);
    return x;
}

/* Seed for pair index k*BATCH: x0 * MULT^(2*k*BATCH) mod 2^46. */
static double batch_seed(uint64_t k)
{
    double x = SEED;
    double an = MULT;

    /* an = MULT^(2*BATCH): two uniforms per pair */
    for (int i = 0; i < LOG2_BATCH + 1; i++)
        an = lcg_mul(an, an);
    /* binary exponentiation of an by k, applied to x */
    while (k != 0) {
        if (k & 1)
            x = lcg_mul(x, an);
        an = lcg_mul(an, an);
        k >>= 1;
    }
    return x;
}

/*
 * Natural logarithm for 0 < v <= 1 without library calls: v = m * 2^e
 * with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(s), s = (m-1)/(m+1),
 * |s| < 0.1716, series summed to s^23 (error < 1e-17 relative).
 * Expanded inline in the hot loop via a macro.
 */
#define LN2_HI 6.93147180369123816490e-01
#define LN2_LO 1.90821492927058770002e-10
#define SQRT2  1.41421356237309504880

#define FAST_LN(out, v) do {                                            \
        union { double d; uint64_t u; } b_;                             \
        int e_;                                                         \
        double m_, s_, s2_, p_;                                         \
        b_.d = (v);                                                     \
        e_ = (int)((b_.u >> 52) & 0x7ff) - 1023;                        \
        b_.u = (b_.u & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL;  \
        m_ = b_.d;                                                      \
        if (m_ >= SQRT2) { m_ *= 0.5; e_ += 1; }                        \
        s_ = (m_ - 1.0) / (m_ + 1.0);                                   \
        s2_ = s_ * s_;                                                  \
        p_ = 1.0/23;                                                    \
        p_ = p_ * s2_ + 1.0/21; p_ = p_ * s2_ + 1.0/19;                 \
        p_ = p_ * s2_ + 1.0/17; p_ = p_ * s2_ + 1.0/15;                 \
        p_ = p_ * s2_ + 1.0/13; p_ = p_ * s2_ + 1.0/11;                 \
        p_ = p_ * s2_ + 1.0/9;  p_ = p_ * s2_ + 1.0/7;                  \
        p_ = p_ * s2_ + 1.0/5;  p_ = p_ * s2_ + 1.0/3;                  \
        p_ = p_ * s2_ + 1.0;                                            \
        (out) = (e_ * LN2_LO + 2.0 * s_ * p_) + e_ * LN2_HI;            \
    } while (0)

struct tally {
    double sx, sy;
    uint64_t q[NQ];
    uint64_t accepted;
};

/*
 * One batch of BATCH pairs starting from seed x.  No calls inside:
 * the generator, the log and sqrt are all inline arithmetic.
 */
static void run_batch(double x, double a1, double a2, struct tally *t)
{
    double sx = t->sx, sy = t->sy;
    uint64_t q[NQ];
    uint64_t acc = 0;

    memcpy(q, t->q, sizeof q);
    for (int i = 0; i < BATCH; i++) {
        double u1, u2, r, lg, f, gx, gy, ax, ay, m;

        LCG_STEP(x, a1, a2);
        u1 = 2.0 * (R46 * x) - 1.0;
        LCG_STEP(x, a1, a2);
        u2 = 2.0 * (R46 * x) - 1.0;
        r = u1 * u1 + u2 * u2;
        if (r <= 1.0 && r > 0.0) {
            FAST_LN(lg, r);
            f = sqrt(-2.0 * lg / r);
            gx = u1 * f;
            gy = u2 * f;
            ax = gx < 0 ? -gx : gx;
            ay = gy < 0 ? -gy : gy;
            m = ax > ay ? ax : ay;
            q[(int)m < NQ ? (int)m : NQ - 1]++;
            sx += gx;
            sy += gy;
            acc++;
        }
    }
    memcpy(t->q, q, sizeof q);
    t->sx = sx;
    t->sy = sy;
    t->accepted += acc;
}

int main(int argc, char **argv)
{
    int m = DEFAULT_M;
    uint64_t nbatches, report;
    double a1, a2;
    struct tally t;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1) {
        m = atoi(argv[1]);
        if (m < LOG2_BATCH || m > 40) {
            fprintf(stderr, "ep: LOG2_PAIRS must be in %d..40\n", LOG2_BATCH);
            return 2;
        }
    }
    nbatches = (uint64_t)1 << (m - LOG2_BATCH);
    /* about 32 progress lines whatever the size */
    report = nbatches >= 32 ? nbatches / 32 : 1;

    split23(MULT, &a1, &a2);
    memset(&t, 0, sizeof t);
    printf("ep: M=%d pairs=%llu batches=%llu\n", m,
           (unsigned long long)((uint64_t)1 << m), (unsigned long long)nbatches);

    for (uint64_t k = 0; k < nbatches; k++) {
        run_batch(batch_seed(k), a1, a2, &t);
        if ((k + 1) % report == 0 || k + 1 == nbatches)
            printf("batch %llu/%llu accepted=%llu sx=%.10e sy=%.10e\n",
                   (unsigned long long)(k + 1), (unsigned long long)nbatches,
                   (unsigned long long)t.accepted, t.sx, t.sy);
    }

    printf("annulus counts:\n");
    for (int l = 0; l < NQ; l++)
        printf("  q[%d] = %llu\n", l, (unsigned long long)t.q[l]);
    printf("gaussian pairs = %llu\n", (unsigned long long)t.accepted);
    printf("sx = %.10e\nsy = %.10e\n", t.sx, t.sy);
    printf("ep: done\n");
    return 0;
}
