/* SPDX-License-Identifier: Apache-2.0 */
/* Prometheus metrics kept by the HTTP server: request counts, a latency histogram, open connections/sockets. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dibba-config.h"
#include "dibba/alloc.h"
#include "http_private.h"
#include "server.h"

static const double bucket_le[13] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10};

static unsigned slot(const char *pattern, int method, int status) {
  uintptr_t h = (uintptr_t)pattern * 31u + (uintptr_t)(method + 7) * 131u + (uintptr_t)(status + 3) * 7919u;
  h ^= h >> 13;
  return (unsigned)(h % DIBBA__HTTP_SERIES_BUCKETS);
}

static dibba__http_series_t *series(dibba_http_server_t *s, const char *pattern, int method, int status) {
  unsigned i = slot(pattern, method, status);
  for (dibba__http_series_t *x = s->series[i]; x; x = x->next)
    if (x->pattern == pattern && x->method == method && x->status == status)
      return x;
  dibba__http_series_t *x = dibba_xcalloc(1, sizeof *x);
  x->pattern = pattern;
  x->method = method;
  x->status = status;
  x->next = s->series[i];
  s->series[i] = x;
  return x;
}

void dibba__http_metrics_observe(dibba_http_server_t *s, const char *pattern, int method, int status, uint64_t dur_ns) {
  series(s, pattern, method, status)->count++;
  dibba__http_series_t *h = series(s, pattern, method, -1);
  double sec = (double)dur_ns / 1e9;
  h->count++;
  h->sum += sec;
  for (int b = 0; b < 13; b++)
    if (sec <= bucket_le[b])
      h->buckets[b]++;
}

void dibba__http_metrics_free(dibba_http_server_t *s) {
  for (unsigned i = 0; i < DIBBA__HTTP_SERIES_BUCKETS; i++) {
    dibba__http_series_t *x = s->series[i], *n;
    for (; x; x = n) {
      n = x->next;
      free(x);
    }
    s->series[i] = NULL;
  }
}

static const char *mname(int m) { return m < 0 ? "-" : llhttp_method_name((llhttp_method_t)m); }

/* Route patterns come from the app's table; escape them anyway as label values require. */
static void label(dibba_buf_t *out, const char *v) {
  for (const char *p = v ? v : "unmatched"; *p; p++) {
    if (*p == '"' || *p == '\\')
      dibba_buf_add(out, "\\", 1);
    dibba_buf_add(out, p, 1);
  }
}

void dibba_http_server_metrics(dibba_http_server_t *s, dibba_buf_t *out) {
  dibba_buf_adds(out, "# HELP dibba_http_requests_total HTTP requests by route, method and status.\n"
                      "# TYPE dibba_http_requests_total counter\n");
  for (unsigned i = 0; i < DIBBA__HTTP_SERIES_BUCKETS; i++)
    for (dibba__http_series_t *x = s->series[i]; x; x = x->next) {
      if (x->status < 0)
        continue;
      dibba_buf_adds(out, "dibba_http_requests_total{route=\"");
      label(out, x->pattern);
      dibba_buf_printf(out, "\",method=\"%s\",code=\"%d\"} %llu\n", mname(x->method), x->status,
                       (unsigned long long)x->count);
    }
  dibba_buf_adds(out, "# HELP dibba_http_request_duration_seconds HTTP request latency.\n"
                      "# TYPE dibba_http_request_duration_seconds histogram\n");
  for (unsigned i = 0; i < DIBBA__HTTP_SERIES_BUCKETS; i++)
    for (dibba__http_series_t *x = s->series[i]; x; x = x->next) {
      if (x->status >= 0)
        continue;
      for (int b = 0; b <= 13; b++) {
        dibba_buf_adds(out, "dibba_http_request_duration_seconds_bucket{route=\"");
        label(out, x->pattern);
        if (b < 13)
          dibba_buf_printf(out, "\",method=\"%s\",le=\"%g\"} %llu\n", mname(x->method), bucket_le[b],
                           (unsigned long long)x->buckets[b]);
        else
          dibba_buf_printf(out, "\",method=\"%s\",le=\"+Inf\"} %llu\n", mname(x->method), (unsigned long long)x->count);
      }
      dibba_buf_adds(out, "dibba_http_request_duration_seconds_sum{route=\"");
      label(out, x->pattern);
      dibba_buf_printf(out, "\",method=\"%s\"} %.6f\n", mname(x->method), x->sum);
      dibba_buf_adds(out, "dibba_http_request_duration_seconds_count{route=\"");
      label(out, x->pattern);
      dibba_buf_printf(out, "\",method=\"%s\"} %llu\n", mname(x->method), (unsigned long long)x->count);
    }
  dibba_buf_printf(out,
                   "# HELP dibba_http_open_connections Open HTTP connections.\n"
                   "# TYPE dibba_http_open_connections gauge\n"
                   "dibba_http_open_connections %zu\n"
                   "# HELP dibba_http_open_websockets Open WebSockets.\n"
                   "# TYPE dibba_http_open_websockets gauge\n"
                   "dibba_http_open_websockets %zu\n"
                   "# HELP dibba_http_connections_accepted_total Accepted connections.\n"
                   "# TYPE dibba_http_connections_accepted_total counter\n"
                   "dibba_http_connections_accepted_total %llu\n",
                   s->nconns, s->nws, (unsigned long long)s->accepted);
  if (s->metrics_cb)
    s->metrics_cb(s->metrics_data, out);
}

void dibba_http_metrics_handler(dibba_http_req_t *req, void *data) {
  dibba_http_server_t *s = data ? data : dibba_http_req_server(req);
  dibba_buf_t b;
  dibba_buf_init(&b, 16 * 1024 * 1024);
  dibba_http_server_metrics(s, &b);
  size_t n = 0;
  char *p = dibba_buf_steal(&b, &n);
  dibba_http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", p, n);
  free(p);
}

void dibba_http_openapi_handler(dibba_http_req_t *req, void *data) {
  dibba_http_server_t *s = data ? data : dibba_http_req_server(req);
  dibba_http_respond_json(req, 200, dibba_http_router_openapi(s->router, "Dibba API", DIBBA_VERSION));
}
