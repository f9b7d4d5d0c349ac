-- request-transformer: change the headers a proxy route sends upstream.
-- Values are compiled at load: "$trace_id" and "$consumer" expand, "$$" is a
-- literal "$", and any other "$name" is an error (a typo would be sent as is).
local VARS = { trace_id = true, consumer = true }

-- "id-$trace_id" -> { "id-", VAR "trace_id" }: no pattern matching per request
local function compile(value)
  local parts, pos = {}, 1
  while true do
    local s, e, name = value:find("%$([%a_][%w_]*)", pos)
    local dollar = value:find("$$", pos, true)
    if dollar and (not s or dollar < s) then
      parts[#parts + 1] = value:sub(pos, dollar) -- up to and including one '$'
      pos = dollar + 2
    elseif s then
      if not VARS[name] then return nil, ("unknown variable $%s (known: $trace_id, $consumer; $$ for a $)"):format(name) end
      if s > pos then parts[#parts + 1] = value:sub(pos, s - 1) end
      parts[#parts + 1] = { var = name }
      pos = e + 1
    else
      if pos <= #value then parts[#parts + 1] = value:sub(pos) end
      return parts
    end
  end
end

local function expand(parts, ctx)
  local out = {}
  for i = 1, #parts do
    local p = parts[i]
    if type(p) == "string" then
      out[i] = p
    elseif p.var == "trace_id" then
      out[i] = ctx.trace_id
    else
      out[i] = ctx.consumer ~= nil and tostring(ctx.consumer) or ""
    end
  end
  return table.concat(out)
end

return {
  name = "request-transformer",
  version = "1.0.0",
  priority = 801,
  proxy_only = true, -- it changes the upstream request: on a handler route it would do nothing
  schema = {
    fields = {
      set = { type = "map", keys = { type = "header_name", direction = "request" },
              values = { type = "header_value" }, default = {},
              description = "headers to set (replacing the client's); $trace_id and $consumer expand" },
      remove = { type = "array", elements = { type = "header_name", direction = "request" }, default = {},
                 description = "client headers not to send upstream" },
    },
    check = function(conf)
      if next(conf.set) == nil and #conf.remove == 0 then return nil, "give set or remove" end
      local setl = {}
      for name in pairs(conf.set) do
        -- both are sent as the gateway's own X-Forwarded-For line and this one: two headers
        if name:lower() == "x-forwarded-for" then
          return nil, "field 'set.X-Forwarded-For': the gateway appends the client address itself (remove it to drop the client's)"
        end
        setl[name:lower()] = name
      end
      for i, name in ipairs(conf.remove) do
        if setl[name:lower()] then
          return nil, ("field 'remove[%d]': %s is also in set, which replaces it anyway"):format(i, name)
        end
      end
      conf._set = {}
      for name, value in pairs(conf.set) do
        local parts, err = compile(value)
        if not parts then return nil, ("field 'set.%s': %s"):format(name, err) end
        conf._set[#conf._set + 1] = { name = name, parts = parts }
      end
      return true
    end,
  },
  access = function(ctx, conf)
    local req = ctx.request
    for _, name in ipairs(conf.remove) do req:clear_header(name) end
    for _, h in ipairs(conf._set) do req:set_header(h.name, expand(h.parts, ctx)) end
  end,
}
