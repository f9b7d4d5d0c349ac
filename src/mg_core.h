/*
 * mg_core — the vocabulary every module shares: return codes, allocation that
 * never returns NULL, assertions, monotonic time and ptr+len strings.
 */
#ifndef MG_CORE_H
#define MG_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Control-flow codes, the same numbers across the FFI boundary. */
#define MG_OK        0
#define MG_ERROR    (-1)
#define MG_AGAIN    (-2)
#define MG_DECLINED (-3)

#define MG_VERSION "0.1.0"

#define mg_unused(x) ((void)(x))
#define mg_countof(a) (sizeof(a) / sizeof((a)[0]))
#define mg_likely(x) __builtin_expect(!!(x), 1)
#define mg_unlikely(x) __builtin_expect(!!(x), 0)

/* Allocation aborts on OOM: a gateway that half-handles OOM corrupts state. */
void *mg_alloc(size_t n);
void *mg_calloc(size_t n, size_t size);
void *mg_realloc(void *p, size_t n);
char *mg_strndup(const char *s, size_t n);

/*
 * A connection's read buffer (MG_INBUF_SIZE bytes), reused within a thread:
 * keep-alive connections give theirs back between requests (so an idle one
 * holds none) and take one at their next read; the thread's last
 * MG_INBUF_CACHED returned buffers are handed out again without malloc.
 * mg_inbuf_put takes any buffer from mg_inbuf_get, grown or not (one of
 * another size is freed), and NULL. What a thread keeps is freed when it ends.
 */
#define MG_INBUF_SIZE 4096
#define MG_INBUF_CACHED 32
char *mg_inbuf_get(void);
void mg_inbuf_put(char *p, size_t cap);

void mg_assert_fail(const char *expr, const char *file, int line) __attribute__((noreturn));
#define mg_assert(e) ((e) ? (void)0 : mg_assert_fail(#e, __FILE__, __LINE__))

typedef struct mg_str {
    const char *p;
    size_t n;
} mg_str_t;

#define MG_STR(lit) ((mg_str_t){ (lit), sizeof(lit) - 1 })

/* ASCII lowercase of n bytes (dst may be src): header names and host names. */
static inline void mg_lowercase(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = (char)(src[i] >= 'A' && src[i] <= 'Z' ? src[i] | 0x20 : src[i]);
}

/* FNV-1a: a small, good-enough hash for keys (balancer, shared dicts). */
static inline uint32_t mg_hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

/*
 * The monotonic clock. A proxied request takes a dozen timestamps (start,
 * deadline, queue, attempt, connect, first byte, timers, end) microseconds
 * apart in the same loop callback, and a clock reading costs ~20 ns on a VM.
 * Within a hold (mg_clock_hold ... mg_clock_release, around the connection
 * callbacks that parse, route, forward and relay) the first reading serves
 * every later one, as the per-loop-pass clocks of nginx and h2o do, but
 * finer: Lua never runs inside a hold (resuming a task suspends it, so
 * gw.now, gw.sleep and the timeline read the real clock), so a held reading
 * is never older than a stretch of C work. Per thread.
 */
typedef struct mg_clock {
    uint64_t us; /* the held reading; 0: none yet */
    int depth;   /* holds open; 0: every call reads the clock */
} mg_clock_t;
extern __thread mg_clock_t mg_clock_;
uint64_t mg_clock_read_us(void);

static inline uint64_t mg_now_us(void)
{
    if (!mg_clock_.depth)
        return mg_clock_read_us();
    if (!mg_clock_.us)
        mg_clock_.us = mg_clock_read_us();
    return mg_clock_.us;
}
static inline uint64_t mg_now_ms(void) { return mg_now_us() / 1000u; }
static inline void mg_clock_hold(void) { mg_clock_.depth++; }
static inline void mg_clock_release(void)
{
    if (--mg_clock_.depth == 0)
        mg_clock_.us = 0;
}
/* Lua is about to run: the real clock until mg_clock_unsuspend(what this returned). */
static inline int mg_clock_suspend(void)
{
    int depth = mg_clock_.depth;
    mg_clock_.depth = 0;
    mg_clock_.us = 0;
    return depth;
}
static inline void mg_clock_unsuspend(int depth)
{
    mg_clock_.depth = depth;
    mg_clock_.us = 0; /* time went on while Lua ran */
}
/* Wall clock, for logs and Date headers. */
double mg_wall_time(void);

/*
 * A file's identity (device, inode, size, mtime) at one moment: loads that
 * read the config file each on their own (one per worker) read the same file
 * when its identity did not change from before the first to after the last
 * (an editor's rename changes the inode, a rewrite the size or mtime).
 */
typedef struct mg_file_id {
    int ok;                       /* stat succeeded */
    struct stat st;
} mg_file_id_t;

void mg_file_id(const char *path, mg_file_id_t *id);
int mg_file_id_changed(const mg_file_id_t *before, const mg_file_id_t *after);

#endif
