/*
 * mg_tls — see mg_tls.h.
 */
#include "mg_tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/rand.h>
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
static int session_index = -1; /* a client SSL's SSL_SESSION ** slot */
static int h2_index = -1;      /* a server SSL whose listener offers h2 (non-NULL) */
static pthread_once_t index_once = PTHREAD_ONCE_INIT;

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

static void indexes_init(void)
{
    sni_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, sni_set_free);
    session_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    h2_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

/* ---- session ticket keys: one ring per process (see mg_tls_sessions) ---- */

#define GENERATED_KEYS 3 /* the current key and two older ones */

typedef struct ticket_key {
    unsigned char name[16], hmac[32], aes[32];
    time_t born;
} ticket_key_t;

static pthread_mutex_t ticket_lock = PTHREAD_MUTEX_INITIALIZER;
static ticket_key_t ticket_keys[MG_TLS_TICKET_KEYS_MAX]; /* [0] encrypts */
static int nticket_keys;
static int given_keys;                                    /* from files: never rotated here */
static unsigned session_lifetime = 3600;

void mg_tls_sessions(unsigned lifetime, const unsigned char (*keys)[MG_TLS_TICKET_KEY_LEN], int nkeys)
{
    pthread_mutex_lock(&ticket_lock);
    session_lifetime = lifetime ? lifetime : 1;
    if (nkeys > 0) {
        nticket_keys = nkeys < MG_TLS_TICKET_KEYS_MAX ? nkeys : MG_TLS_TICKET_KEYS_MAX;
        for (int i = 0; i < nticket_keys; i++) {
            ticket_key_t *k = &ticket_keys[i];
            memcpy(k->name, keys[i], 16);
            memcpy(k->hmac, keys[i] + 16, 32);
            memcpy(k->aes, keys[i] + 48, 32);
        }
        given_keys = 1;
    } else if (given_keys) {
        OPENSSL_cleanse(ticket_keys, sizeof(ticket_keys));
        nticket_keys = 0; /* back to generated keys */
        given_keys = 0;
    }
    pthread_mutex_unlock(&ticket_lock);
}

/* The key to encrypt new tickets with, rotated when it has served its period. 0 when no random bytes. */
static int ticket_key_current(ticket_key_t *out)
{
    int ok = 1;
    pthread_mutex_lock(&ticket_lock);
    time_t now = time(NULL);
    if (!given_keys && (nticket_keys == 0 || now - ticket_keys[0].born >= (time_t)session_lifetime)) {
        ticket_key_t k = { .born = now };
        ok = RAND_bytes(k.name, sizeof(k.name)) == 1 && RAND_bytes(k.aes, sizeof(k.aes)) == 1 &&
             RAND_bytes(k.hmac, sizeof(k.hmac)) == 1;
        if (ok) {
            memmove(&ticket_keys[1], &ticket_keys[0], sizeof(ticket_key_t) * (GENERATED_KEYS - 1));
            ticket_keys[0] = k;
            if (nticket_keys < GENERATED_KEYS)
                nticket_keys++;
        }
    }
    if (ok)
        *out = ticket_keys[0];
    pthread_mutex_unlock(&ticket_lock);
    return ok;
}

/* The key a ticket names: 1 current, 2 older (renew the ticket), 0 unknown (a full handshake). */
static int ticket_key_find(const unsigned char *name, ticket_key_t *out)
{
    int found = 0;
    pthread_mutex_lock(&ticket_lock);
    for (int i = 0; i < nticket_keys && !found; i++) {
        if (memcmp(ticket_keys[i].name, name, sizeof(ticket_keys[i].name)) == 0) {
            *out = ticket_keys[i];
            found = i == 0 ? 1 : 2;
        }
    }
    pthread_mutex_unlock(&ticket_lock);
    return found;
}

