-- moongate.test: the test kit, for Moongate's own specs and for plugin
-- authors' (docs/plugins.md, "Testing a plugin"). It starts real gatewayd
-- processes on 127.0.0.1 from a config string and talks to them over real
-- sockets; moongate.test.upstream is a scriptable upstream. It runs inside
-- `gatewayd --spec` (busted in the gateway's runtime), so its waits use the
-- gateway's own event loop (gw.sleep, gw.tcp) and gw.process is available.
--
-- What it creates is released when the busted block that created it ends
-- (moongate.test.scope): temporary directories are removed, gateways still
-- running are killed. When a test fails, the error-log lines of the last
-- request each gateway served in it are added to the failure message.
if not (gw and gw.process) then
  error("moongate.test runs inside `gatewayd --spec` (it starts gateways with gw.process)", 2)
end

local scope = require "moongate.test.scope"
local client = require "moongate.test.client"
local websocket = require "moongate.test.websocket"

local M = {}

local TMP = os.getenv("TMPDIR") or "/tmp"
local KEEP = os.getenv("MOONGATE_SPEC_KEEP") == "1"

-- busted does not seed; two spec runs must not pick the same ports and dirs
math.randomseed(os.time() * 1000 + math.floor(gw.monotonic_ms() * 1000) % 1000000)

--- The gatewayd to start: $GATEWAYD, else the one running the specs.
M.gatewayd = os.getenv("GATEWAYD") or gw.process.exe()
M.upstream = require "moongate.test.upstream"
M.read_response = client.read_response
M.websocket = websocket

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

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local seq = 0
--- A fresh scratch directory, removed when the current test (or describe, or file) ends.
function M.tmpdir()
  seq = seq + 1
  local dir = string.format("%s/moongate-spec-%d-%d-%d", TMP, math.random(1e9), os.time(), seq)
  assert(os.execute("mkdir -p " .. shell_quote(dir)) == 0)
  if not KEEP then scope.cleanup(function() os.execute("rm -rf " .. shell_quote(dir)) end) end
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

-- The config is written to a temporary directory; a relative plugins_dir in
-- it means the directory the specs run in (the plugin's repository).
local function absolute_plugins_dirs(body, base)
  return (body:gsub("(plugins_dir%s*%(?%s*)([\"'])([^\"'\n]*)%2", function(pre, q, path)
    if path:sub(1, 1) == "/" then return nil end
    return pre .. q .. base .. "/" .. path .. q
  end))
end

local Gateway = {}
Gateway.__index = Gateway

--- "h1" (default) or "h2": the protocol g:request speaks (MOONGATE_SPEC_WIRE).
M.wire = os.getenv("MOONGATE_SPEC_WIRE") or "h1"

--- Starts gatewayd with a config body. "{{PORT}}" in it is replaced by a free port;
-- a listen line is added when the config has none. Extra files: opts.files = { ["routes/a.lua"] = "..." };
-- environment: opts.env = { "NAME=value", ... }; working directory: opts.cwd; opts.workers (1);
-- more arguments: opts.args ("{{PORT}}" replaced in opts.args and opts.env too). The gateway is killed when the current test (or describe) ends.
function M.start(config, opts)
  opts = opts or {}
  local dir = M.tmpdir()
  for name, body in pairs(opts.files or {}) do
    local sub = name:match("^(.*)/[^/]+$")
    if sub then os.execute("mkdir -p " .. shell_quote(dir .. "/" .. sub)) end
    write_file(dir .. "/" .. name, body)
  end
  config = absolute_plugins_dirs(config, gw.process.cwd())
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
    local argv = { "/usr/bin/env" }
    for _, e in ipairs(opts.env or {}) do argv[#argv + 1] = (e:gsub("{{PORT}}", tostring(port))) end
    if not opts.env then argv = {} end
    for _, a in ipairs({ M.gatewayd, "-c", file, "-w", tostring(opts.workers or 1) }) do argv[#argv + 1] = a end
    for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = (a:gsub("{{PORT}}", tostring(port))) end
    local pid = assert(gw.process.spawn(argv, { stdout = dir .. "/access.log", stderr = dir .. "/error.log", cwd = opts.cwd }))
    local ok = wait_port(port, pid, 10)
    if ok then
      local g = setmetatable({ pid = pid, port = port, dir = dir, file = file, socket = dir .. "/admin.sock", h2 = h2 },
                             Gateway)
      scope.cleanup(function() g:kill() end)
      return g
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
-- opts.cwd: the working directory to run it in; opts.dir: where to write the config (relative
-- paths in it are then from there, as for any config file; without it, a relative
-- plugins_dir is taken from the directory the specs run in, as in start).
function M.check_config(body, opts)
  opts = opts or {}
  if not opts.dir then body = absolute_plugins_dirs(body, gw.process.cwd()) end
  local dir = opts.dir or M.tmpdir()
  local file = dir .. "/gateway.lua"
  write_file(file, body)
  local pid = assert(gw.process.spawn({ M.gatewayd, "-t", "-c", file }, { stderr = dir .. "/err", cwd = opts.cwd }))
  local _, code = M.wait_exit(pid, 10)
  return code, read_file(dir .. "/err"), file
end

--- Validates conf for plugin `name` as a config load would (env: { upstreams = {...}, dir = ... });
-- returns the normalized conf, or nil and the message. The plugin is found in ./plugins
-- (env.plugins_dirs: a list of directories instead), else among the bundled ones.
function M.configure(name, conf, env)
  local plugins = require "moongate.plugins"
  env = env or {}
  local dirs = env.plugins_dirs or { gw.process.cwd() .. "/plugins" }
  local p, err = plugins.load(name, dirs)
  if not p then error(err, 2) end
  local schema_env = {}
  for k, v in pairs(env) do
    if k ~= "plugins_dirs" then schema_env[k] = v end
  end
  return plugins.configure(p, conf, schema_env)
end

--- The message configure gives for a conf that must be refused (fails the spec when it is accepted).
function M.conf_error(name, conf, env)
  local ok, err = M.configure(name, conf, env)
  assert(ok == nil, ("plugin %s accepted a conf it must refuse"):format(name))
  return err
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

--- Kills the gateway at once (SIGKILL), if it still runs; what the end of its scope does.
function Gateway:kill()
  if self.stopped then return end
  gw.process.kill(self.pid, gw.process.SIGKILL)
  M.wait_exit(self.pid, 5)
  self.stopped, self.how = true, "killed"
end

function Gateway:error_log() return read_file(self.dir .. "/error.log") end
--- Does this gateway run under AddressSanitizer? (its memory figures then measure the sanitizer)
function Gateway:sanitized() return read_file("/proc/" .. self.pid .. "/maps"):find("libasan", 1, true) ~= nil end
--- The gateway's resident memory in KiB (VmRSS): a spec's bound on what a load costs.
function Gateway:rss_kb() return tonumber(read_file("/proc/" .. self.pid .. "/status"):match("VmRSS:%s+(%d+)")) end
function Gateway:access_log() return read_file(self.dir .. "/access.log") end

local ctl_calls = 0

--- Runs gatewayctl against this gateway; returns exit code and output (stdout then stderr).
-- Calls may run at the same time (each has its own output files).
function Gateway:ctl(...)
  local ctl = M.gatewayd:gsub("gatewayd$", "gatewayctl")
  assert(io.open(ctl), ctl .. " is missing: build gatewayctl beside gatewayd"):close()
  local argv = { ctl, "-s", self.socket, ... }
  ctl_calls = ctl_calls + 1
  local out = ("%s/ctl-%d.out"):format(self.dir, ctl_calls)
  local pid = assert(gw.process.spawn(argv, { stdout = out, stderr = out .. ".err" }))
  local _, code = M.wait_exit(pid, 20)
  local text = read_file(out) .. read_file(out .. ".err")
  os.remove(out)
  os.remove(out .. ".err")
  return code, text
end

local function json_lines(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do out[#out + 1] = gw.json.decode(line) or { msg = line } end
  return out
end

--- Access-log entries as tables, in order.
function Gateway:access_entries() return json_lines(self:access_log()) end

--- The last access-log entry for which pred(entry) is true, waiting up to 0.5 s
-- for it: lines are written by a log thread.
function Gateway:find_entry(pred)
  for _ = 1, 20 do
    local e = self:access_entries()
    for i = #e, 1, -1 do
      if pred(e[i]) then return e[i] end
    end
    gw.sleep(0.025)
  end
end

--- The access-log entry of the request with this trace id (waits briefly for the line).
function Gateway:entry(trace_id)
  return self:find_entry(function(e) return e.trace_id == trace_id end)
end

--- The error-log entries (tables) written for the request with this trace id, in order.
-- Waits up to `seconds` (0.5) for the first one: lines are written by a log thread.
function Gateway:error_entries(trace_id, seconds)
  local deadline = gw.monotonic_ms() + (seconds or 0.5) * 1000
  repeat
    local out = {}
    for _, e in ipairs(json_lines(self:error_log())) do
      if e.trace_id == trace_id then out[#out + 1] = e end
    end
    if #out > 0 then return out end
    gw.sleep(0.025)
  until gw.monotonic_ms() > deadline
  return {}
end

local function format_entry(e)
  local s = ("  %s %s: %s"):format(e.time or "", e.level or "?", tostring(e.msg))
  if e.traceback then s = s .. "\n    " .. tostring(e.traceback):gsub("\n", "\n    ") end
  return s
end

-- What a failed test shows about this gateway: the error-log lines of its last request.
function Gateway:failure_report()
  local last = self.last_request
  if not last then return "" end
  local head = ("gatewayd %s, last request %s:"):format(self.dir, last.what)
  if not last.trace_id then
    local lines = {}
    for line in self:error_log():gmatch("[^\n]+") do lines[#lines + 1] = line end
    return head .. " no response (no trace id); the error log ends with:\n  " ..
           table.concat(lines, "\n  ", math.max(1, #lines - 9))
  end
  local entries = self:error_entries(last.trace_id)
  if #entries == 0 then return head .. " no error-log line has its trace id " .. last.trace_id end
  local out = { head .. " its error-log lines (trace id " .. last.trace_id .. "):" }
  for _, e in ipairs(entries) do out[#out + 1] = format_entry(e) end
  return table.concat(out, "\n")
end

-- Remembers a request's trace id for the failure message of the current test.
local function note(g, what, res)
  g.last_request = { what = what, trace_id = res and res.trace_id }
  g.last_trace_id = g.last_request.trace_id
  scope.on_failure(g, function() return g:failure_report() end)
end

--- A connected client socket.
function Gateway:connect(timeout_ms)
  local s = gw.tcp()
  s:settimeout(timeout_ms or 5000)
  assert(s:connect("127.0.0.1", self.port))
  return s
end

--- Sends raw bytes on a new connection and reads one response.
function Gateway:raw(bytes, method)
  local s = self:connect()
  assert(s:send(bytes))
  local res, err = client.read_response(s, method)
  s:close()
  note(self, (bytes:match("^[^\r\n]*") or ""):sub(1, 200), res)
  return res, err
end

--- request(method, path, { headers = {...}, body = "...", host = "...", h1 = true }) -> response table
-- (see moongate.test.client), or nil, err. Over HTTP/2 when the gateway was started for it (h1 forces 1.1).
function Gateway:request(method, path, opts)
  opts = opts or {}
  if self.h2 and not opts.h1 then
    local dir = M.tmpdir()
    local res, err = client.h2_request(self.port, method, path, opts, dir, M.wait_exit)
    os.execute("rm -rf " .. shell_quote(dir))
    note(self, method .. " " .. path .. " (h2)", res)
    return res, err
  end
  local lines = { ("%s %s HTTP/1.1"):format(method, path), "Host: " .. (opts.host or "localhost") }
  local headers = opts.headers or {}
  for k, v in pairs(headers) do lines[#lines + 1] = k .. ": " .. v end
  if opts.body and not headers["Transfer-Encoding"] then
    lines[#lines + 1] = "Content-Length: " .. #opts.body
  end
  lines[#lines + 1] = "Connection: close"
  return self:raw(table.concat(lines, "\r\n") .. "\r\n\r\n" .. (opts.body or ""), method)
end

--- websocket(path [, opts]) -> ws, or nil, err, res: a WebSocket on a new connection (HTTP/1.1
-- whatever MOONGATE_SPEC_WIRE says); see moongate.test.websocket. ws.trace_id is the 101's
-- X-Request-ID, for g:entry.
function Gateway:websocket(path, opts)
  local ws, err, res = websocket.connect(self.port, path, opts)
  note(self, "WebSocket " .. path, ws or res)
  return ws, err, res
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
