/*
 * mg_conn — see mg_conn.h.
 *
 * Socket I/O is done here directly (recv into a flat input buffer, writev of
 * the output evbuffer) rather than through bufferevents: a keep-alive request
 * then costs one recv and one writev, with no FIONREAD ioctl and no epoll_ctl
 * churn, and the parser sees contiguous bytes without a pullup. The write
 * event is armed only when the kernel buffer is full; responses to pipelined
 * requests are flushed together at the end of the input pass.
 */
#define _GNU_SOURCE
#include "mg_conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "mg_log.h"
#include "mg_req.h"

#define LINGER_MS 2000
#define IN_INITIAL 4096
#define OUTPUT_HIGH (1024 * 1024) /* stop taking pipelined requests while this much is unsent */

static void process_input(mg_conn_t *c);
static void flush(mg_conn_t *c);

static void arm(mg_conn_t *c, uint32_t ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    evtimer_add(&c->timer, &tv);
}

static void disarm(mg_conn_t *c) { evtimer_del(&c->timer); }

static void set_reading(mg_conn_t *c, int on)
{
    if (on && !c->reading) {
        event_add(&c->rev, NULL);
        if (c->ssl && SSL_has_pending(c->ssl))
            event_active(&c->rev, EV_READ, 1); /* decrypted bytes wait in OpenSSL, not the kernel */
    } else if (!on && c->reading) {
        event_del(&c->rev);
    }
    c->reading = on ? 1 : 0;
}

static void want_write(mg_conn_t *c)
{
    if (!c->writing) {
        struct timeval tv = { c->worker->cfg->send_timeout_ms / 1000,
                              (c->worker->cfg->send_timeout_ms % 1000) * 1000 };
        event_add(&c->wev, &tv);
        c->writing = 1;
    }
}

static ssize_t tls_result(mg_conn_t *c, int n)
{
    int ww = 0;
    ssize_t r = mg_tls_result(c->ssl, n, &ww);
    if (ww)
        want_write(c);
    return r;
}

static ssize_t conn_recv(mg_conn_t *c, void *buf, size_t len)
{
    if (!c->ssl)
        return recv(c->fd, buf, len, 0);
    ssize_t n = tls_result(c, SSL_read(c->ssl, buf, len > INT_MAX ? INT_MAX : (int)len));
    if (n > 0 && SSL_has_pending(c->ssl) && c->reading)
        event_active(&c->rev, EV_READ, 1);
    return n;
}

/* Writes some of the output: bytes written, or -1 with errno. */
static int conn_send(mg_conn_t *c)
{
    if (!c->ssl)
        return evbuffer_write(c->out, c->fd);
    int ww = 0;
    int n = mg_tls_send(c->ssl, c->out, &ww);
    if (ww)
        want_write(c);
    return n;
}

/* 1: done, 0: waiting for the peer, -1: failed (the caller closes). */
static int tls_handshake(mg_conn_t *c)
{
    ssize_t n = tls_result(c, SSL_do_handshake(c->ssl));
    if (n > 0) {
        c->handshaking = 0;
        return 1;
    }
    if (n < 0 && errno == EAGAIN)
        return 0;
    mg_log_info(NULL, "client %s: TLS handshake failed", c->remote);
    return -1;
}

struct evbuffer *mg_conn_output(mg_conn_t *c) { return c->out; }

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
    event_del(&c->rev);
    event_del(&c->wev);
    if (c->ssl)
        SSL_free(c->ssl);
    close(c->fd);
    evbuffer_free(c->out);
    free(c->in);
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
 * the response before the client reads it. With TLS, close_notify goes first, so
 * the client can tell the end from a truncation. */
static void do_shutdown(mg_conn_t *c)
{
    if (c->ssl && !c->handshaking && SSL_shutdown(c->ssl) < 0)
        ERR_clear_error(); /* a stale error would be misread by the next SSL_get_error on this thread */
    shutdown(c->fd, SHUT_WR);
    set_reading(c, 1);
    arm(c, LINGER_MS);
}

static void begin_close(mg_conn_t *c)
{
    c->state = MG_CONN_CLOSING;
    disarm(c);
    if (!c->processing)
        flush(c); /* calls do_shutdown once the output is out */
}

/* Writes what the kernel takes; arms the write event for the rest. */
static void flush(mg_conn_t *c)
{
    while (evbuffer_get_length(c->out) > 0) {
        int n = conn_send(c);
        if (n > 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            want_write(c);
            return;
        }
        if (n < 0 && errno == EINTR)
            continue;
        conn_free(c); /* the client is gone (EPIPE, ECONNRESET) */
        return;
    }
    if (c->state == MG_CONN_CLOSING)
        do_shutdown(c);
    else if (c->req)
        mg_req_output_drained(c->req); /* a paused upstream may go on */
}

