/*
 * mg_api — the gw.* functions implemented in C: waits (gw.sleep), clocks,
 * randomness and the log entry point. The Lua half lives in lua/moongate/gw.lua.
 */
#include <errno.h>
#include <lauxlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "mg_error.h"
#include "mg_log.h"
#include "mg_lua.h"
#include "mg_ws_lua.h"

#define VM(L) ((mg_vm_t *)lua_touserdata((L), lua_upvalueindex(1)))

/*
 * gw.sleep never returns before the time asked for, measured on the
 * monotonic clock. The loop's own clock is precise (mg_event_base_new); this
 * check covers a loop made otherwise (config checks, an embedding): a timer
 * that fires early is re-armed for the rest.
 */
static void sleep_fired(evutil_socket_t fd, short what, void *arg)
{
    mg_task_t *t = arg;
    uint64_t now = mg_now_us();
    if (now < t->sleep_due_us) {
        struct timeval tv = { 0, 0 };
        uint64_t left = t->sleep_due_us - now;
        tv.tv_sec = (time_t)(left / 1000000u);
        tv.tv_usec = (suseconds_t)(left % 1000000u);
        evtimer_add(&t->timer, &tv);
        return;
    }
    mg_wait_wake(&t->sleep_wait, 0);
}

static void sleep_cancel(mg_wait_t *w)
{
    mg_task_t *t = (mg_task_t *)(void *)((char *)w - offsetof(mg_task_t, sleep_wait));
    event_del(&t->timer);
}

