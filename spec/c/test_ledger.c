/* mg_ledger: LIFO order, disarming, entries that change the ledger while it runs; mg_pool cleanups. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "mg_ledger.h"
#include "mg_pool.h"

typedef struct res {
    mg_ledger_entry_t entry;
    int id;
    int *log;                /* ids in the order they were given back */
    int *nlog;
    mg_ledger_t *ledger;     /* for entries that touch the ledger while it runs */
    struct res *other;
} res_t;

static void give_back(mg_ledger_entry_t *e)
{
    res_t *r = mg_ledger_of(e, res_t, entry);
    assert_false(mg_ledger_armed(e)); /* unlinked before its function runs */
    r->log[(*r->nlog)++] = r->id;
}

static void lifo_and_reusable(void **state)
{
    int log[8], n = 0;
    mg_ledger_t l = { 0 };
    res_t r[4];
    for (int i = 0; i < 4; i++) {
        r[i] = (res_t){ .id = i, .log = log, .nlog = &n };
        mg_ledger_add(&l, &r[i].entry, give_back);
    }
    assert_int_equal(mg_ledger_count(&l), 4);
    mg_ledger_run(&l);
    assert_int_equal(n, 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(log[i], 3 - i); /* newest first */
    assert_true(mg_ledger_empty(&l));
    /* once run, the ledger is empty and takes new entries */
    mg_ledger_add(&l, &r[0].entry, give_back);
    mg_ledger_run(&l);
    assert_int_equal(n, 5);
    mg_ledger_run(&l); /* nothing left: nothing runs twice */
    assert_int_equal(n, 5);
}

static void removed_entries_never_run(void **state)
{
    int log[8], n = 0;
    mg_ledger_t l = { 0 };
    res_t r[3];
    for (int i = 0; i < 3; i++) {
        r[i] = (res_t){ .id = i, .log = log, .nlog = &n };
        mg_ledger_add(&l, &r[i].entry, give_back);
    }
    mg_ledger_remove(&r[1].entry); /* the middle one, released explicitly */
    assert_false(mg_ledger_armed(&r[1].entry));
    mg_ledger_remove(&r[1].entry); /* twice: harmless */
    mg_ledger_remove(&r[2].entry); /* the head */
    assert_int_equal(mg_ledger_count(&l), 1);
    mg_ledger_run(&l);
    assert_int_equal(n, 1);
    assert_int_equal(log[0], 0);
    /* a removed entry may be registered again (in this or another ledger) */
    mg_ledger_t other = { 0 };
    mg_ledger_add(&other, &r[1].entry, give_back);
    mg_ledger_run(&other);
    assert_int_equal(n, 2);
    assert_int_equal(log[1], 1);
}

/* A cleanup that gives back another resource early (it disarms that one's entry). */
static void remove_other(mg_ledger_entry_t *e)
{
    res_t *r = mg_ledger_of(e, res_t, entry);
    r->log[(*r->nlog)++] = r->id;
    mg_ledger_remove(&r->other->entry);
}

/* A cleanup that takes something more while its owner ends (e.g. a child's end registering). */
static void add_more(mg_ledger_entry_t *e)
{
    res_t *r = mg_ledger_of(e, res_t, entry);
    r->log[(*r->nlog)++] = r->id;
    mg_ledger_add(r->ledger, &r->other->entry, give_back);
}

static void changes_while_running(void **state)
{
    int log[8], n = 0;
    mg_ledger_t l = { 0 };
    res_t a = { .id = 1, .log = log, .nlog = &n };
    res_t b = { .id = 2, .log = log, .nlog = &n };
    res_t c = { .id = 3, .log = log, .nlog = &n, .other = &a };
    mg_ledger_add(&l, &a.entry, give_back);
    mg_ledger_add(&l, &b.entry, give_back);
    mg_ledger_add(&l, &c.entry, remove_other); /* runs first and disarms a */
    mg_ledger_run(&l);
    assert_int_equal(n, 2);
    assert_int_equal(log[0], 3);
    assert_int_equal(log[1], 2);

    n = 0;
    res_t late = { .id = 9, .log = log, .nlog = &n };
    res_t d = { .id = 4, .log = log, .nlog = &n, .ledger = &l, .other = &late };
    mg_ledger_add(&l, &d.entry, add_more);
    mg_ledger_run(&l); /* what is added while it runs runs too */
    assert_int_equal(n, 2);
    assert_int_equal(log[0], 4);
    assert_int_equal(log[1], 9);
    assert_true(mg_ledger_empty(&l));
}

static void walk_by_kind(void **state)
{
    int log[8], n = 0;
    mg_ledger_t l = { 0 };
    res_t r[4];
    for (int i = 0; i < 4; i++) {
        r[i] = (res_t){ .id = i, .log = log, .nlog = &n };
        mg_ledger_add(&l, &r[i].entry, i % 2 ? give_back : remove_other);
    }
    int seen = 0;
    for (mg_ledger_entry_t *e = mg_ledger_next(&l, NULL, give_back); e; e = mg_ledger_next(&l, e, give_back)) {
        res_t *x = mg_ledger_of(e, res_t, entry);
        assert_int_equal(x->id % 2, 1);
        seen++;
    }
    assert_int_equal(seen, 2);
    assert_null(mg_ledger_next(&l, NULL, add_more));
    for (int i = 0; i < 4; i++)
        mg_ledger_remove(&r[i].entry);
    assert_true(mg_ledger_empty(&l));
}

/* ---- mg_pool cleanups ---- */

typedef struct probe {
    int order[16];
    int n;
    char *seen;              /* a cleanup reads pool memory: it must still be there */
} probe_t;

typedef struct arg {
    probe_t *p;
    int id;
    char *text;              /* allocated from the pool */
} arg_t;

static void note(void *data)
{
    arg_t *a = data;
    a->p->order[a->p->n++] = a->id;
    if (a->text)
        a->p->seen = strdup(a->text);
}

static void pool_cleanups_lifo_before_free(void **state)
{
    mg_pool_t pool;
    mg_pool_init(&pool);
    probe_t p = { .n = 0 };
    arg_t *args = mg_pool_alloc(&pool, sizeof(arg_t) * 10);
    mg_pool_cleanup_t *handles[10];
    for (int i = 0; i < 10; i++) {
        args[i] = (arg_t){ .p = &p, .id = i };
        handles[i] = mg_pool_cleanup_add(&pool, note, &args[i]);
        mg_pool_alloc(&pool, 3000); /* spill into overflow blocks: cleanups live there too */
    }
    args[0].text = mg_pool_strndup(&pool, "still here", 10);
    mg_pool_cleanup_remove(handles[4]); /* given back early */
    mg_pool_reset(&pool);
    assert_int_equal(p.n, 9);
    int want = 9;
    for (int i = 0; i < p.n; i++, want--) {
        if (want == 4)
            want--;
        assert_int_equal(p.order[i], want);
    }
    assert_string_equal(p.seen, "still here");
    free(p.seen);
    assert_null(pool.blocks);
    assert_true(mg_ledger_empty(&pool.cleanups));
    /* reusable: a new cleanup runs at the next reset, the old ones never again */
    arg_t again = { .p = &p, .id = 42 };
    mg_pool_cleanup_add(&pool, note, &again);
    mg_pool_reset(&pool);
    assert_int_equal(p.n, 10);
    assert_int_equal(p.order[9], 42);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(lifo_and_reusable),
        cmocka_unit_test(removed_entries_never_run),
        cmocka_unit_test(changes_while_running),
        cmocka_unit_test(walk_by_kind),
        cmocka_unit_test(pool_cleanups_lifo_before_free),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