static int on_ticket_key(SSL *ssl, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cipher,
                         EVP_MAC_CTX *mac, int enc)
{
    ticket_key_t k;
    int rc;
    if (enc) {
        if (!ticket_key_current(&k) || RAND_bytes(iv, EVP_MAX_IV_LENGTH) != 1)
            return -1;
        memcpy(name, k.name, sizeof(k.name));
        rc = 1;
    } else if (!(rc = ticket_key_find(name, &k))) {
        return 0;
    } else if (SSL_version(ssl) >= TLS1_3_VERSION) {
        rc = 2; /* TLS 1.3 clients use a ticket once (RFC 8446 C.4): a resumption gets a fresh one */
    }
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k.hmac, sizeof(k.hmac)),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"sha256", 0),
        OSSL_PARAM_construct_end(),
    };
    int ok = EVP_MAC_CTX_set_params(mac, params) == 1 &&
             (enc ? EVP_EncryptInit_ex(cipher, EVP_aes_256_cbc(), NULL, k.aes, iv)
                  : EVP_DecryptInit_ex(cipher, EVP_aes_256_cbc(), NULL, k.aes, iv)) == 1;
    OPENSSL_cleanse(&k, sizeof(k));
    return ok ? rc : -1;
}

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

/* h2 first when the listener offers it, else http/1.1: the server's preference decides (RFC 7301). */
static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                   unsigned int inlen, void *arg)
{
    static const unsigned char both[] = "\x02h2\x08http/1.1";
    static const unsigned char http11[] = "\x08http/1.1";
    int h2 = SSL_get_ex_data(ssl, h2_index) != NULL;
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, h2 ? both : http11, h2 ? sizeof(both) - 1 : sizeof(http11) - 1, in,
                              inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* e.g. h2 only where h2 is off: go on without ALPN, the client decides */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

void mg_tls_offer_h2(SSL *ssl) { SSL_set_ex_data(ssl, h2_index, (void *)1); }

int mg_tls_alpn_is_h2(SSL *ssl)
{
    const unsigned char *p;
    unsigned int n;
    SSL_get0_alpn_selected(ssl, &p, &n);
    return n == 2 && p[0] == 'h' && p[1] == '2';
}

/* Acknowledges SNI (the choice was made in on_client_hello), so a session remembers its name for ctx.request.tls.sni. */
static int on_servername(SSL *ssl, int *alert, void *arg) { return SSL_TLSEXT_ERR_OK; }

/* The host_name of a ClientHello's server_name extension (RFC 6066 §3), or 0. */
static size_t hello_sni(SSL *ssl, char *name, size_t cap)
{
    const unsigned char *p;
    size_t len;
    if (!SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &p, &len) || len < 2)
        return 0;
    size_t list = ((size_t)p[0] << 8) | p[1];
    p += 2;
    len -= 2;
    if (list > len)
        return 0;
    while (list >= 3) {
        size_t n = ((size_t)p[1] << 8) | p[2];
        if (n > list - 3)
            return 0;
        if (p[0] == TLSEXT_NAMETYPE_host_name) {
            if (n == 0 || n >= cap || memchr(p + 3, '\0', n))
                return 0;
            memcpy(name, p + 3, n);
            name[n] = '\0';
            return n;
        }
        p += 3 + n;
        list -= 3 + n;
    }
    return 0;
}

/*
 * Picks the certificate by SNI at the very start of the handshake: before
 * OpenSSL looks for a session to resume, so the session id context (and with
 * it the client-certificate rule) is the chosen name's, and a session made
 * under one rule is never resumed under another.
 */
static int on_client_hello(SSL *ssl, int *alert, void *arg)
{
    sni_set_t *set = arg;
    char name[256];
    size_t len = hello_sni(ssl, name, sizeof(name));
    if (!len)
        return SSL_CLIENT_HELLO_SUCCESS; /* the default certificate */
    for (int i = 0; i < set->n; i++) {
        X509 *x = SSL_CTX_get0_certificate(set->ctx[i]);
        if (x && X509_check_host(x, name, len, 0, NULL) == 1) {
            if (i > 0) {
                /* SSL_set_SSL_CTX takes the certificate, the CA list, the verify
                 * store and the session id context, not the verify mode */
                SSL_set_SSL_CTX(ssl, set->ctx[i]);
                SSL_set_verify(ssl, SSL_CTX_get_verify_mode(set->ctx[i]), NULL);
                SSL_set_verify_depth(ssl, SSL_CTX_get_verify_depth(set->ctx[i]));
            }
            break;
        }
    }
    return SSL_CLIENT_HELLO_SUCCESS; /* unknown name: the default certificate */
}

