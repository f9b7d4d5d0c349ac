-- gRPC through the gateway, and HTTP/2 upstreams: real python3-grpcio servers
-- and clients (spec/grpcpeer.py, generic handlers: no generated code), raw
-- frames for the gateway's own gRPC errors (spec/h2peer.py), an HTTP/2
-- server that stops answering PINGs (spec/h2server.py).
local helpers = require "spec.helpers"

local FIXTURES = os.getenv("PWD") .. "/spec/fixtures/plugins"

-- Starts a Python peer and waits for its first line (it listens then); returns pid, dir.
local function start_peer(argv, ready)
  local dir = helpers.tmpdir()
  local pid = assert(gw.process.spawn(argv, { stdout = dir .. "/out", stderr = dir .. "/err" }))
  for _ = 1, 200 do
    if helpers.read_file(dir .. "/out"):find(ready, 1, true) then return pid, dir end
    gw.sleep(0.025)
  end
  error("peer did not start: " .. helpers.read_file(dir .. "/err"))
end

local function stop_peer(pid)
  gw.process.kill(pid, gw.process.SIGTERM)
  if not helpers.wait_exit(pid, 5) then
    gw.process.kill(pid, gw.process.SIGKILL)
    helpers.wait_exit(pid, 5)
  end
end

local function grpc_server(port, max_age_ms)
  return start_peer({ "/usr/bin/python3", "spec/grpcpeer.py", "server", tostring(port), max_age_ms }, "serving")
end

-- A grpcpeer.py client scenario against the gateway: its JSON report.
local function client(g, scenario, arg, seconds, authority)
  local dir = helpers.tmpdir()
  local argv = { "/usr/bin/python3", "spec/grpcpeer.py", "client", tostring(g.port), scenario, arg or "-" }
  if authority then argv = { "/usr/bin/env", "GRPCPEER_AUTHORITY=" .. authority, unpack(argv) } end
  local pid = assert(gw.process.spawn(argv,
                                      { stdout = dir .. "/out", stderr = dir .. "/err" }))
  if not helpers.wait_exit(pid, seconds or 60) then gw.process.kill(pid, gw.process.SIGKILL) end
  local out = helpers.read_file(dir .. "/out")
  return assert(gw.json.decode(out:match("([^\n]+)\n?$") or ""), "client said: " .. out .. helpers.read_file(dir .. "/err"))
end

-- A raw gRPC call with spec/h2peer.py: the answer's frames.
local function raw_call(g, path)
  local dir = helpers.tmpdir()
  local pid = assert(gw.process.spawn({ "/usr/bin/python3", "spec/h2peer.py", tostring(g.port), "grpc_call", path },
                                      { stdout = dir .. "/out", stderr = dir .. "/err" }))
  helpers.wait_exit(pid, 30)
  local out = helpers.read_file(dir .. "/out")
  return assert(gw.json.decode(out:match("([^\n]+)\n?$") or ""), "h2peer said: " .. out .. helpers.read_file(dir .. "/err"))
end

local function metrics(port)
  local s = gw.tcp()
  s:settimeout(5000)
  assert(s:connect("127.0.0.1", port))
  s:send("GET /metrics HTTP/1.0\r\n\r\n")
  local res = assert(helpers.read_response(s))
  s:close()
  return res.body
end

local function upstream_figures(g, name)
  local _, out = g:ctl("upstreams", "--json")
  for _, w in ipairs(gw.json.decode(out)) do
    for _, u in ipairs(w.upstreams) do
      if u.name == name then return u.targets[1] end
    end
  end
end

