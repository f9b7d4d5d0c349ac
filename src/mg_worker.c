/*
 * mg_worker — see mg_worker.h.
 */
#define _GNU_SOURCE
#include "mg_worker.h"

#include <event2/dns.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <stdio.h>
#include <sched.h>
#include <stddef.h>
#include <sys/random.h>
#include <time.h>

#include "mg_conn.h"
#include "mg_h2up.h"
#include "mg_log.h"
#include "mg_tunnel.h"
#include "mg_req.h"

/*
 * A few connections per loop pass, not all that are pending: a burst of new
 * connections then takes turns with requests on established connections
 * instead of running ahead of them. On a TLS listener one: each new
 * connection brings a handshake (~0.5 ms of CPU), and taking them one at a
 * time keeps requests on established connections from queueing behind
 * several (bench/tls.sh: handshake p50 3.4-4.3 ms with 4, 2.0-2.6 ms with 1,
 * as nginx). The listening socket is level-triggered: the rest is taken on
 * the next pass.
 */
#define ACCEPT_BATCH 4
#define ACCEPT_BATCH_TLS 1

static void on_accept(evutil_socket_t lfd, short what, void *arg)
{
    mg_worker_t *w = arg;
    SSL_CTX *tls = NULL;
    int http2 = 0;
    for (int i = 0; i < w->nlisteners; i++)
        if (w->fds[i] == lfd) {
            tls = w->gen->tls[i];
            http2 = w->cfg->listen[i].http2;
        }
    int batch = tls ? ACCEPT_BATCH_TLS : ACCEPT_BATCH;
    for (int n = 0; n < batch; n++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd = accept4(lfd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0 && errno == EINVAL && !w->draining) {
            /* the watchdog shut it while we were stuck, and we are back: rejoin the SO_REUSEPORT group */
            if (listen(lfd, 4096) == 0)
                mg_log_info(NULL, "worker %d is back in its event loop: it takes new connections again", w->id);
            else
                mg_log_error(NULL, "worker %d: cannot listen again: %s", w->id, strerror(errno));
            return;
        }
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
                /* EMFILE and friends: log and keep the listener; the loop retries on the next pass */
                mg_log_error(NULL, "accept failed: %s", strerror(errno));
            return;
        }
        mg_conn_accept(w, fd, (struct sockaddr *)&ss, (int)len, tls, http2);
    }
}

static void close_listeners(mg_worker_t *w)
{
    for (int i = 0; i < w->nlisteners; i++) {
        event_free(w->listeners[i]);
        close(w->fds[i]);
        w->listeners[i] = NULL;
    }
    w->nlisteners = 0;
}

static void on_heartbeat(evutil_socket_t fd, short what, void *arg)
{
    mg_worker_t *w = arg;
    __atomic_store_n(&w->beat, mg_now_ms(), __ATOMIC_RELAXED);
}

/*
 * The watchdog: mg_worker_watchdog runs on the main thread once a second.
 *
 * Looking inside a stuck worker. task_resume (mg_lua.c) stores the task it
 * resumes in w->running.task and restores the outer one when lua_resume
 * returns. Right after that the worker may free the task (timers, spawned
 * children and init_worker are heap objects), so the main thread looks inside
 * a task only while the worker cannot leave it: main sets
 * MG_RUNNING_INSPECTING, then loads running.task; the worker stores the outer
 * task, then loads running.watch and, while INSPECTING is set, waits in
 * mg_running_settle. All four accesses are sequentially consistent (Dekker's
 * pattern): either main loads a task that is already left, never a freed
 * one, or the worker sees INSPECTING and waits, so the task main loaded stays
 * alive until main clears the flag. Main holds it for two short copies and one
 * lua_sethook, never across I/O or a lock.
 *
 * Ending the stuck task. lua_sethook may be called asynchronously (LuaJIT's
 * lua.c calls it from a signal handler): it stores the hook and its count in
 * the VM's global state and switches the interpreter's dispatch entries, each
 * an aligned pointer store (it also aborts a trace being recorded; by the time
 * a worker is late, a loop that reaches the interpreter is long blacklisted).
 * Main sets the hook on the VM the task runs on (task->vm->L: hooks belong to
 * the VM, not to a coroutine), inside the window. That VM cannot be closed
 * meanwhile: the task keeps its generation referenced, and a generation is
 * closed only once buried, after its last request ended (the graveyard's
 * job, mg_bgjob), or by the main thread, busy here (mg_worker_free after the
 * join). The hook runs on the
 * worker thread and touches only worker state. The worker removes it when the
 * task it was aimed at leaves its resume, however it leaves (mg_running_settle,
 * which never overlaps main's lua_sethook: main sets a hook only inside a
 * window and only when none is armed), so a late hook never ends a later
 * request.
 */
