-- HTTP/2 on listeners: h2c with prior knowledge and h2 by ALPN, every stream
-- a full request (routing, plugins in every phase, proxying to HTTP/1.1
-- upstreams, limits, deadlines, logs), flow control as back-pressure, and the
-- frame-level attacks, played with raw frames by spec/h2peer.py (python3-h2).
local helpers = require "spec.helpers"
local upstream = require "spec.upstream"
local pki_lib = require "spec.pki"
local sh = pki_lib.sh

local MB = 1024 * 1024
local CHUNK = ("0123456789abcdef"):rep(4096) -- 64 KiB


-- Runs spec/h2peer.py against the gateway; returns its JSON report.
local function peer(g, scenario, arg, seconds)
  local dir = helpers.tmpdir()
  local pid = assert(gw.process.spawn({ "/usr/bin/python3", "spec/h2peer.py", tostring(g.port), scenario, arg },
                                      { stdout = dir .. "/out", stderr = dir .. "/err" }))
  local how = helpers.wait_exit(pid, seconds or 40)
  if not how then gw.process.kill(pid, gw.process.SIGKILL) end
  local out = helpers.read_file(dir .. "/out")
  local last = out:match("([^\n]+)\n?$")
  local report = last and gw.json.decode(last)
  assert(report, "h2peer " .. scenario .. " said: " .. out .. helpers.read_file(dir .. "/err"))
  return report
end

local function curl(dir, args)
  return sh(dir, "curl -sS --max-time 20 " .. args)
end

local BASE = [[
  listen { "127.0.0.1:{{PORT}}", http2 = true }
  plugins_dir "%s/spec/fixtures/plugins"
  timeouts { send = "1s", header = "1s", keepalive = "2s" }
  upstream "up" { targets = { "127.0.0.1:%d" }, timeouts = { read = "30s" } }
  upstream "one" { targets = { "127.0.0.1:%d" }, max_concurrency = 1 }
  route { path = "/", handler = function() return 200, "root" end }
  route { path = "/info", handler = function(ctx)
    return 200, { version = ctx.request.http_version, method = ctx.request.method, path = ctx.request.path,
                  host = ctx.request.host, ua = ctx.request.headers["User-Agent"], scheme = ctx.request.scheme,
                  trace_id = ctx.trace_id }
  end }
  route { path = "/fast", handler = function() return 200, "fast" end }
  route { path = "/slow", handler = function() gw.sleep(0.3) return 200, "slow" end }
  route { path = "/late", timeout = "200ms", handler = function() gw.sleep(2) return 200, "never" end }
  route { method = "POST", path = "/echo", handler = function(ctx) return 200, ctx.request:body() end }
  route { path = "/traced", plugins = { trace = { tag = "a" } }, handler = function(ctx)
    gw.sleep(0.01)
    return 200, ctx.vars.trail
  end }
  route { path = "/up/{rest*}", upstream = "up", max_body = 0, timeout = "60s" }
  route { path = "/one/{rest*}", upstream = "one" }
]]

