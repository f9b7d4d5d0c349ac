-- The spec of the worked example in docs/plugins.md (examples/plugins/greeting).
local helpers = require "spec.helpers"

describe("greeting (the docs' example plugin)", function()
  local g

  setup(function()
    g = helpers.start(([[
      plugins_dir "%s/examples/plugins"
      route { method = "GET", path = "/hi", plugins = {
          ["key-auth"] = { keys = { ["k-1"] = "ada" } },
          greeting = { word = "welcome", delay = 0.01 },
        }, handler = function() return 200, "hi" end }
    ]]):format(os.getenv("PWD")))
  end)
  teardown(function() g:stop() end)

  it("greets the consumer found by key-auth (it runs after it)", function()
    local res = g:request("GET", "/hi", { headers = { apikey = "k-1" } })
    assert.equal(200, res.status)
    assert.equal("welcome, ada", res.headers["x-greeting"])
  end)

  it("can end the request", function()
    local res = g:request("GET", "/hi", { headers = { apikey = "k-1", ["X-Block"] = "1" } })
    assert.equal(403, res.status)
    assert.equal("blocked", res.json.error)
  end)

  it("logs after the response, with the trace id", function()
    g:request("GET", "/hi", { headers = { apikey = "k-1", ["X-Request-ID"] = "greet-1" } })
    gw.sleep(0.1)
    assert.truthy(g:error_log():find('"trace_id":"greet-1","msg":"greeted"', 1, true), g:error_log())
  end)
end)
