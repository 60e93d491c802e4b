/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for lib/grpc: framing, status mapping, and the client against a small in-test HTTP/2 server
 * (nghttp2 server API on a unix socket in the same loop) that exercises the transport, not containerd. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>
#include <uv.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/grpc.h"
#include "version.pb-c.h"

typedef Containerd__Services__Version__V1__VersionResponse vresp_t;
#define VRESP_INIT CONTAINERD__SERVICES__VERSION__V1__VERSION_RESPONSE__INIT
#define VRESP_DESC (&containerd__services__version__v1__version_response__descriptor)

/* ---------------- framing ---------------- */

typedef struct {
  int n;
  char got[8][64];
} collect_t;

static int collect(void *data, const uint8_t *msg, size_t len) {
  collect_t *c = data;
  vresp_t *r = containerd__services__version__v1__version_response__unpack(NULL, len, msg);
  ck_assert_ptr_nonnull(r);
  ck_assert_int_lt(c->n, 8);
  snprintf(c->got[c->n++], 64, "%s/%s", r->version, r->revision);
  containerd__services__version__v1__version_response__free_unpacked(r, NULL);
  return 0;
}

static void frame_three(dibba_buf_t *b) {
  const char *v[] = {"1.6.20", "", "a-much-longer-version-string-to-cross-boundaries"};
  for (int i = 0; i < 3; i++) {
    vresp_t m = VRESP_INIT;
    m.version = (char *)v[i];
    m.revision = (char *)"r";
    ck_assert_int_eq(dibba_grpc_frame(b, &m.base, 1024), 0);
  }
}

START_TEST(frame_roundtrip_and_chunks) {
  dibba_buf_t b;
  dibba_buf_init(&b, 0);
  frame_three(&b);
  ck_assert_int_eq((unsigned char)b.data[0], 0);
  /* Every split of the buffer into two chunks, then one byte at a time. */
  for (size_t cut = 0; cut <= b.len; cut++) {
    dibba_grpc_deframer_t d;
    collect_t c = {0};
    dibba_grpc_deframer_init(&d, 0);
    ck_assert_int_eq(dibba_grpc_deframer_feed(&d, (uint8_t *)b.data, cut, collect, &c), 0);
    ck_assert_int_eq(dibba_grpc_deframer_feed(&d, (uint8_t *)b.data + cut, b.len - cut, collect, &c), 0);
    ck_assert_int_eq(c.n, 3);
    ck_assert_str_eq(c.got[0], "1.6.20/r");
    ck_assert_str_eq(c.got[1], "/r");
    ck_assert_int_eq(dibba_grpc_deframer_partial(&d), 0);
    dibba_grpc_deframer_free(&d);
  }
  dibba_grpc_deframer_t d;
  collect_t c = {0};
  dibba_grpc_deframer_init(&d, 0);
  for (size_t i = 0; i < b.len; i++) {
    ck_assert_int_eq(dibba_grpc_deframer_feed(&d, (uint8_t *)b.data + i, 1, collect, &c), 0);
    if (i + 2 == b.len)
      ck_assert_int_eq(dibba_grpc_deframer_partial(&d), 1);
  }
  ck_assert_int_eq(c.n, 3);
  ck_assert_str_eq(c.got[2], "a-much-longer-version-string-to-cross-boundaries/r");
  dibba_grpc_deframer_free(&d);
  dibba_grpc_deframer_free(&d);
  dibba_buf_free(&b);
}
END_TEST

START_TEST(frame_rejects_compressed_and_oversize) {
  dibba_grpc_deframer_t d;
  collect_t c = {0};
  const uint8_t compressed[] = {1, 0, 0, 0, 1, 0x0a};
  dibba_grpc_deframer_init(&d, 0);
  ck_assert_int_eq(dibba_grpc_deframer_feed(&d, compressed, sizeof compressed, collect, &c), -ENOTSUP);
  ck_assert_int_eq(dibba_grpc_deframer_feed(&d, compressed, 1, collect, &c), -ENOTSUP); /* stays failed */
  dibba_grpc_deframer_free(&d);
  /* 4 GiB - 1 announced: rejected from the prefix alone, nothing allocated. */
  const uint8_t huge[] = {0, 0xff, 0xff, 0xff, 0xff};
  dibba_grpc_deframer_init(&d, 0);
  ck_assert_int_eq(dibba_grpc_deframer_feed(&d, huge, sizeof huge, collect, &c), -EMSGSIZE);
  ck_assert_ptr_null(d.msg);
  dibba_grpc_deframer_free(&d);
  const uint8_t just_over[] = {0, 0, 0, 0, 11};
  dibba_grpc_deframer_init(&d, 10);
  ck_assert_int_eq(dibba_grpc_deframer_feed(&d, just_over, sizeof just_over, collect, &c), -EMSGSIZE);
  dibba_grpc_deframer_free(&d);
  ck_assert_int_eq(c.n, 0);
  /* The encoder enforces the cap too. */
  dibba_buf_t b;
  dibba_buf_init(&b, 0);
  vresp_t m = VRESP_INIT;
  m.version = (char *)"0123456789";
  ck_assert_int_eq(dibba_grpc_frame(&b, &m.base, 4), -EMSGSIZE);
  ck_assert_uint_eq(b.len, 0);
  dibba_buf_free(&b);
}
END_TEST

