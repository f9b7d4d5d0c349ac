/*
 * mg_trace — see mg_trace.h.
 */
#include "mg_trace.h"

#include <stdio.h>
#include <sys/random.h>
#include <time.h>

#include "mg_error.h"
#include "mg_lua.h"
#include "mg_proxy.h"
#include "mg_req.h"
#include "mg_worker.h"

/* ---- the sampler's settings (written by the main thread, read by workers) ---- */

static int cfg_enabled;
static int cfg_parent_based;
static uint64_t cfg_bound;       /* a trace id whose low 64 bits are below this is sampled */
static int cfg_all;              /* ratio 1: every one */
int mg_trace_subscribers;

void mg_trace_apply(const mg_trace_conf_t *c)
{
    double ratio = c->enabled ? c->ratio : 0;
    __atomic_store_n(&cfg_all, ratio >= 1.0, __ATOMIC_RELAXED);
    __atomic_store_n(&cfg_bound, ratio <= 0 ? 0 : ratio >= 1.0 ? UINT64_MAX : (uint64_t)(ratio * 18446744073709551616.0),
                     __ATOMIC_RELAXED);
    __atomic_store_n(&cfg_parent_based, c->parent_based, __ATOMIC_RELAXED);
    __atomic_store_n(&cfg_enabled, c->enabled, __ATOMIC_RELAXED);
}

void mg_trace_conf_free(mg_trace_conf_t *c)
{
    free(c->endpoint);
    free(c->service_name);
    for (int i = 0; i < c->nheaders; i++)
        free(c->headers[i]);
    free(c->headers);
    memset(c, 0, sizeof(*c));
}

static const char *phase_names[] = { "-", "rewrite", "access", "balancer", "header_filter", "body_filter", "handler" };

const char *mg_trace_phase_name(int phase)
{
    return phase >= 0 && phase < (int)mg_countof(phase_names) ? phase_names[phase] : "?";
}

/* ---- ids ---- */

static __thread uint64_t rng[2];

/* xorshift128+, seeded per thread from the OS: span ids must not repeat across workers or restarts */
uint64_t mg_trace_random64(void)
{
    if (mg_unlikely(!rng[0] && !rng[1])) {
        if (getrandom(rng, sizeof(rng), 0) != sizeof(rng) || (!rng[0] && !rng[1])) {
            rng[0] = mg_now_us() ^ (uintptr_t)&rng;
            rng[1] = 0x9e3779b97f4a7c15ull;
        }
    }
    for (;;) {
        uint64_t s1 = rng[0];
        const uint64_t s0 = rng[1];
        rng[0] = s0;
        s1 ^= s1 << 23;
        rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
        uint64_t v = rng[1] + s0;
        if (v) /* an all-zero id is invalid (W3C) */
            return v;
    }
}

static const char HEX[] = "0123456789abcdef";

static size_t smaller(size_t a, size_t b) { return a < b ? a : b; }

void mg_trace_hex64(char *out, uint64_t v)
{
    for (int i = 0; i < 16; i++)
        out[i] = HEX[(v >> (60 - 4 * i)) & 15];
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* exactly 32 lowercase hex digits (a W3C trace id), the first non-digit (the NUL of a shorter one) ends the look */
static int is_hex32(const char *s)
{
    for (int i = 0; i < 32; i++) {
        unsigned c = (unsigned char)s[i];
        if (c - '0' > 9u && c - 'a' > 5u)
            return 0;
    }
    return s[32] == '\0';
}

/* n lowercase hex digits into bytes; 0 when one is not */
static int parse_hex(const char *s, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i += 2) {
        int a = hexval(s[i]), b = hexval(s[i + 1]);
        if (a < 0 || b < 0)
            return 0;
        out[i / 2] = (uint8_t)(a << 4 | b);
    }
    return 1;
}

static uint64_t be64(const uint8_t *b)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | b[i];
    return v;
}

/* ---- the recorder ---- */

