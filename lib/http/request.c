/* SPDX-License-Identifier: Apache-2.0 */
/* Requests: lifetime (refcount, cancel), accessors, response writers, routing, auth and role checks. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "dibba/alloc.h"
#include "dibba/log.h"
#include "dibba/websocket.h"
#include "http_private.h"
#include "server.h"

dibba_http_req_t *dibba__http_req_new(dibba_http_server_t *srv) {
  dibba_http_req_t *r = dibba_xcalloc(1, sizeof *r);
  r->srv = srv;
  r->refs = 1;
  dibba_buf_init(&r->head, srv->lim.max_url_bytes + srv->lim.max_header_bytes + 64);
  dibba_buf_init(&r->body, srv->lim.max_body_bytes);
  dibba_buf_init(&r->extra, 16384);
  dibba_buf_init(&r->out, 0);
  return r;
}

void dibba_http_req_ref(dibba_http_req_t *req) { req->refs++; }

void dibba_http_req_unref(dibba_http_req_t *req) {
  if (req == NULL || --req->refs > 0)
    return;
  dibba_buf_free(&req->head);
  dibba_buf_free(&req->body);
  dibba_buf_free(&req->extra);
  dibba_buf_free(&req->out);
  free(req->hdrs);
  free(req->path);
  free(req->query);
  json_decref(req->json);
  for (size_t i = 0; i < req->nparams; i++)
    free(req->params[i].value);
  free(req);
}

int dibba_http_req_gone(const dibba_http_req_t *req) { return req->conn == NULL; }

void dibba_http_req_on_cancel(dibba_http_req_t *req, dibba_http_cancel_cb cb, void *data) {
  req->cancel_cb = cb;
  req->cancel_data = data;
}

const char *dibba_http_req_method(const dibba_http_req_t *req) {
  return req->headers_done ? llhttp_method_name((llhttp_method_t)req->method) : "-";
}
const char *dibba_http_req_path(const dibba_http_req_t *req) { return req->path ? req->path : ""; }
const char *dibba_http_req_query(const dibba_http_req_t *req) { return req->query ? req->query : ""; }
const char *dibba_http_req_route(const dibba_http_req_t *req) { return req->route ? req->route->pattern : NULL; }
const char *dibba_http_req_id(const dibba_http_req_t *req) { return req->id; }
const char *dibba_http_req_remote(const dibba_http_req_t *req) { return req->conn ? req->conn->remote : ""; }
dibba_http_server_t *dibba_http_req_server(const dibba_http_req_t *req) { return req->srv; }
void dibba_http_req_set_data(dibba_http_req_t *req, void *data) { req->data = data; }
void *dibba_http_req_get_data(const dibba_http_req_t *req) { return req->data; }
json_t *dibba_http_req_json(const dibba_http_req_t *req) { return req->json; }
const dibba_http_principal_t *dibba_http_req_principal(const dibba_http_req_t *req) {
  return req->authed ? &req->principal : NULL;
}

void dibba_http_req_set_subject(dibba_http_req_t *req, const char *user) {
  if (user == NULL) {
    req->subject[0] = '\0';
    return;
  }
  size_t n = strnlen(user, sizeof req->subject - 1);
  memcpy(req->subject, user, n);
  req->subject[n] = '\0';
}

const char *dibba_http_req_subject(const dibba_http_req_t *req) {
  if (req->authed)
    return req->principal.user;
  return req->subject[0] ? req->subject : NULL;
}

const char *dibba_http_req_header(const dibba_http_req_t *req, const char *name) {
  size_t nl = strlen(name);
  for (size_t i = 0; i < req->nhdrs; i++) {
    const dibba__http_hdr_t *h = &req->hdrs[i];
    if (h->name_len == nl && strcasecmp(req->head.data + h->name_off, name) == 0)
      return req->head.data + h->val_off;
  }
  return NULL;
}

const char *dibba_http_req_param(const dibba_http_req_t *req, const char *name) {
  size_t nl = strlen(name);
  for (size_t i = 0; i < req->nparams; i++) {
    const char *pn = req->params[i].name; /* "{name}" */
    if (strlen(pn) == nl + 2 && strncmp(pn + 1, name, nl) == 0)
      return req->params[i].value;
  }
  return NULL;
}

const char *dibba_http_req_body(const dibba_http_req_t *req, size_t *len) {
  if (len)
    *len = req->body.len;
  return req->body.data ? req->body.data : "";
}

size_t dibba_http_req_write_queue(const dibba_http_req_t *req) {
  return req->conn ? dibba__http_conn_out_bytes(req->conn) : 0;
}

