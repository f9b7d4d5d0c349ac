/*
 * mg_h2up — see mg_h2up.h.
 *
 * A session owns its mg_upconn (handler = on_conn) for its whole life; it is
 * never pooled. Frames go out through nghttp2_session_mem_send into the
 * connection's output evbuffer and mg_upconn_send; bytes read are fed to
 * nghttp2_session_mem_recv. Exchanges on a session are linked through
 * p->h2next; a stream's user data is its exchange while attached.
 *
 * Re-entrancy: the owner's callbacks run inside nghttp2's receive callbacks
 * (submitting and resetting streams there is allowed); they may end the
 * exchange (mg_proxy_cancel → mg_h2up_detach), which only submits a reset
 * and unlinks. A session is freed only outside nghttp2's calls (dead_sess at
 * the end of a read or a timer), never from a callback.
 */
#include "mg_h2up.h"

#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <strings.h>

#include "mg_log.h"
#include "mg_trace.h"

#define DEFAULT_MAX_STREAMS 100      /* until the server's SETTINGS say */

#define BODY_HIGH (256 * 1024)       /* request body queued on a stream before the owner is paused */
#define STREAM_WINDOW (1024 * 1024)  /* response bytes a stream may have in flight (back-pressure) */

typedef struct mg_h2sess {
    mg_target_t *t;
    mg_upconn_t *uc;
    nghttp2_session *ng;
    int ready;                   /* connected (and TLS done): streams may be submitted */
    int dead;                    /* GOAWAY received or the connection failed: no new streams */
    int nstreams;                /* exchanges attached (waiting or submitted) */
    int total;                   /* streams it carried (pool.max_requests ends its use) */
    int in_io;                   /* inside mem_recv / mem_send: do not free */
    int closing;                 /* sess_close runs: it frees the session */
    int ping_due;                /* a PING is outstanding */
    int got_bytes;               /* the server sent something (its first bytes must be HTTP/2's SETTINGS) */
    int broke;                   /* the server broke HTTP/2: our nghttp2 ended the session with GOAWAY */
    char why[160];               /* its error code and reason (the GOAWAY's debug data) */
    uint64_t last_read_ms;       /* the last frame from the server */
    uint64_t last_used_ms;       /* the last time a stream was on it (idle timeout) */
    mg_proxy_t *exchanges;
    struct mg_h2sess *next;      /* the target's sessions */
} mg_h2sess_t;

static void sess_send(mg_h2sess_t *s);
static void sess_close(mg_h2sess_t *s, const mg_error_t *why);

/* pool.ping_interval: a session quiet this long is PINGed (10 s by default) */
static uint32_t ping_ms(const mg_h2sess_t *s) { return s->t->up->ping_ms ? s->t->up->ping_ms : 10000; }
static void sess_free(mg_h2sess_t *s);

static mg_h2sess_t **sessions(mg_target_t *t) { return (mg_h2sess_t **)&t->h2; }

static void unlink_exchange(mg_h2sess_t *s, mg_proxy_t *p)
{
    for (mg_proxy_t **pp = &s->exchanges; *pp; pp = &(*pp)->h2next)
        if (*pp == p) {
            *pp = p->h2next;
            break;
        }
    p->h2next = NULL;
    p->h2s = NULL;
    s->nstreams--;
}

static void stop_timer(mg_proxy_t *p)
{
    if (p->h2_timer_set) {
        event_del(&p->h2_timer);
        p->h2_timer_set = 0;
    }
}

/*
 * A stream's timer: the connect timeout until it has a stream; then the send
 * timeout while request bytes wait to go out (re-armed by each frame that
 * goes; off while the request waits for its own client: a bidirectional
 * call may be quiet for as long as its caller is); once the request is out,
 * the read timeout, re-armed by every frame of the stream.
 */
static void on_stream_timer(evutil_socket_t fd, short what, void *arg)
{
    mg_proxy_t *p = arg;
    p->h2_timer_set = 0;
    const mg_error_t *kind = !p->h2id ? MG_E(CONNECT_TIMEOUT) : p->h2_reading ? MG_E(READ_TIMEOUT) : MG_E(SEND_TIMEOUT);
    if (p->h2id && !p->h2_reading)
        mg_log_info(NULL, "upstream %s: %s took no request bytes for %u ms (stream %d)", p->up->name,
                    p->target->text, p->up->send_ms, p->h2id);
    mg__proxy_fail(p, kind, !p->wrote);
}

