/*
 * mg_metrics — see mg_metrics.h.
 */
#include "mg_metrics.h"

#include <stdarg.h>
#include <stdio.h>

static const double bounds[MG_METRICS_BUCKETS] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5 };

void mg_text_add(mg_text_t *t, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->p ? t->p + t->len : NULL, t->p ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if (t->p && t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        t->cap = (t->cap ? t->cap * 2 : 8192) + (size_t)n;
        t->p = mg_realloc(t->p, t->cap);
    }
}

static mg_series_t *series(mg_metrics_t *m, const char *name, int is_upstream)
{
    uint32_t h = mg_hash(name, strlen(name)) ^ (uint32_t)is_upstream;
    mg_series_t **slot = &m->buckets[h & 255];
    for (mg_series_t *s = *slot; s; s = s->next)
        if (s->is_upstream == is_upstream && strcmp(s->name, name) == 0)
            return s;
    mg_series_t *s = mg_calloc(1, sizeof(*s));
    s->name = strdup(name);
    s->is_upstream = is_upstream;
    s->next = *slot;
    *slot = s;
    return s;
}

static void observe(mg_series_t *s, double seconds)
{
    int b = 0;
    while (b < MG_METRICS_BUCKETS && seconds > bounds[b])
        b++;
    s->hist[b]++;
    s->sum_s += seconds;
}

void mg_metrics_record(mg_metrics_t *m, const char *route, int status, double seconds,
                       const char *upstream, double ttfb_s, const mg_error_t *error)
{
    mg_series_t *r = series(m, route && *route ? route : "(none)", 0);
    int cls = status >= 100 && status < 600 ? status / 100 - 1 : 5;
    r->by_class[cls]++;
    observe(r, seconds);
    if (!upstream)
        return;
    mg_series_t *u = series(m, upstream, 1);
    u->by_class[cls]++;
    if (ttfb_s > 0)
        observe(u, ttfb_s);
    if (error)
        u->errors[error->id]++;
}

static void label(mg_text_t *o, const char *s)
{
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            mg_text_add(o, "\\%c", *s);
        else if (*s == '\n')
            mg_text_add(o, "\\n");
        else
            mg_text_add(o, "%c", *s);
    }
}

static void histogram(mg_text_t *o, const char *metric, const char *key, const mg_series_t *s, int worker)
{
    uint64_t cum = 0;
    for (int b = 0; b <= MG_METRICS_BUCKETS; b++) {
        cum += s->hist[b];
        mg_text_add(o, "%s_bucket{worker=\"%d\",%s=\"", metric, worker, key);
        label(o, s->name);
        if (b < MG_METRICS_BUCKETS)
            mg_text_add(o, "\",le=\"%g\"} %llu\n", bounds[b], (unsigned long long)cum);
        else
            mg_text_add(o, "\",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    }
    mg_text_add(o, "%s_sum{worker=\"%d\",%s=\"", metric, worker, key);
    label(o, s->name);
    mg_text_add(o, "\"} %.6f\n%s_count{worker=\"%d\",%s=\"", s->sum_s, metric, worker, key);
    label(o, s->name);
    mg_text_add(o, "\"} %llu\n", (unsigned long long)cum);
}

void mg_metrics_render(const mg_metrics_t *m, int worker, mg_text_t *o)
{
    static const char *classes[] = { "1xx", "2xx", "3xx", "4xx", "5xx", "other" };
    for (int i = 0; i < 256; i++) {
        for (const mg_series_t *s = m->buckets[i]; s; s = s->next) {
            const char *metric = s->is_upstream ? "moongate_upstream_requests_total" : "moongate_requests_total";
            const char *key = s->is_upstream ? "upstream" : "route";
            for (int c = 0; c < 6; c++) {
                if (!s->by_class[c])
                    continue;
                mg_text_add(o, "%s{worker=\"%d\",%s=\"", metric, worker, key);
                label(o, s->name);
                mg_text_add(o, "\",status=\"%s\"} %llu\n", classes[c], (unsigned long long)s->by_class[c]);
            }
            if (!s->is_upstream) {
                histogram(o, "moongate_request_duration_seconds", "route", s, worker);
                continue;
            }
            histogram(o, "moongate_upstream_ttfb_seconds", "upstream", s, worker);
            for (int k = 0; k < MG_ERR__COUNT; k++) {
                if (!s->errors[k])
                    continue;
                mg_text_add(o, "moongate_upstream_errors_total{worker=\"%d\",upstream=\"", worker);
                label(o, s->name);
                mg_text_add(o, "\",kind=\"%s\"} %llu\n", mg_errors[k].name, (unsigned long long)s->errors[k]);
            }
        }
    }
}

void mg_metrics_free(mg_metrics_t *m)
{
    for (int i = 0; i < 256; i++) {
        mg_series_t *s = m->buckets[i];
        while (s) {
            mg_series_t *next = s->next;
            free(s->name);
            free(s);
            s = next;
        }
        m->buckets[i] = NULL;
    }
}
