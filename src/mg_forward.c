/*
 * mg_forward — proxy routes: the glue between a client request (mg_req,
 * mg_conn) and the forwarding engine (mg_proxy). It builds the upstream
 * request head (hop-by-hop headers removed, X-Forwarded-*, trace context),
 * streams the request body with back-pressure, turns the upstream response
 * into the client response (re-framed) and maps errors to statuses.
 */
#include "mg_forward.h"

#include <stdio.h>
#include <strings.h>

#include "mg_log.h"

#include <lauxlib.h>

#define CLIENT_OUT_HIGH (256 * 1024) /* response bytes queued for a slow client before the upstream is paused */

static int hop_by_hop(const mg_header_t *h)
{
    static const char *names[] = { "connection", "keep-alive", "proxy-connection", "te", "trailer",
                                   "transfer-encoding", "upgrade", "content-length" };
    for (size_t i = 0; i < mg_countof(names); i++)
        if (mg_http1_name_is(h, names[i], strlen(names[i])))
            return 1;
    return 0;
}

/* Is h named in one of the Connection fields of hs[0..n)? (RFC 9110 §7.6.1) */
static int named_by_connection(const mg_header_t *hs, size_t n, const mg_header_t *h)
{
    for (size_t i = 0; i < n; i++) {
        if (!mg_http1_name_is(&hs[i], "connection", 10))
            continue;
        const char *p = hs[i].value, *end = p + hs[i].value_len;
        while (p < end) {
            while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
                p++;
            const char *s = p;
            while (p < end && *p != ',' && *p != ' ' && *p != '\t')
                p++;
            if (p > s && (size_t)(p - s) == h->name_len && strncasecmp(s, h->name, h->name_len) == 0)
                return 1;
        }
    }
    return 0;
}

