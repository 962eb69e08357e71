#!/usr/bin/env bash
# What mutual TLS costs a migration (issue 11): the same 256 MiB guest moved
# between two nodes on loopback, plaintext and over TLS, alternating, REPS
# times each, cold (every page crosses once while the guest is paused: the
# transfer's throughput) and pre-copy of an idle guest. Goal: TLS total time
# at most 1.10x plaintext.
#
#   bench/tls.sh                # -> bench/results/tls.csv (one row per migration, then medians)
#   MEM=1024 REPS=5 bench/tls.sh
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
MEM=${MEM:-256}
csv=$OUT/tls.csv

"$TERN" certs init --dir "$work/c" >/dev/null
for n in ta tb; do "$TERN" certs node "$n" --dir "$work/c" >/dev/null; done
"$TERN" certs client bench --dir "$work/c" >/dev/null

# start_node NAME [tern node args...]: sets $api.
start_node() {
  local name=$1; shift
  "$TERN" node --listen 127.0.0.1:0 --name "$name" --data-dir "$work/$name" "$@" >/dev/null 2> "$work/$name.log" &
  pids+=($!)
  for _ in $(seq 200); do grep -q node_started "$work/$name.log" 2>/dev/null && break; sleep 0.05; done
  api=$(sed -nE 's/.*"api":"([^"]+)".*/\1/p' "$work/$name.log" | head -n1)
}
start_node pa; PA=$api; start_node pb; PB=$api
start_node ta --tls-dir "$work/c"; TA=$api; start_node tb --tls-dir "$work/c"; TB=$api

# one MODE STRATEGY: moves a fresh guest whose memory is all touched; prints total_ms.
one() {
  local mode=$1 strategy=$2 from to env=() id json
  if [ "$mode" = tls ]; then from=$TA; to=$TB; env=(env TERN_TLS_DIR="$work/c"); else from=$PA; to=$PB; env=(env); fi
  id=$("${env[@]}" "$TERN" run --detach --node "$from" target/guests/dirtier.wasm -- --mem "$MEM" --window 16 --rate 0.001 --iterations 100000000)
  for _ in $(seq 600); do
    "${env[@]}" "$TERN" logs --node "$from" "$id" 2>/dev/null | grep -q "init: done" && break
    sleep 0.1
  done
  sleep 0.3
  json=$("${env[@]}" "$TERN" migrate --node "$from" "$id" --to "$to" --strategy "$strategy" --json)
  "${env[@]}" "$TERN" stop --node "$to" "$id" >/dev/null 2>&1 || true
  python3 -c '
import json, sys
r = json.loads(sys.argv[1])
print("%.1f,%.2f,%d" % (r["total_ms"], r["downtime_ms"], r["bytes_sent"]))
' "$json"
}

echo "mode,strategy,mem_mib,total_ms,downtime_ms,bytes_sent" > "$csv"
for strategy in cold precopy; do
  for _ in $(seq "$REPS"); do
    for mode in plain tls; do
      echo "$mode,$strategy,$MEM,$(one "$mode" "$strategy")" | tee -a "$csv"
    done
  done
done
python3 - "$csv" <<'PY' | tee -a "$csv"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
for strategy in ("cold", "precopy"):
    med = {}
    for mode in ("plain", "tls"):
        t = [float(r["total_ms"]) for r in rows if r["mode"] == mode and r["strategy"] == strategy]
        med[mode] = statistics.median(t)
    mib = int(rows[0]["mem_mib"])
    print("# median,%s,%d MiB: plain %.0f ms (%.0f MB/s), tls %.0f ms (%.0f MB/s), tls/plain %.2fx"
          % (strategy, mib, med["plain"], mib * 1.048576e3 / med["plain"],
             med["tls"], mib * 1.048576e3 / med["tls"], med["tls"] / med["plain"]))
PY
