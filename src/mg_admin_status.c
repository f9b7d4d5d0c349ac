/*
 * mg_admin_status — what the control side answers: status (text and JSON),
 * the main thread's part of /metrics, the route table. Main thread only; it
 * reads worker figures with atomic loads (and the watchdog's view, which the
 * main thread owns).
 *
 * Every name in an answer goes through one escaper: mg_text_json in JSON and
 * in the text answers (a name stays on one line, quotes and braces cannot
 * close what they are in), mg_text_label in Prometheus label values.
 *
 * Semaphores are bounded here: clients create per-key ones (limit-conn keyed
 * by a header, say), so listing each would let a client grow every answer
 * and the exposition without limit. The config's ("upstream:...",
 * "route:...", one per max_concurrency it declares) are always listed; of
 * the others, the MG_ADMIN_SEMA_LISTED with the most permits in use (then
 * the most queued, then by name) are listed, and the rest are summed into
 * one entry per family, the part of the name before its first ':'
 * ("limit-conn:*"), with how many were folded.
 */
#include "mg_admin.h"

#include <lua.h>
#include <malloc.h>
#include <stdio.h>

#include "mg_csema.h"
#include "mg_log.h"
#include "mg_redis.h"
#include "mg_sema.h"
#include "mg_timeline.h"

#define MAX_FAMILIES 32 /* beyond: one "*" entry (a family name could come from a request too) */

typedef struct sema_row {
    char *name;
    mg_sema_stats_t st;
    size_t folded; /* aggregates: how many semaphores it sums */
} sema_row_t;

typedef struct sema_view {
    sema_row_t *rows;     /* listed first (rows[0..nlisted)), then the folded ones */
    size_t n, cap, nlisted;
    sema_row_t agg[MAX_FAMILIES + 1];
    size_t nagg, folded;
} sema_view_t;

static void collect(mg_sema_t *s, void *arg)
{
    sema_view_t *v = arg;
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 64;
        v->rows = mg_realloc(v->rows, v->cap * sizeof(*v->rows));
    }
    sema_row_t *r = &v->rows[v->n++];
    r->name = strdup(mg_sema_name(s));
    mg_sema_stats(s, &r->st);
    r->folded = 0;
}

/* The config's (upstream:*, route:*): as many as it declares, always listed. */
static int is_config(const sema_row_t *r) { return mg_sema_config_name(r->name); }

/* the config's first by name, then the busiest first */
static int by_rank(const void *pa, const void *pb)
{
    const sema_row_t *a = pa, *b = pb;
    if (is_config(a) != is_config(b))
        return is_config(a) ? -1 : 1;
    if (!is_config(a)) {
        if (a->st.in_use != b->st.in_use)
            return a->st.in_use > b->st.in_use ? -1 : 1;
        if (a->st.queued != b->st.queued)
            return a->st.queued > b->st.queued ? -1 : 1;
    }
    return strcmp(a->name, b->name);
}

static sema_row_t *family_of(sema_view_t *v, const char *name)
{
    for (size_t i = 0; i < v->nagg; i++)
        if (strcmp(v->agg[i].name, name) == 0)
            return &v->agg[i];
    if (v->nagg == MAX_FAMILIES && strcmp(name, "*") != 0)
        return family_of(v, "*"); /* too many families: the catch-all (the array has room for it) */
    sema_row_t *a = &v->agg[v->nagg++];
    memset(a, 0, sizeof(*a));
    a->name = strdup(name);
    return a;
}

