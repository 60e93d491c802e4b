/* SPDX-License-Identifier: Apache-2.0 */
/* Private structures shared by the HTTP server, parser, router, response writer and WebSocket code. */
#ifndef DIBBA_HTTP_PRIVATE_H
#define DIBBA_HTTP_PRIVATE_H

#include <llhttp.h>
#include <stdint.h>
#include <sys/queue.h>

#include "dibba/http.h"
#include "dibba/id.h"
#include "dibba/websocket.h"

#define DIBBA_HTTP_MAX_PARAMS 8
#define DIBBA_HTTP_ID_MAX 64

typedef struct dibba__http_conn_s dibba__http_conn_t;

typedef struct {
  uint32_t name_off, name_len, val_off, val_len;
} dibba__http_hdr_t;

typedef struct {
  const char *name; /* borrowed from the route */
  char *value;      /* decoded, owned */
} dibba__http_param_t;

typedef struct dibba__http_route_s {
  char *method, *pattern, *summary;
  json_t *req_schema, *resp_schema;
  dibba_http_handler_cb handler;
  void *data;
  dibba_http_role_t role;
  int body;
  const dibba_ws_ops_t *ws;
  char **segs; /* pattern split on '/', "{x}" kept as is */
  size_t nsegs;
} dibba__http_route_t;

struct dibba_http_router_s {
  dibba__http_route_t *routes;
  size_t n, alloc;
};

enum { REQ_PARSING = 0, REQ_AUTH, REQ_HANDLER, REQ_RESPONDED, REQ_DONE };

struct dibba_http_req_s {
  TAILQ_ENTRY(dibba_http_req_s) link;
  dibba__http_conn_t *conn; /* NULL once the connection is gone */
  dibba_http_server_t *srv;
  int refs;
  int state;
  int method;
  uint8_t major, minor;
  unsigned keep_alive : 1, queued : 1, streaming : 1, stream_ended : 1, is_error : 1, want_continue : 1, upgrade : 1,
      headers_done : 1, cancelled : 1, close_after : 1, in_hdr_value : 1, has_host : 1, te_seen : 1;
  dibba_buf_t head; /* url, then header names and values, each NUL-terminated */
  size_t url_len;
  char *path, *query; /* NUL-terminated copies split from the url */
  dibba__http_hdr_t *hdrs;
  size_t nhdrs, hdrs_alloc;
  dibba_buf_t body;
  json_t *json;
  const dibba__http_route_t *route;
  dibba__http_param_t params[DIBBA_HTTP_MAX_PARAMS];
  size_t nparams;
  dibba_http_principal_t principal;
  int authed;
  char subject[sizeof(((dibba_http_principal_t *)0)->user)];
  char id[DIBBA_HTTP_ID_MAX + 1];
  uint64_t start_ns;
  int status;
  size_t bytes_out;
  dibba_buf_t extra; /* extra response headers, CRLF-terminated lines */
  dibba_buf_t out;   /* response bytes waiting for their turn in the pipeline */
  dibba_http_cancel_cb cancel_cb;
  void *cancel_data;
  void *data;
  int error_status; /* parser-made error response */
  const char *error_detail;
};

/* ---- parser (no sockets; the fuzzer drives it) ---- */

typedef struct dibba__http_parser_s dibba__http_parser_t;
/* Headers of req are complete. Return 0 to go on, or an HTTP status to fail the request (stops parsing). */
typedef int (*dibba__http_head_cb)(dibba__http_parser_t *p, dibba_http_req_t *req);
/* req is complete (ownership moves to the callee). Return 1 to pause parsing after it, else 0. */
typedef int (*dibba__http_req_cb)(dibba__http_parser_t *p, dibba_http_req_t *req);

struct dibba__http_parser_s {
  llhttp_t ll;
  const dibba_http_limits_t *lim;
  dibba_http_server_t *srv;
  dibba_http_req_t *cur;
  int phase; /* 0 between messages, 1 head, 2 body */
  int in_line_start, prev_cr, head_error;
  size_t head_bytes;
  int pause_req;
  int failed;       /* an error status was produced; feed no more */
  int error_status; /* status for the failure */
  const char *error_detail;
  void (*on_begin)(dibba__http_parser_t *p, dibba_http_req_t *req);
  dibba__http_head_cb on_head;
  dibba__http_req_cb on_request;
  void *data;
};

