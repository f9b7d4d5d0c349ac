local helpers = require "spec.helpers"

local function b64(s)
  local b = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  return ((s:gsub(".", function(x)
    local r, byte = "", x:byte()
    for i = 8, 1, -1 do r = r .. (byte % 2 ^ i - byte % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return b:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#s % 3 + 1])
end

describe("basic-auth", function()
  local g
  setup(function()
    -- sha256("s3cret")
    g = helpers.start([[
      route { path = "/private", plugins = { ["basic-auth"] = { users = {
          alice = "sha256:1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0",
          bob = "plain-pass",
        } } },
        handler = function(ctx) return 200, { user = ctx.consumer, auth = ctx.request:header("Authorization") } end }
    ]])
  end)
  teardown(function() g:stop() end)

  it("challenges without credentials", function()
    local res = g:request("GET", "/private")
    assert.equal(401, res.status)
    assert.equal('Basic realm="moongate"', res.headers["www-authenticate"])
    assert.equal(401, g:request("GET", "/private", { headers = { Authorization = "Basic " .. b64("bob:wrong") } }).status)
  end)

  it("accepts a valid user", function()
    local res = g:request("GET", "/private", { headers = { Authorization = "Basic " .. b64("bob:plain-pass") } })
    assert.equal(200, res.status)
    assert.equal("bob", res.json.user)
  end)

  it("checks SHA-256 digests", function()
    local ok = g:request("GET", "/private", { headers = { Authorization = "Basic " .. b64("alice:s3cret") } })
    assert.equal(200, ok.status)
    assert.equal("alice", ok.json.user)
    local bad = g:request("GET", "/private", { headers = { Authorization = "Basic " .. b64("alice:wrong") } })
    assert.equal(401, bad.status)
  end)
end)
