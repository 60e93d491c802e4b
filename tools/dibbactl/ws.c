/* SPDX-License-Identifier: Apache-2.0 */
/* A small blocking RFC 6455 client for dibbactl: libcurl connects (TCP or TLS) in CONNECT_ONLY mode, this file
 * does the upgrade, masks every frame it sends, answers pings and closes, and caps what it reads. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "dibba/alloc.h"
#include "dibba/buf.h"
#include "dibba/websocket.h"
#include "ctl.h"

#define HEAD_MAX 16384
#define IO_TIMEOUT_MS 15000

struct ctl_ws_s {
  CURL *h;
  curl_socket_t fd;
  dibba_ws_parser_t parser;
  dibba_buf_t in; /* bytes received, not yet fed */
  char *msg;      /* the last text message */
  size_t msg_len;
  int have_msg;
  int closed; /* the server's close frame arrived */
  int close_code;
  char reason[124];
};

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int wait_fd(curl_socket_t fd, short ev, int timeout_ms) {
  struct pollfd p = {.fd = fd, .events = ev};
  for (;;) {
    int r = poll(&p, 1, timeout_ms);
    if (r < 0 && errno == EINTR)
      continue;
    return r;
  }
}

static int send_all(ctl_ws_t *ws, const void *data, size_t len) {
  const char *p = data;
  while (len > 0) {
    size_t n = 0;
    CURLcode cr = curl_easy_send(ws->h, p, len, &n);
    if (cr == CURLE_AGAIN) {
      if (wait_fd(ws->fd, POLLOUT, IO_TIMEOUT_MS) <= 0)
        return -ETIMEDOUT;
      continue;
    }
    if (cr != CURLE_OK)
      return -EIO;
    p += n;
    len -= n;
  }
  return 0;
}

/* Read what is there into ws->in, waiting up to timeout_ms (-1 forever). 1: got bytes, 0: EOF, -ETIMEDOUT,
 * -EIO, -E2BIG. TLS may hold decrypted bytes the socket no longer shows: recv first, poll only on EAGAIN. */
static int recv_some(ctl_ws_t *ws, int timeout_ms) {
  int64_t deadline = timeout_ms < 0 ? -1 : mono_ms() + timeout_ms;
  for (;;) {
    char buf[16384];
    size_t n = 0;
    CURLcode cr = curl_easy_recv(ws->h, buf, sizeof buf, &n);
    if (cr == CURLE_OK) {
      if (n == 0)
        return 0;
      if (dibba_buf_add(&ws->in, buf, n) < 0)
        return -E2BIG;
      return 1;
    }
    if (cr != CURLE_AGAIN)
      return -EIO;
    int wait = -1;
    if (deadline >= 0) {
      int64_t left = deadline - mono_ms();
      if (left <= 0)
        return -ETIMEDOUT;
      wait = left > 60000 ? 60000 : (int)left;
    }
    int r = wait_fd(ws->fd, POLLIN, wait);
    if (r < 0)
      return -EIO;
  }
}

static int send_frame(ctl_ws_t *ws, int opcode, const void *payload, size_t len) {
  uint8_t hdr[14], mask[4];
  size_t h = 0;
  hdr[h++] = (uint8_t)(0x80 | opcode);
  if (len < 126) {
    hdr[h++] = (uint8_t)(0x80 | len);
  } else if (len <= 0xFFFF) {
    hdr[h++] = 0x80 | 126;
    hdr[h++] = (uint8_t)(len >> 8);
    hdr[h++] = (uint8_t)len;
  } else {
    hdr[h++] = 0x80 | 127;
    for (int k = 7; k >= 0; k--)
      hdr[h++] = (uint8_t)((uint64_t)len >> (8 * k));
  }
  /* RFC 6455 5.3: a fresh, unpredictable mask per frame. */
  if (getrandom(mask, sizeof mask, 0) != (ssize_t)sizeof mask)
    return -EIO;
  memcpy(hdr + h, mask, 4);
  h += 4;
  char *buf = dibba_xmalloc(h + len);
  memcpy(buf, hdr, h);
  for (size_t i = 0; i < len; i++)
    buf[h + i] = (char)(((const uint8_t *)payload)[i] ^ mask[i & 3]);
  int r = send_all(ws, buf, h + len);
  free(buf);
  return r;
}

static int on_frame(dibba_ws_parser_t *p, int opcode, const char *data, size_t len) {
  ctl_ws_t *ws = p->data;
  switch (opcode) {
  case DIBBA_WS_TEXT:
    free(ws->msg);
    ws->msg = dibba_xstrndup(data, len);
    ws->msg_len = len;
    ws->have_msg = 1;
    return 1;                     /* hand it to the caller before parsing on */
  case DIBBA_WS_BINARY: return 0; /* not part of the watch protocol */
  case DIBBA_WS_PING: (void)send_frame(ws, DIBBA_WS_PONG, data, len); return 0;
  case DIBBA_WS_PONG: return 0;
  case DIBBA_WS_CLOSE:
    ws->closed = 1;
    ws->close_code = len >= 2 ? ((uint8_t)data[0] << 8) | (uint8_t)data[1] : 1005;
    if (len > 2)
      snprintf(ws->reason, sizeof ws->reason, "%.*s", (int)(len - 2), data + 2);
    /* Echo the code back (5.5.1), then the server closes the TCP connection. */
    (void)send_frame(ws, DIBBA_WS_CLOSE, data, len >= 2 ? 2 : 0);
    return 1;
  default: return 0;
  }
}

