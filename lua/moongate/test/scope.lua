-- moongate.test.scope: what the test kit ties to busted's blocks.
--
-- A scope is the file, a describe block or a test (an `it`). What the kit
-- creates (temporary directories, gateways) is registered with the innermost
-- scope open at the time (scope.cleanup) and released when that scope ends,
-- newest first: a gateway started in a test is gone after the test, one
-- started in a describe's setup after the describe's teardown. A test may
-- also say what to add to its failure message (scope.on_failure): the kit
-- uses that for the error-log lines of the last request a gateway served.
--
-- The state lives in the Lua registry, not in this module: busted reloads the
-- spec's modules for every file (insulation), and the hooks must be
-- subscribed once whatever that setting is.
local M = {}

local KEY = "moongate.test.scope"
local reg = debug.getregistry()

local function run_cleanups(frame)
  for i = #frame.cleanups, 1, -1 do
    local ok, err = pcall(frame.cleanups[i])
    if not ok then io.stderr:write("moongate.test: cleanup failed: ", tostring(err), "\n") end
  end
  frame.cleanups = {}
end

local function new_state()
  local st = { frames = { { cleanups = {} } }, test = nil, republishing = false }
  local ok, busted = pcall(require, "busted")
  if not ok or type(busted) ~= "table" or not busted.subscribe then
    return st -- not under busted: cleanups run only when asked (M.close)
  end
  local function push() st.frames[#st.frames + 1] = { cleanups = {} } end
  local function pop()
    if #st.frames > 1 then run_cleanups(table.remove(st.frames)) else run_cleanups(st.frames[1]) end
  end
  busted.subscribe({ "describe", "start" }, function() push(); return nil, true end)
  busted.subscribe({ "describe", "end" }, function() pop(); return nil, true end)
  busted.subscribe({ "test", "start" }, function()
    push()
    st.test = { reports = {}, order = {} }
    return nil, true
  end)
  busted.subscribe({ "test", "end" }, function()
    st.test = nil
    pop()
    return nil, true
  end)
  busted.subscribe({ "file", "end" }, function()
    while #st.frames > 1 do pop() end
    pop()
    return nil, true
  end)
  -- A failed test's message gets the reports appended. Subscribed first
  -- (priority 1): it stops the original message and publishes it again with
  -- the reports, so every output handler sees the same, whole message.
  for _, status in ipairs({ "failure", "error" }) do
    local channel = { status, "it" }
    busted.subscribe(channel, function(element, parent, message, debug)
      if st.republishing or not st.test then return nil, true end
      local extra = M.reports()
      if extra == "" then return nil, true end
      st.republishing = true
      local text = type(message) == "string" and message or tostring(message)
      local pub_ok, err = pcall(busted.publish, channel, element, parent, text .. "\n\n" .. extra, debug)
      st.republishing = false
      if not pub_ok then error(err, 0) end
      return nil, false
    end, { priority = 1 })
  end
  return st
end

local st = reg[KEY]
if not st then
  st = new_state()
  reg[KEY] = st
end

--- Runs fn when the innermost open scope ends (newest first).
function M.cleanup(fn)
  local frame = st.frames[#st.frames]
  frame.cleanups[#frame.cleanups + 1] = fn
end

--- In a test: fn() -> text to add to the test's failure message; one per key (the latest).
function M.on_failure(key, fn)
  local t = st.test
  if not t then return end
  if not t.reports[key] then t.order[#t.order + 1] = key end
  t.reports[key] = fn
end

--- The current test's reports, as text ("" when none).
function M.reports()
  local t = st.test
  if not t then return "" end
  local parts = {}
  for _, key in ipairs(t.order) do
    local ok, text = pcall(t.reports[key])
    if not ok then text = "(could not collect: " .. tostring(text) .. ")" end
    if text and text ~= "" then parts[#parts + 1] = text end
  end
  return table.concat(parts, "\n")
end

--- Runs every pending cleanup (outside busted: at the end of a script).
function M.close()
  while #st.frames > 1 do run_cleanups(table.remove(st.frames)) end
  run_cleanups(st.frames[1])
end

return M
