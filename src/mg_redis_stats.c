/*
 * mg_redis_stats — the figures of every named Redis of the process, by name
 * (they survive reloads, like the metrics' series): connections by state,
 * commands and their latency, errors by kind, the failure policies applied
 * (fallbacks), and the logs that say so at most once per interval. Written
 * by the workers with relaxed atomics (the counters) or under the entry's
 * lock (the rare paths); read by the main thread for gatewayctl status and
 * /metrics. Entries are never freed: a name's figures live with the process.
 */
#include <pthread.h>
#include <stdio.h>

#include "mg_log.h"
#include "mg_redis.h"

#define LOG_INTERVAL_MS 10000
#define NBUCKETS 12

static const double bounds[NBUCKETS] = { 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                         0.01,   0.025,   0.05,   0.1,   0.25,   1 };

enum { G_IDLE = MG__RGAUGE_IDLE, G_ACTIVE = MG__RGAUGE_ACTIVE, G_CONNECTING = MG__RGAUGE_CONNECTING, G_COUNT };

typedef struct fallback {
    char *limit, *policy;
    const mg_error_t *kind;
    uint64_t count, unlogged, logged_ms;
    struct fallback *next;
} fallback_t;

struct mg_rstats {
    char *name, *address;
    int64_t conns[G_COUNT];                 /* gauges (atomic) */
    uint64_t commands, hist[NBUCKETS + 1], sum_us;
    uint64_t errors[MG_ERR__COUNT];
    pthread_mutex_t lock;                   /* the rest: rare paths */
    fallback_t *fallbacks;
    uint64_t err_logged_ms[MG_ERR__COUNT], err_unlogged[MG_ERR__COUNT];
    int pools, failing;                     /* worker pools of this name, and how many of them are backing off */
    double failing_since;                   /* wall time the first of them began to (failing > 0) */
    uint64_t failed_attempts;               /* connection failures since then */
    const mg_error_t *last_kind;            /* the last connection failure */
    char last_msg[160];
    double last_time;
    struct mg_rstats *next;
};

static pthread_mutex_t stats_lock = PTHREAD_MUTEX_INITIALIZER;
static mg_rstats_t *stats_list;

mg_rstats_t *mg__rstats_get(const mg_redis_conf_t *c)
{
    pthread_mutex_lock(&stats_lock);
    mg_rstats_t *s;
    for (s = stats_list; s; s = s->next)
        if (strcmp(s->name, c->name) == 0)
            break;
    if (!s) {
        s = mg_calloc(1, sizeof(*s));
        s->name = strdup(c->name);
        pthread_mutex_init(&s->lock, NULL);
        s->next = stats_list;
        stats_list = s;
    }
    if (!s->address || strcmp(s->address, c->address) != 0) {
        /* a reload may point the name elsewhere; the figures stay the name's (read under stats_lock) */
        free(s->address);
        s->address = strdup(c->address);
    }
    pthread_mutex_unlock(&stats_lock);
    return s;
}

#define ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)
#define LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)

void mg__rstats_gauge(mg_rstats_t *s, int from, int to)
{
    if (from >= 0)
        ADD(&s->conns[from], -1);
    if (to >= 0)
        ADD(&s->conns[to], 1);
}

void mg__rstats_reply(mg_rstats_t *s, uint64_t us)
{
    double sec = (double)us / 1e6;
    int b = 0;
    while (b < NBUCKETS && sec > bounds[b])
        b++;
    ADD(&s->hist[b], 1);
    ADD(&s->sum_us, us);
    ADD(&s->commands, 1);
}

void mg__rstats_error(mg_rstats_t *s, const mg_error_t *kind, uint64_t n) { ADD(&s->errors[kind->id], n); }

/* At most once per interval per kind, with how often it was not logged. */
void mg__rstats_log(mg_rstats_t *s, const mg_error_t *kind, const char *msg)
{
    uint64_t now = mg_now_ms(), skipped = 0;
    int log = 0;
    pthread_mutex_lock(&s->lock);
    if (!s->err_logged_ms[kind->id] || now - s->err_logged_ms[kind->id] >= LOG_INTERVAL_MS) {
        log = 1;
        skipped = s->err_unlogged[kind->id];
        s->err_unlogged[kind->id] = 0;
        s->err_logged_ms[kind->id] = now;
    } else {
        s->err_unlogged[kind->id]++;
    }
    pthread_mutex_unlock(&s->lock);
    if (log)
        mg_log_error(NULL, "redis %s (%s): %s: %s (%llu more since the last report)", s->name, s->address,
                     kind->name, msg, (unsigned long long)skipped);
}

