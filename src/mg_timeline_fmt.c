/*
 * mg_timeline_fmt — a recorded request as `gatewayctl trace` shows it (part
 * of mg_timeline; the formats are in docs/observability.md). Times are
 * milliseconds since the request started; every name goes through the JSON
 * escaper, in the text form too (a name stays on its line).
 */
#include <stdio.h>
#include <time.h>

#include "mg_error.h"
#include "mg_log.h"
#include "mg_timeline.h"

static double ms(uint64_t us) { return (double)us / 1000.0; }

static const char *error_name(int e) { return e > 0 && e <= MG_ERR__COUNT ? mg_errors[e - 1].name : NULL; }

static void trace_hex(char *out, const uint8_t *id)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        out[2 * i] = hex[id[i] >> 4];
        out[2 * i + 1] = hex[id[i] & 15];
    }
    out[32] = '\0';
}

/* Items in the order they started (the upstream queue's wait is added when it ends). */
static int order(const mg_trace_rec_t *rec, int *idx)
{
    int n = rec->nitems;
    for (int i = 0; i < n; i++)
        idx[i] = i;
    for (int i = 1; i < n; i++) { /* insertion sort: a few dozen, almost sorted */
        int k = idx[i], j = i - 1;
        while (j >= 0 && rec->items[idx[j]].start_us > rec->items[k].start_us)
            idx[j + 1] = idx[j], j--;
        idx[j + 1] = k;
    }
    return n;
}

static int depth(const mg_trace_rec_t *rec, int i)
{
    int d = 0;
    for (int p = rec->items[i].parent; p >= 0 && d < 8; p = rec->items[p].parent)
        d++;
    return d;
}

/* An attempt's phases: connect (0 on a pooled connection), send, upstream read (to the first byte), body. */
typedef struct phases {
    uint64_t connect, send, wait, body; /* µs */
    int has_connect, has_send, has_first;
} phases_t;

static phases_t attempt_phases(const mg_trace_item_t *it)
{
    phases_t p = { 0 };
    uint64_t total = it->end_us - it->start_us;
    uint64_t c = it->connect_us ? it->connect_us - 1 : 0;
    uint64_t s = it->sent_us ? it->sent_us - 1 : 0;
    uint64_t f = it->first_us ? it->first_us - 1 : 0;
    p.has_connect = it->connect_us != 0;
    p.has_send = it->sent_us != 0;
    p.has_first = it->first_us != 0;
    p.connect = c;
    if (p.has_send)
        p.send = s > c ? s - c : 0;
    if (p.has_first)
        p.wait = f > s ? f - s : 0, p.body = total > f ? total - f : 0;
    return p;
}

static void text_outcome(mg_text_t *o, const mg_trace_item_t *it)
{
    const char *err = error_name(it->error);
    if (err)
        mg_text_add(o, " -> %s", err);
    else if (it->cancelled)
        mg_text_add(o, " -> cancelled");
    else if (it->status)
        mg_text_add(o, " -> %d", it->status);
}

/* "redis 3.012, gw.sleep 1.000": the waits of item i by what they were on */
static void text_waits(mg_text_t *o, const mg_trace_rec_t *rec, int i)
{
    const char *seen[16];
    int nseen = 0;
    for (int k = 0; k < rec->nitems; k++) {
        const mg_trace_item_t *w = &rec->items[k];
        if (w->kind != MG_TI_WAIT || w->parent != i)
            continue;
        const char *on = mg_trace_str(rec, w->name);
        int dup = 0;
        for (int s = 0; s < nseen; s++)
            dup |= strcmp(seen[s], on) == 0;
        if (dup || nseen == 16)
            continue;
        seen[nseen++] = on;
        uint64_t total = 0;
        int count = 0;
        for (int m = k; m < rec->nitems; m++) {
            const mg_trace_item_t *x = &rec->items[m];
            if (x->kind == MG_TI_WAIT && x->parent == i && strcmp(mg_trace_str(rec, x->name), on) == 0) {
                total += x->end_us - x->start_us;
                count++;
            }
        }
        mg_text_add(o, "%s", nseen > 1 ? ", " : ": ");
        mg_text_json(o, on);
        mg_text_add(o, count > 1 ? " %.3f (%d waits)" : " %.3f", ms(total), count);
    }
}

