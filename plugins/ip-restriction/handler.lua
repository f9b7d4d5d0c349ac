-- ip-restriction: allow or deny clients by address, IPv4 and IPv6 CIDRs.
-- With an allow list only those may pass; deny wins over allow. The client
-- address is the one every plugin uses (moongate.keys.client_ip: the peer, or
-- behind trusted_proxies the client they name; see docs/proxy.md).
local keys = require "moongate.keys"

local IpRestriction = {
  name = "ip-restriction",
  version = "1.0.0",
  priority = 3000,
  schema = {
    fields = {
      allow = { type = "array", elements = { type = "string" }, default = {},
                description = "addresses or CIDRs that may pass (with a list, only they do)" },
      deny = { type = "array", elements = { type = "string" }, default = {},
               description = "addresses or CIDRs refused (wins over allow)" },
      status = { type = "integer", default = 403, between = { 400, 599 } },
    },
  },
}

local function ipv4_bytes(ip)
  local a, b, c, d = ip:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return nil end
  local out = {}
  for i, x in ipairs({ a, b, c, d }) do
    x = tonumber(x)
    if x > 255 then return nil end
    out[i] = x
  end
  return out
end

-- Parses an address into a list of 16 bytes (IPv4 as IPv4-mapped IPv6, so a
-- dual-stack listener's "::ffff:10.0.0.1" matches 10.0.0.0/8) and the bits
-- of the prefix that are implied (96 for IPv4).
local function parse(ip)
  local v4 = ipv4_bytes(ip)
  if v4 then
    return { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, v4[1], v4[2], v4[3], v4[4] }, 96
  end
  if not ip:find(":", 1, true) then return nil end
  -- an embedded IPv4 tail ("::ffff:1.2.3.4") becomes two groups
  local lead, dotted = ip:match("^(.*:)(%d+%.%d+%.%d+%.%d+)$")
  if lead then
    v4 = ipv4_bytes(dotted)
    if not v4 then return nil end
    ip = lead .. ("%x:%x"):format(v4[1] * 256 + v4[2], v4[3] * 256 + v4[4])
  end
  local head, tail = ip:match("^(.-)::(.*)$")
  if ip:find(":::", 1, true) or ip:match("^:[^:]") or ip:match("[^:]:$") then return nil end
  if head and tail:find("::", 1, true) then return nil end -- "::" at most once
  local groups = {}
  local function add(part, into)
    for g in part:gmatch("[^:]+") do
      if not g:match("^%x%x?%x?%x?$") then return false end
      into[#into + 1] = tonumber(g, 16)
    end
    return true
  end
  if head then
    local h, t = {}, {}
    if not add(head, h) or not add(tail, t) then return nil end
    if #h + #t > 7 then return nil end
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
  if not ip and spec:find("/", 1, true) then return nil end
  local bytes, offset = parse(ip or spec)
  if not bytes then return nil end
  local max = offset == 96 and 32 or 128
  bits = tonumber(bits) or max
  if bits > max then return nil, ("'%s': a prefix is at most /%d"):format(spec, max) end
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
    local net, why = cidr(spec)
    if not net then return nil, why or ("'%s' is not an address or CIDR"):format(spec) end
    out[i] = net
  end
  return out
end

IpRestriction.schema.check = function(conf)
  if #conf.allow == 0 and #conf.deny == 0 then
    return nil, "give allow or deny (with neither, every client passes)"
  end
  local allow, err = compile(conf.allow)
  if not allow then return nil, "field 'allow': " .. err end
  local deny, err2 = compile(conf.deny)
  if not deny then return nil, "field 'deny': " .. err2 end
  conf._allow, conf._deny = allow, deny
  return true
end

function IpRestriction.access(ctx, conf)
  -- never a header an untrusted client wrote: see keys.client_ip
  local ip = keys.client_ip(ctx)
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
