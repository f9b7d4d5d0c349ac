/*
 * mg_ledger — what an owner holds, written down when it is taken, so the
 * owner's end gives it back whichever way it ends. The owner is a task (its
 * children, the permits it took), a request (what its phases took), a VM
 * (its timers, its background tasks) or an arena (mg_pool cleanups).
 * Models: nginx's pool cleanups (ngx_pool_cleanup_add), h2o's dispose
 * callbacks.
 *
 * An entry lives inside the resource's own state (no allocation, no limit):
 *
 *     struct hold { mg_ledger_entry_t entry; mg_sema_t *sema; int64_t weight; };
 *     mg_ledger_add(owner_ledger, &h->entry, release_hold);   -- when taken
 *     mg_ledger_remove(&h->entry);                            -- released early
 *     mg_ledger_run(owner_ledger);                            -- the owner ends
 *
 * Rules:
 * - mg_ledger_run calls every entry's function once, newest first (LIFO: a
 *   resource taken after another, and maybe depending on it, goes back
 *   first). Each entry is unlinked before its function runs, so the function
 *   may free the memory the entry lives in, add entries (they run too) or
 *   remove others. The ledger is empty and usable again afterwards.
 * - An explicit release calls mg_ledger_remove first: a removed entry's
 *   function is never called. Removing an entry that is not registered does
 *   nothing.
 * - An entry is in at most one ledger at a time.
 * - A zeroed mg_ledger_t is an empty ledger; a zeroed entry is unregistered.
 * - Single-threaded: a ledger belongs to one event loop.
 */
#ifndef MG_LEDGER_H
#define MG_LEDGER_H

#include "mg_core.h"

typedef struct mg_ledger_entry mg_ledger_entry_t;

/* Gives the resource back. e is already unlinked; recover the resource with mg_ledger_of. */
typedef void (*mg_ledger_fn)(mg_ledger_entry_t *e);

struct mg_ledger_entry {
    mg_ledger_fn fn;
    mg_ledger_entry_t *next;
    mg_ledger_entry_t **pprev;          /* NULL: not registered */
};

typedef struct mg_ledger {
    mg_ledger_entry_t *head;            /* newest first */
} mg_ledger_t;

/* The struct of type `type` whose member `member` is the entry e. */
#define mg_ledger_of(e, type, member) ((type *)(void *)((char *)(e) - offsetof(type, member)))

/* Registers e (unregistered) in l; fn gives the resource back when l runs. */
void mg_ledger_add(mg_ledger_t *l, mg_ledger_entry_t *e, mg_ledger_fn fn);
/* Disarms e: its function will not be called. No-op when e is not registered. */
void mg_ledger_remove(mg_ledger_entry_t *e);
/* Is e registered in a ledger? */
static inline int mg_ledger_armed(const mg_ledger_entry_t *e) { return e->pprev != NULL; }
/* Runs every entry, newest first, until l is empty (entries added meanwhile included). */
void mg_ledger_run(mg_ledger_t *l);
/* Is l empty? */
static inline int mg_ledger_empty(const mg_ledger_t *l) { return l->head == NULL; }
/*
 * Walks the entries of l registered with fn, newest first: pass after = NULL
 * for the first; NULL at the end. (For merging: a task holding permits of one
 * semaphore keeps one entry for them.) l must not change during the walk.
 */
mg_ledger_entry_t *mg_ledger_next(const mg_ledger_t *l, const mg_ledger_entry_t *after, mg_ledger_fn fn);
/* Number of entries (figures, tests). */
size_t mg_ledger_count(const mg_ledger_t *l);

#endif
