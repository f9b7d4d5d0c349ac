/*
 * mg_csema — cluster semaphores: concurrency limits shared by every gateway
 * that points at the same Redis (an upstream's max_concurrency and limit-conn
 * with scope = "cluster").
 *
 * A semaphore is a sorted set in Redis (<prefix>sem:<name>); a holder's
 * permits are members scored with their expiry, in Redis time. Acquiring is
 * one script (drop expired members, count, add if it fits), so it is atomic
 * across the fleet. A held lease is renewed every lease/3 while its request
 * runs and removed (ZREM) when the request ends; a gateway that dies stops
 * renewing, and its permits come back when their lease runs out.
 *
 * Waiting (queue mode) polls: a busy answer is retried after 5 ms, doubling
 * to 100 ms (with jitter), until the wait time runs out or the caller goes
 * away. Polling needs nothing from the Redis server (keyspace notifications
 * are off by default and often not allowed on managed Redis), costs a bounded
 * number of commands per waiter, and survives reconnects; its price is up to
 * one back-off of latency after a permit frees and no FIFO order across
 * gateways.
 *
 * Figures (held, waiting, acquired, busy, timed out, lease lost, errors, the
 * last count seen in Redis) are per process, by name, for gatewayctl status
 * and /metrics.
 */
#ifndef MG_CSEMA_H
#define MG_CSEMA_H

#include <lua.h>

#include "mg_error.h"
#include "mg_metrics.h"
#include "mg_redis.h"

typedef struct mg_csema mg_csema_t;
typedef struct mg_clease mg_clease_t;

/* How an acquisition ended (the callback's outcome). */
enum { MG_CLEASE_GRANTED, MG_CLEASE_BUSY, MG_CLEASE_TIMED_OUT, MG_CLEASE_FAILED };

/*
 * The outcome of mg_clease_acquire. FAILED comes with the kind (redis_*) and
 * a message (borrowed: valid during the call, and not after the callee's
 * mg_clease_release). Runs on the pool's loop, never inside
 * mg_clease_acquire. The callee may call mg_clease_release.
 */
typedef void (*mg_clease_cb)(void *arg, int outcome, const mg_error_t *kind, const char *msg);

/*
 * The cluster semaphore `name` in Redis `redis` (the config's name), with a
 * reference (mg_csema_put drops it). A new capacity or lease time applies to
 * new acquisitions. Names prefixed "upstream:" are kept for the process's
 * life; others are forgotten when nothing refers to them.
 */
mg_csema_t *mg_csema_get(const char *name, const char *redis, int64_t capacity, uint32_t lease_ms);
void mg_csema_put(mg_csema_t *s);
const char *mg_csema_name(const mg_csema_t *s);

/*
 * Starts acquiring weight permits of s through pool r: one try when wait_ms
 * is 0, else polling (see above) for at most wait_ms, with at most max_queue
 * waiters in this process (more: BUSY at once). cb follows once. Whatever
 * the outcome, the caller ends the lease with mg_clease_release exactly once:
 * after GRANTED it gives the permits back; before the callback it abandons
 * the acquisition (no callback follows; permits granted in the meantime are
 * given back when the answer comes).
 */
mg_clease_t *mg_clease_acquire(mg_csema_t *s, mg_redis_t *r, int64_t weight, uint32_t wait_ms, int64_t max_queue,
                               mg_clease_cb cb, void *arg);
void mg_clease_release(mg_clease_t *l);

void mg_csema_render_status(mg_text_t *out, int json);
void mg_csema_render_metrics(mg_text_t *out);

/* red:semaphore(name, capacity [, lease_seconds]) for plugins (mg_redis_lua), and its methods. */
int mg_csema_lua_new(lua_State *L);
void mg_csema_register(lua_State *L);
mg_redis_t *mg_redis_lua_check(lua_State *L, int idx);

#endif
