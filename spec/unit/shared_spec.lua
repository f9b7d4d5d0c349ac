-- gw.shared inside the runtime: values, TTLs, atomic counters, the memory
-- bound with LRU eviction, and the token bucket.
describe("gw.shared", function()
  setup(function()
    gw._define_shared("spec_dict", 64 * 1024)
    gw._define_shared("spec_small", 2048)
  end)

  it("stores strings, numbers and booleans; add/replace/delete", function()
    local d = gw.shared.spec_dict
    d:flush_all()
    assert.is_true(d:set("s", "text"))
    assert.is_true(d:set("n", 42.5))
    assert.is_true(d:set("b", false))
    assert.equal("text", d:get("s"))
    assert.equal(42.5, d:get("n"))
    assert.equal(false, d:get("b"))
    assert.same({ nil, "exists" }, { d:add("s", "again") })
    assert.same({ nil, "not found" }, { d:replace("missing", 1) })
    assert.is_true(d:replace("s", "new"))
    assert.equal("new", d:get("s"))
    assert.is_true(d:delete("s"))
    assert.is_nil(d:get("s"))
    assert.has_error(function() d:set("t", {}) end)
  end)

  it("expires entries after their TTL", function()
    local d = gw.shared.spec_dict
    d:set("short", 1, 0.05)
    assert.equal(1, d:get("short"))
    assert.is_true(d:ttl("short") <= 0.05)
    gw.sleep(0.08)
    assert.is_nil(d:get("short"))
  end)

  it("increments atomically, with an initial value", function()
    local d = gw.shared.spec_dict
    d:delete("c")
    assert.same({ nil, "not found" }, { d:incr("c", 1) })
    assert.equal(11, d:incr("c", 1, 10))
    assert.equal(16, d:incr("c", 5))
    d:set("str", "x")
    assert.same({ nil, "not a number" }, { d:incr("str", 1) })
  end)

  it("stays within its size by evicting the least recently used", function()
    local d = gw.shared.spec_small
    for i = 1, 100 do assert.is_true(d:set("k" .. i, ("v"):rep(20))) end
    local st = d:stats()
    assert.is_true(st.used <= st.capacity)
    assert.is_true(st.evictions > 0)
    assert.equal("vvvvvvvvvvvvvvvvvvvv", d:get("k100")) -- the newest survive
    assert.is_nil(d:get("k1"))
    assert.same({ nil, "no memory" }, { d:set("huge", ("x"):rep(4096)) })
  end)

  it("runs a token bucket", function()
    local d = gw.shared.spec_dict
    local allowed = 0
    for _ = 1, 10 do if d:token_bucket("tb", 10, 3) then allowed = allowed + 1 end end
    assert.equal(3, allowed) -- the burst
    local ok, _, retry = d:token_bucket("tb", 10, 3)
    assert.is_false(ok)
    assert.is_true(retry > 0 and retry <= 0.1)
    gw.sleep(0.12)
    assert.is_true((d:token_bucket("tb", 10, 3)))
  end)

  it("names an undeclared dict in its error", function()
    assert.has_error(function() return gw.shared.nope end,
      'gw.shared.nope: no such dict (declare it: shared_dict("nope", "1m"))')
  end)
end)
