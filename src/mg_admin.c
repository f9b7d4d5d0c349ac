/*
 * mg_admin — see mg_admin.h. Everything here runs on the main thread; it
 * reads worker figures with atomic loads and never touches a worker's
 * generation (only the worker itself does).
 */
#define _GNU_SOURCE
#include "mg_admin.h"

#include <errno.h>
#include <stdarg.h>
#include <lua.h>
#include <poll.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "mg_log.h"
#include "mg_sema.h"

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
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    mode_t old = umask(0177); /* 0600: only the gateway's user may control it */
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (rc < 0 || listen(fd, 16) < 0) {
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
    int fd = socket(la.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&la.ss, la.len) < 0 || listen(fd, 16) < 0) {
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
    /* 3. publish; each worker switches between two of its requests */
    uint64_t *before = mg_calloc((size_t)a->nworkers, sizeof(*before));
    for (int i = 0; i < a->nworkers; i++) {
        before[i] = mg_worker_generation(&a->workers[i]);
        mg_worker_post_gen(&a->workers[i], gens[i]);
    }
    uint64_t deadline = mg_now_ms() + 5000;
    for (int i = 0; i < a->nworkers; i++)
        while (mg_worker_generation(&a->workers[i]) == before[i] && mg_now_ms() < deadline)
            usleep(1000);
    free(before);
    free(gens);
    a->reloads++;
    mg_log_info(NULL, "reloaded %s: %d routes", a->file, nroutes);
    return MG_OK;
}

typedef struct out {
    char buf[65536];
    size_t len;
} out_t;

static void put(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(out_t *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->buf + o->len, sizeof(o->buf) - o->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->len += (size_t)n < sizeof(o->buf) - o->len ? (size_t)n : sizeof(o->buf) - o->len - 1;
}

typedef struct sema_list {
    out_t *o;
    int json;
    int count;
} sema_list_t;

static void put_sema(mg_sema_t *s, void *arg)
{
    sema_list_t *l = arg;
    mg_sema_stats_t st;
    mg_sema_stats(s, &st);
    if (l->json)
        put(l->o, "%s\"%s\":{\"capacity\":%lld,\"in_use\":%lld,\"queued\":%lld,\"acquired\":%llu,"
                  "\"rejected\":%llu,\"timed_out\":%llu,\"longest_wait_ms\":%llu}",
            l->count ? "," : "", mg_sema_name(s), (long long)st.capacity, (long long)st.in_use,
            (long long)st.queued, (unsigned long long)st.acquired, (unsigned long long)st.rejected,
            (unsigned long long)st.timed_out, (unsigned long long)st.longest_wait_ms);
    else
        put(l->o, "  %-40s capacity %lld, in use %lld, queued %lld, acquired %llu, rejected %llu, "
                  "timed out %llu, longest wait %llu ms\n",
            mg_sema_name(s), (long long)st.capacity, (long long)st.in_use, (long long)st.queued,
            (unsigned long long)st.acquired, (unsigned long long)st.rejected,
            (unsigned long long)st.timed_out, (unsigned long long)st.longest_wait_ms);
    l->count++;
}

static void status(mg_admin_t *a, out_t *o, int json)
{
    double up = mg_wall_time() - a->started;
    if (json) {
        put(o, "{\"version\":\"%s\",\"config\":\"%s\",\"uptime_s\":%.0f,\"reloads\":%llu,"
               "\"reload_failures\":%llu,\"workers\":[",
            MG_VERSION, a->file, up, (unsigned long long)a->reloads, (unsigned long long)a->reload_failures);
        for (int i = 0; i < a->nworkers; i++) {
            mg_worker_t *w = &a->workers[i];
            put(o, "%s{\"id\":%d,\"generation\":%llu,\"connections\":%zu,\"requests\":%llu}", i ? "," : "", i,
                (unsigned long long)mg_worker_generation(w), __atomic_load_n(&w->nconns, __ATOMIC_RELAXED),
                (unsigned long long)__atomic_load_n(&w->requests, __ATOMIC_RELAXED));
        }
        put(o, "],\"semaphores\":{");
        sema_list_t l = { o, 1, 0 };
        mg_sema_each(put_sema, &l);
        put(o, "}}\n");
        return;
    }
    put(o, "gatewayd %s, config %s, up %.0f s, %llu reloads (%llu refused)\n", MG_VERSION, a->file, up,
        (unsigned long long)a->reloads, (unsigned long long)a->reload_failures);
    for (int i = 0; i < a->nworkers; i++) {
        mg_worker_t *w = &a->workers[i];
        put(o, "worker %d: generation %llu, %zu connections, %llu requests\n", i,
            (unsigned long long)mg_worker_generation(w), __atomic_load_n(&w->nconns, __ATOMIC_RELAXED),
            (unsigned long long)__atomic_load_n(&w->requests, __ATOMIC_RELAXED));
    }
    put(o, "semaphores:\n");
    sema_list_t l = { o, 0, 0 };
    mg_sema_each(put_sema, &l);
    if (!l.count)
        put(o, "  (none)\n");
}

/* The compiled routes of a config file, as `gatewayd --routes` prints them (or JSON). */
static int routes(const char *file, out_t *o, int json, char *err, size_t errlen)
{
    mg_config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    struct event_base *base = event_base_new();
    mg_gen_t *gen = mg_gen_load(file, base, NULL, &cfg, err, errlen);
    if (!gen) {
        event_base_free(base);
        mg_config_free(&cfg);
        return MG_ERROR;
    }
    lua_State *L = gen->vm->L;
    lua_getglobal(L, "require");
    lua_pushliteral(L, "moongate.config");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, json ? "describe_json" : "describe");
    lua_getfield(L, -2, "load");
    lua_pushstring(L, file);
    lua_call(L, 1, 1);
    lua_call(L, 1, 1);
    if (json)
        put(o, "%s\n", lua_tostring(L, -1));
    else
        put(o, "%-4s %-12s %-20s %-40s %-24s %s\n%s\n", "id", "methods", "host", "path", "target",
            "plugins (in order)", lua_tostring(L, -1));
    mg_gen_free(gen);
    event_base_free(base);
    mg_config_free(&cfg);
    return MG_OK;
}

