/*
 * mg_resp — see mg_resp.h.
 */
#include "mg_resp.h"

#include <strings.h>

void mg_resp_init(mg_resp_t *resp, mg_pool_t *pool, int status)
{
    memset(resp, 0, sizeof(*resp));
    resp->status = status;
    resp->content_length = -1;
    resp->pool = pool;
}

void mg_resp_add(mg_resp_t *resp, const char *name, size_t nl, const char *value, size_t vl)
{
    if (resp->n == resp->cap) {
        /* the arena cannot grow in place: start over with twice the room (rare: 16 fields first) */
        size_t cap = resp->cap ? resp->cap * 2 : 16;
        mg_header_t *h = mg_pool_alloc(resp->pool, cap * sizeof(*h));
        if (resp->n)
            memcpy(h, resp->h, resp->n * sizeof(*h));
        resp->h = h;
        resp->cap = cap;
    }
    resp->h[resp->n++] = (mg_header_t){ name, nl, value, vl };
    if (nl == 4 && mg_ascii_ieq(name, "date", 4))
        resp->has_date = 1;
    else if (nl == 12 && mg_ascii_ieq(name, "content-type", 12))
        resp->has_ctype = 1;
}

int mg_resp_has(const mg_resp_t *resp, const char *name, size_t nl)
{
    for (size_t i = 0; i < resp->n; i++)
        if (resp->h[i].name_len == nl && strncasecmp(resp->h[i].name, name, nl) == 0)
            return 1;
    return 0;
}

int mg_resp_valid_name(const char *s, size_t n)
{
    static const char ok[] = "!#$%&'*+-.^_`|~";
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c && strchr(ok, c))))
            return 0;
    }
    return 1;
}

int mg_resp_valid_value(const char *s, size_t n)
{
    /* no CR, LF or NUL: Lua must not be able to inject fields or split the response */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return 0;
    }
    return 1;
}

int mg_resp_framing_field(const char *s, size_t n)
{
    static const char *names[] = { "content-length", "transfer-encoding", "connection", "x-request-id" };
    for (size_t k = 0; k < mg_countof(names); k++)
        if (n == strlen(names[k]) && strncasecmp(s, names[k], n) == 0)
            return 1;
    return 0;
}

int mg_resp_hop_by_hop(const mg_header_t *h)
{
    /* by length first: this runs for every field of every proxied message */
    switch (h->name_len) {
    case 2: return mg_http1_name_is(h, "te", 2);
    case 7: return mg_http1_name_is(h, "trailer", 7) || mg_http1_name_is(h, "upgrade", 7);
    case 10: return mg_http1_name_is(h, "connection", 10) || mg_http1_name_is(h, "keep-alive", 10);
    case 14: return mg_http1_name_is(h, "content-length", 14);
    case 16: return mg_http1_name_is(h, "proxy-connection", 16);
    case 17: return mg_http1_name_is(h, "transfer-encoding", 17);
    default: return 0;
    }
}

/* The next token of a Connection value from *p (its length in *len, 0 at the end). */
static const char *connection_token(const char **p, const char *end, size_t *len)
{
    const char *q = *p;
    while (q < end && (*q == ' ' || *q == '\t' || *q == ','))
        q++;
    const char *s = q;
    while (q < end && *q != ',' && *q != ' ' && *q != '\t')
        q++;
    *p = q;
    *len = (size_t)(q - s);
    return s;
}

const mg_header_t *mg_resp_connection_field(const mg_header_t *hs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!mg_http1_name_is(&hs[i], "connection", 10))
            continue;
        const char *p = hs[i].value, *end = p + hs[i].value_len;
        size_t len;
        for (const char *s = connection_token(&p, end, &len); len; s = connection_token(&p, end, &len))
            /* close and keep-alive name no field a message would carry (keep-alive is hop-by-hop anyway) */
            if (!(len == 5 && mg_ascii_ieq(s, "close", 5)) && !(len == 10 && mg_ascii_ieq(s, "keep-alive", 10)))
                return &hs[i];
    }
    return NULL;
}

