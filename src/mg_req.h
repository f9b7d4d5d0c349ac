/*
 * mg_req — a request: its arena, the parsed head (copied once into the arena
 * so it outlives the input buffer), the decoded path and routing result, the
 * body, the Lua task that runs the handler, the deadline, the response and
 * the access-log line. It knows nothing of the wire: it came on an HTTP/1.1
 * connection or an HTTP/2 stream, and talks to it only through r->wire
 * (mg_wire.h), writing every response through mg_req_send_head.
 *
 * Lifetime rules:
 * - The wire creates a request (mg_req_new) for each request it reads and
 *   hands it over: from then on the request owns itself and ends in exactly
 *   one way, through mg_req_finish (the response is complete), mg_req_error
 *   (the gateway's own error response), mg_req_break (the response was cut
 *   short) or mg_req_abort (the client went away; called by the wire).
 * - `r` is invalid once one of those returns: its teardown (access log,
 *   metrics, timers, the upstream exchange, the Lua task and what it holds,
 *   the ctx reference, the arena) has run, or, when the route has log
 *   plugins, runs when the log phase ends; the object is recycled. A caller
 *   that may have ended the request (any mg_req_*, mg_forward_*, mg_proxy_*
 *   call that can complete a response) must not touch `r` afterwards unless
 *   it checks first that the request it holds is still the wire's (as mg_h1
 *   does with c->req).
 * - Lua's ctx outlives the request only as a dead handle: ctx._r becomes
 *   false at teardown, and every ctx accessor raises then.
 * - Borrowed: r->headers, method, target, path, query and host point into the
 *   arena and are valid until teardown.
 */
#ifndef MG_REQ_H
#define MG_REQ_H

#include <event2/buffer.h>

#include "mg_conn.h"
#include "mg_pool.h"
#include "mg_proxy.h"
#include "mg_resp.h"
#include "mg_wire.h"
#include <lua.h>


#define MG_REQ_MAX_HEADERS 1000

struct mg_req {
    mg_conn_t *conn;              /* the transport (its TLS state, its worker); NULL once detached */
    const mg_wire_t *wire;        /* how responses are written to it */
    void *stream;                 /* the HTTP/2 stream (mg_h2), or NULL */
    mg_worker_t *worker;
    mg_gen_t *gen;
    struct mg_req *next_free;

    /* head (all pointers into the arena) */
    mg_str_t method, target, path, query, host;
    mg_header_t *headers;
    size_t nheaders;
    int minor_version;            /* 0 or 1 (HTTP/2 requests: 1) */
    unsigned flags;               /* MG_HTTP1_F_* */
    int64_t content_length;
    unsigned method_bit;
    size_t bytes_in;

    /* decoded path: segments (segs, below) live in one '/'-separated buffer */
    char *dpath;
    size_t nsegs;

    const mg_route_t *route;
    mg_route_match_t match;
    struct evbuffer *body;

    mg_task_t task;
    int task_running;
    mg_task_t log_task;           /* the log phase, after the response */
    mg_ledger_t ledger;           /* what its phase tasks took (task.scope): run by the teardown */
    int ctx_ref;
    /* ctx.response.headers as a proxy route's request phases left them, handed over through
     * mg_ffi when they end: the proxied head gets them from here, without reading ctx */
    int defaults_taken;
    mg_header_t *defaults;        /* copies in the arena */
    size_t ndefaults, defaults_cap;
    const char *defaults_bad;     /* a field that is refused: none is sent (logged when the head is built) */
    int proxy_headers;            /* ctx._proxy_headers exists (mg_ffi_req_proxy_headers): build_head reads it */
    struct event deadline;
    int deadline_set;
    uint64_t deadline_us;         /* when it passes (monotonic µs), from routing */

