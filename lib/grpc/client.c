/* SPDX-License-Identifier: Apache-2.0 */
/* The gRPC client: one HTTP/2 connection (nghttp2, h2c prior knowledge) on a uv_pipe_t, calls, deadlines,
 * reconnects with backoff. nghttp2 is fed from uv_read and drained into uv_write; it never blocks. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include <nghttp2/nghttp2.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/grpc.h"
#include "dibba/log.h"

#define READ_BUF_SIZE (64 * 1024)
#define WRITE_BATCH (64 * 1024) /* at most this (plus one frame) is handed to one uv_write */
#define CONN_WINDOW (16 * 1024 * 1024)
#define MAX_HEADER_VALUE (3 * DIBBA_GRPC_MAX_STATUS_MESSAGE)

typedef enum { CALL_QUEUED, CALL_ACTIVE, CALL_DONE } call_state_t;

struct dibba_grpc_call_s {
  dibba_grpc_client_t *client;
  dibba_grpc_call_t *prev, *next; /* in client->calls (queued/active) or client->completed */
  call_state_t state;
  char *path;
  char **md; /* name, value, name, value, ... */
  size_t n_md;
  const ProtobufCMessageDescriptor *desc;
  dibba_grpc_message_cb on_message;
  dibba_grpc_done_cb on_done;
  void *data;
  uint64_t timeout_ms;
  uint64_t deadline; /* loop time in ms, 0: none */
  int32_t stream_id;
  dibba_buf_t out; /* framed request bytes not yet given to nghttp2, from out_off */
  size_t out_off;
  int send_closed;
  int client_stream; /* request bytes are dropped once sent, so the call cannot be retried */
  int retries;
  int deferred;
  dibba_grpc_deframer_t deframer;
  char *http_status;
  char *grpc_status;
  char *grpc_message;
  int bad_content_type;
  int in_message_cb;
  ProtobufCMessage *resp; /* unary response */
  int extra_messages;
  dibba_grpc_status_t status;
};

typedef struct call_list_s {
  dibba_grpc_call_t *head, *tail;
  size_t n;
} call_list_t;

struct dibba_grpc_client_s {
  uv_loop_t *loop;
  uv_pipe_t pipe;
  uv_connect_t connect_req;
  uv_write_t write_req;
  uv_timer_t reconnect_timer;
  uv_timer_t deadline_timer;
  uv_idle_t idle;
  int pipe_active;  /* pipe initialised and its close callback not yet run */
  int pipe_closing; /* uv_close called on the pipe */
  int writing;
  dibba_buf_t wbuf;
  char rbuf[READ_BUF_SIZE];
  nghttp2_session *session;
  dibba_grpc_state_t state;
  char *path;
  char *authority;
  size_t max_message;
  uint32_t initial_window;
  uint64_t backoff_initial, backoff_max, backoff_cur;
  dibba_grpc_state_cb state_cb;
  void *data;
  dibba_grpc_close_cb close_cb;
  void *close_data;
  int closing;
  int handles_closed;
  int handles_pending;
  int in_cb;
  int want_disconnect;
  call_list_t calls;
  call_list_t completed;
};

static void *pb_alloc(void *data, size_t n) { return dibba_xmalloc(n); }
static void pb_free(void *data, void *p) { free(p); }
static ProtobufCAllocator pb_allocator = {pb_alloc, pb_free, NULL};

static void flush(dibba_grpc_client_t *c);
static void on_idle(uv_idle_t *h);
static void disconnect(dibba_grpc_client_t *c, int err);
static void start_connect(dibba_grpc_client_t *c);
static void arm_deadlines(dibba_grpc_client_t *c);

static void list_push(call_list_t *l, dibba_grpc_call_t *call) {
  call->next = NULL;
  call->prev = l->tail;
  if (l->tail)
    l->tail->next = call;
  else
    l->head = call;
  l->tail = call;
  l->n++;
}

static void list_remove(call_list_t *l, dibba_grpc_call_t *call) {
  if (call->prev)
    call->prev->next = call->next;
  else
    l->head = call->next;
  if (call->next)
    call->next->prev = call->prev;
  else
    l->tail = call->prev;
  call->prev = call->next = NULL;
  l->n--;
}

