/*
 * mg_admin — see mg_admin.h. Everything here runs on the main thread, on its
 * event loop; it reads worker figures with atomic loads and never touches a
 * worker's generation (only the worker itself does): what only a worker can
 * render (its metrics, its upstreams) it asks for with mg_worker_render and
 * answers when every worker did, or after RENDER_TIMEOUT_MS with what came.
 *
 * A connection goes READING (its head, under the head deadline) → WAITING
 * (for workers' renderings, or for the workers to switch after a reload) →
 * WRITING (bufferevent output, under the send timeouts) → freed. Input that
 * arrives after the request is read and dropped, so closing never resets
 * the connection under an answer the client has not read yet.
 */
#define _GNU_SOURCE
#include "mg_admin.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "mg_http1.h"
#include "mg_log.h"

#define MAX_LINE 4096           /* an admin socket command line */
#define MAX_HTTP_HEAD 8192
#define RENDER_TIMEOUT_MS 1000  /* a worker that does not render within this is left out (stuck?) */
#define RELOAD_WAIT_MS 5000     /* gatewayctl reload returns once every worker switched, or after this */

enum { SOCK, HTTP };
enum { READING, WAITING, WRITING };

struct mg_admin_conn {
    mg_admin_t *a;
    int kind;                   /* SOCK or HTTP */
    int state;
    struct bufferevent *bev;
    struct event *timer;        /* the head deadline, the wait, then the answer deadline */
    /* WAITING for renderings (one per worker, NULL when not asked) */
    mg_render_t **renders;
    int render_kind;
    int head_only;              /* HTTP HEAD */
    int then_stop;              /* `stop`: break the main loop when this connection ends */
    /* WAITING for the workers to switch to a reloaded generation */
    uint64_t *gens_before;
    uint64_t wait_until;
    mg_admin_conn_t *next, *prev;
};

static void conn_free(mg_admin_conn_t *c)
{
    mg_admin_t *a = c->a;
    if (c->renders) {
        for (int i = 0; i < a->nworkers; i++)
            if (c->renders[i])
                mg_render_put(c->renders[i]); /* a worker still rendering frees it when done */
        free(c->renders);
    }
    free(c->gens_before);
    event_free(c->timer);
    bufferevent_free(c->bev); /* closes the socket */
    if (c->prev)
        c->prev->next = c->next;
    else
        a->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    a->nconns[c->kind]--;
    if (c->then_stop)
        event_base_loopbreak(a->base);
    free(c);
}

static size_t queued_bytes(mg_admin_t *a)
{
    size_t n = 0;
    for (mg_admin_conn_t *c = a->conns; c; c = c->next)
        n += evbuffer_get_length(bufferevent_get_output(c->bev));
    return n;
}

/* Queues the answer (the connection is freed once it is sent, or on a send timeout). */
static void answer(mg_admin_conn_t *c, int code, const char *ctype, const char *text, size_t len)
{
    mg_admin_t *a = c->a;
    if (queued_bytes(a) + len > MG_ADMIN_MAX_QUEUED) {
        static const char busy[] = "the admin side has too many answers queued for slow readers; try again\n";
        code = c->kind == HTTP ? 503 : 0;
        ctype = "text/plain";
        text = busy;
        len = sizeof(busy) - 1;
    }
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (c->kind == SOCK) {
        evbuffer_add_printf(out, "%s %zu\n", code ? "OK" : "ERR", len);
    } else {
        const char *reason = code == 200 ? "OK" : code == 400 ? "Bad Request" : code == 404 ? "Not Found"
                           : code == 405 ? "Method Not Allowed" : code == 408 ? "Request Timeout"
                           : code == 431 ? "Request Header Fields Too Large" : "Service Unavailable";
        evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                                 "Connection: close\r\n\r\n", code, reason, ctype, len);
        if (c->head_only)
            len = 0;
    }
    evbuffer_add(out, text, len);
    c->state = WRITING;
    struct timeval send = { MG_ADMIN_SEND_TIMEOUT_S, 0 }, whole = { MG_ADMIN_ANSWER_TIMEOUT_S, 0 };
    bufferevent_set_timeouts(c->bev, NULL, &send);
    event_add(c->timer, &whole);
    bufferevent_enable(c->bev, EV_WRITE);
}

