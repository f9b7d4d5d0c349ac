/*
 * mg_lua — see mg_lua.h.
 */
#include "mg_lua.h"

#include <glob.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>

#include "mg_embedded_lua.h"
#include "mg_log.h"
#include "mg_trace.h"
#include "mg_upstream.h"

static const char VM_KEY = 'v';

void mg_lua_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc)
{
    luaL_newmetatable(L, name);
    lua_newtable(L);
    if (methods)
        luaL_register(L, NULL, methods);
    lua_setfield(L, -2, "__index");
    if (gc) {
        lua_pushcfunction(L, gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
}

int mg_vm_ref(mg_vm_t *vm)
{
    if (vm->nfree_refs == 0)
        return luaL_ref(vm->L, LUA_REGISTRYINDEX);
    int ref = vm->free_refs[--vm->nfree_refs];
    lua_rawseti(vm->L, LUA_REGISTRYINDEX, ref);
    return ref;
}

void mg_vm_unref(mg_vm_t *vm, int ref)
{
    if (vm->nfree_refs == (int)mg_countof(vm->free_refs)) {
        luaL_unref(vm->L, LUA_REGISTRYINDEX, ref);
        return;
    }
    lua_pushboolean(vm->L, 0);
    lua_rawseti(vm->L, LUA_REGISTRYINDEX, ref);
    vm->free_refs[vm->nfree_refs++] = ref;
}

mg_vm_t *mg_vm_of(lua_State *L)
{
    lua_pushlightuserdata(L, (void *)&VM_KEY);
    lua_rawget(L, LUA_REGISTRYINDEX);
    mg_vm_t *vm = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return vm;
}

/* package.loaders entry: modules embedded from lua/ at build time. */
static int embedded_loader(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    for (const mg_embedded_lua_t *m = mg_embedded_lua; m->name; m++) {
        if (strcmp(m->name, name) != 0)
            continue;
        char chunkname[256];
        snprintf(chunkname, sizeof(chunkname), "@%s", m->file);
        if (luaL_loadbuffer(L, (const char *)m->src, m->len, chunkname) != 0)
            return lua_error(L);
        return 1;
    }
    lua_pushfstring(L, "\n\tno embedded module '%s'", name);
    return 1;
}

static int l_glob(lua_State *L)
{
    const char *pattern = luaL_checkstring(L, 1);
    glob_t g;
    lua_newtable(L);
    if (glob(pattern, 0, NULL, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc; i++) {
            lua_pushstring(L, g.gl_pathv[i]);
            lua_rawseti(L, -2, (int)i + 1);
        }
        globfree(&g);
    }
    return 1;
}

/*
 * config_check.frame(dsl_sources) -> file, line: the first frame up the stack
 * whose source is not one of the DSL's (a set of source names), or nothing.
 * In C because debug.getinfo builds a table per call: a 10,000-route config
 * asks 10,000 times, and that garbage made the collector walk the growing
 * config again and again.
 */
static int l_config_frame(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Debug ar;
    for (int level = 1; level < 64 && lua_getstack(L, level, &ar); level++) {
        if (!lua_getinfo(L, "Sl", &ar) || strcmp(ar.what, "C") == 0)
            continue;
        lua_pushstring(L, ar.source);
        lua_rawget(L, 1);
        int dsl = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (dsl)
            continue;
        lua_pushstring(L, ar.source[0] == '@' ? ar.source + 1 : ar.source);
        lua_pushinteger(L, ar.currentline);
        return 2;
    }
    return 0;
}

/* Calls require(name) and leaves the module on the stack; returns 0 or sets err. */
static int require_module(lua_State *L, const char *name, char *err, size_t errlen)
{
    lua_getglobal(L, "require");
    lua_pushstring(L, name);
    if (lua_pcall(L, 1, 1, 0) != 0) {
        snprintf(err, errlen, "loading %s: %s", name, lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}

mg_vm_t *mg_vm_new(struct event_base *base, void *worker, int spec, char *err, size_t errlen)
{
    lua_State *L = luaL_newstate();
    if (!L) {
        snprintf(err, errlen, "cannot create a Lua VM");
        return NULL;
    }
    luaL_openlibs(L);
    mg_api_seed_random(L);
    mg_vm_t *vm = mg_calloc(1, sizeof(*vm));
    vm->L = L;
    vm->base = base;
    vm->worker = worker;
    lua_pushlightuserdata(L, (void *)&VM_KEY);
    lua_pushlightuserdata(L, vm);
    lua_rawset(L, LUA_REGISTRYINDEX);

    /* embedded modules come second, right after package.preload */
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaders");
    int n = (int)lua_objlen(L, -1);
    for (int i = n; i >= 2; i--) {
        lua_rawgeti(L, -1, i);
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushcfunction(L, embedded_loader);
    lua_rawseti(L, -2, 2);
    lua_pop(L, 2);

    static const char *const keys[MG_KEY_COUNT] = {
        [MG_KEY_R] = "_r", [MG_KEY_ROUTE] = "route",
        [MG_KEY_RESPONSE] = "response", [MG_KEY_HEADERS] = "headers", [MG_KEY_STEP] = "_step",
    };
    for (int i = 0; i < MG_KEY_COUNT; i++) {
        lua_pushstring(L, keys[i]);
        vm->key_ref[i] = luaL_ref(L, LUA_REGISTRYINDEX);
    }

    /* coroutine -> task, weak keys so a dropped coroutine is collected */
    lua_newtable(L);
    lua_newtable(L);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    vm->tasks_ref = luaL_ref(L, LUA_REGISTRYINDEX);

    lua_newtable(L);
    mg_api_register(L, vm, spec);
    lua_setglobal(L, "gw");

    /* MOONGATE_JIT_V=file: LuaJIT's trace log (jit.v), to see what compiles and what aborts */
    if (getenv("MOONGATE_JIT_V")) {
        static const char jitv[] = "local ok, v = pcall(require, 'jit.v') "
                                   "if ok then v.start(os.getenv('MOONGATE_JIT_V')) end";
        if (luaL_loadbuffer(L, jitv, sizeof(jitv) - 1, "=jit.v") == 0)
            lua_pcall(L, 0, 0, 0);
        else
            lua_pop(L, 1);
    }

    if (require_module(L, "moongate.gw", err, errlen) < 0)
        goto fail;
    lua_getfield(L, -1, "json");
    lua_getfield(L, -1, "encode");
    vm->json_encode_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 2);
    if (require_module(L, "moongate.ctx", err, errlen) < 0)
        goto fail;
    lua_getfield(L, -1, "mt");
    vm->ctx_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);
    if (require_module(L, "moongate.plugins", err, errlen) < 0)
        goto fail;
    lua_getfield(L, -1, "run");
    vm->plugins_run_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "filter_upstream_head");
    vm->plugins_filter_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "filter_upstream_chunk");
    vm->plugins_chunk_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "filter_whole");
    vm->plugins_whole_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "log");
    vm->plugins_log_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushcfunction(L, embedded_loader); /* plugins are found there, never through require's path */
    lua_setfield(L, -2, "embedded");
    lua_pop(L, 1);
    if (require_module(L, "moongate.config_check", err, errlen) < 0)
        goto fail;
    lua_pushcfunction(L, l_config_frame);
    lua_setfield(L, -2, "frame");
    lua_pop(L, 1);
    if (require_module(L, "moongate.config", err, errlen) < 0)
        goto fail;
    lua_pushcfunction(L, l_glob);
    lua_setfield(L, -2, "glob");
    lua_pop(L, 1);
    return vm;
