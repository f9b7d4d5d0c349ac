-- moongate.config_upstream: the upstream directive of the config DSL,
-- upstream "name" { targets = { "127.0.0.1:9001", ... }, ... } (see docs/proxy.md).
-- Produces the upstream tables mg_config.c reads.
local check = require "moongate.config_check"
local keys = require "moongate.keys"
local redis_mod = require "moongate.config_redis"

check.dsl_module()

local type, ipairs, pairs, tostring, tonumber = type, ipairs, pairs, tostring, tonumber
local fail, where, check_fields, table_field, list_field = check.fail, check.where, check.check_fields,
                                                          check.table_field, check.list_field

local UPSTREAM_FIELDS = { targets = true, tls = true, balance = true, hash_key = true, pool = true,
                          timeouts = true, retries = true, health = true, host_header = true,
                          max_concurrency = true, on_busy = true, retry_non_idempotent = true,
                          protocol = true }
for k in pairs(redis_mod.CLUSTER_FIELDS) do UPSTREAM_FIELDS[k] = true end -- scope = "cluster" (config_redis.lua)
local UPSTREAM_TLS_FIELDS = { ca = true, server_name = true, cert = true, key = true, verify = true }
local POOL_FIELDS = { max_idle = true, idle_timeout = true, max_requests = true, ping_interval = true }
local UP_TIMEOUT_FIELDS = { connect = true, send = true, read = true }
local HEALTH_FIELDS = { passive = true, active = true }
local PASSIVE_FIELDS = { failures = true, eject = true }
local ACTIVE_FIELDS = { path = true, interval = true, timeout = true }
local ON_BUSY_FIELDS = { queue = true, queue_timeout = true, status = true }
local HASH_KINDS = { "ip", "header", "param" }

local M = {}

