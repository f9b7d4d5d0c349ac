/*
 * mg_forward — proxy routes: the glue between a client request (mg_req,
 * mg_conn) and the forwarding engine (mg_proxy). It builds the upstream
 * request head (hop-by-hop headers removed, X-Forwarded-*, trace context),
 * streams the request body with back-pressure, turns the upstream response
 * into the client response (re-framed) and maps errors to statuses.
 */
#define _GNU_SOURCE
#include "mg_forward.h"

#include <stdio.h>
#include <strings.h>

#include "mg_grpc.h"
#include "mg_log.h"
#include "mg_trace.h"
#include "mg_tunnel.h"

#include <lauxlib.h>

#define CLIENT_OUT_HIGH (256 * 1024) /* response bytes queued for a slow client before the upstream is paused */

/* Pushes a header's name in lowercase, as Lua sees header names (at most 127 bytes). */
static void push_lower_name(lua_State *L, const mg_header_t *h)
{
    char name[128];
    size_t n = h->name_len < sizeof(name) ? h->name_len : sizeof(name) - 1;
    mg_lowercase(name, h->name, n);
    lua_pushlstring(L, name, n);
}

/* Did a plugin set or clear this header for the upstream (ctx._proxy_headers at index overrides)? */
static int overridden(lua_State *L, int overrides, const char *lower)
{
    if (!overrides)
        return 0;
    lua_pushstring(L, lower);
    lua_rawget(L, overrides);
    int set = !lua_isnil(L, -1);
    lua_pop(L, 1);
    return set;
}

/* The resolved client address (trusted_proxies, X-Forwarded-For: mg_req_head), not always the peer. */
static size_t client_ip(mg_req_t *r, const char **ip)
{
    *ip = mg_req_client_ip(r);
    return strlen(*ip);
}

/* The peer's address, without the port: what this hop appends to X-Forwarded-For. */
static size_t peer_ip(const mg_req_t *r, const char **ip)
{
    const char *colon = strrchr(r->remote, ':');
    *ip = r->remote;
    return colon ? (size_t)(colon - r->remote) : strlen(r->remote);
}

/*
 * A claim about the client or the original request that only a proxy in
 * front of us may make: every X-Forwarded-* (Proto, Host, Port, Prefix, ...),
 * Forwarded (RFC 7239) and X-Real-IP. (X-Forwarded-For is handled apart.)
 */
static int forwarding_header(const mg_header_t *h)
{
    return (h->name_len > 12 && strncasecmp(h->name, "x-forwarded-", 12) == 0) ||
           mg_http1_name_is(h, "forwarded", 9) || mg_http1_name_is(h, "x-real-ip", 9);
}

/*
 * The upstream request head. Host (host_header = "pass") and
 * X-Forwarded-Host are the request's one host (r->authority: the
 * absolute-form target's authority, else Host, validated in mg_req_head), so
 * the upstream sees the host that was routed. The forwarding headers are
 * believed only from trusted_proxies: from any other peer the client's
 * X-Forwarded-* (Proto, Host, Port, ...), Forwarded and X-Real-IP are dropped
 * and X-Forwarded-For starts again with the peer; a trusted peer's pass and
 * its X-Forwarded-For chain gets the peer appended. A plugin's own value for one
 * of them (ctx.request:set_header / clear_header) replaces the gateway's.
 */