/*
 * What both sides share: TLS 1.2 and 1.3 only, AEAD suites, no
 * renegotiation, partial writes (mg_conn and mg_upstream write what the
 * socket takes), buffers released while idle, and read-ahead: one recv per
 * burst of records instead of two per record (header, then body); the I/O
 * code asks SSL_has_pending before waiting on the socket.
 */
static SSL_CTX *common_ctx(const SSL_METHOD *method, uint64_t options)
{
    SSL_CTX *ctx = SSL_CTX_new(method);
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_cipher_list(ctx, MG_TLS12_CIPHERS);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | options);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(ctx, 1);
    return ctx;
}

static SSL_CTX *new_ctx(const mg_tls_cert_conf_t *c, unsigned lifetime, char *err, size_t errlen)
{
    SSL_CTX *ctx = common_ctx(TLS_server_method(), SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (!ctx) {
        ssl_error(err, errlen, "cannot create a context for", c->cert);
        return NULL;
    }
    /* one session id context for the certificates of a listener with the
     * same client-certificate rule, so a session survives the SNI switch but
     * never skips a certificate another name requires; the cache and the
     * ticket keys live in the shared context, so a client resumes on any worker */
    unsigned char sid[SSL_MAX_SID_CTX_LENGTH];
    int sidlen = snprintf((char *)sid, sizeof(sid), "moongate");
    if (c->client_ca) {
        /* "moongate" + a digest of the rule: the CA file and required/optional */
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int mdlen = 0;
        char rule[4200];
        int rl = snprintf(rule, sizeof(rule), "%s|%d", c->client_ca, c->client_required);
        EVP_Digest(rule, (size_t)rl, md, &mdlen, EVP_sha256(), NULL);
        memcpy(sid + sidlen, md, 16);
        sidlen += 16;
    }
    SSL_CTX_set_session_id_context(ctx, sid, (unsigned int)sidlen);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_set_timeout(ctx, lifetime ? lifetime : 1);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, on_ticket_key);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, NULL);
    SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
    return ctx;
}

/*
 * Loads a certificate and its key into ctx, checked. A context holds one
 * certificate per key type, so an RSA and an ECDSA certificate can share one
 * (OpenSSL then picks what the client's signature algorithms allow).
 */
static int load_pair(SSL_CTX *ctx, const mg_tls_cert_conf_t *c, char *err, size_t errlen)
{
    if (!readable(c->cert, "certificate", err, errlen) || !readable(c->key, "key", err, errlen))
        return 0;
    if (SSL_CTX_use_certificate_chain_file(ctx, c->cert) != 1) {
        ssl_error(err, errlen, "cannot load certificate", c->cert);
        return 0;
    }
    X509 *x = SSL_CTX_get0_certificate(ctx);
    EVP_PKEY *key = read_key(c->key);
    if (!key) {
        ssl_error(err, errlen, "cannot load key", c->key);
        return 0;
    }
    /* checked here, not by SSL_CTX_use_PrivateKey: an RSA key next to an
     * ECDSA certificate would go to another slot and fail obscurely */
    int matches = X509_check_private_key(x, key) == 1;
    int used = matches && SSL_CTX_use_PrivateKey(ctx, key) == 1;
    EVP_PKEY_free(key);
    if (!matches) {
        ERR_clear_error();
        snprintf(err, errlen, "tls: key '%s' does not match certificate '%s'", c->key, c->cert);
        return 0;
    }
    if (!used) {
        ssl_error(err, errlen, "cannot use key", c->key);
        return 0;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(x)) <= 0) {
        snprintf(err, errlen, "tls: certificate '%s' has expired", c->cert);
        return 0;
    }
    if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0) {
        snprintf(err, errlen, "tls: certificate '%s' is not valid yet", c->cert);
        return 0;
    }
    return 1;
}