/* ---- response head ---- */

const char *dibba__http_reason(int status) {
  switch (status) {
  case 100: return "Continue";
  case 101: return "Switching Protocols";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 304: return "Not Modified";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 417: return "Expectation Failed";
  case 422: return "Unprocessable Content";
  case 426: return "Upgrade Required";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  default: return "Unknown";
  }
}

static const char *http_date(dibba_http_server_t *s) {
  time_t now = time(NULL);
  if (now != s->date_sec) {
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(s->date, sizeof s->date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    s->date_sec = now;
  }
  return s->date;
}

static char *put(char *p, const char *s, size_t n) {
  memcpy(p, s, n);
  return p + n;
}
#define PUTS(p, lit) put(p, lit, sizeof lit - 1)

static char *put_u64(char *p, uint64_t v) {
  char tmp[24];
  int i = 0;
  do
    tmp[i++] = (char)('0' + v % 10);
  while ((v /= 10) > 0);
  while (i > 0)
    *p++ = tmp[--i];
  return p;
}

/* Request ids need to be unique, not secret: a splitmix64 stream seeded once from the kernel CSPRNG saves a
 * getrandom(2) per request on the hot path. Formatted as UUID v4 text. */
static void fast_id(char out[DIBBA_ID_LEN + 1]) {
  static uint64_t state;
  static const char hex[] = "0123456789abcdef";
  if (state == 0)
    dibba_random_bytes(&state, sizeof state);
  uint64_t w[2];
  for (int i = 0; i < 2; i++) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    w[i] = z ^ (z >> 31);
  }
  unsigned char b[16];
  memcpy(b, w, 16);
  b[6] = (unsigned char)((b[6] & 0x0F) | 0x40);
  b[8] = (unsigned char)((b[8] & 0x3F) | 0x80);
  char *o = out;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10)
      *o++ = '-';
    *o++ = hex[b[i] >> 4];
    *o++ = hex[b[i] & 15];
  }
  *o = '\0';
}

static void ensure_id(dibba_http_req_t *req) {
  if (req->id[0] == '\0')
    fast_id(req->id);
}

/* Build the status line and headers. clen: body length, -1 chunked, -2 none (1xx). Returns bytes in *out. */
static char *build_head(dibba_http_req_t *req, int status, const char *ctype, int64_t clen, size_t *outlen) {
  dibba__http_conn_t *c = req->conn;
  const char *reason = dibba__http_reason(status);
  size_t ctl = ctype ? strlen(ctype) : 0;
  size_t need = 160 + strlen(reason) + ctl + req->extra.len + 64 + DIBBA_HTTP_ID_MAX;
  char *buf = dibba_xmalloc(need), *p = buf;
  ensure_id(req);
  if (status != 101 && (!req->keep_alive || req->is_error || req->upgrade || c->srv->shutting_down || c->peer_eof))
    req->close_after = 1;
  p = PUTS(p, "HTTP/1.1 ");
  p = put_u64(p, (uint64_t)status);
  *p++ = ' ';
  p = put(p, reason, strlen(reason));
  p = PUTS(p, "\r\nDate: ");
  p = put(p, http_date(c->srv), 29);
  if (ctype) {
    p = PUTS(p, "\r\nContent-Type: ");
    p = put(p, ctype, ctl);
  }
  if (clen >= 0) {
    p = PUTS(p, "\r\nContent-Length: ");
    p = put_u64(p, (uint64_t)clen);
  } else if (clen == -1) {
    p = PUTS(p, "\r\nTransfer-Encoding: chunked");
  }
  p = PUTS(p, "\r\nX-Request-Id: ");
  p = put(p, req->id, strlen(req->id));
  if (req->close_after)
    p = PUTS(p, "\r\nConnection: close");
  p = PUTS(p, "\r\n");
  if (req->extra.len)
    p = put(p, req->extra.data, req->extra.len);
  p = PUTS(p, "\r\n");
  *outlen = (size_t)(p - buf);
  return buf;
}

