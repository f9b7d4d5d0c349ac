-- examples/cluster: one config for every node of a fleet (docs/cluster.md).
-- Two gateways (NODE=a on 8081, NODE=b on 8082) share a rate limit per API
-- key and the backend's concurrency limit through one Redis; each keeps its
-- own config, pools and local state. ./run.sh starts Redis, a backend and both.
local node = os.getenv("NODE") or "a"
listen("127.0.0.1:" .. (os.getenv("PORT") or (node == "a" and "8081" or "8082")))
workers(2)
admin_socket(os.getenv("ADMIN_SOCKET") or ("/tmp/moongate-cluster-" .. node .. ".sock"))
error_header "X-Gateway-Error"

-- the fleet's Redis; nodes = 2: when Redis is unreachable, on_redis_error = "local"
-- gives each gateway half of every limit
redis "main" {
  address = os.getenv("REDIS") or "127.0.0.1:6390",
  nodes = 2,
  timeouts = { connect = "200ms", command = "50ms" },
}

-- at most 4 reports in flight across the whole fleet; a gateway that dies
-- frees its permits after 5 s
upstream "reports" {
  targets = { os.getenv("BACKEND") or "127.0.0.1:9101" },
  max_concurrency = 4, scope = "cluster", redis = "main", lease = "5s", on_redis_error = "local",
  retries = 0,
}

route { path = "/api/hello", plugins = {
  ["key-auth"] = { keys = { ["demo-key"] = "demo-user", ["other-key"] = "other-user" } },
  -- 2/s per consumer, burst 4, for the fleet: not 4 per gateway
  ["rate-limit"] = { rate = 2, burst = 4, key = "consumer", policy = "redis", redis = "main" },
}, handler = function(ctx) return 200, { hello = ctx.consumer, node = node } end }

route { path = "/reports/{id}", upstream = "reports" }

-- this node's view of the shared limits
route { path = "/limits", handler = function()
  local red = gw.redis("main")
  local res, err = red:pipeline({ { "ZCARD", "moongate:sem:upstream:reports" } })
  return 200, { node = node, reports_in_flight = res and res[1], redis_error = err }
end }