static void format_text(mg_text_t *o, const mg_trace_rec_t *rec)
{
    char ts[64], tid[33];
    mg_log_time(ts, sizeof(ts), (double)rec->wall_start_ns / 1e9);
    mg_text_add(o, "%s ", ts);
    mg_text_json(o, mg_trace_str(rec, rec->method));
    mg_text_add(o, " ");
    mg_text_json(o, mg_trace_str(rec, rec->path));
    if (*mg_trace_str(rec, rec->query)) {
        mg_text_add(o, "?");
        mg_text_json(o, mg_trace_str(rec, rec->query));
    }
    mg_text_add(o, " -> %d in %.3f ms", rec->status, ms(rec->end_us - rec->start_us));
    if (rec->error)
        mg_text_add(o, " (%s)", error_name(rec->error));
    if (*mg_trace_str(rec, rec->route)) {
        mg_text_add(o, "  route ");
        mg_text_json(o, mg_trace_str(rec, rec->route));
    }
    mg_text_add(o, "  trace %s", mg_trace_str(rec, rec->request_id));
    if (rec->fresh_id) {
        trace_hex(tid, rec->trace_id);
        mg_text_add(o, " (otel %s)", tid);
    }
    mg_text_add(o, "  worker %d%s\n", rec->worker, rec->sampled ? "  sampled" : "");
    int idx[MG_TRACE_MAX_ITEMS];
    int n = order(rec, idx);
    for (int k = 0; k < n; k++) {
        int i = idx[k];
        const mg_trace_item_t *it = &rec->items[i];
        if (it->kind == MG_TI_WAIT && it->parent >= 0)
            continue; /* shown with its step */
        mg_text_add(o, "  %+10.3f ms %*s", ms(it->start_us - rec->start_us), 2 * depth(rec, i), "");
        double dur = ms(it->end_us - it->start_us);
        switch (it->kind) {
        case MG_TI_STEP:
        case MG_TI_HANDLER:
            if (it->kind == MG_TI_STEP) {
                mg_text_add(o, "%s ", mg_trace_phase_name(it->phase));
                mg_text_json(o, mg_trace_str(rec, it->name));
            } else {
                mg_text_add(o, "handler");
            }
            mg_text_add(o, "  %.3f ms: run %.3f, wait %.3f", dur, ms(it->run_us), ms(it->wait_us));
            text_waits(o, rec, i);
            break;
        case MG_TI_WAIT:
            mg_text_add(o, "wait ");
            mg_text_json(o, mg_trace_str(rec, it->name));
            if (*mg_trace_str(rec, it->name2)) {
                mg_text_add(o, " (upstream ");
                mg_text_json(o, mg_trace_str(rec, it->name2));
                mg_text_add(o, ")");
            }
            mg_text_add(o, "  %.3f ms", dur);
            break;
        case MG_TI_ATTEMPT: {
            phases_t p = attempt_phases(it);
            mg_text_add(o, "upstream ");
            mg_text_json(o, mg_trace_str(rec, it->name2));
            mg_text_add(o, " ");
            mg_text_json(o, mg_trace_str(rec, it->name));
            mg_text_add(o, " (attempt %d)  %.3f ms:", it->attempt, dur);
            mg_text_add(o, p.has_connect ? " connect %.3f" : " pooled", ms(p.connect));
            if (p.has_send)
                mg_text_add(o, ", send %.3f", ms(p.send));
            if (p.has_first)
                mg_text_add(o, ", upstream read %.3f, body %.3f", ms(p.wait), ms(p.body));
            text_outcome(o, it);
            break;
        }
        case MG_TI_CALL:
            mg_text_add(o, "gw.http.request ");
            mg_text_json(o, mg_trace_str(rec, it->name3));
            mg_text_add(o, " ");
            mg_text_json(o, mg_trace_str(rec, it->name));
            mg_text_add(o, " (");
            mg_text_json(o, mg_trace_str(rec, it->name2));
            mg_text_add(o, ")  %.3f ms", dur);
            text_outcome(o, it);
            break;
        }
        mg_text_add(o, "\n");
    }
    if (rec->dropped)
        mg_text_add(o, "  (%u more not kept)\n", rec->dropped);
}

