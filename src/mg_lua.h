/*
 * mg_lua — LuaJIT VM lifecycle, the coroutine-per-task driver and the wait
 * (yield) protocol every non-blocking gw.* operation uses.
 *
 * The wait protocol: a C function that must wait starts its operation, fills
 * an mg_wait_t (with a cancel hook) and returns `mg_wait_yield(L, w)`. Inside a
 * task coroutine this yields to the event loop; the operation's completion
 * pushes its results on w->co and calls mg_wait_wake(w, nret), which resumes
 * the coroutine. On the VM's main thread (spec mode, config load) there is no
 * coroutine to yield: mg_wait_yield runs the event loop until the wake, so the
 * same API works in specs. Anywhere else (a user coroutine) it raises an error.
 *
 * Ownership (mg_ledger): a task owns what it holds. Its ledger (t->ledger)
 * lists its children (gw.spawn) and what it took for itself; mg_task_release
 * runs it, so it is given back however the task ends: it returned, raised,
 * was cancelled (deadline, client gone) or its VM stopped. What a gw.* call
 * takes (a semaphore permit, later a pooled connection or a stream) goes to
 * the task's scope (mg_task_scope): its own ledger, unless its owner bound it
 * to a longer-lived one before starting it. A request binds its phase tasks
 * (handler, rewrite/access/balancer, header_filter, body_filter) to the
 * request's ledger, so a permit taken in access covers the upstream exchange
 * and the response; the log phase, gw.timer runs, init_worker and spawned
 * tasks keep their own. The VM's ledger (vm->ledger) holds its timers, its
 * background tasks and what its main thread took; mg_vm_stop runs it.
 *
 * Timers: every wait is armed on a loop made by mg_event_base_new (precise
 * monotonic clock, no cached time), so no wait ends before the time asked.
 */
#ifndef MG_LUA_H
#define MG_LUA_H

#include <event2/event.h>
#include <event2/event_struct.h>
#include <lauxlib.h>
#include <lua.h>

#include "mg_core.h"
#include "mg_ledger.h"
#include "mg_sema.h"

typedef struct mg_task mg_task_t;
typedef struct mg_wait mg_wait_t;
typedef struct mg_vm mg_vm_t;

struct mg_wait {
    lua_State *co;                      /* the waiting thread; results are pushed here */
    mg_task_t *task;                    /* NULL when waiting on the main thread */
    int done;
    int nret;
    void (*cancel)(mg_wait_t *w);       /* stops the operation; no wake may follow */
    const char *what;                   /* what it waits on, for the timeline and the trace
                                           spans: one of MG_WAIT_* (a static string); NULL: "other" */
};

/*
 * The labels of waits (mg_wait_t.what). Whoever fills an mg_wait_t sets the
 * label before mg_wait_yield: `w->what = MG_WAIT_REDIS;`. A traced task's
 * timeline then says what each wait was for ("redis 3.1 ms"); an untraced
 * task pays nothing for it (one store). A new kind of wait adds a label here,
 * short and lowercase, as `gatewayctl trace` prints it.
 */
#define MG_WAIT_SLEEP "gw.sleep"
#define MG_WAIT_TCP "tcp"
#define MG_WAIT_SEMAPHORE "semaphore queue"
#define MG_WAIT_HTTP "gw.http.request"
#define MG_WAIT_REDIS "redis"
#define MG_WAIT_CHILD "gw.wait"
#define MG_WAIT_WEBSOCKET "websocket"

/*
 * Called when a task's coroutine returned (status LUA_OK, results on t->co) or
 * failed (status != LUA_OK, the traceback as a string on t->co). The callback
 * must end with mg_task_release(t) or keep the task for a later release.
 */
typedef void (*mg_task_done_cb)(mg_task_t *t, int status);

struct mg_task {
    mg_vm_t *vm;
    lua_State *co;
    int co_ref;
    unsigned char trace_flags;          /* the W3C trace flags its outgoing requests carry (01: sampled) */
    mg_wait_t *wait;                    /* the pending wait, if yielded */
    mg_task_done_cb on_done;
    void *owner;                        /* e.g. the mg_req_t */
    const char *trace_id;               /* for logs written by this task; owned by owner */
    mg_ledger_t ledger;                 /* what the task holds: run by mg_task_release (see the file comment) */
    mg_ledger_t *scope;                 /* where gw.* calls register what they take; NULL: &ledger.
                                           Set by the owner before mg_task_start; kept across starts */
    const char *route;                  /* the route's name, for the watchdog; owned by the generation */
    struct mg_trace *trace;             /* the request's timeline when it is recorded (mg_trace.h), else
                                           NULL: task_resume then takes the time of each run and wait */
    struct event timer;                 /* used by gw.sleep */
    mg_wait_t sleep_wait;
    uint64_t sleep_due_us;              /* gw.sleep ends at this monotonic time, not before */
    mg_sema_waiter_t sema_waiter;       /* gw.semaphore:acquire */
    struct event sema_timer;
    mg_wait_t sema_wait;
};

