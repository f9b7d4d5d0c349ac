/*
 * mg_reload — a reload of the config file (mg_admin.h: mg_admin_reload), on
 * the main thread's loop. Each worker needs a generation of its own (its own
 * Lua state, built for its loop); they are built at the same time, one
 * background job each (mg_bgjob: idle CPU first), so a reload costs one
 * load's wall time rather than one per worker and no request waits behind
 * it. Worker 0's load also reads the settings: it is the validation. When
 * the last load ended, everything was validated before anything changes:
 * then the generations are published, or all dropped.
 *
 * The loads read the file each on their own, and idle CPU may start one
 * long after another: a file rewritten meanwhile could give the workers
 * different configs. So the file's identity (mg_file_id) is taken before
 * the loads and after them; when it changed, the loads are dropped
 * and run again, at most MAX_TORN times (then the reload is refused).
 */
#include <stdio.h>
#include <string.h>

#include "mg_admin.h"
#include "mg_bgjob.h"
#include "mg_log.h"
#include "mg_lua.h"

#define MAX_TORN 5

typedef struct reload reload_t;

/* One worker's next generation. */
typedef struct load {
    reload_t *r;
    int worker;
    mg_config_t *cfg;             /* worker 0's load also reads the settings */
    mg_gen_t *gen;
    mg_routes_view_t routes;      /* worker 0's: what `gatewayctl routes` answers once it runs */
    char err[1024];
} load_t;

struct reload {
    mg_admin_t *a;
    uint64_t number;
    int torn;                     /* times the file changed during the loads */
    mg_file_id_t before;
    int pending;                  /* loads not yet ended */
    mg_config_t next;
    load_t loads[];
};

static void load_work(void *arg)
{
    load_t *l = arg;
    mg_admin_t *a = l->r->a;
    mg_worker_t *w = &a->workers[l->worker];
    l->gen = mg_gen_load(a->file, w->base, w, l->cfg, l->err, sizeof(l->err));
    if (l->gen && l->cfg)
        mg_routes_view_take(&l->routes, l->gen); /* here: the worker's VM is the worker's once published */
    /* the load's garbage (tens of MB for 10,000 routes) is swept here, not by the worker's first requests */
    if (l->gen)
        lua_gc(l->gen->vm->L, LUA_GCCOLLECT, 0);
}

static int str_differ(const char *x, const char *y) { return (x == NULL) != (y == NULL) || (x && strcmp(x, y) != 0); }

static int same_listen(const mg_config_t *x, const mg_config_t *y)
{
    if (x->nlisten != y->nlisten)
        return 0;
    for (int i = 0; i < x->nlisten; i++)
        if (strcmp(x->listen[i].text, y->listen[i].text) != 0)
            return 0;
    return 1;
}

/*
 * The settings next changes that a reload does not apply (the running values
 * stay until a restart), as a sentence in out ("" when none): a changed value
 * that would be ignored in silence is what the config's rule forbids.
 */
static void restart_only_changes(const mg_config_t *cur, const mg_config_t *next, char *out, size_t outlen)
{
    const struct {
        int changed;
        const char *name;
    } s[] = {
        { !same_listen(cur, next), "listen" },
        { next->workers != cur->workers, "workers" },
        { next->limits.max_line != cur->limits.max_line, "limits.max_request_line" },
        { next->limits.max_head != cur->limits.max_head, "limits.max_header_size" },
        { next->limits.max_headers != cur->limits.max_headers, "limits.max_headers" },
        { next->max_body != cur->max_body, "limits.max_body" },
        { next->header_timeout_ms != cur->header_timeout_ms, "timeouts.header" },
        { next->body_timeout_ms != cur->body_timeout_ms, "timeouts.body" },
        { next->keepalive_timeout_ms != cur->keepalive_timeout_ms, "timeouts.keepalive" },
        { next->send_timeout_ms != cur->send_timeout_ms, "timeouts.send" },
        { next->request_timeout_ms != cur->request_timeout_ms, "timeouts.request" },
        { next->drain_timeout_ms != cur->drain_timeout_ms, "timeouts.drain" },
        { next->watchdog_ms != cur->watchdog_ms, "timeouts.watchdog" },
        { next->h2_max_streams != cur->h2_max_streams || next->h2_window != cur->h2_window, "http2" },
        { str_differ(next->access_log, cur->access_log), "access_log" },
        { str_differ(next->error_log, cur->error_log), "error_log" },
        { str_differ(next->error_header, cur->error_header), "error_header" },
        { str_differ(next->hosts_file, cur->hosts_file), "hosts_file" },
        { str_differ(next->admin_socket, cur->admin_socket), "admin_socket" },
        { str_differ(next->admin_listen, cur->admin_listen), "admin_listen" },
    };
    mg_text_t t = { 0 };
    int n = 0;
    for (size_t i = 0; i < mg_countof(s); i++)
        if (s[i].changed)
            mg_text_add(&t, "%s%s", n++ ? ", " : "", s[i].name);
    if (n)
        snprintf(out, outlen, "%.*s changed in the file but %s effect on restart only: the running value%s kept",
                 (int)t.len, t.p, n > 1 ? "take" : "takes", n > 1 ? "s are" : " is");
    else
        out[0] = '\0';
    free(t.p);
}

