/*
 * mg_config — loads a config file into a generation: a Lua VM that ran the
 * config, the router compiled from its route table, and the C settings.
 *
 * A generation is immutable once built. Every worker builds its own from the
 * same file (one VM per worker, nothing shared between threads); the main
 * thread builds one first to validate and to learn the settings, so a broken
 * config is refused before any worker starts.
 */
#ifndef MG_CONFIG_H
#define MG_CONFIG_H

#include <sys/socket.h>

#include "mg_host.h"
#include "mg_http1.h"
#include "mg_lua.h"
#include "mg_redis.h"
#include "mg_router.h"
#include "mg_tls.h"
#include "mg_trace.h"
#include "mg_upstream.h"

#define MG_MAX_LISTEN 16
#define MG_MAX_TLS_CERTS 16          /* per listener */

typedef struct mg_listen_addr {
    char *text;                    /* as written, "0.0.0.0:8080" */
    struct sockaddr_storage ss;
    socklen_t len;
    SSL_CTX *tls;                  /* a TLS listener's context (mg_tls), or NULL */
    int http2;                     /* HTTP/2: ALPN h2 on TLS, the h2c preface on cleartext */
} mg_listen_addr_t;

typedef struct mg_config {
    char *file;
    mg_listen_addr_t listen[MG_MAX_LISTEN];
    int nlisten;
    int workers;                   /* 0: number of cores */
    mg_http1_limits_t limits;
    size_t max_body;
    uint32_t header_timeout_ms, body_timeout_ms, keepalive_timeout_ms;
    uint32_t send_timeout_ms, request_timeout_ms, drain_timeout_ms;
    uint32_t watchdog_ms;          /* a worker away from its loop this long is reported and fenced off */
    uint32_t tls_session_ms;       /* how long a TLS session may be resumed */
    uint32_t h2_max_streams;       /* http2 { max_concurrent_streams }: per connection */
    uint32_t h2_window;            /* http2 { stream_window }: request body bytes a stream may have in flight */
    unsigned char ticket_keys[MG_TLS_TICKET_KEYS_MAX][MG_TLS_TICKET_KEY_LEN]; /* tls_ticket_keys files; [0] encrypts */
    int nticket_keys;              /* 0: generated, rotated keys */
    char *access_log, *error_log;
    char *error_header;            /* e.g. "X-Gateway-Error"; NULL: not sent */
    char *hosts_file;              /* NULL: /etc/hosts */
    char *admin_socket;            /* NULL: /tmp/moongate-gatewayd.sock; "off": none */
    char *admin_listen;            /* "127.0.0.1:9901": metrics and status over HTTP; NULL: none */
    mg_trace_conf_t tracing;       /* tracing { ... } (enabled 0 when not given) */
} mg_config_t;

typedef struct mg_route {
    int handler_ref;               /* the Lua handler */
    int info_ref;                  /* the table exposed as ctx.route */
    char *name;
    uint32_t timeout_ms;           /* 0: the config's request timeout */
    mg_upstream_t *upstream;       /* a proxy route (no handler), or NULL */
    int64_t max_body;              /* -1: limits.max_body; 0: no limit */
    int chain_ref;                 /* the route's plugin chain (moongate.plugins), or LUA_NOREF */
    int chain_filters;             /* the chain has header_filter/body_filter plugins */
    int chain_body_filters;        /* ... body_filter ones: proxied bodies go through Lua chunk by chunk */
    int64_t chain_whole_body;      /* a body_filter wants the whole body: buffer up to this much first */
    int chain_logs;                /* the chain has log plugins */
    char **upgrade;                /* proxy routes: the Upgrade tokens forwarded (lowercase, NULL-ended); NULL: none */
} mg_route_t;

/* Is this Upgrade token (any case) one the route forwards? */
int mg_route_upgrade_ok(const mg_route_t *route, const char *token, size_t n);

