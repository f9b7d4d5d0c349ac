/*
 * mg_http_client — gw.http.request{...}: HTTP requests from Lua to an
 * upstream, through the same per-upstream pools, balancers, timeouts, retries
 * and health as proxied traffic (mg_proxy). It yields; the caller's request
 * deadline bounds it (the deadline cancels the caller's task, which cancels
 * this), and it carries the caller's trace id.
 *
 *   local res, err = gw.http.request {
 *     upstream = "orders",            -- or url = "http://127.0.0.1:9002/path?x=1"
 *                                     --    or "https://...": verified against the system CA store
 *     method = "GET", path = "/orders/1", query = "x=1",
 *     headers = { ["Accept"] = "application/json" },
 *     body = "...", timeout = 0.5,    -- seconds, optional
 *   }
 *   -- res = { status = 200, headers = { ["content-type"] = ... }, body = "..." }
 *   -- err = an error kind: "refused", "reset", "connect_timeout", "read_timeout",
 *   --       "send_timeout", "protocol", "no_healthy_target", "timeout", "response_too_large",
 *   --       "tls_handshake", "tls_verify"
 */
#include <lauxlib.h>
#include <stdio.h>

#include "mg_config.h"
#include "mg_lua.h"
#include "mg_proxy.h"
#include "mg_req.h"
#include "mg_trace.h"

#define MAX_RESPONSE_BODY (64 * 1024 * 1024)

typedef struct subreq {
    mg_proxy_t proxy;
    mg_wait_t wait;
    char *method, *target, *host;
    mg_resp_t fields;              /* the caller's headers (copies in pool) */
    mg_pool_t pool;
    struct evbuffer *body;
    struct evbuffer *resp_body;
    struct evbuffer *resp_head;    /* "name\0value\0" pairs */
    int status;
    int nheaders;
    char trace_id[129];
    unsigned trace_flags;          /* the caller's sampling decision (W3C flags) */
    mg_trace_t *trace;             /* the caller's recorded request, or NULL */
    int trace_item;                /* its CALL item */
    uint64_t span;                 /* the client span's id (its traceparent); 0: not recorded */
    struct event timer;
    int timer_set;
    int yielded;                   /* the caller waits in mg_wait_yield (else it returns at once) */
    mg_vm_t *vm;
} subreq_t;

static void subreq_free(subreq_t *sr)
{
    if (sr->timer_set)
        event_del(&sr->timer);
    free(sr->method);
    free(sr->target);
    free(sr->host);
    mg_pool_reset(&sr->pool);
    if (sr->body)
        evbuffer_free(sr->body);
    evbuffer_free(sr->resp_body);
    evbuffer_free(sr->resp_head);
    free(sr);
}

static void build_head(mg_proxy_t *p, mg_target_t *t, mg_upreq_t *q)
{
    subreq_t *sr = p->owner;
    q->method = (mg_str_t){ sr->method, strlen(sr->method) };
    q->target = (mg_str_t){ sr->target, strlen(sr->target) };
    q->authority = sr->host ? (mg_str_t){ sr->host, strlen(sr->host) } : (mg_str_t){ t->authority, strlen(t->authority) };
    for (size_t i = 0; i < sr->fields.n; i++)
        mg_resp_add(&q->fields, sr->fields.h[i].name, sr->fields.h[i].name_len, sr->fields.h[i].value,
                    sr->fields.h[i].value_len);
    if (sr->trace_id[0]) {
        mg_resp_add(&q->fields, "X-Request-ID", 12, sr->trace_id, strlen(sr->trace_id));
        char *tp = mg_pool_alloc(p->pool, MG_TRACE_PARENT_LEN);
        size_t n = mg_trace_parent_value(tp, sr->trace, sr->trace_id, sr->trace_flags, sr->span);
        if (n)
            mg_resp_add(&q->fields, "traceparent", 11, tp, n);
    }
}

static int on_head(mg_proxy_t *p, const mg_http1_response_t *resp)
{
    subreq_t *sr = p->owner;
    sr->status = resp->status;
    for (size_t i = 0; i < resp->num_headers; i++) {
        const mg_header_t *h = &resp->headers[i];
        evbuffer_add(sr->resp_head, h->name, h->name_len);
        evbuffer_add(sr->resp_head, "", 1);
        evbuffer_add(sr->resp_head, h->value, h->value_len);
        evbuffer_add(sr->resp_head, "", 1);
        sr->nheaders++;
    }
    return 0;
}

