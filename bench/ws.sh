#!/usr/bin/env bash
# WebSocket benchmark: Moongate and nginx proxying WebSocket to the same echo
# upstream (bench/wsbench.c server), in one run:
#   1. N idle tunnels (default 10,000): user-space memory per tunnel, from the
#      proxy's RSS before and after they opened (nginx: its worker process);
#   2. small-message echo through CONNS tunnels for DURATION s: messages/s and
#      the proxy's CPU time per message (utime+stime from /proc).
# Both proxies run one worker pinned to CPU 0; the upstream and the clients
# share CPU 1 (LOAD_CPU).
#
#   bench/ws.sh [path/to/gatewayd]     N=10000 CONNS=50 DURATION=10 SIZE=16 ROUNDS=2
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gatewayd=${1:-$here/../build/gatewayd}
# 10,000 idle tunnels, unless the open-files limit says fewer: each takes 2 sockets in the proxy
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] && hard=1048576
ulimit -n "$hard"
fit=$(( (hard - 100) / 2 ))
N=${N:-$(( fit < 10000 ? fit : 10000 ))}
CONNS=${CONNS:-50}
DURATION=${DURATION:-10}
SIZE=${SIZE:-16}
ROUNDS=${ROUNDS:-2}
LOAD_CPU=${LOAD_CPU:-1}
UP_PORT=18581
declare -A PORT=([moongate]=18582 [nginx]=18583)
command -v nginx >/dev/null || { echo "nginx is missing (apt-get install nginx)"; exit 1; }

dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

cc -O2 -o "$dir/wsbench" "$here/wsbench.c" "$here/../src/mg_ws.c" -I"$here/../src" -lcrypto

cat > "$dir/gw.lua" <<LUA
listen "127.0.0.1:${PORT[moongate]}"
workers(1)
access_log "off"
timeouts { tunnel = "10m" }
upstream "up" { targets = { "127.0.0.1:$UP_PORT" } }
route { path = "/{rest*}", upstream = "up" }
LUA
cat > "$dir/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $dir/nginx.pid; error_log $dir/nginx.err; worker_rlimit_nofile 65536;
events { worker_connections 30000; }
http {
  access_log off;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir; uwsgi_temp_path $dir; scgi_temp_path $dir;
  server {
    listen 127.0.0.1:${PORT[nginx]};
    location / {
      proxy_pass http://127.0.0.1:$UP_PORT;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 600s; proxy_send_timeout 600s;
    }
  }
}
NGX

taskset -c "$LOAD_CPU" "$dir/wsbench" server "$UP_PORT" > "$dir/up.out" & pids+=($!)
taskset -c 0 "$gatewayd" -c "$dir/gw.lua" -w 1 2>"$dir/gw.err" & gw_pid=$!; pids+=("$gw_pid")
taskset -c 0 nginx -c "$dir/nginx.conf" & ngx_master=$!; pids+=("$ngx_master")
sleep 1
ngx_worker=$(pgrep -P "$ngx_master" | head -1)
declare -A PID=([moongate]=$gw_pid [nginx]=$ngx_worker)
hz=$(getconf CLK_TCK)
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

echo "## $(date -u +%Y-%m-%d), N=$N idle tunnels, echo: CONNS=$CONNS DURATION=${DURATION}s SIZE=$SIZE bytes"
echo
echo "| proxy | idle tunnels | RSS before (KiB) | RSS with them (KiB) | user-space bytes per tunnel |"
echo "|---|---|---|---|---|"
for s in moongate nginx; do
  pid=${PID[$s]}
  before=$(rss "$pid")
  fifo="$dir/idle-$s.out"
  taskset -c "$LOAD_CPU" "$dir/wsbench" idle "${PORT[$s]}" /idle "$N" 8 > "$fifo" &
  client=$!
  for _ in $(seq 600); do grep -q '^open' "$fifo" && break; sleep 0.1; done
  sleep 1
  with=$(rss "$pid")
  open=$(awk '/^open/ {print $2}' "$fifo")
  per=$(awk -v a="$before" -v b="$with" -v n="$open" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')
  echo "| $s | $open | $before | $with | $per |"
  wait "$client" || true
  sleep 1
done
echo
echo "| proxy | round | messages/s | proxy CPU µs/message |"
echo "|---|---|---|---|"
for s in moongate nginx; do
  pid=${PID[$s]}
  taskset -c "$LOAD_CPU" "$dir/wsbench" echo "${PORT[$s]}" /echo "$CONNS" 2 "$SIZE" > /dev/null # warm-up
  for r in $(seq "$ROUNDS"); do
    t0=$(cpu "$pid")
    out=$(taskset -c "$LOAD_CPU" "$dir/wsbench" echo "${PORT[$s]}" /echo "$CONNS" "$DURATION" "$SIZE")
    t1=$(cpu "$pid")
    msgs=$(echo "$out" | awk '{print $2}')
    rate=$(echo "$out" | awk '{print $6}')
    us=$(awk -v t="$((t1 - t0))" -v hz="$hz" -v n="$msgs" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
    echo "| $s | $r | $rate | $us |"
  done
done
