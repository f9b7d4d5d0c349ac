/*
 * gw.semaphore — the C semaphores (mg_sema) from Lua, for plugins.
 *
 *   local sem = gw.semaphore("reports", 5)      -- name, capacity (a new capacity applies from now)
 *   local ok, err = sem:acquire(weight, timeout [, max_queue])  -- yields; err: "timeout" | "busy"
 *   local ok = sem:try_acquire(weight)
 *   sem:release(weight)
 *   sem:stats() -> { capacity, in_use, queued, acquired, rejected, timed_out, longest_wait_ms }
 *   gw.semaphores() -> { [name] = stats, ... }
 *
 * Who owns a permit: the task that took it (mg_lua.h, "Ownership"). Each
 * (owner, semaphore) pair is one hold entry in the owner's ledger; the
 * owner's end gives back whatever is still held, however it ends. A request's
 * phases share the request's ledger (so limit-conn's permit, taken in access,
 * covers the upstream exchange); the log phase, a gw.timer run, init_worker
 * and a spawned task each have their own. An explicit release takes from the
 * caller's own holds only: releasing what it does not hold is an error, never
 * a silent theft of someone else's permit. Holds are allocated, not counted
 * against a fixed table: a task may hold any number of semaphores.
 *
 * Names starting with "upstream:" or "route:" are the config's (mg_sema.h)
 * and refused here.
 */
#include <lauxlib.h>
#include <math.h>

#include "mg_lua.h"

#define SEMA_MT "moongate.semaphore"

/* Permits of one semaphore held by one owner. */
typedef struct hold {
    mg_ledger_entry_t entry;
    mg_sema_t *sema;                    /* referenced while held */
    int64_t weight;
} hold_t;

/* The owner ended with permits still held: give them back. */
static void give_back(mg_ledger_entry_t *e)
{
    hold_t *h = mg_ledger_of(e, hold_t, entry);
    mg_sema_release(h->sema, h->weight);
    mg_sema_put(h->sema);
    free(h);
}

static hold_t *find_hold(mg_ledger_t *l, mg_sema_t *s)
{
    for (mg_ledger_entry_t *e = mg_ledger_next(l, NULL, give_back); e; e = mg_ledger_next(l, e, give_back)) {
        hold_t *h = mg_ledger_of(e, hold_t, entry);
        if (h->sema == s)
            return h;
    }
    return NULL;
}

/* Writes weight permits of s, just acquired, into the owner's ledger. */
static void record(mg_ledger_t *l, mg_sema_t *s, int64_t w)
{
    hold_t *h = find_hold(l, s);
    if (h) {
        h->weight += w;
        return;
    }
    h = mg_calloc(1, sizeof(*h));
    h->sema = s;
    h->weight = w;
    mg_sema_ref(s); /* the semaphore outlives every Lua handle while permits are held */
    mg_ledger_add(l, &h->entry, give_back);
}

static mg_sema_t *check(lua_State *L)
{
    mg_sema_t **sp = luaL_checkudata(L, 1, SEMA_MT);
    return *sp;
}

static int64_t weight_arg(lua_State *L, int idx)
{
    lua_Number w = luaL_optnumber(L, idx, 1);
    if (!(w >= 1) || floor(w) != w)
        luaL_argerror(L, idx, "weight must be a positive integer");
    return (int64_t)w;
}

static int l_try(lua_State *L)
{
    mg_sema_t *s = check(L);
    int64_t w = weight_arg(L, 2);
    mg_ledger_t *owner = mg_lua_ledger(L, "gw.semaphore:try_acquire"); /* raises before anything is taken */
    int ok = mg_sema_try(s, w);
    if (ok)
        record(owner, s, w);
    else
        mg_sema_count_rejected(s);
    lua_pushboolean(L, ok);
    return 1;
}

static void on_granted(mg_sema_waiter_t *sw)
{
    mg_task_t *t = sw->data;
    event_del(&t->sema_timer);
    lua_State *co = t->sema_wait.co;
    record(mg_task_scope(t), sw->sema, sw->weight);
    lua_pushboolean(co, 1);
    mg_wait_wake(&t->sema_wait, 1);
}

static void on_sema_timeout(evutil_socket_t fd, short what, void *arg)
{
    mg_task_t *t = arg;
    mg_sema_cancel(&t->sema_waiter, 1);
    lua_pushnil(t->sema_wait.co);
    lua_pushliteral(t->sema_wait.co, "timeout");
    mg_wait_wake(&t->sema_wait, 2);
}

/* The task was cancelled (deadline, client gone) while queued. */
static void on_cancel(mg_wait_t *w)
{
    mg_task_t *t = w->task;
    event_del(&t->sema_timer);
    mg_sema_cancel(&t->sema_waiter, 0);
}

