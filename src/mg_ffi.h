/*
 * mg_ffi — the only C functions Lua calls through LuaJIT's FFI (declared
 * again in lua/moongate/ctx.lua; keep the two in sync). Plain C types only.
 * `r` is the request handle from ctx._r: the request's address as a number
 * (a lightuserdata argument is NYI for LuaJIT's trace compiler and would keep
 * every plugin in the interpreter). Lua checks that the request is still
 * alive (ctx._r is false after it ended) before calling.
 * Returned pointers are borrowed: valid until the request ends.
 */
#ifndef MG_FFI_H
#define MG_FFI_H

#include <stddef.h>
#include <stdint.h>

enum {
    MG_FFI_METHOD = 0, MG_FFI_PATH = 1, MG_FFI_QUERY = 2, MG_FFI_TARGET = 3,
    MG_FFI_HOST = 4, MG_FFI_REMOTE = 5, MG_FFI_VERSION = 6, MG_FFI_SCHEME = 7,
    /* TLS connections only (NULL otherwise, or once the client has gone) */
    MG_FFI_TLS_VERSION = 8, MG_FFI_TLS_CIPHER = 9, MG_FFI_TLS_SNI = 10,
    MG_FFI_TLS_CLIENT_SUBJECT = 11, MG_FFI_TLS_CLIENT_SAN = 12, MG_FFI_TLS_CLIENT_FINGERPRINT = 13,
    MG_FFI_TLS_RESUMED = 14,
    /* the client's address without port: the peer, or the hop trusted_proxies name (mg_req_head) */
    MG_FFI_CLIENT_IP = 15,
    MG_FFI_TRACE_ID = 16,
};

/* One of the MG_FFI_* strings of the request; NULL when absent. */
const char *mg_ffi_req_str(uintptr_t r, int what, size_t *len);
/* The first header with this name (case-insensitive), NULL when absent. */
const char *mg_ffi_req_header(uintptr_t r, const char *name, size_t name_len, size_t *len);
/* Number of header fields, and field i (0-based). */
int mg_ffi_req_header_count(uintptr_t r);
const char *mg_ffi_req_header_at(uintptr_t r, int i, size_t *name_len, const char **value, size_t *value_len);
/* Number of route parameters, and parameter i (0-based): its name, and its decoded value in *value. */
int mg_ffi_req_param_count(uintptr_t r);
const char *mg_ffi_req_param_at(uintptr_t r, int i, size_t *name_len, const char **value, size_t *value_len);
/* The whole request body (read before the handler runs). */
const char *mg_ffi_req_body(uintptr_t r, size_t *len);
/*
 * A recorded request's plugin step begins (phase: MG_TP_*, name: the
 * plugin's, copied) or ends (phase 0). Called only by the traced copy of a
 * route's chain (lua/moongate/plugins.lua; declared there), so only for
 * requests with r->trace set (mg_trace.h).
 */
void mg_ffi_trace_step(uintptr_t r, int phase, const char *name, size_t len);

/* ctx.request:set_header/clear_header made ctx._proxy_headers: the upstream request head must read it. */
void mg_ffi_req_proxy_headers(uintptr_t r);

/*
 * The headers plugins set on ctx.response.headers, handed over by
 * moongate.plugins when a proxy route's request phases end, in the order
 * mg_resp_add_lua would walk them: mg_req_add_defaults adds them to the
 * proxied head from there without reading ctx. _begin starts an empty set;
 * _field checks one field (name, value; a NULL value checks the name only)
 * with mg_resp_add_lua's rules and copies it (framing fields are skipped);
 * _bad refuses the set (MG_FFI_BAD_*: a field Lua saw has the wrong type).
 * Once a field is refused none is sent, and the head's builder logs why.
 * _field returns 0, or -1 once the set is refused.
 */
enum { MG_FFI_BAD_NAME_TYPE = 1, MG_FFI_BAD_VALUE_TYPE = 2 };
void mg_ffi_resp_defaults_begin(uintptr_t r);
int mg_ffi_resp_defaults_field(uintptr_t r, const char *name, size_t name_len, const char *value, size_t value_len);
void mg_ffi_resp_defaults_bad(uintptr_t r, int why);

#endif
