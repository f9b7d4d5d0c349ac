#!/usr/bin/env bash
# Could io_uring cut the kernel's share of a proxied W1 request? Builds the
# prototype bench/uring/proxy.c (one small keep-alive proxy, two event cores:
# epoll as libevent gives Moongate, and io_uring variants) and measures it
# next to Moongate itself in one run, rounds alternating: rps and CPU per
# request split into user and kernel time (/proc/<pid>/stat over a wrk run),
# then system calls per request over REQUESTS requests (perf's syscall
# tracepoint, strace -c -f for which ones; for io_uring that is io_uring_enter)
# and the proxies' own counts.
# Every server runs on CPU 0 (one worker), wrk and the upstream nginx
# ("hello world\n", as the shared harness's W1) on CPU 1.
#
#   bench/uring.sh [path/to/gatewayd]    DURATION=3 ROUNDS=5 CONNS=50 REQUESTS=20000
#                                        VARIANTS="uring,defer ..." FOREIGN_MAX=3 PORT_BASE=18760
# A round in which other processes took more than FOREIGN_MAX % of CPU 0 is
# shown but left out of the medians.
# Needs liburing-dev (bench only: `make test` does not), wrk, nginx, strace, perf, h2load.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gatewayd=${1:-$here/../build/gatewayd}
DURATION=${DURATION:-3}
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-50}
REQUESTS=${REQUESTS:-20000}
FOREIGN_MAX=${FOREIGN_MAX:-3}
# the io_uring variants (proxy.c's header says what each word does)
VARIANTS=${VARIANTS:-"uring uring,coop uring,defer uring,defer,pollfirst uring,multishot,defer uring,sendskip,defer uring,multishot,sendskip,defer"}
LOAD_CPU=1
base=${PORT_BASE:-18760}
UP_PORT=$base GW_PORT=$((base + 1))

for t in cc wrk nginx strace perf h2load curl taskset /usr/bin/time; do command -v $t >/dev/null || { echo "$t is missing"; exit 1; }; done
if ! printf '#include <liburing.h>\n' | cc -E -x c - >/dev/null 2>&1; then
  echo "liburing.h is missing: install liburing-dev (Debian: apt-get install -y liburing-dev)."
  echo "Only this benchmark needs it; the gateway and make test do not."
  exit 1
fi
[ -x "$gatewayd" ] || { echo "$gatewayd is missing: build Moongate first (make build)"; exit 1; }
. "$here/lib.sh"
bench_scratch
cc -O2 -Wall -Wextra -o "$dir/proxy" "$here/uring/proxy.c" -luring

# the upstream and Moongate's config (routes.tsv, gw.lua) as bench/syscalls.sh has them
anchor_configs "$dir" $UP_PORT $GW_PORT
pids+=("$(taskset -c $LOAD_CPU bash -c ". '$here/lib.sh'; start_nginx '$dir' '$dir/upstream.conf' 'http://127.0.0.1:$UP_PORT/'")")
want=$(curl -sf "http://127.0.0.1:$UP_PORT/plain/hello")

# the servers, all on CPU 0 (idle ones cost nothing): name, pid, port
names=() ports=()
declare -A pid_of port_of
port=$((base + 2))
for mode in epoll $VARIANTS; do
  taskset -c 0 "$dir/proxy" "$mode" $port $UP_PORT 2>"$dir/$mode.err" & pid_of[$mode]=$!; pids+=($!)
  names+=("$mode"); port_of[$mode]=$port; port=$((port + 1))
done
taskset -c 0 "$gatewayd" -c "$dir/gw.lua" -w 1 2>"$dir/gw.err" & pid_of[moongate]=$!; pids+=($!)
names+=(moongate); port_of[moongate]=$GW_PORT

# smoke: one request through each must return the upstream's body, or nothing is measured
for n in "${names[@]}"; do
  got=""
  for _ in $(seq 50); do got=$(curl -sf "http://127.0.0.1:${port_of[$n]}/plain/hello" || true); [ -n "$got" ] && break; sleep 0.1; done
  [ "$got" = "$want" ] || { echo "smoke: $n returned '$got', not the upstream's '$want'"; cat "$dir/$n.err" 2>/dev/null; exit 1; }
