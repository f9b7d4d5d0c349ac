/* mg_bgjob — see mg_bgjob.h. */
#define _GNU_SOURCE
#include "mg_bgjob.h"

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include "mg_core.h"
#include "mg_log.h"

typedef struct job {
    mg_bgjob_fn work, done;
    void *arg;
    pthread_t thread;
    int threaded;
    int efd;                /* written by the thread when work returned; -1 when there was none to be had */
    pid_t tid;              /* the thread's, for setpriority (stored by it first) */
    struct event *ended;    /* efd readable (or made active when work ran on the loop's thread) */
    struct event *lift;     /* MG_BGJOB_IDLE_MS after the start: out of SCHED_IDLE */
    struct job *next, *prev;
} job_t;

static job_t *jobs; /* main thread only */

static pthread_once_t probe_once = PTHREAD_ONCE_INIT;
static int idle_allowed;

/* nice first: leaving SCHED_IDLE is checked against the nice the thread has then (RLIMIT_NICE) */
static void go_idle(void)
{
    setpriority(PRIO_PROCESS, (id_t)gettid(), MG_BGJOB_NICE);
    struct sched_param sp = { 0 };
    pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
}

static void *probe_thread(void *arg)
{
    go_idle();
    struct sched_param sp = { 0 };
    *(int *)arg = pthread_setschedparam(pthread_self(), SCHED_OTHER, &sp) == 0;
    return NULL;
}

static void probe(void)
{
    pthread_t t;
    int ok = 0;
    if (pthread_create(&t, NULL, probe_thread, &ok) == 0 && pthread_join(t, NULL) == 0)
        idle_allowed = ok;
    if (!idle_allowed)
        mg_log_info(NULL, "reloads and other background work run at nice %d, not on idle CPU only: leaving "
                          "SCHED_IDLE needs CAP_SYS_NICE or an RLIMIT_NICE of at least 1 (systemd: LimitNICE=19)",
                    MG_BGJOB_NICE);
}

int mg_bgjob_idle_allowed(void)
{
    pthread_once(&probe_once, probe);
    return idle_allowed;
}

static void *job_thread(void *arg)
{
    job_t *j = arg;
    __atomic_store_n(&j->tid, gettid(), __ATOMIC_RELEASE);
    if (idle_allowed)
        go_idle();
    else
        setpriority(PRIO_PROCESS, (id_t)gettid(), MG_BGJOB_NICE);
    j->work(j->arg);
    uint64_t one = 1;
    if (write(j->efd, &one, sizeof(one)) < 0) {
        /* an eventfd write fails only on overflow: it is readable either way */
    }
    return NULL;
}

static void job_end(job_t *j)
{
    if (j->threaded)
        pthread_join(j->thread, NULL); /* work returned: this is the thread's last moment */
    event_free(j->ended);
    if (j->lift)
        event_free(j->lift);
    if (j->efd >= 0)
        close(j->efd);
    if (j->prev)
        j->prev->next = j->next;
    else
        jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
    mg_bgjob_fn done = j->done;
    void *arg = j->arg;
    free(j);
    done(arg);
}

static void on_ended(evutil_socket_t fd, short what, void *arg) { job_end(arg); }

static void on_lift(evutil_socket_t fd, short what, void *arg)
{
    job_t *j = arg;
    struct sched_param sp = { 0 };
    pthread_setschedparam(j->thread, SCHED_OTHER, &sp); /* at MG_BGJOB_NICE, set by the thread */
}

void mg_bgjob_start(struct event_base *base, mg_bgjob_fn work, mg_bgjob_fn done, void *arg)
{
    mg_bgjob_idle_allowed();
    job_t *j = mg_calloc(1, sizeof(*j));
    *j = (job_t){ .work = work, .done = done, .arg = arg, .next = jobs };
    if (jobs)
        jobs->prev = j;
    jobs = j;
    j->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    j->ended = event_new(base, j->efd, EV_READ, on_ended, j);
    j->threaded = j->efd >= 0 && pthread_create(&j->thread, NULL, job_thread, j) == 0;
    if (!j->threaded) {
        work(arg); /* no thread to be had: done here, answered on the loop as always */
        event_active(j->ended, EV_READ, 0);
        return;
    }
    event_add(j->ended, NULL);
    if (idle_allowed) {
        j->lift = evtimer_new(base, on_lift, j);
        struct timeval tv = { MG_BGJOB_IDLE_MS / 1000, (MG_BGJOB_IDLE_MS % 1000) * 1000 };
        evtimer_add(j->lift, &tv);
    }
}

int mg_bgjob_running(void)
{
    int n = 0;
    for (job_t *j = jobs; j; j = j->next)
        n++;
    return n;
}

void mg_bgjob_finish_all(void)
{
    while (jobs) {
        job_t *j = jobs;
        if (j->threaded) {
            /* at exit nothing waits on this core but the job: nice 0 where allowed */
            struct sched_param sp = { 0 };
            pthread_setschedparam(j->thread, SCHED_OTHER, &sp);
            pid_t tid = __atomic_load_n(&j->tid, __ATOMIC_ACQUIRE);
            if (tid)
                setpriority(PRIO_PROCESS, (id_t)tid, 0);
        }
        job_end(j);
    }
}
