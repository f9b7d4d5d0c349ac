/*
 * mg_ws: frame heads (every form of length, masked or not) parsed the same
 * at every split point, every rule that closes with 1002/1007/1009, masking
 * at any payload offset, incremental UTF-8 (overlongs, surrogates, beyond
 * U+10FFFF, split anywhere), the message rules, close payloads, the accept
 * key of RFC 6455's example, and the boundary tracker fed in pieces.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "mg_ws.h"

static const uint8_t KEY[4] = { 0x37, 0xfa, 0x21, 0x3d };

/* A head and its payload as a peer would send them. */
static size_t build(uint8_t *out, int opcode, int fin, const uint8_t *payload, size_t n, int masked)
{
    size_t h = mg_ws_head(out, opcode, fin, n, masked ? KEY : NULL);
    memcpy(out + h, payload, n);
    if (masked)
        mg_ws_mask(out + h, n, KEY, 0);
    return h + n;
}

static void head_forms_at_every_split(void **state)
{
    static const uint64_t lens[] = { 0, 5, 125, 126, 65535, 65536, 1ull << 32 };
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        for (int masked = 0; masked <= 1; masked++) {
            uint8_t b[MG_WS_MAX_HEAD];
            size_t h = mg_ws_head(b, MG_WS_BINARY, 1, lens[i], masked ? KEY : NULL);
            mg_ws_frame_t f;
            const char *why = NULL;
            for (size_t cut = 0; cut < h; cut++)
                assert_int_equal(mg_ws_parse_head(b, cut, masked, 0, &f, &why), MG_WS_AGAIN);
            assert_int_equal(mg_ws_parse_head(b, h, masked, 0, &f, &why), (int)h);
            assert_true(f.fin);
            assert_int_equal(f.opcode, MG_WS_BINARY);
            assert_int_equal(f.masked, masked);
            assert_true(f.len == lens[i]);
            if (masked)
                assert_memory_equal(f.mask, KEY, 4);
        }
    }
}

static int err_of(const uint8_t *b, size_t n, int from_client, uint64_t max)
{
    mg_ws_frame_t f;
    const char *why = NULL;
    int rc = mg_ws_parse_head(b, n, from_client, max, &f, &why);
    if (rc < 0)
        assert_non_null(why);
    return rc;
}

static void head_errors(void **state)
{
    /* reserved bits, reserved opcodes */
    assert_int_equal(err_of((const uint8_t *)"\xc1\x80", 2, 1, 0), MG_WS_E_PROTOCOL);
    assert_int_equal(err_of((const uint8_t *)"\x83\x80", 2, 1, 0), MG_WS_E_PROTOCOL);
    assert_int_equal(err_of((const uint8_t *)"\x8b\x80", 2, 1, 0), MG_WS_E_PROTOCOL);
    /* a fragmented or long control frame */
    assert_int_equal(err_of((const uint8_t *)"\x09\x80", 2, 1, 0), MG_WS_E_PROTOCOL);
    assert_int_equal(err_of((const uint8_t *)"\x89\xfe", 2, 1, 0), MG_WS_E_PROTOCOL);
    /* masking the wrong way: refused from the first two bytes */
    assert_int_equal(err_of((const uint8_t *)"\x81\x05", 2, 1, 0), MG_WS_E_PROTOCOL);
    assert_int_equal(err_of((const uint8_t *)"\x81\x85", 2, 0, 0), MG_WS_E_PROTOCOL);
    /* lengths not in their shortest form, and 2^63 */
    assert_int_equal(err_of((const uint8_t *)"\x82\x7e\x00\x7d", 4, 0, 0), MG_WS_E_PROTOCOL);
    assert_int_equal(err_of((const uint8_t *)"\x82\x7f\x00\x00\x00\x00\x00\x00\xff\xff", 10, 0, 0), MG_WS_E_PROTOCOL);
    assert_int_equal(err_of((const uint8_t *)"\x82\x7f\x80\x00\x00\x00\x00\x00\x00\x00", 10, 0, 0), MG_WS_E_PROTOCOL);
    /* over max_frame: refused from the head, before the payload */
    assert_int_equal(err_of((const uint8_t *)"\x82\x7e\x01\x00", 4, 0, 255), MG_WS_E_TOO_BIG);
    assert_int_equal(err_of((const uint8_t *)"\x82\x7e\x01\x00", 4, 0, 256), 4);
    /* max_frame does not lift the 125-byte bound of control frames, nor lower it below the payload asked */
    assert_int_equal(err_of((const uint8_t *)"\x8a\x7d", 2, 0, 0), 2);
}