static void add_header(struct evbuffer *out, const char *name, const char *value, size_t vlen)
{
    mg_req_header_line(out, name, strlen(name), value, vlen);
}

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
static void write_head(mg_proxy_t *p, mg_target_t *t, struct evbuffer *out)
{
    mg_req_t *r = p->owner;
    mg_upstream_t *up = p->up;
    /* the request line: method and target untouched (origin-form) */
    evbuffer_add(out, r->method.p, r->method.n);
    evbuffer_add(out, " ", 1);
    if (r->target.p[0] == '/') {
        evbuffer_add(out, r->target.p, r->target.n);
    } else {
        evbuffer_add(out, r->path.p, r->path.n);
        if (r->query.n) {
            evbuffer_add(out, "?", 1);
            evbuffer_add(out, r->query.p, r->query.n);
        }
    }
    evbuffer_add(out, " HTTP/1.1\r\n", 11);

    if (up->host_mode == MG_HOST_TARGET)
        add_header(out, "Host", t->authority, strlen(t->authority));
    else if (up->host_mode == MG_HOST_FIXED)
        add_header(out, "Host", up->host_value, strlen(up->host_value));
    else if (r->authority.n)
        add_header(out, "Host", r->authority.p, r->authority.n);
    else
        add_header(out, "Host", t->authority, strlen(t->authority));

    /* headers plugins set or cleared for the upstream: ctx._proxy_headers (lowercase name -> value|false) */
    lua_State *L = r->gen->vm->L;
    int overrides = 0;
    if (r->ctx_ref != LUA_NOREF) {
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
    for (size_t i = 0; i < r->nheaders; i++) {
        const mg_header_t *h = &r->headers[i];
        if (hop_by_hop(h) || named_by_connection(r->headers, r->nheaders, h))
            continue;
        if (overrides) {
            push_lower_name(L, h);
            lua_rawget(L, overrides);
            int replaced = !lua_isnil(L, -1);
            lua_pop(L, 1);
            if (replaced)
                continue;
        }
        if (mg_http1_name_is(h, "x-forwarded-for", 15))
            continue; /* written below, as one field */
        if (forwarding_header(h)) {
            if (!trusted)
                continue; /* a client's own claim about scheme or host: the gateway says it below */
            xfp |= mg_http1_name_is(h, "x-forwarded-proto", 17);
            xfh |= mg_http1_name_is(h, "x-forwarded-host", 16);
        }
        if (mg_http1_name_is(h, "host", 4) || mg_http1_name_is(h, "expect", 6) ||
            mg_http1_name_is(h, "x-request-id", 12) || mg_http1_name_is(h, "traceparent", 11))
            continue; /* replaced below; Expect was answered by the gateway */
        mg_req_header_line(out, h->name, h->name_len, h->value, h->value_len);
    }
    if (!overridden(L, overrides, "x-forwarded-for")) {
        /* a trusted peer's chain (its fields joined in order), then the peer; else the peer alone */
        evbuffer_add(out, "X-Forwarded-For: ", 17);
        for (size_t i = 0; trusted && i < r->nheaders; i++) {
            const mg_header_t *h = &r->headers[i];
            if (mg_http1_name_is(h, "x-forwarded-for", 15) && h->value_len &&
                !named_by_connection(r->headers, r->nheaders, h)) {
                evbuffer_add(out, h->value, h->value_len);
                evbuffer_add(out, ", ", 2);
            }
        }
        const char *ip;
        size_t iplen = peer_ip(r, &ip);
        evbuffer_add(out, ip, iplen);
        evbuffer_add(out, "\r\n", 2);
    }
    if (!xfp && !overridden(L, overrides, "x-forwarded-proto"))
        add_header(out, "X-Forwarded-Proto", r->tls ? "https" : "http", r->tls ? 5 : 4);
    if (!xfh && r->authority.n && !overridden(L, overrides, "x-forwarded-host"))
        add_header(out, "X-Forwarded-Host", r->authority.p, r->authority.n);
    add_header(out, "X-Request-ID", r->trace_id, strlen(r->trace_id));
    if (strlen(r->trace_id) == 32) {
        /* W3C trace context: our trace id, a new span id for this hop */
        char span[33], tp[64];
        mg_worker_trace_id(r->worker, span);
        int n = snprintf(tp, sizeof(tp), "00-%s-%.16s-01", r->trace_id, span);
        add_header(out, "traceparent", tp, (size_t)n);
    }
    if (overrides) {
        lua_pushnil(L);
        while (lua_next(L, overrides)) {
            size_t nl, vl;
            if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
                const char *name = lua_tolstring(L, -2, &nl), *value = lua_tolstring(L, -1, &vl);
                mg_req_add_header(out, name, nl, value, vl); /* invalid ones are dropped */
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    if (p->body_mode == MG_BODY_LENGTH) {
        char cl[32];
        int n = snprintf(cl, sizeof(cl), "%lld", (long long)p->body_len);
        add_header(out, "Content-Length", cl, (size_t)n);
    } else if (p->body_mode == MG_BODY_CHUNKED) {
        add_header(out, "Transfer-Encoding", "chunked", 7);
    }
    evbuffer_add(out, "\r\n", 2);
}

/* The part of the client head after the headers: framing, X-Request-ID, Connection. */
static void finish_head(mg_req_t *r, struct evbuffer *out)
{
    char line[64];
    if (r->resp_cl >= 0 && r->resp_framing != -1 && r->resp_framing != MG_BODY_CHUNKED) {
        int n = snprintf(line, sizeof(line), "Content-Length: %lld\r\n", (long long)r->resp_cl);
        evbuffer_add(out, line, (size_t)n);
    }
    if (r->resp_framing == MG_BODY_CHUNKED)
        evbuffer_add(out, "Transfer-Encoding: chunked\r\n", 28);
    add_header(out, "X-Request-ID", r->trace_id, strlen(r->trace_id));
    if (!r->resp_keepalive)
        evbuffer_add(out, "Connection: close\r\n", 19);
    else if (r->minor_version == 0)
        evbuffer_add(out, "Connection: keep-alive\r\n", 24);
    evbuffer_add(out, "\r\n", 2);
}

static void status_line(struct evbuffer *out, int status, const char *reason, size_t reason_len)
{
    char line[64];
    int n = snprintf(line, sizeof(line), "HTTP/1.1 %d ", status);
    evbuffer_add(out, line, (size_t)n);
    if (reason_len)
        evbuffer_add(out, reason, reason_len);
    else
        evbuffer_add(out, "Status", 6);
    evbuffer_add(out, "\r\n", 2);
}

/* Headers plugins set on ctx.response before the response existed (e.g. in access). */
static void add_preset_headers(mg_req_t *r, struct evbuffer *out)
{
    lua_State *L = r->gen->vm->L;
    mg_req_push_ctx(r);
    lua_pushliteral(L, "response");
    lua_rawget(L, -2);
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "headers");
        int ct;
        if (lua_istable(L, -1) && mg_req_lua_headers(L, lua_gettop(L), NULL, &ct) == NULL)
            mg_req_lua_headers(L, lua_gettop(L), out, &ct);
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
}

static void on_filter_done(mg_task_t *t, int status)
{
    mg_req_t *r = t->owner;
    r->task_running = 0;
    r->head_filtering = 0;
    lua_State *co = t->co;
    const char *bad = NULL;
    int code = 0;
    if (status != 0) {
        mg_log_error(r->trace_id, "route %s: header_filter failed: %s", r->route->name, lua_tostring(co, -1));
        bad = "header_filter failed";
    } else {
        code = (int)lua_tointeger(co, 1);
        int ct;
        if (code < 200 || code > 999)
            bad = "header_filter set an invalid status";
        else if (lua_istable(co, 2))
            bad = mg_req_lua_headers(co, 2, NULL, &ct);
        if (bad)
            mg_log_error(r->trace_id, "route %s: %s", r->route->name, bad);
    }
    if (bad) {
        mg_task_release(t, 0);
        mg_forward_cancel(r);
        mg_req_error(r, 0, MG_E(LUA_ERROR), NULL, 1, NULL);
        return;
    }
    struct evbuffer *out = mg_conn_output(r->conn);
    r->status = code;
    r->resp_started = 1;
    status_line(out, code, NULL, 0);
    int ct;
    if (lua_istable(co, 2))
        mg_req_lua_headers(co, 2, out, &ct);
    finish_head(r, out);
    mg_task_release(t, 1);
    if (r->filter_paused) {
        r->filter_paused = 0;
        mg_proxy_resume(r->proxy);
    }
}

/* Pushes the upstream's end-to-end headers as a Lua table with lowercase names. */
static void push_headers(lua_State *L, const mg_http1_response_t *resp)
{
    lua_createtable(L, 0, (int)resp->num_headers);
    for (size_t i = 0; i < resp->num_headers; i++) {
        const mg_header_t *h = &resp->headers[i];
        if (hop_by_hop(h) || named_by_connection(resp->headers, resp->num_headers, h) ||
            mg_http1_name_is(h, "x-request-id", 12))
            continue;
        push_lower_name(L, h);
        lua_pushlstring(L, h->value, h->value_len);
        lua_rawset(L, -3);
    }
}

/* whole_body: ctx.response gets the upstream's status and headers; the head is written later. */
static void keep_head(mg_req_t *r, const mg_http1_response_t *resp)
{
    lua_State *L = r->gen->vm->L;
    mg_req_push_ctx(r);
    lua_getfield(L, -1, "response");
    lua_pushinteger(L, resp->status);
    lua_setfield(L, -2, "status");
    lua_getfield(L, -1, "headers");
    int preset = lua_gettop(L);
    push_headers(L, resp);
    lua_pushnil(L);
    while (lua_next(L, -2)) { /* the upstream's headers, unless a plugin preset one */
        lua_pushvalue(L, -2);
        lua_rawget(L, preset);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, preset);
        } else {
            lua_pop(L, 2);
        }
    }
    lua_pop(L, 4);
}