void mg_running_settle(mg_running_t *run, mg_task_t *t)
{
    while (__atomic_load_n(&run->watch, __ATOMIC_SEQ_CST) & MG_RUNNING_INSPECTING)
        sched_yield(); /* the main thread's window lasts microseconds */
    if ((__atomic_load_n(&run->watch, __ATOMIC_ACQUIRE) & MG_RUNNING_ARMED) &&
        __atomic_load_n(&run->kill, __ATOMIC_ACQUIRE) == t) {
        lua_sethook(t->vm->L, NULL, 0, 0);
        run->kill_logged = 0;
        __atomic_store_n(&run->kill, NULL, __ATOMIC_RELEASE);
        __atomic_and_fetch(&run->watch, ~MG_RUNNING_ARMED, __ATOMIC_SEQ_CST);
    }
}

/* The plugin step running on co's stack (plugins.lua runs each from a local `step`). */
static int find_step(lua_State *co, char *plugin, size_t plen, char *phase, size_t phlen)
{
    lua_Debug d;
    if (!lua_checkstack(co, 4))
        return 0;
    for (int level = 0; lua_getstack(co, level, &d); level++) {
        const char *name;
        for (int i = 1; (name = lua_getlocal(co, &d, i)) != NULL; i++) {
            int found = strcmp(name, "step") == 0 && lua_istable(co, -1);
            if (found) {
                lua_pushliteral(co, "name");
                lua_rawget(co, -2);
                snprintf(plugin, plen, "%s", lua_type(co, -1) == LUA_TSTRING ? lua_tostring(co, -1) : "?");
                lua_pushliteral(co, "phase");
                lua_rawget(co, -3);
                snprintf(phase, phlen, "%s", lua_type(co, -1) == LUA_TSTRING ? lua_tostring(co, -1) : "?");
                lua_pop(co, 2);
            }
            lua_pop(co, 1);
            if (found)
                return 1;
        }
    }
    return 0;
}

/* The watchdog's count hook: on the worker thread, inside the resume of the task it is aimed at. */
static void on_watchdog_hook(lua_State *L, lua_Debug *ar)
{
    mg_vm_t *vm = mg_vm_of(L);
    mg_running_t *run = vm ? vm->running : NULL;
    mg_task_t *t = run ? __atomic_load_n(&run->kill, __ATOMIC_ACQUIRE) : NULL;
    if (!t)
        return; /* not armed: the hook is removed with the arm, so this does not happen */
    mg_worker_t *w = (mg_worker_t *)((char *)run - offsetof(mg_worker_t, running));
    uint64_t ms = mg_now_ms() - w->beat;
    char where[512] = "?";
    if (lua_getinfo(L, "Sl", ar))
        snprintf(where, sizeof(where), "%s:%d", ar->source[0] == '@' ? ar->source + 1 : ar->short_src,
                 ar->currentline);
    if (!run->kill_logged) {
        run->kill_logged = 1;
        __atomic_add_fetch(&run->kills, 1, __ATOMIC_RELAXED);
        char plugin[128], phase[64], what[256];
        /* a coroutine of the handler's own runs on L; the plugin steps are on the task's */
        if (find_step(L, plugin, sizeof(plugin), phase, sizeof(phase)) ||
            (L != t->co && find_step(t->co, plugin, sizeof(plugin), phase, sizeof(phase))))
            snprintf(what, sizeof(what), "plugin %s, phase %s", plugin, phase);
        else
            snprintf(what, sizeof(what), "%s", t->route ? "the route's handler" : "a background task");
        mg_log_error(t->trace_id, "watchdog: worker %d ended the request on route %s after %llu ms without "
                                  "yielding: %s, running %s",
                     w->id, t->route ? t->route : "-", (unsigned long long)ms, what, where);
    }
    /* a handler that catches this with pcall gets it again every 1000 instructions, until it returns */
    lua_pushfstring(L, "killed by the watchdog after %d ms without yielding (at %s)", (int)ms, where);
    lua_error(L);
}