START_TEST(status_mapping) {
  dibba_grpc_status_t st = {0};
  dibba_grpc_status_from_headers(&st, "200", "5", "no%20such%20container%3A%20%22x%22%E2%9C%93%zz%4");
  ck_assert_int_eq(st.code, DIBBA_GRPC_NOT_FOUND);
  ck_assert_str_eq(st.message, "no such container: \"x\"\xE2\x9C\x93%zz%4");
  ck_assert_int_eq(dibba_grpc_code_to_errno(st.code), -ENOENT);
  dibba_grpc_status_from_headers(&st, "200", "0", NULL);
  ck_assert_int_eq(st.code, DIBBA_GRPC_OK);
  ck_assert_str_eq(st.message, "");
  dibba_grpc_status_from_headers(&st, "200", NULL, NULL);
  ck_assert_int_eq(st.code, DIBBA_GRPC_INTERNAL);
  dibba_grpc_status_from_headers(&st, "200", "abc", NULL);
  ck_assert_int_eq(st.code, DIBBA_GRPC_INTERNAL);
  dibba_grpc_status_from_headers(&st, "200", "99", NULL);
  ck_assert_int_eq(st.code, DIBBA_GRPC_UNKNOWN);
  dibba_grpc_status_from_headers(&st, "503", "0", NULL);
  ck_assert_int_eq(st.code, DIBBA_GRPC_UNAVAILABLE);
  dibba_grpc_status_from_headers(&st, "404", NULL, NULL);
  ck_assert_int_eq(st.code, DIBBA_GRPC_UNIMPLEMENTED);
  dibba_grpc_status_from_headers(&st, "500", NULL, NULL);
  ck_assert_int_eq(st.code, DIBBA_GRPC_UNKNOWN);
  dibba_grpc_status_free(&st);
  dibba_grpc_status_free(&st);
  ck_assert_int_eq(dibba_grpc_code_to_errno(DIBBA_GRPC_ALREADY_EXISTS), -EEXIST);
  ck_assert_int_eq(dibba_grpc_code_to_errno(DIBBA_GRPC_DEADLINE_EXCEEDED), UV_ETIMEDOUT);
  ck_assert_int_eq(dibba_grpc_code_to_errno(DIBBA_GRPC_UNAVAILABLE), UV_ECONNREFUSED);
  ck_assert_int_eq(dibba_grpc_code_to_errno(DIBBA_GRPC_INVALID_ARGUMENT), -EINVAL);
  ck_assert_int_eq(dibba_grpc_code_to_errno(DIBBA_GRPC_FAILED_PRECONDITION), -EBUSY);
  ck_assert_str_eq(dibba_grpc_code_name(DIBBA_GRPC_NOT_FOUND), "NOT_FOUND");
}
END_TEST

/* ---------------- in-test HTTP/2 server ---------------- */

typedef struct srv_s srv_t;
typedef struct sstream_s sstream_t;
typedef struct conn_s {
  srv_t *srv;
  sstream_t *streams; /* open streams, freed with the connection if still open */
  uv_pipe_t pipe;
  nghttp2_session *s;
  int closing;
  int close_after_write;
  int writes;
  struct conn_s *next;
  char rbuf[16384];
} conn_t;

struct srv_s {
  uv_loop_t *loop;
  uv_pipe_t listener;
  char path[108];
  conn_t *conns;
  int open_handles;
  int accepted;
  int resets_seen;
  uint32_t max_streams;
  char last_timeout[128];
};

struct sstream_s {
  sstream_t *prev, *next;
  char path[128];
  char ns[64];
  char timeout[32];
  dibba_buf_t body;
  dibba_buf_t out;
  size_t off;
  size_t chunk; /* bytes per DATA frame, 0: as many as fit */
  int trailer_code;
  const char *trailer_msg;
  int cut; /* 1: RST_STREAM after the data, 2: close the connection after the data */
};