static void finish(dibba_http_req_t *req) {
  dibba_http_server_t *s = req->srv;
  uint64_t dur = uv_hrtime() - req->start_ns;
  const char *pattern = req->route ? req->route->pattern : NULL;
  dibba__http_metrics_observe(s, pattern, req->headers_done ? req->method : -1, req->status, dur);
  if (s->lim.access_log && dibba_log_enabled(DIBBA_LOG_INFO)) {
    /* Built field by field with the _nocheck setters: json_pack's format parsing and UTF-8 checks of strings we
     * produced ourselves were a measurable share of a small request. The path is client bytes: checked. */
    json_t *f = json_object();
    const char *path = dibba_http_req_path(req);
    json_t *jp = json_stringn(path, strlen(path));
    json_object_set_new_nocheck(f, "method", json_string_nocheck(dibba_http_req_method(req)));
    json_object_set_new_nocheck(f, "path", jp ? jp : json_string_nocheck("(invalid UTF-8)"));
    json_object_set_new_nocheck(f, "route", pattern ? json_string(pattern) : json_null());
    json_object_set_new_nocheck(f, "status", json_integer(req->status));
    json_object_set_new_nocheck(f, "bytes", json_integer((json_int_t)req->bytes_out));
    json_object_set_new_nocheck(f, "duration_ms", json_integer((json_int_t)(dur / 1000000)));
    json_object_set_new_nocheck(f, "duration_us", json_integer((json_int_t)(dur / 1000)));
    json_object_set_new_nocheck(f, "remote", json_string_nocheck(req->conn ? req->conn->remote : ""));
    json_object_set_new_nocheck(f, "request_id", json_string_nocheck(req->id));
    if (req->authed)
      json_object_set_new_nocheck(f, "user", json_string(req->principal.user));
    dibba_log_info("http", f, "request");
  }
  if (s->response_cb)
    s->response_cb(s->response_data, req, req->status);
}

/* Queue bytes for req: straight to the socket when it is first in line, else into its pending output. */
static void emit(dibba_http_req_t *req, char *head, size_t hlen, void *body, size_t blen) {
  dibba__http_conn_t *c = req->conn;
  if (TAILQ_FIRST(&c->reqs) == req && req->out.len == 0) {
    dibba__http_conn_write(c, head, hlen, body, blen);
  } else {
    dibba_buf_add(&req->out, head, hlen);
    dibba_buf_add(&req->out, body, blen);
    c->buffered += hlen + blen;
    free(body);
  }
}

static int respond_owned(dibba_http_req_t *req, int status, const char *ctype, char *body, size_t blen) {
  if (req->state >= REQ_RESPONDED) {
    free(body);
    return -EALREADY;
  }
  if (req->conn == NULL || req->conn->closing || req->conn->shutting) {
    free(body);
    req->state = REQ_DONE;
    return UV_ENOTCONN;
  }
  size_t hlen;
  int64_t clen = status == 101 || status == 204 || status == 304 ? -2 : (int64_t)blen;
  char *head = build_head(req, status, ctype, clen, &hlen);
  req->state = REQ_DONE;
  req->status = status;
  if (req->method == HTTP_HEAD) { /* RFC 9110 9.3.2: the same head as GET (Content-Length included), no body */
    free(body);
    body = NULL;
    blen = 0;
  }
  req->bytes_out = blen;
  emit(req, head, hlen, body, blen);
  free(head);
  finish(req);
  dibba__http_conn_flush(req->conn);
  return 0;
}

int dibba_http_add_header(dibba_http_req_t *req, const char *name, const char *value) {
  if (req->state >= REQ_RESPONDED)
    return -EALREADY;
  if (name[0] == '\0' || strpbrk(name, " \t\r\n:") || strpbrk(value, "\r\n"))
    return -EINVAL;
  if (dibba_buf_printf(&req->extra, "%s: %s\r\n", name, value) < 0)
    return -E2BIG;
  return 0;
}

int dibba_http_respond(dibba_http_req_t *req, int status, const char *content_type, const void *body, size_t len) {
  char *copy = NULL;
  if (len) {
    copy = dibba_xmalloc(len);
    memcpy(copy, body, len);
  }
  return respond_owned(req, status, content_type, copy, len);
}

int dibba_http_respond_json(dibba_http_req_t *req, int status, json_t *body) {
  char *s = body ? json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
  json_decref(body);
  if (s == NULL)
    return respond_owned(req, 500, "application/json", dibba_xstrdup("{\"detail\":\"Internal Server Error\"}"), 34);
  return respond_owned(req, status, "application/json", s, strlen(s));
}

int dibba_http_respond_error(dibba_http_req_t *req, int status, const char *detail) {
  if (status == 401 && req->state < REQ_RESPONDED)
    dibba_http_add_header(req, "WWW-Authenticate", "Bearer");
  return dibba_http_respond_json(req, status,
                                 json_pack("{s:s}", "detail", detail ? detail : dibba__http_reason(status)));
}

