#!/usr/bin/env bash
# TLS benchmark: Moongate and nginx side by side, same certificate (ECDSA
# P-256), same response, both on CPU 0 with one worker, wrk on CPU 1.
#   W1-TLS      keep-alive requests over TLS (wrk -c50)
#   handshakes  a new connection, full handshake, per request (Connection: close)
# Reports rps and the server's CPU µs per request (utime+stime from /proc).
#
#   bench/tls.sh [path/to/gatewayd]      DURATION=10 ROUNDS=3 to tune
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gatewayd=${1:-$here/../build/gatewayd}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-2}
GW_PORT=18443
NGX_PORT=18444
for tool in wrk nginx openssl; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install $tool)"; exit 1; }
done
dir=$(mktemp -d /tmp/moongate-tls-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null

cat > "$dir/gw.lua" <<LUA
listen { "127.0.0.1:$GW_PORT", tls = { cert = "cert.pem", key = "key.pem" } }
access_log "off"
admin_socket "off"
route { path = "/hello", handler = function() return 200, "hello" end }
LUA
cat > "$dir/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir; uwsgi_temp_path $dir; scgi_temp_path $dir;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$NGX_PORT ssl;
    ssl_certificate $dir/cert.pem;
    ssl_certificate_key $dir/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location /hello { default_type text/plain; return 200 "hello"; }
  }
}
NGX

taskset -c 0 "$gatewayd" -c "$dir/gw.lua" -w 1 2>"$dir/gw.err" &
gw_pid=$!; pids+=("$gw_pid")
taskset -c 0 nginx -c "$dir/nginx.conf" &
ngx_master=$!; pids+=("$ngx_master")
for _ in $(seq 50); do
  curl -sk -o /dev/null "https://127.0.0.1:$GW_PORT/hello" && curl -sk -o /dev/null "https://127.0.0.1:$NGX_PORT/hello" && break
  sleep 0.1
done
ngx_worker=$(pgrep -P "$ngx_master" | head -1)

CONNS=${CONNS:-50}
LOAD_CPU=${LOAD_CPU:-1}
. "$here/lib.sh"
printf '| workload | server | round | rps | p50 | p99 | server CPU µs/req |\n|---|---|---|---|---|---|---|\n'
run() { # name server pid port [extra wrk args...]
  local name=$1 server=$2 pid=$3 port=$4; shift 4
  measure "$name | $server" "$pid" "https://127.0.0.1:$port/hello" "$@"
}
run "W1-TLS keep-alive" moongate "$gw_pid" "$GW_PORT"
run "W1-TLS keep-alive" nginx "$ngx_worker" "$NGX_PORT"
run "handshake per request" moongate "$gw_pid" "$GW_PORT" -H "Connection: close"
run "handshake per request" nginx "$ngx_worker" "$NGX_PORT" -H "Connection: close"
