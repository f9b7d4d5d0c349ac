/*
 * mg_admin — the control side of gatewayd, run by the main thread on its
 * event loop: the admin Unix socket that gatewayctl talks to, the admin HTTP
 * listener (metrics, status), reload, status and stop.
 *
 * Both listeners are event-driven: any number of clients are read and
 * answered at once, without blocking, so no client (one that trickles its
 * request, one that never reads its answer) delays signals, reloads, the
 * watchdog or another client. Each listener takes at most
 * MG_ADMIN_MAX_CONNS connections (more are told so and closed at once); a
 * request must arrive whole within MG_ADMIN_HEAD_TIMEOUT_MS of the
 * connection; an answer is closed when the client reads none of it for
 * MG_ADMIN_SEND_TIMEOUT_S, or has not read it all MG_ADMIN_ANSWER_TIMEOUT_S
 * after it was ready; answers queued on all connections together are kept
 * below MG_ADMIN_MAX_QUEUED bytes (beyond, a client is asked to retry).
 *
 * Admin socket protocol (one exchange per connection): the client sends one
 * line "<command> [args]\n"; the server answers "OK <length>\n" or
 * "ERR <length>\n", then <length> bytes of text, then closes. Commands:
 * status [json], routes [json] (the running configuration's), upstreams
 * [json], reload, check [FILE],
 * reopen-logs, stop [DRAIN_SECONDS]; and one stream: `trace [route=NAME]
 * [status=5xx] [slower=200ms] [limit=N] [json] [recent]` answers "STREAM\n"
 * and then the requests as they end (mg_timeline.h), until the client
 * closes or its limit is reached.
 */
#ifndef MG_ADMIN_H
#define MG_ADMIN_H

#include "mg_worker.h"

#define MG_ADMIN_MAX_CONNS 32           /* per listener */
#define MG_ADMIN_HEAD_TIMEOUT_MS 2000   /* the request line (socket) or head (HTTP), from the connection */
#define MG_ADMIN_SEND_TIMEOUT_S 10      /* no byte of the answer read for this long: closed */
#define MG_ADMIN_ANSWER_TIMEOUT_S 30    /* the answer not read whole this long after it was ready: closed */
#define MG_ADMIN_MAX_QUEUED (64u << 20) /* answer bytes queued on all admin connections */
#define MG_ADMIN_SEMA_LISTED 100        /* semaphores listed one by one besides the config's (mg_admin_status.c) */

typedef struct mg_admin_conn mg_admin_conn_t;

/*
 * A generation's compiled routes as `gatewayctl routes` shows them: taken
 * where the generation was loaded, before any worker runs it, as compact
 * records (moongate.config's route_records; malloc'd, owned by whoever holds
 * the view), and rendered as text or JSON when asked. The admin side answers
 * with the configuration that runs, not the file as it is now, and never
 * touches a worker's VM.
 */
typedef struct mg_routes_view {
    char *records;
    size_t len;
} mg_routes_view_t;

typedef struct mg_admin {
    const char *file;             /* the config file reloads read */
    mg_config_t *cfg;
    mg_worker_t *workers;
    int nworkers;
    double started;               /* wall time */
    uint64_t reloads, reload_failures;
    struct reload *loading;       /* the reload loading now, or NULL (mg_reload.c) */
    uint64_t loading_since_ms;    /* when it was asked for (its first load, if it loads again) */
    uint64_t reload_number;       /* of the last reload started */
    int reload_again;             /* asked for during that load: the next one starts when it ends */
    int closing;                  /* mg_admin_close ran: a load that ends now is dropped */
    char reload_warning[1024];    /* the last reload's changed settings that need a restart ("" when none) */
    mg_routes_view_t routes;      /* what `gatewayctl routes` answers: the running generation's routes */
    int listen_fd;                /* the admin socket, -1 when none */
    int http_fd;                  /* the admin HTTP listener (metrics, status), -1 when none */
    char *socket_path;
    int stop_requested;           /* by `gatewayctl stop`: the loop was broken */
    uint32_t stop_drain_ms;
    /* set by mg_admin_start */
    struct event_base *base;
    struct event *accept_ev[2];   /* the admin socket, admin_listen */
    int nconns[2];
    mg_admin_conn_t *conns;
    int notify_fd;                /* eventfd: a worker finished a rendering */
    struct event *notify_ev;
} mg_admin_t;