static void arm_stream_timer(mg_proxy_t *p, uint32_t ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    if (!p->h2_timer_set) {
        evtimer_assign(&p->h2_timer, p->up->base, on_stream_timer, p);
        p->h2_timer_set = 1;
    }
    evtimer_add(&p->h2_timer, &tv);
}

/* More idle sessions on t than pool.max_idle keeps? */
static int too_many_idle(mg_target_t *t)
{
    int idle = 0;
    for (mg_h2sess_t *s = *sessions(t); s; s = s->next)
        idle += !s->exchanges;
    return idle > t->up->max_idle;
}

/* Detaches p from its stream and session; the stream is reset unless it ended. */
void mg_h2up_detach(mg_proxy_t *p)
{
    mg_h2sess_t *s = p->h2s;
    stop_timer(p);
    if (p->h2body) {
        evbuffer_free(p->h2body);
        p->h2body = NULL;
    }
    if (!s)
        return;
    if (p->h2id) {
        nghttp2_session_set_stream_user_data(s->ng, p->h2id, NULL);
        if (!p->h2_ended)
            nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, p->h2id, NGHTTP2_CANCEL);
    }
    unlink_exchange(s, p);
    p->target->inflight--;
    p->h2id = 0;
    s->last_used_ms = mg_now_ms();
    int used_up = s->total >= p->up->max_requests;
    if ((s->dead || used_up || too_many_idle(s->t)) && !s->exchanges && !s->in_io && !s->closing) {
        sess_free(s); /* after a GOAWAY or pool.max_requests, the last stream is done; or pool.max_idle */
        return;
    }
    sess_send(s);
}

/* ---- sending ---- */

static ssize_t on_send(nghttp2_session *ng, const uint8_t *data, size_t len, int flags, void *arg)
{
    mg_h2sess_t *s = arg;
    if (evbuffer_get_length(s->uc->out) > 4 * BODY_HIGH)
        return NGHTTP2_ERR_WOULDBLOCK; /* the socket is slower: nghttp2 keeps the frames */
    evbuffer_add(s->uc->out, data, len);
    return (ssize_t)len;
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *f, void *arg)
{
    mg_h2sess_t *s = arg;
    if (f->hd.type == NGHTTP2_GOAWAY && f->goaway.error_code != NGHTTP2_NO_ERROR) {
        /* we never end a session so ourselves: nghttp2 found a connection error; its reason is the debug data */
        s->broke = 1;
        snprintf(s->why, sizeof(s->why), "%s%s%.*s", nghttp2_http2_strerror(f->goaway.error_code),
                 f->goaway.opaque_data_len ? ", " : "", (int)f->goaway.opaque_data_len,
                 (const char *)f->goaway.opaque_data);
        return 0;
    }
    mg_proxy_t *p = f->hd.stream_id ? nghttp2_session_get_stream_user_data(ng, f->hd.stream_id) : NULL;
    if (!p)
        return 0;
    if (f->hd.type == NGHTTP2_RST_STREAM) {
        /* a stream we still hold is reset by nghttp2 itself (our own CANCEL detaches first): the
         * upstream's answer broke a rule (DATA to HEAD, a bad content-length, a forbidden field) */
        p->h2_we_reset = 1;
        return 0;
    }
    if (f->hd.type == NGHTTP2_HEADERS) {
        p->wrote = 1; /* the upstream may have seen the request from now on */
        if (p->trace)
            mg_trace_proxy(p, MG_TRACE_CONNECTED, NULL); /* the timeline's "connect": until the stream could go */
    }
    if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA)
        return 0;
    if (f->hd.flags & NGHTTP2_FLAG_END_STREAM) {
        p->h2_reading = 1;
        arm_stream_timer(p, p->up->read_ms); /* all sent: now the read timeout runs */
        if (p->trace)
            mg_trace_proxy(p, MG_TRACE_SENT, NULL);
    } else if (p->h2body && evbuffer_get_length(p->h2body) > 0) {
        arm_stream_timer(p, p->up->send_ms); /* progress; more waits for the upstream's window */
    } else {
        stop_timer(p); /* all the client gave is out: its own body timeout and the deadline bound the wait */
    }
    return 0;
}

