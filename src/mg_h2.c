/*
 * mg_h2 — see mg_h2.h.
 *
 * I/O: nghttp2 never touches the socket. Input arrives through the
 * connection's flat buffer (h2_input → nghttp2_session_mem_recv2); frames go
 * out through send callbacks into the connection's output evbuffer, and DATA
 * frames with NO_COPY: their payload is moved (evbuffer chains, no copy)
 * from the stream's own buffer. The output buffer has a high mark: past it
 * the send callbacks say WOULDBLOCK, nghttp2 keeps its frames, and sending
 * resumes when the socket drained (h2_drained).
 *
 * Back-pressure, both ways:
 * - responses: each stream buffers what its request wrote (s->out) until
 *   flow control lets nghttp2 frame it; the request sees s->out's length as
 *   pending() and stops its upstream over the mark, so a slow reader of one
 *   stream stops that stream's upstream only;
 * - request bodies: automatic WINDOW_UPDATEs are off. The connection window
 *   is given back as soon as bytes arrive, a stream's window only when its
 *   request took them (a proxied upload consumed by the upstream), so a slow
 *   upstream closes that stream's window, never the connection's.
 *
 * Re-entrancy: request code runs inside nghttp2's receive callbacks (a
 * handler that answers at once submits its response there, which nghttp2
 * allows), never inside its send callbacks: streams whose output drained
 * during a send are told after nghttp2_session_send returns.
 */
#include "mg_h2.h"

#include <event2/event.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <strings.h>

#include "mg_log.h"
#include "mg_req.h"

#define OUT_HIGH (256 * 1024)          /* connection output queued before nghttp2 is told to wait */
#define STREAM_OUT_LOW (64 * 1024)     /* a stream's response buffer below this: its upstream may go on */
#define CONN_WINDOW (16 * 1024 * 1024) /* given back at once: only stream windows hold data back */
#define FLOOD_WINDOW_MS 10000          /* flood counters are per 10 s */
#define MAX_RESETS 400                 /* streams the client cancelled while they ran (rapid reset) */
#define MAX_EMPTY_DATA 1000            /* DATA frames without payload or END_STREAM */
#define MAX_CONTROL 2000               /* SETTINGS and PING frames */

typedef struct mg_h2 mg_h2_t;

typedef struct mg_h2_stream {
    mg_h2_t *h2;
    int32_t id;
    mg_req_t *req;                /* the request until it ended (then NULL; the stream may still send) */
    mg_http1_request_t head;      /* the request head being collected (fields in the request arena) */
    size_t head_bytes;
    int cookie;                   /* index of the merged cookie field, or -1 */
    int too_large;                /* the header list went over the limits: 431 */
    int headers_done, body_done;
    int64_t body_total;
    struct evbuffer *held;        /* request body bytes the request could not take yet (not consumed) */
    struct evbuffer *out;         /* response body bytes not yet framed */
    int submitted;                /* the response head went to nghttp2 */
    int has_data;                 /* ... with a data provider */
    int eof;                      /* the response is complete (the provider ends it) */
    int deferred;                 /* the provider said DEFERRED: resume when bytes come */
    int rst_after;                /* the request body was not read: RST_STREAM(NO_ERROR) after the response */
    int want_drained;             /* tell the request its output drained (after nghttp2_session_send) */
    nghttp2_nv *trailers;         /* sent after the body (copies) */
    size_t ntrailers;
    uint64_t progress_ms;         /* last time response bytes went out (zero-window stalls) */
    struct mg_h2_stream *next, *prev;
} mg_h2_stream_t;

struct mg_h2 {
    mg_conn_t *conn;
    nghttp2_session *session;
    mg_h2_stream_t *streams;
    int nstreams;
    int in_recv;                  /* inside nghttp2_session_mem_recv: send at the end */
    int sending;
    int goaway;                   /* GOAWAY sent: no new streams */
    uint64_t flood_since;
    int resets, empty_data, control;
    struct event send_ev;         /* a send later in this loop pass (see h2_schedule) */
};

static void h2_send(mg_h2_t *h2);
static void h2_arm(mg_h2_t *h2);

/*
 * Sends at the end of this loop pass instead of now: the responses of many
 * streams (each upstream read finishes one) leave in one write, as pipelined
 * HTTP/1.1 responses do. The event is active, not timed: it runs in this
 * pass, after the events already queued.
 */
