/*
 * mg_otel_encode — a recorded request as OTLP/JSON spans (part of mg_otel;
 * see mg_otel.h). The JSON encoding of OTLP: ids as hex strings, enums as
 * numbers, 64-bit integers as decimal strings. Attribute names follow the
 * OpenTelemetry semantic conventions for HTTP (http.request.method,
 * http.route, http.response.status_code, url.path, server.address,
 * error.type, http.request.resend_count, ...); what is the gateway's own is
 * under moongate.*.
 */
#include <stdio.h>

#include "mg_error.h"
#include "mg_otel.h"

enum { KIND_INTERNAL = 1, KIND_SERVER = 2, KIND_CLIENT = 3 };

static void hex_id(mg_text_t *o, const uint8_t *b, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    char s[33];
    for (size_t i = 0; i < n; i++) {
        s[2 * i] = hex[b[i] >> 4];
        s[2 * i + 1] = hex[b[i] & 15];
    }
    mg_text_append(o, s, 2 * n);
}

static void span_id(mg_text_t *o, uint64_t v)
{
    char s[16];
    mg_trace_hex64(s, v);
    mg_text_append(o, s, 16);
}

/* Attributes are written as a list; `first` tracks the comma. */
typedef struct attrs {
    mg_text_t *o;
    int n;
} attrs_t;

/* (every exported span goes through these: no printf) */
static void key(attrs_t *a, const char *k)
{
    if (a->n++)
        mg_text_lit(a->o, ",");
    mg_text_lit(a->o, "{\"key\":\"");
    mg_text_append(a->o, k, strlen(k));
    mg_text_lit(a->o, "\",\"value\":");
}

static void attr_str(attrs_t *a, const char *k, const char *v)
{
    if (!v || !*v)
        return;
    key(a, k);
    mg_text_lit(a->o, "{\"stringValue\":\"");
    mg_text_json(a->o, v);
    mg_text_lit(a->o, "\"}}");
}

static void attr_int(attrs_t *a, const char *k, long long v)
{
    key(a, k);
    mg_text_lit(a->o, "{\"intValue\":\"");
    if (v < 0) {
        mg_text_lit(a->o, "-");
        v = -v;
    }
    mg_text_u64(a->o, (uint64_t)v);
    mg_text_lit(a->o, "\"}}");
}

/* microseconds as a milliseconds double */
static void attr_ms(attrs_t *a, const char *k, uint64_t us)
{
    key(a, k);
    mg_text_lit(a->o, "{\"doubleValue\":");
    mg_text_ms(a->o, us);
    mg_text_lit(a->o, "}}");
}

/* "host:port" / "[v6]:port" into server.address and server.port */
static void attr_server(attrs_t *a, const char *hostport)
{
    if (!hostport || !*hostport)
        return;
    const char *colon = strrchr(hostport, ':');
    const char *bracket = strchr(hostport, ']');
    if (colon && (!bracket || colon > bracket)) {
        char host[256];
        size_t n = (size_t)(colon - hostport);
        if (hostport[0] == '[' && n >= 2) {
            hostport++;
            n -= 2;
        }
        snprintf(host, sizeof(host), "%.*s", (int)n, hostport);
        attr_str(a, "server.address", host);
        attr_int(a, "server.port", atoi(colon + 1));
    } else {
        attr_str(a, "server.address", hostport);
    }
}

static uint64_t unix_ns(const mg_trace_rec_t *rec, uint64_t mono_us)
{
    return rec->wall_start_ns + (mono_us - rec->start_us) * 1000u;
}

