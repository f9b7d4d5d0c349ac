-- key-auth in a real gateway, in front of a real upstream.
local helpers = require "spec.helpers"
local upstream = require "spec.upstream"

describe("key-auth", function()
  local up, g

  setup(function()
    up = upstream.start(function(req) return 200, {}, req.headers["apikey"] or "no key upstream" end)
    local dir = helpers.tmpdir()
    helpers.write_file(dir .. "/keys.txt", "key-0001\talice\nkey-0002\tbob\n")
    g = helpers.start(([[
      upstream "up" { targets = { "127.0.0.1:%d" } }
      route { method = "GET", path = "/inline", plugins = { ["key-auth"] = { keys = { ["k-1"] = "carol" } } },
              handler = function(ctx) return 200, { consumer = ctx.consumer } end }
      route { method = "GET", path = "/file", plugins = { ["key-auth"] = { keys_file = "%s/keys.txt", query = "api_key" } },
              handler = function(ctx) return 200, { consumer = ctx.consumer } end }
      route { method = "GET", path = "/proxied", upstream = "up",
              plugins = { ["key-auth"] = { keys_file = "%s/keys.txt", hide_credentials = true } } }
      route { method = "GET", path = "/proxied-visible", upstream = "up",
              plugins = { ["key-auth"] = { keys_file = "%s/keys.txt" } } }
    ]]):format(up.port, dir, dir, dir))
  end)
  teardown(function()
    g:stop()
    up:stop()
  end)

  it("refuses a missing or unknown key with 401 and a challenge", function()
    for _, headers in ipairs({ {}, { apikey = "wrong" } }) do
      local res = g:request("GET", "/inline", { headers = headers })
      assert.equal(401, res.status)
      assert.equal("missing or invalid API key", res.json.message)
      assert.equal('Key realm="moongate"', res.headers["www-authenticate"])
    end
  end)

  it("accepts a known key and names the consumer", function()
    assert.equal("carol", g:request("GET", "/inline", { headers = { apikey = "k-1" } }).json.consumer)
    assert.equal("bob", g:request("GET", "/file", { headers = { apikey = "key-0002" } }).json.consumer)
    assert.equal("alice", g:request("GET", "/file?api_key=key-0001").json.consumer)
  end)

  it("can hide the key from the upstream", function()
    assert.equal("no key upstream", g:request("GET", "/proxied", { headers = { apikey = "key-0001" } }).body)
    assert.equal("key-0001", g:request("GET", "/proxied-visible", { headers = { apikey = "key-0001" } }).body)
    assert.equal(401, g:request("GET", "/proxied").status)
    assert.equal(0, #up.received - 2) -- the refused request never reached the upstream
  end)

  it("rejects a conf without keys at load time", function()
    local plugins = require "moongate.plugins"
    local p = assert(plugins.load("key-auth"))
    local conf, err = plugins.configure(p, {})
    assert.is_nil(conf)
    assert.equal("give keys or keys_file", err)
  end)
end)
