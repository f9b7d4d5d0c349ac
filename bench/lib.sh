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
