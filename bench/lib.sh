# Shared by the bench scripts: one table row per round of wrk against a URL,
# with the server's CPU time per request (utime+stime of PID from /proc, the
# comparable figure on 2 cores). Set DURATION, ROUNDS, CONNS, LOAD_CPU first.
#
#   measure "label | columns" PID URL [extra wrk args...]
#   prints | label | columns | round | rps | p50 | p99 | CPU µs/req |

measure() {
  local label=$1 pid=$2 url=$3; shift 3
  local hz; hz=$(getconf CLK_TCK)
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s "$@" "$url" >/dev/null   # warm-up (JIT, buffers)
  for r in $(seq "$ROUNDS"); do
    local t0 t1 out reqs rps p50 p99 us
    t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    out=$(timeout $((DURATION + 20)) taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$@" "$url")
    t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    us=$(awk -v t="$((t1 - t0))" -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
    printf '| %s | %d | %s | %s | %s | %s |\n' "$label" "$r" "$rps" "$p50" "$p99" "$us"
  done
}

# The same for h2load (HTTP/2): REQUESTS requests over 10 connections x 100
# streams per round, p50/p99 from h2load's per-request log, the server's CPU
# split into user and kernel time.
#
#   measure_h2 "label | columns" PID URL [extra h2load args...]
#   prints | label | columns | round | rps | p50 | p99 | CPU µs/req | user | kernel |
measure_h2() {
  local label=$1 pid=$2 url=$3; shift 3
  local hz; hz=$(getconf CLK_TCK)
  local log; log=$(mktemp /tmp/moongate-h2load.XXXXXX)
  taskset -c "$LOAD_CPU" h2load -n 20000 -c 10 -m 100 "$@" "$url" >/dev/null 2>&1 # warm-up (JIT, pools)
  for r in $(seq "$ROUNDS"); do
    local u0 s0 u1 s1 out rps p50 p99
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    out=$(taskset -c "$LOAD_CPU" h2load -n "$REQUESTS" -c 10 -m 100 --log-file="$log" "$@" "$url" 2>&1)
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    rps=$(echo "$out" | awk '/^finished in/ {print $4}')
    echo "$out" | grep -q "$REQUESTS succeeded" || echo "| $label: not all succeeded: $(echo "$out" | grep -E '^(requests|status codes):' | tr '\n' ' ') |"
    # the log: start time, status, request time in µs per request
    read -r p50 p99 < <(awk '{print $3}' "$log" | sort -n | awk '{a[NR] = $1} END {printf "%.2f %.2f\n", a[int(NR*0.5)]/1000, a[int(NR*0.99)]/1000}')
    awk -v l="$label" -v r="$r" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v du="$((u1 - u0))" \
        -v ds="$((s1 - s0))" -v hz="$hz" -v n="$REQUESTS" \
        'BEGIN { printf "| %s | %d | %s | %s ms | %s ms | %.1f | %.1f | %.1f |\n", l, r, rps, p50, p99,
                 (du + ds) / hz * 1e6 / n, du / hz * 1e6 / n, ds / hz * 1e6 / n }'
  done
  rm -f "$log"
}
