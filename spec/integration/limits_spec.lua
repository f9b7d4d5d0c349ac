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
