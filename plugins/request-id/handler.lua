-- request-id: the gateway already takes the trace id from traceparent or
-- X-Request-ID (or makes one), sends it upstream and returns it as
-- X-Request-ID. This plugin adds it under another header name too, both
-- upstream and in the response (e.g. X-Correlation-ID).
local schema = require "moongate.schema"

local RequestId = {
  name = "request-id",
  version = "1.0.0",
  priority = 11000, -- early: later plugins log with it
  schema = {
    fields = {
      header = { type = "header_name", default = "X-Request-ID",
                 description = "header name to carry the trace id" },
      echo = { type = "boolean", default = true,
               description = "also return it in the response (for a header other than X-Request-ID)" },
    },
    check = function(conf, given)
      local h = conf.header:lower()
      if h == "x-request-id" then
        -- the core always sends and returns X-Request-ID: echo would change nothing
        if given.echo then return nil, "field 'echo': only used with another header than X-Request-ID" end
      elseif schema.OWNED.request[h] or schema.OWNED.response[h] then
        return nil, ("field 'header': the gateway writes %s itself"):format(conf.header)
      end
      return true
    end,
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