describe("HTTP/2", function()
  local up, g, dir, uploaded

  setup(function()
    up = upstream.start(function(req, res)
      if req.path == "/up/big" then
        res.sock:send("HTTP/1.1 200 OK\r\nContent-Length: " .. 200 * MB .. "\r\n\r\n")
        for _ = 1, 200 * MB / #CHUNK do
          if not res.sock:send(CHUNK) then return end
        end
        return
      end
      if req.path == "/up/upload" then
        -- counts a chunked or Content-Length body without keeping it
        uploaded = 0
        if req.headers["transfer-encoding"] then
          while true do
            local size = tonumber(assert(res.sock:receive("*l")):match("^%x+"), 16)
            if size == 0 then res.sock:receive("*l"); break end
            local left = size
            while left > 0 do
              local d = assert(res.sock:receive(math.min(left, 65536)))
              left = left - #d
            end
            uploaded = uploaded + size
            res.sock:receive("*l")
          end
        else
          local left = tonumber(req.headers["content-length"] or 0)
          while left > 0 do
            local d = assert(res.sock:receive(math.min(left, 65536)))
            left = left - #d
            uploaded = uploaded + #d
          end
        end
        return 200, {}, tostring(uploaded)
      end
      if req.path == "/up/trailers" then
        res.sock:send("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" ..
                      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n" ..
                      "grpc-status: 0\r\nX-Checksum: abc\r\n\r\n")
        return
      end
      if req.path:find("^/one/") then gw.sleep(0.3) end
      return 200, { ["X-Up"] = "yes" },
             gw.json.encode({ method = req.method, target = req.target, host = req.headers["host"],
                              cookie = req.headers["cookie"], te = req.headers["transfer-encoding"] })
    end, { raw_body = true, timeout = 60000 })
    g = helpers.start(BASE:format(os.getenv("PWD") or ".", up.port, up.port))
    dir = helpers.tmpdir()
  end)
  teardown(function()
    g:stop()
    up:stop()
  end)

  local function url(path) return ("http://127.0.0.1:%d%s"):format(g.port, path) end

  it("serves h2c with prior knowledge and HTTP/1.1 on the same listener, as the same request", function()
    local code, out = curl(dir, "--http2-prior-knowledge -H 'User-Agent: spec/1' " .. url("/info"))
    assert.equal(0, code, out)
    local info = gw.json.decode(out)
    assert.same({ version = "2", method = "GET", path = "/info", host = "127.0.0.1", ua = "spec/1", scheme = "http" },
                { version = info.version, method = info.method, path = info.path, host = info.host, ua = info.ua,
                  scheme = info.scheme })
    local e = g:entry(info.trace_id)
    assert.equal(200, e.status)
    assert.equal("/info", e.route)
    assert.equal("2", e.protocol) -- the access log tells the protocols apart
    code, out = curl(dir, "-H 'User-Agent: spec/1' " .. url("/info"))
    assert.equal(0, code, out)
    assert.equal("1.1", gw.json.decode(out).version)
    assert.equal("1.1", g:entry(gw.json.decode(out).trace_id).protocol)
    code, out = curl(dir, "--http1.0 " .. url("/info"))
    assert.equal(0, code, out)
    assert.equal("1.0", g:entry(gw.json.decode(out).trace_id).protocol)
  end)

  it("runs every plugin phase on a stream, each yielding", function()
    local code, out = curl(dir, "--http2-prior-knowledge -i " .. url("/traced"))
    assert.equal(0, code, out)
    assert.truthy(out:find("^HTTP/2 200"), out)
    assert.truthy(out:find("a:rewrite,a:access,", 1, true), out)
    assert.truthy(out:lower():find("x-trail: a:rewrite,a:access,a:header_filter,", 1, true), out)
  end)

  it("proxies to an HTTP/1.1 upstream: Host from :authority, cookie crumbs joined, a body without length chunked", function()
    local code, out = curl(dir, "--http2-prior-knowledge -H 'Cookie: a=1' " .. url("/up/x?y=1"))
    assert.equal(0, code, out)
    local got = gw.json.decode(out)
    assert.same({ method = "GET", target = "/up/x?y=1", host = "127.0.0.1:" .. g.port, cookie = "a=1" },
                { method = got.method, target = got.target, host = got.host, cookie = got.cookie })
    local r = peer(g, "cookies", "/up/c")
    assert.equal("200", r.statuses["1"])
    assert.equal("a=1; b=2", gw.json.decode(r.bodies["1"]).cookie)
    code, out = sh(dir, "printf hello | curl -sS --http2-prior-knowledge -T - " .. url("/up/upload"))
    assert.equal(0, code, out)
    assert.equal("5", out)
    assert.equal("chunked", up.received[#up.received].headers["transfer-encoding"])
  end)

  it("relays 103 Early Hints and the upstream's trailers (a trailing HEADERS frame)", function()
    local r = peer(g, "get", "/up/trailers")
    assert.equal("200", r.statuses["1"])
    assert.equal("body", r.bodies["1"])
    assert.same({ ["grpc-status"] = "0", ["x-checksum"] = "abc" }, r.trailers["1"])
    assert.equal("103", r.interim["1"][1][":status"])
  end)

  it("applies limits and deadlines to streams", function()
    local code, out = curl(dir, "--http2-prior-knowledge -o /dev/null -w '%{http_code}' " .. url("/late"))
    assert.equal(0, code, out)
    assert.equal("504", out)
    -- two streams on one connection to an upstream with max_concurrency = 1: one is busy
    code, out = curl(dir, "--http2-prior-knowledge --no-progress-meter -o /dev/null -w 'code=%{http_code} ' " ..
                          "--parallel --parallel-immediate " .. url("/one/a") .. " " .. url("/one/b"))
    assert.equal(0, code, out)
    local codes = {}
    for c in out:gmatch("code=(%d+)") do codes[#codes + 1] = c end
    table.sort(codes)
    assert.same({ "200", "429" }, codes)
  end)

  it("carries 1,000 concurrent streams over a few connections", function()
    local code, out = sh(dir, ("h2load -n 1000 -c 4 -m 250 %s"):format(url("/slow")))
    assert.equal(0, code, out)
    assert.truthy(out:find("1000 succeeded, 0 failed", 1, true), out)
    assert.truthy(out:find("status codes: 1000 2xx", 1, true), out)
  end)

  it("downloads and uploads 200 MB with bounded memory", function()
    local base = g:rss_kb()
    local code, out = curl(dir, "--http2-prior-knowledge -o /dev/null -w '%{http_code} %{size_download}' " ..
                                url("/up/big"))
    assert.equal(0, code, out)
    assert.equal("200 " .. 200 * MB, out)
    assert(os.execute(("head -c %d /dev/zero > %s/upload.bin"):format(200 * MB, dir)) == 0)
    code, out = curl(dir, ("--http2-prior-knowledge -T %s/upload.bin %s"):format(dir, url("/up/upload")))
    assert.equal(0, code, out)
    assert.equal(tostring(200 * MB), out)
    os.remove(dir .. "/upload.bin")
    local grown = g:rss_kb() - base
    assert.is_true(grown < 40 * 1024, "RSS grew by " .. grown .. " KiB")
  end)

  it("stops a slow reader's stream only: other streams flow, and the stalled one is reset after the send timeout", function()
    local r = peer(g, "stalled_stream", "/up/big")
    assert.equal(65535, r.stalled_at)
    assert.equal(r.stalled_at, r.stalled_after)   -- not a byte past the stream's window
    assert.equal("fast", r.bodies["3"])
    assert.is_true(r.fast_ms < 1000, "the other stream waited " .. r.fast_ms .. " ms")
    assert.equal(8, r.resets["1"])                 -- CANCEL after timeouts.send
    assert.is_true(g:rss_kb() < 60 * 1024)      -- the 200 MB upstream body waited upstream
  end)

  describe("attacks", function()
    local function still_serving()
      local code, out = curl(dir, "--http2-prior-knowledge " .. url("/fast"))
      assert.equal(0, code, out)
      assert.equal("fast", out)
    end

    it("an HPACK bomb gets a connection error, not memory", function()
      local base = g:rss_kb()
      local r = peer(g, "hpack_bomb")
      assert.is_true(r.encoded_bytes < 10000)
      assert.equal(11, r.goaway) -- ENHANCE_YOUR_CALM
      assert.is_true(r.closed)
      assert.is_true(g:rss_kb() - base < 4096)
      still_serving()
    end)

    it("a CONTINUATION flood closes the connection", function()
      local r = peer(g, "continuation_flood")
      assert.is_true(r.closed)
      assert.is_not_nil(r.goaway)
      assert.is_true(r.continuations_sent < 10000 or r.goaway ~= nil)
      still_serving()
    end)

    it("rapid reset: streams opened and cancelled in a loop are counted, then GOAWAY", function()
      local r = peer(g, "rapid_reset", "5000")
      assert.equal(11, r.goaway)
      assert.is_true(r.opened < 5000, "opened " .. r.opened)
      assert.truthy(g:error_log():find("stream reset flood", 1, true))
      still_serving()
    end)

    it("SETTINGS, PING and empty DATA floods get GOAWAY", function()
      for _, sc in ipairs({ "ping_flood", "settings_flood", "empty_data_flood" }) do
        local r = peer(g, sc)
        assert.equal(11, r.goaway, sc)
        assert.is_true(r.sent < 20000, sc)
      end
      still_serving()
    end)

    it("streams past max_concurrent_streams (128) are refused, the others served", function()
      local r = peer(g, "max_streams", "200")
      assert.equal(128, r.max_concurrent_streams)
      local ok, refused = 0, 0
      for _ in pairs(r.statuses) do ok = ok + 1 end
      for _, code in pairs(r.resets) do if code == 7 then refused = refused + 1 end end
      assert.equal(128, ok)
      assert.equal(72, refused) -- REFUSED_STREAM
    end)

    it("a header block that never ends is cut at the header timeout; an idle connection at keep-alive", function()
      local r = peer(g, "partial_headers")
      assert.is_true(r.closed)
      assert.is_true(r.closed_after_ms < 2500, r.closed_after_ms)
      r = peer(g, "idle")
      assert.equal(0, r.goaway) -- NO_ERROR
      assert.is_true(r.closed_after_ms >= 900 and r.closed_after_ms < 3500, r.closed_after_ms)
    end)

    it("a client that never reads is closed after the send timeout", function()
      local r = peer(g, "never_reads", "/up/big")
      assert.is_true(r.closed)
      assert.is_true(g:rss_kb() < 60 * 1024)
    end)
  end)
end)

describe("HTTP/2 off", function()
  it("a cleartext listener without http2 answers the h2c preface 505 and says what to turn on", function()
    local g = helpers.start('listen "127.0.0.1:{{PORT}}"\nroute { path = "/", handler = function() return 200, "h1" end }')
    local dir = helpers.tmpdir()
    local code, out = sh(dir, ("curl -sS --max-time 5 --http2-prior-knowledge http://127.0.0.1:%d/"):format(g.port))
    assert.not_equal(0, code, out) -- curl: "Empty reply from server" (it cannot read an HTTP/1.1 answer then)
    local _, ok = sh(dir, ("curl -sS --max-time 5 http://127.0.0.1:%d/"):format(g.port))
    assert.equal("h1", ok)
    gw.sleep(0.1)
    assert.truthy(g:error_log():find("sent the HTTP/2 preface (h2c with prior knowledge) to a listener without " ..
                                     "HTTP/2: answered 505 (listen { \\\"127.0.0.1:" .. g.port ..
                                     "\\\", http2 = true } takes h2c)", 1, true), g:error_log())
    g:stop()
  end)
end)

describe("HTTP/2 on TLS", function()
  it("is offered by ALPN (off with http2 = false), and the stream knows it came over TLS", function()
    local pki = pki_lib.make()
    local g = helpers.start(([[
      listen { "127.0.0.1:{{PORT}}", tls = { cert = "%s/localhost.pem", key = "%s/localhost.key" } }
      listen { "127.0.0.1:%d", http2 = false, tls = { cert = "%s/localhost.pem", key = "%s/localhost.key" } }
      route { path = "/info", handler = function(ctx)
        return 200, { version = ctx.request.http_version, scheme = ctx.request.scheme, tls = ctx.request.tls.version }
      end }
    ]]):format(pki, pki, helpers.free_port(), pki, pki))
    local code, out = sh(pki, ("curl -sS --cacert %s/ca.pem https://localhost:%d/info"):format(pki, g.port))
    assert.equal(0, code, out)
    local info = gw.json.decode(out)
    assert.same({ version = "2", scheme = "https" }, { version = info.version, scheme = info.scheme })
    assert.truthy(info.tls)
    local second = tonumber(helpers.read_file(g.file):match('listen { "127.0.0.1:(%d+)", http2 = false'))
    code, out = sh(pki, ("curl -sS --http2 --cacert %s/ca.pem https://localhost:%d/info"):format(pki, second))
    assert.equal(0, code, out)
    assert.equal("1.1", gw.json.decode(out).version)
    g:stop()
  end)
end)

describe("HTTP/2 drain and reload", function()
  it("sends GOAWAY on drain and lets the streams in flight finish", function()
    local g = helpers.start([[
      listen { "127.0.0.1:{{PORT}}", http2 = true }
      route { path = "/slow", handler = function() gw.sleep(0.6) return 200, "done" end }
    ]])
    local dir = helpers.tmpdir()
    -- nghttp (nghttp2-client) keeps reading after GOAWAY, as a client must for the streams below last_stream_id
    local pid = assert(gw.process.spawn({ "/usr/bin/nghttp", "-v", ("http://127.0.0.1:%d/slow"):format(g.port) },
                                        { stdout = dir .. "/out", stderr = dir .. "/err" }))
    -- its stream is in flight once its connection is open (the handler takes 0.6 s): then the drain
    for _ = 1, 100 do
      local open = 0
      for _, w in ipairs(gw.json.decode(select(2, g:ctl("status", "--json"))).workers) do open = open + w.connections end
      if open > 0 then break end
      gw.sleep(0.02)
    end
    gw.sleep(0.05)
    local code, out = g:ctl("stop", "--drain", "5")
    assert.equal(0, code, out)
    helpers.wait_exit(pid, 20)
    out = helpers.read_file(dir .. "/out")
    local goaway = out:find("recv GOAWAY", 1, true)
    assert.truthy(goaway, out)
    local last = out:match("recv GOAWAY.-last_stream_id=(%d+), error_code=NO_ERROR")
    assert.truthy(last, out)
    assert.truthy(out:find("recv %(stream_id=" .. last .. "%) :status: 200", goaway), out) -- after the GOAWAY
    assert.truthy(out:find("done", goaway, true), out)
    local how, status = helpers.wait_exit(g.pid, 10)
    assert.same({ "exit", 0 }, { how, status })
    g.stopped = true
  end)

  it("keeps a connection's in-flight stream on its generation and starts new streams on the new one", function()
    local g = helpers.start([[
      listen { "127.0.0.1:{{PORT}}", http2 = true }
      route { path = "/gen", handler = function() gw.sleep(0.8) return 200, "v1" end }
    ]])
    local dir = helpers.tmpdir()
    local pid = assert(gw.process.spawn({ "/usr/bin/python3", "spec/h2peer.py", tostring(g.port), "two_streams", "/gen" },
                                        { stdout = dir .. "/out", stderr = dir .. "/err" }))
    gw.sleep(0.2)
    helpers.write_file(g.file, helpers.read_file(g.file):gsub('"v1"', '"v2"'))
    local code, out = g:ctl("reload")
    assert.equal(0, code, out)
    helpers.wait_exit(pid, 20)
    local r = gw.json.decode(helpers.read_file(dir .. "/out"):match("([^\n]+)\n?$"))
    assert.equal("v1", r.bodies["1"]) -- started before the reload
    assert.equal("v2", r.bodies["3"]) -- the same connection, after it
    g:stop()
  end)
end)
