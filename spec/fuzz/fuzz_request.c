/*
 * Request-head parser: no crash, no read outside the input, and incremental
 * consistency: a prefix of an input never parses to something the whole
 * input contradicts (the caller re-parses as bytes arrive).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mg_http1.h"

static const mg_http1_limits_t LIM = { .max_line = 512, .max_head = 4096, .max_headers = 32 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mg_header_t h1[32], h2[32];
    /* a heap copy of exactly `size` bytes so ASan sees any overread */
    char *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    mg_http1_request_t full = { .headers = h1 };
    int rc = mg_http1_parse_request(buf, size, &full, &LIM);
    if (rc > 0) {
        if ((size_t)rc > size)
            abort();
        if (full.num_headers > LIM.max_headers)
            abort();
        for (size_t i = 0; i < full.num_headers; i++)
            if (full.headers[i].name < buf || full.headers[i].value + full.headers[i].value_len > buf + rc)
                abort();
        if ((full.flags & MG_HTTP1_F_CHUNKED) && (full.flags & MG_HTTP1_F_HAS_CL))
            abort(); /* never both: that is the smuggling vector */
    }
    if (size > 1) {
        size_t cut = data[0] % size;
        mg_http1_request_t part = { .headers = h2 };
        int prc = mg_http1_parse_request(buf, cut, &part, &LIM);
        /* a complete head inside the prefix must be the same head */
        if (prc > 0 && prc != rc)
            abort();
        /* an incomplete prefix of a valid head is never an error (unless limits hit) */
        if (rc > 0 && cut < (size_t)rc && prc < 0 && prc != MG_HTTP1_AGAIN && prc != MG_HTTP1_ELINE &&
            prc != MG_HTTP1_EHEADER_SIZE)
            abort();
    }
    free(buf);
    return 0;
}
