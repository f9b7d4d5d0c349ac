/*
 * mg_upstream — see mg_upstream.h.
 */
#define _GNU_SOURCE
#include "mg_upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "mg_csema.h"
#include "mg_h2up.h"
#include "mg_log.h"

#define UPCONN_IN_INITIAL MG_INBUF_SIZE

int mg_upstream_resolve(mg_upstream_t *up, char *err, size_t errlen)
{
    for (int i = 0; i < up->ntargets; i++) {
        mg_target_t *t = &up->targets[i];
        char host[256];
        const char *colon = strrchr(t->authority, ':');
        size_t hl = (size_t)(colon - t->authority);
        if (!colon || hl >= sizeof(host)) {
            snprintf(err, errlen, "upstream %s: bad target %s", up->name, t->text);
            return MG_ERROR;
        }
        memcpy(host, t->authority, hl);
        host[hl] = '\0';
        char *h = host;
        if (h[0] == '[') {
            h++;
            h[strlen(h) - 1] = '\0';
        }
        t->port = atoi(colon + 1);
        free(t->host);
        t->host = strdup(h);
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                  .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV }, *res;
        if (getaddrinfo(h, colon + 1, &hints, &res) == 0) {
            memcpy(&t->ss, res->ai_addr, res->ai_addrlen);
            t->len = res->ai_addrlen;
            freeaddrinfo(res);
            continue;
        }
        /* a host name: letters, digits, '-' and '.' only; resolved by the worker */
        for (const char *c = h; *c; c++) {
            if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
                  *c == '-' || *c == '.')) {
                snprintf(err, errlen, "upstream %s: target %s is neither an IP address nor a host name",
                         up->name, t->text);
                return MG_ERROR;
            }
        }
        t->hostname = strdup(h);
    }
    return MG_OK;
}

/* ---- non-blocking resolution (evdns), refreshed on TTL ---- */

static void resolve(mg_target_t *t);

static void on_dns_timer(evutil_socket_t fd, short what, void *arg) { resolve(arg); }

static void resolve_later(mg_target_t *t, int seconds)
{
    struct timeval tv = { seconds, 0 };
    if (!t->dns_timer)
        t->dns_timer = evtimer_new(t->up->base, on_dns_timer, t);
    evtimer_add(t->dns_timer, &tv);
}

static void resolved(mg_target_t *t, const struct sockaddr *sa, socklen_t len, int ttl)
{
    int first = t->len == 0;
    memcpy(&t->ss, sa, len);
    t->len = len;
    if (first)
        mg_log_info(NULL, "upstream %s: target %s resolved", t->up->name, t->text);
    /* re-resolve when the record expires: at least every second, at most hourly */
    resolve_later(t, ttl < 1 ? 1 : ttl > 3600 ? 3600 : ttl);
}

static void unresolved(mg_target_t *t, const char *why)
{
    /* keep the last good address; a target never resolved stays unusable */
    mg_log_warn(NULL, "upstream %s: cannot resolve %s: %s%s", t->up->name, t->hostname, why,
                t->len ? " (keeping the previous address)" : "");
    resolve_later(t, 5);
}

static void on_gai(int result, struct evutil_addrinfo *res, void *arg)
{
    mg_target_t *t = arg;
    t->gai_req = NULL;
    if (result == EVUTIL_EAI_CANCEL)
        return;
    if (result != 0 || !res) {
        unresolved(t, evutil_gai_strerror(result));
        return;
    }
    resolved(t, res->ai_addr, (socklen_t)res->ai_addrlen, 60); /* /etc/hosts has no TTL */
    evutil_freeaddrinfo(res);
}

static void on_a(int result, char type, int count, int ttl, void *addresses, void *arg)
{
    mg_target_t *t = arg;
    t->dns_req = NULL;
    if (result == DNS_ERR_CANCEL)
        return;
    if (result == DNS_ERR_NONE && type == DNS_IPv4_A && count > 0) {
        struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)t->port) };
        memcpy(&sin.sin_addr, addresses, 4);
        resolved(t, (struct sockaddr *)&sin, sizeof(sin), ttl);
        return;
    }
    /* not in DNS (or no A record): evdns_getaddrinfo also reads /etc/hosts and AAAA */
    struct evutil_addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    char port[8];
    snprintf(port, sizeof(port), "%d", t->port);
    t->gai_req = evdns_getaddrinfo(t->up->dns, t->hostname, port, &hints, on_gai, t);
}