static void build_head(mg_proxy_t *p, mg_target_t *t, mg_upreq_t *q)
{
    mg_req_t *r = p->owner;
    mg_upstream_t *up = p->up;
    mg_resp_t *f = &q->fields;
    mg_pool_t *pool = &r->pool;
    q->method = r->method;
    /* the target untouched (origin-form) */
    if (r->target.p[0] == '/') {
        q->target = r->target;
    } else {
        size_t n = r->path.n + (r->query.n ? 1 + r->query.n : 0);
        char *s = mg_pool_alloc(pool, n);
        memcpy(s, r->path.p, r->path.n);
        if (r->query.n) {
            s[r->path.n] = '?';
            memcpy(s + r->path.n + 1, r->query.p, r->query.n);
        }
        q->target = (mg_str_t){ s, n };
    }
    if (up->host_mode == MG_HOST_TARGET)
        q->authority = (mg_str_t){ t->authority, strlen(t->authority) };
    else if (up->host_mode == MG_HOST_FIXED)
        q->authority = (mg_str_t){ up->host_value, strlen(up->host_value) };
    else if (r->authority.n)
        q->authority = r->authority;
    else
        q->authority = (mg_str_t){ t->authority, strlen(t->authority) };

    /* headers plugins set or cleared for the upstream: ctx._proxy_headers (lowercase name -> value|false) */
    lua_State *L = r->gen->vm->L;
    int overrides = 0;
    if (r->ctx_ref != LUA_NOREF && r->proxy_headers) {
        mg_req_push_ctx(r);
        lua_pushliteral(L, "_proxy_headers");
        lua_rawget(L, -2);
        lua_remove(L, -2);
        if (lua_istable(L, -1))
            overrides = lua_gettop(L);
        else
            lua_pop(L, 1);
    }
    int trusted = r->peer_trusted;
    int xfp = 0, xfh = 0;
    size_t chain = 0; /* a trusted peer's X-Forwarded-For chain, its fields joined in order */
    const mg_header_t *conn = mg_resp_connection_field(r->headers, r->nheaders), *end = r->headers + r->nheaders;
    for (size_t i = 0; i < r->nheaders; i++) {
        const mg_header_t *h = &r->headers[i];
        if (up->protocol != MG_UP_HTTP1 && mg_http1_name_is(h, "te", 2) &&
            memmem(h->value, h->value_len, "trailers", 8))
            mg_resp_add(f, "te", 2, "trailers", 8); /* HTTP/2 upstreams (gRPC) need to know trailers are read */
        if (mg_resp_hop_by_hop(h) || (conn && mg_resp_named_by_connection(conn, (size_t)(end - conn), h)))
            continue;
        if (overrides) {
            push_lower_name(L, h);
            lua_rawget(L, overrides);
            int replaced = !lua_isnil(L, -1);
            lua_pop(L, 1);
            if (replaced)
                continue;
        }
        if (mg_http1_name_is(h, "x-forwarded-for", 15)) {
            if (trusted && h->value_len)
                chain += h->value_len + 2;
            continue; /* written below, as one field */
        }
        if (forwarding_header(h)) {
            if (!trusted)
                continue; /* a client's own claim about scheme or host: the gateway says it below */
            xfp |= mg_http1_name_is(h, "x-forwarded-proto", 17);
            xfh |= mg_http1_name_is(h, "x-forwarded-host", 16);
        }
        if (mg_http1_name_is(h, "host", 4) || mg_http1_name_is(h, "expect", 6) ||
            mg_http1_name_is(h, "x-request-id", 12) || mg_http1_name_is(h, "traceparent", 11) ||
            (r->grpc && mg_http1_name_is(h, "grpc-timeout", 12)))
            continue; /* replaced below; Expect was answered by the gateway */
        mg_resp_add(f, h->name, h->name_len, h->value, h->value_len);
    }
    if (!overridden(L, overrides, "x-forwarded-for")) {
        const char *ip;
        size_t iplen = peer_ip(r, &ip);
        char *v = mg_pool_alloc(pool, chain + iplen + 1), *w = v;
        for (size_t i = 0; chain && i < r->nheaders; i++) {
            const mg_header_t *h = &r->headers[i];
            if (mg_http1_name_is(h, "x-forwarded-for", 15) && h->value_len &&
                !(conn && mg_resp_named_by_connection(conn, (size_t)(end - conn), h))) {
                memcpy(w, h->value, h->value_len);
                w += h->value_len;
                memcpy(w, ", ", 2);
                w += 2;
            }
        }
        memcpy(w, ip, iplen);
        w += iplen;
        mg_resp_add(f, "X-Forwarded-For", 15, v, (size_t)(w - v));
    }
    if (!xfp && !overridden(L, overrides, "x-forwarded-proto"))
        mg_resp_add(f, "X-Forwarded-Proto", 17, r->tls ? "https" : "http", r->tls ? 5 : 4);
    if (!xfh && r->authority.n && !overridden(L, overrides, "x-forwarded-host"))
        mg_resp_add(f, "X-Forwarded-Host", 16, r->authority.p, r->authority.n);
    if (r->grpc && r->deadline_us) {
        /* the upstream gets what is left of the caller's deadline, not the caller's whole timeout */
        uint64_t now = mg_now_us();
        char *v = mg_pool_alloc(pool, 16);
        size_t n = mg_grpc_timeout_format(v, r->deadline_us > now ? r->deadline_us - now : 0);
        mg_resp_add(f, "grpc-timeout", 12, v, n);
    }
    mg_resp_add(f, "X-Request-ID", 12, r->trace_id, strlen(r->trace_id));
    /* W3C trace context: the trace id, this attempt's client span (a new id when not recorded), the sampling decision */
    char *tp = mg_pool_alloc(pool, MG_TRACE_PARENT_LEN);
    size_t tpn = mg_trace_parent_value(tp, r->trace, r->trace_id, r->task.trace_flags, p->trace_span);
    if (tpn)
        mg_resp_add(f, "traceparent", 11, tp, tpn);
    if (overrides) {
        lua_pushnil(L);
        while (lua_next(L, overrides)) {
            size_t nl, vl;
            if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
                const char *name = lua_tolstring(L, -2, &nl), *value = lua_tolstring(L, -1, &vl);
                /* invalid ones are dropped; the strings live in ctx until the request ends */
                if (mg_resp_valid_name(name, nl) && mg_resp_valid_value(value, vl) && !mg_resp_framing_field(name, nl))
                    mg_resp_add(f, name, nl, value, vl);
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    if (p->upgrade) {
        /* an upgrade the route forwards: the hop-by-hop pair is ours to send again (Sec-WebSocket-* passed above) */
        mg_resp_add(f, "Connection", 10, "upgrade", 7);
        mg_resp_add(f, "Upgrade", 7, r->upgrade.p, r->upgrade.n);
    }
}

/* A gRPC status among the upstream's fields (its trailers, or a trailers-only head), for the access log. */
static void note_grpc_status(mg_req_t *r, const mg_header_t *h, size_t n)
{
    int st = r->grpc ? mg_grpc_status_field(h, n) : -1;
    if (st >= 0)
        r->grpc_status = st;
}

/* An upstream field the client gets: not hop-by-hop, not the upstream's X-Request-ID (ours goes instead). */
static int relayed(const mg_http1_response_t *u, const mg_header_t *conn, const mg_header_t *h)
{
    return !mg_resp_hop_by_hop(h) &&
           !(conn && mg_resp_named_by_connection(conn, (size_t)(u->headers + u->num_headers - conn), h)) &&
           !mg_http1_name_is(h, "x-request-id", 12);
}

/* The upstream's fields the client gets, added to resp in order. */
static void relay_fields(mg_resp_t *resp, const mg_http1_response_t *u)
{
    const mg_header_t *conn = mg_resp_connection_field(u->headers, u->num_headers);
    for (size_t i = 0; i < u->num_headers; i++)
        if (relayed(u, conn, &u->headers[i]))
            mg_resp_add(resp, u->headers[i].name, u->headers[i].name_len, u->headers[i].value,
                        u->headers[i].value_len);
}

/* The upstream's status and fields merged into ctx.response (Lua sees the fields as the upstream spelled them). */
static void merge_into_ctx(mg_req_t *r, const mg_http1_response_t *u)
{
    lua_State *L = r->gen->vm->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->gen->vm->ctx_mt_ref);
    lua_getfield(L, -1, "merge_response");
    lua_remove(L, -2);
    mg_req_push_ctx(r);
    lua_pushinteger(L, u->status);
    lua_createtable(L, (int)u->num_headers * 2, 0);
    int k = 0;
    const mg_header_t *conn = mg_resp_connection_field(u->headers, u->num_headers);
    for (size_t i = 0; i < u->num_headers; i++) {
        const mg_header_t *h = &u->headers[i];
        if (!relayed(u, conn, h))
            continue;
        lua_pushlstring(L, h->name, h->name_len);
        lua_rawseti(L, -2, ++k);
        lua_pushlstring(L, h->value, h->value_len);
        lua_rawseti(L, -2, ++k);
    }
    lua_call(L, 3, 0);
}

/* A head from a filter's results on co: status at 1, headers at hidx. NULL, or why it is refused. */
static const char *filtered_head(mg_req_t *r, lua_State *co, int hidx, int64_t content_length)
{
    int code = (int)lua_tointeger(co, 1);
    if (!lua_isnumber(co, 1) || code < 200 || code > 999)
        return "a filter set an invalid status (want an integer 200..999)";
    mg_resp_t *resp = &r->resp;
    mg_resp_init(resp, &r->pool, code);
    if (code == r->upstream_status && r->upstream_reason) {
        resp->reason = r->upstream_reason;
        resp->reason_len = strlen(r->upstream_reason);
    }
    const char *bad = lua_istable(co, hidx) ? mg_resp_add_lua(resp, co, hidx, 0) : NULL;
    if (bad)
        return bad;
    resp->content_length = mg_resp_body_allowed(code) ? content_length : -1;
    resp->no_body = r->upstream_no_body && code == r->upstream_status;
    return NULL;
}

static void filter_failed(mg_req_t *r, mg_task_t *t, const char *why)
{
    mg_req_log_failure(r, why);
    mg_task_release(t, 0);
    mg_forward_cancel(r);
    mg_req_error(r, 0, MG_E(LUA_ERROR), NULL, !r->body_complete, NULL, 0);
}

static void on_filter_done(mg_task_t *t, int status)
{
    mg_req_t *r = t->owner;
    r->task_running = 0;
    r->head_filtering = 0;
    lua_State *co = t->co;
    const char *bad = status != 0 ? lua_tostring(co, -1) : filtered_head(r, co, 2, r->upstream_cl);
    if (bad) {
        filter_failed(r, t, bad);
        return;
    }
    mg_req_send_head(r, &r->resp); /* while the filter's results (the values) are on co */
    mg_task_release(t, 1);
    if (r->filter_paused) {
        r->filter_paused = 0;
        mg_proxy_resume(r->proxy);
    }
}

/* Runs the header_filter plugins over the upstream's head (they may yield). Returns 1 to pause. */
static int filter_head(mg_req_t *r, const mg_http1_response_t *u)
{
    mg_vm_t *vm = r->gen->vm;
    lua_State *L = vm->L;
    merge_into_ctx(r, u);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->plugins_filter_ref);
    mg_req_push_ctx(r);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->route->chain_ref);
    r->head_filtering = 1;
    r->task.trace_id = r->trace_id;
    r->task_running = 1;
    mg_task_start(&r->task, vm, 2, on_filter_done, r);
    if (!r->head_filtering)
        return 0; /* finished without yielding: the head is written */
    r->filter_paused = 1;
    return 1;
}

