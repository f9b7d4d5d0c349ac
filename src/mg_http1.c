/*
 * mg_http1 — see mg_http1.h. One pass over the buffer per call; the caller
 * only calls again when new bytes arrived, and heads are bounded by limits,
 * so re-parsing an incomplete head is cheap and keeps the parser stateless.
 */
#include "mg_http1.h"

#include <string.h>

/* tchar per RFC 9110 §5.6.2 */
static const unsigned char token_tab[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1,
    ['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};

static inline int is_token(unsigned char c) { return token_tab[c]; }
/* field-vchar / SP / HTAB / obs-text; everything else (NUL, bare CR, CTLs, DEL) is refused */
static inline int is_field_char(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }
static inline int is_ows(unsigned char c) { return c == ' ' || c == '\t'; }
static inline unsigned char lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? c | 0x20 : c; }

/*
 * Where a run of plain bytes ends, 16 at a time: plain is lo..0x7e, and
 * 0x80..0xff too when high (field values take obs-text, targets do not).
 * The byte-at-a-time loop after it decides about the byte it stops at (a tab
 * in a value is fine), so the fast path changes no rule, only how many bytes
 * one step covers: a Date value is two steps instead of 29.
 */
#ifdef __SSE2__
#include <emmintrin.h>
static inline const char *plain_run(const char *p, const char *end, unsigned char lo, int high)
{
    const __m128i vlo = _mm_set1_epi8((char)lo), vdel = _mm_set1_epi8(0x7f), vtop = _mm_set1_epi8(0x7e);
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i ok = _mm_cmpeq_epi8(_mm_max_epu8(x, vlo), x); /* x >= lo */
        ok = high ? _mm_andnot_si128(_mm_cmpeq_epi8(x, vdel), ok)
                  : _mm_and_si128(ok, _mm_cmpeq_epi8(_mm_min_epu8(x, vtop), x)); /* x <= 0x7e */
        unsigned bad = ~(unsigned)_mm_movemask_epi8(ok) & 0xffffu;
        if (bad)
            return p + __builtin_ctz(bad);
        p += 16;
    }
    return p;
}

static inline __m128i in_range(__m128i x, char a, char b)
{
    return _mm_cmpeq_epi8(_mm_min_epu8(_mm_max_epu8(x, _mm_set1_epi8(a)), _mm_set1_epi8(b)), x);
}

/* The same for the usual token bytes (letters, digits, '-'): a field name's run up to its colon. */
static inline const char *token_run(const char *p, const char *end)
{
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i ok = _mm_or_si128(in_range(_mm_or_si128(x, _mm_set1_epi8(0x20)), 'a', 'z'),
                                  _mm_or_si128(in_range(x, '0', '9'), _mm_cmpeq_epi8(x, _mm_set1_epi8('-'))));
        unsigned bad = ~(unsigned)_mm_movemask_epi8(ok) & 0xffffu;
        if (bad)
            return p + __builtin_ctz(bad);
        p += 16;
    }
    return p;
}
#else
static inline const char *token_run(const char *p, const char *end)
{
    (void)end;
    return p;
}

static inline const char *plain_run(const char *p, const char *end, unsigned char lo, int high)
{
    (void)end, (void)lo, (void)high;
    return p;
}
#endif

/* A list item or value against a literal (mg_ascii_ieq: no value byte is a control but tab, which matches none). */
static int ieq(const char *a, size_t alen, const char *lw)
{
    size_t n = strlen(lw);
    return alen == n && mg_ascii_ieq(a, lw, n);
}

int mg_http1_error_status(int rc)
{
    switch (rc) {
    case MG_HTTP1_ELINE: return 414;
    case MG_HTTP1_EHEADER_SIZE:
    case MG_HTTP1_EHEADER_COUNT: return 431;
    case MG_HTTP1_EVERSION: return 505;
    case MG_HTTP1_ECODING: return 501;
    case MG_HTTP1_EEXPECT: return 417;
    default: return 400;
    }
}

