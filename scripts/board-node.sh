#!/usr/bin/env bash
# Starts a board node: tern built for aarch64 (scripts/build-aarch64.sh),
# run under qemu-aarch64, which stands in for a slow, low-power ARM board.
# Arguments are passed to `tern node`; --class board is the default.
#
#   scripts/board-node.sh --listen 127.0.0.1:7080 --data-dir /tmp/board
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/aarch64/aarch64-unknown-linux-gnu/release/tern
[ -x "$bin" ] || scripts/build-aarch64.sh >/dev/null
case " $* " in *" --class "*) class=() ;; *) class=(--class board) ;; esac
# The aarch64 libc comes from Debian's multiarch libc6:arm64 (installed with
# the cross toolchain), so the loader must come from there too: `-L /`.
# /usr/aarch64-linux-gnu holds an older cross glibc whose ld.so does not
# match that libc; mixing the two makes pthread_create spin forever.
exec qemu-aarch64 -L / "$bin" node "${class[@]}" "$@"
