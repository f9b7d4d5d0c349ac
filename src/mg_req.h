/*
 * mg_req — a request: its arena, the parsed head (copied once into the arena
 * so it outlives the input buffer), the decoded path and routing result, the
 * body, the Lua task that runs the handler, the deadline, the response and
 * the access-log line.
 *
 * Ownership: the connection creates a request (mg_req_new) and hands it over
 * to mg_req_* calls; the request ends in exactly one place, req_finish, which
 * releases everything it holds (coroutine, ctx, timers, arena) and tells the
 * connection via mg_conn_response_done. mg_req_abort is the client-gone path
 * and releases the same things without writing a response.
 */
#ifndef MG_REQ_H
#define MG_REQ_H

#include <event2/buffer.h>

#include "mg_conn.h"
#include "mg_pool.h"
#include "mg_proxy.h"
#include <lua.h>

#define MG_REQ_MAX_HEADERS 1000

struct mg_req {
    mg_conn_t *conn;
    mg_worker_t *worker;
    mg_gen_t *gen;
    struct mg_req *next_free;

    /* head (all pointers into the arena) */
    mg_str_t method, target, path, query, host;
    mg_header_t *headers;
    size_t nheaders;
    int minor_version;
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
    mg_holds_t holds;             /* semaphore permits taken from Lua: released by the teardown */
    int ctx_ref;
    struct event deadline;
    int deadline_set;

    /* proxy routes (mg_forward) */
    mg_proxy_t *proxy;            /* &proxy_store while forwarding */
    int proxy_done;               /* the exchange ended (or was cancelled): no more proxy calls */
    int proxy_paused;             /* the upstream is paused until the client reads */
    int resp_started;             /* the response head went out: errors can no longer be reported */
    int resp_framing;             /* MG_BODY_* towards the client, -1 close-delimited */
    int resp_keepalive;
    int64_t resp_cl;              /* the upstream's Content-Length, -1 when none */
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

    int status;
    const mg_error_t *error_kind; /* how it failed (mg_error.h), or NULL */
    size_t bytes_out;
    uint64_t start_us;
    /* embedded (not in the arena) so it stays valid memory when a callback
     * deep inside mg_proxy ends the request: the request object is only
     * recycled, never freed, while the worker runs */
    mg_proxy_t proxy_store;

    /* large members last: mg_req_new zeroes only what comes before `segs` */
    mg_str_t segs[MG_ROUTER_MAX_SEGMENTS];
    char trace_id[129];
    mg_pool_t pool;
};

/* A fresh request for connection c (from the worker's free list). */
mg_req_t *mg_req_new(mg_conn_t *c);

/*
 * Takes the parsed head (pointing into the connection's input buffer) and
 * copies it into the request. Decodes and validates the path and routes it.
 * Returns 0 when the request may proceed (read its body, then mg_req_run), or
 * the status of the error response the connection should send.
 */
int mg_req_set_head(mg_req_t *r, const char *head, size_t head_len, const mg_http1_request_t *p);

/* The client's address without port (see client_ip above; the peer's before the head is read). */
const char *mg_req_client_ip(mg_req_t *r);

/*
 * Runs the route: a Lua handler (after the body is complete), or a proxy
 * route (right after the head: see mg_req_streams_body).
 */
void mg_req_run(mg_req_t *r);

/* True for proxy routes, whose body streams to the upstream as it arrives. */
int mg_req_streams_body(const mg_req_t *r);
/* The body path: may bytes be taken now; take them; the body is complete. */
int mg_req_body_ready(mg_req_t *r);
void mg_req_body_data(mg_req_t *r, const char *data, size_t len);
void mg_req_body_end(mg_req_t *r);
/* The connection's output buffer drained. */
void mg_req_output_drained(mg_req_t *r);

/* May the connection carry another request after this one? */
int mg_req_keepalive(const mg_req_t *r);
/* Ends the request after its response is queued (access log, release, next request). */
void mg_req_finish(mg_req_t *r, int keepalive);
/* Ends a request whose response was cut short: log it, then reset the connection. */
void mg_req_break(mg_req_t *r);

/*
 * Validates a Lua headers table (at idx on L: name -> string/number or array)
 * and appends it to out when out is not NULL, skipping the framing headers the
 * gateway owns. Returns an error message or NULL; *has_ct reports Content-Type.
 */
const char *mg_req_lua_headers(lua_State *L, int idx, struct evbuffer *out, int *has_ct);
/*
 * One header set from Lua (a handler, a plugin, gw.http.request): the name
 * must be a token and the value free of CR, LF and other controls; framing
 * headers are skipped. Appended to out when out is not NULL. Error or NULL.
 */
const char *mg_req_add_header(struct evbuffer *out, const char *name, size_t nl, const char *value, size_t vl);
/* Appends "name: value\r\n" as is. */
void mg_req_header_line(struct evbuffer *out, const char *name, size_t nl, const char *value, size_t vl);

/* Pushes the request's ctx (creating it on first use) on the VM's main stack. */
void mg_req_push_ctx(mg_req_t *r);

/* Cancels log phases still running (worker shutdown). */
void mg_req_end_detached(mg_worker_t *w);

/*
 * Answers with a JSON error {"error": message, "status": ..., "trace_id": ...}
 * and ends the request. kind may be NULL; status 0 means the kind's status;
 * message NULL means the kind's message. close forces Connection: close.
 * Extra headers are a preformatted "Name: value\r\n..." block or NULL. With
 * error_header configured, the kind's name goes in that header.
 */
void mg_req_error(mg_req_t *r, int status, const mg_error_t *kind, const char *message, int close,
                  const char *extra_headers);

/* The client went away: cancel everything, log, release. */
void mg_req_abort(mg_req_t *r);

/* Final release of a request object on worker shutdown. */
void mg_req_destroy(mg_req_t *r);

#endif
