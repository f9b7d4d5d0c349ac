-- request-transformer: change the headers a proxy route sends upstream.
return {
  name = "request-transformer",
  version = "1.0.0",
  priority = 801,
  schema = {
    fields = {
      set = { type = "map", keys = { type = "string" }, values = { type = "string" }, default = {},
              description = "headers to set (replacing the client's); $trace_id and $consumer expand" },
      remove = { type = "array", elements = { type = "string" }, default = {} },
    },
  },
  access = function(ctx, conf)
    local req = ctx.request
    for _, name in ipairs(conf.remove) do req:clear_header(name) end
    for name, value in pairs(conf.set) do
      req:set_header(name, (value:gsub("%$(%a[%w_]*)", function(var)
        if var == "trace_id" then return ctx.trace_id end
        if var == "consumer" then return ctx.consumer or "" end
      end)))
    end
  end,
}