/* The index of an earlier context for the same subject with another key type, or -1. */
static int same_subject(sni_set_t *set, const char *file)
{
    FILE *f = fopen(file, "r");
    X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    if (!x) {
        ERR_clear_error();
        return -1; /* load_pair reports it */
    }
    int found = -1;
    for (int i = 0; i < set->n && found < 0; i++) {
        X509 *y = SSL_CTX_get0_certificate(set->ctx[i]);
        if (X509_NAME_cmp(X509_get_subject_name(x), X509_get_subject_name(y)) == 0 &&
            EVP_PKEY_get_base_id(X509_get0_pubkey(x)) != EVP_PKEY_get_base_id(X509_get0_pubkey(y)))
            found = i;
    }
    X509_free(x);
    return found;
}

/* Client certificates (mTLS): verified against the CA, whose names are sent as the acceptable issuers. */
static int client_auth(SSL_CTX *ctx, const mg_tls_cert_conf_t *conf, char *err, size_t errlen)
{
    if (!readable(conf->client_ca, "client_ca", err, errlen))
        return 0;
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(conf->client_ca);
    if (!names || SSL_CTX_load_verify_locations(ctx, conf->client_ca, NULL) != 1) {
        sk_X509_NAME_pop_free(names, X509_NAME_free);
        ssl_error(err, errlen, "cannot load client_ca", conf->client_ca);
        return 0;
    }
    SSL_CTX_set_client_CA_list(ctx, names);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (conf->client_required ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), NULL);
    SSL_CTX_set_verify_depth(ctx, 8);
    return 1;
}

static int same_client_rule(const mg_tls_cert_conf_t *a, const mg_tls_cert_conf_t *b)
{
    if (!a->client_ca || !b->client_ca)
        return !a->client_ca && !b->client_ca;
    return strcmp(a->client_ca, b->client_ca) == 0 && a->client_required == b->client_required;
}

SSL_CTX *mg_tls_server_new(const mg_tls_server_conf_t *conf, char *err, size_t errlen)
{
    pthread_once(&index_once, indexes_init);
    int n = conf->ncerts;
    sni_set_t *set = mg_calloc(1, sizeof(*set) + (size_t)n * sizeof(SSL_CTX *));
    const mg_tls_cert_conf_t *first[n > 0 ? n : 1]; /* the certificate each context was made for */
    for (int i = 0; i < n; i++) {
        const mg_tls_cert_conf_t *c = &conf->certs[i];
        int t = same_subject(set, c->cert);
        SSL_CTX *twin = t >= 0 ? set->ctx[t] : NULL;
        SSL_CTX *ctx = twin ? twin : new_ctx(c, conf->session_lifetime, err, errlen);
        int ok = ctx != NULL;
        if (ok && twin && !same_client_rule(first[t], c)) {
            snprintf(err, errlen, "tls: certificates '%s' and '%s' are for the same name: give them the same client_ca and client_auth",
                     first[t]->cert, c->cert);
            ok = 0;
        }
        ok = ok && load_pair(ctx, c, err, errlen);
        if (ok && !twin && c->client_ca)
            ok = client_auth(ctx, c, err, errlen);
        if (!ok) {
            if (ctx && !twin)
                SSL_CTX_free(ctx);
            for (int k = 0; k < set->n; k++)
                SSL_CTX_free(set->ctx[k]);
            free(set);
            return NULL;
        }
        if (!twin) {
            first[set->n] = c;
            set->ctx[set->n++] = ctx;
        }
    }
    SSL_CTX *def = set->ctx[0];
    SSL_CTX_set_ex_data(def, sni_index, set);
    if (set->n > 1) {
        SSL_CTX_set_client_hello_cb(def, on_client_hello, set);
    }
    return def;
}

