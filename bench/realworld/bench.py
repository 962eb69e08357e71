# Workload of bench/realworld.sh for CPython (wasm32-wasi): a mix of
# pure-Python work -- n-body floats, a tokenizer and evaluator, dicts,
# strings and sorting -- with deterministic output. Argument: scale.
import sys

SCALE = int(sys.argv[1]) if len(sys.argv) > 1 else 1


def nbody(steps):
    pi = 3.14159265358979323
    days = 365.24
    mass = 4 * pi * pi
    bodies = [
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, mass],
        [4.84143144246472090e00, -1.16032004402742839e00, -1.03622044471123109e-01,
         1.66007664274403694e-03 * days, 7.69901118419740425e-03 * days,
         -6.90460016972063023e-05 * days, 9.54791938424326609e-04 * mass],
        [8.34336671824457987e00, 4.12479856412430479e00, -4.03523417114321381e-01,
         -2.76742510726862411e-03 * days, 4.99852801234917238e-03 * days,
         2.30417297573763929e-05 * days, 2.85885980666130812e-04 * mass],
        [1.28943695621391310e01, -1.51111514016986312e01, -2.23307578892655734e-01,
         2.96460137564761618e-03 * days, 2.37847173959480950e-03 * days,
         -2.96589568540237556e-05 * days, 4.36624404335156298e-05 * mass],
        [1.53796971148509165e01, -2.59193146099879641e01, 1.79258772950371181e-01,
         2.68067772490389322e-03 * days, 1.62824170038242295e-03 * days,
         -9.51592254519715870e-05 * days, 5.15138902046611451e-05 * mass],
    ]
    pairs = [(bodies[i], bodies[j]) for i in range(5) for j in range(i + 1, 5)]
    dt = 0.01
    for _ in range(steps):
        for a, b in pairs:
            dx, dy, dz = a[0] - b[0], a[1] - b[1], a[2] - b[2]
            d2 = dx * dx + dy * dy + dz * dz
            mag = dt / (d2 * d2 ** 0.5)
            bm, am = b[6] * mag, a[6] * mag
            a[3] -= dx * bm; a[4] -= dy * bm; a[5] -= dz * bm
            b[3] += dx * am; b[4] += dy * am; b[5] += dz * am
        for b in bodies:
            b[0] += dt * b[3]; b[1] += dt * b[4]; b[2] += dt * b[5]
    e = 0.0
    for i, a in enumerate(bodies):
        e += 0.5 * a[6] * (a[3] ** 2 + a[4] ** 2 + a[5] ** 2)
        for b in bodies[i + 1:]:
            e -= a[6] * b[6] / ((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 + (a[2] - b[2]) ** 2) ** 0.5
    return e


def calc(n):
    # tokenize and evaluate n generated arithmetic expressions recursively
    def tokens(s):
        out, i = [], 0
        while i < len(s):
            c = s[i]
            if c.isdigit():
                j = i
                while j < len(s) and s[j].isdigit():
                    j += 1
                out.append(int(s[i:j])); i = j
            elif c in "+-*()%":
                out.append(c); i += 1
            else:
                i += 1
        return out

    def expr(t, p):
        v, p = term(t, p)
        while p < len(t) and t[p] in ("+", "-"):
            op = t[p]; w, p = term(t, p + 1)
            v = v + w if op == "+" else v - w
        return v, p

    def term(t, p):
        v, p = atom(t, p)
        while p < len(t) and t[p] in ("*", "%"):
            op = t[p]; w, p = atom(t, p + 1)
            v = v * w if op == "*" else (v % w if w else v)
        return v, p

    def atom(t, p):
        if t[p] == "(":
            v, p = expr(t, p + 1)
            return v, p + 1
        return t[p], p + 1

    total, x = 0, 12345
    for k in range(n):
        parts = []
        for _ in range(12):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            parts.append("(%d %s %d)" % (x % 97, "+-*%"[x % 4], (x >> 8) % 89 + 1))
        s = " + ".join(parts[:6]) + " * " + " - ".join(parts[6:])
        total = (total + expr(tokens(s), 0)[0]) % 1000000007
    return total


def words(n):
    # word frequencies and sorting over generated text
    syll = ["ka", "to", "ri", "me", "su", "no", "ha", "lo", "zi", "pe"]
    x, counts, text = 7, {}, []
    for _ in range(n):
        x = (x * 69069 + 1) & 0xFFFFFFFF
        w = "".join(syll[(x >> s) % 10] for s in (3, 9, 15)[: 1 + x % 3])
        counts[w] = counts.get(w, 0) + 1
        text.append(w)
    s = " ".join(text).upper().replace("KA", "ca")
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    return len(s), s.count("ca"), top


for r in range(SCALE):
    print("round", r)
    print("nbody %.9f" % nbody(20000))
    print("calc", calc(2000))
    print("words", words(40000))
