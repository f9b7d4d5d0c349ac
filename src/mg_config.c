/*
 * mg_config — see mg_config.h. The DSL is in lua/moongate/config.lua; this
 * file turns its result into C: settings, and the router.
 */
#include "mg_config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <lauxlib.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "mg_csema.h"
#include "mg_log.h"

void mg_listen_addr_free(mg_listen_addr_t *addr)
{
    free(addr->text);
    mg_tls_ctx_free(addr->tls);
    memset(addr, 0, sizeof(*addr));
}

int mg_parse_listen(const char *text, mg_listen_addr_t *addr, char *err, size_t errlen)
{
    char host[256];
    const char *colon = strrchr(text, ':');
    if (!colon || colon - text >= (long)sizeof(host)) {
        snprintf(err, errlen, "bad listen address '%s' (want host:port)", text);
        return MG_ERROR;
    }
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535) {
        snprintf(err, errlen, "bad port in listen address '%s'", text);
        return MG_ERROR;
    }
    memset(addr, 0, sizeof(*addr));
    struct sockaddr_in *a4 = (struct sockaddr_in *)&addr->ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&addr->ss;
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        host[hl - 1] = '\0';
        if (inet_pton(AF_INET6, host + 1, &a6->sin6_addr) != 1)
            goto bad;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        addr->len = sizeof(*a6);
    } else {
        if (hl == 0 || strcmp(host, "*") == 0)
            strcpy(host, "0.0.0.0");
        if (strcmp(host, "localhost") == 0)
            strcpy(host, "127.0.0.1");
        if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
            goto bad;
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        addr->len = sizeof(*a4);
    }
    addr->text = strdup(text);
    return MG_OK;
bad:
    snprintf(err, errlen, "bad listen address '%s': the host must be an IP address", text);
    return MG_ERROR;
}

static uint32_t get_ms(lua_State *L, int t, const char *key, uint32_t dflt)
{
    lua_getfield(L, t, key);
    uint32_t v = lua_isnumber(L, -1) ? (uint32_t)lua_tonumber(L, -1) : dflt;
    lua_pop(L, 1);
    return v;
}

static char *get_str(lua_State *L, int t, const char *key)
{
    lua_getfield(L, t, key);
    char *v = lua_isstring(L, -1) ? strdup(lua_tostring(L, -1)) : NULL;
    lua_pop(L, 1);
    return v;
}

/* Reads the settings table at index t into cfg. */
/* A string field of the table at t, valid while that table is alive. */
static const char *get_str_ref(lua_State *L, int t, const char *name)
{
    lua_getfield(L, t, name);
    const char *v = lua_tostring(L, -1);
    lua_pop(L, 1);
    return v;
}

/* The listener's TLS context from { certificates = { {cert, key}, ... }, where = "file:line" }. */
static int read_tls(lua_State *L, int t, mg_listen_addr_t *addr, unsigned lifetime, char *err, size_t errlen)
{
    mg_tls_cert_conf_t certs[MG_MAX_TLS_CERTS];
    lua_getfield(L, t, "certificates");
    int n = (int)lua_objlen(L, -1);
    if (n > MG_MAX_TLS_CERTS)
        n = MG_MAX_TLS_CERTS;
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, -1, i + 1);
        int c = lua_gettop(L);
        certs[i].cert = get_str_ref(L, c, "cert");
        certs[i].key = get_str_ref(L, c, "key");
        certs[i].client_ca = get_str_ref(L, c, "client_ca");
        const char *auth = get_str_ref(L, c, "client_auth");
        certs[i].client_required = auth && strcmp(auth, "required") == 0;
        lua_pop(L, 1); /* the strings stay alive: the tls table is on the stack */
    }
    lua_pop(L, 1);
    mg_tls_server_conf_t conf = { certs, n, lifetime };
    char why[512];
    addr->tls = mg_tls_server_new(&conf, why, sizeof(why));
    if (!addr->tls) {
        lua_getfield(L, t, "where");
        snprintf(err, errlen, "%s: %s", lua_tostring(L, -1), why);
        lua_pop(L, 1);
        return MG_ERROR;
    }
    return MG_OK;
}

/*
 * A listen entry: "host:port", or { addr = "host:port", tls = {...}, http2 = bool }.
 * HTTP/2 is on by default on TLS listeners (ALPN), off on cleartext ones.
 */
