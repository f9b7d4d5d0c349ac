-- ip-restriction: allow or deny clients by address, IPv4 and IPv6 CIDRs.
-- With an allow list only those may pass; deny wins over allow. The address
-- is ctx.request.client_ip (see trusted_proxies in docs/proxy.md).
local IpRestriction = {
  name = "ip-restriction",
  version = "1.0.0",
  priority = 3000,
  schema = {
    fields = {
      allow = { type = "array", elements = { type = "string" }, default = {} },
      deny = { type = "array", elements = { type = "string" }, default = {} },
      status = { type = "integer", default = 403, between = { 400, 599 } },
    },
  },
}

-- Parses an address into a list of 16 bytes (IPv4 as IPv4-mapped IPv6).
local function parse(ip)
  local a, b, c, d = ip:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if a then
    local bytes = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255 }
    for _, x in ipairs({ a, b, c, d }) do
      x = tonumber(x)
      if x > 255 then return nil end
      bytes[#bytes + 1] = x
    end
    return bytes, 96
  end
  if not ip:find(":", 1, true) then return nil end
  local head, tail = ip:match("^(.-)::(.*)$")
  local groups = {}
  local function add(part, into)
    for g in part:gmatch("[^:]+") do
      local v = tonumber(g, 16)
      if not v or #g > 4 then return false end
      into[#into + 1] = v
    end
    return true
  end
  if head then
    local h, t = {}, {}
    if not add(head, h) or not add(tail, t) then return nil end
    for _, v in ipairs(h) do groups[#groups + 1] = v end
    for _ = 1, 8 - #h - #t do groups[#groups + 1] = 0 end
    for _, v in ipairs(t) do groups[#groups + 1] = v end
  elseif not add(ip, groups) then
    return nil
  end
  if #groups ~= 8 then return nil end
  local bytes = {}
  for _, v in ipairs(groups) do
    bytes[#bytes + 1] = math.floor(v / 256)
    bytes[#bytes + 1] = v % 256
  end
  return bytes, 0
end

local function cidr(spec)
  local ip, bits = spec:match("^([^/]+)/(%d+)$")
  local bytes, offset = parse(ip or spec)
  if not bytes then return nil end
  bits = tonumber(bits) or (offset == 96 and 32 or 128)
  return { bytes = bytes, bits = bits + offset }
end

local function matches(net, bytes)
  local bits = net.bits
  for i = 1, 16 do
    if bits <= 0 then return true end
    if bits >= 8 then
      if net.bytes[i] ~= bytes[i] then return false end
    else
      local scale = 2 ^ (8 - bits) -- compare the top `bits` bits only
      if math.floor(net.bytes[i] / scale) ~= math.floor(bytes[i] / scale) then return false end
    end
    bits = bits - 8
  end
  return true
end

local function compile(list)
  local out = {}
  for i, spec in ipairs(list) do
    local net = cidr(spec)
    if not net then return nil, ("'%s' is not an address or CIDR"):format(spec) end
    out[i] = net
  end
  return out
end

IpRestriction.schema.check = function(conf)
  local allow, err = compile(conf.allow)
  if not allow then return nil, "field 'allow': " .. err end
  local deny, err2 = compile(conf.deny)
  if not deny then return nil, "field 'deny': " .. err2 end
  conf._allow, conf._deny = allow, deny
  return true
end

function IpRestriction.access(ctx, conf)
  -- the client address: the peer, or behind trusted_proxies the client their
  -- X-Forwarded-For names (never a header an untrusted client wrote)
  local ip = ctx.request.client_ip
  local bytes = ip and parse(ip)
  if not bytes then return conf.status, { error = "forbidden" } end
  for _, net in ipairs(conf._deny) do
    if matches(net, bytes) then return conf.status, { error = "forbidden" } end
  end
  if #conf._allow > 0 then
    for _, net in ipairs(conf._allow) do
      if matches(net, bytes) then return end
    end
    return conf.status, { error = "forbidden" }
  end
end

return IpRestriction
