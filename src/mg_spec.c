/*
 * mg_spec — `gatewayd --spec`: runs busted inside the gateway's own runtime,
 * so specs use the real gw API (gw.sleep, gw.tcp, ...) and can start real
 * gatewayd processes. gw.process is only present in this mode. The test kit
 * the specs use ships embedded (lua/moongate/test.lua), so a plugin's own
 * repository needs nothing but gatewayd; `gatewayd --new-plugin` writes a
 * plugin skeleton with a passing spec (lua/moongate/test/new_plugin.lua).
 */
#define _GNU_SOURCE /* posix_spawn_file_actions_addchdir_np */
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mg_log.h"
#include "mg_lua.h"

extern char **environ;

/* gw.process.spawn({argv...}, {stdout = path, stderr = path, cwd = dir}) -> pid
 * (cwd: the child's working directory; default ours). A program named
 * without a '/' is looked up in PATH, as a shell would (posix_spawnp). */
static int l_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int argc = (int)lua_objlen(L, 1);
    if (argc < 1)
        return luaL_argerror(L, 1, "argv must not be empty");
    char **argv = mg_calloc((size_t)argc + 1, sizeof(char *));
    for (int i = 0; i < argc; i++) {
        lua_rawgeti(L, 1, i + 1);
        argv[i] = (char *)luaL_checkstring(L, -1);
        lua_pop(L, 1); /* the strings stay referenced by the argv table */
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    static const char *streams[] = { "stdout", "stderr" };
    for (int k = 0; k < 2; k++) {
        if (lua_istable(L, 2)) {
            lua_getfield(L, 2, streams[k]);
            if (lua_isstring(L, -1))
                posix_spawn_file_actions_addopen(&fa, k + 1, lua_tostring(L, -1),
                                                 O_WRONLY | O_CREAT | O_TRUNC, 0644);
            lua_pop(L, 1);
        }
    }
    if (lua_istable(L, 2)) {
        /* after the opens: stdout/stderr paths are relative to our directory, argv[0] to the new one */
        lua_getfield(L, 2, "cwd");
        if (lua_isstring(L, -1))
            posix_spawn_file_actions_addchdir_np(&fa, lua_tostring(L, -1));
        lua_pop(L, 1); /* the string stays referenced by the options table */
    }
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    /* the child starts with no blocked signals whatever our mask is */
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "spawn %s: %s", argv[0], strerror(rc));
        free(argv);
        return 2;
    }
    free(argv);
    lua_pushinteger(L, pid);
    return 1;
}

static const struct { const char *name; int sig; } signals[] = {
    { "SIGTERM", SIGTERM }, { "SIGKILL", SIGKILL }, { "SIGINT", SIGINT }, { "SIGSTOP", SIGSTOP },
    { "SIGCONT", SIGCONT }, { "SIGHUP", SIGHUP },   { "SIGQUIT", SIGQUIT }, { "SIGUSR1", SIGUSR1 },
    { "SIGUSR2", SIGUSR2 },
};

/* gw.process.kill(pid [, signal]): a number (gw.process.SIGSTOP) or its name ("SIGSTOP"); SIGTERM by default */
static int l_kill(lua_State *L)
{
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    int sig = SIGTERM;
    if (lua_type(L, 2) == LUA_TSTRING) {
        const char *name = lua_tostring(L, 2);
        size_t i;
        for (i = 0; i < mg_countof(signals) && strcmp(signals[i].name, name) != 0; i++)
            ;
        if (i == mg_countof(signals))
            return luaL_argerror(L, 2, "a signal: a number or SIGTERM, SIGKILL, SIGINT, SIGSTOP, SIGCONT, SIGHUP, "
                                       "SIGQUIT, SIGUSR1, SIGUSR2");
        sig = signals[i].sig;
    } else if (!lua_isnoneornil(L, 2)) {
        sig = (int)luaL_checkinteger(L, 2);
    }
    if (pid <= 0)
        return luaL_argerror(L, 1, "pid must be positive");
    lua_pushboolean(L, kill(pid, sig) == 0);
    return 1;
}

/* gw.process.poll(pid) -> nil while running; "exit", code or "signal", signo when reaped */
static int l_poll(lua_State *L)
{
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    int status;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == 0)
        return 0;
    if (r < 0) {
        lua_pushliteral(L, "error");
        lua_pushstring(L, strerror(errno));
        return 2;
    }
    if (WIFEXITED(status)) {
        lua_pushliteral(L, "exit");
        lua_pushinteger(L, WEXITSTATUS(status));
    } else {
        lua_pushliteral(L, "signal");
        lua_pushinteger(L, WTERMSIG(status));
    }
    return 2;
}