/* Runs the header_filter plugins over the upstream's head (they may yield). Returns 1 to pause. */
static int filter_head(mg_req_t *r, const mg_http1_response_t *resp)
{
    mg_vm_t *vm = r->gen->vm;
    lua_State *L = vm->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->plugins_filter_ref);
    mg_req_push_ctx(r);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->route->chain_ref);
    lua_pushinteger(L, resp->status);
    push_headers(L, resp);
    r->head_filtering = 1;
    r->task.trace_id = r->trace_id;
    r->task.holds = &r->holds;
    r->task_running = 1;
    mg_task_start(&r->task, vm, 4, on_filter_done, r);
    if (!r->head_filtering)
        return 0; /* finished without yielding: the head is written */
    r->filter_paused = 1;
    return 1;
}

static int on_head(mg_proxy_t *p, const mg_http1_response_t *resp)
{
    mg_req_t *r = p->owner;
    r->status = resp->status;
    /* how the body reaches the client */
    if (p->framing == MG_BODY_CHUNKED && r->minor_version == 1)
        r->resp_framing = MG_BODY_CHUNKED;
    else if (p->framing == MG_BODY_CHUNKED || p->framing == -1)
        r->resp_framing = -1; /* close-delimited */
    else
        r->resp_framing = p->framing;
    r->resp_cl = resp->status != 204 && resp->status >= 200 ? resp->content_length : -1;
    if (r->route->chain_body_filters && r->ctx_ref != LUA_NOREF && p->framing != MG_BODY_NONE) {
        /* body_filter may change the length: re-frame as chunked (close-delimited for HTTP/1.0) */
        r->body_filtering = 1;
        r->resp_framing = r->minor_version == 1 ? MG_BODY_CHUNKED : -1;
        r->resp_cl = -1;
    }
    r->resp_keepalive = mg_req_keepalive(r) && r->resp_framing != -1;
    if (r->route->chain_whole_body && r->ctx_ref != LUA_NOREF && p->framing != MG_BODY_NONE) {
        /* keep the head (in ctx.response) until the whole body is here */
        r->whole_body = 1;
        r->body_filtering = 0;
        r->resp_keepalive = mg_req_keepalive(r);
        keep_head(r, resp);
        return 0;
    }
    if (r->route->chain_filters && r->ctx_ref != LUA_NOREF)
        return filter_head(r, resp);
    r->resp_started = 1;
    struct evbuffer *out = mg_conn_output(r->conn);
    status_line(out, resp->status, resp->reason, resp->reason_len);
    for (size_t i = 0; i < resp->num_headers; i++) {
        const mg_header_t *h = &resp->headers[i];
        if (hop_by_hop(h) || named_by_connection(resp->headers, resp->num_headers, h) ||
            mg_http1_name_is(h, "x-request-id", 12))
            continue;
        mg_req_header_line(out, h->name, h->name_len, h->value, h->value_len);
    }
    if (r->ctx_ref != LUA_NOREF)
        add_preset_headers(r, out);
    finish_head(r, out);
    /* not flushed here: the body usually arrived with the head, one writev sends both */
    return 0;
}