/*
 * The upstream ended a gRPC call with DEADLINE_EXCEEDED at the deadline the
 * gateway gave it: its grpc-timeout was what was left of the request's
 * deadline (rounded down to the millisecond), so both timers run out
 * together and which one fires first is a race. It is the request's deadline
 * either way: the caller gets the gateway's DEADLINE_EXCEEDED (with the
 * trace id), the access log and the metrics say 504 `deadline`. A 4 that
 * comes earlier is the upstream's own verdict and is relayed as it is.
 */
#define GRPC_DEADLINE_SLACK_US 5000 /* grpc-timeout's millisecond and the timers' precision */
static int upstream_deadline(mg_req_t *r, const mg_header_t *h, size_t n)
{
    if (!r->grpc || !r->deadline_us || mg_grpc_status_field(h, n) != 4 ||
        mg_now_us() + GRPC_DEADLINE_SLACK_US < r->deadline_us)
        return 0;
    mg_log_warn(r->trace_id, "route %s: request deadline exceeded (the upstream ended the call at it)",
                r->route->name);
    return 1;
}

static int on_head(mg_proxy_t *p, const mg_http1_response_t *u)
{
    mg_req_t *r = p->owner;
    if (p->framing == MG_BODY_NONE && upstream_deadline(r, u->headers, u->num_headers)) {
        mg_forward_cancel(r); /* a trailers-only answer: the gateway's own goes instead */
        mg_req_error(r, 0, MG_E(DEADLINE), NULL, !r->body_complete, NULL, 0);
        return 1;
    }
    r->status = r->upstream_status = u->status;
    r->upstream_reason = u->reason_len ? mg_pool_strndup(&r->pool, u->reason, u->reason_len) : NULL;
    int has_body = p->framing != MG_BODY_NONE;
    r->upstream_no_body = !has_body && !p->head_request;
    note_grpc_status(r, u->headers, u->num_headers);
    int with_ctx = r->ctx_ref != LUA_NOREF;
    /* the length the client is told: the upstream's, unless a filter may change the body */
    r->upstream_cl = mg_resp_body_allowed(u->status) ? u->content_length : -1;
    if (r->route->chain_whole_body && with_ctx && has_body) {
        /* keep the head (in ctx.response) until the whole body is here */
        r->whole_body = 1;
        merge_into_ctx(r, u);
        return 0;
    }
    if (r->route->chain_body_filters && with_ctx && has_body) {
        r->body_filtering = 1; /* body_filter may change the length: streamed (chunked on HTTP/1.1) */
        r->upstream_cl = -1;
    }
    if (r->route->chain_filters && with_ctx)
        return filter_head(r, u);
    mg_resp_t *resp = &r->resp;
    mg_resp_init(resp, &r->pool, u->status);
    resp->reason = u->reason;
    resp->reason_len = u->reason_len;
    relay_fields(resp, u);
    mg_req_add_defaults(r, resp);
    resp->content_length = r->upstream_cl;
    resp->no_body = r->upstream_no_body;
    mg_req_send_head(r, resp);
    /* not flushed here: the body usually arrived with the head, one write sends both */
    return 0;
}

