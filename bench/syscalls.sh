#!/usr/bin/env bash
# System calls per request of Moongate and nginx proxying the anchors' W1
# (GET /plain/hello) and Moongate's W2 (1 of 100 routes + key-auth,
# request-id, a response header) to one nginx upstream: strace -c -f on the
# gateway process while REQUESTS requests run over 10 keep-alive connections.
# Counts, not times: they do not depend on what else the machine runs.
#
#   bench/syscalls.sh [path/to/gatewayd]      REQUESTS=10000 PORT_BASE=18690
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gatewayd=${1:-$here/../build/gatewayd}
REQUESTS=${REQUESTS:-10000}
UP_PORT=${PORT_BASE:-18690} GW_PORT=$(( ${PORT_BASE:-18690} + 1 )) NGX_PORT=$(( ${PORT_BASE:-18690} + 2 ))
for t in strace h2load nginx; do command -v $t >/dev/null || { echo "$t is missing"; exit 1; }; done
. "$here/lib.sh"
bench_scratch
anchor_configs "$dir" $UP_PORT $GW_PORT
pids+=("$(start_nginx "$dir" "$dir/upstream.conf" "http://127.0.0.1:$UP_PORT/")")
# the nginx peer as the shared harness runs it: proxy_pass to a keep-alive upstream block
nginx_peer_conf "$dir" $UP_PORT $NGX_PORT > "$dir/peer.conf"
ngx=$(start_nginx "$dir" "$dir/peer.conf" "http://127.0.0.1:$NGX_PORT/plain/hello"); pids+=("$ngx")
"$gatewayd" -c "$dir/gw.lua" -w 1 2>"$dir/gw.err" & gw=$!; pids+=($gw)
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$GW_PORT/plain/hello" && break; sleep 0.1; done

# count PID URL [h2load args]: system calls per request (all the process's threads), and the top ones
count() {
  local pid=$1 url=$2; shift 2
  h2load --h1 -n 5000 -c 10 "$@" "$url" >/dev/null # warm-up: pools, JIT
  strace -c -f -q -p "$pid" -o "$dir/strace.out" & local st=$!
  sleep 0.5
  h2load --h1 -n "$REQUESTS" -c 10 "$@" "$url" | grep -q "status codes: $REQUESTS 2xx" || { echo "$url: not every request got a 2xx"; exit 1; }
  sleep 0.3; kill -INT $st; wait $st 2>/dev/null || true
  awk -v n="$REQUESTS" '$NF == "total" {t = $(NF-2)} $1 ~ /^[0-9.]+$/ && $NF != "total" {c[$NF] = ($4 ~ /^[0-9]+$/) ? $4 : $(NF-1)}
    END { top = ""; for (s in c) if (c[s] / n >= 0.05) top = top sprintf("%s %.2f, ", s, c[s] / n);
          printf "%.2f | %s\n", t / n, substr(top, 1, length(top) - 2) }' "$dir/strace.out"
}
echo "## $(date -u +%Y-%m-%d): system calls per request (strace -c -f), $REQUESTS requests over 10 connections"
echo
echo "| gateway | workload | syscalls/request | of which (≥ 0.05/request) |"
echo "|---|---|---|---|"
echo "| nginx $(nginx -v 2>&1 | sed 's|.*/||') | W1 | $(count "$(pgrep -P "$ngx" | head -1)" "http://127.0.0.1:$NGX_PORT/plain/hello") |"
echo "| Moongate | W1 | $(count "$gw" "http://127.0.0.1:$GW_PORT/plain/hello") |"
echo "| Moongate | W2 | $(count "$gw" "http://127.0.0.1:$GW_PORT/api/v1/svc77/users/42" -H "apikey: key-0777") |"
