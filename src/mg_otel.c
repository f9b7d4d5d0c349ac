/*
 * mg_otel — see mg_otel.h. The exporter thread and its HTTP client.
 *
 * The client is small on purpose: one POST at a time on a blocking socket
 * (this thread has nothing else to do while it waits), every step bounded
 * by the export timeout (connect by poll(2), sends and reads by
 * SO_SNDTIMEO/SO_RCVTIMEO set to what is left of it). The answer is parsed
 * with mg_http1 (head, chunked body) and read whole so the connection can
 * be reused.
 */
#define _GNU_SOURCE
#include "mg_otel.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "mg_http1.h"
#include "mg_log.h"
#include "mg_tls.h"

#define MAX_TRIES 5
#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS 5000
#define ANSWER_MAX (256 * 1024)

typedef struct settings {
    char *endpoint;                /* as configured, for messages */
    int tls;
    char *host, *port, *authority, *path;
    char *service_name;
    char *headers;                 /* "Name: value\r\n" lines */
    uint32_t batch, queue, timeout_ms, interval_ms;
} settings_t;

/* everything below is under `lock` unless said otherwise */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond;       /* on CLOCK_MONOTONIC (init_cond): waits ignore wall-clock steps */
static pthread_once_t cond_once = PTHREAD_ONCE_INIT;
static pthread_t thread;
static int running, stopping;
static settings_t cur;             /* the thread copies it per batch */
static uint64_t generation;        /* bumped by each configure: a changed endpoint drops the connection */
static mg_trace_rec_t **queue;     /* FIFO of records, queue_head .. queue_head + queue_n */
static size_t queue_cap, queue_head, queue_n;
static uint64_t queued_spans;
static uint64_t first_at_ms;       /* when the oldest queued record came */
static mg_otel_stats_t stats;      /* exported, dropped_*, errors (queued = queued_spans) */

static void settings_free(settings_t *s)
{
    free(s->endpoint);
    free(s->host);
    free(s->port);
    free(s->authority);
    free(s->path);
    free(s->service_name);
    free(s->headers);
    memset(s, 0, sizeof(*s));
}

static void settings_copy(settings_t *d, const settings_t *s)
{
    *d = *s;
    d->endpoint = s->endpoint ? strdup(s->endpoint) : NULL;
    d->host = s->host ? strdup(s->host) : NULL;
    d->port = s->port ? strdup(s->port) : NULL;
    d->authority = s->authority ? strdup(s->authority) : NULL;
    d->path = s->path ? strdup(s->path) : NULL;
    d->service_name = s->service_name ? strdup(s->service_name) : NULL;
    d->headers = s->headers ? strdup(s->headers) : NULL;
}

/* "http[s]://host[:port]/path" (checked by config.lua) into its parts. */
static void parse_endpoint(settings_t *s, const char *url)
{
    s->tls = strncmp(url, "https://", 8) == 0;
    const char *a = url + (s->tls ? 8 : 7);
    const char *slash = strchr(a, '/');
    s->authority = strndup(a, (size_t)(slash - a));
    s->path = strdup(slash);
    const char *h = s->authority, *end;
    if (*h == '[') {
        end = strchr(h, ']');
        s->host = strndup(h + 1, (size_t)(end - h - 1));
        end++;
    } else {
        end = strchr(h, ':');
        if (!end)
            end = h + strlen(h);
        s->host = strndup(h, (size_t)(end - h));
    }
    s->port = strdup(*end == ':' && end[1] ? end + 1 : s->tls ? "443" : "80");
}

static void drop_queue_locked(uint64_t *dropped)
{
    while (queue_n) {
        mg_trace_rec_t *rec = queue[queue_head];
        queue_head = (queue_head + 1) % queue_cap;
        queue_n--;
        *dropped += (uint64_t)mg_otel_span_count(rec);
        mg_trace_rec_put(rec);
    }
    queued_spans = 0;
}

static void *export_loop(void *arg);

static void init_cond(void)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&cond, &a);
    pthread_condattr_destroy(&a);
}

