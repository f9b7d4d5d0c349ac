#!/usr/bin/env bash
# Isolation: with upstream A saturated (slow, all 20 permits held, its queue
# full), does upstream B on the same gateway keep its latency?
#
#   bench/isolation.sh [path/to/gatewayd]       (needs nginx with ngx_lua: bash ../shared/bench/install.sh)
#
# One gatewayd worker on CPU 0; two nginx upstreams (A answers after 50 ms,
# B at once) and both wrk load generators on CPU 1. B is measured alone, then
# while 120 connections keep A saturated: 20 requests hold all of A's permits
# and 100 fill its queue (the rest would be rejected at once). The p99 of B is
# compared. (A flood of thousands of connections is a different test: then
# the gateway's CPU, not A's permits, is the shared resource.)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gatewayd=${1:-$here/../build/gatewayd}
DURATION=${DURATION:-5}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/logs" "$work/tmp"
cat > "$work/nginx.conf" <<NGINX
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off; client_body_temp_path $work/tmp; keepalive_requests 1000000;
  server { listen 127.0.0.1:18181; location / { content_by_lua_block { ngx.sleep(0.05) ngx.print("slow\n") } } }
  server { listen 127.0.0.1:18182; location / { return 200 "fast\n"; } }
}
NGINX
cat > "$work/gw.lua" <<LUA
listen "127.0.0.1:18196"
workers(1)
access_log "off"
upstream "A" { targets = { "127.0.0.1:18181" }, max_concurrency = 20,
               on_busy = { queue = 100, queue_timeout = "200ms" } }
upstream "B" { targets = { "127.0.0.1:18182" } }
route { path = "/a/{rest*}", upstream = "A" }
route { path = "/b/{rest*}", upstream = "B" }
LUA
taskset -c 1 nginx -p "$work" -c "$work/nginx.conf" & pids+=($!)
taskset -c 0 "$gatewayd" -c "$work/gw.lua" -w 1 2>"$work/logs/gw.err" & pids+=($!)
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18196/b/x && break; sleep 0.1; done

measure() { taskset -c 1 wrk -t1 -c20 -d"${DURATION}s" --latency http://127.0.0.1:18196/b/x | awk '/Requests\/sec/ {rps=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} END {printf "%s rps, p50 %s, p99 %s", rps, p50, p99}'; }

echo "B alone:          $(measure)"
taskset -c 1 wrk -t1 -c"${A_CONNS:-120}" -d"$((DURATION + 4))s" http://127.0.0.1:18196/a/x > "$work/a.txt" &
sleep 2
echo "B while A is saturated: $(measure)"
wait $!
echo "A meanwhile: $(awk '/Requests\/sec/ {print $2 " rps"}' "$work/a.txt"), non-2xx: $(awk '/Non-2xx/ {print $5}' "$work/a.txt")"
