#!/usr/bin/env bash
# The rate-limit plugin's redis policy against its local policy, in the same
# run: W2's plugin chain (100 parameterised routes, key-auth against 1,000
# keys, request-id, an added response header) plus rate-limit, once with
# policy = "local" (/api/...) and once with policy = "redis" (/r/api/...) on
# a local redis-server. Rounds alternate the two, so a drift of the machine
# hits both alike.
#
#   [ROUNDS=5] [DURATION=5] [CONNS=50] bench/redis.sh [path/to/gatewayd]
#   (needs nginx, wrk and redis-server: bash ../shared/bench/install.sh; apt-get install redis-server)
#
# One gatewayd worker on CPU 0; the upstream nginx, redis-server and wrk on
# CPU 1 ("pinned beside the upstream"). Reported per round: rps, p50, p99,
# the gateway's CPU per request and redis-server's CPU per request
# (utime+stime from /proc, divided by the requests wrk completed).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gatewayd=${1:-$here/../build/gatewayd}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-50}
GW_CPU=${GW_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORT=18197
UP_PORT=18183
REDIS_PORT=18379
for cmd in wrk nginx redis-server taskset curl; do
  command -v "$cmd" >/dev/null || { echo "$cmd is missing"; exit 1; }
done
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
  server { listen 127.0.0.1:$UP_PORT; location / { return 200 "hello world\n"; } }
}
NGINX
for i in $(seq 0 999); do printf 'key-%04d\tconsumer-%04d\n' "$i" "$i"; done > "$work/keys.txt"
{
  echo "listen \"127.0.0.1:$PORT\""
  echo 'workers(1)'
  echo 'access_log "off"'
  echo "redis \"main\" { address = \"127.0.0.1:$REDIS_PORT\", timeouts = { command = \"200ms\" } }"
  echo "upstream \"svc\" { targets = { \"127.0.0.1:$UP_PORT\" }, pool = { max_idle = 128, max_requests = 1000000 } }"
  for n in $(seq 0 99); do
    for variant in local redis; do
      prefix=""; rl="policy = \"local\""
      if [ "$variant" = redis ]; then prefix="/r"; rl="policy = \"redis\", redis = \"main\""; fi
      printf 'route { method = "GET", path = "%s/api/v1/svc%d/users/{id}", upstream = "svc", plugins = {\n' "$prefix" "$n"
      printf '  ["key-auth"] = { keys_file = "%s/keys.txt" }, ["request-id"] = {},\n' "$work"
      printf '  ["response-transformer"] = { add = { ["X-Gateway"] = "moongate" } },\n'
      printf '  ["rate-limit"] = { rate = 1000000000, burst = 1000000000, key = "consumer", %s } } }\n' "$rl"
    done
  done
} > "$work/gw.lua"

taskset -c "$LOAD_CPU" nginx -p "$work" -c "$work/nginx.conf" & pids+=($!)
taskset -c "$LOAD_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --daemonize no --dir "$work" > "$work/logs/redis.log" 2>&1 & redis_pid=$!; pids+=($redis_pid)
taskset -c "$GW_CPU" "$gatewayd" -c "$work/gw.lua" -w 1 2>"$work/logs/gw.err" & gw_pid=$!; pids+=($gw_pid)
for _ in $(seq 50); do
  curl -s -o /dev/null -H 'apikey: key-0777' "http://127.0.0.1:$PORT/r/api/v1/svc77/users/42" && break
  sleep 0.1
done
check=$(curl -s -i -H 'apikey: key-0777' "http://127.0.0.1:$PORT/r/api/v1/svc77/users/42")
echo "$check" | grep -qi '^ratelimit-remaining' || { echo "smoke check failed:"; echo "$check"; cat "$work/logs/gw.err"; exit 1; }

hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# one round: prints | policy | round | rps | p50 | p99 | gateway µs/req | redis µs/req |
round() {
  local label=$1 path=$2 r=$3 g0 g1 r0 r1 out reqs
  g0=$(ticks "$gw_pid"); r0=$(ticks "$redis_pid")
  out=$(timeout $((DURATION + 20)) taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency \
        -H 'apikey: key-0777' "http://127.0.0.1:$PORT$path")
  g1=$(ticks "$gw_pid"); r1=$(ticks "$redis_pid")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  if echo "$out" | grep -q 'Non-2xx'; then echo "non-2xx responses in $label:"; echo "$out"; exit 1; fi
  printf '| %s | %d | %s | %s | %s | %s | %s |\n' "$label" "$r" \
    "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" "$(echo "$out" | awk '$1 == "50%" {print $2}')" \
    "$(echo "$out" | awk '$1 == "99%" {print $2}')" \
    "$(awk -v t="$((g1 - g0))" -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')" \
    "$(awk -v t="$((r1 - r0))" -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')"
}

# warm-up of both (JIT traces, pools, the script cache)
for p in /api/v1/svc77/users/42 /r/api/v1/svc77/users/42; do
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s -H 'apikey: key-0777' "http://127.0.0.1:$PORT$p" >/dev/null
done
printf '| rate-limit policy | round | rps | p50 | p99 | gateway CPU µs/req | redis-server CPU µs/req |\n'
printf '|---|---|---|---|---|---|---|\n'
for r in $(seq "$ROUNDS"); do
  round local /api/v1/svc77/users/42 "$r"
  round redis /r/api/v1/svc77/users/42 "$r"
done
