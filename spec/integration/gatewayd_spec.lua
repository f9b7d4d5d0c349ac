-- The gatewayd process: config checking, workers, graceful shutdown.
local helpers = require "spec.helpers"

local function run(args, config, files)
  local dir = helpers.tmpdir()
  for name, body in pairs(files or {}) do helpers.write_file(dir .. "/" .. name, body) end
  local file = dir .. "/gateway.lua"
  helpers.write_file(file, config)
  local argv = { helpers.gatewayd }
  for _, a in ipairs(args) do argv[#argv + 1] = (a:gsub("{{FILE}}", file)) end
  local pid = assert(gw.process.spawn(argv, { stdout = dir .. "/out", stderr = dir .. "/err" }))
  local how, code = helpers.wait_exit(pid, 10)
  return code, helpers.read_file(dir .. "/out") .. helpers.read_file(dir .. "/err"), file
end

describe("gatewayd --routes", function()
  it("prints a file's compiled routes with their plugins in order and where each was declared", function()
    local code, out, file = run({ "--routes", "-c", "{{FILE}}" }, 'listen "127.0.0.1:1"\n' ..
      'route { path = "/a", handler = print }\n' ..
      'route { method = { "GET", "POST" }, path = "/b/{id}", plugins = { ["request-id"] = {} }, handler = print }\n')
    assert.equal(0, code, out)
    assert.truthy(out:find("^id +methods +host +path"), out)
    assert.truthy(out:find("/a +handler +%- +%(" .. file:gsub("%p", "%%%0") .. ":2%)"), out)
    assert.truthy(out:find("GET,POST +%* +/b/{id} +handler +request%-id"), out)
  end)

  it("refuses a broken file with file:line", function()
    local code, out, file = run({ "--routes", "-c", "{{FILE}}" }, 'route { path = "/a", handler = print }\nroute {\n')
    assert.equal(1, code)
    assert.truthy(out:find(file .. ":", 1, true), out)
  end)
end)

describe("gatewayd -t", function()
  it("accepts a valid config", function()
    local code, out = run({ "-t", "-c", "{{FILE}}" },
      'listen "127.0.0.1:1"\nroute { path = "/", handler = function() return 200 end }\n')
    assert.equal(0, code)
    assert.truthy(out:find("is valid (1 routes)", 1, true))
  end)

  local broken = {
    { "a Lua syntax error", 'listen "127.0.0.1:1"\n\nroute { path = "/" \n', ":4:" },
    { "an unknown route field", 'listen "127.0.0.1:1"\nroute { path = "/", handle = 1 }\n', ":2: unknown field 'handle'" },
    { "a bad regex", 'listen "127.0.0.1:1"\nroute { path = "/u/{id:[0-9}", handler = print }\n', ":2: route /u/{id:[0-9}: bad regex" },
    { "a duplicate route", 'listen "127.0.0.1:1"\nroute { path = "/a/{x}", handler = print }\n' ..
        'route { method = "GET", path = "/a/{y}", handler = print }\n', ":3: route /a/{y}: route conflicts with the route declared at " },
    { "a missing listen", 'route { path = "/", handler = print }\n', "no listen address" },
    { "a runtime error", 'listen "127.0.0.1:1"\nlocal x = nil\nx.y = 1\n', ":3: attempt to index" },
  }
  for _, case in ipairs(broken) do
    it("refuses " .. case[1] .. " with file:line", function()
      local code, out, file = run({ "-t", "-c", "{{FILE}}" }, case[2])
      assert.equal(1, code)
      assert.truthy(out:find(case[3], 1, true), out)
      if case[3]:sub(1, 1) == ":" then assert.truthy(out:find(file, 1, true), out) end
    end)
  end

  it("refuses the same listen address twice, naming both lines, however it is spelled", function()
    local cases = {
      { 'listen { "127.0.0.1:29851", http2 = true }\nlisten "127.0.0.1:29851"\n', 2, 1 },
      { 'listen { "127.0.0.1:29852", "127.0.0.1:29852" }\n', 1, 1 },
      { 'listen "127.0.0.1:29853"\n\nlisten "localhost:29853"\n', 3, 1 },
      { 'listen "*:29854"\nlisten "0.0.0.0:29854"\n', 2, 1 },
      { 'listen "[::]:29855"\nlisten "[0:0::0]:29855"\n', 2, 1 },
      { 'listen "[::1]:29856"\nlisten { "[0::1]:29856", http2 = true }\n', 2, 1 },
    }
    for _, c in ipairs(cases) do
      local code, out, file = run({ "-t", "-c", "{{FILE}}" }, c[1] .. 'route { path = "/", handler = print }\n')
      assert.equal(1, code, c[1] .. out)
      assert.truthy(out:find(file .. ":" .. c[2] .. ": listen ", 1, true), out)
      assert.truthy(out:find("this address is already a listener", 1, true), out)
      assert.truthy(out:find(" at " .. file .. ":" .. c[3] .. ")", 1, true), out)
    end
    -- different addresses on one port are different listeners: the wildcard and a specific address, v4 and v6
    local code, out = run({ "-t", "-c", "{{FILE}}" },
      'listen "0.0.0.0:29857"\nlisten { "127.0.0.1:29857", http2 = true }\nlisten "[::]:29857"\nlisten "[::1]:29857"\n' ..
      'route { path = "/", handler = print }\n')
    assert.equal(0, code, out)
  end)

  it("refuses more listen addresses than it can serve", function()
    local lines = {}
    for i = 1, 17 do lines[i] = ('listen "127.0.0.1:%d"'):format(29860 + i) end
    local code, out, file = run({ "-t", "-c", "{{FILE}}" }, table.concat(lines, "\n") .. "\n")
    assert.equal(1, code, out)
    assert.truthy(out:find(file .. ":17: at most 16 listen addresses", 1, true), out)
  end)

  it("--listen replaces the config's listeners with one cleartext listener that takes HTTP/1.1 and h2c", function()
    local cport = helpers.free_port()
    local g = helpers.start(([[
      listen "127.0.0.1:%d"
      route { path = "/v", handler = function(ctx) return 200, ctx.request.http_version end }
    ]]):format(cport), { args = { "--listen", "127.0.0.1:{{PORT}}" } })
    local dir = helpers.tmpdir()
    local function curl(args)
      local pid = assert(gw.process.spawn({ "/bin/sh", "-c", "curl -sS --max-time 5 " .. args .. " > out 2>&1" },
                                          { cwd = dir }))
      helpers.wait_exit(pid, 10)
      return helpers.read_file(dir .. "/out")
    end
    assert.equal("2", curl(("--http2-prior-knowledge http://127.0.0.1:%d/v"):format(g.port)))
    assert.equal("1.1", curl(("http://127.0.0.1:%d/v"):format(g.port)))
    assert.truthy(curl(("http://127.0.0.1:%d/v"):format(cport)):find("curl: (7)", 1, true)) -- not listened on
    g:stop()
  end)

  it("refuses to start on a busy address", function()
    local g = helpers.start('route { path = "/", handler = function() return 200 end }')
    local code, out = run({ "-c", "{{FILE}}" },
      ('listen "127.0.0.1:%d"\nroute { path = "/", handler = print }\n'):format(g.port))
    assert.equal(1, code)
    assert.truthy(out:find("Address already in use", 1, true), out)
    g:stop()
  end)
end)

describe("gatewayd workers and shutdown", function()
  it("serves from several workers, each with its own Lua VM", function()
    local g = helpers.start([[
      workers(2)
      local served = 0  -- one copy per worker VM
      route { path = "/", handler = function() served = served + 1; gw.sleep(0.05); return 200, tostring(served) end }
    ]], { workers = 2 })
    local results = helpers.parallel((function()
      local fns = {}
      for i = 1, 8 do fns[i] = function() return g:request("GET", "/").status end end
      return fns
    end)())
    for i = 1, 8 do assert.equal(200, results[i]) end
    assert.truthy(g:error_log():find("2 workers", 1, true))
    g:stop()
  end)

  it("drains in-flight requests on SIGTERM and exits 0", function()
    local g = helpers.start([[
      route { path = "/slow", handler = function() gw.sleep(0.4); return 200, "finished" end }
    ]])
    local s = g:connect()
    s:send("GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    gw.sleep(0.1)
    gw.process.kill(g.pid, gw.process.SIGTERM)
    local res = assert(helpers.read_response(s))
    assert.equal(200, res.status)
    assert.equal("finished", res.body)
    assert.equal("close", res.headers["connection"])
    local how, code = helpers.wait_exit(g.pid, 5)
    assert.same({ "exit", 0 }, { how, code })
    -- no longer accepting
    local c = gw.tcp()
    c:settimeout(500)
    assert.is_nil(c:connect("127.0.0.1", g.port))
    g.stopped = true
  end)

  it("stops waiting for requests after the drain timeout", function()
    local g = helpers.start([[
      timeouts { drain = "300ms" }
      route { path = "/forever", handler = function() gw.sleep(30); return 200 end }
    ]])
    local s = g:connect()
    s:send("GET /forever HTTP/1.1\r\nHost: a\r\n\r\n")
    gw.sleep(0.05)
    local t0 = gw.monotonic_ms()
    gw.process.kill(g.pid, gw.process.SIGTERM)
    local how, code = helpers.wait_exit(g.pid, 5)
    assert.same({ "exit", 0 }, { how, code })
    assert.is_true(gw.monotonic_ms() - t0 < 2000)
    assert.truthy(g:error_log():find("drain timeout", 1, true))
    g.stopped = true
  end)
end)
