local helpers = require "spec.helpers"

describe("mock-response, redirect, request-transformer", function()
  local g, up
  local upstream = require "spec.upstream"
  setup(function()
    up = upstream.start(function(req)
      return 200, {}, gw.json.encode({ corr = req.headers["x-corr"], drop = req.headers["x-drop"] })
    end)
    g = helpers.start(([[
      upstream "up" { targets = { "127.0.0.1:%d" } }
      route { path = "/mock", upstream = "up",
              plugins = { ["mock-response"] = { status = 503, json = { maintenance = true }, headers = { ["Retry-After"] = "60" } } } }
      route { path = "/old/{rest*}", plugins = { redirect = { to = "/new{path}{query}", status = 308 } },
              handler = function() return 200 end }
      route { path = "/secure", plugins = { redirect = { https = true } }, handler = function() return 200 end }
      route { path = "/transform", upstream = "up",
              plugins = { ["request-transformer"] = { set = { ["X-Corr"] = "id-$trace_id" }, remove = { "X-Drop" } } } }
    ]]):format(up.port))
  end)
  teardown(function()
    g:stop()
    up:stop()
  end)

  it("mock-response answers without calling the upstream", function()
    local res = g:request("GET", "/mock")
    assert.equal(503, res.status)
    assert.is_true(res.json.maintenance)
    assert.equal("60", res.headers["retry-after"])
    assert.equal(0, up.requests)
  end)

  it("redirect builds the location", function()
    local res = g:request("GET", "/old/a/b?x=1")
    assert.equal(308, res.status)
    assert.equal("/new/old/a/b?x=1", res.headers["location"])
    local s = g:request("GET", "/secure?q=2", { host = "api.example" })
    assert.equal(301, s.status)
    assert.equal("https://api.example/secure?q=2", s.headers["location"])
  end)

  it("request-transformer sets and removes upstream headers", function()
    local res = g:request("GET", "/transform", { headers = { ["X-Request-ID"] = "abc", ["X-Drop"] = "1" } })
    local body = gw.json.decode(res.body)
    assert.equal("id-abc", body.corr)
    assert.is_nil(body.drop)
  end)
end)
