/*
 * mg_admin — the control side of gatewayd, run by the main thread: the admin
 * Unix socket that gatewayctl talks to, reload, status and stop.
 *
 * Protocol (one exchange per connection): the client sends one line
 * "<command> [args...]\n"; the server answers "OK\n" or "ERR\n", then the
 * text of the answer, then closes. Commands: status [json], routes, reload,
 * check [FILE], reopen-logs, stop [DRAIN_SECONDS].
 */
#ifndef MG_ADMIN_H
#define MG_ADMIN_H

#include "mg_worker.h"

typedef struct mg_admin {
    const char *file;             /* the config file reloads read */
    mg_config_t *cfg;
    mg_worker_t *workers;
    int nworkers;
    double started;               /* wall time */
    uint64_t reloads, reload_failures;
    int listen_fd;                /* the admin socket, -1 when none */
    int http_fd;                  /* the admin HTTP listener (metrics, status), -1 when none */
    char *socket_path;
    int stop_requested;
    uint32_t stop_drain_ms;
} mg_admin_t;

/* Binds the admin socket (mode 0600; a stale socket file is replaced). */
int mg_admin_open(mg_admin_t *a, const char *path, char *err, size_t errlen);
/* Serves one waiting client on the admin socket. */
void mg_admin_serve(mg_admin_t *a);

/* The admin HTTP listener: GET /metrics (Prometheus text), GET /status (JSON). */
int mg_admin_open_http(mg_admin_t *a, const char *addr, char *err, size_t errlen);
void mg_admin_serve_http(mg_admin_t *a);
/*
 * Loads `a->file` again: validated completely, then built for every worker
 * and published. On error nothing changes; the message (file:line) is in err.
 */
int mg_admin_reload(mg_admin_t *a, char *err, size_t errlen);
void mg_admin_close(mg_admin_t *a);
/* The compiled routes of `file` as text (malloc'd), or NULL with err. */
char *mg_admin_routes_text(const char *file, char *err, size_t errlen);

#endif
