/*
 * mg_csema — see mg_csema.h.
 *
 * A lease's states: ACQUIRING (the acquire script is in flight), WAITING (a
 * retry is due on the timer), HELD (granted: the timer renews it), DONE (the
 * outcome was not a grant). The owner's release may come in any state:
 * ACQUIRING keeps the lease until the answer arrives (a grant is then given
 * back at once), the others end it now. The callback to the owner is always
 * the last thing done with a lease in a callback, since the owner may release
 * (free) it from inside.
 */
#include "mg_csema.h"

#include <event2/event.h>
#include <event2/event_struct.h>
#include <lauxlib.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

#include "mg_log.h"
#include "mg_lua.h"

#define RETRY_MIN_MS 5
#define RETRY_MAX_MS 100
#define LOG_INTERVAL_MS 10000

/* KEYS[1] the set; ARGV capacity, lease ms, weight, member id. Returns { granted, count }. */
static const char ACQUIRE_SRC[] =
    "local t = redis.call('TIME')\n"
    "local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
    "local n = redis.call('ZCARD', KEYS[1])\n"
    "local w = tonumber(ARGV[3])\n"
    "if n + w > tonumber(ARGV[1]) then return { 0, n } end\n"
    "local exp = now + tonumber(ARGV[2])\n"
    "for i = 1, w do redis.call('ZADD', KEYS[1], exp, ARGV[4] .. '/' .. i) end\n"
    "redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))\n"
    "return { 1, n + w }\n";

/* KEYS[1] the set; ARGV lease ms, weight, member id. Returns how many members were still there. */
static const char RENEW_SRC[] =
    "local t = redis.call('TIME')\n"
    "local exp = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1])\n"
    "local kept = 0\n"
    "for i = 1, tonumber(ARGV[2]) do\n"
    "  local m = ARGV[3] .. '/' .. i\n"
    "  if redis.call('ZSCORE', KEYS[1], m) then redis.call('ZADD', KEYS[1], 'XX', exp, m); kept = kept + 1 end\n"
    "end\n"
    "if kept > 0 then redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1])) end\n"
    "return kept\n";

static mg_redis_script_t *acquire_script, *renew_script;
static pthread_once_t scripts_once = PTHREAD_ONCE_INIT;

static void make_scripts(void)
{
    acquire_script = mg_redis_script_new(ACQUIRE_SRC, sizeof(ACQUIRE_SRC) - 1);
    renew_script = mg_redis_script_new(RENEW_SRC, sizeof(RENEW_SRC) - 1);
}

/* ---- the registry (figures, by redis and name) ---- */

