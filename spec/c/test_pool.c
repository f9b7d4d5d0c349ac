/* mg_pool: alignment, overflow blocks, reset. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "mg_pool.h"

static void aligned_and_distinct(void **state)
{
    mg_pool_t pool;
    mg_pool_init(&pool);
    char *prev = NULL;
    for (int i = 0; i < 1000; i++) {
        char *p = mg_pool_alloc(&pool, (size_t)(i % 97) + 1);
        assert_int_equal((uintptr_t)p % 16, 0);
        memset(p, 0xab, (size_t)(i % 97) + 1);
        assert_true(p != prev);
        prev = p;
    }
    char *big = mg_pool_alloc(&pool, 100000);
    memset(big, 1, 100000);
    char *s = mg_pool_strndup(&pool, "hello world", 5);
    assert_string_equal(s, "hello");
    mg_pool_reset(&pool);
    assert_null(pool.blocks);
    assert_int_equal(pool.used, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = { cmocka_unit_test(aligned_and_distinct) };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