void mg_otel_configure(const mg_trace_conf_t *c)
{
    pthread_once(&cond_once, init_cond);
    settings_t s = { 0 };
    if (c->enabled && c->endpoint) {
        s.endpoint = strdup(c->endpoint);
        parse_endpoint(&s, c->endpoint);
        s.service_name = strdup(c->service_name ? c->service_name : "moongate");
        mg_text_t h = { 0 };
        for (int i = 0; i < c->nheaders; i++)
            mg_text_add(&h, "%s\r\n", c->headers[i]);
        s.headers = h.p ? h.p : strdup("");
        s.batch = c->batch;
        s.queue = c->queue;
        s.timeout_ms = c->timeout_ms;
        s.interval_ms = c->interval_ms;
    }
    pthread_mutex_lock(&lock);
    int changed = !cur.endpoint != !s.endpoint || (s.endpoint && strcmp(s.endpoint, cur.endpoint) != 0);
    settings_free(&cur);
    cur = s;
    if (changed)
        generation++;
    if (!cur.endpoint)
        drop_queue_locked(&stats.dropped_queue); /* nowhere to send them any more */
    int start = cur.endpoint && !running;
    if (start) {
        running = 1;
        stopping = 0;
    }
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&lock);
    if (start) {
        /* signals are blocked by the caller's mask (main sets it before starting threads) */
        pthread_create(&thread, NULL, export_loop, NULL);
    }
}

int mg_otel_active(void)
{
    pthread_mutex_lock(&lock);
    int a = cur.endpoint != NULL && !stopping;
    pthread_mutex_unlock(&lock);
    return a;
}

void mg_otel_submit(mg_trace_rec_t *rec)
{
    uint64_t n = (uint64_t)mg_otel_span_count(rec);
    pthread_mutex_lock(&lock);
    if (!cur.endpoint || stopping || queued_spans + n > cur.queue) {
        stats.dropped_queue += n; /* a slow or dead collector: the spans go, nothing waits */
        pthread_mutex_unlock(&lock);
        mg_trace_rec_put(rec);
        return;
    }
    if (queue_n == queue_cap) {
        size_t cap = queue_cap ? queue_cap * 2 : 256;
        mg_trace_rec_t **q = mg_alloc(cap * sizeof(*q));
        for (size_t i = 0; i < queue_n; i++)
            q[i] = queue[(queue_head + i) % queue_cap];
        free(queue);
        queue = q;
        queue_cap = cap;
        queue_head = 0;
    }
    if (!queue_n)
        first_at_ms = mg_now_ms();
    queue[(queue_head + queue_n) % queue_cap] = rec;
    queue_n++;
    queued_spans += n;
    /* the first record starts the interval (the thread sleeps until then); a full batch goes at once */
    if (queue_n == 1 || (queued_spans >= cur.batch && queued_spans - n < cur.batch))
        pthread_cond_signal(&cond);
    pthread_mutex_unlock(&lock);
}

void mg_otel_stats(mg_otel_stats_t *s)
{
    pthread_mutex_lock(&lock);
    *s = stats;
    s->queued = queued_spans;
    pthread_mutex_unlock(&lock);
}

/* ---- one HTTP exchange ---- */

typedef struct client {
    int fd;
    SSL *ssl;
    SSL_CTX *ctx;
    uint64_t generation;           /* the settings it connected with */
    uint64_t deadline_ms;          /* of the running export */
    char why[256];                 /* the last failure, for the log */
} client_t;

