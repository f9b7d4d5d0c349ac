/*
 * mg_h1 — see mg_h1.h.
 */
#define _GNU_SOURCE
#include "mg_h1.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "mg_h2.h"
#include "mg_log.h"
#include "mg_req.h"

#define OUTPUT_HIGH (1024 * 1024) /* stop taking pipelined requests while this much is unsent */

static const char H2_PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

static void process_input(mg_conn_t *c);

/* May the input loop take the next request? */
static int go_on(const mg_conn_t *c) { return !c->freed && !c->closing && c->state == MG_CONN_IDLE; }

void mg_h1_start(mg_conn_t *c)
{
    c->proto = &mg_h1_proto;
    c->state = MG_CONN_IDLE;
    c->in_max = c->worker->cfg->limits.max_head + 65536;
    mg_conn_arm(c, c->worker->cfg->header_timeout_ms); /* also bounds the TLS handshake */
}

/* The request's response is out and it was torn down: next request, keep-alive, or close. */
static void response_done(mg_conn_t *c, int keepalive)
{
    c->req = NULL;
    if (!keepalive) {
        mg_conn_begin_close(c);
        return;
    }
    c->state = MG_CONN_IDLE;
    mg_conn_arm(c, c->worker->cfg->keepalive_timeout_ms);
    if (c->processing)
        return; /* process_input goes on with pipelined requests and flushes at its end */
    mg_conn_flush(c);
    if (go_on(c))
        process_input(c);
}

/* Rejects the request in progress (or a new one) and closes if asked. */
static void reject(mg_conn_t *c, mg_req_t *r, int status, const mg_error_t *kind, int close)
{
    if (!r) {
        r = mg_req_new(c, &mg_h1_wire, NULL);
        c->req = r;
    }
    mg_req_reject(r, status, kind, close);
}

/* Is the input the start of the HTTP/2 client preface? 1 yes (complete), 0 not yet known, -1 no. */
static int preface(const mg_conn_t *c)
{
    size_t len = c->in_len - c->in_off, n = len < sizeof(H2_PREFACE) - 1 ? len : sizeof(H2_PREFACE) - 1;
    if (memcmp(c->in + c->in_off, H2_PREFACE, n) != 0)
        return -1;
    return n == sizeof(H2_PREFACE) - 1 ? 1 : 0;
}

/* The listener's address this connection came to, "ip:port" (for a log line; the buffer is the thread's). */
static const char *local_address(const mg_conn_t *c)
{
    static __thread char text[80];
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    char ip[INET6_ADDRSTRLEN + 2] = "?";
    int port = 0;
    if (getsockname(c->fd, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET6) {
            const struct sockaddr_in6 *a = (const void *)&ss;
            inet_ntop(AF_INET6, &a->sin6_addr, ip + 1, sizeof(ip) - 2);
            ip[0] = '[';
            strcat(ip, "]");
            port = ntohs(a->sin6_port);
        } else {
            const struct sockaddr_in *a = (const void *)&ss;
            inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
            port = ntohs(a->sin_port);
        }
    }
    snprintf(text, sizeof(text), "%s:%d", ip, port);
    return text;
}