static int l_acquire(lua_State *L)
{
    mg_sema_t *s = check(L);
    int64_t w = weight_arg(L, 2);
    double timeout = luaL_optnumber(L, 3, 0);
    lua_Number max_queue = luaL_optnumber(L, 4, 1e9);
    mg_vm_t *vm = mg_vm_of(L);
    mg_task_t *t = mg_task_owner(L, "gw.semaphore:acquire"); /* NULL: the VM's main thread */
    mg_ledger_t *owner = t ? mg_task_scope(t) : &vm->ledger;
    if (mg_sema_try(s, w)) {
        record(owner, s, w);
        lua_pushboolean(L, 1);
        return 1;
    }
    if (timeout <= 0 || !t || !vm->mailbox) {
        mg_sema_count_rejected(s);
        lua_pushnil(L);
        lua_pushliteral(L, "busy");
        return 2;
    }
    memset(&t->sema_waiter, 0, sizeof(t->sema_waiter));
    t->sema_waiter.mailbox = vm->mailbox;
    t->sema_waiter.on_grant = on_granted;
    t->sema_waiter.data = t;
    int rc = mg_sema_acquire(s, w, &t->sema_waiter, (int64_t)max_queue);
    if (rc == MG_OK) {
        record(owner, s, w);
        lua_pushboolean(L, 1);
        return 1;
    }
    if (rc == MG_DECLINED) {
        lua_pushnil(L);
        lua_pushliteral(L, "busy");
        return 2;
    }
    /* queued: on_granted records the permit for the task's owner */
    struct timeval tv = mg_tv_from_s(timeout);
    evtimer_assign(&t->sema_timer, vm->base, on_sema_timeout, t);
    evtimer_add(&t->sema_timer, &tv);
    t->sema_wait.cancel = on_cancel;
    t->sema_wait.what = MG_WAIT_SEMAPHORE;
    return mg_wait_yield(L, &t->sema_wait);
}

static int l_release(lua_State *L)
{
    mg_sema_t *s = check(L);
    int64_t w = weight_arg(L, 2);
    mg_ledger_t *owner = mg_lua_ledger(L, "gw.semaphore:release");
    hold_t *h = find_hold(owner, s);
    if (!h || h->weight < w)
        return luaL_error(L, "gw.semaphore %s: releasing %d permits but this task holds %d (a task "
                             "releases what it acquired; what a request's phases acquired went back "
                             "when its response ended)",
                          mg_sema_name(s), (int)w, h ? (int)h->weight : 0);
    h->weight -= w;
    mg_sema_release(s, w);
    if (h->weight == 0) {
        mg_ledger_remove(&h->entry);
        mg_sema_put(s);
        free(h);
    }
    return 0;
}

static void push_stats(lua_State *L, mg_sema_t *s)
{
    mg_sema_stats_t st;
    mg_sema_stats(s, &st);
    const struct { const char *name; double v; } fields[] = {
        { "capacity", (double)st.capacity }, { "in_use", (double)st.in_use },
        { "queued", (double)st.queued }, { "acquired", (double)st.acquired },
        { "rejected", (double)st.rejected }, { "timed_out", (double)st.timed_out },
        { "longest_wait_ms", (double)st.longest_wait_ms },
    };
    lua_createtable(L, 0, (int)mg_countof(fields));
    for (size_t i = 0; i < mg_countof(fields); i++) {
        lua_pushnumber(L, fields[i].v);
        lua_setfield(L, -2, fields[i].name);
    }
}

static int l_stats(lua_State *L)
{
    push_stats(L, check(L));
    return 1;
}

static int l_gc(lua_State *L)
{
    mg_sema_put(check(L));
    return 0;
}

static int l_new(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    lua_Number cap = luaL_checknumber(L, 2);
    /* the config's limits are the config's: Lua may neither resize nor take them */
    if (mg_sema_config_name(name))
        return luaL_error(L, "gw.semaphore(\"%s\"): names starting with \"upstream:\" or \"route:\" are "
                             "the config's limits (max_concurrency); give your semaphore a name of its own",
                          name);
    if (!(cap >= 1))
        return luaL_argerror(L, 2, "capacity must be >= 1");
    mg_sema_t **sp = lua_newuserdata(L, sizeof(*sp));
    *sp = mg_sema_get(name, (int64_t)cap);
    luaL_getmetatable(L, SEMA_MT);
    lua_setmetatable(L, -2);
    return 1;
}

static void add_stats(mg_sema_t *s, void *arg)
{
    lua_State *L = arg;
    push_stats(L, s);
    lua_setfield(L, -2, mg_sema_name(s));
}

static int l_all(lua_State *L)
{
    lua_newtable(L);
    mg_sema_each(add_stats, L);
    return 1;
}

void mg_sema_register(lua_State *L, mg_vm_t *vm)
{
    static const luaL_Reg methods[] = {
        { "acquire", l_acquire }, { "try_acquire", l_try }, { "release", l_release },
        { "stats", l_stats }, { NULL, NULL },
    };
    mg_lua_class(L, SEMA_MT, methods, l_gc);
    lua_pushcfunction(L, l_new);
    lua_setfield(L, -2, "semaphore");
    lua_pushcfunction(L, l_all);
    lua_setfield(L, -2, "semaphores");
}