static void resolve(mg_target_t *t)
{
    if (t->dns_req || t->gai_req)
        return;
    if (strcmp(t->hostname, "localhost") == 0) {
        /* no resolver needed, and it must work with no network at all */
        struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)t->port) };
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        memcpy(&t->ss, &sin, sizeof(sin));
        t->len = sizeof(sin);
        return;
    }
    t->dns_req = t->up->dns ? evdns_base_resolve_ipv4(t->up->dns, t->hostname, DNS_QUERY_NO_SEARCH, on_a, t)
                            : NULL;
    if (!t->dns_req)
        unresolved(t, "resolver unavailable");
}

static int usable(const mg_target_t *t, uint64_t now)
{
    if (t->active_down || t->len == 0)
        return 0;
    if (t->ejected_until == 0)
        return 1;
    /* after the ejection time one trial request may go through */
    return now >= t->ejected_until && !t->trial;
}

int mg_target_usable(const mg_target_t *t) { return usable(t, mg_now_ms()); }

/* No target is usable: the ejected one whose ejection ends first, as nginx keeps trying a single server. */
static mg_target_t *fallback(mg_upstream_t *up)
{
    mg_target_t *best = NULL;
    for (int i = 0; i < up->ntargets; i++) {
        mg_target_t *t = &up->targets[i];
        if (t->active_down || t->len == 0 || !t->ejected_until)
            continue;
        if (!best || t->ejected_until < best->ejected_until)
            best = t;
    }
    return best;
}

/* The balancer's choice among the usable targets outside `avoid` (NULL: none). */
static mg_target_t *choose(mg_upstream_t *up, const char *hash, size_t hash_len, uint64_t avoid, uint64_t now)
{
    int n = up->ntargets;
    mg_target_t *best = NULL;
#define SKIP(t) (!usable((t), now) || (mg_target_bit(t) & avoid))
    if (up->balance == MG_BALANCE_LEAST_CONN) {
        for (int i = 0; i < n; i++) {
            /* rotate the start so ties spread like round robin */
            mg_target_t *t = &up->targets[(up->rr + (unsigned)i) % (unsigned)n];
            if (SKIP(t))
                continue;
            if (!best || t->inflight < best->inflight)
                best = t;
        }
        up->rr++;
    } else {
        unsigned start = up->balance == MG_BALANCE_HASH && hash ? mg_hash(hash, hash_len) : up->rr++;
        for (int i = 0; i < n && !best; i++) {
            mg_target_t *t = &up->targets[(start + (unsigned)i) % (unsigned)n];
            if (!SKIP(t))
                best = t;
        }
    }
#undef SKIP
    return best;
}

mg_target_t *mg_upstream_pick(mg_upstream_t *up, const char *hash, size_t hash_len, uint64_t avoid,
                              unsigned flags)
{
    uint64_t now = mg_now_ms();
    mg_target_t *best = choose(up, hash, hash_len, avoid, now);
    /* a retry that must go elsewhere (MG_PICK_OTHER) gets a usable target outside `avoid` or none */
    if (!best && !(flags & MG_PICK_OTHER)) {
        if (avoid)
            best = choose(up, hash, hash_len, 0, now);
        if (!best)
            return fallback(up); /* not a trial: the trial rule is for when others carry the load */
    }
    if (best && best->ejected_until)
        best->trial = 1;
    return best;
}

/* Would another target of t's upstream take a request now? */
static int others_usable(const mg_target_t *t, uint64_t now)
{
    const mg_upstream_t *up = t->up;
    for (int i = 0; i < up->ntargets; i++)
        if (&up->targets[i] != t && usable(&up->targets[i], now))
            return 1;
    return 0;
}

void mg_target_unpick(mg_target_t *t) { t->trial = 0; }

