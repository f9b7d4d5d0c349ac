/*
 * mg_redis — see mg_redis.h.
 *
 * A connection (mg_rconn_t) wraps one hiredis async context. Who frees what:
 * hiredis frees the context, after calling every pending reply callback with
 * a NULL reply, when the connection fails or when we call redisAsyncFree;
 * it calls on_disconnect only for a context that had connected. We free the
 * mg_rconn_t: right after our own redisAsyncFree returns (close_now, only
 * ever called from our timer, never from inside a hiredis callback), in
 * on_disconnect when hiredis gave up the connection by itself, or, for a
 * connect that failed (no on_disconnect follows), from the timer once hiredis
 * is done. A reply callback that wants the connection closed (AUTH failed)
 * schedules the close on the timer. So no hiredis callback ever runs with
 * our memory gone, and we never free a context hiredis is still inside.
 *
 * Every command sent on a connection, ours (AUTH, SELECT) or the callers',
 * has its send time in the connection's ring, in wire order. The ring's head
 * is the oldest reply awaited: one timer per connection says when it is
 * overdue (timeouts.command), and then the connection is closed and all its
 * pending commands fail with redis_timeout: replies come in order, so
 * nothing behind an overdue reply can arrive earlier.
 */
#include "mg_redis.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event_struct.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <netdb.h>
#include <stdio.h>
#include <strings.h>
#include <sys/socket.h>

#include "mg_log.h"

#define BACKOFF_MIN_MS 10
#define BACKOFF_MAX_MS 500

/* ---- pools and connections ---- */

enum { C_CONNECTING, C_READY, C_CLOSING };
enum { T_NONE, T_CLOSE, T_FREE };

typedef struct mg_rslot {
    mg_rcall_t *call;
    int index;
    const mg_redis_script_t *script;
    int resent;
    int argc;                      /* a script command's copied arguments */
    char **argv;
    size_t *argvlen;
} mg_rslot_t;

typedef struct mg_rconn {
    redisAsyncContext *ac;
    mg_redis_t *r;
    mg_rstats_t *stats;
    int slot;                      /* in r->conns, or -1 once detached */
    int state;
    int gauge;                     /* G_* it is counted in, or -1 */
    uint64_t *ring;                /* send times (µs) of the replies awaited, oldest at head */
    unsigned head, count, cap;
    uint32_t connect_ms, command_ms;
    struct event timer;
    int later;                     /* T_*: what the timer does when it fires at once */
    int in_cb;                     /* inside one of our hiredis callbacks */
    int by_us;                     /* we are calling redisAsyncFree: on_disconnect must not free us */
    int gone;                      /* hiredis freed the context */
    int auth_failed;
    int setup_left;                /* AUTH, SELECT, PING replies still due: a real reply ends the setup */
    int proven;                    /* Redis answered on it (a reply that is not a connection failure) */
    char auth_msg[160];
    const mg_error_t *fail_kind;   /* why it was closed, for the NULL replies */
    char fail_msg[160];
    struct mg_rconn *next_all, *prev_all;
    int orphan;                    /* its pool stopped; it finishes its replies */
} mg_rconn_t;

struct mg_redis {
    mg_redis_conf_t conf;
    struct event_base *base;
    mg_rstats_t *stats;
    int refs;                      /* atomic */
    int stopped;
    mg_rconn_t *conns[MG_REDIS_MAX_POOL];
    uint64_t retry_at_ms;          /* no probe before this (after a failure) */
    uint32_t backoff_ms;           /* 0: healthy; else failing, the current wait between probes */
    mg_rconn_t *probe;             /* failing: the connection checking whether Redis answers again */
    const mg_error_t *last_kind;
    char last_msg[160];
};

/*
 * Every connection of the process (any worker's), so that a loop that ends
 * frees what is left on it: a stopped pool's connections still finishing
 * their replies ("orphans"), one whose free was scheduled on its timer.
 */
static pthread_mutex_t all_lock = PTHREAD_MUTEX_INITIALIZER;
static mg_rconn_t *all_conns;

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

void mg_redis_conf_free(mg_redis_conf_t *c)
{
    free(c->name);
    free(c->where);
    free(c->address);
    free(c->host);
    free(c->unix_path);
    free(c->username);
    if (c->password)
        memset(c->password, 0, strlen(c->password));
    free(c->password);
    free(c->prefix);
    memset(c, 0, sizeof(*c));
}

