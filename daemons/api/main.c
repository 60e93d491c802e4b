/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-api: the HTTP + WebSocket control plane. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/auth.h"
#include "dibba/config.h"
#include "dibba/daemon.h"
#include "dibba/error.h"
#include "dibba/http.h"
#include "dibba/log.h"
#include "dibba/redis.h"
#include "dibba/time.h"
#include "tasks.h"

typedef struct api_s {
  char *jwt_secret;
  size_t jwt_secret_len;
  dibba_http_router_t *router;
  dibba_http_server_t *http;
  /* tasks (wired minimally; the auth branch brings the full authenticator and Redis client) */
  char *routing_key;
  size_t routing_key_len;
  dibba_redis_t *redis;
  api_tasks_t *tasks;
  dibba_auth_jwt_t jwt;
  dibba_auth_users_t users;
  int auth_ready;
} api_t;

static int api_auth(void *data, dibba_http_req_t *req, const char *token, dibba_http_principal_t *out) {
  api_t *api = data;
  dibba_auth_claims_t c;
  (void)req;
  if (token == NULL || !api->auth_ready)
    return 401;
  int rc = dibba_auth_token_check(&api->jwt, &api->users, token, strlen(token), dibba_now_ms() / 1000, &c);
  if (rc < 0)
    return 401;
  snprintf(out->user, sizeof out->user, "%s", c.sub);
  if (dibba_http_role_parse(dibba_auth_role_name(c.role), &out->role) < 0)
    return 403;
  return 0;
}

static void redis_closed(dibba_redis_t *r, void *data) { (void)r, (void)data; }

static void tasks_closed(void *data) {
  api_t *api = data;
  if (api->redis) {
    dibba_redis_close(api->redis, redis_closed);
    api->redis = NULL;
  }
}

static int api_start_tasks(dibba_daemon_t *d, api_t *api, char *err, size_t errlen) {
  dibba_redis_options_t ro;
  dibba_auth_scrypt_t sp;
  char *users_path = NULL;
  int r;
  if ((r = dibba_config_secret(&d->cfg, "task.routing_key", &api->routing_key, &api->routing_key_len, err, errlen)) <
          0 ||
      (r = dibba_auth_jwt_from_config(&api->jwt, &d->cfg, err, errlen)) < 0 ||
      (r = dibba_auth_users_path(&d->cfg, &users_path, err, errlen)) < 0 ||
      (r = dibba_auth_scrypt_config(&d->cfg, &sp, err, errlen)) < 0)
    return r;
  dibba_auth_users_init(&api->users, users_path, &sp);
  free(users_path);
  api->auth_ready = 1;
  if ((r = dibba_auth_users_load(&api->users, err, errlen)) < 0)
    return r;
  dibba_http_server_set_auth(api->http, api_auth, api);
  if ((r = dibba_redis_options_from_config(&d->cfg, &ro, err, errlen)) < 0)
    return r;
  ro.name = "api";
  if ((r = dibba_redis_new(&d->loop, &ro, &api->redis, err, errlen)) < 0)
    return r;
  return api_tasks_new(&d->loop, &d->cfg, api->redis, api->router, (const uint8_t *)api->routing_key,
                       api->routing_key_len, &api->tasks, err, errlen);
}

static void healthz(dibba_http_req_t *req, void *data) {
  (void)data;
  static const char ok[] = "{\"status\":\"ok\"}";
  dibba_http_respond(req, 200, "application/json", ok, sizeof ok - 1);
}

static void on_http_done(dibba_http_server_t *s, void *data) {
  api_t *api = data;
  (void)s;
  dibba_http_server_free(api->http);
  api->http = NULL;
  dibba_http_router_free(api->router);
  api->router = NULL;
  dibba_log_info("dibba-api", NULL, "http server stopped");
  if (api->tasks) {
    api_tasks_close(api->tasks, tasks_closed, api);
    api->tasks = NULL;
  } else {
    tasks_closed(api);
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
  if ((r = api_start_tasks(d, api, err, errlen)) < 0)
    return r;
  const dibba_http_route_t routes[] = {
      {.method = "GET",
       .pattern = "/healthz",
       .handler = healthz,
       .summary = "Liveness probe",
       .response_schema = "{\"type\":\"object\",\"properties\":{\"status\":{\"type\":\"string\"}}}"},
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
  };
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
    r = dibba_http_router_add(api->router, &routes[i]);
    if (r < 0)
      return dibba_error_set(err, errlen, r, "route %s %s", routes[i].method, routes[i].pattern);
  }
  r = dibba_http_server_listen_addr(api->http, listen);
  if (r < 0)
    return dibba_error_set(err, errlen, r, "api.listen %s: %s", listen, dibba_strerror(r));
  dibba_log_info("dibba-api", json_pack("{s:s,s:i}", "listen", listen, "port", dibba_http_server_port(api->http)),
                 "listening");
  return 0;
}

static int api_start(dibba_daemon_t *d, char *err, size_t errlen) {
  api_t *api = d->data;
  int r = dibba_config_secret(&d->cfg, "auth.jwt_secret", &api->jwt_secret, &api->jwt_secret_len, err, errlen);
  if (r < 0)
    return r;
  return api_start_http(d, api, err, errlen);
}

static void api_stop(dibba_daemon_t *d) {
  api_t *api = d->data;
  if (api->http) {
    /* Graceful: in-flight requests finish; on_http_done frees the server once its handles are closed. */
    dibba_http_server_shutdown(api->http, on_http_done, api);
  } else {
    dibba_http_router_free(api->router);
    api->router = NULL;
    tasks_closed(api);
  }
  if (api->routing_key) {
    explicit_bzero(api->routing_key, api->routing_key_len);
    free(api->routing_key);
    api->routing_key = NULL;
  }
  dibba_auth_jwt_free(&api->jwt);
  dibba_auth_users_free(&api->users);
  if (api->jwt_secret) {
    explicit_bzero(api->jwt_secret, api->jwt_secret_len);
    free(api->jwt_secret);
    api->jwt_secret = NULL;
  }
}

static int api_command(dibba_daemon_t *d, int argc, char **argv) { return dibba_auth_command(&d->cfg, argc, argv); }

int main(int argc, char **argv) {
  static const dibba_daemon_ops_t ops = {
      .name = "dibba-api",
      .start = api_start,
      .stop = api_stop,
      .command = api_command,
  };
  api_t api;
  memset(&api, 0, sizeof api);
  return dibba_daemon_main(&ops, &api, argc, argv);
}
