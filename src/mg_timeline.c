/*
 * mg_timeline — see mg_timeline.h.
 */
#include "mg_timeline.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>

#include "mg_otel.h"

struct mg_timeline_sub {
    struct bufferevent *bev;
    mg_timeline_filter_t f;
    long sent;
    uint64_t missed;              /* lines dropped since the last one that went out */
    int done;
    void (*on_done)(void *arg);
    void *arg;
    mg_timeline_sub_t *next, *prev;
};

static struct event *tick;
static int tracing_on;
static mg_timeline_sub_t *subs;
static int nsubs;
static mg_trace_rec_t *recent[MG_TIMELINE_RECENT]; /* a ring: the oldest at recent_at */
static int recent_at, recent_n;
static uint64_t lines_dropped;    /* subscribers' lines dropped (slow readers) */

/* ---- filters ---- */

static int hexv(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* %XX escapes (gatewayctl writes a route name that way) */
static int unescape(const char *s, char *out)
{
    size_t o = 0;
    for (; *s; s++) {
        if (*s != '%') {
            out[o++] = *s;
            continue;
        }
        int a = hexv(s[1]), b = a >= 0 ? hexv(s[2]) : -1;
        if (a < 0 || b < 0)
            return -1;
        out[o++] = (char)(a << 4 | b);
        s += 2;
    }
    out[o] = '\0';
    return 0;
}

/* "200ms", "1.5s", "800us", "250" (ms) into µs; 0 when it is not a duration */
static uint64_t duration_us(const char *v)
{
    char *end;
    double x = strtod(v, &end);
    if (end == v || x < 0)
        return 0;
    double scale = !*end || strcmp(end, "ms") == 0 ? 1000 : strcmp(end, "s") == 0 ? 1e6 : strcmp(end, "us") == 0 ? 1 : 0;
    return (uint64_t)(x * scale);
}

int mg_timeline_parse(const char *args, mg_timeline_filter_t *f, char *err, size_t errlen)
{
    memset(f, 0, sizeof(*f));
    const char *p = args ? args : "";
    while (*p) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        const char *end = strchr(p, ' ');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char tok[1100];
        if (n >= sizeof(tok)) {
            snprintf(err, errlen, "argument too long");
            goto bad;
        }
        memcpy(tok, p, n);
        tok[n] = '\0';
        p += n;
        char *eq = strchr(tok, '=');
        const char *v = eq ? eq + 1 : "";
        if (eq)
            *eq = '\0';
        if (strcmp(tok, "json") == 0 && !eq) {
            f->json = 1;
        } else if (strcmp(tok, "recent") == 0 && !eq) {
            f->recent = 1;
        } else if (strcmp(tok, "route") == 0 && *v) {
            char name[1100];
            if (unescape(v, name) < 0) {
                snprintf(err, errlen, "route: bad %%-escape in '%s'", v);
                goto bad;
            }
            free(f->route);
            f->route = strdup(name);
        } else if (strcmp(tok, "status") == 0) {
            int d0 = v[0] - '0';
            if (strlen(v) == 3 && d0 >= 1 && d0 <= 5 && (v[1] | 0x20) == 'x' && (v[2] | 0x20) == 'x') {
                f->status_lo = d0 * 100;
                f->status_hi = d0 * 100 + 99;
            } else if (strlen(v) == 3 && atoi(v) >= 100 && atoi(v) <= 999 && strspn(v, "0123456789") == 3) {
                f->status_lo = f->status_hi = atoi(v);
            } else {
                snprintf(err, errlen, "status: want a class like 5xx or a code like 404, got '%s'", v);
                goto bad;
            }
        } else if (strcmp(tok, "slower") == 0) {
            f->slower_us = duration_us(v);
            if (!f->slower_us) {
                snprintf(err, errlen, "slower: want a duration like 200ms or 1.5s, got '%s'", v);
                goto bad;
            }
        } else if (strcmp(tok, "limit") == 0) {
            char *e;
            long l = strtol(v, &e, 10);
            if (*e || l < 1) {
                snprintf(err, errlen, "limit: want a positive count, got '%s'", v);
                goto bad;
            }
            f->limit = l;
        } else {
            snprintf(err, errlen, "unknown trace option '%s' (route=, status=, slower=, limit=, json, recent)", tok);
            goto bad;
        }
    }
    return MG_OK;
bad:
    mg_timeline_filter_free(f);
    return MG_ERROR;
}

void mg_timeline_filter_free(mg_timeline_filter_t *f)
{
    free(f->route);
    f->route = NULL;
}

static int matches(const mg_timeline_filter_t *f, const mg_trace_rec_t *rec)
{
    if (f->route && strcmp(f->route, mg_trace_str(rec, rec->route)) != 0)
        return 0;
    if (f->status_lo && (rec->status < f->status_lo || rec->status > f->status_hi))
        return 0;
    if (f->slower_us && rec->end_us - rec->start_us <= f->slower_us)
        return 0;
    return 1;
}

/* ---- subscribers ---- */

static void finish(mg_timeline_sub_t *s)
{
    s->done = 1;
    if (s->on_done)
        s->on_done(s->arg); /* the caller closes once the output is out (it may unsubscribe now) */
}

