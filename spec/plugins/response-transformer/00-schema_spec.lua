local helpers = require "spec.helpers"

describe("response-transformer schema", function()
  it("refuses a header in two lists (one would be ignored) and headers the gateway owns", function()
    assert.equal("field 'set.X-A': also in add; give it once",
                 helpers.conf_error("response-transformer", { add = { ["X-A"] = "1" }, set = { ["X-A"] = "2" } }))
    assert.equal("field 'remove[1]': x-a is also in set; give it once",
                 helpers.conf_error("response-transformer", { set = { ["X-A"] = "2" }, remove = { "x-a" } }))
    assert.matches("the gateway writes Date itself", helpers.conf_error("response-transformer", { remove = { "Date" } }), 1, true)
    assert.matches("is not a header name", helpers.conf_error("response-transformer", { add = { ["X:A"] = "1" } }), 1, true)
    assert.equal("give add, set or remove", helpers.conf_error("response-transformer", {}))
  end)
end)
