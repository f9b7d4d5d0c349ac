-- response-transformer and request-id on handler and proxy routes.
local helpers = require "spec.helpers"
local upstream = require "spec.upstream"

describe("response-transformer and request-id", function()
  local up, g

  setup(function()
    up = upstream.start(function(req)
      return 200, { Server = "upstream/1.0", ["X-Powered-By"] = "php" }, req.headers["x-correlation-id"] or "-"
    end)
    g = helpers.start(([[
      upstream "up" { targets = { "127.0.0.1:%d" } }
      route { method = "GET", path = "/add", upstream = "up",
              plugins = { ["response-transformer"] = { add = { ["X-Gateway"] = "moongate" } } } }
      route { method = "GET", path = "/rewrite", upstream = "up",
              plugins = { ["response-transformer"] = { set = { Server = "gw" }, remove = { "X-Powered-By" } } } }
      route { method = "GET", path = "/handler",
              plugins = { ["response-transformer"] = { add = { ["X-Gateway"] = "moongate" }, remove = { "X-Drop" } } },
              handler = function() return 200, "h", { ["X-Drop"] = "1", ["X-Keep"] = "1" } end }
      route { method = "GET", path = "/corr", upstream = "up",
              plugins = { ["request-id"] = { header = "X-Correlation-ID" } } }
    ]]):format(up.port))
  end)
  teardown(function()
    g:stop()
    up:stop()
  end)

  it("adds headers to proxied responses", function()
    local res = g:request("GET", "/add")
    assert.equal("moongate", res.headers["x-gateway"])
    assert.equal("php", res.headers["x-powered-by"])
  end)

  it("sets and removes headers of proxied responses (header_filter)", function()
    local res = g:request("GET", "/rewrite")
    assert.equal("gw", res.headers["server"])
    assert.is_nil(res.headers["x-powered-by"])
  end)

  it("works on handler responses", function()
    local res = g:request("GET", "/handler")
    assert.equal("moongate", res.headers["x-gateway"])
    assert.equal("1", res.headers["x-keep"])
    assert.is_nil(res.headers["x-drop"])
  end)

  it("request-id sends and returns the trace id under another header", function()
    local res = g:request("GET", "/corr", { headers = { ["X-Request-ID"] = "corr-42" } })
    assert.equal("corr-42", res.body)
    assert.equal("corr-42", res.headers["x-correlation-id"])
    assert.equal("corr-42", res.headers["x-request-id"])
  end)
end)
