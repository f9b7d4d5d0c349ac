-- TLS termination: certificates made at test time with openssl, real TLS
-- clients (curl, openssl s_client) against a real gatewayd.
local helpers = require "spec.helpers"
local upstream = require "spec.upstream"
local cjson = require "cjson"
local pki_lib = require "spec.pki"

local sh = pki_lib.sh

local pki = pki_lib.make()

local function tls_config(port_line, extra)
  return ([[
listen "127.0.0.1:{{PORT}}"
listen { "127.0.0.1:%d", tls = { certificates = {
  { cert = "%s/localhost.pem", key = "%s/localhost.key" },
  { cert = "%s/api.pem", key = "%s/api.key" },
  { cert = "%s/wild.pem", key = "%s/wild.key" },
  { cert = "%s/localhost-rsa.pem", key = "%s/localhost-rsa.key" },
} } }
limits { max_body = "16m" }
route { path = "/info", handler = function(ctx)
  return 200, { scheme = ctx.request.scheme, tls = ctx.request.tls or false }
end }
route { method = "POST", path = "/echo", handler = function(ctx) return 200, ctx.request:body() end }
route { path = "/big/{n}", handler = function(ctx) return 200, ("0123456789abcdef"):rep(tonumber(ctx.params.n) / 16) end }
%s
]]):format(port_line, pki, pki, pki, pki, pki, pki, pki, pki, extra or "")
end