void mg_target_report(mg_target_t *t, int ok)
{
    mg_upstream_t *up = t->up;
    t->trial = 0;
    if (ok) {
        if (t->ejected_until)
            mg_log_info(NULL, "upstream %s: target %s is healthy again", up->name, t->text);
        t->fails = 0;
        t->ejected_until = 0;
        return;
    }
    t->failures++;
    t->fails++;
    if (up->passive_failures > 0 && t->fails >= up->passive_failures) {
        uint64_t now = mg_now_ms();
        if (!others_usable(t, now)) {
            /*
             * The last usable target is never ejected: refusing every request
             * with 503 for the ejection time would be worse than trying it
             * (it may be back at the next request). It stays in service, with
             * no trial gate (one request at a time would starve it).
             */
            if (t->fails == up->passive_failures || t->ejected_until)
                mg_log_warn(NULL, "upstream %s: target %s failed %d times in a row; not ejected: it is the "
                            "upstream's last usable target", up->name, t->text, t->fails);
            t->ejected_until = 0;
            return;
        }
        if (!t->ejected_until)
            mg_log_warn(NULL, "upstream %s: target %s ejected for %u ms after %d consecutive failures",
                        up->name, t->text, up->eject_ms, t->fails);
        t->ejected_until = mg_now_ms() + up->eject_ms;
    }
}

/* ---- connections ---- */

static void conn_destroy(mg_upconn_t *uc)
{
    if (uc->ssl) {
        /* close_notify, best effort: the socket is closed right after */
        if (uc->secure && !uc->tls_broken && SSL_shutdown(uc->ssl) < 0)
            ERR_clear_error();
        SSL_free(uc->ssl);
    }
    event_del(&uc->rev);
    event_del(&uc->wev);
    mg_ltimer_stop(&uc->timer);
    if (uc->fd >= 0)
        close(uc->fd);
    evbuffer_free(uc->out);
    mg_inbuf_put(uc->in, uc->in_cap);
    free(uc);
}

static void unlink_idle(mg_upconn_t *uc)
{
    mg_target_t *t = uc->target;
    for (mg_upconn_t **pp = &t->idle; *pp; pp = &(*pp)->next_idle) {
        if (*pp == uc) {
            *pp = uc->next_idle;
            t->nidle--;
            return;
        }
    }
}

/* While pooled, any readability (the upstream closed it, or sent garbage) or the idle timeout ends it. */
static void idle_end(mg_upconn_t *uc)
{
    unlink_idle(uc);
    conn_destroy(uc);
}

/* An idle TLS connection may get post-handshake messages (a session ticket, a key update): no reason to close it. */
static int tls_housekeeping(mg_upconn_t *uc)
{
    char b[1];
    int ww = 0;
    ssize_t n = mg_tls_result(uc->ssl, SSL_read(uc->ssl, b, 1), &ww);
    return n < 0 && errno == EAGAIN && !ww;
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    mg_upconn_t *uc = arg;
    mg_clock_hold(); /* one clock reading for the response this read relays and the request it ends */
    if (uc->handler)
        uc->handler(uc, MG_UC_READ);
    else if (!(uc->ssl && tls_housekeeping(uc)))
        idle_end(uc);
    mg_clock_release();
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    mg_upconn_t *uc = arg;
    if (uc->handler)
        uc->handler(uc, (what & EV_TIMEOUT) ? MG_UC_SEND_TIMEOUT : MG_UC_WRITE);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    mg_upconn_t *uc = arg;
    if (!mg_ltimer_fired(&uc->timer))
        return;
    if (uc->handler)
        uc->handler(uc, MG_UC_TIMER);
    else
        idle_end(uc);
}

