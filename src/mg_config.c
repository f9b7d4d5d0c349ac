/*
 * mg_config — see mg_config.h. The DSL is in lua/moongate/config.lua; this
 * file turns its result into C: settings, and the router.
 */
#include "mg_config.h"

#include <arpa/inet.h>
#include <lauxlib.h>
#include <netinet/in.h>
#include <stdio.h>

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
static int read_settings(lua_State *L, int t, mg_config_t *cfg, char *err, size_t errlen)
{
    lua_getfield(L, t, "workers");
    cfg->workers = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);

    lua_getfield(L, t, "listen");
    int n = (int)lua_objlen(L, -1);
    for (int i = 1; i <= n && cfg->nlisten < MG_MAX_LISTEN; i++) {
        lua_rawgeti(L, -1, i);
        int rc = mg_parse_listen(lua_tostring(L, -1), &cfg->listen[cfg->nlisten], err, errlen);
        lua_pop(L, 1);
        if (rc != MG_OK) {
            lua_pop(L, 1);
            return MG_ERROR;
        }
        cfg->nlisten++;
    }
    lua_pop(L, 1);

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

    lua_getfield(L, t, "timeouts");
    int tt = lua_gettop(L);
    cfg->header_timeout_ms = get_ms(L, tt, "header", 10000);
    cfg->body_timeout_ms = get_ms(L, tt, "body", 30000);
    cfg->keepalive_timeout_ms = get_ms(L, tt, "keepalive", 75000);
    cfg->send_timeout_ms = get_ms(L, tt, "send", 30000);
    cfg->request_timeout_ms = get_ms(L, tt, "request", 60000);
    cfg->drain_timeout_ms = get_ms(L, tt, "drain", 10000);
    lua_pop(L, 1);

    cfg->access_log = get_str(L, t, "access_log");
    cfg->error_log = get_str(L, t, "error_log");
    return MG_OK;
}

static unsigned methods_mask(lua_State *L, int idx)
{
    if (lua_isstring(L, idx))
        return MG_M_ANY; /* "*" */
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
        lua_getfield(L, r, "file");
        lua_getfield(L, r, "line");
        lua_getfield(L, r, "methods");
        char where[512];
        snprintf(where, sizeof(where), "%s:%d", lua_tostring(L, r + 3), (int)lua_tointeger(L, r + 4));
        mg_route_spec_t spec = {
            .id = i - 1,
            .methods = methods_mask(L, r + 5),
            .host = lua_tostring(L, r + 2),
            .path = lua_tostring(L, r + 1),
            .where = where,
        };
        char why[384];
        if (mg_router_add(gen->router, &spec, why, sizeof(why)) != MG_OK) {
            snprintf(err, errlen, "%s: route %s: %s", where, spec.path, why);
            lua_settop(L, rt - 1);
            return MG_ERROR;
        }
        mg_route_t *route = &gen->routes[i - 1];
        lua_getfield(L, r, "handler");
        route->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        lua_getfield(L, r, "timeout");
        route->timeout_ms = (uint32_t)lua_tointeger(L, -1);
        lua_pop(L, 1);
        lua_getfield(L, r, "name");
        route->name = strdup(lua_tostring(L, -1));
        lua_pop(L, 1);
        /* ctx.route: what a handler may know about its route */
        lua_createtable(L, 0, 6);
        lua_getfield(L, r, "name");
        lua_setfield(L, -2, "name");
        lua_pushvalue(L, r + 1);
        lua_setfield(L, -2, "path");
        lua_pushvalue(L, r + 2);
        lua_setfield(L, -2, "host");
        lua_pushvalue(L, r + 5);
        lua_setfield(L, -2, "methods");
        lua_pushstring(L, where);
        lua_setfield(L, -2, "declared_at");
        route->info_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        gen->nroutes = i;
        lua_settop(L, rt);
    }
    lua_settop(L, rt - 1);
    return MG_OK;
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
    lua_getglobal(L, "require");
    lua_pushliteral(L, "moongate.config");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "load");
    lua_pushstring(L, file);
    if (lua_pcall(L, 1, 2, 0) != 0) {
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
    if (compile_routes(gen, L, t, err, errlen) != MG_OK)
        goto fail;
    lua_settop(L, 0);
    return gen;
fail:
    mg_gen_free(gen);
    return NULL;
}

void mg_gen_free(mg_gen_t *gen)
{
    if (!gen)
        return;
    for (int i = 0; i < gen->nroutes; i++)
        free(gen->routes[i].name);
    free(gen->routes);
    mg_router_free(gen->router);
    mg_vm_free(gen->vm);
    free(gen);
}

void mg_config_free(mg_config_t *cfg)
{
    for (int i = 0; i < cfg->nlisten; i++)
        free(cfg->listen[i].text);
    free(cfg->file);
    free(cfg->access_log);
    free(cfg->error_log);
    memset(cfg, 0, sizeof(*cfg));
}
