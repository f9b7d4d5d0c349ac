/*
 * mg_conn — see mg_conn.h.
 */
#define _GNU_SOURCE
#include "mg_conn.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mg_log.h"
#include "mg_req.h"

#define LINGER_MS 2000
#define OUTPUT_HIGH (1024 * 1024) /* stop taking pipelined requests while this much is unsent */

static void process_input(mg_conn_t *c);

static void arm(mg_conn_t *c, uint32_t ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    evtimer_add(&c->timer, &tv);
}

static void disarm(mg_conn_t *c) { evtimer_del(&c->timer); }

struct evbuffer *mg_conn_output(mg_conn_t *c) { return bufferevent_get_output(c->bev); }

static void conn_free(mg_conn_t *c)
{
    if (c->freed)
        return;
    mg_worker_t *w = c->worker;
    if (c->req) {
        mg_req_abort(c->req);
        c->req = NULL;
    }
    c->freed = 1;
    disarm(c);
    bufferevent_free(c->bev);
    c->bev = NULL;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    /* the struct itself goes at the end of this loop pass: callers up the stack may still look at it */
    c->reap_next = w->reap;
    w->reap = c;
    event_active(w->reap_ev, EV_TIMEOUT, 0);
    mg_worker_conn_closed(w);
}

void mg_conn_close(mg_conn_t *c) { conn_free(c); }

void mg_conn_reap(mg_worker_t *w)
{
    while (w->reap) {
        mg_conn_t *c = w->reap;
        w->reap = c->reap_next;
        free(c);
    }
}

/* Half-close after the last response, then read and discard until the peer closes
 * (lingering close): closing with unread input would send RST and could destroy
 * the response before the client reads it. */
static void do_shutdown(mg_conn_t *c)
{
    shutdown(bufferevent_getfd(c->bev), SHUT_WR);
    bufferevent_enable(c->bev, EV_READ);
    arm(c, LINGER_MS);
}

static void begin_close(mg_conn_t *c)
{
    c->state = MG_CONN_CLOSING;
    disarm(c);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        do_shutdown(c);
    /* else on_write calls do_shutdown once the output has drained */
}

void mg_conn_response_done(mg_conn_t *c, int keepalive)
{
    c->req = NULL;
    if (!keepalive) {
        begin_close(c);
        return;
    }
    c->state = MG_CONN_IDLE;
    arm(c, c->worker->cfg->keepalive_timeout_ms);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) > OUTPUT_HIGH)
        return; /* on_write resumes once the client has read its responses */
    if (!c->processing)
        process_input(c);
}

static const char *status_message(int status)
{
    switch (status) {
    case 404: return "no route matches the request";
    case 405: return "method not allowed";
    case 408: return "request timeout";
    case 413: return "request body too large";
    case 414: return "request line or URI too long";
    case 417: return "expectation failed";
    case 431: return "request header fields too large";
    case 501: return "transfer coding not implemented";
    case 505: return "HTTP version not supported";
    default: return "bad request";
    }
}

/* Rejects the request in progress (or a new one) and closes if asked. */
static void reject(mg_conn_t *c, mg_req_t *r, int status, const char *kind, int close)
{
    if (!r)
        r = mg_req_new(c);
    c->req = NULL;
    char allow[160] = "";
    if (status == 405) {
        char m[128];
        mg_methods_format(r->match.allow, m, sizeof(m));
        snprintf(allow, sizeof(allow), "Allow: %s\r\n", m);
    }
    mg_req_error(r, status, kind, status_message(status), close, status == 405 ? allow : NULL);
}

