/*
 * mg_metrics — see mg_metrics.h.
 */
#include "mg_metrics.h"

#include <stdarg.h>
#include <stdio.h>

#include "mg_log.h"

const double mg_metrics_bounds[MG_METRICS_BUCKETS] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5 };

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

void mg__text_grow(mg_text_t *t, size_t n)
{
    t->cap = (t->cap ? t->cap * 2 : 8192) + n;
    t->p = mg_realloc(t->p, t->cap);
}

void mg_text_u64(mg_text_t *t, uint64_t v)
{
    static const char pairs[] = "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
                                "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
                                "8081828384858687888990919293949596979899";
    char buf[24];
    int i = sizeof(buf);
    while (v >= 100) { /* two digits a division: a timestamp in nanoseconds has 19 */
        unsigned d = (unsigned)(v % 100) * 2;
        v /= 100;
        buf[--i] = pairs[d + 1];
        buf[--i] = pairs[d];
    }
    if (v >= 10) {
        buf[--i] = pairs[v * 2 + 1];
        buf[--i] = pairs[v * 2];
    } else {
        buf[--i] = (char)('0' + v);
    }
    mg_text_append(t, buf + i, sizeof(buf) - (size_t)i);
}

void mg_text_ms(mg_text_t *t, uint64_t us)
{
    char frac[4] = { (char)('0' + us / 100 % 10), (char)('0' + us / 10 % 10), (char)('0' + us % 10), 0 };
    mg_text_u64(t, us / 1000);
    mg_text_append(t, ".", 1);
    mg_text_append(t, frac, 3);
}

/* The length of the valid UTF-8 sequence at s (not overlong, no surrogates), or 0. */
static size_t utf8_seq(const unsigned char *s)
{
    if (s[0] < 0x80)
        return 1;
    size_t n = s[0] >= 0xc2 && s[0] <= 0xdf ? 2 : s[0] >= 0xe0 && s[0] <= 0xef ? 3
             : s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : 0;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    if ((n == 3 && s[0] == 0xe0 && s[1] < 0xa0) || (n == 3 && s[0] == 0xed && s[1] >= 0xa0) ||
        (n == 4 && s[0] == 0xf0 && s[1] < 0x90) || (n == 4 && s[0] == 0xf4 && s[1] >= 0x90))
        return 0;
    return n;
}

void mg_text_label(mg_text_t *t, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        size_t n = utf8_seq(p);
        if (n == 0) {
            mg_text_append(t, "\xef\xbf\xbd", 3);
            p++;
        } else if (*p == '"' || *p == '\\') {
            char esc[2] = { '\\', (char)*p };
            mg_text_append(t, esc, 2);
            p++;
        } else if (*p == '\n') {
            mg_text_append(t, "\\n", 2);
            p++;
        } else {
            mg_text_append(t, (const char *)p, n);
            p += n;
        }
    }
}

/* A byte a JSON string takes as it is: printable ASCII but the quote and the backslash. */
static inline int plain(unsigned char c) { return c >= 0x20 && c < 0x7f && c != '"' && c != '\\'; }