static void h2_schedule(mg_h2_t *h2)
{
    if (!(event_pending(&h2->send_ev, EV_TIMEOUT, NULL)))
        event_active(&h2->send_ev, EV_TIMEOUT, 0);
}

static void on_send_ev(evutil_socket_t fd, short what, void *arg) { h2_send(arg); }

static mg_h2_stream_t *stream_of(mg_h2_t *h2, int32_t id)
{
    return nghttp2_session_get_stream_user_data(h2->session, id);
}

static void stream_free(mg_h2_stream_t *s)
{
    mg_h2_t *h2 = s->h2;
    if (s->prev)
        s->prev->next = s->next;
    else
        h2->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    h2->nstreams--;
    if (s->held)
        evbuffer_free(s->held);
    evbuffer_free(s->out);
    for (size_t i = 0; i < s->ntrailers; i++) {
        free(s->trailers[i].name);
        free(s->trailers[i].value);
    }
    free(s->trailers);
    free(s);
}

/* The stream's request ends because the stream did (reset by the client, connection gone). */
static void stream_abort(mg_h2_stream_t *s)
{
    mg_req_t *r = s->req;
    if (!r)
        return;
    s->req = NULL;
    mg_req_abort(r);
}

/* Too much of something a client may send (RFC 9113 §10.5): GOAWAY ENHANCE_YOUR_CALM. */
static int flood(mg_h2_t *h2, int *counter, int limit, const char *what)
{
    uint64_t now = mg_now_ms();
    if (now - h2->flood_since > FLOOD_WINDOW_MS) {
        h2->flood_since = now;
        h2->resets = h2->empty_data = h2->control = 0;
    }
    if (++*counter <= limit)
        return 0;
    if (h2->goaway)
        return 1; /* said once */
    mg_log_warn(NULL, "client %s: HTTP/2 %s flood (more than %d in %d s): connection closed", h2->conn->remote,
                what, limit, FLOOD_WINDOW_MS / 1000);
    nghttp2_session_terminate_session(h2->session, NGHTTP2_ENHANCE_YOUR_CALM);
    h2->goaway = 1;
    return 1;
}

/* ---- sending ---- */

static ssize_t on_send(nghttp2_session *session, const uint8_t *data, size_t len, int flags, void *arg)
{
    mg_h2_t *h2 = arg;
    if (evbuffer_get_length(h2->conn->out) > OUT_HIGH)
        return NGHTTP2_ERR_WOULDBLOCK;
    evbuffer_add(h2->conn->out, data, len);
    return (ssize_t)len;
}

static int on_send_data(nghttp2_session *session, nghttp2_frame *frame, const uint8_t *framehd, size_t len,
                        nghttp2_data_source *source, void *arg)
{
    mg_h2_t *h2 = arg;
    mg_h2_stream_t *s = source->ptr;
    struct evbuffer *out = h2->conn->out;
    if (evbuffer_get_length(out) > OUT_HIGH)
        return NGHTTP2_ERR_WOULDBLOCK;
    evbuffer_add(out, framehd, 9);
    if (frame->data.padlen > 0) {
        uint8_t pad = (uint8_t)(frame->data.padlen - 1);
        evbuffer_add(out, &pad, 1);
    }
    evbuffer_remove_buffer(s->out, out, len); /* moves the chains: no copy */
    if (frame->data.padlen > 1) {
        static const uint8_t zeros[256];
        evbuffer_add(out, zeros, frame->data.padlen - 1);
    }
    s->progress_ms = mg_now_ms();
    if (s->req && evbuffer_get_length(s->out) < STREAM_OUT_LOW)
        s->want_drained = 1;
    return 0;
}

static ssize_t on_read_data(nghttp2_session *session, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                            nghttp2_data_source *source, void *arg)
{
    mg_h2_stream_t *s = source->ptr;
    size_t have = evbuffer_get_length(s->out);
    size_t n = have < len ? have : len;
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (n == have && s->eof) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (s->ntrailers) {
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            nghttp2_submit_trailer(session, id, s->trailers, s->ntrailers);
        }
    } else if (n == 0) {
        s->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *arg)
{
    mg_h2_t *h2 = arg;
    if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM) ||
        (frame->hd.type != NGHTTP2_DATA && frame->hd.type != NGHTTP2_HEADERS))
        return 0;
    mg_h2_stream_t *s = stream_of(h2, frame->hd.stream_id);
    if (s && s->rst_after) /* the response is out; the client need not send the rest of its body */
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
    return 0;
}

