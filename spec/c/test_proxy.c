/*
 * mg_proxy: the engine against a scripted upstream on 127.0.0.1, in one event
 * loop: interim responses (100 absorbed, 103 to on_interim, 101 refused
 * unless asked for, then handed over with its connection and permit),
 * trailers handed to on_trailers, the attempt count, and the resend rules
 * (a bodyless POST on a pooled connection that closes is not resent, a GET
 * is, on a new connection; a read timeout is not retried on the same target;
 * a refused connect once; no attempt past the deadline).
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mg_proxy.h"

/* ---- the scripted upstream ---- */

typedef struct srv_conn {
    struct server *s;
    int fd;
    struct event ev;
    char buf[8192];
    size_t len;
    int served;                     /* requests answered on this connection */
} srv_conn_t;

typedef struct server {
    int lfd, port;
    struct event accept_ev;
    struct event_base *base;
    srv_conn_t conns[16];
    int nconns, requests, posts;
    /* what to answer: NULL closes the connection unanswered, "" answers nothing */
    const char *(*respond)(struct server *s, srv_conn_t *c);
    const char *reply;
} server_t;

static void srv_close(srv_conn_t *c)
{
    event_del(&c->ev);
    close(c->fd);
    c->fd = -1;
}

static void on_conn_read(evutil_socket_t fd, short what, void *arg)
{
    srv_conn_t *c = arg;
    server_t *s = c->s;
    ssize_t n = read(fd, c->buf + c->len, sizeof(c->buf) - c->len);
    if (n <= 0) {
        srv_close(c);
        return;
    }
    c->len += (size_t)n;
    char *end;
    while (c->fd >= 0 && (end = memmem(c->buf, c->len, "\r\n\r\n", 4))) {
        size_t head = (size_t)(end + 4 - c->buf);
        s->requests++;
        if (strncmp(c->buf, "POST ", 5) == 0)
            s->posts++;
        memmove(c->buf, c->buf + head, c->len - head);
        c->len -= head;
        const char *r = s->respond ? s->respond(s, c) : s->reply;
        if (!r) {
            srv_close(c);
            return;
        }
        if (*r && write(c->fd, r, strlen(r)) < 0)
            fail_msg("server write: %s", strerror(errno));
        c->served++;
    }
}

static void on_accept(evutil_socket_t fd, short what, void *arg)
{
    server_t *s = arg;
    int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0)
        return;
    assert_true(s->nconns < 16);
    srv_conn_t *c = &s->conns[s->nconns++];
    memset(c, 0, sizeof(*c));
    c->s = s;
    c->fd = cfd;
    event_assign(&c->ev, s->base, cfd, EV_READ | EV_PERSIST, on_conn_read, c);
    event_add(&c->ev, NULL);
}

static void server_start(server_t *s, struct event_base *base)
{
    memset(s, 0, sizeof(*s));
    s->base = base;
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(s->lfd, 16), 0);
    socklen_t len = sizeof(sin);
    getsockname(s->lfd, (struct sockaddr *)&sin, &len);
    s->port = ntohs(sin.sin_port);
    event_assign(&s->accept_ev, base, s->lfd, EV_READ | EV_PERSIST, on_accept, s);
    event_add(&s->accept_ev, NULL);
}

static void server_stop(server_t *s)
{
    event_del(&s->accept_ev);
    close(s->lfd);
    for (int i = 0; i < s->nconns; i++)
        if (s->conns[i].fd >= 0)
            srv_close(&s->conns[i]);
}

/* ---- the owner side ---- */

typedef struct owner {
    mg_proxy_t p;
    mg_pool_t pool;
    const char *method;
    int done, status, ninterim, interim[4];
    char interim_link[128], body[256], trailers[256];
    size_t body_len;
    const mg_error_t *err;
} owner_t;

static void build_head(mg_proxy_t *p, mg_target_t *t, mg_upreq_t *q)
{
    owner_t *o = p->owner;
    q->method = (mg_str_t){ o->method, strlen(o->method) };
    q->target = MG_STR("/");
    q->authority = (mg_str_t){ t->authority, strlen(t->authority) };
}

static void on_interim(mg_proxy_t *p, const mg_http1_response_t *resp)
{
    owner_t *o = p->owner;
    o->interim[o->ninterim++] = resp->status;
    for (size_t i = 0; i < resp->num_headers; i++)
        if (mg_http1_name_is(&resp->headers[i], "link", 4))
            snprintf(o->interim_link, sizeof(o->interim_link), "%.*s", (int)resp->headers[i].value_len,
                     resp->headers[i].value);
}

