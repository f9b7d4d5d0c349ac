/*
 * mg_ledger — see mg_ledger.h.
 *
 * A doubly linked list through `pprev` (the address of the pointer that
 * points at the entry): removal is O(1) and needs no reference to the ledger,
 * so a resource can disarm its entry knowing only itself.
 */
#include "mg_ledger.h"

void mg_ledger_add(mg_ledger_t *l, mg_ledger_entry_t *e, mg_ledger_fn fn)
{
    mg_assert(e->pprev == NULL); /* in one ledger at a time */
    e->fn = fn;
    e->next = l->head;
    if (l->head)
        l->head->pprev = &e->next;
    e->pprev = &l->head;
    l->head = e;
}

void mg_ledger_remove(mg_ledger_entry_t *e)
{
    if (!e->pprev)
        return;
    *e->pprev = e->next;
    if (e->next)
        e->next->pprev = e->pprev;
    e->next = NULL;
    e->pprev = NULL;
}

void mg_ledger_run(mg_ledger_t *l)
{
    /* one at a time from the head: a function may add or remove entries */
    while (l->head) {
        mg_ledger_entry_t *e = l->head;
        mg_ledger_remove(e);
        e->fn(e);
    }
}

mg_ledger_entry_t *mg_ledger_next(const mg_ledger_t *l, const mg_ledger_entry_t *after, mg_ledger_fn fn)
{
    mg_ledger_entry_t *e = after ? after->next : l->head;
    while (e && e->fn != fn)
        e = e->next;
    return e;
}

size_t mg_ledger_count(const mg_ledger_t *l)
{
    size_t n = 0;
    for (const mg_ledger_entry_t *e = l->head; e; e = e->next)
        n++;
    return n;
}