/*
 * Writes what nghttp2 has (up to the output mark), then tells the streams
 * whose output drained; what they write goes out on the next round. While
 * this runs, nested calls (a request that finishes from mg_req_output_drained)
 * return at once: the loop sends for them.
 */
static void h2_send(mg_h2_t *h2)
{
    mg_conn_t *c = h2->conn;
    if (h2->in_recv || h2->sending || c->freed)
        return;
    for (;;) {
        h2->sending = 1;
        int rc = nghttp2_session_send(h2->session);
        if (rc == 0)
            mg_conn_flush(c);
        if (c->freed)
            return; /* h2 went with it */
        h2->sending = 0;
        if (rc != 0) {
            mg_log_info(NULL, "client %s: HTTP/2 send failed: %s", c->remote, nghttp2_strerror(rc));
            mg_conn_close(c);
            return;
        }
        int32_t ids[64];
        int n = 0;
        for (mg_h2_stream_t *s = h2->streams; s && n < (int)mg_countof(ids); s = s->next)
            if (s->want_drained && s->req) {
                s->want_drained = 0;
                ids[n++] = s->id;
            }
        h2->sending = 1;
        for (int i = 0; i < n && !c->freed; i++) {
            mg_h2_stream_t *s = stream_of(h2, ids[i]); /* looked up again: an earlier one may have ended it */
            if (s && s->req)
                mg_req_output_drained(s->req);
        }
        if (c->freed)
            return;
        h2->sending = 0;
        int more = nghttp2_session_want_write(h2->session) && evbuffer_get_length(c->out) == 0;
        if (!n && !more)
            break;
    }
    if (!nghttp2_session_want_read(h2->session) && !nghttp2_session_want_write(h2->session) &&
        evbuffer_get_length(c->out) == 0) {
        mg_conn_begin_close(c); /* GOAWAY went out and nothing is left */
        return;
    }
    h2_arm(h2);
}

/* ---- receiving ---- */

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *arg)
{
    mg_h2_t *h2 = arg;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    mg_h2_stream_t *s = mg_calloc(1, sizeof(*s));
    s->h2 = h2;
    s->id = frame->hd.stream_id;
    s->cookie = -1;
    s->out = evbuffer_new();
    s->next = h2->streams;
    if (h2->streams)
        h2->streams->prev = s;
    h2->streams = s;
    h2->nstreams++;
    nghttp2_session_set_stream_user_data(session, s->id, s);
    s->req = mg_req_new(h2->conn, &mg_h2_wire, s);
    s->req->minor_version = 1;
    s->head.content_length = -1;
    s->head.headers = mg_pool_alloc(&s->req->pool, sizeof(mg_header_t) * 16);
    h2->conn->requests++;
    return 0;
}