fail:
    lua_close(L);
    free(vm);
    return NULL;
}

/* A task nothing else owns (init_worker, a spec's gw.process.task): the VM's. */
typedef struct bg_task {
    mg_task_t task;
    mg_ledger_entry_t in_vm;            /* cancelled by mg_vm_stop if still running */
    void (*on_fail)(const char *traceback);
} bg_task_t;

static void bg_done(mg_task_t *t, int status)
{
    bg_task_t *b = (bg_task_t *)t;
    if (status != 0 && b->on_fail) {
        const char *tb = lua_tostring(t->co, -1);
        b->on_fail(tb ? tb : "?");
    }
    mg_ledger_remove(&b->in_vm);
    mg_task_release(t, status == 0);
    free(b);
}

static void bg_stop(mg_ledger_entry_t *e)
{
    bg_task_t *b = mg_ledger_of(e, bg_task_t, in_vm);
    mg_task_cancel(&b->task);
    free(b);
}

void mg_vm_task_start(mg_vm_t *vm, int nargs, void (*on_fail)(const char *traceback))
{
    bg_task_t *b = mg_calloc(1, sizeof(*b));
    b->on_fail = on_fail;
    mg_ledger_add(&vm->ledger, &b->in_vm, bg_stop); /* before the start: it may finish at once */
    mg_task_start(&b->task, vm, nargs, bg_done, NULL);
}

