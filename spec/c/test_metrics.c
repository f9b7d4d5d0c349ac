/* mg_metrics: the two escapers every name in an admin answer goes through; errors by route and kind. */
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

static char *render(const mg_metrics_t *m, int json_form)
{
    mg_text_t t = { 0 };
    if (json_form)
        mg_metrics_render_json(m, &t);
    else
        mg_metrics_render(m, 3, &t);
    return t.p ? t.p : strdup("");
}

static void errors_by_route_and_kind(void **state)
{
    mg_metrics_t m = { 0 };
    mg_metrics_record(&m, "/a", 200, 0.002, NULL, 0, NULL, "t-ok");
    mg_metrics_record(&m, "/a", 500, 0.003, NULL, 0, MG_E(LUA_ERROR), "t-1");
    mg_metrics_record(&m, "/a", 502, 0.004, "orders", 0.001, MG_E(REFUSED), "t-2");
    mg_metrics_record(&m, "/b", 500, 0.7, NULL, 0, MG_E(LUA_ERROR), "t-3");
    mg_metrics_record(&m, NULL, 404, 0.0001, NULL, 0, MG_E(NO_ROUTE), "t-4");
    char *p = render(&m, 0);
    assert_non_null(strstr(p, "moongate_request_errors_total{worker=\"3\",route=\"/a\",kind=\"lua_error\"} 1\n"));
    assert_non_null(strstr(p, "moongate_request_errors_total{worker=\"3\",route=\"/a\",kind=\"refused\"} 1\n"));
    assert_non_null(strstr(p, "moongate_request_errors_total{worker=\"3\",route=\"/b\",kind=\"lua_error\"} 1\n"));
    assert_non_null(strstr(p, "moongate_request_errors_total{worker=\"3\",route=\"(none)\",kind=\"no_route\"} 1\n"));
    assert_non_null(strstr(p, "moongate_upstream_errors_total{worker=\"3\",upstream=\"orders\",kind=\"refused\"} 1\n"));
    assert_null(strstr(p, "moongate_upstream_errors_total{worker=\"3\",upstream=\"orders\",kind=\"lua_error\""));
    free(p);
    p = render(&m, 1);
    /* per-bucket counts, not cumulative: 0.7 s is in the (0.25, 1] bucket, the ninth */
    assert_non_null(strstr(p, "{\"route\":\"/b\",\"status\":{\"5xx\":1},\"latency\":{\"counts\":[0,0,0,0,0,0,0,0,1,0,0],"
                              "\"sum\":0.700000},\"errors\":{\"lua_error\":1}}"));
    assert_non_null(strstr(p, "\"errors\":{\"refused\":1,\"lua_error\":1}"));
    assert_non_null(strstr(p, "{\"upstream\":\"orders\",\"status\":{\"5xx\":1},\"ttfb\":{\"counts\":[1,0,0,0,0,0,0,0,0,0,0]"));
    /* the last request of each kind: /b's lua_error came after /a's */
    assert_non_null(strstr(p, "\"lua_error\":{\"time\":"));
    assert_non_null(strstr(p, "\"status\":500,\"route\":\"/b\",\"upstream\":\"\",\"trace_id\":\"t-3\"}"));
    assert_non_null(strstr(p, "\"status\":502,\"route\":\"/a\",\"upstream\":\"orders\",\"trace_id\":\"t-2\"}"));
    assert_non_null(strstr(p, "\"route\":\"(none)\",\"upstream\":\"\",\"trace_id\":\"t-4\"}"));
    assert_null(strstr(p, "t-ok"));
    free(p);
    mg_metrics_free(&m);
}

static void grpc_calls_by_status(void **state)
{
    mg_metrics_t m = { 0 };
    mg_metrics_grpc(&m, "/svc.S/{m}", 0);
    mg_metrics_grpc(&m, "/svc.S/{m}", 0);
    mg_metrics_grpc(&m, "/svc.S/{m}", 14);
    mg_metrics_grpc(&m, "/svc.S/{m}", 99);
    mg_metrics_grpc(&m, NULL, 12);
    char *p = render(&m, 0);
    assert_non_null(strstr(p, "moongate_grpc_requests_total{worker=\"3\",route=\"/svc.S/{m}\",grpc_status=\"0\"} 2\n"));
    assert_non_null(strstr(p, "moongate_grpc_requests_total{worker=\"3\",route=\"/svc.S/{m}\",grpc_status=\"14\"} 1\n"));
    assert_non_null(strstr(p, "moongate_grpc_requests_total{worker=\"3\",route=\"/svc.S/{m}\",grpc_status=\"other\"} 1\n"));
    assert_non_null(strstr(p, "moongate_grpc_requests_total{worker=\"3\",route=\"(none)\",grpc_status=\"12\"} 1\n"));
    assert_null(strstr(p, "grpc_status=\"4\""));
    free(p);
    mg_metrics_free(&m);
}

static void last_error_names_are_cut_whole(void **state)
{
    mg_metrics_t m = { 0 };
    /* a route name longer than the slot, made of 3-byte characters: cut before a whole character */
    char route[400] = "/";
    for (int i = 0; i < 100; i++)
        strcat(route, "\xe2\x82\xac");
    mg_metrics_record(&m, route, 500, 0.001, NULL, 0, MG_E(LUA_ERROR), "t");
    const char *kept = m.last[MG_ERR_LUA_ERROR].route;
    assert_true(strlen(kept) < sizeof(m.last[0].route));
    assert_int_equal((strlen(kept) - 1) % 3, 0);
    char *p = render(&m, 1);
    assert_null(strstr(p, "\\ufffd")); /* no half character reached the answer */
    free(p);
    mg_metrics_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = { cmocka_unit_test(prometheus_label_values), cmocka_unit_test(json_string_bodies),
                                        cmocka_unit_test(errors_by_route_and_kind), cmocka_unit_test(grpc_calls_by_status),
                                        cmocka_unit_test(last_error_names_are_cut_whole) };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
