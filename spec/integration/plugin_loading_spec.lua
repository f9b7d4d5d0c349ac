-- Where plugins come from: the bundled set and the configured plugins dirs
-- (relative ones from the config file), never the gateway's working directory.
local helpers = require "spec.helpers"

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
      'route { path = "/", plugins = { evil = true }, handler = print }\n', { cwd = cwd })
    assert.equal(1, code)
    assert.matches("no plugin named 'evil'", err, 1, true)
    -- the same config written next to the plugins finds them, from any working directory
    code, err = helpers.check_config('listen "127.0.0.1:1"\nplugins_dir "plugins"\n' ..
      'route { path = "/", plugins = { evil = true }, handler = print }\n', { dir = cwd, cwd = "/" })
    assert.equal(0, code, err)
  end)
end)
