#!/usr/bin/env bash
# Builds tern for aarch64-unknown-linux-gnu on an x86_64 Debian machine
# (installs what it needs), into target/aarch64/. On a real ARM board, build
# with plain `cargo build --release` there instead.
#
# rustup here has only the x86_64 target, so the cross build uses Debian's
# rustc (rustc-web, which ships the aarch64 standard library) driven by
# rustup's cargo through RUSTC, in a target directory of its own so the two
# compilers do not keep invalidating each other's build scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# libc6:arm64 provides the loader and libc the binary runs with under
# qemu-aarch64 (-L /); it also comes with libstd-rust-web-dev:arm64.
if ! dpkg -s libstd-rust-web-dev:arm64 libc6:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null 2>&1; then
  echo "build-aarch64: installing the aarch64 cross toolchain and qemu-user" >&2
  $SUDO dpkg --add-architecture arm64
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rustc-web libstd-rust-web-dev:arm64 \
    libc6:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null
fi
RUSTC=/usr/bin/rustc \
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
  cargo build --release --bin tern --target aarch64-unknown-linux-gnu --target-dir target/aarch64 >&2
echo "target/aarch64/aarch64-unknown-linux-gnu/release/tern"