describe("gRPC", function()
  local gport, gpid, g

  setup(function()
    gport = helpers.free_port()
    gpid = grpc_server(gport)
    local closed = helpers.free_port()
    g = helpers.start(([[
      listen { "127.0.0.1:{{PORT}}", http2 = true }
      plugins_dir "%s"
      error_header "X-Gateway-Error"
      upstream "grpc" { targets = { "127.0.0.1:%d" }, protocol = "h2c", timeouts = { read = "10s" } }
      upstream "gone" { targets = { "127.0.0.1:%d" }, protocol = "h2c", retries = 0 }
      upstream "narrow" { targets = { "127.0.0.1:%d" }, protocol = "h2c", max_concurrency = 1 }
      route { path = "/test.Echo/{method}", upstream = "grpc", timeout = "20s", max_body = "8m" }
      route { path = "/gone.Svc/{method}", upstream = "gone" }
      route { host = "narrow.test", path = "/test.Echo/{method}", upstream = "narrow" }
      route { host = "short.test", path = "/test.Echo/{method}", upstream = "grpc", timeout = "1s" }
      route { path = "/keyed.Svc/{method}", upstream = "grpc",
              plugins = { ["key-auth"] = { keys = { k1 = "alice" } } } }
      route { path = "/walled.Svc/{method}", upstream = "grpc",
              plugins = { ["ip-restriction"] = { deny = { "127.0.0.0/8" } } } }
      route { path = "/boom.Svc/{method}", handler = function() error("kaboom") end }
      route { path = "/slow.Svc/{method}", timeout = "200ms", handler = function() gw.sleep(2) return 200 end }
      route { path = "/plugin.Svc/{method}", handler = function(ctx)
        return gw.grpc.status(9, "not now: " .. ctx.request.grpc.service .. "/" .. ctx.request.grpc.method)
      end }
      route { path = "/done.Svc/{method}", handler = function() return gw.grpc.status(0, "") end }
    ]]):format(FIXTURES, gport, closed, gport))
  end)
  teardown(function()
    g:stop()
    stop_peer(gpid)
  end)

  it("proxies unary calls h2 to h2, with the deadline the caller has left", function()
    local r = client(g, "unary", "hello")
    assert.same({ "OK", "hello" }, { r.code, r.value })
    r = client(g, "timeout", "2")
    assert.equal("OK", r.code)
    local left = tonumber(r.value) -- what the upstream saw as grpc-timeout
    assert.is_true(left > 1500 and left < 2100, "upstream saw " .. r.value .. " ms")
    -- a route timeout shorter than the caller's: the upstream is told the route's remainder
    r = client(g, "timeout", "5", nil, "short.test")
    assert.equal("OK", r.code)
    assert.is_true(tonumber(r.value) <= 1000, "upstream saw " .. r.value .. " ms")
    assert.equal(0, assert(g:find_entry(function(x) return x.host == "short.test" end)).grpc_status)
  end)

  it("streams server, client and bidirectional calls message by message", function()
    local r = client(g, "server_stream", "1000:100")
    assert.same({ "OK", 1000, 100000 }, { r.code, r.count, r.bytes })
    r = client(g, "client_stream", "500:1000")
    assert.same({ "OK", "500:500000" }, { r.code, r.value })
    -- ping-pong: each message is sent only after the previous answer came back through the gateway
    r = client(g, "bidi", "20")
    assert.equal("OK", r.code)
    assert.equal(20, #r.got)
    assert.equal("m19", r.got[20])
  end)

  it("carries 4 MB messages both ways", function()
    local r = client(g, "big", tostring(4 * 1024 * 1024))
    assert.equal("OK", r.code)
    assert.equal(4 * 1024 * 1024, r.value)
    assert.equal(4 * 1024 * 1024, r.down)
  end)

  it("carries 1,000 concurrent calls over a few upstream connections", function()
    local r = client(g, "many", "1000")
    assert.same({ OK = 1000 }, r.codes)
    local t = upstream_figures(g, "grpc")
    assert.is_true(t.connections >= 1 and t.connections <= 12, "connections " .. tostring(t.connections))
  end)

  it("answers its own errors the gRPC way: HTTP 200, trailers-only, grpc-status, the trace id", function()
    local cases = {
      { "/nothere.Svc/M", 12 },     -- no route: UNIMPLEMENTED
      { "/gone.Svc/M", 14 },        -- refused: UNAVAILABLE
      { "/slow.Svc/M", 4 },         -- the gateway's deadline: DEADLINE_EXCEEDED
      { "/keyed.Svc/M", 16 },       -- key-auth: UNAUTHENTICATED
      { "/walled.Svc/M", 7 },       -- ip-restriction: PERMISSION_DENIED
      { "/boom.Svc/M", 13 },        -- a Lua error: INTERNAL
      { "/plugin.Svc/M", 9 },       -- gw.grpc.status from a handler
    }
    for _, c in ipairs(cases) do
      local r = raw_call(g, c[1])
      local h = r.headers and r.headers["1"]
      assert.truthy(h, c[1] .. ": " .. gw.json.encode(r))
      assert.equal("200", h[":status"], c[1])
      assert.equal("application/grpc", h["content-type"], c[1])
      assert.equal(tostring(c[2]), h["grpc-status"], c[1])
      assert.is_true(r.trailers_only, c[1] .. ": not a trailers-only answer")
      assert.is_nil(r.data["1"], c[1])
      if c[1] ~= "/plugin.Svc/M" then
        assert.truthy(h["grpc-message"]:find("trace id " .. h["x-request-id"], 1, true), h["grpc-message"])
      else
        assert.equal("not now: plugin.Svc/M", h["grpc-message"])
      end
      -- the access line says the status the caller got, whoever chose it
      assert.equal(c[2], assert(g:entry(h["x-request-id"])).grpc_status, c[1])
    end
    -- gw.grpc.status(0, ""): a handler's OK is logged as such too
    local r = raw_call(g, "/done.Svc/M")
    local h = r.headers["1"]
    assert.same({ "200", "0", true }, { h[":status"], h["grpc-status"], r.trailers_only })
    local e = assert(g:entry(h["x-request-id"]))
    assert.same({ 200, 0 }, { e.status, e.grpc_status })
    -- a real client sees them as statuses, with the message
    r = client(g, "unary") -- control
    assert.equal("OK", r.code)
  end)

  it("refuses a malformed grpc-timeout instead of running the call with another deadline", function()
    for _, v in ipairs({ "abc", "123456789S", "5", "10x" }) do
      local r = raw_call(g, "/test.Echo/Unary|grpc-timeout=" .. v)
      local h = assert(r.headers and r.headers["1"], gw.json.encode(r))
      assert.same({ "200", "13", true }, { h[":status"], h["grpc-status"], r.trailers_only }, v)
      assert.truthy(h["grpc-message"]:find("bad request (bad_request, trace id ", 1, true), h["grpc-message"])
      local e = assert(g:entry(h["x-request-id"]))
      assert.same({ 400, "bad_request", 13 }, { e.status, e.error, e.grpc_status })
      assert.truthy(g:error_log():find("malformed grpc-timeout '" .. v .. "'", 1, true), g:error_log())
    end
    local r = raw_call(g, "/test.Echo/Unary|grpc-timeout=12345678m") -- 8 digits: fine
    assert.equal("0", r.trailers and r.trailers["1"] and r.trailers["1"]["grpc-status"], gw.json.encode(r))
  end)

  it("answers busy as RESOURCE_EXHAUSTED and gives the permit back when the caller cancels", function()
    local results = helpers.parallel({
      function() return client(g, "cancel", "3000", nil, "narrow.test") end, -- holds narrow's only permit, then cancels
      function() gw.sleep(0.8); return raw_call(g, "/test.Echo/Unary|:authority=narrow.test") end,
    })
    assert.equal("CANCELLED", results[1].code)
    assert.equal("8", (results[2].headers or {})["1"] and results[2].headers["1"]["grpc-status"],
                 gw.json.encode(results[2])) -- while it held the permit
    gw.sleep(0.2)
    local _, out = g:ctl("status", "--json")
    local st = gw.json.decode(out)
    assert.equal(0, st.semaphores["upstream:narrow"].in_use) -- the cancelled call gave it back
    assert.truthy(g:find_entry(function(x) return x.error == "client_abort" end))
  end)
end)

describe("gRPC calls that last, and calls cut short", function()
  local gport, gpid, g, aport

  setup(function()
    gport = helpers.free_port()
    gpid = grpc_server(gport)
    aport = helpers.free_port()
    g = helpers.start(([[
      listen { "127.0.0.1:{{PORT}}", http2 = true }
      admin_listen "127.0.0.1:%d"
      upstream "grpc" { targets = { "127.0.0.1:%d" }, protocol = "h2c", timeouts = { send = "1s", read = "1s" } }
      route { path = "/test.Echo/{method}", upstream = "grpc", timeout = "24h" }
      route { host = "short.test", name = "short", path = "/test.Echo/{method}", upstream = "grpc", timeout = "1s" }
    ]]):format(aport, gport))
  end)
  teardown(function()
    g:stop()
    stop_peer(gpid)
  end)

  local function entry_of(r)
    local id = r.details and r.details:match("trace id (%x+)")
    return assert(id and g:entry(id), "no trace id in: " .. gw.json.encode(r))
  end

  it("a bidirectional stream lives as long as messages flow, past timeouts.send and timeouts.read", function()
    local r = client(g, "bidi_slow", "6:400") -- 2.4 s, one message both ways every 400 ms
    assert.same({ "OK", 6 }, { r.code, r.got }, gw.json.encode(r))
  end)

  it("a server stream may be as quiet as timeouts.read between messages; longer ends the call with its status", function()
    local r = client(g, "watch", "4:500")
    assert.same({ "OK", 4 }, { r.code, r.got }, gw.json.encode(r))
    -- silent for 2 s after the first message: the read timeout, as a gRPC status with the trace id, not a reset
    r = client(g, "watch", "3:2000")
    assert.same({ "DEADLINE_EXCEEDED", 1 }, { r.code, r.got }, gw.json.encode(r))
    assert.truthy(r.details:find("upstream timed out (read_timeout, trace id ", 1, true), r.details)
    local e = entry_of(r)
    assert.same({ 504, "read_timeout", 4 }, { e.status, e.error, e.grpc_status })
  end)

  it("the deadline ends a call the same way whichever side's timer fires first", function()
    -- the upstream is told the time left (grpc-timeout) and usually ends the call a hair before the gateway
    for _ = 1, 3 do
      local r = client(g, "unary", "sleep:3000", nil, "short.test")
      assert.equal("DEADLINE_EXCEEDED", r.code, gw.json.encode(r))
      assert.truthy(r.details:find("deadline exceeded (deadline, trace id ", 1, true), r.details)
      local e = entry_of(r)
      assert.same({ 504, "deadline", 4 }, { e.status, e.error, e.grpc_status })
    end
    -- after messages went out: the gateway's status in the trailers too
    local r = client(g, "bidi_slow", "6:400", nil, "short.test")
    assert.equal("DEADLINE_EXCEEDED", r.code, gw.json.encode(r))
    assert.is_true(r.got >= 1, gw.json.encode(r))
    local e = entry_of(r)
    assert.same({ 504, "deadline", 4 }, { e.status, e.error, e.grpc_status })
    -- an upstream's own DEADLINE_EXCEEDED well before the deadline is the upstream's answer, relayed
    r = client(g, "unary", "fail:4:my own deadline")
    assert.same({ "DEADLINE_EXCEEDED", "my own deadline" }, { r.code, r.details })
    e = assert(g:find_entry(function(x) return x.path == "/test.Echo/Unary" and x.grpc_status == 4 and not x.error end))
    assert.equal(200, e.status)
  end)

  it("counts what the callers got by gRPC status, and the gateway's failures by kind", function()
    local m = metrics(aport)
    local function count(pattern) return tonumber(m:match(pattern:gsub("[%(%)%.%%%+%-%*%?%[%]%^%${}]", "%%%0") .. " (%d+)")) end
    -- the three unary deadlines and the bidi one on "short"
    assert.equal(4, count('moongate_grpc_requests_total{worker="0",route="short",grpc_status="4"}'), m)
    assert.equal(4, count('moongate_request_errors_total{worker="0",route="short",kind="deadline"}'), m)
    assert.equal(4, count('moongate_requests_total{worker="0",route="short",status="5xx"}'), m)
    -- the default route: OKs, the read timeout (a gateway failure), the upstream's own DEADLINE_EXCEEDED (an answer)
    assert.equal(2, count('moongate_grpc_requests_total{worker="0",route="/test.Echo/{method}",grpc_status="0"}'), m)
    assert.equal(2, count('moongate_grpc_requests_total{worker="0",route="/test.Echo/{method}",grpc_status="4"}'), m)
    assert.equal(1, count('moongate_request_errors_total{worker="0",route="/test.Echo/{method}",kind="read_timeout"}'), m)
    assert.equal(1, count('moongate_requests_total{worker="0",route="/test.Echo/{method}",status="5xx"}'), m)
  end)

  it("an upstream that dies in the middle of a call ends it with UNAVAILABLE and the trace id", function()
    local port = helpers.free_port()
    local pid = grpc_server(port)
    local g2 = helpers.start(([[
      listen { "127.0.0.1:{{PORT}}", http2 = true }
      upstream "grpc" { targets = { "127.0.0.1:%d" }, protocol = "h2c" }
      route { path = "/test.Echo/{method}", upstream = "grpc" }
    ]]):format(port))
    local results = helpers.parallel({
      function() return client(g2, "watch", "50:100") end,
      function() gw.sleep(1); gw.process.kill(pid, gw.process.SIGKILL) end,
    })
    helpers.wait_exit(pid, 5)
    local r = results[1]
    assert.equal("UNAVAILABLE", r.code, gw.json.encode(r))
    assert.is_true(r.got >= 1 and r.got < 50, gw.json.encode(r))
    assert.truthy(r.details:find("bad gateway (reset, trace id ", 1, true), r.details)
    local e = assert(g2:entry(r.details:match("trace id (%x+)")))
    assert.same({ 502, "reset", 14 }, { e.status, e.error, e.grpc_status })
    g2:stop()
  end)
end)

describe("HTTP/2 upstreams", function()
  it("survive an upstream that sends GOAWAY under load: every call succeeds", function()
    local port = helpers.free_port()
    local pid = grpc_server(port, 400) -- GOAWAY to every connection after 400 ms
    local g = helpers.start(([[
      listen { "127.0.0.1:{{PORT}}", http2 = true }
      upstream "grpc" { targets = { "127.0.0.1:%d" }, protocol = "h2c" }
      route { path = "/test.Echo/{method}", upstream = "grpc" }
    ]]):format(port))
    local r = client(g, "load", "3")
    local total = 0
    for _, n in pairs(r.codes) do total = total + n end
    assert.is_true(total > 100, gw.json.encode(r.codes))
    assert.equal(total, r.codes.OK, gw.json.encode(r.codes))
    assert.truthy(g:error_log():find("sent GOAWAY", 1, true))
    g:stop()
    stop_peer(pid)
  end)

  it("close a connection whose server stops answering PINGs, and go on on a new one", function()
    local port = helpers.free_port()
    local pid, dir = start_peer({ "/usr/bin/python3", "spec/h2server.py", tostring(port), "silent_after_first" },
                                "listening")
    local g = helpers.start(([[
      upstream "h2" { targets = { "127.0.0.1:%d" }, protocol = "h2c", pool = { ping_interval = "300ms" },
                      timeouts = { connect = "300ms", read = "2s" } }
      route { path = "/{x*}", upstream = "h2" }
    ]]):format(port))
    assert.equal("ok from connection 1", g:request("GET", "/a").body)
    gw.sleep(1.2) -- idle: PING after 300 ms, no answer within 300 ms
    assert.truthy(g:error_log():find("did not answer a PING", 1, true), g:error_log())
    assert.equal("ok from connection 2", g:request("GET", "/b").body)
    assert.truthy(helpers.read_file(dir .. "/out"):find("connection 2", 1, true))
    g:stop()
    stop_peer(pid)
  end)

  it("serve HTTP/1.1 clients, gw.http.request (parallel calls share a connection) and health checks", function()
    local port = helpers.free_port()
    local pid, dir = start_peer({ "/usr/bin/python3", "spec/h2server.py", tostring(port), "normal" }, "listening")
    local g = helpers.start(([[
      upstream "h2" { targets = { "127.0.0.1:%d" }, protocol = "h2c",
                      health = { active = { path = "/health", interval = "200ms" } } }
      route { path = "/p/{x*}", upstream = "h2" }
      route { path = "/fanout", handler = function()
        local tasks = {}
        for i = 1, 10 do
          tasks[i] = gw.spawn(gw.http.request, { upstream = "h2", path = "/sub/" .. i })
        end
        local bodies = {}
        for i = 1, 10 do bodies[i] = assert(gw.wait(tasks[i])).body end
        return 200, bodies
      end }
    ]]):format(port))
    local res = g:request("GET", "/p/x", { h1 = true })
    assert.equal(200, res.status)
    assert.truthy(res.body:find("^ok from connection "))
    res = g:request("GET", "/fanout", { h1 = true })
    assert.equal(200, res.status)
    assert.equal(10, #res.json)
    local conns = {}
    for _, b in ipairs(res.json) do conns[b] = true end
    local n = 0
    for _ in pairs(conns) do n = n + 1 end
    assert.equal(1, n) -- ten parallel sub-requests, one HTTP/2 connection
    gw.sleep(0.5)
    local t = upstream_figures(g, "h2")
    assert.equal("healthy", t.health)
    g:stop()
    stop_peer(pid)
    -- a stopped server fails its (HTTP/2) health check
  end)

  it("tell a protocol violation the gateway detected from a reset the upstream sent", function()
    local port = helpers.free_port()
    local pid = start_peer({ "/usr/bin/python3", "spec/h2server.py", tostring(port), "data_on_head" }, "listening")
    local rport = helpers.free_port()
    local rpid = start_peer({ "/usr/bin/python3", "spec/h2server.py", tostring(rport), "reset" }, "listening")
    local fport = helpers.free_port()
    local fpid = start_peer({ "/usr/bin/python3", "spec/h2server.py", tostring(fport), "bad_frame" }, "listening")
    local g = helpers.start(([[
      upstream "bad" { targets = { "127.0.0.1:%d" }, protocol = "h2c", retries = 0 }
      upstream "resets" { targets = { "127.0.0.1:%d" }, protocol = "h2c", retries = 0 }
      upstream "frames" { targets = { "127.0.0.1:%d" }, protocol = "h2c", retries = 0 }
      route { path = "/bad/{x*}", upstream = "bad" }
      route { path = "/resets/{x*}", upstream = "resets" }
      route { path = "/frames/{x*}", upstream = "frames" }
    ]]):format(port, rport, fport))
    local res = g:request("HEAD", "/bad/x", { h1 = true })
    local e = assert(g:find_entry(function(x) return x.path == "/bad/x" end))
    assert.equal("protocol", e.error)
    local log = g:error_log()
    assert.truthy(log:find("upstream bad: 127.0.0.1:" .. port .. " broke HTTP/2 on stream 1: the gateway reset it " ..
                           "(PROTOCOL_ERROR)", 1, true), log)
    res = g:request("GET", "/resets/x", { h1 = true })
    assert.equal(502, res.status)
    assert.equal("reset", assert(g:entry(res.trace_id)).error)
    assert.truthy(g:error_log():find("upstream resets: 127.0.0.1:" .. rport .. " reset stream 1 (INTERNAL_ERROR)",
                                     1, true), g:error_log())
    -- a connection error: our nghttp2 ends the session (GOAWAY), its streams fail as protocol
    res = g:request("GET", "/frames/x", { h1 = true })
    assert.equal(502, res.status)
    assert.equal("protocol", assert(g:entry(res.trace_id)).error)
    -- nghttp2's reason follows the code (its wording is nghttp2's: not checked here)
    assert.truthy(g:error_log():find("upstream frames: 127.0.0.1:" .. fport .. " broke HTTP/2 (PROTOCOL_ERROR, ",
                                     1, true), g:error_log())
    assert.truthy(g:error_log():find("): connection closed", 1, true), g:error_log())
    g:stop()
    stop_peer(pid)
    stop_peer(rpid)
    stop_peer(fpid)
  end)

  it("say so when an h2c target answers in HTTP/1.1", function()
    local plain = helpers.start('listen "127.0.0.1:{{PORT}}"\nroute { path = "/{x*}", handler = function() return 200, "h1" end }')
    local g = helpers.start(([[
      listen { "127.0.0.1:{{PORT}}", http2 = true }
      upstream "h1" { targets = { "127.0.0.1:%d" }, protocol = "h2c", retries = 0 }
      route { path = "/x", upstream = "h1" }
      route { path = "/svc.S/{m}", upstream = "h1" }
    ]]):format(plain.port))
    local res = g:request("GET", "/x", { h1 = true })
    assert.equal(502, res.status)
    assert.equal("protocol", assert(g:entry(res.trace_id)).error)
    g:error_entries(res.trace_id) -- waits for the log thread
    local log = g:error_log()
    local line = assert(log:match('{[^\n]*does not speak HTTP/2[^\n]*}'), log)
    assert.equal("upstream h1: 127.0.0.1:" .. plain.port .. " does not speak HTTP/2 (protocol = \"h2c\"): " ..
                 "it answered 'HTTP/1.1 505 HTTP Version Not Supported'", gw.json.decode(line).msg)
    local r = raw_call(g, "/svc.S/m") -- gRPC: INTERNAL, naming the kind
    local h = assert(r.headers and r.headers["1"], gw.json.encode(r))
    assert.equal("13", h["grpc-status"])
    assert.truthy(h["grpc-message"]:find("(protocol, trace id ", 1, true), h["grpc-message"])
    g:stop()
    plain:stop()
  end)

  it("speak h2 over TLS (ALPN), verified like HTTP/1.1 TLS upstreams", function()
    local pki = require("spec.pki").make()
    local up = helpers.start(([[
      listen { "127.0.0.1:{{PORT}}", tls = { cert = "%s/localhost.pem", key = "%s/localhost.key" } }
      route { path = "/{x*}", handler = function(ctx) return 200, ctx.request.http_version .. " " .. ctx.request.scheme end }
    ]]):format(pki, pki))
    local g = helpers.start(([[
      upstream "tls" { targets = { "https://localhost:%d" }, protocol = "h2", tls = { ca = "%s/ca.pem" } }
      upstream "untrusted" { targets = { "https://localhost:%d" }, protocol = "h2", retries = 0 }
      route { path = "/t/{x*}", upstream = "tls" }
      route { path = "/u/{x*}", upstream = "untrusted" }
    ]]):format(up.port, pki, up.port), { files = {}, env = { "SSL_CERT_FILE=/dev/null" } })
    local res = g:request("GET", "/t/x", { h1 = true })
    assert.equal(200, res.status)
    assert.equal("2 https", res.body)
    res = g:request("GET", "/u/x", { h1 = true })
    assert.equal(502, res.status)
    assert.equal("tls_verify", assert(g:entry(res.trace_id)).error)
    g:stop()
    up:stop()
  end)

  it("are refused at load when the config contradicts itself", function()
    local code, err = helpers.check_config([[
      listen "127.0.0.1:1"
      upstream "x" { targets = { "127.0.0.1:9" }, protocol = "h2" }
      route { path = "/", upstream = "x" }
    ]])
    assert.equal(1, code)
    assert.truthy(err:find("gateway.lua:2: upstream x: protocol = \"h2\" is HTTP/2 over TLS", 1, true), err)
    code, err = helpers.check_config([[
      listen "127.0.0.1:1"
      upstream "x" { targets = { "127.0.0.1:9" }, pool = { ping_interval = "1s" } }
      route { path = "/", upstream = "x" }
    ]])
    assert.equal(1, code)
    assert.truthy(err:find("pool.ping_interval is for HTTP/2 upstreams", 1, true), err)
  end)
end)

describe("examples/grpc", function()
  it("runs as its comments say", function()
    local sport = helpers.free_port()
    -- the ports and the admin socket from the environment, as its README says
    local spid = start_peer({ "/usr/bin/env", "GRPC_PORT=" .. sport, "/usr/bin/python3", "examples/grpc/server.py" },
                            "serving")
    local sock = helpers.tmpdir() .. "/grpc-example.sock"
    local g = helpers.start(helpers.read_file("examples/grpc/gateway.lua"),
                            { env = { "GATEWAY_PORT={{PORT}}", "GRPC_PORT=" .. sport, "ADMIN_SOCKET=" .. sock } })
    local function run(key)
      local dir = helpers.tmpdir()
      local pid = assert(gw.process.spawn({ "/usr/bin/env", "GATEWAY_PORT=" .. g.port, "/usr/bin/python3",
                                            "examples/grpc/client.py", key },
                                          { stdout = dir .. "/out", stderr = dir .. "/err" }))
      helpers.wait_exit(pid, 30)
      return helpers.read_file(dir .. "/out") .. helpers.read_file(dir .. "/err")
    end
    local out = run("-")
    assert.truthy(out:find("Hello: UNAUTHENTICATED missing or invalid API key (trace id ", 1, true), out)
    out = run("demo-key")
    assert.truthy(out:find("Hello: OK hello, moongate", 1, true), out)
    assert.truthy(out:find("Count: OK ['1', '2', '3']", 1, true), out)
    assert.truthy(out:find("Admin: PERMISSION_DENIED admin methods are not exposed (Reboot)", 1, true), out)
    local e = assert(g:find_entry(function(x) return x.path == "/demo.Admin/Reboot" end))
    assert.same({ 200, 7, "2" }, { e.status, e.grpc_status, e.protocol }) -- the handler's gw.grpc.status, logged
    g.socket = sock
    local code, ups = g:ctl("upstreams")
    assert.equal(0, code, ups) -- gatewayctl -s ADMIN_SOCKET reaches it
    assert.truthy(ups:find("greeter", 1, true), ups)
    g:stop()
    stop_peer(spid)
  end)
end)
