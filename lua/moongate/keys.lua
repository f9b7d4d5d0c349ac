-- moongate.keys: what a limit or a balancer keys on ("consumer", "ip",
-- "route", "header:<Name>"). One spelling for every plugin: a key is checked
-- when the config loads (a typo is an error naming the valid forms) and
-- compiled once into a resolver, so a request does no parsing of the spec.
--
--   local k = assert(keys.compile("header:X-User"))
--   k.resolve(ctx)  -- the request's X-User header, or nil (nothing to key on)
--
-- The client address is keys.client_ip(ctx), for every plugin that looks at it.
local type, tostring, ipairs, concat = type, tostring, ipairs, table.concat

local M = {}

-- RFC 9110 token: what a header name may be made of
local TOKEN = "^[!#$%%&'*+%-.^_`|~%w]+$"
M.TOKEN = TOKEN

--- The client's address (no port): ctx.request.client_ip (the peer, or behind
-- trusted_proxies the client they name; the core caches it on the request),
-- else the host part of ctx.request.remote (a request table without it).
function M.client_ip(ctx)
  local req = ctx.request
  local ip = req.client_ip
  if ip then return ip end
  local remote = req.remote
  return remote and remote:match("^(.*):%d+$") or nil
end

local client_ip = M.client_ip

local function consumer(ctx)
  local c = ctx.consumer
  if c == nil or type(c) == "string" then return c end
  return tostring(c) -- e.g. a numeric jwt `sub`
end

local function route(ctx) return ctx.route.declared_at end

-- kind -> { form as written in docs, takes an argument?, make(arg) -> resolver }
local KINDS = {
  consumer = { form = '"consumer"', make = function() return consumer end },
  ip = { form = '"ip"', make = function() return client_ip end },
  route = { form = '"route"', make = function() return route end },
  header = { form = '"header:<Name>"', arg = "a header name", arg_ok = function(a) return a:match(TOKEN) end,
             make = function(name) return function(ctx) return ctx.request:header(name) end end },
  -- only where the caller knows the route's parameters (upstream hash_key)
  param = { form = '"param:<name>"', arg = "a route parameter name", arg_ok = function(a) return a:match("^[%a_][%w_]*$") end },
}

M.DEFAULT_KINDS = { "consumer", "ip", "route", "header" }

--- The valid forms, for messages: "consumer", "ip", "route" or "header:<Name>".
function M.forms(kinds)
  kinds = kinds or M.DEFAULT_KINDS
  local out = {}
  for i, k in ipairs(kinds) do out[i] = KINDS[k].form end
  if #out == 1 then return out[1] end
  return concat(out, ", ", 1, #out - 1) .. " or " .. out[#out]
end

local function allowed(kinds, kind)
  for _, k in ipairs(kinds) do if k == kind then return true end end
  return false
end

--- Parses a key spec. Returns kind, argument (or nil), or nil and a message
-- naming the valid forms.
function M.parse(spec, kinds)
  kinds = kinds or M.DEFAULT_KINDS
  if type(spec) ~= "string" then
    return nil, ("expected a key (%s), got %s"):format(M.forms(kinds), type(spec))
  end
  local kind, arg = spec:match("^(%l+):(.*)$")
  if not kind then kind = spec end
  local k = KINDS[kind]
  if not k or not allowed(kinds, kind) or (arg ~= nil) ~= (k.arg ~= nil) then
    return nil, ("'%s' is not a key: use %s"):format(spec, M.forms(kinds))
  end
  if arg and not k.arg_ok(arg) then
    return nil, ("'%s': '%s' is not %s"):format(spec, arg, k.arg)
  end
  return kind, arg
end

--- Compiles a key spec into { spec, kind, arg, resolve = function(ctx) -> string|nil },
-- or nil and a message. resolve returns nil when the request has nothing to
-- key on (no consumer, no such header): callers do not limit it.
function M.compile(spec, kinds)
  local kind, arg = M.parse(spec, kinds)
  if not kind then return nil, arg end
  local make = KINDS[kind].make
  if not make then return nil, ("'%s': a %s key is not available here"):format(spec, kind) end
  return { spec = spec, kind = kind, arg = arg, resolve = make(arg) }
end

return M