struct mg_csema {
    char *name, *redis;
    int64_t capacity;              /* atomic */
    uint32_t lease_ms;             /* atomic */
    int refs;                      /* under registry_lock */
    int permanent;
    int64_t held, waiting;         /* this process (atomic) */
    uint64_t acquired, busy, timed_out, lease_lost, errors;
    int64_t seen_in_use;           /* the count Redis last answered (atomic) */
    uint64_t lost_logged_ms;
    mg_csema_t *next;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static mg_csema_t *registry;

#define ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)
#define LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

mg_csema_t *mg_csema_get(const char *name, const char *redis, int64_t capacity, uint32_t lease_ms)
{
    pthread_once(&scripts_once, make_scripts);
    pthread_mutex_lock(&registry_lock);
    mg_csema_t *s;
    for (s = registry; s; s = s->next)
        if (strcmp(s->name, name) == 0 && strcmp(s->redis, redis) == 0)
            break;
    if (!s) {
        s = mg_calloc(1, sizeof(*s));
        s->name = strdup(name);
        s->redis = strdup(redis);
        s->permanent = strncmp(name, "upstream:", 9) == 0;
        s->next = registry;
        registry = s;
    }
    s->refs++;
    STORE(&s->capacity, capacity);
    STORE(&s->lease_ms, lease_ms);
    pthread_mutex_unlock(&registry_lock);
    return s;
}

const char *mg_csema_name(const mg_csema_t *s) { return s->name; }

static void ref(mg_csema_t *s)
{
    pthread_mutex_lock(&registry_lock);
    s->refs++;
    pthread_mutex_unlock(&registry_lock);
}

void mg_csema_put(mg_csema_t *s)
{
    pthread_mutex_lock(&registry_lock);
    if (--s->refs == 0 && !s->permanent) {
        for (mg_csema_t **pp = &registry; *pp; pp = &(*pp)->next)
            if (*pp == s) {
                *pp = s->next;
                break;
            }
        free(s->name);
        free(s->redis);
        free(s);
    }
    pthread_mutex_unlock(&registry_lock);
}

/* ---- leases ---- */

enum { L_ACQUIRING, L_WAITING, L_HELD, L_DONE };

struct mg_clease {
    mg_csema_t *s;
    mg_redis_t *r;
    int64_t weight;
    int state;
    int released;                  /* the owner let go while the acquire was in flight */
    int queued;                    /* counted in s->waiting */
    int lost;                      /* a renewal found the lease gone */
    mg_rcall_t *call;
    struct event timer;            /* retry, renewal, or an outcome delivered later */
    int deliver;                   /* the timer delivers `outcome` */
    int outcome;
    const mg_error_t *kind;
    char msg[160];
    uint64_t wait_until_ms;
    uint32_t retry_ms;
    mg_clease_cb cb;
    void *arg;
    char key[300];
    char id[128];
};

static char node_tag[96];
static pthread_once_t tag_once = PTHREAD_ONCE_INIT;
static uint64_t next_seq;

static void make_tag(void)
{
    char host[64] = "gateway";
    gethostname(host, sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    snprintf(node_tag, sizeof(node_tag), "%s:%d", host, (int)getpid());
}

static void lease_free(mg_clease_t *l)
{
    event_del(&l->timer);
    if (l->queued)
        ADD(&l->s->waiting, -1);
    mg_csema_put(l->s);
    mg_redis_unref(l->r);
    free(l);
}

static void arm(mg_clease_t *l, uint32_t ms)
{
    struct timeval tv = { ms / 1000, (suseconds_t)(ms % 1000) * 1000 };
    evtimer_add(&l->timer, &tv);
}

/* The owner hears the outcome: the last thing done with l (the owner may release it). */
static void finish(mg_clease_t *l, int outcome, const mg_error_t *kind, const char *msg)
{
    if (l->queued) {
        l->queued = 0;
        ADD(&l->s->waiting, -1);
    }
    if (outcome != MG_CLEASE_GRANTED)
        l->state = L_DONE;
    if (outcome == MG_CLEASE_BUSY)
        ADD(&l->s->busy, 1);
    else if (outcome == MG_CLEASE_TIMED_OUT)
        ADD(&l->s->timed_out, 1);
    else if (outcome == MG_CLEASE_FAILED)
        ADD(&l->s->errors, 1);
    l->cb(l->arg, outcome, kind, msg);
}

/* An outcome known at once is delivered from the timer: never inside mg_clease_acquire. */
static void finish_later(mg_clease_t *l, int outcome, const mg_error_t *kind, const char *msg)
{
    l->deliver = 1;
    l->outcome = outcome;
    l->kind = kind;
    snprintf(l->msg, sizeof(l->msg), "%s", msg ? msg : "");
    event_del(&l->timer);
    event_active(&l->timer, EV_TIMEOUT, 0);
}

static void send_release(mg_clease_t *l)
{
    int64_t w = l->weight;
    char members[w][140];
    const char *argv[w + 2];
    size_t lens[w + 2];
    argv[0] = "ZREM";
    lens[0] = 4;
    argv[1] = l->key;
    lens[1] = strlen(l->key);
    for (int64_t i = 0; i < w; i++) {
        int n = snprintf(members[i], sizeof(members[i]), "%s/%lld", l->id, (long long)i + 1);
        argv[i + 2] = members[i];
        lens[i + 2] = (size_t)n;
    }
    mg_rcmd_t cmd = { NULL, (int)w + 2, argv, lens };
    const mg_error_t *kind;
    char msg[160];
    /* fire and forget: when Redis cannot take it, the lease runs out by itself */
    mg_redis_send(l->r, &cmd, 1, NULL, NULL, NULL, &kind, msg);
}

static void try_acquire(mg_clease_t *l);

static void on_acquired(mg_rcall_t *c, int i, const redisReply *reply, const mg_error_t *kind, const char *msg)
{
    mg_clease_t *l = c->data;
    l->call = NULL;
    char why[200];
    if (reply && reply->type == REDIS_REPLY_ERROR) {
        kind = mg_redis_reply_kind(reply);
        snprintf(why, sizeof(why), "%.*s", (int)reply->len, reply->str);
        msg = why;
        reply = NULL;
    } else if (reply && (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
                         reply->element[0]->type != REDIS_REPLY_INTEGER)) {
        kind = MG_E(REDIS_ERROR);
        msg = "unexpected reply from the acquire script";
        reply = NULL;
    }
    if (reply) {
        STORE(&l->s->seen_in_use, reply->element[1]->integer);
        if (reply->element[0]->integer == 1) {
            l->state = L_HELD;
            ADD(&l->s->held, l->weight);
            ADD(&l->s->acquired, 1);
            if (l->released) {
                send_release(l); /* the owner went away meanwhile */
                ADD(&l->s->held, -l->weight);
                lease_free(l);
                return;
            }
            arm(l, LOAD(&l->s->lease_ms) / 3);
            finish(l, MG_CLEASE_GRANTED, NULL, NULL);
            return;
        }
        if (l->released) {
            lease_free(l);
            return;
        }
        uint64_t now = mg_now_ms();
        if (l->wait_until_ms == 0) {
            finish(l, MG_CLEASE_BUSY, NULL, NULL);
            return;
        }
        if (now >= l->wait_until_ms) {
            finish(l, MG_CLEASE_TIMED_OUT, NULL, NULL);
            return;
        }
        /* poll again after a back-off with jitter, not past the wait */
        l->retry_ms = l->retry_ms ? l->retry_ms * 2 : RETRY_MIN_MS;
        if (l->retry_ms > RETRY_MAX_MS)
            l->retry_ms = RETRY_MAX_MS;
        uint32_t ms = l->retry_ms * 3 / 4 + (uint32_t)(mg_now_us() % (l->retry_ms / 2 + 1));
        if (now + ms > l->wait_until_ms)
            ms = (uint32_t)(l->wait_until_ms - now);
        l->state = L_WAITING;
        arm(l, ms);
        return;
    }
    if (l->released) {
        lease_free(l);
        return;
    }
    finish(l, MG_CLEASE_FAILED, kind, msg);
}

static void try_acquire(mg_clease_t *l)
{
    char cap[24], ttl[24], w[24];
    int n1 = snprintf(cap, sizeof(cap), "%lld", (long long)LOAD(&l->s->capacity));
    int n2 = snprintf(ttl, sizeof(ttl), "%u", LOAD(&l->s->lease_ms));
    int n3 = snprintf(w, sizeof(w), "%lld", (long long)l->weight);
    const char *argv[] = { "1", l->key, cap, ttl, w, l->id };
    size_t lens[] = { 1, strlen(l->key), (size_t)n1, (size_t)n2, (size_t)n3, strlen(l->id) };
    mg_rcmd_t cmd = { acquire_script, 6, argv, lens };
    const mg_error_t *kind;
    char msg[160];
    l->state = L_ACQUIRING;
    l->call = mg_redis_send(l->r, &cmd, 1, on_acquired, NULL, l, &kind, msg);
    if (!l->call)
        finish_later(l, MG_CLEASE_FAILED, kind, msg);
}

static void on_renewed(mg_rcall_t *c, int i, const redisReply *reply, const mg_error_t *kind, const char *msg)
{
    mg_clease_t *l = c->data;
    l->call = NULL;
    if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer < l->weight && !l->lost) {
        /* Redis lost it (unreachable longer than the lease, restarted, flushed): others may take the permits */
        l->lost = 1;
        ADD(&l->s->lease_lost, 1);
        uint64_t now = mg_now_ms(), last = LOAD(&l->s->lost_logged_ms);
        if (!last || now - last >= LOG_INTERVAL_MS) {
            STORE(&l->s->lost_logged_ms, now);
            mg_log_warn(NULL, "cluster semaphore %s: a lease held by a request in flight ran out in Redis "
                        "(unreachable for longer than the lease?): the fleet may exceed the limit until it ends",
                        l->s->name);
        }
    } else if (!reply || reply->type == REDIS_REPLY_ERROR) {
        ADD(&l->s->errors, 1);
    }
    if (!l->lost)
        arm(l, LOAD(&l->s->lease_ms) / 3);
}

static void renew(mg_clease_t *l)
{
    char ttl[24], w[24];
    int n1 = snprintf(ttl, sizeof(ttl), "%u", LOAD(&l->s->lease_ms));
    int n2 = snprintf(w, sizeof(w), "%lld", (long long)l->weight);
    const char *argv[] = { "1", l->key, ttl, w, l->id };
    size_t lens[] = { 1, strlen(l->key), (size_t)n1, (size_t)n2, strlen(l->id) };
    mg_rcmd_t cmd = { renew_script, 5, argv, lens };
    const mg_error_t *kind;
    char msg[160];
    l->call = mg_redis_send(l->r, &cmd, 1, on_renewed, NULL, l, &kind, msg);
    if (!l->call) {
        ADD(&l->s->errors, 1);
        arm(l, LOAD(&l->s->lease_ms) / 3); /* try again at the next turn, before the lease runs out */
    }
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    mg_clease_t *l = arg;
    if (l->deliver) {
        l->deliver = 0;
        finish(l, l->outcome, l->kind, l->msg);
    } else if (l->state == L_WAITING) {
        try_acquire(l);
    } else if (l->state == L_HELD && !l->call) {
        renew(l);
    }
}

mg_clease_t *mg_clease_acquire(mg_csema_t *s, mg_redis_t *r, int64_t weight, uint32_t wait_ms, int64_t max_queue,
                               mg_clease_cb cb, void *arg)
{
    pthread_once(&tag_once, make_tag);
    mg_clease_t *l = mg_calloc(1, sizeof(*l));
    ref(s);
    mg_redis_ref(r);
    l->s = s;
    l->r = r;
    l->weight = weight < 1 ? 1 : weight;
    l->cb = cb;
    l->arg = arg;
    snprintf(l->key, sizeof(l->key), "%ssem:%s", mg_redis_conf(r)->prefix, s->name);
    snprintf(l->id, sizeof(l->id), "%s:%llu", node_tag, (unsigned long long)ADD(&next_seq, 1));
    evtimer_assign(&l->timer, mg_redis_base(r), on_timer, l);
    if (wait_ms > 0) {
        if (LOAD(&s->waiting) >= max_queue) {
            finish_later(l, MG_CLEASE_BUSY, NULL, NULL); /* the queue is full: at once, like reject */
            return l;
        }
        l->queued = 1;
        ADD(&s->waiting, 1);
        l->wait_until_ms = mg_now_ms() + wait_ms;
    }
    try_acquire(l);
    return l;
}

void mg_clease_release(mg_clease_t *l)
{
    if (!l)
        return;
    switch (l->state) {
    case L_ACQUIRING:
        if (l->call) {
            l->released = 1; /* on_acquired frees it, and gives back a grant */
            l->cb = NULL;
            return;
        }
        break; /* the failure is being delivered later: nothing in flight */
    case L_HELD:
        if (l->call) {
            mg_rcall_abandon(l->call); /* a renewal: not needed any more */
            l->call = NULL;
        }
        send_release(l);
        ADD(&l->s->held, -l->weight);
        break;
    default:
        break;
    }
    lease_free(l);
}

/* ---- figures ---- */

/*
 * Cluster semaphores named after a request's key (limit-conn keyed by ip or
 * a header) are as many as clients make them: the answers list the config's
 * ("upstream:...") and the MG_CSEMA_LISTED others holding the most here; the
 * rest are summed per family (the name before its first ':') with a count.
 * Names go through the answers' escapers.
 */
#define MG_CSEMA_LISTED 100

typedef struct row {
    char *name, *redis;
    long long v[10];              /* capacity, lease_ms, held, waiting, acquired, busy, timed_out, lease_lost, errors, seen */
    size_t folded;
} row_t;

static const char *const FIELDS[10] = { "capacity", "lease_ms", "held", "waiting", "acquired", "busy", "timed_out",
                                        "lease_lost", "redis_errors", "in_use_seen" };

static int by_held(const void *pa, const void *pb)
{
    const row_t *a = pa, *b = pb;
    int ca = strncmp(a->name, "upstream:", 9) == 0, cb = strncmp(b->name, "upstream:", 9) == 0;
    if (ca != cb)
        return cb - ca;
    if (a->v[2] != b->v[2])
        return a->v[2] < b->v[2] ? 1 : -1;
    if (a->v[3] != b->v[3])
        return a->v[3] < b->v[3] ? 1 : -1;
    return strcmp(a->name, b->name);
}

static int is_config(const char *name) { return strncmp(name, "upstream:", 9) == 0; }

/* The rows to show: the listed ones, then one per folded family. */
static row_t *collect(size_t *nrows)
{
    pthread_mutex_lock(&registry_lock);
    size_t n = 0;
    for (mg_csema_t *s = registry; s; s = s->next)
        n++;
    row_t *rows = mg_calloc(n + 1, sizeof(row_t));
    size_t i = 0;
    for (mg_csema_t *s = registry; s; s = s->next, i++) {
        rows[i].name = strdup(s->name);
        rows[i].redis = strdup(s->redis);
        long long v[10] = { LOAD(&s->capacity), LOAD(&s->lease_ms), LOAD(&s->held), LOAD(&s->waiting),
                            (long long)LOAD(&s->acquired), (long long)LOAD(&s->busy), (long long)LOAD(&s->timed_out),
                            (long long)LOAD(&s->lease_lost), (long long)LOAD(&s->errors), LOAD(&s->seen_in_use) };
        memcpy(rows[i].v, v, sizeof(v));
    }
    pthread_mutex_unlock(&registry_lock);
    qsort(rows, n, sizeof(row_t), by_held);
    row_t *out = mg_calloc(n + 1, sizeof(row_t));
    size_t no = 0, listed = 0, first_family = 0;
    for (i = 0; i < n; i++) {
        row_t r = rows[i];
        if (is_config(r.name) || listed < MG_CSEMA_LISTED) {
            listed += !is_config(r.name);
            out[no++] = r;
            first_family = no;
            continue;
        }
        size_t flen = strcspn(r.name, ":"), k;
        for (k = first_family; k < no; k++)
            if (strncmp(out[k].name, r.name, flen) == 0 && out[k].name[flen] == ':' && strcmp(out[k].redis, r.redis) == 0)
                break;
        if (k == no) { /* a new family: "<family>:*" */
            out[no] = (row_t){ .name = mg_alloc(flen + 3), .redis = strdup(r.redis) };
            memcpy(out[no].name, r.name, flen);
            memcpy(out[no].name + flen, ":*", 3);
            out[no].v[0] = r.v[0];
            out[no].v[1] = r.v[1];
            no++;
        }
        for (int f = 2; f < 9; f++)
            out[k].v[f] += r.v[f];
        out[k].folded++;
        free(r.name);
        free(r.redis);
    }
    free(rows);
    *nrows = no;
    return out;
}

static void rows_free(row_t *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(rows[i].name);
        free(rows[i].redis);
    }
    free(rows);
}