static int read_listen(lua_State *L, mg_listen_addr_t *addr, unsigned lifetime, char *err, size_t errlen)
{
    if (!lua_istable(L, -1))
        return mg_parse_listen(lua_tostring(L, -1), addr, err, errlen);
    lua_getfield(L, -1, "addr");
    int rc = mg_parse_listen(lua_tostring(L, -1), addr, err, errlen);
    lua_pop(L, 1);
    if (rc != MG_OK)
        return rc;
    lua_getfield(L, -1, "tls");
    rc = lua_istable(L, -1) ? read_tls(L, lua_gettop(L), addr, lifetime, err, errlen) : MG_OK;
    lua_pop(L, 1);
    if (rc != MG_OK) {
        mg_listen_addr_free(addr);
        return rc;
    }
    lua_getfield(L, -1, "http2");
    addr->http2 = lua_isnil(L, -1) ? addr->tls != NULL : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return MG_OK;
}

/* The same socket address: family, address and port (the spelling does not matter). */
static int same_address(const mg_listen_addr_t *a, const mg_listen_addr_t *b)
{
    if (a->ss.ss_family != b->ss.ss_family)
        return 0;
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)&a->ss, *y = (const void *)&b->ss;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)&a->ss, *y = (const void *)&b->ss;
    return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

/*
 * The listener just read (cfg->listen[cfg->nlisten], entry i of the listen
 * list; listen_at at index `at`) must not be an address an earlier one has:
 * each worker binds every listener with SO_REUSEPORT, so both would join one
 * socket group and the kernel would spread connections over the two
 * listeners' settings (http2, tls) at random. A specific address next to the
 * wildcard on the same port is allowed: the kernel gives a connection to the
 * most specific one.
 */
