/*
 * mg_upstream — a named upstream: its targets, one keep-alive pool per
 * target, the balancer, and target health (passive ejection, active checks).
 *
 * One mg_upstream_t exists per upstream per worker (it lives in the worker's
 * generation), so pools, balancer state and health are per worker and need
 * no locks. One upstream's pool, timeouts and health never touch another's.
 *
 * Connections (mg_upconn_t) are leased: mg_upstream_lease hands out an idle
 * pooled connection or a new, connecting one; the lessee gives it back with
 * mg_upconn_release (reusable: back to the idle pool) or mg_upconn_close.
 *
 * A TLS upstream (up->tls) wraps each connection in an SSL after connect:
 * the lessee drives mg_upconn_handshake, then does all I/O through
 * mg_upconn_readv / mg_upconn_send, which work for both kinds. Pooled TLS
 * connections are reused like plain ones, and a new connection to a target
 * resumes the target's last TLS session.
 */
#ifndef MG_UPSTREAM_H
#define MG_UPSTREAM_H

#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "mg_core.h"
#include "mg_ltimer.h"
#include "mg_sema.h"
#include "mg_tls.h"

typedef struct mg_upstream mg_upstream_t;
typedef struct mg_target mg_target_t;
typedef struct mg_upconn mg_upconn_t;

enum { MG_BALANCE_RR, MG_BALANCE_LEAST_CONN, MG_BALANCE_HASH };
enum { MG_HOST_PASS, MG_HOST_TARGET, MG_HOST_FIXED };
/* on_redis_error: what a limit kept in Redis does when Redis cannot answer */
enum { MG_REDIS_LOCAL, MG_REDIS_ALLOW, MG_REDIS_DENY };
/* What the upstream speaks: HTTP/1.1, HTTP/2 with prior knowledge (h2c), HTTP/2 over TLS (ALPN h2). */
enum { MG_UP_HTTP1, MG_UP_H2C, MG_UP_H2 };

/* What woke a connection's lessee (see mg_upconn_t.handler). */
enum { MG_UC_READ = 1, MG_UC_WRITE = 2, MG_UC_SEND_TIMEOUT = 3, MG_UC_TIMER = 4 };

struct mg_upconn {
    int fd;
    mg_target_t *target;
    /*
     * The events stay registered for the connection's whole life (a pooled
     * connection keeps its read interest: no epoll_ctl per request); they
     * dispatch to the lessee's handler, or to the pool while idle.
     */
    struct event rev, wev;
    mg_ltimer_t timer;                /* the phase timeouts (mg_upconn_timer), kept lazily */
    void (*handler)(mg_upconn_t *uc, int what);
    void *owner;
    char *in;                         /* response bytes [in_off, in_len); NULL while pooled (mg_upconn_input) */
    size_t in_off, in_len, in_cap;
    struct evbuffer *out;
    int requests;                     /* requests sent on this connection */
    int reused;                       /* leased from the idle pool (it may have been closed meanwhile) */
    int connected;
    int reading;                      /* rev is registered (mg_upconn_read) */
    SSL *ssl;                         /* a TLS upstream's connection, or NULL */
    int secure;                       /* the TLS handshake is done */
    int tls_broken;                   /* a TLS error: no close_notify on close */
    int tls_data;                     /* application data was read (the handshake was accepted) */
    int tls_rejected;                 /* the upstream refused the handshake after it seemed done (TLS 1.3) */
    mg_upconn_t *next_idle;
};

struct mg_target {
    mg_upstream_t *up;
    char *text;                       /* "127.0.0.1:9001" as configured */
    char *authority;                  /* "host:port" for host_header = "target" */
    struct sockaddr_storage ss;
    socklen_t len;                    /* 0 until a host name is resolved */
    /* host names: resolved by the worker's evdns, again when the TTL runs out */
    char *hostname;                   /* NULL for IP literals */
    char *host;                       /* the host without port or brackets (host name or IP) */
    SSL_SESSION *tls_session;         /* the last session the target issued (resumption) */
    int port;
    struct evdns_request *dns_req;
    struct evdns_getaddrinfo_request *gai_req;
    struct event *dns_timer;
    /* health (per worker) */
    int fails;                        /* consecutive failures */
    uint64_t ejected_until;           /* monotonic ms; 0 = not ejected */
    int trial;                        /* a trial request is in flight after an ejection */
    int active_down;                  /* the last active check failed */
    /* load */
    int inflight;
    uint64_t requests, failures;
    mg_upconn_t *idle;                /* LIFO: the most recently used connection is the warmest */
    void *h2;                         /* HTTP/2 upstreams: the target's sessions (mg_h2up) */
    int nidle;
};

