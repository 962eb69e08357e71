#!/usr/bin/env bash
# Live-migration benchmarks (issue 3). One command:
#
#   bench/migrate.sh            # Tern matrix on loopback, then the QEMU anchor side by side
#   bench/migrate.sh tern       # Tern only
#   bench/migrate.sh qemu       # QEMU anchor and Tern at the same working set and rates
#   bench/migrate.sh plot       # bench/results/migrate.png from the CSVs
#   bench/migrate.sh veth       # the Tern matrix between network namespaces over a
#                               # veth link limited to 1 Gbit/s (tc tbf); needs root
#
# Tern: guest memory 64, 256, 1024 MiB x dirty rate idle, 10, 100, 1000 MB/s
# x strategy cold, precopy, postcopy (STRATEGIES), between two nodes on loopback. Each row is one
# migration of a running memory dirtier whose whole working set is touched
# first. Results: bench/results/migrate_loopback.csv (+ _qemu.csv,
# _veth.csv), with
# the loopback bandwidth measured in the same run, so that total time can
# be compared with touched memory / bandwidth as a ratio.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
what=${1:-all}
MEMS=${MEMS:-"64 256 1024"}
RATES=${RATES:-"0 10 100 1000"}
STRATEGIES=${STRATEGIES:-"cold precopy postcopy"}

# Where nodes run and the CLI talks from: the root namespace (loopback) or,
# for `veth`, namespaces NS_A / NS_B (set by veth_link).
IN_A=() ; IN_B=()
LISTEN_A=127.0.0.1:0 ; LISTEN_B=127.0.0.1:0
cli() { "${IN_A[@]}" "$TERN" "$@"; }

start_node() {
  local in=("${IN_A[@]}") listen=$LISTEN_A
  if [ "$1" = b ] || [ "$1" = qb ]; then in=("${IN_B[@]}"); listen=$LISTEN_B; fi
  "${in[@]}" "$TERN" node --insecure --listen "$listen" --name "$1" --data-dir "$work/$1" >/dev/null 2> "$work/$1.log" &
  pids+=($!)
  for _ in $(seq 200); do grep -q node_started "$work/$1.log" 2>/dev/null && break; sleep 0.05; done
  # Not printed for $(...): pids must reach this shell for the cleanup.
  api=$(sed -nE 's/.*"api":"([^"]+)".*/\1/p' "$work/$1.log" | head -n1)
}

# TCP bandwidth from A's side to B's in bytes/s (python3): 1 GiB on
# loopback, 256 MiB over veth; the receiver runs where node b does.
link_bw() {
  local host=${1:-127.0.0.1} n=${2:-1073741824}
  "${IN_B[@]}" python3 -c '
import socket, sys
srv = socket.socket(); srv.bind((sys.argv[1], 5999)); srv.listen(1)
c, _ = srv.accept()
while c.recv(1 << 20): pass
' "$host" &
  local sink=$!
  sleep 0.5
  "${IN_A[@]}" python3 -c '
import socket, sys, time
n = int(sys.argv[2]); s = socket.create_connection((sys.argv[1], 5999)); buf = b"Z" * (1 << 20)
t0 = time.perf_counter()
for _ in range(n >> 20): s.sendall(buf)
s.shutdown(socket.SHUT_WR); s.recv(1); t = time.perf_counter() - t0
print(int(n / t))
' "$host" "$n"
  wait "$sink" 2>/dev/null || true
}

# Two namespaces joined by a veth pair limited to 1 Gbit/s each way.
veth_link() {
  NS_A=ternbench-a; NS_B=ternbench-b
  ip netns del "$NS_A" 2>/dev/null || true; ip netns del "$NS_B" 2>/dev/null || true
  ip netns add "$NS_A"; ip netns add "$NS_B"
  ip link add tbv-a type veth peer name tbv-b
  ip link set tbv-a netns "$NS_A"; ip link set tbv-b netns "$NS_B"
  ip -n "$NS_A" addr add 10.78.0.1/24 dev tbv-a; ip -n "$NS_B" addr add 10.78.0.2/24 dev tbv-b
  for x in a b; do
    ns=ternbench-$x
    ip -n "$ns" link set lo up; ip -n "$ns" link set "tbv-$x" up
    tc -n "$ns" qdisc add dev "tbv-$x" root tbf rate 1gbit burst 512kb latency 100ms
  done
  IN_A=(ip netns exec "$NS_A"); IN_B=(ip netns exec "$NS_B")
  LISTEN_A=10.78.0.1:7070; LISTEN_B=10.78.0.2:7070
  trap 'bench_cleanup; ip netns del ternbench-a 2>/dev/null; ip netns del ternbench-b 2>/dev/null' EXIT
}