static int listen_unique(lua_State *L, int at, mg_config_t *cfg, int i, char *err, size_t errlen)
{
    const mg_listen_addr_t *a = &cfg->listen[cfg->nlisten];
    for (int k = 0; k < cfg->nlisten; k++) {
        if (!same_address(a, &cfg->listen[k]))
            continue;
        lua_rawgeti(L, at, i);
        lua_rawgeti(L, at, k + 1);
        snprintf(err, errlen,
                 "%s: listen %s: this address is already a listener (%s at %s); give each address once "
                 "(http2 and tls are per listener)",
                 lua_tostring(L, -2) ? lua_tostring(L, -2) : cfg->file, a->text, cfg->listen[k].text,
                 lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
        lua_pop(L, 2);
        mg_listen_addr_free(&cfg->listen[cfg->nlisten]);
        return MG_ERROR;
    }
    return MG_OK;
}

/* tls_ticket_keys { "a.key", ..., where = "file:line" }: each file 80 bytes, as nginx's. */
static int read_ticket_keys(lua_State *L, int t, mg_config_t *cfg, char *err, size_t errlen)
{
    int n = (int)lua_objlen(L, t);
    for (int i = 0; i < n && i < MG_TLS_TICKET_KEYS_MAX; i++) {
        lua_rawgeti(L, t, i + 1);
        const char *path = lua_tostring(L, -1);
        lua_pop(L, 1); /* the string stays alive in the table */
        FILE *f = fopen(path, "rb");
        size_t got = f ? fread(cfg->ticket_keys[i], 1, MG_TLS_TICKET_KEY_LEN, f) : 0;
        int more = f && fgetc(f) != EOF;
        int e = errno;
        if (f)
            fclose(f);
        if (!f || got != MG_TLS_TICKET_KEY_LEN || more) {
            char why[300];
            if (!f)
                snprintf(why, sizeof(why), "%s", strerror(e));
            else
                snprintf(why, sizeof(why), "a key file holds exactly %d random bytes (openssl rand %d > file)",
                         MG_TLS_TICKET_KEY_LEN, MG_TLS_TICKET_KEY_LEN);
            snprintf(err, errlen, "%s: tls_ticket_keys: '%s': %s", get_str_ref(L, t, "where"), path, why);
            return MG_ERROR;
        }
        cfg->nticket_keys = i + 1;
    }
    return MG_OK;
}

/* tracing { ... } (checked and defaulted by config.lua) at index t. */
static void read_tracing(lua_State *L, int t, mg_trace_conf_t *c)
{
    c->enabled = 1;
    c->endpoint = get_str(L, t, "endpoint");
    lua_getfield(L, t, "ratio");
    c->ratio = lua_tonumber(L, -1);
    lua_getfield(L, t, "parent_based");
    c->parent_based = lua_toboolean(L, -1);
    lua_pop(L, 2);
    c->service_name = get_str(L, t, "service_name");
    c->batch = get_ms(L, t, "batch", 512);
    c->queue = get_ms(L, t, "queue", 8192);
    c->timeout_ms = get_ms(L, t, "timeout", 5000);
    c->interval_ms = get_ms(L, t, "interval", 1000);
    lua_getfield(L, t, "headers");
    int n = (int)lua_objlen(L, -1);
    c->headers = mg_calloc((size_t)n + 1, sizeof(char *));
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, -1, i + 1);
        c->headers[c->nheaders++] = strdup(lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static int read_settings(lua_State *L, int t, mg_config_t *cfg, char *err, size_t errlen)
{
    lua_getfield(L, t, "workers");
    cfg->workers = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);

    lua_getfield(L, t, "timeouts");
    cfg->tls_session_ms = get_ms(L, lua_gettop(L), "tls_session", 3600000); /* the listeners' contexts need it */
    lua_pop(L, 1);
    lua_getfield(L, t, "tls_ticket_keys");
    int rc = lua_istable(L, -1) ? read_ticket_keys(L, lua_gettop(L), cfg, err, errlen) : MG_OK;
    lua_pop(L, 1);
    if (rc != MG_OK)
        return MG_ERROR;

    lua_getfield(L, t, "listen");
    lua_getfield(L, t, "listen_at");
    int n = (int)lua_objlen(L, -2), at = lua_gettop(L);
    for (int i = 1; i <= n && cfg->nlisten < MG_MAX_LISTEN; i++) { /* config.lua refuses more */
        lua_rawgeti(L, at - 1, i);
        rc = read_listen(L, &cfg->listen[cfg->nlisten], cfg->tls_session_ms / 1000, err, errlen);
        lua_pop(L, 1);
        if (rc == MG_OK)
            rc = listen_unique(L, at, cfg, i, err, errlen);
        if (rc != MG_OK) {
            lua_pop(L, 2);
            return MG_ERROR;
        }
        cfg->nlisten++;
    }
    lua_pop(L, 2);

    lua_getfield(L, t, "limits");
    int lt = lua_gettop(L);
    cfg->limits.max_line = get_ms(L, lt, "max_request_line", 8192);
    cfg->limits.max_head = get_ms(L, lt, "max_header_size", 32768);
    cfg->limits.max_headers = get_ms(L, lt, "max_headers", 100);
    cfg->max_body = get_ms(L, lt, "max_body", 1024 * 1024);
    lua_pop(L, 1);
    if (cfg->limits.max_headers > 1000) {
        snprintf(err, errlen, "%s: limits.max_headers is at most 1000", cfg->file);
        return MG_ERROR;
    }

    lua_getfield(L, t, "http2");
    int ht = lua_gettop(L);
    cfg->h2_max_streams = get_ms(L, ht, "max_concurrent_streams", 128);
    cfg->h2_window = get_ms(L, ht, "stream_window", 256 * 1024);
    lua_pop(L, 1);

    lua_getfield(L, t, "timeouts");
    int tt = lua_gettop(L);
    cfg->header_timeout_ms = get_ms(L, tt, "header", 10000);
    cfg->body_timeout_ms = get_ms(L, tt, "body", 30000);
    cfg->keepalive_timeout_ms = get_ms(L, tt, "keepalive", 75000);
    cfg->send_timeout_ms = get_ms(L, tt, "send", 30000);
    cfg->request_timeout_ms = get_ms(L, tt, "request", 60000);
    cfg->drain_timeout_ms = get_ms(L, tt, "drain", 10000);
    cfg->watchdog_ms = get_ms(L, tt, "watchdog", 5000);
    lua_pop(L, 1);

    cfg->access_log = get_str(L, t, "access_log");
    cfg->error_log = get_str(L, t, "error_log");
    cfg->error_header = get_str(L, t, "error_header");
    cfg->hosts_file = get_str(L, t, "hosts_file");
    cfg->admin_socket = get_str(L, t, "admin_socket");
    cfg->admin_listen = get_str(L, t, "admin_listen");
    lua_getfield(L, t, "tracing");
    if (lua_istable(L, -1))
        read_tracing(L, lua_gettop(L), &cfg->tracing);
    lua_pop(L, 1);
    return MG_OK;
}

/*
 * Which methods a route's "methods" value (at idx) allows. "*" is every
 * method but CONNECT: a CONNECT request reaches only a route that lists it
 * (the gateway does not tunnel; a route must ask for such requests).
 */
static unsigned methods_mask(lua_State *L, int idx)
{
    if (lua_isstring(L, idx))
        return MG_M_ANY & ~MG_M_CONNECT; /* "*" */
    unsigned mask = 0;
    int n = (int)lua_objlen(L, idx);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, i);
        size_t len;
        const char *m = lua_tolstring(L, -1, &len);
        mask |= mg_method_bit(m, len);
        lua_pop(L, 1);
    }
    return mask;
}

