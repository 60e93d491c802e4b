/* SPDX-License-Identifier: Apache-2.0 */
/* The HTTP listener and connections: reading, pipelining order, timeouts, backpressure and graceful stop. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/log.h"
#include "http_private.h"
#include "server.h"

#define LINGER_MS 2000

typedef struct {
  uv_write_t w;
  dibba__http_conn_t *conn;
  void *body;
  size_t hlen;
  char head[];
} wreq_t;

void dibba_http_limits_default(dibba_http_limits_t *l) {
  memset(l, 0, sizeof *l);
  l->max_url_bytes = 8192;
  l->max_header_bytes = 16384;
  l->max_headers = 64;
  l->max_body_bytes = 1024 * 1024;
  l->read_timeout_ms = 10000;
  l->idle_timeout_ms = 60000;
  l->max_pipeline = 16;
  l->write_high_water = 1024 * 1024;
  l->write_hard_limit = 8 * 1024 * 1024;
  l->shutdown_timeout_ms = 10000;
  l->ws_max_frame_bytes = 1024 * 1024;
  l->ws_max_message_bytes = 4 * 1024 * 1024;
  l->ws_ping_interval_ms = 30000;
  l->ws_close_timeout_ms = 5000;
  l->access_log = 1;
}

int dibba_http_limits_from_config(dibba_http_limits_t *l, const dibba_config_t *cfg, char *err, size_t errlen) {
  static const struct {
    const char *key;
    size_t off;
    int64_t min, max;
    int is64;
  } keys[] = {
      {"api.max_url_bytes", offsetof(dibba_http_limits_t, max_url_bytes), 256, 1 << 20, 0},
      {"api.max_header_bytes", offsetof(dibba_http_limits_t, max_header_bytes), 1024, 1 << 20, 0},
      {"api.max_headers", offsetof(dibba_http_limits_t, max_headers), 8, 1024, 0},
      {"api.max_body_bytes", offsetof(dibba_http_limits_t, max_body_bytes), 0, (int64_t)1 << 32, 0},
      {"api.read_timeout_ms", offsetof(dibba_http_limits_t, read_timeout_ms), 100, 3600000, 1},
      {"api.idle_timeout_ms", offsetof(dibba_http_limits_t, idle_timeout_ms), 100, 3600000, 1},
  };
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    char *field = (char *)l + keys[i].off;
    int64_t def = keys[i].is64 ? (int64_t) * (uint64_t *)field : (int64_t) * (size_t *)field, v;
    int r = dibba_config_int(cfg, keys[i].key, def, keys[i].min, keys[i].max, &v, err, errlen);
    if (r < 0)
      return r;
    if (keys[i].is64)
      *(uint64_t *)field = (uint64_t)v;
    else
      *(size_t *)field = (size_t)v;
  }
  return dibba_config_bool(cfg, "api.access_log", l->access_log, &l->access_log, err, errlen);
}

/* ---- writing ---- */

static void on_write(uv_write_t *w, int status) {
  wreq_t *wr = (wreq_t *)w;
  dibba__http_conn_t *c = wr->conn;
  free(wr->body);
  free(wr);
  if (status < 0) {
    dibba__http_conn_close(c);
    return;
  }
  dibba__http_conn_update_reading(c);
}

size_t dibba__http_conn_out_bytes(const dibba__http_conn_t *c) {
  return uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp) + c->buffered;
}

void dibba__http_conn_write(dibba__http_conn_t *c, const char *head, size_t hlen, void *body, size_t blen) {
  if (c->closing || c->shutting) {
    free(body);
    return;
  }
  wreq_t *wr = dibba_xmalloc(sizeof *wr + hlen);
  wr->conn = c;
  wr->body = body;
  wr->hlen = hlen;
  uv_buf_t bufs[2];
  unsigned n = 0;
  if (hlen) {
    memcpy(wr->head, head, hlen);
    bufs[n++] = uv_buf_init(wr->head, (unsigned)hlen);
  }
  if (blen)
    bufs[n++] = uv_buf_init(body, (unsigned)blen);
  int r = uv_write(&wr->w, (uv_stream_t *)&c->tcp, bufs, n, on_write);
  if (r < 0) {
    free(wr->body);
    free(wr);
    dibba__http_conn_close(c);
  }
}

/* ---- reading control ---- */

