-- WebSocket two ways (docs/websocket.md):
--   /chat   a chat room written in Lua (ctx:websocket): every message a client
--           sends goes to everyone in the room
--   /echo   a WebSocket backend behind the gateway: the handshake goes through
--           key-auth, then the connection is a tunnel to the backend
--
-- Start the backend, then the gateway:
--   /usr/bin/python3 examples/websocket/backend.py 9002 &
--   build/gatewayd -c examples/websocket/gateway.lua
-- Try it with python3-websockets' client:
--   /usr/bin/python3 -m websockets ws://127.0.0.1:8080/chat
--   /usr/bin/python3 -m websockets ws://127.0.0.1:8080/echo   (401: no key)
listen "127.0.0.1:8080"
workers(1)                              -- the room is a Lua table: one per worker
timeouts { tunnel = "5m" }              -- idle tunnels and ws:recv() waits

upstream "echo-backend" {
  targets = { "127.0.0.1:9002" },
  max_concurrency = 1000,               -- open tunnels count: at most 1000 at once
}

route { path = "/echo", upstream = "echo-backend",
        plugins = { ["key-auth"] = { keys = { ["demo-key"] = "demo" } } } } -- send the header apikey: demo-key

local room = {}                         -- ws -> name, for this worker's clients

local function count()
  local n = 0
  for _ in pairs(room) do n = n + 1 end
  return n
end

local function broadcast(text)
  for ws in pairs(room) do
    ws:send_text(text)                  -- queues; yields only for a client far behind
  end
end

route { path = "/chat", handler = function(ctx)
  local ws, err = ctx:websocket{ max_frame = "16k", timeout = 300 }
  if not ws then return 400, err end
  local name = ctx.request.args.name or ("guest-" .. ctx.trace_id:sub(1, 4))
  room[ws] = name
  broadcast(name .. " joined (" .. count() .. " here)")
  while true do
    local data, typ = ws:recv()
    if not data or typ == "close" then break end
    if typ == "text" then broadcast(name .. ": " .. data) end
  end
  room[ws] = nil
  broadcast(name .. " left")
end }
