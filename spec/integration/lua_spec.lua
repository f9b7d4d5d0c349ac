-- Lua handlers in their coroutines: yielding, errors, trace ids, deadlines.
local helpers = require "spec.helpers"

local CONFIG = [[
timeouts { request = "2s" }
route { method = "GET", path = "/sleep/{ms}", handler = function(ctx)
  gw.sleep(tonumber(ctx.params.ms) / 1000)
  ctx.log("info", "slept", { ms = tonumber(ctx.params.ms) })
  return 200, { slept = tonumber(ctx.params.ms), trace_id = ctx.trace_id, logged_as = gw.trace_id() }
end }
route { method = "GET", path = "/fast", handler = function() return 200, "fast" end }
route { method = "GET", path = "/boom", handler = function(ctx)
  local t = nil
  return 200, t.field  -- a runtime error in the handler
end }
route { method = "GET", path = "/boom-after-sleep", handler = function(ctx)
  gw.sleep(0.01)
  error("exploded after a yield")
end }
route { method = "GET", path = "/response", handler = function(ctx)
  ctx.response.status = 201
  ctx.response.headers["X-Made-By"] = "ctx.response"
  ctx.response.body = { ok = true }
end }
route { method = "GET", path = "/headers", handler = function(ctx)
  return 200, "h", { ["X-One"] = "1", ["X-Many"] = { "a", "b" }, ["Content-Length"] = "999" }
end }
route { method = "GET", path = "/inject", handler = function(ctx)
  return 200, "x", { ["X-Bad"] = "a\r\nSet-Cookie: evil=1" }
end }
route { method = "GET", path = "/nothing", handler = function(ctx) end }
route { method = "GET", path = "/yield", handler = function(ctx) coroutine.yield() end }
route { method = "GET", path = "/deadline", timeout = "150ms", handler = function(ctx)
  gw.sleep(5)
  return 200, "too late"
end }
route { method = "GET", path = "/lua-mem", handler = function(ctx)
  collectgarbage("collect")
  collectgarbage("collect")
  return 200, { kb = collectgarbage("count") }
end }
route { method = "GET", path = "/dead-ctx", handler = function(ctx)
  saved_ctx = ctx
  return 200, "saved"
end }
local function route_info(ctx)
  local r = ctx.route
  return 200, { name = r.name, path = r.path, host = r.host or "none", methods = r.methods, declared_at = r.declared_at }
end
route { methods = { "get", "POST" }, path = "/route-info/{id}", handler = route_info }
group "/grouped" { host = "api.test", routes = {
  route { path = "/info", name = "grouped-info", handler = route_info },
} }
route { method = "GET", path = "/use-dead-ctx", handler = function(ctx)
  local ok, err = pcall(function() return saved_ctx.request.method end)
  local id_ok, id_err = pcall(function() return saved_ctx.trace_id end)
  return 200, { ok = ok, err = tostring(err), id_ok = id_ok, id_err = tostring(id_err) }
end }
]]

