#!/usr/bin/env bash
# Tern's demo: run a guest, stop it mid-run into an image, inspect the image,
# resume it in a new process, and check that the output equals an
# uninterrupted run. Sets up a fresh machine first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bin tern 2>&1 | grep -v "^\s*Compiling" >&2 || true
guests/build.sh target/guests >/dev/null
TERN=target/release/tern
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== uninterrupted run of the NAS EP-like kernel (ep 23)"
$TERN run target/guests/ep.wasm -- 23 > "$work/full.out"
tail -n 3 "$work/full.out"

echo
echo "== the same run, checkpointed after 400 ms"
$TERN run --checkpoint-after 400ms --image "$work/ep.tern" target/guests/ep.wasm -- 23 > "$work/part1.out"
echo "   ($(wc -l < "$work/part1.out") lines printed before the checkpoint)"

echo
echo "== tern inspect"
$TERN inspect "$work/ep.tern"

echo
echo "== resumed in a new process"
$TERN restore "$work/ep.tern" > "$work/part2.out"
tail -n 3 "$work/part2.out"

echo
if cat "$work/part1.out" "$work/part2.out" | cmp -s - "$work/full.out"; then
  echo "== run + restore output is byte-identical to the uninterrupted run ($(wc -c < "$work/full.out") bytes)"
else
  echo "== MISMATCH between run + restore and the uninterrupted run" >&2
  exit 1
fi
