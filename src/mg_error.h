/*
 * mg_error — the one table of error kinds. Each kind is defined once here:
 * its name (what ctx.error, the access log's "error", X-Gateway-Error and the
 * metrics' kind="..." label say), the HTTP status a client gets, the gRPC
 * status a gRPC client gets, and the message of the gateway's own error body.
 * C compares kinds by pointer (MG_E(DEADLINE)); Lua sees the names and the
 * table as gw.errors. A new kind is one line of MG_ERRORS.
 *
 * The status is a default: a caller that knows better passes its own (a
 * malformed request is 400, 414, 431 or 505 by the parser; busy after
 * queueing is the upstream's on_busy.status).
 */
#ifndef MG_ERROR_H
#define MG_ERROR_H

#include <stddef.h>
#include <stdint.h>

/*    id                 name                  http  grpc  message */
#define MG_ERRORS(X)                                                                          \
    X(REFUSED,            "refused",            502,  14, "bad gateway")                      \
    X(RESET,              "reset",              502,  14, "bad gateway")                      \
    X(CONNECT_TIMEOUT,    "connect_timeout",    504,   4, "upstream timed out")               \
    X(SEND_TIMEOUT,       "send_timeout",       504,   4, "upstream timed out")               \
    X(READ_TIMEOUT,       "read_timeout",       504,   4, "upstream timed out")               \
    X(PROTOCOL,           "protocol",           502,  13, "bad gateway")                      \
    X(TLS_HANDSHAKE,      "tls_handshake",      502,  14, "bad gateway")                      \
    X(TLS_VERIFY,         "tls_verify",         502,  14, "bad gateway")                      \
    X(NO_TARGET,          "no_healthy_target",  503,  14, "no healthy upstream target")       \
    X(BUSY,               "busy",               429,   8, "upstream busy")                    \
    X(DEADLINE,           "deadline",           504,   4, "deadline exceeded")                \
    X(TIMEOUT,            "timeout",            504,   4, "timed out")                        \
    X(RESPONSE_TOO_LARGE, "response_too_large", 502,   8, "upstream response too large")      \
    X(CLIENT_ABORT,       "client_abort",       499,   1, "client closed request")            \
    X(LUA_ERROR,          "lua_error",          500,  13, "internal server error")            \
    X(BAD_REQUEST,        "bad_request",        400,  13, "bad request")                      \
    X(BODY_TOO_LARGE,     "body_too_large",     413,   8, "request body too large")           \
    X(HEADER_TIMEOUT,     "header_timeout",     408,   4, "request timeout")                  \
    X(BODY_TIMEOUT,       "body_timeout",       408,   4, "request timeout")                  \
    X(NO_ROUTE,           "no_route",           404,  12, "no route matches the request")     \
    X(METHOD_NOT_ALLOWED, "method_not_allowed", 405,  12, "method not allowed")               \
    X(REDIS_REFUSED,      "redis_refused",      503,  14, "shared limit store unavailable")   \
    X(REDIS_TIMEOUT,      "redis_timeout",      503,  14, "shared limit store unavailable")   \
    X(REDIS_RESET,        "redis_reset",        503,  14, "shared limit store unavailable")   \
    X(REDIS_AUTH,         "redis_auth",         503,  14, "shared limit store unavailable")   \
    X(REDIS_ERROR,        "redis_error",        503,  14, "shared limit store unavailable")   \
    X(TUNNEL_IDLE,        "tunnel_idle",        504,   4, "tunnel idle timeout")              \
    X(SHUTDOWN,           "shutdown",           503,  14, "the gateway is shutting down")     \
    X(WS_HANDSHAKE,       "websocket_handshake", 400,  3, "not a valid WebSocket handshake")  \
    X(WS_PROTOCOL,        "websocket_protocol", 400,  13, "WebSocket protocol error")         \
    X(WS_TOO_BIG,         "websocket_too_big",  400,   8, "WebSocket message too big")

enum {
#define MG_ERR_ENUM(id, name, http, grpc, msg) MG_ERR_##id,
    MG_ERRORS(MG_ERR_ENUM)
#undef MG_ERR_ENUM
    MG_ERR__COUNT
};

typedef struct mg_error {
    int id;               /* MG_ERR_* (an index into mg_errors) */
    const char *name;     /* the one spelling everywhere */
    int status;           /* HTTP */
    int grpc;             /* gRPC status code */
    const char *message;  /* the gateway's own error body */
} mg_error_t;

extern const mg_error_t mg_errors[MG_ERR__COUNT];

/* The kind with this id: compare kinds by pointer. */
#define MG_E(id) (&mg_errors[MG_ERR_##id])

/* A Redis kind (redis_*): a limit kept in Redis could not be checked (mg_redis). */
static inline int mg_error_is_redis(const mg_error_t *e)
{
    return e->id >= MG_ERR_REDIS_REFUSED && e->id <= MG_ERR_REDIS_ERROR;
}

/*
 * gw.error(kind) hands C the kind as a light userdata pointing into
 * mg_errors (no allocation; Lua cannot forge one): the kind it points at, or
 * NULL for any other pointer.
 */
static inline const mg_error_t *mg_error_of_mark(const void *p)
{
    uintptr_t a = (uintptr_t)p, first = (uintptr_t)&mg_errors[0], end = (uintptr_t)&mg_errors[MG_ERR__COUNT];
    return a >= first && a < end && (a - first) % sizeof(mg_error_t) == 0 ? (const mg_error_t *)p : NULL;
}

/* The kind named `name` (a Lua or config spelling), or NULL. */
const mg_error_t *mg_error_by_name(const char *name);

#endif
