#!/usr/bin/env bash
# Isolation: with upstream A saturated (slow, all 20 permits held, its queue
# full), does upstream B on the same gateway keep its latency?
#
#   [ROUNDS=5] [DURATION=5] [B_CONNS=20] [CONTROL=1] bench/isolation.sh [path/to/gatewayd]
#   (needs nginx with ngx_lua: bash ../shared/bench/install.sh)
#
# One gatewayd worker on CPU 0; two nginx upstreams (A answers after 30-70 ms,
# B at once) and both wrk load generators on CPU 1. Rounds alternate B alone
# and B while 120 connections keep A saturated: 20 requests hold all of A's
# permits and 100 fill its queue (the rest would be rejected at once). The
# median p99 of B over the rounds is compared. A's delay is spread on purpose:
# a fixed delay makes A's answers land together, and that burst on the load
# generators' shared CPU, not the gateway, swamps B's p99 (CONTROL=1 measures
# exactly that). A flood of thousands of connections is a different test:
# then the gateway's CPU, not A's permits, is the shared resource.
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
  server { listen 127.0.0.1:18181; location / { content_by_lua_block { ngx.sleep(0.03 + math.random() * 0.04) ngx.print("slow\n") } } }
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

# B for DURATION seconds: "rps p50_us p99_us"
measure() {
  taskset -c 1 wrk -t1 -c"${B_CONNS:-20}" -d"${DURATION}s" --latency http://127.0.0.1:18196/b/x | awk '
    function us(v) { if (v ~ /ms$/) return v * 1000; if (v ~ /us$/) return v + 0; return v * 1000000 }
    /Requests\/sec/ {rps=$2} $1=="50%" {p50=us($2)} $1=="99%" {p99=us($2)}
    END {printf "%d %d %d", rps, p50, p99}'
}
show() { set -- $1; printf "%6d rps, p50 %4d us, p99 %5d us" "$1" "$2" "$3"; }

# Rounds alternate B alone and B with A saturated, so a drift of the
# machine (frequency, neighbours) hits both sides alike; medians compare.
ROUNDS=${ROUNDS:-5}
# CONTROL=1: A's load goes straight to A's nginx, not through the gateway:
# what the shared load-generator CPU alone does to B
a_url=http://127.0.0.1:18196/a/x
[ -n "${CONTROL:-}" ] && a_url=http://127.0.0.1:18181/x
: > "$work/alone"; : > "$work/busy"
for r in $(seq "$ROUNDS"); do
  m=$(measure); echo "$m" >> "$work/alone"; echo "round $r  B alone:            $(show "$m")"
  taskset -c 1 wrk -t1 -c"${A_CONNS:-120}" -d"$((DURATION + 3))s" "$a_url" > "$work/a.txt" &
  sleep 1.5
  m=$(measure); echo "$m" >> "$work/busy"; echo "round $r  B while A saturated: $(show "$m")"
  wait $!
  echo "          A meanwhile: $(awk '/Requests\/sec/ {print $2 " rps"}' "$work/a.txt"), non-2xx: $(awk '/Non-2xx/ {print $5}' "$work/a.txt")"
done
median() { sort -n -k"$2" "$1" | awk -v k="$2" '{v[NR]=$k} END {print v[int((NR+1)/2)]}'; }
a=$(median "$work/alone" 3); b=$(median "$work/busy" 3)
echo "median p99: B alone $a us, B while A saturated $b us: $(awk -v a="$a" -v b="$b" 'BEGIN {printf "%+.1f%%", (b - a) * 100 / a}')"