/* Logs why the TLS connection failed; returns MG_UC_TLS_UNTRUSTED or MG_UC_TLS_FAILED. */
static int tls_failure(mg_upconn_t *uc)
{
    uc->tls_broken = 1;
    char detail[256] = "the connection was closed";
    unsigned long code = ERR_peek_last_error();
    if (code)
        ERR_error_string_n(code, detail, sizeof(detail));
    ERR_clear_error();
    mg_target_t *t = uc->target;
    const char *untrusted = mg_tls_verify_failure(uc->ssl);
    if (untrusted) {
        mg_log_warn(NULL, "upstream %s: the certificate of %s is not trusted for '%s': %s", t->up->name,
                    t->text, t->up->tls_name ? t->up->tls_name : t->host, untrusted);
        return MG_UC_TLS_UNTRUSTED;
    }
    mg_log_warn(NULL, "upstream %s: TLS handshake with %s failed: %s", t->up->name, t->text, detail);
    return MG_UC_TLS_FAILED;
}

/* Decrypted bytes waiting in OpenSSL, not the kernel, would never wake the read event. */
static void wake_if_pending(mg_upconn_t *uc)
{
    if (uc->ssl && SSL_has_pending(uc->ssl))
        event_active(&uc->rev, EV_READ, 1);
}

void mg_upconn_read(mg_upconn_t *uc, int on)
{
    if (on) {
        if (!uc->reading) /* a pooled connection's read interest stays registered: nothing to do per request */
            event_add(&uc->rev, NULL);
        uc->reading = 1;
        wake_if_pending(uc);
    } else if (uc->reading) {
        event_del(&uc->rev);
        uc->reading = 0;
    }
}

ssize_t mg_upconn_readv(mg_upconn_t *uc, struct iovec *iov, int n)
{
    if (!uc->ssl)
        return readv(uc->fd, iov, n);
    int ww = 0;
    size_t len = iov[0].iov_len > INT_MAX ? INT_MAX : iov[0].iov_len;
    int rc = SSL_read(uc->ssl, iov[0].iov_base, (int)len);
    /* TLS 1.3: the client's handshake ends before the server has checked
     * it, so a refusal (e.g. no client certificate) arrives as the first read */
    if (rc <= 0 && !uc->tls_data && SSL_get_error(uc->ssl, rc) == SSL_ERROR_SSL)
        uc->tls_rejected = tls_failure(uc) == MG_UC_TLS_FAILED;
    ssize_t r = mg_tls_result(uc->ssl, rc, &ww);
    if (r < 0 && errno == ECONNRESET)
        uc->tls_broken = 1;
    if (r > 0) {
        uc->tls_data = 1;
        if (event_pending(&uc->rev, EV_READ, NULL))
            wake_if_pending(uc);
    }
    return r;
}

int mg_upconn_send(mg_upconn_t *uc)
{
    if (!uc->ssl)
        return evbuffer_write(uc->out, uc->fd);
    int ww = 0;
    int n = mg_tls_send(uc->ssl, uc->out, &ww);
    if (n < 0 && errno == ECONNRESET)
        uc->tls_broken = 1;
    return n;
}

int mg_upconn_handshake(mg_upconn_t *uc)
{
    int rc = SSL_do_handshake(uc->ssl);
    if (rc == 1) {
        uc->secure = 1;
        return 1;
    }
    int e = SSL_get_error(uc->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        if (e == SSL_ERROR_WANT_WRITE)
            mg_upconn_wait_write(uc, 0);
        else
            mg_upconn_read(uc, 1);
        return 0;
    }
    return tls_failure(uc);
}

void mg_upconn_wait_write(mg_upconn_t *uc, uint32_t ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    event_add(&uc->wev, ms ? &tv : NULL);
}

void mg_upconn_timer(mg_upconn_t *uc, uint32_t ms)
{
    if (ms)
        mg_ltimer_set(&uc->timer, ms);
    else
        mg_ltimer_clear(&uc->timer);
}

int mg_upconn_timer_set(const mg_upconn_t *uc) { return mg_ltimer_is_set(&uc->timer); }

void mg_upconn_input(mg_upconn_t *uc)
{
    if (!uc->in) {
        uc->in_cap = UPCONN_IN_INITIAL;
        uc->in = mg_inbuf_get();
        uc->in_off = uc->in_len = 0;
    }
}

void mg_upconn_close(mg_upconn_t *uc)
{
    conn_destroy(uc);
}

