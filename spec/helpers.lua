-- spec/helpers.lua: start real gatewayd processes on 127.0.0.1 and talk to
-- them over real sockets. Runs inside `gatewayd --spec`, so waits use the
-- gateway's own event loop (gw.sleep, gw.tcp) and gw.process is available.
local M = {}

local TMP = os.getenv("TMPDIR") or "/tmp"

-- busted does not seed; two spec runs must not pick the same ports and dirs
math.randomseed(os.time() * 1000 + math.floor(gw.monotonic_ms() * 1000) % 1000000)

M.gatewayd = os.getenv("GATEWAYD") or (gw.process.exe())

local function write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local d = f:read("*a")
  f:close()
  return d
end
M.read_file, M.write_file = read_file, write_file

local seq = 0
--- A fresh scratch directory for one gateway.
function M.tmpdir()
  seq = seq + 1
  local dir = string.format("%s/moongate-spec-%d-%d-%d", TMP, math.random(1e9), os.time(), seq)
  assert(os.execute("mkdir -p '" .. dir .. "'") == 0)
  return dir
end

--- Waits until something listens on port (or the process died).
local function wait_port(port, pid, seconds)
  local deadline = gw.monotonic_ms() + seconds * 1000
  while gw.monotonic_ms() < deadline do
    local s = gw.tcp()
    s:settimeout(200)
    local ok = s:connect("127.0.0.1", port)
    s:close()
    if ok then return true end
    if pid and gw.process.poll(pid) then return false, "gatewayd exited" end
    gw.sleep(0.02)
  end
  return false, "timeout"
end
M.wait_port = wait_port

--- A port that is probably free: below the ephemeral range, and checked by binding it.
function M.free_port()
  for _ = 1, 50 do
    local port = 20000 + math.random(0, 12000)
    local l = gw.tcp_listen("127.0.0.1", port)
    if l then
      l:close()
      return port
    end
  end
  error("no free port found")
end

local Gateway = {}
Gateway.__index = Gateway

--- "h1" (default) or "h2": the protocol g:request speaks (MOONGATE_SPEC_WIRE).
M.wire = os.getenv("MOONGATE_SPEC_WIRE") or "h1"