    /* proxy routes (mg_forward) */
    mg_proxy_t *proxy;            /* &proxy_store while forwarding */
    int proxy_done;               /* the exchange ended (or was cancelled): no more proxy calls */
    int proxy_paused;             /* the upstream is paused until the client reads */
    int resp_started;             /* the response head went out: errors can no longer be reported */
    int close;                    /* nothing more after this request on its connection (body not read) */
    int grpc;                     /* a gRPC call (content-type application/grpc): errors answer as gRPC */
    int grpc_status;              /* the call's gRPC status when known (ours or the upstream's), else -1 */
    mg_resp_t resp;               /* the head being built (mg_req_send_head sends it) */
    int upstream_status;          /* a proxied response: the upstream's status, reason and length */
    char *upstream_reason;
    int64_t upstream_cl;
    int upstream_no_body;         /* nothing followed its head (a gRPC trailers-only answer) */
    mg_header_t *trailers;        /* the upstream's trailers (arena), for clients that take them */
    size_t ntrailers;
    int head_filtering;           /* header_filter plugins run over the upstream's head */
    int filter_paused;            /* the upstream waits for them */
    int body_filtering;           /* proxied body chunks go through body_filter plugins */
    int chunk_filtering;          /* a body_filter task runs */
    int chunk_eof;                /* ... over the end of the body */
    int finish_pending;           /* the upstream finished while a chunk was being filtered */
    int whole_body;               /* the proxied body is buffered (in body) for whole_body plugins */
    int body_complete;            /* the client's request body has been read completely */
    int detached;                 /* the response is done; the log phase still runs */
    struct mg_req *next_detached;
    char remote[64];              /* the peer's "ip:port" (outlives the connection) */
    /* edge facts (mg_req_head): one host for routing, ctx, the upstream and the logs */
    mg_str_t authority;           /* the host as received, with its port: the absolute-form
                                   * target's authority, else Host; validated; "" when none */
    char client_ip[48];           /* the client: the peer, or the hop trusted proxies name; "" until set */
    int peer_trusted;             /* the peer is in trusted_proxies: its X-Forwarded-* and Forwarded pass */
    int tls;                      /* the client came over TLS */
    mg_str_t upgrade;             /* the Upgrade token a proxy route forwards (into the arena), or empty */
    struct mg_ws_lua *websocket;  /* ctx:websocket() accepted: the handler runs a WebSocket (mg_ws_lua) */

    int status;
    const mg_error_t *error_kind; /* how it failed (mg_error.h), or NULL */
    struct mg_trace *trace;       /* its timeline when it is recorded (mg_trace.h, in the arena), or NULL;
                                   * the W3C flags its upstream requests carry are task.trace_flags */
    size_t bytes_out;
    uint64_t start_us;

    /* large members last: mg_req_new zeroes only what comes before `segs` */
    mg_str_t segs[MG_ROUTER_MAX_SEGMENTS];
    /* embedded (not in the arena) so it stays valid memory when a callback
     * deep inside mg_proxy ends the request: the request object is only
     * recycled, never freed, while the worker runs; mg_forward_start (or
     * gw.http's) clears what it uses */
    mg_proxy_t proxy_store;
    char trace_id[129];
    mg_pool_t pool;
};

/* A fresh request on connection c, written to through wire (stream: the wire's, or NULL). */
mg_req_t *mg_req_new(mg_conn_t *c, const mg_wire_t *wire, void *stream);

/*
 * HTTP/1.1: takes the parsed head (pointing into the connection's input
 * buffer) and copies it into the request, then mg_req_route. Returns 0 when
 * the request may proceed (read its body, then mg_req_run), or the status of
 * the error response the wire should send (404, 405, 400, 414).
 */
int mg_req_set_head(mg_req_t *r, const char *head, size_t head_len, const mg_http1_request_t *p);
/*
 * The same for a head whose pointers already live in the request's arena
 * (HTTP/2 copies each field as nghttp2 hands it over): trace id, target and
 * host, path decoding, routing.
 */
int mg_req_route(mg_req_t *r, const mg_http1_request_t *p);

/* Arms the request's deadline (mg_req_route does, once routed). */
void mg_req_start_deadline(mg_req_t *r);

/* The client's address without port (see client_ip above; the peer's before the head is read). */
const char *mg_req_client_ip(mg_req_t *r);

/*
 * Runs the route: a Lua handler (after the body is complete), or a proxy
 * route (right after the head: see mg_req_streams_body).
 */
void mg_req_run(mg_req_t *r);

/* True for proxy routes, whose body streams to the upstream as it arrives. */
int mg_req_streams_body(const mg_req_t *r);
/*
 * The body path, called by the wire: may bytes be taken now (when not, the
 * wire holds them back until r->wire->resume_body is called); take them; the
 * body is complete.
 */