void mg_upconn_detach(mg_upconn_t *uc, void (*handler)(mg_upconn_t *, int), void *owner)
{
    uc->target = NULL;
    uc->handler = handler;
    uc->owner = owner;
    mg_inbuf_put(uc->in, uc->in_cap);
    uc->in = NULL;
    uc->in_off = uc->in_len = uc->in_cap = 0;
    uc->tls_data = 1; /* past the handshake: a TLS read error is never a handshake refusal (which names the target) */
}

void mg_upconn_release(mg_upconn_t *uc)
{
    mg_target_t *t = uc->target;
    mg_upstream_t *up = t->up;
    uc->handler = NULL;
    uc->owner = NULL;
    event_del(&uc->wev);
    if (t->nidle >= up->max_idle || uc->requests >= up->max_requests || uc->in_len != uc->in_off ||
        evbuffer_get_length(uc->out) > 0 || (uc->ssl && SSL_has_pending(uc->ssl))) {
        conn_destroy(uc);
        return;
    }
    mg_inbuf_put(uc->in, uc->in_cap); /* nothing unread (checked above): the next lessee gets a buffer when it reads */
    uc->in = NULL;
    uc->in_off = uc->in_len = uc->in_cap = 0;
    mg_upconn_read(uc, 1); /* still (or again) registered: a close by the upstream ends it at once */
    mg_upconn_timer(uc, up->idle_timeout_ms);
    uc->next_idle = t->idle;
    t->idle = uc;
    t->nidle++;
}

/*
 * Has the upstream closed (or written on) this idle connection since its last
 * event? Its read event would say so at the next loop pass; a peek says now.
 * Bytes on an idle TLS connection may be a session ticket: only EOF and
 * errors count there.
 */
static int idle_dead(const mg_upconn_t *uc)
{
    char b;
    ssize_t n = recv(uc->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0)
        return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
    return n == 0 || !uc->ssl;
}

