-- The status page admin_listen serves at / and the status.json it refreshes
-- from; the page itself is checked in a real browser (headless Chromium
-- through selenium: spec/fixtures/status_page.py), which keeps a screenshot
-- in build/artifacts/ (MOONGATE_ARTIFACTS overrides the directory).
local helpers = require "spec.helpers"
local upstream = require "spec.upstream"
local redis = require "moongate.test.redis"

local PYTHON = "/usr/bin/python3"
local PAGE_SCRIPT = os.getenv("PWD") .. "/spec/fixtures/status_page.py"
local ARTIFACTS = os.getenv("MOONGATE_ARTIFACTS") or (os.getenv("PWD") .. "/build/artifacts")

local function http_get(port, path, method)
  local s = gw.tcp()
  s:settimeout(5000)
  assert(s:connect("127.0.0.1", port))
  s:send((method or "GET") .. " " .. path .. " HTTP/1.1\r\nHost: a\r\n\r\n")
  local res = assert(helpers.read_response(s, method))
  s:close()
  return res
end

-- a request held by the upstream until the spec releases it: a socket that waits up to 90 s
local function request_in_background(g, path, headers)
  local done = {}
  gw.process.task(function()
    local s = g:connect(90000)
    local head = { "GET " .. path .. " HTTP/1.1", "Host: a", "Connection: close" }
    for k, v in pairs(headers or {}) do head[#head + 1] = k .. ": " .. v end
    s:send(table.concat(head, "\r\n") .. "\r\n\r\n")
    done.res, done.err = helpers.read_response(s)
    s:close()
  end)
  return done
end

local function wait_for(what, fn, seconds)
  local deadline = gw.monotonic_ms() + (seconds or 10) * 1000
  while gw.monotonic_ms() < deadline do
    local v = fn()
    if v then return v end
    gw.sleep(0.05)
  end
  error("timed out waiting for " .. what, 2)
end

local function row(rows, key)
  for _, r in ipairs(rows or {}) do
    if r.key == key then return r.cells end
  end
end

describe("the status page", function()
  local up, g, admin, dead, release, r

  setup(function()
    release = false
    up = upstream.start(function(req)
      if req.path == "/health" then return 200, {}, "ok" end
      if req.path == "/api/slow" or req.path == "/held" or req.path == "/cheld" then
        local deadline = gw.monotonic_ms() + 60000
        while not release and gw.monotonic_ms() < deadline do gw.sleep(0.02) end
      end
      return 200, {}, "from " .. req.path
    end)
    admin, dead = helpers.free_port(), helpers.free_port() -- nothing listens on dead
    r = redis.start()
    g = helpers.start(([[
      admin_listen "127.0.0.1:%d"
      upstream "orders" { targets = { "127.0.0.1:%d", "127.0.0.1:%d" }, max_concurrency = 2,
                          on_busy = { queue = 5, queue_timeout = "60s" },
                          health = { active = { path = "/health", interval = "0.2s", timeout = "1s" } } }
      upstream "hold" { targets = { "127.0.0.1:%d" } }
      route { path = "/hello", handler = function() return 200, "hi" end }
      route { path = "/boom", handler = function() error("kaboom") end }
      route { path = "/api/{x}", upstream = "orders" }
      route { path = "/held", upstream = "hold", plugins = { ["limit-conn"] = { max = 5, key = "header:X-User" } } }
      redis "main" { address = "%s" }
      redis "gone" { address = "127.0.0.1:%d" }
      route { path = "/cheld", upstream = "hold",
              plugins = { ["limit-conn"] = { max = 3, scope = "cluster", redis = "main" } } }
      route { path = "/rl-gone", handler = function() return 200, "ok" end,
              plugins = { ["rate-limit"] = { rate = 100, policy = "redis", redis = "gone", on_redis_error = "allow" } } }
    ]]):format(admin, up.port, dead, up.port, r.address, dead), { workers = 2 })
  end)

  teardown(function()
    release = true
    g:stop()
    up:stop()
    r:stop()
  end)

  it("is one self-contained HTML page at /, served with a policy that forbids loading anything else", function()
    local res = http_get(admin, "/")
    assert.equal(200, res.status)
    assert.equal("text/html; charset=utf-8", res.headers["content-type"])
    assert.equal("no-store", res.headers["cache-control"])
    local csp = res.headers["content-security-policy"]
    assert.truthy(csp and csp:find("default-src 'none'", 1, true) and csp:find("connect-src 'self'", 1, true), csp)
    assert.truthy(res.body:find("<script>", 1, true) and res.body:find("status.json", 1, true))
    -- nothing external: src= and href= only of data: URLs, no URL of another origin
    for attr, url in res.body:gmatch('(%a+)="([^"]*)"') do
      if attr == "src" or attr == "href" then assert.matches("^data:", url) end
    end
    assert.falsy(res.body:find("https?://"))
    local head = http_get(admin, "/", "HEAD")
    assert.equal(200, head.status)
    assert.equal("", head.body)
    assert.equal(#res.body, tonumber(head.headers["content-length"]))
    assert.equal(405, http_get(admin, "/", "POST").status)
    local nf = http_get(admin, "/index.html")
    assert.equal(404, nf.status)
    assert.matches("try / (the status page), /metrics, /status or /status.json", nf.body, 1, true)
  end)

  it("reads status.json: the status with every worker's figures, errors by route and kind", function()
    g:request("GET", "/hello")
    g:request("GET", "/boom", { headers = { ["X-Request-ID"] = "status-json-boom" } })
    local res = http_get(admin, "/status.json")
    assert.equal(200, res.status)
    assert.equal("application/json", res.headers["content-type"])
    local d = res.json
    assert.equal(2, #d.workers)
    assert.equal(2, #d.figures)
    assert.same({ 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5 }, d.buckets)
    assert.truthy(math.abs(d.time - os.time()) < 5, d.time)
    local hello, boom, targets, last = 0, nil, {}, nil
    for _, f in ipairs(d.figures) do
      for _, r in ipairs(f.routes) do
        if r.route == "/hello" then
          hello = hello + (r.status["2xx"] or 0)
          assert.equal(11, #r.latency.counts)
        end
        if r.route == "/boom" then boom = r end
      end
      for _, t in ipairs(f.targets) do targets[t.upstream .. " " .. t.target] = true end
      last = f.last_errors.lua_error or last
    end
    assert.equal(1, hello)
    assert.equal(1, boom.status["5xx"])
    assert.equal(1, boom.errors.lua_error)
    assert.equal("status-json-boom", last.trace_id)
    assert.equal("/boom", last.route)
    assert.equal(500, last.status)
    assert.truthy(targets["orders 127.0.0.1:" .. up.port] and targets["hold 127.0.0.1:" .. up.port])
    -- the same errors in /metrics, by route and kind
    local metrics = http_get(admin, "/metrics").body
    assert.truthy(metrics:find('moongate_request_errors_total{worker="%d",route="/boom",kind="lua_error"} 1'), metrics)
  end)

  it("is never skipped quietly: without a browser the check fails and says what to install", function()
    local dir = helpers.tmpdir()
    local pid = assert(gw.process.spawn({ "/usr/bin/env", "MOONGATE_CHROMIUM=/nonexistent/chromium", PYTHON,
                                          PAGE_SCRIPT, "http://127.0.0.1:1/", dir .. "/out.json", dir .. "/shot.png",
                                          "1", "5" }, { stderr = dir .. "/err" }))
    local _, code = helpers.wait_exit(pid, 30)
    assert.equal(2, code)
    local err = helpers.read_file(dir .. "/err")
    assert.truthy(err:find("/nonexistent/chromium is missing: apt-get install chromium chromium-driver " ..
                           "python3-selenium", 1, true), err)
  end)

  it("renders workers, routes, rates, percentiles, targets, semaphores and errors in a real browser", function()
    assert(io.open("/usr/bin/chromium"), "/usr/bin/chromium is missing: this spec needs Debian's chromium, " ..
           "chromium-driver and python3-selenium (apt-get install chromium chromium-driver python3-selenium; " ..
           "make test installs them)")
    for _ = 1, 5 do g:request("GET", "/hello") end
    for i = 1, 2 do -- apart: on two workers, errors in the same millisecond have no "last" (status.json has ms)
      g:request("GET", "/boom", { headers = { ["X-Request-ID"] = "page-boom-" .. i } })
      gw.sleep(0.01)
    end
    for _ = 1, 3 do assert.equal(200, g:request("GET", "/api/fast").status) end
    g:request("GET", "/nope")
    -- two permits of upstream:orders held and one request queued; a semaphore named by a header
    local held = {}
    for i = 1, 3 do held[i] = request_in_background(g, "/api/slow") end
    local markup = [[<img src=x onerror="document.title='pwned'">]]
    held[4] = request_in_background(g, "/held", { ["X-User"] = markup })
    held[5] = request_in_background(g, "/cheld") -- a cluster semaphore's lease held in Redis
    for _ = 1, 2 do assert.equal(200, g:request("GET", "/rl-gone").status) end -- Redis gone: allowed, a fallback
    wait_for("the held requests to reach the upstream and the queue", function()
      local sems = http_get(admin, "/status").json.semaphores
      return sems["upstream:orders"] and sems["upstream:orders"].in_use == 2 and sems["upstream:orders"].queued == 1
         and up.inflight == 4
    end)
    -- traffic while the page reads, for rates over its window
    local traffic = true
    gw.process.task(function()
      while traffic do g:request("GET", "/hello"); gw.sleep(0.05) end
    end)
    -- every worker took the dead target out on its health check
    wait_for("the dead target to fail its health check on both workers", function()
      local n = 0
      for _, f in ipairs(http_get(admin, "/status.json").json.figures) do
        for _, t in ipairs(f.targets) do
          if t.target == "127.0.0.1:" .. dead and t.health == "down (health check)" then n = n + 1 end
        end
      end
      return n == 2
    end)

    local dir = helpers.tmpdir()
    local out, shot = dir .. "/page.json", dir .. "/status-page.png"
    local url = ("http://127.0.0.1:%d/?refresh=0.5&window=5"):format(admin)
    local pid = assert(gw.process.spawn({ PYTHON, PAGE_SCRIPT, url, out, shot, "4", "40" },
                                        { stdout = dir .. "/browser.out", stderr = dir .. "/browser.err" }))
    local how, code = helpers.wait_exit(pid, 90)
    if not how then
      gw.process.kill(pid, gw.process.SIGKILL)
      helpers.wait_exit(pid, 5)
    end
    traffic = false
    local err = helpers.read_file(dir .. "/browser.err")
    assert.equal(0, code, "the browser check failed (" .. tostring(how) .. " " .. tostring(code) .. "): " .. err)
    local page = gw.json.decode(helpers.read_file(out))
    -- the screenshot is kept for CI logs to point at
    os.execute("mkdir -p '" .. ARTIFACTS .. "' && cp '" .. shot .. "' '" .. ARTIFACTS .. "/status-page.png'")
    print("\nstatus page screenshot: " .. ARTIFACTS .. "/status-page.png (taken as " .. shot .. ")")

    assert.truthy(page.refreshes >= 4, page.refreshes)
    assert.same({}, page.console) -- no script error, no policy violation
    assert.equal(0, page.injected)
    assert.truthy(page.text:find("gatewayd ", 1, true) and page.text:find(g.file, 1, true), page.text)
    -- workers and their generation
    assert.equal(2, #page.rows.workers)
    local w0 = row(page.rows.workers, "0")
    assert.equal("0", w0[2])
    assert.equal("serving", w0[7])
    -- routes: requests per second (traffic ran during the window), counts, percentiles
    local hello = assert(row(page.rows.routes, "/hello"), page.text)
    assert.truthy(tonumber(hello[2]) > 0, "req/s of /hello: " .. hello[2])
    assert.truthy(tonumber(hello[3]) > 0, "2xx/s of /hello: " .. hello[3])
    local total_col = 7
    assert.truthy(tonumber((hello[total_col]:gsub(",", ""))) >= 6, hello[total_col])
    assert.matches("^[%d.]+ [^ ]*s$", hello[total_col + 1]) -- "500 µs", "1.20 ms"
    local boom = assert(row(page.rows.routes, "/boom"), page.text)
    assert.equal("3", boom[total_col]) -- one from the test before, two here
    assert.truthy(row(page.rows.routes, "(none)"))
    -- upstream targets: health and pool figures
    local live = assert(row(page.rows.targets, "orders 127.0.0.1:" .. up.port), page.text)
    assert.equal("healthy", live[2])
    local down = assert(row(page.rows.targets, "orders 127.0.0.1:" .. dead), page.text)
    assert.equal("down (health check)", down[2])
    local hold = assert(row(page.rows.targets, "hold 127.0.0.1:" .. up.port), page.text)
    assert.equal("2", hold[3]) -- in flight: /held and /cheld
    assert.truthy(row(page.rows.upstreams, "orders"))
    -- semaphores: in use / capacity and queued
    local sem = assert(row(page.rows.semaphores, "upstream:orders"), page.text)
    assert.equal("2 / 2", sem[2])
    assert.equal("1", sem[3])
    -- a name from a request is shown as text, never as markup
    local found
    for _, r in ipairs(page.rows.semaphores) do
      if r.key:find(markup, 1, true) then found = r end
    end
    assert.truthy(found, page.text)
    assert.truthy(found.cells[1]:find(markup, 1, true), found.cells[1])
    -- errors by kind, with the last request's trace id to look up in the error log
    local lua_error = assert(row(page.rows.errors, "lua_error"), page.text)
    assert.equal("3", lua_error[3])
    assert.equal("/boom", lua_error[5])
    assert.equal("500", lua_error[6])
    assert.equal("page-boom-2", lua_error[8])
    assert.truthy(g:error_log():find('"trace_id":"page-boom-2"', 1, true))
    assert.truthy(row(page.rows.errors, "no_route"))
    -- Redis: each block's state, connections, errors, last failure and fallbacks
    local main = assert(row(page.rows.redis, "main"), page.text)
    assert.equal(r.address, main[2])
    assert.equal("ok", main[3])
    local gone = assert(row(page.rows.redis, "gone"), page.text)
    assert.matches("^failing · %d of 2 pools", gone[3])
    assert.matches("redis_refused", gone[7])
    assert.matches("^redis_refused: ", gone[8])
    assert.equal("rate-limit /rl-gone → allow on redis_refused: 2", gone[9])
    -- cluster semaphores: held here / capacity
    local cs = assert(row(page.rows.cluster, "limit-conn:/cheld:"), page.text)
    assert.same({ "main", "1 / 3", "0", "1" }, { cs[2], cs[3], cs[4], cs[5] })

    release = true
    for i = 1, 5 do
      wait_for("held request " .. i, function() return held[i].res or held[i].err end, 20)
      assert.equal(200, held[i].res and held[i].res.status, tostring(held[i].err))
    end
  end)
end)