void mg_text_json(mg_text_t *t, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        /* the common case, printable ASCII without a quote or a backslash, goes as it is */
        const unsigned char *q = p;
        while (plain(*q))
            q++;
        if (q > p) {
            mg_text_append(t, (const char *)p, (size_t)(q - p));
            p = q;
            if (!*p)
                break;
        }
        /* then what needs an escape or is not ASCII, up to the next plain byte */
        size_t run = 0, n;
        while (p[run] && !plain(p[run]) && (n = utf8_seq(p + run)) != 0)
            run += n;
        if (run) {
            /* worst case: every byte becomes \u00XX */
            if (t->len + 6 * run + 1 > t->cap) {
                t->cap = (t->cap ? t->cap * 2 : 8192) + 6 * run;
                t->p = mg_realloc(t->p, t->cap);
            }
            t->len += mg_json_escape(t->p + t->len, t->cap - t->len, (const char *)p, run);
            p += run;
        }
        if (*p && !plain(*p)) { /* not UTF-8 */
            mg_text_append(t, "\\ufffd", 6);
            p++;
        }
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

mg_series_t *mg_metrics_find(const mg_metrics_t *m, const char *name, int is_upstream)
{
    uint32_t h = mg_hash(name, strlen(name)) ^ (uint32_t)is_upstream;
    for (mg_series_t *s = m->buckets[h & 255]; s; s = s->next)
        if (s->is_upstream == is_upstream && strcmp(s->name, name) == 0)
            return s;
    return NULL;
}

mg_series_t *mg_metrics_series(mg_metrics_t *m, const char *name, int is_upstream)
{
    return series(m, name && *name ? name : "(none)", is_upstream);
}

/* The tunnel figures of a series that ever had one. */
static void tunnels(mg_text_t *o, const mg_series_t *s, int worker)
{
    if (!s->tunnels_total)
        return;
    const char *pre = s->is_upstream ? "moongate_upstream_" : "moongate_";
    const char *key = s->is_upstream ? "upstream" : "route";
    mg_text_add(o, "%stunnels_open{worker=\"%d\",%s=\"", pre, worker, key);
    mg_text_label(o, s->name);
    mg_text_add(o, "\"} %lld\n%stunnels_total{worker=\"%d\",%s=\"", (long long)s->tunnels_open, pre, worker, key);
    mg_text_label(o, s->name);
    mg_text_add(o, "\"} %llu\n", (unsigned long long)s->tunnels_total);
    static const char *dir[] = { "in", "out" };
    for (int d = 0; d < 2; d++) {
        mg_text_add(o, "%stunnel_bytes_total{worker=\"%d\",%s=\"", pre, worker, key);
        mg_text_label(o, s->name);
        mg_text_add(o, "\",direction=\"%s\"} %llu\n", dir[d], (unsigned long long)s->tunnel_bytes[d]);
    }
}

static void observe(mg_series_t *s, double seconds)
{
    int b = 0;
    while (b < MG_METRICS_BUCKETS && seconds > mg_metrics_bounds[b])
        b++;
    s->hist[b]++;
    s->sum_s += seconds;
}

/* strncpy that always terminates and never cuts a UTF-8 sequence in two (the escapers would flag the half) */
static void copy_cut(char *dst, size_t size, const char *src)
{
    size_t n = src ? strlen(src) : 0;
    if (n >= size) {
        n = size - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xc0) == 0x80)
            n--;
    }
    if (n)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

void mg_metrics_record(mg_metrics_t *m, const char *route, int status, double seconds, const char *upstream,
                       double ttfb_s, const mg_error_t *error, const char *trace_id)
{
    const char *rname = route && *route ? route : "(none)";
    mg_series_t *r = series(m, rname, 0);
    int cls = status >= 100 && status < 600 ? status / 100 - 1 : 5;
    r->by_class[cls]++;
    observe(r, seconds);
    if (error) {
        r->errors[error->id]++;
        mg_last_error_t *last = &m->last[error->id];
        last->time = mg_wall_time();
        last->status = status;
        copy_cut(last->route, sizeof(last->route), rname);
        copy_cut(last->upstream, sizeof(last->upstream), upstream);
        copy_cut(last->trace_id, sizeof(last->trace_id), trace_id);
    }
    if (!upstream)
        return;
    mg_series_t *u = series(m, upstream, 1);
    u->by_class[cls]++;
    if (ttfb_s > 0)
        observe(u, ttfb_s);
    if (error)
        u->errors[error->id]++;
}

void mg_metrics_grpc(mg_metrics_t *m, const char *route, int code)
{
    mg_series_t *r = series(m, route && *route ? route : "(none)", 0);
    r->grpc[code >= 0 && code < MG_METRICS_GRPC_CODES ? code : MG_METRICS_GRPC_CODES]++;
}

