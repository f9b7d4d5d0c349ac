-- The worked example of docs/plugins.md: greets the caller in a response
-- header, can refuse, waits without blocking, and logs after the response.
local Greeting = {
  name = "greeting",
  version = "1.0.0",
  priority = 900,
  after = { "key-auth" }, -- greet the consumer key-auth found
}

function Greeting.access(ctx, conf)
  if conf.delay > 0 then gw.sleep(conf.delay) end -- yields: the worker serves others meanwhile
  if ctx.request:header("X-Block") then
    return 403, { error = "blocked" } -- ends the request here
  end
  ctx.vars.greeting = conf.word .. ", " .. (ctx.consumer or "stranger")
end

function Greeting.header_filter(ctx, conf)
  ctx.response.headers["X-Greeting"] = ctx.vars.greeting
end

function Greeting.log(ctx, conf)
  ctx.log("info", "greeted", { status = ctx.response.status, consumer = ctx.consumer })
end

return Greeting
