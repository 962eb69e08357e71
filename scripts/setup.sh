#!/usr/bin/env bash
# Installs what Tern needs on a fresh Debian 12 machine (idempotent):
# clang + wasi-libc to build guests, binaryen (wasm-opt) for the Asyncify oracle the tests compare against, wabt,
# iproute2 for the network-namespace tests, etcd for the controller's tests (tern-etcd).
set -euo pipefail

need=()
command -v clang >/dev/null || need+=(clang)
command -v wasm-ld >/dev/null || command -v wasm-ld-14 >/dev/null || need+=(lld)
[ -d /usr/share/wasi-sysroot ] || [ -d /usr/lib/wasm32-wasi ] || need+=(wasi-libc)
ls /usr/lib/llvm-14/lib/clang/14.0.6/lib/wasi/libclang_rt.builtins-wasm32.a >/dev/null 2>&1 \
  || need+=(libclang-rt-14-dev-wasm32)
command -v wasm-opt >/dev/null || need+=(binaryen)
command -v wasm2wat >/dev/null || need+=(wabt)
command -v bc >/dev/null || need+=(bc)
# network namespaces, veth and tc for the migration tests over limited links
command -v ip >/dev/null && command -v tc >/dev/null || need+=(iproute2)
# etcd: the controller's store; tern-etcd's tests start a real one
command -v etcd >/dev/null || need+=(etcd-server)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo (Rust) is required" >&2; exit 1; }
