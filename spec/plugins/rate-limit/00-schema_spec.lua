local helpers = require "spec.helpers"

describe("rate-limit schema", function()
  it("refuses bad keys, rates, bursts and dict names", function()
    assert.matches("field 'key': 'header-X-User' is not a key", helpers.conf_error("rate-limit", { rate = 1, key = "header-X-User" }), 1, true)
    assert.matches("field 'rate': 0 is not between", helpers.conf_error("rate-limit", { rate = 0 }), 1, true)
    assert.matches("field 'burst': 0.5 is not between", helpers.conf_error("rate-limit", { rate = 1, burst = 0.5 }), 1, true)
    assert.matches("field 'dict': 'my dict' does not match", helpers.conf_error("rate-limit", { rate = 1, dict = "my dict" }), 1, true)
    local conf = assert(helpers.configure("rate-limit", { rate = 0.5 }))
    assert.equal(1, conf.burst)
    assert.equal("ip", conf.key.spec)
  end)
end)
