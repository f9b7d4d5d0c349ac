/*
 * mg_sema — see mg_sema.h.
 *
 * Lock order: the registry's lock, a semaphore's lock, then a mailbox's lock. Grants happen under
 * the semaphore's lock (so a permit is never both free and granted); the
 * grantee's worker only learns of it through its mailbox.
 */
#include "mg_sema.h"

#include <stdio.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct mg_sema {
    char *name;
    pthread_mutex_t lock;
    int64_t capacity, in_use;
    mg_sema_waiter_t *head, *tail;
    int64_t queued;
    uint64_t acquired, rejected, timed_out, longest_wait_ms;
    int refs;                           /* handles, holds and waiters (under registry_lock) */
    int permanent;
    mg_sema_t *next;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static mg_sema_t *registry;

static void grant_waiters(mg_sema_t *s);

mg_sema_t *mg_sema_get(const char *name, int64_t capacity)
{
    pthread_mutex_lock(&registry_lock);
    mg_sema_t *s;
    for (s = registry; s; s = s->next)
        if (strcmp(s->name, name) == 0)
            break;
    if (!s) {
        s = mg_calloc(1, sizeof(*s));
        s->name = strdup(name);
        s->permanent = mg_sema_config_name(name);
        pthread_mutex_init(&s->lock, NULL);
        s->next = registry;
        registry = s;
    }
    s->refs++;
    /*
     * A lower capacity applies to new acquisitions (permits above it drain as
     * they are released); a higher one frees room at once, so the waiters
     * already queued get it now instead of waiting out their queue timeout.
     */
    pthread_mutex_lock(&s->lock);
    s->capacity = capacity;
    grant_waiters(s);
    pthread_mutex_unlock(&s->lock);
    pthread_mutex_unlock(&registry_lock);
    return s;
}

const char *mg_sema_name(const mg_sema_t *s) { return s->name; }

void mg_sema_put(mg_sema_t *s)
{
    pthread_mutex_lock(&registry_lock);
    s->refs--;
    pthread_mutex_lock(&s->lock);
    int idle = s->refs == 0 && s->in_use == 0 && s->queued == 0 && !s->permanent;
    pthread_mutex_unlock(&s->lock);
    if (idle) {
        for (mg_sema_t **pp = &registry; *pp; pp = &(*pp)->next)
            if (*pp == s) {
                *pp = s->next;
                break;
            }
        pthread_mutex_destroy(&s->lock);
        free(s->name);
        free(s);
    }
    pthread_mutex_unlock(&registry_lock);
}

int mg_sema_config_name(const char *name)
{
    return strncmp(name, "upstream:", 9) == 0 || strncmp(name, "route:", 6) == 0;
}

void mg_sema_ref(mg_sema_t *s)
{
    pthread_mutex_lock(&registry_lock);
    s->refs++;
    pthread_mutex_unlock(&registry_lock);
}

void mg_sema_each(void (*fn)(mg_sema_t *s, void *arg), void *arg)
{
    pthread_mutex_lock(&registry_lock);
    for (mg_sema_t *s = registry; s; s = s->next)
        fn(s, arg);
    pthread_mutex_unlock(&registry_lock);
}

static void unlink_waiter(mg_sema_t *s, mg_sema_waiter_t *w)
{
    if (w->prev) w->prev->next = w->next; else s->head = w->next;
    if (w->next) w->next->prev = w->prev; else s->tail = w->prev;
    w->next = w->prev = NULL;
    s->queued--;
}

static void note_wait(mg_sema_t *s, mg_sema_waiter_t *w)
{
    uint64_t waited = mg_now_ms() - w->since_ms;
    if (waited > s->longest_wait_ms)
        s->longest_wait_ms = waited;
}

/* Grants permits to the head of the queue while they fit (FIFO: no overtaking). Under s->lock. */
static void grant_waiters(mg_sema_t *s)
{
    while (s->head && s->in_use + s->head->weight <= s->capacity) {
        mg_sema_waiter_t *w = s->head;
        unlink_waiter(s, w);
        s->in_use += w->weight;
        s->acquired++;
        note_wait(s, w);
        w->state = MG_SEMA_W_GRANTED;
        mg_mailbox_t *m = w->mailbox;
        pthread_mutex_lock(&m->lock);
        w->next = NULL;
        w->prev = m->granted_tail; /* appended: woken in the order granted */
        if (m->granted_tail)
            m->granted_tail->next = w;
        else
            m->granted = w;
        m->granted_tail = w;
        pthread_mutex_unlock(&m->lock);
        uint64_t one = 1;
        if (write(m->fd, &one, sizeof(one)) < 0) {
            /* the counter cannot overflow in practice; the loop wakes anyway on the next grant */
        }
    }
}

