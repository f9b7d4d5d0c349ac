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

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;

typedef struct mg_tls_cert_conf {
    const char *cert;  /* PEM chain, leaf first */
    const char *key;   /* PEM private key */
} mg_tls_cert_conf_t;

/*
 * NULL with a message naming the offending file in err. The context is
 * reference-counted: each holder (the config, a generation, a connection's
 * SSL) drops its own reference, and the last one frees all its certificates.
 */
typedef struct mg_tls_server_conf {
    mg_tls_cert_conf_t *certs;
    int ncerts;
    const char *client_ca;   /* PEM CA bundle: ask clients for a certificate (mTLS); NULL: don't */
    int client_required;     /* a client without a certificate fails the handshake */
} mg_tls_server_conf_t;

SSL_CTX *mg_tls_server_new(const mg_tls_server_conf_t *conf, char *err, size_t errlen);
SSL_CTX *mg_tls_server_ref(SSL_CTX *ctx);  /* NULL-safe; returns ctx */
void mg_tls_server_free(SSL_CTX *ctx);     /* NULL-safe; drops one reference */

/* Per-connection facts for ctx.request.tls (NULL when not known yet). */
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

#endif
