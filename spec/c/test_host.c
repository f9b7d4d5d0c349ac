/* mg_host: authority validation, addresses, CIDRs, the X-Forwarded-For walk. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <cmocka.h>

#include "mg_host.h"

static long check(const char *s) { return mg_host_check(s, strlen(s)); }

static void valid_hosts(void **state)
{
    (void)state;
    assert_int_equal(check(""), 0); /* the caller decides whether an empty one is allowed */
    assert_int_equal(check("example.com"), 11);
    assert_int_equal(check("Example.COM:8080"), 11);
    assert_int_equal(check("a"), 1);
    assert_int_equal(check("a:0"), 1);
    assert_int_equal(check("a:65535"), 1);
    assert_int_equal(check("127.0.0.1:80"), 9);
    assert_int_equal(check("xn--bcher-kva.example"), 21);
    assert_int_equal(check("under_score.example"), 19);
    assert_int_equal(check("example.com."), 12);     /* a trailing dot: the caller strips it */
    assert_int_equal(check("[::1]"), 5);
    assert_int_equal(check("[::1]:8443"), 5);
    assert_int_equal(check("[2001:db8::7]"), 13);
    assert_int_equal(check("[::ffff:192.0.2.1]:1"), 18);
    assert_int_equal(check("[v1.fe80::a+en1]"), 16); /* IPvFuture */
    assert_int_equal(check("a!$&'()*+;=b"), 12);     /* RFC 3986 sub-delims, ',' aside */
}

static void invalid_hosts(void **state)
{
    (void)state;
    const char *bad[] = {
        "a b", "a@b", "user@host", "user:pw@host:80", "a/b", "evil.test/x?", "a<b", "a>b", "a\"b", "a\\b",
        "a?b", "a#b", "a%41b", "a,b", "a, b", "a\tb",
        "[::1", "[::1]x", "[::1]:", "[::1]:99999", "[]", "[1.2.3.4]", "[::1%25eth0]", "[fe80::1%eth0]",
        "[v1]", "[v.x]", "[vg.x]", "[v1.]", "[v1.a,b]", "::1",
        "x:99999", "x:65536", "x:", "x:8a", "x:+80", "x:-1", "x:123456", "x:80:80", ":80", ":",
        "a..b", ".a", ".", "..",
    };
    for (size_t i = 0; i < mg_countof(bad); i++)
        if (check(bad[i]) != -1)
            fail_msg("'%s' was accepted", bad[i]);
    /* bytes a header value may carry */
    assert_int_equal(mg_host_check("a\0b", 3), -1);
    assert_int_equal(mg_host_check("a\x80", 2), -1);
    assert_int_equal(mg_host_check("a\x7f", 2), -1);
}

static mg_ip_t ip(const char *s)
{
    mg_ip_t a;
    if (mg_ip_parse(s, strlen(s), &a) != 0)
        fail_msg("'%s' does not parse", s);
    return a;
}

static void addresses(void **state)
{
    (void)state;
    char buf[64];
    mg_ip_t a = ip("192.0.2.7");
    assert_int_equal(mg_ip_format(&a, buf, sizeof(buf)), 9);
    assert_string_equal(buf, "192.0.2.7");
    a = ip("::ffff:192.0.2.7"); /* v4-mapped is the same address */
    mg_ip_format(&a, buf, sizeof(buf));
    assert_string_equal(buf, "192.0.2.7");
    a = ip("2001:DB8:0:0::1");
    mg_ip_format(&a, buf, sizeof(buf));
    assert_string_equal(buf, "2001:db8::1");
    const char *bad[] = { "", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "0x7f.0.0.1", "127.1",
                          "1.2.3.4 ", "::1::2", "[::1]", "unknown", "1.2.3.4:80" };
    for (size_t i = 0; i < mg_countof(bad); i++) {
        mg_ip_t x;
        if (mg_ip_parse(bad[i], strlen(bad[i]), &x) == 0)
            fail_msg("'%s' parsed as an address", bad[i]);
    }
    /* X-Forwarded-For elements may carry a port */
    const char *hops[] = { "192.0.2.7", "192.0.2.7:4711", "[2001:db8::1]", "[2001:db8::1]:4711", "2001:db8::1" };
    for (size_t i = 0; i < mg_countof(hops); i++) {
        mg_ip_t x;
        if (mg_ip_parse_hop(hops[i], strlen(hops[i]), &x) != 0)
            fail_msg("hop '%s' does not parse", hops[i]);
    }
    const char *bad_hops[] = { "192.0.2.7:", "192.0.2.7:99999", "[2001:db8::1", "[2001:db8::1]x",
                               "[192.0.2.7]", "host:80", "unknown", "_hidden", "" };
    for (size_t i = 0; i < mg_countof(bad_hops); i++) {
        mg_ip_t x;
        if (mg_ip_parse_hop(bad_hops[i], strlen(bad_hops[i]), &x) == 0)
            fail_msg("hop '%s' parsed", bad_hops[i]);
    }
}