describe("TLS listener", function()
  local g, tport, up
  setup(function()
    up = upstream.start(function(req) return 200, {}, req.headers["x-forwarded-proto"] end)
    tport = helpers.free_port()
    g = helpers.start(tls_config(tport, ([[
upstream "app" { targets = { "127.0.0.1:%d" } }
route { path = "/proxy", upstream = "app" }
]]):format(up.port)))
  end)
  teardown(function()
    g:stop()
    up:stop()
  end)

  local function curl(args)
    return sh(pki, ("curl -sS --max-time 10 --cacert %s/ca.pem %s"):format(pki, args))
  end

  it("serves HTTPS next to plain HTTP, and tells the handler about the connection", function()
    local code, out = curl(("https://localhost:%d/info"):format(tport))
    assert.equal(0, code, out)
    local info = cjson.decode(out)
    assert.equal("https", info.scheme)
    assert.equal("TLSv1.3", info.tls.version)
    assert.equal("localhost", info.tls.sni)
    assert.truthy(info.tls.cipher:find("^TLS_"), info.tls.cipher)
    local res = g:request("GET", "/info")
    assert.equal("http", cjson.decode(res.body).scheme)
    assert.equal(false, cjson.decode(res.body).tls)
  end)

  it("picks the certificate by SNI: exact, wildcard, and the first one by default", function()
    for _, host in ipairs({ "api.example.test", "x.apps.example.test" }) do
      local code, out = curl(("--resolve %s:%d:127.0.0.1 https://%s:%d/info"):format(host, tport, host, tport))
      assert.equal(0, code, out)
      assert.equal(host, cjson.decode(out).tls.sni)
    end
    local code, out = sh(pki, ("openssl s_client -connect 127.0.0.1:%d -servername other.test"):format(tport))
    assert.equal(0, code, out)
    assert.truthy(out:find("subject=CN = localhost", 1, true), out)
    -- a name no certificate covers fails verification in a real client
    code = curl(("--resolve other.test:%d:127.0.0.1 https://other.test:%d/info"):format(tport, tport))
    assert.equal(60, code)
  end)

  it("serves one name with an ECDSA and an RSA certificate, as the client can verify", function()
    for sigalg, bits in pairs({ ["ECDSA+SHA256"] = "256", ["RSA-PSS+SHA256"] = "2048" }) do
      local code, out = sh(pki, ("openssl s_client -connect 127.0.0.1:%d -servername localhost -sigalgs %s"):format(tport, sigalg))
      assert.equal(0, code, out)
      assert.truthy(out:find("Server public key is " .. bits .. " bit", 1, true), out)
      assert.truthy(out:find("subject=CN = localhost", 1, true), out)
    end
  end)

  it("speaks TLS 1.2 and 1.3 only, and picks h2, else http/1.1, by ALPN", function()
    local code, out = curl(("--tls-max 1.2 https://localhost:%d/info"):format(tport))
    assert.equal(0, code, out)
    assert.equal("TLSv1.2", cjson.decode(out).tls.version)
    code, out = sh(pki, ("openssl s_client -connect 127.0.0.1:%d -tls1_1"):format(tport))
    assert.is_not.equal(0, code)
    code, out = sh(pki, ("openssl s_client -connect 127.0.0.1:%d -alpn http/1.1,h2"):format(tport))
    assert.truthy(out:find("ALPN protocol: h2", 1, true), out) -- the server's preference
    code, out = sh(pki, ("openssl s_client -connect 127.0.0.1:%d -alpn http/1.1"):format(tport))
    assert.truthy(out:find("ALPN protocol: http/1.1", 1, true), out)
  end)

  it("resumes a session on reconnect", function()
    -- s_client waits a moment for the TLS 1.3 session ticket, which follows the handshake
    local s = ("sleep 0.5 | openssl s_client -connect 127.0.0.1:%d -servername localhost -CAfile %s/ca.pem"):format(tport, pki)
    local code, out = sh(pki, s .. " -sess_out " .. pki .. "/session.pem")
    assert.equal(0, code, out)
    assert.truthy(out:find("New, TLSv1.3", 1, true), out)
    code, out = sh(pki, s .. " -msg -sess_in " .. pki .. "/session.pem")
    assert.equal(0, code, out)
    assert.truthy(out:find("Reused, TLSv1.3", 1, true), out)
    -- a TLS 1.3 client uses a ticket once (RFC 8446 C.4): the resumed connection brings a fresh one
    assert.truthy(out:find("<<< TLS 1.3, Handshake %[length %x+%], NewSessionTicket"), out)
  end)

  it("keeps the connection alive and carries large bodies both ways intact", function()
    helpers.write_file(pki .. "/upload.bin", ("moongate-tls-"):rep(800000)) -- 10.4 MB
    local code, out = curl(("-o %s/echo.bin --data-binary @%s/upload.bin -w '%%{http_code} %%{num_connects}' " ..
      "https://localhost:%d/echo -o %s/big.bin https://localhost:%d/big/8388608"):format(pki, pki, tport, pki, tport))
    assert.equal(0, code, out)
    assert.equal("200 1200 0", out) -- the second request reused the connection
    assert.equal(helpers.read_file(pki .. "/upload.bin"), helpers.read_file(pki .. "/echo.bin"))
    assert.equal(8388608, #helpers.read_file(pki .. "/big.bin"))
  end)

  it("tells the upstream the client came over https", function()
    local code, out = curl(("https://localhost:%d/proxy"):format(tport))
    assert.equal(0, code, out)
    assert.equal("https", out)
  end)

  it("drops a client that speaks plain HTTP to the TLS port and goes on serving", function()
    local s = gw.tcp()
    s:settimeout(5000)
    assert(s:connect("127.0.0.1", tport))
    s:send("GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.truthy(helpers.closed(s))
    local code = curl(("https://localhost:%d/info"):format(tport))
    assert.equal(0, code)
  end)
end)

describe("HTTP to HTTPS redirect", function()
  it("sends plain requests to the HTTPS listener and serves HTTPS ones", function()
    local tport = helpers.free_port()
    local g = helpers.start(tls_config(tport, ('plugins { redirect = { https = true, https_port = %d } }'):format(tport)))
    local res = g:request("GET", "/info?x=1", { host = "localhost:" .. g.port })
    assert.equal(301, res.status)
    local location = ("https://localhost:%d/info?x=1"):format(tport)
    assert.equal(location, res.headers["location"])
    local code, out = sh(pki, ("curl -sS --max-time 10 -L --cacert %s/ca.pem http://localhost:%d/info?x=1"):format(pki, g.port))
    assert.equal(0, code, out)
    assert.equal("https", cjson.decode(out).scheme)
    g:stop()
  end)
end)

describe("TLS client certificates (mTLS)", function()
  local g, optional_port
  setup(function()
    optional_port = helpers.free_port()
    local tls = ('cert = "%s/localhost.pem", key = "%s/localhost.key", client_ca = "%s/clients-ca.pem"'):format(pki, pki, pki)
    g = helpers.start(([[
listen { "127.0.0.1:{{PORT}}", tls = { %s } }
listen { "127.0.0.1:%d", tls = { %s, client_auth = "optional" } }
route { path = "/who", handler = function(ctx) return 200, { client = ctx.request.tls.client or false } end }
]]):format(tls, optional_port, tls))
  end)
  teardown(function() g:stop() end)

  local function who(port, cert)
    local auth = cert and ("--cert %s/%s.pem --key %s/%s.key"):format(pki, cert, pki, cert) or ""
    local code, out = sh(pki, ("curl -sS --max-time 10 --cacert %s/ca.pem %s https://localhost:%d/who"):format(pki, auth, port))
    if code ~= 0 then return code, out end
    return code, cjson.decode(out).client
  end

  it("requires a certificate from the client CA, and shows it to the handler", function()
    local code, client = who(g.port, "alice")
    assert.equal(0, code, client)
    assert.equal("CN=alice,O=Example", client.subject)
    assert.same({ "email:alice@example.test", "URI:spiffe://example.test/alice" }, client.san)
    local _, fp = sh(pki, "openssl x509 -in " .. pki .. "/alice.pem -noout -fingerprint -sha256")
    assert.equal(fp:match("=(%S+)"):gsub(":", ""):lower(), client.fingerprint)
    assert.is_not.equal(0, (who(g.port, nil)))        -- no certificate
    assert.is_not.equal(0, (who(g.port, "mallory")))  -- a certificate from another CA
  end)

  it("optional: serves clients without a certificate, still refuses an untrusted one", function()
    local code, client = who(optional_port, nil)
    assert.equal(0, code, client)
    assert.equal(false, client)
    code, client = who(optional_port, "alice")
    assert.equal(0, code, client)
    assert.equal("CN=alice,O=Example", client.subject)
    assert.is_not.equal(0, (who(optional_port, "mallory")))
  end)
end)

describe("TLS client certificates per SNI name", function()
  local g
  setup(function()
    g = helpers.start(([[
listen { "127.0.0.1:{{PORT}}", tls = { certificates = {
  { cert = "%s/localhost.pem", key = "%s/localhost.key" },
  { cert = "%s/api.pem", key = "%s/api.key", client_ca = "%s/clients-ca.pem" },
} } }
route { path = "/who", handler = function(ctx)
  local tls = ctx.request.tls
  return 200, { sni = tls.sni or false, client = tls.client and tls.client.subject or false, resumed = tls.resumed }
end }
]]):format(pki, pki, pki, pki, pki))
  end)
  teardown(function() g:stop() end)

  local function who(host, cert)
    local auth = cert and ("--cert %s/%s.pem --key %s/%s.key"):format(pki, cert, pki, cert) or ""
    local code, out = sh(pki, ("curl -sS --max-time 10 --cacert %s/ca.pem --resolve %s:%d:127.0.0.1 %s https://%s:%d/who")
      :format(pki, host, g.port, auth, host, g.port))
    if code ~= 0 then return code, out end
    return code, cjson.decode(out)
  end

  it("asks for a certificate on the name that requires one only", function()
    local code, res = who("localhost")
    assert.equal(0, code, res)
    assert.same({ sni = "localhost", client = false, resumed = false }, res)
    assert.is_not.equal(0, (who("api.example.test")))
    code, res = who("api.example.test", "alice")
    assert.equal(0, code, res)
    assert.equal("CN=alice,O=Example", res.client)
  end)

  for _, version in ipairs({ "-tls1_3", "-tls1_2" }) do
    it("never resumes a session from a name without client certificates on one that requires them (" .. version .. ")", function()
      local session = pki .. "/sni-session" .. version .. ".pem"
      local base = ("openssl s_client %s -connect 127.0.0.1:%d -CAfile %s/ca.pem"):format(version, g.port, pki)
      local code, out = sh(pki, ("sleep 0.5 | %s -servername localhost -sess_out %s"):format(base, session))
      assert.equal(0, code, out)
      local get = "printf 'GET /who HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n'; sleep 0.5"
      code, out = sh(pki, ("(%s) | %s -servername api.example.test -sess_in %s"):format(get, base, session))
      assert.is_nil(out:find("Reused,", 1, true), out)
      assert.is_nil(out:find("HTTP/1.1 200", 1, true), out)
      -- the same name still resumes
      code, out = sh(pki, ("(%s) | %s -servername localhost -sess_in %s"):format(get, base, session))
      assert.truthy(out:find("Reused,", 1, true), out)
      assert.truthy(out:find('"resumed":true', 1, true), out)
      assert.truthy(out:find('"sni":"localhost"', 1, true), out)
    end)
  end
end)

describe("TLS certificates on reload", function()
  it("serves new connections with the new certificate, keeps the old connections, refuses a bad one", function()
    local g = helpers.start(('listen { "127.0.0.1:{{PORT}}", tls = { cert = "site.pem", key = "site.key" } }\n' ..
      'route { path = "/", handler = function() return 200, "ok" end }\n'), {
        files = { ["site.pem"] = helpers.read_file(pki .. "/localhost.pem"),
                  ["site.key"] = helpers.read_file(pki .. "/localhost.key") } })
    local function subject()
      local _, out = sh(g.dir, ("openssl s_client -connect 127.0.0.1:%d -servername localhost"):format(g.port))
      return out:match("subject=CN = (%S+)")
    end
    assert.equal("localhost", subject())
    -- a keep-alive connection that sends its second request after the reload
    local req = "GET / HTTP/1.1\\r\\nHost: localhost\\r\\n"
    local pid = assert(gw.process.spawn({ "/bin/sh", "-c", ("(printf '%s\\r\\n'; sleep 1.5; printf '%sConnection: close\\r\\n\\r\\n') | " ..
      "openssl s_client -quiet -connect 127.0.0.1:%d"):format(req, req, g.port) },
      { stdout = g.dir .. "/old.out", stderr = g.dir .. "/old.err" }))
    gw.sleep(0.5)
    helpers.write_file(g.dir .. "/site.pem", helpers.read_file(pki .. "/renewed.pem"))
    helpers.write_file(g.dir .. "/site.key", helpers.read_file(pki .. "/renewed.key"))
    local code, out = g:ctl("reload")
    assert.equal(0, code, out)
    assert.equal("renewed", subject())
    helpers.wait_exit(pid, 10)
    local _, n = helpers.read_file(g.dir .. "/old.out"):gsub("HTTP/1.1 200 OK", "")
    assert.equal(2, n, helpers.read_file(g.dir .. "/old.out"))
    -- a key that does not match: refused, the current certificate goes on serving
    helpers.write_file(g.dir .. "/site.key", helpers.read_file(pki .. "/localhost.key"))
    code, out = g:ctl("reload")
    assert.is_not.equal(0, code)
    assert.truthy(out:find("does not match certificate", 1, true), out)
    assert.equal("renewed", subject())
    g:stop()
  end)
end)

describe("TLS session tickets", function()
  -- tickets and cache entries live 4 s here, so ticket keys rotate every 4 s
  local g, s_client
  setup(function()
    g = helpers.start(([[
listen { "127.0.0.1:{{PORT}}", tls = { cert = "%s/localhost.pem", key = "%s/localhost.key" } }
timeouts { tls_session = "4s" }
route { path = "/", handler = function() return 200, "ok" end }
]]):format(pki, pki), { workers = 2 })
    s_client = ("sleep 0.3 | openssl s_client -connect 127.0.0.1:%d -servername localhost -CAfile %s/ca.pem")
      :format(g.port, pki)
  end)
  teardown(function() g:stop() end)

  -- a new session saved to file: returns the name of the ticket key (the ticket's first 16 bytes)
  local function new_session(file)
    local code, out = sh(pki, s_client .. " -sess_out " .. file)
    assert.equal(0, code, out)
    assert.truthy(out:find("New, TLSv1.3", 1, true), out)
    local _, text = sh(pki, "openssl sess_id -noout -text -in " .. file)
    local name = text:match("TLS session ticket:%s*0000 %- ([%x%- ]+)")
    assert.truthy(name, text)
    return name:gsub("[^%x]", ""):sub(1, 32)
  end
  local function resumes(file)
    local _, out = sh(pki, s_client .. " -sess_in " .. file)
    return out:find("Reused, TLSv1.3", 1, true) ~= nil
  end

  it("keeps the ticket keys across a reload: clients resume after it", function()
    local key = new_session(pki .. "/t1.pem")
    local code, out = g:ctl("reload")
    assert.equal(0, code, out)
    assert.is_true(resumes(pki .. "/t1.pem"))
    assert.equal(key, new_session(pki .. "/t2.pem"))
  end)

  it("rotates the ticket key every period and still accepts the previous one", function()
    gw.sleep(4.2) -- a fresh period
    local first = new_session(pki .. "/r1.pem")
    gw.sleep(2.5)
    assert.equal(first, new_session(pki .. "/r2.pem")) -- the same period: the same key
    gw.sleep(2)
    local rotated = new_session(pki .. "/r3.pem")
    assert.is_not.equal(first, rotated)
    assert.is_true(resumes(pki .. "/r2.pem")) -- 2 s old, under the previous key
    assert.is_false(resumes(pki .. "/r1.pem")) -- 4.5 s old: past its lifetime
  end)
end)

describe("TLS ticket keys from files", function()
  it("lets a session made on one gateway process resume on another", function()
    local code, out = sh(pki, ("openssl rand 80 > %s/t1.key && openssl rand 80 > %s/t0.key"):format(pki, pki))
    assert.equal(0, code, out)
    local config = ([[
listen { "127.0.0.1:{{PORT}}", tls = { cert = "%s/localhost.pem", key = "%s/localhost.key" } }
tls_ticket_keys { "%s/t1.key", "%s/t0.key" }
route { path = "/", handler = function() return 200, "ok" end }
]]):format(pki, pki, pki, pki)
    local a, b = helpers.start(config), helpers.start(config)
    local function s_client(g, args)
      return sh(pki, ("sleep 0.3 | openssl s_client -connect 127.0.0.1:%d -servername localhost -CAfile %s/ca.pem %s")
        :format(g.port, pki, args))
    end
    code, out = s_client(a, "-sess_out " .. pki .. "/shared.pem")
    assert.truthy(out:find("New, TLSv1.3", 1, true), out)
    code, out = s_client(b, "-sess_in " .. pki .. "/shared.pem")
    assert.truthy(out:find("Reused, TLSv1.3", 1, true), out)
    a:stop()
    b:stop()
  end)

  it("refuses a key file that is not 80 bytes, with the config line", function()
    helpers.write_file(pki .. "/short.key", ("k"):rep(48))
    local code, out, file = helpers.check_config(('listen "127.0.0.1:1"\n\ntls_ticket_keys { "%s/short.key" }\n'):format(pki))
    assert.equal(1, code)
    assert.truthy(out:find(file .. ":3: tls_ticket_keys: '" .. pki .. "/short.key': a key file holds exactly 80 random bytes", 1, true), out)
  end)
end)

describe("TLS certificates at config load", function()
  local function check(cert, key)
    return helpers.check_config(('listen "127.0.0.1:1"\n\nlisten { "127.0.0.1:2", tls = { cert = "%s", key = "%s" } }\n' ..
      'route { path = "/", handler = print }\n'):format(cert, key))
  end

  local cases = {
    { "a missing certificate", "missing.pem", "localhost.key", "cannot read certificate '" .. pki .. "/missing.pem'" },
    { "a key that does not match", "localhost.pem", "api.key", "key '" .. pki .. "/api.key' does not match certificate" },
    { "an expired certificate", "expired.pem", "localhost.key", "certificate '" .. pki .. "/expired.pem' has expired" },
  }
  for _, case in ipairs(cases) do
    it("refuses " .. case[1] .. ", naming the file and the config line", function()
      local code, out, file = check(pki .. "/" .. case[2], pki .. "/" .. case[3])
      assert.equal(1, code)
      assert.truthy(out:find(file .. ":3: tls: ", 1, true), out)
      assert.truthy(out:find(case[4], 1, true), out)
    end)
  end

  it("refuses an RSA and an ECDSA certificate for one name with different client-certificate rules", function()
    local code, out = helpers.check_config(('listen { "127.0.0.1:2", tls = { certificates = {\n' ..
      '  { cert = "%s/localhost.pem", key = "%s/localhost.key", client_ca = "%s/clients-ca.pem" },\n' ..
      '  { cert = "%s/localhost-rsa.pem", key = "%s/localhost-rsa.key" } } } }\n'):format(pki, pki, pki, pki, pki))
    assert.equal(1, code)
    assert.truthy(out:find("are for the same name: give them the same client_ca and client_auth", 1, true), out)
  end)

  it("accepts good certificates", function()
    local code, out = check(pki .. "/localhost.pem", pki .. "/localhost.key")
    assert.equal(0, code, out)
  end)
end)
