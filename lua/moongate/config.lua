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
                       handler = true, upstream = true, name = true, timeout = true, max_body = true,
                       plugins = true }
local UPSTREAM_FIELDS = { targets = true, tls = true, balance = true, hash_key = true, pool = true,
                          timeouts = true, retries = true, health = true, host_header = true,
                          max_concurrency = true, on_busy = true, retry_non_idempotent = true }
local POOL_FIELDS = { max_idle = true, idle_timeout = true, max_requests = true }
local UP_TIMEOUT_FIELDS = { connect = true, send = true, read = true }
local HEALTH_FIELDS = { passive = true, active = true }
local PASSIVE_FIELDS = { failures = true, eject = true }
local ACTIVE_FIELDS = { path = true, interval = true, timeout = true }
local GROUP_FIELDS = { routes = true, host = true, timeout = true, name = true, max_body = true,
                       plugins = true }
local LIMIT_FIELDS = { max_request_line = true, max_header_size = true,
                       max_headers = true, max_body = true }
local TIMEOUT_FIELDS = { header = true, body = true, keepalive = true, send = true,
                         request = true, drain = true, watchdog = true, tls_session = true }

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

local function check_plugins_field(p, what)
  if p == nil then return nil end
  if type(p) ~= "table" then fail("%s 'plugins' must be a table { [\"name\"] = conf, ... }", what) end
  for k, v in pairs(p) do
    if type(k) ~= "string" then fail("%s 'plugins' must be keyed by plugin name", what) end
    if v ~= false and v ~= true and type(v) ~= "table" then
      fail("%s plugin %s: the value must be a table (its conf), true, or false (disable)", what, k)
    end
  end
  return p
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
      listen = {}, workers = 0, plugins_dirs = {}, limits = {}, timeouts = {}, http2 = {},
      access_log = nil, error_log = nil,
    },
    routes = {},     -- in declaration order
    upstreams = {},  -- by name
    upstream_list = {},
    global_plugins = {},
    groups = {},     -- open function-style groups (a stack)
  }
end

