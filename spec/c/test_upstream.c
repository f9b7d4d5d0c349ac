/* mg_upstream: balancers, passive ejection (never the last usable target), the trial request, without I/O. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>
#include <unistd.h>

#include "mg_upstream.h"

static mg_upstream_t *make(int n, int balance)
{
    mg_upstream_t *up = calloc(1, sizeof(*up));
    up->name = strdup("test");
    up->ntargets = n;
    up->balance = balance;
    up->targets = calloc((size_t)n, sizeof(mg_target_t));
    for (int i = 0; i < n; i++) {
        up->targets[i].up = up;
        up->targets[i].text = strdup("t");
        up->targets[i].authority = strdup("t");
        up->targets[i].len = 16; /* as if resolved: an address-less target is never picked */
    }
    up->passive_failures = 2;
    up->eject_ms = 50;
    return up;
}

static void drop(mg_upstream_t *up)
{
    mg_upstream_free(up);
    free(up);
}

static int index_of(mg_upstream_t *up, mg_target_t *t) { return t ? (int)(t - up->targets) : -1; }

static void round_robin(void **state)
{
    mg_upstream_t *up = make(3, MG_BALANCE_RR);
    int seen[3] = { 0 };
    for (int i = 0; i < 9; i++)
        seen[index_of(up, mg_upstream_pick(up, NULL, 0, 0, 0))]++;
    assert_int_equal(seen[0], 3);
    assert_int_equal(seen[1], 3);
    assert_int_equal(seen[2], 3);
    drop(up);
}

static void avoid_previous_target(void **state)
{
    mg_upstream_t *up = make(2, MG_BALANCE_RR);
    for (int i = 0; i < 4; i++) {
        mg_target_t *t = mg_upstream_pick(up, NULL, 0, 1, 0);
        assert_int_equal(index_of(up, t), 1);
    }
    mg_upstream_t *one = make(1, MG_BALANCE_RR);
    /* with a single target, a retry goes to it again */
    assert_int_equal(index_of(one, mg_upstream_pick(one, NULL, 0, 1, 0)), 0);
    drop(up);
    drop(one);
}

static void least_conn(void **state)
{
    mg_upstream_t *up = make(3, MG_BALANCE_LEAST_CONN);
    up->targets[0].inflight = 5;
    up->targets[1].inflight = 1;
    up->targets[2].inflight = 3;
    for (int i = 0; i < 5; i++)
        assert_int_equal(index_of(up, mg_upstream_pick(up, NULL, 0, 0, 0)), 1);
    drop(up);
}

static void hash_is_stable(void **state)
{
    mg_upstream_t *up = make(4, MG_BALANCE_HASH);
    mg_target_t *a = mg_upstream_pick(up, "user-1", 6, 0, 0);
    mg_target_t *b = mg_upstream_pick(up, "user-2", 6, 0, 0);
    for (int i = 0; i < 10; i++) {
        assert_ptr_equal(mg_upstream_pick(up, "user-1", 6, 0, 0), a);
        assert_ptr_equal(mg_upstream_pick(up, "user-2", 6, 0, 0), b);
    }
    /* an ejected target's keys move to another, the rest stay */
    mg_target_report(a, 0);
    mg_target_report(a, 0);
    mg_target_t *moved = mg_upstream_pick(up, "user-1", 6, 0, 0);
    assert_ptr_not_equal(moved, a);
    if (b != a)
        assert_ptr_equal(mg_upstream_pick(up, "user-2", 6, 0, 0), b);
    drop(up);
}

static void eject_then_one_trial(void **state)
{
    mg_upstream_t *up = make(2, MG_BALANCE_RR);
    mg_target_t *bad = &up->targets[0];
    mg_target_report(bad, 0);
    assert_int_equal(bad->ejected_until, 0); /* one failure is not enough */
    mg_target_report(bad, 0);
    assert_true(bad->ejected_until > 0);
    for (int i = 0; i < 6; i++)
        assert_int_equal(index_of(up, mg_upstream_pick(up, NULL, 0, 0, 0)), 1);
    usleep(60 * 1000);
    /* after the ejection time exactly one trial request goes to it */
    int trials = 0;
    for (int i = 0; i < 6; i++)
        if (mg_upstream_pick(up, NULL, 0, 0, 0) == bad)
            trials++;
    assert_int_equal(trials, 1);
    mg_target_report(bad, 1); /* the trial succeeded: healthy again */
    assert_int_equal(bad->ejected_until, 0);
    trials = 0;
    for (int i = 0; i < 6; i++)
        if (mg_upstream_pick(up, NULL, 0, 0, 0) == bad)
            trials++;
    assert_int_equal(trials, 3);
    drop(up);
}

