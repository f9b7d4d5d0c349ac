-- examples/grafana/moongate.json: it parses as a dashboard, and every query
-- in it names metrics and labels that a real gateway's /metrics has (a
-- renamed metric must not leave a silently empty panel behind).
local helpers = require "spec.helpers"
local upstream = require "spec.upstream"

local DASHBOARD = os.getenv("PWD") .. "/examples/grafana/moongate.json"

local function http_get(port, path)
  local s = gw.tcp()
  s:settimeout(5000)
  assert(s:connect("127.0.0.1", port))
  s:send("GET " .. path .. " HTTP/1.1\r\nHost: a\r\n\r\n")
  local res = assert(helpers.read_response(s))
  s:close()
  return res
end

-- metric name -> set of its label names, from an exposition
local function exposition(text)
  local metrics = {}
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, 1) ~= "#" then
      local name, rest = line:match("^([%a_:][%w_:]*)(.*)$")
      local labels = metrics[name] or {}
      metrics[name] = labels
      local body = rest:match("^{(.-)} ")
      if body then
        for label in body:gmatch('([%a_][%w_]*)="') do labels[label] = true end
      end
    end
  end
  return metrics
end

-- every query of the dashboard: { expr, legend, where }
local function queries(dash)
  local out = {}
  local function walk(panels)
    for _, p in ipairs(panels or {}) do
      for _, t in ipairs(p.targets or {}) do
        out[#out + 1] = { expr = t.expr, legend = t.legendFormat, where = ("panel %q"):format(p.title) }
      end
      walk(p.panels)
    end
  end
  walk(dash.panels)
  for _, v in ipairs(dash.templating.list) do
    if v.type == "query" then
      out[#out + 1] = { expr = type(v.query) == "table" and v.query.query or v.query, where = "variable " .. v.name }
    end
  end
  return out
end

local PROMQL_WORDS = { by = true, without = true, on = true, ignoring = true, group_left = true, group_right = true,
                       le = true, sum = true, min = true, max = true, rate = true, increase = true,
                       histogram_quantile = true, label_values = true }

describe("the Grafana dashboard", function()
  local dash, metrics

  setup(function()
    local text = helpers.read_file(DASHBOARD)
    assert.truthy(text ~= "", "cannot read " .. DASHBOARD)
    dash = gw.json.decode(text)
    local up = upstream.start(function() return 200, {}, "ok" end)
    local admin, dead = helpers.free_port(), helpers.free_port()
    local g = helpers.start(([[
      admin_listen "127.0.0.1:%d"
      upstream "orders" { targets = { "127.0.0.1:%d" }, max_concurrency = 4 }
      upstream "broken" { targets = { "127.0.0.1:%d" } }
      route { path = "/ok", handler = function() return 200, "ok" end }
      route { path = "/boom", handler = function() error("kaboom") end }
      route { path = "/api", upstream = "orders" }
      route { path = "/broken", upstream = "broken" }
    ]]):format(admin, up.port, dead))
    for _, path in ipairs({ "/ok", "/boom", "/api", "/broken", "/nope" }) do g:request("GET", path) end
    metrics = exposition(http_get(admin, "/metrics").body)
    g:stop()
    up:stop()
  end)

  it("is a dashboard with a Prometheus datasource input and unique panel ids", function()
    assert.equal("Moongate", dash.title)
    assert.equal("DS_PROMETHEUS", dash.__inputs[1].name)
    assert.equal("prometheus", dash.__inputs[1].pluginId)
    local ids, n = {}, 0
    for _, p in ipairs(dash.panels) do
      assert.falsy(ids[p.id], "panel id used twice: " .. tostring(p.id))
      ids[p.id] = true
      assert.truthy(p.gridPos and p.gridPos.w and p.gridPos.h, p.title)
      if p.type ~= "row" then
        n = n + 1
        assert.equal("${datasource}", p.datasource.uid, p.title)
        assert.truthy(#p.targets > 0, p.title)
      end
    end
    assert.truthy(n >= 20, n)
  end)

  it("names only metrics and labels a real /metrics has, and takes rates of counters only", function()
    assert.truthy(metrics.moongate_requests_total, "the gateway's /metrics was empty")
    local seen = {}
    for _, q in ipairs(queries(dash)) do
      local names = {}
      for name in q.expr:gmatch("moongate_[%w_]+") do
        assert.truthy(metrics[name], ("%s: %s is not in /metrics"):format(q.where, name))
        names[#names + 1] = name
        seen[name] = true
      end
      assert.truthy(#names > 0, q.where .. ": no moongate metric in " .. q.expr)
      local function has_label(label)
        for _, name in ipairs(names) do
          if metrics[name][label] then return true end
        end
      end
      -- labels grouped by, matched on, or shown in the legend
      for list in q.expr:gmatch("by%s*%(([^)]*)%)") do
        for label in list:gmatch("[%a_][%w_]*") do
          assert.truthy(has_label(label), ("%s: no metric of %q has the label %s"):format(q.where, q.expr, label))
        end
      end
      for label in q.expr:gmatch("([%a_][%w_]*)%s*=~?%s*\"") do
        assert.truthy(has_label(label), ("%s: no metric of %q has the label %s"):format(q.where, q.expr, label))
      end
      for label in (q.legend or ""):gmatch("{{%s*([%a_][%w_]*)%s*}}") do
        assert.truthy(has_label(label), ("%s: the legend shows %s, which %q does not have"):format(q.where, label, q.expr))
      end
      local lv_metric, lv_label = q.expr:match("label_values%(%s*([%w_]+)%s*,%s*([%w_]+)%s*%)")
      if lv_metric then assert.truthy(metrics[lv_metric][lv_label], q.where) end
      -- rate() and increase() of a gauge are a classic mistake: only counters and histogram series
      for fn, inner in q.expr:gmatch("(%a+)%(([^%(%)]-)%[") do
        if fn == "rate" or fn == "increase" then
          local name = inner:match("moongate_[%w_]+")
          assert.truthy(name and (name:match("_total$") or name:match("_bucket$") or name:match("_sum$")
                                  or name:match("_count$")),
                        ("%s: %s() of %s, which is not a counter"):format(q.where, fn, tostring(name)))
        end
      end
      for word in q.expr:gsub('"[^"]*"', ""):gsub("%[[^%]]*%]", ""):gmatch("[%a_][%w_]*") do
        assert.truthy(PROMQL_WORDS[word] or word:match("^moongate_") or has_label(word),
                      ("%s: unexpected word %s in %q"):format(q.where, word, q.expr))
      end
    end
    -- the dashboard covers every family of the table in docs/operations.md that a gateway always exposes
    for _, name in ipairs({ "moongate_requests_total", "moongate_request_duration_seconds_bucket",
                            "moongate_request_errors_total", "moongate_upstream_requests_total",
                            "moongate_upstream_errors_total", "moongate_upstream_ttfb_seconds_bucket",
                            "moongate_upstream_target_healthy", "moongate_upstream_pool_idle",
                            "moongate_upstream_inflight", "moongate_semaphore_in_use", "moongate_semaphore_queued",
                            "moongate_worker_stuck", "moongate_worker_connections", "moongate_reloads_total",
                            "moongate_log_lines_dropped_total" }) do
      assert.truthy(seen[name], "no panel shows " .. name)
    end
  end)
end)
