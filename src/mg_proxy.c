/*
 * mg_proxy — see mg_proxy.h.
 *
 * Phases and their timers: connect (uc->timer, timeouts.connect), send (the
 * write event's timeout, per write that has to wait: timeouts.send), read
 * (uc->timer re-armed on every read once the request is out: timeouts.read,
 * per read, not total). The owner's request deadline bounds all of them and
 * the retries: its timer calls mg_proxy_cancel, and p->deadline_us keeps an
 * attempt from starting when it could not finish anyway.
 */
#include "mg_proxy.h"

#include <errno.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "mg_csema.h"
#include "mg_h1.h"
#include "mg_h2up.h"
#include "mg_log.h"
#include "mg_trace.h"

/*
 * The timeline of a recorded request (mg_trace.h): one call at each point an
 * attempt reaches, nothing but the branch when the request is not recorded.
 */
#define TRACE(p, event, err)                                                                                  \
    do {                                                                                                      \
        if (mg_unlikely((p)->trace != NULL))                                                                  \
            mg_trace_proxy((p), (event), (err));                                                              \
    } while (0)

#define OUT_HIGH (256 * 1024)   /* request body buffered towards the upstream before the client is paused */
#define IN_MAX (64 * 1024 + 32768)

static const mg_http1_limits_t RESP_LIMITS = { .max_line = 8192, .max_head = 32768,
                                               .max_headers = MG_PROXY_MAX_HEADERS };

static void attempt(mg_proxy_t *p);
static void attempt_on(mg_proxy_t *p, mg_target_t *t, unsigned lease);
static void on_event(mg_upconn_t *uc, int what);
static void handshake(mg_proxy_t *p);

/* The permit and the queue place are the exchange's; every end gives them back. */
static void drop_permit(mg_proxy_t *p)
{
    if (p->clease) {
        mg_clease_release(p->clease); /* held: given back; still being acquired: abandoned */
        p->clease = NULL;
    }
    if (p->queued) {
        event_del(&p->queue_timer);
        mg_sema_cancel(&p->waiter, 0);
        p->queued = 0;
    }
    if (p->permit) {
        mg_sema_release(p->up->sema, 1);
        p->permit = 0;
    }
}

static void end(mg_proxy_t *p, const mg_error_t *err)
{
    drop_permit(p);
    p->running = 0;
    p->ops->on_done(p, err);
}

static void arm_timer(mg_proxy_t *p, uint32_t ms)
{
    mg_upconn_timer(p->uc, ms);
}

static void drop_conn(mg_proxy_t *p, int reusable)
{
    if (p->h2s || p->h2body || p->h2_timer_set) {
        mg_h2up_detach(p);
        return;
    }
    mg_upconn_t *uc = p->uc;
    if (!uc)
        return;
    p->uc = NULL;
    p->target->inflight--;
    mg_upconn_timer(uc, 0);
    if (reusable)
        mg_upconn_release(uc);
    else
        mg_upconn_close(uc);
}

static const mg_error_t *errno_kind(int e)
{
    return e == ECONNREFUSED ? MG_E(REFUSED) : MG_E(RESET);
}

/* Is there time for one more attempt before the owner's deadline? */
static int time_left(const mg_proxy_t *p)
{
    return !p->deadline_us || mg_now_us() + MG_PROXY_MIN_ATTEMPT_MS * 1000ull <= p->deadline_us;
}

/*
 * An attempt failed: resend or end (the rule is in mg_proxy.h). never_left:
 * the upstream cannot have seen the request (not connected, or not one byte
 * of it written).
 *
 * A reused connection that ends with no response byte is the keep-alive
 * race: the upstream closed it while idle, and we wrote before the loop saw
 * the close. Whether it read the request first cannot be told (both look
 * like EOF), so only a request safe to resend is resent; on a new connection
 * (another pooled one may be just as dead), free of the retries budget and
 * of the target's failure count (the target did nothing wrong).
 */