static void answer_text(mg_admin_conn_t *c, int ok, mg_text_t *t)
{
    answer(c, ok, NULL, t->p ? t->p : "", t->len);
    free(t->p);
}

static void http_answer(mg_admin_conn_t *c, int code, const char *ctype, mg_text_t *t)
{
    answer(c, code, ctype, t->p ? t->p : "", t->len);
    free(t->p);
}

/* WAITING for renderings: answer once every worker asked has rendered, or on the timeout (late ones left out). */
static void renders_answer(mg_admin_conn_t *c, int timed_out)
{
    mg_admin_t *a = c->a;
    for (int i = 0; i < a->nworkers && !timed_out; i++)
        if (c->renders[i] && !mg_render_done(c->renders[i]))
            return;
    event_del(c->timer);
    mg_text_t t = { 0 };
    int json = c->render_kind == MG_RENDER_UPSTREAMS_JSON;
    if (c->render_kind == MG_RENDER_METRICS)
        mg__admin_metrics(a, &t);
    if (json)
        mg_text_add(&t, "[");
    for (int i = 0; i < a->nworkers; i++) {
        mg_render_t *r = c->renders[i];
        if (json && i)
            mg_text_add(&t, ",");
        if (r && mg_render_done(r))
            mg_text_append(&t, r->out.p ? r->out.p : "", r->out.len);
        else if (c->render_kind == MG_RENDER_METRICS)
            mg_text_add(&t, "# worker %d did not answer (stuck?)\n", i);
        else
            mg_text_add(&t, json ? "{\"worker\":%d,\"stuck\":true}" : "worker %d did not answer (stuck?)\n", i);
        if (r)
            mg_render_put(r);
        c->renders[i] = NULL;
    }
    if (json)
        mg_text_add(&t, "]\n");
    if (c->kind == HTTP)
        http_answer(c, 200, "text/plain; version=0.0.4", &t);
    else
        answer_text(c, 1, &t);
}

static void wait_renders(mg_admin_conn_t *c, int kind)
{
    mg_admin_t *a = c->a;
    c->state = WAITING;
    c->render_kind = kind;
    c->renders = mg_calloc((size_t)a->nworkers, sizeof(*c->renders));
    for (int i = 0; i < a->nworkers; i++)
        if (!mg_worker_stuck_ms(&a->workers[i])) /* a stuck worker would not answer */
            c->renders[i] = mg_worker_render(&a->workers[i], kind, a->notify_fd);
    struct timeval tv = { 0, RENDER_TIMEOUT_MS * 1000 };
    event_add(c->timer, &tv);
    renders_answer(c, 0);
}

/* WAITING after a reload: gatewayctl returns once every worker that is not stuck switched. */
static void reload_check(mg_admin_conn_t *c)
{
    mg_admin_t *a = c->a;
    int late = 0, stuck = 0;
    for (int i = 0; i < a->nworkers; i++) {
        if (mg_worker_generation(&a->workers[i]) != c->gens_before[i])
            continue;
        if (mg_worker_stuck_ms(&a->workers[i]))
            stuck++;
        else
            late++;
    }
    if (late && mg_now_ms() < c->wait_until) {
        struct timeval tv = { 0, 10 * 1000 };
        event_add(c->timer, &tv);
        return;
    }
    mg_text_t t = { 0 };
    mg_text_add(&t, "reloaded ");
    mg_text_json(&t, a->file);
    mg_text_add(&t, "\n");
    if (late + stuck)
        mg_text_add(&t, "%d worker(s) have not switched yet (%d stuck); they switch when they are back in their "
                        "event loop\n", late + stuck, stuck);
    answer_text(c, 1, &t);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    mg_admin_conn_t *c = arg;
    if (c->state == READING) {
        /* best effort: the answer is small, the client may not read it (the answer deadline ends it then) */
        static const char msg[] = "request not received within the admin side's head timeout\n";
        answer(c, c->kind == HTTP ? 408 : 0, "text/plain", msg, sizeof(msg) - 1);
    } else if (c->state == WAITING && c->renders) {
        renders_answer(c, 1);
    } else if (c->state == WAITING) {
        reload_check(c);
    } else {
        conn_free(c); /* the answer was not read in time */
    }
}

