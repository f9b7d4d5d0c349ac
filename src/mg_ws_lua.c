/*
 * mg_ws_lua — see mg_ws_lua.h.
 *
 *   local ws, err = ctx:websocket{ max_frame = "1m", max_message = "1m", timeout = 30,
 *                                  pings = false, protocols = { "chat" } }
 *   data, typ, err = ws:recv()      -- typ "text" | "binary" | "close" (err = the code)
 *                                   -- | "ping" | "pong" (only with pings = true)
 *   bytes, err = ws:send_text(s) / ws:send_binary(s) / ws:ping(s) / ws:pong(s)
 *   ok, err = ws:close(code, reason)
 *   ws:subprotocol()                -- the protocol chosen from `protocols`, or nil
 *
 * The connection (mg_conn) does the I/O; this protocol parses the client's
 * frames as they arrive (mg_ws: masking required, fragments assembled up to
 * max_message, text checked as UTF-8, control frames between fragments,
 * pings answered at once unless the handler asked for them) and queues
 * complete messages for ws:recv. A violation closes with the RFC's code
 * (1002, 1007, 1009) and recv returns nil, nil, "protocol error: ...".
 *
 * Back-pressure: the client is not read while QUEUE_HIGH bytes of messages
 * wait for recv; a send above OUT_HIGH queued waits (yields) until the
 * client took it (one waiting sender at a time: a second gets "busy").
 *
 * Lifetime: the ws object is a userdata held in the registry while its
 * request or its connection lives; C reaches it from the connection
 * (c->proto_data) and the request (r->websocket). Whichever goes first
 * detaches itself; when both are gone, the reference is dropped and ws is a
 * dead handle (its calls return "closed"). ws lives in its generation's VM,
 * which the request keeps open; the connection holds a reference on the
 * generation of its own (ws->gen) for as long as it holds ws, since it
 * outlives the request when the handler returns first (the close frame is
 * still to be sent) or at a shutdown.
 */
#define _GNU_SOURCE
#include "mg_ws_lua.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "mg_log.h"
#include "mg_metrics.h"
#include "mg_req.h"
#include "mg_ws.h"

#define WS_MT "moongate.websocket"
#define OUT_HIGH (256 * 1024)
#define QUEUE_HIGH (1024 * 1024)

typedef struct wsmsg {
    struct wsmsg *next;
    int type;                         /* MG_WS_TEXT / BINARY / PING / PONG / CLOSE */
    int code;                         /* close */
    size_t n;
    char data[];
} wsmsg_t;

typedef struct mg_ws_lua {
    mg_conn_t *c;                     /* NULL once the connection is gone */
    mg_req_t *r;                      /* NULL once the request ended */
    mg_vm_t *vm;
    int ref;                          /* the registry's reference while c or r holds it */
    uint64_t max_frame, max_message;
    uint32_t timeout_ms;              /* ws:recv waits at most this long (0: no limit) */
    int pings;                        /* hand ping/pong to recv instead of answering */
    /* input */
    mg_ws_msg_t msg;
    mg_ws_frame_t f;
    int in_frame;
    uint64_t got;                     /* payload bytes of f so far */
    struct evbuffer *frag, *ctrl;
    wsmsg_t *qhead, *qtail;
    size_t qbytes;
    int paused;                       /* not reading: the queue is full */
    /* state */
    int close_sent, close_recv, ended; /* ended: no more input (close, error, client gone) */
    const char *err;                  /* what recv says once ended with nothing queued */
    char errbuf[160];
    /* waits */
    mg_wait_t rwait, swait;
    int rwaiting, swaiting;
    struct event rtimer;
    int rtimer_set;
    char protocol[64];                /* the subprotocol chosen, or "" */
    mg_worker_t *w;
    mg_gen_t *gen;                    /* referenced by the connection while it holds ws */
    mg_series_t *series;              /* the route's (open WebSockets, bytes) */
    uint64_t bytes[2];                /* [0] from the client, [1] to it */
    size_t counted;                   /* input bytes left unparsed (counted already) after the last pass */
} mg_ws_lua_t;