/* Parses "HTTP/1.x" at p; returns the minor version, -1 malformed, -2 another version. */
static int parse_version(const char *p, size_t n)
{
    if (n != 8 || memcmp(p, "HTTP/", 5) != 0 || p[6] != '.')
        return -1;
    if (p[5] < '0' || p[5] > '9' || p[7] < '0' || p[7] > '9')
        return -1;
    if (p[5] != '1' || (p[7] != '0' && p[7] != '1'))
        return -2;
    return p[7] - '0';
}

/* Iterates a comma-separated list value; returns 0 at the end. */
static int next_list_item(const char **p, const char *end, const char **item, size_t *item_len)
{
    const char *s = *p;
    while (s < end && (is_ows((unsigned char)*s) || *s == ','))
        s++;
    if (s == end)
        return 0;
    const char *e = s;
    while (e < end && *e != ',')
        e++;
    *p = e;
    const char *t = e;
    while (t > s && is_ows((unsigned char)t[-1]))
        t--;
    *item = s;
    *item_len = (size_t)(t - s);
    return 1;
}

typedef struct head_state {
    mg_header_t *headers;
    size_t num_headers;
    int64_t content_length;
    unsigned flags;
    const char *host;
    size_t host_len;
    int host_count;
    int te_count;        /* number of transfer codings seen over all TE fields */
    int te_last_chunked; /* the last coding seen is chunked */
    int te_chunked_seen_before_last;
    int te_unknown;
    int expect_other;
    int trailer;         /* a trailer section: fields are checked, their meaning is the caller's */
    const char *error;
} head_state_t;

/* Interprets the framing-relevant fields as they are parsed. */
static int on_field(head_state_t *st, const mg_header_t *h)
{
    switch (h->name_len) { /* the fields below have these lengths; most fields are none of them */
    case 4: case 6: case 10: case 14: case 17: break;
    default: return 0;
    }
    if (mg_http1_name_is(h, "content-length", 14)) {
        const char *p = h->value, *end = h->value + h->value_len, *it;
        size_t il;
        int any = 0;
        while (next_list_item(&p, end, &it, &il)) {
            if (il == 0 || il > 18) {
                st->error = il ? "content-length too large" : "empty content-length";
                return MG_HTTP1_EBAD;
            }
            int64_t v = 0;
            for (size_t i = 0; i < il; i++) {
                if (it[i] < '0' || it[i] > '9') {
                    st->error = "malformed content-length";
                    return MG_HTTP1_EBAD;
                }
                v = v * 10 + (it[i] - '0');
            }
            if ((st->flags & MG_HTTP1_F_HAS_CL) && v != st->content_length) {
                st->error = "conflicting content-length";
                return MG_HTTP1_EBAD;
            }
            st->content_length = v;
            st->flags |= MG_HTTP1_F_HAS_CL;
            any = 1;
        }
        if (!any) {
            st->error = "empty content-length";
            return MG_HTTP1_EBAD;
        }
    } else if (mg_http1_name_is(h, "transfer-encoding", 17)) {
        const char *p = h->value, *end = h->value + h->value_len, *it;
        size_t il;
        while (next_list_item(&p, end, &it, &il)) {
            if (st->te_last_chunked)
                st->te_chunked_seen_before_last = 1;
            st->te_last_chunked = ieq(it, il, "chunked");
            if (!st->te_last_chunked)
                st->te_unknown = 1;
            st->te_count++;
        }
        if (st->te_count == 0) {
            st->error = "empty transfer-encoding";
            return MG_HTTP1_EBAD;
        }
    } else if (mg_http1_name_is(h, "host", 4)) {
        st->host = h->value;
        st->host_len = h->value_len;
        st->host_count++;
    } else if (mg_http1_name_is(h, "connection", 10)) {
        const char *p = h->value, *end = h->value + h->value_len, *it;
        size_t il;
        while (next_list_item(&p, end, &it, &il)) {
            if (ieq(it, il, "close"))
                st->flags |= MG_HTTP1_F_CONN_CLOSE;
            else if (ieq(it, il, "keep-alive"))
                st->flags |= MG_HTTP1_F_CONN_KEEPALIVE;
        }
    } else if (mg_http1_name_is(h, "expect", 6)) {
        if (ieq(h->value, h->value_len, "100-continue"))
            st->flags |= MG_HTTP1_F_EXPECT_CONTINUE;
        else
            st->expect_other = 1;
    }
    return 0;
}

