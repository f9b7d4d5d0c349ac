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

-- The key set is built once per conf (conf tables are shared by the routes that use them).
local function keyset(conf)
  local set = conf._set
  if set then return set end
  set = {}
  for k, consumer in pairs(conf.keys or {}) do set[k] = consumer end
  if conf.keys_file then
    local f = assert(io.open(conf.keys_file, "r"), "key-auth: cannot read keys_file " .. conf.keys_file)
    for line in f:lines() do
      local key, consumer = line:match("^([^\t]+)\t?(.*)$")
      if key then set[key] = consumer ~= "" and consumer or key end
    end
    f:close()
  end
  conf._set = set
  return set
end

function KeyAuth.access(ctx, conf)
  local req = ctx.request
  local key = req:header(conf.header)
  if not key and conf.query then key = req.args[conf.query] end
  local consumer = key and keyset(conf)[key]
  if not consumer then return 401, UNAUTHORIZED, CHALLENGE end
  ctx.consumer = consumer
  if conf.hide_credentials then req:clear_header(conf.header) end
end

return KeyAuth