static void fail(mg_proxy_t *p, const mg_error_t *kind, int never_left)
{
    mg_target_t *t = p->target;
    TRACE(p, MG_TRACE_END, kind);
    if (p->uc && !p->wrote)
        never_left = 1;
    int stale = p->uc && p->uc->reused && !p->got_byte && kind == MG_E(RESET);
    drop_conn(p, 0);
    int resendable = p->body != NULL || p->body_mode == MG_BODY_NONE || p->body_sent == 0;
    int safe = never_left || p->idempotent || p->up->retry_non_idempotent;
    int may = !p->head_seen && resendable && safe;
    if (stale) {
        if (may && time_left(p)) {
            p->free_attempts++;
            attempt_on(p, t, MG_LEASE_FRESH);
            return;
        }
        mg_target_unpick(t);
        if (!safe)
            mg_log_info(NULL, "upstream %s: a pooled connection to %s closed with no response; the request "
                        "is not idempotent: not resent", p->up->name, t->text);
        end(p, kind);
        return;
    }
    mg_target_report(t, 0);
    if (!may || p->attempts - p->free_attempts > p->up->retries) {
        end(p, kind);
        return;
    }
    if (!time_left(p)) {
        mg_log_info(NULL, "upstream %s: %s from %s; no retry: the request's deadline is too close", p->up->name,
                    kind->name, t->text);
        end(p, kind);
        return;
    }
    /*
     * A target not tried yet; one already tried only once, after it refused
     * the connection (it may be restarting): a timeout or a bad response
     * there would only repeat, doubling the wait and the upstream's work.
     */
    int same_ok = never_left && !p->same_retried && (kind == MG_E(REFUSED) || kind == MG_E(RESET));
    mg_target_t *next = mg_upstream_pick(p->up, p->hash, p->hash_len, p->tried, same_ok ? 0 : MG_PICK_OTHER);
    if (!next) {
        end(p, kind);
        return;
    }
    if (mg_target_bit(next) & p->tried)
        p->same_retried = 1;
    mg_log_info(NULL, "upstream %s: %s from %s, retrying on %s", p->up->name, kind->name, t->text, next->text);
    attempt_on(p, next, 0);
}

static void succeed(mg_proxy_t *p)
{
    TRACE(p, MG_TRACE_END, NULL);
    mg_target_report(p->target, 1);
    int reusable = p->resp_keepalive && p->body_done && p->framing != -1;
    drop_conn(p, reusable);
    end(p, NULL);
}

void mg__proxy_fail(mg_proxy_t *p, const mg_error_t *kind, int never_left) { fail(p, kind, never_left); }
void mg__proxy_succeed(mg_proxy_t *p) { succeed(p); }

/*
 * Writes what the upstream socket takes. Returns 0, or -1 after fail(). With
 * notify, a drained output asks the owner for more of a streamed body.
 */
static int flush_up(mg_proxy_t *p, int notify)
{
    mg_upconn_t *uc = p->uc;
    while (evbuffer_get_length(uc->out) > 0) {
        int n = mg_upconn_send(uc);
        if (n > 0) {
            p->wrote = 1;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            mg_upconn_wait_write(uc, p->up->send_ms);
            return 0;
        }
        fail(p, errno_kind(errno), 0);
        return -1;
    }
    event_del(&uc->wev);
    if (p->body_done)
        TRACE(p, MG_TRACE_SENT, NULL);
    if (notify && !p->body_done && p->body == NULL && p->body_mode != MG_BODY_NONE && p->ops->on_body_wanted) {
        p->body_wanted = 1;
        p->ops->on_body_wanted(p);
        return p->running && p->uc ? 0 : -1;
    }
    if (p->body_done && !mg_upconn_timer_set(uc))
        arm_timer(p, p->up->read_ms); /* all sent: now the read timeout runs */
    return 0;
}

/* The owner's head as HTTP/1.1: request line, Host, fields, the framing this engine owns. */
static void write_h1_head(mg_proxy_t *p, struct evbuffer *out)
{
    mg_upreq_t q = { .method = { "GET", 3 } };
    mg_resp_init(&q.fields, p->pool, 0);
    p->ops->build_head(p, p->target, &q);
    mg_str_t start[] = { q.method, { " ", 1 }, q.target, { " HTTP/1.1\r\nHost: ", 17 }, q.authority, { "\r\n", 2 } };
    char length[64];
    const char *end = "\r\n";
    int n = 2;
    if (p->body_mode == MG_BODY_LENGTH) {
        n = snprintf(length, sizeof(length), "Content-Length: %lld\r\n\r\n", (long long)p->body_len);
        end = length;
    }
    else if (p->body_mode == MG_BODY_CHUNKED)
        n = (int)strlen(end = "Transfer-Encoding: chunked\r\n\r\n");
    mg_h1_put_head(out, start, mg_countof(start), q.fields.h, q.fields.n, end, (size_t)n);
}