/* The request body, as flow control lets it out. */
static ssize_t on_read_body(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                            nghttp2_data_source *src, void *arg)
{
    mg_proxy_t *p = src->ptr;
    size_t have = p->h2body ? evbuffer_get_length(p->h2body) : 0;
    if (have == 0 && !p->body_done) {
        p->h2_deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t n = have < len ? have : len;
    if (n)
        evbuffer_remove(p->h2body, buf, n);
    p->body_sent += (int64_t)n;
    if (n == have && p->body_done)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    else if (!p->body_done && !p->body_wanted && have - n < BODY_HIGH / 2)
        p->h2_want_body = 1; /* asked for more after the send (not from inside nghttp2) */
    return (ssize_t)n;
}

/* Writes what nghttp2 has; then asks owners whose streamed bodies drained for more. */
static void sess_send(mg_h2sess_t *s)
{
    if (s->in_io || !s->ready || !s->uc)
        return;
    s->in_io = 1;
    int rc = nghttp2_session_send(s->ng);
    s->in_io = 0;
    if (rc != 0) {
        sess_close(s, MG_E(RESET));
        return;
    }
    if (s->broke && !s->closing) {
        /* nghttp2 found a connection error in what the server sent and ends the session with GOAWAY */
        mg_upconn_send(s->uc); /* the GOAWAY, as far as the socket takes it: the server learns why */
        mg_log_warn(NULL, "upstream %s: %s broke HTTP/2 (%s): connection closed", s->t->up->name, s->t->text,
                    s->why);
        sess_close(s, MG_E(PROTOCOL));
        return;
    }
    while (evbuffer_get_length(s->uc->out) > 0) {
        int n = mg_upconn_send(s->uc);
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            mg_upconn_wait_write(s->uc, s->t->up->send_ms);
            return;
        }
        sess_close(s, MG_E(RESET));
        return;
    }
    event_del(&s->uc->wev);
    /* owners whose streamed bodies drained get asked for more, looked up again by stream id:
     * one of them may end another (and then its stream is gone) */
    int32_t ids[64];
    int n = 0;
    for (mg_proxy_t *p = s->exchanges; p && n < (int)mg_countof(ids); p = p->h2next)
        if (p->h2_want_body && p->h2id) {
            p->h2_want_body = 0;
            ids[n++] = p->h2id;
        }
    s->in_io = 1; /* the session stays while they run */
    for (int i = 0; i < n; i++) {
        mg_proxy_t *p = nghttp2_session_get_stream_user_data(s->ng, ids[i]);
        if (p && p->running && p->ops->on_body_wanted) {
            p->body_wanted = 1;
            p->ops->on_body_wanted(p);
        }
    }
    s->in_io = 0;
    if (s->dead && !s->exchanges && !s->closing)
        sess_free(s);
    else if (n)
        sess_send(s); /* what they wrote */
}

/* ---- receiving ---- */

static char *copy(mg_proxy_t *p, const uint8_t *b, size_t n) { return mg_pool_strndup(p->pool, (const char *)b, n); }

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *arg)
{
    mg_proxy_t *p = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (p && !p->head_seen) {
        p->resp.num_headers = 0; /* an interim response's fields are not the final one's */
        p->resp.status = 0;
        p->resp.content_length = -1;
    }
    return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                     const uint8_t *value, size_t vl, uint8_t flags, void *arg)
{
    mg_proxy_t *p = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (!p)
        return 0;
    if (p->head_seen) { /* trailers */
        if (p->h2_ntrailers >= MG_PROXY_MAX_TRAILERS)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        p->trailers[p->h2_ntrailers++] = (mg_header_t){ copy(p, name, nl), nl, copy(p, value, vl), vl };
        return 0;
    }
    if (nl == 7 && memcmp(name, ":status", 7) == 0) {
        int st = 0;
        for (size_t i = 0; i < vl; i++)
            st = st * 10 + (value[i] - '0'); /* three digits: nghttp2 checked it */
        p->resp.status = st;
        return 0;
    }
    if (p->resp.num_headers >= MG_PROXY_MAX_HEADERS)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* more fields than we relay: the stream is reset */
    p->headers[p->resp.num_headers++] = (mg_header_t){ copy(p, name, nl), nl, copy(p, value, vl), vl };
    if (nl == 14 && memcmp(name, "content-length", 14) == 0) {
        int64_t v = 0;
        for (size_t i = 0; i < vl; i++)
            v = v * 10 + (value[i] - '0');
        p->resp.content_length = v;
    }
    return 0;
}