int mg_redis_parse_address(mg_redis_conf_t *c, const char *address, char *err, size_t errlen)
{
    if (strncmp(address, "unix:", 5) == 0) {
        if (address[5] != '/') {
            snprintf(err, errlen, "a unix socket address is \"unix:/absolute/path\", got '%s'", address);
            return MG_ERROR;
        }
        c->unix_path = strdup(address + 5);
        return MG_OK;
    }
    char host[256];
    const char *colon = strrchr(address, ':');
    char *end;
    long port = colon ? strtol(colon + 1, &end, 10) : 0;
    if (!colon || colon == address || colon - address >= (long)sizeof(host) || *end || port < 1 || port > 65535) {
        snprintf(err, errlen, "address must be \"host:port\" or \"unix:/path\", got '%s'", address);
        return MG_ERROR;
    }
    memcpy(host, address, (size_t)(colon - address));
    host[colon - address] = '\0';
    size_t hl = strlen(host);
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    /*
     * A host name is resolved here, when the config loads (on the main
     * thread): hiredis would resolve it with a blocking getaddrinfo on the
     * worker's loop at every connect. A moved Redis needs a reload.
     */
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, errlen, "cannot resolve redis host '%s': %s", host, gai_strerror(rc));
        return MG_ERROR;
    }
    char ip[INET6_ADDRSTRLEN];
    void *a = res->ai_family == AF_INET6 ? (void *)&((struct sockaddr_in6 *)res->ai_addr)->sin6_addr
                                         : (void *)&((struct sockaddr_in *)res->ai_addr)->sin_addr;
    inet_ntop(res->ai_family, a, ip, sizeof(ip));
    freeaddrinfo(res);
    c->host = strdup(ip);
    c->port = (int)port;
    return MG_OK;
}

mg_redis_t *mg_redis_new(const mg_redis_conf_t *conf, struct event_base *base)
{
    mg_redis_t *r = mg_calloc(1, sizeof(*r));
    r->conf = *conf;
    r->conf.name = strdup(conf->name);
    r->conf.where = dup_or_null(conf->where);
    r->conf.address = strdup(conf->address);
    r->conf.host = dup_or_null(conf->host);
    r->conf.unix_path = dup_or_null(conf->unix_path);
    r->conf.username = dup_or_null(conf->username);
    r->conf.password = dup_or_null(conf->password);
    r->conf.prefix = strdup(conf->prefix ? conf->prefix : "moongate:");
    if (r->conf.size < 1)
        r->conf.size = 1;
    if (r->conf.size > MG_REDIS_MAX_POOL)
        r->conf.size = MG_REDIS_MAX_POOL;
    r->base = base;
    r->refs = 1;
    r->stats = mg__rstats_get(conf);
    mg__rstats_pools(r->stats, 1, 0);
    return r;
}

const mg_redis_conf_t *mg_redis_conf(const mg_redis_t *r) { return &r->conf; }
mg_rstats_t *mg__redis_stats(const mg_redis_t *r) { return r->stats; }
struct event_base *mg_redis_base(const mg_redis_t *r) { return r->base; }

void mg_redis_ref(mg_redis_t *r) { __atomic_add_fetch(&r->refs, 1, __ATOMIC_RELAXED); }

