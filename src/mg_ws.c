/*
 * mg_ws — see mg_ws.h. No I/O and no allocation here.
 */
#include "mg_ws.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

int mg_ws_parse_head(const uint8_t *p, size_t n, int from_client, uint64_t max_frame, mg_ws_frame_t *f,
                     const char **why)
{
    if (n < 2)
        return MG_WS_AGAIN;
    f->fin = (p[0] & 0x80) != 0;
    f->opcode = p[0] & 0x0F;
    f->masked = (p[1] & 0x80) != 0;
    /* the fixed part is judged as soon as it is here: garbage is refused before its length arrives */
    if (p[0] & 0x70) {
        *why = "reserved bits set (no extension was negotiated)";
        return MG_WS_E_PROTOCOL;
    }
    int control = f->opcode >= 0x8;
    if ((f->opcode > MG_WS_BINARY && f->opcode < MG_WS_CLOSE) || f->opcode > MG_WS_PONG) {
        *why = "reserved opcode";
        return MG_WS_E_PROTOCOL;
    }
    if (control && !f->fin) {
        *why = "fragmented control frame";
        return MG_WS_E_PROTOCOL;
    }
    if (f->masked != (from_client != 0)) {
        *why = from_client ? "unmasked frame from a client" : "masked frame from a server";
        return MG_WS_E_PROTOCOL;
    }
    unsigned len7 = p[1] & 0x7F;
    if (control && len7 > 125) {
        *why = "control frame payload over 125 bytes";
        return MG_WS_E_PROTOCOL;
    }
    size_t need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + (f->masked ? 4 : 0);
    if (n < need)
        return MG_WS_AGAIN;
    size_t at = 2;
    uint64_t len = len7;
    if (len7 == 126) {
        len = (uint64_t)p[2] << 8 | p[3];
        at = 4;
        if (len < 126) {
            *why = "length not in its shortest form";
            return MG_WS_E_PROTOCOL;
        }
    } else if (len7 == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p[2 + i];
        at = 10;
        if (len >> 63) {
            *why = "length with the most significant bit set";
            return MG_WS_E_PROTOCOL;
        }
        if (len <= 0xFFFF) {
            *why = "length not in its shortest form";
            return MG_WS_E_PROTOCOL;
        }
    }
    if (f->masked)
        memcpy(f->mask, p + at, 4);
    else
        memset(f->mask, 0, 4);
    f->len = len;
    if (max_frame && len > max_frame) {
        *why = "frame larger than max_frame";
        return MG_WS_E_TOO_BIG;
    }
    return (int)need;
}

void mg_ws_mask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t offset)
{
    size_t i = 0;
    unsigned k = (unsigned)(offset & 3);
    /* byte by byte up to a key boundary, then 8 bytes at a time with the key rotated into place */
    while (i < n && k != 0) {
        p[i++] ^= mask[k];
        k = (k + 1) & 3;
    }
    if (n - i >= 8) {
        uint8_t m8[8] = { mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3] };
        uint64_t m;
        memcpy(&m, m8, 8);
        for (; n - i >= 8; i += 8) {
            uint64_t v;
            memcpy(&v, p + i, 8);
            v ^= m;
            memcpy(p + i, &v, 8);
        }
    }
    for (; i < n; i++, k = (k + 1) & 3)
        p[i] ^= mask[k];
}

size_t mg_ws_head(uint8_t *out, int opcode, int fin, uint64_t len, const uint8_t *mask)
{
    size_t at = 2;
    out[0] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0F));
    uint8_t m = mask ? 0x80 : 0;
    if (len < 126) {
        out[1] = (uint8_t)(m | len);
    } else if (len <= 0xFFFF) {
        out[1] = m | 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        at = 4;
    } else {
        out[1] = m | 127;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        at = 10;
    }
    if (mask) {
        memcpy(out + at, mask, 4);
        at += 4;
    }
    return at;
}

/*
 * The state: continuation bytes still due (bits 16..), and the range the
 * next one must be in (lo in bits 8..15, hi in 0..7). The narrow ranges
 * after E0, ED, F0 and F4 refuse overlong forms, surrogates and code points
 * above U+10FFFF.
 */
#define U8(need, lo, hi) ((uint32_t)(need) << 16 | (uint32_t)(lo) << 8 | (uint32_t)(hi))

int mg_utf8_feed(mg_utf8_t *u, const uint8_t *p, size_t n)
{
    uint32_t s = u->state;
    size_t i = 0;
    while (i < n) {
        if (s == 0) {
            /* ASCII runs, 8 bytes at a time */
            while (n - i >= 8) {
                uint64_t v;
                memcpy(&v, p + i, 8);
                if (v & 0x8080808080808080ull)
                    break;
                i += 8;
            }
            if (i == n)
                break;
            uint8_t b = p[i++];
            if (b < 0x80)
                continue;
            if (b >= 0xC2 && b <= 0xDF)
                s = U8(1, 0x80, 0xBF);
            else if (b == 0xE0)
                s = U8(2, 0xA0, 0xBF);
            else if (b == 0xED)
                s = U8(2, 0x80, 0x9F);
            else if (b >= 0xE1 && b <= 0xEF)
                s = U8(2, 0x80, 0xBF);
            else if (b == 0xF0)
                s = U8(3, 0x90, 0xBF);
            else if (b >= 0xF1 && b <= 0xF3)
                s = U8(3, 0x80, 0xBF);
            else if (b == 0xF4)
                s = U8(3, 0x80, 0x8F);
            else
                return -1;
            continue;
        }
        uint8_t b = p[i++];
        if (b < ((s >> 8) & 0xFF) || b > (s & 0xFF))
            return -1;
        uint32_t need = (s >> 16) - 1;
        s = need ? U8(need, 0x80, 0xBF) : 0;
    }
    u->state = s;
    return 0;
}

