-- math.random is seeded from the OS in every VM; gw.random_bytes is the API for secrets.
local helpers = require "spec.helpers"

describe("randomness", function()
  it("gives every gateway start its own math.random sequence", function()
    local seen = {}
    for i = 1, 2 do
      local g = helpers.start('route { path = "/r", handler = function() return 200, tostring(math.random(2^31 - 1)) end }')
      seen[i] = g:request("GET", "/r").body
      g:stop()
    end
    assert.not_equal(seen[1], seen[2])
  end)

  it("gw.random_bytes(n) gives n bytes from the OS CSPRNG", function()
    local a, b = gw.random_bytes(32), gw.random_bytes(32)
    assert.equal(32, #a)
    assert.not_equal(a, b)
    assert.equal(10000, #gw.random_bytes(10000)) -- several buffers
    assert.equal(65536, #gw.random_bytes(65536))
    assert.has_error(function() gw.random_bytes(0) end)
    assert.has_error(function() gw.random_bytes(65537) end)
  end)
end)
