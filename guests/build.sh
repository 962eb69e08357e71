#!/bin/sh
# Build the Tern test/benchmark guests (C -> wasm32-wasi preview1).
#
# Usage: guests/build.sh [OUTDIR]
#   OUTDIR defaults to target/guests at the workspace root.
# Environment:
#   CC      compiler (default: clang)
#   CFLAGS  extra flags appended after the defaults
#
# Needs clang with the wasm32 backend, lld (wasm-ld), the WASI sysroot and
# the wasm32 compiler-rt builtins; on Debian/Ubuntu:
#   apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
out=${1:-"$root/target/guests"}
cc=${CC:-clang}
flags="--target=wasm32-wasi -O2 -Wall -Wextra"
guests="hello ep dirtier filerw clock recurse dispatch hog openloop"
pkgs="clang lld wasi-libc libclang-rt-14-dev-wasm32"

die() {
    echo "build.sh: error: $*" >&2
    exit 1
}

command -v "$cc" >/dev/null 2>&1 ||
    die "'$cc' not found; install the packages: $pkgs"

mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# Probe the toolchain with a tiny program so that a missing sysroot,
# linker or builtins library gives one clear message, not a wall of errors.
printf '#include <stdio.h>\nint main(void){puts("ok");return 0;}\n' >"$tmp/probe.c"
# shellcheck disable=SC2086
if ! "$cc" $flags ${CFLAGS:-} "$tmp/probe.c" -o "$tmp/probe.wasm" 2>"$tmp/probe.err"; then
    if grep -q "stdio.h" "$tmp/probe.err"; then
        what="the WASI sysroot (headers/libc) is missing"
    elif grep -q "clang_rt" "$tmp/probe.err"; then
        what="the wasm32 compiler-rt builtins library is missing"
    elif grep -qi "unable to execute\|wasm-ld.*\(not found\|exist\)" "$tmp/probe.err"; then
        what="the wasm linker (wasm-ld from lld) is missing"
    else
        what="'$cc' cannot build wasm32-wasi programs"
    fi
    sed 's/^/    /' "$tmp/probe.err" >&2
    die "$what; install the packages: $pkgs"
fi

for g in $guests; do
    echo "  CC  $g.wasm"
    # shellcheck disable=SC2086
    "$cc" $flags ${CFLAGS:-} "$here/$g.c" -o "$out/$g.wasm" ||
        die "failed to build $g.wasm"
done
echo "built $(echo $guests | wc -w) guests in $out"