static uint64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A string into the record's pool (cut at 200 bytes); offset 0 is "" (a full pool gives that too). */
static uint16_t add_str(mg_trace_t *tr, const char *s, size_t n)
{
    if (!s)
        return 0;
    if (n > 200)
        n = 200;
    if (tr->nstrs + n + 1 > sizeof(tr->strs))
        return 0;
    uint16_t off = tr->nstrs;
    memcpy(tr->strs + off, s, n);
    tr->strs[off + n] = '\0';
    tr->nstrs = (uint16_t)(tr->nstrs + n + 1);
    return off;
}

/* A new item (started now), or NULL when the record is full (counted). */
static mg_trace_item_t *add_item(mg_trace_t *tr, int kind, int parent, uint64_t now)
{
    if (tr->nitems == MG_TRACE_MAX_ITEMS) {
        tr->dropped++;
        return NULL;
    }
    mg_trace_item_t *it = &tr->items[tr->nitems++];
    memset(it, 0, sizeof(*it));
    it->kind = (uint8_t)kind;
    it->parent = (int16_t)parent;
    it->start_us = now;
    it->span_id = mg_trace_random64();
    return it;
}

static int index_of(const mg_trace_t *tr, const mg_trace_item_t *it) { return (int)(it - tr->items); }

void mg_trace_begin(mg_req_t *r, const char *tp)
{
    uint8_t parent_flags = 0;
    uint64_t parent_span = 0;
    uint8_t b[8];
    if (tp && parse_hex(tp + 36, 16, b) && parse_hex(tp + 53, 2, &parent_flags))
        parent_span = be64(b); /* all-zero parent id: invalid, treated as none (W3C) */
    int has_parent = parent_span != 0;
    int enabled = __atomic_load_n(&cfg_enabled, __ATOMIC_RELAXED);
    int subscribed = __atomic_load_n(&mg_trace_subscribers, __ATOMIC_RELAXED) > 0;
    if (mg_likely(!enabled && !subscribed)) {
        /* propagate only: the flag as it came, 01 for a trace we start */
        r->task.trace_flags = r->log_task.trace_flags = has_parent ? (parent_flags & 1) : 1;
        return;
    }
    uint8_t id[16];
    int w3c = strlen(r->trace_id) == 32 && parse_hex(r->trace_id, 32, id);
    if (!w3c) {
        /* a request id that is not a W3C trace id: the trace gets an id of its own */
        uint64_t a = mg_trace_random64(), c = mg_trace_random64();
        for (int i = 0; i < 8; i++) {
            id[i] = (uint8_t)(a >> (56 - 8 * i));
            id[8 + i] = (uint8_t)(c >> (56 - 8 * i));
        }
    }
    int sampled;
    if (!enabled)
        sampled = has_parent ? (parent_flags & 1) : 1; /* as above: nothing is exported */
    else if (has_parent && __atomic_load_n(&cfg_parent_based, __ATOMIC_RELAXED))
        sampled = parent_flags & 1;
    else
        sampled = __atomic_load_n(&cfg_all, __ATOMIC_RELAXED) || be64(id + 8) < __atomic_load_n(&cfg_bound, __ATOMIC_RELAXED);
    r->task.trace_flags = r->log_task.trace_flags = (unsigned char)sampled;
    int exported = enabled && sampled;
    if (!exported && !subscribed)
        return;
    mg_trace_t *tr = mg_pool_alloc(&r->pool, sizeof(*tr));
    memcpy(tr->trace_id, id, 16);
    tr->span_id = mg_trace_random64();
    tr->parent_span = parent_span;
    tr->sampled = exported;
    tr->fresh_id = !w3c;
    tr->start_us = r->start_us;
    uint64_t now = mg_now_us();
    tr->wall_start_ns = wall_ns() - (now - r->start_us) * 1000u;
    tr->cur = tr->wait = tr->proxy_queue = -1;
    tr->mark_us = now;
    tr->dropped = 0;
    tr->nitems = 0;
    tr->strs[0] = '\0';
    tr->nstrs = 1;
    r->trace = tr;
    r->task.trace = tr; /* the handler and filter tasks reuse r->task; the log phase is not recorded */
}

