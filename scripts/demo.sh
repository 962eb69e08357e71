#!/usr/bin/env bash
# Tern's demo: an x86_64 server node and an aarch64 board node (Tern built
# for aarch64, run under qemu-aarch64, standing in for a low-power ARM
# board). A guest that keeps dirtying 64 MiB of memory at 10 MB/s starts on
# the server, moves live to the board (pre-copy), runs there, and moves
# back (pre-copy, sending only what changed while it was away). Its whole
# output is then compared with an uninterrupted run. Nodes and the CLI talk
# over mutual TLS only, with certificates of a cluster CA made here
# (docs/security.md). Sets up a fresh machine first (the first aarch64
# build takes about 5 minutes).
# (scripts/demo-checkpoint.sh shows checkpoint / inspect / restore.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== building tern for x86_64 and for aarch64, and the guests"
cargo build --release --bin tern 2>&1 | grep -v "^\s*Compiling" >&2 || true
BOARD_TERN=$(scripts/build-aarch64.sh 2> >(grep -v "^\s*Compiling" >&2))
guests/build.sh target/guests >/dev/null
TERN=$PWD/target/release/tern
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

ARGS=(--mem 64 --rate 10 --window 64 --iterations 2000)

# Each node prints its addresses as its first log line.
start_node() {
  local name=$1; shift
  "$@" --listen 127.0.0.1:0 --name "$name" --data-dir "$work/$name" >/dev/null 2> "$work/$name.log" &
  pids+=($!)
  for _ in $(seq 200); do
    grep -q node_started "$work/$name.log" 2>/dev/null && break
    sleep 0.05
  done
  # Not printed for $(...): pids must reach this shell for the cleanup.
  api=$(sed -nE 's/.*"api":"([^"]+)".*/\1/p' "$work/$name.log" | head -n1)
  if [ -z "$api" ]; then echo "== node $name did not start: $(tail -n 2 "$work/$name.log")" >&2; exit 1; fi
}
echo "== a cluster CA, node certificates for server and board, a client certificate for this CLI"
"$TERN" certs init --dir "$work/cluster" >/dev/null
"$TERN" certs node server --dir "$work/cluster" >/dev/null
"$TERN" certs node board --dir "$work/cluster" >/dev/null
"$TERN" certs client demo --dir "$work/cluster" >/dev/null
export TERN_TLS_DIR=$work/cluster
start_node server "$TERN" node --tls-dir "$work/cluster"; S=$api
start_node board qemu-aarch64 -L / "$BOARD_TERN" node --class board --tls-dir "$work/cluster"; B=$api
echo "== server node ($(uname -m)) at https://$S, board node (aarch64 under qemu-aarch64) at https://$B, mutual TLS"
if refusal=$(env -u TERN_TLS_DIR "$TERN" ps --node "$S" 2>&1); then
  echo "== the server answered a plaintext client" >&2
  exit 1
fi
echo "   a client without the cluster's certificate is refused: $refusal"

echo "== uninterrupted run of the memory dirtier (${ARGS[*]}), for reference"
"$TERN" run target/guests/dirtier.wasm -- "${ARGS[@]}" > "$work/reference.out"

echo "== the same guest, started on the server"
id=$("$TERN" run --detach --node "$S" target/guests/dirtier.wasm -- "${ARGS[@]}")
echo "   guest $id"
sleep 2

echo "== tern migrate $id --to board   (pre-copy, live, x86_64 -> aarch64)"
"$TERN" migrate --node "$S" "$id" --to "$B" --strategy precopy
"$TERN" ps --node "$B"
sleep 3

echo "== tern migrate $id --to server   (pre-copy, live, aarch64 -> x86_64: only the difference)"
"$TERN" migrate --node "$B" "$id" --to "$S" --strategy precopy

echo "== tern wait $id"
"$TERN" wait --node "$S" "$id"
"$TERN" logs --node "$S" "$id" > "$work/migrated.out"
tail -n 3 "$work/migrated.out"

