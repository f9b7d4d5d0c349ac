/*
 * mg_redis — a named Redis from the config (`redis "main" { ... }`) on one
 * worker: its connections (hiredis async contexts on the worker's event
 * loop, attached with redisLibeventAttach), commands sent without ever
 * blocking, replies delivered through callbacks, and the figures every
 * worker shares (connections, errors by kind, command latency, fallbacks).
 *
 * Connections are shared, not leased. Redis answers each connection's
 * commands in order and hiredis matches replies to callbacks in that order,
 * so every request of a worker sends its commands on the worker's
 * connection(s) (pool.size, default 1; a command goes to the one with the
 * fewest replies pending). Commands sent in the same loop pass leave in one
 * write and their replies come back in one read: under load the cost of a
 * round trip is shared by the requests of that pass. The price: commands that
 * change the connection's state for everyone (SELECT, AUTH, SUBSCRIBE,
 * blocking pops, WATCH, a MULTI not closed in the same pipeline) are refused
 * (mg_redis_refuse).
 *
 * Lifetime: a pool belongs to a generation (mg_config), like an upstream's
 * keep-alive pool: the config it was built from is the generation's, and a
 * reload connects afresh. A pool connects lazily, on its first command.
 * mg_redis_stop (the generation's loop work ends) closes idle connections and
 * lets the ones with replies pending finish first (a lease release sent by
 * the last request still goes out); mg_redis_loop_end closes what is left
 * when the worker's loop ends. The pool object is reference-counted: its
 * connections and cluster leases (mg_csema) keep it until they are gone.
 *
 * Failures: a connection that fails (refused, reset, EOF, a reply that does
 * not come within timeouts.command, a connect that does not finish within
 * timeouts.connect) is closed and every command pending on it fails with the
 * kind (mg_error.h: redis_refused, redis_timeout, redis_reset, redis_auth);
 * an error reply is redis_error for that command only. The next command
 * opens a new connection. After a failed connect, a timeout, a refused
 * AUTH/SELECT, a protocol error or a connection lost before any reply, the
 * pool is failing: commands fail at once with the last error (except on a
 * connection that has answered since), and after a back-off (10 ms, doubling
 * to 500 ms while it keeps failing) a probe connection of the pool's own
 * (PING, or AUTH/SELECT) checks whether Redis answers; no request waits on
 * it. Only a real reply ends the failure: the kernel completes a TCP
 * handshake for a frozen Redis. So a dead or hung Redis costs neither a
 * connect nor a timeout per request. A connection that had answered and is
 * closed (a Redis restart) reconnects at once, without a back-off.
 */
#ifndef MG_REDIS_H
#define MG_REDIS_H

#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "mg_core.h"
#include "mg_error.h"
#include "mg_metrics.h"

#define MG_REDIS_MAX_POOL 64

/* A redis "name" { ... } block, as mg_config reads it (strings owned by the conf). */
typedef struct mg_redis_conf {
    char *name;
    char *where;                   /* "file:line" of the block */
    char *address;                 /* as written: "10.0.0.5:6379", "redis.internal:6379", "unix:/run/redis.sock" */
    char *host;                    /* the resolved IP (at load), or NULL for a unix socket */
    int port;
    char *unix_path;
    char *username, *password;     /* AUTH [username] password on every new connection; NULL: none */
    int db;                        /* SELECT db on every new connection unless 0 */
    int size;                      /* connections per worker */
    uint32_t connect_ms, command_ms;
    int nodes;                     /* gateways in the fleet: on_redis_error = "local" divides limits by it */
    char *prefix;                  /* of every key the gateway itself uses (limits, leases) */
} mg_redis_conf_t;

void mg_redis_conf_free(mg_redis_conf_t *c);
/*
 * Fills c->host/port (a host name is resolved now, with getaddrinfo: call it
 * at config load, never on a worker's loop) or c->unix_path from "host:port",
 * "[v6]:port" or "unix:/path". MG_ERROR with a message in err.
 */
int mg_redis_parse_address(mg_redis_conf_t *c, const char *address, char *err, size_t errlen);

typedef struct mg_redis mg_redis_t;
typedef struct mg_rcall mg_rcall_t;

/* A script: EVALSHA, with EVAL when Redis does not know it (NOSCRIPT). Immutable; lives as long as its creator keeps it. */
typedef struct mg_redis_script {
    char sha[41];
    char *src;
    size_t len;
} mg_redis_script_t;

/* Makes a script (computes its SHA1). */
mg_redis_script_t *mg_redis_script_new(const char *src, size_t len);
void mg_redis_script_free(mg_redis_script_t *s);

/*
 * One command of a call. argv/argvlen are borrowed for the duration of
 * mg_redis_send only. With `script`, the command is EVALSHA script->sha
 * followed by argv (numkeys, keys..., args...); the arguments are copied so
 * that it can be sent again as EVAL after a NOSCRIPT reply.
 */
