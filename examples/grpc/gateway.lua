-- A gRPC gateway: HTTP/2 in clear (h2c) on 127.0.0.1:8080, to a gRPC service
-- on 127.0.0.1:50051 (server.py); see README.md. The ports and the admin
-- socket come from the environment when set (GATEWAY_PORT, GRPC_PORT,
-- ADMIN_SOCKET), so the example can run next to another gateway. Run, from
-- the repository root:
--   /usr/bin/python3 examples/grpc/server.py &
--   build/gatewayd -c examples/grpc/gateway.lua
--   /usr/bin/python3 examples/grpc/client.py            # -> UNAUTHENTICATED (no key)
--   /usr/bin/python3 examples/grpc/client.py demo-key   # -> OK: "hello, moongate"
local gateway_port = os.getenv("GATEWAY_PORT") or "8080"
local grpc_port = os.getenv("GRPC_PORT") or "50051"

listen { "127.0.0.1:" .. gateway_port, http2 = true }
admin_socket(os.getenv("ADMIN_SOCKET") or "/tmp/moongate-grpc-example.sock") -- gatewayctl -s this

upstream "greeter" {
  targets = { "127.0.0.1:" .. grpc_port },
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