static void send_request(mg_proxy_t *p)
{
    mg_upconn_t *uc = p->uc;
    uc->requests++;
    write_h1_head(p, uc->out);
    p->body_sent = 0;
    p->body_done = p->body_mode == MG_BODY_NONE;
    p->body_wanted = 0;
    if (p->body) {
        /* a replayable body: copy, so a retry can send it again */
        struct evbuffer_iovec v[16];
        int n = evbuffer_peek(p->body, -1, NULL, v, 16);
        for (int i = 0; i < n && i < 16; i++)
            evbuffer_add(uc->out, v[i].iov_base, v[i].iov_len);
        p->body_done = 1;
    }
    mg_upconn_read(uc, 1); /* already registered when pooled: no syscall */
    flush_up(p, 1);
}

/* The first attempt: the balancer's (or a balancer plugin's) target. */
static void attempt(mg_proxy_t *p)
{
    if (!time_left(p)) {
        end(p, MG_E(DEADLINE)); /* e.g. the permit came too late */
        return;
    }
    mg_target_t *t = NULL;
    if (p->preferred && mg_target_usable(p->preferred))
        t = p->preferred; /* a balancer plugin's choice; retries go back to the balancer */
    else
        t = mg_upstream_pick(p->up, p->hash, p->hash_len, 0, 0);
    if (!t) {
        end(p, MG_E(NO_TARGET));
        return;
    }
    attempt_on(p, t, 0);
}

static void attempt_on(mg_proxy_t *p, mg_target_t *t, unsigned lease)
{
    p->attempts++;
    p->t_attempt = mg_now_us();
    p->target = t;
    p->tried |= mg_target_bit(t);
    p->got_byte = p->wrote = 0;
    TRACE(p, MG_TRACE_ATTEMPT, NULL);
    t->requests++;
    if (p->up->protocol != MG_UP_HTTP1) {
        mg_h2up_attempt(p, t); /* a stream on a shared connection */
        return;
    }
    if (!p->idempotent && !p->up->retry_non_idempotent)
        lease |= MG_LEASE_CHECK; /* it could not be resent: do not write it on a connection known closed */
    mg_upconn_t *uc = mg_upstream_lease(t, on_event, p, lease);
    if (!uc) {
        fail(p, errno_kind(errno), 1); /* e.g. refused at once on loopback */
        return;
    }
    t->inflight++;
    p->uc = uc;
    p->framing = MG_BODY_NONE;
    p->head_seen = 0;
    if (mg_upconn_ready(uc)) {
        send_request(p); /* pooled */
        return;
    }
    /* connecting: the write event says when; the timer bounds it, and the TLS handshake */
    arm_timer(p, p->up->connect_ms);
    if (uc->connected)
        handshake(p);
    else
        mg_upconn_wait_write(uc, 0);
}

static void on_permit(mg_sema_waiter_t *w)
{
    mg_proxy_t *p = w->data;
    p->queue_us = (uint32_t)(mg_now_us() - p->t_start);
    event_del(&p->queue_timer);
    p->queued = 0;
    p->permit = 1;
    TRACE(p, MG_TRACE_QUEUED, NULL);
    attempt(p);
}

static void on_queue_timeout(evutil_socket_t fd, short what, void *arg)
{
    mg_proxy_t *p = arg;
    mg_sema_cancel(&p->waiter, 1);
    p->queued = 0;
    TRACE(p, MG_TRACE_QUEUED, NULL);
    p->busy_status = p->up->busy_status;
    end(p, MG_E(BUSY));
}

static void local_permit(mg_proxy_t *p);

/*
 * scope = "cluster": the lease's outcome. When Redis cannot answer,
 * on_redis_error says what happens (counted and logged per interval by
 * mg_redis_fallback): go without a permit, refuse, or take this node's share
 * of the limit from the local semaphore.
 */
