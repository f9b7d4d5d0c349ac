/*
 * mg_timer — gw.timer: background work in the worker, owned by the config
 * generation (its VM) that created it.
 *
 *   local t = gw.timer.every(5, function() ... end)   -- seconds; the function may yield
 *   gw.timer.at(0.5, fn, arg1, arg2)                 -- once
 *   t:cancel()
 *
 * Each run is a task of its own (no request, no trace id); a run that raises
 * is logged and, for `every`, the next run still happens. A periodic run does
 * not overlap the previous one: if it is still running, that tick is skipped.
 * A run owns what it takes (its task's ledger): a permit it did not release
 * goes back when the run ends, returned, raised or cancelled.
 * Timers are entries in their VM's ledger and end with it (worker shutdown;
 * with live reload, the generation): a run still going is cancelled then.
 */
#include <lauxlib.h>

#include "mg_log.h"
#include "mg_lua.h"

#define TIMER_MT "moongate.timer"

typedef struct mg_gwtimer {
    mg_vm_t *vm;
    struct event ev;
    struct timeval interval;
    int periodic;
    int fn_ref;                  /* { fn, args... } */
    int nargs;
    int self_ref;                /* keeps the handle alive while armed */
    int running, cancelled;
    mg_task_t task;
    mg_ledger_entry_t in_vm;     /* the VM's ledger: stopped with it */
} mg_gwtimer_t;

static void timer_release(mg_gwtimer_t *t)
{
    lua_State *L = t->vm->L;
    event_del(&t->ev);
    mg_ledger_remove(&t->in_vm);
    if (t->fn_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, t->fn_ref);
        t->fn_ref = LUA_NOREF;
    }
    if (t->self_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, t->self_ref);
        t->self_ref = LUA_NOREF;
    }
}

static void on_run_done(mg_task_t *task, int status)
{
    mg_gwtimer_t *t = task->owner;
    if (status != 0)
        mg_log_error(NULL, "gw.timer function failed: %s", lua_tostring(task->co, -1));
    mg_task_release(task, status == 0);
    t->running = 0;
    if (!t->periodic || t->cancelled)
        timer_release(t);
}

static void on_fire(evutil_socket_t fd, short what, void *arg)
{
    mg_gwtimer_t *t = arg;
    if (t->running)
        return; /* the previous run still waits on something: skip this tick */
    lua_State *L = t->vm->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->fn_ref);
    int tbl = lua_gettop(L);
    for (int i = 1; i <= t->nargs + 1; i++)
        lua_rawgeti(L, tbl, i);
    lua_remove(L, tbl);
    t->running = 1;
    mg_task_start(&t->task, t->vm, t->nargs, on_run_done, t);
}

/* The VM stops (its ledger runs): no more ticks, and a run still waiting is cancelled (its ledger runs). */
static void vm_stopped(mg_ledger_entry_t *e)
{
    mg_gwtimer_t *t = mg_ledger_of(e, mg_gwtimer_t, in_vm);
    event_del(&t->ev);
    t->cancelled = 1;
    if (t->running) {
        t->running = 0;
        mg_task_cancel(&t->task);
    }
}

static int start(lua_State *L, int periodic)
{
    double s = luaL_checknumber(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    if (!(s >= 0) || (periodic && s < 0.001))
        return luaL_argerror(L, 1, periodic ? "interval must be at least 0.001 s" : "delay must be >= 0");
    mg_vm_t *vm = mg_vm_of(L);
    int n = lua_gettop(L);
    mg_gwtimer_t *t = lua_newuserdata(L, sizeof(*t));
    memset(t, 0, sizeof(*t));
    t->vm = vm;
    t->periodic = periodic;
    t->nargs = n - 2;
    luaL_getmetatable(L, TIMER_MT);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    t->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_createtable(L, n - 1, 0);
    for (int i = 2; i <= n; i++) {
        lua_pushvalue(L, i);
        lua_rawseti(L, -2, i - 1);
    }
    t->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    t->interval = mg_tv_from_s(s);
    event_assign(&t->ev, vm->base, -1, periodic ? EV_PERSIST : 0, on_fire, t);
    event_add(&t->ev, &t->interval);
    mg_ledger_add(&vm->ledger, &t->in_vm, vm_stopped);
    return 1;
}

static int l_at(lua_State *L) { return start(L, 0); }
static int l_every(lua_State *L) { return start(L, 1); }

static int l_cancel(lua_State *L)
{
    mg_gwtimer_t *t = luaL_checkudata(L, 1, TIMER_MT);
    if (t->cancelled || t->fn_ref == LUA_NOREF)
        return 0;
    t->cancelled = 1;
    event_del(&t->ev);
    if (!t->running)
        timer_release(t);
    return 0;
}

void mg_timer_register(lua_State *L, mg_vm_t *vm)
{
    static const luaL_Reg methods[] = { { "cancel", l_cancel }, { NULL, NULL } };
    mg_lua_class(L, TIMER_MT, methods, NULL);
    lua_newtable(L);
    lua_pushcfunction(L, l_at);
    lua_setfield(L, -2, "at");
    lua_pushcfunction(L, l_every);
    lua_setfield(L, -2, "every");
    lua_setfield(L, -2, "timer");
}