static void init_worker_failed(const char *traceback)
{
    mg_log_error(NULL, "init_worker failed: %s", traceback);
}

void mg_plugins_init_worker(mg_vm_t *vm)
{
    lua_State *L = vm->L;
    lua_getglobal(L, "require");
    lua_pushliteral(L, "moongate.plugins");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "init_worker");
    lua_remove(L, -2);
    mg_vm_task_start(vm, 0, init_worker_failed);
}

struct event_base *mg_event_base_new(void)
{
    /*
     * The cost, measured on a loop pass of one read, one write and four
     * timer adds (1.39 us): +0.28 us for the precise clock (libevent then
     * arms a timerfd each pass), +0.10 us more without the time cache (a
     * vDSO clock read per timer add and per pass). wrk against a hello route
     * shows no difference beyond noise; 1 ms sleeps take 1.1 ms instead of
     * up to a tick.
     * NOLOCK: a worker's loop is single-threaded (other threads only write
     * to its eventfds).
     */
    struct event_config *ec = event_config_new();
    if (!ec)
        return NULL;
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK | EVENT_BASE_FLAG_PRECISE_TIMER |
                                  EVENT_BASE_FLAG_NO_CACHE_TIME);
    struct event_base *base = event_base_new_with_config(ec);
    event_config_free(ec);
    return base;
}

void mg_vm_stop(mg_vm_t *vm)
{
    if (vm->stopped)
        return;
    vm->stopped = 1;
    mg_ledger_run(&vm->ledger);
    for (int i = 0; i < vm->nadhoc; i++)
        mg_upstream_free(&vm->adhoc[i]);
}

void mg_vm_free(mg_vm_t *vm)
{
    if (!vm)
        return;
    mg_vm_stop(vm);
    lua_close(vm->L);
    free(vm->adhoc);
    free(vm);
}

mg_task_t *mg_task_current(lua_State *L)
{
    mg_vm_t *vm = mg_vm_of(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->tasks_ref);
    lua_pushthread(L);
    lua_rawget(L, -2);
    mg_task_t *t = lua_touserdata(L, -1);
    lua_pop(L, 2);
    return t;
}

mg_task_t *mg_task_owner(lua_State *L, const char *what)
{
    mg_task_t *t = mg_task_current(L);
    if (t)
        return t;
    int main_thread = lua_pushthread(L);
    lua_pop(L, 1);
    if (!main_thread)
        luaL_error(L, "%s: call it from a handler, a plugin phase, a timer or a spawned task, not from a "
                      "coroutine of your own (nothing would give back what it takes)", what);
    return NULL;
}

mg_ledger_t *mg_lua_ledger(lua_State *L, const char *what)
{
    mg_task_t *t = mg_task_owner(L, what);
    return t ? mg_task_scope(t) : &mg_vm_of(L)->ledger;
}

static void tasks_set(mg_vm_t *vm, mg_task_t *t, int present)
{
    lua_State *L = vm->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->tasks_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->co_ref);
    if (present)
        lua_pushlightuserdata(L, t);
    else
        lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pop(L, 1);
}

