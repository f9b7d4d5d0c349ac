/*
 * mg_resp — a response head as the request layer builds it, whatever wire
 * the client speaks: a status and the end-to-end header fields, in order.
 * Framing (Content-Length, Transfer-Encoding, Connection, :status) is not in
 * it: the wire's encoder (mg_wire.h) writes that from `content_length` and
 * its own state. Every producer of a response (a Lua handler, a plugin that
 * ends the request, an upstream's head, a header_filter, the gateway's own
 * errors) builds one of these, and mg_req_send_head hands it to the encoder:
 * one writer, so the same response is the same bytes on every path.
 *
 * Memory: the header array comes from the request arena; names and values are
 * borrowed (from Lua strings on a stack, the upstream's input buffer, static
 * text): a head is encoded at once, before they may go away.
 */
#ifndef MG_RESP_H
#define MG_RESP_H

#include <lua.h>

#include "mg_http1.h"
#include "mg_pool.h"

typedef struct mg_resp {
    int status;
    const char *reason;           /* the upstream's reason phrase (HTTP/1.1 only), or NULL: the standard one */
    size_t reason_len;
    mg_header_t *h;
    size_t n, cap;
    int64_t content_length;       /* the body's length when known, else -1 (streamed) */
    unsigned no_body : 1;         /* nothing follows the head (HTTP/2: END_STREAM on it; HTTP/1.1: length 0) */
    unsigned has_date : 1;        /* a Date field is among h: the encoder adds none */
    unsigned has_ctype : 1;
    mg_pool_t *pool;
} mg_resp_t;

/* An empty head for `status` whose array grows in pool. */
void mg_resp_init(mg_resp_t *resp, mg_pool_t *pool, int status);

/* Appends a field as is (the caller validated it). */
void mg_resp_add(mg_resp_t *resp, const char *name, size_t nl, const char *value, size_t vl);

/* Is a field of this name (any case) in the head? */
int mg_resp_has(const mg_resp_t *resp, const char *name, size_t nl);

/*
 * Appends the fields of a Lua headers table (at idx on L: name -> string,
 * number, or an array of them). Names must be tokens, values free of CR, LF
 * and other controls; framing fields (Content-Length, Transfer-Encoding,
 * Connection, X-Request-ID) are the gateway's and skipped. With only_absent,
 * a name already in the head is skipped (defaults). Returns NULL, or an
 * error message and then appends nothing.
 */
const char *mg_resp_add_lua(mg_resp_t *resp, lua_State *L, int idx, int only_absent);

/* Header-field checks shared with the upstream request writers. */
int mg_resp_valid_name(const char *s, size_t n);
int mg_resp_valid_value(const char *s, size_t n);
/* Fields that frame the message or are the gateway's own (never taken from Lua). */
int mg_resp_framing_field(const char *s, size_t n);
/* Hop-by-hop fields (RFC 9110 §7.6.1), Content-Length included: never relayed as they are. */
int mg_resp_hop_by_hop(const mg_header_t *h);
/* Is h named in one of the Connection fields of hs[0..n)? */
int mg_resp_named_by_connection(const mg_header_t *hs, size_t n, const mg_header_t *h);
/*
 * The first Connection field of hs[0..n) that names another field (anything
 * but close and keep-alive), or NULL. A loop over a message's fields asks
 * once, then asks mg_resp_named_by_connection only from there: most messages
 * have none.
 */
const mg_header_t *mg_resp_connection_field(const mg_header_t *hs, size_t n);

/* The standard reason phrase of a status ("OK"), or a class default. */
const char *mg_resp_reason(int status);
/* May a response with this status carry a body (not 1xx, 204, 304)? */
static inline int mg_resp_body_allowed(int status) { return status >= 200 && status != 204 && status != 304; }

#endif