static const char *type_name(int t)
{
    switch (t) {
    case MG_WS_TEXT: return "text";
    case MG_WS_BINARY: return "binary";
    case MG_WS_PING: return "ping";
    case MG_WS_PONG: return "pong";
    default: return "close";
    }
}

/* The WebSocket's bytes into its request's access line (bytes_in had the handshake; bytes had nothing). */
static void count_bytes(mg_ws_lua_t *ws, mg_req_t *r)
{
    r->bytes_in += ws->bytes[0];
    r->bytes_out += ws->bytes[1];
}

/* Drops the registry's reference once neither the request nor the connection holds ws. */
static void maybe_unref(mg_ws_lua_t *ws)
{
    if (!ws->c && !ws->r && ws->ref != LUA_NOREF) {
        luaL_unref(ws->vm->L, LUA_REGISTRYINDEX, ws->ref);
        ws->ref = LUA_NOREF;
    }
}

static void write_frame(mg_ws_lua_t *ws, int opcode, const char *data, size_t n)
{
    uint8_t head[MG_WS_MAX_HEAD];
    size_t h = mg_ws_head(head, opcode, 1, n, NULL);
    ws->bytes[1] += h + n;
    evbuffer_add(ws->c->out, head, h);
    if (n)
        evbuffer_add(ws->c->out, data, n);
}

static void send_close(mg_ws_lua_t *ws, int code, const char *reason, size_t rn)
{
    if (ws->close_sent || !ws->c)
        return;
    ws->close_sent = 1;
    char p[125];
    size_t n = 0;
    if (code != 1005) {
        p[0] = (char)(code >> 8);
        p[1] = (char)(code & 0xFF);
        n = 2 + (rn > 123 ? 123 : rn);
        memcpy(p + 2, reason, n - 2);
    }
    write_frame(ws, MG_WS_CLOSE, p, n);
}

/* recv's results: pushes and wakes a waiting recv, or returns 0 when none waits. */
static int wake_recv(mg_ws_lua_t *ws, const wsmsg_t *m)
{
    if (!ws->rwaiting)
        return 0;
    ws->rwaiting = 0;
    if (ws->rtimer_set) {
        event_del(&ws->rtimer);
        ws->rtimer_set = 0;
    }
    lua_State *co = ws->rwait.co;
    if (m) {
        lua_pushlstring(co, m->data, m->n);
        lua_pushstring(co, type_name(m->type));
        if (m->type == MG_WS_CLOSE)
            lua_pushinteger(co, m->code);
        else
            lua_pushnil(co);
    } else {
        lua_pushnil(co);
        lua_pushnil(co);
        lua_pushstring(co, ws->err ? ws->err : "closed");
    }
    mg_wait_wake(&ws->rwait, 3);
    return 1;
}

static void wake_send(mg_ws_lua_t *ws, int ok)
{
    if (!ws->swaiting)
        return;
    ws->swaiting = 0;
    lua_State *co = ws->swait.co;
    if (ok) {
        lua_pushboolean(co, 1);
        lua_pushnil(co);
    } else {
        lua_pushnil(co);
        lua_pushliteral(co, "closed");
    }
    mg_wait_wake(&ws->swait, 2);
}

/* A message for recv: to the waiting recv, or into the queue. Returns 1 when ws went away meanwhile. */
static int deliver(mg_ws_lua_t *ws, int type, int code, const char *data, size_t n)
{
    wsmsg_t *m = mg_alloc(sizeof(*m) + n);
    m->next = NULL;
    m->type = type;
    m->code = code;
    m->n = n;
    if (n)
        memcpy(m->data, data, n);
    if (!ws->qhead && ws->rwaiting) {
        mg_conn_t *c = ws->c;
        wake_recv(ws, m);
        free(m);
        return c && c->proto_data != ws;
    }
    if (ws->qtail)
        ws->qtail->next = m;
    else
        ws->qhead = m;
    ws->qtail = m;
    ws->qbytes += n + 64;
    return 0;
}

/* No more input: the client closed, broke the protocol or went away. A waiting recv learns it. */
static void end_input(mg_ws_lua_t *ws, const char *err)
{
    if (ws->ended)
        return;
    ws->ended = 1;
    ws->err = err;
    if (!ws->qhead)
        wake_recv(ws, NULL);
}

