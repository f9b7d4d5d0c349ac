/* mg_bgjob: work off the loop's thread at idle priority, done on the loop once, finish_all at exit; mg_file_id. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <unistd.h>

#include "mg_bgjob.h"
#include "mg_core.h"

typedef struct {
    pthread_t work_thread;
    int work_policy;
    int worked, done;
    int worked_when_done;     /* work had returned when done ran */
    pthread_t done_thread;
    struct event_base *base;
    int *left;                /* jobs not done yet: the loop stops at 0 */
} probe_t;

static void work(void *arg)
{
    probe_t *p = arg;
    p->work_thread = pthread_self();
    p->work_policy = sched_getscheduler(0);
    usleep(20 * 1000);
    __atomic_store_n(&p->worked, 1, __ATOMIC_RELEASE);
}

static void done(void *arg)
{
    probe_t *p = arg;
    p->done++;
    p->worked_when_done = __atomic_load_n(&p->worked, __ATOMIC_ACQUIRE);
    p->done_thread = pthread_self();
    if (p->left && --*p->left == 0)
        event_base_loopbreak(p->base);
}

static void runs_off_the_loop_and_ends_on_it(void **state)
{
    struct event_base *base = event_base_new();
    int left = 3;
    probe_t p[3];
    for (int i = 0; i < 3; i++) {
        p[i] = (probe_t){ .base = base, .left = &left };
        mg_bgjob_start(base, work, done, &p[i]);
    }
    assert_int_equal(mg_bgjob_running(), 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(p[i].done, 0); /* never inside start */
    event_base_dispatch(base);
    assert_int_equal(mg_bgjob_running(), 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(p[i].done, 1);
        assert_true(p[i].worked_when_done);
        assert_false(pthread_equal(p[i].work_thread, pthread_self()));
        assert_true(pthread_equal(p[i].done_thread, pthread_self()));
        /* idle CPU only where the process may leave SCHED_IDLE later; nice 19 otherwise */
        assert_int_equal(p[i].work_policy, mg_bgjob_idle_allowed() ? SCHED_IDLE : SCHED_OTHER);
    }
    event_base_free(base);
}

static void finish_all_waits_and_runs_done(void **state)
{
    struct event_base *base = event_base_new();
    probe_t p[2] = { { .base = base }, { .base = base } };
    for (int i = 0; i < 2; i++)
        mg_bgjob_start(base, work, done, &p[i]);
    mg_bgjob_finish_all(); /* the loop never ran */
    assert_int_equal(mg_bgjob_running(), 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(p[i].done, 1);
        assert_true(p[i].worked_when_done);
    }
    event_base_free(base);
}

static void file_identity(void **state)
{
    char path[] = "/tmp/mg-test-bgjob-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "a", 1), 1);
    mg_file_id_t a, b;
    mg_file_id(path, &a);
    mg_file_id(path, &b);
    assert_true(a.ok);
    assert_false(mg_file_id_changed(&a, &b));
    assert_int_equal(write(fd, "b", 1), 1); /* a rewrite: size and mtime */
    mg_file_id(path, &b);
    assert_true(mg_file_id_changed(&a, &b));
    close(fd);
    char other[] = "/tmp/mg-test-bgjob-XXXXXX";
    int fd2 = mkstemp(other);
    assert_int_equal(write(fd2, "ab", 2), 2);
    close(fd2);
    mg_file_id(path, &a);
    assert_int_equal(rename(other, path), 0); /* an editor's save: another inode */
    mg_file_id(path, &b);
    assert_true(mg_file_id_changed(&a, &b));
    unlink(path);
    mg_file_id(path, &a);
    assert_false(a.ok);
    assert_true(mg_file_id_changed(&a, &b)); /* gone */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(runs_off_the_loop_and_ends_on_it),
        cmocka_unit_test(finish_all_waits_and_runs_done),
        cmocka_unit_test(file_identity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
