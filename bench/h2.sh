#!/usr/bin/env bash
# HTTP/2 benchmark: Moongate, nginx (http2) and HAProxy (h2) side by side, in
# one run, each terminating HTTP/2 on CPU 0 with one worker/thread and
# proxying to the same HTTP/1.1 upstream (an nginx on the load CPU, keepalive).
# h2load (nghttp2-client) drives them from the load CPU:
#   h2 TLS   10 connections x 100 concurrent streams, ALPN h2
#   h2c      10 connections x 100 concurrent streams, prior knowledge
# Reports rps, p50/p99 of request time (from h2load's per-request log) and
# the server's CPU µs per request (utime+stime from /proc: the comparable
# figure on 2 cores), split into user and kernel time.
#
#   bench/h2.sh [path/to/gatewayd]      REQUESTS=200000 ROUNDS=3 to tune
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gatewayd=${1:-$here/../build/gatewayd}
REQUESTS=${REQUESTS:-100000}
ROUNDS=${ROUNDS:-3}
LOAD_CPU=${LOAD_CPU:-1}
UP_PORT=18460
declare -A TLS_PORT=([moongate]=18461 [nginx]=18462 [haproxy]=18463)
declare -A H2C_PORT=([moongate]=18464 [nginx]=18465 [haproxy]=18466)
for tool in h2load nginx haproxy openssl; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install nghttp2-client nginx haproxy)"; exit 1; }
done
dir=$(mktemp -d /tmp/moongate-h2-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
cat "$dir/cert.pem" "$dir/key.pem" > "$dir/both.pem"

cat > "$dir/gw.lua" <<LUA
listen { "127.0.0.1:${TLS_PORT[moongate]}", tls = { cert = "cert.pem", key = "key.pem" } }
listen { "127.0.0.1:${H2C_PORT[moongate]}", http2 = true }
access_log "off"
admin_socket "off"
upstream "up" { targets = { "127.0.0.1:$UP_PORT" }, pool = { max_idle = 1024 } }
route { path = "/{rest*}", upstream = "up" }
LUA
cat > "$dir/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $dir/nginx.pid; error_log $dir/nginx.err;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir; uwsgi_temp_path $dir; scgi_temp_path $dir;
  upstream up { server 127.0.0.1:$UP_PORT; keepalive 1024; }
  server {
    listen 127.0.0.1:${TLS_PORT[nginx]} ssl http2;
    listen 127.0.0.1:${H2C_PORT[nginx]} http2;
    ssl_certificate $dir/cert.pem; ssl_certificate_key $dir/key.pem; ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGX
cat > "$dir/haproxy.cfg" <<HAP
global
  nbthread 1
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse safe
frontend tls
  bind 127.0.0.1:${TLS_PORT[haproxy]} ssl crt $dir/both.pem alpn h2,http/1.1
  default_backend up
frontend h2c
  bind 127.0.0.1:${H2C_PORT[haproxy]} proto h2
  default_backend up
backend up
  server up1 127.0.0.1:$UP_PORT maxconn 1000
HAP
cat > "$dir/upstream.conf" <<NGX
worker_processes 1; daemon off; pid $dir/up.pid; error_log $dir/up.err;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir; uwsgi_temp_path $dir; scgi_temp_path $dir;
  server { listen 127.0.0.1:$UP_PORT; location / { default_type text/plain; return 200 "hello world\n"; } }
}
NGX

taskset -c "$LOAD_CPU" nginx -c "$dir/upstream.conf" & pids+=($!)
taskset -c 0 "$gatewayd" -c "$dir/gw.lua" -w 1 2>"$dir/gw.err" & gw_pid=$!; pids+=("$gw_pid")
taskset -c 0 nginx -c "$dir/nginx.conf" & ngx_master=$!; pids+=("$ngx_master")
taskset -c 0 haproxy -db -f "$dir/haproxy.cfg" & hap_pid=$!; pids+=("$hap_pid")
for _ in $(seq 50); do
  ok=1
  for s in moongate nginx haproxy; do
    curl -sfk --http2 -o /dev/null "https://127.0.0.1:${TLS_PORT[$s]}/x" || ok=0
    curl -sf --http2-prior-knowledge -o /dev/null "http://127.0.0.1:${H2C_PORT[$s]}/x" || ok=0
  done
  [ $ok = 1 ] && break
  sleep 0.1
done
ngx_worker=$(pgrep -P "$ngx_master" | head -1)
declare -A PID=([moongate]=$gw_pid [nginx]=$ngx_worker [haproxy]=$hap_pid)

. "$here/lib.sh"
h2run() { # label server url
  measure_h2 "$1 | $2" "${PID[$2]}" "$3"
}
printf '| workload | server | round | rps | p50 | p99 | CPU µs/req | user | kernel |\n|---|---|---|---|---|---|---|---|---|\n'
for s in moongate nginx haproxy; do h2run "h2 TLS 10x100" "$s" "https://127.0.0.1:${TLS_PORT[$s]}/x"; done
for s in moongate nginx haproxy; do h2run "h2c 10x100" "$s" "http://127.0.0.1:${H2C_PORT[$s]}/x"; done