/* Closes the open WAIT at now: its time goes to the step it belongs to. */
static void end_wait(mg_trace_t *tr, uint64_t now)
{
    mg_trace_item_t *w = &tr->items[tr->wait];
    w->end_us = now;
    if (w->parent >= 0)
        tr->items[w->parent].wait_us += (uint32_t)(now - w->start_us);
    tr->wait = -1;
}

/* The open step takes the run time since the mark. */
static void charge(mg_trace_t *tr, uint64_t now)
{
    if (tr->cur >= 0)
        tr->items[tr->cur].run_us += (uint32_t)(now - tr->mark_us);
    tr->mark_us = now;
}

void mg_trace_enter(mg_trace_t *tr)
{
    uint64_t now = mg_now_us();
    if (tr->wait >= 0)
        end_wait(tr, now);
    tr->mark_us = now;
}

void mg_trace_leave(mg_trace_t *tr, const mg_wait_t *w)
{
    uint64_t now = mg_now_us();
    charge(tr, now);
    if (!w) {
        /* the task ended (returned, raised): what it had open ends with it */
        if (tr->cur >= 0 && !tr->items[tr->cur].end_us)
            tr->items[tr->cur].end_us = now;
        tr->cur = -1;
        return;
    }
    mg_trace_item_t *it = add_item(tr, MG_TI_WAIT, tr->cur, now);
    if (!it)
        return; /* not kept (counted): the step's wait is then end - start - run */
    const char *what = w->what ? w->what : "other";
    it->name = add_str(tr, what, strlen(what));
    tr->wait = index_of(tr, it);
}

void mg_trace_step(mg_trace_t *tr, int phase, const char *name, size_t len)
{
    uint64_t now = mg_now_us();
    charge(tr, now);
    if (tr->cur >= 0 && !tr->items[tr->cur].end_us)
        tr->items[tr->cur].end_us = now; /* the step before raised without its end mark */
    tr->cur = -1;
    if (!phase)
        return;
    mg_trace_item_t *it = add_item(tr, phase == MG_TP_HANDLER ? MG_TI_HANDLER : MG_TI_STEP, -1, now);
    if (!it)
        return;
    it->phase = (uint8_t)phase;
    it->name = add_str(tr, name, len);
    tr->cur = index_of(tr, it);
}

/* ---- upstream exchanges ---- */

static void end_attempt(mg_trace_t *tr, mg_proxy_t *p, uint64_t now, const mg_error_t *err, int cancelled)
{
    if (p->trace_item < 0)
        return;
    mg_trace_item_t *it = &tr->items[p->trace_item];
    it->end_us = now;
    it->status = (int16_t)(p->head_seen ? p->resp.status : 0);
    it->error = err ? (uint8_t)(err->id + 1) : 0;
    it->cancelled = (uint8_t)cancelled;
    p->trace_item = -1;
}

/* The wait for one of the upstream's max_concurrency permits (from the exchange's start to now). */
static void queue_wait(mg_trace_t *tr, mg_proxy_t *p, uint64_t now)
{
    mg_trace_item_t *q = add_item(tr, MG_TI_WAIT, p->trace_parent, p->t_start);
    if (!q)
        return;
    q->end_us = now;
    q->name = add_str(tr, MG_WAIT_SEMAPHORE, strlen(MG_WAIT_SEMAPHORE));
    q->name2 = add_str(tr, p->up->name, strlen(p->up->name));
}

