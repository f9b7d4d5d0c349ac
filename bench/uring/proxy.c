/*
 * bench/uring/proxy.c: a measured prototype, NOT a gateway.
 *
 * One single-threaded HTTP/1.1 keep-alive reverse proxy for exactly the
 * shape of the W1 benchmark (bench/README.md): clients send small GETs
 * without bodies on keep-alive connections, one at a time; each request is
 * forwarded unchanged to one upstream address over a pooled keep-alive
 * upstream connection (one request in flight per upstream connection); the
 * response's head ends at "\r\n\r\n", its body is framed by Content-Length,
 * and it is relayed back as it arrives. No chunked bodies, no request
 * bodies, no pipelining (bytes that arrive early wait), no timeouts, no
 * header rewriting: any error closes the connection (and its peer).
 *
 * It exists to answer one question with numbers: at this shape, does an
 * io_uring event core spend less kernel time per proxied request than the
 * level-triggered epoll + recv/send pattern that libevent gives Moongate?
 * The proxy logic (client_input, upstream_input, sent, finish) is shared;
 * only the event core differs, chosen on the command line:
 *
 *   proxy epoll PORT UPSTREAM_PORT
 *       epoll_wait, one recv per readable event, send written directly;
 *       pooled upstream connections stay registered (as Moongate does).
 *   proxy uring[,multishot][,defer][,coop][,pollfirst][,sendskip] PORT UPSTREAM_PORT
 *       liburing; every SQE of a loop turn goes in with the one
 *       io_uring_submit_and_wait of the next turn. Multishot accept.
 *       plain:     one recv SQE into the connection's buffer per read,
 *                  one send SQE per write;
 *       multishot: one multishot recv per connection for its whole life,
 *                  into a provided buffer ring (copied out, recycled); a
 *                  response that outruns the 16 KiB buffer while a send is
 *                  in flight closes the connection (W1's never does);
 *       defer:     IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
 *       coop:      IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN;
 *       pollfirst: IORING_RECVSEND_POLL_FIRST on recvs posted while the
 *                  data cannot be there yet (the response, the next request);
 *       sendskip:  sends with MSG_WAITALL and IOSQE_CQE_SKIP_SUCCESS (a CQE
 *                  only if one fails): half the CQEs. Sound only at W1's
 *                  strict request/response (see ur_send).
 *       No SQPOLL: its kernel thread polls the SQ from a second core, and
 *       this 2-core setup gives CPU 1 to wrk and the upstream; a proxy
 *       that needs two cores is not the comparison asked for.
 *
 * SIGUSR1 prints its own counters (requests, loop turns, system calls) to
 * stderr; SIGTERM/SIGINT print them and exit. Built and measured by bench/uring.sh.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

enum { BUF = 16384, RING = 4096 };
enum { OP_RECV = 0, OP_SEND = 1, OP_MASK = 1 }; /* low bit of user_data */

struct conn {
    int fd;
    int upstream;       /* 1: a pooled upstream connection, 0: a client */
    struct conn *peer;  /* the other side while a request is in flight */
    struct conn *next;  /* idle pool / graveyard link */
    size_t len;         /* bytes in buf */
    size_t off;         /* client: request bytes sent; upstream: response bytes relayed */
    size_t req;         /* client: length of the request in flight */
    long long total;    /* upstream: head + Content-Length, -1 until the head is read */
    long long got;      /* upstream: response bytes received */
    int sending;        /* a send from buf is in flight */
    int reading;        /* uring plain: a recv into buf is in flight */
    int armed;          /* uring multishot: its recv is armed */
    int ops;            /* uring: SQEs in flight (a multishot recv counts once) */
    int closed;
    unsigned long long id; /* uring sendskip: names it in a failed send's CQE */
    unsigned events;    /* epoll: what is registered */
    struct conn *blocked; /* epoll: whose send waits for this fd to be writable */
    char buf[BUF];
};

/* What differs between the cores. send writes n bytes of owner->buf to
 * owner->peer and ends in sent(owner, result); read makes c's next bytes
 * arrive in input(c, n); close ends c (it is freed once nothing refers to it). */
struct core {
    void (*send)(struct conn *owner, const char *p, size_t n);
    void (*read)(struct conn *c);
    void (*close)(struct conn *c);
};
static const struct core *core;
static struct sockaddr_in up_addr;
static struct conn *pool, *graveyard;
static struct conn *by_fd[1 << 16]; /* uring sendskip: fd -> its connection */
/* Counted by the proxy itself, unperturbed by strace: every system call it
 * makes (io_uring_enter counted once per turn), its loop turns, its requests. */