static void set_state(dibba_grpc_client_t *c, dibba_grpc_state_t st, int err) {
  c->state = st;
  if (c->state_cb && !c->closing)
    c->state_cb(c, st, err, c->data);
}

static void call_free(dibba_grpc_call_t *call) {
  free(call->path);
  for (size_t i = 0; i < call->n_md * 2; i++)
    free(call->md[i]);
  free(call->md);
  dibba_buf_free(&call->out);
  dibba_grpc_deframer_free(&call->deframer);
  free(call->http_status);
  free(call->grpc_status);
  free(call->grpc_message);
  if (call->resp)
    protobuf_c_message_free_unpacked(call->resp, &pb_allocator);
  dibba_grpc_status_free(&call->status);
  free(call);
}

/* Finish a call: it leaves the active list and its done callback runs from the idle handle. */
static void complete(dibba_grpc_call_t *call, dibba_grpc_code_t code, const char *msg) {
  dibba_grpc_client_t *c = call->client;
  if (call->state == CALL_DONE)
    return;
  if (call->stream_id > 0 && c->session)
    nghttp2_session_set_stream_user_data(c->session, call->stream_id, NULL);
  call->state = CALL_DONE;
  dibba_grpc_status_set(&call->status, code, msg);
  if (code != DIBBA_GRPC_OK && call->resp) {
    protobuf_c_message_free_unpacked(call->resp, &pb_allocator);
    call->resp = NULL;
  }
  dibba_grpc_deframer_free(&call->deframer);
  list_remove(&c->calls, call);
  list_push(&c->completed, call);
  uv_idle_start(&c->idle, on_idle);
}

/* Complete a call whose stream is open: reset the stream too. */
static void abort_call(dibba_grpc_call_t *call, dibba_grpc_code_t code, const char *msg) {
  dibba_grpc_client_t *c = call->client;
  if (call->state == CALL_ACTIVE && call->stream_id > 0 && c->session)
    nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, call->stream_id, NGHTTP2_CANCEL);
  complete(call, code, msg);
}

static void close_all(dibba_grpc_client_t *c);

static void on_idle(uv_idle_t *h) {
  dibba_grpc_client_t *c = h->data;
  dibba_grpc_call_t *call;
  while ((call = c->completed.head)) {
    list_remove(&c->completed, call);
    int err = dibba_grpc_code_to_errno(call->status.code);
    ProtobufCMessage *resp = call->status.code == DIBBA_GRPC_OK && !call->on_message ? call->resp : NULL;
    call->on_done(call, err, &call->status, resp, call->data);
    call_free(call);
  }
  uv_idle_stop(&c->idle);
  if (c->closing)
    close_all(c);
  else
    flush(c);
}

/* --- nghttp2 callbacks --- */

static ssize_t read_request(nghttp2_session *s, int32_t stream_id, uint8_t *buf, size_t length, uint32_t *flags,
                            nghttp2_data_source *source, void *user_data) {
  dibba_grpc_call_t *call = nghttp2_session_get_stream_user_data(s, stream_id);
  if (!call) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    return 0;
  }
  size_t avail = call->out.len - call->out_off;
  size_t n = avail < length ? avail : length;
  if (n)
    memcpy(buf, call->out.data + call->out_off, n);
  call->out_off += n;
  if (call->out_off == call->out.len) {
    if (call->client_stream) {
      dibba_buf_reset(&call->out);
      call->out_off = 0;
    }
    if (call->send_closed) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
    } else if (n == 0) {
      call->deferred = 1;
      return NGHTTP2_ERR_DEFERRED;
    }
  }
  return (ssize_t)n;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data) {
  if (frame->hd.type != NGHTTP2_HEADERS)
    return 0;
  dibba_grpc_call_t *call = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
  if (!call || valuelen > MAX_HEADER_VALUE)
    return 0;
  char **slot = NULL;
  if (frame->headers.cat == NGHTTP2_HCAT_RESPONSE && namelen == 7 && !memcmp(name, ":status", 7)) {
    slot = &call->http_status;
  } else if (frame->headers.cat == NGHTTP2_HCAT_RESPONSE && namelen == 12 && !memcmp(name, "content-type", 12)) {
    call->bad_content_type = !(valuelen >= 16 && !memcmp(value, "application/grpc", 16) &&
                               (valuelen == 16 || value[16] == '+' || value[16] == ';'));
  } else if (namelen == 11 && !memcmp(name, "grpc-status", 11)) {
    slot = &call->grpc_status;
  } else if (namelen == 12 && !memcmp(name, "grpc-message", 12)) {
    slot = &call->grpc_message;
  }
  if (slot) {
    free(*slot);
    *slot = dibba_xstrndup((const char *)value, valuelen);
  }
  return 0;
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *frame, void *user_data) {
  dibba_grpc_call_t *call = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
  /* A 1xx response is followed by the real one: forget its :status. */
  if (call && frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_RESPONSE) {
    free(call->http_status);
    call->http_status = NULL;
  }
  return 0;
}