SSL_CTX *mg_tls_ctx_ref(SSL_CTX *ctx)
{
    if (ctx)
        SSL_CTX_up_ref(ctx);
    return ctx;
}

void mg_tls_ctx_free(SSL_CTX *ctx) { SSL_CTX_free(ctx); /* NULL-safe */ }

const char *mg_tls_version(SSL *ssl) { return ssl ? SSL_get_version(ssl) : NULL; }

const char *mg_tls_cipher(SSL *ssl) { return ssl ? SSL_get_cipher_name(ssl) : NULL; }

const char *mg_tls_sni(SSL *ssl) { return ssl ? SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) : NULL; }

/* Per worker thread: the Lua side copies the string before the next call. */
static __thread char client_buf[4096];

const char *mg_tls_client_subject(SSL *ssl)
{
    X509 *x = ssl ? SSL_get0_peer_certificate(ssl) : NULL;
    if (!x)
        return NULL;
    BIO *b = BIO_new(BIO_s_mem());
    if (!b)
        return NULL;
    X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253);
    int n = BIO_read(b, client_buf, sizeof(client_buf) - 1);
    BIO_free(b);
    client_buf[n > 0 ? n : 0] = '\0';
    return client_buf;
}

const char *mg_tls_client_san(SSL *ssl)
{
    X509 *x = ssl ? SSL_get0_peer_certificate(ssl) : NULL;
    if (!x)
        return NULL;
    GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    size_t len = 0;
    client_buf[0] = '\0';
    for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        const char *kind = NULL;
        char text[256] = "";
        if (g->type == GEN_DNS || g->type == GEN_EMAIL || g->type == GEN_URI) {
            kind = g->type == GEN_DNS ? "DNS" : g->type == GEN_EMAIL ? "email" : "URI";
            snprintf(text, sizeof(text), "%.*s", ASN1_STRING_length(g->d.ia5), (const char *)ASN1_STRING_get0_data(g->d.ia5));
        } else if (g->type == GEN_IPADD) {
            kind = "IP";
            int af = ASN1_STRING_length(g->d.ip) == 16 ? AF_INET6 : AF_INET;
            inet_ntop(af, ASN1_STRING_get0_data(g->d.ip), text, sizeof(text));
        }
        if (!kind || strpbrk(text, "\r\n"))
            continue;
        int w = snprintf(client_buf + len, sizeof(client_buf) - len, "%s%s:%s", len ? "\n" : "", kind, text);
        if (w < 0 || (size_t)w >= sizeof(client_buf) - len)
            break;
        len += (size_t)w;
    }
    GENERAL_NAMES_free(names);
    client_buf[len] = '\0';
    return client_buf;
}

const char *mg_tls_client_fingerprint(SSL *ssl)
{
    X509 *x = ssl ? SSL_get0_peer_certificate(ssl) : NULL;
    if (!x)
        return NULL;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    X509_digest(x, EVP_sha256(), md, &n);
    for (unsigned int i = 0; i < n; i++)
        snprintf(client_buf + 2 * i, 3, "%02x", md[i]);
    client_buf[2 * n] = '\0';
    return client_buf;
}

const char *mg_tls_resumed(SSL *ssl) { return ssl && SSL_session_reused(ssl) ? "yes" : NULL; }

ssize_t mg_tls_result(SSL *ssl, int n, int *want_write)
{
    if (n > 0)
        return n;
    switch (SSL_get_error(ssl, n)) {
    case SSL_ERROR_WANT_READ:
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        *want_write = 1;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0; /* close_notify */
    default:
        ERR_clear_error(); /* a stale error would be misread by the next SSL_get_error on this thread */
        errno = ECONNRESET;
        return -1;
    }
}

int mg_tls_send(SSL *ssl, struct evbuffer *out, int *want_write)
{
    size_t len = evbuffer_get_length(out);
    if (len > 16384)
        len = 16384;
    unsigned char *p = evbuffer_pullup(out, (ssize_t)len);
    ssize_t n = mg_tls_result(ssl, SSL_write(ssl, p, (int)len), want_write);
    if (n > 0) {
        evbuffer_drain(out, (size_t)n);
    } else if (n == 0) {
        errno = ECONNRESET;
        n = -1;
    }
    return (int)n;
}

