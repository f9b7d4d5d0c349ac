-- limit-conn: at most `max` requests in flight per key (the route, the client
-- ip, the consumer, a header), across all workers, on the C semaphores.
-- Over the limit: reject at once, or queue up to `queue` requests for
-- `queue_timeout`. The permit is held until the request ends (the teardown
-- releases it on every path: success, errors, timeouts, client gone).
--
-- scope = "cluster" (redis = "<block>") keeps the permits in Redis as leases
-- shared by every gateway on that Redis (src/mg_csema.c); the request's end
-- gives the lease back, and a dead gateway's leases run out after `lease`
-- seconds. When Redis cannot answer, on_redis_error applies: "allow",
-- "deny" (503), or "local" (max divided by the redis block's nodes, on the
-- local semaphores). See docs/cluster.md.

-- A duration as the config writes them elsewhere (an upstream's lease): "10s", "1500ms", "2m", or seconds.
local UNITS = { ms = 0.001, s = 1, [""] = 1, m = 60, h = 3600 }
local function seconds(v)
  if type(v) == "number" then return v end
  if type(v) ~= "string" then return nil end
  local num, unit = v:match("^%s*([%d%.]+)%s*(%a*)%s*$")
  return tonumber(num) and UNITS[unit] and tonumber(num) * UNITS[unit]
end

local LimitConn = {
  name = "limit-conn",
  version = "1.0.0",
  priority = 905, -- after authentication, with rate-limit
  schema = {
    fields = {
      max = { type = "integer", required = true, between = { 1, 1000000 } },
      key = { type = "key", default = "route",
              description = "what is counted: \"route\", \"ip\", \"consumer\" or \"header:<Name>\"" },
      weight = { type = "integer", default = 1, between = { 1, 1000000 },
                 description = "permits this route costs (at most max)" },
      queue = { type = "integer", default = 0, between = { 0, 1000000 },
                description = "requests that may wait (0: reject at once)" },
      queue_timeout = { type = "number", default = 1, between = { 0.001, 600 },
                        description = "seconds a queued request waits (needs queue > 0)" },
      status = { type = "integer", default = 429, between = { 400, 599 } },
      scope = { type = "string", default = "local", one_of = { "local", "cluster" },
                description = "local: this gateway's workers share the limit; cluster: every gateway on that Redis" },
      redis = { type = "redis", description = "scope = cluster: the redis block (redis \"name\" { ... })" },
      lease = { type = "any", default = 10,
                description = "scope = cluster: how long a dead gateway's permits stay taken (renewed while a request "
                              .. "runs): a duration (\"10s\", \"1500ms\") or seconds, from 300 ms to 24 h" },
      on_redis_error = { type = "string", default = "local", one_of = { "allow", "deny", "local" },
                         description = "scope = cluster, Redis unreachable: allow, deny (503), local (max / nodes here)" },
      name = { type = "string", non_empty = true,
               description = "scope = cluster: the limit's name in Redis (default: the route's name)" },
    },
    check = function(conf, given)
      if conf.scope == "cluster" then
        if not conf.redis then return nil, "field 'redis': scope = \"cluster\" needs the name of a redis block" end
        local lease = seconds(conf.lease)
        if not lease or lease < 0.3 or lease > 86400 then
          return nil, ("field 'lease': %s is not a duration from \"300ms\" to \"24h\" (or seconds)")
                      :format(tostring(conf.lease))
        end
        conf.lease = lease
      elseif given.redis or given.lease or given.on_redis_error or given.name then
        return nil, "fields 'redis', 'lease', 'on_redis_error' and 'name' need scope = \"cluster\""
      end
      if conf.weight > conf.max then
        return nil, ("field 'weight': %d is more than max (%d): no request could ever pass"):format(conf.weight, conf.max)
      end
      if given.queue_timeout and conf.queue == 0 then
        return nil, "field 'queue_timeout': only used with queue > 0 (requests are rejected at once)"
      end
      return true
    end,
  },
}

local floor, max = math.floor, math.max

local function refuse(conf)
  return conf.status, { error = "too many requests in flight", limit = conf.max }, { ["Retry-After"] = "1" }
end

local function local_limit(ctx, conf, key, permits)
  -- one semaphore per route and key: "limit-conn:gw.lua:12" for the route itself,
  -- "limit-conn:gw.lua:12:<value>" per ip, consumer or header
  local name = "limit-conn:" .. ctx.route.declared_at
  if conf.key.kind ~= "route" then name = name .. ":" .. key end
  local sem = gw.semaphore(name, permits)
  local ok
  if conf.queue > 0 then
    ok = sem:acquire(conf.weight, conf.queue_timeout, conf.queue)
  else
    ok = sem:try_acquire(conf.weight)
  end
  if not ok then return refuse(conf) end
end

-- scope = "cluster": a lease in Redis (held until the request ends); on a Redis failure, on_redis_error
local function cluster_limit(ctx, conf, key)
  local red = gw.redis(conf.redis)
  -- named by the route's name, not its file:line, which differs between nodes
  local name = "limit-conn:" .. (conf.name or ctx.route.name) .. ":"
  if conf.key.kind ~= "route" then name = name .. key end
  local sem = red:semaphore(name, conf.max, conf.lease)
  local ok, err, msg = sem:acquire(conf.weight, conf.queue > 0 and conf.queue_timeout or 0, conf.queue)
  if ok then return end
  if err == "busy" or err == "timeout" then return refuse(conf) end
  local policy = conf.on_redis_error
  red:fallback("limit-conn " .. (conf.name or ctx.route.name), policy, err, msg)
  if policy == "allow" then return end
  if policy == "deny" then return gw.error(err) end -- the kind: 503, X-Gateway-Error, the access log, the metrics
  return local_limit(ctx, conf, key, max(conf.weight, floor(conf.max / red:conf().nodes)))
end

function LimitConn.access(ctx, conf)
  local key = conf.key.resolve(ctx)
  if not key then return end -- nothing to count by (e.g. no consumer): not limited here
  if conf.scope == "cluster" then return cluster_limit(ctx, conf, key) end
  return local_limit(ctx, conf, key, conf.max)
end

return LimitConn
