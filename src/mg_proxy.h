/*
 * mg_proxy — the forwarding engine: one HTTP exchange with an upstream,
 * including target choice, connection lease, phase timeouts, retries and
 * response framing. It knows nothing about where the request comes from or
 * where the response goes: the owner supplies mg_proxy_ops_t (the client
 * forwarder in mg_forward.c, the Lua sub-request client in mg_http_client.c).
 *
 * Errors are kinds, exported constants compared by pointer, decided from
 * errno values and events, never from message strings.
 */
#ifndef MG_PROXY_H
#define MG_PROXY_H

#include "mg_error.h"
#include "mg_http1.h"
#include "mg_resp.h"
#include "mg_upstream.h"

/*
 * Error kinds (mg_error.h) an exchange ends with: refused, reset,
 * connect_timeout, send_timeout, read_timeout (no byte for timeouts.read),
 * protocol (a malformed response), tls_handshake, tls_verify,
 * no_healthy_target, busy (max_concurrency; p->busy_status says which status),
 * deadline (p->deadline_us left no time for an attempt; the owner's own
 * deadline timer cancels a running one) and client_abort (set by the owner
 * when it cancels).
 *
 * Resending (docs/proxy.md "Retries" is the user's version): an attempt that
 * failed before any of the response reached the owner, whose request can be
 * sent again (no body, a replayable p->body, or no streamed byte consumed),
 * is resent when that is safe:
 *   - the request never left (connect refused, reset or timed out, TLS
 *     handshake failed, or not one byte of it was written): any method;
 *   - it was written: only an idempotent method, or any when the upstream
 *     has retry_non_idempotent;
 * and where:
 *   - a pooled connection that ended with no response byte (the upstream
 *     closed it, idle) is replaced by a new connection to the same target,
 *     outside the retries budget and without counting against the target;
 *   - otherwise (within `retries`) on a target not tried yet; one already
 *     tried only once, after its connect was refused or reset; never again
 *     after a timeout (that would double the wait) or a bad response;
 *   - no attempt starts with less than MG_PROXY_MIN_ATTEMPT_MS before
 *     p->deadline_us.
 */
#define MG_PROXY_MIN_ATTEMPT_MS 10

typedef struct mg_proxy mg_proxy_t;

/*
 * The request head of one attempt, whatever the upstream speaks: the owner's
 * build_head fills it, the engine encodes it (HTTP/1.1 request line and
 * fields, or HTTP/2 pseudo-headers and fields) with the framing it owns
 * (Content-Length, Transfer-Encoding). Names and values are borrowed: from
 * the request, or allocated in p->pool; valid while the head is written.
 */
typedef struct mg_upreq {
    mg_str_t method;
    mg_str_t target;              /* origin-form: path and query */
    mg_str_t authority;           /* Host (HTTP/1.1), :authority (HTTP/2) */
    mg_resp_t fields;             /* end-to-end fields (no Host, no framing) */
} mg_upreq_t;