void mg_trace_proxy(mg_proxy_t *p, int event, const mg_error_t *err)
{
    mg_trace_t *tr = p->trace;
    uint64_t now = mg_now_us();
    mg_trace_item_t *it = p->trace_item >= 0 ? &tr->items[p->trace_item] : NULL;
    switch (event) {
    case MG_TRACE_ATTEMPT: {
        end_attempt(tr, p, now, NULL, 1); /* (an attempt always ends first; defensive) */
        mg_trace_item_t *a = add_item(tr, MG_TI_ATTEMPT, p->trace_parent, now);
        /* a gw.http.request's attempts carry its span id: the call is the client span */
        p->trace_span = p->trace_parent >= 0 ? tr->items[p->trace_parent].span_id : a ? a->span_id : 0;
        if (!a)
            return;
        a->name = add_str(tr, p->target->text, strlen(p->target->text));
        a->name2 = add_str(tr, p->up->name, strlen(p->up->name));
        a->attempt = (uint8_t)(p->attempts > 255 ? 255 : p->attempts);
        p->trace_item = index_of(tr, a);
        break;
    }
    case MG_TRACE_CONNECTED:
        if (it && !it->connect_us)
            it->connect_us = (uint32_t)(now - it->start_us) + 1; /* 0 means "not reached" */
        break;
    case MG_TRACE_SENT:
        if (it && !it->sent_us)
            it->sent_us = (uint32_t)(now - it->start_us) + 1;
        break;
    case MG_TRACE_FIRST_BYTE:
        if (it && !it->first_us)
            it->first_us = (uint32_t)(now - it->start_us) + 1;
        break;
    case MG_TRACE_END:
        end_attempt(tr, p, now, err, 0);
        break;
    case MG_TRACE_CANCEL:
        end_attempt(tr, p, now, err, 1);
        if (p->queued)
            queue_wait(tr, p, now); /* cancelled while queued: the queue's wait ends here */
        break;
    case MG_TRACE_QUEUED:
        queue_wait(tr, p, now);
        break;
    }
}

int mg_trace_call_begin(mg_trace_t *tr, const char *method, const char *upstream, const char *target,
                        uint64_t *span)
{
    mg_trace_item_t *it = add_item(tr, MG_TI_CALL, tr->cur, mg_now_us());
    if (!it) {
        *span = 0;
        return -1;
    }
    it->name = add_str(tr, target, strlen(target));
    it->name2 = add_str(tr, upstream, strlen(upstream));
    it->name3 = add_str(tr, method, strlen(method));
    *span = it->span_id;
    return index_of(tr, it);
}

void mg_trace_call_end(mg_trace_t *tr, int item, int status, const mg_error_t *err, int attempts)
{
    if (item < 0 || tr->items[item].end_us)
        return;
    mg_trace_item_t *it = &tr->items[item];
    it->end_us = mg_now_us();
    it->status = (int16_t)status;
    it->error = err ? (uint8_t)(err->id + 1) : 0;
    it->attempt = (uint8_t)(attempts > 255 ? 255 : attempts);
    it->cancelled = err == MG_E(CLIENT_ABORT);
}

size_t mg_trace_parent_value(char *tp, const mg_trace_t *tr, const char *trace_id, unsigned flags, uint64_t span)
{
    memcpy(tp, "00-", 3);
    if (tr) {
        for (int i = 0; i < 16; i++) {
            tp[3 + 2 * i] = HEX[tr->trace_id[i] >> 4];
            tp[4 + 2 * i] = HEX[tr->trace_id[i] & 15];
        }
    } else {
        if (!trace_id || !is_hex32(trace_id))
            return 0;
        memcpy(tp + 3, trace_id, 32);
    }
    tp[35] = '-';
    mg_trace_hex64(tp + 36, span ? span : mg_trace_random64());
    tp[52] = '-';
    tp[53] = '0';
    tp[54] = (flags & 1) ? '1' : '0';
    return MG_TRACE_PARENT_LEN;
}

/* ---- finished records ---- */

typedef struct ring {
    mg_trace_rec_t **slot;
    uint32_t head;                 /* next to take (main thread; atomic) */
    uint32_t tail;                 /* next to fill (the worker; atomic) */
    uint64_t dropped, recorded;    /* atomic */
} ring_t;