void mg_redis_unref(mg_redis_t *r)
{
    if (!r || __atomic_sub_fetch(&r->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    mg_redis_conf_free(&r->conf);
    free(r);
}

/* Keeps the connection counted in the gauge its state says. */
static void set_gauge(mg_rconn_t *rc)
{
    int g = rc->slot < 0 && !rc->orphan     ? -1
          : rc->state == C_CONNECTING       ? MG__RGAUGE_CONNECTING
          : rc->state == C_CLOSING          ? -1
          : rc->count > 0                   ? MG__RGAUGE_ACTIVE
                                            : MG__RGAUGE_IDLE;
    if (g == rc->gauge)
        return;
    mg__rstats_gauge(rc->stats, rc->gauge, g);
    rc->gauge = g;
}

static void ring_push(mg_rconn_t *rc, uint64_t t)
{
    if (rc->count == rc->cap) {
        unsigned cap = rc->cap ? rc->cap * 2 : 16;
        uint64_t *ring = mg_alloc(cap * sizeof(*ring));
        for (unsigned i = 0; i < rc->count; i++)
            ring[i] = rc->ring[(rc->head + i) & (rc->cap - 1)];
        free(rc->ring);
        rc->ring = ring;
        rc->cap = cap;
        rc->head = 0;
    }
    rc->ring[(rc->head + rc->count) & (rc->cap - 1)] = t;
    rc->count++;
}

static uint64_t ring_pop(mg_rconn_t *rc)
{
    if (rc->count == 0)
        return 0;
    uint64_t t = rc->ring[rc->head];
    rc->head = (rc->head + 1) & (rc->cap - 1);
    rc->count--;
    return t;
}

static void arm(mg_rconn_t *rc, uint64_t ms)
{
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
    evtimer_add(&rc->timer, &tv);
}

/* The timer runs `what` in this loop pass (never inside the hiredis callback that asked). */
static void later(mg_rconn_t *rc, int what)
{
    if (what > rc->later)
        rc->later = what;
    event_del(&rc->timer);
    event_active(&rc->timer, EV_TIMEOUT, 0);
}

/* The command timer follows the oldest reply awaited. */
static void arm_command_timer(mg_rconn_t *rc)
{
    if (rc->later || rc->state != C_READY)
        return;
    if (rc->count == 0) {
        event_del(&rc->timer);
        return;
    }
    if (evtimer_pending(&rc->timer, NULL))
        return; /* it re-checks the head when it fires */
    uint64_t age_ms = (mg_now_us() - rc->ring[rc->head]) / 1000;
    arm(rc, age_ms >= rc->command_ms ? 0 : rc->command_ms - age_ms);
}

static void detach(mg_rconn_t *rc)
{
    if (rc->r->probe == rc)
        rc->r->probe = NULL;
    if (rc->slot >= 0 && rc->r->conns[rc->slot] == rc)
        rc->r->conns[rc->slot] = NULL;
    rc->slot = -1;
    set_gauge(rc);
}

static void all_link(mg_rconn_t *rc)
{
    pthread_mutex_lock(&all_lock);
    rc->prev_all = NULL;
    rc->next_all = all_conns;
    if (all_conns)
        all_conns->prev_all = rc;
    all_conns = rc;
    pthread_mutex_unlock(&all_lock);
}

static void all_unlink(mg_rconn_t *rc)
{
    pthread_mutex_lock(&all_lock);
    if (rc->prev_all)
        rc->prev_all->next_all = rc->next_all;
    else
        all_conns = rc->next_all;
    if (rc->next_all)
        rc->next_all->prev_all = rc->prev_all;
    pthread_mutex_unlock(&all_lock);
}

static void rc_free(mg_rconn_t *rc)
{
    rc->state = C_CLOSING;
    detach(rc);
    rc->orphan = 0;
    set_gauge(rc);
    all_unlink(rc);
    event_del(&rc->timer);
    mg_redis_t *r = rc->r;
    free(rc->ring);
    free(rc);
    mg_redis_unref(r);
}

/*
 * A connection failed in a way that says Redis is not answering (a failed
 * connect, a timeout, a refused AUTH or SELECT, a protocol error, a
 * connection lost before any reply): the pool is failing. Until a probe gets
 * a real reply, commands fail at once unless a connection proved itself (see
 * pick); the wait between probes doubles while they keep failing. Only a
 * real reply ends it (pool_ok): a completed TCP handshake proves nothing (the
 * kernel completes it for a frozen redis-server).
 */
static void backoff(mg_redis_t *r, const mg_error_t *kind, const char *msg)
{
    if (!r->backoff_ms && !r->stopped)
        mg__rstats_pools(r->stats, 0, 1);
    mg__rstats_failure(r->stats, kind, msg);
    r->backoff_ms = r->backoff_ms ? r->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (r->backoff_ms > BACKOFF_MAX_MS)
        r->backoff_ms = BACKOFF_MAX_MS;
    r->retry_at_ms = mg_now_ms() + r->backoff_ms;
    r->last_kind = kind;
    snprintf(r->last_msg, sizeof(r->last_msg), "%s", msg);
}

/* Redis answered on rc: the pool is healthy again (logged once the name's last failing pool recovers). */
static void proven(mg_rconn_t *rc)
{
    rc->proven = 1;
    mg_redis_t *r = rc->r;
    if (r->probe == rc)
        r->probe = NULL; /* it did its job: from now on it is one of the pool's connections */
    if (!r->backoff_ms || rc->orphan)
        return;
    r->backoff_ms = 0;
    r->retry_at_ms = 0;
    if (!r->stopped)
        mg__rstats_pools(r->stats, 0, -1);
}

/* Closes the connection now: its pending commands fail with kind. Only from our timer or outside callbacks. */
static void close_now(mg_rconn_t *rc, const mg_error_t *kind, const char *msg)
{
    if (rc->in_cb) {
        if (!rc->fail_kind) {
            rc->fail_kind = kind;
            snprintf(rc->fail_msg, sizeof(rc->fail_msg), "%s", msg);
        }
        later(rc, T_CLOSE);
        return;
    }
    if (!rc->fail_kind) {
        rc->fail_kind = kind;
        snprintf(rc->fail_msg, sizeof(rc->fail_msg), "%s", msg);
    }
    int connecting = rc->state == C_CONNECTING;
    rc->state = C_CLOSING;
    detach(rc);
    /* a Redis that does not answer in time will likely not answer the next command either */
    if ((connecting || rc->fail_kind == MG_E(REDIS_TIMEOUT)) && rc->r && !rc->orphan)
        backoff(rc->r, rc->fail_kind, rc->fail_msg);
    if (!rc->gone) {
        rc->by_us = 1;
        redisAsyncFree(rc->ac); /* NULL replies for what was pending: they fail with fail_kind */
        rc->gone = 1;
    }
    rc_free(rc);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    mg_rconn_t *rc = arg;
    int task = rc->later;
    rc->later = T_NONE;
    if (task == T_FREE) {
        rc_free(rc);
        return;
    }
    if (task == T_CLOSE) {
        if (rc->fail_kind)
            close_now(rc, rc->fail_kind, "");
        else
            close_now(rc, MG_E(REDIS_RESET), "closed");
        return;
    }
    char msg[96];
    if (rc->state == C_CONNECTING) {
        snprintf(msg, sizeof(msg), "connect timed out after %u ms (timeouts.connect)", rc->connect_ms);
        mg__rstats_log(rc->stats, MG_E(REDIS_TIMEOUT), msg);
        close_now(rc, MG_E(REDIS_TIMEOUT), msg);
        return;
    }
    if (rc->count == 0)
        return;
    uint64_t age_ms = (mg_now_us() - rc->ring[rc->head]) / 1000;
    if (age_ms < rc->command_ms) {
        arm(rc, rc->command_ms - age_ms);
        return;
    }
    snprintf(msg, sizeof(msg), "no reply within %u ms (timeouts.command)", rc->command_ms);
    mg__rstats_log(rc->stats, MG_E(REDIS_TIMEOUT), msg);
    close_now(rc, MG_E(REDIS_TIMEOUT), msg);
}

/* What a NULL reply (the connection went away) means for the commands pending on rc. */
static const mg_error_t *lost_kind(mg_rconn_t *rc, const char **msg)
{
    if (rc->fail_kind) {
        *msg = rc->fail_msg;
        return rc->fail_kind;
    }
    redisAsyncContext *ac = rc->ac;
    snprintf(rc->fail_msg, sizeof(rc->fail_msg), "connection lost: %s",
             ac->err == REDIS_ERR_EOF ? "closed by Redis" : ac->errstr[0] ? ac->errstr : "reset");
    rc->fail_kind = rc->auth_failed ? MG_E(REDIS_AUTH) : MG_E(REDIS_RESET);
    if (rc->auth_failed)
        snprintf(rc->fail_msg, sizeof(rc->fail_msg), "%s", rc->auth_msg);
    *msg = rc->fail_msg;
    return rc->fail_kind;
}

static void free_slot_copies(mg_rcall_t *c)
{
    for (int i = 0; i < c->n; i++)
        free(c->slots[i].argv); /* one block: the pointers, the lengths, the bytes */
}

static void deliver(mg_rslot_t *s, const redisReply *reply, const mg_error_t *kind, const char *msg)
{
    mg_rcall_t *c = s->call;
    c->left--;
    if (!c->abandoned && c->on_reply)
        c->on_reply(c, s->index, reply, kind, msg);
    if (c->left > 0)
        return;
    if (!c->abandoned && c->on_done)
        c->on_done(c);
    free_slot_copies(c);
    free(c);
}

/* Sends a script command again as EVAL src numkeys ... (after NOSCRIPT). */
static int resend_eval(mg_rconn_t *rc, mg_rslot_t *s);
static void on_hiredis_reply(redisAsyncContext *ac, void *reply, void *priv);

static int resend_eval(mg_rconn_t *rc, mg_rslot_t *s)
{
    const char *argv[s->argc + 2];
    size_t lens[s->argc + 2];
    argv[0] = "EVAL";
    lens[0] = 4;
    argv[1] = s->script->src;
    lens[1] = s->script->len;
    for (int k = 0; k < s->argc; k++) {
        argv[k + 2] = s->argv[k];
        lens[k + 2] = s->argvlen[k];
    }
    if (redisAsyncCommandArgv(rc->ac, on_hiredis_reply, s, s->argc + 2, argv, lens) != REDIS_OK)
        return MG_ERROR;
    ring_push(rc, mg_now_us());
    s->resent = 1;
    return MG_OK;
}

static void on_hiredis_reply(redisAsyncContext *ac, void *reply_, void *priv)
{
    mg_rconn_t *rc = ac->data;
    mg_rslot_t *s = priv;
    redisReply *reply = reply_;
    uint64_t sent = ring_pop(rc);
    rc->in_cb++;
    if (!reply) {
        const char *msg;
        const mg_error_t *kind = lost_kind(rc, &msg);
        if (rc->state != C_CLOSING) {
            /* hiredis is failing the connection: nothing more may be sent on it */
            rc->state = C_CLOSING;
            detach(rc);
        }
        mg__rstats_error(rc->stats, kind, 1);
        deliver(s, NULL, kind, msg);
    } else {
        if (sent)
            mg__rstats_reply(rc->stats, mg_now_us() - sent);
        if (!rc->auth_failed && !(reply->type == REDIS_REPLY_ERROR && mg_redis_reply_kind(reply) == MG_E(REDIS_AUTH)))
            proven(rc);
        if (reply->type == REDIS_REPLY_ERROR && s->script && !s->resent && !s->call->abandoned &&
            strncmp(reply->str, "NOSCRIPT", 8) == 0 && rc->state == C_READY && resend_eval(rc, s) == MG_OK) {
            /* Redis does not have the script (restarted, SCRIPT FLUSH): EVAL loads it; the reply comes later */
        } else if (reply->type == REDIS_REPLY_ERROR && rc->auth_failed) {
            mg__rstats_error(rc->stats, MG_E(REDIS_AUTH), 1);
            deliver(s, NULL, MG_E(REDIS_AUTH), rc->auth_msg);
        } else {
            if (reply->type == REDIS_REPLY_ERROR)
                mg__rstats_error(rc->stats, mg_redis_reply_kind(reply), 1);
            deliver(s, reply, NULL, NULL);
        }
    }
    rc->in_cb--;
    if (rc->state != C_CLOSING) {
        set_gauge(rc);
        arm_command_timer(rc);
    }
}

/* AUTH and SELECT, sent first on every connection, and a probe's PING. */
static void on_setup(redisAsyncContext *ac, void *reply_, void *priv)
{
    mg_rconn_t *rc = ac->data;
    redisReply *reply = reply_;
    ring_pop(rc);
    if (!reply || rc->state == C_CLOSING)
        return;
    const char *what = priv;
    if (reply->type == REDIS_REPLY_ERROR) {
        rc->auth_failed = 1;
        snprintf(rc->auth_msg, sizeof(rc->auth_msg), "%s failed: %s", what, reply->str);
        const mg_error_t *kind = strcmp(what, "AUTH") == 0 ? MG_E(REDIS_AUTH) : mg_redis_reply_kind(reply);
        mg__rstats_log(rc->stats, kind, rc->auth_msg);
        if (rc->r)
            backoff(rc->r, kind, rc->auth_msg);
        rc->fail_kind = kind;
        snprintf(rc->fail_msg, sizeof(rc->fail_msg), "%s", rc->auth_msg);
        rc->state = C_CLOSING; /* nothing more is sent on it */
        detach(rc);
        later(rc, T_CLOSE);
        return;
    }
    if (--rc->setup_left == 0)
        proven(rc);
    set_gauge(rc);
    arm_command_timer(rc);
}

static void on_connect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    mg_rconn_t *rc = ac->data;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this (NULL replies first) and calls nothing else */
        rc->gone = 1;
        if (!rc->fail_kind) {
            rc->fail_kind = MG_E(REDIS_REFUSED);
            snprintf(rc->fail_msg, sizeof(rc->fail_msg), "connect: %s", ac->errstr);
        }
        rc->state = C_CLOSING;
        detach(rc);
        if (rc->r)
            backoff(rc->r, rc->fail_kind, rc->fail_msg);
        mg__rstats_log(rc->stats, rc->fail_kind, rc->fail_msg);
        later(rc, T_FREE);
        return;
    }
    if (rc->state != C_CONNECTING)
        return;
    rc->state = C_READY; /* connected is not answering: only a reply ends a failure (proven) */
    event_del(&rc->timer);
    /* what was queued while connecting leaves now: its replies are timed from here */
    uint64_t now = mg_now_us();
    for (unsigned i = 0; i < rc->count; i++)
        rc->ring[(rc->head + i) & (rc->cap - 1)] = now;
    set_gauge(rc);
    arm_command_timer(rc);
}

