-- Bodies stream through the proxy with back-pressure: a 200 MB download or
-- upload never makes the gateway buffer it (RSS stays bounded).
local helpers = require "spec.helpers"
local upstream = require "spec.upstream"

local MB = 1024 * 1024
local TOTAL = 200 * MB
local CHUNK = ("0123456789abcdef"):rep(4096) -- 64 KiB

describe("streaming through the proxy", function()
  local up, g, received

  setup(function()
    up = upstream.start(function(req, res)
      if req.method == "GET" then
        res.sock:send("HTTP/1.1 200 OK\r\nContent-Length: " .. TOTAL .. "\r\n\r\n")
        for _ = 1, TOTAL / #CHUNK do
          if not res.sock:send(CHUNK) then return end
        end
        return
      end
      -- upload: count the body without keeping it
      local left = tonumber(req.headers["content-length"])
      received = 0
      while left > 0 do
        local data = res.sock:receive(math.min(left, 65536))
        if not data then return end
        left = left - #data
        received = received + #data
      end
      return 200, {}, tostring(received)
    end, { raw_body = true, timeout = 60000 })
    g = helpers.start(([[
      upstream "big" { targets = { "127.0.0.1:%d" }, timeouts = { read = "30s", send = "30s" } }
      route { path = "/big", upstream = "big", timeout = "120s", max_body = 0 }
    ]]):format(up.port))
  end)
  teardown(function()
    g:stop()
    up:stop()
  end)

  it("downloads 200 MB with bounded memory", function()
    local base = g:rss_kb()
    local s = g:connect(30000)
    s:send("GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
    local res = {}
    repeat local line = s:receive("*l") until line == ""
    local got, peak = 0, base
    while got < TOTAL do
      local data = assert(s:receive(math.min(TOTAL - got, 256 * 1024)))
      got = got + #data
      if got % (16 * MB) < 256 * 1024 then peak = math.max(peak, g:rss_kb()) end
    end
    s:close()
    assert.equal(TOTAL, got)
    assert.is_true(peak - base < 40 * 1024, ("RSS grew from %d to %d KiB"):format(base, peak))
  end)

  it("uploads 200 MB with bounded memory", function()
    local base = g:rss_kb()
    local s = g:connect(30000)
    s:send("POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: " .. TOTAL .. "\r\n\r\n")
    local peak = base
    for i = 1, TOTAL / #CHUNK do
      assert(s:send(CHUNK))
      if i % 256 == 0 then peak = math.max(peak, g:rss_kb()) end
    end
    local res = assert(helpers.read_response(s))
    assert.equal(200, res.status)
    assert.equal(tostring(TOTAL), res.body)
    assert.is_true(peak - base < 40 * 1024, ("RSS grew from %d to %d KiB"):format(base, peak))
  end)
end)