/* One admin socket command. line is NUL-terminated, without its newline. */
static void run_command(mg_admin_conn_t *c, char *line)
{
    mg_admin_t *a = c->a;
    char *cmd = line, *arg = strchr(line, ' ');
    if (arg)
        *arg++ = '\0';
    int json = arg && strcmp(arg, "json") == 0;
    mg_text_t t = { 0 };
    char err[2048];
    int ok = 1;
    if (!*cmd) {
        ok = 0;
        mg_text_add(&t, "empty command\n");
    } else if (strcmp(cmd, "status") == 0) {
        mg__admin_status(a, &t, json);
    } else if (strcmp(cmd, "upstreams") == 0) {
        wait_renders(c, json ? MG_RENDER_UPSTREAMS_JSON : MG_RENDER_UPSTREAMS_TEXT);
        return;
    } else if (strcmp(cmd, "reload") == 0) {
        uint64_t *before = mg_calloc((size_t)a->nworkers, sizeof(*before));
        for (int i = 0; i < a->nworkers; i++)
            before[i] = mg_worker_generation(&a->workers[i]);
        if (mg_admin_reload(a, err, sizeof(err)) == MG_OK) {
            c->state = WAITING;
            c->gens_before = before;
            c->wait_until = mg_now_ms() + RELOAD_WAIT_MS;
            reload_check(c);
            return;
        }
        free(before);
        ok = 0;
        mg_text_add(&t, "%s\nthe running configuration is unchanged\n", err);
        mg_log_error(NULL, "reload refused: %s", err);
    } else if (strcmp(cmd, "check") == 0) {
        const char *file = arg && *arg ? arg : a->file;
        mg_config_t cfg;
        memset(&cfg, 0, sizeof(cfg));
        struct event_base *base = event_base_new();
        mg_gen_t *gen = mg_gen_load(file, base, NULL, &cfg, err, sizeof(err));
        if (gen) {
            mg_text_json(&t, file);
            mg_text_add(&t, " is valid (%d routes)\n", gen->nroutes);
            mg_gen_free(gen);
        } else {
            ok = 0;
            mg_text_add(&t, "%s\n", err);
        }
        event_base_free(base);
        mg_config_free(&cfg);
    } else if (strcmp(cmd, "routes") == 0) {
        if (mg__admin_routes(a->file, &t, json, err, sizeof(err)) != MG_OK) {
            ok = 0;
            mg_text_add(&t, "%s\n", err);
        }
    } else if (strcmp(cmd, "reopen-logs") == 0) {
        if (mg_log_reopen(err, sizeof(err)) == MG_OK) {
            mg_text_add(&t, "logs reopened\n");
        } else {
            ok = 0;
            mg_text_add(&t, "%s\n", err);
        }
    } else if (strcmp(cmd, "stop") == 0) {
        a->stop_requested = 1;
        a->stop_drain_ms = arg ? (uint32_t)(atof(arg) * 1000) : a->cfg->drain_timeout_ms;
        mg_text_add(&t, "stopping (draining up to %u ms)\n", a->stop_drain_ms);
        answer_text(c, 1, &t);
        c->then_stop = 1; /* once the answer is out (a few bytes: at once), or the connection is gone */
        return;
    } else {
        ok = 0;
        mg_text_add(&t, "unknown command '");
        mg_text_json(&t, cmd);
        mg_text_add(&t, "' (status, routes, upstreams, reload, check, reopen-logs, stop)\n");
    }
    answer_text(c, ok, &t);
}