/*
 * What a worker is running right now, for the watchdog on the main thread
 * (the protocol is in mg_worker.c, at mg_worker_watchdog). task_resume stores
 * the task it resumes and restores the outer one when lua_resume returns;
 * only while the watchdog looks does the worker take the slow path
 * (mg_running_settle), so the hot path is one store each way and a load.
 */
typedef struct mg_running {
    mg_task_t *task;                    /* the innermost task being resumed, NULL between tasks (atomic) */
    int watch;                          /* MG_RUNNING_* set by the main thread (atomic) */
    mg_task_t *kill;                    /* the task the watchdog's hook ends (atomic) */
    uint32_t late_ms;                   /* how late the worker was when the hook was set (atomic) */
    int kill_logged;                    /* worker thread only: the hook said what it killed */
    uint64_t kills;                     /* requests the hook ended (atomic: main reads it) */
} mg_running_t;

#define MG_RUNNING_INSPECTING 1         /* the main thread reads *task: it must not end meanwhile */
#define MG_RUNNING_ARMED 2              /* a hook is set to end `kill` */

/* Worker thread: the slow path of leaving task t (mg_worker.c). */
void mg_running_settle(mg_running_t *run, mg_task_t *t);

/*
 * Keys C reads or writes on Lua tables (ctx and its parts), interned once per
 * VM and kept in the registry: lua_setfield/lua_pushliteral hash the name and
 * look it up in the string table on every call, mg_vm_push_key is one array
 * read. Use with lua_rawget/lua_rawset.
 */
enum {
    MG_KEY_R, MG_KEY_ROUTE, MG_KEY_RESPONSE, MG_KEY_HEADERS, MG_KEY_STEP,
    MG_KEY_COUNT
};

struct mg_vm {
    lua_State *L;
    struct event_base *base;
    void *worker;                       /* mg_worker_t*, NULL outside workers */
    int tasks_ref;                      /* coroutine -> task lightuserdata */
    int json_encode_ref;                /* cjson.encode */
    int ctx_mt_ref;                     /* metatable of ctx tables */
    int plugins_run_ref;                /* moongate.plugins.run / filter_upstream_head / log */
    int plugins_filter_ref;
    int plugins_chunk_ref;
    int plugins_whole_ref;
    int plugins_log_ref;
    int key_ref[MG_KEY_COUNT];          /* the MG_KEY_* strings */
    void *gen;                          /* mg_gen_t* this VM belongs to (NULL in specs) */
    struct mg_upstream *adhoc;          /* upstreams made for gw.http.request{ url = ... } */
    mg_ledger_t ledger;                 /* its timers, background tasks, what its main thread took: run by mg_vm_stop */
    mg_mailbox_t *mailbox;              /* the worker's, for gw.semaphore waits (NULL in specs) */
    mg_running_t *running;              /* the worker's, once it runs this VM (NULL on the main thread) */
    int stopped;
    int nadhoc;
    int pool_n;
    lua_State *pool_co[64];             /* finished coroutines ready for reuse */
    int pool_ref[64];
    int nfree_refs;
    int free_refs[256];                 /* registry slots mg_vm_unref emptied, for mg_vm_ref */
};

/*
 * Creates a VM: standard libraries, the embedded lua/ modules on package
 * search, the gw API table. `spec` additionally exposes the test-only helpers.
 * Returns NULL with a message in err on failure.
 */
mg_vm_t *mg_vm_new(struct event_base *base, void *worker, int spec, char *err, size_t errlen);
void mg_vm_free(mg_vm_t *vm);
/*
 * Stops the VM's loop work: runs its ledger (timers cancelled, background
 * tasks cancelled, what its main thread took given back), closes the URL
 * upstream pools. It stays usable as memory.
 */
void mg_vm_stop(mg_vm_t *vm);

/*
 * A new event loop for workers and specs: libevent's precise monotonic clock
 * (CLOCK_MONOTONIC instead of the coarse one, which lags by up to a tick) and
 * no cached time (a timer armed late in a loop pass, after Lua ran for a
 * while, would otherwise count from the start of the pass). With both, a
 * timer never fires before the time asked for. NULL on failure.
 */
struct event_base *mg_event_base_new(void);

/* Registers metatable `name` with __index = methods and an optional __gc. */
void mg_lua_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc);

/* The mg_vm_t a lua_State belongs to (stored in the registry). */
mg_vm_t *mg_vm_of(lua_State *L);