static void histogram(mg_text_t *o, const char *metric, const char *key, const mg_series_t *s, int worker)
{
    uint64_t cum = 0;
    for (int b = 0; b <= MG_METRICS_BUCKETS; b++) {
        cum += s->hist[b];
        mg_text_add(o, "%s_bucket{worker=\"%d\",%s=\"", metric, worker, key);
        mg_text_label(o, s->name);
        if (b < MG_METRICS_BUCKETS)
            mg_text_add(o, "\",le=\"%g\"} %llu\n", mg_metrics_bounds[b], (unsigned long long)cum);
        else
            mg_text_add(o, "\",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    }
    mg_text_add(o, "%s_sum{worker=\"%d\",%s=\"", metric, worker, key);
    mg_text_label(o, s->name);
    mg_text_add(o, "\"} %.6f\n%s_count{worker=\"%d\",%s=\"", s->sum_s, metric, worker, key);
    mg_text_label(o, s->name);
    mg_text_add(o, "\"} %llu\n", (unsigned long long)cum);
}

void mg_metrics_render(const mg_metrics_t *m, int worker, mg_text_t *o)
{
    static const char *classes[] = { "1xx", "2xx", "3xx", "4xx", "5xx", "other" };
    for (int i = 0; i < 256; i++) {
        for (const mg_series_t *s = m->buckets[i]; s; s = s->next) {
            tunnels(o, s, worker);
            const char *metric = s->is_upstream ? "moongate_upstream_requests_total" : "moongate_requests_total";
            const char *key = s->is_upstream ? "upstream" : "route";
            for (int c = 0; c < 6; c++) {
                if (!s->by_class[c])
                    continue;
                mg_text_add(o, "%s{worker=\"%d\",%s=\"", metric, worker, key);
                mg_text_label(o, s->name);
                mg_text_add(o, "\",status=\"%s\"} %llu\n", classes[c], (unsigned long long)s->by_class[c]);
            }
            if (!s->is_upstream)
                histogram(o, "moongate_request_duration_seconds", "route", s, worker);
            else
                histogram(o, "moongate_upstream_ttfb_seconds", "upstream", s, worker);
            for (int k = 0; k < MG_ERR__COUNT; k++) {
                if (!s->errors[k])
                    continue;
                mg_text_add(o, "%s{worker=\"%d\",%s=\"",
                            s->is_upstream ? "moongate_upstream_errors_total" : "moongate_request_errors_total",
                            worker, key);
                mg_text_label(o, s->name);
                mg_text_add(o, "\",kind=\"%s\"} %llu\n", mg_errors[k].name, (unsigned long long)s->errors[k]);
            }
            for (int k = 0; k <= MG_METRICS_GRPC_CODES; k++) {
                if (!s->grpc[k])
                    continue;
                mg_text_add(o, "moongate_grpc_requests_total{worker=\"%d\",route=\"", worker);
                mg_text_label(o, s->name);
                if (k < MG_METRICS_GRPC_CODES)
                    mg_text_add(o, "\",grpc_status=\"%d\"} %llu\n", k, (unsigned long long)s->grpc[k]);
                else
                    mg_text_add(o, "\",grpc_status=\"other\"} %llu\n", (unsigned long long)s->grpc[k]);
            }
        }
    }
}

static void series_json(mg_text_t *o, const mg_series_t *s, int first)
{
    static const char *classes[] = { "1xx", "2xx", "3xx", "4xx", "5xx", "other" };
    mg_text_add(o, "%s{\"%s\":\"", first ? "" : ",", s->is_upstream ? "upstream" : "route");
    mg_text_json(o, s->name);
    mg_text_add(o, "\",\"status\":{");
    int n = 0;
    for (int c = 0; c < 6; c++)
        if (s->by_class[c])
            mg_text_add(o, "%s\"%s\":%llu", n++ ? "," : "", classes[c], (unsigned long long)s->by_class[c]);
    mg_text_add(o, "},\"%s\":{\"counts\":[", s->is_upstream ? "ttfb" : "latency");
    for (int b = 0; b <= MG_METRICS_BUCKETS; b++)
        mg_text_add(o, "%s%llu", b ? "," : "", (unsigned long long)s->hist[b]);
    mg_text_add(o, "],\"sum\":%.6f},\"errors\":{", s->sum_s);
    n = 0;
    for (int k = 0; k < MG_ERR__COUNT; k++)
        if (s->errors[k])
            mg_text_add(o, "%s\"%s\":%llu", n++ ? "," : "", mg_errors[k].name, (unsigned long long)s->errors[k]);
    mg_text_add(o, "}}");
}

void mg_metrics_render_json(const mg_metrics_t *m, mg_text_t *o)
{
    for (int up = 0; up < 2; up++) {
        mg_text_add(o, "%s\"%s\":[", up ? "," : "", up ? "upstreams" : "routes");
        int first = 1;
        for (int i = 0; i < 256; i++)
            for (const mg_series_t *s = m->buckets[i]; s; s = s->next)
                if (s->is_upstream == up) {
                    series_json(o, s, first);
                    first = 0;
                }
        mg_text_add(o, "]");
    }
    mg_text_add(o, ",\"last_errors\":{");
    int n = 0;
    for (int k = 0; k < MG_ERR__COUNT; k++) {
        const mg_last_error_t *e = &m->last[k];
        if (!e->time)
            continue;
        mg_text_add(o, "%s\"%s\":{\"time\":%.3f,\"status\":%d,\"route\":\"", n++ ? "," : "", mg_errors[k].name,
                    e->time, e->status);
        mg_text_json(o, e->route);
        mg_text_add(o, "\",\"upstream\":\"");
        mg_text_json(o, e->upstream);
        mg_text_add(o, "\",\"trace_id\":\"");
        mg_text_json(o, e->trace_id);
        mg_text_add(o, "\"}");
    }
    mg_text_add(o, "}");
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
