#!/usr/bin/env bash
# Sets up a fresh machine and runs every check CI runs: format, lints, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --release --bin tern
cargo test --workspace
