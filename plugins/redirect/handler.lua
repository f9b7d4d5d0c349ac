-- redirect: answers with a redirect. `to` may use {path}, {query} and {host};
-- with https = true it sends plain-HTTP requests to the same host and path over
-- https (on https_port when it is not 443) and lets HTTPS requests through,
-- so it can be attached globally to a config with both kinds of listener.
--
-- The host put in Location is never the client's raw Host: it is the configured
-- `host`, else ctx.request.host, which the core validated (an RFC 3986 host,
-- lowercased, without its port; "Host: evil.test/x?" is a 400 before any
-- plugin runs), so a redirect cannot be steered to another site.
local fmt = string.format

local PLACEHOLDERS = { path = true, query = true, host = true }

-- a DNS name or IPv4 address, or an [IPv6] literal; no port, no userinfo, no path
local function valid_host(h)
  return h:match("^[%w][%w%-%.]*$") ~= nil and not h:find("..", 1, true) or h:match("^%[[%x:%.]+%]$") ~= nil
end

return {
  name = "redirect",
  version = "1.1.0",
  priority = 5000,
  schema = {
    fields = {
      to = { type = "header_value", description = "target URL; {path}, {query} and {host} are replaced" },
      https = { type = "boolean", default = false, description = "redirect plain HTTP to https://<host><path>" },
      https_port = { type = "integer", between = { 1, 65535 }, default = 443,
                     description = "the HTTPS listener's port (with https = true)" },
      host = { type = "string",
               description = "the host to redirect to instead of the request's (a name or [IPv6] literal, no port; "
                             .. "with https = true or {host} in to)" },
      status = { type = "integer", default = 301, one_of = { 301, 302, 303, 307, 308 } },
    },
    check = function(conf, given)
      if conf.to and conf.https then return nil, "give to or https = true, not both" end
      if not conf.to and not conf.https then return nil, "give to or https = true" end
      if given.https_port and not conf.https then return nil, "field 'https_port': only used with https = true" end
      if conf.to then
        if conf.to == "" then return nil, "field 'to': must not be empty" end
        -- an unknown {name} would be sent as is: a typo in a Location header
        for name in conf.to:gmatch("{([^}]*)}") do
          if not PLACEHOLDERS[name] then
            return nil, fmt("field 'to': unknown placeholder {%s} (known: {path}, {query}, {host})", name)
          end
        end
      end
      if conf.host then
        if not valid_host(conf.host) then
          return nil, fmt("field 'host': '%s' is not a host name or [IPv6] literal (no port, path or userinfo)", conf.host)
        end
        if conf.to and not conf.to:find("{host}", 1, true) then
          return nil, "field 'host': only used with https = true or {host} in to"
        end
      end
      return true
    end,
  },
  access = function(ctx, conf)
    local req = ctx.request
    local query = req.query ~= "" and ("?" .. req.query) or ""
    local host = conf.host or req.host
    if host == "" then host = nil end -- HTTP/1.0 without Host, or an empty Host
    local location
    if conf.https then
      if req.scheme == "https" then return end
      if not host then return 400, { error = "no host to redirect to" } end
      if conf.https_port ~= 443 then host = host .. ":" .. conf.https_port end
      location = "https://" .. host .. req.path .. query
    else
      if not host and conf.to:find("{host}", 1, true) then return 400, { error = "no host to redirect to" } end
      location = conf.to:gsub("{(%a+)}", { path = req.path, query = query, host = host })
    end
    return conf.status, "", { Location = location }
  end,
}
