-- The redis "name" { } directive and the cluster-scope fields of limits:
-- defaults, and every mistake refused with file:line.
local config = require "moongate.config"
local helpers = require "spec.helpers"

local function load(body)
  local dir = helpers.tmpdir()
  helpers.write_file(dir .. "/gateway.lua", body)
  local cfg, err = config.load(dir .. "/gateway.lua")
  return cfg, err, dir .. "/gateway.lua"
end

local function refused(body, pattern, line)
  local cfg, err, file = load(body)
  assert.is_nil(cfg)
  assert.matches(file .. ":" .. line .. ": ", err, 1, true)
  assert.matches(pattern, err)
end

describe("redis directive", function()
  it("reads a block with its defaults", function()
    local cfg, err = load([[
      redis "main" { address = "127.0.0.1:6379" }
      redis "other" { address = "unix:/run/redis.sock", password = "pw", username = "gw", db = 2,
                      pool = { size = 4 }, timeouts = { connect = "1s", command = "20ms" }, nodes = 3,
                      prefix = "fleet-a:" }
    ]])
    assert.is_nil(err)
    local m, o = cfg.redis[1], cfg.redis[2]
    assert.same({ "main", "127.0.0.1:6379", 0, 1, 250, 100, 1, "moongate:" },
                { m.name, m.address, m.db, m.size, m.connect_timeout, m.command_timeout, m.nodes, m.prefix })
    assert.same({ "unix:/run/redis.sock", "pw", "gw", 2, 4, 1000, 20, 3, "fleet-a:" },
                { o.address, o.password, o.username, o.db, o.size, o.connect_timeout, o.command_timeout, o.nodes,
                  o.prefix })
  end)

  it("refuses unknown fields and bad values with file:line", function()
    refused('\n\nredis "main" { address = "127.0.0.1:6379", passwd = "x" }', "unknown field 'passwd' in redis main", 3)
    refused('redis "main" { }', "address must be", 1)
    refused('redis "main" { address = "127.0.0.1" }', "address must be", 1)
    refused('redis "main" { address = "127.0.0.1:0" }', "port in address", 1)
    refused('redis "main" { address = "127.0.0.1:6379", username = "u" }', "username needs a password", 1)
    refused('redis "main" { address = "127.0.0.1:6379", db = -1 }', "db must be an integer", 1)
    refused('redis "main" { address = "127.0.0.1:6379", timeouts = { command = "soon" } }', "timeouts.command", 1)
    refused('redis "main" { address = "127.0.0.1:6379", timeouts = { read = "1s" } }', "unknown field 'read'", 1)
    refused('redis "main" { address = "127.0.0.1:6379", pool = { size = 0 } }', "pool.size must be", 1)
    refused('redis "main" { address = "127.0.0.1:6379", nodes = 0 }', "nodes must be", 1)
    refused('redis "a b" { address = "127.0.0.1:6379" }', "redis expects a name", 1)
    refused('redis "main" { address = "127.0.0.1:6379" }\nredis "main" { address = "127.0.0.1:6380" }',
            "redis main is already defined at .*gateway.lua:1", 2)
  end)

  it("explains that pool.max_idle does not apply to shared connections", function()
    refused('redis "main" { address = "127.0.0.1:6379", pool = { max_idle = 16 } }',
            "pool.max_idle does not apply: a worker's requests share its Redis connections", 1)
  end)

  it("refuses gw.redis at the config's top level with the config's own file:line (gatewayd -t)", function()
    for _, name in ipairs({ "nope", "main" }) do
      local code, err, file = helpers.check_config('listen "127.0.0.1:1"\nredis "main" { address = "127.0.0.1:6379" }\n'
                                                   .. '\nlocal red = gw.redis("' .. name .. '")\n')
      assert.is_not.equal(0, code)
      assert.matches(file .. ':4: gw.redis("' .. name .. '"): no Redis pool exists while the config loads', err, 1, true)
    end
  end)

  it("refuses an IPv6 address without brackets, saying how to write it", function()
    refused('redis "main" { address = "::1:6379" }', 'an IPv6 address goes in brackets: "%[::1%]:6379"', 1)
    local cfg = load('redis "main" { address = "[::1]:6379" }')
    assert.equal("[::1]:6379", cfg.redis[1].address)
  end)

  it("refuses a host gatewayd cannot resolve, at load (gatewayd -t), with the block's line", function()
    local code, err, file = helpers.check_config('listen "127.0.0.1:1"\n\nredis "main" { address = "no-such-host.invalid:6379" }\n')
    assert.is_not.equal(0, code)
    assert.matches(file .. ":3: redis main: cannot resolve redis host 'no-such-host.invalid'", err, 1, true)
  end)
end)

