-- moongate.config: the configuration DSL.
--
-- A config file is Lua run in its own environment holding the directives
-- below (and the normal globals, read-only). Every directive records the file
-- and line it was written on, so every error names them. Loading produces a
-- plain table; mg_config.c reads the settings and compiles the routes into the
-- C router.
local M = {}

local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local setmetatable, setfenv, loadfile, error, pcall = setmetatable, setfenv, loadfile, error, pcall
local fmt, concat = string.format, table.concat

local METHODS = {
  GET = true, HEAD = true, POST = true, PUT = true, DELETE = true,
  PATCH = true, OPTIONS = true, TRACE = true, CONNECT = true,
}

local ROUTE_FIELDS = { method = true, methods = true, path = true, host = true,
                       handler = true, name = true, timeout = true }
local GROUP_FIELDS = { routes = true, host = true, timeout = true, name = true }
local LIMIT_FIELDS = { max_request_line = true, max_header_size = true,
                       max_headers = true, max_body = true }
local TIMEOUT_FIELDS = { header = true, body = true, keepalive = true, send = true,
                         request = true, drain = true }

-- An error raised with this marker carries its own "file:line: " prefix.
local Located = {}

local THIS_FILE = debug.getinfo(1, "S").source

-- The config file and line that called into this module: the first stack
-- frame outside it (directives call helpers, so a fixed level would be wrong).
local function where()
  for level = 2, 50 do
    local info = debug.getinfo(level, "Sl")
    if not info then break end
    if info.source ~= THIS_FILE and info.what ~= "C" then
      local src = info.source
      if src:sub(1, 1) == "@" then src = src:sub(2) end
      return src, info.currentline
    end
  end
  return "?", 0
end

local function fail_at(file, line, msg, ...)
  error(setmetatable({ msg = fmt("%s:%d: " .. msg, file, line, ...) }, Located), 0)
end

-- Raises an error located at the config line that called the directive.
local function fail(msg, ...)
  local file, line = where()
  fail_at(file, line, msg, ...)
end

--- Parses "250ms", "10s", "2m", "1h" or a number of seconds into milliseconds.
function M.duration(v)
  if type(v) == "number" then
    if v < 0 then return nil end
    return math.floor(v * 1000 + 0.5)
  end
  if type(v) ~= "string" then return nil end
  local num, unit = v:match("^%s*([%d%.]+)%s*(%a*)%s*$")
  num = tonumber(num)
  if not num then return nil end
  local scale = ({ ms = 1, s = 1000, [""] = 1000, m = 60000, h = 3600000 })[unit]
  if not scale then return nil end
  return math.floor(num * scale + 0.5)
end

local function size_value(v)
  if type(v) == "number" and v >= 0 then return math.floor(v) end
  if type(v) ~= "string" then return nil end
  local num, unit = v:lower():match("^%s*(%d+)%s*(%a*)%s*$")
  num = tonumber(num)
  local scale = ({ [""] = 1, b = 1, k = 1024, kb = 1024, m = 1048576, mb = 1048576,
                   g = 1073741824, gb = 1073741824 })[unit or ""]
  if not num or not scale then return nil end
  return num * scale
end

