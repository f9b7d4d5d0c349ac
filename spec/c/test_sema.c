/* mg_sema: FIFO grants, weights, cancel in every state, capacity changes (a raise wakes the queue), threads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>
#include <pthread.h>

#include "mg_sema.h"

static int order[16], norder;

static void on_grant(mg_sema_waiter_t *w) { order[norder++] = (int)(intptr_t)w->data; }

static void run_loop(struct event_base *base) { event_base_loop(base, EVLOOP_NONBLOCK); }

static void fifo_and_weights(void **state)
{
    struct event_base *base = event_base_new();
    mg_mailbox_t mb;
    mg_mailbox_init(&mb, base);
    mg_sema_t *s = mg_sema_get("t-fifo", 3);
    assert_true(mg_sema_try(s, 2));
    mg_sema_waiter_t w[3];
    memset(w, 0, sizeof(w));
    int64_t weights[3] = { 2, 1, 1 };
    for (int i = 0; i < 3; i++) {
        w[i].mailbox = &mb;
        w[i].on_grant = on_grant;
        w[i].data = (void *)(intptr_t)i;
        assert_int_equal(mg_sema_acquire(s, weights[i], &w[i], 10), MG_AGAIN);
    }
    /* 1 permit is free, but the head wants 2: nobody overtakes it */
    assert_false(mg_sema_try(s, 1));
    norder = 0;
    mg_sema_release(s, 2); /* 3 free: waiter 0 (2) and waiter 1 (1) fit, in order */
    run_loop(base);
    assert_int_equal(norder, 2);
    assert_int_equal(order[0], 0);
    assert_int_equal(order[1], 1);
    mg_sema_stats_t st;
    mg_sema_stats(s, &st);
    assert_int_equal(st.in_use, 3);
    assert_int_equal(st.queued, 1);
    mg_sema_release(s, 1);
    run_loop(base);
    assert_int_equal(norder, 3);
    assert_int_equal(order[2], 2);
    mg_sema_release(s, 2);
    mg_sema_release(s, 1);
    mg_sema_stats(s, &st);
    assert_int_equal(st.in_use, 0);
    assert_int_equal(st.acquired, 4);
    mg_sema_put(s);
    mg_mailbox_free(&mb);
    event_base_free(base);
}

static void cancel_in_every_state(void **state)
{
    struct event_base *base = event_base_new();
    mg_mailbox_t mb;
    mg_mailbox_init(&mb, base);
    mg_sema_t *s = mg_sema_get("t-cancel", 1);
    assert_true(mg_sema_try(s, 1));
    mg_sema_waiter_t a = { .mailbox = &mb, .on_grant = on_grant }, b = a;
    assert_int_equal(mg_sema_acquire(s, 1, &a, 10), MG_AGAIN);
    assert_int_equal(mg_sema_acquire(s, 1, &b, 10), MG_AGAIN);
    mg_sema_cancel(&a, 1); /* queued: leaves the queue, counted as timed out */
    mg_sema_release(s, 1); /* granted to b, not yet woken */
    mg_sema_cancel(&b, 0); /* granted but never woken: the permit goes back */
    norder = 0;
    run_loop(base);
    assert_int_equal(norder, 0); /* nobody is woken for a cancelled grant */
    mg_sema_stats_t st;
    mg_sema_stats(s, &st);
    assert_int_equal(st.in_use, 0);
    assert_int_equal(st.queued, 0);
    assert_int_equal(st.timed_out, 1);
    /* the queue bound */
    assert_true(mg_sema_try(s, 1));
    mg_sema_waiter_t c = a, d = a;
    assert_int_equal(mg_sema_acquire(s, 1, &c, 1), MG_AGAIN);
    assert_int_equal(mg_sema_acquire(s, 1, &d, 1), MG_DECLINED);
    mg_sema_cancel(&c, 0);
    mg_sema_release(s, 1);
    mg_sema_put(s);
    mg_mailbox_free(&mb);
    event_base_free(base);
}

static void count_named(mg_sema_t *s, void *arg)
{
    if (strcmp(mg_sema_name(s), "t-cap") == 0)
        (*(int *)arg)++;
}