void mg__rstats_pools(mg_rstats_t *s, int pools, int failing)
{
    double now = mg_wall_time(), down = 0;
    uint64_t attempts = 0;
    pthread_mutex_lock(&s->lock);
    s->pools += pools;
    if (failing > 0 && s->failing++ == 0) {
        s->failing_since = now;
        s->failed_attempts = 0;
    } else if (failing < 0 && --s->failing == 0) {
        down = now - s->failing_since;
        attempts = s->failed_attempts;
    }
    pthread_mutex_unlock(&s->lock);
    if (down > 0 && pools == 0) /* a pool answered again (not one that stopped while failing) */
        mg_log_info(NULL, "redis %s (%s): answering again after %.1f s of failures (%llu failed attempts)", s->name,
                    s->address, down, (unsigned long long)attempts);
}

void mg__rstats_failure(mg_rstats_t *s, const mg_error_t *kind, const char *msg)
{
    pthread_mutex_lock(&s->lock);
    s->failed_attempts++;
    s->last_kind = kind;
    snprintf(s->last_msg, sizeof(s->last_msg), "%s", msg);
    s->last_time = mg_wall_time();
    pthread_mutex_unlock(&s->lock);
}

/* ---- fallbacks ---- */

void mg_redis_fallback(mg_redis_t *r, const char *limit, const char *policy, const mg_error_t *kind,
                       const char *msg)
{
    mg_rstats_t *s = mg__redis_stats(r);
    uint64_t now = mg_now_ms(), skipped = 0, total = 0, since_ms = 0;
    int log = 0;
    char by_kind[256] = "";        /* the fallbacks not logged, by kind: "redis_refused 5, redis_timeout 2" */
    pthread_mutex_lock(&s->lock);
    fallback_t *f;
    for (f = s->fallbacks; f; f = f->next)
        if (f->kind == kind && strcmp(f->limit, limit) == 0 && strcmp(f->policy, policy) == 0)
            break;
    if (!f) {
        f = mg_calloc(1, sizeof(*f));
        f->limit = strdup(limit);
        f->policy = strdup(policy);
        f->kind = kind;
        f->next = s->fallbacks;
        s->fallbacks = f;
    }
    f->count++;
    /* once per interval per limit and policy, whatever the kind */
    uint64_t last = 0;
    for (fallback_t *g = s->fallbacks; g; g = g->next)
        if (strcmp(g->limit, limit) == 0 && strcmp(g->policy, policy) == 0 && g->logged_ms > last)
            last = g->logged_ms;
    if (!last || now - last >= LOG_INTERVAL_MS) {
        log = 1;
        since_ms = last ? now - last : 0;
        size_t at = 0;
        for (fallback_t *g = s->fallbacks; g; g = g->next)
            if (strcmp(g->limit, limit) == 0 && strcmp(g->policy, policy) == 0 && g->unlogged) {
                skipped += g->unlogged;
                if (at < sizeof(by_kind))
                    at += (size_t)snprintf(by_kind + at, sizeof(by_kind) - at, "%s%s %llu", at ? ", " : "",
                                           g->kind->name, (unsigned long long)g->unlogged);
                g->unlogged = 0;
            }
        f->logged_ms = now;
        total = f->count;
    } else {
        f->unlogged++;
    }
    pthread_mutex_unlock(&s->lock);
    if (!log)
        return;
    /* says exactly what it counts: the fallbacks this limit and policy did not log, and the kind's running total */
    char since[400];
    if (since_ms)
        snprintf(since, sizeof(since), "%llu not logged in the %.1f s since the last report of this limit and policy%s%s%s",
                 (unsigned long long)skipped, since_ms / 1000.0, skipped ? " (" : "", by_kind, skipped ? ")" : "");
    else
        snprintf(since, sizeof(since), "the first report of this limit and policy");
    mg_log_warn(NULL, "%s: redis %s unavailable (%s: %s): on_redis_error = \"%s\" applies; %s; %llu %s fallbacks "
                "of this limit and policy in this process so far (moongate_redis_fallbacks_total)",
                limit, s->name, kind->name, msg ? msg : "", policy, since, (unsigned long long)total, kind->name);
}

/* ---- figures ---- */

