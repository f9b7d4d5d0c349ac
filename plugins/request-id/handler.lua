-- request-id: the gateway already takes the trace id from traceparent or
-- X-Request-ID (or makes one), sends it upstream and returns it as
-- X-Request-ID. This plugin adds it under another header name too, both
-- upstream and in the response (e.g. X-Correlation-ID).
local RequestId = {
  name = "request-id",
  version = "1.0.0",
  priority = 11000, -- early: later plugins log with it
  schema = {
    fields = {
      header = { type = "string", default = "X-Request-ID", match = "^[%w!#$%%&'*+%-.^_`|~]+$",
                 description = "header name to carry the trace id" },
      echo = { type = "boolean", default = true, description = "also return it in the response" },
    },
  },
}

function RequestId.uses(phase, conf)
  return conf.header:lower() ~= "x-request-id" -- the default needs no work: the core does it
end

function RequestId.access(ctx, conf)
  ctx.request:set_header(conf.header, ctx.trace_id)
  if conf.echo then ctx.response.headers[conf.header] = ctx.trace_id end
end

return RequestId