void dibba__http_conn_update_reading(dibba__http_conn_t *c) {
  int want = 0;
  if (c->closing)
    want = 0;
  else if (c->mode == CONN_LINGER)
    want = 1;
  else if (c->shutting)
    want = 0;
  else if (c->mode == CONN_WS)
    want = !c->parse_paused && !c->ws.close_received && dibba__http_conn_out_bytes(c) < c->srv->lim.write_high_water;
  else
    want = !c->parse_paused && !c->upgrade_wait && !c->parser.failed && !c->peer_eof &&
           dibba__http_conn_out_bytes(c) < c->srv->lim.write_high_water;
  if (want && !c->reading) {
    if (uv_read_start((uv_stream_t *)&c->tcp, dibba__http_alloc_cb, dibba__http_read_cb) == 0)
      c->reading = 1;
  } else if (!want && c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
}

void dibba__http_conn_schedule_resume(dibba__http_conn_t *c) {
  dibba_http_server_t *s = c->srv;
  if (c->in_resume || c->closing)
    return;
  c->in_resume = 1;
  c->refs++;
  TAILQ_INSERT_TAIL(&s->resume, c, resume_link);
  uv_idle_start(&s->idle, dibba__http_idle_cb);
}

void dibba__http_conn_arm(dibba__http_conn_t *c, uint64_t ms) {
  if (!c->closing)
    uv_timer_start(&c->timer, dibba__http_timer_cb, ms, 0);
}

/* ---- lifecycle ---- */

static void conn_unref(dibba__http_conn_t *c) {
  if (--c->refs > 0)
    return;
  if (c->ws.req)
    dibba_http_req_unref(c->ws.req);
  dibba_ws_parser_free(&c->ws.parser);
  dibba_buf_free(&c->pending);
  free(c);
}

void dibba__http_conn_ref(dibba__http_conn_t *c) { c->refs++; }
void dibba__http_conn_unref(dibba__http_conn_t *c) { conn_unref(c); }

static void maybe_done(dibba_http_server_t *s);

static void on_conn_close(uv_handle_t *h) {
  dibba__http_conn_t *c = h->data;
  if (--c->pending_closes > 0)
    return;
  dibba_http_server_t *s = c->srv;
  TAILQ_REMOVE(&s->conns, c, link);
  s->nconns--;
  if (c->mode == CONN_WS || c->ws.open)
    s->nws--;
  c->ws.open = 0;
  conn_unref(c);
  maybe_done(s);
}

static void cancel_reqs(dibba__http_conn_t *c) {
  dibba_http_req_t *r;
  while ((r = TAILQ_FIRST(&c->reqs)) != NULL) {
    TAILQ_REMOVE(&c->reqs, r, link);
    c->nreqs--;
    r->queued = 0;
    c->buffered -= r->out.len;
    dibba_buf_free(&r->out);
    r->conn = NULL;
    if (r->state < REQ_DONE && r->cancel_cb && !r->cancelled) {
      r->cancelled = 1;
      r->cancel_cb(r, r->cancel_data);
    }
    dibba_http_req_unref(r);
  }
  c->buffered = 0;
}

void dibba__http_conn_close(dibba__http_conn_t *c) {
  if (c->closing)
    return;
  c->closing = 1;
  if (c->in_resume) {
    TAILQ_REMOVE(&c->srv->resume, c, resume_link);
    c->in_resume = 0;
    conn_unref(c); /* not the last reference: the handles hold one */
  }
  c->continue_req = NULL;
  cancel_reqs(c);
  dibba__http_parser_free(&c->parser);
  if (c->mode == CONN_WS)
    dibba__ws_notify_close(c, 1006);
  c->pending_closes = 2;
  uv_close((uv_handle_t *)&c->tcp, on_conn_close);
  uv_close((uv_handle_t *)&c->timer, on_conn_close);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  dibba__http_conn_t *c = req->data;
  if (c->closing)
    goto out;
  if (status < 0) {
    dibba__http_conn_close(c);
    goto out;
  }
  /* Lingering close: drain what the client still sends so that closing does not turn into an RST that could
   * destroy the response before the client read it. */
  c->mode = c->mode == CONN_WS ? CONN_WS : CONN_LINGER;
  if (c->mode == CONN_WS) {
    dibba__http_conn_close(c);
    goto out;
  }
  dibba__http_conn_arm(c, LINGER_MS);
  dibba__http_conn_update_reading(c);
out:
  conn_unref(c);
}

void dibba__http_conn_begin_shutdown(dibba__http_conn_t *c) {
  if (c->shutting || c->closing)
    return;
  c->shutting = 1;
  c->continue_req = NULL;
  cancel_reqs(c);
  uv_timer_stop(&c->timer);
  if (c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
  c->shutdown_req.data = c;
  c->refs++;
  if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
    conn_unref(c);
    dibba__http_conn_close(c);
  }
}

void dibba__http_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  dibba__http_conn_t *c = h->data;
  (void)suggested;
  *buf = uv_buf_init(c->srv->rbuf, sizeof c->srv->rbuf);
}