static void finish(subreq_t *sr, const mg_error_t *err)
{
    lua_State *co = sr->wait.co;
    int n;
    if (sr->trace)
        mg_trace_call_end(sr->trace, sr->trace_item, err ? 0 : sr->status, err, sr->proxy.attempts);
    if (sr->timer_set) {
        event_del(&sr->timer);
        sr->timer_set = 0;
    }
    if (err) {
        lua_pushnil(co);
        lua_pushstring(co, err->name);
        n = 2;
    } else {
        lua_createtable(co, 0, 3);
        lua_pushinteger(co, sr->status);
        lua_setfield(co, -2, "status");
        lua_createtable(co, 0, sr->nheaders);
        size_t len = evbuffer_get_length(sr->resp_head);
        const char *h = len ? (const char *)evbuffer_pullup(sr->resp_head, -1) : "";
        for (int i = 0; i < sr->nheaders; i++) {
            size_t nl = strlen(h);
            char name[256];
            size_t k = nl < sizeof(name) - 1 ? nl : sizeof(name) - 1;
            mg_lowercase(name, h, k);
            name[k] = '\0';
            const char *v = h + nl + 1;
            lua_pushstring(co, v);
            lua_setfield(co, -2, name); /* repeated fields: the last one wins */
            h = v + strlen(v) + 1;
        }
        lua_setfield(co, -2, "headers");
        size_t blen = evbuffer_get_length(sr->resp_body);
        lua_pushlstring(co, blen ? (const char *)evbuffer_pullup(sr->resp_body, -1) : "", blen);
        lua_setfield(co, -2, "body");
        n = 1;
    }
    if (!sr->yielded) {
        /* finished inside mg_proxy_start (e.g. refused at once): l_request returns the results */
        sr->wait.done = 1;
        sr->wait.nret = n;
        return;
    }
    int task_mode = sr->wait.task != NULL;
    mg_wait_wake(&sr->wait, n);
    if (task_mode)
        subreq_free(sr); /* on the main thread, l_request frees it after its loop */
}

static int on_body(mg_proxy_t *p, const char *data, size_t len)
{
    subreq_t *sr = p->owner;
    if (evbuffer_get_length(sr->resp_body) + len > MAX_RESPONSE_BODY) {
        mg_proxy_cancel(p);
        finish(sr, MG_E(RESPONSE_TOO_LARGE));
        return 1;
    }
    evbuffer_add(sr->resp_body, data, len);
    return 0;
}

static void on_done(mg_proxy_t *p, const mg_error_t *err)
{
    finish(p->owner, err);
}

static const mg_proxy_ops_t subreq_ops = {
    .build_head = build_head, .on_head = on_head, .on_body = on_body, .on_done = on_done,
};

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    subreq_t *sr = arg;
    sr->timer_set = 0;
    mg_proxy_cancel(&sr->proxy);
    finish(sr, MG_E(TIMEOUT));
}

/* The caller's task was cancelled (deadline, client gone): stop and free. */
static void on_cancel(mg_wait_t *w)
{
    subreq_t *sr = (subreq_t *)((char *)w - offsetof(subreq_t, wait));
    if (sr->trace)
        mg_trace_call_end(sr->trace, sr->trace_item, 0, MG_E(CLIENT_ABORT), sr->proxy.attempts);
    mg_proxy_cancel(&sr->proxy);
    subreq_free(sr);
}

/*
 * TLS for https:// URLs: the system CA store, loaded once per VM (the first
 * https upstream's context is shared by the others).
 */
static SSL_CTX *adhoc_tls(mg_vm_t *vm, char *err, size_t errlen)
{
    for (int i = 0; i < vm->nadhoc; i++)
        if (vm->adhoc[i].tls)
            return mg_tls_ctx_ref(vm->adhoc[i].tls);
    mg_tls_client_conf_t conf = { .verify = 1 };
    return mg_tls_client_new(&conf, err, errlen);
}