static void on_disconnect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    mg_rconn_t *rc = ac->data;
    rc->gone = 1;
    if (rc->by_us)
        return; /* close_now frees it when redisAsyncFree returns */
    if (status != REDIS_OK) {
        char msg[160];
        snprintf(msg, sizeof(msg), "%s%s",
                 rc->fail_kind                 ? rc->fail_msg
                 : ac->err == REDIS_ERR_EOF     ? "connection closed by Redis"
                 : ac->err == REDIS_ERR_PROTOCOL ? "not a Redis reply: "
                                                : "",
                 rc->fail_kind || ac->err == REDIS_ERR_EOF ? "" : ac->errstr);
        const mg_error_t *kind = rc->fail_kind ? rc->fail_kind : MG_E(REDIS_RESET);
        mg__rstats_log(rc->stats, kind, msg);
        /*
         * Not talking to a Redis (a protocol error: the address is an HTTP
         * server, say), or closed before it ever answered: the next
         * connection would likely fare the same, so back off. A connection
         * that worked and is closed (a Redis restart) reconnects at once.
         */
        if ((ac->err == REDIS_ERR_PROTOCOL || !rc->proven) && !rc->orphan && !rc->r->stopped)
            backoff(rc->r, kind, msg);
    }
    rc->state = C_CLOSING;
    detach(rc);
    if (rc->in_cb)
        later(rc, T_FREE);
    else
        rc_free(rc); /* hiredis touches nothing of ours after this callback */
}

