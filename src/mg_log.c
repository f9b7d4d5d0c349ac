#include "mg_log.h"

#include "mg_core.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static int error_fd = 2;
static int access_fd = 1;
static int min_level = MG_LOG_INFO;

static const char *level_names[] = { "debug", "info", "warn", "error" };

const char *mg_log_level_name(int level) { return level_names[level & 3]; }

int mg_log_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

void mg_log_set_level(int level) { min_level = level; }

static int open_target(const char *spec, int *fd, char *err, size_t errlen)
{
    if (!spec || strcmp(spec, "stderr") == 0)
        *fd = 2;
    else if (strcmp(spec, "stdout") == 0)
        *fd = 1;
    else if (strcmp(spec, "off") == 0)
        *fd = -1;
    else {
        int f = open(spec, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (f < 0) {
            snprintf(err, errlen, "cannot open log file %s: %s", spec, strerror(errno));
            return -1;
        }
        *fd = f;
    }
    return 0;
}

static char *error_path, *access_path;

/* dup2 swaps the file under the same descriptor: writers in other threads never see a gap */
static int reopen_one(const char *path, int fd, char *err, size_t errlen)
{
    if (!path || fd < 0 || strcmp(path, "stdout") == 0 || strcmp(path, "stderr") == 0 || strcmp(path, "off") == 0)
        return MG_OK;
    int f = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (f < 0) {
        snprintf(err, errlen, "cannot reopen log file %s: %s", path, strerror(errno));
        return MG_ERROR;
    }
    dup2(f, fd);
    close(f);
    return MG_OK;
}

int mg_log_reopen(char *err, size_t errlen)
{
    if (reopen_one(error_path, error_fd, err, errlen) != MG_OK)
        return MG_ERROR;
    return reopen_one(access_path, access_fd, err, errlen);
}

int mg_log_open(const char *error_log, const char *access_log, char *err, size_t errlen)
{
    free(error_path);
    free(access_path);
    error_path = error_log ? strdup(error_log) : NULL;
    access_path = access_log ? strdup(access_log) : NULL;
    if (open_target(error_log, &error_fd, err, errlen) < 0)
        return MG_ERROR;
    if (error_fd < 0)
        error_fd = 2; /* the error log cannot be turned off */
    if (open_target(access_log ? access_log : "stdout", &access_fd, err, errlen) < 0)
        return MG_ERROR;
    return MG_OK;
}

int mg_log_access_enabled(void) { return access_fd >= 0; }

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere left to report a failing log */
        }
        p += w;
        n -= (size_t)w;
    }
}

/*
 * Log lines do not touch the disk on the event loop: once mg_log_start ran,
 * they are copied into a ring (one per log) under a short lock, and one
 * writer thread writes them out. A full ring drops the line and counts it
 * (a stalled disk must not stall the gateway). Before the writer exists
 * (start-up), lines are written directly.
 */
typedef struct ring {
    char *buf;
    size_t size, head, len;       /* bytes [head, head + len) mod size are queued */
    int *fd;
} ring_t;

#define RING_SIZE (1024 * 1024)

static ring_t rings[2] = { { .fd = &error_fd }, { .fd = &access_fd } };
static pthread_mutex_t ring_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ring_cond = PTHREAD_COND_INITIALIZER;
static pthread_t writer;
static int writer_running, writer_stop;
static uint64_t dropped;

static void emit(ring_t *r, const char *line, size_t len)
{
    if (!writer_running) {
        write_all(*r->fd, line, len);
        return;
    }
    pthread_mutex_lock(&ring_lock);
    if (r->size - r->len < len) {
        dropped++;
    } else {
        size_t tail = (r->head + r->len) % r->size;
        size_t first = len < r->size - tail ? len : r->size - tail;
        memcpy(r->buf + tail, line, first);
        memcpy(r->buf, line + first, len - first);
        r->len += len;
        pthread_cond_signal(&ring_cond);
    }
    pthread_mutex_unlock(&ring_lock);
}

