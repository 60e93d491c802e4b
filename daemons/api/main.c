/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-api: the HTTP + WebSocket control plane (wiring, Redis, health, metrics, tasks, aws, dashboard, the echo
 * WebSocket). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "dibba/alloc.h"
#include "dibba/auth.h"
#include "dibba/config.h"
#include "dibba/daemon.h"
#include "dibba/error.h"
#include "dibba/http.h"
#include "dibba/log.h"
#include "dibba/redis.h"
#include "dibba/websocket.h"

#include "api.h"

#define READYZ_TIMEOUT_MS 1000

static void healthz(dibba_http_req_t *req, void *data) {
  (void)data;
  static const char ok[] = "{\"status\":\"ok\"}";
  dibba_http_respond(req, 200, "application/json", ok, sizeof ok - 1);
}

static void on_ping(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  dibba_http_req_t *req = data;
  (void)r;
  (void)reply;
  if (status == 0) {
    static const char ok[] = "{\"status\":\"ready\"}";
    dibba_http_respond(req, 200, "application/json", ok, sizeof ok - 1);
  } else {
    dibba_http_respond_error(req, 503, "redis unavailable");
  }
  dibba_http_req_unref(req);
}

/* Ready when Redis answers a PING within a short timeout; while disconnected it fails at once. */
static void readyz(dibba_http_req_t *req, void *data) {
  api_t *api = data;
  dibba_redis_cmd_opts_t o = {.timeout_ms = READYZ_TIMEOUT_MS};
  dibba_http_req_ref(req);
  if (api->redis == NULL || dibba_redis_command(api->redis, on_ping, req, &o, "PING") < 0) {
    dibba_http_respond_error(req, 503, "redis unavailable");
    dibba_http_req_unref(req);
  }
}

/* GET /v1/ws/echo: every text or binary message comes back unchanged (clients use it as a ping). */
static void ws_open(dibba_ws_t *ws, dibba_http_req_t *req, void *data) {
  (void)ws;
  (void)req;
  (void)data;
}
static void ws_message(dibba_ws_t *ws, int opcode, const char *msg, size_t len, void *data) {
  (void)data;
  if (opcode == DIBBA_WS_TEXT)
    dibba_ws_send_text(ws, msg, len);
  else
    dibba_ws_send_binary(ws, msg, len);
}
static void ws_close(dibba_ws_t *ws, int code, void *data) {
  (void)ws;
  (void)code;
  (void)data;
}
static const dibba_ws_ops_t echo_ops = {ws_open, ws_message, ws_close};

static void metrics_hook(void *data, dibba_buf_t *out) {
  api_t *api = data;
  dibba_redis_stats_t st;
  memset(&st, 0, sizeof st);
  if (api->redis)
    dibba_redis_stats(api->redis, &st);
  dibba_buf_printf(out,
                   "# HELP dibba_redis_connected 1 while the API's Redis connection is ready.\n"
                   "# TYPE dibba_redis_connected gauge\n"
                   "dibba_redis_connected %d\n"
                   "# HELP dibba_redis_reconnects_total Redis connections made ready again after a loss.\n"
                   "# TYPE dibba_redis_reconnects_total counter\n"
                   "dibba_redis_reconnects_total %llu\n"
                   "# HELP dibba_redis_connect_failures_total Failed Redis connection attempts.\n"
                   "# TYPE dibba_redis_connect_failures_total counter\n"
                   "dibba_redis_connect_failures_total %llu\n"
                   "# HELP dibba_redis_timeouts_total Redis commands that timed out.\n"
                   "# TYPE dibba_redis_timeouts_total counter\n"
                   "dibba_redis_timeouts_total %llu\n"
                   "# HELP dibba_audit_records_total Audit records written to the audit stream.\n"
                   "# TYPE dibba_audit_records_total counter\n"
                   "dibba_audit_records_total %llu\n"
                   "# HELP dibba_audit_errors_total Audit records that could not be written.\n"
                   "# TYPE dibba_audit_errors_total counter\n"
                   "dibba_audit_errors_total %llu\n",
                   api->redis && dibba_redis_is_ready(api->redis) ? 1 : 0, (unsigned long long)st.reconnects,
                   (unsigned long long)st.connect_failures, (unsigned long long)st.timeouts,
                   (unsigned long long)api->audit_records, (unsigned long long)api->audit_errors);
  api_auth_metrics(api, out);
  api_ui_metrics(api->ui, out);
  api_events_metrics(api->events, out);
}

static void on_redis_connect(dibba_redis_t *r, int status, void *data) {
  (void)data;
  if (status == 0)
    dibba_log_info("dibba-api", NULL, "redis connected");
  else
    dibba_log_warn("dibba-api", json_pack("{s:s}", "error", dibba_redis_last_error(r)), "redis connect failed");
}

static void on_redis_disconnect(dibba_redis_t *r, int status, void *data) {
  (void)r;
  (void)data;
  dibba_log_warn("dibba-api", json_pack("{s:s}", "error", dibba_redis_strerror(status)), "redis connection lost");
}