static int get_int(lua_State *L, int t, const char *key)
{
    lua_getfield(L, t, key);
    int v = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    return v;
}

/* The upstream's TLS client context from { ca, cert, key, server_name, verify, where } at index t. */
static int read_upstream_tls(lua_State *L, int t, mg_upstream_t *up, int warn, char *err, size_t errlen)
{
    mg_tls_client_conf_t conf = { get_str_ref(L, t, "ca"), get_str_ref(L, t, "cert"), get_str_ref(L, t, "key"), 1,
                                  up->protocol == MG_UP_H2 };
    lua_getfield(L, t, "verify");
    conf.verify = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (!conf.verify && warn)
        mg_log_warn(NULL, "%s: upstream %s: tls.verify = false: its certificates are not checked, anyone in "
                    "the path can impersonate it", get_str_ref(L, t, "where"), up->name);
    up->tls_name = get_str(L, t, "server_name");
    char why[512];
    up->tls = mg_tls_client_new(&conf, why, sizeof(why));
    if (!up->tls) {
        snprintf(err, errlen, "%s: upstream %s: %s", get_str_ref(L, t, "where"), up->name, why);
        return MG_ERROR;
    }
    return MG_OK;
}

/*
 * Builds gen->redis from cfg.redis (validated by config.lua) at index t: one
 * pool per block, for this generation's loop. Host names are resolved here.
 */
static int compile_redis(mg_gen_t *gen, lua_State *L, int t, struct event_base *base, char *err, size_t errlen)
{
    lua_getfield(L, t, "redis");
    int rt = lua_gettop(L);
    int n = lua_istable(L, rt) ? (int)lua_objlen(L, rt) : 0;
    gen->redis = mg_calloc((size_t)n + 1, sizeof(mg_redis_t *));
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, rt, i);
        int b = lua_gettop(L);
        mg_redis_conf_t c;
        memset(&c, 0, sizeof(c));
        c.name = get_str(L, b, "name");
        c.where = get_str(L, b, "where");
        c.address = get_str(L, b, "address");
        c.username = get_str(L, b, "username");
        c.password = get_str(L, b, "password");
        c.prefix = get_str(L, b, "prefix");
        c.db = get_int(L, b, "db");
        c.size = get_int(L, b, "size");
        c.nodes = get_int(L, b, "nodes");
        c.connect_ms = (uint32_t)get_int(L, b, "connect_timeout");
        c.command_ms = (uint32_t)get_int(L, b, "command_timeout");
        char why[300];
        int rc = mg_redis_parse_address(&c, c.address, why, sizeof(why));
        if (rc != MG_OK)
            snprintf(err, errlen, "%s: redis %s: %s", c.where, c.name, why);
        else
            gen->redis[gen->nredis++] = mg_redis_new(&c, base);
        mg_redis_conf_free(&c);
        lua_settop(L, rt);
        if (rc != MG_OK) {
            lua_pop(L, 1);
            return MG_ERROR;
        }
    }
    lua_pop(L, 1);
    return MG_OK;
}

mg_redis_t *mg_gen_redis(mg_gen_t *gen, const char *name)
{
    for (int i = 0; i < gen->nredis; i++)
        if (strcmp(mg_redis_conf(gen->redis[i])->name, name) == 0)
            return gen->redis[i];
    return NULL;
}