static int on_head(mg_proxy_t *p, const mg_http1_response_t *resp)
{
    ((owner_t *)p->owner)->status = resp->status;
    return 0;
}

static int on_body(mg_proxy_t *p, const char *data, size_t len)
{
    owner_t *o = p->owner;
    memcpy(o->body + o->body_len, data, len);
    o->body_len += len;
    return 0;
}

static void on_trailers(mg_proxy_t *p, const mg_header_t *h, size_t n)
{
    owner_t *o = p->owner;
    char *t = o->trailers;
    for (size_t i = 0; i < n; i++)
        t += sprintf(t, "%.*s: %.*s\n", (int)h[i].name_len, h[i].name, (int)h[i].value_len, h[i].value);
}

static void on_done(mg_proxy_t *p, const mg_error_t *err)
{
    owner_t *o = p->owner;
    o->done = 1;
    o->err = err;
}

static const mg_proxy_ops_t ops = { .build_head = build_head, .on_interim = on_interim, .on_head = on_head,
                                    .on_body = on_body, .on_trailers = on_trailers, .on_done = on_done };
static const mg_proxy_ops_t plain_ops = { .build_head = build_head, .on_head = on_head, .on_body = on_body,
                                          .on_done = on_done };

static mg_upstream_t *make_up(struct event_base *base, const int *ports, int n)
{
    mg_upstream_t *up = calloc(1, sizeof(*up));
    up->name = strdup("test");
    up->ntargets = n;
    up->targets = calloc((size_t)n, sizeof(mg_target_t));
    for (int i = 0; i < n; i++) {
        char a[32];
        snprintf(a, sizeof(a), "127.0.0.1:%d", ports[i]);
        up->targets[i].up = up;
        up->targets[i].text = strdup(a);
        up->targets[i].authority = strdup(a);
    }
    up->max_idle = 16;
    up->idle_timeout_ms = 60000;
    up->max_requests = 1000;
    up->connect_ms = 1000;
    up->send_ms = 1000;
    up->read_ms = 200;
    up->retries = 1;
    up->passive_failures = 3;
    up->eject_ms = 10000;
    up->base = base;
    char err[256];
    assert_int_equal(mg_upstream_resolve(up, err, sizeof(err)), MG_OK);
    return up;
}

static void drop_up(mg_upstream_t *up)
{
    mg_upstream_free(up);
    free(up);
}

static void on_guard(evutil_socket_t fd, short what, void *arg) { *(int *)arg = 1; }

/* Runs one exchange to its end (or fails the test after 3 s). */
static void exchange(owner_t *o, struct event_base *base, mg_upstream_t *up, const char *method,
                     const mg_proxy_ops_t *with)
{
    memset(o, 0, sizeof(*o));
    o->method = method;
    o->p.ops = with;
    o->p.owner = o;
    mg_pool_init(&o->pool);
    o->p.pool = &o->pool;
    o->p.up = up;
    o->p.resp.headers = o->p.headers;
    o->p.idempotent = strcmp(method, "POST") != 0;
    mg_proxy_start(&o->p);
    int expired = 0;
    struct event guard;
    struct timeval tv = { 3, 0 };
    evtimer_assign(&guard, base, on_guard, &expired);
    evtimer_add(&guard, &tv);
    while (!o->done && !expired)
        event_base_loop(base, EVLOOP_ONCE);
    event_del(&guard);
    if (!o->done)
        fail_msg("the exchange did not end");
}

