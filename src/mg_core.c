#include "mg_core.h"

#include <pthread.h>
#include <stdio.h>
#include <sys/time.h>
#include <time.h>

static void oom(size_t n) __attribute__((noreturn));
static void oom(size_t n)
{
    fprintf(stderr, "moongate: out of memory allocating %zu bytes\n", n);
    abort();
}

void *mg_alloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (mg_unlikely(p == NULL))
        oom(n);
    return p;
}

void *mg_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (mg_unlikely(p == NULL))
        oom(n * size);
    return p;
}

void *mg_realloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (mg_unlikely(p == NULL))
        oom(n);
    return p;
}

char *mg_strndup(const char *s, size_t n)
{
    char *d = mg_alloc(n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

void mg_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "moongate: assertion failed: %s (%s:%d)\n", expr, file, line);
    abort();
}

__thread mg_clock_t mg_clock_;

uint64_t mg_clock_read_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

double mg_wall_time(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

typedef struct inbuf_cache {
    int n;
    char *buf[MG_INBUF_CACHED];
} inbuf_cache_t;

static __thread inbuf_cache_t inbufs;
static pthread_key_t inbuf_key; /* its destructor frees a thread's cache when the thread ends */
static pthread_once_t inbuf_once = PTHREAD_ONCE_INIT;

static void inbuf_drain(void *unused)
{
    (void)unused;
    while (inbufs.n > 0)
        free(inbufs.buf[--inbufs.n]);
}

static void inbuf_key_make(void) { pthread_key_create(&inbuf_key, inbuf_drain); }

char *mg_inbuf_get(void)
{
    if (inbufs.n > 0)
        return inbufs.buf[--inbufs.n];
    return mg_alloc(MG_INBUF_SIZE);
}

void mg_inbuf_put(char *p, size_t cap)
{
    if (!p)
        return;
    if (cap != MG_INBUF_SIZE || inbufs.n == MG_INBUF_CACHED) {
        free(p);
        return;
    }
    if (inbufs.n == 0) { /* the destructor runs only for threads with a value set */
        pthread_once(&inbuf_once, inbuf_key_make);
        pthread_setspecific(inbuf_key, &inbufs);
    }
    inbufs.buf[inbufs.n++] = p;
}

void mg_file_id(const char *path, mg_file_id_t *id) { id->ok = stat(path, &id->st) == 0; }

int mg_file_id_changed(const mg_file_id_t *x, const mg_file_id_t *y)
{
    if (x->ok != y->ok)
        return 1;
    return x->ok && (x->st.st_ino != y->st.st_ino || x->st.st_dev != y->st.st_dev || x->st.st_size != y->st.st_size ||
                     x->st.st_mtim.tv_sec != y->st.st_mtim.tv_sec || x->st.st_mtim.tv_nsec != y->st.st_mtim.tv_nsec);
}
