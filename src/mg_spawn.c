/*
 * mg_spawn — gw.spawn(fn, ...) / gw.wait(task): run functions concurrently
 * inside a request, e.g. several gw.http.request calls in parallel.
 *
 *   local a = gw.spawn(gw.http.request, { upstream = "users", path = "/u/1" })
 *   local b = gw.spawn(gw.http.request, { upstream = "orders", path = "/o/1" })
 *   local ra, rb = gw.wait(a), gw.wait(b)
 *
 * A spawned task is a child of the task that spawned it: it inherits its
 * trace id (so its logs carry it) and it is an entry in its parent's ledger,
 * so it ends when its parent ends: a child still running then is cancelled.
 * A child owns what it takes (its own ledger): a permit it did not release
 * goes back when it ends, returned, raised or cancelled with its parent.
 * Spawned on the VM's main thread (specs), the VM owns the child.
 * gw.wait returns what the function returned, or nil and "spawned task failed:
 * <error>" when it raised.
 */
#include <lauxlib.h>

#include "mg_lua.h"

#define SPAWN_MT "moongate.task"

typedef struct mg_spawn {
    mg_task_t task;
    mg_ledger_entry_t in_parent;  /* the parent's ledger (or the VM's): the child ends with it */
    int self_ref;                 /* keeps this userdata alive while the task holds it */
    int done, status, consumed;
    mg_wait_t *waiter;            /* gw.wait waiting for us (&join) */
    mg_wait_t join;
} mg_spawn_t;

static void drop(mg_spawn_t *s, int reusable)
{
    mg_vm_t *vm = s->task.vm;
    mg_ledger_remove(&s->in_parent);
    mg_task_release(&s->task, reusable);
    if (s->self_ref != LUA_NOREF) {
        luaL_unref(vm->L, LUA_REGISTRYINDEX, s->self_ref);
        s->self_ref = LUA_NOREF;
    }
}

/* Moves a finished child's results onto L; returns their count. */
static int take_results(mg_spawn_t *s, lua_State *L)
{
    lua_State *co = s->task.co;
    int n;
    if (s->status != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "spawned task failed: %s", lua_tostring(co, -1));
        n = 2;
    } else {
        n = lua_gettop(co);
        lua_checkstack(L, n + 1);
        lua_xmove(co, L, n);
    }
    s->consumed = 1;
    drop(s, s->status == 0);
    return n;
}

static void on_child_done(mg_task_t *t, int status)
{
    mg_spawn_t *s = (mg_spawn_t *)t;
    s->done = 1;
    s->status = status;
    if (s->waiter) {
        mg_wait_t *w = s->waiter;
        s->waiter = NULL;
        int n = take_results(s, w->co);
        mg_wait_wake(w, n);
    }
}

/* The parent ended (its ledger runs): a finished child is dropped, a running one cancelled. */
static void parent_ended(mg_ledger_entry_t *e)
{
    mg_spawn_t *s = mg_ledger_of(e, mg_spawn_t, in_parent);
    s->waiter = NULL;
    if (s->done) {
        drop(s, s->status == 0);
        return;
    }
    mg_task_cancel(&s->task); /* runs the child's own ledger: its children, its permits */
    luaL_unref(s->task.vm->L, LUA_REGISTRYINDEX, s->self_ref);
    s->self_ref = LUA_NOREF;
}

static int l_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    mg_vm_t *vm = mg_vm_of(L);
    int nargs = lua_gettop(L) - 1;
    mg_task_t *parent = mg_task_owner(L, "gw.spawn");
    mg_spawn_t *s = lua_newuserdata(L, sizeof(*s));
    memset(s, 0, sizeof(*s));
    luaL_getmetatable(L, SPAWN_MT);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    s->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    /* the child's own ledger (scope NULL) holds what it takes; the parent's holds the child */
    mg_ledger_add(parent ? &parent->ledger : &vm->ledger, &s->in_parent, parent_ended);
    if (parent) {
        s->task.trace_id = parent->trace_id;
        s->task.trace_flags = parent->trace_flags; /* its requests carry the parent's sampling decision */
        s->task.route = parent->route;
    }
    /* [handle, fn, args...]: fn and args go to the VM's main stack, where mg_task_start takes them */
    lua_insert(L, 1);
    if (L != vm->L)
        lua_xmove(L, vm->L, nargs + 1);
    mg_task_start(&s->task, vm, nargs, on_child_done, s);
    return 1; /* the handle */
}

static int l_wait(lua_State *L)
{
    mg_spawn_t *s = luaL_checkudata(L, 1, SPAWN_MT);
    if (s->consumed)
        return luaL_error(L, "gw.wait: this task's results were already taken");
    if (s->waiter)
        return luaL_error(L, "gw.wait: another coroutine is already waiting for this task");
    if (s->done)
        return take_results(s, L);
    memset(&s->join, 0, sizeof(s->join));
    s->join.what = MG_WAIT_CHILD;
    s->waiter = &s->join;
    return mg_wait_yield(L, &s->join);
}

static int l_gc(lua_State *L)
{
    mg_spawn_t *s = luaL_checkudata(L, 1, SPAWN_MT);
    /* only reachable once self_ref is gone: the task was released or cancelled */
    (void)s;
    return 0;
}

void mg_spawn_register(lua_State *L, mg_vm_t *vm)
{
    mg_lua_class(L, SPAWN_MT, NULL, l_gc);
    lua_pushcfunction(L, l_spawn);
    lua_setfield(L, -2, "spawn");
    lua_pushcfunction(L, l_wait);
    lua_setfield(L, -2, "wait");
}
