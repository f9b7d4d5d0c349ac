-- TLS to upstreams: a real TLS upstream (a second gatewayd with a TLS
-- listener, or openssl s_server), certificates made at test time.
local helpers = require "spec.helpers"
local upstream = require "spec.upstream"
local pki_lib = require "spec.pki"
local cjson = require "cjson"

local pki = pki_lib.make()

-- The TLS upstream: tells who called (client certificate, SNI, resumption,
-- the caller's address, i.e. which connection).
local function start_tls_upstream(tls_extra)
  return helpers.start(([[
listen { "127.0.0.1:{{PORT}}", tls = { certificates = {
  { cert = "%s/localhost.pem", key = "%s/localhost.key" },
  { cert = "%s/api.pem", key = "%s/api.key" } }%s } }
limits { max_body = "16m" }
route { path = "/by_ip/big/{n}", handler = function(ctx) return 200, ("0123456789abcdef"):rep(tonumber(ctx.params.n) / 16) end }
route { method = "POST", path = "/by_ip/echo", handler = function(ctx) return 200, ctx.request:body() end }
route { path = "/{rest*}", handler = function(ctx)
  local tls = ctx.request.tls
  return 200, { path = ctx.request.path, sni = tls.sni or false, resumed = tls.resumed,
                client = tls.client and tls.client.subject or false, remote = ctx.request.remote }
end }
]]):format(pki, pki, pki, pki, tls_extra or ""))
end

describe("TLS to upstreams", function()
  local u, g, plain, expired, expired_port
  setup(function()
    u = start_tls_upstream()
    plain = upstream.start(function() return 200, {}, "plain" end)
    expired_port = helpers.free_port()
    expired = assert(gw.process.spawn({ "/usr/bin/openssl", "s_server", "-quiet", "-www", "-accept", tostring(expired_port),
      "-cert", pki .. "/expired.pem", "-key", pki .. "/localhost.key" },
      { stdout = pki .. "/s_server.out", stderr = pki .. "/s_server.err" }))
    assert(helpers.wait_port(expired_port, expired, 10))
    local ca = ('ca = "%s/ca.pem"'):format(pki)
    g = helpers.start(([[
limits { max_body = "16m" }
upstream "by_ip" { targets = { "https://127.0.0.1:%d" }, tls = { %s } }
upstream "by_name" { targets = { "https://127.0.0.1:%d" }, tls = { %s, server_name = "api.example.test" } }
upstream "wrong_name" { targets = { "https://127.0.0.1:%d" }, tls = { %s, server_name = "other.example.test" }, retries = 0 }
upstream "system_store" { targets = { "https://127.0.0.1:%d" }, retries = 0 }
upstream "no_verify" { targets = { "https://127.0.0.1:%d" }, tls = { verify = false } }
upstream "expired" { targets = { "https://127.0.0.1:%d" }, tls = { %s, server_name = "localhost" }, retries = 0 }
upstream "not_tls" { targets = { "https://127.0.0.1:%d" }, tls = { %s }, retries = 0 }
upstream "fresh" { targets = { "127.0.0.1:%d" }, tls = { %s }, pool = { max_idle = 0 } }
upstream "checked" { targets = { "https://localhost:%d" }, tls = { %s },
                     health = { active = { path = "/health", interval = "100ms" } } }
for _, name in ipairs({ "by_ip", "by_name", "wrong_name", "system_store", "no_verify", "expired", "not_tls", "fresh", "checked" }) do
  route { path = "/" .. name .. "/{rest*}", upstream = name }
end
route { path = "/subrequest", handler = function(ctx)
  local res, err = gw.http.request { url = "https://127.0.0.1:%d/sub" }
  return 200, { status = res and res.status or false, err = err or false }
end }
]]):format(u.port, ca, u.port, ca, u.port, ca, u.port, u.port, expired_port, ca, plain.port, ca, u.port, ca, u.port, ca,
           u.port))
  end)
  teardown(function()
    g:stop()
    u:stop()
    plain:stop()
    gw.process.kill(expired, gw.process.SIGTERM)
    helpers.wait_exit(expired, 5)
  end)

  local function get(path)
    local res = g:request("GET", path)
    local ok, body = pcall(cjson.decode, res.body)
    return res, ok and body or res.body
  end

  it("verifies an IP target against the certificate's IP names, and sends no SNI", function()
    local res, body = get("/by_ip/x")
    assert.equal(200, res.status, res.body)
    assert.equal("/by_ip/x", body.path)
    assert.equal(false, body.sni)
  end)

  it("sends server_name as SNI and verifies the certificate against it", function()
    local res, body = get("/by_name/x")
    assert.equal(200, res.status, res.body)
    assert.equal("api.example.test", body.sni)
  end)

  it("reuses pooled TLS connections", function()
    local remotes = {}
    for i = 1, 5 do
      local res, body = get("/by_ip/" .. i)
      assert.equal(200, res.status)
      remotes[body.remote] = true
    end
    assert.equal(1, #(function() local l = {} for r in pairs(remotes) do l[#l + 1] = r end return l end)())
  end)

  it("carries large bodies both ways intact", function()
    local res = g:request("GET", "/by_ip/big/8388608")
    assert.equal(200, res.status)
    assert.equal(8388608, #res.body)
    assert.equal(("0123456789abcdef"):rep(1024), res.body:sub(-16384))
    local upload = ("moongate-tls-"):rep(800000) -- 10.4 MB
    res = g:request("POST", "/by_ip/echo", { body = upload })
    assert.equal(200, res.status)
    assert.is_true(res.body == upload)
  end)

  it("resumes the TLS session on a new connection to the same target", function()
    local _, first = get("/fresh/1")
    local res, second = get("/fresh/2")
    assert.equal(200, res.status, res.body)
    assert.is_not.equal(first.remote, second.remote) -- max_idle = 0: a new connection
    assert.is_true(second.resumed)
  end)

  local refused = {
    { "a certificate for another name", "/wrong_name/x", "tls_verify", "hostname mismatch" },
    { "a certificate the system store does not trust", "/system_store/x", "tls_verify", "unable to get local issuer certificate" },
    { "an expired certificate", "/expired/x", "tls_verify", "certificate has expired" },
    { "an upstream that does not speak TLS", "/not_tls/x", "tls_handshake", "TLS handshake with 127.0.0.1:" },
  }
  for _, case in ipairs(refused) do
    it("refuses " .. case[1] .. " with 502 and the error kind " .. case[3], function()
      local res = g:request("GET", case[2])
      assert.equal(502, res.status)
      local entry = g:entry(res.headers["x-request-id"])
      assert.equal(case[3], entry.error)
      assert.truthy(g:error_log():find(case[4], 1, true), g:error_log())
    end)
  end

  it("accepts any certificate with verify = false", function()
    local res = get("/no_verify/x")
    assert.equal(200, res.status, res.body)
  end)

  it("runs active health checks over TLS", function()
    gw.sleep(0.35) -- a few check rounds; a check that failed would take the only target out
    local res = get("/checked/x")
    assert.equal(200, res.status, res.body)
    assert.is_nil(g:error_log():find("target localhost:%d+ failed its health check"))
  end)

  it("gw.http.request verifies https:// URLs against the system store", function()
    local _, body = get("/subrequest")
    assert.same({ status = false, err = "tls_verify" }, body)
  end)
end)

describe("TLS to upstreams with the system CA store", function()
  it("trusts what SSL_CERT_FILE names, for upstreams and gw.http.request", function()
    local u = start_tls_upstream()
    local g = helpers.start(([[
upstream "app" { targets = { "https://localhost:%d" } }
route { path = "/app/{rest*}", upstream = "app" }
route { path = "/subrequest", handler = function(ctx)
  local res, err = gw.http.request { url = "https://127.0.0.1:%d/sub" }
  return 200, res and res.body or err
end }
]]):format(u.port, u.port), { env = { "SSL_CERT_FILE=" .. pki .. "/ca.pem" } })
    local res = g:request("GET", "/app/x")
    assert.equal(200, res.status, res.body)
    assert.equal("localhost", cjson.decode(res.body).sni)
    res = g:request("GET", "/subrequest")
    assert.equal(200, res.status, res.body)
    assert.equal("/sub", cjson.decode(res.body).path)
    g:stop()
    u:stop()
  end)
end)

describe("mTLS to upstreams", function()
  it("presents the client certificate; without one the upstream refuses the handshake", function()
    local u = start_tls_upstream((', client_ca = "%s/clients-ca.pem"'):format(pki))
    local g = helpers.start(([[
upstream "with_cert" { targets = { "https://localhost:%d" },
  tls = { ca = "%s/ca.pem", cert = "%s/alice.pem", key = "%s/alice.key" } }
upstream "without" { targets = { "https://localhost:%d" }, tls = { ca = "%s/ca.pem" }, retries = 0 }
route { path = "/with_cert/{rest*}", upstream = "with_cert" }
route { path = "/without/{rest*}", upstream = "without" }
]]):format(u.port, pki, pki, pki, u.port, pki))
    local res = g:request("GET", "/with_cert/x")
    assert.equal(200, res.status, res.body)
    assert.equal("CN=alice,O=Example", cjson.decode(res.body).client)
    res = g:request("GET", "/without/x")
    assert.equal(502, res.status)
    assert.equal("tls_handshake", g:entry(res.headers["x-request-id"]).error)
    g:stop()
    u:stop()
  end)
end)

describe("upstream TLS at config load", function()
  local function check(upstream_body)
    return helpers.check_config(('listen "127.0.0.1:1"\n\nupstream "app" %s\nroute { path = "/", upstream = "app" }\n')
      :format(upstream_body))
  end

  local cases = {
    { "a missing CA file", ('{ targets = { "https://127.0.0.1:9" }, tls = { ca = "%s/missing.pem" } }'):format(pki),
      ":3: upstream app: tls: cannot read ca '" .. pki .. "/missing.pem'" },
    { "a client key that does not match", ('{ targets = { "https://127.0.0.1:9" }, tls = { cert = "%s/alice.pem", key = "%s/api.key" } }'):format(pki, pki),
      "does not match certificate '" .. pki .. "/alice.pem'" },
    { "http and https targets mixed", '{ targets = { "https://127.0.0.1:9", "http://127.0.0.1:8" } }',
      ":3: upstream app: its targets mix http:// and https://" },
    { "a cert without its key", ('{ targets = { "https://127.0.0.1:9" }, tls = { cert = "%s/alice.pem" } }'):format(pki),
      "a client certificate needs both cert and key" },
  }
  for _, case in ipairs(cases) do
    it("refuses " .. case[1] .. " with the config line", function()
      local code, out, file = check(case[2])
      assert.equal(1, code, out)
      assert.truthy(out:find(case[3], 1, true), out)
      assert.truthy(out:find(file, 1, true), out)
    end)
  end
end)

describe("upstream TLS without verification", function()
  it("is accepted with a warning naming the config line", function()
    local code, out, file = helpers.check_config('listen "127.0.0.1:1"\n' ..
      'upstream "test" { targets = { "https://127.0.0.1:9" }, tls = { verify = false } }\n' ..
      'route { path = "/", upstream = "test" }\n')
    assert.equal(0, code, out)
    assert.truthy(out:find(file .. ":2: upstream test: tls.verify = false: its certificates are not checked", 1, true), out)
  end)
end)

describe("examples/tls", function()
  it("serves HTTPS, redirects HTTP and reaches its TLS upstream, with certificates from make-certs.sh", function()
    local dir = helpers.tmpdir()
    local root = os.getenv("PWD") or "." -- specs run from the repository root
    local code, out = pki_lib.sh(dir, ("cp %s/examples/tls/make-certs.sh %s/ && sh %s/make-certs.sh"):format(root, dir, dir))
    assert.equal(0, code, out)
    local tport = helpers.free_port()
    local config = helpers.read_file(root .. "/examples/tls/gateway.lua")
      :gsub("127%.0%.0%.1:8080", "127.0.0.1:{{PORT}}"):gsub("8443", tostring(tport)):gsub('"certs/', '"' .. dir .. "/certs/")
    local g = helpers.start(config)
    local function curl(path)
      return pki_lib.sh(dir, ("curl -sS --max-time 10 --cacert %s/certs/ca.pem https://localhost:%d%s"):format(dir, tport, path))
    end
    code, out = curl("/hello")
    assert.equal(0, code, out)
    assert.same({ hello = "over https", tls = "TLSv1.3" }, cjson.decode(out))
    code, out = curl("/api/orders")
    assert.equal(0, code, out)
    assert.same({ backend = "reached over TLSv1.3", path = "/api/orders" }, cjson.decode(out))
    local res = g:request("GET", "/hello", { host = "localhost:" .. g.port })
    assert.equal(301, res.status)
    assert.equal(("https://localhost:%d/hello"):format(tport), res.headers["location"])
    g:stop()
  end)
end)
