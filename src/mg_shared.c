/*
 * mg_shared — gw.shared: named dictionaries shared by all workers of the
 * process, with TTLs and a memory bound enforced by LRU eviction.
 *
 *   shared_dict("limits", "10m")                 -- in the config
 *   local d = gw.shared.limits
 *   d:set(key, value [, ttl])  d:add(...)  d:replace(...)  -> true | nil, "exists" | "not found" | "no memory"
 *   d:get(key) -> value | nil  d:incr(key, by [, init [, ttl]]) -> new value | nil, err
 *   d:delete(key)  d:ttl(key)  d:flush_all()  d:stats()
 *   d:token_bucket(key, rate, burst [, cost]) -> allowed, remaining, retry_after
 *
 * Values are strings, numbers and booleans. Each dict has its own mutex,
 * held only for the operation itself (no I/O, no Lua calls under it). Dicts
 * are registered by name process-wide, so they outlive a config generation.
 */
#include <lauxlib.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>

#include "mg_lua.h"

#define DICT_MT "moongate.shared"
#define ENTRY_OVERHEAD 64 /* bytes charged per entry on top of key and value */

enum { V_STRING = 1, V_NUMBER, V_BOOLEAN };

typedef struct entry {
    struct entry *hnext;              /* hash chain */
    struct entry *prev, *next;        /* LRU: head = most recent */
    uint32_t hash;
    uint8_t type;
    size_t klen, vlen;
    double num;
    uint64_t expires;                 /* monotonic ms, 0 = never */
    char data[];                      /* key, then string value */
} entry_t;

typedef struct dict {
    char *name;
    pthread_mutex_t lock;
    entry_t **buckets;
    size_t nbuckets, count, used, capacity;
    uint64_t evictions;
    entry_t *head, *tail;
    struct dict *next;
} dict_t;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static dict_t *registry;

static size_t cost(const entry_t *e) { return ENTRY_OVERHEAD + e->klen + e->vlen; }