static void sstream_free(conn_t *k, sstream_t *st) {
  if (st->prev)
    st->prev->next = st->next;
  else
    k->streams = st->next;
  if (st->next)
    st->next->prev = st->prev;
  dibba_buf_free(&st->body);
  dibba_buf_free(&st->out);
  free(st);
}

static void conn_flush(conn_t *k);

static void conn_closed(uv_handle_t *h) {
  conn_t *k = h->data;
  srv_t *srv = k->srv;
  for (conn_t **p = &srv->conns; *p; p = &(*p)->next)
    if (*p == k) {
      *p = k->next;
      break;
    }
  nghttp2_session_del(k->s);
  while (k->streams)
    sstream_free(k, k->streams);
  free(k);
  srv->open_handles--;
}

static void conn_close(conn_t *k) {
  if (k->closing)
    return;
  k->closing = 1;
  uv_close((uv_handle_t *)&k->pipe, conn_closed);
}

typedef struct {
  uv_write_t req;
  conn_t *k;
  char *buf;
} swrite_t;

static void conn_wrote(uv_write_t *req, int status) {
  swrite_t *w = (swrite_t *)req;
  conn_t *k = w->k;
  free(w->buf);
  free(w);
  k->writes--;
  if (k->close_after_write && k->writes == 0)
    conn_close(k);
}

static void conn_flush(conn_t *k) {
  if (k->closing)
    return;
  dibba_buf_t b;
  dibba_buf_init(&b, 0);
  for (;;) {
    const uint8_t *p;
    ssize_t n = nghttp2_session_mem_send(k->s, &p);
    ck_assert_int_ge(n, 0);
    if (n == 0)
      break;
    dibba_buf_add(&b, p, (size_t)n);
  }
  if (b.len == 0) {
    dibba_buf_free(&b);
    if (k->close_after_write && k->writes == 0)
      conn_close(k);
    return;
  }
  swrite_t *w = dibba_xcalloc(1, sizeof *w);
  w->k = k;
  size_t len;
  w->buf = dibba_buf_steal(&b, &len);
  uv_buf_t ub = uv_buf_init(w->buf, (unsigned)len);
  k->writes++;
  ck_assert_int_eq(uv_write(&w->req, (uv_stream_t *)&k->pipe, &ub, 1, conn_wrote), 0);
}

static ssize_t srv_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                        nghttp2_data_source *src, void *user) {
  sstream_t *st = src->ptr;
  conn_t *k = user;
  size_t n = st->out.len - st->off;
  if (n > length)
    n = length;
  if (st->chunk && n > st->chunk)
    n = st->chunk;
  memcpy(buf, st->out.data + st->off, n);
  st->off += n;
  if (st->off == st->out.len) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (st->cut == 1) {
      *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, id, NGHTTP2_INTERNAL_ERROR);
    } else if (st->cut == 2) {
      *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      k->close_after_write = 1;
    } else if (st->trailer_code >= 0) {
      char code[16];
      snprintf(code, sizeof code, "%d", st->trailer_code);
      nghttp2_nv tr[2] = {
          {(uint8_t *)"grpc-status", (uint8_t *)code, 11, strlen(code), NGHTTP2_NV_FLAG_NONE},
          {(uint8_t *)"grpc-message", (uint8_t *)(st->trailer_msg ? st->trailer_msg : ""), 12,
           st->trailer_msg ? strlen(st->trailer_msg) : 0, NGHTTP2_NV_FLAG_NONE},
      };
      *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      nghttp2_submit_trailer(s, id, tr, 2);
    }
  }
  return (ssize_t)n;
}

static void add_msg(sstream_t *st, const char *version, const char *revision) {
  vresp_t m = VRESP_INIT;
  m.version = (char *)version;
  m.revision = (char *)revision;
  ck_assert_int_eq(dibba_grpc_frame(&st->out, &m.base, 1 << 20), 0);
}

#define HDR(n, v)                                                                                                      \
  { (uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v), NGHTTP2_NV_FLAG_NONE }

static int collect_body(void *data, const uint8_t *msg, size_t len) {
  dibba_buf_t *acc = data;
  vresp_t *r = containerd__services__version__v1__version_response__unpack(NULL, len, msg);
  ck_assert_ptr_nonnull(r);
  dibba_buf_adds(acc, r->version);
  containerd__services__version__v1__version_response__free_unpacked(r, NULL);
  return 0;
}