/* Main thread: what the stuck worker runs (see above); sets the hook that ends it. */
static int look_inside(mg_worker_t *w, uint64_t now)
{
    mg_running_t *run = &w->running;
    __atomic_or_fetch(&run->watch, MG_RUNNING_INSPECTING, __ATOMIC_SEQ_CST);
    mg_task_t *t = __atomic_load_n(&run->task, __ATOMIC_SEQ_CST);
    if (t) {
        /* t cannot be left, so not freed, until INSPECTING is cleared below */
        snprintf(w->stuck_trace, sizeof(w->stuck_trace), "%s", t->trace_id ? t->trace_id : "");
        snprintf(w->stuck_route, sizeof(w->stuck_route), "%s", t->route ? t->route : "");
        if (!(__atomic_load_n(&run->watch, __ATOMIC_SEQ_CST) & MG_RUNNING_ARMED)) {
            __atomic_store_n(&run->kill, t, __ATOMIC_RELEASE);
            __atomic_or_fetch(&run->watch, MG_RUNNING_ARMED, __ATOMIC_SEQ_CST);
            lua_sethook(t->vm->L, on_watchdog_hook, LUA_MASKCOUNT, 1000);
            w->kills_at_arm = __atomic_load_n(&run->kills, __ATOMIC_RELAXED);
            w->kill_sent_ms = now;
            w->kill_ineffective = 0;
        }
    }
    __atomic_and_fetch(&run->watch, ~MG_RUNNING_INSPECTING, __ATOMIC_SEQ_CST);
    return t != NULL;
}

void mg_worker_watchdog(mg_worker_t *w, uint32_t limit_ms)
{
    uint64_t beat = __atomic_load_n(&w->beat, __ATOMIC_RELAXED);
    uint64_t now = mg_now_ms();
    uint64_t late = now > beat ? now - beat : 0;
    if (w->stuck_reported && (late <= limit_ms || beat != w->stuck_beat)) {
        mg_log_warn(NULL, "worker %d is responsive again", w->id);
        w->stuck_reported = 0;
        w->kill_sent_ms = 0;
        w->kill_ineffective = 0;
        w->stuck_trace[0] = w->stuck_route[0] = '\0';
    }
    if (late <= limit_ms)
        return;
    if (w->stuck_reported) {
        int armed = __atomic_load_n(&w->running.watch, __ATOMIC_SEQ_CST) & MG_RUNNING_ARMED;
        if (!armed)
            look_inside(w, now); /* the task it was aimed at ended, the worker is still away: the next one */
        else if (!w->kill_ineffective && w->kill_sent_ms && now - w->kill_sent_ms + 100 >= MG_WATCHDOG_KILL_MS) {
            w->kill_ineffective = 1;
            if (__atomic_load_n(&w->running.kills, __ATOMIC_RELAXED) != w->kills_at_arm)
                mg_log_error(w->stuck_trace[0] ? w->stuck_trace : NULL,
                             "watchdog: worker %d is still stuck on route %s: the code catches the watchdog's error "
                             "(pcall) and keeps running; it gets it again until it returns",
                             w->id, w->stuck_route[0] ? w->stuck_route : "-");
            else
            mg_log_error(w->stuck_trace[0] ? w->stuck_trace : NULL,
                         "watchdog: worker %d is still stuck on route %s %llu ms after the watchdog set its hook: "
                         "the code is a loop LuaJIT compiled, or a blocking call, which the hook cannot "
                         "interrupt; the worker stays fenced off (restart the gateway to recover it)",
                         w->id, w->stuck_route[0] ? w->stuck_route : "-", (unsigned long long)(now - w->kill_sent_ms));
        }
        return;
    }
    w->stuck_reported = 1;
    w->stuck_beat = beat;
    int in_task = look_inside(w, now);
    const char *tid = w->stuck_trace[0] ? w->stuck_trace : NULL;
    if (in_task)
        mg_log_error(tid, "worker %d has not returned to its event loop for %llu ms: route %s (trace id %s) is running "
                          "code that does not yield (a loop, or blocking I/O); its listening sockets are shut so new "
                          "connections go to the other workers, and the request is ended when it next runs "
                          "interpreted Lua",
                     w->id, (unsigned long long)late, w->stuck_route[0] ? w->stuck_route : "-",
                     tid ? tid : "-");
    else
        mg_log_error(NULL, "worker %d has not returned to its event loop for %llu ms, outside any request task (a "
                           "blocking call?); its listening sockets are shut so new connections go to the other "
                           "workers",
                     w->id, (unsigned long long)late);
    /* leaves the SO_REUSEPORT group: the kernel stops handing this worker connections */
    for (int i = 0; i < w->nfds; i++)
        shutdown(w->fds[i], SHUT_RD);
}