static char *copy(mg_req_t *r, const uint8_t *p, size_t n) { return mg_pool_strndup(&r->pool, (const char *)p, n); }

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t nl,
                     const uint8_t *value, size_t vl, uint8_t flags, void *arg)
{
    mg_h2_t *h2 = arg;
    mg_h2_stream_t *s = stream_of(h2, frame->hd.stream_id);
    if (!s || !s->req || s->headers_done)
        return 0; /* trailers of a request body: not kept */
    mg_req_t *r = s->req;
    const mg_config_t *cfg = h2->conn->worker->cfg;
    s->head_bytes += nl + vl + 32; /* RFC 9113 §6.5.2's accounting */
    if (s->head_bytes > cfg->limits.max_head || s->head.num_headers >= cfg->limits.max_headers) {
        /* over the limits: 431 for the stream (RFC 9113 §10.5.1), fields no longer kept; far over
         * them, a small header block that expands to megabytes (an HPACK bomb): the connection goes */
        s->too_large = 1;
        if (s->head_bytes > 4 * cfg->limits.max_head + 65536) {
            mg_log_info(NULL, "client %s: HTTP/2 header list far over the limits (HPACK bomb?)", h2->conn->remote);
            nghttp2_session_terminate_session(session, NGHTTP2_ENHANCE_YOUR_CALM);
            h2->goaway = 1;
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        return 0;
    }
    mg_http1_request_t *p = &s->head;
    if (nl > 0 && name[0] == ':') {
        /* nghttp2 checked the pseudo-header rules (RFC 9113 §8.3): one each, before the fields */
        if (nl == 7 && memcmp(name, ":method", 7) == 0) {
            p->method = copy(r, value, vl);
            p->method_len = vl;
        } else if (nl == 5 && memcmp(name, ":path", 5) == 0) {
            p->target = copy(r, value, vl);
            p->target_len = vl;
        } else if (nl == 10 && memcmp(name, ":authority", 10) == 0) {
            p->host = copy(r, value, vl);
            p->host_len = vl;
        }
        return 0; /* :scheme: the connection's own scheme is what counts */
    }
    if (nl == 6 && memcmp(name, "cookie", 6) == 0 && s->cookie >= 0) {
        /* cookie crumbs are one field again for an HTTP/1.1 upstream (RFC 9113 §8.2.3) */
        mg_header_t *h = &p->headers[s->cookie];
        char *v = mg_pool_alloc(&r->pool, h->value_len + 2 + vl + 1);
        memcpy(v, h->value, h->value_len);
        memcpy(v + h->value_len, "; ", 2);
        memcpy(v + h->value_len + 2, value, vl);
        h->value_len += 2 + vl;
        v[h->value_len] = '\0';
        h->value = v;
        return 0;
    }
    size_t n = p->num_headers;
    if (n >= 16 && (n & (n - 1)) == 0) { /* the array doubles at each power of two */
        mg_header_t *grown = mg_pool_alloc(&r->pool, sizeof(mg_header_t) * n * 2);
        memcpy(grown, p->headers, sizeof(mg_header_t) * n);
        p->headers = grown;
    }
    mg_header_t *h = &p->headers[n];
    h->name = copy(r, name, nl);
    h->name_len = nl;
    h->value = copy(r, value, vl);
    h->value_len = vl;
    if (nl == 6 && memcmp(name, "cookie", 6) == 0)
        s->cookie = (int)n;
    else if (nl == 4 && memcmp(name, "host", 4) == 0 && !p->host) {
        p->host = h->value;
        p->host_len = vl;
    } else if (nl == 14 && memcmp(name, "content-length", 14) == 0) {
        int64_t v = 0;
        for (size_t i = 0; i < vl; i++)
            v = v * 10 + (value[i] - '0'); /* digits only: nghttp2 checked it */
        p->content_length = v;
    }
    p->num_headers = n + 1;
    return 0;
}

/* Adds Host from :authority when the client sent none, so everything that reads Host sees one. */
static void add_host(mg_h2_stream_t *s)
{
    mg_http1_request_t *p = &s->head;
    for (size_t i = 0; i < p->num_headers; i++)
        if (mg_http1_name_is(&p->headers[i], "host", 4))
            return;
    if (!p->host)
        return;
    size_t n = p->num_headers;
    if (n >= 16 && (n & (n - 1)) == 0) {
        mg_header_t *grown = mg_pool_alloc(&s->req->pool, sizeof(mg_header_t) * n * 2);
        memcpy(grown, p->headers, sizeof(mg_header_t) * n);
        p->headers = grown;
    }
    p->headers[n] = (mg_header_t){ "host", 4, p->host, p->host_len };
    p->num_headers = n + 1;
}

/* The request head is complete: route it and run it (a proxy route at once, a handler after its body). */
static void head_done(mg_h2_stream_t *s, int end_stream)
{
    mg_req_t *r = s->req;
    mg_conn_t *c = s->h2->conn;
    s->headers_done = 1;
    s->body_done = end_stream;
    mg_http1_request_t *p = &s->head;
    p->minor_version = 1;
    if (!end_stream && p->content_length < 0)
        p->flags |= MG_HTTP1_F_CHUNKED; /* a body of unknown length: chunked to an HTTP/1.1 upstream */
    if (end_stream)
        p->content_length = p->content_length < 0 ? -1 : 0;
    add_host(s);
    for (size_t i = 0; i < p->num_headers; i++)
        r->bytes_in += p->headers[i].name_len + p->headers[i].value_len + 4;
    /* the request line's limit, as HTTP/1.1 has it (RFC 9113 leaves the length to the server) */
    int status = s->too_large ? 431
               : p->method_len + p->target_len + 10 > c->worker->cfg->limits.max_line ? 414 : mg_req_route(r, p);
    if (status) {
        mg_req_reject(r, status, NULL, !end_stream);
        return;
    }
    int64_t max = r->route->max_body >= 0 ? r->route->max_body : (int64_t)c->worker->cfg->max_body;
    if (max && p->content_length > max) {
        mg_req_error(r, 413, MG_E(BODY_TOO_LARGE), NULL, 1, NULL, 0);
        return;
    }
    if (end_stream || mg_req_streams_body(r))
        mg_req_run(r);
}

static void body_end(mg_h2_stream_t *s)
{
    s->body_done = 1;
    if (s->req && (!s->held || evbuffer_get_length(s->held) == 0))
        mg_req_body_end(s->req);
}

/* Hands held body bytes to the request while it takes them; gives their window back. */
static void feed(mg_h2_stream_t *s)
{
    while (s->req && s->held && evbuffer_get_length(s->held) > 0 && mg_req_body_ready(s->req)) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(s->held, -1, NULL, &v, 1) < 1)
            break;
        size_t n = v.iov_len;
        mg_req_t *r = s->req;
        mg_req_body_data(r, v.iov_base, n);
        evbuffer_drain(s->held, n);
        nghttp2_session_consume_stream(s->h2->session, s->id, n);
        if (s->req != r)
            return; /* the request ended meanwhile */
    }
    if (s->req && s->body_done && (!s->held || evbuffer_get_length(s->held) == 0))
        mg_req_body_end(s->req);
}

