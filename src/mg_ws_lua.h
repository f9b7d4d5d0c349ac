/*
 * mg_ws_lua — WebSocket endpoints in Lua: ctx:websocket{...} in a handler
 * answers the handshake (101 through the HTTP/1.1 wire) and turns the
 * connection into RFC 6455 frames (mg_ws parses them), read and written by
 * the handler's task through a `ws` object whose waits yield (recv, and
 * send under back-pressure), so gw.sleep, gw.http.request, gw.spawn and the
 * rest keep working beside it.
 *
 * The request lives on (its task runs the handler; it holds its
 * generation, as any running handler does) until the handler returns; its
 * deadline stops at the upgrade (ws:recv has its own timeout). Then the
 * gateway closes the WebSocket (1000 unless the handler closed it) and the
 * request ends with status 101 in the access log.
 */
#ifndef MG_WS_LUA_H
#define MG_WS_LUA_H

#include "mg_conn.h"
#include "mg_lua.h"

extern const mg_conn_proto_t mg_ws_lua_proto;

/* Registers gw._websocket (what ctx:websocket calls) and the ws object's class. */
void mg_ws_lua_register(lua_State *L, mg_vm_t *vm);

/* The handler of an upgraded request returned or failed (mg_req's on_handler_done). */
void mg_ws_lua_handler_done(mg_req_t *r, int failed);

/* The drain ended: close 1001 "going away", then a lingering close (mg_upgraded_shutdown). */
void mg_ws_lua_going_away(mg_conn_t *c);

#endif
