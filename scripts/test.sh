#!/usr/bin/env bash
# Sets up a fresh machine and runs every check CI runs: format, lints, tests
# (the cross-ISA ones against tern built for aarch64, run under qemu-user).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "test.sh: $(df -h --output=avail . | tail -1 | tr -d ' ') free on this disk" >&2
scripts/setup.sh
# A build from a clean clone gains nothing from incremental state; in CI it
# only costs disk (several GB across the test binaries).
if [ "${CI:-}" = "true" ]; then export CARGO_INCREMENTAL=0; fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --release --bin tern
# The cross-ISA tests run this aarch64 build under qemu-aarch64.
scripts/build-aarch64.sh >/dev/null
cargo test --workspace
# Disk used, for the next time a machine runs short of it.
echo "test.sh: target/ holds $(du -sh target 2>/dev/null | cut -f1); $(df -h --output=avail . | tail -1 | tr -d ' ') free" >&2
