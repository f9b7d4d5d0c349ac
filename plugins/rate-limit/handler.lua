-- rate-limit: a token bucket per key (consumer, client ip, a header, or the
-- route), shared by every worker through a gw.shared dict, so a limit of 10/s
-- is 10/s for the whole gateway. Over the limit: 429 with Retry-After.
-- Every response carries RateLimit-Limit / -Remaining / -Reset.
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
    },
    check = function(conf)
      conf.burst = conf.burst or math.max(conf.rate, 1)
      gw._define_shared(conf.dict, 1024 * 1024, true) -- 1 MiB unless shared_dict() declared it
      return true
    end,
  },
}

local floor, ceil, tostring = math.floor, math.ceil, tostring

function RateLimit.access(ctx, conf)
  local key = conf.key.resolve(ctx)
  if not key then return end -- nothing to count by (e.g. no consumer): not limited here
  local dict = gw.shared[conf.dict]
  local bucket = ctx.route.declared_at .. "|" .. conf.key.spec .. "|" .. key
  local allowed, remaining, retry = dict:token_bucket(bucket, conf.rate, conf.burst, 1)
  local h = ctx.response.headers
  h["RateLimit-Limit"] = tostring(conf.burst)
  h["RateLimit-Remaining"] = tostring(floor(remaining))
  h["RateLimit-Reset"] = tostring(ceil((conf.burst - remaining) / conf.rate))
  if not allowed then
    local after = tostring(ceil(retry))
    h["Retry-After"] = after
    return conf.status, { error = "rate limit exceeded", retry_after = tonumber(after) }
  end
end

return RateLimit
