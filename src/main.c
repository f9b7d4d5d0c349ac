/*
 * gatewayd — the Moongate gateway daemon.
 *
 * The main thread loads and validates the config (refusing a broken one with
 * file:line), binds one SO_REUSEPORT socket per worker and address, starts
 * the workers, then runs the control loop: a libevent loop of its own for
 * signals (a signalfd), the watchdog (every second), freeing retired
 * generations and the admin side (mg_admin). Nothing on it blocks on a
 * client; the signals and the watchdog run at a higher priority than the
 * admin connections, so a flood of those cannot starve them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "mg_admin.h"
#include "mg_bgjob.h"
#include "mg_config.h"
#include "mg_log.h"
#include "mg_otel.h"
#include "mg_timeline.h"
#include "mg_worker.h"

/* The main thread's loop: what its callbacks need. */
typedef struct control {
    struct event_base *base;
    mg_admin_t *admin;
    mg_worker_t *workers;
    int nworkers;
    mg_config_t *cfg;
    int sfd;
    uint32_t drain_ms;
    int reaping;                  /* a job frees the retired generations */
} control_t;

enum { PRIO_CONTROL, PRIO_ADMIN, PRIO_COUNT };

static void reap(void *arg) { mg_gen_graveyard_empty(); }
static void reaped(void *arg);

static void reap_if_buried(control_t *c)
{
    if (!c->reaping && mg_gen_graveyard_has()) {
        c->reaping = 1; /* closing a big VM takes a while: off this thread, on idle CPU */
        mg_bgjob_start(c->base, reap, reaped, c);
    }
}

/* Buried while the last job freed: those go now, not at the next burial. */
static void reaped(void *arg)
{
    control_t *c = arg;
    c->reaping = 0;
    reap_if_buried(c);
}

static void on_buried(evutil_socket_t fd, short what, void *arg)
{
    uint64_t n;
    if (read(fd, &n, sizeof(n)) < 0) {
        /* EAGAIN: another wake-up already drained it */
    }
    reap_if_buried(arg);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    control_t *c = arg;
    for (int i = 0; i < c->nworkers; i++)
        mg_worker_watchdog(&c->workers[i], c->cfg->watchdog_ms);
    reap_if_buried(c); /* only matters without the graveyard's eventfd, which wakes on_buried at once */
}

static void on_signal(evutil_socket_t fd, short what, void *arg)
{
    control_t *c = arg;
    struct signalfd_siginfo si;
    if (read(fd, &si, sizeof(si)) != sizeof(si))
        return;
    int sig = (int)si.ssi_signo;
    char err[2048];
    if (sig == SIGHUP) {
        mg_log_info(NULL, "SIGHUP: reloading %s", c->admin->file);
        mg_admin_reload(c->admin); /* the outcome is logged */
        return;
    }
    if (sig == SIGUSR1) {
        if (mg_log_reopen(err, sizeof(err)) != MG_OK)
            mg_log_error(NULL, "SIGUSR1: %s", err);
        return;
    }
    mg_log_info(NULL, "signal %d: draining (up to %u ms) and stopping", sig, c->drain_ms);
    event_base_loopbreak(c->base);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gatewayd -c FILE [options]   run the gateway\n"
            "       gatewayd -t -c FILE             check the config and exit\n"
            "       gatewayd --spec [ARGS...]       run busted specs inside the runtime\n"
            "       gatewayd --new-plugin NAME [DIR] write a plugin skeleton with a passing spec\n"
            "options:\n"
            "  -c, --config FILE     the Lua config file\n"
            "  -t, --test            validate the config (syntax, routes, settings) and exit\n"
            "      --routes          print the compiled routes (with their plugin order) and exit\n"
            "  -l, --listen ADDR     listen on ADDR instead of every listen of the config: one\n"
            "                        cleartext listener for HTTP/1.1 and h2c (no TLS)\n"
            "  -w, --workers N       worker threads (default: the config's, else one per core)\n"
            "      --log-level LVL   debug, info, warn or error (default info)\n"
            "  -v, --version\n");
}