/* The stream ended well: trailers (if any) to the owner, then success. */
static void stream_end(mg_proxy_t *p)
{
    p->h2_ended = 1;
    if (p->h2_ntrailers && p->ops->on_trailers)
        p->ops->on_trailers(p, p->trailers, p->h2_ntrailers);
    if (p->running)
        mg__proxy_succeed(p);
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *arg)
{
    mg_h2sess_t *s = arg;
    if (f->hd.type == NGHTTP2_GOAWAY) {
        /* streams above last_stream_id are closed by nghttp2 as refused: resent elsewhere */
        s->dead = 1;
        mg_log_info(NULL, "upstream %s: %s sent GOAWAY (last stream %d)", s->t->up->name, s->t->text,
                    f->goaway.last_stream_id);
        return 0;
    }
    if (f->hd.type == NGHTTP2_PING && (f->hd.flags & NGHTTP2_FLAG_ACK)) {
        s->ping_due = 0;
        mg_upconn_timer(s->uc, ping_ms(s));
        return 0;
    }
    mg_proxy_t *p = f->hd.stream_id ? nghttp2_session_get_stream_user_data(ng, f->hd.stream_id) : NULL;
    if (!p)
        return 0;
    int end = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (p->h2_reading)
        arm_stream_timer(p, p->up->read_ms);
    if (f->hd.type == NGHTTP2_HEADERS) {
        if (!p->head_seen) {
            if (!p->ttfb_us)
                p->ttfb_us = (uint32_t)(mg_now_us() - p->t_start);
            if (p->trace && !p->got_byte)
                mg_trace_proxy(p, MG_TRACE_FIRST_BYTE, NULL);
            p->got_byte = 1;
            p->resp.minor_version = 1;
            p->resp.headers = p->headers;
            if (p->resp.status >= 100 && p->resp.status < 200) {
                if (p->resp.status != 100 && p->ops->on_interim)
                    p->ops->on_interim(p, &p->resp);
                return 0;
            }
            p->head_seen = 1;
            /* END_STREAM on the head: nothing follows (a gRPC trailers-only answer is such a head) */
            p->framing = end || p->head_request || p->resp.status == 204 || p->resp.status == 304 ? MG_BODY_NONE
                       : p->resp.content_length >= 0 ? MG_BODY_LENGTH : MG_BODY_CHUNKED;
            int pause = p->ops->on_head(p, &p->resp);
            if (!p->running)
                return 0;
            p->paused = pause;
            p->h2_delivered = 1;
        }
        if (end)
            stream_end(p);
    } else if (f->hd.type == NGHTTP2_DATA && end) {
        stream_end(p);
    }
    return 0;
}

static int on_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *arg)
{
    nghttp2_session_consume_connection(ng, len);
    mg_proxy_t *p = nghttp2_session_get_stream_user_data(ng, id);
    if (!p) {
        nghttp2_session_consume_stream(ng, id, len);
        return 0;
    }
    if (p->paused) {
        /* not expected (the window closes first), but bytes in flight must not be lost */
        p->h2_unconsumed += len;
    }
    int pause = p->ops->on_body(p, (const char *)data, len);
    if (!p->running)
        return 0; /* ended (client gone, a limit): detached, the stream was reset */
    p->h2_delivered = 1;
    if (pause) {
        p->paused = 1;
        p->h2_unconsumed += len; /* the window stays closed until mg_h2up_resume */
    } else {
        nghttp2_session_consume_stream(ng, id, len);
    }
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *arg)
{
    mg_proxy_t *p = nghttp2_session_get_stream_user_data(ng, id);
    if (!p)
        return 0;
    /* closed without its end (a reset, or refused: REFUSED_STREAM means not processed, RFC 9113 §8.7) */
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    p->h2_ended = 1;
    if (p->h2_we_reset) {
        mg_log_warn(NULL, "upstream %s: %s broke HTTP/2 on stream %d: the gateway reset it (%s)", p->up->name,
                    p->target->text, id, nghttp2_http2_strerror(code));
        mg__proxy_fail(p, MG_E(PROTOCOL), !p->wrote);
        return 0;
    }
    int refused = code == NGHTTP2_REFUSED_STREAM;
    if (!refused)
        mg_log_info(NULL, "upstream %s: %s reset stream %d (%s)", p->up->name, p->target->text, id,
                    nghttp2_http2_strerror(code));
    mg__proxy_fail(p, MG_E(RESET), refused || !p->wrote);
    return 0;
}

/* ---- the session ---- */

