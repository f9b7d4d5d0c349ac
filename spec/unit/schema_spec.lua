-- moongate.schema: nothing a plugin conf gives is ignored.
local schema = require "moongate.schema"

local function v(fields, conf, env, check)
  return schema.validate({ fields = fields, check = check }, conf, env)
end

describe("schema", function()
  it("refuses unknown fields at every depth, naming the known ones", function()
    local fields = {
      outer = { type = "record", fields = {
        inner = { type = "record", fields = { a = { type = "string" } } },
        list = { type = "array", elements = { type = "record", fields = { b = { type = "integer" } } } },
        map = { type = "map", keys = { type = "string" }, values = { type = "record", fields = { c = { type = "boolean" } } } },
      } },
    }
    assert.equal("field 'outer.inner.x': unknown field (known: a)", select(2, v(fields, { outer = { inner = { x = 1 } } })))
    assert.equal("field 'outer.list[2].y': unknown field (known: b)",
                 select(2, v(fields, { outer = { list = { { b = 1 }, { y = 2 } } } })))
    assert.equal("field 'outer.map.k.z': unknown field (known: c)", select(2, v(fields, { outer = { map = { k = { z = true } } } })))
    assert.equal("field 'top': unknown field (known: outer)", select(2, v(fields, { top = 1 })))
  end)

  it("refuses a schema with untyped or misspelt parts (an author's typo is an error too)", function()
    local bad = {
      { { a = { type = "array" } }, "schema field 'a': an array needs elements" },
      { { a = { type = "map", keys = { type = "string" } } }, "schema field 'a': a map needs keys" },
      { { a = { type = "record" } }, "schema field 'a': a record needs fields" },
      { { a = { type = "strng" } }, "schema field 'a': type must be one of" },
      { { a = { type = "string", defualt = "x" } }, "schema field 'a': unknown attribute 'defualt'" },
      { { a = { type = "integer", default = 1.5 } }, "schema default: field 'a': expected an integer" },
      { { a = { type = "record", fields = { b = { type = "array", elements = { type = "nope" } } } } },
        "schema field 'a.b[]': type must be one of" },
    }
    for _, case in ipairs(bad) do
      local ok, err = schema.check_schema({ fields = case[1] })
      assert.is_nil(ok)
      assert.matches(case[2], err, 1, true)
    end
    assert.matches("schema: unknown key 'feilds'", select(2, schema.check_schema({ feilds = {} })), 1, true)
    assert.is_true(schema.check_schema({ fields = { a = { type = "map", keys = { type = "header_name" },
                                                          values = { type = "any" } } } }))
  end)

  it("checks header names and values, and header maps case-insensitively", function()
    local f = { h = { type = "map", keys = { type = "header_name", direction = "response" }, values = { type = "header_value" } } }
    assert.equal("field 'h key': 'X Bad' is not a header name", select(2, v(f, { h = { ["X Bad"] = "1" } })))
    assert.matches("field 'h.X-A': a header value must not contain CR, LF", select(2, v(f, { h = { ["X-A"] = "a\r\nb" } })), 1, true)
    assert.matches("field 'h key': the gateway writes Content-Length itself", select(2, v(f, { h = { ["Content-Length"] = "1" } })), 1, true)
    assert.matches("are the same header", select(2, v(f, { h = { ["X-A"] = "1", ["x-a"] = "2" } })), 1, true)
    assert.same({ h = { ["X-A"] = "1" } }, v(f, { h = { ["X-A"] = "1" } }))
  end)

  it("refuses NaN and infinities", function()
    local f = { n = { type = "number" } }
    assert.equal("field 'n': expected a finite number", select(2, v(f, { n = 0 / 0 })))
    assert.equal("field 'n': expected a finite number", select(2, v(f, { n = math.huge })))
  end)

  it("compiles key fields, defaults included", function()
    local f = { key = { type = "key", default = "ip" } }
    local conf = assert(v(f, {}))
    assert.equal("ip", conf.key.spec)
    assert.is_function(conf.key.resolve)
    assert.matches("field 'key': 'consumr' is not a key", select(2, v(f, { key = "consumr" })), 1, true)
  end)

  it("checks upstream fields against the config's upstreams", function()
    local f = { upstream = { type = "upstream" } }
    local env = { upstreams = { orders = true, users = true } }
    assert.same({ upstream = "orders" }, v(f, { upstream = "orders" }, env))
    assert.equal("field 'upstream': no upstream named 'order' (declared: orders, users)",
                 select(2, v(f, { upstream = "order" }, env)))
    assert.equal("field 'upstream': no upstream named 'x' (declared: none)", select(2, v(f, { upstream = "x" }, { upstreams = {} })))
  end)

  it("checks redis fields against the config's redis blocks", function()
    local f = { redis = { type = "redis" } }
    local env = { redis = { main = true, cache = true } }
    assert.same({ redis = "main" }, v(f, { redis = "main" }, env))
    assert.equal("field 'redis': no redis named 'mian' (declared: cache, main)", select(2, v(f, { redis = "mian" }, env)))
    assert.equal("field 'redis': expected the name of a redis block, got number", select(2, v(f, { redis = 1 }, env)))
  end)

  it("takes relative file fields from the config's directory", function()
    local f = { file = { type = "file" } }
    assert.same({ file = "/etc/gw/keys.txt" }, v(f, { file = "keys.txt" }, { dir = "/etc/gw" }))
    assert.same({ file = "/abs.txt" }, v(f, { file = "/abs.txt" }, { dir = "/etc/gw" }))
  end)

  it("tells check which fields were given (not defaulted)", function()
    local seen
    v({ a = { type = "integer", default = 1 }, b = { type = "integer", default = 2 } }, { b = 5 }, nil,
      function(_, given) seen = given; return true end)
    assert.same({ b = true }, seen)
  end)
end)
