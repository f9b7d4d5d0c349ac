-- HTTPS in front, plain HTTP redirected to it, and TLS to an upstream.
-- Certificates are made on your machine, never committed:
--   sh examples/tls/make-certs.sh
--   build/gatewayd -c examples/tls/gateway.lua
--   curl --cacert examples/tls/certs/ca.pem https://localhost:8443/hello
--   curl --cacert examples/tls/certs/ca.pem https://localhost:8443/api/orders
--   curl -i http://localhost:8080/hello              (301 to https)
listen "127.0.0.1:8080"
listen { "127.0.0.1:8443", tls = { cert = "certs/localhost.pem", key = "certs/localhost.key" } }
plugins { redirect = { https = true, https_port = 8443 } }

route { path = "/hello", handler = function(ctx)
  return 200, { hello = "over " .. ctx.request.scheme, tls = ctx.request.tls and ctx.request.tls.version }
end }

-- A TLS upstream, verified against our own CA. To keep the example
-- self-contained the "backend" is this gateway again, under its own host name.
upstream "backend" {
  targets = { "https://localhost:8443" },
  tls = { ca = "certs/ca.pem" },
  host_header = "backend.localhost",
}
route { path = "/api/{rest*}", upstream = "backend" }
route { host = "backend.localhost", path = "/api/{rest*}", handler = function(ctx)
  return 200, { backend = "reached over " .. ctx.request.tls.version, path = ctx.request.path }
end }