void mg_csema_render_status(mg_text_t *o, int json)
{
    size_t n;
    row_t *rows = collect(&n);
    mg_text_add(o, json ? "{" : "cluster semaphores (this process's view):\n");
    for (size_t i = 0; i < n; i++) {
        const row_t *r = &rows[i];
        if (json) {
            mg_text_add(o, "%s\"", i ? "," : "");
            mg_text_json(o, r->name);
            mg_text_add(o, "\":{\"redis\":\"");
            mg_text_json(o, r->redis);
            mg_text_add(o, "\"");
            for (int f = 0; f < 10; f++)
                mg_text_add(o, ",\"%s\":%lld", FIELDS[f], r->v[f]);
            if (r->folded)
                mg_text_add(o, ",\"folded\":%zu", r->folded);
            mg_text_add(o, "}");
        } else {
            mg_text_add(o, "  ");
            mg_text_json(o, r->name);
            mg_text_add(o, " (redis ");
            mg_text_json(o, r->redis);
            mg_text_add(o, "%s): capacity %lld, lease %lld ms: held here %lld, waiting here %lld, acquired %lld, "
                           "busy %lld, timed out %lld, lease lost %lld, redis errors %lld, in use in the cluster "
                           "(last seen) %lld\n",
                        r->folded ? ", a family's total" : "", r->v[0], r->v[1], r->v[2], r->v[3], r->v[4], r->v[5],
                        r->v[6], r->v[7], r->v[8], r->v[9]);
        }
    }
    if (json)
        mg_text_add(o, "}");
    else if (!n)
        mg_text_add(o, "  (none)\n");
    rows_free(rows, n);
}