uint64_t mg_worker_stuck_ms(const mg_worker_t *w)
{
    if (!w->stuck_reported)
        return 0;
    uint64_t beat = __atomic_load_n(&w->beat, __ATOMIC_RELAXED), now = mg_now_ms();
    return now > beat ? now - beat : 1;
}
static void on_reap(evutil_socket_t fd, short what, void *arg)
{
    mg_conn_reap(arg);
    mg_req_reap(arg);
}

void mg_worker_reap_soon(mg_worker_t *w) { event_active(w->reap_ev, EV_TIMEOUT, 0); }

static void on_drain_over(evutil_socket_t fd, short what, void *arg)
{
    event_base_loopbreak(((mg_worker_t *)arg)->base);
}

static void on_drain_timeout(evutil_socket_t fd, short what, void *arg)
{
    mg_worker_t *w = arg;
    mg_log_warn(NULL, "worker %d: drain timeout with %zu connections open; closing them", w->id, w->nconns);
    /* tunnels and WebSocket endpoints say goodbye (close 1001) and get a moment to be read: the last
     * connection closing ends the loop sooner */
    if (mg_upgraded_shutdown(w) > 0 && w->nconns > 0) {
        struct timeval tv = { 0, 500 * 1000 };
        evtimer_assign(w->drain_timer, w->base, on_drain_over, w);
        evtimer_add(w->drain_timer, &tv);
        return;
    }
    event_base_loopbreak(w->base);
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    mg_worker_t *w = arg;
    uint64_t v;
    if (read(fd, &v, sizeof(v)) < 0) {
        /* nothing to do: the eventfd was readable, which is all we need */
    }
    if (w->draining)
        return;
    w->draining = 1;
    close_listeners(w);
    mg_conn_t *c = w->conns;
    while (c) {
        mg_conn_t *next = c->next;
        mg_conn_drain(c);
        c = next;
    }
    if (w->nconns == 0) {
        event_base_loopbreak(w->base);
        return;
    }
    uint32_t ms = __atomic_load_n(&w->drain_ms, __ATOMIC_ACQUIRE);
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    w->drain_timer = evtimer_new(w->base, on_drain_timeout, w);
    evtimer_add(w->drain_timer, &tv);
}