static ring_t *rings;
static int nrings;

void mg_trace_rings_init(int nworkers)
{
    rings = mg_calloc((size_t)nworkers, sizeof(*rings));
    for (int i = 0; i < nworkers; i++)
        rings[i].slot = mg_calloc(MG_TRACE_RING, sizeof(mg_trace_rec_t *));
    nrings = nworkers;
}

void mg_trace_rings_free(void)
{
    for (int i = 0; i < nrings; i++) {
        for (uint32_t h = rings[i].head; h != rings[i].tail; h++)
            mg_trace_rec_put(rings[i].slot[h % MG_TRACE_RING]);
        free(rings[i].slot);
    }
    free(rings);
    rings = NULL;
    nrings = 0;
}

/* Single producer (the worker), single consumer (the main thread): no lock, two atomics. */
static void ring_push(int id, mg_trace_rec_t *rec)
{
    if (id < 0 || id >= nrings) {
        mg_trace_rec_put(rec); /* no main thread to take it (specs) */
        return;
    }
    ring_t *g = &rings[id];
    __atomic_add_fetch(&g->recorded, 1, __ATOMIC_RELAXED);
    uint32_t tail = g->tail;
    if (tail - __atomic_load_n(&g->head, __ATOMIC_ACQUIRE) >= MG_TRACE_RING) {
        __atomic_add_fetch(&g->dropped, 1, __ATOMIC_RELAXED);
        mg_trace_rec_put(rec);
        return;
    }
    g->slot[tail % MG_TRACE_RING] = rec;
    __atomic_store_n(&g->tail, tail + 1, __ATOMIC_RELEASE);
}

int mg_trace_drain(void (*fn)(mg_trace_rec_t *rec, void *arg), void *arg)
{
    int n = 0;
    for (int i = 0; i < nrings; i++) {
        ring_t *g = &rings[i];
        uint32_t tail = __atomic_load_n(&g->tail, __ATOMIC_ACQUIRE);
        uint32_t head = g->head;
        for (; head != tail; head++, n++)
            fn(g->slot[head % MG_TRACE_RING], arg);
        __atomic_store_n(&g->head, head, __ATOMIC_RELEASE);
    }
    return n;
}

uint64_t mg_trace_ring_dropped(void)
{
    uint64_t n = 0;
    for (int i = 0; i < nrings; i++)
        n += __atomic_load_n(&rings[i].dropped, __ATOMIC_RELAXED);
    return n;
}

uint64_t mg_trace_recorded(void)
{
    uint64_t n = 0;
    for (int i = 0; i < nrings; i++)
        n += __atomic_load_n(&rings[i].recorded, __ATOMIC_RELAXED);
    return n;
}

void mg_trace_rec_ref(mg_trace_rec_t *rec) { __atomic_add_fetch(&rec->refs, 1, __ATOMIC_RELAXED); }

void mg_trace_rec_put(mg_trace_rec_t *rec)
{
    if (rec && __atomic_sub_fetch(&rec->refs, 1, __ATOMIC_ACQ_REL) == 0)
        free(rec);
}

/* Builds the record's strings after the items' own (offsets stay valid: the pool is copied first). */
typedef struct builder {
    char *strs;
    size_t len, cap;
} builder_t;

static uint16_t put(builder_t *b, const char *s, size_t n, size_t max)
{
    if (!s || !n)
        return 0;
    if (n > max)
        n = max;
    if (b->len + n + 1 > b->cap)
        return 0;
    uint16_t off = (uint16_t)b->len;
    memcpy(b->strs + off, s, n);
    b->strs[off + n] = '\0';
    b->len += n + 1;
    return off;
}