done
echo "smoke: ${#names[@]} servers return the upstream body"

# One round of wrk against a server, as lib.sh's measure, plus what others
# ran meanwhile: foreign CPU 0 = CPU 0's busy time less the server's, foreign
# all = both CPUs' busy time less the server's, the upstream's and wrk's,
# each in % of the round (one CPU's time for CPU 0, two for all).
#   measure_w1 label pid url round
hz=$(getconf CLK_TCK)
upw=$(pgrep -P "${pids[0]}" | head -1)
busy() { awk -v c="$1" '$1 == c {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
measure_w1() {
  local label=$1 pid=$2 url=$3 round=$4 u0 s0 u1 s1 w0 w1 a0 a1 c0 c1 out wu ws
  taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d2s "$url" >/dev/null # warm-up
  read -r u0 s0 < <(ticks "$pid"); w0=$(ticks "$upw" | awk '{print $1 + $2}'); a0=$(busy cpu); c0=$(busy cpu0)
  out=$(timeout $((DURATION + 20)) /usr/bin/time -o "$dir/wrk.time" -f '%U %S' taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$url")
  read -r u1 s1 < <(ticks "$pid"); w1=$(ticks "$upw" | awk '{print $1 + $2}'); a1=$(busy cpu); c1=$(busy cpu0)
  read -r wu ws < "$dir/wrk.time"
  echo "$out" | awk -v l="$label" -v r="$round" -v du=$((u1 - u0)) -v ds=$((s1 - s0)) -v hz="$hz" -v d="$DURATION" \
      -v up=$((w1 - w0)) -v all=$((a1 - a0)) -v cpu0=$((c1 - c0)) -v wrk="$(awk -v u="$wu" -v s="$ws" -v hz="$hz" 'BEGIN {print (u + s) * hz}')" '
    /requests in/ {n = $1} /Requests\/sec/ {rps = $2} $1 == "50%" {p50 = $2} $1 == "99%" {p99 = $2}
    END { f0 = (cpu0 - du - ds) / (d * hz) * 100; fa = (all - du - ds - up - wrk) / (2 * d * hz) * 100
          printf "| %s | %d | %s | %s | %s | %.1f | %.1f | %.1f | %.0f | %.0f |\n", l, r, rps, p50, p99,
                 (du + ds) / hz * 1e6 / n, du / hz * 1e6 / n, ds / hz * 1e6 / n, f0 < 0 ? 0 : f0, fa < 0 ? 0 : fa }'
}

echo "## $(date -u +%Y-%m-%d): W1 through the io_uring prototype, same run ($ROUNDS rounds x ${DURATION}s, wrk -t1 -c$CONNS)"
echo
printf '| server | round | rps | p50 | p99 | CPU µs/req | user | kernel | foreign CPU 0 %% | foreign all %% |\n|---|---|---|---|---|---|---|---|---|---|\n'
for n in "${names[@]}"; do [ "$n" = moongate ] || kill -USR1 "${pid_of[$n]}"; done
for r in $(seq "$ROUNDS"); do
  for n in "${names[@]}"; do
    measure_w1 "$n" "${pid_of[$n]}" "http://127.0.0.1:${port_of[$n]}/plain/hello" "$r"
  done
done | tee "$dir/rows"
for n in "${names[@]}"; do [ "$n" = moongate ] || kill -USR1 "${pid_of[$n]}"; done
sleep 0.3

# system calls per request: counted by perf's raw_syscalls:sys_enter tracepoint
# (no stop per call: the batching stays as without it), then under strace -c -f
# for which ones (strace stops the server at every call, so its batches grow
# and the epoll_wait / io_uring_enter share shrinks). Prints "perf|strace|top".
sc_count() {
  local pid=$1 url=$2 st
  run_h2() { taskset -c $LOAD_CPU h2load --h1 -n "$1" -c "$CONNS" "$url" | grep -q "status codes: $1 2xx" || { echo "$url: not every request got a 2xx" >&2; return 1; }; }
  run_h2 5000 # warm-up
  perf stat -x, -e raw_syscalls:sys_enter -p "$pid" -o "$dir/perf.out" & st=$!
  sleep 0.5; run_h2 "$REQUESTS"; sleep 0.3; kill -INT $st; wait $st 2>/dev/null || true
  strace -c -f -q -p "$pid" -o "$dir/strace.out" & st=$!
  sleep 0.5; run_h2 "$REQUESTS"; sleep 0.3; kill -INT $st; wait $st 2>/dev/null || true
  awk -F, -v n="$REQUESTS" '$3 ~ /raw_syscalls:sys_enter/ {printf "%.2f|", $1 / n}' "$dir/perf.out"
  awk -v n="$REQUESTS" '$1 ~ /^[0-9.]+$/ && $NF != "total" {c[$NF] = ($4 ~ /^[0-9]+$/) ? $4 : $(NF-1)}
    END { top = ""; for (s in c) { t += c[s]; if (c[s] / n >= 0.05) top = top sprintf("%s %.2f, ", s, c[s] / n) }
          printf "%.2f|%s\n", t / n, substr(top, 1, length(top) - 2) }' "$dir/strace.out"
}
declare -A pf_of sc_of top_of
for n in "${names[@]}"; do
  sc_count "${pid_of[$n]}" "http://127.0.0.1:${port_of[$n]}/plain/hello" > "$dir/sc"
  IFS='|' read -r pf_of[$n] sc_of[$n] top_of[$n] < "$dir/sc"
done

# the proxies' own counts over the measured rounds (the two SIGUSR1 dumps): no strace
own() { # name -> "syscalls/req turns/req"
  awk '/requests,/ {r[++k] = $2; t[k] = $4; s[k] = $7} END { if (k >= 2 && r[2] > r[1])
    printf "%.2f %.2f\n", (s[2] - s[1]) / (r[2] - r[1]), (t[2] - t[1]) / (r[2] - r[1]); else printf "- -\n" }' "$dir/$1.err"
}
colmax() { awk -F'|' -v g="$1" -v c="$2" '{x = $2; gsub(/ /, "", x)} x == g && $c + 0 > m {m = $c + 0} END {print m + 0}' "$dir/rows"; }
med() { sort -n | awk '{v[NR] = $1} END {printf "%.2f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
# medians over the clean rounds: at most FOREIGN_MAX % of CPU 0 went to other processes
col() { awk -F'|' -v g="$1" -v c="$2" -v fm="$FOREIGN_MAX" '{x = $2; gsub(/ /, "", x)} x == g && $10 + 0 <= fm {v = $c; gsub(/ /, "", v); if (v ~ /ms$/) v = v * 1000; else if (v ~ /us$/) v = v + 0; print v + 0}' "$dir/rows" | med; }
echo
clean() { awk -F'|' -v g="$1" -v fm="$FOREIGN_MAX" '{x = $2; gsub(/ /, "", x)} x == g && $10 + 0 <= fm {n++} END {print n + 0}' "$dir/rows"; }
echo "Medians of the clean rounds (other processes took at most $FOREIGN_MAX % of CPU 0; foreign: the largest of any round)."
echo "System calls per request over $REQUESTS requests (h2load --h1 -c$CONNS):"
echo "perf (raw_syscalls:sys_enter), then strace -c -f and its largest; own: the proxy's own count of its"
echo "system calls (io_uring_enter once per loop turn) and loop turns per request over the measured wrk rounds."
echo
echo "| server | clean rounds | rps | user µs/req | kernel µs/req | CPU µs/req | foreign CPU 0, all % | syscalls/req (perf) | strace | of which (strace, ≥ 0.05/req) | own: syscalls, turns /req |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for n in "${names[@]}"; do
  os=- ot=-
  [ "$n" = moongate ] || read -r os ot < <(own "$n")
  printf '| %s | %s/%s | %.0f | %s | %s | %s | %s, %s | %s | %s | %s | %s, %s |\n' "$n" "$(clean "$n")" "$ROUNDS" "$(col "$n" 4)" "$(col "$n" 8)" "$(col "$n" 9)" "$(col "$n" 7)" \
    "$(colmax "$n" 10)" "$(colmax "$n" 11)" "${pf_of[$n]}" "${sc_of[$n]}" "${top_of[$n]}" "$os" "$ot"
done