static void sess_free(mg_h2sess_t *s)
{
    for (mg_h2sess_t **pp = sessions(s->t); *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    if (s->uc)
        mg_upconn_close(s->uc);
    nghttp2_session_del(s->ng);
    free(s);
}

/* The connection is gone or useless: every exchange on it fails (resent when the rules allow), then it is freed. */
static void sess_close(mg_h2sess_t *s, const mg_error_t *why)
{
    s->dead = 1;
    if (s->in_io || s->closing)
        return; /* the caller (a read or a send) finishes the job */
    s->closing = 1;
    while (s->exchanges) {
        mg_proxy_t *p = s->exchanges;
        if (p->h2id)
            nghttp2_session_set_stream_user_data(s->ng, p->h2id, NULL);
        p->h2_ended = 1;
        int never_left = !p->wrote;
        mg__proxy_fail(p, why, never_left); /* detaches p from s (the list shrinks) */
        if (s->exchanges == p)
            unlink_exchange(s, p); /* a fail that did not detach (cannot happen, but never loop) */
    }
    sess_free(s);
}

/* Opens the exchange's stream on a ready session. */
static void submit(mg_h2sess_t *s, mg_proxy_t *p)
{
    mg_upreq_t q = { .method = { "GET", 3 } };
    mg_resp_init(&q.fields, p->pool, 0);
    p->ops->build_head(p, p->target, &q);
    nghttp2_nv *nv = mg_pool_alloc(p->pool, sizeof(*nv) * (q.fields.n + 6));
    size_t n = 0;
#define NV(nm, nlen, v, vlen) (nv[n++] = (nghttp2_nv){ (uint8_t *)(nm), (uint8_t *)(v), (nlen), (vlen), NGHTTP2_NV_FLAG_NONE })
    int tls = p->up->protocol == MG_UP_H2;
    NV(":method", 7, q.method.p, q.method.n);
    NV(":scheme", 7, tls ? "https" : "http", tls ? 5u : 4u);
    NV(":authority", 10, q.authority.p, q.authority.n);
    NV(":path", 5, q.target.p, q.target.n);
    for (size_t i = 0; i < q.fields.n; i++) {
        const mg_header_t *h = &q.fields.h[i];
        if (mg_http1_name_is(h, "host", 4) || mg_http1_name_is(h, "connection", 10) ||
            mg_http1_name_is(h, "keep-alive", 10) || mg_http1_name_is(h, "proxy-connection", 16) ||
            mg_http1_name_is(h, "transfer-encoding", 17) || mg_http1_name_is(h, "upgrade", 7))
            continue; /* connection-specific: not in HTTP/2 (RFC 9113 §8.2.2) */
        char *lower = mg_pool_alloc(p->pool, h->name_len);
        mg_lowercase(lower, h->name, h->name_len);
        NV(lower, h->name_len, h->value, h->value_len);
    }
    char cl[24];
    if (p->body_mode == MG_BODY_LENGTH) {
        int l = snprintf(cl, sizeof(cl), "%lld", (long long)p->body_len);
        NV("content-length", 14, cl, (size_t)l);
    }
#undef NV
    p->body_sent = 0;
    p->body_done = p->body_mode == MG_BODY_NONE;
    p->body_wanted = 0;
    if (p->body_mode != MG_BODY_NONE) {
        p->h2body = evbuffer_new();
        if (p->body) { /* a replayable body: copied, so a retry can send it again */
            struct evbuffer_iovec v[16];
            int k = evbuffer_peek(p->body, -1, NULL, v, 16);
            for (int i = 0; i < k && i < 16; i++)
                evbuffer_add(p->h2body, v[i].iov_base, v[i].iov_len);
            p->body_done = 1;
        } else {
            p->h2_want_body = 1;
        }
    }
    nghttp2_data_provider prd = { .source.ptr = p, .read_callback = on_read_body };
    int32_t id = nghttp2_submit_request(s->ng, NULL, nv, n, p->body_mode != MG_BODY_NONE ? &prd : NULL, p);
    if (id < 0) {
        mg__proxy_fail(p, MG_E(RESET), 1);
        return;
    }
    p->h2id = id;
    /* the response may not fill more than its window: the owner's pause holds the rest upstream */
    nghttp2_session_set_local_window_size(s->ng, NGHTTP2_FLAG_NONE, id, STREAM_WINDOW);
    arm_stream_timer(p, p->up->send_ms); /* until the request is out: the send timeout */
}

static void sess_ready(mg_h2sess_t *s)
{
    s->ready = 1;
    mg_upconn_timer(s->uc, ping_ms(s));
    s->last_read_ms = s->last_used_ms = mg_now_ms();
    for (mg_proxy_t *p = s->exchanges, *next; p; p = next) {
        next = p->h2next;
        p->connect_us = (uint32_t)(mg_now_us() - p->t_attempt);
        if (!p->h2id)
            submit(s, p);
    }
    sess_send(s);
}

/*
 * The server's first bytes must be a SETTINGS frame (RFC 9113 §3.4: its
 * preface): the 4th byte is the frame type, 4. Anything else is a server
 * that does not speak HTTP/2, most often HTTP/1.1 answering our preface as
 * a bad request: say so with its first line.
 */
static int not_http2(mg_h2sess_t *s, const char *buf, size_t n)
{
    if (n < 4 || (unsigned char)buf[3] == NGHTTP2_SETTINGS)
        return 0;
    char line[80];
    size_t k = 0;
    for (size_t i = 0; i < n && k < sizeof(line) - 1 && buf[i] != '\r' && buf[i] != '\n'; i++)
        line[k++] = buf[i] >= 0x20 && buf[i] < 0x7f ? buf[i] : '?';
    line[k] = '\0';
    mg_log_warn(NULL, "upstream %s: %s does not speak HTTP/2 (protocol = \"%s\"): it answered '%s'", s->t->up->name,
                s->t->text, s->t->up->protocol == MG_UP_H2 ? "h2" : "h2c", line);
    return 1;
}

static void sess_read(mg_h2sess_t *s)
{
    mg_upconn_t *uc = s->uc;
    char buf[32768];
    for (int round = 0; round < 8; round++) {
        struct iovec iov = { buf, sizeof(buf) };
        ssize_t n = mg_upconn_readv(uc, &iov, 1);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            break;
        if (n <= 0) {
            sess_close(s, uc->tls_rejected ? MG_E(TLS_HANDSHAKE) : MG_E(RESET));
            return;
        }
        s->last_read_ms = mg_now_ms();
        if (!s->got_bytes) {
            s->got_bytes = 1;
            if (not_http2(s, buf, (size_t)n)) {
                sess_close(s, MG_E(PROTOCOL));
                return;
            }
        }
        s->in_io = 1;
        ssize_t used = nghttp2_session_mem_recv(s->ng, (const uint8_t *)buf, (size_t)n);
        s->in_io = 0;
        if (used < 0) {
            mg_log_warn(NULL, "upstream %s: HTTP/2 from %s: %s", s->t->up->name, s->t->text,
                        nghttp2_strerror((int)used));
            sess_close(s, MG_E(PROTOCOL));
            return;
        }
        if (s->dead && !s->exchanges) { /* GOAWAY and nothing left on it */
            sess_close(s, MG_E(RESET));
            return;
        }
        if ((size_t)n < sizeof(buf))
            break;
    }
    /* what was delivered in this read goes to the clients now (one write per read, as from HTTP/1.1) */
    int32_t ids[64];
    int k = 0;
    for (mg_proxy_t *p = s->exchanges; p && k < (int)mg_countof(ids); p = p->h2next)
        if (p->h2_delivered && p->h2id) {
            p->h2_delivered = 0;
            ids[k++] = p->h2id;
        }
    for (int i = 0; i < k; i++) {
        mg_proxy_t *p = nghttp2_session_get_stream_user_data(s->ng, ids[i]);
        if (p && p->running && !p->paused && p->ops->on_wait)
            p->ops->on_wait(p);
    }
    sess_send(s);
}

/* The TLS handshake goes on; ALPN must say h2 (an upstream that only speaks HTTP/1.1 is misconfigured). */
static void sess_handshake(mg_h2sess_t *s)
{
    int rc = mg_upconn_handshake(s->uc);
    if (rc == 0)
        return;
    if (rc < 0) {
        sess_close(s, rc == MG_UC_TLS_UNTRUSTED ? MG_E(TLS_VERIFY) : MG_E(TLS_HANDSHAKE));
        return;
    }
    if (!mg_tls_alpn_is_h2(s->uc->ssl)) {
        mg_log_warn(NULL, "upstream %s: %s did not agree to h2 by ALPN (protocol = \"h2\")", s->t->up->name,
                    s->t->text);
        sess_close(s, MG_E(PROTOCOL));
        return;
    }
    sess_ready(s);
}

static void on_conn(mg_upconn_t *uc, int what)
{
    mg_h2sess_t *s = uc->owner;
    if (what == MG_UC_TIMER) {
        uint64_t now = mg_now_ms();
        if (!s->ready) {
            sess_close(s, MG_E(CONNECT_TIMEOUT));
            return;
        }
        if (s->ping_due) {
            mg_log_warn(NULL, "upstream %s: %s did not answer a PING: connection closed", s->t->up->name,
                        s->t->text);
            sess_close(s, MG_E(READ_TIMEOUT));
            return;
        }
        if (!s->exchanges && now - s->last_used_ms >= s->t->up->idle_timeout_ms) {
            sess_free(s); /* unused for the pool's idle timeout */
            return;
        }
        if (now - s->last_read_ms < ping_ms(s)) {
            mg_upconn_timer(uc, (uint32_t)(ping_ms(s) - (now - s->last_read_ms)));
            return;
        }
        /* quiet for a while: a PING tells a live connection from a dead one */
        nghttp2_submit_ping(s->ng, NGHTTP2_FLAG_NONE, NULL);
        s->ping_due = 1;
        mg_upconn_timer(uc, s->t->up->connect_ms); /* the answer must come as fast as a connect */
        sess_send(s);
        return;
    }
    if (!uc->connected) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(uc->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            sess_close(s, err == ECONNREFUSED ? MG_E(REFUSED) : MG_E(RESET));
            return;
        }
        uc->connected = 1;
        event_del(&uc->wev);
        mg_upconn_read(uc, 1);
        if (uc->ssl)
            sess_handshake(s);
        else
            sess_ready(s);
        return;
    }
    if (!mg_upconn_ready(uc)) {
        sess_handshake(s);
        return;
    }
    if (what == MG_UC_SEND_TIMEOUT) {
        sess_close(s, MG_E(SEND_TIMEOUT));
        return;
    }
    if (what == MG_UC_READ)
        sess_read(s);
    else
        sess_send(s);
}

