/*
 * mg_log — the error log and the access log. Both are JSON lines. The error
 * log carries the trace id of the request it was written for; callers pass it
 * (from the running task), nothing is taken from a global "current request".
 *
 * Files are opened once at start-up, before workers exist; a line is written
 * with one write(2) so lines from different workers never interleave.
 */
#ifndef MG_LOG_H
#define MG_LOG_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

enum { MG_LOG_DEBUG = 0, MG_LOG_INFO, MG_LOG_WARN, MG_LOG_ERROR };

/* Opens the logs: a path, "stdout", "stderr" or "off" (access log only). */
int mg_log_open(const char *error_log, const char *access_log, char *err, size_t errlen);
void mg_log_set_level(int level);
int mg_log_level_parse(const char *name); /* -1 when unknown */
const char *mg_log_level_name(int level);
int mg_log_access_enabled(void);
/*
 * Starts the writer thread: from then on no log line is written on the
 * caller's thread (lines queue in a 1 MiB ring per log; a full ring drops
 * and counts). mg_log_stop writes what is queued and joins the thread.
 */
void mg_log_start(void);
void mg_log_stop(void);
uint64_t mg_log_dropped(void);

/* Opens the log files again (after rotation) and swaps them in atomically. */
int mg_log_reopen(char *err, size_t errlen);

/* Writes one error-log line; trace_id and fields_json (a JSON object body, "k":v,...) may be NULL. */
void mg_log_write(int level, const char *trace_id, const char *fields_json, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define mg_log_error(tid, ...) mg_log_write(MG_LOG_ERROR, (tid), NULL, __VA_ARGS__)
#define mg_log_warn(tid, ...) mg_log_write(MG_LOG_WARN, (tid), NULL, __VA_ARGS__)
#define mg_log_info(tid, ...) mg_log_write(MG_LOG_INFO, (tid), NULL, __VA_ARGS__)

/* Writes a complete access-log line (with its newline). */
void mg_log_access_line(const char *line, size_t len);

/* JSON-escapes s[0..n) into out (size > 0), always NUL-terminating; returns bytes written. */
size_t mg_json_escape(char *out, size_t size, const char *s, size_t n);

/* Formats the wall time as "2026-11-27T05:09:14.123Z" into buf (>= 32 bytes). */
void mg_log_time(char *buf, size_t size, double t);

#endif
