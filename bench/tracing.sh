#!/usr/bin/env bash
# What tracing costs on W2 (100 parameterised proxy routes, key-auth against
# 1,000 keys + request-id + a response header; the shared harness's
# workload, configured by anchors-config.sh): three gateways on the same
# config, measured in the same run, rounds interleaved:
#   off       no tracing block, nobody watching: what every untraced request pays
#   timeline  `gatewayctl trace --json` subscribed (to /dev/null): every request recorded and streamed
#   otel      tracing { ratio = 1.0 } exporting every request to a collector (nginx answering 200)
#
#   [ROUNDS=5] [DURATION=4] [BASELINE=path/to/other/gatewayd] bench/tracing.sh [path/to/gatewayd]
#
# BASELINE adds a fourth gateway, "baseline": another build (e.g. the commit
# before tracing) on the "off" config, to see what untraced requests pay.
# Each gatewayd runs one worker on CPU 0; nginx (upstream and collector),
# wrk and gatewayctl run on CPU 1. The figure to compare is the gateway's CPU
# time per request (all its threads: worker, main, exporter), as elsewhere.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gatewayd=${1:-$here/../build/gatewayd}
gatewayctl=$(dirname "$gatewayd")/gatewayctl
DURATION=${DURATION:-4}
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-50}
LOAD_CPU=${LOAD_CPU:-1}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/logs" "$work/tmp"
cat > "$work/nginx.conf" <<NGINX
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off; client_body_temp_path $work/tmp; keepalive_requests 1000000;
  client_max_body_size 64m; client_body_buffer_size 16m;
  server { listen 127.0.0.1:18480; location / { return 200 "hello world\n"; } }
  server { listen 127.0.0.1:18481; location /v1/traces { return 200 "{}"; } }
}
NGINX
# the harness's route contract (../shared/bench README): 100 routes, 1,000 keys
for n in $(seq 0 99); do
  printf '/api/v1/svc%d/users/{id}\tsvc%d\t127.0.0.1:18480\tkey-auth,request-id,add-header\n' "$n" "$n"
done > "$work/routes.tsv"
for n in $(seq 0 999); do printf 'key-%04d\tconsumer-%d\n' "$n" "$n"; done > "$work/keys.txt"

names=(off timeline otel)
ports=(18496 18497 18498)
bins=("$gatewayd" "$gatewayd" "$gatewayd")
if [ -n "${BASELINE:-}" ]; then
  names+=(baseline); ports+=(18495); bins+=("$BASELINE")
fi
for i in "${!names[@]}"; do
  BENCH_LISTEN=127.0.0.1:${ports[$i]} BENCH_KEYS=$work/keys.txt "$here/anchors-config.sh" "$work/routes.tsv" > "$work/${names[$i]}.lua"
  echo "admin_socket \"$work/${names[$i]}.sock\"" >> "$work/${names[$i]}.lua"
done
echo 'tracing { endpoint = "http://127.0.0.1:18481/v1/traces", ratio = 1.0, queue = 65536 }' >> "$work/otel.lua"
echo 'admin_listen "127.0.0.1:18499"' >> "$work/otel.lua"

taskset -c "$LOAD_CPU" nginx -p "$work" -c "$work/nginx.conf" & pids+=($!)
gw_pids=()
for i in "${!names[@]}"; do
  taskset -c 0 "${bins[$i]}" -c "$work/${names[$i]}.lua" -w 1 2>"$work/logs/${names[$i]}.err" & pids+=($!); gw_pids+=($!)
done
url() { echo "http://127.0.0.1:$1/api/v1/svc77/users/42"; }
for p in "${ports[@]}"; do
  for _ in $(seq 50); do curl -s -o /dev/null -H 'apikey: key-0777' "$(url "$p")" && break; sleep 0.1; done
done
[ "$(curl -s -o /dev/null -w '%{http_code}' -H 'apikey: key-0777' "$(url 18496)")" = 200 ] || { echo "W2 route does not answer 200"; exit 1; }
taskset -c "$LOAD_CPU" "$gatewayctl" -s "$work/timeline.sock" trace --json > /dev/null & pids+=($!)
sleep 0.5

. "$here/lib.sh"
printf '| variant | round | rps | p50 | p99 | gateway CPU µs/req | user | kernel |\n|---|---|---|---|---|---|---|---|\n'
all_rounds=$ROUNDS
ROUNDS=1
for r in $(seq "$all_rounds"); do
  for i in "${!names[@]}"; do
    measure "${names[$i]}" "${gw_pids[$i]}" "$(url "${ports[$i]}")" -H 'apikey: key-0777' | sed "s/| 1 |/| $r |/" | tee -a "$work/rows"
  done
done
echo
echo "median gateway CPU µs/req:"
for n in "${names[@]}"; do
  awk -F'|' -v n="$n" '$2 == " " n " " {print $7 + 0}' "$work/rows" | sort -n |
    awk -v n="$n" '{v[NR] = $1} END {printf "  %-9s %.1f\n", n, NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
done
echo
echo "otel exporter:"; curl -s http://127.0.0.1:18499/metrics | grep '^moongate_trace_' | sed 's/^/  /'
