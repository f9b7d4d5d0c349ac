-- redirect builds Location only from a validated host (or its configured one).
local helpers = require "spec.helpers"
local plugins = require "moongate.plugins"

describe("redirect", function()
  local g
  setup(function()
    g = helpers.start([[
      route { path = "/secure/{rest*}", plugins = { redirect = { https = true } }, handler = function() return 200 end }
      route { path = "/port", plugins = { redirect = { https = true, https_port = 8443 } }, handler = function() return 200 end }
      route { path = "/to/{rest*}", plugins = { redirect = { to = "https://{host}/new{path}{query}", status = 302 } },
              handler = function() return 200 end }
    ]])
  end)
  teardown(function() g:stop() end)

  local function get(target, host, version)
    local lines = { ("GET %s HTTP/%s"):format(target, version or "1.1") }
    if host then lines[#lines + 1] = "Host: " .. host end
    lines[#lines + 1] = "Connection: close"
    return g:raw(table.concat(lines, "\r\n") .. "\r\n\r\n")
  end

  it("refuses a Host that would steer the redirect elsewhere (400, no Location)", function()
    for _, host in ipairs({ "evil.test/x?", "evil.test#", "a@evil.test", "evil.test\\x", "evil.test, api.example" }) do
      local res = get("/secure/path", host)
      assert.equal(400, res.status, host)
      assert.is_nil(res.headers["location"], host)
    end
    local res = get("/to/x", "evil.test/x?")
    assert.equal(400, res.status)
    assert.is_nil(res.headers["location"])
  end)

  it("redirects a valid host to the same host and path over https", function()
    local res = get("/secure/path?q=1", "API.Example:8080")
    assert.equal(301, res.status)
    assert.equal("https://api.example/secure/path?q=1", res.headers["location"])
    res = get("/port", "[::1]:8080")
    assert.equal("https://[::1]:8443/port", res.headers["location"])
    res = get("/to/a", "api.example")
    assert.equal(302, res.status)
    assert.equal("https://api.example/new/to/a", res.headers["location"])
    -- the absolute-form authority is the request's host
    res = get("http://target.example/secure/x", "other.example")
    assert.equal("https://target.example/secure/x", res.headers["location"])
  end)

  it("uses the configured host when there is one", function()
    local fixed = helpers.start([[
      route { path = "/fixed", plugins = { redirect = { https = true, host = "www.example" } }, handler = function() return 200 end }
    ]])
    local res = fixed:raw("GET /fixed HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n")
    assert.equal("https://www.example/fixed", res.headers["location"])
    res = fixed:raw("GET /fixed HTTP/1.0\r\n\r\n")
    assert.equal("https://www.example/fixed", res.headers["location"])
    fixed:stop()
  end)

  it("answers 400 when there is no host to redirect to", function()
    local res = get("/secure/x", nil, "1.0")
    assert.equal(400, res.status)
    assert.equal("no host to redirect to", res.json.error)
    assert.is_nil(res.headers["location"])
  end)

  it("checks the configured host", function()
    local p = assert(plugins.load("redirect"))
    for _, bad in ipairs({ "evil.test/x", "a@b", "host:443", "", "a..b", "[::1" }) do
      local conf, err = plugins.configure(p, { https = true, host = bad })
      assert.is_nil(conf, bad)
      assert.truthy(err:find("field 'host'", 1, true), err)
    end
    assert.truthy(plugins.configure(p, { https = true, host = "[2001:db8::1]" }))
  end)
end)