/* An upstream for a URL's scheme and host:port, made once per VM and kept (with its pool). */
static mg_upstream_t *adhoc_upstream(mg_vm_t *vm, const char *authority, int tls, char *err, size_t errlen)
{
    for (int i = 0; i < vm->nadhoc; i++)
        if (strcmp(vm->adhoc[i].targets[0].authority, authority) == 0 && (vm->adhoc[i].tls != NULL) == tls)
            return &vm->adhoc[i];
    if (vm->nadhoc == 64) {
        snprintf(err, errlen, "too many distinct URL hosts (64); declare an upstream");
        return NULL;
    }
    if (!vm->adhoc)
        vm->adhoc = mg_calloc(64, sizeof(mg_upstream_t));
    mg_upstream_t *up = &vm->adhoc[vm->nadhoc];
    memset(up, 0, sizeof(*up));
    up->name = strdup(authority);
    up->ntargets = 1;
    up->targets = mg_calloc(1, sizeof(mg_target_t));
    up->targets[0].up = up;
    up->targets[0].text = strdup(authority);
    up->targets[0].authority = strdup(authority);
    up->max_idle = 16;
    up->idle_timeout_ms = 60000;
    up->max_requests = 1000;
    up->connect_ms = 2000;
    up->send_ms = 10000;
    up->read_ms = 30000;
    up->retries = 1;
    up->host_mode = MG_HOST_TARGET;
    up->base = vm->base;
    if (tls && !(up->tls = adhoc_tls(vm, err, errlen))) {
        mg_upstream_free(up);
        return NULL;
    }
    if (mg_upstream_resolve(up, err, errlen) != MG_OK || up->targets[0].hostname) {
        /* resolving a name here would block; names belong in an upstream declaration */
        if (up->targets[0].hostname && strcmp(up->targets[0].hostname, "localhost") == 0) {
            mg_upstream_start(up, vm->base, NULL);
        } else {
            if (up->targets[0].hostname)
                snprintf(err, errlen, "gw.http.request: a url host must be an IP address or localhost; "
                                      "declare an upstream for %s", up->targets[0].hostname);
            mg_upstream_free(up);
            return NULL;
        }
    }
    vm->nadhoc++;
    return up;
}

static char *opt_str(lua_State *L, const char *key, const char *dflt)
{
    lua_getfield(L, 1, key);
    const char *v = lua_isstring(L, -1) ? lua_tostring(L, -1) : dflt;
    char *r = v ? strdup(v) : NULL;
    lua_pop(L, 1);
    return r;
}

