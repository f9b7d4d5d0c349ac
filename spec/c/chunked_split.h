/*
 * Test helper shared by the cmocka tests and the chunked fuzzer: decodes a
 * chunked body fed to the decoder in two pieces, split at `cut`, into out
 * (room for len bytes). Returns the decoder's last result. Aborts when the
 * decoder breaks its contract (consumes more than it was given, or returns
 * data outside the input).
 */
#ifndef CHUNKED_SPLIT_H
#define CHUNKED_SPLIT_H

#include <stdlib.h>
#include <string.h>

#include "mg_http1.h"

static int decode_split(const char *in, size_t len, size_t cut, char *out, size_t *outlen)
{
    mg_chunked_t d;
    mg_chunked_init(&d);
    *outlen = 0;
    size_t bounds[3] = { 0, cut, len };
    int rc = MG_CHUNKED_AGAIN;
    for (int part = 0; part < 2; part++) {
        const char *p = in + bounds[part];
        size_t n = bounds[part + 1] - bounds[part];
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
                if (data < in || data + dlen > in + len)
                    abort();
                memcpy(out + *outlen, data, dlen);
                *outlen += dlen;
                continue;
            }
            if (rc != MG_CHUNKED_AGAIN)
                return rc;
            break;
        }
    }
    return rc;
}

#endif
