-- HTTP/1.1 server behaviour of a real gatewayd over raw sockets: framing,
-- keep-alive, pipelining, bodies, limits, timeouts and smuggling attempts.
local helpers = require "spec.helpers"

local CONFIG = [[
limits { max_request_line = 1024, max_header_size = 4096, max_headers = 20, max_body = 1000 }
timeouts { header = "600ms", body = "600ms", keepalive = "800ms" }
local hits = 0
route { method = "GET", path = "/", handler = function() return 200, "root\n" end }
route { method = "GET", path = "/hits", handler = function() return 200, { hits = hits } end }
route { method = { "POST", "PUT" }, path = "/echo", handler = function(ctx)
  hits = hits + 1
  return 200, ctx.request:body(), { ["Content-Type"] = "application/octet-stream" }
end }
route { method = "GET", path = "/n/{n}", handler = function(ctx)
  gw.sleep((10 - tonumber(ctx.params.n)) / 1000)  -- later requests finish sooner
  return 200, ctx.params.n
end }
route { method = "GET", path = "/info", handler = function(ctx)
  local r = ctx.request
  return 200, { method = r.method, path = r.path, query = r.query, host = r.host,
                args = r.args, ua = r.headers["USER-AGENT"], version = r.http_version }
end }
route { method = "GET", path = "/files/{rest*}", handler = function(ctx) return 200, ctx.params.rest end }
route { method = "GET", path = "/seg/{s}", handler = function(ctx) return 200, ctx.params.s end }
route { path = "/any", handler = function(ctx) return 200, ctx.request.method end }
route { method = "GET", path = "/no-content", handler = function() return 204, "ignored" end }
]]