/* Builds gen->upstreams from cfg.upstreams (validated by config.lua) at index t. */
/* warn: say what deserves a warning (once per load: on the load that checks the config) */
static int compile_upstreams(mg_gen_t *gen, lua_State *L, int t, int warn, char *err, size_t errlen)
{
    lua_getfield(L, t, "upstreams");
    int ut = lua_gettop(L);
    int n = (int)lua_objlen(L, ut);
    gen->upstreams = mg_calloc((size_t)n + 1, sizeof(mg_upstream_t));
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, ut, i);
        int u = lua_gettop(L);
        mg_upstream_t *up = &gen->upstreams[i - 1];
        gen->nupstreams = i;
        up->name = get_str(L, u, "name");
        char *balance = get_str(L, u, "balance");
        up->balance = strcmp(balance, "least_conn") == 0 ? MG_BALANCE_LEAST_CONN
                    : strcmp(balance, "hash") == 0 ? MG_BALANCE_HASH : MG_BALANCE_RR;
        free(balance);
        char *hk = get_str(L, u, "hash_key");
        if (hk) {
            up->hash_kind = hk[0] == 'h' ? 'h' : hk[0] == 'p' ? 'p' : 'i';
            const char *colon = strchr(hk, ':');
            up->hash_name = colon ? strdup(colon + 1) : NULL;
            free(hk);
        }
        up->max_idle = get_int(L, u, "max_idle");
        up->idle_timeout_ms = (uint32_t)get_int(L, u, "idle_timeout");
        up->max_requests = get_int(L, u, "max_requests");
        up->ping_ms = (uint32_t)get_int(L, u, "ping_interval");
        up->connect_ms = (uint32_t)get_int(L, u, "connect_timeout");
        up->send_ms = (uint32_t)get_int(L, u, "send_timeout");
        up->read_ms = (uint32_t)get_int(L, u, "read_timeout");
        up->retries = get_int(L, u, "retries");
        lua_getfield(L, u, "retry_non_idempotent");
        up->retry_non_idempotent = lua_toboolean(L, -1);
        lua_pop(L, 1);
        const char *proto = get_str_ref(L, u, "protocol");
        up->protocol = !proto || strcmp(proto, "http1") == 0 ? MG_UP_HTTP1 : strcmp(proto, "h2c") == 0 ? MG_UP_H2C : MG_UP_H2;
        up->passive_failures = get_int(L, u, "passive_failures");
        up->eject_ms = (uint32_t)get_int(L, u, "passive_eject");
        up->active_path = get_str(L, u, "active_path");
        up->active_interval_ms = (uint32_t)get_int(L, u, "active_interval");
        up->active_timeout_ms = (uint32_t)get_int(L, u, "active_timeout");
        int maxc = get_int(L, u, "max_concurrency");
        if (maxc > 0) {
            char sname[300];
            snprintf(sname, sizeof(sname), "upstream:%s", up->name);
            char *rname = get_str(L, u, "redis");
            if (rname) {
                /* scope = "cluster": the permits are leases in Redis; the local semaphore is the
                 * on_redis_error = "local" fallback, with this node's share of the limit */
                up->redis = mg_gen_redis(gen, rname);
                mg_assert(up->redis != NULL); /* config_redis.lua checked the name */
                up->csema = mg_csema_get(sname, rname, maxc, (uint32_t)get_int(L, u, "lease"));
                char *policy = get_str(L, u, "on_redis_error");
                up->on_redis_error = strcmp(policy, "allow") == 0 ? MG_REDIS_ALLOW
                                   : strcmp(policy, "deny") == 0  ? MG_REDIS_DENY : MG_REDIS_LOCAL;
                free(policy);
                free(rname);
                int nodes = mg_redis_conf(up->redis)->nodes;
                maxc = maxc / (nodes > 0 ? nodes : 1);
                if (maxc < 1)
                    maxc = 1;
            }
            up->sema = mg_sema_get(sname, maxc);
            up->queue_max = get_int(L, u, "queue");
            up->queue_timeout_ms = (uint32_t)get_int(L, u, "queue_timeout");
            up->busy_status = get_int(L, u, "busy_status");
        }
        char *hh = get_str(L, u, "host_header");
        up->host_mode = strcmp(hh, "pass") == 0 ? MG_HOST_PASS : strcmp(hh, "target") == 0 ? MG_HOST_TARGET : MG_HOST_FIXED;
        if (up->host_mode == MG_HOST_FIXED)
            up->host_value = hh;
        else
            free(hh);
        lua_getfield(L, u, "tls");
        int rc = lua_istable(L, -1) ? read_upstream_tls(L, lua_gettop(L), up, warn, err, errlen) : MG_OK;
        lua_pop(L, 1);
        if (rc != MG_OK)
            return MG_ERROR;
        lua_getfield(L, u, "targets");
        up->ntargets = (int)lua_objlen(L, -1);
        up->targets = mg_calloc((size_t)up->ntargets, sizeof(mg_target_t));
        for (int k = 0; k < up->ntargets; k++) {
            lua_rawgeti(L, -1, k + 1);
            mg_target_t *tg = &up->targets[k];
            tg->up = up;
            char *host = get_str(L, lua_gettop(L), "host");
            int port = get_int(L, lua_gettop(L), "port");
            char buf[300];
            snprintf(buf, sizeof(buf), strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
            free(host);
            tg->text = strdup(buf);
            tg->authority = strdup(buf);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        lua_settop(L, ut);
        if (mg_upstream_resolve(up, err, errlen) != MG_OK)
            return MG_ERROR;
    }
    lua_settop(L, ut - 1);
    return MG_OK;
}