/*
 * Parses header fields from p up to and including the empty line.
 * Returns the offset just past the head, MG_HTTP1_AGAIN or an error.
 */
static int parse_fields(const char *buf, const char *p, const char *end, head_state_t *st,
                        const mg_http1_limits_t *lim)
{
    for (;;) {
        if (p == end)
            goto again;
        if (*p == '\r') {
            if (p + 1 == end)
                goto again;
            if (p[1] != '\n') {
                st->error = "bare CR";
                return MG_HTTP1_EBAD;
            }
            p += 2;
            if ((size_t)(p - buf) > lim->max_head) {
                st->error = "header block too large";
                return MG_HTTP1_EHEADER_SIZE;
            }
            return (int)(p - buf);
        }
        if (is_ows((unsigned char)*p)) {
            st->error = "obsolete line folding";
            return MG_HTTP1_EBAD;
        }
        const char *name = p;
        p = token_run(p, end);
        while (p < end && is_token((unsigned char)*p))
            p++;
        if (p == end)
            goto again;
        if (*p != ':') {
            st->error = (is_ows((unsigned char)*p)) ? "whitespace before colon" : "invalid header name";
            return MG_HTTP1_EBAD;
        }
        if (p == name) {
            st->error = "empty header name";
            return MG_HTTP1_EBAD;
        }
        size_t name_len = (size_t)(p - name);
        p++;
        while (p < end && is_ows((unsigned char)*p))
            p++;
        const char *value = p;
        p = plain_run(p, end, 0x20, 1);
        while (p < end && is_field_char((unsigned char)*p))
            p++;
        if (p == end)
            goto again;
        if (*p != '\r') {
            st->error = (*p == '\n') ? "bare LF" : "invalid character in header value";
            return MG_HTTP1_EBAD;
        }
        if (p + 1 == end)
            goto again;
        if (p[1] != '\n') {
            st->error = "bare CR";
            return MG_HTTP1_EBAD;
        }
        const char *vend = p;
        while (vend > value && is_ows((unsigned char)vend[-1]))
            vend--;
        p += 2;
        if ((size_t)(p - buf) > lim->max_head) {
            st->error = "header block too large";
            return MG_HTTP1_EHEADER_SIZE;
        }
        if (st->num_headers == lim->max_headers) {
            st->error = "too many header fields";
            return MG_HTTP1_EHEADER_COUNT;
        }
        mg_header_t *h = &st->headers[st->num_headers++];
        h->name = name;
        h->name_len = name_len;
        h->value = value;
        h->value_len = (size_t)(vend - value);
        int rc = st->trailer ? 0 : on_field(st, h);
        if (rc)
            return rc;
    }
again:
    if ((size_t)(end - buf) > lim->max_head) {
        st->error = "header block too large";
        return MG_HTTP1_EHEADER_SIZE;
    }
    return MG_HTTP1_AGAIN;
}

/* The checks that need the whole head: message framing (RFC 9112 §6). */
static int check_framing(head_state_t *st, int minor, int is_request)
{
    if (st->te_count) {
        if (st->flags & MG_HTTP1_F_HAS_CL) {
            st->error = "both content-length and transfer-encoding";
            return MG_HTTP1_EBAD;
        }
        if (minor == 0 && is_request) {
            st->error = "transfer-encoding in an HTTP/1.0 request";
            return MG_HTTP1_EBAD;
        }
        if (!st->te_last_chunked || st->te_chunked_seen_before_last) {
            st->error = "transfer-encoding other than a final chunked";
            return MG_HTTP1_EBAD;
        }
        if (st->te_unknown && is_request) {
            st->error = "unsupported transfer coding";
            return MG_HTTP1_ECODING;
        }
        st->flags |= MG_HTTP1_F_CHUNKED;
    }
    if (is_request) {
        if (st->host_count > 1 || (minor == 1 && st->host_count == 0)) {
            st->error = st->host_count ? "more than one host field" : "missing host field";
            return MG_HTTP1_EBAD;
        }
        if (st->expect_other) {
            st->error = "unsupported expectation";
            return MG_HTTP1_EEXPECT;
        }
    }
    return 0;
}