void mg_csema_render_metrics(mg_text_t *o)
{
    static const char *const metric[10] = {
        "capacity", "lease_seconds", "held", "waiting", "acquired_total", "busy_total", "timed_out_total",
        "lease_lost_total", "redis_errors_total", "in_use_seen",
    };
    size_t n;
    row_t *rows = collect(&n);
    for (size_t i = 0; i < n; i++) {
        for (int f = 0; f < 10; f++) {
            mg_text_add(o, "moongate_cluster_semaphore_%s{name=\"", metric[f]);
            mg_text_label(o, rows[i].name);
            mg_text_add(o, "\",redis=\"");
            mg_text_label(o, rows[i].redis);
            if (f == 1)
                mg_text_add(o, "\"} %.3f\n", rows[i].v[f] / 1000.0);
            else
                mg_text_add(o, "\"} %lld\n", rows[i].v[f]);
        }
        if (rows[i].folded) {
            mg_text_add(o, "moongate_cluster_semaphores_folded{family=\"");
            mg_text_label(o, rows[i].name);
            mg_text_add(o, "\"} %zu\n", rows[i].folded);
        }
    }
    rows_free(rows, n);
}

/* ---- Lua: red:semaphore(name, capacity [, lease_seconds]) ---- */

#define CSEMA_MT "moongate.cluster_semaphore"

