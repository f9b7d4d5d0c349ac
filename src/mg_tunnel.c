/*
 * mg_tunnel — see mg_tunnel.h.
 *
 * Client → upstream: mg_conn reads into c->in; each input pass sends it on
 * at once (a direct send on a plain upstream with nothing queued, else
 * through uc->out). While uc->out holds bytes the upstream has not taken,
 * the client is not read: its bytes wait in the kernel, so a slow upstream
 * costs at most one read buffer here.
 *
 * Upstream → client: one read into a stack buffer, sent on at once (plain
 * client, nothing queued) or queued in c->out; above OUT_HIGH queued the
 * upstream is not read until c->out drains.
 *
 * Idle memory: an empty c->in is given back after each pass (mg_conn_idle;
 * mg_conn allocates one again on the next read), evbuffers hold no chains when empty, and
 * uc->in was freed at the hand-over: an idle tunnel is the two connection
 * structs, their SSL state if any, and this struct.
 *
 * The idle timer is lazy: I/O only stores the time; the timer (c->timer)
 * fires after timeouts.tunnel and re-arms for what is left.
 */
#define _GNU_SOURCE
#include "mg_tunnel.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/rand.h>

#include "mg_log.h"
#include "mg_ws.h"
#include "mg_ws_lua.h"

#define OUT_HIGH (64 * 1024) /* bytes queued for a slow reader before the other side is not read */
#define READ_CHUNK 16384

typedef struct mg_tunnel {
    mg_conn_t *c;
    mg_upconn_t *uc;
    mg_worker_t *w;
    mg_sema_t *sema;              /* the permit held, or NULL */
    mg_series_t *route_s, *up_s;
    uint32_t idle_ms;
    uint64_t start_us, last_us;
    uint64_t bytes[2];            /* [0] client → upstream, [1] upstream → client */
    unsigned websocket:1;
    unsigned up_paused:1;         /* the upstream is not read: c->out is full */
    unsigned client_paused:1;     /* the client is not read: uc->out is not empty */
    unsigned ended:1;
    mg_ws_track_t trk[2];         /* frame boundaries each way (WebSocket) */
    const char *closer;           /* who sent the first close frame (WebSocket), or NULL */
    char *route, *upstream, *target, *trace_id;
    char remote[64];
    char names[];                 /* the four strings above */
} mg_tunnel_t;

static void tunnel_end(mg_tunnel_t *t, const char *by, const mg_error_t *err, int graceful);
static void tunnel_going_away(mg_tunnel_t *t, const mg_error_t *err, const char *reason);

