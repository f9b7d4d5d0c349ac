-- moongate.config: the configuration DSL.
--
-- A config file is Lua run in its own environment holding the directives
-- below (and the normal globals, read-only). Every directive records the file
-- and line it was written on, so every error names them. Loading produces a
-- plain table; mg_config.c reads the settings and compiles the routes into the
-- C router.
-- Split in three: this file (settings, listeners, routes, groups),
-- config_upstream.lua (the upstream directive) and config_resolve.lua (groups
-- flattened into routes, plugin chains); config_check.lua is their shared
-- vocabulary (located errors, the one unknown-field check).
local check = require "moongate.config_check"
local upstream_mod = require "moongate.config_upstream"
local redis_mod = require "moongate.config_redis"
local resolve_mod = require "moongate.config_resolve"

check.dsl_module()

local M = {}

local type, pairs, ipairs, tostring = type, pairs, ipairs, tostring
local setmetatable, setfenv, loadfile, error, pcall = setmetatable, setfenv, loadfile, error, pcall
local fmt = string.format
local fail, where, Located = check.fail, check.where, check.Located
local check_fields, list_field = check.check_fields, check.list_field
local size_value = check.size

-- A config file's chunk is straight-line code: one call per directive. Each
-- directive's trace would end returning to a new call site in it, so the JIT
-- would compile a side trace per route until it gives up (most of a
-- 10,000-route load); interpreted, the chunk runs once at no such cost. Only
-- the chunk itself: the functions it defines (handlers) are compiled as usual.
local function load_config_chunk(file)
  local chunk, err = loadfile(file)
  if chunk then jit.off(chunk) end
  return chunk, err
end

--- Parses "250ms", "10s", "2m", "1h" or a number of seconds into milliseconds.
M.duration = check.duration

local METHODS = {
  GET = true, HEAD = true, POST = true, PUT = true, DELETE = true,
  PATCH = true, OPTIONS = true, TRACE = true, CONNECT = true,
}

-- The fields each config table takes (true: a named field; the positional
-- entries some take are checked by their directive).
local LISTEN_FIELDS = { tls = true, http2 = true }
local LISTEN_TLS_FIELDS = { cert = true, key = true, certificates = true, client_ca = true, client_auth = true }
local CERT_FIELDS = { cert = true, key = true, client_ca = true, client_auth = true }
local ROUTE_FIELDS = { method = true, methods = true, path = true, host = true,
                       handler = true, upstream = true, name = true, timeout = true, max_body = true,
                       plugins = true, upgrade = true }
local GROUP_FIELDS = { routes = true, host = true, timeout = true, max_body = true, plugins = true }
local LIMIT_FIELDS = { max_request_line = true, max_header_size = true,
                       max_headers = true, max_body = true }
local TIMEOUT_FIELDS = { header = true, body = true, keepalive = true, send = true,
                         request = true, drain = true, watchdog = true, tls_session = true, tunnel = true }
local TRACING_FIELDS = { endpoint = true, ratio = true, parent_based = true, service_name = true,
                         batch = true, queue = true, timeout = true, interval = true, headers = true }

-- A plugins table's check; its messages name the owner: what ("plugins"), or
-- what and name ("route", "/x"), joined only when there is a table to check
-- (most routes have none).
local function check_plugins_field(p, what, name)
  if p == nil then return nil end
  if name then what = what .. " " .. name end
  if type(p) ~= "table" then fail("%s: plugins must be a table { [\"name\"] = conf, ... }", what) end
  for k, v in pairs(p) do
    if type(k) ~= "string" then fail("%s: plugins must be keyed by plugin name (found [%s])", what, tostring(k)) end
    if v ~= false and v ~= true and type(v) ~= "table" then
      fail("%s: plugin %s: the value must be a table (its conf), true, or false (turns off an inherited one)", what, k)
    end
  end
  return p
end