/* A protocol violation: close with its code, no more input. */
static void violation(mg_ws_lua_t *ws, int rc, const char *why)
{
    int code = -rc;
    mg_log_info(ws->r ? ws->r->trace_id : NULL, "websocket %s: closing with %d: %s", ws->c->remote, code, why);
    if (ws->r)
        ws->r->error_kind = code == 1009 ? MG_E(WS_TOO_BIG) : MG_E(WS_PROTOCOL);
    send_close(ws, code, why, strlen(why));
    snprintf(ws->errbuf, sizeof(ws->errbuf), "%s: %s", code == 1009 ? "too big" : "protocol error", why);
    mg_conn_t *c = ws->c;
    mg_conn_set_reading(c, 0);
    end_input(ws, ws->errbuf);
    if (c->proto_data == ws)
        mg_conn_begin_close(c);
}

/* A whole frame arrived (its payload in frag or ctrl). Returns 1 to stop the input pass. */
static int frame_done(mg_ws_lua_t *ws)
{
    const char *why = NULL;
    int op = ws->f.opcode;
    if (op < MG_WS_CLOSE) {
        if (!ws->f.fin)
            return 0;
        int type = ws->msg.opcode;
        int rc = mg_ws_msg_end(&ws->msg, &why);
        if (rc) {
            violation(ws, rc, why);
            return 1;
        }
        size_t n = evbuffer_get_length(ws->frag);
        const char *d = n ? (const char *)evbuffer_pullup(ws->frag, -1) : "";
        int gone = deliver(ws, type, 0, d, n);
        if (gone)
            return 1;
        evbuffer_drain(ws->frag, n);
        return 0;
    }
    size_t n = evbuffer_get_length(ws->ctrl);
    char p[125];
    evbuffer_remove(ws->ctrl, p, n);
    if (op == MG_WS_PING || op == MG_WS_PONG) {
        if (ws->pings)
            return deliver(ws, op, 0, p, n);
        if (op == MG_WS_PING && !ws->close_sent)
            write_frame(ws, MG_WS_PONG, p, n); /* answered at once; flushed at the end of the pass */
        return 0;
    }
    int code;
    const char *reason;
    size_t rn;
    int rc = mg_ws_parse_close((const uint8_t *)p, n, &code, &reason, &rn, &why);
    if (rc) {
        violation(ws, rc, why);
        return 1;
    }
    /* the closing handshake: echo the code, then close once the output is out */
    ws->close_recv = 1;
    send_close(ws, code, "", 0);
    mg_conn_t *c = ws->c;
    mg_conn_set_reading(c, 0);
    if (deliver(ws, MG_WS_CLOSE, code, reason, rn))
        return 1;
    end_input(ws, "closed");
    if (c->proto_data == ws)
        mg_conn_begin_close(c);
    return 1;
}

static void ws_input(mg_conn_t *c)
{
    mg_ws_lua_t *ws = c->proto_data;
    if (!ws || ws->ended)
        return;
    ws->bytes[0] += c->in_len - c->in_off - ws->counted; /* what arrived since the last pass */
    unsigned outer = c->processing; /* called inside another pass (recv draining the queue): it flushes */
    c->processing = 1;              /* pongs and echoes are flushed once, at the end */
    while (!ws->paused && c->proto_data == ws) {
        size_t avail = c->in_len - c->in_off;
        uint8_t *p = (uint8_t *)c->in + c->in_off;
        const char *why = NULL;
        if (!ws->in_frame) {
            int rc = mg_ws_parse_head(p, avail, 1, ws->max_frame, &ws->f, &why);
            if (rc == MG_WS_AGAIN)
                break;
            if (rc > 0 && ws->f.opcode < MG_WS_CLOSE) {
                int mrc = mg_ws_msg_frame(&ws->msg, &ws->f, &why);
                rc = mrc ? mrc : rc;
            }
            if (rc < 0) {
                violation(ws, rc, why);
                break;
            }
            mg_conn_consume(c, (size_t)rc);
            ws->in_frame = 1;
            ws->got = 0;
            avail -= (size_t)rc;
            p += rc;
        }
        uint64_t left = ws->f.len - ws->got;
        size_t take = (uint64_t)avail < left ? avail : (size_t)left;
        if (take) {
            mg_ws_mask(p, take, ws->f.mask, ws->got);
            if (ws->f.opcode < MG_WS_CLOSE) {
                int rc = mg_ws_msg_payload(&ws->msg, p, take, &why);
                if (rc) {
                    violation(ws, rc, why);
                    break;
                }
                evbuffer_add(ws->frag, p, take);
            } else {
                evbuffer_add(ws->ctrl, p, take);
            }
            mg_conn_consume(c, take);
            ws->got += take;
        }
        if (ws->got < ws->f.len)
            break; /* the rest of the payload is still on its way */
        ws->in_frame = 0;
        if (frame_done(ws))
            break;
        if (ws->qbytes > QUEUE_HIGH) {
            ws->paused = 1; /* recv drains the queue and reads again */
            mg_conn_set_reading(c, 0);
        }
    }
    c->processing = outer;
    if (c->proto_data == ws)
        ws->counted = c->in_len - c->in_off;
    if (!c->freed && !outer)
        mg_conn_flush(c);
}

