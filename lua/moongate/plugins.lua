-- moongate.plugins: finding, checking, ordering and running plugins.
--
-- A plugin is a table { name, version = "x.y.z", priority = <int>, schema,
-- before = {...}, after = {...} } with any of the phase functions below, each
-- taking (ctx, conf). It lives in plugins/<name>/handler.lua (+ schema.lua),
-- or plugins/<name>.lua, in a configured plugins_dir or bundled with gatewayd.
-- See docs/plugins.md.
local schema_mod = require "moongate.schema"
local ffi = require "ffi"
local hand_defaults = require("moongate.ctx").hand_defaults

local type, pairs, ipairs, tostring, pcall, error, setmetatable, rawget =
      type, pairs, ipairs, tostring, pcall, error, setmetatable, rawget
local fmt, sort, concat = string.format, table.sort, table.concat

local M = {}

M.PHASES = { "rewrite", "access", "header_filter", "body_filter", "log" }
local PHASE_SET = { init_worker = true, balancer = true }
for _, p in ipairs(M.PHASES) do PHASE_SET[p] = true end

local KNOWN_KEYS = { name = true, version = true, priority = true, schema = true, before = true, after = true,
                     description = true, uses = true, whole_body = true, proxy_only = true }

local loaded = {}     -- name -> plugin (per VM)

