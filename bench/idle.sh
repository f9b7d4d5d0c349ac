#!/usr/bin/env bash
# Idle keep-alive connections: user-space memory per connection. N clients
# each make one request and then hold their connection idle; the server's RSS
# before and with them gives bytes per connection (the kernel's socket buffers
# are not in RSS and are the same for every server). Moongate, nginx and
# HAProxy in one run, each with one worker/thread on CPU 0.
#
#   bench/idle.sh [path/to/gatewayd]        NS="10000 19000" HOLD=3
# N is bounded by the open-files limit (one descriptor per connection on each
# side): by default 10,000 and as many as the hard limit allows.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gatewayd=${1:-$here/../build/gatewayd}
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] && hard=1048576
ulimit -n "$hard"
fit=$(( hard - 200 ))
NS=${NS:-"10000 $fit"}
HOLD=${HOLD:-3}
GW_CPU=${GW_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
declare -A PORT=([moongate]=18591 [nginx]=18592 [haproxy]=18593)

dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] && cat "$dir"/*.err "$dir"/*.out >&2; rm -rf "$dir"; }
trap cleanup EXIT

cat > "$dir/gw.lua" <<LUA
listen "127.0.0.1:${PORT[moongate]}"
workers(1)
access_log "off"
timeouts { keepalive = "10m" }
route { method = "GET", path = "/hello", handler = function() return 200, "hello world\n" end }
LUA
cat > "$dir/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $dir/nginx.pid; error_log $dir/nginx.err; worker_rlimit_nofile $hard;
events { worker_connections $hard; }
http {
  access_log off; keepalive_timeout 600s; keepalive_requests 1000000;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir; uwsgi_temp_path $dir; scgi_temp_path $dir;
  server { listen 127.0.0.1:${PORT[nginx]}; location /hello { return 200 "hello world\n"; } }
}
NGX
# HAProxy reserves two descriptors per connection (one for a server side) and refuses to start with fewer
hap_max=$(( (hard - 200) / 2 ))
cat > "$dir/haproxy.cfg" <<HAP
global
  nbthread 1
  maxconn $hap_max
defaults
  mode http
  timeout client 600s
  timeout http-keep-alive 600s
  timeout connect 5s
  timeout server 5s
frontend f
  bind 127.0.0.1:${PORT[haproxy]}
  maxconn $hap_max
  http-request return status 200 content-type text/plain string "hello world\n"
HAP

servers=(moongate)
command -v nginx >/dev/null && servers+=(nginx) || echo "nginx is missing: not measured" >&2
command -v haproxy >/dev/null && servers+=(haproxy) || echo "haproxy is missing: not measured" >&2

# start SERVER: sets pid (the process to stop) and mpid (the one whose memory counts)
start() {
  case $1 in
    moongate) taskset -c "$GW_CPU" "$gatewayd" -c "$dir/gw.lua" 2>"$dir/gw.err" & ;;
    nginx) taskset -c "$GW_CPU" nginx -p "$dir" -c "$dir/nginx.conf" 2>"$dir/nginx.out" & ;;
    haproxy) taskset -c "$GW_CPU" haproxy -db -f "$dir/haproxy.cfg" 2>"$dir/haproxy.err" & ;;
  esac
  pid=$!; pids+=("$pid"); mpid=$pid
  if [ "$1" = nginx ]; then # the worker holds the connections
    mpid=""
    for _ in $(seq 50); do mpid=$(pgrep -P "$pid" | head -1 || true); [ -n "$mpid" ] && break; sleep 0.1; done
  fi
}
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

echo "## $(date -u +%Y-%m-%d): idle keep-alive connections, one request each, held ${HOLD}s"
echo
echo "| server | connections | RSS before (KiB) | RSS with them (KiB) | bytes per connection | still open |"
echo "|---|---|---|---|---|---|"
run=0
for s in "${servers[@]}"; do
  for n in $NS; do
    [ "$s" = haproxy ] && [ "$n" -gt "$hap_max" ] && n=$(( hap_max - 100 )) # what this descriptor limit allows it
    start "$s"
    for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:${PORT[$s]}/hello" && break; sleep 0.1; done
    for _ in $(seq 200); do curl -sf -o /dev/null "http://127.0.0.1:${PORT[$s]}/hello" || { echo "$s does not answer" >&2; exit 1; }; done # warm-up
    before=$(rss "$mpid")
    out="$dir/idle-$s-$n.out"
    run=$((run + 1))
    taskset -c "$LOAD_CPU" python3 "$here/idleclient.py" "${PORT[$s]}" /hello "$n" "$HOLD" "$run" > "$out" &
    client=$!
    for _ in $(seq 1200); do grep -q '^open' "$out" && break; kill -0 "$client" 2>/dev/null || break; sleep 0.1; done
    grep -q '^open' "$out" || { echo "$s: the client failed with $n connections" >&2; exit 1; }
    sleep 0.5
    with=$(rss "$mpid")
    wait "$client"
    alive=$(awk '/^alive/ {print $2}' "$out")
    printf '| %s | %d | %d | %d | %d | %s |\n' "$s" "$n" "$before" "$with" $(( (with - before) * 1024 / n )) "$alive"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    sleep 0.3
  done
done
