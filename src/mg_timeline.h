/*
 * mg_timeline — the main thread's side of recorded requests: it drains the
 * workers' rings (mg_trace_drain) every MG_TIMELINE_TICK_MS while anything
 * is recorded, hands sampled records to the exporter (mg_otel), keeps the
 * last MG_TIMELINE_RECENT as recent history, and streams each to the
 * `gatewayctl trace` subscribers whose filters it matches, as text or JSON
 * lines (docs/observability.md shows both).
 *
 * A subscriber never holds anything up: its lines go to its connection's
 * output buffer; while that holds more than MG_TIMELINE_SUB_MAX bytes (the
 * client reads slower than requests end) its lines are dropped and counted,
 * and a line saying how many it missed comes first once it has caught up.
 * The admin side's send timeout still ends a client that reads nothing.
 *
 * Main thread only.
 */
#ifndef MG_TIMELINE_H
#define MG_TIMELINE_H

#include <event2/bufferevent.h>

#include "mg_metrics.h"
#include "mg_trace.h"

#define MG_TIMELINE_TICK_MS 20
#define MG_TIMELINE_RECENT 512
#define MG_TIMELINE_SUB_MAX (1u << 20)

/* What a subscriber wants (gatewayctl trace's options). */
typedef struct mg_timeline_filter {
    char *route;                  /* the route's name, exactly; NULL: any */
    int status_lo, status_hi;     /* 0: any */
    uint64_t slower_us;           /* only requests that took longer; 0: any */
    long limit;                   /* end the stream after this many; 0: no end */
    int json;
    int recent;                   /* the recent ones only: end after them */
} mg_timeline_filter_t;

/*
 * Parses the admin command's arguments: space-separated `route=NAME` (the
 * name %-escaped), `status=5xx|404`, `slower=200ms`, `limit=N`, `json`,
 * `recent`. Returns MG_OK, or MG_ERROR with a message in err.
 */
int mg_timeline_parse(const char *args, mg_timeline_filter_t *f, char *err, size_t errlen);
void mg_timeline_filter_free(mg_timeline_filter_t *f);

typedef struct mg_timeline_sub mg_timeline_sub_t;

/*
 * A new subscriber writing to bev (its output; the caller owns bev and the
 * connection). The recent requests that match go out at once. on_done(arg)
 * is called when the stream has nothing more to send (its limit reached, or
 * `recent`): the caller closes the connection once the output is written.
 * The filter is taken over.
 */
mg_timeline_sub_t *mg_timeline_subscribe(struct bufferevent *bev, mg_timeline_filter_t *f,
                                         void (*on_done)(void *arg), void *arg);
void mg_timeline_unsubscribe(mg_timeline_sub_t *s);

/*
 * Starts the hub on the main loop (at the admin priority). mg_timeline_stop
 * removes its timer (before the loop is freed); mg_timeline_final, once the
 * workers are gone, hands what they left to the exporter and frees the
 * history.
 */
void mg_timeline_start(struct event_base *base, int priority);
void mg_timeline_stop(void);
void mg_timeline_final(void);
/* Tracing was (re)configured: the hub runs while tracing is on or anyone subscribes. */
void mg_timeline_configure(const mg_trace_conf_t *c);

/* Prometheus lines for /metrics: records, drops, subscribers, the exporter's figures. */
void mg_timeline_metrics(mg_text_t *o);

/* One record as a timeline line (text with its indented items, or one JSON line). */
void mg_timeline_format(mg_text_t *o, const mg_trace_rec_t *rec, int json);

#endif
