/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for lib/http: a real server on 127.0.0.1 driven by a raw-socket client thread. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dibba/alloc.h"
#include "dibba/http.h"
#include "dibba/log.h"
#include "dibba/websocket.h"

/* ---- fixture: server on the test thread's loop, client on a thread ---- */

typedef struct ctx_s ctx_t;
typedef void (*client_fn)(ctx_t *t);

#define OUT_MAX 65536

struct ctx_s {
  uv_loop_t loop;
  uv_async_t async;
  uv_timer_t delay; /* for async handlers */
  int delay_active;
  dibba_http_req_t *delayed;
  dibba_http_router_t *router;
  dibba_http_server_t *srv;
  dibba_http_limits_t lim;
  pthread_t th;
  client_fn client;
  int port;
  /* client results */
  char out[OUT_MAX];
  size_t outlen;
  int eof;
  char out2[OUT_MAX];
  size_t out2len;
  int eof2;
  int flag;
  /* server-side observations */
  char ws_msg[256];
  int ws_msgs, ws_opened, ws_close_code;
  int cancelled;
  dibba_ws_t *ws;
  int shutdown_on_msg;
  char hook_log[2048]; /* one line per response hook call: METHOD ROUTE STATUS SUBJECT */
  size_t hook_len;
  int client_done, server_done;
};

static ctx_t *T;

/* -- client helpers (thread side) -- */

static int cconnect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static void csend(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
    if (w <= 0)
      return;
    c += w;
    n -= (size_t)w;
  }
}

/* Read until EOF/timeout; returns bytes, *eof = 1 if the peer closed (0 read or reset after data). */
static size_t cread_all(int fd, char *buf, size_t cap, int timeout_ms, int *eof) {
  size_t n = 0;
  *eof = 0;
  for (;;) {
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    if (poll(&pf, 1, timeout_ms) <= 0)
      break;
    ssize_t r = recv(fd, buf + n, cap - 1 - n, 0);
    if (r <= 0) {
      *eof = 1;
      break;
    }
    n += (size_t)r;
    if (n >= cap - 1)
      break;
  }
  buf[n] = '\0';
  return n;
}

/* Read exactly n bytes (or until timeout/EOF). */
static size_t cread_n(int fd, char *buf, size_t n, int timeout_ms) {
  size_t got = 0;
  while (got < n) {
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    if (poll(&pf, 1, timeout_ms) <= 0)
      break;
    ssize_t r = recv(fd, buf + got, n - got, 0);
    if (r <= 0)
      break;
    got += (size_t)r;
  }
  return got;
}

/* Read an HTTP head (through CRLFCRLF). */
static size_t cread_head(int fd, char *buf, size_t cap) {
  size_t n = 0;
  while (n + 1 < cap) {
    if (cread_n(fd, buf + n, 1, 3000) != 1)
      break;
    n++;
    if (n >= 4 && memcmp(buf + n - 4, "\r\n\r\n", 4) == 0)
      break;
  }
  buf[n] = '\0';
  return n;
}

/* One connection: send raw bytes, read everything until EOF (or 3 s). */
static void exchange(ctx_t *t, const char *req, size_t len) {
  int fd = cconnect(t->port);
  if (fd < 0)
    return;
  csend(fd, req, len);
  t->outlen = cread_all(fd, t->out, sizeof t->out, 3000, &t->eof);
  close(fd);
}

static size_t ws_frame(uint8_t *out, int fin, int op, const void *payload, size_t len, int masked) {
  static const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
  size_t n = 0;
  out[n++] = (uint8_t)((fin ? 0x80 : 0) | op);
  out[n++] = (uint8_t)((masked ? 0x80 : 0) | len); /* tests only use len < 126 */
  if (masked) {
    memcpy(out + n, key, 4);
    n += 4;
  }
  for (size_t i = 0; i < len; i++)
    out[n + i] = (uint8_t)(((const uint8_t *)payload)[i] ^ (masked ? key[i & 3] : 0));
  return n + len;
}

static const char ws_upgrade_fmt[] =
    "GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n";

