#!/usr/bin/env bash
# Live-migration benchmarks (issue 3). One command:
#
#   bench/migrate.sh            # Tern matrix on loopback, then the QEMU anchor side by side
#   bench/migrate.sh tern       # Tern only
#   bench/migrate.sh qemu       # QEMU anchor and Tern at the same working set and rates
#
# Tern: guest memory 64, 256, 1024 MiB x dirty rate idle, 10, 100, 1000 MB/s
# x strategy cold, precopy, between two nodes on loopback. Each row is one
# migration of a running memory dirtier whose whole working set is touched
# first. Results: bench/results/migrate_loopback.csv (+ _qemu.csv), with
# the loopback bandwidth measured in the same run, so that total time can
# be compared with touched memory / bandwidth as a ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bin tern >&2
guests/build.sh target/guests >/dev/null
TERN=$PWD/target/release/tern
OUT=$PWD/bench/results
mkdir -p "$OUT"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
what=${1:-all}
MEMS=${MEMS:-"64 256 1024"}
RATES=${RATES:-"0 10 100 1000"}

start_node() {
  "$TERN" node --listen 127.0.0.1:0 --name "$1" --data-dir "$work/$1" >/dev/null 2> "$work/$1.log" &
  pids+=($!)
  for _ in $(seq 200); do grep -q node_started "$work/$1.log" 2>/dev/null && break; sleep 0.05; done
  sed -nE 's/.*"api":"([^"]+)".*/\1/p' "$work/$1.log" | head -n1
}

# Loopback TCP bandwidth in bytes/s (1 GiB through a socket, python3).
loopback_bw() {
  python3 - <<'PY'
import socket, threading, time
N = 1 << 30
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
port = srv.getsockname()[1]
def sink():
    c, _ = srv.accept(); got = 0
    while got < N:
        b = c.recv(1 << 20)
        if not b: break
        got += len(b)
    c.close()
t = threading.Thread(target=sink); t.start()
s = socket.create_connection(("127.0.0.1", port)); buf = b"\x5a" * (1 << 20)
t0 = time.perf_counter()
for _ in range(N >> 20): s.sendall(buf)
s.close(); t.join()
print(int(N / (time.perf_counter() - t0)))
PY
}

# Starts the dirtier on node $1 and waits until its working set is touched.
# Idle: 16 pages (one pacing chunk) every ~65 s; otherwise 1 MiB windows
# at RATE MB/s.
start_guest() {
  local api=$1 mem=$2 rate=$3 id
  if [ "$rate" = 0 ]; then
    id=$("$TERN" run --detach --node "$api" target/guests/dirtier.wasm -- --mem "$mem" --window 16 --rate 0.001 --iterations 100000000)
  else
    id=$("$TERN" run --detach --node "$api" target/guests/dirtier.wasm -- --mem "$mem" --window 256 --rate "$rate" --iterations 100000000)
  fi
  for _ in $(seq 600); do
    "$TERN" logs --node "$api" "$id" 2>/dev/null | grep -q "init: done" && break
    sleep 0.1
  done
  sleep 0.5
  echo "$id"
}

# One migration; prints the report's CSV fields.
one() {
  local from=$1 to=$2 mem=$3 rate=$4 strategy=$5 id json
  id=$(start_guest "$from" "$mem" "$rate")
  json=$("$TERN" migrate --node "$from" "$id" --to "$to" --strategy "$strategy" --max-downtime 50 --json)
  "$TERN" stop --node "$to" "$id" 2>/dev/null || true
  python3 -c '
import json, sys
r = json.loads(sys.argv[1])
print("%s,%.2f,%.1f,%d,%d,%d" % (r["dirty_tracking"], r["downtime_ms"], r["total_ms"], r["bytes_sent"], r["pages_sent"], r["rounds"]))
' "$json"
}

tern_matrix() {
  local A B bw csv=$OUT/migrate_loopback.csv
  A=$(start_node a); B=$(start_node b)
  bw=$(loopback_bw)
  echo "mem_mib,dirty_mb_s,strategy,dirty_tracking,downtime_ms,total_ms,bytes_sent,pages_sent,rounds,touched_bytes,bytes_over_touched,link_bytes_s,total_over_touched_by_bw" > "$csv"
  for mem in $MEMS; do
    for rate in $RATES; do
      for strategy in cold precopy; do
        local row touched
        row=$(one "$A" "$B" "$mem" "$rate" "$strategy")
        touched=$((mem * 1048576))
        python3 -c '
import sys
mem, rate, strat, row, touched, bw = sys.argv[1:7]
f = row.split(","); b = int(f[3]); total = float(f[2]) / 1000
print("%s,%s,%s,%s,%s,%.3f,%s,%.3f" % (mem, rate, strat, row, touched, b / int(touched), bw, total / (int(touched) / int(bw))))
' "$mem" "$rate" "$strategy" "$row" "$touched" "$bw" | tee -a "$csv"
      done
    done
  done
}

# QEMU's anchor and Tern at the same working set (256 MiB) and dirty rates
# (0, 10, 100 MiB/s), QEMU's default downtime budget (300 ms) and Tern's.
qemu_side_by_side() {
  local csv=$OUT/migrate_qemu.csv A B
  echo "system,strategy,working_set_mib,dirty_mib_s,downtime_ms,total_ms,transferred_mib,bytes_over_ws,completed" > "$csv"
  HEADER=0 /work/shared/tools/qemu-anchor.sh -m 512 -w 256 -d "0 10 100" -s precopy 2>"$work/qemu.err" \
    | while IFS=, read -r strategy mem ws dirty down total mib completed _; do
        printf 'qemu,%s,%s,%s,%s,%s,%s,%.2f,%s\n' "$strategy" "$ws" "$dirty" "$down" "$total" "$mib" \
          "$(echo "$mib / $ws" | bc -l)" "$completed" | tee -a "$csv"
      done || echo "qemu anchor failed: $(tail -n 3 "$work/qemu.err")" >&2
  A=$(start_node qa); B=$(start_node qb)
  for dirty in 0 10 100; do
    for budget in 300 50; do
      local rate id json
      # MiB/s -> MB/s
      rate=$(echo "$dirty * 1.048576" | bc -l)
      id=$(start_guest "$A" 256 "$( [ "$dirty" = 0 ] && echo 0 || echo "$rate")")
      json=$("$TERN" migrate --node "$A" "$id" --to "$B" --strategy precopy --max-downtime "$budget" --json)
      "$TERN" stop --node "$B" "$id" 2>/dev/null || true
      python3 -c '
import json, sys
r = json.loads(sys.argv[1]); dirty, budget = sys.argv[2], sys.argv[3]
mib = r["bytes_sent"] / 1048576
print("tern,precopy-%sms,256,%s,%.2f,%.1f,%.1f,%.2f,yes" % (budget, dirty, r["downtime_ms"], r["total_ms"], mib, mib / 256))
' "$json" "$dirty" "$budget" | tee -a "$csv"
    done
  done
}

case $what in
  tern) tern_matrix ;;
  qemu) qemu_side_by_side ;;
  all) tern_matrix; qemu_side_by_side ;;
  *) echo "usage: bench/migrate.sh [tern|qemu|all]" >&2; exit 2 ;;
esac
