-- key-auth: requests must carry a known API key (a header, or a query
-- argument); the consumer it belongs to becomes ctx.consumer. Unknown or
-- missing key: 401 with a JSON body.
local KeyAuth = {
  name = "key-auth",
  version = "1.0.0",
  priority = 1250,
}

local UNAUTHORIZED = { message = "missing or invalid API key" }
local CHALLENGE = { ["WWW-Authenticate"] = 'Key realm="moongate"' }

function KeyAuth.access(ctx, conf)
  local req = ctx.request
  local key = req:header(conf.header)
  if not key and conf.query then key = req.args[conf.query] end
  local consumer = key and conf._set[key] -- built at load (schema.lua)
  if not consumer then return 401, UNAUTHORIZED, CHALLENGE end
  ctx.consumer = consumer
  if conf.hide_credentials then req:clear_header(conf.header) end
end

return KeyAuth