/* Adds r to its family's total: "limit-conn:*" for "limit-conn:...", "*" for a name without ':'. */
static void fold(sema_view_t *v, const sema_row_t *r)
{
    const char *colon = strchr(r->name, ':');
    char *family = colon ? mg_alloc((size_t)(colon - r->name) + 3) : NULL;
    if (family)
        sprintf(family, "%.*s:*", (int)(colon - r->name), r->name);
    sema_row_t *a = family_of(v, family ? family : "*");
    free(family);
    a->st.capacity += r->st.capacity;
    a->st.in_use += r->st.in_use;
    a->st.queued += r->st.queued;
    a->st.acquired += r->st.acquired;
    a->st.rejected += r->st.rejected;
    a->st.timed_out += r->st.timed_out;
    if (r->st.longest_wait_ms > a->st.longest_wait_ms)
        a->st.longest_wait_ms = r->st.longest_wait_ms;
    a->folded++;
    v->folded++;
}

static void view_build(sema_view_t *v)
{
    memset(v, 0, sizeof(*v));
    /* under the registry lock: copy, then sort and fold after it */
    mg_sema_each(collect, v);
    if (v->n)
        qsort(v->rows, v->n, sizeof(*v->rows), by_rank);
    size_t others = 0;
    for (size_t i = 0; i < v->n; i++) {
        if (is_config(&v->rows[i]) || others++ < MG_ADMIN_SEMA_LISTED)
            v->nlisted = i + 1;
        else
            fold(v, &v->rows[i]);
    }
}

static void view_free(sema_view_t *v)
{
    for (size_t i = 0; i < v->n; i++)
        free(v->rows[i].name);
    for (size_t i = 0; i < v->nagg; i++)
        free(v->agg[i].name);
    free(v->rows);
}

static void sema_json(mg_text_t *o, const sema_row_t *r, int first)
{
    mg_text_add(o, "%s\"", first ? "" : ",");
    mg_text_json(o, r->name);
    mg_text_add(o, "\":{\"capacity\":%lld,\"in_use\":%lld,\"queued\":%lld,\"acquired\":%llu,\"rejected\":%llu,"
                   "\"timed_out\":%llu,\"longest_wait_ms\":%llu",
                (long long)r->st.capacity, (long long)r->st.in_use, (long long)r->st.queued,
                (unsigned long long)r->st.acquired, (unsigned long long)r->st.rejected,
                (unsigned long long)r->st.timed_out, (unsigned long long)r->st.longest_wait_ms);
    if (r->folded)
        mg_text_add(o, ",\"folded\":%zu", r->folded);
    mg_text_add(o, "}");
}

static void sema_text(mg_text_t *o, const sema_row_t *r)
{
    size_t at = o->len;
    mg_text_add(o, "  ");
    mg_text_json(o, r->name);
    if (r->folded)
        mg_text_add(o, " (%zu folded)", r->folded);
    size_t w = o->len - at;
    mg_text_add(o, "%*s capacity %lld, in use %lld, queued %lld, acquired %llu, rejected %llu, timed out %llu, "
                   "longest wait %llu ms\n",
                (int)(w < 42 ? 42 - w : 0), "", (long long)r->st.capacity, (long long)r->st.in_use,
                (long long)r->st.queued, (unsigned long long)r->st.acquired, (unsigned long long)r->st.rejected,
                (unsigned long long)r->st.timed_out, (unsigned long long)r->st.longest_wait_ms);
}

static const char *kill_state(const mg_worker_t *w)
{
    return !w->kill_sent_ms                                                            ? "none"
           : w->kill_ineffective || mg_now_ms() - w->kill_sent_ms >= MG_WATCHDOG_KILL_MS ? "ineffective"
                                                                                        : "pending";
}

