-- examples/cluster runs as its README says: two gateways from one config
-- share the rate limit and the backend's concurrency limit through Redis.
local helpers = require "spec.helpers"
local redis = require "spec.redis"

local EXAMPLE = os.getenv("PWD") .. "/examples/cluster/"

describe("examples/cluster", function()
  local r, procs, ports = nil, {}, {}

  local function spawn(name, file, env)
    local dir = helpers.tmpdir()
    local port = helpers.free_port()
    local argv = { "/usr/bin/env", "PORT=" .. port, "ADMIN_SOCKET=" .. dir .. "/admin.sock" }
    for _, e in ipairs(env) do argv[#argv + 1] = e end
    for _, a in ipairs({ helpers.gatewayd, "-c", EXAMPLE .. file }) do argv[#argv + 1] = a end
    local pid = assert(gw.process.spawn(argv, { stdout = "/dev/null", stderr = dir .. "/error.log" }))
    assert(helpers.wait_port(port, pid, 10), helpers.read_file(dir .. "/error.log"))
    procs[#procs + 1] = { pid = pid, dir = dir }
    ports[name] = port
    return port
  end

  setup(function()
    r = redis.start()
    local backend = spawn("backend", "backend.lua", {})
    for _, node in ipairs({ "a", "b" }) do
      spawn(node, "gateway.lua", { "NODE=" .. node, "REDIS=" .. r.address, "BACKEND=127.0.0.1:" .. backend })
    end
  end)
  teardown(function()
    if r then r:stop() end -- first: a gateway that fails to stop must not leave a redis-server behind
    local exits = {}
    for i, p in ipairs(procs) do
      gw.process.kill(p.pid, gw.process.SIGTERM)
      local how, code = helpers.wait_exit(p.pid, 15)
      if not how then gw.process.kill(p.pid, gw.process.SIGKILL) end
      exits[i] = { how, code }
    end
    for i, p in ipairs(procs) do
      assert.same({ "exit", 0 }, exits[i], helpers.read_file(p.dir .. "/error.log"))
    end
  end)

  local function get(node, path, headers)
    local s = gw.tcp()
    s:settimeout(5000)
    assert(s:connect("127.0.0.1", ports[node]))
    local lines = { "GET " .. path .. " HTTP/1.1", "Host: x", "Connection: close" }
    for k, v in pairs(headers or {}) do lines[#lines + 1] = k .. ": " .. v end
    s:send(table.concat(lines, "\r\n") .. "\r\n\r\n")
    local res = helpers.read_response(s)
    s:close()
    return res
  end

  it("shares the burst of 4 per API key between the two gateways", function()
    local statuses = {}
    for i, node in ipairs({ "a", "b", "a", "b", "a", "b" }) do
      statuses[i] = get(node, "/api/hello", { apikey = "demo-key" }).status
    end
    assert.same({ 200, 200, 200, 200, 429, 429 }, statuses)
    assert.equal(200, get("b", "/api/hello", { apikey = "other-key" }).status) -- another consumer, its own bucket
  end)

  it("lets 4 reports be in flight across both gateways", function()
    local fns = {}
    for i = 1, 6 do
      fns[i] = function() return get(i % 2 == 0 and "a" or "b", "/reports/" .. i .. "?ms=600").status end
    end
    local ok = 0
    for _, s in ipairs(helpers.parallel(fns)) do if s == 200 then ok = ok + 1 end end
    assert.equal(4, ok)
    assert.equal(0, get("a", "/limits").json.reports_in_flight)
  end)
end)