static int on_data(nghttp2_session *session, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *arg)
{
    mg_h2_t *h2 = arg;
    nghttp2_session_consume_connection(session, len);
    mg_h2_stream_t *s = stream_of(h2, id);
    if (!s || !s->req) {
        nghttp2_session_consume_stream(session, id, len); /* answered already: discarded */
        return 0;
    }
    mg_req_t *r = s->req;
    s->body_total += (int64_t)len;
    int64_t max = r->route ? (r->route->max_body >= 0 ? r->route->max_body : (int64_t)h2->conn->worker->cfg->max_body) : 0;
    if (max && s->body_total > max) {
        nghttp2_session_consume_stream(session, id, len);
        if (r->resp_started) {
            r->error_kind = MG_E(BODY_TOO_LARGE);
            mg_req_break(r);
        } else {
            mg_req_error(r, 413, MG_E(BODY_TOO_LARGE), NULL, 1, NULL, 0);
        }
        return 0;
    }
    if ((s->held && evbuffer_get_length(s->held) > 0) || !mg_req_body_ready(r)) {
        if (!s->held)
            s->held = evbuffer_new();
        evbuffer_add(s->held, data, len); /* bounded by the stream window we do not give back */
        return 0;
    }
    mg_req_body_data(r, (const char *)data, len);
    nghttp2_session_consume_stream(session, id, len);
    return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *arg)
{
    mg_h2_t *h2 = arg;
    int end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    mg_h2_stream_t *s = stream_of(h2, frame->hd.stream_id);
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (!s || !s->req)
            break;
        if (!s->headers_done)
            head_done(s, end);
        else if (end)
            body_end(s); /* request trailers end the body */
        break;
    case NGHTTP2_DATA:
        if (frame->hd.length == 0 && !end && flood(h2, &h2->empty_data, MAX_EMPTY_DATA, "empty DATA"))
            break;
        if (s && end)
            body_end(s);
        break;
    case NGHTTP2_SETTINGS:
    case NGHTTP2_PING:
        flood(h2, &h2->control, MAX_CONTROL, "SETTINGS/PING");
        break;
    case NGHTTP2_RST_STREAM:
        if (s && s->req)
            flood(h2, &h2->resets, MAX_RESETS, "stream reset");
        break;
    }
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t id, uint32_t error_code, void *arg)
{
    mg_h2_t *h2 = arg;
    mg_h2_stream_t *s = stream_of(h2, id);
    if (!s)
        return 0;
    nghttp2_session_set_stream_user_data(session, id, NULL);
    stream_abort(s); /* a request still running: the client cancelled it */
    stream_free(s);
    return 0;
}

static void h2_input(mg_conn_t *c)
{
    mg_h2_t *h2 = c->h2;
    c->processing = 1;
    h2->in_recv = 1;
    ssize_t n = nghttp2_session_mem_recv(h2->session, (const uint8_t *)c->in + c->in_off, c->in_len - c->in_off);
    c->processing = 0;
    if (c->freed)
        return; /* h2 went with it */
    h2->in_recv = 0;
    if (n < 0) {
        mg_log_info(NULL, "client %s: HTTP/2: %s", c->remote, nghttp2_strerror((int)n));
        if (n == NGHTTP2_ERR_BAD_CLIENT_MAGIC || n == NGHTTP2_ERR_FLOODED || n == NGHTTP2_ERR_CALLBACK_FAILURE) {
            mg_conn_close(c);
            return;
        }
        nghttp2_session_terminate_session(h2->session, NGHTTP2_PROTOCOL_ERROR);
        mg_conn_consume(c, c->in_len - c->in_off);
    } else {
        mg_conn_consume(c, (size_t)n);
    }
    h2_send(h2);
}

