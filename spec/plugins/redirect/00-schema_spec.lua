local helpers = require "spec.helpers"

describe("redirect schema", function()
  it("refuses fields that only matter together, and unknown placeholders", function()
    assert.equal("give to or https = true, not both", helpers.conf_error("redirect", { to = "/x", https = true }))
    assert.equal("field 'https_port': only used with https = true", helpers.conf_error("redirect", { to = "/x", https_port = 8443 }))
    assert.equal("field 'to': unknown placeholder {paht} (known: {path}, {query}, {host})",
                 helpers.conf_error("redirect", { to = "/new{paht}" }))
    assert.matches("field 'to': a header value must not contain CR", helpers.conf_error("redirect", { to = "/x\r\nSet-Cookie: a=b" }), 1, true)
    assert.equal("field 'host': only used with https = true or {host} in to",
                 helpers.conf_error("redirect", { to = "/x", host = "api.example" }))
    assert.truthy(helpers.configure("redirect", { https = true, https_port = 8443 }))
    assert.truthy(helpers.configure("redirect", { to = "https://{host}/x", host = "api.example" }))
  end)
end)