static void on_lease(void *arg, int outcome, const mg_error_t *kind, const char *msg)
{
    static const char *const policy[] = { [MG_REDIS_LOCAL] = "local", [MG_REDIS_ALLOW] = "allow",
                                          [MG_REDIS_DENY] = "deny" };
    mg_proxy_t *p = arg;
    mg_upstream_t *up = p->up;
    p->queue_us = (uint32_t)(mg_now_us() - p->t_start);
    if (outcome == MG_CLEASE_GRANTED) {
        attempt(p);
        return;
    }
    if (outcome != MG_CLEASE_FAILED) {
        if (outcome == MG_CLEASE_TIMED_OUT)
            p->busy_status = up->busy_status;
        end(p, MG_E(BUSY));
        return;
    }
    mg_redis_fallback(up->redis, mg_csema_name(up->csema), policy[up->on_redis_error], kind, msg);
    mg_clease_release(p->clease); /* msg was the lease's: not after this */
    p->clease = NULL;
    if (up->on_redis_error == MG_REDIS_ALLOW)
        attempt(p);
    else if (up->on_redis_error == MG_REDIS_DENY)
        end(p, kind);
    else
        local_permit(p);
}

void mg_proxy_start(mg_proxy_t *p)
{
    p->t_start = mg_now_us();
    p->queue_us = p->connect_us = p->ttfb_us = 0;
    p->running = 1;
    p->attempts = p->free_attempts = p->same_retried = 0;
    p->tried = 0;
    p->target = NULL;
    p->trace_item = -1;
    p->trace_span = 0;
    mg_upstream_t *up = p->up;
    if (!up->sema) {
        attempt(p);
        return;
    }
    /* max_concurrency: the permit covers the exchange with all its retries */
    p->busy_status = 429;
    if (up->csema) {
        p->clease = mg_clease_acquire(up->csema, up->redis, 1, up->queue_max ? up->queue_timeout_ms : 0,
                                      up->queue_max, on_lease, p);
        return;
    }
    local_permit(p);
}

/* The local semaphore: at once, or queued (the grant comes through the worker's mailbox). */
static void local_permit(mg_proxy_t *p)
{
    mg_upstream_t *up = p->up;
    if (up->queue_max == 0 || !up->mailbox) {
        if (!mg_sema_try(up->sema, 1)) {
            mg_sema_count_rejected(up->sema);
            end(p, MG_E(BUSY));
            return;
        }
        p->permit = 1;
        attempt(p);
        return;
    }
    memset(&p->waiter, 0, sizeof(p->waiter));
    p->waiter.mailbox = up->mailbox;
    p->waiter.on_grant = on_permit;
    p->waiter.data = p;
    int rc = mg_sema_acquire(up->sema, 1, &p->waiter, up->queue_max);
    if (rc == MG_OK) {
        p->permit = 1;
        attempt(p);
    } else if (rc == MG_DECLINED) {
        end(p, MG_E(BUSY)); /* the queue is full: at once, like reject */
    } else {
        p->queued = 1;
        struct timeval tv = { up->queue_timeout_ms / 1000, (up->queue_timeout_ms % 1000) * 1000 };
        evtimer_assign(&p->queue_timer, up->base, on_queue_timeout, p);
        evtimer_add(&p->queue_timer, &tv); /* the request deadline bounds it too: it cancels us */
    }
}


