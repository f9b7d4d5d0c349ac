-- A gRPC gateway: HTTP/2 in clear (h2c) on 8080, to a gRPC service on 50051
-- (server.py). Run, from the repository root:
--   /usr/bin/python3 examples/grpc/server.py &
--   build/gatewayd -c examples/grpc/gateway.lua
--   /usr/bin/python3 examples/grpc/client.py            # -> UNAUTHENTICATED (no key)
--   /usr/bin/python3 examples/grpc/client.py demo-key   # -> OK: "hello, moongate"
listen { "127.0.0.1:8080", http2 = true }

upstream "greeter" {
  targets = { "127.0.0.1:50051" },
  protocol = "h2c",                       -- "h2" for HTTP/2 over TLS (ALPN)
  timeouts = { connect = "500ms", read = "30s" },
  max_concurrency = 100,                  -- busy answers RESOURCE_EXHAUSTED
}

-- gRPC paths are /package.Service/Method: the router matches them like any path
route { path = "/demo.Greeter/{method}", upstream = "greeter", timeout = "10s",
        plugins = { ["key-auth"] = { header = "x-api-key", keys = { ["demo-key"] = "demo-user" } } } }

-- a method the gateway answers itself, with a gRPC status
route { path = "/demo.Admin/{method}", handler = function(ctx)
  return gw.grpc.status(7, "admin methods are not exposed (" .. ctx.request.grpc.method .. ")")
end }
