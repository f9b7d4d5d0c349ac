/*
 * mg_grpc — what the gateway knows of gRPC (over HTTP/2, PROTOCOL-HTTP2.md
 * of grpc/grpc): a request is a gRPC call when its content-type is
 * application/grpc[+...]; its `grpc-timeout` bounds the request deadline; and
 * the errors the gateway itself answers are gRPC statuses in a trailers-only
 * response (HTTP 200, one HEADERS frame: grpc-status, grpc-message), mapped
 * from the error kind (mg_error.h's gRPC column) or, for a status a plugin or
 * handler chose, from the HTTP status as gRPC maps them.
 * Messages are streamed, never parsed: the gateway does not look inside.
 */
#ifndef MG_GRPC_H
#define MG_GRPC_H

#include "mg_http1.h"
#include "mg_resp.h"

/* gRPC status codes the gateway uses by name */
enum { MG_GRPC_OK = 0, MG_GRPC_UNKNOWN = 2, MG_GRPC_INTERNAL = 13 };

/* Is this content-type a gRPC one (application/grpc, application/grpc+proto, ...)? */
int mg_grpc_content_type(const char *v, size_t n);

/* A grpc-timeout value ("100m", "5S", "1H": 1-8 digits and a unit) in µs, or -1 when malformed. */
int64_t mg_grpc_timeout_us(const char *v, size_t n);
/* Writes µs as a grpc-timeout value (milliseconds, at least 1) into buf (>= 16 bytes); returns its length. */
size_t mg_grpc_timeout_format(char *buf, uint64_t us);

/* A grpc-status field's value (1 to 3 digits), or -1 when it is not one. */
int mg_grpc_status_value(const char *v, size_t n);
/* The grpc-status among fields h[0..n), or -1 when there is none. */
int mg_grpc_status_field(const mg_header_t *h, size_t n);

/* The gRPC status for an HTTP status the gateway answers with (401 → UNAUTHENTICATED, ...). */
int mg_grpc_status_of_http(int status);

/*
 * Turns resp (from pool) into a trailers-only gRPC answer: status 200,
 * content-type application/grpc, grpc-status `code`, grpc-message the
 * percent-encoded message with the error kind (when there is one) and the
 * trace id, so the caller can find the logs: "upstream timed out
 * (read_timeout, trace id 4bf9...)". Fields already in resp
 * (X-Gateway-Error, Retry-After) stay.
 */
void mg_grpc_error_head(mg_resp_t *resp, int code, const char *message, const char *kind, const char *trace_id);
/* The same grpc-status and grpc-message as trailers (from pool): how a call whose response started ends. */
void mg_grpc_status_trailers(mg_pool_t *pool, int code, const char *message, const char *kind, const char *trace_id,
                             mg_header_t out[2]);

#endif
