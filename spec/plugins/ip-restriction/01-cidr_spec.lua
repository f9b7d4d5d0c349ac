local helpers = require "spec.helpers"
local plugins = require "moongate.plugins"

describe("ip-restriction", function()
  it("matches IPv4 and IPv6 CIDRs (allow, deny wins)", function()
    local p = assert(plugins.load("ip-restriction"))
    local function verdict(conf, ip)
      conf = assert(plugins.configure(p, conf))
      local ctx = { request = { client_ip = ip, remote = "192.0.2.1:5555" } } -- the client, not the peer
      return p.access(ctx, conf) or 200
    end
    assert.equal(200, verdict({ allow = { "127.0.0.0/8" } }, "127.0.0.1"))
    assert.equal(403, verdict({ allow = { "10.0.0.0/8" } }, "127.0.0.1"))
    assert.equal(403, verdict({ allow = { "127.0.0.0/8" }, deny = { "127.0.0.1" } }, "127.0.0.1"))
    assert.equal(200, verdict({ allow = { "192.168.1.0/25" } }, "192.168.1.100"))
    assert.equal(403, verdict({ allow = { "192.168.1.0/25" } }, "192.168.1.200"))
    assert.equal(200, verdict({ allow = { "2001:db8::/32" } }, "2001:db8:1::5"))
    assert.equal(403, verdict({ allow = { "2001:db8::/32" } }, "2001:db9::5"))
    assert.equal(200, verdict({ allow = { "::1" } }, "::1"))
    assert.equal(200, verdict({ deny = { "10.0.0.0/8" } }, "127.0.0.1"))
    local conf, err = plugins.configure(p, { allow = { "300.1.1.1" } })
    assert.is_nil(conf)
    assert.equal("field 'allow': '300.1.1.1' is not an address or CIDR", err)
  end)

  it("refuses a client in a real gateway", function()
    local g = helpers.start([[
      route { path = "/in", plugins = { ["ip-restriction"] = { allow = { "127.0.0.1/32" } } }, handler = function() return 200 end }
      route { path = "/out", plugins = { ["ip-restriction"] = { deny = { "127.0.0.0/8" } } }, handler = function() return 200 end }
    ]])
    assert.equal(200, g:request("GET", "/in").status)
    assert.equal(403, g:request("GET", "/out").status)
    g:stop()
  end)

  it("judges the client behind a trusted proxy, never an address an untrusted client claims", function()
    local config = [[
      route { path = "/in", plugins = { ["ip-restriction"] = { allow = { "203.0.113.0/24" } } }, handler = function() return 200 end }
      route { path = "/out", plugins = { ["ip-restriction"] = { deny = { "198.51.100.0/24" } } }, handler = function() return 200 end }
    ]]
    local function status(g, path, xff)
      return g:request("GET", path, { headers = { ["X-Forwarded-For"] = xff } }).status
    end
    local trusting = helpers.start('trusted_proxies { "127.0.0.0/8" }\n' .. config)
    assert.equal(200, status(trusting, "/in", "203.0.113.7"))
    assert.equal(403, status(trusting, "/in", "203.0.113.7, 198.51.100.1")) -- the rightmost untrusted hop
    assert.equal(403, status(trusting, "/out", "198.51.100.1"))
    assert.equal(200, status(trusting, "/out", "198.51.100.1, 203.0.113.7"))
    trusting:stop()
    local plain = helpers.start(config) -- no trusted_proxies: the peer (127.0.0.1) is the client
    assert.equal(403, status(plain, "/in", "203.0.113.7"))
    assert.equal(200, status(plain, "/out", "198.51.100.1"))
    plain:stop()
  end)
end)
