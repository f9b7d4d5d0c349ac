-- moongate.schema: validates a plugin's configuration against its schema and
-- fills in defaults. Errors name the field path: "field 'limits.per_second': ...".
--
-- A schema is { fields = { name = field, ... } } where a field is
--   { type = "string" | "number" | "integer" | "boolean" | "array" | "record" | "map",
--     required = true, default = v, one_of = { ... }, between = { min, max },
--     match = "lua pattern" (strings), elements = field (arrays),
--     fields = { ... } (records), keys = field, values = field (maps),
--     description = "..." }
local M = {}

local type, pairs, ipairs, tostring, fmt = type, pairs, ipairs, tostring, string.format
local floor = math.floor

local function copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = copy(x) end
  return t
end

local validate

local function check_value(field, v, path)
  local t = field.type
  if t == "string" then
    if type(v) ~= "string" then return nil, fmt("field '%s': expected a string, got %s", path, type(v)) end
    if field.match and not v:match(field.match) then
      return nil, fmt("field '%s': '%s' does not match %s", path, v, field.match)
    end
  elseif t == "number" or t == "integer" then
    if type(v) ~= "number" then return nil, fmt("field '%s': expected a number, got %s", path, type(v)) end
    if t == "integer" and floor(v) ~= v then return nil, fmt("field '%s': expected an integer", path) end
    if field.between and (v < field.between[1] or v > field.between[2]) then
      return nil, fmt("field '%s': %s is not between %s and %s", path, tostring(v),
                      tostring(field.between[1]), tostring(field.between[2]))
    end
  elseif t == "boolean" then
    if type(v) ~= "boolean" then return nil, fmt("field '%s': expected true or false", path) end
  elseif t == "array" then
    if type(v) ~= "table" then return nil, fmt("field '%s': expected an array", path) end
    local n = #v
    for k in pairs(v) do
      if type(k) ~= "number" or k < 1 or k > n or floor(k) ~= k then
        return nil, fmt("field '%s': expected an array, found key '%s'", path, tostring(k))
      end
    end
    if field.elements then
      local out = {}
      for i, x in ipairs(v) do
        local nv, err = check_value(field.elements, x, fmt("%s[%d]", path, i))
        if err then return nil, err end
        out[i] = nv
      end
      v = out
    end
  elseif t == "record" then
    if type(v) ~= "table" then return nil, fmt("field '%s': expected a table", path) end
    return validate(field, v, path .. ".")
  elseif t == "map" then
    if type(v) ~= "table" then return nil, fmt("field '%s': expected a table", path) end
    local out = {}
    for k, x in pairs(v) do
      if field.keys then
        local _, err = check_value(field.keys, k, path .. " key")
        if err then return nil, err end
      end
      if field.values then
        local nv, err = check_value(field.values, x, fmt("%s.%s", path, tostring(k)))
        if err then return nil, err end
        x = nv
      end
      out[k] = x
    end
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
      return nil, fmt("field '%s': '%s' is not one of: %s", path, tostring(v), table.concat(names, ", "))
    end
  end
  return v
end

validate = function(schema, conf, prefix)
  prefix = prefix or ""
  local fields = schema.fields or {}
  local out = {}
  for k in pairs(conf) do
    if not fields[k] then
      return nil, fmt("field '%s%s': unknown field", prefix, tostring(k))
    end
  end
  for name, field in pairs(fields) do
    local v = conf[name]
    local path = prefix .. name
    if v == nil then
      if field.default ~= nil then
        out[name] = copy(field.default)
      elseif field.required then
        return nil, fmt("field '%s': required", path)
      elseif field.type == "record" then
        local nv, err = validate(field, {}, path .. ".")
        if err then return nil, err end
        out[name] = nv
      end
    else
      local nv, err = check_value(field, v, path)
      if err then return nil, err end
      out[name] = nv
    end
  end
  if schema.check then
    local ok, err = schema.check(out)
    if not ok then return nil, prefix == "" and err or (prefix .. ": " .. tostring(err)) end
  end
  return out
end

--- Validates conf (a table or nil) against schema. Returns the normalized
-- conf with defaults, or nil and a message naming the field.
function M.validate(schema, conf)
  if conf == nil or conf == true then conf = {} end
  if type(conf) ~= "table" then return nil, "configuration must be a table" end
  return validate(schema or {}, conf, "")
end

return M
