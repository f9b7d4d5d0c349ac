local helpers = require "spec.helpers"

describe("basic-auth schema", function()
  it("refuses users who could never log in and realms that break the header", function()
    assert.matches("field 'users key': 'a:b'", helpers.conf_error("basic-auth", { users = { ["a:b"] = "x" } }), 1, true)
    assert.matches("field 'users.ada': a sha256: digest is 64 hex digits",
                   helpers.conf_error("basic-auth", { users = { ada = "sha256:abc" } }), 1, true)
    assert.matches("field 'users': must not be empty", helpers.conf_error("basic-auth", { users = {} }), 1, true)
    assert.matches("field 'realm'", helpers.conf_error("basic-auth", { users = { a = "b" }, realm = 'my "realm"' }), 1, true)
    assert.truthy(helpers.configure("basic-auth", { users = { ada = "sha256:" .. ("ab"):rep(32) } }))
  end)
end)