/* Delivers buffered response bytes. Returns 1 if the exchange ended. */
static int deliver(mg_proxy_t *p)
{
    mg_upconn_t *uc = p->uc;
    if (!uc->in)
        return 0; /* nothing read on this lease yet */
    while (!p->paused) {
        size_t avail = uc->in_len - uc->in_off;
        const char *d = uc->in + uc->in_off;
        if (!p->head_seen) {
            if (avail == 0)
                return 0;
            int rc = mg_http1_parse_response(d, avail, &p->resp, &RESP_LIMITS);
            if (rc == MG_HTTP1_AGAIN)
                return 0;
            if (rc < 0) {
                mg_log_warn(NULL, "upstream %s: malformed response from %s: %s", p->up->name,
                            p->target->text, p->resp.error ? p->resp.error : "?");
                fail(p, MG_E(PROTOCOL), 0);
                return 1;
            }
            uc->in_off += (size_t)rc;
            int status = p->resp.status;
            if (status >= 100 && status < 200) {
                if (status == 101) {
                    /* only an upgrade the owner asked for is taken; then the connection is no longer ours */
                    if (p->upgrade && p->ops->on_upgrade) {
                        p->head_seen = 1;
                        p->ops->on_upgrade(p, &p->resp);
                    }
                    if (p->running)
                        fail(p, MG_E(PROTOCOL), 0);
                    return 1;
                }
                /* 100 Continue: the client got ours already; others (103 Early Hints) are the owner's */
                if (status != 100 && p->ops->on_interim) {
                    p->ops->on_interim(p, &p->resp);
                    if (!p->running)
                        return 1;
                }
                continue;
            }
            p->head_seen = 1;
            int ka = p->resp.minor_version == 1 && !(p->resp.flags & MG_HTTP1_F_CONN_CLOSE);
            p->resp_keepalive = ka;
            if (p->head_request || status == 204 || status == 304) {
                p->framing = MG_BODY_NONE;
            } else if (p->resp.flags & MG_HTTP1_F_CHUNKED) {
                p->framing = MG_BODY_CHUNKED;
                mg_chunked_init(&p->chunk);
                if (p->ops->on_trailers)
                    mg_chunked_capture_trailers(&p->chunk, p->trailers, MG_PROXY_MAX_TRAILERS);
            } else if (p->resp.content_length >= 0) {
                p->framing = MG_BODY_LENGTH;
                p->resp_left = p->resp.content_length;
            } else {
                p->framing = -1; /* until the upstream closes */
            }
            int pause = p->ops->on_head(p, &p->resp);
            if (!p->running)
                return 1;
            if (pause) {
                p->paused = 1; /* e.g. header_filter plugins run first; mg_proxy_resume goes on */
                break;
            }
            continue;
        }
        if (p->framing == MG_BODY_NONE || (p->framing == MG_BODY_LENGTH && p->resp_left == 0)) {
            succeed(p);
            return 1;
        }
        if (avail == 0)
            return 0;
        if (p->framing == MG_BODY_LENGTH) {
            size_t n = (int64_t)avail < p->resp_left ? avail : (size_t)p->resp_left;
            uc->in_off += n;
            p->resp_left -= (int64_t)n;
            int pause = p->ops->on_body(p, d, n);
            if (!p->running)
                return 1;
            if (p->resp_left == 0) {
                /* bytes beyond the declared length would poison the next response on this connection */
                if (uc->in_off != uc->in_len)
                    p->resp_keepalive = 0;
                succeed(p);
                return 1;
            }
            p->paused = pause;
        } else if (p->framing == MG_BODY_CHUNKED) {
            size_t used;
            const char *data;
            size_t dlen;
            int rc = mg_chunked_decode(&p->chunk, d, avail, &used, &data, &dlen);
            uc->in_off += used;
            if (rc == MG_CHUNKED_ERROR) {
                mg_log_warn(NULL, "upstream %s: bad chunked body from %s: %s", p->up->name, p->target->text,
                            p->chunk.error);
                fail(p, MG_E(PROTOCOL), 0);
                return 1;
            }
            if (rc == MG_CHUNKED_DATA) {
                p->paused = p->ops->on_body(p, data, dlen);
                if (!p->running)
                    return 1;
            }
            if (rc == MG_CHUNKED_DONE) {
                if (uc->in_off != uc->in_len)
                    p->resp_keepalive = 0;
                if (p->chunk.num_trailers) {
                    /* borrowed from uc->in, which stays as it is until succeed() */
                    p->ops->on_trailers(p, p->trailers, p->chunk.num_trailers);
                    if (!p->running)
                        return 1;
                }
                succeed(p);
                return 1;
            }
            if (rc == MG_CHUNKED_AGAIN)
                return 0;
        } else {
            uc->in_off += avail;
            p->paused = p->ops->on_body(p, d, avail);
            if (!p->running)
                return 1;
        }
    }
    mg_upconn_read(uc, 0); /* paused: the owner's output is full */
    return 0;
}

/* deliver() returned waiting for more: let the owner flush what it has (one write per read). */
static void delivered(mg_proxy_t *p)
{
    if (p->running && p->head_seen && !p->paused && p->ops->on_wait)
        p->ops->on_wait(p);
}

/*
 * Unframed body bytes with nothing buffered: read them straight into the
 * owner's sink (the client's output), one copy less than through uc->in.
 */
