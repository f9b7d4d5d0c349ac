#!/usr/bin/env bash
# gRPC benchmark: Moongate, nginx (grpc_pass) and HAProxy (h2 both sides)
# in one run, each on CPU 0 with one worker/thread, proxying unary gRPC calls
# to the same HTTP/2 upstream (an nginx on the load CPU answering like a gRPC
# server: 200, a 7-byte message, trailer grpc-status: 0). h2load drives them
# from the load CPU with a gRPC frame as the body (content-type
# application/grpc, te: trailers), 10 connections x 100 concurrent streams:
#   grpc h2c->h2c    cleartext on both sides
#   grpc h2->h2      TLS on both sides (ALPN h2)
# Reports rps, p50/p99, the server's CPU µs per call (user/kernel) and the
# upstream connections it holds open after the rounds.
#
#   bench/grpc.sh [path/to/gatewayd]      REQUESTS=200000 ROUNDS=3 to tune
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gatewayd=${1:-$here/../build/gatewayd}
REQUESTS=${REQUESTS:-100000}
ROUNDS=${ROUNDS:-3}
LOAD_CPU=${LOAD_CPU:-1}
UP_H2C=18470; UP_H2=18471
declare -A H2C_PORT=([moongate]=18473 [nginx]=18474 [haproxy]=18475)
declare -A TLS_PORT=([moongate]=18476 [nginx]=18477 [haproxy]=18478)
for tool in h2load nginx haproxy openssl; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install nghttp2-client nginx haproxy)"; exit 1; }
done
dir=$(mktemp -d /tmp/moongate-grpc-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
cat "$dir/cert.pem" "$dir/key.pem" > "$dir/both.pem"
printf '\x00\x00\x00\x00\x07request' > "$dir/call.bin" # one gRPC message: not compressed, 7 bytes

temp_paths="client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir; uwsgi_temp_path $dir; scgi_temp_path $dir;"
cat > "$dir/upstream.conf" <<NGX
worker_processes 1; daemon off; pid $dir/up.pid; error_log $dir/up.err;
events { worker_connections 8192; }
http {
  access_log off; keepalive_requests 10000000; $temp_paths
  server {
    listen 127.0.0.1:$UP_H2C http2;
    listen 127.0.0.1:$UP_H2 ssl http2;
    ssl_certificate $dir/cert.pem; ssl_certificate_key $dir/key.pem;
    location / {
      default_type application/grpc;
      add_trailer grpc-status 0;
      return 200 "\x00\x00\x00\x00\x02ok";
    }
  }
}
NGX
cat > "$dir/gw.lua" <<LUA
listen { "127.0.0.1:${H2C_PORT[moongate]}", http2 = true }
listen { "127.0.0.1:${TLS_PORT[moongate]}", tls = { cert = "cert.pem", key = "key.pem" } }
access_log "off"
admin_socket "off"
upstream "h2c" { targets = { "127.0.0.1:$UP_H2C" }, protocol = "h2c" }
upstream "h2" { targets = { "https://127.0.0.1:$UP_H2" }, protocol = "h2", tls = { ca = "cert.pem", server_name = "localhost" } }
route { host = "plain", path = "/bench.Svc/{method}", upstream = "h2c", max_body = "4m" }
route { host = "tls", path = "/bench.Svc/{method}", upstream = "h2", max_body = "4m" }
LUA
cat > "$dir/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $dir/nginx.pid; error_log $dir/nginx.err;
events { worker_connections 8192; }
http {
  access_log off; keepalive_requests 10000000; $temp_paths
  upstream up_h2c { server 127.0.0.1:$UP_H2C; keepalive 64; }
  upstream up_h2 { server 127.0.0.1:$UP_H2; keepalive 64; }
  server { listen 127.0.0.1:${H2C_PORT[nginx]} http2; location / { grpc_pass grpc://up_h2c; } }
  server {
    listen 127.0.0.1:${TLS_PORT[nginx]} ssl http2;
    ssl_certificate $dir/cert.pem; ssl_certificate_key $dir/key.pem;
    location / { grpc_pass grpcs://up_h2; grpc_ssl_verify on; grpc_ssl_trusted_certificate $dir/cert.pem;
                 grpc_ssl_name localhost; grpc_ssl_session_reuse on; }
  }
}
NGX
cat > "$dir/haproxy.cfg" <<HAP
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend h2c
  bind 127.0.0.1:${H2C_PORT[haproxy]} proto h2
  default_backend up_h2c
frontend tls
  bind 127.0.0.1:${TLS_PORT[haproxy]} ssl crt $dir/both.pem alpn h2
  default_backend up_h2
backend up_h2c
  server u 127.0.0.1:$UP_H2C proto h2
backend up_h2
  server u 127.0.0.1:$UP_H2 ssl verify required ca-file $dir/cert.pem sni str(localhost) alpn h2
HAP

taskset -c "$LOAD_CPU" nginx -c "$dir/upstream.conf" & pids+=($!)
taskset -c 0 "$gatewayd" -c "$dir/gw.lua" -w 1 2>"$dir/gw.err" & gw_pid=$!; pids+=("$gw_pid")
taskset -c 0 nginx -c "$dir/nginx.conf" & ngx_master=$!; pids+=("$ngx_master")
taskset -c 0 haproxy -db -f "$dir/haproxy.cfg" & hap_pid=$!; pids+=("$hap_pid")
call() { curl -sf "$@" -o /dev/null -H 'content-type: application/grpc' -H 'te: trailers' --data-binary @"$dir/call.bin"; }
for _ in $(seq 50); do
  ok=1
  for s in moongate nginx haproxy; do
    call --http2-prior-knowledge -H 'Host: plain' "http://127.0.0.1:${H2C_PORT[$s]}/bench.Svc/Call" || ok=0
    call -k --http2 -H 'Host: tls' "https://127.0.0.1:${TLS_PORT[$s]}/bench.Svc/Call" || ok=0
  done
  [ $ok = 1 ] && break
  sleep 0.1
done
# every server must answer the call with grpc-status 0 (h2load counts any HTTP 200, gRPC errors included)
grpc_ok() { nghttp -v -d "$dir/call.bin" -H 'content-type: application/grpc' -H 'te: trailers' -H ":authority: $2" "$1" 2>&1 |
            grep -q 'grpc-status: 0'; }
for s in moongate nginx haproxy; do
  grpc_ok "http://127.0.0.1:${H2C_PORT[$s]}/bench.Svc/Call" plain || { echo "$s: the h2c call does not answer grpc-status 0"; exit 1; }
  grpc_ok "https://127.0.0.1:${TLS_PORT[$s]}/bench.Svc/Call" tls || { echo "$s: the h2 call does not answer grpc-status 0"; exit 1; }
done
ngx_worker=$(pgrep -P "$ngx_master" | head -1)
declare -A PID=([moongate]=$gw_pid [nginx]=$ngx_worker [haproxy]=$hap_pid)

. "$here/lib.sh"
# upstream connections the server holds open right after the rounds (ss: established, to the upstream port)
upconns() { ss -tnpH state established "( dport = :$2 )" 2>/dev/null | grep -c "pid=$1," || true; }
grpc_run() { # label server url host upstream-port
  measure_h2 "$1 | $2" "${PID[$2]}" "$3" -d "$dir/call.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
    -H ":authority: $4"
  echo "| $1 | $2 | upstream connections open after the rounds: $(upconns "${PID[$2]}" "$5") | | | | | | |"
}
printf '| workload | server | round | rps | p50 | p99 | CPU µs/call | user | kernel |\n|---|---|---|---|---|---|---|---|---|\n'
for s in moongate nginx haproxy; do grpc_run "grpc h2c->h2c 10x100" "$s" "http://127.0.0.1:${H2C_PORT[$s]}/bench.Svc/Call" plain "$UP_H2C"; done
for s in moongate nginx haproxy; do grpc_run "grpc h2->h2 10x100" "$s" "https://127.0.0.1:${TLS_PORT[$s]}/bench.Svc/Call" tls "$UP_H2"; done
