/*
 * mg_h2up — HTTP/2 to upstreams (protocol = "h2c" or "h2"): a few
 * connections (sessions) per target, each carrying many exchanges as
 * streams, on nghttp2's client session with our own I/O over mg_upconn
 * (the same sockets, TLS and timers as HTTP/1.1 upstream connections).
 *
 * mg_proxy runs an exchange the same way whatever the upstream speaks
 * (target choice, permits, retries, error kinds, timeouts); for an HTTP/2
 * upstream its attempt is a stream, opened with mg_h2up_attempt:
 *   - a session with room (fewer streams than the server's
 *     SETTINGS_MAX_CONCURRENT_STREAMS, no GOAWAY) takes it, else a new
 *     connection is made (and the exchange waits for its handshake);
 *   - the response arrives through the owner's ops (on_interim, on_head,
 *     on_body, on_trailers) exactly as from an HTTP/1.1 upstream; pausing
 *     (on_body returning 1) stops giving the stream window back, so the
 *     upstream stops sending that stream only;
 *   - a stream the server refused (REFUSED_STREAM, or above a GOAWAY's last
 *     stream id) was not processed: the attempt fails as "never left", and
 *     mg_proxy resends it on a new stream when the rules allow;
 *   - an idle session is PINGed; one that does not answer in time is closed.
 * Session figures (connections, streams) show in the target's pool figures.
 */
#ifndef MG_H2UP_H
#define MG_H2UP_H

#include "mg_proxy.h"

/* Starts attempt p on target t (mg_proxy has counted the attempt). Callbacks may run before it returns. */
void mg_h2up_attempt(mg_proxy_t *p, mg_target_t *t);
/* Request body bytes of a streamed body; the end of it. See mg_proxy_write_body. */
int mg_h2up_write_body(mg_proxy_t *p, const char *data, size_t len);
void mg_h2up_end_body(mg_proxy_t *p);
/* The owner may take response body again (after on_body returned 1). */
void mg_h2up_resume(mg_proxy_t *p);
/*
 * The exchange lets go of its stream: done (success: the stream already
 * ended) or not (the stream is reset with CANCEL). No callback follows.
 */
void mg_h2up_detach(mg_proxy_t *p);

/* Sessions and streams of a target (status figures). */
void mg_h2up_figures(const mg_target_t *t, int *sessions, int *streams);
/* Closes a target's sessions (the upstream is freed; no exchange uses them). */
void mg_h2up_target_free(mg_target_t *t);

/*
 * An active health check over HTTP/2: a client session that writes its
 * preface, SETTINGS and `GET path` into out, and reads the answer fed to it.
 * feed returns the response status once the head is in, 0 for more, -1 when
 * the bytes are not HTTP/2.
 */
typedef struct mg_h2check mg_h2check_t;
mg_h2check_t *mg_h2check_new(const char *path, const char *authority, int tls, struct evbuffer *out);
int mg_h2check_feed(mg_h2check_t *c, const char *data, size_t len);
void mg_h2check_free(mg_h2check_t *c);

#endif
