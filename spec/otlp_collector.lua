-- spec/otlp_collector.lua: a fake OpenTelemetry Collector for specs, an
-- OTLP/HTTP receiver written in Lua on the gateway's runtime (it serves with
-- spec/upstream.lua). It records every POSTed ExportTraceServiceRequest
-- (JSON), checks each one's structure as it arrives (resource, scope, spans,
-- id and time formats: a payload a real collector would refuse is an error
-- of the spec, recorded in c.invalid) and indexes the spans.
--
--   local c = collector.start()               -- c.port, c.url ("http://127.0.0.1:port/v1/traces")
--   c:wait_spans(3)                           -- until 3 spans arrived (or fail)
--   c:trace("4bf9...")                        -- the spans of one trace id
--   c.payloads, c.spans, c.invalid, c.requests
--   c.status = 503                            -- answer the next exports with 503 (retry tests)
--   c:stop()
local upstream = require "spec.upstream"

local M = {}

local HEX32, HEX16 = "^" .. ("%x"):rep(32) .. "$", "^" .. ("%x"):rep(16) .. "$"

-- A value of an attribute list as a Lua value (intValue is a decimal string in OTLP/JSON).
local function value(v)
  if v.stringValue ~= nil then return v.stringValue end
  if v.intValue ~= nil then return tonumber(v.intValue) end
  if v.doubleValue ~= nil then return v.doubleValue end
  if v.boolValue ~= nil then return v.boolValue end
end

--- { key = value } of an OTLP attribute list.
function M.attrs(list)
  local t = {}
  for _, kv in ipairs(list or {}) do t[kv.key] = value(kv.value) end
  return t
end

-- The structure every export must have; returns nil or what is wrong.
local function check_payload(p)
  if type(p) ~= "table" or type(p.resourceSpans) ~= "table" or #p.resourceSpans == 0 then
    return "no resourceSpans"
  end
  for _, rs in ipairs(p.resourceSpans) do
    if type(rs.resource) ~= "table" or type(rs.resource.attributes) ~= "table" then return "no resource attributes" end
    if not M.attrs(rs.resource.attributes)["service.name"] then return "no service.name" end
    if type(rs.scopeSpans) ~= "table" or #rs.scopeSpans == 0 then return "no scopeSpans" end
    for _, ss in ipairs(rs.scopeSpans) do
      if type(ss.scope) ~= "table" or type(ss.scope.name) ~= "string" then return "no scope name" end
      if type(ss.spans) ~= "table" or #ss.spans == 0 then return "no spans" end
      for _, s in ipairs(ss.spans) do
        if type(s.traceId) ~= "string" or not s.traceId:match(HEX32) then return "bad traceId " .. tostring(s.traceId) end
        if type(s.spanId) ~= "string" or not s.spanId:match(HEX16) then return "bad spanId " .. tostring(s.spanId) end
        if s.parentSpanId ~= nil and not tostring(s.parentSpanId):match(HEX16) then return "bad parentSpanId" end
        if type(s.name) ~= "string" or s.name == "" then return "no span name" end
        if s.kind ~= 1 and s.kind ~= 2 and s.kind ~= 3 then return "bad kind " .. tostring(s.kind) end
        local t0, t1 = tonumber(s.startTimeUnixNano), tonumber(s.endTimeUnixNano)
        if type(s.startTimeUnixNano) ~= "string" or not t0 or not t1 or t1 < t0 then return "bad times" end
        if t0 < 1.5e18 then return "start time is not Unix nanoseconds" end
        if type(s.attributes) ~= "table" then return "no attributes" end
        for _, kv in ipairs(s.attributes) do
          if type(kv.key) ~= "string" or type(kv.value) ~= "table" or value(kv.value) == nil then
            return "bad attribute " .. tostring(kv.key)
          end
        end
      end
    end
  end
end

local Collector = {}
Collector.__index = Collector

function M.start(opts)
  opts = opts or {}
  local self = setmetatable({ payloads = {}, spans = {}, invalid = {}, requests = 0, status = 200, paths = {},
                              content_types = {} }, Collector)
  self.server = upstream.start(function(req)
    self.requests = self.requests + 1
    self.paths[#self.paths + 1] = req.path
    self.content_types[#self.content_types + 1] = req.headers["content-type"]
    self.last_headers = req.headers
    if self.delay then gw.sleep(self.delay) end
    if self.status ~= 200 then return self.status, { ["Content-Type"] = "application/json" }, "{}" end
    local p = gw.json.decode(req.body)
    local bad = check_payload(p)
    if bad then
      self.invalid[#self.invalid + 1] = bad
      return 400, {}, bad
    end
    self.payloads[#self.payloads + 1] = p
    for _, rs in ipairs(p.resourceSpans) do
      for _, ss in ipairs(rs.scopeSpans) do
        for _, s in ipairs(ss.spans) do
          s.attrs = M.attrs(s.attributes)
          s.resource = M.attrs(rs.resource.attributes)
          s.scope = ss.scope
          self.spans[#self.spans + 1] = s
        end
      end
    end
    return 200, { ["Content-Type"] = "application/json" }, "{}"
  end, opts)
  self.port = self.server.port
  self.url = ("http://127.0.0.1:%d/v1/traces"):format(self.port)
  return self
end

--- Waits until at least n spans arrived (fails after `seconds`, default 5).
function Collector:wait_spans(n, seconds)
  local deadline = gw.monotonic_ms() + (seconds or 5) * 1000
  while #self.spans < n do
    if gw.monotonic_ms() > deadline then
      error(("the collector got %d spans, expected %d (invalid payloads: %s)"):format(#self.spans, n,
            table.concat(self.invalid, "; ")), 2)
    end
    gw.sleep(0.02)
  end
  return self.spans
end

--- The spans of one trace, in arrival order.
function Collector:trace(trace_id)
  local out = {}
  for _, s in ipairs(self.spans) do
    if s.traceId == trace_id then out[#out + 1] = s end
  end
  return out
end

--- The first span of kind `kind` (1 internal, 2 server, 3 client) in list whose name matches (optional).
function M.find(list, kind, name)
  for _, s in ipairs(list) do
    if s.kind == kind and (not name or s.name == name) then return s end
  end
end

function Collector:stop() self.server:stop() end

return M