/* Starts what a generation runs on this loop: resolution, pools, health checks, init_worker. */
static void gen_activate(mg_worker_t *w, mg_gen_t *gen)
{
    const mg_config_t *cfg = w->cfg;
    int names = 0;
    for (int i = 0; i < gen->nupstreams; i++)
        for (int k = 0; k < gen->upstreams[i].ntargets; k++)
            names += gen->upstreams[i].targets[k].hostname != NULL;
    if (names && !w->dns) {
        /* non-blocking resolution on this worker's loop; /etc/hosts first, like the system */
        w->dns = evdns_base_new(w->base, EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        if (!w->dns)
            w->dns = evdns_base_new(w->base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        if (evdns_base_load_hosts(w->dns, cfg->hosts_file ? cfg->hosts_file : "/etc/hosts") != 0 && cfg->hosts_file)
            mg_log_warn(NULL, "cannot read hosts_file %s", cfg->hosts_file);
    }
    gen->vm->mailbox = &w->mailbox;
    gen->vm->running = &w->running; /* from now on this thread runs it */
    for (int i = 0; i < gen->nupstreams; i++) {
        gen->upstreams[i].mailbox = &w->mailbox;
        mg_upstream_start(&gen->upstreams[i], w->base, w->dns);
    }
    gen->refs++; /* the worker's own reference while it is current */
    mg_plugins_init_worker(gen->vm);
}

static void on_retire(evutil_socket_t fd, short what, void *arg)
{
    mg_worker_t *w = arg;
    for (mg_gen_t **pp = &w->retired; *pp;) {
        mg_gen_t *g = *pp;
        if (g->refs == 0) {
            *pp = g->next_retired;
            mg_gen_bury(g); /* the main thread frees it: closing a large VM must not stall this loop */
        } else {
            pp = &g->next_retired;
        }
    }
}

void mg_worker_gen_unref(mg_worker_t *w, mg_gen_t *gen)
{
    /* freed from the loop, not here: the caller may still be inside that VM's callbacks */
    if (--gen->refs == 0 && gen != w->gen)
        event_active(w->retire_ev, EV_TIMEOUT, 0);
}

static void on_reload(evutil_socket_t fd, short what, void *arg)
{
    mg_worker_t *w = arg;
    uint64_t v;
    if (read(fd, &v, sizeof(v)) < 0) {
        /* the eventfd was readable: the pending generation is what matters */
    }
    pthread_mutex_lock(&w->reload_lock);
    mg_gen_t *gen = w->pending_gen;
    w->pending_gen = NULL;
    pthread_mutex_unlock(&w->reload_lock);
    if (!gen)
        return;
    mg_gen_t *old = w->gen;
    w->gen = gen;
    gen_activate(w, gen);
    old->next_retired = w->retired;
    w->retired = old;
    mg_worker_gen_unref(w, old); /* drop the worker's reference: freed when its last request ends */
    __atomic_add_fetch(&w->generation, 1, __ATOMIC_RELEASE);
}

void mg_worker_post_gen(mg_worker_t *w, mg_gen_t *gen)
{
    pthread_mutex_lock(&w->reload_lock);
    mg_gen_t *stale = w->pending_gen;
    w->pending_gen = gen;
    pthread_mutex_unlock(&w->reload_lock);
    if (stale)
        mg_gen_bury(stale); /* never installed: no request uses it */
    uint64_t one = 1;
    if (write(w->reload_fd, &one, sizeof(one)) < 0)
        mg_log_error(NULL, "cannot signal worker %d to reload", w->id);
}

uint64_t mg_worker_generation(mg_worker_t *w) { return __atomic_load_n(&w->generation, __ATOMIC_ACQUIRE); }

/* Pools and target health of the current generation, seen from this worker. */
static void render_upstreams(mg_worker_t *w, mg_text_t *o)
{
    uint64_t now = mg_now_ms();
    for (int i = 0; i < w->gen->nupstreams; i++) {
        mg_upstream_t *up = &w->gen->upstreams[i];
        for (int k = 0; k < up->ntargets; k++) {
            mg_target_t *t = &up->targets[k];
            int healthy = t->len && !t->active_down && (!t->ejected_until || now >= t->ejected_until);
            static const char *gauges[] = { "moongate_upstream_pool_idle", "moongate_upstream_inflight",
                                            "moongate_upstream_target_healthy", "moongate_upstream_h2_connections" };
            int ns = 0, nst = 0;
            mg_h2up_figures(t, &ns, &nst);
            int values[] = { t->nidle, t->inflight, healthy, ns };
            for (int g = 0; g < (up->protocol != MG_UP_HTTP1 ? 4 : 3); g++) {
                mg_text_add(o, "%s{worker=\"%d\",upstream=\"", gauges[g], w->id);
                mg_text_label(o, up->name);
                mg_text_add(o, "\",target=\"");
                mg_text_label(o, t->text);
                mg_text_add(o, "\"} %d\n", values[g]);
            }
        }
    }
}

static const char *target_health(const mg_target_t *t, uint64_t now)
{
    return !t->len ? "unresolved" : t->active_down ? "down (health check)"
         : t->ejected_until && now < t->ejected_until ? "ejected" : "healthy";
}

static void upstream_json(mg_worker_t *w, mg_text_t *o)
{
    uint64_t now = mg_now_ms();
    mg_text_add(o, "{\"worker\":%d,\"generation\":%llu,\"upstreams\":[", w->id,
                (unsigned long long)mg_worker_generation(w));
    for (int i = 0; i < w->gen->nupstreams; i++) {
        mg_upstream_t *up = &w->gen->upstreams[i];
        mg_text_add(o, "%s{\"name\":\"", i ? "," : "");
        mg_text_json(o, up->name);
        mg_text_add(o, "\",\"targets\":[");
        for (int k = 0; k < up->ntargets; k++) {
            mg_target_t *t = &up->targets[k];
            mg_text_add(o, "%s{\"target\":\"", k ? "," : "");
            mg_text_json(o, t->text);
            mg_text_add(o, "\",\"health\":\"%s\",\"inflight\":%d,\"idle\":%d,\"requests\":%llu,\"failures\":%llu",
                        target_health(t, now), t->inflight, t->nidle,
                        (unsigned long long)t->requests, (unsigned long long)t->failures);
            if (up->protocol != MG_UP_HTTP1) {
                /* HTTP/2: connections and the streams on them instead of an idle pool */
                int ns, nst;
                mg_h2up_figures(t, &ns, &nst);
                mg_text_add(o, ",\"connections\":%d,\"streams\":%d", ns, nst);
            }
            mg_text_add(o, "}");
        }
        mg_series_t *s = mg_metrics_find(&w->metrics, up->name, 1);
        mg_text_add(o, "],\"tunnels_open\":%lld}", s ? (long long)s->tunnels_open : 0LL);
    }
    mg_text_add(o, "]}");
}

/* Every target of the current generation, flat, for the status page. */
static void targets_json(mg_worker_t *w, mg_text_t *o)
{
    uint64_t now = mg_now_ms();
    int n = 0;
    mg_text_add(o, "\"targets\":[");
    for (int i = 0; i < w->gen->nupstreams; i++) {
        mg_upstream_t *up = &w->gen->upstreams[i];
        for (int k = 0; k < up->ntargets; k++) {
            mg_target_t *t = &up->targets[k];
            mg_text_add(o, "%s{\"upstream\":\"", n++ ? "," : "");
            mg_text_json(o, up->name);
            mg_text_add(o, "\",\"target\":\"");
            mg_text_json(o, t->text);
            mg_text_add(o, "\",\"health\":\"%s\",\"inflight\":%d,\"idle\":%d,\"requests\":%llu,\"failures\":%llu}",
                        target_health(t, now), t->inflight, t->nidle, (unsigned long long)t->requests,
                        (unsigned long long)t->failures);
        }
    }
    mg_text_add(o, "]");
}

static void upstream_table(mg_worker_t *w, mg_text_t *o)
{
    uint64_t now = mg_now_ms();
    mg_text_add(o, "worker %d:\n", w->id);
    for (int i = 0; i < w->gen->nupstreams; i++) {
        mg_upstream_t *up = &w->gen->upstreams[i];
        mg_text_add(o, "  upstream ");
        mg_text_json(o, up->name);
        mg_series_t *s = mg_metrics_find(&w->metrics, up->name, 1);
        mg_text_add(o, " (%s), tunnels open %lld\n", up->balance == MG_BALANCE_LEAST_CONN ? "least_conn"
                                                   : up->balance == MG_BALANCE_HASH    ? "hash"
                                                                                       : "round_robin",
                    s ? (long long)s->tunnels_open : 0LL);
        for (int k = 0; k < up->ntargets; k++) {
            mg_target_t *t = &up->targets[k];
            size_t at = o->len;
            mg_text_add(o, "    ");
            mg_text_json(o, t->text);
            mg_text_add(o, "%*s %-20s in flight %d, idle %d, requests %llu, failures %llu",
                        (int)(o->len - at < 32 ? 32 - (o->len - at) : 0), "", target_health(t, now), t->inflight,
                        t->nidle, (unsigned long long)t->requests, (unsigned long long)t->failures);
            if (up->protocol != MG_UP_HTTP1) {
                int ns, nst;
                mg_h2up_figures(t, &ns, &nst);
                mg_text_add(o, ", HTTP/2 connections %d, streams %d", ns, nst);
            }
            mg_text_add(o, "\n");
        }
    }
}

static void render_one(mg_worker_t *w, mg_render_t *r)
{
    if (r->kind == MG_RENDER_UPSTREAMS_JSON) {
        upstream_json(w, &r->out);
    } else if (r->kind == MG_RENDER_UPSTREAMS_TEXT) {
        upstream_table(w, &r->out);
    } else if (r->kind == MG_RENDER_FIGURES_JSON) {
        mg_text_add(&r->out, "{\"worker\":%d,\"connections\":%zu,", w->id, w->nconns);
        mg_metrics_render_json(&w->metrics, &r->out);
        mg_text_add(&r->out, ",");
        targets_json(w, &r->out);
        mg_text_add(&r->out, "}");
    } else {
        mg_text_add(&r->out, "moongate_worker_connections{worker=\"%d\"} %zu\n", w->id, w->nconns);
        mg_metrics_render(&w->metrics, w->id, &r->out);
        render_upstreams(w, &r->out);
    }
}

static void on_metrics(evutil_socket_t fd, short what, void *arg)
{
    mg_worker_t *w = arg;
    uint64_t v;
    if (read(fd, &v, sizeof(v)) < 0) {
        /* readable was enough */
    }
    pthread_mutex_lock(&w->metrics_lock);
    mg_render_t *r = w->renders;
    w->renders = NULL;
    pthread_mutex_unlock(&w->metrics_lock);
    while (r) {
        mg_render_t *next = r->next;
        render_one(w, r);
        __atomic_store_n(&r->done, 1, __ATOMIC_RELEASE);
        uint64_t one = 1;
        if (write(r->notify_fd, &one, sizeof(one)) < 0) {
            /* the asker's eventfd is full or gone: it sees done on its timeout */
        }
        mg_render_put(r);
        r = next;
    }
}

mg_render_t *mg_worker_render(mg_worker_t *w, int kind, int notify_fd)
{
    mg_render_t *r = mg_calloc(1, sizeof(*r));
    r->kind = kind;
    r->notify_fd = notify_fd;
    r->refs = 2;
    pthread_mutex_lock(&w->metrics_lock);
    r->next = w->renders;
    w->renders = r;
    pthread_mutex_unlock(&w->metrics_lock);
    uint64_t one = 1;
    if (write(w->metrics_fd, &one, sizeof(one)) < 0)
        mg_log_error(NULL, "cannot ask worker %d for its figures: %s", w->id, strerror(errno));
    return r;
}

int mg_render_done(mg_render_t *r) { return __atomic_load_n(&r->done, __ATOMIC_ACQUIRE); }

void mg_render_put(mg_render_t *r)
{
    if (__atomic_sub_fetch(&r->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        free(r->out.p);
        free(r);
    }
}

void mg_worker_conn_closed(mg_worker_t *w)
{
    w->nconns--;
    if (w->draining && w->nconns == 0)
        event_base_loopbreak(w->base);
}

int mg_worker_init(mg_worker_t *w, int id, const mg_config_t *cfg, const int *fds, int nfds)
{
    w->id = id;
    w->cfg = cfg;
    w->stop_fd = -1;
    w->reload_fd = -1;
    /* single-threaded loop, no locks (the main thread only writes to stop_fd); timers never early */
    w->base = mg_event_base_new();
    if (!w->base) {
        snprintf(w->error, sizeof(w->error), "cannot create an event loop");
        return MG_ERROR;
    }
    w->gen = mg_gen_load(cfg->file, w->base, w, NULL, w->error, sizeof(w->error));
    if (!w->gen)
        return MG_ERROR;
    mg_gen_use_tls(w->gen, cfg);
    for (int i = 0; i < nfds; i++) {
        w->fds[i] = fds[i];
        w->nfds = i + 1;
        evutil_make_socket_nonblocking(fds[i]);
        w->listeners[i] = event_new(w->base, fds[i], EV_READ | EV_PERSIST, on_accept, w);
        if (!w->listeners[i] || event_add(w->listeners[i], NULL) < 0) {
            snprintf(w->error, sizeof(w->error), "cannot watch listening socket");
            return MG_ERROR;
        }
        w->nlisteners++;
    }
    mg_mailbox_init(&w->mailbox, w->base);
    gen_activate(w, w->gen);
    w->beat = mg_now_ms();
    w->heartbeat = event_new(w->base, -1, EV_PERSIST, on_heartbeat, w);
    struct timeval hb = { 0, 200 * 1000 };
    event_add(w->heartbeat, &hb);
    w->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    w->stop_ev = event_new(w->base, w->stop_fd, EV_READ, on_stop, w);
    event_add(w->stop_ev, NULL);
    pthread_mutex_init(&w->reload_lock, NULL);
    w->reload_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    w->reload_ev = event_new(w->base, w->reload_fd, EV_READ | EV_PERSIST, on_reload, w);
    event_add(w->reload_ev, NULL);
    w->retire_ev = event_new(w->base, -1, 0, on_retire, w);
    pthread_mutex_init(&w->metrics_lock, NULL);
    w->metrics_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    w->metrics_ev = event_new(w->base, w->metrics_fd, EV_READ | EV_PERSIST, on_metrics, w);
    event_add(w->metrics_ev, NULL);
    w->reap_ev = event_new(w->base, -1, 0, on_reap, w);
    if (getrandom(w->rng, sizeof(w->rng), 0) != sizeof(w->rng)) {
        w->rng[0] = (uint64_t)time(NULL) ^ ((uint64_t)id << 32);
        w->rng[1] = mg_now_us();
    }
    w->rng[0] |= 1;
    return MG_OK;
}

void *mg_worker_run(void *arg)
{
    mg_worker_t *w = arg;
    event_base_dispatch(w->base);
    return NULL;
}

void mg_worker_stop(mg_worker_t *w, uint32_t drain_ms)
{
    __atomic_store_n(&w->drain_ms, drain_ms, __ATOMIC_RELEASE);
    uint64_t one = 1;
    if (write(w->stop_fd, &one, sizeof(one)) < 0)
        mg_log_error(NULL, "cannot signal worker %d to stop", w->id);
}

void mg_worker_free(mg_worker_t *w)
{
    /* whatever outlived the drain is closed now; requests first, they hold Lua references */
    while (w->conns)
        mg_conn_close(w->conns);
    mg_req_end_detached(w);
    mg_conn_reap(w);
    mg_req_reap(w);
    close_listeners(w);
    if (w->dns)
        evdns_base_free(w->dns, 0);
    while (w->free_reqs) {
        mg_req_t *r = w->free_reqs;
        w->free_reqs = r->next_free;
        mg_req_destroy(r);
    }
    mg_gen_free(w->gen);
    while (w->retired) {
        mg_gen_t *g = w->retired;
        w->retired = g->next_retired;
        mg_gen_free(g);
    }
    if (w->pending_gen)
        mg_gen_free(w->pending_gen);
    if (w->reload_ev)
        event_free(w->reload_ev);
    if (w->metrics_ev)
        event_free(w->metrics_ev);
    while (w->renders) { /* asked for after the loop stopped: nobody renders them now */
        mg_render_t *r = w->renders;
        w->renders = r->next;
        mg_render_put(r);
    }
    if (w->metrics_fd > 0)
        close(w->metrics_fd);
    mg_metrics_free(&w->metrics);
    if (w->retire_ev)
        event_free(w->retire_ev);
    if (w->reload_fd >= 0)
        close(w->reload_fd);
    if (w->mailbox.fd > 0)
        mg_mailbox_free(&w->mailbox);
    mg_redis_loop_end(w->base); /* connections the generations' pools left finishing their replies */
    if (w->stop_ev)
        event_free(w->stop_ev);
    if (w->stop_fd >= 0)
        close(w->stop_fd);
    if (w->reap_ev)
        event_free(w->reap_ev);
    if (w->drain_timer)
        event_free(w->drain_timer);
    if (w->heartbeat)
        event_free(w->heartbeat);
    if (w->base)
        event_base_free(w->base);
}

const char *mg_worker_date(mg_worker_t *w)
{
    struct timeval tv;
    event_base_gettimeofday_cached(w->base, &tv);
    if (tv.tv_sec != w->date_sec) {
        struct tm tm;
        time_t t = tv.tv_sec;
        gmtime_r(&t, &tm);
        strftime(w->date, sizeof(w->date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        w->date_sec = tv.tv_sec;
    }
    return w->date;
}

/* xorshift128+: fast, and unique enough for trace ids (not for secrets) */
static uint64_t next64(mg_worker_t *w)
{
    uint64_t s1 = w->rng[0];
    const uint64_t s0 = w->rng[1];
    w->rng[0] = s0;
    s1 ^= s1 << 23;
    w->rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return w->rng[1] + s0;
}

/* A byte as two lowercase hex digits, for every byte: two digits per lookup. */
static const char hex_pairs[513] =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
    "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
    "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
    "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
    "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

void mg_worker_trace_id(mg_worker_t *w, char *out)
{
    uint64_t v[2] = { next64(w), next64(w) };
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 8; i++)
            memcpy(out + 16 * k + 2 * i, hex_pairs + 2 * ((v[k] >> (56 - 8 * i)) & 0xff), 2);
    out[32] = '\0';
}
