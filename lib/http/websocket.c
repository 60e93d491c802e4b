/* SPDX-License-Identifier: Apache-2.0 */
/* RFC 6455: handshake, a bounded frame parser fed from memory, and WebSocket connections on the HTTP server. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "dibba/alloc.h"
#include "dibba/log.h"
#include "dibba/websocket.h"
#include "http_private.h"
#include "server.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_KEEP_BUFFER 65536

/* ---- helpers ---- */

int dibba_utf8_valid(const char *str, size_t len) {
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0;
  while (i < len) {
    unsigned char c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t n;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      n = 1;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 2;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 3;
      cp = c & 0x07;
    } else {
      return 0;
    }
    if (len - i <= n)
      return 0;
    for (size_t k = 1; k <= n; k++) {
      if ((s[i + k] & 0xC0) != 0x80)
        return 0;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
      return 0;
    i += n + 1;
  }
  return 1;
}

int dibba_ws_accept_key(const char *key, char out[29]) {
  unsigned char raw[32], digest[SHA_DIGEST_LENGTH];
  char buf[64];
  size_t kl = key ? strlen(key) : 0;
  if (kl != 24 || key[22] != '=' || key[23] != '=')
    return -EINVAL;
  if (EVP_DecodeBlock(raw, (const unsigned char *)key, 24) != 18)
    return -EINVAL;
  memcpy(buf, key, 24);
  memcpy(buf + 24, WS_GUID, sizeof WS_GUID - 1);
  SHA1((const unsigned char *)buf, 24 + sizeof WS_GUID - 1, digest);
  EVP_EncodeBlock((unsigned char *)out, digest, SHA_DIGEST_LENGTH);
  out[28] = '\0';
  return 0;
}

/* ---- frame parser ---- */

void dibba_ws_parser_init(dibba_ws_parser_t *p, size_t max_frame, size_t max_message, int require_mask) {
  memset(p, 0, sizeof *p);
  p->max_frame = max_frame;
  p->max_message = max_message;
  p->require_mask = require_mask;
  /* lib/core's dibba_buf computes cap + 1, so keep the cap well below SIZE_MAX */
  if (p->max_message > SIZE_MAX / 2)
    p->max_message = SIZE_MAX / 2;
  if (p->max_frame > p->max_message)
    p->max_frame = p->max_message;
  dibba_buf_init(&p->msg, p->max_message);
}

void dibba_ws_parser_free(dibba_ws_parser_t *p) { dibba_buf_free(&p->msg); }

size_t dibba_ws_parser_allocated(const dibba_ws_parser_t *p) { return p->msg.alloc; }

static size_t hdr_need(const dibba_ws_parser_t *p) {
  size_t n = 2;
  unsigned l7 = p->hdr[1] & 0x7F;
  if (l7 == 126)
    n += 2;
  else if (l7 == 127)
    n += 8;
  if (p->hdr[1] & 0x80)
    n += 4;
  return n;
}

static int64_t perr(dibba_ws_parser_t *p, int code) {
  p->error = code;
  return -code;
}

static int frame_done(dibba_ws_parser_t *p) {
  int op = p->opcode;
  p->hdr_len = 0;
  if (op & 0x8)
    return p->cb ? p->cb(p, op, p->ctl, (size_t)p->payload_len) : 0;
  if (!p->fin)
    return 0;
  int mop = p->msg_opcode;
  p->msg_opcode = 0;
  if (mop == DIBBA_WS_TEXT && !dibba_utf8_valid(p->msg.data ? p->msg.data : "", p->msg.len))
    return -1007;
  int r = p->cb ? p->cb(p, mop, p->msg.data ? p->msg.data : "", p->msg.len) : 0;
  if (p->msg.alloc > WS_KEEP_BUFFER)
    dibba_buf_free(&p->msg);
  else
    dibba_buf_reset(&p->msg);
  return r;
}

