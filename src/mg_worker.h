/*
 * mg_worker — one thread, one event loop, its own listeners (SO_REUSEPORT
 * sockets bound by the main thread), its own generation (Lua VM + router).
 * Workers share nothing mutable: the config they read is immutable and the
 * main thread talks to them only through an eventfd, so the event loops run
 * without libevent's locks.
 */
#ifndef MG_WORKER_H
#define MG_WORKER_H

#include <pthread.h>
#include <event2/listener.h>

#include "mg_config.h"
#include "mg_metrics.h"
#include "mg_sema.h"

typedef struct mg_conn mg_conn_t;
typedef struct mg_req mg_req_t;

typedef struct mg_worker {
    int id;
    pthread_t thread;
    struct event_base *base;
    const mg_config_t *cfg;
    mg_gen_t *gen;
    struct evdns_base *dns;               /* only when a target is a host name */
    mg_mailbox_t mailbox;                 /* semaphore permits granted to this worker's waiters */
    int fds[MG_MAX_LISTEN];               /* the listening sockets (owned by the listeners) */
    int nfds;
    struct event *heartbeat;
    uint64_t beat;                        /* loop liveness, written by the worker, read by main (atomic) */
    mg_running_t running;                 /* the task its VMs run now, for the watchdog (mg_lua.h) */
    /* the watchdog's view of this worker: main thread only */
    int stuck_reported;                   /* reported stuck, fenced off */
    uint64_t stuck_beat;                  /* the heartbeat it is stuck after */
    uint64_t kill_sent_ms;                /* when the hook that ends the task was set; 0: none */
    int kill_ineffective;                 /* the worker is still stuck a second after the hook was set */
    uint64_t kills_at_arm;                /* running.kills then: did the hook fire? */
    char stuck_trace[129];                /* the stuck task's trace id and route ("" when none) */
    char stuck_route[256];
    uint64_t requests;                    /* requests ended (atomic: main reads it) */
    int64_t tunnels;                      /* upgraded connections open: tunnels and WebSocket endpoints (atomic) */
    mg_metrics_t metrics;                 /* written and rendered by this worker only */
    int metrics_fd;                       /* eventfd: the main thread queued a rendering */
    struct event *metrics_ev;
    pthread_mutex_t metrics_lock;
    struct mg_render *renders;            /* renderings asked for (under metrics_lock) */
    uint32_t drain_ms;                    /* set by mg_worker_stop */
    struct event *listeners[MG_MAX_LISTEN]; /* accept events on fds[i] (closed with them) */
    int nlisteners;
    int stop_fd;                          /* eventfd: the main thread writes to stop us */
    struct event *stop_ev;
    /* reload: the main thread builds our next generation and posts it here */
    pthread_mutex_t reload_lock;
    mg_gen_t *pending_gen;
    int reload_fd;
    struct event *reload_ev;
    uint64_t generation;                  /* generations installed so far (atomic: main reads it) */
    mg_gen_t *retired;                    /* old generations still used by requests */
    struct event *retire_ev;
    struct event *drain_timer;
    int draining;
    mg_conn_t *conns;                     /* all open connections (intrusive list) */
    size_t nconns;
    mg_conn_t *reap;                      /* connections to free at the end of this loop pass */
    struct event *reap_ev;
    mg_req_t *free_reqs;                  /* request objects ready for reuse (at most MG_REQ_CACHED) */
    size_t nfree_reqs;
    mg_req_t *reap_reqs;                  /* ones beyond that, freed at the end of this loop pass */
    mg_req_t *detached;                   /* requests whose log phase still runs */
    uint64_t rng[2];                      /* trace-id generator state */
    time_t date_sec;                      /* cached Date header */
    char date[32];
    int exit_code;
    mg_header_t hdr_scratch[1000];         /* parser output, copied into each request */
    char error[1024];                     /* why start-up failed */
} mg_worker_t;