struct mg_upstream {
    char *name;
    mg_target_t *targets;
    int ntargets;
    int balance;
    int hash_kind;                    /* 'i' ip, 'h' header, 'p' param */
    char *hash_name;
    int max_idle;
    uint32_t idle_timeout_ms;
    int max_requests;
    uint32_t ping_ms;                 /* HTTP/2: an idle session is PINGed this often */
    uint32_t connect_ms, send_ms, read_ms;
    int retries;
    int retry_non_idempotent;         /* POST, PATCH, ... may be resent after they were written */
    int passive_failures;
    uint32_t eject_ms;
    char *active_path;
    uint32_t active_interval_ms, active_timeout_ms;
    int host_mode;
    char *host_value;
    int protocol;                     /* MG_UP_* */
    SSL_CTX *tls;                     /* TLS to the targets (this upstream's reference), or NULL */
    char *tls_name;                   /* SNI and the name to verify; NULL: each target's host */
    /* concurrency limit (shared by all workers): max_concurrency, on_busy */
    mg_sema_t *sema;                  /* NULL: unlimited */
    int64_t queue_max;                /* 0: reject when full */
    uint32_t queue_timeout_ms;
    int busy_status;                  /* when the queue wait times out (reject: 429) */
    /* scope = "cluster": the permits are leases in Redis (mg_csema); sema is then the local fallback */
    struct mg_csema *csema;           /* NULL: the limit is this process's */
    struct mg_redis *redis;           /* the generation's pool (borrowed) */
    int on_redis_error;               /* MG_REDIS_ALLOW | DENY | LOCAL */
    mg_mailbox_t *mailbox;            /* the worker's, for permit grants */
    /* runtime */
    struct event_base *base;
    unsigned rr;
    struct event *active_timer;
    void *checks;                     /* active checks in flight (freed with the upstream) */
    struct evdns_base *dns;
};

/*
 * Parses the targets: IP literals get their address now; host names are
 * only checked for syntax (resolution needs the worker's loop). Returns
 * MG_ERROR with a message for a malformed target.
 */
int mg_upstream_resolve(mg_upstream_t *up, char *err, size_t errlen);
/*
 * Starts runtime state on a worker loop: host-name resolution through `dns`
 * (non-blocking; refreshed when the DNS TTL runs out) and active health checks.
 */
void mg_upstream_start(mg_upstream_t *up, struct event_base *base, struct evdns_base *dns);
/* Closes pooled connections and frees everything. */
void mg_upstream_free(mg_upstream_t *up);

/* mg_upstream_pick flags */
#define MG_PICK_OTHER 0x1u            /* never a target in `avoid`, even when only those are usable */

/* t's bit in a set of targets (the first 64 of an upstream; 0 beyond: such sets cannot name it). */
static inline uint64_t mg_target_bit(const mg_target_t *t);

/*
 * Picks a target for a request: usable ones by the balancer; those in the
 * set `avoid` (mg_target_bit; 0: none) are skipped when another is usable
 * (retries go elsewhere), and never returned with MG_PICK_OTHER. `hash` is
 * the request's hash key (NULL/0 unless balance = hash). When no target is
 * usable, falls back to the passively ejected target whose ejection ends
 * first (nginx's single-server rule: trying beats refusing), except with
 * MG_PICK_OTHER. Returns NULL when nothing can be tried: every target is
 * down by its active health check or not resolved (or, with MG_PICK_OTHER,
 * no target outside `avoid` is usable).
 * Picking an ejected target whose time is up makes this request its one
 * trial: report the outcome (mg_target_report) or mg_target_unpick it.
 */
mg_target_t *mg_upstream_pick(mg_upstream_t *up, const char *hash, size_t hash_len, uint64_t avoid,
                              unsigned flags);

