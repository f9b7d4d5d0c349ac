-- OpenTelemetry export: a real gateway sends OTLP/HTTP JSON to a fake
-- collector (spec/otlp_collector.lua) that checks each payload's structure;
-- the spans, their parents and trace ids are checked against what the
-- upstream received and what the access log says.
local helpers = require "spec.helpers"
local upstream = require "spec.upstream"
local collector = require "spec.otlp_collector"

local FIXTURES = os.getenv("PWD") .. "/spec/fixtures/plugins"
local SERVER, CLIENT, INTERNAL = 2, 3, 1

local function http_get(port, path)
  local s = gw.tcp()
  s:settimeout(5000)
  assert(s:connect("127.0.0.1", port))
  s:send("GET " .. path .. " HTTP/1.1\r\nHost: a\r\n\r\n")
  local res = assert(helpers.read_response(s))
  s:close()
  return res
end

-- a metric's value from /metrics (the first line that starts with `name`)
local function metric(port, name)
  local body = http_get(port, "/metrics").body
  for line in body:gmatch("[^\n]+") do
    if line:sub(1, #name + 1) == name .. " " then return tonumber(line:sub(#name + 2)) end
  end
end

local function config(c, up, extra)
  return ([[
plugins_dir "%s"
tracing { endpoint = "%s", service_name = "edge-gw", interval = "50ms" %s }
upstream "orders" { targets = { "127.0.0.1:%d" }, retries = 1 }
upstream "dead" { targets = { "127.0.0.1:1" }, retries = 0 }
route { path = "/orders/{id}", upstream = "orders", plugins = { lookup = {}, quick = {} } }
route { path = "/plain/{rest*}", upstream = "orders" }
route { path = "/down", upstream = "dead" }
route { path = "/call", handler = function(ctx)
  local res, err = gw.http.request { upstream = "orders", path = "/inner" }
  return 200, res and res.body or err
end }
route { path = "/hello", handler = function() return 200, "hi" end }
]]):format(FIXTURES, c.url, extra or "", up.port)
end

-- the span part of the traceparent the upstream got: "00-<trace>-<span>-<flags>"
local function parent_of(req)
  local tp = req.headers["traceparent"]
  assert.is_string(tp, "the upstream got no traceparent")
  local trace, span, flags = tp:match("^00%-(%x+)%-(%x+)%-(%x%x)$")
  return trace, span, flags
end

describe("OpenTelemetry export", function()
  local c, up, g

  before_each(function()
    c = collector.start()
    up = upstream.start(function(req) return 200, {}, "order " .. req.path end)
  end)
  after_each(function()
    if g then g:stop() end
    g = nil
    up:stop()
    c:stop()
  end)

  it("sends a server span, a client span per attempt and a span for the plugin step that waited", function()
    g = helpers.start(config(c, up))
    local res = g:request("GET", "/orders/7?x=1", { headers = { ["User-Agent"] = "spec/1" } })
    assert.equal(200, res.status)
    local trace_id = res.headers["x-request-id"]
    local entry = g:entry(trace_id) -- the access log says the same trace id
    assert.equal(trace_id, entry.trace_id)
    c:wait_spans(3)
    assert.same({}, c.invalid)
    assert.equal("/v1/traces", c.paths[1])
    assert.equal("application/json", c.content_types[1])
    local spans = c:trace(trace_id)
    assert.equal(3, #spans, "server, client, access lookup (quick did not wait: no span)")

    local server = collector.find(spans, SERVER)
    assert.equal("GET /orders/{id}", server.name)
    assert.is_nil(server.parentSpanId) -- a trace the gateway started
    assert.equal("edge-gw", server.resource["service.name"])
    assert.equal("moongate", server.scope.name)
    local a = server.attrs
    assert.equal("GET", a["http.request.method"])
    assert.equal("/orders/{id}", a["http.route"])
    assert.equal("/orders/7", a["url.path"])
    assert.equal("x=1", a["url.query"])
    assert.equal(200, a["http.response.status_code"])
    assert.equal("orders", a["moongate.upstream"])
    assert.equal("127.0.0.1:" .. up.port, a["moongate.target"])
    assert.equal(1, a["moongate.attempts"])
    assert.equal(0, a["moongate.retries"])
    assert.equal("spec/1", a["user_agent.original"])
    assert.is_nil(a["error.type"])
    assert.is_nil(server.status)

    local client = collector.find(spans, CLIENT)
    assert.equal(server.spanId, client.parentSpanId)
    assert.equal("127.0.0.1", client.attrs["server.address"])
    assert.equal(up.port, client.attrs["server.port"])
    assert.equal(200, client.attrs["http.response.status_code"])
    -- the upstream's traceparent names the client span: the upstream's own spans hang under it
    local tp_trace, tp_span, flags = parent_of(up.received[1])
    assert.equal(trace_id, tp_trace)
    assert.equal(client.spanId, tp_span)
    assert.equal("01", flags)
    local events = {}
    for _, e in ipairs(client.events) do events[#events + 1] = e.name end
    assert.same({ "connected", "request sent", "first byte" }, events)

    local step = collector.find(spans, INTERNAL)
    assert.equal("access lookup", step.name)
    assert.equal(server.spanId, step.parentSpanId)
    assert.equal("lookup", step.attrs["moongate.plugin"])
    assert.is_true(step.attrs["moongate.wait_ms"] >= 25, "waited " .. step.attrs["moongate.wait_ms"])
    assert.equal("wait", step.events[1].name)
    assert.equal("gw.sleep", collector.attrs(step.events[1].attributes)["moongate.wait.on"])
    -- the children lie within the server span
    assert.is_true(tonumber(step.startTimeUnixNano) >= tonumber(server.startTimeUnixNano))
    assert.is_true(tonumber(client.endTimeUnixNano) <= tonumber(server.endTimeUnixNano))
  end)

  it("continues an incoming sampled trace: same trace id, the caller's span as parent", function()
    g = helpers.start(config(c, up))
    local res = g:request("GET", "/plain/a", { headers = {
      traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" } })
    assert.equal(200, res.status)
    assert.equal("0af7651916cd43dd8448eb211c80319c", g:entry("0af7651916cd43dd8448eb211c80319c").trace_id)
    c:wait_spans(2)
    local spans = c:trace("0af7651916cd43dd8448eb211c80319c")
    local server = collector.find(spans, SERVER)
    assert.equal("b7ad6b7169203331", server.parentSpanId)
    local client = collector.find(spans, CLIENT)
    local _, span, flags = parent_of(up.received[1])
    assert.equal(client.spanId, span)
    assert.equal("01", flags)
  end)

  it("honours an unsampled traceparent: nothing exported, 00 passed on", function()
    g = helpers.start(config(c, up))
    local res = g:request("GET", "/plain/no", { headers = {
      traceparent = "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00" } })
    assert.equal(200, res.status)
    local trace, _, flags = parent_of(up.received[1])
    assert.equal("1af7651916cd43dd8448eb211c80319c", trace)
    assert.equal("00", flags)
    -- a sampled request after it: once its spans are in, the unsampled one would have been too
    g:request("GET", "/plain/yes", { headers = { traceparent = "00-2af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" } })
    c:wait_spans(2)
    gw.sleep(0.2)
    assert.equal(0, #c:trace("1af7651916cd43dd8448eb211c80319c"))
    assert.equal(2, #c:trace("2af7651916cd43dd8448eb211c80319c"))
  end)

  it("with ratio 0 exports no trace it starts (and says 00 upstream); a sampled parent still decides", function()
    g = helpers.start(config(c, up, ", ratio = 0"))
    for i = 1, 5 do assert.equal(200, g:request("GET", "/plain/" .. i).status) end
    local _, _, flags = parent_of(up.received[1])
    assert.equal("00", flags)
    g:request("GET", "/plain/parent", { headers = { traceparent = "00-3af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" } })
    c:wait_spans(2)
    gw.sleep(0.2)
    assert.equal(2, #c.spans, "only the request with a sampled parent")
    assert.equal(2, #c:trace("3af7651916cd43dd8448eb211c80319c"))
  end)

  it("with parent_based = false the ratio decides even under a sampled parent", function()
    g = helpers.start(config(c, up, ", ratio = 0, parent_based = false"))
    g:request("GET", "/plain/p", { headers = { traceparent = "00-4af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" } })
    local _, _, flags = parent_of(up.received[1])
    assert.equal("00", flags)
    g:request("GET", "/hello")
    gw.sleep(0.3)
    assert.equal(0, #c.spans)
  end)

  it("names the error kind and the retries of a failed exchange", function()
    g = helpers.start(config(c, up))
    local res = g:request("GET", "/down")
    assert.equal(502, res.status)
    local trace_id = res.headers["x-request-id"]
    c:wait_spans(2)
    local spans = c:trace(trace_id)
    local server = collector.find(spans, SERVER)
    assert.equal("refused", server.attrs["error.type"])
    assert.equal(502, server.attrs["http.response.status_code"])
    assert.equal(2, server.status.code) -- STATUS_CODE_ERROR
    local client = collector.find(spans, CLIENT)
    assert.equal("refused", client.attrs["error.type"])
    assert.equal(2, client.status.code)
  end)

  it("makes a client span of gw.http.request, under the handler that waited for it", function()
    g = helpers.start(config(c, up))
    local res = g:request("GET", "/call")
    assert.equal("order /inner", res.body)
    local trace_id = res.headers["x-request-id"]
    c:wait_spans(3)
    local spans = c:trace(trace_id)
    local server = collector.find(spans, SERVER)
    local handler = collector.find(spans, INTERNAL, "handler")
    assert.equal(server.spanId, handler.parentSpanId)
    assert.equal("gw.http.request", collector.attrs(handler.events[1].attributes)["moongate.wait.on"])
    local call = collector.find(spans, CLIENT)
    assert.equal(handler.spanId, call.parentSpanId)
    assert.equal("http://127.0.0.1:" .. up.port .. "/inner", call.attrs["url.full"])
    local _, span = parent_of(up.received[1])
    assert.equal(call.spanId, span)
  end)

  it("batches: many requests arrive in few exports, every span once", function()
    g = helpers.start(config(c, up, ", batch = 50, interval = \"200ms\""))
    helpers.parallel((function()
      local fns = {}
      for i = 1, 4 do
        fns[i] = function()
          for k = 1, 10 do g:request("GET", "/hello", { headers = { ["X-Request-ID"] = ("b%d-%d"):format(i, k) } }) end
        end
      end
      return fns
    end)())
    c:wait_spans(40)
    gw.sleep(0.3)
    assert.equal(40, #c.spans)
    assert.is_true(c.requests <= 10, c.requests .. " exports for 40 spans")
    -- an X-Request-ID that is not a W3C trace id: the trace gets its own id, the request id is an attribute
    local ids = {}
    for _, s in ipairs(c.spans) do ids[s.attrs["moongate.request_id"]] = true end
    assert.is_true(ids["b1-1"] and ids["b4-10"])
  end)

  it("retries a collector that answers 503, then delivers", function()
    g = helpers.start(config(c, up))
    c.status = 503
    g:request("GET", "/hello")
    gw.sleep(0.3)
    assert.is_true(c.requests >= 2, "retried: " .. c.requests)
    c.status = 200
    c:wait_spans(1, 8)
  end)

  it("costs a dead collector's requests nothing: answered at once, spans dropped and counted", function()
    local admin = helpers.free_port()
    c:stop() -- nothing listens on its port any more
    g = helpers.start(config(c, up, ", queue = 20, batch = 10, timeout = \"200ms\"") ..
                      ('admin_listen "127.0.0.1:%d"\n'):format(admin))
    local t0 = gw.monotonic_ms()
    for i = 1, 60 do assert.equal(200, g:request("GET", "/hello").status) end
    local took = gw.monotonic_ms() - t0
    assert.is_true(took < 3000, "60 requests took " .. took .. " ms")
    local function dropped()
      return (metric(admin, 'moongate_trace_spans_dropped_total{reason="queue_full"}') or 0) +
             (metric(admin, 'moongate_trace_spans_dropped_total{reason="export_failed"}') or 0)
    end
    -- the first failed export can be counted before the spans behind it reach the full queue
    local deadline = gw.monotonic_ms() + 10000
    while ((metric(admin, "moongate_trace_export_errors_total") or 0) == 0 or dropped() == 0)
          and gw.monotonic_ms() < deadline do
      gw.sleep(0.1)
    end
    assert.is_true(metric(admin, "moongate_trace_export_errors_total") > 0)
    assert.is_true(dropped() > 0, "dropped " .. dropped())
    assert.equal(0, metric(admin, "moongate_trace_spans_exported_total"))
    assert.equal(200, g:request("GET", "/hello").status)
    c = collector.start() -- for after_each
  end)

  it("gives up on a collector that accepts but never answers: the export timeout bounds it", function()
    local admin = helpers.free_port()
    c.delay = 5
    g = helpers.start(config(c, up, ", timeout = \"200ms\", batch = 1") .. ('admin_listen "127.0.0.1:%d"\n'):format(admin))
    local t0 = gw.monotonic_ms()
    for _ = 1, 20 do assert.equal(200, g:request("GET", "/hello").status) end
    assert.is_true(gw.monotonic_ms() - t0 < 2000, "the requests waited for the collector")
    local deadline = gw.monotonic_ms() + 5000
    while (metric(admin, "moongate_trace_export_errors_total") or 0) < 2 and gw.monotonic_ms() < deadline do
      gw.sleep(0.1)
    end
    assert.is_true(metric(admin, "moongate_trace_export_errors_total") >= 2, "timed out and retried")
    assert.equal(0, metric(admin, "moongate_trace_spans_exported_total"))
  end)

  it("exports over HTTPS, verified against the system CA store (SSL_CERT_FILE here)", function()
    local pki = require("spec.pki").make()
    -- the collector: a TLS gateway whose handler logs each payload's trace ids
    local tls = helpers.start(([[
      listen { "127.0.0.1:{{PORT}}", tls = { cert = "%s/localhost.pem", key = "%s/localhost.key" } }
      route { method = "POST", path = "/v1/traces", handler = function(ctx)
        local p = gw.json.decode(ctx.request:body())
        gw.log("info", "otlp", { trace = p.resourceSpans[1].scopeSpans[1].spans[1].traceId })
        return 200, {}
      end }
    ]]):format(pki, pki))
    local url = ("https://localhost:%d/v1/traces"):format(tls.port)
    g = helpers.start(config({ url = url }, up), { env = { "SSL_CERT_FILE=" .. pki .. "/ca.pem" } })
    local res = g:request("GET", "/hello")
    local trace_id = res.headers["x-request-id"]
    local deadline = gw.monotonic_ms() + 5000
    while not tls:error_log():find(trace_id, 1, true) and gw.monotonic_ms() < deadline do gw.sleep(0.05) end
    assert.truthy(tls:error_log():find('"trace":"' .. trace_id .. '"', 1, true), tls:error_log())
    g:stop()
    -- a collector whose certificate the store does not vouch for gets nothing
    g = helpers.start(config({ url = url }, up), { env = { "SSL_CERT_FILE=/dev/null" } })
    res = g:request("GET", "/hello")
    gw.sleep(1)
    assert.falsy(tls:error_log():find(res.headers["x-request-id"], 1, true))
    deadline = gw.monotonic_ms() + 5000
    while not g:error_log():find("tracing: export to", 1, true) and gw.monotonic_ms() < deadline do gw.sleep(0.1) end
    assert.truthy(g:error_log():find("TLS with localhost:" .. tls.port .. " failed", 1, true), g:error_log())
    tls:stop()
  end)

  it("takes a new endpoint and ratio on reload", function()
    g = helpers.start(config(c, up, ", ratio = 0"))
    g:request("GET", "/hello")
    gw.sleep(0.2)
    assert.equal(0, #c.spans)
    local c2 = collector.start()
    helpers.write_file(g.file, helpers.read_file(g.file):gsub(c.url, c2.url):gsub("ratio = 0", "ratio = 1"))
    local code, out = g:ctl("reload")
    assert.equal(0, code, out)
    g:request("GET", "/hello")
    c2:wait_spans(1)
    assert.equal(0, #c.spans)
    c2:stop()
  end)
end)

describe("trace context without a tracing block", function()
  local up, g
  before_each(function()
    up = upstream.start(function() return 200, {}, "ok" end)
    g = helpers.start(([[
upstream "u" { targets = { "127.0.0.1:%d" } }
route { path = "/u", upstream = "u" }
]]):format(up.port))
  end)
  after_each(function()
    g:stop()
    up:stop()
  end)

  it("passes the caller's flag on, and 01 for the traces it starts", function()
    g:request("GET", "/u", { headers = { traceparent = "00-5af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00" } })
    g:request("GET", "/u")
    local _, span1, f1 = parent_of(up.received[1])
    local _, _, f2 = parent_of(up.received[2])
    assert.equal("00", f1)
    assert.equal("01", f2)
    assert.not_equal("b7ad6b7169203331", span1) -- a new span id for the hop
  end)
end)

describe("the tracing directive", function()
  local function refused(body)
    local code, err = helpers.check_config('listen "127.0.0.1:1"\n' .. body)
    assert.not_equal(0, code)
    return err
  end

  it("refuses what it does not know, with file and line", function()
    local err = refused('tracing { endpoint = "http://127.0.0.1:4318/v1/traces", sampler = "always" }')
    assert.truthy(err:find("gateway.lua:2: unknown field 'sampler' in tracing", 1, true), err)
  end)

  it("refuses a bad endpoint, ratio, queue or header", function()
    assert.truthy(refused('tracing { endpoint = "127.0.0.1:4318" }'):find("http:// or https://", 1, true))
    assert.truthy(refused('tracing { endpoint = "http://127.0.0.1:4318" }'):find("/v1/traces", 1, true))
    assert.truthy(refused('tracing { ratio = 1.5 }'):find("tracing.ratio", 1, true))
    assert.truthy(refused('tracing { batch = 100, queue = 10 }'):find("at least one batch", 1, true))
    assert.truthy(refused('tracing { headers = { ["Content-Type"] = "x" } }'):find("exporter's own", 1, true))
    assert.truthy(refused('tracing { ratio = 1 }\ntracing { ratio = 1 }'):find("already set at", 1, true))
  end)

  it("accepts a block without an endpoint (the timeline keeps the sampled requests)", function()
    local code, err = helpers.check_config('listen "127.0.0.1:1"\ntracing { ratio = 0.5 }\n')
    assert.equal(0, code, err)
  end)
end)
