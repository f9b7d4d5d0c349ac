/*
 * mg_host — who a request is for and who it is from, at the edge: the
 * authority ("host[:port]") checked once for routing and forwarding alike, IP
 * addresses and CIDR lists (trusted_proxies), and the X-Forwarded-For walk
 * that finds the client behind trusted proxies. Pure functions over caller
 * buffers: no allocation, no I/O.
 */
#ifndef MG_HOST_H
#define MG_HOST_H

#include "mg_core.h"

/*
 * Checks an authority "host[:port]" as a Host field value or the authority of
 * an absolute-form target carries it (RFC 9112 §3.2, RFC 3986 §3.2.2):
 *   host = reg-name | IPv4 | "[" IPv6 "]" | "[v" HEX "." ... "]"   (IPvFuture)
 *   port = 1 to 5 digits, at most 65535
 * Stricter than RFC 3986 where leniency would let two parties read one value
 * differently: no userinfo ('@'), no lists (','), no percent-encoding, no
 * empty port ("host:"), no empty label ("a..b", ".a"), no port without a host.
 * An empty authority (n == 0) is valid here; the caller decides whether the
 * request may have one. Returns the length of the host part (without the
 * port; brackets included), or -1 when the value is invalid.
 */
long mg_host_check(const char *s, size_t n);

/* An IP address as 16 bytes: IPv4 is stored IPv4-mapped (::ffff:a.b.c.d). */
typedef struct mg_ip {
    uint8_t b[16];
} mg_ip_t;

/* Parses a bare IPv4 or IPv6 address (no brackets, no port). 0, or -1 when it is not one. */
int mg_ip_parse(const char *s, size_t n, mg_ip_t *ip);

/*
 * Parses one X-Forwarded-For element: "addr", "v4:port", "[v6]" or
 * "[v6]:port" (some proxies add the port). 0, or -1.
 */
int mg_ip_parse_hop(const char *s, size_t n, mg_ip_t *ip);

/* Writes the address in its usual text form (IPv4-mapped as a.b.c.d) into buf; returns its length. */
size_t mg_ip_format(const mg_ip_t *ip, char *buf, size_t size);

typedef struct mg_cidr {
    mg_ip_t net;
    int bits; /* 0..128, over the 16-byte form (an IPv4 /8 is 104) */
} mg_cidr_t;

/*
 * Parses "10.0.0.0/8", "2001:db8::/32" or a bare address (/32, /128) from a
 * NUL-terminated string. Bits set past the prefix ("10.0.0.1/8") are an
 * error: the entry would not mean what it says. 0, or -1.
 */
int mg_cidr_parse(const char *s, mg_cidr_t *c);

/* Is ip inside one of list[0..n)? */
int mg_cidr_match(const mg_cidr_t *list, size_t n, const mg_ip_t *ip);

/*
 * The client behind trusted proxies, as nginx's real_ip_recursive: walks the
 * X-Forwarded-For values (vals[0..nvals) in the order received, each a
 * comma-separated list) from the right, skipping hops inside trusted; the
 * first hop that is not trusted is the client. If every hop is trusted the
 * leftmost is; an element that is not an address ends the walk at the last
 * good hop (what lies left of it came from someone untrusted). The caller has
 * already checked that the connection's peer is trusted. Returns 1 with the
 * address in *client, or 0 when no hop was usable (the peer stays the client).
 */
int mg_forwarded_client(const mg_str_t *vals, size_t nvals, const mg_cidr_t *trusted, size_t ntrusted,
                        mg_ip_t *client);

#endif
