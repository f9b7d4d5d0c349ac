/*
 * mg_req — see mg_req.h.
 */
#include "mg_req.h"

#include <lauxlib.h>
#include <stdio.h>
#include <strings.h>

#include "mg_forward.h"
#include "mg_grpc.h"
#include "mg_log.h"
#include "mg_trace.h"
#include "mg_ws_lua.h"

mg_req_t *mg_req_new(mg_conn_t *c, const mg_wire_t *wire, void *stream)
{
    mg_worker_t *w = c->worker;
    mg_req_t *r = w->free_reqs;
    struct evbuffer *body;
    if (r) {
        w->free_reqs = r->next_free;
        w->nfree_reqs--;
        body = r->body;
    } else {
        r = mg_alloc(sizeof(*r));
        body = evbuffer_new();
    }
    /* per-request state; the large arrays after it are written before they are read */
    memset(r, 0, offsetof(mg_req_t, segs));
    r->trace_id[0] = '\0';
    mg_pool_init(&r->pool);
    r->conn = c;
    r->wire = wire;
    r->stream = stream;
    memcpy(r->remote, c->remote, sizeof(r->remote));
    r->tls = c->ssl != NULL;
    r->worker = w;
    r->gen = w->gen;
    r->gen->refs++;
    r->body = body;
    r->ctx_ref = LUA_NOREF;
    r->task.co_ref = LUA_NOREF;
    r->task.scope = &r->ledger; /* what the phases take lasts as long as the request; log_task keeps its own */
    r->start_us = mg_now_us();
    r->content_length = -1;
    r->grpc_status = -1;
    mg_resp_init(&r->resp, &r->pool, 200);
    return r;
}

static void access_log(mg_req_t *r);

/* Stops everything the request does: timers, the upstream exchange, the task. */
static void req_quiesce(mg_req_t *r)
{
    mg_forward_cancel(r);
    if (r->deadline_set) {
        event_del(&r->deadline);
        r->deadline_set = 0;
    }
    if (r->task.co) {
        /* a handler still waiting is cancelled; a finished one gives its coroutine back */
        if (r->task_running)
            mg_task_cancel(&r->task);
        else
            mg_task_release(&r->task, 1);
        r->task_running = 0;
    }
    /* what the phases took (permits a plugin did not release) goes back here, on every path */
    mg_ledger_run(&r->ledger);
}

/* Frees what is left (ctx, arena, body) and recycles the object. */
static void req_recycle(mg_req_t *r)
{
    if (r->ctx_ref != LUA_NOREF) {
        /* Lua may still hold ctx: mark it dead so it can no longer reach this object */
        mg_vm_t *vm = r->gen->vm;
        lua_State *L = vm->L;
        lua_rawgeti(L, LUA_REGISTRYINDEX, r->ctx_ref);
        mg_vm_push_key(vm, L, MG_KEY_R);
        lua_pushboolean(L, 0);
        lua_rawset(L, -3); /* ctx's metatable has no __newindex */
        lua_pop(L, 1);
        mg_vm_unref(vm, r->ctx_ref);
        r->ctx_ref = LUA_NOREF;
    }
    evbuffer_drain(r->body, evbuffer_get_length(r->body));
    mg_pool_reset(&r->pool);
    mg_worker_t *w = r->worker;
    mg_worker_gen_unref(w, r->gen);
    if (w->nfree_reqs < MG_REQ_CACHED) {
        r->next_free = w->free_reqs;
        w->free_reqs = r;
        w->nfree_reqs++;
    } else {
        /* a burst is over: its objects go, but only after this loop pass (callers up the stack may still look) */
        r->next_free = w->reap_reqs;
        w->reap_reqs = r;
        mg_worker_reap_soon(w);
    }
}

void mg_req_reap(mg_worker_t *w)
{
    while (w->reap_reqs) {
        mg_req_t *r = w->reap_reqs;
        w->reap_reqs = r->next_free;
        mg_req_destroy(r);
    }
}

static void req_release(mg_req_t *r)
{
    req_quiesce(r);
    req_recycle(r);
}

static void undetach(mg_req_t *r)
{
    for (mg_req_t **pp = &r->worker->detached; *pp; pp = &(*pp)->next_detached)
        if (*pp == r) {
            *pp = r->next_detached;
            break;
        }
    r->detached = 0;
}

