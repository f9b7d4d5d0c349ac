/*
 * Chunked decoder: no crash, and the decoded body is the same whether the
 * input arrives whole or split at an arbitrary point (the first byte picks it).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mg_http1.h"

static int decode(const char *in, size_t len, size_t cut, char *out, size_t *outlen)
{
    mg_chunked_t d;
    mg_chunked_init(&d);
    size_t bounds[3] = { 0, cut, len };
    int rc = MG_CHUNKED_AGAIN;
    *outlen = 0;
    for (int part = 0; part < 2; part++) {
        const char *p = in + bounds[part];
        size_t n = bounds[part + 1] - bounds[part];
        while (n > 0) {
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
            } else if (rc != MG_CHUNKED_AGAIN) {
                return rc;
            }
        }
    }
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *in = (const char *)data + 1;
    size_t len = size - 1;
    char *a = malloc(len + 1), *b = malloc(len + 1);
    size_t alen, blen;
    int ra = decode(in, len, len, a, &alen);
    int rb = decode(in, len, len ? data[0] % (len + 1) : 0, b, &blen);
    if (ra != rb)
        abort();
    if (ra == MG_CHUNKED_DONE && (alen != blen || memcmp(a, b, alen) != 0))
        abort();
    free(a);
    free(b);
    return 0;
}
