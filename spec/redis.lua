-- spec/redis.lua: a real redis-server (Debian's) for specs, on 127.0.0.1 and
-- a free port, in its own scratch directory, without persistence. The spec
-- talks to it through the gateway's own client (gw.redis.connect, specs only).
--
--   local redis = require "spec.redis"
--   local r = redis.start({ password = "s3cret" })   -- r.port, r.address
--   r:client():get("k")                              -- a gw.redis handle on it
--   r:pause() / r:resume()                           -- SIGSTOP / SIGCONT: a Redis that does not answer
--   r:stop() / r:start()                             -- stop it; start it again on the same port
local helpers = require "spec.helpers"

local M = {}
local Redis = {}
Redis.__index = Redis

local SIGSTOP, SIGCONT = 19, 18

local function spawn(self)
  local argv = { "/usr/bin/redis-server", "--port", tostring(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
                 "--protected-mode", "no" }
  if self.password then
    argv[#argv + 1] = "--requirepass"
    argv[#argv + 1] = self.password
  end
  self.pid = assert(gw.process.spawn(argv, { stdout = self.dir .. "/redis.log", stderr = self.dir .. "/redis.err" }))
  local ok, why = helpers.wait_port(self.port, self.pid, 10)
  if not ok then
    return nil, why .. ": " .. helpers.read_file(self.dir .. "/redis.log")
  end
  return true
end

--- Starts a redis-server. opts.password sets requirepass.
function M.start(opts)
  opts = opts or {}
  local self = setmetatable({ dir = helpers.tmpdir(), password = opts.password }, Redis)
  for _ = 1, 5 do
    self.port = helpers.free_port()
    if spawn(self) then
      self.address = "127.0.0.1:" .. self.port
      return self
    end
    gw.process.kill(self.pid, gw.process.SIGKILL)
    helpers.wait_exit(self.pid, 5)
  end
  error("redis-server did not start: " .. helpers.read_file(self.dir .. "/redis.log"))
end

--- Starts it again on the same port (after stop).
function Redis:start()
  assert(spawn(self))
  self.stopped = false
end

--- Stops it (SIGTERM, then SIGKILL after 5 s).
function Redis:stop()
  if self.stopped then return end
  if self.paused then self:resume() end
  gw.process.kill(self.pid, gw.process.SIGTERM)
  if not helpers.wait_exit(self.pid, 5) then
    gw.process.kill(self.pid, gw.process.SIGKILL)
    helpers.wait_exit(self.pid, 5)
  end
  self.stopped = true
end

function Redis:pause()
  gw.process.kill(self.pid, SIGSTOP)
  self.paused = true
end

function Redis:resume()
  gw.process.kill(self.pid, SIGCONT)
  self.paused = false
end

--- A gw.redis handle on this server (the spec's own connection).
function Redis:client()
  if not self._client then
    self._client = gw.redis.connect({ address = self.address, password = self.password })
  end
  return self._client
end

return M
