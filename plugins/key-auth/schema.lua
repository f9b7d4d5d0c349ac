-- key-auth: configuration schema. The keys_file is read here, at load, so a
-- missing or unreadable file is a config error, not a failing request.
local function read_keys(path, set)
  local f, err = io.open(path, "r")
  if not f then return nil, ("field 'keys_file': cannot read it: %s"):format(err) end
  local n = 0
  for line in f:lines() do
    if line ~= "" and line:sub(1, 1) ~= "#" then
      local key, consumer = line:match("^([^\t]+)\t?(.*)$")
      if key then
        set[key] = consumer ~= "" and consumer or key
        n = n + 1
      end
    end
  end
  f:close()
  if n == 0 then return nil, ("field 'keys_file': %s holds no keys"):format(path) end
  return true
end

-- A keys_file is read once per load (this module lives as long as the
-- generation's VM; a reload makes a new one and reads the file again): a
-- route per service, each naming the same file of 1,000 keys, holds one set.
local file_sets = {}

return {
  fields = {
    header = { type = "header_name", default = "apikey",
               description = "request header carrying the key" },
    query = { type = "string", non_empty = true,
              description = "query argument carrying the key (checked when the header is absent)" },
    keys = { type = "map", non_empty = true, keys = { type = "string", non_empty = true },
             values = { type = "string", non_empty = true },
             description = "key -> consumer name" },
    keys_file = { type = "file",
                  description = "a file of 'key<TAB>consumer' lines (blank and # lines skipped), "
                                .. "relative to the config file, read at load (merged with keys)" },
    hide_credentials = { type = "boolean", default = false,
                         description = "do not send the key header to the upstream" },
  },
  check = function(conf)
    if not conf.keys and not conf.keys_file then return nil, "give keys or keys_file" end
    if conf.hide_credentials and conf.query then
      -- the key would still reach the upstream in the query string
      return nil, "field 'hide_credentials': cannot hide a key sent in the query; drop query or hide_credentials"
    end
    local from_file
    if conf.keys_file then
      from_file = file_sets[conf.keys_file]
      if not from_file then
        from_file = {}
        local ok, err = read_keys(conf.keys_file, from_file)
        if not ok then return nil, err end
        file_sets[conf.keys_file] = from_file
      end
    end
    if not conf.keys then
      conf._set = from_file -- shared, read-only: one table per file, however many routes name it
      return true
    end
    local set = {}
    for k, consumer in pairs(from_file or {}) do set[k] = consumer end
    for k, consumer in pairs(conf.keys) do set[k] = consumer end
    conf._set = set
    return true
  end,
}
