-- limit-conn's conf: the key is checked at load, like rate-limit's, and
-- nothing given is ignored.
local helpers = require "spec.helpers"

describe("limit-conn schema", function()
  it("refuses a key that is not one (it would limit nothing)", function()
    for _, bad in ipairs({ "consumr", "header-X-User", "header:" }) do
      assert.matches("field 'key': '" .. bad .. "'", helpers.conf_error("limit-conn", { max = 1, key = bad }), 1, true)
    end
    assert.matches([[use "consumer", "ip", "route" or "header:<Name>"]],
                   helpers.conf_error("limit-conn", { max = 1, key = "consumr" }), 1, true)
  end)

  it("refuses a weight over max (no request could pass) and queue_timeout without a queue", function()
    assert.matches("field 'weight': 3 is more than max (2)", helpers.conf_error("limit-conn", { max = 2, weight = 3 }), 1, true)
    assert.matches("field 'queue_timeout': only used with queue > 0",
                   helpers.conf_error("limit-conn", { max = 2, queue_timeout = 5 }), 1, true)
    assert.truthy(helpers.configure("limit-conn", { max = 2, queue = 4, queue_timeout = 5 }))
  end)

  it("takes a cluster lease as a duration, like an upstream's, or as seconds", function()
    local function lease(v)
      return helpers.configure("limit-conn", { max = 2, scope = "cluster", redis = "main", lease = v }).lease
    end
    assert.equal(1.5, lease("1500ms"))
    assert.equal(10, lease("10s"))
    assert.equal(120, lease("2m"))
    assert.equal(30, lease(30))
    assert.equal(10, helpers.configure("limit-conn", { max = 2, scope = "cluster", redis = "main" }).lease)
    for _, bad in ipairs({ "100ms", "soon", 90000, true }) do
      assert.matches("field 'lease': " .. tostring(bad) .. " is not a duration from \"300ms\" to \"24h\"",
                     helpers.conf_error("limit-conn", { max = 2, scope = "cluster", redis = "main", lease = bad }), 1, true)
    end
  end)

  it("gatewayd -t names the file and line, and rate-limit says the same", function()
    for _, plugin in ipairs({ "limit-conn", "rate-limit" }) do
      local conf = plugin == "limit-conn" and "max = 1" or "rate = 1"
      local code, err, file = helpers.check_config(([[
listen "127.0.0.1:1"

route { path = "/", plugins = { ["%s"] = { %s, key = "consumr" } }, handler = print }
]]):format(plugin, conf))
      assert.equal(1, code)
      assert.matches(file .. ":3: route /: plugin " .. plugin .. ": field 'key': 'consumr' is not a key: use "
                     .. [["consumer", "ip", "route" or "header:<Name>"]], err, 1, true)
    end
  end)
end)