int dibba_http_respond_422(dibba_http_req_t *req, const char *field, const char *msg, const char *type) {
  json_t *loc = json_pack("[s]", "body");
  if (field)
    json_array_append_new(loc, json_string(field));
  return dibba_http_respond_json(req, 422,
                                 json_pack("{s:[{s:o,s:s,s:s}]}", "detail", "loc", loc, "msg", msg ? msg : "invalid",
                                           "type", type ? type : "value_error"));
}

int dibba_http_respond_429(dibba_http_req_t *req, unsigned retry_after_s, const char *detail) {
  char v[16];
  snprintf(v, sizeof v, "%u", retry_after_s);
  dibba_http_add_header(req, "Retry-After", v);
  return dibba_http_respond_error(req, 429, detail ? detail : "Too Many Requests");
}

int dibba__http_respond_status(dibba_http_req_t *req, int status, const char *detail) {
  if (status == 405 && req->state < REQ_RESPONDED) {
    char allow[256] = "";
    int st = 0;
    if (dibba__http_route_match(req->srv->router, req, &st, allow, sizeof allow) == NULL && st == 405)
      dibba_http_add_header(req, "Allow", allow);
  }
  return dibba_http_respond_error(req, status, detail);
}

int dibba_http_stream_begin(dibba_http_req_t *req, int status, const char *content_type) {
  if (req->state >= REQ_RESPONDED)
    return -EALREADY;
  if (req->conn == NULL || req->conn->closing || req->conn->shutting)
    return UV_ENOTCONN;
  size_t hlen;
  char *head = build_head(req, status, content_type, -1, &hlen);
  req->state = REQ_RESPONDED;
  req->streaming = 1;
  req->status = status;
  emit(req, head, hlen, NULL, 0);
  free(head);
  return 0;
}

int dibba_http_stream_write(dibba_http_req_t *req, const void *data, size_t len) {
  if (!req->streaming || req->state != REQ_RESPONDED)
    return -EINVAL;
  if (req->conn == NULL || req->conn->closing || req->conn->shutting)
    return UV_ENOTCONN;
  if (len == 0)
    return 0;
  if (dibba__http_conn_out_bytes(req->conn) > req->srv->lim.write_hard_limit)
    return UV_ENOBUFS;
  if (req->method == HTTP_HEAD) /* the head went out; a HEAD response has no body */
    return 0;
  char *buf = dibba_xmalloc(len + 24);
  int n = snprintf(buf, 24, "%zx\r\n", len);
  memcpy(buf + n, data, len);
  memcpy(buf + n + len, "\r\n", 2);
  req->bytes_out += len;
  emit(req, NULL, 0, buf, (size_t)n + len + 2);
  return 0;
}

int dibba_http_stream_end(dibba_http_req_t *req) {
  if (!req->streaming || req->state != REQ_RESPONDED)
    return -EINVAL;
  req->state = REQ_DONE;
  if (req->conn == NULL || req->conn->closing || req->conn->shutting)
    return UV_ENOTCONN;
  if (req->method != HTTP_HEAD)
    emit(req, NULL, 0, dibba_xstrdup("0\r\n\r\n"), 5);
  finish(req);
  dibba__http_conn_flush(req->conn);
  return 0;
}

/* ---- routing, auth ---- */

static int media_is(const char *ct, const char *want) {
  size_t n = strlen(want);
  if (ct == NULL || strncasecmp(ct, want, n) != 0)
    return 0;
  return ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ';
}

static void set_request_id(dibba_http_req_t *req) {
  const char *in = dibba_http_req_header(req, "x-request-id");
  if (in) {
    size_t n = strlen(in);
    int ok = n > 0 && n <= DIBBA_HTTP_ID_MAX;
    for (size_t i = 0; ok && i < n; i++) {
      char ch = in[i];
      ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' ||
           ch == '.' || ch == ':';
    }
    if (ok) {
      memcpy(req->id, in, n + 1);
      return;
    }
  }
  fast_id(req->id);
}

int dibba__http_head_check(dibba_http_req_t *req, int expect) {
  set_request_id(req);
  char allow[256];
  int st = 0;
  req->route = dibba__http_route_match(req->srv->router, req, &st, allow, sizeof allow);
  if (req->route == NULL) {
    req->error_status = st;
    return expect ? st : 0;
  }
  int has_body = (dibba_http_req_header(req, "content-length") || dibba_http_req_header(req, "transfer-encoding"));
  const char *ct = dibba_http_req_header(req, "content-type");
  if (has_body && req->route->body == DIBBA_HTTP_BODY_JSON && !media_is(ct, "application/json"))
    req->error_status = 415;
  else if (has_body && req->route->body == DIBBA_HTTP_BODY_FORM && !media_is(ct, "application/x-www-form-urlencoded"))
    req->error_status = 415;
  return expect ? req->error_status : 0;
}

