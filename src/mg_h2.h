/*
 * mg_h2 — HTTP/2 on a connection (RFC 9113), on nghttp2's session API with
 * our own I/O: the bytes mg_conn reads are fed to nghttp2_session_mem_recv,
 * and the frames nghttp2 produces are written from the connection's output
 * buffer like HTTP/1.1 responses. Every stream is a request (mg_req) like an
 * HTTP/1.1 one, written to through mg_h2_wire.
 */
#ifndef MG_H2_H
#define MG_H2_H

#include "mg_conn.h"
#include "mg_wire.h"

extern const mg_conn_proto_t mg_h2_proto;
extern const mg_wire_t mg_h2_wire;

/*
 * Switches connection c to HTTP/2 (after ALPN h2, or on the client preface
 * of h2c, which is left in c's input for nghttp2). MG_ERROR when the session
 * cannot start (the caller closes).
 */
int mg_h2_start(mg_conn_t *c);

#endif