static unsigned long long n_requests, n_turns, n_sys, n_conns;
static volatile sig_atomic_t stop, dump;

static void sent(struct conn *c, ssize_t n);
static void input(struct conn *c, ssize_t n);

static int nonblocking; /* epoll: sockets are O_NONBLOCK; io_uring wants them blocking */

static void die(const char *what) { perror(what); exit(1); }

static void counters(const char *mode)
{
    fprintf(stderr, "%s: %llu requests, %llu loop turns, %llu system calls\n", mode, n_requests, n_turns, n_sys);
}

static void nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    n_sys++;
}

static struct conn *conn_new(int fd, int upstream)
{
    struct conn *c = calloc(1, sizeof *c);
    if (!c) die("calloc");
    c->fd = fd;
    c->upstream = upstream;
    c->total = -1;
    c->id = ++n_conns;
    if (fd >= (int)(sizeof by_fd / sizeof *by_fd)) die("fd too large");
    by_fd[fd] = c;
    nodelay(fd);
    if (nonblocking && fcntl(fd, F_SETFL, O_NONBLOCK) < 0) die("fcntl");
    n_sys += nonblocking;
    return c;
}

/* Marks c closed and leaves it for reap(): an event of this loop turn or
 * an SQE in flight may still name it. */
static void conn_bury(struct conn *c)
{
    if (c->closed) return;
    c->closed = 1;
    for (struct conn **p = &pool; *p; p = &(*p)->next)
        if (*p == c) { *p = c->next; break; }
    c->next = graveyard;
    graveyard = c;
}

static void reap(void)
{
    for (struct conn **p = &graveyard; *p;) {
        struct conn *c = *p;
        if (c->ops) { p = &c->next; continue; }
        *p = c->next;
        by_fd[c->fd] = NULL;
        close(c->fd);
        n_sys++;
        free(c);
    }
}

/* Closes c and the peer it serves: errors just close. */
static void drop(struct conn *c)
{
    struct conn *p = c->peer;
    c->peer = NULL;
    if (p) { p->peer = NULL; core->close(p); }
    core->close(c);
}

/* ---- the proxy logic, shared by both cores ---- */

static struct conn *upstream_get(void)
{
    struct conn *u = pool;
    if (u) { pool = u->next; return u; }
    /* A new pooled connection: a blocking connect, on loopback, once per
     * connection of the pool (the pool stops growing after the warm-up). */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    n_sys += 2;
    if (fd < 0 || connect(fd, (struct sockaddr *)&up_addr, sizeof up_addr) < 0) {
        if (fd >= 0) close(fd);
        return NULL;
    }
    return conn_new(fd, 1);
}

/* -1 without a valid Content-Length field in head[0..n). */
static long long content_length(const char *head, size_t n)
{
    static const char name[] = "\r\ncontent-length:";
    for (const char *p = head; p + sizeof name - 1 <= head + n; p++) {
        if (*p != '\r' || strncasecmp(p, name, sizeof name - 1)) continue;
        p += sizeof name - 1;
        while (*p == ' ' || *p == '\t') p++;
        if (*p < '0' || *p > '9') return -1;
        long long v = 0;
        while (*p >= '0' && *p <= '9' && v < (1LL << 40)) v = v * 10 + (*p++ - '0');
        return v;
    }
    return -1;
}

/* A client's bytes: forward the request once its head is complete. */
static void client_input(struct conn *c)
{
    if (c->peer || c->sending) return; /* one at a time: the bytes wait */
    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (!end) {
        if (c->len == BUF) drop(c);
        else core->read(c);
        return;
    }
    struct conn *u = upstream_get();
    if (!u) { drop(c); return; }
    c->req = (size_t)(end + 4 - c->buf);
    c->off = 0;
    c->peer = u;
    u->peer = c;
    u->len = u->off = 0;
    u->total = -1;
    u->got = 0;
    core->read(u); /* the response, posted with the request in the same turn */
    c->sending = 1;
    core->send(c, c->buf, c->req);
}

static void finish(struct conn *u)
{
    struct conn *c = u->peer;
    u->peer = c->peer = NULL;
    u->total = -1;
    u->next = pool;
    pool = u;
    n_requests++;
    if (c->len) client_input(c); /* the next request came early */
    else core->read(c);
}

