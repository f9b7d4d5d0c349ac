-- moongate.test.redis: a real redis-server for specs of plugins that use
-- gw.redis, on 127.0.0.1 and a free port, in a scratch directory of its own,
-- without persistence. It stops by itself when the busted block that started
-- it ends (moongate.test.scope). The spec talks to it through the gateway's
-- own client (gw.redis.connect, present in `gatewayd --spec` only).
--
--   local redis = require "moongate.test.redis"
--   local r = redis.start({ password = "s3cret" })   -- r.port, r.address ("127.0.0.1:<port>")
--   helpers.start(('redis "main" { address = "%s", password = "s3cret" }'):format(r.address) .. ...)
--   r:client():get("k")                              -- a gw.redis handle on it, for the spec itself
--   r:pause() / r:resume()                           -- SIGSTOP / SIGCONT: a Redis that does not answer
--   r:stop() / r:start()                             -- stop it; start it again on the same port (a restart)
--
-- redis-server is looked up in PATH (opts.bin to name another);
-- redis.available() says whether there is one, for a spec that skips without.
local scope = require "moongate.test.scope"

local M = {}
local Redis = {}
Redis.__index = Redis

-- moongate.test requires this module's siblings at load: take it when used
local function kit() return require "moongate.test" end

local function in_path(bin)
  if bin:find("/", 1, true) then return io.open(bin) and bin end
  for dir in (os.getenv("PATH") or "/usr/bin:/bin"):gmatch("[^:]+") do
    local f = io.open(dir .. "/" .. bin)
    if f then
      f:close()
      return dir .. "/" .. bin
    end
  end
end

--- Is there a redis-server to start (in PATH, or at bin)?
function M.available(bin) return in_path(bin or "redis-server") ~= nil end

local function spawn(self)
  local helpers = kit()
  local argv = { self.bin, "--port", tostring(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
                 "--protected-mode", "no" }
  if self.password then
    argv[#argv + 1] = "--requirepass"
    argv[#argv + 1] = self.password
  end
  local log = self.dir .. "/redis.log"
  self.pid = assert(gw.process.spawn(argv, { stdout = log, stderr = log }))
  local ok, why = helpers.wait_port(self.port, self.pid, 10)
  if not ok then return nil, why .. ": " .. helpers.read_file(log) end
  return true
end

--- Starts a redis-server: opts.password sets requirepass, opts.bin the program (default: redis-server in PATH).
function M.start(opts)
  opts = opts or {}
  local helpers = kit()
  local bin = in_path(opts.bin or "redis-server")
  if not bin then
    error(("moongate.test.redis: %s not found in PATH (on Debian: apt-get install redis-server)")
          :format(opts.bin or "redis-server"), 2)
  end
  local self = setmetatable({ dir = helpers.tmpdir(), password = opts.password, bin = bin }, Redis)
  local why
  for _ = 1, 5 do -- a port found free may be taken before redis-server binds it
    self.port = helpers.free_port()
    local ok
    ok, why = spawn(self)
    if ok then
      self.address = "127.0.0.1:" .. self.port
      scope.cleanup(function() self:stop() end)
      return self
    end
    gw.process.kill(self.pid, "SIGKILL")
    helpers.wait_exit(self.pid, 5)
  end
  error("moongate.test.redis: redis-server did not start: " .. tostring(why), 2)
end

--- Starts it again on the same port (after stop).
function Redis:start()
  assert(spawn(self))
  self.stopped = false
end

--- Stops it (SIGTERM, then SIGKILL after 5 s). Its data is gone: it keeps none.
function Redis:stop()
  if self.stopped then return end
  local helpers = kit()
  if self.paused then self:resume() end
  gw.process.kill(self.pid, "SIGTERM")
  if not helpers.wait_exit(self.pid, 5) then
    gw.process.kill(self.pid, "SIGKILL")
    helpers.wait_exit(self.pid, 5)
  end
  self.stopped = true
end

--- Freezes it (SIGSTOP): it accepts connections (the kernel does) and answers nothing.
function Redis:pause()
  gw.process.kill(self.pid, "SIGSTOP")
  self.paused = true
end

function Redis:resume()
  gw.process.kill(self.pid, "SIGCONT")
  self.paused = false
end

--- A gw.redis handle on this server, the spec's own connection (gw.redis.connect).
function Redis:client()
  if not self._client then
    self._client = gw.redis.connect({ address = self.address, password = self.password })
  end
  return self._client
end

return M
