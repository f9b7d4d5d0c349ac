/*
 * mg_tcp — gw.tcp(): a non-blocking TCP client socket for Lua.
 *
 *   local s = gw.tcp()
 *   s:settimeout(ms)               -- per operation, default 10000
 *   ok, err = s:connect(ip, port)  -- IPv4/IPv6 literals (no DNS here)
 *   n, err = s:send(data)
 *   data, err, partial = s:receive(n | "*l" | "*a")
 *   s:close()
 *
 * Every wait goes through the mg_lua wait protocol, so a handler yields to the
 * loop and a spec drives the loop. Errors are kinds, not messages: "timeout",
 * "closed", "refused", "reset", or "io: <strerror>".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <lauxlib.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mg_lua.h"

#define TCP_MT "moongate.tcp"
#define LISTENER_MT "moongate.tcp_listener"

enum { OP_NONE, OP_CONNECT, OP_SEND, OP_RECV };
enum { RECV_N, RECV_LINE, RECV_ALL };

typedef struct mg_tcp {
    int fd;
    int timeout_ms;
    int op;
    int recv_mode;
    size_t recv_n;
    const char *send_p;        /* into a string kept alive by send_ref */
    size_t send_left, send_total;
    int send_ref;
    int eof;
    struct evbuffer *in;
    mg_vm_t *vm;
    struct event ev;
    int ev_set;
    int closing;               /* closed while a coroutine waited: it gets nil, "closed" */
    mg_wait_t wait;
} mg_tcp_t;

static const char *errno_kind(int e)
{
    switch (e) {
    case ECONNREFUSED: return "refused";
    case ECONNRESET: case EPIPE: return "reset";
    case ETIMEDOUT: return "timeout";
    default: return NULL;
    }
}

static int push_error(lua_State *L, int e)
{
    lua_pushnil(L);
    const char *k = errno_kind(e);
    if (k)
        lua_pushstring(L, k);
    else
        lua_pushfstring(L, "io: %s", strerror(e));
    return 2;
}

static void disarm(mg_tcp_t *s)
{
    if (s->ev_set) {
        event_del(&s->ev);
        s->ev_set = 0;
    }
}

static void op_cancel(mg_wait_t *w)
{
    mg_tcp_t *s = (mg_tcp_t *)((char *)w - offsetof(mg_tcp_t, wait));
    disarm(s);
    s->op = OP_NONE;
    if (s->send_ref != LUA_NOREF) {
        luaL_unref(s->vm->L, LUA_REGISTRYINDEX, s->send_ref);
        s->send_ref = LUA_NOREF;
    }
}

static void on_ready(evutil_socket_t fd, short what, void *arg);

static void arm(mg_tcp_t *s, short what)
{
    struct timeval tv = { s->timeout_ms / 1000, (s->timeout_ms % 1000) * 1000 };
    disarm(s);
    event_assign(&s->ev, s->vm->base, s->fd, what, on_ready, s);
    event_add(&s->ev, &tv);
    s->ev_set = 1;
}

/* Tries to satisfy the receive from the buffer; pushes results and returns their count, or 0. */
static int recv_try(lua_State *L, mg_tcp_t *s)
{
    size_t have = evbuffer_get_length(s->in);
    if (s->recv_mode == RECV_N && have >= s->recv_n) {
        lua_pushlstring(L, (const char *)evbuffer_pullup(s->in, (ssize_t)s->recv_n), s->recv_n);
        evbuffer_drain(s->in, s->recv_n);
        return 1;
    }
    if (s->recv_mode == RECV_LINE) {
        struct evbuffer_ptr p = evbuffer_search(s->in, "\n", 1, NULL);
        if (p.pos >= 0) {
            size_t n = (size_t)p.pos;
            const char *d = (const char *)evbuffer_pullup(s->in, (ssize_t)n + 1);
            lua_pushlstring(L, d, (n > 0 && d[n - 1] == '\r') ? n - 1 : n);
            evbuffer_drain(s->in, n + 1);
            return 1;
        }
    }
    if (s->eof) {
        have = evbuffer_get_length(s->in);
        const char *d = (const char *)evbuffer_pullup(s->in, -1);
        if (s->recv_mode == RECV_ALL) {
            lua_pushlstring(L, d ? d : "", have);
            evbuffer_drain(s->in, have);
            return 1;
        }
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        lua_pushlstring(L, d ? d : "", have);
        evbuffer_drain(s->in, have);
        return 3;
    }
    return 0;
}

