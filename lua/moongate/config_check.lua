-- moongate.config_check: the checking vocabulary of the config DSL
-- (config.lua and config_upstream.lua): errors located at the config line
-- that called a directive, and the one check for unknown fields.
local type, pairs, tostring, tonumber, setmetatable, error = type, pairs, tostring, tonumber, setmetatable, error
local fmt, concat = string.format, table.concat

local M = {}

-- An error raised with this marker carries its own "file:line: " prefix.
local Located = {}
M.Located = Located

-- The DSL's own files: where() looks past their frames.
local DSL_SOURCES = { [debug.getinfo(1, "S").source] = true }

--- Registers the calling module as part of the DSL (its frames are not config lines).
function M.dsl_module()
  DSL_SOURCES[debug.getinfo(2, "S").source] = true
end

--- The config file and line that called into the DSL: the first stack frame
-- outside it (directives call helpers, so a fixed level would be wrong).
function M.where()
  local file, line = M.frame(DSL_SOURCES)
  if file then return file, line end
  return "?", 0
end

-- Set by the C side (mg_lua.c, without a table per call); this is its meaning.
function M.frame(dsl)
  for level = 3, 64 do
    local info = debug.getinfo(level, "Sl")
    if not info then return end
    if not dsl[info.source] and info.what ~= "C" then return (info.source:gsub("^@", "")), info.currentline end
  end
end
local where = M.where

--- Raises "file:line: msg".
function M.fail_at(file, line, msg, ...)
  error(setmetatable({ msg = fmt("%s:%d: " .. msg, file, line, ...) }, Located), 0)
end
local fail_at = M.fail_at

--- Raises an error located at the config line that called the directive.
function M.fail(msg, ...)
  local file, line = where()
  fail_at(file, line, msg, ...)
end
local fail = M.fail

--- A block directive (`upstream "x"`, `redis "x"`, `group "/x"`) called
-- with its name and not yet with its body: st.unfinished reports it at the
-- end of the config (what, at the calling line) unless the returned
-- function, called when the body comes, takes it off. Also returns the line.
function M.awaiting_body(st, what)
  local file, line = where()
  local pending = { what = what, file = file, line = line }
  st.unfinished[pending] = true
  return function() st.unfinished[pending] = nil end, file, line
end

--- Is word a likely misspelling of known (not it, but within two edits: "websockets", "web-socket")?
function M.near_miss(word, known)
  if word == known or math.abs(#word - #known) > 2 then return false end
  local prev = {}
  for j = 0, #known do prev[j] = j end
  for i = 1, #word do
    local cur = { [0] = i }
    for j = 1, #known do
      local cost = word:byte(i) == known:byte(j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#known] <= 2
end

--- Parses "250ms", "10s", "2m", "1h" or a number of seconds into milliseconds.
function M.duration(v)
  if type(v) == "number" then
    if v < 0 or v ~= v then return nil end
    return M.duration_max(math.floor(v * 1000 + 0.5), v)
  end
  if type(v) ~= "string" then return nil end
  local num, unit = v:match("^%s*([%d%.]+)%s*(%a*)%s*$")
  num = tonumber(num)
  if not num then return nil end
  local scale = ({ ms = 1, s = 1000, [""] = 1000, m = 60000, h = 3600000 })[unit]
  if not scale then return nil end
  return M.duration_max(math.floor(num * scale + 0.5), v)
end

-- Durations are kept in 32-bit milliseconds: a longer one would wrap around
-- to a short one, so it is refused (596h is about 24 days).
M.MAX_DURATION_MS = 2147483647
function M.duration_max(ms, v)
  if ms > M.MAX_DURATION_MS then
    M.fail("duration %s is longer than the longest one the gateway keeps (596h)", tostring(v))
  end
  return ms
end

--- Parses 8192, "8k", "1m", "2g" into bytes (nil when it is not a size).
function M.size(v)
  if type(v) == "number" and v >= 0 then return math.floor(v) end
  if type(v) ~= "string" then return nil end
  local num, unit = v:lower():match("^%s*(%d+)%s*(%a*)%s*$")
  num = tonumber(num)
  local scale = ({ [""] = 1, b = 1, k = 1024, kb = 1024, m = 1048576, mb = 1048576,
                   g = 1073741824, gb = 1073741824 })[unit or ""]
  if not num or not scale then return nil end
  return num * scale
end

local NO_FIELDS = {}

-- The one check for every table a directive takes: a field it does not know
-- is an error naming the known ones ("unknown field 'x' in listen (known: a, b)").
-- positional: the table also takes a list part (checked by the caller); else
-- list entries are unknown fields too ('[1]').
function M.check_fields(t, allowed, what, positional)
  for k in pairs(t) do
    local numeric = type(k) == "number"
    if (numeric and not positional) or (not numeric and not allowed[k]) then
      local names = {}
      for n in pairs(allowed) do names[#names + 1] = n end
      table.sort(names)
      fail("unknown field '%s' in %s (known: %s)", numeric and ("[" .. k .. "]") or tostring(k), what,
           #names > 0 and concat(names, ", ") or "none: it is a list")
    end
  end
end

-- A table field (nil allowed), checked with check_fields.
function M.table_field(v, allowed, what)
  if v == nil then return nil end
  if type(v) ~= "table" then fail("%s expects a table", what) end
  M.check_fields(v, allowed, what)
  return v
end

-- A list (positional entries only).
function M.list_field(v, what)
  if type(v) ~= "table" then fail("%s expects a list", what) end
  M.check_fields(v, NO_FIELDS, what, true)
  local n = #v
  for k in pairs(v) do
    if k < 1 or k > n or k % 1 ~= 0 then fail("%s: entry [%s] is outside the list 1..%d", what, tostring(k), n) end
  end
  return v
end

--- A path from the config, relative to the config file's directory `dir`.
function M.from_dir(dir, p)
  return p:sub(1, 1) == "/" and p or dir .. "/" .. p
end

return M
