#!/usr/bin/env bash
# Instructions per request (user space, callgrind) for the anchor workloads
# W1 (plain proxy route) and W2 (1 of 100 routes + key-auth/request-id/
# response header), with the functions that cost most. Counts do not depend
# on what else the machine runs, so this is the tool for working on the
# per-request cost between the timed benchmarks (bench/README.md).
#
#   bench/profile.sh [path/to/gatewayd]      REQUESTS=20000 TOP=25 PORT_BASE=18680
# Writes callgrind files to bench/results/profile-<date>/ (git-ignored).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gatewayd=${1:-$here/../build/gatewayd}
REQUESTS=${REQUESTS:-20000}
TOP=${TOP:-25}
UP_PORT=${PORT_BASE:-18680} GW_PORT=$(( ${PORT_BASE:-18680} + 1 ))
for t in valgrind callgrind_annotate h2load nginx; do command -v $t >/dev/null || { echo "$t is missing"; exit 1; }; done
out=$here/results/profile-$(date -u +%Y%m%dT%H%M%S)
mkdir -p "$out"
. "$here/lib.sh"
bench_scratch

anchor_configs "$dir" $UP_PORT $GW_PORT
pids+=("$(start_nginx "$dir" "$dir/upstream.conf" "http://127.0.0.1:$UP_PORT/")")

valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/callgrind.%p" \
  "$gatewayd" -c "$dir/gw.lua" -w 1 2>"$dir/gw.err" & gw=$!; pids+=($gw)
for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:$GW_PORT/plain/hello" && break; sleep 0.2; done

# W1 then W2: warm-up (JIT traces, pools) outside the measurement, then exactly REQUESTS
declare -A URL=([W1]="/plain/hello" [W2]="/api/v1/svc77/users/42")
echo "## $(date -u +%Y-%m-%d) instructions per request (callgrind, user space), $REQUESTS requests, 10 connections"
echo
echo "| workload | instructions/request |"
echo "|---|---|"
for w in W1 W2; do
  hdr=(); [ "$w" = W2 ] && hdr=(-H "apikey: key-0777")
  h2load --h1 -n 5000 -c 10 "${hdr[@]}" "http://127.0.0.1:$GW_PORT${URL[$w]}" >/dev/null
  callgrind_control -z "$gw" >/dev/null 2>&1; callgrind_control -i on "$gw" >/dev/null 2>&1
  res=$(h2load --h1 -n "$REQUESTS" -c 10 "${hdr[@]}" "http://127.0.0.1:$GW_PORT${URL[$w]}")
  callgrind_control -i off "$gw" >/dev/null 2>&1; callgrind_control -d "$w" "$gw" >/dev/null 2>&1
  echo "$res" | grep -q "status codes: $REQUESTS 2xx" || { echo "$w: not every request got a 2xx:"; echo "$res" | grep -E "requests:|status codes"; exit 1; }
  f=$(ls -t "$out"/callgrind.$gw.* | head -1); mv "$f" "$out/$w.callgrind"
  total=$(callgrind_annotate "$out/$w.callgrind" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  printf '| %s | %d |\n' "$w" $(( total / REQUESTS ))
done
for w in W1 W2; do
  echo; echo "### $w: top $TOP functions (self, instructions/request)"; echo
  callgrind_annotate "$out/$w.callgrind" 2>/dev/null | awk -v n="$REQUESTS" -v top="$TOP" '
    /^-+$/ { sep++; next } sep >= 4 && $1 ~ /^[0-9,]+$/ && !/PROGRAM TOTALS/ && shown < top {
      v = $1; gsub(",", "", v); line = $0; sub(/^ *[0-9,]+ +\( *[0-9.]+%\) +/, "", line)
      printf "%8.0f  %s\n", v / n, line; shown++ }'
done
echo; echo "callgrind files: $out"