int64_t dibba_ws_parser_feed(dibba_ws_parser_t *p, const char *data, size_t len) {
  size_t off = 0;
  if (p->error)
    return -p->error;
  while (off < len) {
    if (p->hdr_len < 2 || p->hdr_len < hdr_need(p)) {
      p->hdr[p->hdr_len++] = (uint8_t)data[off++];
      if (p->hdr_len == 2) {
        uint8_t b0 = p->hdr[0], b1 = p->hdr[1];
        int op = b0 & 0x0F;
        if (b0 & 0x70)
          return perr(p, 1002); /* RSV without a negotiated extension */
        if (!(op <= 2 || (op >= 8 && op <= 10)))
          return perr(p, 1002);
        if ((op & 0x8) && (!(b0 & 0x80) || (b1 & 0x7F) > 125))
          return perr(p, 1002);
        if (p->require_mask && !(b1 & 0x80))
          return perr(p, 1002);
        if (op == DIBBA_WS_CONT && p->msg_opcode == 0)
          return perr(p, 1002);
        if ((op == DIBBA_WS_TEXT || op == DIBBA_WS_BINARY) && p->msg_opcode != 0)
          return perr(p, 1002);
      }
      if (p->hdr_len < 2 || p->hdr_len < hdr_need(p))
        continue;
      /* header complete */
      uint8_t l7 = p->hdr[1] & 0x7F;
      size_t mo = 2;
      uint64_t plen = l7;
      if (l7 == 126) {
        plen = ((uint64_t)p->hdr[2] << 8) | p->hdr[3];
        mo = 4;
      } else if (l7 == 127) {
        plen = 0;
        for (int k = 0; k < 8; k++)
          plen = (plen << 8) | p->hdr[2 + k];
        mo = 10;
      }
      p->opcode = p->hdr[0] & 0x0F;
      p->fin = (p->hdr[0] & 0x80) != 0;
      p->masked = (p->hdr[1] & 0x80) != 0;
      if (p->masked)
        memcpy(p->mask, p->hdr + mo, 4);
      /* Caps before any allocation; compare without adding so a 2^63 length cannot wrap. */
      if (!(p->opcode & 0x8)) {
        if (plen > p->max_frame || plen > p->max_message - p->msg.len)
          return perr(p, 1009);
        if (p->opcode != DIBBA_WS_CONT)
          p->msg_opcode = p->opcode;
      }
      p->payload_len = plen;
      p->payload_got = 0;
      if (plen == 0) {
        int r = frame_done(p);
        if (r < 0)
          return perr(p, -r);
        if (r > 0)
          break;
      }
      continue;
    }
    /* payload */
    uint64_t left = p->payload_len - p->payload_got;
    size_t take = len - off < left ? len - off : (size_t)left;
    if (p->opcode & 0x8) {
      char *dst = p->ctl + p->payload_got;
      for (size_t k = 0; k < take; k++)
        dst[k] = (char)(data[off + k] ^ (p->masked ? p->mask[(p->payload_got + k) & 3] : 0));
    } else {
      size_t at = p->msg.len;
      if (dibba_buf_add(&p->msg, data + off, take) < 0)
        return perr(p, 1009);
      if (p->masked)
        for (size_t k = 0; k < take; k++)
          p->msg.data[at + k] ^= (char)p->mask[(p->payload_got + k) & 3];
    }
    p->payload_got += take;
    off += take;
    if (p->payload_got == p->payload_len) {
      int r = frame_done(p);
      if (r < 0)
        return perr(p, -r);
      if (r > 0)
        break;
    }
  }
  return (int64_t)off;
}

/* ---- WebSocket connections ---- */

static int has_token(const char *list, const char *tok) {
  size_t tl = strlen(tok);
  const char *p = list;
  while (p && *p) {
    while (*p == ' ' || *p == '\t' || *p == ',')
      p++;
    size_t n = strcspn(p, ", \t");
    if (n == tl && strncasecmp(p, tok, tl) == 0)
      return 1;
    p += n;
  }
  return 0;
}

int dibba__ws_check(dibba_http_req_t *req) {
  const char *up = dibba_http_req_header(req, "upgrade");
  const char *conn = dibba_http_req_header(req, "connection");
  const char *ver = dibba_http_req_header(req, "sec-websocket-version");
  const char *origin = dibba_http_req_header(req, "origin");
  char acc[29];
  if (req->method != HTTP_GET || !up || !has_token(up, "websocket") || !conn || !has_token(conn, "upgrade")) {
    dibba_http_add_header(req, "Upgrade", "websocket");
    dibba_http_add_header(req, "Sec-WebSocket-Version", "13");
    return 426;
  }
  if (ver == NULL || strcmp(ver, "13") != 0) {
    dibba_http_add_header(req, "Sec-WebSocket-Version", "13");
    return 426;
  }
  if (dibba_ws_accept_key(dibba_http_req_header(req, "sec-websocket-key"), acc) < 0)
    return 400;
  dibba_http_server_t *s = req->srv;
  if (origin && s->norigins > 0) {
    size_t i;
    for (i = 0; i < s->norigins; i++)
      if (strcmp(origin, s->origins[i]) == 0)
        break;
    if (i == s->norigins)
      return 403;
  }
  return 0;
}