typedef struct mg_gen {
    mg_vm_t *vm;
    mg_router_t *router;
    mg_route_t *routes;
    int nroutes;
    mg_upstream_t *upstreams;
    int nupstreams;
    mg_redis_t **redis;            /* the redis "name" { } pools, this worker's (mg_redis); NULL while the config runs */
    int nredis;
    int refs;                      /* requests using it (worker thread only) */
    int loop_stopped;              /* its timers, pools and checks are gone (mg_gen_stop) */
    struct mg_gen *next_retired;   /* replaced by a reload, freed when refs drop to 0 */
    SSL_CTX *tls[MG_MAX_LISTEN];   /* per listener: the TLS context new connections get (a reference) */
    mg_cidr_t *trusted;            /* trusted_proxies: peers whose X-Forwarded-* are believed (reloads with the config) */
    size_t ntrusted;
    uint32_t tunnel_timeout_ms;    /* timeouts.tunnel, for the tunnels and WebSockets upgraded while it is current */
} mg_gen_t;

/*
 * Gives the generation the listeners' TLS contexts (taking references), so
 * certificates reloaded with a generation serve its new connections while
 * older connections keep the context they started with.
 */
void mg_gen_use_tls(mg_gen_t *gen, const mg_config_t *cfg);

/* The generation's upstream with this name, or NULL. */
mg_upstream_t *mg_gen_upstream(mg_gen_t *gen, const char *name);
/* The generation's redis pool with this name, or NULL. */
mg_redis_t *mg_gen_redis(mg_gen_t *gen, const char *name);

/* The registry key of the config table a generation's VM was loaded from (moongate.config's load). */
#define MG_LOADED_CONFIG "moongate.loaded_config"

/*
 * Loads `file` into a new generation running on `base`. When cfg is not NULL
 * the settings are filled in too (and `listen_override`, if set, replaces the
 * listen addresses). Returns NULL with "file:line: message" in err.
 */
mg_gen_t *mg_gen_load(const char *file, struct event_base *base, void *worker, mg_config_t *cfg,
                      char *err, size_t errlen);
void mg_gen_free(mg_gen_t *gen);
/* At exit: every load running or still to come fails soon ("the gateway is stopping"); any thread. */
void mg_gen_load_cancel_all(void);

/*
 * On the generation's loop thread: stops what it runs on the loop (timers,
 * pools, health checks). What is left (the VM, the router) is plain memory
 * that any thread may free: a retired generation goes to the graveyard, and
 * a background job of the main thread's frees it as soon as it is buried
 * (mg_gen_graveyard_fd, main.c, mg_bgjob.h), so
 * neither a worker nor the main thread stalls on a large VM's close. A
 * generation never installed (a refused or superseded reload) has run
 * nothing on its loop: the main thread buries it.
 */
void mg_gen_stop(mg_gen_t *gen);
void mg_gen_bury(mg_gen_t *gen);
/* Whether generations wait in the graveyard; any thread. */
int mg_gen_graveyard_has(void);
/*
 * An eventfd that becomes readable whenever a generation is buried, so the
 * main thread frees it at once rather than on a timer: back-to-back reloads
 * would otherwise pile retired VMs up between ticks. Owned by this module;
 * -1 when no eventfd could be had (then nothing wakes: poll has()).
 */
int mg_gen_graveyard_fd(void);
/* Frees buried generations; any thread (at exit: after the workers stopped). */
void mg_gen_graveyard_empty(void);

/* Parses "host:port", "[v6]:port" or ":port" into addr. */
int mg_parse_listen(const char *text, mg_listen_addr_t *addr, char *err, size_t errlen);
void mg_listen_addr_free(mg_listen_addr_t *addr);

/* Process-wide TLS settings take effect (session lifetime, ticket keys): at start and on a reload, not on a check. */
void mg_config_apply_tls(const mg_config_t *cfg);
void mg_config_free(mg_config_t *cfg);

#endif