mg_upstream_t *mg_gen_upstream(mg_gen_t *gen, const char *name)
{
    for (int i = 0; i < gen->nupstreams; i++)
        if (strcmp(gen->upstreams[i].name, name) == 0)
            return &gen->upstreams[i];
    return NULL;
}

/* Compiles cfg.routes (at index t) into gen's router and route array. */
static int compile_routes(mg_gen_t *gen, lua_State *L, int t, char *err, size_t errlen)
{
    lua_getfield(L, t, "routes");
    int rt = lua_gettop(L);
    int n = (int)lua_objlen(L, rt);
    gen->router = mg_router_new();
    gen->routes = mg_calloc((size_t)n + 1, sizeof(mg_route_t));
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, rt, i);
        int r = lua_gettop(L);
        lua_getfield(L, r, "path");
        lua_getfield(L, r, "host");
        lua_getfield(L, r, "methods");
        lua_getfield(L, r, "upstream");
        lua_getfield(L, r, "info"); /* ctx.route: what a handler may know about its route */
        lua_getfield(L, r + 5, "declared_at");
        const char *where = lua_tostring(L, -1); /* "file:line"; alive while info is on the stack */
        mg_route_spec_t spec = {
            .id = i - 1,
            .methods = methods_mask(L, r + 3),
            .host = lua_tostring(L, r + 2),
            .path = lua_tostring(L, r + 1),
            .where = where,
        };
        int proxied = lua_isstring(L, r + 4);
        if (proxied && (spec.methods & MG_M_CONNECT)) {
            /* a 2xx to CONNECT turns the upstream connection into a tunnel, which the proxy does not do */
            snprintf(err, errlen, "%s: route %s: CONNECT cannot be proxied (the gateway does not tunnel); "
                     "only a handler route may list it", where, spec.path);
            lua_settop(L, rt - 1);
            return MG_ERROR;
        }
        char why[384];
        if (mg_router_add(gen->router, &spec, why, sizeof(why)) != MG_OK) {
            snprintf(err, errlen, "%s: route %s: %s", where, spec.path, why);
            lua_settop(L, rt - 1);
            return MG_ERROR;
        }
        mg_route_t *route = &gen->routes[i - 1];
        lua_getfield(L, r, "handler");
        route->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        if (proxied)
            route->upstream = mg_gen_upstream(gen, lua_tostring(L, r + 4));
        lua_getfield(L, r, "timeout");
        route->timeout_ms = (uint32_t)lua_tointeger(L, -1);
        lua_pop(L, 1);
        lua_getfield(L, r, "max_body");
        route->max_body = lua_isnumber(L, -1) ? (int64_t)lua_tonumber(L, -1) : -1;
        lua_pop(L, 1);
        lua_getfield(L, r, "chain");
        if (lua_istable(L, -1)) {
            lua_getfield(L, -1, "has_header_filter");
            route->chain_filters = lua_toboolean(L, -1);
            lua_getfield(L, -2, "has_log");
            route->chain_logs = lua_toboolean(L, -1);
            lua_getfield(L, -3, "has_body_filter");
            route->chain_body_filters = lua_toboolean(L, -1);
            lua_getfield(L, -4, "whole_body");
            route->chain_whole_body = (int64_t)lua_tonumber(L, -1);
            lua_pop(L, 4);
            route->chain_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        } else {
            lua_pop(L, 1);
            route->chain_ref = LUA_NOREF;
        }
        lua_getfield(L, r, "upgrade"); /* a list of lowercase tokens (config.lua checked it) */
        if (lua_istable(L, -1) && lua_objlen(L, -1) > 0) {
            size_t ntok = lua_objlen(L, -1);
            route->upgrade = mg_calloc(ntok + 1, sizeof(char *));
            for (size_t k = 1; k <= ntok; k++) {
                lua_rawgeti(L, -1, (int)k);
                route->upgrade[k - 1] = strdup(lua_tostring(L, -1));
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
        lua_getfield(L, r, "name");
        route->name = strdup(lua_tostring(L, -1));
        lua_pop(L, 1);
        lua_pushvalue(L, r + 5);
        route->info_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        gen->nroutes = i;
        lua_settop(L, rt);
    }
    lua_settop(L, rt - 1);
    return MG_OK;
}

