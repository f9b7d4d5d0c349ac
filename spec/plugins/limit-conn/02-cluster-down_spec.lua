-- limit-conn scope = "cluster" when Redis cannot answer: "deny" answers with
-- the Redis error kind as the gateway answers its own errors.
local helpers = require "spec.helpers"

describe("limit-conn scope = \"cluster\" with Redis down", function()
  it("deny: answers 503 with the kind in X-Gateway-Error, the body and the access log", function()
    local g = helpers.start(([[
      error_header "X-Gateway-Error"
      redis "main" { address = "127.0.0.1:%d" }
      route { path = "/deny", plugins = { ["limit-conn"] = { max = 2, scope = "cluster", redis = "main",
                                                            on_redis_error = "deny" } },
              handler = function() return 200, "ok" end }
    ]]):format(helpers.free_port()))
    local res = g:request("GET", "/deny", { headers = { ["X-Request-ID"] = "conn-deny-1" } })
    assert.equal(503, res.status)
    assert.equal("redis_refused", res.headers["x-gateway-error"])
    assert.same({ error = "shared limit store unavailable", status = 503, trace_id = "conn-deny-1" }, res.json)
    assert.equal("redis_refused", g:entry("conn-deny-1").error)
    g:stop()
  end)
end)
