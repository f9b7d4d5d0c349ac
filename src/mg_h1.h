/*
 * mg_h1 — HTTP/1.1 on a connection: reads and frames requests (head,
 * Content-Length or chunked body), enforces the size limits and the header /
 * body / keep-alive timeouts, runs one request at a time (pipelined requests
 * wait in the input buffer, so responses go out in order), and encodes
 * responses (mg_h1_wire: status line, fields, Content-Length or chunked or
 * close-delimited framing, keep-alive). On a cleartext listener with http2
 * on, a connection that starts with the HTTP/2 client preface is handed to
 * mg_h2.
 */
#ifndef MG_H1_H
#define MG_H1_H

#include "mg_conn.h"
#include "mg_wire.h"

enum { MG_H1_NONE, MG_H1_CL, MG_H1_CHUNKED, MG_H1_CLOSE };

extern const mg_conn_proto_t mg_h1_proto;
extern const mg_wire_t mg_h1_wire;

/* Starts HTTP/1.1 on a new connection (the header timer also bounds a TLS handshake). */
void mg_h1_start(mg_conn_t *c);

/*
 * The HTTP/1.1 head encoder both sides share (responses to clients, requests
 * to upstreams): the pieces of the start line (and any fields the caller
 * formatted), then each field as "Name: value\r\n", then end (which ends
 * with the blank line), appended to out as one piece: one reservation, no
 * per-field buffer calls.
 */
void mg_h1_put_head(struct evbuffer *out, const mg_str_t *start, size_t nstart, const mg_header_t *h, size_t n,
                    const char *end, size_t end_len);

#endif