--- Starts gatewayd with a config body. "{{PORT}}" in it is replaced by a free port;
-- a listen line is added when the config has none. Extra files: opts.files = { ["routes/a.lua"] = "..." };
-- environment: opts.env = { "NAME=value", ... }; working directory: opts.cwd.
function M.start(config, opts)
  opts = opts or {}
  local dir = M.tmpdir()
  for name, body in pairs(opts.files or {}) do
    local sub = name:match("^(.*)/[^/]+$")
    if sub then os.execute("mkdir -p '" .. dir .. "/" .. sub .. "'") end
    write_file(dir .. "/" .. name, body)
  end
  for _ = 1, 5 do
    -- below Linux's ephemeral range (32768-60999), where client sockets would collide
    local port = M.free_port()
    local body = config:gsub("{{PORT}}", tostring(port))
    local h2 = false
    if not (body:find("^%s*listen[%s(\"]") or body:find("\n%s*listen[%s(\"]")) then
      -- MOONGATE_SPEC_WIRE=h2: the same specs with g:request over HTTP/2 (h2c) on the same port
      h2 = M.wire == "h2"
      body = (h2 and 'listen { "127.0.0.1:%d", http2 = true }\n' or 'listen "127.0.0.1:%d"\n'):format(port) .. body
    end
    if not body:find("admin_socket", 1, true) then
      body = ('admin_socket "%s/admin.sock"\n'):format(dir) .. body
    end
    local file = dir .. "/gateway.lua"
    write_file(file, body)
    local argv = opts.env and { "/usr/bin/env", unpack(opts.env) } or {}
    for _, a in ipairs({ M.gatewayd, "-c", file, "-w", tostring(opts.workers or 1) }) do argv[#argv + 1] = a end
    for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
    local pid = assert(gw.process.spawn(argv, { stdout = dir .. "/access.log", stderr = dir .. "/error.log", cwd = opts.cwd }))
    local ok = wait_port(port, pid, 10)
    if ok then
      return setmetatable({ pid = pid, port = port, dir = dir, file = file, socket = dir .. "/admin.sock", h2 = h2 },
                          Gateway)
    end
    gw.process.kill(pid, gw.process.SIGKILL)
    M.wait_exit(pid, 5)
    local err = read_file(dir .. "/error.log")
    if not err:find("Address already in use", 1, true) then
      error("gatewayd did not start: " .. err)
    end
  end
  error("gatewayd did not start: no free port found")
end

--- Runs `gatewayd -t` on a config body; returns its exit code, its stderr and the config file.
-- opts.cwd: the working directory to run it in; opts.dir: where to write the config.
function M.check_config(body, opts)
  opts = opts or {}
  local dir = opts.dir or M.tmpdir()
  local file = dir .. "/gateway.lua"
  write_file(file, body)
  local pid = assert(gw.process.spawn({ M.gatewayd, "-t", "-c", file }, { stderr = dir .. "/err", cwd = opts.cwd }))
  local _, code = M.wait_exit(pid, 10)
  return code, read_file(dir .. "/err"), file
end

--- Validates conf for plugin `name` as a config load would (env: { upstreams = {...}, dir = ... });
-- returns the normalized conf, or nil and the message.
function M.configure(name, conf, env)
  local plugins = require "moongate.plugins"
  local p = assert(plugins.load(name))
  return plugins.configure(p, conf, env)
end

--- The message configure gives for a conf that must be refused (fails the spec when it is accepted).
function M.conf_error(name, conf, env)
  local ok, err = M.configure(name, conf, env)
  assert(ok == nil, ("plugin %s accepted a conf it must refuse"):format(name))
  return err
end

--- Waits for pid to exit; returns "exit"/"signal", code, or nil on timeout.
function M.wait_exit(pid, seconds)
  local deadline = gw.monotonic_ms() + seconds * 1000
  repeat
    local how, code = gw.process.poll(pid)
    if how then return how, code end
    gw.sleep(0.02)
  until gw.monotonic_ms() > deadline
  return nil
end

--- Stops the gateway with SIGTERM (graceful drain); returns how it exited.
function Gateway:stop(seconds)
  if self.stopped then return self.how, self.code end
  gw.process.kill(self.pid, gw.process.SIGTERM)
  local how, code = M.wait_exit(self.pid, seconds or 15)
  if not how then
    gw.process.kill(self.pid, gw.process.SIGKILL)
    how, code = M.wait_exit(self.pid, 5)
    how = "killed"
  end
  self.stopped, self.how, self.code = true, how, code
  -- a gateway that does not stop cleanly is a failure (under ASan: a leak or memory error)
  if how ~= "exit" or code ~= 0 then
    error(("gatewayd did not exit cleanly (%s %s); error log:\n%s"):format(
      how, tostring(code), self:error_log():sub(-4000)), 2)
  end
  return how, code
end

function Gateway:error_log() return read_file(self.dir .. "/error.log") end

--- Runs gatewayctl against this gateway; returns exit code and output (stdout then stderr).
function Gateway:ctl(...)
  local ctl = M.gatewayd:gsub("gatewayd$", "gatewayctl")
  local argv = { ctl, "-s", self.socket, ... }
  local out = self.dir .. "/ctl.out"
  local pid = assert(gw.process.spawn(argv, { stdout = out, stderr = out .. ".err" }))
  local _, code = M.wait_exit(pid, 20)
  return code, read_file(out) .. read_file(out .. ".err")
end
function Gateway:access_log() return read_file(self.dir .. "/access.log") end

--- Access-log entries as tables, in order.
function Gateway:access_entries()
  local out = {}
  for line in self:access_log():gmatch("[^\n]+") do
    out[#out + 1] = gw.json.decode(line)
  end
  return out
end

--- The access-log entry of the request with this trace id (waits briefly for the line).
function Gateway:entry(trace_id)
  for _ = 1, 20 do
    for _, e in ipairs(self:access_entries()) do
      if e.trace_id == trace_id then return e end
    end
    gw.sleep(0.025)
  end
end

--- A connected client socket.
function Gateway:connect(timeout_ms)
  local s = gw.tcp()
  s:settimeout(timeout_ms or 5000)
  assert(s:connect("127.0.0.1", self.port))
  return s
end

--- Reads one HTTP response from socket s. Returns a table
-- { status, reason, headers (lowercase keys), body } or nil, err.
function M.read_response(s, method)
  local line, err = s:receive("*l")
  if not line then return nil, err end
  local status, reason = line:match("^HTTP/1%.[01] (%d%d%d) ?(.*)$")
  if not status then return nil, "bad status line: " .. line end
  local res = { status = tonumber(status), reason = reason, headers = {}, raw_headers = {} }
  while true do
    local h, herr = s:receive("*l")
    if not h then return nil, herr end
    if h == "" then break end
    local k, v = h:match("^([^:]+):%s*(.-)%s*$")
    res.raw_headers[#res.raw_headers + 1] = h
    res.headers[k:lower()] = v
  end
  if res.status >= 100 and res.status < 200 and res.status ~= 101 then
    -- interim responses (100 Continue, 103 Early Hints) come before the final one
    local final, ferr = M.read_response(s, method)
    if final then
      final.continued = res.status == 100 or final.continued
      final.interim = final.interim or {}
      table.insert(final.interim, 1, res)
    end
    return final, ferr
  end
  if method == "HEAD" or res.status == 204 or res.status == 304 then
    res.body = ""
  elseif res.headers["content-length"] then
    local n = tonumber(res.headers["content-length"])
    res.body = n > 0 and assert(s:receive(n)) or ""
  elseif res.headers["transfer-encoding"] then
    local parts = {}
    while true do
      local size = tonumber(assert(s:receive("*l")):match("^%x+"), 16)
      if size == 0 then assert(s:receive("*l")); break end
      parts[#parts + 1] = assert(s:receive(size))
      assert(s:receive("*l"))
    end
    res.body = table.concat(parts)
  else
    res.body = s:receive("*a") or ""
  end
  if res.headers["content-type"] and res.headers["content-type"]:find("json", 1, true) then
    res.json = gw.json.decode(res.body)
  end
  return res
end

--- Sends raw bytes on a new connection and reads one response.
function Gateway:raw(bytes, method)
  local s = self:connect()
  assert(s:send(bytes))
  local res, err = M.read_response(s, method)
  s:close()
  return res, err
end

-- g:request over HTTP/2 with curl (prior knowledge), run without blocking the
-- loop (an upstream in this process may have to answer meanwhile).
local function h2_request(g, method, path, opts)
  local dir = M.tmpdir()
  local argv = { "/usr/bin/curl", "-sS", "--max-time", "30", "--http2-prior-knowledge", "--path-as-is", "-X", method,
                 "-H", "Host: " .. (opts.host or "localhost"), "-D", dir .. "/head", "-o", dir .. "/res" }
  for k, v in pairs(opts.headers or {}) do argv[#argv + 1] = "-H"; argv[#argv + 1] = k .. ": " .. v end
  if opts.body then
    write_file(dir .. "/body", opts.body)
    argv[#argv + 1] = "--data-binary"; argv[#argv + 1] = "@" .. dir .. "/body"
  end
  if method == "HEAD" then argv[#argv + 1] = "-I" end
  argv[#argv + 1] = ("http://127.0.0.1:%d%s"):format(g.port, path)
  local pid = assert(gw.process.spawn(argv, { stderr = dir .. "/err" }))
  local _, code = M.wait_exit(pid, 35)
  local heads, body = read_file(dir .. "/head"), read_file(dir .. "/res")
  os.execute("rm -rf '" .. dir .. "'")
  if code ~= 0 then return nil, "curl exit " .. tostring(code) end
  -- -D holds the interim heads, the final head, then the trailers, each ended by a blank line
  local blocks = {}
  for block in heads:gsub("\r", ""):gmatch("(.-)\n\n") do blocks[#blocks + 1] = block end
  local res = { reason = "", headers = {}, raw_headers = {}, body = body, wire = "h2", interim = {}, trailers = {} }
  local final
  for _, block in ipairs(blocks) do
    local status = block:match("^HTTP/2 (%d%d%d)")
    if status and not final then
      if status:sub(1, 1) == "1" then
        res.interim[#res.interim + 1] = { status = tonumber(status) }
      else
        final = true
        res.status = tonumber(status)
        for line in block:gmatch("[^\n]+") do
          local k, v = line:match("^([^:]+):%s*(.-)%s*$")
          if k and not line:match("^HTTP/") then
            res.raw_headers[#res.raw_headers + 1] = line
            res.headers[k:lower()] = v
          end
        end
      end
    elseif final then
      for line in block:gmatch("[^\n]+") do
        local k, v = line:match("^([^:]+):%s*(.-)%s*$")
        if k then res.trailers[k:lower()] = v end
      end
    end
  end
  if not res.status then return nil, "no response head" end
  if res.headers["content-type"] and res.headers["content-type"]:find("json", 1, true) then
    res.json = gw.json.decode(res.body)
  end
  return res
end

--- request(method, path, { headers = {...}, body = "..." }) -> response table
function Gateway:request(method, path, opts)
  opts = opts or {}
  if self.h2 and not opts.h1 then return h2_request(self, method, path, opts) end
  local lines = { ("%s %s HTTP/1.1"):format(method, path), "Host: " .. (opts.host or "localhost") }
  local headers = opts.headers or {}
  for k, v in pairs(headers) do lines[#lines + 1] = k .. ": " .. v end
  if opts.body and not headers["Transfer-Encoding"] then
    lines[#lines + 1] = "Content-Length: " .. #opts.body
  end
  lines[#lines + 1] = "Connection: close"
  return self:raw(table.concat(lines, "\r\n") .. "\r\n\r\n" .. (opts.body or ""), method)
end

--- True when the server closed the connection (reads EOF within the socket timeout).
function M.closed(s)
  local data, err = s:receive("*a")
  return data ~= nil or err == "closed" or err == "reset"
end

--- Runs fns concurrently (each in its own coroutine on the event loop) and waits for all.
-- Returns their first results in order.
function M.parallel(fns)
  local results, errors, left = {}, {}, #fns
  for i, fn in ipairs(fns) do
    results[i] = false
    gw.process.task(function()
      local ok, r = pcall(fn)
      if ok then results[i] = r else errors[#errors + 1] = r end
      left = left - 1
    end)
  end
  while left > 0 do gw.sleep(0.005) end
  if #errors > 0 then error(errors[1], 2) end
  return results
end

return M