static void worker_json(mg_text_t *o, mg_worker_t *w)
{
    mg_text_add(o, "{\"id\":%d,\"generation\":%llu,\"connections\":%zu,\"tunnels\":%lld,\"requests\":%llu,"
                "\"watchdog_kills\":%llu,",
                w->id, (unsigned long long)mg_worker_generation(w), __atomic_load_n(&w->nconns, __ATOMIC_RELAXED),
                (long long)__atomic_load_n(&w->tunnels, __ATOMIC_RELAXED),
                (unsigned long long)__atomic_load_n(&w->requests, __ATOMIC_RELAXED),
                (unsigned long long)__atomic_load_n(&w->running.kills, __ATOMIC_RELAXED));
    uint64_t stuck = mg_worker_stuck_ms(w);
    if (!stuck) {
        mg_text_add(o, "\"stuck\":false}");
        return;
    }
    mg_text_add(o, "\"stuck\":true,\"stuck_ms\":%llu,\"trace_id\":\"", (unsigned long long)stuck);
    mg_text_json(o, w->stuck_trace);
    mg_text_add(o, "\",\"route\":\"");
    mg_text_json(o, w->stuck_route);
    mg_text_add(o, "\",\"kill\":\"%s\"}", kill_state(w));
}

static void worker_text(mg_text_t *o, mg_worker_t *w)
{
    mg_text_add(o, "worker %d: generation %llu, %zu connections (tunnels open %lld), %llu requests", w->id,
                (unsigned long long)mg_worker_generation(w), __atomic_load_n(&w->nconns, __ATOMIC_RELAXED),
                (long long)__atomic_load_n(&w->tunnels, __ATOMIC_RELAXED),
                (unsigned long long)__atomic_load_n(&w->requests, __ATOMIC_RELAXED));
    uint64_t kills = __atomic_load_n(&w->running.kills, __ATOMIC_RELAXED);
    if (kills)
        mg_text_add(o, ", %llu ended by the watchdog", (unsigned long long)kills);
    uint64_t stuck = mg_worker_stuck_ms(w);
    if (!stuck) {
        mg_text_add(o, "\n");
        return;
    }
    mg_text_add(o, "\n  STUCK for %llu ms, fenced off (takes no new connections)", (unsigned long long)stuck);
    if (w->stuck_route[0] || w->stuck_trace[0]) {
        mg_text_add(o, ": route ");
        mg_text_json(o, w->stuck_route[0] ? w->stuck_route : "-");
        mg_text_add(o, ", trace id ");
        mg_text_json(o, w->stuck_trace[0] ? w->stuck_trace : "-");
    }
    const char *k = kill_state(w);
    mg_text_add(o, "\n  %s\n",
                strcmp(k, "pending") == 0 ? "the watchdog's hook ends the request when it next runs interpreted Lua"
                : strcmp(k, "ineffective") == 0
                    ? "the watchdog's hook cannot end it (a JIT-compiled loop or a blocking call): it stays "
                      "fenced off until it returns (restart to recover)"
                    : "outside any request task: nothing to end");
}

/* VmRSS of this process, in KiB (-1 when /proc is not there). */
static long resident_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    long kb = -1;
    char line[128];
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

void mg__admin_status_fields(mg_admin_t *a, mg_text_t *o)
{
    sema_view_t v;
    view_build(&v);
    mg_text_add(o, "\"version\":\"%s\",\"config\":\"", MG_VERSION);
    mg_text_json(o, a->file);
    mg_text_add(o, "\",\"uptime_s\":%.0f,\"reloads\":%llu,\"reload_failures\":%llu,",
                mg_wall_time() - a->started, (unsigned long long)a->reloads, (unsigned long long)a->reload_failures);
    if (a->loading)
        mg_text_add(o, "\"reload_loading_ms\":%llu,", (unsigned long long)(mg_now_ms() - a->loading_since_ms));
    else
        mg_text_add(o, "\"reload_loading_ms\":null,");
    /* the C side's allocations in use (LuaJIT's heaps are its own: see the Lua figures per worker) */
    struct mallinfo2 mi = mallinfo2();
    mg_text_add(o, "\"memory\":{\"resident_kb\":%ld,\"heap_in_use\":%zu},\"workers\":[", resident_kb(),
                mi.uordblks + mi.hblkhd);
    for (int i = 0; i < a->nworkers; i++) {
        mg_text_add(o, "%s", i ? "," : "");
        worker_json(o, &a->workers[i]);
    }
    mg_text_add(o, "],\"semaphores\":{");
    for (size_t i = 0; i < v.nlisted; i++)
        sema_json(o, &v.rows[i], i == 0);
    for (size_t i = 0; i < v.nagg; i++)
        sema_json(o, &v.agg[i], i == 0 && v.nlisted == 0);
    mg_text_add(o, "},\"semaphores_folded\":%zu,\"redis\":{\"pools\":", v.folded);
    mg_redis_render_status(o, 1);
    mg_text_add(o, ",\"cluster_semaphores\":");
    mg_csema_render_status(o, 1);
    mg_text_add(o, "}");
    view_free(&v);
}