mg_upconn_t *mg_upstream_lease(mg_target_t *t, void (*handler)(mg_upconn_t *, int), void *owner,
                               unsigned flags)
{
    mg_upconn_t *uc;
    while (!(flags & MG_LEASE_FRESH) && (uc = t->idle)) {
        t->idle = uc->next_idle;
        t->nidle--;
        uc->next_idle = NULL;
        if ((flags & MG_LEASE_CHECK) && idle_dead(uc)) {
            conn_destroy(uc);
            continue;
        }
        uc->reused = 1;
        uc->handler = handler;
        uc->owner = owner;
        mg_ltimer_clear(&uc->timer); /* the idle timeout no longer applies */
        return uc;
    }
    int fd = socket(t->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    uc = mg_calloc(1, sizeof(*uc));
    uc->fd = fd;
    uc->target = t;
    uc->handler = handler;
    uc->owner = owner;
    uc->out = evbuffer_new();
    event_assign(&uc->rev, t->up->base, fd, EV_READ | EV_PERSIST, on_read, uc);
    event_assign(&uc->wev, t->up->base, fd, EV_WRITE, on_write, uc);
    evtimer_assign(&uc->timer.ev, t->up->base, on_timer, uc);
    if (t->up->tls) {
        uc->ssl = mg_tls_client_ssl(t->up->tls, fd, t->up->tls_name ? t->up->tls_name : t->host, &t->tls_session);
        if (!uc->ssl) {
            conn_destroy(uc);
            errno = ENOMEM;
            return NULL;
        }
    }
    if (connect(fd, (struct sockaddr *)&t->ss, t->len) == 0) {
        uc->connected = 1;
    } else if (errno != EINPROGRESS) {
        int e = errno;
        conn_destroy(uc);
        errno = e;
        return NULL;
    }
    return uc;
}

int mg_upstream_idle_count(const mg_upstream_t *up)
{
    int n = 0;
    for (int i = 0; i < up->ntargets; i++)
        n += up->targets[i].nidle;
    return n;
}

/* ---- active health checks ---- */

enum { CHECK_CONNECTING, CHECK_HANDSHAKE, CHECK_SEND, CHECK_READ };

typedef struct check {
    struct check *next;             /* the upstream's checks in flight */
    mg_target_t *target;
    int fd;
    SSL *ssl;                       /* a TLS upstream's check speaks TLS too */
    int stage;                      /* CHECK_* */
    struct event ev, timer;
    char buf[64];
    size_t len;
    mg_h2check_t *h2;               /* an HTTP/2 upstream's check speaks HTTP/2 */
} check_t;

static void check_done(check_t *c, int ok)
{
    mg_target_t *t = c->target;
    if (ok && t->active_down)
        mg_log_info(NULL, "upstream %s: target %s passes its health check again", t->up->name, t->text);
    if (!ok && !t->active_down)
        mg_log_warn(NULL, "upstream %s: target %s failed its health check", t->up->name, t->text);
    t->active_down = !ok;
    if (ok) {
        t->fails = 0;
        t->ejected_until = 0;
    }
    event_del(&c->ev);
    event_del(&c->timer);
    SSL_free(c->ssl); /* NULL-safe */
    mg_h2check_free(c->h2);
    close(c->fd);
    for (check_t **pp = (check_t **)&t->up->checks; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    free(c);
}

static void on_check_timeout(evutil_socket_t fd, short what, void *arg) { check_done(arg, 0); }

static void on_check_io(evutil_socket_t fd, short what, void *arg);

static void check_wait(check_t *c, short what)
{
    event_del(&c->ev);
    event_assign(&c->ev, c->target->up->base, c->fd, what | EV_PERSIST, on_check_io, c);
    event_add(&c->ev, NULL);
}

/* recv/send, through TLS when the upstream speaks it; -1 with EAGAIN to wait for `*want` */
static ssize_t check_io(check_t *c, char *buf, size_t len, int sending, short *want)
{
    int ww = 0;
    ssize_t n;
    if (!c->ssl)
        n = sending ? send(c->fd, buf, len, MSG_NOSIGNAL) : recv(c->fd, buf, len, 0);
    else if (c->stage == CHECK_HANDSHAKE)
        n = mg_tls_result(c->ssl, SSL_do_handshake(c->ssl), &ww);
    else
        n = mg_tls_result(c->ssl, sending ? SSL_write(c->ssl, buf, (int)len) : SSL_read(c->ssl, buf, (int)len), &ww);
    *want = ww || (sending && !c->ssl) ? EV_WRITE : EV_READ;
    return n;
}

static void on_check_io(evutil_socket_t fd, short what, void *arg)
{
    check_t *c = arg;
    mg_target_t *t = c->target;
    mg_upstream_t *up = t->up;
    short want;
    ssize_t n;
    if (c->stage == CHECK_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            check_done(c, 0);
            return;
        }
        c->stage = CHECK_SEND;
        if (up->tls) {
            c->ssl = mg_tls_client_ssl(up->tls, fd, up->tls_name ? up->tls_name : t->host, NULL);
            c->stage = CHECK_HANDSHAKE;
            if (!c->ssl) {
                check_done(c, 0);
                return;
            }
        }
    }
    if (c->stage == CHECK_HANDSHAKE) {
        n = check_io(c, NULL, 0, 0, &want);
        if (n < 0 && errno == EAGAIN) {
            check_wait(c, want);
            return;
        }
        if (n <= 0) {
            check_done(c, 0);
            return;
        }
        c->stage = CHECK_SEND;
    }
    if (c->stage == CHECK_SEND) {
        char req[512];
        int len;
        if (up->protocol != MG_UP_HTTP1) {
            /* the client preface, SETTINGS and the GET, as one HTTP/2 client session writes them */
            struct evbuffer *b = evbuffer_new();
            c->h2 = mg_h2check_new(up->active_path, t->authority, up->protocol == MG_UP_H2, b);
            len = (int)evbuffer_remove(b, req, sizeof(req));
            evbuffer_free(b);
        } else {
            len = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: moongate-health\r\n"
                           "Connection: close\r\n\r\n", up->active_path, t->authority);
        }
        /* a fresh connection takes a request this small at once */
        if (check_io(c, req, (size_t)len, 1, &want) != len) {
            check_done(c, 0);
            return;
        }
        c->stage = CHECK_READ;
        check_wait(c, EV_READ);
        return;
    }
    n = check_io(c, c->buf + c->len, sizeof(c->buf) - 1 - c->len, 0, &want);
    if (n < 0 && errno == EAGAIN) {
        if (want == EV_WRITE)
            check_wait(c, EV_WRITE);
        return;
    }
    if (n <= 0) {
        check_done(c, 0);
        return;
    }
    if (c->h2) {
        /* frames, not a status line: the session reads them; 2xx and 3xx are healthy */
        int st = mg_h2check_feed(c->h2, c->buf + c->len, (size_t)n);
        if (st != 0)
            check_done(c, st >= 200 && st < 400);
        return;
    }
    c->len += (size_t)n;
    if (c->len >= 12) {
        /* "HTTP/1.1 200": 2xx and 3xx are healthy */
        int ok = memcmp(c->buf, "HTTP/1.", 7) == 0 && (c->buf[9] == '2' || c->buf[9] == '3');
        check_done(c, ok);
    }
}

