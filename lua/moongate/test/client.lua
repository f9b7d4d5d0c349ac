-- moongate.test.client: the test kit's HTTP client. HTTP/1.1 on gw.tcp
-- sockets (what the gateway gets is exactly what the spec wrote), or HTTP/2
-- through curl (prior knowledge) run without blocking the loop. A response is
--   { status, reason, headers (lowercase names), raw_headers, body,
--     json (when the body is JSON), trace_id (its X-Request-ID),
--     interim = { {status=100}, ... }, trailers (HTTP/2), wire = "h2" }
local M = {}

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local d = f:read("*a")
  f:close()
  return d
end

local function finish(res)
  if res.headers["content-type"] and res.headers["content-type"]:find("json", 1, true) then
    res.json = gw.json.decode(res.body)
  end
  res.trace_id = res.headers["x-request-id"]
  return res
end

--- Reads one HTTP/1.x response from socket s (interim responses first);
-- nil, err when the connection breaks or the status line is not HTTP.
function M.read_response(s, method)
  local line, err = s:receive("*l")
  if not line then return nil, err end
  local status, reason = line:match("^HTTP/1%.[01] (%d%d%d) ?(.*)$")
  if not status then return nil, "bad status line: " .. line end
  local res = { status = tonumber(status), reason = reason, headers = {}, raw_headers = {} }
  while true do
    local h, herr = s:receive("*l")
    if not h then return nil, herr end
    if h == "" then break end
    local k, v = h:match("^([^:]+):%s*(.-)%s*$")
    res.raw_headers[#res.raw_headers + 1] = h
    res.headers[k:lower()] = v
  end
  if res.status >= 100 and res.status < 200 and res.status ~= 101 then
    -- interim responses (100 Continue, 103 Early Hints) come before the final one
    local final, ferr = M.read_response(s, method)
    if final then
      final.continued = res.status == 100 or final.continued
      final.interim = final.interim or {}
      table.insert(final.interim, 1, res)
    end
    return final, ferr
  end
  if method == "HEAD" or res.status == 101 or res.status == 204 or res.status == 304 then
    -- no body; after a 101 the bytes are the new protocol's (moongate.test.websocket reads them)
    res.body = ""
  elseif res.headers["content-length"] then
    local n = tonumber(res.headers["content-length"])
    res.body = n > 0 and assert(s:receive(n)) or ""
  elseif res.headers["transfer-encoding"] then
    local parts = {}
    while true do
      local size = tonumber(assert(s:receive("*l")):match("^%x+"), 16)
      if size == 0 then assert(s:receive("*l")); break end
      parts[#parts + 1] = assert(s:receive(size))
      assert(s:receive("*l"))
    end
    res.body = table.concat(parts)
  else
    res.body = s:receive("*a") or ""
  end
  return finish(res)
end

--- An HTTP/2 request with curl to 127.0.0.1:port; dir is a scratch directory
-- (the caller removes it). opts: host, headers, body.
function M.h2_request(port, method, path, opts, dir, wait_exit)
  local argv = { "/usr/bin/curl", "-sS", "--max-time", "30", "--http2-prior-knowledge", "--path-as-is", "-X", method,
                 "-H", "Host: " .. (opts.host or "localhost"), "-D", dir .. "/head", "-o", dir .. "/res" }
  for k, v in pairs(opts.headers or {}) do argv[#argv + 1] = "-H"; argv[#argv + 1] = k .. ": " .. v end
  if opts.body then
    local f = assert(io.open(dir .. "/body", "wb"))
    f:write(opts.body)
    f:close()
    argv[#argv + 1] = "--data-binary"; argv[#argv + 1] = "@" .. dir .. "/body"
  end
  if method == "HEAD" then argv[#argv + 1] = "-I" end
  argv[#argv + 1] = ("http://127.0.0.1:%d%s"):format(port, path)
  local pid = assert(gw.process.spawn(argv, { stderr = dir .. "/err" }))
  local _, code = wait_exit(pid, 35)
  if code ~= 0 then return nil, "curl exit " .. tostring(code) end
  local heads, body = read_file(dir .. "/head"), read_file(dir .. "/res")
  -- -D holds the interim heads, the final head, then the trailers, each ended by a blank line
  local blocks = {}
  for block in heads:gsub("\r", ""):gmatch("(.-)\n\n") do blocks[#blocks + 1] = block end
  local res = { reason = "", headers = {}, raw_headers = {}, body = body, wire = "h2", interim = {}, trailers = {} }
  local final
  for _, block in ipairs(blocks) do
    local status = block:match("^HTTP/2 (%d%d%d)")
    if status and not final then
      if status:sub(1, 1) == "1" then
        res.interim[#res.interim + 1] = { status = tonumber(status) }
      else
        final = true
        res.status = tonumber(status)
        for line in block:gmatch("[^\n]+") do
          local k, v = line:match("^([^:]+):%s*(.-)%s*$")
          if k and not line:match("^HTTP/") then
            res.raw_headers[#res.raw_headers + 1] = line
            res.headers[k:lower()] = v
          end
        end
      end
    elseif final then
      for line in block:gmatch("[^\n]+") do
        local k, v = line:match("^([^:]+):%s*(.-)%s*$")
        if k then res.trailers[k:lower()] = v end
      end
    end
  end
  if not res.status then return nil, "no response head" end
  return finish(res)
end

return M
