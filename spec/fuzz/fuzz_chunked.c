/*
 * Chunked decoder: no crash; the decoded body is the same whether the input
 * arrives whole or split at an arbitrary point (the first byte picks it);
 * trailers captured (handed back) or dropped, the decoder accepts and refuses
 * exactly the same inputs, and captured trailers do not depend on the split.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../c/chunked_split.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *in = (const char *)data + 1;
    size_t len = size - 1;
    size_t cut = len ? data[0] % (len + 1) : 0;
    char *a = malloc(len + 1), *b = malloc(len + 1), *c = malloc(len + 1);
    char *ta = malloc(2 * len + 1), *tc = malloc(2 * len + 1);
    size_t alen, blen, clen;
    int ra = decode_pieces(in, len, NULL, 0, a, &alen, ta);
    int rb = decode_split(in, len, cut, b, &blen);
    int rc = decode_pieces(in, len, &cut, 1, c, &clen, tc);
    if (ra != rb || ra != rc)
        abort();
    if (ra == MG_CHUNKED_DONE && (alen != blen || memcmp(a, b, alen) != 0 || alen != clen ||
                                  memcmp(a, c, alen) != 0 || strcmp(ta, tc) != 0))
        abort();
    free(a);
    free(b);
    free(c);
    free(ta);
    free(tc);
    return 0;
}