/* An interim response (103 Early Hints): relayed before the final head, where the client can take it. */
static void on_interim(mg_proxy_t *p, const mg_http1_response_t *u)
{
    mg_req_t *r = p->owner;
    if (r->resp_started)
        return;
    mg_resp_t resp;
    mg_resp_init(&resp, &r->pool, u->status);
    relay_fields(&resp, u);
    mg_req_send_interim(r, &resp);
}

/* A field that may go in trailers to the client (RFC 9110 §6.5.1: not framing, routing or hop-by-hop). */
static int trailer_ok(const mg_header_t *h)
{
    static const char *never[] = { "host", "content-type", "content-encoding", "content-range", "authorization",
                                   "set-cookie", "cache-control", "expect", "max-forwards", "pragma", "range",
                                   "x-request-id" };
    if (mg_resp_hop_by_hop(h))
        return 0;
    for (size_t i = 0; i < mg_countof(never); i++)
        if (mg_http1_name_is(h, never[i], strlen(never[i])))
            return 0;
    return 1;
}

/* The upstream's trailers, kept (in the arena: they are borrowed) until the response ends. */
static void on_trailers(mg_proxy_t *p, const mg_header_t *h, size_t n)
{
    mg_req_t *r = p->owner;
    note_grpc_status(r, h, n);
    int deadline = upstream_deadline(r, h, n);
    r->trailers = mg_pool_alloc(&r->pool, sizeof(mg_header_t) * (n + 2));
    r->ntrailers = 0;
    if (deadline) {
        /* the messages went out: the gateway's status ends the call, in place of the upstream's */
        const mg_error_t *k = MG_E(DEADLINE);
        r->error_kind = k;
        r->status = k->status;
        mg_grpc_status_trailers(&r->pool, k->grpc, k->message, k->name, r->trace_id, r->trailers);
        r->ntrailers = 2;
    }
    for (size_t i = 0; i < n; i++) {
        if (!trailer_ok(&h[i]))
            continue;
        if (deadline && h[i].name_len > 5 && strncasecmp(h[i].name, "grpc-", 5) == 0)
            continue; /* grpc-status, grpc-message, grpc-status-details-bin: the upstream's, replaced */
        mg_header_t *t = &r->trailers[r->ntrailers++];
        t->name = mg_pool_strndup(&r->pool, h[i].name, h[i].name_len);
        t->name_len = h[i].name_len;
        t->value = mg_pool_strndup(&r->pool, h[i].value, h[i].value_len);
        t->value_len = h[i].value_len;
    }
}