static int deliver(void *data, const uint8_t *bytes, size_t len) {
  dibba_grpc_call_t *call = data;
  ProtobufCMessage *msg = protobuf_c_message_unpack(call->desc, &pb_allocator, len, bytes);
  if (!msg)
    return -EBADMSG;
  if (call->on_message) {
    call->in_message_cb = 1;
    call->on_message(call, msg, call->data);
    call->in_message_cb = 0;
    protobuf_c_message_free_unpacked(msg, &pb_allocator);
    return call->state == CALL_DONE ? 1 : 0; /* cancelled from the callback: stop */
  }
  if (call->resp) {
    protobuf_c_message_free_unpacked(msg, &pb_allocator);
    call->extra_messages = 1;
    return -EPROTO;
  }
  call->resp = msg;
  return 0;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t stream_id, const uint8_t *data, size_t len,
                         void *user_data) {
  nghttp2_session_consume(s, stream_id, len);
  dibba_grpc_call_t *call = nghttp2_session_get_stream_user_data(s, stream_id);
  if (!call || call->state != CALL_ACTIVE)
    return 0;
  int rc = dibba_grpc_deframer_feed(&call->deframer, data, len, deliver, call);
  if (rc == 0 || call->state == CALL_DONE)
    return 0;
  switch (rc) {
  case -ENOTSUP: abort_call(call, DIBBA_GRPC_INTERNAL, "compressed response messages are not supported"); break;
  case -EMSGSIZE: abort_call(call, DIBBA_GRPC_RESOURCE_EXHAUSTED, "response message larger than the limit"); break;
  case -EPROTO: abort_call(call, DIBBA_GRPC_INTERNAL, "more than one response message for a unary call"); break;
  default: abort_call(call, DIBBA_GRPC_INTERNAL, "cannot unpack response message"); break;
  }
  return 0;
}

static dibba_grpc_code_t rst_to_code(uint32_t error_code) {
  switch (error_code) {
  case NGHTTP2_REFUSED_STREAM: return DIBBA_GRPC_UNAVAILABLE;
  case NGHTTP2_CANCEL: return DIBBA_GRPC_CANCELLED;
  case NGHTTP2_ENHANCE_YOUR_CALM: return DIBBA_GRPC_RESOURCE_EXHAUSTED;
  case NGHTTP2_INADEQUATE_SECURITY: return DIBBA_GRPC_PERMISSION_DENIED;
  default: return DIBBA_GRPC_INTERNAL;
  }
}

static int submit(dibba_grpc_call_t *call);

