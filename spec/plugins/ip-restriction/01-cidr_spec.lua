local helpers = require "spec.helpers"
local plugins = require "moongate.plugins"

describe("ip-restriction", function()
  it("matches IPv4 and IPv6 CIDRs (allow, deny wins)", function()
    local p = assert(plugins.load("ip-restriction"))
    local function verdict(conf, ip)
      conf = assert(plugins.configure(p, conf))
      local ctx = { request = { remote = ip .. ":5555" } }
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
end)
