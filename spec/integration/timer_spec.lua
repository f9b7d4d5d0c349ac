-- gw.timer and the init_worker phase in a real gateway.
local helpers = require "spec.helpers"
local upstream = require "spec.upstream"

describe("gw.timer and init_worker", function()
  it("runs periodic and one-shot timers in the worker", function()
    local g = helpers.start(([[
      plugins_dir "%s/spec/fixtures/plugins"
      shared_dict("ticks", "64k")
      route { path = "/ticks", plugins = { ticker = true },
              handler = function() return 200, { n = gw.shared.ticks:get("n") or 0 } end }
      route { path = "/later", handler = function(ctx)
        gw.timer.at(0.05, function(v) gw.shared.ticks:set("later", v) end, "done")
        return 200, "scheduled"
      end }
      route { path = "/later-value", handler = function() return 200, { v = gw.shared.ticks:get("later") } end }
      route { path = "/cancel", handler = function()
        local t = gw.timer.every(0.01, function() gw.shared.ticks:incr("c", 1, 0) end)
        t:cancel()
        gw.sleep(0.05)
        return 200, { c = gw.shared.ticks:get("c") }
      end }
    ]]):format(os.getenv("PWD")))
    gw.sleep(0.4)
    local n = g:request("GET", "/ticks").json.n
    assert.is_true(n >= 4 and n <= 12, "ticks: " .. n)
    assert.equal("scheduled", g:request("GET", "/later").body)
    gw.sleep(0.15)
    assert.equal("done", g:request("GET", "/later-value").json.v)
    assert.is_nil(g:request("GET", "/cancel").json.c)
    g:stop()
  end)
end)

-- No wait ends before the time asked for. A loop that arms a timer from a
-- stale clock (libevent's coarse clock, or a time cached at the start of a
-- loop pass that Lua then spent milliseconds in) fires early as soon as
-- something else wakes the loop meanwhile. Here: CPU burnt before the wait,
-- an idle worker before some rounds, and a client poking the worker every few
-- milliseconds while the wait runs.
describe("waits never end early", function()
  local g, up
  setup(function()
    up = upstream.start(function() gw.sleep(3); return 200, {}, "slow" end)
    g = helpers.start(([[
      local function burn(ms)
        local t0 = gw.monotonic_ms()
        while gw.monotonic_ms() - t0 < ms do end
      end
      route { path = "/ping", handler = function() return 200, "pong" end }
      route { path = "/sleep/{burn}", handler = function(ctx)
        burn(tonumber(ctx.params.burn))
        local t0 = gw.monotonic_ms()
        gw.sleep(0.1)
        return 200, { waited = gw.monotonic_ms() - t0 }
      end }
      route { path = "/sema/{burn}", handler = function(ctx)
        local sem = gw.semaphore("never-free", 1)
        sem:try_acquire(1) -- held by this request until it ends: the next acquire must wait
        burn(tonumber(ctx.params.burn))
        local t0 = gw.monotonic_ms()
        local ok, err = sem:acquire(1, 0.1)
        return 200, { waited = gw.monotonic_ms() - t0, err = err }
      end }
      route { path = "/tcp/{burn}", handler = function(ctx)
        local s = gw.tcp()
        s:settimeout(100)
        assert(s:connect("127.0.0.1", {{PORT}})) -- ourselves: a connection that never answers
        burn(tonumber(ctx.params.burn))
        local t0 = gw.monotonic_ms()
        local _, err = s:receive("*l")
        s:close()
        return 200, { waited = gw.monotonic_ms() - t0, err = err }
      end }
      route { path = "/http/{burn}", handler = function(ctx)
        burn(tonumber(ctx.params.burn))
        local t0 = gw.monotonic_ms()
        local _, err = gw.http.request { url = "http://127.0.0.1:{{PORT}}/slow", timeout = 0.1 }
        return 200, { waited = gw.monotonic_ms() - t0, err = err }
      end }
      route { path = "/slow", handler = function() gw.sleep(1); return 200, "late" end }
      route { path = "/deadline", timeout = "100ms", handler = function() gw.sleep(1) end }
      route { path = "/co-sleep", handler = function()
        local ok, err = pcall(coroutine.wrap(function() gw.sleep(0.02) end))
        return 200, { ok = ok, err = err }
      end }
      upstream "one" { targets = { "127.0.0.1:%d" }, max_concurrency = 1,
                       on_busy = { queue = 5, queue_timeout = "100ms" } }
      route { path = "/queued/{x*}", upstream = "one" }
    ]]):format(up.port))
  end)
  teardown(function()
    g:stop()
    up:stop()
  end)

  -- One request to path, with a client poking the worker every 3 ms meanwhile.
  local function measured(path)
    local done = false
    local res = helpers.parallel({
      function()
        local t0 = gw.monotonic_ms()
        local r = g:request("GET", path)
        done = true
        r.client_ms = gw.monotonic_ms() - t0
        return r
      end,
      function()
        while not done do
          g:request("GET", "/ping")
          gw.sleep(0.003)
        end
      end,
    })
    return res[1]
  end

  local function check(path, want_err)
    local r = measured(path)
    assert.equal(200, r.status, r.body)
    assert.equal(want_err, r.json.err)
    assert.is_true(r.json.waited >= 100, path .. ": the handler waited " .. r.json.waited .. " ms")
    assert.is_true(r.client_ms >= 100, path .. ": the client waited " .. r.client_ms .. " ms")
    return r.json.waited
  end

  it("gw.sleep(0.1) takes at least 100 ms, also right after the worker was idle", function()
    local shortest = math.huge
    for round = 1, 16 do
      if round % 8 == 1 then gw.sleep(1.2) end -- the worker has nothing to do for a second
      shortest = math.min(shortest, check("/sleep/" .. (round % 3) * 4))
    end
    assert.is_true(shortest >= 100, "shortest " .. shortest)
  end)

  it("semaphore queue, gw.tcp and gw.http.request timeouts take at least what was asked", function()
    gw.sleep(1.2)
    for round = 1, 6 do
      check("/sema/" .. (round % 2) * 6, "timeout")
      check("/tcp/" .. (round % 2) * 6, "timeout")
      check("/http/" .. (round % 2) * 6, "timeout")
    end
  end)

  it("the request deadline and an upstream's queue timeout do not fire early", function()
    local function ended_after(path, status)
      local r = measured(path)
      assert.equal(status, r.status, path)
      local e = g:entry(r.headers["x-request-id"])
      assert.is_true(e.duration_ms >= 100, path .. " ended after " .. e.duration_ms .. " ms")
    end
    for round = 1, 6 do
      if round == 1 then gw.sleep(1.2) end
      ended_after("/deadline", 504)
    end
    local holder = g:connect()
    holder:send("GET /queued/hold HTTP/1.1\r\nHost: a\r\n\r\n") -- takes the one permit for 3 s
    gw.sleep(0.05)
    for _ = 1, 6 do ended_after("/queued/x", 503) end
    holder:close()
  end)

  it("refuses gw.sleep in a coroutine of your own and leaves no timer armed behind", function()
    for _ = 1, 3 do
      local r = g:request("GET", "/co-sleep")
      assert.equal(200, r.status)
      assert.is_false(r.json.ok)
      assert.truthy(r.json.err:find("coroutine of your own", 1, true), r.json.err)
    end
    gw.sleep(0.1) -- when the refused sleep's timer would have fired
    for _ = 1, 5 do assert.equal("pong", g:request("GET", "/ping").body) end
  end)
end)
