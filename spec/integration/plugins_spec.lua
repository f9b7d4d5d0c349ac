-- The plugin runtime in a real gateway: loading from a plugins dir, schema
-- validation with file:line, ordering, every phase yielding, short-circuits,
-- the log phase after the response, errors, and plugins on proxy routes.
local helpers = require "spec.helpers"
local upstream = require "spec.upstream"

local FIXTURES = os.getenv("PWD") .. "/spec/fixtures/plugins"

local function trail_of(res) return res.headers["x-trail"] end

describe("plugins", function()
  local up, g

  setup(function()
    up = upstream.start(function(req, res)
      if req.path == "/whole" then return 200, { ["Content-Length"] = "5" }, "hello" end
      if req.path == "/whole-big" then return 200, {}, ("x"):rep(20000) end
      if req.path == "/stream" then
        res.sock:send("HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n")
        for _ = 1, 30 do res.sock:send(("abcdefghij"):rep(1000)); gw.sleep(0.002) end
        return
      end
      return 200, { ["X-Upstream-Private"] = "hide me", ["X-Up"] = "1" },
        gw.json.encode({ from_plugin = req.headers["x-from-plugin"], secret = req.headers["x-secret"] })
    end)
    g = helpers.start(([[
      plugins_dir "%s"
      plugins { trace = { tag = "global" } }
      upstream "up" { targets = { "127.0.0.1:%d" } }
      route { method = "GET", path = "/plain", handler = function(ctx) return 200, "ok" end }
      route { method = "GET", path = "/route-conf", plugins = { trace = { tag = "route" } },
              handler = function(ctx) return 200, { trail = ctx.vars.trail } end }
      group "/g" {
        plugins = { trace = { tag = "group" } },
        routes = {
          route { method = "GET", path = "/x", handler = function(ctx) return 200, "g" end },
          route { method = "GET", path = "/off", plugins = { trace = false }, handler = function() return 200, "off" end },
        },
      }
      route { method = "GET", path = "/deny", plugins = { trace = { tag = "d", deny = true } },
              handler = function() return 200, "never" end }
      route { method = "GET", path = "/ordered", plugins = { early = true },
              handler = function(ctx) return 200, ctx.vars.trail end }
      route { method = "GET", path = "/boom", plugins = { boom = true }, handler = function() return 200 end }
      route { method = "GET", path = "/proxied", upstream = "up", plugins = { ["upstream-header"] = true } }
      upstream "dead" { targets = { "127.0.0.1:1" }, retries = 0 }
      route { method = "GET", path = "/stream", upstream = "up", plugins = { upper = true } }
      route { method = "GET", path = "/whole", upstream = "up", plugins = { wrap = true } }
      route { method = "GET", path = "/whole-big", upstream = "up", plugins = { wrap = true } }
      route { method = "GET", path = "/small", plugins = { upper = true }, handler = function() return 200, "tiny" end }
      route { method = "GET", path = "/dead", upstream = "dead", plugins = { trace = { tag = "dead" } } }
    ]]):format(FIXTURES, up.port))
  end)
  teardown(function()
    g:stop()
    up:stop()
  end)

  it("runs rewrite, access, handler, header_filter in order; every phase may yield", function()
    local res = g:request("GET", "/plain")
    assert.equal(200, res.status)
    assert.equal("ok", res.body)
    assert.equal("global:rewrite,global:access,global:header_filter,", trail_of(res))
    -- the trace id is found from the running coroutine in every phase
    assert.equal(res.headers["x-request-id"], res.headers["x-trace-id"])
  end)

  it("lets a route override a group, and a group override the global conf", function()
    assert.equal("route:rewrite,route:access,", g:request("GET", "/route-conf").json.trail)
    assert.truthy(trail_of(g:request("GET", "/g/x")):find("group:access", 1, true))
    local off = g:request("GET", "/g/off")
    assert.equal("off", off.body)
    assert.is_nil(trail_of(off))
  end)

  it("ends the request from access; header_filter still runs", function()
    local res = g:request("GET", "/deny")
    assert.equal(403, res.status)
    assert.equal("d", res.json.denied_by)
    assert.equal("d:rewrite,d:access,d:header_filter,", trail_of(res))
  end)

  it("honours before/after over priorities", function()
    local body = g:request("GET", "/ordered").body
    -- early (priority 1) asks to run before trace (priority 100) in their common phase
    assert.equal("global:rewrite,early,global:access,", body)
  end)

  it("runs the log phase after the response, without delaying the client", function()
    local t0 = gw.monotonic_ms()
    local res = g:request("GET", "/plain", { headers = { ["X-Request-ID"] = "log-phase-1" } })
    assert.is_true(gw.monotonic_ms() - t0 < 250, "the client waited for the log phase")
    gw.sleep(0.5)
    local line = g:error_log():match('[^\n]*"trace_id":"log%-phase%-1"[^\n]*trace log phase[^\n]*')
    assert.truthy(line, g:error_log())
    local entry = gw.json.decode(line)
    assert.equal(200, entry.status)
    assert.equal("GET", entry.method)
  end)

  it("gives the log phase the final status and the error kind in ctx", function()
    local res = g:request("GET", "/dead", { headers = { ["X-Request-ID"] = "dead-upstream-1" } })
    assert.equal(502, res.status)
    gw.sleep(0.5)
    local line = g:error_log():match('[^\n]*"trace_id":"dead%-upstream%-1"[^\n]*trace log phase[^\n]*')
    assert.truthy(line, g:error_log())
    local entry = gw.json.decode(line)
    assert.equal(502, entry.status)
    assert.equal("refused", entry.error)
  end)

  it("streams a proxied body through body_filter chunk by chunk (it may yield)", function()
    local res = g:request("GET", "/stream")
    assert.equal(200, res.status)
    if res.wire ~= "h2" then -- HTTP/2 has no Transfer-Encoding: DATA frames carry it
      assert.equal("chunked", res.headers["transfer-encoding"])   -- the length may change: re-framed
    end
    assert.is_nil(res.headers["content-length"])
    local body, tail = res.body:match("^(.-)\n%-%- (%d+) calls$")
    assert.equal(("ABCDEFGHIJ"):rep(30000), body)
    assert.is_true(tonumber(tail) > 2, "the body came in one piece: " .. tail)
    -- a handler's body is one chunk with eof
    assert.equal("TINY\n-- 1 calls", g:request("GET", "/small").body)
  end)

  it("buffers the whole body for a whole_body plugin, bounded", function()
    local res = g:request("GET", "/whole")
    assert.equal(201, res.status)
    assert.equal("[hello]", res.body)
    assert.equal("7", res.headers["content-length"])
    assert.equal("yes", res.headers["x-wrapped"])
    local big = g:request("GET", "/whole-big")
    assert.equal(502, big.status)
    assert.equal("response_too_large", assert(g:entry(big.trace_id)).error)
  end)

  it("turns a plugin error into a 500 with the trace id and keeps serving", function()
    local res = g:request("GET", "/boom")
    assert.equal(500, res.status)
    gw.sleep(0.05)
    assert.truthy(g:error_log():find(res.json.trace_id .. '","msg":"route /boom: access of plugin boom: ', 1, true),
                  g:error_log())
    assert.truthy(g:error_log():find("plugin exploded", 1, true))
    assert.equal(200, g:request("GET", "/plain").status)
  end)

  it("changes the upstream request and filters the upstream response on proxy routes", function()
    local res = g:request("GET", "/proxied", { headers = { ["X-Secret"] = "s3cret" } })
    res.json = gw.json.decode(res.body)
    assert.equal(203, res.status)                 -- header_filter changed the status
    assert.equal("yes", res.json.from_plugin)     -- set_header reached the upstream
    assert.is_nil(res.json.secret)                -- clear_header removed it
    assert.is_nil(res.headers["x-upstream-private"])
    assert.equal("200", res.headers["x-filtered"])
    assert.equal("1", res.headers["x-up"])
    assert.equal("global:rewrite,global:access,global:header_filter,", trail_of(res))
  end)
end)

describe("plugin configuration errors", function()
  local function check(config)
    return helpers.check_config(('listen "127.0.0.1:1"\nplugins_dir "%s"\n'):format(FIXTURES) .. config)
  end

  it("names file, line, route, plugin and field of a bad conf", function()
    local code, err, file = check('route { path = "/a", plugins = { trace = { sleep = "soon" } }, handler = print }\n')
    assert.equal(1, code)
    assert.truthy(err:find(file .. ":3: route /a: plugin trace: field 'sleep': expected a number", 1, true), err)
  end)

  it("refuses an unknown plugin", function()
    local code, err = check('route { path = "/a", plugins = { nope = true }, handler = print }\n')
    assert.equal(1, code)
    assert.truthy(err:find("no plugin named 'nope'", 1, true), err)
  end)

  it("refuses an ordering cycle, naming the plugins", function()
    local code, err = check('route { path = "/a", plugins = { ["cycle-a"] = true, ["cycle-b"] = true }, handler = print }\n')
    assert.equal(1, code)
    assert.truthy(err:find("cycle among: cycle-a, cycle-b", 1, true), err)
  end)
end)
