/*
 * mg_host — see mg_host.h. Addresses go through inet_pton/inet_ntop (no
 * hand-written IPv6 parser); only the authority grammar is ours, because no
 * library checks RFC 3986's host[:port] with the strictness a gateway needs.
 */
#include "mg_host.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>

static int is_alnum(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static int is_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}

/*
 * RFC 3986 unreserved and sub-delims, which make up a reg-name, without ','
 * (it is what joins a list: "Host: a, b" names two hosts) and without '%'
 * (percent-encoding: no DNS name needs it, and a name that decodes to "/" or
 * "@" would be a different authority to whoever decodes it).
 */
static int is_name_char(unsigned char c)
{
    if (is_alnum(c))
        return 1;
    switch (c) {
    case '-': case '.': case '_': case '~':                                  /* unreserved */
    case '!': case '$': case '&': case '\'': case '(': case ')': case '*':
    case '+': case ';': case '=':                                            /* sub-delims */
        return 1;
    default:
        return 0;
    }
}

/* "[" IPv6address "]" or "[v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" ) "]"; s[0] is '['. */
static long ip_literal(const char *s, size_t n)
{
    const char *rb = memchr(s, ']', n);
    if (!rb)
        return -1;
    const char *a = s + 1;
    size_t len = (size_t)(rb - a);
    if (len > 0 && (a[0] == 'v' || a[0] == 'V')) {
        size_t i = 1;
        while (i < len && is_hex((unsigned char)a[i]))
            i++;
        if (i == 1 || i >= len || a[i] != '.' || i + 1 == len)
            return -1;
        for (i++; i < len; i++)
            if (!is_name_char((unsigned char)a[i]) && a[i] != ':')
                return -1;
        return rb - s + 1;
    }
    char buf[INET6_ADDRSTRLEN];
    struct in6_addr in6;
    if (len == 0 || len >= sizeof(buf))
        return -1;
    memcpy(buf, a, len);
    buf[len] = '\0';
    if (inet_pton(AF_INET6, buf, &in6) != 1) /* a zone id ("%25eth0") is refused too */
        return -1;
    return rb - s + 1;
}

/* Strict decimal 0..65535 of 1 to 5 digits. */
static int port_ok(const char *s, size_t n)
{
    if (n == 0 || n > 5)
        return 0;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (s[i] - '0');
    }
    return v <= 65535;
}

long mg_host_check(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    long h;
    if (s[0] == '[') {
        h = ip_literal(s, n);
        if (h < 0)
            return -1;
    } else {
        size_t i = 0;
        for (; i < n && s[i] != ':'; i++) {
            if (!is_name_char((unsigned char)s[i]))
                return -1; /* '@' (userinfo), ',' (a list), '/', space, controls, ... */
            if (s[i] == '.' && (i == 0 || s[i - 1] == '.'))
                return -1; /* an empty label */
        }
        if (i == 0)
            return -1; /* ":80": a port without a host */
        h = (long)i;
    }
    if ((size_t)h == n)
        return h;
    if (s[h] != ':' || !port_ok(s + h + 1, n - (size_t)h - 1))
        return -1;
    return h;
}

int mg_ip_parse(const char *s, size_t n, mg_ip_t *ip)
{
    char buf[INET6_ADDRSTRLEN];
    if (n == 0 || n >= sizeof(buf))
        return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    if (memchr(s, ':', n))
        return inet_pton(AF_INET6, buf, ip->b) == 1 ? 0 : -1;
    memset(ip->b, 0, 10);
    ip->b[10] = ip->b[11] = 0xff;
    return inet_pton(AF_INET, buf, ip->b + 12) == 1 ? 0 : -1; /* dotted quad only: no "0x7f.1", no "127.1" */
}

