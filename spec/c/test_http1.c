/*
 * mg_http1: request/response heads, the smuggling vectors a strict parser must
 * refuse, incremental parsing at every split point, and chunked decoding fed
 * at every byte boundary.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "mg_http1.h"
#include "chunked_split.h"

static const mg_http1_limits_t LIM = { .max_line = 200, .max_head = 1024, .max_headers = 16 };

static int parse(const char *s, mg_http1_request_t *req, mg_header_t *hdrs)
{
    req->headers = hdrs;
    return mg_http1_parse_request(s, strlen(s), req, &LIM);
}

static void simple_get(void **state)
{
    mg_header_t h[16];
    mg_http1_request_t r;
    const char *s = "GET /users/42?x=1 HTTP/1.1\r\nHost: example.com\r\nX-A:  b c \r\n\r\nBODY";
    int n = parse(s, &r, h);
    assert_int_equal(n, (int)(strstr(s, "BODY") - s));
    assert_int_equal(r.method_len, 3);
    assert_memory_equal(r.method, "GET", 3);
    assert_int_equal(r.target_len, strlen("/users/42?x=1"));
    assert_int_equal(r.minor_version, 1);
    assert_int_equal(r.num_headers, 2);
    assert_int_equal(h[1].value_len, 3); /* OWS trimmed both sides */
    assert_memory_equal(h[1].value, "b c", 3);
    assert_int_equal(r.content_length, -1);
    assert_int_equal(r.host_len, 11);
}

