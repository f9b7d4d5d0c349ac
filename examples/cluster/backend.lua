-- examples/cluster: the slow backend behind the fleet (a report takes 1 s).
listen("127.0.0.1:" .. (os.getenv("PORT") or "9101"))
workers(1)
access_log "off"
admin_socket(os.getenv("ADMIN_SOCKET") or "/tmp/moongate-cluster-backend.sock")
route { path = "/reports/{id}", handler = function(ctx)
  gw.sleep(tonumber(ctx.request.args.ms or 1000) / 1000)
  return 200, { report = ctx.params.id }
end }
