-- rate-limit with policy = "redis": the bucket lives in Redis (one per route
-- name and key), with the same answers and headers as the local policy.
local helpers = require "spec.helpers"
local redis = require "spec.redis"

describe("rate-limit policy = \"redis\"", function()
  local r, g

  setup(function()
    r = redis.start()
    g = helpers.start(([[
      workers(2)
      redis "main" { address = "%s" }
      route { method = "GET", path = "/limited", plugins = { ["rate-limit"] = { rate = 1, burst = 5, policy = "redis",
                                                                                redis = "main" } },
              handler = function() return 200, "ok" end }
      route { method = "GET", path = "/unlimited", plugins = { ["rate-limit"] = { rate = 1e9, burst = 1e9, key = "route",
                                                                                  policy = "redis", redis = "main" } },
              handler = function() return 200, "ok" end }
      route { method = "GET", path = "/by-route", plugins = { ["rate-limit"] = { rate = 0.5, burst = 2, key = "route",
                                                                                 policy = "redis", redis = "main" } },
              handler = function() return 200, "ok" end }
      route { method = "GET", path = "/per-user", plugins = { ["rate-limit"] = { rate = 2, burst = 2, key = "header:X-User",
                                                                                 policy = "redis", redis = "main",
                                                                                 name = "users" } },
              handler = function() return 200, "ok" end }
    ]]):format(r.address), { workers = 2 })
  end)
  teardown(function()
    if r then r:stop() end -- first: a gateway that fails to stop must not leave a redis-server behind
    if g then g:stop() end
  end)

  it("allows the burst, then answers 429 with Retry-After and the RateLimit headers", function()
    local statuses, first, last = {}, nil, nil
    for i = 1, 8 do
      last = g:request("GET", "/limited")
      first = first or last
      statuses[i] = last.status
    end
    assert.same({ 200, 200, 200, 200, 200, 429, 429, 429 }, statuses)
    assert.equal("5", first.headers["ratelimit-limit"])
    assert.equal("4", first.headers["ratelimit-remaining"])
    assert.equal("1", first.headers["ratelimit-reset"])
    assert.equal("1", last.headers["retry-after"])
    assert.equal("5", last.headers["ratelimit-limit"])
    assert.equal("0", last.headers["ratelimit-remaining"])
    assert.equal("5", last.headers["ratelimit-reset"])
    assert.equal("rate limit exceeded", last.json.error)
    assert.equal(1, last.json.retry_after)
  end)

  it("stays exact at very high rates, and keys a route's bucket by its name alone", function()
    for _ = 1, 3 do
      local res = g:request("GET", "/unlimited")
      assert.equal(200, res.status) -- 1e9/s: a token is 0.001 µs, far below a Redis µs clock's 1.8e15
      local remaining = tonumber(res.headers["ratelimit-remaining"])
      assert.is_true(remaining >= 999999000 and remaining < 1e9, res.headers["ratelimit-remaining"])
    end
    assert.equal(200, g:request("GET", "/by-route").status)
    assert.equal(1, r:client():exists("moongate:rl:/by-route|route|")) -- kept 2 s: the bucket refills at 0.5/s
  end)

  it("keeps a bucket per name and key in Redis, refilled at the rate", function()
    for _ = 1, 2 do assert.equal(200, g:request("GET", "/per-user", { headers = { ["X-User"] = "a" } }).status) end
    assert.equal(429, g:request("GET", "/per-user", { headers = { ["X-User"] = "a" } }).status)
    assert.equal(200, g:request("GET", "/per-user", { headers = { ["X-User"] = "b" } }).status)
    assert.equal(200, g:request("GET", "/per-user").status) -- no key: not limited
    local ttl = r:client():pttl("moongate:rl:users|header:X-User|a")
    assert.is_true(ttl > 0 and ttl <= 1001, "pttl " .. tostring(ttl)) -- gone once the bucket is full again
    gw.sleep(0.55) -- 2/s: one token back
    assert.equal(200, g:request("GET", "/per-user", { headers = { ["X-User"] = "a" } }).status)
    assert.equal(429, g:request("GET", "/per-user", { headers = { ["X-User"] = "a" } }).status)
  end)
end)