describe("Lua handlers", function()
  local g

  setup(function() g = helpers.start(CONFIG, { workers = 1 }) end)
  teardown(function() g:stop() end)

  it("yield on gw.sleep: a sleeping handler does not delay others on the same worker", function()
    local t0 = gw.monotonic_ms()
    local results = helpers.parallel({
      function() return g:request("GET", "/sleep/1000") end,
      function() return g:request("GET", "/sleep/1000") end,
      function()
        gw.sleep(0.05)
        local t = gw.monotonic_ms()
        local res = g:request("GET", "/fast")
        return { res = res, took = gw.monotonic_ms() - t }
      end,
    })
    local total = gw.monotonic_ms() - t0
    assert.equal(200, results[1].status)
    assert.equal(200, results[2].status)
    assert.equal("fast", results[3].res.body)
    assert.is_true(results[3].took < 300, "fast request took " .. results[3].took .. " ms")
    -- both sleeps overlapped: about 1 s in total, not 2
    assert.is_true(total < 1800, "two 1 s sleeps took " .. total .. " ms")
  end)

  it("keeps the trace id across yields, in ctx, the response and the logs", function()
    local res = g:request("GET", "/sleep/20", { headers = {
      traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" } })
    assert.equal("4bf92f3577b34da6a3ce929d0e0e4736", res.json.trace_id)
    assert.equal("4bf92f3577b34da6a3ce929d0e0e4736", res.json.logged_as)
    assert.equal("4bf92f3577b34da6a3ce929d0e0e4736", res.headers["x-request-id"])
    gw.sleep(0.05)
    local line = g:error_log():match('[^\n]*"msg":"slept"[^\n]*4bf92f35[^\n]*')
           or g:error_log():match('[^\n]*4bf92f35[^\n]*"msg":"slept"[^\n]*')
    assert.truthy(line, g:error_log())
    local entry = gw.json.decode(line)
    assert.equal("4bf92f3577b34da6a3ce929d0e0e4736", entry.trace_id)
    assert.equal(20, entry.ms)
  end)

  it("takes the trace id from X-Request-ID and ignores unsafe ones", function()
    assert.equal("abc-123", g:request("GET", "/fast", { headers = { ["X-Request-ID"] = "abc-123" } })
      .headers["x-request-id"])
    local res = g:request("GET", "/fast", { headers = { ["X-Request-ID"] = 'bad"id' } })
    assert.truthy(res.headers["x-request-id"]:match("^%x+$"))
  end)

  it("turns a handler error into a 500 with the trace id, logs the traceback, keeps serving", function()
    for _, path in ipairs({ "/boom", "/boom-after-sleep" }) do
      local res = g:request("GET", path)
      assert.equal(500, res.status)
      assert.equal("internal server error", res.json.error)
      assert.equal(res.headers["x-request-id"], res.json.trace_id)
      gw.sleep(0.05)
      local log = g:error_log()
      local line = log:match('[^\n]*' .. res.json.trace_id .. '[^\n]*')
      assert.truthy(line, "no error log line with the trace id")
      assert.truthy(line:find("stack traceback", 1, true))
      assert.truthy(line:find("gateway.lua:", 1, true))
    end
    assert.equal(200, g:request("GET", "/fast").status)
  end)

  it("tells a handler its route in ctx.route: name, full path, host, methods, file:line", function()
    local f = assert(io.open(g.file))
    local written = f:read("*a") -- the config as written, with the lines the test kit adds
    f:close()
    local function line_of(text)
      local n = 1
      for l in written:gmatch("([^\n]*)\n") do
        if l:find(text, 1, true) then return g.file .. ":" .. n end
        n = n + 1
      end
    end
    local res = g:request("POST", "/route-info/7")
    assert.equal(200, res.status)
    assert.same({ name = "/route-info/{id}", path = "/route-info/{id}", host = "none", methods = { "GET", "POST" },
                  declared_at = line_of('path = "/route-info/{id}"') }, res.json)
    res = g:request("GET", "/grouped/info", { host = "api.test" })
    assert.equal(200, res.status)
    assert.same({ name = "grouped-info", path = "/grouped/info", host = "api.test", methods = "*",
                  declared_at = line_of('name = "grouped-info"') }, res.json)
  end)

  it("accepts ctx.response instead of return values", function()
    local res = g:request("GET", "/response")
    assert.equal(201, res.status)
    assert.equal("ctx.response", res.headers["x-made-by"])
    assert.same({ ok = true }, res.json)
  end)

  it("sends handler headers, repeats arrays, and keeps framing headers its own", function()
    local res = g:request("GET", "/headers")
    assert.equal("1", res.headers["x-one"])
    assert.equal("1", res.headers["content-length"])
    local many = 0
    for _, h in ipairs(res.raw_headers) do if h:lower():match("^x%-many:") then many = many + 1 end end
    assert.equal(2, many)
  end)

  it("refuses header injection and missing responses with a 500", function()
    assert.equal(500, g:request("GET", "/inject").status)
    assert.equal(500, g:request("GET", "/nothing").status)
    assert.equal(500, g:request("GET", "/yield").status)
    gw.sleep(0.05)
    assert.truthy(g:error_log():find("control character", 1, true))
  end)

  it("ends a request at its deadline with 504 and the error kind in the access log", function()
    local t0 = gw.monotonic_ms()
    local res = g:request("GET", "/deadline")
    local took = gw.monotonic_ms() - t0
    assert.equal(504, res.status)
    assert.is_true(took >= 140 and took < 1000, "took " .. took)
    gw.sleep(0.05)
    local found = g:entry(res.json.trace_id)
    assert.equal("deadline", found.error)
    assert.equal(200, g:request("GET", "/fast").status)
  end)

  it("does not grow the Lua heap request after request (coroutines are reused)", function()
    local s = g:connect()
    local function batch(n)
      local reqs = {}
      for i = 1, n do reqs[i] = "GET /fast HTTP/1.1\r\nHost: a\r\n\r\n" end
      assert(s:send(table.concat(reqs)))
      for _ = 1, n do assert.equal(200, assert(helpers.read_response(s)).status) end
    end
    local function lua_kb()
      assert(s:send("GET /lua-mem HTTP/1.1\r\nHost: a\r\n\r\n"))
      return assert(helpers.read_response(s)).json.kb
    end
    batch(200)
    local before = lua_kb()
    for _ = 1, 10 do batch(200) end
    local after = lua_kb()
    -- 2000 requests: a leaked coroutine or ctx per request would add well over 500 KiB
    assert.is_true(after - before < 100, ("Lua heap grew from %.0f to %.0f KiB"):format(before, after))
    s:close()
  end)

  it("makes a ctx kept beyond its request unusable", function()
    g:request("GET", "/dead-ctx")
    local res = g:request("GET", "/use-dead-ctx")
    assert.is_false(res.json.ok)
    assert.truthy(res.json.err:find("request has ended", 1, true))
    assert.is_false(res.json.id_ok) -- ctx.trace_id is the request's too (docs/config.md: a kept ctx raises)
    assert.truthy(res.json.id_err:find("request has ended", 1, true))
  end)

  it("cancels the handler when the client goes away mid-request", function()
    local s = g:connect()
    s:send("GET /sleep/300 HTTP/1.1\r\nHost: a\r\nX-Request-ID: gone-client\r\n\r\n")
    gw.sleep(0.05)
    s:close()
    gw.sleep(0.4)
    local found = g:entry("gone-client")
    assert.is_table(found)
    assert.equal(499, found.status)
    assert.equal("client_abort", found.error)
    -- the handler never resumed: nothing logged "slept" for it
    assert.is_nil(g:error_log():find('"trace_id":"gone-client","msg":"slept"', 1, true))
    assert.equal(200, g:request("GET", "/fast").status)
  end)
end)

describe("the clock a handler sees", function()
  local g
  setup(function()
    g = helpers.start([[
      route { method = "GET", path = "/spin", handler = function()
        -- computes for 60 ms by the gateway's clock; os.clock (CPU time) ends it if that clock stood still
        local t0, c0 = gw.monotonic_ms(), os.clock()
        while gw.monotonic_ms() - t0 < 60 and os.clock() - c0 < 1 do end
        return 200, { elapsed = gw.monotonic_ms() - t0 }
      end }
    ]], { workers = 1 })
  end)
  teardown(function() g:stop() end)

  -- the gateway holds one clock reading per stretch of C work; Lua must never run inside one
  it("moves while the handler computes, and the request's duration counts that time", function()
    local res = g:request("GET", "/spin")
    assert.equal(200, res.status)
    assert.is_true(res.json.elapsed >= 60, "gw.monotonic_ms moved " .. res.json.elapsed .. " ms in a 60 ms loop")
    local entry = g:entry(res.headers["x-request-id"])
    assert.is_true(entry.duration_ms >= 60, "logged duration " .. entry.duration_ms .. " ms")
  end)
end)
