/*
 * mg_metrics — per-worker request figures (by route and by upstream), written
 * only by the worker's own thread and rendered by it, as Prometheus text or
 * as JSON for the status page, when the main thread asks (so no locks on the
 * request path and no torn reads). Series are keyed by name, so they survive
 * reloads.
 *
 * Errors are counted by kind per route and per upstream, and the last
 * request that ended with each kind is kept (time, route, status, trace id):
 * one slot per kind, so a flood of one kind (404 scans: no_route) cannot push
 * out the last lua_error.
 */
#ifndef MG_METRICS_H
#define MG_METRICS_H

#include "mg_core.h"
#include "mg_error.h"

#define MG_METRICS_BUCKETS 10
#define MG_METRICS_GRPC_CODES 17          /* gRPC status codes 0..16 */

typedef struct mg_series {
    char *name;
    int is_upstream;
    uint64_t by_class[6];                 /* 1xx..5xx, then other */
    uint64_t hist[MG_METRICS_BUCKETS + 1]; /* latency buckets, +Inf last */
    double sum_s;
    uint64_t errors[MG_ERR__COUNT];       /* by error kind (mg_error.h) */
    uint64_t grpc[MG_METRICS_GRPC_CODES + 1]; /* gRPC calls by the status the caller got; the last: codes above 16 */
    /* upgraded connections (tunnels, WebSocket endpoints) of this route or upstream */
    int64_t tunnels_open;
    uint64_t tunnels_total;
    uint64_t tunnel_bytes[2];             /* [0] from the client, [1] to the client (at the tunnel's end) */
    struct mg_series *next;
} mg_series_t;

/* The last request that ended with one error kind. */
typedef struct mg_last_error {
    double time;                          /* wall clock (s); 0: never */
    int status;
    char route[256];                      /* "(none)" when unrouted; cut at 255 bytes */
    char upstream[128];                   /* "" for none */
    char trace_id[129];
} mg_last_error_t;

typedef struct mg_metrics {
    mg_series_t *buckets[256];
    mg_last_error_t last[MG_ERR__COUNT];  /* by error kind */
} mg_metrics_t;

/*
 * Records one ended request. upstream, ttfb_s, error and trace_id may be
 * NULL/0. The strings are copied (the series keep the names; the last error
 * of a kind keeps route, upstream and trace id, cut to their slots).
 */
void mg_metrics_record(mg_metrics_t *m, const char *route, int status, double seconds, const char *upstream,
                       double ttfb_s, const mg_error_t *error, const char *trace_id);

/* One gRPC call of a route ended with this gRPC status (the caller's, whoever chose it). */
void mg_metrics_grpc(mg_metrics_t *m, const char *route, int code);

/*
 * The series of a route (is_upstream 0) or an upstream (1), made on first
 * use; it lives as long as the worker's metrics (series outlive reloads), so
 * a tunnel may keep the pointer for its whole life.
 */
mg_series_t *mg_metrics_series(mg_metrics_t *m, const char *name, int is_upstream);
/* The same, without making one: NULL when the name has none yet. */
mg_series_t *mg_metrics_find(const mg_metrics_t *m, const char *name, int is_upstream);

typedef struct mg_text {
    char *p;
    size_t len, cap;
} mg_text_t;

void mg_text_add(mg_text_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends n bytes (kept NUL-terminated); inline: the timeline and the exporter append in small pieces. */
void mg__text_grow(mg_text_t *t, size_t n);
static inline void mg_text_append(mg_text_t *t, const char *p, size_t n)
{
    if (mg_unlikely(t->len + n + 1 > t->cap))
        mg__text_grow(t, n);
    memcpy(t->p + t->len, p, n);
    t->len += n;
    t->p[t->len] = '\0';
}
/* A string literal, an unsigned number, microseconds as milliseconds ("12.345"): without printf's cost. */
#define mg_text_lit(t, s) mg_text_append((t), (s), sizeof(s) - 1)
void mg_text_u64(mg_text_t *t, uint64_t v);
void mg_text_ms(mg_text_t *t, uint64_t us);
/*
 * The escapers every name from a config or a request goes through on its way
 * to an answer. mg_text_label: a Prometheus label value (without the quotes):
 * \\, \" and \n escaped, as the text format requires. mg_text_json: a JSON
 * string body (without the quotes), by mg_json_escape; also for the text
 * answers, where it keeps one name on one line. Both replace bytes that are
 * not UTF-8 with U+FFFD: a parser of either format would refuse them.
 */
void mg_text_label(mg_text_t *t, const char *s);
void mg_text_json(mg_text_t *t, const char *s);

/* Appends the worker's series with a worker="id" label. */
void mg_metrics_render(const mg_metrics_t *m, int worker, mg_text_t *out);
/*
 * Appends the worker's figures as JSON members (no braces):
 *   "routes":[{"route":..,"status":{"2xx":n,..},"latency":{"counts":[..],"sum":s},"errors":{kind:n}}],
 *   "upstreams":[{"upstream":..,"status":{..},"ttfb":{..},"errors":{..}}],
 *   "last_errors":{kind:{"time":t,"status":n,"route":..,"upstream":..,"trace_id":..}}
 * "counts" are per bucket (not cumulative), bounded above by
 * mg_metrics_bounds[i], the last one +Inf.
 */
void mg_metrics_render_json(const mg_metrics_t *m, mg_text_t *out);
/* The latency buckets' upper bounds in seconds (MG_METRICS_BUCKETS of them; +Inf after). */
extern const double mg_metrics_bounds[MG_METRICS_BUCKETS];
void mg_metrics_free(mg_metrics_t *m);

#endif
