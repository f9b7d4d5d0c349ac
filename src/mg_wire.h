/*
 * mg_wire — how a request talks to the connection it came on, whatever the
 * protocol: an HTTP/1.1 connection (mg_h1.c) or an HTTP/2 stream (mg_h2.c)
 * implements these calls, and routing, plugins, proxying, limits, deadlines,
 * logs and metrics use only them (through the mg_req_send_* functions).
 *
 * Order of calls for one response: optionally interim() (1xx) any number of
 * times; head() once; body() / body_sink() any number of times; end() once.
 * done(MG_WIRE_RESET) may follow head() without end() (the response is cut
 * short); abort by the client comes the other way, as mg_req_abort. done()
 * runs after the request's own teardown: the request object is gone by then,
 * and the wire gets back only what it needs (its connection or stream).
 *
 * Back-pressure: pending() says how many response bytes are queued and not
 * yet sent; the wire calls mg_req_output_drained(r) when its queue drained.
 * For the request body the request calls resume_body() when it can take more
 * after mg_req_body_ready() said no.
 */
#ifndef MG_WIRE_H
#define MG_WIRE_H

#include <event2/buffer.h>

#include "mg_resp.h"

typedef struct mg_req mg_req_t;

enum { MG_WIRE_KEEP, MG_WIRE_CLOSE, MG_WIRE_RESET };

typedef struct mg_wire {
    const char *version;          /* "1.1" or "2" (HTTP/1.0 clients: see mg_req's minor_version) */
    /* Encodes the head: status, Date (unless resp has one), the fields, framing, X-Request-ID. */
    void (*head)(mg_req_t *r, const mg_resp_t *resp);
    /* An interim 1xx response (103 Early Hints): dropped where the client cannot take it. */
    void (*interim)(mg_req_t *r, const mg_resp_t *resp);
    /* Body bytes (copied). Ignored for a response that has no body. */
    void (*body)(mg_req_t *r, const char *data, size_t len);
    /*
     * Where body bytes may be added directly (saving a copy), or NULL when
     * the wire must frame them itself (HTTP/1.1 chunked). After adding to it,
     * call body_added with the count.
     */
    struct evbuffer *(*body_sink)(mg_req_t *r);
    void (*body_added)(mg_req_t *r, size_t len);
    /* The response is complete; trailers (may be NULL/0) go out where the client asked for them. */
    void (*end)(mg_req_t *r, const mg_header_t *trailers, size_t ntrailers);
    /* Response bytes queued and not yet written. */
    size_t (*pending)(mg_req_t *r);
    /* Writes what is queued now (after an upstream read: one write per read). */
    void (*flush)(mg_req_t *r);
    /* The request body may flow again. */
    void (*resume_body)(mg_req_t *r);
    /*
     * Optional (NULL where the wire cannot switch protocols: HTTP/2): writes
     * a 101 head (resp's fields as they are, with X-Request-ID) and gives up
     * the connection: from then on the request is not the wire's (no
     * end/done follows) and the caller installs another protocol on
     * r->conn (mg_tunnel, mg_ws_lua).
     */
    void (*upgrade)(mg_req_t *r, const mg_resp_t *resp);
    /*
     * The request ended and was torn down: conn and stream are what it held
     * (r is invalid now). how: MG_WIRE_KEEP (the connection may go on),
     * MG_WIRE_CLOSE (nothing more on it: e.g. the request body was not read)
     * or MG_WIRE_RESET (the response was cut short and must not look
     * complete: HTTP/1.1 resets the connection, HTTP/2 the stream).
     */
    void (*done)(void *conn, void *stream, int how);
} mg_wire_t;

#endif