static void read_direct(mg_proxy_t *p, struct evbuffer *sink)
{
    mg_upconn_t *uc = p->uc;
    size_t want = 256 * 1024;
    if (p->framing == MG_BODY_LENGTH && (int64_t)want > p->resp_left)
        want = (size_t)p->resp_left;
    /* reserve + readv: evbuffer_read would ask FIONREAD and read at most 4 KiB at a time */
    struct evbuffer_iovec v[2];
    int nv = evbuffer_reserve_space(sink, (ev_ssize_t)want, v, 2);
    struct iovec iov[2];
    size_t room = 0;
    for (int i = 0; i < nv; i++) {
        size_t take = v[i].iov_len < want - room ? v[i].iov_len : want - room;
        iov[i].iov_base = v[i].iov_base;
        iov[i].iov_len = take;
        v[i].iov_len = take;
        room += take;
    }
    ssize_t n = mg_upconn_readv(uc, iov, nv);
    if (n > 0) {
        if (!p->got_byte)
            TRACE(p, MG_TRACE_FIRST_BYTE, NULL);
        p->got_byte = 1;
        size_t left = (size_t)n;
        for (int i = 0; i < nv; i++) {
            v[i].iov_len = left < v[i].iov_len ? left : v[i].iov_len;
            left -= v[i].iov_len;
        }
        evbuffer_commit_space(sink, v, nv);
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        if (n == 0 && p->framing == -1)
            succeed(p);
        else
            fail(p, errno_kind(n < 0 ? errno : ECONNRESET), 0);
        return;
    }
    arm_timer(p, p->up->read_ms);
    if (p->framing == MG_BODY_LENGTH)
        p->resp_left -= (int64_t)n;
    int pause = p->ops->on_body(p, NULL, (size_t)n);
    if (!p->running)
        return;
    if (p->framing == MG_BODY_LENGTH && p->resp_left == 0) {
        succeed(p);
        return;
    }
    if (pause) {
        p->paused = 1;
        mg_upconn_read(uc, 0);
        return;
    }
    delivered(p);
}

static void on_readable(mg_proxy_t *p)
{
    mg_upconn_t *uc = p->uc;
    struct evbuffer *sink;
    if (p->head_seen && uc->in_off == uc->in_len && (p->framing == MG_BODY_LENGTH || p->framing == -1) &&
        p->ops->body_sink && (sink = p->ops->body_sink(p))) {
        read_direct(p, sink);
        return;
    }
    mg_upconn_input(uc);
    if (uc->in_off == uc->in_len)
        uc->in_off = uc->in_len = 0;
    if (uc->in_len == uc->in_cap) {
        if (uc->in_off > 0) {
            memmove(uc->in, uc->in + uc->in_off, uc->in_len - uc->in_off);
            uc->in_len -= uc->in_off;
            uc->in_off = 0;
        } else if (uc->in_cap < IN_MAX) {
            uc->in_cap = IN_MAX;
            uc->in = mg_realloc(uc->in, uc->in_cap);
        } else {
            fail(p, MG_E(PROTOCOL), 0); /* a response head larger than we accept */
            return;
        }
    }
    struct iovec iov = { uc->in + uc->in_len, uc->in_cap - uc->in_len };
    ssize_t n = mg_upconn_readv(uc, &iov, 1);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        if (n == 0 && p->head_seen && p->framing == -1) {
            succeed(p); /* close-delimited body: EOF is its end */
            return;
        }
        if (uc->tls_rejected) {
            fail(p, MG_E(TLS_HANDSHAKE), 1); /* the upstream did not take the request */
            return;
        }
        /* EOF or RST before the response was complete */
        int e = n < 0 ? errno : ECONNRESET;
        fail(p, errno_kind(e), 0);
        return;
    }
    uc->in_len += (size_t)n;
    if (!p->got_byte)
        TRACE(p, MG_TRACE_FIRST_BYTE, NULL);
    p->got_byte = 1;
    if (!p->ttfb_us)
        p->ttfb_us = (uint32_t)(mg_now_us() - p->t_start);
    if (p->body_done || p->head_seen)
        arm_timer(p, p->up->read_ms);
    if (!deliver(p))
        delivered(p);
}

/* The connection is up (TCP, and TLS when the upstream speaks it): the request goes out. */
static void connected(mg_proxy_t *p)
{
    p->connect_us = (uint32_t)(mg_now_us() - p->t_attempt);
    TRACE(p, MG_TRACE_CONNECTED, NULL);
    send_request(p);
}

