-- The edge's promises: one host per request (routing = forwarding), Host
-- validation, forwarding headers believed only from trusted_proxies (and the
-- client address that follows), CONNECT refused unless a route asks for it.
-- Byte-exact requests (g:raw), a real upstream that records what it got.
local helpers = require "spec.helpers"
local upstream = require "spec.upstream"

local function raw(g, lines)
  return g:raw(table.concat(lines, "\r\n") .. "\r\n\r\n")
end

describe("one host per request", function()
  local up, g
  setup(function()
    up = upstream.start(function(req)
      return 200, {}, gw.json.encode({ host = req.headers["host"], xfh = req.headers["x-forwarded-host"] })
    end)
    g = helpers.start(([[
      upstream "up" { targets = { "127.0.0.1:%d" } }
      route { host = "public.example", path = "/{rest*}", upstream = "up" }
      route { host = "admin.example", path = "/{rest*}", upstream = "up",
              plugins = { ["key-auth"] = { keys = { ["k-1"] = "ops" } } } }
      route { path = "/who/{rest*}", handler = function(ctx) return 200, { host = ctx.request.host } end }
    ]]):format(up.port))
  end)
  teardown(function()
    g:stop()
    up:stop()
  end)

  it("routes and forwards the absolute-form target's authority, not the Host header", function()
    local before = up.requests
    local res = raw(g, { "GET http://public.example/secret HTTP/1.1", "Host: admin.example", "Connection: close" })
    assert.equal(200, res.status)
    assert.equal(before + 1, up.requests)
    local got = up.received[#up.received]
    assert.equal("public.example", got.headers["host"])
    assert.equal("public.example", got.headers["x-forwarded-host"])
    assert.equal("/secret", got.target)
  end)

  it("applies the admin route's key-auth when the authority names it, whatever Host says", function()
    local before = up.requests
    local res = raw(g, { "GET http://admin.example/secret HTTP/1.1", "Host: public.example", "Connection: close" })
    assert.equal(401, res.status)
    assert.equal(before, up.requests)
    res = raw(g, { "GET http://Admin.Example:8080/secret HTTP/1.1", "Host: public.example", "apikey: k-1",
                   "Connection: close" })
    assert.equal(200, res.status)
    -- forwarded as received (with its port), the host that was routed
    assert.equal("Admin.Example:8080", up.received[#up.received].headers["host"])
  end)

  it("routes a trailing-dot host like the name without it", function()
    local before = up.requests
    local res = raw(g, { "GET /secret HTTP/1.1", "Host: admin.example.", "Connection: close" })
    assert.equal(401, res.status)
    assert.equal(before, up.requests)
  end)

  it("gives handlers the same host", function()
    local res = raw(g, { "GET http://Routed.Example:81/who/x HTTP/1.1", "Host: other.example", "Connection: close" })
    assert.equal(200, res.status)
    assert.equal("routed.example", res.json.host)
    local e = g:entry(res.headers["x-request-id"])
    assert.equal("Routed.Example:81", e.host)
  end)
end)

describe("Host validation", function()
  local up, g
  setup(function()
    up = upstream.start(function() return 200, {}, "reached" end)
    g = helpers.start(([[
      upstream "up" { targets = { "127.0.0.1:%d" } }
      route { path = "/{rest*}", upstream = "up" }
    ]]):format(up.port))
  end)
  teardown(function()
    g:stop()
    up:stop()
  end)

  it("answers 400 to each invalid Host and forwards nothing", function()
    local bad = { "a b", "a@b", "user:pw@a", "a/b", "evil.test/x?", "a<b", "[::1", "[::1]x", "x:99999", "x:",
                  ":80", "a, b", "a,b", "a%2Fb", "a..b", "[::1%25lo]" }
    for _, host in ipairs(bad) do
      local res = raw(g, { "GET /x HTTP/1.1", "Host: " .. host, "Connection: close" })
      assert.equal(400, res and res.status, "Host: " .. host)
    end
    -- the same rules for an absolute-form authority (and Host is still checked)
    for _, target in ipairs({ "http://a@b/x", "http://user:pw@b/x", "http:///x", "http://x:99999/x",
                              "http://[::1/x", "http://a,b/x" }) do
      local res = raw(g, { "GET " .. target .. " HTTP/1.1", "Host: ok.example", "Connection: close" })
      assert.equal(400, res and res.status, target)
    end
    local res = raw(g, { "GET http://ok.example/x HTTP/1.1", "Host: a b", "Connection: close" })
    assert.equal(400, res.status)
    assert.equal(0, up.requests)
  end)

  it("accepts names, ports, IPv4, IPv6 and IPvFuture literals", function()
    for _, host in ipairs({ "example.com", "EXAMPLE.com:8080", "127.0.0.1:80", "[::1]", "[2001:db8::1]:443",
                            "[v1.x]", "under_score.example", "a:0" }) do
      local res = raw(g, { "GET /x HTTP/1.1", "Host: " .. host, "Connection: close" })
      assert.equal(200, res.status, "Host: " .. host)
      assert.equal(host, up.received[#up.received].headers["host"])
    end
    -- an empty Host (RFC 9112 §3.2: no authority) is valid; the upstream gets the target's
    local res = raw(g, { "GET /x HTTP/1.1", "Host:", "Connection: close" })
    assert.equal(200, res.status)
    assert.equal("127.0.0.1:" .. up.port, up.received[#up.received].headers["host"])
    assert.is_nil(up.received[#up.received].headers["x-forwarded-host"])
  end)
end)

local FORWARDING = [[
  upstream "up" { targets = { "127.0.0.1:%d" } }
  upstream "hashed" { targets = { "127.0.0.1:%d", "127.0.0.1:%d" }, balance = "hash", hash_key = "ip" }
  shared_dict("rate_limit", "1m")
  route { path = "/up/{rest*}", upstream = "up" }
  route { path = "/hashed/{rest*}", upstream = "hashed" }
  route { path = "/ip", handler = function(ctx) return 200, { client_ip = ctx.request.client_ip, remote = ctx.request.remote } end }
  route { path = "/allow", plugins = { ["ip-restriction"] = { allow = { "203.0.113.0/24" } } },
          handler = function() return 200, "in" end }
  route { path = "/limited", plugins = { ["rate-limit"] = { rate = 0.001, burst = 1 } },
          handler = function() return 200, "ok" end }
]]

describe("forwarding headers from a client that is not a trusted proxy", function()
  local up, h1, h2, g
  setup(function()
    up = upstream.start(function() return 200, {}, "ok" end)
    h1 = upstream.start(function() return 200, {}, "1" end)
    h2 = upstream.start(function() return 200, {}, "2" end)
    -- no trusted_proxies (the default): nobody's forwarding headers are believed
    g = helpers.start(FORWARDING:format(up.port, h1.port, h2.port))
  end)
  teardown(function()
    g:stop()
    up:stop(); h1:stop(); h2:stop()
  end)

  it("replaces X-Forwarded-Proto, X-Forwarded-Host and X-Forwarded-For, and drops Forwarded", function()
    local res = raw(g, { "GET /up/x HTTP/1.1", "Host: api.example", "X-Forwarded-Proto: https",
                         "X-Forwarded-Host: evil", "X-Forwarded-For: 203.0.113.9", "X-Forwarded-For: 10.0.0.1",
                         "Forwarded: for=203.0.113.9;proto=https;host=evil", "X-Forwarded-Port: 443",
                         "X-Forwarded-Prefix: /evil", "X-Real-IP: 203.0.113.9", "Connection: close" })
    assert.equal(200, res.status)
    local got = up.received[#up.received]
    assert.equal("http", got.headers["x-forwarded-proto"])
    assert.equal("api.example", got.headers["x-forwarded-host"])
    assert.equal("127.0.0.1", got.headers["x-forwarded-for"])
    assert.is_nil(got.headers["forwarded"])
    assert.is_nil(got.headers["x-forwarded-port"])
    assert.is_nil(got.headers["x-forwarded-prefix"])
    assert.is_nil(got.headers["x-real-ip"])
    for _, line in ipairs(got.raw_headers) do
      assert.is_nil(line:lower():find("evil", 1, true), line)
    end
  end)

  it("believes none of them when trusted_proxies names someone else", function()
    local other = helpers.start('trusted_proxies { "10.0.0.0/8" }\n' .. FORWARDING:format(up.port, h1.port, h2.port))
    local res = raw(other, { "GET /up/x HTTP/1.1", "Host: api.example", "X-Forwarded-Proto: https",
                             "X-Forwarded-For: 10.0.0.1", "Connection: close" })
    assert.equal(200, res.status)
    local got = up.received[#up.received]
    assert.equal("http", got.headers["x-forwarded-proto"])
    assert.equal("127.0.0.1", got.headers["x-forwarded-for"])
    res = raw(other, { "GET /ip HTTP/1.1", "Host: a", "X-Forwarded-For: 10.0.0.1", "Connection: close" })
    assert.equal("127.0.0.1", res.json.client_ip)
    other:stop()
  end)

  it("keeps the peer as the client address for handlers, ip-restriction, rate-limit, the hash and the log", function()
    local res = raw(g, { "GET /ip HTTP/1.1", "Host: a", "X-Forwarded-For: 203.0.113.9", "Connection: close" })
    assert.equal("127.0.0.1", res.json.client_ip)
    local e = g:entry(res.headers["x-request-id"])
    assert.equal("127.0.0.1", e.client)
    assert.truthy(e.remote:match("^127%.0%.0%.1:%d+$"))
    res = raw(g, { "GET /allow HTTP/1.1", "Host: a", "X-Forwarded-For: 203.0.113.9", "Connection: close" })
    assert.equal(403, res.status)
    local statuses = {}
    for i = 1, 2 do
      res = raw(g, { "GET /limited HTTP/1.1", "Host: a", "X-Forwarded-For: 198.51.100." .. i, "Connection: close" })
      statuses[i] = res.status
    end
    assert.same({ 200, 429 }, statuses) -- one bucket: the claimed addresses do not count
    local seen = {}
    for i = 1, 12 do
      res = raw(g, { "GET /hashed/x HTTP/1.1", "Host: a", "X-Forwarded-For: 198.51.100." .. i, "Connection: close" })
      seen[res.body] = true
    end
    assert.equal(1, #(function() local t = {} for k in pairs(seen) do t[#t + 1] = k end return t end)())
  end)
end)

describe("forwarding headers from a trusted proxy", function()
  local up, h1, h2, g
  setup(function()
    up = upstream.start(function() return 200, {}, "ok" end)
    h1 = upstream.start(function() return 200, {}, "1" end)
    h2 = upstream.start(function() return 200, {}, "2" end)
    g = helpers.start('trusted_proxies { "127.0.0.1", "10.0.0.0/8", "::1/128" }\n' ..
                      FORWARDING:format(up.port, h1.port, h2.port))
  end)
  teardown(function()
    g:stop()
    up:stop(); h1:stop(); h2:stop()
  end)

  it("passes X-Forwarded-Proto, X-Forwarded-Host and Forwarded, and appends the peer to X-Forwarded-For", function()
    local res = raw(g, { "GET /up/x HTTP/1.1", "Host: internal:8080", "X-Forwarded-Proto: https",
                         "X-Forwarded-Host: api.example", "X-Forwarded-For: 203.0.113.9", "X-Forwarded-For: 10.0.0.1",
                         "Forwarded: for=203.0.113.9;proto=https", "X-Forwarded-Port: 443",
                         "X-Real-IP: 203.0.113.9", "Connection: close" })
    assert.equal(200, res.status)
    local got = up.received[#up.received]
    assert.equal("443", got.headers["x-forwarded-port"])
    assert.equal("203.0.113.9", got.headers["x-real-ip"])
    assert.equal("https", got.headers["x-forwarded-proto"])
    assert.equal("api.example", got.headers["x-forwarded-host"])
    assert.equal("203.0.113.9, 10.0.0.1, 127.0.0.1", got.headers["x-forwarded-for"])
    assert.equal("for=203.0.113.9;proto=https", got.headers["forwarded"])
    assert.equal("internal:8080", got.headers["host"])
    -- what the proxy did not say, the gateway does
    raw(g, { "GET /up/y HTTP/1.1", "Host: internal", "Connection: close" })
    got = up.received[#up.received]
    assert.equal("http", got.headers["x-forwarded-proto"])
    assert.equal("internal", got.headers["x-forwarded-host"])
    assert.equal("127.0.0.1", got.headers["x-forwarded-for"])
  end)

  it("takes the client address from X-Forwarded-For: the rightmost hop that is not a trusted proxy", function()
    local function client(xff)
      local lines = { "GET /ip HTTP/1.1", "Host: a", "Connection: close" }
      if xff then table.insert(lines, 3, "X-Forwarded-For: " .. xff) end
      local res = raw(g, lines)
      return res.json.client_ip, res.headers["x-request-id"]
    end
    assert.equal("203.0.113.9", (client("203.0.113.9")))
    assert.equal("203.0.113.9", (client("6.6.6.6, 203.0.113.9, 10.1.2.3")))  -- a forged left part is not believed
    assert.equal("10.9.9.9", (client("10.9.9.9, 10.1.2.3")))                  -- every hop trusted: the leftmost
    assert.equal("10.1.2.3", (client("6.6.6.6, garbage, 10.1.2.3")))          -- garbage ends the walk
    assert.equal("2001:db8::7", (client("[2001:db8::7]:4711")))
    assert.equal("127.0.0.1", (client(nil)))
    local ip, id = client("203.0.113.9")
    assert.equal(ip, g:entry(id).client)
  end)

  it("lets ip-restriction and rate-limit see the client behind the proxy", function()
    local function get(path, xff)
      return raw(g, { "GET " .. path .. " HTTP/1.1", "Host: a", "X-Forwarded-For: " .. xff, "Connection: close" }).status
    end
    assert.equal(200, get("/allow", "203.0.113.5"))
    assert.equal(403, get("/allow", "198.51.100.1"))
    assert.equal(403, get("/allow", "203.0.113.5, 198.51.100.1"))
    assert.equal(200, get("/limited", "198.51.100.1"))
    assert.equal(429, get("/limited", "198.51.100.1"))
    assert.equal(200, get("/limited", "198.51.100.2")) -- another client, another bucket
  end)

  it("hashes on the client address (hash_key = \"ip\")", function()
    local first, bodies = {}, {}
    for round = 1, 2 do
      for i = 1, 12 do
        local res = raw(g, { "GET /hashed/x HTTP/1.1", "Host: a", "X-Forwarded-For: 198.51.100." .. i,
                             "Connection: close" })
        if round == 1 then first[i] = res.body else assert.equal(first[i], res.body, "client " .. i) end
        bodies[res.body] = true
      end
    end
    assert.truthy(bodies["1"] and bodies["2"], "twelve clients all hashed to one target")
  end)
end)

describe("trusted_proxies in the config", function()
  it("refuses an entry that is not an address or a clean CIDR, naming the line", function()
    for _, entry in ipairs({ "10.0.0.1/8", "10.0.0.0/33", "not-an-ip", "10.0.0.0/" }) do
      local code, err, file = helpers.check_config('listen "127.0.0.1:1"\n\ntrusted_proxies { "127.0.0.1", "' .. entry .. '" }\n')
      assert.not_equal(0, code)
      assert.truthy(err:find(file .. ":3: trusted_proxies: '" .. entry .. "'", 1, true), err)
    end
    local code, err = helpers.check_config('listen "127.0.0.1:1"\ntrusted_proxies "10.0.0.0/8"\n')
    assert.not_equal(0, code)
    assert.truthy(err:find("trusted_proxies expects a list", 1, true), err)
    code, err = helpers.check_config('listen "127.0.0.1:1"\ntrusted_proxies { "::1" }\ntrusted_proxies { "::1" }\n')
    assert.not_equal(0, code)
    assert.truthy(err:find(":3: trusted_proxies is already given at", 1, true), err)
    code = helpers.check_config('listen "127.0.0.1:1"\ntrusted_proxies { "10.0.0.0/8", "192.0.2.7", "2001:db8::/32" }\n')
    assert.equal(0, code)
  end)
end)

describe("CONNECT", function()
  local up, g
  setup(function()
    up = upstream.start(function() return 200, {}, "reached" end)
    g = helpers.start(([[
      upstream "up" { targets = { "127.0.0.1:%d" } }
      route { path = "/{rest*}", upstream = "up" }
      route { method = { "CONNECT" }, path = "/tunnel", handler = function(ctx) return 200, ctx.request.method end }
    ]]):format(up.port))
  end)
  teardown(function()
    g:stop()
    up:stop()
  end)

  it("is refused (405) by a route that allows any method, and never forwarded", function()
    local res = raw(g, { "CONNECT /x HTTP/1.1", "Host: a", "Connection: close" })
    assert.equal(405, res.status)
    assert.is_nil(res.headers["allow"]:find("CONNECT", 1, true))
    assert.truthy(res.headers["allow"]:find("GET", 1, true))
    res = raw(g, { "CONNECT a:443 HTTP/1.1", "Host: a:443", "Connection: close" }) -- authority-form: not a forward proxy
    assert.equal(400, res.status)
    assert.equal(0, up.requests)
    assert.equal(200, raw(g, { "GET /x HTTP/1.1", "Host: a", "Connection: close" }).status)
  end)

  it("reaches a handler route that lists it", function()
    local res = raw(g, { "CONNECT /tunnel HTTP/1.1", "Host: a", "Connection: close" })
    assert.equal(200, res.status)
    assert.equal("CONNECT", res.body)
  end)

  it("cannot be listed by a proxy route", function()
    local code, err, file = helpers.check_config('listen "127.0.0.1:1"\nupstream "u" { targets = { "127.0.0.1:9" } }\n' ..
                                                 'route { method = "CONNECT", path = "/t", upstream = "u" }\n')
    assert.not_equal(0, code)
    assert.truthy(err:find(file .. ":3: route /t: CONNECT cannot be proxied", 1, true), err)
  end)
end)