static struct evbuffer *body_sink(mg_proxy_t *p)
{
    mg_req_t *r = p->owner;
    /* body bytes can go to the client as they are unless we filter them or the wire frames them */
    return r->body_filtering || r->whole_body ? NULL : mg_req_body_sink(r);
}

static void finish_response(mg_req_t *r)
{
    mg_req_finish(r, r->trailers, r->ntrailers);
}

static void run_chunk_filter(mg_req_t *r, const char *data, size_t len, int eof);

/* The client's output is over the high mark: flush, and pause the upstream if it stays there. Returns 1 when paused or gone. */
static int throttle(mg_req_t *r)
{
    if (mg_req_output_pending(r) <= CLIENT_OUT_HIGH)
        return 0;
    mg_req_flush(r);
    if (r->proxy_done)
        return 1; /* the client went away during the flush */
    if (mg_req_output_pending(r) > CLIENT_OUT_HIGH) {
        r->proxy_paused = 1; /* mg_forward_output_drained resumes */
        return 1;
    }
    return 0;
}

static void on_chunk_done(mg_task_t *t, int status)
{
    mg_req_t *r = t->owner;
    r->task_running = 0;
    r->chunk_filtering = 0;
    if (status != 0) {
        mg_req_log_failure(r, lua_tostring(t->co, -1));
        mg_task_release(t, 0);
        r->error_kind = MG_E(LUA_ERROR);
        mg_forward_cancel(r);
        mg_req_break(r); /* the head went out: the body must not look complete */
        return;
    }
    size_t n;
    const char *out = lua_tolstring(t->co, 1, &n);
    if (out && n)
        mg_req_send_body(r, out, n);
    mg_task_release(t, 1);
    if (r->chunk_eof) {
        finish_response(r);
        return;
    }
    if (r->finish_pending) {
        r->finish_pending = 0;
        run_chunk_filter(r, "", 0, 1);
        return;
    }
    if (r->filter_paused) {
        r->filter_paused = 0;
        if (!throttle(r))
            mg_proxy_resume(r->proxy);
    }
}

