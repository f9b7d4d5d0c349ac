/*
 * mg_trace — where a request's time went: the per-request recorder (worker
 * side), the W3C trace context in and out, head sampling, and the finished
 * timelines handed to the main thread (docs/observability.md).
 *
 * A request is *recorded* when someone will look at it: the sampler chose it
 * for export (a `tracing` block, mg_trace_conf_t), or a `gatewayctl trace`
 * subscriber is connected (mg_trace_subscribers, one atomic load per
 * request). Recording costs a 4 KiB arena allocation and two clock reads per
 * task run, per plugin step and per wait; a request that is not recorded
 * pays one branch on a NULL pointer at each of those places (r->trace,
 * t->trace, p->trace) and nothing else.
 *
 * What a record holds (items, in the order they started):
 *   STEP     a plugin's phase (rewrite, access, balancer, header_filter,
 *            body_filter): marked from Lua by the traced copy of the route's
 *            chain (lua/moongate/plugins.lua), so only recorded requests run
 *            the marks
 *   HANDLER  the route's Lua handler (marked by C for a route without plugins)
 *   WAIT     one wait of a step or the handler (mg_wait_t.what: gw.sleep,
 *            redis, ...), or the upstream's max_concurrency queue
 *   ATTEMPT  one upstream attempt (mg_proxy hooks): connect, request sent,
 *            first byte, end, status or error kind
 *   CALL     one gw.http.request (its attempts are its children)
 * Run time is wall time while the task ran on the worker (nothing else runs
 * on that thread meanwhile), wait time the time between a yield and the
 * resume. Items beyond MG_TRACE_MAX_ITEMS are counted, not kept.
 *
 * Threads: a mg_trace_t lives in the request's arena and is touched only by
 * its worker. mg_trace_end copies it into a mg_trace_rec_t (one malloc), the
 * immutable record other threads read: the worker pushes it into its
 * single-producer ring, the main thread drains the rings (mg_trace_drain)
 * and passes records on (timeline subscribers, recent history, the OTLP
 * exporter, mg_otel.h), each holding a reference. Whatever a hook records
 * after mg_trace_end (a cancelled exchange during the teardown) stays in the
 * arena copy and is dropped with it.
 */
#ifndef MG_TRACE_H
#define MG_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "mg_core.h"

typedef struct mg_req mg_req_t;
typedef struct mg_proxy mg_proxy_t;
typedef struct mg_wait mg_wait_t;
typedef struct mg_target mg_target_t;
typedef struct mg_error mg_error_t;

/* The `tracing { ... }` block (lua/moongate/config.lua checks it). */
typedef struct mg_trace_conf {
    int enabled;                   /* a tracing block was given */
    char *endpoint;                /* OTLP/HTTP traces URL; NULL: sample for the timeline only */
    double ratio;                  /* head sampling ratio for traces the gateway starts */
    int parent_based;              /* a sampled flag in an incoming traceparent decides */
    char *service_name;
    uint32_t batch;                /* spans per export request */
    uint32_t queue;                /* spans waiting for export, at most */
    uint32_t timeout_ms;           /* per export request (connect, send, answer) */
    uint32_t interval_ms;          /* a batch not full goes out after this */
    char **headers;                /* "Name: value" lines sent with each export */
    int nheaders;
} mg_trace_conf_t;

void mg_trace_conf_free(mg_trace_conf_t *c);

/*
 * Main thread, at start and on reload: the sampler takes the new settings
 * (workers read them with relaxed atomic loads: a request sees the old or
 * the new ratio, either is right).
 */
void mg_trace_apply(const mg_trace_conf_t *c);

/* Live `gatewayctl trace` subscribers (atomic); while > 0 every request is recorded. */
extern int mg_trace_subscribers;

enum { MG_TI_STEP, MG_TI_HANDLER, MG_TI_WAIT, MG_TI_ATTEMPT, MG_TI_CALL };
/* STEP phases (the Lua side numbers them the same: plugins.lua TRACE_PHASE) */
enum { MG_TP_NONE, MG_TP_REWRITE, MG_TP_ACCESS, MG_TP_BALANCER, MG_TP_HEADER_FILTER, MG_TP_BODY_FILTER,
       MG_TP_HANDLER };
const char *mg_trace_phase_name(int phase);

#define MG_TRACE_MAX_ITEMS 48
#define MG_TRACE_STRS 1536

typedef struct mg_trace_item {
    uint64_t span_id;
    uint64_t start_us, end_us;     /* monotonic (mg_now_us); end_us 0 while open */
    uint32_t run_us, wait_us;      /* STEP, HANDLER: on the worker's CPU, waiting */
    uint32_t connect_us, sent_us, first_us; /* ATTEMPT: since its start; 0 not reached */
    int16_t parent;                /* the item it belongs to; -1: the request */
    uint16_t name;                 /* into strs: plugin (STEP), label (WAIT), target (ATTEMPT), target (CALL) */
    uint16_t name2;                /* into strs: upstream (ATTEMPT, CALL); method (CALL) in name3 */
    uint16_t name3;
    int16_t status;                /* ATTEMPT, CALL: the response's, 0 none */
    uint8_t kind, phase;           /* MG_TI_*, MG_TP_* */
    uint8_t error;                 /* mg_error id + 1 (ATTEMPT, CALL); 0 none */
    uint8_t attempt;               /* ATTEMPT: 1-based; CALL: attempts made */
    uint8_t cancelled;             /* ended by the owner (deadline, client gone, teardown) */
} mg_trace_item_t;

