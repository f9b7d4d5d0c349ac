/*
 * wsbench — the WebSocket benchmark's peers, one epoll loop each, using the
 * gateway's own framing code (src/mg_ws.c) for heads, masks and the accept key.
 *
 *   wsbench server PORT                         an echo upstream on 127.0.0.1
 *   wsbench idle PORT PATH N SECONDS            N handshakes, held idle SECONDS
 *   wsbench echo PORT PATH CONNS SECONDS SIZE   CONNS ping-pong loops of SIZE-byte text
 *
 * idle prints "open N" once all N got their 101 (the caller samples RSS then)
 * and "closed" at the end; echo prints "messages M seconds S rate R".
 * Built by bench/ws.sh: cc -O2 bench/wsbench.c src/mg_ws.c -Isrc -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "mg_ws.h"

#define BUF 65536

typedef struct peer {
    int fd;
    int state;                 /* 0 handshake, 1 frames */
    size_t in_len;
    char in[BUF];
    uint64_t count;
} peer_t;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
        if (k < 0 && (errno == EAGAIN || errno == EINTR))
            continue; /* the benchmark's messages are small: a short spin is fine */
        if (k <= 0)
            return;
        c += k;
        n -= (size_t)k;
    }
}

/* ---- the echo upstream ---- */

static void server_handshake(peer_t *p)
{
    char *end = memmem(p->in, p->in_len, "\r\n\r\n", 4);
    if (!end)
        return;
    char *k = memmem(p->in, (size_t)(end - p->in), "Sec-WebSocket-Key: ", 19);
    if (!k) {
        close(p->fd);
        p->fd = -1;
        return;
    }
    k += 19;
    char accept[29], resp[256];
    mg_ws_accept_key(k, 24, accept);
    int n = snprintf(resp, sizeof(resp),
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n", accept);
    send_all(p->fd, resp, (size_t)n);
    size_t used = (size_t)(end + 4 - p->in);
    memmove(p->in, p->in + used, p->in_len - used);
    p->in_len -= used;
    p->state = 1;
}

/* Echoes whole frames (client frames are masked; ours are not). */
static void server_frames(peer_t *p)
{
    size_t at = 0;
    char out[BUF + MG_WS_MAX_HEAD];
    size_t olen = 0;
    while (at < p->in_len) {
        mg_ws_frame_t f;
        const char *why;
        int h = mg_ws_parse_head((uint8_t *)p->in + at, p->in_len - at, 1, BUF - 64, &f, &why);
        if (h == MG_WS_AGAIN || (h > 0 && p->in_len - at - (size_t)h < f.len))
            break;
        if (h < 0 || f.opcode == MG_WS_CLOSE) {
            close(p->fd);
            p->fd = -1;
            return;
        }
        uint8_t *payload = (uint8_t *)p->in + at + h;
        mg_ws_mask(payload, f.len, f.mask, 0);
        int op = f.opcode == MG_WS_PING ? MG_WS_PONG : f.opcode;
        if (olen + MG_WS_MAX_HEAD + f.len > sizeof(out)) {
            send_all(p->fd, out, olen);
            olen = 0;
        }
        olen += mg_ws_head((uint8_t *)out + olen, op, f.fin, f.len, NULL);
        memcpy(out + olen, payload, f.len);
        olen += f.len;
        at += (size_t)h + f.len;
    }
    if (olen)
        send_all(p->fd, out, olen);
    memmove(p->in, p->in + at, p->in_len - at);
    p->in_len -= at;
}

static int server(int port)
{
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(ls, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(ls, 4096) < 0)
        die("listen");
    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    printf("ready\n");
    fflush(stdout);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            peer_t *p = evs[i].data.ptr;
            if (!p) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    peer_t *np = calloc(1, sizeof(*np));
                    np->fd = fd;
                    struct epoll_event e = { .events = EPOLLIN, .data.ptr = np };
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                }
                continue;
            }
            ssize_t k = recv(p->fd, p->in + p->in_len, BUF - p->in_len, 0);
            if (k <= 0) {
                if (k < 0 && errno == EAGAIN)
                    continue;
                close(p->fd);
                free(p);
                continue;
            }
            p->in_len += (size_t)k;
            if (p->state == 0)
                server_handshake(p);
            if (p->fd >= 0 && p->state == 1)
                server_frames(p);
            if (p->fd < 0)
                free(p);
        }
    }
}