static void ws_drained(mg_conn_t *c)
{
    mg_ws_lua_t *ws = c->proto_data;
    if (ws)
        wake_send(ws, 1);
}

static void ws_writable(mg_conn_t *c) {}
static void ws_timeout(mg_conn_t *c) {}
static void ws_drain(mg_conn_t *c) {} /* the handler runs on until the drain ends (mg_ws_lua_going_away) */

static void ws_eof(mg_conn_t *c)
{
    mg_conn_close(c); /* closing tells the handler */
}

/* The connection lets go of ws: the request, if it is still there, goes on without it. */
static void ws_detach(mg_conn_t *c, mg_ws_lua_t *ws)
{
    c->proto_data = NULL;
    ws->c = NULL;
    __atomic_sub_fetch(&ws->w->tunnels, 1, __ATOMIC_RELAXED);
    ws->series->tunnels_open--;
    ws->series->tunnel_bytes[0] += ws->bytes[0];
    ws->series->tunnel_bytes[1] += ws->bytes[1];
    mg_req_t *r = ws->r;
    if (r)
        r->conn = NULL; /* the request (and ctx.request) outlive the connection */
    if (r && event_base_got_break(c->worker->base)) {
        /* the worker is shutting down: the handler does not run again */
        ws->r = NULL;
        r->websocket = NULL;
        if (ws->rwaiting || ws->swaiting) {
            ws->rwaiting = ws->swaiting = 0; /* the task's cancellation stops our waits */
        }
        if (ws->rtimer_set) {
            event_del(&ws->rtimer);
            ws->rtimer_set = 0;
        }
        maybe_unref(ws);
        count_bytes(ws, r);
        mg_req_abort(r);
        return;
    }
    maybe_unref(ws);
    if (!ws->ended && r && !r->error_kind)
        r->error_kind = MG_E(CLIENT_ABORT); /* gone without a close frame */
    if (ws->ref == LUA_NOREF)
        return;
    /* the first wake may let the handler end (and drop the reference): keep ws alive for the second */
    lua_State *L = ws->vm->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ws->ref);
    int pin = luaL_ref(L, LUA_REGISTRYINDEX);
    wake_send(ws, 0);
    end_input(ws, "closed");
    luaL_unref(L, LUA_REGISTRYINDEX, pin);
}

static void ws_closing(mg_conn_t *c)
{
    mg_ws_lua_t *ws = c->proto_data;
    if (!ws)
        return;
    mg_gen_t *gen = ws->gen;
    ws_detach(c, ws);
    mg_worker_gen_unref(c->worker, gen); /* the VM ws lives in may close from the next loop pass */
}

const mg_conn_proto_t mg_ws_lua_proto = {
    .name = "websocket",
    .input = ws_input,
    .drained = ws_drained,
    .writable = ws_writable,
    .timeout = ws_timeout,
    .eof = ws_eof,
    .drain = ws_drain,
    .closing = ws_closing,
};

