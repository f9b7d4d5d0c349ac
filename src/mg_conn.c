/*
 * mg_conn — see mg_conn.h.
 *
 * Socket I/O is done here directly (recv into a flat input buffer, writev of
 * the output evbuffer) rather than through bufferevents: a keep-alive request
 * then costs one recv and one writev, with no FIONREAD ioctl and no epoll_ctl
 * churn, and the parser sees contiguous bytes without a pullup. The write
 * event is armed only when the kernel buffer is full; responses to pipelined
 * requests (and HTTP/2 frames of many streams) are flushed together at the
 * end of the input pass. HTTP/2 uses the same I/O: nghttp2 is given the bytes
 * read here and its frames are written from the same output buffer.
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

#include "mg_h1.h"
#include "mg_h2.h"
#include "mg_log.h"

#define LINGER_MS 2000
#define IN_INITIAL MG_INBUF_SIZE

void mg_conn_arm(mg_conn_t *c, uint32_t ms) { mg_ltimer_set(&c->timer, ms); }

void mg_conn_disarm(mg_conn_t *c) { mg_ltimer_clear(&c->timer); }

int mg_conn_armed(const mg_conn_t *c) { return mg_ltimer_is_set(&c->timer); }

void mg_conn_set_reading(mg_conn_t *c, int on)
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

void mg_conn_idle(mg_conn_t *c)
{
    if (c->in && c->in_off == c->in_len) {
        mg_inbuf_put(c->in, c->in_cap);
        c->in = NULL;
        c->in_cap = c->in_off = c->in_len = 0;
    }
}

void mg_conn_consume(mg_conn_t *c, size_t n)
{
    c->in_off += n;
    if (c->in_off == c->in_len)
        c->in_off = c->in_len = 0;
}

static void on_writable(evutil_socket_t fd, short what, void *arg);

static void want_write(mg_conn_t *c)
{
    if (!c->writing) {
        struct timeval tv = { c->worker->cfg->send_timeout_ms / 1000,
                              (c->worker->cfg->send_timeout_ms % 1000) * 1000 };
        if (!c->wev) /* made the first time a write would block: most connections never need it */
            c->wev = event_new(c->worker->base, c->fd, EV_WRITE, on_writable, c);
        if (!c->wev)
            abort(); /* as mg_alloc does */
        event_add(c->wev, &tv);
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
        /* ALPN decides the protocol; without it (or http/1.1) HTTP/1.1 stays */
        if (c->http2 && mg_tls_alpn_is_h2(c->ssl) && mg_h2_start(c) != MG_OK)
            return -1;
        return 1;
    }
    if (n < 0 && errno == EAGAIN)
        return 0;
    mg_log_info(NULL, "client %s: TLS handshake failed", c->remote);
    return -1;
}

static void conn_free(mg_conn_t *c)
{
    if (c->freed)
        return;
    mg_worker_t *w = c->worker;
    c->freed = 1;
    c->proto->closing(c);
    mg_ltimer_stop(&c->timer);
    event_del(&c->rev);
    if (c->wev)
        event_free(c->wev);
    if (c->ssl)
        SSL_free(c->ssl);
    close(c->fd);
    evbuffer_free(c->out);
    mg_inbuf_put(c->in, c->in_cap);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    /* the struct itself goes at the end of this loop pass: callers up the stack may still look at it */
    c->reap_next = w->reap;
    w->reap = c;
    mg_worker_reap_soon(w);
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
    mg_conn_set_reading(c, 1);
    mg_conn_arm(c, LINGER_MS);
}

void mg_conn_begin_close(mg_conn_t *c)
{
    if (c->freed)
        return;
    c->closing = 1;
    mg_conn_disarm(c);
    if (!c->processing)
        mg_conn_flush(c); /* calls do_shutdown once the output is out */
}

void mg_conn_flush(mg_conn_t *c)
{
    if (c->freed)
        return;
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
    if (c->closing)
        do_shutdown(c);
    else
        c->proto->drained(c); /* e.g. a paused upstream may go on */
}

void mg_conn_reset(mg_conn_t *c)
{
    if (c->freed)
        return;
    struct linger lg = { 1, 0 };
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    conn_free(c);
}

static void readable(mg_conn_t *c)
{
    if (c->handshaking) {
        int rc = tls_handshake(c);
        if (rc < 0)
            conn_free(c);
        if (rc <= 0 || c->freed)
            return;
    }
    if (c->closing) {
        char sink[4096];
        ssize_t n = conn_recv(c, sink, sizeof(sink));
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            conn_free(c);
        return;
    }
    if (c->in_off > 0 && c->in_len == c->in_cap) {
        memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
        c->in_len -= c->in_off;
        c->in_off = 0;
    }
    if (!c->in) {
        /* the input buffer exists only while bytes are in flight (see mg_conn_idle) */
        c->in_cap = IN_INITIAL;
        c->in = mg_inbuf_get();
    }
    if (c->in_len == c->in_cap) {
        if (c->in_cap >= c->in_max) {
            mg_conn_set_reading(c, 0); /* bounded input: the rest waits in the kernel */
            return;
        }
        c->in_cap = c->in_cap * 2 < c->in_max ? c->in_cap * 2 : c->in_max;
        c->in = mg_realloc(c->in, c->in_cap);
    }
    ssize_t n = conn_recv(c, c->in + c->in_len, c->in_cap - c->in_len);
    if (n > 0) {
        c->in_len += (size_t)n;
        if (!c->processing)
            c->proto->input(c);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    c->proto->eof(c);
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    mg_clock_hold(); /* one clock reading for the requests this read parses, routes and forwards */
    readable(arg);
    mg_clock_release();
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
    mg_conn_flush(c);
    if (!c->freed && !c->writing && !c->closing)
        c->proto->writable(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    mg_conn_t *c = arg;
    if (!mg_ltimer_fired(&c->timer))
        return;
    if (c->closing) {
        conn_free(c); /* the lingering close is over */
        return;
    }
    c->proto->timeout(c);
}

void mg_conn_accept(mg_worker_t *w, evutil_socket_t fd, struct sockaddr *sa, int salen, SSL_CTX *tls, int http2)
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
    c->http2 = http2 ? 1 : 0;
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
        /* canonical once per connection: a v4-mapped peer of a dual-stack listener is a.b.c.d */
        if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr))
            inet_ntop(AF_INET, &a->sin6_addr.s6_addr[12], ip, sizeof(ip));
        else
            inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
        port = ntohs(a->sin6_port);
    }
    snprintf(c->remote, sizeof(c->remote), "%s:%d", ip, port);
    c->out = evbuffer_new();
    event_assign(&c->rev, w->base, fd, EV_READ | EV_PERSIST, on_readable, c);
    evtimer_assign(&c->timer.ev, w->base, on_timer, c);
    if (ssl) {
        SSL_set_accept_state(ssl);
        if (http2)
            mg_tls_offer_h2(ssl);
        c->ssl = ssl;
        c->handshaking = 1;
    }
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    mg_h1_start(c); /* HTTP/1.1 until ALPN or the client preface says h2; its header timer bounds the handshake */
    mg_conn_set_reading(c, 1);
}

void mg_conn_drain(mg_conn_t *c)
{
    c->close_after = 1;
    c->proto->drain(c);
}
