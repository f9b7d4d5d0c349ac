-- basic-auth: HTTP Basic authentication against configured users. Passwords
-- are given as SHA-256 hex digests ("sha256:<hex>") or, for tests, in clear.
local ffi = require "ffi"

local BasicAuth = {
  name = "basic-auth",
  version = "1.0.0",
  priority = 1100,
  schema = {
    fields = {
      users = { type = "map", required = true, non_empty = true,
                -- Basic credentials split at the first ':', so a user name with one could never log in
                keys = { type = "string", match = "^[^:%c]+$" },
                values = { type = "string", non_empty = true },
                description = "user -> \"sha256:<64 hex digits>\" or a clear password" },
      realm = { type = "string", default = "moongate", match = "^[^\"\\%c]*$",
                description = "the realm in WWW-Authenticate (no quotes, backslashes or controls)" },
      hide_credentials = { type = "boolean", default = true },
    },
    check = function(conf)
      for user, expected in pairs(conf.users) do
        -- a mistyped digest would otherwise be taken for a clear password
        if expected:sub(1, 7) == "sha256:" and not expected:match("^sha256:" .. ("%x"):rep(64) .. "$") then
          return nil, ("field 'users.%s': a sha256: digest is 64 hex digits"):format(user)
        end
      end
      return true
    end,
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
    local hex = expected:match("^sha256:(%x+)$") -- exactly 64 digits (checked at load)
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