void mg_ws_lua_going_away(mg_conn_t *c)
{
    mg_ws_lua_t *ws = c->proto_data;
    if (ws->r)
        ws->r->error_kind = MG_E(SHUTDOWN);
    send_close(ws, 1001, "going away", 10);
    mg_conn_set_reading(c, 0);
    end_input(ws, "closed");
    if (c->proto_data == ws)
        mg_conn_begin_close(c);
}

void mg_ws_lua_handler_done(mg_req_t *r, int failed)
{
    mg_ws_lua_t *ws = r->websocket;
    r->websocket = NULL;
    ws->r = NULL;
    if (ws->rtimer_set) {
        event_del(&ws->rtimer);
        ws->rtimer_set = 0;
    }
    ws->rwaiting = ws->swaiting = 0; /* the task is over: nobody waits */
    if (failed)
        r->error_kind = MG_E(LUA_ERROR);
    mg_conn_t *c = ws->c;
    if (c) {
        send_close(ws, failed ? 1011 : 1000, "", 0);
        ws->ended = 1;
        mg_conn_set_reading(c, 0);
        mg_conn_begin_close(c); /* the connection keeps ws until it is freed */
    }
    count_bytes(ws, r);
    maybe_unref(ws);
    mg_req_end_upgraded(r);
}

/* ---- the ws object ---- */

static mg_ws_lua_t *check_ws(lua_State *L) { return luaL_checkudata(L, 1, WS_MT); }

static void recv_cancel(mg_wait_t *w)
{
    mg_ws_lua_t *ws = (mg_ws_lua_t *)((char *)w - offsetof(mg_ws_lua_t, rwait));
    ws->rwaiting = 0;
    if (ws->rtimer_set) {
        event_del(&ws->rtimer);
        ws->rtimer_set = 0;
    }
}

static void send_cancel(mg_wait_t *w)
{
    mg_ws_lua_t *ws = (mg_ws_lua_t *)((char *)w - offsetof(mg_ws_lua_t, swait));
    ws->swaiting = 0;
}

static void on_recv_timeout(evutil_socket_t fd, short what, void *arg)
{
    mg_ws_lua_t *ws = arg;
    ws->rtimer_set = 0;
    if (!ws->rwaiting)
        return;
    ws->rwaiting = 0;
    lua_State *co = ws->rwait.co;
    lua_pushnil(co);
    lua_pushnil(co);
    lua_pushliteral(co, "timeout");
    mg_wait_wake(&ws->rwait, 3);
}

/* data, type, err = ws:recv() */
static int l_recv(lua_State *L)
{
    mg_ws_lua_t *ws = check_ws(L);
    if (ws->qhead) {
        wsmsg_t *m = ws->qhead;
        ws->qhead = m->next;
        if (!ws->qhead)
            ws->qtail = NULL;
        ws->qbytes -= m->n + 64;
        lua_pushlstring(L, m->data, m->n);
        lua_pushstring(L, type_name(m->type));
        if (m->type == MG_WS_CLOSE)
            lua_pushinteger(L, m->code);
        else
            lua_pushnil(L);
        free(m);
        if (ws->paused && ws->qbytes <= QUEUE_HIGH / 2 && ws->c) {
            ws->paused = 0;
            mg_conn_set_reading(ws->c, 1);
            ws_input(ws->c); /* what is buffered already */
        }
        return 3;
    }
    if (ws->ended || !ws->c) {
        lua_pushnil(L);
        lua_pushnil(L);
        lua_pushstring(L, ws->err ? ws->err : "closed");
        return 3;
    }
    if (ws->rwaiting) {
        lua_pushnil(L);
        lua_pushnil(L);
        lua_pushliteral(L, "busy: another task is receiving on this websocket");
        return 3;
    }
    mg_task_owner(L, "ws:recv"); /* raises outside a task or the main thread */
    ws->rwaiting = 1;
    ws->rwait.cancel = recv_cancel;
    ws->rwait.what = MG_WAIT_WEBSOCKET;
    if (ws->timeout_ms) {
        struct timeval tv = { ws->timeout_ms / 1000, (ws->timeout_ms % 1000) * 1000 };
        evtimer_assign(&ws->rtimer, ws->vm->base, on_recv_timeout, ws);
        evtimer_add(&ws->rtimer, &tv);
        ws->rtimer_set = 1;
    }
    return mg_wait_yield(L, &ws->rwait);
}