/* The connection's timer, by what is going on: headers awaited, idle, or a stream that cannot send. */
static void h2_arm(mg_h2_t *h2)
{
    mg_conn_t *c = h2->conn;
    const mg_config_t *cfg = c->worker->cfg;
    if (c->freed || c->closing)
        return;
    if (h2->nstreams == 0) {
        mg_conn_arm(c, h2->conn->requests ? cfg->keepalive_timeout_ms : cfg->header_timeout_ms);
        return;
    }
    for (mg_h2_stream_t *s = h2->streams; s; s = s->next)
        if (!s->headers_done) {
            if (!mg_conn_armed(c))
                mg_conn_arm(c, cfg->header_timeout_ms); /* total, like HTTP/1.1's: a trickle cannot extend it */
            return;
        }
    for (mg_h2_stream_t *s = h2->streams; s; s = s->next)
        if (evbuffer_get_length(s->out) > 0) {
            mg_conn_arm(c, cfg->send_timeout_ms);
            return;
        }
    mg_conn_disarm(c);
}

static void h2_timeout(mg_conn_t *c)
{
    mg_h2_t *h2 = c->h2;
    const mg_config_t *cfg = c->worker->cfg;
    if (h2->nstreams == 0) {
        nghttp2_session_terminate_session(h2->session, NGHTTP2_NO_ERROR); /* idle (or no preface in time) */
        h2->goaway = 1;
        h2_send(h2);
        if (!c->freed)
            mg_conn_begin_close(c);
        return;
    }
    uint64_t now = mg_now_ms();
    for (mg_h2_stream_t *s = h2->streams, *next; s; s = next) {
        next = s->next;
        if (!s->headers_done) {
            mg_log_info(NULL, "client %s: HTTP/2 request header timeout", c->remote);
            nghttp2_session_terminate_session(h2->session, NGHTTP2_PROTOCOL_ERROR);
            h2->goaway = 1;
            break;
        }
        if (evbuffer_get_length(s->out) > 0 && now - s->progress_ms >= cfg->send_timeout_ms) {
            /* the client holds the stream's window at zero: give up on that stream only */
            mg_log_info(s->req ? s->req->trace_id : NULL, "client %s: HTTP/2 stream %d: send timeout", c->remote, s->id);
            nghttp2_submit_rst_stream(h2->session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
            stream_abort(s);
        }
    }
    h2_send(h2);
}

static void h2_drained(mg_conn_t *c)
{
    if (!c->h2->sending)
        h2_send(c->h2); /* nghttp2 may have frames it held back */
}

static void h2_writable(mg_conn_t *c) {}

static void h2_eof(mg_conn_t *c) { mg_conn_close(c); }

static void h2_drain(mg_conn_t *c)
{
    mg_h2_t *h2 = c->h2;
    if (!h2->goaway) {
        /* streams in flight finish; new ones are refused (RFC 9113 §6.8) */
        nghttp2_submit_goaway(h2->session, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h2->session),
                              NGHTTP2_NO_ERROR, NULL, 0);
        h2->goaway = 1;
    }
    h2_send(h2);
    if (!c->freed && h2->nstreams == 0)
        mg_conn_begin_close(c);
}

static void h2_closing(mg_conn_t *c)
{
    mg_h2_t *h2 = c->h2;
    while (h2->streams) {
        mg_h2_stream_t *s = h2->streams;
        nghttp2_session_set_stream_user_data(h2->session, s->id, NULL);
        stream_abort(s);
        stream_free(s);
    }
    event_del(&h2->send_ev);
    nghttp2_session_del(h2->session);
    free(h2);
    c->h2 = NULL;
}

const mg_conn_proto_t mg_h2_proto = {
    .name = "h2",
    .input = h2_input,
    .drained = h2_drained,
    .writable = h2_writable,
    .timeout = h2_timeout,
    .eof = h2_eof,
    .drain = h2_drain,
    .closing = h2_closing,
};

