#!/usr/bin/env bash
# Tern's benchmarks for checkpoint/restore. One command:
#
#   bench/run.sh            # everything
#   bench/run.sh overhead   # prepared vs original run time and code size
#   bench/run.sh latency    # checkpoint and restore latency, 16 MiB .. 1 GiB
#   bench/run.sh size       # image size against touched memory
#
# Results go to bench/results/*.csv (kept in the repository). Every
# comparison is a ratio measured in the same run, because these machines
# are shared and noisy.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
what=${1:-all}

# json field from the last matching line of a file
field() { grep "\"event\":\"$2\"" "$1" | tail -n1 | sed -E "s/.*\"$3\":([0-9.]+).*/\1/"; }

overhead() {
  local csv=$OUT/prepare_overhead.csv
  echo "guest,args,original_s,prepared_s,time_ratio,original_bytes,prepared_bytes,size_ratio,prepare_s" > "$csv"
  for spec in "ep|24" "dirtier|--mem 64 --iterations 40000" "recurse|" "filerw|--records 20000"; do
    local name=${spec%%|*} args=${spec#*|}
    local dir=$work/data; mkdir -p "$dir"
    # warm the prepare and compile caches
    local t0 t1; t0=$(now)
    $TERN prepare "$G/$name.wasm" -o "$work/$name.prepared.wasm" 2>/dev/null
    t1=$(now); local prep; prep=$(echo "$t1 - $t0" | bc -l)
    $TERN run --dir "$dir:/data" "$G/$name.wasm" -- $args >/dev/null
    $TERN run --original --dir "$dir:/data" "$G/$name.wasm" -- $args >/dev/null
    local o=() p=()
    for _ in $(seq "$REPS"); do
      o+=("$(wall $TERN run --original --dir "$dir:/data" "$G/$name.wasm" -- $args)")
      p+=("$(wall $TERN run --dir "$dir:/data" "$G/$name.wasm" -- $args)")
    done
    local om pm; om=$(median "${o[@]}"); pm=$(median "${p[@]}")
    local ob pb; ob=$(stat -c %s "$G/$name.wasm"); pb=$(stat -c %s "$work/$name.prepared.wasm")
    printf '%s,%s,%.3f,%.3f,%.3f,%d,%d,%.2f,%.2f\n' "$name" "$args" "$om" "$pm" \
      "$(echo "$pm / $om" | bc -l)" "$ob" "$pb" "$(echo "$pb / $ob" | bc -l)" "$prep" | tee -a "$csv"
  done
}

latency() {
  local csv=$OUT/checkpoint_latency.csv
  echo "mem_mib,pause_ms,write_ms,checkpoint_ms,goal_ms,image_bytes,restore_to_running_ms,restore_goal_ms" > "$csv"
  for mem in 16 256 1024; do
    # time for the dirtier to initialize its working set before the checkpoint
    local after=$(( 300 + mem * 3 ))ms
    local c=() r=() line
    for i in $(seq "$REPS"); do
      $TERN run --report --checkpoint-after "$after" --image "$work/l.tern" \
        "$G/dirtier.wasm" -- --mem "$mem" --iterations 100000000 >/dev/null 2>"$work/ck.err"
      c+=("$(field "$work/ck.err" checkpoint total_ms)")
      pause=$(field "$work/ck.err" checkpoint pause_ms); write=$(field "$work/ck.err" checkpoint write_ms)
      bytes=$(field "$work/ck.err" checkpoint image_bytes)
      $TERN restore --report --checkpoint-after 1ms --image "$work/l2.tern" "$work/l.tern" \
        >/dev/null 2>"$work/rs.err"
      r+=("$(field "$work/rs.err" running since_start_ms)")
    done
    local goal; goal=$(echo "10 + $mem * 1048576 / 2000000" | bc -l)
    printf '%d,%.2f,%.2f,%.2f,%.1f,%d,%.2f,%s\n' "$mem" "$pause" "$write" "$(median "${c[@]}")" "$goal" \
      "$bytes" "$(median "${r[@]}")" "$([ "$mem" = 16 ] && echo 10 || echo -)" | tee -a "$csv"
    rm -f "$work/l.tern" "$work/l2.tern"
  done
}

size() {
  local csv=$OUT/image_size.csv
  echo "guest,args,memory_bytes,touched_bytes,image_bytes,image_over_touched" > "$csv"
  for spec in "dirtier|--mem 16 --iterations 100000000" "dirtier|--mem 64 --iterations 100000000" \
              "dirtier|--mem 256 --iterations 100000000" "ep|26" "recurse|"; do
    local name=${spec%%|*} args=${spec#*|}
    $TERN run --report --checkpoint-after 1200ms --image "$work/s.tern" "$G/$name.wasm" -- $args \
      >/dev/null 2>"$work/s.err"
    local mb img pages
    mb=$(field "$work/s.err" checkpoint memory_bytes); img=$(field "$work/s.err" checkpoint image_bytes)
    pages=$(field "$work/s.err" checkpoint pages)
    printf '%s,%s,%d,%d,%d,%.3f\n' "$name" "$args" "$mb" "$((pages * 4096))" "$img" \
      "$(echo "$img / ($pages * 4096)" | bc -l)" | tee -a "$csv"
    rm -f "$work/s.tern"
  done
}

case $what in
  overhead) overhead ;;
  latency) latency ;;
  size) size ;;
  all) overhead; latency; size ;;
  *) echo "usage: bench/run.sh [overhead|latency|size|all]" >&2; exit 2 ;;
esac