local function make_env(st)
  local env = {}
  local s = st.settings

  -- a path from the config, relative to the config file's directory
  local function from_config_dir(p)
    return p:sub(1, 1) == "/" and p or st.dir .. "/" .. p
  end

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
    local known = { cert = true, key = true, certificates = true, client_ca = true, client_auth = true }
    for k in pairs(tls) do
      if not known[k] then fail("listen tls: unknown field '%s'", tostring(k)) end
    end
    if tls.client_auth == "off" then fail("listen tls: client_auth = \"off\" is for a certificate; leave it out here") end
    local listener_auth = client_auth_of(tls, false, "listen tls")
    local list = tls.certificates or { { cert = tls.cert, key = tls.key } }
    if tls.certificates and (tls.cert or tls.key) then
      fail("listen tls: give either cert/key or certificates, not both")
    end
    if type(list) ~= "table" or #list == 0 then fail("listen tls: certificates expects a list of { cert = ..., key = ... }") end
    local certs = {}
    for i, c in ipairs(list) do
      if type(c) ~= "table" then fail("listen tls: certificates[%d] expects { cert = ..., key = ... }", i) end
      for k in pairs(c) do
        if k ~= "cert" and k ~= "key" and k ~= "client_ca" and k ~= "client_auth" then
          fail("listen tls: certificates[%d]: unknown field '%s'", i, tostring(k))
        end
      end
      local auth = listener_auth
      if tls.certificates then auth = client_auth_of(c, listener_auth, ("listen tls: certificates[%d]"):format(i)) end
      certs[i] = { cert = path_of(c.cert, "cert"), key = path_of(c.key, "key"),
                   client_ca = auth and auth.ca or nil, client_auth = auth and auth.auth or nil }
    end
    local file, line = where()
    return { certificates = certs, where = file .. ":" .. line }
  end

  -- upstream "x" { tls = { ca = "ca.pem", server_name = "orders.internal",
  --   cert = "client.pem", key = "client.key", verify = true } }: TLS to the targets
  local function upstream_tls(tls, name)
    local what = "upstream " .. name .. " tls"
    if type(tls) ~= "table" then fail("%s expects a table { ca = ..., server_name = ... }", what) end
    local known = { ca = true, server_name = true, cert = true, key = true, verify = true }
    for k in pairs(tls) do
      if not known[k] then fail("%s: unknown field '%s' (ca, server_name, cert, key, verify)", what, tostring(k)) end
    end
    if tls.verify ~= nil and type(tls.verify) ~= "boolean" then fail("%s: verify must be true or false", what) end
    if (tls.cert == nil) ~= (tls.key == nil) then fail("%s: a client certificate needs both cert and key", what) end
    if tls.server_name ~= nil and (type(tls.server_name) ~= "string" or not tls.server_name:match("^[%w.%-:]+$")) then
      fail("%s: server_name must be a host name", what)
    end
    local function file(k)
      local p = tls[k]
      if p == nil then return nil end
      if type(p) ~= "string" or p == "" then fail("%s: '%s' expects a file path", what, k) end
      return from_config_dir(p)
    end
    local f, l = where()
    return { ca = file("ca"), cert = file("cert"), key = file("key"), server_name = tls.server_name,
             verify = tls.verify ~= false, where = f .. ":" .. l }
  end

  function env.listen(addr)
    if type(addr) == "table" then
      local tls = addr.tls ~= nil and tls_conf(addr.tls) or nil
      if addr.http2 ~= nil and type(addr.http2) ~= "boolean" then fail("listen http2 must be true or false") end
      if #addr == 0 then fail("listen expects at least one \"host:port\"") end
      for _, a in ipairs(addr) do
        env.listen(a)
        if tls or addr.http2 ~= nil then s.listen[#s.listen] = { addr = a, tls = tls, http2 = addr.http2 } end
      end
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
    dir = from_config_dir(dir)
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
    s.http2 = h
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

  -- upstream "name" { targets = { "127.0.0.1:9001", ... }, ... }: see docs/proxy.md
  function env.upstream(name)
    if type(name) ~= "string" or not name:match("^[%w_.%-]+$") then
      fail("upstream expects a name made of letters, digits, '_', '.' or '-'")
    end
    local file, line = where()
    return function(t)
      if type(t) ~= "table" then fail("upstream %s expects a table", name) end
      if st.upstreams[name] then
        fail("upstream %s is already defined at %s:%d", name, st.upstreams[name].file, st.upstreams[name].line)
      end
      check_fields(t, UPSTREAM_FIELDS, "upstream " .. name)
      local u = { name = name, file = file, line = line, targets = {} }
      if type(t.targets) ~= "table" or #t.targets == 0 then
        fail("upstream %s needs targets = { \"host:port\", ... }", name)
      end
      local schemes = {}
      for i, target in ipairs(t.targets) do
        if type(target) ~= "string" then fail("upstream %s: target %d must be a \"host:port\" string", name, i) end
        local scheme, rest = target:match("^(%a+)://(.*)$")
        if scheme and scheme ~= "http" and scheme ~= "https" then
          fail("upstream %s: target '%s': the scheme must be http:// or https://", name, target)
        end
        rest = rest or target
        if scheme and not rest:match(":%d+$") then rest = rest .. (scheme == "https" and ":443" or ":80") end
        local host, port = rest:match("^%[?([^%]/]+)%]?:(%d+)$")
        port = tonumber(port)
        if not host or not port or port < 1 or port > 65535 then
          fail("upstream %s: target '%s' must be \"host:port\" or \"https://host:port\"", name, target)
        end
        schemes[scheme or (t.tls ~= nil and "https" or "http")] = true
        u.targets[i] = { host = host, port = port }
      end
      if schemes.http and schemes.https then
        fail("upstream %s: its targets mix http:// and https://; one upstream speaks one", name)
      end
      if schemes.http and t.tls ~= nil then
        fail("upstream %s: tls is given but the targets are http://", name)
      end
      if schemes.https then u.tls = upstream_tls(t.tls or {}, name) end
      u.balance = t.balance or "round_robin"
      if u.balance ~= "round_robin" and u.balance ~= "least_conn" and u.balance ~= "hash" then
        fail("upstream %s: balance must be \"round_robin\", \"least_conn\" or \"hash\"", name)
      end
      if u.balance == "hash" then
        local k = t.hash_key
        if type(k) ~= "string" or not (k == "ip" or k:match("^header:.+") or k:match("^param:.+")) then
          fail("upstream %s: balance = \"hash\" needs hash_key = \"ip\", \"header:Name\" or \"param:name\"", name)
        end
        u.hash_key = k
      end
      local function dur(tbl, key, default, what)
        local v = tbl and tbl[key]
        if v == nil then return default end
        local ms = M.duration(v)
        if not ms or ms < 1 then fail("upstream %s: %s must be a duration like \"500ms\"", name, what) end
        return ms
      end
      local function int(tbl, key, default, min, what)
        local v = tbl and tbl[key]
        if v == nil then return default end
        if type(v) ~= "number" or v % 1 ~= 0 or v < min then
          fail("upstream %s: %s must be an integer >= %d", name, what, min)
        end
        return v
      end
      if t.pool ~= nil then check_fields(t.pool, POOL_FIELDS, "upstream " .. name .. " pool") end
      u.max_idle = int(t.pool, "max_idle", 64, 0, "pool.max_idle")
      u.idle_timeout = dur(t.pool, "idle_timeout", 60000, "pool.idle_timeout")
      u.max_requests = int(t.pool, "max_requests", 1000, 1, "pool.max_requests")
      if t.timeouts ~= nil then check_fields(t.timeouts, UP_TIMEOUT_FIELDS, "upstream " .. name .. " timeouts") end
      u.connect_timeout = dur(t.timeouts, "connect", 2000, "timeouts.connect")
      u.send_timeout = dur(t.timeouts, "send", 10000, "timeouts.send")
      u.read_timeout = dur(t.timeouts, "read", 30000, "timeouts.read")
      u.retries = int(t, "retries", 1, 0, "retries")
      if t.retry_non_idempotent ~= nil and type(t.retry_non_idempotent) ~= "boolean" then
        fail("upstream %s: retry_non_idempotent must be true or false", name)
      end
      u.retry_non_idempotent = t.retry_non_idempotent == true
      local health = t.health or {}
      check_fields(health, HEALTH_FIELDS, "upstream " .. name .. " health")
      if health.passive ~= nil then check_fields(health.passive, PASSIVE_FIELDS, "health.passive") end
      u.passive_failures = int(health.passive, "failures", 3, 0, "health.passive.failures")
      u.passive_eject = dur(health.passive, "eject", 10000, "health.passive.eject")
      if health.active ~= nil then
        check_fields(health.active, ACTIVE_FIELDS, "health.active")
        local path = health.active.path
        if type(path) ~= "string" or path:sub(1, 1) ~= "/" then
          fail("upstream %s: health.active.path must be a path like \"/health\"", name)
        end
        u.active_path = path
        u.active_interval = dur(health.active, "interval", 5000, "health.active.interval")
        u.active_timeout = dur(health.active, "timeout", 1000, "health.active.timeout")
      end
      if t.max_concurrency ~= nil then
        u.max_concurrency = int(t, "max_concurrency", nil, 1, "max_concurrency")
        local ob = t.on_busy or "reject"
        if ob == "reject" then
          u.queue, u.queue_timeout, u.busy_status = 0, 0, 429
        elseif type(ob) == "table" then
          for k in pairs(ob) do
            if k ~= "queue" and k ~= "queue_timeout" and k ~= "status" then
              fail("upstream %s: unknown field '%s' in on_busy (queue, queue_timeout, status)", name, tostring(k))
            end
          end
          u.queue = int(ob, "queue", 100, 1, "on_busy.queue")
          u.queue_timeout = dur(ob, "queue_timeout", 1000, "on_busy.queue_timeout")
          u.busy_status = int(ob, "status", 503, 400, "on_busy.status")
        else
          fail("upstream %s: on_busy must be \"reject\" or { queue = 100, queue_timeout = \"200ms\" }", name)
        end
      elseif t.on_busy ~= nil then
        fail("upstream %s: on_busy needs max_concurrency", name)
      end
      local hh = t.host_header or "pass"
      if type(hh) ~= "string" or hh == "" then
        fail("upstream %s: host_header must be \"pass\", \"target\" or a host name", name)
      end
      u.host_header = hh
      st.upstreams[name] = u
      st.upstream_list[#st.upstream_list + 1] = u
      return u
    end
  end

  -- plugins { ["key-auth"] = { ... }, ... }: plugins for every route (routes and groups override)
  function env.plugins(t)
    check_plugins_field(t, "global")
    local file, line = where()
    for k, v in pairs(t) do st.global_plugins[k] = { conf = v, file = file, line = line } end
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
    s.admin_socket = path
  end

  -- admin_listen "127.0.0.1:9901": GET /metrics (Prometheus) and /status over HTTP
  function env.admin_listen(addr)
    if type(addr) ~= "string" or not addr:match(":%d+$") then fail("admin_listen expects \"host:port\"") end
    s.admin_listen = addr
  end

  -- tls_ticket_keys { "keys/current.key", "keys/previous.key" }: TLS session
  -- ticket keys from files (80 random bytes each, nginx's format), shared by
  -- several gateway processes; the first encrypts, all decrypt
  function env.tls_ticket_keys(list)
    if type(list) ~= "table" or #list == 0 or #list > 4 then
      fail("tls_ticket_keys expects a list of 1 to 4 key files")
    end
    local keys = {}
    for i, p in ipairs(list) do
      if type(p) ~= "string" or p == "" then fail("tls_ticket_keys: entry %d must be a file path", i) end
      keys[i] = from_config_dir(p)
    end
    local f, l = where()
    keys.where = f .. ":" .. l
    s.tls_ticket_keys = keys
  end

  -- hosts_file "/etc/hosts": where upstream host names are looked up before DNS
  function env.hosts_file(path)
    if type(path) ~= "string" then fail("hosts_file expects a path") end
    path = from_config_dir(path)
    s.hosts_file = path
  end

  -- error_header "X-Gateway-Error": name the error kind in a response header (off by default)
  function env.error_header(name)
    if type(name) ~= "string" or not name:match("^[!#$%%&'*+%-.^_`|~%w]+$") then
      fail("error_header expects a header name")
    end
    s.error_header = name
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
    for k in pairs(list) do
      if type(k) ~= "number" or k < 1 or k > #list or k % 1 ~= 0 then
        fail("trusted_proxies expects a list, not a table with key '%s'", tostring(k))
      end
    end
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
    if spec.host ~= nil and type(spec.host) ~= "string" then fail("route 'host' must be a string") end
    if spec.name ~= nil and type(spec.name) ~= "string" then fail("route 'name' must be a string") end
    local timeout
    if spec.timeout ~= nil then
      timeout = M.duration(spec.timeout)
      if not timeout or timeout < 1 then fail("route 'timeout' must be a duration like \"800ms\"") end
    end
    local max_body
    if spec.max_body ~= nil then
      max_body = size_value(spec.max_body)
      if not max_body then fail("route 'max_body' must be a size like \"10m\" (0: no limit)") end
    end
    local file, line = where()
    local r = {
      kind = "route", max_body = max_body, plugins = check_plugins_field(spec.plugins, "route " .. spec.path), path = spec.path, host = spec.host, name = spec.name,
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
        g.plugins = check_plugins_field(body.plugins, "group " .. prefix)
        if body.max_body ~= nil then
          g.max_body = size_value(body.max_body)
          if not g.max_body then fail("group 'max_body' must be a size like \"10m\" (0: no limit)") end
        end
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
    pattern = from_config_dir(pattern)
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

-- The effective plugins of route r: global, then groups outer to inner, then
-- the route; a later level replaces a plugin's conf, false removes it.
local function effective_plugins(st, r)
  local levels, g = {}, r.parent
  while g do
    if g.plugins then table.insert(levels, 1, g.plugins) end
    g = g.parent
  end
  local merged = {}
  for name, e in pairs(st.global_plugins) do merged[name] = e.conf end
  for _, lv in ipairs(levels) do for name, conf in pairs(lv) do merged[name] = conf end end
  for name, conf in pairs(r.plugins or {}) do merged[name] = conf end
  return merged
end

-- Builds (and shares) the plugin chain of route r; errors name the route's file:line.
local function route_chain(st, r, path)
  local plugins = require "moongate.plugins"
  local merged = effective_plugins(st, r)
  local entries, key = {}, {}
  local names = {}
  for name, conf in pairs(merged) do if conf ~= false then names[#names + 1] = name end end
  if #names == 0 then return nil end
  table.sort(names)
  for _, name in ipairs(names) do
    local plugin, err = plugins.load(name, st.settings.plugins_dirs)
    if not plugin then fail_at(r.file, r.line, "route %s: %s", path, err) end
    local raw = merged[name]
    st.conf_cache[plugin] = st.conf_cache[plugin] or setmetatable({}, { __mode = "k" })
    local conf = type(raw) == "table" and st.conf_cache[plugin][raw]
    if not conf then
      local cerr
      conf, cerr = plugins.configure(plugin, raw)
      if not conf then fail_at(r.file, r.line, "route %s: plugin %s: %s", path, name, cerr) end
      if type(raw) == "table" then st.conf_cache[plugin][raw] = conf end
    end
    entries[#entries + 1] = { plugin = plugin, conf = conf }
    key[#key + 1] = name .. "=" .. tostring(conf)
  end
  key = table.concat(key, ";")
  if st.chains[key] then return st.chains[key] end
  local ordered, oerr = plugins.order(entries)
  if not ordered then fail_at(r.file, r.line, "route %s: %s", path, oerr) end
  local chain = plugins.chain(ordered)
  st.chains[key] = chain
  return chain
end

-- Flattens groups into full paths, hosts and timeouts.
local function resolve(st)
  local out = {}
  st.conf_cache, st.chains = {}, {}
  for i, r in ipairs(st.routes) do
    local path, host, timeout, max_body = r.path, r.host, r.timeout, r.max_body
    local g = r.parent
    while g do
      path = g.prefix .. path
      host = host or g.host
      timeout = timeout or g.timeout
      if max_body == nil then max_body = g.max_body end
      g = g.parent
    end
    if #path > 1 and path:sub(-1) == "/" and r.path == "/" then path = path:sub(1, -2) end
    if r.upstream and not st.upstreams[r.upstream] then
      fail_at(r.file, r.line, "route %s: no upstream named '%s'", r.path, r.upstream)
    end
    out[i] = {
      id = i, path = path, host = host, methods = r.methods, handler = r.handler,
      chain = route_chain(st, r, path),
      upstream = r.upstream, name = r.name or path, timeout = timeout, max_body = max_body,
      file = r.file, line = r.line,
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
  local rok, routes = pcall(resolve, st)
  if not rok then
    if getmetatable(routes) == Located then return nil, routes.msg end
    return nil, tostring(routes)
  end
  cfg.routes = routes
  cfg.upstreams = st.upstream_list
  return cfg
end

--- A readable table of the compiled routes, in priority order per path
-- (used by `gatewayd --routes`): method, host, path, target, plugins in order.
function M.describe(cfg)
  local lines = {}
  for _, r in ipairs(cfg.routes) do
    local methods = r.methods == "*" and "*" or table.concat(r.methods, ",")
    local target = r.upstream and ("upstream " .. r.upstream) or "handler"
    local plugins = r.chain and table.concat(r.chain.names, " > ") or "-"
    lines[#lines + 1] = fmt("%-4d %-12s %-20s %-40s %-24s %s  (%s:%d)", r.id, methods, r.host or "*", r.path,
                            target, plugins, r.file, r.line)
  end
  return table.concat(lines, "\n")
end

--- The same as JSON, for `gatewayctl routes --json`.
function M.describe_json(cfg)
  local out = {}
  for i, r in ipairs(cfg.routes) do
    out[i] = { id = r.id, methods = r.methods, host = r.host, path = r.path,
               upstream = r.upstream, plugins = r.chain and r.chain.names or {},
               declared_at = r.file .. ":" .. r.line }
  end
  return gw.json.encode(out)
end

-- Set by the C side (glob(3)); kept overridable for tests.
M.glob = function() return {} end

return M