static void cidrs(void **state)
{
    (void)state;
    mg_cidr_t list[4];
    assert_int_equal(mg_cidr_parse("10.0.0.0/8", &list[0]), 0);
    assert_int_equal(mg_cidr_parse("192.168.1.128/25", &list[1]), 0);
    assert_int_equal(mg_cidr_parse("2001:db8::/32", &list[2]), 0);
    assert_int_equal(mg_cidr_parse("127.0.0.1", &list[3]), 0);
    assert_int_equal(list[0].bits, 104);
    assert_int_equal(list[3].bits, 128);
    mg_ip_t a;
    a = ip("10.200.3.4"), assert_true(mg_cidr_match(list, 4, &a));
    a = ip("11.0.0.1"), assert_false(mg_cidr_match(list, 4, &a));
    a = ip("192.168.1.200"), assert_true(mg_cidr_match(list, 4, &a));
    a = ip("192.168.1.100"), assert_false(mg_cidr_match(list, 4, &a));
    a = ip("2001:db8:ffff::1"), assert_true(mg_cidr_match(list, 4, &a));
    a = ip("2001:db9::1"), assert_false(mg_cidr_match(list, 4, &a));
    a = ip("127.0.0.1"), assert_true(mg_cidr_match(list, 4, &a));
    a = ip("127.0.0.2"), assert_false(mg_cidr_match(list, 4, &a));
    a = ip("::ffff:10.1.1.1"), assert_true(mg_cidr_match(list, 4, &a)); /* a v4 peer on a dual-stack listener */
    assert_false(mg_cidr_match(list, 0, &a));
    mg_cidr_t all;
    assert_int_equal(mg_cidr_parse("0.0.0.0/0", &all), 0);
    a = ip("203.0.113.9"), assert_true(mg_cidr_match(&all, 1, &a));
    a = ip("2001:db8::1"), assert_false(mg_cidr_match(&all, 1, &a)); /* an IPv4 /0 is IPv4 only */
    const char *bad[] = { "10.0.0.1/8", "10.0.0.0/33", "::1/129", "10.0.0.0/", "10.0.0.0/x", "10.0.0.0/08a",
                          "10.0.0.0/1000", "10.0.0.0/8/8", "host/8", "", "/8", "2001:db8::1/32" };
    for (size_t i = 0; i < mg_countof(bad); i++) {
        mg_cidr_t c;
        if (mg_cidr_parse(bad[i], &c) == 0)
            fail_msg("'%s' parsed as a CIDR", bad[i]);
    }
}

/* The X-Forwarded-For walk over fields vals (as received), trusting 10/8 and ::1. */
static const char *walk(const char **vals, size_t n)
{
    static char buf[64];
    mg_cidr_t trusted[2];
    mg_cidr_parse("10.0.0.0/8", &trusted[0]);
    mg_cidr_parse("::1", &trusted[1]);
    mg_str_t spans[8];
    for (size_t i = 0; i < n; i++)
        spans[i] = (mg_str_t){ vals[i], strlen(vals[i]) };
    mg_ip_t client;
    if (!mg_forwarded_client(spans, n, trusted, 2, &client))
        return "none";
    mg_ip_format(&client, buf, sizeof(buf));
    return buf;
}

static void forwarded_for(void **state)
{
    (void)state;
    const char *one[] = { "203.0.113.9" };
    assert_string_equal(walk(one, 1), "203.0.113.9");
    /* a forged left part is ignored: the rightmost untrusted hop is the client */
    const char *forged[] = { "1.1.1.1, 203.0.113.9, 10.0.0.2" };
    assert_string_equal(walk(forged, 1), "203.0.113.9");
    /* several fields are one list, in order */
    const char *fields[] = { "1.1.1.1, 203.0.113.9", "10.0.0.3", "10.0.0.2" };
    assert_string_equal(walk(fields, 3), "203.0.113.9");
    /* every hop trusted: the leftmost */
    const char *all[] = { "10.0.0.9, 10.0.0.8, ::1" };
    assert_string_equal(walk(all, 1), "10.0.0.9");
    /* garbage ends the walk at the last good hop */
    const char *garbage[] = { "203.0.113.9, unknown, 10.0.0.2" };
    assert_string_equal(walk(garbage, 1), "10.0.0.2");
    const char *only_garbage[] = { "not-an-ip" };
    assert_string_equal(walk(only_garbage, 1), "none");
    const char *empty[] = { "" };
    assert_string_equal(walk(empty, 1), "none");
    assert_string_equal(walk(NULL, 0), "none");
    /* empty elements, OWS, ports and brackets */
    const char *odd[] = { " ,[2001:db8::5]:4711 ,\t, 10.0.0.2:80 , " };
    assert_string_equal(walk(odd, 1), "2001:db8::5");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(valid_hosts),
        cmocka_unit_test(invalid_hosts),
        cmocka_unit_test(addresses),
        cmocka_unit_test(cidrs),
        cmocka_unit_test(forwarded_for),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