typedef struct lcsema {
    mg_csema_t *s;
    mg_redis_t *r;                 /* the generation's pool (the handle lives in its VM) */
} lcsema_t;

/* A lease a Lua task took: an entry in its owner's ledger (the request's, for its phases). */
typedef struct lhold {
    mg_ledger_entry_t entry;
    mg_clease_t *l;
    mg_csema_t *s;
} lhold_t;

/* The owner ended (or the holder released it): the lease goes back. */
static void give_back(mg_ledger_entry_t *e)
{
    lhold_t *h = mg_ledger_of(e, lhold_t, entry);
    mg_clease_release(h->l);
    free(h);
}

/* A Lua acquisition in flight. */
typedef struct lacq {
    mg_wait_t wait;
    mg_clease_t *l;
    mg_csema_t *s;
    mg_ledger_t *ledger;           /* where a grant is written down (mg_lua_ledger) */
    int frame;                     /* waiting on the VM's main thread: the calling frame frees us */
} lacq_t;

static void lacq_cancel(mg_wait_t *w)
{
    lacq_t *a = (lacq_t *)w;
    mg_clease_release(a->l); /* abandoned: a grant that still comes is given back */
    free(a);
}

static void on_lua_outcome(void *arg, int outcome, const mg_error_t *kind, const char *msg)
{
    lacq_t *a = arg;
    lua_State *co = a->wait.co;
    int nret = 1;
    if (outcome == MG_CLEASE_GRANTED) {
        lhold_t *h = mg_calloc(1, sizeof(*h));
        h->l = a->l;
        h->s = a->s;
        mg_ledger_add(a->ledger, &h->entry, give_back);
        lua_pushboolean(co, 1);
    } else {
        lua_pushnil(co);
        lua_pushstring(co, outcome == MG_CLEASE_BUSY ? "busy" : outcome == MG_CLEASE_TIMED_OUT ? "timeout"
                                                                                                : kind->name);
        nret = 2;
        if (outcome == MG_CLEASE_FAILED) {
            lua_pushstring(co, msg);
            nret = 3;
        }
        mg_clease_release(a->l); /* msg may be the lease's: after it was copied */
    }
    a->l = NULL;
    if (a->frame) {
        mg_wait_wake(&a->wait, nret); /* the frame in mg_wait_yield reads it, then frees a */
        return;
    }
    mg_wait_wake(&a->wait, nret);
    free(a);
}

