#!/usr/bin/env bash
# Sets up a fresh machine and runs every check CI runs: format, lints, tests
# (the cross-ISA ones against tern built for aarch64, run under qemu-user).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "test.sh: $(df -h --output=avail . | tail -1 | tr -d ' ') free on this disk" >&2
# A build from a clean clone gains nothing from incremental state; in CI it
# only costs disk (several GB across the test binaries).
if [ "${CI:-}" = "true" ]; then export CARGO_INCREMENTAL=0; fi
# Each step's time goes to stderr, to see where CI's minutes go.
step() {
  local t0=$SECONDS
  "$@"
  echo "test.sh: '$*' took $((SECONDS - t0)) s" >&2
}
step scripts/setup.sh
step cargo fmt --all -- --check
step cargo clippy --workspace --all-targets -- -D warnings
# The tests run the debug build (the test profile optimizes dependencies and
# the migration crates); no separate release build of x86_64 is needed here.
# The cross-ISA tests run this aarch64 build under qemu-aarch64.
step scripts/build-aarch64.sh >/dev/null
step cargo test --workspace
# Disk used, for the next time a machine runs short of it.
echo "test.sh: target/ holds $(du -sh target 2>/dev/null | cut -f1); $(df -h --output=avail . | tail -1 | tr -d ' ') free" >&2