describe("scope = \"cluster\"", function()
  local R = 'redis "main" { address = "127.0.0.1:6379" }\n'

  it("reads an upstream's cluster limit", function()
    local cfg, err = load(R .. 'upstream "u" { targets = { "127.0.0.1:1" }, max_concurrency = 5, scope = "cluster", '
                              .. 'redis = "main", lease = "2s", on_redis_error = "deny" }')
    assert.is_nil(err)
    local u = cfg.upstreams[1]
    assert.same({ "main", 2000, "deny" }, { u.redis, u.lease, u.on_redis_error })
    cfg = load(R .. 'upstream "u" { targets = { "127.0.0.1:1" }, max_concurrency = 5, scope = "cluster", redis = "main" }')
    assert.same({ 10000, "local" }, { cfg.upstreams[1].lease, cfg.upstreams[1].on_redis_error })
  end)

  it("refuses an upstream's cluster fields that would be ignored or are wrong", function()
    local up = 'upstream "u" { targets = { "127.0.0.1:1" }, '
    refused(R .. up .. 'scope = "cluster", redis = "main" }', "apply to max_concurrency, which is not given", 2)
    refused(R .. up .. 'max_concurrency = 5, lease = "2s" }', "need scope = \"cluster\"", 2)
    refused(R .. up .. 'max_concurrency = 5, scope = "global" }', "scope must be", 2)
    refused(R .. up .. 'max_concurrency = 5, scope = "cluster" }', "needs redis = ", 2)
    refused(R .. up .. 'max_concurrency = 5, scope = "cluster", redis = "main", lease = "10ms" }', "lease must be", 2)
    refused(R .. up .. 'max_concurrency = 5, scope = "cluster", redis = "main", on_redis_error = "retry" }',
            "on_redis_error must be", 2)
    refused(R .. '\n' .. up .. 'max_concurrency = 5, scope = "cluster", redis = "mian" }', "no redis named 'mian'", 3)
  end)

  it("checks the plugins' redis fields against the config's redis blocks", function()
    local route = 'route { path = "/x", handler = function() end, plugins = { %s } }'
    refused(R .. route:format('["rate-limit"] = { rate = 1, policy = "redis" }'), "policy = \"redis\" needs", 2)
    refused(R .. route:format('["rate-limit"] = { rate = 1, policy = "redis", redis = "nope" }'),
            "no redis named 'nope'", 2)
    refused(R .. route:format('["rate-limit"] = { rate = 1, redis = "main" }'), "need policy = \"redis\"", 2)
    refused(R .. route:format('["rate-limit"] = { rate = 1, policy = "cluster" }'), "policy", 2)
    refused(R .. route:format('["limit-conn"] = { max = 1, scope = "cluster" }'), "scope = \"cluster\" needs", 2)
    refused(R .. route:format('["limit-conn"] = { max = 1, lease = 5 }'), "need scope = \"cluster\"", 2)
    local cfg, err = load(R .. route:format('["rate-limit"] = { rate = 1, policy = "redis", redis = "main" }, '
                                            .. '["limit-conn"] = { max = 2, scope = "cluster", redis = "main" }'))
    assert.is_nil(err)
    assert.truthy(cfg.routes[1].chain)
  end)
end)