local function read_chunk(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  f:close()
  local chunk, err = loadfile(path)
  if not chunk then error(err, 0) end
  return chunk
end

-- A module bundled into gatewayd (plugins/ at build time), run once; nil when
-- there is none. Not `require`: its search path has "./?.lua", and a plugin
-- must never come from whatever directory the gateway was started in.
local function try_embedded(modname)
  local chunk = M.embedded(modname)
  if type(chunk) ~= "function" then return nil end
  return chunk(modname)
end

--- Finds plugin `name`: plugins dirs first (in order), then the bundled ones.
local function find(name, dirs)
  for _, dir in ipairs(dirs or {}) do
    local handler = read_chunk(dir .. "/" .. name .. "/handler.lua")
    if handler then
      local plugin = handler()
      local schema = read_chunk(dir .. "/" .. name .. "/schema.lua")
      if schema and type(plugin) == "table" and plugin.schema == nil then plugin.schema = schema() end
      return plugin, dir .. "/" .. name .. "/handler.lua"
    end
    local single = read_chunk(dir .. "/" .. name .. ".lua")
    if single then return single(), dir .. "/" .. name .. ".lua" end
  end
  local plugin = try_embedded("plugins." .. name .. ".handler")
  if plugin then
    if type(plugin) == "table" and plugin.schema == nil then
      plugin.schema = try_embedded("plugins." .. name .. ".schema")
    end
    return plugin, "plugins/" .. name .. "/handler.lua"
  end
  plugin = try_embedded("plugins." .. name)
  if plugin then return plugin, "plugins/" .. name .. ".lua" end
  return nil
end

local function check_plugin(name, p, where)
  if type(p) ~= "table" then return nil, fmt("plugin %s (%s) must return a table", name, where) end
  if p.name ~= name then
    return nil, fmt("plugin %s (%s): its name field is '%s'", name, where, tostring(p.name))
  end
  if type(p.version) ~= "string" or not p.version:match("^%d+%.%d+%.%d+") then
    return nil, fmt("plugin %s (%s): version must look like \"1.0.0\"", name, where)
  end
  if type(p.priority) ~= "number" or p.priority % 1 ~= 0 then
    return nil, fmt("plugin %s (%s): priority must be an integer", name, where)
  end
  for k, v in pairs(p) do
    if PHASE_SET[k] then
      if type(v) ~= "function" then return nil, fmt("plugin %s: phase %s must be a function", name, k) end
    elseif not KNOWN_KEYS[k] then
      if type(v) == "function" then
        return nil, fmt("plugin %s (%s): unknown phase '%s' (phases: %s)", name, where, k, concat(M.PHASES, ", "))
      end
      local known = {}
      for key in pairs(KNOWN_KEYS) do known[#known + 1] = key end
      sort(known)
      return nil, fmt("plugin %s (%s): unknown field '%s' (known: %s, and the phases)", name, where,
                      tostring(k), concat(known, ", "))
    end
  end
  if p.proxy_only ~= nil and type(p.proxy_only) ~= "boolean" then
    return nil, fmt("plugin %s: proxy_only must be true or false", name)
  end
  for _, rel in ipairs({ "before", "after" }) do
    if p[rel] ~= nil then
      if type(p[rel]) ~= "table" then return nil, fmt("plugin %s: %s must be a list of plugin names", name, rel) end
      for _, other in ipairs(p[rel]) do
        if type(other) ~= "string" then return nil, fmt("plugin %s: %s must be a list of plugin names", name, rel) end
      end
    end
  end
  if p.schema ~= nil then
    local ok, err = schema_mod.check_schema(p.schema)
    if not ok then return nil, fmt("plugin %s (%s): %s", name, where, err) end
  end
  if p.whole_body ~= nil then
    local n = type(p.whole_body) == "number" and p.whole_body
    if type(p.whole_body) == "string" then
      local num, unit = p.whole_body:lower():match("^(%d+)%s*(%a*)$")
      local scale = ({ [""] = 1, k = 1024, kb = 1024, m = 1048576, mb = 1048576 })[unit or ""]
      n = num and scale and tonumber(num) * scale
    end
    if not n or n < 1 or not p.body_filter then
      return nil, fmt("plugin %s: whole_body must be a size like \"1m\", on a plugin with body_filter", name)
    end
    p.whole_body = n
  end
  return p
end

--- Loads (once per VM) and checks a plugin. Returns it or nil, message.
function M.load(name, dirs)
  if loaded[name] then return loaded[name] end
  if type(name) ~= "string" or not name:match("^[%w_%-]+$") then
    return nil, fmt("bad plugin name '%s'", tostring(name))
  end
  local ok, p, where = pcall(find, name, dirs)
  if not ok then return nil, fmt("plugin %s: %s", name, tostring(p)) end
  if not p then
    local where = (dirs and #dirs > 0) and (concat(dirs, ", ") .. " and the bundled plugins") or "the bundled plugins"
    return nil, fmt("no plugin named '%s' (searched: %s)", name, where)
  end
  local checked, err = check_plugin(name, p, where)
  if not checked then return nil, err end
  loaded[name] = checked
  return checked
end

--- Validates a plugin's conf against its schema (defaults filled in). env:
-- what the config declares ({ upstreams = { name = true } }), see moongate.schema.
function M.configure(plugin, conf, env)
  return schema_mod.validate(plugin.schema, conf, env)
end

--- The loader of modules embedded at build time (set by the C side: it
-- returns the module's chunk, or a "no embedded module" string).
M.embedded = function() return nil end

--- Orders entries { plugin, conf } : priority high to low, ties by name, then
-- the before/after constraints (a cycle is an error naming the plugins).
function M.order(entries)
  local list = {}
  for i, e in ipairs(entries) do list[i] = e end
  sort(list, function(a, b)
    if a.plugin.priority ~= b.plugin.priority then return a.plugin.priority > b.plugin.priority end
    return a.plugin.name < b.plugin.name
  end)
  local index = {}
  for i, e in ipairs(list) do index[e.plugin.name] = i end
  local edges, indeg = {}, {}
  for i = 1, #list do edges[i], indeg[i] = {}, 0 end
  local function edge(from, to)
    if from and to and not edges[from][to] then
      edges[from][to] = true
      indeg[to] = indeg[to] + 1
    end
  end
  for i, e in ipairs(list) do
    for _, other in ipairs(e.plugin.before or {}) do edge(i, index[other]) end
    for _, other in ipairs(e.plugin.after or {}) do edge(index[other], i) end
  end
  -- Kahn's algorithm, always taking the earliest ready plugin in priority order
  local out, done = {}, {}
  while #out < #list do
    local pick
    for i = 1, #list do
      if not done[i] and indeg[i] == 0 then pick = i; break end
    end
    if not pick then
      local names = {}
      for i = 1, #list do if not done[i] then names[#names + 1] = list[i].plugin.name end end
      return nil, "plugin ordering has a cycle among: " .. concat(names, ", ")
    end
    done[pick] = true
    out[#out + 1] = list[pick]
    for to in pairs(edges[pick]) do indeg[to] = indeg[to] - 1 end
  end
  return out
end

--- Builds a chain from ordered entries: per phase, the plugins that have it.
-- A plugin may say that, with a given conf, it does not need a phase
-- (uses(phase, conf) -> false): a chain without header_filter steps keeps
-- proxied responses on the fast path.
local CHAIN_PHASES = { "rewrite", "access", "balancer", "header_filter", "body_filter", "log" }

function M.chain(ordered)
  local c = { names = {} }
  for _, phase in ipairs(CHAIN_PHASES) do c[phase] = {} end
  for i, e in ipairs(ordered) do
    c.names[i] = e.plugin.name
    for _, phase in ipairs(CHAIN_PHASES) do
      local fn = e.plugin[phase]
      if fn and e.plugin.uses and not e.plugin.uses(phase, e.conf) then fn = nil end
      if fn then
        local list = c[phase]
        list[#list + 1] = { fn = fn, conf = e.conf, name = e.plugin.name, phase = phase }
      end
    end
  end
  c.has_header_filter = #c.header_filter > 0 or #c.body_filter > 0
  c.has_body_filter = #c.body_filter > 0
  -- a plugin that needs the whole body makes the gateway buffer it (bounded) first
  c.whole_body = 0
  for _, step in ipairs(c.body_filter) do
    local p = loaded[step.name]
    if p and p.whole_body and p.whole_body > c.whole_body then c.whole_body = p.whole_body end
  end
  c.has_log = #c.log > 0
  c.traced = M.traced_chain(c)
  return c
end

-- ---- recorded requests (src/mg_trace.h) ----

-- A request the gateway records (sampled for tracing, or watched by
-- `gatewayctl trace`) has ctx._traced; its phases run the chain's traced
-- copy, whose steps tell C when each begins and ends, so C can say how long
-- each ran and what it waited on. Every other request runs the chain as it
-- is: the only cost is one rawget per phase task.
ffi.cdef [[ void mg_ffi_trace_step(uintptr_t r, int phase, const char *name, size_t len); ]]
local C = ffi.C
local TRACE_PHASE = { rewrite = 1, access = 2, balancer = 3, header_filter = 4, body_filter = 5, handler = 6 }

local function step_end(r, ...)
  C.mg_ffi_trace_step(r, 0, nil, 0)
  return ...
end

local function traced_step(step)
  local t = {}
  for k, v in pairs(step) do t[k] = v end
  local fn, phase, name = step.fn, TRACE_PHASE[step.phase], step.name
  t.fn = function(ctx, ...)
    local r = ctx._r
    C.mg_ffi_trace_step(r, phase, name, #name)
    return step_end(r, fn(ctx, ...))
  end
  return t
end

--- The traced copy of a chain (its own `traced` is itself, so a phase that
-- hands the chain on does not switch twice).
function M.traced_chain(c)
  local t = {}
  for k, v in pairs(c) do t[k] = v end
  for _, phase in ipairs(CHAIN_PHASES) do
    if TRACE_PHASE[phase] then -- the log phase runs after the response: not in the record
      local list = {}
      for i, step in ipairs(c[phase]) do list[i] = traced_step(step) end
      t[phase] = list
    end
  end
  t.traced = t
  return t
end

local function traced_handler(ctx, handler)
  local r = ctx._r
  C.mg_ffi_trace_step(r, TRACE_PHASE.handler, "handler", 7)
  return step_end(r, handler(ctx))
end

-- ---- running ----

-- ctx._step is the step running now: when it raises, the gateway's error
-- names its phase and plugin ("access of plugin key-auth: file:line: ...").
local function run_phase(list, ctx)
  for i = 1, #list do
    local step = list[i]
    ctx._step = step
    local status, body, headers = step.fn(ctx, step.conf)
    if status ~= nil then
      if type(status) ~= "number" then
        error(fmt("plugin %s returned a status that is not a number", step.name), 0)
      end
      ctx.exit_plugin = step.name
      return status, body, headers
    end
  end
end

-- Response-filter phases over a response the gateway produced (handler or
-- exit): its headers replace the defaults plugins set on ctx.response.headers.
local function filter_response(ctx, chain, status, body, headers)
  local resp = ctx.response
  resp.status, resp.body = status, body
  if headers and headers ~= resp.headers then
    local h = resp.headers
    for k, v in pairs(headers) do h[k] = v end
  end
  for i = 1, #chain.header_filter do
    local step = chain.header_filter[i]
    ctx._step = step
    step.fn(ctx, step.conf)
  end
  for i = 1, #chain.body_filter do
    local step = chain.body_filter[i]
    ctx._step = step
    -- the whole body is one chunk here: eof = true
    local b = step.fn(ctx, step.conf, resp.body, true)
    if b ~= nil then resp.body = b end
  end
  return resp.status, resp.body, resp.headers
end

-- The balancer phase of a proxy route: the first plugin that returns a
-- target ("host:port" as written in the upstream's targets) chooses it.
local function run_balancer(ctx, chain)
  for i = 1, #chain.balancer do
    local step = chain.balancer[i]
    ctx._step = step
    local target = step.fn(ctx, step.conf)
    if target ~= nil then
      if type(target) ~= "string" then
        error(fmt("plugin %s: the balancer phase must return a \"host:port\" target or nil", step.name), 0)
      end
      return target
    end
  end
end

--- The request task of a route with plugins: rewrite, access, then the
-- handler, or for a proxy route the balancer phase and `true[, target]`
-- (proxy now), then the response filters.
function M.run(ctx, chain, handler)
  local traced = rawget(ctx, "_traced")
  if traced then chain = chain.traced or chain end
  local status, body, headers = run_phase(chain.rewrite, ctx)
  if status == nil then status, body, headers = run_phase(chain.access, ctx) end
  if status == nil then
    if not handler then
      local target = run_balancer(ctx, chain)
      -- a proxied head without header_filter gets ctx.response.headers from C (mg_req_add_defaults)
      if not chain.has_header_filter then hand_defaults(ctx) end
      return true, target
    end
    ctx._step = nil -- the handler's own errors are the handler's
    if traced then
      status, body, headers = traced_handler(ctx, handler)
    else
      status, body, headers = handler(ctx)
    end
    if status == nil then
      local r = rawget(ctx, "response")
      if r then status, body, headers = r.status or 200, r.body, r.headers end
    end
    if status == nil then return nil end
  end
  -- gw.error(...): the gateway's own error answer, which the response filters do not see (as for its other errors)
  if chain.has_header_filter and not gw._is_error_mark(body) then
    return filter_response(ctx, chain, status, body, headers)
  end
  return status, body, headers -- C adds the defaults plugins set on ctx.response.headers
end

--- header_filter over a proxied response, whose status and fields C merged
-- into ctx.response; returns the status and headers to send.
function M.filter_upstream_head(ctx, chain)
  if rawget(ctx, "_traced") then chain = chain.traced or chain end
  local resp = ctx.response
  for i = 1, #chain.header_filter do
    local step = chain.header_filter[i]
    ctx._step = step
    step.fn(ctx, step.conf)
  end
  return resp.status, resp.headers
end

--- body_filter over one chunk of a proxied body (eof: the last call, with
-- whatever the filters still want to add). Returns the chunk to send.
function M.filter_upstream_chunk(ctx, chain, chunk, eof)
  if rawget(ctx, "_traced") then chain = chain.traced or chain end
  for i = 1, #chain.body_filter do
    local step = chain.body_filter[i]
    ctx._step = step
    local out = step.fn(ctx, step.conf, chunk, eof)
    if out ~= nil then
      if type(out) ~= "string" then
        error(fmt("plugin %s: body_filter must return a string or nil", step.name), 0)
      end
      chunk = out
    end
  end
  return chunk
end

--- A buffered proxied response (whole_body plugins): header_filter, then
-- body_filter once with the whole body. Returns status, headers, body.
function M.filter_whole(ctx, chain, body)
  if rawget(ctx, "_traced") then chain = chain.traced or chain end
  local resp = ctx.response
  for i = 1, #chain.header_filter do
    local step = chain.header_filter[i]
    ctx._step = step
    step.fn(ctx, step.conf)
  end
  resp.body = M.filter_upstream_chunk(ctx, chain, body, true)
  return resp.status, resp.headers, resp.body
end

--- init_worker of every plugin this VM loaded, once per worker at start
-- (in a task: it may yield; one failure does not stop the others).
function M.init_worker()
  local names = {}
  for name in pairs(loaded) do names[#names + 1] = name end
  sort(names)
  for _, name in ipairs(names) do
    local fn = loaded[name].init_worker
    if fn then
      local ok, err = pcall(fn)
      if not ok then gw.log("error", "plugin " .. name .. " failed in init_worker: " .. tostring(err)) end
    end
  end
end

--- The log phase: after the response went out, in its own task; one
-- plugin's error does not stop the others.
function M.log(ctx, chain)
  for i = 1, #chain.log do
    local step = chain.log[i]
    local ok, err = pcall(step.fn, ctx, step.conf)
    if not ok then
      -- the format of every phase's failure (src/mg_req.c mg_req_log_failure)
      gw.log("error", fmt("route %s: log of plugin %s: %s", ctx.route.name, step.name, tostring(err)))
    end
  end
end

return M