/* An upstream's bytes, or a finished send: move the response on. */
static void pump(struct conn *u)
{
    if (!u->sending && !u->reading && u->off == u->len) u->off = u->len = 0;
    if (u->total < 0) {
        char *end = memmem(u->buf, u->len, "\r\n\r\n", 4);
        if (!end) {
            if (u->len == BUF) drop(u);
            else core->read(u);
            return;
        }
        size_t head = (size_t)(end + 4 - u->buf);
        long long cl = content_length(u->buf, head);
        if (cl < 0) { drop(u); return; }
        u->total = (long long)head + cl;
    }
    if (u->got > u->total) { drop(u); return; } /* bytes past the response */
    if (!u->sending && u->off < u->len) {
        u->sending = 1;
        core->send(u, u->buf + u->off, u->len - u->off);
        return; /* sent() pumps again */
    }
    if (u->got == u->total) {
        if (!u->sending) finish(u);
    } else if (u->len < BUF) {
        core->read(u);
    }
}

static void upstream_input(struct conn *u)
{
    if (!u->peer) { drop(u); return; } /* an idle pooled connection spoke or closed */
    pump(u);
}

/* n bytes were appended at c->buf + c->len by the core (n <= 0: end or error). */
static void input(struct conn *c, ssize_t n)
{
    if (c->closed) return;
    if (n <= 0) { drop(c); return; }
    c->len += (size_t)n;
    if (c->upstream) {
        c->got += n;
        upstream_input(c);
    } else {
        client_input(c);
    }
}

static void sent(struct conn *c, ssize_t n)
{
    c->sending = 0;
    if (c->closed) return;
    if (n <= 0 || !c->peer) { drop(c); return; }
    c->off += (size_t)n;
    if (c->upstream) { pump(c); return; }
    if (c->off < c->req) { /* a short send: the rest */
        c->sending = 1;
        core->send(c, c->buf + c->off, c->req - c->off);
        return;
    }
    memmove(c->buf, c->buf + c->req, c->len - c->req); /* the request is out */
    c->len -= c->req;
    c->req = c->off = 0;
    if (c->len) client_input(c);
    else core->read(c); /* notices a client that goes away while we wait */
}

/* ---- epoll core: what libevent does for Moongate ---- */

static int ep;

static void ep_set(struct conn *c, unsigned events)
{
    if (c->events == events) return;
    struct epoll_event ev = { .events = events, .data.ptr = c };
    if (epoll_ctl(ep, c->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
    n_sys++;
    c->events = events;
}

static void ep_send(struct conn *owner, const char *p, size_t n)
{
    struct conn *to = owner->peer;
    ssize_t r = send(to->fd, p, n, MSG_NOSIGNAL);
    n_sys++;
    if (r < 0 && errno == EAGAIN) { /* wait for the peer, stop reading the owner */
        to->blocked = owner;
        ep_set(to, to->events | EPOLLOUT);
        ep_set(owner, owner->events & ~EPOLLIN);
        return;
    }
    sent(owner, r < 0 ? -1 : r);
}

/* Called again when the fd it waited for is writable. */
static void ep_resend(struct conn *owner)
{
    size_t end = owner->upstream ? owner->len : owner->req;
    ep_send(owner, owner->buf + owner->off, end - owner->off);
}

static void ep_read(struct conn *c)
{
    ep_set(c, c->events | EPOLLIN); /* level-triggered; registered once, kept while pooled */
}

static void ep_close(struct conn *c)
{
    conn_bury(c); /* close() in reap() takes it out of the epoll set */
}

static const struct core epoll_core = { ep_send, ep_read, ep_close };

static void ep_readable(struct conn *c)
{
    if (c->len == BUF) { drop(c); return; }
    ssize_t r = recv(c->fd, c->buf + c->len, BUF - c->len, 0);
    n_sys++;
    if (r < 0 && errno == EAGAIN) return;
    input(c, r);
}

static void ep_writable(struct conn *c)
{
    struct conn *owner = c->blocked;
    c->blocked = NULL;
    ep_set(c, c->events & ~EPOLLOUT);
    if (!owner) return;
    ep_set(owner, owner->events | EPOLLIN);
    ep_resend(owner);
}

static void run_epoll(int lfd)
{
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event lev = { .events = EPOLLIN, .data.ptr = NULL };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0) die("epoll_ctl");
    struct epoll_event evs[256];
    while (!stop) {
        int n = epoll_wait(ep, evs, 256, -1);
        n_turns++;
        n_sys++;
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while (n_sys++, (fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) >= 0) ep_read(conn_new(fd, 0));
                continue;
            }
            if (!c->closed && (evs[i].events & EPOLLOUT)) ep_writable(c);
            if (!c->closed && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) ep_readable(c);
        }
        reap();
        if (dump) { dump = 0; counters("epoll"); }
    }
}

/* ---- io_uring core ---- */