static int on_stream_close(nghttp2_session *s, int32_t stream_id, uint32_t error_code, void *user_data) {
  dibba_grpc_call_t *call = nghttp2_session_get_stream_user_data(s, stream_id);
  if (!call || call->state != CALL_ACTIVE)
    return 0;
  char msg[128];
  /* REFUSED_STREAM before any response means the server did not process the request (for example, streams
   * opened before its SETTINGS lowered MAX_CONCURRENT_STREAMS arrived): retrying is safe, as gRPC does. */
  if (error_code == NGHTTP2_REFUSED_STREAM && !call->http_status && !call->client_stream && call->retries < 5) {
    call->retries++;
    call->out_off = 0;
    call->deferred = 0;
    call->stream_id = 0;
    call->state = CALL_QUEUED;
    dibba_grpc_deframer_free(&call->deframer);
    dibba_grpc_deframer_init(&call->deframer, call->client->max_message);
    submit(call);
    return 0;
  }
  if (call->grpc_status && call->http_status) {
    dibba_grpc_status_t st = {0};
    dibba_grpc_status_from_headers(&st, call->http_status, call->grpc_status, call->grpc_message);
    if (st.code == DIBBA_GRPC_OK && dibba_grpc_deframer_partial(&call->deframer))
      dibba_grpc_status_set(&st, DIBBA_GRPC_INTERNAL, "stream ended inside a message");
    else if (st.code == DIBBA_GRPC_OK && call->bad_content_type)
      dibba_grpc_status_set(&st, DIBBA_GRPC_UNKNOWN, "unexpected content-type");
    else if (st.code == DIBBA_GRPC_OK && !call->on_message && !call->resp)
      dibba_grpc_status_set(&st, DIBBA_GRPC_INTERNAL, "no response message for a unary call");
    complete(call, st.code, st.message);
    dibba_grpc_status_free(&st);
  } else if (error_code != NGHTTP2_NO_ERROR) {
    snprintf(msg, sizeof msg, "stream reset by peer (HTTP/2 error %" PRIu32 ")%s", error_code,
             dibba_grpc_deframer_partial(&call->deframer) ? " inside a message" : "");
    complete(call, rst_to_code(error_code), msg);
  } else {
    dibba_grpc_status_t st = {0};
    dibba_grpc_status_from_headers(&st, call->http_status, NULL, NULL);
    complete(call, st.code, st.message);
    dibba_grpc_status_free(&st);
  }
  return 0;
}

/* --- transport --- */

static void on_write(uv_write_t *req, int status) {
  dibba_grpc_client_t *c = req->data;
  c->writing = 0;
  dibba_buf_reset(&c->wbuf);
  if (status < 0) {
    if (status != UV_ECANCELED)
      disconnect(c, status);
    return;
  }
  flush(c);
}

/* Drain nghttp2's output into one bounded uv_write at a time. Never called from inside nghttp2. */
static void flush(dibba_grpc_client_t *c) {
  if (c->in_cb || !c->session || c->writing || c->pipe_closing)
    return;
  c->in_cb++;
  int err = 0;
  while (c->wbuf.len < WRITE_BATCH) {
    const uint8_t *p;
    ssize_t n = nghttp2_session_mem_send(c->session, &p);
    if (n < 0) {
      err = DIBBA_EPROTO;
      break;
    }
    if (n == 0)
      break;
    dibba_buf_add(&c->wbuf, p, (size_t)n); /* uncapped buffer: cannot fail */
  }
  c->in_cb--;
  if (!err && c->want_disconnect)
    err = c->want_disconnect;
  if (err) {
    disconnect(c, err);
    return;
  }
  if (c->wbuf.len > 0) {
    uv_buf_t b = uv_buf_init(c->wbuf.data, (unsigned)c->wbuf.len);
    c->write_req.data = c;
    int rc = uv_write(&c->write_req, (uv_stream_t *)&c->pipe, &b, 1, on_write);
    if (rc < 0) {
      dibba_buf_reset(&c->wbuf);
      disconnect(c, rc);
      return;
    }
    c->writing = 1;
    return;
  }
  if (!nghttp2_session_want_read(c->session) && !nghttp2_session_want_write(c->session))
    disconnect(c, UV_EOF); /* GOAWAY exchanged and nothing left: reconnect */
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  dibba_grpc_client_t *c = h->data;
  *buf = uv_buf_init(c->rbuf, sizeof c->rbuf);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  dibba_grpc_client_t *c = stream->data;
  if (nread < 0) {
    disconnect(c, nread == UV_EOF ? UV_ECONNRESET : (int)nread);
    return;
  }
  if (nread == 0 || !c->session)
    return;
  c->in_cb++;
  ssize_t rv = nghttp2_session_mem_recv(c->session, (const uint8_t *)buf->base, (size_t)nread);
  c->in_cb--;
  if (rv < 0) {
    dibba_log_warn("grpc", NULL, "HTTP/2 error from %s: %s", c->path, nghttp2_strerror((int)rv));
    disconnect(c, DIBBA_EPROTO);
    return;
  }
  if (c->want_disconnect) {
    disconnect(c, c->want_disconnect);
    return;
  }
  flush(c);
}