/* Returns 1 when the state changed and the loop should go on. */
static int read_head(mg_conn_t *c)
{
    mg_worker_t *w = c->worker;
    const mg_config_t *cfg = w->cfg;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t len = evbuffer_get_length(in);
    if (len == 0)
        return 0;
    if (c->state == MG_CONN_IDLE) {
        c->state = MG_CONN_HEAD;
        c->scanned = 0;
        arm(c, cfg->header_timeout_ms); /* total, not per read: a slowloris cannot extend it */
    }
    size_t want = len < cfg->limits.max_head + 1 ? len : cfg->limits.max_head + 1;
    const char *p = (const char *)evbuffer_pullup(in, (ssize_t)want);
    size_t from = c->scanned > 3 ? c->scanned - 3 : 0;
    if (!memmem(p + from, want - from, "\r\n\r\n", 4)) {
        /* not complete yet: parse only when a limit may already be exceeded */
        int overlong = want > cfg->limits.max_head ||
                       (want > cfg->limits.max_line && !memchr(p, '\n', cfg->limits.max_line));
        if (!overlong) {
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
    disarm(c);
    if (rc < 0) {
        mg_req_t *r = mg_req_new(c);
        mg_log_info(r->trace_id[0] ? r->trace_id : NULL, "client %s: malformed request: %s", c->remote,
                    parsed.error ? parsed.error : "?");
        reject(c, r, mg_http1_error_status(rc), "protocol", 1);
        return 0;
    }
    mg_req_t *r = mg_req_new(c);
    c->req = r;
    int status = mg_req_set_head(r, p, (size_t)rc, &parsed);
    evbuffer_drain(in, (size_t)rc);
    c->scanned = 0;
    int has_body = (parsed.flags & MG_HTTP1_F_CHUNKED) || parsed.content_length > 0;
    if (status) {
        /* the body was not read: the connection cannot be reused */
        reject(c, r, status, status >= 500 ? "protocol" : NULL, has_body || status == 400);
        return c->state == MG_CONN_IDLE;
    }
    if (!has_body) {
        c->state = MG_CONN_HANDLER;
        mg_req_run(r);
        return c->state == MG_CONN_IDLE;
    }
    if (parsed.content_length > (int64_t)cfg->max_body) {
        reject(c, r, 413, "body_too_large", 1);
        return 0;
    }
    if ((parsed.flags & MG_HTTP1_F_EXPECT_CONTINUE) && parsed.minor_version == 1)
        evbuffer_add(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n", 25);
    c->chunked = (parsed.flags & MG_HTTP1_F_CHUNKED) != 0;
    c->body_left = parsed.content_length;
    mg_chunked_init(&c->chunk);
    c->state = MG_CONN_BODY;
    arm(c, cfg->body_timeout_ms);
    return 1;
}

static void body_complete(mg_conn_t *c)
{
    disarm(c);
    c->state = MG_CONN_HANDLER;
    mg_req_run(c->req);
}

static int read_body(mg_conn_t *c)
{
    const mg_config_t *cfg = c->worker->cfg;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    mg_req_t *r = c->req;
    size_t len = evbuffer_get_length(in);
    if (len == 0)
        return 0;
    arm(c, cfg->body_timeout_ms); /* an idle timeout: a slow upload that progresses is fine */
    if (!c->chunked) {
        size_t n = (int64_t)len < c->body_left ? len : (size_t)c->body_left;
        evbuffer_remove_buffer(in, r->body, n);
        c->body_left -= (int64_t)n;
        r->bytes_in += n;
        if (c->body_left > 0)
            return 0;
        body_complete(c);
        return c->state == MG_CONN_IDLE;
    }
    struct evbuffer_iovec vec[8];
    int nvec = evbuffer_peek(in, -1, NULL, vec, 8);
    size_t consumed = 0;
    int rc = MG_CHUNKED_AGAIN;
    for (int i = 0; i < nvec && rc != MG_CHUNKED_DONE; i++) {
        const char *p = vec[i].iov_base;
        size_t left = vec[i].iov_len;
        while (left > 0) {
            size_t used;
            const char *data;
            size_t dlen;
            rc = mg_chunked_decode(&c->chunk, p, left, &used, &data, &dlen);
            p += used;
            left -= used;
            consumed += used;
            if (rc == MG_CHUNKED_DATA) {
                if (evbuffer_get_length(r->body) + dlen > cfg->max_body) {
                    reject(c, r, 413, "body_too_large", 1);
                    return 0;
                }
                evbuffer_add(r->body, data, dlen);
            } else if (rc == MG_CHUNKED_ERROR) {
                mg_log_info(r->trace_id, "client %s: bad chunked body: %s", c->remote, c->chunk.error);
                reject(c, r, 400, "protocol", 1);
                return 0;
            } else {
                break;
            }
        }
    }
    evbuffer_drain(in, consumed);
    r->bytes_in += consumed;
    if (rc != MG_CHUNKED_DONE)
        return nvec == 8; /* more chains than we peeked at: go round again */
    body_complete(c);
    return c->state == MG_CONN_IDLE;
}

static void process_input(mg_conn_t *c)
{
    c->processing = 1;
    for (;;) {
        int more = 0;
        if (c->state == MG_CONN_IDLE || c->state == MG_CONN_HEAD)
            more = read_head(c);
        else if (c->state == MG_CONN_BODY)
            more = read_body(c);
        if (!more)
            break;
    }
    c->processing = 0;
}

static void on_read(struct bufferevent *bev, void *arg)
{
    mg_conn_t *c = arg;
    if (c->state == MG_CONN_CLOSING) {
        struct evbuffer *in = bufferevent_get_input(bev);
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
    process_input(c);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    mg_conn_t *c = arg;
    if (c->state == MG_CONN_CLOSING) {
        do_shutdown(c);
        return;
    }
    if (c->state == MG_CONN_IDLE && !c->processing)
        process_input(c); /* pipelined requests waited for the output to drain */
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    mg_conn_t *c = arg;
    if ((what & BEV_EVENT_EOF) && c->state == MG_CONN_IDLE &&
        evbuffer_get_length(bufferevent_get_output(bev)) > 0) {
        /* the client half-closed after its last request: deliver the response, then close */
        begin_close(c);
        return;
    }
    conn_free(c); /* EOF, error or send timeout; a request in progress is aborted */
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    mg_conn_t *c = arg;
    switch (c->state) {
    case MG_CONN_HEAD:
        mg_log_info(NULL, "client %s: request header timeout", c->remote);
        reject(c, NULL, 408, "header_timeout", 1);
        break;
    case MG_CONN_BODY:
        reject(c, c->req, 408, "body_timeout", 1);
        break;
    case MG_CONN_IDLE:
    case MG_CONN_CLOSING:
        conn_free(c);
        break;
    case MG_CONN_HANDLER:
        break; /* the request's own deadline governs */
    }
}

void mg_conn_accept(mg_worker_t *w, evutil_socket_t fd, struct sockaddr *sa, int salen)
{
    mg_conn_t *c = mg_calloc(1, sizeof(*c));
    c->worker = w;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
        port = ntohs(a->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
        port = ntohs(a->sin6_port);
    }
    snprintf(c->remote, sizeof(c->remote), "%s:%d", ip, port);
    c->bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    struct timeval send_tv = { w->cfg->send_timeout_ms / 1000, (w->cfg->send_timeout_ms % 1000) * 1000 };
    bufferevent_set_timeouts(c->bev, NULL, &send_tv);
    /* bounded input: pipelined requests beyond this wait in the kernel */
    bufferevent_setwatermark(c->bev, EV_READ, 0, w->cfg->limits.max_head + 65536);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    evtimer_assign(&c->timer, w->base, on_timer, c);
    c->state = MG_CONN_IDLE;
    arm(c, w->cfg->header_timeout_ms);
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
}

void mg_conn_drain(mg_conn_t *c)
{
    c->close_after = 1;
    if (c->state == MG_CONN_IDLE) {
        if (evbuffer_get_length(bufferevent_get_output(c->bev)) > 0)
            begin_close(c);
        else
            conn_free(c);
    }
}
