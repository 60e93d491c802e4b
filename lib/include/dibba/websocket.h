/* SPDX-License-Identifier: Apache-2.0 */
/* RFC 6455 WebSockets on dibba_http_server_t: send API, close, keepalive, and the in-memory frame parser. */
#ifndef DIBBA_WEBSOCKET_H
#define DIBBA_WEBSOCKET_H

#include <stddef.h>
#include <stdint.h>

#include "dibba/http.h"

enum {
  DIBBA_WS_CONT = 0x0,
  DIBBA_WS_TEXT = 0x1,
  DIBBA_WS_BINARY = 0x2,
  DIBBA_WS_CLOSE = 0x8,
  DIBBA_WS_PING = 0x9,
  DIBBA_WS_PONG = 0xA,
};

/* Send a text (must be valid UTF-8: -EINVAL otherwise) or binary message (copied). Returns 0, UV_ENOTCONN
 * (closing or gone), or UV_ENOBUFS when more than write_hard_limit bytes are already queued. */
int dibba_ws_send_text(dibba_ws_t *ws, const char *msg, size_t len);
int dibba_ws_send_binary(dibba_ws_t *ws, const void *msg, size_t len);
/* Start the close handshake with code and a short reason (<= 123 bytes); the peer's close or the close
 * timeout ends the connection, then on_close runs. Returns 0 or UV_ENOTCONN if already closing. */
int dibba_ws_close(dibba_ws_t *ws, int code, const char *reason);
/* Keep ws memory valid across async work (it is freed after on_close and the last unref). */
void dibba_ws_ref(dibba_ws_t *ws);
void dibba_ws_unref(dibba_ws_t *ws);
/* The upgrade request (principal, params, headers); valid as long as ws is. */
dibba_http_req_t *dibba_ws_request(dibba_ws_t *ws);
/* App pointer slot. */
void dibba_ws_set_data(dibba_ws_t *ws, void *data);
void *dibba_ws_get_data(const dibba_ws_t *ws);

/* Sec-WebSocket-Accept for a client key: base64(SHA1(key + GUID)) into out (29 bytes incl. NUL). Returns 0 or
 * -EINVAL if key is not base64 of 16 bytes. */
int dibba_ws_accept_key(const char *key, char out[29]);
/* 1 if s[0..len) is valid UTF-8 (no overlongs, surrogates or code points above U+10FFFF). */
int dibba_utf8_valid(const char *s, size_t len);

/* ---- the frame parser, fed from memory (used by the server and the fuzzer) ---- */

typedef struct dibba_ws_parser_s dibba_ws_parser_t;
/* A whole message (text/binary, reassembled) or a control frame (ping/pong/close payload). Return non-zero
 * to stop parsing (the parser returns what was consumed so far). */
typedef int (*dibba_ws_frame_cb)(dibba_ws_parser_t *p, int opcode, const char *data, size_t len);

struct dibba_ws_parser_s {
  size_t max_frame, max_message;
  int require_mask; /* server side: 1 */
  dibba_ws_frame_cb cb;
  void *data;
  /* private state */
  uint8_t hdr[14];
  size_t hdr_len;
  int opcode, fin, masked;
  uint8_t mask[4];
  uint64_t payload_len, payload_got;
  int msg_opcode; /* opcode of the message being reassembled, 0 if none */
  dibba_buf_t msg;
  char ctl[125];
  int error; /* close code after a failure, else 0 */
};

/* Prepare a parser with caps. The message buffer is only allocated as payload arrives. */
void dibba_ws_parser_init(dibba_ws_parser_t *p, size_t max_frame, size_t max_message, int require_mask);
/* Free buffers; safe to call twice. */
void dibba_ws_parser_free(dibba_ws_parser_t *p);
/* Feed bytes. Returns bytes consumed (>= 0), or a negative close code on a protocol error (-1002, -1007,
 * -1009), after which p->error holds the code and the parser must not be fed again. */
int64_t dibba_ws_parser_feed(dibba_ws_parser_t *p, const char *data, size_t len);
/* Bytes currently allocated for message reassembly (tests check that a huge declared length allocated none). */
size_t dibba_ws_parser_allocated(const dibba_ws_parser_t *p);

#endif
