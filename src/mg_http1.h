/*
 * mg_http1 — stateless, zero-copy HTTP/1.1 message parser (RFC 9110/9112).
 *
 * No I/O and no allocation here. The caller owns the buffer and the header
 * array; every pointer the parser hands back points into the caller's buffer
 * and is valid exactly as long as that buffer is.
 *
 * The parser is strict on purpose: a gateway that is lenient where its
 * upstream is strict (or the reverse) is how request smuggling happens. Every
 * framing ambiguity is an error, classified so the caller can pick the status.
 */
#ifndef MG_HTTP1_H
#define MG_HTTP1_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Return codes of the head parsers. >0 is the length of the parsed head. */
#define MG_HTTP1_AGAIN              (-2)  /* head incomplete: read more, call again */
#define MG_HTTP1_EBAD               (-10) /* malformed: 400 */
#define MG_HTTP1_ELINE              (-11) /* request line / URI too long: 414 */
#define MG_HTTP1_EHEADER_SIZE       (-12) /* header block too large: 431 */
#define MG_HTTP1_EHEADER_COUNT      (-13) /* too many header fields: 431 */
#define MG_HTTP1_EVERSION           (-14) /* HTTP version other than 1.0/1.1: 505 */
#define MG_HTTP1_ECODING            (-15) /* a transfer coding we do not implement: 501 */
#define MG_HTTP1_EEXPECT            (-16) /* an expectation other than 100-continue: 417 */

/* Framing flags found while parsing the head. */
#define MG_HTTP1_F_CHUNKED          0x01u /* Transfer-Encoding: chunked */
#define MG_HTTP1_F_CONN_CLOSE       0x02u /* Connection: close */
#define MG_HTTP1_F_CONN_KEEPALIVE   0x04u /* Connection: keep-alive (matters for 1.0) */
#define MG_HTTP1_F_EXPECT_CONTINUE  0x08u /* Expect: 100-continue */
#define MG_HTTP1_F_HAS_CL           0x10u /* a Content-Length was present */

typedef struct mg_header {
    const char *name;
    size_t name_len;
    const char *value; /* trimmed of leading and trailing whitespace */
    size_t value_len;
} mg_header_t;

typedef struct mg_http1_limits {
    size_t max_line;      /* request line (method + target + version) */
    size_t max_head;      /* whole head including the request line */
    size_t max_headers;   /* number of header fields; must be <= the caller's array */
} mg_http1_limits_t;

typedef struct mg_http1_request {
    const char *method;
    size_t method_len;
    const char *target;
    size_t target_len;
    int minor_version;          /* 0 or 1 */
    mg_header_t *headers;       /* in: caller's array; out: the fields in order */
    size_t num_headers;         /* out: fields used */
    int64_t content_length;     /* -1 when absent */
    const char *host;           /* the Host field value, NULL when absent */
    size_t host_len;
    unsigned flags;             /* MG_HTTP1_F_* */
    const char *error;          /* on failure: a short static reason for the log */
} mg_http1_request_t;

typedef struct mg_http1_response {
    int minor_version;
    int status;
    const char *reason;
    size_t reason_len;
    mg_header_t *headers;
    size_t num_headers;
    int64_t content_length;
    unsigned flags;
    const char *error;
} mg_http1_response_t;

/*
 * Parse a request head from buf[0..len). `req->headers` must point at an array
 * of at least `lim->max_headers` entries. Leading empty lines are skipped
 * (RFC 9112 §2.2). Returns the head length (the body starts at buf + n),
 * MG_HTTP1_AGAIN, or a negative MG_HTTP1_E* code with `req->error` set.
 */
int mg_http1_parse_request(const char *buf, size_t len, mg_http1_request_t *req,
                           const mg_http1_limits_t *lim);

/* Same contract for a response head (status line instead of request line). */
int mg_http1_parse_response(const char *buf, size_t len, mg_http1_response_t *resp,
                            const mg_http1_limits_t *lim);