# Starts the dirtier on node $1 and waits until its working set is touched.
# Idle: 16 pages (one pacing chunk) every ~65 s; otherwise 1 MiB windows
# at RATE MB/s.
start_guest() {
  local api=$1 mem=$2 rate=$3 id
  if [ "$rate" = 0 ]; then
    id=$(cli run --detach --node "$api" target/guests/dirtier.wasm -- --mem "$mem" --window 16 --rate 0.001 --iterations 100000000)
  else
    id=$(cli run --detach --node "$api" target/guests/dirtier.wasm -- --mem "$mem" --window 256 --rate "$rate" --iterations 100000000)
  fi
  for _ in $(seq 600); do
    cli logs --node "$api" "$id" 2>/dev/null | grep -q "init: done" && break
    sleep 0.1
  done
  sleep 0.5
  echo "$id"
}

# One migration; prints the report's CSV fields.
one() {
  local from=$1 to=$2 mem=$3 rate=$4 strategy=$5 id json
  id=$(start_guest "$from" "$mem" "$rate")
  json=$(cli migrate --node "$from" "$id" --to "$to" --strategy "$strategy" --max-downtime 50 --json)
  cli stop --node "$to" "$id" 2>/dev/null || true
  python3 -c '
import json, sys
r = json.loads(sys.argv[1])
p = r.get("postcopy")
pc = "%d,%.3f,%.3f,%.3f,%.1f" % (p["faults"], p["fault_p50_ms"], p["fault_p99_ms"], p["fault_max_ms"], p["all_local_ms"]) if p else ",,,,"
print("%s,%.2f,%.1f,%d,%d,%d,%s" % (r["dirty_tracking"], r["downtime_ms"], r["total_ms"], r["bytes_sent"], r["pages_sent"], r["rounds"], pc))
' "$json"
}

tern_matrix() {
  local A B bw csv=$OUT/migrate_${1:-loopback}.csv
  start_node a; A=$api; start_node b; B=$api
  if [ "${1:-loopback}" = veth ]; then bw=$(link_bw 10.78.0.2 268435456); else bw=$(link_bw); fi
  echo "mem_mib,dirty_mb_s,strategy,dirty_tracking,downtime_ms,total_ms,bytes_sent,pages_sent,rounds,touched_bytes,bytes_over_touched,link_bytes_s,total_over_touched_by_bw,faults,fault_p50_ms,fault_p99_ms,fault_max_ms,all_local_ms" > "$csv"
  for mem in $MEMS; do
    for rate in $RATES; do
      for strategy in $STRATEGIES; do
        local row touched
        row=$(one "$A" "$B" "$mem" "$rate" "$strategy")
        touched=$((mem * 1048576))
        python3 -c '
import sys
mem, rate, strat, row, touched, bw = sys.argv[1:7]
f = row.split(","); b = int(f[3]); total = float(f[2]) / 1000
base, pc = ",".join(f[:6]), ",".join(f[6:])
print("%s,%s,%s,%s,%s,%.3f,%s,%.3f,%s" % (mem, rate, strat, base, touched, b / int(touched), bw, total / (int(touched) / int(bw)), pc))
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
  start_node qa; A=$api; start_node qb; B=$api
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

plot() {
  python3 -c "import matplotlib" 2>/dev/null || pip install --quiet matplotlib >&2
  python3 bench/plot.py
}

case $what in
  tern) tern_matrix ;;
  qemu) qemu_side_by_side ;;
  veth) veth_link; tern_matrix veth ;;
  all) tern_matrix; qemu_side_by_side; plot ;;
  plot) plot ;;
  *) echo "usage: bench/migrate.sh [tern|qemu|veth|plot|all]" >&2; exit 2 ;;
esac