/* Opens a connection in slot i (a probe: PING after the setup). Returns it, or NULL with the failure noted (backoff). */
static mg_rconn_t *conn_open(mg_redis_t *r, int i, int probe)
{
    const mg_redis_conf_t *c = &r->conf;
    redisAsyncContext *ac = c->unix_path ? redisAsyncConnectUnix(c->unix_path) : redisAsyncConnect(c->host, c->port);
    mg_assert(ac != NULL); /* NULL only when out of memory */
    if (ac->err) {
        char msg[160];
        snprintf(msg, sizeof(msg), "connect: %s", ac->errstr);
        redisAsyncFree(ac);
        backoff(r, MG_E(REDIS_REFUSED), msg);
        mg__rstats_log(r->stats, MG_E(REDIS_REFUSED), msg);
        return NULL;
    }
    mg_rconn_t *rc = mg_calloc(1, sizeof(*rc));
    rc->ac = ac;
    rc->r = r;
    mg_redis_ref(r);
    rc->stats = r->stats;
    rc->slot = i;
    rc->gauge = -1;
    rc->state = C_CONNECTING;
    rc->connect_ms = c->connect_ms;
    rc->command_ms = c->command_ms;
    ac->data = rc;
    evtimer_assign(&rc->timer, r->base, on_timer, rc);
    redisLibeventAttach(ac, r->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    r->conns[i] = rc;
    all_link(rc);
    set_gauge(rc);
    arm(rc, c->connect_ms);
    if (c->password) {
        const char *argv[3] = { "AUTH", c->username ? c->username : c->password, c->password };
        size_t lens[3] = { 4, strlen(argv[1]), strlen(c->password) };
        redisAsyncCommandArgv(ac, on_setup, (void *)"AUTH", c->username ? 3 : 2, argv, lens);
        ring_push(rc, mg_now_us());
        rc->setup_left++;
    }
    if (c->db) {
        char db[16];
        int n = snprintf(db, sizeof(db), "%d", c->db);
        const char *argv[2] = { "SELECT", db };
        size_t lens[2] = { 6, (size_t)n };
        redisAsyncCommandArgv(ac, on_setup, (void *)"SELECT", 2, argv, lens);
        ring_push(rc, mg_now_us());
        rc->setup_left++;
    }
    if (probe) {
        r->probe = rc;
        if (!rc->setup_left) { /* AUTH or SELECT would do: any reply says whether Redis answers */
            redisAsyncCommand(ac, on_setup, (void *)"PING", "PING");
            ring_push(rc, mg_now_us());
            rc->setup_left++;
        }
    }
    return rc;
}

/*
 * The connection a call goes on. Healthy: a ready one with nothing pending,
 * a new one, or the least busy (commands queue behind a connect). Failing
 * (backoff_ms): only a connection on which Redis answered, else the command
 * fails at once; once the back-off is over, a probe connection (the pool's
 * own PING, or AUTH/SELECT) checks whether Redis answers again, and no
 * request waits on it. So a hung Redis costs one command timeout, and then
 * none per request.
 */
static mg_rconn_t *pick(mg_redis_t *r, const mg_error_t **kind, char *msg)
{
    mg_rconn_t *best = NULL;
    int empty = -1, failing = r->backoff_ms != 0;
    for (int i = 0; i < r->conf.size; i++) {
        mg_rconn_t *rc = r->conns[i];
        if (!rc) {
            if (empty < 0)
                empty = i;
            continue;
        }
        if (rc->state == C_CLOSING || (failing && (rc->state != C_READY || !rc->proven)))
            continue;
        if (!best || rc->count < best->count)
            best = rc;
    }
    uint64_t now = mg_now_ms();
    if (failing) {
        if (empty >= 0 && !r->probe && now >= r->retry_at_ms)
            conn_open(r, empty, 1);
        if (best)
            return best;
        *kind = r->last_kind ? r->last_kind : MG_E(REDIS_REFUSED);
        if (r->probe)
            snprintf(msg, 160, "not connected (%.100s); checking whether Redis answers again", r->last_msg);
        else
            snprintf(msg, 160, "not connected (%.100s); next attempt in %llu ms", r->last_msg,
                     (unsigned long long)(r->retry_at_ms > now ? r->retry_at_ms - now : 0));
        return NULL;
    }
    if (best && (best->count == 0 || empty < 0))
        return best;
    if (empty >= 0) {
        mg_rconn_t *rc = conn_open(r, empty, 0);
        if (rc)
            return rc;
        return pick(r, kind, msg); /* it failed at once: the pool is failing now */
    }
    if (!best) { /* not reached: a closing connection leaves its slot (detach) */
        *kind = MG_E(REDIS_RESET);
        snprintf(msg, 160, "every connection is closing");
    }
    return best;
}

/* A script command's arguments, kept for an EVAL after NOSCRIPT: one allocation. */
static void copy_args(mg_rslot_t *s, const mg_rcmd_t *cmd)
{
    size_t bytes = 0, n = (size_t)cmd->argc;
    for (size_t k = 0; k < n; k++)
        bytes += cmd->argvlen[k];
    char *block = mg_alloc(n * (sizeof(char *) + sizeof(size_t)) + bytes + 1);
    s->argc = cmd->argc;
    s->argv = (char **)block;
    s->argvlen = (size_t *)(block + n * sizeof(char *));
    char *p = block + n * (sizeof(char *) + sizeof(size_t));
    for (size_t k = 0; k < n; k++) {
        memcpy(p, cmd->argv[k], cmd->argvlen[k]);
        s->argv[k] = p;
        s->argvlen[k] = cmd->argvlen[k];
        p += cmd->argvlen[k];
    }
}

mg_rcall_t *mg_redis_send(mg_redis_t *r, const mg_rcmd_t *cmds, int n, mg_rcall_reply_cb on_reply,
                          mg_rcall_done_cb on_done, void *data, const mg_error_t **kind, char *msg)
{
    if (r->stopped) {
        *kind = MG_E(REDIS_RESET);
        snprintf(msg, 160, "the pool was closed (the config was reloaded)");
        return NULL;
    }
    mg_rconn_t *rc = pick(r, kind, msg);
    if (!rc) {
        mg__rstats_error(r->stats, (*kind), (uint64_t)n);
        return NULL;
    }
    mg_rcall_t *c = mg_calloc(1, sizeof(*c) + (size_t)n * sizeof(mg_rslot_t));
    c->slots = (mg_rslot_t *)(c + 1);
    c->data = data;
    c->n = c->left = n;
    c->on_reply = on_reply;
    c->on_done = on_done;
    c->conn = rc;
    uint64_t now = mg_now_us();
    for (int i = 0; i < n; i++) {
        const mg_rcmd_t *cmd = &cmds[i];
        mg_rslot_t *s = &c->slots[i];
        s->call = c;
        s->index = i;
        s->script = cmd->script;
        int rv;
        if (cmd->script) {
            copy_args(s, cmd);
            const char *argv[cmd->argc + 2];
            size_t lens[cmd->argc + 2];
            argv[0] = "EVALSHA";
            lens[0] = 7;
            argv[1] = cmd->script->sha;
            lens[1] = 40;
            for (int k = 0; k < cmd->argc; k++) {
                argv[k + 2] = cmd->argv[k];
                lens[k + 2] = cmd->argvlen[k];
            }
            rv = redisAsyncCommandArgv(rc->ac, on_hiredis_reply, s, cmd->argc + 2, argv, lens);
        } else {
            rv = redisAsyncCommandArgv(rc->ac, on_hiredis_reply, s, cmd->argc, cmd->argv, cmd->argvlen);
        }
        /* hiredis refuses only a context that is disconnecting, and then it refuses the first command */
        mg_assert(rv == REDIS_OK || i == 0);
        if (rv != REDIS_OK) {
            rc->state = C_CLOSING; /* hiredis is closing it: on_disconnect frees it */
            detach(rc);
            free_slot_copies(c);
            free(c);
            *kind = MG_E(REDIS_RESET);
            snprintf(msg, 160, "the connection is closing");
            return NULL;
        }
        ring_push(rc, now);
    }
    set_gauge(rc);
    arm_command_timer(rc);
    return c;
}

void mg_rcall_abandon(mg_rcall_t *c) { c->abandoned = 1; }

void mg_redis_stop(mg_redis_t *r)
{
    if (r->stopped)
        return;
    r->stopped = 1;
    mg__rstats_pools(r->stats, -1, r->backoff_ms ? -1 : 0);
    for (int i = 0; i < r->conf.size; i++) {
        mg_rconn_t *rc = r->conns[i];
        if (!rc)
            continue;
        if (rc->count == 0 || rc->state == C_CLOSING) {
            if (rc->state != C_CLOSING)
                close_now(rc, MG_E(REDIS_RESET), "the pool was closed");
            else
                detach(rc);
            continue;
        }
        /* replies pending (a lease release, say): hiredis finishes them, then disconnects (on_disconnect frees) */
        detach(rc);
        rc->orphan = 1;
        set_gauge(rc);
        redisAsyncDisconnect(rc->ac);
    }
}

void mg_redis_loop_end(struct event_base *base)
{
    for (;;) {
        pthread_mutex_lock(&all_lock);
        mg_rconn_t *rc = all_conns;
        while (rc && rc->r->base != base)
            rc = rc->next_all;
        pthread_mutex_unlock(&all_lock);
        if (!rc)
            return;
        rc->in_cb = 0; /* no callback of ours is running: the loop is over */
        if (rc->gone)
            rc_free(rc); /* its free was scheduled on the timer */
        else
            close_now(rc, MG_E(REDIS_RESET), "the worker stopped");
    }
}

/* ---- scripts ---- */

mg_redis_script_t *mg_redis_script_new(const char *src, size_t len)
{
    mg_redis_script_t *s = mg_calloc(1, sizeof(*s));
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)src, len, md);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
        snprintf(s->sha + 2 * i, 3, "%02x", md[i]);
    s->src = mg_strndup(src, len);
    s->len = len;
    return s;
}

