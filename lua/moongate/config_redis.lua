-- moongate.config_redis: the redis directive of the config DSL and the
-- cluster scope of limits (docs/cluster.md).
--
--   redis "main" { address = "127.0.0.1:6379", password = ..., db = 0, pool = { size = 1 },
--                  timeouts = { connect = "250ms", command = "100ms" }, nodes = 3, prefix = "moongate:" }
--   upstream "u" { ..., max_concurrency = 20, scope = "cluster", redis = "main", lease = "10s",
--                  on_redis_error = "local" }
--
-- Produces the redis tables mg_config.c turns into pools (it resolves the
-- address), and the cluster fields of an upstream.
local check = require "moongate.config_check"

check.dsl_module()

local type, tostring, tonumber, ipairs = type, tostring, tonumber, ipairs
local fail, fail_at, where, check_fields = check.fail, check.fail_at, check.where, check.check_fields

local REDIS_FIELDS = { address = true, username = true, password = true, db = true, pool = true,
                       timeouts = true, nodes = true, prefix = true }
local POOL_FIELDS = { size = true }
local TIMEOUT_FIELDS = { connect = true, command = true }

local M = {}

-- The fields a limit takes for its cluster scope (added to its own).
M.CLUSTER_FIELDS = { scope = true, redis = true, lease = true, on_redis_error = true }

--- The redis directive for config state st (st.redis, st.redis_list).
function M.directive(st)
  return function(name)
    if type(name) ~= "string" or not name:match("^[%w_.%-]+$") then
      fail("redis expects a name made of letters, digits, '_', '.' or '-'")
    end
    local got_body, file, line = check.awaiting_body(st,
      ("redis %s has no body: write redis \"%s\" { address = \"host:port\" }"):format(name, name))
    return function(t)
      got_body()
      local what = "redis " .. name
      if type(t) ~= "table" then fail("%s expects a table { address = \"host:port\", ... }", what) end
      if st.redis[name] then fail("%s is already defined at %s", what, st.redis[name].where) end
      check_fields(t, REDIS_FIELDS, what)
      local a = t.address
      local host = type(a) == "string" and not a:match("^unix:") and a:match("^(.*):%d+$")
      if host and host:find(":", 1, true) and not host:match("^%[.*%]$") then
        fail("%s: an IPv6 address goes in brackets: \"[%s]:%s\", got '%s' (which part is the port?)", what, host,
             a:match(":(%d+)$"), a)
      end
      if type(a) ~= "string" or not (a:match("^unix:/.+") or a:match("^%[?[%w_.%-:]+%]?:%d+$")) then
        fail("%s: address must be \"host:port\" or \"unix:/path/to/redis.sock\", got %s", what, tostring(a))
      end
      local port = tonumber(a:match(":(%d+)$"))
      if not a:match("^unix:") and (not port or port < 1 or port > 65535) then
        fail("%s: the port in address must be 1 to 65535", what)
      end
      for _, k in ipairs({ "username", "password", "prefix" }) do
        if t[k] ~= nil and (type(t[k]) ~= "string" or t[k] == "") then fail("%s: %s must be a non-empty string", what, k) end
      end
      if t.username and not t.password then fail("%s: username needs a password", what) end
      local function int(v, key, default, min, max)
        if v == nil then return default end
        if type(v) ~= "number" or v % 1 ~= 0 or v < min or v > max then
          fail("%s: %s must be an integer from %d to %d", what, key, min, max)
        end
        return v
      end
      local pool = t.pool or {}
      if type(pool) ~= "table" then fail("%s: pool must be a table { size = N }", what) end
      if pool.max_idle ~= nil then
        fail("%s: pool.max_idle does not apply: a worker's requests share its Redis connections (their "
             .. "commands are pipelined), so none sits idle in a pool; pool = { size = N } sets the "
             .. "connections per worker", what)
      end
      check_fields(pool, POOL_FIELDS, what .. " pool")
      local timeouts = t.timeouts or {}
      if type(timeouts) ~= "table" then fail("%s: timeouts must be a table { connect = ..., command = ... }", what) end
      check_fields(timeouts, TIMEOUT_FIELDS, what .. " timeouts")
      local function dur(key, default)
        local v = timeouts[key]
        if v == nil then return default end
        local ms = check.duration(v)
        if not ms or ms < 1 or ms > 600000 then
          fail("%s: timeouts.%s must be a duration like \"100ms\" (at most 10m)", what, key)
        end
        return ms
      end
      local b = {
        name = name, where = file .. ":" .. line, address = a, username = t.username, password = t.password,
        db = int(t.db, "db", 0, 0, 1000000), size = int(pool.size, "pool.size", 1, 1, 64),
        connect_timeout = dur("connect", 250), command_timeout = dur("command", 100),
        nodes = int(t.nodes, "nodes", 1, 1, 100000), prefix = t.prefix or "moongate:",
      }
      st.redis[name] = b
      st.redis_list[#st.redis_list + 1] = b
      return b
    end
  end
end

--- A limit's cluster scope: scope = "cluster", redis = "main", lease = "10s",
-- on_redis_error = "local" in table t (`what` names it; has_limit: the limit
-- itself, limit_name, is given). Fills u.redis, u.lease (ms), u.on_redis_error
-- and u.redis_where; the redis name is checked by M.check once the whole
-- config ran (the block may come later in the file).
function M.cluster_scope(t, u, what, has_limit, limit_name)
  local scope = t.scope
  if scope == nil and t.redis == nil and t.lease == nil and t.on_redis_error == nil then return end
  if not has_limit then
    fail("%s: scope, redis, lease and on_redis_error apply to %s, which is not given", what, limit_name)
  end
  if scope ~= "cluster" and scope ~= "local" and scope ~= nil then
    fail("%s: scope must be \"local\" (this process, the default) or \"cluster\" (kept in Redis)", what)
  end
  if scope ~= "cluster" then fail("%s: redis, lease and on_redis_error need scope = \"cluster\"", what) end
  if type(t.redis) ~= "string" then fail("%s: scope = \"cluster\" needs redis = \"<name of a redis block>\"", what) end
  local ms = 10000
  if t.lease ~= nil then
    ms = check.duration(t.lease)
    if not ms or ms < 300 or ms > 86400000 then
      fail("%s: lease must be a duration from \"300ms\" to \"24h\" (a dead gateway's permits come back after it)", what)
    end
  end
  local policy = t.on_redis_error or "local"
  if policy ~= "allow" and policy ~= "deny" and policy ~= "local" then
    fail("%s: on_redis_error must be \"allow\", \"deny\" or \"local\"", what)
  end
  local file, line = where()
  u.redis, u.lease, u.on_redis_error, u.redis_file, u.redis_line = t.redis, ms, policy, file, line
end

--- After the config ran: every cluster limit names a redis block.
function M.check(st)
  for _, u in ipairs(st.upstream_list) do
    if u.redis and not st.redis[u.redis] then
      fail_at(u.redis_file, u.redis_line, "upstream %s: no redis named '%s' (redis \"%s\" { address = ... })", u.name,
              u.redis, u.redis)
    end
  end
end

return M
