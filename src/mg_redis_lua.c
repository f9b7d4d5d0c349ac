/*
 * gw.redis — the config's named Redis pools (mg_redis) from Lua, in every
 * phase (rewrite, access, handlers, header_filter, body_filter, log, timers,
 * init_worker): every call yields to the event loop and never blocks it.
 *
 *   local red = gw.redis("main")                 -- raises when the config has no redis "main"
 *   local v, err, msg = red:get("k")             -- any command as a method: red:incr("n"), red:hset(...)
 *   local v, err, msg = red:call("SET", "k", 1, "PX", 500)
 *   local res, err, msg = red:pipeline({ { "INCR", "a" }, { "PEXPIRE", "a", 1000 } })  -- one round trip
 *   local S = gw.redis.script("return redis.call('INCRBY', KEYS[1], ARGV[1])")       -- once, at load
 *   local v, err, msg = red:eval(S, 1, "counter", 5)   -- EVALSHA, EVAL when Redis lacks it
 *
 * Replies: strings (bulk and status), numbers (integers), tables (arrays),
 * gw.null (a nil reply, = cjson.null). A failed call returns nil, a kind
 * (gw.errors: redis_refused, redis_timeout, redis_reset, redis_auth,
 * redis_error for an error reply) and a message. In a pipeline an error
 * reply is { false, "ERR ..." } in its slot, and the call itself fails only
 * when the connection does. The request's deadline bounds every call (the
 * deadline ends the request; the reply is then discarded when it comes).
 *
 * Arguments are strings or numbers (integers are sent without an exponent).
 * Commands a shared connection cannot carry raise an error before anything
 * is sent (see mg_redis_refuse): a programming error, like a bad argument,
 * never a `nil, kind` (those are Redis's failures).
 */
#include <ctype.h>
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <strings.h>

#include "mg_config.h"
#include "mg_csema.h"
#include "mg_lua.h"
#include "mg_redis.h"

#define REDIS_MT "moongate.redis"
#define SCRIPT_MT "moongate.redis_script"
#define MAX_ARGS 4096
#define MAX_DEPTH 16

typedef struct lredis {
    mg_redis_t *r;
    int owned;                     /* gw.redis.connect (specs): the handle owns the pool */
} lredis_t;

mg_redis_t *mg_redis_lua_check(lua_State *L, int idx)
{
    lredis_t *h = luaL_checkudata(L, idx, REDIS_MT);
    return h->r;
}

/* ---- arguments ---- */

typedef struct args {
    int n, cap;
    const char **argv;
    size_t *lens;
    char (*num)[32];
    const char *sv[16];
    size_t sl[16];
    char sn[16][32];
} args_t;

static void args_init(args_t *a)
{
    a->n = 0;
    a->cap = 16;
    a->argv = a->sv;
    a->lens = a->sl;
    a->num = a->sn;
}

static void args_free(args_t *a)
{
    if (a->argv != a->sv) {
        free(a->argv);
        free(a->lens);
        free(a->num);
    }
}

/* Writes v in decimal (no exponent), NUL-terminated; returns the length. Cheaper than snprintf on the hot path. */
static int fmt_int(char *out, long long v)
{
    char tmp[24];
    int n = 0, neg = v < 0;
    unsigned long long u = neg ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    int len = 0;
    if (neg)
        out[len++] = '-';
    while (n)
        out[len++] = tmp[--n];
    out[len] = '\0';
    return len;
}

/* Appends the value at idx: a string or a number. Returns 0, or -1 for another type (or too many). */
static int args_push(lua_State *L, args_t *a, int idx)
{
    if (a->n == a->cap) {
        if (a->cap >= MAX_ARGS)
            return -1;
        int cap = a->cap * 4;
        const char **argv = mg_alloc(sizeof(*argv) * (size_t)cap);
        size_t *lens = mg_alloc(sizeof(*lens) * (size_t)cap);
        char(*num)[32] = mg_alloc(sizeof(*num) * (size_t)cap);
        memcpy(argv, a->argv, sizeof(*argv) * (size_t)a->n);
        memcpy(lens, a->lens, sizeof(*lens) * (size_t)a->n);
        memcpy(num, a->num, sizeof(*num) * (size_t)a->n);
        for (int i = 0; i < a->n; i++) /* numbers already formatted point into the old buffer */
            if (a->argv[i] == a->num[i])
                argv[i] = num[i];
        args_free(a);
        a->argv = argv;
        a->lens = lens;
        a->num = num;
        a->cap = cap;
    }
    int t = lua_type(L, idx);
    if (t == LUA_TNUMBER) {
        lua_Number v = lua_tonumber(L, idx);
        int n;
        if (v == floor(v) && fabs(v) < 9007199254740992.0)
            n = fmt_int(a->num[a->n], (long long)v); /* INCRBY takes no "1e+15" */
        else
            n = snprintf(a->num[a->n], 32, "%.17g", v);
        a->argv[a->n] = a->num[a->n];
        a->lens[a->n] = (size_t)n;
    } else if (t == LUA_TSTRING) {
        a->argv[a->n] = lua_tolstring(L, idx, &a->lens[a->n]);
    } else {
        return -1;
    }
    a->n++;
    return 0;
}