echo
if cmp -s "$work/migrated.out" "$work/reference.out"; then
  echo "== output after server -> board -> server is byte-identical to the uninterrupted run ($(wc -c < "$work/reference.out") bytes)"
else
  echo "== MISMATCH between the migrated guest's output and the uninterrupted run" >&2
  diff "$work/reference.out" "$work/migrated.out" | head >&2
  exit 1
fi

echo
echo "== part 2: a controller that offloads by itself (docs/controller.md)"
echo "== a controller certificate; the controller serves and calls the nodes over mutual TLS too"
"$TERN" certs controller ctl --dir "$work/cluster" >/dev/null
start_ctl() {
  "$TERN" controller --listen 127.0.0.1:0 --data-dir "$work/ctl" --min-residence 2s --min-age 1s \
    --tls-dir "$work/cluster" --name ctl >/dev/null 2> "$work/ctl.log" &
  pids+=($!)
  for _ in $(seq 200); do
    grep -q controller_started "$work/ctl.log" 2>/dev/null && break
    sleep 0.05
  done
  ctl=https://$(sed -nE 's/.*"api":"([^"]+)".*/\1/p' "$work/ctl.log" | head -n1)
}
start_ctl
"$TERN" certs node server2 --dir "$work/cluster" >/dev/null
"$TERN" certs node board2 --dir "$work/cluster" >/dev/null
start_node server2 "$TERN" node --tls-dir "$work/cluster" --cpus 1 --join "$ctl"; S2=$api
start_node board2 qemu-aarch64 -L / "$BOARD_TERN" node --class board --cpus 1 --tls-dir "$work/cluster" --join "$ctl"
export TERN_CONTROLLER=$ctl
for _ in $(seq 100); do
  [ "$("$TERN" cluster --json | grep -c '"class"')" -ge 2 ] && break
  sleep 0.1
done
"$TERN" cluster
# Long enough (about 9 s alone on a server core) to outlast a move to the
# emulated board, which runs it about 4x slower.
LONG=(--mem 8 --iterations 3000000)
SHORT=(--mem 8 --iterations 300000)
"$TERN" run target/guests/dirtier.wasm -- "${LONG[@]}" > "$work/long.ref"
"$TERN" run target/guests/dirtier.wasm -- "${SHORT[@]}" > "$work/short.ref"
echo "== three jobs started straight on the one-core server (two long, one short), as without a controller"
on_server() { env -u TERN_CONTROLLER "$TERN" run --detach --node "$S2" target/guests/dirtier.wasm -- "$@"; }
j1=$(on_server "${LONG[@]}")
j2=$(on_server "${LONG[@]}")
j3=$(on_server "${SHORT[@]}")
echo "   guests $j1 $j2 (long) $j3 (short)"
echo "== the controller sees the server overloaded and moves guests by itself; waiting for the jobs (tern wait follows them)"
for j in "$j1" "$j2" "$j3"; do "$TERN" wait "$j" >/dev/null; done
# A move whose guest ended first is recorded as failed at the controller's
# next look at its source: let it settle before showing the moves.
for _ in $(seq 50); do
  "$TERN" cluster | grep -qE '^ +[0-9]+ +[0-9a-f]+ +[^ ]+ +[^ ]+ +[^ ]+ +(starting|running) ' || break
  sleep 0.2
done
"$TERN" cluster
for j in "$j1:long" "$j2:long" "$j3:short"; do
  id=${j%%:*}; kind=${j##*:}
  "$TERN" logs "$id" > "$work/$id.out"
  if ! cmp -s "$work/$id.out" "$work/$kind.ref"; then
    echo "== MISMATCH: guest $id's output differs from an uninterrupted run" >&2
    exit 1
  fi
done
moves=$("$TERN" cluster --json | grep -c '"reason"' || true)
returns=$("$TERN" cluster --json | grep -c '"reason": \?"return"' || true)
echo "== the controller made $moves moves by itself, $returns of them bringing a guest back (above: why); every guest's output is byte-identical to an uninterrupted run"