int mg_h2_start(mg_conn_t *c)
{
    const mg_config_t *cfg = c->worker->cfg;
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_send_callback(cb, on_send);
    nghttp2_session_callbacks_set_send_data_callback(cb, on_send_data);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_option *opt;
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_continuations(opt, 8);                   /* CONTINUATION flood */
    nghttp2_option_set_stream_reset_rate_limit(opt, MAX_RESETS, 33); /* rapid reset, nghttp2's own guard */
    nghttp2_option_set_max_outbound_ack(opt, 1000);                  /* PING/SETTINGS a client does not read */
    nghttp2_option_set_max_settings(opt, 32);
    mg_h2_t *h2 = mg_calloc(1, sizeof(*h2));
    h2->conn = c;
    h2->flood_since = mg_now_ms();
    int rc = nghttp2_session_server_new2(&h2->session, cb, h2, opt);
    nghttp2_session_callbacks_del(cb);
    nghttp2_option_del(opt);
    if (rc != 0) {
        free(h2);
        return MG_ERROR;
    }
    nghttp2_settings_entry iv[] = {
        { NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, cfg->h2_max_streams },
        { NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, cfg->h2_window },
        { NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)cfg->limits.max_head },
    };
    nghttp2_submit_settings(h2->session, NGHTTP2_FLAG_NONE, iv, mg_countof(iv));
    nghttp2_session_set_local_window_size(h2->session, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW);
    c->h2 = h2;
    event_assign(&h2->send_ev, c->worker->base, -1, 0, on_send_ev, h2);
    c->proto = &mg_h2_proto;
    c->in_max = 256 * 1024; /* nghttp2 takes all of it each pass: frames are never re-parsed */
    mg_conn_disarm(c);
    mg_conn_arm(c, cfg->header_timeout_ms); /* the preface and first request */
    if (c->in_len > c->in_off)
        h2_input(c); /* h2c: the preface is already here */
    else
        h2_send(h2);
    return MG_OK;
}

/* ---- the response encoder (mg_wire_t) ---- */

static mg_h2_stream_t *stream(mg_req_t *r) { return r->stream; }

static void nv_add(nghttp2_nv *nv, size_t *n, const char *name, size_t nl, const char *value, size_t vl)
{
    nv[*n] = (nghttp2_nv){ (uint8_t *)name, (uint8_t *)value, nl, vl, NGHTTP2_NV_FLAG_NONE };
    (*n)++;
}

/* Fields HTTP/2 forbids (RFC 9113 §8.2.2): connection-specific ones are never sent. */
static int connection_specific(const mg_header_t *h)
{
    static const char *names[] = { "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade" };
    for (size_t i = 0; i < mg_countof(names); i++)
        if (mg_http1_name_is(h, names[i], strlen(names[i])))
            return 1;
    return 0;
}

/* The head as nghttp2 name/value pairs (lowercase names: HTTP/2 requires them). */
static nghttp2_nv *head_nv(mg_req_t *r, const mg_resp_t *resp, size_t *count, char *status)
{
    nghttp2_nv *nv = mg_pool_alloc(&r->pool, sizeof(*nv) * (resp->n + 5));
    size_t n = 0;
    status[0] = (char)('0' + resp->status / 100 % 10);
    status[1] = (char)('0' + resp->status / 10 % 10);
    status[2] = (char)('0' + resp->status % 10);
    nv_add(nv, &n, ":status", 7, status, 3);
    if (!resp->has_date)
        nv_add(nv, &n, "date", 4, mg_worker_date(r->worker), 29);
    for (size_t i = 0; i < resp->n; i++) {
        const mg_header_t *h = &resp->h[i];
        if (connection_specific(h))
            continue;
        char *name = mg_pool_alloc(&r->pool, h->name_len);
        mg_lowercase(name, h->name, h->name_len);
        nv_add(nv, &n, name, h->name_len, h->value, h->value_len);
    }
    *count = n;
    return nv;
}