static void on_log_done(mg_task_t *t, int status)
{
    mg_req_t *r = t->owner;
    if (status != 0)
        mg_log_error(r->trace_id, "log phase failed: %s", lua_tostring(t->co, -1));
    mg_task_release(t, status == 0);
    undetach(r);
    req_recycle(r);
}

/*
 * The end of every request: the access log line, then either the release,
 * or, when the route has log plugins, the log phase in its own task first.
 * The log phase runs after the response went out and never delays the client
 * or the connection's next request; ctx stays usable in it.
 */
static void req_end(mg_req_t *r)
{
    access_log(r);
    if (r->trace)
        mg_trace_end(r); /* the server span ends with the response; the log phase is not in it */
    __atomic_add_fetch(&r->worker->requests, 1, __ATOMIC_RELAXED);
    const mg_proxy_t *p = r->proxy;
    mg_metrics_record(&r->worker->metrics, r->route ? r->route->name : NULL, r->status,
                      (double)(mg_now_us() - r->start_us) / 1e6, p ? p->up->name : NULL,
                      p ? p->ttfb_us / 1e6 : 0, r->error_kind, r->trace_id);
    if (r->grpc && r->grpc_status >= 0)
        mg_metrics_grpc(&r->worker->metrics, r->route ? r->route->name : NULL, r->grpc_status);
    if (!r->route || !r->route->chain_logs || r->ctx_ref == LUA_NOREF) {
        req_release(r);
        return;
    }
    /* what the log phase should know: the final status and the error kind */
    lua_State *Ls = r->gen->vm->L;
    mg_req_push_ctx(r);
    if (r->error_kind) {
        lua_pushstring(Ls, r->error_kind->name);
        lua_setfield(Ls, -2, "error");
    }
    lua_getfield(Ls, -1, "response"); /* created on first use by the ctx metatable */
    lua_pushinteger(Ls, r->status);
    lua_setfield(Ls, -2, "status");
    lua_pop(Ls, 2);
    req_quiesce(r);
    r->conn = NULL;
    r->stream = NULL;
    r->detached = 1;
    r->next_detached = r->worker->detached;
    r->worker->detached = r;
    mg_vm_t *vm = r->gen->vm;
    lua_State *L = vm->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->plugins_log_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->ctx_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->route->chain_ref);
    r->log_task.trace_id = r->trace_id; /* it owns what it takes: its ledger runs when it ends */
    r->log_task.route = r->route->name;
    mg_task_start(&r->log_task, vm, 2, on_log_done, r);
}

void mg_req_end_detached(mg_worker_t *w)
{
    while (w->detached) {
        mg_req_t *r = w->detached;
        mg_task_cancel(&r->log_task);
        undetach(r);
        req_recycle(r);
    }
}

void mg_req_destroy(mg_req_t *r)
{
    evbuffer_free(r->body);
    free(r);
}