static void nothing_usable(void **state)
{
    mg_upstream_t *up = make(2, MG_BALANCE_RR);
    up->targets[0].active_down = 1;
    up->targets[1].len = 0; /* a host name not resolved yet */
    assert_null(mg_upstream_pick(up, NULL, 0, 0, 0));
    drop(up);
}

static void pick_other_never_returns_avoid(void **state)
{
    mg_upstream_t *one = make(1, MG_BALANCE_RR);
    assert_null(mg_upstream_pick(one, NULL, 0, 1, MG_PICK_OTHER));
    mg_upstream_t *up = make(2, MG_BALANCE_LEAST_CONN);
    assert_int_equal(index_of(up, mg_upstream_pick(up, NULL, 0, 1, MG_PICK_OTHER)), 1);
    /* every target tried: none with MG_PICK_OTHER, any usable one without */
    mg_upstream_t *three = make(3, MG_BALANCE_RR);
    assert_int_equal(index_of(three, mg_upstream_pick(three, NULL, 0, 1 | 2, MG_PICK_OTHER)), 2);
    assert_null(mg_upstream_pick(three, NULL, 0, 1 | 2 | 4, MG_PICK_OTHER));
    assert_non_null(mg_upstream_pick(three, NULL, 0, 1 | 2 | 4, 0));
    drop(three);
    up->targets[1].active_down = 1; /* the other one is down: no retry rather than the same target */
    assert_null(mg_upstream_pick(up, NULL, 0, 1, MG_PICK_OTHER));
    assert_int_equal(index_of(up, mg_upstream_pick(up, NULL, 0, 1, 0)), 0);
    drop(one);
    drop(up);
}

static void last_usable_target_never_ejected(void **state)
{
    /* one target: however often it fails, it keeps being picked (no 503 for the ejection time) */
    mg_upstream_t *one = make(1, MG_BALANCE_RR);
    for (int i = 0; i < 5; i++)
        mg_target_report(&one->targets[0], 0);
    assert_int_equal(one->targets[0].ejected_until, 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(index_of(one, mg_upstream_pick(one, NULL, 0, 0, 0)), 0);
    /* two: the first to fail is ejected, the second is the last usable one and stays */
    mg_upstream_t *up = make(2, MG_BALANCE_RR);
    mg_target_report(&up->targets[0], 0);
    mg_target_report(&up->targets[0], 0);
    assert_true(up->targets[0].ejected_until > 0);
    for (int i = 0; i < 4; i++)
        mg_target_report(&up->targets[1], 0);
    assert_int_equal(up->targets[1].ejected_until, 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(index_of(up, mg_upstream_pick(up, NULL, 0, 0, 0)), 1);
    drop(one);
    drop(up);
}

static void falls_back_to_an_ejected_target(void **state)
{
    mg_upstream_t *up = make(3, MG_BALANCE_RR);
    mg_target_report(&up->targets[0], 0);
    mg_target_report(&up->targets[0], 0); /* ejected while the others were fine */
    assert_true(up->targets[0].ejected_until > 0);
    up->targets[1].active_down = 1;       /* then the others fail their health check */
    up->targets[2].len = 0;
    /* nothing usable: try the ejected one rather than refuse (and it is no trial) */
    for (int i = 0; i < 3; i++)
        assert_int_equal(index_of(up, mg_upstream_pick(up, NULL, 0, 0, 0)), 0);
    assert_int_equal(up->targets[0].trial, 0);
    assert_null(mg_upstream_pick(up, NULL, 0, 1, MG_PICK_OTHER));
    drop(up);
}

static void cancelled_trial_frees_the_target(void **state)
{
    mg_upstream_t *up = make(2, MG_BALANCE_RR);
    mg_target_t *bad = &up->targets[0];
    mg_target_report(bad, 0);
    mg_target_report(bad, 0);
    usleep(60 * 1000);
    mg_target_t *t = NULL;
    for (int i = 0; i < 2 && t != bad; i++)
        t = mg_upstream_pick(up, NULL, 0, 0, 0);
    assert_ptr_equal(t, bad); /* its trial */
    assert_false(mg_target_usable(bad));
    mg_target_unpick(bad);    /* the trial request was cancelled: no verdict, the next request may try */
    assert_true(mg_target_usable(bad));
    drop(up);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(round_robin),     cmocka_unit_test(avoid_previous_target),
        cmocka_unit_test(least_conn),      cmocka_unit_test(hash_is_stable),
        cmocka_unit_test(eject_then_one_trial), cmocka_unit_test(nothing_usable),
        cmocka_unit_test(pick_other_never_returns_avoid), cmocka_unit_test(last_usable_target_never_ejected),
        cmocka_unit_test(falls_back_to_an_ejected_target), cmocka_unit_test(cancelled_trial_frees_the_target),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
