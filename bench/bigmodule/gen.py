#!/usr/bin/env python3
"""Generates a large, deterministic C program for wasm32-wasi: the stand-in
for "a real program of any size" in issue 5's prepare benchmark.

    gen.py OUTDIR FUNCS [FILES]

Writes FILES C files (default 16) with FUNCS functions in all plus main.c.
Functions mix loops, switches, nested conditionals, arithmetic on arrays
and memory, and calls to other functions (an acyclic call graph of random
fan-out, so recursion depth stays bounded), and some write to stdout, so a
transform that must make every function reaching an import unwindable has
a realistic amount of work. main calls a fixed sample of them and prints a
checksum: the output is the same on every host and compiler run.
"""
import os
import random
import sys


def func(rng, i, funcs):
    name = f"f{i}"
    lines = [f"uint32_t {name}(uint32_t a, uint32_t b) {{"]
    lines.append("    uint32_t acc = a * 2654435761u ^ b;")
    lines.append(f"    static uint32_t tab{i}[{rng.choice([8, 16, 32])}];")
    for _ in range(rng.randint(3, 6)):
        kind = rng.randrange(5)
        if kind == 0:
            n = rng.randint(3, 12)
            lines.append(f"    for (uint32_t k = 0; k < {n} + (a & 3); k++) {{")
            lines.append(f"        acc = (acc << {rng.randint(1, 7)}) ^ (acc >> {rng.randint(1, 9)}) ^ k;")
            lines.append(f"        tab{i}[k & 7] += acc;")
            lines.append("    }")
        elif kind == 1:
            lines.append("    switch (acc % 5) {")
            for c in range(4):
                lines.append(f"    case {c}: acc += {rng.randint(1, 1 << 20)}u; acc ^= b >> {c + 1}; break;")
            lines.append("    default: acc *= 3u;")
            lines.append("    }")
        elif kind == 2:
            lines.append(f"    if ((acc & {rng.randint(1, 255)}u) > {rng.randint(1, 128)}u) {{")
            lines.append(f"        acc = acc * {rng.randint(3, 99)}u + tab{i}[acc & 7];")
            lines.append("    } else {")
            lines.append(f"        acc = (acc ^ 0x{rng.getrandbits(32):08x}u) + a;")
            lines.append("    }")
        elif kind == 3 and i + 1 < funcs:
            # Calls only go to higher-numbered functions: no cycles.
            callee = rng.randint(i + 1, min(funcs - 1, i + 400))
            lines.append(f"    if (b > 0) acc += f{callee}(acc, b - 1);")
        else:
            lines.append(f"    g_mem[(acc >> 3) & 4095] ^= acc + {rng.randint(0, 1 << 16)}u;")
            lines.append("    acc += g_mem[(a + b) & 4095];")
    if rng.random() < 0.02:
        lines.append(f"    if ((acc & 0xfff) == 7) printf(\"{name} %u\\n\", acc);")
    lines.append("    return acc;")
    lines.append("}")
    return "\n".join(lines)


def main():
    out, funcs = sys.argv[1], int(sys.argv[2])
    files = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    os.makedirs(out, exist_ok=True)
    rng = random.Random(20261125)
    header = "#include <stdint.h>\n#include <stdio.h>\nextern uint32_t g_mem[4096];\n"
    protos = "".join(f"uint32_t f{i}(uint32_t, uint32_t);\n" for i in range(funcs))
    with open(os.path.join(out, "protos.h"), "w") as f:
        f.write(header + protos)
    per = (funcs + files - 1) // files
    for k in range(files):
        with open(os.path.join(out, f"part{k}.c"), "w") as f:
            f.write('#include "protos.h"\n')
            for i in range(k * per, min(funcs, (k + 1) * per)):
                f.write(func(rng, i, funcs) + "\n")
    sample = sorted(rng.sample(range(funcs), min(funcs, 2000)))
    with open(os.path.join(out, "main.c"), "w") as f:
        f.write('#include "protos.h"\nuint32_t g_mem[4096];\n')
        f.write("static const uint32_t sample[] = {" + ",".join(map(str, sample)) + "};\n")
        f.write("typedef uint32_t (*fn)(uint32_t, uint32_t);\n")
        # Every function is in the table, so the linker keeps them all.
        f.write("static const fn table[] = {" + ",".join(f"f{i}" for i in range(funcs)) + "};\n")
        f.write("""
int main(int argc, char **argv) {
    uint32_t rounds = argc > 1 ? (uint32_t)atoi(argv[1]) : 20, sum = 0;
    for (uint32_t r = 0; r < rounds; r++) {
        for (uint32_t i = 0; i < sizeof sample / sizeof sample[0]; i++)
            sum = sum * 31u + table[sample[i]](sum ^ sample[i], 6);
        printf("round %u sum %08x\\n", r, sum);
    }
    return 0;
}
""".replace("int main", "#include <stdlib.h>\nint main", 1))


if __name__ == "__main__":
    main()