static void mask_at_any_offset(void **state)
{
    uint8_t whole[100], pieces[100], orig[100];
    for (int i = 0; i < 100; i++)
        orig[i] = (uint8_t)(i * 7 + 3);
    memcpy(whole, orig, 100);
    mg_ws_mask(whole, 100, KEY, 0);
    for (size_t cut = 0; cut <= 100; cut++) {
        memcpy(pieces, orig, 100);
        mg_ws_mask(pieces, cut, KEY, 0);
        mg_ws_mask(pieces + cut, 100 - cut, KEY, cut);
        assert_memory_equal(pieces, whole, 100);
    }
    mg_ws_mask(whole, 100, KEY, 0);
    assert_memory_equal(whole, orig, 100); /* the same XOR unmasks */
}

static int utf8_ok(const char *s, size_t n)
{
    mg_utf8_t u = { 0 };
    return mg_utf8_feed(&u, (const uint8_t *)s, n) == 0 && mg_utf8_complete(&u);
}

static void utf8_rules(void **state)
{
    static const char *good[] = { "", "plain ascii that is longer than eight", "h\xc3\xa9llo", "\xe2\x98\x83",
                                  "\xf0\x9f\x98\x80", "\xf4\x8f\xbf\xbf", "\xed\x9f\xbf", "\xee\x80\x80" };
    static const char *bad[] = { "\xc0\x80", "\xc1\xbf", "\xe0\x80\x80", "\xe0\x9f\xbf", "\xed\xa0\x80",
                                 "\xf0\x80\x80\x80", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\x80", "\xff",
                                 "ok\xc3", "\xe2\x98", "abcdefgh\xc3\x28" };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        size_t n = strlen(good[i]);
        assert_true(utf8_ok(good[i], n));
        /* split at every point: the same verdict */
        for (size_t cut = 0; cut <= n; cut++) {
            mg_utf8_t u = { 0 };
            assert_int_equal(mg_utf8_feed(&u, (const uint8_t *)good[i], cut), 0);
            assert_int_equal(mg_utf8_feed(&u, (const uint8_t *)good[i] + cut, n - cut), 0);
            assert_true(mg_utf8_complete(&u));
        }
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t n = strlen(bad[i]);
        assert_false(utf8_ok(bad[i], n));
        for (size_t cut = 0; cut <= n; cut++) {
            mg_utf8_t u = { 0 };
            int ok = mg_utf8_feed(&u, (const uint8_t *)bad[i], cut) == 0 &&
                     mg_utf8_feed(&u, (const uint8_t *)bad[i] + cut, n - cut) == 0 && mg_utf8_complete(&u);
            assert_false(ok);
        }
    }
}

static void message_rules(void **state)
{
    const char *why = NULL;
    mg_ws_msg_t m = { .max_message = 10 };
    mg_ws_frame_t cont = { .fin = 1, .opcode = MG_WS_CONT, .len = 1 };
    assert_int_equal(mg_ws_msg_frame(&m, &cont, &why), MG_WS_E_PROTOCOL); /* nothing to continue */
    mg_ws_frame_t first = { .fin = 0, .opcode = MG_WS_TEXT, .len = 4 };
    assert_int_equal(mg_ws_msg_frame(&m, &first, &why), 0);
    assert_int_equal(mg_ws_msg_payload(&m, (const uint8_t *)"caf\xc3", 4, &why), 0);
    mg_ws_frame_t ping = { .fin = 1, .opcode = MG_WS_PING, .len = 0 };
    assert_int_equal(mg_ws_msg_frame(&m, &ping, &why), 0); /* a control frame between fragments */
    mg_ws_frame_t again = { .fin = 1, .opcode = MG_WS_TEXT, .len = 1 };
    assert_int_equal(mg_ws_msg_frame(&m, &again, &why), MG_WS_E_PROTOCOL); /* a new message inside one */
    mg_ws_frame_t last = { .fin = 1, .opcode = MG_WS_CONT, .len = 1 };
    assert_int_equal(mg_ws_msg_frame(&m, &last, &why), 0);
    assert_int_equal(mg_ws_msg_payload(&m, (const uint8_t *)"\xa9", 1, &why), 0);
    assert_int_equal(mg_ws_msg_end(&m, &why), 0);
    /* a text message that stops inside a character */
    assert_int_equal(mg_ws_msg_frame(&m, &again, &why), 0);
    assert_int_equal(mg_ws_msg_payload(&m, (const uint8_t *)"\xc3", 1, &why), 0);
    assert_int_equal(mg_ws_msg_end(&m, &why), MG_WS_E_UTF8);
    /* max_message over fragments */
    mg_ws_frame_t big = { .fin = 0, .opcode = MG_WS_BINARY, .len = 6 };
    assert_int_equal(mg_ws_msg_frame(&m, &big, &why), 0);
    mg_ws_frame_t more = { .fin = 1, .opcode = MG_WS_CONT, .len = 5 };
    assert_int_equal(mg_ws_msg_frame(&m, &more, &why), MG_WS_E_TOO_BIG);
    /* binary is not checked as UTF-8 */
    mg_ws_msg_t b = { 0 };
    mg_ws_frame_t bin = { .fin = 1, .opcode = MG_WS_BINARY, .len = 2 };
    assert_int_equal(mg_ws_msg_frame(&b, &bin, &why), 0);
    assert_int_equal(mg_ws_msg_payload(&b, (const uint8_t *)"\xff\xfe", 2, &why), 0);
    assert_int_equal(mg_ws_msg_end(&b, &why), 0);
}

