-- jwt-auth: verifies a JSON Web Token (HS256 or RS256, through OpenSSL) from
-- "Authorization: Bearer <token>" (or a query argument), and its exp, nbf, iss
-- and aud claims. The claims become ctx.jwt and `sub` ctx.consumer.
local ffi = require "ffi"

local JwtAuth = {
  name = "jwt-auth",
  version = "1.0.0",
  priority = 1200,
  schema = {
    fields = {
      keys = { type = "map", required = true, non_empty = true,
               keys = { type = "string", non_empty = true },
               values = { type = "record", fields = {
                 alg = { type = "string", required = true, one_of = { "HS256", "RS256" } },
                 secret = { type = "string", non_empty = true, description = "HS256: the shared secret" },
                 public_key = { type = "string", description = "RS256: the PEM public key" },
               } },
               description = "kid (or \"default\") -> { alg = \"HS256\", secret = ... } | { alg = \"RS256\", public_key = PEM }" },
      query = { type = "string", non_empty = true,
                description = "query argument with the token (when no Authorization header)" },
      issuer = { type = "string", non_empty = true, description = "required iss" },
      audience = { type = "string", non_empty = true, description = "required aud (a string or one of an array)" },
      leeway = { type = "number", default = 0, between = { 0, 3600 }, description = "clock skew allowed, seconds" },
      require_exp = { type = "boolean", default = true },
    },
  },
}

ffi.cdef [[
typedef struct evp_md_st EVP_MD;
typedef struct evp_pkey_st EVP_PKEY;
typedef struct evp_md_ctx_st EVP_MD_CTX;
typedef struct bio_st BIO;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *md, const void *key, int key_len, const unsigned char *d, size_t n,
                    unsigned char *md_out, unsigned int *md_len);
BIO *BIO_new_mem_buf(const void *buf, int len);
int BIO_free(BIO *a);
EVP_PKEY *PEM_read_bio_PUBKEY(BIO *bp, EVP_PKEY **x, void *cb, void *u);
void EVP_PKEY_free(EVP_PKEY *pkey);
EVP_MD_CTX *EVP_MD_CTX_new(void);
void EVP_MD_CTX_free(EVP_MD_CTX *ctx);
int EVP_DigestVerifyInit(EVP_MD_CTX *ctx, void **pctx, const EVP_MD *type, void *e, EVP_PKEY *pkey);
int EVP_DigestVerify(EVP_MD_CTX *ctx, const unsigned char *sig, size_t siglen, const unsigned char *tbs, size_t tbslen);
int EVP_DecodeBlock(unsigned char *t, const unsigned char *f, int n);
int CRYPTO_memcmp(const void *a, const void *b, size_t len);
]]
local C = ffi.load("crypto")
local mac = ffi.new("unsigned char[64]")
local maclen = ffi.new("unsigned int[1]")

local function b64url_decode(s)
  s = s:gsub("-", "+"):gsub("_", "/")
  local pad = (4 - #s % 4) % 4
  if pad == 3 then return nil end
  s = s .. ("="):rep(pad)
  local out = ffi.new("unsigned char[?]", #s)
  local n = C.EVP_DecodeBlock(out, s, #s)
  if n < 0 then return nil end
  return ffi.string(out, n - pad) -- EVP_DecodeBlock counts the padding as zero bytes
end

local function verify_hs256(secret, data, sig)
  C.HMAC(C.EVP_sha256(), secret, #secret, data, #data, mac, maclen)
  return #sig == maclen[0] and C.CRYPTO_memcmp(mac, sig, #sig) == 0
end

local function load_pubkey(pem)
  local bio = C.BIO_new_mem_buf(pem, #pem)
  local key = C.PEM_read_bio_PUBKEY(bio, nil, nil, nil)
  C.BIO_free(bio)
  if key == nil then return nil end
  return ffi.gc(key, C.EVP_PKEY_free)
end

local function verify_rs256(key, data, sig)
  local md = C.EVP_MD_CTX_new()
  local ok = C.EVP_DigestVerifyInit(md, nil, C.EVP_sha256(), nil, key) == 1
             and C.EVP_DigestVerify(md, sig, #sig, data, #data) == 1
  C.EVP_MD_CTX_free(md)
  return ok
end

JwtAuth.schema.check = function(conf)
  for kid, k in pairs(conf.keys) do
    -- each algorithm takes its own key material; the other one would be ignored
    if k.alg == "HS256" then
      if not k.secret then return nil, ("field 'keys.%s.secret': required for HS256"):format(kid) end
      if k.public_key then return nil, ("field 'keys.%s.public_key': only for RS256 (HS256 uses secret)"):format(kid) end
    else
      if not k.public_key then return nil, ("field 'keys.%s.public_key': required for RS256"):format(kid) end
      if k.secret then return nil, ("field 'keys.%s.secret': only for HS256 (RS256 uses public_key)"):format(kid) end
      k._pkey = load_pubkey(k.public_key)
      if not k._pkey then return nil, ("field 'keys.%s.public_key': not a PEM public key"):format(kid) end
    end
  end
  return true
end

local DENY = { ["WWW-Authenticate"] = 'Bearer realm="moongate"' }

local function deny(why)
  return 401, { message = "invalid token", reason = why }, DENY
end

local function has_audience(aud, want)
  if aud == want then return true end
  if type(aud) == "table" then
    for _, a in ipairs(aud) do if a == want then return true end end
  end
  return false
end

function JwtAuth.access(ctx, conf)
  local token
  local auth = ctx.request:header("Authorization")
  if auth then token = auth:match("^[Bb]earer%s+(%S+)$") end
  if not token and conf.query then token = ctx.request.args[conf.query] end
  if type(token) ~= "string" then return deny("no token") end
  local h64, p64, s64 = token:match("^([%w_-]+)%.([%w_-]+)%.([%w_-]*)$")
  if not h64 then return deny("malformed token") end
  local header = gw.json.decode(b64url_decode(h64) or "")
  local claims = gw.json.decode(b64url_decode(p64) or "")
  local sig = b64url_decode(s64)
  if type(header) ~= "table" or type(claims) ~= "table" or not sig then return deny("malformed token") end
  local key = conf.keys[header.kid or "default"]
  if not key then return deny("unknown key") end
  if header.alg ~= key.alg then return deny("algorithm mismatch") end -- never trust the token's alg alone
  local signed = h64 .. "." .. p64
  local ok
  if key.alg == "HS256" then ok = verify_hs256(key.secret, signed, sig) else ok = verify_rs256(key._pkey, signed, sig) end
  if not ok then return deny("bad signature") end
  local now = gw.now()
  if claims.exp == nil and conf.require_exp then return deny("no exp claim") end
  if type(claims.exp) == "number" and now > claims.exp + conf.leeway then return deny("expired") end
  if type(claims.nbf) == "number" and now + conf.leeway < claims.nbf then return deny("not yet valid") end
  if conf.issuer and claims.iss ~= conf.issuer then return deny("wrong issuer") end
  if conf.audience and not has_audience(claims.aud, conf.audience) then return deny("wrong audience") end
  ctx.jwt = claims
  ctx.consumer = claims.sub
end

return JwtAuth
