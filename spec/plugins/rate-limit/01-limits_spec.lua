-- rate-limit across workers: the bucket is shared, not per worker.
local helpers = require "spec.helpers"

describe("rate-limit", function()
  local g

  setup(function()
    g = helpers.start([[
      workers(2)
      shared_dict("rate_limit", "1m")
      route { method = "GET", path = "/limited", plugins = { ["rate-limit"] = { rate = 1, burst = 5 } },
              handler = function() return 200, "ok" end }
      route { method = "GET", path = "/per-user", plugins = { ["rate-limit"] = { rate = 1, burst = 2, key = "header:X-User" } },
              handler = function() return 200, "ok" end }
    ]], { workers = 2 })
  end)
  teardown(function() g:stop() end)

  it("allows the burst across all workers, then answers 429 with Retry-After", function()
    -- separate connections: the kernel spreads them over both workers
    local statuses, last = {}, nil
    for i = 1, 8 do
      last = g:request("GET", "/limited")
      statuses[i] = last.status
    end
    local ok = 0
    for _, s in ipairs(statuses) do if s == 200 then ok = ok + 1 end end
    assert.equal(5, ok) -- 5 in all, not 5 per worker
    assert.equal(429, last.status)
    assert.equal("1", last.headers["retry-after"])
    assert.equal("5", last.headers["ratelimit-limit"])
    assert.equal("0", last.headers["ratelimit-remaining"])
    assert.equal("rate limit exceeded", last.json.error)
  end)

  it("keeps a bucket per key", function()
    for _ = 1, 2 do assert.equal(200, g:request("GET", "/per-user", { headers = { ["X-User"] = "a" } }).status) end
    assert.equal(429, g:request("GET", "/per-user", { headers = { ["X-User"] = "a" } }).status)
    assert.equal(200, g:request("GET", "/per-user", { headers = { ["X-User"] = "b" } }).status)
    assert.equal(200, g:request("GET", "/per-user").status) -- no key: not limited
  end)
end)