void mg_redis_script_free(mg_redis_script_t *s)
{
    if (!s)
        return;
    free(s->src);
    free(s);
}

/* ---- what a shared connection cannot carry ---- */

const char *mg_redis_refuse(const char *argv0, size_t len, int in_pipeline)
{
    static const struct { const char *name; const char *why; } refused[] = {
        { "select", "the pool's db is redis { db = N }" },
        { "auth", "the pool authenticates with redis { username, password }" },
        { "hello", "the connection speaks RESP2" },
        { "reset", "it would reset a connection other requests share" },
        { "quit", "it would close a connection other requests share" },
        { "client", "it changes a connection other requests share" },
        { "subscribe", "pub/sub needs a connection of its own" },
        { "psubscribe", "pub/sub needs a connection of its own" },
        { "ssubscribe", "pub/sub needs a connection of its own" },
        { "unsubscribe", "pub/sub needs a connection of its own" },
        { "punsubscribe", "pub/sub needs a connection of its own" },
        { "sunsubscribe", "pub/sub needs a connection of its own" },
        { "monitor", "it takes over the connection" },
        { "sync", "it takes over the connection" },
        { "psync", "it takes over the connection" },
        { "blpop", "a blocking command would stall every request sharing the connection" },
        { "brpop", "a blocking command would stall every request sharing the connection" },
        { "brpoplpush", "a blocking command would stall every request sharing the connection" },
        { "blmove", "a blocking command would stall every request sharing the connection" },
        { "blmpop", "a blocking command would stall every request sharing the connection" },
        { "bzpopmin", "a blocking command would stall every request sharing the connection" },
        { "bzpopmax", "a blocking command would stall every request sharing the connection" },
        { "bzmpop", "a blocking command would stall every request sharing the connection" },
        { "wait", "a blocking command would stall every request sharing the connection" },
        { "waitaof", "a blocking command would stall every request sharing the connection" },
        { "watch", "WATCH needs a connection of its own: use a script (gw.redis.script)" },
        { "unwatch", "WATCH needs a connection of its own: use a script (gw.redis.script)" },
    };
    char name[16];
    if (len == 0 || len >= sizeof(name))
        return len == 0 ? "an empty command name" : NULL;
    mg_lowercase(name, argv0, len);
    name[len] = '\0';
    for (size_t i = 0; i < mg_countof(refused); i++)
        if (strcmp(name, refused[i].name) == 0)
            return refused[i].why;
    if (!in_pipeline && (strcmp(name, "multi") == 0 || strcmp(name, "exec") == 0 || strcmp(name, "discard") == 0))
        return "a transaction must be sent whole: MULTI ... EXEC in one red:pipeline{}";
    return NULL;
}

const mg_error_t *mg_redis_reply_kind(const redisReply *reply)
{
    if (reply->str && (strncmp(reply->str, "NOAUTH", 6) == 0 || strncmp(reply->str, "WRONGPASS", 9) == 0))
        return MG_E(REDIS_AUTH);
    return MG_E(REDIS_ERROR);
}
