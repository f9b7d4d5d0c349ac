/*
 * mg_otel — the OpenTelemetry exporter: recorded requests (mg_trace_rec_t)
 * become OTLP spans, sent as OTLP/HTTP JSON (the OpenTelemetry protocol's
 * JSON encoding: protobuf would need a generated-code dependency for no gain
 * a collector would notice) to the configured endpoint, by a thread of its
 * own, so no event loop ever waits for a collector.
 *
 * What a request becomes (docs/observability.md has the attributes):
 *   - one SERVER span (the request, parent: the incoming traceparent's span);
 *   - one CLIENT span per upstream attempt (its id is the traceparent the
 *     upstream got) and per gw.http.request (its attempts are events);
 *   - one INTERNAL span per plugin step (or handler) that waited, with the
 *     waits as events ("wait": what on, how long).
 *
 * The queue: mg_otel_submit (main thread) takes a record when its spans fit
 * in `queue` (the spans waiting, at most); else they are dropped and
 * counted. The thread sends `batch` spans per request, or what it has after
 * `interval`. A failed export (no connection, timeout, 429, 502, 503, 504)
 * is retried after 0.1 s, 0.2 s, 0.4 s, ... (at most 5 s apart, 5 tries),
 * while new records keep queueing up to the bound; then the batch is dropped
 * and counted. Any other answer (400, 404, ...) drops the batch at once: it
 * would be refused again. A dead collector therefore costs dropped spans and
 * one thread's connect attempts, nothing else. The connection is kept alive
 * between exports.
 *
 * Endpoints: http:// and https:// (the system CA store; the certificate must
 * cover the host); a host name is resolved on the exporter thread.
 */
#ifndef MG_OTEL_H
#define MG_OTEL_H

#include "mg_metrics.h"
#include "mg_trace.h"

/*
 * Main thread, at start and on every reload: the exporter takes the new
 * settings (started on first use; a block without an endpoint, or none,
 * stops exporting and drops what is queued).
 */
void mg_otel_configure(const mg_trace_conf_t *c);
/* Is an endpoint configured (records sampled for export should be submitted)? */
int mg_otel_active(void);
/* Main thread: queues the record's spans (takes the caller's reference). */
void mg_otel_submit(mg_trace_rec_t *rec);
/* Sends what is queued (one try each, within the timeout), then ends the thread. */
void mg_otel_stop(void);

typedef struct mg_otel_stats {
    uint64_t exported;            /* spans the collector accepted */
    uint64_t dropped_queue;       /* spans dropped: the queue was full */
    uint64_t dropped_failed;      /* spans dropped: their batch failed (after retries, or refused) */
    uint64_t errors;              /* export requests that failed (each try) */
    uint64_t queued;              /* spans waiting now */
} mg_otel_stats_t;
void mg_otel_stats(mg_otel_stats_t *s);

/* The spans a record becomes. */
int mg_otel_span_count(const mg_trace_rec_t *rec);
/* Appends one OTLP/JSON ExportTraceServiceRequest with the records' spans (exposed for tests). */
void mg_otel_encode(mg_text_t *out, mg_trace_rec_t *const *recs, int n, const char *service_name);

#endif
