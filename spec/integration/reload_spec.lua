-- Operations: gatewayctl against a running gateway, and live reload: new
-- routes right after gatewayctl returns, nothing dropped under load, a broken
-- config changes nothing, in-flight requests finish on their generation.
local helpers = require "spec.helpers"

local function routes(version)
  return ([[
    workers(2)
    route { method = "GET", path = "/version", handler = function() return 200, "v%d" end }
    route { method = "GET", path = "/only-v%d", handler = function() return 200, "only" end }
    route { method = "GET", path = "/slow", handler = function() gw.sleep(0.5); return 200, "slow-v%d" end }
  ]]):format(version, version, version)
end

describe("gatewayctl and live reload", function()
  local g

  local function write_config(body)
    helpers.write_file(g.file, ('listen "127.0.0.1:%d"\nadmin_socket "%s"\n'):format(g.port, g.socket) .. body)
  end

  setup(function() g = helpers.start(routes(1), { workers = 2 }) end)
  teardown(function() g:stop() end)

  it("reports status and routes", function()
    local code, out = g:ctl("status")
    assert.equal(0, code)
    assert.truthy(out:find("worker 0: generation", 1, true), out)
    code, out = g:ctl("status", "--json")
    local st = gw.json.decode(out)
    assert.equal(2, #st.workers)
    code, out = g:ctl("routes")
    assert.equal(0, code)
    assert.truthy(out:find("/only-v1", 1, true), out)
  end)

  it("applies new routes as soon as reload returns", function()
    write_config(routes(2))
    local code, out = g:ctl("reload")
    assert.equal(0, code, out)
    assert.equal("v2", g:request("GET", "/version").body)
    assert.equal(200, g:request("GET", "/only-v2").status)
    assert.equal(404, g:request("GET", "/only-v1").status)
  end)

  it("lets in-flight requests finish on the generation they started on", function()
    local results = helpers.parallel({
      function() return g:request("GET", "/slow").body end,
      function()
        gw.sleep(0.1)
        write_config(routes(3))
        return (g:ctl("reload"))
      end,
    })
    assert.equal("slow-v2", results[1])
    assert.equal(0, results[2])
    assert.equal("slow-v3", g:request("GET", "/slow").body)
  end)

  for _, case in ipairs({
    { "a Lua syntax error", "route { path = ", ":%d+: " },
    { "a plugin conf error", 'route { path = "/x", plugins = { ["key-auth"] = {} }, handler = print }', "give keys or keys_file" },
    { "a missing plugin", 'route { path = "/x", plugins = { nope = true }, handler = print }', "no plugin named 'nope'" },
  }) do
    it("refuses " .. case[1] .. " with file:line and changes nothing", function()
      write_config(routes(4) .. "\n" .. case[2] .. "\n")
      local code, out = g:ctl("reload")
      assert.equal(1, code)
      assert.truthy(out:find(case[3]), out)
      assert.truthy(out:find(g.file, 1, true), out)
      assert.equal("v3", g:request("GET", "/version").body)
      write_config(routes(3))
    end)
  end

  it("reloads 20 times under continuous load without a failed request", function()
    local stop, failures, served = false, 0, 0
    local deadline = gw.now() + 60 -- the clients stop even if the reloading side fails
    local function client()
      while not stop and gw.now() < deadline do
        local ok, res = pcall(g.request, g, "GET", "/version")
        if ok and res and res.status == 200 and (res.body == "v5" or res.body == "v6" or res.body == "v3") then
          served = served + 1
        else
          failures = failures + 1
        end
      end
      return true
    end
    helpers.parallel({
      client, client, client,
      function()
        for i = 1, 20 do
          write_config(routes(i % 2 == 0 and 5 or 6))
          local code = g:ctl("reload")
          if code ~= 0 then failures = failures + 1000 end
        end
        gw.sleep(0.1)
        stop = true
        return true
      end,
    })
    assert.equal(0, failures)
    assert.is_true(served > 50, "only " .. served .. " requests were served")
  end)

  it("keeps semaphores across a reload: held permits come back, a new capacity applies", function()
    write_config(routes(3) .. [[
      route { method = "GET", path = "/held", plugins = { ["limit-conn"] = { max = 2 } },
              handler = function() gw.sleep(0.3); return 200, "held" end }
      route { method = "GET", path = "/sems", handler = function() return 200, gw.semaphores() end }
    ]])
    assert.equal(0, (g:ctl("reload")))
    local sem_of = function(list) for name, st in pairs(list) do if name:find("limit-conn", 1, true) then return st end end end
    local results = helpers.parallel({
      function() return g:request("GET", "/held").status end,
      function()
        gw.sleep(0.1)
        local during = sem_of(g:request("GET", "/sems").json)
        write_config(routes(3) .. [[
          route { method = "GET", path = "/held", plugins = { ["limit-conn"] = { max = 5 } },
                  handler = function() gw.sleep(0.3); return 200, "held" end }
          route { method = "GET", path = "/sems", handler = function() return 200, gw.semaphores() end }
        ]])
        g:ctl("reload")
        return during
      end,
    })
    assert.equal(200, results[1])
    assert.equal(1, results[2].in_use)   -- held by the request that started before the reload
    gw.sleep(0.1)
    g:request("GET", "/held")
    local after = sem_of(g:request("GET", "/sems").json)
    assert.equal(0, after.in_use)        -- given back by the request that ended on the old generation
    assert.equal(5, after.capacity)      -- the new capacity
    write_config(routes(3))
    g:ctl("reload")
  end)

  it("shows the routes that run, not the file as it is now", function()
    local function listed()
      local code, out = g:ctl("routes")
      assert.equal(0, code, out)
      local _, json = g:ctl("routes", "--json")
      local paths = {}
      for _, r in ipairs(gw.json.decode(json)) do paths[#paths + 1] = r.path end
      return out, table.concat(paths, " ")
    end
    assert.equal(0, (g:ctl("reload")))
    local running = g:request("GET", "/version").body:match("v(%d+)")
    write_config(routes(8)) -- written, not reloaded
    local text, json = listed()
    assert.truthy(text:find("/only-v" .. running, 1, true), text)
    assert.falsy(text:find("/only-v8", 1, true), text)
    assert.equal("/version /only-v" .. running .. " /slow", json)
    write_config(routes(8) .. "\nroute { path = \n") -- a reload of this is refused
    assert.equal(1, (g:ctl("reload")))
    text, json = listed()
    assert.equal("/version /only-v" .. running .. " /slow", json)
    write_config(routes(8))
    assert.equal(0, (g:ctl("reload")))
    text, json = listed()
    assert.truthy(text:find("/only-v8", 1, true), text)
    assert.truthy(text:find(g.file .. ":4)", 1, true), text) -- where each route was declared
    assert.equal("/version /only-v8 /slow", json)
  end)

  it("reloads on SIGHUP too", function()
    write_config(routes(7))
    gw.process.kill(g.pid, 1) -- SIGHUP
    local body
    for _ = 1, 50 do
      body = g:request("GET", "/version").body
      if body == "v7" then break end
      gw.sleep(0.02)
    end
    assert.equal("v7", body)
  end)

  it("keeps memory bounded over many reloads, back to back", function()
    -- a retired generation is freed as soon as its last request ends, not on a
    -- timer: 150 reloads in a few seconds must not pile up retired VMs
    for _ = 1, 20 do g:ctl("reload") end
    local before = g:rss_kb()
    local peak = before
    for _ = 1, 150 do
      g:ctl("reload")
      peak = math.max(peak, g:rss_kb())
    end
    -- under ASan, its 8 MB quarantine and per-thread caches fill with freed memory too
    local bound = g:sanitized() and 16 * 1024 or 4 * 1024
    assert.is_true(peak - before < bound, ("RSS %d KiB, up to %d KiB over 150 reloads"):format(before, peak))
  end)

  it("checks a config without applying it", function()
    local bad = g.dir .. "/bad.lua"
    helpers.write_file(bad, 'listen "127.0.0.1:1"\nroute { path = "/x" }\n')
    local code, out = g:ctl("check", bad)
    assert.equal(1, code)
    assert.truthy(out:find(bad .. ":2:", 1, true), out)
    code = g:ctl("check", g.file)
    assert.equal(0, code)
  end)
end)

describe("reload and the settings it cannot apply", function()
  it("warns in the log and in gatewayctl's answer, naming each setting that needs a restart", function()
    local g = helpers.start([[
      timeouts { request = "5s" }
      route { path = "/", handler = function() return 200, "ok" end }
    ]])
    local head = ('listen "127.0.0.1:%d"\nadmin_socket "%s"\n'):format(g.port, g.socket)
    helpers.write_file(g.file, head .. [[
      timeouts { request = "1s", keepalive = "5s" }
      limits { max_body = "2m" }
      route { path = "/", handler = function() return 200, "ok" end }
    ]])
    local code, out = g:ctl("reload")
    assert.equal(0, code, out) -- the routes were applied
    local want = "limits.max_body, timeouts.keepalive, timeouts.request changed in the file but take effect " ..
                 "on restart only: the running values are kept"
    assert.truthy(out:find("warning: " .. want, 1, true), out)
    assert.truthy(g:error_log():find('"level":"warn","msg":"reload: ' .. want, 1, true), g:error_log())
    -- the running values are still the first ones: the next reload says so again
    code, out = g:ctl("reload")
    assert.truthy(out:find("warning: " .. want, 1, true), out)
    -- back to the values it runs with: no warning
    helpers.write_file(g.file, head .. [[
      timeouts { request = "5s" }
      route { path = "/", handler = function() return 200, "ok" end }
    ]])
    code, out = g:ctl("reload")
    assert.equal(0, code, out)
    assert.is_nil(out:find("warning", 1, true), out)
    g:stop()
  end)

  it("applies timeouts.tunnel to the tunnels and WebSockets opened after it (no warning)", function()
    local wsc = helpers.websocket
    local up = require("spec.upstream").start(function(req, res)
      local ws = wsc.accept(res.sock, req)
      ws:recv(20000)
      res:close()
    end)
    local function config(tunnel)
      return ([[
        timeouts { tunnel = "%s" }
        upstream "ws" { targets = { "127.0.0.1:%d" } }
        route { path = "/ws", upstream = "ws" }
        route { path = "/lua", handler = function(ctx)
          local ws = ctx:websocket{}
          local _, _, err = ws:recv()
          ws:send_text("recv: " .. tostring(err))
        end }
      ]]):format(tunnel, up.port)
    end
    local g = helpers.start(config("20s"))
    local old = assert(g:websocket("/ws"))
    local old_lua = assert(g:websocket("/lua"))
    helpers.write_file(g.file, ('listen "127.0.0.1:%d"\nadmin_socket "%s"\n'):format(g.port, g.socket) .. config("300ms"))
    local code, out = g:ctl("reload")
    assert.equal(0, code, out)
    assert.is_nil(out:find("warning", 1, true), out)
    local new = assert(g:websocket("/ws"))
    assert.same({ "idle timeout", "close", 1001 }, { new:recv(5000) })
    local new_lua = assert(g:websocket("/lua"))
    assert.same({ "recv: timeout", "text" }, { new_lua:recv(5000) }) -- ws:recv's default timeout
    -- the ones opened before keep 20s
    assert.same({ nil, "timeout" }, { old:recv(1000) })
    assert.same({ nil, "timeout" }, { old_lua:recv(100) })
    old:close(1000)
    old_lua:close(1000)
    g:kill()
    up:stop()
  end)
end)

describe("a reload that takes a while", function()
  -- a config whose load spins for `ms` of wall clock before its routes
  local function config(g, version, ms)
    return ('listen "127.0.0.1:%d"\nadmin_socket "%s"\n'):format(g.port, g.socket) .. ([[
      local t = gw.monotonic_ms()
      while gw.monotonic_ms() - t < %d do end
      route { method = "GET", path = "/version", handler = function() return 200, "v%d" end }
    ]]):format(ms, version)
  end
  local function reloads_logged(g)
    local n = 0
    for _ in g:error_log():gmatch('"msg":"reloaded ') do n = n + 1 end
    return n
  end
  local g
  before_each(function()
    g = helpers.start('route { method = "GET", path = "/version", handler = function() return 200, "v1" end }',
                      { workers = 2 })
  end)
  after_each(function() g:stop() end)

  -- gatewayctl `command`, and 0.3 s into it `status`: both answers, and how much sooner status was answered
  local function status_during(command)
    local done = {}
    local results = helpers.parallel({
      function()
        local r = { g:ctl(command) }
        done.command = gw.monotonic_ms()
        return r
      end,
      function()
        gw.sleep(0.3) -- the command is loading now
        local r = { g:ctl("status") }
        done.status = gw.monotonic_ms()
        return r
      end,
    })
    return results[1], results[2], done.command - done.status
  end

  it("leaves the admin side answering while it loads", function()
    helpers.write_file(g.file, config(g, 2, 2500))
    local reload, status, sooner = status_during("reload")
    assert.equal(0, reload[1], reload[2])
    assert.equal(0, status[1], status[2])
    assert.is_true(sooner > 1000, ("status answered %d ms before the reload"):format(sooner))
    assert.truthy(status[2]:find("a reload loading for %d+ ms"), status[2]) -- and said so
    assert.equal("v2", g:request("GET", "/version").body)
    assert.equal(gw.null, gw.json.decode(select(2, g:ctl("status", "--json"))).reload_loading_ms)
  end)

  it("answers a reload asked during a load with a load of the file as it is then, shared by every ask", function()
    helpers.write_file(g.file, config(g, 2, 1500))
    local before = reloads_logged(g)
    local results = helpers.parallel({
      function() return { g:ctl("reload") } end,
      function()
        gw.sleep(0.3)
        helpers.write_file(g.file, config(g, 3, 0))
        return { g:ctl("reload") }
      end,
      function()
        gw.sleep(0.4)
        return { g:ctl("reload") }
      end,
    })
    for i = 1, 3 do assert.equal(0, results[i][1], results[i][2]) end
    assert.equal("v3", g:request("GET", "/version").body)
    local logged
    for _ = 1, 40 do
      logged = reloads_logged(g) - before
      if logged >= 2 then break end
      gw.sleep(0.025)
    end
    assert.equal(2, logged) -- the first, then one for both asks made during it
  end)

  it("loads again when the file changes during a load, so every worker runs the same config", function()
    helpers.write_file(g.file, config(g, 2, 1500))
    local results = helpers.parallel({
      function() return { g:ctl("reload") } end,
      function()
        gw.sleep(0.3)
        helpers.write_file(g.file, config(g, 3, 0) .. "route { path = \n")
        return { g:ctl("reload") }
      end,
    })
    -- the first reload's file changed under it: it was loaded again, broken, like the second
    for i = 1, 2 do
      assert.equal(1, results[i][1], results[i][2])
      assert.truthy(results[i][2]:find(g.file .. ":7: ", 1, true), results[i][2])
      assert.truthy(results[i][2]:find("the running configuration is unchanged", 1, true), results[i][2])
    end
    for _ = 1, 10 do assert.equal("v1", g:request("GET", "/version").body) end
  end)

  it("checks a config without holding up the admin side", function()
    helpers.write_file(g.file, config(g, 2, 2000))
    local check, status, sooner = status_during("check")
    assert.equal(0, check[1], check[2])
    assert.truthy(check[2]:find("is valid (1 routes)", 1, true), check[2])
    assert.equal(0, status[1], status[2])
    assert.is_true(sooner > 1000, ("status answered %d ms before the check"):format(sooner))
    assert.equal("v1", g:request("GET", "/version").body) -- a check applies nothing
  end)

  it("stops promptly when asked to during a load, however long the load would take", function()
    helpers.write_file(g.file, config(g, 2, 30000))
    local asked
    local results = helpers.parallel({
      function() return { g:ctl("reload") } end,
      function()
        gw.sleep(0.3)
        asked = gw.monotonic_ms()
        return { g:ctl("stop", "--drain", "1") }
      end,
    })
    assert.equal(0, results[2][1], tostring(results[2][2]) .. g:error_log())
    assert.is_not.equal(0, results[1][1]) -- its gateway went away before the reload was applied
    local how, status = helpers.wait_exit(g.pid, 20)
    local took = gw.monotonic_ms() - asked
    assert.same({ "exit", 0 }, { how, status }, g:error_log())
    g.stopped, g.how, g.code = true, how, status
    assert.is_true(took < 5000, ("stopped %d ms after the ask, with a 1 s drain"):format(took))
  end)
end)

describe("gatewayctl without a gateway", function()
  it("says clearly that nothing answers", function()
    local ctl = helpers.gatewayd:gsub("gatewayd$", "gatewayctl")
    local dir = helpers.tmpdir()
    local pid = gw.process.spawn({ ctl, "-s", dir .. "/none.sock", "status" }, { stderr = dir .. "/err" })
    local _, code = helpers.wait_exit(pid, 5)
    assert.equal(3, code)
    assert.truthy(helpers.read_file(dir .. "/err"):find("no gateway answers on", 1, true))
  end)

  it("stops a gateway with a drain", function()
    local g = helpers.start('route { path = "/slow", handler = function() gw.sleep(0.3); return 200, "done" end }')
    local s = g:connect()
    s:send("GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    gw.sleep(0.05)
    local code = g:ctl("stop", "--drain", "2")
    assert.equal(0, code)
    assert.equal("done", assert(helpers.read_response(s)).body)
    local how, status = helpers.wait_exit(g.pid, 5)
    assert.same({ "exit", 0 }, { how, status })
    g.stopped = true
  end)
end)

describe("metrics", function()
  it("serves Prometheus text: requests by route and class, latency, upstream errors, pools, semaphores", function()
    local upstream = require "spec.upstream"
    local up = upstream.start(function(req, res)
      if req.path == "/up/bad" then res:reset(); return end
      return 200, {}, "ok"
    end)
    local port = helpers.free_port()
    local g = helpers.start(([[
      admin_listen "127.0.0.1:%d"
      upstream "svc" { targets = { "127.0.0.1:%d" }, max_concurrency = 5, retries = 0 }
      route { path = "/ok", handler = function() return 200, "ok" end }
      route { path = "/up/{x*}", upstream = "svc" }
    ]]):format(port, up.port))
    for _ = 1, 3 do g:request("GET", "/ok") end
    g:request("GET", "/up/fine")
    g:request("POST", "/up/bad", { body = "x" })
    g:request("GET", "/up/fine") -- leaves one pooled connection
    g:request("GET", "/missing")
    local s = gw.tcp()
    assert(s:connect("127.0.0.1", port))
    s:send("GET /metrics HTTP/1.0\r\n\r\n")
    local res = assert(helpers.read_response(s))
    assert.equal(200, res.status)
    local m = res.body
    assert.truthy(m:find('moongate_requests_total{worker="0",route="/ok",status="2xx"} 3', 1, true), m)
    assert.truthy(m:find('moongate_requests_total{worker="0",route="(none)",status="4xx"} 1', 1, true), m)
    assert.truthy(m:find('moongate_request_duration_seconds_bucket{worker="0",route="/ok",le="+Inf"} 3', 1, true), m)
    assert.truthy(m:find('moongate_upstream_errors_total{worker="0",upstream="svc",kind="reset"} 1', 1, true), m)
    assert.truthy(m:find('moongate_upstream_pool_idle{worker="0",upstream="svc",target="127.0.0.1:' .. up.port .. '"} 1', 1, true), m)
    assert.truthy(m:find('moongate_semaphore_capacity{name="upstream:svc"} 5', 1, true), m)
    assert.truthy(m:find('moongate_reloads_total{result="ok"} 0', 1, true), m)
    local code, out = g:ctl("upstreams")
    assert.equal(0, code)
    assert.truthy(out:find("upstream svc (round_robin)", 1, true), out)
    assert.truthy(out:find("healthy", 1, true), out)
    code, out = g:ctl("upstreams", "--json")
    local ups = gw.json.decode(out)
    assert.equal("svc", ups[1].upstreams[1].name)
    assert.equal("healthy", ups[1].upstreams[1].targets[1].health)
    code, out = g:ctl("routes", "--json")
    local rs = gw.json.decode(out)
    assert.equal("/ok", rs[1].path)
    assert.same({}, rs[1].plugins)
    assert.is_nil(rs[1].upstream)
    assert.equal("svc", rs[2].upstream)
    assert.equal(g.file, rs[2].declared_at:match("^(.*):%d+$"))
    g:stop()
    up:stop()
  end)
end)
