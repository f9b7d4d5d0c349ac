-- gw.redis: the config's named Redis pools from Lua, against a real
-- redis-server: commands, replies, pipelines, scripts, every phase, slow and
-- dead Redis, a wrong password, and a Redis restart.
local helpers = require "spec.helpers"
local redis = require "spec.redis"

local FIXTURES = os.getenv("PWD") .. "/spec/fixtures/plugins"

describe("gw.redis", function()
  local r, rp, g, closed_port, admin_port

  -- the error log is written by a thread of its own: wait for the line
  local function logged(pattern)
    local log
    for _ = 1, 100 do
      log = g:error_log()
      if log:find(pattern) then return log end
      gw.sleep(0.02)
    end
    return log
  end

  setup(function()
    r = redis.start()
    rp = redis.start({ password = "right-password" })
    closed_port = helpers.free_port()
    admin_port = helpers.free_port()
    g = helpers.start(([[
      admin_listen "127.0.0.1:%d"
      plugins_dir "%s"
      error_header "X-Gateway-Error"
      redis "main" { address = "%s", timeouts = { connect = "500ms", command = "150ms" } }
      redis "patient" { address = "%s", timeouts = { command = "10s" } }
      redis "locked" { address = "%s", password = "wrong-password" }
      redis "unlocked" { address = "%s", password = "right-password", db = 3 }
      redis "nobody" { address = "127.0.0.1:%d" }
      local INCRBY = gw.redis.script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
      local function json(v) return 200, v end
      route { path = "/cmd", handler = function(ctx)
        local red = gw.redis(ctx.request.args.r or "main")
        local ok, err, msg = red:set("spec:k", "v1", "PX", 60000)
        if not ok then return json({ err = err, msg = msg }) end
        return json({ set = ok, get = red:get("spec:k"), missing = red:get("spec:nokey") == gw.null,
                      n = red:call("INCRBY", "spec:n", 1e15) })
      end }
      route { path = "/error-reply", handler = function()
        local red = gw.redis("main")
        red:set("spec:str", "abc")
        local v, err, msg = red:incr("spec:str")
        return json({ v = v, err = err, msg = msg })
      end }
      route { path = "/pipeline", handler = function()
        local red = gw.redis("main")
        local res, err = red:pipeline({ { "DEL", "spec:p" }, { "INCR", "spec:p" }, { "INCR", "spec:p" },
                                        { "GET", "spec:nokey" }, { "HSET", "spec:str", "f", "v" },
                                        { "MULTI" }, { "INCR", "spec:p" }, { "EXEC" }, { INCRBY, 1, "spec:p", 10 } })
        return json({ res = res, err = err })
      end }
      route { path = "/script", handler = function()
        local v, err, msg = gw.redis("main"):eval(INCRBY, 1, "spec:s", 5)
        return json({ v = v, err = err, msg = msg, sha = INCRBY.sha })
      end }
      route { path = "/refused", handler = function()
        local ok, e = pcall(function() return gw.redis("main"):blpop("spec:q", 0) end)
        local ok3, e3 = pcall(function() return gw.redis("main"):call("SUBSCRIBE", "news") end)
        if ok3 or not e3:find("SUBSCRIBE is refused: pub/sub needs a connection of its own", 1, true) then
          return 500, "SUBSCRIBE: " .. tostring(e3)
        end
        local ok2, e2 = pcall(function() return gw.redis("main"):pipeline({ { "MULTI" }, { "INCR", "x" } }) end)
        return json({ ok = ok, e = e, ok2 = ok2, e2 = e2 })
      end }
      route { path = "/phases", plugins = { ["redis-probe"] = {} }, handler = function() return 200, "ok" end }
      route { path = "/held", plugins = { ["limit-conn"] = { max = 3, scope = "cluster", redis = "main", lease = 30 } },
              handler = function() gw.sleep(0.5); return 200, gw.redis("main"):get("spec:k") end }
      route { path = "/slow-deadline", timeout = "300ms", handler = function()
        return 200, { v = gw.redis("patient"):get("spec:k") }
      end }
    ]]):format(admin_port, FIXTURES, r.address, r.address, rp.address, rp.address, closed_port))
  end)
  teardown(function()
    if r then r:stop() end -- first: a gateway that fails to stop must not leave a redis-server behind
    if rp then rp:stop() end
    if g then g:stop() end
  end)

  it("sends commands and converts replies (strings, status, integers, nil as gw.null)", function()
    local res = g:request("GET", "/cmd")
    assert.equal(200, res.status)
    assert.equal("OK", res.json.set)
    assert.equal("v1", res.json.get)
    assert.is_true(res.json.missing)
    assert.equal(1e15, res.json.n) -- sent as "1000000000000000", not "1e+15"
    assert.equal(r:client():get("spec:k"), "v1")
  end)

  it("returns an error reply as nil, redis_error and Redis's message", function()
    local res = g:request("GET", "/error-reply")
    assert.is_nil(res.json.v)
    assert.equal("redis_error", res.json.err)
    assert.matches("not an integer", res.json.msg)
  end)

  it("pipelines commands in one call, error replies in their slots, MULTI ... EXEC included", function()
    local res = g:request("GET", "/pipeline").json.res
    assert.equal(1, res[2])
    assert.equal(2, res[3])
    assert.equal(gw.json.null, res[4])
    assert.equal(false, res[5][1])
    assert.matches("WRONGTYPE", res[5][2])
    assert.equal("OK", res[6])
    assert.equal("QUEUED", res[7])
    assert.same({ 3 }, res[8])
    assert.equal(13, res[9])
  end)

  it("runs scripts with EVALSHA, and with EVAL when Redis does not have them (SCRIPT FLUSH)", function()
    local first = g:request("GET", "/script").json
    assert.equal(40, #first.sha)
    assert.equal("1", r:client():call("SCRIPT", "EXISTS", first.sha)[1] == 1 and "1" or "0")
    assert.equal("OK", r:client():call("SCRIPT", "FLUSH"))
    local second = g:request("GET", "/script").json
    assert.equal(first.v + 5, second.v)
    assert.is_nil(second.err)
  end)

  it("refuses commands a shared connection cannot carry, with the reason", function()
    local res = g:request("GET", "/refused").json
    assert.is_false(res.ok)
    assert.matches("BLPOP is refused: a blocking command", res.e)
    assert.is_false(res.ok2)
    assert.matches("MULTI without its EXEC", res.e2)
  end)

  it("works from header_filter and from the log phase", function()
    local before = tonumber(r:client():get("probe:header_filter")) or 0
    local res = g:request("GET", "/phases")
    assert.equal(200, res.status)
    assert.equal(tostring(before + 1), res.headers["x-probe-count"])
    local trace = res.headers["x-request-id"]
    local list
    for _ = 1, 40 do
      list = r:client():lrange("probe:log", 0, -1)
      if #list > 0 then break end
      gw.sleep(0.025)
    end
    assert.equal(trace .. " 200", list[#list])
  end)

  it("fails at once with redis_refused when nothing listens, and logs it", function()
    local t0 = gw.monotonic_ms()
    local res = g:request("GET", "/cmd?r=nobody")
    assert.is_true(gw.monotonic_ms() - t0 < 1000)
    assert.equal("redis_refused", res.json.err)
    assert.matches("refused", res.json.msg)
    assert.matches("redis nobody .*redis_refused", logged("redis nobody .*redis_refused"))
  end)

  it("authenticates and selects the db; a wrong password is a clear error at first use and in the log", function()
    local ok = g:request("GET", "/cmd?r=unlocked").json
    assert.equal("v1", ok.get)
    local c = gw.redis.connect({ address = rp.address, password = "right-password", db = 3 })
    assert.equal("v1", c:get("spec:k"))
    local bad = g:request("GET", "/cmd?r=locked").json
    assert.equal("redis_auth", bad.err)
    assert.matches("AUTH failed: WRONGPASS", bad.msg)
    local pattern = "redis locked %(.-%): redis_auth: AUTH failed: WRONGPASS"
    assert.matches(pattern, logged(pattern))
  end)

  it("times a slow Redis out (timeouts.command), and works again once it answers", function()
    r:pause()
    local t0 = gw.monotonic_ms()
    local res = g:request("GET", "/cmd")
    local took = gw.monotonic_ms() - t0
    r:resume()
    assert.equal("redis_timeout", res.json.err)
    assert.matches("no reply within 150 ms", res.json.msg)
    assert.is_true(took >= 140 and took < 1500, "took " .. took)
    -- commands fail at once for a short back-off (10 ms after one timeout), then go through again
    local t1, back = gw.monotonic_ms(), nil
    repeat
      back = g:request("GET", "/cmd").json.get
    until back or gw.monotonic_ms() - t1 > 2000
    assert.equal("v1", back)
    assert.is_true(gw.monotonic_ms() - t1 < 1500) -- back-off 10 ms; margin for a loaded machine
  end)

  it("never waits past the request's deadline", function()
    r:pause()
    local t0 = gw.monotonic_ms()
    local res = g:request("GET", "/slow-deadline")
    local took = gw.monotonic_ms() - t0
    r:resume()
    assert.equal(504, res.status)
    assert.equal("deadline", res.headers["x-gateway-error"])
    assert.is_true(took >= 290 and took < 2000, "took " .. took)
    -- the discarded reply came later; the pool goes on
    assert.equal(200, g:request("GET", "/slow-deadline").status)
  end)

  it("survives a Redis restart: the dead connection is replaced, no request after it fails", function()
    assert.equal("v1", g:request("GET", "/cmd").json.get)
    r:stop()
    r:start()
    local c = r:client()
    for _ = 1, 40 do -- the gateway's connection saw the EOF; the next command connects anew
      if c:ping() == "PONG" then break end
      gw.sleep(0.025)
    end
    for _ = 1, 5 do
      local res = g:request("GET", "/cmd")
      assert.equal("v1", res.json.get, res.body)
    end
  end)

  it("keeps a request's pool through a reload: its lease is given back, the new generation has its own pool", function()
    local c = r:client()
    local key = "moongate:sem:limit-conn:/held:"
    local results = {}
    gw.process.task(function() results[1] = g:request("GET", "/held") end)
    for _ = 1, 50 do
      if c:zcard(key) == 1 then break end
      gw.sleep(0.01)
    end
    assert.equal(1, c:zcard(key))
    local code, out = g:ctl("reload")
    assert.equal(0, code, out)
    assert.equal("v1", g:request("GET", "/cmd").json.get) -- the new generation's pool
    for _ = 1, 100 do
      if results[1] then break end
      gw.sleep(0.02)
    end
    assert.equal(200, results[1].status)
    assert.equal("v1", results[1].body) -- the old generation's pool, after the reload
    for _ = 1, 50 do
      if c:zcard(key) == 0 then break end
      gw.sleep(0.01)
    end
    assert.equal(0, c:zcard(key)) -- released at once, not after the 30 s lease
  end)

  it("shows the pools and the cluster semaphores in gatewayctl status and /metrics", function()
    local held
    gw.process.task(function() held = g:request("GET", "/held") end) -- a lease held meanwhile
    for _ = 1, 50 do
      if r:client():zcard("moongate:sem:limit-conn:/held:") == 1 then break end
      gw.sleep(0.01)
    end
    local code, out = g:ctl("status")
    assert.equal(0, code, out)
    assert.matches("redis:", out)
    assert.matches("main%s+" .. r.address:gsub("%.", "%%."), out)
    assert.matches("redis_refused", out)
    code, out = g:ctl("status", "--json")
    local st = gw.json.decode(out)
    assert.truthy(st.redis.pools.main.commands > 0)
    assert.truthy(st.redis.pools.main.latency_ms.le_inf > 0)
    assert.truthy(st.redis.pools.locked.errors.redis_auth > 0)
    assert.equal(3, st.redis.cluster_semaphores["limit-conn:/held:"].capacity)
    local s = gw.tcp()
    s:settimeout(5000)
    assert(s:connect("127.0.0.1", admin_port))
    s:send("GET /metrics HTTP/1.0\r\n\r\n")
    local metrics = s:receive("*a")
    s:close()
    assert.matches('moongate_redis_commands_total{redis="main"} %d+', metrics)
    assert.matches('moongate_redis_connections{redis="main",state="idle"} 1', metrics)
    assert.matches('moongate_redis_errors_total{redis="locked",kind="redis_auth"} %d+', metrics)
    assert.matches('moongate_redis_errors_total{redis="nobody",kind="redis_refused"} %d+', metrics)
    assert.matches('moongate_redis_command_duration_seconds_bucket{redis="main",le="0.001"} %d+', metrics)
    assert.matches('moongate_cluster_semaphore_held{name="limit%-conn:/held:",redis="main"} 1', metrics)
    assert.matches('moongate_cluster_semaphore_in_use_seen{name="limit%-conn:/held:",redis="main"} 1', metrics)
    while not held do gw.sleep(0.02) end
    assert.equal(200, held.status)
  end)
end)