void mg__admin_status(mg_admin_t *a, mg_text_t *o, int json)
{
    if (json) {
        mg_text_add(o, "{");
        mg__admin_status_fields(a, o);
        mg_text_add(o, "}\n");
        return;
    }
    double up = mg_wall_time() - a->started;
    sema_view_t v;
    view_build(&v);
    mg_text_add(o, "gatewayd %s, config ", MG_VERSION);
    mg_text_json(o, a->file);
    mg_text_add(o, ", up %.0f s, %llu reloads, %llu refused", up, (unsigned long long)a->reloads,
                (unsigned long long)a->reload_failures);
    if (a->loading)
        mg_text_add(o, ", a reload loading for %llu ms", (unsigned long long)(mg_now_ms() - a->loading_since_ms));
    mg_text_add(o, "\n");
    for (int i = 0; i < a->nworkers; i++)
        worker_text(o, &a->workers[i]);
    mg_text_add(o, "semaphores:\n");
    for (size_t i = 0; i < v.nlisted; i++)
        sema_text(o, &v.rows[i]);
    for (size_t i = 0; i < v.nagg; i++)
        sema_text(o, &v.agg[i]);
    if (!v.n)
        mg_text_add(o, "  (none)\n");
    if (v.folded)
        mg_text_add(o, "  (%zu semaphores folded into a total per family: the %d with the most in use are listed)\n",
                    v.folded, MG_ADMIN_SEMA_LISTED);
    view_free(&v);
    mg_redis_render_status(o, 0);
    mg_csema_render_status(o, 0);
}

static void sema_prom(mg_text_t *o, const sema_row_t *r)
{
    static const char *names[] = { "capacity", "in_use", "queued", "acquired_total", "rejected_total",
                                   "timed_out_total" };
    long long values[] = { (long long)r->st.capacity, (long long)r->st.in_use, (long long)r->st.queued,
                           (long long)r->st.acquired, (long long)r->st.rejected, (long long)r->st.timed_out };
    for (int k = 0; k < 6; k++) {
        mg_text_add(o, "moongate_semaphore_%s{name=\"", names[k]);
        mg_text_label(o, r->name);
        mg_text_add(o, "\"} %lld\n", values[k]);
    }
    mg_text_add(o, "moongate_semaphore_longest_wait_seconds{name=\"");
    mg_text_label(o, r->name);
    mg_text_add(o, "\"} %.3f\n", r->st.longest_wait_ms / 1000.0);
}