/* Sends one frame; yields while the client is behind (OUT_HIGH). */
static int send_op(lua_State *L, int opcode)
{
    mg_ws_lua_t *ws = check_ws(L);
    size_t n = 0;
    const char *d = lua_isnoneornil(L, 2) ? "" : luaL_checklstring(L, 2, &n);
    if (!ws->c || ws->close_sent) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    if (opcode >= MG_WS_CLOSE && n > 125)
        return luaL_error(L, "ws:%s: a control frame carries at most 125 bytes", opcode == MG_WS_PING ? "ping" : "pong");
    if (opcode == MG_WS_TEXT) {
        mg_utf8_t u = { 0 };
        if (mg_utf8_feed(&u, (const uint8_t *)d, n) != 0 || !mg_utf8_complete(&u)) {
            lua_pushnil(L);
            lua_pushliteral(L, "text is not UTF-8 (send it with send_binary)");
            return 2;
        }
    }
    mg_conn_t *c = ws->c;
    write_frame(ws, opcode, d, n);
    if (!c->processing)
        mg_conn_flush(c);
    if (c->freed) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    if (evbuffer_get_length(c->out) <= OUT_HIGH) {
        lua_pushinteger(L, (lua_Integer)n);
        return 1;
    }
    if (ws->swaiting || !mg_task_current(L)) {
        lua_pushinteger(L, (lua_Integer)n); /* queued; the waiting sender (or none) holds the pace */
        return 1;
    }
    ws->swaiting = 1;
    ws->swait.cancel = send_cancel;
    ws->swait.what = MG_WAIT_WEBSOCKET;
    return mg_wait_yield(L, &ws->swait);
}

static int l_send_text(lua_State *L) { return send_op(L, MG_WS_TEXT); }
static int l_send_binary(lua_State *L) { return send_op(L, MG_WS_BINARY); }
static int l_ping(lua_State *L) { return send_op(L, MG_WS_PING); }
static int l_pong(lua_State *L) { return send_op(L, MG_WS_PONG); }

/* ok, err = ws:close(code, reason): sends the close frame; the client's answer comes to recv. */
static int l_close(lua_State *L)
{
    mg_ws_lua_t *ws = check_ws(L);
    int code = (int)luaL_optinteger(L, 2, 1000);
    size_t rn = 0;
    const char *reason = luaL_optlstring(L, 3, "", &rn);
    if (!mg_ws_close_code_ok(code) || code == 1010)
        return luaL_error(L, "ws:close: %d is not a close code a server may send", code);
    if (rn > 123)
        return luaL_error(L, "ws:close: the reason is longer than 123 bytes");
    mg_utf8_t u = { 0 };
    if (mg_utf8_feed(&u, (const uint8_t *)reason, rn) != 0 || !mg_utf8_complete(&u))
        return luaL_error(L, "ws:close: the reason is not UTF-8");
    if (!ws->c || ws->close_sent) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    send_close(ws, code, reason, rn);
    mg_conn_t *c = ws->c;
    if (ws->close_recv)
        mg_conn_begin_close(c);
    else if (!c->processing)
        mg_conn_flush(c);
    lua_pushboolean(L, 1);
    return 1;
}

/* ws:subprotocol() -> the Sec-WebSocket-Protocol chosen (from `protocols`), or nil */
static int l_subprotocol(lua_State *L)
{
    mg_ws_lua_t *ws = check_ws(L);
    if (!ws->protocol[0]) {
        lua_pushnil(L); /* a value: tostring(ws:subprotocol()) works */
        return 1;
    }
    lua_pushstring(L, ws->protocol);
    return 1;
}

