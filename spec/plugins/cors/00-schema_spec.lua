local helpers = require "spec.helpers"

describe("cors schema", function()
  it("refuses origins that can never match, and bad methods and header names", function()
    assert.matches("field 'origins[1]': 'https://app.example.com/' is not an origin",
                   helpers.conf_error("cors", { origins = { "https://app.example.com/" } }), 1, true)
    assert.matches("field 'origins[1]': 'app.example.com' is not an origin", helpers.conf_error("cors", { origins = { "app.example.com" } }), 1, true)
    assert.matches("field 'origins': must not be empty", helpers.conf_error("cors", { origins = {} }), 1, true)
    assert.matches("field 'methods[1]': 'get' does not match", helpers.conf_error("cors", { methods = { "get" } }), 1, true)
    assert.matches("field 'headers[1]': 'X Bad' is not a header name", helpers.conf_error("cors", { headers = { "X Bad" } }), 1, true)
    assert.truthy(helpers.configure("cors", { origins = { "https://app.example.com:8443", "*" } }))
  end)
end)