void mg_trace_end(mg_req_t *r)
{
    mg_trace_t *tr = r->trace;
    uint64_t now = mg_now_us();
    /* what is still open ends with the request */
    charge(tr, now);
    if (tr->wait >= 0)
        end_wait(tr, now);
    for (int i = 0; i < tr->nitems; i++)
        if (!tr->items[i].end_us) {
            tr->items[i].end_us = now;
            tr->items[i].cancelled = tr->items[i].kind == MG_TI_ATTEMPT || tr->items[i].kind == MG_TI_CALL;
        }
    tr->cur = -1;
    if (r->proxy)
        r->proxy->trace_item = -1;

    /* one allocation: the record, its items, the strings (the recorder's pool, then the request's) */
    const char *client = r->remote[0] ? mg_req_client_ip(r) : NULL;
    const char *version = !r->minor_version ? "1.0" : r->wire->version;
    const mg_header_t *ua = NULL;
    for (size_t i = 0; i < r->nheaders && !ua; i++)
        if (mg_http1_name_is(&r->headers[i], "user-agent", 10))
            ua = &r->headers[i];
    const mg_proxy_t *p = r->proxy;
    size_t extra = smaller(strlen(r->trace_id), 128) + smaller(r->method.n, 32) + smaller(r->path.n, 1024) +
                   smaller(r->query.n, 1024) + (r->route ? smaller(strlen(r->route->name), 256) : 0) +
                   smaller(r->authority.n, 256) + (client ? smaller(strlen(client), 64) : 0) + strlen(version) +
                   (ua ? smaller(ua->value_len, 256) : 0) + (p ? smaller(strlen(p->up->name), 256) : 0) +
                   (p && p->target ? smaller(strlen(p->target->text), 256) : 0) + 11;
    size_t isize = sizeof(mg_trace_item_t) * (size_t)tr->nitems;
    mg_trace_rec_t *rec = mg_alloc(sizeof(*rec) + isize + tr->nstrs + extra);
    memset(rec, 0, sizeof(*rec));
    rec->items = (mg_trace_item_t *)(rec + 1);
    memcpy(rec->items, tr->items, isize);
    builder_t b = { (char *)(rec + 1) + isize, tr->nstrs, tr->nstrs + extra };
    memcpy(b.strs, tr->strs, tr->nstrs);
    rec->strs = b.strs;
    rec->refs = 1;
    rec->worker = r->worker->id;
    memcpy(rec->trace_id, tr->trace_id, 16);
    rec->span_id = tr->span_id;
    rec->parent_span = tr->parent_span;
    rec->sampled = tr->sampled;
    rec->fresh_id = tr->fresh_id;
    rec->start_us = tr->start_us;
    rec->end_us = now;
    rec->wall_start_ns = tr->wall_start_ns;
    rec->status = r->status;
    rec->error = r->error_kind ? r->error_kind->id + 1 : 0;
    rec->minor_version = r->minor_version;
    rec->tls = r->tls;
    rec->dropped = tr->dropped;
    rec->bytes_in = r->bytes_in;
    rec->bytes_out = r->bytes_out;
    rec->nitems = tr->nitems;
    rec->request_id = put(&b, r->trace_id, strlen(r->trace_id), 128);
    rec->method = put(&b, r->method.p, r->method.n, 32);
    rec->path = put(&b, r->path.p, r->path.n, 1024);
    rec->query = put(&b, r->query.p, r->query.n, 1024);
    if (r->route)
        rec->route = put(&b, r->route->name, strlen(r->route->name), 256);
    rec->host = put(&b, r->authority.p, r->authority.n, 256);
    if (client)
        rec->client = put(&b, client, strlen(client), 64);
    rec->version = put(&b, version, strlen(version), 8);
    if (ua)
        rec->user_agent = put(&b, ua->value, ua->value_len, 256);
    if (p) {
        rec->upstream = put(&b, p->up->name, strlen(p->up->name), 256);
        if (p->target)
            rec->target = put(&b, p->target->text, strlen(p->target->text), 256);
        rec->attempts = p->attempts;
    }
    ring_push(r->worker->id, rec);
}
