/* SPDX-License-Identifier: Apache-2.0 */
/* One HTTP connection's request flow: parser events, the pipeline queue, 100-continue and in-order flushing. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dibba/alloc.h"
#include "dibba/log.h"
#include "http_private.h"
#include "server.h"

static const char continue_line[] = "HTTP/1.1 100 Continue\r\n\r\n";

static void on_begin(dibba__http_parser_t *p, dibba_http_req_t *req) {
  dibba__http_conn_t *c = p->data;
  req->start_ns = uv_hrtime();
  dibba__http_conn_arm(c, c->srv->lim.read_timeout_ms);
}

static int on_head(dibba__http_parser_t *p, dibba_http_req_t *req) {
  dibba__http_conn_t *c = p->data;
  const char *expect = dibba_http_req_header(req, "expect");
  int st = dibba__http_head_check(req, expect != NULL);
  if (st)
    return st;
  if (expect) {
    if (strcasecmp(expect, "100-continue") != 0)
      return 417;
    if (c->nreqs == 0)
      dibba__http_conn_write(c, continue_line, sizeof continue_line - 1, NULL, 0);
    else
      c->continue_req = req;
  }
  if ((p->ll.flags & F_CHUNKED) || p->ll.content_length > 0)
    dibba__http_conn_arm(c, c->srv->lim.read_timeout_ms);
  else
    uv_timer_stop(&c->timer);
  return 0;
}

static int on_request(dibba__http_parser_t *p, dibba_http_req_t *req) {
  dibba__http_conn_t *c = p->data;
  if (c->continue_req == req)
    c->continue_req = NULL;
  uv_timer_stop(&c->timer);
  req->conn = c;
  req->queued = 1;
  TAILQ_INSERT_TAIL(&c->reqs, req, link);
  c->nreqs++;
  if (req->upgrade)
    c->upgrade_wait = 1;
  dibba__http_dispatch(req);
  return c->upgrade_wait || c->closing || c->shutting || c->nreqs >= c->srv->lim.max_pipeline;
}

void dibba__http_conn_setup_parser(dibba__http_conn_t *c) {
  c->parser.data = c;
  c->parser.on_begin = on_begin;
  c->parser.on_head = on_head;
  c->parser.on_request = on_request;
}

void dibba__http_conn_fail(dibba__http_conn_t *c, int status, const char *detail) {
  dibba_http_req_t *req = c->parser.cur;
  c->parser.cur = NULL;
  c->parser.failed = 1;
  c->continue_req = NULL;
  if (req == NULL) {
    req = dibba__http_req_new(c->srv);
    req->start_ns = uv_hrtime();
  }
  req->is_error = 1;
  req->conn = c;
  req->queued = 1;
  TAILQ_INSERT_TAIL(&c->reqs, req, link);
  c->nreqs++;
  dibba__http_respond_status(req, status, detail);
  dibba__http_conn_update_reading(c);
}

void dibba__http_conn_input(dibba__http_conn_t *c, const char *data, size_t len) {
  size_t used = 0;
  c->in_parse = 1;
  int r = dibba__http_parser_feed(&c->parser, data, len, &used);
  c->in_parse = 0;
  if (c->closing)
    return;
  if (r == 1 || r == 2) {
    c->parse_paused = 1;
    if (used < len)
      dibba_buf_add(&c->pending, data + used, len - used); /* uncapped: at most one read buffer */
  } else if (r < 0) {
    dibba__http_conn_fail(c, c->parser.error_status ? c->parser.error_status : 400, c->parser.error_detail);
    return;
  }
  if (c->parser.phase == 2)
    dibba__http_conn_arm(c, c->srv->lim.read_timeout_ms);
  if (c->parse_paused && !c->upgrade_wait && c->nreqs < c->srv->lim.max_pipeline)
    dibba__http_conn_schedule_resume(c);
  dibba__http_conn_update_reading(c);
}

void dibba__http_conn_resume(dibba__http_conn_t *c) {
  if (c->mode == CONN_WS) {
    dibba__ws_opened(c);
    return;
  }
  if (c->mode != CONN_HTTP || !c->parse_paused || c->upgrade_wait || c->shutting ||
      c->nreqs >= c->srv->lim.max_pipeline)
    return;
  c->parse_paused = 0;
  size_t n = 0;
  char *data = dibba_buf_steal(&c->pending, &n);
  if (n)
    dibba__http_conn_input(c, data, n);
  else
    dibba__http_conn_update_reading(c);
  free(data);
}

void dibba__http_conn_flush(dibba__http_conn_t *c) {
  dibba_http_req_t *r;
  if (c->closing || c->shutting)
    return;
  while ((r = TAILQ_FIRST(&c->reqs)) != NULL) {
    if (r->out.len) {
      size_t n = 0;
      char *p = dibba_buf_steal(&r->out, &n);
      c->buffered -= n;
      dibba__http_conn_write(c, NULL, 0, p, n);
    }
    if (r->state != REQ_DONE)
      break;
    TAILQ_REMOVE(&c->reqs, r, link);
    c->nreqs--;
    r->queued = 0;
    if (r->status == 101) {
      dibba__ws_start(c, r); /* takes the queue's reference */
      return;
    }
    r->conn = NULL;
    int close = r->close_after;
    dibba_http_req_unref(r);
    if (close) {
      dibba__http_conn_begin_shutdown(c);
      return;
    }
  }
  if (c->nreqs == 0) {
    if (c->continue_req) {
      dibba__http_conn_write(c, continue_line, sizeof continue_line - 1, NULL, 0);
      c->continue_req = NULL;
    }
    if (c->parser.phase == 0 && (c->srv->shutting_down || c->peer_eof)) {
      dibba__http_conn_begin_shutdown(c);
      return;
    }
    if (c->parser.phase == 0 && !c->parse_paused)
      dibba__http_conn_arm(c, c->srv->lim.idle_timeout_ms);
  }
  if (c->parse_paused && !c->upgrade_wait && c->nreqs < c->srv->lim.max_pipeline)
    dibba__http_conn_schedule_resume(c);
  dibba__http_conn_update_reading(c);
}
