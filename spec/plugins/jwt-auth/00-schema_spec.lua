local helpers = require "spec.helpers"

describe("jwt-auth schema", function()
  it("types each key: unknown fields and the other algorithm's material are refused", function()
    assert.matches("field 'keys.default.kid': unknown field",
                   helpers.conf_error("jwt-auth", { keys = { default = { alg = "HS256", secret = "s", kid = "x" } } }), 1, true)
    assert.matches("field 'keys.default.public_key': only for RS256",
                   helpers.conf_error("jwt-auth", { keys = { default = { alg = "HS256", secret = "s", public_key = "p" } } }), 1, true)
    assert.matches("field 'keys.default.secret': only for HS256",
                   helpers.conf_error("jwt-auth", { keys = { default = { alg = "RS256", public_key = "p", secret = "s" } } }), 1, true)
    assert.matches("field 'keys.default.alg': 'ES256' is not one of: HS256, RS256",
                   helpers.conf_error("jwt-auth", { keys = { default = { alg = "ES256", secret = "s" } } }), 1, true)
    assert.matches("field 'keys.default': expected a table", helpers.conf_error("jwt-auth", { keys = { default = "s" } }), 1, true)
    assert.matches("field 'keys': must not be empty", helpers.conf_error("jwt-auth", { keys = {} }), 1, true)
  end)
end)
