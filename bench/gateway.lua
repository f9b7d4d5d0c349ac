-- The config bench/run.sh measures: a trivial Lua handler and, for 404s,
-- nothing else (the router answers before any Lua runs).
listen "127.0.0.1:18096"
workers(1)
access_log "off"

route { method = "GET", path = "/hello", handler = function() return 200, "hello world\n" end }
route { method = "GET", path = "/users/{id:[0-9]+}", handler = function(ctx)
  return 200, ctx.params.id
end }