static void client_close(client_t *c)
{
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

/* The rest of the export's time as the socket's timeouts; 0 when none is left. */
static int set_timeouts(client_t *c)
{
    uint64_t now = mg_now_ms();
    if (now >= c->deadline_ms)
        return 0;
    uint64_t left = c->deadline_ms - now;
    struct timeval tv = { (time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000 };
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    return 1;
}

static int client_connect(client_t *c, const settings_t *s)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res = NULL;
    int rc = getaddrinfo(s->host, s->port, &hints, &res); /* may block: this thread only */
    if (rc != 0) {
        snprintf(c->why, sizeof(c->why), "cannot resolve %s: %s", s->host, gai_strerror(rc));
        return -1;
    }
    int err = 0;
    for (struct addrinfo *ai = res; ai && c->fd < 0; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
            err = errno;
            close(fd);
            continue;
        }
        uint64_t now = mg_now_ms();
        struct pollfd pfd = { fd, POLLOUT, 0 };
        int left = now < c->deadline_ms ? (int)(c->deadline_ms - now) : 0;
        socklen_t len = sizeof(err);
        if (poll(&pfd, 1, left) != 1) {
            err = ETIMEDOUT;
            close(fd);
            continue;
        }
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK); /* blocking from here: the timeouts bound each call */
        c->fd = fd;
    }
    freeaddrinfo(res);
    if (c->fd < 0) {
        snprintf(c->why, sizeof(c->why), "cannot connect to %s: %s", s->authority, strerror(err ? err : ECONNREFUSED));
        return -1;
    }
    if (!set_timeouts(c)) {
        snprintf(c->why, sizeof(c->why), "timed out connecting to %s", s->authority);
        client_close(c);
        return -1;
    }
    if (s->tls) {
        if (!c->ctx) {
            mg_tls_client_conf_t conf = { .verify = 1 };
            c->ctx = mg_tls_client_new(&conf, c->why, sizeof(c->why));
            if (!c->ctx) {
                client_close(c);
                return -1;
            }
        }
        c->ssl = mg_tls_client_ssl(c->ctx, c->fd, s->host, NULL);
        if (!c->ssl || SSL_connect(c->ssl) != 1) {
            const char *v = c->ssl ? mg_tls_verify_failure(c->ssl) : NULL;
            snprintf(c->why, sizeof(c->why), "TLS with %s failed: %s", s->authority,
                     v ? v : ERR_reason_error_string(ERR_get_error()) ? ERR_reason_error_string(ERR_get_error())
                                                                       : "handshake");
            ERR_clear_error();
            client_close(c);
            return -1;
        }
    }
    return 0;
}

static ssize_t io_send(client_t *c, const char *p, size_t n)
{
    if (c->ssl) {
        int w = SSL_write(c->ssl, p, (int)n);
        return w > 0 ? w : -1;
    }
    return send(c->fd, p, n, MSG_NOSIGNAL);
}

static ssize_t io_recv(client_t *c, char *p, size_t n)
{
    if (c->ssl) {
        int r = SSL_read(c->ssl, p, (int)n);
        if (r > 0)
            return r;
        return SSL_get_error(c->ssl, r) == SSL_ERROR_ZERO_RETURN ? 0 : -1;
    }
    return recv(c->fd, p, n, 0);
}

