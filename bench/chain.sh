#!/usr/bin/env bash
# The W2 plugin chain's cost (W2 minus W1 of the same gateway) on Moongate and
# ngx_lua in one run, with CPU per request split into user and kernel time.
# W2 minus W1 of the shared harness's summary mixes two effects: the chain's
# own work (user time) and the kernel's, which grows per request as the rate
# falls (fewer requests per loop pass share each wake-up). This keeps them
# apart. Uses the shared harness's generated configs (its upstream and its
# ngx_lua gateway, conf/nginx-lua/gw.lua) from a copy that has run once:
#
#   cp -r ../shared/bench /tmp/anchors && (cd /tmp/anchors && ./run-anchors.sh nginx-lua)
#   ANCHORS=/tmp/anchors bench/chain.sh [path/to/gatewayd]      DURATION=3 ROUNDS=7
#
# Each gateway has one worker on CPU 0 (one measured at a time); wrk and the
# upstream share CPU 1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gatewayd=${1:-$here/../build/gatewayd}
ANCHORS=${ANCHORS:?set ANCHORS to a copy of ../shared/bench that has run once}
DURATION=${DURATION:-3}
ROUNDS=${ROUNDS:-7}
CONNS=${CONNS:-50}
LOAD_CPU=1
GW_PORT=18096 NGXLUA_PORT=18092
for f in run/upstream/nginx.conf run/nginx-lua/nginx.conf run/conf/routes.tsv run/conf/keys.txt; do
  [ -f "$ANCHORS/$f" ] || { echo "$ANCHORS/$f is missing: run the harness once (see above)"; exit 1; }
done
. "$here/lib.sh"
bench_scratch
up() { curl -sf -o /dev/null -H 'apikey: key-0777' "$1"; }
wait_up() { for _ in $(seq 50); do up "$1" && return 0; sleep 0.1; done; echo "$1 does not answer"; exit 1; }
taskset -c 1 nginx -c "$ANCHORS/run/upstream/nginx.conf" >/dev/null 2>&1 & pids+=($!)
wait_up http://127.0.0.1:18080/plain/hello
taskset -c 0 nginx -c "$ANCHORS/run/nginx-lua/nginx.conf" >/dev/null 2>&1 & ngx=$!; pids+=($ngx)
wait_up "http://127.0.0.1:$NGXLUA_PORT/api/v1/svc77/users/42"
ngx_worker=$(pgrep -P "$ngx" | head -1)
BENCH_LISTEN=127.0.0.1:$GW_PORT BENCH_KEYS=$ANCHORS/run/conf/keys.txt "$here/anchors-config.sh" "$ANCHORS/run/conf/routes.tsv" > "$dir/gw.lua"
taskset -c 0 "$gatewayd" -c "$dir/gw.lua" -w 1 2>"$dir/gw.err" & gw=$!; pids+=($gw)
wait_up "http://127.0.0.1:$GW_PORT/api/v1/svc77/users/42"

echo "## $(date -u +%Y-%m-%d): W1 and W2 CPU per request, user and kernel, same run ($ROUNDS rounds x ${DURATION}s, wrk -c$CONNS)"
echo
printf '| gateway | workload | round | rps | p50 | p99 | CPU µs/req | user | kernel |\n|---|---|---|---|---|---|---|---|---|\n'
all=$ROUNDS
ROUNDS=1
for r in $(seq "$all"); do
  for g in "nginx-lua $ngx_worker $NGXLUA_PORT" "moongate $gw $GW_PORT"; do
    set -- $g
    measure "$1 | W1" "$2" "http://127.0.0.1:$3/plain/hello" | sed "s/| 1 |/| $r |/"
    measure "$1 | W2" "$2" "http://127.0.0.1:$3/api/v1/svc77/users/42" -H 'apikey: key-0777' | sed "s/| 1 |/| $r |/"
  done
done | tee "$dir/rows"
echo
# medians over rounds; the chain = W2 - W1 of the medians, and the median of the rounds' own differences
python3 - "$dir/rows" <<'PY'
import sys, statistics as st
rows = [l.split('|')[1:-1] for l in open(sys.argv[1]) if l.startswith('| ')]
v = {}
for r in rows:
    g, w, rnd = r[0].strip(), r[1].strip(), int(r[2])
    v.setdefault((g, w), {})[rnd] = (float(r[6]), float(r[7]), float(r[8]))
for g in ("nginx-lua", "moongate"):
    for i, what in enumerate(("CPU", "user", "kernel")):
        w1 = st.median(x[i] for x in v[(g, "W1")].values()); w2 = st.median(x[i] for x in v[(g, "W2")].values())
        paired = st.median(v[(g, "W2")][k][i] - v[(g, "W1")][k][i] for k in v[(g, "W1")])
        print(f"{g:9} {what:6}: W1 {w1:5.2f}  W2 {w2:5.2f}  chain {w2 - w1:5.2f} (paired rounds {paired:5.2f}) µs/req")
def chain(g, i):
    return st.median(x[i] for x in v[(g, "W2")].values()) - st.median(x[i] for x in v[(g, "W1")].values())
for i, what in enumerate(("CPU", "user", "kernel")):
    n = chain("nginx-lua", i)
    print(f"moongate/ngx_lua chain, {what}: {chain('moongate', i) / n:.2f}" if n > 0 else f"{what}: ngx_lua chain <= 0")
PY
