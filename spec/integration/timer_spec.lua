-- gw.timer and the init_worker phase in a real gateway.
local helpers = require "spec.helpers"

describe("gw.timer and init_worker", function()
  it("runs periodic and one-shot timers in the worker", function()
    local g = helpers.start(([[
      plugins_dir "%s/spec/fixtures/plugins"
      shared_dict("ticks", "64k")
      route { path = "/ticks", plugins = { ticker = true },
              handler = function() return 200, { n = gw.shared.ticks:get("n") or 0 } end }
      route { path = "/later", handler = function(ctx)
        gw.timer.at(0.05, function(v) gw.shared.ticks:set("later", v) end, "done")
        return 200, "scheduled"
      end }
      route { path = "/later-value", handler = function() return 200, { v = gw.shared.ticks:get("later") } end }
      route { path = "/cancel", handler = function()
        local t = gw.timer.every(0.01, function() gw.shared.ticks:incr("c", 1, 0) end)
        t:cancel()
        gw.sleep(0.05)
        return 200, { c = gw.shared.ticks:get("c") }
      end }
    ]]):format(os.getenv("PWD")))
    gw.sleep(0.4)
    local n = g:request("GET", "/ticks").json.n
    assert.is_true(n >= 4 and n <= 12, "ticks: " .. n)
    assert.equal("scheduled", g:request("GET", "/later").body)
    gw.sleep(0.15)
    assert.equal("done", g:request("GET", "/later-value").json.v)
    assert.is_nil(g:request("GET", "/cancel").json.c)
    g:stop()
  end)
end)
