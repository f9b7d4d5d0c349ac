-- rate-limit policy = "redis" when Redis cannot answer: "deny" answers with
-- the Redis error kind as the gateway answers its own errors (503, the
-- X-Gateway-Error header, the body with status and trace id, the access
-- log's "error", moongate_request_errors_total), and "local" keeps this
-- node's share, a whole number of requests.
local helpers = require "spec.helpers"

describe("rate-limit policy = \"redis\" with Redis down", function()
  local g, admin

  setup(function()
    admin = helpers.free_port()
    g = helpers.start(([[
      admin_listen "127.0.0.1:%d"
      error_header "X-Gateway-Error"
      redis "main" { address = "127.0.0.1:%d", nodes = 3 }
      route { path = "/deny", plugins = { ["rate-limit"] = { rate = 20, policy = "redis", redis = "main",
                                                            on_redis_error = "deny" } },
              handler = function() return 200, "ok" end }
      route { path = "/local", plugins = { ["rate-limit"] = { rate = 0.001, burst = 20, policy = "redis",
                                                             redis = "main" } },
              handler = function() return 200, "ok" end }
    ]]):format(admin, helpers.free_port()))
  end)
  teardown(function() if g then g:stop() end end)

  it("deny: answers 503 with the kind, like the gateway's own errors", function()
    local res = g:request("GET", "/deny", { headers = { ["X-Request-ID"] = "deny-1" } })
    assert.equal(503, res.status)
    assert.equal("redis_refused", res.headers["x-gateway-error"])
    assert.same({ error = "shared limit store unavailable", status = 503, trace_id = "deny-1" }, res.json)
    assert.equal("redis_refused", g:entry("deny-1").error)
    local s = gw.tcp()
    s:settimeout(5000)
    assert(s:connect("127.0.0.1", admin))
    s:send("GET /metrics HTTP/1.0\r\n\r\n")
    local m = s:receive("*a")
    s:close()
    assert.truthy(m:find('moongate_request_errors_total{worker="0",route="/deny",kind="redis_refused"} 1', 1, true), m)
  end)

  it("local: this node's share of the burst is a whole number, in the header and in the bucket", function()
    local passed, limit = 0, nil
    for _ = 1, 10 do
      local res = g:request("GET", "/local")
      limit = limit or res.headers["ratelimit-limit"]
      if res.status == 200 then passed = passed + 1 end
    end
    assert.equal("6", limit) -- floor(20 / 3)
    assert.equal(6, passed)
  end)
  it("logs the fallbacks once per 10 s per limit and policy, saying what each figure counts", function()
    local function logged(pattern)
      for _ = 1, 100 do
        local log = g:error_log()
        if log:find(pattern) then return log end
        gw.sleep(0.02)
      end
      return g:error_log()
    end
    local first = 'rate%-limit /deny: redis main unavailable %(redis_refused: [^)]*%): on_redis_error = .-deny.- applies; '
      .. "the first report of this limit and policy; 1 redis_refused fallbacks of this limit and policy in this process so far"
    assert.matches(first, logged(first))
    for _ = 1, 4 do assert.equal(503, g:request("GET", "/deny").status) end -- not logged: within 10 s
    gw.sleep(10.1)
    assert.equal(503, g:request("GET", "/deny").status)
    local second = 'applies; 4 not logged in the 1%d%.%d s since the last report of this limit and policy '
      .. "%(redis_refused 4%); 6 redis_refused fallbacks of this limit and policy in this process so far"
    assert.matches(second, logged(second))
  end)
end)
