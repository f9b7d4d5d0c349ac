#!/usr/bin/env bash
# Idle pooled upstream connections: user-space memory per connection. N/2
# clients send at once to a route whose upstream (a Moongate handler) answers
# after DELAY seconds, so the gateway opens N/2 upstream connections; once
# every answer is in and the clients have gone, they wait in the pool; then
# the same to a second route with an upstream of its own (another port), so N
# connections wait. The gateway's memory before and after gives bytes per
# pooled connection. nginx (upstream keepalive N) is measured the same way.
#
#   bench/pool.sh [path/to/gatewayd]      N=10000 DELAY=15
# N is bounded by the open-files limit: the proxy holds 1.5N descriptors
# while the second half's requests run (two halves keep 10,000 under 20,000).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gatewayd=${1:-$here/../build/gatewayd}
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] && hard=1048576
ulimit -n "$hard"
fit=$(( (hard - 300) * 2 / 3 ))
N=${N:-$(( fit < 10000 ? fit : 10000 ))}
DELAY=${DELAY:-15} # longer than sending N requests takes: they all overlap
UP=18611 GW=18612 NGX=18613 UP2=18614
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
. "$here/lib.sh"

cat > "$dir/up.lua" <<LUA
listen "127.0.0.1:$UP"
listen "127.0.0.1:$UP2"
workers(1)
access_log "off"
admin_socket "$dir/up.sock"
timeouts { keepalive = "10m" }
for _, path in ipairs({ "/slow", "/a/slow", "/b/slow" }) do -- nginx strips /a and /b, Moongate does not
  route { method = "GET", path = path, handler = function() gw.sleep($DELAY); return 200, "hello world\n" end }
end
LUA
# gw-N.lua / nginx-N.conf: the proxy keeping up to N idle upstream connections (0: none)
for keep in "$N" 0; do
  cat > "$dir/gw-$keep.lua" <<LUA
listen "127.0.0.1:$GW"
workers(1)
access_log "off"
admin_socket "$dir/gw.sock"
upstream "a" { targets = { "127.0.0.1:$UP" }, pool = { max_idle = $keep, idle_timeout = "10m" } }
upstream "b" { targets = { "127.0.0.1:$UP2" }, pool = { max_idle = $keep, idle_timeout = "10m" } }
route { method = "GET", path = "/a/slow", upstream = "a", timeout = "60s" }
route { method = "GET", path = "/b/slow", upstream = "b", timeout = "60s" }
LUA
  pool="keepalive $keep; keepalive_timeout 10m;"; [ "$keep" = 0 ] && pool=""
  nginx_conf "$dir" "upstream a { server 127.0.0.1:$UP; $pool } upstream b { server 127.0.0.1:$UP2; $pool }
  server { listen 127.0.0.1:$NGX;
    location /a/ { proxy_pass http://a/; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
    location /b/ { proxy_pass http://b/; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }" \
    | sed "s/worker_connections 4096/worker_connections $hard/; s/^worker_processes 1;/worker_processes 1; worker_rlimit_nofile $hard;/" > "$dir/nginx-$keep.conf"
done
"$gatewayd" -c "$dir/up.lua" 2>"$dir/up.err" & pids+=($!)
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$UP/" -m 1 || [ $? = 22 ] && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

echo "## $(date -u +%Y-%m-%d): $N idle pooled upstream connections (answers after ${DELAY}s, all at once)"
echo
echo "The same two bursts of $((N / 2)) requests (one per upstream) through a proxy that pools up to"
echo "$N upstream connections and one that pools none. RSS does not drop when a burst's memory is freed (the allocator keeps it), so"
echo "for Moongate the figure is the heap in use (gatewayctl status: memory.heap_in_use, from"
echo "mallinfo2) with the pool minus without; nginx's is the RSS difference."
echo
echo "| proxy | pooled connections | pooling none | pooling them | bytes per pooled connection |"
echo "|---|---|---|---|---|"
run=10
# burst SERVER KEEP: starts it, sends the burst, prints "RSS pooled" once the clients are gone
burst() {
  local s=$1 keep=$2 pid mpid port
  if [ "$s" = moongate ]; then
    "$gatewayd" -c "$dir/gw-$keep.lua" 2>"$dir/gw.err" & pid=$!; mpid=$pid; port=$GW
  else
    pid=$(start_nginx "$dir" "$dir/nginx-$keep.conf" "http://127.0.0.1:$NGX/a/slow"); mpid=$(pgrep -P "$pid" | head -1); port=$NGX
  fi
  pids+=("$pid")
  for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$port/a/slow" && break; sleep 0.1; done
  for half in a b; do
    run=$((run + 1))
    python3 "$here/idleclient.py" "$port" "/$half/slow" "$((N / 2))" 0 "$run" together > "$dir/client.out" || { echo "$s: the client failed" >&2; cat "$dir/client.out" >&2; exit 1; }
    sleep 1 # the client connections are gone; the upstream ones wait in the pool
  done
  # the proxy's connections to the upstreams that are still open (the pools)
  local pooled
  pooled=$(ss -Htn state established "( dport = :$UP or dport = :$UP2 )" | wc -l)
  if [ "$s" = moongate ]; then
    pooled=$("$here/../build/gatewayctl" -s "$dir/gw.sock" upstreams --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(t.get("idle",0) for w in d for u in w["upstreams"] for t in u["targets"]))' 2>/dev/null || echo "?")
  fi
  local heap=-1
  [ "$s" = moongate ] && heap=$("$here/../build/gatewayctl" -s "$dir/gw.sock" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["memory"]["heap_in_use"])')
  echo "$(rss "$mpid") $pooled $heap"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  sleep 0.5
}
for s in moongate nginx; do
  read -r none_rss _ none_heap < <(burst $s 0)
  read -r with_rss pooled with_heap < <(burst $s "$N")
  if [ "$s" = moongate ]; then
    printf '| %s | %s | heap %d B | heap %d B | %d |\n' "$s" "$pooled" "$none_heap" "$with_heap" $(( (with_heap - none_heap) / pooled ))
  else
    printf '| %s | %s | RSS %d KiB | RSS %d KiB | %d |\n' "$s" "$pooled" "$none_rss" "$with_rss" $(( (with_rss - none_rss) * 1024 / pooled ))
  fi
done