static void on_reconnect_timer(uv_timer_t *t) { start_connect(t->data); }

static void on_pipe_close(uv_handle_t *h) {
  dibba_grpc_client_t *c = h->data;
  c->pipe_active = 0;
  c->pipe_closing = 0;
  if (c->handles_closed) {
    if (--c->handles_pending == 0)
      close_all(c);
    return;
  }
  if (c->closing)
    return;
  uint64_t delay = c->backoff_cur;
  /* Jitter of up to a quarter keeps a fleet of workers from reconnecting in lockstep. */
  delay += (uint64_t)rand() % (delay / 4 + 1);
  c->backoff_cur = c->backoff_cur * 2 > c->backoff_max ? c->backoff_max : c->backoff_cur * 2;
  uv_timer_start(&c->reconnect_timer, on_reconnect_timer, delay, 0);
  set_state(c, DIBBA_GRPC_TRANSIENT_FAILURE, c->want_disconnect);
  c->want_disconnect = 0;
}

/* Drop the connection: fail every call with UNAVAILABLE, free the session, close the pipe. */
static void disconnect(dibba_grpc_client_t *c, int err) {
  if (c->in_cb) {
    if (!c->want_disconnect)
      c->want_disconnect = err ? err : UV_ECONNRESET;
    return;
  }
  if (!c->pipe_active || c->pipe_closing)
    return;
  char msg[160];
  snprintf(msg, sizeof msg, "connection to %s lost: %s", c->path, dibba_strerror(err));
  dibba_grpc_call_t *call;
  while ((call = c->calls.head))
    complete(call, DIBBA_GRPC_UNAVAILABLE, msg);
  if (c->session) {
    nghttp2_session *s = c->session;
    c->session = NULL;
    nghttp2_session_del(s);
  }
  c->want_disconnect = err ? err : UV_ECONNRESET;
  c->pipe_closing = 1;
  uv_read_stop((uv_stream_t *)&c->pipe);
  uv_close((uv_handle_t *)&c->pipe, on_pipe_close);
  arm_deadlines(c);
}

static int submit(dibba_grpc_call_t *call);

static int session_setup(dibba_grpc_client_t *c) {
  nghttp2_session_callbacks *cbs;
  nghttp2_option *opt;
  int rc = 0;
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
  nghttp2_option_new(&opt);
  nghttp2_option_set_no_auto_window_update(opt, 1);
  nghttp2_option_set_peer_max_concurrent_streams(opt, 100);
  rc = nghttp2_session_client_new2(&c->session, cbs, c, opt);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cbs);
  if (rc != 0) {
    c->session = NULL;
    rc = -ENOMEM;
    goto out;
  }
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, c->initial_window},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, 64 * 1024},
  };
  nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
  nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW);
out:
  return rc;
}

static void on_connect(uv_connect_t *req, int status) {
  dibba_grpc_client_t *c = req->data;
  if (c->closing || c->pipe_closing)
    return;
  if (status < 0) {
    dibba_log_debug("grpc", NULL, "connect %s: %s", c->path, uv_strerror(status));
    disconnect(c, status);
    return;
  }
  int rc = session_setup(c);
  if (rc == 0)
    rc = uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
  if (rc < 0) {
    disconnect(c, rc);
    return;
  }
  c->backoff_cur = c->backoff_initial;
  c->state = DIBBA_GRPC_READY;
  for (dibba_grpc_call_t *call = c->calls.head, *next; call; call = next) {
    next = call->next;
    if (call->state == CALL_QUEUED)
      submit(call);
  }
  flush(c);
  set_state(c, DIBBA_GRPC_READY, 0);
}