static void on_whole_done(mg_task_t *t, int status)
{
    mg_req_t *r = t->owner;
    r->task_running = 0;
    lua_State *co = t->co;
    size_t n = 0;
    const char *body = status == 0 ? lua_tolstring(co, 3, &n) : NULL;
    const char *bad = status != 0 ? lua_tostring(co, -1) : filtered_head(r, co, 2, (int64_t)n);
    if (bad) {
        mg_req_log_failure(r, bad);
        mg_task_release(t, 0);
        mg_req_error(r, 0, MG_E(LUA_ERROR), NULL, !r->body_complete, NULL, 0);
        return;
    }
    mg_req_send_head(r, &r->resp);
    if (body && n && mg_resp_body_allowed(r->resp.status))
        mg_req_send_body(r, body, n);
    mg_task_release(t, 1);
    finish_response(r);
}

/* whole_body: header_filter and body_filter over the buffered response, in a task. */
static void run_whole_filter(mg_req_t *r)
{
    mg_vm_t *vm = r->gen->vm;
    lua_State *L = vm->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->plugins_whole_ref);
    mg_req_push_ctx(r);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->route->chain_ref);
    size_t n = evbuffer_get_length(r->body);
    lua_pushlstring(L, n ? (const char *)evbuffer_pullup(r->body, -1) : "", n);
    evbuffer_drain(r->body, n);
    r->task.trace_id = r->trace_id;
    r->task_running = 1;
    mg_task_start(&r->task, vm, 3, on_whole_done, r);
}

/* Runs the body_filter plugins over one chunk, in a task (they may yield). */
static void run_chunk_filter(mg_req_t *r, const char *data, size_t len, int eof)
{
    mg_vm_t *vm = r->gen->vm;
    lua_State *L = vm->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->plugins_chunk_ref);
    mg_req_push_ctx(r);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->route->chain_ref);
    lua_pushlstring(L, data, len); /* a copy: data is borrowed from the upstream buffer */
    lua_pushboolean(L, eof);
    r->chunk_filtering = 1;
    r->chunk_eof = eof;
    r->task.trace_id = r->trace_id;
    r->task_running = 1;
    mg_task_start(&r->task, vm, 4, on_chunk_done, r);
}

static int on_body(mg_proxy_t *p, const char *data, size_t len)
{
    mg_req_t *r = p->owner;
    if (r->whole_body) {
        size_t have = evbuffer_get_length(r->body);
        if ((int64_t)(have + len) > r->route->chain_whole_body) {
            mg_log_warn(r->trace_id, "route %s: upstream body over the %lld bytes a whole_body plugin may buffer",
                        r->route->name, (long long)r->route->chain_whole_body);
            mg_forward_cancel(r);
            mg_req_error(r, 0, MG_E(RESPONSE_TOO_LARGE), NULL, !r->body_complete, NULL, 0);
            return 1;
        }
        evbuffer_add(r->body, data ? data : "", data ? len : 0);
        return 0;
    }
    if (r->body_filtering) {
        run_chunk_filter(r, data, len, 0);
        if (r->chunk_filtering) {
            r->filter_paused = 1; /* the filter yielded: the upstream waits, on_chunk_done resumes it */
            return 1;
        }
    } else if (data) {
        mg_req_send_body(r, data, len);
    } else {
        mg_req_body_added(r, len); /* already read into the sink by the proxy */
    }
    /* under the mark, on_wait flushes once this read is delivered */
    return throttle(r) || !p->running;
}

static void on_wait(mg_proxy_t *p)
{
    mg_req_t *r = p->owner;
    mg_req_flush(r);
}

static void on_body_wanted(mg_proxy_t *p)
{
    mg_req_t *r = p->owner;
    r->wire->resume_body(r);
}

static void on_done(mg_proxy_t *p, const mg_error_t *err)
{
    mg_req_t *r = p->owner;
    r->proxy_done = 1;
    if (!err) {
        if (r->whole_body) {
            run_whole_filter(r);
            return;
        }
        if (r->body_filtering) {
            /* the filters get a last call (eof) to flush or append */
            if (r->chunk_filtering)
                r->finish_pending = 1;
            else
                run_chunk_filter(r, "", 0, 1);
            return;
        }
        finish_response(r);
        return;
    }
    if (r->chunk_filtering) {
        /* the upstream failed while a chunk was being filtered: the filter task goes too */
        mg_task_cancel(&r->task);
        r->task_running = 0;
        r->chunk_filtering = 0;
    }
    r->error_kind = err;
    if (err != MG_E(NO_TARGET) && err != MG_E(BUSY) && !mg_error_is_redis(err)) /* redis_*: logged per interval */
        mg_log_warn(r->trace_id, "route %s: upstream %s: %s%s%s", r->route->name, p->up->name, err->name,
                    p->target ? " from " : "", p->target ? p->target->text : "");
    if (r->resp_started) {
        /* part of the response is out: it must not look complete, so reset the connection */
        mg_req_break(r);
        return;
    }
    static const mg_header_t retry_after = { "Retry-After", 11, "1", 1 };
    int busy = err == MG_E(BUSY);
    mg_req_error(r, busy ? p->busy_status : 0, err, NULL, !r->body_complete, busy ? &retry_after : NULL, busy);
}