static void respond(conn_t *k, int32_t id, sstream_t *st) {
  const char *m = strrchr(st->path, '/');
  m = m ? m + 1 : "";
  st->trailer_code = 0;
  nghttp2_nv ok[] = {HDR(":status", "200"), HDR("content-type", "application/grpc")};
  nghttp2_data_provider prd = {.source.ptr = st, .read_callback = srv_read};
  if (!strcmp(m, "Unary")) {
    char v[128];
    snprintf(v, sizeof v, "echo:%s", st->ns);
    add_msg(st, v, st->timeout);
  } else if (!strcmp(m, "Stream")) {
    add_msg(st, "m0", "x");
    add_msg(st, "m1", "");
    add_msg(st, "m2", "a longer revision string that spans several tiny DATA frames");
    st->chunk = 3;
  } else if (!strcmp(m, "NotFound")) {
    nghttp2_nv h[] = {HDR(":status", "200"), HDR("content-type", "application/grpc"), HDR("grpc-status", "5"),
                      HDR("grpc-message", "no%20such%20container%3A%20%22x%22")};
    nghttp2_submit_response(k->s, id, h, 4, NULL);
    return;
  } else if (!strcmp(m, "ErrTrailers")) {
    add_msg(st, "partial", "");
    st->trailer_code = 6;
    st->trailer_msg = "already%20exists";
  } else if (!strcmp(m, "Http503")) {
    nghttp2_nv h[] = {HDR(":status", "503"), HDR("content-type", "text/plain")};
    nghttp2_submit_response(k->s, id, h, 2, NULL);
    return;
  } else if (!strcmp(m, "NoStatus")) {
    add_msg(st, "orphan", "");
    st->trailer_code = -1;
  } else if (!strcmp(m, "Cut") || !strcmp(m, "CutConn")) {
    add_msg(st, "whole", "");
    add_msg(st, "never-delivered", "");
    st->out.len -= 4; /* a message cut short */
    st->chunk = 7;
    st->cut = !strcmp(m, "Cut") ? 1 : 2;
  } else if (!strcmp(m, "Compressed")) {
    add_msg(st, "zipped", "");
    st->out.data[0] = 1;
  } else if (!strcmp(m, "Collect")) {
    dibba_grpc_deframer_t d;
    dibba_buf_t acc;
    dibba_buf_init(&acc, 0);
    dibba_grpc_deframer_init(&d, 0);
    ck_assert_int_eq(dibba_grpc_deframer_feed(&d, (uint8_t *)st->body.data, st->body.len, collect_body, &acc), 0);
    dibba_grpc_deframer_free(&d);
    add_msg(st, acc.data ? acc.data : "", "");
    dibba_buf_free(&acc);
  } else if (!strcmp(m, "Slow")) {
    return; /* never answers */
  } else {
    nghttp2_nv h[] = {HDR(":status", "200"), HDR("content-type", "application/grpc"), HDR("grpc-status", "12")};
    nghttp2_submit_response(k->s, id, h, 3, NULL);
    return;
  }
  nghttp2_submit_response(k->s, id, ok, 2, &prd);
}

static int srv_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *user) {
  if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
    conn_t *k = user;
    sstream_t *st = dibba_xcalloc(1, sizeof *st);
    st->next = k->streams;
    if (k->streams)
      k->streams->prev = st;
    k->streams = st;
    dibba_buf_init(&st->body, 0);
    dibba_buf_init(&st->out, 0);
    nghttp2_session_set_stream_user_data(s, f->hd.stream_id, st);
  }
  return 0;
}

static int srv_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t namelen,
                      const uint8_t *value, size_t valuelen, uint8_t flags, void *user) {
  sstream_t *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
  conn_t *k = user;
  if (!st)
    return 0;
  char *dst = NULL;
  size_t cap = 0;
  if (namelen == 5 && !memcmp(name, ":path", 5))
    dst = st->path, cap = sizeof st->path;
  else if (namelen == 20 && !memcmp(name, "containerd-namespace", 20))
    dst = st->ns, cap = sizeof st->ns;
  else if (namelen == 12 && !memcmp(name, "grpc-timeout", 12))
    dst = st->timeout, cap = sizeof st->timeout;
  if (dst) {
    snprintf(dst, cap, "%.*s", (int)valuelen, value);
    if (dst == st->timeout)
      snprintf(k->srv->last_timeout, sizeof k->srv->last_timeout, "%s", st->timeout);
  }
  return 0;
}

static int srv_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *user) {
  sstream_t *st = nghttp2_session_get_stream_user_data(s, id);
  if (st)
    dibba_buf_add(&st->body, data, len);
  return 0;
}

static int srv_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *user) {
  conn_t *k = user;
  if (f->hd.type == NGHTTP2_RST_STREAM)
    k->srv->resets_seen++;
  if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) && (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
    sstream_t *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (st)
      respond(k, f->hd.stream_id, st);
  }
  return 0;
}

static int srv_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *user) {
  sstream_t *st = nghttp2_session_get_stream_user_data(s, id);
  if (st)
    sstream_free(user, st);
  return 0;
}

