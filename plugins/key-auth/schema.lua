-- key-auth: configuration schema.
return {
  fields = {
    header = { type = "string", default = "apikey",
               description = "request header carrying the key" },
    query = { type = "string", description = "query argument carrying the key (checked when the header is absent)" },
    keys = { type = "map", keys = { type = "string" }, values = { type = "string" },
             description = "key -> consumer name" },
    keys_file = { type = "string",
                  description = "a file of 'key<TAB>consumer' lines, read at load (merged with keys)" },
    hide_credentials = { type = "boolean", default = false,
                         description = "do not send the key to the upstream" },
  },
  check = function(conf)
    if not conf.keys and not conf.keys_file then return nil, "give keys or keys_file" end
    return true
  end,
}
