/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target: bytes into the strict HTTP request parser and the router, no sockets. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/http.h"
#include "dibba/log.h"
#include "http_private.h"
#include "server.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static dibba_http_router_t *router;
static dibba_http_server_t *srv;
static uv_loop_t loop; /* never run: the parser only needs the server's limits and router */

static void noop(dibba_http_req_t *req, void *data) {}

static int on_head(dibba__http_parser_t *p, dibba_http_req_t *req) {
  const char *expect = dibba_http_req_header(req, "expect");
  return dibba__http_head_check(req, expect != NULL);
}

static int on_request(dibba__http_parser_t *p, dibba_http_req_t *req) {
  const char *q = dibba_http_req_query(req);
  json_t *form = NULL;
  if (dibba_http_parse_form(q, strlen(q), 4096, &form) == 0)
    json_decref(form);
  size_t n;
  const char *body = dibba_http_req_body(req, &n);
  if (dibba_http_parse_form(body, n, 4096, &form) == 0)
    json_decref(form);
  (void)dibba_http_req_param(req, "ns");
  (void)dibba_http_req_header(req, "content-type");
  dibba_http_req_unref(req);
  return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  dibba_log_open("error", NULL);
  dibba_http_limits_t lim;
  dibba_http_limits_default(&lim);
  lim.max_body_bytes = 4096;
  lim.max_header_bytes = 4096;
  lim.max_url_bytes = 1024;
  router = dibba_http_router_new();
  static const char *const pats[][2] = {{"GET", "/healthz"},
                                        {"GET", "/v1/pods/{ns}/{name}"},
                                        {"PUT", "/v1/pods/{ns}/{name}"},
                                        {"POST", "/token"},
                                        {"GET", "/"}};
  for (size_t i = 0; i < sizeof pats / sizeof pats[0]; i++) {
    dibba_http_route_t r = {.method = pats[i][0], .pattern = pats[i][1], .handler = noop};
    if (i == 3)
      r.body = DIBBA_HTTP_BODY_FORM;
    dibba_http_router_add(router, &r);
  }
  srv = dibba_http_server_new(&loop, router, &lim);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  dibba__http_parser_t p;
  dibba__http_parser_init(&p, srv, &((const struct dibba_http_server_s *)srv)->lim);
  p.on_head = on_head;
  p.on_request = on_request;
  /* the first byte picks a split point so incremental parsing is exercised too */
  size_t split = size ? data[0] % (size + 1) : 0;
  const char *d = (const char *)data;
  size_t used = 0, off = 0;
  int r = dibba__http_parser_feed(&p, d, split, &used);
  off = used;
  while (r == 1 && off < split) {
    r = dibba__http_parser_feed(&p, d + off, split - off, &used);
    off += used;
  }
  if (r >= 0 && r != 2) {
    off = split;
    do {
      r = dibba__http_parser_feed(&p, d + off, size - off, &used);
      off += used;
    } while (r == 1 && off < size);
  }
  dibba__http_parser_free(&p);
  return 0;
}