void mg__admin_metrics(mg_admin_t *a, mg_text_t *o)
{
    mg_text_add(o, "# moongate %s\nmoongate_uptime_seconds %.0f\nmoongate_reloads_total{result=\"ok\"} %llu\n"
                   "moongate_reloads_total{result=\"refused\"} %llu\nmoongate_log_lines_dropped_total %llu\n",
                MG_VERSION, mg_wall_time() - a->started, (unsigned long long)a->reloads,
                (unsigned long long)a->reload_failures, (unsigned long long)mg_log_dropped());
    for (int i = 0; i < a->nworkers; i++) {
        mg_worker_t *w = &a->workers[i];
        mg_text_add(o, "moongate_worker_stuck{worker=\"%d\"} %d\nmoongate_watchdog_kills_total{worker=\"%d\"} %llu\n",
                    i, mg_worker_stuck_ms(w) ? 1 : 0, i,
                    (unsigned long long)__atomic_load_n(&w->running.kills, __ATOMIC_RELAXED));
    }
    mg_timeline_metrics(o);
    sema_view_t v;
    view_build(&v);
    for (size_t i = 0; i < v.nlisted; i++)
        sema_prom(o, &v.rows[i]);
    for (size_t i = 0; i < v.nagg; i++) {
        sema_prom(o, &v.agg[i]);
        size_t flen = strlen(v.agg[i].name) > 2 ? strlen(v.agg[i].name) - 2 : 0;
        char *family = flen ? strndup(v.agg[i].name, flen) : strdup("*");
        mg_text_add(o, "moongate_semaphores_folded{family=\"");
        mg_text_label(o, family);
        mg_text_add(o, "\"} %zu\n", v.agg[i].folded);
        free(family);
    }
    view_free(&v);
    mg_redis_render_metrics(o);
    mg_csema_render_metrics(o);
}

/* ---- the exposition's families ---- */

/*
 * Every family /metrics has: its type and help, for the "# HELP" and
 * "# TYPE" lines. The renderers (the main thread's here, each worker's, the
 * Redis and cluster-semaphore ones) write samples in the order that suits
 * them, one family interleaved with another and the workers one after the
 * other; mg__admin_metrics_families then groups each family's samples and puts
 * its two lines before them, once, as the text format requires. A family
 * missing here goes out "untyped" (admin_spec checks that none does).
 */
typedef struct family {
    const char *name, *type, *help;
} family_t;