static void hist_json(mg_text_t *o, const mg_rstats_t *s)
{
    mg_text_add(o, "\"latency_ms\":{");
    uint64_t cum = 0;
    for (int b = 0; b <= NBUCKETS; b++) {
        cum += LOAD(&s->hist[b]);
        if (b < NBUCKETS)
            mg_text_add(o, "%s\"le_%g\":%llu", b ? "," : "", bounds[b] * 1000, (unsigned long long)cum);
        else
            mg_text_add(o, ",\"le_inf\":%llu", (unsigned long long)cum);
    }
    mg_text_add(o, "}");
}

/* The pools' state: how many workers' pools back off, since when, and the last connection failure (under s->lock). */
static void state_json(mg_text_t *o, const mg_rstats_t *s, double now)
{
    mg_text_add(o, ",\"state\":\"%s\",\"pools\":%d,\"pools_failing\":%d", s->failing ? "failing" : "ok", s->pools,
                s->failing);
    if (s->failing)
        mg_text_add(o, ",\"failing_since\":%.3f,\"failing_s\":%.1f", s->failing_since, now - s->failing_since);
    if (s->last_kind) {
        mg_text_add(o, ",\"last_failure\":{\"kind\":\"%s\",\"message\":\"", s->last_kind->name);
        mg_text_json(o, s->last_msg);
        mg_text_add(o, "\",\"time\":%.3f,\"ago_s\":%.1f}", s->last_time, now - s->last_time);
    }
}

static void state_text(mg_text_t *o, const mg_rstats_t *s, double now)
{
    if (s->failing)
        mg_text_add(o, "    state: FAILING in %d of %d worker pools for %.1f s (requests fail at once; a probe "
                       "checks Redis after each back-off)\n",
                    s->failing, s->pools, now - s->failing_since);
    else
        mg_text_add(o, "    state: ok (%d worker pools)\n", s->pools);
    if (s->last_kind) {
        mg_text_add(o, "    last connection failure %.1f s ago: %s: ", now - s->last_time, s->last_kind->name);
        mg_text_json(o, s->last_msg);
        mg_text_add(o, "\n");
    }
}

/*
 * Names go through the answers' escapers (mg_text_json, mg_text_label): the
 * redis names come from the config, but a fallback's limit names a route.
 */
void mg_redis_render_status(mg_text_t *o, int json)
{
    pthread_mutex_lock(&stats_lock);
    int first = 1;
    mg_text_add(o, json ? "{" : "redis:\n");
    for (mg_rstats_t *s = stats_list; s; s = s->next) {
        uint64_t errs = 0;
        for (int k = 0; k < MG_ERR__COUNT; k++)
            errs += LOAD(&s->errors[k]);
        uint64_t n = LOAD(&s->commands);
        double mean = n ? LOAD(&s->sum_us) / 1000.0 / (double)n : 0.0;
        if (json) {
            mg_text_add(o, "%s\"", first ? "" : ",");
            mg_text_json(o, s->name);
            mg_text_add(o, "\":{\"address\":\"");
            mg_text_json(o, s->address);
            mg_text_add(o, "\",\"idle\":%lld,\"active\":%lld,\"connecting\":%lld,\"commands\":%llu,\"mean_ms\":%.3f,"
                           "\"errors\":{",
                        (long long)LOAD(&s->conns[G_IDLE]), (long long)LOAD(&s->conns[G_ACTIVE]),
                        (long long)LOAD(&s->conns[G_CONNECTING]), (unsigned long long)n, mean);
            int f = 1;
            for (int k = 0; k < MG_ERR__COUNT; k++)
                if (LOAD(&s->errors[k])) {
                    mg_text_add(o, "%s\"%s\":%llu", f ? "" : ",", mg_errors[k].name,
                                (unsigned long long)LOAD(&s->errors[k]));
                    f = 0;
                }
            mg_text_add(o, "},");
            hist_json(o, s);
            pthread_mutex_lock(&s->lock);
            state_json(o, s, mg_wall_time());
            mg_text_add(o, ",\"fallbacks\":[");
            f = 1;
            for (fallback_t *fb = s->fallbacks; fb; fb = fb->next) {
                mg_text_add(o, "%s{\"limit\":\"", f ? "" : ",");
                mg_text_json(o, fb->limit);
                mg_text_add(o, "\",\"policy\":\"%s\",\"kind\":\"%s\",\"count\":%llu}", fb->policy, fb->kind->name,
                            (unsigned long long)fb->count);
                f = 0;
            }
            pthread_mutex_unlock(&s->lock);
            mg_text_add(o, "]}");
        } else {
            mg_text_add(o, "  ");
            mg_text_json(o, s->name);
            mg_text_add(o, " ");
            mg_text_json(o, s->address);
            mg_text_add(o, ": connections %lld idle, %lld active, %lld connecting; %llu commands, mean %.3f ms; "
                           "%llu errors",
                        (long long)LOAD(&s->conns[G_IDLE]), (long long)LOAD(&s->conns[G_ACTIVE]),
                        (long long)LOAD(&s->conns[G_CONNECTING]), (unsigned long long)n, mean,
                        (unsigned long long)errs);
            for (int k = 0; k < MG_ERR__COUNT; k++)
                if (LOAD(&s->errors[k]))
                    mg_text_add(o, ", %s %llu", mg_errors[k].name, (unsigned long long)LOAD(&s->errors[k]));
            mg_text_add(o, "\n    latency (cumulative):");
            uint64_t cum = 0;
            for (int b = 0; b < NBUCKETS; b++) {
                cum += LOAD(&s->hist[b]);
                mg_text_add(o, " <=%gms %llu", bounds[b] * 1000, (unsigned long long)cum);
            }
            mg_text_add(o, "\n");
            pthread_mutex_lock(&s->lock);
            state_text(o, s, mg_wall_time());
            for (fallback_t *fb = s->fallbacks; fb; fb = fb->next) {
                mg_text_add(o, "    fallback ");
                mg_text_json(o, fb->limit);
                mg_text_add(o, " -> %s on %s: %llu\n", fb->policy, fb->kind->name, (unsigned long long)fb->count);
            }
            pthread_mutex_unlock(&s->lock);
        }
        first = 0;
    }
    if (json)
        mg_text_add(o, "}");
    else if (first)
        mg_text_add(o, "  (none)\n");
    pthread_mutex_unlock(&stats_lock);
}