/*
 * The upstream switched protocols: the client gets the 101 (the upstream's
 * fields, with the Connection/Upgrade pair for the token it chose), the
 * request ends (access log: status 101) and the connection becomes a tunnel
 * holding the upstream connection and the permit. An upstream that names
 * another protocol than the one asked for is refused (a protocol error).
 */
static void on_upgrade(mg_proxy_t *p, const mg_http1_response_t *u)
{
    mg_req_t *r = p->owner;
    const mg_header_t *up = NULL;
    for (size_t i = 0; i < u->num_headers; i++)
        if (mg_http1_name_is(&u->headers[i], "upgrade", 7))
            up = &u->headers[i];
    if (!up || up->value_len != r->upgrade.n || strncasecmp(up->value, r->upgrade.p, r->upgrade.n) != 0) {
        mg_log_warn(r->trace_id, "route %s: upstream %s answered 101 without Upgrade: %.*s", r->route->name,
                    p->up->name, (int)r->upgrade.n, r->upgrade.p);
        return;
    }
    mg_resp_t *resp = &r->resp;
    mg_resp_init(resp, &r->pool, 101);
    relay_fields(resp, u);
    mg_resp_add(resp, "Connection", 10, "upgrade", 7);
    mg_resp_add(resp, "Upgrade", 7, up->value, up->value_len);
    mg_req_add_defaults(r, resp);
    r->upstream_status = 101;
    int permit = 0;
    mg_upconn_t *uc = mg_proxy_hand_over(p, &permit);
    r->proxy_done = 1;
    mg_tunnel_spec_t spec = { .route = r->route->name, .upstream = p->up->name,
                              .target = p->target ? p->target->text : "", .trace_id = r->trace_id,
                              .sema = permit ? p->up->sema : NULL,
                              .websocket = r->upgrade.n == 9 && strncasecmp(r->upgrade.p, "websocket", 9) == 0 };
    mg_conn_t *c = r->conn;
    mg_req_send_upgrade(r, resp);
    mg_tunnel_start(c, uc, &spec);
    mg_req_end_upgraded(r); /* the log line of the handshake; the generation is no longer held */
}

static const mg_proxy_ops_t forward_ops = {
    .build_head = build_head,
    .on_interim = on_interim,
    .on_head = on_head,
    .on_trailers = on_trailers,
    .on_body = on_body,
    .body_sink = body_sink,
    .on_wait = on_wait,
    .on_body_wanted = on_body_wanted,
    .on_upgrade = on_upgrade,
    .on_done = on_done,
};

/*
 * Does the client ask for an upgrade this route forwards? Connection names
 * upgrade, Upgrade is one token of the route's list, the wire can switch
 * (HTTP/1.1) and there is no request body (whose end would be ambiguous
 * once the bytes are a tunnel), to an HTTP/1.1 upstream. Otherwise Upgrade is stripped like any
 * hop-by-hop field and the request goes as a plain one.
 */
static void upgrade_asked(mg_req_t *r, mg_proxy_t *p)
{
    r->upgrade.n = 0;
    if (!r->route->upgrade || !r->wire->upgrade || p->body_mode != MG_BODY_NONE || p->up->protocol != MG_UP_HTTP1)
        return; /* an HTTP/2 upstream has no Upgrade (RFC 8441 is not done) */
    static const mg_header_t upgrade_name = { "upgrade", 7, NULL, 0 };
    const mg_header_t *up = NULL;
    int n_up = 0;
    for (size_t i = 0; i < r->nheaders; i++)
        if (mg_http1_name_is(&r->headers[i], "upgrade", 7)) {
            up = &r->headers[i];
            n_up++;
        }
    if (n_up != 1 || !mg_resp_named_by_connection(r->headers, r->nheaders, &upgrade_name))
        return;
    const char *v = up->value, *e = up->value + up->value_len;
    while (v < e && (*v == ' ' || *v == '\t'))
        v++;
    while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    if (e == v || !mg_route_upgrade_ok(r->route, v, (size_t)(e - v)))
        return;
    r->upgrade.p = v;
    r->upgrade.n = (size_t)(e - v);
    p->upgrade = 1;
}