-- A method name as routes keep it (upper case), or "*".
local function method_token(name)
  if type(name) ~= "string" then fail("route methods must be strings") end
  local up = name:upper()
  if up ~= "*" and not METHODS[up] and not up:match("^[!#$%%&'*+%-.^_`|~%w]+$") then
    fail("route method '%s' is not a valid method token", name)
  end
  return up
end

local function normalize_methods(spec)
  local m = spec.methods or spec.method
  if m == nil or m == "*" or m == "ANY" then return "*" end
  if type(m) == "string" then -- the usual method = "GET"
    local up = method_token(m)
    return up == "*" and "*" or { up }
  end
  if type(m) ~= "table" or #m == 0 then
    fail("route 'method' must be a method name, a list of them, or \"*\"")
  end
  local out = {}
  for _, name in ipairs(m) do
    local up = method_token(name)
    if up == "*" then return "*" end
    out[#out + 1] = up
  end
  return out
end

local function new_state(path)
  return {
    file = path,
    dir = path:match("^(.*)/[^/]*$") or ".",
    settings = {
      listen = {}, listen_at = {}, workers = 0, plugins_dirs = {}, limits = {}, timeouts = {}, http2 = {},
      access_log = nil, error_log = nil,
    },
    routes = {},     -- in declaration order
    upstreams = {},  -- by name
    upstream_list = {},
    redis = {},      -- redis "name" { } blocks, by name (config_redis.lua)
    redis_list = {},
    global_plugins = {}, -- name -> { conf, file, line }
    groups = {},     -- open function-style groups (a stack)
    group_list = {}, -- every group, in declaration order
    unfinished = {}, -- `group "/x"` / `upstream "x"` still waiting for their body
    set_at = {},     -- directive or setting -> "file:line" where it was given
    warnings = {},   -- "file:line: ..." for what is valid but most likely a mistake (logged by the validating load)
  }
end

local function make_env(st)
  local env = {}
  local s = st.settings

  -- A setting given twice would silently drop the first: refuse it.
  local function once(name)
    local file, line = where()
    if st.set_at[name] then fail("%s is already set at %s", name, st.set_at[name]) end
    st.set_at[name] = file .. ":" .. line
  end

  -- a path from the config, relative to the config file's directory
  local function from_config_dir(p) return check.from_dir(st.dir, p) end

  local function path_of(p, what)
    if type(p) ~= "string" or p == "" then fail("listen tls: '%s' expects a file path", what) end
    return from_config_dir(p)
  end

  -- Client certificates (mTLS) from t.client_ca / t.client_auth, else `inherited`:
  -- { ca = path, auth = "required" | "optional" }, or false for none.
  local function client_auth_of(t, inherited, what)
    local auth = t.client_auth
    if auth == "off" then return false end
    if auth ~= nil and auth ~= "required" and auth ~= "optional" then
      fail("%s: client_auth must be \"required\", \"optional\" or \"off\", got %s", what, tostring(auth))
    end
    if t.client_ca == nil then
      if auth then
        if not inherited then fail("%s: client_auth needs client_ca (the CA that signs client certificates)", what) end
        return { ca = inherited.ca, auth = auth }
      end
      return inherited
    end
    return { ca = path_of(t.client_ca, "client_ca"), auth = auth or "required" }
  end

  -- tls = { cert = "a.pem", key = "a.key" }, or for several certificates
  -- chosen by SNI: tls = { certificates = { { cert = ..., key = ... }, ... } };
  -- mTLS: client_ca = "clients-ca.pem", client_auth = "required" | "optional",
  -- for the listener and/or per certificate (i.e. per SNI name; "off" there
  -- turns the listener's off for that name)
  local function tls_conf(tls)
    if type(tls) ~= "table" then fail("listen tls expects a table { cert = ..., key = ... }") end
    check_fields(tls, LISTEN_TLS_FIELDS, "listen tls")
    if tls.client_auth == "off" then fail("listen tls: client_auth = \"off\" is for a certificate; leave it out here") end
    local listener_auth = client_auth_of(tls, false, "listen tls")
    local list = tls.certificates or { { cert = tls.cert, key = tls.key } }
    if tls.certificates and (tls.cert or tls.key) then
      fail("listen tls: give either cert/key or certificates, not both")
    end
    if type(list) ~= "table" or #list == 0 then fail("listen tls: certificates expects a list of { cert = ..., key = ... }") end
    list_field(list, "listen tls certificates")
    local certs = {}
    for i, c in ipairs(list) do
      if type(c) ~= "table" then fail("listen tls: certificates[%d] expects { cert = ..., key = ... }", i) end
      check_fields(c, CERT_FIELDS, ("listen tls certificates[%d]"):format(i))
      local auth = listener_auth
      if tls.certificates then auth = client_auth_of(c, listener_auth, ("listen tls: certificates[%d]"):format(i)) end
      certs[i] = { cert = path_of(c.cert, "cert"), key = path_of(c.key, "key"),
                   client_ca = auth and auth.ca or nil, client_auth = auth and auth.auth or nil }
    end
    local file, line = where()
    return { certificates = certs, where = file .. ":" .. line }
  end

  local function listen_addr(addr)
    if type(addr) ~= "string" or not addr:match(":%d+$") then
      fail("listen expects \"host:port\" (e.g. \"0.0.0.0:8080\" or \"[::1]:8080\"), got %s", tostring(addr))
    end
    return addr
  end

  -- listen "ip:port" | listen { "ip:port", ..., tls = {...}, http2 = bool }: an
  -- entry is the address string, or { addr, tls, http2 } when either is given;
  -- listen_at[i] is where entry i was written (mg_config.c names it when two
  -- entries are the same address)
  local function add_listen(entry)
    local file, line = where()
    if #s.listen >= 16 then fail("at most 16 listen addresses (MG_MAX_LISTEN)") end
    s.listen[#s.listen + 1] = entry
    s.listen_at[#s.listen] = file .. ":" .. line
  end

  function env.listen(addr)
    if type(addr) ~= "table" then
      add_listen(listen_addr(addr))
      return
    end
    check_fields(addr, LISTEN_FIELDS, "listen", true)
    if #addr == 0 then fail("listen expects at least one \"host:port\"") end
    for k in pairs(addr) do
      if type(k) == "number" and (k < 1 or k > #addr or k % 1 ~= 0) then
        fail("listen: entry [%s] is outside the list 1..%d", tostring(k), #addr)
      end
    end
    if addr.http2 ~= nil and type(addr.http2) ~= "boolean" then fail("listen: http2 must be true or false") end
    local tls = addr.tls ~= nil and tls_conf(addr.tls) or nil
    for _, a in ipairs(addr) do
      a = listen_addr(a)
      if tls or addr.http2 ~= nil then
        add_listen({ addr = a, tls = tls, http2 = addr.http2 })
      else
        add_listen(a)
      end
    end
  end

  function env.workers(n)
    if type(n) ~= "number" or n < 1 or n > 256 or n % 1 ~= 0 then
      fail("workers expects an integer between 1 and 256")
    end
    once("workers")
    s.workers = n
  end

  function env.plugins_dir(dir)
    if type(dir) ~= "string" then fail("plugins_dir expects a directory path") end
    dir = from_config_dir(dir)
    s.plugins_dirs[#s.plugins_dirs + 1] = dir
  end

  function env.access_log(path)
    if type(path) ~= "string" then fail("access_log expects a path, \"stdout\", \"stderr\" or \"off\"") end
    once("access_log")
    s.access_log = path
  end

  function env.error_log(path)
    if type(path) ~= "string" then fail("error_log expects a path, \"stdout\" or \"stderr\"") end
    once("error_log")
    s.error_log = path
  end

  function env.limits(t)
    if type(t) ~= "table" then fail("limits expects a table") end
    check_fields(t, LIMIT_FIELDS, "limits")
    for k, v in pairs(t) do
      local n = size_value(v)
      if not n or n < 1 then fail("limits.%s must be a positive size (e.g. 8192 or \"8k\")", k) end
      once("limits." .. k)
      s.limits[k] = n
    end
  end

  -- http2 { max_concurrent_streams = 128, stream_window = "256k" }: HTTP/2 on the listeners that have it
  function env.http2(t)
    if type(t) ~= "table" then fail("http2 expects a table { max_concurrent_streams = ..., stream_window = ... }") end
    check_fields(t, { max_concurrent_streams = true, stream_window = true }, "http2")
    local h = {}
    if t.max_concurrent_streams ~= nil then
      local n = t.max_concurrent_streams
      if type(n) ~= "number" or n % 1 ~= 0 or n < 1 or n > 100000 then
        fail("http2.max_concurrent_streams must be an integer between 1 and 100000")
      end
      h.max_concurrent_streams = n
    end
    if t.stream_window ~= nil then
      local n = size_value(t.stream_window)
      if not n or n < 65535 or n > 2147483647 then
        fail("http2.stream_window must be a size between 64k and 2g (e.g. \"256k\")")
      end
      h.stream_window = n
    end
    once("http2")
    s.http2 = h
  end

  function env.timeouts(t)
    if type(t) ~= "table" then fail("timeouts expects a table") end
    check_fields(t, TIMEOUT_FIELDS, "timeouts")
    for k, v in pairs(t) do
      local ms = M.duration(v)
      if not ms or ms < 1 then
        -- none can be turned off: a peer that vanished without a FIN would hold its connection (and permit) for ever
        fail("timeouts.%s must be a duration > 0 like \"10s\" or \"250ms\" (a timeout cannot be turned off; give a long one, e.g. \"24h\")", k)
      end
      once("timeouts." .. k)
      s.timeouts[k] = ms
    end
  end

  env.upstream = upstream_mod.directive(st)
  env.redis = redis_mod.directive(st)

  -- plugins { ["key-auth"] = { ... }, ... }: plugins for every route (routes and groups override)
  function env.plugins(t)
    if t == nil then fail("plugins expects a table { [\"name\"] = conf, ... }") end
    check_plugins_field(t, "plugins")
    local file, line = where()
    for k, v in pairs(t) do
      local old = st.global_plugins[k]
      if old then fail("plugins: %s is already configured at %s:%d", k, old.file, old.line) end
      if v == false then fail("plugins: %s = false removes nothing here (false turns off an inherited plugin in a group or route)", k) end
      st.global_plugins[k] = { conf = v, file = file, line = line }
    end
  end

  -- shared_dict("name", "10m"): a dict shared by all workers (gw.shared.name)
  function env.shared_dict(name, size)
    if type(name) ~= "string" or not name:match("^[%w_]+$") then
      fail("shared_dict expects a name made of letters, digits and '_'")
    end
    local bytes = size_value(size or "1m")
    if not bytes or bytes < 1024 then fail("shared_dict %s: size must be at least 1k (e.g. \"10m\")", name) end
    gw._define_shared(name, bytes)
  end

  -- admin_socket "/run/moongate.sock": where gatewayctl finds this gateway ("off": none)
  function env.admin_socket(path)
    if type(path) ~= "string" then fail("admin_socket expects a path or \"off\"") end
    if path ~= "off" then path = from_config_dir(path) end
    once("admin_socket")
    s.admin_socket = path
  end

  -- admin_listen "127.0.0.1:9901": GET /metrics (Prometheus) and /status over HTTP
  function env.admin_listen(addr)
    if type(addr) ~= "string" or not addr:match(":%d+$") then fail("admin_listen expects \"host:port\"") end
    once("admin_listen")
    s.admin_listen = addr
  end

  -- tls_ticket_keys { "keys/current.key", "keys/previous.key" }: TLS session
  -- ticket keys from files (80 random bytes each, nginx's format), shared by
  -- several gateway processes; the first encrypts, all decrypt
  function env.tls_ticket_keys(list)
    if type(list) ~= "table" or #list == 0 or #list > 4 then
      fail("tls_ticket_keys expects a list of 1 to 4 key files")
    end
    list_field(list, "tls_ticket_keys")
    local files = {}
    for i, p in ipairs(list) do
      if type(p) ~= "string" or p == "" then fail("tls_ticket_keys: entry %d must be a file path", i) end
      files[i] = from_config_dir(p)
    end
    once("tls_ticket_keys")
    local f, l = where()
    files.where = f .. ":" .. l
    s.tls_ticket_keys = files
  end

  -- hosts_file "/etc/hosts": where upstream host names are looked up before DNS
  function env.hosts_file(path)
    if type(path) ~= "string" then fail("hosts_file expects a path") end
    path = from_config_dir(path)
    once("hosts_file")
    s.hosts_file = path
  end

  -- error_header "X-Gateway-Error": name the error kind in a response header (off by default)
  function env.error_header(name)
    if type(name) ~= "string" or not name:match("^[!#$%%&'*+%-.^_`|~%w]+$") then
      fail("error_header expects a header name")
    end
    once("error_header")
    s.error_header = name
  end

  -- tracing { endpoint = "http://127.0.0.1:4318/v1/traces", ratio = 0.1, ... }:
  -- OpenTelemetry traces (OTLP/HTTP, JSON) and the requests `gatewayctl trace`
  -- keeps as recent ones (docs/observability.md). Without an endpoint the
  -- sampled requests are only kept for the timeline.
  function env.tracing(t)
    if type(t) ~= "table" then fail("tracing expects a table { endpoint = \"http://host:4318/v1/traces\", ratio = ... }") end
    check_fields(t, TRACING_FIELDS, "tracing")
    local out = { ratio = 1, parent_based = true, service_name = "moongate", batch = 512, queue = 8192,
                  timeout = 5000, interval = 1000, headers = {} }
    if t.endpoint ~= nil then
      if type(t.endpoint) ~= "string" then fail("tracing.endpoint must be a URL like \"http://127.0.0.1:4318/v1/traces\"") end
      local scheme, authority, path = t.endpoint:match("^(https?)://([^/?#]+)(/[^#]*)$")
      if not scheme then
        if t.endpoint:match("^https?://[^/]+$") then
          fail("tracing.endpoint %s has no path: an OpenTelemetry Collector takes traces at /v1/traces", t.endpoint)
        end
        fail("tracing.endpoint must be an http:// or https:// URL with a path, got %s", t.endpoint)
      end
      local host, port = authority:match("^(%[[%x:.]+%]):?(%d*)$")
      if not host then host, port = authority:match("^([%w.%-]+):?(%d*)$") end
      if not host or (port ~= "" and (tonumber(port) < 1 or tonumber(port) > 65535)) then
        fail("tracing.endpoint: '%s' is not host[:port]", authority)
      end
      if path:find("[%s%c]") then fail("tracing.endpoint: the path must not hold spaces or control characters") end
      out.endpoint = t.endpoint
    end
    if t.ratio ~= nil then
      if type(t.ratio) ~= "number" or t.ratio ~= t.ratio or t.ratio < 0 or t.ratio > 1 then
        fail("tracing.ratio must be a number from 0 to 1 (the share of new traces sampled)")
      end
      out.ratio = t.ratio
    end
    if t.parent_based ~= nil then
      if type(t.parent_based) ~= "boolean" then fail("tracing.parent_based must be true or false") end
      out.parent_based = t.parent_based
    end
    if t.service_name ~= nil then
      if type(t.service_name) ~= "string" or t.service_name == "" then
        fail("tracing.service_name must be a non-empty string")
      end
      out.service_name = t.service_name
    end
    for _, k in ipairs({ "batch", "queue" }) do
      local v = t[k]
      if v ~= nil then
        if type(v) ~= "number" or v % 1 ~= 0 or v < 1 or v > 1000000 then
          fail("tracing.%s must be an integer from 1 to 1000000 (spans)", k)
        end
        out[k] = v
      end
    end
    if out.queue < out.batch then
      fail("tracing.queue (%d) must hold at least one batch (%d spans)", out.queue, out.batch)
    end
    for _, k in ipairs({ "timeout", "interval" }) do
      if t[k] ~= nil then
        local ms = M.duration(t[k])
        if not ms or ms < 1 or ms > 600000 then fail("tracing.%s must be a duration like \"5s\" or \"500ms\"", k) end
        out[k] = ms
      end
    end
    if t.headers ~= nil then
      if type(t.headers) ~= "table" then fail("tracing.headers must be a table { [\"Name\"] = \"value\" }") end
      for k, v in pairs(t.headers) do
        if type(k) ~= "string" or not k:match("^[!#$%%&'*+%-.^_`|~%w]+$") then
          fail("tracing.headers: '%s' is not a header name", tostring(k))
        end
        if type(v) ~= "string" or v:find("[%c]") then
          fail("tracing.headers: the value of %s must be a string without control characters", k)
        end
        local lk = k:lower()
        if lk == "host" or lk == "content-length" or lk == "content-type" or lk == "connection"
           or lk == "transfer-encoding" then
          fail("tracing.headers: %s is the exporter's own", k)
        end
        out.headers[#out.headers + 1] = k .. ": " .. v
      end
      table.sort(out.headers)
    end
    once("tracing")
    s.tracing = out
  end

  -- trusted_proxies { "10.0.0.0/8", "::1" }: the peers (load balancers, CDNs)
  -- whose X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host and Forwarded
  -- are believed; nobody's by default. mg_config.c parses each entry (an
  -- address or a CIDR) and names this line when one is wrong (docs/proxy.md).
  function env.trusted_proxies(list)
    if type(list) ~= "table" or #list == 0 then
      fail("trusted_proxies expects a list of addresses or CIDRs, e.g. { \"10.0.0.0/8\", \"::1\" }")
    end
    if s.trusted_proxies then fail("trusted_proxies is already given at %s", s.trusted_proxies.where) end
    list_field(list, "trusted_proxies")
    local out = {}
    for i, v in ipairs(list) do
      if type(v) ~= "string" then fail("trusted_proxies: entry %d must be a string like \"10.0.0.0/8\"", i) end
      out[i] = v
    end
    local f, l = where()
    out.where = f .. ":" .. l
    s.trusted_proxies = out
  end

  function env.route(spec)
    if type(spec) ~= "table" then fail("route expects a table: route { path = ..., handler = ... }") end
    check_fields(spec, ROUTE_FIELDS, "route")
    if type(spec.path) ~= "string" or spec.path:sub(1, 1) ~= "/" then
      fail("route 'path' must be a string starting with '/'")
    end
    if spec.upstream ~= nil and spec.handler ~= nil then
      fail("route %s has both a handler and an upstream; give one", spec.path)
    end
    if spec.upstream ~= nil and type(spec.upstream) ~= "string" then
      fail("route 'upstream' must be the name of an upstream")
    end
    if spec.upstream == nil and type(spec.handler) ~= "function" then
      fail("route %s needs a handler function or an upstream", spec.path)
    end
    if spec.method ~= nil and spec.methods ~= nil then
      fail("route %s: give method or methods, not both", spec.path)
    end
    if type(spec.methods or spec.method) == "table" then list_field(spec.methods or spec.method, "route methods") end
    if spec.host ~= nil and type(spec.host) ~= "string" then fail("route 'host' must be a string") end
    if spec.name ~= nil and type(spec.name) ~= "string" then fail("route 'name' must be a string") end
    local timeout
    if spec.timeout ~= nil then
      timeout = M.duration(spec.timeout)
      if not timeout or timeout < 1 then
        fail("route 'timeout' must be a duration like \"800ms\" (not 0: every request has a deadline; " ..
             "a long-lived stream takes a long one, e.g. \"24h\")")
      end
    end
    local max_body
    if spec.max_body ~= nil then
      max_body = size_value(spec.max_body)
      if not max_body then fail("route 'max_body' must be a size like \"10m\" (0: no limit)") end
    end
    -- upgrade = { "websocket" } (the default on proxy routes): the Upgrade tokens forwarded; false or {}: none
    local upgrade
    if spec.upgrade ~= nil then
      if spec.upstream == nil then
        fail("route %s: 'upgrade' is for proxy routes (a handler accepts a WebSocket with ctx:websocket())", spec.path)
      end
      if spec.upgrade == false then
        upgrade = {}
      elseif type(spec.upgrade) ~= "table" then
        fail("route %s: 'upgrade' must be a list of protocol tokens like { \"websocket\" }, or false", spec.path)
      else
        list_field(spec.upgrade, "route upgrade")
        upgrade = {}
        for i, tok in ipairs(spec.upgrade) do
          if type(tok) ~= "string" or not tok:match("^[!#$%%&'*+%-.^_`|~%w]+$") then
            fail("route %s: upgrade[%d] must be a protocol token like \"websocket\"", spec.path, i)
          end
          upgrade[i] = tok:lower()
        end
        local has_ws = false
        for _, tok in ipairs(upgrade) do has_ws = has_ws or tok == "websocket" end
        for i, tok in ipairs(upgrade) do
          if not has_ws and (check.near_miss(tok, "websocket") or tok == "ws" or tok == "wss") then
            -- a valid token, so not an error; but clients send "websocket", which this route would strip
            local file, line = where()
            st.warnings[#st.warnings + 1] = ("%s:%d: route %s: upgrade token \"%s\" is not \"websocket\": WebSocket "
              .. "clients send Upgrade: websocket, which this route does not forward"):format(file, line, spec.path, spec.upgrade[i])
          end
        end
      end
    elseif spec.upstream ~= nil then
      upgrade = { "websocket" }
    end
    local file, line = where()
    local r = {
      kind = "route", max_body = max_body, upgrade = upgrade, plugins = check_plugins_field(spec.plugins, "route", spec.path),
      path = spec.path, host = spec.host, name = spec.name,
      methods = normalize_methods(spec), handler = spec.handler, upstream = spec.upstream, timeout = timeout,
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
    local got_body, file, line = check.awaiting_body(st,
      ("group %s has no body: write group \"%s\" { routes = { ... } }"):format(prefix, prefix))
    local g = { kind = "group", prefix = prefix:gsub("/$", ""), file = file, line = line,
                parent = st.groups[#st.groups] }
    return function(body)
      got_body()
      if not g.listed then
        g.listed = true
        st.group_list[#st.group_list + 1] = g
      end
      if type(body) == "function" then
        st.groups[#st.groups + 1] = g
        body()
        st.groups[#st.groups] = nil
      elseif type(body) == "table" then
        check_fields(body, GROUP_FIELDS, "group " .. prefix, true)
        if body.routes ~= nil and #body > 0 then
          fail("group %s: give its routes in routes = { ... } or as the list, not both", prefix)
        end
        if body.host ~= nil and type(body.host) ~= "string" then fail("group 'host' must be a string") end
        g.host = body.host
        g.plugins = check_plugins_field(body.plugins, "group", prefix)
        if body.max_body ~= nil then
          g.max_body = size_value(body.max_body)
          if not g.max_body then fail("group 'max_body' must be a size like \"10m\" (0: no limit)") end
        end
        if body.timeout ~= nil then
          g.timeout = M.duration(body.timeout)
          if not g.timeout or g.timeout < 1 then
            fail("group 'timeout' must be a duration like \"800ms\" (not 0: every request has a deadline)")
          end
        end
        local items = body.routes or body
        if body.routes ~= nil then list_field(body.routes, "group " .. prefix .. " routes") end
        for _, item in ipairs(items) do
          if type(item) ~= "table" or (item.kind ~= "route" and item.kind ~= "group") then
            fail("group %s: 'routes' must hold route{...} or group(...) entries", prefix)
          end
          -- the nearest enclosing group wins: re-parent items created just outside us
          if item.parent == g.parent then
            item.parent = g
          elseif item.parent ~= g then
            fail("group %s: %s %s was declared in %s, not where this group is", prefix, item.kind,
                 item.path or item.prefix, item.parent and ("group " .. item.parent.prefix) or "no group")
          end
        end
      else
        fail("group %s expects a table { routes = {...} } or a function", prefix)
      end
      return g
    end
  end

  function env.include(pattern)
    if type(pattern) ~= "string" then fail("include expects a file name or glob pattern") end
    pattern = from_config_dir(pattern)
    local files = M.glob(pattern)
    if #files == 0 and not pattern:find("[*?%[]") then
      fail("include: no such file: %s", pattern)
    end
    for _, f in ipairs(files) do
      local chunk, err = load_config_chunk(f)
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

-- An http2 { } block tunes the listeners that take HTTP/2: with none (a TLS
-- listener has it unless http2 = false; a cleartext one with http2 = true) it
-- would be ignored. Without any listen, gatewayd --listen gives the listener,
-- which takes h2c: the block applies there.
local function check_http2_used(st)
  local at = st.set_at.http2
  if not at or #st.settings.listen == 0 then return end
  for _, l in ipairs(st.settings.listen) do
    if type(l) == "table" and (l.http2 == true or (l.tls ~= nil and l.http2 ~= false)) then return end
  end
  error(setmetatable({ msg = fmt("%s: http2 { } has no effect: no listener takes HTTP/2 (add http2 = true to a " ..
                                 "cleartext listen, or listen with tls)", at) }, Located), 0)
end

--- Loads a config file. Returns the config table, or nil and "file:line: message".
function M.load(path)
  local chunk, err = load_config_chunk(path)
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
  local rok, routes = pcall(function()
    check_http2_used(st)
    redis_mod.check(st)
    return resolve_mod.resolve(st)
  end)
  if not rok then
    if getmetatable(routes) == Located then return nil, routes.msg end
    return nil, tostring(routes)
  end
  cfg.routes = routes
  cfg.upstreams = st.upstream_list
  cfg.redis = st.redis_list
  cfg.warnings = st.warnings
  return cfg
end

--- The compiled routes, in priority order per path, as one string the C side
-- keeps and renders (`gatewayctl routes`, `gatewayd --routes`; mg_admin_status.c):
-- per route the fields id, methods ("*" or a list), host, path, upstream,
-- plugins in order (a list), file, line, each ended by "\0"; a list's items
-- are separated by "\1", an absent value is "". One concat: rendering both
-- forms here would cost a reload of 10,000 routes about 50 ms more.
function M.route_records(cfg)
  local out, n = {}, 0
  local concat = table.concat
  for _, r in ipairs(cfg.routes) do
    out[n + 1] = r.id
    out[n + 2] = r.methods == "*" and "*" or concat(r.methods, "\1")
    out[n + 3] = r.host or ""
    out[n + 4] = r.path
    out[n + 5] = r.upstream or ""
    out[n + 6] = r.chain and concat(r.chain.names, "\1") or ""
    out[n + 7] = r.file
    out[n + 8] = r.line
    n = n + 8
  end
  out[n + 1] = ""
  return concat(out, "\0")
end

-- Set by the C side (glob(3)); kept overridable for tests.
M.glob = function() return {} end

return M
