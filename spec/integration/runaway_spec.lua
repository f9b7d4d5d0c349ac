-- A handler or plugin that never yields (an infinite loop): what the gateway does.
local helpers = require "spec.helpers"

describe("a runaway handler", function()
  it("is reported by the watchdog, fenced off, and does not stop the other workers or shutdown", function()
    local g = helpers.start([[
      workers(2)
      timeouts { watchdog = "300ms", drain = "200ms" }
      route { path = "/spin", handler = function() while true do end end }
      route { path = "/ok", handler = function() return 200, "ok" end }
    ]], { workers = 2 })
    local s = g:connect()
    s:send("GET /spin HTTP/1.1\r\nHost: a\r\n\r\n") -- one worker is now stuck for good
    gw.sleep(1.5) -- the watchdog checks every second
    assert.truthy(g:error_log():find("has not returned to its event loop", 1, true), g:error_log())
    -- every new connection is served: the stuck worker left the SO_REUSEPORT group
    for i = 1, 10 do
      local c = gw.tcp()
      c:settimeout(1000)
      assert(c:connect("127.0.0.1", g.port))
      c:send("GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
      local res = assert(helpers.read_response(c), "request " .. i .. " was not served")
      assert.equal(200, res.status)
      c:close()
    end
    -- shutdown cannot drain the stuck worker: the process exits anyway, with status 1
    gw.process.kill(g.pid, gw.process.SIGTERM)
    local how, code = helpers.wait_exit(g.pid, 10)
    assert.same({ "exit", 1 }, { how, code })
    assert.truthy(g:error_log():find("did not stop", 1, true))
    g.stopped = true
  end)
end)
