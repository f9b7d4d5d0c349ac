local helpers = require "spec.helpers"

describe("cors", function()
  local g
  setup(function()
    g = helpers.start([[
      route { path = "/api", plugins = { cors = { origins = { "https://app.example" }, credentials = true,
                                                   expose_headers = { "X-Total" } } },
              handler = function() return 200, "data" end }
    ]])
  end)
  teardown(function() g:stop() end)

  it("answers a preflight itself", function()
    local res = g:request("OPTIONS", "/api", { headers = { Origin = "https://app.example",
      ["Access-Control-Request-Method"] = "PUT", ["Access-Control-Request-Headers"] = "X-Token" } })
    assert.equal(204, res.status)
    assert.equal("https://app.example", res.headers["access-control-allow-origin"])
    assert.truthy(res.headers["access-control-allow-methods"]:find("PUT", 1, true))
    assert.equal("X-Token", res.headers["access-control-allow-headers"])
    assert.equal("true", res.headers["access-control-allow-credentials"])
    assert.equal("3600", res.headers["access-control-max-age"])
  end)

  it("adds headers to allowed origins only", function()
    local res = g:request("GET", "/api", { headers = { Origin = "https://app.example" } })
    assert.equal("data", res.body)
    assert.equal("https://app.example", res.headers["access-control-allow-origin"])
    assert.equal("X-Total", res.headers["access-control-expose-headers"])
    local other = g:request("GET", "/api", { headers = { Origin = "https://evil.example" } })
    assert.is_nil(other.headers["access-control-allow-origin"])
    assert.equal(403, g:request("OPTIONS", "/api", { headers = { Origin = "https://evil.example",
      ["Access-Control-Request-Method"] = "GET" } }).status)
  end)
end)
