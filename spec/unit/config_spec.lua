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
      { 'tls = { crt = "a.pem", key = "a.key" }', "listen tls: unknown field 'crt'" },
      { 'tls = { cert = "a", key = "b", certificates = { { cert = "c", key = "d" } } }', "listen tls: give either cert/key or certificates" },
      { 'tls = { certificates = {} }', "listen tls: certificates expects a list" },
      { 'tls = { cert = "a", key = "b", client_auth = "required" }', "listen tls: client_auth needs client_ca" },
      { 'tls = { cert = "a", key = "b", client_ca = "c", client_auth = "maybe" }', "listen tls: client_auth must be \"required\", \"optional\" or \"off\"" },
      { 'tls = { cert = "a", key = "b", client_auth = "off" }', "listen tls: client_auth = \"off\" is for a certificate" },
      { 'tls = { certificates = { { cert = "a", key = "b", sni = "x" } } }', "listen tls: certificates[1]: unknown field 'sni'" },
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
      { '{ targets = { "a:1" }, tls = { ca = "x", verfy = false } }', "upstream u tls: unknown field 'verfy'" },
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
