-- moongate.test.new_plugin: `gatewayd --new-plugin NAME [DIR]` writes a
-- plugin skeleton shaped as docs/plugins.md says (plugins/NAME/handler.lua,
-- plugins/NAME/schema.lua) and a spec that passes (spec/NAME_spec.lua), run
-- from DIR with `gatewayd --spec`. Nothing that exists is overwritten.
local M = {}

local HANDLER = [[
-- plugins/@NAME@/handler.lua: the @NAME@ plugin (Moongate's docs/plugins.md
-- describes the phases, ctx and the conventions). It adds a response header,
-- and refuses requests that lack a header when told to.
local Plugin = {
  name = "@NAME@",      -- must match the folder name
  version = "0.1.0",
  priority = 1000,      -- higher runs earlier; bundled: key-auth 1250, rate-limit 910
}

-- Every phase runs in the request's coroutine and may yield (gw.sleep,
-- gw.http.request, ...). conf is this route's conf, checked against
-- schema.lua when the config loads, with the defaults filled in.
function Plugin.access(ctx, conf)
  if conf.require_header and not ctx.request:header(conf.require_header) then
    return 403, { error = "missing " .. conf.require_header } -- ends the request here
  end
  ctx.response.headers[conf.header] = conf.value
end

return Plugin
]]

local SCHEMA = [[
-- plugins/@NAME@/schema.lua: the conf of the @NAME@ plugin. Loadable alone, so
-- `gatewayd -t` validates confs without running the handler; a field that is
-- not here is refused at load, with the config's file:line.
return {
  fields = {
    header = { type = "header_name", direction = "response", default = "X-@TITLE@",
               description = "the response header to add" },
    value = { type = "header_value", default = "hello", description = "its value" },
    require_header = { type = "header_name", direction = "request",
                       description = "refuse requests without this header (403)" },
  },
}
]]

local SPEC = [[
-- The @NAME@ plugin's spec: run `gatewayd --spec` in this directory.
-- moongate.test ships inside gatewayd (docs/plugins.md, "Testing a plugin"):
-- it starts a real gateway from a config string; a relative plugins_dir in
-- that config is taken from this directory.
local helpers = require "moongate.test"

describe("@NAME@", function()
  local g

  setup(function()
    g = helpers.start([=[
      plugins_dir "plugins"
      route { path = "/hi", plugins = { ["@NAME@"] = { value = "world" } },
              handler = function() return 200, "hi" end }
      route { path = "/strict", plugins = { ["@NAME@"] = { require_header = "X-Token" } },
              handler = function() return 200, "ok" end }
    ]=])
  end)
  teardown(function() g:stop() end)

  it("adds its header", function()
    local res = g:request("GET", "/hi")
    assert.equal(200, res.status)
    assert.equal("world", res.headers["x-@LOWER@"])
  end)

  it("refuses a request without the required header", function()
    local res = g:request("GET", "/strict")
    assert.equal(403, res.status)
    assert.equal("missing X-Token", res.json.error)
    assert.equal(200, g:request("GET", "/strict", { headers = { ["X-Token"] = "t" } }).status)
  end)

  it("refuses a conf its schema does not allow", function()
    assert.matches("field 'header'", helpers.conf_error("@NAME@", { header = "not a header" }))
    assert.matches("unknown field", helpers.conf_error("@NAME@", { colour = "red" }))
  end)
end)
]]

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

--- Writes the skeleton of plugin `name` under dir; returns a report, or nil, why, exit code.
function M.write(name, dir)
  if type(name) ~= "string" or not name:match("^[a-z][a-z0-9_%-]*$") then
    return nil, ("'%s' is not a plugin name: lowercase letters, digits, '-' and '_', starting with a letter"):format(
      tostring(name)), 2
  end
  dir = dir:gsub("/+$", "")
  if dir == "" then dir = "/" end
  local title = name:gsub("^%l", string.upper):gsub("[-_](%l)", function(c) return "-" .. c:upper() end)
  local function fill(text)
    return (text:gsub("@NAME@", name):gsub("@TITLE@", title):gsub("@LOWER@", title:lower()))
  end
  local files = {
    { "plugins/" .. name .. "/handler.lua", HANDLER },
    { "plugins/" .. name .. "/schema.lua", SCHEMA },
    { "spec/" .. name .. "_spec.lua", SPEC },
  }
  for _, f in ipairs(files) do
    if exists(dir .. "/" .. f[1]) then return nil, dir .. "/" .. f[1] .. " exists; nothing was written", 1 end
  end
  local report = {}
  for _, f in ipairs(files) do
    local path = dir .. "/" .. f[1]
    local sub = path:match("^(.*)/[^/]+$")
    if os.execute("mkdir -p " .. quote(sub)) ~= 0 then return nil, "cannot create " .. sub, 1 end
    local out, err = io.open(path, "wb")
    if not out then return nil, err, 1 end
    out:write(fill(f[2]))
    out:close()
    report[#report + 1] = "wrote " .. path
  end
  report[#report + 1] = ("run its spec: cd %s && gatewayd --spec"):format(quote(dir))
  report[#report + 1] = ('use it: plugins_dir "%s/plugins" and plugins = { ["%s"] = { ... } } on a route'):format(dir, name)
  return table.concat(report, "\n") .. "\n"
end

return M