void mg_forward_start(mg_req_t *r, mg_target_t *target)
{
    mg_proxy_t *p = r->proxy;
    memset(p, 0, offsetof(mg_proxy_t, headers));
    p->pool = &r->pool;
    p->preferred = target;
    p->deadline_us = r->deadline_us; /* no attempt starts that the request's deadline would cut short */
    p->ops = &forward_ops;
    p->owner = r;
    p->up = r->route->upstream;
    p->trace = r->trace; /* its attempts go in the request's timeline when it is recorded */
    p->trace_parent = -1;
    p->resp.headers = p->headers;
    unsigned m = r->method_bit;
    p->idempotent = (m & (MG_M_GET | MG_M_HEAD | MG_M_PUT | MG_M_DELETE | MG_M_OPTIONS | MG_M_TRACE)) != 0;
    p->head_request = m == MG_M_HEAD;
    if (r->flags & MG_HTTP1_F_CHUNKED) {
        p->body_mode = MG_BODY_CHUNKED;
    } else if (r->content_length > 0) {
        p->body_mode = MG_BODY_LENGTH;
        p->body_len = r->content_length;
    }
    upgrade_asked(r, p);
    mg_upstream_t *up = p->up;
    if (up->balance == MG_BALANCE_HASH) {
        if (up->hash_kind == 'i') {
            p->hash_len = client_ip(r, &p->hash);
        } else if (up->hash_kind == 'h') {
            for (size_t i = 0; i < r->nheaders; i++)
                if (r->headers[i].name_len == strlen(up->hash_name) &&
                    strncasecmp(r->headers[i].name, up->hash_name, r->headers[i].name_len) == 0) {
                    p->hash = r->headers[i].value;
                    p->hash_len = r->headers[i].value_len;
                }
        } else {
            for (int i = 0; i < r->match.nparams; i++)
                if (strcmp(r->match.names[i], up->hash_name) == 0) {
                    p->hash = r->match.values[i].p;
                    p->hash_len = r->match.values[i].n;
                }
        }
    }
    mg_proxy_start(p);
}

int mg_forward_body_ready(mg_req_t *r)
{
    mg_proxy_t *p = r->proxy;
    return !r->proxy_done && p->running && p->body_wanted;
}

void mg_forward_body(mg_req_t *r, const char *data, size_t len)
{
    if (!r->proxy_done && r->proxy->running)
        mg_proxy_write_body(r->proxy, data, len);
}

void mg_forward_body_end(mg_req_t *r)
{
    r->body_complete = 1;
    if (!r->proxy_done && r->proxy->running)
        mg_proxy_end_body(r->proxy);
}

void mg_forward_output_drained(mg_req_t *r)
{
    if (r->proxy && r->proxy_paused && !r->proxy_done) {
        r->proxy_paused = 0;
        mg_proxy_resume(r->proxy);
    }
}

/*
 * A gRPC call over HTTP/2 whose response started, cut short (the upstream
 * failed or went silent, the deadline, a filter's error, a body over
 * max_body): trailers with the kind's gRPC status and the trace id end it,
 * instead of a reset (RST_STREAM INTERNAL_ERROR, which a gRPC client
 * reports as INTERNAL without a word of why). Trailers end a gRPC call for
 * good: a message cut in the middle cannot be taken for a whole one (its
 * length came first), and a non-zero status fails the call. Not for a
 * response whose head gave a Content-Length (ending early would be a
 * framing error) or on HTTP/1.1 (trailers there need chunked framing and a
 * client that asked for them: it is reset as any other response).
 */
int mg_forward_end_grpc(mg_req_t *r)
{
    const mg_error_t *k = r->error_kind;
    if (!r->grpc || !k || !r->proxy || r->upstream_cl >= 0 || strcmp(r->wire->version, "2") != 0)
        return 0;
    mg_header_t *t = mg_pool_alloc(&r->pool, sizeof(mg_header_t) * 2);
    mg_grpc_status_trailers(&r->pool, k->grpc, k->message, k->name, r->trace_id, t);
    r->grpc_status = k->grpc;
    r->status = k->status; /* the gateway's verdict, as for a gRPC error it answers before the head */
    mg_req_finish(r, t, 2);
    return 1;
}

void mg_forward_cancel(mg_req_t *r)
{
    if (r->proxy && !r->proxy_done) {
        r->proxy_done = 1;
        mg_proxy_cancel(r->proxy);
    }
}