static void close_payloads(void **state)
{
    int code;
    const char *reason, *why;
    size_t rn;
    assert_int_equal(mg_ws_parse_close(NULL, 0, &code, &reason, &rn, &why), 0);
    assert_int_equal(code, 1005);
    assert_int_equal(mg_ws_parse_close((const uint8_t *)"\x03", 1, &code, &reason, &rn, &why), MG_WS_E_PROTOCOL);
    assert_int_equal(mg_ws_parse_close((const uint8_t *)"\x03\xe8ok", 4, &code, &reason, &rn, &why), 0);
    assert_int_equal(code, 1000);
    assert_int_equal(rn, 2);
    assert_memory_equal(reason, "ok", 2);
    static const int refused[] = { 999, 1004, 1005, 1006, 1015, 2999, 5000 };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        uint8_t p[2] = { (uint8_t)(refused[i] >> 8), (uint8_t)refused[i] };
        assert_int_equal(mg_ws_parse_close(p, 2, &code, &reason, &rn, &why), MG_WS_E_PROTOCOL);
    }
    assert_int_equal(mg_ws_parse_close((const uint8_t *)"\x0f\xa0", 2, &code, &reason, &rn, &why), 0); /* 4000 */
    assert_int_equal(mg_ws_parse_close((const uint8_t *)"\x03\xe8\xff", 3, &code, &reason, &rn, &why), MG_WS_E_UTF8);
}

static void accept_key(void **state)
{
    char out[29];
    mg_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, out); /* RFC 6455 section 1.3 */
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

static void tracker_in_pieces(void **state)
{
    uint8_t stream[512];
    size_t n = 0;
    uint8_t payload[300];
    memset(payload, 'p', sizeof(payload));
    n += build(stream + n, MG_WS_TEXT, 0, payload, 3, 0);
    n += build(stream + n, MG_WS_PING, 1, payload, 0, 0);
    n += build(stream + n, MG_WS_CONT, 1, payload, 300, 0);
    size_t before_close = n;
    n += build(stream + n, MG_WS_CLOSE, 1, (const uint8_t *)"\x03\xe8", 2, 0);
    for (size_t cut = 0; cut <= n; cut++) {
        for (size_t cut2 = cut; cut2 <= n; cut2 += 7) {
            mg_ws_track_t t = { 0 };
            mg_ws_track(&t, stream, cut, 0);
            mg_ws_track(&t, stream + cut, cut2 - cut, 0);
            mg_ws_track(&t, stream + cut2, n - cut2, 0);
            assert_true(mg_ws_track_boundary(&t));
            assert_true(t.closed);
        }
        mg_ws_track_t t = { 0 };
        mg_ws_track(&t, stream, cut, 0);
        /* a boundary exactly between frames, never inside one */
        int between = cut == 0 || cut == before_close || cut == n;
        if (between)
            assert_true(mg_ws_track_boundary(&t));
        assert_int_equal(t.closed, cut > before_close + 1);
    }
    /* reserved bits (permessage-deflate between the peers) do not lose the boundaries */
    mg_ws_track_t t = { 0 };
    mg_ws_track(&t, (const uint8_t *)"\xc1\x01z", 3, 0);
    assert_true(mg_ws_track_boundary(&t));
    /* a head that does not parse: lost for good */
    memset(&t, 0, sizeof(t));
    mg_ws_track(&t, (const uint8_t *)"\x83\x00", 2, 0);
    assert_true(t.lost);
    assert_false(mg_ws_track_boundary(&t));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(head_forms_at_every_split),
        cmocka_unit_test(head_errors),
        cmocka_unit_test(mask_at_any_offset),
        cmocka_unit_test(utf8_rules),
        cmocka_unit_test(message_rules),
        cmocka_unit_test(close_payloads),
        cmocka_unit_test(accept_key),
        cmocka_unit_test(tracker_in_pieces),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