void dibba__http_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  dibba__http_conn_t *c = st->data;
  (void)buf;
  if (c->closing)
    return;
  if (nread == 0)
    return;
  if (nread < 0) {
    if (nread != UV_EOF || c->mode != CONN_HTTP) {
      dibba__http_conn_close(c);
      return;
    }
    /* Half-close: answer what is complete, then close. */
    c->peer_eof = 1;
    if (c->nreqs == 0 || c->parser.phase != 0)
      dibba__http_conn_close(c);
    else
      dibba__http_conn_update_reading(c);
    return;
  }
  if (c->mode == CONN_LINGER)
    return;
  if (c->mode == CONN_WS) {
    dibba__ws_input(c, c->srv->rbuf, (size_t)nread);
    return;
  }
  dibba__http_conn_input(c, c->srv->rbuf, (size_t)nread);
}

void dibba__http_timer_cb(uv_timer_t *t) {
  dibba__http_conn_t *c = t->data;
  if (c->closing)
    return;
  if (c->mode == CONN_LINGER || c->shutting) {
    dibba__http_conn_close(c);
    return;
  }
  if (c->mode == CONN_WS) {
    dibba__ws_timer(c);
    return;
  }
  if (c->parser.phase != 0 && !c->parser.failed) {
    if (c->nreqs == 0) {
      dibba__http_conn_fail(c, 408, "Request timeout");
      return;
    }
    dibba__http_conn_close(c);
    return;
  }
  if (c->nreqs == 0)
    dibba__http_conn_close(c);
}

void dibba__http_idle_cb(uv_idle_t *h) {
  dibba_http_server_t *s = h->data;
  dibba__http_conn_t *c;
  while ((c = TAILQ_FIRST(&s->resume)) != NULL) {
    TAILQ_REMOVE(&s->resume, c, resume_link);
    c->in_resume = 0;
    if (!c->closing)
      dibba__http_conn_resume(c);
    conn_unref(c);
  }
  uv_idle_stop(&s->idle);
}

static void on_connection(uv_stream_t *ls, int status) {
  dibba_http_server_t *s = ls->data;
  if (status < 0 || s->shutting_down)
    return;
  dibba__http_conn_t *c = dibba_xcalloc(1, sizeof *c);
  c->srv = s;
  c->refs = 1;
  TAILQ_INIT(&c->reqs);
  dibba_buf_init(&c->pending, 0);
  dibba__http_parser_init(&c->parser, s, &s->lim);
  dibba__http_conn_setup_parser(c);
  uv_tcp_init(s->loop, &c->tcp);
  uv_timer_init(s->loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->ws.conn = c;
  TAILQ_INSERT_TAIL(&s->conns, c, link);
  s->nconns++;
  s->accepted++;
  if (uv_accept(ls, (uv_stream_t *)&c->tcp) < 0) {
    dibba__http_conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  struct sockaddr_storage ss;
  int len = sizeof ss;
  char ip[INET6_ADDRSTRLEN] = "?";
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
    if (ss.ss_family == AF_INET) {
      uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
      snprintf(c->remote, sizeof c->remote, "%s:%d", ip, ntohs(((struct sockaddr_in *)&ss)->sin_port));
    } else if (ss.ss_family == AF_INET6) {
      uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
      snprintf(c->remote, sizeof c->remote, "[%s]:%d", ip, ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
    }
  }
  dibba__http_conn_arm(c, s->lim.read_timeout_ms);
  dibba__http_conn_update_reading(c);
}

/* ---- server ---- */

dibba_http_server_t *dibba_http_server_new(uv_loop_t *loop, dibba_http_router_t *router,
                                           const dibba_http_limits_t *limits) {
  dibba_http_server_t *s = dibba_xcalloc(1, sizeof *s);
  s->loop = loop;
  s->router = router;
  if (limits)
    s->lim = *limits;
  else
    dibba_http_limits_default(&s->lim);
  TAILQ_INIT(&s->conns);
  TAILQ_INIT(&s->resume);
  return s;
}

void dibba_http_server_set_auth(dibba_http_server_t *s, dibba_http_auth_cb cb, void *data) {
  s->auth_cb = cb;
  s->auth_data = data;
}

void dibba_http_server_set_ws_origins(dibba_http_server_t *s, const char *const *origins, size_t n) {
  for (size_t i = 0; i < s->norigins; i++)
    free(s->origins[i]);
  free(s->origins);
  s->origins = NULL;
  s->norigins = 0;
  if (origins == NULL || n == 0)
    return;
  s->origins = dibba_xcalloc(n, sizeof *s->origins);
  for (size_t i = 0; i < n; i++)
    s->origins[i] = dibba_xstrdup(origins[i]);
  s->norigins = n;
}

void dibba_http_server_set_metrics_hook(dibba_http_server_t *s, dibba_http_metrics_cb cb, void *data) {
  s->metrics_cb = cb;
  s->metrics_data = data;
}

void dibba_http_server_set_response_hook(dibba_http_server_t *s, dibba_http_response_cb cb, void *data) {
  s->response_cb = cb;
  s->response_data = data;
}

static void on_server_handle_close(uv_handle_t *h) {
  dibba_http_server_t *s = h->data;
  s->handles_open--;
  maybe_done(s);
}

int dibba_http_server_listen(dibba_http_server_t *s, const char *host, int port) {
  struct sockaddr_storage ss;
  int r;
  if (s->listening || s->shutting_down)
    return UV_EALREADY;
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0) {
    r = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss);
    if (r < 0)
      return r;
  }
  uv_tcp_init(s->loop, &s->listener);
  uv_idle_init(s->loop, &s->idle);
  uv_timer_init(s->loop, &s->stop_timer);
  s->listener.data = s->idle.data = s->stop_timer.data = s;
  s->handles_open = 3;
  s->listening = 1;
  r = uv_tcp_bind(&s->listener, (struct sockaddr *)&ss, 0);
  if (r < 0)
    goto fail;
  r = uv_listen((uv_stream_t *)&s->listener, 511, on_connection);
  if (r < 0)
    goto fail;
  int len = sizeof ss;
  if (uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len) == 0)
    s->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                             : ((struct sockaddr_in *)&ss)->sin_port);
  return 0;
