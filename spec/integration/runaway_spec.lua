-- A handler or plugin that never yields (an infinite loop): what the gateway does.
local helpers = require "spec.helpers"

describe("a runaway handler", function()
  it("is reported by the watchdog, fenced off, and does not stop the other workers or shutdown", function()
    local g = helpers.start([[
      workers(2)
      timeouts { watchdog = "300ms", drain = "200ms" }
      route { path = "/spin", handler = function() while true do end end }
      route { path = "/ok", handler = function() return 200, "ok" end }
    ]], { workers = 2 })
    local s = g:connect()
    s:send("GET /spin HTTP/1.1\r\nHost: a\r\n\r\n") -- one worker is now stuck for good
    gw.sleep(1.5) -- the watchdog checks every second
    assert.truthy(g:error_log():find("has not returned to its event loop", 1, true), g:error_log())
    -- every new connection is served: the stuck worker left the SO_REUSEPORT group
    for i = 1, 10 do
      local c = gw.tcp()
      c:settimeout(1000)
      assert(c:connect("127.0.0.1", g.port))
      c:send("GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
      local res = assert(helpers.read_response(c), "request " .. i .. " was not served")
      assert.equal(200, res.status)
      c:close()
    end
    -- shutdown cannot drain the stuck worker: the process exits anyway, with status 1
    gw.process.kill(g.pid, gw.process.SIGTERM)
    local how, code = helpers.wait_exit(g.pid, 10)
    assert.same({ "exit", 1 }, { how, code })
    assert.truthy(g:error_log():find("did not stop", 1, true))
    g.stopped = true
  end)
end)

describe("the watchdog", function()
  local FIXTURES = os.getenv("PWD") .. "/spec/fixtures/plugins"

  it("ends a runaway loop that reaches the interpreter: 500, access log, error log naming where it ran", function()
    local g = helpers.start(([[
      workers(1)
      plugins_dir "%s"
      timeouts { watchdog = "300ms" }
      route { path = "/spin", plugins = { spin = {} }, handler = function() return 200, "never" end }
      route { path = "/ok", handler = function() return 200, "ok" end }
    ]]):format(FIXTURES))
    local tid = "0af7651916cd43dd8448eb211c80319c"
    local s = g:connect(10000)
    local t0 = gw.monotonic_ms()
    s:send("GET /spin HTTP/1.1\r\nHost: a\r\nX-Request-ID: " .. tid .. "\r\n\r\n")
    local res = assert(helpers.read_response(s))
    assert.equal(500, res.status)
    assert.truthy(gw.monotonic_ms() - t0 < 4000, gw.monotonic_ms() - t0)
    local e = g:entry(tid)
    assert.truthy(e, g:access_log())
    assert.equal(500, e.status)
    assert.equal("lua_error", e.error)
    local killed
    for line in g:error_log():gmatch("[^\n]+") do
      if line:find("ended the request", 1, true) then killed = gw.json.decode(line) end
    end
    assert.truthy(killed, g:error_log())
    assert.equal(tid, killed.trace_id)
    assert.truthy(killed.msg:find("route /spin", 1, true), killed.msg)
    assert.truthy(killed.msg:find("plugin spin, phase access", 1, true), killed.msg)
    assert.truthy(killed.msg:find("spec/fixtures/plugins/spin.lua:6", 1, true), killed.msg)
    assert.truthy(g:error_log():find("killed by the watchdog after %d+ ms without yielding"), g:error_log())
    -- the worker is back: it listens again (it is the only one) and is no longer shown stuck
    gw.sleep(1.2)
    assert.equal(200, g:request("GET", "/ok").status)
    local code, out = g:ctl("status", "--json")
    assert.equal(0, code, out)
    local w = gw.json.decode(out).workers[1]
    assert.is_false(w.stuck)
    assert.equal(1, w.watchdog_kills)
    assert.truthy(g:error_log():find("responsive again", 1, true))
    g:stop()
  end)

  it("shows a worker stuck in a JIT-compiled loop in gatewayctl status and /metrics while it spins", function()
    local port = helpers.free_port()
    local g = helpers.start(([[
      workers(2)
      admin_listen "127.0.0.1:%d"
      timeouts { watchdog = "300ms", drain = "200ms" }
      route { path = "/spin", handler = function() while true do end end }
      route { path = "/ok", handler = function() return 200, "ok" end }
    ]]):format(port), { workers = 2 })
    local tid = "4bf92f3577b34da6a3ce929d0e0e4736"
    local s = g:connect()
    s:send("GET /spin HTTP/1.1\r\nHost: a\r\nX-Request-ID: " .. tid .. "\r\n\r\n")
    gw.sleep(3) -- detected within a second, and the hook has had a second to fire
    local code, out = g:ctl("status", "--json")
    assert.equal(0, code, out)
    local st = gw.json.decode(out)
    local stuck, other
    for _, w in ipairs(st.workers) do
      if w.stuck then stuck = w else other = w end
    end
    assert.truthy(stuck, out)
    assert.truthy(other, out)
    assert.truthy(stuck.stuck_ms >= 1000, stuck.stuck_ms)
    assert.equal(tid, stuck.trace_id)
    assert.equal("/spin", stuck.route)
    assert.equal("ineffective", stuck.kill)
    code, out = g:ctl("status")
    assert.truthy(out:find("STUCK for %d+ ms"), out)
    assert.truthy(out:find("cannot end it", 1, true), out)
    local m = gw.tcp()
    assert(m:connect("127.0.0.1", port))
    m:send("GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
    local res = assert(helpers.read_response(m))
    assert.equal(200, res.status)
    assert.truthy(res.body:find('moongate_worker_stuck{worker="' .. stuck.id .. '"} 1', 1, true), res.body)
    assert.truthy(res.body:find('moongate_worker_stuck{worker="' .. other.id .. '"} 0', 1, true), res.body)
    -- the status page's reading: the stuck worker is not asked, the other one's figures are there
    local j = gw.tcp()
    assert(j:connect("127.0.0.1", port))
    j:send("GET /status.json HTTP/1.1\r\nHost: a\r\n\r\n")
    res = assert(helpers.read_response(j))
    assert.equal(200, res.status)
    local figures = {}
    for _, f in ipairs(res.json.figures) do figures[f.worker] = f end
    assert.same({ worker = stuck.id, stuck = true }, figures[stuck.id])
    assert.truthy(figures[other.id].routes, res.body)
    assert.equal(true, res.json.workers[stuck.id + 1].stuck)
    assert.truthy(g:error_log():find("the hook cannot interrupt", 1, true), g:error_log())
    gw.process.kill(g.pid, gw.process.SIGTERM)
    local how, exit = helpers.wait_exit(g.pid, 10)
    assert.same({ "exit", 1 }, { how, exit })
    g.stopped = true
  end)
end)
