/*
 * mg_ffi — see mg_ffi.h. Kept tiny and branch-light so LuaJIT traces through
 * the callers stay compiled.
 */
#include "mg_ffi.h"

#include <event2/buffer.h>
#include <strings.h>

#include "mg_conn.h"
#include "mg_req.h"
#include "mg_trace.h"
#include "mg_resp.h"

static mg_str_t cstr(const char *p) { return (mg_str_t){ p, p ? strlen(p) : 0 }; }

const char *mg_ffi_req_str(uintptr_t rp, int what, size_t *len)
{
    mg_req_t *r = (mg_req_t *)rp;
    SSL *ssl = r->conn ? r->conn->ssl : NULL; /* NULL on plain connections and once the client has gone */
    mg_str_t s = { NULL, 0 };
    switch (what) {
    case MG_FFI_METHOD: s = r->method; break;
    case MG_FFI_PATH: s = r->path; break;
    case MG_FFI_QUERY: s = r->query; break;
    case MG_FFI_TARGET: s = r->target; break;
    case MG_FFI_HOST: s = r->host; break;
    case MG_FFI_REMOTE: s = (mg_str_t){ r->remote, strlen(r->remote) }; break;
    case MG_FFI_VERSION: s = !r->minor_version ? MG_STR("1.0") : cstr(r->wire->version); break;
    case MG_FFI_SCHEME: s = r->tls ? MG_STR("https") : MG_STR("http"); break;
    case MG_FFI_TLS_VERSION: s = cstr(mg_tls_version(ssl)); break;
    case MG_FFI_TLS_CIPHER: s = cstr(mg_tls_cipher(ssl)); break;
    case MG_FFI_TLS_SNI: s = cstr(mg_tls_sni(ssl)); break;
    case MG_FFI_TLS_CLIENT_SUBJECT: s = cstr(mg_tls_client_subject(ssl)); break;
    case MG_FFI_TLS_CLIENT_SAN: s = cstr(mg_tls_client_san(ssl)); break;
    case MG_FFI_TLS_CLIENT_FINGERPRINT: s = cstr(mg_tls_client_fingerprint(ssl)); break;
    case MG_FFI_TLS_RESUMED: s = cstr(mg_tls_resumed(ssl)); break;
    case MG_FFI_CLIENT_IP: s = cstr(mg_req_client_ip(r)); break;
    case MG_FFI_TRACE_ID: s = cstr(r->trace_id); break;
    }
    *len = s.n;
    return s.p;
}

const char *mg_ffi_req_header(uintptr_t rp, const char *name, size_t name_len, size_t *len)
{
    mg_req_t *r = (mg_req_t *)rp;
    for (size_t i = 0; i < r->nheaders; i++) {
        const mg_header_t *h = &r->headers[i];
        if (h->name_len == name_len && strncasecmp(h->name, name, name_len) == 0) {
            *len = h->value_len;
            return h->value;
        }
    }
    return NULL;
}

int mg_ffi_req_header_count(uintptr_t rp)
{
    return (int)((mg_req_t *)rp)->nheaders;
}

const char *mg_ffi_req_header_at(uintptr_t rp, int i, size_t *name_len, const char **value, size_t *value_len)
{
    mg_req_t *r = (mg_req_t *)rp;
    if (i < 0 || (size_t)i >= r->nheaders)
        return NULL;
    const mg_header_t *h = &r->headers[i];
    *name_len = h->name_len;
    *value = h->value;
    *value_len = h->value_len;
    return h->name;
}

int mg_ffi_req_param_count(uintptr_t rp)
{
    return ((mg_req_t *)rp)->match.nparams;
}

const char *mg_ffi_req_param_at(uintptr_t rp, int i, size_t *name_len, const char **value, size_t *value_len)
{
    mg_req_t *r = (mg_req_t *)rp;
    if (i < 0 || i >= r->match.nparams)
        return NULL;
    *name_len = strlen(r->match.names[i]);
    *value = r->match.values[i].p;
    *value_len = r->match.values[i].n;
    return r->match.names[i];
}

const char *mg_ffi_req_body(uintptr_t rp, size_t *len)
{
    mg_req_t *r = (mg_req_t *)rp;
    *len = evbuffer_get_length(r->body);
    return *len ? (const char *)evbuffer_pullup(r->body, -1) : "";
}

void mg_ffi_trace_step(uintptr_t rp, int phase, const char *name, size_t len)
{
    mg_req_t *r = (mg_req_t *)rp;
    if (r->trace) /* set for the request's life: the traced chain runs only when it is */
        mg_trace_step(r->trace, phase, name, len);
}

void mg_ffi_req_proxy_headers(uintptr_t rp) { ((mg_req_t *)rp)->proxy_headers = 1; }

void mg_ffi_resp_defaults_begin(uintptr_t rp)
{
    mg_req_t *r = (mg_req_t *)rp;
    r->defaults_taken = 1;
    r->ndefaults = 0;
    r->defaults_bad = NULL;
}

/* The messages are mg_resp_add_lua's (src/mg_resp.c): the log line is the same whichever path built the head. */
int mg_ffi_resp_defaults_field(uintptr_t rp, const char *name, size_t nl, const char *value, size_t vl)
{
    mg_req_t *r = (mg_req_t *)rp;
    if (r->defaults_bad)
        return -1;
    if (!mg_resp_valid_name(name, nl)) {
        r->defaults_bad = "invalid response header name";
        return -1;
    }
    if (!value)
        return 0;
    if (!mg_resp_valid_value(value, vl)) {
        r->defaults_bad = "response header value contains CR, LF or another control character";
        return -1;
    }
    if (mg_resp_framing_field(name, nl)) /* framing is the gateway's, not Lua's */
        return 0;
    if (r->ndefaults == r->defaults_cap) {
        size_t cap = r->defaults_cap ? r->defaults_cap * 2 : 8;
        mg_header_t *d = mg_pool_alloc(&r->pool, cap * sizeof(*d));
        if (r->ndefaults)
            memcpy(d, r->defaults, r->ndefaults * sizeof(*d));
        r->defaults = d;
        r->defaults_cap = cap;
    }
    /* copied: Lua may drop or change the strings before the head is built */
    r->defaults[r->ndefaults++] = (mg_header_t){ mg_pool_strndup(&r->pool, name, nl), nl,
                                                 mg_pool_strndup(&r->pool, value, vl), vl };
    return 0;
}

void mg_ffi_resp_defaults_bad(uintptr_t rp, int why)
{
    mg_req_t *r = (mg_req_t *)rp;
    if (!r->defaults_bad)
        r->defaults_bad = why == MG_FFI_BAD_NAME_TYPE ? "response header names must be strings"
                                                      : "response header values must be strings or numbers";
}