fail:
  /* The caller still calls dibba_http_server_shutdown to close the handles. */
  return r;
}

int dibba_http_server_listen_addr(dibba_http_server_t *s, const char *addr) {
  char host[256];
  const char *colon = strrchr(addr, ':');
  if (colon == NULL || colon == addr)
    return -EINVAL;
  size_t hl = (size_t)(colon - addr);
  if (addr[0] == '[' && hl >= 2 && addr[hl - 1] == ']') {
    addr++;
    hl -= 2;
  }
  if (hl >= sizeof host)
    return -EINVAL;
  memcpy(host, addr, hl);
  host[hl] = '\0';
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end || port < 0 || port > 65535 || end == colon + 1)
    return -EINVAL;
  return dibba_http_server_listen(s, host, (int)port);
}

int dibba_http_server_port(const dibba_http_server_t *s) { return s->port; }

static void on_stop_timeout(uv_timer_t *t) {
  dibba_http_server_t *s = t->data;
  dibba__http_conn_t *c, *n;
  dibba_log_warn("http", json_pack("{s:I}", "connections", (json_int_t)s->nconns), "shutdown timeout: closing");
  for (c = TAILQ_FIRST(&s->conns); c; c = n) {
    n = TAILQ_NEXT(c, link);
    dibba__http_conn_close(c);
  }
}

static void maybe_done(dibba_http_server_t *s) {
  if (!s->shutting_down || s->done_called || s->nconns > 0)
    return;
  if (s->listening) {
    s->listening = 0;
    if (!uv_is_closing((uv_handle_t *)&s->idle))
      uv_close((uv_handle_t *)&s->idle, on_server_handle_close);
    if (!uv_is_closing((uv_handle_t *)&s->stop_timer))
      uv_close((uv_handle_t *)&s->stop_timer, on_server_handle_close);
    if (!uv_is_closing((uv_handle_t *)&s->listener))
      uv_close((uv_handle_t *)&s->listener, on_server_handle_close);
  }
  if (s->handles_open > 0)
    return;
  s->done_called = 1;
  if (s->done_cb)
    s->done_cb(s, s->done_data); /* last statement: done may free s */
}

void dibba_http_server_shutdown(dibba_http_server_t *s, dibba_http_done_cb done, void *data) {
  if (s->shutting_down)
    return;
  s->shutting_down = 1;
  s->done_cb = done;
  s->done_data = data;
  if (s->listening) {
    /* Stop accepting first: new connections are refused so a load balancer moves them elsewhere. */
    uv_close((uv_handle_t *)&s->listener, on_server_handle_close);
    uv_timer_start(&s->stop_timer, on_stop_timeout, s->lim.shutdown_timeout_ms, 0);
    uv_unref((uv_handle_t *)&s->stop_timer);
  }
  dibba__http_conn_t *c, *n;
  for (c = TAILQ_FIRST(&s->conns); c; c = n) {
    n = TAILQ_NEXT(c, link);
    if (c->closing || c->shutting)
      continue;
    if (c->mode == CONN_WS)
      dibba_ws_close(&c->ws, 1001, "server shutting down");
    else if (c->mode == CONN_LINGER)
      continue;
    else if (c->nreqs == 0 && c->parser.phase == 0)
      dibba__http_conn_close(c);
  }
  maybe_done(s);
}

void dibba_http_server_free(dibba_http_server_t *s) {
  if (s == NULL)
    return;
  dibba_http_server_set_ws_origins(s, NULL, 0);
  dibba__http_metrics_free(s);
  free(s);
}