static void access_line(mg_tunnel_t *t, const char *by, const mg_error_t *err)
{
    if (!mg_log_access_enabled())
        return;
    char ts[64], route[512], up[300], target[300], line[2048];
    mg_log_time(ts, sizeof(ts), mg_wall_time());
    mg_json_escape(route, sizeof(route), t->route, strlen(t->route));
    mg_json_escape(up, sizeof(up), t->upstream, strlen(t->upstream));
    mg_json_escape(target, sizeof(target), t->target, strlen(t->target));
    int n = snprintf(line, sizeof(line),
                     "{\"time\":\"%s\",\"trace_id\":\"%s\",\"remote\":\"%s\",\"event\":\"tunnel_end\","
                     "\"route\":\"%s\",\"upstream\":\"%s\",\"target\":\"%s\",\"duration_ms\":%.3f,"
                     "\"bytes_in\":%llu,\"bytes_out\":%llu,\"closed_by\":\"%s\"%s%s%s}\n",
                     ts, t->trace_id, t->remote, route, up, target, (double)(mg_now_us() - t->start_us) / 1000.0,
                     (unsigned long long)t->bytes[0], (unsigned long long)t->bytes[1], by,
                     err ? ",\"error\":\"" : "", err ? err->name : "", err ? "\"" : "");
    if (n > 0)
        mg_log_access_line(line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

/* Writes what the upstream takes. 0, or -1 when the tunnel ended. */
static int flush_up(mg_tunnel_t *t)
{
    mg_upconn_t *uc = t->uc;
    while (evbuffer_get_length(uc->out) > 0) {
        int n = mg_upconn_send(uc);
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            mg_upconn_wait_write(uc, t->w->cfg->send_timeout_ms);
            return 0;
        }
        tunnel_end(t, "upstream", MG_E(RESET), 0);
        return -1;
    }
    event_del(&uc->wev);
    return 0;
}

/* Client bytes arrived (or may go on after a pause): on to the upstream. */
static void client_input(mg_conn_t *c)
{
    mg_tunnel_t *t = c->proto_data;
    if (!t || t->client_paused)
        return;
    size_t n = c->in_len - c->in_off;
    if (n == 0) {
        mg_conn_idle(c); /* idle tunnels hold no input buffer (mg_conn makes one at the next read) */
        return;
    }
    const uint8_t *data = (const uint8_t *)c->in + c->in_off;
    mg_upconn_t *uc = t->uc;
    if (t->websocket) {
        mg_ws_track(&t->trk[0], data, n, 1);
        if (!t->closer && t->trk[0].closed)
            t->closer = "client";
    }
    t->bytes[0] += n;
    t->last_us = mg_now_us();
    size_t sent = 0;
    if (!uc->ssl && evbuffer_get_length(uc->out) == 0) {
        ssize_t k = send(uc->fd, data, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            tunnel_end(t, "upstream", MG_E(RESET), 0);
            return;
        }
        sent = k > 0 ? (size_t)k : 0;
    }
    if (sent < n)
        evbuffer_add(uc->out, data + sent, n - sent);
    mg_conn_consume(c, n);
    mg_conn_idle(c); /* idle tunnels hold no input buffer (mg_conn makes one at the next read) */
    if (sent < n && flush_up(t) < 0)
        return;
    if (evbuffer_get_length(uc->out) > 0) {
        t->client_paused = 1; /* the upstream is slower: the client's bytes wait in the kernel */
        mg_conn_set_reading(c, 0);
    }
}

/* The upstream took everything queued: the client may be read again. */
static void up_writable(mg_tunnel_t *t)
{
    if (flush_up(t) < 0 || evbuffer_get_length(t->uc->out) > 0)
        return;
    if (t->client_paused) {
        t->client_paused = 0;
        mg_conn_set_reading(t->c, 1);
        client_input(t->c);
    }
}

static void up_readable(mg_tunnel_t *t)
{
    mg_conn_t *c = t->c;
    char buf[READ_CHUNK];
    struct iovec iov = { buf, sizeof(buf) };
    ssize_t n = mg_upconn_readv(t->uc, &iov, 1);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        /* the upstream closed: what it sent goes out first (its close frame), then a lingering close */
        tunnel_end(t, "upstream", n == 0 ? NULL : MG_E(RESET), 1);
        return;
    }
    if (t->websocket) {
        mg_ws_track(&t->trk[1], (const uint8_t *)buf, (size_t)n, 0);
        if (!t->closer && t->trk[1].closed)
            t->closer = "upstream";
    }
    t->bytes[1] += (uint64_t)n;
    t->last_us = mg_now_us();
    size_t sent = 0;
    if (!c->ssl && evbuffer_get_length(c->out) == 0) {
        ssize_t k = send(c->fd, buf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            tunnel_end(t, "client", MG_E(RESET), 0);
            return;
        }
        sent = k > 0 ? (size_t)k : 0;
    }
    if (sent == (size_t)n)
        return;
    evbuffer_add(c->out, buf + sent, (size_t)n - sent);
    mg_conn_flush(c); /* arms the write event (send timeout) for what the kernel did not take */
    if (c->freed)
        return; /* the client is gone: closing ended the tunnel */
    if (evbuffer_get_length(c->out) > OUT_HIGH) {
        t->up_paused = 1; /* the client is slower: the upstream's bytes wait in the kernel */
        mg_upconn_read(t->uc, 0);
    }
}

static void up_event(mg_upconn_t *uc, int what)
{
    mg_tunnel_t *t = uc->owner;
    if (what == MG_UC_READ)
        up_readable(t);
    else if (what == MG_UC_WRITE)
        up_writable(t);
    else if (what == MG_UC_SEND_TIMEOUT)
        tunnel_end(t, "gateway", MG_E(SEND_TIMEOUT), 0);
}

