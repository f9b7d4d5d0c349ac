#!/bin/sh
# examples/cluster: Redis (127.0.0.1:6390, no persistence), the backend
# (9101) and two gateways (8081, 8082) from the same gateway.lua. Ctrl-C
# stops them all. Needs redis-server (apt-get install redis-server).
here=$(cd "$(dirname "$0")" && pwd)
gatewayd=${GATEWAYD:-$here/../../build/gatewayd}
pids=""
trap 'kill $pids 2>/dev/null' EXIT
trap 'exit 0' INT TERM
redis-server --port 6390 --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/tmp/moongate-cluster-redis.log &
pids="$pids $!"
"$gatewayd" -c "$here/backend.lua" 2>/tmp/moongate-cluster-backend.err >/dev/null & pids="$pids $!"
NODE=a "$gatewayd" -c "$here/gateway.lua" 2>/tmp/moongate-cluster-a.err >/dev/null & pids="$pids $!"
NODE=b "$gatewayd" -c "$here/gateway.lua" 2>/tmp/moongate-cluster-b.err >/dev/null & pids="$pids $!"
sleep 1
cat <<TRY
Two gateways on one Redis. Try:
  for p in 8081 8082 8081 8082 8081; do curl -s -o /dev/null -w "%{http_code} " -H 'apikey: demo-key' localhost:\$p/api/hello; done; echo
      -> 200 200 200 200 429: a burst of 4 for the fleet, whichever gateway is asked
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w "%{http_code} " localhost:\$((8081 + i % 2))/reports/\$i & done; wait; echo
      -> four 200 and two 429: 4 reports in flight across both gateways
  build/gatewayctl -s /tmp/moongate-cluster-a.sock status     # the Redis pool and the cluster semaphore
Logs: /tmp/moongate-cluster-*.err. Ctrl-C stops everything.
TRY
wait