static void http_text(mg_admin_conn_t *c, int code, const char *msg)
{
    answer(c, code, "text/plain", msg, strlen(msg));
}

/* The admin HTTP head is complete in buf[0..len) (or broken): GET /metrics, GET /status. */
static void run_http(mg_admin_conn_t *c, int rc, const mg_http1_request_t *req)
{
    if (rc < 0) {
        int status = mg_http1_error_status(rc);
        http_text(c, status == 431 ? 431 : 400, "malformed request\n");
        return;
    }
    mg_str_t path = { req->target, req->target_len };
    const char *q = memchr(path.p, '?', path.n);
    if (q)
        path.n = (size_t)(q - path.p);
    int get = req->method_len == 3 && memcmp(req->method, "GET", 3) == 0;
    c->head_only = req->method_len == 4 && memcmp(req->method, "HEAD", 4) == 0;
    int metrics = path.n == 8 && memcmp(path.p, "/metrics", 8) == 0;
    int status = path.n == 7 && memcmp(path.p, "/status", 7) == 0;
    if (!metrics && !status) {
        http_text(c, 404, "try /metrics or /status\n");
    } else if (!get && !c->head_only) {
        http_text(c, 405, "GET only\n");
    } else if (metrics) {
        wait_renders(c, MG_RENDER_METRICS);
    } else {
        mg_text_t t = { 0 };
        mg__admin_status(c->a, &t, 1);
        http_answer(c, 200, "application/json", &t);
    }
}

static void on_read(struct bufferevent *bev, void *arg)
{
    mg_admin_conn_t *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (c->state != READING) {
        evbuffer_drain(in, evbuffer_get_length(in)); /* one exchange per connection */
        return;
    }
    size_t len = evbuffer_get_length(in);
    if (c->kind == SOCK) {
        size_t n;
        char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_LF);
        if (!line && len <= MAX_LINE)
            return; /* more to come, within the head deadline */
        event_del(c->timer);
        if (!line) {
            mg_text_t t = { 0 };
            mg_text_add(&t, "command line longer than %d bytes\n", MAX_LINE);
            answer_text(c, 0, &t);
            return;
        }
        if (n && line[n - 1] == '\r')
            line[n - 1] = '\0';
        run_command(c, line);
        free(line);
        return;
    }
    mg_header_t headers[64];
    mg_http1_request_t req = { .headers = headers };
    mg_http1_limits_t lim = { .max_line = MAX_HTTP_HEAD, .max_head = MAX_HTTP_HEAD, .max_headers = 64 };
    const char *buf = (const char *)evbuffer_pullup(in, -1);
    int rc = mg_http1_parse_request(buf, len, &req, &lim);
    if (rc == MG_HTTP1_AGAIN && len <= MAX_HTTP_HEAD)
        return;
    event_del(c->timer);
    run_http(c, rc == MG_HTTP1_AGAIN ? MG_HTTP1_EHEADER_SIZE : rc, &req);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    mg_admin_conn_t *c = arg;
    if (c->state == WRITING && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        conn_free(c); /* all sent */
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    mg_admin_conn_t *c = arg;
    if ((what & BEV_EVENT_EOF) && (what & BEV_EVENT_READING) && c->state != READING)
        return; /* the client closed its side after the request: the answer still goes out */
    if ((what & BEV_EVENT_EOF) && c->kind == SOCK && c->state == READING &&
        evbuffer_get_length(bufferevent_get_input(bev)) > 0) {
        /* a last command line without its newline ("printf status | nc -U") */
        struct evbuffer *in = bufferevent_get_input(bev);
        size_t n = evbuffer_get_length(in);
        char *line = mg_alloc(n + 1);
        evbuffer_remove(in, line, n);
        line[n] = '\0';
        event_del(c->timer);
        run_command(c, line);
        free(line);
        return;
    }
    conn_free(c); /* error, send timeout, or gone before its request */
}