/*
 * Loads the config into a new generation and prepares the loop. The fds are
 * listening sockets the worker takes ownership of. Returns MG_ERROR with
 * w->error set.
 */
int mg_worker_init(mg_worker_t *w, int id, const mg_config_t *cfg, const int *fds, int nfds);
/* Thread body: runs the loop until stopped and drained. */
void *mg_worker_run(void *arg);
/*
 * Main thread, once a second: checks the worker's heartbeat. A worker that
 * has not returned to its loop for longer than limit_ms is running code that
 * does not yield: the watchdog logs it with the running task's route and
 * trace id, shuts its listening sockets (new connections go to the other
 * workers) and sets a Lua hook that ends the task with an error the next time
 * it runs interpreted Lua (a JIT-compiled loop or a blocking C call never
 * reaches the hook). When the worker is back in its loop it listens again.
 */
void mg_worker_watchdog(mg_worker_t *w, uint32_t limit_ms);
/* A hook that has not ended the stuck task this long after it was set cannot (status: "ineffective"). */
#define MG_WATCHDOG_KILL_MS 1000
/* Main thread: how long the worker has been stuck (0 when it is not). */
uint64_t mg_worker_stuck_ms(const mg_worker_t *w);

/*
 * Main thread: hands the worker its next generation (built for its loop).
 * The worker switches new requests to it; requests in flight finish on
 * theirs; an old generation is freed when its last request ends.
 */
void mg_worker_post_gen(mg_worker_t *w, mg_gen_t *gen);
uint64_t mg_worker_generation(mg_worker_t *w);

/*
 * What a worker renders: its metrics (Prometheus text), its upstreams (text,
 * JSON), or all of its figures as one JSON object for the status page:
 * {"worker":id,"connections":n, <mg_metrics_render_json's members>,
 *  "targets":[{"upstream":..,"target":..,"health":..,"inflight":n,"idle":n,"requests":n,"failures":n}]}
 */
enum { MG_RENDER_METRICS, MG_RENDER_UPSTREAMS_TEXT, MG_RENDER_UPSTREAMS_JSON, MG_RENDER_FIGURES_JSON };

/*
 * A rendering of a worker's figures (its metrics, or its upstreams: targets,
 * health, pools), asked for by the main thread without waiting for it: the
 * worker renders on its own loop, sets done and writes to notify_fd (an
 * eventfd of the asker's). Two references, the asker's and the worker's; the
 * last mg_render_put frees it, so the asker may give up (timeout, client
 * gone) before the worker answers.
 */
typedef struct mg_render {
    int kind;                             /* MG_RENDER_* */
    mg_text_t out;                        /* the worker's until done, then the asker's */
    int done;                             /* atomic */
    int refs;                             /* atomic */
    int notify_fd;
    struct mg_render *next;               /* the worker's queue */
} mg_render_t;

/* Main thread: queues a rendering; the caller owns one reference. */
mg_render_t *mg_worker_render(mg_worker_t *w, int kind, int notify_fd);
int mg_render_done(mg_render_t *r);
void mg_render_put(mg_render_t *r);

/* Worker thread: a request stopped using gen (frees a retired one that is no longer used). */
void mg_worker_gen_unref(mg_worker_t *w, mg_gen_t *gen);

/* Thread-safe: begin graceful shutdown (stop accepting, drain up to drain_ms, exit). */
void mg_worker_stop(mg_worker_t *w, uint32_t drain_ms);
void mg_worker_free(mg_worker_t *w);

/* The cached "Date:" value for this second. */
const char *mg_worker_date(mg_worker_t *w);
/* Writes a new 32-hex-digit trace id (NUL-terminated) into out[33]. */
void mg_worker_trace_id(mg_worker_t *w, char *out);
/* Called by mg_conn when a connection is gone (for drain accounting). */
void mg_worker_conn_closed(mg_worker_t *w);
/* What was put on w->reap / w->reap_reqs is freed at the end of this loop pass. */
void mg_worker_reap_soon(mg_worker_t *w);

#endif
