/* Response-head parser: no crash, no overread, never CL and chunked together. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mg_http1.h"

static const mg_http1_limits_t LIM = { .max_line = 512, .max_head = 4096, .max_headers = 32 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mg_header_t h[32];
    char *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    mg_http1_response_t r = { .headers = h };
    int rc = mg_http1_parse_response(buf, size, &r, &LIM);
    if (rc > 0) {
        if ((size_t)rc > size || r.status < 100 || r.status > 999)
            abort();
        if ((r.flags & MG_HTTP1_F_CHUNKED) && (r.flags & MG_HTTP1_F_HAS_CL))
            abort();
    }
    free(buf);
    return 0;
}