static int api_start_redis(dibba_daemon_t *d, api_t *api, char *err, size_t errlen) {
  dibba_redis_options_t o;
  const char *prefix = NULL;
  int r = dibba_redis_options_from_config(&d->cfg, &o, err, errlen);
  if (r < 0)
    return r;
  r = dibba_config_str(&d->cfg, "redis.prefix", "dibba:", &prefix, err, errlen);
  if (r < 0)
    return r;
  api->prefix = dibba_xstrdup(prefix);
  api->audit_key = dibba_xasprintf("%saudit", prefix);
  o.name = "api";
  o.on_connect = on_redis_connect;
  o.on_disconnect = on_redis_disconnect;
  o.data = api;
  return dibba_redis_new(&d->loop, &o, &api->redis, err, errlen);
}

/* Thousands of keep-alive connections and WebSockets need as many descriptors: use the hard limit. */
static void raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
      dibba_log_warn("dibba-api", json_pack("{s:i}", "errno", errno), "could not raise RLIMIT_NOFILE");
  }
}

static int api_start_http(dibba_daemon_t *d, api_t *api, char *err, size_t errlen) {
  dibba_http_limits_t lim;
  const char *listen = NULL;
  int r;
  dibba_http_limits_default(&lim);
  r = dibba_http_limits_from_config(&lim, &d->cfg, err, errlen);
  if (r < 0)
    return r;
  r = dibba_config_str(&d->cfg, "api.listen", "127.0.0.1:8080", &listen, err, errlen);
  if (r < 0)
    return r;
  api->router = dibba_http_router_new();
  api->http = dibba_http_server_new(&d->loop, api->router, &lim);
  static const char status_schema[] = "{\"type\":\"object\",\"properties\":{\"status\":{\"type\":\"string\"}}}";
  const dibba_http_route_t routes[] = {
      {.method = "GET",
       .pattern = "/healthz",
       .handler = healthz,
       .summary = "Liveness probe: the process serves requests",
       .response_schema = status_schema},
      {.method = "GET",
       .pattern = "/readyz",
       .handler = readyz,
       .data = api,
       .summary = "Readiness probe: Redis answers a PING (503 otherwise)",
       .response_schema = status_schema},
      {.method = "GET",
       .pattern = "/metrics",
       .handler = dibba_http_metrics_handler,
       .data = api->http,
       .summary = "Prometheus metrics"},
      {.method = "GET",
       .pattern = "/openapi.json",
       .handler = dibba_http_openapi_handler,
       .data = api->http,
       .summary = "This API's OpenAPI document"},
      {.method = "GET",
       .pattern = "/v1/ws/echo",
       .ws = &echo_ops,
       .data = api,
       .role = DIBBA_ROLE_VIEWER,
       .summary = "WebSocket that echoes every message (connectivity check)"},
  };
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
    r = dibba_http_router_add(api->router, &routes[i]);
    if (r < 0)
      return dibba_error_set(err, errlen, r, "route %s %s", routes[i].method, routes[i].pattern);
  }
  r = api_auth_routes(api, err, errlen);
  if (r < 0)
    return r;
  r = dibba_config_secret(&d->cfg, "task.routing_key", &api->routing_key, &api->routing_key_len, err, errlen);
  if (r < 0)
    return r;
  r = api_tasks_new(&d->loop, &d->cfg, api->redis, api->router, (const uint8_t *)api->routing_key, api->routing_key_len,
                    &api->tasks, err, errlen);
  if (r < 0)
    return r;
  r = api_aws_new(&d->cfg, api->redis, api->router, (const uint8_t *)api->routing_key, api->routing_key_len, &api->aws,
                  err, errlen);
  if (r < 0)
    return r;
  r = api_schedules_new(&d->cfg, api->redis, api->router, (const uint8_t *)api->routing_key, api->routing_key_len,
                        &api->schedules, err, errlen);
  if (r < 0)
    return r;
  r = api_ui_new(&d->loop, &d->cfg, api->router, &api->ui, err, errlen);
  if (r < 0)
    return r;
  r = api_events_new(&d->loop, &d->cfg, api->redis, api->router, &api->events, err, errlen);
  if (r < 0)
    return r;
  r = api_pods_new(&d->loop, &d->cfg, api->redis, api->router, (const uint8_t *)api->routing_key, api->routing_key_len,
                   &api->pods, err, errlen);
  if (r < 0)
    return r;
  dibba_http_server_set_metrics_hook(api->http, metrics_hook, api);
  dibba_http_server_set_response_hook(api->http, api_audit_response, api);
  raise_nofile();
  r = dibba_http_server_listen_addr(api->http, listen);
  if (r < 0)
    return dibba_error_set(err, errlen, r, "api.listen %s: %s", listen, dibba_strerror(r));
  dibba_log_info("dibba-api", json_pack("{s:s,s:i}", "listen", listen, "port", dibba_http_server_port(api->http)),
                 "listening");
  return 0;
}

