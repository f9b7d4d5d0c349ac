/*
 * mg_conn — one downstream connection's transport: the socket (plain, or
 * TLS through OpenSSL on the non-blocking socket), its flat input buffer, its
 * output evbuffer, one timer, the send timeout, and a graceful end (lingering
 * close so a final response is not lost). What the bytes mean is the
 * protocol's: HTTP/1.1 (mg_h1.c) or HTTP/2 (mg_h2.c), chosen per connection
 * (ALPN on TLS, the client preface on a cleartext listener with http2 on),
 * through the mg_conn_proto_t calls below.
 *
 * Lifetime: mg_conn_accept creates it; mg_conn_close / mg_conn_reset free it
 * (the protocol's `closing` runs first and aborts what its requests do); the
 * struct itself is freed at the end of the loop pass (callers up the stack
 * may still look at it: check `freed`).
 */
#ifndef MG_CONN_H
#define MG_CONN_H

#include <event2/buffer.h>

#include "mg_http1.h"
#include "mg_ltimer.h"
#include "mg_tls.h"
#include "mg_worker.h"

typedef struct mg_conn_proto {
    const char *name;
    void (*input)(mg_conn_t *c);      /* bytes arrived: [in_off, in_len) of c->in */
    void (*drained)(mg_conn_t *c);    /* the output buffer is empty again */
    void (*writable)(mg_conn_t *c);   /* a write that had to wait went through (the socket took bytes) */
    void (*timeout)(mg_conn_t *c);    /* c->timer fired */
    void (*eof)(mg_conn_t *c);        /* the peer closed or reset; the proto closes (or finishes writing) */
    void (*drain)(mg_conn_t *c);      /* the worker shuts down: end gracefully */
    void (*closing)(mg_conn_t *c);    /* the connection is being freed: abort everything running on it */
} mg_conn_proto_t;

/* HTTP/1.1 connection states (mg_h1.c). */
enum mg_conn_state {
    MG_CONN_IDLE,      /* between requests; keep-alive timer */
    MG_CONN_HEAD,      /* part of a head received; header timer (slowloris) */
    MG_CONN_BODY,      /* reading the request body; body timer */
    MG_CONN_HANDLER,   /* the request runs; its deadline rules */
};

struct mg_conn {
    mg_worker_t *worker;
    evutil_socket_t fd;
    const mg_conn_proto_t *proto;
    struct event rev;             /* readable (persistent while reading is enabled) */
    struct event *wev;            /* writable, armed only when a write would block (made then); send timeout */
    mg_ltimer_t timer;            /* the protocol's timeouts (mg_conn_arm), kept lazily */
    /* input: bytes [in_off, in_len) of in are unprocessed */
    char *in;                     /* NULL while idle (mg_conn_idle) */
    size_t in_off, in_len, in_cap;
    size_t in_max;                /* the input buffer's bound (the rest waits in the kernel) */
    struct evbuffer *out;
    unsigned processing:1;        /* inside the proto's input pass: do not recurse, flush at its end */
    unsigned close_after:1;       /* end after the response in progress (drain) */
    unsigned closing:1;           /* the last bytes are being written, then lingering close */
    unsigned reading:1;           /* rev is armed */
    unsigned writing:1;           /* wev is armed */
    unsigned freed:1;
    unsigned handshaking:1;       /* TLS handshake not finished */
    unsigned http2:1;             /* the listener offers HTTP/2 (ALPN h2, or the h2c preface) */
    SSL *ssl;                     /* a TLS listener's connection, or NULL */
    char remote[64];              /* "ip:port" */
    struct mg_conn *next, *prev;  /* worker's list */
    struct mg_conn *reap_next;
    uint64_t requests;            /* requests started on this connection */

    /* HTTP/1.1 (mg_h1.c): one request at a time; pipelined ones wait in `in` */
    enum mg_conn_state state;
    mg_req_t *req;                /* the request in progress, if any */
    size_t scanned;               /* head bytes already searched for the end of head */
    int64_t body_left;            /* Content-Length bytes still to read */
    int chunked;
    mg_chunked_t chunk;
    int body_paused;              /* the request body's consumer is full */
    int64_t max_body;             /* this request's body limit (0: none) */
    int64_t body_total;           /* decoded chunked body bytes so far */
    int resp_framing;             /* the response in progress: MG_H1_CL, MG_H1_CHUNKED, MG_H1_CLOSE, MG_H1_NONE */
    int resp_keepalive;           /* the connection may carry another request after it */
    int trailers_ok;              /* the client sent TE: trailers */

    /* HTTP/2 (mg_h2.c) */
    struct mg_h2 *h2;

    /* after an upgrade: the protocol's state (mg_tunnel, mg_ws_lua) */
    void *proto_data;
};

/*
 * Takes ownership of an accepted non-blocking socket. tls: the listener's TLS
 * context or NULL; http2: the listener offers HTTP/2.
 */
void mg_conn_accept(mg_worker_t *w, evutil_socket_t fd, struct sockaddr *sa, int salen, SSL_CTX *tls, int http2);

/* Writes what the kernel takes now; the rest goes when the socket is writable (send timeout). */
void mg_conn_flush(mg_conn_t *c);
/* Writes what is queued, then half-closes and lingers until the peer closes. */
void mg_conn_begin_close(mg_conn_t *c);
/* Closes with RST (SO_LINGER 0): a response was cut short and must not look complete. */
void mg_conn_reset(mg_conn_t *c);
/* Closes now, aborting what runs on it. */
void mg_conn_close(mg_conn_t *c);

/* The connection's one timer: arm (replacing), stop, and is it armed? (proto->timeout runs when it passes) */
void mg_conn_arm(mg_conn_t *c, uint32_t ms);
void mg_conn_disarm(mg_conn_t *c);
int mg_conn_armed(const mg_conn_t *c);
/* Read interest on or off (back-pressure). */
void mg_conn_set_reading(mg_conn_t *c, int on);
/* The protocol used n input bytes. */
void mg_conn_consume(mg_conn_t *c, size_t n);
/*
 * Nothing is in flight on c: its input buffer is given back (allocated again
 * on the next read), so an idle keep-alive connection costs its struct and
 * little else, as nginx and h2o hand read buffers back.
 */
void mg_conn_idle(mg_conn_t *c);

/* Worker drain: let the protocol finish gracefully. */
void mg_conn_drain(mg_conn_t *c);

/* Frees connections queued for reaping (called by the worker). */
void mg_conn_reap(mg_worker_t *w);

#endif
