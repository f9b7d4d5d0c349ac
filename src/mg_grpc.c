/*
 * mg_grpc — see mg_grpc.h.
 */
#include "mg_grpc.h"

#include <stdio.h>
#include <strings.h>

int mg_grpc_content_type(const char *v, size_t n)
{
    if (n < 16 || strncasecmp(v, "application/grpc", 16) != 0)
        return 0;
    return n == 16 || v[16] == '+' || v[16] == ';';
}

int64_t mg_grpc_timeout_us(const char *v, size_t n)
{
    if (n < 2 || n > 9)
        return -1;
    int64_t x = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        x = x * 10 + (v[i] - '0');
    }
    switch (v[n - 1]) {
    case 'H': return x * 3600 * 1000000;
    case 'M': return x * 60 * 1000000;
    case 'S': return x * 1000000;
    case 'm': return x * 1000;
    case 'u': return x;
    case 'n': return (x + 999) / 1000;
    default: return -1;
    }
}

size_t mg_grpc_timeout_format(char *buf, uint64_t us)
{
    uint64_t ms = us / 1000;
    if (ms < 1)
        ms = 1;
    if (ms > 99999999) /* 8 digits at most: in seconds then */
        return (size_t)snprintf(buf, 16, "%lluS", (unsigned long long)(ms / 1000));
    return (size_t)snprintf(buf, 16, "%llum", (unsigned long long)ms);
}

int mg_grpc_status_value(const char *v, size_t n)
{
    if (n < 1 || n > 3)
        return -1;
    int x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        x = x * 10 + (v[i] - '0');
    }
    return x;
}

int mg_grpc_status_field(const mg_header_t *h, size_t n)
{
    int st = -1;
    for (size_t i = 0; i < n; i++)
        if (mg_http1_name_is(&h[i], "grpc-status", 11))
            st = mg_grpc_status_value(h[i].value, h[i].value_len);
    return st;
}

int mg_grpc_status_of_http(int status)
{
    switch (status) {
    case 200: return MG_GRPC_OK;
    case 400: return MG_GRPC_INTERNAL;
    case 401: return 16;  /* UNAUTHENTICATED */
    case 403: return 7;   /* PERMISSION_DENIED */
    case 404: case 405: case 501: return 12; /* UNIMPLEMENTED */
    case 408: case 504: return 4;            /* DEADLINE_EXCEEDED */
    case 413: case 429: return 8;            /* RESOURCE_EXHAUSTED */
    case 499: return 1;   /* CANCELLED */
    case 500: return MG_GRPC_INTERNAL;
    case 502: case 503: return 14;           /* UNAVAILABLE */
    default: return MG_GRPC_UNKNOWN;
    }
}

/* "message (kind, trace id T)", percent-encoded as grpc-message wants (UTF-8, '%' and non-printables as %XX). */
static void status_fields(mg_pool_t *pool, int code, const char *message, const char *kind, const char *trace_id,
                          mg_header_t out[2])
{
    char *st = mg_pool_alloc(pool, 8);
    int sl = snprintf(st, 8, "%d", code);
    out[0] = (mg_header_t){ "grpc-status", 11, st, (size_t)sl };
    char text[512];
    int tl = snprintf(text, sizeof(text), "%s (%s%strace id %s)", message ? message : "", kind ? kind : "",
                      kind ? ", " : "", trace_id ? trace_id : "-");
    if (tl < 0)
        tl = 0;
    if ((size_t)tl >= sizeof(text))
        tl = (int)sizeof(text) - 1;
    char *m = mg_pool_alloc(pool, (size_t)tl * 3 + 1), *w = m;
    static const char hex[] = "0123456789ABCDEF";
    for (int i = 0; i < tl; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c >= 0x20 && c <= 0x7e && c != '%') {
            *w++ = (char)c;
        } else {
            *w++ = '%';
            *w++ = hex[c >> 4];
            *w++ = hex[c & 15];
        }
    }
    out[1] = (mg_header_t){ "grpc-message", 12, m, (size_t)(w - m) };
}

void mg_grpc_error_head(mg_resp_t *resp, int code, const char *message, const char *kind, const char *trace_id)
{
    resp->status = 200;
    resp->content_length = -1;
    resp->no_body = 1;
    if (!resp->has_ctype) {
        mg_resp_add(resp, "content-type", 12, "application/grpc", 16);
    } else {
        for (size_t i = 0; i < resp->n; i++) /* a plugin's JSON content-type is not the caller's */
            if (mg_http1_name_is(&resp->h[i], "content-type", 12)) {
                resp->h[i].value = "application/grpc";
                resp->h[i].value_len = 16;
            }
    }
    mg_header_t f[2];
    status_fields(resp->pool, code, message, kind, trace_id, f);
    for (int i = 0; i < 2; i++)
        mg_resp_add(resp, f[i].name, f[i].name_len, f[i].value, f[i].value_len);
}

void mg_grpc_status_trailers(mg_pool_t *pool, int code, const char *message, const char *kind, const char *trace_id,
                             mg_header_t out[2])
{
    status_fields(pool, code, message, kind, trace_id, out);
}