typedef struct mg_proxy_ops {
    /* Fills the request head for this attempt (the target differs between attempts). */
    void (*build_head)(mg_proxy_t *p, mg_target_t *t, mg_upreq_t *req);
    /*
     * Optional: an interim response other than 100 and 101 (102, 103 Early
     * Hints, ...), borrowed: valid during the call only. 100 Continue is
     * absorbed (the gateway answers Expect itself) and 101 goes to
     * on_upgrade (a protocol error without it or without p->upgrade). More
     * interim responses, the final head or on_done follow; a retry may
     * follow too (another attempt's responses then come).
     */
    void (*on_interim)(mg_proxy_t *p, const mg_http1_response_t *resp);
    /*
     * The final response head (borrowed: valid during the call only). Return 1
     * to pause before the body (the owner calls mg_proxy_resume when ready).
     */
    int (*on_head)(mg_proxy_t *p, const mg_http1_response_t *resp);
    /*
     * Response body bytes, de-chunked. Return 1 to pause (call mg_proxy_resume
     * later). data is NULL when len bytes were read straight into body_sink.
     */
    int (*on_body)(mg_proxy_t *p, const char *data, size_t len);
    /*
     * Optional: a buffer that unframed body bytes (Content-Length or
     * close-delimited) may be read into directly, saving a copy. May be NULL.
     */
    struct evbuffer *(*body_sink)(mg_proxy_t *p);
    /* All response bytes read so far were delivered; more are awaited. May be NULL. */
    void (*on_wait)(mg_proxy_t *p);
    /* A streaming request body may be written now (again after a pause). May be NULL. */
    void (*on_body_wanted)(mg_proxy_t *p);
    /*
     * Optional: the trailer fields of a chunked response, in order, right
     * before a successful on_done (only when there were any). Borrowed: valid
     * during the call only. They are checked like head fields but passed as
     * received: the owner drops what must not be forwarded (framing, routing,
     * hop-by-hop fields; RFC 9110 section 6.5.1). Set, it bounds a response's
     * trailers to MG_PROXY_MAX_TRAILERS fields (more is a protocol error);
     * NULL, they are checked and dropped.
     */
    void (*on_trailers)(mg_proxy_t *p, const mg_header_t *h, size_t n);
    /*
     * Optional: 101 Switching Protocols answered a request sent with
     * p->upgrade set (resp borrowed: valid during the call only). The owner
     * takes the connection with mg_proxy_hand_over, and then no callback
     * follows; if it does not, the exchange fails as a protocol error.
     */
    void (*on_upgrade)(mg_proxy_t *p, const mg_http1_response_t *resp);
    /* The exchange ended: err is NULL on success or an error kind. No callback follows. */
    void (*on_done)(mg_proxy_t *p, const mg_error_t *err);
} mg_proxy_ops_t;

enum { MG_BODY_NONE, MG_BODY_LENGTH, MG_BODY_CHUNKED };

#define MG_PROXY_MAX_HEADERS 100
#define MG_PROXY_MAX_TRAILERS 64

struct mg_proxy {
    /* set by the owner before mg_proxy_start */
    const mg_proxy_ops_t *ops;
    void *owner;
    mg_upstream_t *up;
    const char *hash;            /* balance = hash key (borrowed for the exchange) */
    size_t hash_len;
    int idempotent;              /* the method may be retried after it was sent */
    int head_request;            /* HEAD: the response has no body */
    int body_mode;               /* MG_BODY_* */
    int64_t body_len;            /* MG_BODY_LENGTH */
    struct evbuffer *body;       /* a complete, replayable body, or NULL when the owner streams it */
    mg_target_t *preferred;      /* the first attempt goes here when usable (balancer plugins) */
    mg_pool_t *pool;             /* the owner's arena: request heads, response fields kept for HTTP/2 */
    uint64_t deadline_us;        /* monotonic (mg_now_us); no attempt starts too close to it; 0: none */
    struct mg_trace *trace;      /* the owner's recorded request (mg_trace.h), or NULL: not recorded */
    int16_t trace_parent;        /* the item its attempts belong to: -1 the request, else a gw.http.request */
    int16_t trace_item;          /* the running attempt's item (mg_trace_proxy), -1 none */
    int upgrade;                 /* the request asks for a protocol upgrade: a 101 goes to on_upgrade */

