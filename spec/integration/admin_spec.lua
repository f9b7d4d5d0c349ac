-- The control side (admin socket, admin_listen): misbehaving clients delay
-- nothing, answers of any size arrive whole, names from requests are escaped
-- and per-key series are bounded.
local helpers = require "spec.helpers"

local PYTHON = "/usr/bin/python3"
local CLIENT = os.getenv("PWD") .. "/spec/fixtures/unix_client.py"

-- gatewayctl's exit code, output and how long it took (ms)
local function timed_ctl(g, ...)
  local t0 = gw.monotonic_ms()
  local code, out = g:ctl(...)
  return code, out, gw.monotonic_ms() - t0
end

-- runs the Unix-socket client fixture in the background; returns a function giving its output once it ended
local function unix_client(g, ...)
  local out = g.dir .. "/client-" .. math.random(1e9) .. ".out"
  local pid = assert(gw.process.spawn({ PYTHON, CLIENT, ... }, { stdout = out, stderr = out .. ".err" }))
  return function(seconds)
    local how = helpers.wait_exit(pid, seconds or 20)
    if not how then gw.process.kill(pid, gw.process.SIGKILL); helpers.wait_exit(pid, 5) end
    return helpers.read_file(out), helpers.read_file(out .. ".err")
  end
end

local function http_get(port, path)
  local s = gw.tcp()
  s:settimeout(5000)
  assert(s:connect("127.0.0.1", port))
  s:send("GET " .. path .. " HTTP/1.1\r\nHost: a\r\n\r\n")
  local res = assert(helpers.read_response(s))
  s:close()
  return res
end