int mg_resp_named_by_connection(const mg_header_t *hs, size_t n, const mg_header_t *h)
{
    for (size_t i = 0; i < n; i++) {
        if (!mg_http1_name_is(&hs[i], "connection", 10))
            continue;
        const char *p = hs[i].value, *end = p + hs[i].value_len;
        size_t len;
        for (const char *s = connection_token(&p, end, &len); len; s = connection_token(&p, end, &len))
            if (len == h->name_len && strncasecmp(s, h->name, len) == 0)
                return 1;
    }
    return 0;
}

/* One field of a Lua headers table: name at -2, value at -1 (left there). */
static const char *field(mg_resp_t *out, lua_State *L, size_t before, const mg_resp_t *seen)
{
    if (lua_type(L, -2) != LUA_TSTRING)
        return "response header names must be strings";
    size_t nl;
    const char *name = lua_tolstring(L, -2, &nl);
    if (!mg_resp_valid_name(name, nl))
        return "invalid response header name";
    int skip = mg_resp_framing_field(name, nl); /* framing is the gateway's, not Lua's */
    if (!skip && seen) {
        for (size_t i = 0; i < before && !skip; i++)
            skip = seen->h[i].name_len == nl && strncasecmp(seen->h[i].name, name, nl) == 0;
    }
    int array = lua_istable(L, -1);
    int n = array ? (int)lua_objlen(L, -1) : 1;
    for (int i = 1; i <= n; i++) {
        if (array)
            lua_rawgeti(L, -1, i);
        else
            lua_pushvalue(L, -1);
        int t = lua_type(L, -1);
        if (t != LUA_TSTRING && t != LUA_TNUMBER) {
            lua_pop(L, 1);
            return "response header values must be strings or numbers";
        }
        size_t vl;
        const char *v = lua_tolstring(L, -1, &vl);
        if (!mg_resp_valid_value(v, vl)) {
            lua_pop(L, 1);
            return "response header value contains CR, LF or another control character";
        }
        if (out && !skip) /* a number's string lives on the stack only: copied */
            mg_resp_add(out, name, nl, t == LUA_TNUMBER ? mg_pool_strndup(out->pool, v, vl) : v, vl);
        lua_pop(L, 1);
    }
    return NULL;
}

/*
 * One pass over a Lua headers table: check only (out NULL), or append. A
 * table from moongate.ctx's new_headers is walked in the order its fields
 * were added (its metatable's `order`), any other in pairs() order.
 */
static const char *walk(mg_resp_t *out, lua_State *L, int idx, size_t before, const mg_resp_t *seen)
{
    const char *bad = NULL;
    if (lua_getmetatable(L, idx)) {
        lua_getfield(L, -1, "order");
        lua_remove(L, -2);
        if (lua_istable(L, -1)) {
            int order = lua_gettop(L), n = (int)lua_objlen(L, order);
            for (int i = 1; i <= n && !bad; i++) {
                lua_rawgeti(L, order, i);
                lua_pushvalue(L, -1);
                lua_rawget(L, idx);
                if (!lua_isnil(L, -1))
                    bad = field(out, L, before, seen);
                lua_pop(L, 2);
            }
            lua_pop(L, 1);
            return bad;
        }
        lua_pop(L, 1);
    }
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        bad = field(out, L, before, seen);
        lua_pop(L, 1);
        if (bad) {
            lua_pop(L, 1);
            return bad;
        }
    }
    return NULL;
}

const char *mg_resp_add_lua(mg_resp_t *resp, lua_State *L, int idx, int only_absent)
{
    if (idx < 0)
        idx = lua_gettop(L) + idx + 1;
    /* checked first: a bad field must not leave half a head */
    const char *bad = walk(NULL, L, idx, 0, NULL);
    if (bad)
        return bad;
    walk(resp, L, idx, resp->n, only_absent ? resp : NULL);
    return NULL;
}

const char *mg_resp_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 499: return "Client Closed Request";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    }
    static const char *classes[] = { "Informational", "Success", "Redirection", "Client Error", "Server Error" };
    return status >= 100 && status < 600 ? classes[status / 100 - 1] : "Status";
}
