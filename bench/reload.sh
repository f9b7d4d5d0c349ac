#!/usr/bin/env bash
# Reload cost with 10,000 routes: how long `gatewayctl reload` takes, and the
# p99 of requests served while reloading continuously versus without.
#   bench/reload.sh [build dir]        ROUTES=10000 DURATION=5 WORKERS=1 ROUNDS=3 GAP=0
# GAP: seconds between the quiet reloads (0: back to back, each one sharing
# the core with freeing the generation before it; 0.6: each one alone).
set -euo pipefail
build=${1:-$(cd "$(dirname "$0")/.." && pwd)/build}
ROUTES=${ROUTES:-10000}
DURATION=${DURATION:-5}
WORKERS=${WORKERS:-1}
work=$(mktemp -d)
gw_pid=
cleanup() { [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
{
  echo 'listen "127.0.0.1:18296"'
  echo "admin_socket \"$work/admin.sock\""
  echo 'workers(1)'
  echo 'access_log "off"'
  echo 'local function h(ctx) return 200, "ok" end'
  for i in $(seq 0 $((ROUTES - 1))); do
    echo "route { method = \"GET\", path = \"/svc$i/items/{id:[0-9]+}\", handler = h }"
  done
} > "$work/gw.lua"
${GW_TASKSET:-taskset -c 0} "$build/gatewayd" -c "$work/gw.lua" -w "$WORKERS" 2>"$work/err" & gw_pid=$!
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18296/svc1/items/1 && break; sleep 0.1; done
ctl() { "$build/gatewayctl" -s "$work/admin.sock" "$@"; }
# each reload's wall clock until gatewayctl returns (every worker has switched), 5 quiet ones
times=()
for _ in 1 2 3 4 5; do
  start=$(date +%s%N); ctl reload >/dev/null; end=$(date +%s%N)
  times+=($(( (end - start) / 1000000 )))
  sleep "${GAP:-0}"
done
echo "reload of $ROUTES routes, $WORKERS worker(s): ${times[*]} ms (gatewayctl reload, wall clock)"
measure() { taskset -c 1 wrk -t1 -c20 -d"${DURATION}s" --latency "http://127.0.0.1:18296/svc$((ROUTES / 2))/items/7" \
  | awk '/Requests\/sec/ {rps=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} /Non-2xx|Socket errors/ {bad=$0} END {printf "%s rps, p50 %s, p99 %s %s", rps, p50, p99, bad}'; }
measure >/dev/null # warm-up: the first run after start pays for the JIT's first traces
# rounds alternate: without reloads, then while reloading back to back
for r in $(seq "${ROUNDS:-3}"); do
  echo "round $r without reloads: $(measure)"
  ( end_at=$(( $(date +%s) + DURATION )); n=0; while [ "$(date +%s)" -lt "$end_at" ]; do ctl reload >/dev/null; n=$((n + 1)); done; echo "$n" > "$work/n" ) &
  echo "round $r while reloading: $(measure)"
  wait $!
  echo "round $r reloads during that run: $(cat "$work/n")"
done
