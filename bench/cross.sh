#!/usr/bin/env bash
# Cross-ISA benchmark: an x86_64 server node and an aarch64 board node.
# One command:
#
#   bench/cross.sh              # MEMS="64 256" by default
#   MEMS="64" REPS=5 bench/cross.sh
#
# The board is Tern built for aarch64 (scripts/build-aarch64.sh) run under
# qemu-aarch64 (scripts/board-node.sh), which stands in for a slow,
# low-power ARM board; both nodes listen on loopback.
#
# 1. Migration: for each working set in MEMS (MiB) a memory dirtier
#    (10 MB/s, 32-page windows, whole working set touched first) moves
#    pre-copy from the server to the board, runs there ~2 s, and moves back;
#    on the way back only what changed since it left should be sent
#    (bytes_saved). Its output up to where it was stopped must equal an
#    uninterrupted run. One row per migration in bench/results/cross.csv.
# 2. Compute speed: ep, recurse and a cache-resident dirtier run with
#    `tern run` natively and under qemu-aarch64, one warm-up run (compile
#    cache) and then REPS timed runs each; the median wall times and their
#    ratio go to bench/results/cross_speed.csv. Every run's output must be
#    identical on both ISAs. Wall times include Tern's own start-up (about
#    0.01 s natively, 0.2 s under qemu).
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
ARM=$PWD/$(scripts/build-aarch64.sh)
MEMS=${MEMS:-"64 256"}
# The dirtier's progress lines: one every REPORT iterations (~0.3 s at
# 10 MB/s with 32-page windows), compared with an uninterrupted run.
REPORT=25
PROGRESS='^(init: done|iter [0-9]+ window@[0-9]+) checksum=[0-9a-f]{16}$'

die() { echo "cross.sh: $*" >&2; exit 1; }
# a string field of node $1's node_started line
node_field() { grep -m1 node_started "$work/$1.log" | sed -nE "s/.*\"$2\":\"([^\"]+)\".*/\1/p"; }

# start_node NAME CMD...: starts `CMD --listen 127.0.0.1:0 --name NAME
# --data-dir ...` and sets $api to its API address. (Not called through
# $(...), so that its pid reaches $pids in this shell and cleanup ends it.)
start_node() {
  local name=$1; shift
  "$@" --listen 127.0.0.1:0 --name "$name" --data-dir "$work/$name" >/dev/null 2> "$work/$name.log" &
  pids+=($!)
  for _ in $(seq 600); do grep -q node_started "$work/$name.log" 2>/dev/null && break; sleep 0.05; done
  api=$(node_field "$name" api)
  [ -n "$api" ] || { tail -n 5 "$work/$name.log" >&2; die "node $name did not start"; }
}
stop_nodes() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

# One migration from $1 to $2 of guest $3; appends a row (mem $4,
# direction $5) to cross.csv and prints it.
migrate_row() {
  local from=$1 to=$2 id=$3 mem=$4 dir=$5 json
  json=$("$TERN" migrate --node "$from" "$id" --to "$to" --strategy precopy --json) \
    || die "migration $dir of $mem MiB failed"
  echo "$json" >> "$work/reports.jsonl"
  python3 -c '
import json, sys
r = json.loads(sys.argv[1]); mem, d = sys.argv[2], sys.argv[3]
g = lambda k: r.get(k) or 0
print("%s,%s,%s,%.2f,%.1f,%d,%d,%d,%d,%d,%s" % (mem, d, r.get("strategy", "precopy"),
      g("downtime_ms"), g("total_ms"), g("bytes_sent"), g("bytes_saved"), g("pages_sent"),
      g("memory_bytes"), g("rounds"), r.get("dirty_tracking") or "-"))
' "$json" "$mem" "$dir" | tee -a "$OUT/cross.csv"
}