int mg_csema_lua_new(lua_State *L)
{
    mg_redis_t *r = mg_redis_lua_check(L, 1);
    const char *name = luaL_checkstring(L, 2);
    lua_Number cap = luaL_checknumber(L, 3);
    lua_Number lease = luaL_optnumber(L, 4, 10);
    if (!(cap >= 1))
        return luaL_argerror(L, 3, "capacity must be >= 1");
    if (!(lease >= 0.3 && lease <= 86400))
        return luaL_argerror(L, 4, "the lease is 0.3 to 86400 seconds");
    lcsema_t *h = lua_newuserdata(L, sizeof(*h));
    h->s = mg_csema_get(name, mg_redis_conf(r)->name, (int64_t)cap, (uint32_t)(lease * 1000));
    h->r = r;
    luaL_getmetatable(L, CSEMA_MT);
    lua_setmetatable(L, -2);
    return 1;
}

/*
 * sem:acquire(weight [, timeout_seconds [, max_queue]]) -> true | nil, "busy"
 * | nil, "timeout" | nil, kind, msg. The lease is the caller's (its ledger:
 * a request's phases share the request's), given back when it ends.
 */
static int l_acquire(lua_State *L)
{
    lcsema_t *h = luaL_checkudata(L, 1, CSEMA_MT);
    lua_Number w = luaL_optnumber(L, 2, 1);
    double timeout = luaL_optnumber(L, 3, 0);
    lua_Number max_queue = luaL_optnumber(L, 4, 1e9);
    if (!(w >= 1) || floor(w) != w || w > 1000)
        return luaL_argerror(L, 2, "weight must be an integer from 1 to 1000");
    mg_ledger_t *ledger = mg_lua_ledger(L, "red:semaphore():acquire"); /* raises before anything is taken */
    lacq_t *a = mg_calloc(1, sizeof(*a));
    a->ledger = ledger;
    a->s = h->s;
    a->frame = mg_task_current(L) == NULL;
    a->wait.cancel = lacq_cancel;
    a->wait.what = MG_WAIT_SEMAPHORE;
    a->l = mg_clease_acquire(h->s, h->r, (int64_t)w, timeout > 0 ? (uint32_t)(timeout * 1000) : 0,
                             (int64_t)max_queue, on_lua_outcome, a);
    if (!a->frame)
        return mg_wait_yield(L, &a->wait);
    int nret = mg_wait_yield(L, &a->wait);
    free(a);
    return nret;
}