/* gw.sleep(seconds): yields to the event loop; other requests run meanwhile. */
static int l_sleep(lua_State *L)
{
    double s = luaL_checknumber(L, 1);
    if (!(s >= 0) || s > 1e7)
        return luaL_argerror(L, 1, "seconds must be a non-negative number");
    struct timeval tv = mg_tv_from_s(s);
    mg_vm_t *vm = VM(L);
    mg_task_t *t = mg_task_current(L);
    /*
     * Not in a task (the VM's main thread in specs, or a coroutine of the
     * user's own, which mg_wait_yield refuses after cancelling): the timer
     * lives in this frame, which outlives the nested loop in mg_wait_yield.
     */
    mg_task_t local;
    mg_task_t *st = t ? t : &local;
    st->sleep_due_us = mg_now_us() + (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
    evtimer_assign(&st->timer, vm->base, sleep_fired, st);
    st->sleep_wait.cancel = sleep_cancel;
    st->sleep_wait.what = MG_WAIT_SLEEP;
    evtimer_add(&st->timer, &tv);
    int n = mg_wait_yield(L, &st->sleep_wait);
    if (!t)
        event_del(&local.timer);
    return n;
}

/* gw.now(): wall-clock seconds (float); fresh, since worker loops keep no time cache. */
static int l_now(lua_State *L)
{
    struct timeval tv;
    event_base_gettimeofday_cached(VM(L)->base, &tv);
    lua_pushnumber(L, (double)tv.tv_sec + tv.tv_usec / 1e6);
    return 1;
}

/* gw.monotonic_ms(): a monotonic clock for measuring intervals. */
static int l_monotonic_ms(lua_State *L)
{
    lua_pushnumber(L, (double)mg_now_us() / 1000.0);
    return 1;
}

/* gw.trace_id(): the trace id of the request running this coroutine, or nil. */
static int l_trace_id(lua_State *L)
{
    mg_task_t *t = mg_task_current(L);
    if (t && t->trace_id)
        lua_pushstring(L, t->trace_id);
    else
        lua_pushnil(L);
    return 1;
}

/* Fills buf with n bytes from the kernel's CSPRNG (getrandom(2), blocking only
 * until the pool is first initialised at boot). Returns 0, or -1 with errno. */
static int os_random(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t got = getrandom(p, n, 0);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

#define RANDOM_BYTES_MAX 65536

/* gw.random_bytes(n) -> n bytes from the OS CSPRNG (for secrets, tokens,
 * nonces), or nil, "random_bytes: <why>". math.random is not for secrets. */
static int l_random_bytes(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    if (n < 1 || n > RANDOM_BYTES_MAX)
        return luaL_argerror(L, 1, "n must be between 1 and 65536");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (lua_Integer left = n; left > 0;) {
        size_t k = left < LUAL_BUFFERSIZE ? (size_t)left : LUAL_BUFFERSIZE;
        if (os_random(luaL_prepbuffer(&b), k) < 0) {
            lua_pushnil(L); /* what the buffer left on the stack is dropped with the call */
            lua_pushfstring(L, "random_bytes: %s", strerror(errno));
            return 2;
        }
        luaL_addsize(&b, k);
        left -= (lua_Integer)k;
    }
    luaL_pushresult(&b);
    return 1;
}

void mg_api_seed_random(lua_State *L)
{
    uint64_t seed;
    if (os_random(&seed, sizeof(seed)) < 0) {
        /* no getrandom (very old kernel): still differ per process and VM */
        mg_log_warn(NULL, "getrandom failed (%s): math.random seeded from the clock", strerror(errno));
        seed = (uint64_t)mg_now_us() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)L;
    }
    lua_getglobal(L, "math");
    lua_getfield(L, -1, "randomseed");
    /* LuaJIT seeds from a double: keep 53 bits so every bit of it is random */
    lua_pushnumber(L, (double)(seed >> 11));
    lua_call(L, 1, 0);
    lua_pop(L, 1);
}

/* gw._log(level, message, fields_json): the trace id is found from the running coroutine. */
static int l_log(lua_State *L)
{
    int level = mg_log_level_parse(luaL_checkstring(L, 1));
    if (level < 0)
        return luaL_argerror(L, 1, "level must be debug, info, warn or error");
    size_t n;
    const char *msg = luaL_checklstring(L, 2, &n);
    const char *fields = luaL_optstring(L, 3, NULL);
    mg_task_t *t = mg_task_current(L);
    mg_log_write(level, t ? t->trace_id : NULL, fields, "%.*s", (int)n, msg);
    return 0;
}

/*
 * gw.errors: the error kinds (mg_error.h), name -> { status, grpc, message };
 * gw._error_marks: name -> the kind's mark (mg_error_of_mark), for gw.error.
 */
static void register_errors(lua_State *L)
{
    lua_createtable(L, 0, MG_ERR__COUNT);
    for (int i = 0; i < MG_ERR__COUNT; i++) {
        lua_pushlightuserdata(L, (void *)&mg_errors[i]);
        lua_setfield(L, -2, mg_errors[i].name);
    }
    lua_setfield(L, -2, "_error_marks");
    lua_createtable(L, 0, MG_ERR__COUNT);
    for (int i = 0; i < MG_ERR__COUNT; i++) {
        const mg_error_t *e = &mg_errors[i];
        lua_createtable(L, 0, 4);
        lua_pushstring(L, e->name);
        lua_setfield(L, -2, "name");
        lua_pushinteger(L, e->status);
        lua_setfield(L, -2, "status");
        lua_pushinteger(L, e->grpc);
        lua_setfield(L, -2, "grpc");
        lua_pushstring(L, e->message);
        lua_setfield(L, -2, "message");
        lua_setfield(L, -2, e->name);
    }
    lua_setfield(L, -2, "errors");
}

void mg_api_register(lua_State *L, mg_vm_t *vm, int spec)
{
    register_errors(L);
    static const luaL_Reg fns[] = {
        { "sleep", l_sleep },
        { "now", l_now },
        { "monotonic_ms", l_monotonic_ms },
        { "trace_id", l_trace_id },
        { "random_bytes", l_random_bytes },
        { "_log", l_log },
        { NULL, NULL },
    };
    for (const luaL_Reg *f = fns; f->name; f++) {
        lua_pushlightuserdata(L, vm);
        lua_pushcclosure(L, f->func, 1);
        lua_setfield(L, -2, f->name);
    }
    mg_tcp_register(L, vm);
    mg_spawn_register(L, vm);
    mg_shared_register(L, vm);
    mg_timer_register(L, vm);
    mg_sema_register(L, vm);
    mg_http_client_register(L, vm);
    mg_redis_register(L, vm, spec);
    mg_ws_lua_register(L, vm);
    if (spec) {
        mg_spec_register(L, vm);
        mg_tcp_register_listen(L, vm);
    }
}