static void start_connect(dibba_grpc_client_t *c) {
  if (c->closing || c->pipe_active)
    return;
  uv_pipe_init(c->loop, &c->pipe, 0);
  c->pipe.data = c;
  c->pipe_active = 1;
  c->connect_req.data = c;
  uv_pipe_connect(&c->connect_req, &c->pipe, c->path, on_connect);
  if (c->state != DIBBA_GRPC_CONNECTING)
    set_state(c, DIBBA_GRPC_CONNECTING, 0);
}

/* --- deadlines: one timer for the client, armed for the earliest deadline --- */

static void on_deadline(uv_timer_t *t) {
  dibba_grpc_client_t *c = t->data;
  uint64_t now = uv_now(c->loop);
  for (dibba_grpc_call_t *call = c->calls.head, *next; call; call = next) {
    next = call->next;
    if (call->deadline && call->deadline <= now)
      abort_call(call, DIBBA_GRPC_DEADLINE_EXCEEDED, "deadline exceeded");
  }
  flush(c);
  arm_deadlines(c);
}

static void arm_deadlines(dibba_grpc_client_t *c) {
  uint64_t min = 0;
  for (dibba_grpc_call_t *call = c->calls.head; call; call = call->next)
    if (call->deadline && (!min || call->deadline < min))
      min = call->deadline;
  if (c->closing || !min) {
    uv_timer_stop(&c->deadline_timer);
    return;
  }
  uint64_t now = uv_now(c->loop);
  uv_timer_start(&c->deadline_timer, on_deadline, min > now ? min - now : 0, 0);
}

/* --- calls --- */

#define NV(n, v)                                                                                                       \
  (nghttp2_nv) { (uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v), NGHTTP2_NV_FLAG_NONE }

static int submit(dibba_grpc_call_t *call) {
  dibba_grpc_client_t *c = call->client;
  char timeout[32];
  size_t n = 0;
  nghttp2_nv *nva = dibba_xcalloc(8 + call->n_md, sizeof *nva);
  nva[n++] = NV(":method", "POST");
  nva[n++] = NV(":scheme", "http");
  nva[n++] = NV(":path", call->path);
  nva[n++] = NV(":authority", c->authority);
  nva[n++] = NV("te", "trailers");
  nva[n++] = NV("content-type", "application/grpc");
  nva[n++] = NV("user-agent", "dibba-grpc/"
                              "0.1");
  if (call->deadline) {
    uint64_t now = uv_now(c->loop);
    uint64_t left = call->deadline > now ? call->deadline - now : 1;
    if (left <= 99999999)
      snprintf(timeout, sizeof timeout, "%" PRIu64 "m", left);
    else
      snprintf(timeout, sizeof timeout, "%" PRIu64 "S", left / 1000 > 99999999 ? 99999999 : left / 1000);
    nva[n++] = NV("grpc-timeout", timeout);
  }
  for (size_t i = 0; i < call->n_md; i++)
    nva[n++] = NV(call->md[2 * i], call->md[2 * i + 1]);
  nghttp2_data_provider prd = {.source.ptr = call, .read_callback = read_request};
  int32_t id = nghttp2_submit_request(c->session, NULL, nva, n, &prd, call);
  free(nva);
  if (id < 0) {
    complete(call, id == NGHTTP2_ERR_START_STREAM_NOT_ALLOWED ? DIBBA_GRPC_UNAVAILABLE : DIBBA_GRPC_INTERNAL,
             nghttp2_strerror(id));
    return -EPROTO;
  }
  call->stream_id = id;
  call->state = CALL_ACTIVE;
  return 0;
}

static int valid_md_name(const char *s) {
  if (!*s || *s == ':' || !strncmp(s, "grpc-", 5))
    return 0;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-' || *s == '_' || *s == '.'))
      return 0;
  return 1;
}