/* Host[:port] and path prefix of the server URL, for the request line and Host header. */
static int url_parts(const char *server, char **hostport, char **prefix) {
  CURLU *u = curl_url();
  char *host = NULL, *port = NULL, *path = NULL;
  int rc = -EINVAL;
  if (u == NULL)
    dibba_oom(64);
  if (curl_url_set(u, CURLUPART_URL, server, 0) != CURLUE_OK || curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
    goto out;
  (void)curl_url_get(u, CURLUPART_PORT, &port, 0);
  (void)curl_url_get(u, CURLUPART_PATH, &path, 0);
  *hostport = port ? dibba_xasprintf("%s:%s", host, port) : dibba_xstrdup(host);
  size_t pl = path ? strlen(path) : 0;
  while (pl > 0 && path[pl - 1] == '/')
    pl--;
  *prefix = dibba_xstrndup(path ? path : "", pl);
  rc = 0;
out:
  curl_free(host);
  curl_free(port);
  curl_free(path);
  curl_url_cleanup(u);
  return rc;
}

/* Status and one header of a response head (NUL-terminated, CRLF lines). */
static long head_status(const char *head) {
  long st = 0;
  if (sscanf(head, "HTTP/1.%*d %ld", &st) != 1)
    return 0;
  return st;
}

static int head_header(const char *head, const char *name, char *out, size_t len) {
  size_t nl = strlen(name);
  for (const char *l = strstr(head, "\r\n"); l; l = strstr(l, "\r\n")) {
    l += 2;
    if (strncasecmp(l, name, nl) == 0 && l[nl] == ':') {
      const char *v = l + nl + 1;
      while (*v == ' ' || *v == '\t')
        v++;
      size_t n = strcspn(v, "\r\n");
      while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
      snprintf(out, len, "%.*s", (int)n, v);
      return 0;
    }
  }
  return -1;
}

int ctl_ws_open(ctl_t *c, const char *path, ctl_ws_t **out) {
  char *hostport = NULL, *prefix = NULL, *req = NULL;
  unsigned char raw[16];
  char key[25], accept[29], got[64];
  int rc = 0;
  *out = NULL;
  if ((rc = ctl_need_token(c)) != 0)
    return rc;
  if (url_parts(c->server, &hostport, &prefix) < 0)
    return ctl_fail(CTL_EUSAGE, "server %s: not a usable URL", c->server);
  ctl_ws_t *ws = dibba_xcalloc(1, sizeof *ws);
  dibba_buf_init(&ws->in, CTL_WS_MESSAGE_MAX + HEAD_MAX);
  dibba_ws_parser_init(&ws->parser, CTL_WS_MESSAGE_MAX, CTL_WS_MESSAGE_MAX, 0);
  ws->parser.cb = on_frame;
  ws->parser.data = ws;
  ws->h = curl_easy_init();
  if (ws->h == NULL) {
    rc = ctl_fail(CTL_EFAIL, "libcurl: cannot create a handle");
    goto fail;
  }
  curl_easy_setopt(ws->h, CURLOPT_URL, c->server);
  curl_easy_setopt(ws->h, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(ws->h, CURLOPT_CONNECT_ONLY, 1L);
  /* The upgrade is HTTP/1.1: over TLS, ALPN must not settle on h2. */
  curl_easy_setopt(ws->h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
  curl_easy_setopt(ws->h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(ws->h, CURLOPT_CONNECTTIMEOUT, 10L);
  CURLcode cr = curl_easy_perform(ws->h);
  if (cr != CURLE_OK) {
    rc = ctl_fail(CTL_EUNAVAIL, "cannot reach %s: %s", c->server, curl_easy_strerror(cr));
    goto fail;
  }
  if (curl_easy_getinfo(ws->h, CURLINFO_ACTIVESOCKET, &ws->fd) != CURLE_OK || ws->fd == CURL_SOCKET_BAD) {
    rc = ctl_fail(CTL_EUNAVAIL, "cannot reach %s: no socket", c->server);
    goto fail;
  }
  if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) {
    rc = ctl_fail(CTL_EFAIL, "getrandom: %s", strerror(errno));
    goto fail;
  }
  EVP_EncodeBlock((unsigned char *)key, raw, sizeof raw);
  if (dibba_ws_accept_key(key, accept) < 0) {
    rc = ctl_fail(CTL_EFAIL, "WebSocket key: internal error");
    goto fail;
  }
  req = dibba_xasprintf("GET %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: dibbactl\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                        "Authorization: Bearer %s\r\n\r\n",
                        prefix, path, hostport, key, c->token);
  int r = send_all(ws, req, strlen(req));
  explicit_bzero(req, strlen(req));
  if (r < 0) {
    rc = ctl_fail(CTL_EUNAVAIL, "%s: sending the WebSocket upgrade failed", c->server);
    goto fail;
  }
  /* The response head. */
  char *end = NULL;
  while ((end = ws->in.data ? memmem(ws->in.data, ws->in.len, "\r\n\r\n", 4) : NULL) == NULL) {
    if (ws->in.len > HEAD_MAX) {
      rc = ctl_fail(CTL_EFAIL, "%s: the WebSocket response head is larger than %d bytes", c->server, HEAD_MAX);
      goto fail;
    }
    r = recv_some(ws, IO_TIMEOUT_MS);
    if (r <= 0) {
      rc = ctl_fail(CTL_EUNAVAIL, "%s: %s during the WebSocket upgrade", c->server,
                    r == 0            ? "connection closed"
                    : r == -ETIMEDOUT ? "timed out"
                                      : "read error");
      goto fail;
    }
  }
  /* Frames may follow the head in the same read; only the head must be text. */
  if (memchr(ws->in.data, '\0', (size_t)(end - ws->in.data))) {
    rc = ctl_fail(CTL_EFAIL, "%s: a NUL byte in the WebSocket response head", c->server);
    goto fail;
  }
  size_t head_len = (size_t)(end - ws->in.data) + 4;
  char *head = dibba_xstrndup(ws->in.data, head_len);
  long st = head_status(head);
  if (st != 101) {
    /* An HTTP error instead of an upgrade: read its (small) body for the detail, then map it like any call. */
    char cl[32] = "";
    ctl_resp_t resp = {.status = st};
    size_t want = 0;
    if (head_header(head, "Content-Length", cl, sizeof cl) == 0)
      want = strtoul(cl, NULL, 10);
    if (want > 65536)
      want = 65536;
    while (ws->in.len - head_len < want && recv_some(ws, IO_TIMEOUT_MS) > 0) {
    }
    size_t blen = ws->in.len - head_len < want ? ws->in.len - head_len : want;
    resp.body = dibba_xstrndup(ws->in.data + head_len, blen);
    resp.len = blen;
    resp.json = json_loadb(resp.body, blen, 0, NULL);
    free(head);
    rc = st ? ctl_resp_check(c, &resp, "GET", path, "watch") : 0;
    if (rc == 0)
      rc = ctl_fail(CTL_EFAIL, "%s: the server did not upgrade to a WebSocket (HTTP %ld)", c->server, st);
    ctl_resp_free(&resp);
    goto fail;
  }
  if (head_header(head, "Sec-WebSocket-Accept", got, sizeof got) < 0 || strcmp(got, accept) != 0) {
    free(head);
    rc = ctl_fail(CTL_EFAIL, "%s: bad Sec-WebSocket-Accept in the upgrade response", c->server);
    goto fail;
  }
  free(head);
  dibba_buf_consume(&ws->in, head_len);
  *out = ws;
  goto out;
fail:
  ctl_ws_close(ws);
out:
  if (req)
    free(req);
  free(hostport);
  free(prefix);
  return rc;
}

int ctl_ws_next(ctl_ws_t *ws, int timeout_ms, const char **msg, size_t *len, int *close_code, char *reason,
                size_t reasonlen) {
  int64_t deadline = timeout_ms < 0 ? -1 : mono_ms() + timeout_ms;
  ws->have_msg = 0;
  for (;;) {
    if (ws->in.len > 0 && !ws->closed) {
      int64_t used = dibba_ws_parser_feed(&ws->parser, ws->in.data, ws->in.len);
      if (used < 0) {
        int code = (int)-used;
        const char payload[2] = {(char)(code >> 8), (char)(code & 0xff)};
        (void)send_frame(ws, DIBBA_WS_CLOSE, payload, sizeof payload);
        return -ctl_fail(CTL_EFAIL, "WebSocket protocol error from the server (close code %d)", code);
      }
      dibba_buf_consume(&ws->in, (size_t)used);
    }
    if (ws->have_msg) {
      *msg = ws->msg;
      *len = ws->msg_len;
      return 1;
    }
    if (ws->closed) {
      *close_code = ws->close_code;
      snprintf(reason, reasonlen, "%s", ws->reason);
      return 0;
    }
    int wait = -1;
    if (deadline >= 0) {
      int64_t left = deadline - mono_ms();
      if (left <= 0)
        return -ETIMEDOUT;
      wait = (int)left;
    }
    int r = recv_some(ws, wait);
    if (r == -ETIMEDOUT)
      return -ETIMEDOUT;
    if (r == 0) {
      *close_code = 1006; /* closed without a close frame */
      reason[0] = '\0';
      return 0;
    }
    if (r < 0)
      return -ctl_fail(CTL_EUNAVAIL, "the WebSocket connection failed: %s",
                       r == -E2BIG ? "a message over the size cap" : "read error");
  }
}

void ctl_ws_close(ctl_ws_t *ws) {
  if (ws == NULL)
    return;
  if (ws->h)
    curl_easy_cleanup(ws->h);
  dibba_ws_parser_free(&ws->parser);
  dibba_buf_free(&ws->in);
  free(ws->msg);
  free(ws);
}
