-- One response writer: the same response is the same bytes whichever path
-- produced it (the fast proxy path, header_filter plugins, a handler), header
-- tables are case-insensitive, and failures name their phase and plugin.
local helpers = require "spec.helpers"
local upstream = require "spec.upstream"

local FIXTURES = os.getenv("PWD") .. "/spec/fixtures/plugins"

-- The head as the client got it, with the values that differ per request masked.
local function head_bytes(g, path)
  local s = g:connect()
  s:send("GET " .. path .. " HTTP/1.1\r\nHost: a\r\nX-Request-ID: same-id\r\n\r\n")
  local lines = {}
  while true do
    local line = assert(s:receive("*l"))
    if line == "" then break end
    lines[#lines + 1] = line:gsub("^([Dd]ate): .*$", "%1: <date>")
  end
  s:close()
  return table.concat(lines, "\n")
end

describe("the response writer", function()
  local up, g

  setup(function()
    up = upstream.start(function(req, res)
      if req.path:find("early%-hints") then
        res.sock:send("HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" ..
                      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n" ..
                      "4\r\nbody\r\n0\r\nX-Checksum: abc123\r\nSet-Cookie: no=1\r\n\r\n")
        return
      end
      if req.path:find("close%-delimited") then
        res.sock:send("HTTP/1.1 200 OK\r\nConnection: close\r\nX-Kind: eof\r\n\r\nuntil the end")
        res:close()
        return
      end
      return 200, { ["Date"] = "Mon, 30 Nov 2026 10:00:00 GMT", ["x-tag"] = "up", ["X-Mixed-Case"] = "1",
                    ["Content-Type"] = "text/plain" }, "body"
    end)
    g = helpers.start(([[
      plugins_dir "%s"
      upstream "up" { targets = { "127.0.0.1:%d" } }
      route { path = "/fast/{x*}", upstream = "up" }
      route { path = "/filtered/{x*}", upstream = "up", plugins = {
        ["response-transformer"] = { set = { ["X-Mixed-Case"] = "1" } } } }
      route { path = "/retag/{x*}", upstream = "up", plugins = {
        ["response-transformer"] = { set = { ["X-Tag"] = "gateway" } } } }
      route { path = "/defaults/{x*}", upstream = "up", plugins = {
        ["response-transformer"] = { add = { ["X-Tag"] = "default", ["X-Extra"] = "added" } } } }
      route { path = "/defaults-filtered/{x*}", upstream = "up", plugins = {
        ["response-transformer"] = { add = { ["X-Tag"] = "default", ["X-Extra"] = "added" }, remove = { "X-Nothing" } } } }
      route { path = "/handler", plugins = { ["response-transformer"] = { add = { ["content-type"] = "x/default" } } },
              handler = function() return 200, "h", { ["Content-Type"] = "text/html" } end }
      route { path = "/cd/{x*}", upstream = "up" }
      route { path = "/set/{kind}", upstream = "up", plugins = { ["set-defaults"] = { kind = "mixed" } } }
      route { path = "/set-plain/{x*}", upstream = "up", plugins = { ["set-defaults"] = { kind = "plain" } } }
      route { path = "/set-bad-value/{x*}", upstream = "up", plugins = { ["set-defaults"] = { kind = "bad-value" } } }
      route { path = "/set-bad-type/{x*}", upstream = "up", plugins = { ["set-defaults"] = { kind = "bad-type" } } }
      route { path = "/set-bad-name/{x*}", upstream = "up", plugins = { ["set-defaults"] = { kind = "bad-name" } } }
      route { path = "/fail/{phase}", plugins = { ["fail-in"] = { phase = "header_filter" } },
              handler = function() return 200, "x" end }
      route { path = "/fail-access", plugins = { ["fail-in"] = { phase = "access" } }, handler = function() return 200 end }
      route { path = "/fail-body", plugins = { ["fail-in"] = { phase = "body_filter" } }, handler = function() return 200, "b" end }
      route { path = "/fail-log", plugins = { ["fail-in"] = { phase = "log" } }, handler = function() return 200, "l" end }
      route { path = "/fail-handler", handler = function() local t = nil; return t.x end }
      route { method = "POST", path = "/upload", timeout = "1s", handler = function(ctx) return 200, ctx.request:body() end }
    ]]):format(FIXTURES, up.port))
  end)
  teardown(function()
    g:stop()
    up:stop()
  end)

  it("writes the same head on the fast path and through header_filter plugins", function()
    local fast = head_bytes(g, "/fast/x")
    local filtered = head_bytes(g, "/filtered/x")
    assert.equal(fast, filtered)
    assert.truthy(fast:find("^HTTP/1.1 200 OK\n"), fast)
    assert.truthy(fast:find("\nDate: <date>", 1, true), fast)      -- the upstream's Date, not a second one
    assert.truthy(fast:find("\nX-Mixed-Case: 1", 1, true), fast)   -- names as the upstream spelled them
    assert.truthy(fast:find("\nx-tag: up", 1, true), fast)
  end)

  it("treats response header names case-insensitively, keeping the first spelling", function()
    local h = head_bytes(g, "/retag/x")
    assert.truthy(h:find("\nx-tag: gateway", 1, true), h)
    local n = select(2, h:lower():gsub("\nx%-tag:", ""))
    assert.equal(1, n, h)
  end)

  it("adds headers set before the response only where the response has none, on every path", function()
    for _, path in ipairs({ "/defaults/x", "/defaults-filtered/x" }) do
      local res = g:request("GET", path)
      assert.equal("up", res.headers["x-tag"], path)        -- the upstream's wins over a default
      assert.equal("added", res.headers["x-extra"], path)
      local n = 0
      for _, line in ipairs(res.raw_headers) do if line:lower():find("^x%-tag:") then n = n + 1 end end
      assert.equal(1, n, path)
    end
    local res = g:request("GET", "/handler")
    assert.equal("text/html", res.headers["content-type"])  -- the handler's wins over a default
  end)

  it("adds a plugin's ctx.response.headers to a proxied head: in order, arrays, numbers, never framing", function()
    local h = head_bytes(g, "/set/x")
    assert.truthy(h:find("\nx-tag: up\n", 1, true), h)                  -- the upstream's field stays
    assert.equal(1, select(2, h:lower():gsub("\nx%-tag:", "")), h)
    assert.truthy(h:find("\nX-Many: a\nX-Many: b\nX-Num: 42\nX-Last: z", 1, true), h)
    assert.falsy(h:lower():find("x-gone", 1, true), h)
    assert.falsy(h:find("999", 1, true), h)                                -- Content-Length is the gateway's
    local plain = head_bytes(g, "/set-plain/x")                          -- a table of the plugin's own
    assert.truthy(plain:find("\nX-Plain: p", 1, true), plain)
  end)

  it("sends none of a plugin's ctx.response.headers when one is bad, and says why", function()
    for path, why in pairs({
      ["/set-bad-value/x"] = "response header value contains CR, LF or another control character",
      ["/set-bad-type/x"] = "response header values must be strings or numbers",
      ["/set-bad-name/x"] = "invalid response header name",
    }) do
      local res = g:request("GET", path)
      assert.equal(200, res.status, path)
      assert.equal("body", res.body, path)
      assert.is_nil(res.headers["x-ok"], path)
      assert.is_nil(res.headers["injected"], path)
      local lines = g:error_entries(res.trace_id)
      local want = "route /set-bad-" .. path:match("/set%-bad%-(%a+)/") .. "/{x*}: ctx.response.headers: " .. why
                   .. " (none of them sent)"
      assert.truthy(lines[1] and lines[1].msg == want, path .. ": " .. (lines[1] and lines[1].msg or "no error line"))
    end
  end)

  it("re-chunks a close-delimited upstream response so the client keeps its connection", function()
    local s = g:connect()
    s:send("GET /cd/close-delimited HTTP/1.1\r\nHost: a\r\n\r\n")
    local res = assert(helpers.read_response(s))
    assert.equal("chunked", res.headers["transfer-encoding"])
    assert.equal("until the end", res.body)
    assert.is_nil(res.headers["connection"])
    s:send("GET /fast/again HTTP/1.1\r\nHost: a\r\n\r\n") -- the same connection serves the next request
    assert.equal("body", assert(helpers.read_response(s)).body)
    s:close()
  end)

  it("runs the deadline from routing on a handler route: a trickled body counts against it", function()
    local s = g:connect()
    s:send("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nX-Request-ID: trickle-1\r\n\r\n")
    local sent = 0
    gw.process.task(function() -- one byte every 0.4 s: the body would be complete after 4 s
      for _ = 1, 10 do
        if not s:send("x") then return end
        sent = sent + 1
        gw.sleep(0.4)
      end
    end)
    gw.sleep(1.5) -- the sender owns the socket meanwhile; the answer waits in the kernel
    local e = g:entry("trickle-1")
    assert.truthy(e, "no answer after 1.5 s")
    assert.equal(504, e.status)
    assert.equal("deadline", e.error)
    assert.is_true(e.duration_ms >= 990 and e.duration_ms < 1400, "answered after " .. e.duration_ms .. " ms")
    assert.is_true(sent < 10)
    gw.sleep(0.5) -- the sender notices the closed connection
    s:close()
  end)

  it("relays 103 Early Hints and trailers to the clients that can take them", function()
    local s = g:connect()
    s:send("GET /cd/early-hints HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n")
    local lines = {}
    repeat
      local line = s:receive("*l")
      lines[#lines + 1] = line
    until not line or line == "0"
    local trailer = s:receive("*l")
    assert.equal("", s:receive("*l"))
    s:close()
    local text = table.concat(lines, "\n")
    assert.truthy(text:find("^HTTP/1.1 103 Early Hints\nLink: </style.css>; rel=preload\n\nHTTP/1.1 200 OK\n"), text)
    assert.equal("X-Checksum: abc123", trailer) -- Set-Cookie may not be a trailer: dropped
    -- without TE: trailers, the body ends with the last chunk and no fields
    local res = g:request("GET", "/cd/early-hints")
    assert.equal("body", res.body)
  end)

  it("names the phase and the plugin of a failure, in one format", function()
    local cases = {
      { "/fail/x", "header_filter of plugin fail%-in: [^\"]*fail%-in%.lua:%d+: failed on purpose in header_filter" },
      { "/fail-access", "access of plugin fail%-in: [^\"]*fail%-in%.lua:%d+: failed on purpose in access" },
      { "/fail-body", "body_filter of plugin fail%-in: [^\"]*fail%-in%.lua:%d+: failed on purpose in body_filter" },
      { "/fail-log", "log of plugin fail%-in: [^\"]*fail%-in%.lua:%d+: failed on purpose in log" },
      { "/fail-handler", "handler: [^\"]*gateway%.lua:%d+: attempt to index" },
    }
    for _, c in ipairs(cases) do
      local path, pattern = c[1], c[2]
      local res = g:request("GET", path, { headers = { ["X-Request-ID"] = "fail" .. path:gsub("/", "-") } })
      if path ~= "/fail-log" then assert.equal(500, res.status, path) end
      gw.sleep(0.05)
      local route = path == "/fail/x" and "/fail/{phase}" or path
      local line
      for l in g:error_log():gmatch("[^\n]+") do
        if l:find('"trace_id":"fail' .. path:gsub("/", "-") .. '"', 1, true) and l:find('"level":"error"', 1, true) then
          line = l
        end
      end
      assert.truthy(line, path .. ": " .. g:error_log():sub(-2000))
      assert.truthy(line:find('"msg":"route ' .. route:gsub("%p", "%%%0") .. ": " .. pattern), line)
    end
  end)
end)
