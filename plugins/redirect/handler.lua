-- redirect: answers with a redirect. `to` may use {path} and {query}; with
-- https = true it redirects to the same host and path over https.
return {
  name = "redirect",
  version = "1.0.0",
  priority = 5000,
  schema = {
    fields = {
      to = { type = "string", description = "target URL; {path}, {query} and {host} are replaced" },
      https = { type = "boolean", default = false, description = "redirect to https://<host><path>" },
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
      location = "https://" .. (req.host or "localhost") .. req.path .. query
    else
      location = conf.to:gsub("{(%a+)}", { path = req.path, query = query, host = req.host or "" })
    end
    return conf.status, "", { Location = location }
  end,
}