    /* state */
    mg_target_t *target;
    mg_upconn_t *uc;
    int attempts;                /* attempts started (mg_proxy_attempts) */
    int free_attempts;           /* of which replaced a dead pooled connection (not counted as retries) */
    int same_retried;            /* a target was tried again after a refused connect */
    uint64_t tried;              /* the targets tried (mg_target_bit): retries go to others */
    int got_byte;                /* this attempt read a byte of response */
    int wrote;                   /* this attempt wrote a byte of request */
    int64_t body_sent;           /* streamed body bytes written */
    int body_done;
    int body_wanted;
    int head_seen;               /* the final response head arrived */
    int framing;                 /* response: MG_BODY_* or -1 close-delimited */
    int64_t resp_left;
    mg_chunked_t chunk;
    int resp_keepalive;
    int paused;
    int running;
    int permit;                  /* holds one of the upstream's permits */
    int queued;                  /* waits in the upstream's queue */
    int busy_status;             /* the status of a busy end */
    mg_sema_waiter_t waiter;
    struct event queue_timer;
    struct mg_clease *clease;    /* scope = "cluster": the lease in Redis, held or being acquired */
    uint64_t trace_span;         /* the span id its traceparent carries; 0: not recorded (a random one) */
    /* timings for the access log and metrics (µs since mg_proxy_start) */
    uint64_t t_start, t_attempt;
    uint32_t queue_us, connect_us, ttfb_us;
    /* HTTP/2 upstreams (mg_h2up) */
    struct mg_h2sess *h2s;       /* the session carrying this attempt, or NULL */
    int32_t h2id;                /* its stream (0: waiting for the session's handshake) */
    struct mg_proxy *h2next;     /* the session's exchanges */
    struct evbuffer *h2body;     /* request body bytes not yet framed */
    size_t h2_unconsumed;        /* response bytes taken while paused: their window is held back */
    size_t h2_ntrailers;
    unsigned h2_deferred : 1;    /* the body's data provider waits for bytes */
    unsigned h2_want_body : 1;   /* ask the owner for more body after the send */
    unsigned h2_ended : 1;       /* the stream ended or was closed: no reset on detach */
    unsigned h2_timer_set : 1;
    unsigned h2_reading : 1;
    unsigned h2_we_reset : 1;    /* the gateway's nghttp2 reset the stream: the upstream broke the protocol */     /* the request is out: the timer is the read timeout (else the send timeout) */
    unsigned h2_delivered : 1;   /* response bytes went to the owner in this read: on_wait follows */
    struct event h2_timer;       /* the stream's send/read timeout */
    mg_http1_response_t resp;
    mg_header_t headers[MG_PROXY_MAX_HEADERS];
    mg_header_t trailers[MG_PROXY_MAX_TRAILERS]; /* filled by the chunked decoder when on_trailers is set */
};

/*
 * The attempts the exchange started so far (the access log's "attempts"):
 * every connection the request was sent on or tried, including a new one
 * that replaced a dead pooled connection.
 */
static inline int mg_proxy_attempts(const mg_proxy_t *p) { return p->attempts; }

/* Starts the exchange; callbacks may run before this returns. */
void mg_proxy_start(mg_proxy_t *p);

/*
 * Streams request body bytes (only after on_body_wanted). Returns 1 when the
 * owner should stop until the next on_body_wanted (the upstream is slower).
 */
int mg_proxy_write_body(mg_proxy_t *p, const char *data, size_t len);
/* The streamed body is complete. */
void mg_proxy_end_body(mg_proxy_t *p);

/* Resumes reading the response after on_body returned 1. */
void mg_proxy_resume(mg_proxy_t *p);

/*
 * For the engines (mg_h2up): the attempt failed (never_left: the upstream
 * cannot have seen the request), or the response is complete. The retry
 * rules and the end of the exchange are mg_proxy's.
 */
void mg__proxy_fail(mg_proxy_t *p, const mg_error_t *kind, int never_left);
void mg__proxy_succeed(mg_proxy_t *p);

/*
 * Inside on_upgrade only: ends the exchange (the target is reported
 * healthy) and hands over its upstream connection, which is no longer the
 * pool's: the caller detaches it (mg_upconn_detach) and closes it when done.
 * Bytes the upstream sent after the 101 head are in uc->in [in_off, in_len).
 * *permit is 1 when the exchange held one of the upstream's max_concurrency
 * permits (p->up->sema): it is the caller's now, to release with
 * mg_sema_release(p->up->sema, 1) however its use ends.
 */
mg_upconn_t *mg_proxy_hand_over(mg_proxy_t *p, int *permit);

/* Stops the exchange without callbacks (client gone, deadline); closes the connection. */
void mg_proxy_cancel(mg_proxy_t *p);

#endif