/* Returns 1 when the state changed and the loop should go on. */
static int read_head(mg_conn_t *c)
{
    mg_worker_t *w = c->worker;
    const mg_config_t *cfg = w->cfg;
    size_t len = c->in_len - c->in_off;
    if (len == 0)
        return 0;
    if (c->http2 && !c->ssl && c->requests == 0) {
        /* h2c with prior knowledge: the client preface instead of a request */
        int pf = preface(c);
        if (pf == 0)
            return 0;
        if (pf == 1) {
            mg_conn_disarm(c);
            if (mg_h2_start(c) != MG_OK)
                mg_conn_close(c);
            return 0;
        }
    }
    if (c->state == MG_CONN_IDLE) {
        c->state = MG_CONN_HEAD;
        c->scanned = 0;
        mg_conn_arm(c, cfg->header_timeout_ms); /* total, not per read: a slowloris cannot extend it */
    }
    const char *p = c->in + c->in_off;
    size_t want = len < cfg->limits.max_head + 1 ? len : cfg->limits.max_head + 1;
    size_t from = c->scanned > 3 ? c->scanned - 3 : 0;
    /* a head usually ends the bytes read (no pipelining, no body yet): look there before searching */
    int ends_here = want >= 4 && memcmp(p + want - 4, "\r\n\r\n", 4) == 0;
    if (!ends_here && !memmem(p + from, want - from, "\r\n\r\n", 4)) {
        /* not complete yet: parse only when a limit may already be exceeded */
        int overlong = want > cfg->limits.max_head ||
                       (want > cfg->limits.max_line && !memchr(p, '\n', cfg->limits.max_line));
        /* the first bytes are parsed once: garbage (a TLS hello on a plain
         * port) is refused at once instead of after the header timeout */
        if (!overlong && c->scanned > 0) {
            c->scanned = want;
            return 0;
        }
    }
    mg_http1_request_t parsed = { .headers = w->hdr_scratch };
    int rc = mg_http1_parse_request(p, want, &parsed, &cfg->limits);
    if (rc == MG_HTTP1_AGAIN) {
        c->scanned = want;
        return 0;
    }
    mg_conn_disarm(c);
    if (rc < 0) {
        if (c->requests == 0 && !c->http2 && preface(c) >= 0)
            /* curl --http2-prior-knowledge shows the 505 as "Empty reply from server": the log says why */
            mg_log_info(NULL, "client %s: sent the HTTP/2 preface (h2c with prior knowledge) to a listener without "
                        "HTTP/2: answered 505 (listen { \"%s\", http2 = true } takes h2c)", c->remote,
                        local_address(c));
        else
            mg_log_info(NULL, "client %s: malformed request: %s", c->remote, parsed.error ? parsed.error : "?");
        reject(c, NULL, mg_http1_error_status(rc), MG_E(BAD_REQUEST), 1);
        return 0;
    }
    mg_req_t *r = mg_req_new(c, &mg_h1_wire, NULL);
    c->req = r;
    c->requests++;
    c->trailers_ok = 0;
    int status = mg_req_set_head(r, p, (size_t)rc, &parsed);
    mg_conn_consume(c, (size_t)rc);
    c->scanned = 0;
    int has_body = (parsed.flags & MG_HTTP1_F_CHUNKED) || parsed.content_length > 0;
    for (size_t i = 0; i < r->nheaders; i++)
        if (mg_http1_name_is(&r->headers[i], "te", 2) && memmem(r->headers[i].value, r->headers[i].value_len, "trailers", 8))
            c->trailers_ok = 1;
    if (status) {
        /* the body was not read: the connection cannot be reused */
        reject(c, r, status, NULL, has_body || status == 400);
        return go_on(c);
    }
    if (!has_body) {
        c->state = MG_CONN_HANDLER;
        mg_req_run(r);
        return go_on(c);
    }
    c->max_body = r->route->max_body >= 0 ? r->route->max_body : (int64_t)cfg->max_body;
    c->body_total = 0;
    if (c->max_body && parsed.content_length > c->max_body) {
        reject(c, r, 413, MG_E(BODY_TOO_LARGE), 1);
        return 0;
    }
    if ((parsed.flags & MG_HTTP1_F_EXPECT_CONTINUE) && parsed.minor_version == 1)
        evbuffer_add(c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    c->chunked = (parsed.flags & MG_HTTP1_F_CHUNKED) != 0;
    c->body_left = parsed.content_length;
    c->body_paused = 0;
    mg_chunked_init(&c->chunk);
    c->state = MG_CONN_BODY;
    mg_conn_arm(c, cfg->body_timeout_ms);
    if (mg_req_streams_body(r)) {
        /* a proxy route starts now; its body streams to the upstream as it arrives */
        mg_req_run(r);
        if (c->req != r)
            return go_on(c); /* answered already (e.g. no healthy target) */
    }
    return 1;
}

static int body_complete(mg_conn_t *c)
{
    mg_conn_disarm(c);
    c->state = MG_CONN_HANDLER;
    mg_req_body_end(c->req);
    return go_on(c);
}

/* The body's consumer is full: stop reading until resume_body. */
static int body_pause(mg_conn_t *c)
{
    c->body_paused = 1;
    mg_conn_set_reading(c, 0);
    mg_conn_disarm(c); /* not the client's fault: no body timeout while we hold it back */
    return 0;
}

static void resume_body(mg_req_t *r)
{
    mg_conn_t *c = r->conn;
    if (c->freed || c->state != MG_CONN_BODY || !c->body_paused)
        return;
    c->body_paused = 0;
    mg_conn_set_reading(c, 1);
    mg_conn_arm(c, c->worker->cfg->body_timeout_ms);
    if (!c->processing)
        process_input(c);
}

static int read_body(mg_conn_t *c)
{
    const mg_config_t *cfg = c->worker->cfg;
    mg_req_t *r = c->req;
    size_t len = c->in_len - c->in_off;
    if (len == 0)
        return 0;
    if (!mg_req_body_ready(r))
        return body_pause(c);
    mg_conn_arm(c, cfg->body_timeout_ms); /* an idle timeout: a slow upload that progresses is fine */
    const char *p = c->in + c->in_off;
    if (!c->chunked) {
        size_t n = (int64_t)len < c->body_left ? len : (size_t)c->body_left;
        mg_conn_consume(c, n);
        c->body_left -= (int64_t)n;
        mg_req_body_data(r, p, n);
        if (c->req != r)
            return 0; /* the request ended meanwhile (upstream error) */
        return c->body_left > 0 ? 0 : body_complete(c);
    }
    size_t left = len;
    for (;;) {
        size_t used;
        const char *data;
        size_t dlen;
        int rc = mg_chunked_decode(&c->chunk, p, left, &used, &data, &dlen);
        p += used;
        left -= used;
        mg_conn_consume(c, used);
        if (rc == MG_CHUNKED_DATA) {
            c->body_total += (int64_t)dlen;
            if (c->max_body && c->body_total > c->max_body) {
                if (r->resp_started) {
                    /* the upstream answered already: no clean answer is possible */
                    r->error_kind = MG_E(BODY_TOO_LARGE);
                    mg_req_break(r);
                } else {
                    reject(c, r, 413, MG_E(BODY_TOO_LARGE), 1); /* also cancels a proxied exchange */
                }
                return 0;
            }
            mg_req_body_data(r, data, dlen);
            if (c->req != r)
                return 0;
            if (!mg_req_body_ready(r))
                return body_pause(c);
        } else if (rc == MG_CHUNKED_ERROR) {
            mg_log_info(r->trace_id, "client %s: bad chunked body: %s", c->remote, c->chunk.error);
            reject(c, r, 400, MG_E(BAD_REQUEST), 1);
            return 0;
        } else if (rc == MG_CHUNKED_DONE) {
            return body_complete(c);
        } else {
            return 0;
        }
    }
}

static void process_input(mg_conn_t *c)
{
    c->processing = 1;
    for (;;) {
        int more = 0;
        if (c->closing || c->proto != &mg_h1_proto)
            break;
        if (c->state == MG_CONN_IDLE || c->state == MG_CONN_HEAD) {
            if (evbuffer_get_length(c->out) > OUTPUT_HIGH)
                break; /* the client is not reading its responses: wait for the output to drain */
            more = read_head(c);
        } else if (c->state == MG_CONN_BODY) {
            more = read_body(c);
        }
        if (!more || c->freed)
            break;
    }
    c->processing = 0;
    if (c->freed)
        return;
    if (c->proto != &mg_h1_proto) {
        /*
         * The connection changed protocols in this pass (a WebSocket handler's
         * 101, a tunnel, h2c): the pass held back the flush, so what the new
         * protocol queued meanwhile (the 101, frames a handler sent before its
         * first wait, a close) goes out now, and bytes the client sent behind
         * its head are the new protocol's to read.
         */
        mg_conn_flush(c);
        if (!c->freed && c->in_len > c->in_off)
            c->proto->input(c);
        return;
    }
    if (c->state == MG_CONN_IDLE)
        mg_conn_idle(c); /* a keep-alive connection waiting for its next request holds no buffer */
    mg_conn_flush(c);
    /* input was consumed: reading may resume if it stopped on a full buffer */
    if (!c->freed && !c->reading && !c->closing && c->in_len - c->in_off < c->in_max)
        mg_conn_set_reading(c, 1);
}

/* The peer closed its side (or reset). */
static void on_eof(mg_conn_t *c)
{
    if (c->state == MG_CONN_IDLE && evbuffer_get_length(c->out) > 0) {
        /* the client half-closed after its last request: deliver the response, then close */
        mg_conn_set_reading(c, 0);
        mg_conn_begin_close(c);
        return;
    }
    mg_conn_close(c); /* a request in progress is aborted */
}

static void on_drained(mg_conn_t *c)
{
    if (c->req)
        mg_req_output_drained(c->req); /* a paused upstream may go on */
}

static void on_writable(mg_conn_t *c)
{
    if (c->state == MG_CONN_IDLE && !c->processing) {
        mg_conn_set_reading(c, 1);
        process_input(c); /* pipelined requests waited for the output to drain */
    }
}

static void on_timeout(mg_conn_t *c)
{
    switch (c->state) {
    case MG_CONN_HEAD:
        mg_log_info(NULL, "client %s: request header timeout", c->remote);
        reject(c, NULL, 408, MG_E(HEADER_TIMEOUT), 1);
        break;
    case MG_CONN_BODY:
        reject(c, c->req, 408, MG_E(BODY_TIMEOUT), 1);
        break;
    case MG_CONN_IDLE:
        mg_conn_close(c);
        break;
    case MG_CONN_HANDLER:
        break; /* the request's own deadline governs */
    }
}

static void on_drain(mg_conn_t *c)
{
    if (c->state == MG_CONN_IDLE) {
        if (evbuffer_get_length(c->out) > 0)
            mg_conn_begin_close(c);
        else
            mg_conn_close(c);
    }
}

static void on_closing(mg_conn_t *c)
{
    if (c->req) {
        mg_req_t *r = c->req;
        c->req = NULL;
        mg_req_abort(r);
    }
}

const mg_conn_proto_t mg_h1_proto = {
    .name = "http/1.1",
    .input = process_input,
    .drained = on_drained,
    .writable = on_writable,
    .timeout = on_timeout,
    .eof = on_eof,
    .drain = on_drain,
    .closing = on_closing,
};

/* ---- the response encoder ---- */

static char *put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

#define PUT_LIT(p, lit) put((p), (lit), sizeof(lit) - 1)

static char *put_uint(char *p, uint64_t v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

void mg_h1_put_head(struct evbuffer *out, const mg_str_t *start, size_t nstart, const mg_header_t *h, size_t n,
                    const char *end, size_t end_len)
{
    size_t total = end_len;
    for (size_t i = 0; i < nstart; i++)
        total += start[i].n;
    for (size_t i = 0; i < n; i++)
        total += h[i].name_len + h[i].value_len + 4;
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(out, (ev_ssize_t)total, &v, 1) != 1)
        abort(); /* libevent could not allocate: as mg_alloc does */
    char *p = v.iov_base;
    for (size_t i = 0; i < nstart; i++)
        p = put(p, start[i].p, start[i].n);
    for (size_t i = 0; i < n; i++) {
        p = put(p, h[i].name, h[i].name_len);
        p = PUT_LIT(p, ": ");
        p = put(p, h[i].value, h[i].value_len);
        p = PUT_LIT(p, "\r\n");
    }
    p = put(p, end, end_len);
    v.iov_len = total;
    evbuffer_commit_space(out, &v, 1);
}

/* The status line (with the upstream's reason when it has one). */
static char *status_line(char *p, const mg_resp_t *resp)
{
    p = PUT_LIT(p, "HTTP/1.1 ");
    p = put_uint(p, (uint64_t)resp->status);
    *p++ = ' ';
    if (resp->reason && resp->reason_len && resp->reason_len < 128)
        return put(p, resp->reason, resp->reason_len);
    const char *why = mg_resp_reason(resp->status);
    return put(p, why, strlen(why));
}

/*
 * One head for every response (no printf: this runs once per response):
 * status line, Date (unless the head has one), the fields, the framing,
 * X-Request-ID, Connection.
 */
static void h1_head(mg_req_t *r, const mg_resp_t *resp)
{
    mg_conn_t *c = r->conn;
    int head = r->method_bit == MG_M_HEAD;
    int64_t length = resp->no_body && resp->content_length < 0 ? 0 : resp->content_length;
    if (!mg_resp_body_allowed(resp->status))
        c->resp_framing = MG_H1_NONE;
    else if (length >= 0)
        c->resp_framing = MG_H1_CL;
    else if (head)
        c->resp_framing = MG_H1_NONE; /* nothing follows and no length is known: announce none */
    else
        c->resp_framing = r->minor_version == 1 ? MG_H1_CHUNKED : MG_H1_CLOSE;
    c->resp_keepalive = !r->close && !c->close_after && !(r->flags & MG_HTTP1_F_CONN_CLOSE) && r->body_complete &&
                        (r->minor_version == 1 || (r->flags & MG_HTTP1_F_CONN_KEEPALIVE)) &&
                        c->resp_framing != MG_H1_CLOSE;
    char start[256], end[256];
    char *p = status_line(start, resp);
    if (!resp->has_date) {
        p = PUT_LIT(p, "\r\nDate: ");
        p = put(p, mg_worker_date(r->worker), 29);
    }
    p = PUT_LIT(p, "\r\n");
    mg_str_t line = { start, (size_t)(p - start) };
    p = end;
    if (c->resp_framing == MG_H1_CL) {
        p = PUT_LIT(p, "Content-Length: ");
        p = put_uint(p, (uint64_t)length);
        p = PUT_LIT(p, "\r\n");
    } else if (c->resp_framing == MG_H1_CHUNKED) {
        p = PUT_LIT(p, "Transfer-Encoding: chunked\r\n");
    }
    p = PUT_LIT(p, "X-Request-ID: ");
    size_t tl = strlen(r->trace_id);
    p = put(p, r->trace_id, tl < 128 ? tl : 128);
    if (!c->resp_keepalive)
        p = PUT_LIT(p, "\r\nConnection: close");
    else if (r->minor_version == 0)
        p = PUT_LIT(p, "\r\nConnection: keep-alive");
    p = PUT_LIT(p, "\r\n\r\n");
    mg_h1_put_head(c->out, &line, 1, resp->h, resp->n, end, (size_t)(p - end));
    if (head)
        c->resp_framing = MG_H1_NONE; /* the body is not sent, whatever was announced */
}

static void h1_interim(mg_req_t *r, const mg_resp_t *resp)
{
    if (r->minor_version != 1)
        return; /* an HTTP/1.0 client cannot take a 1xx */
    char buf[160];
    char *p = status_line(buf, resp);
    p = PUT_LIT(p, "\r\n");
    mg_str_t line = { buf, (size_t)(p - buf) };
    mg_h1_put_head(r->conn->out, &line, 1, resp->h, resp->n, "\r\n", 2);
}

static void h1_body(mg_req_t *r, const char *data, size_t len)
{
    mg_conn_t *c = r->conn;
    if (len == 0 || c->resp_framing == MG_H1_NONE)
        return; /* an empty chunk would end a chunked body */
    if (c->resp_framing == MG_H1_CHUNKED) {
        char size[24];
        int n = snprintf(size, sizeof(size), "%zx\r\n", len);
        evbuffer_add(c->out, size, (size_t)n);
        evbuffer_add(c->out, data, len);
        evbuffer_add(c->out, "\r\n", 2);
    } else {
        evbuffer_add(c->out, data, len);
    }
}

static struct evbuffer *h1_body_sink(mg_req_t *r)
{
    mg_conn_t *c = r->conn;
    return c->resp_framing == MG_H1_CL || c->resp_framing == MG_H1_CLOSE ? c->out : NULL;
}

static void h1_body_added(mg_req_t *r, size_t len) {}

static void h1_end(mg_req_t *r, const mg_header_t *trailers, size_t n)
{
    mg_conn_t *c = r->conn;
    if (c->resp_framing == MG_H1_CHUNKED) {
        /* only a client that said TE: trailers gets them (RFC 9110 §6.5.1) */
        mg_str_t last = { "0\r\n", 3 };
        mg_h1_put_head(c->out, &last, 1, trailers, c->trailers_ok ? n : 0, "\r\n", 2);
    }
    /* a request body the upstream did not wait for is still on the wire: close */
    c->resp_keepalive = c->resp_keepalive && r->body_complete && !r->close;
}

static size_t h1_pending(mg_req_t *r) { return evbuffer_get_length(r->conn->out); }

static void h1_flush(mg_req_t *r) { mg_conn_flush(r->conn); }

static void h1_upgrade(mg_req_t *r, const mg_resp_t *resp)
{
    mg_conn_t *c = r->conn;
    char buf[192], end[192];
    char *p = status_line(buf, resp);
    p = PUT_LIT(p, "\r\n");
    mg_str_t line = { buf, (size_t)(p - buf) };
    p = PUT_LIT(end, "X-Request-ID: ");
    size_t tl = strlen(r->trace_id);
    p = put(p, r->trace_id, tl < 128 ? tl : 128);
    p = PUT_LIT(p, "\r\n\r\n");
    mg_h1_put_head(c->out, &line, 1, resp->h, resp->n, end, (size_t)(p - end));
    /* the connection is no longer HTTP/1.1: no request of ours on it, no timer of ours */
    c->req = NULL;
    c->resp_keepalive = 0;
    mg_conn_disarm(c);
}

static void h1_done(void *conn, void *stream, int how)
{
    mg_conn_t *c = conn;
    if (how == MG_WIRE_RESET) {
        c->req = NULL;
        mg_conn_reset(c);
        return;
    }
    response_done(c, how == MG_WIRE_KEEP && c->resp_keepalive);
}

const mg_wire_t mg_h1_wire = {
    .version = "1.1",
    .head = h1_head,
    .interim = h1_interim,
    .body = h1_body,
    .body_sink = h1_body_sink,
    .body_added = h1_body_added,
    .end = h1_end,
    .pending = h1_pending,
    .flush = h1_flush,
    .resume_body = resume_body,
    .upgrade = h1_upgrade,
    .done = h1_done,
};