/* One record to one subscriber: written, or dropped when its output is full. Returns 0 when it is done. */
static int deliver(mg_timeline_sub_t *s, const mg_trace_rec_t *rec)
{
    if (s->done || !matches(&s->f, rec))
        return !s->done;
    struct evbuffer *out = bufferevent_get_output(s->bev);
    if (evbuffer_get_length(out) > MG_TIMELINE_SUB_MAX) {
        s->missed++;
        lines_dropped++;
        return 1;
    }
    mg_text_t t = { 0 };
    if (s->missed) {
        if (s->f.json)
            mg_text_add(&t, "{\"missed\":%llu}\n", (unsigned long long)s->missed);
        else
            mg_text_add(&t, "# %llu requests not shown: this client read too slowly\n", (unsigned long long)s->missed);
        s->missed = 0;
    }
    mg_timeline_format(&t, rec, s->f.json);
    evbuffer_add(out, t.p, t.len);
    free(t.p);
    if (s->f.limit && ++s->sent >= s->f.limit) {
        finish(s);
        return 0;
    }
    return 1;
}

/* The hub runs while tracing is on or anyone watches, and one round more after records came (none is left behind). */
static void update_tick_for(int drained)
{
    if (!tick)
        return;
    int want = tracing_on || nsubs > 0 || drained;
    if (want && !evtimer_pending(tick, NULL)) {
        struct timeval tv = { 0, MG_TIMELINE_TICK_MS * 1000 };
        evtimer_add(tick, &tv);
    }
}

static void update_tick(void) { update_tick_for(0); }

mg_timeline_sub_t *mg_timeline_subscribe(struct bufferevent *bev, mg_timeline_filter_t *f,
                                         void (*on_done)(void *arg), void *arg)
{
    mg_timeline_sub_t *s = mg_calloc(1, sizeof(*s));
    s->bev = bev;
    s->f = *f;
    memset(f, 0, sizeof(*f));
    s->on_done = on_done;
    s->arg = arg;
    s->next = subs;
    if (subs)
        subs->prev = s;
    subs = s;
    nsubs++;
    if (!s->f.recent)
        __atomic_add_fetch(&mg_trace_subscribers, 1, __ATOMIC_RELAXED); /* from now on every request is recorded */
    update_tick();
    for (int i = 0; i < recent_n; i++)
        if (!deliver(s, recent[(recent_at + i) % MG_TIMELINE_RECENT]))
            return s;
    if (s->f.recent)
        finish(s);
    return s;
}

void mg_timeline_unsubscribe(mg_timeline_sub_t *s)
{
    if (!s)
        return;
    if (s->prev)
        s->prev->next = s->next;
    else
        subs = s->next;
    if (s->next)
        s->next->prev = s->prev;
    nsubs--;
    if (!s->f.recent)
        __atomic_sub_fetch(&mg_trace_subscribers, 1, __ATOMIC_RELAXED);
    mg_timeline_filter_free(&s->f);
    free(s);
}

/* ---- the hub ---- */

static void take(mg_trace_rec_t *rec, void *arg)
{
    const int *exporting = arg;
    if (rec->sampled && *exporting) {
        mg_trace_rec_ref(rec);
        mg_otel_submit(rec);
    }
    for (mg_timeline_sub_t *s = subs; s; s = s->next)
        if (!s->f.recent)
            deliver(s, rec); /* a finished one is closed by its owner; it stays listed until then */
    if (recent_n == MG_TIMELINE_RECENT) {
        mg_trace_rec_put(recent[recent_at]);
        recent[recent_at] = rec;
        recent_at = (recent_at + 1) % MG_TIMELINE_RECENT;
    } else {
        recent[(recent_at + recent_n++) % MG_TIMELINE_RECENT] = rec;
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    int exporting = mg_otel_active();
    int n = mg_trace_drain(take, &exporting);
    update_tick_for(n);
}

void mg_timeline_start(struct event_base *base, int priority)
{
    tick = evtimer_new(base, on_tick, NULL);
    event_priority_set(tick, priority);
    update_tick();
}

void mg_timeline_configure(const mg_trace_conf_t *c)
{
    tracing_on = c->enabled;
    update_tick();
}

void mg_timeline_stop(void)
{
    if (tick)
        event_free(tick);
    tick = NULL;
}

void mg_timeline_final(void)
{
    int exporting = mg_otel_active();
    mg_trace_drain(take, &exporting); /* what the workers left: to the exporter's last batch */
    for (int i = 0; i < recent_n; i++)
        mg_trace_rec_put(recent[(recent_at + i) % MG_TIMELINE_RECENT]);
    recent_n = recent_at = 0;
}

void mg_timeline_metrics(mg_text_t *o)
{
    mg_otel_stats_t st;
    mg_otel_stats(&st);
    mg_text_add(o,
                "moongate_trace_requests_recorded_total %llu\n"
                "moongate_trace_requests_dropped_total %llu\n"
                "moongate_trace_subscribers %d\n"
                "moongate_trace_timeline_lines_dropped_total %llu\n"
                "moongate_trace_spans_exported_total %llu\n"
                "moongate_trace_spans_dropped_total{reason=\"queue_full\"} %llu\n"
                "moongate_trace_spans_dropped_total{reason=\"export_failed\"} %llu\n"
                "moongate_trace_spans_queued %llu\n"
                "moongate_trace_export_errors_total %llu\n",
                (unsigned long long)mg_trace_recorded(), (unsigned long long)mg_trace_ring_dropped(), nsubs,
                (unsigned long long)lines_dropped, (unsigned long long)st.exported,
                (unsigned long long)st.dropped_queue, (unsigned long long)st.dropped_failed,
                (unsigned long long)st.queued, (unsigned long long)st.errors);
}
