-- basic-auth: HTTP Basic authentication against configured users. Passwords
-- are given as SHA-256 hex digests ("sha256:<hex>") or, for tests, in clear.
local ffi = require "ffi"

local BasicAuth = {
  name = "basic-auth",
  version = "1.0.0",
  priority = 1100,
  schema = {
    fields = {
      users = { type = "map", keys = { type = "string" }, values = { type = "string" }, required = true,
                description = "user -> \"sha256:<hex digest>\" or a clear password" },
      realm = { type = "string", default = "moongate" },
      hide_credentials = { type = "boolean", default = true },
    },
  },
}

ffi.cdef [[
unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);
]]
local crypto = ffi.load("crypto")
local digest = ffi.new("unsigned char[32]")

local function sha256_hex(s)
  crypto.SHA256(s, #s, digest)
  local out = {}
  for i = 0, 31 do out[i + 1] = string.format("%02x", digest[i]) end
  return table.concat(out)
end

local function decode64(s)
  local b = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  s = s:gsub("[^" .. b .. "=]", "")
  return (s:gsub(".", function(x)
    if x == "=" then return "" end
    local r, f = "", (b:find(x, 1, true) - 1)
    for i = 6, 1, -1 do r = r .. (f % 2 ^ i - f % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end):gsub("%d%d%d?%d?%d?%d?%d?%d?", function(x)
    if #x ~= 8 then return "" end
    local c = 0
    for i = 1, 8 do c = c + (x:sub(i, i) == "1" and 2 ^ (8 - i) or 0) end
    return string.char(c)
  end))
end

function BasicAuth.access(ctx, conf)
  local auth = ctx.request:header("Authorization")
  local user, pass
  if auth then
    local b64 = auth:match("^[Bb]asic%s+(%S+)$")
    local decoded = b64 and decode64(b64)
    if decoded then user, pass = decoded:match("^([^:]*):(.*)$") end
  end
  local expected = user and conf.users[user]
  local ok = false
  if expected then
    local hex = expected:match("^sha256:(%x+)$")
    ok = hex and sha256_hex(pass) == hex:lower() or (not hex and pass == expected)
  end
  if not ok then
    return 401, { message = "authentication required" },
           { ["WWW-Authenticate"] = 'Basic realm="' .. conf.realm .. '"' }
  end
  ctx.consumer = user
  if conf.hide_credentials then ctx.request:clear_header("Authorization") end
end

return BasicAuth
