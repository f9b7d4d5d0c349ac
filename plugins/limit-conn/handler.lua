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
      key = { type = "key", default = "route",
              description = "what is counted: \"route\", \"ip\", \"consumer\" or \"header:<Name>\"" },
      weight = { type = "integer", default = 1, between = { 1, 1000000 },
                 description = "permits this route costs (at most max)" },
      queue = { type = "integer", default = 0, between = { 0, 1000000 },
                description = "requests that may wait (0: reject at once)" },
      queue_timeout = { type = "number", default = 1, between = { 0.001, 600 },
                        description = "seconds a queued request waits (needs queue > 0)" },
      status = { type = "integer", default = 429, between = { 400, 599 } },
    },
    check = function(conf, given)
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

function LimitConn.access(ctx, conf)
  local key = conf.key.resolve(ctx)
  if not key then return end -- nothing to count by (e.g. no consumer): not limited here
  -- one semaphore per route and key: "limit-conn:gw.lua:12" for the route itself,
  -- "limit-conn:gw.lua:12:<value>" per ip, consumer or header
  local name = "limit-conn:" .. ctx.route.declared_at
  if conf.key.kind ~= "route" then name = name .. ":" .. key end
  local sem = gw.semaphore(name, conf.max)
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
