-- `gatewayctl trace`: the live timeline of requests (each plugin step, the
-- handler, every upstream attempt: when, how long on the CPU, how long
-- waiting and on what), its filters, the recent history, and a subscriber
-- that reads too slowly (it loses lines; nobody waits for it).
local helpers = require "spec.helpers"
local upstream = require "spec.upstream"

local FIXTURES = os.getenv("PWD") .. "/spec/fixtures/plugins"
local PYTHON = "/usr/bin/python3"
local CLIENT = os.getenv("PWD") .. "/spec/fixtures/unix_client.py"

local function http_get(port, path)
  local s = gw.tcp()
  s:settimeout(5000)
  assert(s:connect("127.0.0.1", port))
  s:send("GET " .. path .. " HTTP/1.1\r\nHost: a\r\n\r\n")
  local res = assert(helpers.read_response(s))
  s:close()
  return res
end

local function metric(port, name)
  for line in http_get(port, "/metrics").body:gmatch("[^\n]+") do
    if line:sub(1, #name + 1) == name .. " " then return tonumber(line:sub(#name + 2)) end
  end
end

local function wait_for(what, fn, seconds)
  local deadline = gw.monotonic_ms() + (seconds or 5) * 1000
  while not fn() do
    if gw.monotonic_ms() > deadline then error("timed out waiting for " .. what, 2) end
    gw.sleep(0.02)
  end
end

-- `gatewayctl trace ARGS` in the background: t.wait() -> exit code, stdout, stderr
local function trace(g, ...)
  local ctl = helpers.gatewayd:gsub("gatewayd$", "gatewayctl")
  local out = g.dir .. "/trace-" .. math.random(1e9)
  local pid = assert(gw.process.spawn({ ctl, "-s", g.socket, "trace", ... }, { stdout = out, stderr = out .. ".err" }))
  return {
    pid = pid,
    wait = function(seconds)
      local how, code = helpers.wait_exit(pid, seconds or 10)
      if not how then
        gw.process.kill(pid, gw.process.SIGKILL)
        helpers.wait_exit(pid, 5)
      end
      return code, helpers.read_file(out), helpers.read_file(out .. ".err")
    end,
  }
end

local function json_lines(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do out[#out + 1] = assert(gw.json.decode(line), line) end
  return out
end

local function config(up, admin, extra)
  return ([[
plugins_dir "%s"
admin_listen "127.0.0.1:%d"
upstream "orders" { targets = { "127.0.0.1:%d" } }
upstream "dead" { targets = { "127.0.0.1:1" }, retries = 0 }
route { path = "/orders/{id}", upstream = "orders", plugins = { lookup = {}, quick = {} } }
route { path = "/down", upstream = "dead" }
route { path = "/hello", handler = function() return 200, "hi" end }
route { path = "/slow", handler = function() gw.sleep(0.15) return 200, "slow" end }
route { path = "/call", handler = function(ctx)
  local res = gw.http.request { upstream = "orders", path = "/inner" }
  return 200, res.body
end }
route { path = "/long/{rest*}", handler = function() return 200, "ok" end }
]]):format(FIXTURES, admin, up.port) .. (extra or "")
end

describe("gatewayctl trace", function()
  local up, g, admin

  before_each(function()
    up = upstream.start(function(req) return 200, {}, "order " .. req.path end)
    admin = helpers.free_port()
  end)
  after_each(function()
    if g then g:stop() end
    g = nil
    up:stop()
  end)

  local function subscribed(n)
    wait_for(n .. " subscribers", function() return metric(admin, "moongate_trace_subscribers") == n end)
  end

  it("streams each request's steps, waits and attempts with the access log's trace id (--json)", function()
    g = helpers.start(config(up, admin))
    local t = trace(g, "--json", "--limit", "2")
    subscribed(1)
    local res = g:request("GET", "/orders/7")
    assert.equal(200, res.status)
    g:request("GET", "/hello")
    local code, out, err = t.wait()
    assert.equal(0, code, err)
    local lines = json_lines(out)
    assert.equal(2, #lines)
    local r = lines[1]
    assert.equal(res.headers["x-request-id"], r.trace_id)
    assert.equal(g:entry(r.trace_id).trace_id, r.trace_id)
    assert.equal("GET", r.method)
    assert.equal("/orders/7", r.path)
    assert.equal("/orders/{id}", r.route)
    assert.equal(200, r.status)
    assert.equal("orders", r.upstream)
    assert.is_true(r.duration_ms >= 25)
    local lookup, quick, attempt = r.phases[1], r.phases[2], r.phases[3]
    assert.equal(3, #r.phases)
    assert.same({ "step", "access", "lookup" }, { lookup.kind, lookup.phase, lookup.plugin })
    assert.is_true(lookup.wait_ms >= 25, "waited " .. lookup.wait_ms)
    assert.is_true(lookup.run_ms < lookup.wait_ms)
    assert.equal("gw.sleep", lookup.waits[1].on)
    assert.is_true(lookup.waits[1].ms >= 25)
    assert.equal("quick", quick.plugin)
    assert.equal(0, quick.wait_ms)
    assert.equal(0, #quick.waits)
    assert.is_true(quick.start_ms >= lookup.start_ms + lookup.duration_ms - 0.001, "in order")
    assert.equal("attempt", attempt.kind)
    assert.equal("127.0.0.1:" .. up.port, attempt.target)
    assert.equal(1, attempt.attempt)
    assert.equal(200, attempt.status)
    assert.is_number(attempt.wait_ms) -- waiting for the upstream's first byte
    assert.is_number(attempt.body_ms)
    assert.is_true(attempt.start_ms >= quick.start_ms)
    -- a handler route: one handler phase
    assert.equal("/hello", lines[2].path)
    assert.equal("handler", lines[2].phases[1].kind)
    subscribed(0) -- the stream ended: nothing is recorded for it any more
  end)

  it("shows gw.http.request as a call of the handler, with its attempts", function()
    g = helpers.start(config(up, admin))
    local t = trace(g, "--json", "--limit", "1")
    subscribed(1)
    assert.equal("order /inner", g:request("GET", "/call").body)
    local code, out = t.wait()
    assert.equal(0, code)
    local r = json_lines(out)[1]
    local handler, call = r.phases[1], r.phases[2]
    assert.equal("handler", handler.kind)
    assert.equal("gw.http.request", handler.waits[1].on)
    assert.equal("call", call.kind)
    assert.equal("/inner", call.path)
    assert.equal("orders", call.upstream)
    assert.equal(200, call.status)
    assert.equal("handler", call["in"])
    assert.equal(1, #call.attempts)
    assert.equal(200, call.attempts[1].status)
  end)

  it("times attempts on an HTTP/2 upstream too (a stream on a shared connection)", function()
    local h2 = helpers.start([[
      listen { "127.0.0.1:{{PORT}}", http2 = true }
      route { path = "/{x*}", handler = function(ctx) gw.sleep(0.02) return 200, "h2 " .. ctx.request.http_version end }
    ]])
    g = helpers.start(config(up, admin, ('upstream "h2" { targets = { "127.0.0.1:%d" }, protocol = "h2c" }\n' ..
                                         'route { path = "/h2/{x*}", upstream = "h2" }\n'):format(h2.port)))
    local t = trace(g, "--json", "--limit", "2")
    subscribed(1)
    assert.equal("h2 2", g:request("GET", "/h2/a", { h1 = true }).body)
    assert.equal("h2 2", g:request("GET", "/h2/b", { h1 = true }).body)
    local code, out = t.wait()
    assert.equal(0, code)
    local lines = json_lines(out)
    for i, r in ipairs(lines) do
      local a = r.phases[1]
      assert.equal("attempt", a.kind, "request " .. i)
      assert.equal("h2", a.upstream)
      assert.equal(200, a.status)
      assert.is_number(a.send_ms)
      assert.is_true(a.wait_ms >= 15, "waited for the first byte " .. tostring(a.wait_ms))
    end
    h2:stop()
  end)

  it("prints a readable timeline by default", function()
    g = helpers.start(config(up, admin))
    local t = trace(g, "--limit", "1")
    subscribed(1)
    local res = g:request("GET", "/orders/8")
    local code, out = t.wait()
    assert.equal(0, code)
    local id = res.headers["x-request-id"]
    assert.truthy(out:find("GET /orders/8 -> 200 in ", 1, true), out)
    assert.truthy(out:find("route /orders/{id}  trace " .. id, 1, true), out)
    assert.truthy(out:find("access lookup  [%d.]+ ms: run [%d.]+, wait [%d.]+: gw.sleep [%d.]+"), out)
    assert.truthy(out:find("upstream orders 127.0.0.1:" .. up.port .. " (attempt 1)", 1, true), out)
    assert.truthy(out:find("upstream read [%d.]+, body [%d.]+ %-> 200"), out)
  end)

  it("filters by status class, route and duration", function()
    g = helpers.start(config(up, admin))
    local t5 = trace(g, "--json", "--status", "5xx", "--limit", "1")
    local tr = trace(g, "--json", "--route", "/hello", "--limit", "1")
    local ts = trace(g, "--json", "--slower", "100ms", "--limit", "1")
    subscribed(3)
    g:request("GET", "/orders/1")
    g:request("GET", "/hello")
    g:request("GET", "/down")
    g:request("GET", "/slow")
    local _, out5 = t5.wait()
    local _, outr = tr.wait()
    local _, outs = ts.wait()
    local r5, rr, rs = json_lines(out5), json_lines(outr), json_lines(outs)
    assert.equal(1, #r5)
    assert.equal(502, r5[1].status)
    assert.equal("refused", r5[1].error)
    assert.equal("refused", r5[1].phases[1].error)
    assert.equal("/hello", rr[1].path)
    assert.equal("/slow", rs[1].path)
    assert.is_true(rs[1].duration_ms > 100)
  end)

  it("shows the recent requests first: those sampled while no one watched", function()
    g = helpers.start(config(up, admin, "tracing { ratio = 1 }\n")) -- no endpoint: kept for the timeline
    g:request("GET", "/hello")
    g:request("GET", "/down")
    g:request("GET", "/orders/3")
    gw.sleep(0.1) -- the main thread takes them from the workers every 20 ms
    local code, out = trace(g, "--json", "--recent").wait()
    assert.equal(0, code)
    local lines = json_lines(out)
    assert.equal(3, #lines)
    assert.same({ "/hello", "/down", "/orders/3" }, { lines[1].path, lines[2].path, lines[3].path })
    assert.is_true(lines[1].sampled)
    code, out = trace(g, "--json", "--recent", "--status", "5xx").wait()
    assert.equal(1, #json_lines(out))
  end)

  it("records nothing while nobody watches and tracing is off", function()
    g = helpers.start(config(up, admin))
    g:request("GET", "/hello")
    gw.sleep(0.1)
    assert.equal(0, metric(admin, "moongate_trace_requests_recorded_total"))
    local code, out = trace(g, "--recent").wait()
    assert.equal(0, code)
    assert.equal("", out)
  end)

  it("drops lines for a subscriber that reads too slowly; the requests never wait for it", function()
    g = helpers.start(config(up, admin))
    local out = g.dir .. "/stall.out"
    -- it subscribes, then reads nothing for 8 s
    local pid = assert(gw.process.spawn({ PYTHON, CLIENT, "stall", g.socket, "trace", "8" }, { stdout = out }))
    subscribed(1)
    local path = "/long/" .. ("x"):rep(1000) -- about 1.1 KB of timeline per request
    local fns = {}
    for i = 1, 4 do
      fns[i] = function()
        -- HTTP/1.1 whatever the spec wire: this is about the subscriber, and fast
        for _ = 1, 400 do assert.equal(200, g:request("GET", path, { h1 = true }).status) end
        return true
      end
    end
    helpers.parallel(fns)
    -- all 1600 answered (about 1.7 MB of timeline) while the subscriber still read nothing
    assert.is_nil(gw.process.poll(pid), "the requests waited for the subscriber")
    wait_for("dropped lines", function() return metric(admin, "moongate_trace_timeline_lines_dropped_total") > 0 end)
    helpers.wait_exit(pid, 10)
    local got = tonumber(helpers.read_file(out))
    assert.is_true(got > 0 and got < 1600 * 1100, "the subscriber got " .. tostring(got) .. " bytes")
    subscribed(0)
    local code = g:ctl("status")
    assert.equal(0, code)
  end)

  it("refuses a bad option", function()
    g = helpers.start(config(up, admin))
    local code, _, err = trace(g, "--status", "6xx").wait()
    assert.equal(1, code)
    assert.truthy(err:find("status: want a class like 5xx", 1, true), err)
    code, _, err = trace(g, "--colour").wait()
    assert.equal(2, code)
    assert.truthy(err:find("unknown option '--colour'", 1, true), err)
  end)
end)
