/*
 * mg_tls — see mg_tls.h.
 */
#include "mg_tls.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "mg_core.h"

/* TLS 1.2 suites: forward secrecy and AEAD only (1.3 suites are all fine) */
#define MG_TLS12_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20"

/* The certificates of one listener, hung off its default context. */
typedef struct sni_set {
    int n;
    SSL_CTX *ctx[];
} sni_set_t;

static int sni_index = -1;
static pthread_once_t sni_once = PTHREAD_ONCE_INIT;

/* Runs when the default context's last reference goes: the others go with it. */
static void sni_set_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    sni_set_t *set = ptr;
    if (!set)
        return;
    for (int i = 1; i < set->n; i++)
        SSL_CTX_free(set->ctx[i]);
    free(set);
}

static void sni_index_init(void) { sni_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, sni_set_free); }

static void ssl_error(char *err, size_t errlen, const char *what, const char *file)
{
    char detail[256] = "";
    unsigned long e = ERR_peek_last_error();
    if (e)
        ERR_error_string_n(e, detail, sizeof(detail));
    ERR_clear_error();
    snprintf(err, errlen, "tls: %s '%s'%s%s", what, file, detail[0] ? ": " : "", detail);
}

static int readable(const char *file, const char *what, char *err, size_t errlen)
{
    FILE *f = fopen(file, "r");
    if (!f) {
        snprintf(err, errlen, "tls: cannot read %s '%s': %s", what, file, strerror(errno));
        return 0;
    }
    fclose(f);
    return 1;
}

static EVP_PKEY *read_key(const char *file)
{
    FILE *f = fopen(file, "r");
    if (!f)
        return NULL;
    EVP_PKEY *key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    return key;
}

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                   unsigned int inlen, void *arg)
{
    static const unsigned char http11[] = "\x08http/1.1";
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, http11, sizeof(http11) - 1, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* e.g. h2 only: go on without ALPN, the client decides */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static int on_servername(SSL *ssl, int *alert, void *arg)
{
    sni_set_t *set = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!name)
        return SSL_TLSEXT_ERR_OK;
    for (int i = 0; i < set->n; i++) {
        X509 *x = SSL_CTX_get0_certificate(set->ctx[i]);
        if (x && X509_check_host(x, name, 0, 0, NULL) == 1) {
            if (i > 0)
                SSL_set_SSL_CTX(ssl, set->ctx[i]);
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_OK; /* unknown name: the default certificate */
}

static SSL_CTX *one_ctx(const mg_tls_cert_conf_t *c, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        ssl_error(err, errlen, "cannot create a context for", c->cert);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_cipher_list(ctx, MG_TLS12_CIPHERS);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    /* one session id context for all certificates of a listener, so a
     * session survives the SNI switch; the cache and the ticket keys live in
     * the shared context, so a client resumes on any worker */
    static const unsigned char sid[] = "moongate";
    SSL_CTX_set_session_id_context(ctx, sid, sizeof(sid) - 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, NULL);

    if (!readable(c->cert, "certificate", err, errlen) || !readable(c->key, "key", err, errlen))
        goto fail;
    if (SSL_CTX_use_certificate_chain_file(ctx, c->cert) != 1) {
        ssl_error(err, errlen, "cannot load certificate", c->cert);
        goto fail;
    }
    X509 *x = SSL_CTX_get0_certificate(ctx);
    EVP_PKEY *key = read_key(c->key);
    if (!key) {
        ssl_error(err, errlen, "cannot load key", c->key);
        goto fail;
    }
    /* checked here, not by SSL_CTX_use_PrivateKey: an RSA key next to an
     * ECDSA certificate would go to another slot and fail obscurely */
    int matches = X509_check_private_key(x, key) == 1;
    int used = matches && SSL_CTX_use_PrivateKey(ctx, key) == 1;
    EVP_PKEY_free(key);
    if (!matches) {
        ERR_clear_error();
        snprintf(err, errlen, "tls: key '%s' does not match certificate '%s'", c->key, c->cert);
        goto fail;
    }
    if (!used) {
        ssl_error(err, errlen, "cannot use key", c->key);
        goto fail;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(x)) <= 0) {
        snprintf(err, errlen, "tls: certificate '%s' has expired", c->cert);
        goto fail;
    }
    if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0) {
        snprintf(err, errlen, "tls: certificate '%s' is not valid yet", c->cert);
        goto fail;
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

SSL_CTX *mg_tls_server_new(const mg_tls_cert_conf_t *certs, int n, char *err, size_t errlen)
{
    pthread_once(&sni_once, sni_index_init);
    sni_set_t *set = mg_calloc(1, sizeof(*set) + (size_t)n * sizeof(SSL_CTX *));
    for (int i = 0; i < n; i++) {
        set->ctx[i] = one_ctx(&certs[i], err, errlen);
        if (!set->ctx[i]) {
            for (int k = 0; k < i; k++)
                SSL_CTX_free(set->ctx[k]);
            free(set);
            return NULL;
        }
        set->n = i + 1;
    }
    SSL_CTX *def = set->ctx[0];
    SSL_CTX_set_ex_data(def, sni_index, set);
    if (n > 1) {
        SSL_CTX_set_tlsext_servername_callback(def, on_servername);
        SSL_CTX_set_tlsext_servername_arg(def, set);
    }
    return def;
}

SSL_CTX *mg_tls_server_ref(SSL_CTX *ctx)
{
    if (ctx)
        SSL_CTX_up_ref(ctx);
    return ctx;
}

void mg_tls_server_free(SSL_CTX *ctx) { SSL_CTX_free(ctx); /* NULL-safe */ }

const char *mg_tls_version(SSL *ssl) { return ssl ? SSL_get_version(ssl) : NULL; }

const char *mg_tls_cipher(SSL *ssl) { return ssl ? SSL_get_cipher_name(ssl) : NULL; }

const char *mg_tls_sni(SSL *ssl) { return ssl ? SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) : NULL; }