void mg_conn_flush(mg_conn_t *c)
{
    if (!c->freed)
        flush(c);
}

void mg_conn_reset(mg_conn_t *c)
{
    struct linger lg = { 1, 0 };
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    conn_free(c);
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
    if (c->processing)
        return; /* process_input goes on with pipelined requests and flushes at its end */
    flush(c);
    if (!c->freed && c->state == MG_CONN_IDLE)
        process_input(c);
}

/* The message of a client error the parser or the limits chose the status of. */
static const char *status_message(int status)
{
    switch (status) {
    case 414: return "request line or URI too long";
    case 417: return "expectation failed";
    case 431: return "request header fields too large";
    case 501: return "transfer coding not implemented";
    case 505: return "HTTP version not supported";
    default: return NULL; /* the kind's */
    }
}

/* Rejects the request in progress (or a new one) and closes if asked. */
static void reject(mg_conn_t *c, mg_req_t *r, int status, const mg_error_t *kind, int close)
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

static void consume(mg_conn_t *c, size_t n)
{
    c->in_off += n;
    if (c->in_off == c->in_len)
        c->in_off = c->in_len = 0;
}

/* Returns 1 when the state changed and the loop should go on. */
static int read_head(mg_conn_t *c)
{
    mg_worker_t *w = c->worker;
    const mg_config_t *cfg = w->cfg;
    size_t len = c->in_len - c->in_off;
    if (len == 0)
        return 0;
    if (c->state == MG_CONN_IDLE) {
        c->state = MG_CONN_HEAD;
        c->scanned = 0;
        arm(c, cfg->header_timeout_ms); /* total, not per read: a slowloris cannot extend it */
    }
    const char *p = c->in + c->in_off;
    size_t want = len < cfg->limits.max_head + 1 ? len : cfg->limits.max_head + 1;
    size_t from = c->scanned > 3 ? c->scanned - 3 : 0;
    if (!memmem(p + from, want - from, "\r\n\r\n", 4)) {
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
    disarm(c);
    if (rc < 0) {
        mg_log_info(NULL, "client %s: malformed request: %s", c->remote, parsed.error ? parsed.error : "?");
        reject(c, NULL, mg_http1_error_status(rc), MG_E(BAD_REQUEST), 1);
        return 0;
    }
    mg_req_t *r = mg_req_new(c);
    c->req = r;
    int status = mg_req_set_head(r, p, (size_t)rc, &parsed);
    consume(c, (size_t)rc);
    c->scanned = 0;
    int has_body = (parsed.flags & MG_HTTP1_F_CHUNKED) || parsed.content_length > 0;
    if (status) {
        /* the body was not read: the connection cannot be reused */
        reject(c, r, status, status == 404 ? MG_E(NO_ROUTE) : status == 405 ? MG_E(METHOD_NOT_ALLOWED) : MG_E(BAD_REQUEST),
               has_body || status == 400);
        return c->state == MG_CONN_IDLE;
    }
    if (!has_body) {
        c->state = MG_CONN_HANDLER;
        mg_req_run(r);
        return c->state == MG_CONN_IDLE;
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
    arm(c, cfg->body_timeout_ms);
    if (mg_req_streams_body(r)) {
        /* a proxy route starts now; its body streams to the upstream as it arrives */
        mg_req_run(r);
        if (c->req != r)
            return c->state == MG_CONN_IDLE; /* answered already (e.g. no healthy target) */
    }
    return 1;
}

static int body_complete(mg_conn_t *c)
{
    disarm(c);
    c->state = MG_CONN_HANDLER;
    mg_req_body_end(c->req);
    return c->state == MG_CONN_IDLE;
}

/* The body's consumer is full: stop reading until mg_conn_resume_body. */
static int body_pause(mg_conn_t *c)
{
    c->body_paused = 1;
    set_reading(c, 0);
    disarm(c); /* not the client's fault: no body timeout while we hold it back */
    return 0;
}

void mg_conn_resume_body(mg_conn_t *c)
{
    if (c->freed || c->state != MG_CONN_BODY || !c->body_paused)
        return;
    c->body_paused = 0;
    set_reading(c, 1);
    arm(c, c->worker->cfg->body_timeout_ms);
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
    arm(c, cfg->body_timeout_ms); /* an idle timeout: a slow upload that progresses is fine */
    const char *p = c->in + c->in_off;
    if (!c->chunked) {
        size_t n = (int64_t)len < c->body_left ? len : (size_t)c->body_left;
        consume(c, n);
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
        consume(c, used);
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
    flush(c);
    /* input was consumed: reading may resume if it stopped on a full buffer */
    if (!c->freed && !c->reading && c->state != MG_CONN_CLOSING &&
        c->in_len - c->in_off < c->worker->cfg->limits.max_head + 65536)
        set_reading(c, 1);
}

/* The peer closed its side (or reset). */
static void on_eof(mg_conn_t *c)
{
    if (c->state == MG_CONN_IDLE && evbuffer_get_length(c->out) > 0) {
        /* the client half-closed after its last request: deliver the response, then close */
        set_reading(c, 0);
        begin_close(c);
        return;
    }
    conn_free(c); /* a request in progress is aborted */
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    mg_conn_t *c = arg;
    if (c->handshaking) {
        int rc = tls_handshake(c);
        if (rc < 0)
            conn_free(c);
        if (rc <= 0)
            return;
    }
    if (c->state == MG_CONN_CLOSING) {
        char sink[4096];
        ssize_t n = conn_recv(c, sink, sizeof(sink));
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            conn_free(c);
        return;
    }
    size_t max = c->worker->cfg->limits.max_head + 65536;
    if (c->in_off > 0 && c->in_len == c->in_cap) {
        memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
        c->in_len -= c->in_off;
        c->in_off = 0;
    }
    if (c->in_len == c->in_cap) {
        if (c->in_cap >= max) {
            set_reading(c, 0); /* bounded input: the rest waits in the kernel */
            return;
        }
        c->in_cap = c->in_cap * 2 < max ? c->in_cap * 2 : max;
        c->in = mg_realloc(c->in, c->in_cap);
    }
    ssize_t n = conn_recv(c, c->in + c->in_len, c->in_cap - c->in_len);
    if (n > 0) {
        c->in_len += (size_t)n;
        if (!c->processing)
            process_input(c);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    on_eof(c);
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    mg_conn_t *c = arg;
    c->writing = 0;
    if (what & EV_TIMEOUT) {
        mg_log_info(NULL, "client %s: send timeout", c->remote);
        conn_free(c);
        return;
    }
    if (c->handshaking) {
        if (tls_handshake(c) < 0)
            conn_free(c);
        return; /* a finished handshake goes on when the request arrives */
    }
    flush(c);
    if (c->freed || c->writing)
        return;
    if (c->state == MG_CONN_IDLE && !c->processing) {
        set_reading(c, 1);
        process_input(c); /* pipelined requests waited for the output to drain */
    }
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    mg_conn_t *c = arg;
    switch (c->state) {
    case MG_CONN_HEAD:
        mg_log_info(NULL, "client %s: request header timeout", c->remote);
        reject(c, NULL, 408, MG_E(HEADER_TIMEOUT), 1);
        break;
    case MG_CONN_BODY:
        reject(c, c->req, 408, MG_E(BODY_TIMEOUT), 1);
        break;
    case MG_CONN_IDLE:
    case MG_CONN_CLOSING:
        conn_free(c);
        break;
    case MG_CONN_HANDLER:
        break; /* the request's own deadline governs */
    }
}

void mg_conn_accept(mg_worker_t *w, evutil_socket_t fd, struct sockaddr *sa, int salen, SSL_CTX *tls)
{
    SSL *ssl = NULL;
    if (tls && (!(ssl = SSL_new(tls)) || SSL_set_fd(ssl, fd) != 1)) {
        ERR_clear_error();
        SSL_free(ssl);
        close(fd);
        mg_log_error(NULL, "cannot start TLS on an accepted connection (out of memory?)");
        return;
    }
    mg_conn_t *c = mg_calloc(1, sizeof(*c));
    c->worker = w;
    c->fd = fd;
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
    c->in_cap = IN_INITIAL;
    c->in = mg_alloc(c->in_cap);
    c->out = evbuffer_new();
    event_assign(&c->rev, w->base, fd, EV_READ | EV_PERSIST, on_readable, c);
    event_assign(&c->wev, w->base, fd, EV_WRITE, on_writable, c);
    evtimer_assign(&c->timer, w->base, on_timer, c);
    if (ssl) {
        SSL_set_accept_state(ssl);
        c->ssl = ssl;
        c->handshaking = 1;
    }
    set_reading(c, 1);
    c->state = MG_CONN_IDLE;
    arm(c, w->cfg->header_timeout_ms); /* also bounds the TLS handshake */
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
        if (evbuffer_get_length(c->out) > 0)
            begin_close(c);
        else
            conn_free(c);
    }
}
