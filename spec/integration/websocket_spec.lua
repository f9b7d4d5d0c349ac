--- WebSocket: proxy routes tunnel an upgrade to the upstream (plugins run on
--- the handshake, the permit is held for the tunnel's life, reloads and drains
--- keep tunnels working), and Lua handlers accept WebSockets themselves
--- (ctx:websocket). The real peers are python3-websockets (spec/wspeer.py).
local helpers = require "spec.helpers"
local upstream = require "spec.upstream"

local PY = "/usr/bin/python3"

local function rss_kb(pid)
  return tonumber(helpers.read_file("/proc/" .. pid .. "/status"):match("VmRSS:%s+(%d+)"))
end

--- Runs a wspeer client scenario; returns its JSON report.
local function client(url, scenario, args, seconds, env)
  local dir = helpers.tmpdir()
  local argv = { PY, "spec/wspeer.py", "client", url, scenario }
  if env then table.insert(argv, 1, env) table.insert(argv, 1, "/usr/bin/env") end
  for _, a in ipairs(args or {}) do argv[#argv + 1] = tostring(a) end
  local pid = assert(gw.process.spawn(argv, { stdout = dir .. "/out", stderr = dir .. "/err" }))
  local how = helpers.wait_exit(pid, seconds or 40)
  if not how then gw.process.kill(pid, gw.process.SIGKILL) end
  local out = helpers.read_file(dir .. "/out")
  local last = out:match("([^\n]+)\n?$")
  local report = last and gw.json.decode(last)
  assert(report, "wspeer " .. scenario .. " said: " .. out .. helpers.read_file(dir .. "/err"))
  return report
end

--- Starts a client scenario in the background; returns a function that waits for its report.
local function client_bg(url, scenario, args, seconds)
  local dir = helpers.tmpdir()
  local argv = { PY, "spec/wspeer.py", "client", url, scenario }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = tostring(a) end
  local pid = assert(gw.process.spawn(argv, { stdout = dir .. "/out", stderr = dir .. "/err" }))
  return function()
    local how = helpers.wait_exit(pid, seconds or 60)
    if not how then gw.process.kill(pid, gw.process.SIGKILL) end
    local out = helpers.read_file(dir .. "/out")
    local last = out:match("([^\n]+)\n?$")
    return assert(last and gw.json.decode(last), "wspeer said: " .. out .. helpers.read_file(dir .. "/err"))
  end
end

--- A python3-websockets echo server as the upstream.
local function ws_upstream()
  local port = helpers.free_port()
  local dir = helpers.tmpdir()
  local pid = assert(gw.process.spawn({ PY, "spec/wspeer.py", "server", tostring(port) },
                                      { stdout = dir .. "/out", stderr = dir .. "/err" }))
  for _ = 1, 250 do
    if helpers.read_file(dir .. "/out"):find("ready", 1, true) then
      return { port = port, pid = pid, stop = function() gw.process.kill(pid, gw.process.SIGKILL)
                                                           helpers.wait_exit(pid, 5) end }
    end
    gw.sleep(0.02)
  end
  error("wspeer server did not start: " .. helpers.read_file(dir .. "/err"))
end

local function tunnel_ends(g)
  local out = {}
  for _, e in ipairs(g:access_entries()) do
    if e.event == "tunnel_end" then out[#out + 1] = e end
  end
  return out
end

local function wait_for(what, fn, seconds)
  local deadline = gw.monotonic_ms() + (seconds or 5) * 1000
  repeat
    local v = fn()
    if v then return v end
    gw.sleep(0.05)
  until gw.monotonic_ms() > deadline
  error("timed out waiting for " .. what)
end

local function metric(g, port, pattern)
  local s = gw.tcp()
  s:settimeout(5000)
  assert(s:connect("127.0.0.1", port))
  s:send("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
  local body = s:receive("*a") or ""
  s:close()
  local sum, seen = 0, false
  for v in body:gmatch(pattern .. " (%d+)") do
    sum, seen = sum + tonumber(v), true
  end
  return seen and sum or nil, body
end

describe("A proxy route's upgrade list", function()
  it("draws a warning at load for a token that looks like a misspelled websocket", function()
    local code, err = helpers.check_config([[
      listen "127.0.0.1:1"
      upstream "u" { targets = { "127.0.0.1:2" } }
      route { path = "/a", upstream = "u", upgrade = { "websockets" } }
      route { path = "/b", upstream = "u", upgrade = { "Web-Socket", "h2c" } }
      route { path = "/c", upstream = "u", upgrade = { "websocket", "websockets" } } -- harmless: websocket is there
      route { path = "/d", upstream = "u", upgrade = { "my-proto" } }
    ]])
    assert.equal(0, code, err) -- valid tokens: not an error
    -- (the error log's JSON escapes the quotes)
    assert.truthy(err:find([[:3: route /a: upgrade token \"websockets\" is not \"websocket\"]], 1, true), err)
    assert.truthy(err:find([[:4: route /b: upgrade token \"Web-Socket\" is not]], 1, true), err)
    assert.is_nil(err:find("route /c", 1, true), err)
    assert.is_nil(err:find("route /d", 1, true), err)
  end)
end)

describe("WebSocket through a proxy route", function()
  local up, g, admin
  setup(function()
    up = ws_upstream()
    admin = helpers.free_port()
    g = helpers.start(([[
      admin_listen "127.0.0.1:%d"
      timeouts { tunnel = "20s" }
      upstream "ws" { targets = { "127.0.0.1:%d" } }
      route { path = "/ws", upstream = "ws" }
      route { path = "/plain", upstream = "ws", upgrade = false }
    ]]):format(admin, up.port))
  end)
  teardown(function()
    g:stop()
    up.stop()
  end)

  it("tunnels text, binary and empty messages, and logs the handshake and the tunnel's end", function()
    local url = ("ws://127.0.0.1:%d/ws"):format(g.port)
    local r = client(url, "echo")
    assert.is_nil(r.error)
    assert.same({ "hello", "bin:000102", "h\u{e9}llo \u{2603}", "" }, r.got)
    assert.equal(1000, r.close_code)
    assert.truthy(r.headers["X-Request-ID"] or r.headers["x-request-id"])
    local ends = wait_for("the tunnel's log line", function() local t = tunnel_ends(g) return #t > 0 and t end)
    local e = ends[#ends]
    assert.equal("/ws", e.route)
    assert.equal("ws", e.upstream)
    assert.equal("client", e.closed_by)
    assert.is_nil(e.error)
    assert.is_true(e.bytes_in > 20 and e.bytes_out > 20, gw.json.encode(e))
    local hs
    for _, x in ipairs(g:access_entries()) do
      if x.trace_id == e.trace_id and x.status then hs = x end
    end
    assert.equal(101, hs.status)
  end)

  it("forwards Upgrade, Connection and Sec-WebSocket-* to the upstream", function()
    local r = client(("ws://127.0.0.1:%d/ws"):format(g.port), "send", { "headers", "close:1000" })
    local h = gw.json.decode(r.got[1])
    local lower = {}
    for k, v in pairs(h) do lower[k:lower()] = v end
    assert.equal("websocket", lower.upgrade:lower())
    assert.equal("upgrade", lower.connection:lower())
    assert.truthy(lower["sec-websocket-key"])
    assert.equal("13", lower["sec-websocket-version"])
    assert.truthy(lower["x-forwarded-for"])
  end)

  it("relays the upstream's close code", function()
    local r = client(("ws://127.0.0.1:%d/ws"):format(g.port), "send", { "close:4003" })
    assert.equal(4003, r.close_code)
  end)

  it("strips Upgrade where the route does not forward it (upgrade = false): a plain request", function()
    local r = client(("ws://127.0.0.1:%d/plain"):format(g.port), "echo")
    -- the upstream saw no Upgrade and refused the plain GET; its answer was relayed as is
    assert.equal(426, r.status)
  end)

  it("counts open tunnels per route and upstream in the metrics", function()
    local done = client_bg(("ws://127.0.0.1:%d/ws"):format(g.port), "hold", { 3, 1.5, 0.1 })
    local open = wait_for("3 open tunnels", function()
      local n = metric(g, admin, 'moongate_tunnels_open{worker="0",route="/ws"}')
      return n == 3 and n
    end, 10)
    assert.equal(3, open)
    assert.equal(3, (metric(g, admin, 'moongate_upstream_tunnels_open{worker="0",upstream="ws"}')))
    local code, out = g:ctl("status")
    assert.truthy(out:find("tunnels open 3", 1, true), out)
    code, out = g:ctl("upstreams")
    assert.equal(0, code, out)
    assert.truthy(out:find('upstream ws (round_robin), tunnels open 3', 1, true), out)
    local r = done()
    assert.same({}, r.errors)
    wait_for("0 open tunnels", function() return metric(g, admin, 'moongate_tunnels_open{worker="0",route="/ws"}') == 0 end)
    code, out = g:ctl("status")
    assert.equal(0, code, out)
    assert.truthy(out:find("tunnels open 0", 1, true), out)
  end)

  it("applies back-pressure to a slow reader: the gateway does not buffer what the client does not read", function()
    local before = rss_kb(g.pid)
    local r = client(("ws://127.0.0.1:%d/ws"):format(g.port), "slow_reader", { 200, 2, 65536 }, 60)
    assert.is_nil(r.error)
    assert.equal(200, r.got_count)
    assert.is_true(rss_kb(g.pid) - before < 8 * 1024, "RSS grew by " .. (rss_kb(g.pid) - before) .. " KiB")
  end)
end)

describe("WebSocket on a TLS listener", function()
  it("tunnels to the upstream and serves ctx:websocket, the client's TLS done by the connection", function()
    local pki = require("spec.pki").make()
    local up = ws_upstream()
    local tport = helpers.free_port()
    local g = helpers.start(([[
      listen "127.0.0.1:{{PORT}}"
      listen { "127.0.0.1:%d", tls = { cert = "%s/localhost.pem", key = "%s/localhost.key" } }
      upstream "ws" { targets = { "127.0.0.1:%d" } }
      route { path = "/ws", upstream = "ws" }
      route { path = "/lua", handler = function(ctx)
        local ws = assert(ctx:websocket{})
        while true do
          local d, t = ws:recv()
          if not d or t == "close" then return end
          if t == "text" then ws:send_text(d) else ws:send_binary(d) end
        end
      end }
    ]]):format(tport, pki, pki, up.port))
    for _, path in ipairs({ "/ws", "/lua" }) do
      local r = client(("wss://localhost:%d%s"):format(tport, path), "echo", nil, 40, "WSPEER_CA=" .. pki .. "/ca.pem")
      assert.is_nil(r.error)
      assert.same({ "hello", "bin:000102", "h\u{e9}llo \u{2603}", "" }, r.got)
      assert.equal(1000, r.close_code)
      r = client(("wss://localhost:%d%s"):format(tport, path), "big", { 300000 }, 40, "WSPEER_CA=" .. pki .. "/ca.pem")
      assert.equal(300000, r.got_len)
    end
    g:stop()
    up.stop()
  end)
end)

describe("WebSocket handshakes through a route's plugins", function()
  it("run key-auth, ip-restriction and rate-limit on the handshake before anything reaches the upstream", function()
    local up = ws_upstream()
    local g = helpers.start(([[
      upstream "ws" { targets = { "127.0.0.1:%d" } }
      route { path = "/ws", upstream = "ws", plugins = {
        ["key-auth"] = { keys = { ["k1"] = "alice" } },
        ["rate-limit"] = { rate = 0.001, burst = 2, key = "consumer" },
      } }
      route { path = "/denied", upstream = "ws", plugins = { ["ip-restriction"] = { deny = { "127.0.0.0/8" } } } }
    ]]):format(up.port))
    local url = ("ws://127.0.0.1:%d/ws"):format(g.port)
    local r = client(url, "handshake", {})
    assert.equal(401, r.status)
    r = client(url, "handshake", { "apikey: k1" })
    assert.equal(101, r.status)
    r = client(url, "handshake", { "apikey: k1" })
    assert.equal(101, r.status)
    r = client(url, "handshake", { "apikey: k1" }) -- the bucket (2) is empty
    assert.equal(429, r.status)
    r = client(("ws://127.0.0.1:%d/denied"):format(g.port), "handshake", {})
    assert.equal(403, r.status)
    local n101 = 0
    for _, e in ipairs(g:access_entries()) do if e.status == 101 then n101 = n101 + 1 end end
    assert.equal(2, n101)
    g:stop()
    up.stop()
  end)
end)

describe("A refused WebSocket handshake", function()
  it("is logged with the status the client got when it hangs up right after the head", function()
    local up = upstream.start(function(req, res)
      res.sock:send("HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
      gw.sleep(0.2) -- the body comes later: the client is gone by then
      res.sock:send("no WebSocket for you\n")
      res:close()
    end)
    local g = helpers.start(([[
      upstream "refuses" { targets = { "127.0.0.1:%d" } }
      route { path = "/ws", upstream = "refuses" }
    ]]):format(up.port))
    -- what python-websockets does: read the head, see no 101, hang up
    local s = g:connect()
    s:send("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Request-ID: refused-1\r\n" ..
           "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    assert.equal("HTTP/1.1 403 Forbidden", s:receive("*l"))
    s:close()
    gw.sleep(0.4)
    local e = g:entry("refused-1")
    assert.equal(403, e.status) -- what the client got, not 499
    assert.equal("client_abort", e.error) -- the body was cut short
    g:stop()
    up:stop()
  end)
end)

describe("WebSocket handshakes from browsers (no custom headers)", function()
  it("pass key-auth with the key in the query (query option), on proxy and Lua routes", function()
    local wsc = helpers.websocket
    local up = upstream.start(function(req, res)
      local ws = wsc.accept(res.sock, req)
      local data = ws:recv(5000)
      ws:send_text("upstream got " .. tostring(data) .. " for " .. req.target)
      ws:recv(5000)
      res:close()
    end)
    local g = helpers.start(([[
      upstream "ws" { targets = { "127.0.0.1:%d" } }
      local auth = { ["key-auth"] = { keys = { ["k1"] = "alice" }, query = "apikey" } }
      route { path = "/ws", upstream = "ws", plugins = auth }
      route { path = "/lua", plugins = auth, handler = function(ctx)
        local ws = ctx:websocket{}
        ws:send_text("hello " .. ctx.consumer)
        ws:recv()
      end }
    ]]):format(up.port))
    local ws = assert(g:websocket("/ws?apikey=k1"))
    ws:send_text("hi")
    assert.same({ "upstream got hi for /ws?apikey=k1", "text" }, { ws:recv(5000) })
    ws:close(1000)
    ws = assert(g:websocket("/lua?apikey=k1"))
    assert.same({ "hello alice", "text" }, { ws:recv(5000) })
    local no, err = g:websocket("/lua")
    assert.is_nil(no)
    assert.equal("status 401", err)
    g:kill()
    up:stop()
  end)
end)

describe("An upstream's 101 naming another protocol", function()
  it("is answered 502 (error kind protocol), not relayed", function()
    local up = upstream.start(function(req, res)
      res.sock:send("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
      gw.sleep(0.5)
      res:close()
    end)
    local g = helpers.start(([[
      upstream "odd" { targets = { "127.0.0.1:%d" } }
      route { path = "/ws", upstream = "odd" }
    ]]):format(up.port))
    local ws, err, res = g:websocket("/ws")
    assert.is_nil(ws)
    assert.equal("status 502", err)
    local e = g:entry(res.trace_id)
    assert.equal(502, e.status)
    assert.equal("protocol", e.error)
    assert.truthy(g:error_log():find("answered 101 without Upgrade: websocket", 1, true))
    g:stop()
    up:stop()
  end)
end)

describe("WebSocket tunnels and the upstream's max_concurrency", function()
  it("hold the permit for the tunnel's life and give it back on every end (chaos)", function()
    local up = ws_upstream()
    local g = helpers.start(([[
      upstream "ws" { targets = { "127.0.0.1:%d" }, max_concurrency = 1 }
      route { path = "/ws", upstream = "ws" }
    ]]):format(up.port))
    local url = ("ws://127.0.0.1:%d/ws"):format(g.port)
    local holder = client_bg(url, "hold", { 1, 1.5, 0.1 })
    gw.sleep(0.5)
    -- the tunnel counts as in flight: the upstream is busy
    local r = client(url, "echo")
    assert.equal(429, r.status)
    assert.same({}, holder().errors)
    r = client(url, "echo")
    assert.is_nil(r.error)
    -- tunnels opened and killed at random: the permit comes back each time
    g:stop()
    g = helpers.start(([[
      upstream "ws" { targets = { "127.0.0.1:%d" }, max_concurrency = 8, on_busy = { queue = 100, queue_timeout = "10s" } }
      route { path = "/ws", upstream = "ws" }
    ]]):format(up.port))
    url = ("ws://127.0.0.1:%d/ws"):format(g.port)
    r = client(url, "chaos", { 200, 20 }, 120)
    assert.equal(200, r.opened + r.failed)
    assert.equal(0, r.failed)
    wait_for("the permits back", function()
      local _, out = g:ctl("status", "--json")
      local st = gw.json.decode(out)
      local s = st.semaphores["upstream:ws"]
      return s and s.in_use == 0
    end, 10)
    g:stop()
    up.stop()
  end)
end)

describe("WebSocket tunnels and their lifetime", function()
  it("close an idle tunnel after timeouts.tunnel (logged as tunnel_idle, closed by the gateway)", function()
    local up = ws_upstream()
    local g = helpers.start(([[
      timeouts { tunnel = "300ms" }
      upstream "ws" { targets = { "127.0.0.1:%d" } }
      route { path = "/ws", upstream = "ws", timeout = "100ms" }
    ]]):format(up.port))
    -- messages every 100 ms keep it open past the route's 100 ms deadline (which ended at the 101)
    local r = client(("ws://127.0.0.1:%d/ws"):format(g.port), "hold", { 1, 1, 0.1 })
    assert.same({}, r.errors)
    assert.is_true(r.received >= 5)
    -- then one that says nothing
    r = client(("ws://127.0.0.1:%d/ws"):format(g.port), "send", {})
    assert.equal(1001, r.close_code) -- the gateway's close frame, as at the end of a drain
    assert.equal("idle timeout", r.close_reason)
    local e = wait_for("the idle end", function()
      for _, x in ipairs(tunnel_ends(g)) do if x.error == "tunnel_idle" then return x end end
    end)
    assert.equal("gateway", e.closed_by)
    assert.is_true(e.duration_ms >= 290, e.duration_ms)
    g:stop()
    up.stop()
  end)

  it("tell both sides of an idle tunnel with a close frame 1001 (the upstream too)", function()
    local wsc = helpers.websocket
    local seen = {}
    local up = upstream.start(function(req, res)
      local ws = wsc.accept(res.sock, req)
      seen[#seen + 1] = { ws:recv(5000) }
      seen[#seen + 1] = ws:closed(2000)
      res:close()
    end)
    local g = helpers.start(([[
      timeouts { tunnel = "300ms" }
      upstream "fake" { targets = { "127.0.0.1:%d" } }
      route { path = "/ws", upstream = "fake" }
    ]]):format(up.port))
    local ws = assert(g:websocket("/ws"))
    local t0 = gw.monotonic_ms()
    assert.same({ "idle timeout", "close", 1001 }, { ws:recv(5000) })
    assert.is_true(gw.monotonic_ms() - t0 >= 250)
    assert.is_true(ws:closed(2000))
    wait_for("the upstream's side", function() return #seen == 2 end)
    assert.same({ "idle timeout", "close", 1001 }, seen[1])
    assert.is_true(seen[2]) -- then the connection closed
    local e = wait_for("the idle end", function()
      for _, x in ipairs(tunnel_ends(g)) do if x.error == "tunnel_idle" then return x end end
    end)
    assert.equal("gateway", e.closed_by)
    -- the client closed first and the upstream never answered: no second close frame to the upstream
    seen = {}
    up.handler = function(req, res)
      local ws = wsc.accept(res.sock, req)
      seen[#seen + 1] = { ws:recv(5000) }
      seen[#seen + 1] = { ws:recv(5000) }
      res:close()
    end
    ws = assert(g:websocket("/ws"))
    ws:close(1000, "bye")
    assert.same({ "idle timeout", "close", 1001 }, { ws:recv(5000) })
    wait_for("the upstream's side", function() return #seen == 2 end)
    assert.same({ "bye", "close", 1000 }, seen[1])
    assert.same({ nil, "closed" }, seen[2])
    g:stop()
    up:stop()
  end)

  it("keep working across 1,000 reloads with 50 tunnels exchanging messages, and pin no old generation", function()
    local up = ws_upstream()
    local g = helpers.start(([[
      upstream "ws" { targets = { "127.0.0.1:%d" } }
      route { path = "/ws", upstream = "ws" }
      big = ("x"):rep(4 * 1024 * 1024) -- 4 MB per VM: a generation kept alive shows in RSS
    ]]):format(up.port))
    local url = ("ws://127.0.0.1:%d/ws"):format(g.port)
    -- WebSocket clients speak HTTP/1.1 whatever MOONGATE_SPEC_WIRE says: the h2 runs do a shorter version
    local reloads = tonumber(os.getenv("WS_RELOADS") or (helpers.wire == "h2" and "100" or "1000"))
    local done = client_bg(url, "hold", { 50, 35 + reloads * 0.04, 0.05 }, 300)
    gw.sleep(1.5)
    local base, late = nil, {}
    for i = 1, reloads do
      local code, out = g:ctl("reload")
      assert.equal(0, code, out)
      -- the main thread frees retired VMs once a second: RSS is read after that
      if i == 20 then
        gw.sleep(1.5)
        base = rss_kb(g.pid)
      end
      if i % 100 == 0 then
        -- a tunnel opened on this generation, open until the end: it must not keep its VM
        late[#late + 1] = client_bg(url, "hold", { 1, 35 + (reloads - i) * 0.04, 0.2 }, 300)
        gw.sleep(1.5)
        local grew = rss_kb(g.pid) - base
        assert.is_true(grew < 20 * 1024, ("after %d reloads RSS grew %d KiB"):format(i, grew))
      end
    end
    local r = done()
    assert.same({}, r.errors) -- none dropped
    assert.equal(0, r.mismatched)
    assert.is_true(r.received > 50 * 20, "received " .. r.received)
    for _, wait in ipairs(late) do
      assert.same({}, wait().errors)
    end
    g:stop()
    up.stop()
  end)

  it("run on during a drain and get close 1001 going away when it ends (tunnels and Lua endpoints)", function()
    local up = ws_upstream()
    local g = helpers.start(([[
      timeouts { drain = "1s" }
      upstream "ws" { targets = { "127.0.0.1:%d" } }
      route { path = "/ws", upstream = "ws" }
      route { path = "/lua", handler = function(ctx)
        local ws = assert(ctx:websocket{})
        while true do
          local d, t = ws:recv()
          if not d or t == "close" then return end
          ws:send_text(d)
        end
      end }
    ]]):format(up.port))
    local tunnel = client_bg(("ws://127.0.0.1:%d/ws"):format(g.port), "hold", { 1, 10, 0.05 })
    local lua = client_bg(("ws://127.0.0.1:%d/lua"):format(g.port), "hold", { 1, 10, 0.05 })
    gw.sleep(0.5)
    local t0 = gw.monotonic_ms()
    local code, out = g:ctl("stop", "--drain", "1")
    assert.equal(0, code, out)
    for _, done in ipairs({ tunnel, lua }) do
      local r = done()
      assert.is_true(gw.monotonic_ms() - t0 >= 900)
      assert.is_true(r.received >= 15, "received " .. r.received) -- it kept working during the drain
      assert.equal(1, #r.errors)
      assert.truthy(r.errors[1]:find("1001", 1, true), r.errors[1])
    end
    local how, status = helpers.wait_exit(g.pid, 10)
    g.stopped = true
    assert.equal("exit", how)
    assert.equal(0, status, g:error_log()) -- under ASan: nothing leaked by the ends at the drain's end
    up.stop()
  end)
end)

describe("WebSocket endpoints in Lua (ctx:websocket)", function()
  local g, up
  setup(function()
    up = upstream.start(function(req) gw.sleep(0.05) return 200, {}, "upstream says " .. req.path end)
    g = helpers.start(([[
      upstream "api" { targets = { "127.0.0.1:%d" } }
      route { path = "/echo", timeout = "300ms", handler = function(ctx)
        local ws, err = ctx:websocket{ max_frame = "64k", protocols = { "chat", "other" } }
        if not ws then return 400, err end
        while true do
          local data, typ, code = ws:recv()
          if not data then gw.log("warn", "echo ended: " .. tostring(code)) return end
          if typ == "close" then return end
          if data == "close-me" then ws:close(4001, "bye")
          elseif data == "protocol" then ws:send_text(ws:subprotocol() or "none")
          elseif data == "tostring-protocol" then ws:send_text(tostring(ws:subprotocol()))
          elseif data == "wait" then gw.sleep(0.5) ws:send_text("waited past the deadline")
          elseif typ == "text" then ws:send_text(data)
          else ws:send_binary(data) end
        end
      end }
      route { path = "/pings", handler = function(ctx)
        local ws = assert(ctx:websocket{ pings = true })
        local data, typ = ws:recv()
        ws:send_text(typ .. ":" .. data)
        ws:recv()
      end }
      -- pushes while waiting for upstream answers: a reader and a writer task
      route { path = "/push", handler = function(ctx)
        local ws = assert(ctx:websocket{})
        local reader = gw.spawn(function()
          while true do
            local data, typ = ws:recv()
            if not data or typ == "close" or data == "done" then return end
            local res = gw.http.request{ upstream = "api", path = "/" .. data }
            ws:send_text(res and res.body or "no answer")
          end
        end)
        local writer = gw.spawn(function()
          for i = 1, 3 do
            gw.sleep(0.05)
            ws:send_text("tick " .. i)
          end
        end)
        gw.wait(writer)
        gw.wait(reader)
      end }
      route { path = "/zero", handler = function(ctx)
        ctx:websocket{ max_frame = 0 }
      end }
      route { path = "/fail", handler = function(ctx)
        local ws = assert(ctx:websocket{})
        ws:recv()
        error("boom")
      end }
      route { path = "/close-and-return", handler = function(ctx)
        local ws = assert(ctx:websocket{})
        ws:recv()
        ws:close(4002, "done") -- and returns: the connection waits for the client's close alone
      end }
    ]]):format(up.port))
  end)
  teardown(function()
    g:stop()
    up:stop()
  end)
  local function url(path) return ("ws://127.0.0.1:%d%s"):format(g.port, path) end

  it("echoes text, binary, UTF-8 and empty messages, and closes cleanly", function()
    local r = client(url("/echo"), "echo")
    assert.is_nil(r.error)
    assert.same({ "hello", "bin:000102", "h\u{e9}llo \u{2603}", "" }, r.got)
    assert.equal(1000, r.close_code)
    local e = wait_for("the access line", function()
      for _, x in ipairs(g:access_entries()) do if x.path == "/echo" and x.status == 101 then return x end end
    end)
    assert.is_nil(e.error)
  end)

  it("counts the WebSocket's bytes in its access line (frames in and out, beside the handshake)", function()
    local ws = assert(g:websocket("/echo"))
    ws:send_text("hello")                                -- 2 + 4 (mask) + 5
    assert.same({ "hello", "text" }, { ws:recv() })      -- 2 + 5
    ws:close(1000)                                       -- 2 + 4 + 2
    assert.same({ "", "close", 1000 }, { ws:recv() })    -- 2 + 2
    local e = g:entry(ws.trace_id)
    assert.equal(11, e.bytes)
    local quiet = assert(g:websocket("/echo"))           -- the same handshake's length, a close only
    quiet:close(1000)
    quiet:recv()
    local q = g:entry(quiet.trace_id)
    assert.equal(4, q.bytes)
    assert.equal(11, e.bytes_in - q.bytes_in)
    assert.is_true(q.bytes_in > 100) -- the handshake's head
  end)

  it("assembles fragmented messages and answers pings itself", function()
    local r = client(url("/echo"), "fragmented")
    assert.same({ "fragmented", "bin:010203" }, r.got)
    r = client(url("/echo"), "ping")
    assert.is_true(r.pong)
    assert.same({ "after ping" }, r.got)
    -- a ping between two fragments is answered at once; the message still comes whole
    r = client(url("/echo"), "ping_between_fragments")
    assert.same({ { 10, "p!" }, { 1, "one two" } }, r.frames)
    assert.equal(1000, r.close_code)
  end)

  it("hands pings to the handler when it asks for them", function()
    local r = client(url("/pings"), "ping_between_fragments")
    assert.same({ 1, "ping:p!" }, r.frames[1])
  end)

  it("closes with the handler's code and echoes the client's", function()
    local r = client(url("/echo"), "send", { "close-me" })
    assert.equal(4001, r.close_code)
    assert.equal("bye", r.close_reason)
    r = client(url("/echo"), "close_echo")
    assert.equal(4000, r.close_code)
    assert.is_true(r.eof)
  end)

  it("refuses protocol violations with the RFC's close codes", function()
    local r = client(url("/echo"), "unmasked")
    assert.equal(1002, r.close_code)
    r = client(url("/echo"), "bad_utf8")
    assert.equal(1007, r.close_code)
    r = client(url("/echo"), "bad_utf8_split")
    assert.equal("caf\u{e9}", r.echo) -- a character split across fragments is fine
    assert.equal(1007, r.close_code)
    r = client(url("/echo"), "bad_continuation")
    assert.equal(1002, r.close_code)
    r = client(url("/echo"), "bad_close_code")
    assert.equal(1002, r.close_code)
    -- max_frame = 64k: refused from the frame's head, with 1009
    r = client(url("/echo"), "big_frame", { 100000 })
    assert.equal(1009, r.close_code)
    r = client(url("/echo"), "big", { 70000 })
    assert.equal(1009, r.close_code)
    r = client(url("/echo"), "big", { 60000 })
    assert.equal(60000, r.got_len)
    local kinds = {}
    for _, x in ipairs(g:access_entries()) do if x.path == "/echo" and x.error then kinds[x.error] = true end end
    assert.is_true(kinds.websocket_protocol)
    assert.is_true(kinds.websocket_too_big)
  end)

  it("keeps the generation the socket lives in until the connection is gone, when the handler ends first", function()
    local ws = assert(helpers.websocket.connect(g.port, "/close-and-return"))
    assert.equal(0, (g:ctl("reload"))) -- the handler runs on in the generation now retired
    ws:send_text("go")                  -- it closes and returns: its request, and its hold on the generation, end
    gw.sleep(0.3)                       -- a retired generation nothing holds is freed by now
    ws:disconnect()                     -- the connection, open all along, goes only now
    gw.sleep(0.1)
    assert.equal(404, g:request("GET", "/nothing-here").status) -- the gateway runs on
  end)

  it("tells the handler when the client vanishes", function()
    local r = client(url("/echo"), "vanish", { "bye" })
    assert.is_true(r.vanished)
    wait_for("the handler's log line", function() return g:error_log():find("echo ended: closed", 1, true) end)
  end)

  it("is not bound by the route's deadline after the upgrade, and chooses a subprotocol", function()
    local r = client(url("/echo"), "send", { "wait", "close-me" })
    assert.same({ "waited past the deadline" }, r.got)
    r = client(url("/echo"), "handshake", { "Sec-WebSocket-Protocol: other, chat" })
    assert.equal(101, r.status)
    assert.truthy(r.head:find("Sec-WebSocket-Protocol: chat\r\n", 1, true), r.head)
    r = client(url("/echo"), "handshake", { "Sec-WebSocket-Protocol: nothing-we-speak" })
    assert.equal(101, r.status)
    assert.is_nil(r.head:find("Sec-WebSocket-Protocol", 1, true))
  end)

  it("returns nil (a value) from ws:subprotocol() when none was chosen", function()
    local ws = assert(g:websocket("/echo"))
    ws:send_text("tostring-protocol")
    assert.same({ "nil", "text" }, { ws:recv() })
    ws = assert(g:websocket("/echo", { protocols = { "other" } }))
    assert.equal("other", ws.protocol)
    ws:send_text("tostring-protocol")
    assert.same({ "other", "text" }, { ws:recv() })
  end)

  it("serves the test kit's WebSocket client: messages, fragments, pings, refusals, the log line", function()
    local wsc = helpers.websocket
    local ws = assert(g:websocket("/echo"))
    assert.equal(101, ws.status)
    ws:send_binary("\0\1\2")
    assert.same({ "\0\1\2", "binary" }, { ws:recv() })
    local big = ("x"):rep(70000) -- a 64-bit length each way; max_frame is 64k: refused...
    ws:send_text(("y"):rep(300))   -- ...so first a 16-bit one
    assert.same({ ("y"):rep(300), "text" }, { ws:recv() })
    ws:ping("p")
    assert.same({ "p", "pong" }, { ws:recv() })
    ws:send_frame(wsc.TEXT, "frag", { fin = false })
    ws:send_frame(wsc.CONTINUATION, "mented")
    assert.same({ "fragmented", "text" }, { ws:recv() })
    ws:send_text(big)
    local reason, typ, code = ws:recv()
    assert.same({ "close", 1009 }, { typ, code }, reason)
    assert.is_true(ws:closed(2000))
    local e = g:entry(ws.trace_id)
    assert.equal(101, e.status)
    assert.equal("websocket_too_big", e.error)
    -- a client frame must be masked: the gateway closes with 1002
    ws = assert(g:websocket("/echo"))
    ws:send_frame(wsc.TEXT, "bare", { masked = false })
    assert.same({ "close", 1002 }, { select(2, ws:recv()) })
    -- a refused handshake: nil, why, and the response
    local no, err, res = g:websocket("/nothing-here")
    assert.is_nil(no)
    assert.equal("status 404", err)
    assert.equal(404, res.status)
  end)

  it("keeps gw.sleep, gw.http.request and gw.spawn working beside the socket", function()
    local r = client(url("/push"), "send", { "a", "b", "done" })
    table.sort(r.got)
    assert.same({ "tick 1", "tick 2", "tick 3", "upstream says /a", "upstream says /b" }, r.got)
    assert.equal(1000, r.close_code)
  end)

  it("answers a request that is not a handshake through the handler", function()
    local res = g:request("GET", "/echo")
    assert.equal(400, res.status)
    -- over HTTP/1.1 the request lacks the Upgrade; over HTTP/2 (MOONGATE_SPEC_WIRE=h2) it cannot have one
    assert.truthy(res.body:find(g.h2 and "HTTP/2" or "Upgrade", 1, true), res.body)
    local r = client(url("/echo"), "handshake", { "Sec-WebSocket-Version: 8" })
    -- a second Sec-WebSocket-Version makes the field "13, 8": refused
    assert.equal(400, r.status)
  end)

  it("refuses a bad option when ctx:websocket runs (500 before the upgrade), saying what it must be", function()
    local ws, err, res = g:websocket("/zero")
    assert.is_nil(ws)
    assert.equal("status 500", err)
    local lines = g:error_entries(res.trace_id)
    assert.truthy(lines[1] and lines[1].msg:find("max_frame must be a size > 0", 1, true), gw.json.encode(lines))
  end)

  it("closes with 1011 when the handler fails, and logs it", function()
    local r = client(url("/fail"), "send", { "x" })
    assert.equal(1011, r.close_code)
    wait_for("the failure", function() return g:error_log():find("boom", 1, true) end)
  end)
end)

describe("WebSocket bytes queued at the upgrade", function()
  -- what a handler (or an upstream) sends before the client says anything must not wait for the client
  local g, up
  setup(function()
    local wsc = helpers.websocket
    up = upstream.start(function(req, res)
      -- the 101 and a first frame in one write: the tunnel takes the frame over with the connection
      res.sock:send("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" ..
                    "Sec-WebSocket-Accept: " .. wsc.accept_key(req.headers["sec-websocket-key"]) .. "\r\n\r\n" ..
                    wsc.frame(wsc.TEXT, "hello from upstream", { masked = req.path == "/masked" }))
      res.sock:settimeout(5000)
      res.sock:receive(2) -- the client's close
      res:close()
    end)
    g = helpers.start(([[
      upstream "early" { targets = { "127.0.0.1:%d" } }
      route { path = "/early", upstream = "early" }
      route { path = "/masked", upstream = "early" }
      route { path = "/welcome", handler = function(ctx)
        local ws = ctx:websocket{}
        ws:send_text("welcome")
        ws:recv()
      end }
      route { path = "/sleep0", handler = function(ctx)
        local ws = ctx:websocket{}
        ws:send_text("one")
        gw.sleep(0)
        ws:send_text("two")
        ws:recv()
      end }
      route { path = "/bye", handler = function(ctx)
        local ws = ctx:websocket{}
        ws:close(4000, "bye")
        ws:recv()
      end }
      route { path = "/first", handler = function(ctx)
        local ws = ctx:websocket{}
        local data = ws:recv()
        ws:send_text("got " .. tostring(data))
        ws:recv()
      end }
      route { path = "/late", handler = function(ctx)
        gw.sleep(0.05) -- upgrades after a wait: outside the connection's input pass
        local ws = ctx:websocket{}
        ws:send_text("late welcome")
        local data = ws:recv()
        ws:send_text("got " .. tostring(data))
        ws:recv()
      end }
    ]]):format(up.port))
  end)
  teardown(function()
    g:stop()
    up:stop()
  end)

  it("sends a handler's frames before its first wait at once", function()
    local ws = assert(g:websocket("/welcome"))
    assert.same({ "welcome", "text" }, { ws:recv(2000) })
    ws = assert(g:websocket("/sleep0"))
    assert.same({ "one", "text" }, { ws:recv(2000) })
    assert.same({ "two", "text" }, { ws:recv(2000) })
  end)

  it("sends a handler's close frame before its first wait at once", function()
    local ws = assert(g:websocket("/bye"))
    assert.same({ "bye", "close", 4000 }, { ws:recv(2000) })
  end)

  it("reads frames the client sent right behind its handshake", function()
    local wsc = helpers.websocket
    local ws = assert(g:websocket("/first", { early = wsc.frame(wsc.TEXT, "early bird") }))
    assert.same({ "got early bird", "text" }, { ws:recv(2000) })
    ws = assert(g:websocket("/late", { early = wsc.frame(wsc.TEXT, "early bird") }))
    assert.same({ "late welcome", "text" }, { ws:recv(2000) })
    assert.same({ "got early bird", "text" }, { ws:recv(2000) })
  end)

  it("relays what the upstream sent right behind its 101 at once", function()
    local ws = assert(g:websocket("/early"))
    assert.same({ "hello from upstream", "text" }, { ws:recv(2000) })
    ws:close(1000)
  end)

  it("(the test kit's client) refuses a masked frame from the server", function()
    local ws = assert(g:websocket("/masked"))
    assert.same({ nil, "protocol: a server frame is masked" }, { ws:recv(2000) })
    ws:disconnect()
  end)
end)
