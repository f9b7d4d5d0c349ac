-- cors: answers preflight requests (OPTIONS with Access-Control-Request-Method)
-- itself, and adds the CORS response headers to allowed origins.
local Cors = {
  name = "cors",
  version = "1.0.0",
  priority = 2000, -- before authentication: a preflight carries no credentials
  schema = {
    fields = {
      origins = { type = "array", non_empty = true, elements = { type = "string" }, default = { "*" },
                  description = "allowed origins (\"https://app.example.com\", scheme://host[:port] as "
                                .. "browsers send it), or \"*\"" },
      methods = { type = "array", non_empty = true,
                  -- methods are case-sensitive: "get" is not GET
                  elements = { type = "string", match = "^[!#$%%&'*+%-.^_`|~%u%d]+$" },
                  default = { "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS" } },
      headers = { type = "array", elements = { type = "header_name" }, default = {},
                  description = "allowed request headers (default: whatever the preflight asks for)" },
      expose_headers = { type = "array", elements = { type = "header_name" }, default = {} },
      credentials = { type = "boolean", default = false },
      max_age = { type = "integer", default = 3600, between = { 0, 86400 } },
    },
    check = function(conf)
      for i, o in ipairs(conf.origins) do
        -- an Origin header is exactly scheme://host[:port]: a path or a trailing '/' never matches
        if o ~= "*" and not o:match("^%a[%w+.%-]*://[^/%s]+$") then
          return nil, ("field 'origins[%d]': '%s' is not an origin (scheme://host[:port], no path) or \"*\""):format(i, o)
        end
      end
      return true
    end,
  },
}

local concat = table.concat

local function allowed_origin(conf, origin)
  for _, o in ipairs(conf.origins) do
    if o == "*" then return conf.credentials and origin or "*" end
    if o == origin then return origin end
  end
end

function Cors.access(ctx, conf)
  local req = ctx.request
  local origin = req:header("Origin")
  if not origin then return end
  local allow = allowed_origin(conf, origin)
  local preflight = req.method == "OPTIONS" and req:header("Access-Control-Request-Method")
  if not allow then
    if preflight then return 403, { error = "origin not allowed" } end
    return -- not a CORS-allowed origin: no CORS headers, the browser blocks it
  end
  local h = ctx.response.headers
  h["Access-Control-Allow-Origin"] = allow
  if allow ~= "*" then h["Vary"] = "Origin" end
  if conf.credentials then h["Access-Control-Allow-Credentials"] = "true" end
  if preflight then
    h["Access-Control-Allow-Methods"] = concat(conf.methods, ", ")
    local asked = req:header("Access-Control-Request-Headers")
    local hs = #conf.headers > 0 and concat(conf.headers, ", ") or asked
    if hs then h["Access-Control-Allow-Headers"] = hs end
    h["Access-Control-Max-Age"] = tostring(conf.max_age)
    return 204
  end
  if #conf.expose_headers > 0 then h["Access-Control-Expose-Headers"] = concat(conf.expose_headers, ", ") end
end

return Cors
