-- The test kit that ships inside gatewayd (moongate.test), used the way a
-- plugin author uses it: `gatewayd --new-plugin` in a directory outside this
-- repository, then `gatewayd --spec` there with nothing else (no GATEWAYD,
-- no spec/helpers.lua, a relative plugins_dir).
local helpers = require "spec.helpers"

-- Runs `gatewayd ARGS...` in dir without GATEWAYD; returns exit code and output.
local function gatewayd(dir, ...)
  local out = helpers.tmpdir() .. "/out"
  local argv = { "/usr/bin/env", "-u", "GATEWAYD", "-u", "MOONGATE_SPEC_KEEP", helpers.gatewayd, ... }
  local pid = assert(gw.process.spawn(argv, { stdout = out, stderr = out, cwd = dir }))
  local how, code = helpers.wait_exit(pid, 120)
  if not how then
    gw.process.kill(pid, gw.process.SIGKILL)
    helpers.wait_exit(pid, 5)
  end
  return code, helpers.read_file(out)
end

local function exists(path) return os.execute("test -e '" .. path .. "'") == 0 end

describe("gatewayd --new-plugin", function()
  it("writes a plugin skeleton whose spec passes with `gatewayd --spec` from its own directory", function()
    local dir = helpers.tmpdir()
    local code, out = gatewayd("/", "--new-plugin", "hello", dir .. "/repo")
    assert.equal(0, code, out)
    for _, f in ipairs({ "plugins/hello/handler.lua", "plugins/hello/schema.lua", "spec/hello_spec.lua" }) do
      assert.truthy(exists(dir .. "/repo/" .. f), f)
      assert.truthy(out:find("wrote " .. dir .. "/repo/" .. f, 1, true), out)
    end
    -- the skeleton follows docs/plugins.md: gatewayd -t takes it
    local check = helpers.check_config('listen "127.0.0.1:1"\nplugins_dir "repo/plugins"\n' ..
      'route { path = "/", plugins = { hello = { value = "x" } }, handler = print }\n', { dir = dir })
    assert.equal(0, check)
    code, out = gatewayd(dir .. "/repo", "--spec")
    assert.equal(0, code, out)
    assert.truthy(out:find("3 successes / 0 failures / 0 errors", 1, true), out)
    -- nothing is overwritten; a bad name is a usage error
    local before = helpers.read_file(dir .. "/repo/plugins/hello/handler.lua")
    code, out = gatewayd("/", "--new-plugin", "hello", dir .. "/repo")
    assert.equal(1, code)
    assert.truthy(out:find("handler.lua exists; nothing was written", 1, true), out)
    assert.equal(before, helpers.read_file(dir .. "/repo/plugins/hello/handler.lua"))
    code, out = gatewayd("/", "--new-plugin", "Hello World", dir)
    assert.equal(2, code)
    assert.truthy(out:find("is not a plugin name", 1, true), out)
  end)

  it("prints the error-log lines of the failed request with a failing spec", function()
    local dir = helpers.tmpdir()
    assert.equal(0, (gatewayd("/", "--new-plugin", "broken", dir)))
    local handler = dir .. "/plugins/broken/handler.lua"
    local src = helpers.read_file(handler)
    helpers.write_file(handler, (src:gsub("ctx.response.headers%[conf.header%] = conf.value",
                                          'error("the plugin broke on purpose")')))
    local code, out = gatewayd(dir, "--spec")
    assert.equal(1, code, out)
    -- today's "expected 200, got 500" comes with the line that says why, found by the request's trace id
    assert.truthy(out:find("Expected:\n(number) 200", 1, true), out)
    assert.truthy(out:find("last request GET /hi[^\n:]*: its error%-log lines %(trace id %x+%):"), out)
    assert.truthy(out:find("error: route /hi: access of plugin broken: [^\n]*plugins/broken/handler%.lua:%d+: " ..
                           "the plugin broke on purpose"), out)
    assert.truthy(out:find("stack traceback:", 1, true), out)
  end)
end)

