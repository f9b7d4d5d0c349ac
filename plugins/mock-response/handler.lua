-- mock-response: answers with a fixed response (stubbing an API, maintenance
-- pages); the handler or upstream is not called.
return {
  name = "mock-response",
  version = "1.0.0",
  priority = 10,
  schema = {
    fields = {
      status = { type = "integer", default = 200, between = { 200, 599 } },
      body = { type = "string", default = "" },
      json = { type = "map", description = "a JSON body (instead of body)" },
      headers = { type = "map", keys = { type = "string" }, values = { type = "string" }, default = {} },
      delay = { type = "number", default = 0, between = { 0, 60 }, description = "seconds to wait first" },
    },
  },
  access = function(ctx, conf)
    if conf.delay > 0 then gw.sleep(conf.delay) end
    return conf.status, conf.json or conf.body, conf.headers
  end,
}