static int l_gc(lua_State *L)
{
    mg_ws_lua_t *ws = lua_touserdata(L, 1);
    if (ws->rtimer_set)
        event_del(&ws->rtimer);
    /* unreferenced: neither the request nor the connection can reach it any more */
    while (ws->qhead) {
        wsmsg_t *m = ws->qhead;
        ws->qhead = m->next;
        free(m);
    }
    if (ws->frag)
        evbuffer_free(ws->frag);
    if (ws->ctrl)
        evbuffer_free(ws->ctrl);
    ws->frag = ws->ctrl = NULL;
    return 0;
}

/* The field's value when it is there once (a second Sec-WebSocket-Key or -Version is refused), or NULL. */
static const char *header(mg_req_t *r, const char *name, size_t nl, size_t *vl)
{
    const char *v = NULL;
    for (size_t i = 0; i < r->nheaders; i++)
        if (mg_http1_name_is(&r->headers[i], name, nl)) {
            if (v)
                return NULL;
            *vl = r->headers[i].value_len;
            v = r->headers[i].value;
        }
    return v;
}

/* Is `tok` one of the comma-separated tokens of value? */
static int has_token(const char *v, size_t vl, const char *tok)
{
    size_t tl = strlen(tok);
    const char *e = v + vl;
    while (v < e) {
        while (v < e && (*v == ' ' || *v == '\t' || *v == ','))
            v++;
        const char *s = v;
        while (v < e && *v != ',' && *v != ' ' && *v != '\t')
            v++;
        if ((size_t)(v - s) == tl && strncasecmp(s, tok, tl) == 0)
            return 1;
    }
    return 0;
}

/* Does any field `name` list the token? (Connection and the like may come as several fields.) */
static int fields_have(mg_req_t *r, const char *name, size_t nl, const char *tok)
{
    for (size_t i = 0; i < r->nheaders; i++)
        if (mg_http1_name_is(&r->headers[i], name, nl) && has_token(r->headers[i].value, r->headers[i].value_len, tok))
            return 1;
    return 0;
}

/* Why this request is not a WebSocket handshake we can answer, or NULL (RFC 6455 section 4.2.1). */
static const char *bad_handshake(mg_req_t *r, const char **key)
{
    size_t n = 0;
    const char *v;
    if (!r->wire->upgrade)
        return "WebSocket needs HTTP/1.1 here (WebSocket over HTTP/2 is not offered)";
    if (r->method_bit != MG_M_GET || r->minor_version != 1)
        return "a WebSocket handshake is a GET over HTTP/1.1";
    if (!fields_have(r, "upgrade", 7, "websocket"))
        return "no Upgrade: websocket";
    if (!fields_have(r, "connection", 10, "upgrade"))
        return "no Connection: upgrade";
    if (!(v = header(r, "sec-websocket-version", 21, &n)) || n != 2 || memcmp(v, "13", 2) != 0)
        return "Sec-WebSocket-Version is not 13";
    if (!(v = header(r, "sec-websocket-key", 17, &n)) || n != 24 || v[22] != '=' || v[23] != '=')
        return "Sec-WebSocket-Key is not 16 bytes in base64";
    for (size_t i = 0; i < 22; i++)
        if (!((v[i] >= 'A' && v[i] <= 'Z') || (v[i] >= 'a' && v[i] <= 'z') || (v[i] >= '0' && v[i] <= '9') ||
              v[i] == '+' || v[i] == '/'))
            return "Sec-WebSocket-Key is not 16 bytes in base64";
    if (r->body_complete && evbuffer_get_length(r->body) > 0)
        return "a WebSocket handshake has no body";
    *key = v;
    return NULL;
}

/*
 * gw._websocket(r, max_frame, max_message, timeout_ms, pings, protocols)
 * (ctx:websocket checks and converts the options): ws, or nil, err.
 */