static void srv_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  conn_t *k = h->data;
  *b = uv_buf_init(k->rbuf, sizeof k->rbuf);
}

static void srv_on_read(uv_stream_t *h, ssize_t n, const uv_buf_t *b) {
  conn_t *k = h->data;
  if (n < 0) {
    conn_close(k);
    return;
  }
  if (nghttp2_session_mem_recv(k->s, (uint8_t *)b->base, (size_t)n) < 0) {
    conn_close(k);
    return;
  }
  conn_flush(k);
}

static void srv_on_conn(uv_stream_t *l, int status) {
  srv_t *srv = l->data;
  ck_assert_int_eq(status, 0);
  conn_t *k = dibba_xcalloc(1, sizeof *k);
  k->srv = srv;
  uv_pipe_init(srv->loop, &k->pipe, 0);
  k->pipe.data = k;
  srv->open_handles++;
  ck_assert_int_eq(uv_accept(l, (uv_stream_t *)&k->pipe), 0);
  k->next = srv->conns;
  srv->conns = k;
  srv->accepted++;
  nghttp2_session_callbacks *cbs;
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, srv_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, srv_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, srv_data);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, srv_frame_recv);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, srv_stream_close);
  ck_assert_int_eq(nghttp2_session_server_new(&k->s, cbs, k), 0);
  nghttp2_session_callbacks_del(cbs);
  nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, srv->max_streams}};
  nghttp2_submit_settings(k->s, NGHTTP2_FLAG_NONE, iv, 1);
  uv_read_start((uv_stream_t *)&k->pipe, srv_alloc, srv_on_read);
  conn_flush(k);
}

static void srv_listener_closed(uv_handle_t *h) {
  srv_t *srv = h->data;
  srv->open_handles--;
}

static void srv_start(uv_loop_t *loop, srv_t *srv, uint32_t max_streams) {
  memset(srv, 0, sizeof *srv);
  srv->loop = loop;
  srv->max_streams = max_streams ? max_streams : 100;
  snprintf(srv->path, sizeof srv->path, "/tmp/dibba-grpc-test-%d.sock", (int)getpid());
  unlink(srv->path);
  ck_assert_int_eq(uv_pipe_init(loop, &srv->listener, 0), 0);
  srv->listener.data = srv;
  srv->open_handles = 1;
  ck_assert_int_eq(uv_pipe_bind(&srv->listener, srv->path), 0);
  ck_assert_int_eq(uv_listen((uv_stream_t *)&srv->listener, 16, srv_on_conn), 0);
}

static void srv_stop(srv_t *srv) {
  for (conn_t *k = srv->conns; k; k = k->next)
    conn_close(k);
  uv_close((uv_handle_t *)&srv->listener, srv_listener_closed);
  unlink(srv->path);
}

/* ---------------- client harness ---------------- */

typedef struct {
  int done;
  int err;
  dibba_grpc_code_t code;
  char message[256];
  char version[256];
  char revision[256];
  int messages;
  char streamed[4][128];
  int ready;
  int failures;
  int closed;
} result_t;

static void on_done(dibba_grpc_call_t *call, int err, const dibba_grpc_status_t *st, ProtobufCMessage *resp,
                    void *data) {
  result_t *r = data;
  r->done++;
  r->err = err;
  r->code = st->code;
  snprintf(r->message, sizeof r->message, "%s", st->message);
  if (resp) {
    vresp_t *v = (vresp_t *)resp;
    snprintf(r->version, sizeof r->version, "%s", v->version);
    snprintf(r->revision, sizeof r->revision, "%s", v->revision);
  }
}

static void on_message(dibba_grpc_call_t *call, ProtobufCMessage *msg, void *data) {
  result_t *r = data;
  vresp_t *v = (vresp_t *)msg;
  if (r->messages < 4)
    snprintf(r->streamed[r->messages], 128, "%s", v->version);
  r->messages++;
}

static void on_state(dibba_grpc_client_t *c, dibba_grpc_state_t state, int err, void *data) {
  result_t *r = data;
  if (state == DIBBA_GRPC_READY)
    r->ready++;
  if (state == DIBBA_GRPC_TRANSIENT_FAILURE)
    r->failures++;
}

static void on_client_closed(dibba_grpc_client_t *c, void *data) { ((result_t *)data)->closed = 1; }

static void tick(uv_timer_t *t) {}

/* Run the loop until *flag >= want or ms pass; a ticking timer keeps the loop from blocking forever. */
static int run_until(uv_loop_t *loop, const int *flag, int want, uint64_t ms) {
  uv_timer_t t;
  uv_timer_init(loop, &t);
  uv_timer_start(&t, tick, 10, 10);
  uint64_t end = uv_now(loop) + ms;
  while (*flag < want && uv_now(loop) < end)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  return *flag >= want;
}