/* ---- clients ---- */

static int dial(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
        die("connect");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

/* A blocking handshake (the set-up is not what is measured). Returns 0 on a 101. */
static int handshake(int fd, const char *path)
{
    char req[512];
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", path);
    send_all(fd, req, (size_t)n);
    char buf[1024];
    size_t have = 0;
    while (have < sizeof(buf) - 1) {
        ssize_t k = recv(fd, buf + have, sizeof(buf) - 1 - have, 0);
        if (k <= 0)
            return -1;
        have += (size_t)k;
        buf[have] = 0;
        if (strstr(buf, "\r\n\r\n"))
            return strncmp(buf, "HTTP/1.1 101", 12) == 0 ? 0 : -1;
    }
    return -1;
}

static int idle(int port, const char *path, int n, double seconds)
{
    int *fds = calloc((size_t)n, sizeof(int)), ok = 0;
    for (int i = 0; i < n; i++) {
        fds[i] = dial(port);
        ok += handshake(fds[i], path) == 0;
    }
    printf("open %d\n", ok);
    fflush(stdout);
    usleep((useconds_t)(seconds * 1e6));
    for (int i = 0; i < n; i++)
        close(fds[i]);
    printf("closed\n");
    return ok == n ? 0 : 1;
}

static int echo(int port, const char *path, int conns, double seconds, size_t size)
{
    static const uint8_t key[4] = { 1, 2, 3, 4 };
    uint8_t frame[MG_WS_MAX_HEAD + 4096];
    if (size > 4096)
        size = 4096;
    size_t h = mg_ws_head(frame, MG_WS_TEXT, 1, size, key);
    memset(frame + h, 'm', size);
    mg_ws_mask(frame + h, size, key, 0);
    size_t flen = h + size, reply = (size < 126 ? 2 : 4) + size;
    int ep = epoll_create1(0);
    peer_t *ps = calloc((size_t)conns, sizeof(peer_t));
    for (int i = 0; i < conns; i++) {
        ps[i].fd = dial(port);
        if (handshake(ps[i].fd, path) != 0) {
            fprintf(stderr, "handshake %d failed\n", i);
            return 1;
        }
        struct epoll_event e = { .events = EPOLLIN, .data.ptr = &ps[i] };
        epoll_ctl(ep, EPOLL_CTL_ADD, ps[i].fd, &e);
    }
    double t0 = now_s(), end = t0 + seconds;
    for (int i = 0; i < conns; i++)
        send_all(ps[i].fd, frame, flen);
    uint64_t total = 0;
    struct epoll_event evs[256];
    while (now_s() < end) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < n; i++) {
            peer_t *p = evs[i].data.ptr;
            ssize_t k = recv(p->fd, p->in + p->in_len, BUF - p->in_len, MSG_DONTWAIT);
            if (k <= 0) {
                if (k < 0 && errno == EAGAIN)
                    continue;
                fprintf(stderr, "connection closed\n");
                return 1;
            }
            p->in_len += (size_t)k;
            while (p->in_len >= reply) {
                memmove(p->in, p->in + reply, p->in_len - reply);
                p->in_len -= reply;
                total++;
                send_all(p->fd, frame, flen);
            }
        }
    }
    double dt = now_s() - t0;
    printf("messages %llu seconds %.3f rate %.0f\n", (unsigned long long)total, dt, total / dt);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "server") == 0)
        return server(atoi(argv[2]));
    if (argc >= 6 && strcmp(argv[1], "idle") == 0)
        return idle(atoi(argv[2]), argv[3], atoi(argv[4]), atof(argv[5]));
    if (argc >= 7 && strcmp(argv[1], "echo") == 0)
        return echo(atoi(argv[2]), argv[3], atoi(argv[4]), atof(argv[5]), (size_t)atoi(argv[6]));
    fprintf(stderr, "usage: wsbench server PORT | idle PORT PATH N SECONDS | echo PORT PATH CONNS SECONDS SIZE\n");
    return 2;
}
