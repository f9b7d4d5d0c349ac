-- moongate.ctx: the request context handed to handlers (and, later, plugins).
--
-- C creates ctx with route and _r (the request handle). The rest is built
-- lazily on first use, so a handler that never looks at the headers never
-- pays for them: ctx.trace_id, ctx.params, ctx.request, ctx.vars,
-- ctx.response, ctx.log.
-- Request data is read through FFI (see src/mg_ffi.h) so traces stay compiled.
local ffi = require "ffi"
local gw = gw

local C = ffi.C
local ffi_string = ffi.string
local rawget, rawset, setmetatable, getmetatable, error, type, pairs =
      rawget, rawset, setmetatable, getmetatable, error, type, pairs
local lower, gsub, char, tonumber = string.lower, string.gsub, string.char, tonumber
local tnew = require "table.new"

ffi.cdef [[
const char *mg_ffi_req_str(uintptr_t r, int what, size_t *len);
const char *mg_ffi_req_header(uintptr_t r, const char *name, size_t name_len, size_t *len);
int mg_ffi_req_header_count(uintptr_t r);
const char *mg_ffi_req_header_at(uintptr_t r, int i, size_t *name_len, const char **value, size_t *value_len);
const char *mg_ffi_req_body(uintptr_t r, size_t *len);
int mg_ffi_req_param_count(uintptr_t r);
const char *mg_ffi_req_param_at(uintptr_t r, int i, size_t *name_len, const char **value, size_t *value_len);
void mg_ffi_req_proxy_headers(uintptr_t r);
void mg_ffi_resp_defaults_begin(uintptr_t r);
int mg_ffi_resp_defaults_field(uintptr_t r, const char *name, size_t name_len, const char *value, size_t value_len);
void mg_ffi_resp_defaults_bad(uintptr_t r, int why);
]]

-- client_ip: the peer's address, or the client trusted_proxies name in X-Forwarded-For
local FIELD = { method = 0, path = 1, query = 2, target = 3, host = 4, remote = 5, http_version = 6, scheme = 7,
                client_ip = 15 }
local TLS_FIELD = { version = 8, cipher = 9, sni = 10 }
local CLIENT_FIELD = { subject = 11, san = 12, fingerprint = 13 }
local TLS_RESUMED = 14
local TRACE_ID = 16


local len_a = ffi.new("size_t[1]")
local len_b = ffi.new("size_t[1]")
local val_p = ffi.new("const char *[1]")

local function field(r, f)
  local p = C.mg_ffi_req_str(r, f, len_a)
  return p ~= nil and ffi_string(p, len_a[0]) or nil
end

