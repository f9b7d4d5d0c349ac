-- limit-conn keyed on the client address and a header, in a real gateway.
local helpers = require "spec.helpers"

describe("limit-conn keys", function()
  local g
  setup(function()
    g = helpers.start([[
      route { path = "/ip", plugins = { ["limit-conn"] = { max = 1, key = "ip" } },
              handler = function() gw.sleep(0.5); return 200, "ok" end }
      route { path = "/user", plugins = { ["limit-conn"] = { max = 1, key = "header:X-User" } },
              handler = function() gw.sleep(0.5); return 200, "ok" end }
    ]])
  end)
  teardown(function() g:stop() end)

  local function statuses(fns)
    local res = helpers.parallel(fns)
    local out = {}
    for i, r in ipairs(res) do out[i] = r.status end
    table.sort(out)
    return out
  end

  it("counts by the client address", function()
    assert.same({ 200, 429 }, statuses({
      function() return g:request("GET", "/ip") end,
      function() gw.sleep(0.1); return g:request("GET", "/ip") end,
    }))
  end)

  it("counts by a header, and does not limit a request without it", function()
    assert.same({ 200, 200, 429 }, statuses({
      function() return g:request("GET", "/user", { headers = { ["X-User"] = "a" } }) end,
      function() gw.sleep(0.1); return g:request("GET", "/user", { headers = { ["X-User"] = "a" } }) end,
      function() gw.sleep(0.1); return g:request("GET", "/user") end,
    }))
  end)
end)
