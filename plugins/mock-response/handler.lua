-- mock-response: answers with a fixed response (stubbing an API, maintenance
-- pages); the handler or upstream is not called.
return {
  name = "mock-response",
  version = "1.0.0",
  priority = 10,
  schema = {
    fields = {
      status = { type = "integer", default = 200, between = { 200, 599 } },
      body = { type = "string", description = "a text body (default: empty)" },
      json = { type = "any", description = "a JSON body (a table, instead of body)" },
      headers = { type = "map", keys = { type = "header_name", direction = "response" },
                  values = { type = "header_value" }, default = {} },
      delay = { type = "number", default = 0, between = { 0, 60 }, description = "seconds to wait first" },
    },
    check = function(conf)
      if conf.json ~= nil and type(conf.json) ~= "table" then
        return nil, "field 'json': expected a table (a JSON object or array)"
      end
      if conf.json ~= nil and conf.body ~= nil then return nil, "give body or json, not both" end
      local has_body = conf.json ~= nil or (conf.body or "") ~= ""
      if has_body and (conf.status == 204 or conf.status == 304) then
        return nil, ("field 'status': a %d response has no body; drop body/json"):format(conf.status)
      end
      conf.body = conf.body or ""
      return true
    end,
  },
  access = function(ctx, conf)
    if conf.delay > 0 then gw.sleep(conf.delay) end
    return conf.status, conf.json or conf.body, conf.headers
  end,
}
