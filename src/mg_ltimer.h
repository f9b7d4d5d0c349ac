/*
 * mg_ltimer — a timeout that moves on every request and rarely gets earlier
 * (a connection's header / keep-alive timeouts, an upstream connection's read
 * and idle timeouts), kept lazily, as HAProxy and nginx keep theirs: setting
 * it records the due time and touches libevent only when it must fire
 * earlier than the event already armed; clearing it records "none". When the
 * event fires, mg_ltimer_fired says whether the due time really passed, and
 * re-arms for what is left when it has not. A connection answering a request
 * a second with a 10 s header and a 75 s keep-alive timeout re-arms its event
 * every 10 s instead of adding and deleting it three times a request.
 *
 * The owner initialises ev with evtimer_assign (its callback calls
 * mg_ltimer_fired first) and calls mg_ltimer_stop before freeing. Setting,
 * clearing and asking happen on the loop's thread.
 */
#ifndef MG_LTIMER_H
#define MG_LTIMER_H

#include <event2/event.h>
#include <event2/event_struct.h>

#include "mg_core.h"

typedef struct mg_ltimer {
    struct event ev;
    uint64_t due_ms;   /* when the timeout is (monotonic ms); 0: none */
    uint64_t armed_ms; /* when ev fires; 0: not pending */
} mg_ltimer_t;

static inline void mg_ltimer_arm_(mg_ltimer_t *t, uint64_t in_ms)
{
    struct timeval tv = { (time_t)(in_ms / 1000), (suseconds_t)(in_ms % 1000) * 1000 };
    evtimer_add(&t->ev, &tv);
}

/* The timeout is ms from now (replacing any other). */
static inline void mg_ltimer_set(mg_ltimer_t *t, uint32_t ms)
{
    uint64_t now = mg_now_ms();
    t->due_ms = now + ms;
    if (t->armed_ms && t->armed_ms <= t->due_ms)
        return; /* the armed event comes first: it re-arms then */
    mg_ltimer_arm_(t, ms);
    t->armed_ms = t->due_ms;
}

/* No timeout (the armed event, if any, wakes once and does nothing). */
static inline void mg_ltimer_clear(mg_ltimer_t *t) { t->due_ms = 0; }

/* Is a timeout set? */
static inline int mg_ltimer_is_set(const mg_ltimer_t *t) { return t->due_ms != 0; }

/*
 * In ev's callback: 1 when the timeout passed (it is cleared: act on it), 0
 * when the event came before it (re-armed for the rest) or none is set.
 */
static inline int mg_ltimer_fired(mg_ltimer_t *t)
{
    t->armed_ms = 0;
    if (!t->due_ms)
        return 0;
    uint64_t now = mg_now_ms();
    if (now < t->due_ms) {
        mg_ltimer_arm_(t, t->due_ms - now);
        t->armed_ms = t->due_ms;
        return 0;
    }
    t->due_ms = 0;
    return 1;
}

/* Before the owner is freed: nothing stays registered. */
static inline void mg_ltimer_stop(mg_ltimer_t *t)
{
    event_del(&t->ev);
    t->due_ms = t->armed_ms = 0;
}

#endif
