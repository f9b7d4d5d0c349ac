-- The config DSL (lua/moongate/config.lua), loaded the way gatewayd loads it.
local config = require "moongate.config"
local helpers = require "spec.helpers"

local function load(body, files)
  local dir = helpers.tmpdir()
  for name, b in pairs(files or {}) do
    os.execute("mkdir -p '" .. dir .. "/" .. (name:match("^(.*)/") or ".") .. "'")
    helpers.write_file(dir .. "/" .. name, b)
  end
  helpers.write_file(dir .. "/gateway.lua", body)
  local cfg, err = config.load(dir .. "/gateway.lua")
  return cfg, err, dir
end

describe("config DSL", function()
  it("parses durations", function()
    assert.equal(250, config.duration("250ms"))
    assert.equal(10000, config.duration("10s"))
    assert.equal(120000, config.duration("2m"))
    assert.equal(1500, config.duration(1.5))
    assert.is_nil(config.duration("10 parsecs"))
    assert.is_nil(config.duration(-1))
    assert.equal(24 * 3600 * 1000, config.duration("24h"))
    assert.equal(596 * 3600 * 1000, config.duration("596h")) -- the longest (32-bit milliseconds)
  end)

  it("flattens groups and includes, in declaration order", function()
    local cfg, err = load([[
      listen "127.0.0.1:1"
      workers(3)
      route { path = "/a", handler = function() end }
      group "/api/v1" {
        host = "api.example.com",
        routes = {
          route { method = "GET", path = "/users/{id}", handler = function() end },
          group "/admin" { routes = { route { path = "/x", handler = function() end } } },
        },
      }
      group "/fn" (function()
        route { method = { "get", "POST" }, path = "/y", handler = function() end }
      end)
      include "routes/*.lua"
    ]], { ["routes/one.lua"] = 'route { path = "/from-include", handler = function() end }' })
    assert.is_nil(err)
    assert.equal(3, cfg.workers)
    local paths = {}
    for i, r in ipairs(cfg.routes) do paths[i] = r.path end
    assert.same({ "/a", "/api/v1/users/{id}", "/api/v1/admin/x", "/fn/y", "/from-include" }, paths)
    assert.equal("api.example.com", cfg.routes[2].host)
    assert.equal("api.example.com", cfg.routes[3].host)
    assert.same({ "GET", "POST" }, cfg.routes[4].methods)
    assert.equal("*", cfg.routes[1].methods)
  end)

  it("names file and line of a bad directive", function()
    local _, err, dir = load('listen "127.0.0.1:1"\n\nroute { path = "/x", handlr = function() end }\n')
    assert.matches(dir .. "/gateway.lua:3: unknown field 'handlr' in route", err, 1, true)
  end)

  it("names file and line of an error in an included file", function()
    local _, err, dir = load('include "r.lua"\n', { ["r.lua"] = '\n\nroute { path = "nope", handler = function() end }' })
    assert.matches(dir .. "/r.lua:3: route 'path' must be a string starting with '/'", err, 1, true)
  end)

  it("reports Lua syntax errors with file and line", function()
    local _, err, dir = load('listen "127.0.0.1:1"\nroute { path = "/x", handler = function() end\n')
    assert.matches(dir .. "/gateway.lua:", err, 1, true)
    assert.matches("expected", err, 1, true)
  end)

  it("rejects bad settings", function()
    local _, err = load('workers(0)')
    assert.matches("workers expects an integer", err, 1, true)
    _, err = load('timeouts { header = "soon" }')
    assert.matches("timeouts.header must be a duration", err, 1, true)
    _, err = load('limits { max_body = "lots" }')
    assert.matches("limits.max_body must be a positive size", err, 1, true)
    _, err = load('listen "8080"')
    assert.matches("listen expects", err, 1, true)
    _, err = load('include "missing.lua"')
    assert.matches("no such file", err, 1, true)
  end)

  it("reads TLS listeners, with paths relative to the config file", function()
    local cfg, err, dir = load('listen { "127.0.0.1:1", "127.0.0.1:2", tls = { cert = "a.pem", key = "/k/a.key" } }\n' ..
      'listen "127.0.0.1:3"\n')
    assert.is_nil(err)
    assert.equal(3, #cfg.listen)
    assert.equal("127.0.0.1:2", cfg.listen[2].addr)
    assert.same({ { cert = dir .. "/a.pem", key = "/k/a.key" } }, cfg.listen[1].tls.certificates)
    assert.equal(dir .. "/gateway.lua:1", cfg.listen[1].tls.where)
    assert.equal("127.0.0.1:3", cfg.listen[3])
  end)

  it("resolves client certificates per certificate (SNI name), inheriting the listener's", function()
    local cfg, err, dir = load([[
listen { "127.0.0.1:1", tls = { client_ca = "ca.pem", certificates = {
  { cert = "a.pem", key = "a.key" },
  { cert = "b.pem", key = "b.key", client_auth = "optional" },
  { cert = "c.pem", key = "c.key", client_auth = "off" },
  { cert = "d.pem", key = "d.key", client_ca = "other.pem" },
} } }
]])
    assert.is_nil(err)
    local certs = cfg.listen[1].tls.certificates
    assert.same({ dir .. "/ca.pem", "required" }, { certs[1].client_ca, certs[1].client_auth })
    assert.same({ dir .. "/ca.pem", "optional" }, { certs[2].client_ca, certs[2].client_auth })
    assert.same({}, { certs[3].client_ca, certs[3].client_auth })
    assert.same({ dir .. "/other.pem", "required" }, { certs[4].client_ca, certs[4].client_auth })
  end)

  it("rejects a malformed tls table with the line", function()
    local cases = {
      { 'tls = { cert = "a.pem" }', "listen tls: 'key' expects a file path" },
      { 'tls = { crt = "a.pem", key = "a.key" }', "unknown field 'crt' in listen tls (known: cert, certificates, client_auth, client_ca, key)" },
      { 'tls = { cert = "a", key = "b", certificates = { { cert = "c", key = "d" } } }', "listen tls: give either cert/key or certificates" },
      { 'tls = { certificates = {} }', "listen tls: certificates expects a list" },
      { 'tls = { cert = "a", key = "b", client_auth = "required" }', "listen tls: client_auth needs client_ca" },
      { 'tls = { cert = "a", key = "b", client_ca = "c", client_auth = "maybe" }', "listen tls: client_auth must be \"required\", \"optional\" or \"off\"" },
      { 'tls = { cert = "a", key = "b", client_auth = "off" }', "listen tls: client_auth = \"off\" is for a certificate" },
      { 'tls = { certificates = { { cert = "a", key = "b", sni = "x" } } }', "unknown field 'sni' in listen tls certificates[1] (known: cert, client_auth, client_ca, key)" },
      { 'tls = { certificates = { { cert = "a", key = "b", client_auth = "optional" } } }', "listen tls: certificates[1]: client_auth needs client_ca" },
    }
    for _, case in ipairs(cases) do
      local _, err = load('\nlisten { "127.0.0.1:1", ' .. case[1] .. ' }\n')
      assert.matches(":2: " .. case[2], err, 1, true)
    end
  end)

  it("reads TLS upstreams: https:// targets (443 by default) or a tls table, paths relative to the config", function()
    local cfg, err, dir = load([[
listen "127.0.0.1:1"
upstream "a" { targets = { "https://orders.internal", "https://10.0.0.2:8443" } }
upstream "b" { targets = { "10.0.0.3:8443" }, tls = { ca = "ca.pem", server_name = "b.internal", verify = false } }
upstream "c" { targets = { "http://10.0.0.4" } }
route { path = "/", upstream = "a" }
]])
    assert.is_nil(err)
    local a, b, c = cfg.upstreams[1], cfg.upstreams[2], cfg.upstreams[3]
    assert.same({ { host = "orders.internal", port = 443 }, { host = "10.0.0.2", port = 8443 } }, a.targets)
    assert.is_true(a.tls.verify)
    assert.is_nil(a.tls.ca)
    assert.equal(dir .. "/ca.pem", b.tls.ca)
    assert.equal("b.internal", b.tls.server_name)
    assert.is_false(b.tls.verify)
    assert.same({ { host = "10.0.0.4", port = 80 } }, c.targets)
    assert.is_nil(c.tls)
  end)

  it("reads tls_ticket_keys relative to the config, 1 to 4 of them", function()
    local cfg, err, dir = load('tls_ticket_keys { "a.key", "/k/b.key" }\n')
    assert.is_nil(err)
    assert.same({ dir .. "/a.key", "/k/b.key", where = dir .. "/gateway.lua:1" }, cfg.tls_ticket_keys)
    for _, bad in ipairs({ '{}', '"a.key"', '{ "1", "2", "3", "4", "5" }', '{ 3 }' }) do
      local _, e = load("\ntls_ticket_keys " .. bad .. "\n")
      assert.matches(":2: tls_ticket_keys", e, 1, true)
    end
  end)

  it("rejects a malformed upstream tls setup with the line", function()
    local cases = {
      { '{ targets = { "ftp://a:1" } }', "the scheme must be http:// or https://" },
      { '{ targets = { "http://a:1" }, tls = {} }', "tls is given but the targets are http://" },
      { '{ targets = { "a:1" }, tls = { ca = "x", verfy = false } }', "unknown field 'verfy' in upstream u tls (known: ca, cert, key, server_name, verify)" },
      { '{ targets = { "a:1" }, tls = { verify = "no" } }', "verify must be true or false" },
      { '{ targets = { "a:1" }, tls = { key = "k" } }', "a client certificate needs both cert and key" },
    }
    for _, case in ipairs(cases) do
      local _, err = load('\nupstream "u" ' .. case[1] .. '\n')
      assert.matches(":2: ", err, 1, true)
      assert.matches(case[2], err, 1, true)
    end
  end)
end)

describe("config tables refuse unknown fields", function()
  -- every table a directive takes: one message shape, at the directive's line
  local cases = {
    { 'listen { "127.0.0.1:8080", http2 = true, bogus = 3 }', "unknown field 'bogus' in listen (known: http2, tls)" },
    { 'listen { "127.0.0.1:1", tls = { cert = "a", key = "b", crt = "c" } }',
      "unknown field 'crt' in listen tls (known: cert, certificates, client_auth, client_ca, key)" },
    { 'listen { "127.0.0.1:1", tls = { certificates = { { cert = "a", key = "b", sni = "x" } } } }',
      "unknown field 'sni' in listen tls certificates[1] (known: cert, client_auth, client_ca, key)" },
    { 'listen { "127.0.0.1:1", tls = { certificates = { { cert = "a", key = "b" }, x = 1 } } }',
      "unknown field 'x' in listen tls certificates (known: none: it is a list)" },
    { 'upstream "u" { targets = { "a:1" }, retrys = 2 }', "unknown field 'retrys' in upstream u (known: balance, hash_key," },
    { 'upstream "u" { targets = { "a:1" }, "b:2" }', "unknown field '[1]' in upstream u (known: " },
    { 'upstream "u" { targets = { "a:1", backup = "b:2" } }', "unknown field 'backup' in upstream u targets (known: none: it is a list)" },
    { 'upstream "u" { targets = { "a:1" }, tls = { ca = "x", verfy = false } }',
      "unknown field 'verfy' in upstream u tls (known: ca, cert, key, server_name, verify)" },
    { 'upstream "u" { targets = { "a:1" }, pool = { max_idel = 1 } }',
      "unknown field 'max_idel' in upstream u pool (known: idle_timeout, max_idle, max_requests, ping_interval)" },
    { 'upstream "u" { targets = { "a:1" }, timeouts = { conect = "1s" } }',
      "unknown field 'conect' in upstream u timeouts (known: connect, read, send)" },
    { 'upstream "u" { targets = { "a:1" }, health = { pasive = {} } }',
      "unknown field 'pasive' in upstream u health (known: active, passive)" },
    { 'upstream "u" { targets = { "a:1" }, health = { passive = { failure = 2 } } }',
      "unknown field 'failure' in upstream u health.passive (known: eject, failures)" },
    { 'upstream "u" { targets = { "a:1" }, health = { active = { path = "/h", intervl = "1s" } } }',
      "unknown field 'intervl' in upstream u health.active (known: interval, path, timeout)" },
    { 'upstream "u" { targets = { "a:1" }, max_concurrency = 2, on_busy = { queue = 1, wait = "1s" } }',
      "unknown field 'wait' in upstream u on_busy (known: queue, queue_timeout, status)" },
    { 'upstream "u" { targets = { "a:1" }, pool = 5 }', "upstream u pool expects a table" },
    { 'limits { max_bdy = "1m" }', "unknown field 'max_bdy' in limits (known: max_body, max_header_size, max_headers, max_request_line)" },
    { 'limits { "8k" }', "unknown field '[1]' in limits (known: " },
    { 'timeouts { reqest = "1s" }', "unknown field 'reqest' in timeouts (known: body, drain, header, keepalive, request, send, tls_session, tunnel, watchdog)" },
    { 'route { path = "/", handler = print, upgrade = { "websocket" } }',
      "route /: 'upgrade' is for proxy routes (a handler accepts a WebSocket with ctx:websocket())" },
    { 'upstream "u" { targets = { "a:1" } } route { path = "/", upstream = "u", upgrade = "websocket" }',
      "route /: 'upgrade' must be a list of protocol tokens" },
    { 'upstream "u" { targets = { "a:1" } } route { path = "/", upstream = "u", upgrade = { "web socket" } }',
      "route /: upgrade[1] must be a protocol token" },
    { 'upstream "u" { targets = { "a:1" } } route { path = "/", upstream = "u", upgrade = { "websocket", x = 1 } }',
      "unknown field 'x' in route upgrade (known: none: it is a list)" },
    { 'timeouts { tunnel = "never" }', "timeouts.tunnel must be a duration" },
    { 'timeouts { tunnel = 0 }', 'timeouts.tunnel must be a duration > 0 like "10s" or "250ms" (a timeout cannot be turned off' },
    { 'timeouts { tunnel = "0s" }', "timeouts.tunnel must be a duration > 0" },
    { 'timeouts { tunnel = false }', "timeouts.tunnel must be a duration > 0" },
    { 'timeouts { keepalive = 0 }', "timeouts.keepalive must be a duration > 0" },
    { 'route { path = "/", handler = print, "extra" }', "unknown field '[1]' in route (known: " },
    { 'route { path = "/", method = "G T", handler = print }', "route method 'G T' is not a valid method token" },
    { 'route { path = "/", methods = { "GET", "P(ST" }, handler = print }', "route method 'P(ST' is not a valid method token" },
    { 'route { path = "/", methods = { "GET", 7 }, handler = print }', "route methods must be strings" },
    { 'route { path = "/", methods = {}, handler = print }', "route 'method' must be a method name, a list of them, or \"*\"" },
    { 'route { path = "/", methods = { "GET", other = "POST" }, handler = print }',
      "unknown field 'other' in route methods (known: none: it is a list)" },
    { 'group "/g" { name = "api", routes = { route { path = "/", handler = print } } }',
      "unknown field 'name' in group /g (known: host, max_body, plugins, routes, timeout)" },
    { 'group "/g" { routes = { route { path = "/", handler = print }, x = 1 } }',
      "unknown field 'x' in group /g routes (known: none: it is a list)" },
    { 'tls_ticket_keys { "a.key", where = "x" }', "unknown field 'where' in tls_ticket_keys (known: none: it is a list)" },
    { 'trusted_proxies { "10.0.0.0/8", via = "x" }', "unknown field 'via' in trusted_proxies (known: none: it is a list)" },
    { 'http2 { max_streams = 10 }', "unknown field 'max_streams' in http2 (known: max_concurrent_streams, stream_window)" },
    { 'route { path = "/", handler = print, timeout = 0 }',
      "route 'timeout' must be a duration like \"800ms\" (not 0: every request has a deadline; a long-lived stream takes a long one, e.g. \"24h\")" },
    { 'group "/g" { timeout = "0s", routes = { route { path = "/", handler = print } } }',
      "group 'timeout' must be a duration like \"800ms\" (not 0: every request has a deadline)" },
    { 'route { path = "/", handler = print, timeout = "1000h" }',
      "duration 1000h is longer than the longest one the gateway keeps (596h)" },
    { 'timeouts { request = 3e9 }', "duration 3000000000 is longer than the longest one the gateway keeps (596h)" },
  }
  for _, case in ipairs(cases) do
    it("refuses: " .. case[1], function()
      local _, err = load('\n' .. case[1] .. '\n')
      assert.is_string(err)
      assert.matches(":2: " .. case[2], err, 1, true)
    end)
  end
end)

describe("config values that would be ignored", function()
  local cases = {
    { 'route { path = "/", method = "GET", methods = { "POST" }, handler = print }', "route /: give method or methods, not both" },
    { 'upstream "u" { targets = { "a:1" }, hash_key = "ip" }', 'upstream u: hash_key is only used with balance = "hash"' },
    { 'upstream "u" { targets = { "a:1" }, balance = "hash", hash_key = "header-X" }',
      [[upstream u: hash_key: 'header-X' is not a key: use "ip", "header:<Name>" or "param:<name>"]] },
    { 'upstream "u" { targets = { "a:1" }, health = { passive = { failures = 0, eject = "5s" } } }',
      "upstream u: health.passive.eject has no effect with failures = 0" },
    { 'workers(2)\nworkers(3)', "workers is already set at " },
    { 'timeouts { header = "1s" }\ntimeouts { header = "2s" }', "timeouts.header is already set at " },
    { 'http2 { max_concurrent_streams = 10 }\nhttp2 { stream_window = "1m" }', "http2 is already set at " },
    { 'group "/g" { routes = { route { path = "/a", handler = print } }, route { path = "/b", handler = print } }',
      "group /g: give its routes in routes = { ... } or as the list, not both" },
  }
  for _, case in ipairs(cases) do
    it("refuses: " .. case[1]:gsub("\n", "; "), function()
      local _, err = load('\n' .. case[1] .. '\n')
      assert.is_string(err)
      assert.matches(case[2], err, 1, true)
      assert.matches(":%d+: ", err)
    end)
  end

  it("refuses a group, an upstream or a redis without a body, and a group without routes", function()
    local _, err = load('\ngroup "/api"\nroute { path = "/", handler = print }\n')
    assert.matches(':2: group /api has no body: write group "/api" { routes = { ... } }', err, 1, true)
    _, err = load('\nupstream "orders"\n')
    assert.matches(':2: upstream orders has no body', err, 1, true)
    _, err = load('\n\nredis "main"\n')
    assert.matches(':3: redis main has no body: write redis "main" { address = "host:port" }', err, 1, true)
    _, err = load('\ngroup "/api" { routes = {} }\n')
    assert.matches(':2: group /api has no routes', err, 1, true)
  end)

  it("checks that a hash upstream's param:name is in the paths of its routes", function()
    local _, err = load([[
upstream "u" { targets = { "a:1" }, balance = "hash", hash_key = "param:user" }
route { path = "/users/{user}", upstream = "u" }
route { path = "/orders/{id}", upstream = "u" }
]])
    assert.matches(":3: route /orders/{id}: upstream u hashes on param:user, which this path does not have", err, 1, true)
  end)
end)

describe("listen http2", function()
  it("passes http2 through into the listen entries", function()
    local cfg, err = load([[
listen { "127.0.0.1:1", http2 = true }
listen { "127.0.0.1:2", "127.0.0.1:3", http2 = false, tls = { cert = "a.pem", key = "a.key" } }
listen "127.0.0.1:4"
]])
    assert.is_nil(err)
    assert.same({ addr = "127.0.0.1:1", http2 = true }, cfg.listen[1])
    assert.is_false(cfg.listen[2].http2)
    assert.equal("127.0.0.1:3", cfg.listen[3].addr)
    assert.is_false(cfg.listen[3].http2)
    assert.is_table(cfg.listen[3].tls)
    assert.equal("127.0.0.1:4", cfg.listen[4]) -- nil http2: a plain entry, as before
    local _, e = load('\nlisten { "127.0.0.1:1", http2 = "yes" }\n')
    assert.matches(":2: listen: http2 must be true or false", e, 1, true)
  end)

  it("refuses http2 { } when no listener takes HTTP/2 (it would be ignored)", function()
    local _, err = load('listen "127.0.0.1:1"\nlisten { "127.0.0.1:2", http2 = false }\n' ..
                        'listen { "127.0.0.1:3", http2 = false, tls = { cert = "a.pem", key = "a.key" } }\n' ..
                        '\nhttp2 { max_concurrent_streams = 100 }\n')
    assert.matches(":5: http2 { } has no effect: no listener takes HTTP/2", err, 1, true)
    for _, ok in ipairs({
      'listen "127.0.0.1:1"\nlisten { "127.0.0.1:2", http2 = true }\nhttp2 { max_concurrent_streams = 100 }\n',
      'listen { "127.0.0.1:3", tls = { cert = "a.pem", key = "a.key" } }\nhttp2 { max_concurrent_streams = 100 }\n',
      'http2 { max_concurrent_streams = 100 }\n', -- no listen: gatewayd --listen's listener takes h2c
    }) do
      local cfg, e = load(ok)
      assert.is_nil(e, ok)
      assert.equal(100, cfg.http2.max_concurrent_streams)
    end
  end)
end)

describe("plugins tables", function()
  it("checks a plugin named with false (a typo would leave the real one on)", function()
    local _, err = load([[
plugins { ["key-auth"] = { keys = { k = "c" } } }
route { path = "/", plugins = { ["key-auht"] = false }, handler = print }
]])
    assert.matches(":2: route /: no plugin named 'key-auht'", err, 1, true)
  end)

  it("refuses false where nothing is inherited", function()
    local _, err = load('\nroute { path = "/", plugins = { cors = false }, handler = print }\n')
    assert.matches(":2: route /: cors = false turns off nothing", err, 1, true)
    _, err = load('\nplugins { cors = false }\n')
    assert.matches(":2: plugins: cors = false removes nothing here", err, 1, true)
  end)

  it("validates a group's conf at the group's line even when every route overrides it", function()
    local _, err = load([[
group "/g" {
  plugins = { cors = { origin = "*" } },
  routes = { route { path = "/", plugins = { cors = true }, handler = print } },
}
]])
    assert.matches(":1: group /g: plugin cors: field 'origin': unknown field (known: ", err, 1, true)
  end)

  it("names the plugins directive's line for a global conf", function()
    local _, err = load('route { path = "/", handler = print }\n\nplugins { cors = { max_age = "1h" } }\n')
    assert.matches(":3: plugins: plugin cors: field 'max_age': expected a number", err, 1, true)
  end)

  it("refuses a plugin configured twice globally", function()
    local _, err = load('plugins { cors = true }\nplugins { cors = { max_age = 1 } }\n')
    assert.matches(":2: plugins: cors is already configured at ", err, 1, true)
  end)

  it("refuses a proxy-only plugin whose conf reaches only handler routes", function()
    local _, err = load([[
upstream "u" { targets = { "a:1" } }
route { path = "/h", plugins = { ["request-transformer"] = { set = { ["X-A"] = "1" } } }, handler = print }
]])
    assert.matches(":2: route /h: plugin request-transformer changes only what a proxy route sends upstream", err, 1, true)
    -- globally, with some proxy route, it is fine
    local cfg, e = load([[
upstream "u" { targets = { "a:1" } }
plugins { ["request-transformer"] = { set = { ["X-A"] = "1" } } }
route { path = "/h", handler = print }
route { path = "/p", upstream = "u" }
]])
    assert.is_nil(e)
    assert.equal(2, #cfg.routes)
  end)
end)
