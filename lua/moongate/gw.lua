-- moongate.gw: the Lua half of the `gw` API table (the C half is src/mg_api.c
-- and src/mg_tcp.c). Loaded into every VM; `gw` is a global there.
local cjson = require "cjson.safe"
local gw = gw

local type, pairs, tostring = type, pairs, tostring
local encode = cjson.encode
local find, gsub = string.find, string.gsub

--- gw.json: cjson.safe, except that encode does not escape '/' (lua-cjson
-- 2.1.0 always does, which makes paths and URLs in bodies hard to read).
local function json_encode(v)
  local s, err = encode(v)
  if s and find(s, "\\/", 1, true) then s = gsub(s, "\\/", "/") end
  return s, err
end
gw.json = setmetatable({ encode = json_encode }, { __index = cjson })
gw.VERSION = "0.1.0"

--- gw.time() -> wall-clock seconds as a float.
gw.time = gw.now

--- gw.null: a nil reply from Redis (and JSON null): cjson.null.
gw.null = cjson.null

--- gw.redis("main") -> the handle of the config's redis "main" (src/mg_redis_lua.c),
-- one per name and VM; gw.redis.script(source) -> a script for red:eval.
local redis_handles = {}
gw.redis = setmetatable({ script = gw._redis_script, connect = gw._redis_connect }, {
  __call = function(_, name)
    local h = redis_handles[name]
    if not h then
      local why
      h, why = gw._redis(name)
      if not h then error(why, 2) end -- located at the caller: the config's file:line at load
      redis_handles[name] = h
    end
    return h
  end,
})

--- gw.error(kind [, status [, headers]]) -> what a plugin's rewrite or access
-- phase (or a handler) returns to answer with a gateway error kind, as the
-- gateway answers its own errors: `return gw.error("redis_timeout")`. The body
-- is the gateway's {"error": message, "status": ..., "trace_id": ...} (a gRPC
-- status for gRPC calls), the kind goes to the access log's "error",
-- ctx.error, moongate_request_errors_total{kind} and error_header; status
-- defaults to the kind's; headers are added (Retry-After, say). The response
-- filters do not run on it, as on the gateway's own errors. @phases rewrite,
-- access, handler
local error_marks = gw._error_marks
gw._error_marks = nil
local ERROR_MARK = {} -- mark -> true: plugins.lua tells an error answer from a body
for _, mark in pairs(error_marks) do ERROR_MARK[mark] = true end
gw._is_error_mark = function(v) return ERROR_MARK[v] == true end
function gw.error(kind, status, headers)
  local mark = error_marks[kind]
  if not mark then
    error(("gw.error: %s is not an error kind (gw.errors)"):format(tostring(kind)), 2)
  end
  if status ~= nil and (type(status) ~= "number" or status % 1 ~= 0 or status < 400 or status > 599) then
    error("gw.error: status must be an integer from 400 to 599", 2)
  end
  if headers ~= nil and type(headers) ~= "table" then error("gw.error: headers must be a table", 2) end
  return status or gw.errors[kind].status, mark, headers
end

local LEVELS = { debug = true, info = true, warn = true, error = true }

--- gw.log(level, message [, fields]) / ctx.log(...)
-- Writes a JSON line to the error log. The trace id of the request running
-- the current coroutine is attached automatically, also after yields.
-- gw.log(message) logs at "info".
function gw.log(level, msg, fields)
  if msg == nil or not LEVELS[level] then
    level, msg, fields = "info", level, msg
  end
  local extra
  if type(fields) == "table" then
    local parts, n = {}, 0
    for k, v in pairs(fields) do
      if type(k) == "string" and k ~= "time" and k ~= "level" and k ~= "msg" and k ~= "trace_id" then
        local ev = json_encode(v)
        if ev then
          n = n + 1
          parts[n] = json_encode(k) .. ":" .. ev
        end
      end
    end
    extra = table.concat(parts, ",")
  end
  gw._log(level, tostring(msg), extra)
end

--- gw.grpc.status(code, message) -> status, body, headers: what a plugin or
-- handler returns to end a gRPC call with a gRPC status (a trailers-only
-- answer), e.g. `return gw.grpc.status(16, "missing key")`.
local pct_encode = function(s)
  return (s:gsub("[^ -$&-~]", function(c) return ("%%%02X"):format(c:byte()) end))
end
gw.grpc = {
  status = function(code, message)
    if type(code) ~= "number" or code % 1 ~= 0 or code < 0 or code > 16 then
      error("gw.grpc.status: the code must be a gRPC status, an integer 0..16", 2)
    end
    return 200, "", { ["content-type"] = "application/grpc", ["grpc-status"] = tostring(code),
                      ["grpc-message"] = message and pct_encode(tostring(message)) or nil }
  end,
}

return gw