-- ctx.request.tls: { version, cipher, sni, resumed, client } on a TLS listener, nil
-- otherwise; client = { subject, san = { "DNS:..", ... }, fingerprint } when
-- the client presented a (verified) certificate
local function load_tls(r)
  if field(r, FIELD.scheme) ~= "https" then return nil end
  local t = {}
  for k, f in pairs(TLS_FIELD) do t[k] = field(r, f) end
  t.resumed = field(r, TLS_RESUMED) ~= nil
  local subject = field(r, CLIENT_FIELD.subject)
  if subject then
    local san = {}
    for entry in (field(r, CLIENT_FIELD.san) or ""):gmatch("[^\n]+") do san[#san + 1] = entry end
    t.client = { subject = subject, san = san, fingerprint = field(r, CLIENT_FIELD.fingerprint) }
  end
  return t
end

local M = {}

local function handle(req)
  local r = rawget(req, 1)._r
  if not r then error("the request has ended: ctx is no longer usable", 3) end
  return r
end

local function unescape(s)
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

-- Decodes a query string into a table; repeated keys become arrays.
function M.parse_query(q)
  local args = {}
  for pair in q:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if not k then k, v = pair, true else v = unescape(v) end
    k = unescape(k)
    local old = args[k]
    if old == nil then
      args[k] = v
    elseif type(old) == "table" then
      old[#old + 1] = v
    else
      args[k] = { old, v }
    end
  end
  return args
end

local HEADERS_MT = {
  -- case-insensitive lookup: the table is keyed by lowercase names
  __index = function(t, k)
    if type(k) ~= "string" then return nil end
    return rawget(t, lower(k))
  end,
}

local function load_headers(r)
  local n = C.mg_ffi_req_header_count(r)
  local t = setmetatable({}, HEADERS_MT)
  for i = 0, n - 1 do
    local name = C.mg_ffi_req_header_at(r, i, len_a, val_p, len_b)
    local k = lower(ffi_string(name, len_a[0]))
    local v = ffi_string(val_p[0], len_b[0])
    local old = rawget(t, k)
    rawset(t, k, old and (old .. ", " .. v) or v)
  end
  return t
end

-- Response header tables are case-insensitive and keep the first spelling
-- seen: h["x-tag"] and h["X-Tag"] are one field, written as it was first
-- set (the upstream's spelling on proxied responses), so setting X-Tag when
-- the upstream sent x-tag replaces it instead of adding a second field. The
-- fields are real keys (pairs() sees them as spelled); the metatable keeps
-- lowercase name -> spelling, and the order fields were added in, which is
-- the order they are written in. Both live in the metatable itself (one
-- allocation less per table): mt.names and mt.order are mt, the order is its
-- array part and the names are keyed "\1" .. lowercase name, which no
-- metamethod (__index, __gc, ...) nor mt's own fields can be.

-- Index keys ("\1" .. lowercase), cached: every access to a header table
-- needs one, and the names a gateway uses repeat (bounded, for names made up
-- per request).
local key_cache, key_n = {}, 0
local function lname(k)
  local lk = key_cache[k]
  if lk then return lk end
  lk = "\1" .. lower(k)
  if key_n >= 1024 then key_cache, key_n = {}, 0 end
  key_n = key_n + 1
  key_cache[k] = lk
  return lk
end

local function hdr_index(t, k)
  if type(k) ~= "string" then return nil end
  local spelled = getmetatable(t).names[lname(k)]
  if spelled then return rawget(t, spelled) end
end

local function hdr_newindex(t, k, v)
  if type(k) ~= "string" then return rawset(t, k, v) end
  local mt = getmetatable(t)
  local names, lk = mt.names, lname(k)
  local spelled = names[lk]
  if spelled then
    rawset(t, spelled, v)
    if v == nil then
      names[lk] = nil
      local order = mt.order
      for i = 1, #order do
        if order[i] == spelled then table.remove(order, i) break end
      end
    end
  elseif v ~= nil then
    names[lk] = k
    mt.order[#mt.order + 1] = k
    rawset(t, k, v)
  end
end

--- A new case-insensitive header table (ctx.response.headers is one).
function M.new_headers()
  local mt = tnew(4, 8) -- sized for the few fields plugins set: no rehash as they come
  mt.__index, mt.__newindex, mt.names, mt.order = hdr_index, hdr_newindex, mt, mt
  return setmetatable(tnew(0, 4), mt)
end
local new_headers = M.new_headers

--- Puts a response (status, and its fields flat { name, value, ... } in
-- order) into ctx.response: a field that repeats becomes an array, and the
-- headers plugins set before the response stay only as defaults for names
-- the response does not have, after its own fields (as on the fast path).
function M.merge_response(ctx, status, flat)
  local resp = ctx.response
  resp.status = status
  local defaults, h, seen = resp.headers, new_headers(), {}
  for i = 1, #flat, 2 do
    local name, v = flat[i], flat[i + 1]
    local lk = lower(name)
    if seen[lk] then
      local cur = h[name]
      if type(cur) == "table" then cur[#cur + 1] = v else h[name] = { cur, v } end
    else
      seen[lk] = true
      h[name] = v
    end
  end
  local mt = getmetatable(defaults)
  local order = mt and mt.order
  if order then
    for i = 1, #order do
      local k = order[i]
      if h[k] == nil then h[k] = rawget(defaults, k) end
    end
  else
    for k, v in pairs(defaults) do
      if h[k] == nil then h[k] = v end
    end
  end
  resp.headers = h
end

-- One field of ctx.response.headers handed to C (see hand_defaults). false once C refused the set.
local BAD_NAME_TYPE, BAD_VALUE_TYPE = 1, 2 -- MG_FFI_BAD_* (src/mg_ffi.h)
local function hand_value(r, k, v)
  local t = type(v)
  if t == "number" then
    v = tostring(v)
  elseif t ~= "string" then
    C.mg_ffi_resp_defaults_bad(r, BAD_VALUE_TYPE)
    return false
  end
  return C.mg_ffi_resp_defaults_field(r, k, #k, v, #v) == 0
end

local function hand_field(r, k, v)
  if type(k) ~= "string" then
    C.mg_ffi_resp_defaults_bad(r, BAD_NAME_TYPE)
    return false
  end
  if type(v) ~= "table" then return hand_value(r, k, v) end
  if C.mg_ffi_resp_defaults_field(r, k, #k, nil, 0) ~= 0 then return false end
  for i = 1, #v do
    if not hand_value(r, k, rawget(v, i)) then return false end
  end
  return true
end

--- Hands the headers plugins set on ctx.response.headers to C when a proxy
-- route's request phases end, so the upstream's head gets them (as
-- defaults) without C reading ctx: the walk of mg_resp_add_lua
-- (src/mg_resp.c), in the same order, with its checks.
function M.hand_defaults(ctx)
  local r = rawget(ctx, "_r")
  C.mg_ffi_resp_defaults_begin(r)
  local resp = rawget(ctx, "response")
  if type(resp) ~= "table" then return end
  local h = resp.headers
  if type(h) ~= "table" then return end
  local mt = getmetatable(h)
  local order = type(mt) == "table" and mt.order
  if type(order) == "table" then
    for i = 1, #order do
      local k = rawget(order, i)
      local v = rawget(h, k)
      if v ~= nil and not hand_field(r, k, v) then return end
    end
  else
    for k, v in pairs(h) do
      if not hand_field(r, k, v) then return end
    end
  end
end

local REQ_METHODS = {}

--- ctx.request:header(name) -> the first value of a header, case-insensitive (no table built).
function REQ_METHODS.header(req, name)
  local r = handle(req)
  local p = C.mg_ffi_req_header(r, name, #name, len_a)
  if p == nil then return nil end
  return ffi_string(p, len_a[0])
end

--- ctx.request:set_header(name, value) / :clear_header(name): change what a
-- proxy route sends upstream (the client's header of that name is replaced
-- or removed). Does not change what ctx.request.headers shows.
function REQ_METHODS.set_header(req, name, value)
  local ctx = rawget(req, 1)
  local t = rawget(ctx, "_proxy_headers")
  if not t then
    t = {}
    rawset(ctx, "_proxy_headers", t)
    local r = rawget(ctx, "_r")
    if r then C.mg_ffi_req_proxy_headers(r) end -- else the request has ended: nothing reads it
  end
  if value == nil then
    t[lower(name)] = false
  else
    t[lower(name)] = tostring(value)
  end
end

function REQ_METHODS.clear_header(req, name)
  REQ_METHODS.set_header(req, name, nil)
end

--- ctx.request:body() -> the request body as a string ("" when none).
-- The body was read, within limits.max_body, before the handler started.
function REQ_METHODS.body(req)
  local r = handle(req)
  local p = C.mg_ffi_req_body(r, len_a)
  return ffi_string(p, len_a[0])
end

-- ctx.request.grpc: { service = "pkg.Service", method = "Method" } for a gRPC
-- call (content-type application/grpc[+...], path /service/method), else nil
local function load_grpc(req)
  local ct = req:header("content-type")
  if not ct or not (ct == "application/grpc" or ct:find("^application/grpc[+;]")) then return nil end
  local service, method = (req.path or ""):match("^/([^/]+)/([^/]+)$")
  if not service then return nil end
  return { service = service, method = method }
end

local REQ_MT = {
  __index = function(req, k)
    local m = REQ_METHODS[k]
    if m then return m end
    local r = handle(req)
    local v
    local f = FIELD[k]
    if f then
      v = field(r, f)
    elseif k == "tls" then
      v = load_tls(r)
    elseif k == "grpc" then
      v = load_grpc(req)
    elseif k == "headers" then
      v = load_headers(r)
    elseif k == "args" then
      v = M.parse_query(req.query or "")
    else
      return nil
    end
    rawset(req, k, v)
    return v
  end,
}

-- Sizes ("64k", "1m", a number of bytes) and durations (seconds, or "30s", "250ms") of ctx:websocket's options.
local SIZE_UNIT = { [""] = 1, b = 1, k = 1024, m = 1024 * 1024, g = 1024 * 1024 * 1024 }
local function ws_size(v, what)
  if type(v) == "number" and v >= 1 then return math.floor(v) end
  local n, u = tostring(v):lower():match("^(%d+)([bkmg]?)$")
  if type(v) ~= "string" or not n or tonumber(n) < 1 then
    error(("ctx:websocket: %s must be a size > 0 like \"64k\" or \"1m\" (or bytes); it cannot be turned off"):format(what), 3)
  end
  return tonumber(n) * SIZE_UNIT[u]
end

local function ws_duration_ms(v)
  if type(v) == "number" and v >= 0 then return math.ceil(v * 1000) end
  local n, u = type(v) == "string" and v:match("^(%d+%.?%d*)(m?s)$")
  if not n then error("ctx:websocket: timeout must be seconds or a duration like \"30s\" (0: none)", 3) end
  return math.ceil(tonumber(n) * (u == "ms" and 1 or 1000))
end

local WS_OPTIONS = { max_frame = true, max_message = true, timeout = true, pings = true, protocols = true }

--- ctx:websocket{ max_frame, max_message, timeout, pings, protocols } -> ws, or nil, why
-- (handler routes only): answers the handshake and turns the connection into
-- a WebSocket for this handler (see docs/websocket.md).
local function ctx_websocket(ctx, opts)
  local r = rawget(ctx, "_r")
  if not r then error("the request has ended: ctx is no longer usable", 2) end
  opts = opts or {}
  if type(opts) ~= "table" then error("ctx:websocket expects a table of options", 2) end
  for k in pairs(opts) do
    if not WS_OPTIONS[k] then error(("ctx:websocket: unknown option '%s'"):format(tostring(k)), 2) end
  end
  local max_frame = opts.max_frame and ws_size(opts.max_frame, "max_frame") or 1024 * 1024
  local max_message = opts.max_message and ws_size(opts.max_message, "max_message") or math.max(max_frame, 1024 * 1024)
  if max_frame > max_message then max_frame = max_message end
  local timeout = opts.timeout ~= nil and ws_duration_ms(opts.timeout) or nil
  if opts.pings ~= nil and type(opts.pings) ~= "boolean" then error("ctx:websocket: pings must be a boolean", 2) end
  if opts.protocols ~= nil and type(opts.protocols) ~= "table" then
    error("ctx:websocket: protocols must be a list of subprotocol names", 2)
  end
  return gw._websocket(r, max_frame, max_message, timeout, opts.pings, opts.protocols)
end

local function ctx_handle(ctx)
  local r = rawget(ctx, "_r")
  if not r then error("the request has ended: ctx is no longer usable", 4) end
  return r
end

local CTX_LAZY = {
  -- its ctx in the array part: one allocation (colocated), until a field is cached
  request = function(ctx) return setmetatable({ ctx }, REQ_MT) end,
  vars = function() return {} end,
  trace_id = function(ctx) return field(ctx_handle(ctx), TRACE_ID) end,
  params = function(ctx)
    local r = ctx_handle(ctx)
    local t = {}
    for i = 0, C.mg_ffi_req_param_count(r) - 1 do
      local name = C.mg_ffi_req_param_at(r, i, len_a, val_p, len_b)
      t[ffi_string(name, len_a[0])] = ffi_string(val_p[0], len_b[0])
    end
    return t
  end,
  response = function() return { headers = new_headers() } end,
}

M.mt = {
  merge_response = M.merge_response, -- reached from C through the metatable
  __index = function(ctx, k)
    if k == "log" then return gw.log end
    if k == "websocket" then return ctx_websocket end
    local make = CTX_LAZY[k]
    if not make then return nil end
    local v = make(ctx)
    rawset(ctx, k, v)
    return v
  end,
}

return M
