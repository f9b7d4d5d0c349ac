-- jwt-auth with HS256 and RS256 tokens made here with the openssl CLI.
local helpers = require "spec.helpers"

local function b64url(s)
  local f = io.popen("printf '%s' '" .. s:gsub("'", "'\\''") .. "' | openssl base64 -A", "r")
  local out = f:read("*a")
  f:close()
  return (out:gsub("=", ""):gsub("+", "-"):gsub("/", "_"):gsub("%s", ""))
end

local function sign_file(args, data)
  local dir = helpers.tmpdir()
  helpers.write_file(dir .. "/data", data)
  local f = io.popen("openssl dgst -sha256 " .. args .. " -binary " .. dir .. "/data | openssl base64 -A", "r")
  local sig = f:read("*a")
  f:close()
  return (sig:gsub("=", ""):gsub("+", "-"):gsub("/", "_"):gsub("%s", ""))
end

local function token(header, claims, signer)
  local signed = b64url(gw.json.encode(header)) .. "." .. b64url(gw.json.encode(claims))
  return signed .. "." .. signer(signed)
end

describe("jwt-auth", function()
  local g, dir
  local secret = "hmac-secret-123"
  local hs = function(data) return sign_file("-hmac " .. secret, data) end
  local rs

  setup(function()
    dir = helpers.tmpdir()
    assert(os.execute("openssl genrsa -out " .. dir .. "/key.pem 2048 2>/dev/null") == 0)
    assert(os.execute("openssl rsa -in " .. dir .. "/key.pem -pubout -out " .. dir .. "/pub.pem 2>/dev/null") == 0)
    rs = function(data) return sign_file("-sign " .. dir .. "/key.pem", data) end
    g = helpers.start(([[
      local pub = io.open("%s/pub.pem"):read("*a")
      route { path = "/api", plugins = { ["jwt-auth"] = {
          keys = { default = { alg = "HS256", secret = "%s" }, rsa1 = { alg = "RS256", public_key = pub } },
          issuer = "https://issuer.example", audience = "moongate", leeway = 5 } },
        handler = function(ctx) return 200, { sub = ctx.consumer, role = ctx.jwt.role } end }
    ]]):format(dir, secret))
  end)
  teardown(function() g:stop() end)

  local function call(tok)
    return g:request("GET", "/api", { headers = { Authorization = "Bearer " .. tok } })
  end
  local function claims(extra)
    local c = { sub = "user-7", role = "admin", iss = "https://issuer.example", aud = { "other", "moongate" },
                exp = os.time() + 60 }
    for k, v in pairs(extra or {}) do c[k] = v end
    return c
  end

  it("accepts valid HS256 and RS256 tokens", function()
    local res = call(token({ alg = "HS256", typ = "JWT" }, claims(), hs))
    assert.equal(200, res.status)
    assert.equal("user-7", res.json.sub)
    assert.equal("admin", res.json.role)
    res = call(token({ alg = "RS256", kid = "rsa1" }, claims(), rs))
    assert.equal(200, res.status)
  end)

  it("refuses bad signatures, algorithm confusion and bad claims", function()
    local cases = {
      { "no token", g:request("GET", "/api") },
      { "bad signature", call(token({ alg = "HS256" }, claims(), function(d) return sign_file("-hmac wrong", d) end)) },
      { "algorithm mismatch", call(token({ alg = "HS256", kid = "rsa1" }, claims(), hs)) },
      { "expired", call(token({ alg = "HS256" }, claims({ exp = os.time() - 60 }), hs)) },
      { "not yet valid", call(token({ alg = "HS256" }, claims({ nbf = os.time() + 60 }), hs)) },
      { "wrong issuer", call(token({ alg = "HS256" }, claims({ iss = "evil" }), hs)) },
      { "wrong audience", call(token({ alg = "HS256" }, claims({ aud = "someone-else" }), hs)) },
      { "malformed token", call("not.a.jwt!") },
    }
    for _, c in ipairs(cases) do
      assert.equal(401, c[2].status, c[1])
      assert.equal(c[1], c[2].json.reason)
    end
  end)
end)
