-- The reverse proxy against real upstream servers (spec/upstream.lua) on
-- 127.0.0.1: correct forwarding, pools, phase timeouts, classified errors,
-- retries, health, streaming.
local helpers = require "spec.helpers"
local upstream = require "spec.upstream"

local function config(ports, extra)
  return ([[
error_header "X-Gateway-Error"
upstream "a" {
  targets = { "127.0.0.1:%d" },
  timeouts = { connect = "300ms", send = "1s", read = "300ms" },
  pool = { max_idle = 8, idle_timeout = "10s", max_requests = 1000 },
}
route { path = "/a/{rest*}", upstream = "a" }
route { path = "/deadline/{rest*}", upstream = "a", timeout = "200ms" }
]]):format(ports[1]) .. (extra or "")
end

local function entry_for(g, trace_id) return g:entry(trace_id) end

describe("reverse proxy", function()
  local up, g

  before_each(function()
    up = upstream.start(function(req) return 200, { ["X-Up"] = "yes" }, "from upstream " .. req.target end)
    g = helpers.start(config({ up.port }))
  end)
  after_each(function()
    g:stop()
    up:stop()
  end)

  it("forwards method, target and body untouched and relays the response", function()
    local res = g:request("POST", "/a/b%2Fc/d?x=%20y&z", { body = "payload", headers = { ["X-Client"] = "1" } })
    assert.equal(200, res.status)
    assert.equal("from upstream /a/b%2Fc/d?x=%20y&z", res.body)
    assert.equal("yes", res.headers["x-up"])
    local got = up.received[1]
    assert.equal("POST", got.method)
    assert.equal("/a/b%2Fc/d?x=%20y&z", got.target)
    assert.equal("payload", got.body)
    assert.equal("1", got.headers["x-client"])
    assert.equal("localhost", got.headers["host"])          -- Host passes through by default
    assert.equal("127.0.0.1", got.headers["x-forwarded-for"])
    assert.equal("http", got.headers["x-forwarded-proto"])
    assert.equal("localhost", got.headers["x-forwarded-host"])
  end)

  it("logs upstream, target, attempts and timings", function()
    up.handler = function() gw.sleep(0.05); return 200, {}, "x" end
    g:request("GET", "/a/timed", { headers = { ["X-Request-ID"] = "timed-1" } })
    local e = entry_for(g, "timed-1")
    assert.equal("a", e.upstream)
    assert.equal("127.0.0.1:" .. up.port, e.target)
    assert.equal(1, e.attempts)
    assert.is_true(e.ttfb_ms >= 45, "ttfb " .. e.ttfb_ms)
    assert.is_number(e.connect_ms)
    assert.equal(0, e.queue_ms)
  end)

  it("propagates the trace id upstream (X-Request-ID and traceparent) and back", function()
    local res = g:request("GET", "/a/t", { headers = {
      traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
      ["X-Forwarded-For"] = "10.1.2.3" } })
    assert.equal("0af7651916cd43dd8448eb211c80319c", res.headers["x-request-id"])
    local got = up.received[1]
    assert.equal("0af7651916cd43dd8448eb211c80319c", got.headers["x-request-id"])
    assert.truthy(got.headers["traceparent"]:match("^00%-0af7651916cd43dd8448eb211c80319c%-%x+%-01$"))
    -- no trusted_proxies: a client's X-Forwarded-For is not believed, the chain starts at the peer
    assert.equal("127.0.0.1", got.headers["x-forwarded-for"])
  end)

  it("removes hop-by-hop headers in both directions", function()
    up.handler = function()
      return 200, { Connection = "X-Up-Hop", ["X-Up-Hop"] = "secret", ["Keep-Alive"] = "timeout=5",
                    ["X-Up-End"] = "kept" }, "ok"
    end
    local res = g:raw("GET /a/h HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n" ..
                      "Keep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: websocket\r\nProxy-Connection: x\r\n" ..
                      "X-End: kept\r\n\r\n")
    local got = up.received[1]
    for _, h in ipairs({ "x-hop", "keep-alive", "te", "upgrade", "proxy-connection" }) do
      assert.is_nil(got.headers[h], h .. " reached the upstream")
    end
    assert.equal("kept", got.headers["x-end"])
    assert.is_nil(res.headers["x-up-hop"])
    assert.is_nil(res.headers["keep-alive"])
    assert.equal("kept", res.headers["x-up-end"])
  end)

  it("reuses upstream connections: far fewer connections than requests", function()
    for i = 1, 50 do
      assert.equal(200, g:request("GET", "/a/" .. i).status)
    end
    assert.equal(50, up.requests)
    assert.is_true(up.connections <= 2, "upstream saw " .. up.connections .. " connections")
  end)

  it("replaces a pooled connection the upstream closed, without a failed request", function()
    assert.equal(200, g:request("GET", "/a/1").status)
    -- the upstream goes away and comes back on the same port: every pooled connection is dead
    local port = up.port
    up:stop()
    gw.sleep(0.05)
    up = upstream.start(function() return 200, {}, "new upstream" end, { port = port })
    for i = 1, 5 do
      local res = g:request("GET", "/a/again" .. i)
      assert.equal(200, res.status)
      assert.equal("new upstream", res.body)
    end
  end)

  it("resolves target host names on the worker's loop (hosts file, localhost)", function()
    local dir = helpers.tmpdir()
    helpers.write_file(dir .. "/hosts", "127.0.0.1 users.moongate.test\n")
    local g2 = helpers.start(([[
      hosts_file "%s/hosts"
      error_header "X-Gateway-Error"
      upstream "named" { targets = { "users.moongate.test:%d" } }
      upstream "local" { targets = { "localhost:%d" } }
      upstream "nowhere" { targets = { "nowhere.moongate.test:%d" }, retries = 0 }
      route { path = "/named", upstream = "named" }
      route { path = "/local", upstream = "local" }
      route { path = "/nowhere", upstream = "nowhere" }
    ]]):format(dir, up.port, up.port, up.port))
    local res
    for _ = 1, 50 do -- resolution is asynchronous: the first requests may precede it
      res = g2:request("GET", "/named")
      if res.status == 200 then break end
      gw.sleep(0.02)
    end
    assert.equal(200, res.status)
    assert.equal(200, g2:request("GET", "/local").status)
    local bad = g2:request("GET", "/nowhere")
    assert.equal(503, bad.status)
    assert.equal("no_healthy_target", bad.headers["x-gateway-error"])
    assert.truthy(g2:error_log():find("cannot resolve nowhere.moongate.test", 1, true))
    g2:stop()
  end)

  it("maps a refused connection to 502 refused", function()
    local port = up.port
    up:stop()
    gw.sleep(0.05)
    local res = g:request("GET", "/a/x")
    assert.equal(502, res.status)
    assert.equal("refused", res.headers["x-gateway-error"])
    assert.equal("refused", entry_for(g, res.json.trace_id).error)
    up = upstream.start(function() return 200 end, { port = port })
  end)

  it("maps a connect that never completes to 504 connect_timeout, without retrying the same target", function()
    -- a listener whose accept queue is full drops new SYNs: the connect hangs
    local hole = gw.tcp_listen("127.0.0.1", 0, 0)
    local filler = gw.tcp()
    assert(filler:connect("127.0.0.1", hole:port()))
    local g2 = helpers.start(([[
      error_header "X-Gateway-Error"
      upstream "hole" { targets = { "127.0.0.1:%d" }, timeouts = { connect = "150ms" }, retries = 1 }
      route { path = "/hole", upstream = "hole" }
    ]]):format(hole:port()))
    local t0 = gw.monotonic_ms()
    local res = g2:request("GET", "/hole")
    local took = gw.monotonic_ms() - t0
    assert.equal(504, res.status)
    assert.equal("connect_timeout", res.headers["x-gateway-error"])
    -- one attempt: trying the only target again would double the client's wait for nothing
    assert.is_true(took >= 140 and took < 290, "one attempt of 150 ms took " .. took)
    g2:stop()
    filler:close()
    hole:close()
  end)

  it("maps an upstream that never answers to 504 read_timeout", function()
    up.handler = function() gw.sleep(2); return 200, {}, "late" end
    local t0 = gw.monotonic_ms()
    local res = g:request("GET", "/a/slow")
    assert.equal(504, res.status)
    assert.equal("read_timeout", res.headers["x-gateway-error"])
    assert.is_true(gw.monotonic_ms() - t0 < 1500)
  end)

  it("applies the read timeout per read: a trickling response within it succeeds", function()
    up.handler = function(req, res)
      res.sock:send("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
      upstream.trickle(res.sock, "0123456789", 2, 0.1) -- 500 ms in all, 100 ms per piece
    end
    local res = g:request("GET", "/a/trickle")
    assert.equal(200, res.status)
    assert.equal("0123456789", res.body)
  end)

  it("waits for a slow first byte within the read timeout", function()
    up.handler = function() gw.sleep(0.15); return 200, {}, "slow but fine" end
    assert.equal("slow but fine", g:request("GET", "/a/x").body)
  end)

  it("ends at the route deadline with 504 deadline", function()
    up.handler = function() gw.sleep(0.25); return 200, {}, "late" end
    -- read timeout (300 ms) is longer than the deadline (200 ms): the deadline wins
    local res = g:request("GET", "/deadline/x")
    assert.equal(504, res.status)
    assert.equal("deadline", res.headers["x-gateway-error"])
  end)

  it("maps a malformed response to 502 protocol", function()
    up.handler = function(req, res) res.sock:send("HTTP/1.1 2OO OK\r\n\r\n"); res:close() end
    local res = g:request("GET", "/a/bad")
    assert.equal(502, res.status)
    assert.equal("protocol", res.headers["x-gateway-error"])
  end)

  it("maps a reset to 502 reset", function()
    up.handler = function(req, res) res:reset() end
    local res = g:request("POST", "/a/rst", { body = "x" }) -- POST: not retried
    assert.equal(502, res.status)
    assert.equal("reset", res.headers["x-gateway-error"])
  end)

  it("never makes a response cut mid-body look complete", function()
    up.handler = function(req, res)
      res.sock:send("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" .. ("x"):rep(100))
      gw.sleep(0.05)
      res:close()
    end
    local s = g:connect()
    s:send("GET /a/cut HTTP/1.1\r\nHost: a\r\n\r\n")
    local ok, res = pcall(helpers.read_response, s)
    -- the body read fails (reset), or it is short of the declared length
    assert.is_true(not ok or res == nil or #res.body < 1000, "a truncated body arrived as complete")
    assert.is_true(helpers.closed(s))
    assert.truthy(g:find_entry(function(x) return x.path == "/a/cut" and x.error == "reset" end))
  end)

  it("relays chunked responses, and close-delimited ones to HTTP/1.0 clients", function()
    up.handler = function(req, res)
      res.sock:send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    end
    local res = g:request("GET", "/a/chunked")
    assert.equal("hello world", res.body)
    if res.wire ~= "h2" then assert.equal("chunked", res.headers["transfer-encoding"]) end
    local s = g:connect()
    s:send("GET /a/chunked HTTP/1.0\r\n\r\n")
    local r10 = helpers.read_response(s)
    assert.equal("hello world", r10.body)
    assert.is_nil(r10.headers["transfer-encoding"])
    assert.equal("close", r10.headers["connection"])
  end)

  it("sends no body for HEAD, 204 and 304", function()
    up.handler = function(req)
      if req.path == "/a/204" then return 204, {}, "" end
      if req.path == "/a/304" then return 304, { ETag = '"x"' }, "" end
      return 200, { ["Content-Length"] = "11" }, req.method == "HEAD" and "" or "hello world"
    end
    local s = g:connect()
    s:send("HEAD /a/x HTTP/1.1\r\nHost: a\r\n\r\nGET /a/204 HTTP/1.1\r\nHost: a\r\n\r\n" ..
           "GET /a/304 HTTP/1.1\r\nHost: a\r\n\r\nGET /a/x HTTP/1.1\r\nHost: a\r\n\r\n")
    local head = assert(helpers.read_response(s, "HEAD"))
    assert.equal("11", head.headers["content-length"])
    assert.equal(204, assert(helpers.read_response(s)).status)
    assert.equal(304, assert(helpers.read_response(s)).status)
    assert.equal("hello world", assert(helpers.read_response(s)).body)
  end)

  it("forwards chunked request bodies and answers Expect: 100-continue", function()
    local s = g:connect()
    s:send("POST /a/up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
    assert.equal("HTTP/1.1 100 Continue", s:receive("*l"))
    s:receive("*l")
    s:send("4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n")
    assert.equal(200, assert(helpers.read_response(s)).status)
    assert.equal("Wikipedia", up.received[1].body)
    assert.is_nil(up.received[1].headers["expect"])
  end)

  it("cancels the upstream request when the client goes away", function()
    local finished, sent
    up.handler = function(req, res)
      if req.path ~= "/a/abandon" then return 200, {}, "ok" end
      gw.sleep(0.3)
      sent = res.sock:send("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
      -- the gateway closed its side: the next read sees it
      local more = res.sock:receive("*l")
      finished = more == nil
      res:close()
    end
    local s = g:connect()
    s:send("GET /a/abandon HTTP/1.1\r\nHost: a\r\nX-Request-ID: abandoned-1\r\n\r\n")
    gw.sleep(0.1)
    s:close()
    gw.sleep(0.5)
    assert.is_true(finished, "the upstream connection was not closed")
    local e = entry_for(g, "abandoned-1")
    assert.equal(499, e.status)
    assert.equal("client_abort", e.error)
    assert.equal(200, g:request("GET", "/a/next").status)
  end)
end)