migrations() {
  local S B arch_s arch_b
  start_node server "$TERN" node; S=$api; arch_s=$(node_field server arch)
  start_node board scripts/board-node.sh; B=$api; arch_b=$(node_field board arch)
  echo "server $S ($arch_s), board $B ($arch_b)" >&2
  echo "mem_mib,direction,strategy,downtime_ms,total_ms,bytes_sent,bytes_saved,pages_sent,memory_bytes,rounds,dirty_tracking" > "$OUT/cross.csv"
  for mem in $MEMS; do
    local dargs id last
    dargs=(--mem "$mem" --window 32 --iterations 100000000 --report "$REPORT")
    id=$("$TERN" run --detach --node "$S" "$G/dirtier.wasm" -- "${dargs[@]}" --rate 10)
    for _ in $(seq 600); do
      "$TERN" logs --node "$S" "$id" 2>/dev/null | grep "init: done" >/dev/null && break
      sleep 0.1
    done
    "$TERN" logs --node "$S" "$id" | grep "init: done" >/dev/null || die "dirtier $mem MiB did not initialise"
    sleep 1.5
    migrate_row "$S" "$B" "$id" "$mem" "$arch_s->$arch_b"
    sleep 2
    migrate_row "$B" "$S" "$id" "$mem" "$arch_b->$arch_s"
    sleep 0.5
    "$TERN" stop --node "$S" "$id" >/dev/null
    # Its output so far against an uninterrupted run (unpaced: pacing
    # changes timing only) of as many iterations.
    "$TERN" logs --node "$S" "$id" | grep -E "$PROGRESS" > "$work/moved.out" || true
    last=$(tail -n1 "$work/moved.out" | sed -nE 's/^iter ([0-9]+) .*/\1/p')
    [ -n "$last" ] || die "dirtier $mem MiB printed no progress"
    "$TERN" run "$G/dirtier.wasm" -- --mem "$mem" --window 32 --iterations "$last" --report "$REPORT" \
      | grep -E "$PROGRESS" > "$work/ref.out"
    cmp -s "$work/moved.out" "$work/ref.out" || {
      diff "$work/ref.out" "$work/moved.out" | head -n 10 >&2
      die "dirtier $mem MiB: output after $arch_s->$arch_b->$arch_s differs from an uninterrupted run"
    }
    echo "dirtier $mem MiB: $last iterations, output identical to an uninterrupted run" >&2
  done
  stop_nodes
}

# Median wall time of REPS runs of `tern run` (after one warm-up run) on
# host $1 (server|board) of guest $2 with arguments $3; every run's output
# must equal $work/$2.ref (written by the first server run).
speed_one() {
  local host=$1 name=$2 args=$3 t0 t1 ts=() i
  local cmd=("$TERN")
  [ "$host" = board ] && cmd=(qemu-aarch64 -L / "$ARM")
  for i in $(seq 0 "$REPS"); do
    t0=$(now)
    # shellcheck disable=SC2086 # args are words
    "${cmd[@]}" run "$G/$name.wasm" -- $args > "$work/$name.$host.out" || die "$name $args failed on the $host"
    t1=$(now)
    [ -f "$work/$name.ref" ] || cp "$work/$name.$host.out" "$work/$name.ref"
    cmp -s "$work/$name.ref" "$work/$name.$host.out" || {
      diff "$work/$name.ref" "$work/$name.$host.out" | head -n 10 >&2
      die "$name $args: output on the $host differs from the server's"
    }
    [ "$i" = 0 ] || ts+=("$(echo "$t1 - $t0" | bc -l)")
  done
  median "${ts[@]}"
}

speed() {
  local csv=$OUT/cross_speed.csv
  echo "guest,args,server_s,board_s,board_over_server" > "$csv"
  # each about 0.7-0.9 s natively; the dirtier's 4 MiB stays in cache
  for spec in "ep|23" "recurse|10000 15" "dirtier|--mem 4 --iterations 600000"; do
    local name=${spec%%|*} args=${spec#*|} s b
    s=$(speed_one server "$name" "$args")
    b=$(speed_one board "$name" "$args")
    printf '%s,%s,%.3f,%.3f,%.2f\n' "$name" "$args" "$s" "$b" "$(echo "$b / $s" | bc -l)" | tee -a "$csv"
  done
}

summary() {
  python3 - "$OUT/cross.csv" "$OUT/cross_speed.csv" <<'EOF'
import csv, sys
m = list(csv.DictReader(open(sys.argv[1])))
s = list(csv.DictReader(open(sys.argv[2])))
print()
print("Migrations (precopy, dirtier at 10 MB/s):")
print("%8s  %-17s %10s %10s %10s %10s %7s  %s" % ("mem MiB", "direction", "down ms", "total ms",
      "sent MiB", "saved MiB", "rounds", "tracking"))
for r in m:
    print("%8s  %-17s %10s %10s %10.1f %10.1f %7s  %s" % (r["mem_mib"], r["direction"], r["downtime_ms"],
          r["total_ms"], int(r["bytes_sent"]) / 2**20, int(r["bytes_saved"]) / 2**20, r["rounds"],
          r["dirty_tracking"]))
print()
print("Compute speed (median wall s; board = aarch64 under qemu-user):")
print("%-8s %-30s %9s %9s %8s" % ("guest", "args", "server", "board", "ratio"))
for r in s:
    print("%-8s %-30s %9s %9s %7sx" % (r["guest"], r["args"], r["server_s"], r["board_s"], r["board_over_server"]))
print()
print("CSV: %s, %s" % (sys.argv[1], sys.argv[2]))
EOF
}

t_start=$(now)
migrations
speed
summary
printf 'total %.0f s\n' "$(echo "$(now) - $t_start" | bc -l)"