/* Lets the loop see what the server did (closes) without any exchange running. */
static void settle(struct event_base *base)
{
    for (int i = 0; i < 5; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
}

static void interim_and_trailers(void **state)
{
    struct event_base *base = event_base_new();
    server_t s;
    server_start(&s, base);
    s.reply = "HTTP/1.1 100 Continue\r\n\r\n"
              "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
              "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
              "4\r\nWiki\r\n0\r\nX-Checksum: abc\r\nServer-Timing:  db;dur=53 \r\n\r\n";
    mg_upstream_t *up = make_up(base, &s.port, 1);
    owner_t o;
    exchange(&o, base, up, "GET", &ops);
    assert_null(o.err);
    assert_int_equal(o.ninterim, 1); /* 100 absorbed, 103 handed over */
    assert_int_equal(o.interim[0], 103);
    assert_string_equal(o.interim_link, "</style.css>; rel=preload");
    assert_int_equal(o.status, 200);
    assert_int_equal(o.body_len, 4);
    assert_memory_equal(o.body, "Wiki", 4);
    assert_string_equal(o.trailers, "X-Checksum: abc\nServer-Timing: db;dur=53\n");
    assert_int_equal(mg_proxy_attempts(&o.p), 1);
    assert_int_equal(mg_upstream_idle_count(up), 1); /* complete, keep-alive: pooled */
    /* without on_interim/on_trailers: the same response, both dropped */
    exchange(&o, base, up, "GET", &plain_ops);
    assert_null(o.err);
    assert_int_equal(o.status, 200);
    assert_int_equal(o.body_len, 4);
    /* a malformed trailer section is a protocol error */
    s.reply = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Bad : 1\r\n\r\n";
    exchange(&o, base, up, "POST", &ops);
    assert_ptr_equal(o.err, MG_E(PROTOCOL));
    /* 101 is refused when the owner did not ask for an upgrade */
    s.reply = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
    exchange(&o, base, up, "POST", &ops);
    assert_ptr_equal(o.err, MG_E(PROTOCOL));
    drop_up(up);
    server_stop(&s);
    event_base_free(base);
}

/* ---- upgrades: 101 to on_upgrade, the connection and the permit handed over ---- */

static mg_upconn_t *taken;
static int take_it;
static char early[64];

static void on_upgrade(mg_proxy_t *p, const mg_http1_response_t *resp)
{
    owner_t *o = p->owner;
    o->status = resp->status;
    o->done = 1;
    if (!take_it)
        return; /* refused: the engine fails the exchange */
    int permit = 0;
    taken = mg_proxy_hand_over(p, &permit);
    snprintf(early, sizeof(early), "%.*s", (int)(taken->in_len - taken->in_off), taken->in + taken->in_off);
    o->ninterim = permit; /* (reused as "held a permit") */
}

static void start_upgrade(owner_t *o, struct event_base *base, mg_upstream_t *up, const mg_proxy_ops_t *with)
{
    memset(o, 0, sizeof(*o));
    o->method = "GET";
    o->p.ops = with;
    o->p.owner = o;
    mg_pool_init(&o->pool);
    o->p.pool = &o->pool;
    o->p.up = up;
    o->p.resp.headers = o->p.headers;
    o->p.idempotent = 1;
    o->p.upgrade = 1;
    mg_proxy_start(&o->p);
    for (int i = 0; i < 200 && !o->done; i++)
        event_base_loop(base, EVLOOP_ONCE);
    assert_true(o->done);
}

static void upgrade_hand_over(void **state)
{
    struct event_base *base = event_base_new();
    server_t s;
    server_start(&s, base);
    s.reply = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi";
    mg_upstream_t *up = make_up(base, &s.port, 1);
    up->sema = mg_sema_get("upstream:test-upgrade", 1);
    static const mg_proxy_ops_t up_ops = { .build_head = build_head, .on_head = on_head, .on_body = on_body,
                                           .on_upgrade = on_upgrade, .on_done = on_done };
    owner_t o;
    /* asked for and taken: the owner has the connection, the bytes after the head, the permit */
    take_it = 1;
    start_upgrade(&o, base, up, &up_ops);
    assert_int_equal(o.status, 101);
    assert_non_null(taken);
    assert_false(o.p.running);
    assert_null(o.p.uc);
    assert_null(o.err); /* no on_done after a hand-over */
    assert_string_equal(early, "\x81\x02hi");
    assert_int_equal(o.ninterim, 1);
    assert_int_equal(up->targets[0].inflight, 0);
    mg_sema_stats_t st;
    mg_sema_stats(up->sema, &st);
    assert_int_equal(st.in_use, 1); /* the owner's now */
    mg_sema_release(up->sema, 1);
    mg_upconn_detach(taken, NULL, NULL);
    assert_null(taken->target);
    mg_upconn_close(taken);
    assert_int_equal(mg_upstream_idle_count(up), 0); /* never pooled */
    /* asked for, not taken (e.g. the upstream named another protocol): a protocol error, permit back */
    take_it = 0;
    start_upgrade(&o, base, up, &up_ops);
    assert_ptr_equal(o.err, MG_E(PROTOCOL));
    mg_sema_stats(up->sema, &st);
    assert_int_equal(st.in_use, 0);
    mg_sema_put(up->sema);
    up->sema = NULL;
    drop_up(up);
    server_stop(&s);
    event_base_free(base);
}

/* Answers the first request of a connection; closes a reused one unanswered (the keep-alive race). */
static const char *close_reused(server_t *s, srv_conn_t *c)
{
    return c->served ? NULL : "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
}

static void pooled_connection_closed(void **state)
{
    struct event_base *base = event_base_new();
    server_t s;
    server_start(&s, base);
    s.respond = close_reused;
    mg_upstream_t *up = make_up(base, &s.port, 1);
    owner_t o;
    exchange(&o, base, up, "GET", &ops); /* pools a connection */
    assert_null(o.err);
    assert_int_equal(mg_upstream_idle_count(up), 1);
    /* a bodyless POST on it: the upstream read it, then closed: never sent twice */
    exchange(&o, base, up, "POST", &ops);
    assert_ptr_equal(o.err, MG_E(RESET));
    assert_int_equal(s.posts, 1);
    assert_int_equal(mg_proxy_attempts(&o.p), 1);
    /* a GET on a dead pooled connection is resent, on a new connection, and succeeds */
    exchange(&o, base, up, "GET", &ops);
    assert_null(o.err);
    int conns = s.nconns;
    exchange(&o, base, up, "GET", &ops);
    assert_null(o.err);
    assert_int_equal(mg_proxy_attempts(&o.p), 2);
    assert_int_equal(s.nconns, conns + 1);
    assert_int_equal(up->targets[0].fails, 0); /* not the target's failure */
    /* opted in: the POST is resent */
    up->retry_non_idempotent = 1;
    int posts = s.posts;
    exchange(&o, base, up, "POST", &ops);
    assert_null(o.err);
    assert_int_equal(s.posts, posts + 2);
    drop_up(up);
    server_stop(&s);
    event_base_free(base);
}

static void timeouts_refusals_deadline(void **state)
{
    struct event_base *base = event_base_new();
    server_t s;
    server_start(&s, base);
    s.reply = ""; /* never answers */
    mg_upstream_t *up = make_up(base, &s.port, 1);
    up->retries = 3;
    owner_t o;
    uint64_t t0 = mg_now_ms();
    exchange(&o, base, up, "GET", &ops);
    assert_ptr_equal(o.err, MG_E(READ_TIMEOUT));
    assert_int_equal(mg_proxy_attempts(&o.p), 1); /* the only target: not again */
    assert_true(mg_now_ms() - t0 < 380);
    settle(base);
    assert_int_equal(s.requests, 1);
    /* the deadline: no attempt starts without time to finish */
    memset(&o, 0, sizeof(o));
    o.method = "GET";
    o.p.ops = &ops;
    o.p.owner = &o;
    mg_pool_init(&o.pool);
    o.p.pool = &o.pool;
    o.p.up = up;
    o.p.resp.headers = o.p.headers;
    o.p.deadline_us = mg_now_us() + 2000;
    mg_proxy_start(&o.p);
    assert_true(o.done);
    assert_ptr_equal(o.err, MG_E(DEADLINE));
    assert_int_equal(mg_proxy_attempts(&o.p), 0);
    int port = s.port;
    server_stop(&s);
    drop_up(up);
    /* refused: the same single target once more, whatever the retries */
    up = make_up(base, &port, 1);
    up->retries = 3;
    exchange(&o, base, up, "GET", &ops);
    assert_ptr_equal(o.err, MG_E(REFUSED));
    assert_int_equal(mg_proxy_attempts(&o.p), 2);
    drop_up(up);
    event_base_free(base);
}

static void read_timeout_goes_elsewhere(void **state)
{
    struct event_base *base = event_base_new();
    server_t slow, fast;
    server_start(&slow, base);
    server_start(&fast, base);
    slow.reply = "";
    fast.reply = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfast";
    int ports[2] = { slow.port, fast.port };
    mg_upstream_t *up = make_up(base, ports, 2);
    up->retries = 3;
    owner_t o;
    exchange(&o, base, up, "GET", &ops); /* round robin: the slow one first */
    assert_null(o.err);
    assert_memory_equal(o.body, "fast", 4);
    assert_int_equal(mg_proxy_attempts(&o.p), 2);
    /* both silent: each once, then the error (never back to one that timed out) */
    fast.reply = "";
    exchange(&o, base, up, "GET", &ops);
    assert_ptr_equal(o.err, MG_E(READ_TIMEOUT));
    assert_int_equal(mg_proxy_attempts(&o.p), 2);
    /* a POST is not resent after a read timeout */
    exchange(&o, base, up, "POST", &ops);
    assert_ptr_equal(o.err, MG_E(READ_TIMEOUT));
    assert_int_equal(mg_proxy_attempts(&o.p), 1);
    drop_up(up);
    server_stop(&slow);
    server_stop(&fast);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(interim_and_trailers),
        cmocka_unit_test(upgrade_hand_over),
        cmocka_unit_test(pooled_connection_closed),
        cmocka_unit_test(timeouts_refusals_deadline),
        cmocka_unit_test(read_timeout_goes_elsewhere),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
