local helpers = require "spec.helpers"

describe("mock-response schema", function()
  it("refuses a body that would not be sent and headers the gateway owns", function()
    assert.equal("give body or json, not both", helpers.conf_error("mock-response", { body = "a", json = { b = 1 } }))
    assert.matches("field 'status': a 204 response has no body", helpers.conf_error("mock-response", { status = 204, body = "x" }), 1, true)
    assert.matches("field 'json': expected a table", helpers.conf_error("mock-response", { json = "x" }), 1, true)
    assert.matches("the gateway writes Content-Length itself",
                   helpers.conf_error("mock-response", { headers = { ["Content-Length"] = "3" } }), 1, true)
    assert.matches("a header value must not contain CR, LF",
                   helpers.conf_error("mock-response", { headers = { ["X-A"] = "1\r\nX-B: 2" } }), 1, true)
    assert.truthy(helpers.configure("mock-response", { status = 204 }))
  end)
end)