static int bad_arg(lua_State *L, int idx, int pos)
{
    return luaL_error(L, "gw.redis: argument %d must be a string or a number, got %s", pos,
                      lua_typename(L, lua_type(L, idx)));
}

/* ---- replies ---- */

static void push_reply(lua_State *co, const redisReply *r, int depth)
{
    luaL_checkstack(co, 4, "redis reply");
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        lua_pushlstring(co, r->str, r->len);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushnumber(co, (lua_Number)r->integer);
        break;
    case REDIS_REPLY_NIL:
        lua_pushlightuserdata(co, NULL); /* gw.null */
        break;
    case REDIS_REPLY_ERROR:
        lua_createtable(co, 2, 0);
        lua_pushboolean(co, 0);
        lua_rawseti(co, -2, 1);
        lua_pushlstring(co, r->str, r->len);
        lua_rawseti(co, -2, 2);
        break;
    case REDIS_REPLY_ARRAY:
        lua_createtable(co, (int)r->elements, 0);
        for (size_t i = 0; i < r->elements; i++) {
            if (depth >= MAX_DEPTH)
                lua_pushliteral(co, "(nested too deep)");
            else
                push_reply(co, r->element[i], depth + 1);
            lua_rawseti(co, -2, (int)i + 1);
        }
        break;
    default:
        lua_pushnil(co);
    }
}

/* One Lua call (a command, a pipeline, a script) waiting for its replies. */
typedef struct lcall {
    mg_wait_t wait;
    lua_State *co;
    mg_rcall_t *rc;
    int frame;                     /* waiting on the main thread: the calling frame frees us */
    int pipeline;
    int tbl;                       /* the pipeline's results table on co, or 0 */
    int pushed;                    /* a single command's value is on co */
    const mg_error_t *kind;
    char msg[200];
} lcall_t;

static void lcall_cancel(mg_wait_t *w)
{
    lcall_t *lc = (lcall_t *)w;
    if (lc->rc)
        mg_rcall_abandon(lc->rc);
    free(lc);
}

static void on_lreply(mg_rcall_t *c, int i, const redisReply *reply, const mg_error_t *kind, const char *msg)
{
    lcall_t *lc = c->data;
    lua_State *co = lc->co;
    if (!reply) {
        if (!lc->kind) {
            lc->kind = kind;
            snprintf(lc->msg, sizeof(lc->msg), "%s", msg);
        }
        return;
    }
    if (lc->pipeline) {
        if (!lc->tbl) {
            lua_createtable(co, c->n, 0);
            lc->tbl = lua_gettop(co);
        }
        push_reply(co, reply, 0);
        lua_rawseti(co, lc->tbl, i + 1);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        lc->kind = mg_redis_reply_kind(reply);
        snprintf(lc->msg, sizeof(lc->msg), "%.*s", (int)reply->len, reply->str);
        return;
    }
    push_reply(co, reply, 0);
    lc->pushed = 1;
}

static void on_ldone(mg_rcall_t *c)
{
    lcall_t *lc = c->data;
    lua_State *co = lc->co;
    lc->rc = NULL;
    int nret = 1;
    if (lc->kind) {
        if (lc->tbl)
            lua_settop(co, lc->tbl - 1);
        else if (lc->pushed)
            lua_pop(co, 1);
        lua_pushnil(co);
        lua_pushstring(co, lc->kind->name);
        lua_pushstring(co, lc->msg);
        nret = 3;
    }
    if (lc->frame) {
        mg_wait_wake(&lc->wait, nret); /* the frame in mg_wait_yield reads it, then frees lc */
        return;
    }
    mg_wait_wake(&lc->wait, nret);
    free(lc);
}