/* Reads what is available; returns 0, or an errno on failure. EOF sets s->eof. */
static int fill(mg_tcp_t *s)
{
    for (;;) {
        int n = evbuffer_read(s->in, s->fd, 65536);
        if (n > 0)
            continue;
        if (n == 0) {
            s->eof = 1;
            return 0;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        if (errno == EINTR)
            continue;
        return errno;
    }
}

static int send_try(mg_tcp_t *s)
{
    while (s->send_left > 0) {
        ssize_t n = send(s->fd, s->send_p, s->send_left, MSG_NOSIGNAL);
        if (n > 0) {
            s->send_p += n;
            s->send_left -= (size_t)n;
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        if (errno == EINTR)
            continue;
        return errno;
    }
    return 0;
}

static void finish(mg_tcp_t *s, int nret)
{
    disarm(s);
    s->op = OP_NONE;
    mg_wait_wake(&s->wait, nret);
}

static void on_ready(evutil_socket_t fd, short what, void *arg)
{
    mg_tcp_t *s = arg;
    lua_State *co = s->wait.co;
    s->ev_set = 0;
    if (s->closing) {
        s->closing = 0;
        op_cancel(&s->wait);
        lua_pushnil(co);
        lua_pushliteral(co, "closed");
        finish(s, 2);
        return;
    }
    if (what & EV_TIMEOUT) {
        int op = s->op;
        op_cancel(&s->wait);
        lua_pushnil(co);
        lua_pushliteral(co, "timeout");
        if (op == OP_RECV) {
            size_t have = evbuffer_get_length(s->in);
            lua_pushlstring(co, (const char *)evbuffer_pullup(s->in, -1), have);
            evbuffer_drain(s->in, have);
            finish(s, 3);
        } else {
            finish(s, 2);
        }
        return;
    }
    if (s->op == OP_CONNECT) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            finish(s, push_error(co, err));
        } else {
            lua_pushinteger(co, 1);
            finish(s, 1);
        }
    } else if (s->op == OP_SEND) {
        int err = send_try(s);
        if (!err && s->send_left > 0) {
            arm(s, EV_WRITE);
            return;
        }
        luaL_unref(s->vm->L, LUA_REGISTRYINDEX, s->send_ref);
        s->send_ref = LUA_NOREF;
        if (err) {
            finish(s, push_error(co, err));
        } else {
            lua_pushinteger(co, (lua_Integer)s->send_total);
            finish(s, 1);
        }
    } else if (s->op == OP_RECV) {
        int err = fill(s);
        if (err) {
            finish(s, push_error(co, err));
            return;
        }
        int n = recv_try(co, s);
        if (n)
            finish(s, n);
        else
            arm(s, EV_READ);
    }
}

static mg_tcp_t *check(lua_State *L)
{
    mg_tcp_t *s = luaL_checkudata(L, 1, TCP_MT);
    if (s->op != OP_NONE)
        luaL_error(L, "socket busy: another coroutine is waiting on it");
    return s;
}

static mg_tcp_t *push_socket(lua_State *L, mg_vm_t *vm, int fd);

static int l_new(lua_State *L)
{
    push_socket(L, lua_touserdata(L, lua_upvalueindex(1)), -1);
    return 1;
}

static int l_settimeout(lua_State *L)
{
    mg_tcp_t *s = luaL_checkudata(L, 1, TCP_MT);
    lua_Number ms = luaL_checknumber(L, 2);
    s->timeout_ms = ms < 1 ? 1 : (int)ms;
    return 0;
}

static int l_connect(lua_State *L)
{
    mg_tcp_t *s = check(L);
    const char *host = luaL_checkstring(L, 2);
    int port = (int)luaL_checkinteger(L, 3);
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        len = sizeof(*a4);
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        len = sizeof(*a6);
    } else {
        lua_pushnil(L);
        lua_pushfstring(L, "io: not an IP address: %s", host);
        return 2;
    }
    if (s->fd >= 0)
        close(s->fd);
    s->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0)
        return push_error(L, errno);
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    s->eof = 0;
    evbuffer_drain(s->in, evbuffer_get_length(s->in));
    if (connect(s->fd, (struct sockaddr *)&ss, len) == 0) {
        lua_pushinteger(L, 1);
        return 1;
    }
    if (errno != EINPROGRESS)
        return push_error(L, errno);
    s->op = OP_CONNECT;
    s->wait.cancel = op_cancel;
    s->wait.what = MG_WAIT_TCP;
    arm(s, EV_WRITE);
    return mg_wait_yield(L, &s->wait);
}