/* Every load was valid: the generations go to the workers, each switches between two of its requests. */
static void publish(reload_t *r)
{
    mg_admin_t *a = r->a;
    mg_config_t *next = &r->next;
    restart_only_changes(a->cfg, next, a->reload_warning, sizeof(a->reload_warning));
    if (a->reload_warning[0])
        mg_log_warn(NULL, "reload: %s", a->reload_warning);
    /* the new certificates serve new connections when the addresses are the same */
    const mg_config_t *tls = same_listen(a->cfg, next) ? next : a->cfg;
    for (int i = 0; i < a->nworkers; i++)
        mg_gen_use_tls(r->loads[i].gen, tls);
    mg_config_apply_tls(next);
    mg_admin_apply_tracing(&next->tracing);
    uint64_t *before = mg_calloc((size_t)a->nworkers, sizeof(*before));
    for (int i = 0; i < a->nworkers; i++)
        before[i] = mg_worker_generation(&a->workers[i]);
    for (int i = 0; i < a->nworkers; i++)
        mg_worker_post_gen(&a->workers[i], r->loads[i].gen);
    mg_routes_view_t old = a->routes;
    a->routes = r->loads[0].routes;
    r->loads[0].routes = old; /* freed with the reload */
    a->reloads++;
    /* from the ask: a load that ran again because the file changed is part of it */
    mg_log_info(NULL, "reloaded %s: %d routes in %llu ms%s", a->file, r->loads[0].gen->nroutes,
                (unsigned long long)(mg_now_ms() - a->loading_since_ms),
                r->torn ? " (loaded again: the file changed during a load)" : "");
    mg__admin_reloaded(a, r->number, NULL, before);
    free(before);
}

static reload_t *start(mg_admin_t *a, uint64_t number, int torn);

/* The loads that succeeded, never installed: freed off this thread. */
static void drop_loads(reload_t *r)
{
    for (int i = 0; i < r->a->nworkers; i++)
        if (r->loads[i].gen)
            mg_gen_bury(r->loads[i].gen);
}

static void load_done(void *arg)
{
    load_t *l = arg;
    reload_t *r = l->r;
    if (--r->pending)
        return;
    mg_admin_t *a = r->a;
    a->loading = NULL;
    mg_file_id_t after;
    mg_file_id(a->file, &after);
    int torn = mg_file_id_changed(&r->before, &after) && !a->closing;
    /* the workers may have read different files: again, as it is now (the same reload to whoever asked) */
    int again = torn && r->torn + 1 < MAX_TORN;
    const char *failed = NULL;
    char msg[256];
    for (int i = 0; i < a->nworkers && !failed; i++)
        if (!r->loads[i].gen)
            failed = r->loads[i].err;
    if (torn && !again) {
        snprintf(msg, sizeof(msg), "%s changed while it was being loaded, %d times in a row: reload once it is written",
                 a->file, MAX_TORN);
        failed = msg;
    }
    if (again) {
        drop_loads(r);
        mg_log_info(NULL, "reload: %s changed while it was being loaded; loading it again", a->file);
    } else if (a->closing) {
        drop_loads(r);
        mg_log_info(NULL, "reload dropped: the gateway is stopping");
        mg__admin_reloaded(a, r->number, "the gateway is stopping", NULL);
    } else if (failed) {
        drop_loads(r);
        a->reload_failures++;
        mg_log_error(NULL, "reload refused, the running configuration is unchanged: %s", failed);
        mg__admin_reloaded(a, r->number, failed, NULL);
    } else {
        publish(r);
    }
    uint64_t number = r->number;
    int tries = r->torn + 1;
    mg_config_free(&r->next); /* the generations hold what they use */
    mg_routes_view_free(&r->loads[0].routes);
    free(r);
    if (again) {
        start(a, number, tries);
    } else if (a->reload_again && !a->closing) {
        a->reload_again = 0;
        start(a, ++a->reload_number, 0);
    }
}

static reload_t *start(mg_admin_t *a, uint64_t number, int torn)
{
    reload_t *r = mg_calloc(1, sizeof(*r) + (size_t)a->nworkers * sizeof(load_t));
    r->a = a;
    r->number = number;
    r->torn = torn;
    if (!torn)
        a->loading_since_ms = mg_now_ms();
    mg_file_id(a->file, &r->before);
    r->pending = a->nworkers;
    for (int i = 0; i < a->nworkers; i++)
        r->loads[i] = (load_t){ .r = r, .worker = i, .cfg = i == 0 ? &r->next : NULL };
    /* set before the first job: a job that cannot get a thread ends on the loop, never inside this call */
    a->loading = r;
    for (int i = 0; i < a->nworkers; i++)
        mg_bgjob_start(a->base, load_work, load_done, &r->loads[i]);
    return r;
}

uint64_t mg_admin_reload(mg_admin_t *a)
{
    if (a->loading) {
        a->reload_again = 1;
        return a->loading->number + 1;
    }
    start(a, ++a->reload_number, 0);
    return a->reload_number;
}
