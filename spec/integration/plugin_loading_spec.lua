-- Where plugins come from: the bundled set and the configured plugins dirs
-- (relative ones from the config file), never the gateway's working
-- directory; plugin confs that name upstreams are checked at load.
local helpers = require "spec.helpers"
local upstream = require "spec.upstream"

local FIXTURES = os.getenv("PWD") .. "/spec/fixtures/plugins"

-- A directory holding plugins/evil/handler.lua, which leaves a mark when it runs.
local function evil_dir()
  local dir = helpers.tmpdir()
  os.execute("mkdir -p '" .. dir .. "/plugins/evil'")
  helpers.write_file(dir .. "/plugins/evil/handler.lua", ([[
    local f = io.open(%q, "w"); f:write("ran"); f:close()
    return { name = "evil", version = "1.0.0", priority = 1, access = function() return 200, "evil" end }
  ]]):format(dir .. "/evil-ran"))
  return dir
end

describe("plugin loading", function()
  it("does not load a plugin from the working directory", function()
    local cwd = evil_dir()
    local code, err, file = helpers.check_config([[
listen "127.0.0.1:1"
route { path = "/", plugins = { evil = true }, handler = print }
]], { cwd = cwd })
    assert.equal(1, code)
    assert.matches(file .. ":2: route /: no plugin named 'evil' (searched: the bundled plugins)", err, 1, true)
    assert.equal("", helpers.read_file(cwd .. "/evil-ran"))
  end)

  it("takes a relative plugins_dir from the config file, not the working directory", function()
    local cwd = evil_dir()
    local code, err = helpers.check_config('listen "127.0.0.1:1"\nplugins_dir "plugins"\n' ..
      'route { path = "/", plugins = { evil = true }, handler = print }\n', { cwd = cwd, dir = helpers.tmpdir() })
    assert.equal(1, code)
    assert.matches("no plugin named 'evil'", err, 1, true)
    -- the same config written next to the plugins finds them, from any working directory
    code, err = helpers.check_config('listen "127.0.0.1:1"\nplugins_dir "plugins"\n' ..
      'route { path = "/", plugins = { evil = true }, handler = print }\n', { dir = cwd, cwd = "/" })
    assert.equal(0, code, err)
  end)
end)

describe("plugin confs naming an upstream", function()
  it("are checked against the declared upstreams at load, with file:line", function()
    local code, err, file = helpers.check_config(([[
listen "127.0.0.1:1"
plugins_dir "%s"
upstream "orders" { targets = { "127.0.0.1:1" } }
route { path = "/", plugins = { fetch = { upstream = "order" } }, handler = print }
]]):format(FIXTURES))
    assert.equal(1, code)
    assert.matches(file .. ":4: route /: plugin fetch: field 'upstream': no upstream named 'order' (declared: orders)", err, 1, true)
  end)

  it("reach the upstream they name", function()
    local up = upstream.start(function(req) return 200, {}, "from " .. req.path end)
    local g = helpers.start(([[
      plugins_dir "%s"
      upstream "orders" { targets = { "127.0.0.1:%d" } }
      route { path = "/", plugins = { fetch = { upstream = "orders" } }, handler = print }
    ]]):format(FIXTURES, up.port))
    assert.equal("from /fetched", g:request("GET", "/").body)
    g:stop()
    up:stop()
  end)
end)

describe("gw.http.request", function()
  local g
  setup(function()
    g = helpers.start([[
      route { path = "/unknown", handler = function()
        local res, err = gw.http.request { upstream = "nope", path = "/" }
        return 200, { res = res == nil, err = err }
      end }
      route { path = "/url-and-path", handler = function()
        local ok, err = pcall(gw.http.request, { url = "http://127.0.0.1:1/a", path = "/b" })
        return 200, { ok = ok, err = err }
      end }
    ]])
  end)
  teardown(function() g:stop() end)

  it("returns nil, err for an unknown upstream instead of raising", function()
    local res = g:request("GET", "/unknown")
    assert.equal(200, res.status)
    assert.same({ res = true, err = "no upstream named 'nope'" }, res.json)
  end)

  it("refuses a path or query beside a url (it would be ignored)", function()
    local res = g:request("GET", "/url-and-path")
    assert.is_false(res.json.ok)
    assert.matches("gw.http.request: path and query go in the url", res.json.err, 1, true)
  end)
end)