/* Opens a span object: ids, name, kind, times; leaves it at "attributes":[ */
static void span_open(mg_text_t *o, int *nspans, const mg_trace_rec_t *rec, uint64_t id, uint64_t parent,
                      const char *name, int kind, uint64_t start_us, uint64_t end_us)
{
    if ((*nspans)++)
        mg_text_lit(o, ",");
    mg_text_lit(o, "{\"traceId\":\"");
    hex_id(o, rec->trace_id, 16);
    mg_text_lit(o, "\",\"spanId\":\"");
    span_id(o, id);
    if (parent) {
        mg_text_lit(o, "\",\"parentSpanId\":\"");
        span_id(o, parent);
    }
    mg_text_lit(o, "\",\"name\":\"");
    mg_text_json(o, name);
    mg_text_lit(o, "\",\"kind\":");
    mg_text_u64(o, (uint64_t)kind);
    mg_text_lit(o, ",\"startTimeUnixNano\":\"");
    mg_text_u64(o, unix_ns(rec, start_us));
    mg_text_lit(o, "\",\"endTimeUnixNano\":\"");
    mg_text_u64(o, unix_ns(rec, end_us > start_us ? end_us : start_us));
    mg_text_lit(o, "\",\"attributes\":[");
}

/* Closes the events list (callers open it after the attributes), writes the status (error: message) and the span. */
static void span_close(mg_text_t *o, const char *error_message)
{
    mg_text_lit(o, "]");
    if (error_message) {
        mg_text_lit(o, ",\"status\":{\"code\":2,\"message\":\"");
        mg_text_json(o, error_message);
        mg_text_lit(o, "\"}");
    }
    mg_text_lit(o, "}");
}

static void event(mg_text_t *o, int *nev, const mg_trace_rec_t *rec, const char *name, uint64_t at_us)
{
    if ((*nev)++)
        mg_text_lit(o, ",");
    mg_text_lit(o, "{\"name\":\"");
    mg_text_append(o, name, strlen(name));
    mg_text_lit(o, "\",\"timeUnixNano\":\"");
    mg_text_u64(o, unix_ns(rec, at_us));
    mg_text_lit(o, "\",\"attributes\":[");
}

/* a status code as text (error.type when there is no kind) */
static void status_text(char *out, int status)
{
    if (status < 0 || status > 999)
        status = 0;
    out[0] = (char)('0' + status / 100);
    out[1] = (char)('0' + status / 10 % 10);
    out[2] = (char)('0' + status % 10);
    out[3] = '\0';
}

static const char *error_name(int e) { return e > 0 && e <= MG_ERR__COUNT ? mg_errors[e - 1].name : NULL; }

/* Is item i a span of its own? (A step or the handler only when it waited.) */
static int exported(const mg_trace_item_t *it)
{
    switch (it->kind) {
    case MG_TI_STEP:
    case MG_TI_HANDLER: return it->wait_us > 0;
    case MG_TI_ATTEMPT: return it->parent < 0; /* a gw.http.request's attempts are its events */
    case MG_TI_CALL: return 1;
    default: return 0;
    }
}

int mg_otel_span_count(const mg_trace_rec_t *rec)
{
    int n = 1;
    for (int i = 0; i < rec->nitems; i++)
        n += exported(&rec->items[i]);
    return n;
}

/* The waits that belong to item `parent` (-1: the request), as span events. */
static void wait_events(mg_text_t *o, int *nev, const mg_trace_rec_t *rec, int parent)
{
    for (int i = 0; i < rec->nitems; i++) {
        const mg_trace_item_t *w = &rec->items[i];
        if (w->kind != MG_TI_WAIT || w->parent != parent)
            continue;
        event(o, nev, rec, "wait", w->start_us);
        attrs_t a = { o, 0 };
        attr_str(&a, "moongate.wait.on", mg_trace_str(rec, w->name));
        attr_str(&a, "moongate.wait.semaphore", mg_trace_str(rec, w->name2));
        attr_ms(&a, "moongate.wait.ms", w->end_us - w->start_us);
        mg_text_lit(o, "]}");
    }
}