/*
 * trusted_proxies { "10.0.0.0/8", "::1", ..., where = "file:line" } (at index
 * t, from config.lua) into gen's CIDR list. Every entry must parse: a typo
 * here would silently trust nobody, or the wrong network.
 */
static int read_trusted_proxies(mg_gen_t *gen, lua_State *L, int t, char *err, size_t errlen)
{
    lua_getfield(L, t, "trusted_proxies");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return MG_OK;
    }
    int tp = lua_gettop(L);
    size_t n = lua_objlen(L, tp);
    gen->trusted = mg_calloc(n ? n : 1, sizeof(mg_cidr_t));
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, tp, (int)i + 1);
        const char *spec = lua_tostring(L, -1);
        lua_pop(L, 1); /* the string stays alive in the table */
        if (!spec || mg_cidr_parse(spec, &gen->trusted[i]) != 0) {
            snprintf(err, errlen, "%s: trusted_proxies: '%s' is not an address or a CIDR with a clean prefix "
                     "(e.g. \"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\")", get_str_ref(L, tp, "where"),
                     spec ? spec : "?");
            lua_pop(L, 1);
            return MG_ERROR;
        }
        gen->ntrusted = i + 1;
    }
    lua_pop(L, 1);
    return MG_OK;
}

static int loads_cancelled; /* mg_gen_load_cancel_all */

void mg_gen_load_cancel_all(void) { __atomic_store_n(&loads_cancelled, 1, __ATOMIC_RELAXED); }

/* A config's code can run for long (a large file, a loop at its top): a load is never what keeps a stop waiting. */
static void load_hook(lua_State *L, lua_Debug *ar)
{
    if (__atomic_load_n(&loads_cancelled, __ATOMIC_RELAXED))
        luaL_error(L, "the gateway is stopping");
}

