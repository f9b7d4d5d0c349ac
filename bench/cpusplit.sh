#!/usr/bin/env bash
# W1 (GET /plain/hello through the plain proxy route) on Moongate and nginx in
# the same run, rounds alternating, with each gateway's CPU per request split
# into user and kernel time: the figure for "user-space CPU per request against
# nginx's". Each gateway has one worker on CPU 0; wrk and the upstream nginx
# share CPU 1 (as in the shared harness).
#
#   bench/cpusplit.sh [path/to/gatewayd]     DURATION=3 ROUNDS=5 CONNS=50 PORT_BASE=18700
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gatewayd=${1:-$here/../build/gatewayd}
DURATION=${DURATION:-3}
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-50}
LOAD_CPU=1
UP_PORT=${PORT_BASE:-18700} GW_PORT=$(( ${PORT_BASE:-18700} + 1 )) NGX_PORT=$(( ${PORT_BASE:-18700} + 2 ))
for t in wrk nginx; do command -v $t >/dev/null || { echo "$t is missing"; exit 1; }; done
. "$here/lib.sh"
bench_scratch
anchor_configs "$dir" $UP_PORT $GW_PORT
pids+=("$(taskset -c 1 bash -c ". '$here/lib.sh'; start_nginx '$dir' '$dir/upstream.conf' 'http://127.0.0.1:$UP_PORT/'")")
nginx_peer_conf "$dir" $UP_PORT $NGX_PORT > "$dir/peer.conf"
ngx=$(taskset -c 0 bash -c ". '$here/lib.sh'; start_nginx '$dir' '$dir/peer.conf' 'http://127.0.0.1:$NGX_PORT/plain/hello'"); pids+=("$ngx")
ngx_worker=$(pgrep -P "$ngx" | head -1)
taskset -c 0 "$gatewayd" -c "$dir/gw.lua" -w 1 2>"$dir/gw.err" & gw=$!; pids+=($gw)
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$GW_PORT/plain/hello" && break; sleep 0.1; done

echo "## $(date -u +%Y-%m-%d): W1 CPU per request, user and kernel, same run ($ROUNDS rounds x ${DURATION}s, wrk -c$CONNS)"
echo
printf '| gateway | round | rps | p50 | p99 | CPU µs/req | user | kernel |\n|---|---|---|---|---|---|---|---|\n'
all=$ROUNDS
ROUNDS=1
for r in $(seq "$all"); do
  measure "nginx" "$ngx_worker" "http://127.0.0.1:$NGX_PORT/plain/hello" | sed "s/| 1 |/| $r |/"
  measure "moongate" "$gw" "http://127.0.0.1:$GW_PORT/plain/hello" | sed "s/| 1 |/| $r |/"
done | tee "$dir/rows"
echo
# medians over the rounds (one noisy round moves a mean): CPU, user and kernel µs/req, p99
med() { sort -n | awk '{v[NR] = $1} END {printf "%.2f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
col() { awk -F'|' -v g="$1" -v c="$2" '{x = $2; gsub(/ /, "", x)} x == g {v = $c; gsub(/ /, "", v); if (v ~ /ms$/) v = v * 1000; else v = v + 0; print v}' "$dir/rows" | med; }
for g in nginx moongate; do
  printf 'median %-8s CPU %s µs/req, user %s, kernel %s, p99 %s µs\n' "$g" "$(col $g 7)" "$(col $g 8)" "$(col $g 9)" "$(col $g 6)"
done
awk -v nu="$(col nginx 8)" -v mu="$(col moongate 8)" -v nk="$(col nginx 9)" -v mk="$(col moongate 9)" -v nc="$(col nginx 7)" -v mc="$(col moongate 7)" \
  'BEGIN { printf "moongate/nginx (medians): user %.2f, kernel %.2f, CPU %.2f\n", mu / nu, mk / nk, mc / nc }'