static void state_init(head_state_t *st, mg_header_t *headers)
{
    memset(st, 0, sizeof(*st));
    st->headers = headers;
    st->content_length = -1;
}

int mg_http1_parse_request(const char *buf, size_t len, mg_http1_request_t *req,
                           const mg_http1_limits_t *lim)
{
    const char *p = buf, *end = buf + len;
    head_state_t st;
    state_init(&st, req->headers);
    req->num_headers = 0;
    req->error = NULL;

    /* RFC 9112 §2.2: ignore at least one empty line before the request line. */
    while (end - p >= 2 && p[0] == '\r' && p[1] == '\n')
        p += 2;
    const char *line = p;
    if (end - p == 1 && p[0] == '\r')
        return MG_HTTP1_AGAIN; /* an empty line cut after its CR: its LF is on the way */

#define FAIL(code, why) do { req->error = (why); return (code); } while (0)
    /* method */
    while (p < end && is_token((unsigned char)*p))
        p++;
    if (p == end)
        goto line_again;
    if (*p != ' ' || p == line)
        FAIL(MG_HTTP1_EBAD, p == line ? "empty or invalid method" : "invalid method");
    req->method = line;
    req->method_len = (size_t)(p - line);
    p++;
    /* request-target: visible US-ASCII only; a second SP or a CTL ends or breaks it */
    const char *target = p;
    p = plain_run(p, end, 0x21, 0);
    while (p < end && (unsigned char)*p > 0x20 && (unsigned char)*p < 0x7f)
        p++;
    if (p == end)
        goto line_again;
    if (*p != ' ' || p == target)
        FAIL(MG_HTTP1_EBAD, p == target ? "empty request target" : "invalid character in request target");
    req->target = target;
    req->target_len = (size_t)(p - target);
    p++;
    const char *ver = p;
    while (p < end && *p != '\r' && *p != '\n' && (size_t)(p - ver) <= 8)
        p++;
    if (p == end)
        goto line_again;
    if ((size_t)(p - line) > lim->max_line)
        FAIL(MG_HTTP1_ELINE, "request line too long");
    int minor = parse_version(ver, (size_t)(p - ver));
    if (minor == -2)
        FAIL(MG_HTTP1_EVERSION, "unsupported HTTP version");
    if (minor < 0)
        FAIL(MG_HTTP1_EBAD, "malformed HTTP version");
    if (*p != '\r')
        FAIL(MG_HTTP1_EBAD, "bare LF");
    if (p + 1 == end)
        goto line_again;
    if (p[1] != '\n')
        FAIL(MG_HTTP1_EBAD, "bare CR");
    p += 2;
    req->minor_version = minor;

    int rc = parse_fields(buf, p, end, &st, lim);
    if (rc > 0)
        rc = check_framing(&st, minor, 1) ?: rc;
    req->num_headers = st.num_headers;
    req->flags = st.flags;
    req->content_length = st.content_length;
    req->host = st.host;
    req->host_len = st.host_len;
    req->error = st.error;
    return rc;

line_again:
    if ((size_t)(end - line) > lim->max_line)
        FAIL(MG_HTTP1_ELINE, "request line too long");
    return MG_HTTP1_AGAIN;
#undef FAIL
}