/* The recorder of one request (in its arena; worker thread only). */
typedef struct mg_trace {
    uint8_t trace_id[16];
    uint64_t span_id;              /* the server span */
    uint64_t parent_span;          /* from the incoming traceparent; 0: a root */
    int sampled;                   /* exported (the sampler chose it) */
    int fresh_id;                  /* the request id is not a W3C trace id: trace_id was made here */
    uint64_t start_us;             /* = the request's start_us */
    uint64_t wall_start_ns;        /* the same instant, wall clock */
    int cur;                       /* the open STEP or HANDLER, -1 none */
    int wait;                      /* the open WAIT, -1 none */
    uint64_t mark_us;              /* run time is counted from here */
    int proxy_queue;               /* the upstream queue's WAIT, -1 none */
    uint32_t dropped;              /* items not kept (MG_TRACE_MAX_ITEMS) */
    int nitems;
    uint16_t nstrs;
    mg_trace_item_t items[MG_TRACE_MAX_ITEMS];
    char strs[MG_TRACE_STRS];
} mg_trace_t;

/*
 * Routing (mg_req_head pick_trace_id, once the trace id is chosen): the
 * sampling decision and, when the request is to be recorded, its recorder.
 * traceparent: the incoming header's value when it was valid (55 bytes), or
 * NULL. Sets r->trace (or leaves it NULL) and the trace fields of r->task
 * and r->log_task (trace_flags: what the request's upstream requests carry). The decision:
 *   - no tracing block: nothing is sampled; outgoing requests carry the
 *     incoming flag, or 01 for a trace the gateway starts (services behind
 *     it decide), as before tracing existed;
 *   - an incoming traceparent with parent_based: its sampled flag;
 *   - else the ratio, on the trace id (the same id always gets the same
 *     answer, on every gateway).
 */
void mg_trace_begin(mg_req_t *r, const char *traceparent);

/* The request ended (req_end): the server span ends now; the record goes to the main thread. */
void mg_trace_end(mg_req_t *r);

/* task_resume (mg_lua.c): a recorded task runs again (a wait ends), or stopped (w: its new wait, or NULL: done). */
void mg_trace_enter(mg_trace_t *tr);
void mg_trace_leave(mg_trace_t *tr, const mg_wait_t *w);

/* A step or the handler begins (phase MG_TP_*, name: the plugin's, copied), or the open one ends (phase 0). */
void mg_trace_step(mg_trace_t *tr, int phase, const char *name, size_t len);

/*
 * mg_proxy hooks: what an exchange with p->trace set did. Called at clear
 * points of mg_proxy.c only (see there): the owner sets p->trace and
 * p->trace_parent (-1, or the CALL item) before mg_proxy_start.
 */
enum { MG_TRACE_ATTEMPT, MG_TRACE_CONNECTED, MG_TRACE_SENT, MG_TRACE_FIRST_BYTE, MG_TRACE_END,
       MG_TRACE_CANCEL, MG_TRACE_QUEUED };
void mg_trace_proxy(mg_proxy_t *p, int event, const mg_error_t *err);

/* gw.http.request: a CALL item (its span id in *span), and its end (status or err). Returns the item, or -1. */
int mg_trace_call_begin(mg_trace_t *tr, const char *method, const char *upstream, const char *target,
                        uint64_t *span);
void mg_trace_call_end(mg_trace_t *tr, int item, int status, const mg_error_t *err, int attempts);

/*
 * The traceparent value of an outgoing request, "00-<trace id>-<span>-<flags>"
 * (MG_TRACE_PARENT_LEN bytes, not terminated) into out: the trace id of the
 * recorded trace, else trace_id when it is a W3C one (32 lowercase hex
 * digits). span: the client span's id, 0 for a new random one (not
 * recorded). Returns its length, or 0 when there is no W3C trace id (no
 * traceparent is sent then).
 */
#define MG_TRACE_PARENT_LEN 55
size_t mg_trace_parent_value(char *out, const mg_trace_t *tr, const char *trace_id, unsigned flags, uint64_t span);

/* A random non-zero 64-bit id (per-thread generator, seeded from getrandom). */
uint64_t mg_trace_random64(void);
/* 16 lowercase hex digits of v into out (not terminated). */
void mg_trace_hex64(char *out, uint64_t v);

/* ---- finished records (any thread once made) ---- */

typedef struct mg_trace_rec {
    int refs;                      /* atomic */
    int worker;
    uint8_t trace_id[16];
    uint64_t span_id, parent_span;
    int sampled, fresh_id;
    uint64_t start_us, end_us;     /* monotonic, the worker's clock (one clock for the process) */
    uint64_t wall_start_ns;
    int status;
    int error;                     /* mg_error id + 1, 0 none */
    int attempts;
    int minor_version, tls;
    uint32_t dropped;
    size_t bytes_in, bytes_out;
    /* into strs */
    uint16_t request_id, method, path, query, route, host, client, upstream, target, version, user_agent;
    int nitems;
    mg_trace_item_t *items;        /* into the same allocation */
    const char *strs;
} mg_trace_rec_t;

static inline const char *mg_trace_str(const mg_trace_rec_t *rec, uint16_t off) { return rec->strs + off; }
void mg_trace_rec_ref(mg_trace_rec_t *rec);
void mg_trace_rec_put(mg_trace_rec_t *rec);

/*
 * Main thread: one ring per worker, made before the workers start; records
 * that do not fit (the main thread fell behind by MG_TRACE_RING records) are
 * dropped and counted.
 */
#define MG_TRACE_RING 4096
void mg_trace_rings_init(int nworkers);
void mg_trace_rings_free(void);
/* Takes every record queued so far, calling fn with each (fn owns the reference). Returns how many. */
int mg_trace_drain(void (*fn)(mg_trace_rec_t *rec, void *arg), void *arg);
/* Records the rings dropped (atomic sum). */
uint64_t mg_trace_ring_dropped(void);
/* Recorded requests so far (atomic sum). */
uint64_t mg_trace_recorded(void);

#endif