static void server_span(mg_text_t *o, int *nspans, const mg_trace_rec_t *rec)
{
    const char *method = mg_trace_str(rec, rec->method), *route = mg_trace_str(rec, rec->route);
    char name[320];
    size_t ml = strlen(method), rl = strlen(route);
    if (!ml)
        method = "HTTP", ml = 4;
    memcpy(name, method, ml); /* method <= 32, route <= 256 bytes (mg_trace_end) */
    name[ml] = ' ';
    memcpy(name + ml + 1, route, rl + 1);
    if (!rl)
        name[ml] = '\0';
    span_open(o, nspans, rec, rec->span_id, rec->parent_span, name, KIND_SERVER, rec->start_us, rec->end_us);
    attrs_t a = { o, 0 };
    attr_str(&a, "http.request.method", method);
    attr_str(&a, "url.path", mg_trace_str(rec, rec->path));
    attr_str(&a, "url.query", mg_trace_str(rec, rec->query));
    attr_str(&a, "url.scheme", rec->tls ? "https" : "http");
    attr_str(&a, "http.route", route);
    if (rec->status)
        attr_int(&a, "http.response.status_code", rec->status);
    attr_server(&a, mg_trace_str(rec, rec->host));
    attr_str(&a, "client.address", mg_trace_str(rec, rec->client));
    attr_str(&a, "network.protocol.version", mg_trace_str(rec, rec->version));
    attr_str(&a, "user_agent.original", mg_trace_str(rec, rec->user_agent));
    attr_int(&a, "http.response.body.size", (long long)rec->bytes_out);
    const char *err = error_name(rec->error);
    char status[16];
    status_text(status, rec->status);
    if (err)
        attr_str(&a, "error.type", err);
    else if (rec->status >= 500)
        attr_str(&a, "error.type", status);
    if (rec->fresh_id)
        attr_str(&a, "moongate.request_id", mg_trace_str(rec, rec->request_id));
    attr_str(&a, "moongate.upstream", mg_trace_str(rec, rec->upstream));
    attr_str(&a, "moongate.target", mg_trace_str(rec, rec->target));
    if (rec->attempts) {
        attr_int(&a, "moongate.attempts", rec->attempts);
        attr_int(&a, "moongate.retries", rec->attempts - 1);
    }
    attr_int(&a, "moongate.worker", rec->worker);
    if (rec->dropped)
        attr_int(&a, "moongate.items_dropped", rec->dropped);
    mg_text_lit(o, "],\"events\":[");
    int nev = 0;
    wait_events(o, &nev, rec, -1);
    span_close(o, rec->status >= 500 ? (err ? err : status) : NULL);
}

/* An upstream attempt (parent: the request) or a gw.http.request (parent: its step, when that is a span). */
static void client_span(mg_text_t *o, int *nspans, const mg_trace_rec_t *rec, int idx)
{
    const mg_trace_item_t *it = &rec->items[idx];
    int call = it->kind == MG_TI_CALL;
    const char *method = call ? mg_trace_str(rec, it->name3) : mg_trace_str(rec, rec->method);
    uint64_t parent = rec->span_id;
    if (it->parent >= 0 && exported(&rec->items[it->parent]))
        parent = rec->items[it->parent].span_id;
    span_open(o, nspans, rec, it->span_id, parent, *method ? method : "HTTP", KIND_CLIENT, it->start_us,
              it->end_us);
    attrs_t a = { o, 0 };
    attr_str(&a, "http.request.method", method);
    const char *target = mg_trace_str(rec, it->name);
    /* a call's peer: the target its last attempt went to (its item names the path) */
    const char *peer = call ? NULL : target;
    int attempts = 0;
    for (int i = 0; call && i < rec->nitems; i++)
        if (rec->items[i].kind == MG_TI_ATTEMPT && rec->items[i].parent == idx) {
            peer = mg_trace_str(rec, rec->items[i].name);
            attempts++;
        }
    attr_server(&a, peer);
    if (call && peer) {
        char url[1200];
        snprintf(url, sizeof(url), "http://%s%s", peer, target);
        attr_str(&a, "url.full", url);
    }
    if (it->status)
        attr_int(&a, "http.response.status_code", it->status);
    const char *err = it->cancelled && !it->error ? "cancelled" : error_name(it->error);
    char status[16];
    status_text(status, it->status);
    if (err)
        attr_str(&a, "error.type", err);
    else if (it->status >= 400)
        attr_str(&a, "error.type", status);
    int resends = call ? attempts - 1 : it->attempt - 1;
    if (resends > 0)
        attr_int(&a, "http.request.resend_count", resends);
    attr_str(&a, "moongate.upstream", mg_trace_str(rec, it->name2));
    mg_text_lit(o, "],\"events\":[");
    int nev = 0;
    if (!call) {
        static const char *names[] = { "connected", "request sent", "first byte" };
        uint32_t at[] = { it->connect_us, it->sent_us, it->first_us };
        for (int k = 0; k < 3; k++)
            if (at[k]) {
                event(o, &nev, rec, names[k], it->start_us + at[k] - 1);
                mg_text_lit(o, "]}");
            }
    } else {
        for (int i = 0; i < rec->nitems; i++) {
            const mg_trace_item_t *t = &rec->items[i];
            if (t->kind != MG_TI_ATTEMPT || t->parent != idx)
                continue;
            event(o, &nev, rec, "attempt", t->start_us);
            attrs_t e = { o, 0 };
            attr_str(&e, "moongate.target", mg_trace_str(rec, t->name));
            attr_ms(&e, "moongate.attempt.ms", t->end_us - t->start_us);
            if (t->status)
                attr_int(&e, "http.response.status_code", t->status);
            if (t->error)
                attr_str(&e, "error.type", error_name(t->error));
            mg_text_lit(o, "]}");
        }
    }
    span_close(o, err || it->status >= 400 ? (err ? err : status) : NULL);
}

