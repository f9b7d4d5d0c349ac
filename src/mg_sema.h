/*
 * mg_sema — weighted counting semaphores shared by all workers of the
 * process, with a FIFO wait queue, timeouts and figures.
 *
 * A waiter belongs to one worker (its event loop). When a permit frees up,
 * the releasing thread grants it to the first waiter that fits, under the
 * semaphore's lock, and wakes only that waiter's worker through its mailbox
 * (an eventfd): no thundering herd, and FIFO order across workers.
 *
 * Ownership: whoever acquired releases, on every path. Lua's permits are
 * entries in the owning task's (or request's) ledger (mg_sema_lua.c,
 * mg_ledger.h); the proxy's permit is the exchange's (mg_proxy.c).
 *
 * Namespaces: names starting with "upstream:" or "route:" belong to the
 * config (max_concurrency); gw.semaphore refuses them, so Lua code can
 * neither resize nor take a config limit. Every other name is the plugins'.
 */
#ifndef MG_SEMA_H
#define MG_SEMA_H

#include <event2/event.h>
#include <event2/event_struct.h>
#include <pthread.h>

#include "mg_core.h"

typedef struct mg_sema mg_sema_t;
typedef struct mg_sema_waiter mg_sema_waiter_t;
typedef struct mg_mailbox mg_mailbox_t;

enum { MG_SEMA_W_IDLE, MG_SEMA_W_QUEUED, MG_SEMA_W_GRANTED };

struct mg_sema_waiter {
    mg_sema_t *sema;
    int64_t weight;
    int state;                          /* MG_SEMA_W_* (under the sema's lock) */
    uint64_t since_ms;
    mg_mailbox_t *mailbox;              /* the waiting worker's */
    void (*on_grant)(mg_sema_waiter_t *w); /* runs on the waiting worker's loop */
    void *data;
    struct mg_sema_waiter *next, *prev; /* sema queue, then mailbox list */
};

/* One per event loop that waits for permits. */
struct mg_mailbox {
    pthread_mutex_t lock;
    mg_sema_waiter_t *granted;          /* waiters granted a permit, to be woken here, in grant order */
    mg_sema_waiter_t *granted_tail;
    int fd;                             /* eventfd */
    struct event ev;
};

typedef struct mg_sema_stats {
    int64_t capacity, in_use, queued;
    uint64_t acquired, rejected, timed_out;
    uint64_t longest_wait_ms;
} mg_sema_stats_t;

/*
 * The semaphore `name`, created with `capacity` or given this new capacity,
 * with a reference for the caller (mg_sema_put drops it). A raised capacity
 * grants the freed room to queued waiters at once (FIFO, through their
 * mailboxes); a lowered one applies to new acquisitions while the permits
 * in use above it drain. A semaphore with no
 * references, nothing in use and nobody queued is freed: per-key semaphores
 * (one per client address, say) do not accumulate. The config's names
 * (mg_sema_config_name) are kept for the process's life.
 */
mg_sema_t *mg_sema_get(const char *name, int64_t capacity);
/* Another reference to s (e.g. for as long as permits of it are held); mg_sema_put drops it. */
void mg_sema_ref(mg_sema_t *s);
void mg_sema_put(mg_sema_t *s);
/* Is name in the config's namespace ("upstream:...", "route:...")? */
int mg_sema_config_name(const char *name);
const char *mg_sema_name(const mg_sema_t *s);

/* Takes weight permits now if they are free and nobody queues before us. */
int mg_sema_try(mg_sema_t *s, int64_t weight);
/*
 * Takes weight permits now, or queues w (FIFO) unless max_queue waiters are
 * already queued. Returns MG_OK (acquired now), MG_AGAIN (queued: on_grant
 * follows on w->mailbox's loop, or call mg_sema_cancel) or MG_DECLINED
 * (queue full: counted as rejected).
 */
int mg_sema_acquire(mg_sema_t *s, int64_t weight, mg_sema_waiter_t *w, int64_t max_queue);
/* A queued waiter gives up (timeout, client gone). Counts a timeout if timed_out. */
void mg_sema_cancel(mg_sema_waiter_t *w, int timed_out);
void mg_sema_release(mg_sema_t *s, int64_t weight);
void mg_sema_count_rejected(mg_sema_t *s);
void mg_sema_stats(mg_sema_t *s, mg_sema_stats_t *out);
/* Calls fn for every semaphore (for status listings). */
void mg_sema_each(void (*fn)(mg_sema_t *s, void *arg), void *arg);

int mg_mailbox_init(mg_mailbox_t *m, struct event_base *base);
void mg_mailbox_free(mg_mailbox_t *m);

#endif