int dibba__ws_accept(dibba_http_req_t *req) {
  char acc[29];
  if (dibba_ws_accept_key(dibba_http_req_header(req, "sec-websocket-key"), acc) < 0)
    return dibba_http_respond_error(req, 400, "Invalid Sec-WebSocket-Key");
  dibba_http_add_header(req, "Upgrade", "websocket");
  dibba_http_add_header(req, "Connection", "Upgrade");
  dibba_http_add_header(req, "Sec-WebSocket-Accept", acc);
  const char *proto = dibba_http_req_header(req, "sec-websocket-protocol");
  if (proto && has_token(proto, "dibba.bearer"))
    dibba_http_add_header(req, "Sec-WebSocket-Protocol", "dibba.bearer");
  return dibba_http_respond(req, 101, NULL, NULL, 0);
}

static int send_frame(dibba_ws_t *ws, int opcode, const void *data, size_t len) {
  dibba__http_conn_t *c = ws->conn;
  if (c->closing || c->shutting || c->mode != CONN_WS)
    return UV_ENOTCONN;
  uint8_t h[10];
  size_t hl;
  h[0] = (uint8_t)(0x80 | opcode);
  if (len < 126) {
    h[1] = (uint8_t)len;
    hl = 2;
  } else if (len <= 0xFFFF) {
    h[1] = 126;
    h[2] = (uint8_t)(len >> 8);
    h[3] = (uint8_t)len;
    hl = 4;
  } else {
    h[1] = 127;
    for (int k = 0; k < 8; k++)
      h[2 + k] = (uint8_t)((uint64_t)len >> (56 - 8 * k));
    hl = 10;
  }
  char *buf = dibba_xmalloc(hl + len);
  memcpy(buf, h, hl);
  if (len)
    memcpy(buf + hl, data, len);
  dibba__http_conn_write(c, NULL, 0, buf, hl + len);
  return 0;
}

static int send_close(dibba_ws_t *ws, int code, const char *reason) {
  char p[125];
  size_t n = 0;
  if (code != 1005 && code != 1006) {
    p[0] = (char)(code >> 8);
    p[1] = (char)code;
    n = 2;
    if (reason) {
      size_t rl = strnlen(reason, 123);
      memcpy(p + 2, reason, rl);
      n += rl;
    }
  }
  ws->close_sent = 1;
  return send_frame(ws, DIBBA_WS_CLOSE, p, n);
}

void dibba__ws_notify_close(dibba__http_conn_t *c, int code) {
  dibba_ws_t *ws = &c->ws;
  if (!ws->open || ws->notified)
    return;
  ws->notified = 1;
  if (ws->ops && ws->ops->on_close)
    ws->ops->on_close(ws, code, ws->ops_data);
}

static void ws_fail(dibba__http_conn_t *c, int code) {
  if (!c->ws.close_sent)
    send_close(&c->ws, code, NULL);
  dibba__ws_notify_close(c, code);
  dibba__http_conn_begin_shutdown(c);
}

static int valid_close_code(int code) {
  if (code >= 3000 && code <= 4999)
    return 1;
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014);
}

static int on_frame(dibba_ws_parser_t *p, int opcode, const char *data, size_t len) {
  dibba_ws_t *ws = p->data;
  dibba__http_conn_t *c = ws->conn;
  switch (opcode) {
  case DIBBA_WS_TEXT:
  case DIBBA_WS_BINARY:
    if (!ws->close_sent && ws->ops->on_message)
      ws->ops->on_message(ws, opcode, data, len, ws->ops_data);
    break;
  case DIBBA_WS_PING:
    if (!ws->close_sent)
      send_frame(ws, DIBBA_WS_PONG, data, len);
    break;
  case DIBBA_WS_PONG: ws->awaiting_pong = 0; break;
  case DIBBA_WS_CLOSE: {
    int code = 1005;
    ws->close_received = 1;
    if (len == 1) {
      ws_fail(c, 1002);
      return 1;
    }
    if (len >= 2) {
      code = ((unsigned char)data[0] << 8) | (unsigned char)data[1];
      if (!valid_close_code(code)) {
        ws_fail(c, 1002);
        return 1;
      }
      if (!dibba_utf8_valid(data + 2, len - 2)) {
        ws_fail(c, 1007);
        return 1;
      }
    }
    if (!ws->close_sent)
      send_close(ws, code, NULL); /* echo the peer's code */
    dibba__ws_notify_close(c, code);
    dibba__http_conn_begin_shutdown(c);
    return 1;
  }
  }
  return c->closing || c->shutting;
}