/* sem:release(): gives back the newest lease of this semaphore the caller holds */
static int l_release(lua_State *L)
{
    lcsema_t *h = luaL_checkudata(L, 1, CSEMA_MT);
    mg_ledger_t *ledger = mg_lua_ledger(L, "red:semaphore():release");
    for (mg_ledger_entry_t *e = mg_ledger_next(ledger, NULL, give_back); e; e = mg_ledger_next(ledger, e, give_back)) {
        lhold_t *hold = mg_ledger_of(e, lhold_t, entry);
        if (hold->s != h->s)
            continue;
        mg_ledger_remove(e);
        give_back(e);
        lua_pushboolean(L, 1);
        return 1;
    }
    return luaL_error(L, "cluster semaphore %s: the caller holds no lease of it", h->s->name);
}

static int l_stats(lua_State *L)
{
    lcsema_t *h = luaL_checkudata(L, 1, CSEMA_MT);
    mg_csema_t *s = h->s;
    const struct { const char *k; double v; } f[] = {
        { "capacity", (double)LOAD(&s->capacity) }, { "held", (double)LOAD(&s->held) },
        { "waiting", (double)LOAD(&s->waiting) }, { "acquired", (double)LOAD(&s->acquired) },
        { "busy", (double)LOAD(&s->busy) }, { "timed_out", (double)LOAD(&s->timed_out) },
        { "lease_lost", (double)LOAD(&s->lease_lost) }, { "redis_errors", (double)LOAD(&s->errors) },
        { "in_use_seen", (double)LOAD(&s->seen_in_use) },
    };
    lua_createtable(L, 0, (int)mg_countof(f));
    for (size_t i = 0; i < mg_countof(f); i++) {
        lua_pushnumber(L, f[i].v);
        lua_setfield(L, -2, f[i].k);
    }
    return 1;
}

static int l_gc(lua_State *L)
{
    lcsema_t *h = luaL_checkudata(L, 1, CSEMA_MT);
    if (h->s)
        mg_csema_put(h->s);
    h->s = NULL;
    return 0;
}

void mg_csema_register(lua_State *L)
{
    static const luaL_Reg methods[] = {
        { "acquire", l_acquire }, { "release", l_release }, { "stats", l_stats }, { NULL, NULL },
    };
    mg_lua_class(L, CSEMA_MT, methods, l_gc);
}