static void on_drained(mg_conn_t *c)
{
    mg_tunnel_t *t = c->proto_data;
    if (t && t->up_paused) {
        t->up_paused = 0;
        mg_upconn_read(t->uc, 1);
    }
}

static void on_writable(mg_conn_t *c) {}

static void on_timeout(mg_conn_t *c)
{
    mg_tunnel_t *t = c->proto_data;
    if (!t)
        return;
    uint64_t idle_us = mg_now_us() - t->last_us, limit = (uint64_t)t->idle_ms * 1000;
    if (idle_us >= limit) {
        /* as at the end of a drain: each side is told (1001) where a frame can go, then a graceful close */
        tunnel_going_away(t, MG_E(TUNNEL_IDLE), "idle timeout");
        return;
    }
    mg_conn_arm(c, (uint32_t)((limit - idle_us + 999) / 1000));
}

static void on_eof(mg_conn_t *c)
{
    mg_tunnel_t *t = c->proto_data;
    if (t) {
        if (flush_up(t) == 0) /* what it sent last gets one try */
            tunnel_end(t, "client", NULL, 0);
        return;
    }
    mg_conn_close(c);
}

/* The worker drains: tunnels run on until the drain ends (mg_upgraded_shutdown). */
static void on_drain(mg_conn_t *c) {}

static void on_closing(mg_conn_t *c)
{
    mg_tunnel_t *t = c->proto_data;
    if (t)
        tunnel_end(t, "client", NULL, 0); /* freed for a reason of mg_conn's: a send timeout, a write error */
}

const mg_conn_proto_t mg_tunnel_proto = {
    .name = "tunnel",
    .input = client_input,
    .drained = on_drained,
    .writable = on_writable,
    .timeout = on_timeout,
    .eof = on_eof,
    .drain = on_drain,
    .closing = on_closing,
};

/*
 * The one end. graceful: the client gets what is queued for it, then a
 * lingering close; otherwise it is closed at once. The upstream is closed
 * now (whatever was queued for it got one try in the caller).
 */
static void tunnel_end(mg_tunnel_t *t, const char *by, const mg_error_t *err, int graceful)
{
    if (t->ended)
        return;
    t->ended = 1;
    if (!err && t->closer)
        by = t->closer; /* a WebSocket's closing handshake says who ended it, whoever's TCP close came first */
    access_line(t, by, err);
    __atomic_sub_fetch(&t->w->tunnels, 1, __ATOMIC_RELAXED);
    mg_series_t *s[2] = { t->route_s, t->up_s };
    for (int i = 0; i < 2; i++) {
        s[i]->tunnels_open--;
        s[i]->tunnel_bytes[0] += t->bytes[0];
        s[i]->tunnel_bytes[1] += t->bytes[1];
    }
    if (t->sema) {
        mg_sema_release(t->sema, 1);
        mg_sema_put(t->sema);
        t->sema = NULL;
    }
    mg_upconn_close(t->uc);
    mg_conn_t *c = t->c;
    c->proto_data = NULL;
    free(t);
    if (c->freed)
        return; /* called from its closing */
    if (graceful)
        mg_conn_begin_close(c);
    else
        mg_conn_close(c);
}