/* Sends cmds and yields until every reply is in. Returns the Lua results. */
static int send_and_wait(lua_State *L, mg_redis_t *r, const mg_rcmd_t *cmds, int n, int pipeline)
{
    lcall_t *lc = mg_calloc(1, sizeof(*lc));
    lc->co = L;
    lc->pipeline = pipeline;
    lc->frame = mg_task_current(L) == NULL;
    lc->wait.cancel = lcall_cancel;
    lc->wait.what = MG_WAIT_REDIS;
    const mg_error_t *kind;
    char msg[160];
    lc->rc = mg_redis_send(r, cmds, n, on_lreply, on_ldone, lc, &kind, msg);
    if (!lc->rc) {
        free(lc);
        lua_pushnil(L);
        lua_pushstring(L, kind->name);
        lua_pushstring(L, msg);
        return 3;
    }
    if (!lc->frame)
        return mg_wait_yield(L, &lc->wait);
    int nret = mg_wait_yield(L, &lc->wait); /* raises (after lcall_cancel) in a coroutine of the user's */
    free(lc);
    return nret;
}

static int call_with(lua_State *L, mg_redis_t *r, int first)
{
    args_t a;
    args_init(&a);
    int top = lua_gettop(L);
    for (int i = first; i <= top; i++)
        if (args_push(L, &a, i) < 0) {
            args_free(&a);
            return bad_arg(L, i, i - first + 1);
        }
    if (a.n == 0) {
        args_free(&a);
        return luaL_error(L, "gw.redis: a command name is needed");
    }
    const char *why = mg_redis_refuse(a.argv[0], a.lens[0], 0);
    if (why) {
        char name[24];
        size_t k;
        for (k = 0; k < a.lens[0] && k < sizeof(name) - 1; k++)
            name[k] = (char)toupper((unsigned char)a.argv[0][k]);
        name[k] = '\0';
        lua_pushfstring(L, "gw.redis: %s is refused: %s", name, why);
        args_free(&a);
        return lua_error(L);
    }
    mg_rcmd_t cmd = { NULL, a.n, a.argv, a.lens };
    int n = send_and_wait(L, r, &cmd, 1, 0);
    args_free(&a);
    return n;
}

/* red:call(cmd, ...) */
static int l_call(lua_State *L) { return call_with(L, mg_redis_lua_check(L, 1), 2); }

/* red:<command>(...): the command name is the upvalue */
static int l_command(lua_State *L)
{
    mg_redis_t *r = mg_redis_lua_check(L, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 2);
    return call_with(L, r, 2);
}

static mg_redis_script_t *check_script(lua_State *L, int idx)
{
    mg_redis_script_t **sp = luaL_checkudata(L, idx, SCRIPT_MT);
    return *sp;
}

static int is_script(lua_State *L, int idx)
{
    if (!lua_getmetatable(L, idx))
        return 0;
    luaL_getmetatable(L, SCRIPT_MT);
    int eq = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return eq;
}

/* red:eval(script, numkeys, keys..., args...): a gw.redis.script (EVALSHA/EVAL) or a source string (EVAL) */
static int l_eval(lua_State *L)
{
    mg_redis_t *r = mg_redis_lua_check(L, 1);
    if (lua_type(L, 2) == LUA_TSTRING) {
        lua_pushliteral(L, "EVAL");
        lua_insert(L, 2);
        return call_with(L, r, 2);
    }
    mg_redis_script_t *s = check_script(L, 2);
    luaL_checknumber(L, 3);
    args_t a;
    args_init(&a);
    for (int i = 3; i <= lua_gettop(L); i++)
        if (args_push(L, &a, i) < 0) {
            args_free(&a);
            return bad_arg(L, i, i - 2);
        }
    mg_rcmd_t cmd = { s, a.n, a.argv, a.lens };
    int n = send_and_wait(L, r, &cmd, 1, 0);
    args_free(&a);
    return n;
}

