-- moongate.test.websocket: the test kit's WebSocket client (RFC 6455 on a
-- gw.tcp socket), so a spec can open a WebSocket on a gateway without an
-- outside program:
--
--   local ws = assert(g:websocket("/chat", { headers = { apikey = "k1" } }))
--   ws:send_text("hello")
--   local data, typ = ws:recv()          -- "echo: hello", "text"
--   ws:close(1000)
--   local reason, typ, code = ws:recv()  -- "", "close", 1000 (the server's answer)
--   local e = g:entry(ws.trace_id)       -- the 101's X-Request-ID finds its log line
--
-- It follows the client's side of the framing rules: every frame it sends is
-- masked (a fresh key each, from gw.random_bytes), lengths are in their
-- shortest form, and what the server sends is checked (unmasked, no reserved
-- bits, control frames short and whole); a violation is reported by recv as
-- nil, "protocol: ...", never repaired. send_frame writes any frame, valid or
-- not, for specs that break the rules on purpose. websocket.accept plays the
-- server's side (unmasked frames out, masked ones required in) for a fake
-- upstream.
local ffi = require "ffi"
local bit = require "bit"
local client = require "moongate.test.client"

local band, bor, bxor, rshift = bit.band, bit.bor, bit.bxor, bit.rshift
local char, byte, concat = string.char, string.byte, table.concat

local M = {}

local GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
M.TEXT, M.BINARY, M.CLOSE, M.PING, M.PONG, M.CONTINUATION = 1, 2, 8, 9, 10, 0
local NAMES = { [1] = "text", [2] = "binary", [8] = "close", [9] = "ping", [10] = "pong" }

-- OpenSSL is in the process already (gatewayd links it); pcall: another module may have declared these
pcall(ffi.cdef, "const void *EVP_sha1(void);")
pcall(ffi.cdef, "int EVP_Digest(const void *data, size_t n, unsigned char *md, unsigned int *size, const void *type, void *impl);")
pcall(ffi.cdef, "int EVP_EncodeBlock(unsigned char *t, const unsigned char *f, int n);")

local function base64(s)
  local out = ffi.new("unsigned char[?]", math.floor((#s + 2) / 3) * 4 + 1)
  return ffi.string(out, ffi.C.EVP_EncodeBlock(out, s, #s))
end

--- The Sec-WebSocket-Accept a server must answer to this Sec-WebSocket-Key (RFC 6455 section 4.2.2).
function M.accept_key(key)
  local md, n = ffi.new("unsigned char[20]"), ffi.new("unsigned int[1]")
  local s = key .. GUID
  assert(ffi.C.EVP_Digest(s, #s, md, n, ffi.C.EVP_sha1(), nil) == 1, "SHA-1 failed")
  return base64(ffi.string(md, n[0]))
end

local function mask(payload, key)
  local n = #payload
  if n == 0 then return "" end
  local buf = ffi.new("uint8_t[?]", n)
  ffi.copy(buf, payload, n)
  local k0, k1, k2, k3 = byte(key, 1, 4)
  local k = { [0] = k0, k1, k2, k3 }
  for i = 0, n - 1 do buf[i] = bxor(buf[i], k[i % 4]) end
  return ffi.string(buf, n)
end

--- One frame's bytes. opts: fin (true), masked (true: a client's), rsv (0..7), key (4 bytes; random).
function M.frame(opcode, payload, opts)
  opts = opts or {}
  payload = payload or ""
  local fin = opts.fin ~= false
  local masked = opts.masked ~= false
  local n = #payload
  local head = { char(bor(fin and 0x80 or 0, band(opts.rsv or 0, 7) * 16, band(opcode, 0x0F))) }
  local m = masked and 0x80 or 0
  if n < 126 then
    head[2] = char(bor(m, n))
  elseif n < 65536 then
    head[2] = char(bor(m, 126), rshift(n, 8), band(n, 0xFF))
  else
    local hi, lo = math.floor(n / 2 ^ 32), n % 2 ^ 32
    head[2] = char(bor(m, 127), rshift(hi, 24), band(rshift(hi, 16), 0xFF), band(rshift(hi, 8), 0xFF), band(hi, 0xFF),
                   rshift(lo, 24), band(rshift(lo, 16), 0xFF), band(rshift(lo, 8), 0xFF), band(lo, 0xFF))
  end
  if not masked then return concat(head) .. payload end
  local key = opts.key or gw.random_bytes(4)
  return concat(head) .. key .. mask(payload, key)
end

local WS = {}
WS.__index = WS

--- Sends one frame (any opcode, valid or not); returns the bytes sent, or nil, err.
-- Masked on the client's side, not on the server's (websocket.accept), unless opts.masked says.
function WS:send_frame(opcode, payload, opts)
  if opts == nil or opts.masked == nil then
    local o = { masked = not self.server }
    for k, v in pairs(opts or {}) do o[k] = v end
    opts = o
  end
  return self.sock:send(M.frame(opcode, payload, opts))
end

function WS:send_text(s) return self:send_frame(M.TEXT, s) end
function WS:send_binary(s) return self:send_frame(M.BINARY, s) end
function WS:ping(s) return self:send_frame(M.PING, s) end
function WS:pong(s) return self:send_frame(M.PONG, s) end

--- Sends a close frame: code (none: an empty close), reason.
function WS:close(code, reason)
  local payload = code and (char(rshift(code, 8), band(code, 0xFF)) .. (reason or "")) or ""
  return self:send_frame(M.CLOSE, payload)
end

--- Closes the TCP connection without a close frame (a client that vanishes).
function WS:disconnect()
  self.sock:close()
end

local function bad(self, why)
  self.broken = "protocol: " .. why
  return nil, self.broken
end

--- The next frame from the peer: { opcode, fin, rsv, masked, payload }, or nil, err
-- ("timeout", "closed", "reset", "protocol: ..."). timeout_ms: this read (default: the socket's).
function WS:recv_frame(timeout_ms)
  if self.broken then return nil, self.broken end
  local s = self.sock
  if timeout_ms then s:settimeout(timeout_ms) end
  local h, err = s:receive(2)
  if not h then return nil, err end
  local b0, b1 = byte(h, 1, 2)
  local f = { opcode = band(b0, 0x0F), fin = band(b0, 0x80) ~= 0, rsv = rshift(band(b0, 0x70), 4),
              masked = band(b1, 0x80) ~= 0 }
  local n = band(b1, 0x7F)
  if n == 126 then
    local e = s:receive(2)
    if not e then return nil, "closed" end
    local x, y = byte(e, 1, 2)
    n = x * 256 + y
  elseif n == 127 then
    local e = s:receive(8)
    if not e then return nil, "closed" end
    n = 0
    for i = 1, 8 do n = n * 256 + byte(e, i) end
  end
  local key = f.masked and s:receive(4)
  local payload = n > 0 and s:receive(n) or ""
  if not payload or (f.masked and not key) then return nil, "closed" end
  if self.server and not f.masked then return bad(self, "a client frame is not masked") end
  if not self.server and f.masked then return bad(self, "a server frame is masked") end
  if f.masked then payload = mask(payload, key) end
  if f.rsv ~= 0 then return bad(self, "reserved bits set") end
  if f.opcode >= 8 and (n > 125 or not f.fin) then return bad(self, "a control frame over 125 bytes or fragmented") end
  if not NAMES[f.opcode] and f.opcode ~= 0 then return bad(self, "reserved opcode " .. f.opcode) end
  f.payload = payload
  return f
end

--- The next message: data, typ ("text", "binary", "ping", "pong", "close"), and for
-- "close" the code (data is the reason; 1005 when the frame had no code).
-- Fragments are assembled; control frames between them come first, as they arrive.
-- nil, err when nothing came in time or the connection broke.
function WS:recv(timeout_ms)
  local parts, first
  while true do
    local f, err = self:recv_frame(timeout_ms)
    if not f then return nil, err end
    if f.opcode >= 8 then
      if f.opcode == M.CLOSE then
        local p = f.payload
        if #p == 1 then return bad(self, "a close payload of one byte") end
        local code = #p >= 2 and byte(p, 1) * 256 + byte(p, 2) or 1005
        self.close_code, self.close_reason = code, p:sub(3)
        return p:sub(3), "close", code
      end
      return f.payload, NAMES[f.opcode]
    end
    if f.opcode == 0 then
      if not first then return bad(self, "a continuation with no message") end
      parts[#parts + 1] = f.payload
    else
      if first then return bad(self, "a new message inside a fragmented one") end
      first, parts = f.opcode, { f.payload }
    end
    if f.fin then return concat(parts), NAMES[first] end
  end
end

--- True when the server closed the TCP connection (EOF) within timeout_ms (default: the socket's).
function WS:closed(timeout_ms)
  if timeout_ms then self.sock:settimeout(timeout_ms) end
  local data, err = self.sock:receive("*a")
  return data ~= nil or err == "closed" or err == "reset"
end

--- Opens a WebSocket on 127.0.0.1:port. opts: host ("localhost"), headers ({ name = value }),
-- protocols ({ "chat", ... }: Sec-WebSocket-Protocol), timeout_ms (5000, each read), key (the
-- Sec-WebSocket-Key; random), early (bytes sent in the same write as the handshake, e.g.
-- websocket.frame(...): frames right behind the head). Returns ws, or nil, err, res when the answer was not an
-- acceptable 101 (res: the response, as moongate.test.client reads it).
-- ws: status, headers (lowercase names), raw_headers, trace_id (the 101's X-Request-ID),
-- protocol (the subprotocol chosen, or nil), sock.
function M.connect(port, path, opts)
  opts = opts or {}
  local s = gw.tcp()
  s:settimeout(opts.timeout_ms or 5000)
  local ok, cerr = s:connect("127.0.0.1", port)
  if not ok then return nil, "connect: " .. tostring(cerr) end
  local key = opts.key or base64(gw.random_bytes(16))
  local lines = { ("GET %s HTTP/1.1"):format(path), "Host: " .. (opts.host or "localhost"), "Upgrade: websocket",
                  "Connection: Upgrade", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: " .. key }
  if opts.protocols then lines[#lines + 1] = "Sec-WebSocket-Protocol: " .. concat(opts.protocols, ", ") end
  for k, v in pairs(opts.headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  assert(s:send(concat(lines, "\r\n") .. "\r\n\r\n" .. (opts.early or "")))
  local res, err = client.read_response(s)
  if not res then
    s:close()
    return nil, "no response: " .. tostring(err)
  end
  if res.status ~= 101 then
    s:close()
    return nil, "status " .. res.status, res
  end
  if res.headers["sec-websocket-accept"] ~= M.accept_key(key) then
    s:close()
    return nil, "wrong Sec-WebSocket-Accept", res
  end
  return setmetatable({ sock = s, status = 101, headers = res.headers, raw_headers = res.raw_headers,
                        trace_id = res.trace_id, protocol = res.headers["sec-websocket-protocol"] }, WS)
end

--- The server's side, for a fake upstream (moongate.test.upstream): answers the handshake
-- in req (its Sec-WebSocket-Key) with a 101 on sock and returns a ws whose frames go
-- unmasked and whose peer's frames must be masked. extra: more bytes right behind the 101
-- (e.g. websocket.frame(websocket.TEXT, "hi", { masked = false })).
function M.accept(sock, req, extra)
  local key = req.headers["sec-websocket-key"] or ""
  assert(sock:send("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" ..
                   "Sec-WebSocket-Accept: " .. M.accept_key(key) .. "\r\n\r\n" .. (extra or "")))
  return setmetatable({ sock = sock, server = true }, WS)
end

return M
