# Shared by the benchmark scripts (sourced, not run): sets up the machine,
# builds tern and the guests, and defines the timing helpers.
#
#   TERN  x86_64 tern            G     built guests
#   OUT   bench/results (or $OUT) work  a scratch directory, removed on exit
#   pids  background processes killed on exit (add with pids+=($!))
#
# Compile and prepare caches go to target/bench-cache, so benchmark runs do
# not disturb (or get help from) the user's own cache.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo build --release --bin tern >&2
guests/build.sh target/guests >/dev/null
TERN=$PWD/target/release/tern
G=$PWD/target/guests
OUT=${OUT:-$PWD/bench/results}
mkdir -p "$OUT"
export TERN_CACHE_DIR=$PWD/target/bench-cache
work=$(mktemp -d)
pids=()
bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap bench_cleanup EXIT
REPS=${REPS:-3}

now() { date +%s.%N; }
# median of the arguments
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# wall seconds of one command (stdout discarded)
wall() { local t0 t1; t0=$(now); "$@" >/dev/null; t1=$(now); echo "$t1 - $t0" | bc -l; }

# fetch_package DIR SRC: fetches a package once (SRC is pip:PKG==VERSION or
# npm:PKG@VERSION) and unpacks it into DIR/pkg.
fetch_package() {
  local dir src=$2
  dir=$(realpath -m "$1")
  [ -f "$dir/.unpacked" ] && return 0
  echo "bench: fetching ${src#*:}" >&2
  rm -rf "$dir"; mkdir -p "$dir/dl" "$dir/pkg"
  case $src in
    pip:*) python3 -m pip download -q --no-deps --dest "$dir/dl" "${src#pip:}" >&2
           (cd "$dir/pkg" && python3 -m zipfile -e "$dir"/dl/*.whl .) ;;
    npm:*) (cd "$dir/dl" && npm pack -q "${src#npm:}" >/dev/null)
           tar -xzf "$dir"/dl/*.tgz -C "$dir/pkg" ;;
  esac
  touch "$dir/.unpacked"
}
