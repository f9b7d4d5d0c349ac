local helpers = require "spec.helpers"

describe("request-id schema", function()
  it("refuses echo with the core's own header (it would change nothing) and gateway-owned names", function()
    assert.equal("field 'echo': only used with another header than X-Request-ID", helpers.conf_error("request-id", { echo = false }))
    assert.matches("the gateway writes Content-Length itself", helpers.conf_error("request-id", { header = "Content-Length" }), 1, true)
    assert.matches("is not a header name", helpers.conf_error("request-id", { header = "X Corr" }), 1, true)
    assert.truthy(helpers.configure("request-id", { header = "X-Correlation-ID", echo = false }))
  end)
end)