int mg_ws_msg_frame(mg_ws_msg_t *m, const mg_ws_frame_t *f, const char **why)
{
    if (f->opcode >= MG_WS_CLOSE)
        return 0; /* control frames may come between the fragments of a message */
    if (f->opcode == MG_WS_CONT) {
        if (!m->opcode) {
            *why = "continuation frame with no message to continue";
            return MG_WS_E_PROTOCOL;
        }
    } else {
        if (m->opcode) {
            *why = "new data frame inside a fragmented message";
            return MG_WS_E_PROTOCOL;
        }
        m->opcode = f->opcode;
        m->size = 0;
        m->utf8.state = 0;
    }
    if (m->max_message && (f->len > m->max_message || m->size + f->len > m->max_message)) {
        *why = "message larger than max_message";
        return MG_WS_E_TOO_BIG;
    }
    m->size += f->len;
    return 0;
}

int mg_ws_msg_payload(mg_ws_msg_t *m, const uint8_t *p, size_t n, const char **why)
{
    if (m->opcode == MG_WS_TEXT && mg_utf8_feed(&m->utf8, p, n) != 0) {
        *why = "text message is not UTF-8";
        return MG_WS_E_UTF8;
    }
    return 0;
}

int mg_ws_msg_end(mg_ws_msg_t *m, const char **why)
{
    int text = m->opcode == MG_WS_TEXT;
    m->opcode = 0;
    if (text && !mg_utf8_complete(&m->utf8)) {
        *why = "text message ends inside a UTF-8 character";
        return MG_WS_E_UTF8;
    }
    return 0;
}

int mg_ws_close_code_ok(int code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

int mg_ws_parse_close(const uint8_t *p, size_t n, int *code, const char **reason, size_t *reason_len,
                      const char **why)
{
    *reason = "";
    *reason_len = 0;
    if (n == 0) {
        *code = 1005; /* no status code was given */
        return 0;
    }
    if (n == 1) {
        *why = "close payload of one byte";
        return MG_WS_E_PROTOCOL;
    }
    *code = p[0] << 8 | p[1];
    if (!mg_ws_close_code_ok(*code)) {
        *why = "close code a peer may not send";
        return MG_WS_E_PROTOCOL;
    }
    mg_utf8_t u = { 0 };
    if (mg_utf8_feed(&u, p + 2, n - 2) != 0 || !mg_utf8_complete(&u)) {
        *why = "close reason is not UTF-8";
        return MG_WS_E_UTF8;
    }
    *reason = (const char *)p + 2;
    *reason_len = n - 2;
    return 0;
}

void mg_ws_accept_key(const char *key, size_t n, char out[29])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) == 1 && EVP_DigestUpdate(ctx, key, n) == 1 &&
             EVP_DigestUpdate(ctx, guid, sizeof(guid) - 1) == 1 && EVP_DigestFinal_ex(ctx, md, &mdlen) == 1;
    if (!ok || mdlen != 20)
        abort(); /* SHA-1 is in every OpenSSL build (the default provider): this cannot be */
    EVP_MD_CTX_free(ctx);
    EVP_EncodeBlock((unsigned char *)out, md, 20); /* 28 characters and a NUL */
}

void mg_ws_track(mg_ws_track_t *t, const uint8_t *p, size_t n, int from_client)
{
    while (n > 0 && !t->lost) {
        if (t->left) {
            uint64_t take = t->left < n ? t->left : n;
            t->left -= take;
            p += take;
            n -= (size_t)take;
            continue;
        }
        /* a head: whole in p, or gathered across calls in t->head */
        const uint8_t *h = p;
        size_t hn = n;
        if (t->have) {
            size_t room = (size_t)(MG_WS_MAX_HEAD - t->have), take = room < n ? room : n;
            memcpy(t->head + t->have, p, take);
            h = t->head;
            hn = t->have + take;
        }
        /* an extension the peers negotiated (permessage-deflate) sets reserved bits: boundaries stay the same */
        uint8_t plain[MG_WS_MAX_HEAD];
        size_t pn = hn < MG_WS_MAX_HEAD ? hn : MG_WS_MAX_HEAD;
        memcpy(plain, h, pn);
        plain[0] &= 0x8F;
        mg_ws_frame_t f;
        const char *why;
        int rc = mg_ws_parse_head(plain, pn, from_client, 0, &f, &why);
        if (rc < 0) {
            t->lost = 1;
            return;
        }
        if (rc == MG_WS_AGAIN) {
            if (!t->have)
                memcpy(t->head, p, n);
            t->have = (uint8_t)hn;
            return;
        }
        size_t used = (size_t)rc - t->have; /* of p */
        t->have = 0;
        p += used;
        n -= used;
        t->left = f.len;
        if (f.opcode == MG_WS_CLOSE)
            t->closed = 1;
    }
}