/* May t take a request now (resolved, not ejected or down)? */
int mg_target_usable(const mg_target_t *t);

/*
 * Records the outcome of a request on t (passive health; success resets).
 * Consecutive failures eject t for health.passive.eject, except when t is
 * the upstream's last usable target: that one is never ejected (it keeps
 * being tried, so its errors, not 503s, reach the clients, and it is back
 * the moment it recovers).
 */
void mg_target_report(mg_target_t *t, int ok);
/* A request picked for t ended without an outcome (cancelled): a trial it carried is free again. */
void mg_target_unpick(mg_target_t *t);

/* mg_upstream_lease flags */
#define MG_LEASE_FRESH 0x1u           /* a new connection, never a pooled one */
#define MG_LEASE_CHECK 0x2u           /* look (one MSG_PEEK) whether a pooled one was closed meanwhile */

/*
 * Leases a connection to t for handler/owner: the most recently pooled one,
 * or a new non-blocking connect (check `connected`; a MG_UC_WRITE tells when
 * it completes). Returns NULL with errno set when connect fails at once.
 * A pooled connection may have been closed by the upstream a moment ago (its
 * close not yet seen by the loop): a lessee must treat EOF before any
 * response byte on a `reused` one as stale. MG_LEASE_CHECK narrows that
 * window for requests that could not be resent (pooled connections found
 * closed are discarded); MG_LEASE_FRESH closes it.
 */
mg_upconn_t *mg_upstream_lease(mg_target_t *t, void (*handler)(mg_upconn_t *, int), void *owner,
                               unsigned flags);
/* Read interest on/off (back-pressure), send wait, and the phase timer. */
void mg_upconn_read(mg_upconn_t *uc, int on);
void mg_upconn_wait_write(mg_upconn_t *uc, uint32_t timeout_ms);
void mg_upconn_timer(mg_upconn_t *uc, uint32_t ms); /* 0: stop */
int mg_upconn_timer_set(const mg_upconn_t *uc);
/*
 * The connection leaves its target for good (an upgraded connection that
 * became a tunnel): it will never be pooled, uc->target is NULL from now on
 * (it may outlive the generation its target belongs to), its events call
 * handler(uc, what) with uc->owner = owner, and its input buffer is freed
 * (move out what it holds first). Only mg_upconn_readv / send / read /
 * wait_write / timer / close may be used on it afterwards.
 */
void mg_upconn_detach(mg_upconn_t *uc, void (*handler)(mg_upconn_t *, int), void *owner);
/* Returns a connection to its target's idle pool, or closes it when the pool is full. */
void mg_upconn_release(mg_upconn_t *uc);
void mg_upconn_close(mg_upconn_t *uc);

/*
 * TLS: continues the handshake of a connected connection. Returns 1 when it
 * is done, 0 while waiting (read or write interest is arranged), or one of
 * the failures below (logged with the reason).
 */
enum { MG_UC_TLS_FAILED = -1, MG_UC_TLS_UNTRUSTED = -2 };
/* Connected, and for TLS past the handshake: a request may go out. */
static inline int mg_upconn_ready(const mg_upconn_t *uc) { return uc->connected && (!uc->ssl || uc->secure); }
int mg_upconn_handshake(mg_upconn_t *uc);
/*
 * I/O for plain and TLS connections alike, with recv/send conventions: -1
 * with errno EAGAIN to wait. readv fills iov in order (TLS: the first only).
 * send writes some of uc->out and returns the bytes written.
 */
ssize_t mg_upconn_readv(mg_upconn_t *uc, struct iovec *iov, int n);
int mg_upconn_send(mg_upconn_t *uc);
/*
 * The lessee's input buffer: a pooled connection holds none (released with
 * nothing unread, it gives it back), so 10,000 idle upstream connections cost
 * their structs; this allocates it again before a read.
 */
void mg_upconn_input(mg_upconn_t *uc);

/* Counts for status and tests. */
int mg_upstream_idle_count(const mg_upstream_t *up);

static inline uint64_t mg_target_bit(const mg_target_t *t)
{
    ptrdiff_t i = t - t->up->targets;
    return i < 64 ? (uint64_t)1 << i : 0;
}

#endif