/*
 * A registry reference to the value on top of vm->L (popped), like luaL_ref
 * but from a free list kept in C: luaL_ref keeps its list in the registry
 * and reads and writes it on every call. mg_vm_unref empties the slot (the
 * value can be collected) and keeps it for the next mg_vm_ref.
 */
int mg_vm_ref(mg_vm_t *vm);
void mg_vm_unref(mg_vm_t *vm, int ref);

/* Pushes the interned key string MG_KEY_* on L (any thread of vm). */
static inline void mg_vm_push_key(mg_vm_t *vm, lua_State *L, int key)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->key_ref[key]);
}

/*
 * Runs the function below `nargs` arguments on top of vm->L in a (pooled)
 * coroutine as task t. on_done is called when it finishes or fails, possibly
 * before mg_task_start returns.
 */
void mg_task_start(mg_task_t *t, mg_vm_t *vm, int nargs, mg_task_done_cb on_done, void *owner);

/*
 * Runs the function below nargs arguments on vm->L in a task the VM owns
 * (init_worker, background work in specs): freed when it ends, cancelled by
 * mg_vm_stop if it is still running then. on_fail (may be NULL) gets the
 * traceback of a task that raised.
 */
void mg_vm_task_start(mg_vm_t *vm, int nargs, void (*on_fail)(const char *traceback));

/* Cancels the pending wait and drops the coroutine without resuming it; runs the task's ledger. */
void mg_task_cancel(mg_task_t *t);

/*
 * Ends a finished task: runs its ledger (children ended, what it holds given
 * back), then hands its coroutine back to the pool (or to the GC). Does
 * nothing for a task already released. Never runs the scope it was bound to:
 * that is its owner's to run.
 */
void mg_task_release(mg_task_t *t, int reusable);

/* The task running on L, or NULL (main thread or a foreign coroutine). */
mg_task_t *mg_task_current(lua_State *L);

/* seconds -> timeval, rounded up to the microsecond: a wait is never armed shorter than asked. */
static inline struct timeval mg_tv_from_s(double s)
{
    uint64_t us = (uint64_t)(s * 1e6);
    if ((double)us < s * 1e6)
        us++;
    return (struct timeval){ (time_t)(us / 1000000u), (suseconds_t)(us % 1000000u) };
}

/* Where gw.* calls made by t register what they take (see the file comment). */
static inline mg_ledger_t *mg_task_scope(mg_task_t *t) { return t->scope ? t->scope : &t->ledger; }

/*
 * For a gw.* call that takes something (`what`, for the message): the task
 * running on L, or NULL on the VM's main thread (config load, specs: the
 * VM's ledger owns it then). In a coroutine of the user's own nothing would
 * give it back: raises a Lua error (may longjmp).
 */
mg_task_t *mg_task_owner(lua_State *L, const char *what);

/* What a gw.* call on L takes is registered here (task scope or VM ledger); raises like mg_task_owner. */
mg_ledger_t *mg_lua_ledger(lua_State *L, const char *what);

/* See the file comment. Use as `return mg_wait_yield(L, w);` */
int mg_wait_yield(lua_State *L, mg_wait_t *w);
void mg_wait_wake(mg_wait_t *w, int nret);

/* Registers the gw.* functions implemented in C into the table on top of L. */
void mg_api_register(lua_State *L, mg_vm_t *vm, int spec);
/* Seeds the VM's math.random from the OS CSPRNG (getrandom(2)), so workers and
 * restarts do not share a sequence. math.random is still not for secrets:
 * gw.random_bytes is. */
void mg_api_seed_random(lua_State *L);
void mg_tcp_register(lua_State *L, mg_vm_t *vm);
void mg_tcp_register_listen(lua_State *L, mg_vm_t *vm); /* specs only */
void mg_spec_register(lua_State *L, mg_vm_t *vm);
void mg_spawn_register(lua_State *L, mg_vm_t *vm);
void mg_shared_register(lua_State *L, mg_vm_t *vm);
void mg_timer_register(lua_State *L, mg_vm_t *vm);
void mg_sema_register(lua_State *L, mg_vm_t *vm);
/* Runs init_worker of every plugin loaded in the VM, in a task (it may yield). */
void mg_plugins_init_worker(mg_vm_t *vm);
/* Declares (or resizes, unless if_absent) the process-wide shared dict `name`. */
int mg_shared_define(const char *name, size_t capacity, int if_absent);
void mg_http_client_register(lua_State *L, mg_vm_t *vm);
void mg_redis_register(lua_State *L, mg_vm_t *vm, int spec);

/* Runs busted inside the runtime: `gatewayd --spec [busted args]`. Returns the exit code. */
int mg_spec_main(int argc, char **argv);
/* `gatewayd --new-plugin NAME [DIR]`: writes a plugin skeleton with a passing spec. Returns the exit code. */
int mg_spec_new_plugin(int argc, char **argv);

#endif