static void on_accept(evutil_socket_t lfd, short what, void *arg)
{
    mg_admin_t *a = arg;
    int kind = lfd == a->listen_fd ? SOCK : HTTP;
    for (int n = 0; n < 16; n++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
                mg_log_error(NULL, "admin: accept failed: %s", strerror(errno));
            return;
        }
        if (a->nconns[kind] >= MG_ADMIN_MAX_CONNS) {
            /* over the cap: say so if the socket takes it at once, and close */
#define TOO_MANY "too many admin connections; try again\n"
            char msg[256];
            if (kind == SOCK)
                snprintf(msg, sizeof(msg), "ERR %zu\n%s", sizeof(TOO_MANY) - 1, TOO_MANY);
            else
                snprintf(msg, sizeof(msg), "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                                           "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                         sizeof(TOO_MANY) - 1, TOO_MANY);
            if (send(fd, msg, strlen(msg), MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
                /* nothing more to do for it */
            }
            close(fd);
            continue;
        }
        mg_admin_conn_t *c = mg_calloc(1, sizeof(*c));
        c->a = a;
        c->kind = kind;
        c->bev = bufferevent_socket_new(a->base, fd, BEV_OPT_CLOSE_ON_FREE);
        bufferevent_priority_set(c->bev, event_get_priority(a->accept_ev[kind]));
        bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
        bufferevent_setwatermark(c->bev, EV_READ, 0, (kind == SOCK ? MAX_LINE : MAX_HTTP_HEAD) + 1);
        bufferevent_enable(c->bev, EV_READ);
        c->timer = evtimer_new(a->base, on_timer, c);
        event_priority_set(c->timer, event_get_priority(a->accept_ev[kind]));
        struct timeval tv = { MG_ADMIN_HEAD_TIMEOUT_MS / 1000, (MG_ADMIN_HEAD_TIMEOUT_MS % 1000) * 1000 };
        event_add(c->timer, &tv);
        c->next = a->conns;
        if (a->conns)
            a->conns->prev = c;
        a->conns = c;
        a->nconns[kind]++;
    }
}

static void on_notify(evutil_socket_t fd, short what, void *arg)
{
    mg_admin_t *a = arg;
    uint64_t v;
    if (read(fd, &v, sizeof(v)) < 0) {
        /* readable was enough */
    }
    for (mg_admin_conn_t *c = a->conns, *next; c; c = next) {
        next = c->next; /* renders_answer may free nothing, but keep the walk safe */
        if (c->state == WAITING && c->renders)
            renders_answer(c, 0);
    }
}

int mg_admin_start(mg_admin_t *a, struct event_base *base, int priority)
{
    a->base = base;
    a->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    a->notify_ev = event_new(base, a->notify_fd, EV_READ | EV_PERSIST, on_notify, a);
    event_priority_set(a->notify_ev, priority);
    event_add(a->notify_ev, NULL);
    int fds[2] = { a->listen_fd, a->http_fd };
    for (int k = 0; k < 2; k++) {
        if (fds[k] < 0)
            continue;
        a->accept_ev[k] = event_new(base, fds[k], EV_READ | EV_PERSIST, on_accept, a);
        event_priority_set(a->accept_ev[k], priority);
        event_add(a->accept_ev[k], NULL);
    }
    return MG_OK;
}

