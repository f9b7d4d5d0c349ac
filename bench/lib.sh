# Shared by the bench scripts: one table row per round of wrk against a URL,
# with the server's CPU time per request (utime+stime of PID from /proc, the
# comparable figure on 2 cores), split into user and kernel time. Set
# DURATION, ROUNDS, CONNS, LOAD_CPU first.
#
#   measure "label | columns" PID URL [extra wrk args...]
#   prints | label | columns | round | rps | p50 | p99 | CPU µs/req | user | kernel |

measure() {
  local label=$1 pid=$2 url=$3; shift 3
  local hz; hz=$(getconf CLK_TCK)
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s "$@" "$url" >/dev/null   # warm-up (JIT, buffers)
  for r in $(seq "$ROUNDS"); do
    local u0 s0 u1 s1 out reqs rps p50 p99
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    out=$(timeout $((DURATION + 20)) taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$@" "$url")
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    awk -v l="$label" -v r="$r" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v du="$((u1 - u0))" \
        -v ds="$((s1 - s0))" -v hz="$hz" -v n="$reqs" \
        'BEGIN { printf "| %s | %d | %s | %s | %s | %.1f | %.1f | %.1f |\n", l, r, rps, p50, p99,
                 (du + ds) / hz * 1e6 / n, du / hz * 1e6 / n, ds / hz * 1e6 / n }'
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

# A scratch directory ($dir, removed at exit) and the processes to stop at
# exit ($pids: append the pid of each one started).
bench_scratch() {
  dir=$(mktemp -d)
  pids=()
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
}

# The nginx peer as the shared harness runs it (proxy_pass to a keep-alive
# upstream block, /plain/ only): its config in DIR, listening on NGX_PORT.
#
#   nginx_peer_conf DIR UP_PORT NGX_PORT > peer.conf
nginx_peer_conf() {
  nginx_conf "$1" "upstream up { server 127.0.0.1:$2; keepalive 64; }
  server { listen 127.0.0.1:$3; location /plain/ { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
}

# The anchors' route contract (../shared/bench README) in DIR, for the
# scripts that measure one thing outside the timed harness (profile.sh,
# syscalls.sh): routes.tsv (/plain/* and 100 routes with the plugin chain to
# 127.0.0.1:UP_PORT), keys.txt (1,000 keys), gw.lua (Moongate on GW_PORT),
# and upstream.conf: an nginx upstream answering "hello world\n" on UP_PORT.
#
#   anchor_configs DIR UP_PORT GW_PORT
anchor_configs() {
  local dir=$1 up=$2 gw=$3 here
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  {
    printf '/plain/*\tup_plain\t127.0.0.1:%d\t-\n' "$up"
    for i in $(seq 0 99); do printf '/api/v1/svc%d/users/{id}\tsvc%d\t127.0.0.1:%d\tkey-auth,request-id,add-header\n' "$i" "$i" "$up"; done
  } > "$dir/routes.tsv"
  for i in $(seq 0 999); do printf 'key-%04d\tconsumer-%04d\n' "$i" "$i"; done > "$dir/keys.txt"
  BENCH_LISTEN=127.0.0.1:$gw BENCH_KEYS=$dir/keys.txt "$here/anchors-config.sh" "$dir/routes.tsv" > "$dir/gw.lua"
  nginx_conf "$dir" "server { listen 127.0.0.1:$up; location / { return 200 \"hello world\\n\"; } }" > "$dir/upstream.conf"
}

# An nginx config in DIR (its own pid file, logs and temp paths) with one worker and the given http-block body.
nginx_conf() {
  cat <<NGX
worker_processes 1; daemon off; pid $1/nginx-$RANDOM.pid; error_log $1/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $1; proxy_temp_path $1; fastcgi_temp_path $1; uwsgi_temp_path $1; scgi_temp_path $1;
  $2 }
NGX
}

# Starts nginx with CONF (DIR for its paths) and waits until URL answers; prints its master's pid.
start_nginx() {
  local dir=$1 conf=$2 url=$3
  nginx -p "$dir" -c "$conf" >/dev/null 2>>"$dir/nginx.out" &  # not our stdout: callers read it for the pid
  local pid=$!
  for _ in $(seq 50); do curl -sf -o /dev/null "$url" && break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null || { echo "nginx ($conf) did not start:" >&2; cat "$dir/nginx.out" >&2; return 1; }
  echo "$pid"
}
