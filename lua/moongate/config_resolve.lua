-- moongate.config_resolve: after a config file ran, flattens its groups
-- into routes (full paths, hosts, timeouts, body limits) and builds each
-- route's plugin chain. Every plugins table written anywhere is checked where
-- it is written (its file:line), even a conf that deeper levels override on
-- every route; `false` must turn off something inherited.
local check = require "moongate.config_check"
local plugins = require "moongate.plugins"

local type, pairs, ipairs, next, tostring = type, pairs, ipairs, next, tostring
local fail_at = check.fail_at

local M = {}

local function full_prefix(g)
  local p = ""
  while g do p = g.prefix .. p; g = g.parent end
  return p == "" and "/" or p
end

-- One plugins table (a level) configured: name -> entry { plugin, conf, file,
-- line, what } or false. Confs are configured once per raw table (a table
-- shared by several routes gives them one conf and so one chain).
local function configure_level(st, level, what, file_of, line_of, inherited)
  local out = {}
  local names = {}
  for name in pairs(level) do names[#names + 1] = name end
  table.sort(names) -- the first error is the same on every run
  for _, name in ipairs(names) do
    local raw = level[name]
    local file, line = file_of(name), line_of(name)
    local plugin, err = plugins.load(name, st.settings.plugins_dirs)
    if not plugin then fail_at(file, line, "%s: %s", what, err) end
    if raw == false then
      if not inherited[name] then
        fail_at(file, line, "%s: %s = false turns off nothing: no enclosing group or global plugins enable %s",
                what, name, name)
      end
      out[name] = false
    else
      st.conf_cache[plugin] = st.conf_cache[plugin] or {}
      local entry = type(raw) == "table" and st.conf_cache[plugin][raw]
      if not entry then
        local conf, cerr = plugins.configure(plugin, raw, st.schema_env)
        if not conf then fail_at(file, line, "%s: plugin %s: %s", what, name, cerr) end
        entry = { plugin = plugin, conf = conf, file = file, line = line, what = what }
        if type(raw) == "table" then st.conf_cache[plugin][raw] = entry end
        st.entries[#st.entries + 1] = entry
      end
      out[name] = entry
    end
  end
  return out
end

local function merge(base, level)
  local m = {}
  for k, v in pairs(base) do m[k] = v end
  for k, v in pairs(level) do m[k] = v or nil end
  return m
end

-- The effective plugins (name -> entry) below global, or below group g.
local function effective_of_group(st, g)
  if not g then return st.global_effective end
  if st.group_effective[g] then return st.group_effective[g] end
  local above = effective_of_group(st, g.parent)
  local eff = above
  if g.plugins then
    local prefix = full_prefix(g)
    local level = configure_level(st, g.plugins, "group " .. prefix,
                                  function() return g.file end, function() return g.line end, above)
    eff = merge(above, level)
  end
  st.group_effective[g] = eff
  return eff
end

-- Builds (and shares) the plugin chain of route r.
local function route_chain(st, r, path)
  local above = effective_of_group(st, r.parent)
  local eff = above
  if r.plugins then
    eff = merge(above, configure_level(st, r.plugins, "route " .. path,
                                       function() return r.file end, function() return r.line end, above))
  end
  if next(eff) == nil then return nil end -- no plugins, no chain
  local names = {}
  for name in pairs(eff) do names[#names + 1] = name end
  table.sort(names)
  local entries, key = {}, {}
  for i, name in ipairs(names) do
    local e = eff[name]
    e.used = true
    if r.upstream then e.proxied = true end
    entries[i] = { plugin = e.plugin, conf = e.conf }
    key[i] = name .. "=" .. tostring(e.conf)
  end
  key = table.concat(key, ";")
  if st.chains[key] then return st.chains[key] end
  local ordered, oerr = plugins.order(entries)
  if not ordered then fail_at(r.file, r.line, "route %s: %s", path, oerr) end
  local chain = plugins.chain(ordered)
  st.chains[key] = chain
  return chain
end

local function check_plugins_used(st)
  for _, e in ipairs(st.entries) do
    -- a plugin that only changes the upstream request does nothing on handler routes
    if e.plugin.proxy_only and e.used and not e.proxied then
      fail_at(e.file, e.line, "%s: plugin %s changes only what a proxy route sends upstream, and every route "
              .. "using this conf has a handler", e.what, e.plugin.name)
    end
  end
end

--- Flattens the routes of config state st; raises a located error (check.Located).
function M.resolve(st)
  for pending in pairs(st.unfinished) do fail_at(pending.file, pending.line, "%s", pending.what) end
  local out = {}
  local upstream_names = {}
  for name in pairs(st.upstreams) do upstream_names[name] = true end
  local redis_names = {}
  for name in pairs(st.redis or {}) do redis_names[name] = true end
  st.schema_env = { upstreams = upstream_names, redis = redis_names, dir = st.dir }
  st.conf_cache, st.chains, st.entries, st.group_effective = {}, {}, {}, {}
  st.global_effective = configure_level(st, (function()
    local level = {}
    for name, e in pairs(st.global_plugins) do level[name] = e.conf end
    return level
  end)(), "plugins", function(name) return st.global_plugins[name].file end,
     function(name) return st.global_plugins[name].line end, {})
  local has_routes = {}
  for i, r in ipairs(st.routes) do
    local path, host, timeout, max_body = r.path, r.host, r.timeout, r.max_body
    local g = r.parent
    while g do
      has_routes[g] = true
      path = g.prefix .. path
      host = host or g.host
      timeout = timeout or g.timeout
      if max_body == nil then max_body = g.max_body end
      g = g.parent
    end
    if #path > 1 and path:sub(-1) == "/" and r.path == "/" then path = path:sub(1, -2) end
    local up = r.upstream and st.upstreams[r.upstream]
    if r.upstream and not up then
      fail_at(r.file, r.line, "route %s: no upstream named '%s'", r.path, r.upstream)
    end
    if up and up.hash_param and not path:find("{" .. up.hash_param .. "[:*}]") then
      fail_at(r.file, r.line, "route %s: upstream %s hashes on param:%s, which this path does not have",
              path, r.upstream, up.hash_param)
    end
    local name = r.name or path
    out[i] = {
      id = i, path = path, host = host, methods = r.methods, handler = r.handler,
      chain = route_chain(st, r, path),
      upstream = r.upstream, name = name, timeout = timeout, max_body = max_body, upgrade = r.upgrade,
      file = r.file, line = r.line,
      -- ctx.route: what a handler may know about its route
      info = { name = name, path = path, host = host, methods = r.methods, declared_at = r.file .. ":" .. r.line },
    }
  end
  for _, g in ipairs(st.group_list) do
    if not has_routes[g] then fail_at(g.file, g.line, "group %s has no routes", full_prefix(g)) end
    effective_of_group(st, g) -- its plugins are checked even so
  end
  check_plugins_used(st)
  return out
end

return M