int mg_req_body_ready(mg_req_t *r);
void mg_req_body_data(mg_req_t *r, const char *data, size_t len);
void mg_req_body_end(mg_req_t *r);
/* The wire's output for this request drained (back-pressure). */
void mg_req_output_drained(mg_req_t *r);

/*
 * The one response writer. mg_req_send_head encodes r->resp (or resp) on the
 * wire; then body bytes; then mg_req_finish ends the request (trailers may be
 * NULL). Nothing may be sent after finish; see the lifetime rules above.
 */
void mg_req_send_head(mg_req_t *r, const mg_resp_t *resp);
/*
 * Adds the headers plugins set on ctx.response.headers before the response
 * existed (defaults: a field the response already has is kept as it is).
 */
void mg_req_add_defaults(mg_req_t *r, mg_resp_t *resp);
void mg_req_send_interim(mg_req_t *r, const mg_resp_t *resp);
void mg_req_send_body(mg_req_t *r, const char *data, size_t len);
/* Where body bytes may be read into directly (see mg_wire_t.body_sink), or NULL. */
struct evbuffer *mg_req_body_sink(mg_req_t *r);
void mg_req_body_added(mg_req_t *r, size_t len);
/* Response bytes queued on the wire and not yet sent; write them now. */
size_t mg_req_output_pending(mg_req_t *r);
void mg_req_flush(mg_req_t *r);
/* Ends the request after its response is complete (access log, teardown, the wire goes on). */
void mg_req_finish(mg_req_t *r, const mg_header_t *trailers, size_t ntrailers);
/* Ends a request whose response was cut short: log it, then reset the connection or stream. */
void mg_req_break(mg_req_t *r);

/*
 * Protocol upgrades (HTTP/1.1 only: r->wire->upgrade is NULL otherwise).
 * mg_req_send_upgrade writes the 101 head and takes the connection from the
 * wire (r->conn stays set for the caller, which installs its protocol on
 * it). mg_req_end_upgraded then ends the request like the other ends
 * (access log with status 101, metrics, teardown; r is invalid after it)
 * without giving the connection back to the wire: its new owner closes it.
 */
void mg_req_send_upgrade(mg_req_t *r, const mg_resp_t *resp);
void mg_req_end_upgraded(mg_req_t *r);

/*
 * Logs a failure of the request's Lua code in one format for every phase:
 * "route R: access of plugin key-auth: file:line: message" ("handler: ..."
 * for the route's handler), with the trace id, the traceback as a field.
 */
void mg_req_log_failure(mg_req_t *r, const char *why);

/* Pushes the request's ctx (creating it on first use) on the VM's main stack. */
void mg_req_push_ctx(mg_req_t *r);

/* Cancels log phases still running (worker shutdown). */
void mg_req_end_detached(mg_worker_t *w);

/*
 * Answers with a JSON error {"error": message, "status": ..., "trace_id": ...}
 * and ends the request. kind may be NULL; status 0 means the kind's status;
 * message NULL means the kind's message. close: nothing more on this
 * connection (the request body was not read). extra: more fields (Allow,
 * Retry-After) or NULL. With error_header configured, the kind's name goes in
 * that header.
 */
void mg_req_error(mg_req_t *r, int status, const mg_error_t *kind, const char *message, int close,
                  const mg_header_t *extra, size_t nextra);

/*
 * A request refused before it ran: a status from the parser, the limits or
 * routing (400, 404, 405 with Allow, 413, 414, 431, ...). kind NULL: the
 * status's (no_route, method_not_allowed, bad_request).
 */
void mg_req_reject(mg_req_t *r, int status, const mg_error_t *kind, int close);

/* The client went away: cancel everything, log, release. */
void mg_req_abort(mg_req_t *r);

/* Final release of a request object on worker shutdown. */
void mg_req_destroy(mg_req_t *r);
/*
 * A worker keeps up to MG_REQ_CACHED ended request objects for reuse; the
 * ones a burst leaves beyond that are freed by mg_req_reap, which the worker
 * runs at the end of the loop pass they ended in (never under a caller that
 * may still look at the object).
 */
#define MG_REQ_CACHED 64
void mg_req_reap(mg_worker_t *w);

#endif
