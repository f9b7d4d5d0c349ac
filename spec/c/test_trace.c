/*
 * mg_trace, mg_otel_encode and mg_timeline without a gateway: the outgoing
 * traceparent, the timeline's filters, and a record's spans as OTLP/JSON
 * (parents, kinds, which steps are spans), from a record built by hand.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#include <cmocka.h>

#include "mg_error.h"
#include "mg_otel.h"
#include "mg_timeline.h"
#include "mg_trace.h"

static void traceparent_out(void **state)
{
    char tp[MG_TRACE_PARENT_LEN + 1] = { 0 };
    /* a W3C request id, not recorded: its id, the given span, the flag */
    size_t n = mg_trace_parent_value(tp, NULL, "4bf92f3577b34da6a3ce929d0e0e4736", 0, 0x00f067aa0ba902b7ull);
    assert_int_equal(n, 55);
    assert_string_equal(tp, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
    n = mg_trace_parent_value(tp, NULL, "4bf92f3577b34da6a3ce929d0e0e4736", 1, 0x1ull);
    assert_string_equal(tp, "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000001-01");
    /* no span given: a fresh non-zero one each time */
    char a[56] = { 0 }, b[56] = { 0 };
    mg_trace_parent_value(a, NULL, "4bf92f3577b34da6a3ce929d0e0e4736", 1, 0);
    mg_trace_parent_value(b, NULL, "4bf92f3577b34da6a3ce929d0e0e4736", 1, 0);
    assert_string_not_equal(a + 36, b + 36);
    assert_memory_not_equal(a + 36, "0000000000000000", 16);
    /* not a W3C id (an X-Request-ID, uppercase hex): nothing to send */
    assert_int_equal(mg_trace_parent_value(tp, NULL, "order-123", 1, 5), 0);
    assert_int_equal(mg_trace_parent_value(tp, NULL, "4BF92F3577B34DA6A3CE929D0E0E4736", 1, 5), 0);
    /* a recorded trace: its own id, whatever the request id */
    mg_trace_t tr = { .trace_id = { 0xab, [15] = 0xcd } };
    n = mg_trace_parent_value(tp, &tr, "order-123", 1, 0x2ull);
    assert_int_equal(n, 55);
    assert_string_equal(tp, "00-ab0000000000000000000000000000cd-0000000000000002-01");
}

static void timeline_filters(void **state)
{
    char err[256];
    mg_timeline_filter_t f;
    assert_int_equal(mg_timeline_parse("route=/a%20b status=5xx slower=200ms limit=3 json", &f, err, sizeof(err)), MG_OK);
    assert_string_equal(f.route, "/a b");
    assert_int_equal(f.status_lo, 500);
    assert_int_equal(f.status_hi, 599);
    assert_int_equal(f.slower_us, 200000);
    assert_int_equal(f.limit, 3);
    assert_true(f.json);
    assert_false(f.recent);
    mg_timeline_filter_free(&f);
    assert_int_equal(mg_timeline_parse("status=404 slower=1.5s recent", &f, err, sizeof(err)), MG_OK);
    assert_int_equal(f.status_lo, 404);
    assert_int_equal(f.status_hi, 404);
    assert_int_equal(f.slower_us, 1500000);
    assert_true(f.recent);
    mg_timeline_filter_free(&f);
    assert_int_equal(mg_timeline_parse("", &f, err, sizeof(err)), MG_OK);
    assert_null(f.route);
    const char *bad[] = { "status=6xx", "status=20", "slower=fast", "limit=0", "limit=x", "colour=red", "route=%zz" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        assert_int_equal(mg_timeline_parse(bad[i], &f, err, sizeof(err)), MG_ERROR);
        assert_true(err[0] != '\0');
    }
}

/* A record as mg_trace_end makes it: strings in one pool, offsets into it. */
typedef struct fake {
    mg_trace_rec_t rec;
    mg_trace_item_t items[8];
    char strs[512];
    size_t len;
} fake_t;