char *mg_admin_routes_text(const char *file, char *err, size_t errlen)
{
    out_t *o = mg_calloc(1, sizeof(*o));
    char *text = routes(file, o, 0, err, errlen) == MG_OK ? strdup(o->buf) : NULL;
    free(o);
    return text;
}

static void answer(int fd, int ok, const char *text, size_t len)
{
    const char *head = ok ? "OK\n" : "ERR\n";
    if (write(fd, head, strlen(head)) < 0 || write(fd, text, len) < 0) {
        /* gatewayctl went away: nothing to tell it */
    }
}

/* Reads the first line a client sends (2 s at most: the main thread must not hang on it). */
static void read_line(int fd, char *line, size_t size)
{
    size_t len = 0;
    while (len < size - 1) {
        struct pollfd p = { fd, POLLIN, 0 };
        if (poll(&p, 1, 2000) <= 0)
            break;
        ssize_t n = read(fd, line + len, size - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        if (memchr(line, '\n', len))
            break;
    }
    line[len] = '\0';
}

static void prom_sema(mg_sema_t *s, void *arg)
{
    mg_text_t *t = arg;
    mg_sema_stats_t st;
    mg_sema_stats(s, &st);
    const char *n = mg_sema_name(s);
    mg_text_add(t, "moongate_semaphore_capacity{name=\"%s\"} %lld\nmoongate_semaphore_in_use{name=\"%s\"} %lld\n"
                   "moongate_semaphore_queued{name=\"%s\"} %lld\nmoongate_semaphore_acquired_total{name=\"%s\"} %llu\n"
                   "moongate_semaphore_rejected_total{name=\"%s\"} %llu\n"
                   "moongate_semaphore_timed_out_total{name=\"%s\"} %llu\n"
                   "moongate_semaphore_longest_wait_seconds{name=\"%s\"} %.3f\n",
                n, (long long)st.capacity, n, (long long)st.in_use, n, (long long)st.queued, n,
                (unsigned long long)st.acquired, n, (unsigned long long)st.rejected, n,
                (unsigned long long)st.timed_out, n, st.longest_wait_ms / 1000.0);
}

static void metrics(mg_admin_t *a, mg_text_t *t)
{
    mg_text_add(t, "# moongate %s\nmoongate_uptime_seconds %.0f\nmoongate_reloads_total{result=\"ok\"} %llu\n"
                   "moongate_reloads_total{result=\"refused\"} %llu\nmoongate_log_lines_dropped_total %llu\n",
                MG_VERSION, mg_wall_time() - a->started, (unsigned long long)a->reloads,
                (unsigned long long)a->reload_failures, (unsigned long long)mg_log_dropped());
    mg_sema_each(prom_sema, t);
    for (int i = 0; i < a->nworkers; i++)
        if (mg_worker_metrics(&a->workers[i], t) != MG_OK)
            mg_text_add(t, "# worker %d did not answer (stuck?)\n", i);
}

void mg_admin_serve_http(mg_admin_t *a)
{
    int fd = accept4(a->http_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    char line[2048];
    read_line(fd, line, sizeof(line));
    mg_text_t body = { 0 };
    const char *ctype = "text/plain; version=0.0.4";
    int code = 200;
    if (strncmp(line, "GET /metrics ", 13) == 0 || strncmp(line, "GET /metrics?", 13) == 0) {
        metrics(a, &body);
    } else if (strncmp(line, "GET /status ", 12) == 0) {
        out_t *o = mg_calloc(1, sizeof(*o));
        status(a, o, 1);
        mg_text_add(&body, "%s", o->buf);
        free(o);
        ctype = "application/json";
    } else {
        code = 404;
        mg_text_add(&body, "try /metrics or /status\n");
    }
    char head[256];
    int n = snprintf(head, sizeof(head), "HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                                          "Connection: close\r\n\r\n",
                     code, code == 200 ? "OK" : "Not Found", ctype, body.len);
    if (write(fd, head, (size_t)n) < 0 || (body.len && write(fd, body.p, body.len) < 0)) {
        /* the scraper went away */
    }
    free(body.p);
    close(fd);
}

void mg_admin_serve(mg_admin_t *a)
{
    int fd = accept4(a->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    char line[4096];
    read_line(fd, line, sizeof(line));
    char *nl = strchr(line, '\n');
    if (nl)
        *nl = '\0';
    char *cmd = strtok(line, " ");
    char *arg = strtok(NULL, " ");
    out_t *o = mg_calloc(1, sizeof(*o));
    char err[2048];
    int ok = 1;
    if (!cmd) {
        ok = 0;
        put(o, "empty command\n");
    } else if (strcmp(cmd, "status") == 0) {
        status(a, o, arg && strcmp(arg, "json") == 0);
    } else if (strcmp(cmd, "reload") == 0) {
        if (mg_admin_reload(a, err, sizeof(err)) == MG_OK) {
            put(o, "reloaded %s\n", a->file);
        } else {
            ok = 0;
            put(o, "%s\nthe running configuration is unchanged\n", err);
            mg_log_error(NULL, "reload refused: %s", err);
        }
    } else if (strcmp(cmd, "check") == 0) {
        mg_config_t cfg;
        memset(&cfg, 0, sizeof(cfg));
        struct event_base *base = event_base_new();
        mg_gen_t *gen = mg_gen_load(arg ? arg : a->file, base, NULL, &cfg, err, sizeof(err));
        if (gen) {
            put(o, "%s is valid (%d routes)\n", arg ? arg : a->file, gen->nroutes);
            mg_gen_free(gen);
        } else {
            ok = 0;
            put(o, "%s\n", err);
        }
        event_base_free(base);
        mg_config_free(&cfg);
    } else if (strcmp(cmd, "upstreams") == 0) {
        int json = arg && strcmp(arg, "json") == 0;
        mg_text_t t = { 0 };
        if (json)
            mg_text_add(&t, "[");
        for (int i = 0; i < a->nworkers; i++) {
            if (json && i)
                mg_text_add(&t, ",");
            if (mg_worker_upstreams(&a->workers[i], &t, json) != MG_OK)
                mg_text_add(&t, json ? "{\"worker\":%d,\"stuck\":true}" : "worker %d did not answer (stuck?)\n", i);
        }
        if (json)
            mg_text_add(&t, "]\n");
        put(o, "%s", t.p ? t.p : "");
        free(t.p);
    } else if (strcmp(cmd, "routes") == 0) {
        if (routes(a->file, o, arg && strcmp(arg, "json") == 0, err, sizeof(err)) != MG_OK) {
            ok = 0;
            put(o, "%s\n", err);
        }
    } else if (strcmp(cmd, "reopen-logs") == 0) {
        if (mg_log_reopen(err, sizeof(err)) == MG_OK) {
            put(o, "logs reopened\n");
        } else {
            ok = 0;
            put(o, "%s\n", err);
        }
    } else if (strcmp(cmd, "stop") == 0) {
        a->stop_requested = 1;
        a->stop_drain_ms = arg ? (uint32_t)(atof(arg) * 1000) : a->cfg->drain_timeout_ms;
        put(o, "stopping (draining up to %u ms)\n", a->stop_drain_ms);
    } else {
        ok = 0;
        put(o, "unknown command '%s' (status, routes, upstreams, reload, check, reopen-logs, stop)\n", cmd);
    }
    answer(fd, ok, o->buf, o->len);
    free(o);
    close(fd);
}
