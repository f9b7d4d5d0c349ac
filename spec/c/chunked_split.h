/*
 * Test helper shared by the cmocka tests and the chunked fuzzer: decodes a
 * chunked body fed to the decoder in pieces, the way a connection reads it,
 * into out (room for len bytes). Bytes the decoder leaves unconsumed (a
 * captured trailer section still incomplete) are kept and handed again with
 * the next piece, as a caller must. Returns the decoder's last result. Aborts
 * when the decoder breaks its contract (consumes more than it was given,
 * returns data outside the input, leaves bytes unconsumed without capture).
 */
#ifndef CHUNKED_SPLIT_H
#define CHUNKED_SPLIT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg_http1.h"

#define CHUNKED_SPLIT_MAX_TRAILERS 4096 /* more than an 8 KiB section can hold: the limit is the size */

/*
 * Feeds in[0..len) cut at cuts[0..ncuts) (ascending offsets). With capture,
 * trailers are captured and, on MG_CHUNKED_DONE, written to trailers (room
 * for 2 * len + 1 bytes) as "name: value\n" lines; NULL: they are dropped.
 */
static int decode_pieces(const char *in, size_t len, const size_t *cuts, size_t ncuts, char *out,
                         size_t *outlen, char *trailers)
{
    static mg_header_t th[CHUNKED_SPLIT_MAX_TRAILERS];
    mg_chunked_t d;
    mg_chunked_init(&d);
    if (trailers) {
        mg_chunked_capture_trailers(&d, th, CHUNKED_SPLIT_MAX_TRAILERS);
        trailers[0] = '\0';
    }
    char *work = malloc(len + 1);
    size_t kept = 0; /* unconsumed bytes at the start of work */
    *outlen = 0;
    int rc = MG_CHUNKED_AGAIN;
    for (size_t piece = 0; piece <= ncuts; piece++) {
        size_t from = piece == 0 ? 0 : cuts[piece - 1], to = piece == ncuts ? len : cuts[piece];
        memcpy(work + kept, in + from, to - from);
        const char *p = work;
        size_t n = kept + (to - from);
        while (n > 0 || rc == MG_CHUNKED_DATA) {
            size_t used;
            const char *data;
            size_t dlen;
            rc = mg_chunked_decode(&d, p, n, &used, &data, &dlen);
            if (used > n)
                abort();
            p += used;
            n -= used;
            if (rc == MG_CHUNKED_DATA) {
                if (data < work || data + dlen > work + len)
                    abort();
                memcpy(out + *outlen, data, dlen);
                *outlen += dlen;
                continue;
            }
            if (rc == MG_CHUNKED_DONE && trailers) {
                char *t = trailers;
                for (size_t i = 0; i < d.num_trailers; i++) {
                    const mg_header_t *h = &th[i];
                    if (h->name < work || h->value + h->value_len > work + len)
                        abort();
                    t += sprintf(t, "%.*s: %.*s\n", (int)h->name_len, h->name, (int)h->value_len, h->value);
                }
            }
            if (rc != MG_CHUNKED_AGAIN) {
                free(work);
                return rc;
            }
            break;
        }
        if (n > 0 && !trailers)
            abort(); /* without capture, AGAIN consumes everything */
        memmove(work, p, n);
        kept = n;
    }
    free(work);
    return rc;
}

/* The body in two pieces, split at cut, trailers dropped. */
static int decode_split(const char *in, size_t len, size_t cut, char *out, size_t *outlen)
{
    return decode_pieces(in, len, &cut, 1, out, outlen, NULL);
}

#endif