/* The TLS handshake goes on; the connect timeout covers it. */
static void handshake(mg_proxy_t *p)
{
    int rc = mg_upconn_handshake(p->uc);
    if (rc == 1) {
        mg_upconn_timer(p->uc, 0);
        connected(p);
    } else if (rc < 0) {
        fail(p, rc == MG_UC_TLS_UNTRUSTED ? MG_E(TLS_VERIFY) : MG_E(TLS_HANDSHAKE), 1);
    }
}

static void on_event(mg_upconn_t *uc, int what)
{
    mg_proxy_t *p = uc->owner;
    if (what == MG_UC_TIMER) {
        if (mg_upconn_ready(uc))
            fail(p, MG_E(READ_TIMEOUT), 0);
        else
            fail(p, MG_E(CONNECT_TIMEOUT), 1);
        return;
    }
    if (!uc->connected) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(uc->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            mg_upconn_timer(uc, 0);
            fail(p, err == ECONNREFUSED ? MG_E(REFUSED) : MG_E(RESET), 1);
            return;
        }
        uc->connected = 1;
        if (!mg_upconn_ready(uc)) {
            handshake(p);
            return;
        }
        mg_upconn_timer(uc, 0);
        connected(p);
        return;
    }
    if (!mg_upconn_ready(uc))
        handshake(p);
    else if (what == MG_UC_SEND_TIMEOUT)
        fail(p, MG_E(SEND_TIMEOUT), 0);
    else if (what == MG_UC_READ)
        on_readable(p);
    else
        flush_up(p, 1);
}

int mg_proxy_write_body(mg_proxy_t *p, const char *data, size_t len)
{
    if (p->up->protocol != MG_UP_HTTP1)
        return mg_h2up_write_body(p, data, len);
    if (!p->uc || !len)
        return 0;
    mg_upconn_t *uc = p->uc;
    if (p->body_mode == MG_BODY_CHUNKED) {
        char size[24];
        int n = snprintf(size, sizeof(size), "%zx\r\n", len);
        evbuffer_add(uc->out, size, (size_t)n);
        evbuffer_add(uc->out, data, len);
        evbuffer_add(uc->out, "\r\n", 2);
    } else {
        evbuffer_add(uc->out, data, len);
    }
    p->body_sent += (int64_t)len;
    size_t queued = evbuffer_get_length(uc->out);
    p->body_wanted = 0;
    if (flush_up(p, 0) < 0)
        return 1;
    if (queued > OUT_HIGH && evbuffer_get_length(p->uc->out) > OUT_HIGH)
        return 1; /* flush_up calls on_body_wanted once it drains */
    p->body_wanted = 1;
    return 0;
}

void mg_proxy_end_body(mg_proxy_t *p)
{
    if (p->up->protocol != MG_UP_HTTP1) {
        mg_h2up_end_body(p);
        return;
    }
    if (!p->uc || p->body_done)
        return;
    if (p->body_mode == MG_BODY_CHUNKED)
        evbuffer_add(p->uc->out, "0\r\n\r\n", 5);
    p->body_done = 1;
    flush_up(p, 0);
}

void mg_proxy_resume(mg_proxy_t *p)
{
    if (p->up->protocol != MG_UP_HTTP1) {
        mg_h2up_resume(p);
        return;
    }
    if (!p->paused || !p->uc)
        return;
    p->paused = 0;
    mg_upconn_read(p->uc, 1);
    if (!deliver(p))
        delivered(p);
}

mg_upconn_t *mg_proxy_hand_over(mg_proxy_t *p, int *permit)
{
    mg_upconn_t *uc = p->uc;
    mg_target_report(p->target, 1);
    p->uc = NULL;
    p->target->inflight--;
    mg_upconn_timer(uc, 0);
    event_del(&uc->wev);
    *permit = p->permit;
    p->permit = 0; /* the caller's now: drop_permit must not release it */
    drop_permit(p);
    p->running = 0;
    return uc;
}

void mg_proxy_cancel(mg_proxy_t *p)
{
    if (!p->running)
        return;
    TRACE(p, MG_TRACE_CANCEL, NULL); /* before drop_permit: a queued exchange's wait ends here too */
    p->running = 0;
    if (p->uc || p->h2s)
        mg_target_unpick(p->target); /* no verdict on the target: a trial it carried is free again */
    drop_conn(p, 0);
    drop_permit(p);
}