/* Binds the admin socket (mode 0600; a stale socket file is replaced). */
int mg_admin_open(mg_admin_t *a, const char *path, char *err, size_t errlen);
/*
 * Binds the admin HTTP listener: GET / (the status page, one self-contained
 * HTML file embedded at build time from src/mg_admin_page.html),
 * GET /status.json (what the page reads: /status plus every worker's
 * figures), GET /metrics (Prometheus text), GET /status (JSON).
 */
int mg_admin_open_http(mg_admin_t *a, const char *addr, char *err, size_t errlen);
/*
 * Serves the opened listeners on base, the main thread's loop, at the given
 * libevent priority. `gatewayctl stop` sets a->stop_requested and breaks the
 * loop.
 */
int mg_admin_start(mg_admin_t *a, struct event_base *base, int priority);
/*
 * Asks for a reload of `a->file` and returns its number. The file is loaded
 * for every worker on background jobs (mg_bgjob.h: idle CPU first, so no
 * request waits behind a load) and validated completely before anything
 * changes; then the generations are published, each worker switching between
 * two of its requests. This thread goes on serving meanwhile. When the reload
 * ended, mg__admin_reloaded is called with its number.
 *
 * One reload loads at a time. Asked for while one loads, a reload is the
 * next one, started when that one ends, so it reads the file as it is then:
 * a change made before the ask is never answered with an older load. All the
 * asks during one load share that next reload.
 *
 * On error nothing changes; the message (file:line) is logged and given to
 * mg__admin_reloaded. On success, settings the file changed that only a
 * restart applies (listen, workers, limits, timeouts but tunnel, http2, log
 * paths, error_header, hosts_file, admin_*) are named in a->reload_warning
 * and logged as a warning. mg_reload.c.
 */
uint64_t mg_admin_reload(mg_admin_t *a);
/*
 * Reload `number` ended (mg_admin.c answers the gatewayctl clients that
 * asked for it): published when err is NULL, gens_before then holding each
 * worker's generation just before; refused otherwise.
 */
void mg__admin_reloaded(mg_admin_t *a, uint64_t number, const char *err, const uint64_t *gens_before);
/* Tracing settings take effect (the sampler, the exporter, the timeline hub): at start and on a reload. */
void mg_admin_apply_tracing(const mg_trace_conf_t *c);
/* Closes the listeners (removing the socket file) and every admin connection; later reloads are dropped. */
void mg_admin_close(mg_admin_t *a);
/* Takes gen's routes into v, replacing what v held: on the thread that loaded gen, before it runs anywhere. */
void mg_routes_view_take(mg_routes_view_t *v, mg_gen_t *gen);
/* Appends the routes as gatewayctl and gatewayd --routes print them: a table with a header line, or JSON. */
void mg_routes_view_text(const mg_routes_view_t *v, mg_text_t *o);
void mg_routes_view_json(const mg_routes_view_t *v, mg_text_t *o);
void mg_routes_view_free(mg_routes_view_t *v);

/* Internal to mg_admin*.c: the answers (mg_admin_status.c). */
void mg__admin_status(mg_admin_t *a, mg_text_t *o, int json);
/* The members of the status JSON object, without its braces (/status.json adds the workers' figures). */
void mg__admin_status_fields(mg_admin_t *a, mg_text_t *o);
void mg__admin_metrics(mg_admin_t *a, mg_text_t *o);
/*
 * The whole exposition in t (the main thread's part and the workers'),
 * rewritten in place: each family's samples together, after its "# HELP" and
 * "# TYPE" lines (once per family, as the Prometheus text format requires);
 * comment lines first.
 */
void mg__admin_metrics_families(mg_text_t *t);

#endif