static const family_t families[] = {
    { "moongate_uptime_seconds", "gauge", "Seconds since the gateway started." },
    { "moongate_reloads_total", "counter", "Config reloads, by result (ok, refused)." },
    { "moongate_log_lines_dropped_total", "counter", "Log lines dropped because a ring was full." },
    { "moongate_worker_stuck", "gauge", "1 while the watchdog sees the worker away from its event loop." },
    { "moongate_watchdog_kills_total", "counter", "Requests the watchdog ended." },
    { "moongate_worker_connections", "gauge", "Open client connections." },
    { "moongate_trace_requests_recorded_total", "counter", "Requests recorded for tracing (sampled or watched)." },
    { "moongate_trace_requests_dropped_total", "counter", "Recorded requests a worker's ring had no room for." },
    { "moongate_trace_subscribers", "gauge", "gatewayctl trace streams connected." },
    { "moongate_trace_timeline_lines_dropped_total", "counter", "Timeline lines a slow gatewayctl trace missed." },
    { "moongate_trace_spans_exported_total", "counter", "Spans the collector accepted." },
    { "moongate_trace_spans_dropped_total", "counter", "Spans dropped, by reason." },
    { "moongate_trace_spans_queued", "gauge", "Spans waiting to be exported." },
    { "moongate_trace_export_errors_total", "counter", "Span export requests that failed (each try)." },
    { "moongate_semaphore_capacity", "gauge", "Permits of a semaphore (or the sum of a folded family's)." },
    { "moongate_semaphore_in_use", "gauge", "Permits held." },
    { "moongate_semaphore_queued", "gauge", "Requests waiting for a permit." },
    { "moongate_semaphore_acquired_total", "counter", "Permits granted." },
    { "moongate_semaphore_rejected_total", "counter", "Requests refused a permit." },
    { "moongate_semaphore_timed_out_total", "counter", "Requests that waited for a permit until their queue timeout." },
    { "moongate_semaphore_longest_wait_seconds", "gauge", "The longest a permit was waited for." },
    { "moongate_semaphores_folded", "gauge", "Semaphores summed into their family's name=\"<family>:*\" series." },
    { "moongate_requests_total", "counter", "Requests by route and status class." },
    { "moongate_request_duration_seconds", "histogram", "Time from the request head to the end of the response." },
    { "moongate_request_errors_total", "counter", "Requests that ended with an error kind, by route and kind." },
    { "moongate_upstream_requests_total", "counter", "Proxied requests and sub-requests by upstream and status class." },
    { "moongate_upstream_ttfb_seconds", "histogram", "Time to the upstream's first byte, queue and retries included." },
    { "moongate_upstream_errors_total", "counter", "Upstream errors by kind." },
    { "moongate_upstream_pool_idle", "gauge", "Idle keep-alive connections to a target." },
    { "moongate_upstream_inflight", "gauge", "Requests in flight to a target." },
    { "moongate_upstream_target_healthy", "gauge", "1 healthy; 0 ejected, failing its health check, or unresolved." },
    { "moongate_upstream_h2_connections", "gauge", "HTTP/2 connections to a target." },
    { "moongate_tunnels_open", "gauge", "Open tunnels (WebSocket) by route." },
    { "moongate_tunnels_total", "counter", "Tunnels opened by route." },
    { "moongate_tunnel_bytes_total", "counter", "Bytes through tunnels that ended, by route and direction." },
    { "moongate_upstream_tunnels_open", "gauge", "Open tunnels by upstream." },
    { "moongate_upstream_tunnels_total", "counter", "Tunnels opened by upstream." },
    { "moongate_upstream_tunnel_bytes_total", "counter", "Bytes through tunnels that ended, by upstream and direction." },
    { "moongate_redis_connections", "gauge", "Connections to a redis block, all workers, by state." },
    { "moongate_redis_commands_total", "counter", "Redis commands answered." },
    { "moongate_redis_errors_total", "counter", "Redis command failures by kind." },
    { "moongate_redis_command_duration_seconds", "histogram", "Redis command round trips." },
    { "moongate_redis_fallbacks_total", "counter", "A limit applied its on_redis_error policy, by limit, policy and kind." },
    { "moongate_cluster_semaphore_capacity", "gauge", "Permits of a cluster semaphore (kept in Redis)." },
    { "moongate_cluster_semaphore_lease_seconds", "gauge", "How long a dead gateway's permits of it stay taken." },
    { "moongate_cluster_semaphore_held", "gauge", "Permits this process holds." },
    { "moongate_cluster_semaphore_waiting", "gauge", "Requests of this process waiting for a permit." },
    { "moongate_cluster_semaphore_acquired_total", "counter", "Permits this process acquired." },
    { "moongate_cluster_semaphore_busy_total", "counter", "Acquisitions Redis answered busy." },
    { "moongate_cluster_semaphore_timed_out_total", "counter", "Waits that ran out of time." },
    { "moongate_cluster_semaphore_lease_lost_total", "counter", "Leases that ran out while their request still ran." },
    { "moongate_cluster_semaphore_redis_errors_total", "counter", "Acquisitions, renewals and releases Redis failed." },
    { "moongate_cluster_semaphore_in_use_seen", "gauge", "Permits in use in the whole fleet, as Redis last answered." },
    { "moongate_cluster_semaphores_folded", "gauge",
      "Cluster semaphores summed into their family's name=\"<family>:*\" series." },
};

/* The family of a sample named name[0..n): a histogram's _bucket, _sum and _count are its own. */
static const family_t *family_of_sample(const char *name, size_t n, size_t *flen)
{
    static const char *const suffix[] = { "_bucket", "_sum", "_count" };
    for (size_t i = 0; i < mg_countof(families); i++) {
        size_t l = strlen(families[i].name);
        if (l > n || memcmp(families[i].name, name, l) != 0)
            continue;
        if (l == n) {
            *flen = l;
            return &families[i];
        }
        if (strcmp(families[i].type, "histogram") != 0)
            continue;
        for (size_t k = 0; k < mg_countof(suffix); k++)
            if (n - l == strlen(suffix[k]) && memcmp(name + l, suffix[k], n - l) == 0) {
                *flen = l;
                return &families[i];
            }
    }
    *flen = n;
    return NULL;
}