int mg_http1_parse_response(const char *buf, size_t len, mg_http1_response_t *resp,
                            const mg_http1_limits_t *lim)
{
    const char *p = buf, *end = buf + len;
    head_state_t st;
    state_init(&st, resp->headers);
    resp->num_headers = 0;
    resp->error = NULL;

    if (len < 13) {
        /* validate the prefix we have so garbage fails fast */
        static const char pre[] = "HTTP/1.";
        size_t n = len < 7 ? len : 7;
        if (memcmp(buf, pre, n) != 0) {
            resp->error = "malformed status line";
            return MG_HTTP1_EBAD;
        }
        return MG_HTTP1_AGAIN;
    }
    int minor = parse_version(p, 8);
    if (minor < 0 || p[8] != ' ') {
        resp->error = "malformed status line";
        return minor == -2 ? MG_HTTP1_EVERSION : MG_HTTP1_EBAD;
    }
    p += 9;
    if (p[0] < '1' || p[0] > '9' || p[1] < '0' || p[1] > '9' || p[2] < '0' || p[2] > '9') {
        resp->error = "malformed status code";
        return MG_HTTP1_EBAD;
    }
    resp->status = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    p += 3;
    if (*p != ' ' && *p != '\r') {
        resp->error = "malformed status line";
        return MG_HTTP1_EBAD;
    }
    if (*p == ' ')
        p++;
    const char *reason = p;
    while (p < end && is_field_char((unsigned char)*p))
        p++;
    if (p == end || p + 1 == end) {
        if ((size_t)(end - buf) > lim->max_line) {
            resp->error = "status line too long";
            return MG_HTTP1_EBAD;
        }
        return MG_HTTP1_AGAIN;
    }
    if (p[0] != '\r' || p[1] != '\n') {
        resp->error = "malformed status line";
        return MG_HTTP1_EBAD;
    }
    resp->minor_version = minor;
    resp->reason = reason;
    resp->reason_len = (size_t)(p - reason);
    p += 2;
    int rc = parse_fields(buf, p, end, &st, lim);
    if (rc > 0)
        rc = check_framing(&st, minor, 0) ?: rc;
    resp->num_headers = st.num_headers;
    resp->flags = st.flags;
    resp->content_length = st.content_length;
    resp->error = st.error;
    return rc;
}

/* ---- chunked ---- */

enum {
    CH_SIZE = 0,   /* reading hex digits */
    CH_EXT,        /* after the size: BWS, extensions, up to CR */
    CH_SIZE_LF,
    CH_DATA,
    CH_DATA_CR,
    CH_DATA_LF,
    CH_TRAILER,    /* at the start of a trailer line (or the final CRLF) */
    CH_TRAILER_NAME,
    CH_TRAILER_VALUE,
    CH_TRAILER_LF,
    CH_END_LF,
    CH_DONE,
};

void mg_chunked_init(mg_chunked_t *d)
{
    memset(d, 0, sizeof(*d));
}

void mg_chunked_capture_trailers(mg_chunked_t *d, mg_header_t *h, size_t max)
{
    d->trailers = h;
    d->max_trailers = max;
    d->num_trailers = 0;
}

/*
 * Captured trailers: the section is parsed whole by the head-field parser
 * (the same rules, the same code), from buf + i, the start of its first line.
 * Incomplete, it stays unconsumed and is parsed again with more bytes, as a
 * head is; MG_CHUNKED_MAX_TRAILER bounds that.
 */
