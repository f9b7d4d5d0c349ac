-- examples/websocket runs as its README says: the chat room is one room
-- across both workers and across a reload, its first line arrives before the
-- client says anything, and /echo takes the key in a header or the query.
local helpers = require "spec.helpers"

local EXAMPLE = os.getenv("PWD") .. "/examples/websocket/"
local PY = "/usr/bin/python3"

describe("examples/websocket", function()
  local procs, port, sock, dir = {}, nil, nil, nil

  local function spawn(argv, out, err)
    local pid = assert(gw.process.spawn(argv, { stdout = out, stderr = err }))
    procs[#procs + 1] = pid
    return pid
  end

  setup(function()
    dir = helpers.tmpdir()
    local backend = helpers.free_port()
    spawn({ PY, EXAMPLE .. "backend.py", tostring(backend) }, "/dev/null", dir .. "/backend.err")
    assert(helpers.wait_port(backend, procs[1], 10), helpers.read_file(dir .. "/backend.err"))
    port = helpers.free_port()
    sock = dir .. "/admin.sock"
    local pid = spawn({ "/usr/bin/env", "PORT=" .. port, "ADMIN_SOCKET=" .. sock, "BACKEND=127.0.0.1:" .. backend,
                        helpers.gatewayd, "-c", EXAMPLE .. "gateway.lua" }, dir .. "/access.log", dir .. "/error.log")
    assert(helpers.wait_port(port, pid, 10), helpers.read_file(dir .. "/error.log"))
  end)
  teardown(function()
    local gateway = procs[2]
    gw.process.kill(gateway, gw.process.SIGTERM)
    local how, code = helpers.wait_exit(gateway, 20)
    for _, pid in ipairs(procs) do gw.process.kill(pid, gw.process.SIGKILL) end
    assert.same({ "exit", 0 }, { how, code }, helpers.read_file(dir .. "/error.log"))
  end)

  local function ctl(...)
    local out = dir .. "/ctl.out"
    local argv = { helpers.gatewayd:gsub("gatewayd$", "gatewayctl"), "-s", sock, ... }
    local pid = assert(gw.process.spawn(argv, { stdout = out, stderr = out .. ".err" }))
    local _, code = helpers.wait_exit(pid, 20)
    return code, helpers.read_file(out) .. helpers.read_file(out .. ".err")
  end

  local function join(name)
    return assert(helpers.websocket.connect(port, "/chat?name=" .. name))
  end

  --- The next lines a client gets, n of them (each within 3 s).
  local function lines(ws, n)
    local got = {}
    for i = 1, n do got[i] = ws:recv(3000) end
    return got
  end

  it("is one chat room across the workers and across a reload", function()
    local alice = join("alice")
    -- the handler's first line comes without alice saying anything
    assert.same({ "alice joined (1 here)" }, lines(alice, 1))
    local bob = join("bob")
    assert.same({ "bob joined (2 here)" }, lines(alice, 1))
    assert.same({ "bob joined (2 here)" }, lines(bob, 1))
    alice:send_text("hi")
    assert.same({ "alice: hi" }, lines(bob, 1))
    assert.same({ "alice: hi" }, lines(alice, 1))
    -- more members until both workers serve some (SO_REUSEPORT spreads connections)
    local others, spread = {}, false
    for i = 1, 30 do
      others[i] = join("guest" .. i)
      local _, out = ctl("status")
      local w0, w1 = out:match("worker 0:.-tunnels open (%d+)"), out:match("worker 1:.-tunnels open (%d+)")
      if tonumber(w0) > 0 and tonumber(w1) > 0 then spread = true break end
    end
    assert.is_true(spread, "all clients went to one worker")
    local n = 2 + #others
    assert.equal(("guest%d joined (%d here)"):format(#others, n), lines(alice, #others)[#others])
    -- a reload makes new VMs for both workers; the room goes on
    local code, out = ctl("reload")
    assert.equal(0, code, out)
    local carol = join("carol")
    n = n + 1
    assert.same({ ("carol joined (%d here)"):format(n) }, lines(alice, 1))
    carol:send_text("hey")
    assert.same({ "carol: hey" }, lines(alice, 1))
    -- the others heard every guest and carol, then carol's line
    assert.equal("carol: hey", lines(bob, #others + 2)[#others + 2])
    assert.equal("carol: hey", lines(others[1], #others + 2)[#others + 2])
    bob:close(1000)
    assert.same({ "bob left" }, lines(alice, 1))
    for _, ws in ipairs(others) do ws:disconnect() end
    carol:disconnect()
    alice:disconnect()
  end)

  it("tunnels /echo with the key in the apikey header or the query, and refuses it without", function()
    local ws = assert(helpers.websocket.connect(port, "/echo", { headers = { apikey = "demo-key" } }))
    ws:send_text("hello")
    assert.same({ "hello", "text" }, { ws:recv(3000) })
    ws:close(1000)
    ws = assert(helpers.websocket.connect(port, "/echo?apikey=demo-key"))
    ws:send_text("from a browser")
    assert.same({ "from a browser", "text" }, { ws:recv(3000) })
    ws:close(1000)
    local no, err = helpers.websocket.connect(port, "/echo")
    assert.is_nil(no)
    assert.equal("status 401", err)
    -- the README's client.py
    local out = dir .. "/client.out"
    local pid = assert(gw.process.spawn({ PY, EXAMPLE .. "client.py", ("ws://127.0.0.1:%d/echo"):format(port),
                                          "--header", "apikey: demo-key", "hello" },
                                        { stdout = out, stderr = out .. ".err" }))
    local _, code = helpers.wait_exit(pid, 20)
    assert.equal(0, code, helpers.read_file(out .. ".err"))
    assert.equal("hello\n", helpers.read_file(out))
  end)
end)