typedef struct {
  uv_loop_t loop;
  srv_t srv;
  dibba_grpc_client_t *c;
  result_t state;
} env_t;

static void env_up(env_t *e, uint32_t max_streams) {
  memset(e, 0, sizeof *e);
  ck_assert_int_eq(uv_loop_init(&e->loop), 0);
  srv_start(&e->loop, &e->srv, max_streams);
  char addr[160];
  snprintf(addr, sizeof addr, "unix://%s", e->srv.path);
  dibba_grpc_client_opts_t o = {.address = addr, .state_cb = on_state, .data = &e->state, .backoff_initial_ms = 20};
  ck_assert_int_eq(dibba_grpc_client_new(&e->loop, &o, &e->c), 0);
}

static void env_down(env_t *e) {
  if (!e->state.closed) {
    dibba_grpc_client_close(e->c, on_client_closed, &e->state);
    dibba_grpc_client_close(e->c, on_client_closed, &e->state); /* twice is fine */
  }
  ck_assert(run_until(&e->loop, &e->state.closed, 1, 5000));
  srv_stop(&e->srv);
  uv_run(&e->loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(e->srv.open_handles, 0);
  ck_assert_int_eq(uv_loop_close(&e->loop), 0);
}

static void call(env_t *e, const char *method, uint64_t timeout_ms, int streaming, result_t *r) {
  char path[64];
  snprintf(path, sizeof path, "/test.T/%s", method);
  dibba_grpc_md_t md[] = {{"containerd-namespace", "dibba-test"}};
  dibba_grpc_call_opts_t o = {.path = path,
                              .response_desc = VRESP_DESC,
                              .metadata = md,
                              .n_metadata = 1,
                              .timeout_ms = timeout_ms,
                              .on_message = streaming ? on_message : NULL,
                              .on_done = on_done,
                              .data = r};
  vresp_t req = VRESP_INIT;
  ck_assert_int_eq(dibba_grpc_call_start(e->c, &o, &req.base, NULL), 0);
}

START_TEST(client_unary_metadata_and_timeout_header) {
  env_t e;
  env_up(&e, 0);
  result_t r = {0};
  call(&e, "Unary", 30000, 0, &r);
  ck_assert(run_until(&e.loop, &r.done, 1, 5000));
  ck_assert_int_eq(r.err, 0);
  ck_assert_int_eq(r.code, DIBBA_GRPC_OK);
  ck_assert_str_eq(r.version, "echo:dibba-test");
  ck_assert_int_eq(r.revision[strlen(r.revision) - 1], 'm'); /* grpc-timeout in milliseconds */
  ck_assert_int_le(atoi(r.revision), 30000);
  ck_assert_int_ge(atoi(r.revision), 25000);
  ck_assert_int_eq(e.state.ready, 1);
  env_down(&e);
}
END_TEST

START_TEST(client_status_paths) {
  env_t e;
  env_up(&e, 0);
  struct {
    const char *method;
    dibba_grpc_code_t code;
    int err;
    const char *msg;
  } cases[] = {
      {"NotFound", DIBBA_GRPC_NOT_FOUND, -ENOENT, "no such container: \"x\""},
      {"ErrTrailers", DIBBA_GRPC_ALREADY_EXISTS, -EEXIST, "already exists"},
      {"Http503", DIBBA_GRPC_UNAVAILABLE, UV_ECONNREFUSED, NULL},
      {"NoStatus", DIBBA_GRPC_INTERNAL, DIBBA_EPROTO, NULL},
      {"Compressed", DIBBA_GRPC_INTERNAL, DIBBA_EPROTO, NULL},
      {"Missing", DIBBA_GRPC_UNIMPLEMENTED, -ENOSYS, NULL},
  };
  result_t r[6] = {0};
  for (int i = 0; i < 6; i++)
    call(&e, cases[i].method, 0, 0, &r[i]);
  for (int i = 0; i < 6; i++) {
    ck_assert(run_until(&e.loop, &r[i].done, 1, 5000));
    ck_assert_msg(r[i].code == cases[i].code, "%s: got %s (%s)", cases[i].method, dibba_grpc_code_name(r[i].code),
                  r[i].message);
    ck_assert_int_eq(r[i].err, cases[i].err);
    ck_assert_str_eq(r[i].version, ""); /* no response on error */
    if (cases[i].msg)
      ck_assert_str_eq(r[i].message, cases[i].msg);
  }
  env_down(&e);
}
END_TEST

START_TEST(client_server_stream_in_tiny_frames) {
  env_t e;
  env_up(&e, 0);
  result_t r = {0};
  call(&e, "Stream", 0, 1, &r);
  ck_assert(run_until(&e.loop, &r.done, 1, 5000));
  ck_assert_int_eq(r.code, DIBBA_GRPC_OK);
  ck_assert_int_eq(r.messages, 3);
  ck_assert_str_eq(r.streamed[0], "m0");
  ck_assert_str_eq(r.streamed[2], "m2");
  env_down(&e);
}
END_TEST

START_TEST(client_stream_cut_mid_message) {
  env_t e;
  env_up(&e, 0);
  result_t r = {0};
  call(&e, "Cut", 0, 1, &r);
  ck_assert(run_until(&e.loop, &r.done, 1, 5000));
  ck_assert_int_eq(r.messages, 1); /* the whole one; never the half one */
  ck_assert_str_eq(r.streamed[0], "whole");
  ck_assert_int_eq(r.code, DIBBA_GRPC_INTERNAL);
  ck_assert_ptr_nonnull(strstr(r.message, "inside a message"));
  /* Connection cut with a partial message: UNAVAILABLE, then the client reconnects by itself. */
  result_t r2 = {0};
  call(&e, "CutConn", 0, 1, &r2);
  ck_assert(run_until(&e.loop, &r2.done, 1, 5000));
  ck_assert_int_eq(r2.messages, 1);
  ck_assert_int_eq(r2.code, DIBBA_GRPC_UNAVAILABLE);
  ck_assert_int_eq(r2.err, UV_ECONNREFUSED);
  ck_assert(run_until(&e.loop, &e.state.ready, 2, 5000));
  ck_assert_int_ge(e.state.failures, 1);
  result_t r3 = {0};
  call(&e, "Unary", 0, 0, &r3);
  ck_assert(run_until(&e.loop, &r3.done, 1, 5000));
  ck_assert_int_eq(r3.code, DIBBA_GRPC_OK);
  ck_assert_int_eq(e.srv.accepted, 2);
  env_down(&e);
}
END_TEST

START_TEST(client_deadline_and_cancel) {
  env_t e;
  env_up(&e, 0);
  result_t r = {0}, rc = {0};
  call(&e, "Slow", 100, 0, &r);
  ck_assert(run_until(&e.loop, &r.done, 1, 5000));
  ck_assert_int_eq(r.code, DIBBA_GRPC_DEADLINE_EXCEEDED);
  ck_assert_int_eq(r.err, UV_ETIMEDOUT);
  ck_assert(run_until(&e.loop, &e.srv.resets_seen, 1, 2000)); /* RST_STREAM(CANCEL) reached the server */
  dibba_grpc_call_opts_t o = {.path = "/test.T/Slow", .response_desc = VRESP_DESC, .on_done = on_done, .data = &rc};
  vresp_t req = VRESP_INIT;
  dibba_grpc_call_t *cl;
  ck_assert_int_eq(dibba_grpc_call_start(e.c, &o, &req.base, &cl), 0);
  run_until(&e.loop, &rc.done, 1, 50);
  dibba_grpc_call_cancel(cl);
  ck_assert_int_eq(rc.done, 0); /* never from inside cancel */
  ck_assert(run_until(&e.loop, &rc.done, 1, 2000));
  ck_assert_int_eq(rc.code, DIBBA_GRPC_CANCELLED);
  ck_assert(run_until(&e.loop, &e.srv.resets_seen, 2, 2000));
  env_down(&e);
}
END_TEST

START_TEST(client_many_calls_beyond_stream_limit) {
  env_t e;
  env_up(&e, 5); /* the server allows 5 concurrent streams: the rest queue */
  result_t r[50];
  memset(r, 0, sizeof r);
  for (int i = 0; i < 50; i++)
    call(&e, i % 2 ? "Unary" : "Stream", 10000, i % 2 == 0, &r[i]);
  for (int i = 0; i < 50; i++) {
    ck_assert(run_until(&e.loop, &r[i].done, 1, 10000));
    ck_assert_int_eq(r[i].code, DIBBA_GRPC_OK);
    ck_assert_int_eq(r[i].messages, i % 2 == 0 ? 3 : 0);
  }
  ck_assert_uint_eq(dibba_grpc_client_calls(e.c), 0);
  env_down(&e);
}
END_TEST

START_TEST(client_stream_send_and_close_while_busy) {
  env_t e;
  env_up(&e, 0);
  result_t r = {0}, slow = {0};
  dibba_grpc_call_opts_t o = {
      .path = "/test.T/Collect", .response_desc = VRESP_DESC, .on_done = on_done, .client_stream = 1, .data = &r};
  dibba_grpc_call_t *cl;
  ck_assert_int_eq(dibba_grpc_call_start(e.c, &o, NULL, &cl), 0);
  const char *parts[] = {"a", "bb", "ccc"};
  for (int i = 0; i < 3; i++) {
    vresp_t m = VRESP_INIT;
    m.version = (char *)parts[i];
    ck_assert_int_eq(dibba_grpc_call_send(cl, &m.base), 0);
    run_until(&e.loop, &r.done, 1, 20);
  }
  ck_assert_int_eq(dibba_grpc_call_close_send(cl), 0);
  vresp_t m = VRESP_INIT;
  ck_assert_int_eq(dibba_grpc_call_send(cl, &m.base), -EPIPE);
  ck_assert(run_until(&e.loop, &r.done, 1, 5000));
  ck_assert_int_eq(r.code, DIBBA_GRPC_OK);
  ck_assert_str_eq(r.version, "abbccc");
  /* Closing with a call in flight finishes it with CANCELLED. */
  call(&e, "Slow", 0, 0, &slow);
  run_until(&e.loop, &slow.done, 1, 50);
  dibba_grpc_client_close(e.c, on_client_closed, &e.state);
  ck_assert_int_eq(dibba_grpc_call_start(e.c, &o, &m.base, NULL), -ESHUTDOWN);
  ck_assert(run_until(&e.loop, &slow.done, 1, 2000));
  ck_assert_int_eq(slow.code, DIBBA_GRPC_CANCELLED);
  env_down(&e);
}
END_TEST

START_TEST(client_no_server_then_server) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  result_t st = {0}, r = {0};
  char path[128], addr[160];
  snprintf(path, sizeof path, "/tmp/dibba-grpc-test-%d.sock", (int)getpid());
  unlink(path);
  snprintf(addr, sizeof addr, "%s", path); /* a bare path works too */
  dibba_grpc_client_t *c;
  dibba_grpc_client_opts_t o = {.address = addr, .state_cb = on_state, .data = &st, .backoff_initial_ms = 10};
  ck_assert_int_eq(dibba_grpc_client_new(&loop, &o, &c), 0);
  dibba_grpc_call_opts_t co = {.path = "/test.T/Unary", .response_desc = VRESP_DESC, .on_done = on_done, .data = &r};
  vresp_t req = VRESP_INIT;
  ck_assert_int_eq(dibba_grpc_call_start(c, &co, &req.base, NULL), 0); /* queued while connecting */
  ck_assert(run_until(&loop, &r.done, 1, 2000));
  ck_assert_int_eq(r.code, DIBBA_GRPC_UNAVAILABLE);
  ck_assert(run_until(&loop, &st.failures, 2, 2000)); /* keeps retrying with backoff */
  srv_t srv;
  srv_start(&loop, &srv, 0);
  ck_assert(run_until(&loop, &st.ready, 1, 3000));
  memset(&r, 0, sizeof r);
  ck_assert_int_eq(dibba_grpc_call_start(c, &co, &req.base, NULL), 0);
  ck_assert(run_until(&loop, &r.done, 1, 2000));
  ck_assert_int_eq(r.code, DIBBA_GRPC_OK);
  dibba_grpc_client_close(c, on_client_closed, &st);
  ck_assert(run_until(&loop, &st.closed, 1, 2000));
  srv_stop(&srv);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  dibba_grpc_client_opts_t bad = {.address = "unix://"};
  ck_assert_int_eq(dibba_grpc_client_new(&loop, &bad, &c), -EINVAL);
}
END_TEST

int main(void) {
  dibba_alloc_init();
  Suite *s = suite_create("grpc");
  TCase *tc = tcase_create("framing");
  tcase_add_test(tc, frame_roundtrip_and_chunks);
  tcase_add_test(tc, frame_rejects_compressed_and_oversize);
  tcase_add_test(tc, status_mapping);
  suite_add_tcase(s, tc);
  TCase *tl = tcase_create("client");
  tcase_set_timeout(tl, 60);
  tcase_add_test(tl, client_unary_metadata_and_timeout_header);
  tcase_add_test(tl, client_status_paths);
  tcase_add_test(tl, client_server_stream_in_tiny_frames);
  tcase_add_test(tl, client_stream_cut_mid_message);
  tcase_add_test(tl, client_deadline_and_cancel);
  tcase_add_test(tl, client_many_calls_beyond_stream_limit);
  tcase_add_test(tl, client_stream_send_and_close_while_busy);
  tcase_add_test(tl, client_no_server_then_server);
  suite_add_tcase(s, tl);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