static struct io_uring ring;
static int multishot, pollfirst, sendskip;
static struct io_uring_buf_ring *br;
static char *br_bufs;
enum { UD_CANCEL = 0, UD_ACCEPT = 2, BR_COUNT = 256, BR_LEN = 2048 };
#define UD_SKIPFAIL (1ULL << 63) /* never a user-space pointer */

static struct io_uring_sqe *sqe_get(void)
{
    struct io_uring_sqe *s = io_uring_get_sqe(&ring);
    if (!s) { /* the SQ is full: hand this batch in early */
        io_uring_submit(&ring);
        n_sys++;
        if (!(s = io_uring_get_sqe(&ring))) die("io_uring_get_sqe");
    }
    return s;
}

static void ur_send(struct conn *owner, const char *p, size_t n)
{
    struct io_uring_sqe *s = sqe_get();
    if (sendskip) {
        /* All or an error (MSG_WAITALL), and no CQE unless it fails: taken as
         * done now. Safe only at W1's strict request/response: a buffer is
         * refilled by the peer's answer to what it sends, so never before
         * that send finished. A failure names the owner by fd and id. */
        io_uring_prep_send(s, owner->peer->fd, p, n, MSG_NOSIGNAL | MSG_WAITALL);
        s->flags |= IOSQE_CQE_SKIP_SUCCESS;
        io_uring_sqe_set_data64(s, UD_SKIPFAIL | owner->id << 20 | (uint64_t)owner->fd);
        sent(owner, (ssize_t)n);
        return;
    }
    io_uring_prep_send(s, owner->peer->fd, p, n, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(s, (uintptr_t)owner | OP_SEND);
    owner->ops++;
}

static void ur_read(struct conn *c)
{
    if (c->closed || (multishot ? c->armed : c->reading || c->len == BUF)) return;
    struct io_uring_sqe *s = sqe_get();
    if (multishot) { /* armed once, for the connection's life (re-armed if the kernel ends it) */
        io_uring_prep_recv_multishot(s, c->fd, NULL, 0, 0);
        s->flags |= IOSQE_BUFFER_SELECT;
        s->buf_group = 0;
        c->armed = 1;
    } else {
        io_uring_prep_recv(s, c->fd, c->buf + c->len, BUF - c->len, 0);
        c->reading = 1;
    }
    /* every recv here is posted after what had arrived was read: skip the first try */
    if (pollfirst) s->ioprio |= IORING_RECVSEND_POLL_FIRST;
    io_uring_sqe_set_data64(s, (uintptr_t)c | OP_RECV);
    c->ops++;
}

static void ur_close(struct conn *c)
{
    if (c->closed) return;
    conn_bury(c);
    if (c->ops) { /* end what is in flight so that reap() can free it */
        shutdown(c->fd, SHUT_RDWR);
        n_sys++;
        struct io_uring_sqe *s = sqe_get();
        io_uring_prep_cancel_fd(s, c->fd, IORING_ASYNC_CANCEL_ALL);
        io_uring_sqe_set_data64(s, UD_CANCEL);
    }
}

static const struct core uring_core = { ur_send, ur_read, ur_close };

static void ur_accept(int lfd)
{
    struct io_uring_sqe *s = sqe_get();
    io_uring_prep_multishot_accept(s, lfd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(s, UD_ACCEPT);
}

static void ur_cqe(int lfd, const struct io_uring_cqe *cqe)
{
    uint64_t d = cqe->user_data;
    if (d == UD_CANCEL) return;
    if (d & UD_SKIPFAIL) { /* a sendskip send failed */
        struct conn *c = by_fd[d & 0xfffff];
        if (c && c->id == ((d & ~UD_SKIPFAIL) >> 20)) drop(c);
        return;
    }
    if (d == UD_ACCEPT) {
        if (cqe->res >= 0) ur_read(conn_new(cqe->res, 0));
        if (!(cqe->flags & IORING_CQE_F_MORE)) ur_accept(lfd);
        return;
    }
    struct conn *c = (struct conn *)(uintptr_t)(d & ~(uint64_t)OP_MASK);
    if ((d & OP_MASK) == OP_SEND) {
        c->ops--;
        sent(c, cqe->res);
        return;
    }
    if (!multishot) {
        c->ops--;
        c->reading = 0;
        input(c, cqe->res);
        return;
    }
    ssize_t n = cqe->res;
    if (!(cqe->flags & IORING_CQE_F_MORE)) { c->ops--; c->armed = 0; }
    if (cqe->flags & IORING_CQE_F_BUFFER) {
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        char *p = br_bufs + (size_t)bid * BR_LEN;
        if (n > 0 && !c->closed) {
            if ((size_t)n > BUF - c->len) n = -1; /* more than one request or response holds */
            else memcpy(c->buf + c->len, p, (size_t)n);
        }
        io_uring_buf_ring_add(br, p, BR_LEN, bid, io_uring_buf_ring_mask(BR_COUNT), 0);
        io_uring_buf_ring_advance(br, 1);
    } else if (n == -ENOBUFS) { /* not an error: the ring ran dry and the kernel ended the recv */
        ur_read(c);
        return;
    }
    input(c, n);
    ur_read(c); /* re-arms it if the kernel ended it after data */
}

static void run_uring(int lfd, unsigned flags)
{
    struct io_uring_params p = { .flags = flags };
    int r = io_uring_queue_init_params(RING, &ring, &p);
    if (r < 0) { errno = -r; die("io_uring_queue_init_params"); }
    if (multishot) {
        size_t sz = BR_COUNT * sizeof(struct io_uring_buf);
        br = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
        br_bufs = malloc((size_t)BR_COUNT * BR_LEN);
        if (br == MAP_FAILED || !br_bufs) die("buffer ring");
        struct io_uring_buf_reg reg = { .ring_addr = (uintptr_t)br, .ring_entries = BR_COUNT, .bgid = 0 };
        if ((r = io_uring_register_buf_ring(&ring, &reg, 0)) < 0) { errno = -r; die("io_uring_register_buf_ring"); }
        io_uring_buf_ring_init(br);
        for (int i = 0; i < BR_COUNT; i++)
            io_uring_buf_ring_add(br, br_bufs + (size_t)i * BR_LEN, BR_LEN, (unsigned short)i,
                                  io_uring_buf_ring_mask(BR_COUNT), i);
        io_uring_buf_ring_advance(br, BR_COUNT);
    }
    ur_accept(lfd);
    while (!stop) {
        r = io_uring_submit_and_wait(&ring, 1); /* this turn's SQEs in, wait for one CQE */
        n_turns++;
        n_sys++;
        if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) { errno = -r; die("io_uring_submit_and_wait"); }
        reap(); /* after the submit: the SQEs of the last turn have taken their files */
        unsigned head, seen = 0;
        struct io_uring_cqe *cqe;
        io_uring_for_each_cqe(&ring, head, cqe) {
            ur_cqe(lfd, cqe);
            seen++;
        }
        io_uring_cq_advance(&ring, seen);
        if (dump) { dump = 0; counters("uring"); }
    }
}

static void on_signal(int sig)
{
    if (sig == SIGUSR1) dump = 1;
    else stop = 1;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s epoll|uring[,multishot][,defer][,coop][,pollfirst][,sendskip] PORT UPSTREAM_PORT\n", argv[0]);
        return 2;
    }
    unsigned flags = 0;
    int use_uring = 0;
    char *mode = strdup(argv[1]);
    for (char *save, *t = strtok_r(mode, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (!strcmp(t, "epoll")) use_uring = 0;
        else if (!strcmp(t, "uring")) use_uring = 1;
        else if (!strcmp(t, "multishot")) multishot = 1;
        else if (!strcmp(t, "pollfirst")) pollfirst = 1;
        else if (!strcmp(t, "sendskip")) sendskip = 1;
        else if (!strcmp(t, "defer")) flags |= IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
        else if (!strcmp(t, "coop")) flags |= IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN;
        else { fprintf(stderr, "%s: unknown mode word '%s'\n", argv[0], t); return 2; }
    }
    if (!use_uring && (flags || multishot || pollfirst || sendskip)) {
        fprintf(stderr, "%s: multishot, defer, coop, pollfirst and sendskip are io_uring options\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[2]), up_port = atoi(argv[3]);
    if (port <= 0 || port > 65535 || up_port <= 0 || up_port > 65535) {
        fprintf(stderr, "%s: bad port\n", argv[0]);
        return 2;
    }
    up_addr = (struct sockaddr_in){ .sin_family = AF_INET, .sin_port = htons(up_port),
                                    .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = { .sa_handler = on_signal }; /* no SA_RESTART: the wait returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (use_uring ? 0 : SOCK_NONBLOCK), 0), one = 1;
    struct sockaddr_in la = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(lfd, (struct sockaddr *)&la, sizeof la) < 0 || listen(lfd, 4096) < 0)
        die("listen");
    nonblocking = !use_uring;
    core = use_uring ? &uring_core : &epoll_core;
    if (use_uring) run_uring(lfd, flags);
    else run_epoll(lfd);
    counters(argv[1]);
    return 0;
}
