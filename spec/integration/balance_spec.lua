-- Several targets: balancing, retries, passive and active health; and Lua
-- sub-requests through the same upstreams (gw.http.request, gw.spawn/wait).
local helpers = require "spec.helpers"
local upstream = require "spec.upstream"

local function count_by(up_list)
  local t = {}
  for i, u in ipairs(up_list) do t[i] = u.requests end
  return t
end

describe("load balancing and health", function()
  local a, b, g

  local function start(extra)
    a = upstream.start(function(req) return 200, {}, "a" end)
    b = upstream.start(function(req) return 200, {}, "b" end)
    g = helpers.start(([[
      error_header "X-Gateway-Error"
      upstream "pair" {
        targets = { "127.0.0.1:%d", "127.0.0.1:%d" },
        timeouts = { connect = "300ms", read = "300ms" },
        retries = 1,
        %s
      }
      route { path = "/p/{id}", upstream = "pair" }
    ]]):format(a.port, b.port, extra or ""))
  end
  after_each(function()
    g:stop()
    a:stop()
    b:stop()
  end)

  it("round-robins across targets", function()
    start()
    for i = 1, 10 do assert.equal(200, g:request("GET", "/p/" .. i).status) end
    assert.same({ 5, 5 }, count_by({ a, b }))
  end)

  it("hashes a key to a stable target", function()
    start('balance = "hash", hash_key = "header:X-User",')
    local first = {}
    for round = 1, 3 do
      for user = 1, 6 do
        local body = g:request("GET", "/p/1", { headers = { ["X-User"] = "u" .. user } }).body
        if round == 1 then first[user] = body else assert.equal(first[user], body) end
      end
    end
  end)

  it("prefers the target with fewer requests in flight (least_conn)", function()
    start('balance = "least_conn",')
    a.handler = function() gw.sleep(0.25); return 200, {}, "a" end
    helpers.parallel({
      function() return g:request("GET", "/p/1") end,  -- one of these two stays in flight on a
      function() return g:request("GET", "/p/2") end,
      function()
        gw.sleep(0.05)
        for i = 1, 4 do assert.equal("b", g:request("GET", "/p/x" .. i).body) end
      end,
    })
    assert.same({ 1, 5 }, count_by({ a, b }))
  end)

  it("retries an idempotent request on another target", function()
    start()
    a.handler = function(req, res) res:reset() end
    for i = 1, 4 do
      local res = g:request("GET", "/p/" .. i)
      assert.equal(200, res.status)
      assert.equal("b", res.body)
    end
  end)

  it("does not retry a POST whose request may have been processed", function()
    start()
    a.handler = function(req, res) res:reset() end
    local statuses = {}
    for i = 1, 4 do statuses[#statuses + 1] = g:request("POST", "/p/" .. i, { body = "x" }).status end
    table.sort(statuses)
    assert.same({ 200, 200, 502, 502 }, statuses)
  end)

  it("ejects a failing target after consecutive failures, then tries it again", function()
    -- ejected long enough for the 16 requests below, one curl each over HTTP/2 on a loaded machine
    start('health = { passive = { failures = 2, eject = "2s" } },')
    a.handler = function(req, res) res:reset() end
    for i = 1, 10 do assert.equal(200, g:request("GET", "/p/" .. i).status) end
    local a_before = a.requests
    assert.is_true(a_before <= 3, "a kept getting traffic: " .. a_before)
    for i = 1, 6 do g:request("GET", "/p/" .. i) end
    assert.equal(a_before, a.requests) -- ejected: no traffic at all
    a.handler = function() return 200, {}, "a" end
    gw.sleep(2.1)
    for i = 1, 6 do g:request("GET", "/p/" .. i) end
    assert.is_true(a.requests > a_before, "a never got a trial request")
    assert.truthy(g:error_log():find("ejected", 1, true))
  end)

  it("lets a balancer plugin choose the target (the phase may yield)", function()
    a = upstream.start(function() return 200, {}, "a" end)
    b = upstream.start(function() return 200, {}, "b" end)
    g = helpers.start(([[
      plugins_dir "%s/spec/fixtures/plugins"
      upstream "pair" { targets = { "127.0.0.1:%d", "127.0.0.1:%d" } }
      route { path = "/p/{id}", upstream = "pair", plugins = { ["pick-target"] = true } }
    ]]):format(os.getenv("PWD"), a.port, b.port))
    for i = 1, 4 do
      assert.equal("b", g:request("GET", "/p/" .. i, { headers = { ["X-Target"] = "127.0.0.1:" .. b.port } }).body)
    end
    assert.equal(0, a.requests)
    assert.equal(500, g:request("GET", "/p/x", { headers = { ["X-Target"] = "10.9.9.9:1" } }).status)
    -- no choice: the upstream's own balancer
    g:request("GET", "/p/1")
    g:request("GET", "/p/2")
    assert.equal(1, a.requests)
  end)

  it("never ejects the last usable target: with every target failing, clients get its errors, not 503", function()
    start('retries = 0, health = { passive = { failures = 1, eject = "10s" } },')
    a.handler = function(req, res) res:reset() end
    b.handler = function(req, res) res:reset() end
    g:request("GET", "/p/1") -- a fails: ejected, b carries the load
    for i = 2, 5 do
      local res = g:request("GET", "/p/" .. i)
      assert.equal(502, res.status)
      assert.equal("reset", res.headers["x-gateway-error"])
    end
    assert.equal(1, a.requests)
    b.handler = function() return 200, {}, "b" end
    assert.equal("b", g:request("GET", "/p/healed").body) -- back at once
    assert.truthy(g:error_log():find("last usable target", 1, true))
  end)

  it("answers 503 no_healthy_target when every target fails its active health check", function()
    start('health = { active = { path = "/health", interval = "100ms", timeout = "200ms" } },')
    a.handler = function(req) return 500, {}, "sick" end
    b.handler = function(req) return 500, {}, "sick" end
    gw.sleep(0.3)
    local res = g:request("GET", "/p/1")
    assert.equal(503, res.status)
    assert.equal("no_healthy_target", res.headers["x-gateway-error"])
  end)

  it("takes a target out when its active health check fails", function()
    a.handler = nil
    start('health = { active = { path = "/health", interval = "100ms", timeout = "200ms" } },')
    a.handler = function(req) if req.path == "/health" then return 500, {}, "sick" end return 200, {}, "a" end
    b.handler = function(req) return 200, {}, "b" end
    gw.sleep(0.3)
    for i = 1, 6 do assert.equal("b", g:request("GET", "/p/" .. i).body) end
    a.handler = function(req) return 200, {}, "a" end
    gw.sleep(0.3)
    local seen_a = false
    for i = 1, 6 do if g:request("GET", "/p/" .. i).body == "a" then seen_a = true end end
    assert.is_true(seen_a)
  end)
end)

describe("gw.http.request", function()
  local users, orders, g

  setup(function()
    users = upstream.start(function(req)
      gw.sleep(0.1)
      return 200, { ["Content-Type"] = "application/json" },
        gw.json.encode({ user = req.path, trace = req.headers["x-request-id"] })
    end)
    orders = upstream.start(function(req)
      gw.sleep(0.1)
      return 201, { ["X-Order"] = "1" }, "order:" .. req.body
    end)
    g = helpers.start(([[
      upstream "users" { targets = { "127.0.0.1:%d" } }
      upstream "orders" { targets = { "127.0.0.1:%d" } }
      route { method = "GET", path = "/combined", handler = function(ctx)
        local t0 = gw.monotonic_ms()
        local u = gw.spawn(gw.http.request, { upstream = "users", path = "/u/7" })
        local o = gw.spawn(gw.http.request, { upstream = "orders", method = "POST", path = "/o", body = "abc" })
        local ur, uerr = gw.wait(u)
        local orr, oerr = gw.wait(o)
        return 200, { user = ur and gw.json.decode(ur.body), order = orr and orr.body,
                      order_status = orr and orr.status, x_order = orr and orr.headers["x-order"],
                      took = gw.monotonic_ms() - t0, errors = { uerr, oerr } }
      end }
      route { method = "GET", path = "/sequential", handler = function(ctx)
        local t0 = gw.monotonic_ms()
        local a = gw.http.request { upstream = "users", path = "/1" }
        local b = gw.http.request { upstream = "users", path = "/2" }
        return 200, { took = gw.monotonic_ms() - t0, a = a.status, b = b.status }
      end }
      route { method = "GET", path = "/url", handler = function(ctx)
        local res, err = gw.http.request { url = "http://127.0.0.1:%d/via-url?q=1" }
        return 200, { status = res and res.status, body = res and res.body, err = err }
      end }
      route { method = "GET", path = "/refused", handler = function(ctx)
        local res, err = gw.http.request { url = "http://127.0.0.1:1/" }
        return 200, { err = err }
      end }
      route { method = "GET", path = "/timeout", handler = function(ctx)
        local res, err = gw.http.request { upstream = "users", path = "/t", timeout = 0.02 }
        return 200, { err = err }
      end }
      route { method = "GET", path = "/deadline", timeout = "50ms", handler = function(ctx)
        gw.http.request { upstream = "users", path = "/d" }
        return 200, "not reached"
      end }
      route { method = "GET", path = "/caller-headers", handler = function(ctx)
        local res, err = gw.http.request { upstream = "users", path = "/h", timeout = 1,
                                           headers = { ["X-Caller"] = "1", ["Content-Length"] = "99" } }
        local ok, bad = pcall(gw.http.request, { upstream = "users", path = "/h", headers = { ["Bad Name"] = "1" } })
        return 200, { status = res and res.status or false, err = err or false, bad = bad }
      end }
      route { method = "GET", path = "/spawn-error", handler = function(ctx)
        local t = gw.spawn(function() error("inner failure") end)
        local ok, err = gw.wait(t)
        return 200, { ok = ok, err = err }
      end }
    ]]):format(users.port, orders.port, users.port))
  end)
  teardown(function()
    g:stop()
    users:stop()
    orders:stop()
  end)

  it("runs sub-requests in parallel: two 100 ms calls take about 100 ms", function()
    local res = g:request("GET", "/combined", { headers = { ["X-Request-ID"] = "combo-1" } })
    assert.equal(200, res.status)
    assert.equal("/u/7", res.json.user.user)
    assert.equal("combo-1", res.json.user.trace) -- the caller's trace id travels with the sub-request
    assert.equal("order:abc", res.json.order)
    assert.equal(201, res.json.order_status)
    assert.equal("1", res.json.x_order)
    assert.is_true(res.json.took < 190, "parallel sub-requests took " .. res.json.took .. " ms")
    local seq = g:request("GET", "/sequential").json
    assert.is_true(seq.took >= 190, "sequential took " .. seq.took .. " ms")
  end)

  it("accepts a URL, and reports errors as kinds", function()
    local res = g:request("GET", "/url").json
    assert.equal(200, res.status)
    assert.truthy(res.body:find("/via-url", 1, true))
    assert.equal("refused", g:request("GET", "/refused").json.err)
    assert.equal("timeout", g:request("GET", "/timeout").json.err)
  end)

  it("keeps the framing its own and refuses an invalid header name", function()
    local res = g:request("GET", "/caller-headers").json
    assert.equal(200, res.status) -- a caller's Content-Length would leave the upstream waiting for a body
    assert.equal(false, res.err)
    assert.truthy(res.bad:find("header names must be tokens", 1, true), res.bad)
  end)

  it("is bounded by the caller's deadline", function()
    local t0 = gw.monotonic_ms()
    local res = g:request("GET", "/deadline")
    assert.equal(504, res.status)
    assert.is_true(gw.monotonic_ms() - t0 < 95)
  end)

  it("returns a spawned function's error from gw.wait", function()
    local res = g:request("GET", "/spawn-error").json
    assert.is_nil(res.ok)
    assert.truthy(res.err:find("inner failure", 1, true))
  end)
end)