/* red:pipeline({ { cmd, ... }, { script, numkeys, ... }, ... }) -> { reply, ... } in one round trip */
static int l_pipeline(lua_State *L)
{
    mg_redis_t *r = mg_redis_lua_check(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    int n = (int)lua_objlen(L, 2);
    if (n == 0) {
        lua_newtable(L);
        return 1;
    }
    if (n > MAX_ARGS)
        return luaL_error(L, "gw.redis: a pipeline of more than %d commands", MAX_ARGS);
    args_t *as = mg_calloc((size_t)n, sizeof(args_t));
    mg_rcmd_t *cmds = mg_calloc((size_t)n, sizeof(mg_rcmd_t));
    int multi = 0;
    const char *why = NULL;
    char what[64] = "";
    for (int i = 0; i < n && !why; i++) {
        lua_rawgeti(L, 2, i + 1);
        int e = lua_gettop(L);
        args_init(&as[i]);
        if (!lua_istable(L, e)) {
            why = "each entry must be a table { \"CMD\", args... }";
            lua_pop(L, 1);
            break;
        }
        int m = (int)lua_objlen(L, e);
        int first = 1;
        lua_rawgeti(L, e, 1);
        if (is_script(L, -1)) {
            cmds[i].script = check_script(L, -1);
            first = 2;
        }
        lua_pop(L, 1);
        for (int k = first; k <= m && !why; k++) {
            lua_rawgeti(L, e, k);
            if (args_push(L, &as[i], lua_gettop(L)) < 0) /* a string stays alive in its entry table */
                why = "arguments must be strings or numbers";
            lua_pop(L, 1);
        }
        if (why) {
            snprintf(what, sizeof(what), "entry %d", i + 1);
            lua_pop(L, 1);
            break;
        }
        lua_pop(L, 1);
        if (as[i].n == 0) {
            why = "an entry has no command";
            break;
        }
        if (!cmds[i].script) {
            why = mg_redis_refuse(as[i].argv[0], as[i].lens[0], 1);
            snprintf(what, sizeof(what), "%.*s", (int)(as[i].lens[0] < 40 ? as[i].lens[0] : 40), as[i].argv[0]);
            if (!why && as[i].lens[0] == 5 && strncasecmp(as[i].argv[0], "multi", 5) == 0)
                multi++;
            else if (!why && (as[i].lens[0] == 4 && strncasecmp(as[i].argv[0], "exec", 4) == 0))
                multi--;
            else if (!why && (as[i].lens[0] == 7 && strncasecmp(as[i].argv[0], "discard", 7) == 0))
                multi--;
            if (multi < 0 || multi > 1)
                why = "MULTI and EXEC/DISCARD must pair up within the pipeline";
        }
        cmds[i].argc = as[i].n;
        cmds[i].argv = as[i].argv;
        cmds[i].argvlen = as[i].lens;
    }
    if (!why && multi != 0)
        why = "a MULTI without its EXEC: a transaction must be sent whole";
    int nret = 0;
    if (why)
        lua_pushfstring(L, "gw.redis pipeline: %s%s%s", what[0] ? what : "", what[0] ? ": " : "", why);
    else
        nret = send_and_wait(L, r, cmds, n, 1); /* may be lua_yield's value: returned as it is */
    for (int i = 0; i < n; i++)
        args_free(&as[i]);
    free(as);
    free(cmds);
    if (why)
        return lua_error(L);
    return nret;
}

/* red:fallback(limit, policy, kind, msg): a limit applied its on_redis_error policy (counted, logged per interval) */
static int l_fallback(lua_State *L)
{
    mg_redis_t *r = mg_redis_lua_check(L, 1);
    const char *limit = luaL_checkstring(L, 2);
    const char *policy = luaL_checkstring(L, 3);
    const mg_error_t *kind = mg_error_by_name(luaL_checkstring(L, 4));
    if (!kind)
        return luaL_argerror(L, 4, "an error kind (gw.errors)");
    mg_redis_fallback(r, limit, policy, kind, luaL_optstring(L, 5, NULL));
    return 0;
}

/* red:conf() -> { name, address, nodes, prefix, db } */
static int l_conf(lua_State *L)
{
    const mg_redis_conf_t *c = mg_redis_conf(mg_redis_lua_check(L, 1));
    lua_createtable(L, 0, 5);
    lua_pushstring(L, c->name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, c->address);
    lua_setfield(L, -2, "address");
    lua_pushinteger(L, c->nodes);
    lua_setfield(L, -2, "nodes");
    lua_pushstring(L, c->prefix);
    lua_setfield(L, -2, "prefix");
    lua_pushinteger(L, c->db);
    lua_setfield(L, -2, "db");
    return 1;
}

/*
 * The methods table's __index (handles index the methods table itself, a
 * plain lookup the JIT compiles): a name that is no method becomes a
 * command method, kept in the table for the next time.
 */
static int l_index(lua_State *L)
{
    if (lua_type(L, 2) != LUA_TSTRING)
        return 0;
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, l_command, 1);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -2);
    lua_rawset(L, 1);
    return 1;
}

static int l_gc(lua_State *L)
{
    lredis_t *h = luaL_checkudata(L, 1, REDIS_MT);
    if (h->owned && h->r) {
        mg_redis_stop(h->r);
        mg_redis_unref(h->r);
    }
    h->r = NULL;
    return 0;
}

static void push_handle(lua_State *L, mg_redis_t *r, int owned)
{
    lredis_t *h = lua_newuserdata(L, sizeof(*h));
    h->r = r;
    h->owned = owned;
    luaL_getmetatable(L, REDIS_MT);
    lua_setmetatable(L, -2);
}

