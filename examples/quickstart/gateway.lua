-- Moongate quickstart: `make run` serves this file on 127.0.0.1:8080.
listen "127.0.0.1:8080"
workers(2)

-- A static route.
route { method = "GET", path = "/", handler = function(ctx)
  return 200, "Hello from Moongate!\n"
end }

-- A parameter constrained by a regex; a table body is sent as JSON.
route { method = "GET", path = "/users/{id:[0-9]+}", handler = function(ctx)
  return 200, { id = tonumber(ctx.params.id), name = "user" .. ctx.params.id }
end }

-- Waiting never blocks the worker: other requests are served meanwhile.
route { method = "GET", path = "/slow", handler = function(ctx)
  local ms = tonumber(ctx.request.args.ms) or 500
  gw.sleep(ms / 1000)
  return 200, { slept_ms = ms, trace_id = ctx.trace_id }
end }

-- Echo the body back, with a header of our own.
route { method = "POST", path = "/echo", handler = function(ctx)
  return 200, ctx.request:body(), { ["Content-Type"] = ctx.request.headers["content-type"] or "text/plain" }
end }

-- Plugins: an API key, and a rate limit per consumer shared by all workers.
route { method = "GET", path = "/private", plugins = {
  ["key-auth"] = { keys = { ["demo-key"] = "demo-user" } },
  ["rate-limit"] = { rate = 1, burst = 3, key = "consumer" },
}, handler = function(ctx)
  return 200, { hello = ctx.consumer }
end }

-- Routes from other files; groups give them a common prefix.
include "routes/*.lua"

-- Reverse proxy. To stay self-contained, the "backend" is this gateway itself,
-- answering for the host name backend.local (a route with an exact host wins
-- over one without). In real life targets are your services.
route { host = "backend.local", method = "GET", path = "/api/orders/{id}", handler = function(ctx)
  return 200, { order = ctx.params.id, seen_by = "backend", forwarded_for = ctx.request.headers["x-forwarded-for"] }
end }

upstream "orders" {
  targets = { "127.0.0.1:8080" },
  host_header = "backend.local",
  timeouts = { connect = "200ms", read = "2s" },
}
route { method = "GET", path = "/api/orders/{id}", upstream = "orders", timeout = "3s" }