/*
 * SO_REUSEPORT would let a second gatewayd silently share the port with a
 * running one; a socket bound without it fails with EADDRINUSE instead.
 */
static int address_free(const mg_listen_addr_t *a, char *err, size_t errlen)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (a->ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    int ok = bind(fd, (const struct sockaddr *)&a->ss, a->len) == 0;
    if (!ok)
        snprintf(err, errlen, "cannot listen on %s: %s", a->text, strerror(errno));
    close(fd);
    return ok;
}

static int bind_socket(const mg_listen_addr_t *a, char *err, size_t errlen)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    /* one socket per worker; the kernel spreads connections across them */
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (a->ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", a->text, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--spec") == 0)
        return mg_spec_main(argc - 2, argv + 2);
    if (argc >= 2 && strcmp(argv[1], "--new-plugin") == 0)
        return mg_spec_new_plugin(argc - 2, argv + 2);

    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' }, { "test", no_argument, NULL, 't' },
        { "listen", required_argument, NULL, 'l' }, { "workers", required_argument, NULL, 'w' },
        { "log-level", required_argument, NULL, 'L' }, { "version", no_argument, NULL, 'v' },
        { "help", no_argument, NULL, 'h' }, { "routes", no_argument, NULL, 'R' }, { NULL, 0, NULL, 0 },
    };
    const char *file = NULL, *listen_override = NULL;
    int test = 0, workers_override = 0, routes = 0, opt;
    while ((opt = getopt_long(argc, argv, "c:tl:w:vh", opts, NULL)) != -1) {
        switch (opt) {
        case 'c': file = optarg; break;
        case 't': test = 1; break;
        case 'R': routes = 1; break;
        case 'l': listen_override = optarg; break;
        case 'w': workers_override = atoi(optarg); break;
        case 'L':
            if (mg_log_level_parse(optarg) < 0) {
                fprintf(stderr, "gatewayd: unknown log level '%s'\n", optarg);
                return 2;
            }
            mg_log_set_level(mg_log_level_parse(optarg));
            break;
        case 'v': printf("gatewayd (moongate) %s\n", MG_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!file) {
        usage(stderr);
        return 2;
    }
    /* gateways started by specs die with the spec runner, even when it crashes */
    if (getenv("MOONGATE_DIE_WITH_PARENT"))
        prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGPIPE, SIG_IGN);

    char err[2048];
    mg_config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    mg_routes_view_t routes_view = { 0 };
    struct event_base *check_base = event_base_new();
    mg_file_id_t file_before; /* the validation and each worker's load read the file each */
    mg_file_id(file, &file_before);
    mg_gen_t *gen = mg_gen_load(file, check_base, NULL, &cfg, err, sizeof(err));
    if (!gen) {
        fprintf(stderr, "gatewayd: %s\n", err);
        event_base_free(check_base);
        goto fail;
    }
    int nroutes = gen->nroutes;
    /* the routes `gatewayctl routes` shows until a reload: this load's (a file changed since is reloaded below) */
    if (!test)
        mg_routes_view_take(&routes_view, gen);
    mg_gen_free(gen);
    event_base_free(check_base);
    if (routes) {
        mg_text_t text = { 0 };
        mg_routes_view_text(&routes_view, &text);
        fwrite(text.p, 1, text.len, stdout);
        free(text.p);
        mg_routes_view_free(&routes_view);
        mg_config_free(&cfg);
        return 0;
    }
    if (listen_override) {
        for (int i = 0; i < cfg.nlisten; i++)
            mg_listen_addr_free(&cfg.listen[i]);
        cfg.nlisten = 0;
        if (mg_parse_listen(listen_override, &cfg.listen[0], err, sizeof(err)) != MG_OK) {
            fprintf(stderr, "gatewayd: --listen: %s\n", err);
            goto fail;
        }
        /* cleartext (no certificate belongs to ADDR), with h2c: an HTTP/2 config keeps working on it */
        cfg.listen[0].http2 = 1;
        cfg.nlisten = 1;
    }
    if (cfg.nlisten == 0) {
        fprintf(stderr, "gatewayd: %s: no listen address (add: listen \"127.0.0.1:8080\")\n", file);
        goto fail;
    }
    if (test) {
        printf("gatewayd: configuration file %s is valid (%d routes)\n", file, nroutes);
        mg_config_free(&cfg);
        return 0;
    }
    mg_config_apply_tls(&cfg);
    int nworkers = workers_override > 0 ? workers_override : cfg.workers;
    if (nworkers <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        nworkers = n > 0 ? (int)n : 1;
    }
    if (mg_log_open(cfg.error_log, cfg.access_log, err, sizeof(err)) != MG_OK) {
        fprintf(stderr, "gatewayd: %s\n", err);
        goto fail;
    }

    /* the workers inherit this mask: signals are taken by sigwait here only */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    sigaddset(&sigs, SIGQUIT);
    sigaddset(&sigs, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    mg_log_start(); /* after the mask: signals must not land on the log writer */

    for (int k = 0; k < cfg.nlisten; k++) {
        if (!address_free(&cfg.listen[k], err, sizeof(err))) {
            fprintf(stderr, "gatewayd: %s\n", err);
            goto fail;
        }
    }
    /* the control side first: gatewayctl works as soon as requests are served (it is answered once the loop runs) */
    mg_admin_t admin = { .file = file, .cfg = &cfg, .nworkers = nworkers, .routes = routes_view,
                         .started = mg_wall_time(), .listen_fd = -1, .http_fd = -1 };
    routes_view = (mg_routes_view_t){ 0 }; /* the admin's */
    if (cfg.admin_listen && mg_admin_open_http(&admin, cfg.admin_listen, err, sizeof(err)) != MG_OK)
        mg_log_error(NULL, "%s", err);
    const char *sock = cfg.admin_socket ? cfg.admin_socket : "/tmp/moongate-gatewayd.sock";
    if (strcmp(sock, "off") != 0 && mg_admin_open(&admin, sock, err, sizeof(err)) != MG_OK)
        mg_log_error(NULL, "%s (gatewayctl will not reach this gateway)", err);
    mg_worker_t *workers = mg_calloc((size_t)nworkers, sizeof(mg_worker_t));
    admin.workers = workers;
    mg_trace_rings_init(nworkers); /* before any worker can end a recorded request */
    mg_admin_apply_tracing(&cfg.tracing);
    for (int i = 0; i < nworkers; i++) {
        int fds[MG_MAX_LISTEN];
        for (int k = 0; k < cfg.nlisten; k++) {
            fds[k] = bind_socket(&cfg.listen[k], err, sizeof(err));
            if (fds[k] < 0) {
                fprintf(stderr, "gatewayd: %s\n", err);
                mg_admin_close(&admin);
                goto fail;
            }
        }
        if (mg_worker_init(&workers[i], i, &cfg, fds, cfg.nlisten) != MG_OK) {
            fprintf(stderr, "gatewayd: worker %d: %s\n", i, workers[i].error);
            mg_admin_close(&admin);
            goto fail;
        }
    }
    mg_file_id_t file_after;
    mg_file_id(file, &file_after);
    /* connections are taken once every worker has its routes: nothing is answered by a config half started */
    for (int i = 0; i < nworkers; i++) {
        for (int k = 0; k < workers[i].nlisteners; k++) {
            if (listen(workers[i].fds[k], 4096) < 0) {
                fprintf(stderr, "gatewayd: cannot listen on %s: %s\n", cfg.listen[k].text, strerror(errno));
                mg_admin_close(&admin);
                goto fail;
            }
        }
    }
    for (int i = 0; i < nworkers; i++)
        pthread_create(&workers[i].thread, NULL, mg_worker_run, &workers[i]);
    char addrs[512] = "";
    for (int k = 0; k < cfg.nlisten; k++)
        snprintf(addrs + strlen(addrs), sizeof(addrs) - strlen(addrs), "%s%s", k ? " " : "", cfg.listen[k].text);
    mg_log_info(NULL, "gatewayd %s started: %d workers, %d routes, listening on %s", MG_VERSION, nworkers,
                nroutes, addrs);

    control_t ctl = { .admin = &admin, .workers = workers, .nworkers = nworkers, .cfg = &cfg,
                      .drain_ms = cfg.drain_timeout_ms };
    ctl.base = event_base_new();
    event_base_priority_init(ctl.base, PRIO_COUNT);
    int sfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
    struct event *sig_ev = event_new(ctl.base, sfd, EV_READ | EV_PERSIST, on_signal, &ctl);
    struct event *tick = event_new(ctl.base, -1, EV_PERSIST, on_tick, &ctl);
    struct event *buried_ev = NULL;
    if (mg_gen_graveyard_fd() >= 0) {
        buried_ev = event_new(ctl.base, mg_gen_graveyard_fd(), EV_READ | EV_PERSIST, on_buried, &ctl);
        event_priority_set(buried_ev, PRIO_CONTROL);
        event_add(buried_ev, NULL);
    }
    event_priority_set(sig_ev, PRIO_CONTROL);
    event_priority_set(tick, PRIO_CONTROL);
    struct timeval second = { 1, 0 };
    event_add(sig_ev, NULL);
    event_add(tick, &second); /* burials before this loop ran left the eventfd readable */
    mg_admin_start(&admin, ctl.base, PRIO_ADMIN);
    if (mg_file_id_changed(&file_before, &file_after)) {
        /* the workers may have read different files */
        mg_log_warn(NULL, "%s changed while gatewayd was starting: reloading it", file);
        mg_admin_reload(&admin);
    }
    mg_timeline_start(ctl.base, PRIO_ADMIN);
    event_base_dispatch(ctl.base);
    uint32_t drain_ms = ctl.drain_ms;
    if (admin.stop_requested) {
        drain_ms = admin.stop_drain_ms;
        mg_log_info(NULL, "stop requested: draining (up to %u ms) and stopping", drain_ms);
    }
    mg_admin_close(&admin);
    mg_gen_load_cancel_all(); /* a reload, check or routes still loading ends now, and is dropped */
    mg_bgjob_finish_all();
    mg_timeline_stop();
    event_free(sig_ev);
    event_free(tick);
    if (buried_ev)
        event_free(buried_ev);
    event_base_free(ctl.base);
    close(sfd);
    for (int i = 0; i < nworkers; i++)
        mg_worker_stop(&workers[i], drain_ms);
    /* a worker stuck in Lua code that never yields cannot drain: do not wait for it forever */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)(drain_ms / 1000) + 3;
    int stuck = 0;
    for (int i = 0; i < nworkers; i++) {
        if (pthread_timedjoin_np(workers[i].thread, NULL, &until) != 0) {
            mg_log_error(NULL, "worker %d did not stop (stuck in code that does not yield); exiting anyway", i);
            stuck = 1;
        }
    }
    if (stuck) {
        mg_log_stop();
        _exit(1);
    }
    mg_timeline_final(); /* the last requests' spans go to the exporter, which sends what it can */
    mg_otel_stop();
    mg_trace_rings_free();
    for (int i = 0; i < nworkers; i++)
        mg_worker_free(&workers[i]);
    mg_gen_graveyard_empty();
    free(workers);
    mg_log_info(NULL, "stopped");
    mg_log_stop();
    mg_config_free(&cfg);
    return 0;
fail:
    /* start-up failed: nothing runs yet; sockets and workers die with the process */
    mg_log_stop();
    mg_routes_view_free(&routes_view);
    mg_config_free(&cfg);
    return 1;
}