static int l_request(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    mg_vm_t *vm = mg_vm_of(L);
    char err[256];
    mg_upstream_t *up = NULL;
    char *target = NULL;
    lua_getfield(L, 1, "upstream");
    if (lua_isstring(L, -1)) {
        up = vm->gen ? mg_gen_upstream(vm->gen, lua_tostring(L, -1)) : NULL;
        if (!up) {
            /* a failure like any other (the name may come from data): nil, err, not a raise */
            lua_pushnil(L);
            lua_pushfstring(L, "no upstream named '%s'", lua_tostring(L, -2));
            return 2;
        }
    }
    lua_pop(L, 1);
    /* nothing given is ignored: a url carries its own path and query */
    lua_getfield(L, 1, "url");
    int has_url = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (has_url) {
        if (up)
            return luaL_error(L, "gw.http.request: give upstream or url, not both");
        lua_getfield(L, 1, "path");
        lua_getfield(L, 1, "query");
        int extra = !lua_isnil(L, -1) || !lua_isnil(L, -2);
        lua_pop(L, 2);
        if (extra)
            return luaL_error(L, "gw.http.request: path and query go in the url (they are for upstream = ...)");
    }
    if (!up) {
        char *url = opt_str(L, "url", NULL);
        if (!url)
            return luaL_error(L, "gw.http.request: give upstream = \"name\" or url = \"http://host:port/path\"");
        int tls = strncmp(url, "https://", 8) == 0;
        if (!tls && strncmp(url, "http://", 7) != 0) {
            free(url);
            return luaL_error(L, "gw.http.request: the url must start with http:// or https://");
        }
        char *auth = url + (tls ? 8 : 7);
        char *slash = strchr(auth, '/');
        target = strdup(slash ? slash : "/");
        if (slash)
            *slash = '\0';
        char with_port[300];
        if (!strchr(auth, ':') || (auth[0] == '[' && auth[strlen(auth) - 1] == ']')) {
            snprintf(with_port, sizeof(with_port), "%s:%d", auth, tls ? 443 : 80);
            auth = with_port;
        }
        up = adhoc_upstream(vm, auth, tls, err, sizeof(err));
        free(url);
        if (!up) {
            free(target);
            lua_pushnil(L);
            lua_pushstring(L, err);
            return 2;
        }
    }
    subreq_t *sr = mg_calloc(1, sizeof(*sr));
    sr->vm = vm;
    sr->method = opt_str(L, "method", "GET");
    if (!target) {
        char *path = opt_str(L, "path", "/");
        char *query = opt_str(L, "query", NULL);
        if (query) {
            size_t n = strlen(path) + strlen(query) + 2;
            target = mg_alloc(n);
            snprintf(target, n, "%s?%s", path, query);
            free(path);
            free(query);
        } else {
            target = path;
        }
    }
    sr->target = target;
    sr->host = opt_str(L, "host", NULL);
    mg_pool_init(&sr->pool);
    mg_resp_init(&sr->fields, &sr->pool, 0);
    sr->resp_body = evbuffer_new();
    sr->resp_head = evbuffer_new();
    lua_getfield(L, 1, "headers");
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            size_t nl, vl;
            const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &nl) : NULL;
            const char *value = lua_isstring(L, -1) ? lua_tolstring(L, -1, &vl) : NULL;
            int bad = !name || !value || !mg_resp_valid_name(name, nl) || !mg_resp_valid_value(value, vl);
            if (!bad && !mg_resp_framing_field(name, nl)) /* framing is the gateway's */
                mg_resp_add(&sr->fields, mg_pool_strndup(&sr->pool, name, nl), nl, mg_pool_strndup(&sr->pool, value, vl), vl);
            lua_pop(L, 1);
            if (bad) {
                subreq_free(sr);
                return luaL_error(L, "gw.http.request: header names must be tokens and values strings without CR, LF or other controls");
            }
        }
    }
    lua_pop(L, 1);
    lua_getfield(L, 1, "body");
    if (lua_isstring(L, -1)) {
        size_t bl;
        const char *b = lua_tolstring(L, -1, &bl);
        sr->body = evbuffer_new();
        evbuffer_add(sr->body, b, bl);
    }
    lua_pop(L, 1);
    mg_task_t *t = mg_task_current(L);
    if (t && t->trace_id) {
        snprintf(sr->trace_id, sizeof(sr->trace_id), "%s", t->trace_id);
        sr->trace_flags = t->trace_flags;
    }
    lua_getfield(L, 1, "timeout");
    double timeout = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : 0;
    lua_pop(L, 1);

    mg_proxy_t *p = &sr->proxy;
    p->ops = &subreq_ops;
    p->owner = sr;
    p->up = up;
    p->pool = &sr->pool;
    p->resp.headers = p->headers;
    p->idempotent = strcmp(sr->method, "POST") != 0 && strcmp(sr->method, "PATCH") != 0;
    p->head_request = strcmp(sr->method, "HEAD") == 0;
    p->body_mode = sr->body ? MG_BODY_LENGTH : MG_BODY_NONE;
    p->body_len = sr->body ? (int64_t)evbuffer_get_length(sr->body) : 0;
    p->body = sr->body;
    sr->wait.cancel = on_cancel;
    sr->wait.what = MG_WAIT_HTTP;
    if (t && t->trace) {
        /* a client span of the caller's request; its attempts are the call's */
        sr->trace = t->trace;
        sr->trace_item = mg_trace_call_begin(t->trace, sr->method, up->name, sr->target, &sr->span);
        p->trace = t->trace;
        p->trace_parent = sr->trace_item;
        if (sr->trace_item < 0)
            p->trace = NULL; /* the record is full: the attempts are not kept either */
    }
    if (timeout > 0) {
        p->deadline_us = mg_now_us() + (uint64_t)(timeout * 1e6); /* no retry starts that could not finish */
        struct timeval tv = { (time_t)timeout, (suseconds_t)((timeout - (double)(time_t)timeout) * 1e6) };
        evtimer_assign(&sr->timer, vm->base, on_timeout, sr);
        evtimer_add(&sr->timer, &tv);
        sr->timer_set = 1;
    }
    /* results of a synchronous finish are pushed on L */
    sr->wait.co = L;
    int main_thread = lua_pushthread(L);
    lua_pop(L, 1);
    if (!t && !main_thread) {
        subreq_free(sr);
        return luaL_error(L, "gw.http.request must run in a handler, a plugin phase or a spec");
    }
    mg_proxy_start(p);
    if (sr->wait.done) {
        int n = sr->wait.nret;
        subreq_free(sr);
        return n;
    }
    sr->yielded = 1;
    int n = mg_wait_yield(L, &sr->wait);
    if (main_thread)
        subreq_free(sr);
    return n;
}

void mg_http_client_register(lua_State *L, mg_vm_t *vm)
{
    lua_newtable(L);
    lua_pushcfunction(L, l_request);
    lua_setfield(L, -2, "request");
    lua_setfield(L, -2, "http");
}