static void capacity_change_and_refs(void **state)
{
    mg_sema_t *s = mg_sema_get("t-cap", 2);
    assert_true(mg_sema_try(s, 2));
    mg_sema_ref(s); /* a holder of permits keeps the semaphore */
    mg_sema_t *again = mg_sema_get("t-cap", 1); /* lowered: the 2 in use drain naturally */
    assert_ptr_equal(again, s);
    assert_false(mg_sema_try(s, 1));
    mg_sema_put(again);
    mg_sema_put(s); /* every handle gone: the holder's reference keeps it */
    int n = 0;
    mg_sema_each(count_named, &n);
    assert_int_equal(n, 1);
    mg_sema_release(s, 2);
    assert_true(mg_sema_try(s, 1));
    assert_false(mg_sema_try(s, 1));
    mg_sema_release(s, 1);
    mg_sema_put(s); /* the holder's: nothing in use, nobody queued, no references: freed */
    n = 0;
    mg_sema_each(count_named, &n);
    assert_int_equal(n, 0);
}

static void config_namespace(void **state)
{
    assert_true(mg_sema_config_name("upstream:app"));
    assert_true(mg_sema_config_name("route:/reports"));
    assert_false(mg_sema_config_name("limit-conn:/r:1.2.3.4"));
    assert_false(mg_sema_config_name("upstreams"));
    assert_false(mg_sema_config_name("lua:upstream:app"));
    /* the config's semaphores stay for the process's life, unused or not */
    mg_sema_t *s = mg_sema_get("upstream:t-ns", 3);
    mg_sema_put(s);
    assert_ptr_equal(mg_sema_get("upstream:t-ns", 3), s);
    mg_sema_put(s);
}

static void raised_capacity_grants_queued(void **state)
{
    struct event_base *base = event_base_new();
    mg_mailbox_t mb;
    mg_mailbox_init(&mb, base);
    mg_sema_t *s = mg_sema_get("t-raise", 1);
    assert_true(mg_sema_try(s, 1));
    mg_sema_waiter_t w[3];
    memset(w, 0, sizeof(w));
    for (int i = 0; i < 3; i++) {
        w[i].mailbox = &mb;
        w[i].on_grant = on_grant;
        w[i].data = (void *)(intptr_t)i;
        assert_int_equal(mg_sema_acquire(s, 1, &w[i], 10), MG_AGAIN);
    }
    norder = 0;
    /* a reload raises the capacity while the first permit is still held: two waiters fit now */
    mg_sema_t *again = mg_sema_get("t-raise", 3);
    run_loop(base);
    assert_int_equal(norder, 2);
    assert_int_equal(order[0], 0);
    assert_int_equal(order[1], 1);
    mg_sema_stats_t st;
    mg_sema_stats(s, &st);
    assert_int_equal(st.in_use, 3);
    assert_int_equal(st.queued, 1);
    /* a lowered capacity grants nothing and takes nothing back */
    mg_sema_t *lower = mg_sema_get("t-raise", 1);
    mg_sema_release(s, 1);
    run_loop(base);
    assert_int_equal(norder, 2);
    mg_sema_release(s, 1);
    mg_sema_release(s, 1); /* in use 0 < 1: the last waiter gets its permit */
    run_loop(base);
    assert_int_equal(norder, 3);
    assert_int_equal(order[2], 2);
    mg_sema_release(s, 1);
    mg_sema_put(lower);
    mg_sema_put(again);
    mg_sema_put(s);
    mg_mailbox_free(&mb);
    event_base_free(base);
}

static mg_sema_t *shared;
static int in_use_now, max_seen;
static pthread_mutex_t count_lock = PTHREAD_MUTEX_INITIALIZER;

static void *hammer(void *arg)
{
    for (int i = 0; i < 20000; i++) {
        if (!mg_sema_try(shared, 1))
            continue;
        pthread_mutex_lock(&count_lock);
        if (++in_use_now > max_seen)
            max_seen = in_use_now;
        pthread_mutex_unlock(&count_lock);
        pthread_mutex_lock(&count_lock);
        in_use_now--;
        pthread_mutex_unlock(&count_lock);
        mg_sema_release(shared, 1);
    }
    return NULL;
}

static void threads_never_exceed_capacity(void **state)
{
    shared = mg_sema_get("t-threads", 3);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, hammer, NULL);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    assert_true(max_seen <= 3);
    mg_sema_stats_t st;
    mg_sema_stats(shared, &st);
    assert_int_equal(st.in_use, 0);
    mg_sema_put(shared);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fifo_and_weights), cmocka_unit_test(cancel_in_every_state),
        cmocka_unit_test(capacity_change_and_refs), cmocka_unit_test(config_namespace), cmocka_unit_test(raised_capacity_grants_queued),
        cmocka_unit_test(threads_never_exceed_capacity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