int mg_admin_open(mg_admin_t *a, const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(sa.sun_path)) {
        snprintf(err, errlen, "admin_socket path too long: %s", path);
        return MG_ERROR;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    /* a socket file nobody answers on is stale (a crashed gatewayd): replace it */
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
        close(fd);
        snprintf(err, errlen, "admin socket %s is in use by a running gatewayd", path);
        return MG_ERROR;
    }
    close(fd);
    unlink(path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    mode_t old = umask(0177); /* 0600: only the gateway's user may control it */
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (rc < 0 || listen(fd, 64) < 0) {
        snprintf(err, errlen, "cannot create admin socket %s: %s", path, strerror(errno));
        close(fd);
        return MG_ERROR;
    }
    a->listen_fd = fd;
    a->socket_path = strdup(path);
    return MG_OK;
}

int mg_admin_open_http(mg_admin_t *a, const char *addr, char *err, size_t errlen)
{
    mg_listen_addr_t la;
    if (mg_parse_listen(addr, &la, err, errlen) != MG_OK)
        return MG_ERROR;
    int fd = socket(la.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&la.ss, la.len) < 0 || listen(fd, 64) < 0) {
        snprintf(err, errlen, "cannot listen on admin_listen %s: %s", addr, strerror(errno));
        close(fd);
        free(la.text);
        return MG_ERROR;
    }
    free(la.text);
    a->http_fd = fd;
    return MG_OK;
}

void mg_admin_close(mg_admin_t *a)
{
    while (a->conns)
        conn_free(a->conns);
    for (int k = 0; k < 2; k++) {
        if (a->accept_ev[k])
            event_free(a->accept_ev[k]);
        a->accept_ev[k] = NULL;
    }
    if (a->notify_ev) {
        event_free(a->notify_ev);
        close(a->notify_fd);
        a->notify_ev = NULL;
    }
    if (a->http_fd >= 0)
        close(a->http_fd);
    a->http_fd = -1;
    if (a->listen_fd >= 0) {
        close(a->listen_fd);
        unlink(a->socket_path);
    }
    a->listen_fd = -1;
    free(a->socket_path);
    a->socket_path = NULL;
}

int mg_admin_reload(mg_admin_t *a, char *err, size_t errlen)
{
    /* 1. everything is loaded and validated before anything changes */
    mg_config_t next;
    memset(&next, 0, sizeof(next));
    struct event_base *check_base = event_base_new();
    mg_gen_t *check = mg_gen_load(a->file, check_base, NULL, &next, err, errlen);
    if (!check) {
        event_base_free(check_base);
        mg_config_free(&next);
        a->reload_failures++;
        return MG_ERROR;
    }
    int nroutes = check->nroutes;
    mg_gen_free(check);
    event_base_free(check_base);
    /* the new certificates serve new connections when the addresses are the same */
    int same_listen = next.nlisten == a->cfg->nlisten;
    for (int i = 0; same_listen && i < next.nlisten; i++)
        same_listen = strcmp(next.listen[i].text, a->cfg->listen[i].text) == 0;
    if (!same_listen || (next.workers && next.workers != a->nworkers))
        mg_log_warn(NULL, "reload: listen addresses and workers take effect on restart only");

    /* 2. a generation for each worker, built here for its loop */
    mg_gen_t **gens = mg_calloc((size_t)a->nworkers, sizeof(*gens));
    for (int i = 0; i < a->nworkers; i++) {
        gens[i] = mg_gen_load(a->file, a->workers[i].base, &a->workers[i], NULL, err, errlen);
        if (!gens[i]) {
            for (int k = 0; k < i; k++)
                mg_gen_free(gens[k]);
            free(gens);
            mg_config_free(&next);
            a->reload_failures++;
            return MG_ERROR;
        }
        mg_gen_use_tls(gens[i], same_listen ? &next : a->cfg);
    }
    mg_config_apply_tls(&next);
    mg_config_free(&next); /* the generations hold what they use */
    /* 3. publish; each worker switches between two of its requests (gatewayctl waits for that) */
    for (int i = 0; i < a->nworkers; i++)
        mg_worker_post_gen(&a->workers[i], gens[i]);
    free(gens);
    a->reloads++;
    mg_log_info(NULL, "reloaded %s: %d routes", a->file, nroutes);
    return MG_OK;
}
