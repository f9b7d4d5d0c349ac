#!/usr/bin/env bash
# TLS benchmark: Moongate and nginx side by side, same certificate (ECDSA
# P-256), same response, both on CPU 0 with one worker, wrk on CPU 1.
#   W1-TLS      keep-alive requests over TLS (wrk -c50)
#   handshakes  a new connection, full handshake, per request (Connection: close)
#   upstream    plain HTTP in, proxied over TLS to an upstream (an nginx on
#               the load CPU), verified, pooled and kept alive
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
GW_PLAIN_PORT=18445
NGX_PLAIN_PORT=18446
UP_PORT=18447
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
listen "127.0.0.1:$GW_PLAIN_PORT"
upstream "tls_up" { targets = { "https://127.0.0.1:$UP_PORT" }, tls = { ca = "cert.pem", server_name = "localhost" } }
route { path = "/up/{rest*}", upstream = "tls_up" }
LUA
# nginx.conf for one nginx process: its name, then the http {} body on stdin
nginx_conf() {
  cat <<NGX
worker_processes 1;
daemon off;
pid $dir/$1.pid;
error_log $dir/$1.err;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir; uwsgi_temp_path $dir; scgi_temp_path $dir;
$(cat)
}
NGX
}
nginx_conf nginx > "$dir/nginx.conf" <<NGX
  server {
    listen 127.0.0.1:$NGX_PORT ssl;
    ssl_certificate $dir/cert.pem;
    ssl_certificate_key $dir/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location /hello { default_type text/plain; return 200 "hello"; }
  }
  upstream tls_up { server 127.0.0.1:$UP_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGX_PLAIN_PORT;
    location /up/ {
      proxy_pass https://tls_up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_ssl_verify on; proxy_ssl_trusted_certificate $dir/cert.pem; proxy_ssl_name localhost;
      proxy_ssl_server_name on; proxy_ssl_session_reuse on;
    }
  }
NGX
# the TLS upstream both proxy to, on the load CPU
nginx_conf upstream > "$dir/upstream.conf" <<NGX
  server {
    listen 127.0.0.1:$UP_PORT ssl;
    ssl_certificate $dir/cert.pem;
    ssl_certificate_key $dir/key.pem;
    location / { default_type text/plain; return 200 "hello"; }
  }
NGX

taskset -c 0 "$gatewayd" -c "$dir/gw.lua" -w 1 2>"$dir/gw.err" &
gw_pid=$!; pids+=("$gw_pid")
taskset -c 0 nginx -c "$dir/nginx.conf" &
ngx_master=$!; pids+=("$ngx_master")
taskset -c "${LOAD_CPU:-1}" nginx -c "$dir/upstream.conf" &
pids+=($!)
for _ in $(seq 50); do
  curl -sfk -o /dev/null "https://127.0.0.1:$GW_PORT/hello" && curl -sfk -o /dev/null "https://127.0.0.1:$NGX_PORT/hello" &&
    curl -sf -o /dev/null "http://127.0.0.1:$GW_PLAIN_PORT/up/hello" && curl -sf -o /dev/null "http://127.0.0.1:$NGX_PLAIN_PORT/up/hello" && break
  sleep 0.1
done
ngx_worker=$(pgrep -P "$ngx_master" | head -1)

CONNS=${CONNS:-50}
LOAD_CPU=${LOAD_CPU:-1}
. "$here/lib.sh"
printf '| workload | server | round | rps | p50 | p99 | server CPU µs/req | user | kernel |\n|---|---|---|---|---|---|---|---|---|\n'
run() { # name server pid port [extra wrk args...]
  local name=$1 server=$2 pid=$3 port=$4; shift 4
  measure "$name | $server" "$pid" "https://127.0.0.1:$port/hello" "$@"
}
run "W1-TLS keep-alive" moongate "$gw_pid" "$GW_PORT"
run "W1-TLS keep-alive" nginx "$ngx_worker" "$NGX_PORT"
run "handshake per request" moongate "$gw_pid" "$GW_PORT" -H "Connection: close"
run "handshake per request" nginx "$ngx_worker" "$NGX_PORT" -H "Connection: close"
measure "proxy to a TLS upstream | moongate" "$gw_pid" "http://127.0.0.1:$GW_PLAIN_PORT/up/hello"
measure "proxy to a TLS upstream | nginx" "$ngx_worker" "http://127.0.0.1:$NGX_PLAIN_PORT/up/hello"
