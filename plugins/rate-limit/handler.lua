-- rate-limit: a token bucket per key (consumer, client ip, a header, or the
-- route), shared by every worker through a gw.shared dict, so a limit of 10/s
-- is 10/s for the whole gateway. Over the limit: 429 with Retry-After.
-- Every response carries RateLimit-Limit / -Remaining / -Reset.
--
-- policy = "redis" keeps the bucket in Redis instead (redis = "<block>"), so
-- that every gateway of a fleet pointing at that Redis shares it: one
-- round trip per request, the bucket computed atomically by a script (GCRA,
-- in Redis's clock). When Redis cannot answer, on_redis_error applies:
-- "allow", "deny" (503), or "local" (this gateway's share: rate and burst
-- divided by the redis block's nodes, in the local dict). See docs/cluster.md.

-- GCRA: one key holds the bucket's "theoretical arrival time" (µs, Redis's
-- clock, so the gateways' clocks need not agree). KEYS[1] the bucket. The
-- emission interval (µs per token) and the burst are written into the
-- script, one script per (rate, burst): fewer arguments to format and parse
-- on every request. Returns how far (µs) the bucket's arrival time is ahead
-- of now with this request counted: positive when allowed, negated when
-- refused (then it was not counted). One integer: a table reply costs Redis
-- more than the rest of the script.
local GCRA = [[
local interval, burst = %.17g, %.17g
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local ahead = (tat - now) + interval -- in this order: exact at any rate
if ahead > burst * interval then return -math.max(1, math.ceil(ahead)) end
redis.call('SET', KEYS[1], now + ahead, 'PX', math.ceil(ahead / 1000) + 1)
return math.max(1, math.ceil(ahead))
]]

local RateLimit = {
  name = "rate-limit",
  version = "1.0.0",
  priority = 910, -- after authentication (key-auth 1250), so "consumer" is known
  schema = {
    fields = {
      rate = { type = "number", required = true, between = { 1e-6, 1e9 }, description = "tokens added per second" },
      burst = { type = "number", between = { 1, 1e9 }, description = "bucket size (default: rate, at least 1)" },
      key = { type = "key", default = "ip",
              description = "what is counted: \"ip\", \"consumer\", \"route\" or \"header:<Name>\"" },
      dict = { type = "string", default = "rate_limit", match = "^[%w_]+$",
               description = "the gw.shared dict holding the buckets" },
      status = { type = "integer", default = 429, between = { 400, 599 } },
      policy = { type = "string", default = "local", one_of = { "local", "redis" },
                 description = "local: this gateway's workers share the bucket; redis: every gateway on that Redis" },
      redis = { type = "redis", description = "policy = redis: the redis block (redis \"name\" { ... })" },
      on_redis_error = { type = "string", default = "local", one_of = { "allow", "deny", "local" },
                         description = "policy = redis, Redis unreachable: allow, deny (503), local (rate / nodes here)" },
      name = { type = "string", non_empty = true,
               description = "policy = redis: the limit's name in Redis (default: the route's name); "
                             .. "gateways share a bucket by name and key" },
    },
    check = function(conf, given)
      conf.burst = conf.burst or math.max(conf.rate, 1)
      if conf.policy == "redis" then
        if not conf.redis then return nil, "field 'redis': policy = \"redis\" needs the name of a redis block" end
        conf._interval_us = 1e6 / conf.rate
        conf._script = gw.redis.script(GCRA:format(conf._interval_us, conf.burst))
      elseif given.redis or given.on_redis_error or given.name then
        return nil, "fields 'redis', 'on_redis_error' and 'name' need policy = \"redis\""
      end
      gw._define_shared(conf.dict, 1024 * 1024, true) -- 1 MiB unless shared_dict() declared it (local and fallback)
      return true
    end,
  },
}

local floor, ceil, max, tostring, tonumber = math.floor, math.ceil, math.max, tostring, tonumber

local function answer(ctx, conf, burst, allowed, remaining, reset_s, retry_s)
  local h = ctx.response.headers
  h["RateLimit-Limit"] = tostring(floor(burst)) -- a fractional burst admits floor(burst) requests
  h["RateLimit-Remaining"] = tostring(floor(remaining))
  h["RateLimit-Reset"] = tostring(ceil(reset_s))
  if not allowed then
    local after = tostring(ceil(retry_s))
    h["Retry-After"] = after
    return conf.status, { error = "rate limit exceeded", retry_after = tonumber(after) }
  end
end

local function local_bucket(ctx, conf, key, rate, burst)
  local dict = gw.shared[conf.dict]
  local bucket = ctx.route.declared_at .. "|" .. conf.key.spec .. "|" .. key
  local allowed, remaining, retry = dict:token_bucket(bucket, rate, burst, 1)
  return answer(ctx, conf, burst, allowed, remaining, (burst - remaining) / rate, retry)
end

-- policy = "redis": one EVALSHA; on a Redis failure, on_redis_error
local function redis_bucket(ctx, conf, key)
  if conf.key.kind == "route" then key = "" end -- the bucket's name says the route; its file:line differs by node
  local red, prefix = conf._red, conf._prefix
  if not red then -- conf is this generation's, like the redis block: keep the handle and the prefix
    red = gw.redis(conf.redis)
    prefix = red:conf().prefix .. "rl:"
    conf._red, conf._prefix = red, prefix
  end
  local bucket = prefix .. (conf.name or ctx.route.name) .. "|" .. conf.key.spec .. "|" .. key
  local ahead, err, msg = red:eval(conf._script, 1, bucket)
  if ahead then
    local interval, cap = conf._interval_us, conf.burst * conf._interval_us
    if ahead > 0 then -- allowed: the bucket is full again in `ahead` µs
      return answer(ctx, conf, conf.burst, true, (cap - ahead) / interval, ahead / 1e6)
    end
    local reset = -ahead - interval -- refused: it was not counted
    return answer(ctx, conf, conf.burst, false, (cap - reset) / interval, reset / 1e6, (-ahead - cap) / 1e6)
  end
  local policy = conf.on_redis_error
  red:fallback("rate-limit " .. (conf.name or ctx.route.name), policy, err, msg)
  if policy == "allow" then return end
  if policy == "deny" then return gw.error(err) end -- the kind: 503, X-Gateway-Error, the access log, the metrics
  -- this node's share; the bucket holds whole requests, so its size is an integer (at least 1), as its header says
  local nodes = red:conf().nodes
  return local_bucket(ctx, conf, key, conf.rate / nodes, max(1, floor(conf.burst / nodes)))
end

function RateLimit.access(ctx, conf)
  local key = conf.key.resolve(ctx)
  if not key then return end -- nothing to count by (e.g. no consumer): not limited here
  if conf.policy == "redis" then return redis_bucket(ctx, conf, key) end
  return local_bucket(ctx, conf, key, conf.rate, conf.burst)
end

return RateLimit
