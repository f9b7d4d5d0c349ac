-- A fleet: three gatewayd processes on one Redis share their limits (the
-- rate-limit plugin's redis policy, an upstream's max_concurrency with scope
-- = "cluster"), a dead gateway's permits come back after the lease, and when
-- Redis goes away each on_redis_error policy does what it says, no request
-- waits past its deadline, and the limits are shared again once it is back.
local helpers = require "spec.helpers"
local redis = require "spec.redis"
local upstream = require "spec.upstream"

local N, BURST = 60, 10 -- the shared rate limit: 60/s, burst 10

-- A keep-alive client on one gateway: req(path, headers) -> response (reconnects when needed).
local function client(g)
  local s
  return function(path, headers)
    for _ = 1, 3 do
      if not s then s = g:connect(5000) end
      local lines = { "GET " .. path .. " HTTP/1.1", "Host: fleet" }
      for k, v in pairs(headers or {}) do lines[#lines + 1] = k .. ": " .. v end
      local ok = s:send(table.concat(lines, "\r\n") .. "\r\n\r\n")
      local res = ok and helpers.read_response(s)
      if res then
        if (res.headers["connection"] or ""):lower() == "close" then s:close(); s = nil end
        return res
      end
      s:close()
      s = nil
    end
    error("no response from the gateway on " .. path)
  end
end

describe("a fleet of gateways on one Redis", function()
  local r, up, gws = nil, nil, {}

  local function config(redis_address)
    return ([[
      error_header "X-Gateway-Error"
      timeouts { request = "2s" }
      redis "main" { address = "%s", nodes = 3, timeouts = { connect = "200ms", command = "100ms" } }
      upstream "limited" { targets = { "127.0.0.1:%d" }, max_concurrency = 5, scope = "cluster", redis = "main",
                           lease = "1500ms", on_redis_error = "deny" }
      upstream "queued" { targets = { "127.0.0.1:%d" }, max_concurrency = 5, scope = "cluster", redis = "main",
                          on_busy = { queue = 200, queue_timeout = "10s" } }
      upstream "local-fallback" { targets = { "127.0.0.1:%d" }, max_concurrency = 6, scope = "cluster",
                                  redis = "main", on_redis_error = "local", retries = 0 }
      route { path = "/limited/{x*}", upstream = "limited" }
      route { path = "/queued/{x*}", upstream = "queued", timeout = "20s" }
      route { path = "/local-fallback/{x*}", upstream = "local-fallback" }
      local function rl(extra)
        local conf = { rate = %d, burst = %d, policy = "redis", redis = "main", key = "header:X-Key" }
        for k, v in pairs(extra or {}) do conf[k] = v end
        return { ["rate-limit"] = conf }
      end
      route { path = "/rl", plugins = rl(), handler = function() return 200, "ok" end }
      route { path = "/rl-allow", plugins = rl({ rate = 1, burst = 1, on_redis_error = "allow" }),
              handler = function() return 200, "ok" end }
      route { path = "/rl-deny", plugins = rl({ rate = 1, burst = 1, on_redis_error = "deny" }),
              handler = function() return 200, "ok" end }
      route { path = "/rl-local", plugins = rl({ rate = 0.3, burst = 9, on_redis_error = "local" }),
              handler = function() return 200, "ok" end }
      route { path = "/conn-local", plugins = { ["limit-conn"] = { max = 6, scope = "cluster", redis = "main",
                                                                  on_redis_error = "local" } },
              handler = function() gw.sleep(0.3); return 200, "ok" end }
    ]]):format(redis_address, up.port, up.port, up.port, N, BURST)
  end

  setup(function()
    r = redis.start()
    up = upstream.start(function(req)
      local ms = tonumber(req.target:match("ms=(%d+)")) or 50
      gw.sleep(ms / 1000)
      return 200, {}, "done"
    end)
    for i = 1, 3 do gws[i] = helpers.start(config(r.address)) end
  end)
  teardown(function()
    if r then r:stop() end -- first: a gateway that fails to stop must not leave a redis-server behind
    if up then up:stop() end
    for _, g in ipairs(gws) do if not g.killed then g:stop() end end
  end)

  it("holds a rate limit of N per second per key within 5 % across three gateways under load", function()
    local allowed, refused = 0, 0
    local stop_at
    local fns = {}
    for c = 1, 24 do
      local req = client(gws[c % 3 + 1])
      fns[c] = function()
        while gw.monotonic_ms() < stop_at do
          local res = req("/rl", { ["X-Key"] = "fleet-key" })
          if res.status == 200 then allowed = allowed + 1
          elseif res.status == 429 then refused = refused + 1
          else error("unexpected status " .. res.status .. ": " .. res.body) end
        end
      end
    end
    local t0 = gw.monotonic_ms()
    stop_at = t0 + 4000
    helpers.parallel(fns)
    local elapsed = (gw.monotonic_ms() - t0) / 1000
    local expected = BURST + N * elapsed
    assert.is_true(refused > allowed, ("not under load: %d allowed, %d refused"):format(allowed, refused))
    assert.is_true(math.abs(allowed - expected) <= 0.05 * expected,
      ("allowed %d in %.2f s, expected %.0f (+-5 %%)"):format(allowed, elapsed, expected))
  end)

  it("never lets more than max_concurrency = 5 reach the upstream while 100 clients hit all three", function()
    up.max_inflight, up.inflight = 0, 0
    local ok, busy = 0, 0
    local stop_at = gw.monotonic_ms() + 3000
    local fns = {}
    for c = 1, 100 do
      local req = client(gws[c % 3 + 1])
      fns[c] = function()
        while gw.monotonic_ms() < stop_at do
          local res = req("/limited/x?ms=30")
          if res.status == 200 then ok = ok + 1
          elseif res.status == 429 and res.headers["x-gateway-error"] == "busy" then busy = busy + 1
          else error("unexpected " .. res.status .. " " .. tostring(res.headers["x-gateway-error"])) end
        end
      end
    end
    helpers.parallel(fns)
    assert.is_true(up.max_inflight <= 5, "the upstream saw " .. up.max_inflight .. " at once")
    assert.is_true(up.max_inflight >= 3, "the limit was hardly used: " .. up.max_inflight)
    assert.is_true(ok > 20 and busy > ok, ("%d ok, %d busy"):format(ok, busy))
    assert.equal(0, r:client():zcard("moongate:sem:upstream:limited"))
  end)

  it("queues across the fleet by polling: everyone gets through, never more than 5 at once", function()
    up.max_inflight, up.inflight = 0, 0
    local fns = {}
    for c = 1, 60 do
      local req = client(gws[c % 3 + 1])
      fns[c] = function() return req("/queued/x?ms=20").status end
    end
    local statuses = helpers.parallel(fns)
    for _, s in ipairs(statuses) do assert.equal(200, s) end
    assert.is_true(up.max_inflight <= 5, "the upstream saw " .. up.max_inflight .. " at once")
  end)

  it("gives a gateway's permits back after the lease when it dies with them (kill -9)", function()
    local victim = gws[3]
    local socks = {} -- kept open: a closed client would give its permit back
    for c = 1, 5 do
      socks[c] = victim:connect()
      socks[c]:send("GET /limited/x?ms=8000 HTTP/1.1\r\nHost: x\r\n\r\n")
    end
    local c = r:client()
    for _ = 1, 100 do
      if c:zcard("moongate:sem:upstream:limited") == 5 then break end
      gw.sleep(0.02)
    end
    assert.equal(5, c:zcard("moongate:sem:upstream:limited"))
    gw.process.kill(victim.pid, gw.process.SIGKILL)
    helpers.wait_exit(victim.pid, 5)
    victim.killed = true
    local t_kill = gw.monotonic_ms()
    local req = client(gws[1])
    assert.equal(429, req("/limited/x?ms=1").status) -- the dead gateway's leases still count
    local back
    repeat
      gw.sleep(0.05)
      back = req("/limited/x?ms=1").status == 200 and gw.monotonic_ms() - t_kill
    until back or gw.monotonic_ms() - t_kill > 6000
    assert.truthy(back, "the permits never came back")
    assert.is_true(back >= 1000 and back < 4000, "came back after " .. back .. " ms (lease 1500 ms)")
    gws[3] = helpers.start(config(r.address))
  end)

  it("applies on_redis_error when Redis is gone, fails nothing past its deadline, and shares again once it is back", function()
    local g1, g2 = gws[1], gws[2]
    local a, b = client(g1), client(g2)
    local function timed(req, path, headers)
      local t0 = gw.monotonic_ms()
      local res = req(path, headers)
      local took = gw.monotonic_ms() - t0
      assert.is_true(took < 1500, path .. " took " .. took .. " ms")
      return res
    end
    for _, how in ipairs({ "stopped", "paused" }) do
      if how == "stopped" then r:stop() else r:start(); gw.sleep(0.1); r:pause() end
      local key = { ["X-Key"] = "outage-" .. how }
      -- allow: every request passes
      for _ = 1, 4 do assert.equal(200, timed(a, "/rl-allow", key).status) end
      -- deny: 503, and the upstream limit with on_redis_error = "deny" likewise, with the kind
      local res = timed(a, "/rl-deny", key)
      assert.equal(503, res.status)
      assert.matches("^redis_", res.headers["x-gateway-error"])
      assert.equal("shared limit store unavailable", res.json.error)
      res = timed(b, "/limited/x?ms=1")
      assert.equal(503, res.status)
      assert.matches("^redis_", res.headers["x-gateway-error"])
      -- local: each gateway keeps its share (burst 9 / 3 nodes = 3 here, at 0.1/s)
      local passed = 0
      for _ = 1, 6 do if timed(a, "/rl-local", key).status == 200 then passed = passed + 1 end end
      assert.equal(3, passed)
      -- an upstream with on_redis_error = "local": max_concurrency 6 / 3 nodes = 2 on this gateway
      up.max_inflight, up.inflight = 0, 0
      local fns = {}
      for i = 1, 6 do fns[i] = function() return timed(client(g1), "/local-fallback/x?ms=200").status end end
      local st = helpers.parallel(fns)
      local okc = 0
      for _, s in ipairs(st) do if s == 200 then okc = okc + 1 end end
      assert.equal(2, okc)
      assert.equal(2, up.max_inflight)
      -- limit-conn with scope = "cluster" falls back the same way (6 / 3 = 2 per gateway)
      fns = {}
      for i = 1, 4 do fns[i] = function() return timed(client(g2), "/conn-local").status end end
      st = helpers.parallel(fns)
      okc = 0
      for _, s in ipairs(st) do if s == 200 then okc = okc + 1 end end
      assert.equal(2, okc)
    end
    r:resume()
    -- Redis is back (empty: it was restarted): once the gateways' back-off is over (at most
    -- 500 ms) the limits are shared again, across gateways
    for _, req in ipairs({ a, b }) do
      local t0 = gw.monotonic_ms()
      while timed(req, "/rl-deny", { ["X-Key"] = "probe" .. tostring(req) }).status == 503 do
        assert.is_true(gw.monotonic_ms() - t0 < 3000, "Redis is back but the gateway does not reach it")
        gw.sleep(0.05)
      end
    end
    local key = { ["X-Key"] = "after-outage" }
    local passed = 0
    for i = 1, 30 do
      if timed(i % 2 == 0 and a or b, "/rl-deny", key).status == 200 then passed = passed + 1 end
    end
    assert.equal(1, passed) -- burst 1 for the whole fleet, not 1 per gateway
    assert.equal(1, r:client():exists("moongate:rl:/rl-deny|header:X-Key|after-outage"))
    -- every fallback was counted, by limit, policy and kind, and logged once per interval, not per request
    local _, out = g1:ctl("status", "--json")
    local fb = {}
    for _, f in ipairs(gw.json.decode(out).redis.pools.main.fallbacks) do
      fb[f.limit .. " " .. f.policy] = (fb[f.limit .. " " .. f.policy] or 0) + f.count
    end
    assert.equal(8, fb["rate-limit /rl-allow allow"])
    assert.equal(12, fb["rate-limit /rl-local local"])
    local log
    for _ = 1, 100 do -- the error log is written by a thread of its own
      log = g1:error_log()
      if log:find("rate%-limit /rl%-allow: redis main unavailable") then break end
      gw.sleep(0.02)
    end
    local _, lines = log:gsub("rate%-limit /rl%-allow: redis main unavailable", "")
    assert.equal(1, lines)
    assert.matches("rate%-limit /rl%-allow: redis main unavailable %(redis_refused", log)
  end)
end)