static uint16_t str(fake_t *f, const char *s)
{
    uint16_t off = (uint16_t)f->len;
    strcpy(f->strs + f->len, s);
    f->len += strlen(s) + 1;
    return off;
}

static mg_trace_item_t *item(fake_t *f, int kind, int parent, uint64_t start, uint64_t end, uint64_t span)
{
    mg_trace_item_t *it = &f->items[f->rec.nitems++];
    memset(it, 0, sizeof(*it));
    it->kind = (uint8_t)kind;
    it->parent = (int16_t)parent;
    it->start_us = start;
    it->end_us = end;
    it->span_id = span;
    return it;
}

static void make_record(fake_t *f)
{
    memset(f, 0, sizeof(*f));
    f->len = 1; /* offset 0 is "" */
    mg_trace_rec_t *r = &f->rec;
    r->refs = 1;
    memcpy(r->trace_id, "\x4b\xf9\x2f\x35\x77\xb3\x4d\xa6\xa3\xce\x92\x9d\x0e\x0e\x47\x36", 16);
    r->span_id = 0x1111111111111111ull;
    r->parent_span = 0x00f067aa0ba902b7ull;
    r->start_us = 1000;
    r->end_us = 41000;
    r->wall_start_ns = 1800000000000000000ull;
    r->status = 502;
    r->error = MG_E(REFUSED)->id + 1;
    r->attempts = 2;
    r->items = f->items;
    r->strs = f->strs;
    r->method = str(f, "GET");
    r->path = str(f, "/orders/7");
    r->route = str(f, "/orders/{id}");
    r->host = str(f, "api.example:8080");
    r->upstream = str(f, "orders");
    r->request_id = str(f, "4bf92f3577b34da6a3ce929d0e0e4736");
    mg_trace_item_t *s = item(f, MG_TI_STEP, -1, 1100, 31100, 0x2222222222222222ull);
    s->phase = MG_TP_ACCESS;
    s->name = str(f, "lookup");
    s->run_us = 100;
    s->wait_us = 29900;
    mg_trace_item_t *w = item(f, MG_TI_WAIT, 0, 1150, 31050, 0x3333333333333333ull);
    w->name = str(f, "redis");
    mg_trace_item_t *q = item(f, MG_TI_STEP, -1, 31100, 31110, 0x4444444444444444ull); /* did not wait */
    q->phase = MG_TP_ACCESS;
    q->name = str(f, "quick");
    q->run_us = 10;
    for (int i = 0; i < 2; i++) {
        mg_trace_item_t *a = item(f, MG_TI_ATTEMPT, -1, 31200 + 4000 * i, 35000 + 4000 * i, 0x5555555555555555ull + i);
        a->name = str(f, i ? "10.0.0.2:80" : "10.0.0.1:80");
        a->name2 = r->upstream;
        a->attempt = (uint8_t)(i + 1);
        a->error = MG_E(REFUSED)->id + 1;
        a->connect_us = 0;
    }
}