static void task_resume(mg_task_t *t, int nargs)
{
    lua_State *co = t->co;
    /* a recorded request: the wait (if any) ends here, and this run's time starts (mg_trace.h) */
    struct mg_trace *tr = t->trace;
    int held = mg_clock_suspend(); /* Lua sees the real clock (mg_core.h) */
    if (mg_unlikely(tr != NULL))
        mg_trace_enter(tr);
    t->wait = NULL;
    /* the watchdog reads which task runs (mg_worker.c); seq_cst pairs with its MG_RUNNING_INSPECTING */
    mg_running_t *run = t->vm->running;
    mg_task_t *outer = run ? run->task : NULL;
    if (run)
        __atomic_store_n(&run->task, t, __ATOMIC_SEQ_CST);
    int rc = lua_resume(co, nargs);
    if (run) {
        __atomic_store_n(&run->task, outer, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&run->watch, __ATOMIC_SEQ_CST))
            mg_running_settle(run, t);
    }
    if (mg_unlikely(tr != NULL))
        mg_trace_leave(tr, rc == LUA_YIELD && t->wait ? t->wait : NULL);
    mg_clock_unsuspend(held);
    if (rc == LUA_YIELD) {
        if (t->wait)
            return; /* a gw.* operation is pending; its completion resumes us */
        lua_settop(co, 0);
        lua_pushliteral(co, "coroutine.yield() outside a coroutine of your own: "
                            "handlers wait through the gw.* API (gw.sleep, ...)");
        rc = LUA_ERRRUN;
    } else if (rc != 0) {
        lua_State *L = t->vm->L;
        const char *msg = lua_tostring(co, -1);
        luaL_traceback(L, co, msg ? msg : "(error object is not a string)", 0);
        lua_settop(co, 0);
        lua_xmove(L, co, 1);
    }
    t->on_done(t, rc);
}

void mg_task_start(mg_task_t *t, mg_vm_t *vm, int nargs, mg_task_done_cb on_done, void *owner)
{
    lua_State *L = vm->L;
    t->vm = vm;
    t->on_done = on_done;
    t->owner = owner;
    t->wait = NULL;
    mg_assert(mg_ledger_empty(&t->ledger)); /* released (or fresh) before it starts again */
    if (vm->pool_n > 0) {
        vm->pool_n--;
        t->co = vm->pool_co[vm->pool_n];
        t->co_ref = vm->pool_ref[vm->pool_n];
    } else {
        t->co = lua_newthread(L);
        t->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    tasks_set(vm, t, 1);
    lua_xmove(L, t->co, nargs + 1);
    task_resume(t, nargs);
}

void mg_task_release(mg_task_t *t, int reusable)
{
    mg_vm_t *vm = t->vm;
    if (!t->co)
        return;
    /* whatever way the task ended, what it holds goes back now (children first if newest) */
    mg_ledger_run(&t->ledger);
    if (reusable && lua_status(t->co) == 0 && vm->pool_n < (int)mg_countof(vm->pool_co)) {
        /*
         * Its entry in the coroutine -> task table stays (the next start
         * overwrites it): nothing runs on a pooled coroutine, and with an
         * empty stack it cannot be resumed ("cannot resume dead coroutine").
         */
        lua_settop(t->co, 0);
        vm->pool_co[vm->pool_n] = t->co;
        vm->pool_ref[vm->pool_n] = t->co_ref;
        vm->pool_n++;
    } else {
        tasks_set(vm, t, 0); /* a coroutine kept by Lua must no longer lead to t */
        luaL_unref(vm->L, LUA_REGISTRYINDEX, t->co_ref);
    }
    t->co = NULL;
    t->co_ref = LUA_NOREF;
}

void mg_task_cancel(mg_task_t *t)
{
    if (t->wait && t->wait->cancel)
        t->wait->cancel(t->wait);
    t->wait = NULL;
    mg_task_release(t, 0);
}

int mg_wait_yield(lua_State *L, mg_wait_t *w)
{
    w->co = L;
    w->done = 0;
    w->nret = 0;
    mg_task_t *t = mg_task_current(L);
    if (t) {
        w->task = t;
        t->wait = w;
        return lua_yield(L, 0);
    }
    int main_thread = lua_pushthread(L);
    lua_pop(L, 1);
    if (!main_thread) {
        if (w->cancel)
            w->cancel(w);
        return luaL_error(L, "this gw call waits for I/O; it must run in a handler or plugin "
                             "phase (or a spec), not in a coroutine of your own");
    }
    /* no coroutine to yield: drive the loop until the operation completes */
    w->task = NULL;
    mg_vm_t *vm = mg_vm_of(L);
    while (!w->done)
        if (event_base_loop(vm->base, EVLOOP_ONCE) < 0)
            break;
    return w->nret;
}

void mg_wait_wake(mg_wait_t *w, int nret)
{
    w->done = 1;
    w->nret = nret;
    if (w->task)
        task_resume(w->task, nret);
}