static void on_active_timer(evutil_socket_t fd, short what, void *arg)
{
    mg_upstream_t *up = arg;
    for (int i = 0; i < up->ntargets; i++) {
        mg_target_t *t = &up->targets[i];
        if (t->len == 0)
            continue; /* not resolved yet */
        int s = socket(t->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (s < 0)
            continue;
        if (connect(s, (struct sockaddr *)&t->ss, t->len) < 0 && errno != EINPROGRESS) {
            close(s);
            t->active_down = 1;
            continue;
        }
        check_t *c = mg_calloc(1, sizeof(*c));
        c->target = t;
        c->fd = s;
        c->next = up->checks;
        up->checks = c;
        event_assign(&c->ev, up->base, s, EV_WRITE, on_check_io, c);
        event_add(&c->ev, NULL);
        struct timeval tv = { up->active_timeout_ms / 1000, (up->active_timeout_ms % 1000) * 1000 };
        evtimer_assign(&c->timer, up->base, on_check_timeout, c);
        evtimer_add(&c->timer, &tv);
    }
}

void mg_upstream_start(mg_upstream_t *up, struct event_base *base, struct evdns_base *dns)
{
    up->base = base;
    up->dns = dns;
    for (int i = 0; i < up->ntargets; i++)
        if (up->targets[i].hostname)
            resolve(&up->targets[i]);
    if (up->active_path) {
        up->active_timer = event_new(base, -1, EV_PERSIST, on_active_timer, up);
        struct timeval tv = { up->active_interval_ms / 1000, (up->active_interval_ms % 1000) * 1000 };
        event_add(up->active_timer, &tv);
        on_active_timer(-1, 0, up); /* first round now, not one interval late */
    }
}

void mg_upstream_free(mg_upstream_t *up)
{
    if (!up)
        return;
    if (up->active_timer)
        event_free(up->active_timer);
    while (up->checks) {
        check_t *c = up->checks;
        up->checks = c->next;
        event_del(&c->ev);
        event_del(&c->timer);
        SSL_free(c->ssl);
        mg_h2check_free(c->h2);
        close(c->fd);
        free(c);
    }
    for (int i = 0; i < up->ntargets; i++) {
        mg_target_t *t = &up->targets[i];
        /* pending lookups died with the worker's evdns base, freed before this */
        if (t->dns_timer)
            event_free(t->dns_timer);
        free(t->hostname);
        free(t->host);
        SSL_SESSION_free(t->tls_session);
        mg_h2up_target_free(t);
        while (t->idle) {
            mg_upconn_t *uc = t->idle;
            t->idle = uc->next_idle;
            conn_destroy(uc);
        }
        free(t->text);
        free(t->authority);
    }
    free(up->targets);
    if (up->sema)
        mg_sema_put(up->sema);
    if (up->csema)
        mg_csema_put(up->csema);
    up->csema = NULL;
    free(up->name);
    free(up->hash_name);
    free(up->active_path);
    free(up->host_value);
    SSL_CTX_free(up->tls);
    free(up->tls_name);
}