/* A plugin step or the handler that waited. */
static void internal_span(mg_text_t *o, int *nspans, const mg_trace_rec_t *rec, int idx)
{
    const mg_trace_item_t *it = &rec->items[idx];
    const char *plugin = mg_trace_str(rec, it->name);
    char name[256];
    if (it->kind == MG_TI_HANDLER)
        snprintf(name, sizeof(name), "handler");
    else
        snprintf(name, sizeof(name), "%s %s", mg_trace_phase_name(it->phase), plugin);
    span_open(o, nspans, rec, it->span_id, rec->span_id, name, KIND_INTERNAL, it->start_us, it->end_us);
    attrs_t a = { o, 0 };
    attr_str(&a, "moongate.phase", mg_trace_phase_name(it->phase));
    if (it->kind == MG_TI_STEP)
        attr_str(&a, "moongate.plugin", plugin);
    attr_ms(&a, "moongate.run_ms", it->run_us);
    attr_ms(&a, "moongate.wait_ms", it->wait_us);
    mg_text_lit(o, "],\"events\":[");
    int nev = 0;
    wait_events(o, &nev, rec, idx);
    span_close(o, NULL);
}

void mg_otel_encode(mg_text_t *o, mg_trace_rec_t *const *recs, int n, const char *service_name)
{
    mg_text_add(o, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
    attrs_t a = { o, 0 };
    attr_str(&a, "service.name", service_name);
    attr_str(&a, "telemetry.sdk.name", "moongate");
    attr_str(&a, "telemetry.sdk.language", "c");
    attr_str(&a, "telemetry.sdk.version", MG_VERSION);
    mg_text_add(o, "]},\"scopeSpans\":[{\"scope\":{\"name\":\"moongate\",\"version\":\"%s\"},\"spans\":[", MG_VERSION);
    int nspans = 0;
    for (int r = 0; r < n; r++) {
        const mg_trace_rec_t *rec = recs[r];
        server_span(o, &nspans, rec);
        for (int i = 0; i < rec->nitems; i++) {
            const mg_trace_item_t *it = &rec->items[i];
            if (!exported(it))
                continue;
            if (it->kind == MG_TI_ATTEMPT || it->kind == MG_TI_CALL)
                client_span(o, &nspans, rec, i);
            else
                internal_span(o, &nspans, rec, i);
        }
    }
    mg_text_add(o, "]}]}]}");
}