static int l_send(lua_State *L)
{
    mg_tcp_t *s = check(L);
    size_t n;
    const char *data = luaL_checklstring(L, 2, &n);
    if (s->fd < 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    s->send_p = data;
    s->send_left = s->send_total = n;
    int err = send_try(s);
    if (err)
        return push_error(L, err);
    if (s->send_left == 0) {
        lua_pushinteger(L, (lua_Integer)n);
        return 1;
    }
    lua_pushvalue(L, 2);
    s->send_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    s->op = OP_SEND;
    s->wait.cancel = op_cancel;
    s->wait.what = MG_WAIT_TCP;
    arm(s, EV_WRITE);
    return mg_wait_yield(L, &s->wait);
}

static int l_receive(lua_State *L)
{
    mg_tcp_t *s = check(L);
    if (lua_type(L, 2) == LUA_TNUMBER) {
        s->recv_mode = RECV_N;
        s->recv_n = (size_t)luaL_checkinteger(L, 2);
    } else {
        const char *pat = luaL_optstring(L, 2, "*l");
        if (strcmp(pat, "*l") == 0)
            s->recv_mode = RECV_LINE;
        else if (strcmp(pat, "*a") == 0)
            s->recv_mode = RECV_ALL;
        else
            return luaL_argerror(L, 2, "expected a byte count, \"*l\" or \"*a\"");
    }
    if (s->fd < 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    int n = recv_try(L, s);
    if (n)
        return n;
    int err = fill(s);
    if (err)
        return push_error(L, err);
    n = recv_try(L, s);
    if (n)
        return n;
    s->op = OP_RECV;
    s->wait.cancel = op_cancel;
    s->wait.what = MG_WAIT_TCP;
    arm(s, EV_READ);
    return mg_wait_yield(L, &s->wait);
}

static int l_close(lua_State *L)
{
    mg_tcp_t *s = luaL_checkudata(L, 1, TCP_MT);
    if (s->op != OP_NONE) {
        /* another coroutine waits on it: it is woken with nil, "closed" from the loop */
        disarm(s);
        close(s->fd);
        s->fd = -1;
        s->closing = 1;
        struct timeval zero = { 0, 0 };
        event_assign(&s->ev, s->vm->base, -1, 0, on_ready, s);
        event_add(&s->ev, &zero);
        s->ev_set = 1;
        lua_pushinteger(L, 1);
        return 1;
    }
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
    lua_pushinteger(L, 1);
    return 1;
}

/* sock:reset(): close with an RST instead of a FIN (SO_LINGER 0), for fault tests. */
static int l_reset(lua_State *L)
{
    mg_tcp_t *s = luaL_checkudata(L, 1, TCP_MT);
    if (s->op != OP_NONE)
        return luaL_error(L, "cannot reset a socket another coroutine is waiting on");
    if (s->fd >= 0) {
        struct linger lg = { 1, 0 };
        setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        close(s->fd);
        s->fd = -1;
    }
    return 0;
}

static int l_gc(lua_State *L)
{
    mg_tcp_t *s = luaL_checkudata(L, 1, TCP_MT);
    disarm(s);
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    if (s->in)
        evbuffer_free(s->in);
    s->in = NULL;
    return 0;
}

/* ---- listening sockets (specs only: test upstreams are written in Lua) ---- */

typedef struct mg_listener {
    int fd;
    mg_vm_t *vm;
    struct event ev;
    int ev_set;
    mg_wait_t wait;
} mg_listener_t;

static mg_tcp_t *push_socket(lua_State *L, mg_vm_t *vm, int fd)
{
    mg_tcp_t *s = lua_newuserdata(L, sizeof(*s));
    memset(s, 0, sizeof(*s));
    s->fd = fd;
    s->timeout_ms = 10000;
    s->send_ref = LUA_NOREF;
    s->vm = vm;
    s->in = evbuffer_new();
    luaL_getmetatable(L, TCP_MT);
    lua_setmetatable(L, -2);
    return s;
}

static void listener_cancel(mg_wait_t *w)
{
    mg_listener_t *l = (mg_listener_t *)((char *)w - offsetof(mg_listener_t, wait));
    if (l->ev_set)
        event_del(&l->ev);
    l->ev_set = 0;
}

static void on_acceptable(evutil_socket_t fd, short what, void *arg)
{
    mg_listener_t *l = arg;
    l->ev_set = 0;
    int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0 && (errno == EAGAIN || errno == EINTR)) {
        event_add(&l->ev, NULL);
        l->ev_set = 1;
        return;
    }
    if (c < 0) {
        mg_wait_wake(&l->wait, push_error(l->wait.co, errno));
        return;
    }
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    push_socket(l->wait.co, l->vm, c);
    mg_wait_wake(&l->wait, 1);
}

/* gw.tcp_listen(ip, port [, backlog]) -> listener; port 0 picks a free port (see :port()) */
static int l_listen(lua_State *L)
{
    mg_vm_t *vm = lua_touserdata(L, lua_upvalueindex(1));
    const char *host = luaL_checkstring(L, 1);
    int port = (int)luaL_checkinteger(L, 2);
    int backlog = (int)luaL_optinteger(L, 3, 512);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1)
        return luaL_argerror(L, 1, "an IPv4 address");
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, backlog) < 0) {
        int e = errno;
        close(fd);
        return push_error(L, e);
    }
    mg_listener_t *l = lua_newuserdata(L, sizeof(*l));
    memset(l, 0, sizeof(*l));
    l->fd = fd;
    l->vm = vm;
    luaL_getmetatable(L, LISTENER_MT);
    lua_setmetatable(L, -2);
    return 1;
}

