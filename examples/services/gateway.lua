-- Two services behind their own limits (docs/limits.md): the rare, expensive
-- order-service cannot take the user-service down with it, and the other way
-- round. Start stand-in services first, e.g.:
--   python3 -m http.server 9001 --bind 127.0.0.1 & python3 -m http.server 9002 --bind 127.0.0.1 &
listen "127.0.0.1:8080"
error_header "X-Gateway-Error" -- development: show error kinds

-- Many cheap requests: queue briefly rather than fail a burst.
upstream "user-service" {
  targets = { "127.0.0.1:9001" },
  max_concurrency = 20,
  on_busy = { queue = 100, queue_timeout = "200ms" },
  timeouts = { connect = "200ms", read = "800ms" },
}

-- Few expensive requests: refuse at once when full, the client retries later.
upstream "order-service" {
  targets = { "127.0.0.1:9002" },
  max_concurrency = 10,
  on_busy = "reject",
  timeouts = { connect = "200ms", read = "5s" },
}

route { path = "/users/{rest*}", upstream = "user-service", timeout = "1s" }
route { path = "/orders/{rest*}", upstream = "order-service", timeout = "6s" }

-- A per-client limit on top, on the same semaphores (a report costs 3 permits).
route { path = "/orders/report/{id}", upstream = "order-service", timeout = "6s",
        plugins = { ["limit-conn"] = { max = 6, key = "ip", weight = 3 } } }

-- What the semaphores look like right now.
route { method = "GET", path = "/_limits", handler = function() return 200, gw.semaphores() end }