static int api_start(dibba_daemon_t *d, char *err, size_t errlen) {
  api_t *api = d->data;
  api->d = d;
  api->loop = &d->loop;
  int r = api_auth_init(api, err, errlen);
  if (r < 0)
    return r;
  r = api_start_redis(d, api, err, errlen);
  if (r < 0)
    return r;
  return api_start_http(d, api, err, errlen);
}

void api_maybe_finish(api_t *api) {
  if (!api->stopping || api->finished || api->closes_pending > 0)
    return;
  if (!api_auth_free(api))
    return; /* a login or save is still on the worker pool; its callback calls us again */
  api->finished = 1;
  api_schedules_free(api->schedules);
  api->schedules = NULL;
  free(api->prefix);
  free(api->audit_key);
  api->prefix = api->audit_key = NULL;
  dibba_log_info("dibba-api", NULL, "api stopped");
}

static void close_redis(api_t *api);
static void close_tasks(api_t *api);
static void close_dashboard(api_t *api);

static void on_http_done(dibba_http_server_t *s, void *data) {
  api_t *api = data;
  (void)s;
  dibba_http_server_free(api->http);
  api->http = NULL;
  dibba_http_router_free(api->router);
  api->router = NULL;
  dibba_log_info("dibba-api", NULL, "http server stopped");
  api_aws_close(api->aws);
  api->aws = NULL;
  api_pods_close(api->pods);
  api->pods = NULL;
  close_dashboard(api);
  api->closes_pending--;
  api_maybe_finish(api);
}

/* The task routes close before Redis: their watchers and in-flight calls use the API's client. */
static void on_tasks_closed(void *data) {
  api_t *api = data;
  api->closes_pending--;
  close_redis(api);
  api_maybe_finish(api);
}

static void on_redis_closed(dibba_redis_t *r, void *data) {
  api_t *api = data;
  (void)r;
  api->redis = NULL;
  api->closes_pending--;
  api_maybe_finish(api);
}

static void close_redis(api_t *api) {
  if (api->redis) {
    api->closes_pending++;
    if (dibba_redis_close(api->redis, on_redis_closed) < 0)
      api->closes_pending--;
  }
}

/* Tasks, then Redis, once HTTP has drained: in-flight task requests and WebSocket watchers use both, and the
 * last audit records still go out. */
static void close_tasks(api_t *api) {
  if (api->tasks) {
    api->closes_pending++;
    api_tasks_close(api->tasks, on_tasks_closed, api);
    api->tasks = NULL;
  } else {
    close_redis(api);
  }
}

static void on_ui_closed(void *data) {
  api_t *api = data;
  api->closes_pending--;
  api_maybe_finish(api);
}

/* The event stream's record look-ups use the API's Redis client: tasks (and so Redis) close after it. */
static void on_events_closed(void *data) {
  api_t *api = data;
  api->closes_pending--;
  close_tasks(api);
  api_maybe_finish(api);
}

static void close_dashboard(api_t *api) {
  if (api->ui) {
    api->closes_pending++;
    api_ui_close(api->ui, on_ui_closed, api);
    api->ui = NULL;
  }
  if (api->events) {
    api->closes_pending++;
    api_events_close(api->events, on_events_closed, api);
    api->events = NULL;
  } else {
    close_tasks(api);
  }
}

static void api_stop(dibba_daemon_t *d) {
  api_t *api = d->data;
  api->stopping = 1;
  api->closes_pending++; /* held while starting the closes below */
  if (api->http) {
    /* Graceful: in-flight requests finish; on_http_done frees the server once its handles are closed. */
    api->closes_pending++;
    dibba_http_server_shutdown(api->http, on_http_done, api);
  } else {
    dibba_http_router_free(api->router);
    api->router = NULL;
  }
  if (api->http == NULL) {
    api_aws_close(api->aws);
    api->aws = NULL;
    api_pods_close(api->pods);
    api->pods = NULL;
    close_dashboard(api);
  }
  if (api->routing_key) {
    explicit_bzero(api->routing_key, api->routing_key_len);
    free(api->routing_key);
    api->routing_key = NULL;
  }
  api_auth_stop(api);
  api->closes_pending--;
  api_maybe_finish(api);
}

static int api_reload(dibba_daemon_t *d, char *err, size_t errlen) {
  api_t *api = d->data;
  api_ui_reload(api->ui); /* asynchronous; logs its own outcome */
  return api_users_reload(api, err, errlen);
}

static int api_command(dibba_daemon_t *d, int argc, char **argv) { return dibba_auth_command(&d->cfg, argc, argv); }

int main(int argc, char **argv) {
  static const dibba_daemon_ops_t ops = {
      .name = "dibba-api",
      .start = api_start,
      .stop = api_stop,
      .reload = api_reload,
      .command = api_command,
  };
  api_t api;
  memset(&api, 0, sizeof api);
  return dibba_daemon_main(&ops, &api, argc, argv);
}
