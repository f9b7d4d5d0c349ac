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
      add = { type = "map", keys = { type = "string" }, values = { type = "string" }, default = {},
              description = "headers to add when the response does not have them" },
      set = { type = "map", keys = { type = "string" }, values = { type = "string" }, default = {},
              description = "headers to set, replacing the response's" },
      remove = { type = "array", elements = { type = "string" }, default = {},
                 description = "headers to remove" },
    },
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
