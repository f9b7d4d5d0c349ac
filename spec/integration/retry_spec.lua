-- When the proxy resends a request, and when it must not (docs/proxy.md
-- "Retries"): non-idempotent requests are never resent once written (unless
-- the upstream opts in), dead pooled connections are replaced by new ones,
-- a timeout is never retried on the same target, the deadline bounds
-- retries, and the last usable target is never ejected.
local helpers = require "spec.helpers"
local upstream = require "spec.upstream"

local function wait_for(pred, seconds)
  local deadline = gw.monotonic_ms() + (seconds or 2) * 1000
  while not pred() and gw.monotonic_ms() < deadline do gw.sleep(0.02) end
  return pred()
end

describe("retries", function()
  local a, b, g

  after_each(function()
    if g then g:stop() end
    if a then a:stop() end
    if b then b:stop() end
    g, a, b = nil, nil, nil
  end)

  describe("on a pooled connection the upstream closes", function()
    before_each(function()
      a = upstream.start(function(req) return 200, {}, "ok " .. req.method end)
      g = helpers.start(([[
        error_header "X-Gateway-Error"
        upstream "one" { targets = { "127.0.0.1:%d" } }
        upstream "opted" { targets = { "127.0.0.1:%d" }, retry_non_idempotent = true }
        route { path = "/one/{x*}", upstream = "one" }
        route { path = "/opted/{x*}", upstream = "opted" }
      ]]):format(a.port, a.port))
    end)

    it("does not send a bodyless POST twice", function()
      assert.equal(200, g:request("GET", "/one/warm").status) -- pools a connection
      a.close_reused = true
      local res = g:request("POST", "/one/order")
      assert.equal(502, res.status)
      assert.equal("reset", res.headers["x-gateway-error"])
      gw.sleep(0.1)
      assert.equal(1, a.methods.POST) -- the upstream received it once
    end)

    it("resends it when the upstream opts in with retry_non_idempotent", function()
      assert.equal(200, g:request("GET", "/opted/warm").status)
      a.close_reused = true
      local res = g:request("POST", "/opted/order")
      assert.equal(200, res.status)
      assert.equal("ok POST", res.body)
      assert.equal(2, a.methods.POST)
    end)

    it("replaces 30 dead pooled connections with new ones: 10 GETs, all 200", function()
      a.handler = function(req) if req.path == "/one/fill" then gw.sleep(0.3) end; return 200, {}, "ok" end
      local fns = {}
      for i = 1, 30 do fns[i] = function() return g:request("GET", "/one/fill").status end end
      for _, status in ipairs(helpers.parallel(fns)) do assert.equal(200, status) end
      assert.equal(30, a.connections) -- 30 connections, now idle in the pool
      a.close_reused = true           -- the upstream closes each of them at its next request
      for i = 1, 10 do
        local res = g:request("GET", "/one/x" .. i, { headers = { ["X-Request-ID"] = "dead-pool-" .. i } })
        assert.equal(200, res.status)
      end
      -- each GET was resent once, on a new connection (attempts 2), never on another dead one
      local e = g:entry("dead-pool-1")
      assert.equal(2, e.attempts)
    end)
  end)

  describe("after a read timeout", function()
    local function start(targets, extra)
      g = helpers.start(([[
        error_header "X-Gateway-Error"
        upstream "up" {
          targets = { %s },
          timeouts = { read = "400ms" },
          retries = 2,
          %s
        }
        route { path = "/r/{x*}", upstream = "up" }
        route { path = "/tight/{x*}", upstream = "up", timeout = "405ms" }
      ]]):format(targets, extra or ""))
    end

    it("does not resend to the same single target: one attempt, about one read timeout", function()
      a = upstream.start(function() gw.sleep(1.5); return 200, {}, "late" end)
      start(('"127.0.0.1:%d"'):format(a.port))
      local t0 = gw.monotonic_ms()
      local res = g:request("GET", "/r/slow", { headers = { ["X-Request-ID"] = "rt-1" } })
      local took = gw.monotonic_ms() - t0
      assert.equal(504, res.status)
      assert.equal("read_timeout", res.headers["x-gateway-error"])
      assert.is_true(took >= 390 and took < 750, "took " .. took .. " ms for a 400 ms read timeout")
      assert.equal(1, g:entry("rt-1").attempts)
      gw.sleep(0.2)
      assert.equal(1, a.requests)
    end)

    it("resends an idempotent request to the other target, never back to the first", function()
      a = upstream.start(function() gw.sleep(1.5); return 200, {}, "a" end)
      b = upstream.start(function() return 200, {}, "b" end)
      start(('"127.0.0.1:%d", "127.0.0.1:%d"'):format(a.port, b.port))
      local res = g:request("GET", "/r/1") -- round robin: the first request goes to a
      assert.equal(200, res.status)
      assert.equal("b", res.body)
      assert.equal(1, a.requests)
      assert.equal(1, b.requests)
      -- both time out now: one attempt on each, and the retry budget (2) does not bring it back
      b.handler = function() gw.sleep(1.5); return 200, {}, "b" end
      local t0 = gw.monotonic_ms()
      res = g:request("GET", "/r/2", { headers = { ["X-Request-ID"] = "rt-2" } })
      local took = gw.monotonic_ms() - t0
      assert.equal(504, res.status)
      assert.is_true(took >= 790 and took < 1150, "two read timeouts of 400 ms took " .. took .. " ms")
      assert.equal(2, g:entry("rt-2").attempts)
      gw.sleep(0.1)
      assert.equal(4, a.requests + b.requests)
    end)

    it("does not resend a POST", function()
      a = upstream.start(function() gw.sleep(1.5); return 200, {}, "a" end)
      b = upstream.start(function() return 200, {}, "b" end)
      start(('"127.0.0.1:%d", "127.0.0.1:%d"'):format(a.port, b.port))
      local res = g:request("POST", "/r/1", { body = "x" })
      assert.equal(504, res.status)
      assert.equal(0, b.requests)
    end)

    it("starts no retry the deadline would cut short", function()
      a = upstream.start(function() gw.sleep(1.5); return 200, {}, "a" end)
      b = upstream.start(function() return 200, {}, "b" end)
      start(('"127.0.0.1:%d", "127.0.0.1:%d"'):format(a.port, b.port))
      local res = g:request("GET", "/tight/1") -- 400 ms on a leaves 5 ms of the route's 405
      assert.equal(504, res.status)
      gw.sleep(0.1)
      assert.equal(0, b.requests)
    end)
  end)

  it("retries a refused connect on the same single target once", function()
    a = upstream.start(function() return 200 end)
    local port = a.port
    a:stop()
    a = nil
    g = helpers.start(([[
      error_header "X-Gateway-Error"
      upstream "gone" { targets = { "127.0.0.1:%d" }, retries = 3 }
      route { path = "/gone", upstream = "gone" }
    ]]):format(port))
    local res = g:request("GET", "/gone", { headers = { ["X-Request-ID"] = "refused-1" } })
    assert.equal(502, res.status)
    assert.equal("refused", res.headers["x-gateway-error"])
    assert.equal(2, g:entry("refused-1").attempts)
  end)

  it("keeps trying a one-target upstream that fails: its errors, never 503 for the ejection time", function()
    a = upstream.start(function(req, res) res:reset() end)
    g = helpers.start(([[
      error_header "X-Gateway-Error"
      upstream "one" { targets = { "127.0.0.1:%d" }, health = { passive = { failures = 3, eject = "10s" } } }
      route { path = "/one/{x*}", upstream = "one" }
    ]]):format(a.port))
    for i = 1, 6 do
      local res = g:request("GET", "/one/" .. i)
      assert.equal(502, res.status)
      assert.equal("reset", res.headers["x-gateway-error"])
    end
    a.handler = function() return 200, {}, "back" end
    local res = g:request("GET", "/one/healed")
    assert.equal(200, res.status) -- at once, not after 10 s of 503
    assert.equal("back", res.body)
    assert.truthy(g:error_log():find("last usable target", 1, true))
    assert.falsy(g:error_log():find("ejected for", 1, true))
  end)
end)
