#!/usr/bin/env bash
# Sets up a fresh machine and runs every check CI runs: format, lints, tests
# (the cross-ISA ones against tern built for aarch64, run under qemu-user).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --release --bin tern
# The cross-ISA tests run this aarch64 build under qemu-aarch64.
scripts/build-aarch64.sh >/dev/null
cargo test --workspace
