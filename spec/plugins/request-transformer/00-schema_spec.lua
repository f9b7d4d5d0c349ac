local helpers = require "spec.helpers"

describe("request-transformer schema", function()
  it("refuses headers it cannot set, unknown variables and a header both set and removed", function()
    assert.matches("field 'set key': the gateway writes Host itself",
                   helpers.conf_error("request-transformer", { set = { Host = "x" } }), 1, true)
    assert.matches("field 'remove[1]': the gateway writes X-Request-ID itself",
                   helpers.conf_error("request-transformer", { remove = { "X-Request-ID" } }), 1, true)
    assert.matches("field 'set.X-Forwarded-For': the gateway appends the client address itself",
                   helpers.conf_error("request-transformer", { set = { ["X-Forwarded-For"] = "1.2.3.4" } }), 1, true)
    assert.equal("field 'set.X-Corr': unknown variable $traceid (known: $trace_id, $consumer; $$ for a $)",
                 helpers.conf_error("request-transformer", { set = { ["X-Corr"] = "id-$traceid" } }))
    assert.equal("field 'remove[1]': x-a is also in set, which replaces it anyway",
                 helpers.conf_error("request-transformer", { set = { ["X-A"] = "1" }, remove = { "x-a" } }))
    assert.matches("are the same header", helpers.conf_error("request-transformer", { set = { ["X-A"] = "1", ["x-a"] = "2" } }), 1, true)
    assert.equal("give set or remove", helpers.conf_error("request-transformer", {}))
  end)

  it("expands variables from a value compiled at load", function()
    local plugins = require "moongate.plugins"
    local p = assert(plugins.load("request-transformer"))
    local conf = assert(plugins.configure(p, { set = { ["X-A"] = "$$5 for $consumer ($trace_id)", ["X-B"] = "plain" } }))
    local sent = {}
    local ctx = { trace_id = "t1", consumer = "ada",
                  request = { clear_header = function() end, set_header = function(_, k, v) sent[k] = v end } }
    p.access(ctx, conf)
    assert.same({ ["X-A"] = "$5 for ada (t1)", ["X-B"] = "plain" }, sent)
  end)
end)
