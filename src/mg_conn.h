/*
 * mg_conn — one downstream HTTP/1.1 connection: reads and frames requests
 * (head, Content-Length or chunked body), enforces the size limits and the
 * header / body / keep-alive timeouts, runs one request at a time (pipelined
 * requests wait in the input buffer, so responses go out in order), and
 * closes gracefully (lingering close so a final error response is not lost).
 * On a TLS listener the same bytes go through OpenSSL (SSL_read/SSL_write on
 * the non-blocking socket); everything above the byte level is unchanged.
 */
#ifndef MG_CONN_H
#define MG_CONN_H

#include <event2/buffer.h>

#include "mg_tls.h"
#include "mg_worker.h"

enum mg_conn_state {
    MG_CONN_IDLE,      /* between requests; keep-alive timer */
    MG_CONN_HEAD,      /* part of a head received; header timer (slowloris) */
    MG_CONN_BODY,      /* reading the request body; body timer */
    MG_CONN_HANDLER,   /* the request runs; its deadline rules */
    MG_CONN_CLOSING,   /* last response being written, then lingering close */
};

struct mg_conn {
    mg_worker_t *worker;
    evutil_socket_t fd;
    struct event rev;             /* readable (persistent while reading is enabled) */
    struct event wev;             /* writable, armed only when a write would block; send timeout */
    struct event timer;
    enum mg_conn_state state;
    mg_req_t *req;                /* the request in progress, if any */
    /* input: bytes [in_off, in_len) of in are unprocessed */
    char *in;
    size_t in_off, in_len, in_cap;
    struct evbuffer *out;
    size_t scanned;               /* head bytes already searched for the end of head */
    unsigned processing:1;        /* inside process_input: do not recurse, flush at its end */
    unsigned close_after:1;       /* send Connection: close on the next response */
    unsigned reading:1;           /* rev is armed */
    unsigned writing:1;           /* wev is armed */
    unsigned freed:1;
    unsigned handshaking:1;       /* TLS handshake not finished */
    SSL *ssl;                     /* a TLS listener's connection, or NULL */
    char remote[64];              /* "ip:port" */
    struct mg_conn *next, *prev;  /* worker's list */
    struct mg_conn *reap_next;
    /* body framing */
    int64_t body_left;            /* Content-Length bytes still to read */
    int chunked;
    mg_chunked_t chunk;
    int body_paused;              /* the request body's consumer is full */
    int64_t max_body;             /* this request's body limit (0: none) */
    int64_t body_total;           /* decoded chunked body bytes so far */
};

/* Takes ownership of an accepted non-blocking socket; tls: the listener's TLS context or NULL. */
void mg_conn_accept(mg_worker_t *w, evutil_socket_t fd, struct sockaddr *sa, int salen, SSL_CTX *tls);

/* The output buffer a response is written to. */
struct evbuffer *mg_conn_output(mg_conn_t *c);

/*
 * Called by mg_req once the whole response is in the output buffer. The
 * request object is released by the caller before; keepalive says whether
 * the connection may carry another request.
 */
void mg_conn_response_done(mg_conn_t *c, int keepalive);

/* Writes queued output now (responses streamed from an upstream). */
void mg_conn_flush(mg_conn_t *c);
/* Resumes reading a request body that was paused for back-pressure. */
void mg_conn_resume_body(mg_conn_t *c);
/* Closes with RST (SO_LINGER 0): the response was cut short and must not look complete. */
void mg_conn_reset(mg_conn_t *c);

/* Worker drain: close idle connections now, the others after their response. */
void mg_conn_drain(mg_conn_t *c);

/* Closes now, aborting a request in progress. */
void mg_conn_close(mg_conn_t *c);

/* Frees connections queued for reaping (called by the worker). */
void mg_conn_reap(mg_worker_t *w);

#endif