/* ,"key": helpers (JSON lines are written for every request a subscriber sees: no printf) */
static void key(mg_text_t *o, const char *k)
{
    mg_text_lit(o, ",\"");
    mg_text_append(o, k, strlen(k));
    mg_text_lit(o, "\":");
}

static void json_str(mg_text_t *o, const char *k, const char *v)
{
    if (!v || !*v)
        return;
    key(o, k);
    mg_text_lit(o, "\"");
    mg_text_json(o, v);
    mg_text_lit(o, "\"");
}

static void json_int(mg_text_t *o, const char *k, long long v)
{
    key(o, k);
    if (v < 0) {
        mg_text_lit(o, "-");
        v = -v;
    }
    mg_text_u64(o, (uint64_t)v);
}

static void json_ms(mg_text_t *o, const char *k, uint64_t us)
{
    key(o, k);
    mg_text_ms(o, us);
}

static void json_outcome(mg_text_t *o, const mg_trace_item_t *it)
{
    if (it->status)
        json_int(o, "status", it->status);
    json_str(o, "error", error_name(it->error));
    if (it->cancelled)
        mg_text_lit(o, ",\"cancelled\":true");
}

static void json_waits(mg_text_t *o, const mg_trace_rec_t *rec, int parent)
{
    mg_text_lit(o, ",\"waits\":[");
    int n = 0;
    for (int k = 0; k < rec->nitems; k++) {
        const mg_trace_item_t *w = &rec->items[k];
        if (w->kind != MG_TI_WAIT || w->parent != parent)
            continue;
        if (n++)
            mg_text_lit(o, ",");
        mg_text_lit(o, "{\"on\":\"");
        mg_text_json(o, mg_trace_str(rec, w->name));
        mg_text_lit(o, "\"");
        json_str(o, "upstream", mg_trace_str(rec, w->name2));
        json_ms(o, "start_ms", w->start_us - rec->start_us);
        json_ms(o, "ms", w->end_us - w->start_us);
        mg_text_lit(o, "}");
    }
    mg_text_lit(o, "]");
}

static void json_attempt(mg_text_t *o, const mg_trace_rec_t *rec, const mg_trace_item_t *it)
{
    phases_t p = attempt_phases(it);
    mg_text_lit(o, "{\"kind\":\"attempt\"");
    json_str(o, "upstream", mg_trace_str(rec, it->name2));
    json_str(o, "target", mg_trace_str(rec, it->name));
    json_int(o, "attempt", it->attempt);
    json_ms(o, "start_ms", it->start_us - rec->start_us);
    json_ms(o, "duration_ms", it->end_us - it->start_us);
    if (p.has_connect)
        json_ms(o, "connect_ms", p.connect);
    else
        mg_text_lit(o, ",\"pooled\":true");
    if (p.has_send)
        json_ms(o, "send_ms", p.send);
    if (p.has_first) {
        json_ms(o, "wait_ms", p.wait);
        json_ms(o, "body_ms", p.body);
    }
    json_outcome(o, it);
    mg_text_lit(o, "}");
}

/* "2026-12-01T10:00:00.123Z": the date part is made once per second (the main thread's only) */
static void json_time(mg_text_t *o, uint64_t ns)
{
    static time_t cached = -1;
    static char date[32];
    time_t sec = (time_t)(ns / 1000000000u);
    if (sec != cached) {
        mg_log_time(date, sizeof(date), (double)sec);
        date[19] = '\0'; /* without ".000Z" */
        cached = sec;
    }
    unsigned msec = (unsigned)(ns / 1000000u % 1000u);
    char frac[6] = { '.', (char)('0' + msec / 100), (char)('0' + msec / 10 % 10), (char)('0' + msec % 10), 'Z', 0 };
    mg_text_append(o, date, 19);
    mg_text_append(o, frac, 5);
}