static mg_h2sess_t *sess_new(mg_target_t *t)
{
    mg_upconn_t *uc = mg_upstream_lease(t, on_conn, NULL, MG_LEASE_FRESH);
    if (!uc)
        return NULL;
    mg_h2sess_t *s = mg_calloc(1, sizeof(*s));
    s->t = t;
    s->uc = uc;
    uc->owner = s;
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_send_callback(cb, on_send);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_option *opt;
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_peer_max_concurrent_streams(opt, DEFAULT_MAX_STREAMS);
    nghttp2_session_client_new2(&s->ng, cb, s, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry iv[] = {
        { NGHTTP2_SETTINGS_ENABLE_PUSH, 0 },
        { NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW },
    };
    nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, iv, mg_countof(iv));
    nghttp2_session_set_local_window_size(s->ng, NGHTTP2_FLAG_NONE, 0, 16 * 1024 * 1024);
    s->next = *sessions(t);
    *sessions(t) = s;
    /* nothing here may close the session: the caller attaches its exchange first */
    if (uc->connected && !uc->ssl) {
        mg_upconn_read(uc, 1);
        s->ready = 1; /* the caller submits its stream and sends */
        s->last_read_ms = s->last_used_ms = mg_now_ms();
        mg_upconn_timer(uc, ping_ms(s));
    } else {
        if (uc->connected)
            mg_upconn_read(uc, 1); /* the TLS handshake starts when the socket is writable */
        mg_upconn_timer(uc, t->up->connect_ms); /* also bounds the TLS handshake */
        mg_upconn_wait_write(uc, 0);
    }
    return s;
}