int dibba_grpc_call_start(dibba_grpc_client_t *c, const dibba_grpc_call_opts_t *o, const ProtobufCMessage *req,
                          dibba_grpc_call_t **out) {
  int rc = 0;
  dibba_grpc_call_t *call = NULL;
  if (!o || !o->path || o->path[0] != '/' || !o->response_desc || !o->on_done || (!req && !o->client_stream)) {
    rc = -EINVAL;
    goto out;
  }
  for (size_t i = 0; i < o->n_metadata; i++) {
    if (!o->metadata[i].name || !o->metadata[i].value || !valid_md_name(o->metadata[i].name) ||
        strpbrk(o->metadata[i].value, "\r\n")) {
      rc = -EINVAL;
      goto out;
    }
  }
  if (c->closing) {
    rc = -ESHUTDOWN;
    goto out;
  }
  if (c->state == DIBBA_GRPC_TRANSIENT_FAILURE) {
    rc = UV_ECONNREFUSED;
    goto out;
  }
  call = dibba_xcalloc(1, sizeof *call);
  call->client = c;
  dibba_buf_init(&call->out, 0);
  if (req && (rc = dibba_grpc_frame(&call->out, req, c->max_message)) < 0)
    goto out;
  call->path = dibba_xstrdup(o->path);
  call->n_md = o->n_metadata;
  call->md = dibba_xcalloc(2 * o->n_metadata + 1, sizeof *call->md);
  for (size_t i = 0; i < o->n_metadata; i++) {
    call->md[2 * i] = dibba_xstrdup(o->metadata[i].name);
    call->md[2 * i + 1] = dibba_xstrdup(o->metadata[i].value);
  }
  call->desc = o->response_desc;
  call->on_message = o->on_message;
  call->on_done = o->on_done;
  call->data = o->data;
  call->timeout_ms = o->timeout_ms;
  call->deadline = o->timeout_ms ? uv_now(c->loop) + o->timeout_ms : 0;
  call->send_closed = !o->client_stream;
  call->client_stream = o->client_stream;
  call->state = CALL_QUEUED;
  dibba_grpc_deframer_init(&call->deframer, c->max_message);
  list_push(&c->calls, call);
  if (out)
    *out = call;
  if (c->session && c->state == DIBBA_GRPC_READY) {
    submit(call);
    if (!c->in_cb)
      flush(c);
  }
  if (call->deadline)
    arm_deadlines(c);
  call = NULL;
out:
  if (call)
    call_free(call);
  return rc;
}

static void resume(dibba_grpc_call_t *call) {
  dibba_grpc_client_t *c = call->client;
  if (call->state == CALL_ACTIVE && call->deferred && c->session) {
    call->deferred = 0;
    nghttp2_session_resume_data(c->session, call->stream_id);
  }
  if (!c->in_cb)
    flush(c);
}

int dibba_grpc_call_send(dibba_grpc_call_t *call, const ProtobufCMessage *msg) {
  int rc = 0;
  if (call->state == CALL_DONE || call->send_closed) {
    rc = -EPIPE;
    goto out;
  }
  if (call->out.len - call->out_off > 2 * call->client->max_message) {
    rc = -ENOBUFS;
    goto out;
  }
  rc = dibba_grpc_frame(&call->out, msg, call->client->max_message);
  if (rc < 0)
    goto out;
  resume(call);
out:
  return rc;
}

int dibba_grpc_call_close_send(dibba_grpc_call_t *call) {
  if (call->state == CALL_DONE || call->send_closed)
    return 0;
  call->send_closed = 1;
  resume(call);
  return 0;
}

size_t dibba_grpc_call_pending_send(const dibba_grpc_call_t *call) { return call->out.len - call->out_off; }

void dibba_grpc_call_cancel(dibba_grpc_call_t *call) {
  dibba_grpc_client_t *c = call->client;
  if (call->state == CALL_DONE)
    return;
  abort_call(call, DIBBA_GRPC_CANCELLED, "cancelled");
  if (!c->in_cb)
    flush(c);
}