local function check_fields(t, allowed, what)
  for k in pairs(t) do
    if type(k) ~= "number" and not allowed[k] then
      local names = {}
      for n in pairs(allowed) do names[#names + 1] = n end
      table.sort(names)
      fail("unknown field '%s' in %s (known: %s)", tostring(k), what, concat(names, ", "))
    end
  end
end

local function normalize_methods(spec)
  local m = spec.methods or spec.method
  if m == nil or m == "*" or m == "ANY" then return "*" end
  if type(m) == "string" then m = { m } end
  if type(m) ~= "table" or #m == 0 then
    fail("route 'method' must be a method name, a list of them, or \"*\"")
  end
  local out = {}
  for _, name in ipairs(m) do
    if type(name) ~= "string" then fail("route methods must be strings") end
    local up = name:upper()
    if up == "*" then return "*" end
    if not METHODS[up] and not up:match("^[!#$%%&'*+%-.^_`|~%w]+$") then
      fail("route method '%s' is not a valid method token", name)
    end
    out[#out + 1] = up
  end
  return out
end

local function new_state(path)
  return {
    file = path,
    dir = path:match("^(.*)/[^/]*$") or ".",
    settings = {
      listen = {}, workers = 0, plugins_dirs = {}, limits = {}, timeouts = {},
      access_log = nil, error_log = nil,
    },
    routes = {},     -- in declaration order
    groups = {},     -- open function-style groups (a stack)
  }
end

local function make_env(st)
  local env = {}
  local s = st.settings

  function env.listen(addr)
    if type(addr) == "table" then
      for _, a in ipairs(addr) do env.listen(a) end
      return
    end
    if type(addr) ~= "string" or not addr:match(":%d+$") then
      fail("listen expects \"host:port\" (e.g. \"0.0.0.0:8080\" or \"[::1]:8080\"), got %s", tostring(addr))
    end
    s.listen[#s.listen + 1] = addr
  end

  function env.workers(n)
    if type(n) ~= "number" or n < 1 or n > 256 or n % 1 ~= 0 then
      fail("workers expects an integer between 1 and 256")
    end
    s.workers = n
  end

  function env.plugins_dir(dir)
    if type(dir) ~= "string" then fail("plugins_dir expects a directory path") end
    if dir:sub(1, 1) ~= "/" then dir = st.dir .. "/" .. dir end
    s.plugins_dirs[#s.plugins_dirs + 1] = dir
  end

  function env.access_log(path)
    if type(path) ~= "string" then fail("access_log expects a path, \"stdout\", \"stderr\" or \"off\"") end
    s.access_log = path
  end

  function env.error_log(path)
    if type(path) ~= "string" then fail("error_log expects a path, \"stdout\" or \"stderr\"") end
    s.error_log = path
  end

  function env.limits(t)
    if type(t) ~= "table" then fail("limits expects a table") end
    check_fields(t, LIMIT_FIELDS, "limits")
    for k, v in pairs(t) do
      local n = size_value(v)
      if not n or n < 1 then fail("limits.%s must be a positive size (e.g. 8192 or \"8k\")", k) end
      s.limits[k] = n
    end
  end

  function env.timeouts(t)
    if type(t) ~= "table" then fail("timeouts expects a table") end
    check_fields(t, TIMEOUT_FIELDS, "timeouts")
    for k, v in pairs(t) do
      local ms = M.duration(v)
      if not ms or ms < 1 then fail("timeouts.%s must be a duration like \"10s\" or \"250ms\"", k) end
      s.timeouts[k] = ms
    end
  end

  function env.route(spec)
    if type(spec) ~= "table" then fail("route expects a table: route { path = ..., handler = ... }") end
    check_fields(spec, ROUTE_FIELDS, "route")
    if type(spec.path) ~= "string" or spec.path:sub(1, 1) ~= "/" then
      fail("route 'path' must be a string starting with '/'")
    end
    if type(spec.handler) ~= "function" then
      fail("route %s has no handler function", spec.path)
    end
    if spec.host ~= nil and type(spec.host) ~= "string" then fail("route 'host' must be a string") end
    if spec.name ~= nil and type(spec.name) ~= "string" then fail("route 'name' must be a string") end
    local timeout
    if spec.timeout ~= nil then
      timeout = M.duration(spec.timeout)
      if not timeout or timeout < 1 then fail("route 'timeout' must be a duration like \"800ms\"") end
    end
    local file, line = where()
    local r = {
      kind = "route", path = spec.path, host = spec.host, name = spec.name,
      methods = normalize_methods(spec), handler = spec.handler, timeout = timeout,
      file = file, line = line, parent = st.groups[#st.groups],
    }
    st.routes[#st.routes + 1] = r
    return r
  end

  -- group "/prefix" { routes = { route{...}, ... }, host = ... }
  -- group "/prefix" (function() route{...} end)
  -- group { prefix = "/p", host = "..." } (function() ... end) is not needed: use the forms above.
  function env.group(prefix)
    if type(prefix) ~= "string" or (prefix ~= "" and prefix:sub(1, 1) ~= "/") then
      fail("group expects a path prefix starting with '/'")
    end
    local file, line = where()
    local g = { kind = "group", prefix = prefix:gsub("/$", ""), file = file, line = line,
                parent = st.groups[#st.groups] }
    return function(body)
      if type(body) == "function" then
        st.groups[#st.groups + 1] = g
        body()
        st.groups[#st.groups] = nil
      elseif type(body) == "table" then
        check_fields(body, GROUP_FIELDS, "group")
        g.host, g.name = body.host, body.name
        if body.timeout ~= nil then
          g.timeout = M.duration(body.timeout)
          if not g.timeout then fail("group 'timeout' must be a duration") end
        end
        local items = body.routes or body
        for _, item in ipairs(items) do
          if type(item) ~= "table" or (item.kind ~= "route" and item.kind ~= "group") then
            fail("group %s: 'routes' must hold route{...} or group(...) entries", prefix)
          end
          -- the nearest enclosing group wins: re-parent items created just outside us
          if item.parent == g.parent then item.parent = g end
        end
      else
        fail("group %s expects a table { routes = {...} } or a function", prefix)
      end
      return g
    end
  end

  function env.include(pattern)
    if type(pattern) ~= "string" then fail("include expects a file name or glob pattern") end
    if pattern:sub(1, 1) ~= "/" then pattern = st.dir .. "/" .. pattern end
    local files = M.glob(pattern)
    if #files == 0 and not pattern:find("[*?%[]") then
      fail("include: no such file: %s", pattern)
    end
    for _, f in ipairs(files) do
      local chunk, err = loadfile(f)
      if not chunk then
        -- a syntax error message already reads "file:line: ..."
        error(setmetatable({ msg = err }, Located), 0)
      end
      setfenv(chunk, env)
      chunk()
    end
  end

  return setmetatable(env, { __index = _G })
end

-- Flattens groups into full paths, hosts and timeouts.
local function resolve(st)
  local out = {}
  for i, r in ipairs(st.routes) do
    local path, host, timeout = r.path, r.host, r.timeout
    local g = r.parent
    while g do
      path = g.prefix .. path
      host = host or g.host
      timeout = timeout or g.timeout
      g = g.parent
    end
    if #path > 1 and path:sub(-1) == "/" and r.path == "/" then path = path:sub(1, -2) end
    out[i] = {
      id = i, path = path, host = host, methods = r.methods, handler = r.handler,
      name = r.name or path, timeout = timeout, file = r.file, line = r.line,
    }
  end
  return out
end

--- Loads a config file. Returns the config table, or nil and "file:line: message".
function M.load(path)
  local chunk, err = loadfile(path)
  if not chunk then return nil, err end
  local st = new_state(path)
  setfenv(chunk, make_env(st))
  local ok, e = pcall(chunk)
  if not ok then
    if getmetatable(e) == Located then return nil, e.msg end
    return nil, tostring(e)
  end
  local cfg = st.settings
  cfg.file = path
  cfg.routes = resolve(st)
  return cfg
end

-- Set by the C side (glob(3)); kept overridable for tests.
M.glob = function() return {} end

return M