void dibba__ws_input(dibba__http_conn_t *c, const char *data, size_t len) {
  if (c->ws.close_received)
    return;
  int64_t r = dibba_ws_parser_feed(&c->ws.parser, data, len);
  if (r < 0 && !c->closing && !c->shutting)
    ws_fail(c, (int)-r);
}

void dibba__ws_start(dibba__http_conn_t *c, dibba_http_req_t *req) {
  dibba_ws_t *ws = &c->ws;
  dibba_http_server_t *s = c->srv;
  c->mode = CONN_WS;
  c->upgrade_wait = 0;
  ws->req = req;
  ws->ops = req->route->ws;
  ws->ops_data = req->route->data;
  dibba_ws_parser_init(&ws->parser, s->lim.ws_max_frame_bytes, s->lim.ws_max_message_bytes, 1);
  ws->parser.cb = on_frame;
  ws->parser.data = ws;
  ws->open = 1;
  s->nws++;
  c->parse_paused = 1;
  c->ws_open_pending = 1;
  uv_timer_stop(&c->timer);
  dibba__http_conn_update_reading(c);
  dibba__http_conn_schedule_resume(c);
}

void dibba__ws_opened(dibba__http_conn_t *c) {
  dibba_ws_t *ws = &c->ws;
  if (c->ws_open_pending) {
    c->ws_open_pending = 0;
    if (c->srv->lim.ws_ping_interval_ms)
      dibba__http_conn_arm(c, c->srv->lim.ws_ping_interval_ms);
    if (ws->ops->on_open)
      ws->ops->on_open(ws, ws->req, ws->ops_data);
  }
  if (c->closing || c->shutting)
    return;
  c->parse_paused = 0;
  size_t n = 0;
  char *data = dibba_buf_steal(&c->pending, &n);
  if (n)
    dibba__ws_input(c, data, n);
  free(data);
  dibba__http_conn_update_reading(c);
}

void dibba__ws_timer(dibba__http_conn_t *c) {
  dibba_ws_t *ws = &c->ws;
  if (ws->close_sent || ws->awaiting_pong) {
    dibba__ws_notify_close(c, 1006);
    dibba__http_conn_close(c);
    return;
  }
  ws->awaiting_pong = 1;
  send_frame(ws, DIBBA_WS_PING, "", 0);
  dibba__http_conn_arm(c, c->srv->lim.ws_ping_interval_ms);
}

/* ---- public send API ---- */

static int can_send(dibba_ws_t *ws) {
  dibba__http_conn_t *c = ws->conn;
  if (c->closing || c->shutting || ws->close_sent || c->mode != CONN_WS)
    return UV_ENOTCONN;
  if (dibba__http_conn_out_bytes(c) > c->srv->lim.write_hard_limit)
    return UV_ENOBUFS;
  return 0;
}

int dibba_ws_send_text(dibba_ws_t *ws, const char *msg, size_t len) {
  int r = can_send(ws);
  if (r < 0)
    return r;
  if (!dibba_utf8_valid(msg, len))
    return -EINVAL;
  return send_frame(ws, DIBBA_WS_TEXT, msg, len);
}

int dibba_ws_send_binary(dibba_ws_t *ws, const void *msg, size_t len) {
  int r = can_send(ws);
  if (r < 0)
    return r;
  return send_frame(ws, DIBBA_WS_BINARY, msg, len);
}

int dibba_ws_close(dibba_ws_t *ws, int code, const char *reason) {
  dibba__http_conn_t *c = ws->conn;
  if (c->closing || c->shutting || ws->close_sent || c->mode != CONN_WS)
    return UV_ENOTCONN;
  send_close(ws, code, reason);
  dibba__http_conn_arm(c, c->srv->lim.ws_close_timeout_ms);
  return 0;
}

void dibba_ws_ref(dibba_ws_t *ws) { dibba__http_conn_ref(ws->conn); }
void dibba_ws_unref(dibba_ws_t *ws) { dibba__http_conn_unref(ws->conn); }
dibba_http_req_t *dibba_ws_request(dibba_ws_t *ws) { return ws->req; }
void dibba_ws_set_data(dibba_ws_t *ws, void *data) { ws->data = data; }
void *dibba_ws_get_data(const dibba_ws_t *ws) { return ws->data; }