static int l_accept(lua_State *L)
{
    mg_listener_t *l = luaL_checkudata(L, 1, LISTENER_MT);
    if (l->fd < 0)
        return luaL_error(L, "listener closed");
    if (l->ev_set)
        return luaL_error(L, "another coroutine is already accepting");
    event_assign(&l->ev, l->vm->base, l->fd, EV_READ, on_acceptable, l);
    event_add(&l->ev, NULL);
    l->ev_set = 1;
    l->wait.cancel = listener_cancel;
    l->wait.what = MG_WAIT_TCP;
    return mg_wait_yield(L, &l->wait);
}

static int l_listener_port(lua_State *L)
{
    mg_listener_t *l = luaL_checkudata(L, 1, LISTENER_MT);
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    getsockname(l->fd, (struct sockaddr *)&a, &len);
    lua_pushinteger(L, ntohs(a.sin_port));
    return 1;
}

static int l_listener_close(lua_State *L)
{
    mg_listener_t *l = luaL_checkudata(L, 1, LISTENER_MT);
    if (l->ev_set) {
        /* wake the accepting coroutine with an error rather than leaving it hanging */
        event_del(&l->ev);
        l->ev_set = 0;
        lua_pushnil(l->wait.co);
        lua_pushliteral(l->wait.co, "closed");
        close(l->fd);
        l->fd = -1;
        mg_wait_wake(&l->wait, 2);
        return 0;
    }
    if (l->fd >= 0)
        close(l->fd);
    l->fd = -1;
    return 0;
}

static int l_listener_gc(lua_State *L)
{
    mg_listener_t *l = luaL_checkudata(L, 1, LISTENER_MT);
    if (l->ev_set)
        event_del(&l->ev);
    if (l->fd >= 0)
        close(l->fd);
    l->fd = -1;
    return 0;
}

void mg_tcp_register_listen(lua_State *L, mg_vm_t *vm)
{
    static const luaL_Reg methods[] = {
        { "accept", l_accept }, { "port", l_listener_port }, { "close", l_listener_close }, { NULL, NULL },
    };
    mg_lua_class(L, LISTENER_MT, methods, l_listener_gc);
    lua_pushlightuserdata(L, vm);
    lua_pushcclosure(L, l_listen, 1);
    lua_setfield(L, -2, "tcp_listen");
}

void mg_tcp_register(lua_State *L, mg_vm_t *vm)
{
    static const luaL_Reg methods[] = {
        { "settimeout", l_settimeout }, { "connect", l_connect }, { "send", l_send },
        { "receive", l_receive }, { "close", l_close }, { "reset", l_reset }, { NULL, NULL },
    };
    mg_lua_class(L, TCP_MT, methods, l_gc);
    lua_pushlightuserdata(L, vm);
    lua_pushcclosure(L, l_new, 1);
    lua_setfield(L, -2, "tcp");
}