dibba_grpc_client_t *dibba_grpc_call_client(const dibba_grpc_call_t *call) { return call->client; }

/* --- client lifecycle --- */

int dibba_grpc_client_new(uv_loop_t *loop, const dibba_grpc_client_opts_t *o, dibba_grpc_client_t **out) {
  int rc = 0;
  const char *path = o && o->address ? o->address : NULL;
  if (path && !strncmp(path, "unix://", 7))
    path += 7;
  else if (path && !strncmp(path, "unix:", 5))
    path += 5;
  if (!path || !*path || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
    rc = -EINVAL;
    goto out;
  }
  dibba_grpc_client_t *c = dibba_xcalloc(1, sizeof *c);
  c->loop = loop;
  c->path = dibba_xstrdup(path);
  c->authority = dibba_xstrdup(o->authority ? o->authority : "localhost");
  c->max_message = o->max_message ? o->max_message : DIBBA_GRPC_DEFAULT_MAX_MESSAGE;
  c->initial_window = o->initial_window ? o->initial_window : 1024 * 1024;
  c->backoff_initial = o->backoff_initial_ms ? o->backoff_initial_ms : 100;
  c->backoff_max = o->backoff_max_ms ? o->backoff_max_ms : 5000;
  c->backoff_cur = c->backoff_initial;
  c->state_cb = o->state_cb;
  c->data = o->data;
  c->state = DIBBA_GRPC_CONNECTING;
  dibba_buf_init(&c->wbuf, 0);
  uv_timer_init(loop, &c->reconnect_timer);
  uv_timer_init(loop, &c->deadline_timer);
  uv_idle_init(loop, &c->idle);
  c->reconnect_timer.data = c;
  c->deadline_timer.data = c;
  c->idle.data = c;
  start_connect(c);
  *out = c;
out:
  return rc;
}

static void on_handle_closed(uv_handle_t *h) {
  dibba_grpc_client_t *c = h->data;
  if (--c->handles_pending == 0)
    close_all(c);
}

/* Close every handle once; when the last close callback has run, free the client. */
static void close_all(dibba_grpc_client_t *c) {
  if (!c->handles_closed) {
    c->handles_closed = 1;
    c->handles_pending = 3;
    if (c->pipe_active) {
      c->handles_pending++;
      if (!c->pipe_closing) {
        c->pipe_closing = 1;
        uv_close((uv_handle_t *)&c->pipe, on_pipe_close);
      }
    }
    uv_close((uv_handle_t *)&c->reconnect_timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->deadline_timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->idle, on_handle_closed);
    return;
  }
  if (c->handles_pending > 0)
    return;
  if (c->session)
    nghttp2_session_del(c->session);
  c->session = NULL;
  dibba_buf_free(&c->wbuf);
  free(c->path);
  free(c->authority);
  if (c->close_cb)
    c->close_cb(c, c->close_data);
  free(c);
}

void dibba_grpc_client_close(dibba_grpc_client_t *c, dibba_grpc_close_cb cb, void *data) {
  if (!c || c->closing)
    return;
  c->closing = 1;
  c->close_cb = cb;
  c->close_data = data;
  c->state = DIBBA_GRPC_SHUTDOWN;
  uv_timer_stop(&c->reconnect_timer);
  uv_timer_stop(&c->deadline_timer);
  dibba_grpc_call_t *call;
  while ((call = c->calls.head))
    abort_call(call, DIBBA_GRPC_CANCELLED, "client closed");
  if (c->session && !c->pipe_closing) {
    nghttp2_session_terminate_session(c->session, NGHTTP2_NO_ERROR);
    flush(c);
  }
  uv_idle_start(&c->idle, on_idle);
}

dibba_grpc_state_t dibba_grpc_client_state(const dibba_grpc_client_t *c) { return c->state; }
size_t dibba_grpc_client_calls(const dibba_grpc_client_t *c) { return c->calls.n + c->completed.n; }
void *dibba_grpc_client_data(const dibba_grpc_client_t *c) { return c->data; }