static struct evbuffer *body_sink(mg_proxy_t *p)
{
    mg_req_t *r = p->owner;
    /* unframed bytes can go to the client as they are unless we re-chunk or filter them */
    return r->resp_framing == MG_BODY_CHUNKED || r->body_filtering || r->whole_body ? NULL
                                                                                    : mg_conn_output(r->conn);
}

static void write_chunk(mg_req_t *r, const char *data, size_t len)
{
    struct evbuffer *out = mg_conn_output(r->conn);
    if (len == 0)
        return; /* an empty chunk would end a chunked body */
    if (r->resp_framing == MG_BODY_CHUNKED) {
        char size[24];
        int n = snprintf(size, sizeof(size), "%zx\r\n", len);
        evbuffer_add(out, size, (size_t)n);
        evbuffer_add(out, data, len);
        evbuffer_add(out, "\r\n", 2);
    } else {
        evbuffer_add(out, data, len);
    }
    r->bytes_out += len;
}

static void finish_response(mg_req_t *r)
{
    if (r->resp_framing == MG_BODY_CHUNKED)
        evbuffer_add(mg_conn_output(r->conn), "0\r\n\r\n", 5);
    /* a request body the upstream did not wait for is still on the wire: close */
    mg_req_finish(r, r->resp_keepalive && r->body_complete);
}

static void run_chunk_filter(mg_req_t *r, const char *data, size_t len, int eof);
static void run_whole_filter(mg_req_t *r);

static int body_allowed_status(int status) { return status >= 200 && status != 204 && status != 304; }

static void on_chunk_done(mg_task_t *t, int status)
{
    mg_req_t *r = t->owner;
    r->task_running = 0;
    r->chunk_filtering = 0;
    if (status != 0) {
        mg_log_error(r->trace_id, "route %s: body_filter failed: %s", r->route->name, lua_tostring(t->co, -1));
        mg_task_release(t, 0);
        r->error_kind = MG_E(LUA_ERROR);
        mg_forward_cancel(r);
        mg_req_break(r); /* the head went out: the body must not look complete */
        return;
    }
    size_t n;
    const char *out = lua_tolstring(t->co, 1, &n);
    write_chunk(r, out ? out : "", out ? n : 0);
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
        struct evbuffer *queued = mg_conn_output(r->conn);
        if (evbuffer_get_length(queued) > CLIENT_OUT_HIGH) {
            mg_conn_flush(r->conn);
            if (r->proxy_done)
                return; /* the client went away */
            if (evbuffer_get_length(queued) > CLIENT_OUT_HIGH) {
                r->proxy_paused = 1; /* a slow client: mg_forward_output_drained resumes */
                return;
            }
        }
        mg_proxy_resume(r->proxy);
    }
}

