/*
 * mg_tunnel — a proxied connection after 101 Switching Protocols: bytes
 * both ways between the client connection (mg_conn, plain or TLS: mg_conn
 * does its I/O) and the upstream connection (mg_upconn, plain or TLS),
 * with back-pressure each way (a reader that does not read stops reads
 * from the other side), an idle timeout (timeouts.tunnel), and one access
 * log line when it ends (duration, bytes each way, who closed, error kind).
 *
 * What it holds, and nothing else: the two connections, the upstream's
 * max_concurrency permit when the exchange had one (a reference to the
 * process-wide semaphore), its counters and copies of the names it logs.
 * No generation: the request that asked for the upgrade ended at the 101
 * (its own access line, status 101), so a reload frees the old VM, router
 * and upstreams while the tunnel goes on. The upstream connection was
 * detached from its target (mg_upconn_detach) and never goes back to a pool.
 *
 * Every end goes through one function (tunnel_end in mg_tunnel.c): the
 * client closed or reset, the upstream closed or reset, a send timeout, the
 * idle timeout, the end of a drain, or the client connection being freed
 * for any other reason; each releases the permit, closes the upstream and
 * ends the client connection, then frees the tunnel.
 */
#ifndef MG_TUNNEL_H
#define MG_TUNNEL_H

#include "mg_conn.h"
#include "mg_metrics.h"
#include "mg_upstream.h"

typedef struct mg_tunnel_spec {
    const char *route, *upstream, *target; /* names for the log and metrics (copied) */
    const char *trace_id;                  /* the handshake's (copied) */
    mg_sema_t *sema;                       /* the permit the tunnel now owns, or NULL */
    int websocket;                         /* the upgrade was to WebSocket: frame boundaries are followed */
} mg_tunnel_spec_t;

extern const mg_conn_proto_t mg_tunnel_proto;

/*
 * Turns c (whose 101 head is queued in c->out) and uc (handed over by
 * mg_proxy_hand_over; bytes after the upstream's 101 head still in uc->in)
 * into a tunnel. From here the tunnel owns both connections and the permit.
 */
void mg_tunnel_start(mg_conn_t *c, mg_upconn_t *uc, const mg_tunnel_spec_t *spec);

/*
 * The drain ended (mg_worker): every upgraded connection of w (tunnels and
 * WebSocket endpoints) is ended, with a WebSocket close frame 1001 "going
 * away" to each side where one can be inserted (at a frame boundary), and a
 * lingering close. Returns how many there were.
 */
int mg_upgraded_shutdown(mg_worker_t *w);

/* The tunnels open on w (for tests and status). */
size_t mg_tunnel_count(mg_worker_t *w);

#endif
