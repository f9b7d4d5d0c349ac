-- moongate.test.upstream: a real HTTP/1.1 upstream server for specs, written
-- in Lua on the gateway's own runtime (gw.tcp_listen, tasks), listening on
-- 127.0.0.1. It counts connections, requests and concurrency, records what it
-- received, and its handler can misbehave on purpose (fault modes). It stops
-- by itself when the busted block that started it ends (moongate.test.scope).
--
--   local upstream = require "moongate.test.upstream"
--   local up = upstream.start(function(req, res) return 200, { ["X-A"] = "1" }, "body" end)
--   ... up.port, up.connections, up.requests, up.received[i] ...
--   up:stop()
--
-- A handler gets req = { method, target, path, headers (lowercase keys), body }
-- and res (the connection: res.sock, res:close(), res:reset(), res.served: the
-- requests this connection answered before). It returns status, headers,
-- body -- or nil after writing/closing by itself.
--
-- Counters: up.connections, up.requests, up.methods[method], up.max_inflight.
-- Fault modes (fields, set any time):
--   up.close_reused = true   a request that arrives on a connection that already
--                            answered one is read, counted, and the connection
--                            closed without an answer: what a gateway sees when
--                            it writes on a pooled connection the upstream was
--                            closing (the keep-alive race)
local scope = require "moongate.test.scope"

local M = {}

local function read_request(sock, raw_body)
  local line, err = sock:receive("*l")
  if not line then return nil, err end
  local method, target = line:match("^(%S+) (%S+) HTTP/1%.[01]$")
  if not method then return nil, "bad request line: " .. line end
  local req = { method = method, target = target, path = target:match("^[^?]*"), headers = {}, raw_headers = {} }
  while true do
    local h = sock:receive("*l")
    if not h then return nil, "closed in head" end
    if h == "" then break end
    local k, v = h:match("^([^:]+):%s*(.-)%s*$")
    req.raw_headers[#req.raw_headers + 1] = h
    k = k:lower()
    req.headers[k] = req.headers[k] and (req.headers[k] .. ", " .. v) or v
  end
  if raw_body then
    req.body = nil -- the handler reads it from res.sock
  elseif req.headers["transfer-encoding"] then
    local parts = {}
    while true do
      local size = tonumber(assert(sock:receive("*l")):match("^%x+"), 16)
      if size == 0 then
        repeat local t = sock:receive("*l") until t == "" or t == nil
        break
      end
      parts[#parts + 1] = sock:receive(size)
      sock:receive("*l")
    end
    req.body = table.concat(parts)
  elseif req.headers["content-length"] then
    local n = tonumber(req.headers["content-length"])
    req.body = n > 0 and sock:receive(n) or ""
  else
    req.body = ""
  end
  return req
end
M.read_request = read_request

local function reason(status)
  return ({ [200] = "OK", [201] = "Created", [204] = "No Content", [304] = "Not Modified",
            [404] = "Not Found", [500] = "Internal Server Error", [503] = "Service Unavailable" })[status] or "X"
end

--- Writes a response (Content-Length framing unless headers say otherwise).
function M.write_response(sock, status, headers, body)
  body = body or ""
  local lines = { ("HTTP/1.1 %d %s"):format(status, reason(status)) }
  headers = headers or {}
  local has_framing = false
  for k, v in pairs(headers) do
    local lk = k:lower()
    if lk == "content-length" or lk == "transfer-encoding" then has_framing = true end
    lines[#lines + 1] = k .. ": " .. v
  end
  if not has_framing and status ~= 204 and status ~= 304 then
    lines[#lines + 1] = "Content-Length: " .. #body
  end
  return sock:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. body)
end

local Upstream = {}
Upstream.__index = Upstream

function M.start(handler, opts)
  opts = opts or {}
  local self = setmetatable({
    connections = 0, requests = 0, inflight = 0, max_inflight = 0, methods = {},
    received = {}, socks = {}, handler = handler, running = true,
  }, Upstream)
  self.listener = assert(gw.tcp_listen("127.0.0.1", opts.port or 0))
  self.port = self.listener:port()
  local function serve(sock)
    self.socks[sock] = true
    sock:settimeout(opts.timeout or 30000)
    local res = { sock = sock, served = 0 }
    function res:close() sock:close(); self.closed = true end
    function res:reset() sock:reset(); self.closed = true end
    while self.running do
      local req = read_request(sock, opts.raw_body)
      if not req then break end
      self.requests = self.requests + 1
      self.methods[req.method] = (self.methods[req.method] or 0) + 1
      self.received[#self.received + 1] = req
      if self.close_reused and res.served > 0 then
        res:close()
        break
      end
      self.inflight = self.inflight + 1
      if self.inflight > self.max_inflight then self.max_inflight = self.inflight end
      local ok, status, headers, body = pcall(self.handler, req, res)
      self.inflight = self.inflight - 1
      if not ok then
        io.stderr:write("upstream handler error: ", tostring(status), "\n")
        break
      end
      if res.closed then break end
      if status then
        if not M.write_response(sock, status, headers, body) then break end
      end
      res.served = res.served + 1
      if (req.headers["connection"] or ""):lower() == "close" then break end
    end
    self.socks[sock] = nil
    if not res.closed then sock:close() end
  end
  gw.process.task(function()
    while self.running do
      local sock = self.listener:accept()
      if not sock then break end
      self.connections = self.connections + 1
      gw.process.task(function() serve(sock) end)
    end
  end)
  scope.cleanup(function() self:stop() end)
  return self
end

--- Stops listening and closes every open connection (again: nothing).
function Upstream:stop()
  if not self.running then return end
  self.running = false
  self.listener:close()
  for sock in pairs(self.socks) do pcall(sock.close, sock) end
  self.socks = {}
end

--- Sends 'data' in pieces of 'size' bytes with 'pause' seconds between them.
function M.trickle(sock, data, size, pause)
  for i = 1, #data, size do
    if not sock:send(data:sub(i, i + size - 1)) then return false end
    gw.sleep(pause)
  end
  return true
end

return M
