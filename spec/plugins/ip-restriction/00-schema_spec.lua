local helpers = require "spec.helpers"
local plugins = require "moongate.plugins"

describe("ip-restriction schema and client address", function()
  it("refuses an empty conf (every client would pass), bad prefixes and bad addresses", function()
    assert.matches("give allow or deny", helpers.conf_error("ip-restriction", {}), 1, true)
    assert.equal("field 'allow': '10.0.0.0/40': a prefix is at most /32",
                 helpers.conf_error("ip-restriction", { allow = { "10.0.0.0/40" } }))
    assert.equal("field 'deny': '2001:db8::/129': a prefix is at most /128",
                 helpers.conf_error("ip-restriction", { deny = { "2001:db8::/129" } }))
    for _, bad in ipairs({ "1:2:3:4:5:6:7:8:9", "1::2::3", "::1/", "10.0.0.1/", "0x1::", "1:2:3:4:5:6:7:8:" }) do
      assert.equal(("field 'deny': '%s' is not an address or CIDR"):format(bad),
                   helpers.conf_error("ip-restriction", { deny = { bad } }))
    end
  end)

  it("uses the gateway's client address (client_ip when given) and IPv4-mapped IPv6", function()
    local p = assert(plugins.load("ip-restriction"))
    local conf = assert(plugins.configure(p, { allow = { "10.0.0.0/8" } }))
    local function verdict(request) return p.access({ request = request }, conf) or 200 end
    assert.equal(200, verdict({ client_ip = "10.1.1.1", remote = "127.0.0.1:4000" }))
    assert.equal(403, verdict({ remote = "127.0.0.1:4000" }))
    assert.equal(200, verdict({ remote = "::ffff:10.2.3.4:4000" })) -- a dual-stack listener's IPv4 client
  end)
end)