mg_gen_t *mg_gen_load(const char *file, struct event_base *base, void *worker, mg_config_t *cfg,
                      char *err, size_t errlen)
{
    mg_gen_t *gen = mg_calloc(1, sizeof(*gen));
    gen->vm = mg_vm_new(base, worker, 0, err, errlen);
    if (!gen->vm) {
        free(gen);
        return NULL;
    }
    lua_State *L = gen->vm->L;
    gen->vm->gen = gen;
    lua_getglobal(L, "require");
    lua_pushliteral(L, "moongate.config");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "load");
    lua_pushstring(L, file);
    lua_sethook(L, load_hook, LUA_MASKCOUNT, 10000);
    int rc = lua_pcall(L, 1, 2, 0);
    lua_sethook(L, NULL, 0, 0);
    if (rc != 0) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        goto fail;
    }
    if (lua_isnil(L, -2)) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        goto fail;
    }
    lua_pop(L, 1);
    int t = lua_gettop(L);
    if (cfg) {
        cfg->file = strdup(file);
        if (read_settings(L, t, cfg, err, errlen) != MG_OK)
            goto fail;
    }
    /* the one timeout a reload applies: a tunnel holds no generation, it copies this at its start */
    lua_getfield(L, t, "timeouts");
    gen->tunnel_timeout_ms = get_ms(L, lua_gettop(L), "tunnel", 60000);
    lua_pop(L, 1);
    if (read_trusted_proxies(gen, L, t, err, errlen) != MG_OK)
        goto fail;
    if (compile_redis(gen, L, t, base, err, errlen) != MG_OK)
        goto fail;
    if (compile_upstreams(gen, L, t, cfg != NULL, err, errlen) != MG_OK)
        goto fail;
    for (int i = 0; i < gen->nupstreams; i++)
        gen->upstreams[i].base = base;
    if (compile_routes(gen, L, t, err, errlen) != MG_OK)
        goto fail;
    if (cfg) {
        /* valid but most likely a mistake (config.lua's list): said once, by the load that validates */
        lua_getfield(L, t, "warnings");
        for (int i = 1; lua_istable(L, -1) && i <= (int)lua_objlen(L, -1); i++) {
            lua_rawgeti(L, -1, i);
            mg_log_warn(NULL, "%s", lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pushvalue(L, t); /* what describes the routes (mg__admin_routes) without loading the file again */
    lua_setfield(L, LUA_REGISTRYINDEX, MG_LOADED_CONFIG);
    lua_settop(L, 0);
    return gen;
fail:
    mg_gen_free(gen);
    return NULL;
}

void mg_gen_stop(mg_gen_t *gen)
{
    if (gen->loop_stopped)
        return;
    gen->loop_stopped = 1;
    for (int i = 0; i < gen->nupstreams; i++)
        mg_upstream_free(&gen->upstreams[i]);
    if (gen->vm)
        mg_vm_stop(gen->vm);
    /* after the VM's ledger ran (timers and their waits cancelled): replies still due are let in */
    for (int i = 0; i < gen->nredis; i++)
        mg_redis_stop(gen->redis[i]);
}

static pthread_mutex_t graveyard_lock = PTHREAD_MUTEX_INITIALIZER;
static mg_gen_t *graveyard;
static pthread_once_t graveyard_once = PTHREAD_ONCE_INIT;
static int graveyard_efd = -1;

static void graveyard_efd_open(void) { graveyard_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

int mg_gen_graveyard_fd(void)
{
    pthread_once(&graveyard_once, graveyard_efd_open);
    return graveyard_efd;
}

void mg_gen_bury(mg_gen_t *gen)
{
    mg_gen_stop(gen);
    pthread_mutex_lock(&graveyard_lock);
    gen->next_retired = graveyard;
    graveyard = gen;
    pthread_mutex_unlock(&graveyard_lock);
    int fd = mg_gen_graveyard_fd();
    uint64_t one = 1;
    if (fd >= 0 && write(fd, &one, sizeof(one)) < 0) {
        /* the counter is saturated: a wake-up is already pending */
    }
}

int mg_gen_graveyard_has(void)
{
    pthread_mutex_lock(&graveyard_lock);
    int has = graveyard != NULL;
    pthread_mutex_unlock(&graveyard_lock);
    return has;
}

void mg_gen_graveyard_empty(void)
{
    pthread_mutex_lock(&graveyard_lock);
    mg_gen_t *g = graveyard;
    graveyard = NULL;
    pthread_mutex_unlock(&graveyard_lock);
    while (g) {
        mg_gen_t *next = g->next_retired;
        mg_gen_free(g);
        g = next;
    }
}

void mg_gen_free(mg_gen_t *gen)
{
    if (!gen)
        return;
    mg_gen_stop(gen);
    for (int i = 0; i < gen->nroutes; i++) {
        free(gen->routes[i].name);
        for (char **u = gen->routes[i].upgrade; u && *u; u++)
            free(*u);
        free(gen->routes[i].upgrade);
    }
    free(gen->routes);
    free(gen->upstreams);
    for (int i = 0; i < gen->nredis; i++)
        mg_redis_unref(gen->redis[i]);
    free(gen->redis);
    free(gen->trusted);
    mg_router_free(gen->router);
    mg_vm_free(gen->vm);
    for (int i = 0; i < MG_MAX_LISTEN; i++)
        mg_tls_ctx_free(gen->tls[i]);
    free(gen);
}

void mg_gen_use_tls(mg_gen_t *gen, const mg_config_t *cfg)
{
    for (int i = 0; i < cfg->nlisten; i++) {
        mg_tls_ctx_free(gen->tls[i]);
        gen->tls[i] = mg_tls_ctx_ref(cfg->listen[i].tls);
    }
}

void mg_config_apply_tls(const mg_config_t *cfg)
{
    mg_tls_sessions(cfg->tls_session_ms / 1000, (const unsigned char (*)[MG_TLS_TICKET_KEY_LEN])cfg->ticket_keys,
                    cfg->nticket_keys);
}

void mg_config_free(mg_config_t *cfg)
{
    for (int i = 0; i < cfg->nlisten; i++)
        mg_listen_addr_free(&cfg->listen[i]);
    free(cfg->file);
    free(cfg->access_log);
    free(cfg->error_log);
    free(cfg->error_header);
    free(cfg->hosts_file);
    free(cfg->admin_socket);
    free(cfg->admin_listen);
    mg_trace_conf_free(&cfg->tracing);
    OPENSSL_cleanse(cfg->ticket_keys, sizeof(cfg->ticket_keys));
    memset(cfg, 0, sizeof(*cfg));
}

int mg_route_upgrade_ok(const mg_route_t *route, const char *token, size_t n)
{
    for (char **u = route->upgrade; u && *u; u++)
        if (strlen(*u) == n && strncasecmp(*u, token, n) == 0)
            return 1;
    return 0;
}