describe("HTTP/1.1 server", function()
  local gw_

  setup(function() gw_ = helpers.start(CONFIG) end)
  teardown(function()
    local how, code = gw_:stop()
    assert.same({ "exit", 0 }, { how, code })
  end)

  local function hits()
    return gw_:request("GET", "/hits").json.hits
  end

  it("serves a route with Date, Content-Length and X-Request-ID", function()
    local res = assert(gw_:request("GET", "/"))
    assert.equal(200, res.status)
    assert.equal("root\n", res.body)
    assert.equal("5", res.headers["content-length"])
    assert.truthy(res.headers["date"]:match("GMT$"))
    assert.truthy(res.headers["x-request-id"]:match("^%x+$"))
    assert.equal(32, #res.headers["x-request-id"])
  end)

  it("answers HEAD like GET without a body", function()
    local s = gw_:connect()
    s:send("HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
    local head = assert(helpers.read_response(s, "HEAD"))
    assert.equal(200, head.status)
    assert.equal("5", head.headers["content-length"])
    -- the next response starts right after the head: no body bytes were sent
    local get = assert(helpers.read_response(s))
    assert.equal("root\n", get.body)
    s:close()
  end)

  it("exposes method, path, query args and case-insensitive headers", function()
    local res = gw_:request("GET", "/info?a=1&b=x%20y&a=2&flag", { headers = { ["User-Agent"] = "spec" } })
    assert.equal(200, res.status)
    assert.same({ method = "GET", path = "/info", query = "a=1&b=x%20y&a=2&flag", host = "localhost",
                  args = { a = { "1", "2" }, b = "x y", flag = true }, ua = "spec",
                  version = res.wire == "h2" and "2" or "1.1" }, res.json)
  end)

  it("decodes segments once for matching, keeping %2F inside a segment", function()
    assert.equal("a/b", gw_:request("GET", "/seg/a%2Fb").body)
    assert.equal(404, gw_:request("GET", "/seg/a/b").status)
    assert.equal("x y/z", gw_:request("GET", "/files/x%20y/z").body)
    assert.equal(400, gw_:request("GET", "/seg/%zz").status)
    assert.equal(400, gw_:request("GET", "/seg/%00").status)
  end)

  it("refuses dot segments instead of guessing how the upstream resolves them", function()
    assert.equal(400, gw_:request("GET", "/files/../etc/passwd").status)
    assert.equal(400, gw_:request("GET", "/files/%2e%2e/x").status)
  end)

  it("answers 404 and 405 with Allow", function()
    local res = gw_:request("GET", "/nowhere")
    assert.equal(404, res.status)
    assert.equal(res.headers["x-request-id"], res.json.trace_id)
    res = gw_:request("DELETE", "/echo")
    assert.equal(405, res.status)
    assert.equal("POST, PUT", res.headers["allow"])
    assert.equal("BREW", gw_:request("BREW", "/any").body)
    assert.equal(204, gw_:request("GET", "/no-content").status)
  end)

  it("keeps the connection alive and answers pipelined requests in order", function()
    local s = gw_:connect()
    local batch = {}
    for i = 1, 5 do batch[i] = ("GET /n/%d HTTP/1.1\r\nHost: a\r\n\r\n"):format(i) end
    s:send(table.concat(batch))
    for i = 1, 5 do
      local res = assert(helpers.read_response(s))
      assert.equal(tostring(i), res.body)
    end
    -- still open for more
    s:send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert.equal("root\n", assert(helpers.read_response(s)).body)
    s:close()
  end)

  it("speaks HTTP/1.0: closes unless keep-alive was asked for", function()
    local s = gw_:connect()
    s:send("GET / HTTP/1.0\r\n\r\n")
    local res = assert(helpers.read_response(s))
    assert.equal("close", res.headers["connection"])
    assert.is_true(helpers.closed(s))
    s = gw_:connect()
    s:send("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n")
    assert.equal("keep-alive", assert(helpers.read_response(s)).headers["connection"])
    assert.equal(200, assert(helpers.read_response(s)).status)
  end)

  it("reads Content-Length and chunked bodies", function()
    assert.equal("hello", gw_:request("POST", "/echo", { body = "hello" }).body)
    local res = gw_:raw("POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" ..
                        "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n")
    assert.equal("hello world", res.body)
  end)

  it("sends 100 Continue before reading an expected body", function()
    local s = gw_:connect()
    s:send("PUT /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert.equal("HTTP/1.1 100 Continue", s:receive("*l"))
    assert.equal("", s:receive("*l"))
    s:send("abc")
    assert.equal("abc", assert(helpers.read_response(s)).body)
    s:close()
  end)

  it("refuses a too large body with 413 without reading it or sending 100", function()
    local s = gw_:connect()
    s:send("PUT /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n")
    local res = assert(helpers.read_response(s))
    assert.equal(413, res.status)
    assert.is_nil(res.continued)
    assert.equal("close", res.headers["connection"])
    local res2 = gw_:raw("POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" ..
                         "3e8\r\n" .. ("x"):rep(1000) .. "\r\n1\r\ny\r\n0\r\n\r\n")
    assert.equal(413, res2.status)
  end)

  it("applies the size limits with 414 and 431", function()
    assert.equal(414, gw_:request("GET", "/" .. ("a"):rep(2000)).status)
    assert.equal(431, gw_:request("GET", "/", { headers = { ["X-Big"] = ("b"):rep(5000) } }).status)
    local many = {}
    for i = 1, 25 do many["X-H" .. i] = "v" end
    assert.equal(431, gw_:request("GET", "/", { headers = many }).status)
  end)

  -- Each of these must be refused with the status and must never reach a handler.
  local smuggling = {
    { "CL and TE", "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX", 400 },
    { "conflicting CL", "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400 },
    { "TE not chunked last", "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400 },
    { "obs-fold TE", "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400 },
    { "space before colon", "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\nabc", 400 },
    { "bare LF", "POST /echo HTTP/1.1\nHost: a\r\nContent-Length: 3\r\n\r\nabc", 400 },
    { "bad chunk size", "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n", 400 },
    { "chunk size overflow", "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000000003\r\nabc\r\n0\r\n\r\n", 400 },
    { "HTTP/2.0 version", "POST /echo HTTP/2.0\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", 505 },
    { "NUL in header", "POST /echo HTTP/1.1\r\nHost: a\r\nX: a\0b\r\nContent-Length: 3\r\n\r\nabc", 400 },
    { "bad method token", "PO(ST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", 400 },
    { "missing Host", "POST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 400 },
  }
  for _, case in ipairs(smuggling) do
    it("refuses " .. case[1] .. " and closes the connection", function()
      local before = hits()
      local s = gw_:connect()
      s:send(case[2])
      local res = assert(helpers.read_response(s))
      assert.equal(case[3], res.status)
      assert.equal("close", res.headers["connection"])
      assert.is_true(helpers.closed(s))
      assert.equal(before, hits())
    end)
  end

  it("refuses bytes that cannot start a request at once, not at the header timeout (TLS to a plain port)", function()
    local s = gw_:connect()
    s:send("\22\3\1\2\0\1\0\1\252\3\3") -- the start of a TLS ClientHello: no line end in sight
    local res = assert(helpers.read_response(s))
    assert.equal(400, res.status) -- 408 if it waited for the rest of a head
    assert.is_true(helpers.closed(s))
  end)

  it("cuts off a slowloris client while serving others", function()
    local slow = gw_:connect(3000)
    local t0 = gw.monotonic_ms()
    slow:send("GET / HTTP/1.1\r\n")
    -- keep trickling bytes: the header timeout is total, not per read
    for i = 1, 4 do
      gw.sleep(0.1)
      slow:send("X-Slow-" .. i .. ": y\r\n")
      -- others are served meanwhile
      assert.equal(200, gw_:request("GET", "/").status)
    end
    local res = assert(helpers.read_response(slow))
    assert.equal(408, res.status)
    local elapsed = gw.monotonic_ms() - t0
    assert.is_true(elapsed >= 550 and elapsed < 2000, "cut after " .. elapsed .. " ms")
    assert.is_true(helpers.closed(slow))
  end)

  it("times out a stalled body with 408", function()
    local s = gw_:connect(3000)
    s:send("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    local res = assert(helpers.read_response(s))
    assert.equal(408, res.status)
  end)

  it("closes idle keep-alive connections after the keep-alive timeout", function()
    local s = gw_:connect(3000)
    s:send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert(helpers.read_response(s))
    local t0 = gw.monotonic_ms()
    assert.is_true(helpers.closed(s))
    local waited = gw.monotonic_ms() - t0
    assert.is_true(waited > 600 and waited < 2000, "closed after " .. waited .. " ms")
  end)

  it("counts the keep-alive timeout from the last request, and a new head's timeout from its start", function()
    local s = gw_:connect(5000)
    local t0 = gw.monotonic_ms()
    for _ = 1, 3 do -- requests 400 ms apart: each one restarts the 800 ms keep-alive timeout
      s:send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
      assert.equal(200, assert(helpers.read_response(s)).status)
      gw.sleep(0.4)
    end
    -- the start of a head, then nothing: the 600 ms header timeout, earlier than the keep-alive one
    local t1 = gw.monotonic_ms()
    s:send("GET / HTTP/1.1\r\n")
    local res = assert(helpers.read_response(s))
    local waited = gw.monotonic_ms() - t1
    assert.equal(408, res.status)
    assert.is_true(t1 - t0 > 1100, "the keep-alive timeout ended the connection early")
    assert.is_true(waited > 500 and waited < 1500, "408 after " .. waited .. " ms")
  end)

  it("writes one JSON access-log line per request", function()
    gw_:request("GET", "/info?x=1", { headers = { ["X-Request-ID"] = "spec-req-1" } })
    gw.sleep(0.05)
    local found = gw_:entry("spec-req-1")
    assert.is_table(found)
    assert.equal("GET", found.method)
    assert.equal("/info?x=1", found.path)
    assert.equal("/info", found.route)
    assert.equal(200, found.status)
    assert.is_number(found.duration_ms)
    assert.is_number(found.bytes)
    assert.truthy(found.remote:match("^127%.0%.0%.1:%d+$"))
  end)
end)

-- The gateway's C heap in use (gatewayctl status: mallinfo2), which Lua garbage does not blur as it does RSS.
local function heap_in_use(g)
  local _, out = g:ctl("status", "--json")
  return gw.json.decode(out).memory.heap_in_use
end

describe("idle keep-alive connections", function()
  local gw_
  setup(function()
    gw_ = helpers.start([[
      timeouts { keepalive = "60s" }
      route { method = "GET", path = "/", handler = function() return 200, "root\n" end }
    ]])
  end)
  teardown(function() gw_:stop() end)


  it("cost about a kilobyte each once their request is answered", function()
    if gw_:sanitized() then return end -- redzones and quarantine: the figure would measure ASan
    local N = 2000
    for _ = 1, 50 do gw_:request("GET", "/", { h1 = true }) end -- warm-up: the JIT, the allocator
    -- the C heap, not RSS: Lua garbage not yet collected would blur RSS by kilobytes per request
    local before = heap_in_use(gw_)
    local socks = {}
    for i = 1, N do
      local s = assert(gw_:connect(5000))
      s:send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
      assert.equal(200, assert(helpers.read_response(s)).status)
      socks[i] = s
    end
    local per_conn = (heap_in_use(gw_) - before) / N
    for _, s in ipairs(socks) do s:close() end
    -- an input buffer kept per idle connection would cost 4 KiB more each
    assert.is_true(per_conn < 2048, ("%d bytes per idle connection"):format(per_conn))
  end)
end)

describe("memory after a burst", function()
  local gw_
  setup(function()
    gw_ = helpers.start([[
      route { method = "GET", path = "/slow", handler = function() gw.sleep(0.3); return 200, "ok" end }
    ]])
  end)
  teardown(function() gw_:stop() end)


  it("is given back: a worker keeps a bounded number of request objects for reuse", function()
    if gw_:sanitized() then return end -- ASan's quarantine holds freed memory on purpose
    local N = 400
    local function burst(n)
      local fns = {}
      for i = 1, n do fns[i] = function() return gw_:request("GET", "/slow", { h1 = true }).status end end
      for _, status in ipairs(helpers.parallel(fns)) do assert.equal(200, status) end
    end
    burst(100) -- a smaller burst first: what any burst leaves (Lua, the allocator's own tables, the cache)
    gw.sleep(0.2)
    local before = heap_in_use(gw_)
    burst(N)
    gw.sleep(0.2)
    local grown = heap_in_use(gw_) - before
    -- keeping every object a burst used would hold N of them (over 12 KB each)
    assert.is_true(grown < N * 4096, ("the heap grew by %d bytes after a burst of %d"):format(grown, N))
  end)
end)
