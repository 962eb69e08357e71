#!/usr/bin/env bash
# Measurements for choosing Tern's own migratable-module transform (issue 5).
# One command:
#
#   bench/transform.sh            # both
#   bench/transform.sh large      # prepare time, memory and size on large modules
#   bench/transform.sh debug      # run-time cost of wasmtime's guest debugging
#
# large: bench/bigmodule/gen.py writes a deterministic C program of FUNCS
#   functions (loops, switches, calls, some printing), clang compiles it to
#   wasm32-wasi (cached in target/bigmodule/), and `tern prepare` runs the
#   current transform (binaryen Asyncify through wasm-opt) on it with a time
#   limit (LIMIT seconds, default 600). SIZES lists FUNCS values; 2000
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
  echo "funcs,original_bytes,prepare_s,prepare_max_rss_mib,prepared_bytes,size_ratio,original_run_s,prepared_run_s,time_ratio,result" > "$csv"
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
      echo "$funcs,$bytes,$secs,$rss_mib,,,,,,$why" >> "$csv"
      continue
    fi
    local pbytes; pbytes=$(stat -c %s "$prepared")
    local orig_s prep_s
    # `tern run` prepares through its cache (filled by the warm-up run).
    orig_s=$(timed "$TERN" run --original "$wasm" -- "$ROUNDS")
    prep_s=$(timed "$TERN" run "$wasm" -- "$ROUNDS")
    cmp -s <("$TERN" run --original "$wasm" -- "$ROUNDS") <("$TERN" run "$wasm" -- "$ROUNDS") \
      || { echo "transform: prepared and original outputs differ for $funcs functions" >&2; exit 1; }
    echo "$funcs,$bytes,$secs,$rss_mib,$pbytes,$(echo "scale=3; $pbytes / $bytes" | bc),$orig_s,$prep_s,$(echo "scale=3; $prep_s / $orig_s" | bc),ok" >> "$csv"
  done
  column -s, -t < "$csv"
}

debug() {
  local csv=$OUT/transform_debug.csv
  echo "guest,args,plain_s,guest_debug_s,ratio" > "$csv"
  mkdir -p "$work/data"
  for spec in "ep|23" "recurse|" "dirtier|--mem 4 --iterations 600000" "filerw|--records 200000"; do
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
  large) large ;;
  debug) debug ;;
  all) debug; large ;;
  *) echo "usage: bench/transform.sh [all|large|debug]" >&2; exit 2 ;;
esac