static void framing_flags(void **state)
{
    mg_header_t h[16];
    mg_http1_request_t r;
    assert_true(parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\n", &r, h) > 0);
    assert_int_equal(r.content_length, 5);
    assert_true(r.flags & MG_HTTP1_F_CONN_CLOSE);
    assert_true(parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\nExpect: 100-continue\r\n\r\n", &r, h) > 0);
    assert_true(r.flags & MG_HTTP1_F_CHUNKED);
    assert_true(r.flags & MG_HTTP1_F_EXPECT_CONTINUE);
    assert_true(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &r, h) > 0);
    assert_int_equal(r.minor_version, 0);
    assert_true(r.flags & MG_HTTP1_F_CONN_KEEPALIVE);
    /* identical repeated Content-Length is one value, RFC 9110 §8.6 */
    assert_true(parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", &r, h) > 0);
    assert_int_equal(r.content_length, 3);
    /* leading empty lines are skipped */
    assert_true(parse("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", &r, h) > 0);
    /* ... also when they arrive cut after a CR (found by fuzz_request) */
    assert_int_equal(parse("\r", &r, h), MG_HTTP1_AGAIN);
    assert_int_equal(parse("\r\n\r\n\r", &r, h), MG_HTTP1_AGAIN);
}

typedef struct vector {
    const char *name;
    const char *raw;
    int rc;
} vector_t;

/* Every one of these must be refused with the given code; none may parse. */
static const vector_t bad[] = {
    { "CL and TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", MG_HTTP1_EBAD },
    { "TE and CL", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", MG_HTTP1_EBAD },
    { "conflicting CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n", MG_HTTP1_EBAD },
    { "conflicting CL list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 5\r\n\r\n", MG_HTTP1_EBAD },
    { "signed CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\n", MG_HTTP1_EBAD },
    { "negative CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", MG_HTTP1_EBAD },
    { "hex CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", MG_HTTP1_EBAD },
    { "empty CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", MG_HTTP1_EBAD },
    { "huge CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", MG_HTTP1_EBAD },
    { "CL with space inside", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 0\r\n\r\n", MG_HTTP1_EBAD },
    { "TE not final chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", MG_HTTP1_EBAD },
    { "TE chunked twice", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", MG_HTTP1_EBAD },
    { "TE identity", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", MG_HTTP1_EBAD },
    { "TE xchunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", MG_HTTP1_EBAD },
    { "TE in 1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", MG_HTTP1_EBAD },
    { "TE gzip, chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", MG_HTTP1_ECODING },
    { "obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", MG_HTTP1_EBAD },
    { "obs-fold TE", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n", MG_HTTP1_EBAD },
    { "bare CR in value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", MG_HTTP1_EBAD },
    { "bare LF line end", "GET / HTTP/1.1\nHost: a\r\n\r\n", MG_HTTP1_EBAD },
    { "bare LF header", "GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", MG_HTTP1_EBAD },
    { "NUL in value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n", MG_HTTP1_EBAD },
    { "space before colon", "GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n", MG_HTTP1_EBAD },
    { "tab before colon", "GET / HTTP/1.1\r\nHost: a\r\nContent-Length\t: 5\r\n\r\n", MG_HTTP1_EBAD },
    { "bad header name", "GET / HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n", MG_HTTP1_EBAD },
    { "empty header name", "GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", MG_HTTP1_EBAD },
    { "bad method token", "G(ET / HTTP/1.1\r\nHost: a\r\n\r\n", MG_HTTP1_EBAD },
    { "two spaces", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", MG_HTTP1_EBAD },
    { "space in target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", MG_HTTP1_EBAD },
    { "CTL in target", "GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", MG_HTTP1_EBAD },
    { "8bit in target", "GET /a\xff HTTP/1.1\r\nHost: a\r\n\r\n", MG_HTTP1_EBAD },
    { "HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", MG_HTTP1_EVERSION },
    { "HTTP/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", MG_HTTP1_EVERSION },
    { "HTTP/0.9 style", "GET /\r\n\r\n", MG_HTTP1_EBAD },
    { "lowercase version", "GET / http/1.1\r\nHost: a\r\n\r\n", MG_HTTP1_EBAD },
    { "missing host 1.1", "GET / HTTP/1.1\r\nX: y\r\n\r\n", MG_HTTP1_EBAD },
    { "two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", MG_HTTP1_EBAD },
    { "expect other", "GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", MG_HTTP1_EEXPECT },
    { "too many headers", "GET / HTTP/1.1\r\nHost: a\r\n1: 1\r\n2: 2\r\n3: 3\r\n4: 4\r\n5: 5\r\n6: 6\r\n7: 7\r\n8: 8\r\n9: 9\r\n10: 1\r\n11: 1\r\n12: 1\r\n13: 1\r\n14: 1\r\n15: 1\r\n16: 1\r\n\r\n", MG_HTTP1_EHEADER_COUNT },
};

static void smuggling_vectors(void **state)
{
    mg_header_t h[16];
    mg_http1_request_t r;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t len = strlen(bad[i].raw);
        if (strcmp(bad[i].name, "NUL in value") == 0)
            len = strlen("GET / HTTP/1.1\r\nHost: a\r\nX-A: b") + 1 + strlen("c\r\n\r\n");
        r.headers = h;
        int rc = mg_http1_parse_request(bad[i].raw, len, &r, &LIM);
        if (rc != bad[i].rc)
            fail_msg("vector '%s': got %d, want %d (%s)", bad[i].name, rc, bad[i].rc, r.error ? r.error : "");
        assert_non_null(r.error);
    }
}

static void limits(void **state)
{
    mg_header_t h[16];
    mg_http1_request_t r;
    char line[400];
    snprintf(line, sizeof(line), "GET /%0300d HTTP/1.1\r\nHost: a\r\n\r\n", 0);
    assert_int_equal(parse(line, &r, h), MG_HTTP1_ELINE);
    assert_int_equal(mg_http1_error_status(MG_HTTP1_ELINE), 414);
    /* an incomplete, already too long request line is refused before the CRLF */
    snprintf(line, sizeof(line), "GET /%0300d", 0);
    assert_int_equal(parse(line, &r, h), MG_HTTP1_ELINE);
    char big[2048];
    snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nHost: a\r\nX: %01100d\r\n\r\n", 0);
    assert_int_equal(parse(big, &r, h), MG_HTTP1_EHEADER_SIZE);
    assert_int_equal(mg_http1_error_status(MG_HTTP1_EHEADER_SIZE), 431);
}

static void incremental_every_split(void **state)
{
    const char *s = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi";
    size_t head = strlen(s) - 2;
    mg_header_t h[16];
    mg_http1_request_t r;
    for (size_t cut = 0; cut < head; cut++) {
        r.headers = h;
        int rc = mg_http1_parse_request(s, cut, &r, &LIM);
        if (rc != MG_HTTP1_AGAIN)
            fail_msg("prefix of %zu bytes: got %d", cut, rc);
    }
    r.headers = h;
    assert_int_equal(mg_http1_parse_request(s, head, &r, &LIM), (int)head);
}

static void response_heads(void **state)
{
    mg_header_t h[16];
    mg_http1_response_t r = { .headers = h };
    const char *s = "HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabc";
    assert_int_equal(mg_http1_parse_response(s, strlen(s), &r, &LIM), (int)strlen(s) - 3);
    assert_int_equal(r.status, 404);
    assert_int_equal(r.content_length, 3);
    s = "HTTP/1.1 200\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_true(mg_http1_parse_response(s, strlen(s), &r, &LIM) > 0);
    assert_true(r.flags & MG_HTTP1_F_CHUNKED);
    s = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_int_equal(mg_http1_parse_response(s, strlen(s), &r, &LIM), MG_HTTP1_EBAD);
    s = "HTTX/1.1 200 OK\r\n\r\n";
    assert_int_equal(mg_http1_parse_response(s, strlen(s), &r, &LIM), MG_HTTP1_EBAD);
    s = "HTTP/1.1 2x0 OK\r\n\r\n";
    assert_int_equal(mg_http1_parse_response(s, strlen(s), &r, &LIM), MG_HTTP1_EBAD);
    s = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n";
    assert_int_equal(mg_http1_parse_response(s, strlen(s), &r, &LIM), MG_HTTP1_AGAIN);
}

static void chunked_every_boundary(void **state)
{
    const char *in = "4\r\nWiki\r\n5;ext=\"v\"\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\n";
    size_t len = strlen(in);
    for (size_t cut = 0; cut <= len; cut++) {
        char out[64];
        size_t outlen;
        int rc = decode_split(in, len, cut, out, &outlen);
        if (rc != MG_CHUNKED_DONE)
            fail_msg("split at %zu: rc %d", cut, rc);
        assert_int_equal(outlen, 23);
        assert_memory_equal(out, "Wikipedia in\r\n\r\nchunks.", 23);
    }
}

static void chunked_rejects(void **state)
{
    static const char *bad_bodies[] = {
        "-1\r\nx\r\n0\r\n\r\n",             /* sign */
        "+1\r\nx\r\n0\r\n\r\n",
        "0x1\r\nx\r\n0\r\n\r\n",           /* hex prefix */
        "\r\n",                            /* missing size */
        "g\r\n",                           /* not hex */
        "1000000000000000\r\n",            /* overflow: 16 digits */
        "1\r\nxy\r\n0\r\n\r\n",            /* data longer than size */
        "1\nx\r\n0\r\n\r\n",               /* bare LF */
        "1\rx\r\n0\r\n\r\n",               /* bare CR */
        "1 x\r\n",                         /* junk after the size that is not an extension */
        "0\r\n bad-fold: x\r\n\r\n",        /* trailer obs-fold */
    };
    for (size_t i = 0; i < sizeof(bad_bodies) / sizeof(bad_bodies[0]); i++) {
        char out[64];
        size_t outlen;
        int rc = decode_split(bad_bodies[i], strlen(bad_bodies[i]), 0, out, &outlen);
        if (rc != MG_CHUNKED_ERROR)
            fail_msg("body %zu (%s) decoded with rc %d", i, bad_bodies[i], rc);
    }
    /* an endless size line is cut off */
    char line[MG_CHUNKED_MAX_LINE + 16];
    line[0] = '1';
    line[1] = ';';
    memset(line + 2, 'a', sizeof(line) - 2);
    mg_chunked_t d;
    mg_chunked_init(&d);
    size_t used;
    const char *data;
    size_t dlen;
    assert_int_equal(mg_chunked_decode(&d, line, sizeof(line), &used, &data, &dlen), MG_CHUNKED_ERROR);
}

/* Feeds in byte by byte (every split point at once), capturing trailers into text. */
static int decode_bytewise(const char *in, size_t len, char *out, size_t *outlen, char *text)
{
    size_t *cuts = malloc((len ? len : 1) * sizeof(size_t));
    for (size_t i = 0; i + 1 < len; i++)
        cuts[i] = i + 1;
    int rc = decode_pieces(in, len, cuts, len ? len - 1 : 0, out, outlen, text);
    free(cuts);
    return rc;
}

static void chunked_trailers_captured(void **state)
{
    const char *in = "4\r\nWiki\r\n0\r\nX-Checksum: abc123\r\nServer-Timing:  db;dur=53 \r\nX-Empty:\r\n\r\n";
    const char *want = "X-Checksum: abc123\nServer-Timing: db;dur=53\nX-Empty: \n";
    size_t len = strlen(in);
    char out[64], text[256];
    size_t outlen;
    /* two pieces, at every split point */
    for (size_t cut = 0; cut <= len; cut++) {
        int rc = decode_pieces(in, len, &cut, 1, out, &outlen, text);
        if (rc != MG_CHUNKED_DONE)
            fail_msg("split at %zu: rc %d", cut, rc);
        assert_int_equal(outlen, 4);
        assert_memory_equal(out, "Wiki", 4);
        assert_string_equal(text, want);
    }
    /* one byte at a time */
    assert_int_equal(decode_bytewise(in, len, out, &outlen, text), MG_CHUNKED_DONE);
    assert_string_equal(text, want);
    /* no trailers: nothing captured */
    const char *plain = "1\r\na\r\n0\r\n\r\n";
    assert_int_equal(decode_bytewise(plain, strlen(plain), out, &outlen, text), MG_CHUNKED_DONE);
    assert_string_equal(text, "");
    /* what follows the body (a pipelined response) is not consumed */
    const char *more = "0\r\nX-A: 1\r\n\r\nHTTP/1.1 200 OK\r\n";
    mg_header_t th[4];
    mg_chunked_t d;
    mg_chunked_init(&d);
    mg_chunked_capture_trailers(&d, th, 4);
    size_t used;
    const char *data;
    size_t dlen;
    assert_int_equal(mg_chunked_decode(&d, more, strlen(more), &used, &data, &dlen), MG_CHUNKED_DONE);
    assert_int_equal(used, strlen("0\r\nX-A: 1\r\n\r\n"));
    assert_int_equal(d.num_trailers, 1);
    assert_true(mg_http1_name_is(&th[0], "x-a", 3));
    /* an incomplete section stays unconsumed: the caller hands it again with more */
    mg_chunked_init(&d);
    mg_chunked_capture_trailers(&d, th, 4);
    const char *part = "0\r\nX-A: 1\r\n";
    assert_int_equal(mg_chunked_decode(&d, part, strlen(part), &used, &data, &dlen), MG_CHUNKED_AGAIN);
    assert_int_equal(used, 3);
}

static void chunked_trailer_rejects(void **state)
{
    static const char *bad_trailers[] = {
        "0\r\nX-T : 1\r\n\r\n",        /* whitespace before the colon */
        "0\r\nX-T 1\r\n\r\n",          /* no colon */
        "0\r\n: 1\r\n\r\n",            /* empty name */
        "0\r\nX(T): 1\r\n\r\n",        /* not a token */
        "0\r\nX-T: 1\r\n folded\r\n\r\n", /* obs-fold */
        "0\r\nX-T: 1\nX-U: 2\r\n\r\n", /* bare LF */
        "0\r\nX-T: 1\rX\r\n\r\n",      /* bare CR */
        "0\r\nX-T: a\x01b\r\n\r\n",     /* a control character */
        "0\r\nX-T: 1\r\n\rX",           /* bare CR ending the section */
    };
    for (size_t i = 0; i < sizeof(bad_trailers) / sizeof(bad_trailers[0]); i++) {
        char out[64], text[256];
        size_t outlen;
        size_t len = strlen(bad_trailers[i]);
        /* dropped or captured, whole or byte by byte: refused every way */
        if (decode_split(bad_trailers[i], len, len, out, &outlen) != MG_CHUNKED_ERROR)
            fail_msg("dropped: %s accepted", bad_trailers[i]);
        size_t cut = len;
        if (decode_pieces(bad_trailers[i], len, &cut, 1, out, &outlen, text) != MG_CHUNKED_ERROR)
            fail_msg("captured: %s accepted", bad_trailers[i]);
        if (decode_bytewise(bad_trailers[i], len, out, &outlen, text) != MG_CHUNKED_ERROR)
            fail_msg("captured byte by byte: %s accepted", bad_trailers[i]);
    }
    /* a NUL in a value (not a C string) */
    const char nul[] = "0\r\nX-T: a\0b\r\n\r\n";
    char out[64], text[256];
    size_t outlen;
    assert_int_equal(decode_split(nul, sizeof(nul) - 1, 0, out, &outlen), MG_CHUNKED_ERROR);
    assert_int_equal(decode_bytewise(nul, sizeof(nul) - 1, out, &outlen, text), MG_CHUNKED_ERROR);

    /* the section is bounded by MG_CHUNKED_MAX_TRAILER, final CRLF included, both ways */
    for (int over = 0; over <= 1; over++) {
        size_t total = 3 + MG_CHUNKED_MAX_TRAILER + (size_t)over; /* "0\r\n" + section */
        char *big = malloc(total + 1);
        memcpy(big, "0\r\nX-Big: ", 10);
        memset(big + 10, 'v', total - 10 - 4);
        memcpy(big + total - 4, "\r\n\r\n", 4);
        char *o = malloc(total), *t = malloc(2 * total + 1);
        int want = over ? MG_CHUNKED_ERROR : MG_CHUNKED_DONE;
        assert_int_equal(decode_split(big, total, total / 2, o, &outlen), want);
        size_t cut = total / 3;
        assert_int_equal(decode_pieces(big, total, &cut, 1, o, &outlen, t), want);
        free(big);
        free(o);
        free(t);
    }
    /* more fields than the caller's array holds */
    const char *many = "0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    mg_header_t th[2];
    mg_chunked_t d;
    mg_chunked_init(&d);
    mg_chunked_capture_trailers(&d, th, 2);
    size_t used;
    const char *data;
    size_t dlen;
    assert_int_equal(mg_chunked_decode(&d, many, strlen(many), &used, &data, &dlen), MG_CHUNKED_ERROR);
    assert_string_equal(d.error, "too many trailer fields");
}

/*
 * Values, targets and names are scanned 16 bytes a step: a byte that breaks
 * the rules is refused wherever it sits in a long run (inside the first
 * block, across the boundary, in the tail), and fine bytes pass.
 */
static size_t with_run(char *buf, const char *before, const char *run, const char *after)
{
    size_t a = strlen(before), c = strlen(after);
    memcpy(buf, before, a);
    memcpy(buf + a, run, 40); /* NUL included: the parser is given lengths, never strings */
    memcpy(buf + a + 40, after, c);
    return a + 40 + c;
}

static void long_runs(void **state)
{
    mg_header_t h[16];
    mg_http1_request_t r = { .headers = h };
    char buf[512], run[41];
    for (int at = 0; at < 40; at++) {
        static const unsigned char bad_value[] = { 0x00, 0x01, 0x0b, 0x1f, 0x7f, '\n' };
        static const unsigned char bad_target[] = { 0x00, 0x1f, 0x7f, 0x80, 0xff, '\t' };
        static const unsigned char bad_name[] = { ' ', '"', '(', '/', '@', 0x80, 0x7f, 0x00 };
        for (size_t k = 0; k < sizeof(bad_value); k++) {
            memset(run, 'v', 40), run[at] = (char)bad_value[k];
            size_t n = with_run(buf, "GET / HTTP/1.1\r\nHost: a\r\nX-Long: ", run, "\r\n\r\n");
            assert_true(mg_http1_parse_request(buf, n, &r, &LIM) < 0);
        }
        for (size_t k = 0; k < sizeof(bad_target); k++) {
            memset(run, 'p', 40), run[at] = (char)bad_target[k];
            size_t n = with_run(buf, "GET /", run, " HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_true(mg_http1_parse_request(buf, n, &r, &LIM) < 0);
        }
        for (size_t k = 0; k < sizeof(bad_name); k++) {
            memset(run, 'n', 40), run[at] = (char)bad_name[k];
            size_t n = with_run(buf, "GET / HTTP/1.1\r\nHost: a\r\nX", run, ": v\r\n\r\n");
            assert_true(mg_http1_parse_request(buf, n, &r, &LIM) < 0);
        }
        /* what is allowed there passes: obs-text and tabs in values, token punctuation in names */
        memset(run, 'v', 40), run[40] = 0, run[at] = (char)(at % 2 ? 0x80 : '\t');
        snprintf(buf, sizeof(buf), "GET /%.*s HTTP/1.1\r\nHost: a\r\nX-%.*s_!~: %s\r\n\r\n", at, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN",
                 at, "abcdefghijklmnopqrstuvwxyz0123456789-ABC", run);
        assert_true(parse(buf, &r, h) > 0);
        assert_int_equal(h[1].value_len, (run[0] == '\t' || run[39] == '\t') ? 39 : 40); /* a tab at either end is OWS */
    }
}

/* Names the parser acts on are matched in any case, and only those names. */
static void name_matching(void **state)
{
    mg_header_t h[16];
    mg_http1_request_t r;
    assert_true(parse("POST / HTTP/1.1\r\nHost: a\r\nCONTENT-LENGTH: 5\r\n\r\n", &r, h) > 0);
    assert_int_equal(r.content_length, 5);
    assert_true(parse("POST / HTTP/1.1\r\nHost: a\r\ncOnTeNt-LeNgTh: 7\r\n\r\n", &r, h) > 0);
    assert_int_equal(r.content_length, 7);
    assert_true(parse("POST / HTTP/1.1\r\nHost: a\r\nTRANSFER-ENCODING: CHUNKED\r\n\r\n", &r, h) > 0);
    assert_true(r.flags & MG_HTTP1_F_CHUNKED);
    assert_true(parse("GET / HTTP/1.1\r\nHost: a\r\nCONNECTION: CLOSE\r\n\r\n", &r, h) > 0);
    assert_true(r.flags & MG_HTTP1_F_CONN_CLOSE);
    static const char *others[] = { "Content_Length", "Content-Lengtx", "Content-Length2", "Content-Lengt", "Contenu-Length",
                                    "Content~Length", "Content.Length" };
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++) {
        char buf[128];
        snprintf(buf, sizeof(buf), "POST / HTTP/1.1\r\nHost: a\r\n%s: 5\r\n\r\n", others[i]);
        assert_true(parse(buf, &r, h) > 0);
        assert_int_equal(r.content_length, -1);
        assert_false(mg_http1_name_is(&h[1], "content-length", 14));
    }
    mg_header_t te = { "TE", 2, "trailers", 8 };
    assert_true(mg_http1_name_is(&te, "te", 2));
    mg_header_t xff = { "X-Forwarded-FOR", 15, "", 0 };
    assert_true(mg_http1_name_is(&xff, "x-forwarded-for", 15));
    assert_false(mg_http1_name_is(&xff, "x-forwarded-fo", 14));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(simple_get),
        cmocka_unit_test(framing_flags),
        cmocka_unit_test(smuggling_vectors),
        cmocka_unit_test(limits),
        cmocka_unit_test(long_runs),
        cmocka_unit_test(name_matching),
        cmocka_unit_test(incremental_every_split),
        cmocka_unit_test(response_heads),
        cmocka_unit_test(chunked_every_boundary),
        cmocka_unit_test(chunked_rejects),
        cmocka_unit_test(chunked_trailers_captured),
        cmocka_unit_test(chunked_trailer_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