static int l_exe(lua_State *L)
{
    char buf[4096];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    if (n < 0)
        return 0;
    lua_pushlstring(L, buf, (size_t)n);
    return 1;
}

/* gw.process.cwd() -> the working directory (not $PWD, which a spawner may not have set) */
static int l_cwd(lua_State *L)
{
    char buf[4096];
    if (!getcwd(buf, sizeof(buf)))
        return luaL_error(L, "getcwd: %s", strerror(errno));
    lua_pushstring(L, buf);
    return 1;
}

static void spec_task_failed(const char *traceback)
{
    fprintf(stderr, "spec task failed: %s\n", traceback);
}

/* gw.process.task(fn): runs fn concurrently as a task on the loop (specs only). */
static int l_task(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    mg_vm_t *vm = mg_vm_of(L);
    lua_pushvalue(L, 1);
    if (L != vm->L)
        lua_xmove(L, vm->L, 1);
    mg_vm_task_start(vm, 0, spec_task_failed); /* the VM's: cancelled when it is freed */
    return 0;
}

void mg_spec_register(lua_State *L, mg_vm_t *vm)
{
    static const luaL_Reg fns[] = {
        { "task", l_task },
        { "spawn", l_spawn }, { "kill", l_kill }, { "poll", l_poll }, { "exe", l_exe }, { "cwd", l_cwd },
        { NULL, NULL },
    };
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    for (size_t i = 0; i < mg_countof(signals); i++) {
        lua_pushinteger(L, signals[i].sig);
        lua_setfield(L, -2, signals[i].name);
    }
    lua_setfield(L, -2, "process");
}

int mg_spec_main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    setenv("MOONGATE_DIE_WITH_PARENT", "1", 1);
    struct event_base *base = mg_event_base_new(); /* the workers' clock: specs measure what they get */
    char err[1024];
    mg_vm_t *vm = mg_vm_new(base, NULL, 1, err, sizeof(err));
    if (!vm) {
        fprintf(stderr, "gatewayd --spec: %s\n", err);
        return 1;
    }
    lua_State *L = vm->L;
    lua_newtable(L);
    lua_pushliteral(L, "busted");
    lua_rawseti(L, -2, 0);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setglobal(L, "arg");
    /* a chunk name without '@' makes busted call os.exit with its status */
    static const char boot[] = "require 'busted.runner'({ standalone = false })";
    int rc = luaL_loadbuffer(L, boot, sizeof(boot) - 1, "=gatewayd-spec") || lua_pcall(L, 0, 0, 0);
    if (rc) {
        fprintf(stderr, "gatewayd --spec: %s\n", lua_tostring(L, -1));
        return 1;
    }
    mg_vm_free(vm);
    event_base_free(base);
    return 0;
}

int mg_spec_new_plugin(int argc, char **argv)
{
    if (argc < 1 || argc > 2 || argv[0][0] == '-') {
        fprintf(stderr, "usage: gatewayd --new-plugin NAME [DIR]   (DIR: where to write it, default .)\n");
        return 2;
    }
    struct event_base *base = mg_event_base_new();
    char err[1024];
    mg_vm_t *vm = mg_vm_new(base, NULL, 0, err, sizeof(err));
    if (!vm) {
        fprintf(stderr, "gatewayd --new-plugin: %s\n", err);
        event_base_free(base);
        return 1;
    }
    lua_State *L = vm->L;
    int rc = 1;
    lua_getglobal(L, "require");
    lua_pushliteral(L, "moongate.test.new_plugin");
    if (lua_pcall(L, 1, 1, 0) == 0) {
        lua_getfield(L, -1, "write");
        lua_pushstring(L, argv[0]);
        lua_pushstring(L, argc > 1 ? argv[1] : ".");
        if (lua_pcall(L, 2, 3, 0) == 0) {
            /* write returns the report, or nil, why and the exit code (2: a bad name) */
            if (lua_isstring(L, -3)) {
                fputs(lua_tostring(L, -3), stdout);
                rc = 0;
            } else {
                fprintf(stderr, "gatewayd --new-plugin: %s\n", lua_tostring(L, -2));
                rc = lua_isnumber(L, -1) ? (int)lua_tointeger(L, -1) : 1;
            }
        } else {
            fprintf(stderr, "gatewayd --new-plugin: %s\n", lua_tostring(L, -1));
        }
    } else {
        fprintf(stderr, "gatewayd --new-plugin: %s\n", lua_tostring(L, -1));
    }
    mg_vm_free(vm);
    event_base_free(base);
    return rc;
}