typedef struct sample_line {
    size_t at, len;
    size_t order;                  /* the family's, by first sample: the sort key with `at` */
} sample_line_t;

static int by_family(const void *pa, const void *pb)
{
    const sample_line_t *a = pa, *b = pb;
    if (a->order != b->order)
        return a->order < b->order ? -1 : 1;
    return a->at < b->at ? -1 : a->at > b->at;
}

void mg__admin_metrics_families(mg_text_t *t)
{
    const char *p = t->p ? t->p : "";
    size_t n = t->len, nlines = 0, cap = 256, nfam = 0, famcap = 64;
    sample_line_t *lines = mg_alloc(cap * sizeof(*lines));
    struct seen {
        const char *name;          /* into t */
        size_t len;
        const family_t *f;
    } *seen = mg_alloc(famcap * sizeof(*seen));
    mg_text_t out = { 0 };
    size_t last = (size_t)-1;      /* consecutive samples are mostly of one family */
    for (size_t at = 0; at < n;) {
        const char *nl = memchr(p + at, '\n', n - at);
        size_t len = (nl ? (size_t)(nl - (p + at)) : n - at) + (nl != NULL);
        if (p[at] == '#' || len <= 1) {
            mg_text_append(&out, p + at, len); /* comments (the version, a worker that did not answer) go first */
            at += len;
            continue;
        }
        size_t nlen = strcspn(p + at, "{ \n");
        size_t flen;
        const family_t *f = family_of_sample(p + at, nlen, &flen);
        size_t k = last;
        if (k == (size_t)-1 || seen[k].len != flen || memcmp(seen[k].name, p + at, flen) != 0)
            for (k = 0; k < nfam && (seen[k].len != flen || memcmp(seen[k].name, p + at, flen) != 0); k++)
                ;
        if (k == nfam) {
            if (nfam == famcap)
                seen = mg_realloc(seen, (famcap *= 2) * sizeof(*seen));
            seen[nfam++] = (struct seen){ p + at, flen, f };
        }
        last = k;
        if (nlines == cap)
            lines = mg_realloc(lines, (cap *= 2) * sizeof(*lines));
        lines[nlines++] = (sample_line_t){ at, len, k };
        at += len;
    }
    qsort(lines, nlines, sizeof(*lines), by_family);
    for (size_t i = 0; i < nlines; i++) {
        if (i == 0 || lines[i].order != lines[i - 1].order) {
            const struct seen *s = &seen[lines[i].order];
            if (s->f)
                mg_text_add(&out, "# HELP %s %s\n# TYPE %s %s\n", s->f->name, s->f->help, s->f->name, s->f->type);
            else
                mg_text_add(&out, "# TYPE %.*s untyped\n", (int)s->len, s->name);
        }
        mg_text_append(&out, p + lines[i].at, lines[i].len);
        if (p[lines[i].at + lines[i].len - 1] != '\n')
            mg_text_append(&out, "\n", 1);
    }
    free(lines);
    free(seen);
    free(t->p);
    *t = out;
}

void mg_routes_view_take(mg_routes_view_t *v, mg_gen_t *gen)
{
    mg_routes_view_free(v);
    lua_State *L = gen->vm->L;
    int top = lua_gettop(L);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "moongate.config");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "route_records");
    lua_getfield(L, LUA_REGISTRYINDEX, MG_LOADED_CONFIG);
    lua_call(L, 1, 1);
    size_t n = 0;
    const char *s = lua_tolstring(L, -1, &n);
    v->records = mg_alloc(n + 1);
    memcpy(v->records, s ? s : "", n);
    v->records[n] = '\0';
    v->len = n;
    lua_settop(L, top);
}

enum { F_ID, F_METHODS, F_HOST, F_PATH, F_UPSTREAM, F_PLUGINS, F_FILE, F_LINE, NFIELDS };