typedef struct mg_rcmd {
    const mg_redis_script_t *script;
    int argc;
    const char **argv;
    const size_t *argvlen;
} mg_rcmd_t;

/*
 * The reply to command i of call c: reply (borrowed: valid during the call
 * only) or, when the command failed, reply NULL with the kind and a message
 * (borrowed). An error reply is a reply (type REDIS_REPLY_ERROR); the caller
 * decides what it means. Replies of one call may come in any order (a script
 * resent after NOSCRIPT comes last). Runs on the pool's loop, never inside
 * mg_redis_send.
 */
typedef void (*mg_rcall_reply_cb)(mg_rcall_t *c, int i, const redisReply *reply, const mg_error_t *kind,
                                  const char *msg);
/* Every command of c has its reply: no callback follows; c is freed after this returns. */
typedef void (*mg_rcall_done_cb)(mg_rcall_t *c);

struct mg_rcall {
    void *data;                    /* the caller's */
    int n;                         /* commands */
    /* private */
    int left;                      /* replies still to deliver */
    int abandoned;                 /* the caller went away: replies are discarded */
    mg_rcall_reply_cb on_reply;
    mg_rcall_done_cb on_done;
    struct mg_rconn *conn;
    struct mg_rslot *slots;
};

/* A pool for conf (copied) on base. The caller holds the first reference. */
mg_redis_t *mg_redis_new(const mg_redis_conf_t *conf, struct event_base *base);
/* The loop work ends (see the file comment); commands are refused from now on. Loop thread. */
void mg_redis_stop(mg_redis_t *r);
/* Drops a reference (any thread); the last one frees the pool. */
void mg_redis_unref(mg_redis_t *r);
void mg_redis_ref(mg_redis_t *r);
/* Closes what stopped pools on base left finishing (the loop will not run again). */
void mg_redis_loop_end(struct event_base *base);

const mg_redis_conf_t *mg_redis_conf(const mg_redis_t *r);
struct event_base *mg_redis_base(const mg_redis_t *r);

/*
 * Sends n commands on one connection, in order, in one write. Returns the
 * call (its callbacks follow, on the loop), or NULL when nothing was sent:
 * then *kind and msg (at least 160 bytes) say why (not connected and waiting
 * before the next attempt, the pool is stopped). on_reply and on_done may be
 * NULL (fire and forget).
 */
mg_rcall_t *mg_redis_send(mg_redis_t *r, const mg_rcmd_t *cmds, int n, mg_rcall_reply_cb on_reply,
                          mg_rcall_done_cb on_done, void *data, const mg_error_t **kind, char *msg);
/* The caller goes away: no callback follows; the replies are discarded when they arrive. */
void mg_rcall_abandon(mg_rcall_t *c);

/*
 * NULL when a command may be sent on a shared connection, else why not
 * (argv0 is the command name; in_pipeline: it is part of a pipeline, where
 * MULTI ... EXEC is allowed).
 */
const char *mg_redis_refuse(const char *argv0, size_t len, int in_pipeline);

/* The kind an error reply stands for: redis_auth for NOAUTH / WRONGPASS, else redis_error. */
const mg_error_t *mg_redis_reply_kind(const redisReply *reply);

/*
 * A limit could not use Redis and applied its failure policy ("allow",
 * "deny", "local"): counted by (limit, policy, kind) and logged at most once
 * per 10 s per limit and policy, with the kind and how often it happened.
 */
void mg_redis_fallback(mg_redis_t *r, const char *limit, const char *policy, const mg_error_t *kind,
                       const char *msg);

/* Figures of every named Redis of the process: for gatewayctl status (text or JSON) and /metrics. */
void mg_redis_render_status(mg_text_t *out, int json);
void mg_redis_render_metrics(mg_text_t *out);

/* Internal, between mg_redis.c and mg_redis_stats.c (the figures of one name). */
typedef struct mg_rstats mg_rstats_t;
enum { MG__RGAUGE_IDLE, MG__RGAUGE_ACTIVE, MG__RGAUGE_CONNECTING };
mg_rstats_t *mg__rstats_get(const mg_redis_conf_t *c);
mg_rstats_t *mg__redis_stats(const mg_redis_t *r);
void mg__rstats_gauge(mg_rstats_t *s, int from, int to); /* MG__RGAUGE_*, -1: none */
void mg__rstats_reply(mg_rstats_t *s, uint64_t us);
void mg__rstats_error(mg_rstats_t *s, const mg_error_t *kind, uint64_t n);
/* pools: a worker's pool of the name starts (+1) or stops (-1); failing: one begins (+1) or ends (-1) to back off. */
void mg__rstats_pools(mg_rstats_t *s, int pools, int failing);
/* A connection failure that made a pool back off (the status shows the last one). */
void mg__rstats_failure(mg_rstats_t *s, const mg_error_t *kind, const char *msg);
/* A connection-level failure: logged at most once per 10 s per kind. */
void mg__rstats_log(mg_rstats_t *s, const mg_error_t *kind, const char *msg);

#endif
