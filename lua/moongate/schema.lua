-- moongate.schema: validates a plugin's configuration against its schema and
-- fills in defaults. Errors name the field path: "field 'limits.per_second': ...".
-- Nothing given is ignored: an unknown field, at any depth, is an error.
--
-- A schema is { fields = { name = field, ... }, check = function(conf, given) }
-- where a field is
--   { type = "string" | "number" | "integer" | "boolean" | "array" | "record" | "map"
--          | "header_name" | "header_value" | "key" | "upstream" | "redis" | "file" | "any",
--     required = true, default = v, one_of = { ... }, between = { min, max },
--     match = "lua pattern" (strings), non_empty = true (strings, arrays, maps),
--     elements = field (arrays), fields = { ... } + check (records),
--     keys = field, values = field (maps), kinds = { ... } (keys),
--     direction = "request" | "response" (header names: refuse the ones the
--     gateway owns there), description = "..." }
-- check(conf, given) sees the normalized conf and `given`, the set of fields
-- the user wrote (not filled in by a default), to refuse fields that only
-- matter together with others. It may add private fields (`_name`) to conf.
local keys = require "moongate.keys"

local M = {}

local type, pairs, ipairs, tostring, fmt = type, pairs, ipairs, tostring, string.format
local floor, huge, concat, sort = math.floor, math.huge, table.concat, table.sort

local TOKEN = keys.TOKEN

-- Headers the gateway writes itself: a value Lua gives for them is dropped,
-- so a config naming them would be ignored (or, for Host, duplicated).
local OWNED = {
  response = { ["content-length"] = true, ["transfer-encoding"] = true, connection = true,
               date = true, ["x-request-id"] = true },
  request = { host = true, ["content-length"] = true, ["transfer-encoding"] = true, connection = true,
              ["keep-alive"] = true, ["proxy-connection"] = true, te = true, trailer = true,
              upgrade = true, expect = true, date = true, ["x-request-id"] = true, traceparent = true },
}
M.OWNED = OWNED

local TYPES = { string = true, number = true, integer = true, boolean = true, array = true, record = true,
                map = true, header_name = true, header_value = true, key = true, upstream = true, redis = true,
                file = true, any = true }
local ATTRS = { type = true, required = true, default = true, one_of = true, between = true, match = true,
                non_empty = true, elements = true, fields = true, check = true, keys = true, values = true,
                kinds = true, direction = true, description = true }

local function copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = copy(x) end
  return t
end

local function sorted_keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = tostring(k) end
  sort(out)
  return out
end