static void access_log(mg_req_t *r)
{
    if (!mg_log_access_enabled())
        return;
    char ts[64], path[1024], route[512], up[768] = "", line[4096];
    mg_log_time(ts, sizeof(ts), mg_wall_time());
    mg_json_escape(path, sizeof(path), r->target.p ? r->target.p : "", r->target.n);
    const char *rname = r->route ? r->route->name : "";
    mg_json_escape(route, sizeof(route), rname, strlen(rname));
    double ms = (double)(mg_now_us() - r->start_us) / 1000.0;
    if (r->proxy) {
        /* where it went and where the time went: queue wait, connect, first byte */
        const mg_proxy_t *p = r->proxy;
        snprintf(up, sizeof(up),
                 ",\"upstream\":\"%s\",\"target\":\"%s\",\"attempts\":%d,\"queue_ms\":%.3f,"
                 "\"connect_ms\":%.3f,\"ttfb_ms\":%.3f",
                 p->up->name, p->target ? p->target->text : "", p->attempts, p->queue_us / 1000.0,
                 p->connect_us / 1000.0, p->ttfb_us / 1000.0);
    }
    /* remote: the peer; client: who it is for (trusted_proxies); host: the one host that was routed */
    char host[300];
    mg_json_escape(host, sizeof(host), r->authority.p ? r->authority.p : "", r->authority.n);
    const char *client = r->remote[0] ? mg_req_client_ip(r) : "";
    char grpc[32] = ""; /* a gRPC call's status: the caller's answer (the HTTP status stays the gateway's verdict) */
    if (r->grpc && r->grpc_status >= 0)
        snprintf(grpc, sizeof(grpc), ",\"grpc_status\":%d", r->grpc_status);
    int n = snprintf(line, sizeof(line),
                     "{\"time\":\"%s\",\"trace_id\":\"%s\",\"remote\":\"%s\",\"client\":\"%s\",\"host\":\"%s\","
                     "\"method\":\"%.*s\",\"protocol\":\"%s\","
                     "\"path\":\"%s\",\"route\":\"%s\",\"status\":%d,\"bytes_in\":%zu,\"bytes\":%zu,"
                     "\"duration_ms\":%.3f%s%s%s%s%s}\n",
                     ts, r->trace_id, r->remote[0] ? r->remote : "-", client[0] ? client : "-", host,
                     (int)r->method.n, r->method.p ? r->method.p : "-",
                     r->minor_version == 0 && r->method.p ? "1.0" : r->wire->version, path, route, r->status,
                     r->bytes_in, r->bytes_out,
                     ms, up, grpc, r->error_kind ? ",\"error\":\"" : "", r->error_kind ? r->error_kind->name : "",
                     r->error_kind ? "\"" : "");
    if (n > 0)
        mg_log_access_line(line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

/* ---- the one response writer ---- */

void mg_req_send_head(mg_req_t *r, const mg_resp_t *resp)
{
    r->resp_started = 1;
    r->status = resp->status;
    if (r->grpc && r->grpc_status < 0) /* a trailers-only answer a handler built (gw.grpc.status): its status is logged */
        r->grpc_status = mg_grpc_status_field(resp->h, resp->n);
    r->wire->head(r, resp);
}

void mg_req_send_interim(mg_req_t *r, const mg_resp_t *resp) { r->wire->interim(r, resp); }

void mg_req_send_body(mg_req_t *r, const char *data, size_t len)
{
    r->wire->body(r, data, len);
    r->bytes_out += len;
}

struct evbuffer *mg_req_body_sink(mg_req_t *r) { return r->wire->body_sink(r); }

void mg_req_body_added(mg_req_t *r, size_t len)
{
    r->wire->body_added(r, len);
    r->bytes_out += len;
}

size_t mg_req_output_pending(mg_req_t *r) { return r->wire->pending(r); }

void mg_req_flush(mg_req_t *r) { r->wire->flush(r); }

void mg_req_finish(mg_req_t *r, const mg_header_t *trailers, size_t ntrailers)
{
    const mg_wire_t *wire = r->wire;
    void *conn = r->conn, *stream = r->stream;
    wire->end(r, trailers, ntrailers);
    int how = r->close ? MG_WIRE_CLOSE : MG_WIRE_KEEP;
    req_end(r);
    wire->done(conn, stream, how); /* r is gone */
}

void mg_req_break(mg_req_t *r)
{
    if (mg_forward_end_grpc(r))
        return; /* a gRPC call ends with its status in trailers instead */
    const mg_wire_t *wire = r->wire;
    void *conn = r->conn, *stream = r->stream;
    req_end(r);
    wire->done(conn, stream, MG_WIRE_RESET);
}

void mg_req_send_upgrade(mg_req_t *r, const mg_resp_t *resp)
{
    r->resp_started = 1;
    r->status = resp->status;
    r->wire->upgrade(r, resp);
}

void mg_req_end_upgraded(mg_req_t *r)
{
    r->conn = NULL; /* the connection is its new protocol's: nothing in the teardown may reach it */
    req_end(r);
}

void mg_req_error(mg_req_t *r, int status, const mg_error_t *kind, const char *message, int close,
                  const mg_header_t *extra, size_t nextra)
{
    if (!r->trace_id[0])
        mg_worker_trace_id(r->worker, r->trace_id);
    if (!status)
        status = kind ? kind->status : 500;
    if (!message)
        message = kind ? kind->message : "error";
    if (kind)
        r->error_kind = kind;
    if (close)
        r->close = 1;
    char body[512];
    int n = snprintf(body, sizeof(body), "{\"error\":\"%s\",\"status\":%d,\"trace_id\":\"%s\"}\n",
                     message, status, r->trace_id);
    mg_resp_t *resp = &r->resp;
    mg_resp_init(resp, &r->pool, status);
    mg_resp_add(resp, "Content-Type", 12, "application/json", 16);
    const char *hdr = r->worker->cfg->error_header;
    if (hdr && r->error_kind)
        mg_resp_add(resp, hdr, strlen(hdr), r->error_kind->name, strlen(r->error_kind->name));
    for (size_t i = 0; i < nextra; i++)
        mg_resp_add(resp, extra[i].name, extra[i].name_len, extra[i].value, extra[i].value_len);
    if (r->grpc) {
        /* a gRPC caller gets a gRPC status: trailers-only, the kind's (or the status's) code */
        mg_resp_init(resp, &r->pool, 200);
        if (hdr && r->error_kind)
            mg_resp_add(resp, hdr, strlen(hdr), r->error_kind->name, strlen(r->error_kind->name));
        for (size_t i = 0; i < nextra; i++)
            mg_resp_add(resp, extra[i].name, extra[i].name_len, extra[i].value, extra[i].value_len);
        r->grpc_status = kind ? kind->grpc : mg_grpc_status_of_http(status);
        mg_grpc_error_head(resp, r->grpc_status, message, kind ? kind->name : NULL, r->trace_id);
        mg_req_send_head(r, resp);
        r->status = status; /* the access log keeps the HTTP meaning; the client got a gRPC status */
        mg_req_finish(r, NULL, 0);
        return;
    }
    resp->content_length = n;
    mg_req_send_head(r, resp);
    mg_req_send_body(r, body, (size_t)n);
    mg_req_finish(r, NULL, 0);
}

void mg_req_add_defaults(mg_req_t *r, mg_resp_t *resp)
{
    if (r->defaults_taken) {
        /* handed over when the request phases ended (mg_ffi_resp_defaults_*): the same rules as below */
        if (r->defaults_bad) {
            mg_log_error(r->trace_id, "route %s: ctx.response.headers: %s (none of them sent)", r->route->name,
                         r->defaults_bad);
            return;
        }
        size_t before = resp->n;
        for (size_t i = 0; i < r->ndefaults; i++) {
            const mg_header_t *d = &r->defaults[i];
            int present = 0;
            for (size_t j = 0; j < before && !present; j++)
                present = resp->h[j].name_len == d->name_len && strncasecmp(resp->h[j].name, d->name, d->name_len) == 0;
            if (!present)
                mg_resp_add(resp, d->name, d->name_len, d->value, d->value_len);
        }
        return;
    }
    if (r->ctx_ref == LUA_NOREF)
        return;
    mg_vm_t *vm = r->gen->vm;
    lua_State *L = vm->L;
    mg_req_push_ctx(r);
    mg_vm_push_key(vm, L, MG_KEY_RESPONSE);
    lua_rawget(L, -2);
    if (lua_istable(L, -1)) {
        mg_vm_push_key(vm, L, MG_KEY_HEADERS);
        lua_gettable(L, -2);
        const char *bad = lua_istable(L, -1) ? mg_resp_add_lua(resp, L, -1, 1) : NULL;
        if (bad)
            mg_log_error(r->trace_id, "route %s: ctx.response.headers: %s (none of them sent)", r->route->name, bad);
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
}

/* The message of a client error the parser, the limits or the router chose the status of. */
static const char *status_message(int status)
{
    switch (status) {
    case 414: return "request line or URI too long";
    case 417: return "expectation failed";
    case 431: return "request header fields too large";
    case 501: return "transfer coding not implemented";
    case 505: return "HTTP version not supported";
    default: return NULL; /* the kind's */
    }
}

void mg_req_reject(mg_req_t *r, int status, const mg_error_t *kind, int close)
{
    if (!kind)
        kind = status == 404 ? MG_E(NO_ROUTE) : status == 405 ? MG_E(METHOD_NOT_ALLOWED) : MG_E(BAD_REQUEST);
    mg_header_t allow = { "Allow", 5, NULL, 0 };
    char m[128];
    if (status == 405) {
        mg_methods_format(r->match.allow, m, sizeof(m));
        allow.value = m;
        allow.value_len = strlen(m);
    }
    mg_req_error(r, status, kind, status_message(status), close, status == 405 ? &allow : NULL, status == 405);
}


void mg_req_log_failure(mg_req_t *r, const char *why)
{
    char who[192] = "handler";
    if (r->ctx_ref != LUA_NOREF) {
        mg_vm_t *vm = r->gen->vm;
        lua_State *L = vm->L;
        mg_req_push_ctx(r);
        mg_vm_push_key(vm, L, MG_KEY_STEP);
        lua_rawget(L, -2);
        if (lua_istable(L, -1)) {
            lua_getfield(L, -1, "phase");
            lua_getfield(L, -2, "name");
            snprintf(who, sizeof(who), "%s of plugin %s", lua_tostring(L, -2) ? lua_tostring(L, -2) : "?",
                     lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
            lua_pop(L, 2);
        }
        lua_pop(L, 2);
    }
    if (!why)
        why = "(error object is not a string)";
    /* the message on the line, the traceback (if any) as a field */
    const char *tb = strstr(why, "\nstack traceback:");
    size_t mlen = tb ? (size_t)(tb - why) : strlen(why);
    char fields[4096] = "";
    if (tb) {
        char esc[4000];
        mg_json_escape(esc, sizeof(esc), tb + 1, strlen(tb + 1));
        snprintf(fields, sizeof(fields), "\"traceback\":\"%s\"", esc);
    }
    mg_log_write(MG_LOG_ERROR, r->trace_id, tb ? fields : NULL, "route %s: %s: %.*s", r->route ? r->route->name : "-",
                 who, (int)mlen, why);
}

static void fail_500(mg_req_t *r, const char *why)
{
    mg_req_log_failure(r, why);
    mg_req_error(r, 0, MG_E(LUA_ERROR), NULL, 0, NULL, 0);
}

/*
 * A status other than 200 from a handler or plugin for a gRPC call: the
 * caller gets it as a gRPC status (401 → UNAUTHENTICATED, 403 →
 * PERMISSION_DENIED, ...), with the body's message (a table's message or
 * error field, or the string) as grpc-message, and the headers it gave.
 */
static void respond_grpc_error(mg_req_t *r, lua_State *co, int status)
{
    char msg[256] = "";
    if (lua_istable(co, 2)) {
        lua_getfield(co, 2, "message");
        if (!lua_isstring(co, -1)) {
            lua_pop(co, 1);
            lua_getfield(co, 2, "error");
        }
        if (lua_isstring(co, -1))
            snprintf(msg, sizeof(msg), "%s", lua_tostring(co, -1));
        lua_pop(co, 1);
    } else if (lua_isstring(co, 2)) {
        snprintf(msg, sizeof(msg), "%s", lua_tostring(co, 2));
    }
    if (!msg[0])
        snprintf(msg, sizeof(msg), "%s", mg_resp_reason(status));
    mg_resp_t *resp = &r->resp;
    mg_resp_init(resp, &r->pool, 200);
    const char *bad = lua_istable(co, 3) ? mg_resp_add_lua(resp, co, 3, 0) : NULL;
    if (bad) {
        fail_500(r, bad);
        return;
    }
    mg_req_add_defaults(r, resp);
    r->grpc_status = mg_grpc_status_of_http(status);
    mg_grpc_error_head(resp, r->grpc_status, msg, NULL, r->trace_id);
    mg_req_send_head(r, resp);
    r->status = status;
    mg_req_finish(r, NULL, 0);
}

/*
 * gw.error(kind, status, headers): the gateway's error answer (mg_req_error)
 * with the headers the plugin added (validated as any response field).
 */
static void respond_kind(mg_req_t *r, lua_State *co, int status, const mg_error_t *kind)
{
    mg_header_t extra[16];
    size_t n = 0;
    if (lua_istable(co, 3)) {
        lua_pushnil(co);
        while (lua_next(co, 3)) {
            mg_header_t *h = &extra[n];
            if (n == mg_countof(extra) || lua_type(co, -2) != LUA_TSTRING || !lua_isstring(co, -1)) {
                lua_pop(co, 2);
                fail_500(r, "gw.error: headers must be at most 16 name = string pairs");
                return;
            }
            h->name = lua_tolstring(co, -2, &h->name_len);
            h->value = lua_tolstring(co, -1, &h->value_len); /* a number becomes a string in the table: still alive */
            lua_pop(co, 1);
            if (!mg_resp_valid_name(h->name, h->name_len) || !mg_resp_valid_value(h->value, h->value_len) ||
                mg_resp_framing_field(h->name, h->name_len)) {
                lua_pop(co, 1);
                fail_500(r, "gw.error: a header name or value that cannot be sent");
                return;
            }
            n++;
        }
    }
    mg_req_error(r, status, kind, NULL, 0, extra, n);
}

/*
 * Sends the handler's response. The results are on co: status, body, headers
 * (or the fields of ctx.response when status is nil).
 */
static void respond_from_lua(mg_req_t *r, lua_State *co)
{
    lua_settop(co, 3);
    if (lua_isnil(co, 1)) {
        mg_vm_t *vm = r->gen->vm;
        lua_State *L = vm->L;
        lua_rawgeti(L, LUA_REGISTRYINDEX, r->ctx_ref);
        mg_vm_push_key(vm, L, MG_KEY_RESPONSE);
        lua_rawget(L, -2);
        if (!lua_istable(L, -1)) {
            lua_pop(L, 2);
            fail_500(r, "handler returned no status (return status, body, headers or set ctx.response)");
            return;
        }
        lua_getfield(L, -1, "status");
        lua_getfield(L, -2, "body");
        lua_getfield(L, -3, "headers");
        lua_xmove(L, co, 3);
        lua_pop(L, 2);
        lua_replace(co, 3);
        lua_replace(co, 2);
        lua_replace(co, 1);
        if (lua_isnil(co, 1)) {
            lua_pushinteger(co, 200);
            lua_replace(co, 1);
        }
    }
    int status = (int)lua_tointeger(co, 1);
    if (!lua_isnumber(co, 1) || status < 200 || status > 999) {
        fail_500(r, "handler returned an invalid status (want an integer 200..999)");
        return;
    }
    const mg_error_t *kind = lua_type(co, 2) == LUA_TLIGHTUSERDATA ? mg_error_of_mark(lua_touserdata(co, 2)) : NULL;
    if (kind) {
        respond_kind(r, co, status, kind);
        return;
    }
    if (r->grpc && status != 200) {
        respond_grpc_error(r, co, status);
        return;
    }
    const char *ctype = NULL;
    if (lua_istable(co, 2)) {
        lua_State *L = r->gen->vm->L;
        lua_rawgeti(L, LUA_REGISTRYINDEX, r->gen->vm->json_encode_ref);
        lua_pushvalue(co, 2);
        lua_xmove(co, L, 1);
        if (lua_pcall(L, 1, 2, 0) != 0 || lua_isnil(L, -2)) {
            char why[512];
            snprintf(why, sizeof(why), "cannot encode the response body as JSON: %s", lua_tostring(L, -1));
            lua_settop(L, 0);
            fail_500(r, why);
            return;
        }
        lua_pop(L, 1);
        lua_xmove(L, co, 1);
        lua_replace(co, 2);
        ctype = "application/json";
    } else if (lua_isnil(co, 2)) {
        lua_pushliteral(co, "");
        lua_replace(co, 2);
    } else if (lua_type(co, 2) != LUA_TSTRING && lua_type(co, 2) != LUA_TNUMBER) {
        fail_500(r, "handler returned a body that is not a string or a table");
        return;
    } else {
        ctype = "text/plain; charset=utf-8";
    }
    if (!lua_isnil(co, 3) && !lua_istable(co, 3)) {
        fail_500(r, "handler returned headers that are not a table");
        return;
    }
    size_t blen;
    const char *body = lua_tolstring(co, 2, &blen);
    int with_body = mg_resp_body_allowed(status);
    mg_resp_t *resp = &r->resp;
    mg_resp_init(resp, &r->pool, status);
    const char *bad = lua_istable(co, 3) ? mg_resp_add_lua(resp, co, 3, 0) : NULL;
    if (bad) {
        fail_500(r, bad);
        return;
    }
    mg_req_add_defaults(r, resp); /* a no-op when the handler returned ctx.response.headers itself */
    if (r->grpc && blen == 0 && mg_resp_has(resp, "grpc-status", 11)) {
        resp->no_body = 1; /* gw.grpc.status(...): a trailers-only answer */
        ctype = "application/grpc";
    }
    if (with_body && ctype && !resp->has_ctype)
        mg_resp_add(resp, "Content-Type", 12, ctype, strlen(ctype));
    resp->content_length = with_body && !resp->no_body ? (int64_t)blen : -1;
    mg_req_send_head(r, resp);
    if (with_body)
        mg_req_send_body(r, body, blen);
    mg_req_finish(r, NULL, 0);
}

static void on_handler_done(mg_task_t *t, int status)
{
    mg_req_t *r = t->owner;
    r->task_running = 0;
    if (r->websocket) {
        /* it accepted a WebSocket (ctx:websocket): there is no response to send, the socket closes */
        if (status != 0)
            mg_req_log_failure(r, lua_tostring(t->co, -1));
        mg_task_release(t, status == 0);
        mg_ws_lua_handler_done(r, status != 0);
        return;
    }
    if (status != 0) {
        mg_req_log_failure(r, lua_tostring(t->co, -1));
        mg_task_release(t, 0);
        mg_req_error(r, 0, MG_E(LUA_ERROR), NULL, 0, NULL, 0);
        return;
    }
    if (lua_type(t->co, 1) == LUA_TBOOLEAN && lua_toboolean(t->co, 1) && r->route->upstream) {
        /* the plugins' access phases passed: forward now, to the balancer plugins' target if any */
        mg_target_t *chosen = NULL;
        if (lua_type(t->co, 2) == LUA_TSTRING) {
            const char *want = lua_tostring(t->co, 2);
            mg_upstream_t *up = r->route->upstream;
            for (int i = 0; i < up->ntargets && !chosen; i++)
                if (strcmp(up->targets[i].text, want) == 0 || strcmp(up->targets[i].authority, want) == 0)
                    chosen = &up->targets[i];
            if (!chosen) {
                mg_log_error(r->trace_id, "route %s: the balancer phase chose '%s', not a target of upstream %s",
                             r->route->name, want, up->name);
                mg_task_release(t, 1);
                mg_req_error(r, 0, MG_E(LUA_ERROR), NULL, !r->body_complete, NULL, 0);
                return;
            }
        }
        mg_task_release(t, 1);
        r->proxy = &r->proxy_store;
        mg_forward_start(r, chosen);
        return;
    }
    respond_from_lua(r, t->co);
    /* r may be reused from here on: only the task is ours to touch, and req_release already released it */
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    mg_req_t *r = arg;
    r->deadline_set = 0;
    if (r->task_running) {
        mg_task_cancel(&r->task);
        r->task_running = 0;
    }
    mg_forward_cancel(r);
    mg_log_warn(r->trace_id, "route %s: request deadline exceeded", r->route ? r->route->name : "-");
    r->error_kind = MG_E(DEADLINE);
    if (r->resp_started) {
        mg_req_break(r);
        return;
    }
    /* a proxied body may still be arriving: then the connection cannot be reused */
    mg_req_error(r, 0, MG_E(DEADLINE), NULL, !r->body_complete, NULL, 0);
}

/*
 * The deadline runs from routing, on every route: reading the body counts
 * against it (a body trickled in cannot hold a request past its timeout).
 */
void mg_req_start_deadline(mg_req_t *r)
{
    const mg_route_t *route = r->route;
    uint64_t us = (uint64_t)(route->timeout_ms ? route->timeout_ms : r->worker->cfg->request_timeout_ms) * 1000;
    for (size_t i = 0; r->grpc && i < r->nheaders; i++) {
        /* the caller's deadline (grpc-timeout) bounds the route's */
        const mg_header_t *h = &r->headers[i];
        int64_t t = mg_http1_name_is(h, "grpc-timeout", 12) ? mg_grpc_timeout_us(h->value, h->value_len) : -1;
        if (t >= 0 && (uint64_t)t < us)
            us = t > 0 ? (uint64_t)t : 1;
    }
    struct timeval tv = { (time_t)(us / 1000000), (suseconds_t)(us % 1000000) };
    r->deadline_us = mg_now_us() + us;
    evtimer_assign(&r->deadline, r->worker->base, on_deadline, r);
    evtimer_add(&r->deadline, &tv);
    r->deadline_set = 1;
}

int mg_req_streams_body(const mg_req_t *r) { return r->route && r->route->upstream; }

int mg_req_body_ready(mg_req_t *r)
{
    if (!mg_req_streams_body(r))
        return 1;
    /* while access plugins run, the body waits (the wire's resume_body follows) */
    return r->proxy ? mg_forward_body_ready(r) : 0;
}

void mg_req_body_data(mg_req_t *r, const char *data, size_t len)
{
    r->bytes_in += len;
    if (mg_req_streams_body(r))
        mg_forward_body(r, data, len);
    else
        evbuffer_add(r->body, data, len);
}

void mg_req_body_end(mg_req_t *r)
{
    r->body_complete = 1;
    if (mg_req_streams_body(r))
        mg_forward_body_end(r);
    else
        mg_req_run(r);
}

void mg_req_output_drained(mg_req_t *r)
{
    mg_forward_output_drained(r);
}

void mg_req_push_ctx(mg_req_t *r)
{
    mg_vm_t *vm = r->gen->vm;
    lua_State *L = vm->L;
    if (r->ctx_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, r->ctx_ref);
        return;
    }
    /*
     * Only what Lua cannot find by itself: the handle and the route (the
     * generation's table). trace_id and params are read through FFI on first
     * use (moongate.ctx), like the rest. Room for what plugins usually add
     * (request, response, consumer, _step, trace_id) without a rehash.
     */
    lua_createtable(L, 0, 8);
    mg_vm_push_key(vm, L, MG_KEY_R);
    lua_pushnumber(L, (lua_Number)(uintptr_t)r); /* see mg_ffi.h: a number keeps FFI calls compiled */
    lua_rawset(L, -3);
    mg_vm_push_key(vm, L, MG_KEY_ROUTE);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->route->info_ref);
    lua_rawset(L, -3);
    if (r->trace) {
        lua_pushboolean(L, 1); /* plugins.lua runs the chain's traced copy (mg_trace.h) */
        lua_setfield(L, -2, "_traced");
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ctx_mt_ref);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    r->ctx_ref = mg_vm_ref(vm);
}

void mg_req_run(mg_req_t *r)
{
    mg_vm_t *vm = r->gen->vm;
    lua_State *L = vm->L;
    const mg_route_t *route = r->route;
    int nargs = 1;
    if (route->chain_ref != LUA_NOREF) {
        /* plugins.run(ctx, chain, handler): rewrite, access, handler (or proxy), filters */
        lua_rawgeti(L, LUA_REGISTRYINDEX, vm->plugins_run_ref);
        mg_req_push_ctx(r);
        lua_rawgeti(L, LUA_REGISTRYINDEX, route->chain_ref);
        if (route->upstream)
            lua_pushnil(L);
        else
            lua_rawgeti(L, LUA_REGISTRYINDEX, route->handler_ref);
        nargs = 3;
    } else if (route->upstream) {
        r->proxy = &r->proxy_store;
        mg_forward_start(r, NULL);
        return;
    } else {
        lua_rawgeti(L, LUA_REGISTRYINDEX, route->handler_ref);
        mg_req_push_ctx(r);
        if (r->trace)
            mg_trace_step(r->trace, MG_TP_HANDLER, "handler", 7); /* ends with the task (mg_trace_leave) */
    }
    r->task.trace_id = r->trace_id;
    r->task.route = route->name; /* kept for the filter tasks that reuse r->task */
    r->task_running = 1;
    mg_task_start(&r->task, vm, nargs, on_handler_done, r);
}

void mg_req_abort(mg_req_t *r)
{
    /* the log says what the client got: the status of a head that went out, else 499 (nginx's rule) */
    if (!r->resp_started)
        r->status = 499;
    r->error_kind = MG_E(CLIENT_ABORT);
    req_end(r);
}