static int capture_trailers(mg_chunked_t *d, const char *buf, size_t len, size_t i, size_t *consumed)
{
    head_state_t st;
    state_init(&st, d->trailers);
    st.trailer = 1;
    const mg_http1_limits_t lim = { .max_head = MG_CHUNKED_MAX_TRAILER, .max_headers = d->max_trailers };
    int rc = parse_fields(buf + i, buf + i, buf + len, &st, &lim);
    *consumed = i;
    if (rc == MG_HTTP1_AGAIN)
        return MG_CHUNKED_AGAIN;
    if (rc < 0) {
        d->error = rc == MG_HTTP1_EHEADER_SIZE ? "trailer section too large"
                 : rc == MG_HTTP1_EHEADER_COUNT ? "too many trailer fields" : st.error;
        return MG_CHUNKED_ERROR;
    }
    d->num_trailers = st.num_headers;
    d->state = CH_DONE;
    *consumed = i + (size_t)rc;
    return MG_CHUNKED_DONE;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    c = lower(c);
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

int mg_chunked_decode(mg_chunked_t *d, const char *buf, size_t len, size_t *consumed,
                      const char **data, size_t *data_len)
{
    size_t i = 0;
#define CH_FAIL(why) do { d->error = (why); *consumed = i; return MG_CHUNKED_ERROR; } while (0)
    while (i < len) {
        unsigned char c = (unsigned char)buf[i];
        switch (d->state) {
        case CH_SIZE: {
            int v = hexval(c);
            if (v >= 0) {
                d->line_len++;
                /* 15 hex digits (< 2^60) is far beyond any body limit and cannot overflow */
                if (++d->digits > 15)
                    CH_FAIL("chunk size overflow");
                d->remaining = (d->remaining << 4) | (uint64_t)v;
                i++;
                break;
            }
            if (d->digits == 0)
                CH_FAIL("missing chunk size");
            d->state = CH_EXT;
            break; /* re-examine c in CH_EXT */
        }
        case CH_EXT:
            if (++d->line_len > MG_CHUNKED_MAX_LINE)
                CH_FAIL("chunk-size line too long");
            /* chunk-size BWS [";" chunk-ext] CRLF: only whitespace may precede the ';' */
            if (c == '\r') {
                d->state = CH_SIZE_LF;
            } else if (!is_field_char(c)) {
                CH_FAIL("invalid character in chunk extension");
            } else if (c == ';') {
                d->in_ext = 1;
            } else if (!d->in_ext && !is_ows(c)) {
                CH_FAIL("invalid chunk size");
            }
            i++;
            break;
        case CH_SIZE_LF:
            if (c != '\n')
                CH_FAIL("bare CR in chunk-size line");
            i++;
            d->line_len = 0;
            d->digits = 0;
            d->in_ext = 0;
            d->state = d->remaining ? CH_DATA : CH_TRAILER;
            break;
        case CH_DATA: {
            size_t n = len - i;
            if (n > d->remaining)
                n = (size_t)d->remaining;
            *data = buf + i;
            *data_len = n;
            d->remaining -= n;
            i += n;
            if (d->remaining == 0)
                d->state = CH_DATA_CR;
            *consumed = i;
            return MG_CHUNKED_DATA;
        }
        case CH_DATA_CR:
            if (c != '\r')
                CH_FAIL("chunk data longer than its size");
            i++;
            d->state = CH_DATA_LF;
            break;
        case CH_DATA_LF:
            if (c != '\n')
                CH_FAIL("bare CR after chunk data");
            i++;
            d->state = CH_SIZE;
            break;
        /*
         * Trailer fields, dropped: the grammar of parse_fields (what capture
         * uses) byte by byte, so both ways accept exactly the same sections.
         * Every byte of the section counts towards MG_CHUNKED_MAX_TRAILER.
         */
        case CH_TRAILER:
            if (d->trailers)
                return capture_trailers(d, buf, len, i, consumed);
            if (++d->trailer_len > MG_CHUNKED_MAX_TRAILER)
                CH_FAIL("trailer section too large");
            if (c == '\r')
                d->state = CH_END_LF;
            else if (is_token(c))
                d->state = CH_TRAILER_NAME;
            else
                CH_FAIL(is_ows(c) ? "obsolete line folding in trailer" : "invalid trailer field name");
            i++;
            break;
        case CH_TRAILER_NAME:
            if (++d->trailer_len > MG_CHUNKED_MAX_TRAILER)
                CH_FAIL("trailer section too large");
            if (c == ':')
                d->state = CH_TRAILER_VALUE;
            else if (!is_token(c))
                CH_FAIL(is_ows(c) ? "whitespace before colon in trailer" : "invalid trailer field name");
            i++;
            break;
        case CH_TRAILER_VALUE:
            if (++d->trailer_len > MG_CHUNKED_MAX_TRAILER)
                CH_FAIL("trailer section too large");
            if (c == '\r')
                d->state = CH_TRAILER_LF;
            else if (!is_field_char(c))
                CH_FAIL(c == '\n' ? "bare LF in trailer" : "invalid character in trailer");
            i++;
            break;
        case CH_TRAILER_LF:
            if (++d->trailer_len > MG_CHUNKED_MAX_TRAILER)
                CH_FAIL("trailer section too large");
            if (c != '\n')
                CH_FAIL("bare CR in trailer");
            i++;
            d->state = CH_TRAILER;
            break;
        case CH_END_LF:
            if (++d->trailer_len > MG_CHUNKED_MAX_TRAILER)
                CH_FAIL("trailer section too large");
            if (c != '\n')
                CH_FAIL("bare CR at end of chunked body");
            i++;
            d->state = CH_DONE;
            *consumed = i;
            return MG_CHUNKED_DONE;
        case CH_DONE:
            *consumed = i;
            return MG_CHUNKED_DONE;
        }
    }
    *consumed = i;
    return d->state == CH_DONE ? MG_CHUNKED_DONE : MG_CHUNKED_AGAIN;
#undef CH_FAIL
}
