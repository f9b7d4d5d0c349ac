local helpers = require "spec.helpers"

describe("key-auth schema", function()
  it("reads keys_file at load, relative to the config file", function()
    local dir = helpers.tmpdir()
    helpers.write_file(dir .. "/keys.txt", "# comment\n\nk-1\tada\n")
    local conf = assert(helpers.configure("key-auth", { keys_file = "keys.txt" }, { dir = dir }))
    assert.equal(dir .. "/keys.txt", conf.keys_file)
    assert.equal("ada", conf._set["k-1"])
    assert.is_nil(conf._set["# comment"])
    assert.matches("field 'keys_file': cannot read it: " .. dir .. "/missing.txt",
                   helpers.conf_error("key-auth", { keys_file = "missing.txt" }, { dir = dir }), 1, true)
    helpers.write_file(dir .. "/empty.txt", "\n")
    assert.matches("holds no keys", helpers.conf_error("key-auth", { keys_file = "empty.txt" }, { dir = dir }), 1, true)
  end)

  it("reads a keys_file once per load, however many routes name it", function()
    -- 100 routes each naming the same file of 1,000 keys held 100 copies (2.4 MB more RSS in the W2 benchmark)
    local dir = helpers.tmpdir()
    helpers.write_file(dir .. "/keys.txt", "k-1\tada\nk-2\tbob\n")
    local a = assert(helpers.configure("key-auth", { keys_file = "keys.txt" }, { dir = dir }))
    local b = assert(helpers.configure("key-auth", { keys_file = "keys.txt", header = "x-key" }, { dir = dir }))
    assert.is_true(rawequal(a._set, b._set))
    -- keys given next to the file make a set of their own; the shared one is not touched
    local c = assert(helpers.configure("key-auth", { keys_file = "keys.txt", keys = { ["k-3"] = "cy" } }, { dir = dir }))
    assert.equal("cy", c._set["k-3"])
    assert.equal("ada", c._set["k-1"])
    assert.is_nil(a._set["k-3"])
  end)

  it("refuses what would be ignored or could never match", function()
    assert.equal("field 'hide_credentials': cannot hide a key sent in the query; drop query or hide_credentials",
                 helpers.conf_error("key-auth", { keys = { k = "c" }, query = "api_key", hide_credentials = true }))
    assert.matches("field 'header': 'api key' is not a header name", helpers.conf_error("key-auth", { keys = { k = "c" }, header = "api key" }), 1, true)
    assert.matches("field 'keys': must not be empty", helpers.conf_error("key-auth", { keys = {} }), 1, true)
  end)

  it("refuses a missing keys_file in gatewayd -t, naming the line", function()
    local code, err, file = helpers.check_config([[
listen "127.0.0.1:1"
route { path = "/", plugins = { ["key-auth"] = { keys_file = "nope.txt" } }, handler = print }
]])
    assert.equal(1, code)
    assert.matches(file .. ":2: route /: plugin key-auth: field 'keys_file': cannot read it", err, 1, true)
  end)
end)
