-- One error vocabulary (src/mg_error.h): every kind has one name, status,
-- gRPC status and message, used alike by responses, X-Gateway-Error, the
-- access log, metrics and Lua (gw.errors).
local helpers = require "spec.helpers"

local function metrics(port)
  local s = gw.tcp()
  s:settimeout(5000)
  assert(s:connect("127.0.0.1", port))
  s:send("GET /metrics HTTP/1.0\r\n\r\n")
  local res = assert(helpers.read_response(s))
  s:close()
  return res.body
end

describe("error kinds", function()
  it("are one table that Lua sees as gw.errors", function()
    assert.same({ name = "deadline", status = 504, grpc = 4, message = "deadline exceeded" }, gw.errors.deadline)
    assert.equal(500, gw.errors.lua_error.status)
    assert.equal(13, gw.errors.lua_error.grpc)
    assert.equal(14, gw.errors.no_healthy_target.grpc)
    assert.equal(8, gw.errors.busy.grpc)
    assert.equal(12, gw.errors.no_route.grpc)
  end)

  it("name the kind in X-Gateway-Error, the body and the log for a Lua error as for a deadline", function()
    local g = helpers.start([[
      error_header "X-Gateway-Error"
      route { path = "/boom", handler = function() error("kaboom") end }
      route { path = "/slow", timeout = "100ms", handler = function() gw.sleep(1) return 200, "late" end }
    ]])
    local res = g:request("GET", "/boom", { headers = { ["X-Request-ID"] = "boom-1" } })
    assert.equal(500, res.status)
    assert.equal("lua_error", res.headers["x-gateway-error"])
    assert.equal("internal server error", res.json.error)
    assert.equal("boom-1", res.json.trace_id)
    assert.equal("lua_error", g:entry("boom-1").error)
    res = g:request("GET", "/slow")
    assert.equal(504, res.status)
    assert.equal("deadline", res.headers["x-gateway-error"])
    res = g:request("GET", "/nowhere", { headers = { ["X-Request-ID"] = "nowhere-1" } })
    assert.equal(404, res.status)
    assert.equal("no_route", res.headers["x-gateway-error"])
    assert.equal("no_route", g:entry("nowhere-1").error)
    g:stop()
  end)

  it("are what gw.error answers with, as the gateway answers its own errors", function()
    local port = helpers.free_port()
    local g = helpers.start(([[
      admin_listen "127.0.0.1:%d"
      error_header "X-Gateway-Error"
      route { path = "/store", handler = function() return gw.error("redis_timeout") end }
      route { path = "/busy", handler = function() return gw.error("busy", 503, { ["Retry-After"] = 3 }) end }
      route { path = "/typo", handler = function() return gw.error("redis_timout") end }
      route { path = "/framing", handler = function() return gw.error("busy", nil, { ["Content-Length"] = "1" }) end }
    ]]):format(port))
    local res = g:request("GET", "/store", { headers = { ["X-Request-ID"] = "store-1" } })
    assert.equal(503, res.status)
    assert.equal("redis_timeout", res.headers["x-gateway-error"])
    assert.same({ error = "shared limit store unavailable", status = 503, trace_id = "store-1" }, res.json)
    assert.equal("redis_timeout", g:entry("store-1").error)
    res = g:request("GET", "/busy")
    assert.equal(503, res.status)
    assert.equal("3", res.headers["retry-after"])
    assert.equal("busy", res.headers["x-gateway-error"])
    assert.equal("upstream busy", res.json.error)
    res = g:request("GET", "/typo", { headers = { ["X-Request-ID"] = "typo-1" } })
    assert.equal(500, res.status) -- a kind that does not exist is a programming error
    -- the log writer thread writes the line a moment later: wait for it
    local logged = g:error_entries("typo-1", 2) or {}
    assert.matches("redis_timout is not an error kind", (logged[1] or {}).msg or g:error_log(), 1, true)
    assert.equal(500, g:request("GET", "/framing").status)
    local m = metrics(port)
    assert.truthy(m:find('moongate_request_errors_total{worker="0",route="/store",kind="redis_timeout"} 1', 1, true), m)
    g:stop()
  end)

  it("are all counted in metrics, TLS failures included", function()
    local plain = require("spec.upstream").start(function() return 200, {}, "plain" end)
    local port = helpers.free_port()
    local g = helpers.start(([[
      admin_listen "127.0.0.1:%d"
      upstream "tls" { targets = { "https://127.0.0.1:%d" }, retries = 0 }
      route { path = "/tls", upstream = "tls" }
    ]]):format(port, plain.port))
    local res = g:request("GET", "/tls")
    assert.equal(502, res.status)
    local m = metrics(port)
    assert.truthy(m:find('moongate_upstream_errors_total{worker="0",upstream="tls",kind="tls_handshake"} 1', 1, true), m)
    g:stop()
    plain:stop()
  end)
end)