int mg_sema_try(mg_sema_t *s, int64_t weight)
{
    pthread_mutex_lock(&s->lock);
    int ok = !s->head && s->in_use + weight <= s->capacity;
    if (ok) {
        s->in_use += weight;
        s->acquired++;
    }
    pthread_mutex_unlock(&s->lock);
    return ok;
}

int mg_sema_acquire(mg_sema_t *s, int64_t weight, mg_sema_waiter_t *w, int64_t max_queue)
{
    pthread_mutex_lock(&s->lock);
    if (!s->head && s->in_use + weight <= s->capacity) {
        s->in_use += weight;
        s->acquired++;
        pthread_mutex_unlock(&s->lock);
        return MG_OK;
    }
    if (s->queued >= max_queue || weight > s->capacity) {
        s->rejected++;
        pthread_mutex_unlock(&s->lock);
        return MG_DECLINED;
    }
    w->sema = s;
    w->weight = weight;
    w->state = MG_SEMA_W_QUEUED;
    w->since_ms = mg_now_ms();
    w->next = NULL;
    w->prev = s->tail;
    if (s->tail)
        s->tail->next = w;
    else
        s->head = w;
    s->tail = w;
    s->queued++;
    pthread_mutex_unlock(&s->lock);
    return MG_AGAIN;
}

void mg_sema_release(mg_sema_t *s, int64_t weight)
{
    pthread_mutex_lock(&s->lock);
    s->in_use -= weight;
    mg_assert(s->in_use >= 0);
    grant_waiters(s);
    pthread_mutex_unlock(&s->lock);
}

void mg_sema_cancel(mg_sema_waiter_t *w, int timed_out)
{
    mg_sema_t *s = w->sema;
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    if (w->state == MG_SEMA_W_QUEUED) {
        unlink_waiter(s, w);
        if (timed_out) {
            s->timed_out++;
            note_wait(s, w);
        }
        grant_waiters(s); /* a big waiter leaving may let smaller ones behind it through */
    } else if (w->state == MG_SEMA_W_GRANTED) {
        /* granted but not yet woken: take it out of the mailbox and give the permit back */
        mg_mailbox_t *m = w->mailbox;
        pthread_mutex_lock(&m->lock);
        if (w->prev) w->prev->next = w->next; else m->granted = w->next;
        if (w->next) w->next->prev = w->prev; else m->granted_tail = w->prev;
        pthread_mutex_unlock(&m->lock);
        s->in_use -= w->weight;
        grant_waiters(s);
    }
    w->state = MG_SEMA_W_IDLE;
    pthread_mutex_unlock(&s->lock);
}

void mg_sema_count_rejected(mg_sema_t *s)
{
    pthread_mutex_lock(&s->lock);
    s->rejected++;
    pthread_mutex_unlock(&s->lock);
}

void mg_sema_stats(mg_sema_t *s, mg_sema_stats_t *out)
{
    pthread_mutex_lock(&s->lock);
    out->capacity = s->capacity;
    out->in_use = s->in_use;
    out->queued = s->queued;
    out->acquired = s->acquired;
    out->rejected = s->rejected;
    out->timed_out = s->timed_out;
    out->longest_wait_ms = s->longest_wait_ms;
    pthread_mutex_unlock(&s->lock);
}

/* The worker's side: wake every waiter granted to it. */
static void on_mail(evutil_socket_t fd, short what, void *arg)
{
    mg_mailbox_t *m = arg;
    uint64_t v;
    if (read(fd, &v, sizeof(v)) < 0) {
        /* EAGAIN: another pass took the count already */
    }
    for (;;) {
        pthread_mutex_lock(&m->lock);
        mg_sema_waiter_t *w = m->granted;
        if (w) {
            m->granted = w->next;
            if (m->granted)
                m->granted->prev = NULL;
            else
                m->granted_tail = NULL;
            w->next = w->prev = NULL;
        }
        pthread_mutex_unlock(&m->lock);
        if (!w)
            break;
        /* the waiter is ours again: nothing else refers to it */
        mg_sema_t *s = w->sema;
        pthread_mutex_lock(&s->lock);
        int granted = w->state == MG_SEMA_W_GRANTED;
        w->state = MG_SEMA_W_IDLE;
        pthread_mutex_unlock(&s->lock);
        if (granted)
            w->on_grant(w);
    }
}

int mg_mailbox_init(mg_mailbox_t *m, struct event_base *base)
{
    pthread_mutex_init(&m->lock, NULL);
    m->granted = m->granted_tail = NULL;
    m->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (m->fd < 0)
        return MG_ERROR;
    event_assign(&m->ev, base, m->fd, EV_READ | EV_PERSIST, on_mail, m);
    event_add(&m->ev, NULL);
    return MG_OK;
}

void mg_mailbox_free(mg_mailbox_t *m)
{
    event_del(&m->ev);
    close(m->fd);
    pthread_mutex_destroy(&m->lock);
}
