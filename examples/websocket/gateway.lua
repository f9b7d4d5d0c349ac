-- WebSocket two ways (docs/websocket.md; how to run it: README.md here):
--   /chat   a chat room written in Lua (ctx:websocket): every message a client
--           sends goes to everyone in the room, whichever worker serves them
--   /echo   a WebSocket backend behind the gateway: the handshake goes through
--           key-auth, then the connection is a tunnel to the backend
--
-- Where the room lives: not in a Lua table. Each worker runs its own Lua VM,
-- and each reload makes new VMs (a handler keeps the VM it started in), so a
-- table would be one room per worker and per reload: clients that joined
-- before a `gatewayctl reload` would never hear the ones that joined after.
-- The room is a message log in gw.shared.chat, which every worker and every
-- generation of this gateway process shares, and which survives reloads
-- (not a restart). Each client's writer task polls it every 50 ms. For
-- several gateway processes, the log would go to a store they share
-- (gw.redis: INCR and SET the same way), or the room to a backend of its own
-- behind a proxy route like /echo.
listen("127.0.0.1:" .. (os.getenv("PORT") or "8080"))
admin_socket(os.getenv("ADMIN_SOCKET") or "/tmp/moongate-websocket-example.sock")
workers(2)                              -- the room spans them
timeouts { tunnel = "5m" }              -- idle tunnels, and ws:recv()'s default wait
shared_dict("chat", "1m")               -- the room's log: old lines are evicted first

upstream "echo-backend" {
  targets = { os.getenv("BACKEND") or "127.0.0.1:9002" },
  max_concurrency = 1000,               -- open tunnels count: at most 1000 at once
}

-- the key in the apikey header, or (browsers cannot set headers) ?apikey=demo-key
route { path = "/echo", upstream = "echo-backend",
        plugins = { ["key-auth"] = { keys = { ["demo-key"] = "demo" }, query = "apikey" } } }

local POLL = 0.05                       -- seconds between two looks at the log
local KEEP = 60                         -- seconds a line stays in the log

local function post(text)
  local chat = gw.shared.chat
  local n = chat:incr("seq", 1, 0)
  chat:set("line:" .. n, text, KEEP)
end

route { path = "/chat", handler = function(ctx)
  local ws, err = ctx:websocket{ max_frame = "16k", timeout = 300 }
  if not ws then return 400, err end
  local chat = gw.shared.chat
  local name = ctx.request.args.name
  if type(name) ~= "string" then name = "guest-" .. ctx.trace_id:sub(1, 4) end
  local seen = chat:get("seq") or 0     -- from here on: this client's own "joined" line too
  post(name .. " joined (" .. chat:incr("members", 1, 0) .. " here)")
  -- the writer: what anyone posted since `seen`, in order; ends with the handler
  gw.spawn(function()
    while true do
      local last = chat:get("seq") or 0
      while seen < last do
        seen = seen + 1
        local line = chat:get("line:" .. seen) -- nil: expired or evicted, skipped
        if line and not ws:send_text(line) then return end -- queues; yields only for a client far behind
      end
      gw.sleep(POLL)
    end
  end)
  while true do
    local data, typ = ws:recv()
    if not data or typ == "close" then break end
    if typ == "text" then post(name .. ": " .. data) end
  end
  chat:incr("members", -1, 0)
  post(name .. " left")
end }