/* A session of t with room for one more stream, or NULL. */
static mg_h2sess_t *sess_with_room(mg_target_t *t)
{
    for (mg_h2sess_t *s = *sessions(t); s; s = s->next) {
        if (s->dead || s->total >= t->up->max_requests)
            continue;
        uint32_t max = s->ready ? nghttp2_session_get_remote_settings(s->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)
                                : DEFAULT_MAX_STREAMS;
        if ((uint32_t)s->nstreams < max)
            return s;
    }
    return NULL;
}

void mg_h2up_attempt(mg_proxy_t *p, mg_target_t *t)
{
    p->h2id = 0;
    p->h2_ended = 0;
    p->h2_reading = 0;
    p->h2_ntrailers = 0;
    p->h2_unconsumed = 0;
    p->head_seen = 0;
    p->framing = MG_BODY_NONE;
    mg_h2sess_t *s = sess_with_room(t);
    if (!s && !(s = sess_new(t))) {
        mg__proxy_fail(p, errno == ECONNREFUSED ? MG_E(REFUSED) : MG_E(RESET), 1);
        return;
    }
    t->inflight++;
    p->h2s = s;
    p->h2next = s->exchanges;
    s->exchanges = p;
    s->nstreams++;
    s->total++;
    if (s->ready) {
        p->connect_us = 0; /* multiplexed on an open connection */
        submit(s, p);
        if (p->h2s)
            sess_send(s);
    } else {
        arm_stream_timer(p, p->up->connect_ms);
    }
}