describe("moongate.test", function()
  it("removes temporary directories and kills gateways when the block that made them ends", function()
    local dir = helpers.tmpdir()
    local record = dir .. "/record"
    os.execute("mkdir -p '" .. dir .. "/spec'")
    helpers.write_file(dir .. "/spec/scopes_spec.lua", ([[
      local helpers = require "moongate.test"
      local upstream = require "moongate.test.upstream"
      local record = assert(io.open(%q, "w"))
      local seen = {}
      local function alive(pid) return gw.process.kill(pid, 0) end
      local function exists(p) return os.execute("test -e '" .. p .. "'") == 0 end
      describe("scopes", function()
        local g
        setup(function()
          g = helpers.start('route { path = "/", handler = function() return 200, "ok" end }')
          record:write("describe ", g.dir, " ", g.pid, "\n")
          record:flush()
        end)
        it("a test's own", function()
          seen.dir = helpers.tmpdir()
          seen.g = helpers.start('route { path = "/", handler = function() return 200, "ok" end }')
          seen.up = upstream.start(function() return 200, {}, "up" end)
          assert.equal(200, seen.g:request("GET", "/").status)
        end)
        it("are gone after it, the describe's are not", function()
          assert.falsy(exists(seen.dir))
          assert.falsy(exists(seen.g.dir))
          assert.falsy(alive(seen.g.pid))
          assert.falsy(seen.up.running)
          assert.truthy(exists(g.dir))
          assert.equal(200, g:request("GET", "/").status)
        end)
      end)
    ]]):format(record))
    local code, out = gatewayd(dir, "--spec")
    assert.equal(0, code, out)
    assert.truthy(out:find("2 successes / 0 failures / 0 errors", 1, true), out)
    local gdir, pid = helpers.read_file(record):match("^describe (%S+) (%d+)")
    assert.truthy(gdir, helpers.read_file(record))
    assert.falsy(exists(gdir)) -- removed when its describe ended
    assert.falsy(gw.process.kill(tonumber(pid), 0))
  end)

  it("takes a relative plugins_dir in a spec's config from the directory the specs run in", function()
    local dir = helpers.tmpdir()
    os.execute("mkdir -p '" .. dir .. "/plugins' '" .. dir .. "/spec'")
    helpers.write_file(dir .. "/plugins/tag.lua", [[
      return { name = "tag", version = "1.0.0", priority = 1,
               access = function(ctx) ctx.response.headers["X-Tag"] = "found" end }
    ]])
    helpers.write_file(dir .. "/spec/tag_spec.lua", [[
      local helpers = require "moongate.test"
      it("finds ./plugins", function()
        local g = helpers.start('plugins_dir "plugins"\n' ..
          'route { path = "/", plugins = { tag = true }, handler = function() return 200, "ok" end }')
        assert.equal("found", g:request("GET", "/").headers["x-tag"])
        assert.equal(0, (helpers.check_config('listen "127.0.0.1:1"\nplugins_dir "./plugins"\n' ..
          'route { path = "/", plugins = { tag = true }, handler = print }')))
        assert.truthy(helpers.configure("tag", {}))
        g:stop()
      end)
    ]])
    local code, out = gatewayd(dir, "--spec")
    assert.equal(0, code, out)
    assert.truthy(out:find("1 success / 0 failures / 0 errors", 1, true), out)
  end)
  it("ships a redis-server helper for plugins that use gw.redis, stopped when its block ends", function()
    local dir = helpers.tmpdir()
    os.execute("mkdir -p '" .. dir .. "/plugins' '" .. dir .. "/spec'")
    helpers.write_file(dir .. "/plugins/hits.lua", [[
      return { name = "hits", version = "1.0.0", priority = 1, access = function(ctx)
        local n, err = gw.redis("main"):incr("hits")
        ctx.response.headers["X-Hits"] = n and tostring(n) or err
      end }
    ]])
    local record = dir .. "/pid"
    helpers.write_file(dir .. "/spec/hits_spec.lua", ([[
      local helpers = require "moongate.test"
      local redis = require "moongate.test.redis"
      describe("hits", function()
        it("counts in Redis", function()
          assert.is_true(redis.available())
          local r = redis.start()
          local f = io.open(%q, "w"); f:write(r.pid); f:close()
          local g = helpers.start(('plugins_dir "plugins"\nredis "main" { address = "%%s", timeouts = { command = "100ms" } }\n'
            .. 'route { path = "/", plugins = { hits = true }, handler = function() return 200, "ok" end }'):format(r.address))
          assert.equal("1", g:request("GET", "/").headers["x-hits"])
          assert.equal("1", r:client():get("hits"))
          r:pause()
          assert.equal("redis_timeout", g:request("GET", "/").headers["x-hits"])
          r:resume()
          r:stop()
          r:start()
          assert.equal("PONG", r:client():ping())
        end)
      end)
    ]]):format(record))
    local code, out = gatewayd(dir, "--spec")
    assert.equal(0, code, out)
    assert.truthy(out:find("1 success / 0 failures / 0 errors", 1, true), out)
    assert.falsy(gw.process.kill(tonumber(helpers.read_file(record)), 0)) -- stopped when its test ended
  end)

  it("gw.process: spawns a program found in PATH, and takes signals as numbers or as their names", function()
    local pid = assert(gw.process.spawn({ "sleep", "30" })) -- no '/': looked up in PATH
    local function state() return helpers.read_file("/proc/" .. pid .. "/stat"):match("^%d+ %b() (%a)") end
    assert.is_true(gw.process.kill(pid, "SIGSTOP"))
    for _ = 1, 50 do if state() == "T" then break end gw.sleep(0.01) end
    assert.equal("T", state())
    assert.is_true(gw.process.kill(pid, gw.process.SIGCONT))
    for _ = 1, 50 do if state() ~= "T" then break end gw.sleep(0.01) end
    assert.are_not.equal("T", state())
    assert.has_error(function() gw.process.kill(pid, "SIGNOPE") end)
    assert.is_true(gw.process.kill(pid, "SIGTERM"))
    assert.same({ "signal", gw.process.SIGTERM }, { helpers.wait_exit(pid, 5) })
    local none, why = gw.process.spawn({ "no-such-program-anywhere" })
    assert.is_nil(none)
    assert.matches("spawn no%-such%-program%-anywhere: No such file", why)
  end)
end)