static int send_all(client_t *c, const char *p, size_t n)
{
    while (n > 0) {
        if (!set_timeouts(c))
            return -1;
        ssize_t w = io_send(c, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/*
 * Reads the answer: its status, or -1 (c->why says why). The body is read
 * (up to ANSWER_MAX) and dropped; *keep says whether the connection may
 * carry the next export.
 */
static int read_answer(client_t *c, int *keep)
{
    static char buf[ANSWER_MAX];
    size_t len = 0;
    mg_header_t headers[64];
    mg_http1_response_t resp = { .headers = headers };
    mg_http1_limits_t lim = { .max_line = 8192, .max_head = 32768, .max_headers = 64 };
    int head = 0;
    for (;;) {
        if (len < sizeof(buf)) {
            if (!set_timeouts(c)) {
                snprintf(c->why, sizeof(c->why), "no answer within the timeout");
                return -1;
            }
            ssize_t n = io_recv(c, buf + len, sizeof(buf) - len);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0) {
                snprintf(c->why, sizeof(c->why), "reading the answer: %s",
                         errno == EAGAIN || errno == EWOULDBLOCK ? "timed out" : strerror(errno));
                return -1;
            }
            if (n == 0) {
                snprintf(c->why, sizeof(c->why), "the collector closed the connection without an answer");
                return -1;
            }
            len += (size_t)n;
        }
        head = mg_http1_parse_response(buf, len, &resp, &lim);
        if (head > 0 && resp.status >= 200)
            break;
        if (head > 0) { /* an interim answer (100 Continue): the final one follows */
            memmove(buf, buf + head, len - (size_t)head);
            len -= (size_t)head;
            continue;
        }
        if (head != MG_HTTP1_AGAIN || len == sizeof(buf)) {
            snprintf(c->why, sizeof(c->why), "a malformed answer");
            return -1;
        }
    }
    *keep = resp.minor_version == 1 && !(resp.flags & MG_HTTP1_F_CONN_CLOSE);
    size_t have = len - (size_t)head;
    if (resp.flags & MG_HTTP1_F_CHUNKED) {
        mg_chunked_t ch;
        mg_chunked_init(&ch);
        const char *p = buf + head;
        for (;;) {
            size_t used;
            const char *data;
            size_t dlen;
            int rc = have ? mg_chunked_decode(&ch, p, have, &used, &data, &dlen) : MG_CHUNKED_AGAIN;
            if (have) {
                p += used;
                have -= used;
            }
            if (rc == MG_CHUNKED_DONE)
                break;
            if (rc == MG_CHUNKED_ERROR) {
                *keep = 0;
                break;
            }
            if (rc == MG_CHUNKED_AGAIN && !have) {
                if (!set_timeouts(c)) {
                    *keep = 0;
                    break;
                }
                ssize_t n = io_recv(c, buf, sizeof(buf));
                if (n <= 0) {
                    *keep = 0;
                    break;
                }
                p = buf;
                have = (size_t)n;
            }
        }
    } else if (resp.content_length >= 0) {
        int64_t left = resp.content_length - (int64_t)have;
        while (left > 0) {
            if (!set_timeouts(c))
                break;
            ssize_t n = io_recv(c, buf, left < (int64_t)sizeof(buf) ? (size_t)left : sizeof(buf));
            if (n <= 0)
                break;
            left -= n;
        }
        if (left != 0)
            *keep = 0;
    } else {
        *keep = 0; /* close-delimited: the status is what matters */
    }
    return resp.status;
}

/*
 * One try: POST the payload, read the status. Returns the HTTP status, or -1
 * when there was no answer. A reused connection that fails before any answer
 * is replaced once (the collector closed it while idle).
 */
static int post(client_t *c, const settings_t *s, const char *body, size_t blen)
{
    c->deadline_ms = mg_now_ms() + s->timeout_ms;
    char head[2048];
    int hn = snprintf(head, sizeof(head),
                      "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                      "User-Agent: moongate/%s\r\n%s\r\n",
                      s->path, s->authority, blen, MG_VERSION, s->headers ? s->headers : "");
    if (hn < 0 || (size_t)hn >= sizeof(head)) {
        snprintf(c->why, sizeof(c->why), "the export headers are too long");
        return -1;
    }
    for (int fresh = c->fd < 0; ; fresh = 1) {
        if (c->fd < 0 && client_connect(c, s) < 0)
            return -1;
        int keep = 0, status = -1;
        if (send_all(c, head, (size_t)hn) == 0 && send_all(c, body, blen) == 0)
            status = read_answer(c, &keep);
        else
            snprintf(c->why, sizeof(c->why), "sending to %s: %s", s->authority, strerror(errno));
        if (status < 0 || !keep)
            client_close(c);
        if (status >= 0 || fresh)
            return status;
    }
}

/* ---- the thread ---- */

static void wait_ms(uint64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&cond, &lock, &ts);
}

static int retryable(int status) { return status < 0 || status == 429 || status == 502 || status == 503 || status == 504; }

static void *export_loop(void *arg)
{
    client_t c = { .fd = -1 };
    settings_t s = { 0 };
    mg_trace_rec_t **batch = NULL;
    size_t batch_cap = 0;
    uint64_t last_log_ms = 0;
    pthread_mutex_lock(&lock);
    for (;;) {
        /* wait for a full batch, the interval, or the end */
        for (;;) {
            uint64_t now = mg_now_ms(), due = first_at_ms + cur.interval_ms;
            if (stopping || !cur.endpoint || (queue_n && (queued_spans >= cur.batch || now >= due)))
                break;
            wait_ms(queue_n ? due - now : 1000);
        }
        if (!cur.endpoint && !stopping) {
            wait_ms(1000);
            continue;
        }
        if (queue_n == 0 && stopping)
            break;
        /* take one batch (at least one record, whatever its size) */
        size_t n = 0;
        uint64_t spans = 0;
        while (queue_n && (n == 0 || spans + (uint64_t)mg_otel_span_count(queue[queue_head]) <= cur.batch)) {
            if (n == batch_cap) {
                batch_cap = batch_cap ? batch_cap * 2 : 64;
                batch = mg_realloc(batch, batch_cap * sizeof(*batch));
            }
            mg_trace_rec_t *rec = queue[queue_head];
            queue_head = (queue_head + 1) % queue_cap;
            queue_n--;
            uint64_t k = (uint64_t)mg_otel_span_count(rec);
            spans += k;
            queued_spans -= k;
            batch[n++] = rec;
        }
        if (queue_n)
            first_at_ms = mg_now_ms(); /* what is left waits at most another interval */
        if (generation != c.generation) {
            client_close(&c); /* a new endpoint */
            c.generation = generation;
        }
        settings_free(&s);
        settings_copy(&s, &cur);
        int stop_now = stopping;
        pthread_mutex_unlock(&lock);

        mg_text_t body = { 0 };
        mg_otel_encode(&body, batch, (int)n, s.service_name);
        int status = -1, tries = 0;
        uint64_t backoff = BACKOFF_FIRST_MS;
        for (;;) {
            tries++;
            status = post(&c, &s, body.p, body.len);
            if (status >= 200 && status < 300)
                break;
            pthread_mutex_lock(&lock);
            stats.errors++;
            int give_up = !retryable(status) || tries >= (stop_now ? 1 : MAX_TRIES) || stopping || !cur.endpoint;
            if (!give_up)
                wait_ms(backoff + (uint64_t)(mg_trace_random64() % (backoff / 4 + 1))); /* stop wakes it */
            pthread_mutex_unlock(&lock);
            if (give_up)
                break;
            backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
        }
        free(body.p);
        if (status < 200 || status >= 300) {
            /* once per 10 s at most: a dead collector must not flood the error log either */
            uint64_t now = mg_now_ms();
            if (now - last_log_ms >= 10000 || !last_log_ms) {
                last_log_ms = now;
                if (status < 0)
                    mg_log_warn(NULL, "tracing: export to %s failed after %d tries (%s): %llu spans dropped",
                                s.endpoint, tries, c.why, (unsigned long long)spans);
                else
                    mg_log_warn(NULL, "tracing: %s answered %d: %llu spans dropped", s.endpoint, status,
                                (unsigned long long)spans);
            }
        }
        for (size_t i = 0; i < n; i++)
            mg_trace_rec_put(batch[i]);
        pthread_mutex_lock(&lock);
        if (status >= 200 && status < 300) {
            stats.exported += spans;
        } else {
            stats.dropped_failed += spans;
            if (stopping)
                drop_queue_locked(&stats.dropped_failed); /* shutting down: one failure is the answer for the rest */
        }
    }
    pthread_mutex_unlock(&lock);
    client_close(&c);
    if (c.ctx)
        SSL_CTX_free(c.ctx);
    settings_free(&s);
    free(batch);
    return NULL;
}

void mg_otel_stop(void)
{
    pthread_once(&cond_once, init_cond);
    pthread_mutex_lock(&lock);
    int was = running;
    stopping = 1;
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&lock);
    if (was)
        pthread_join(thread, NULL);
    pthread_mutex_lock(&lock);
    running = 0;
    uint64_t dropped = 0;
    drop_queue_locked(&dropped);
    stats.dropped_queue += dropped;
    settings_free(&cur);
    free(queue);
    queue = NULL;
    queue_cap = queue_head = queue_n = 0;
    pthread_mutex_unlock(&lock);
}