void dibba__http_parser_init(dibba__http_parser_t *p, dibba_http_server_t *srv, const dibba_http_limits_t *lim);
void dibba__http_parser_free(dibba__http_parser_t *p);
/* Feed bytes. Returns 0 (all consumed), 1 (paused: *consumed tells how far; feed the rest later), 2 (upgrade:
 * the bytes after *consumed belong to the new protocol) or -1 (failed: p->error_status/error_detail). */
int dibba__http_parser_feed(dibba__http_parser_t *p, const char *data, size_t len, size_t *consumed);
void dibba__http_parser_resume_upgrade(dibba__http_parser_t *p);

/* ---- server and connections ---- */

typedef struct dibba__http_series_s {
  struct dibba__http_series_s *next;
  const char *pattern; /* route pattern (stable pointer) or NULL for unmatched */
  int method, status;  /* status -1: a latency histogram series */
  uint64_t count;
  uint64_t buckets[13];
  double sum;
} dibba__http_series_t;

#define DIBBA__HTTP_SERIES_BUCKETS 64

struct dibba_ws_s {
  dibba__http_conn_t *conn;
  dibba_ws_parser_t parser;
  const dibba_ws_ops_t *ops;
  void *ops_data;
  dibba_http_req_t *req;
  void *data;
  int open, close_sent, close_received, notified, awaiting_pong;
};

enum { CONN_HTTP = 0, CONN_WS, CONN_LINGER };

struct dibba__http_conn_s {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_shutdown_t shutdown_req;
  dibba_http_server_t *srv;
  TAILQ_ENTRY(dibba__http_conn_s) link;
  TAILQ_ENTRY(dibba__http_conn_s) resume_link;
  int pending_closes, refs;
  int mode;
  unsigned closing : 1, reading : 1, parse_paused : 1, upgrade_wait : 1, peer_eof : 1, shutting : 1, in_resume : 1,
      in_parse : 1, ws_open_pending : 1, linked : 1;
  dibba__http_parser_t parser;
  TAILQ_HEAD(, dibba_http_req_s) reqs;
  size_t nreqs;
  size_t buffered;                /* bytes in req->out of queued requests */
  dibba_buf_t pending;            /* unparsed input kept while parsing is paused */
  dibba_http_req_t *continue_req; /* waiting for its 100 Continue */
  char remote[64];
  dibba_ws_t ws;
};

struct dibba_http_server_s {
  uv_loop_t *loop;
  uv_tcp_t listener;
  uv_idle_t idle;
  uv_timer_t stop_timer;
  int handles_open; /* listener, idle, stop_timer */
  int listening, shutting_down, done_called, port;
  dibba_http_router_t *router;
  dibba_http_limits_t lim;
  dibba_http_auth_cb auth_cb;
  void *auth_data;
  dibba_http_metrics_cb metrics_cb;
  void *metrics_data;
  dibba_http_response_cb response_cb;
  void *response_data;
  char **origins;
  size_t norigins;
  dibba_http_done_cb done_cb;
  void *done_data;
  TAILQ_HEAD(, dibba__http_conn_s) conns;
  TAILQ_HEAD(, dibba__http_conn_s) resume;
  size_t nconns, nws;
  uint64_t accepted;
  dibba__http_series_t *series[DIBBA__HTTP_SERIES_BUCKETS];
  char date[40];
  int64_t date_sec;
  char rbuf[65536];
};

/* ---- requests ---- */
dibba_http_req_t *dibba__http_req_new(dibba_http_server_t *srv);
/* Find a route: returns the route, or NULL with *status 404/405 and allow filled ("GET, POST"). Sets params. */
const dibba__http_route_t *dibba__http_route_match(const dibba_http_router_t *r, dibba_http_req_t *req, int *status,
                                                   char *allow, size_t allowlen);

/* ---- metrics ---- */
void dibba__http_metrics_observe(dibba_http_server_t *s, const char *pattern, int method, int status, uint64_t dur_ns);
void dibba__http_metrics_free(dibba_http_server_t *s);

/* ---- status ---- */
const char *dibba__http_reason(int status);

#endif
