-- Included by gateway.lua. Everything in the group lives under /api/v1.
group "/api/v1" {
  routes = {
    route { method = "GET", path = "/health", handler = function() return 200, { status = "ok" } end },
    route { method = { "GET", "POST" }, path = "/files/{rest*}", handler = function(ctx)
      ctx.log("info", "file requested", { file = ctx.params.rest })
      return 200, { file = ctx.params.rest, method = ctx.request.method }
    end },
  },
}
