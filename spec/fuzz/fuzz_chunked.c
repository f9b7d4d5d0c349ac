/*
 * Chunked decoder: no crash, and the decoded body is the same whether the
 * input arrives whole or split at an arbitrary point (the first byte picks it).
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
    char *a = malloc(len + 1), *b = malloc(len + 1);
    size_t alen, blen;
    int ra = decode_split(in, len, len, a, &alen);
    int rb = decode_split(in, len, len ? data[0] % (len + 1) : 0, b, &blen);
    if (ra != rb)
        abort();
    if (ra == MG_CHUNKED_DONE && (alen != blen || memcmp(a, b, alen) != 0))
        abort();
    free(a);
    free(b);
    return 0;
}
