/*
 * mg_router — a segment trie compiled from the route table.
 *
 * Priority (deterministic and documented in docs/config.md): at each path
 * segment a static segment beats a regex-constrained parameter, which beats a
 * plain parameter, which beats a catch-all; regex children are tried in
 * declaration order. Where several routes share the same path, a route with an
 * exact host beats a wildcard host (longer suffix first), which beats a route
 * with no host; then declaration order. The first route whose path, host and
 * method all match wins. If some route matched path and host but none the
 * method, the result is 405 with the union of their methods.
 *
 * Matching works on decoded segments; the caller splits the raw path on '/'
 * before percent-decoding, so an encoded %2F never splits a segment.
 * A router is single-threaded (it owns the PCRE2 match data): one per worker.
 */
#ifndef MG_ROUTER_H
#define MG_ROUTER_H

#include "mg_core.h"

#define MG_ROUTER_MAX_PARAMS 16
#define MG_ROUTER_MAX_SEGMENTS 128

/* Method bits. Unknown (extension) methods only match routes with any method. */
enum {
    MG_M_GET = 1u << 0, MG_M_HEAD = 1u << 1, MG_M_POST = 1u << 2, MG_M_PUT = 1u << 3,
    MG_M_DELETE = 1u << 4, MG_M_PATCH = 1u << 5, MG_M_OPTIONS = 1u << 6,
    MG_M_TRACE = 1u << 7, MG_M_CONNECT = 1u << 8, MG_M_OTHER = 1u << 9,
    MG_M_ANY = (1u << 10) - 1,
};

/* Returns the MG_M_* bit of a method token (MG_M_OTHER when not a standard one). */
unsigned mg_method_bit(const char *m, size_t n);
/* Writes "GET, HEAD, POST" for a mask into buf (NUL-terminated); returns its length. */
size_t mg_methods_format(unsigned mask, char *buf, size_t size);

typedef struct mg_router mg_router_t;

typedef struct mg_route_spec {
    int id;               /* caller's route index, returned on match */
    unsigned methods;     /* MG_M_* mask; MG_M_ANY for any. A GET route also serves HEAD. */
    const char *host;     /* NULL/"" any, "api.example.com", or "*.example.com" */
    const char *path;     /* "/users/{id:[0-9]+}/files/{rest*}" */
    const char *where;    /* "file:line" of the declaration, for conflict messages */
} mg_route_spec_t;

typedef struct mg_route_match {
    int id;
    int nparams;
    const char *names[MG_ROUTER_MAX_PARAMS]; /* borrowed from the router */
    mg_str_t values[MG_ROUTER_MAX_PARAMS];   /* borrowed from the caller's segments */
    unsigned allow;                          /* on MG_ROUTER_NO_METHOD: allowed methods */
} mg_route_match_t;

#define MG_ROUTER_FOUND      0
#define MG_ROUTER_NOT_FOUND  1
#define MG_ROUTER_NO_METHOD  2

mg_router_t *mg_router_new(void);
void mg_router_free(mg_router_t *r);

/*
 * Adds a route. On error returns MG_ERROR with a message in err (bad pattern,
 * bad regex, or a conflict naming the other route's `where`).
 */
int mg_router_add(mg_router_t *r, const mg_route_spec_t *spec, char *err, size_t errlen);

/*
 * Matches decoded segments. `segs` are the segments of the path (the path "/"
 * has none); a catch-all's value is the span from its first segment to the end
 * of the last, which is contiguous when the caller decoded the segments into
 * one '/'-separated buffer. `host` is lowercase without the port (may be NULL).
 */
int mg_router_match(mg_router_t *r, unsigned method, const char *host, size_t host_len,
                    const mg_str_t *segs, size_t nsegs, mg_route_match_t *m);

/* Number of routes added. */
size_t mg_router_count(const mg_router_t *r);

#endif