void mg_tunnel_start(mg_conn_t *c, mg_upconn_t *uc, const mg_tunnel_spec_t *spec)
{
    size_t lr = strlen(spec->route) + 1, lu = strlen(spec->upstream) + 1, lt = strlen(spec->target) + 1,
           li = strlen(spec->trace_id) + 1;
    mg_tunnel_t *t = mg_calloc(1, sizeof(*t) + lr + lu + lt + li);
    t->route = memcpy(t->names, spec->route, lr);
    t->upstream = memcpy(t->route + lr, spec->upstream, lu);
    t->target = memcpy(t->upstream + lu, spec->target, lt);
    t->trace_id = memcpy(t->target + lt, spec->trace_id, li);
    memcpy(t->remote, c->remote, sizeof(t->remote));
    t->c = c;
    t->uc = uc;
    t->w = c->worker;
    t->sema = spec->sema; /* the permit is ours now; the reference below keeps the semaphore */
    if (t->sema)
        mg_sema_ref(t->sema);
    t->websocket = spec->websocket ? 1 : 0;
    t->idle_ms = c->worker->gen->tunnel_timeout_ms; /* the current generation's: a reload applies to new tunnels */
    t->start_us = t->last_us = mg_now_us();
    t->route_s = mg_metrics_series(&c->worker->metrics, spec->route, 0);
    t->up_s = mg_metrics_series(&c->worker->metrics, spec->upstream, 1);
    __atomic_add_fetch(&c->worker->tunnels, 1, __ATOMIC_RELAXED);
    t->route_s->tunnels_open++;
    t->route_s->tunnels_total++;
    t->up_s->tunnels_open++;
    t->up_s->tunnels_total++;
    c->proto = &mg_tunnel_proto;
    c->proto_data = t;
    /* what the upstream sent after its 101 head (a first frame) follows the head to the client */
    size_t early = uc->in_len - uc->in_off;
    if (early) {
        evbuffer_add(c->out, uc->in + uc->in_off, early);
        if (t->websocket)
            mg_ws_track(&t->trk[1], (const uint8_t *)uc->in + uc->in_off, early, 0);
        t->bytes[1] += early;
    }
    mg_upconn_detach(uc, up_event, t);
    mg_upconn_read(uc, 1);
    mg_conn_arm(c, t->idle_ms);
    mg_conn_set_reading(c, 1);
    mg_conn_flush(c);
    if (c->freed)
        return;
    if (evbuffer_get_length(c->out) > OUT_HIGH) {
        t->up_paused = 1;
        mg_upconn_read(uc, 0);
    }
    if (!c->processing)
        client_input(c); /* bytes the client sent right after its request head */
}

/* A close frame 1001 with a short reason: masked towards the upstream (we are its client there). */
static void going_away_frame(struct evbuffer *out, int masked, const char *reason)
{
    uint8_t f[MG_WS_MAX_HEAD + 32], key[4] = { 0, 0, 0, 0 }, payload[32] = { 1001 >> 8, 1001 & 0xFF };
    size_t rn = strlen(reason), n = 2 + (rn < sizeof(payload) - 2 ? rn : sizeof(payload) - 2);
    memcpy(payload + 2, reason, n - 2);
    if (masked && RAND_bytes(key, 4) != 1)
        key[0] = 0x5A; /* any mask is well-formed; the mask only guards intermediaries' caches */
    size_t h = mg_ws_head(f, MG_WS_CLOSE, 1, n, masked ? key : NULL);
    if (masked)
        mg_ws_mask(payload, n, key, 0);
    memcpy(f + h, payload, n);
    evbuffer_add(out, f, h + n);
}

/* The gateway ends the tunnel (drain over, idle): a close frame each way where one fits, then a graceful end. */
static void tunnel_going_away(mg_tunnel_t *t, const mg_error_t *err, const char *reason)
{
    /* not to a side whose peer closed already: its close went through, a second one would break the protocol */
    if (t->websocket && mg_ws_track_boundary(&t->trk[0]) && !t->trk[0].closed) {
        going_away_frame(t->uc->out, 1, reason);
        if (flush_up(t) < 0) /* one try: the tunnel ends now */
            return;
    }
    if (t->websocket && mg_ws_track_boundary(&t->trk[1]) && !t->trk[1].closed)
        going_away_frame(t->c->out, 0, reason);
    tunnel_end(t, "gateway", err, 1);
}

int mg_upgraded_shutdown(mg_worker_t *w)
{
    int n = 0;
    for (mg_conn_t *c = w->conns, *next; c; c = next) {
        next = c->next;
        if (c->proto == &mg_tunnel_proto && c->proto_data) {
            tunnel_going_away(c->proto_data, MG_E(SHUTDOWN), "going away");
            n++;
        } else if (c->proto == &mg_ws_lua_proto && c->proto_data) {
            mg_ws_lua_going_away(c);
            n++;
        }
    }
    return n;
}

size_t mg_tunnel_count(mg_worker_t *w)
{
    size_t n = 0;
    for (mg_conn_t *c = w->conns; c; c = c->next)
        n += c->proto == &mg_tunnel_proto && c->proto_data;
    return n;
}
