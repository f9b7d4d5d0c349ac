-- redirect: answers with a redirect. `to` may use {path} and {query}; with
-- https = true it sends plain-HTTP requests to the same host and path over
-- https (on https_port when it is not 443) and lets HTTPS requests through,
-- so it can be attached globally to a config with both kinds of listener.
return {
  name = "redirect",
  version = "1.0.0",
  priority = 5000,
  schema = {
    fields = {
      to = { type = "string", description = "target URL; {path}, {query} and {host} are replaced" },
      https = { type = "boolean", default = false, description = "redirect plain HTTP to https://<host><path>" },
      https_port = { type = "integer", between = { 1, 65535 }, default = 443, description = "the HTTPS listener's port" },
      status = { type = "integer", default = 301, one_of = { 301, 302, 303, 307, 308 } },
    },
    check = function(conf)
      if not conf.to and not conf.https then return nil, "give to or https = true" end
      return true
    end,
  },
  access = function(ctx, conf)
    local req = ctx.request
    local query = req.query ~= "" and ("?" .. req.query) or ""
    local location
    if conf.https then
      if req.scheme == "https" then return end
      local host = (req.host or "localhost"):gsub(":%d+$", "")
      if conf.https_port ~= 443 then host = host .. ":" .. conf.https_port end
      location = "https://" .. host .. req.path .. query
    else
      location = conf.to:gsub("{(%a+)}", { path = req.path, query = query, host = req.host or "" })
    end
    return conf.status, "", { Location = location }
  end,
}