/*
 * Case-insensitive compare of a token (a field name, a coding) with a
 * literal of lowercase letters, digits and '-', eight bytes a step: with
 * such a literal, "x | 0x20 equals it" holds only for its own byte in either
 * case, or for a control character, which no token holds. Called for every
 * field of every message against the names that matter, hence inline.
 */
static inline int mg_ascii_ieq(const char *a, const char *lw, size_t n)
{
    for (; n >= 8; n -= 8, a += 8, lw += 8) {
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, lw, 8);
        if ((x | 0x2020202020202020ull) != y)
            return 0;
    }
    for (; n; n--, a++, lw++)
        if (((unsigned char)*a | 0x20) != (unsigned char)*lw)
            return 0;
    return 1;
}

static inline int mg_http1_name_is(const mg_header_t *h, const char *lower, size_t lower_len)
{
    return h->name_len == lower_len && mg_ascii_ieq(h->name, lower, lower_len);
}

/* The status code a head-parse error maps to. */
int mg_http1_error_status(int rc);

/* ---- chunked transfer coding ---- */

#define MG_CHUNKED_AGAIN   0  /* all input consumed, need more */
#define MG_CHUNKED_DATA    1  /* *data / *data_len hold a span of body bytes */
#define MG_CHUNKED_DONE    2  /* last chunk and trailers consumed */
#define MG_CHUNKED_ERROR  (-1)

#define MG_CHUNKED_MAX_LINE     4096  /* chunk-size line with extensions */
#define MG_CHUNKED_MAX_TRAILER  8192  /* the trailer section, its final CRLF included */

typedef struct mg_chunked {
    uint64_t remaining;   /* bytes left in the current chunk */
    uint32_t line_len;    /* bytes seen on the current size line */
    uint32_t trailer_len;
    uint8_t state;
    uint8_t digits;
    uint8_t in_ext;       /* past the ';' that starts chunk extensions */
    const char *error;
    /* trailer capture (mg_chunked_capture_trailers); NULL: validated and dropped */
    mg_header_t *trailers;
    size_t max_trailers;
    size_t num_trailers;  /* out: the fields captured, valid on MG_CHUNKED_DONE */
} mg_chunked_t;

/* Start a decoder (all-zero is also a valid start state: trailers are dropped). */
void mg_chunked_init(mg_chunked_t *d);

/*
 * Asks an initialised decoder to hand the trailer fields back instead of
 * dropping them: on MG_CHUNKED_DONE, h[0..d->num_trailers) hold them in
 * order, pointing into the buffer of that last mg_chunked_decode call
 * (borrowed: valid as long as that buffer is). The caller's array has room
 * for max fields; more is an error ("too many trailer fields").
 *
 * Capture changes one rule of mg_chunked_decode: the trailer section is
 * parsed whole, so while it is incomplete MG_CHUNKED_AGAIN leaves it
 * unconsumed (*consumed < len): the caller keeps buf[*consumed..len) and
 * calls again with those bytes followed by the new ones (as for a head).
 */
void mg_chunked_capture_trailers(mg_chunked_t *d, mg_header_t *h, size_t max);

/*
 * Decode from buf[0..len). Sets *consumed to the bytes used. On MG_CHUNKED_DATA
 * the span [*data, *data + *data_len) lies inside buf (borrowed, zero-copy) and
 * the caller calls again with the rest. On MG_CHUNKED_AGAIN every byte was
 * consumed (unless trailers are captured, see above). Trailer fields follow
 * the rules of head fields (a token name, no whitespace before the colon, no
 * obs-fold, no bare CR/LF, no NUL or other controls in values) and the whole
 * section is bounded by MG_CHUNKED_MAX_TRAILER; they are checked and dropped,
 * or captured. Their meaning (e.g. a forbidden Content-Length) is the
 * caller's to judge. On MG_CHUNKED_ERROR, d->error says why.
 */
int mg_chunked_decode(mg_chunked_t *d, const char *buf, size_t len, size_t *consumed,
                      const char **data, size_t *data_len);

#endif
