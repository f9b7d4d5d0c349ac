/*
 * mg_tls — TLS termination for listeners (OpenSSL 3).
 *
 * A listener's TLS context is built once, on the main thread, when the
 * config is loaded; every certificate is checked then (readable, key matches,
 * not expired), so a bad file is refused with its name before anything
 * serves. Workers share the context read-only and make one SSL per
 * connection (SSL_new on a shared SSL_CTX is thread-safe).
 *
 * Several certificates on one listener are chosen by SNI: the first whose
 * names (subjectAltName DNS entries, else the CN) match the requested host,
 * exactly or by a "*.example.com" wildcard; the first certificate is the
 * default for clients that send no SNI or an unknown name. A certificate
 * with the same subject as an earlier one but another key type (RSA next to
 * ECDSA) joins that one's context; OpenSSL picks per handshake.
 */
#ifndef MG_TLS_H
#define MG_TLS_H

#include <stddef.h>
#include <sys/types.h>

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;

typedef struct mg_tls_cert_conf {
    const char *cert;        /* PEM chain, leaf first */
    const char *key;         /* PEM private key */
    const char *client_ca;   /* PEM CA bundle: ask clients of this name for a certificate (mTLS); NULL: don't */
    int client_required;     /* a client without a certificate fails the handshake */
} mg_tls_cert_conf_t;

/*
 * NULL with a message naming the offending file in err. The context is
 * reference-counted: each holder (the config, a generation, a connection's
 * SSL) drops its own reference, and the last one frees all its certificates.
 * Client-certificate settings are per certificate, so per SNI name; sessions
 * never resume across names with different settings.
 */
typedef struct mg_tls_server_conf {
    mg_tls_cert_conf_t *certs;
    int ncerts;
    unsigned session_lifetime;  /* seconds; see mg_tls_sessions */
} mg_tls_server_conf_t;

SSL_CTX *mg_tls_server_new(const mg_tls_server_conf_t *conf, char *err, size_t errlen);

/*
 * Session resumption: a session (a ticket or a cache entry) may be resumed
 * for `lifetime` seconds (timeouts.tls_session). Ticket keys are the
 * process's, not a context's: one ring shared by every listener and worker
 * and kept across reloads. Without `keys`, the ring makes its own, rotated
 * every `lifetime`, each still accepted for two more periods (a ticket under
 * an old key is renewed). With keys (tls_ticket_keys files, nginx's 80-byte
 * format: name, HMAC key, AES key), those are used as given: the first
 * encrypts, all decrypt, and they change only when this is called again
 * (a reload), so several gateway processes can share them. Call it when a
 * config takes effect, not when one is only checked.
 */
#define MG_TLS_TICKET_KEY_LEN 80
#define MG_TLS_TICKET_KEYS_MAX 4
void mg_tls_sessions(unsigned lifetime, const unsigned char (*keys)[MG_TLS_TICKET_KEY_LEN], int nkeys);

/* Any context (server or client) is reference-counted: each holder takes and drops its own. */
SSL_CTX *mg_tls_ctx_ref(SSL_CTX *ctx);  /* NULL-safe; returns ctx */
void mg_tls_ctx_free(SSL_CTX *ctx);     /* NULL-safe; drops one reference */

/* Per-connection facts for ctx.request.tls (NULL when not known yet). */
/* A server connection whose listener offers HTTP/2: ALPN selects h2 before http/1.1. */
void mg_tls_offer_h2(SSL *ssl);
/* After the handshake: did ALPN select h2? */
int mg_tls_alpn_is_h2(SSL *ssl);

const char *mg_tls_version(SSL *ssl);
const char *mg_tls_cipher(SSL *ssl);
const char *mg_tls_sni(SSL *ssl);

/*
 * The verified client certificate (mTLS): its subject (RFC 2253), its
 * subjectAltNames ("DNS:a.example", "email:x@y", "URI:spiffe://..", "IP:10.0.0.1",
 * one per line) and its SHA-256 fingerprint (hex). NULL without one. The
 * string lives in a per-thread buffer until the next call.
 */
const char *mg_tls_client_subject(SSL *ssl);
const char *mg_tls_client_san(SSL *ssl);
const char *mg_tls_client_fingerprint(SSL *ssl);
/* "yes" when the connection resumed an earlier session, else NULL. */
const char *mg_tls_resumed(SSL *ssl);

/*
 * Maps an SSL_read/SSL_write/SSL_do_handshake result onto recv/send
 * conventions: n > 0 as is; 0 for the peer's close_notify; -1 with errno
 * EAGAIN to wait (*want_write set when OpenSSL has to write first: wait for
 * writability, not readability), or ECONNRESET when the connection is gone.
 */
ssize_t mg_tls_result(SSL *ssl, int n, int *want_write);

/*
 * Writes the start of `out` (at most one 16 KiB record, small pieces
 * coalesced first) and drains what was written: bytes, or -1 with errno as
 * for mg_tls_result (a close_notify is ECONNRESET here).
 */
struct evbuffer;
int mg_tls_send(SSL *ssl, struct evbuffer *out, int *want_write);

/*
 * ---- upstream (client) side ----
 *
 * One client context per upstream: TLS 1.2/1.3, ALPN http/1.1 (or h2), the peer's
 * certificate verified against `ca` or the system store (SSL_CERT_FILE and
 * SSL_CERT_DIR are honoured), an optional client certificate (mTLS to the
 * upstream). Files are checked like a listener's.
 */
typedef struct mg_tls_client_conf {
    const char *ca;          /* PEM CA bundle; NULL: the system store */
    const char *cert, *key;  /* client certificate and key, or NULL */
    int verify;              /* 0: any certificate is accepted (for a test upstream only) */
    int h2;                  /* ALPN offers h2 only (an HTTP/2 upstream), else http/1.1 */
} mg_tls_client_conf_t;

SSL_CTX *mg_tls_client_new(const mg_tls_client_conf_t *conf, char *err, size_t errlen);

/*
 * A client SSL on a connected fd. `name` is sent as SNI and is what the
 * certificate must cover; an IP literal is checked against the IP
 * subjectAltNames and sent no SNI (RFC 6066). With `session` (may be NULL),
 * *session is offered for resumption, and a session the server issues
 * replaces it; the slot must outlive the SSL, its owner frees it with
 * SSL_SESSION_free. NULL when OpenSSL is out of memory.
 */
SSL *mg_tls_client_ssl(SSL_CTX *ctx, int fd, const char *name, SSL_SESSION **session);

/* Why the peer's certificate was refused (after a failed handshake), or NULL if it was not. */
const char *mg_tls_verify_failure(SSL *ssl);

#endif
