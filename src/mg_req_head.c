/*
 * mg_req_head — the request head, once parsed: copied into the request's
 * arena, the target split and its path decoded and checked, the host
 * validated and normalised, the client behind trusted proxies found, the
 * trace id chosen, and the route found. (Part of mg_req.)
 */
#include <stdio.h>
#include <strings.h>

#include "mg_host.h"
#include "mg_log.h"
#include "mg_grpc.h"
#include "mg_req.h"
#include "mg_trace.h"

static int hexv(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/*
 * Splits the raw path on '/', then percent-decodes each segment into one
 * buffer (segments separated by '/'). Decoding happens once, after splitting,
 * so "%2F" stays inside its segment. Dot segments are refused: a gateway that
 * routes "/public/../admin" differently from its upstream is a bypass.
 */
static int decode_path(mg_req_t *r)
{
    const char *p = r->path.p, *end = p + r->path.n;
    char *d = mg_pool_alloc(&r->pool, r->path.n + 1);
    r->dpath = d;
    r->nsegs = 0;
    if (r->path.n == 1)
        return 0; /* "/" */
    p++;
    for (;;) {
        if (r->nsegs == MG_ROUTER_MAX_SEGMENTS)
            return 414;
        char *seg = d;
        while (p < end && *p != '/') {
            if (*p == '%') {
                int h, l;
                if (end - p < 3 || (h = hexv(p[1])) < 0 || (l = hexv(p[2])) < 0)
                    return 400;
                char c = (char)(h * 16 + l);
                if (c == '\0')
                    return 400;
                *d++ = c;
                p += 3;
            } else {
                *d++ = *p++;
            }
        }
        size_t n = (size_t)(d - seg);
        if ((n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.'))
            return 400;
        r->segs[r->nsegs].p = seg;
        r->segs[r->nsegs].n = n;
        r->nsegs++;
        if (p == end)
            break;
        *d++ = '/';
        p++;
    }
    *d = '\0';
    return 0;
}

static void pick_request_id(mg_req_t *r);

static int is_hex_str(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (hexv(s[i]) < 0 || (s[i] >= 'A' && s[i] <= 'F'))
            return 0;
    return 1;
}

/*
 * W3C traceparent "00-<32 hex>-<16 hex>-<2 hex>", X-Request-ID, or a new id;
 * then the sampling decision (mg_trace_begin: the parent span and flags).
 */
static void pick_trace_id(mg_req_t *r)
{
    for (size_t i = 0; i < r->nheaders; i++) {
        const mg_header_t *h = &r->headers[i];
        if (mg_http1_name_is(h, "traceparent", 11) && h->value_len == 55 && h->value[2] == '-' &&
            h->value[35] == '-' && h->value[52] == '-' && is_hex_str(h->value + 3, 32) &&
            memcmp(h->value + 3, "00000000000000000000000000000000", 32) != 0) {
            memcpy(r->trace_id, h->value + 3, 32);
            r->trace_id[32] = '\0';
            mg_trace_begin(r, h->value);
            return;
        }
    }
    pick_request_id(r);
    mg_trace_begin(r, NULL);
}

static void pick_request_id(mg_req_t *r)
{
    for (size_t i = 0; i < r->nheaders; i++) {
        const mg_header_t *h = &r->headers[i];
        if (!mg_http1_name_is(h, "x-request-id", 12) || h->value_len == 0 || h->value_len > 128)
            continue;
        size_t k;
        for (k = 0; k < h->value_len; k++) {
            char c = h->value[k];
            /* a conservative charset: the id is echoed in headers and JSON logs */
            if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  c == '-' || c == '_' || c == '.' || c == ':'))
                break;
        }
        if (k == h->value_len) {
            memcpy(r->trace_id, h->value, k);
            r->trace_id[k] = '\0';
            return;
        }
    }
    mg_worker_trace_id(r->worker, r->trace_id);
}

/* 400 for a Host (or absolute-form authority) that is not host[:port]; logged, since the client cannot be told more. */
static int bad_host(mg_req_t *r, const char *what, mg_str_t v)
{
    mg_log_info(r->trace_id, "client %s: invalid host in %s: '%.*s'", r->remote, what,
                (int)(v.n > 200 ? 200 : v.n), v.p);
    return 400;
}

const char *mg_req_client_ip(mg_req_t *r)
{
    if (!r->client_ip[0]) {
        const char *colon = strrchr(r->remote, ':');
        size_t n = colon ? (size_t)(colon - r->remote) : strlen(r->remote);
        if (n >= sizeof(r->client_ip))
            n = sizeof(r->client_ip) - 1;
        memcpy(r->client_ip, r->remote, n); /* canonical already (mg_conn_accept) */
        r->client_ip[n] = '\0';
    }
    return r->client_ip;
}

/*
 * Who the client is. From a peer in trusted_proxies, X-Forwarded-For names
 * it (the rightmost hop that is not a trusted proxy, as nginx's
 * real_ip_recursive); from anyone else, the peer is the client, whatever its
 * headers claim. ip-restriction, rate-limit, limit-conn, the ip hash and the
 * access log all read the result (mg_req_client_ip, ctx.request.client_ip).
 */
static void resolve_client(mg_req_t *r)
{
    mg_req_client_ip(r);
    const mg_gen_t *g = r->gen;
    mg_ip_t peer, client;
    if (!g->ntrusted || mg_ip_parse(r->client_ip, strlen(r->client_ip), &peer) != 0 ||
        !mg_cidr_match(g->trusted, g->ntrusted, &peer))
        return;
    r->peer_trusted = 1;
    mg_str_t vals[16];
    size_t nvals = 0;
    for (size_t i = 0; i < r->nheaders; i++) {
        const mg_header_t *h = &r->headers[i];
        if (!mg_http1_name_is(h, "x-forwarded-for", 15))
            continue;
        if (nvals == mg_countof(vals)) {
            memmove(vals, vals + 1, sizeof(vals) - sizeof(vals[0])); /* the rightmost fields matter */
            nvals--;
        }
        vals[nvals++] = (mg_str_t){ h->value, h->value_len };
    }
    if (mg_forwarded_client(vals, nvals, g->trusted, g->ntrusted, &client))
        mg_ip_format(&client, r->client_ip, sizeof(r->client_ip));
}

static const char *rebase(const char *p, const char *from, char *to)
{
    return p ? to + (p - from) : NULL;
}

int mg_req_set_head(mg_req_t *r, const char *head, size_t head_len, const mg_http1_request_t *p)
{
    char *copy = mg_pool_alloc(&r->pool, head_len);
    memcpy(copy, head, head_len);
    r->bytes_in = head_len;
    mg_http1_request_t q = *p;
    q.method = rebase(p->method, head, copy);
    q.target = rebase(p->target, head, copy);
    q.host = rebase(p->host, head, copy);
    q.headers = mg_pool_alloc(&r->pool, sizeof(mg_header_t) * (p->num_headers ? p->num_headers : 1));
    for (size_t i = 0; i < p->num_headers; i++) {
        q.headers[i] = p->headers[i];
        q.headers[i].name = rebase(p->headers[i].name, head, copy);
        q.headers[i].value = rebase(p->headers[i].value, head, copy);
    }
    return mg_req_route(r, &q);
}

int mg_req_route(mg_req_t *r, const mg_http1_request_t *p)
{
    r->method = (mg_str_t){ p->method, p->method_len };
    r->target = (mg_str_t){ p->target, p->target_len };
    r->minor_version = p->minor_version;
    r->flags = p->flags;
    r->content_length = p->content_length;
    r->body_complete = !((p->flags & MG_HTTP1_F_CHUNKED) || p->content_length > 0);
    r->method_bit = mg_method_bit(p->method, p->method_len);
    r->nheaders = p->num_headers;
    r->headers = p->headers;
    pick_trace_id(r);
    /* a gRPC call: every answer the gateway makes itself, a refusal included, is a gRPC status */
    for (size_t i = 0; i < r->nheaders; i++)
        if (mg_http1_name_is(&r->headers[i], "content-type", 12))
            r->grpc = mg_grpc_content_type(r->headers[i].value, r->headers[i].value_len);
    for (size_t i = 0; r->grpc && i < r->nheaders; i++) {
        /* the caller's deadline, when it says one, must be readable: a call is not run with another one */
        const mg_header_t *h = &r->headers[i];
        if (mg_http1_name_is(h, "grpc-timeout", 12) && mg_grpc_timeout_us(h->value, h->value_len) < 0) {
            mg_log_info(r->trace_id, "client %s: malformed grpc-timeout '%.*s' (1 to 8 digits and H, M, S, m, u or n)",
                        r->remote, (int)(h->value_len < 40 ? h->value_len : 40), h->value);
            return 400;
        }
    }

    resolve_client(r);

    /* request-target: origin-form, or absolute-form whose authority replaces Host (RFC 9112 §3.2.2) */
    const char *t = r->target.p, *tend = t + r->target.n;
    mg_str_t host = p->host ? (mg_str_t){ p->host, p->host_len } : (mg_str_t){ "", 0 };
    /* Host is checked even when the authority replaces it: an invalid one is 400 (RFC 9112 §3.2) */
    long hl = mg_host_check(host.p, host.n);
    if (hl < 0)
        return bad_host(r, "Host", host);
    if (t[0] != '/' && r->target.n > 7 && (strncasecmp(t, "http://", 7) == 0 || strncasecmp(t, "https://", 8) == 0)) {
        const char *a = t + (t[4] == ':' ? 7 : 8);
        const char *s = a;
        while (s < tend && *s != '/' && *s != '?' && *s != '#')
            s++;
        host = (mg_str_t){ a, (size_t)(s - a) };
        /* an http URI with an empty host is invalid (RFC 9110 §4.2.1); userinfo is refused (§4.2.4) */
        if (host.n == 0 || (hl = mg_host_check(host.p, host.n)) < 0)
            return bad_host(r, "the target's authority", host);
        t = s;
    }
    if (memchr(r->target.p, '#', r->target.n))
        return 400;
    const char *q = memchr(t, '?', (size_t)(tend - t));
    const char *pend = q ? q : tend;
    if (t == pend && t != r->target.p)
        r->path = MG_STR("/"); /* "http://host" or "http://host?x" */
    else if (t < pend && *t == '/')
        r->path = (mg_str_t){ t, (size_t)(pend - t) };
    else
        return 400; /* "*" (OPTIONS) and authority-form (CONNECT) have no path to route */
    r->query = q ? (mg_str_t){ q + 1, (size_t)(tend - q - 1) } : (mg_str_t){ "", 0 };

    /*
     * The one host of the request: routing, ctx.request.host, the upstream's
     * Host and X-Forwarded-Host and the access log all come from here, so
     * what is routed is what is forwarded. r->authority is the value as
     * received (with its port); r->host is its host lowercased, without the
     * port and a trailing dot ("Admin.Example.:80" routes as admin.example).
     */
    r->authority = host;
    size_t n = (size_t)hl;
    if (n > 1 && host.p[0] != '[' && host.p[n - 1] == '.')
        n--;
    if (n) { /* else r->host stays { NULL, 0 }: no host (ctx.request.host is nil) */
        char *h = mg_pool_alloc(&r->pool, n + 1);
        mg_lowercase(h, host.p, n);
        h[n] = '\0';
        r->host = (mg_str_t){ h, n };
    }

    int rc = decode_path(r);
    if (rc)
        return rc;
    rc = mg_router_match(r->gen->router, r->method_bit, r->host.p, r->host.n, r->segs, r->nsegs, &r->match);
    if (rc == MG_ROUTER_NOT_FOUND)
        return 404;
    if (rc == MG_ROUTER_NO_METHOD)
        return 405;
    r->route = &r->gen->routes[r->match.id];
    mg_req_start_deadline(r);
    return 0;
}