static void run_handler(dibba_http_req_t *req) {
  const dibba__http_route_t *rt = req->route;
  req->state = REQ_HANDLER;
  if (rt->ws) {
    dibba__ws_accept(req);
    return;
  }
  rt->handler(req, rt->data);
}

static void auth_finish(dibba_http_req_t *req, int status) {
  if (status == 0 && req->principal.role < req->route->role) {
    /* Known but not allowed: keep who it was for the response hook (audit), without authenticating. */
    dibba_http_req_set_subject(req, req->principal.user);
    status = 403;
  }
  if (status == 401) {
    dibba_http_respond_error(req, 401, "Not authenticated");
    return;
  }
  if (status != 0) {
    dibba_http_respond_error(req, 403, "Not enough permissions");
    return;
  }
  req->authed = 1;
  run_handler(req);
}

void dibba_http_auth_done(dibba_http_req_t *req, int status, const dibba_http_principal_t *principal) {
  if (req->state != REQ_AUTH || req->conn == NULL)
    return;
  if (status == 0 && principal)
    req->principal = *principal;
  else if (status == 0)
    status = 401;
  auth_finish(req, status);
}

static const char *bearer_token(dibba_http_req_t *req, char *buf, size_t buflen) {
  const char *a = dibba_http_req_header(req, "authorization");
  if (a && strncasecmp(a, "Bearer ", 7) == 0) {
    a += 7;
    while (*a == ' ')
      a++;
    return *a ? a : NULL;
  }
  if (req->route->ws) {
    /* Browsers cannot set headers on WebSockets: "Sec-WebSocket-Protocol: dibba.bearer, <token>". */
    const char *p = dibba_http_req_header(req, "sec-websocket-protocol");
    if (p && strncmp(p, "dibba.bearer", 12) == 0 && p[12] == ',') {
      p += 13;
      while (*p == ' ')
        p++;
      size_t n = strcspn(p, ", ");
      if (n == 0 || n >= buflen)
        return NULL;
      memcpy(buf, p, n);
      buf[n] = '\0';
      return buf;
    }
  }
  return NULL;
}

void dibba__http_dispatch(dibba_http_req_t *req) {
  const dibba__http_route_t *rt = req->route;
  dibba_http_server_t *s = req->srv;
  dibba_http_req_ref(req);
  if (req->error_status) {
    dibba__http_respond_status(req, req->error_status, NULL);
    goto out;
  }
  if (rt->body == DIBBA_HTTP_BODY_JSON && req->body.len > 0) {
    json_error_t jerr;
    req->json = json_loadb(req->body.data, req->body.len, 0, &jerr);
    if (req->json == NULL) {
      json_t *loc = json_pack("[s,i]", "body", jerr.position);
      dibba_http_respond_json(
          req, 422,
          json_pack("{s:[{s:o,s:s,s:s}]}", "detail", "loc", loc, "msg", "JSON decode error", "type", "json_invalid"));
      goto out;
    }
  } else if (rt->body == DIBBA_HTTP_BODY_JSON &&
             (req->method == HTTP_POST || req->method == HTTP_PUT || req->method == HTTP_PATCH)) {
    dibba_http_respond_422(req, NULL, "Field required", "missing");
    goto out;
  }
  if (rt->ws) {
    int st = dibba__ws_check(req);
    if (st) {
      dibba_http_respond_error(req, st,
                               st == 426   ? "WebSocket version 13 upgrade required"
                               : st == 403 ? "Origin not allowed"
                                           : "Invalid WebSocket upgrade");
      goto out;
    }
  }
  if (rt->role == DIBBA_ROLE_PUBLIC) {
    run_handler(req);
    goto out;
  }
  char tokbuf[4096];
  const char *token = bearer_token(req, tokbuf, sizeof tokbuf);
  if (s->auth_cb == NULL) {
    auth_finish(req, 401);
    goto out;
  }
  req->state = REQ_AUTH;
  int st = s->auth_cb(s->auth_data, req, token, &req->principal);
  if (st == DIBBA_HTTP_AUTH_PENDING)
    goto out;
  auth_finish(req, st == 0 ? 0 : st == 403 ? 403 : 401);
out:
  dibba_http_req_unref(req);
}