-- one line of the Prometheus text format, checked strictly: metric name,
-- labels with escaped values (only \\, \" and \n), a number
local function prom_line_ok(line)
  if line:sub(1, 1) == "#" then return true end
  local i = line:match("^[%a_:][%w_:]*()")
  if not i then return false, "metric name" end
  if line:sub(i, i) == "{" then
    i = i + 1
    while true do
      local j = line:match("^[%a_][%w_]*=\"()", i)
      if not j then return false, "label name at " .. i end
      i = j
      while true do
        local c = line:sub(i, i)
        if c == "" or c == "\n" then return false, "unterminated label value" end
        if c == '"' then break end
        if c == "\\" then
          local e = line:sub(i + 1, i + 1)
          if e ~= "\\" and e ~= '"' and e ~= "n" then return false, "bad escape \\" .. e end
          i = i + 2
        else
          i = i + 1
        end
      end
      i = i + 1
      local c = line:sub(i, i)
      if c == "}" then i = i + 1; break end
      if c ~= "," then return false, "expected , or } at " .. i end
      i = i + 1
    end
  end
  local value = line:sub(i):match("^ (%S+)$")
  if not value or not (tonumber(value) or value == "+Inf" or value == "-Inf" or value == "NaN") then
    return false, "value"
  end
  return true
end

-- The exposition's structure: every family has one "# HELP" and one "# TYPE"
-- (counter, gauge or histogram) before its first sample, and its samples
-- (a histogram's _bucket, _sum, _count) come together. Returns the types.
local function check_families(text)
  local types, helps, done, current = {}, {}, {}, nil
  for line in text:gmatch("[^\n]+") do
    local what, name, rest = line:match("^# (%u+) ([%w_:]+) ?(.*)$")
    if what == "TYPE" then
      assert(not types[name], "a second # TYPE for " .. name)
      assert(not done[name] and current ~= name, "# TYPE after samples of " .. name)
      assert(rest == "counter" or rest == "gauge" or rest == "histogram", line)
      assert(helps[name], "# TYPE without # HELP first: " .. name)
      types[name] = rest
    elseif what == "HELP" then
      assert(not helps[name], "a second # HELP for " .. name)
      helps[name] = true
    elseif line:sub(1, 1) ~= "#" then
      local sample = line:match("^([%a_:][%w_:]*)")
      local base = sample:match("^(.*)_bucket$") or sample:match("^(.*)_sum$") or sample:match("^(.*)_count$")
      local family = base and types[base] == "histogram" and base or sample
      assert(types[family], "a sample without # TYPE: " .. line)
      if family ~= current then
        assert(not done[family], "the samples of " .. family .. " are not together: " .. line)
        if current then done[current] = true end
        current = family
      end
    end
  end
  return types
end

local function check_prometheus(text)
  local n = 0
  for line in text:gmatch("[^\n]+") do
    local ok, why = prom_line_ok(line)
    assert(ok, ("bad exposition line (%s): %s"):format(tostring(why), line))
    n = n + 1
  end
  check_families(text)
  return n
end

-- label value of name="..." in a Prometheus line, unescaped
local function unescape_label(v)
  return (v:gsub("\\(.)", function(c) return c == "n" and "\n" or c end))
end

describe("the admin side", function()
  it("types every family of /metrics once, before its samples, which come together", function()
    local redis = require "moongate.test.redis"
    local r = redis.start()
    local up = require("spec.upstream").start(function() return 200, {}, "ok" end)
    local port = helpers.free_port()
    local g = helpers.start(([[
      admin_listen "127.0.0.1:%d"
      workers(2)
      redis "main" { address = "%s" }
      redis "gone" { address = "127.0.0.1:%d" }
      upstream "u" { targets = { "127.0.0.1:%d" }, max_concurrency = 4, scope = "cluster", redis = "main" }
      route { path = "/up", upstream = "u" }
      route { path = "/rl", plugins = { ["rate-limit"] = { rate = 100, policy = "redis", redis = "gone" } },
              handler = function() return 200, "ok" end }
      route { path = "/lc", plugins = { ["limit-conn"] = { max = 2, key = "header:X-K" } },
              handler = function() gw.sleep(1); return 200, "ok" end }
      route { path = "/clc", plugins = { ["limit-conn"] = { max = 2, key = "header:X-K", scope = "cluster",
                                                           redis = "main" } },
              handler = function() gw.sleep(1); return 200, "ok" end }
      route { path = "/boom", handler = function() error("x") end }
    ]]):format(port, r.address, helpers.free_port(), up.port), { workers = 2 })
    for _, path in ipairs({ "/up", "/rl", "/boom", "/nowhere" }) do g:request("GET", path) end
    -- more per-key semaphores than are listed, held at once (an idle one is freed): their families fold
    local held = {}
    for i = 1, 105 do
      for _, path in ipairs({ "/lc", "/clc" }) do
        local c = g:connect(5000)
        c:send("GET " .. path .. " HTTP/1.1\r\nHost: x\r\nX-K: k" .. i .. "\r\n\r\n")
        held[#held + 1] = c
      end
    end
    local m
    for _ = 1, 50 do
      m = http_get(port, "/metrics").body
      if m:find("moongate_cluster_semaphores_folded", 1, true) and m:find("moongate_semaphores_folded", 1, true) then
        break
      end
      gw.sleep(0.02)
    end
    for _, c in ipairs(held) do c:close() end
    check_prometheus(m)
    local types = check_families(m)
    for name, t in pairs({ moongate_requests_total = "counter", moongate_request_duration_seconds = "histogram",
                           moongate_request_errors_total = "counter", moongate_upstream_ttfb_seconds = "histogram",
                           moongate_upstream_target_healthy = "gauge", moongate_semaphores_folded = "gauge",
                           moongate_redis_command_duration_seconds = "histogram",
                           moongate_redis_fallbacks_total = "counter", moongate_cluster_semaphore_lease_seconds = "gauge",
                           moongate_cluster_semaphores_folded = "gauge", moongate_worker_connections = "gauge",
                           moongate_trace_spans_queued = "gauge", moongate_uptime_seconds = "gauge" }) do
      assert.equal(t, types[name], name)
    end
    assert.matches('moongate_cluster_semaphores_folded{family="limit%-conn:%*"} %d+', m)
    g:stop()
  end)

  it("answers gatewayctl and stops on SIGTERM at once while a client trickles on admin_listen", function()
    local port = helpers.free_port()
    local g = helpers.start(('admin_listen "127.0.0.1:%d"\nroute { path = "/", handler = function() return 200, "ok" end }\n'):format(port))
    local trickler = gw.tcp()
    trickler:settimeout(1000)
    assert(trickler:connect("127.0.0.1", port))
    local cut_after
    gw.process.task(function()
      local t0 = gw.monotonic_ms()
      for _ = 1, 8 do -- one byte a second, never a whole request line
        local ok = trickler:send("G")
        local _, err = trickler:receive(1)
        if not ok or err == "closed" or err == "reset" then break end
      end
      cut_after = gw.monotonic_ms() - t0
    end)
    gw.sleep(0.5)
    local code, out, ms = timed_ctl(g, "status")
    assert.equal(0, code, out)
    assert.truthy(ms < 1500, ("gatewayctl status took %d ms"):format(ms))
    code, out, ms = timed_ctl(g, "reload")
    assert.equal(0, code, out)
    assert.truthy(ms < 2500, ("gatewayctl reload took %d ms"):format(ms))
    -- the head timeout (2 s, from the first byte) closes the trickler
    while not cut_after do gw.sleep(0.1) end
    assert.truthy(cut_after < 3500, ("the trickler was served for %d ms"):format(cut_after))
    -- SIGTERM with another trickler on the line
    local t2 = gw.tcp()
    assert(t2:connect("127.0.0.1", port))
    t2:send("GET /met")
    gw.sleep(0.2)
    local t0 = gw.monotonic_ms()
    gw.process.kill(g.pid, gw.process.SIGTERM)
    local how, exit = helpers.wait_exit(g.pid, 10)
    g.stopped = true
    assert.same({ "exit", 0 }, { how, exit })
    assert.truthy(gw.monotonic_ms() - t0 < 2000, ("SIGTERM took %d ms"):format(gw.monotonic_ms() - t0))
  end)

  it("answers gatewayctl and stops on SIGTERM at once while a client trickles on the admin socket", function()
    local g = helpers.start('route { path = "/", handler = function() return 200, "ok" end }\n')
    local trickle = unix_client(g, "trickle", g.socket, "10")
    gw.sleep(0.5)
    local code, out, ms = timed_ctl(g, "status")
    assert.equal(0, code, out)
    assert.truthy(ms < 1500, ("gatewayctl status took %d ms"):format(ms))
    code, out, ms = timed_ctl(g, "reload")
    assert.equal(0, code, out)
    assert.truthy(ms < 2500, ("gatewayctl reload took %d ms"):format(ms))
    local served = tonumber((trickle(15)))
    assert.truthy(served and served < 3.5, "the trickler was served for " .. tostring(served) .. " s")
    local again = unix_client(g, "trickle", g.socket, "10")
    gw.sleep(0.3)
    local t0 = gw.monotonic_ms()
    gw.process.kill(g.pid, gw.process.SIGTERM)
    local how, exit = helpers.wait_exit(g.pid, 10)
    g.stopped = true
    again(5)
    assert.same({ "exit", 0 }, { how, exit })
    assert.truthy(gw.monotonic_ms() - t0 < 2000, ("SIGTERM took %d ms"):format(gw.monotonic_ms() - t0))
  end)

  it("closes connections beyond the cap at once and keeps answering", function()
    local port = helpers.free_port()
    local g = helpers.start(('admin_listen "127.0.0.1:%d"\nroute { path = "/", handler = function() return 200, "ok" end }\n'):format(port))
    -- admin_listen: 32 connections at most; the 8 beyond are closed at once (told so with a 503)
    local socks = {}
    for i = 1, 40 do
      socks[i] = gw.tcp()
      assert(socks[i]:connect("127.0.0.1", port))
    end
    gw.sleep(0.3)
    local closed, told = 0, 0
    for i = 1, 40 do
      socks[i]:settimeout(10) -- all 40 checked well within the 2 s head timeout
      local data, err, partial = socks[i]:receive("*a")
      if err ~= "timeout" then closed = closed + 1 end
      if (data or partial or ""):find("^HTTP/1.1 503") then told = told + 1 end
    end
    assert.equal(8, closed)
    assert.equal(8, told)
    -- the admin socket has a cap of its own: full admin_listen does not stop gatewayctl ...
    local code, out, ms = timed_ctl(g, "status")
    assert.equal(0, code, out)
    assert.truthy(ms < 1500, ms)
    for i = 1, 40 do socks[i]:close() end
    -- ... and a flood of the admin socket does not stop admin_listen
    local flood = unix_client(g, "many", g.socket, "40")
    gw.sleep(0.3)
    local res = http_get(port, "/status")
    assert.equal(200, res.status)
    assert.equal(8, tonumber((flood())))
    code, out = g:ctl("status")
    assert.equal(0, code, out)
    res = http_get(port, "/metrics")
    assert.equal(200, res.status)
    g:stop()
  end)

  it("sends answers of any size whole, and a client that does not read them delays nothing", function()
    local lines = {}
    for i = 1, 3000 do
      lines[#lines + 1] = ('route { path = "/a-rather-long-path-for-route-number-%d/{id}", handler = function() return 200 end }'):format(i)
    end
    local g = helpers.start(table.concat(lines, "\n"))
    local code, out
    for _ = 1, 100 do -- the admin socket is answered once every worker loaded the 3,000 routes
      code, out = g:ctl("routes", "--json")
      if code ~= 3 then break end
      gw.sleep(0.1)
    end
    assert.equal(0, code, out:sub(-300))
    assert.truthy(#out > 65536 * 4, #out)
    local routes = gw.json.decode(out)
    assert.equal(3000, #routes)
    -- a reader that takes 3 s to start reading a 300+ KiB answer
    local file = g.dir .. "/slow.out"
    local slow = unix_client(g, "slow", g.socket, "routes json", "3", file)
    gw.sleep(1)
    local ms
    code, out, ms = timed_ctl(g, "status")
    assert.equal(0, code, out)
    assert.truthy(ms < 1500, ("gatewayctl status took %d ms"):format(ms))
    assert.equal("done\n", (slow()))
    local answer = helpers.read_file(file)
    local body = answer:match("^OK[^\n]*\n(.*)$")
    assert.truthy(body, answer:sub(1, 100))
    assert.equal(3000, #gw.json.decode(body))
    g:stop()
  end)

  describe("names from requests", function()
    local port, g
    local EVIL = 'a"b},\n\\{"x":1}'
    local INJECT = 'u"},"upstream:app":{"in_use":0,"x":"'
    setup(function()
      port = helpers.free_port()
      g = helpers.start(([[
        admin_listen "127.0.0.1:%d"
        upstream "svc" { targets = { "127.0.0.1:1" }, max_concurrency = 3 }
        keep = {}
        route { path = "/evil", handler = function()
          keep[#keep + 1] = gw.semaphore(%q, 1)
          return 200, "kept"
        end }
        route { path = "/many", handler = function(ctx)
          for i = 1, tonumber(ctx.request.query:match("n=(%%d+)")) do
            keep[#keep + 1] = gw.semaphore("limit-conn:spec:" .. i, 2)
          end
          return 200, "kept"
        end }
        route { path = "/hold", plugins = { ["limit-conn"] = { max = 5, key = "header:X-User" } },
                handler = function() gw.sleep(4) return 200, "held" end }
      ]]):format(port, EVIL))
    end)
    teardown(function() g:stop() end)

    it("are escaped in status (text and JSON), /status and /metrics", function()
      assert.equal(200, g:request("GET", "/evil").status)
      helpers.parallel({
        function() return g:request("GET", "/hold", { headers = { ["X-User"] = INJECT } }).status end,
        function()
          gw.sleep(0.5)
          local code, out = g:ctl("status", "--json")
          assert.equal(0, code, out)
          local st = gw.json.decode(out)
          local evil, injected, upstream_svc
          for name, s in pairs(st.semaphores) do
            if name == EVIL then evil = s end
            if name:find(INJECT, 1, true) then injected = s end
            if name == "upstream:svc" then upstream_svc = s end
          end
          assert.truthy(evil, out)
          assert.truthy(injected, out)
          assert.equal(1, injected.in_use)
          assert.equal(3, upstream_svc.capacity)
          assert.is_nil(st.semaphores["upstream:app"])
          assert.equal(g.file, st.config)
          -- /status is the same JSON
          local res = http_get(port, "/status")
          assert.equal(200, res.status)
          assert.truthy(res.json.semaphores[EVIL])
          assert.is_nil(res.json.semaphores["upstream:app"])
          -- the text: one line per semaphore, the name escaped
          code, out = g:ctl("status")
          assert.equal(0, code, out)
          assert.truthy(out:find('a\\"b},\\n\\\\{\\"x\\":1}', 1, true), out)
          for line in out:gmatch("[^\n]+") do
            assert.falsy(line:find("^\\{"), "a name forged a line: " .. line)
          end
          -- Prometheus: every line well-formed, the names round-trip
          res = http_get(port, "/metrics")
          assert.equal(200, res.status)
          check_prometheus(res.body)
          local names = {}
          for v in res.body:gmatch('moongate_semaphore_capacity{name="(.-)"} ') do names[unescape_label(v)] = true end
          assert.truthy(names[EVIL], res.body)
          assert.falsy(names["upstream:app"])
          return true
        end,
      })
    end)

    it("create a bounded number of series: the busiest are listed, the rest summed per family", function()
      assert.equal(200, g:request("GET", "/many?n=1300").status)
      helpers.parallel({
        function() return g:request("GET", "/hold", { headers = { ["X-User"] = "hot1" } }).status end,
        function() return g:request("GET", "/hold", { headers = { ["X-User"] = "hot2" } }).status end,
        function()
          gw.sleep(0.5)
          local code, out = g:ctl("status", "--json")
          assert.equal(0, code, out:sub(-200))
          local st = gw.json.decode(out)
          local listed, hot, agg = 0, 0, nil
          for name, s in pairs(st.semaphores) do
            if name == "limit-conn:*" then agg = s
            elseif name:find("^limit%-conn:") then
              listed = listed + 1
              if name:find(":hot%d$") then hot = hot + 1; assert.equal(1, s.in_use) end
            end
          end
          assert.equal(2, hot)          -- the ones in use are among those listed
          assert.truthy(listed <= 100, listed)
          assert.truthy(agg, "no aggregate")
          assert.truthy(agg.folded >= 1200, agg.folded)
          assert.truthy(st.semaphores_folded >= agg.folded, st.semaphores_folded)
          assert.equal(agg.folded * 2, agg.capacity) -- the sum of the folded ones' capacities
          assert.truthy(#out < 65536, #out)
          code, out = g:ctl("status")
          assert.truthy(out:find("folded", 1, true), out:sub(-500))
          local res = http_get(port, "/metrics")
          check_prometheus(res.body)
          local series = 0
          for _ in res.body:gmatch("\nmoongate_semaphore_in_use{") do series = series + 1 end
          assert.truthy(series <= 103, series)
          assert.truthy(res.body:find('moongate_semaphore_in_use{name="limit-conn:*"} 0', 1, true))
          local folded = res.body:match('moongate_semaphores_folded{family="limit%-conn"} (%d+)')
          assert.truthy(tonumber(folded) >= 1200, folded)
          return true
        end,
      })
    end)
  end)
end)
