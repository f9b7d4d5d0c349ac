/*
 * RFC 6455 framing (mg_ws): the input is a client's byte stream (the first
 * byte picks a split point). Heads are parsed, the message rules applied and
 * payloads unmasked and checked as UTF-8 the way mg_ws_lua does; nothing may
 * crash, a head never claims more bytes than it was given, and the boundary
 * tracker reaches the same state whether the stream comes whole or in two
 * pieces.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mg_ws.h"

static void consume(const uint8_t *in, size_t len)
{
    uint8_t *buf = malloc(len ? len : 1);
    memcpy(buf, in, len);
    mg_ws_msg_t m = { .max_message = 1 << 16 };
    size_t at = 0;
    while (at < len) {
        mg_ws_frame_t f;
        const char *why = NULL;
        int rc = mg_ws_parse_head(buf + at, len - at, 1, 1 << 15, &f, &why);
        if (rc == MG_WS_AGAIN)
            break;
        if (rc < 0) {
            if (!why)
                abort();
            break;
        }
        if ((size_t)rc > len - at || rc < 2 || rc > MG_WS_MAX_HEAD)
            abort();
        at += (size_t)rc;
        if (f.opcode < MG_WS_CLOSE && mg_ws_msg_frame(&m, &f, &why) != 0)
            break;
        size_t take = f.len < len - at ? (size_t)f.len : len - at;
        mg_ws_mask(buf + at, take, f.mask, 0);
        if (f.opcode < MG_WS_CLOSE && mg_ws_msg_payload(&m, buf + at, take, &why) != 0)
            break;
        if (f.opcode == MG_WS_CLOSE && take == f.len) {
            int code;
            const char *reason;
            size_t rn;
            if (mg_ws_parse_close(buf + at, take, &code, &reason, &rn, &why) == 0 &&
                (rn > take || (take >= 2 && !mg_ws_close_code_ok(code))))
                abort();
        }
        at += take;
        if (take < f.len)
            break;
        if (f.opcode < MG_WS_CLOSE && f.fin)
            mg_ws_msg_end(&m, &why);
    }
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t *in = data + 1;
    size_t len = size - 1;
    size_t cut = len ? data[0] % (len + 1) : 0;
    consume(in, len);
    mg_ws_track_t a = { 0 }, b = { 0 };
    mg_ws_track(&a, in, len, 1);
    mg_ws_track(&b, in, cut, 1);
    mg_ws_track(&b, in + cut, len - cut, 1);
    if (a.lost != b.lost || a.closed != b.closed || (!a.lost && (a.left != b.left || a.have != b.have)))
        abort();
    mg_utf8_t u1 = { 0 }, u2 = { 0 };
    int r1 = mg_utf8_feed(&u1, in, len);
    int r2 = mg_utf8_feed(&u2, in, cut);
    if (r2 == 0)
        r2 = mg_utf8_feed(&u2, in + cut, len - cut);
    if (r1 != r2 || (r1 == 0 && u1.state != u2.state))
        abort();
    return 0;
}
