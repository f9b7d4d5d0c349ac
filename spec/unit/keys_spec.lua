-- moongate.keys: one spelling of what plugins key on, checked at load and
-- compiled once into a resolver.
local keys = require "moongate.keys"

local function ctx_of(t)
  local req = t.request or {}
  req.header = req.header or function(self, name) return (self.headers or {})[name] end
  return { request = req, consumer = t.consumer, route = t.route or { declared_at = "gw.lua:3" } }
end

describe("keys", function()
  it("refuses what is not a key, naming the valid forms", function()
    local forms = [[use "consumer", "ip", "route" or "header:<Name>"]]
    for _, bad in ipairs({ "consumr", "header-X-User", "Consumer", "ip:1", "route:x", "" }) do
      local k, err = keys.compile(bad)
      assert.is_nil(k)
      assert.equal(("'%s' is not a key: %s"):format(bad, forms), err)
    end
    assert.equal("'header:X User': 'X User' is not a header name", select(2, keys.compile("header:X User")))
    assert.equal("'header:': '' is not a header name", select(2, keys.compile("header:")))
    assert.matches("expected a key", select(2, keys.compile(42)), 1, true)
    -- a caller may narrow the kinds
    assert.equal([['consumer' is not a key: use "ip" or "header:<Name>"]],
                 select(2, keys.compile("consumer", { "ip", "header" })))
  end)

  it("compiles each form into a resolver", function()
    local c = ctx_of({ consumer = "ada", request = { remote = "10.1.2.3:5555", headers = { ["X-User"] = "u1" } } })
    assert.equal("ada", keys.compile("consumer").resolve(c))
    assert.equal("10.1.2.3", keys.compile("ip").resolve(c))
    assert.equal("gw.lua:3", keys.compile("route").resolve(c))
    local h = keys.compile("header:X-User")
    assert.same({ "header:X-User", "header", "X-User" }, { h.spec, h.kind, h.arg })
    assert.equal("u1", h.resolve(c))
    assert.is_nil(keys.compile("header:X-Other").resolve(c))
    assert.is_nil(keys.compile("consumer").resolve(ctx_of({}))) -- nothing to key on
    assert.equal("42", keys.compile("consumer").resolve(ctx_of({ consumer = 42 }))) -- e.g. a numeric jwt sub
  end)

  it("resolves without reading the spec again (compiled once)", function()
    local k = keys.compile("header:X-User")
    k.spec, k.arg = "garbage", "garbage"
    assert.equal("u1", k.resolve(ctx_of({ request = { headers = { ["X-User"] = "u1" } } })))
  end)

  it("takes the client address from client_ip when the core gives it, else from remote", function()
    assert.equal("203.0.113.9", keys.client_ip(ctx_of({ request = { client_ip = "203.0.113.9", remote = "127.0.0.1:1" } })))
    assert.equal("127.0.0.1", keys.client_ip(ctx_of({ request = { remote = "127.0.0.1:1" } })))
    assert.equal("::1", keys.client_ip(ctx_of({ request = { remote = "::1:4444" } })))
    assert.is_nil(keys.client_ip(ctx_of({ request = {} })))
  end)
end)
