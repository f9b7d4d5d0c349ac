-- Concurrency limits: per-upstream (max_concurrency, reject or queue) and per
-- route/key (limit-conn) on the C semaphores shared by all workers; permits
-- come back on every path.
local helpers = require "spec.helpers"
local upstream = require "spec.upstream"

local function fire(g, n, path, opts)
  local fns = {}
  for i = 1, n do
    fns[i] = function() return g:request("GET", path .. (path:find("?", 1, true) and "&" or "?") .. "i=" .. i, opts) end
  end
  return helpers.parallel(fns)
end

local function count(results, status)
  local n = 0
  for _, r in ipairs(results) do if r.status == status then n = n + 1 end end
  return n
end

describe("concurrency limits", function()
  local up, g

  setup(function()
    up = upstream.start(function(req, res)
      local ms = tonumber(req.target:match("ms=(%d+)")) or 200
      if req.path:find("/reset", 1, true) then res:reset(); return end
      if req.path:find("/flaky", 1, true) and math.random() < 0.3 then res:reset(); return end
      gw.sleep(ms / 1000)
      return 200, {}, "ok"
    end)
    g = helpers.start(([[
      workers(2)
      error_header "X-Gateway-Error"
      upstream "reject2" { targets = { "127.0.0.1:%d" }, max_concurrency = 2, on_busy = "reject" }
      upstream "queue2" { targets = { "127.0.0.1:%d" }, max_concurrency = 2,
                          on_busy = { queue = 10, queue_timeout = "2s" } }
      upstream "short1" { targets = { "127.0.0.1:%d" }, max_concurrency = 1,
                          on_busy = { queue = 1, queue_timeout = "100ms", status = 503 },
                          timeouts = { read = "150ms" }, retries = 0 }
      route { path = "/reject/{x*}", upstream = "reject2" }
      route { path = "/queue/{x*}", upstream = "queue2" }
      route { path = "/short/{x*}", upstream = "short1" }
      route { path = "/short-deadline/{x*}", upstream = "short1", timeout = "50ms" }
      route { path = "/limited", plugins = { ["limit-conn"] = { max = 2, key = "header:X-User" } },
              handler = function() gw.sleep(0.2); return 200, "ok" end }
      route { path = "/leaky", plugins = { ["limit-conn"] = { max = 1 } },
              handler = function() error("plugin or handler bug") end }
      route { path = "/stats", handler = function() return 200, gw.semaphores() end }
    ]]):format(up.port, up.port, up.port), { workers = 2 })
  end)
  teardown(function()
    g:stop()
    up:stop()
  end)

  local function stats(name)
    return g:request("GET", "/stats").json[name]
  end

  it("rejects over max_concurrency at once with 429, across workers", function()
    up.max_inflight = 0
    local res = fire(g, 6, "/reject/x?ms=300")
    assert.equal(2, count(res, 200))
    assert.equal(4, count(res, 429))
    for _, r in ipairs(res) do
      if r.status == 429 then
        assert.equal("upstream busy", r.json.error)
        assert.equal("1", r.headers["retry-after"])
        assert.equal("busy", r.headers["x-gateway-error"])
        assert.equal(r.headers["x-request-id"], r.json.trace_id)
      end
    end
    assert.is_true(up.max_inflight <= 2, "the upstream saw " .. up.max_inflight .. " at once")
    local st = stats("upstream:reject2")
    assert.equal(0, st.in_use)
    assert.equal(4, st.rejected)
  end)

  it("queues FIFO up to the limit instead, and everyone gets through", function()
    up.max_inflight = 0
    local t0 = gw.monotonic_ms()
    local res = fire(g, 6, "/queue/x?ms=100")
    assert.equal(6, count(res, 200))
    assert.is_true(up.max_inflight <= 2)
    assert.is_true(gw.monotonic_ms() - t0 >= 280, "6 requests of 100 ms, 2 at a time, took less than 300 ms")
    local st = stats("upstream:queue2")
    assert.equal(0, st.in_use)
    assert.equal(0, st.queued)
    assert.is_true(st.longest_wait_ms >= 150)
  end)

  it("answers the configured status when the queue wait times out, and rejects when the queue is full", function()
    local res = fire(g, 3, "/short/x?ms=140")
    assert.equal(1, count(res, 200))
    -- one waits 100 ms and times out (503), one finds the queue (1) full (429)
    assert.equal(1, count(res, 503))
    assert.equal(1, count(res, 429))
    local st = stats("upstream:short1")
    assert.equal(1, st.timed_out)
    assert.equal(0, st.in_use)
  end)

  it("releases the permit on every path", function()
    -- upstream error (reset), read timeout, deadline, client gone while waiting upstream
    g:request("GET", "/short/reset")
    g:request("GET", "/short/x?ms=400")               -- read timeout (150 ms)
    g:request("GET", "/short-deadline/x?ms=400")      -- deadline (50 ms)
    local s = g:connect()
    s:send("GET /short/x?ms=300 HTTP/1.1\r\nHost: a\r\n\r\n")
    gw.sleep(0.05)
    s:close()
    -- client gone while queued
    local holder = g:connect()
    holder:send("GET /short/x?ms=300 HTTP/1.1\r\nHost: a\r\n\r\n")
    gw.sleep(0.05)
    local queued = g:connect()
    queued:send("GET /short/x?ms=10 HTTP/1.1\r\nHost: a\r\n\r\n")
    gw.sleep(0.02)
    queued:close()
    holder:close()
    gw.sleep(0.5)
    local st = stats("upstream:short1")
    assert.equal(0, st.in_use)
    assert.equal(0, st.queued)
    assert.equal(200, g:request("GET", "/short/x?ms=1").status)
  end)

  it("releases the permit when the client goes away while the response streams", function()
    up.handler = function(req, res)
      if not req.path:find("/trickle", 1, true) then return 200, {}, "ok" end
      res.sock:send("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
      for _ = 1, 50 do
        if not res.sock:send(("x"):rep(1000)) then return end
        gw.sleep(0.01)
      end
    end
    local s = g:connect()
    s:send("GET /short/trickle HTTP/1.1\r\nHost: a\r\n\r\n")
    assert(s:receive("*l")) -- the status line: the response is streaming
    gw.sleep(0.05)
    assert.equal(1, stats("upstream:short1").in_use)
    s:close()
    gw.sleep(0.2)
    assert.equal(0, stats("upstream:short1").in_use)
    up.handler = function(req) gw.sleep((tonumber(req.target:match("ms=(%d+)")) or 200) / 1000); return 200, {}, "ok" end
  end)

  it("ends a chaos run (aborts, a slow and flaky upstream) with every permit back", function()
    local fns = {}
    for i = 1, 40 do
      fns[i] = function()
        local path = ({ "/queue/flaky", "/reject/flaky", "/short/flaky", "/limited" })[i % 4 + 1]
        local s = g:connect(3000)
        s:send(("GET %s?ms=%d HTTP/1.1\r\nHost: a\r\nX-User: chaos\r\n\r\n"):format(path, math.random(10, 120)))
        if i % 3 == 0 then
          gw.sleep(math.random() * 0.1)
          s:close() -- the client gives up, wherever its request is
          return "aborted"
        end
        local res = helpers.read_response(s)
        s:close()
        return res and res.status or "closed"
      end
    end
    helpers.parallel(fns)
    gw.sleep(0.6)
    for name, st in pairs(g:request("GET", "/stats").json) do
      assert.equal(0, st.in_use, name .. " in_use")
      assert.equal(0, st.queued, name .. " queued")
    end
    -- (no bound on the upstream's own in-flight count here: an aborted request frees its permit at
    -- once, while the upstream may still be busy with it until it sees the connection closed)
  end)

  it("limits per key with limit-conn and releases a permit a failing request held", function()
    local res = fire(g, 4, "/limited", { headers = { ["X-User"] = "u1" } })
    assert.equal(2, count(res, 200))
    assert.equal(2, count(res, 429))
    assert.equal(200, g:request("GET", "/limited", { headers = { ["X-User"] = "u2" } }).status)
    -- a handler that raises while holding a permit: the teardown gives it back
    for _ = 1, 3 do assert.equal(500, g:request("GET", "/leaky").status) end
    for name, st in pairs(g:request("GET", "/stats").json) do
      assert.equal(0, st.in_use, name)
    end
  end)
end)

-- Every task owns what it takes and gives it back when it ends, however it
-- ends: the log phase, gw.timer runs, init_worker, header/body filter tasks,
-- spawned children; a request's phases hand theirs to the request.
describe("permits in every task", function()
  local up, g

  setup(function()
    up = upstream.start(function(req) return 200, { ["Content-Type"] = "text/plain" }, ("b"):rep(3000) end)
    local function hold(phase, how, sema)
      return ('{ hold = { phase = "%s", how = "%s", sema = "%s" } }'):format(phase, how, sema)
    end
    local routes = {}
    for _, how in ipairs({ "error", "keep", "spawn", "many", "release" }) do
      routes[#routes + 1] = ('route { path = "/log/%s", plugins = %s, handler = function() return 200, "ok" end }')
        :format(how, hold("log", how, "log-" .. how))
    end
    for _, phase in ipairs({ "header_filter", "body_filter" }) do
      for _, how in ipairs({ "error", "keep" }) do
        routes[#routes + 1] = ('route { path = "/%s/%s/{x*}", upstream = "app", plugins = %s }')
          :format(phase, how, hold(phase, how, phase .. "-" .. how))
        routes[#routes + 1] = ('route { path = "/%s-handler/%s", plugins = %s, handler = function() return 200, "ok" end }')
          :format(phase, how, hold(phase, how, phase .. "-handler-" .. how))
      end
    end
    g = helpers.start(([[
      plugins_dir "%s/spec/fixtures/plugins"
      upstream "app" { targets = { "127.0.0.1:%d" }, max_concurrency = 7 }
      %s
      route { path = "/stats/{name}", handler = function(ctx) return 200, gw.semaphore(ctx.params.name, 100):stats() end }
      route { path = "/many", plugins = %s, handler = function() return 200, "ok" end }
      route { path = "/access-sleep", plugins = %s, handler = function() return 200, "ok" end }
      route { path = "/access-deadline", timeout = "50ms", plugins = %s, handler = function() return 200, "ok" end }
      route { path = "/header_filter-sleep/{x*}", upstream = "app", plugins = %s }
      route { path = "/child", handler = function()
        gw.spawn(function()
          assert(gw.semaphore("child", 100):acquire(1, 1))
          gw.sleep(30)
        end)
        gw.sleep(0.01)
        return 200, "the child outlives this handler"
      end }
      route { path = "/timer/{how}", handler = function(ctx)
        local how = ctx.params.how
        local t
        t = gw.timer[how == "every" and "every" or "at"](0.001, function()
          local sem = gw.semaphore("timer-" .. how, 100)
          if how == "spawn" then
            gw.spawn(function() assert(sem:acquire(1, 1)); gw.sleep(30) end)
            gw.sleep(0.01)
            return
          end
          assert(sem:acquire(1, 1))
          if how == "error" then error("timer failing while holding a permit") end
          if how == "every" then gw.sleep(0.002); t:cancel() end
        end)
        return 200, "started"
      end }
      route { path = "/coroutine", handler = function()
        coroutine.wrap(function() gw.semaphore("own-coroutine", 100):try_acquire(1) end)()
        return 200, "taken in a coroutine nobody owns"
      end }
      route { path = "/resize", handler = function()
        local ok, err = pcall(gw.semaphore, "upstream:app", 1000)
        local ok2, err2 = pcall(gw.semaphore, "route:/x", 5)
        return 200, { ok = ok, err = err, route_ok = ok2 }
      end }
    ]]):format(os.getenv("PWD"), up.port, table.concat(routes, "\n"), hold("access", "many", "many-"),
      hold("access", "sleep", "access-sleep"), hold("access", "sleep", "access-deadline"),
      hold("header_filter", "sleep", "header_filter-sleep")))
  end)
  teardown(function()
    g:stop()
    up:stop()
  end)

  local function in_use(name)
    return g:request("GET", "/stats/" .. name).json.in_use
  end
  local function logged(text) -- the error log is written by a thread of its own: wait for the line
    for _ = 1, 100 do
      if g:error_log():find(text, 1, true) then return true end
      gw.sleep(0.02)
    end
    return false
  end
  local function five(path, status)
    for _ = 1, 5 do
      local r = g:request("GET", path)
      if status then assert.equal(status, r.status, path) end
    end
    gw.sleep(0.1) -- log phases and timers end after the response
  end

  it("gives back what the log phase took, whether it raised, returned or left it to a child", function()
    for _, how in ipairs({ "error", "keep", "spawn" }) do
      five("/log/" .. how, 200)
      assert.equal(0, in_use("log-" .. how), "log phase: " .. how)
    end
    local _, out = g:ctl("status", "--json")
    assert.equal(0, gw.json.decode(out).semaphores["log-error"].in_use)
  end)

  it("holds any number of semaphores in one task, and gives them all back", function()
    five("/log/many", 200)
    five("/many", 200)
    for i = 1, 12 do
      assert.equal(0, in_use("log-many-" .. i))
      assert.equal(0, in_use("many-" .. i))
    end
  end)

  it("refuses to release in the log phase a permit the request already gave back", function()
    five("/log/release", 200)
    assert.equal(0, in_use("log-release"))
    assert.is_true(logged("releasing 1 permits but this task holds 0"))
    assert.equal(200, g:request("GET", "/log/release").status) -- the gateway is still there
  end)

  it("gives back what a gw.timer run took: raised, returned, periodic, or left to a child", function()
    for _, how in ipairs({ "error", "keep", "every", "spawn" }) do
      five("/timer/" .. how, 200)
      gw.sleep(0.05)
      assert.equal(0, in_use("timer-" .. how), "timer: " .. how)
    end
  end)

  it("gives back what init_worker took", function()
    assert.equal(0, in_use("hold-init"))
    assert.is_true(g:request("GET", "/stats/hold-init").json.acquired >= 1, "init_worker took it")
  end)

  it("gives back what header_filter and body_filter tasks took", function()
    for _, phase in ipairs({ "header_filter", "body_filter" }) do
      for _, how in ipairs({ "error", "keep" }) do
        five(("/%s/%s/x"):format(phase, how))
        five(("/%s-handler/%s"):format(phase, how))
        assert.equal(0, in_use(phase .. "-" .. how), phase .. " " .. how)
        assert.equal(0, in_use(phase .. "-handler-" .. how), phase .. " handler " .. how)
      end
    end
  end)

  it("gives back what a spawned child took when it is cancelled with its parent", function()
    five("/child", 200)
    assert.equal(0, in_use("child"))
  end)

  it("gives back a permit held while the client goes away or the deadline passes", function()
    for _, path in ipairs({ "/access-sleep", "/header_filter-sleep/x" }) do
      local s = g:connect()
      s:send("GET " .. path .. " HTTP/1.1\r\nHost: a\r\n\r\n")
      gw.sleep(0.1)
      assert.equal(1, in_use(path:match("^/([%w_-]+)")), path .. " holds it meanwhile")
      s:close()
      gw.sleep(0.1)
      assert.equal(0, in_use(path:match("^/([%w_-]+)")), path)
    end
    five("/access-deadline", 504)
    assert.equal(0, in_use("access-deadline"))
    local _, out = g:ctl("status", "--json")
    assert.equal(0, gw.json.decode(out).semaphores["upstream:app"].in_use)
  end)

  it("refuses a permit taken in a coroutine nobody owns", function()
    assert.equal(500, g:request("GET", "/coroutine").status)
    assert.is_true(logged("not from a coroutine of your own"))
    assert.equal(0, in_use("own-coroutine"))
  end)

  it("keeps the config's semaphores out of Lua's reach", function()
    local r = g:request("GET", "/resize").json
    assert.is_false(r.ok)
    assert.is_false(r.route_ok)
    assert.truthy(r.err:find("the config's limits", 1, true), r.err)
    local _, out = g:ctl("status", "--json")
    assert.equal(7, gw.json.decode(out).semaphores["upstream:app"].capacity)
  end)
end)

describe("permits of a retired generation", function()
  it("come back when a reload ends the timer runs and init_worker tasks still holding them", function()
    local g = helpers.start(([[
      plugins_dir "%s/spec/fixtures/plugins"
      route { path = "/stats/{name}", plugins = { ["hold-init"] = true },
              handler = function(ctx) return 200, gw.semaphore(ctx.params.name, 100):stats() end }
      route { path = "/timer", handler = function()
        gw.timer.at(0, function()
          assert(gw.semaphore("retired-timer", 100):acquire(1, 1))
          gw.sleep(30)
        end)
        return 200, "started"
      end }
    ]]):format(os.getenv("PWD")))
    local function in_use(name) return g:request("GET", "/stats/" .. name).json.in_use end
    assert.equal(200, g:request("GET", "/timer").status)
    gw.sleep(0.05)
    assert.equal(1, in_use("retired-timer"))
    assert.equal(1, in_use("retired-init"))
    assert.equal(0, (g:ctl("reload")))
    gw.sleep(0.3)
    assert.equal(0, in_use("retired-timer"))
    assert.equal(1, in_use("retired-init")) -- the new generation's init_worker holds one; the old one's is back
    g:stop()
  end)
end)

describe("a reload that raises max_concurrency", function()
  local up, g

  local function config(maxc)
    return ([[
      upstream "narrow" { targets = { "127.0.0.1:%d" }, max_concurrency = %d,
                          on_busy = { queue = 10, queue_timeout = "5s" } }
      route { path = "/n/{x*}", upstream = "narrow" }
    ]]):format(up.port, maxc)
  end

  setup(function()
    up = upstream.start(function(req)
      if req.path == "/n/hold" then gw.sleep(2) end
      return 200, {}, "ok"
    end)
    g = helpers.start(config(1))
  end)
  teardown(function()
    g:stop()
    up:stop()
  end)

  it("wakes the requests already queued at once", function()
    local results = helpers.parallel({
      function() return g:request("GET", "/n/hold").status end,   -- holds the only permit for 2 s
      function()
        gw.sleep(0.2)
        local t0 = gw.monotonic_ms()
        local res = g:request("GET", "/n/queued")                 -- queues behind it
        return { status = res.status, waited = gw.monotonic_ms() - t0 }
      end,
      function()
        gw.sleep(0.5)
        helpers.write_file(g.file, ('listen "127.0.0.1:%d"\nadmin_socket "%s"\n'):format(g.port, g.socket) .. config(2))
        return (g:ctl("reload"))
      end,
    })
    assert.equal(200, results[1])
    assert.equal(0, results[3])
    assert.equal(200, results[2].status)
    -- granted by the reload (about 0.3 s after it queued), not when the holder finished (1.8 s)
    assert.is_true(results[2].waited < 1200, "the queued request waited " .. results[2].waited .. " ms")
  end)
end)