/* Open a WebSocket; leaves the 101 head in t->out. Returns fd or -1. */
static int ws_open(ctx_t *t, const char *path, const char *extra) {
  char req[1024];
  int fd = cconnect(t->port);
  if (fd < 0)
    return -1;
  int n = snprintf(req, sizeof req, ws_upgrade_fmt, path, extra ? extra : "");
  csend(fd, req, (size_t)n);
  t->outlen = cread_head(fd, t->out, sizeof t->out);
  if (strncmp(t->out, "HTTP/1.1 101 ", 13) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* -- server side -- */

static void h_echo(dibba_http_req_t *req, void *data) {
  const char *x = dibba_http_req_param(req, "x");
  dibba_http_respond(req, 200, "text/plain", x, strlen(x));
}

static void h_body(dibba_http_req_t *req, void *data) {
  size_t n;
  const char *b = dibba_http_req_body(req, &n);
  dibba_http_respond(req, 200, "application/octet-stream", b, n);
}

static void h_json(dibba_http_req_t *req, void *data) {
  dibba_http_respond_json(req, 200, json_incref(dibba_http_req_json(req)));
}

static void h_pod(dibba_http_req_t *req, void *data) {
  dibba_http_respond_json(
      req, 200,
      json_pack("{s:s,s:s}", "ns", dibba_http_req_param(req, "ns"), "name", dibba_http_req_param(req, "name")));
}

static void h_form(dibba_http_req_t *req, void *data) {
  size_t n;
  const char *b = dibba_http_req_body(req, &n);
  json_t *f = NULL;
  if (dibba_http_parse_form(b, n, 4096, &f) < 0) {
    dibba_http_respond_error(req, 400, "bad form");
    return;
  }
  if (json_object_get(f, "username") == NULL) {
    json_decref(f);
    dibba_http_respond_422(req, "username", "Field required", "missing");
    return;
  }
  dibba_http_respond_json(req, 200, f);
}

static void h_whoami(dibba_http_req_t *req, void *data) {
  const dibba_http_principal_t *p = dibba_http_req_principal(req);
  dibba_http_respond_json(req, 200, json_pack("{s:s,s:s}", "user", p->user, "role", dibba_http_role_name(p->role)));
}

static void on_delay(uv_timer_t *tm) {
  ctx_t *t = tm->data;
  dibba_http_req_t *req = t->delayed;
  t->delayed = NULL;
  if (!dibba_http_req_gone(req))
    dibba_http_respond(req, 200, "text/plain", "slow", 4);
  dibba_http_req_unref(req);
}

static void on_cancel(dibba_http_req_t *req, void *data) { ((ctx_t *)data)->cancelled++; }

static void h_slow(dibba_http_req_t *req, void *data) {
  ctx_t *t = data;
  dibba_http_req_ref(req);
  dibba_http_req_on_cancel(req, on_cancel, t);
  t->delayed = req;
  uv_timer_start(&t->delay, on_delay, 100, 0);
}

static void h_stream(dibba_http_req_t *req, void *data) {
  dibba_http_stream_begin(req, 200, "text/plain");
  dibba_http_stream_write(req, "line1\n", 6);
  dibba_http_stream_write(req, "line2\n", 6);
  dibba_http_stream_end(req);
}

static void ws_on_open(dibba_ws_t *ws, dibba_http_req_t *req, void *data) {
  ctx_t *t = data;
  t->ws_opened++;
  t->ws = ws;
  const dibba_http_principal_t *p = dibba_http_req_principal(req);
  if (p)
    dibba_ws_send_text(ws, p->user, strlen(p->user));
}

static void on_done(dibba_http_server_t *s, void *data);

static void ws_on_message(dibba_ws_t *ws, int op, const char *msg, size_t len, void *data) {
  ctx_t *t = data;
  t->ws_msgs++;
  snprintf(t->ws_msg, sizeof t->ws_msg, "%.*s", (int)len, msg);
  if (t->shutdown_on_msg)
    dibba_http_server_shutdown(t->srv, on_done, t); /* from inside the WebSocket's own callback */
  else
    dibba_ws_send_text(ws, msg, len);
}

static void ws_on_close(dibba_ws_t *ws, int code, void *data) {
  ctx_t *t = data;
  t->ws_close_code = code;
  t->ws = NULL;
}

static const dibba_ws_ops_t ws_ops = {ws_on_open, ws_on_message, ws_on_close};

static void on_auth_timer(uv_timer_t *tm) {
  ctx_t *t = tm->data;
  dibba_http_principal_t p = {.role = DIBBA_ROLE_OPERATOR};
  snprintf(p.user, sizeof p.user, "async-user");
  dibba_http_req_t *req = t->delayed;
  t->delayed = NULL;
  dibba_http_auth_done(req, 0, &p);
  dibba_http_req_unref(req);
}

static int authenticate(void *data, dibba_http_req_t *req, const char *token, dibba_http_principal_t *out) {
  ctx_t *t = data;
  if (token == NULL)
    return 401;
  if (strcmp(token, "admin-token") == 0) {
    snprintf(out->user, sizeof out->user, "alice");
    out->role = DIBBA_ROLE_ADMIN;
    return 0;
  }
  if (strcmp(token, "viewer-token") == 0) {
    snprintf(out->user, sizeof out->user, "victor");
    out->role = DIBBA_ROLE_VIEWER;
    return 0;
  }
  if (strcmp(token, "gone-token") == 0) {
    /* A well-formed token whose user no longer exists: rejected, but the audit knows who tried. */
    dibba_http_req_set_subject(req, "ghost");
    return 401;
  }
  if (strcmp(token, "async-token") == 0) {
    dibba_http_req_ref(req);
    t->delayed = req;
    uv_timer_start(&t->delay, on_auth_timer, 20, 0);
    return DIBBA_HTTP_AUTH_PENDING;
  }
  return 401;
}

static void app_metrics(void *data, dibba_buf_t *out) { dibba_buf_adds(out, "dibba_test_reconnects_total 7\n"); }

static void on_response(void *data, dibba_http_req_t *req, int status) {
  ctx_t *t = data;
  const char *route = dibba_http_req_route(req), *who = dibba_http_req_subject(req);
  int n = snprintf(t->hook_log + t->hook_len, sizeof t->hook_log - t->hook_len, "%s %s %d %s\n",
                   dibba_http_req_method(req), route ? route : "-", status, who ? who : "-");
  if (n > 0 && (size_t)n < sizeof t->hook_log - t->hook_len)
    t->hook_len += (size_t)n;
}

static void *client_main(void *arg) {
  ctx_t *t = arg;
  t->client(t);
  __atomic_store_n(&t->client_done, 1, __ATOMIC_SEQ_CST);
  uv_async_send(&t->async);
  return NULL;
}

static void maybe_finish(ctx_t *t) {
  if (t->server_done && __atomic_load_n(&t->client_done, __ATOMIC_SEQ_CST)) {
    uv_close((uv_handle_t *)&t->async, NULL);
    uv_close((uv_handle_t *)&t->delay, NULL);
  }
}

static void on_done(dibba_http_server_t *s, void *data) {
  ctx_t *t = data;
  t->server_done = 1;
  maybe_finish(t);
}

static void on_async(uv_async_t *a) {
  ctx_t *t = a->data;
  if (!__atomic_load_n(&t->client_done, __ATOMIC_SEQ_CST))
    return;
  if (!t->server_done)
    dibba_http_server_shutdown(t->srv, on_done, t);
  maybe_finish(t);
}

static void setup_limits(dibba_http_limits_t *l) {
  dibba_http_limits_default(l);
  l->max_url_bytes = 256;
  l->max_header_bytes = 1024;
  l->max_headers = 16;
  l->max_body_bytes = 1024;
  l->read_timeout_ms = 300;
  l->ws_max_frame_bytes = 4096;
  l->ws_max_message_bytes = 8192;
  l->access_log = 1;
}

static void fixture_init(ctx_t *t) {
  memset(t, 0, sizeof *t);
  T = t;
  ck_assert_int_eq(uv_loop_init(&t->loop), 0);
  uv_async_init(&t->loop, &t->async, on_async);
  t->async.data = t;
  uv_timer_init(&t->loop, &t->delay);
  t->delay.data = t;
  setup_limits(&t->lim);
  t->router = dibba_http_router_new();
  const dibba_http_route_t routes[] = {
      {.method = "GET", .pattern = "/echo/{x}", .handler = h_echo, .summary = "echo"},
      {.method = "POST", .pattern = "/body", .handler = h_body},
      {.method = "POST",
       .pattern = "/json",
       .handler = h_json,
       .body = DIBBA_HTTP_BODY_JSON,
       .request_schema = "{\"type\":\"object\"}"},
      {.method = "POST", .pattern = "/token", .handler = h_form, .body = DIBBA_HTTP_BODY_FORM},
      {.method = "GET", .pattern = "/v1/pods/{ns}/{name}", .handler = h_pod, .role = DIBBA_ROLE_PUBLIC},
      {.method = "PUT", .pattern = "/v1/pods/{ns}/{name}/", .handler = h_pod, .role = DIBBA_ROLE_OPERATOR},
      {.method = "GET", .pattern = "/slow", .handler = h_slow, .data = t},
      {.method = "GET", .pattern = "/stream", .handler = h_stream},
      {.method = "GET", .pattern = "/secure", .handler = h_whoami, .role = DIBBA_ROLE_OPERATOR},
      {.method = "GET", .pattern = "/ws", .ws = &ws_ops, .data = t},
      {.method = "GET", .pattern = "/wss", .ws = &ws_ops, .data = t, .role = DIBBA_ROLE_VIEWER},
  };
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
    ck_assert_int_eq(dibba_http_router_add(t->router, &routes[i]), 0);
}

static void fixture_run(ctx_t *t, client_fn fn) {
  t->srv = dibba_http_server_new(&t->loop, t->router, &t->lim);
  dibba_http_route_t m = {
      .method = "GET", .pattern = "/metrics", .handler = dibba_http_metrics_handler, .data = t->srv};
  dibba_http_router_add(t->router, &m);
  dibba_http_server_set_auth(t->srv, authenticate, t);
  const char *origins[] = {"https://ok.example"};
  dibba_http_server_set_ws_origins(t->srv, origins, 1);
  dibba_http_server_set_metrics_hook(t->srv, app_metrics, t);
  dibba_http_server_set_response_hook(t->srv, on_response, t);
  ck_assert_int_eq(dibba_http_server_listen(t->srv, "127.0.0.1", 0), 0);
  t->port = dibba_http_server_port(t->srv);
  ck_assert_int_gt(t->port, 0);
  t->client = fn;
  ck_assert_int_eq(pthread_create(&t->th, NULL, client_main, t), 0);
  uv_run(&t->loop, UV_RUN_DEFAULT);
  pthread_join(t->th, NULL);
  dibba_http_server_free(t->srv);
  dibba_http_router_free(t->router);
  ck_assert_int_eq(uv_loop_close(&t->loop), 0);
}

static int status_of(const char *resp) {
  if (strncmp(resp, "HTTP/1.1 ", 9) != 0)
    return -1;
  return atoi(resp + 9);
}

/* ---- framing ---- */

static const struct {
  const char *name;
  const char *req;
  size_t len;
} bad_framing[] = {
#define B(n, s)                                                                                                        \
  { n, s, sizeof(s) - 1 }
    B("CL with TE",
      "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    B("TE with CL",
      "POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    B("two different CL", "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
    B("two equal CL", "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
    B("CL list", "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc"),
    B("bad chunk size", "POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
    B("bad chunk terminator",
      "POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n"),
    B("bare LF chunk", "POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n"),
    B("bare LF request line", "GET /echo/a HTTP/1.1\nHost: x\r\n\r\n"),
    B("bare LF header", "GET /echo/a HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n"),
    B("bare LF end of head", "GET /echo/a HTTP/1.1\r\nHost: x\r\n\n"),
    B("TE gzip, chunked", "POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
    B("TE identity", "POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n"),
    B("TE twice",
      "POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    B("no Host", "GET /echo/a HTTP/1.1\r\n\r\n"),
    B("two Host", "GET /echo/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    B("bad header name", "GET /echo/a HTTP/1.1\r\nHost: x\r\nX(A: b\r\n\r\n"),
    B("space before colon", "GET /echo/a HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n"),
    B("obs-fold", "GET /echo/a HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n"),
    B("NUL in value", "GET /echo/a HTTP/1.1\r\nHost: x\r\nX-A: b\0c\r\n\r\n"),
    B("NUL in name", "GET /echo/a HTTP/1.1\r\nHost: x\r\nX\0A: b\r\n\r\n"),
    B("absolute-form", "GET http://x/echo/a HTTP/1.1\r\nHost: x\r\n\r\n"),
#undef B
};

static int framing_idx;

static void c_framing(ctx_t *t) { exchange(t, bad_framing[framing_idx].req, bad_framing[framing_idx].len); }

START_TEST(framing_rejected) {
  ctx_t t;
  framing_idx = _i;
  fixture_init(&t);
  fixture_run(&t, c_framing);
  if (status_of(t.out) != 400 || !t.eof)
    ck_abort_msg("%s: got status %d eof %d: %s", bad_framing[_i].name, status_of(t.out), t.eof, t.out);
  ck_assert_ptr_nonnull(strstr(t.out, "Connection: close\r\n"));
  ck_assert_ptr_nonnull(strstr(t.out, "{\"detail\":"));
}
END_TEST

/* ---- pipelining, keep-alive, bodies ---- */

static void c_pipeline(ctx_t *t) {
  static const char req[] = "GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /echo/second HTTP/1.1\r\nHost: x\r\n\r\n"
                            "GET /echo/third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  exchange(t, req, sizeof req - 1);
}

START_TEST(pipelining_in_order) {
  ctx_t t;
  fixture_init(&t);
  fixture_run(&t, c_pipeline);
  const char *a = strstr(t.out, "\r\n\r\nslow");
  const char *b = strstr(t.out, "\r\n\r\nsecond");
  const char *c = strstr(t.out, "\r\n\r\nthird");
  ck_assert_msg(a && b && c && a < b && b < c, "out of order: %s", t.out);
  ck_assert_int_eq(t.eof, 1);
}
END_TEST

/* Regression: a HEAD answered by a GET route sent the body too, so the next pipelined response was read as
 * part of it. Smallest input: HEAD then GET on one connection. */
static void c_head(ctx_t *t) {
  static const char req[] = "HEAD /echo/first HTTP/1.1\r\nHost: x\r\n\r\n"
                            "GET /echo/second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  exchange(t, req, sizeof req - 1);
}

START_TEST(head_has_no_body) {
  ctx_t t;
  fixture_init(&t);
  fixture_run(&t, c_head);
  ck_assert_int_eq(status_of(t.out), 200);
  ck_assert_ptr_nonnull(strstr(t.out, "Content-Length: 5\r\n")); /* the length GET would send */
  const char *end = strstr(t.out, "\r\n\r\n");
  ck_assert_ptr_nonnull(end);
  ck_assert_msg(strncmp(end + 4, "HTTP/1.1 200", 12) == 0, "HEAD response carried a body: %s", t.out);
  ck_assert_ptr_null(strstr(t.out, "first"));
  ck_assert_ptr_nonnull(strstr(t.out, "\r\n\r\nsecond"));
}
END_TEST

static void c_chunked(ctx_t *t) {
  static const char req[] = "POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: x\r\n\r\n"
                            "GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  exchange(t, req, sizeof req - 1);
}

START_TEST(chunked_body_and_streaming) {
  ctx_t t;
  fixture_init(&t);
  fixture_run(&t, c_chunked);
  ck_assert_int_eq(status_of(t.out), 200);
  ck_assert_ptr_nonnull(strstr(t.out, "Content-Length: 11\r\n"));
  ck_assert_ptr_nonnull(strstr(t.out, "\r\n\r\nhello world"));
  ck_assert_ptr_nonnull(strstr(t.out, "Transfer-Encoding: chunked\r\n"));
  ck_assert_ptr_nonnull(strstr(t.out, "6\r\nline1\n\r\n6\r\nline2\n\r\n0\r\n\r\n"));
}
END_TEST

static void c_expect(ctx_t *t) {
  static const char head[] = "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n"
                             "Connection: close\r\n\r\n";
  int fd = cconnect(t->port);
  csend(fd, head, sizeof head - 1);
  t->out2len = cread_n(fd, t->out2, 25, 3000);
  t->out2[t->out2len] = '\0';
  csend(fd, "ping", 4);
  t->outlen = cread_all(fd, t->out, sizeof t->out, 3000, &t->eof);
  close(fd);
  /* too large: 413 without reading the body, and no 100 */
  static const char big[] = "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 99999\r\nExpect: 100-continue\r\n\r\n";
  fd = cconnect(t->port);
  csend(fd, big, sizeof big - 1);
  char tmp[4096];
  cread_all(fd, tmp, sizeof tmp, 3000, &t->eof2);
  t->flag = status_of(tmp);
  close(fd);
  /* unknown expectation */
  static const char odd[] = "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: tea\r\n\r\n";
  fd = cconnect(t->port);
  csend(fd, odd, sizeof odd - 1);
  cread_all(fd, tmp, sizeof tmp, 3000, &t->eof2);
  t->ws_close_code = status_of(tmp);
  close(fd);
}

START_TEST(expect_continue) {
  ctx_t t;
  fixture_init(&t);
  fixture_run(&t, c_expect);
  ck_assert_str_eq(t.out2, "HTTP/1.1 100 Continue\r\n\r\n");
  ck_assert_int_eq(status_of(t.out), 200);
  ck_assert_ptr_nonnull(strstr(t.out, "\r\n\r\nping"));
  ck_assert_int_eq(t.flag, 413);
  ck_assert_int_eq(t.ws_close_code, 417);
}
END_TEST

/* ---- limits ---- */

static int limit_idx;

static void c_limit(ctx_t *t) {
  char req[8192];
  int n = 0;
  switch (limit_idx) {
  case 0: {
    char path[400];
    memset(path, 'a', sizeof path - 1);
    path[sizeof path - 1] = '\0';
    n = snprintf(req, sizeof req, "GET /echo/%s HTTP/1.1\r\nHost: x\r\n\r\n", path);
    break;
  }
  case 1: {
    char v[1500];
    memset(v, 'v', sizeof v - 1);
    v[sizeof v - 1] = '\0';
    n = snprintf(req, sizeof req, "GET /echo/a HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", v);
    break;
  }
  case 2:
    n = snprintf(req, sizeof req, "GET /echo/a HTTP/1.1\r\nHost: x\r\n");
    for (int i = 0; i < 20; i++)
      n += snprintf(req + n, sizeof req - (size_t)n, "X-%d: y\r\n", i);
    n += snprintf(req + n, sizeof req - (size_t)n, "\r\n");
    break;
  case 3: n = snprintf(req, sizeof req, "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nabc"); break;
  case 4: {
    n = snprintf(req, sizeof req, "POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 3; i++) {
      n += snprintf(req + n, sizeof req - (size_t)n, "200\r\n");
      memset(req + n, 'z', 512);
      n += 512;
      n += snprintf(req + n, sizeof req - (size_t)n, "\r\n");
    }
    break;
  }
  }
  exchange(t, req, (size_t)n);
}

START_TEST(limits) {
  static const int want[] = {414, 431, 431, 413, 413};
  ctx_t t;
  limit_idx = _i;
  fixture_init(&t);
  fixture_run(&t, c_limit);
  ck_assert_msg(status_of(t.out) == want[_i], "case %d: %s", _i, t.out);
  ck_assert_int_eq(t.eof, 1);
}
END_TEST

static void c_slow(ctx_t *t) {
  int fd = cconnect(t->port);
  csend(fd, "GET /echo/a HTTP/1.1\r\nHo", 24);
  t->outlen = cread_all(fd, t->out, sizeof t->out, 3000, &t->eof);
  close(fd);
}

START_TEST(slow_header_timeout) {
  ctx_t t;
  fixture_init(&t);
  fixture_run(&t, c_slow);
  ck_assert_int_eq(status_of(t.out), 408);
  ck_assert_int_eq(t.eof, 1);
}
END_TEST

/* ---- routing ---- */

static void c_routes(ctx_t *t) {
  static const char req[] =
      "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
      "DELETE /v1/pods/a/b HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /v1/pods/team%20one/web%2F1/ HTTP/1.1\r\nHost: x\r\nX-Request-Id: req-42\r\n\r\n"
      "POST /json HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}"
      "POST /json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{\"a\":"
      "POST /json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 7\r\n\r\n"
      "{\"a\":1}"
      "POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 48\r\n\r\n"
      "username=bob+s&password=p%40ss%3D&grant_type=pas"
      "POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 5\r\n\r\n"
      "a=b&c"
      "GET /echo/x?y=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  exchange(t, req, sizeof req - 1);
}

START_TEST(routing_and_errors) {
  ctx_t t;
  fixture_init(&t);
  fixture_run(&t, c_routes);
  const char *p = t.out;
  ck_assert_int_eq(status_of(p), 404);
  ck_assert_ptr_nonnull(strstr(p, "{\"detail\":\"Not Found\"}"));
  p = strstr(p + 1, "HTTP/1.1 ");
  ck_assert_int_eq(status_of(p), 405);
  ck_assert_ptr_nonnull(strstr(p, "Allow: GET, PUT\r\n"));
  p = strstr(p + 1, "HTTP/1.1 ");
  ck_assert_int_eq(status_of(p), 200);
  ck_assert_ptr_nonnull(strstr(p, "X-Request-Id: req-42\r\n"));
  ck_assert_ptr_nonnull(strstr(p, "{\"ns\":\"team one\",\"name\":\"web/1\"}"));
  p = strstr(p + 1, "HTTP/1.1 ");
  ck_assert_int_eq(status_of(p), 415);
  p = strstr(p + 1, "HTTP/1.1 ");
  ck_assert_int_eq(status_of(p), 422);
  ck_assert_ptr_nonnull(strstr(p, "{\"detail\":[{\"loc\":[\"body\","));
  ck_assert_ptr_nonnull(strstr(p, "\"type\":\"json_invalid\""));
  p = strstr(p + 1, "HTTP/1.1 ");
  ck_assert_int_eq(status_of(p), 200);
  ck_assert_ptr_nonnull(strstr(p, "\r\n\r\n{\"a\":1}"));
  p = strstr(p + 1, "HTTP/1.1 ");
  ck_assert_int_eq(status_of(p), 200);
  ck_assert_ptr_nonnull(strstr(p, "\"username\":\"bob s\""));
  ck_assert_ptr_nonnull(strstr(p, "\"password\":\"p@ss=\""));
  p = strstr(p + 1, "HTTP/1.1 ");
  ck_assert_int_eq(status_of(p), 422);
  ck_assert_ptr_nonnull(strstr(p, "{\"detail\":[{\"loc\":[\"body\",\"username\"],\"msg\":\"Field required\""));
  p = strstr(p + 1, "HTTP/1.1 ");
  ck_assert_int_eq(status_of(p), 200);
  ck_assert_ptr_nonnull(strstr(p, "\r\n\r\nx"));
  ck_assert_int_eq(t.eof, 1);
}
END_TEST

/* ---- auth ---- */

static void c_auth(ctx_t *t) {
  static const char req[] = "GET /secure HTTP/1.1\r\nHost: x\r\n\r\n"
                            "GET /secure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer viewer-token\r\n\r\n"
                            "GET /secure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-token\r\n\r\n"
                            "GET /secure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer async-token\r\n\r\n"
                            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  exchange(t, req, sizeof req - 1);
}

START_TEST(auth_roles) {
  ctx_t t;
  fixture_init(&t);
  fixture_run(&t, c_auth);
  const char *p = t.out;
  ck_assert_int_eq(status_of(p), 401);
  ck_assert_ptr_nonnull(strstr(p, "WWW-Authenticate: Bearer\r\n"));
  p = strstr(p + 1, "HTTP/1.1 ");
  ck_assert_int_eq(status_of(p), 403);
  p = strstr(p + 1, "HTTP/1.1 ");
  ck_assert_int_eq(status_of(p), 200);
  ck_assert_ptr_nonnull(strstr(p, "{\"user\":\"alice\",\"role\":\"admin\"}"));
  p = strstr(p + 1, "HTTP/1.1 ");
  ck_assert_int_eq(status_of(p), 200);
  ck_assert_ptr_nonnull(strstr(p, "{\"user\":\"async-user\",\"role\":\"operator\"}"));
  p = strstr(p + 1, "HTTP/1.1 ");
  ck_assert_int_eq(status_of(p), 200);
  ck_assert_ptr_nonnull(strstr(p, "dibba_http_requests_total{route=\"/secure\",method=\"GET\",code=\"401\"} 1\n"));
  ck_assert_ptr_nonnull(strstr(p, "dibba_http_requests_total{route=\"/secure\",method=\"GET\",code=\"200\"} 1\n"));
  ck_assert_ptr_nonnull(
      strstr(p, "dibba_http_request_duration_seconds_bucket{route=\"/secure\",method=\"GET\",le=\"+Inf\"} 3\n"));
  ck_assert_ptr_nonnull(strstr(p, "dibba_http_open_connections 1\n"));
  ck_assert_ptr_nonnull(strstr(p, "dibba_test_reconnects_total 7\n"));
}
END_TEST

/* ---- response hook (audit) ---- */

static void c_hook(ctx_t *t) {
  static const char req[] = "PUT /v1/pods/a/b/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                            "PUT /v1/pods/a/b/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer gone-token\r\n"
                            "Content-Length: 0\r\n\r\n"
                            "PUT /v1/pods/a/b/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer viewer-token\r\n"
                            "Content-Length: 0\r\n\r\n"
                            "PUT /v1/pods/a/b/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer async-token\r\n"
                            "Content-Length: 0\r\n\r\n"
                            "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                            "GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  exchange(t, req, sizeof req - 1);
}

START_TEST(response_hook_every_response) {
  ctx_t t;
  fixture_init(&t);
  fixture_run(&t, c_hook);
  ck_assert_int_eq(t.eof, 1);
  /* Every response once, in the order they were produced (the async one last), with the final status and who it was
   * (principal, else the subject the authenticator recorded); unmatched routes and streamed responses too. */
  ck_assert_str_eq(t.hook_log, "PUT /v1/pods/{ns}/{name} 401 -\n"
                               "PUT /v1/pods/{ns}/{name} 401 ghost\n"
                               "PUT /v1/pods/{ns}/{name} 403 victor\n"
                               "GET - 404 -\n"
                               "GET /stream 200 -\n"
                               "PUT /v1/pods/{ns}/{name} 200 async-user\n");
}
END_TEST

/* ---- WebSocket ---- */

static void c_ws_fragments(ctx_t *t) {
  int fd = ws_open(t, "/ws", NULL);
  if (fd < 0)
    return;
  uint8_t f[256];
  size_t n = ws_frame(f, 0, 1, "hello", 5, 1);
  n += ws_frame(f + n, 1, 9, "", 0, 1);
  n += ws_frame(f + n, 1, 0, "world", 5, 1);
  csend(fd, f, n);
  /* pong 8A 00, then the echo of "helloworld" */
  t->out2len = cread_n(fd, t->out2, 2 + 2 + 10, 3000);
  /* a new data frame inside a fragmented message: 1002 */
  n = ws_frame(f, 0, 1, "a", 1, 1);
  n += ws_frame(f + n, 1, 1, "b", 1, 1);
  csend(fd, f, n);
  t->outlen = cread_all(fd, t->out, sizeof t->out, 3000, &t->eof);
  close(fd);
}

START_TEST(ws_fragments_ping_and_1002) {
  ctx_t t;
  fixture_init(&t);
  fixture_run(&t, c_ws_fragments);
  ck_assert_int_eq(t.ws_opened, 1);
  ck_assert_str_eq(t.ws_msg, "helloworld");
  ck_assert_int_eq(t.ws_msgs, 1);
  ck_assert_uint_eq(t.out2len, 14);
  ck_assert_int_eq((uint8_t)t.out2[0], 0x8A);
  ck_assert_int_eq((uint8_t)t.out2[1], 0x00);
  ck_assert_int_eq((uint8_t)t.out2[2], 0x81);
  ck_assert_int_eq((uint8_t)t.out2[3], 10);
  ck_assert(memcmp(t.out2 + 4, "helloworld", 10) == 0);
  ck_assert_uint_eq(t.outlen, 4);
  ck_assert(memcmp(t.out, "\x88\x02\x03\xea", 4) == 0);
  ck_assert_int_eq(t.eof, 1);
  ck_assert_int_eq(t.ws_close_code, 1002);
}
END_TEST

static int ws_case;

static void c_ws_bad(ctx_t *t) {
  int fd = ws_open(t, "/ws", "Origin: https://ok.example\r\n");
  if (fd < 0)
    return;
  uint8_t f[64];
  size_t n = 0;
  if (ws_case == 0) { /* declares 2^32 bytes */
    static const uint8_t h[] = {0x82, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4};
    memcpy(f, h, sizeof h);
    n = sizeof h;
  } else if (ws_case == 1) { /* declares 2^63 bytes */
    static const uint8_t h[] = {0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4};
    memcpy(f, h, sizeof h);
    n = sizeof h;
  } else if (ws_case == 2) {
    n = ws_frame(f, 1, 1, "hi", 2, 0); /* unmasked */
  } else if (ws_case == 3) {
    n = ws_frame(f, 1, 1, "\xc3\x28", 2, 1); /* invalid UTF-8 */
  } else if (ws_case == 4) {
    n = ws_frame(f, 1, 1, "x", 1, 1);
    f[0] |= 0x40; /* RSV1 */
  } else if (ws_case == 5) {
    n = ws_frame(f, 1, 3, "x", 1, 1); /* reserved opcode */
  } else if (ws_case == 6) {
    n = ws_frame(f, 0, 9, "", 0, 1); /* fragmented ping */
  } else if (ws_case == 7) {
    n = ws_frame(f, 1, 8,
                 "\x03\xe8"
                 "bye",
                 5, 1); /* close 1000 */
  }
  csend(fd, f, n);
  t->outlen = cread_all(fd, t->out, sizeof t->out, 3000, &t->eof);
  close(fd);
}

START_TEST(ws_protocol_errors) {
  static const int want[] = {1009, 1009, 1002, 1007, 1002, 1002, 1002, 1000};
  ctx_t t;
  ws_case = _i;
  fixture_init(&t);
  fixture_run(&t, c_ws_bad);
  ck_assert_int_eq(t.ws_opened, 1);
  ck_assert_uint_eq(t.outlen, 4);
  ck_assert_int_eq((uint8_t)t.out[0], 0x88);
  ck_assert_int_eq((uint8_t)t.out[1], 2);
  ck_assert_int_eq(((uint8_t)t.out[2] << 8) | (uint8_t)t.out[3], want[_i]);
  ck_assert_int_eq(t.eof, 1);
  ck_assert_int_eq(t.ws_close_code, want[_i]);
  ck_assert_int_eq(t.ws_msgs, 0);
}
END_TEST

static void c_ws_handshakes(ctx_t *t) {
  char req[1024];
  int n = snprintf(req, sizeof req, ws_upgrade_fmt, "/ws", "Origin: https://evil.example\r\n");
  exchange(t, req, (size_t)n);
  t->flag = status_of(t->out);
  char tmp[4096];
  size_t tl;
  n = snprintf(req, sizeof req,
               "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n");
  exchange(t, req, (size_t)n);
  memcpy(t->out2, t->out, t->outlen + 1);
  /* auth through the subprotocol, as browsers do */
  int fd = ws_open(t, "/wss", "Sec-WebSocket-Protocol: dibba.bearer, viewer-token\r\n");
  if (fd >= 0) {
    tl = cread_n(fd, tmp, 2 + 6, 3000);
    t->eof2 = tl == 8 && memcmp(tmp, "\x81\x06victor", 8) == 0;
    uint8_t f[16];
    size_t fl = ws_frame(f, 1, 8, "", 0, 1);
    csend(fd, f, fl);
    cread_all(fd, tmp, sizeof tmp, 3000, &t->eof);
    close(fd);
  }
}

START_TEST(ws_handshake_rules) {
  ctx_t t;
  char acc[29];
  ck_assert_int_eq(dibba_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", acc), 0);
  /* RFC 6455 section 1.3 (the "s3pPLMBiTxaQ9kYGzzo+xOo0YGs=" is a mistyped copy) */
  ck_assert_str_eq(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  ck_assert_int_eq(dibba_ws_accept_key("short", acc), -EINVAL);
  fixture_init(&t);
  fixture_run(&t, c_ws_handshakes);
  ck_assert_int_eq(t.flag, 403);
  ck_assert_int_eq(status_of(t.out2), 426);
  ck_assert_ptr_nonnull(strstr(t.out2, "Sec-WebSocket-Version: 13\r\n"));
  ck_assert_ptr_nonnull(strstr(t.out, "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
  ck_assert_ptr_nonnull(strstr(t.out, "Sec-WebSocket-Protocol: dibba.bearer\r\n"));
  ck_assert_int_eq(t.eof2, 1);
  ck_assert_int_eq(t.ws_close_code, 1005);
}
END_TEST

/* ---- graceful shutdown: WebSockets get 1001 ---- */

static void c_ws_shutdown(ctx_t *t) {
  int fd = ws_open(t, "/ws", NULL);
  if (fd < 0)
    return;
  uint8_t f[64];
  size_t n = ws_frame(f, 1, 1, "stop", 4, 1);
  csend(fd, f, n);
  t->outlen = cread_n(fd, t->out, 4, 3000);
  n = ws_frame(f, 1, 8, "\x03\xe9", 2, 1);
  csend(fd, f, n);
  cread_all(fd, t->out2, sizeof t->out2, 3000, &t->eof);
  close(fd);
}

START_TEST(shutdown_closes_websockets) {
  ctx_t t;
  fixture_init(&t);
  t.shutdown_on_msg = 1;
  fixture_run(&t, c_ws_shutdown);
  ck_assert_uint_eq(t.outlen, 4);
  ck_assert(memcmp(t.out, "\x88", 1) == 0);
  ck_assert_int_eq(((uint8_t)t.out[2] << 8) | (uint8_t)t.out[3], 1001);
  ck_assert_int_eq(t.eof, 1);
  ck_assert_int_eq(t.ws_close_code, 1001);
}
END_TEST

/* ---- in-memory pieces ---- */

static int frames_seen;
static int count_frames(dibba_ws_parser_t *p, int op, const char *d, size_t n) {
  frames_seen++;
  return 0;
}

START_TEST(ws_parser_no_alloc_for_huge_header) {
  dibba_ws_parser_t p;
  dibba_ws_parser_init(&p, 1 << 20, 4 << 20, 1);
  p.cb = count_frames;
  static const char h32[] = {(char)0x82, (char)0xFF, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4};
  ck_assert_int_eq(dibba_ws_parser_feed(&p, h32, sizeof h32), -1009);
  ck_assert_uint_eq(dibba_ws_parser_allocated(&p), 0);
  dibba_ws_parser_free(&p);
  dibba_ws_parser_init(&p, SIZE_MAX, SIZE_MAX, 1);
  static const char h63[] = {(char)0x82, (char)0xFF, (char)0xFF, (char)0xFF, (char)0xFF, (char)0xFF, (char)0xFF,
                             (char)0xFF, (char)0xFF, (char)0xFF, 1,          2,          3,          4};
  ck_assert_int_eq(dibba_ws_parser_feed(&p, h63, sizeof h63), -1009);
  ck_assert_uint_eq(dibba_ws_parser_allocated(&p), 0);
  dibba_ws_parser_free(&p);
  /* within the caps, only bytes that actually arrived are allocated */
  dibba_ws_parser_init(&p, 1 << 20, 4 << 20, 1);
  static const char big[] = {(char)0x82, (char)0xFE, (char)0xFF, (char)0xFF, 1, 2, 3, 4, 'a', 'b'};
  ck_assert_int_eq(dibba_ws_parser_feed(&p, big, sizeof big), (int64_t)sizeof big);
  ck_assert_uint_le(dibba_ws_parser_allocated(&p), 64);
  dibba_ws_parser_free(&p);
  dibba_ws_parser_free(&p);
  ck_assert_int_eq(frames_seen, 0);
}
END_TEST

START_TEST(utf8_and_forms) {
  const char *good = "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80";
  ck_assert(dibba_utf8_valid(good, strlen(good)));
  ck_assert(!dibba_utf8_valid("\xc0\xaf", 2));         /* overlong */
  ck_assert(!dibba_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
  ck_assert(!dibba_utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
  ck_assert(!dibba_utf8_valid("\xe2\x82", 2));         /* truncated */
  json_t *f = NULL;
  const char q[] = "grant_type=password&username=a%20b+c&scope=&password=%E2%82%AC&username=second&flag";
  ck_assert_int_eq(dibba_http_parse_form(q, sizeof q - 1, 1024, &f), 0);
  ck_assert_str_eq(json_string_value(json_object_get(f, "username")), "a b c");
  ck_assert_str_eq(json_string_value(json_object_get(f, "password")), "\xe2\x82\xac");
  ck_assert_str_eq(json_string_value(json_object_get(f, "scope")), "");
  ck_assert_str_eq(json_string_value(json_object_get(f, "flag")), "");
  json_decref(f);
  ck_assert_int_eq(dibba_http_parse_form("a=%zz", 5, 1024, &f), -EINVAL);
  ck_assert_int_eq(dibba_http_parse_form("a=%00", 5, 1024, &f), -EINVAL);
  ck_assert_int_eq(dibba_http_parse_form("a=%4", 4, 1024, &f), -EINVAL);
  ck_assert_int_eq(dibba_http_parse_form(q, sizeof q - 1, 10, &f), -E2BIG);
  ck_assert_ptr_null(f);
}
END_TEST

static void h_noop(dibba_http_req_t *req, void *data) {}

START_TEST(openapi_from_table) {
  dibba_http_router_t *r = dibba_http_router_new();
  dibba_http_route_t a = {.method = "GET",
                          .pattern = "/v1/pods/{ns}/{name}",
                          .handler = h_noop,
                          .role = DIBBA_ROLE_VIEWER,
                          .summary = "Get a pod",
                          .response_schema = "{\"type\":\"object\"}"};
  dibba_http_route_t b = {.method = "GET", .pattern = "/healthz", .handler = h_noop, .summary = "health"};
  dibba_http_route_t bad = {.method = "GET", .pattern = "/x", .handler = h_noop, .request_schema = "{"};
  ck_assert_int_eq(dibba_http_router_add(r, &a), 0);
  ck_assert_int_eq(dibba_http_router_add(r, &b), 0);
  ck_assert_int_eq(dibba_http_router_add(r, &a), -EEXIST);
  ck_assert_int_eq(dibba_http_router_add(r, &bad), -EINVAL);
  json_t *doc = dibba_http_router_openapi(r, "t", "1");
  ck_assert_str_eq(json_string_value(json_object_get(doc, "openapi")), "3.0.3");
  json_t *op = json_object_get(json_object_get(json_object_get(doc, "paths"), "/v1/pods/{ns}/{name}"), "get");
  ck_assert_ptr_nonnull(op);
  ck_assert_str_eq(json_string_value(json_object_get(op, "summary")), "Get a pod");
  json_t *params = json_object_get(op, "parameters");
  ck_assert_uint_eq(json_array_size(params), 2);
  ck_assert_str_eq(json_string_value(json_object_get(json_array_get(params, 1), "name")), "name");
  ck_assert_str_eq(json_string_value(json_object_get(json_array_get(params, 0), "in")), "path");
  ck_assert_ptr_nonnull(json_object_get(json_array_get(json_object_get(op, "security"), 0), "bearer"));
  json_t *h = json_object_get(json_object_get(json_object_get(doc, "paths"), "/healthz"), "get");
  ck_assert_ptr_null(json_object_get(h, "security"));
  ck_assert_ptr_nonnull(
      json_object_get(json_object_get(json_object_get(doc, "components"), "securitySchemes"), "bearer"));
  json_decref(doc);
  dibba_http_router_free(r);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("http");
  TCase *tc = tcase_create("server");
  tcase_set_timeout(tc, 30);
  tcase_add_loop_test(tc, framing_rejected, 0, (int)(sizeof bad_framing / sizeof bad_framing[0]));
  tcase_add_test(tc, pipelining_in_order);
  tcase_add_test(tc, head_has_no_body);
  tcase_add_test(tc, chunked_body_and_streaming);
  tcase_add_test(tc, expect_continue);
  tcase_add_loop_test(tc, limits, 0, 5);
  tcase_add_test(tc, slow_header_timeout);
  tcase_add_test(tc, routing_and_errors);
  tcase_add_test(tc, auth_roles);
  tcase_add_test(tc, response_hook_every_response);
  tcase_add_test(tc, ws_fragments_ping_and_1002);
  tcase_add_loop_test(tc, ws_protocol_errors, 0, 8);
  tcase_add_test(tc, ws_handshake_rules);
  tcase_add_test(tc, shutdown_closes_websockets);
  suite_add_tcase(s, tc);
  TCase *mem = tcase_create("memory");
  tcase_add_test(mem, ws_parser_no_alloc_for_huge_header);
  tcase_add_test(mem, utf8_and_forms);
  tcase_add_test(mem, openapi_from_table);
  suite_add_tcase(s, mem);
  return s;
}

int main(void) {
  dibba_alloc_init();
  dibba_log_open("warn", NULL);
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