static void label_open(mg_text_t *o, const char *metric, const char *name)
{
    mg_text_add(o, "%s{redis=\"", metric);
    mg_text_label(o, name);
    mg_text_add(o, "\"");
}

void mg_redis_render_metrics(mg_text_t *o)
{
    static const char *gauges[G_COUNT] = { "idle", "active", "connecting" };
    pthread_mutex_lock(&stats_lock);
    for (mg_rstats_t *s = stats_list; s; s = s->next) {
        const char *n = s->name;
        for (int g = 0; g < G_COUNT; g++) {
            label_open(o, "moongate_redis_connections", n);
            mg_text_add(o, ",state=\"%s\"} %lld\n", gauges[g], (long long)LOAD(&s->conns[g]));
        }
        label_open(o, "moongate_redis_commands_total", n);
        mg_text_add(o, "} %llu\n", (unsigned long long)LOAD(&s->commands));
        for (int k = 0; k < MG_ERR__COUNT; k++)
            if (LOAD(&s->errors[k])) {
                label_open(o, "moongate_redis_errors_total", n);
                mg_text_add(o, ",kind=\"%s\"} %llu\n", mg_errors[k].name, (unsigned long long)LOAD(&s->errors[k]));
            }
        uint64_t cum = 0;
        for (int b = 0; b <= NBUCKETS; b++) {
            cum += LOAD(&s->hist[b]);
            label_open(o, "moongate_redis_command_duration_seconds_bucket", n);
            if (b < NBUCKETS)
                mg_text_add(o, ",le=\"%g\"} %llu\n", bounds[b], (unsigned long long)cum);
            else
                mg_text_add(o, ",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
        }
        label_open(o, "moongate_redis_command_duration_seconds_sum", n);
        mg_text_add(o, "} %.6f\n", LOAD(&s->sum_us) / 1e6);
        label_open(o, "moongate_redis_command_duration_seconds_count", n);
        mg_text_add(o, "} %llu\n", (unsigned long long)cum);
        pthread_mutex_lock(&s->lock);
        for (fallback_t *f = s->fallbacks; f; f = f->next) {
            label_open(o, "moongate_redis_fallbacks_total", n);
            mg_text_add(o, ",limit=\"");
            mg_text_label(o, f->limit);
            mg_text_add(o, "\",policy=\"%s\",kind=\"%s\"} %llu\n", f->policy, f->kind->name, (unsigned long long)f->count);
        }
        pthread_mutex_unlock(&s->lock);
    }
    pthread_mutex_unlock(&stats_lock);
}