static void *write_loop(void *arg)
{
    static char chunk[65536];
    pthread_mutex_lock(&ring_lock);
    for (;;) {
        int any = 0;
        for (int i = 0; i < 2; i++) {
            ring_t *r = &rings[i];
            if (!r->len)
                continue;
            size_t n = r->len < r->size - r->head ? r->len : r->size - r->head;
            if (n > sizeof(chunk))
                n = sizeof(chunk);
            memcpy(chunk, r->buf + r->head, n);
            r->head = (r->head + n) % r->size;
            r->len -= n;
            int fd = *r->fd;
            pthread_mutex_unlock(&ring_lock);
            if (fd >= 0)
                write_all(fd, chunk, n); /* the only place that may block on the disk */
            pthread_mutex_lock(&ring_lock);
            any = 1;
        }
        if (any)
            continue;
        if (writer_stop)
            break;
        pthread_cond_wait(&ring_cond, &ring_lock);
    }
    pthread_mutex_unlock(&ring_lock);
    return NULL;
}

void mg_log_start(void)
{
    for (int i = 0; i < 2; i++) {
        rings[i].buf = mg_alloc(RING_SIZE);
        rings[i].size = RING_SIZE;
    }
    writer_stop = 0;
    pthread_create(&writer, NULL, write_loop, NULL);
    writer_running = 1;
}

void mg_log_stop(void)
{
    if (!writer_running)
        return;
    pthread_mutex_lock(&ring_lock);
    writer_stop = 1;
    pthread_cond_signal(&ring_cond);
    pthread_mutex_unlock(&ring_lock);
    pthread_join(writer, NULL); /* it writes what is queued first */
    writer_running = 0;
    for (int i = 0; i < 2; i++) {
        free(rings[i].buf);
        rings[i].buf = NULL;
    }
}

uint64_t mg_log_dropped(void)
{
    pthread_mutex_lock(&ring_lock);
    uint64_t d = dropped;
    pthread_mutex_unlock(&ring_lock);
    return d;
}

void mg_log_access_line(const char *line, size_t len)
{
    if (access_fd >= 0)
        emit(&rings[1], line, len);
}

size_t mg_json_escape(char *out, size_t size, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[7];
        size_t k;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            k = 2;
        } else if (c == '\n') {
            memcpy(esc, "\\n", 2);
            k = 2;
        } else if (c == '\t') {
            memcpy(esc, "\\t", 2);
            k = 2;
        } else if (c < 0x20 || c == 0x7f) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            k = 6;
        } else {
            esc[0] = (char)c;
            k = 1;
        }
        if (o + k + 1 > size)
            break;
        memcpy(out + o, esc, k);
        o += k;
    }
    out[o] = '\0';
    return o;
}

void mg_log_time(char *buf, size_t size, double t)
{
    time_t sec = (time_t)t;
    struct tm tm;
    gmtime_r(&sec, &tm);
    int ms = (int)((t - (double)sec) * 1000) % 1000;
    snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
}

void mg_log_write(int level, const char *trace_id, const char *fields_json, const char *fmt, ...)
{
    if (level < min_level)
        return;
    char msg[4096], emsg[8192], ts[64], line[12288];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    mg_json_escape(emsg, sizeof(emsg), msg, (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1);
    mg_log_time(ts, sizeof(ts), mg_wall_time());
    int len = snprintf(line, sizeof(line), "{\"time\":\"%s\",\"level\":\"%s\"%s%s%s,\"msg\":\"%s\"%s%s}\n",
                       ts, mg_log_level_name(level), trace_id ? ",\"trace_id\":\"" : "",
                       trace_id ? trace_id : "", trace_id ? "\"" : "", emsg,
                       fields_json && *fields_json ? "," : "", fields_json ? fields_json : "");
    if (len < 0)
        return;
    if ((size_t)len >= sizeof(line)) {
        len = sizeof(line) - 1;
        line[len - 1] = '\n';
    }
    emit(&rings[0], line, (size_t)len);
}
