/* mg_metrics: the two escapers every name in an admin answer goes through. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <cmocka.h>

#include "mg_metrics.h"

static char *label(const char *s)
{
    mg_text_t t = { 0 };
    mg_text_label(&t, s);
    return t.p ? t.p : strdup("");
}

static char *json(const char *s)
{
    mg_text_t t = { 0 };
    mg_text_json(&t, s);
    return t.p ? t.p : strdup("");
}

static void prometheus_label_values(void **state)
{
    char *p = label("a\"b},\n\\{");
    assert_string_equal(p, "a\\\"b},\\n\\\\{");
    free(p);
    p = label("caf\xc3\xa9 \xe2\x82\xac ok");          /* valid UTF-8 stays */
    assert_string_equal(p, "caf\xc3\xa9 \xe2\x82\xac ok");
    free(p);
    p = label("x\xff" "y\xc3");                        /* a stray byte, a cut sequence */
    assert_string_equal(p, "x\xef\xbf\xbdy\xef\xbf\xbd");
    free(p);
    p = label("\xc0\xaf\xed\xa0\x80");                 /* overlong, surrogate */
    assert_string_equal(p, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    free(p);
    p = label("");
    assert_string_equal(p, "");
    free(p);
}

static void json_string_bodies(void **state)
{
    char *p = json("u\"},\"upstream:app\":{\"in_use\":0,\"x\":\"");
    assert_string_equal(p, "u\\\"},\\\"upstream:app\\\":{\\\"in_use\\\":0,\\\"x\\\":\\\"");
    free(p);
    p = json("a\nb\\c\x01\x7f");
    assert_string_equal(p, "a\\nb\\\\c\\u0001\\u007f");
    free(p);
    p = json("ok\xffok\xe2\x82\xac");
    assert_string_equal(p, "ok\\ufffdok\xe2\x82\xac");
    free(p);
    /* long enough to grow the buffer several times, all escaped */
    char big[20001];
    memset(big, '"', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    p = json(big);
    assert_int_equal(strlen(p), 40000);
    free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = { cmocka_unit_test(prometheus_label_values), cmocka_unit_test(json_string_bodies) };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