int mg_h2up_write_body(mg_proxy_t *p, const char *data, size_t len)
{
    mg_h2sess_t *s = p->h2s;
    if (!s || !p->h2body || !len)
        return 0;
    evbuffer_add(p->h2body, data, len);
    if (!p->h2_timer_set)
        arm_stream_timer(p, p->up->send_ms); /* until a frame takes them */
    if (p->h2_deferred) {
        p->h2_deferred = 0;
        nghttp2_session_resume_data(s->ng, p->h2id);
    }
    p->body_wanted = 0;
    sess_send(s);
    if (!p->h2s)
        return 1; /* ended meanwhile */
    if (evbuffer_get_length(p->h2body) > BODY_HIGH)
        return 1; /* on_body_wanted follows when it drained */
    p->body_wanted = 1;
    return 0;
}

void mg_h2up_end_body(mg_proxy_t *p)
{
    mg_h2sess_t *s = p->h2s;
    if (!s || p->body_done)
        return;
    p->body_done = 1;
    p->h2_want_body = 0;
    if (!p->h2_timer_set)
        arm_stream_timer(p, p->up->send_ms); /* until the END_STREAM goes */
    if (p->h2_deferred) {
        p->h2_deferred = 0;
        nghttp2_session_resume_data(s->ng, p->h2id);
    }
    sess_send(s);
}

void mg_h2up_resume(mg_proxy_t *p)
{
    mg_h2sess_t *s = p->h2s;
    if (!p->paused || !s)
        return;
    p->paused = 0;
    if (p->h2_unconsumed) {
        nghttp2_session_consume_stream(s->ng, p->h2id, p->h2_unconsumed);
        p->h2_unconsumed = 0;
    }
    sess_send(s);
}

void mg_h2up_figures(const mg_target_t *t, int *nsess, int *nstreams)
{
    *nsess = *nstreams = 0;
    for (const mg_h2sess_t *s = t->h2; s; s = s->next) {
        (*nsess)++;
        *nstreams += s->nstreams;
    }
}

void mg_h2up_target_free(mg_target_t *t)
{
    while (*sessions(t)) {
        mg_h2sess_t *s = *sessions(t);
        while (s->exchanges) { /* none should be left: their owners ended first */
            mg_proxy_t *p = s->exchanges;
            unlink_exchange(s, p);
            stop_timer(p);
        }
        sess_free(s);
    }
}

/* ---- active health checks over HTTP/2 ---- */

struct mg_h2check {
    nghttp2_session *ng;
    int status;
    struct evbuffer *out;
};

static ssize_t check_send(nghttp2_session *ng, const uint8_t *data, size_t len, int flags, void *arg)
{
    mg_h2check_t *c = arg;
    evbuffer_add(c->out, data, len);
    return (ssize_t)len;
}

static int check_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                        const uint8_t *value, size_t vl, uint8_t flags, void *arg)
{
    mg_h2check_t *c = arg;
    if (nl == 7 && memcmp(name, ":status", 7) == 0 && vl == 3 && value[0] != '1')
        c->status = (value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0');
    return 0;
}

mg_h2check_t *mg_h2check_new(const char *path, const char *authority, int tls, struct evbuffer *out)
{
    mg_h2check_t *c = mg_calloc(1, sizeof(*c));
    c->out = out;
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_send_callback(cb, check_send);
    nghttp2_session_callbacks_set_on_header_callback(cb, check_header);
    nghttp2_session_client_new(&c->ng, cb, c);
    nghttp2_session_callbacks_del(cb);
    nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, NULL, 0);
    nghttp2_nv nv[] = {
        { (uint8_t *)":method", (uint8_t *)"GET", 7, 3, NGHTTP2_NV_FLAG_NONE },
        { (uint8_t *)":scheme", (uint8_t *)(tls ? "https" : "http"), 7, tls ? 5 : 4, NGHTTP2_NV_FLAG_NONE },
        { (uint8_t *)":authority", (uint8_t *)authority, 10, strlen(authority), NGHTTP2_NV_FLAG_NONE },
        { (uint8_t *)":path", (uint8_t *)path, 5, strlen(path), NGHTTP2_NV_FLAG_NONE },
        { (uint8_t *)"user-agent", (uint8_t *)"moongate-health", 10, 15, NGHTTP2_NV_FLAG_NONE },
    };
    nghttp2_submit_request(c->ng, NULL, nv, mg_countof(nv), NULL, NULL);
    nghttp2_session_send(c->ng);
    return c;
}

int mg_h2check_feed(mg_h2check_t *c, const char *data, size_t len)
{
    if (nghttp2_session_mem_recv(c->ng, (const uint8_t *)data, len) < 0)
        return -1;
    return c->status;
}

void mg_h2check_free(mg_h2check_t *c)
{
    if (!c)
        return;
    nghttp2_session_del(c->ng);
    free(c);
}
