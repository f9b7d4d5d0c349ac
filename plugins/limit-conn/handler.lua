-- limit-conn: at most `max` requests in flight per key (the route, the client
-- ip, the consumer, a header), across all workers, on the C semaphores.
-- Over the limit: reject at once, or queue up to `queue` requests for
-- `queue_timeout`. The permit is held until the request ends (the teardown
-- releases it on every path: success, errors, timeouts, client gone).
local LimitConn = {
  name = "limit-conn",
  version = "1.0.0",
  priority = 905, -- after authentication, with rate-limit
  schema = {
    fields = {
      max = { type = "integer", required = true, between = { 1, 1000000 } },
      key = { type = "string", default = "route", match = "^[%w:_%-]+$",
              description = "route | ip | consumer | header:<Name>" },
      weight = { type = "integer", default = 1, between = { 1, 1000000 },
                 description = "permits this route costs" },
      queue = { type = "integer", default = 0, between = { 0, 1000000 },
                description = "requests that may wait (0: reject at once)" },
      queue_timeout = { type = "number", default = 1, between = { 0.001, 600 }, description = "seconds" },
      status = { type = "integer", default = 429, between = { 400, 599 } },
    },
  },
}

local tostring = tostring

local function key_of(ctx, conf)
  local k = conf.key
  if k == "route" then return "" end
  if k == "ip" then return ctx.request.client_ip end -- the peer, or the client trusted_proxies name
  if k == "consumer" then return ctx.consumer end
  return ctx.request:header(k:sub(8))
end

function LimitConn.access(ctx, conf)
  local key = key_of(ctx, conf)
  if not key then return end
  local sem = gw.semaphore("limit-conn:" .. ctx.route.declared_at .. ":" .. key, conf.max)
  local ok
  if conf.queue > 0 then
    ok = sem:acquire(conf.weight, conf.queue_timeout, conf.queue)
  else
    ok = sem:try_acquire(conf.weight)
  end
  if not ok then
    return conf.status, { error = "too many requests in flight", limit = conf.max },
           { ["Retry-After"] = "1" }
  end
end

return LimitConn
