-- A Redis that does not answer costs one command timeout, then nothing per
-- request: the pool backs off and checks with a probe of its own, so
-- requests during the back-off fail at once (docs/cluster.md "Failures").
-- A frozen redis-server (SIGSTOP) still completes TCP handshakes (the
-- kernel does), so being connected must not count as answering. An address
-- that is no Redis (an HTTP server) backs off too instead of costing a
-- connection per request.
local helpers = require "spec.helpers"
local redis = require "spec.redis"
local upstream = require "spec.upstream"

describe("a Redis that does not answer", function()
  local r, rp, http, g

  setup(function()
    r = redis.start()
    rp = redis.start({ password = "pw" })
    http = upstream.start(function() return 400, {}, "not redis" end)
    g = helpers.start(([[
      redis "hung" { address = "%s", timeouts = { command = "100ms" } }
      redis "hung-auth" { address = "%s", password = "pw", timeouts = { command = "100ms" } }
      redis "http" { address = "127.0.0.1:%d", timeouts = { command = "100ms" } }
      route { path = "/get", handler = function(ctx)
        local t0 = gw.monotonic_ms()
        local v, err, msg = gw.redis(ctx.request.args.r):get("k")
        return 200, { v = v, err = err, msg = msg, ms = gw.monotonic_ms() - t0 }
      end }
    ]]):format(r.address, rp.address, http.port))
  end)
  teardown(function()
    if r then r:stop() end -- first: a gateway that fails to stop must not leave a redis-server behind
    if rp then rp:stop() end
    if http then http:stop() end
    if g then g:stop() end
  end)

  -- n requests `gap` seconds apart on one keep-alive connection: their answers
  local function burst(name, n, gap)
    local s = g:connect(5000)
    local out = {}
    for i = 1, n do
      s:send("GET /get?r=" .. name .. " HTTP/1.1\r\nHost: x\r\n\r\n")
      out[i] = gw.json.decode(assert(helpers.read_response(s)).body)
      gw.sleep(gap)
    end
    s:close()
    return out
  end

  local function slow(answers)
    local n = 0
    for _, a in ipairs(answers) do if a.ms >= 80 then n = n + 1 end end
    return n
  end

  for _, case in ipairs({ { name = "hung", server = function() return r end },
                          { name = "hung-auth", server = function() return rp end } }) do
    it(case.name .. ": one request waits the command timeout, the others fail at once until Redis answers again",
       function()
      local server = case.server()
      assert.equal(gw.null, burst(case.name, 1, 0)[1].v) -- connected and answering
      server:pause()
      local answers = burst(case.name, 40, 0.03)
      -- gatewayctl status says the pool is failing, since when, and why
      local _, out = g:ctl("status", "--json")
      local st = gw.json.decode(out).redis.pools[case.name]
      assert.equal("failing", st.state)
      assert.same({ 1, 1 }, { st.pools, st.pools_failing })
      assert.is_true(st.failing_s > 0.5, out)
      assert.equal("redis_timeout", st.last_failure.kind)
      local _, text = g:ctl("status")
      assert.matches("state: FAILING in 1 of 1 worker pools for [%d.]+ s", text)
      assert.matches("last connection failure [%d.]+ s ago: redis_timeout", text)
      server:resume()
      for _, a in ipairs(answers) do assert.equal("redis_timeout", a.err, gw.json.encode(a)) end
      -- the first waits 100 ms; a probe of the pool's own checks Redis after each back-off: no request waits on it
      assert.is_true(slow(answers) <= 2, slow(answers) .. " of 40 requests waited the command timeout")
      assert.matches("not connected", answers[#answers].msg)
      -- back within the longest back-off (500 ms), margin for a loaded machine
      local t0, back = gw.monotonic_ms(), nil
      repeat
        back = burst(case.name, 1, 0.02)[1]
      until back.v or gw.monotonic_ms() - t0 > 3000
      assert.equal(gw.null, back.v, gw.json.encode(back))
      local _, out = g:ctl("status", "--json")
      assert.equal("ok", gw.json.decode(out).redis.pools[case.name].state)
    end)
  end

  it("says so in the error log when Redis answers again", function()
    local log
    for _ = 1, 100 do
      log = g:error_log()
      if log:find("redis hung %(.-%): answering again after") then break end
      gw.sleep(0.02)
    end
    assert.matches("redis hung %(.-%): answering again after [%d.]+ s of failures %(%d+ failed attempts%)", log)
  end)

  it("backs off from an address that is no Redis instead of connecting for every request", function()
    local answers = burst("http", 30, 0.01)
    for _, a in ipairs(answers) do assert.matches("^redis_", a.err) end
    assert.is_true(http.connections <= 6, http.connections .. " connections for 30 requests")
  end)
end)