-- The error for a name that none of the config's blocks of this kind declares (nil when one does, or when
-- the blocks are not known here).
local function undeclared(path, name, blocks, kind)
  if not blocks or blocks[name] then return nil end
  local names = sorted_keys(blocks)
  return fmt("field '%s': no %s named '%s' (declared: %s)", path, kind, name, #names > 0 and concat(names, ", ") or "none")
end

local function is_header_value(v)
  -- no CR, LF, NUL or other controls (HTAB is allowed): no header injection
  return not v:find("[%z\1-\8\10-\31\127]")
end
M.is_header_value = is_header_value
function M.is_header_name(v) return type(v) == "string" and v:match(TOKEN) ~= nil end

local validate

local function check_value(field, v, path, env)
  local t = field.type
  if t == "string" then
    if type(v) ~= "string" then return nil, fmt("field '%s': expected a string, got %s", path, type(v)) end
    if field.non_empty and v == "" then return nil, fmt("field '%s': must not be empty", path) end
    if field.match and not v:match(field.match) then
      return nil, fmt("field '%s': '%s' does not match %s", path, v, field.match)
    end
  elseif t == "header_name" then
    if type(v) ~= "string" or not v:match(TOKEN) then
      return nil, fmt("field '%s': '%s' is not a header name", path, tostring(v))
    end
    local owned = field.direction and OWNED[field.direction][v:lower()]
    if owned then
      return nil, fmt("field '%s': the gateway writes %s itself (a value given here would be ignored)", path, v)
    end
  elseif t == "header_value" then
    if type(v) ~= "string" then return nil, fmt("field '%s': expected a string, got %s", path, type(v)) end
    if not is_header_value(v) then
      return nil, fmt("field '%s': a header value must not contain CR, LF or other control characters", path)
    end
  elseif t == "number" or t == "integer" then
    if type(v) ~= "number" then return nil, fmt("field '%s': expected a number, got %s", path, type(v)) end
    if v ~= v or v == huge or v == -huge then return nil, fmt("field '%s': expected a finite number", path) end
    if t == "integer" and floor(v) ~= v then return nil, fmt("field '%s': expected an integer", path) end
    if field.between and (v < field.between[1] or v > field.between[2]) then
      return nil, fmt("field '%s': %s is not between %s and %s", path, tostring(v),
                      tostring(field.between[1]), tostring(field.between[2]))
    end
  elseif t == "boolean" then
    if type(v) ~= "boolean" then return nil, fmt("field '%s': expected true or false", path) end
  elseif t == "key" then
    local key, err = keys.compile(v, field.kinds)
    if not key then return nil, fmt("field '%s': %s", path, err) end
    return key
  elseif t == "upstream" then
    if type(v) ~= "string" then return nil, fmt("field '%s': expected an upstream name, got %s", path, type(v)) end
    local err = undeclared(path, v, env and env.upstreams, "upstream")
    if err then return nil, err end
  elseif t == "redis" then
    if type(v) ~= "string" then return nil, fmt("field '%s': expected the name of a redis block, got %s", path, type(v)) end
    local err = undeclared(path, v, env and env.redis, "redis")
    if err then return nil, err end
  elseif t == "file" then
    if type(v) ~= "string" or v == "" then return nil, fmt("field '%s': expected a file path", path) end
    -- like every path in a config: relative to the config file, never to the cwd
    if v:sub(1, 1) ~= "/" and env and env.dir then v = env.dir .. "/" .. v end
  elseif t == "any" then
    return v
  elseif t == "array" then
    if type(v) ~= "table" then return nil, fmt("field '%s': expected an array", path) end
    local n = #v
    for k in pairs(v) do
      if type(k) ~= "number" or k < 1 or k > n or floor(k) ~= k then
        return nil, fmt("field '%s': expected an array, found key '%s'", path, tostring(k))
      end
    end
    if field.non_empty and n == 0 then return nil, fmt("field '%s': must not be empty", path) end
    local out = {}
    for i, x in ipairs(v) do
      local nv, err = check_value(field.elements, x, fmt("%s[%d]", path, i), env)
      if err then return nil, err end
      out[i] = nv
    end
    v = out
  elseif t == "record" then
    if type(v) ~= "table" then return nil, fmt("field '%s': expected a table", path) end
    return validate(field, v, path .. ".", env)
  elseif t == "map" then
    if type(v) ~= "table" then return nil, fmt("field '%s': expected a table", path) end
    local out, lower_seen = {}, {}
    local header_keys = field.keys.type == "header_name"
    for k, x in pairs(v) do
      local _, err = check_value(field.keys, k, path .. " key", env)
      if err then return nil, err end
      if header_keys then
        -- header names are case-insensitive: two spellings would race in pairs() order
        local lk = k:lower()
        if lower_seen[lk] then
          return nil, fmt("field '%s': '%s' and '%s' are the same header", path, lower_seen[lk], k)
        end
        lower_seen[lk] = k
      end
      local nv, verr = check_value(field.values, x, fmt("%s.%s", path, tostring(k)), env)
      if verr then return nil, verr end
      out[k] = nv
    end
    if field.non_empty and next(out) == nil then return nil, fmt("field '%s': must not be empty", path) end
    v = out
  else
    return nil, fmt("field '%s': schema has an unknown type '%s'", path, tostring(t))
  end
  if field.one_of then
    local ok = false
    for _, allowed in ipairs(field.one_of) do if v == allowed then ok = true end end
    if not ok then
      local names = {}
      for i, a in ipairs(field.one_of) do names[i] = tostring(a) end
      return nil, fmt("field '%s': '%s' is not one of: %s", path, tostring(v), concat(names, ", "))
    end
  end
  return v
end

validate = function(schema, conf, prefix, env)
  local fields = schema.fields or {}
  local out, given = {}, {}
  for k in pairs(conf) do
    if not fields[k] then
      local known = sorted_keys(fields)
      return nil, fmt("field '%s%s': unknown field (known: %s)", prefix, tostring(k),
                      #known > 0 and concat(known, ", ") or "none")
    end
    given[k] = true
  end
  for name, field in pairs(fields) do
    local v = conf[name]
    local path = prefix .. name
    if v == nil then
      if field.default ~= nil then
        -- through check_value too: a default is normalized like a given value (keys compile)
        local nv, err = check_value(field, copy(field.default), path, env)
        if err then return nil, err end
        out[name] = nv
      elseif field.required then
        return nil, fmt("field '%s': required", path)
      elseif field.type == "record" then
        local nv, err = validate(field, {}, path .. ".", env)
        if err then return nil, err end
        out[name] = nv
      end
    else
      local nv, err = check_value(field, v, path, env)
      if err then return nil, err end
      out[name] = nv
    end
  end
  if schema.check then
    local ok, err = schema.check(out, given)
    if not ok then return nil, prefix == "" and err or (prefix:sub(1, -2) .. ": " .. tostring(err)) end
  end
  return out
end

--- Validates conf (a table or nil) against schema. env (optional) is what
-- the config declares: { upstreams = { name = true, ... }, redis = { ... },
-- dir = "..." }: "upstream" and "redis" fields must name one of them (without
-- env, names are not checked); relative "file" fields are taken from dir. Returns the normalized
-- conf with defaults, or nil and a message naming the field.
function M.validate(schema, conf, env)
  if conf == nil or conf == true then conf = {} end
  if type(conf) ~= "table" then return nil, "configuration must be a table" end
  return validate(schema or {}, conf, "", env)
end

-- The shape of one field of a schema (a plugin author's typo is an error too).
local function check_field(f, path)
  if type(f) ~= "table" then return nil, fmt("schema field '%s' must be a table", path) end
  for k in pairs(f) do
    if not ATTRS[k] then
      return nil, fmt("schema field '%s': unknown attribute '%s' (known: %s)", path, tostring(k),
                      concat(sorted_keys(ATTRS), ", "))
    end
  end
  if not TYPES[f.type] then
    return nil, fmt("schema field '%s': type must be one of %s, got '%s'", path,
                    concat(sorted_keys(TYPES), ", "), tostring(f.type))
  end
  if f.type == "array" then
    if f.elements == nil then return nil, fmt("schema field '%s': an array needs elements = { type = ... }", path) end
    local ok, err = check_field(f.elements, path .. "[]")
    if not ok then return nil, err end
  elseif f.type == "map" then
    if f.keys == nil or f.values == nil then
      return nil, fmt("schema field '%s': a map needs keys = { type = ... } and values = { type = ... }", path)
    end
    local ok, err = check_field(f.keys, path .. " key")
    if not ok then return nil, err end
    ok, err = check_field(f.values, path .. " value")
    if not ok then return nil, err end
  elseif f.type == "record" then
    if type(f.fields) ~= "table" then return nil, fmt("schema field '%s': a record needs fields = { ... }", path) end
    for name, sub in pairs(f.fields) do
      local ok, err = check_field(sub, path .. "." .. tostring(name))
      if not ok then return nil, err end
    end
  elseif f.elements or f.keys or f.values or f.fields then
    return nil, fmt("schema field '%s': elements/keys/values/fields are for arrays, maps and records", path)
  end
  if f.check ~= nil and (f.type ~= "record" or type(f.check) ~= "function") then
    return nil, fmt("schema field '%s': check is a function, on records", path)
  end
  if f.direction ~= nil and (f.type ~= "header_name" or not OWNED[f.direction]) then
    return nil, fmt("schema field '%s': direction is \"request\" or \"response\", on header_name", path)
  end
  if f.default ~= nil then
    local _, err = check_value(f, copy(f.default), path)
    if err then return nil, "schema default: " .. err end
  end
  return true
end

--- Checks a schema's own shape: known types and attributes, typed elements,
-- keys, values and record fields, valid defaults. Returns true or nil, message.
function M.check_schema(schema)
  if type(schema) ~= "table" then return nil, "schema must be a table" end
  for k in pairs(schema) do
    if k ~= "fields" and k ~= "check" and k ~= "description" then
      return nil, fmt("schema: unknown key '%s' (fields, check, description)", tostring(k))
    end
  end
  if schema.check ~= nil and type(schema.check) ~= "function" then return nil, "schema: check must be a function" end
  if schema.fields == nil then return true end
  if type(schema.fields) ~= "table" then return nil, "schema: fields must be a table" end
  for name, f in pairs(schema.fields) do
    if type(name) ~= "string" then return nil, "schema: fields must be keyed by name" end
    local ok, err = check_field(f, name)
    if not ok then return nil, err end
  end
  return true
end

return M
