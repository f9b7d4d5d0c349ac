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
};

/* One of the MG_FFI_* strings of the request; NULL when absent. */
const char *mg_ffi_req_str(uintptr_t r, int what, size_t *len);
/* The first header with this name (case-insensitive), NULL when absent. */
const char *mg_ffi_req_header(uintptr_t r, const char *name, size_t name_len, size_t *len);
/* Number of header fields, and field i (0-based). */
int mg_ffi_req_header_count(uintptr_t r);
const char *mg_ffi_req_header_at(uintptr_t r, int i, size_t *name_len, const char **value, size_t *value_len);
/* The whole request body (read before the handler runs). */
const char *mg_ffi_req_body(uintptr_t r, size_t *len);
/*
 * A recorded request's plugin step begins (phase: MG_TP_*, name: the
 * plugin's, copied) or ends (phase 0). Called only by the traced copy of a
 * route's chain (lua/moongate/plugins.lua; declared there), so only for
 * requests with r->trace set (mg_trace.h).
 */
void mg_ffi_trace_step(uintptr_t r, int phase, const char *name, size_t len);

#endif