static void otlp_spans(void **state)
{
    fake_t f;
    make_record(&f);
    /* server + the step that waited + two attempts; the quick step is no span of its own */
    assert_int_equal(mg_otel_span_count(&f.rec), 4);
    mg_text_t o = { 0 };
    mg_trace_rec_t *recs[1] = { &f.rec };
    mg_otel_encode(&o, recs, 1, "edge");
    const char *j = o.p;
    assert_non_null(strstr(j, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\",\"value\":{\"stringValue\":\"edge\"}}"));
    assert_non_null(strstr(j, "\"scope\":{\"name\":\"moongate\""));
    /* the server span: its parent is the caller's span; an error status for a 502 */
    assert_non_null(strstr(j, "{\"traceId\":\"4bf92f3577b34da6a3ce929d0e0e4736\",\"spanId\":\"1111111111111111\","
                              "\"parentSpanId\":\"00f067aa0ba902b7\",\"name\":\"GET /orders/{id}\",\"kind\":2,"
                              "\"startTimeUnixNano\":\"1800000000000000000\",\"endTimeUnixNano\":\"1800000000040000000\""));
    assert_non_null(strstr(j, "{\"key\":\"error.type\",\"value\":{\"stringValue\":\"refused\"}}"));
    assert_non_null(strstr(j, "{\"key\":\"server.address\",\"value\":{\"stringValue\":\"api.example\"}},"
                              "{\"key\":\"server.port\",\"value\":{\"intValue\":\"8080\"}}"));
    assert_non_null(strstr(j, "{\"key\":\"moongate.retries\",\"value\":{\"intValue\":\"1\"}}"));
    assert_non_null(strstr(j, "\"status\":{\"code\":2,\"message\":\"refused\"}"));
    /* the step that waited, under the server span, its wait as an event */
    assert_non_null(strstr(j, "\"spanId\":\"2222222222222222\",\"parentSpanId\":\"1111111111111111\","
                              "\"name\":\"access lookup\",\"kind\":1"));
    assert_non_null(strstr(j, "{\"name\":\"wait\",\"timeUnixNano\":\"1800000000000150000\",\"attributes\":["
                              "{\"key\":\"moongate.wait.on\",\"value\":{\"stringValue\":\"redis\"}},"
                              "{\"key\":\"moongate.wait.ms\",\"value\":{\"doubleValue\":29.900}}]}"));
    assert_null(strstr(j, "4444444444444444"));
    assert_null(strstr(j, "3333333333333333")); /* a wait is an event, not a span */
    /* the attempts: client spans under the server span, the retry counted */
    assert_non_null(strstr(j, "\"spanId\":\"5555555555555555\",\"parentSpanId\":\"1111111111111111\",\"name\":\"GET\",\"kind\":3"));
    assert_non_null(strstr(j, "{\"key\":\"http.request.resend_count\",\"value\":{\"intValue\":\"1\"}}"));
    assert_non_null(strstr(j, "{\"key\":\"server.address\",\"value\":{\"stringValue\":\"10.0.0.2\"}}"));
    /* balanced: as many { as } and [ as ] (no string here holds one) */
    int braces = 0, brackets = 0;
    for (const char *p = j; *p; p++) {
        braces += *p == '{' ? 1 : *p == '}' ? -1 : 0;
        brackets += *p == '[' ? 1 : *p == ']' ? -1 : 0;
    }
    assert_int_equal(braces, 0);
    assert_int_equal(brackets, 0);
    free(o.p);
}

static void timeline_json(void **state)
{
    fake_t f;
    make_record(&f);
    mg_text_t o = { 0 };
    mg_timeline_format(&o, &f.rec, 1);
    const char *j = o.p;
    assert_non_null(strstr(j, "\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\""));
    assert_non_null(strstr(j, "\"status\":502,\"duration_ms\":40.000,\"error\":\"refused\""));
    assert_non_null(strstr(j, "{\"kind\":\"step\",\"phase\":\"access\",\"plugin\":\"lookup\",\"start_ms\":0.100,"
                              "\"duration_ms\":30.000,\"run_ms\":0.100,\"wait_ms\":29.900,"
                              "\"waits\":[{\"on\":\"redis\",\"start_ms\":0.150,\"ms\":29.900}]}"));
    assert_non_null(strstr(j, "{\"kind\":\"attempt\",\"upstream\":\"orders\",\"target\":\"10.0.0.2:80\",\"attempt\":2"));
    assert_int_equal(j[o.len - 1], '\n');
    assert_null(memchr(j, '\n', o.len - 1)); /* one line */
    free(o.p);
    o = (mg_text_t){ 0 };
    mg_timeline_format(&o, &f.rec, 0);
    assert_non_null(strstr(o.p, "GET /orders/7 -> 502 in 40.000 ms (refused)  route /orders/{id}"));
    assert_non_null(strstr(o.p, "access lookup  30.000 ms: run 0.100, wait 29.900: redis 29.900"));
    assert_non_null(strstr(o.p, "upstream orders 10.0.0.1:80 (attempt 1)"));
    free(o.p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(traceparent_out),
        cmocka_unit_test(timeline_filters),
        cmocka_unit_test(otlp_spans),
        cmocka_unit_test(timeline_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
