/*
 * mg_ws — RFC 6455 framing without I/O: the frame-head parser, the message
 * rules (fragmentation, control frames, sizes, UTF-8 of text), close frame
 * payloads, the frame-head encoder, the handshake's accept key, and a frame
 * boundary tracker for byte tunnels. The caller owns every buffer.
 *
 * Like mg_http1, the head parser is stateless: an incomplete head (at most
 * 14 bytes) is parsed again from its start once more bytes are there, so a
 * head split across reads at any point gives the same result
 * (spec/c/test_ws.c checks every split point; spec/fuzz/fuzz_ws.c fuzzes it).
 *
 * Errors are the close codes they call for (RFC 6455 section 7.4.1):
 *   MG_WS_E_PROTOCOL (1002): reserved bits or opcode, a fragmented or long
 *     control frame, a frame masked the wrong way, a non-minimal or 2^63+
 *     length, a continuation with no message or a new message inside one, a
 *     malformed close payload;
 *   MG_WS_E_UTF8 (1007): a text message or close reason that is not UTF-8;
 *   MG_WS_E_TOO_BIG (1009): a frame over max_frame or a message over
 *     max_message.
 * `why` (a static string) says which rule was broken, for the log.
 */
#ifndef MG_WS_H
#define MG_WS_H

#include <stddef.h>
#include <stdint.h>

enum { MG_WS_CONT = 0x0, MG_WS_TEXT = 0x1, MG_WS_BINARY = 0x2, MG_WS_CLOSE = 0x8, MG_WS_PING = 0x9,
       MG_WS_PONG = 0xA };

#define MG_WS_AGAIN 0                /* the head is not complete yet */
#define MG_WS_E_PROTOCOL (-1002)
#define MG_WS_E_UTF8 (-1007)
#define MG_WS_E_TOO_BIG (-1009)

#define MG_WS_MAX_HEAD 14            /* 2 + 8 (length) + 4 (mask) */

typedef struct mg_ws_frame {
    int fin;
    int opcode;                      /* MG_WS_* */
    int masked;
    uint8_t mask[4];
    uint64_t len;                    /* payload length */
} mg_ws_frame_t;

/*
 * Parses the frame head at p[0..n). from_client: frames must be masked
 * (1) or must not be (0: frames a server sent, read by a client or a
 * tunnel). max_frame: the largest payload accepted (0: no limit; control
 * frames are at most 125 bytes whatever it says). Returns the head's size
 * (2..14), MG_WS_AGAIN, or an MG_WS_E_* code with *why set.
 */
int mg_ws_parse_head(const uint8_t *p, size_t n, int from_client, uint64_t max_frame, mg_ws_frame_t *f,
                     const char **why);

/*
 * Unmasks (or masks: the same XOR) n payload bytes in place; `offset` is how
 * many bytes of this frame's payload came before them (payloads may arrive
 * in pieces).
 */
void mg_ws_mask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t offset);

/*
 * Encodes a frame head into out (MG_WS_MAX_HEAD bytes); mask NULL: an
 * unmasked frame (a server's). Returns its size.
 */
size_t mg_ws_head(uint8_t *out, int opcode, int fin, uint64_t len, const uint8_t *mask);

/* Incremental UTF-8 validation (RFC 3629: no overlongs, no surrogates, at most U+10FFFF). */
typedef struct mg_utf8 {
    uint32_t state;                  /* 0: at a character boundary */
} mg_utf8_t;
/* Feeds n bytes; returns 0, or -1 at the first byte that cannot be UTF-8 (the state is then undefined). */
int mg_utf8_feed(mg_utf8_t *u, const uint8_t *p, size_t n);
static inline int mg_utf8_complete(const mg_utf8_t *u) { return u->state == 0; }

/*
 * The message rules over a sequence of frames from one peer: a data frame
 * starts a message (text or binary) or continues one, control frames may
 * come between fragments. Fill max_message (0: no limit) before the first
 * frame; zero the rest.
 */
typedef struct mg_ws_msg {
    uint64_t max_message;
    int opcode;                      /* the message in progress: MG_WS_TEXT/BINARY, or 0 */
    uint64_t size;                   /* its payload so far */
    mg_utf8_t utf8;
} mg_ws_msg_t;

/*
 * A frame head was parsed: does it fit the message in progress? Returns 0
 * or an MG_WS_E_* code (*why set). For a data frame it updates the message
 * (opcode, size); its payload goes through mg_ws_msg_payload, and when its
 * fin is set mg_ws_msg_end closes the message.
 */
int mg_ws_msg_frame(mg_ws_msg_t *m, const mg_ws_frame_t *f, const char **why);
/* Payload bytes (unmasked) of the current data frame: UTF-8 checked for text. 0 or MG_WS_E_UTF8. */
int mg_ws_msg_payload(mg_ws_msg_t *m, const uint8_t *p, size_t n, const char **why);
/* The frame with fin ended: 0, or MG_WS_E_UTF8 when a text message stops inside a character. */
int mg_ws_msg_end(mg_ws_msg_t *m, const char **why);

/*
 * A close frame's payload (unmasked): empty (*code = 1005, "no status"), or
 * a 2-byte code a peer may send and a UTF-8 reason. Returns 0 or an
 * MG_WS_E_* code.
 */
int mg_ws_parse_close(const uint8_t *p, size_t n, int *code, const char **reason, size_t *reason_len,
                      const char **why);
/* May an application send this close code (1000..1003, 1007..1014, 3000..4999)? */
int mg_ws_close_code_ok(int code);

/* Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + GUID)), NUL-terminated (29 bytes). */
void mg_ws_accept_key(const char *key, size_t n, char out[29]);

/*
 * Follows frame boundaries in a byte stream without keeping the payloads
 * (a tunnel that may have to add a close frame of its own at shutdown).
 * Zero it to start at a boundary. Reserved bits are ignored (an extension
 * between the peers may use them). After a head that does not parse it
 * stays `lost` (nothing is inserted into such a stream).
 */
typedef struct mg_ws_track {
    uint64_t left;                   /* payload bytes of the current frame still to come */
    uint8_t head[MG_WS_MAX_HEAD];    /* a head split across reads */
    uint8_t have;
    uint8_t lost;
    uint8_t closed;                  /* a close frame went by */
} mg_ws_track_t;
void mg_ws_track(mg_ws_track_t *t, const uint8_t *p, size_t n, int from_client);
/* Between two frames: a frame may be inserted here. */
static inline int mg_ws_track_boundary(const mg_ws_track_t *t) { return !t->lost && t->left == 0 && t->have == 0; }

#endif