static void on_whole_done(mg_task_t *t, int status)
{
    mg_req_t *r = t->owner;
    r->task_running = 0;
    lua_State *co = t->co;
    int code = status == 0 ? (int)lua_tointeger(co, 1) : 0;
    int ct;
    const char *bad = status != 0 ? lua_tostring(co, -1)
                    : code < 200 || code > 999 ? "a filter set an invalid status"
                    : lua_istable(co, 2) ? mg_req_lua_headers(co, 2, NULL, &ct) : NULL;
    if (bad) {
        mg_log_error(r->trace_id, "route %s: response filters failed: %s", r->route->name, bad);
        mg_task_release(t, 0);
        mg_req_error(r, 0, MG_E(LUA_ERROR), NULL, !r->body_complete, NULL);
        return;
    }
    size_t n;
    const char *body = lua_tolstring(co, 3, &n);
    struct evbuffer *out = mg_conn_output(r->conn);
    r->status = code;
    r->resp_started = 1;
    r->resp_framing = MG_BODY_LENGTH;
    r->resp_cl = body_allowed_status(code) ? (int64_t)n : -1;
    status_line(out, code, NULL, 0);
    if (lua_istable(co, 2))
        mg_req_lua_headers(co, 2, out, &ct);
    finish_head(r, out);
    if (body && n && body_allowed_status(code) && !r->proxy->head_request)
        evbuffer_add(out, body, n);
    r->bytes_out = n;
    mg_task_release(t, 1);
    mg_req_finish(r, r->resp_keepalive && r->body_complete);
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
    r->task.holds = &r->holds;
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
    r->task.holds = &r->holds;
    r->task_running = 1;
    mg_task_start(&r->task, vm, 4, on_chunk_done, r);
}

static int on_body(mg_proxy_t *p, const char *data, size_t len)
{
    mg_req_t *r = p->owner;
    struct evbuffer *out = mg_conn_output(r->conn);
    if (r->whole_body) {
        size_t have = evbuffer_get_length(r->body);
        if ((int64_t)(have + len) > r->route->chain_whole_body) {
            mg_log_warn(r->trace_id, "route %s: upstream body over the %lld bytes a whole_body plugin may buffer",
                        r->route->name, (long long)r->route->chain_whole_body);
            mg_forward_cancel(r);
            mg_req_error(r, 0, MG_E(RESPONSE_TOO_LARGE), NULL, !r->body_complete, NULL);
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
        write_chunk(r, data, len);
    } else {
        r->bytes_out += len; /* already read into out by the proxy (body_sink) */
    }
    if (evbuffer_get_length(out) <= CLIENT_OUT_HIGH)
        return 0; /* on_wait flushes once this read is delivered */
    mg_conn_flush(r->conn);
    if (!p->running)
        return 1; /* the client went away during the flush */
    if (evbuffer_get_length(out) > CLIENT_OUT_HIGH) {
        r->proxy_paused = 1; /* mg_forward_output_drained resumes */
        return 1;
    }
    return 0;
}

static void on_wait(mg_proxy_t *p)
{
    mg_req_t *r = p->owner;
    mg_conn_flush(r->conn);
}

static void on_body_wanted(mg_proxy_t *p)
{
    mg_req_t *r = p->owner;
    mg_conn_resume_body(r->conn);
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
    if (err != MG_E(NO_TARGET) && err != MG_E(BUSY))
        mg_log_warn(r->trace_id, "route %s: upstream %s: %s%s%s", r->route->name, p->up->name, err->name,
                    p->target ? " from " : "", p->target ? p->target->text : "");
    if (r->resp_started) {
        /* part of the response is out: it must not look complete, so reset the connection */
        mg_req_break(r);
        return;
    }
    int busy = err == MG_E(BUSY);
    mg_req_error(r, busy ? p->busy_status : 0, err, NULL, !r->body_complete, busy ? "Retry-After: 1\r\n" : NULL);
}

static const mg_proxy_ops_t forward_ops = {
    .write_head = write_head,
    .on_head = on_head,
    .on_body = on_body,
    .body_sink = body_sink,
    .on_wait = on_wait,
    .on_body_wanted = on_body_wanted,
    .on_done = on_done,
};

void mg_forward_start(mg_req_t *r, mg_target_t *target)
{
    mg_proxy_t *p = r->proxy;
    memset(p, 0, offsetof(mg_proxy_t, headers));
    p->preferred = target;
    p->ops = &forward_ops;
    p->owner = r;
    p->up = r->route->upstream;
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

void mg_forward_cancel(mg_req_t *r)
{
    if (r->proxy && !r->proxy_done) {
        r->proxy_done = 1;
        mg_proxy_cancel(r->proxy);
    }
}