static int l_websocket(lua_State *L)
{
    mg_req_t *r = (mg_req_t *)(uintptr_t)luaL_checknumber(L, 1);
    if (r->websocket || r->resp_started)
        return luaL_error(L, "ctx:websocket(): the request was answered or upgraded already");
    if (r->route->upstream)
        return luaL_error(L, "ctx:websocket() is for handler routes (a proxy route forwards the upgrade)");
    const char *key = NULL, *why = bad_handshake(r, &key);
    if (why) {
        lua_pushnil(L);
        lua_pushstring(L, why);
        return 2;
    }
    /* the subprotocol: the first one the client offers that the handler accepts */
    const char *proto = NULL;
    size_t proto_len = 0;
    if (lua_istable(L, 6)) {
        for (int i = 1; !proto; i++) {
            lua_rawgeti(L, 6, i);
            if (lua_isnil(L, -1)) {
                lua_pop(L, 1);
                break;
            }
            const char *want = lua_tostring(L, -1);
            if (want && fields_have(r, "sec-websocket-protocol", 22, want)) {
                proto = mg_pool_strndup(&r->pool, want, strlen(want));
                proto_len = strlen(want);
            }
            lua_pop(L, 1);
        }
    }
    mg_vm_t *vm = mg_vm_of(L);
    mg_ws_lua_t *ws = lua_newuserdata(L, sizeof(*ws));
    memset(ws, 0, sizeof(*ws));
    luaL_getmetatable(L, WS_MT);
    lua_setmetatable(L, -2);
    ws->vm = vm;
    ws->max_frame = (uint64_t)luaL_checknumber(L, 2);
    ws->max_message = ws->msg.max_message = (uint64_t)luaL_checknumber(L, 3);
    ws->timeout_ms = lua_isnumber(L, 4) ? (uint32_t)lua_tonumber(L, 4) : r->gen->tunnel_timeout_ms;
    ws->pings = lua_toboolean(L, 5);
    ws->frag = evbuffer_new();
    ws->ctrl = evbuffer_new();
    lua_pushvalue(L, -1);
    ws->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (proto && proto_len < sizeof(ws->protocol))
        memcpy(ws->protocol, proto, proto_len + 1);

    char accept[29];
    mg_ws_accept_key(key, 24, accept);
    mg_resp_t *resp = &r->resp;
    mg_resp_init(resp, &r->pool, 101);
    mg_resp_add(resp, "Upgrade", 7, "websocket", 9);
    mg_resp_add(resp, "Connection", 10, "Upgrade", 7);
    mg_resp_add(resp, "Sec-WebSocket-Accept", 20, mg_pool_strndup(&r->pool, accept, 28), 28);
    if (proto)
        mg_resp_add(resp, "Sec-WebSocket-Protocol", 22, proto, proto_len);
    mg_req_add_defaults(r, resp);
    /* no deadline from here: a WebSocket lives as long as its handler; ws:recv has a timeout */
    if (r->deadline_set) {
        event_del(&r->deadline);
        r->deadline_set = 0;
    }
    r->deadline_us = 0;
    mg_conn_t *c = r->conn;
    ws->c = c;
    ws->r = r;
    r->websocket = ws;
    mg_req_send_upgrade(r, resp);
    ws->w = c->worker;
    ws->gen = r->gen;
    ws->gen->refs++; /* the connection's: dropped in ws_closing */
    __atomic_add_fetch(&ws->w->tunnels, 1, __ATOMIC_RELAXED);
    ws->series = mg_metrics_series(&c->worker->metrics, r->route->name, 0);
    ws->series->tunnels_open++;
    ws->series->tunnels_total++;
    c->proto = &mg_ws_lua_proto;
    c->proto_data = ws;
    mg_conn_set_reading(c, 1);
    if (!c->processing) {
        /* the handler waited before it upgraded: no input pass runs to flush the 101 and read on */
        mg_conn_flush(c);
        if (!c->freed && c->in_len > c->in_off)
            ws_input(c); /* frames the client sent right behind its handshake */
    } /* else the HTTP/1.1 pass this runs in does both when it ends (mg_h1 process_input) */
    return 1;
}

void mg_ws_lua_register(lua_State *L, mg_vm_t *vm)
{
    static const luaL_Reg methods[] = {
        { "recv", l_recv },
        { "send_text", l_send_text },
        { "send_binary", l_send_binary },
        { "ping", l_ping },
        { "pong", l_pong },
        { "close", l_close },
        { "subprotocol", l_subprotocol },
        { NULL, NULL },
    };
    mg_lua_class(L, WS_MT, methods, l_gc);
    lua_pushcfunction(L, l_websocket);
    lua_setfield(L, -2, "_websocket");
}