/*
 * gw._redis(name): the generation's pool (gw.redis caches the handles per
 * name), or nil and why not: gw.redis raises it at its caller's line (the
 * config's own file:line at load).
 */
static int l_get(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    mg_vm_t *vm = mg_vm_of(L);
    if (!vm->gen || !((mg_gen_t *)vm->gen)->redis) { /* the config is running: its blocks become pools after it */
        lua_pushnil(L);
        lua_pushfstring(L, "gw.redis(\"%s\"): no Redis pool exists while the config loads (they are made from its "
                           "redis blocks once it has run): call gw.redis in a handler, a plugin's phase, a timer or "
                           "init_worker",
                        name);
        return 2;
    }
    mg_redis_t *r = mg_gen_redis(vm->gen, name);
    if (!r) {
        lua_pushnil(L);
        lua_pushfstring(L, "gw.redis: no redis named '%s' in the config (redis \"%s\" { address = ... })", name, name);
        return 2;
    }
    push_handle(L, r, 0);
    return 1;
}

/* gw.redis.script(source): kept for the VM's life, one object per source */
static int l_script(lua_State *L)
{
    size_t len;
    const char *src = luaL_checklstring(L, 1, &len);
    lua_getfield(L, LUA_REGISTRYINDEX, "moongate.redis_scripts");
    lua_pushvalue(L, 1);
    lua_rawget(L, -2);
    if (!lua_isnil(L, -1))
        return 1;
    lua_pop(L, 1);
    mg_redis_script_t **sp = lua_newuserdata(L, sizeof(*sp));
    *sp = mg_redis_script_new(src, len);
    luaL_getmetatable(L, SCRIPT_MT);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, -2);
    lua_rawset(L, -4);
    return 1;
}

static int l_script_index(lua_State *L)
{
    mg_redis_script_t *s = check_script(L, 1);
    if (strcmp(luaL_checkstring(L, 2), "sha") == 0) {
        lua_pushstring(L, s->sha);
        return 1;
    }
    return 0;
}

static int l_script_gc(lua_State *L)
{
    mg_redis_script_t **sp = luaL_checkudata(L, 1, SCRIPT_MT);
    mg_redis_script_free(*sp);
    *sp = NULL;
    return 0;
}

static uint32_t opt_ms(lua_State *L, int t, const char *k, uint32_t dflt)
{
    lua_getfield(L, t, k);
    uint32_t v = lua_isnumber(L, -1) ? (uint32_t)lua_tonumber(L, -1) : dflt;
    lua_pop(L, 1);
    return v;
}

/* gw.redis.connect{ address = "127.0.0.1:6379", password =, db =, connect_ms =, command_ms = } (specs only) */
static int l_connect(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    mg_redis_conf_t c;
    memset(&c, 0, sizeof(c));
    c.name = (char *)"spec";
    lua_getfield(L, 1, "address");
    c.address = (char *)luaL_checkstring(L, -1);
    char err[300];
    if (mg_redis_parse_address(&c, c.address, err, sizeof(err)) != MG_OK)
        return luaL_error(L, "gw.redis.connect: %s", err);
    lua_getfield(L, 1, "password");
    c.password = (char *)lua_tostring(L, -1);
    c.db = (int)opt_ms(L, 1, "db", 0);
    c.size = 1;
    c.connect_ms = opt_ms(L, 1, "connect_ms", 1000);
    c.command_ms = opt_ms(L, 1, "command_ms", 2000);
    c.nodes = 1;
    mg_redis_t *r = mg_redis_new(&c, mg_vm_of(L)->base);
    free(c.host);
    free(c.unix_path);
    push_handle(L, r, 1);
    return 1;
}

void mg_redis_register(lua_State *L, mg_vm_t *vm, int spec)
{
    static const luaL_Reg methods[] = {
        { "call", l_call }, { "eval", l_eval }, { "pipeline", l_pipeline }, { "fallback", l_fallback },
        { "conf", l_conf }, { "semaphore", mg_csema_lua_new }, { NULL, NULL },
    };
    luaL_newmetatable(L, REDIS_MT);
    lua_newtable(L);
    luaL_register(L, NULL, methods);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, l_index);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);

    luaL_newmetatable(L, SCRIPT_MT);
    lua_pushcfunction(L, l_script_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_script_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, "moongate.redis_scripts");

    mg_csema_register(L);

    lua_pushcfunction(L, l_get);
    lua_setfield(L, -2, "_redis");
    lua_pushcfunction(L, l_script);
    lua_setfield(L, -2, "_redis_script");
    if (spec) {
        lua_pushcfunction(L, l_connect);
        lua_setfield(L, -2, "_redis_connect");
    }
    mg_unused(vm);
}