int mg_ip_parse_hop(const char *s, size_t n, mg_ip_t *ip)
{
    if (n > 0 && s[0] == '[') {
        const char *rb = memchr(s, ']', n);
        if (!rb || !memchr(s, ':', (size_t)(rb - s)))
            return -1;
        size_t rest = n - (size_t)(rb - s) - 1;
        if (rest && (rb[1] != ':' || !port_ok(rb + 2, rest - 1)))
            return -1;
        return mg_ip_parse(s + 1, (size_t)(rb - s) - 1, ip);
    }
    if (mg_ip_parse(s, n, ip) == 0)
        return 0;
    const char *colon = memchr(s, ':', n);
    if (!colon || memchr(colon + 1, ':', n - (size_t)(colon - s) - 1))
        return -1; /* "v4:port" has one colon; a bare IPv6 address was tried above */
    if (!port_ok(colon + 1, n - (size_t)(colon - s) - 1))
        return -1;
    return mg_ip_parse(s, (size_t)(colon - s), ip);
}

static int is_v4_mapped(const mg_ip_t *ip)
{
    static const uint8_t prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    return memcmp(ip->b, prefix, 12) == 0;
}

size_t mg_ip_format(const mg_ip_t *ip, char *buf, size_t size)
{
    const char *s = is_v4_mapped(ip) ? inet_ntop(AF_INET, ip->b + 12, buf, (socklen_t)size)
                                     : inet_ntop(AF_INET6, ip->b, buf, (socklen_t)size);
    if (!s) {
        if (size)
            buf[0] = '\0';
        return 0;
    }
    return strlen(buf);
}

int mg_cidr_parse(const char *s, mg_cidr_t *c)
{
    const char *slash = strchr(s, '/');
    size_t alen = slash ? (size_t)(slash - s) : strlen(s);
    if (mg_ip_parse(s, alen, &c->net) != 0)
        return -1;
    int v4 = !memchr(s, ':', alen);
    int max = v4 ? 32 : 128;
    int bits = max;
    if (slash) {
        const char *d = slash + 1;
        if (!*d || strlen(d) > 3)
            return -1;
        bits = 0;
        for (; *d; d++) {
            if (*d < '0' || *d > '9')
                return -1;
            bits = bits * 10 + (*d - '0');
        }
        if (bits > max)
            return -1;
    }
    c->bits = v4 ? bits + 96 : bits;
    /* the bits past the prefix must be zero */
    for (int i = c->bits; i < 128; i++)
        if (c->net.b[i / 8] & (0x80 >> (i % 8)))
            return -1;
    return 0;
}

int mg_cidr_match(const mg_cidr_t *list, size_t n, const mg_ip_t *ip)
{
    for (size_t k = 0; k < n; k++) {
        const mg_cidr_t *c = &list[k];
        int full = c->bits / 8, rest = c->bits % 8;
        if (memcmp(c->net.b, ip->b, (size_t)full) != 0)
            continue;
        if (rest && ((c->net.b[full] ^ ip->b[full]) & (uint8_t)(0xff << (8 - rest))))
            continue;
        return 1;
    }
    return 0;
}

static int ows(char c) { return c == ' ' || c == '\t'; }

int mg_forwarded_client(const mg_str_t *vals, size_t nvals, const mg_cidr_t *trusted, size_t ntrusted,
                        mg_ip_t *client)
{
    int found = 0;
    for (size_t k = nvals; k-- > 0;) {
        const char *v = vals[k].p, *end = v + vals[k].n;
        for (;;) {
            const char *s = end;
            while (s > v && s[-1] != ',')
                s--;
            const char *a = s, *b = end;
            while (a < b && ows(*a))
                a++;
            while (b > a && ows(b[-1]))
                b--;
            if (a < b) { /* empty list elements are allowed (RFC 9110 §5.6.1) */
                mg_ip_t hop;
                if (mg_ip_parse_hop(a, (size_t)(b - a), &hop) != 0)
                    return found; /* garbage: the last good hop (a trusted proxy) stands */
                *client = hop;
                found = 1;
                if (!mg_cidr_match(trusted, ntrusted, &hop))
                    return 1; /* the rightmost hop we do not trust: the client */
            }
            if (s == v)
                break;
            end = s - 1;
        }
    }
    return found; /* every hop was a trusted proxy: the leftmost is the client */
}