/* ---- upstream (client) side ---- */

/* Keeps the newest session the upstream issued in the connection's slot (its target). */
static int on_new_session(SSL *ssl, SSL_SESSION *sess)
{
    SSL_SESSION **slot = SSL_get_ex_data(ssl, session_index);
    if (!slot)
        return 0;
    SSL_SESSION_free(*slot); /* NULL-safe */
    *slot = sess;
    return 1; /* the reference is ours now */
}

/*
 * The system CA store, read once per process and shared by every upstream
 * that uses it: reading the bundle costs ~50 ms, once per upstream per
 * worker per load otherwise.
 */
static X509_STORE *system_store;
static pthread_once_t system_once = PTHREAD_ONCE_INIT;

static void load_system_store(void)
{
    X509_STORE *s = X509_STORE_new();
    if (s && X509_STORE_set_default_paths(s) != 1) {
        X509_STORE_free(s);
        s = NULL;
    }
    system_store = s;
}

SSL_CTX *mg_tls_client_new(const mg_tls_client_conf_t *conf, char *err, size_t errlen)
{
    pthread_once(&index_once, indexes_init);
    /* an upstream that closes without close_notify ends like a plain one: EOF */
    SSL_CTX *ctx = common_ctx(TLS_client_method(), SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (!ctx) {
        ssl_error(err, errlen, "cannot create a client context for", "upstream");
        return NULL;
    }
    if (conf->h2)
        SSL_CTX_set_alpn_protos(ctx, (const unsigned char *)"\x02h2", 3);
    else
        SSL_CTX_set_alpn_protos(ctx, (const unsigned char *)"\x08http/1.1", 9);
    /* sessions live per target (see mg_tls_client_ssl), not in a shared cache */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, on_new_session);
    int ok = 1;
    if (conf->ca) {
        ok = readable(conf->ca, "ca", err, errlen);
        if (ok && SSL_CTX_load_verify_locations(ctx, conf->ca, NULL) != 1) {
            ssl_error(err, errlen, "cannot load ca", conf->ca);
            ok = 0;
        }
    } else if (conf->verify) {
        pthread_once(&system_once, load_system_store);
        if (!system_store) {
            ssl_error(err, errlen, "cannot load the system CA store", X509_get_default_cert_file());
            ok = 0;
        } else {
            SSL_CTX_set1_cert_store(ctx, system_store);
        }
    }
    if (ok && conf->cert) {
        mg_tls_cert_conf_t pair = { .cert = conf->cert, .key = conf->key };
        ok = load_pair(ctx, &pair, err, errlen);
    }
    if (!ok) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, conf->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_verify_depth(ctx, 8);
    return ctx;
}

SSL *mg_tls_client_ssl(SSL_CTX *ctx, int fd, const char *name, SSL_SESSION **session)
{
    SSL *ssl = SSL_new(ctx);
    if (!ssl)
        return NULL;
    unsigned char ip[16];
    int literal = inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1;
    int ok = SSL_set_fd(ssl, fd) == 1;
    if (ok && literal)
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) == 1;
    else if (ok)
        ok = SSL_set_tlsext_host_name(ssl, name) == 1 && SSL_set1_host(ssl, name) == 1;
    if (ok && session) {
        SSL_set_ex_data(ssl, session_index, session);
        if (*session)
            SSL_set_session(ssl, *session);
    }
    if (!ok) {
        ERR_clear_error();
        SSL_free(ssl);
        return NULL;
    }
    SSL_set_connect_state(ssl);
    return ssl;
}

const char *mg_tls_verify_failure(SSL *ssl)
{
    long v = SSL_get_verify_result(ssl);
    return v == X509_V_OK ? NULL : X509_verify_cert_error_string(v);
}
