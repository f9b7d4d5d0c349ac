#!/usr/bin/env bash
# Moongate's own loopback benchmark: wrk against gatewayd serving bench/gateway.lua.
# The gateway runs on CPU 0 with one worker, wrk on CPU 1 (1 thread, 50
# connections, keep-alive). Reports rps, latency percentiles and the gateway's
# CPU time per request (utime+stime from /proc, the comparable figure on 2 cores),
# split into user and kernel time.
#
#   bench/run.sh [path/to/gatewayd]      DURATION=10 ROUNDS=3 CONNS=50 to tune
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gatewayd=${1:-$here/../build/gatewayd}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
GW_CPU=${GW_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORT=18096
URLS=("/hello" "/users/42" "/nope")
NAMES=("Lua handler (static route)" "Lua handler (regex param route)" "404 (no route)")

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk"; exit 1; }
taskset -c "$GW_CPU" "$gatewayd" -c "$here/gateway.lua" -w 1 2>/tmp/moongate-bench.err &
gw_pid=$!
trap 'kill "$gw_pid" 2>/dev/null; wait "$gw_pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  curl -s -o /dev/null "http://127.0.0.1:$PORT/hello" && break
  sleep 0.1
done

. "$here/lib.sh"
printf '| workload | round | rps | p50 | p99 | gateway CPU µs/req | user | kernel |\n|---|---|---|---|---|---|---|---|\n'
for i in "${!URLS[@]}"; do
  measure "${NAMES[$i]}" "$gw_pid" "http://127.0.0.1:$PORT${URLS[$i]}"
done