static void lru_unlink(dict_t *d, entry_t *e)
{
    if (e->prev) e->prev->next = e->next; else d->head = e->next;
    if (e->next) e->next->prev = e->prev; else d->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_front(dict_t *d, entry_t *e)
{
    e->next = d->head;
    e->prev = NULL;
    if (d->head) d->head->prev = e;
    d->head = e;
    if (!d->tail) d->tail = e;
}

static void remove_entry(dict_t *d, entry_t *e)
{
    entry_t **pp = &d->buckets[e->hash & (d->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(d, e);
    d->count--;
    d->used -= cost(e);
    free(e);
}

static entry_t *find(dict_t *d, const char *k, size_t n, uint32_t h, uint64_t now)
{
    for (entry_t *e = d->buckets[h & (d->nbuckets - 1)]; e; e = e->hnext) {
        if (e->hash == h && e->klen == n && memcmp(e->data, k, n) == 0) {
            if (e->expires && e->expires <= now) {
                remove_entry(d, e);
                return NULL;
            }
            return e;
        }
    }
    return NULL;
}

static void grow(dict_t *d)
{
    size_t nb = d->nbuckets * 2;
    entry_t **b = mg_calloc(nb, sizeof(*b));
    for (size_t i = 0; i < d->nbuckets; i++) {
        entry_t *e = d->buckets[i];
        while (e) {
            entry_t *next = e->hnext;
            e->hnext = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
            e = next;
        }
    }
    free(d->buckets);
    d->buckets = b;
    d->nbuckets = nb;
}

/* Makes room for `need` bytes: expired entries first, then the least recently used. */
static int make_room(dict_t *d, size_t need, uint64_t now)
{
    if (need > d->capacity)
        return 0;
    for (entry_t *e = d->tail; e && d->used + need > d->capacity;) {
        entry_t *prev = e->prev;
        if (e->expires && e->expires <= now)
            remove_entry(d, e);
        e = prev;
    }
    while (d->used + need > d->capacity && d->tail) {
        remove_entry(d, d->tail);
        d->evictions++;
    }
    return 1;
}

typedef struct value {
    uint8_t type;
    const char *s;
    size_t len;
    double num;
} value_t;

static entry_t *store(dict_t *d, const char *k, size_t n, uint32_t h, const value_t *v, uint64_t expires,
                      uint64_t now)
{
    entry_t *old = find(d, k, n, h, now);
    if (old)
        remove_entry(d, old);
    size_t vlen = v->type == V_STRING ? v->len : 0;
    size_t need = ENTRY_OVERHEAD + n + vlen;
    if (!make_room(d, need, now))
        return NULL;
    entry_t *e = mg_alloc(sizeof(*e) + n + vlen);
    memset(e, 0, sizeof(*e));
    e->hash = h;
    e->type = v->type;
    e->klen = n;
    e->vlen = vlen;
    e->num = v->num;
    e->expires = expires;
    memcpy(e->data, k, n);
    if (vlen)
        memcpy(e->data + n, v->s, vlen);
    if (d->count + 1 > d->nbuckets * 3 / 4)
        grow(d);
    e->hnext = d->buckets[h & (d->nbuckets - 1)];
    d->buckets[h & (d->nbuckets - 1)] = e;
    lru_front(d, e);
    d->count++;
    d->used += need;
    return e;
}

/* ---- registry ---- */

static dict_t *lookup(const char *name)
{
    for (dict_t *d = registry; d; d = d->next)
        if (strcmp(d->name, name) == 0)
            return d;
    return NULL;
}

int mg_shared_define(const char *name, size_t capacity, int if_absent)
{
    pthread_mutex_lock(&registry_lock);
    dict_t *d = lookup(name);
    if (d && if_absent) {
        pthread_mutex_unlock(&registry_lock);
        return MG_OK;
    }
    if (d) {
        /* a new capacity applies from now on; entries above it go as space is needed */
        pthread_mutex_lock(&d->lock);
        d->capacity = capacity;
        pthread_mutex_unlock(&d->lock);
    } else {
        d = mg_calloc(1, sizeof(*d));
        d->name = strdup(name);
        pthread_mutex_init(&d->lock, NULL);
        d->nbuckets = 64;
        d->buckets = mg_calloc(d->nbuckets, sizeof(*d->buckets));
        d->capacity = capacity;
        d->next = registry;
        registry = d;
    }
    pthread_mutex_unlock(&registry_lock);
    return MG_OK;
}

/* ---- Lua ---- */

static dict_t *check_dict(lua_State *L)
{
    dict_t **dp = luaL_checkudata(L, 1, DICT_MT);
    return *dp;
}

static void read_value(lua_State *L, int idx, value_t *v)
{
    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
        v->type = V_STRING;
        v->s = lua_tolstring(L, idx, &v->len);
        break;
    case LUA_TNUMBER:
        v->type = V_NUMBER;
        v->num = lua_tonumber(L, idx);
        break;
    case LUA_TBOOLEAN:
        v->type = V_BOOLEAN;
        v->num = lua_toboolean(L, idx);
        break;
    default:
        luaL_argerror(L, idx, "values are strings, numbers or booleans");
    }
}

static void push_value(lua_State *L, const entry_t *e)
{
    if (e->type == V_STRING)
        lua_pushlstring(L, e->data + e->klen, e->vlen);
    else if (e->type == V_NUMBER)
        lua_pushnumber(L, e->num);
    else
        lua_pushboolean(L, e->num != 0);
}

static uint64_t expiry(lua_State *L, int idx, uint64_t now)
{
    double ttl = luaL_optnumber(L, idx, 0);
    if (ttl < 0)
        luaL_argerror(L, idx, "ttl must be >= 0 (0: no expiry)");
    return ttl > 0 ? now + (uint64_t)(ttl * 1000) : 0;
}

enum { OP_SET, OP_ADD, OP_REPLACE };

static int do_store(lua_State *L, int op)
{
    dict_t *d = check_dict(L);
    size_t n;
    const char *k = luaL_checklstring(L, 2, &n);
    value_t v = { 0 };
    read_value(L, 3, &v);
    uint64_t now = mg_now_ms();
    uint64_t exp = expiry(L, 4, now);
    uint32_t h = mg_hash(k, n);
    const char *err = NULL;
    pthread_mutex_lock(&d->lock);
    entry_t *cur = find(d, k, n, h, now);
    if (op == OP_ADD && cur)
        err = "exists";
    else if (op == OP_REPLACE && !cur)
        err = "not found";
    else if (!store(d, k, n, h, &v, exp, now))
        err = "no memory";
    pthread_mutex_unlock(&d->lock);
    if (err) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_set(lua_State *L) { return do_store(L, OP_SET); }
static int l_add(lua_State *L) { return do_store(L, OP_ADD); }
static int l_replace(lua_State *L) { return do_store(L, OP_REPLACE); }

static int l_get(lua_State *L)
{
    dict_t *d = check_dict(L);
    size_t n;
    const char *k = luaL_checklstring(L, 2, &n);
    uint32_t h = mg_hash(k, n);
    pthread_mutex_lock(&d->lock);
    entry_t *e = find(d, k, n, h, mg_now_ms());
    if (e) {
        lru_unlink(d, e);
        lru_front(d, e);
        push_value(L, e); /* copies out before the lock is released */
    }
    pthread_mutex_unlock(&d->lock);
    if (!e)
        lua_pushnil(L);
    return 1;
}

static int l_incr(lua_State *L)
{
    dict_t *d = check_dict(L);
    size_t n;
    const char *k = luaL_checklstring(L, 2, &n);
    double by = luaL_checknumber(L, 3);
    int has_init = !lua_isnoneornil(L, 4);
    double init = luaL_optnumber(L, 4, 0);
    uint64_t now = mg_now_ms();
    uint64_t exp = expiry(L, 5, now);
    uint32_t h = mg_hash(k, n);
    const char *err = NULL;
    double result = 0;
    pthread_mutex_lock(&d->lock);
    entry_t *e = find(d, k, n, h, now);
    if (e && e->type != V_NUMBER) {
        err = "not a number";
    } else if (e) {
        e->num += by;
        result = e->num;
        lru_unlink(d, e);
        lru_front(d, e);
    } else if (!has_init) {
        err = "not found";
    } else {
        value_t v = { .type = V_NUMBER, .num = init + by };
        if (!store(d, k, n, h, &v, exp, now))
            err = "no memory";
        result = init + by;
    }
    pthread_mutex_unlock(&d->lock);
    if (err) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushnumber(L, result);
    return 1;
}

static int l_delete(lua_State *L)
{
    dict_t *d = check_dict(L);
    size_t n;
    const char *k = luaL_checklstring(L, 2, &n);
    uint32_t h = mg_hash(k, n);
    pthread_mutex_lock(&d->lock);
    entry_t *e = find(d, k, n, h, mg_now_ms());
    if (e)
        remove_entry(d, e);
    pthread_mutex_unlock(&d->lock);
    lua_pushboolean(L, e != NULL);
    return 1;
}

static int l_ttl(lua_State *L)
{
    dict_t *d = check_dict(L);
    size_t n;
    const char *k = luaL_checklstring(L, 2, &n);
    uint32_t h = mg_hash(k, n);
    uint64_t now = mg_now_ms();
    pthread_mutex_lock(&d->lock);
    entry_t *e = find(d, k, n, h, now);
    double left = e ? (e->expires ? (double)(e->expires - now) / 1000.0 : 0) : -1;
    pthread_mutex_unlock(&d->lock);
    if (left < 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "not found");
        return 2;
    }
    lua_pushnumber(L, left);
    return 1;
}

static int l_flush_all(lua_State *L)
{
    dict_t *d = check_dict(L);
    pthread_mutex_lock(&d->lock);
    while (d->head)
        remove_entry(d, d->head);
    pthread_mutex_unlock(&d->lock);
    return 0;
}

static int l_stats(lua_State *L)
{
    dict_t *d = check_dict(L);
    pthread_mutex_lock(&d->lock);
    size_t count = d->count, used = d->used, cap = d->capacity;
    uint64_t ev = d->evictions;
    pthread_mutex_unlock(&d->lock);
    lua_createtable(L, 0, 4);
    lua_pushnumber(L, (double)count);
    lua_setfield(L, -2, "count");
    lua_pushnumber(L, (double)used);
    lua_setfield(L, -2, "used");
    lua_pushnumber(L, (double)cap);
    lua_setfield(L, -2, "capacity");
    lua_pushnumber(L, (double)ev);
    lua_setfield(L, -2, "evictions");
    return 1;
}

/*
 * d:token_bucket(key, rate, burst [, cost]): one atomic step of a token
 * bucket shared by every worker. The bucket refills `rate` tokens a second up
 * to `burst`. Returns allowed, tokens left, and when not allowed the seconds
 * until `cost` tokens are there (for Retry-After).
 */
static int l_token_bucket(lua_State *L)
{
    dict_t *d = check_dict(L);
    size_t n;
    const char *k = luaL_checklstring(L, 2, &n);
    double rate = luaL_checknumber(L, 3);
    double burst = luaL_checknumber(L, 4);
    double want = luaL_optnumber(L, 5, 1);
    if (!(rate > 0) || !(burst >= want) || !(want > 0))
        return luaL_error(L, "token_bucket: need rate > 0 and burst >= cost > 0");
    uint64_t now = mg_now_ms();
    uint32_t h = mg_hash(k, n);
    int allowed = 0;
    double tokens, retry = 0;
    pthread_mutex_lock(&d->lock);
    entry_t *e = find(d, k, n, h, now);
    /* state: tokens in num, last refill (ms) in the string value */
    if (e && e->type == V_STRING && e->vlen == sizeof(uint64_t)) {
        uint64_t last;
        memcpy(&last, e->data + e->klen, sizeof(last));
        tokens = e->num + (double)(now - last) / 1000.0 * rate;
        if (tokens > burst)
            tokens = burst;
    } else {
        tokens = burst;
    }
    if (tokens >= want) {
        tokens -= want;
        allowed = 1;
    } else {
        retry = (want - tokens) / rate;
    }
    value_t v = { .type = V_STRING, .s = (const char *)&now, .len = sizeof(now), .num = tokens };
    /* an idle bucket refills completely after burst / rate seconds: then it may go */
    uint64_t exp = now + (uint64_t)(ceil(burst / rate * 1000.0)) + 1000;
    entry_t *ne = store(d, k, n, h, &v, exp, now);
    if (ne)
        ne->num = tokens;
    pthread_mutex_unlock(&d->lock);
    lua_pushboolean(L, allowed);
    lua_pushnumber(L, floor(tokens));
    lua_pushnumber(L, retry);
    return 3;
}

/* gw.shared[name]: the dict declared with shared_dict(name, size), or an error. */
static int l_index(lua_State *L)
{
    const char *name = luaL_checkstring(L, 2);
    pthread_mutex_lock(&registry_lock);
    dict_t *d = lookup(name);
    pthread_mutex_unlock(&registry_lock);
    if (!d)
        return luaL_error(L, "gw.shared.%s: no such dict (declare it: shared_dict(\"%s\", \"1m\"))", name, name);
    dict_t **dp = lua_newuserdata(L, sizeof(*dp));
    *dp = d;
    luaL_getmetatable(L, DICT_MT);
    lua_setmetatable(L, -2);
    /* cache the handle in gw.shared for the next lookup */
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -2);
    lua_rawset(L, 1);
    return 1;
}

/* gw._define_shared(name, bytes [, if_absent]): shared_dict() in configs; plugins' defaults. */
static int l_define(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    lua_Number size = luaL_checknumber(L, 2);
    if (size < 1024)
        return luaL_argerror(L, 2, "a shared dict needs at least 1k");
    mg_shared_define(name, (size_t)size, lua_toboolean(L, 3));
    return 0;
}

void mg_shared_register(lua_State *L, mg_vm_t *vm)
{
    static const luaL_Reg methods[] = {
        { "get", l_get }, { "set", l_set }, { "add", l_add }, { "replace", l_replace },
        { "incr", l_incr }, { "delete", l_delete }, { "ttl", l_ttl }, { "flush_all", l_flush_all },
        { "stats", l_stats }, { "token_bucket", l_token_bucket }, { NULL, NULL },
    };
    mg_lua_class(L, DICT_MT, methods, NULL);
    lua_newtable(L);              /* gw.shared */
    lua_newtable(L);              /* its metatable */
    lua_pushcfunction(L, l_index);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    lua_setfield(L, -2, "shared");
    lua_pushcfunction(L, l_define);
    lua_setfield(L, -2, "_define_shared");
}