--- The upstream directive for config state st (st.dir, st.upstreams,
-- st.upstream_list, st.unfinished).
function M.directive(st)
  local function from_config_dir(p) return check.from_dir(st.dir, p) end

  -- upstream "x" { tls = { ca = "ca.pem", server_name = "orders.internal",
  --   cert = "client.pem", key = "client.key", verify = true } }: TLS to the targets
  local function upstream_tls(tls, name)
    local what = "upstream " .. name .. " tls"
    if type(tls) ~= "table" then fail("%s expects a table { ca = ..., server_name = ... }", what) end
    check_fields(tls, UPSTREAM_TLS_FIELDS, what)
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

  -- upstream "name" { targets = { "127.0.0.1:9001", ... }, ... }: see docs/proxy.md
  return function(name)
    if type(name) ~= "string" or not name:match("^[%w_.%-]+$") then
      fail("upstream expects a name made of letters, digits, '_', '.' or '-'")
    end
    local got_body, file, line = check.awaiting_body(st,
      ("upstream %s has no body: write upstream \"%s\" { targets = { ... } }"):format(name, name))
    return function(t)
      got_body()
      if type(t) ~= "table" then fail("upstream %s expects a table", name) end
      if st.upstreams[name] then
        fail("upstream %s is already defined at %s:%d", name, st.upstreams[name].file, st.upstreams[name].line)
      end
      check_fields(t, UPSTREAM_FIELDS, "upstream " .. name)
      local u = { name = name, file = file, line = line, targets = {} }
      if type(t.targets) ~= "table" or #t.targets == 0 then
        fail("upstream %s needs targets = { \"host:port\", ... }", name)
      end
      list_field(t.targets, "upstream " .. name .. " targets")
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
      -- protocol = "h2c" (HTTP/2 with prior knowledge) or "h2" (HTTP/2 over TLS, ALPN); default HTTP/1.1
      local proto = t.protocol or "http1"
      if proto ~= "http1" and proto ~= "h2c" and proto ~= "h2" then
        fail("upstream %s: protocol must be \"http1\", \"h2c\" (HTTP/2 in clear) or \"h2\" (HTTP/2 over TLS)", name)
      end
      if proto == "h2" and not schemes.https then
        fail("upstream %s: protocol = \"h2\" is HTTP/2 over TLS: give https:// targets (or tls = {...}); " ..
             "protocol = \"h2c\" speaks it in clear", name)
      end
      if proto == "h2c" and schemes.https then
        fail("upstream %s: protocol = \"h2c\" is HTTP/2 in clear, but the targets are TLS: use protocol = \"h2\"", name)
      end
      u.protocol = proto
      if schemes.https then u.tls = upstream_tls(t.tls or {}, name) end
      u.balance = t.balance or "round_robin"
      if u.balance ~= "round_robin" and u.balance ~= "least_conn" and u.balance ~= "hash" then
        fail("upstream %s: balance must be \"round_robin\", \"least_conn\" or \"hash\"", name)
      end
      if u.balance == "hash" then
        if t.hash_key == nil then
          fail("upstream %s: balance = \"hash\" needs hash_key = %s", name, keys.forms(HASH_KINDS))
        end
        local kind, arg = keys.parse(t.hash_key, HASH_KINDS)
        if not kind then fail("upstream %s: hash_key: %s", name, arg) end
        u.hash_key, u.hash_param = t.hash_key, kind == "param" and arg or nil
      elseif t.hash_key ~= nil then
        fail("upstream %s: hash_key is only used with balance = \"hash\"", name)
      end
      local function dur(tbl, key, default, what)
        local v = tbl and tbl[key]
        if v == nil then return default end
        local ms = check.duration(v)
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
      table_field(t.pool, POOL_FIELDS, "upstream " .. name .. " pool")
      u.max_idle = int(t.pool, "max_idle", 64, 0, "pool.max_idle")
      u.idle_timeout = dur(t.pool, "idle_timeout", 60000, "pool.idle_timeout")
      -- streams per connection for HTTP/2: a connection carries many at once, so a million by default
      u.max_requests = int(t.pool, "max_requests", u.protocol == "http1" and 1000 or 1000000, 1, "pool.max_requests")
      if t.pool and t.pool.ping_interval ~= nil and u.protocol == "http1" then
        fail("upstream %s: pool.ping_interval is for HTTP/2 upstreams (protocol = \"h2c\" or \"h2\")", name)
      end
      u.ping_interval = dur(t.pool, "ping_interval", 10000, "pool.ping_interval")
      table_field(t.timeouts, UP_TIMEOUT_FIELDS, "upstream " .. name .. " timeouts")
      u.connect_timeout = dur(t.timeouts, "connect", 2000, "timeouts.connect")
      u.send_timeout = dur(t.timeouts, "send", 10000, "timeouts.send")
      u.read_timeout = dur(t.timeouts, "read", 30000, "timeouts.read")
      u.retries = int(t, "retries", 1, 0, "retries")
      if t.retry_non_idempotent ~= nil and type(t.retry_non_idempotent) ~= "boolean" then
        fail("upstream %s: retry_non_idempotent must be true or false", name)
      end
      u.retry_non_idempotent = t.retry_non_idempotent == true
      local health = table_field(t.health, HEALTH_FIELDS, "upstream " .. name .. " health") or {}
      table_field(health.passive, PASSIVE_FIELDS, "upstream " .. name .. " health.passive")
      u.passive_failures = int(health.passive, "failures", 3, 0, "health.passive.failures")
      u.passive_eject = dur(health.passive, "eject", 10000, "health.passive.eject")
      if u.passive_failures == 0 and health.passive.eject ~= nil then
        fail("upstream %s: health.passive.eject has no effect with failures = 0 (passive checks off)", name)
      end
      if health.active ~= nil then
        table_field(health.active, ACTIVE_FIELDS, "upstream " .. name .. " health.active")
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
          check_fields(ob, ON_BUSY_FIELDS, "upstream " .. name .. " on_busy")
          u.queue = int(ob, "queue", 100, 1, "on_busy.queue")
          u.queue_timeout = dur(ob, "queue_timeout", 1000, "on_busy.queue_timeout")
          u.busy_status = int(ob, "status", 503, 400, "on_busy.status")
        else
          fail("upstream %s: on_busy must be \"reject\" or { queue = 100, queue_timeout = \"200ms\" }", name)
        end
      elseif t.on_busy ~= nil then
        fail("upstream %s: on_busy needs max_concurrency", name)
      end
      redis_mod.cluster_scope(t, u, "upstream " .. name, t.max_concurrency ~= nil, "max_concurrency")
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

end

return M