static void h2_head(mg_req_t *r, const mg_resp_t *resp)
{
    mg_h2_stream_t *s = stream(r);
    char status[4], cl[24];
    size_t n;
    nghttp2_nv *nv = head_nv(r, resp, &n, status);
    int body = mg_resp_body_allowed(resp->status) && r->method_bit != MG_M_HEAD;
    if (mg_resp_body_allowed(resp->status) && resp->content_length >= 0) {
        int l = snprintf(cl, sizeof(cl), "%lld", (long long)resp->content_length);
        nv_add(nv, &n, "content-length", 14, cl, (size_t)l);
    }
    size_t tl = strlen(r->trace_id);
    nv_add(nv, &n, "x-request-id", 12, r->trace_id, tl);
    /* no body to come: END_STREAM on the HEADERS (a gRPC trailers-only answer is one) */
    s->has_data = body && resp->content_length != 0 && !resp->no_body;
    nghttp2_data_provider prd = { .source.ptr = s, .read_callback = on_read_data };
    nghttp2_submit_response(s->h2->session, s->id, nv, n, s->has_data ? &prd : NULL);
    s->submitted = 1;
    s->progress_ms = mg_now_ms();
}

static void h2_interim(mg_req_t *r, const mg_resp_t *resp)
{
    mg_h2_stream_t *s = stream(r);
    char status[4];
    size_t n;
    nghttp2_nv *nv = head_nv(r, resp, &n, status);
    nghttp2_submit_headers(s->h2->session, NGHTTP2_FLAG_NONE, s->id, NULL, nv, n, NULL);
}

static void resume(mg_h2_stream_t *s)
{
    if (s->deferred) {
        s->deferred = 0;
        nghttp2_session_resume_data(s->h2->session, s->id);
    }
}

static void h2_body(mg_req_t *r, const char *data, size_t len)
{
    mg_h2_stream_t *s = stream(r);
    if (!s->has_data || len == 0)
        return;
    evbuffer_add(s->out, data, len);
    resume(s);
}

static struct evbuffer *h2_body_sink(mg_req_t *r)
{
    mg_h2_stream_t *s = stream(r);
    return s->has_data ? s->out : NULL;
}

static void h2_body_added(mg_req_t *r, size_t len) { resume(stream(r)); }

static void h2_end(mg_req_t *r, const mg_header_t *trailers, size_t n)
{
    mg_h2_stream_t *s = stream(r);
    if (n && s->has_data) {
        s->trailers = mg_calloc(n, sizeof(nghttp2_nv));
        for (size_t i = 0; i < n; i++) {
            if (connection_specific(&trailers[i]))
                continue;
            nghttp2_nv *nv = &s->trailers[s->ntrailers++];
            nv->name = (uint8_t *)mg_strndup(trailers[i].name, trailers[i].name_len);
            mg_lowercase((char *)nv->name, (const char *)nv->name, trailers[i].name_len);
            nv->namelen = trailers[i].name_len;
            nv->value = (uint8_t *)mg_strndup(trailers[i].value, trailers[i].value_len);
            nv->valuelen = trailers[i].value_len;
            nv->flags = NGHTTP2_NV_FLAG_NONE;
        }
    }
    s->eof = 1;
    resume(s);
}

static size_t h2_pending(mg_req_t *r) { return evbuffer_get_length(stream(r)->out); }

static void h2_flush(mg_req_t *r) { h2_schedule(stream(r)->h2); }

static void h2_resume_body(mg_req_t *r)
{
    mg_h2_stream_t *s = stream(r);
    feed(s);
    h2_schedule(s->h2); /* window updates */
}

static void h2_done(void *conn, void *sp, int how)
{
    mg_h2_stream_t *s = sp;
    mg_h2_t *h2 = s->h2;
    s->req = NULL;
    if (how == MG_WIRE_RESET) {
        nghttp2_submit_rst_stream(h2->session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
    } else if (!s->body_done || how == MG_WIRE_CLOSE) {
        if (nghttp2_session_get_stream_remote_close(h2->session, s->id) == 0)
            s->rst_after = 1; /* the rest of the body is not wanted: RST_STREAM(NO_ERROR) after the response */
        if (s->held)
            evbuffer_drain(s->held, evbuffer_get_length(s->held));
    }
    if (!s->submitted) /* an abort path that answered nothing */
        nghttp2_submit_rst_stream(h2->session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
    h2_schedule(h2);
}

const mg_wire_t mg_h2_wire = {
    .version = "2",
    .head = h2_head,
    .interim = h2_interim,
    .body = h2_body,
    .body_sink = h2_body_sink,
    .body_added = h2_body_added,
    .end = h2_end,
    .pending = h2_pending,
    .flush = h2_flush,
    .resume_body = h2_resume_body,
    .done = h2_done,
};
