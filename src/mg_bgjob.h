/*
 * mg_bgjob — work the main thread hands to a thread of its own that takes
 * only CPU no request wants: a reload's loads (one per worker) and freeing
 * retired generations (a 10,000-route VM takes tens of milliseconds to close).
 *
 * A gateway is often pinned to as many cores as it has workers (taskset,
 * containers), so this work shares a core with a worker that is serving
 * requests. At any ordinary priority the scheduler hands the job whole
 * ticks (4 ms at HZ=250) of that core, and requests queue behind it: p99
 * under back-to-back reloads was 3.5 ms against 0.43 ms without, at nice 10.
 * So a job runs as SCHED_IDLE: a worker with anything to do always preempts
 * it. A core that never idles would starve it, so after MG_BGJOB_IDLE_MS the
 * job is lifted to an ordinary thread at nice MG_BGJOB_NICE, the smallest
 * share that still ends. Leaving SCHED_IDLE needs CAP_SYS_NICE or an
 * RLIMIT_NICE of at least 1 (systemd: LimitNICE=19); without either, jobs
 * run at that nice from the start instead (mg_bgjob_idle_allowed).
 *
 * A job at idle priority must not hold what a worker waits for: jobs share
 * with workers only short critical sections (the allocator's arenas, the log
 * ring), so a worker that blocks on one sleeps, its core idles and the job
 * runs at once. (On a core that other processes keep busy, that wait lasts
 * until the job gets its small share: the price of never taking CPU from a
 * worker.)
 *
 * Everything here but the job's work runs on the main thread, on the loop
 * given to mg_bgjob_start. The main thread never waits for a job: it is
 * told on its loop when the job ended (an eventfd), so the admin side, the
 * watchdog and signals stay served during a reload.
 */
#ifndef MG_BGJOB_H
#define MG_BGJOB_H

#include <event2/event.h>

#define MG_BGJOB_IDLE_MS 10000 /* idle CPU only this long, then nice MG_BGJOB_NICE */
#define MG_BGJOB_NICE 19

typedef void (*mg_bgjob_fn)(void *arg);

/*
 * Runs work(arg) on a new thread, then done(arg) on base's loop once work
 * returned and the thread was joined. When no thread can be made, work runs
 * here and done on the loop's next pass. done always runs exactly once
 * (mg_bgjob_finish_all runs what the loop did not); arg belongs to the caller
 * until then.
 */
void mg_bgjob_start(struct event_base *base, mg_bgjob_fn work, mg_bgjob_fn done, void *arg);
/* Jobs started and not yet done. */
int mg_bgjob_running(void);
/* At exit, with the loop no longer run: lifts every job to nice 0, waits for it and runs its done. */
void mg_bgjob_finish_all(void);
/* Whether a job may start SCHED_IDLE (it could be lifted out of it); probed once. */
int mg_bgjob_idle_allowed(void);

#endif
