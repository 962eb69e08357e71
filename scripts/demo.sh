#!/usr/bin/env bash
# Tern's demo: two nodes on this machine; a guest that keeps dirtying
# 256 MiB of memory at 10 MB/s starts on node A, moves live to node B
# (pre-copy) and back to A (cold) while it runs; its whole output is then
# compared with an uninterrupted run. Sets up a fresh machine first.
# (scripts/demo-checkpoint.sh shows checkpoint / inspect / restore.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bin tern 2>&1 | grep -v "^\s*Compiling" >&2 || true
guests/build.sh target/guests >/dev/null
TERN=$PWD/target/release/tern
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

ARGS=(--mem 256 --rate 10 --window 64 --iterations 240)

# Two nodes on free ports; each prints its addresses as its first log line.
start_node() {
  "$TERN" node --listen 127.0.0.1:0 --name "$1" --data-dir "$work/$1" >/dev/null 2> "$work/$1.log" &
  pids+=($!)
  for _ in $(seq 100); do
    grep -q node_started "$work/$1.log" 2>/dev/null && break
    sleep 0.05
  done
  sed -nE 's/.*"api":"([^"]+)".*/\1/p' "$work/$1.log" | head -n1
}
A=$(start_node a)
B=$(start_node b)
echo "== node a at $A, node b at $B"

echo "== uninterrupted run of the memory dirtier (${ARGS[*]}), for reference"
"$TERN" run target/guests/dirtier.wasm -- "${ARGS[@]}" > "$work/reference.out"

echo "== the same guest, started on node a"
id=$("$TERN" run --detach --node "$A" target/guests/dirtier.wasm -- "${ARGS[@]}")
echo "   guest $id"
sleep 1.5

echo "== tern migrate $id --to b   (pre-copy, live)"
"$TERN" migrate --node "$A" "$id" --to "$B" --strategy precopy
"$TERN" ps --node "$B"
sleep 1.5

echo "== tern migrate $id --to a   (cold: stop and copy)"
"$TERN" migrate --node "$B" "$id" --to "$A" --strategy cold

echo "== tern wait $id"
"$TERN" wait --node "$A" "$id"
"$TERN" logs --node "$A" "$id" > "$work/migrated.out"
tail -n 3 "$work/migrated.out"

echo
if cmp -s "$work/migrated.out" "$work/reference.out"; then
  echo "== output after a -> b -> a is byte-identical to the uninterrupted run ($(wc -c < "$work/reference.out") bytes)"
else
  echo "== MISMATCH between the migrated guest's output and the uninterrupted run" >&2
  diff "$work/reference.out" "$work/migrated.out" | head >&2
  exit 1
fi