/* The next route's fields from *at, or 0 after the last one. */
static int next_route(const mg_routes_view_t *v, size_t *at, const char *f[NFIELDS])
{
    for (int i = 0; i < NFIELDS; i++) {
        if (*at >= v->len)
            return 0;
        f[i] = v->records + *at;
        *at += strlen(f[i]) + 1;
    }
    return 1;
}

/* A "\1"-separated list with sep between its items. */
static void list_text(mg_text_t *o, const char *list, const char *sep)
{
    for (const char *p = list; *p; p++) {
        if (*p == '\1')
            mg_text_add(o, "%s", sep);
        else
            mg_text_append(o, p, 1);
    }
}

static void list_json(mg_text_t *o, const char *list)
{
    mg_text_t item = { 0 };
    mg_text_append(o, "[", 1);
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, "\1");
        item.len = 0;
        mg_text_append(&item, p, n);
        mg_text_append(&item, "", 1); /* its NUL */
        mg_text_add(o, "%s\"", p == list ? "" : ",");
        mg_text_json(o, item.p);
        mg_text_append(o, "\"", 1);
        p += n + (p[n] != '\0');
    }
    mg_text_append(o, "]", 1);
    free(item.p);
}

void mg_routes_view_text(const mg_routes_view_t *v, mg_text_t *o)
{
    mg_text_add(o, "%-4s %-12s %-20s %-40s %-24s %s\n", "id", "methods", "host", "path", "target", "plugins (in order)");
    const char *f[NFIELDS];
    mg_text_t methods = { 0 }, target = { 0 }, plugins = { 0 };
    for (size_t at = 0; next_route(v, &at, f);) {
        methods.len = target.len = plugins.len = 0;
        list_text(&methods, f[F_METHODS], ",");
        mg_text_add(&target, "%s%s", *f[F_UPSTREAM] ? "upstream " : "handler", f[F_UPSTREAM]);
        list_text(&plugins, *f[F_PLUGINS] ? f[F_PLUGINS] : "-", " > ");
        mg_text_add(o, "%-4s %-12.*s %-20s %-40s %-24.*s %.*s  (%s:%s)\n", f[F_ID], (int)methods.len, methods.p,
                    *f[F_HOST] ? f[F_HOST] : "*", f[F_PATH], (int)target.len, target.p, (int)plugins.len,
                    plugins.p, f[F_FILE], f[F_LINE]);
    }
    free(methods.p);
    free(target.p);
    free(plugins.p);
}

void mg_routes_view_json(const mg_routes_view_t *v, mg_text_t *o)
{
    const char *f[NFIELDS];
    mg_text_append(o, "[", 1);
    for (size_t at = 0, first = 1; next_route(v, &at, f); first = 0) {
        mg_text_add(o, "%s{\"id\":%s,\"methods\":", first ? "" : ",", f[F_ID]);
        if (strcmp(f[F_METHODS], "*") == 0)
            mg_text_add(o, "\"*\"");
        else
            list_json(o, f[F_METHODS]);
        static const struct {
            int field;
            const char *key;
        } str[] = { { F_HOST, "host" }, { F_PATH, "path" }, { F_UPSTREAM, "upstream" } };
        for (size_t i = 0; i < mg_countof(str); i++) {
            if (!*f[str[i].field])
                continue; /* absent */
            mg_text_add(o, ",\"%s\":\"", str[i].key);
            mg_text_json(o, f[str[i].field]);
            mg_text_append(o, "\"", 1);
        }
        mg_text_add(o, ",\"plugins\":");
        list_json(o, f[F_PLUGINS]);
        mg_text_add(o, ",\"declared_at\":\"");
        mg_text_json(o, f[F_FILE]);
        mg_text_add(o, ":%s\"}", f[F_LINE]);
    }
    mg_text_append(o, "]\n", 2);
}

void mg_routes_view_free(mg_routes_view_t *v)
{
    free(v->records);
    *v = (mg_routes_view_t){ 0 };
}