static void format_json(mg_text_t *o, const mg_trace_rec_t *rec)
{
    mg_text_lit(o, "{\"time\":\"");
    json_time(o, rec->wall_start_ns);
    mg_text_lit(o, "\",\"trace_id\":\"");
    mg_text_json(o, mg_trace_str(rec, rec->request_id));
    mg_text_lit(o, "\"");
    if (rec->fresh_id) {
        char tid[33];
        trace_hex(tid, rec->trace_id);
        json_str(o, "otel_trace_id", tid);
    }
    json_int(o, "worker", rec->worker);
    if (rec->sampled)
        mg_text_lit(o, ",\"sampled\":true");
    else
        mg_text_lit(o, ",\"sampled\":false");
    json_str(o, "method", mg_trace_str(rec, rec->method));
    json_str(o, "path", mg_trace_str(rec, rec->path));
    json_str(o, "query", mg_trace_str(rec, rec->query));
    json_str(o, "route", mg_trace_str(rec, rec->route));
    json_int(o, "status", rec->status);
    json_ms(o, "duration_ms", rec->end_us - rec->start_us);
    json_str(o, "error", error_name(rec->error));
    json_str(o, "upstream", mg_trace_str(rec, rec->upstream));
    json_str(o, "target", mg_trace_str(rec, rec->target));
    if (rec->attempts)
        json_int(o, "attempts", rec->attempts);
    if (rec->dropped)
        json_int(o, "not_kept", rec->dropped);
    mg_text_lit(o, ",\"phases\":[");
    int idx[MG_TRACE_MAX_ITEMS], first = 1;
    int n = order(rec, idx);
    for (int k = 0; k < n; k++) {
        int i = idx[k];
        const mg_trace_item_t *it = &rec->items[i];
        /* a step's waits and a call's attempts are inside them */
        if ((it->kind == MG_TI_WAIT || it->kind == MG_TI_ATTEMPT) && it->parent >= 0)
            continue;
        if (!first)
            mg_text_lit(o, ",");
        first = 0;
        uint64_t start = it->start_us - rec->start_us, dur = it->end_us - it->start_us;
        switch (it->kind) {
        case MG_TI_STEP:
        case MG_TI_HANDLER:
            mg_text_lit(o, "{\"kind\":");
            if (it->kind == MG_TI_STEP)
                mg_text_lit(o, "\"step\"");
            else
                mg_text_lit(o, "\"handler\"");
            json_str(o, "phase", mg_trace_phase_name(it->phase));
            if (it->kind == MG_TI_STEP)
                json_str(o, "plugin", mg_trace_str(rec, it->name));
            json_ms(o, "start_ms", start);
            json_ms(o, "duration_ms", dur);
            json_ms(o, "run_ms", it->run_us);
            json_ms(o, "wait_ms", it->wait_us);
            json_waits(o, rec, i);
            mg_text_lit(o, "}");
            break;
        case MG_TI_WAIT:
            mg_text_lit(o, "{\"kind\":\"wait\"");
            json_str(o, "on", mg_trace_str(rec, it->name));
            json_str(o, "upstream", mg_trace_str(rec, it->name2));
            json_ms(o, "start_ms", start);
            json_ms(o, "duration_ms", dur);
            mg_text_lit(o, "}");
            break;
        case MG_TI_ATTEMPT:
            json_attempt(o, rec, it);
            break;
        case MG_TI_CALL:
            mg_text_lit(o, "{\"kind\":\"call\"");
            json_str(o, "method", mg_trace_str(rec, it->name3));
            json_str(o, "upstream", mg_trace_str(rec, it->name2));
            json_str(o, "path", mg_trace_str(rec, it->name));
            if (it->parent >= 0)
                json_str(o, "in", mg_trace_phase_name(rec->items[it->parent].phase));
            json_ms(o, "start_ms", start);
            json_ms(o, "duration_ms", dur);
            json_outcome(o, it);
            mg_text_lit(o, ",\"attempts\":[");
            int na = 0;
            for (int a = 0; a < rec->nitems; a++)
                if (rec->items[a].kind == MG_TI_ATTEMPT && rec->items[a].parent == i) {
                    if (na++)
                        mg_text_lit(o, ",");
                    json_attempt(o, rec, &rec->items[a]);
                }
            mg_text_lit(o, "]}");
            break;
        }
    }
    mg_text_lit(o, "]}\n");
}

void mg_timeline_format(mg_text_t *o, const mg_trace_rec_t *rec, int json)
{
    if (json)
        format_json(o, rec);
    else
        format_text(o, rec);
}
