-- response-transformer: add, replace or remove response headers.
-- Adding only is decided before the response exists (access phase), which
-- keeps proxied responses on the fast path; removing or replacing headers
-- runs in header_filter (it may yield like any phase).
local Transformer = {
  name = "response-transformer",
  version = "1.0.0",
  priority = 800,
  schema = {
    fields = {
      add = { type = "map", keys = { type = "header_name", direction = "response" },
              values = { type = "header_value" }, default = {},
              description = "headers the response gets when it does not have them (defaults)" },
      set = { type = "map", keys = { type = "header_name", direction = "response" },
              values = { type = "header_value" }, default = {},
              description = "headers to set, replacing the response's" },
      remove = { type = "array", elements = { type = "header_name", direction = "response" }, default = {},
                 description = "headers to remove" },
    },
    check = function(conf)
      if next(conf.add) == nil and next(conf.set) == nil and #conf.remove == 0 then
        return nil, "give add, set or remove"
      end
      -- one header in two lists: one of them would be ignored (set replaces what add adds,
      -- set wins over remove, remove takes away what add adds)
      local seen = {}
      for name in pairs(conf.add) do seen[name:lower()] = "add" end
      for name in pairs(conf.set) do
        if seen[name:lower()] then return nil, ("field 'set.%s': also in add; give it once"):format(name) end
        seen[name:lower()] = "set"
      end
      for i, name in ipairs(conf.remove) do
        local other = seen[name:lower()]
        if other then return nil, ("field 'remove[%d]': %s is also in %s; give it once"):format(i, name, other) end
      end
      return true
    end,
  },
}

function Transformer.uses(phase, conf)
  if phase == "header_filter" then return next(conf.set) ~= nil or #conf.remove > 0 end
  return true
end

function Transformer.access(ctx, conf)
  local h = ctx.response.headers
  for k, v in pairs(conf.add) do h[k] = v end
end

-- ctx.response.headers is case-insensitive: one assignment replaces the
-- field whatever its spelling, in its place.
function Transformer.header_filter(ctx, conf)
  local h = ctx.response.headers
  for _, name in ipairs(conf.remove) do h[name] = nil end
  for k, v in pairs(conf.set) do h[k] = v end
end

return Transformer
