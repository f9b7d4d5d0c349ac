#include "mg_core.h"

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

uint64_t mg_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t mg_now_us(void)
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
